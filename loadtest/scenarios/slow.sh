#!/usr/bin/env bash
# slow: SUBSCRIBERS (10,000) streams of which SLOW_SHARE (10 %) never read,
# RATE (20) broadcasts/s of SIZE (1000) bytes for DURATION (20) s: whether the
# readers' loss and latency stay as without slow ones, and what the unread
# backlog costs the server in memory (server_rss_kib at the end; ssekify bounds
# it by --max-queue-items/--max-queue-bytes, nginx by send_timeout only).
#   PEER=ssekify|nchan SUBSCRIBERS SLOW_SHARE RATE SIZE DURATION loadtest/scenarios/slow.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROOMS=${ROOMS:-100}
SLOW_SHARE=${SLOW_SHARE:-0.1}
RATE=${RATE:-20}
SIZE=${SIZE:-1000}
DURATION=${DURATION:-20}
PUBLISHERS=${PUBLISHERS:-4}

lt_setup
lt_gen_processes "$SUBSCRIBERS" "$PUBLISHERS"
peer_start
gen run "$(result_file slow)" --subscribers "$SUBSCRIBERS" --rooms "$ROOMS" \
    --mode broadcast --publish-url "$PUB_ALL" --rate "$RATE" --size "$SIZE" \
    --duration "$DURATION" --publishers "$PUBLISHERS" --slow-share "$SLOW_SHARE"
status=$?
peer_stop
exit $status
