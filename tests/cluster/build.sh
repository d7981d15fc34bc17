#!/usr/bin/env bash
# Build the control-plane binaries that the cluster tests run: kube-apiserver,
# kube-controller-manager and kubectl of one pinned Kubernetes release, and
# etcd, all from the Go module proxy, into a cache folder outside the repo.
#
#   bash tests/cluster/build.sh                 # builds if needed; prints the bin folder
#   bash tests/cluster/build.sh --print-bin-dir # only prints where the binaries go
#
# Skips the build when all four binaries are already in the cache. A cold
# build (modules and Go build cache empty) took 14.5 min on a busy 2-core
# machine (11.4 CPU-minutes); it needs Go 1.24 or newer.
# Environment:
#   MAITRED_K8S_VERSION  Kubernetes release (default below)
#   MAITRED_ETCD_VERSION etcd release (default: the one that release pins)
#   MAITRED_K8S_CACHE    cache root (default ~/.cache/maitred/k8s)
#
# Why a wrapper module: k8s.io/kubernetes cannot be `go install`ed, because its
# go.mod replaces ~30 staging modules (k8s.io/api, client-go, ...) with local
# folders.  A wrapper module that requires k8s.io/kubernetes and replaces each
# staging module with its published v0.Y.Z builds it from the proxy alone.
set -euo pipefail

K8S_VERSION="${MAITRED_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${MAITRED_ETCD_VERSION:-v3.6.4}"   # what k8s v1.34.4's go.mod pins
CACHE_ROOT="${MAITRED_K8S_CACHE:-$HOME/.cache/maitred/k8s}"
OUT="$CACHE_ROOT/$K8S_VERSION"
BIN="$OUT/bin"
BINARIES=(kube-apiserver kube-controller-manager kubectl etcd)

have_all() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if [[ "${1:-}" == "--print-bin-dir" ]]; then
    echo "$BIN"
    exit 0
fi

if have_all; then
    echo "build.sh: cached binaries in $BIN" >&2
    echo "$BIN"
    exit 0
fi

# The official tarball's place, for shells whose PATH lacks it.
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: go (1.24 or newer) is not installed" >&2; exit 1; }
start_s=$(date +%s)
SRC="$OUT/src"
mkdir -p "$SRC" "$BIN"
cd "$SRC"

# Staging modules are the ones k8s.io/kubernetes requires at v0.0.0 and
# replaces with ./staging/src/...; their published tag is v0.<minor>.<patch>.
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
upstream_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
staging=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$upstream_mod")
required=$(awk '$2 == "v0.0.0" {print $1}' "$upstream_mod")

{
    echo "module maitred.dev/k8s-build"
    echo
    echo "go 1.24.0"
    echo
    echo "require ("
    echo "    k8s.io/kubernetes $K8S_VERSION"
    echo "    go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    for mod in $staging; do
        # Only replace what is required: some staging modules (the samples)
        # are not published for every release.
        if grep -qx "$mod" <<<"$required"; then
            echo "replace $mod => $mod $STAGING_VERSION"
        fi
    done
} >go.mod

# The server reports these through /version and `kubectl version`
# (the same variables as kubernetes' hack/lib/version.sh sets).
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

echo "build.sh: building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $BIN" >&2
tmp_bin=$(mktemp -d "$OUT/bin.tmp.XXXXXX")
trap 'rm -rf "$tmp_bin"' EXIT
go build -trimpath -ldflags "$ldflags" -o "$tmp_bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$tmp_bin/etcd" go.etcd.io/etcd/server/v3
# Move in only after every build succeeded, so a half build is never "cached".
for b in "${BINARIES[@]}"; do mv "$tmp_bin/$b" "$BIN/$b"; done

echo "build.sh: built in $(( $(date +%s) - start_s )) s" >&2
"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | head -1 >&2
echo "$BIN"
