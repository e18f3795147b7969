#!/usr/bin/env bash
# Side-by-side protocol benchmark: metalvirtd (simulated lab) and libvirtd 9.0 serving its
# built-in test driver, driven by the same client (metalvirt-bench) in the same run.
# Usage: scripts/bench.sh [extra metalvirt-bench args, e.g. --secs 5 --conns 8 --depth 4]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libvirtd-test.sh
for p in libvirt-daemon libvirt-clients; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvirt-daemon libvirt-clients; break; }
done
scripts/release-build.sh
LAB=$(mktemp -d /tmp/metalvirt-bench.XXXXXX)
cleanup() {
  [ -n "${LV_PID:-}" ] && kill "$LV_PID" 2>/dev/null && wait "$LV_PID" 2>/dev/null || true
  [ -n "${MV_PID:-}" ] && kill "$MV_PID" 2>/dev/null && wait "$MV_PID" 2>/dev/null || true
  rm -rf "$LAB"
}
trap cleanup EXIT

# libvirtd with only the test driver (no connection-driver modules are loaded).
start_libvirtd_test "$LAB/libvirt" 'listen_tls = 0'

# metalvirtd on its simulated lab.
cat > "$LAB/metalvirtd.toml" <<CONF
[sim]
nodes = 4
power_latency_ms = 0
disk_latency_ms = 0
nic_latency_ms = 0
CONF
env METALVIRT_LOG=warn ${MV_ENV:-} ./target/release/metalvirtd --config "$LAB/metalvirtd.toml" --socket-dir "$LAB/mv" \
  --state-dir "$LAB/mv-state" --config-dir "$LAB/mv-etc" 2>"$LAB/metalvirtd.log" &
MV_PID=$!
for i in $(seq 200); do
  [ -S "$LAB/libvirt/libvirt-sock" ] && [ -S "$LAB/mv/virtmetald-sock" ] && break
  sleep 0.05
done
sleep 0.2

./target/release/metalvirt-bench --json --label metalvirtd --socket "$LAB/mv/virtmetald-sock" \
  --name qemu:///system --pid "$MV_PID" "$@" > "$LAB/mv.json"
./target/release/metalvirt-bench --json --label "libvirtd 9.0 test driver" --socket "$LAB/libvirt/libvirt-sock" \
  --name test:///default --pid "$LV_PID" "$@" > "$LAB/lv.json"

/usr/bin/python3 - "$LAB/mv.json" "$LAB/lv.json" <<'PY'
import json, sys
mv, lv = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["GET_LIB_VERSION", "LOOKUP_BY_UUID+GET_INFO", "GET_XML_DESC", "LIST_ALL_DOMAINS", "DEFINE+UNDEFINE"]
print(f"| workload (calls/s) | metalvirtd | libvirtd 9.0 test driver | ratio |")
print(f"|---|---:|---:|---:|")
for k in keys:
    print(f"| {k} | {mv[k]:,.0f} | {lv[k]:,.0f} | {mv[k]/lv[k]:.1f}x |")
for k, label in [("rss_kib_empty", "RSS idle (KiB)"), ("rss_kib_with_domains", "RSS with 1000 domains (KiB)")]:
    print(f"| {label} | {mv[k]:,} | {lv[k]:,} | {mv[k]/lv[k]:.2f} |")
PY
