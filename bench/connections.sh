#!/usr/bin/env bash
# As many concurrent idle realtime connections as the machine allows, over TLS: Socket.IO
# (WebSocket and polling), `/ws` (pubsub.v1), SSE and held long-polls, one fresh gateway per kind.
#
# A process may open at most `ulimit -Hn` files, so: the script raises the soft limit to the hard
# one, takes what one server process can hold (the limit minus MARGIN descriptors) as the largest
# count, and spreads the clients over several `rt-load conns` processes (each under its own limit,
# at most PER_CLIENT connections each) and over several loopback source addresses (127.0.0.2, ...;
# enough that the ephemeral ports never run out). At each step (STEPS, then the largest count) it
# records the server's RSS and PSS, connects/s while opening, server CPU per connect, and server
# CPU while the connections sit idle for HOLD s (per connection per minute; Socket.IO pings,
# WebSocket pings, SSE heartbeats and long-poll renewals included). Then ONE publish that every
# connection hears (the admin listener's POST /publish; Socket.IO: POST /emit to the namespace),
# with its delivery latency at every client (p50/p90/p99/max) and lost = expected - got.
# The memory per connection is the slope of a straight line fitted over the steps; the report
# projects it to 100,000 and 1,000,000 connections, and plots RSS vs connections (SVG).
#
#   bash bench/connections.sh                          # from the repo root; ~12 min after the build
#   STEPS=200,500 MAX=1000 HOLD=3 bash bench/connections.sh      # a smoke run
#   MAX=100000 bash bench/connections.sh               # where `ulimit -Hn` allows (a real server)
#
# Settings (environment): KINDS ("sio-ws sio-polling ws sse longpoll"), STEPS (5000,10000: the steps
# below the largest count), MAX (the largest count; default: the fd limit minus MARGIN), MARGIN
# (200 descriptors per process kept for everything else), PER_CLIENT (10000 connections per client
# process at most), HOLD (30 s idle at each step: longer than the 25 s ping interval), SOURCES (64
# loopback source addresses at least), CONC (200 connections being opened at once per client
# process), STEP_SECS (300: hard limit for opening one step), PUBLISH_WAIT (60 s for every
# connection to receive the publish), GW_THREADS (2), QUIET_PCT / QUIET_MAX_S (wait for other
# processes < 25% of a core, at most 60 s, before each kind), PEER_MAX_S (wait for the other
# bench/*.sh scripts to finish, at most 600 s in all), GATEWAY (the gateway binary measured; default
# the one built here: an earlier build's, to read a change as before and after), OUT_DIR
# (bench/results), PORT_OFFSET (0: every port moved by it), CARGO_TARGET_DIR.
# Writes OUT_DIR/connections-<stamp>.{jsonl,md,svg}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KINDS=${KINDS:-sio-ws sio-polling ws sse longpoll}
STEPS=${STEPS:-5000,10000}
MARGIN=${MARGIN:-200}
PER_CLIENT=${PER_CLIENT:-10000}
HOLD=${HOLD:-30}
SOURCES=${SOURCES:-64}
CONC=${CONC:-200}
STEP_SECS=${STEP_SECS:-300}
PUBLISH_WAIT=${PUBLISH_WAIT:-60}
GW_THREADS=${GW_THREADS:-2}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
o=${PORT_OFFSET:-0}
P_GW=$((19501 + o)) P_ADM=$((19511 + o))
RUN_START=$SECONDS

for k in $KINDS; do
    case $k in sio-ws | sio-polling | ws | sse | longpoll) ;; *) die "unknown kind $k (KINDS)" ;; esac
done

