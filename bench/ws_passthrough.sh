#!/usr/bin/env bash
# WebSocket passthrough (/cable, tunnelled to the app's echo): the gateway vs nginx alone, with the
# app itself (plain ws) as the ceiling, in ONE run.
#   1. burst: SESSIONS sessions at CONCURRENCY (connect, one echo, close), REPS interleaved
#      repetitions with a rotated order; counts lost sessions; sessions/s; proxy CPU per session.
#   2. idle: IDLE_SESSIONS sessions per target held idle IDLE_SECS, then each must still echo
#      (nginx keeps its DEFAULT proxy_read_timeout of 60 s: that is the point of the comparison).
#      The three targets' idle runs go on at the same time, so this part takes ~IDLE_SECS.
#   0. first, on the fresh servers: memory per idle session (RSS of the proxy, before and with
#      MEM_SESSIONS open idle sessions; the app's own for `direct`).
#
#   bash bench/ws_passthrough.sh                    # from the repo root; ~1.5 min + IDLE_SECS (300) once built
#   IDLE_SECS=90 bash bench/ws_passthrough.sh       # quicker, still past nginx's 60 s
#   SKIP_IDLE=1 bash bench/ws_passthrough.sh        # burst only
#
# Settings (environment): MEM_SESSIONS (1000; 0 skips), SESSIONS (10000), CONCURRENCY (50), REPS (3), IDLE_SESSIONS (20),
# IDLE_SECS (300), SKIP_IDLE, GW_THREADS (2), TIMEOUT_MS per step (5000), QUIET_PCT,
# QUIET_MAX_S, OUT_DIR (bench/results), CARGO_TARGET_DIR.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'log "stopped by an error at line $LINENO: $BASH_COMMAND"' ERR

MEM_SESSIONS=${MEM_SESSIONS:-1000}
SESSIONS=${SESSIONS:-10000}
CONCURRENCY=${CONCURRENCY:-50}
REPS=${REPS:-3}
IDLE_SESSIONS=${IDLE_SESSIONS:-20}
IDLE_SECS=${IDLE_SECS:-300}
SKIP_IDLE=${SKIP_IDLE:-}
GW_THREADS=${GW_THREADS:-2}
TIMEOUT_MS=${TIMEOUT_MS:-5000}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
P_APP=18180 P_GW=18543 P_NGINX=18544

ensure_pkgs nginx:nginx openssl:openssl
build_bins -p gateway -p backend-stub -p bench
for p in $P_APP $P_GW $P_NGINX; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done
need=$((CONCURRENCY * 3 + 3 * IDLE_SESSIONS + 2 * MEM_SESSIONS + 100))
(($(ulimit -n) >= need)) || ulimit -n "$need" 2>/dev/null || die "ulimit -n is $(ulimit -n); need $need"

