#!/usr/bin/env bash
# Prints what the keep-alive pool patch (keepalive-pool.patch.md) changes in the vendored
# pingora-core and pingora-pool against the same versions as published on crates.io, as one
# patch that applies at the root of the pingora repository with `patch -p1`.
# Regenerate the committed copy with:
#   bash vendor/keepalive-pool.diff.sh > vendor/keepalive-pool.patch
set -euo pipefail
cd "$(dirname "$0")"
# pingora-core carries another patch too (held-head.patch.md): only this patch's file.
bash diff.sh pingora-core src/connectors/mod.rs
bash diff.sh pingora-pool
