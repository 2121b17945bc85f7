#!/usr/bin/env bash
# ssekify tour with curl: subscribe in the background, publish to a user, a
# room, everyone and as a batch (JSON and NDJSON), then print what the
# subscribers received and the server's stats.
#
#   SSEKIFY_PUBLIC=127.0.0.1:8080 SSEKIFY_API=127.0.0.1:8081 SSEKIFY_API_KEY=... ./curl.sh
#
# Addresses are host:port (or full http:// URLs). SSEKIFY_API_KEY is only
# needed when the server runs with --api-key.
set -euo pipefail

public=${SSEKIFY_PUBLIC:-127.0.0.1:8080}
api=${SSEKIFY_API:-127.0.0.1:8081}
[[ $public == http* ]] || public="http://$public"
[[ $api == http* ]] || api="http://$api"

# Send the key only when there is one. The ${a[@]+...} form expands an empty
# array safely under set -u on old bash (macOS 3.2) too.
auth=()
if [[ -n ${SSEKIFY_API_KEY:-} ]]; then
  auth=(-H "Authorization: Bearer $SSEKIFY_API_KEY")
fi

out=$(mktemp -d)
pids=()
cleanup() {
  # Only the curls this script started.
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$out"
}
trap cleanup EXIT

# publish PATH [CURL ARGS...]: POST to the api, fail loudly on a non-2xx answer.
publish() {
  local path=$1; shift
  printf '\n> POST %s\n' "$path"
  curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} -X POST "$api$path" "$@"
  echo
}

# wait_for TEXT FILE...: until every FILE holds TEXT, at most 5 s (a loaded
# machine may take a moment to open a stream or deliver a frame).
wait_for() {
  local text=$1 file tries=0; shift
  for file in "$@"; do
    until grep -qF -- "$text" "$file"; do
      tries=$((tries + 1))
      if [[ $tries -gt 50 ]]; then
        echo "gave up waiting for '$text' in $file" >&2
        return 1
      fi
      sleep 0.1
    done
  done
}

echo "health: $(curl -sS "$public/healthz")  ready: $(curl -sS "$public/readyz")"

# -N: no output buffering, so each event is written to the file as it arrives.
# alice is a named user in two rooms; the second subscriber is anonymous and
# only gets room messages and broadcasts.
curl -sS -N "$public/sse?userId=alice&rooms=lobby,news" >"$out/alice.txt" &
pids+=($!)
curl -sS -N "$public/sse?rooms=lobby" >"$out/anonymous.txt" &
pids+=($!)
# A stream's first line, `retry:`, is written once it is registered: publish
# only then, or the first messages could go out before anyone listens.
wait_for 'retry:' "$out/alice.txt" "$out/anonymous.txt"

publish '/v1/users/alice/events?event=notify' \
  -H 'Content-Type: application/json' --data '{"title":"Order shipped","orderId":42}'

publish '/v1/users/alice/events?event=chat&id=chat-0001' \
  -H 'Content-Type: text/plain; charset=utf-8' --data-binary $'hello alice\nsecond line'

publish '/v1/rooms/lobby/events?event=presence' \
  -H 'Content-Type: application/json' --data '{"user":"bob","state":"online"}'

publish '/v1/broadcast' \
  -H 'Content-Type: application/json' --data '{"maintenance":"in 10 minutes"}'

publish '/v1/publish' -H 'Content-Type: application/json' --data @- <<'JSON'
{"messages":[
  {"user":"alice","event":"notify","data":{"unread":3}},
  {"room":"news","event":"headline","data":"ssekify released"},
  {"all":true,"data":{"ping":true}}
]}
JSON

# --data-binary keeps the newlines that separate NDJSON records.
publish '/v1/publish' -H 'Content-Type: application/x-ndjson' --data-binary @- <<'NDJSON'
{"user":"alice","event":"notify","data":{"unread":4}}
{"room":"lobby","data":"plain text to the lobby"}
{"all":true,"event":"tick","data":1}
NDJSON

# The last message (`tick`, to everyone) has reached both: so has everything before it.
wait_for 'event: tick' "$out/alice.txt" "$out/anonymous.txt"

printf '\n===== alice received =====\n'; cat "$out/alice.txt"
printf '===== anonymous received =====\n'; cat "$out/anonymous.txt"

printf '===== stats =====\n'
curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} "$api/v1/stats"
echo
