"""nova's connection and host-inspection sequence against metalvirtd (PROTOCOL.md 2.1, 4.2-4.4, 4.7).

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_connect
"""

import threading
import unittest
import xml.etree.ElementTree as ET

import libvirt

from .harness import (
    DaemonCase,     Daemon, EventCollector, expect_error, nova_domain_xml, open_like_nova, start_event_loop,
    wait_until,
)

NODES = 4
# Defaults of the simulated lab (packaging/metalvirtd.toml).
SOCKETS, CORES, THREADS, MEMORY_MIB = 2, 16, 2, 262144


def domcaps_enum(root, path, name):
    return [v.text for v in root.findall(f"{path}/enum[@name='{name}']/value")]


class NovaConnection(unittest.TestCase):
    """One daemon and one nova-style connection for the read-only host queries."""

    @classmethod
    def setUpClass(cls):
        start_event_loop()  # nova registers the default event impl before connecting
        cls.daemon = Daemon().__enter__()
        try:
            cls.conn = open_like_nova(cls.daemon.uri)
        except BaseException:
            cls.daemon.__exit__(None, None, None)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.conn.close()
        except libvirt.libvirtError:
            pass
        cls.daemon.__exit__(None, None, None)

    def test_register_events_and_close_callback_like_nova(self):
        ev = EventCollector(self.conn)
        ids = [ev.register(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE),
               ev.register(libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED),
               ev.register(libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED)]
        self.assertEqual(len(set(ids)), 3, ids)
        for cid in ids:
            self.assertGreaterEqual(cid, 0)
        self.assertEqual(self.conn.registerCloseCallback(lambda *a: None, None), 0)
        self.conn.unregisterCloseCallback()
        ev.deregister_all()
        self.assertTrue(self.conn.isAlive())

    def test_versions_and_type(self):
        self.assertGreaterEqual(self.conn.getLibVersion(), 10000000)
        self.assertGreaterEqual(self.conn.getVersion(), 8002002)
        self.assertEqual(self.conn.getType(), "QEMU")
        host = self.conn.getHostname()
        self.assertIsInstance(host, str)
        self.assertTrue(host)
        # nova's _test_connection: getLibVersion on every get_connection().
        for _ in range(50):
            self.conn.getLibVersion()

    def test_get_info(self):
        info = self.conn.getInfo()
        self.assertEqual(len(info), 8, info)
        arch, mem_mib, cpus, mhz, numa_nodes, sockets, cores, threads = info
        self.assertEqual(arch, "x86_64")
        self.assertEqual(mem_mib, NODES * MEMORY_MIB, "getInfo()[1] is node memory in MiB")
        self.assertEqual(cpus, NODES * SOCKETS * CORES * THREADS)
        self.assertGreater(mhz, 0)
        self.assertEqual(numa_nodes * sockets * cores * threads, cpus, info)

    def test_cpu_map_and_stats(self):
        ncpus, cpumap, online = self.conn.getCPUMap()
        self.assertEqual(ncpus, self.conn.getInfo()[2])
        self.assertEqual(len(cpumap), ncpus)
        self.assertTrue(all(cpumap), "every CPU online")
        self.assertEqual(online, ncpus)
        stats = self.conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        for k in ("kernel", "user", "idle", "iowait"):
            self.assertIn(k, stats)
            self.assertIsInstance(stats[k], int)
            self.assertGreaterEqual(stats[k], 0)

    def test_capabilities(self):
        caps = ET.fromstring(self.conn.getCapabilities())
        self.assertEqual(caps.tag, "capabilities")
        self.assertEqual(caps.findtext("host/cpu/arch"), "x86_64")
        self.assertTrue(caps.findtext("host/uuid"))
        cells = caps.find("host/topology/cells")
        self.assertIsNotNone(cells)
        self.assertEqual(int(cells.get("num")), NODES)
        cell_list = cells.findall("cell")
        self.assertEqual(len(cell_list), NODES)
        total_cpus = 0
        for cell in cell_list:
            self.assertEqual(cell.find("memory").get("unit"), "KiB")
            self.assertEqual(int(cell.findtext("memory")), MEMORY_MIB * 1024)
            cpus = cell.find("cpus")
            self.assertEqual(int(cpus.get("num")), len(cpus.findall("cpu")))
            for cpu in cpus.findall("cpu"):
                for attr in ("id", "socket_id", "core_id", "siblings"):
                    self.assertIsNotNone(cpu.get(attr), attr)
            total_cpus += len(cpus.findall("cpu"))
        self.assertEqual(total_cpus, self.conn.getInfo()[2])

        guests = caps.findall("guest")
        self.assertTrue(guests)
        arch = None
        for g in guests:
            a = g.find("arch[@name='x86_64']")
            if g.findtext("os_type") == "hvm" and a is not None:
                arch = a
        self.assertIsNotNone(arch, "an hvm x86_64 guest")
        self.assertEqual(arch.findtext("wordsize"), "64")
        self.assertTrue(arch.findtext("emulator"))
        machines = [m.text for m in arch.findall("machine")]
        self.assertIn("pc", machines)
        self.assertIn("q35", machines)
        canon = {m.text: m.get("canonical") for m in arch.findall("machine")}
        self.assertTrue(canon["pc"], "pc is an alias with a canonical name")
        self.assertIn(canon["pc"], machines)
        domain_types = [d.get("type") for d in arch.findall("domain")]
        self.assertIn("kvm", domain_types)

    def check_domcaps(self, xml_text, machine_prefix):
        root = ET.fromstring(xml_text)
        self.assertEqual(root.tag, "domainCapabilities")
        self.assertEqual(root.findtext("domain"), "kvm")
        self.assertEqual(root.findtext("arch"), "x86_64")
        self.assertTrue(root.findtext("machine", "").startswith(machine_prefix),
                        root.findtext("machine"))
        self.assertIsNotNone(root.find("os"), "<os> is mandatory for nova")
        self.assertTrue(domcaps_enum(root, "os/loader", "type"), "os/loader enum type")
        self.assertIsNotNone(root.find("devices/disk"), "<devices><disk> is mandatory")
        self.assertIn("virtio", domcaps_enum(root, "devices/disk", "bus"))
        self.assertIsNotNone(root.find("devices/video"), "<devices><video> is mandatory")
        self.assertTrue(domcaps_enum(root, "devices/video", "modelType"))
        return root

    def test_domain_capabilities_pc_and_q35(self):
        pc = self.check_domcaps(
            self.conn.getDomainCapabilities(None, "x86_64", "pc", "kvm", 0), "pc-i440fx")
        q35 = self.check_domcaps(
            self.conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0), "pc-q35")
        self.assertNotEqual(pc.findtext("machine"), q35.findtext("machine"))
        # nova passes the emulator from the capabilities and the canonical machine name too.
        emulator = ET.fromstring(self.conn.getCapabilities()).findtext(
            "guest/arch[@name='x86_64']/emulator")
        canon = pc.findtext("machine")
        again = self.check_domcaps(
            self.conn.getDomainCapabilities(emulator, "x86_64", canon, "kvm", 0), "pc-i440fx")
        self.assertEqual(again.findtext("machine"), canon)
        self.assertEqual(again.findtext("path"), emulator)

    def test_domain_capabilities_unknown_machine_is_an_error(self):
        e = expect_error(self.conn.getDomainCapabilities, None, "x86_64", "no-such-machine",
                         "kvm", 0)
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_INVALID_ARG, e)
        self.assertIn("no-such-machine", e.get_error_message())
        # Not a "connection broken" error for nova, and the connection survives.
        self.assertNotIn(e.get_error_domain(), (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE))
        self.assertTrue(self.conn.isAlive())
        self.assertGreaterEqual(self.conn.getLibVersion(), 10000000)

    def test_nova_host_inventory_calls(self):
        """What nova's init_host and get_available_resource ask besides domains (PCI and
        mdev inventory, CPU models, CPU comparison and baseline), answered without a single
        "unknown procedure" in the daemon's log."""
        c = self.conn
        # init_host: inactive mediated devices to start: none.
        self.assertEqual(c.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV
                                          | libvirt.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE), [])
        # The periodic PCI scan: NET | PCI_DEV | VDPA = 131090.
        devs = c.listAllDevices(131090)
        self.assertEqual(len(devs), NODES * 16)
        for dev in devs[:3] + devs[-1:]:
            self.assertEqual(dev.listCaps(), ["pci"])
            self.assertEqual(dev.parent(), "computer")
            root = ET.fromstring(dev.XMLDesc(0))
            cap = root.find("capability[@type='pci']")
            self.assertEqual(cap.find("vendor").get("id"), "0x1af4")
            addr = "pci_%04x_%02x_%02x_%x" % tuple(
                int(cap.find(k).text) for k in ("domain", "bus", "slot", "function"))
            self.assertEqual(addr, dev.name())
        self.assertEqual(c.nodeDeviceLookupByName("computer").listCaps(), ["system"])
        e = expect_error(c.nodeDeviceLookupByName, "pci_0000_00_1f_0")
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_NO_NODE_DEVICE)
        self.assertEqual(e.get_error_domain(), libvirt.VIR_FROM_NODEDEV)
        # CPU models: the nodes' own.
        model = "Simulated Xeon (metalvirt sim)"
        self.assertEqual(c.getCPUModelNames("x86_64", 0), [model])
        caps = ET.fromstring(c.getCapabilities())
        self.assertEqual(caps.find("host/cpu/model").text, model)
        host_cpu = ET.tostring(caps.find("host/cpu"), encoding="unicode")
        self.assertIn(f"<model fallback='forbid'>{model}</model>",
                      c.baselineCPU([host_cpu], libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES))
        custom = f"<cpu mode='custom' match='exact'><model>{model}</model></cpu>"
        self.assertEqual(c.compareHypervisorCPU(None, None, None, None, custom, 0),
                         libvirt.VIR_CPU_COMPARE_IDENTICAL)
        other = "<cpu mode='custom' match='exact'><model>Icelake-Server</model></cpu>"
        self.assertEqual(c.compareCPU(other, 0), libvirt.VIR_CPU_COMPARE_INCOMPATIBLE)
        e = expect_error(c.compareHypervisorCPU, None, "aarch64", None, None, custom, 0)
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_CONFIG_UNSUPPORTED)
        # Networks: the lab's integration bridge.
        nets = c.listAllNetworks(0)
        self.assertEqual([n.name() for n in nets], ["br-int"])
        self.assertEqual(nets[0].bridgeName(), "br-int")
        self.assertEqual(c.listAllStoragePools(0), [])
        self.assertNotIn("unknown procedure", self.daemon.log())

    def test_list_all_domains_empty(self):
        self.assertEqual(self.conn.listAllDomains(0), [])
        self.assertEqual(self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE), [])
        self.assertEqual(self.conn.numOfDomains(), 0)

    def test_lookup_of_missing_domain(self):
        e = expect_error(self.conn.lookupByUUIDString, "00000000-1111-2222-3333-444444444444")
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_NO_DOMAIN)
        e = expect_error(self.conn.lookupByName, "instance-ffffffff")
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_NO_DOMAIN)


