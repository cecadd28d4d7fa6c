#!/usr/bin/env bash
# The PHP example: Debian's php-fpm (config in this folder, Unix socket in a temporary
# directory, in the foreground: never a system service) and the gateway in front of it on
# https://127.0.0.1:8443/. Ctrl-C stops both.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

fpm="$(compgen -G '/usr/sbin/php-fpm*' | sort | tail -n 1 || true)"
[ -n "$fpm" ] || fpm="$(command -v php-fpm || true)"
if [ -z "$fpm" ]; then
  echo "run.sh: php-fpm is missing: sudo apt-get install php-fpm (or bash tests/setup.sh)" >&2
  exit 1
fi

# GATEWAY_BIN: use an already built gateway (e.g. target/debug/gateway) instead of building.
bin="${GATEWAY_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --bin gateway)
  bin="$root/target/release/gateway"
fi

run="$(mktemp -d "${TMPDIR:-/tmp}/gateway-php.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$here/.run"
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

user=""
extra=()
if [ "$(id -u)" -eq 0 ]; then
  user="user = root\ngroup = root"
  extra=(-R)
fi
sed -e "s|@RUN@|$run|g" -e "s|@USER@|$user|" "$here/php-fpm.conf" > "$run/php-fpm.conf"
ln -sfn "$run" "$here/.run"

"$fpm" -F -y "$run/php-fpm.conf" -p "$run" "${extra[@]}" &
pids+=($!)
for _ in $(seq 100); do [ -S "$run/php-fpm.sock" ] && break; sleep 0.05; done
[ -S "$run/php-fpm.sock" ] || { echo "run.sh: php-fpm did not start" >&2; exit 1; }

echo
echo "  Open https://127.0.0.1:8443/ (development certificate in examples/php/.state/)."
echo "  Health: http://127.0.0.1:9090/healthz   Ctrl-C stops php-fpm and the gateway."
echo
"$bin" run --config "$here/gateway.yaml" &
pids+=($!)
wait "${pids[@]}"
