# Shared helpers for bench/*.sh (sourced, not run). Method: /work/shared/notes/benchmarking.md —
# ratios within one run, interleaved rotated repetitions, medians, server CPU per operation from
# /proc, a bounded wait for a quiet machine before each measurement.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release
CLK_TCK=$(getconf CLK_TCK)
NPROC=$(nproc)
# Servers started by the script: "name pid" lines; all stopped on exit.
STARTED=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Install the Debian packages providing the given commands, if any is missing.
ensure_pkgs() { # cmd:pkg ...
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get)"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "${missing[@]}" >&2 ||
            { $sudo timeout 300 apt-get update >&2 &&
              $sudo env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "${missing[@]}" >&2; } ||
            die "cannot install ${missing[*]}"
    fi
}

# Release binaries of the workspace (gateway, backend-stub, and bench's ws-load when asked).
build_bins() { # -p crate ...
    log "cargo build --release $* (target dir $TARGET_DIR; cold build ~6 min on 2 cores)"
    local i
    for i in 1 2 3; do
        (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR timeout 1200 cargo build --release --quiet "$@") && return 0
        log "build failed (attempt $i; the tree may be mid-edit), retrying in 60 s"
        sleep 60
    done
    die "release build failed"
}

# The stock pingora control (bench/stock-pingora, binary $BIN/stock-pingora): a Cargo project of
# its own, built against the registry's pingora crates as published (the workspace patches some
# of them: vendor/*.patch.md).
build_stock_pingora() {
    build_bins --manifest-path "$REPO/bench/stock-pingora/Cargo.toml"
}

# One self-signed ECDSA P-256 certificate for every TLS terminator (localhost, 127.0.0.1).
make_cert() { # dir
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null || die "openssl failed"
    cat "$1/cert.pem" "$1/key.pem" >"$1/both.pem" # stunnel/haproxy style
}

# Start a long-running server in its own process group; remember its pid.
start() { # name logfile cmd...
    local name=$1 logf=$2
    shift 2
    setsid "$@" >"$logf" 2>&1 </dev/null &
    local pid=$!
    disown "$pid" # no "Killed" notices from bash when it is stopped
    STARTED+=("$name $pid")
    eval "PID_${name//-/_}=$pid"
    log "started $name (pid $pid): $*"
}

