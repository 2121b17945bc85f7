#!/usr/bin/env bash
# build-pgo.sh: the release build to deploy, guided by a profile of the load
# scenarios: target/pgo/ssekify.
#
# Why: the same code, laid out and inlined by LLVM after a run of the load it
# serves, spends 11–19 % fewer user-space instructions on every hot path
# (benches/callgrind.py: a delivery, a publish, a batch message, a message
# heard from the bus) and 16–17 % less CPU on a message heard from the bus.
# The measurements table in README.md is of this build since 89f7504. `cargo build
# --release` stays the plain build (the tests and the quick start use it).
#
# Steps, each in its own target directory under target/pgo/ (a build with
# other RUSTFLAGS would otherwise rebuild target/release from scratch):
#   1. an instrumented build (target/pgo/generate) that counts its branches;
#   2. the load scenarios against it on loopback (~3 minutes): chaos.sh with
#      three instances over a redis-server (deliveries, lone and batched bus
#      messages), broadcast.sh, targeted.sh (single route, batch route,
#      batch to nobody), rooms.sh and churn.sh; the counts land in
#      target/pgo/profiles;
#   3. llvm-profdata merges them; it comes from rustup's llvm-tools component,
#      the LLVM rustc itself is built with (a distribution's llvm-profdata of
#      another version cannot read the counts);
#   4. the release build that uses the profile (target/pgo/use), copied to
#      target/pgo/ssekify. It also splits each function's blocks the profile
#      never reached into a cold section (LLVM's machine function splitting),
#      so the code a request runs sits in fewer lines and pages: a batch to
#      nobody at 500 requests a second, 0.969 of the unsplit build's CPU
#      (loadtest/scenarios/interleave.py, 124 of 200 pairs lower); delivered
#      0.994 (111 of 200).
#
# Needs: rustup (adds llvm-tools when it is missing), redis-server and
# redis-cli, curl and taskset (scripts/test.sh installs them on Debian).
# Extra RUSTFLAGS (e.g. -Ctarget-cpu=native) are kept for both builds.
#
#   scripts/build-pgo.sh            # then: target/pgo/ssekify --help
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pgo=$root/target/pgo
profiles=$pgo/profiles

die() { printf 'build-pgo: %s\n' "$*" >&2; exit 1; }
say() { printf '== build-pgo: %s\n' "$*" >&2; }

for tool in redis-server redis-cli curl taskset; do
    command -v "$tool" >/dev/null || die "$tool is needed (scripts/test.sh installs it on Debian)"
done

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    say "adding rustup's llvm-tools component (llvm-profdata)"
    rustup component add llvm-tools || die "rustup component add llvm-tools failed"
fi
[[ -x $profdata ]] || die "no llvm-profdata at $profdata"

flags=${RUSTFLAGS:-}

say "1/4 instrumented build"
RUSTFLAGS="$flags -Cprofile-generate=$profiles" CARGO_TARGET_DIR=$pgo/generate \
    cargo build --release --locked -p ssekify
cargo build --release --locked -p ssekify-loadtest
# The build scripts the instrumented build ran wrote counts there too.
rm -rf "$profiles"
mkdir -p "$profiles"

say "2/4 training on the load scenarios"
export SSEKIFY_BIN=$pgo/generate/release/ssekify NO_BUILD=1 OUT=$pgo/results
if (($(nproc) < 2)); then
    export SERVER_CORES=0 GEN_CORES=0
fi
scenarios=$root/loadtest/scenarios
runs=0
train() {
    local name=$1 log
    shift
    runs=$((runs + 1))
    log=$pgo/results/$runs-$name.log
    env "$@" "$scenarios/$name.sh" >"$log" 2>&1 || die "$name.sh failed while training; its output: $log"
}
mkdir -p "$pgo/results"
train chaos FAULTS=none DURATION=10 SUBSCRIBERS=2000
train broadcast SUBSCRIBERS=5000 DURATION=8
train targeted SUBSCRIBERS=5000 RATE=10000 DURATION=6
train targeted SUBSCRIBERS=5000 BATCH=100 RATE=50000 DURATION=6
train targeted SUBSCRIBERS=5000 BATCH=100 RATE=50000 DURATION=6 RECIPIENTS=nobody
train rooms SUBSCRIBERS=5000 DURATION=6
train churn DURATION=6
compgen -G "$profiles/*.profraw" >/dev/null || die "the instrumented server wrote no profile to $profiles"

say "3/4 merging the profile"
"$profdata" merge -o "$pgo/merged.profdata" "$profiles"

say "4/4 release build with the profile"
RUSTFLAGS="$flags -Cprofile-use=$pgo/merged.profdata -Cllvm-args=-enable-split-machine-functions" \
    CARGO_TARGET_DIR=$pgo/use \
    cargo build --release --locked -p ssekify
cp "$pgo/use/release/ssekify" "$pgo/ssekify"
say "done: $pgo/ssekify"
