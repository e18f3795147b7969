"""The openbmc BMC driver, black-box: metalvirtd reaches an OpenBMC's D-Bus objects
(peers.OpenBmcBus: a private dbus-daemon with phosphor-state-manager's and the settings
daemon's objects as they document them; transitions take 0.3 s and are announced by
PropertiesChanged). python3-libvirt drives metalvirtd.

The daemon's power watcher polls only once a minute here: an out-of-band power change that
becomes a lifecycle event within a second came by the D-Bus signal.

Run (from the repository root, after cargo build):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_openbmc
"""

import time
import unittest

import libvirt

from . import peers
from .harness import Daemon, EventCollector, expect_error, pinned_domain_xml, start_event_loop

L = libvirt
LAB = {}
NODE = "bm-obmc"
HOST_IFACE = "xyz.openbmc_project.State.Host"


def node_toml(address, persistent=True):
    return f"""
[[node]]
name = "{NODE}"
cores = 8
memory_mib = 16384
[node.bmc]
driver = "openbmc"
address = "{address}"
power_on_timeout_s = 10
power_off_timeout_s = 10
boot_persistent = {"true" if persistent else "false"}
"""


def setUpModule():
    start_event_loop()  # before any connection is opened, or it gets no events
    bus = LAB["bus"] = unittest.enterModuleContext(peers.OpenBmcBus(delay=0.3))
    LAB["daemon"] = unittest.enterModuleContext(Daemon(
        raw=node_toml(bus.address, persistent=False),
        extra="[watcher]\ninterval_ms = 60000\n"))


class OpenBmc(unittest.TestCase):
    def setUp(self):
        self.bus = LAB["bus"]
        self.conn = libvirt.open(LAB["daemon"].uri)
        self.ev = EventCollector(self.conn)
        self.ev.register(L.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
        self.dom = self.conn.defineXML(pinned_domain_xml(
            "obmc-1", NODE, [], "0bc00001-0000-4000-8000-000000000001").replace(
            "<os><type arch='x86_64'>hvm</type></os>",
            "<os><type arch='x86_64'>hvm</type><boot dev='network'/></os>"))

    def tearDown(self):
        self.ev.deregister_all()
        if self.dom.isActive():
            self.dom.destroy()
        self.dom.undefine()
        self.conn.close()
        if self.bus.host_state() != "Off":
            self.bus.set_power("Off")

    def boot_settings(self):
        b = "/xyz/openbmc_project/control/host0/boot"
        s = "xyz.openbmc_project.Settings"
        return (self.bus.prop(s, b, "xyz.openbmc_project.Control.Boot.Source", "BootSource"),
                self.bus.prop(s, b + "/one_time", "xyz.openbmc_project.Object.Enable",
                              "Enabled"))

    def test_1_start_sets_the_boot_override_and_waits_for_the_host_to_run(self):
        before = len(self.bus.requests())
        self.dom.create()
        self.assertEqual(self.dom.state()[0], L.VIR_DOMAIN_RUNNING)
        self.assertEqual(self.bus.host_state(), "Running")
        self.assertEqual(self.bus.requests()[before:], ["On"])
        self.assertEqual(self.boot_settings(), (
            "xyz.openbmc_project.Control.Boot.Source.Sources.Network", "true"))

    def test_2_destroy_is_a_chassis_power_off_shutdown_a_host_one(self):
        self.dom.create()
        self.dom.destroy()
        self.assertEqual(self.bus.requests()[-1], "Off")
        self.assertEqual(self.bus.host_state(), "Off")
        chassis = self.bus.prop("xyz.openbmc_project.State.Chassis",
                                "/xyz/openbmc_project/state/chassis0",
                                "xyz.openbmc_project.State.Chassis", "RequestedPowerTransition")
        self.assertTrue(chassis.endswith("Chassis.Transition.Off"), chassis)
        self.dom.create()
        self.dom.shutdown()
        host = self.bus.prop(HOST_IFACE, "/xyz/openbmc_project/state/host0", HOST_IFACE,
                             "RequestedHostTransition")
        self.assertTrue(host.endswith("Host.Transition.Off"), host)
        got = self.ev.wait_for(lambda evs: (L.VIR_DOMAIN_EVENT_STOPPED,
                                            L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
                               in self.ev.lifecycle("obmc-1"), timeout=5)
        self.assertTrue(got, self.ev.events)

    def test_3_reset_and_reboot_are_warm_reboots(self):
        self.dom.create()
        self.dom.reset()
        self.assertEqual(self.bus.requests()[-1], "ForceWarmReboot")
        self.dom.reboot()
        self.assertEqual(self.bus.requests()[-1], "GracefulWarmReboot")

    def test_4_an_out_of_band_power_off_is_an_event_within_a_second(self):
        self.assert_off_is_an_event_within_a_second()

    def test_6_signals_still_arrive_after_the_bmc_services_restart(self):
        self.bus.stop_peer()
        self.bus.start_peer()
        self.assert_off_is_an_event_within_a_second()

    def assert_off_is_an_event_within_a_second(self):
        self.dom.create()
        stopped = (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
        self.assertTrue(self.ev.wait_for(lambda evs: (
            L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_BOOTED)
            in self.ev.lifecycle("obmc-1"), timeout=5))
        t0 = time.monotonic()
        self.bus.set_power("Off")
        got = self.ev.wait_for(lambda evs: stopped in self.ev.lifecycle("obmc-1"), timeout=5)
        took = time.monotonic() - t0
        self.assertTrue(got, "no STOPPED event within 5 s (the watcher polls once a minute)")
        self.assertLess(took, 1.0)
        self.assertEqual(self.dom.state()[0], L.VIR_DOMAIN_SHUTOFF)

    def test_5_a_bmc_off_the_bus_fails_the_start_naming_it(self):
        self.bus.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                        "org.freedesktop.DBus", "GetId")  # the bus itself answers
        self.bus.stop_peer()
        try:
            e = expect_error(self.dom.create)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED, str(e))
            self.assertIn(f"OpenBMC of node {NODE}", str(e))
            self.assertFalse(self.dom.isActive())
        finally:
            self.bus.start_peer()


if __name__ == "__main__":
    unittest.main(verbosity=2)
