#!/usr/bin/env bash
# The release build the benchmarks and the package use: `cargo build --release` of the given
# binaries (default all), with the daemon's symbol order (build.rs,
# packaging/symbol-order.txt) recorded again from the fresh build (added to what is
# recorded and still exists) and the binaries linked again when it grew or lost names: any change to which functions the daemon runs, or to their names
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
  # What one run executes varies a little (threads, timing): keep every recorded name the
  # binary still has, add the new ones, and link again only when the list changed.
  nm --defined-only target/release/metalvirtd | awk '{print $3}' | LC_ALL=C sort -u \
    | LC_ALL=C comm -12 - <(LC_ALL=C sort -u "$order") >> "$fresh"
  LC_ALL=C sort -u -o "$fresh" "$fresh"
  if ! cmp -s "$fresh" "$order"; then
    echo "release-build: the daemon's symbol order changed; linking again" >&2
    cp "$fresh" "$order"
    cargo build --release -q "${args[@]}"
  fi
fi
