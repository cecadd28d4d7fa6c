#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine, and nothing that is
# already there. Safe to run again.
set -euo pipefail

need=()
command -v cmake   >/dev/null || need+=(cmake)      # pingora-core builds zlib-ng with it
command -v openssl >/dev/null || need+=(openssl)    # TLS tests use `openssl s_client`
command -v curl    >/dev/null || need+=(curl)
command -v cc      >/dev/null || need+=(gcc)        # ring and zstd build C code
command -v make    >/dev/null || need+=(make)       # jemalloc (the gateway's allocator) builds with it
command -v node    >/dev/null || need+=(nodejs)     # the official socket.io-client in tests
command -v npm     >/dev/null || need+=(npm)
# php-fpm for the FastCGI tests (started by the tests themselves, never as a service).
compgen -G '/usr/sbin/php-fpm*' >/dev/null || command -v php-fpm >/dev/null || need+=(php-fpm)
[ -x /usr/bin/chromium ]      || need+=(chromium) # the demo page's browser tests (playwright-core)
# redis-server (and redis-cli) for the cluster tests (started by the tests on free ports, never
# as a service).
command -v redis-server >/dev/null || need+=(redis-server)
# nginx is the round-robin load balancer in front of the fleet in the cluster tests (started
# by the tests, unprivileged, on free ports; never as a service).
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
# goaccess reads the gateway's access log in the observability tests (as an operator's would).
command -v goaccess >/dev/null || need+=(goaccess)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} with apt-get"
  sudo_=""
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi

# JavaScript clients for the tests, and the Socket.IO client library the gateway serves,
# exactly as pinned by the committed lockfile.
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -d "$here/node_modules" ] || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci in tests/"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing: install Rust from your distribution or rustup first" >&2
  exit 1
fi
