#!/usr/bin/env bash
# PHP behind a TLS front: GET /hello of examples/php (its front controller, public/index.php)
# through the gateway (a `protocol: fastcgi` pool) and through nginx (`fastcgi_pass`), both to
# the SAME php-fpm pool, both over TLS with the same certificate. Measured in ONE run,
# interleaved repetitions with a rotated order; medians + all values.
#
#   bash bench/php.sh                        # from the repo root; ~4 min once built
#   REPS=3 DURATION=5 bash bench/php.sh      # quicker look
#
# Settings (environment): REPS (5), DURATION s per measurement (10), CONNS wrk connections (64),
# WRK_THREADS (2), GW_THREADS gateway `threads:` variants measured side by side ("2"),
# BASE_GATEWAY (a gateway binary of an earlier commit, measured as `base-tN` beside `gw-tN` with
# the first GW_THREADS value and the same config: "is this change slower?" read within one run),
# PM_CHILDREN php-fpm static pool size (4), QUIET_PCT / QUIET_MAX_S (wait for other processes
# < 25% of a core, at most 60 s), OUT_DIR (bench/results), CARGO_TARGET_DIR.
# Needs: cargo; installs nginx, php-fpm, wrk, curl, openssl with apt-get when missing.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'log "stopped by an error at line $LINENO: $BASH_COMMAND"' ERR

