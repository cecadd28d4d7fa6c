#!/usr/bin/env bash
# Socket.IO: the gateway (over TLS, as deployed, and over plain HTTP) vs the Node reference server
# (npm socket.io 4.8, plain HTTP), all measured in ONE run, interleaved repetitions with a
# rotated order; medians + all values.
#   1. fan-out: 1 publisher + CLIENTS receivers (WebSocket, namespace "/"); the publisher emits
#      EVENTS numbered `chat` events, the server relays each to every other socket (gateway:
#      namespace `relay: true`; Node: socket.broadcast.emit). At most WINDOW events outstanding.
#      deliveries/s, latency p50/p99, missing deliveries, server CPU per delivery.
#   2. memory per idle connection: a fresh server per measurement, RSS before, open 1,000 then
#      10,000 connections (cumulative), hold IDLE_HOLD s at each, RSS after: (after - before) / N.
#
#   bash bench/socketio.sh                    # from the repo root; ~9 min after the build
#   REPS=1 bash bench/socketio.sh             # quicker look
#
# Settings (environment): REPS (3), CLIENTS (1000), EVENTS (2000), WINDOW (32), PAYLOAD (32 bytes),
# IDLE_STEPS ("1000,10000"), IDLE_HOLD (10 s), GW_THREADS (2), SKIP_FANOUT, SKIP_IDLE,
# BASE_GATEWAY (a gateway binary of an earlier commit, measured over TLS as `base-tls` beside
# gw-tls with the same config: "is this change slower or bigger?" read within one run),
# QUIET_PCT / QUIET_MAX_S (wait for other processes < 25% of a core, at most 60 s), PEER_MAX_S (wait
# for bench/http.sh and bench/ws_passthrough.sh to finish before each measurement, at most 900 s in
# all), RETRIES (2: a fan-out measurement disturbed by other processes, > QUIET_PCT % of a core during
# it, is taken again, at most RETRIES_MAX (4) times per run), OUT_DIR (bench/results),
# CARGO_TARGET_DIR (release binaries are built there).
# Needs: cargo, node + npm (Debian `nodejs`, `npm`: installed with apt-get when missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPS=${REPS:-3}
CLIENTS=${CLIENTS:-1000}
EVENTS=${EVENTS:-2000}
WINDOW=${WINDOW:-32}
PAYLOAD=${PAYLOAD:-32}
IDLE_STEPS=${IDLE_STEPS:-1000,10000}
IDLE_HOLD=${IDLE_HOLD:-10}
GW_THREADS=${GW_THREADS:-2}
SKIP_FANOUT=${SKIP_FANOUT:-}
SKIP_IDLE=${SKIP_IDLE:-}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
P_TLS=19301 P_PLAIN=19302 P_NODE=19303 P_BASE=19304 P_ADM_TLS=19311 P_ADM_PLAIN=19312 P_ADM_BASE=19314
RUN_START=$SECONDS

