#!/usr/bin/env bash
# churn: CONCURRENCY (64) loops connect, subscribe (wait for the 200 head) and
# close, for DURATION (10) s: subscribes per second and server CPU per
# subscribe (accept, parse, register in user/room/broadcast sets, unregister).
# Each subscribe uses a new user id. The closes leave TIME_WAIT sockets on the
# generator side, so by default it connects from 16 loopback addresses.
#   PEER=ssekify|nchan DURATION CONCURRENCY ROOMS SOURCE_IPS loadtest/scenarios/churn.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-64}
ROOMS=${ROOMS:-100}
SOURCE_IPS=${SOURCE_IPS:-$(printf "127.0.0.%d," $(seq 1 16) | sed "s/,$//")}

lt_setup
peer_start
gen churn "$(result_file churn)" --rooms "$ROOMS" --duration "$DURATION" --concurrency "$CONCURRENCY"
status=$?
peer_stop
exit $status
