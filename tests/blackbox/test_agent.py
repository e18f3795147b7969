"""Controller mode, black-box: metalvirt-agent runs in a network namespace of its own (the
DPU), with real Open vSwitch (ovsdb-server and ovs-vswitchd, peers.OvsLab) and the SPDK
double behind it on their unix sockets; metalvirtd on the host (the controller) reaches it
over a veth pair with mutual TLS. python3-libvirt drives metalvirtd.

Covered: start, disk and NIC hot-plug and destroy through the agent; the agent killed in the
middle of a start (the start fails naming node and agent; what the DPU was left holding is
undone when the agent is back); the agent restarted under a running domain (what the DPU
lost is plugged and mapped again); the management link cut and restored; a controller whose
certificate the agent's CA did not sign refused.

Needs root (ip netns). Run (from the repository root, after cargo build):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_agent
"""

import os
import tempfile
import threading
import time
import unittest
import uuid

import libvirt

from . import peers
from .dpu import Agent, Netns
from .harness import (
    Daemon, EventCollector, expect_error, pinned_domain_xml, start_event_loop, wait_until,
)
from .pki import AgentPki
from .spdk_client import SpdkDouble, call, leftovers, nvme_disk, nvmf_volume, storage_exports
from .test_ovs_peers import nic_xml

L = libvirt
LAB = {}
NODE = "bm-a"
MiB = 1 << 20
REPS = [f"pf0vf{i}" for i in range(4)]


def agent_toml(pki, spdk, ovs, listen, bus):
    reps = ", ".join(f'"{r}"' for r in REPS)
    funcs = ", ".join(f'"hostvf{i}"' for i in range(len(REPS)))
    return f"""node = "{NODE}"
listen = "{listen}:16600"
cert_file = "{pki.path('agent', 'cert.pem')}"
key_file = "{pki.path('agent', 'key.pem')}"
ca_file = "{pki.path('ca.pem')}"
[disks]
spdk = "{spdk.sock('dpu')}"
frontend = "nvmf"
listen = "tcp:127.0.0.1:4421"
host_nqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000a1"
attach_timeout_s = 10
resize_wait_s = 1
[nics]
ovsdb = "{ovs.db_addr}"
representors = [{reps}]
functions = [{funcs}]
wait = "ofport"
plug_timeout_s = 15
timeout_s = 5
[bmc]
driver = "openbmc"
address = "{bus.address}"
power_on_timeout_s = 10
power_off_timeout_s = 10
"""


def controller_toml(pki, address, who="controller", node=NODE, server_name="dpu-1"):
    return f"""
[[node]]
name = "{node}"
cores = 4
memory_mib = 8192
[node.bmc]
driver = "agent"
[node.agent]
address = "{address}:16600"
server_name = "{server_name}"
cert_file = "{pki.path(who, 'cert.pem')}"
key_file = "{pki.path(who, 'key.pem')}"
ca_file = "{pki.path('ca.pem')}"
connect_timeout_s = 1
"""


def setUpModule():
    start_event_loop()  # before any connection is opened, or it gets no events
    # Module cleanups run in reverse, also when this fails half-way.
    LAB["dir"] = d = unittest.enterModuleContext(
        tempfile.TemporaryDirectory(prefix="metalvirt-agenttest"))
    ns = LAB["ns"] = unittest.enterModuleContext(Netns(0))
    pki = LAB["pki"] = AgentPki(os.path.join(d, "pki"), ("dpu-1",))
    spdk = LAB["spdk"] = unittest.enterModuleContext(SpdkDouble("storage", "dpu"))
    storage_exports(spdk.sock("storage"))
    ovs = LAB["ovs"] = unittest.enterModuleContext(peers.OvsLab(representors=4, ovn=False))
    bus = LAB["bus"] = unittest.enterModuleContext(peers.OpenBmcBus(delay=0.2))
    LAB["agent"] = unittest.enterModuleContext(
        Agent(os.path.join(d, "agent"), agent_toml(pki, spdk, ovs, ns.dpu_addr, bus),
              netns=ns))
    # The power watcher polls once a minute: power changes seen sooner were relayed.
    LAB["daemon"] = unittest.enterModuleContext(
        Daemon(raw=controller_toml(pki, ns.dpu_addr), extra="[watcher]\ninterval_ms = 60000\n"))


