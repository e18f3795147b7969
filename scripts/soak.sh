#!/usr/bin/env bash
# Soak benchmark: metalvirtd (release, simulated lab) under well-behaved clients doing mixed
# work (reads, define, start/destroy, NIC hot-plug) while clients that never read and a flood
# of idle read-only connections try to starve them. Prints the table docs/RELIABILITY.md keeps.
# Usage: scripts/soak.sh [metalvirt-soak args, e.g. --clients 200 --calls 1000]
#        BIN=target/debug scripts/soak.sh ...   (a debug build, e.g. the test suite's smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
if [ "$BIN" = target/release ]; then scripts/release-build.sh; fi
# One descriptor per connection, for the daemon and for the load generator.
ulimit -n 8192
LAB=$(mktemp -d /tmp/metalvirt-soak.XXXXXX)
cleanup() {
  [ -n "${MV_PID:-}" ] && kill "$MV_PID" 2>/dev/null && wait "$MV_PID" 2>/dev/null || true
  rm -rf "$LAB"
}
trap cleanup EXIT
cat > "$LAB/metalvirtd.toml" <<CONF
client_write_timeout_s = 5
[sim]
nodes = 256
power_latency_ms = 20
graceful_shutdown_ms = 50
disk_latency_ms = 2
nic_latency_ms = 1
CONF
env METALVIRT_LOG=warn ${MV_ENV:-} "$BIN/metalvirtd" --config "$LAB/metalvirtd.toml" --socket-dir "$LAB/run" \
  --state-dir "$LAB/state" --config-dir "$LAB/etc" 2>"$LAB/metalvirtd.log" &
MV_PID=$!
for _ in $(seq 200); do [ -S "$LAB/run/virtmetald-sock" ] && break; sleep 0.05; done
sleep 0.3
set +e
"$BIN/metalvirt-soak" --socket "$LAB/run/virtmetald-sock" --ro-socket "$LAB/run/virtmetald-sock-ro" \
  --pid "$MV_PID" "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "soak: errors (daemon log follows)" >&2
  tail -n 30 "$LAB/metalvirtd.log" >&2
fi
exit "$rc"
