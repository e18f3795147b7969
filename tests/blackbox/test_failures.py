"""Failed starts roll back the simulated hardware, and a daemon restart leaves running
servers alone. Driven through libvirt-python as nova calls it.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_failures
"""

import json
import os
import threading
import unittest

import libvirt

from .harness import (
    DaemonCase, NOVA_NS, EventCollector, bound_node, expect_error, nova_domain_xml,
    nova_instance_xml, wait_until,
)

L = libvirt
UUID = "6f1c4a52-3d9e-4a8b-9a51-0c7d2e5b1a01"
NAME = "instance-0000002a"
MAC = "fa:16:3e:aa:bb:cc"
BAD_VOLUME = "deadbeef-2222-3333-4444-555555555555"
BAD_SOURCE = f"volumes/volume-{BAD_VOLUME}"

STARTED_BOOTED = (L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_BOOTED)
STOPPED_DESTROYED = (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
DEFINED_ADDED = (L.VIR_DOMAIN_EVENT_DEFINED, L.VIR_DOMAIN_EVENT_DEFINED_ADDED)


def with_bad_second_disk(xml):
    """Adds a second RBD volume (vdb) after the root disk, so the root disk is mapped
    before the failure and has to be rolled back."""
    disk = f"""    <disk type="network" device="disk">
      <driver name="qemu" type="raw" cache="none"/>
      <alias name="ua-{BAD_VOLUME}"/>
      <source protocol="rbd" name="{BAD_SOURCE}">
        <host name="10.0.0.1" port="6789"/>
      </source>
      <target dev="vdb" bus="virtio"/>
      <serial>{BAD_VOLUME}</serial>
    </disk>
    <interface"""
    return xml.replace("    <interface", disk, 1)


def other_instance(n):
    return nova_domain_xml(
        f"6f1c4a52-3d9e-4a8b-9a51-0c7d2e5b1b{n:02d}", f"instance-000000{n:02x}",
        volume_id=f"{n:08d}-2222-3333-4444-555555555555",
        mac=f"fa:16:3e:00:00:{n:02x}", port_id=f"{n:08d}-5a1b-4c2d-8e9f-a0b1c2d3e4f5")


class Base(DaemonCase):
    sim = {}
    events = (L.VIR_DOMAIN_EVENT_ID_LIFECYCLE,)

    def lookup(self, uuid=UUID, conn=None):
        return (conn or self.conn).lookupByUUIDString(uuid)

    def flush_events(self, n=90):
        """Defines a throw-away domain and waits for its DEFINED event: events are delivered
        in order, so every event emitted before it has arrived too."""
        name = f"marker-{n}"
        x = other_instance(n).replace(f"instance-000000{n:02x}", name)
        self.conn.defineXML(x)
        got = self.ev.wait_for(lambda evs: any(e[0] == "lifecycle" and e[1] == name
                                               for e in evs), 10)
        self.assertTrue(got, "marker event not delivered")
        self.conn.lookupByName(name).undefine()

    def assert_failed_and_released(self, dom, busy=(0, 0)):
        dom = self.lookup()
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_FAILED])
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(dom.ID(), -1)
        self.assertFalse(dom.isActive())
        self.assertEqual(self.d.sim_mapped(), busy, self.d.sim_state())
        self.flush_events()
        self.assertNotIn(STARTED_BOOTED, self.ev.lifecycle(NAME),
                         "no STARTED event for a start that failed")

    def assert_all_off(self, except_nodes=()):
        for node, power in self.d.sim_powers().items():
            if node not in except_nodes:
                self.assertEqual(power, "Off", f"{node}: {self.d.sim_state()}")


