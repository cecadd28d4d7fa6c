#!/usr/bin/env bash
# Long-poll and SSE fan-out: the gateway vs nchan (Debian libnginx-mod-nchan), both plain HTTP
# (or both HTTPS with TLS=yes: same certificate, the client speaks TLS 1.3), measured in ONE
# run, interleaved repetitions with a rotated order; medians + all values.
# Each measurement starts a fresh server, opens SUBS subscribers on a new topic (long-poll: each
# holds a GET; SSE: each holds an event stream), waits until the server counts all of them,
# holds HOLD s and reads the server's memory (-> memory per subscriber), then one publisher
# publishes MESSAGES messages, each published when the previous WINDOW are everywhere
# (WINDOW=1: lockstep). deliveries/s = SUBS x MESSAGES / (first publish -> last receipt).
# Long-poll subscribers poll again with their position (gateway: since=<X-Position>; nchan:
# If-Modified-Since + If-None-Match), so nothing published between two polls is lost.
#
#   bash bench/pubsub.sh                      # from the repo root; ~6 min after the build
#   REPS=1 SUBS=2000 bash bench/pubsub.sh     # quicker look
#   TLS=yes bash bench/pubsub.sh              # both servers over TLS
#
# Settings (environment): REPS (3), SUBS (10000), MESSAGES (50), LP_WINDOW (1), SSE_WINDOW (1),
# PAYLOAD (32 bytes), HOLD (3 s), GW_THREADS (2), NGINX_WORKERS (2), KINDS ("longpoll sse"), TLS (no),
# QUIET_PCT / QUIET_MAX_S (wait for other processes < 25% of a core, at most 60 s), PEER_MAX_S (wait
# for the other bench/*.sh scripts to finish before each measurement, at most 600 s in
# all), RETRIES (2: a measurement disturbed by other processes, > QUIET_PCT % of a core during it, is
# taken again, at most RETRIES_MAX (4) times per run), OUT_DIR (bench/results), CARGO_TARGET_DIR,
# BASE_GATEWAY (a gateway binary of an earlier commit, measured as `<kind>-base` beside `<kind>-gw`
# with the same config, in the same interleaved repetitions).
# Needs: cargo; installs nginx and libnginx-mod-nchan with apt-get when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPS=${REPS:-3}
SUBS=${SUBS:-10000}
MESSAGES=${MESSAGES:-50}
LP_WINDOW=${LP_WINDOW:-1}
SSE_WINDOW=${SSE_WINDOW:-1}
PAYLOAD=${PAYLOAD:-32}
HOLD=${HOLD:-3}
GW_THREADS=${GW_THREADS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-2}
KINDS=${KINDS:-longpoll sse}
TLS=${TLS:-no}
[[ $TLS == yes || $TLS == no ]] || die "TLS must be yes or no"
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
P_GW=19401 P_ADM=19411 P_NCHAN=19402
NCHAN_SO=/usr/lib/nginx/modules/ngx_nchan_module.so
RUN_START=$SECONDS

ensure_pkgs nginx:nginx openssl:openssl
if [[ ! -f $NCHAN_SO ]]; then
    log "installing libnginx-mod-nchan (apt-get)"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y libnginx-mod-nchan >&2 ||
        { $sudo timeout 300 apt-get update >&2 &&
          $sudo env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y libnginx-mod-nchan >&2; } ||
        die "cannot install libnginx-mod-nchan"
fi
build_bins -p gateway -p backend-stub -p bench # the set bench/http.sh builds: no rebuild from feature unification between scripts
if [[ -n ${BASE_GATEWAY:-} ]]; then
    [[ -x $BASE_GATEWAY ]] || die "BASE_GATEWAY=$BASE_GATEWAY is not an executable"
fi
for p in $P_GW $P_ADM $P_NCHAN; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done
ulimit -n 20000 2>/dev/null || true
(($(ulimit -n) >= SUBS + 500)) || die "ulimit -n is $(ulimit -n); need $((SUBS + 500)) (ulimit -n 20000)"

