# syntax=docker/dockerfile:1
# bpfscope node agent image.
#
#   docker build -t bpfscope/bpfscope:0.1.0 .
#
# Stage 1 compiles every BPF object with clang (CO-RE, against the committed vmlinux.h) and builds
# the wheel that carries them. Stage 2 is slim Debian with the system libbpf.so.1 and the package:
# no compiler, no kernel headers. The entrypoint runs `bpfscope serve`, configured by environment
# variables (deploy/image/entrypoint.sh lists them); any other first argument runs that bpfscope
# command instead (`docker run ... bpfscope/bpfscope profile -d 5`).
#
# Tracing needs privileges the container does not have by default: see docs/kubernetes.md
# (capabilities-only mode: CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE, CAP_SYS_PTRACE, CAP_NET_ADMIN;
# or privileged mode), plus the host's PID namespace and /sys/kernel/{btf,tracing,debug},
# /sys/fs/cgroup and /sys/fs/bpf.

ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------- build
FROM debian:${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev make python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md Makefile ./
COPY bpfscope ./bpfscope
# `make bpf` is the build CI checks; -o skips its developer-setup prerequisite (venv, apt).
RUN make -o .venv/.deps-stamp bpf \
 && python3 -m venv /tmp/buildenv \
 && /tmp/buildenv/bin/pip install --no-cache-dir build \
 && /tmp/buildenv/bin/python -m build --wheel --outdir /dist . \
 && python3 -c "import glob, sys, zipfile; (w,) = glob.glob('/dist/bpfscope-*.whl'); \
names = zipfile.ZipFile(w).namelist(); objs = [n for n in names if n.endswith('.bpf.o')]; \
print(w, len(objs), 'BPF objects'); \
sys.exit(0 if 'bpfscope/tools/execsnoop.bpf.o' in names else 'BPF objects missing from the wheel')"

# -------------------------------------------------------------------------------------- runtime
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
LABEL org.opencontainers.image.title="bpfscope" \
      org.opencontainers.image.description="bpfscope node agent: CO-RE eBPF tracing tools over REST and Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 libstdc++6 python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /dist/ /tmp/dist/
RUN python3 -m venv /opt/bpfscope \
 && /opt/bpfscope/bin/pip install --no-cache-dir "$(ls /tmp/dist/bpfscope-*.whl)[agent]" \
 && rm -rf /tmp/dist \
 && ln -s /opt/bpfscope/bin/bpfscope /usr/local/bin/bpfscope
COPY deploy/image/entrypoint.sh /usr/local/bin/bpfscope-entrypoint
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BPFSCOPE_LISTEN=:9440
# root inside the container: the capabilities the pod grants apply to uid 0 (docs/kubernetes.md)
USER 0
EXPOSE 9440
ENTRYPOINT ["/usr/local/bin/bpfscope-entrypoint"]
