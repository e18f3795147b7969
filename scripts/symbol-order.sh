#!/usr/bin/env bash
# Records packaging/symbol-order.txt: the functions the release daemon runs while it starts,
# idles and serves scripts/bench.sh's workloads (lookups, XML, listings, defines), as
# callgrind sees them. build.rs has the linker lay them out together, so the code a
# running daemon touches shares few 64 KiB fault-around windows (docs/PERFORMANCE.md,
# "Memory"). Re-run after dependency upgrades (symbol names carry a hash of the crate
# versions) or when the idle RSS grows; then rebuild.
#
#   scripts/symbol-order.sh [OUTPUT]   (default packaging/symbol-order.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
cargo build --release -q --bin metalvirtd --bin metalvirt-bench
LAB=$(mktemp -d /tmp/metalvirt-order.XXXXXX)
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$LAB"' EXIT
cat > "$LAB/mv.toml" <<CONF
[sim]
nodes = 4
power_latency_ms = 0
disk_latency_ms = 0
nic_latency_ms = 0
CONF
METALVIRT_LOG=warn valgrind --tool=callgrind --demangle=no --callgrind-out-file="$LAB/cg.out" \
  target/release/metalvirtd --config "$LAB/mv.toml" --socket-dir "$LAB/run" \
  --state-dir "$LAB/state" --config-dir "$LAB/etc" 2>"$LAB/valgrind.log" &
PID=$!
for _ in $(seq 600); do [ -S "$LAB/run/virtmetald-sock" ] && break; sleep 0.1; done
sleep 2
target/release/metalvirt-bench --json --socket "$LAB/run/virtmetald-sock" --name qemu:///system \
  --secs 1 --conns 2 --depth 2 >/dev/null
kill -TERM "$PID"
wait "$PID" || true
PID=
# The Rust functions callgrind saw run, sorted (a stable file: the order inside the group
# matters little), without the '2 suffix callgrind gives a second local symbol of one name.
grep -oP '^c?fn=\(\d+\) \K.*' "$LAB/cg.out" | grep -E '^(_ZN|_R)' | sed "s/'[0-9]*$//" \
  | LC_ALL=C sort -u > "${1:-packaging/symbol-order.txt}"
echo "${1:-packaging/symbol-order.txt}: $(wc -l < "${1:-packaging/symbol-order.txt}") functions"
