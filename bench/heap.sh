#!/usr/bin/env bash
# Where an idle Socket.IO connection's heap goes, owner by owner: the gateway under heaptrack
# holding N idle Socket.IO WebSockets (over TLS by default), the peak heap attributed to the
# nearest frame of our own or of a crate (not the allocator's, the standard library's or
# hashbrown's), divided by N. This is the "written down field by field" half of issue 16: RSS
# (bench/socketio.sh) says how much, this says who holds it.
#
#   bash bench/heap.sh                          # from the repo root; ~2 min after the build
#   N=1000 TLS=no bash bench/heap.sh            # plain ws
#
# heaptrack sees malloc only, so the gateway measured is built with `--features system-allocator`
# (into $TARGET_DIR/heap, once; or GATEWAY=<such a binary>). glibc's malloc rounds differently from
# jemalloc (the release build's allocator): the figures are the bytes asked for plus glibc's
# per-chunk header, not RSS.
#
# Settings (environment): N (3000 connections), TLS (yes), HOLD (5 s idle before the peak is taken),
# TOP (30 owners listed), GATEWAY, OUT_DIR (bench/results), PORT_OFFSET (0), CARGO_TARGET_DIR;
# FILE=<a heaptrack file of an earlier run> and CONNECTED=<its connections> only re-read it.
# Writes OUT_DIR/heap-<stamp>.md (the table) and keeps the heaptrack file beside it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-3000}
TLS=${TLS:-yes}
HOLD=${HOLD:-5}
TOP=${TOP:-30}
OUT_DIR=${OUT_DIR:-$REPO/bench/results}
PORT_OFFSET=${PORT_OFFSET:-0}
P_GW=$((24480 + PORT_OFFSET)) P_ADM=$((24481 + PORT_OFFSET))
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR"
ensure_pkgs heaptrack:heaptrack heaptrack_print:heaptrack openssl:openssl python3:python3

measure() { # -> $file, $connected, $TRACE
    build_bins -p bench --bin rt-load
    if [[ -z ${GATEWAY:-} ]]; then
        log "building the gateway with --features system-allocator into $TARGET_DIR/heap"
        (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR/heap timeout 2400 cargo build --release --quiet \
            -p gateway --features system-allocator) || die "gateway build failed"
        GATEWAY=$TARGET_DIR/heap/release/gateway
    fi
    [[ -x $GATEWAY ]] || die "GATEWAY=$GATEWAY is not an executable"

    make_cert "$T"
    listen=http scheme=ws tls=""
    if [[ $TLS == yes ]]; then
        listen=https scheme=wss tls="
tls:
  certificates:
    - cert: $T/cert.pem
      key: $T/key.pem"
    fi
    # The same namespace as bench/socketio.sh's idle case.
    cat >"$T/heap.yaml" <<YAML
listen:
  $listen: 127.0.0.1:$P_GW
  admin: 127.0.0.1:$P_ADM$tls
realtime:
  socketio:
    namespaces:
      "/": { relay: true, history: 0, client_rooms: false }
routes:
  - path: /socket.io/
    realtime: socketio
threads: 2
grace_period_s: 1
YAML
    "$GATEWAY" check --config "$T/heap.yaml" >/dev/null || die "gateway check failed"

    TRACE=$OUT_DIR/heap-$STAMP
    RUST_LOG=warn start heaptrack "$T/heaptrack.log" heaptrack -o "$TRACE" "$GATEWAY" run --config "$T/heap.yaml"
    wait_port "$P_GW" 60 || die "the gateway did not listen (log: $(tail -5 "$T/heaptrack.log"))"
    gw_pid=$(pgrep -f "^$GATEWAY run --config $T/heap.yaml" | head -1)
    [[ -n $gw_pid ]] || die "no gateway process under heaptrack"

    out=$(timeout 300 "$BIN/rt-load" --sources 16 --label heap --pids "$gw_pid" sio-idle \
        --url "$scheme://127.0.0.1:$P_GW/socket.io/" --steps "$N" --hold-secs "$HOLD" | tail -1) ||
        die "rt-load failed"
    connected=$(echo "$out" | grep -o '"connected":[0-9]*' | head -1 | cut -d: -f2)
    log "held $connected idle connections"

    # A graceful stop writes heaptrack's data out; heaptrack then interprets it (zstd).
    kill -TERM "$gw_pid"
    for ((i = 0; i < 600; i++)); do kill -0 "$PID_heaptrack" 2>/dev/null || break; sleep 0.2; done
    file=$(ls "$TRACE".* 2>/dev/null | head -1)
    [[ -n $file ]] || die "no heaptrack file (log: $(tail -5 "$T/heaptrack.log"))"
}

