#!/usr/bin/env bash
# Cross-node Socket.IO fan-out: two gateway nodes on one Redis vs two Node socket.io 4.8 processes
# with @socket.io/redis-adapter 8.3 on one Redis (the deployment the gateway replaces), all in ONE
# run, interleaved repetitions with a rotated order; medians + all values.
#
# One publisher on node 1 emits EVENTS numbered `chat` events; each is relayed to every other
# socket of the namespace on BOTH nodes (gateway: namespace "/" `relay: true`, through the hub's
# Redis backplane: one script call per publish; Node: socket.broadcast.emit through the adapter's
# PUBLISH). Receivers are split evenly over the two nodes. At most WINDOW events outstanding.
# Figures: deliveries/s, CPU per delivery of ALL server processes (both nodes and Redis), p99
# latency, missing deliveries. Both fleets speak plain ws (the Node servers have no TLS; the
# gateway's TLS cost is measured by bench/socketio.sh).
#
#   bash bench/cluster.sh                       # from the repo root
#   REPS=1 CLIENTS=1000 bash bench/cluster.sh   # quicker look
#
# Settings (environment): REPS (3), CLIENTS ("1000,10000": one measurement per count), DELIVERIES
# (1000000: events per measurement = DELIVERIES / clients), WINDOW (32), PAYLOAD (32 bytes),
# GW_THREADS (2), QUIET_PCT / QUIET_MAX_S, RETRIES (2) / RETRIES_MAX (4, per run), OUT_DIR
# (bench/results), CARGO_TARGET_DIR.
# Needs: cargo, node + npm, redis-server (Debian packages, installed with apt-get when missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPS=${REPS:-3}
CLIENTS=${CLIENTS:-1000,10000}
DELIVERIES=${DELIVERIES:-1000000}
WINDOW=${WINDOW:-32}
PAYLOAD=${PAYLOAD:-32}
GW_THREADS=${GW_THREADS:-2}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
P_GW1=19401 P_GW2=19402 P_ADM1=19411 P_ADM2=19412 P_NODE1=19421 P_NODE2=19422 P_REDIS_GW=19431 P_REDIS_NODE=19432
RUN_START=$SECONDS

ensure_pkgs node:nodejs npm:npm redis-server:redis-server redis-cli:redis-tools
build_bins -p gateway -p backend-stub -p bench
log "npm ci in bench/node (socket.io and the redis adapter pinned by package-lock.json)"
(cd "$REPO/bench/node" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in bench/node"
for p in $P_GW1 $P_GW2 $P_ADM1 $P_ADM2 $P_NODE1 $P_NODE2 $P_REDIS_GW $P_REDIS_NODE; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done
max_clients=$(tr ',' '\n' <<<"$CLIENTS" | sort -n | tail -1)
ulimit -n 20000 2>/dev/null || true
(($(ulimit -n) >= max_clients + 500)) || die "ulimit -n is $(ulimit -n); need $((max_clients + 500))"

T=$(mktemp -d /tmp/bench-cluster.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/cluster-$STAMP.jsonl
REPORT=$OUT_DIR/cluster-$STAMP.md
: >"$RAW"

gw_conf() { # name port admin-port node-id
    cat >"$T/$1.yaml" <<YAML
listen:
  http: 127.0.0.1:$2
  admin: 127.0.0.1:$3
cluster:
  redis: redis://127.0.0.1:$P_REDIS_GW/0
  node_id: $4
realtime:
  socketio:
    namespaces:
      "/": { relay: true, history: 0, client_rooms: false, relay_rate: { per_second: 1000000, burst: 1000000 } }
routes:
  - path: /socket.io/
    realtime: socketio
threads: $GW_THREADS
grace_period_s: 1
YAML
    "$BIN/gateway" check --config "$T/$1.yaml" >/dev/null || die "gateway check failed for $T/$1.yaml"
}
gw_conf gw1 $P_GW1 $P_ADM1 gw1
gw_conf gw2 $P_GW2 $P_ADM2 gw2

start_redis() { # name port
    start "$1" "$T/$1.log" redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly no --dir "$T"
    wait_port "$2"
}
# A fleet: its Redis and its two nodes; their pids in $FLEET_PIDS.
start_fleet() { # gw|node
    case $1 in
        gw)
            start_redis redis_gw $P_REDIS_GW
            RUST_LOG=warn start gw1 "$T/gw1.log" "$BIN/gateway" run --config "$T/gw1.yaml"
            RUST_LOG=warn start gw2 "$T/gw2.log" "$BIN/gateway" run --config "$T/gw2.yaml"
            wait_port $P_GW1
            wait_port $P_GW2
            FLEET_PIDS="$PID_redis_gw,$PID_gw1,$PID_gw2"
            ;;
        node)
            start_redis redis_node $P_REDIS_NODE
            REDIS_URL=redis://127.0.0.1:$P_REDIS_NODE start node1 "$T/node1.log" node "$REPO/bench/node/server.js" $P_NODE1 127.0.0.1
            REDIS_URL=redis://127.0.0.1:$P_REDIS_NODE start node2 "$T/node2.log" node "$REPO/bench/node/server.js" $P_NODE2 127.0.0.1
            wait_port $P_NODE1
            wait_port $P_NODE2
            FLEET_PIDS="$PID_redis_node,$PID_node1,$PID_node2"
            ;;
    esac
}
declare -A URL1 URL2
URL1[gw]=ws://127.0.0.1:$P_GW1/socket.io/ URL2[gw]=ws://127.0.0.1:$P_GW2/socket.io/
URL1[node]=ws://127.0.0.1:$P_NODE1/socket.io/ URL2[node]=ws://127.0.0.1:$P_NODE2/socket.io/
TARGETS=(gw node)

