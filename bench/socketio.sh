#!/usr/bin/env bash
# Socket.IO: the gateway (over TLS, as deployed, and over plain HTTP) vs the Node reference server
# (npm socket.io 4.8, bench/node/server.js) and the socketioxide one (crates.io socketioxide on
# axum, bench/src/sioxide_server.rs), both plain HTTP, all measured in ONE run, interleaved
# repetitions with a rotated order; medians + all values, and gateway / peer ratios.
#   1. fan-out: 1 publisher + CLIENTS receivers (WebSocket, namespace "/"); the publisher emits
#      numbered `chat` events, the server relays each to every other socket (gateway: namespace
#      `relay: true`; Node: socket.broadcast.emit; socketioxide: socket.broadcast().emit), in two
#      cases, each on every target in every repetition:
#      - firehose: EVENTS events, as fast as the server takes them (at most WINDOW outstanding);
#      - quiet room: QUIET_EVENTS events at QUIET_RATE events/s, evenly spaced (a chat room).
#      deliveries/s, latency p50/p99, missing deliveries, server CPU per delivery.
#   2. memory per idle connection: a fresh server per measurement, RSS before, open 1,000 then
#      10,000 connections (cumulative), hold IDLE_HOLD s at each, RSS after: (after - before) / N;
#      and connects/s while opening each step's connections.
#
#   bash bench/socketio.sh                    # from the repo root; ~17 min after the build
#   REPS=1 bash bench/socketio.sh             # quicker look (~6 min)
#   (per repetition and target: firehose ~13 s, quiet room QUIET_EVENTS / QUIET_RATE + ~4 s,
#   memory ~30 s; 4 targets, 5 with BASE_GATEWAY)
#
# Settings (environment): REPS (3), CLIENTS (1000), EVENTS (2000), WINDOW (32), PAYLOAD (32 bytes),
# QUIET_RATE (10 events/s), QUIET_EVENTS (300: 30 s per target), IDLE_STEPS ("1000,10000"),
# IDLE_HOLD (10 s), GW_THREADS (2: the gateway's threads and socketioxide's tokio workers),
# SKIP_FANOUT (both fan-out cases), SKIP_QUIET (the quiet room only), SKIP_IDLE,
# BASE_GATEWAY (a gateway binary of an earlier commit, measured over TLS as `base-tls` beside
# gw-tls with the same config: "is this change slower or bigger?" read within one run),
# QUIET_PCT / QUIET_MAX_S (wait for other processes < 25% of a core, at most 60 s), PEER_MAX_S (wait
# for bench/http.sh and bench/ws_passthrough.sh to finish before each measurement, at most 900 s in
# all), RETRIES (2: a fan-out measurement disturbed by other processes, > QUIET_PCT % of a core during
# it, is taken again, at most RETRIES_MAX (4) times per run), OUT_DIR (bench/results),
# CARGO_TARGET_DIR (release binaries are built there; sioxide-server among them).
# Needs: cargo, node + npm (Debian `nodejs`, `npm`: installed with apt-get when missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPS=${REPS:-3}
CLIENTS=${CLIENTS:-1000}
EVENTS=${EVENTS:-2000}
WINDOW=${WINDOW:-32}
PAYLOAD=${PAYLOAD:-32}
QUIET_RATE=${QUIET_RATE:-10}
QUIET_EVENTS=${QUIET_EVENTS:-300}
IDLE_STEPS=${IDLE_STEPS:-1000,10000}
IDLE_HOLD=${IDLE_HOLD:-10}
GW_THREADS=${GW_THREADS:-2}
SKIP_FANOUT=${SKIP_FANOUT:-}
SKIP_QUIET=${SKIP_QUIET:-}
SKIP_IDLE=${SKIP_IDLE:-}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
P_TLS=19301 P_PLAIN=19302 P_NODE=19303 P_BASE=19304 P_SIOX=19305 P_ADM_TLS=19311 P_ADM_PLAIN=19312 P_ADM_BASE=19314
RUN_START=$SECONDS

