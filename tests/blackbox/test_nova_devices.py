"""nova's device operations against metalvirtd, through libvirt-python as nova's libvirt
driver calls them (PROTOCOL.md 4.5): attach_volume (RBD + ceph secret), detach_volume via
_detach_with_retry, attach/detach_interface + setMetadata, hard reboot with volumes, stats,
block resize; plus failure injection and bad input. The simulated lab's hardware state
(sim-lab.json) shows what is really mapped and plugged.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_nova_devices
"""

import json
import os
import threading
import unittest
import xml.etree.ElementTree as ET

import libvirt

from .harness import (
    DaemonCase, CEPH_KEY, CEPH_SECRET_UUID, NOVA_NS, Daemon, bound_node, define_ceph_secret,
    expect_error, nova_domain_xml, nova_instance_xml, open_like_nova, quietly, wait_until,
)

L = libvirt
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures",
                        "devices")
UUID = "6f1c4a52-3d9e-4a8b-9a51-0c7d2e5b1a01"
NAME = "instance-0000002a"
VOLUME = "11111111-2222-3333-4444-555555555555"
VOL2 = "22222222-aaaa-4bbb-8ccc-333333333333"
MAC = "fa:16:3e:aa:bb:cc"
TAP = "tap0d3c4f7e-5a"
PORT2_MAC = "fa:16:3e:12:34:56"
PORT2_TAP = "tap9f8e7d6c-5b"
PORT2 = "9f8e7d6c-5b4a-4321-8765-0fedcba98765"
CONFIG, LIVE = L.VIR_DOMAIN_AFFECT_CONFIG, L.VIR_DOMAIN_AFFECT_LIVE
DETACH_TIMEOUT = 20  # nova's [libvirt]device_detach_timeout
DETACH_ATTEMPTS = 8  # nova's [libvirt]device_detach_attempts


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def rbd_disk(volume=VOL2, target="vdb", pool="volumes", secret=CEPH_SECRET_UUID):
    x = fixture("rbd-volume.xml").replace(VOL2, volume).replace('dev="vdb"', f'dev="{target}"')
    return x.replace("volumes/", f"{pool}/").replace(CEPH_SECRET_UUID, secret)


def devices(xml_text, kind):
    return ET.fromstring(xml_text).findall(f"devices/{kind}")


def alias(el):
    a = el.find("alias")
    return None if a is None else a.get("name")


def find_disk(xml_text, volume_id, target=None):
    """nova's get_disk: by ua- alias first, else by target dev."""
    disks = devices(xml_text, "disk")
    for d in disks:
        if alias(d) == f"ua-{volume_id}":
            return d
    for d in disks:
        if target and d.find("target").get("dev") == target:
            return d
    return None


def find_interface(xml_text, mac, itype="bridge", source_bridge="br-int", target_dev=None):
    """nova's LibvirtConfigGuestInterface equality: mac, type, source dev, target dev."""
    for i in devices(xml_text, "interface"):
        m = i.find("mac")
        src = i.find("source")
        tgt = i.find("target")
        if m is None or m.get("address") != mac or i.get("type") != itype:
            continue
        if src is None or src.get("bridge") != source_bridge:
            continue
        if target_dev and (tgt is None or tgt.get("dev") != target_dev):
            continue
        return i
    return None


def sim_disks(d):
    out = {}
    for node, st in d.sim_state()["nodes"].items():
        for h, disk in (st.get("disks") or {}).items():
            out[disk["spec"]["target"] + "@" + h[-40:]] = dict(disk, node=node)
    return out


def sim_disk_by_source(d, source):
    for node, st in d.sim_state()["nodes"].items():
        for disk in (st.get("disks") or {}).values():
            if disk["spec"]["source"] == source:
                return dict(disk, node=node)
    return None


def sim_nic_by_mac(d, mac):
    for node, st in d.sim_state()["nodes"].items():
        for nic in (st.get("nics") or {}).values():
            if nic["spec"]["mac"] == mac:
                return dict(nic, node=node)
    return None


