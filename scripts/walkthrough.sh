#!/usr/bin/env bash
# deploy/compose/compose.yaml on this machine, without Docker: a Redis, two
# ssekify instances sharing it as their bus, and nginx in front with
# deploy/compose/nginx.conf and deploy/nginx/ssekify-locations.conf (only the
# upstream addresses and the listen port changed to free loopback ports).
# Then, with curl:
#   1. alice and bob subscribe THROUGH NGINX, which puts them on different
#      instances (least_conn);
#   2. a publish to each goes to the api of the instance that does NOT hold
#      them, and arrives (the bus);
#   3. a rolling restart of alice's instance: stop-accepting (as the
#      Kubernetes preStop hook does), SIGTERM (her stream gets
#      `server:shutdown` and closes), a publish while she is away, and her
#      reconnect through nginx with Last-Event-ID, which lands on the other
#      instance and replays what she missed.
# Everything it started is stopped at the end, also on failure.
#
#   scripts/walkthrough.sh            # uses target/debug/ssekify (built if missing)
#   SSEKIFY_BIN=target/release/ssekify scripts/walkthrough.sh
#
# Needs redis-server and redis-cli, nginx (Debian's packages; /usr/sbin/nginx is found off
# PATH too) and curl. Runs unprivileged: nginx gets its own prefix, temp
# directories and pid file under a temporary directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

say() { printf '\n==> %s\n' "$*"; }
fail() {
  printf '\nwalkthrough FAILED: %s\n' "$*" >&2
  for log in "$tmp"/*.log; do
    [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}

nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || { [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx; }
for tool in redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
[ -n "$nginx_bin" ] || { echo "error: nginx is not installed" >&2; exit 1; }
bin=${SSEKIFY_BIN:-$repo/target/debug/ssekify}
if [ ! -x "$bin" ]; then
  say "building ssekify"
  cargo build --quiet --bin ssekify
fi

tmp=$(mktemp -d)
pids=()
declare -a instance_pid
# Reaped children leave the list, so that cleanup never signals a reused pid.
forget() {
  local pid kept=()
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}
# True once a child has exited (a zombie until it is waited for).
exited() { [ ! -e "/proc/$1" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" = Z ]; }
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# A port nothing listens on (not handed out twice in this run).
taken=" "
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 12000))
    case $taken in *" $port "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      taken="$taken$port "
      echo "$port"
      return
    fi
  done
  fail "no free port"
}
# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.1 s.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$what (waited ${seconds}s)"
}

key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
redis_port=$(free_port)
public=("" "$(free_port)" "$(free_port)")
api=("" "$(free_port)" "$(free_port)")
nginx_port=$(free_port)

api_call() { # api_call INSTANCE METHOD PATH [curl args...]
  local instance=$1 method=$2 path=$3
  shift 3
  curl -sS --max-time 5 -X "$method" -H "Authorization: Bearer $key" "http://127.0.0.1:${api[$instance]}$path" "$@"
}
connections() { api_call "$1" GET /v1/stats | sed -n 's/.*"connections":\([0-9]*\).*/\1/p'; }
# streams_are N1 N2: ssekify-1 holds N1 streams and ssekify-2 N2.
streams_are() { [ "$(connections 1)" = "$1" ] && [ "$(connections 2)" = "$2" ]; }
# streams_total N: both together hold N.
streams_total() {
  local a b
  a=$(connections 1) b=$(connections 2)
  [ $((${a:-0} + ${b:-0})) = "$1" ]
}

say "Redis on 127.0.0.1:$redis_port (appendonly, as the bus wants)"
mkdir -p "$tmp/redis"
redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$tmp/redis" --save '' --appendonly yes \
  >"$tmp/redis.log" 2>&1 &
pids+=($!)
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping)" = PONG ]; }
wait_for 10 "redis-server answers PING" redis_up

for i in 1 2; do
  say "ssekify-$i: public 127.0.0.1:${public[$i]}, api 127.0.0.1:${api[$i]}, --redis redis://127.0.0.1:$redis_port"
  SSEKIFY_LISTEN="127.0.0.1:${public[$i]}" SSEKIFY_API_LISTEN="127.0.0.1:${api[$i]}" SSEKIFY_API_KEY="$key" \
    SSEKIFY_REDIS="redis://127.0.0.1:$redis_port" SSEKIFY_PIN_CORES=false SSEKIFY_SHARDS=1 \
    SSEKIFY_SHUTDOWN_GRACE=2s "$bin" >"$tmp/ssekify-$i.log" 2>&1 &
  pids+=($!)
  instance_pid[i]=$!
done
for i in 1 2; do
  # The container image's health check script; /readyz is 200 once the bus is live.
  wait_for 20 "ssekify-$i is ready (bus live)" env SSEKIFY_LISTEN="127.0.0.1:${public[$i]}" deploy/docker/ssekify-probe readyz
  echo "ssekify-$i: $(SSEKIFY_LISTEN="127.0.0.1:${public[$i]}" deploy/docker/ssekify-probe readyz)"
done

