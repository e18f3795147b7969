"""Real NIC plumbing against real Open vSwitch and OVN (tests/blackbox/peers.py OvsLab, as
../shared/PEERS.md §4 runs them): ovsdb-server on a private database, ovs-vswitchd (netdev
datapath) in its own network namespace where each representor pf0vfN is a veth whose peer
hostvfN stands for the host-facing function, and OVN NB/SB, ovn-northd and ovn-controller.
virsh and python3-libvirt drive the daemon; ovs-vsctl, ovn-nbctl and ovn-sbctl are asked
what really happened.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_ovs_peers
"""

import os
import re
import subprocess
import tempfile
import time
import unittest
import uuid

import libvirt

from . import peers
from .harness import (
    METALVIRT_NS, Daemon, EventCollector, expect_error, start_event_loop, wait_until,
)

L = libvirt
LAB = {}
# bm-ovn waits for ovn-controller; bm-ofp for ovs-vswitchd only; bm-gone's only representor
# has no network device behind it.
NODES = {
    "bm-ovn": dict(reps="pf0vf{0..3}", funcs="hostvf{0..3}", wait="ovn-installed"),
    "bm-ofp": dict(reps="pf0vf{4..5}", funcs="hostvf{4..5}", wait="ofport"),
    "bm-gone": dict(reps="pf0vf9", funcs="hostvf9", wait="ofport", mac=False),
}


def node_toml(name, reps, funcs, wait, lab, mac=True):
    # MAC programming: set the host-side function's MAC in the DPU's namespace.
    mac_cmd = ["sh", "-c", f"exec nsenter --net=/proc/{lab.vswitchd_pid}/ns/net"
               " ip link set $0 address $1", "{function}", "{mac}"]
    cmd = ", ".join(f'"{a}"' for a in mac_cmd) if mac else ""

    return f"""
[[node]]
name = "{name}"
cores = 4
memory_mib = 8192
[node.bmc]
driver = "sim"
[node.nics]
ovsdb = "{lab.db_addr}"
representors = ["{reps}"]
functions = ["{funcs}"]
wait = "{wait}"
plug_timeout_s = 15
timeout_s = 5
{f"mac_command = [{cmd}]" if mac else ""}
"""


def setUpModule():
    start_event_loop()  # before any connection is opened, or it gets no events
    # Module cleanups run in reverse, also when this fails half-way: daemon, OVS lab, dir.
    LAB["dir"] = unittest.enterModuleContext(
        tempfile.TemporaryDirectory(prefix="metalvirt-ovstest"))
    lab = LAB["lab"] = unittest.enterModuleContext(peers.OvsLab(representors=6))
    raw = "".join(node_toml(n, lab=lab, **v) for n, v in NODES.items())
    LAB["daemon"] = unittest.enterModuleContext(Daemon(raw=raw))


def virsh(*args, check=True):
    return LAB["daemon"].virsh(*args, check=check)


def nic_xml(mac, kind="bridge", iface_id=None, bridge="br-int", vport="openvswitch"):
    src = f"<source bridge='{bridge}'/>" if kind == "bridge" else ""
    params = f"<parameters interfaceid='{iface_id}'/>" if iface_id else ""
    vp = f"<virtualport type='{vport}'>{params}</virtualport>" if vport else ""
    return f"<interface type='{kind}'><mac address='{mac}'/>{src}{vp}<model type='virtio'/></interface>"


def domain_xml(name, node, nics, dom_uuid=None):
    u = f"<uuid>{dom_uuid}</uuid>" if dom_uuid else ""
    return f"""<domain type='kvm'>
  <name>{name}</name>{u}
  <memory unit='GiB'>2</memory>
  <vcpu>2</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='{node}'/></metadata>
  <os><type arch='x86_64'>hvm</type><boot dev='network'/></os>
  <devices>{''.join(nics)}</devices>
</domain>"""


def ours(node):
    """The Interfaces carrying our ownership keys for a node."""
    return {n: r for n, r in LAB["lab"].interfaces().items()
            if r["external_ids"].get("metalvirt-node") == node}


def live_targets(dom):
    xml = dom.XMLDesc(0)
    return dict(re.findall(r"<mac address='([^']+)'/>.*?<target dev='([^']+)'/>", xml, re.S))


