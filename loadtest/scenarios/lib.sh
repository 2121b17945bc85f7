# Shared functions for the load scenarios; sourced by loadtest/scenarios/*.sh.
#
# Knobs (environment), with defaults:
#   PEER=ssekify|nchan      server under test (broadcast.sh and targeted.sh also take PEER=floor,
#                           targeted.sh PEER=floor-uring)
#   SERVER_CORES=0          taskset core list for the server (e.g. 0-3 or 0,2);
#                           ssekify gets --shards <count>, nginx that many workers
#   GEN_CORES=1             taskset core list for the generator
#   SUBSCRIBERS, RATE, DURATION, SIZE, ROOMS, PUBLISHERS   per scenario (see each script)
#   GEN_PROCESSES           generator processes (--processes); default: enough for
#                           the file limit (~19,000 subscribers each), at least
#                           one per GEN_CORES core
#   SOURCE_IPS              comma list of local addresses the generator connects
#                           from, e.g. 127.0.0.1,127.0.0.2 (one address has ~28k
#                           ephemeral ports towards one server port; set
#                           automatically past 25,000 subscribers)
#   OUT=loadtest/results    where JSON results go
#   NOFILE=20000            file limit asked for this shell and its children (kept <= 20000)
#   IO_DRIVER=auto          ssekify --io-driver (auto|uring|epoll)
#   SSEKIFY_ARGS            extra ssekify flags
#   NCHAN_CONF              nginx.conf to use (default loadtest/peers/nchan/nginx.conf)
#   NGINX=nginx             nginx binary
#   NO_BUILD=1              use target/release binaries as they are
#   SSEKIFY_BIN             the ssekify binary to run (default target/release/ssekify):
#                           with NO_BUILD=1, two builds compared in one sitting
#   KEEP_RUN=1              keep the scratch dir (server logs, nginx prefix)
#
# A scenario script does:
#   source lib.sh; lt_setup; peer_start; gen run ... ; peer_stop
# peer_start sets SERVER_PIDS (the pids whose CPU/RSS are measured) and the
# URL templates SSE_URL, PUB_ALL, PUB_USER, PUB_ROOM, PUB_BATCH (empty when the
# peer has no batch route).

LT_SCENARIOS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LT_LOADTEST=$(cd "$LT_SCENARIOS/.." && pwd)
LT_REPO=$(cd "$LT_LOADTEST/.." && pwd)

: "${PEER:=ssekify}"
: "${SERVER_CORES:=0}"
: "${GEN_CORES:=1}"
: "${OUT:=$LT_REPO/loadtest/results}"
: "${NOFILE:=20000}"
: "${IO_DRIVER:=auto}"
: "${SSEKIFY_ARGS:=}"
: "${SOURCE_IPS:=}"
: "${NCHAN_CONF:=$LT_LOADTEST/peers/nchan/nginx.conf}"
: "${NGINX:=nginx}"

: "${SSEKIFY_BIN:=$LT_REPO/target/release/ssekify}"
GEN_BIN=$LT_REPO/target/release/ssekify-loadtest

LT_STARTED=()      # pids this shell started (servers), stopped on exit
LT_RUN=""          # scratch dir
SERVER_PIDS=""
LT_GEN=""          # running generator

lt_log() { printf '%s\n' "== $*" >&2; }
lt_die() { printf '%s\n' "error: $*" >&2; exit 1; }

# Number of cores in a taskset list such as "0-3,6,8-9".
lt_core_count() {
    local list=$1 n=0 part lo hi
    IFS=, read -ra parts <<<"$list"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            lo=${part%-*} hi=${part#*-}
            n=$((n + hi - lo + 1))
        else
            n=$((n + 1))
        fi
    done
    echo "$n"
}

# The cores of a taskset list, one per line.
lt_core_list() {
    local part lo hi c
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            lo=${part%-*} hi=${part#*-}
            for ((c = lo; c <= hi; c++)); do echo "$c"; done
        else
            echo "$part"
        fi
    done
}

# Builds the server and the generator (release) once per top-level invocation.
lt_build() {
    [[ ${NO_BUILD:-} == 1 || ${LT_BUILT:-} == 1 ]] && return 0
    lt_log "cargo build --release -p ssekify -p ssekify-loadtest"
    (cd "$LT_REPO" && cargo build --release -p ssekify -p ssekify-loadtest) >&2 \
        || lt_die "build failed (NO_BUILD=1 runs the binaries in target/release as they are)"
    export LT_BUILT=1
}

# Raises the open-file limit of this shell (inherited by servers and the
# generator), at most to NOFILE and never above 20000.
lt_raise_nofile() {
    local want=$NOFILE hard
    ((want > 20000)) && want=20000
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < want)); then
        ulimit -Hn "$want" 2>/dev/null || want=$hard
    fi
    ulimit -Sn "$want" || lt_die "cannot raise ulimit -n to $want"
}

