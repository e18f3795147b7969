"""BMC power benchmark against the real peers (sushy-tools Redfish emulator, pyghmi and
OpenIPMI ipmi_sim), in one run:

1. CREATE → RUNNING through metalvirtd (python3-libvirt `dom.create()`, which returns once
   the BMC reports On) versus the same BMC calls made directly with curl / ipmitool: the
   power-state read, the boot override, the power on, and the read that sees On. The number
   of BMC requests metalvirtd made per start is counted on the peer (sushy's access log,
   an ipmitool wrapper) to show both sides make the same calls.
2. Watcher load: BMC requests per node per minute at the default 5 s interval (power state,
   and the sensor reads every sixth round).

Run: scripts/bench-bmc.sh [--rounds N] [--watch-secs S]   (builds the release daemon first)
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The repository's tests/ holds the black-box test package whose harness and peers this uses.
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import libvirt  # noqa: E402

from blackbox import peers  # noqa: E402
from blackbox.harness import METALVIRT_NS, Daemon  # noqa: E402

UUID = "27946b59-9e44-4fa7-8e91-f3527a1ef094"


def dom_xml(name, node):
    return f"""<domain type='kvm'><name>{name}</name><memory unit='GiB'>4</memory><vcpu>2</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='{node}'/></metadata>
  <os><type arch='x86_64'>hvm</type><boot dev='network'/></os></domain>"""


def node_toml(name, driver, address, pw, extra=""):
    return f"""[[node]]
