#!/usr/bin/env bash
# Run the cluster tests against a kind cluster instead of the control plane
# that the tests start themselves. Needs Docker and kind (not on the CI
# machines; this is for people who have them).
#
#   bash scripts/kind-test.sh [pytest args...]
#
# Environment:
#   KIND_CLUSTER     cluster name (default maitred-test); an existing one is reused
#   KIND_NODE_IMAGE  node image (default kindest/node:v1.34.0, the release the tests pin)
#   KEEP_CLUSTER=1   keep a cluster this script created
#
# The test kubelet still runs the pods' backends as local processes on
# 127.0.1.x: test pods set schedulerName maitred-test, so kind's scheduler
# leaves them to it, and its fake node is tainted so nothing else lands there.
set -euo pipefail
cd "$(dirname "$0")/.."

name="${KIND_CLUSTER:-maitred-test}"
image="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
for tool in docker kind; do
    command -v "$tool" >/dev/null || { echo "kind-test.sh: $tool is not installed" >&2; exit 1; }
done

created=0
if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
    kind create cluster --name "$name" --image "$image" --wait 180s
    created=1
fi
kubeconfig="$(mktemp)"
cleanup() {
    rm -f "$kubeconfig"
    if [[ "$created" == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
        kind delete cluster --name "$name"
    fi
}
trap cleanup EXIT
kind get kubeconfig --name "$name" >"$kubeconfig"

python3 -m pytest tests/cluster --kubeconfig "$kubeconfig" "$@"
