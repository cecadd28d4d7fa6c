#!/usr/bin/env bash
# HTTPS keep-alive GET /ping: the gateway vs nginx alone vs the classic chain
# (stunnel -> HAProxy -> nginx), with the app (backend-stub, plain HTTP) as the ceiling.
# Also large answers (REQ_PATH=/bytes/1048576) and a full TLS handshake per request (NEW_CONN=yes).
# All measured in ONE run, interleaved repetitions with a rotated order; medians + all values.
#
#   bash bench/http.sh                       # from the repo root; ~8 min once built (cold build ~6-11 min)
#   REPS=3 DURATION=5 bash bench/http.sh     # quicker look
#
# Settings (environment): REPS (5), DURATION s per measurement (10), CONNS wrk connections (64),
# WRK_THREADS (2), GW_THREADS gateway `threads:` variants measured side by side ("2 1"; "2s" is
# `threads: 2` with `work_stealing: true`, "2n" with `false`, a bare number the binary's default),
# BASE_GATEWAY (a gateway binary of an earlier commit, measured as `base-tN` beside `gw-tN` with
# the first GW_THREADS value: "is this change slower?" read within one run),
# COUNT_S (seconds of the extra pass per target that counts syscalls and context switches under
# `perf stat`, kept apart so its overhead is not in the CPU figures; 0 skips it; default 5),
# QUIET_PCT / QUIET_MAX_S (wait for other processes < 25% of a core, at most 60 s), PORT_OFFSET (0),
# OUT_DIR (bench/results), CARGO_TARGET_DIR (release binaries are built there), REQ_PATH (the app
# path asked for; default /ping, a 10-byte answer; /bytes/N answers N bytes), NEW_CONN (yes: every
# request on a new connection, `Connection: close`, so each costs a full TLS handshake: wrk
# resumes no session; default no, keep-alive).
# Needs: cargo; installs nginx, stunnel4, haproxy, wrk with apt-get when missing.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'log "stopped by an error at line $LINENO: $BASH_COMMAND"' ERR