# What the fleet's Redis has run so far: "<scripts> <commands>", the EVAL/EVALSHA calls (one
# round trip each) and every command (INFO's own excluded; Redis counts the commands a script
# runs too). Read before and after each measurement, for the Redis work per publish (the
# target: one round trip per publish, not one per subscriber).
declare -A REDIS_PORT=([gw]=$P_REDIS_GW [node]=$P_REDIS_NODE)
redis_counts() { # port
    redis-cli -p "$1" INFO commandstats | awk -F'[:=,]' '
        /^cmdstat_eval/ { s += $3 }
        /^cmdstat_/ && $1 != "cmdstat_info" { n += $3 }
        END { print s + 0, n + 0 }'
}
record() { # json rep pos quiet
    printf '%s\n' "${1%\}},\"rep\":$2,\"pos\":$3,\"quiet_pct\":$4}" >>"$RAW"
}
RT="$BIN/rt-load --sources 64"
FACTS=$(machine_facts)

declare -A FP
for t in "${TARGETS[@]}"; do start_fleet "$t"; FP[$t]=$FLEET_PIDS; done
ALL_PIDS=$(tr ',' ' ' <<<"${FP[*]}")
# Smoke: 10 receivers over both nodes, 20 events, every delivery made (cross-node included).
for t in "${TARGETS[@]}"; do
    out=$(timeout 60 $RT --label "$t" --pids "${FP[$t]}" sio-fanout --url "${URL1[$t]}" \
        --receiver-urls "${URL1[$t]},${URL2[$t]}" --clients 10 --events 20 | tail -1) ||
        die "$t does not relay across nodes"
    [[ $(jnum "$out" missing) == 0 ]] || die "$t lost deliveries in the smoke test: $out"
done
log "both fleets relay across their nodes"