# lt_gen_processes SUBSCRIBERS [EXTRA]: sets GEN_PROCESSES (generator
# processes, --processes) unless given: enough that each holds at most its file
# limit less a margin (about 19,000 subscribers at 20,000), and at least one
# per generator core. Past ~25,000 subscribers towards one server port it also
# spreads the connections over several loopback source addresses (SOURCE_IPS).
lt_gen_processes() {
    local subscribers=$1 extra=${2:-0} limit per cores n
    limit=$(ulimit -Sn)
    per=$((limit - extra - 1000))
    ((per > 0)) || lt_die "ulimit -n $limit is too low"
    if [[ -z ${GEN_PROCESSES:-} ]]; then
        n=$(((subscribers + per - 1) / per))
        cores=$(lt_core_count "$GEN_CORES")
        ((n < cores)) && n=$cores
        GEN_PROCESSES=$n
    elif ((subscribers > GEN_PROCESSES * per)); then
        lt_die "$subscribers subscribers do not fit $GEN_PROCESSES generator process(es) of ~$per each (ulimit -n $limit)"
    fi
    if [[ -z $SOURCE_IPS ]] && ((subscribers > 25000)); then
        n=$(((subscribers + 24999) / 25000))
        SOURCE_IPS=$(seq 1 "$n" | sed 's/^/127.0.0./' | paste -sd, -)
    fi
}

# A TCP port nobody listens on.
lt_free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        if command -v ss >/dev/null; then
            [[ -z $(ss -Htan "sport = :$port" 2>/dev/null) ]] && { echo "$port"; return 0; }
        elif ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    lt_die "no free port found"
}

lt_alive() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Stops one process: SIGTERM, a second SIGTERM after 3 s, SIGKILL after 6 s.
lt_stop_pid() {
    local pid=$1 i
    lt_alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 60; i++)); do
        lt_alive "$pid" || break
        ((i == 30)) && kill -TERM "$pid" 2>/dev/null
        sleep 0.1
    done
    lt_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    local keep=()
    for p in "${LT_STARTED[@]}"; do [[ $p != "$pid" ]] && keep+=("$p"); done
    LT_STARTED=("${keep[@]}")
    return 0
}

lt_cleanup() {
    local pid
    if [[ -n $LT_GEN ]]; then
        kill -TERM "$LT_GEN" 2>/dev/null
        wait "$LT_GEN" 2>/dev/null
    fi
    for pid in "${LT_STARTED[@]}"; do lt_stop_pid "$pid"; done
    if [[ -n $LT_RUN && -d $LT_RUN ]]; then
        if [[ ${KEEP_RUN:-} == 1 ]]; then lt_log "scratch dir kept: $LT_RUN"; else rm -rf "$LT_RUN"; fi
    fi
}