REPS=${REPS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
GW_THREADS=${GW_THREADS:-"2 1"}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
COUNT_S=${COUNT_S:-5}
REQ_PATH=${REQ_PATH:-/ping}
NEW_CONN=${NEW_CONN:-no}
[[ $REQ_PATH == /* ]] || die "REQ_PATH must start with /"
WRK_HEADER=()
[[ $NEW_CONN == yes ]] && WRK_HEADER=(-H "Connection: close")
# PORT_OFFSET moves every port (e.g. 1000) when something else holds these.
o=${PORT_OFFSET:-0}
P_APP=$((18080 + o)) P_GW=$((18443 + o)) P_NGINX=$((18444 + o)) P_STUNNEL=$((18445 + o))
P_HAPROXY=$((18446 + o)) P_NGINX2=$((18447 + o)) P_PINGORA=$((18448 + o))

ensure_pkgs nginx:nginx stunnel4:stunnel4 haproxy:haproxy wrk:wrk curl:curl openssl:openssl
build_bins -p gateway -p backend-stub -p bench
build_stock_pingora
for p in $P_APP $P_NGINX $P_STUNNEL $P_HAPROXY $P_NGINX2 $P_PINGORA $((P_GW)) $((P_GW + 10)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done

T=$(mktemp -d /tmp/bench-http.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/http-$STAMP.tsv
REPORT=$OUT_DIR/http-$STAMP.md
make_cert "$T"

# --- servers -------------------------------------------------------------------------------
start app "$T/app.log" "$BIN/backend-stub" --listen 127.0.0.1:$P_APP --id bench --quiet
wait_port $P_APP

# Gateway variants: `threads: N` each on its own port (18443, 18453, ...), all -> the same app.
declare -A URL PROXY_PIDS
TARGETS=(direct)
URL[direct]=http://127.0.0.1:$P_APP$REQ_PATH
i=0
for n in $GW_THREADS; do
    port=$((P_GW + 10 * i))
    gateway_conf "$T" "gw-t$n" 127.0.0.1:$port 127.0.0.1:$P_APP "$n"
    RUST_LOG=warn start "gw_t$n" "$T/gw-t$n.log" "$BIN/gateway" run --config "$T/gw-t$n.yaml"
    wait_port $port
    TARGETS+=("gw-t$n")
    URL[gw-t$n]=https://localhost:$port$REQ_PATH
    eval "PROXY_PIDS[gw-t$n]=\$PID_gw_t$n"
    i=$((i + 1))
done
if [[ -n ${BASE_GATEWAY:-} ]]; then
    [[ -x $BASE_GATEWAY ]] || die "BASE_GATEWAY=$BASE_GATEWAY is not an executable"
    n=${GW_THREADS%% *}
    port=$((P_GW + 100))
    gateway_conf "$T" "base-t$n" 127.0.0.1:$port 127.0.0.1:$P_APP "$n"
    RUST_LOG=warn start "base_t$n" "$T/base-t$n.log" "$BASE_GATEWAY" run --config "$T/base-t$n.yaml"
    wait_port $port
    TARGETS+=("base-t$n")
    URL[base-t$n]=https://localhost:$port$REQ_PATH
    eval "PROXY_PIDS[base-t$n]=\$PID_base_t$n"
fi

# Stock pingora: the smallest ProxyHttp (bench/stock-pingora), threads as the first gw-tN.
n=${GW_THREADS%% *}
n=${n%[ns]}
start pingora "$T/pingora.log" "$BIN/stock-pingora" --listen 127.0.0.1:$P_PINGORA --upstream 127.0.0.1:$P_APP \
    --cert "$T/cert.pem" --key "$T/key.pem" --threads "$n"
wait_port $P_PINGORA
TARGETS+=(pingora)
URL[pingora]=https://localhost:$P_PINGORA$REQ_PATH
PROXY_PIDS[pingora]=$PID_pingora

nginx_conf "$T" nginx 127.0.0.1:$P_NGINX 127.0.0.1:$P_APP yes
start nginx "$T/nginx.out" nginx -p "$T/nginx" -c "$T/nginx.conf"
wait_port $P_NGINX
TARGETS+=(nginx)
URL[nginx]=https://localhost:$P_NGINX$REQ_PATH
PROXY_PIDS[nginx]=$PID_nginx

# The classic chain: stunnel (TLS) -> HAProxy (http mode) -> nginx (proxy) -> app.
nginx_conf "$T" nginx2 127.0.0.1:$P_NGINX2 127.0.0.1:$P_APP no
start nginx2 "$T/nginx2.out" nginx -p "$T/nginx2" -c "$T/nginx2.conf"
cat >"$T/haproxy.cfg" <<EOF
global
    maxconn 9000
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$P_HAPROXY
    default_backend be
backend be
    http-reuse safe
    server nginx 127.0.0.1:$P_NGINX2
EOF
start haproxy "$T/haproxy.log" haproxy -db -f "$T/haproxy.cfg"
cat >"$T/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
[https]
accept = 127.0.0.1:$P_STUNNEL
connect = 127.0.0.1:$P_HAPROXY
cert = $T/cert.pem
key = $T/key.pem
EOF
start stunnel "$T/stunnel.log" stunnel "$T/stunnel.conf"
wait_port $P_NGINX2; wait_port $P_HAPROXY; wait_port $P_STUNNEL
TARGETS+=(chain)
URL[chain]=https://localhost:$P_STUNNEL$REQ_PATH
PROXY_PIDS[chain]="$PID_stunnel $PID_haproxy $PID_nginx2"
PROXY_PIDS[direct]=""

ALL_PIDS=$(for e in "${STARTED[@]}"; do printf '%s ' "${e#* }"; done)
# Every front must answer what the app answers (for /ping, "PONG. EOM."), byte for byte.
answer() { curl -sk --max-time 10 "$1" | sha256sum | cut -d' ' -f1; }
expected=$(answer "${URL[direct]}")
[[ $REQ_PATH != /ping || $(curl -s --max-time 5 "${URL[direct]}") == "PONG. EOM." ]] ||
    die "the app answered /ping with something else than 'PONG. EOM.'"
for t in "${TARGETS[@]}"; do
    [[ $(answer "${URL[$t]}") == "$expected" ]] ||
        die "$t (${URL[$t]}) answered $(curl -sk --max-time 10 "${URL[$t]}" | wc -c) bytes that are not the app's answer"
done
log "all ${#TARGETS[@]} targets answer: ${TARGETS[*]}"

# --- measurement ---------------------------------------------------------------------------
to_ms() { # wrk latency like 612.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
        else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

run_wrk() { # url seconds outfile -> prints wrk's CPU ticks
    # sh's own stat gives its waited-for child's CPU (wrk's); arguments after the outfile go to wrk.
    sh -c 'out=$1; shift; timeout '"$(($2 + 30))"' wrk -t'"$WRK_THREADS"' -c'"$CONNS"' -d'"$2"'s --latency "$@" "$0" >"$out" 2>&1; cat /proc/$$/stat' \
        "$1" "$3" "${WRK_HEADER[@]}" | awk '{ l = $0; sub(/^.*\) /, "", l); split(l, f, " "); print f[14] + f[15] }'
}

printf 'rep\tpos\ttarget\trps\tp50_ms\tp99_ms\terrors\trequests\tproxy_ticks\tapp_ticks\twrk_ticks\tother_ticks\tquiet_pct\n' >"$RAW"

measure() { # target rep pos
    local t=$1 out="$T/wrk-$1-$2.txt" quiet b0 b1 p0 p1 a0 a1 w rps req p50 p99 errs non2xx
    quiet=$(wait_quiet $ALL_PIDS)
    b0=$(machine_busy); a0=$(tree_ticks "$PID_app")
    p0=0; [[ -n ${PROXY_PIDS[$t]} ]] && p0=$(tree_ticks ${PROXY_PIDS[$t]})
    w=$(run_wrk "${URL[$t]}" "$DURATION" "$out")
    p1=0; [[ -n ${PROXY_PIDS[$t]} ]] && p1=$(tree_ticks ${PROXY_PIDS[$t]})
    a1=$(tree_ticks "$PID_app"); b1=$(machine_busy)
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    req=$(awk '/requests in/ { print $1 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errs=$(awk '/Socket errors/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$out")
    errs=$((${errs:-0} + ${non2xx:-0}))
    [[ -n $rps && -n $req ]] || { cat "$out" >&2; die "wrk failed on $t"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$t" "$rps" "$p50" "$p99" \
        "$errs" "$req" $((p1 - p0)) $((a1 - a0)) "$w" $(((b1 - b0) - (p1 - p0) - (a1 - a0) - w)) "$quiet" >>"$RAW"
    log "rep $2 #$3 $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $errs, proxy CPU $(((p1 - p0) * 1000000 / CLK_TCK / (req > 0 ? req : 1))) us/req"
}

FACTS=$(machine_facts)
START_S=$SECONDS
log "warm-up: 3 s on each target"
for t in "${TARGETS[@]}"; do run_wrk "${URL[$t]}" 3 "$T/warm.txt" >/dev/null; done
n=${#TARGETS[@]}
for ((r = 1; r <= REPS; r++)); do
    for ((k = 0; k < n; k++)); do
        measure "${TARGETS[$(((k + r - 1) % n))]}" "$r" "$((k + 1))"
    done
done
ELAPSED=$((SECONDS - START_S))

# --- syscalls and context switches per request: a separate pass under `perf stat` -----------
# Counting every syscall costs the counted process a little, so it is not done during the
# measured repetitions above; one COUNT_S-second wrk run per target here, same load.
printf 'target\trequests\tsyscalls\tcswitches\n' >"$RAW.counts"
if ((COUNT_S > 0)) && perf stat -e raw_syscalls:sys_enter,context-switches -- true >/dev/null 2>&1; then
    for t in "${TARGETS[@]}"; do
        [[ -n ${PROXY_PIDS[$t]} ]] || continue
        wait_quiet $ALL_PIDS >/dev/null
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(tree_pids ${PROXY_PIDS[$t]})" \
            -o "$T/perf-$t.csv" &
        perf_pid=$!
        sleep 0.3
        run_wrk "${URL[$t]}" "$COUNT_S" "$T/wrk-count-$t.txt" >/dev/null
        kill -INT "$perf_pid"; wait "$perf_pid" || true
        req=$(awk '/requests in/ { print $1 }' "$T/wrk-count-$t.txt")
        sc=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$T/perf-$t.csv")
        cs=$(awk -F, '$3 == "context-switches" { print $1 }' "$T/perf-$t.csv")
        printf '%s\t%s\t%s\t%s\n' "$t" "${req:-0}" "${sc:-0}" "${cs:-0}" >>"$RAW.counts"
        log "counts $t: $req requests, $sc syscalls, $cs context switches"
    done
else
    log "perf stat with the raw_syscalls tracepoint is not available (or COUNT_S=0): no syscall counts"
fi

# --- report --------------------------------------------------------------------------------
col() { # target column-name -> values of that column for the target, in rep order
    awk -F'\t' -v t="$1" -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { print $k }' "$RAW"
}
us_per_req() { # target ticks-column
    awk -F'\t' -v t="$1" -v c="$2" -v hz="$CLK_TCK" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { printf "%.1f\n", $k * 1000000 / hz / ($8 > 0 ? $8 : 1) }' "$RAW"
}
all() { paste -sd' ' - | sed 's/ /, /g'; }
ratio_per_rep() { # a b column -> a/b per rep (for cpu: b/a, i.e. how many times less CPU a uses)
    awk -F'\t' -v a="$1" -v b="$2" -v c="$3" -v hz="$CLK_TCK" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        { v = (c == "rps") ? $k : $k / ($8 > 0 ? $8 : 1) }
        $3 == a { x[$1] = v } $3 == b { y[$1] = v }
        END { for (r in x) if ((r in y) && y[r] > 0 && x[r] > 0) printf "%d %.3f\n", r, (c == "rps") ? x[r] / y[r] : y[r] / x[r] }' "$RAW" |
        sort -n | awk '{ print $2 }'
}
{
    if [[ $NEW_CONN == yes ]]; then mode="GET $REQ_PATH, a new connection (full TLS handshake) per request"; else mode="keep-alive GET $REQ_PATH"; fi
    echo "# HTTPS $mode — $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- client: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency${WRK_HEADER[*]:+ -H \"${WRK_HEADER[1]}\"}; $REPS repetitions, order rotated each repetition; measured part took ${ELAPSED} s"
    echo "- versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(stunnel -version 2>&1 | grep -m1 '^stunnel' | cut -d' ' -f1-2), gateway $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet 2>/dev/null || echo '+uncommitted changes')"
    [[ -n ${BASE_GATEWAY:-} ]] && echo "- base-tN = BASE_GATEWAY ($BASE_GATEWAY, $("$BASE_GATEWAY" --version 2>/dev/null || echo 'version unknown')), same config as gw-tN"
    echo "- targets: direct = backend-stub plain HTTP (the ceiling); gw-tN = gateway \`threads: N\` (TLS) -> app; pingora = stock pingora 0.9.1, the smallest ProxyHttp (bench/stock-pingora, registry crates unpatched; rustls, jemalloc, threads ${GW_THREADS%% *}) -> app; nginx = nginx alone (TLS) -> app; chain = stunnel (TLS) -> HAProxy -> nginx -> app"
    echo "- proxy CPU = utime+stime of the proxy processes (gateway | nginx master+workers | stunnel+HAProxy+nginx), per request; app CPU = backend-stub's, per request"
    echo
    echo "| target | req/s median | req/s all | p50 ms | p99 ms | proxy CPU us/req | app CPU us/req | errors |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s (%s) | %s | %s |\n' "$t" \
            "$(col "$t" rps | median)" "$(col "$t" rps | all)" \
            "$(col "$t" p50_ms | median)" "$(col "$t" p99_ms | median)" \
            "$(us_per_req "$t" proxy_ticks | median)" "$(us_per_req "$t" proxy_ticks | all)" \
            "$(us_per_req "$t" app_ticks | median)" \
            "$(col "$t" errors | awk '{ s += $1 } END { print s }')"
    done
    echo
    echo "Ratios, computed within each repetition (median, then all):"
    echo
    echo "| ratio | median | all repetitions |"
    echo "|---|---:|---|"
    for t in "${TARGETS[@]}"; do
        [[ $t == gw-* ]] || continue
        for peer in pingora chain nginx direct; do
            printf '| %s / %s req/s | %s | %s |\n' "$t" "$peer" "$(ratio_per_rep "$t" $peer rps | median)" "$(ratio_per_rep "$t" $peer rps | all)"
        done
        for peer in pingora chain nginx; do
            printf '| %s CPU/req / %s CPU/req (x less CPU) | %s | %s |\n' "$peer" "$t" "$(ratio_per_rep "$t" $peer proxy_ticks | median)" "$(ratio_per_rep "$t" $peer proxy_ticks | all)"
        done
    done
    if [[ -n ${BASE_GATEWAY:-} ]]; then
        n=${GW_THREADS%% *}
        printf '| gw-t%s / base-t%s req/s (this tree / BASE_GATEWAY) | %s | %s |\n' "$n" "$n" "$(ratio_per_rep "gw-t$n" "base-t$n" rps | median)" "$(ratio_per_rep "gw-t$n" "base-t$n" rps | all)"
        printf '| base-t%s CPU/req / gw-t%s CPU/req (x less CPU) | %s | %s |\n' "$n" "$n" "$(ratio_per_rep "gw-t$n" "base-t$n" proxy_ticks | median)" "$(ratio_per_rep "gw-t$n" "base-t$n" proxy_ticks | all)"
    fi
    printf '| nginx / chain req/s | %s | %s |\n' "$(ratio_per_rep nginx chain rps | median)" "$(ratio_per_rep nginx chain rps | all)"
    printf '| nginx CPU/req / pingora CPU/req (x less CPU) | %s | %s |\n' "$(ratio_per_rep pingora nginx proxy_ticks | median)" "$(ratio_per_rep pingora nginx proxy_ticks | all)"
    echo
    if [[ $(wc -l <"$RAW.counts") -gt 1 ]]; then
        echo "Syscalls and context switches per request, all processes of each front (one ${COUNT_S} s pass each under \`perf stat\`, after the measured repetitions):"
        echo
        echo "| target | requests | syscalls/req | context switches/req |"
        echo "|---|---:|---:|---:|"
        awk -F'\t' 'NR > 1 { r = ($2 > 0 ? $2 : 1); printf "| %s | %d | %.2f | %.2f |\n", $1, $2, $3 / r, $4 / r }' "$RAW.counts"
        echo
    fi
    echo "Other processes' CPU during each measurement (ticks of ${CLK_TCK}/s, machine busy minus servers minus wrk): $(col gw-t2 other_ticks 2>/dev/null | all) (gw-t2 rows; all rows in the TSV)."
    echo "wrk's own CPU, median share of the machine: $(awk -F'\t' -v d="$DURATION" -v hz="$CLK_TCK" -v np="$NPROC" 'NR > 1 { printf "%.0f\n", $11 * 100 / hz / d / np }' "$RAW" | median)%."
    echo "Raw: $RAW"
} | tee "$REPORT"
log "report: $REPORT (measured part ${ELAPSED} s)"