ensure_pkgs openssl:openssl node:nodejs npm:npm
build_bins -p gateway -p backend-stub -p bench # the set the other scripts build: no rebuild from feature unification
log "npm ci in bench/node (socket.io pinned by package-lock.json)"
(cd "$REPO/bench/node" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in bench/node"
for p in $P_TLS $P_PLAIN $P_NODE $P_BASE $P_SIOX $P_ADM_TLS $P_ADM_PLAIN $P_ADM_BASE; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done
# 10,000 connections: the client and each server need one descriptor per connection.
ulimit -n 20000 2>/dev/null || true
awk -v r="$QUIET_RATE" 'BEGIN { exit !(r + 0 > 0) }' || die "QUIET_RATE=$QUIET_RATE: events per second, > 0"
# The quiet room's length in seconds (rounded up), for its time limits.
QUIET_S=$(awk -v n="$QUIET_EVENTS" -v r="$QUIET_RATE" 'BEGIN { s = n / r; print (s == int(s) ? s : int(s) + 1) }')
(($(ulimit -n) >= 10000 + 500)) || die "ulimit -n is $(ulimit -n); need 10500 (ulimit -n 20000)"

T=$(mktemp -d /tmp/bench-sio.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/socketio-$STAMP.jsonl
REPORT=$OUT_DIR/socketio-$STAMP.md
: >"$RAW"
make_cert "$T"

# The gateway: Socket.IO only, namespace "/" relaying every client event to the other sockets
# (Node's socket.broadcast.emit), no history replay, no connection state recovery (Node's
# default is off too), no Origin list. `listen: https` (TLS) or `listen: http` (plain).
sio_gateway_conf() { # name listen-key port admin-port [binary, default $BIN/gateway]
    local tls="" bin=${5:-$BIN/gateway} rate=""
    [[ $2 == https ]] && tls="
tls:
  certificates:
    - cert: $T/cert.pem
      key: $T/key.pem"
    # The publisher emits as fast as the window allows: lift the per-socket relay limit (50/s
    # by default), which Node's server does not have. (A BASE_GATEWAY from before the limit
    # does not know the key, and has no limit.)
    grep -q relay_rate "$bin" &&
        rate=", relay_rate: { per_second: 1000000, burst: 1000000 }"
    cat >"$T/$1.yaml" <<YAML
listen:
  $2: 127.0.0.1:$3
  admin: 127.0.0.1:$4$tls
realtime:
  socketio:
    namespaces:
      "/": { relay: true, history: 0, client_rooms: false$rate }
routes:
  - path: /socket.io/
    realtime: socketio
threads: $GW_THREADS
grace_period_s: 1
YAML
    "$bin" check --config "$T/$1.yaml" >/dev/null || die "gateway check failed for $T/$1.yaml"
}
sio_gateway_conf gw-tls https $P_TLS $P_ADM_TLS
sio_gateway_conf gw-plain http $P_PLAIN $P_ADM_PLAIN

TARGETS=(gw-tls gw-plain socketioxide node)
declare -A URL PORT
URL[gw-tls]=wss://127.0.0.1:$P_TLS/socket.io/
URL[gw-plain]=ws://127.0.0.1:$P_PLAIN/socket.io/
URL[socketioxide]=ws://127.0.0.1:$P_SIOX/socket.io/
URL[node]=ws://127.0.0.1:$P_NODE/socket.io/
PORT[gw-tls]=$P_TLS PORT[gw-plain]=$P_PLAIN PORT[socketioxide]=$P_SIOX PORT[node]=$P_NODE
if [[ -n ${BASE_GATEWAY:-} ]]; then
    [[ -x $BASE_GATEWAY ]] || die "BASE_GATEWAY=$BASE_GATEWAY is not an executable"
    sio_gateway_conf base-tls https $P_BASE $P_ADM_BASE "$BASE_GATEWAY"
    TARGETS+=(base-tls)
    URL[base-tls]=wss://127.0.0.1:$P_BASE/socket.io/
    PORT[base-tls]=$P_BASE
fi

start_target() { # target -> pid in $SPID
    local t=$1 name=${1//-/_}
    case $t in
        node) start "$name" "$T/$t.log" node "$REPO/bench/node/server.js" "$P_NODE" 127.0.0.1 ;;
        socketioxide) start "$name" "$T/$t.log" "$BIN/sioxide-server" --threads "$GW_THREADS" "$P_SIOX" 127.0.0.1 ;;
        base-*) RUST_LOG=warn start "$name" "$T/$t.log" "$BASE_GATEWAY" run --config "$T/$t.yaml" ;;
        *) RUST_LOG=warn start "$name" "$T/$t.log" "$BIN/gateway" run --config "$T/$t.yaml" ;;
    esac
    wait_port "${PORT[$t]}"
    eval "SPID=\$PID_$name"
}
# Append one measurement (the client's JSON) to the raw file, with rep/pos/quiet/others and its
# case (firehose, quiet, idle).
record() { # json rep pos quiet others case
    printf '%s\n' "${1%\}},\"rep\":$2,\"pos\":$3,\"quiet_pct\":$4,\"others\":\"$5\",\"case\":\"$6\"}" >>"$RAW"
}
PEER_MAX_S=${PEER_MAX_S:-900} # wait_peers (lib.sh): at most this long in all
RT="$BIN/rt-load --sources 64"
FACTS=$(machine_facts)

