#!/usr/bin/env bash
# compare.sh SCENARIO: runs loadtest/scenarios/SCENARIO.sh against ssekify and
# then Nchan, back to back, same cores and generator settings (every knob of
# the scenario script passes through the environment), and prints both rows of
# key metrics and the ratio Nchan/ssekify for the cost metric (CPU per
# delivery, per message, per subscribe, or bytes per subscriber), p99 latency
# and loss. RUNS=3 repeats the pair and prints each run, then the medians.
# PEERS="ssekify nchan" names the servers (the first is the denominator).
#
#   loadtest/compare.sh idle|broadcast|targeted|rooms|churn|slow
#   RUNS=3 SERVER_CORES=0-3 GEN_CORES=4-7 loadtest/compare.sh broadcast
#   SWEEP=1 loadtest/compare.sh broadcast          # each sweep point compared
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scenario=${1:-}
script=$here/scenarios/$scenario.sh
[[ -n $scenario && -x $script ]] || {
    echo "usage: $0 idle|broadcast|targeted|rooms|churn|slow   (env: RUNS, PEERS, and the scenario knobs)" >&2
    exit 2
}
RUNS=${RUNS:-1}
PEERS=${PEERS:-ssekify nchan}
read -ra peers <<<"$PEERS"

source "$here/scenarios/lib.sh"
lt_build
export LT_BUILT=1
OUT=${OUT:-$LT_REPO/loadtest/results}
export OUT
mkdir -p "$OUT"
stamp=$(date +%Y%m%d-%H%M%S)
log=$OUT/compare-$scenario-$stamp.log
lists=$(mktemp -d "${TMPDIR:-/tmp}/ssekify-compare.XXXXXX")
trap 'rm -rf "$lists"' EXIT

# jget FILE KEY: a value of the generator's flat JSON.
jget() {
    [[ -f $1 ]] || { echo "-"; return; }
    local v
    v=$(grep -o "\"$2\":[^,}]*" "$1" | head -n1 | cut -d: -f2- | tr -d '"')
    echo "${v:--}"
}

# ratio A B: A/B with 2 decimals; "-" when either is missing, "both 0" / "x/0".
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "-" || b == "-" || a == "" || b == "") { print "-"; exit }
        if (b + 0 == 0) { print (a + 0 == 0 ? "both 0" : "x/0"); exit }
        printf "%.2f\n", a / b }'
}

# The columns of a result: "header:key[:ratio]" (ratio marks the compared ones).
columns_for() {
    local f=$1
    case $(jget "$f" scenario) in
    idle) echo "subscribers:subscribers rss_before_kib:server_rss_before_kib rss_after_kib:server_rss_after_kib bytes/sub:server_bytes_per_subscriber:ratio" ;;
    churn) echo "completed:subscribes_completed failed:subscribes_failed subs/s:subscribes_per_s:ratio cpu_share:server_cpu_core_share us/subscribe:server_cpu_us_per_subscribe:ratio" ;;
    *)
        local cost=server_cpu_us_per_delivery
        [[ $(jget "$f" mode) == users ]] && cost=server_cpu_us_per_message
        echo "sent:messages_sent failed:messages_failed received:deliveries_received lost:deliveries_lost:ratio \
p50_ms:latency_p50_ms p99_ms:latency_p99_ms:ratio max_ms:latency_max_ms fanout_p99:fanout_complete_p99_ms \
cpu_share:server_cpu_core_share cpu_${cost#server_cpu_us_per_}_us:$cost:ratio rss_kib:server_rss_kib"
        ;;
    esac
}

describe() {
    local f=$1 window
    window=$(jget "$f" window_s)
    [[ $window =~ ^[0-9.]+$ ]] && window="$window s window"
    case $(jget "$f" scenario) in
    idle) echo "$(jget "$f" subscribers) idle subscribers" ;;
    churn) echo "connect/subscribe/close storm, $window" ;;
    *) echo "$(jget "$f" mode), $(jget "$f" subscribers) subscribers ($(jget "$f" subscribers_reading) reading), \
$(jget "$f" rate_msgs_per_s) msg/s, $(jget "$f" payload_bytes) B, batch $(jget "$f" batch), $window" ;;
    esac
}

