"""Real BMC power against real peers: sushy-tools' Redfish emulator (HTTP with basic auth,
HTTPS with a pinned certificate, the emulator's own random power delay), OpenIPMI's
ipmi_sim and pyghmi's IPMI BMC. virsh drives start/destroy/shutdown/reboot/reset;
python3-libvirt watches the events; the peers are asked directly what the server's power
and boot device really are, and are used directly to change power out of band.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_bmc_peers
(the peers come from scripts/install-deps.sh).
"""

import os
import tempfile
import time
import unittest

import libvirt

from . import peers
from .harness import (
    METALVIRT_NS, Daemon, EventCollector, expect_error, read_until, wait_until,
)

L = libvirt
INTERVAL_MS = 300
# "Within one poll interval": an interval, its jitter, the BMC call and event delivery.
NOTICE = 2 * INTERVAL_MS / 1000 + 1.5
# The watcher reads sensors every sixth round (driver/watcher.rs SENSOR_ROUNDS), in seconds.
SENSOR_S = 6 * INTERVAL_MS / 1000

SYS = {
    "http1": ("27946b59-9e44-4fa7-8e91-f3527a1ef094", "bm-node-1"),
    "http2": ("48295ec6-b7c2-4e3e-9c5a-6d1f3a0b2c11", "bm-node-2"),
    "tls": ("a1b2c3d4-0000-4000-8000-000000000003", "bm-node-3"),
    "dead": ("a1b2c3d4-0000-4000-8000-000000000004", "bm-node-4"),
    "slow": ("a1b2c3d4-0000-4000-8000-000000000005", "bm-node-5"),
}

LAB = {}


def node_toml(name, driver, address, pwfile, **extra):
    lines = [
        "[[node]]", f'name = "{name}"', "cores = 8", "memory_mib = 65536",
        "[node.bmc]", f'driver = "{driver}"', f'address = "{address}"', 'username = "admin"',
        f'password_file = "{pwfile}"',
    ]
    if address.startswith("http://"):
        lines.append("insecure_http = true")
    for k, v in extra.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, str):
            v = f'"{v}"'
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def setUpModule():
    # Module cleanups run in reverse, also when this fails half-way: daemon, peers, dir.
    d = LAB["dir"] = unittest.enterModuleContext(
        tempfile.TemporaryDirectory(prefix="metalvirt-bmc"))
    good = peers.write_password_file(os.path.join(d, "bmc.pass"))
    # Readable by others: works, with a warning.
    loose = peers.write_password_file(os.path.join(d, "loose.pass"))
    os.chmod(loose, 0o644)
    bad = peers.write_password_file(os.path.join(d, "bad.pass"), "not-the-password")
    # ipmitool as the daemon runs it, recording its arguments and whether the password came
    # through the environment (it must not).
    spy_log = LAB["spy_log"] = os.path.join(d, "ipmitool-argv.log")
    spy = os.path.join(d, "ipmitool-spy")
    with open(spy, "w") as f:
        f.write(f"""#!/bin/sh
printf 'argv:%s\\n' "$*" >> {spy_log}
[ -n "$IPMI_PASSWORD" ] && echo env:IPMI_PASSWORD >> {spy_log}
exec ipmitool "$@"
""")
    os.chmod(spy, 0o755)
    up = unittest.enterModuleContext
    http = LAB["http"] = up(peers.Sushy([SYS["http1"] + ("Off",), SYS["http2"] + ("Off",)]))
    tls = LAB["tls"] = up(peers.Sushy([SYS["tls"] + ("Off",)], tls=True))
    dead = LAB["dead"] = up(peers.Sushy([SYS["dead"] + ("Off",)]))
    slow = LAB["slow"] = up(peers.Sushy([SYS["slow"] + ("Off",)], delay="random"))
    serial = LAB["serial"] = up(peers.SerialLine())
    sim = LAB["ipmisim"] = up(peers.IpmiSim(sol_port=serial.port))
    ghmi = LAB["pyghmi"] = up(peers.Pyghmi(2))
    raw = "".join([
        # by UUID, by Name (the emulator redirects names to UUIDs), by path
        node_toml("rf-1", "redfish", http.url, good, system=SYS["http1"][0],
                  power_on_timeout_s=10, power_off_timeout_s=10),
        node_toml("rf-2", "redfish", http.url, loose, system=SYS["http2"][1],
                  power_on_timeout_s=10, power_off_timeout_s=10, boot_persistent=False),
        node_toml("rf-tls", "redfish", tls.url, good, ca_bundle=tls.path("cert.pem"),
                  power_on_timeout_s=10, power_off_timeout_s=10),
        node_toml("rf-dead", "redfish", dead.url, good,
                  system=dead.system_path(SYS["dead"][0]), timeout_s=3, retries=1,
                  power_on_timeout_s=10, power_off_timeout_s=10),
        node_toml("rf-slow", "redfish", slow.url, good, power_on_timeout_s=30,
                  power_off_timeout_s=30),
        node_toml("rf-badpw", "redfish", http.url, bad, system=SYS["http1"][0]),
        node_toml("ipmi-sim", "ipmi", f"127.0.0.1:{sim.port}", good, ipmitool=spy,
                  power_off_timeout_s=10),
        node_toml("ipmi-ghmi", "ipmi", f"127.0.0.1:{ghmi.ports[0]}", good, ipmitool=spy,
                  power_off_timeout_s=10),
        node_toml("ipmi-badpw", "ipmi", f"127.0.0.1:{ghmi.ports[1]}", bad, timeout_s=10),
    ])
    LAB["daemon"] = up(Daemon(
        extra=f"[watcher]\ninterval_ms = {INTERVAL_MS}\nmax_backoff_ms = 1200\n", raw=raw))


