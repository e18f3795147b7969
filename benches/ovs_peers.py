"""NIC plumbing benchmark against real Open vSwitch (tests/blackbox/peers.py OvsLab: ovsdb-server,
ovs-vswitchd in its own netns with veth representors; OVN off), in one run:

1. Plug/unplug latency of one interface: a raw RFC 7047 transact (this script's own minimal
   JSON-RPC client, the same operations metalvirtd sends) versus a live attach/detach through
   metalvirtd (python3-libvirt attachDeviceFlags/detachDeviceFlags), on a node waiting for
   the commit only and on one waiting for ovs-vswitchd's ofport. The libvirt-level figure
   includes the RPC round trip and the two durable writes of the domain's live state (the
   journal step before the plug, the new live definition after it).
2. The NIC backend alone, in process (`metalvirt-ovs-bench`, built next to metalvirtd):
   `OvsNics` plug/unplug versus the bare transactions on the same server, and 100 plugs at
   once (one per node) versus 100 concurrent bare transacts.
3. 100 domains with one interface each, on 100 nodes sharing one OVSDB, started
   concurrently through metalvirtd: wall time and per-start time.

Run: scripts/bench-ovs.sh [--rounds N] [--domains N]   (builds the release daemon first)
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The repository's tests/ holds the black-box test package whose harness and peers this uses.
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import libvirt  # noqa: E402

from blackbox import peers  # noqa: E402
from blackbox.harness import METALVIRT_NS, Daemon  # noqa: E402

L = libvirt


class Raw:
    """A minimal OVSDB JSON-RPC client: one unix socket, one call at a time."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.dec = json.JSONDecoder()
        self.buf = ""
        self.id = 0

    def call(self, method, params):
        self.id += 1
        self.s.sendall(json.dumps({"id": self.id, "method": method, "params": params}).encode())
        while True:
            try:
                msg, end = self.dec.raw_decode(self.buf)
                self.buf = self.buf[end:].lstrip()
                if msg.get("id") == self.id:
                    return msg["result"]
                continue
            except ValueError:
                pass
            self.buf += self.s.recv(65536).decode()

    def transact(self, *ops):
        res = self.call("transact", ["Open_vSwitch", *ops])
        errs = [r for r in res if isinstance(r, dict) and r.get("error")]
        if errs:
            raise RuntimeError(errs)
        return res

    def plug(self, rep, mac, n):
        ids = ["map", [["iface-id", f"raw-{n}"], ["attached-mac", mac], ["iface-status", "active"],
                       ["vm-uuid", "00000000-0000-0000-0000-000000000000"]]]
        return self.transact(
            {"op": "wait", "table": "Bridge", "timeout": 0, "where": [["name", "==", "br-int"]],
             "columns": ["name"], "until": "==", "rows": [{"name": "br-int"}]},
            {"op": "wait", "table": "Interface", "timeout": 0, "where": [["name", "==", rep]],
             "columns": ["name"], "until": "==", "rows": []},
            {"op": "insert", "table": "Interface", "uuid-name": "i",
             "row": {"name": rep, "external_ids": ids}},
            {"op": "insert", "table": "Port", "uuid-name": "p",
             "row": {"name": rep, "interfaces": ["named-uuid", "i"]}},
            {"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
             "mutations": [["ports", "insert", ["set", [["named-uuid", "p"]]]]]},
            {"op": "mutate", "table": "Open_vSwitch", "where": [],
             "mutations": [["next_cfg", "+=", 1]]})[3]["uuid"][1]

    def unplug(self, port_uuid):
        self.transact(
            {"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
             "mutations": [["ports", "delete", ["set", [["uuid", port_uuid]]]]]},
            {"op": "mutate", "table": "Open_vSwitch", "where": [],
             "mutations": [["next_cfg", "+=", 1]]})

    def ofport(self, rep):
        r = self.transact({"op": "select", "table": "Interface", "where": [["name", "==", rep]],
                           "columns": ["ofport"]})
        rows = r[0]["rows"]
        v = rows[0]["ofport"] if rows else None
        return v if isinstance(v, int) else None


def ms(v):
    return f"{statistics.median(v) * 1000:.2f} ms"


def node_toml(name, lab=None, reps=None, wait="none"):
    nics = f"""[node.nics]
ovsdb = "{lab.db_addr}"
representors = ["{reps}"]
wait = "{wait}"
""" if lab else ""
    return f"""[[node]]
name = "{name}"
cores = 2
memory_mib = 4096
[node.bmc]
driver = "sim"
{nics}"""


def dom_xml(name, node, nics=""):
    return f"""<domain type='kvm'><name>{name}</name><memory unit='GiB'>1</memory><vcpu>1</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='{node}'/></metadata>
  <os><type arch='x86_64'>hvm</type><boot dev='network'/></os><devices>{nics}</devices></domain>"""


def nic(mac):
    return (f"<interface type='bridge'><mac address='{mac}'/><source bridge='br-int'/>"
            f"<virtualport type='openvswitch'/></interface>")


def timed(f, *a):
    t = time.perf_counter()
    r = f(*a)
    return time.perf_counter() - t, r