# --- what this machine allows -------------------------------------------------------------------
HARD=$(ulimit -Hn)
[[ $HARD == unlimited ]] && HARD=$(cat /proc/sys/fs/nr_open)
ulimit -n "$HARD" || die "cannot raise the soft fd limit to the hard one ($HARD)"
LIMIT=$(ulimit -n)
SERVER_CAP=$((LIMIT - MARGIN))
((SERVER_CAP > 0)) || die "ulimit -n is $LIMIT: no room for connections beside MARGIN=$MARGIN"
MAX=${MAX:-$SERVER_CAP}
((MAX <= SERVER_CAP)) || die "MAX=$MAX: one server process holds at most $SERVER_CAP (ulimit -Hn $LIMIT - MARGIN $MARGIN)"
# Client processes: each holds at most PER (its own fd limit minus the margin).
PER=$((PER_CLIENT < SERVER_CAP ? PER_CLIENT : SERVER_CAP))
WORKERS=$(((MAX + PER - 1) / PER))
# Every connection is two sockets on this machine (client and server side).
FILE_MAX=$(cat /proc/sys/fs/file-max)
((FILE_MAX >= 2 * MAX + 10000)) || die "fs.file-max is $FILE_MAX: too low for $MAX connections over loopback"
# Ephemeral ports per source address; twice what is needed, for the previous kind's TIME_WAIT.
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
PORTS=$((PORT_HI - PORT_LO + 1))
NEED_SOURCES=$(((2 * MAX + PORTS - 1) / PORTS))
((SOURCES >= NEED_SOURCES)) || SOURCES=$NEED_SOURCES
# The steps: those of STEPS below MAX, then MAX.
STEP_LIST=$(tr ',' '\n' <<<"$STEPS" | awk -v max="$MAX" '$1 + 0 > 0 && $1 + 0 < max + 0' | sort -n | uniq | paste -sd, -)
STEP_LIST=${STEP_LIST:+$STEP_LIST,}$MAX
NSTEPS=$(tr ',' '\n' <<<"$STEP_LIST" | wc -l)
# Hard limit for one kind: every step (opening + hold + the server's count), the publish, slack.
KIND_TIMEOUT=$((NSTEPS * (STEP_SECS + HOLD + 30) + PUBLISH_WAIT + 180))
log "fd limit $LIMIT (hard $HARD): up to $MAX connections per kind in steps $STEP_LIST; $WORKERS client processes; $SOURCES source addresses ($PORTS ports each)"

ensure_pkgs openssl:openssl
build_bins -p gateway -p backend-stub -p bench # the set the other scripts build: no rebuild from feature unification
GATEWAY=${GATEWAY:-$BIN/gateway}
for p in $P_GW $P_ADM; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done

T=$(mktemp -d /tmp/bench-conns.XXXXXX)
CLIENTS=()
stop_clients() {
    local p
    for p in "${CLIENTS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    CLIENTS=()
}
trap 'stop_clients; stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/connections-$STAMP.jsonl
REPORT=$OUT_DIR/connections-$STAMP.md
SVG=$OUT_DIR/connections-$STAMP.svg
: >"$RAW"
make_cert "$T"

# The gateway: every realtime transport on its usual path, over TLS; no cap on Engine.IO
# sessions (in all, per client address); no relay, history or rooms (idle sockets only).
cat >"$T/gw.yaml" <<YAML
listen:
  https: 127.0.0.1:$P_GW
  admin: 127.0.0.1:$P_ADM
tls:
  certificates:
    - cert: $T/cert.pem
      key: $T/key.pem
realtime:
  hub: { history: 1000, subscriber_queue: 1024 }
  longpoll: { wait_ms: 30000 }
  sse: { heartbeat_ms: 15000, retry_ms: 2000 }
  websocket:
    /ws: { protocols: [pubsub.v1], allow_plain: false }
  socketio:
    max_sessions: 0
    max_sessions_per_client: 0
    namespaces:
      "/": { relay: false, history: 0, client_rooms: false }
routes:
  - path: /socket.io/
    realtime: socketio
  - path: /ws
    realtime: websocket
  - path: /events
    realtime: sse
  - path: /s
    realtime: longpoll
threads: $GW_THREADS
grace_period_s: 1
YAML
"$GATEWAY" check --config "$T/gw.yaml" >/dev/null || die "gateway check failed for $T/gw.yaml"

PEER_MAX_S=${PEER_MAX_S:-600}
FACTS=$(machine_facts)

