#!/usr/bin/env bash
# The official Engine.IO and Socket.IO protocol test suites, run against the gateway itself (not
# only against the realtime crate's example server).
#
#   bash tests/protocol-suites.sh ENGINE_IO_PROTOCOL SOCKET_IO_PROTOCOL
#
# Each argument is a checkout of socketio/engine.io-protocol or socketio/socket.io-protocol; the
# suite in its `test-suite/` folder is installed from its lockfile (`npm ci`) and run with mocha.
# They are not part of this repository (nor of `tests/run.sh`, which runs offline): fetch them
# yourself. The gateway is built with the `conformance` feature and serves
# `realtime: protocol-suites` on http://localhost:3000, the address both suites expect, through
# its whole request path: listener, router, seam, and for WebSockets the hand-off out of pingora.
set -euo pipefail
cd "$(dirname "$0")/.."
(($# == 2)) || { echo "usage: $0 ENGINE_IO_PROTOCOL_CHECKOUT SOCKET_IO_PROTOCOL_CHECKOUT" >&2; exit 2; }
for suite in "$@"; do
    [[ -f $suite/test-suite/test-suite.js ]] || { echo "no test-suite/test-suite.js in $suite" >&2; exit 2; }
done
(exec 3<>/dev/tcp/127.0.0.1/3000) 2>/dev/null && { echo "port 3000 is in use" >&2; exit 1; }

cargo build -p gateway --features conformance
dir=$(mktemp -d /tmp/protocol-suites.XXXXXX)
cat >"$dir/gateway.yaml" <<YAML
listen: {http: "127.0.0.1:3000"}
routes:
  - {path: /, realtime: protocol-suites}
YAML
target=${CARGO_TARGET_DIR:-target}
"$target/debug/gateway" -c "$dir/gateway.yaml" >"$dir/gateway.log" 2>&1 &
gw=$!
trap 'kill $gw 2>/dev/null; wait $gw 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/3000) 2>/dev/null && break
    kill -0 $gw 2>/dev/null || { cat "$dir/gateway.log" >&2; exit 1; }
    sleep 0.1
done

status=0
for suite in "$@"; do
    echo "== $(basename "$suite") (through the gateway)"
    (cd "$suite/test-suite" && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
        timeout 300 npx mocha test-suite.js) || status=1
done
((status == 0)) || { echo "gateway log:" >&2; tail -50 "$dir/gateway.log" >&2; }
exit $status