n=${#TARGETS[@]}
for clients in ${CLIENTS//,/ }; do
    events=$((DELIVERIES / clients))
    ((events >= 10)) || events=10
    for ((r = 1; r <= REPS; r++)); do
        for ((k = 0; k < n; k++)); do
            t=${TARGETS[$(((k + r - 1) % n))]}
            for ((a = 1; a <= 1 + RETRIES; a++)); do
                quiet=$(wait_quiet $ALL_PIDS)
                read -r s0 c0 <<<"$(redis_counts "${REDIS_PORT[$t]}")"
                out=$(timeout 600 $RT --label "$t" --pids "${FP[$t]}" sio-fanout --url "${URL1[$t]}" \
                    --receiver-urls "${URL1[$t]},${URL2[$t]}" --clients "$clients" --events "$events" \
                    --window "$WINDOW" --payload-bytes "$PAYLOAD" --max-secs 300 | tail -1) ||
                    { log "rep $r $t: rt-load failed"; out='{"label":"'$t'","mode":"sio-fanout","clients":'$clients',"failed":1}'; }
                read -r s1 c1 <<<"$(redis_counts "${REDIS_PORT[$t]}")"
                out="${out%\}},\"redis_scripts\":$((s1 - s0)),\"redis_commands\":$((c1 - c0))}"
                ((a <= RETRIES)) && disturbed "$out" || break
                log "rep $r $t: other processes used $(jnum "$out" others_cpu_pct)% of a core: measuring again"
            done
            record "${out%\}},\"attempts\":$a}" "$r" "$((k + 1))" "$quiet"
            log "$clients receivers, rep $r $t: $(jnum "$out" deliveries_per_s) deliveries/s, missing $(jnum "$out" missing), p99 $(jnum "$out" lat_ms_p99) ms, all servers $(jnum "$out" server_us_per_delivery) us/delivery"
        done
    done
done
ELAPSED=$((SECONDS - RUN_START))

vals() { # target clients key
    grep "\"label\":\"$1\"" "$RAW" | grep "\"clients\":$2," | while read -r l; do
        v=$(jnum "$l" "$3"); echo "${v:--}"
    done
}
# Redis work per published event in each measurement: "<script calls> / <commands>".
redis_per_publish() { # target clients
    grep "\"label\":\"$1\"" "$RAW" | grep "\"clients\":$2," | while read -r l; do
        s=$(jnum "$l" redis_scripts) c=$(jnum "$l" redis_commands) e=$(jnum "$l" events_sent)
        awk -v s="${s:-0}" -v c="${c:-0}" -v e="${e:-0}" \
            'BEGIN { if (e > 0) printf "%.2f/%.2f\n", s / e, c / e; else print "-" }'
    done
}
# Deliveries per CPU-second of all server processes = 1e6 / us per delivery; ratio gw / node
# within each repetition.
per_cpu_ratios() { # clients
    paste <(vals gw "$1" server_us_per_delivery) <(vals node "$1" server_us_per_delivery) |
        awk '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $1 > 0 { printf "%.2f\n", $2 / $1 }'
}
p99_ratios() { # clients: gw p99 / node p99
    paste <(vals gw "$1" lat_ms_p99) <(vals node "$1" lat_ms_p99) |
        awk '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $2 > 0 { printf "%.2f\n", $1 / $2 }'
}
{
    echo "### Cross-node Socket.IO run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- command: \`bash bench/cluster.sh\` (REPS=$REPS CLIENTS=$CLIENTS DELIVERIES=$DELIVERIES WINDOW=$WINDOW PAYLOAD=$PAYLOAD GW_THREADS=$GW_THREADS); whole script ${ELAPSED} s"
    echo "- gw: 2 gateway nodes (\`threads: $GW_THREADS\` each, plain ws) + redis-server $(redis-server --version | grep -o 'v=[0-9.]*'); node: 2 Node $(node --version) processes, socket.io $(node -p 'require("'"$REPO"'/bench/node/node_modules/socket.io/package.json").version') + @socket.io/redis-adapter $(node -p 'require("'"$REPO"'/bench/node/node_modules/@socket.io/redis-adapter/package.json").version') + its own redis-server. Publisher on node 1, receivers alternating between the nodes. CPU: both nodes and Redis."
    echo
    echo "| fleet | receivers | deliveries/s median | all reps | missing (all) | p99 ms median | all | CPU us/delivery median (all servers) | all | Redis per publish: scripts / commands (all) |"
    echo "|---|---:|---:|---|---:|---:|---|---:|---|---|"
    for clients in ${CLIENTS//,/ }; do
        for t in "${TARGETS[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$clients" \
                "$(vals "$t" "$clients" deliveries_per_s | median | fmt)" "$(vals "$t" "$clients" deliveries_per_s | all)" \
                "$(vals "$t" "$clients" missing | sum)" \
                "$(vals "$t" "$clients" lat_ms_p99 | median | fmt)" "$(vals "$t" "$clients" lat_ms_p99 | fmt | all)" \
                "$(vals "$t" "$clients" server_us_per_delivery | median | fmt)" "$(vals "$t" "$clients" server_us_per_delivery | fmt | all)" \
                "$(redis_per_publish "$t" "$clients" | all)"
        done
    done
    echo
    echo "| ratio (within each repetition) | receivers | median | all | target |"
    echo "|---|---:|---:|---|---|"
    for clients in ${CLIENTS//,/ }; do
        m=$(per_cpu_ratios "$clients" | median)
        printf '| gw / node deliveries per CPU-second | %s | %s | %s | >= 3x: %s |\n' "$clients" "$m" "$(per_cpu_ratios "$clients" | all)" \
            "$(awk -v m="$m" 'BEGIN { print (m + 0 >= 3 ? "hit" : "missed") }')"
        m=$(p99_ratios "$clients" | median)
        printf '| gw / node p99 latency | %s | %s | %s | <= 1: %s |\n' "$clients" "$m" "$(p99_ratios "$clients" | all)" \
            "$(awk -v m="$m" 'BEGIN { print (m + 0 <= 1 ? "hit" : "missed") }')"
    done
    echo
    echo "Raw (one JSON object per measurement): \`$(basename "$RAW")\`"
} | tee "$REPORT"
log "report: $REPORT (whole script ${ELAPSED} s)"
