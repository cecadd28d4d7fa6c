#!/usr/bin/env bash
# Prints what vendored crates change against the same versions as published on crates.io (as
# cargo unpacked them under $CARGO_HOME/registry/src), as one patch that applies at the root of
# the upstream repository with `patch -p1` (a crate's Cargo.toml.orig is its Cargo.toml there).
# An argument is a crate (every file it changes or adds) or one file of it (one crate can carry
# more than one patch). Each patch's note (vendor/*.patch.md) gives the command that regenerates
# its committed diff, e.g.
#   bash vendor/diff.sh pingora-core/src/connectors/mod.rs pingora-pool > vendor/keepalive-pool.patch
set -euo pipefail
(($#)) || { echo "usage: $0 CRATE|CRATE/PATH..." >&2; exit 2; }
cd "$(dirname "$0")"
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
for arg in "$@"; do
    crate=${arg%%/*}
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$crate/Cargo.toml" | head -1)
    src=$(compgen -G "$registry/*/$crate-$version" | head -1 || true)
    [[ -n $src ]] || { echo "$crate $version is not unpacked under $registry: run cargo fetch" >&2; exit 1; }
    if [[ $arg == */* ]]; then
        paths=("${arg#*/}")
    else
        # -q lists changed and (with -N) added files; the packaging outputs (normalized
        # Cargo.toml, Cargo.lock, .cargo_vcs_info.json) are not in the repository.
        mapfile -t paths < <({ diff -rq -N -x .cargo-ok -x Cargo.toml -x Cargo.lock -x .cargo_vcs_info.json "$src" "$crate" || true; } |
            sed -n 's/^Files .* and '"$crate"'\/\(.*\) differ$/\1/p' | sort)
    fi
    for path in "${paths[@]}"; do
        # A file the vendored copy leaves out (pingora-http ships no Cargo.toml.orig here) is
        # not a change.
        [[ -e $crate/$path ]] || continue
        repo_path=$crate/${path%.orig}
        diff -u -N --label "a/$repo_path" --label "b/$repo_path" "$src/$path" "$crate/$path" || true
    done
done