def dpu_left(key="mv-"):
    """What the DPU holds of metalvirt's: SPDK objects and OVS ports (of one domain when
    `key` is its `mv-<hex>`)."""
    out = leftovers(LAB["spdk"].sock("dpu"), "dpu", key)
    dom = key[3:] if key != "mv-" else None
    for name, row in LAB["ovs"].interfaces().items():
        owner = row["external_ids"].get("metalvirt-domain", "")
        if "metalvirt-node" in row["external_ids"] and (dom is None
                                                        or owner.replace("-", "") == dom):
            out.append(f"port {name}")
    return out


def port_of(iface_id):
    """The representor carrying Neutron port `iface_id`, with its row."""
    for name, row in LAB["ovs"].interfaces().items():
        if row["external_ids"].get("iface-id") == iface_id:
            return name, row
    return None


def key_of(dom_uuid):
    return "mv-" + dom_uuid.replace("-", "")


def subsystem_of(dom_uuid):
    """The NVMe-oF subsystem the DPU presents a domain's disks in, if any."""
    subs = call(LAB["spdk"].sock("dpu"), "double_state", {"role": "dpu"})["subsystems"]
    return next((n for n in subs if n.endswith(":" + key_of(dom_uuid))), None)


def succeeds(fn, *args):
    try:
        fn(*args)
        return True
    except libvirt.libvirtError:
        return False


