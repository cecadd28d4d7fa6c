#!/usr/bin/env bash
# Prints the keep-alive pool patch (keepalive-pool.patch.md): its file of the vendored
# pingora-core (which carries other patches too) and all of pingora-pool's changes.
#   bash vendor/keepalive-pool.diff.sh > vendor/keepalive-pool.patch
exec bash "$(dirname "$0")/diff.sh" pingora-core/src/connectors/mod.rs pingora-pool
