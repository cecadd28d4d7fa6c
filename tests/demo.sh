#!/usr/bin/env bash
# The demo: two backend-stub instances (the stand-in for a Rails/Laravel app) on :3000 and
# :3001, and the gateway in front of them with the shipped gateway.yaml. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh
cargo build --release --bins
bin="${CARGO_TARGET_DIR:-target}/release"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for port in 3000 3001; do
  "$bin/backend-stub" --listen "127.0.0.1:$port" --id "app-$port" --quiet &
  pids+=($!)
done

echo
echo "  Open https://localhost:8443/ (a development certificate is created in .state/;"
echo "  accept it in the browser once). Admin: http://127.0.0.1:9090/healthz"
echo
"$bin/gateway" run --config gateway.yaml