class DeviceCase(DaemonCase):
    """A daemon, a nova-like connection with nova's event callbacks, and nova's helpers."""
    sim = {}
    ceph_secret = True
    events = (L.VIR_DOMAIN_EVENT_ID_LIFECYCLE, L.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
              L.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, L.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED)

    def daemon(self):
        return Daemon(sim=self.sim, ceph_secret=self.ceph_secret)

    # -- nova's building blocks ------------------------------------------------------------

    def spawn(self, xml=None):
        """spawn: defineXML + createWithFlags(START_PAUSED) + resume (vif events awaited)."""
        dom = self.conn.defineXML(xml or nova_domain_xml(UUID, NAME))
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        dom.resume()
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        return self.conn.lookupByUUIDString(dom.UUIDString())

    def attach_flags(self, dom):
        """nova's attach_volume/attach_interface: CONFIG|LIVE when running or paused."""
        state = dom.info()[0]
        return CONFIG | LIVE if state in (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_PAUSED) else CONFIG

    def removed(self, uuid, dev_alias):
        return self.ev.wait_for(lambda evs: [e for e in evs if e[0] in (
            "device-removed", "device-removal-failed") and e[2] == uuid and e[3] == dev_alias],
            DETACH_TIMEOUT)

    def detach_with_retry(self, dom, find):
        """nova's Driver._detach_with_retry: the persistent copy (INACTIVE, CONFIG), then the
        live copy (LIVE + wait for DEVICE_REMOVED with the alias). `find(xml)` returns the
        device element or None. Returns the alias seen in the live XML."""
        if dom.isPersistent():
            dev = find(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE))
            if dev is not None:
                dom.detachDeviceFlags(ET.tostring(dev, encoding="unicode"), CONFIG)
                self.assertIsNone(find(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)))
        if dom.info()[0] not in (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_PAUSED):
            return None
        dev = find(dom.XMLDesc(0))
        if dev is None:
            return None
        live_alias = alias(dev)
        self.assertTrue(live_alias, "nova needs an alias to wait for DEVICE_REMOVED")
        for _ in range(DETACH_ATTEMPTS):
            self.ev.clear()
            try:
                dom.detachDeviceFlags(ET.tostring(dev, encoding="unicode"), LIVE)
            except libvirt.libvirtError as e:
                code, msg = e.get_error_code(), str(e)
                if code == L.VIR_ERR_DEVICE_MISSING or (
                        code == L.VIR_ERR_OPERATION_FAILED and "not found" in msg):
                    return live_alias
                raise
            got = self.removed(dom.UUIDString(), live_alias)
            self.assertTrue(got, f"no DEVICE_REMOVED for {live_alias} within nova's timeout")
            if got[0][0] == "device-removed":
                self.assertIsNone(find(dom.XMLDesc(0)))
                return live_alias
        self.fail("device never detached")


