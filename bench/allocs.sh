#!/usr/bin/env bash
# Heap allocations per small keep-alive HTTPS request (GET /ping): the gateway, an earlier
# gateway (BASE_GATEWAY) and stock pingora's smallest proxy, each counted exactly with perf
# uprobes on jemalloc's entry points (malloc, mallocx, realloc, rallocx, calloc) in its own
# binary. Counts, not timings: the machine's load does not change them.
#
#   bash bench/allocs.sh                                   # from the repo root
#   BASE_GATEWAY=/path/to/old/gateway REPS=2 bash bench/allocs.sh
#
# Settings (environment): REPS (2), DURATION s per count (3), CONNS (8; each makes one TLS
# handshake, included in the count), BASE_GATEWAY, STOCK_PINGORA (the control's binary;
# default: built as bench/http.sh builds it), OUT_DIR (bench/results), PORT_OFFSET (0).
# Needs: perf with uprobes (root), wrk, openssl; cargo to build.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'log "stopped by an error at line $LINENO: $BASH_COMMAND"' ERR

REPS=${REPS:-2}
DURATION=${DURATION:-3}
CONNS=${CONNS:-8}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
o=${PORT_OFFSET:-0}
P_APP=$((28080 + o)) P_GW=$((28443 + o)) P_BASE=$((28444 + o)) P_PINGORA=$((28445 + o))

ensure_pkgs wrk:wrk perf:linux-perf openssl:openssl
build_bins -p gateway -p backend-stub -p bench
[[ -n ${STOCK_PINGORA:-} ]] || build_stock_pingora
STOCK_PINGORA=${STOCK_PINGORA:-$BIN/stock-pingora}
[[ -x $STOCK_PINGORA ]] || die "no stock pingora binary at $STOCK_PINGORA"

T=$(mktemp -d /tmp/bench-allocs.XXXXXX)
trap 'stop_all; perf probe -q -d "bench_allocs_*:*" 2>/dev/null || true; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/allocs-$(date +%Y%m%d-%H%M%S).md
make_cert "$T"

start app "$T/app.log" "$BIN/backend-stub" --listen 127.0.0.1:$P_APP --id bench --quiet
wait_port $P_APP

declare -A URL PID_OF EXE
TARGETS=(gw)
gateway_conf "$T" gw 127.0.0.1:$P_GW 127.0.0.1:$P_APP 2
RUST_LOG=warn start gw "$T/gw.log" "$BIN/gateway" run --config "$T/gw.yaml"
URL[gw]=https://localhost:$P_GW/ping EXE[gw]=$BIN/gateway PID_OF[gw]=$PID_gw
if [[ -n ${BASE_GATEWAY:-} ]]; then
    gateway_conf "$T" base 127.0.0.1:$P_BASE 127.0.0.1:$P_APP 2
    RUST_LOG=warn start base "$T/base.log" "$BASE_GATEWAY" run --config "$T/base.yaml"
    TARGETS+=(base)
    URL[base]=https://localhost:$P_BASE/ping EXE[base]=$BASE_GATEWAY PID_OF[base]=$PID_base
fi
start pingora "$T/pingora.log" "$STOCK_PINGORA" --listen 127.0.0.1:$P_PINGORA \
    --upstream 127.0.0.1:$P_APP --cert "$T/cert.pem" --key "$T/key.pem" --threads 2
TARGETS+=(pingora)
URL[pingora]=https://localhost:$P_PINGORA/ping EXE[pingora]=$STOCK_PINGORA PID_OF[pingora]=$PID_pingora
wait_port $P_GW
[[ -n ${BASE_GATEWAY:-} ]] && wait_port $P_BASE
wait_port $P_PINGORA

ENTRIES=(malloc mallocx realloc rallocx calloc)
declare -A EVENTS
for t in "${TARGETS[@]}"; do
    group=bench_allocs_$t events=""
    for f in "${ENTRIES[@]}"; do
        perf probe -q -x "${EXE[$t]}" --add "$group:${t}_$f=_rjem_$f" || die "perf probe on _rjem_$f in ${EXE[$t]} failed (a jemalloc build?)"
        events+="$group:${t}_$f,"
    done
    EVENTS[$t]=${events%,}
done

declare -A PER_REQ
for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
        wrk -t1 -c"$CONNS" -d1s "${URL[$t]}" >/dev/null 2>&1 # warm: pool, sessions
        out=$(perf stat -x, -e "${EVENTS[$t]}" -p "${PID_OF[$t]}" -- \
            wrk -t1 -c"$CONNS" -d"${DURATION}s" "${URL[$t]}" 2>&1)
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        allocs=$(echo "$out" | awk -F, -v g="bench_allocs_$t:" 'index($0, g) {s += $1} END {print s + 0}')
        [[ ${reqs:-0} -gt 0 ]] || die "$t: wrk made no requests: $out"
        per=$(awk -v a="$allocs" -v r="$reqs" 'BEGIN {printf "%.1f", a / r}')
        log "rep $rep $t: $allocs allocations / $reqs requests = $per"
        PER_REQ[$t]="${PER_REQ[$t]:-} $per"
    done
done

{
    echo "# Allocations per request, $(date -u +%FT%TZ)"
    echo
    echo "\`bash bench/allocs.sh\`, REPS=$REPS DURATION=$DURATION CONNS=$CONNS (\`wrk -t1 -c$CONNS\`, one TLS handshake per connection counted in)"
    machine_facts
    echo "- gw: $("$BIN/gateway" --version 2>/dev/null || echo gateway) ($(git -C "$REPO" rev-parse --short HEAD))"
    [[ -n ${BASE_GATEWAY:-} ]] && echo "- base: $BASE_GATEWAY"
    echo "- pingora: $STOCK_PINGORA"
    echo
    echo "| target | allocations per request (every repetition) |"
    echo "|---|---|"
    for t in "${TARGETS[@]}"; do echo "| $t |${PER_REQ[$t]} |"; done
} | tee "$REPORT"
log "report: $REPORT"
