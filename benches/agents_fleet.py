"""Controller mode at fleet scale (docs/PERFORMANCE.md, "Controller mode"): one metalvirtd
controlling N nodes, each through its own metalvirt-agent process (mutual TLS on loopback;
each agent in front of the simulated lab's disks, NICs and BMC with their default
latencies: power 200 ms, disk 20 ms, NIC 5 ms). metalvirt-fleet drives the controller:
N nova-like domains defined, started over --conns connections at once, listed, destroyed.

Reported: the fleet tool's figures (start wall time against the perfect overlap, CPU per
start), the controller's CPU with every link idle (pings), its RSS, and the agents' RSS.

Run (release build): /usr/bin/python3 benches/agents_fleet.py [--nodes 100] [--conns 10]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from blackbox.pki import AgentPki  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def free_ports(n):
    import socket
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--idle-secs", type=float, default=20)
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release"))
    a = ap.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    lab = tempfile.mkdtemp(prefix="metalvirt-agents")
    procs = []
    try:
        pki = AgentPki(os.path.join(lab, "pki"))
        ports = free_ports(a.nodes)
        agents = []
        for i, port in enumerate(ports):
            d = os.path.join(lab, f"agent-{i}")
            os.makedirs(d)
            with open(os.path.join(d, "agent.toml"), "w") as f:
                f.write(f"""node = "bm-{i}"
listen = "127.0.0.1:{port}"
cert_file = "{pki.path('agent', 'cert.pem')}"
key_file = "{pki.path('agent', 'key.pem')}"
ca_file = "{pki.path('ca.pem')}"
state_dir = "{d}/state"
[bmc]
driver = "sim"
""")
            log = open(os.path.join(d, "log"), "w")
            p = subprocess.Popen([os.path.join(a.bin, "metalvirt-agent"), "-f",
                                  os.path.join(d, "agent.toml")], stdout=log, stderr=log,
                                 env=dict(os.environ, METALVIRT_LOG="warn"))
            procs.append(p)
            agents.append(p)
        cfg = os.path.join(lab, "metalvirtd.toml")
        with open(cfg, "w") as f:
            f.write(f'socket_dir = "{lab}/run"\nconfig_dir = "{lab}/etc"\n'
                    f'state_dir = "{lab}/state"\n')
            for i, port in enumerate(ports):
                f.write(f"""
[[node]]
name = "bm-{i}"
cores = 16
memory_mib = 65536
[node.bmc]
driver = "agent"
[node.agent]
address = "127.0.0.1:{port}"
server_name = "localhost"
cert_file = "{pki.path('controller', 'cert.pem')}"
key_file = "{pki.path('controller', 'key.pem')}"
ca_file = "{pki.path('ca.pem')}"
""")
        log = open(os.path.join(lab, "metalvirtd.log"), "w")
        t0 = time.monotonic()
        mv = subprocess.Popen([os.path.join(a.bin, "metalvirtd"), "--config", cfg],
                              stdout=log, stderr=log, env=dict(os.environ, METALVIRT_LOG="info"))
        procs.append(mv)
        sock = os.path.join(lab, "run", "virtmetald-sock")
        while not os.path.exists(sock):
            if mv.poll() is not None or time.monotonic() - t0 > 60:
                raise SystemExit(open(os.path.join(lab, "metalvirtd.log")).read()[-3000:])
            time.sleep(0.05)

        def connected():
            with open(os.path.join(lab, "metalvirtd.log")) as f:
                return f.read().count("connected to the node's agent")
        while connected() < a.nodes and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        up = time.monotonic() - t0
        startup_cpu = ticks(mv.pid) / hz
        c0, w0 = ticks(mv.pid), time.monotonic()
        time.sleep(a.idle_secs)
        idle_cpu = (ticks(mv.pid) - c0) / hz / (time.monotonic() - w0)
        idle_rss = rss_kib(mv.pid)
        r = subprocess.run([os.path.join(a.bin, "metalvirt-fleet"), "--socket", sock,
                            "--pid", str(mv.pid), "--domains", str(a.nodes), "--conns",
                            str(a.conns), "--watch-secs", "5", "--list-rounds", "20",
                            "--label", f"controller, {a.nodes} agents", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"metalvirt-fleet failed: {r.stderr}\n"
                             + open(os.path.join(lab, "metalvirtd.log")).read()[-3000:])
        fleet = json.loads(r.stdout.strip().splitlines()[-1])
        agent_rss = sorted(rss_kib(p.pid) for p in agents)
        out = {
            "nodes": a.nodes,
            "all_links_up_s": round(up, 2),
            "controller_startup_cpu_s": round(startup_cpu, 2),
            "controller_idle_cpu_pct": round(100 * idle_cpu, 2),
            "controller_idle_rss_kib": idle_rss,
            "agent_rss_kib_median": agent_rss[len(agent_rss) // 2],
            "agent_rss_kib_max": agent_rss[-1],
            "fleet": fleet,
        }
        print(json.dumps(out, indent=1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(lab, ignore_errors=True)


if __name__ == "__main__":
    main()
