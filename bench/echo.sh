#!/usr/bin/env bash
# The cost of one authorized subscribe, the app's round trip included: the gateway (`echo: true`,
# `realtime.auth` asking the app) vs laravel-echo-server 1.6.3 (npm; socket.io 2.x; its presence
# members in a Redis the script starts), both asking the SAME app stand-in, backend-stub's
# `POST /broadcasting/auth` (one backend-stub process per server, so each one's CPU is its own),
# measured in ONE run, interleaved repetitions with a rotated order; medians + all values.
#
# A measurement: PROCS client processes x CONNS WebSocket connections, each signed in as its own
# user (cookie `user=<name>`, the stub's session) and running CYCLES presence-channel cycles, one at
# a time: `subscribe` {channel, auth: {headers: {}}} (Laravel Echo's `join()`) -> the server asks
# the app -> `presence:subscribed` (channel, members) -> `unsubscribe` (bench/echo/load.js).
# Concurrency = PROCS x CONNS subscribes in flight. Figures: subscribes/s; latency p50/p99
# (subscribe sent -> presence:subscribed); server CPU per subscribe (utime+stime of its process
# tree from /proc over the window; laravel-echo-server's Redis shown apart and added); the app's
# CPU per subscribe; the machine's interrupt time per subscribe (irq + softirq from /proc/stat:
# the kernel's loopback packet work, which this kernel accounts apart from the processes); app
# calls per subscribe (backend-stub logs one line per /broadcasting/auth: must be 1); failures;
# the client's CPU (a client process near 100% of a core would make the client, not the server,
# set the pace). Both servers over plain HTTP (ws://): laravel-echo-server runs without TLS here,
# so the gateway does too.
#
#   bash bench/echo.sh                       # from the repo root; ~3 min after the build
#   REPS=1 CYCLES=20 bash bench/echo.sh      # quick look
#
# Settings (environment): REPS (3), PROCS (2), CONNS (32 per process), CYCLES (300 per connection),
# WARMUP (5 cycles per connection before each measured window), GW_THREADS (2), QUIET_PCT /
# QUIET_MAX_S (wait for other processes < 25% of a core, at most 60 s), PEER_MAX_S (wait for the
# other bench/*.sh scripts to finish, at most 600 s in all), RETRIES (2) / RETRIES_MAX (4 per run:
# a measurement disturbed by other processes, > QUIET_PCT % of a core during it, is taken again),
# OUT_DIR (bench/results), CARGO_TARGET_DIR (release binaries are built there).
# Needs: cargo; node + npm, redis-server, curl (Debian packages, installed with apt-get when
# missing); bench/echo's npm packages (`npm ci` from its package-lock.json).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPS=${REPS:-3}
PROCS=${PROCS:-2}
CONNS=${CONNS:-32}
CYCLES=${CYCLES:-300}
WARMUP=${WARMUP:-5}
GW_THREADS=${GW_THREADS:-2}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
P_GW=19501 P_LES=19502 P_ADM=19511 P_APP_GW=19551 P_APP_LES=19552 P_REDIS=19559
MAX_SECS=${MAX_SECS:-180}
RUN_START=$SECONDS

