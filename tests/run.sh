#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end tests, which start
# the real gateway and backend-stub binaries and talk to them over real sockets.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh
# The end-to-end harness runs the built binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace
