"""nova's instance operations (spawn, reboot, power off, delete) against metalvirtd,
driven through libvirt-python exactly as nova's libvirt driver calls it (PROTOCOL.md 4.5-4.7).

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_nova_lifecycle
"""

import time
import unittest
import xml.etree.ElementTree as ET

import libvirt

from .harness import (
    DaemonCase, METALVIRT_NS, NOVA_NS, bound_node, expect_error, nova_domain_xml,
    nova_instance_xml, wait_until,
)

L = libvirt
UUID = "6f1c4a52-3d9e-4a8b-9a51-0c7d2e5b1a01"
NAME = "instance-0000002a"
VOLUME = "11111111-2222-3333-4444-555555555555"
MAC = "fa:16:3e:aa:bb:cc"
PORT = "0d3c4f7e-5a1b-4c2d-8e9f-a0b1c2d3e4f5"
MEM_KIB = 2097152
VCPUS = 2

# Flags nova passes (numeric, as not every libvirt-python has every constant).
UNDEFINE_MANAGED_SAVE = 1
UNDEFINE_NVRAM = 4
UNDEFINE_KEEP_NVRAM = 8
UNDEFINE_KEEP_TPM = 64

STARTED_BOOTED = (L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_BOOTED)
SUSPENDED_PAUSED = (L.VIR_DOMAIN_EVENT_SUSPENDED, L.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)
RESUMED_UNPAUSED = (L.VIR_DOMAIN_EVENT_RESUMED, L.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED)
STOPPED_DESTROYED = (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
STOPPED_SHUTDOWN = (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
SHUTDOWN_FINISHED = (L.VIR_DOMAIN_EVENT_SHUTDOWN, L.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED)
DEFINED_ADDED = (L.VIR_DOMAIN_EVENT_DEFINED, L.VIR_DOMAIN_EVENT_DEFINED_ADDED)
UNDEFINED_REMOVED = (L.VIR_DOMAIN_EVENT_UNDEFINED, L.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED)


def other_instance(n):
    """XML of another nova instance with its own uuid, name, volume and port."""
    return nova_domain_xml(
        f"6f1c4a52-3d9e-4a8b-9a51-0c7d2e5b1b{n:02d}", f"instance-000000{n:02x}",
        volume_id=f"{n:08d}-2222-3333-4444-555555555555",
        mac=f"fa:16:3e:00:00:{n:02x}", port_id=f"{n:08d}-5a1b-4c2d-8e9f-a0b1c2d3e4f5",
        display_name=f"other-{n}")


def local(tag):
    return tag.rsplit("}", 1)[-1]


def has_subsequence(seq, wanted):
    it = iter(seq)
    return all(any(x == w for x in it) for w in wanted)


class NovaLifecycle(DaemonCase):
    events = (L.VIR_DOMAIN_EVENT_ID_LIFECYCLE, L.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
              L.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED)

    def setUp(self):
        super().setUp()
        self.conn.registerCloseCallback(lambda *a: None, None)

    # -- helpers ---------------------------------------------------------------------------

    def define(self, xml=None):
        return self.conn.defineXML(xml or nova_domain_xml(UUID, NAME))

    def spawn(self):
        """nova spawn: define, start paused, (vif events), resume."""
        dom = self.define()
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        dom.resume()
        return dom

    def lookup(self, uuid=UUID):
        return self.conn.lookupByUUIDString(uuid)

    def wait_events(self, wanted, name=NAME, timeout=10):
        got = self.ev.wait_for(
            lambda evs: has_subsequence(
                [(e[3], e[4]) for e in evs if e[0] == "lifecycle" and e[1] == name], wanted),
            timeout)
        self.assertTrue(got, f"events {wanted} not seen; got {self.ev.lifecycle(name)}")

    def assert_all_off_and_released(self):
        self.assertEqual(self.d.sim_mapped(), (0, 0), self.d.sim_state())
        for node, power in self.d.sim_powers().items():
            self.assertEqual(power, "Off", node)

    # -- spawn -------------------------------------------------------------------------------

    def test_spawn_start_paused_then_resume(self):
        dom = self.define()
        self.assertEqual(dom.UUIDString(), UUID)
        self.assertEqual(dom.name(), NAME)
        self.assertEqual(dom.ID(), -1)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_UNKNOWN])
        self.assertFalse(dom.isActive())
        self.assertTrue(dom.isPersistent())
        self.wait_events([DEFINED_ADDED])

        self.assertEqual(dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED), 0)
        dom = self.lookup()
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_PAUSED, L.VIR_DOMAIN_PAUSED_USER])
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_PAUSED)
        self.assertTrue(dom.isActive())
        self.assertGreater(dom.ID(), 0)
        # Hardware staged for the vif-plugged wait, but the server is not powered on yet.
        self.assertEqual(self.d.sim_mapped(), (1, 1))
        node = bound_node(dom.XMLDesc(0))
        self.assertIn(node, self.d.sim_powers())
        self.assertEqual(self.d.sim_power(node), "Off")
        nd = self.d.sim_state()["nodes"][node]
        self.assertEqual(len(nd["disks"]), 1)
        self.assertEqual(len(nd["nics"]), 1)

        paused_id = dom.ID()
        self.assertEqual(dom.resume(), 0)
        dom = self.lookup()
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_UNPAUSED])
        self.assertEqual(dom.ID(), paused_id, "resume keeps the id")
        self.assertEqual(self.d.sim_power(node), "On")
        self.assertEqual(self.d.sim_mapped(), (1, 1))
        self.wait_events([DEFINED_ADDED, STARTED_BOOTED, SUSPENDED_PAUSED, RESUMED_UNPAUSED])
        self.assertEqual(self.ev.lifecycle(NAME),
                         [DEFINED_ADDED, STARTED_BOOTED, SUSPENDED_PAUSED, RESUMED_UNPAUSED])
        self.assertEqual({e[2] for e in self.ev.events}, {UUID})

    def test_vif_timeout_destroys_paused_instance(self):
        # vif_plugging_is_fatal: isActive + destroy of the PAUSED instance, then cleanup.
        dom = self.define()
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        self.assertTrue(dom.isActive())
        self.assertEqual(dom.destroy(), 0)
        dom = self.lookup()
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_DESTROYED])
        self.assertEqual(dom.ID(), -1)
        self.assert_all_off_and_released()
        self.assertEqual(dom.undefineFlags(UNDEFINE_MANAGED_SAVE | UNDEFINE_NVRAM), 0)
        self.assertEqual(self.conn.listAllDomains(0), [])

    def test_guest_time_sync_reads_as_no_agent(self):
        """nova's sync_guest_time (after resume and the like): setTime with SYNC. A bare-metal
        server has no guest agent; nova logs VIR_ERR_OPERATION_UNSUPPORTED at debug level."""
        dom = self.define()
        e = expect_error(dom.setTime, None, L.VIR_DOMAIN_TIME_SYNC)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID, e)
        dom = self.spawn()
        for call in (lambda: dom.setTime(None, L.VIR_DOMAIN_TIME_SYNC), lambda: dom.getTime(0)):
            e = expect_error(call)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_UNSUPPORTED, e)
            self.assertIn("no guest agent", str(e))

    def test_domain_stats_as_an_exporter_reads_them(self):
        """Prometheus libvirt exporters: getAllDomainStats with every group, typed values."""
        dom = self.spawn()
        recs = self.conn.getAllDomainStats(0, L.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        self.assertEqual([d.UUIDString() for d, _ in recs], [UUID])
        st = recs[0][1]
        self.assertEqual((st["state.state"], st["state.reason"]),
                         (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_UNPAUSED))
        self.assertIsInstance(st["block.0.rd.bytes"], int)
        self.assertIsInstance(st["net.0.name"], str)
        self.assertEqual(st["block.count"], len(ET.fromstring(dom.XMLDesc(0)).findall(
            "devices/disk")))
        self.assertEqual(self.conn.getAllDomainStats(
            0, L.VIR_CONNECT_GET_ALL_DOMAINS_STATS_INACTIVE), [])
        # The list form (virDomainListGetStats), one group.
        (d, st), = self.conn.domainListGetStats([dom], L.VIR_DOMAIN_STATS_STATE, 0)
        self.assertEqual(sorted(st), ["state.reason", "state.state"])

    def test_running_domain_info_and_vcpus(self):
        self.spawn()
        dom = self.lookup()
        info = dom.info()
        self.assertEqual(info[:4], [L.VIR_DOMAIN_RUNNING, MEM_KIB, MEM_KIB, VCPUS])
        self.assertGreater(dom.ID(), 0)
        self.assertEqual(dom.maxMemory(), MEM_KIB)
        vcpu_info, cpumaps = dom.vcpus()
        self.assertEqual(len(vcpu_info), VCPUS)
        self.assertEqual([v[0] for v in vcpu_info], list(range(VCPUS)))
        self.assertEqual(len(cpumaps), VCPUS)
        ncpus = self.conn.getCPUMap()[0]
        for m in cpumaps:
            self.assertEqual(len(m), ncpus)

    # -- XML -------------------------------------------------------------------------------------

    def test_live_and_inactive_xml_keep_what_nova_defined(self):
        dom = self.define()
        inactive_before = dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        dom.resume()
        dom = self.lookup()
        live = ET.fromstring(dom.XMLDesc(0))
        self.assertEqual(live.get("type"), "kvm")
        self.assertEqual(live.get("id"), str(dom.ID()))
        self.assertEqual(live.findtext("uuid"), UUID)
        self.assertEqual(live.findtext("name"), NAME)

        inst = live.find(f"metadata/{{{NOVA_NS}}}instance")
        self.assertIsNotNone(inst, "nova:instance metadata kept")
        self.assertEqual(inst.findtext(f"{{{NOVA_NS}}}name"), "web-1")
        self.assertEqual(inst.find(f"{{{NOVA_NS}}}flavor").get("name"), "m1.small")
        self.assertEqual(inst.find(f"{{{NOVA_NS}}}root").get("uuid"), VOLUME)
        self.assertEqual(
            inst.find(f"{{{NOVA_NS}}}ports/{{{NOVA_NS}}}port/{{{NOVA_NS}}}ip").get("address"),
            "10.0.0.5")
        self.assertIsNotNone(live.find(f"metadata/{{{METALVIRT_NS}}}node"))

        self.assertEqual(live.find("sysinfo/system/entry[@name='serial']").text, UUID)
        self.assertEqual(live.find("os/type").get("machine")[:2], "pc")
        self.assertEqual(live.find("cpu").get("mode"), "host-model")

        disks = live.findall("devices/disk")
        self.assertEqual(len(disks), 1)
        disk = disks[0]
        self.assertEqual(disk.get("type"), "network")
        self.assertEqual(disk.find("alias").get("name"), f"ua-{VOLUME}")
        self.assertEqual(disk.find("target").get("dev"), "vda")
        self.assertEqual(disk.find("target").get("bus"), "virtio")
        self.assertEqual(disk.find("source").get("protocol"), "rbd")
        self.assertEqual(disk.find("source").get("name"), f"volumes/volume-{VOLUME}")
        self.assertEqual(len(disk.findall("source/host")), 2)
        self.assertEqual(disk.findtext("serial"), VOLUME)
        self.assertEqual(disk.find("auth").get("username"), "cinder")
        self.assertEqual(disk.find("auth/secret").get("type"), "ceph")

        nics = live.findall("devices/interface")
        self.assertEqual(len(nics), 1)
        nic = nics[0]
        self.assertEqual(nic.get("type"), "bridge")
        self.assertEqual(nic.find("alias").get("name"), "net0")
        self.assertEqual(nic.find("mac").get("address"), MAC)
        self.assertEqual(nic.find("source").get("bridge"), "br-int")
        self.assertEqual(nic.find("target").get("dev"), "tap" + PORT[:11])
        self.assertEqual(nic.find("model").get("type"), "virtio")
        self.assertEqual(nic.find("virtualport").get("type"), "openvswitch")
        self.assertEqual(nic.find("virtualport/parameters").get("interfaceid"), PORT)

        # Every device has an alias (libvirt never gives <graphics> one).
        aliases = []
        for dev in live.find("devices"):
            if dev.tag in ("graphics", "emulator"):
                continue
            alias = dev.find("alias")
            self.assertIsNotNone(alias, f"<{dev.tag}> has no alias in the live XML")
            self.assertTrue(alias.get("name"), dev.tag)
            aliases.append(alias.get("name"))
        self.assertEqual(len(aliases), len(set(aliases)), f"aliases unique: {aliases}")
        for tag in ("serial", "video", "input", "memballoon"):
            self.assertIsNotNone(live.find(f"devices/{tag}"), f"<{tag}> kept")

        for inactive_text in (inactive_before, dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)):
            inactive = ET.fromstring(inactive_text)
            self.assertIsNone(inactive.get("id"))
            self.assertEqual(inactive.findtext("uuid"), UUID)
            self.assertIsNotNone(inactive.find(f"metadata/{{{NOVA_NS}}}instance"))
            self.assertIsNone(inactive.find(f"metadata/{{{METALVIRT_NS}}}node"))
            all_aliases = [a.get("name") for a in inactive.iter("alias")]
            self.assertEqual(all_aliases, [f"ua-{VOLUME}"],
                             "only the user alias in the persistent config")

    def test_set_and_get_nova_metadata(self):
        self.spawn()
        dom = self.lookup()
        new = nova_instance_xml(display_name="renamed-web")
        self.assertEqual(dom.setMetadata(L.VIR_DOMAIN_METADATA_ELEMENT, new, "instance",
                                         NOVA_NS, 0), 0)
        # libvirt returns the element with the requested namespace removed
        # (virXMLExtractNamespaceXML), so compare local names.
        got = ET.fromstring(dom.metadata(L.VIR_DOMAIN_METADATA_ELEMENT, NOVA_NS, 0))
        self.assertEqual(local(got.tag), "instance")
        names = [el.text for el in got.iter() if local(el.tag) == "name"]
        self.assertEqual(names, ["renamed-web"])
        flavor = [el for el in got.iter() if local(el.tag) == "flavor"]
        self.assertEqual([f.get("name") for f in flavor], ["m1.small"])
        # Visible in the live XML, one nova:instance only.
        live = ET.fromstring(dom.XMLDesc(0))
        insts = live.findall(f"metadata/{{{NOVA_NS}}}instance")
        self.assertEqual(len(insts), 1)
        self.assertEqual(insts[0].findtext(f"{{{NOVA_NS}}}name"), "renamed-web")
        self.assertIsNotNone(live.find(f"metadata/{{{METALVIRT_NS}}}node"))
        # Flags 0 (AFFECT_CURRENT) on a running domain changes the live definition only.
        inactive = ET.fromstring(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE))
        self.assertEqual(
            inactive.findtext(f"metadata/{{{NOVA_NS}}}instance/{{{NOVA_NS}}}name"), "web-1")
        # AFFECT_CONFIG reaches the persistent definition.
        dom.setMetadata(L.VIR_DOMAIN_METADATA_ELEMENT, new, "instance", NOVA_NS,
                        L.VIR_DOMAIN_AFFECT_CONFIG)
        inactive = ET.fromstring(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE))
        self.assertEqual(
            inactive.findtext(f"metadata/{{{NOVA_NS}}}instance/{{{NOVA_NS}}}name"),
            "renamed-web")
        self.assertEqual(len(inactive.findall(f"metadata/{{{NOVA_NS}}}instance")), 1)
        e = expect_error(dom.metadata, L.VIR_DOMAIN_METADATA_ELEMENT, "http://example.com/x", 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_DOMAIN_METADATA)

    # -- reboot --------------------------------------------------------------------------------

    def test_soft_reboot(self):
        self.spawn()
        dom = self.lookup()
        old_id = dom.ID()
        node = bound_node(dom.XMLDesc(0))
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(dom.shutdown(), 0)

        # nova: once a second (here faster) lookupByUUIDString + info, compare the id.
        def shut_off():
            d = self.lookup()
            return d if (d.info()[0] == L.VIR_DOMAIN_SHUTOFF and d.ID() != old_id) else None

        dom = wait_until(shut_off, 10, what="SHUTOFF after guest shutdown")
        self.assertEqual(dom.ID(), -1)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_SHUTDOWN])
        self.assertEqual(self.d.sim_power(node), "Off")
        self.wait_events([SHUTDOWN_FINISHED, STOPPED_SHUTDOWN])

        self.assertEqual(dom.createWithFlags(0), 0)
        dom = self.lookup()
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertGreater(dom.ID(), 0)
        self.assertNotEqual(dom.ID(), old_id, "a new id on every start")
        self.assertEqual(bound_node(dom.XMLDesc(0)), node)
        self.assertEqual(self.d.sim_power(node), "On")
        self.wait_events([RESUMED_UNPAUSED, SHUTDOWN_FINISHED, STOPPED_SHUTDOWN, STARTED_BOOTED])

    def test_hard_reboot_lands_on_the_same_node(self):
        dom = self.define()
        inactive_xml = dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        dom.resume()
        dom = self.lookup()
        old_id = dom.ID()
        live_xml = dom.XMLDesc(0)
        node = bound_node(live_xml)
        boots = self.d.sim_state()["nodes"][node]["boots"]

        # _destroy: synchronous.
        self.assertEqual(dom.destroy(), 0)
        dom = self.lookup()
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(dom.state()[1], L.VIR_DOMAIN_SHUTOFF_DESTROYED)
        self.assertEqual(dom.ID(), -1)
        self.assertEqual(self.d.sim_power(node), "Off")
        self.assertEqual(self.d.sim_mapped(), (0, 0))

        # Another instance spawned meanwhile must not take the node.
        other = self.conn.defineXML(other_instance(2))
        other.createWithFlags(0)
        self.assertNotEqual(bound_node(self.conn.lookupByName(other.name()).XMLDesc(0)), node)

        self.assertEqual(dom.undefineFlags(
            UNDEFINE_MANAGED_SAVE | UNDEFINE_KEEP_NVRAM | UNDEFINE_KEEP_TPM), 0)
        e = expect_error(self.lookup)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_DOMAIN)
        dom = self.conn.defineXML(inactive_xml)
        self.assertEqual(dom.UUIDString(), UUID)
        self.assertEqual(dom.createWithFlags(0), 0)
        dom = wait_until(lambda: (lambda d: d if d.info()[0] == L.VIR_DOMAIN_RUNNING else None)(
            self.lookup()), 10, what="RUNNING")
        self.assertNotEqual(dom.ID(), old_id)
        self.assertEqual(bound_node(dom.XMLDesc(0)), node, "sticky node binding")
        self.assertEqual(self.d.sim_power(node), "On")
        self.assertEqual(self.d.sim_state()["nodes"][node]["boots"], boots + 1)
        self.assertEqual(self.d.sim_mapped(), (2, 2))
        self.wait_events([STOPPED_DESTROYED, UNDEFINED_REMOVED, DEFINED_ADDED, STARTED_BOOTED])

    # -- delete --------------------------------------------------------------------------------

    def test_delete(self):
        self.spawn()
        dom = self.lookup()
        self.assertEqual(dom.destroy(), 0)
        self.assertEqual(dom.undefineFlags(UNDEFINE_MANAGED_SAVE | UNDEFINE_NVRAM), 0)
        e = expect_error(self.lookup)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_DOMAIN)
        e = expect_error(self.conn.lookupByName, NAME)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_DOMAIN)
        self.assertEqual(self.conn.listAllDomains(0), [])
        self.assert_all_off_and_released()
        self.wait_events([STOPPED_DESTROYED, UNDEFINED_REMOVED])
        # A second delete (nova retries): 42 from the lookup, which nova treats as done.
        e = expect_error(dom.undefineFlags, UNDEFINE_MANAGED_SAVE | UNDEFINE_NVRAM)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_DOMAIN)

    def test_list_all_domains_splits_active_and_inactive(self):
        self.spawn()
        running = self.conn.defineXML(other_instance(2))
        running.createWithFlags(0)
        idle = self.conn.defineXML(other_instance(3))
        paused = self.conn.defineXML(other_instance(4))
        paused.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        active = self.conn.listAllDomains(L.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        self.assertEqual(sorted(x.name() for x in active),
                         sorted([NAME, running.name(), paused.name()]))
        for x in active:
            self.assertGreater(x.ID(), 0)
            self.assertIn(x.info()[0], (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_PAUSED))
        self.assertEqual(len({x.ID() for x in active}), 3, "ids unique")
        everything = self.conn.listAllDomains(
            L.VIR_CONNECT_LIST_DOMAINS_ACTIVE | L.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
        self.assertEqual(len(everything), 4)
        by_name = {x.name(): x for x in everything}
        self.assertEqual(set(by_name), {NAME, running.name(), idle.name(), paused.name()})
        self.assertEqual(by_name[idle.name()].ID(), -1)
        self.assertEqual(by_name[idle.name()].info()[0], L.VIR_DOMAIN_SHUTOFF)
        for n in (NAME, running.name(), paused.name()):
            self.assertGreater(by_name[n].ID(), 0, n)
        inactive = self.conn.listAllDomains(L.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
        self.assertEqual([x.name() for x in inactive], [idle.name()])
        self.assertEqual(inactive[0].ID(), -1)
        self.assertEqual(len(self.conn.listAllDomains(0)), 4)
        # nova's vcpus_used: vcpus() of each active domain.
        self.assertEqual(sum(len(x.vcpus()[0]) for x in active), 3 * VCPUS)

    # -- errors ----------------------------------------------------------------------------------

    def test_error_codes(self):
        self.spawn()
        dom = self.lookup()
        e = expect_error(dom.createWithFlags, 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID, e)
        e = expect_error(dom.suspend)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_UNSUPPORTED, e)
        e = expect_error(dom.resume)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID, e)

        idle = self.conn.defineXML(other_instance(2))
        e = expect_error(idle.destroy)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID, e)
        e = expect_error(idle.shutdown)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID, e)

        for bad in ("<domain type='kvm'><name>x</name>", "not xml at all", "<dom type='kvm'/>"):
            e = expect_error(self.conn.defineXML, bad)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_XML_ERROR, f"{bad!r}: {e}")

        dup = nova_domain_xml("0b5e2c9a-1d3f-4e6a-8b7c-9d0e1f2a3b4c", NAME)
        e = expect_error(self.conn.defineXML, dup)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
        self.assertIn(NAME, e.get_error_message())
        self.assertIn(UUID, e.get_error_message())
        # Same uuid, other name.
        e = expect_error(self.conn.defineXML, nova_domain_xml(UUID, "instance-0000ffff"))
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
        self.assertIn(UUID, e.get_error_message())
        # Nothing changed by the failures.
        self.assertEqual(self.lookup().info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(len(self.conn.listAllDomains(0)), 2)

    def test_redefine_running_domain_updates_config_only(self):
        # nova redefines running instances (e.g. attach with CONFIG); same uuid+name is fine.
        self.spawn()
        dom = self.lookup()
        live_id = dom.ID()
        xml = nova_domain_xml(UUID, NAME, display_name="redefined")
        dom = self.conn.defineXML(xml)
        self.assertEqual(dom.ID(), live_id)
        self.assertEqual(self.lookup().info()[0], L.VIR_DOMAIN_RUNNING)
        inactive = ET.fromstring(self.lookup().XMLDesc(L.VIR_DOMAIN_XML_INACTIVE))
        self.assertEqual(
            inactive.findtext(f"metadata/{{{NOVA_NS}}}instance/{{{NOVA_NS}}}name"), "redefined")

    def test_power_off_then_power_on_via_hard_reboot(self):
        # power_off: shutdown + poll; power_on is _hard_reboot (undefine+define+create).
        self.spawn()
        dom = self.lookup()
        inactive_xml = dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)
        node = bound_node(dom.XMLDesc(0))
        dom.shutdown()
        wait_until(lambda: self.lookup().info()[0] == L.VIR_DOMAIN_SHUTOFF, 10,
                   what="SHUTOFF")
        # _destroy of an already stopped instance: 55, which nova accepts when SHUTOFF.
        e = expect_error(self.lookup().destroy)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID)
        self.assert_all_off_and_released()
        time.sleep(0.3)  # several watcher intervals: nothing changes by itself
        self.assertEqual(self.lookup().info()[0], L.VIR_DOMAIN_SHUTOFF)
        self.lookup().undefineFlags(UNDEFINE_MANAGED_SAVE | UNDEFINE_KEEP_NVRAM)
        dom = self.conn.defineXML(inactive_xml)
        dom.createWithFlags(0)
        dom = self.lookup()
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(bound_node(dom.XMLDesc(0)), node)

    def test_volume_secret_lookup_reports_no_secret(self):
        # nova's find_secret('volume', volume_id) on spawn/delete with volumes: 66 = absent.
        e = expect_error(self.conn.secretLookupByUsage, L.VIR_SECRET_USAGE_TYPE_VOLUME, VOLUME)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET, e)


