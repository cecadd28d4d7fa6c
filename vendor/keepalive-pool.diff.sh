#!/usr/bin/env bash
# The keep-alive pool patch (keepalive-pool.patch.md) against the published crates:
#   bash vendor/keepalive-pool.diff.sh > vendor/keepalive-pool.patch
exec bash "$(dirname "$0")/diff.sh" pingora-core pingora-pool