class NovaDevices(DeviceCase):
    # -- attach_volume / detach_volume -------------------------------------------------------

    def test_attach_volume_maps_rbd_with_the_ceph_key(self):
        dom = self.spawn()
        self.assertEqual(self.attach_flags(dom), CONFIG | LIVE)
        dom.attachDeviceFlags(rbd_disk(), CONFIG | LIVE)
        live = dom.XMLDesc(0)
        disk = find_disk(live, VOL2)
        self.assertIsNotNone(disk)
        self.assertEqual(disk.find("target").get("dev"), "vdb")
        self.assertEqual(disk.find("serial").text, VOL2)
        self.assertEqual(disk.find("auth").get("username"), "cinder")
        # every live device has an alias; nova's ua- aliases survive, the rest are libvirt's
        self.assertEqual([alias(d) for d in devices(live, "disk")], [f"ua-{VOLUME}", f"ua-{VOL2}"])
        self.assertEqual([alias(i) for i in devices(live, "interface")], ["net0"])
        self.assertIsNotNone(find_disk(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), VOL2))
        added = self.ev.wait_for(lambda evs: [e for e in evs if e[0] == "device-added"], 5)
        self.assertEqual([e[3] for e in added], [f"ua-{VOL2}"])
        m = sim_disk_by_source(self.d, f"rbd:volumes/volume-{VOL2}")
        self.assertIsNotNone(m, "the volume is mapped on the DPU")
        self.assertEqual(m["node"], bound_node(live))
        self.assertEqual(m["spec"]["auth"]["username"], "cinder")
        self.assertEqual(m["spec"]["auth"]["secret_uuid"], CEPH_SECRET_UUID)
        self.assertEqual(m["key_len"], len(CEPH_KEY))
        self.assertEqual(m["spec"]["serial"], VOL2)
        # the key itself is written nowhere the daemon writes
        lab = self.d.path("state", "sim-lab")
        for name in os.listdir(lab):
            with open(os.path.join(lab, name), "rb") as f:
                self.assertNotIn(CEPH_KEY, f.read(), name)
        self.assertNotIn(CEPH_KEY.decode(), self.d.log())
        self.assertNotIn(CEPH_KEY.decode(), dom.XMLDesc(L.VIR_DOMAIN_XML_SECURE))

    def test_detach_volume_with_retry_waits_for_device_removed(self):
        dom = self.spawn()
        dom.attachDeviceFlags(rbd_disk(), CONFIG | LIVE)
        source = f"rbd:volumes/volume-{VOL2}"
        self.assertIsNotNone(sim_disk_by_source(self.d, source))
        got = self.detach_with_retry(dom, lambda x: find_disk(x, VOL2, "vdb"))
        self.assertEqual(got, f"ua-{VOL2}")
        self.assertIsNone(sim_disk_by_source(self.d, source), "unmapped before DEVICE_REMOVED")
        self.assertIsNone(find_disk(dom.XMLDesc(0), VOL2))
        self.assertIsNone(find_disk(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), VOL2))
        # A second attempt finds nothing: DEVICE_MISSING, which nova reads as "already gone".
        e = expect_error(dom.detachDeviceFlags, rbd_disk(), LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_DEVICE_MISSING)
        self.assertIn("device not found: disk vdb not found", str(e))
        e = expect_error(dom.detachDeviceFlags, rbd_disk(), CONFIG)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_DEVICE_MISSING)
        # the root volume is still there
        self.assertIsNotNone(sim_disk_by_source(self.d, f"rbd:volumes/volume-{VOLUME}"))

    def test_attach_volume_to_a_stopped_instance_changes_only_the_config(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        self.assertEqual(self.attach_flags(dom), CONFIG)
        dom.attachDeviceFlags(rbd_disk(), CONFIG)
        self.assertIsNotNone(find_disk(dom.XMLDesc(0), VOL2))
        self.assertEqual(sim_disks(self.d), {})
        dom.createWithFlags(0)
        self.assertIsNotNone(sim_disk_by_source(self.d, f"rbd:volumes/volume-{VOL2}"))
        # LIVE on an inactive domain is refused
        dom.destroy()
        e = expect_error(dom.attachDeviceFlags, rbd_disk(VOL2[:-1] + "4", "vdc"), LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID)
        self.assertIn("domain is not running", str(e))

    # -- attach_interface / detach_interface ---------------------------------------------------

    def test_attach_and_detach_interface_with_metadata(self):
        dom = self.spawn()
        dom.attachDeviceFlags(fixture("ovs-port.xml"), self.attach_flags(dom))
        live = dom.XMLDesc(0)
        nic = find_interface(live, PORT2_MAC, target_dev=PORT2_TAP)
        self.assertIsNotNone(nic, live)
        self.assertEqual(alias(nic), "net1")
        self.assertEqual(nic.find("virtualport/parameters").get("interfaceid"), PORT2)
        plugged = sim_nic_by_mac(self.d, PORT2_MAC)
        self.assertEqual(plugged["spec"]["interface_id"], PORT2)
        self.assertEqual(plugged["spec"]["bridge"], "br-int")
        self.assertEqual(plugged["node"], bound_node(live))
        # nova then refreshes its metadata with the new port list
        dom.setMetadata(L.VIR_DOMAIN_METADATA_ELEMENT, nova_instance_xml(port_id=PORT2),
                        "instance", NOVA_NS, 0)
        got = dom.metadata(L.VIR_DOMAIN_METADATA_ELEMENT, NOVA_NS, 0)
        self.assertIn(PORT2, got)
        # detach_interface: matched by nova's interface equality, then DEVICE_REMOVED "net1"
        got = self.detach_with_retry(
            dom, lambda x: find_interface(x, PORT2_MAC, target_dev=PORT2_TAP))
        self.assertEqual(got, "net1")
        self.assertIsNone(sim_nic_by_mac(self.d, PORT2_MAC), "unplugged")
        self.assertIsNotNone(sim_nic_by_mac(self.d, MAC), "the first port stays")
        self.assertIn(PORT2, dom.metadata(L.VIR_DOMAIN_METADATA_ELEMENT, NOVA_NS, 0))

    def test_interface_aliases_stay_stable(self):
        dom = self.spawn()
        dom.attachDeviceFlags(fixture("ovs-port.xml"), LIVE)
        dom.detachDeviceAlias("net0", LIVE)
        got = self.ev.wait_for(lambda evs: [e for e in evs if e[0] == "device-removed"], 5)
        self.assertEqual([e[3] for e in got], ["net0"])
        self.assertEqual([alias(i) for i in devices(dom.XMLDesc(0), "interface")], ["net1"])
        # A daemon restart keeps the live aliases; the next interface is net2, not a reuse.
        self.d.restart()
        self.conn = open_like_nova(self.d.uri)
        self.addCleanup(self.conn.close)
        dom = self.conn.lookupByUUIDString(UUID)
        self.assertEqual([alias(i) for i in devices(dom.XMLDesc(0), "interface")], ["net1"])
        dom.attachDeviceFlags("<interface type='ethernet'><model type='virtio'/></interface>",
                              LIVE)
        nics = devices(dom.XMLDesc(0), "interface")
        self.assertEqual([alias(i) for i in nics], ["net1", "net2"])
        new_mac = nics[1].find("mac").get("address")
        self.assertTrue(new_mac.startswith("52:54:00:"), new_mac)
        # the function's representor is shown as the host-side device
        self.assertEqual(nics[1].find("target").get("dev"),
                         sim_nic_by_mac(self.d, new_mac)["representor"])

    # -- hard reboot, delete ------------------------------------------------------------------

    def test_hard_reboot_with_volume_keeps_node_and_devices(self):
        dom = self.spawn()
        dom.attachDeviceFlags(rbd_disk(), CONFIG | LIVE)
        node = bound_node(dom.XMLDesc(0))
        # _hard_reboot: XMLDesc(0); destroy; undefineFlags(1|8|64); defineXML; create
        old = dom.XMLDesc(0)
        dom.destroy()
        self.assertEqual(sim_disks(self.d), {}, "destroy unmaps every volume")
        dom.undefineFlags(1 | 8 | 64)
        x = ET.fromstring(old)
        x.attrib.pop("id", None)
        for md in x.findall("metadata"):
            for el in list(md):
                if not el.tag.startswith("{" + NOVA_NS):
                    md.remove(el)
        for dev in x.find("devices"):
            a = dev.find("alias")
            if a is not None and not a.get("name", "").startswith("ua-"):
                dev.remove(a)
        dom = self.conn.defineXML(ET.tostring(x, encoding="unicode"))
        dom.createWithFlags(0)
        dom = self.conn.lookupByUUIDString(UUID)
        live = dom.XMLDesc(0)
        self.assertEqual(bound_node(live), node)
        self.assertEqual([alias(d) for d in devices(live, "disk")], [f"ua-{VOLUME}", f"ua-{VOL2}"])
        self.assertIsNotNone(sim_disk_by_source(self.d, f"rbd:volumes/volume-{VOL2}"))
        # delete: destroy + undefineFlags(1|4)
        dom.destroy()
        dom.undefineFlags(1 | 4)
        self.assertEqual(self.d.sim_mapped(), (0, 0))

    # -- stats and resize ---------------------------------------------------------------------

    def test_stats_and_block_resize(self):
        dom = self.spawn()
        dom.attachDeviceFlags(rbd_disk(), CONFIG | LIVE)
        rd_req, rd_bytes, wr_req, wr_bytes, errs = dom.blockStats("vdb")
        self.assertGreater(rd_req, 0)
        self.assertGreater(rd_bytes, 0)
        self.assertGreater(wr_req, 0)
        self.assertEqual(errs, -1)
        flags = dom.blockStatsFlags("vdb", 0)
        self.assertEqual(set(flags), {"rd_operations", "rd_bytes", "wr_operations", "wr_bytes",
                                      "flush_operations", "rd_total_times", "wr_total_times",
                                      "flush_total_times"})
        total = dom.blockStats("")
        self.assertGreaterEqual(total[0], rd_req)
        rx = dom.interfaceStats(TAP)
        self.assertEqual(len(rx), 8)
        self.assertGreater(rx[0], 0)
        self.assertEqual(len(dom.interfaceStats(MAC)), 8)  # by MAC too
        e = expect_error(dom.interfaceStats, "tap-nope")
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG)
        self.assertIn("'tap-nope' is not a known interface", str(e))
        e = expect_error(dom.blockStats, "vdz")
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG)
        mem = dom.memoryStats()
        self.assertEqual(mem["actual"], 2097152)
        cap, alloc, phys = dom.blockInfo("vdb")
        self.assertEqual(cap, 20 << 30)
        # nova's extend_volume: blockResize in bytes; the DPU grows the volume, the host sees it
        dom.blockResize("vdb", 30 << 30, L.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        self.assertEqual(dom.blockInfo("vdb")[0], 30 << 30)
        vols = self.d.sim_state()["volumes"]
        self.assertEqual(vols[f"rbd:volumes/volume-{VOL2}"], 30 << 30)
        dom.blockResize("vdb", 31 * 1024 * 1024)  # KiB
        self.assertEqual(dom.blockInfo("vdb")[0], 31 << 30)
        e = expect_error(dom.blockResize, "vdb", 10 << 30, L.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG)
        self.assertIn("cannot shrink disk vdb", str(e))
        self.assertEqual(dom.blockInfo("vdb")[0], 31 << 30)
        e = expect_error(dom.blockResize, "vdz", 1, 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG)
        dom.destroy()
        e = expect_error(dom.blockStats, "vdb")
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID)
        self.assertEqual(dom.blockInfo("vdb"), [0, 0, 0])

    # -- bad input -----------------------------------------------------------------------------

    def test_bad_device_input_changes_nothing(self):
        dom = self.spawn()
        before = (dom.XMLDesc(0), dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), self.d.sim_mapped())
        cases = [
            ("<domain type='kvm'/>", CONFIG | LIVE, L.VIR_ERR_CONFIG_UNSUPPORTED,
             "unknown device type 'domain'"),
            ("<disk", LIVE, L.VIR_ERR_XML_ERROR, None),
            (rbd_disk(VOL2, "vda"), CONFIG, L.VIR_ERR_OPERATION_INVALID,
             "target vda already exists"),
            (rbd_disk(VOL2, "vda"), LIVE, L.VIR_ERR_XML_ERROR, "target 'vda' duplicated"),
            (rbd_disk(VOLUME, "vdc"), CONFIG | LIVE, L.VIR_ERR_CONFIG_UNSUPPORTED,
             f"non unique alias detected: ua-{VOLUME}"),
            (f"<interface type='bridge'><mac address='{MAC}'/><source bridge='br-int'/>"
             "</interface>", LIVE, L.VIR_ERR_OPERATION_INVALID, MAC),
            ("<interface type='bridge'><mac address='zz:16'/></interface>", LIVE,
             L.VIR_ERR_XML_ERROR, "unable to parse mac address 'zz:16'"),
            ("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>", LIVE,
             L.VIR_ERR_CONFIG_UNSUPPORTED, "live attach of device 'rng'"),
            ("<hostdev mode='subsystem' type='pci'/>", CONFIG, L.VIR_ERR_CONFIG_UNSUPPORTED,
             "hostdev"),
            ("<video><model type='vga'/></video>", CONFIG, L.VIR_ERR_OPERATION_UNSUPPORTED,
             "persistent attach of device 'video' is not supported"),
        ]
        for xml, flags, code, text in cases:
            e = expect_error(dom.attachDeviceFlags, xml, flags)
            self.assertEqual(e.get_error_code(), code, f"{xml}: {e}")
            if text:
                self.assertIn(text, str(e), xml)
        after = (dom.XMLDesc(0), dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), self.d.sim_mapped())
        self.assertEqual(before, after)
        self.assertFalse([e for e in self.ev.events if e[0] == "device-added"])
        # a transient domain has no config to attach to
        t = self.conn.createXML(nova_domain_xml(
            "6f1c4a52-3d9e-4a8b-9a51-0c7d2e5b1a99", "transient-1", mac="fa:16:3e:00:00:99",
            volume_id="99999999-2222-3333-4444-555555555555"), 0)
        e = expect_error(t.attachDeviceFlags, rbd_disk(), CONFIG)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID)
        self.assertIn("transient domains do not have any persistent config", str(e))
        # the config takes what a server can have; rng into the config is fine
        dom.attachDeviceFlags("<rng model='virtio'><backend model='random'>/dev/urandom"
                              "</backend></rng>", CONFIG)
        self.assertEqual(len(devices(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), "rng")), 1)
        self.assertEqual(len(devices(dom.XMLDesc(0), "rng")), 0)

    def test_update_device(self):
        dom = self.spawn()
        dom.attachDeviceFlags(rbd_disk(), CONFIG | LIVE)
        changed = rbd_disk().replace('cache="none"', 'cache="writeback"')
        dom.updateDeviceFlags(changed, CONFIG)
        self.assertEqual(find_disk(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), VOL2)
                         .find("driver").get("cache"), "writeback")
        self.assertEqual(find_disk(dom.XMLDesc(0), VOL2).find("driver").get("cache"), "none")
        dom.updateDeviceFlags(rbd_disk(), LIVE)  # the same thing: nothing to do
        e = expect_error(dom.updateDeviceFlags, changed, LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_UNSUPPORTED)
        e = expect_error(dom.updateDeviceFlags, rbd_disk(VOL2, "vdq"), CONFIG)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG)
        self.assertIn("target vdq doesn't exist.", str(e))