REPS=${REPS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
GW_THREADS=${GW_THREADS:-2}
PM_CHILDREN=${PM_CHILDREN:-4}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
# PORT_OFFSET moves every port (e.g. 1000) when something else holds these.
P_GW=$((19443 + ${PORT_OFFSET:-0})) P_NGINX=$((19444 + ${PORT_OFFSET:-0}))
DOCROOT=$REPO/examples/php/public

ensure_pkgs nginx:nginx wrk:wrk curl:curl openssl:openssl
FPM=$(compgen -G '/usr/sbin/php-fpm*' | sort | tail -n 1 || true)
if [[ -z $FPM ]]; then
    ensure_pkgs php-fpm:php-fpm
    FPM=$(compgen -G '/usr/sbin/php-fpm*' | sort | tail -n 1 || true)
    [[ -n $FPM ]] || die "php-fpm installed but not found in /usr/sbin"
fi
build_bins -p gateway -p backend-stub -p bench
i=0
for n in $GW_THREADS; do
    p=$((P_GW + 10 * i))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
    i=$((i + 1))
done
(exec 3<>"/dev/tcp/127.0.0.1/$P_NGINX") 2>/dev/null && die "port $P_NGINX is already in use"

T=$(mktemp -d /tmp/bench-php.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$OUT_DIR/php-$STAMP.tsv
REPORT=$OUT_DIR/php-$STAMP.md
make_cert "$T"

# --- php-fpm: one static pool on a Unix socket, shared by both fronts --------------------------
# The example's pool (examples/php/php-fpm.conf) with `pm = static`: a fixed number of workers,
# so neither front gets a pool warmed up (or spawned on demand) differently from the other.
fpm_user=""
[[ $(id -u) -eq 0 ]] && fpm_user="user = root
group = root"
fpm_extra=()
[[ $(id -u) -eq 0 ]] && fpm_extra=(-R)
cat >"$T/php-fpm.conf" <<FPM
[global]
error_log = $T/php-fpm.log
daemonize = no
pid = $T/php-fpm.pid

[app]
$fpm_user
listen = $T/php-fpm.sock
listen.mode = 0600
listen.backlog = 511
pm = static
pm.max_children = $PM_CHILDREN
catch_workers_output = yes
FPM
start fpm "$T/fpm.out" "$FPM" -F -y "$T/php-fpm.conf" -p "$T" "${fpm_extra[@]}"
for ((k = 0; k < 100; k++)); do [[ -S $T/php-fpm.sock ]] && break; sleep 0.05; done
[[ -S $T/php-fpm.sock ]] || { cat "$T/fpm.out" "$T/php-fpm.log" >&2 2>/dev/null; die "php-fpm did not start"; }

# --- the gateway: https listener, a fastcgi pool, the example's route (a static file, else PHP)
declare -A URL PROXY_PIDS
TARGETS=()
gw_yaml() { # file port threads
    cat >"$1" <<YAML
listen:
  https: 127.0.0.1:$2
tls:
  certificates:
    - cert: $T/cert.pem
      key: $T/key.pem
upstreams:
  php:
    protocol: fastcgi
    servers: ["unix:$T/php-fpm.sock"]
    fastcgi: {root: $DOCROOT, index: index.php, front_controller: /index.php}
    read_timeout_ms: 30000
routes:
  - path: /
    static: {root: $DOCROOT}
    upstream: php
threads: $3
grace_period_s: 1
YAML
}
i=0
for n in $GW_THREADS; do
    port=$((P_GW + 10 * i))
    gw_yaml "$T/gw-t$n.yaml" "$port" "$n"
    "$BIN/gateway" check --config "$T/gw-t$n.yaml" >/dev/null || die "gateway check failed for $T/gw-t$n.yaml"
    RUST_LOG=warn start "gw_t$n" "$T/gw-t$n.log" "$BIN/gateway" run --config "$T/gw-t$n.yaml"
    wait_port "$port"
    TARGETS+=("gw-t$n")
    URL[gw-t$n]=https://localhost:$port/hello
    eval "PROXY_PIDS[gw-t$n]=\$PID_gw_t$n"
    i=$((i + 1))
done
if [[ -n ${BASE_GATEWAY:-} ]]; then
    [[ -x $BASE_GATEWAY ]] || die "BASE_GATEWAY=$BASE_GATEWAY is not an executable"
    n=${GW_THREADS%% *}
    port=$((P_GW + 100))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is already in use"
    gw_yaml "$T/base-t$n.yaml" "$port" "$n"
    RUST_LOG=warn start "base_t$n" "$T/base-t$n.log" "$BASE_GATEWAY" run --config "$T/base-t$n.yaml"
    wait_port "$port"
    TARGETS+=("base-t$n")
    URL[base-t$n]=https://localhost:$port/hello
    eval "PROXY_PIDS[base-t$n]=\$PID_base_t$n"
fi

# --- nginx: the usual Laravel site (try_files, then index.php through fastcgi_pass) ------------
# No fastcgi_keep_conn: that is the stock config, and with a static pool a kept nginx connection
# holds a php-fpm worker while idle (nginx cannot give it back when requests queue).
user=""
[[ $(id -u) -eq 0 ]] && user="user root root;"
mkdir -p "$T/nginx"
cat >"$T/nginx.conf" <<NGINX
$user
worker_processes auto;
daemon off;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 9000; }
worker_rlimit_nofile 19000;
http {
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    server {
        listen 127.0.0.1:$P_NGINX ssl;
        ssl_certificate $T/cert.pem;
        ssl_certificate_key $T/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 10m;
        root $DOCROOT;
        index index.php;
        location / {
            try_files \$uri \$uri/ /index.php?\$query_string;
        }
        location ~ \.php\$ {
            fastcgi_pass unix:$T/php-fpm.sock;
            fastcgi_param SCRIPT_FILENAME \$realpath_root\$fastcgi_script_name;
            include /etc/nginx/fastcgi_params;
        }
    }
}
NGINX
nginx -t -q -p "$T/nginx" -c "$T/nginx.conf" 2>&1 | grep -v 'could not open error log\|Permission denied' >&2 || true
start nginx "$T/nginx.out" nginx -p "$T/nginx" -c "$T/nginx.conf"
wait_port $P_NGINX
TARGETS+=(nginx)
URL[nginx]=https://localhost:$P_NGINX/hello
PROXY_PIDS[nginx]=$PID_nginx

ALL_PIDS=$(for e in "${STARTED[@]}"; do printf '%s ' "${e#* }"; done)
for t in "${TARGETS[@]}"; do
    body=$(curl -sk --max-time 5 "${URL[$t]}" || true)
    [[ $body == "Hello from PHP" ]] || die "$t (${URL[$t]}) answered '$body', not 'Hello from PHP'"
done
log "all ${#TARGETS[@]} targets answer 'Hello from PHP': ${TARGETS[*]}"

# --- measurement ---------------------------------------------------------------------------
to_ms() { # wrk latency like 612.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
        else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

run_wrk() { # url seconds outfile -> prints wrk's CPU ticks
    sh -c 'timeout '"$(($2 + 30))"' wrk -t'"$WRK_THREADS"' -c'"$CONNS"' -d'"$2"'s --latency "$0" >"$1" 2>&1; cat /proc/$$/stat' \
        "$1" "$3" | awk '{ l = $0; sub(/^.*\) /, "", l); split(l, f, " "); print f[14] + f[15] }'
}

printf 'rep\tpos\ttarget\trps\tp50_ms\tp99_ms\terrors\trequests\tproxy_ticks\tphp_ticks\twrk_ticks\tother_ticks\tquiet_pct\tphp_csw\n' >"$RAW"

# A gateway keeps the FastCGI connections its last requests asked php-fpm to keep, up to 10 s
# idle (gateway/src/fastcgi.rs `IDLE_TIMEOUT`), and each holds a php-fpm worker blocked in
# `read`: the target measured next would start with part of the pool (seen: 2 of the 4 workers
# held 0.5 s after a gateway's run). So nothing is measured until that time has passed since
# the last gateway ran.
LAST_GW_END=0
wait_kept_closed() {
    local left=$((LAST_GW_END + 11 - SECONDS))
    ((left > 0)) && sleep "$left"
    return 0
}

measure() { # target rep pos
    local t=$1 out="$T/wrk-$1-$2.txt" quiet b0 b1 p0 p1 a0 a1 c0 c1 w rps req p50 p99 errs non2xx
    wait_kept_closed
    quiet=$(wait_quiet $ALL_PIDS)
    c0=$(tree_csw "$PID_fpm")
    b0=$(machine_busy); a0=$(tree_ticks "$PID_fpm"); p0=$(tree_ticks ${PROXY_PIDS[$t]})
    w=$(run_wrk "${URL[$t]}" "$DURATION" "$out")
    p1=$(tree_ticks ${PROXY_PIDS[$t]}); a1=$(tree_ticks "$PID_fpm"); b1=$(machine_busy)
    c1=$(tree_csw "$PID_fpm")
    [[ $t == nginx ]] || LAST_GW_END=$SECONDS
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    req=$(awk '/requests in/ { print $1 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errs=$(awk '/Socket errors/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$out")
    errs=$((${errs:-0} + ${non2xx:-0}))
    [[ -n $rps && -n $req ]] || { cat "$out" >&2; die "wrk failed on $t"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$t" "$rps" "$p50" "$p99" \
        "$errs" "$req" $((p1 - p0)) $((a1 - a0)) "$w" $(((b1 - b0) - (p1 - p0) - (a1 - a0) - w)) "$quiet" $((c1 - c0)) >>"$RAW"
    log "rep $2 #$3 $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $errs, proxy CPU $(((p1 - p0) * 1000000 / CLK_TCK / (req > 0 ? req : 1))) us/req, php-fpm $(((a1 - a0) * 1000000 / CLK_TCK / (req > 0 ? req : 1))) us/req, $(awk -v c=$((c1 - c0)) -v r="$req" 'BEGIN { printf "%.2f", c / (r > 0 ? r : 1) }') context switches/req"
}

FACTS=$(machine_facts)
START_S=$SECONDS
log "warm-up: 3 s on each target"
for t in "${TARGETS[@]}"; do run_wrk "${URL[$t]}" 3 "$T/warm.txt" >/dev/null; done
LAST_GW_END=$SECONDS
n=${#TARGETS[@]}
for ((r = 1; r <= REPS; r++)); do
    for ((k = 0; k < n; k++)); do
        measure "${TARGETS[$(((k + r - 1) % n))]}" "$r" "$((k + 1))"
    done
done
ELAPSED=$((SECONDS - START_S))

# --- report --------------------------------------------------------------------------------
col() { # target column-name -> values of that column for the target, in rep order
    awk -F'\t' -v t="$1" -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { print $k }' "$RAW"
}
us_per_req() { # target ticks-column
    awk -F'\t' -v t="$1" -v c="$2" -v hz="$CLK_TCK" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { printf "%.1f\n", $k * 1000000 / hz / ($8 > 0 ? $8 : 1) }' "$RAW"
}
per_req() { # target column -> that count per request, in rep order
    awk -F'\t' -v t="$1" -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == t { printf "%.2f\n", $k / ($8 > 0 ? $8 : 1) }' "$RAW"
}
all() { paste -sd' ' - | sed 's/ /, /g'; }
ratio_per_rep() { # a b column -> a/b per rep (for CPU: b/a, i.e. how many times less CPU a uses)
    awk -F'\t' -v a="$1" -v b="$2" -v c="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        { v = (c == "rps") ? $k : $k / ($8 > 0 ? $8 : 1) }
        $3 == a { x[$1] = v } $3 == b { y[$1] = v }
        END { for (r in x) if ((r in y) && y[r] > 0 && x[r] > 0) printf "%d %.3f\n", r, (c == "rps") ? x[r] / y[r] : y[r] / x[r] }' "$RAW" |
        sort -n | awk '{ print $2 }'
}
hit() { awk -v v="$1" 'BEGIN { print (v + 0 >= 1.0 ? "hit" : "missed") }'; }
{
    echo "# PHP GET /hello through a TLS front to one php-fpm pool — $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$FACTS"
    echo "- client: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency, https://localhost:PORT/hello; $REPS repetitions, order rotated each repetition; measured part took ${ELAPSED} s"
    echo "- versions: gateway $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet 2>/dev/null || echo '+uncommitted changes'), $(nginx -v 2>&1 | sed 's/.*: //'), $("$FPM" -v | awk 'NR == 1 { print $1, $2 }') (opcache $("$FPM" -i 2>/dev/null | awk -F' => ' '/^opcache.enable =>/ && !seen { print $2; seen = 1 }'))"
    echo "- php-fpm: one pool for both fronts, \`pm = static\`, \`pm.max_children = $PM_CHILDREN\`, Unix socket; gateway: \`protocol: fastcgi\` pool (kept connections), route \`/\` = static file from public/ else PHP, TLS; nginx: \`worker_processes auto\` ($NPROC), \`try_files \$uri \$uri/ /index.php?\$query_string\` + \`fastcgi_pass unix:\` (no fastcgi_keep_conn, the stock site), TLS 1.2/1.3, same certificate (ECDSA P-256), access log off on both"
    echo "- proxy CPU = utime+stime of the gateway | nginx master+workers, per request; php-fpm CPU = the pool's master + workers, per request"
    echo
    echo "| target | req/s median | req/s all | p50 ms | p99 ms median (all) | proxy CPU us/req median (all) | php-fpm CPU us/req | php-fpm context switches/req median (all) | errors |"
    echo "|---|---:|---|---:|---|---|---:|---|---:|"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %s | %s | %s | %s (%s) | %s (%s) | %s | %s (%s) | %s |\n' "$t" \
            "$(col "$t" rps | median)" "$(col "$t" rps | all)" \
            "$(col "$t" p50_ms | median)" "$(col "$t" p99_ms | median)" "$(col "$t" p99_ms | all)" \
            "$(us_per_req "$t" proxy_ticks | median)" "$(us_per_req "$t" proxy_ticks | all)" \
            "$(us_per_req "$t" php_ticks | median)" \
            "$(per_req "$t" php_csw | median)" "$(per_req "$t" php_csw | all)" \
            "$(col "$t" errors | awk '{ s += $1 } END { print s }')"
    done
    echo
    echo "Ratios, computed within each repetition (median, then all):"
    echo
    echo "| ratio | median | all repetitions | target |"
    echo "|---|---:|---|---|"
    if [[ -n ${BASE_GATEWAY:-} ]]; then
        n=${GW_THREADS%% *}
        printf '| gw-t%s / base-t%s req/s (this tree / BASE_GATEWAY) | %s | %s | >= 1.0: %s |\n' "$n" "$n" "$(ratio_per_rep "gw-t$n" "base-t$n" rps | median)" "$(ratio_per_rep "gw-t$n" "base-t$n" rps | all)" "$(hit "$(ratio_per_rep "gw-t$n" "base-t$n" rps | median)")"
        printf '| base-t%s CPU/req / gw-t%s CPU/req (x less CPU) | %s | %s | |\n' "$n" "$n" "$(ratio_per_rep "gw-t$n" "base-t$n" proxy_ticks | median)" "$(ratio_per_rep "gw-t$n" "base-t$n" proxy_ticks | all)"
    fi
    for t in "${TARGETS[@]}"; do
        [[ $t == gw-* ]] || continue
        m=$(ratio_per_rep "$t" nginx rps | median)
        printf '| %s / nginx req/s | %s | %s | >= 1.0: %s |\n' "$t" "$m" "$(ratio_per_rep "$t" nginx rps | all)" "$(hit "$m")"
        printf '| nginx CPU/req / %s CPU/req (x less CPU) | %s | %s | |\n' "$t" "$(ratio_per_rep "$t" nginx proxy_ticks | median)" "$(ratio_per_rep "$t" nginx proxy_ticks | all)"
    done
    echo
    echo "Other processes' CPU during each measurement (ticks of ${CLK_TCK}/s, machine busy minus front minus php-fpm minus wrk), all rows in order: $(col nginx other_ticks | all) (nginx), $(for t in "${TARGETS[@]}"; do [[ $t == gw-* || $t == base-* ]] && printf '%s (%s) ' "$(col "$t" other_ticks | all)" "$t"; done)"
    echo "wrk's own CPU, median share of the machine: $(awk -F'\t' -v d="$DURATION" -v hz="$CLK_TCK" -v np="$NPROC" 'NR > 1 { printf "%.0f\n", $11 * 100 / hz / d / np }' "$RAW" | median)%."
    echo "Raw: $(basename "$RAW")"
} | tee "$REPORT"
log "report: $REPORT (measured part ${ELAPSED} s)"