class DiskFailure(Base):
    sim = {"fail_disk_sources": [BAD_VOLUME[:8]]}

    def test_disk_failure_rolls_back(self):
        dom = self.conn.defineXML(with_bad_second_disk(nova_domain_xml(UUID, NAME)))
        for flags in (0, L.VIR_DOMAIN_START_PAUSED):
            with self.subTest(flags=flags):
                e = expect_error(dom.createWithFlags, flags)
                self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
                self.assertIn(BAD_SOURCE, e.get_error_message())
                self.assertNotIn(e.get_error_domain(), (L.VIR_FROM_RPC, L.VIR_FROM_REMOTE))
                self.assert_failed_and_released(dom)
                self.assert_all_off()
        self.assertTrue(self.conn.isAlive())

    def test_failure_leaves_other_servers_alone(self):
        other = self.conn.defineXML(other_instance(2))
        other.createWithFlags(0)
        other_node = bound_node(self.lookup(other.UUIDString()).XMLDesc(0))
        dom = self.conn.defineXML(with_bad_second_disk(nova_domain_xml(UUID, NAME)))
        e = expect_error(dom.createWithFlags, 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
        self.assert_failed_and_released(dom, busy=(1, 1))
        self.assertEqual(self.d.sim_power(other_node), "On")
        self.assert_all_off(except_nodes=[other_node])
        self.assertEqual(self.lookup(other.UUIDString()).info()[0], L.VIR_DOMAIN_RUNNING)

    def test_starts_after_restart_without_the_failure(self):
        dom = self.conn.defineXML(with_bad_second_disk(nova_domain_xml(UUID, NAME)))
        expect_error(dom.createWithFlags, 0)
        self.d.restart(remove_sim=["fail_disk_sources"])
        conn = self.connect()
        dom = self.lookup(conn=conn)
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(self.d.sim_mapped(), (0, 0))
        self.assertEqual(dom.createWithFlags(0), 0)
        dom = self.lookup(conn=conn)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_BOOTED])
        self.assertEqual(self.d.sim_mapped(), (2, 1))
        self.assertEqual(self.d.sim_power(bound_node(dom.XMLDesc(0))), "On")


class NicFailure(Base):
    sim = {"fail_nic_macs": [MAC]}

    def test_nic_failure_rolls_back(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME, mac=MAC))
        for flags in (0, L.VIR_DOMAIN_START_PAUSED):
            with self.subTest(flags=flags):
                e = expect_error(dom.createWithFlags, flags)
                self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
                self.assertIn(MAC, e.get_error_message())
                self.assert_failed_and_released(dom)
                self.assert_all_off()

    def test_other_mac_is_fine(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME, mac="fa:16:3e:11:22:33"))
        self.assertEqual(dom.createWithFlags(0), 0)
        self.assertEqual(self.lookup().info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(self.d.sim_mapped(), (1, 1))


class PowerOnFailure(Base):
    sim = {"nodes": 1, "fail_power_on_nodes": ["node-1"]}

    def test_power_on_failure_rolls_back(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        e = expect_error(dom.createWithFlags, 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
        self.assertIn("node-1", e.get_error_message())
        self.assert_failed_and_released(dom)
        self.assert_all_off()

    def test_resume_failure_then_nova_cleanup(self):
        # nova: createWithFlags(START_PAUSED) stages the hardware; resume powers on and
        # fails; nova then destroys the instance.
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        self.assertEqual(self.d.sim_mapped(), (1, 1))
        e = expect_error(dom.resume)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, e)
        self.assertIn("node-1", e.get_error_message())
        dom = self.lookup()
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_PAUSED, "a failed resume stays paused")
        self.assertTrue(dom.isActive())
        self.assertEqual(dom.destroy(), 0)
        dom = self.lookup()
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_DESTROYED])
        self.assertEqual(self.d.sim_mapped(), (0, 0))
        self.assert_all_off()