name = "{name}"
cores = 8
memory_mib = 65536
[node.bmc]
driver = "{driver}"
address = "{address}"
username = "admin"
password_file = "{pw}"
{"insecure_http = true" if address.startswith("http://") else ""}
{extra}
"""


def spy_script(d):
    log = os.path.join(d, "ipmitool.log")
    path = os.path.join(d, "ipmitool-count")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho \"$*\" >> {log}\nexec ipmitool \"$@\"\n")
    os.chmod(path, 0o755)
    return path, log


def count_lines(path, *needles):
    try:
        with open(path, errors="replace") as f:
            return sum(1 for ln in f if all(n in ln for n in needles))
    except FileNotFoundError:
        return 0


def curl(sushy, method, path, body=None):
    argv = ["curl", "-sf", "-o", "/dev/null", "-u", f"{peers.USER}:{peers.PASSWORD}",
            "-X", method, sushy.url + path]
    if body:
        argv += ["-H", "Content-Type: application/json", "-d", body]
    subprocess.run(argv, check=True)


def curl_power(sushy):
    out = subprocess.run(["curl", "-sf", "-u", f"{peers.USER}:{peers.PASSWORD}",
                          sushy.url + sushy.system_path(UUID)],
                         check=True, capture_output=True, text=True).stdout
    return '"PowerState": "On"' in out or '"PowerState":"On"' in out


def direct_redfish_start(sushy):
    sp = sushy.system_path(UUID)
    curl(sushy, "GET", sp)
    curl(sushy, "PATCH", sp, '{"Boot":{"BootSourceOverrideTarget":"Pxe",'
                             '"BootSourceOverrideEnabled":"Continuous"}}')
    curl(sushy, "POST", sp + "/Actions/ComputerSystem.Reset", '{"ResetType":"On"}')
    while not curl_power(sushy):
        time.sleep(0.02)


def ipmitool(port, *args):
    subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U",
                    peers.USER, "-E", "-C", "3", "-R", "3", "-N", "1", *args], check=True,
                   capture_output=True, env=dict(os.environ, IPMI_PASSWORD=peers.PASSWORD))


def direct_ipmi_start(port):
    ipmitool(port, "chassis", "status")
    ipmitool(port, "chassis", "bootdev", "pxe", "options=persistent")
    ipmitool(port, "chassis", "power", "on")
    ipmitool(port, "chassis", "status")


def direct_ipmi_off(port):
    ipmitool(port, "chassis", "power", "off")


def measure(rounds, start, stop):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        start()
        times.append(time.perf_counter() - t)
        stop()
    return statistics.median(times) * 1000


def main():
    os.environ.setdefault("METALVIRT_LOG", "warn,metalvirtd=info")
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--watch-secs", type=float, default=60.0)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="metalvirt-bmcbench")
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    pw = peers.write_password_file(os.path.join(work, "pw"))
    spy, spy_log = spy_script(work)
    rows = []
    with peers.Sushy([(UUID, "bm-node-1", "Off")]) as sushy, peers.Pyghmi(1) as ghmi, \
            peers.IpmiSim() as isim:
        raw = (node_toml("rf", "redfish", sushy.url, pw)
               + node_toml("ghmi", "ipmi", f"127.0.0.1:{ghmi.ports[0]}", pw, f'ipmitool = "{spy}"')
               + node_toml("isim", "ipmi", f"127.0.0.1:{isim.port}", pw, f'ipmitool = "{spy}"'))
        sim0 = {"power_latency_ms": 0, "disk_latency_ms": 0, "nic_latency_ms": 0}
        with Daemon(sim=sim0, extra="[watcher]\ninterval_ms = 600000\n", raw=raw,
                    ceph_secret=False) as d:
            conn = libvirt.open(d.uri)
            doms = {n: conn.defineXML(dom_xml(f"bench-{n}", n)) for n in ("rf", "ghmi", "isim")}
            # Warm up (Redfish discovery happens once per BMC) and count requests per start.
            for n, dom in doms.items():
                dom.create()
                dom.destroy()
            before = (count_lines(sushy.log_path, "GET /redfish")
                      + count_lines(sushy.log_path, "PATCH /redfish")
                      + count_lines(sushy.log_path, "POST /redfish"))
            doms["rf"].create()
            after = (count_lines(sushy.log_path, "GET /redfish")
                     + count_lines(sushy.log_path, "PATCH /redfish")
                     + count_lines(sushy.log_path, "POST /redfish"))
            doms["rf"].destroy()
            rf_calls = after - before
            before = count_lines(spy_log)
            doms["ghmi"].create()
            ipmi_calls = count_lines(spy_log) - before
            doms["ghmi"].destroy()

            mv = measure(args.rounds, doms["rf"].create, doms["rf"].destroy)
            direct = measure(args.rounds, lambda: direct_redfish_start(sushy),
                             lambda: sushy.reset(UUID, "ForceOff"))
            rows.append(("Redfish (sushy-tools, HTTP + basic auth)", rf_calls, mv, direct, "curl"))
            for n, peer, port in (("ghmi", "pyghmi", ghmi.ports[0]),
                                  ("isim", "OpenIPMI ipmi_sim", isim.port)):
                mv = measure(args.rounds, doms[n].create, doms[n].destroy)
                direct = measure(args.rounds, lambda: direct_ipmi_start(port),
                                 lambda: direct_ipmi_off(port))
                rows.append((f"IPMI ({peer})", ipmi_calls, mv, direct, "ipmitool"))
            conn.close()

        # Watcher load at the default interval.
        with Daemon(sim=sim0, extra="[watcher]\ninterval_ms = 5000\n", raw=raw,
                    ceph_secret=False) as d:
            conn = libvirt.open(d.uri)
            for n in ("rf", "ghmi", "isim"):
                conn.defineXML(dom_xml(f"watch-{n}", n)).create()
            rf0 = count_lines(sushy.log_path, "GET /redfish/v1/Systems/")
            ch0 = count_lines(sushy.log_path, "GET /redfish/v1/Chassis/")
            # Per BMC (its port): chassis status sessions, and sensor (SDR) sessions.
            ipmi_count = {n: (lambda what, p=f"-p {port} ": count_lines(spy_log, p, what))
                          for n, port in (("ghmi", ghmi.ports[0]), ("isim", isim.port))}
            ip0 = {n: (c("chassis status"), c("sdr list")) for n, c in ipmi_count.items()}
            time.sleep(args.watch_secs)
            rf_per_min = (count_lines(sushy.log_path, "GET /redfish/v1/Systems/") - rf0) \
                * 60 / args.watch_secs
            # Sensor reads (the chassis' Thermal; sushy-tools has no Power resource).
            ch_per_min = (count_lines(sushy.log_path, "GET /redfish/v1/Chassis/") - ch0) \
                * 60 / args.watch_secs
            ip_per_min = {n: tuple((now - then) * 60 / args.watch_secs for now, then in
                                   zip((c("chassis status"), c("sdr list")), ip0[n]))
                          for n, c in ipmi_count.items()}
            for dom in conn.listAllDomains():
                dom.destroy()
            conn.close()

    print(f"rounds: {args.rounds} (median); watcher window: {args.watch_secs:.0f} s")
    print("| peer | BMC calls per start | CREATE→RUNNING via metalvirtd | same calls direct "
          "| ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, calls, mv, direct, tool in rows:
        print(f"| {name} | {calls} | {mv:.1f} ms | {direct:.1f} ms ({tool}) | "
              f"{mv / direct:.2f}× |")
    print(f"| watcher, Redfish | {rf_per_min:.1f} system GETs + {ch_per_min:.1f} sensor GETs "
          "per node per minute | | | |")
    for n, peer in (("isim", "ipmi_sim, 2 SDR sensors"), ("ghmi", "pyghmi, no SDR")):
        status, sdr = ip_per_min[n]
        print(f"| watcher, IPMI ({peer}) | {status:.1f} `chassis status` + {sdr:.1f} "
              "`sdr list` sessions per node per minute | | | |")

if __name__ == "__main__":
    main()
