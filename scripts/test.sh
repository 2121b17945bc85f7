#!/usr/bin/env bash
# Runs the whole test suite: unit tests beside the code and the end-to-end
# tests in tests/ (which spawn the real ssekify binary on 127.0.0.1).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh --test publish  # extra arguments go to `cargo test`
#
# Environment:
#   SSEKIFY_TEST_DRIVERS=epoll      # io drivers the "both drivers" tests use
#                                   # (comma list; default uring,epoll)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# --- 1. Limits --------------------------------------------------------------
# The fan-out test holds ~2000 client sockets plus the server's side in one
# process tree; raise the open-file limit as far as allowed (at most 20000).
step "raising the open-file limit"
want=20000
hard=$(ulimit -Hn)
if [ "$hard" = "unlimited" ] || [ "$hard" -ge "$want" ]; then
  target=$want
else
  target=$hard
fi
if [ "$(ulimit -n)" != "unlimited" ] && [ "$(ulimit -n)" -lt "$target" ]; then
  ulimit -n "$target" || echo "warning: could not raise ulimit -n to $target"
fi
echo "ulimit -n = $(ulimit -n)"

# --- 2. External services ---------------------------------------------------
# Later suites (the Redis bus, Node/Python publisher examples) need
# redis-server and node. Install or start them here, one function each, and
# export what the tests read (e.g. SSEKIFY_TEST_REDIS_URL).
step "external services: none needed yet"

# --- 3. Rust tests ----------------------------------------------------------
step "cargo test --workspace $*"
cargo test --workspace "$@"

step "all tests passed"