T=$(mktemp -d /tmp/bench-pubsub.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
NAME=pubsub
[[ $TLS == yes ]] && NAME=pubsub-tls
RAW=$OUT_DIR/$NAME-$STAMP.jsonl
REPORT=$OUT_DIR/$NAME-$STAMP.md
: >"$RAW"

# With TLS=yes both servers get the same self-signed ECDSA P-256 certificate.
GW_LISTEN="http: 127.0.0.1:$P_GW" GW_TLS="" NCHAN_SSL="" TRANSPORT="plain HTTP" RT_TLS=""
if [[ $TLS == yes ]]; then
    make_cert "$T"
    GW_LISTEN="https: 127.0.0.1:$P_GW"
    GW_TLS="tls:
  certificates:
    - cert: $T/cert.pem
      key: $T/key.pem"
    NCHAN_SSL="ssl;
        ssl_certificate $T/cert.pem;
        ssl_certificate_key $T/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m"
    TRANSPORT="HTTPS (TLS 1.3, same ECDSA P-256 certificate)"
    RT_TLS="--tls"
fi

# The gateway: long-poll (/s, /p) and SSE (/events) on the hub; admin (plain, loopback) for the
# subscriber count. Hub defaults (history 1000, subscriber queue 1024).
cat >"$T/gw.yaml" <<YAML
listen:
  $GW_LISTEN
  admin: 127.0.0.1:$P_ADM
$GW_TLS
realtime:
  hub: { history: 1000, subscriber_queue: 1024 }
  longpoll: { wait_ms: 30000 }
  sse: { heartbeat_ms: 15000, retry_ms: 2000 }
  # The publisher posts to /p, as nchan's open publisher location.
  policy: { client_publish: ["*"] }
routes:
  - path: /s
    realtime: longpoll
  - path: /p
    realtime: longpoll
  - path: /events
    realtime: sse
threads: $GW_THREADS
grace_period_s: 1
YAML
"$BIN/gateway" check --config "$T/gw.yaml" >/dev/null || die "gateway check failed"

# nchan: long-poll subscribers at /lp/<id>, EventSource at /ev/<id>, publisher (and channel
# info with Accept: text/json) at /pub/<id>; a new subscriber waits for the NEXT message
# (first_message newest), and 1000 messages are kept per channel like the gateway's history.
user=""
[[ $(id -u) -eq 0 ]] && user="user root root;"
mkdir -p "$T/nchan"
cat >"$T/nchan.conf" <<NGINX
load_module $NCHAN_SO;
$user
worker_processes $NGINX_WORKERS;
daemon off;
pid $T/nchan/nginx.pid;
error_log $T/nchan/error.log warn;
events { worker_connections 16000; }
worker_rlimit_nofile 19000;
http {
    access_log off;
    client_body_temp_path $T/nchan/body;
    proxy_temp_path $T/nchan/proxy;
    fastcgi_temp_path $T/nchan/fastcgi;
    uwsgi_temp_path $T/nchan/uwsgi;
    scgi_temp_path $T/nchan/scgi;
    server {
        listen 127.0.0.1:$P_NCHAN backlog=4096 $NCHAN_SSL;
        location ~ ^/lp/(\w+)$ {
            nchan_subscriber longpoll;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/ev/(\w+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/(\w+)$ {
            nchan_publisher;
            nchan_channel_id \$1;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 1h;
        }
    }
}
NGINX
nginx -t -q -p "$T/nchan" -c "$T/nchan.conf" 2>&1 | grep -v 'could not open error log' >&2 || true

start_server() { # gw|nchan -> $SPID
    case $1 in
        gw) RUST_LOG=warn start gw "$T/gw.log" "$BIN/gateway" run --config "$T/gw.yaml"; wait_port $P_GW; wait_port $P_ADM; SPID=$PID_gw ;;
        base) RUST_LOG=warn start base "$T/base.log" "$BASE_GATEWAY" run --config "$T/gw.yaml"; wait_port $P_GW; wait_port $P_ADM; SPID=$PID_base ;;
        nchan) start nchan "$T/nchan.out" nginx -p "$T/nchan" -c "$T/nchan.conf"; wait_port $P_NCHAN; SPID=$PID_nchan ;;
    esac
}
record() { printf '%s\n' "${1%\}},\"case\":\"$2\",\"rep\":$3,\"pos\":$4,\"quiet_pct\":$5,\"others\":\"$6\"}" >>"$RAW"; }
RT="$BIN/rt-load --sources 64 --connect-concurrency 200"
FACTS=$(machine_facts)

measure() { # kind server rep pos subs messages -> the client's JSON in $OUT (no subshell: the
    local kind=$1 srv=$2 window=$LP_WINDOW topic  # server must be stopped by this shell)
    [[ $kind == sse ]] && window=$SSE_WINDOW
    topic="b${3}p${4}$RANDOM"
    start_server "$srv"
    local args=(--server gateway --addr 127.0.0.1:$P_GW --admin 127.0.0.1:$P_ADM)
    [[ $srv == nchan ]] && args=(--server nchan --addr 127.0.0.1:$P_NCHAN)
    [[ $srv == base ]] && args=(--server gateway --addr 127.0.0.1:$P_GW --admin 127.0.0.1:$P_ADM)
    OUT=$(timeout 400 $RT --label "$kind-$srv" --pids "$SPID" hub-fanout --kind "$kind" "${args[@]}" $RT_TLS \
        --topic "$topic" --subs "$5" --messages "$6" --window "$window" --payload-bytes "$PAYLOAD" \
        --hold-secs "$HOLD" --max-secs 240 | tail -1) || OUT='{"label":"'$kind-$srv'","mode":"hub-fanout","failed":1}'
    stop_one "$srv"
}

# Smoke: 50 subscribers, 5 messages, on every case.
CASES=()
for kind in $KINDS; do
    CASES+=("$kind-gw")
    [[ -n ${BASE_GATEWAY:-} ]] && CASES+=("$kind-base")
    CASES+=("$kind-nchan")
done
for c in "${CASES[@]}"; do
    measure "${c%-*}" "${c##*-}" 0 0 50 5
    [[ $(jnum "$OUT" missing) == 0 ]] || die "$c: smoke test lost deliveries: $OUT"
done
log "smoke test passed: ${CASES[*]}"

