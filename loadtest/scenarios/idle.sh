#!/usr/bin/env bash
# idle: SUBSCRIBERS (10,000) open streams that receive nothing; the server's
# resident memory per held connection (RSS after minus before, over the count).
#   PEER=ssekify|nchan SUBSCRIBERS=10000 ROOMS=100 SETTLE=2 loadtest/scenarios/idle.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROOMS=${ROOMS:-100}
SETTLE=${SETTLE:-2}

lt_setup
lt_gen_processes "$SUBSCRIBERS"
peer_start
gen idle "$(result_file idle)" --subscribers "$SUBSCRIBERS" --rooms "$ROOMS" --settle "$SETTLE"
status=$?
peer_stop
exit $status
