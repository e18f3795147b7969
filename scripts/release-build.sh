#!/usr/bin/env bash
# The release build the benchmarks and the package use: `cargo build --release` of the given
# binaries (default all), with the daemon's symbol order (build.rs,
# packaging/symbol-order.txt) recorded again from the fresh build and the binaries linked
# again when it changed: any change to which functions the daemon runs, or to their names
# (a dependency or compiler upgrade changes most of them: they carry a hash of the crate
# graph), leaves code the daemon runs scattered through the binary, ~64 KiB of resident
# memory for each function out of place (docs/PERFORMANCE.md, "Memory"). Recording needs
# valgrind (scripts/symbol-order.sh, ~15 s); without it the build goes on as it is.
#
#   scripts/release-build.sh [cargo build arguments, e.g. --bin metalvirtd]
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--bins)
cargo build --release -q "${args[@]}"
order=packaging/symbol-order.txt
if command -v valgrind >/dev/null; then
  fresh=$(mktemp)
  trap 'rm -f "$fresh"' EXIT
  scripts/symbol-order.sh "$fresh" >/dev/null
  if ! cmp -s "$fresh" "$order"; then
    echo "release-build: the daemon's symbol order changed; linking again" >&2
    cp "$fresh" "$order"
    cargo build --release -q "${args[@]}"
  fi
fi
