"""Fleet benchmark against real peers: one sushy-tools process emulating N Redfish systems
(its fake driver) and N Open vSwitch ports on one ovsdb-server (tests/blackbox/peers.py
OvsLab, OVN off), behind one metalvirtd with N nodes (disks simulated). In one run:

1. N domains started at once (one thread each, one libvirt connection): wall time, and the
   Redfish requests the starts cost per node;
2. the power watcher at its default interval (5 s) with all N running: Redfish requests per
   node per minute and the daemon's CPU;
3. N destroys at once: wall time; every port is gone again.

Run: scripts/bench-fleet-peers.sh [--nodes N] [--watch-secs S]   (builds the release daemon)
"""

import argparse
import collections
import os
import resource
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import libvirt  # noqa: E402

from blackbox import peers  # noqa: E402
from blackbox.harness import METALVIRT_NS, Daemon  # noqa: E402
from bmc_peers import count_lines  # noqa: E402


def node_toml(i, sushy, pw, system, lab):
    return f"""[[node]]
name = "n{i}"
cores = 8
memory_mib = 65536
[node.bmc]
driver = "redfish"
address = "{sushy.url}"
username = "{peers.USER}"
password_file = "{pw}"
insecure_http = true
system = "{system}"
[node.nics]
ovsdb = "{lab.db_addr}"
representors = ["rep{i}"]
wait = "none"
"""


def dom_xml(i):
    return f"""<domain type='kvm'><name>fleet-{i}</name><memory unit='GiB'>4</memory><vcpu>2</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='n{i}'/></metadata>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os><devices>
  <disk type='network' device='disk'><source protocol='rbd' name='volumes/fleet-{i}'/>
    <target dev='vda' bus='virtio'/></disk>
  <interface type='bridge'><mac address='fa:16:3e:50:{i // 256:02x}:{i % 256:02x}'/>
    <source bridge='br-int'/><virtualport type='openvswitch'/></interface>
  </devices></domain>"""


def all_at_once(f, items):
    errors = []

    def run(x):
        try:
            f(x)
        except libvirt.libvirtError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=run, args=(x,)) for x in items]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, errors


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests(sushy):
    return sum(count_lines(sushy.log_path, f"{m} /redfish/v1/") for m in ("GET", "PATCH", "POST"))


def main():
    os.environ.setdefault("METALVIRT_LOG", "warn,metalvirtd=info")
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--watch-secs", type=float, default=60.0)
    args = ap.parse_args()
    n = args.nodes
    # One BMC connection per node: sushy-tools (a thread and an SQLite handle per request)
    # needs more than the default 1,024 descriptors at 200 nodes. Children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    systems = [(str(uuid.UUID(int=0x5eed << 96 | i)), f"fleet-node-{i}", "Off") for i in range(n)]
    with peers.Sushy(systems) as sushy, peers.OvsLab(representors=1, ovn=False) as lab:
        pw = peers.write_password_file(lab.path("pw"))
        raw = "".join(node_toml(i, sushy, pw, systems[i][0], lab) for i in range(n))
        # The watcher at its default interval (the test harness polls every 100 ms).
        with Daemon(sim={"disk_latency_ms": 20, "nodes": 1}, raw=raw, ceph_secret=False,
                    extra="[watcher]\ninterval_ms = 5000\n") as d:
            conn = libvirt.open(d.uri)
            doms = [conn.defineXML(dom_xml(i)) for i in range(n)]
            r0 = requests(sushy)
            start_wall, start_errors = all_at_once(lambda dom: dom.create(), doms)
            started = n - len(start_errors)
            start_reqs = (requests(sushy) - r0) / n
            fds = len(os.listdir(f"/proc/{sushy.proc.pid}/fd"))
            plugged = sum(1 for r in lab.interfaces().values()
                          if r["external_ids"].get("metalvirt-node", "").startswith("n"))
            on = sum(1 for u, _, _ in systems if sushy.power(u) == "On")
            g0 = count_lines(sushy.log_path, "GET /redfish/v1/Systems/")
            with open(sushy.log_path, errors="replace") as f:
                skip = sum(1 for _ in f)
            c0 = cpu_seconds(d.proc.pid)
            time.sleep(args.watch_secs)
            cpu = (cpu_seconds(d.proc.pid) - c0) / args.watch_secs * 100
            polls = (count_lines(sushy.log_path, "GET /redfish/v1/Systems/") - g0) \
                * 60 / args.watch_secs / n
            running = [dom for dom in doms if dom.isActive()]
            # Each kind of request in the window, with its status: what the watcher asked.
            with open(sushy.log_path, errors="replace") as f:
                window = [ln.split('"') for ln in f.read().splitlines()[skip:]]
            kinds = collections.Counter(
                (" ".join(p[1].split(" ")[0:1] + ["/".join(p[1].split(" ")[1].split("/")[:4])]),
                 p[2].split()[0]) for p in window if len(p) >= 3 and "HTTP/1.1" in p[1])
            stop_wall, stop_errors = all_at_once(lambda dom: dom.destroy(), running)
            left = sum(1 for r in lab.interfaces().values()
                       if r["external_ids"].get("metalvirt-node", "").startswith("n"))
            for dom in doms:
                dom.undefine()
            conn.close()
    print(f"# {n} nodes: one sushy-tools (fake driver, {n} systems), one ovsdb-server ({n} ports)")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| {n} starts at once | {start_wall:.2f} s: {started} started ({plugged} ports "
          f"plugged, {on} servers on), {len(start_errors)} refused by the BMC |")
    for e in sorted(set(e.split(": POST")[0].split(": PATCH")[0].split(" node ")[0]
                        for e in start_errors)):
        print(f"|   failure | {e} |")
    print(f"| sushy-tools' open descriptors after the starts | {fds:,} |")
    print(f"| Redfish requests per start | {start_reqs:.1f} |")
    print(f"| watcher, {n} running: system GETs per node per minute | {polls:.1f} |")
    print(f"| daemon CPU while watching | {cpu:.2f} % of one core |")
    for (what, code), count in sorted(kinds.items()):
        print(f"|   {what} → {code} during the watch | {count * 60 / args.watch_secs / n:.1f} "
              "per node per minute |")
    print(f"| {len(running)} destroys at once | {stop_wall:.2f} s ({left} ports left, "
          f"{len(stop_errors)} failed) |")
    if plugged != started or left:
        sys.exit("a failed start left ports behind, or a destroy did")


if __name__ == "__main__":
    main()