# Build, file limit, scratch dir, output dir, cleanup on exit.
lt_setup() {
    set -uo pipefail
    lt_build
    lt_raise_nofile
    [[ -x $SSEKIFY_BIN && -x $GEN_BIN ]] || lt_die "missing $SSEKIFY_BIN or $GEN_BIN"
    command -v taskset >/dev/null || lt_die "taskset (util-linux) is needed"
    LT_RUN=$(mktemp -d "${TMPDIR:-/tmp}/ssekify-loadtest.XXXXXX")
    chmod 755 "$LT_RUN"
    mkdir -p "$OUT"
    [[ $OUT == "$LT_REPO/loadtest/results" && ! -e $OUT/.gitignore ]] && echo '*' >"$OUT/.gitignore"
    trap lt_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# start_ssekify PUBLIC_PORT API_PORT LOG: starts ssekify pinned to SERVER_CORES
# with one shard per core, waits for its `ssekify listening` line, echoes its pid.
# Call it directly (not in $(...)) so the server stays this shell's child.
start_ssekify() {
    local port=$1 api=$2 log=$3 shards pid i
    shards=$(lt_core_count "$SERVER_CORES")
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CORES" "$SSEKIFY_BIN" --listen "127.0.0.1:$port" --api-listen "127.0.0.1:$api" \
        --shards "$shards" --io-driver "$IO_DRIVER" $SSEKIFY_ARGS </dev/null >"$log" 2>&1 &
    pid=$!
    LT_STARTED+=("$pid")
    for ((i = 0; i < 200; i++)); do
        grep -q 'ssekify listening' "$log" 2>/dev/null && { echo "$pid"; return 0; }
        lt_alive "$pid" || break
        sleep 0.05
    done
    echo "ssekify did not start:" >&2
    tail -n 20 "$log" >&2
    lt_stop_pid "$pid"
    return 1
}

# nginx worker_cpu_affinity masks for a core list: one mask per core.
lt_nginx_affinity() {
    local c masks=""
    for c in $(lt_core_list "$1"); do
        masks+=" 1$(printf '%*s' "$c" '' | tr ' ' 0)"
    done
    echo "$masks"
}

# start_nchan PORT PREFIX: runs nginx + Nchan from NCHAN_CONF in PREFIX, pinned
# to SERVER_CORES with one worker per core, waits until it answers, echoes the
# worker pid(s). The master's pid is in PREFIX/nginx.pid.
start_nchan() {
    local port=$1 prefix=$2 workers master pid i pids
    workers=$(lt_core_count "$SERVER_CORES")
    mkdir -p "$prefix"
    chmod 755 "$prefix"
    sed -e "s/listen 127\.0\.0\.1:8090/listen 127.0.0.1:$port/" \
        -e "s/^worker_processes 1;/worker_processes $workers;/" "$NCHAN_CONF" >"$prefix/nginx.conf"
    if ((workers > 1)); then
        sed -i "s/^worker_processes $workers;/&\nworker_cpu_affinity$(lt_nginx_affinity "$SERVER_CORES");/" "$prefix/nginx.conf"
    fi
    taskset -c "$SERVER_CORES" "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
        </dev/null >"$prefix/stdout.log" 2>&1 &
    master=$!
    LT_STARTED+=("$master")
    for ((i = 0; i < 200; i++)); do
        lt_alive "$master" || break
        pids=$(pgrep -P "$master" | sort -n | tr '\n' ' ')
        if [[ $(wc -w <<<"$pids") -ge $workers ]] && curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then
            echo "${pids% }"
            return 0
        fi
        sleep 0.05
    done
    echo "nginx/nchan did not start:" >&2
    tail -n 20 "$prefix/error.log" "$prefix/stdout.log" >&2
    lt_stop_pid "$master"
    return 1
}

# Checks that one subscriber on /sse?userId=u1&rooms=r1 gets a broadcast, a
# message to its user and one to its room (and not one to another room).
lt_verify_routes() {
    local sse=$1 all=$2 user=$3 room=$4 other=$5 body=$LT_RUN/verify.out
    curl -sN -H 'Accept: text/event-stream' --max-time 2 "$sse" >"$body" 2>/dev/null &
    local curl_pid=$!
    sleep 0.3
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data '{"v":"all"}' "$all" || return 1
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data '{"v":"user"}' "$user" || return 1
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data '{"v":"room"}' "$room" || return 1
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data '{"v":"other"}' "$other" || return 1
    local got i
    for ((i = 0; i < 30; i++)); do
        [[ $(grep -c '"v":' "$body") -ge 3 ]] && break
        sleep 0.05
    done
    sleep 0.2
    kill "$curl_pid" 2>/dev/null
    wait "$curl_pid" 2>/dev/null
    got=$(grep -o '"v":"[a-z]*"' "$body" | tr '\n' ' ')
    if [[ $got != '"v":"all" "v":"user" "v":"room" ' ]]; then
        echo "route check failed: the subscriber got [$got], expected all, user, room" >&2
        return 1
    fi
}

# Starts $PEER, sets SERVER_PIDS and the URL templates.
peer_start() {
    local port api tries
    for tries in 1 2 3; do
        port=$(lt_free_port)
        case $PEER in
        ssekify)
            api=$(lt_free_port)
            start_ssekify "$port" "$api" "$LT_RUN/ssekify-$port.log" >"$LT_RUN/pids" || continue
            SSE_URL="http://127.0.0.1:$port/sse?userId=u{i}&rooms=r{r}"
            PUB_ALL="http://127.0.0.1:$api/v1/broadcast"
            PUB_USER="http://127.0.0.1:$api/v1/users/u{i}/events"
            PUB_ROOM="http://127.0.0.1:$api/v1/rooms/r{r}/events"
            PUB_BATCH="http://127.0.0.1:$api/v1/publish"
            ;;
        nchan)
            start_nchan "$port" "$LT_RUN/nchan-$port" >"$LT_RUN/pids" || continue
            SSE_URL="http://127.0.0.1:$port/sse?userId=u{i}&rooms=r{r}"
            PUB_ALL="http://127.0.0.1:$port/pub/all"
            PUB_USER="http://127.0.0.1:$port/pub/user/u{i}"
            PUB_ROOM="http://127.0.0.1:$port/pub/room/r{r}"
            PUB_BATCH=""
            ;;
        *) lt_die "unknown PEER=$PEER (ssekify or nchan)" ;;
        esac
        SERVER_PIDS=$(cat "$LT_RUN/pids")
        lt_log "$PEER on 127.0.0.1:$port, cores $SERVER_CORES, measured pid(s) $SERVER_PIDS"
        # Route check before measuring: user u1 in room r1 gets all three kinds.
        local s=${SSE_URL//\{i\}/1} u=${PUB_USER//\{i\}/1} r=${PUB_ROOM//\{r\}/1} o=${PUB_ROOM//\{r\}/2}
        s=${s//\{r\}/1}
        lt_verify_routes "$s" "$PUB_ALL" "$u" "$r" "$o" || lt_die "$PEER does not route like the generator expects"
        return 0
    done
    lt_die "could not start $PEER"
}

peer_stop() {
    local pid
    for pid in "${LT_STARTED[@]}"; do lt_stop_pid "$pid"; done
    SERVER_PIDS=""
}

# result_file NAME: $OUT/NAME-$PEER-<timestamp>.json (never an existing one).
result_file() {
    local base n=1
    base="$OUT/$1-$PEER-$(date +%Y%m%d-%H%M%S)"
    local path="$base.json"
    while [[ -e $path ]]; do n=$((n + 1)); path="$base-$n.json"; done
    echo "$path"
}

# gen SUBCOMMAND JSON_FILE ARGS...: runs the generator pinned to GEN_CORES
# against the running peer (its pids measured), prints its table, writes JSON.
# When LT_RESULTS names a file, the JSON path is appended to it (compare.sh).
gen() {
    local sub=$1 json=$2
    shift 2
    local args=(--sse-url "$SSE_URL" --label "$PEER" --json "$json")
    local pid
    for pid in $SERVER_PIDS; do args+=(--server-pid "$pid"); done
    [[ -n $SOURCE_IPS ]] && args+=(--source-ips "$SOURCE_IPS")
    # churn is one process by design (concurrency, not held connections).
    [[ $sub != churn ]] && args+=(--processes "${GEN_PROCESSES:-1}")
    lt_log "ssekify-loadtest $sub $* (generator on cores $GEN_CORES)"
    # In the background and waited for, so that a signal to this script stops
    # everything at once (the exit trap also stops the generator).
    taskset -c "$GEN_CORES" "$GEN_BIN" "$sub" "${args[@]}" "$@" </dev/null &
    LT_GEN=$!
    wait "$LT_GEN"
    local status=$?
    LT_GEN=""
    ((status == 0)) || return 1
    lt_log "json: $json"
    [[ -n ${LT_RESULTS:-} ]] && echo "$json" >>"$LT_RESULTS"
    return 0
}