# table TITLE FILE_OF_PEER0 FILE_OF_PEER1 ...: one row per peer plus the ratio row.
table() {
    local title=$1
    shift
    local files=("$@") ref="" f
    for f in "${files[@]}"; do [[ -f $f ]] && { ref=$f; break; }; done
    echo
    if [[ -z $ref ]]; then echo "$title: no results (see $log)"; return; fi
    echo "$title: $(describe "$ref")"
    local cols
    read -ra cols <<<"$(columns_for "$ref")"
    local line col head key i
    line=$(printf '%-15s' server)
    for col in "${cols[@]}"; do head=${col%%:*}; line+=$(printf ' %14s' "$head"); done
    echo "$line"
    for i in "${!peers[@]}"; do
        f=${files[$i]:-}
        line=$(printf '%-15s' "${peers[$i]}")
        if [[ ! -f $f ]]; then echo "$line (no result: failed or not applicable, see $log)"; continue; fi
        for col in "${cols[@]}"; do
            key=${col#*:}; key=${key%%:*}
            line+=$(printf ' %14s' "$(jget "$f" "$key")")
        done
        echo "$line"
    done
    for i in "${!peers[@]}"; do
        ((i == 0)) && continue
        line=$(printf '%-15s' "${peers[$i]}/${peers[0]}")
        for col in "${cols[@]}"; do
            key=${col#*:}; key=${key%%:*}
            if [[ $col == *:ratio ]]; then
                line+=$(printf ' %14s' "$(ratio "$(jget "${files[$i]:-}" "$key")" "$(jget "${files[0]:-}" "$key")")")
            else
                line+=$(printf ' %14s' "")
            fi
        done
        echo "$line"
    done
}

echo "compare $scenario: ${peers[*]}, server cores $SERVER_CORES, generator cores $GEN_CORES, $RUNS run(s); log $log"
for ((run = 1; run <= RUNS; run++)); do
    for peer in "${peers[@]}"; do
        : >"$lists/$run-$peer"
        echo "### run $run $peer" >>"$log"
        PEER=$peer LT_RESULTS="$lists/$run-$peer" "$script" >>"$log" 2>&1 \
            || echo "($peer run $run exited with an error; see $log)" >&2
    done
    points=0
    for peer in "${peers[@]}"; do
        n=$(wc -l <"$lists/$run-$peer")
        ((n > points)) && points=$n
    done
    for ((p = 1; p <= points; p++)); do
        files=()
        for peer in "${peers[@]}"; do files+=("$(sed -n "${p}p" "$lists/$run-$peer")"); done
        name=$(basename "${files[0]:-${files[1]:-x}}" .json)
        table "run $run ${name%%-${peers[0]}-*}" "${files[@]}"
    done
done

# Medians over the runs, per sweep point.
if ((RUNS > 1)); then
    points=$(wc -l <"$lists/1-${peers[0]}")
    for ((p = 1; p <= points; p++)); do
        ref=$(sed -n "${p}p" "$lists/1-${peers[0]}")
        read -ra cols <<<"$(columns_for "$ref")"
        median_files=()
        for peer in "${peers[@]}"; do
            out=$lists/median-$p-$peer.json
            {
                printf '{"scenario":"%s","mode":"%s","subscribers":"%s","subscribers_reading":"%s","rate_msgs_per_s":"%s","payload_bytes":"%s","batch":"%s","window_s":"each column the median of %s runs"' \
                    "$(jget "$ref" scenario)" "$(jget "$ref" mode)" "$(jget "$ref" subscribers)" "$(jget "$ref" subscribers_reading)" \
                    "$(jget "$ref" rate_msgs_per_s)" "$(jget "$ref" payload_bytes)" "$(jget "$ref" batch)" "$RUNS"
                for col in "${cols[@]}"; do
                    key=${col#*:}; key=${key%%:*}
                    vals=()
                    for ((run = 1; run <= RUNS; run++)); do
                        f=$(sed -n "${p}p" "$lists/$run-$peer")
                        [[ -f $f ]] && vals+=("$(jget "$f" "$key")")
                    done
                    ((${#vals[@]})) || continue
                    med=$(printf '%s\n' "${vals[@]}" | grep -E '^[0-9.]+$' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
                    [[ $key == subscribers ]] && med=${vals[0]}
                    printf ',"%s":"%s"' "$key" "${med:--}"
                done
                echo "}"
            } >"$out"
            if [[ -f $(sed -n "${p}p" "$lists/1-$peer") ]]; then median_files+=("$out"); else median_files+=(""); fi
        done
        name=$(basename "$ref" .json)
        table "median of $RUNS runs ${name%%-${peers[0]}-*}" "${median_files[@]}"
    done
fi
