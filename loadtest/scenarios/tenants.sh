#!/usr/bin/env bash
# tenants: isolation between two tenants of one instance (--tenant-config).
# Tenant "quiet" has QUIET (2,000) subscribers receiving RATE (20) broadcasts/s
# of SIZE (100) bytes for DURATION (20) s; its delivery count and latency are
# measured twice on a fresh server each time: alone, then while tenant "noisy"
# floods (loadtest/scenarios/tenant-flood.py, on the generator's cores at
# the lowest priority, so that it does not delay the measuring generator):
# NOISY_CONNECT_RATE (500) subscribe attempts/s, past its maxConnections of
# NOISY_MAX (200), the accepted streams held and read, and NOISY_PUBLISH_RATE
# (5,000) broadcasts/s to its own subscribers, past its publishRate of
# NOISY_RATE (50, burst the same). Quiet has no limits. The second run prints
# what the flood got (200s, 429s) and both tenants' stats.
#   QUIET RATE SIZE DURATION NOISY_MAX NOISY_RATE NOISY_CONNECT_RATE NOISY_PUBLISH_RATE loadtest/scenarios/tenants.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
QUIET=${QUIET:-2000}
ROOMS=${ROOMS:-10}
RATE=${RATE:-20}
SIZE=${SIZE:-100}
DURATION=${DURATION:-20}
PUBLISHERS=${PUBLISHERS:-2}
NOISY_MAX=${NOISY_MAX:-200}
NOISY_RATE=${NOISY_RATE:-50}
NOISY_CONNECT_RATE=${NOISY_CONNECT_RATE:-500}
NOISY_PUBLISH_RATE=${NOISY_PUBLISH_RATE:-5000}

[[ $PEER == ssekify ]] || lt_die "tenants.sh measures ssekify's tenant quotas (PEER=ssekify)"
lt_setup
lt_gen_processes "$QUIET" "$((PUBLISHERS + NOISY_MAX + 100))"
config=$LT_RUN/tenants.json
cat >"$config" <<EOF
{ "tenants": {
    "quiet": {},
    "noisy": { "maxConnections": $NOISY_MAX, "publishRate": $NOISY_RATE, "recentMaxBytes": "1MiB" } } }
EOF
SSEKIFY_ARGS="$SSEKIFY_ARGS --tenant-config $config"

point() { # NAME FLOOD(0|1)
    local name=$1 flood=$2 public api flood_pid="" status
    peer_start
    public=${SSE_URL#http://}
    public=${public%%/*}
    api=${PUB_ALL#http://}
    api=${api%%/*}
    SSE_URL="http://$public/t/quiet/sse?userId=u{i}&rooms=r{r}"
    if ((flood)); then
        lt_log "noisy floods: $NOISY_CONNECT_RATE subscribes/s (quota $NOISY_MAX), $NOISY_PUBLISH_RATE publishes/s (rate $NOISY_RATE/s)"
        # Niced: the flood shares the generator's cores, and the generator
        # measuring quiet's latency must not wait behind it (the flood stands
        # for other machines; the server still gets every request it sends).
        taskset -c "$GEN_CORES" nice -n 19 python3 "$LT_SCENARIOS/tenant-flood.py" --public "$public" --api "$api" \
            --tenant noisy --connect-rate "$NOISY_CONNECT_RATE" --publish-rate "$NOISY_PUBLISH_RATE" \
            --duration "$((DURATION + 8))" --json "$LT_RUN/flood.json" >/dev/null &
        flood_pid=$!
        sleep 2 # the flood is at full strength before quiet's subscribers connect
    fi
    gen run "$(result_file "$name")" --subscribers "$QUIET" --rooms "$ROOMS" --mode broadcast \
        --publish-url "http://$api/v1/t/quiet/broadcast" --rate "$RATE" --size "$SIZE" \
        --duration "$DURATION" --publishers "$PUBLISHERS"
    status=$?
    for tenant in quiet noisy; do
        lt_log "$tenant: $(curl -fsS "http://$api/v1/t/$tenant/stats")"
    done
    if [[ -n $flood_pid ]]; then
        wait "$flood_pid"
        lt_log "what the flood got: $(cat "$LT_RUN/flood.json")"
    fi
    peer_stop
    return $status
}

status=0
point tenants-quiet-alone 0 || status=1
point tenants-quiet-with-noisy 1 || status=1
exit $status
