#!/usr/bin/env bash
# targeted: SUBSCRIBERS (10,000) users, each message to one user, RATE (20,000)
# publishes/s on the single-message route for DURATION (10) s: the publish path
# (HTTP parse, lookup, one delivery); read server_cpu_us_per_message.
# BATCH=100: ssekify's batch route (POST /v1/publish, BATCH messages a request)
# at RATE (default then 200,000 msg/s). Nchan has no batch route: with
# PEER=nchan, BATCH is refused.
# PEER=floor runs no server: the same requests answered by a bare thread on
# the first server core that reads each request, sends a fixed answer and
# one frame (ssekify-loadtest targeted-floor), the least CPU per targeted
# publish any server can spend here. With BATCH=N, each request is sized as
# ssekify's batch of N (its body and its answer of N results) and sends N
# frames by io_uring, each to the next subscriber: the least CPU per batch
# message delivered.
# RECIPIENTS=nobody: the subscribers connect as users the publishes never
# address (nobody-{i}), so every message is for a user with no connection:
# the cost of a message the server only records for replay (its
# deliveries_lost then counts every message, as it should). With PEER=floor
# the bare thread reads each request and answers it, sending no frame: the
# least CPU per message a server only records.
# PEER=floor-uring: the floor with everything through one io_uring, as
# ssekify does it (a RECV kept armed per publisher, the answer and the frames
# as SENDs submitted with it): the floor under a server built on io_uring,
# where PEER=floor (epoll, read(2), send(2)) is the one under a server built
# on epoll, as Nchan is.
# WARM_UP=S (seconds, default 0): the same load for S seconds first, not
# counted, so the window measures a server in its steady state: its replay
# rings full (users x --recent-buffer entries) and their memory reused,
# where a cold server's first ~200,000 messages (10,000 users x 20) also pay
# the kernel for fresh pages (~6 page faults a 100-message batch on the
# EPYC VM, 18 % of the shard's samples there). The floors keep nothing and
# are not warmed.
#   PEER=ssekify|nchan|floor|floor-uring SUBSCRIBERS RATE DURATION SIZE=100 PUBLISHERS=32 BATCH=1 RECIPIENTS=subscribers|nobody WARM_UP=0 loadtest/scenarios/targeted.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROOMS=${ROOMS:-100}
BATCH=${BATCH:-1}
if ((BATCH > 1)); then RATE=${RATE:-200000}; else RATE=${RATE:-20000}; fi
DURATION=${DURATION:-10}
SIZE=${SIZE:-100}
PUBLISHERS=${PUBLISHERS:-32}
RECIPIENTS=${RECIPIENTS:-subscribers}
[[ $RECIPIENTS == subscribers || $RECIPIENTS == nobody ]] || lt_die "RECIPIENTS is subscribers or nobody, not $RECIPIENTS"

lt_setup
if [[ $PEER == floor || $PEER == floor-uring ]]; then
    if ((BATCH > 1)); then
        # Sized as the generator's batch and ssekify's answer to it: a message
        # is ~25 B of JSON around its payload, a result ~72 B, a frame's id
        # line ~36 B.
        name=targeted-batch$BATCH
        shape=(--frames-per-request "$BATCH" --rate $((RATE / BATCH)) --request-size $((114 + BATCH * (SIZE + 25)))
            --answer-size $((110 + BATCH * 72)) --size $((SIZE + 44)) --method uring)
    else
        name=targeted
        shape=(--rate "$RATE" --size $((SIZE + 30)))
    fi
    [[ $RECIPIENTS == nobody ]] && name+=-nobody
    [[ $PEER == floor-uring ]] && shape+=(--requests uring)
    json=$(result_file "$name")
    server=$(lt_core_list "$SERVER_CORES" | head -n1)
    client=$(lt_core_list "$GEN_CORES" | head -n1)
    lt_log "ssekify-loadtest targeted-floor: server thread on core $server, client on core $client"
    "$GEN_BIN" targeted-floor --connections "$SUBSCRIBERS" --publishers "$PUBLISHERS" "${shape[@]}" \
        --recipients "$RECIPIENTS" --duration "$DURATION" --server-core "$server" --client-core "$client" \
        --json "$json" || exit 1
    [[ -n ${LT_RESULTS:-} ]] && echo "$json" >>"$LT_RESULTS"
    exit 0
fi
lt_gen_processes "$SUBSCRIBERS" "$PUBLISHERS"
if ((BATCH > 1)) && [[ $PEER != ssekify ]]; then
    lt_die "$PEER has no batch publish route; run BATCH=1 (single-message route) for it"
fi
peer_start
if ((BATCH > 1)); then
    name=targeted-batch$BATCH
    route=(--publish-url "$PUB_BATCH" --batch "$BATCH")
else
    name=targeted
    route=(--publish-url "$PUB_USER")
fi
if [[ $RECIPIENTS == nobody ]]; then
    name+=-nobody
    SSE_URL=${SSE_URL//userId=u/userId=nobody-}
    [[ $SSE_URL == *userId=nobody-* ]] || lt_die "$PEER's subscribe URL names no userId=u{i} to rename: $SSE_URL"
fi
load=(--subscribers "$SUBSCRIBERS" --rooms "$ROOMS" --mode users "${route[@]}" --rate "$RATE" --size "$SIZE"
    --publishers "$PUBLISHERS")
WARM_UP=${WARM_UP:-0}
if [[ $WARM_UP != 0 ]]; then
    lt_log "warming $PEER up: the same load for ${WARM_UP}s, not counted"
    LT_RESULTS="" gen run "$LT_RUN/warm-up.json" "${load[@]}" --duration "$WARM_UP" --drain 1 || exit 1
    name+=-warm
fi
gen run "$(result_file "$name")" "${load[@]}" --duration "$DURATION"
status=$?
peer_stop
exit $status
