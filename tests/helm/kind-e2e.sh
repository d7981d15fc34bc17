#!/usr/bin/env bash
# The whole install path on a kind cluster, as a user takes it: build the image from the Dockerfile,
# helm install the chart, kubectl apply examples/sim-pool.yaml, kubectl scale it, send a first request
# through its router. Needs Docker and kind (not on the CI machines; this is for people who have them).
#
#   bash tests/helm/kind-e2e.sh
#
# Environment:
#   KIND_CLUSTER     cluster name (default maitred-e2e); an existing one is reused
#   KIND_NODE_IMAGE  node image (default kindest/node:v1.34.0)
#   KEEP_CLUSTER=1   keep a cluster this script created
set -euo pipefail
cd "$(dirname "$0")/../.."

name="${KIND_CLUSTER:-maitred-e2e}"
for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind-e2e.sh: $tool is not installed" >&2; exit 1; }
done
helm="$(bash tests/helm/install-helm.sh)/helm"
image=maitred:e2e

created=0
if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
    kind create cluster --name "$name" --image "${KIND_NODE_IMAGE:-kindest/node:v1.34.0}" --wait 180s
    created=1
fi
work="$(mktemp -d)"
cleanup() {
    [[ -n "${forward:-}" ]] && kill "$forward" 2>/dev/null || true
    rm -rf "$work"
    if [[ "$created" == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then kind delete cluster --name "$name"; fi
}
trap cleanup EXIT
export KUBECONFIG="$work/kubeconfig"
kind get kubeconfig --name "$name" >"$KUBECONFIG"

docker build -t "$image" .
kind load docker-image "$image" --name "$name"

"$helm" upgrade --install maitred helm/maitred --namespace maitred-system --create-namespace \
    --set image.repository=maitred,image.tag=e2e,image.pullPolicy=Never --wait --timeout 180s

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f -
sed "s|image: ghcr.io/maitred/maitred:.*|image: $image|" examples/sim-pool.yaml | kubectl apply -n demo -f -
kubectl -n demo wait aisp/demo --for=jsonpath='{.status.ready}'=2/2 --timeout=180s
kubectl -n demo scale aisp/demo --replicas=3
kubectl -n demo wait aisp/demo --for=jsonpath='{.status.ready}'=3/3 --timeout=180s
kubectl -n demo rollout status deployment/demo-router --timeout=180s

kubectl -n demo port-forward svc/demo-router 18080:8080 >"$work/port-forward.log" 2>&1 &
forward=$!
for _ in $(seq 50); do curl -fs localhost:18080/readyz >/dev/null && break; sleep 0.2; done
curl -fsS localhost:18080/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model": "demo-model", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}'
echo
echo "kind-e2e.sh: helm install, kubectl apply, kubectl scale and the first request all worked"