def virsh(*args, check=True):
    return LAB["daemon"].virsh(*args, check=check)


def domain_xml(name, node, boot="network", firmware=None, disk=True):
    os_attr = f" firmware='{firmware}'" if firmware else ""
    disk_xml = f"""
    <disk type='network' device='disk'>
      <source protocol='rbd' name='volumes/{name}-root'/>
      <target dev='vda' bus='virtio'/>
    </disk>""" if disk else ""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='GiB'>4</memory>
  <vcpu>2</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='{node}'/></metadata>
  <os{os_attr}><type arch='x86_64'>hvm</type><boot dev='{boot}'/></os>
  <devices>{disk_xml}
    <interface type='bridge'>
      <mac address='52:54:00:{sum(name.encode()) % 256:02x}:00:01'/>
      <source bridge='br-int'/>
    </interface>
  </devices>
</domain>"""


class Power:
    """The peer's own view of one node's server."""

    def __init__(self, node):
        self.node = node

    def state(self):
        if self.node.startswith("ipmi"):
            return self.tool().power()
        sushy, uuid = self.sushy()
        return sushy.power(uuid).lower()

    def tool(self):
        return LAB["ipmisim"].tool if self.node == "ipmi-sim" else LAB["pyghmi"].tools[0]

    def sushy(self):
        return {
            "rf-1": (LAB["http"], SYS["http1"][0]), "rf-2": (LAB["http"], SYS["http2"][0]),
            "rf-tls": (LAB["tls"], SYS["tls"][0]), "rf-dead": (LAB["dead"], SYS["dead"][0]),
            "rf-slow": (LAB["slow"], SYS["slow"][0]),
        }[self.node]

    def force_off(self):
        if self.node.startswith("ipmi"):
            self.tool().set_power("off")
        else:
            sushy, uuid = self.sushy()
            sushy.reset(uuid, "ForceOff")

    def force_on(self):
        if self.node.startswith("ipmi"):
            self.tool().set_power("on")
        else:
            sushy, uuid = self.sushy()
            sushy.reset(uuid, "On")


class Base(unittest.TestCase):
    def setUp(self):
        self.d = LAB["daemon"]
        self.conn = libvirt.open(self.d.uri)
        self.ev = EventCollector(self.conn)
        self.ev.register(L.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
        self.ev.register(L.VIR_DOMAIN_EVENT_ID_REBOOT)
        self.names = []

    def tearDown(self):
        self.ev.deregister_all()
        for n in self.names:
            try:
                dom = self.conn.lookupByName(n)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass
        self.conn.close()

    def define(self, name, node, **kw):
        self.names.append(name)
        return self.conn.defineXML(domain_xml(name, node, **kw))

    def wait_event(self, name, want, timeout):
        got = self.ev.wait_for(lambda evs: want in [(e[3], e[4]) for e in evs
                                                    if e[0] == "lifecycle" and e[1] == name],
                               timeout)
        self.assertTrue(got, f"{name}: no lifecycle event {want} within {timeout}s; "
                             f"got {self.ev.lifecycle(name)}")

    def mapped(self, node):
        n = self.d.sim_state()["nodes"].get(node, {})
        return list(n.get("disks", {})) + list(n.get("nics", {}))


class Lifecycle(Base):
    """virsh start/reboot/reset/shutdown/start/destroy against each kind of peer."""

    def run_lifecycle(self, node, boot, firmware, check_boot):
        name = f"vm-{node}"
        self.define(name, node, boot=boot, firmware=firmware)
        p = Power(node)
        self.assertEqual(p.state(), "off")
        virsh("start", name)
        self.assertEqual(p.state(), "on", "the BMC reports On when start returns")
        dom = self.conn.lookupByName(name)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_BOOTED])
        check_boot()
        self.assertEqual(len(self.mapped(node)), 2)

        virsh("reboot", name)
        self.assertTrue(self.ev.wait_for(
            lambda evs: any(e[0] == "reboot" and e[1] == name for e in evs), 5))
        self.ev.clear()
        virsh("reset", name)
        self.assertTrue(self.ev.wait_for(
            lambda evs: any(e[0] == "reboot" and e[1] == name for e in evs), 5))
        # A restart is not a shutdown: still running after the watcher had its look.
        time.sleep(NOTICE)
        wait_until(lambda: p.state() == "on", 5, what=f"{node} on after reset")
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_RUNNING)
        self.assertNotIn((L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
                         self.ev.lifecycle(name))

        t = time.monotonic()
        virsh("shutdown", name)
        self.assertLess(time.monotonic() - t, 5, "shutdown returns at once")
        self.wait_event(name, (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
                        NOTICE + 3)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_SHUTDOWN])
        self.assertEqual(self.mapped(node), [], "shutdown releases disks and NICs")
        self.assertEqual(p.state(), "off")

        virsh("start", name)
        self.assertEqual(p.state(), "on")
        virsh("destroy", name)
        self.assertEqual(p.state(), "off", "destroy returns once the BMC reports Off")
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_DESTROYED])
        self.assertEqual(self.mapped(node), [])

    def test_redfish_http_basic_auth(self):
        http, uuid = Power("rf-1").sushy()

        def check():
            b = http.boot(uuid)
            self.assertEqual(b["BootSourceOverrideTarget"], "Pxe")
            self.assertEqual(b["BootSourceOverrideMode"], "UEFI")
        self.run_lifecycle("rf-1", "network", "efi", check)

    def test_redfish_system_by_name_boots_disk_in_legacy_mode(self):
        http, uuid = Power("rf-2").sushy()

        def check():
            b = http.boot(uuid)
            self.assertEqual(b["BootSourceOverrideTarget"], "Hdd")
            self.assertEqual(b["BootSourceOverrideMode"], "Legacy")
        self.run_lifecycle("rf-2", "hd", "bios", check)

    def test_redfish_https_pinned_certificate(self):
        tls, uuid = Power("rf-tls").sushy()

        def check():
            self.assertEqual(tls.boot(uuid)["BootSourceOverrideTarget"], "Cd")
        self.run_lifecycle("rf-tls", "cdrom", None, check)

    def test_ipmi_sim(self):
        def check():
            # ipmi_sim keeps only the device selector (PEERS.md: boot flags are lossy).
            self.assertEqual(LAB["ipmisim"].boot_file(), "pxe")
        self.run_lifecycle("ipmi-sim", "network", None, check)

    def test_pyghmi_persistent_efi_boot(self):
        def check():
            out = Power("ipmi-ghmi").tool().bootparam()
            self.assertIn("Force Boot from default Hard-Drive", out)
            self.assertIn("Options apply to all future boots", out)
            self.assertIn("BIOS EFI boot", out)
        self.run_lifecycle("ipmi-ghmi", "hd", "efi", check)

    def test_redfish_default_random_delay(self):
        """The emulator's own 1-11 s power delay: start and destroy wait for the BMC."""
        name = "vm-slow"
        self.define(name, "rf-slow")
        p = Power("rf-slow")
        # The emulator applies a reset 0-11 s after it answered; a start or destroy that
        # returned early would find the server still in its old state.
        virsh("start", name)
        self.assertEqual(p.state(), "on")
        self.assertEqual(self.conn.lookupByName(name).state()[0], L.VIR_DOMAIN_RUNNING)
        virsh("destroy", name)
        self.assertEqual(p.state(), "off")