class UnknownSecret(DeviceCase):
    """No ceph secret defined: every RBD disk that names it must fail cleanly."""
    ceph_secret = False

    def test_start_fails_with_no_secret_and_maps_nothing(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        e = expect_error(dom.createWithFlags, 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET)
        self.assertIn(CEPH_SECRET_UUID, str(e))
        self.assertIn("disk vda", str(e))
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(self.d.sim_mapped(), (0, 0))
        self.assertNotIn("On", self.d.sim_powers().values())
        # defined but without a value: still refused
        sec = self.conn.secretDefineXML(fixture("ceph-secret.xml"))
        e = expect_error(dom.createWithFlags, 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET)
        self.assertIn("does not have a value", str(e))
        sec.setValue(CEPH_KEY)
        dom.createWithFlags(0)
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)

    def test_attach_with_unknown_secret_rolls_back(self):
        define_ceph_secret(self.conn)
        dom = self.spawn()
        before = (dom.XMLDesc(0), dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), self.d.sim_mapped())
        other = "0b0b0b0b-1111-4222-8333-444444444444"
        e = expect_error(dom.attachDeviceFlags, rbd_disk(secret=other), CONFIG | LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET)
        self.assertIn(other, str(e))
        after = (dom.XMLDesc(0), dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), self.d.sim_mapped())
        self.assertEqual(before, after)