class OvsPeers(unittest.TestCase):
    def setUp(self):
        self.conn = libvirt.open(LAB["daemon"].uri)
        self.lab = LAB["lab"]

    def tearDown(self):
        for dom in self.conn.listAllDomains(0):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        self.conn.close()
        for node in NODES:
            self.assertEqual(ours(node), {}, f"ports of {node} left behind")

    def define(self, name, node, nics, **kw):
        return self.conn.defineXML(domain_xml(name, node, nics, **kw))

    def test_start_plugs_two_ports_bound_by_ovn_then_hotplug_and_destroy(self):
        dom_uuid = "5a1e0b3c-7d2f-4c6a-9e8b-0f1a2b3c4d01"
        p1 = "0f2a1b6e-3f11-4b8c-9bb5-2a5d0c1e7f01"
        m1, m2, m3 = "52:54:00:aa:01:01", "52:54:00:aa:01:02", "52:54:00:aa:01:03"
        # The ethernet interface has no interfaceid: its iface-id is derived from the domain
        # and the MAC (uuid5), so Neutron-less setups still get a stable id.
        p2 = str(uuid.uuid5(uuid.UUID(dom_uuid), m2))
        p3 = "0f2a1b6e-3f11-4b8c-9bb5-2a5d0c1e7f03"
        for pid, mac in ((p1, m1), (p2, m2), (p3, m3)):
            self.lab.add_lsp(pid, mac)
        dom = self.define("web-ovn", "bm-ovn",
                          [nic_xml(m1, iface_id=p1), nic_xml(m2, kind="ethernet", vport=None)],
                          dom_uuid=dom_uuid)
        virsh("start", "web-ovn")
        # The start returned after ovn-controller installed both ports: nothing to wait for.
        rows = ours("bm-ovn")
        self.assertEqual(sorted(rows), ["pf0vf0", "pf0vf1"])
        by_mac = {r["external_ids"]["attached-mac"]: (n, r) for n, r in rows.items()}
        for mac, pid in ((m1, p1), (m2, p2)):
            name, r = by_mac[mac]
            ids = r["external_ids"]
            self.assertEqual(ids["iface-id"], pid)
            self.assertEqual(ids["iface-status"], "active")
            self.assertEqual(ids["vm-uuid"], dom_uuid)
            self.assertEqual(ids["metalvirt-domain"], dom_uuid)
            self.assertEqual(ids["ovn-installed"], "true")
            self.assertGreater(r["ofport"], 0)
            self.assertIsNone(r["error"])
            self.assertTrue(self.lab.lsp_up(pid), pid)
            self.assertTrue(self.lab.binding_chassis(pid), pid)
            # The MAC programming step set the host-facing function's MAC.
            self.assertEqual(self.lab.host_mac(name.replace("pf0vf", "hostvf")), mac)
        self.assertEqual(live_targets(dom), {m1: by_mac[m1][0], m2: by_mac[m2][0]})
        self.assertIn("interfaceid='%s'" % p1, dom.XMLDesc(0))

        # Hot-plug: the port is there, bound, and the live XML shows its representor.
        events = EventCollector(self.conn)
        events.register(L.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, dom)
        dom.attachDeviceFlags(nic_xml(m3, iface_id=p3), L.VIR_DOMAIN_AFFECT_LIVE)
        rows = ours("bm-ovn")
        self.assertEqual(len(rows), 3)
        rep3 = next(n for n, r in rows.items() if r["external_ids"]["attached-mac"] == m3)
        self.assertEqual(rep3, "pf0vf2")
        self.assertEqual(rows[rep3]["external_ids"]["ovn-installed"], "true")
        self.assertTrue(self.lab.lsp_up(p3))
        self.assertEqual(live_targets(dom)[m3], rep3)
        # Hot-unplug: when detach returns and DEVICE_REMOVED arrives, the port is gone.
        virsh("detach-interface", "web-ovn", "bridge", "--mac", m3, "--live")
        self.assertNotIn(rep3, self.lab.ports())
        self.assertTrue(events.wait_for(lambda evs: any(e[0] == "device-removed" for e in evs)))
        wait_until(lambda: not self.lab.lsp_up(p3), 10, what="LSP down after unplug")
        self.assertEqual(self.lab.binding_chassis(p3), "")
        events.deregister_all()

        virsh("destroy", "web-ovn")
        self.assertEqual(ours("bm-ovn"), {})
        self.assertEqual(self.lab.ports(), [])
        wait_until(lambda: not self.lab.lsp_up(p1), 10, what="LSP down after destroy")

    def test_unsupported_interface_types_and_bad_input(self):
        for kind, extra in (("network", "<source network='default'/>"),
                            ("direct", "<source dev='eth0' mode='bridge'/>"),
                            ("hostdev", ""),
                            ("vhostuser", "<source type='unix' path='/tmp/vu' mode='server'/>")):
            xml = domain_xml("bad", "bm-ofp", [
                f"<interface type='{kind}'><mac address='52:54:00:bb:00:01'/>{extra}</interface>"])
            e = expect_error(self.conn.defineXML, xml)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED, str(e))
            self.assertIn(f"interface type '{kind}'", str(e))
            e = expect_error(self.conn.createXML, xml, 0)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED, str(e))
        e = expect_error(self.conn.defineXML, domain_xml(
            "bad", "bm-ofp", [nic_xml("52:54:00:bb:00:02", vport="802.1Qbh")]))
        self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED, str(e))
        self.assertIn("virtualport type '802.1Qbh'", str(e))
        e = expect_error(self.conn.defineXML, domain_xml(
            "bad", "bm-ofp", [nic_xml("52:54:00:zz:00:03")]))
        self.assertEqual(e.get_error_code(), L.VIR_ERR_XML_ERROR, str(e))
        self.assertEqual(self.conn.listAllDomains(0), [])

        # A bridge that does not exist: a clear error, nothing created, nothing held.
        dom = self.define("nobridge", "bm-ofp", [nic_xml("52:54:00:bb:00:04"),
                                                 nic_xml("52:54:00:bb:00:05", bridge="br-nope")])
        e = expect_error(dom.create)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, str(e))
        self.assertIn("bridge 'br-nope' does not exist", str(e))
        self.assertFalse(dom.isActive())
        self.assertEqual(ours("bm-ofp"), {})
        self.assertEqual(self.lab.ports(), [])
        # Attaching an unsupported type to a running domain is refused the same way.
        dom.undefine()
        dom = self.define("ok", "bm-ofp", [nic_xml("52:54:00:bb:00:06")])
        dom.create()
        e = expect_error(dom.attachDeviceFlags,
                         "<interface type='direct'><source dev='eth0'/></interface>",
                         L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED, str(e))
        self.assertEqual(len(ours("bm-ofp")), 1)

    def test_pool_exhaustion_and_a_representor_without_a_device(self):
        dom = self.define("two", "bm-ofp", [nic_xml("52:54:00:cc:00:01"),
                                            nic_xml("52:54:00:cc:00:02", kind="ethernet")])
        dom.create()
        self.assertEqual(sorted(ours("bm-ofp")), ["pf0vf4", "pf0vf5"])
        before = dom.XMLDesc(0)
        e = expect_error(dom.attachDeviceFlags, nic_xml("52:54:00:cc:00:03"),
                         L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, str(e))
        self.assertIn("no free NIC function on node bm-ofp", str(e))
        self.assertEqual(dom.XMLDesc(0), before)
        self.assertEqual(len(ours("bm-ofp")), 2)
        # ovs-vswitchd cannot open pf0vf9 (no such device): the start fails with its reason
        # and the port is removed again.
        gone = self.define("gone", "bm-gone", [nic_xml("52:54:00:cc:00:09")])
        e = expect_error(gone.create)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, str(e))
        self.assertIn("could not open network device pf0vf9", str(e))
        self.assertEqual(ours("bm-gone"), {})
        self.assertNotIn("pf0vf9", self.lab.ports())

    def test_ovsdb_restart_under_the_daemon(self):
        dom = self.define("survivor", "bm-ofp", [nic_xml("52:54:00:dd:00:01")])
        dom.create()
        self.lab.stop_ovsdb()
        time.sleep(0.3)
        self.lab.start_ovsdb()
        # The next plug reconnects and works; the earlier port is still known as ours.
        dom.attachDeviceFlags(nic_xml("52:54:00:dd:00:02"), L.VIR_DOMAIN_AFFECT_LIVE)
        rows = ours("bm-ofp")
        self.assertEqual(len(rows), 2)
        self.assertTrue(all(r["ofport"] > 0 for r in rows.values()), rows)
        self.assertIn("OVSDB connection re-established", LAB["daemon"].log())
        virsh("detach-interface", "survivor", "bridge", "--mac", "52:54:00:dd:00:01", "--live")
        self.assertEqual(len(ours("bm-ofp")), 1)

    def test_restart_reconciles_orphans_missing_ports_and_a_start_killed_mid_plug(self):
        d = LAB["daemon"]
        # A running domain whose port vanishes while the daemon is down.
        keep = self.define("keep", "bm-ofp", [nic_xml("52:54:00:ee:00:01")])
        keep.create()
        rep = live_targets(keep)["52:54:00:ee:00:01"]
        # A start stopped dead in the middle of plugging: its first NIC is in OVS, its
        # second one is still in the (slow) MAC step when the daemon is killed.
        slow = os.path.join(LAB["dir"], "slow-mac")
        with open(slow, "w") as f:
            f.write(f"#!/bin/sh\n[ \"$2\" = 52:54:00:ee:00:03 ] || exit 0\n"
                    f"echo $$ > {slow}.pid\nexec sleep 30\n")
        os.chmod(slow, 0o755)
        conf = d.path("metalvirtd.toml")
        with open(conf) as f:
            orig = f.read()
        with open(conf, "w") as f:
            f.write(orig.replace('wait = "ovn-installed"\nplug_timeout_s = 15\ntimeout_s = 5\n'
                                 'mac_command = [',
                                 f'wait = "ofport"\nplug_timeout_s = 15\ntimeout_s = 5\n'
                                 f'mac_command = ["{slow}", "{{function}}", "{{mac}}"]\n'
                                 f'# was: mac_command = [', 1))
        self.conn.close()
        d.restart()
        self.conn = libvirt.open(d.uri)
        stuck = self.conn.defineXML(domain_xml("stuck", "bm-ovn", [
            nic_xml("52:54:00:ee:00:02"), nic_xml("52:54:00:ee:00:03")]))
        stuck_uuid = stuck.UUIDString()
        starter = subprocess.Popen(["virsh", "-q", "-c", d.uri, "start", "stuck"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: len(ours("bm-ovn")) == 1, 10, what="first NIC plugged")
        wait_until(lambda: os.path.exists(slow + ".pid"), 10, what="second NIC in its MAC step")
        self.conn.close()
        d._kill()
        starter.wait(timeout=10)
        with open(slow + ".pid") as f:
            os.kill(int(f.read()), 9)
        # While it is down: the running domain's port disappears, and someone leaves a port
        # carrying our keys for a domain that does not exist.
        self.lab.vsctl("del-port", "br-int", rep)
        ghost = "mv-" + "ab" * 16 + "-525400ee00ff"
        self.lab.vsctl("add-port", "br-int", "pf0vf3", "--", "set", "Interface", "pf0vf3",
                       "external_ids:metalvirt-node=bm-ovn", f"external_ids:metalvirt-handle={ghost}",
                       "external_ids:iface-id=ghost")
        with open(conf, "w") as f:
            f.write(orig)
        d._spawn()
        self.conn = libvirt.open(d.uri)
        # The interrupted start is undone, the orphan removed, the lost port re-plugged on
        # the same function.
        wait_until(lambda: "ghost" not in str(self.lab.interfaces()) and ours("bm-ofp"), 15,
                   what="reconcile")
        self.assertEqual(ours("bm-ovn"), {})
        rows = ours("bm-ofp")
        self.assertEqual(list(rows), [rep])
        self.assertGreater(rows[rep]["ofport"], 0)
        self.assertEqual(rows[rep]["external_ids"]["metalvirt-domain"], keep.UUIDString())
        stuck = self.conn.lookupByUUIDString(stuck_uuid)
        self.assertFalse(stuck.isActive())
        self.assertEqual(stuck.state()[1], L.VIR_DOMAIN_SHUTOFF_FAILED)
        log = d.log()
        self.assertIn("removed a NIC port no live domain owns", log)
        self.assertIn("re-plugged a NIC missing from the backend", log)
        self.assertTrue(self.conn.lookupByName("keep").isActive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
