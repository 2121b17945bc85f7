#!/usr/bin/env bash
# two-instances: two ssekify instances sharing a redis-server (the bus), with
# SUBSCRIBERS (10,000) split between them; RATE (8) broadcasts/s of SIZE (100)
# bytes for DURATION (20) s are published on the first instance only, so half
# of the deliveries cross Redis. Reports loss and latency over both instances,
# and the CPU time of both instances plus Redis per delivery. ssekify only.
#   SUBSCRIBERS RATE SIZE DURATION loadtest/scenarios/two-instances.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
RATE=${RATE:-8}
SIZE=${SIZE:-100}
DURATION=${DURATION:-20}
PUBLISHERS=${PUBLISHERS:-4}
PEER=ssekify

command -v redis-server >/dev/null || lt_die "redis-server is needed (Debian: apt-get install redis-server)"
lt_setup
lt_gen_processes "$SUBSCRIBERS" "$PUBLISHERS"

redis_port=$(lt_free_port)
taskset -c "$SERVER_CORES" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$LT_RUN" </dev/null >"$LT_RUN/redis.log" 2>&1 &
redis_pid=$!
LT_STARTED+=("$redis_pid")
for ((i = 0; i < 100; i++)); do
    grep -q 'Ready to accept connections' "$LT_RUN/redis.log" 2>/dev/null && break
    sleep 0.05
done

SSEKIFY_ARGS="$SSEKIFY_ARGS --redis redis://127.0.0.1:$redis_port"
a_port=$(lt_free_port); a_api=$(lt_free_port); b_port=$(lt_free_port); b_api=$(lt_free_port)
start_ssekify "$a_port" "$a_api" "$LT_RUN/ssekify-a.log" >"$LT_RUN/pid-a" || exit 1
start_ssekify "$b_port" "$b_api" "$LT_RUN/ssekify-b.log" >"$LT_RUN/pid-b" || exit 1
SERVER_PIDS="$(cat "$LT_RUN/pid-a") $(cat "$LT_RUN/pid-b") $redis_pid"
# Both instances must see the bus live before the run (readyz waits for the canary).
for api in "$a_api" "$b_api"; do
    for ((i = 0; i < 100; i++)); do
        curl -sf "http://127.0.0.1:$api/readyz" >/dev/null && break
        sleep 0.1
    done
done

SSE_URL="http://127.0.0.1:$a_port/sse?userId=u{i}&rooms=r{r}"
gen run "$(result_file two-instances)" --sse-url "http://127.0.0.1:$b_port/sse?userId=u{i}&rooms=r{r}" \
    --subscribers "$SUBSCRIBERS" --mode broadcast --publish-url "http://127.0.0.1:$a_api/v1/broadcast" \
    --rate "$RATE" --size "$SIZE" --duration "$DURATION" --publishers "$PUBLISHERS"