ensure_pkgs openssl:openssl node:nodejs npm:npm
build_bins -p gateway -p backend-stub -p bench # the set the other scripts build: no rebuild from feature unification
log "npm ci in bench/node (socket.io pinned by package-lock.json)"
(cd "$REPO/bench/node" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in bench/node"
for p in $P_TLS $P_PLAIN $P_NODE $P_BASE $P_ADM_TLS $P_ADM_PLAIN $P_ADM_BASE; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done
# 10,000 connections: the client and each server need one descriptor per connection.
ulimit -n 20000 2>/dev/null || true
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

TARGETS=(gw-tls gw-plain node)
declare -A URL PORT
URL[gw-tls]=wss://127.0.0.1:$P_TLS/socket.io/
URL[gw-plain]=ws://127.0.0.1:$P_PLAIN/socket.io/
URL[node]=ws://127.0.0.1:$P_NODE/socket.io/
PORT[gw-tls]=$P_TLS PORT[gw-plain]=$P_PLAIN PORT[node]=$P_NODE
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
        base-*) RUST_LOG=warn start "$name" "$T/$t.log" "$BASE_GATEWAY" run --config "$T/$t.yaml" ;;
        *) RUST_LOG=warn start "$name" "$T/$t.log" "$BIN/gateway" run --config "$T/$t.yaml" ;;
    esac
    wait_port "${PORT[$t]}"
    eval "SPID=\$PID_$name"
}
stop_target() { # target: stop that server only (its process group), wait for its port to free
    local name=${1//-/_} entry pid keep=() i
    for entry in "${STARTED[@]}"; do
        if [[ ${entry%% *} == "$name" ]]; then pid=${entry#* }; else keep+=("$entry"); fi
    done
    STARTED=("${keep[@]}")
    [[ -n ${pid:-} ]] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
# Append one measurement (the client's JSON) to the raw file, with rep/pos/quiet/others.
record() { # json rep pos quiet others
    printf '%s\n' "${1%\}},\"rep\":$2,\"pos\":$3,\"quiet_pct\":$4,\"others\":\"$5\"}" >>"$RAW"
}
PEER_MAX_S=${PEER_MAX_S:-900} # wait_peers (lib.sh): at most this long in all
RT="$BIN/rt-load --sources 64"
FACTS=$(machine_facts)

# --- 1. fan-out --------------------------------------------------------------------------------
FANOUT_S=0
if [[ -z $SKIP_FANOUT ]]; then
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
        for ((k = 0; k < n; k++)); do
            t=${TARGETS[$(((k + r - 1) % n))]}
            for ((a = 1; a <= 1 + RETRIES; a++)); do
                wait_peers 'bench/(http|ws_passthrough)\.sh'
                quiet=$(wait_quiet $ALL_PIDS)
                others=$(top_others || true)
                out=$(timeout 300 $RT --label "$t" --pids "${SP[$t]}" sio-fanout --url "${URL[$t]}" \
                    --clients "$CLIENTS" --events "$EVENTS" --window "$WINDOW" --payload-bytes "$PAYLOAD" --max-secs 150 |
                    tail -1) || { log "rep $r $t: rt-load failed"; out='{"label":"'$t'","mode":"sio-fanout","failed":1}'; }
                ((a <= RETRIES)) && disturbed "$out" || break
                log "rep $r $t: other processes used $(jnum "$out" others_cpu_pct)% of a core during the measurement: measuring again"
            done
            record "${out%\}},\"attempts\":$a}" "$r" "$((k + 1))" "$quiet" "$others"
            log "fan-out rep $r #$((k + 1)) $t: $(jnum "$out" deliveries_per_s) deliveries/s, missing $(jnum "$out" missing), p50 $(jnum "$out" lat_ms_p50) ms, p99 $(jnum "$out" lat_ms_p99) ms, server $(jnum "$out" server_us_per_delivery) us/delivery, client $(jnum "$out" client_cpu_pct)% CPU"
        done
    done
    FANOUT_S=$((SECONDS - t0))
    for t in "${TARGETS[@]}"; do stop_target "$t"; done
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
            stop_target "$t"
            record "$out" "$r" "$((k + 1))" "$quiet" ""
            log "idle rep $r $t: $(echo "$out" | grep -o '"n":[0-9]*[^}]*"rss_per_conn_kib":[-0-9.]*' | sed 's/"connected.*"rss_per_conn_kib"/ rss KiB\/conn/' | paste -sd' ' -)"
        done
    done
    IDLE_S=$((SECONDS - t0))
fi
ELAPSED=$((SECONDS - RUN_START))

# --- report ------------------------------------------------------------------------------------
# Values of a key for one target and mode, in rep order.
vals() { # mode target key
    grep "\"mode\":\"$1\"" "$RAW" | grep "\"label\":\"$2\"" | while read -r l; do
        v=$(jnum "$l" "$3"); echo "${v:--}"
    done
}
# Per-connection memory at step N: sio-idle lines hold one object per step.
idle_vals() { # target n key
    grep '"mode":"sio-idle"' "$RAW" | grep "\"label\":\"$1\"" | while read -r l; do
        s=$(echo "$l" | grep -o "{\"n\":$2,[^}]*}" | head -1)
        v=$(jnum "$s" "$3"); echo "${v:--}"
    done
}
# Ratio a/b of a key within each repetition, then listed.
ratios() { # mode a b key [invert]
    paste <(vals "$1" "$2" "$4") <(vals "$1" "$3" "$4") |
        awk -v inv="${5:-}" '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $1 > 0 && $2 > 0 { printf "%.2f\n", inv ? $2 / $1 : $1 / $2 }'
}
idle_ratios() { # a b n key: a / b within each repetition
    paste <(idle_vals "$1" "$3" "$4") <(idle_vals "$2" "$3" "$4") |
        awk '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $2 > 0 { printf "%.2f\n", $1 / $2 }'
}
hit() { awk -v t="$2" '{ print ($1 + 0 >= t ? "hit" : "missed") }' <<<"$1"; }
hit_below() { awk -v t="$2" '{ print ($1 + 0 <= t ? "hit" : "missed") }' <<<"$1"; }
{
    echo "### Socket.IO run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- command: \`bash bench/socketio.sh\` (REPS=$REPS CLIENTS=$CLIENTS EVENTS=$EVENTS WINDOW=$WINDOW PAYLOAD=$PAYLOAD IDLE_STEPS=$IDLE_STEPS IDLE_HOLD=$IDLE_HOLD GW_THREADS=$GW_THREADS); fan-out ${FANOUT_S} s, memory ${IDLE_S} s, whole script ${ELAPSED} s"
    echo "- client: \`rt-load\` (bench/src/rt_load.rs: tokio + tokio-tungstenite + rustls, certificate not verified, 64 loopback source addresses); servers: gateway \`threads: $GW_THREADS\` (gw-tls: wss, TLS 1.3, ECDSA P-256; gw-plain: ws), Node $(node --version) + socket.io $(node -p 'require("'"$REPO"'/bench/node/node_modules/socket.io/package.json").version') (one process, plain ws)"
    if [[ -z $SKIP_FANOUT ]]; then
        echo
        echo "Fan-out: 1 publisher + $CLIENTS receivers, $EVENTS events of ~$((PAYLOAD + 30)) bytes, at most $WINDOW outstanding; $((CLIENTS * EVENTS)) deliveries expected per measurement."
        echo
        echo "| target | deliveries/s median | all reps | missing (all reps) | closed | p50 ms | p99 ms | server CPU us/delivery median (all) | server CPU % | client CPU % | others CPU % (all) |"
        echo "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|"
        for t in "${TARGETS[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s | %s | %s |\n' "$t" \
                "$(vals sio-fanout "$t" deliveries_per_s | median | fmt)" "$(vals sio-fanout "$t" deliveries_per_s | all)" \
                "$(vals sio-fanout "$t" missing | sum)" "$(vals sio-fanout "$t" receivers_closed | sum)" \
                "$(vals sio-fanout "$t" lat_ms_p50 | median | fmt)" "$(vals sio-fanout "$t" lat_ms_p99 | median | fmt)" \
                "$(vals sio-fanout "$t" server_us_per_delivery | median | fmt)" "$(vals sio-fanout "$t" server_us_per_delivery | fmt | all)" \
                "$(vals sio-fanout "$t" server_cpu_pct | median | fmt)" "$(vals sio-fanout "$t" client_cpu_pct | median | fmt)" \
                "$(vals sio-fanout "$t" others_cpu_pct | fmt | all)"
        done
        echo
        echo "| ratio (within each repetition) | median | all | target |"
        echo "|---|---:|---|---|"
        for g in gw-tls gw-plain; do
            m=$(ratios sio-fanout "$g" node deliveries_per_s | median)
            printf '| %s / node deliveries/s | %s | %s | >= 5x: %s |\n' "$g" "$m" "$(ratios sio-fanout "$g" node deliveries_per_s | all)" "$(hit "$m" 5)"
            printf '| node / %s server CPU per delivery | %s | %s | |\n' "$g" "$(ratios sio-fanout "$g" node server_us_per_delivery 1 | median)" "$(ratios sio-fanout "$g" node server_us_per_delivery 1 | all)"
        done
        if [[ -n ${BASE_GATEWAY:-} ]]; then
            printf '| gw-tls / base-tls deliveries/s (this tree / BASE_GATEWAY) | %s | %s | |\n' "$(ratios sio-fanout gw-tls base-tls deliveries_per_s | median)" "$(ratios sio-fanout gw-tls base-tls deliveries_per_s | all)"
            printf '| base-tls / gw-tls server CPU per delivery | %s | %s | |\n' "$(ratios sio-fanout gw-tls base-tls server_us_per_delivery 1 | median)" "$(ratios sio-fanout gw-tls base-tls server_us_per_delivery 1 | all)"
        fi
        echo
        echo "Other processes: during each counted measurement (% of a core, from /proc), and the busiest over 1 s just before it; attempts > 1 = taken again after a disturbed one: $(grep '"mode":"sio-fanout"' "$RAW" | sed -n 's/.*"label":"\([^"]*\)".*"others_cpu_pct":\([0-9.]*\).*"attempts":\([0-9]*\),"rep":\([0-9]*\),"pos":\([0-9]*\),"quiet_pct":\([0-9]*\),"others":"\([^"]*\)".*/rep \4 \1: \2% (attempts \3, before: \6% [\7])/p' | awk '{ $4 = sprintf("%.0f%%", $4) } 1' | paste -sd';' - | sed 's/;/; /g')"
    fi
    if [[ -z $SKIP_IDLE ]]; then
        echo
        echo "Memory per idle connection (WebSocket, connected to \"/\", pings answered; fresh server each time; (RSS after - RSS before) / N, KiB; held ${IDLE_HOLD} s at each step):"
        echo
        echo "| target | RSS before KiB (median) | N | KiB/conn median | all reps | alive/N (all reps) |"
        echo "|---|---:|---:|---:|---|---|"
        for t in "${TARGETS[@]}"; do
            for nn in ${IDLE_STEPS//,/ }; do
                printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$(vals sio-idle "$t" rss0_kib | median | fmt)" "$nn" \
                    "$(idle_vals "$t" "$nn" rss_per_conn_kib | median | fmt)" "$(idle_vals "$t" "$nn" rss_per_conn_kib | fmt | all)" \
                    "$(idle_vals "$t" "$nn" alive | all)"
            done
        done
        echo
        echo "| ratio: gateway KiB/conn / node KiB/conn (within each repetition) | N | median | all | target (<= 0.2) |"
        echo "|---|---:|---:|---|---|"
        for g in gw-tls gw-plain; do
            for nn in ${IDLE_STEPS//,/ }; do
                m=$(idle_ratios "$g" node "$nn" rss_per_conn_kib | median)
                printf '| %s / node | %s | %s | %s | %s |\n' "$g" "$nn" "$m" "$(idle_ratios "$g" node "$nn" rss_per_conn_kib | all)" "$(hit_below "$m" 0.2)"
            done
        done
        if [[ -n ${BASE_GATEWAY:-} ]]; then
            for nn in ${IDLE_STEPS//,/ }; do
                printf '| gw-tls / base-tls (this tree / BASE_GATEWAY) | %s | %s | %s | |\n' "$nn" "$(idle_ratios gw-tls base-tls "$nn" rss_per_conn_kib | median)" "$(idle_ratios gw-tls base-tls "$nn" rss_per_conn_kib | all)"
            done
        fi
    fi
    echo
    echo "Raw (one JSON object per measurement): \`$(basename "$RAW")\`"
} | tee "$REPORT"
log "report: $REPORT (whole script ${ELAPSED} s)"
