#!/usr/bin/env bash
# Fleet scale (docs/PERFORMANCE.md, "Fleet scale"): metalvirtd on a simulated lab of NODES
# nodes (default 10,000; latencies as configured by default: power 200 ms, disk 20 ms, NIC
# 5 ms) measured with metalvirt-fleet, and libvirtd 9.0's test driver on the same listing.
# Usage: scripts/bench-fleet.sh [--nodes N] [--idle-secs S] [--state-base DIR]
#   --state-base puts the daemons' state and config directories on another filesystem
#   (for instance a journaled ext4) instead of /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libvirtd-test.sh
NODES=10000
IDLE=10
BASE=/tmp
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) NODES=$2; shift 2 ;;
    --idle-secs) IDLE=$2; shift 2 ;;
    --state-base) BASE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
for p in libvirt-daemon libvirt-clients; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvirt-daemon libvirt-clients; break; }
done
scripts/release-build.sh
LAB=$(mktemp -d "$BASE/metalvirt-fleet.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$LAB"
}
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# metalvirtd on N simulated nodes: sets MV_PID and MV_SOCK once it serves.
start_mv() {
  local dir=$LAB/mv-$1
  METALVIRT_LOG=warn ./target/release/metalvirtd --sim-nodes "$1" --socket-dir "$dir/run" \
    --state-dir "$dir/state" --config-dir "$dir/etc" 2>"$dir.log" &
  MV_PID=$!
  PIDS+=("$MV_PID")
  MV_SOCK=$dir/run/virtmetald-sock
  for _ in $(seq 600); do [ -S "$MV_SOCK" ] && break; sleep 0.05; done
  sleep 0.5
}

# Idle: start-up CPU, idle CPU and RSS with nothing defined; RSS of an empty lab (1 node).
start_mv 1
RSS1=$(rss "$MV_PID")
kill "$MV_PID"; wait "$MV_PID" 2>/dev/null || true
start_mv "$NODES"
PN=$MV_PID SOCK=$MV_SOCK
STARTUP=$(ticks "$PN")
RSSN=$(rss "$PN")
T0=$(ticks "$PN"); sleep "$IDLE"; T1=$(ticks "$PN")
awk -v n="$NODES" -v s="$STARTUP" -v a="$T0" -v b="$T1" -v hz="$hz" -v idle="$IDLE" \
  -v r1="$RSS1" -v rn="$RSSN" 'BEGIN { printf "{\"nodes\":%d,\"startup_cpu_s\":%.3f,\"idle_cpu_percent\":%.3f,\"rss_1_node_kib\":%d,\"rss_nodes_kib\":%d}\n", n, s / hz, 100 * (b - a) / hz / idle, r1, rn }' >"$LAB/idle.json"

# 1,000 starts over 50 connections, then NODES starts over NODES/20 connections.
./target/release/metalvirt-fleet --json --label "1000/50" --socket "$SOCK" --pid "$PN" \
  --domains 1000 --conns 50 --watch-secs 12 --list-rounds 50 >"$LAB/f1000.json"
./target/release/metalvirt-fleet --json --label "$NODES/$((NODES / 20))" --socket "$SOCK" --pid "$PN" \
  --domains "$NODES" --conns $((NODES / 20)) --watch-secs 20 --list-rounds 20 >"$LAB/fN.json"

# A crash with 1,000 domains running, and the restart: load, recover and reconcile every
# node (start-up CPU until ready).
./target/release/metalvirt-fleet --json --label keep --socket "$SOCK" --pid "$PN" \
  --domains 1000 --conns 50 --watch-secs 0 --list-rounds 1 --keep >/dev/null
kill -9 "$PN"; wait "$PN" 2>/dev/null || true
METALVIRT_LOG=info ./target/release/metalvirtd --sim-nodes "$NODES" --socket-dir "$LAB/mv-$NODES/run" \
  --state-dir "$LAB/mv-$NODES/state" --config-dir "$LAB/mv-$NODES/etc" 2>"$LAB/restart.log" &
PR=$!
PIDS+=("$PR")
for _ in $(seq 600); do grep -q '"ready"\| ready' "$LAB/restart.log" 2>/dev/null && break; sleep 0.05; done
sleep 0.5
awk -v t="$(ticks "$PR")" -v hz="$hz" 'BEGIN { printf "{\"restart_cpu_s\":%.3f}\n", t / hz }' >"$LAB/restart.json"
kill "$PR"; wait "$PR" 2>/dev/null || true

# libvirtd 9.0 with only its test driver: the same defines and listing (no hardware, so
# no starts to compare).
start_libvirtd_test "$LAB/libvirt" 'listen_tls = 0'
PIDS+=("$LV_PID")
sleep 0.2
./target/release/metalvirt-fleet --json --label libvirtd --socket "$LV_SOCK" \
  --name test:///default --pid "$LV_PID" --domains "$NODES" --conns 1 --list-rounds 20 --no-start \
  >"$LAB/lv.json"

/usr/bin/python3 - "$LAB" <<'PY'
import json, sys, os
d = sys.argv[1]
idle = json.load(open(os.path.join(d, "idle.json")))
f1, fn, lv, rs = (json.load(open(os.path.join(d, f)))
                  for f in ("f1000.json", "fN.json", "lv.json", "restart.json"))
n = idle["nodes"]
per_node = (idle["rss_nodes_kib"] - idle["rss_1_node_kib"]) * 1024 / (n - 1)
print(f"| measure ({n:,} simulated nodes) | metalvirtd |")
print("|---|---:|")
print(f"| start-up CPU (load, recover, reconcile) | {idle['startup_cpu_s']:.2f} s |")
print(f"| start-up CPU after a crash with 1,000 running (recover them, reconcile every node) | {rs['restart_cpu_s']:.2f} s |")
print(f"| idle CPU, nothing running | {idle['idle_cpu_percent']:.2f} % of one core |")
print(f"| RSS idle, above a 1-node lab | {idle['rss_nodes_kib'] - idle['rss_1_node_kib']:,} KiB ({per_node:,.0f} bytes per node) |")
for f in (f1, fn):
    dom, conns = f["label"].split("/")
    print(f"| {dom} defines, one client | {f['define_s']:.2f} s |")
    print(f"| {dom} starts over {conns} connections (one start {f['one_start_s']:.3f} s; perfect overlap {f['perfect_overlap_s']:.2f} s) | {f['start_all_s']:.2f} s = {f['start_vs_perfect']:.2f}× |")
    print(f"| CPU per start | {f['start_cpu_us_each']:,.0f} µs |")
    print(f"| {dom} destroys over {conns} connections | {f['destroy_all_s']:.2f} s = {f['destroy_vs_perfect']:.2f}× |")
    print(f"| CPU per destroy | {f['destroy_cpu_us_each']:,.0f} µs |")
    print(f"| daemon CPU with {dom} running (power watcher) | {f['watch_cpu_percent']:.2f} % of one core |")
    print(f"| RSS with {dom} running | {f['rss_running_kib']:,} KiB |")
print()
print(f"| listAllDomains, {n:,} domains defined (calls/s) | metalvirtd | libvirtd 9.0 test driver | ratio |")
print("|---|---:|---:|---:|")
print(f"| one call after another | {fn['list_all_per_s']:,.1f} | {lv['list_all_per_s']:,.1f} | {fn['list_all_per_s'] / lv['list_all_per_s']:.1f}× |")
PY