class ConfiguredHost(unittest.TestCase):
    def test_hostname_and_lab_size_come_from_config(self):
        sim = {"nodes": 2, "sockets": 1, "cores": 4, "threads": 2, "memory_mib": 65536}
        with Daemon(sim=sim, extra='hostname = "rack1-ctl"\n') as d:
            conn = open_like_nova(d.uri)
            try:
                self.assertEqual(conn.getHostname(), "rack1-ctl")
                info = conn.getInfo()
                self.assertEqual(info[1], 2 * 65536)
                self.assertEqual(info[2], 2 * 1 * 4 * 2)
                ncpus, cpumap, online = conn.getCPUMap()
                self.assertEqual((ncpus, online), (16, 16))
                caps = ET.fromstring(conn.getCapabilities())
                self.assertEqual(caps.find("host/topology/cells").get("num"), "2")
            finally:
                conn.close()


class ReadOnly(DaemonCase):
    def setUp(self):
        super().setUp()
        self.uuid = "3f0d7c1e-8a2b-4c5d-9e6f-0a1b2c3d4e5f"
        self.conn.defineXML(nova_domain_xml(self.uuid, "instance-00000001"))

    def test_read_only_connection(self):
        ro = libvirt.openReadOnly(self.d.ro_uri)
        self.addCleanup(ro.close)
        doms = ro.listAllDomains(0)
        self.assertEqual([x.UUIDString() for x in doms], [self.uuid])
        self.assertEqual(doms[0].info()[0], libvirt.VIR_DOMAIN_SHUTOFF)
        ET.fromstring(doms[0].XMLDesc(0))
        ET.fromstring(ro.getCapabilities())
        self.assertGreaterEqual(ro.getLibVersion(), 10000000)
        e = expect_error(ro.defineXML, nova_domain_xml(
            "0b5e2c9a-1d3f-4e6a-8b7c-9d0e1f2a3b4c", "instance-00000002"))
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED, e)
        e = expect_error(doms[0].create)
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED, e)
        self.assertEqual(len(ro.listAllDomains(0)), 1, "nothing was defined")

    def test_read_only_socket_is_enforced_by_the_server(self):
        # No RO flag from the client: only the server can refuse these.
        conn = open_like_nova(self.d.ro_uri)
        self.addCleanup(conn.close)
        self.assertEqual(len(conn.listAllDomains(0)), 1)
        e = expect_error(conn.defineXML, nova_domain_xml(
            "0b5e2c9a-1d3f-4e6a-8b7c-9d0e1f2a3b4c", "instance-00000002"))
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED, e)
        self.assertIn("read only", e.get_error_message())
        dom = conn.lookupByUUIDString(self.uuid)
        for op in (dom.create, dom.undefine, lambda: dom.setAutostart(1)):
            e = expect_error(op)
            self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED, e)
        e = expect_error(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_SECURE)
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED, e)
        # PROTOCOL.md 2.4: GetDomainCapabilities is a write-denied API.
        e = expect_error(conn.getDomainCapabilities, None, "x86_64", "pc", "kvm", 0)
        self.assertEqual(e.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED, e)
        ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        self.assertEqual(dom.info()[0], libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(len(conn.listAllDomains(0)), 1)


class Events(unittest.TestCase):
    def test_events_reach_every_connection_and_respect_the_domain_filter(self):
        start_event_loop()
        with Daemon() as d:
            a = open_like_nova(d.uri)
            b = open_like_nova(d.uri)
            ro = libvirt.openReadOnly(d.ro_uri)
            try:
                ea, eb, ero = EventCollector(a), EventCollector(b), EventCollector(ro)
                for ev in (ea, eb, ero):
                    ev.register(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
                u1 = "3f0d7c1e-8a2b-4c5d-9e6f-0a1b2c3d4e01"
                u2 = "3f0d7c1e-8a2b-4c5d-9e6f-0a1b2c3d4e02"
                d1 = a.defineXML(nova_domain_xml(u1, "instance-00000001"))
                # A second, domain-filtered callback on b for d1 only.
                filtered = EventCollector(b)
                filtered.register(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                  b.lookupByUUIDString(u1))
                d2 = a.defineXML(nova_domain_xml(
                    u2, "instance-00000002", mac="fa:16:3e:00:00:02",
                    volume_id="22222222-2222-3333-4444-555555555555"))
                d1.createWithFlags(0)
                d2.createWithFlags(0)
                want = [
                    (u1, libvirt.VIR_DOMAIN_EVENT_DEFINED), (u2, libvirt.VIR_DOMAIN_EVENT_DEFINED),
                    (u1, libvirt.VIR_DOMAIN_EVENT_STARTED), (u2, libvirt.VIR_DOMAIN_EVENT_STARTED),
                ]
                for ev in (ea, eb, ero):
                    got = ev.wait_for(lambda evs: len(evs) >= 4 and evs, 10)
                    self.assertEqual([(e[2], e[3]) for e in (got or ev.events)], want)
                got = filtered.wait_for(lambda evs: evs, 10)
                self.assertTrue(got)
                self.assertEqual([(e[2], e[3]) for e in filtered.events],
                                 [(u1, libvirt.VIR_DOMAIN_EVENT_STARTED)])
                # Deregistered callbacks get nothing more; the others still do.
                ea.deregister_all()
                ea.clear()
                d1.destroy()
                self.assertTrue(eb.wait_for(lambda evs: len(evs) >= 5, 10))
                self.assertTrue(filtered.wait_for(lambda evs: len(evs) >= 2, 10))
                self.assertEqual(filtered.events[-1][3], libvirt.VIR_DOMAIN_EVENT_STOPPED)
                self.assertEqual(ea.events, [])
            finally:
                for c in (a, b, ro):
                    c.close()


class ConnectionLifetime(unittest.TestCase):
    def test_is_alive_and_close(self):
        with Daemon() as d:
            conn = open_like_nova(d.uri)
            self.assertTrue(conn.isAlive())
            self.assertEqual(conn.close(), 0)

    def test_close_callback_fires_when_the_daemon_goes_away(self):
        start_event_loop()
        with Daemon() as d:
            conn = open_like_nova(d.uri)
            got = []
            fired = threading.Event()

            def closed(_conn, reason, _opaque):
                got.append(reason)
                fired.set()

            conn.registerCloseCallback(closed, None)
            EventCollector(conn).register(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
            d.stop()
            self.assertTrue(fired.wait(10), "close callback not called")
            # EOF, or ERROR when the socket is reset; either way nova reconnects.
            self.assertEqual(len(got), 1, got)
            self.assertIn(got[0], (libvirt.VIR_CONNECT_CLOSE_REASON_EOF,
                                   libvirt.VIR_CONNECT_CLOSE_REASON_ERROR))
            wait_until(lambda: not conn.isAlive(), 5, what="isAlive() false")
            try:
                conn.close()
            except libvirt.libvirtError:
                pass


if __name__ == "__main__":
    unittest.main(verbosity=2)
