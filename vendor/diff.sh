#!/usr/bin/env bash
# Prints what the vendored pingora crates named as arguments change against the same versions
# as published on crates.io (as cargo unpacked them under $CARGO_HOME/registry/src), as one
# patch that applies at the root of the pingora repository with `patch -p1` (a crate's
# Cargo.toml.orig is its Cargo.toml there). Each patch's note (vendor/*.patch.md) says which
# crates it covers; regenerate the committed copies with:
#   bash vendor/diff.sh pingora-core pingora-pool > vendor/keepalive-pool.patch
#   bash vendor/diff.sh pingora-proxy > vendor/pingora-proxy.patch
set -euo pipefail
(($#)) || { echo "usage: $0 CRATE..." >&2; exit 2; }
cd "$(dirname "$0")"
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
for crate in "$@"; do
    src=$(compgen -G "$registry/*/$crate-0.9.1" | head -1 || true)
    [[ -n $src ]] || { echo "$crate 0.9.1 is not unpacked under $registry: run cargo fetch" >&2; exit 1; }
    # -q lists changed and added files; the packaging outputs (normalized Cargo.toml,
    # Cargo.lock, .cargo_vcs_info.json) are not in the repository.
    { diff -rq -N -x .cargo-ok -x Cargo.toml -x Cargo.lock -x .cargo_vcs_info.json "$src" "$crate" || true; } |
        sed -n 's/^Files .* and \(.*\) differ$/\1/p' | sort |
        while read -r file; do
            path=${file#"$crate"/}
            repo_path=$crate/${path%.orig}
            diff -u -N --label "a/$repo_path" --label "b/$repo_path" "$src/$path" "$file" || true
        done
done