t0=$SECONDS
n=${#CASES[@]}
for ((r = 1; r <= REPS; r++)); do
    for ((k = 0; k < n; k++)); do
        c=${CASES[$(((k + r - 1) % n))]}
        for ((a = 1; a <= 1 + RETRIES; a++)); do
            wait_peers 'bench/(http|ws_passthrough|socketio|php)\.sh'
            quiet=$(wait_quiet)
            others=$(top_others || true)
            measure "${c%-*}" "${c##*-}" "$r" "$((k + 1))" "$SUBS" "$MESSAGES"
            out=$OUT
            ((a <= RETRIES)) && disturbed "$out" || break
            log "rep $r $c: other processes used $(jnum "$out" others_cpu_pct)% of a core during the measurement: measuring again"
        done
        record "${out%\}},\"attempts\":$a}" "$c" "$r" "$((k + 1))" "$quiet" "$others"
        log "rep $r #$((k + 1)) $c: $(jnum "$out" deliveries_per_s) deliveries/s, missing $(jnum "$out" missing), p50 $(jnum "$out" lat_ms_p50) ms, p99 $(jnum "$out" lat_ms_p99) ms, server $(jnum "$out" server_us_per_delivery) us/delivery, client $(jnum "$out" client_cpu_pct)% CPU, $(jnum "$out" rss_per_sub_kib) KiB/sub"
    done
done
MEASURE_S=$((SECONDS - t0))
ELAPSED=$((SECONDS - RUN_START))

# --- report ------------------------------------------------------------------------------------
vals() { # case key
    grep "\"case\":\"$1\"" "$RAW" | while read -r l; do v=$(jnum "$l" "$2"); echo "${v:--}"; done
}
ratios() { # a b key [invert]
    paste <(vals "$1" "$3") <(vals "$2" "$3") |
        awk -v inv="${4:-}" '$1 ~ /^[0-9.]/ && $2 ~ /^[0-9.]/ && $1 > 0 && $2 > 0 { printf "%.2f\n", inv ? $2 / $1 : $1 / $2 }'
}
hit() { awk -v t="$2" '{ print ($1 + 0 >= t ? "hit" : "missed") }' <<<"$1"; }
{
    echo "### Long-poll / SSE run, $TRANSPORT, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- command: \`bash bench/pubsub.sh\` (TLS=$TLS REPS=$REPS SUBS=$SUBS MESSAGES=$MESSAGES LP_WINDOW=$LP_WINDOW SSE_WINDOW=$SSE_WINDOW PAYLOAD=$PAYLOAD HOLD=$HOLD GW_THREADS=$GW_THREADS NGINX_WORKERS=$NGINX_WORKERS); measurements ${MEASURE_S} s, whole script ${ELAPSED} s"
    echo "- client: \`rt-load hub-fanout\` (bench/src/rt_load.rs: raw HTTP/1.1 on tokio, 64 loopback source addresses); servers: gateway $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet 2>/dev/null || echo '+uncommitted changes') \`threads: $GW_THREADS\`, $TRANSPORT; $(nginx -v 2>&1 | sed 's/.*: //') + nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null), \`worker_processes $NGINX_WORKERS\`, $TRANSPORT; a fresh server per measurement"
    [[ -n ${BASE_GATEWAY:-} ]] && echo "- base = BASE_GATEWAY ($BASE_GATEWAY), same config as gw"
    echo
    echo "| case | deliveries/s median | all reps | missing (all reps) | reconnects | p50 ms | p99 ms | server CPU us/delivery median (all) | server CPU % | client CPU % | others CPU % (all) | KiB/subscriber RSS median (all) | PSS median |"
    echo "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|---|---:|"
    for c in "${CASES[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s | %s | %s | %s (%s) | %s |\n' "$c" \
            "$(vals "$c" deliveries_per_s | median | fmt)" "$(vals "$c" deliveries_per_s | all)" \
            "$(vals "$c" missing | sum)" "$(vals "$c" reconnects | sum)" \
            "$(vals "$c" lat_ms_p50 | median | fmt)" "$(vals "$c" lat_ms_p99 | median | fmt)" \
            "$(vals "$c" server_us_per_delivery | median | fmt)" "$(vals "$c" server_us_per_delivery | fmt | all)" \
            "$(vals "$c" server_cpu_pct | median | fmt)" "$(vals "$c" client_cpu_pct | median | fmt)" \
            "$(vals "$c" others_cpu_pct | fmt | all)" \
            "$(vals "$c" rss_per_sub_kib | median | fmt)" "$(vals "$c" rss_per_sub_kib | fmt | all)" \
            "$(vals "$c" pss_per_sub_kib | median | fmt)"
    done
    echo
    echo "| ratio gateway / nchan (within each repetition) | median | all | target |"
    echo "|---|---:|---|---|"
    for kind in $KINDS; do
        m=$(ratios "$kind-gw" "$kind-nchan" deliveries_per_s | median)
        printf '| %s deliveries/s | %s | %s | >= 1.0x: %s |\n' "$kind" "$m" "$(ratios "$kind-gw" "$kind-nchan" deliveries_per_s | all)" "$(hit "$m" 1)"
        printf '| %s nchan CPU / gateway CPU per delivery | %s | %s | |\n' "$kind" "$(ratios "$kind-gw" "$kind-nchan" server_us_per_delivery 1 | median)" "$(ratios "$kind-gw" "$kind-nchan" server_us_per_delivery 1 | all)"
        printf '| %s nchan memory / gateway memory per subscriber (RSS) | %s | %s | |\n' "$kind" "$(ratios "$kind-gw" "$kind-nchan" rss_per_sub_kib 1 | median)" "$(ratios "$kind-gw" "$kind-nchan" rss_per_sub_kib 1 | all)"
        if [[ -n ${BASE_GATEWAY:-} ]]; then
            printf '| %s deliveries/s, gw / base (this tree / BASE_GATEWAY) | %s | %s | |\n' "$kind" "$(ratios "$kind-gw" "$kind-base" deliveries_per_s | median)" "$(ratios "$kind-gw" "$kind-base" deliveries_per_s | all)"
            printf '| %s CPU per delivery, gw / base | %s | %s | |\n' "$kind" "$(ratios "$kind-gw" "$kind-base" server_us_per_delivery | median)" "$(ratios "$kind-gw" "$kind-base" server_us_per_delivery | all)"
            printf '| %s base deliveries/s / nchan | %s | %s | |\n' "$kind" "$(ratios "$kind-base" "$kind-nchan" deliveries_per_s | median)" "$(ratios "$kind-base" "$kind-nchan" deliveries_per_s | all)"
        fi
    done
    echo
    echo "Other processes: during each counted measurement (% of a core, from /proc), and the busiest over 1 s just before it; attempts > 1 = taken again after a disturbed one: $(sed -n 's/.*"others_cpu_pct":\([0-9.]*\).*"attempts":\([0-9]*\),"case":"\([^"]*\)","rep":\([0-9]*\),"pos":[0-9]*,"quiet_pct":\([0-9]*\),"others":"\([^"]*\)".*/rep \4 \3: \1% (attempts \2, before: \5% [\6])/p' "$RAW" | awk '{ $4 = sprintf("%.0f%%", $4) } 1' | paste -sd';' - | sed 's/;/; /g')"
    echo
    echo "Raw (one JSON object per measurement): \`$(basename "$RAW")\`"
} | tee "$REPORT"
log "report: $REPORT (whole script ${ELAPSED} s)"
