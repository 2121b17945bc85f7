#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/, one after the other, each for a fixed
# time, starting from its committed seed corpus (fuzz/corpus/<target>/) and
# with its dictionary (fuzz/dict/<target>.dict) when there is one.
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   scripts/fuzz.sh 600 jwt query    # these targets, 600 s each
#
# Prints, per target, how many inputs it ran and whether it crashed; exits
# non-zero when any target crashed (the input is in fuzz/artifacts/<target>/,
# replay it with `cargo +nightly fuzz run <target> <file>`). New inputs the
# fuzzer finds are written into fuzz/corpus/<target>/ under their SHA-1
# names, which fuzz/.gitignore keeps out of git: commit only a few minimized,
# renamed inputs worth keeping.
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi
shift $(( $# > 0 ? 1 : 0 ))
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summary=()
crashed=0
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  args=(-max_total_time="$seconds" -print_final_stats=1)
  if [ -f "fuzz/dict/$target.dict" ]; then
    args+=(-dict="fuzz/dict/$target.dict")
  fi
  printf '\n==> %s for %s s\n' "$target" "$seconds"
  status=0
  cargo +nightly fuzz run "$target" "$corpus" -- "${args[@]}" 2>&1 | tee "$logs/$target.log" || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' | tail -1 || true)
  if [ "$status" -eq 0 ]; then
    summary+=("$(printf '%-14s %12s execs  ok' "$target" "${execs:-?}")")
  else
    crashed=1
    artifact=$(grep -o 'Test unit written to [^ ]*' "$logs/$target.log" | tail -1 | cut -d' ' -f5 || true)
    summary+=("$(printf '%-14s %12s execs  CRASHED %s' "$target" "${execs:-?}" "${artifact:-(exit $status, see the output above)}")")
  fi
done

printf '\n==> summary (%s s per target)\n' "$seconds"
printf '%s\n' "${summary[@]}"
exit "$crashed"
