#!/usr/bin/env bash
# Prints what the keep-alive pool patch (keepalive-pool.patch.md) changes in the vendored
# pingora-core and pingora-pool against the same versions as published on crates.io (as cargo
# unpacked them under $CARGO_HOME/registry/src), as one patch that applies at the root of the
# pingora repository with `patch -p1` (a crate's Cargo.toml.orig is its Cargo.toml there).
# Regenerate the committed copy with:
#   bash vendor/keepalive-pool.diff.sh > vendor/keepalive-pool.patch
set -euo pipefail
cd "$(dirname "$0")"
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
for crate in pingora-core pingora-pool; do
    src=$(compgen -G "$registry/*/$crate-0.9.1" | head -1 || true)
    [[ -n $src ]] || { echo "$crate 0.9.1 is not unpacked under $registry: run cargo fetch" >&2; exit 1; }
    # -q lists changed files only; the packaging outputs (normalized Cargo.toml, Cargo.lock,
    # .cargo_vcs_info.json) are not in the repository.
    { diff -rq -x .cargo-ok -x Cargo.toml -x Cargo.lock -x .cargo_vcs_info.json "$src" "$crate" || true; } |
        sed -n 's/^Files .* and \(.*\) differ$/\1/p' | sort |
        while read -r file; do
            path=${file#"$crate"/}
            repo_path=$crate/${path%.orig}
            diff -u --label "a/$repo_path" --label "b/$repo_path" "$src/$path" "$file" || true
        done
done