class DaemonRestart(Base):
    def test_running_domain_survives_sigterm(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        dom.resume()
        dom = self.lookup()
        # A live-only change (nova's setMetadata with flags 0) must survive the restart.
        dom.setMetadata(L.VIR_DOMAIN_METADATA_ELEMENT, nova_instance_xml("live-name"),
                        "instance", NOVA_NS, 0)
        dom_id = dom.ID()
        live_xml = dom.XMLDesc(0)
        inactive_xml = dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE)
        node = bound_node(live_xml)
        boots = self.d.sim_state()["nodes"][node]["boots"]
        closed = threading.Event()
        self.conn.registerCloseCallback(lambda *a: closed.set(), None)

        self.d.restart()
        self.assertTrue(closed.wait(10), "old connection saw the daemon go away")

        conn = self.connect()
        ev = EventCollector(conn)
        ev.register(L.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
        dom = self.lookup(conn=conn)
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_UNPAUSED])
        self.assertEqual(dom.ID(), dom_id)
        self.assertEqual(bound_node(dom.XMLDesc(0)), node)
        self.assertEqual(dom.XMLDesc(0), live_xml)
        self.assertEqual(dom.XMLDesc(L.VIR_DOMAIN_XML_INACTIVE), inactive_xml)
        self.assertEqual(self.d.sim_power(node), "On")
        self.assertEqual(self.d.sim_state()["nodes"][node]["boots"], boots, "not rebooted")
        self.assertEqual(self.d.sim_mapped(), (1, 1))
        active = conn.listAllDomains(L.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        self.assertEqual([(x.UUIDString(), x.ID()) for x in active], [(UUID, dom_id)])

        # Events work on the new connection.
        other = conn.defineXML(other_instance(2))
        other.createWithFlags(0)
        other = conn.lookupByUUIDString(other.UUIDString())
        self.assertNotEqual(other.ID(), dom_id, "ids stay unique after a restart")
        self.assertEqual(dom.destroy(), 0)
        got = ev.wait_for(lambda evs: [(e[3], e[4]) for e in evs if e[1] == NAME]
                          == [STOPPED_DESTROYED], 10)
        self.assertTrue(got, ev.events)
        self.assertTrue(ev.wait_for(lambda evs: [(e[3], e[4]) for e in evs
                                                 if e[1] == other.name()]
                                    == [DEFINED_ADDED, STARTED_BOOTED], 10), ev.events)
        self.assertEqual(self.d.sim_power(node), "Off")
        self.assertEqual(self.d.sim_mapped(), (1, 1))

    def test_paused_domain_survives_restart_and_resumes(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        dom.createWithFlags(L.VIR_DOMAIN_START_PAUSED)
        dom_id = self.lookup().ID()
        node = bound_node(self.lookup().XMLDesc(0))
        self.d.restart()
        conn = self.connect()
        dom = self.lookup(conn=conn)
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_PAUSED)
        self.assertEqual(dom.ID(), dom_id)
        self.assertEqual(self.d.sim_power(node), "Off")
        self.assertEqual(dom.resume(), 0)
        self.assertEqual(self.lookup(conn=conn).info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(self.d.sim_power(node), "On")

    def test_running_domain_survives_sigkill(self):
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        dom.createWithFlags(0)
        dom_id = self.lookup().ID()
        node = bound_node(self.lookup().XMLDesc(0))
        self.d.kill_and_restart()
        conn = self.connect()
        dom = self.lookup(conn=conn)
        self.assertEqual(dom.info()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(dom.ID(), dom_id)
        self.assertEqual(bound_node(dom.XMLDesc(0)), node)
        self.assertEqual(dom.destroy(), 0)
        self.assertEqual(self.d.sim_mapped(), (0, 0))

    def test_start_interrupted_by_a_crash_is_consistent_after_restart(self):
        # Slow hardware so the SIGKILL lands in the middle of the start.
        self.d.restart(sim={"disk_latency_ms": 200, "power_latency_ms": 500})
        conn = self.connect()
        dom = conn.defineXML(nova_domain_xml(UUID, NAME))
        errors = []

        def start():
            try:
                dom.createWithFlags(0)
            except libvirt.libvirtError as e:
                errors.append(e)

        t = threading.Thread(target=start, daemon=True)
        t.start()
        wait_until(lambda: self.d.sim_mapped() != (0, 0), 5, interval=0.005,
                   what="start under way")
        self.d.kill_and_restart()
        t.join(10)
        self.assertEqual(len(errors), 1, "the interrupted call fails on the client")
        conn = self.connect()
        dom = self.lookup(conn=conn)
        state = dom.info()[0]
        if state == L.VIR_DOMAIN_RUNNING:
            node = bound_node(dom.XMLDesc(0))
            self.assertEqual(self.d.sim_power(node), "On")
            self.assertEqual(self.d.sim_mapped(), (1, 1))
        else:
            self.assertEqual(state, L.VIR_DOMAIN_SHUTOFF)
            self.assertEqual(dom.ID(), -1)
            self.assertEqual(self.d.sim_mapped(), (0, 0), self.d.sim_state())
            self.assert_all_off()
            # And it can be started again.
            self.assertEqual(dom.createWithFlags(0), 0)
            self.assertEqual(self.d.sim_mapped(), (1, 1))

    def test_server_powered_off_while_daemon_down(self):
        # The watcher notices that a bound server is off after the restart.
        dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))
        dom.createWithFlags(0)
        node = bound_node(self.lookup().XMLDesc(0))
        self.d.stop()
        path = self.d.sim_node_file(node)
        with open(path) as f:
            state = json.load(f)
        state["power"] = "Off"
        with open(path, "w") as f:
            json.dump(state, f)
        self.d.restart()
        conn = self.connect()
        wait_until(lambda: self.lookup(conn=conn).info()[0] == L.VIR_DOMAIN_SHUTOFF, 10,
                   what="domain SHUTOFF after its server was found off")
        self.assertEqual(self.lookup(conn=conn).ID(), -1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