class SlowGuestShutdown(DaemonCase):
    """nova power_off with a guest that does not finish its shutdown in time:
    shutdown(), poll, destroy(); later power_on (= hard reboot) starts it again."""

    GRACEFUL_MS = 800
    sim = {"graceful_shutdown_ms": GRACEFUL_MS}

    def test_shutdown_in_progress_shows_running(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        dom.createWithFlags(0)
        dom_id = self.conn.lookupByUUIDString(UUID).ID()
        self.assertEqual(dom.shutdown(), 0)
        # nova re-sends shutdown every retry_interval while waiting.
        self.assertEqual(dom.shutdown(), 0)
        d = self.conn.lookupByUUIDString(UUID)
        self.assertEqual(d.info()[0], L.VIR_DOMAIN_RUNNING, "still going down")
        self.assertEqual(d.ID(), dom_id)
        wait_until(lambda: self.conn.lookupByUUIDString(UUID).info()[0] == L.VIR_DOMAIN_SHUTOFF,
                   10, what="SHUTOFF")

    # Regression: a graceful power-off still pending from an earlier boot must not power
    # off the server after a destroy() and a new start (nova's power_off timeout path).
    def test_power_off_timeout_then_power_on_stays_running(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        inactive_xml = dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)
        dom.createWithFlags(0)
        node = bound_node(self.conn.lookupByUUIDString(UUID).XMLDesc(0))
        # _clean_shutdown gives up (timeout) and _destroy powers off hard.
        dom.shutdown()
        time.sleep(0.1)
        self.assertEqual(dom.destroy(), 0)
        self.assertEqual(self.conn.lookupByUUIDString(UUID).info()[0], L.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(self.d.sim_power(node), "Off")
        # power_on = _hard_reboot: undefine, define, start.
        self.conn.lookupByUUIDString(UUID).undefineFlags(
            UNDEFINE_MANAGED_SAVE | UNDEFINE_KEEP_NVRAM | UNDEFINE_KEEP_TPM)
        dom = self.conn.defineXML(inactive_xml)
        dom.createWithFlags(0)
        new_id = self.conn.lookupByUUIDString(UUID).ID()
        self.assertEqual(self.d.sim_power(node), "On")
        # Past the old shutdown's deadline plus several watcher intervals.
        time.sleep(self.GRACEFUL_MS / 1000 + 0.5)
        d = self.conn.lookupByUUIDString(UUID)
        self.assertEqual(d.state(), [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_BOOTED])
        self.assertEqual(d.ID(), new_id)
        self.assertEqual(self.d.sim_power(node), "On")
        self.assertEqual(self.d.sim_mapped(), (1, 1))


if __name__ == "__main__":
    unittest.main(verbosity=2)
