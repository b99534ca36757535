#!/usr/bin/env bash
# Render the plain manifests in deploy/manifests/ from the Helm chart (tests check they match):
#   deploy/render.sh [OUTDIR]          (default: deploy/manifests; needs helm: scripts/install-deps.sh --helm)
# The plain YAML expects the token Secret to exist (it holds no token of its own):
#   kubectl apply -f deploy/manifests/bpfscope.yaml     # creates the namespace too
#   kubectl -n bpfscope create secret generic bpfscope-token --from-literal=token="$(openssl rand -hex 32)"
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-deploy/manifests}
helm=${HELM:-$(command -v helm || echo .cache/helm/helm)}
chart=deploy/helm/bpfscope
common=(template bpfscope "$chart" --namespace bpfscope --set token.existingSecret=bpfscope-token --set namespace.create=true)
header() { echo "# Rendered from deploy/helm/bpfscope by deploy/render.sh ($1). Do not edit: change the chart."; }
mkdir -p "$out"
{ header "capabilities mode"; "$helm" "${common[@]}" --set serviceMonitor.enabled=false; } > "$out/bpfscope.yaml"
{ header "privileged mode"; "$helm" "${common[@]}" --set serviceMonitor.enabled=false --set securityMode=privileged; } \
  > "$out/bpfscope-privileged.yaml"
{ header "needs the Prometheus Operator"; "$helm" "${common[@]}" --show-only templates/servicemonitor.yaml; } \
  > "$out/servicemonitor.yaml"
