#!/usr/bin/env bash
# Renders deploy/k8s (base and every overlay) with `kubectl kustomize` and validates each rendering
# offline with validate_k8s.py (schema of the Kubernetes API types, ServiceMonitor subset, wiring).
#   check_k8s.sh SOURCE_DIR
# Exit 77 (skipped) when kubectl or the Python kubernetes/yaml modules are missing (Debian packages
# kubernetes-client, python3-kubernetes; scripts/setup.sh installs them).
set -euo pipefail
src=$1
here=$(cd "$(dirname "$0")" && pwd)
python=/usr/bin/python3
[ -x "$python" ] || python=python3

if ! command -v kubectl >/dev/null; then
  echo "SKIPPED: kubectl is not installed (Debian package kubernetes-client)"
  exit 77
fi
if ! "$python" -c 'import kubernetes, yaml' 2>/dev/null; then
  echo "SKIPPED: $python cannot import kubernetes and yaml (Debian python3-kubernetes, python3-yaml)"
  exit 77
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
checked=0
for dir in "$src/deploy/k8s/base" "$src"/deploy/k8s/overlays/*/; do
  name=$(basename "$dir")
  if ! kubectl kustomize "$dir" >"$scratch/$name.yaml" 2>"$scratch/$name.err"; then
    echo "FAIL: kubectl kustomize $dir"
    cat "$scratch/$name.err"
    status=1
    continue
  fi
  "$python" "$here/validate_k8s.py" "$scratch/$name.yaml" || status=1
  checked=$((checked + 1))
done
if [ "$checked" -lt 3 ]; then
  echo "FAIL: expected the base and at least two overlays, rendered $checked"
  status=1
fi
exit "$status"