# --- 1. fan-out: firehose and quiet room -------------------------------------------------------
CASES=()
[[ -n $SKIP_FANOUT ]] || CASES+=(firehose)
[[ -n $SKIP_FANOUT || -n $SKIP_QUIET ]] || CASES+=(quiet)
# rt-load arguments and time limit (s) of each case.
declare -A CASE_ARGS CASE_TIMEOUT
CASE_ARGS[firehose]="--events $EVENTS --window $WINDOW --max-secs 150"
CASE_TIMEOUT[firehose]=300
CASE_ARGS[quiet]="--events $QUIET_EVENTS --rate $QUIET_RATE --max-secs $((QUIET_S + 60))"
CASE_TIMEOUT[quiet]=$((QUIET_S + 240))
FANOUT_S=0
if ((${#CASES[@]})); then
    declare -A SP
    for t in "${TARGETS[@]}"; do start_target "$t"; SP[$t]=$SPID; done
    ALL_PIDS="${SP[*]}"
    # Smoke: 10 receivers, 20 events, every delivery made.
    for t in "${TARGETS[@]}"; do
        out=$(timeout 60 $RT --label "$t" --pids "${SP[$t]}" sio-fanout --url "${URL[$t]}" --clients 10 --events 20 | tail -1) ||
            die "$t does not relay: $(tail -5 "$T/$t.log")"
        [[ $(jnum "$out" missing) == 0 ]] || die "$t lost deliveries in the smoke test: $out"
    done
    log "all targets relay: ${TARGETS[*]}"
    t0=$SECONDS
    n=${#TARGETS[@]}
    for ((r = 1; r <= REPS; r++)); do
        for c in "${CASES[@]}"; do
            for ((k = 0; k < n; k++)); do
                t=${TARGETS[$(((k + r - 1) % n))]}
                for ((a = 1; a <= 1 + RETRIES; a++)); do
                    wait_peers 'bench/(http|ws_passthrough)\.sh'
                    quiet=$(wait_quiet $ALL_PIDS)
                    others=$(top_others || true)
                    # shellcheck disable=SC2086 # CASE_ARGS: several arguments
                    out=$(timeout "${CASE_TIMEOUT[$c]}" $RT --label "$t" --pids "${SP[$t]}" sio-fanout --url "${URL[$t]}" \
                        --clients "$CLIENTS" ${CASE_ARGS[$c]} --payload-bytes "$PAYLOAD" |
                        tail -1) || { log "rep $r $c $t: rt-load failed"; out='{"label":"'$t'","mode":"sio-fanout","failed":1}'; }
                    ((a <= RETRIES)) && disturbed "$out" || break
                    log "rep $r $c $t: other processes used $(jnum "$out" others_cpu_pct)% of a core during the measurement: measuring again"
                done
                record "${out%\}},\"attempts\":$a}" "$r" "$((k + 1))" "$quiet" "$others" "$c"
                log "$c rep $r #$((k + 1)) $t: $(jnum "$out" deliveries_per_s) deliveries/s, missing $(jnum "$out" missing), p50 $(jnum "$out" lat_ms_p50) ms, p99 $(jnum "$out" lat_ms_p99) ms, server $(jnum "$out" server_us_per_delivery) us/delivery, client $(jnum "$out" client_cpu_pct)% CPU"
            done
        done
    done
    FANOUT_S=$((SECONDS - t0))
    for t in "${TARGETS[@]}"; do stop_one "${t//-/_}"; done
fi

# --- 2. memory per idle connection ---------------------------------------------------------------
IDLE_S=0
if [[ -z $SKIP_IDLE ]]; then
    t0=$SECONDS
    n=${#TARGETS[@]}
    for ((r = 1; r <= REPS; r++)); do
        for ((k = 0; k < n; k++)); do
            t=${TARGETS[$(((k + r - 1) % n))]}
            start_target "$t"
            wait_peers 'bench/(http|ws_passthrough)\.sh'
            quiet=$(wait_quiet "$SPID")
            out=$(timeout 300 $RT --label "$t" --pids "$SPID" sio-idle --url "${URL[$t]}" \
                --steps "$IDLE_STEPS" --hold-secs "$IDLE_HOLD" | tail -1) ||
                { log "rep $r $t: rt-load failed"; out='{"label":"'$t'","mode":"sio-idle","failed":1}'; }
            stop_one "${t//-/_}"
            record "$out" "$r" "$((k + 1))" "$quiet" "" idle
            log "idle rep $r $t: $(echo "$out" | grep -o '"n":[0-9]*[^}]*"rss_per_conn_kib":[-0-9.]*' | sed 's/"connected.*"connects_per_s":\([0-9]*\)[^"]*".*"rss_per_conn_kib"/ connects\/s \1, rss KiB\/conn/' | paste -sd' ' -)"
        done
    done
    IDLE_S=$((SECONDS - t0))
fi
ELAPSED=$((SECONDS - RUN_START))

# --- report ------------------------------------------------------------------------------------
# Values of a key for one case (firehose, quiet, idle) and target, in rep order.
vals() { # case target key
    grep "\"case\":\"$1\"" "$RAW" | grep "\"label\":\"$2\"" | while read -r l; do
        v=$(jnum "$l" "$3"); echo "${v:--}"
    done
}
# A figure at step N: sio-idle lines hold one object per step.
idle_vals() { # target n key
    grep '"case":"idle"' "$RAW" | grep "\"label\":\"$1\"" | while read -r l; do
        s=$(echo "$l" | grep -o "{\"n\":$2,[^}]*}" | head -1)
        v=$(jnum "$s" "$3"); echo "${v:--}"
    done
}
# Ratio a/b of a key within each repetition, then listed.
ratios() { # case a b key
    paste <(vals "$1" "$2" "$4") <(vals "$1" "$3" "$4") |
        awk '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $1 > 0 && $2 > 0 { printf "%.2f\n", $1 / $2 }'
}
idle_ratios() { # a b n key: a / b within each repetition
    paste <(idle_vals "$1" "$3" "$4") <(idle_vals "$2" "$3" "$4") |
        awk '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $2 > 0 { printf "%.2f\n", $1 / $2 }'
}
# "<= 1: hit (goal <= 0.5: missed)" for a median ratio; nothing without a target.
verdict() { # median op(<=|>=) limit [goal]
    [[ -n ${2:-} ]] || return 0
    [[ $1 == - || -z $1 ]] && { echo "$2 $3: no data"; return 0; }
    awk -v m="$1" -v op="$2" -v t="$3" -v g="${4:-}" 'function ok(l) { return op == "<=" ? m + 0 <= l + 0 : m + 0 >= l + 0 }
        BEGIN { printf "%s %s: %s", op, t, ok(t) ? "hit" : "missed"
                if (g != "") printf " (goal %s %s: %s)", op, g, ok(g) ? "hit" : "missed"
                print "" }'
}
# One row of the ratio table from the per-repetition ratios on stdin.
ratio_row() { # figure a b n [op limit [goal]]
    local vs m
    vs=$(cat)
    m=$(median <<<"$vs")
    printf '| %s | %s / %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$m" "$(all <<<"$vs")" "$(verdict "$m" "${5:-}" "${6:-}" "${7:-}")"
}
# ", N failed" when rt-load failed in N measurements of a case and target (no figures from them).
failed() { # case target
    local f
    f=$(grep "\"case\":\"$1\"" "$RAW" | grep "\"label\":\"$2\"" | grep -c '"failed":1' || true)
    ((f == 0)) || echo ", $f failed"
}
# The fan-out table of one case.
fanout_table() { # case
    echo "| target | deliveries/s median | all reps | missing (all reps) | closed | p50 ms | p99 ms median (all) | server CPU us/delivery median (all) | server CPU % | client CPU % | others CPU % (all) |"
    echo "|---|---:|---|---:|---:|---:|---|---|---:|---:|---|"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s (%s) | %s (%s) | %s | %s | %s |\n' "$t" \
            "$(vals "$1" "$t" deliveries_per_s | median | fmt)" "$(vals "$1" "$t" deliveries_per_s | all)" \
            "$(vals "$1" "$t" missing | sum)$(failed "$1" "$t")" "$(vals "$1" "$t" receivers_closed | sum)" \
            "$(vals "$1" "$t" lat_ms_p50 | median | fmt)" \
            "$(vals "$1" "$t" lat_ms_p99 | median | fmt)" "$(vals "$1" "$t" lat_ms_p99 | fmt | all)" \
            "$(vals "$1" "$t" server_us_per_delivery | median | fmt)" "$(vals "$1" "$t" server_us_per_delivery | fmt | all)" \
            "$(vals "$1" "$t" server_cpu_pct | median | fmt)" "$(vals "$1" "$t" client_cpu_pct | median | fmt)" \
            "$(vals "$1" "$t" others_cpu_pct | fmt | all)"
    done
}
has_case() { [[ " ${CASES[*]} " == *" $1 "* ]]; }
# Gateway / peer pairs of the ratio table: each gateway against each peer; gw-tls / base-tls too.
PAIRS=()
for g in gw-tls gw-plain; do for p in socketioxide node; do PAIRS+=("$g $p"); done; done
[[ -n ${BASE_GATEWAY:-} ]] && PAIRS+=("gw-tls base-tls")
SIOX_VERSION=$(awk '$0 == "name = \"socketioxide\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO/Cargo.lock")
{
    echo "### Socket.IO run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- command: \`bash bench/socketio.sh\` (REPS=$REPS CLIENTS=$CLIENTS EVENTS=$EVENTS WINDOW=$WINDOW PAYLOAD=$PAYLOAD QUIET_RATE=$QUIET_RATE QUIET_EVENTS=$QUIET_EVENTS IDLE_STEPS=$IDLE_STEPS IDLE_HOLD=$IDLE_HOLD GW_THREADS=$GW_THREADS); fan-out (${CASES[*]:-none}) ${FANOUT_S} s, memory ${IDLE_S} s, whole script ${ELAPSED} s"
    echo "- client: \`rt-load\` (bench/src/rt_load.rs: tokio + tokio-tungstenite + rustls, certificate not verified, 64 loopback source addresses); servers: gateway \`threads: $GW_THREADS\` (gw-tls: wss, TLS 1.3, ECDSA P-256; gw-plain: ws), socketioxide $SIOX_VERSION on axum (bench/src/sioxide_server.rs, $GW_THREADS tokio workers, jemalloc, plain ws), Node $(node --version) + socket.io $(node -p 'require("'"$REPO"'/bench/node/node_modules/socket.io/package.json").version') (one process, plain ws)"
    if has_case firehose; then
        echo
        echo "Fan-out, firehose: 1 publisher + $CLIENTS receivers, $EVENTS events of ~$((PAYLOAD + 30)) bytes, at most $WINDOW outstanding; $((CLIENTS * EVENTS)) deliveries expected per measurement."
        echo
        fanout_table firehose
    fi
    if has_case quiet; then
        echo
        echo "Fan-out, quiet room: 1 publisher + $CLIENTS receivers, $QUIET_EVENTS events of ~$((PAYLOAD + 30)) bytes at $QUIET_RATE events/s, evenly spaced (${QUIET_S} s); $((CLIENTS * QUIET_EVENTS)) deliveries expected per measurement. Server CPU per delivery includes what the server spends between events (heartbeats, timers) over the window."
        echo
        fanout_table quiet
    fi
    if ((${#CASES[@]})); then
        echo
        echo "Other processes: during each counted measurement (% of a core, from /proc), and the busiest over 1 s just before it; attempts > 1 = taken again after a disturbed one: $(grep '"mode":"sio-fanout"' "$RAW" | sed -n 's/.*"label":"\([^"]*\)".*"others_cpu_pct":\([0-9.]*\).*"attempts":\([0-9]*\),"rep":\([0-9]*\),"pos":\([0-9]*\),"quiet_pct":\([0-9]*\),"others":"\([^"]*\)","case":"\([^"]*\)".*/rep \4 \8 \1: \2% (attempts \3, before: \6% [\7])/p' | awk '{ $5 = sprintf("%.0f%%", $5) } 1' | paste -sd';' - | sed 's/;/; /g')"
    fi
    if [[ -z $SKIP_IDLE ]]; then
        echo
        echo "Memory per idle connection (WebSocket, connected to \"/\", pings answered; fresh server each time; (RSS after - RSS before) / N, KiB; held ${IDLE_HOLD} s at each step), and connects/s while opening that step's connections (opened / time):"
        echo
        echo "| target | RSS before KiB (median) | N | KiB/conn median | all reps | connects/s median | all reps | alive/N (all reps) |"
        echo "|---|---:|---:|---:|---|---:|---|---|"
        for t in "${TARGETS[@]}"; do
            for nn in ${IDLE_STEPS//,/ }; do
                printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(vals idle "$t" rss0_kib | median | fmt)" "$nn" \
                    "$(idle_vals "$t" "$nn" rss_per_conn_kib | median | fmt)" "$(idle_vals "$t" "$nn" rss_per_conn_kib | fmt | all)" \
                    "$(idle_vals "$t" "$nn" connects_per_s | median | fmt)" "$(idle_vals "$t" "$nn" connects_per_s | fmt | all)" \
                    "$(idle_vals "$t" "$nn" alive | all)"
            done
        done
    fi
    echo
    echo "Gateway / peer, ratio within each repetition (target: issue 16's, on the median; lower is better for CPU, p99 and KiB, higher for deliveries/s and connects/s):"
    echo
    echo "| figure | ratio | N | median | all reps | target |"
    echo "|---|---|---:|---:|---|---|"
    if has_case firehose; then
        for pr in "${PAIRS[@]}"; do
            set -- $pr
            tgt=(); [[ $2 == node ]] && tgt=(">=" 5)
            ratios firehose "$1" "$2" deliveries_per_s | ratio_row "firehose deliveries/s" "$1" "$2" - "${tgt[@]}"
        done
    fi
    for c in firehose quiet; do
        has_case "$c" || continue
        for pr in "${PAIRS[@]}"; do
            set -- $pr
            tgt=(); [[ $2 == socketioxide ]] && tgt=("<=" 1 0.5)
            ratios "$c" "$1" "$2" server_us_per_delivery | ratio_row "$c server CPU per delivery" "$1" "$2" - "${tgt[@]}"
        done
        for pr in "${PAIRS[@]}"; do
            set -- $pr
            tgt=(); [[ $2 == base-tls ]] || tgt=("<=" 1)
            ratios "$c" "$1" "$2" lat_ms_p99 | ratio_row "$c p99 latency" "$1" "$2" - "${tgt[@]}"
        done
    done
    if [[ -z $SKIP_IDLE ]]; then
        for nn in ${IDLE_STEPS//,/ }; do
            for pr in "${PAIRS[@]}"; do
                set -- $pr
                tgt=(); [[ $1 == gw-tls && $2 == node ]] && tgt=("<=" 1 0.5)
                idle_ratios "$1" "$2" "$nn" rss_per_conn_kib | ratio_row "KiB per idle connection" "$1" "$2" "$nn" "${tgt[@]}"
            done
        done
        for nn in ${IDLE_STEPS//,/ }; do
            for pr in "${PAIRS[@]}"; do
                set -- $pr
                tgt=(); [[ $2 == node ]] && tgt=(">=" 1)
                idle_ratios "$1" "$2" "$nn" connects_per_s | ratio_row "connects/s while opening" "$1" "$2" "$nn" "${tgt[@]}"
            done
        done
    fi
    echo
    echo "Raw (one JSON object per measurement): \`$(basename "$RAW")\`"
} | tee "$REPORT"
log "report: $REPORT (whole script ${ELAPSED} s)"