class OutOfBand(Base):
    """Power changed on the peer itself turns into lifecycle events within one interval."""

    def check_off(self, node):
        name = f"oob-{node}"
        self.define(name, node)
        virsh("start", name)
        self.assertEqual(len(self.mapped(node)), 2)
        self.ev.clear()
        Power(node).force_off()
        t = time.monotonic()
        self.wait_event(name, (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
                        NOTICE)
        self.assertLess(time.monotonic() - t, NOTICE)
        dom = self.conn.lookupByName(name)
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_SHUTDOWN])
        self.assertEqual(self.mapped(node), [], "the watcher released disks and NICs")
        return dom

    def test_redfish_off_then_on_while_shut_off(self):
        dom = self.check_off("rf-1")
        # Someone powers the server back on behind the shut-off domain: reported, left on.
        Power("rf-1").force_on()
        wait_until(lambda: any("while the domain is shut off" in m for m in dom.messages(0)),
                   NOTICE, what="a message about the server powered on behind a shut-off domain")
        time.sleep(NOTICE)
        self.assertEqual(Power("rf-1").state(), "on", "never silently forced off")
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_SHUTOFF)
        # Starting it again force-restarts the server so it boots as the domain asks.
        virsh("start", dom.name())
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_RUNNING)
        self.assertIn("already powered on", self.d.log())

    def test_sensors_in_domain_stats(self):
        """The BMC's own readings in `domstats` (metalvirt.*), read by the watcher: sushy-tools
        offers a Thermal resource (chassis intake 25 °C) and no Power or EnvironmentMetrics,
        so there is an inlet temperature and no power draw; ipmi_sim has an inlet and a power
        sensor in its SDR repository; pyghmi's BMC has no SDR repository and reads none."""
        sim = LAB["ipmisim"]
        sim.set_sensor("inlet", 27, wait=True)
        sim.set_sensor("watts", 300, wait=True)
        for node in ("rf-2", "ipmi-sim", "ipmi-ghmi"):
            self.define(f"vm-stats-{node}", node)
            virsh("start", f"vm-stats-{node}")
        rf = self.conn.lookupByName("vm-stats-rf-2")
        ipmi = self.conn.lookupByName("vm-stats-ipmi-sim")
        wait_until(lambda: "metalvirt.inlet.celsius" in self.conn.domainListGetStats([rf])[0][1],
                   NOTICE, what="a sensor reading of the Redfish node")
        # The node's cache may hold an earlier test's reading: wait for this one's values.
        wait_until(lambda: self.conn.domainListGetStats([ipmi])[0][1].get(
                   "metalvirt.inlet.celsius") == 27.0, NOTICE + 3 * SENSOR_S,
                   what="ipmi_sim's new inlet temperature in the statistics")
        st = self.conn.domainListGetStats([rf])[0][1]
        self.assertEqual(st["metalvirt.inlet.celsius"], 25.0)
        self.assertNotIn("metalvirt.power.watts", st)
        self.assertLess(st["metalvirt.sensors.age.ms"], 60_000)
        st = self.conn.domainListGetStats([ipmi])[0][1]
        self.assertEqual(st["metalvirt.inlet.celsius"], 27.0)
        self.assertEqual(st["metalvirt.power.watts"], 300.0)
        # virsh shows them too, with the libvirt groups.
        out = virsh("domstats", "--raw", "vm-stats-ipmi-sim").stdout
        self.assertIn("metalvirt.power.watts=300", out)
        self.assertIn("state.state=1", out)
        ghmi = self.conn.lookupByName("vm-stats-ipmi-ghmi")
        time.sleep(2 * INTERVAL_MS / 1000)
        st = self.conn.domainListGetStats([ghmi])[0][1]
        self.assertFalse([k for k in st if k.startswith("metalvirt.")], st)
        self.assertEqual(st["state.state"], L.VIR_DOMAIN_RUNNING)

    def test_ipmi_sim_off(self):
        self.check_off("ipmi-sim")

    def test_pyghmi_off(self):
        self.check_off("ipmi-ghmi")

    def test_on_while_staged_is_reported_not_forced(self):
        name = "staged-rf"
        self.define(name, "rf-2")
        virsh("start", "--paused", name)
        dom = self.conn.lookupByName(name)
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_PAUSED)
        p = Power("rf-2")
        self.assertEqual(p.state(), "off")
        p.force_on()
        wait_until(lambda: any("powered on out of band" in m for m in dom.messages(0)),
                   NOTICE, what="a message about the out-of-band power on")
        time.sleep(NOTICE)
        self.assertEqual(p.state(), "on", "never silently forced off")
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_PAUSED)
        self.assertTrue("while its domain is staged" in self.d.log(), "logged as well")


