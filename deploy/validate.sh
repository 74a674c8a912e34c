#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: renders deploy/k8s with
# kustomize, checks every object against the Kubernetes schemas
# (kubernetes-validate --strict, schemas shipped in the package) and runs
# checkov's Kubernetes policies. Findings that do not apply are skipped in
# the manifests themselves with the reason (checkov.io/skipN annotations).
# The tools are installed into a virtualenv (VENV) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-/var/tmp/cairn-venv}
if [[ ! -x $VENV/bin/checkov || ! -x $VENV/bin/kubernetes-validate ]]; then
  echo "validate: installing kubernetes-validate and checkov into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubernetes-validate==1.37.0 checkov==3.3.30
fi
if ! command -v kubectl >/dev/null; then
  echo "validate: installing kubectl (Debian's kubernetes-client)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q kubernetes-client >/dev/null
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

kubectl kustomize deploy/k8s >"$out/cairn.yaml"
echo "validate: $(grep -c '^kind:' "$out/cairn.yaml") objects rendered" >&2
"$VENV/bin/kubernetes-validate" --strict --quiet "$out/cairn.yaml"
# The overlay needs kustomize v4+ (kubectl 1.21+); Debian's kubectl is older.
if kubectl kustomize deploy/overlays/single-host >"$out/single-host.yaml" 2>"$out/err"; then
  "$VENV/bin/kubernetes-validate" --strict --quiet "$out/single-host.yaml"
  grep -q preferredDuringScheduling "$out/single-host.yaml"
  mv "$out/single-host.yaml" "$out/overlays-single-host.yaml.txt"
else
  echo "validate: skipping the single-host overlay: $(head -c 200 "$out/err")" >&2
fi
# The StatefulSet's start script must at least parse.
python3 deploy/e2e/k8s_env.py node-script >"$out/start.sh"
sh -n "$out/start.sh"
"$VENV/bin/checkov" --skip-download --framework kubernetes -d "$out" --compact --quiet
echo "validate: manifests valid, no checkov finding left" >&2
