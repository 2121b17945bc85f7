#!/usr/bin/env bash
# rooms: SUBSCRIBERS (10,000) streams in ROOMS (100) rooms, RATE (200) room
# messages/s of SIZE (100) bytes for DURATION (20) s, each to one room in turn
# (100 recipients each): mid-size fan-out, where a server's per-room lookup and
# cross-shard hand-off show; latency, loss, CPU per delivery.
#   PEER=ssekify|nchan SUBSCRIBERS ROOMS RATE SIZE DURATION PUBLISHERS=4 loadtest/scenarios/rooms.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROOMS=${ROOMS:-100}
RATE=${RATE:-200}
SIZE=${SIZE:-100}
DURATION=${DURATION:-20}
PUBLISHERS=${PUBLISHERS:-4}

lt_setup
lt_gen_processes "$SUBSCRIBERS" "$PUBLISHERS"
peer_start
gen run "$(result_file rooms)" --subscribers "$SUBSCRIBERS" --rooms "$ROOMS" \
    --mode rooms --publish-url "$PUB_ROOM" --rate "$RATE" --size "$SIZE" \
    --duration "$DURATION" --publishers "$PUBLISHERS"
status=$?
peer_stop
exit $status