class Failures(Base):
    def test_dead_bmc_marks_reason_then_start_fails_with_rollback(self):
        name = "vm-dead"
        self.define(name, "rf-dead")
        virsh("start", name)
        dom = self.conn.lookupByName(name)
        dead = LAB["dead"]
        dead.stop()
        try:
            wait_until(lambda: dom.state() == [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_UNKNOWN],
                       NOTICE + 8, what="reason UNKNOWN while the BMC is away")
            self.assertTrue(any("stopped answering" in m for m in dom.messages(0)))
            time.sleep(NOTICE)
            self.assertEqual(dom.state()[0], L.VIR_DOMAIN_RUNNING, "not flipped to shutoff")
            # destroy needs the BMC: it fails clearly and leaves the domain as it was.
            r = virsh("destroy", name, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("unreachable", r.stderr)
            self.assertIn("rf-dead", r.stderr)
            self.assertEqual(dom.state()[0], L.VIR_DOMAIN_RUNNING)
        finally:
            dead.start(fresh=False)
        # Back: the reason is restored and destroy works.
        wait_until(lambda: dom.state() == [L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_RUNNING_BOOTED],
                   NOTICE + 3, what="reason restored when the BMC answers again")
        virsh("destroy", name)
        # A start against the stopped BMC rolls back what it mapped.
        dead.stop()
        try:
            t = time.monotonic()
            r = virsh("start", name, check=False)
            self.assertLess(time.monotonic() - t, 10, "bounded by the call time limit")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error: Failed to start domain", r.stderr)
            self.assertIn("rf-dead", r.stderr)
            self.assertIn("unreachable", r.stderr)
            self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_FAILED])
            self.assertEqual(self.mapped("rf-dead"), [], "disk and NIC mappings rolled back")
        finally:
            dead.start(fresh=False)

    def check_wrong_password(self, node):
        name = f"vm-{node}"
        self.define(name, node)
        dom = self.conn.lookupByName(name)
        e = expect_error(dom.create)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_AUTH_FAILED, str(e))
        self.assertIn(node, str(e))
        self.assertIn("admin", str(e))
        self.assertNotIn("not-the-password", str(e))
        self.assertNotIn(peers.PASSWORD, str(e))
        self.assertEqual(dom.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_FAILED])
        self.assertEqual(self.mapped(node), [])
        r = virsh("start", name, check=False)
        self.assertIn("authentication failed", r.stderr)

    def test_redfish_wrong_password(self):
        self.check_wrong_password("rf-badpw")

    def test_ipmi_wrong_password(self):
        self.check_wrong_password("ipmi-badpw")