class AgentMode(unittest.TestCase):
    def setUp(self):
        self.d = LAB["daemon"]
        self.agent = LAB["agent"]
        self.conn = libvirt.open(self.d.uri)
        self.dpu_rule_clear()

    def tearDown(self):
        self.dpu_rule_clear()
        if self.agent.proc is None:
            self.agent.start()
        LAB["ns"].link(True)
        for dom in self.conn.listAllDomains(0):
            if dom.isActive():
                # (The link to a restarted agent may take a moment to come back.)
                wait_until(lambda: succeeds(dom.destroy), 10, what="destroy")
            dom.undefine()
        self.conn.close()
        wait_until(lambda: dpu_left() == [], 15, what="nothing left on the DPU")
        if LAB["bus"].host_state() != "Off":
            LAB["bus"].set_power("Off")

    def dpu_rule_clear(self):
        call(LAB["spdk"].sock("storage"), "double_clear_rules")

    def domain(self, name, dom_uuid, port_id, mac, vol_mib=64):
        nqn = nvmf_volume(LAB["spdk"].sock("storage"), f"{name}-root", vol_mib)
        xml = pinned_domain_xml(name, NODE, [
            nvme_disk("vda", nqn, boot=1),
            nic_xml(mac, iface_id=port_id),
        ], dom_uuid)
        return self.conn.defineXML(xml)

    def test_1_start_hotplug_and_destroy_through_the_agent(self):
        u, port, mac = "a9e00001-0000-4000-8000-000000000001", str(uuid.uuid4()), \
            "52:54:00:a9:00:01"
        dom = self.domain("ag-1", u, port, mac)
        dom.create()
        self.assertTrue(dom.isActive())
        self.assertTrue(subsystem_of(u), dpu_left(key_of(u)))
        rep, row = port_of(port)
        self.assertIn(rep, REPS)
        self.assertEqual(row["external_ids"]["attached-mac"], mac)
        self.assertIsNotNone(row["ofport"])
        self.assertEqual(dom.blockInfo("vda")[0], 64 * MiB)
        # Hot-plug a disk and a NIC, unplug them again.
        data = nvmf_volume(LAB["spdk"].sock("storage"), "ag-1-data", 32)
        dom.attachDeviceFlags(nvme_disk("vdb", data), L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(dom.blockInfo("vdb")[0], 32 * MiB)
        port2 = str(uuid.uuid4())
        dom.attachDeviceFlags(nic_xml("52:54:00:a9:00:02", iface_id=port2),
                              L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertIsNotNone(port_of(port2))
        dom.detachDeviceFlags(nvme_disk("vdb", data), L.VIR_DOMAIN_AFFECT_LIVE)
        e = expect_error(dom.blockInfo, "vdb")
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG, str(e))
        dom.detachDeviceFlags(nic_xml("52:54:00:a9:00:02", iface_id=port2),
                              L.VIR_DOMAIN_AFFECT_LIVE)
        wait_until(lambda: port_of(port2) is None, 10, what="the hot-plugged NIC unplugged")
        dom.destroy()
        self.assertEqual(dpu_left(key_of(u)), [])

    def test_2_agent_killed_mid_start_is_undone_when_it_returns(self):
        u, port, mac = "a9e00002-0000-4000-8000-000000000002", str(uuid.uuid4()), \
            "52:54:00:a9:00:03"
        dom = self.domain("ag-2", u, port, mac)
        # The DPU's SPDK takes its time adding the namespace: the agent dies meanwhile.
        call(LAB["spdk"].sock("storage"), "double_rule",
             {"method": "nvmf_subsystem_add_ns", "role": "dpu", "delay_ms": 2000})
        failed = []
        sub = f":{key_of(u)}"
        call(LAB["spdk"].sock("dpu"), "double_calls", {"role": "dpu", "clear": True})

        def start():
            failed.append(expect_error(dom.create))
        t = threading.Thread(target=start)
        t.start()
        wait_until(lambda: any(c["method"] == "nvmf_subsystem_add_ns" and sub in str(c)
                               for c in call(LAB["spdk"].sock("dpu"), "double_calls",
                                             {"role": "dpu"})), 10,
                   what="the start to reach SPDK's namespace add")
        self.agent.kill()
        t.join(30)
        self.assertFalse(t.is_alive())
        e = failed[0]
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, str(e))
        self.assertIn(f"node {NODE}: agent {LAB['ns'].dpu_addr}:16600", str(e))
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_SHUTOFF)
        # The namespace add ran to its end on the DPU after the agent died.
        time.sleep(2.2)
        self.assertNotEqual(dpu_left(key_of(u)), [], "the killed start left nothing to undo")
        self.dpu_rule_clear()
        self.agent.start()
        wait_until(lambda: dpu_left(key_of(u)) == [], 15,
                   what="the half-done start undone on the DPU")
        self.assertIn("reconcil", self.d.log())
        dom.create()
        self.assertIsNotNone(port_of(port))
        dom.destroy()

    def test_3_agent_restart_plugs_and_maps_again_what_the_dpu_lost(self):
        u, port, mac = "a9e00003-0000-4000-8000-000000000003", str(uuid.uuid4()), \
            "52:54:00:a9:00:04"
        dom = self.domain("ag-3", u, port, mac)
        dom.create()
        dom_id = dom.ID()
        rep, _ = port_of(port)
        self.agent.kill()
        # Calls fail at once, naming node and agent.
        t0 = time.monotonic()
        e = expect_error(dom.blockInfo, "vda")
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, str(e))
        self.assertIn(f"node {NODE}: agent {LAB['ns'].dpu_addr}:16600", str(e))
        # Meanwhile the DPU loses the port and the disk's subsystem.
        LAB["ovs"].vsctl("del-port", "br-int", rep)
        call(LAB["spdk"].sock("dpu"), "nvmf_delete_subsystem", {"nqn": subsystem_of(u)})
        self.agent.start()
        wait_until(lambda: port_of(port) is not None, 15, what="the NIC plugged again")
        wait_until(lambda: subsystem_of(u), 15, what="the disk mapped again")
        self.assertEqual(dom.ID(), dom_id)
        self.assertEqual(dom.blockInfo("vda")[0], 64 * MiB)

    def test_4_a_cut_link_fails_calls_fast_and_heals_when_restored(self):
        u, port, mac = "a9e00004-0000-4000-8000-000000000004", str(uuid.uuid4()), \
            "52:54:00:a9:00:05"
        dom = self.domain("ag-4", u, port, mac)
        dom.create()
        LAB["ns"].link(False)

        def refused():
            try:
                dom.blockInfo("vda")
                return False
            except libvirt.libvirtError as e:
                return f"agent {LAB['ns'].dpu_addr}:16600" in str(e)
        # The link's loss is noticed by its pings (every 5 s, 3 s to answer).
        wait_until(refused, 15, what="calls refused with the link down")
        t0 = time.monotonic()
        self.assertTrue(refused())
        self.assertLess(time.monotonic() - t0, 2.0)
        LAB["ns"].link(True)
        wait_until(lambda: not refused(), 15, what="calls served again")
        self.assertTrue(dom.isActive())

    def test_6_the_agent_relays_an_out_of_band_power_off_at_once(self):
        u, port, mac = "a9e00006-0000-4000-8000-000000000006", str(uuid.uuid4()), \
            "52:54:00:a9:00:06"
        ev = EventCollector(self.conn)
        ev.register(L.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
        self.addCleanup(ev.deregister_all)
        dom = self.domain("ag-6", u, port, mac)
        dom.create()
        self.assertEqual(LAB["bus"].host_state(), "Running")
        self.assertIn("On", LAB["bus"].requests())
        stopped = (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
        t0 = time.monotonic()
        LAB["bus"].set_power("Off")
        got = ev.wait_for(lambda evs: stopped in ev.lifecycle("ag-6"), timeout=5)
        took = time.monotonic() - t0
        self.assertTrue(got, f"no STOPPED event within 5 s: {ev.events}")
        self.assertLess(took, 1.0)
        # The server is off: its disks and NICs were released on the DPU.
        wait_until(lambda: dpu_left(key_of(u)) == [], 10, what="the DPU released")

    def test_5_a_controller_the_agent_ca_did_not_sign_is_refused(self):
        pki = LAB["pki"]
        rogue = Daemon(raw=controller_toml(pki, LAB["ns"].dpu_addr, who="rogue"))
        with rogue:
            conn = libvirt.open(rogue.uri)
            try:
                u = "a9e00005-0000-4000-8000-000000000005"
                nqn = nvmf_volume(LAB["spdk"].sock("storage"), "ag-5-root", 16)
                dom = conn.defineXML(pinned_domain_xml("ag-5", NODE, [
                    nvme_disk("vda", nqn, boot=1)], u))
                e = expect_error(dom.create)
                self.assertEqual(e.get_error_code(), L.VIR_ERR_AUTH_FAILED, str(e))
                self.assertIn(f"node {NODE}: agent", str(e))
                self.assertIn("certificate", str(e))
                self.assertFalse(dom.isActive())
                dom.undefine()
            finally:
                conn.close()
        self.assertIn("refused a controller: TLS handshake failed", self.agent.log())
        self.assertEqual(dpu_left(key_of(u)), [])


class WrongAgent(unittest.TestCase):
    """A controller refuses an agent that is not the one it configured."""

    def start_fails(self, want_code, *texts, **toml):
        d = Daemon(raw=controller_toml(LAB["pki"], LAB["ns"].dpu_addr, **toml))
        with d:
            conn = libvirt.open(d.uri)
            try:
                node = toml.get("node", NODE)
                dom = conn.defineXML(pinned_domain_xml("wrong-1", node, [], str(uuid.uuid4())))
                e = expect_error(dom.create)
                self.assertEqual(e.get_error_code(), want_code, str(e))
                for t in texts:
                    self.assertIn(t, str(e))
                dom.undefine()
            finally:
                conn.close()

    def test_an_agent_certificate_not_naming_the_configured_name(self):
        self.start_fails(L.VIR_ERR_AUTH_FAILED, "TLS handshake failed", "certificate",
                         server_name="dpu-9")

    def test_the_agent_of_another_node(self):
        self.start_fails(L.VIR_ERR_OPERATION_FAILED, f"is the agent of node '{NODE}'",
                         node="bm-z")


if __name__ == "__main__":
    unittest.main(verbosity=2)
