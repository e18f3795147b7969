#!/usr/bin/env bash
# TLS benchmark: calls/s and latency (p50/p99) of GET_LIB_VERSION and LOOKUP_BY_UUID+GET_INFO
# over metalvirtd's TLS listener and its unix socket, and over libvirtd 9.0's TLS listener
# (test driver), with the same client (metalvirt-bench) in the same run; plus what a new
# connection costs (connect, TLS handshake with client certificate, confirmation byte,
# AUTH_LIST, CONNECT_OPEN, one call, close).
# Usage: scripts/bench_tls.sh [extra metalvirt-bench args, e.g. --secs 5 --conns 8]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libvirtd-test.sh
for p in libvirt-daemon libvirt-clients python3-cryptography; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvirt-daemon libvirt-clients python3-cryptography; break; }
done
BIN=${BIN:-target/release}
[ "$BIN" = target/release ] && scripts/release-build.sh
LAB=$(mktemp -d /tmp/metalvirt-bench-tls.XXXXXX)
cleanup() {
  [ -n "${LV_PID:-}" ] && kill "$LV_PID" 2>/dev/null && wait "$LV_PID" 2>/dev/null || true
  [ -n "${MV_PID:-}" ] && kill "$MV_PID" 2>/dev/null && wait "$MV_PID" 2>/dev/null || true
  rm -rf "$LAB"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PYTHONPATH=tests /usr/bin/python3 -c 'import sys; from blackbox.pki import Pki; Pki(sys.argv[1])' "$LAB/pki"
PKI=$LAB/pki/server
CLIENT=$LAB/pki/clients/nova
MV_PORT=$(free_port)
LV_PORT=$(free_port)

start_libvirtd_test "$LAB/libvirt" 'listen_tls = 1' 'listen_addr = "127.0.0.1"' \
  "tls_port = \"$LV_PORT\"" "key_file = \"$PKI/serverkey.pem\"" \
  "cert_file = \"$PKI/servercert.pem\"" "ca_file = \"$PKI/cacert.pem\"" 'auth_tls = "none"' \
  -- --listen

cat > "$LAB/metalvirtd.toml" <<CONF
listen_addr = "127.0.0.1"
tls_port = $MV_PORT
key_file = "$PKI/serverkey.pem"
cert_file = "$PKI/servercert.pem"
ca_file = "$PKI/cacert.pem"
[sim]
nodes = 4
power_latency_ms = 0
disk_latency_ms = 0
nic_latency_ms = 0
CONF
env METALVIRT_LOG=warn "$BIN/metalvirtd" --listen --config "$LAB/metalvirtd.toml" --socket-dir "$LAB/mv" \
  --state-dir "$LAB/mv-state" --config-dir "$LAB/mv-etc" 2>"$LAB/metalvirtd.log" &
MV_PID=$!
for _ in $(seq 200); do
  [ -S "$LAB/libvirt/libvirt-sock" ] && [ -S "$LAB/mv/virtmetald-sock" ] && break
  sleep 0.05
done
sleep 0.3

common=(--json --domains 100 --workloads GET_LIB_VERSION,LOOKUP_BY_UUID+GET_INFO)
# Throughput (8 connections x 4 calls in flight, or what "$@" says), then latency at rest
# (one connection, one call at a time) and connection set-up.
bench() { # label, json prefix, endpoint args...
  local label=$1 out=$2; shift 2
  "$BIN/metalvirt-bench" "${common[@]}" --label "$label" "$@" "${extra[@]}" > "$LAB/$out.json"
  "$BIN/metalvirt-bench" "${common[@]}" --label "$label" --conns 1 --depth 1 --secs 2 \
    --connect-rounds 200 "$@" > "$LAB/$out-1.json"
}
extra=("$@")
bench "metalvirtd unix" mv-unix --socket "$LAB/mv/virtmetald-sock" --name qemu:///system --pid "$MV_PID"
bench "metalvirtd TLS" mv-tls --tls "127.0.0.1:$MV_PORT" --pki "$CLIENT" --name qemu:///system --pid "$MV_PID"
bench "libvirtd 9.0 TLS" lv-tls --tls "127.0.0.1:$LV_PORT" --pki "$CLIENT" --name test:///default --pid "$LV_PID"

/usr/bin/python3 - "$LAB" <<'PY'
import json, sys
lab = sys.argv[1]
load = lambda n: json.load(open(f"{lab}/{n}.json"))
runs = [("mv-unix", "metalvirtd unix"), ("mv-tls", "metalvirtd TLS"), ("lv-tls", "libvirtd 9.0 TLS")]
full = {k: load(k) for k, _ in runs}
one = {k: load(k + "-1") for k, _ in runs}
ms = lambda us: f"{us / 1000:.2f}"
print("| measure | " + " | ".join(l for _, l in runs) + " | metalvirtd TLS / libvirtd TLS |")
print("|---|---:|---:|---:|---:|")
for w in ["GET_LIB_VERSION", "LOOKUP_BY_UUID+GET_INFO"]:
    cells = [f"{full[k][w]:,.0f}" for k, _ in runs]
    print(f"| {w}: calls/s, 8 conns x 4 in flight | " + " | ".join(cells) +
          f" | {full['mv-tls'][w] / full['lv-tls'][w]:.1f}x |")
    cells = [f"{ms(full[k][w + '_p99_us'])}" for k, _ in runs]
    print(f"| {w}: p99 ms under that load | " + " | ".join(cells) + " | |")
    cells = [f"{ms(one[k][w + '_p50_us'])} / {ms(one[k][w + '_p99_us'])}" for k, _ in runs]
    print(f"| {w}: p50 / p99 ms, one call at a time | " + " | ".join(cells) +
          f" | {one['lv-tls'][w + '_p99_us'] / one['mv-tls'][w + '_p99_us']:.1f}x lower p99 |")
cells = [f"{ms(one[k]['connect_p50_us'])} / {ms(one[k]['connect_p99_us'])}" for k, _ in runs]
print("| new connection p50 / p99 ms (connect, handshake, open, one call, close) | " +
      " | ".join(cells) + f" | {one['lv-tls']['connect_p50_us'] / one['mv-tls']['connect_p50_us']:.1f}x faster |")
PY
