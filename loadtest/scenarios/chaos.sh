#!/usr/bin/env bash
# chaos: does the cross-instance bus lose or duplicate acknowledged messages
# under faults? One redis-server and INSTANCES (3) ssekify instances with
# --redis; `ssekify-loadtest chaos` holds SUBSCRIBERS (10,000) logical
# subscribers (user u<i>, one or two of ROOMS (100) rooms, and broadcasts)
# that drop their stream every 5-20 s and come back on a random instance with
# Last-Event-ID, like browsers, while publishers send RATE (180) msg/s to
# random instances (users, rooms, broadcasts; single and batch routes) for
# DURATION (60) s, each message with its own id, retrying 503s with the same
# id. Meanwhile the faults, at fractions of DURATION (the times for 60 s):
#   10 s  rolling restart of instance 2 (SIGTERM, drain, start on the same ports)
#   20 s  Redis stalled: kill -STOP, 3 s, kill -CONT
#   30 s  redis-cli CLIENT KILL TYPE pubsub
#   40 s  redis-cli DEBUG SLEEP 2
#   45 s  Redis restarted on the same port (PERSIST=1: with appendonly yes)
# The generator's table counts expected, delivered once, gap-announced, lost,
# duplicated, out-of-order and unexpected messages (loadtest/README.md, "Chaos");
# it exits 2 when any acknowledged message was lost, duplicated or misrouted,
# and so does this script (usable as a gate).
# Then (BUS_COST=1) the bus's cost per message on a receiving instance: only
# instance 1 publishes, to BUS_USERS (1) users, BUS_SECONDS (10) s at BUS_RATE (2,000)
# msg/s on the single route, then at BUS_BATCH_RATE (20,000) msg/s in batches
# of BUS_BATCH (100); the last instance, which has no subscriber and publishes
# nothing, is charged: (its threads' run time, /proc/<pid>/task/*/schedstat,
# over the phase) / (its bus.received increase in GET /v1/stats). Beside each, the receiving
# floor (`ssekify-loadtest receive-floor`: a bare thread woken to read the
# same number of messages per write, at the same rate).
#   FAULTS=all|none PERSIST=0|1 SUBSCRIBERS RATE DURATION SETTLE=5 ROOMS INSTANCES=3
#   PUBLISHERS=16 BUS_COST=1 BUS_SECONDS BUS_RATE BUS_BATCH BUS_BATCH_RATE BUS_USERS
#   CHAOS_ARGS (more generator flags) loadtest/scenarios/chaos.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROOMS=${ROOMS:-100}
RATE=${RATE:-180}
DURATION=${DURATION:-60}
SETTLE=${SETTLE:-5}
INSTANCES=${INSTANCES:-3}
FAULTS=${FAULTS:-all}
PERSIST=${PERSIST:-0}
PUBLISHERS=${PUBLISHERS:-16}
BUS_COST=${BUS_COST:-1}
BUS_SECONDS=${BUS_SECONDS:-10}
BUS_RATE=${BUS_RATE:-2000}
BUS_BATCH=${BUS_BATCH:-100}
BUS_BATCH_RATE=${BUS_BATCH_RATE:-20000}
BUS_USERS=${BUS_USERS:-1}
CHAOS_ARGS=${CHAOS_ARGS:-}
PEER=ssekify

command -v redis-server >/dev/null || lt_die "redis-server is needed (Debian: apt-get install redis-server)"
command -v redis-cli >/dev/null || lt_die "redis-cli is needed (Debian: apt-get install redis-tools)"
[[ $FAULTS == all || $FAULTS == none ]] || lt_die "FAULTS=all or FAULTS=none, not $FAULTS"
((INSTANCES >= 1)) || lt_die "INSTANCES must be at least 1"
lt_setup
lt_gen_processes "$SUBSCRIBERS" "$((PUBLISHERS * INSTANCES))"

REDIS_PID=""
REDIS_STARTS=0
# A stopped Redis ignores SIGTERM: continue it before the cleanup stops it.
trap '[[ -n $REDIS_PID ]] && kill -CONT "$REDIS_PID" 2>/dev/null; lt_cleanup' EXIT

