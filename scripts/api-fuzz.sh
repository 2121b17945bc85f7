#!/usr/bin/env bash
# API fuzzing: schemathesis generates requests from docs/openapi.json and
# sends them to the real server, on both listeners, checking that nothing
# answers 5xx and that every status code, content type, body and documented
# header is the one the description gives.
#
#   scripts/api-fuzz.sh     # scripts/test.sh runs it after `cargo test`
#
# The server runs with --demo (so GET / is served), an api key, and free
# loopback ports. The runs, in order:
#   1. public listener: the paths whose x-listener is `public` or `both`;
#      GET /sse and GET /t/{tenant}/sse are fuzzed too: schemathesis reads
#      each stream for 0.3 s, then closes it (scripts/api-fuzz.toml);
#   2. api listener: the paths whose x-listener is `api` or `both`, with the
#      key, except the two admin routes (the room changes of one connection
#      in a run of their own, where the 404 of an unknown id is expected);
#   3. api listener without the key: every api path, admin ones included
#      (the key is checked first, so nothing is changed);
#   4. POST /v1/admin/stop-accepting, then the public listener again, now
#      draining (subscribe and /readyz answer 503);
#   5. POST /v1/admin/shutdown last, from the example values the description
#      gives (one request: the server then exits, which must be with 0).
#
# Environment:
#   SSEKIFY_BIN=/path/to/ssekify    # default: target/debug/ssekify, built here
#   SCHEMATHESIS_BIN=/path/to/st    # default: `st` on PATH (scripts/test.sh
#                                   # installs it in a venv and sets this)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() {
  echo "error: $*" >&2
  exit 1
}

spec=$PWD/docs/openapi.json
config=$PWD/scripts/api-fuzz.toml
# schemathesis runs in here: its failure cache (for `st replay <id>`, run from
# this directory) and Hypothesis's files stay out of the source tree.
out=$PWD/target/api-fuzz
mkdir -p "$out"

st=$(command -v "${SCHEMATHESIS_BIN:-st}") ||
  die "schemathesis (${SCHEMATHESIS_BIN:-st}) not found: scripts/test.sh installs it, or set SCHEMATHESIS_BIN"
case $st in /*) ;; *) st=$PWD/$st ;; esac # it runs from $out
"$st" --version

if [ -z "${SSEKIFY_BIN:-}" ]; then
  step "cargo build --bin ssekify"
  cargo build --bin ssekify
  SSEKIFY_BIN=$PWD/target/debug/ssekify
fi
[ -x "$SSEKIFY_BIN" ] || die "SSEKIFY_BIN=$SSEKIFY_BIN is not an executable"

# --- The server ---------------------------------------------------------------
work=$(mktemp -d)
server_pid=
cleanup() {
  local status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -s "$work/server.log" ]; then
    echo "--- server log (last 40 lines) ---" >&2
    tail -n 40 "$work/server.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

api_key=fuzz-$RANDOM$RANDOM
step "starting $SSEKIFY_BIN on free loopback ports"
# A short heartbeat, so the streams read in run 1 carry `: ping` comments too.
"$SSEKIFY_BIN" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --api-key "$api_key" \
  --demo --shards 2 --pin-cores false --keep-alive 100ms --log-level info \
  >"$work/server.log" 2>&1 &
server_pid=$!

ready=
for _ in $(seq 100); do
  ready=$(grep -m1 'ssekify ready' "$work/server.log" || true)
  [ -n "$ready" ] && break
  kill -0 "$server_pid" 2>/dev/null || die "the server exited before it was ready"
  sleep 0.1
done
[ -n "$ready" ] || die "the server printed no ready line within 10 s"
public=$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$ready")
api=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$ready")
echo "public listener http://$public, api listener http://$api"

# --- The runs -----------------------------------------------------------------
# The documented paths served by the given listeners (their x-listener), as
# --include-path arguments.
include_paths() {
  python3 - "$spec" "$@" <<'EOF'
import json, sys

spec, *listeners = sys.argv[1:]
for path, item in json.load(open(spec))["paths"].items():
    if item.get("x-listener") in listeners:
        print(f"--include-path={path}")
EOF
}
mapfile -t public_paths < <(include_paths public both)
mapfile -t api_paths < <(include_paths api both)
if [ "${#public_paths[@]}" -eq 0 ] || [ "${#api_paths[@]}" -eq 0 ]; then
  die "$spec names no paths for one of the listeners (x-listener)"
fi
auth=(--header "Authorization: Bearer $api_key")

# schemathesis run against one listener: a title, the base URL, then options.
schemathesis() {
  local title=$1 url=$2
  shift 2
  step "schemathesis: $title ($url)"
  (cd "$out" && "$st" --config-file "$config" run "$spec" --url "$url" --no-color "$@")
}
# The same, and the server must still run afterwards.
fuzz() {
  schemathesis "$@"
  kill -0 "$server_pid" 2>/dev/null || die "the server is gone after: $1"
}

SECONDS=0
fuzz "public listener" "http://$public" "${public_paths[@]}"
# Live room changes of one connection: a generated id names no connection,
# so they answer the documented 404 (tests/rooms_live.rs reaches the rest);
# their own run, with every warning but missing_test_data.
connection_rooms='^/v1/(t/[^/]+/)?connections/[^/]+/rooms/'
fuzz "api listener" "http://$api" "${api_paths[@]}" --exclude-path-regex "^/v1/admin/|$connection_rooms" "${auth[@]}"
all_warnings_but=base_url_mismatch,validation_mismatch,missing_deserializer
all_warnings_but+=,unused_openapi_auth,unsupported_regex,method_not_allowed,constants_extraction
all_warnings_but+=,unmatched_filter,unresolvable_reference,rate_limited,dictionary_mismatch,timeout_units
fuzz "api listener, one connection's rooms" "http://$api" --include-path-regex "$connection_rooms" \
  --warnings "missing_auth,$all_warnings_but" "${auth[@]}"
# Every request gets 401 here: every warning but that one (missing_auth) stays
# on, and fails the run (scripts/api-fuzz.toml).
no_key_warnings=missing_test_data,$all_warnings_but
fuzz "api listener, without the api key" "http://$api" "${api_paths[@]}" --exclude-path-regex '^/(healthz|readyz)$' \
  --warnings "$no_key_warnings"
fuzz "stop-accepting" "http://$api" --include-path /v1/admin/stop-accepting "${auth[@]}"
# Draining, subscribe and /readyz answer 503 as documented: not_a_server_error
# (any 5xx) is left out of this run, status_code_conformance still rejects a
# 5xx the description does not give.
fuzz "public listener, draining" "http://$public" "${public_paths[@]}" --exclude-checks not_a_server_error
schemathesis "shutdown" "http://$api" --include-path /v1/admin/shutdown --phases examples "${auth[@]}"

step "waiting for the server to exit"
for _ in $(seq 100); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
  die "the server still runs 10 s after POST /v1/admin/shutdown"
fi
status=0
wait "$server_pid" || status=$?
server_pid=
[ "$status" -eq 0 ] || die "the server exited with $status after POST /v1/admin/shutdown"
if grep -q 'panicked' "$work/server.log"; then
  die "a thread of the server panicked"
fi
echo "the server exited with 0"

step "api fuzzing passed in ${SECONDS}s"