class Console(Base):
    """virsh console's stream over IPMI Serial-over-LAN to ipmi_sim's serial line."""

    def test_ipmi_sol_console_both_ways(self):
        name = "vm-console-ipmi"
        self.define(name, "ipmi-sim")
        virsh("start", name)
        # A connection opened after the event loop runs (stream data arrives through it).
        conn = libvirt.open(self.d.uri)
        self.addCleanup(conn.close)
        dom = conn.lookupByName(name)
        for round_ in range(2):  # a second session after the first: SOL is freed
            st = conn.newStream(L.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, st, 0)
            # ipmi_sim drops what the line says before the session is up (the banner):
            # what is typed now reaches the line, and its answers come back.
            word = b"root%d\r" % round_
            self.assertEqual(st.send(word), len(word))
            wait_until(lambda: word in LAB["serial"].received, 10,
                       what="the keystrokes on the serial line")
            got = read_until(st, b"[got ", 10)
            self.assertNotIn(b"SOL Session", got, "ipmitool's announcement is not the line's")
            st.finish()

    def test_redfish_has_no_console(self):
        name = "vm-console-rf"
        self.define(name, "rf-2")
        virsh("start", name)
        dom = self.conn.lookupByName(name)
        e = expect_error(dom.openConsole, None, self.conn.newStream(L.VIR_STREAM_NONBLOCK), 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_UNSUPPORTED)
        self.assertIn("serial console of node rf-2", str(e))
        self.assertIn("Serial-over-LAN", str(e))
        # Refused before anything was claimed: a retry gets the same answer, not "busy".
        e = expect_error(dom.openConsole, None, self.conn.newStream(L.VIR_STREAM_NONBLOCK), 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_UNSUPPORTED)