def bench_latency(rounds, lab, conn):
    raw = Raw(lab.path("db.sock"))
    results = {}
    # Raw transact: commit only, and until ovs-vswitchd gave an ofport (polled, 0.2 ms steps).
    plug, unplug, plug_ofp = [], [], []
    for i in range(rounds):
        t, port = timed(raw.plug, "pf0vf0", "52:54:00:10:00:01", i)
        plug.append(t)
        t, _ = timed(raw.unplug, port)
        unplug.append(t)
        t0 = time.perf_counter()
        port = raw.plug("pf0vf0", "52:54:00:10:00:01", i)
        while raw.ofport("pf0vf0") in (None, 0):
            time.sleep(0.0002)
        plug_ofp.append(time.perf_counter() - t0)
        raw.unplug(port)
        time.sleep(0.01)
    results["raw"] = (plug, unplug, plug_ofp)
    for node in ("commit", "ofport"):
        dom = conn.createXML(dom_xml(f"lat-{node}", f"lat-{node}"), 0)
        a, d = [], []
        for i in range(rounds):
            x = nic(f"52:54:00:20:00:{i % 200:02x}")
            t, _ = timed(dom.attachDeviceFlags, x, L.VIR_DOMAIN_AFFECT_LIVE)
            a.append(t)
            t, _ = timed(dom.detachDeviceFlags, x, L.VIR_DOMAIN_AFFECT_LIVE)
            d.append(t)
        dom.destroy()
        results[node] = (a, d)
    return results


def all_at_once(f, items):
    """Runs f(item) for every item in its own thread, all started together; wall seconds."""
    threads = [threading.Thread(target=f, args=(x,)) for x in items]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def bench_concurrent(n, lab, conn):
    doms = [conn.defineXML(dom_xml(f"c{i}", f"c{i}", nic(f"52:54:00:30:{i // 256:02x}:{i % 256:02x}")))
            for i in range(n)]
    errors = []

    def start(d):
        try:
            d.create()
        except libvirt.libvirtError as e:
            errors.append(str(e))

    wall = all_at_once(start, doms)
    if errors:
        raise RuntimeError(errors[:3])
    plugged = sum(1 for r in lab.interfaces().values()
                  if r["external_ids"].get("metalvirt-node", "").startswith("c"))
    for d in doms:
        d.destroy()
        d.undefine()
    # The same number of raw transacts, concurrently, one connection each (as 100 clients).
    raws = [Raw(lab.path("db.sock")) for _ in range(n)]
    ports = [None] * n

    def raw_plug(i):
        ports[i] = raws[i].plug(f"cr{i}", f"52:54:00:40:{i // 256:02x}:{i % 256:02x}", i)

    raw_wall = all_at_once(raw_plug, range(n))
    for i in range(n):
        raws[i].unplug(ports[i])
    return wall, plugged, raw_wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--domains", type=int, default=100)
    args = ap.parse_args()
    n = args.domains
    # The concurrent part plugs representors c<i> that have no netdev: commit only.
    with peers.OvsLab(representors=2, ovn=False) as lab:
        raw = "".join([node_toml("lat-commit", lab, "pf0vf0"),
                       node_toml("lat-ofport", lab, "pf0vf1", wait="ofport")]
                      + [node_toml(f"c{i}", lab, f"cr{i}") for i in range(n)])
        with Daemon(sim={"nic_latency_ms": 0, "power_latency_ms": 0, "nodes": 1},
                    raw=raw) as d:
            conn = libvirt.open(d.uri)
            r = bench_latency(args.rounds, lab, conn)
            wall, plugged, raw_wall = bench_concurrent(n, lab, conn)
            conn.close()
        tool = os.path.join(os.path.dirname(os.environ["METALVIRTD"]), "metalvirt-ovs-bench")
        inproc = subprocess.run([tool, "--ovsdb", lab.db_addr, "--rounds", str(args.rounds * 4),
                                 "--nodes", str(n)], capture_output=True, text=True, check=True,
                                timeout=600).stdout
    plug, unplug, plug_ofp = r["raw"]
    med = lambda v: statistics.median(v) * 1000  # noqa: E731
    print(f"# OVS plug/unplug, {args.rounds} rounds, medians")
    print("| path | plug | unplug |")
    print("|---|---:|---:|")
    print(f"| raw transact (commit) | {ms(plug)} | {ms(unplug)} |")
    print(f"| raw transact + poll until ofport | {ms(plug_ofp)} | |")
    for node, label in (("commit", "metalvirtd attach/detach, wait = none"),
                        ("ofport", "metalvirtd attach/detach, wait = ofport")):
        a, dd = r[node]
        print(f"| {label} | {ms(a)} | {ms(dd)} |")
    print(f"\nlibvirt-level plug over the raw transact: "
          f"{med(r['commit'][0]) - med(plug):+.2f} ms (wait = none), "
          f"{med(r['ofport'][0]) - med(plug_ofp):+.2f} ms (wait = ofport vs raw + poll)")
    print()
    print(inproc, end="")
    print(f"\n# {n} domains x 1 interface on {n} nodes, started concurrently")
    print(f"metalvirtd: {wall * 1000:.0f} ms wall, {plugged} ports plugged, "
          f"{wall * 1000 / n:.2f} ms per start")
    print(f"raw: {n} concurrent transacts (one client each) in {raw_wall * 1000:.0f} ms")
    if plugged != n:
        sys.exit(f"expected {n} ports, saw {plugged}")


if __name__ == "__main__":
    main()
