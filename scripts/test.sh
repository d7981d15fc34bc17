#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them all.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet -e '.[test]'

# The cluster tests run a real kube-apiserver, etcd and kube-controller-manager, built from the official
# sources through the Go module proxy into ~/.cache/maitred/k8s/ (cold: tens of minutes on 2 cores; cached: instant).
bash tests/cluster/build.sh >/dev/null

python3 -m pytest "$@"