class Secrecy(Base):
    def test_password_never_in_args_xml_or_sysinfo(self):
        name = "vm-secrecy"
        self.define(name, "ipmi-ghmi")
        virsh("start", name)
        xml = self.conn.lookupByName(name).XMLDesc(0)
        self.assertNotIn(peers.PASSWORD, xml)
        self.assertNotIn(peers.PASSWORD, self.conn.getSysinfo(0))
        virsh("destroy", name)
        with open(LAB["spy_log"]) as f:
            spy = f.read()
        self.assertIn("argv:", spy)
        # Through a pipe only ipmitool reads: neither its arguments nor its environment.
        self.assertIn("-f /dev/stdin", spy)
        self.assertNotIn("env:IPMI_PASSWORD", spy)
        self.assertNotIn(peers.PASSWORD, spy, "the password never is an argument")
        with open(f"/proc/{self.d.pid}/cmdline", "rb") as f:
            self.assertNotIn(peers.PASSWORD.encode(), f.read())

    def test_loose_password_file_warned(self):
        warned = [ln for ln in self.d.log().splitlines() if "readable by group or others" in ln]
        self.assertTrue(any("rf-2" in ln for ln in warned), warned)
        self.assertFalse(any("rf-1" in ln for ln in warned), warned)


class ZZLogIsClean(unittest.TestCase):
    """Runs last: after everything above, the daemon's debug log never held the password."""

    def test_password_absent_from_log(self):
        log = LAB["daemon"].log()
        self.assertIn("Redfish system discovered", log)
        self.assertNotIn(peers.PASSWORD, log)
        self.assertNotIn("not-the-password", log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