class InjectedFailures(DeviceCase):
    sim = {"fail_disk_sources": ["broken"], "fail_nic_macs": ["fa:16:3e:ba:d0:00"],
           "fail_unmap_sources": ["stuck"], "fail_unplug_macs": ["fa:16:3e:57:0c:00"]}

    def test_failed_attach_leaves_nothing_half_plugged(self):
        dom = self.spawn()
        before = (dom.XMLDesc(0), dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), self.d.sim_mapped())
        e = expect_error(dom.attachDeviceFlags, rbd_disk(pool="broken"), CONFIG | LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED)
        self.assertIn("cannot map disk vdb", str(e))
        nic = fixture("ovs-port.xml").replace(PORT2_MAC, "fa:16:3e:ba:d0:00")
        e = expect_error(dom.attachDeviceFlags, nic, CONFIG | LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED)
        self.assertIn("cannot plug NIC fa:16:3e:ba:d0:00", str(e))
        after = (dom.XMLDesc(0), dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), self.d.sim_mapped())
        self.assertEqual(before, after, "config unchanged, nothing left mapped or plugged")
        self.assertFalse([e for e in self.ev.events if e[0] == "device-added"])
        journal = self.d.live_status(UUID)["journal"]
        self.assertEqual(len([s for s in journal if s["kind"] != "power_on"]), 2)

    def test_removal_failure_is_reported_and_the_device_stays(self):
        dom = self.spawn()
        dom.attachDeviceFlags(rbd_disk(pool="stuck"), CONFIG | LIVE)
        e = expect_error(dom.detachDeviceFlags, rbd_disk(pool="stuck"), LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED)
        self.assertIn("cannot unmap disk vdb", str(e))
        got = self.removed(UUID, f"ua-{VOL2}")
        self.assertEqual(got[0][0], "device-removal-failed")
        self.assertIsNotNone(find_disk(dom.XMLDesc(0), VOL2), "still in the live XML")
        self.assertIsNotNone(sim_disk_by_source(self.d, f"rbd:stuck/volume-{VOL2}"))
        nic = fixture("ovs-port.xml").replace(PORT2_MAC, "fa:16:3e:57:0c:00")
        dom.attachDeviceFlags(nic, LIVE)
        e = expect_error(dom.detachDeviceAlias, "net1", LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED)
        self.assertTrue(self.removed(UUID, "net1"))
        self.assertIsNotNone(sim_nic_by_mac(self.d, "fa:16:3e:57:0c:00"))


