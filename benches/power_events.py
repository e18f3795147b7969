"""Out-of-band power change → libvirt lifecycle event, by BMC driver (docs/PERFORMANCE.md,
"Controller mode"): a running domain's server is powered off behind metalvirtd's back (the
power button, a crash) and the time until the STOPPED event reaches a python3-libvirt
client is measured, with the power watcher at its default 5 s interval:

- OpenBMC over D-Bus (peers.OpenBmcBus): PropertiesChanged, read at once;
- OpenBMC through a DPU's agent (metalvirt-agent on loopback, relaying the signals);
- Redfish (sushy-tools) and IPMI (OpenIPMI's ipmi_sim): seen at the watcher's next poll.

Run (release build): /usr/bin/python3 benches/power_events.py [--rounds 10]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import libvirt  # noqa: E402
from blackbox import peers  # noqa: E402
from blackbox.dpu import Agent  # noqa: E402
from blackbox.harness import METALVIRT_NS, Daemon, start_event_loop  # noqa: E402
from blackbox.pki import AgentPki  # noqa: E402

UUID = "27946b59-9e44-4fa7-8e91-f3527a1ef095"
STOPPED = libvirt.VIR_DOMAIN_EVENT_STOPPED


def dom_xml(name, node):
    return f"""<domain type='kvm'><name>{name}</name><memory unit='GiB'>4</memory><vcpu>2</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='{node}'/></metadata>
  <os><type arch='x86_64'>hvm</type></os></domain>"""


def node_toml(name, bmc):
    return f"""[[node]]
name = "{name}"
cores = 8
memory_mib = 65536
[node.bmc]
{bmc}
"""


def main():
    os.environ.setdefault("METALVIRTD", os.path.join(HERE, "..", "target", "release",
                                                      "metalvirtd"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    start_event_loop()
    work = tempfile.mkdtemp(prefix="metalvirt-powerev")
    try:
        run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(a, work):
    pw = peers.write_password_file(os.path.join(work, "pw"))
    pki = AgentPki(os.path.join(work, "pki"))
    port = peers.free_port()
    with peers.OpenBmcBus(delay=0.05) as bus, peers.OpenBmcBus(delay=0.05) as bus2, \
            peers.Sushy([(UUID, "bm-node-1", "Off")]) as sushy, peers.IpmiSim() as isim:
        agent_cfg = f"""node = "obmc-agent"
listen = "127.0.0.1:{port}"
cert_file = "{pki.path('agent', 'cert.pem')}"
key_file = "{pki.path('agent', 'key.pem')}"
ca_file = "{pki.path('ca.pem')}"
state_dir = "{work}/agent-state"
[bmc]
driver = "openbmc"
address = "{bus2.address}"
"""
        with Agent(os.path.join(work, "agent"), agent_cfg):
            raw = (node_toml("obmc", f'driver = "openbmc"\naddress = "{bus.address}"')
                   + node_toml("obmc-agent", 'driver = "agent"') + f"""[node.agent]
address = "127.0.0.1:{port}"
server_name = "localhost"
cert_file = "{pki.path('controller', 'cert.pem')}"
key_file = "{pki.path('controller', 'key.pem')}"
ca_file = "{pki.path('ca.pem')}"
"""
                   + node_toml("rf", f'driver = "redfish"\naddress = "{sushy.url}"\n'
                                     f'username = "admin"\npassword_file = "{pw}"\n'
                                     'insecure_http = true')
                   + node_toml("ipmi", f'driver = "ipmi"\naddress = "127.0.0.1:{isim.port}"\n'
                                       f'username = "admin"\npassword_file = "{pw}"'))
            with Daemon(extra="[watcher]\ninterval_ms = 5000\n", raw=raw,
                        ceph_secret=False) as d:
                conn = libvirt.open(d.uri)
                stopped = {}
                cond = threading.Condition()

                def cb(_c, dom, event, _detail, _o):
                    if event == STOPPED:
                        with cond:
                            stopped[dom.name()] = time.monotonic()
                            cond.notify_all()
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb,
                                            None)
                offs = {
                    "obmc": lambda: bus.set_power("Off"),
                    "obmc-agent": lambda: bus2.set_power("Off"),
                    "rf": lambda: sushy.reset(UUID, "ForceOff"),
                    "ipmi": lambda: peers.Ipmitool(isim.port).set_power("off"),
                }
                names = {
                    "obmc": "OpenBMC over D-Bus (PropertiesChanged)",
                    "obmc-agent": "OpenBMC through the DPU's agent (relayed)",
                    "rf": "Redfish, sushy-tools (polled every 5 s)",
                    "ipmi": "IPMI, ipmi_sim (polled every 5 s)",
                }
                rows = []
                for node, off in offs.items():
                    dom = conn.defineXML(dom_xml(f"ev-{node}", node))
                    took = []
                    for _ in range(a.rounds):
                        dom.create()
                        # Past the start's own events, and at a random phase of the
                        # watcher's rounds (a power button is pressed at any moment).
                        time.sleep(0.3 + random.uniform(0, 5))
                        with cond:
                            stopped.pop(dom.name(), None)
                        t0 = time.monotonic()
                        off()
                        with cond:
                            cond.wait_for(lambda: dom.name() in stopped, timeout=30)
                            at = stopped.get(dom.name())
                        if at is None:
                            raise SystemExit(f"no STOPPED event for {node}")
                        took.append(at - t0)
                    dom.undefine()
                    rows.append((names[node], statistics.median(took), max(took)))
                conn.close()
    print(f"rounds: {a.rounds}; power watcher interval 5 s")
    print("| BMC | median | worst |")
    print("|---|---:|---:|")
    for name, med, worst in rows:
        print(f"| {name} | {med * 1000:.0f} ms | {worst * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