stop_all() {
    local entry pid i alive
    for entry in "${STARTED[@]}"; do
        pid=${entry#* }
        # Each server was started with setsid: its pid is its process group id.
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do # up to 5 s for a graceful exit
        alive=0
        for entry in "${STARTED[@]}"; do kill -0 "${entry#* }" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for entry in "${STARTED[@]}"; do
        pid=${entry#* }
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    STARTED=()
}

# Stop one server `start` started, by its name: its process group, up to 5 s for a graceful exit;
# the others keep running.
stop_one() { # name
    local entry pid keep=() i
    for entry in "${STARTED[@]}"; do
        if [[ ${entry%% *} == "$1" ]]; then pid=${entry#* }; else keep+=("$entry"); fi
    done
    STARTED=("${keep[@]}")
    [[ -n ${pid:-} ]] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

# Wait (bounded) until a TCP port accepts connections.
wait_port() { # port [secs]
    local i
    for ((i = 0; i < ${2:-20} * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listening on port $1"
}

# utime+stime (ticks) of the given processes and all their descendants, threads included.
tree_ticks() { # pid ...
    # cat, not awk on the files: a process may exit between the glob and the read (mawk would
    # then stop with an error).
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
        {
            line = $0; pid = $1
            sub(/^.*\) /, "", line)          # skip "pid (comm) ", comm may hold spaces
            split(line, f, " ")
            ppid[pid] = f[2]; t[pid] = f[12] + f[13]
        }
        END {
            n = split(roots, r, " ")
            for (i = 1; i <= n; i++) inset[r[i]] = 1
            changed = 1
            while (changed) {
                changed = 0
                for (p in ppid) if (!(p in inset) && (ppid[p] in inset)) { inset[p] = 1; changed = 1 }
            }
            s = 0
            for (p in inset) if (p in t) s += t[p]
            print s
        }'
}

# Context switches (voluntary + involuntary, every thread) of the given processes and all their
# descendants: a process woken for nothing (a spurious wake-up inside one blocking call) shows
# here and not in its system calls.
tree_csw() { # pid ...
    local pids p sum=0 n
    pids=$(tree_pids "$@" | tr ',' ' ')
    for p in $pids; do
        n=$({ cat /proc/"$p"/task/*/status 2>/dev/null || true; } |
            awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }')
        sum=$((sum + n))
    done
    echo "$sum"
}

# The given processes and all their descendants, comma-separated (for `perf stat -p`).
tree_pids() { # pid ...
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
        { line = $0; pid = $1; sub(/^.*\) /, "", line); split(line, f, " "); ppid[pid] = f[2] }
        END {
            n = split(roots, r, " ")
            for (i = 1; i <= n; i++) if (r[i] in ppid) inset[r[i]] = 1
            changed = 1
            while (changed) {
                changed = 0
                for (p in ppid) if (!(p in inset) && (ppid[p] in inset)) { inset[p] = 1; changed = 1 }
            }
            sep = ""; for (p in inset) { printf "%s%s", sep, p; sep = "," } print ""
        }'
}

# Busy ticks of the whole machine (all cores).
machine_busy() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# Wait until processes other than ours use < QUIET_PCT % of one core (sampled over 1 s),
# for at most QUIET_MAX_S seconds. Prints the last sample (percent of one core).
QUIET_PCT=${QUIET_PCT:-25}
QUIET_MAX_S=${QUIET_MAX_S:-60}
wait_quiet() { # our pids...
    local start=$SECONDS b0 o0 b1 o1 pct
    while :; do
        b0=$(machine_busy); o0=$(tree_ticks "$@")
        sleep 1
        b1=$(machine_busy); o1=$(tree_ticks "$@")
        pct=$(( (b1 - b0) - (o1 - o0) ))
        pct=$(( pct * 100 / CLK_TCK ))
        ((pct < 0)) && pct=0
        if ((pct < QUIET_PCT)); then echo "$pct"; return 0; fi
        if ((SECONDS - start >= QUIET_MAX_S)); then
            log "machine not quiet after ${QUIET_MAX_S}s (others at ${pct}% of a core): measuring anyway"
            echo "$pct"; return 0
        fi
    done
}

# The processes using the most CPU over the next second (what else ran).
snap() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
        awk '{ l = $0; c = $0; sub(/^.*\) /, "", l); sub(/^[0-9]+ \(/, "", c); sub(/\) .*$/, "", c)
               gsub(/ /, "_", c); split(l, f, " "); print $1, c, f[12] + f[13] }' | LC_ALL=C sort >"$1"
}
top_others() {
    local a b
    a=$(mktemp); b=$(mktemp)
    snap "$a"
    sleep 1
    snap "$b"
    LC_ALL=C join "$a" "$b" | awk -v hz="$CLK_TCK" '{ d = $5 - $3; if (d > 0) printf "%s %d%%\n", $2, d * 100 / hz }' |
        sort -k2 -t' ' -rn | head -5 | paste -sd, -
    rm -f "$a" "$b"
}

machine_facts() {
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); host: $(uname -n); kernel $(uname -r)"
    echo "- nproc: $NPROC; CPU: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg); busiest other processes over 1 s: $(top_others || true)"
}

# Median of numbers on stdin ("-" and empty lines ignored).
median() {
    grep -v '^-*$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "-"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# nginx as a reverse proxy to the app at $3, in the usual production shape: upstream keepalive,
# HTTP/1.1 to the app, forwarded headers, WebSocket upgrade on /cable with nginx's DEFAULT
# proxy_read_timeout (60 s), access_log OFF. (The gateway's access log is ON, its default, to
# its log file: every feature on. Off, it cost 2.6 us of a 32 us request on 2026-12-06 before
# the per-thread buffers, about 2 after; RUST_LOG=warn only quiets the gateway's own messages.)
nginx_conf() { # dir name listen(addr:port) app(addr:port) tls(yes|no)
    local dir=$1 name=$2 listen=$3 app=$4 tls=$5 ssl="" user=""
    mkdir -p "$dir/$name"
    [[ $(id -u) -eq 0 ]] && user="user root root;"
    if [[ $tls == yes ]]; then
        ssl="ssl;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 10m"
    fi
    cat >"$dir/$name.conf" <<NGINX
$user
worker_processes auto;
daemon off;
pid $dir/$name/nginx.pid;
error_log $dir/$name/error.log warn;
events { worker_connections 9000; }
worker_rlimit_nofile 19000;
http {
    access_log off;
    client_body_temp_path $dir/$name/body;
    proxy_temp_path $dir/$name/proxy;
    fastcgi_temp_path $dir/$name/fastcgi;
    uwsgi_temp_path $dir/$name/uwsgi;
    scgi_temp_path $dir/$name/scgi;
    upstream app {
        server $app;
        keepalive 64;
    }
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      close;
    }
    server {
        listen $listen $ssl;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
        location /cable {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
NGINX
    nginx -t -q -p "$dir/$name" -c "$dir/$name.conf" 2>&1 | grep -v 'could not open error log\|Permission denied' >&2 || true
}

# The bench gateway: one https listener, one pool with the one app server, one route `/`.
gateway_conf() { # dir name https(addr:port) app(addr:port) threads[n|s] [with_cable_route]
    # threads "2n": 2 threads, each with a runtime of its own (`work_stealing: false`, the
    # default since 2026-12-05); "2s": 2 threads sharing one runtime that steals work
    # (`work_stealing: true`); "2": the binary's default.
    local cable="" threads=${5%[ns]} stealing=""
    [[ $5 == *n ]] && stealing=false
    [[ $5 == *s ]] && stealing=true
    [[ ${6:-} == cable ]] && cable="
  - path: /cable
    upstream: app
    websocket: true"
    cat >"$1/$2.yaml" <<YAML
listen:
  https: $3
tls:
  certificates:
    - cert: $1/cert.pem
      key: $1/key.pem
upstreams:
  app:
    servers: [$4]
routes:$cable
  - path: /
    upstream: app
threads: $threads
grace_period_s: 1
YAML
    [[ -z $stealing ]] || echo "work_stealing: $stealing" >>"$1/$2.yaml"
    "$BIN/gateway" check --config "$1/$2.yaml" >/dev/null || die "gateway check failed for $1/$2.yaml"
}

# Resident memory (KiB) of the given processes and their descendants.
tree_rss_kb() { # pid ...
    local pids p s=0 v
    pids=$({ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
        { pid = $1; l = $0; sub(/^.*\) /, "", l); split(l, f, " "); ppid[pid] = f[2] }
        END { n = split(roots, r, " "); for (i = 1; i <= n; i++) inset[r[i]] = 1
              changed = 1
              while (changed) { changed = 0
                  for (p in ppid) if (!(p in inset) && (ppid[p] in inset)) { inset[p] = 1; changed = 1 } }
              for (p in inset) if (p in ppid) print p }')
    for p in $pids; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

# A number from a flat JSON line (the load clients print one per measurement).
jnum() { echo "$1" | sed -n 's/.*"'"$2"'":\([-0-9.eE+]*\).*/\1/p' | head -1; }
# Report formatting: numbers >= 100 without decimals, smaller ones to 3 significant digits.
fmt() { awk '{ if ($1 ~ /^-?[0-9.eE+]+$/) { if ($1 + 0 >= 100) printf "%.0f\n", $1; else printf "%.3g\n", $1 } else print $1 }'; }
sum() { awk '{ s += $1 } END { print s + 0 }'; }
# Values on stdin as one comma-separated line (numbers >= 100 without decimals).
all() { awk '{ printf "%s%s", (NR > 1 ? ", " : ""), ($1 ~ /^-?[0-9.]+$/ && $1 + 0 >= 100 ? sprintf("%.0f", $1) : $1) } END { print "" }'; }

# The other benchmark scripts of this repository load the same 2 cores: before each measurement,
# wait until none of the scripts the pattern names runs, PEER_MAX_S seconds at most over the whole
# run (default 600). (A script waits only for those written before it, so two never wait for
# each other.)
PEER_WAITED=0
wait_peers() { # pgrep -f pattern, e.g. 'bench/(http|socketio)\.sh'
    local t0=$SECONDS
    # Only a script that runs counts: its command line starts with bash. A `flock LOCK bash
    # bench/x.sh` still waiting for the lock names the script too, and matching it made a run
    # that holds the lock wait out PEER_MAX_S for a script that cannot start before it ends.
    while pgrep -f "^([^ ]*/)?bash .*($1)" >/dev/null; do
        if ((PEER_WAITED + SECONDS - t0 >= ${PEER_MAX_S:-600})); then
            log "another bench/*.sh still running (waited ${PEER_MAX_S:-600} s in all): measuring anyway"
            break
        fi
        ((SECONDS - t0)) || log "waiting for another bench/*.sh to finish ($1)"
        sleep 5
    done
    PEER_WAITED=$((PEER_WAITED + SECONDS - t0))
}

# A measurement during which other processes used more than QUIET_PCT % of a core (read by the
# client over the measured window, its `others_cpu_pct`) is taken again, at most RETRIES times;
# the last one counts. RETRIES_MAX bounds the repeats over the whole run (so a script stays
# within its time on a machine that never gets quiet).
RETRIES=${RETRIES:-2}
RETRIES_MAX=${RETRIES_MAX:-4}
RETRIED=0
disturbed() { # client-json
    ((RETRIED < RETRIES_MAX)) || return 1
    awk -v o="$(jnum "$1" others_cpu_pct)" -v q="$QUIET_PCT" 'BEGIN { exit !(o + 0 > q + 0) }' || return 1
    RETRIED=$((RETRIED + 1))
}