class CrashDuringHotplug(DeviceCase):
    """A daemon killed in the middle of a hot-plug or hot-unplug comes back clean."""
    sim = {"disk_latency_ms": 1500}

    def status(self):
        return self.d.live_status(UUID)

    def kill_during(self, call, ready):
        t = threading.Thread(target=quietly, args=(call,))
        t.start()
        wait_until(ready, 10, what="the change to be journaled")
        self.d.kill_and_restart()
        t.join(10)
        self.conn = open_like_nova(self.d.uri)
        self.addCleanup(self.conn.close)
        return self.conn.lookupByUUIDString(UUID)

    def test_killed_mid_attach_is_undone(self):
        dom = self.spawn()
        vol = f"rbd:volumes/volume-{VOL2}"
        dom = self.kill_during(
            lambda: dom.attachDeviceFlags(rbd_disk(), LIVE),
            lambda: any(s.get("target") == "vdb" for s in self.status()["journal"]))
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertIsNone(find_disk(dom.XMLDesc(0), VOL2))
        self.assertIsNone(sim_disk_by_source(self.d, vol))
        self.assertFalse(any(s.get("target") == "vdb" for s in self.status()["journal"]))
        dom.attachDeviceFlags(rbd_disk(), LIVE)  # and it can be attached again
        self.assertIsNotNone(sim_disk_by_source(self.d, vol))

    def test_killed_mid_detach_is_finished(self):
        dom = self.spawn()
        dom.attachDeviceFlags(rbd_disk(), LIVE)
        vol = f"rbd:volumes/volume-{VOL2}"
        dom = self.kill_during(
            lambda: dom.detachDeviceFlags(rbd_disk(), LIVE),
            lambda: f"ua-{VOL2}" not in self.status()["xml"])
        self.assertIsNone(find_disk(dom.XMLDesc(0), VOL2))
        self.assertIsNone(sim_disk_by_source(self.d, vol))
        self.assertIsNotNone(sim_disk_by_source(self.d, f"rbd:volumes/volume-{VOLUME}"))



if __name__ == "__main__":
    unittest.main(verbosity=2)