T=$(mktemp -d)
trap 'stop_all; rm -rf "$T"' EXIT
if [[ -n ${FILE:-} ]]; then
    file=$FILE connected=${CONNECTED:-$N} TRACE=${FILE%.*}
else
    measure
fi
heaptrack_print -f "$file" --flamegraph-cost-type peak -F "$T/stacks.txt" >/dev/null
python3 - "$T/stacks.txt" "$connected" "$TOP" >"$TRACE.md" <<'PY'
import re, sys
from collections import defaultdict
stacks, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Frames that are how memory is asked for, not who asks: the allocator, the standard library's
# collections and smart pointers, hashbrown, heaptrack itself.
# Names come demangled (`alloc::vec::...`), legacy-mangled (`_$LT$alloc..vec..`) or v0-mangled
# (`_RNvXs_NtCs..._5alloc5alloc...`: the first crate named is the one that counts).
plumbing = re.compile(
    r"^(<?(alloc|core|std|hashbrown)::|_?\$LT\$(alloc|core|std|hashbrown)\.\.|"
    r"_R[^C]*C(s[0-9A-Za-z]*_)?(5alloc|4core|3std|9hashbrown|7___rustc)|"
    r"__rust|_?_?libc_|malloc|calloc|realloc|posix_memalign|"
    r"aligned_alloc|operator new|heaptrack|<unresolved|\?\?|<unknown|_start$|main$)")
# Where the allocation is made: the deepest allocator entry in the stack.
allocating = re.compile(
    r"(5alloc5alloc5alloc|5alloc5alloc7realloc|5alloc5alloc12alloc_zeroed|__rust_alloc|"
    r"__rust_realloc|__rdl_alloc|__rdl_realloc|^malloc|^calloc|^realloc|posix_memalign|aligned_alloc)")
owners, chains, total = defaultdict(int), defaultdict(lambda: defaultdict(int)), 0


def owner_of(frames):
    """The allocation's owner and its caller. heaptrack folds a stack root first, but the frames
    inlined into one physical frame leaf first: so the run of plumbing frames around the
    allocator entry either ends the stack (the owner is left of it, its caller further left) or
    sits inside an inlined group (the owner is right of it, its caller further right)."""
    plumb = [bool(plumbing.match(f)) for f in frames]
    hits = [i for i, f in enumerate(frames) if plumb[i] and allocating.search(f)]
    if not hits:
        return "(no allocator frame)", ""
    lo = hi = hits[-1]
    while lo > 0 and plumb[lo - 1]:
        lo -= 1
    while hi + 1 < len(frames) and plumb[hi + 1]:
        hi += 1
    if hi + 1 < len(frames):
        rest = [f for f, p in zip(frames[hi + 1:], plumb[hi + 1:]) if not p]
    else:
        rest = [f for f, p in zip(reversed(frames[:lo]), reversed(plumb[:lo])) if not p]
    rest = [f for i, f in enumerate(rest) if i == 0 or f != rest[i - 1]]
    return (rest[0] if rest else "(allocator or std only)"), (rest[1] if len(rest) > 1 else "")


def short(s):
    """A frame's name without its hash, legacy mangling undone."""
    s = re.sub(r"::h[0-9a-f]{16}", "", s)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$u7b$", "{"), ("$u7d$", "}"),
                 ("$C$", ","), ("$RF$", "&"), ("$LP$", "("), ("$RP$", ")"), ("..", "::")):
        s = s.replace(a, b)
    return s.lstrip("_")[:150]
for line in open(stacks):
    line = line.rstrip("\n")
    if not line:
        continue
    stack, _, cost = line.rpartition(" ")
    try:
        cost = int(cost)
    except ValueError:
        continue
    total += cost
    owner, caller = owner_of([f.strip() for f in stack.split(";") if f.strip()])
    owner, caller = short(owner), short(caller)
    owners[owner] += cost
    chains[owner][caller] += cost
print(f"Peak heap {total / 1024:.0f} KiB with {n} idle connections: "
      f"**{total / n / 1024:.2f} KiB per connection** (the process's own share included).\n")
print("| owner (nearest frame not the allocator's or std's) | KiB per connection | its largest caller |")
print("|---|---:|---|")
for owner, cost in sorted(owners.items(), key=lambda kv: -kv[1])[:top]:
    caller = max(chains[owner].items(), key=lambda kv: kv[1])[0]
    print(f"| `{owner}` | {cost / n / 1024:.3f} | `{caller}` |")
PY
log "wrote $TRACE.md (heaptrack data: $file)"
cat "$TRACE.md"