T=$(mktemp -d /tmp/bench-ws.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/ws-$STAMP.tsv
REPORT=$OUT_DIR/ws-$STAMP.md
make_cert "$T"

start app "$T/app.log" "$BIN/backend-stub" --listen 127.0.0.1:$P_APP --id bench --quiet
wait_port $P_APP
gateway_conf "$T" gw 127.0.0.1:$P_GW 127.0.0.1:$P_APP "$GW_THREADS" cable
RUST_LOG=warn start gw "$T/gw.log" "$BIN/gateway" run --config "$T/gw.yaml"
nginx_conf "$T" nginx 127.0.0.1:$P_NGINX 127.0.0.1:$P_APP yes
start nginx "$T/nginx.out" nginx -p "$T/nginx" -c "$T/nginx.conf"
wait_port $P_GW; wait_port $P_NGINX

TARGETS=(direct gw nginx)
declare -A URL PROXY_PIDS
URL[direct]=ws://127.0.0.1:$P_APP/cable
URL[gw]=wss://127.0.0.1:$P_GW/cable
URL[nginx]=wss://127.0.0.1:$P_NGINX/cable
PROXY_PIDS[direct]="" PROXY_PIDS[gw]=$PID_gw PROXY_PIDS[nginx]=$PID_nginx
ALL_PIDS=$(for e in "${STARTED[@]}"; do printf '%s ' "${e#* }"; done)
WS="$BIN/ws-load --timeout-ms $TIMEOUT_MS"

jnum() { # json key -> number value (flat keys only)
    echo "$1" | sed -n 's/.*"'"$2"'":\([-0-9.eE+]*\).*/\1/p'
}
for t in "${TARGETS[@]}"; do
    out=$($WS --url "${URL[$t]}" --label "$t" burst --sessions 20 --concurrency 2 --max-secs 30 | tail -1)
    [[ $(jnum "$out" lost) == 0 ]] || die "$t (${URL[$t]}) does not echo: $out"
done
log "all targets echo: ${TARGETS[*]}"

RUN_S0=$SECONDS
FACTS=$(machine_facts)
# --- 0. memory per idle session, on the fresh servers ---------------------------------------
MEM_LINES=()
if ((MEM_SESSIONS > 0)); then
    for t in "${TARGETS[@]}"; do
        pids=${PROXY_PIDS[$t]:-$PID_app}
        r0=$(tree_rss_kb $pids)
        $WS --url "${URL[$t]}" --label "$t" idle --sessions "$MEM_SESSIONS" --idle-secs 4 \
            >"$T/mem-$t.json" 2>"$T/mem-$t.err" &
        wl=$!
        for ((i = 0; i < 600; i++)); do # all open within 60 s, or measure what is open
            grep -q 'open and echoing' "$T/mem-$t.err" && break
            sleep 0.1
        done
        sleep 1
        r1=$(tree_rss_kb $pids)
        wait "$wl" || true
        opened=$((MEM_SESSIONS - $(jnum "$(tail -1 "$T/mem-$t.json")" open_failed)))
        MEM_LINES+=("$t $r0 $r1 $opened")
        log "memory $t: RSS $r0 KiB -> $r1 KiB with $opened idle sessions: $(((r1 - r0) / (opened > 0 ? opened : 1))) KiB each"
    done
fi

# --- 1. burst ------------------------------------------------------------------------------
printf 'rep\tpos\ttarget\tsessions\tok\tlost\tclose_unclean\tsecs\tsessions_per_s\topen_echo_ms_p50\topen_echo_ms_p99\tproxy_ticks\tapp_ticks\tclient_ticks\tquiet_pct\tfailures\n' >"$RAW"
burst() { # target rep pos
    local t=$1 out quiet p0 p1 a0 a1 c
    quiet=$(wait_quiet $ALL_PIDS)
    a0=$(tree_ticks "$PID_app"); p0=0; [[ -n ${PROXY_PIDS[$t]} ]] && p0=$(tree_ticks ${PROXY_PIDS[$t]})
    out=$(sh -c 'timeout 400 "$@" >"'"$T"'/burst.json"; cat /proc/$$/stat' sh \
        $WS --url "${URL[$t]}" --label "$t" burst --sessions "$SESSIONS" --concurrency "$CONCURRENCY" --max-secs 300)
    c=$(echo "$out" | awk '{ l = $0; sub(/^.*\) /, "", l); split(l, f, " "); print f[14] + f[15] }')
    p1=0; [[ -n ${PROXY_PIDS[$t]} ]] && p1=$(tree_ticks ${PROXY_PIDS[$t]}); a1=$(tree_ticks "$PID_app")
    out=$(tail -1 "$T/burst.json")
    [[ -n $out ]] || die "ws-load failed on $t"
    local fails
    fails=$(echo "$out" | sed -n 's/.*"failures":{\([^}]*\)}.*/\1/p' | tr -d '"' | tr ',' ' ')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$t" "$SESSIONS" \
        "$(jnum "$out" ok)" "$(jnum "$out" lost)" "$(jnum "$out" close_unclean)" "$(jnum "$out" secs)" \
        "$(jnum "$out" sessions_per_s)" "$(jnum "$out" open_echo_ms_p50)" "$(jnum "$out" open_echo_ms_p99)" \
        $((p1 - p0)) $((a1 - a0)) "$c" "$quiet" "$fails" >>"$RAW"
    log "rep $2 #$3 $t: $(jnum "$out" ok) ok, $(jnum "$out" lost) lost, $(jnum "$out" sessions_per_s) sessions/s [$fails]"
}

START_S=$SECONDS
n=${#TARGETS[@]}
for ((r = 1; r <= REPS; r++)); do
    for ((k = 0; k < n; k++)); do
        burst "${TARGETS[$(((k + r - 1) % n))]}" "$r" "$((k + 1))"
    done
done
BURST_S=$((SECONDS - START_S))

# --- 2. idle -------------------------------------------------------------------------------
IDLE_LINES=()
if [[ -z $SKIP_IDLE ]]; then
    log "idle: $IDLE_SESSIONS sessions per target held ${IDLE_SECS} s (all targets at once)"
    for t in "${TARGETS[@]}"; do
        timeout $((IDLE_SECS + 120)) $WS --url "${URL[$t]}" --label "$t" idle --sessions "$IDLE_SESSIONS" \
            --idle-secs "$IDLE_SECS" >"$T/idle-$t.json" 2>"$T/idle-$t.err" &
    done
    wait
    for t in "${TARGETS[@]}"; do
        IDLE_LINES+=("$t $(tail -1 "$T/idle-$t.json")")
        log "idle $t: $(tail -1 "$T/idle-$t.json")"
    done
fi
ELAPSED=$((SECONDS - RUN_S0))

# --- report --------------------------------------------------------------------------------
col() {
    awk -F'\t' -v t="$1" -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { print $k }' "$RAW"
}
us_per() { # target ticks-column -> microseconds per session
    awk -F'\t' -v t="$1" -v c="$2" -v hz="$CLK_TCK" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { printf "%.1f\n", $k * 1000000 / hz / ($4 > 0 ? $4 : 1) }' "$RAW"
}
all() { paste -sd' ' - | sed 's/ /, /g'; }
ratio_per_rep() { # a b column
    awk -F'\t' -v a="$1" -v b="$2" -v c="$3" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == a { x[$1] = $k } $3 == b { y[$1] = $k }
        END { for (r in x) if ((r in y) && y[r] > 0) printf "%d %.3f\n", r, x[r] / y[r] }' "$RAW" | sort -n | awk '{ print $2 }'
}
{
    echo "# WebSocket passthrough /cable — $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- client: ws-load (bench/src/ws_load.rs; tokio-tungstenite + rustls, TLS resumption on, certificate not verified), per-step timeout ${TIMEOUT_MS} ms"
    echo "- targets: direct = backend-stub's /cable echo, plain ws (the ceiling); gw = gateway \`threads: $GW_THREADS\` wss -> tunnel -> app; nginx = nginx alone wss -> app (default proxy_read_timeout 60 s)"
    echo "- burst: $SESSIONS sessions at concurrency $CONCURRENCY, $REPS repetitions, order rotated; took ${BURST_S} s. Whole run (memory, burst, idle; servers up, build done) ${ELAPSED} s."
    echo
    echo "| target | lost (all reps) | close unclean | sessions/s median | sessions/s all | open+echo p50 ms | p99 ms | proxy CPU us/session (all) | app CPU us/session |"
    echo "|---|---|---:|---:|---|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %s of %s | %s | %s | %s | %s | %s | %s (%s) | %s |\n' "$t" \
            "$(col "$t" lost | awk '{ s += $1 } END { print s }')" "$((SESSIONS * REPS))" \
            "$(col "$t" close_unclean | awk '{ s += $1 } END { print s }')" \
            "$(col "$t" sessions_per_s | median)" "$(col "$t" sessions_per_s | all)" \
            "$(col "$t" open_echo_ms_p50 | median)" "$(col "$t" open_echo_ms_p99 | median)" \
            "$(us_per "$t" proxy_ticks | median)" "$(us_per "$t" proxy_ticks | all)" "$(us_per "$t" app_ticks | median)"
    done
    echo
    echo "| ratio (within each repetition) | median | all |"
    echo "|---|---:|---|"
    printf '| gw / nginx sessions/s | %s | %s |\n' "$(ratio_per_rep gw nginx sessions_per_s | median)" "$(ratio_per_rep gw nginx sessions_per_s | all)"
    printf '| gw / direct sessions/s | %s | %s |\n' "$(ratio_per_rep gw direct sessions_per_s | median)" "$(ratio_per_rep gw direct sessions_per_s | all)"
    printf '| nginx CPU / gw CPU per session | %s | %s |\n' "$(ratio_per_rep nginx gw proxy_ticks | median)" "$(ratio_per_rep nginx gw proxy_ticks | all)"
    echo
    fk=$(awk -F'\t' 'NR > 1 && ($6 > 0 || $7 > 0) { printf "rep %s %s: %s; ", $1, $3, $16 }' "$RAW")
    echo "Failure kinds per measurement: ${fk:-none}"
    if ((${#MEM_LINES[@]})); then
        echo
        echo "Memory per idle session, fresh servers, $MEM_SESSIONS sessions (proxy RSS; for direct, the app's):"
        echo
        echo "| target | RSS before KiB | RSS with sessions KiB | KiB per session |"
        echo "|---|---:|---:|---:|"
        for line in "${MEM_LINES[@]}"; do
            read -r t r0 r1 opened <<<"$line"
            printf '| %s | %s | %s | %s |\n' "$t" "$r0" "$r1" \
                "$(awk -v a="$r0" -v b="$r1" -v n="$opened" 'BEGIN { printf "%.1f", (b - a) / (n > 0 ? n : 1) }')"
        done
    fi
    if ((${#IDLE_LINES[@]})); then
        echo
        echo "Idle: $IDLE_SESSIONS sessions per target, one echo each, then ${IDLE_SECS} s without a frame, then one echo each."
        echo
        echo "| target | opened | alive after ${IDLE_SECS} s | died | died at (s after the idle start) |"
        echo "|---|---:|---:|---:|---|"
        for line in "${IDLE_LINES[@]}"; do
            t=${line%% *} j=${line#* }
            died_at=$(echo "$j" | sed -n 's/.*"died_at_s":\[\([^]]*\)\].*/\1/p')
            printf '| %s | %s | %s | %s | %s |\n' "$t" "$((IDLE_SESSIONS - $(jnum "$j" open_failed)))" \
                "$(jnum "$j" alive_after_idle)" "$(jnum "$j" died)" "${died_at:-none}"
        done
    fi
    echo
    echo "Raw: $RAW"
} | tee "$REPORT"
log "report: $REPORT (whole run ${ELAPSED} s)"