# One kind: a fresh gateway, WORKERS client processes meeting in a sync directory; the
# coordinator's (worker 0's) JSON line goes to RAW with what else ran, the others' too.
run_kind() { # kind
    local kind=$1 w sync=$T/sync-$1 quiet others out rc
    mkdir -p "$sync"
    wait_peers 'bench/(http|ws_passthrough|socketio|php|pubsub)\.sh'
    RUST_LOG=warn start gw "$T/gw-$kind.log" "$GATEWAY" run --config "$T/gw.yaml"
    wait_port $P_GW
    wait_port $P_ADM
    quiet=$(wait_quiet "$PID_gw")
    others=$(top_others || true)
    for ((w = 0; w < WORKERS; w++)); do
        timeout "$KIND_TIMEOUT" "$BIN/rt-load" --label "$kind" --pids "$PID_gw" --sources "$SOURCES" \
            --connect-concurrency "$CONC" conns --kind "$kind" --addr 127.0.0.1:$P_GW --tls \
            --admin 127.0.0.1:$P_ADM --steps "$STEP_LIST" --hold-secs "$HOLD" --worker "$w" \
            --workers "$WORKERS" --sync-dir "$sync" --step-secs "$STEP_SECS" \
            --publish-wait-secs "$PUBLISH_WAIT" >"$T/$kind-$w.out" 2>"$T/$kind-$w.err" &
        CLIENTS+=($!)
    done
    for ((w = 0; w < WORKERS; w++)); do
        rc=0
        wait "${CLIENTS[$w]}" || rc=$?
        ((rc == 0)) || log "$kind: client process $w ended with $rc: $(tail -3 "$T/$kind-$w.err" | paste -sd' ' -)"
    done
    CLIENTS=()
    stop_one gw
    for ((w = 0; w < WORKERS; w++)); do
        out=$(tail -1 "$T/$kind-$w.out")
        if [[ $out != '{'* ]]; then
            # A client process that printed nothing: recorded as failed (worker 0's line is the
            # one the report reads).
            out='{"label":"'$kind'","mode":"conns-worker","worker":'$w',"failed":1}'
            ((w > 0)) || out='{"label":"'$kind'","mode":"conns","kind":"'$kind'","failed":1}'
        fi
        printf '%s\n' "${out%\}},\"quiet_pct\":$quiet,\"others\":\"$others\"}" >>"$RAW"
    done
    out=$(tail -1 "$T/$kind-0.out")
    log "$kind: open after each step $(grep -o '"alive":[0-9]*' <<<"$out" | cut -d: -f2 | paste -sd/ -), $(grep -o '"rss_per_conn_kib":[-0-9.]*' <<<"$out" | cut -d: -f2 | fmt | paste -sd/ -) KiB/conn; publish lost $(jnum "$out" lost) of $(jnum "$out" expected), p99 $(jnum "$out" lat_ms_p99) ms"
}

t0=$SECONDS
for kind in $KINDS; do run_kind "$kind"; done
MEASURE_S=$((SECONDS - t0))
ELAPSED=$((SECONDS - RUN_START))

# --- report --------------------------------------------------------------------------------------
BODY=$("$BIN/rt-load" conns-report --raw "$RAW" --svg "$SVG") || die "rt-load conns-report failed"
{
    echo "### Concurrent connections run, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- command: \`bash bench/connections.sh\` (KINDS=\"$KINDS\" STEPS=$STEPS MAX=$MAX MARGIN=$MARGIN PER_CLIENT=$PER_CLIENT HOLD=$HOLD SOURCES=$SOURCES CONC=$CONC GW_THREADS=$GW_THREADS); measurements ${MEASURE_S} s, whole script ${ELAPSED} s"
    echo "- limits: \`ulimit -Hn\` $HARD (soft raised to $LIMIT), so one server process holds at most $SERVER_CAP connections (MARGIN $MARGIN descriptors kept); $WORKERS \`rt-load conns\` client processes of at most $PER connections each; $SOURCES loopback source addresses; fs.file-max $FILE_MAX"
    echo "- server: $([[ $GATEWAY == "$BIN/gateway" ]] && echo "gateway $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet 2>/dev/null || echo '+uncommitted changes')" || echo "$GATEWAY") \`threads: $GW_THREADS\`, HTTPS (TLS 1.3, ECDSA P-256), a fresh process per kind; client: \`rt-load conns\` (bench/src/conns.rs: tokio + rustls, certificate not verified)"
    echo "- memory: Rss and Pss of the gateway from /proc/PID/smaps_rollup after each step's ${HOLD} s hold; KiB/conn = (RSS - RSS of the empty server) / connections; CPU: utime+stime of the gateway from /proc, per connect while a step opens, then per connection per minute over the hold; connects/s = the step's new connections / (the step's start -> every client process's share open and the gateway counting them in \`gateway_open_connections\`)"
    echo "- other processes before each kind: $(sed -n 's/.*"mode":"conns","kind":"\([^"]*\)".*"quiet_pct":\([0-9]*\),"others":"\([^"]*\)".*/\1: \2% of a core [\3]/p' "$RAW" | paste -sd';' - | sed 's/;/; /g')"
    echo
    echo "$BODY"
    echo
    echo "Raw (one JSON object per client process and kind; \`\"mode\":\"conns\"\` is the coordinator's, with every figure): \`$(basename "$RAW")\`"
} | tee "$REPORT"
log "report: $REPORT, plot: $SVG (whole script ${ELAPSED} s)"