ensure_pkgs node:nodejs npm:npm redis-server:redis-server curl:curl
build_bins -p gateway -p backend-stub -p bench # the set the other scripts build: no rebuild from feature unification
ECHO_DIR=$REPO/bench/echo
log "npm ci in bench/echo (laravel-echo-server and the socket.io clients pinned by package-lock.json)"
(cd "$ECHO_DIR" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in bench/echo"
for p in $P_GW $P_LES $P_ADM $P_APP_GW $P_APP_LES $P_REDIS; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done

T=$(mktemp -d /tmp/bench-echo.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/echo-$STAMP.jsonl
REPORT=$OUT_DIR/echo-$STAMP.md
: >"$RAW"

# The gateway as a laravel-echo-server replacement (README "Moving from laravel-echo-server"):
# Echo's protocol on "/", private and presence channels asked of the app at /broadcasting/auth
# (no connect callback: laravel-echo-server had none; no answer cache: `cache_ms` 0, the default).
cat >"$T/gw.yaml" <<YAML
listen:
  http: 127.0.0.1:$P_GW
  admin: 127.0.0.1:$P_ADM
upstreams:
  app:
    servers: [127.0.0.1:$P_APP_GW]
realtime:
  socketio:
    namespaces:
      "/": { echo: true }
  auth: { upstream: app, subscribe: /broadcasting/auth }
routes:
  - { path: /socket.io/, realtime: socketio }
threads: $GW_THREADS
grace_period_s: 1
YAML
"$BIN/gateway" check --config "$T/gw.yaml" >/dev/null || die "gateway check failed for $T/gw.yaml"

# laravel-echo-server.json as `laravel-echo-server init` writes it, for this setup: the app at
# authHost + authEndpoint, presence members in Redis, the HTTP publish API on and the Redis
# subscriber off (nothing is published here), no dev-mode logging, plain HTTP.
cat >"$T/laravel-echo-server.json" <<JSON
{
  "authHost": "http://127.0.0.1:$P_APP_LES",
  "authEndpoint": "/broadcasting/auth",
  "clients": [],
  "database": "redis",
  "databaseConfig": {
    "redis": { "host": "127.0.0.1", "port": $P_REDIS },
    "sqlite": { "databasePath": "/database/laravel-echo-server.sqlite" }
  },
  "devMode": false,
  "host": "127.0.0.1",
  "port": "$P_LES",
  "protocol": "http",
  "socketio": {},
  "sslCertPath": "",
  "sslKeyPath": "",
  "sslCertChainPath": "",
  "sslPassphrase": "",
  "subscribers": { "http": true, "redis": false },
  "apiOriginAllow": { "allowCors": false, "allowOrigin": "", "allowMethods": "", "allowHeaders": "" }
}
JSON

# backend-stub logs one line per /broadcasting/auth at level info (not silenced by --quiet,
# which drops only the per-request access line): the count of app calls.
RUST_LOG=info start app_gw "$T/app-gw.log" "$BIN/backend-stub" --listen 127.0.0.1:$P_APP_GW --id app-gw --quiet
RUST_LOG=info start app_les "$T/app-les.log" "$BIN/backend-stub" --listen 127.0.0.1:$P_APP_LES --id app-les --quiet
start redis "$T/redis.log" redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no --dir "$T"
RUST_LOG=warn start gw "$T/gw.log" "$BIN/gateway" run --config "$T/gw.yaml"
# Run from $T: laravel-echo-server reads a .env from its working directory and writes its lock
# file next to the config.
start les "$T/les.log" bash -c "cd '$T' && exec node '$ECHO_DIR/node_modules/laravel-echo-server/bin/server.js' start --config=laravel-echo-server.json"
for p in $P_APP_GW $P_APP_LES $P_REDIS $P_GW $P_LES; do wait_port "$p"; done

TARGETS=(gw les)
declare -A URL PROTO SPIDS DBPIDS APIDS APP_PORT APP_LOG APP_CONNS
URL[gw]=http://127.0.0.1:$P_GW URL[les]=http://127.0.0.1:$P_LES
PROTO[gw]=v4 PROTO[les]=v2
SPIDS[gw]=$PID_gw SPIDS[les]=$PID_les
DBPIDS[gw]="" DBPIDS[les]=$PID_redis
APIDS[gw]=$PID_app_gw APIDS[les]=$PID_app_les
APP_PORT[gw]=$P_APP_GW APP_PORT[les]=$P_APP_LES
APP_LOG[gw]=$T/app-gw.log APP_LOG[les]=$T/app-les.log
ALL_PIDS=$(for e in "${STARTED[@]}"; do printf '%s ' "${e#* }"; done)

load() { # target procs conns cycles warmup -> the client's JSON line
    local t=$1
    CLK_TCK=$CLK_TCK timeout $((MAX_SECS + 30)) node "$ECHO_DIR/load.js" --label "$t" --proto "${PROTO[$t]}" \
        --url "${URL[$t]}" --procs "$2" --conns "$3" --cycles "$4" --warmup "$5" --max-secs "$MAX_SECS" \
        --server-pids "${SPIDS[$t]}" --db-pids "${DBPIDS[$t]}" --app-pids "${APIDS[$t]}" \
        --app-log "${APP_LOG[$t]}" | tail -1
}

# Smoke: every subscribe reaches the app once, as a POST /broadcasting/auth carrying the user's
# cookie (from the app's own request log, /__log), and every one is confirmed.
for t in "${TARGETS[@]}"; do
    curl -fsS -X DELETE "http://127.0.0.1:${APP_PORT[$t]}/__log" || die "cannot clear the app's request log"
    out=$(load "$t" 1 4 3 2) || die "$t: the load client failed: $out $(tail -5 "$T/$t.log")"
    [[ $(jnum "$out" failed) == 0 && $(jnum "$out" subscribes) == 12 && $(jnum "$out" app_calls_per_sub) == 1 ]] ||
        die "$t: smoke test: $out"
    asked=$(curl -fsS "http://127.0.0.1:${APP_PORT[$t]}/__log" | node -e '
        const log = JSON.parse(require("fs").readFileSync(0, "utf8"));
        const auth = log.filter((r) => r.path === "/broadcasting/auth");
        const ok = auth.filter((r) => r.method === "POST" && /(^|; )user=b0x[0-3]($|;)/.test(r.headers.cookie || ""));
        console.log(`${auth.length} ${ok.length} ${new Set(auth.map((r) => r.peer)).size}`);')
    read -r n_auth n_ok n_peers <<<"$asked"
    # 4 connections x (2 warm-up + 3 measured) cycles.
    [[ $n_auth == 20 && $n_ok == 20 ]] || die "$t: the app saw $n_auth /broadcasting/auth requests ($n_ok POSTs with the user's cookie), expected 20"
    APP_CONNS[$t]=$n_peers
    log "$t: 20 subscribes, 20 app calls with the user's cookie over $n_peers connections to the app"
done
FACTS=$(machine_facts)

t0=$SECONDS
n=${#TARGETS[@]}
for ((r = 1; r <= REPS; r++)); do
    for ((k = 0; k < n; k++)); do
        t=${TARGETS[$(((k + r - 1) % n))]}
        for ((a = 1; a <= 1 + RETRIES; a++)); do
            wait_peers 'bench/(http|ws_passthrough|socketio|php|pubsub|cluster)\.sh'
            quiet=$(wait_quiet $ALL_PIDS)
            others=$(top_others || true)
            out=$(load "$t" "$PROCS" "$CONNS" "$CYCLES" "$WARMUP") ||
                { log "rep $r $t: the load client failed: $out"; out='{"label":"'$t'","mode":"echo-subscribe","failed":-1}'; }
            ((a <= RETRIES)) && disturbed "$out" || break
            log "rep $r $t: other processes used $(jnum "$out" others_cpu_pct)% of a core during the measurement: measuring again"
        done
        printf '%s\n' "${out%\}},\"tries\":$a,\"rep\":$r,\"pos\":$((k + 1)),\"quiet_pct\":$quiet,\"others\":\"$others\"}" >>"$RAW"
        log "rep $r $t: $(jnum "$out" subscribes_per_s) subscribes/s, failed $(jnum "$out" failed), p50 $(jnum "$out" lat_ms_p50) ms, p99 $(jnum "$out" lat_ms_p99) ms, server $(jnum "$out" server_us_per_sub) us/sub (+ db $(jnum "$out" db_us_per_sub)), app $(jnum "$out" app_us_per_sub) us/sub, app calls/sub $(jnum "$out" app_calls_per_sub), client $(jnum "$out" client_cpu_pct)% (busiest process $(jnum "$out" client_max_proc_pct)%), others $(jnum "$out" others_cpu_pct)%"
    done
done
MEASURE_S=$((SECONDS - t0))
ELAPSED=$((SECONDS - RUN_START))
grep -q '"failed":-1' "$RAW" && log "some measurements failed: see $RAW"
# What the servers said while measured: the gateway logs at level warn, laravel-echo-server its
# errors (devMode off).
SERVER_LOGS="gateway: $(grep -c ' WARN \| ERROR ' "$T/gw.log" || true) warning/error lines; laravel-echo-server: $(grep -ci 'error' "$T/les.log" || true) error lines; alive at the end: gateway $(kill -0 "$PID_gw" 2>/dev/null && echo yes || echo NO), laravel-echo-server $(kill -0 "$PID_les" 2>/dev/null && echo yes || echo NO)"

# --- report ------------------------------------------------------------------------------------
vals() { # target key: values in rep order
    grep "\"label\":\"$1\"" "$RAW" | while read -r l; do v=$(jnum "$l" "$2"); echo "${v:--}"; done
}
cell() { echo "$(vals "$1" "$2" | median | fmt) ($(vals "$1" "$2" | fmt | all))"; }
# a / b of one key within each repetition ([invert]: b / a); ratio of sums for two keys.
ratios() { # a b key [invert]
    paste <(vals "$1" "$3") <(vals "$2" "$3") |
        awk -v inv="${4:-}" '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $1 > 0 && $2 > 0 { printf "%.2f\n", inv ? $2 / $1 : $1 / $2 }'
}
# One line per measurement: the CPU of each party during it, and what ran just before it.
measurements() {
    local l
    while read -r l; do
        printf 'rep %s #%s %s: server %.0f%%, app %.0f%%, Redis %.0f%%, client %.0f%% (busiest process %.0f%%), others %.0f%% (tries %s; just before: %s%% [%s])\n' \
            "$(jnum "$l" rep)" "$(jnum "$l" pos)" "$(echo "$l" | sed -n 's/.*"label":"\([^"]*\)".*/\1/p')" \
            "$(jnum "$l" server_cpu_pct)" "$(jnum "$l" app_cpu_pct)" "$(jnum "$l" db_cpu_pct)" \
            "$(jnum "$l" client_cpu_pct)" "$(jnum "$l" client_max_proc_pct)" "$(jnum "$l" others_cpu_pct)" \
            "$(jnum "$l" tries)" "$(jnum "$l" quiet_pct)" "$(echo "$l" | sed -n 's/.*"others":"\([^"]*\)".*/\1/p')"
    done <"$RAW" | awk 'NR > 1 { printf "; " } { printf "%s", $0 } END { print "" }'
}
ratio_row() { # label a b key [invert]
    printf '| %s | %s | %s |\n' "$1" "$(ratios "$2" "$3" "$4" "${5:-}" | median)" "$(ratios "$2" "$3" "$4" "${5:-}" | all)"
}
LES_VERSION=$(node -p "require('$ECHO_DIR/node_modules/laravel-echo-server/package.json').version")
LES_SIO=$(node -p "require('$ECHO_DIR/node_modules/socket.io/package.json').version")
C4=$(node -p "require('$ECHO_DIR/node_modules/socket.io-client/package.json').version")
C2=$(node -p "require('$ECHO_DIR/node_modules/socket.io-client-v2/package.json').version")
{
    echo "### Authorized subscribe run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- command: \`bash bench/echo.sh\` (REPS=$REPS PROCS=$PROCS CONNS=$CONNS CYCLES=$CYCLES WARMUP=$WARMUP GW_THREADS=$GW_THREADS); measurements ${MEASURE_S} s, whole script ${ELAPSED} s"
    echo "- servers, both plain HTTP (ws://): gateway \`threads: $GW_THREADS\`, \`echo: true\`, \`realtime.auth {upstream: app, subscribe: /broadcasting/auth}\`; laravel-echo-server $LES_VERSION (socket.io $LES_SIO, Node $(node --version), one process, devMode false) with its presence members in $(redis-server --version | cut -d' ' -f1-3) (started by the script, no persistence)"
    echo "- app: backend-stub (one process per server), \`POST /broadcasting/auth\` answering \`{\"channel_data\": {\"user_id\", \"user_info\"}}\` for the cookie's user; connections to it seen in the smoke test's 20 calls: gateway ${APP_CONNS[gw]} (pooled), laravel-echo-server ${APP_CONNS[les]} (one per call)"
    echo "- client: bench/echo/load.js, $PROCS Node processes x $CONNS WebSocket connections = $((PROCS * CONNS)) subscribes in flight, $CYCLES cycles each (subscribe -> presence:subscribed -> unsubscribe, two channels per connection in turn) = $((PROCS * CONNS * CYCLES)) subscribes per measurement after $WARMUP warm-up cycles per connection; socket.io-client $C4 (gateway) / $C2 (laravel-echo-server)"
    echo
    echo "| target | subscribes/s median (all) | failed (all reps) | app calls per subscribe (all) | p50 ms median (all) | p99 ms median (all) | server CPU us/subscribe median (all) | of it, Redis (all) | app CPU us/subscribe median (all) | machine's interrupt time us/subscribe median (all) | client CPU %, busiest client process % (medians) | others CPU % (all) |"
    echo "|---|---|---:|---|---|---|---|---|---|---|---|---|"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s, %s | %s |\n' "$t" \
            "$(cell "$t" subscribes_per_s)" "$(vals "$t" failed | sum)" "$(vals "$t" app_calls_per_sub | all)" \
            "$(cell "$t" lat_ms_p50)" "$(cell "$t" lat_ms_p99)" "$(cell "$t" server_db_us_per_sub)" \
            "$(vals "$t" db_us_per_sub | fmt | all)" "$(cell "$t" app_us_per_sub)" "$(cell "$t" irq_us_per_sub)" \
            "$(vals "$t" client_cpu_pct | median | fmt)" "$(vals "$t" client_max_proc_pct | median | fmt)" \
            "$(vals "$t" others_cpu_pct | fmt | all)"
    done
    echo
    echo "| ratio (within each repetition) | median | all |"
    echo "|---|---:|---|"
    ratio_row "laravel-echo-server / gateway, server CPU per subscribe (with its Redis)" les gw server_db_us_per_sub
    ratio_row "laravel-echo-server / gateway, server CPU per subscribe (its Node process alone)" les gw server_us_per_sub
    ratio_row "laravel-echo-server / gateway, app CPU per subscribe" les gw app_us_per_sub
    ratio_row "gateway / laravel-echo-server, subscribes/s" gw les subscribes_per_s
    ratio_row "laravel-echo-server / gateway, latency p50" les gw lat_ms_p50
    ratio_row "laravel-echo-server / gateway, latency p99" les gw lat_ms_p99
    echo
    echo "Server logs: $SERVER_LOGS."
    echo
    echo "Each measurement, during it (% of a core, from /proc): $(measurements)"
    echo
    echo "Raw (one JSON object per measurement): \`$(basename "$RAW")\`"
} | tee "$REPORT"
log "report: $REPORT (whole script ${ELAPSED} s)"
