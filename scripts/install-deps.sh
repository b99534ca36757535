#!/usr/bin/env bash
# Install what bpfscope needs on Debian 12, only what is missing:
#   apt: clang/llvm (BPF build), libbpf (runtime + headers), bpftool, gcc (test programs),
#        python3-venv; with --bench also bpftrace, linux-perf, iperf3; with --kernels qemu.
#   a virtualenv in .venv with the package (editable) and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(clang llvm libbpf-dev libbpf1 bpftool gcc g++ binutils make python3-venv python3-dev iproute2 bash util-linux procps nodejs)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(bpftrace linux-perf iperf3) ;;
    --kernels) pkgs+=(qemu-system-x86) ;;
    --browser) pkgs+=(chromium) ;;
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

# Only the apt part for --bench/--kernels/--browser once the venv exists.
if [ $# -gt 0 ] && [ -x .venv/bin/python ]; then exit 0; fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[agent,dev]' --config-settings editable_mode=compat