say "nginx on 127.0.0.1:$nginx_port, balancing both (deploy/compose/nginx.conf)"
mkdir -p "$tmp/nginx/snippets"
cp deploy/nginx/ssekify-locations.conf "$tmp/nginx/snippets/"
site=$(cat deploy/compose/nginx.conf)
for pair in "server ssekify-1:8080;|server 127.0.0.1:${public[1]};" \
            "server ssekify-2:8080;|server 127.0.0.1:${public[2]};" \
            "listen 8080;|listen 127.0.0.1:$nginx_port;"; do
  from=${pair%%|*} to=${pair#*|}
  [ "$(grep -cF "$from" <<<"$site")" = 1 ] || fail "deploy/compose/nginx.conf should have '$from' once"
  site=${site/"$from"/"$to"}
done
printf '%s\n' "$site" >"$tmp/nginx/site.conf"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
pid $tmp/nginx/nginx.pid;
error_log stderr notice;
events { worker_connections 256; }
http {
    access_log $tmp/nginx/access.log;
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    include site.conf;
}
EOF
"$nginx_bin" -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" -e stderr >"$tmp/nginx.log" 2>&1 &
pids+=($!)
wait_for 10 "nginx listens" curl -fsS --max-time 1 "http://127.0.0.1:$nginx_port/healthz"
echo "GET /healthz through nginx: $(curl -sS --max-time 2 "http://127.0.0.1:$nginx_port/healthz")"

# subscribe NAME [LAST-EVENT-ID]: a stream through nginx into $tmp/NAME.sse.
subscribe() {
  local name=$1 file="$tmp/$1.sse" args=()
  [ $# -gt 1 ] && args=(-H "Last-Event-ID: $2")
  : >"$file"
  curl -sN --max-time 60 "${args[@]}" "http://127.0.0.1:$nginx_port/sse?userId=$name" >"$file" &
  pids+=($!)
  stream_pid=$!
}
received() { grep -qF "data: $2" "$tmp/$1.sse"; }

say "alice and bob subscribe through nginx"
subscribe alice
alice_pid=$stream_pid
wait_for 5 "alice's stream is open" streams_total 1
if [ "$(connections 1)" = 1 ]; then alice_home=1 other=2; else alice_home=2 other=1; fi
subscribe bob
wait_for 5 "bob's stream is open on the other instance (least_conn)" streams_are 1 1
echo "alice is on ssekify-$alice_home, bob on ssekify-$other"

say "publish to alice on ssekify-$other's api, to bob on ssekify-$alice_home's api"
echo "(delivered: streams of the answering instance; instances: how many instances took it from the bus)"
echo "ssekify-$other answers: $(api_call "$other" POST '/v1/users/alice/events?event=notify' -d 'hello alice, from the other instance')"
echo "ssekify-$alice_home answers: $(api_call "$alice_home" POST '/v1/users/bob/events?event=notify' -d 'hello bob, from the other instance')"
wait_for 5 "alice got her message through the bus and nginx" received alice 'hello alice, from the other instance'
wait_for 5 "bob got his message through the bus and nginx" received bob 'hello bob, from the other instance'
echo "alice's stream so far:"
sed 's/^/    /' "$tmp/alice.sse"
last_id=$(sed -n 's/^id: //p' "$tmp/alice.sse" | tail -1)
[ -n "$last_id" ] || fail "alice's event has no id"

say "stopping ssekify-$alice_home as a rolling restart does: stop-accepting (the preStop hook), then SIGTERM"
SSEKIFY_API_LISTEN="127.0.0.1:${api[$alice_home]}" SSEKIFY_API_KEY="$key" deploy/docker/ssekify-probe stop-accepting
echo "its /readyz now: $(curl -sS --max-time 2 "http://127.0.0.1:${public[$alice_home]}/readyz")"
# A newcomer through nginx never sees the draining instance's 503: nginx
# retries the other one (proxy_next_upstream http_503).
for n in 1 2 3; do
  code=$(curl -s -o /dev/null --max-time 0.5 -w '%{http_code}' "http://127.0.0.1:$nginx_port/sse?userId=newcomer$n" || true)
  [ "$code" = 200 ] || fail "a new subscriber through nginx got $code while ssekify-$alice_home drains"
done
echo "3 new subscribers through nginx while it drains: 200 each (a draining instance's 503 is retried on the other)"
kill -TERM "${instance_pid[$alice_home]}"
wait_for 10 "alice's stream closed" exited "$alice_pid"
wait "$alice_pid" || true
forget "$alice_pid"
grep -q '^event: server:shutdown' "$tmp/alice.sse" || fail "alice's stream had no server:shutdown event"
wait_for 10 "ssekify-$alice_home exits" exited "${instance_pid[$alice_home]}"
wait "${instance_pid[$alice_home]}" && status=0 || status=$?
forget "${instance_pid[$alice_home]}"
echo "alice's stream ended with: $(grep -A1 '^event: server:shutdown' "$tmp/alice.sse" | tr '\n' ' ')"
echo "ssekify-$alice_home exited with status $status"
[ "$status" = 0 ] || fail "ssekify-$alice_home exited with $status after SIGTERM, not 0"

say "while alice is away: a publish to her on ssekify-$other"
echo "ssekify-$other answers: $(api_call "$other" POST '/v1/users/alice/events?event=notify' -d 'sent while alice was away')"

say "alice reconnects through nginx with Last-Event-ID: $last_id"
subscribe alice "$last_id"
wait_for 5 "alice's missed message was replayed on ssekify-$other" received alice 'sent while alice was away'
sed 's/^/    /' "$tmp/alice.sse"

say "walkthrough OK: two instances, one Redis, nginx in front; delivered across instances and resumed after a restart"
