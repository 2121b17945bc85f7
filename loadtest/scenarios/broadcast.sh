#!/usr/bin/env bash
# broadcast: SUBSCRIBERS (10,000) streams, RATE (8) broadcasts/s of SIZE (100)
# bytes for DURATION (20) s: delivery latency, fan-out completion, loss and
# server CPU time per delivery (the cost of fan-out).
# PEER=floor runs no server: the same broadcast written by a bare sender
# thread on the first server core (ssekify-loadtest floor), the least CPU per
# delivery the kernel charges any server here; compare.sh prints it as a row.
# EVENTS_LISTENER=1 (ssekify): a GET /v1/events stream reads every lifecycle
# event during the run (curl on the generator's cores), to compare the cost of
# a broadcast with a listener against the same run without one.
# SWEEP=1: a rate sweep (RATES, default 2 4 8 16 msg/s at SIZE) and a size
# sweep (SIZES, default 100 1000 10000 bytes at RATE), a fresh server per point.
#   PEER=ssekify|nchan|floor SUBSCRIBERS RATE SIZE DURATION PUBLISHERS=4 SWEEP=1 loadtest/scenarios/broadcast.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROOMS=${ROOMS:-100}
RATE=${RATE:-8}
SIZE=${SIZE:-100}
DURATION=${DURATION:-20}
PUBLISHERS=${PUBLISHERS:-4}
RATES=${RATES:-2 4 8 16}
SIZES=${SIZES:-100 1000 10000}

lt_setup
lt_gen_processes "$SUBSCRIBERS" "$PUBLISHERS"

point() { # NAME RATE SIZE
    if [[ $PEER == floor ]]; then
        floor_point "$@"
        return
    fi
    peer_start
    local listener="" name=$1
    if [[ ${EVENTS_LISTENER:-} == 1 && $PEER == ssekify ]]; then
        name="$1-events-listener"
        taskset -c "$GEN_CORES" curl -sN "${PUB_ALL%/v1/broadcast}/v1/events" >"$LT_RUN/events.log" &
        listener=$!
    fi
    gen run "$(result_file "$name")" --subscribers "$SUBSCRIBERS" --rooms "$ROOMS" \
        --mode broadcast --publish-url "$PUB_ALL" --rate "$2" --size "$3" \
        --duration "$DURATION" --publishers "$PUBLISHERS"
    local status=$?
    if [[ -n $listener ]]; then
        kill "$listener" 2>/dev/null
        wait "$listener" 2>/dev/null
        lt_log "the events listener read $(grep -c '^event: ' "$LT_RUN/events.log") events"
    fi
    peer_stop
    return $status
}

# floor_point NAME RATE SIZE: the kernel's floor for this point. The frame is
# SIZE + 30 bytes, about what ssekify frames a SIZE-byte payload into.
floor_point() {
    local json sender reader
    json=$(result_file "$1")
    sender=$(lt_core_list "$SERVER_CORES" | head -n1)
    reader=$(lt_core_list "$GEN_CORES" | head -n1)
    lt_log "ssekify-loadtest floor: sender on core $sender, reader on core $reader"
    "$GEN_BIN" floor --connections "$SUBSCRIBERS" --rate "$2" --size $(($3 + 30)) --duration "$DURATION" \
        --sender-core "$sender" --reader-core "$reader" --json "$json" || return 1
    [[ -n ${LT_RESULTS:-} ]] && echo "$json" >>"$LT_RESULTS"
    return 0
}

status=0
if [[ ${SWEEP:-} == 1 ]]; then
    for rate in $RATES; do point "broadcast-rate$rate-size$SIZE" "$rate" "$SIZE" || status=1; done
    for size in $SIZES; do
        [[ $size == "$SIZE" && " $RATES " == *" $RATE "* ]] && continue # measured in the rate sweep
        point "broadcast-rate$RATE-size$size" "$RATE" "$size" || status=1
    done
else
    point broadcast "$RATE" "$SIZE" || status=1
fi
exit $status
