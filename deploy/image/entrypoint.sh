#!/bin/bash
# bpfscope image entrypoint: `bpfscope serve` configured by environment variables.
#
#   BPFSCOPE_LISTEN         HOST:PORT to serve on (image default :9440, every address)
#   BPFSCOPE_TOKEN_FILE     bearer token file, e.g. a Secret's key (required off loopback)
#   BPFSCOPE_COLLECTORS     comma-separated collectors (default: all)
#   BPFSCOPE_CONFIG         TOML/YAML config file (the variables here override it)
#   BPFSCOPE_KUBERNETES     true|false: pod labels from the API (default: on inside a cluster)
#   BPFSCOPE_BPF_STATS      true|false: kernel.bpf_stats_enabled while serving (needs CAP_SYS_ADMIN)
#   BPFSCOPE_MAX_DURATION   longest on-demand run, seconds
#   BPFSCOPE_MAX_RUNS       on-demand runs at the same time
#   BPFSCOPE_TLS_CERT, BPFSCOPE_TLS_KEY   serve HTTPS
#   BPFSCOPE_WEB            false: no web page at /
#   BPFSCOPE_VERBOSE        true: debug logging and tracebacks
#
# Arguments starting with '-' are appended to `bpfscope serve`; any other first argument runs that
# bpfscope command instead (`profile -d 5`, `doctor`). Every value reaches bpfscope as one argument
# (no shell evaluation); bpfscope validates it and fails with a one-line error.
set -euo pipefail

BPFSCOPE=${BPFSCOPE_BIN:-bpfscope}

if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  exec "$BPFSCOPE" "$@"
fi

bool() {  # bool NAME: the variable's value as true/false; anything else is an error
  case "${!1}" in
    1|true|TRUE|True|yes|on) echo true ;;
    0|false|FALSE|False|no|off) echo false ;;
    *) echo "bpfscope-entrypoint: $1 must be true or false, got '${!1}'" >&2; return 2 ;;
  esac
}

args=(serve)
valued=(LISTEN:--listen TOKEN_FILE:--token-file COLLECTORS:--collectors CONFIG:--config
        MAX_DURATION:--max-duration MAX_RUNS:--max-runs TLS_CERT:--tls-cert TLS_KEY:--tls-key)
for pair in "${valued[@]}"; do
  var=BPFSCOPE_${pair%%:*}
  if [ -n "${!var:-}" ]; then args+=("${pair#*:}" "${!var}"); fi
done
if [ -n "${BPFSCOPE_KUBERNETES:-}" ]; then
  v=$(bool BPFSCOPE_KUBERNETES)
  if [ "$v" = true ]; then args+=(--kubernetes); else args+=(--no-kubernetes); fi
fi
if [ -n "${BPFSCOPE_BPF_STATS:-}" ]; then
  v=$(bool BPFSCOPE_BPF_STATS)
  if [ "$v" = false ]; then args+=(--no-bpf-stats); fi
fi
if [ -n "${BPFSCOPE_WEB:-}" ]; then
  v=$(bool BPFSCOPE_WEB)
  if [ "$v" = false ]; then args+=(--no-web); fi
fi
if [ -n "${BPFSCOPE_VERBOSE:-}" ]; then
  v=$(bool BPFSCOPE_VERBOSE)
  if [ "$v" = true ]; then args+=(-v); fi
fi

exec "$BPFSCOPE" "${args[@]}" "$@"
