#!/usr/bin/env bash
# Prints what a vendored pingora crate changes against the same version as published on
# crates.io (as cargo unpacked it under $CARGO_HOME/registry/src), as a patch that applies at
# the root of the pingora repository with `patch -p1` (a crate's Cargo.toml.orig is its
# Cargo.toml there). With paths, only those files (one crate can carry more than one patch).
#   bash vendor/diff.sh CRATE [PATH ...]     e.g. bash vendor/diff.sh pingora-core src/connectors/mod.rs
# Each patch's note (vendor/*.patch.md) gives the command that regenerates its committed diff.
set -euo pipefail
cd "$(dirname "$0")"
crate=${1:?usage: diff.sh CRATE [PATH ...]}
shift
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$crate/Cargo.toml" | head -1)
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
src=$(compgen -G "$registry/*/$crate-$version" | head -1 || true)
[[ -n $src ]] || { echo "$crate $version is not unpacked under $registry: run cargo fetch" >&2; exit 1; }
if (($# == 0)); then
    # -q lists changed files only; the packaging outputs (normalized Cargo.toml, Cargo.lock,
    # .cargo_vcs_info.json) are not in the repository.
    mapfile -t paths < <({ diff -rq -x .cargo-ok -x Cargo.toml -x Cargo.lock -x .cargo_vcs_info.json "$src" "$crate" || true; } |
        sed -n 's/^Files .* and '"$crate"'\/\(.*\) differ$/\1/p' | sort)
    set -- "${paths[@]}"
fi
for path in "$@"; do
    repo_path=$crate/${path%.orig}
    diff -u --label "a/$repo_path" --label "b/$repo_path" "$src/$path" "$crate/$path" || true
done