redis_port=$(lt_free_port)
mkdir -p "$LT_RUN/redis"
redis_args=(--port "$redis_port" --bind 127.0.0.1 --dir "$LT_RUN/redis" --save '')
if [[ $PERSIST == 1 ]]; then redis_args+=(--appendonly yes); else redis_args+=(--appendonly no); fi
# DEBUG is refused unless enabled (Redis 7+ has the setting; older ones allow it).
if [[ $(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p') -ge 7 ]]; then
    redis_args+=(--enable-debug-command local)
fi

# Starts redis-server on $redis_port; sets REDIS_PID.
start_redis() {
    local log=$LT_RUN/redis-$REDIS_STARTS.log i
    REDIS_STARTS=$((REDIS_STARTS + 1))
    taskset -c "$SERVER_CORES" redis-server "${redis_args[@]}" </dev/null >"$log" 2>&1 &
    REDIS_PID=$!
    LT_STARTED+=("$REDIS_PID")
    for ((i = 0; i < 200; i++)); do
        grep -q 'Ready to accept connections' "$log" 2>/dev/null && return 0
        lt_alive "$REDIS_PID" || break
        sleep 0.05
    done
    tail -n 20 "$log" >&2
    lt_die "redis-server did not start"
}

# Waits until instance k's /readyz answers 200 (the bus is live), at most 20 s.
wait_ready() {
    local i
    for ((i = 0; i < 200; i++)); do
        curl -sf "http://127.0.0.1:${API[$1]}/readyz" >/dev/null && return 0
        sleep 0.1
    done
    lt_log "instance $1 not ready after 20 s"
    return 1
}

# Starts instance k on its ports; sets PID[k].
start_instance() {
    local k=$1
    STARTS[k]=$((${STARTS[k]:-0} + 1))
    start_ssekify "${PORT[k]}" "${API[k]}" "$LT_RUN/ssekify-$k-${STARTS[k]}.log" >"$LT_RUN/pid" || lt_die "instance $k did not start"
    PID[k]=$(cat "$LT_RUN/pid")
}

# stat_of K KEY: the first "KEY":<number> in instance k's GET /v1/stats (the
# instance's totals come before the per-shard copies), 0 if there is none;
# bus.KEY reads the key inside the "bus" object.
stat_of() {
    local body key=$2
    body=$(curl -sf "http://127.0.0.1:${API[$1]}/v1/stats") || { echo 0; return; }
    if [[ $key == bus.* ]]; then
        key=${key#bus.}
        body=${body##*\"bus\":\{}
    fi
    grep -o "\"$key\":[0-9]*" <<<"$body" | head -n 1 | cut -d: -f2 | grep . || echo 0
}

# Stops pid $1 as a deploy would: one SIGTERM (ssekify announces the shutdown
# and closes its streams over --shutdown-grace), SIGKILL only after 20 s.
stop_gracefully() {
    local pid=$1 i keep=() p
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 200; i++)); do
        lt_alive "$pid" || break
        sleep 0.1
    done
    lt_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    for p in "${LT_STARTED[@]}"; do [[ $p != "$pid" ]] && keep+=("$p"); done
    LT_STARTED=("${keep[@]}")
}

start_redis
SSEKIFY_ARGS="$SSEKIFY_ARGS --redis redis://127.0.0.1:$redis_port"
PORT=() API=() PID=() STARTS=()
for ((k = 0; k < INSTANCES; k++)); do
    PORT[k]=$(lt_free_port)
    API[k]=$(lt_free_port)
    start_instance "$k"
done
for ((k = 0; k < INSTANCES; k++)); do wait_ready "$k" || lt_die "the bus is not live on instance $k"; done
lt_log "redis on 127.0.0.1:$redis_port, ${INSTANCES} instance(s): public ${PORT[*]}, api ${API[*]}"

name=chaos
[[ $FAULTS == none ]] && name=chaos-nofaults
json=$(result_file "$name")
ready=$LT_RUN/publishing
args=(--label "$PEER" --json "$json" --subscribers "$SUBSCRIBERS" --rooms "$ROOMS" --rate "$RATE"
    --duration "$DURATION" --settle "$SETTLE" --publishers "$PUBLISHERS" --processes "$GEN_PROCESSES"
    --ready-file "$ready")
for ((k = 0; k < INSTANCES; k++)); do
    args+=(--sse-url "http://127.0.0.1:${PORT[k]}/sse" --api-url "http://127.0.0.1:${API[k]}")
done
[[ -n $SOURCE_IPS ]] && args+=(--source-ips "$SOURCE_IPS")
lt_log "ssekify-loadtest chaos ${args[*]} $CHAOS_ARGS (generator on cores $GEN_CORES, faults: $FAULTS)"
# shellcheck disable=SC2086
taskset -c "$GEN_CORES" "$GEN_BIN" chaos "${args[@]}" $CHAOS_ARGS </dev/null &
LT_GEN=$!

# Publishing starts when the subscribers are connected; the faults are timed from it.
while [[ ! -s $ready ]]; do
    lt_alive "$LT_GEN" || break
    sleep 0.1
done
start_ns=$(cat "$ready" 2>/dev/null)
FAULT_LOG=""

# Sleeps until $1 × DURATION seconds after publishing started; logs fault $2.
at() {
    local ms
    ms=$(awk -v f="$1" -v d="$DURATION" -v s="$start_ns" -v now="$(date +%s%N)" \
        'BEGIN { printf "%d", (s + f * d * 1e9 - now) / 1e6 }')
    ((ms > 0)) && sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
    local t
    t=$(awk -v s="$start_ns" -v now="$(date +%s%N)" 'BEGIN { printf "%.1f", (now - s) / 1e9 }')
    lt_log "t=${t}s: $2"
    FAULT_LOG+="$2@${t}s "
}

if [[ $FAULTS == all && -n $start_ns ]] && lt_alive "$LT_GEN"; then
    victim=$((INSTANCES > 1 ? 1 : 0))
    at 0.1667 "restart-instance-$victim"
    stop_gracefully "${PID[victim]}"
    start_instance "$victim"
    wait_ready "$victim"
    at 0.3333 "redis-stop-3s"
    kill -STOP "$REDIS_PID"
    sleep 3
    kill -CONT "$REDIS_PID"
    at 0.5 "client-kill-pubsub"
    lt_log "  clients killed: $(redis-cli -p "$redis_port" CLIENT KILL TYPE pubsub 2>&1)"
    at 0.6667 "redis-debug-sleep-2"
    lt_log "  DEBUG SLEEP: $(redis-cli -p "$redis_port" DEBUG SLEEP 2 2>&1)"
    at 0.75 "redis-restart"
    stop_gracefully "$REDIS_PID"
    start_redis
fi
wait "$LT_GEN"
status=$?
LT_GEN=""
((status == 0 || status == 2)) || lt_die "the generator failed (status $status)"
# What the instances saw (a restarted one counts since its restart): bus
# reconnects, and frames a full subscriber queue dropped or streams it closed,
# which would be losses the bus is not to blame for.
reconnects=0 drops=0
for ((k = 0; k < INSTANCES; k++)); do
    reconnects=$((reconnects + $(stat_of "$k" bus.reconnects)))
    for key in droppedOldest droppedNewest disconnectedByBackpressure; do
        drops=$((drops + $(stat_of "$k" "$key")))
    done
done
printf '%-34s %s\n' bus_reconnects "$reconnects" server_queue_drops "$drops"
sed -i "s|}\$|,\"bus_reconnects\":$reconnects,\"server_queue_drops\":$drops,\"faults\":\"${FAULT_LOG% }\",\"persist\":$PERSIST}|" "$json"

# CPU time of every thread of pid $1 in nanoseconds (the first field of each
# /proc/<pid>/task/*/schedstat): exact, where utime + stime count 10 ms ticks,
# 4 % of a batched phase's CPU.
cpu_ns() {
    cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ ns += $1 } END { printf "%.0f\n", ns }'
}

# bus_cost NAME GENERATOR-ARGS...: one publishing phase on instance 0; prints
# and records the CPU µs per message received of the last instance.
bus_cost() {
    local name=$1 last=$((INSTANCES - 1)) cpu0 cpu1 rx0 rx1 cost
    shift
    cpu0=$(cpu_ns "${PID[last]}") rx0=$(stat_of "$last" bus.received)
    taskset -c "$GEN_CORES" "$GEN_BIN" run --subscribers "$BUS_USERS" --sse-url "http://127.0.0.1:${PORT[0]}/sse?userId=u{i}" \
        --mode users --duration "$BUS_SECONDS" --drain 1 "$@" </dev/null >"$LT_RUN/bus-$name.log" 2>&1 \
        || { lt_log "bus cost ($name): the generator failed"; return 0; }
    cpu1=$(cpu_ns "${PID[last]}") rx1=$(stat_of "$last" bus.received)
    cost=$(awk -v c=$((cpu1 - cpu0)) -v n=$((rx1 - rx0)) 'BEGIN { printf "%.3f", (n > 0 ? c / 1e3 / n : 0) }')
    printf '%-34s %s\n' "bus_received_$name" "$((rx1 - rx0))" "bus_cpu_us_per_msg_$name" "$cost"
    sed -i "s|}\$|,\"bus_received_$name\":$((rx1 - rx0)),\"bus_cpu_us_per_msg_$name\":$cost}|" "$json"
}

if [[ $BUS_COST == 1 ]] && ((INSTANCES > 1)); then
    wait_ready 0 && wait_ready $((INSTANCES - 1))
    lt_log "bus cost on instance $((INSTANCES - 1)) (pid ${PID[INSTANCES - 1]}), published on instance 0"
    bus_cost single --publish-url "http://127.0.0.1:${API[0]}/v1/users/u{i}/events" --rate "$BUS_RATE" --publishers 4
    bus_cost batched --publish-url "http://127.0.0.1:${API[0]}/v1/publish" --batch "$BUS_BATCH" \
        --rate "$BUS_BATCH_RATE" --publishers 4
    # The receiving floor in the same run, sender and receiver on the
    # server's first core as Redis and the instances are.
    core=${SERVER_CORES%%[,-]*}
    for phase in "single 1 $BUS_RATE" "batched $BUS_BATCH $BUS_BATCH_RATE"; do
        read -r name batch rate <<<"$phase"
        floor=$("$GEN_BIN" receive-floor --rate "$rate" --batch "$batch" --duration "$BUS_SECONDS" \
            --receiver-core "$core" --sender-core "$core" | awk '$1 == "receiver_cpu_us_per_msg" { print $2 }')
        printf '%-34s %s\n' "bus_floor_us_per_msg_$name" "${floor:-0}"
        sed -i "s|}\$|,\"bus_floor_us_per_msg_$name\":${floor:-0}}|" "$json"
    done
fi
lt_log "json: $json"
exit "$status"
