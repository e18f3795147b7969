"""Crash points, black-box: every deterministic crash point of the daemon (src/crash.rs
POINTS, debug builds: env METALVIRT_CRASH_AT=NAME makes metalvirtd SIGKILL itself at that
step) is hit by a real operation driven with virsh, then the daemon is started again on the
same directories and what it finds and does is checked against the real peers:

  * SPDK: the test double tests/blackbox/spdk_double, a "storage" role exporting the
    cloud volumes (NVMe/TCP subsystems, iSCSI LUNs) and a "dpu" role, the node's DPU;
  * Open vSwitch: a real ovsdb-server and ovs-vswitchd (peers.OvsLab without OVN), the
    node's representors pf0vfN being veths in vswitchd's namespace;
  * power: the node's simulated BMC ([node.bmc] driver = "sim"; sim-lab.json).

One node, one domain per case (an NVMe-oF boot disk and an OVS port) and a bystander domain
that is only defined. Fresh daemon directories per case; the peers are shared. After the
restart, once the SPDK/OVS/power state stopped changing, for every point:

  * no definition is lost (the bystander, the domain, and a define cut at define:acked);
  * the domain's state is what the point calls for and matches its server (running <=>
    simulated power On);
  * the OVS Interfaces carrying metalvirt's keys (and the ports on br-int) are exactly the
    NICs of the running domain's live XML (none when shut off);
  * the DPU's mv-… bdevs/controllers and subsystems with the daemon's NQN prefix are exactly
    the running domain's disks (none when shut off);
  * the daemon answers (virsh list), and destroy/undefine of what is left leaves nothing.

A matrix (one row per point) goes to stderr at the end and, as Markdown, to the file named
by env CRASH_MATRIX_OUT when set.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_crash_points
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import xml.etree.ElementTree as ET

import libvirt

from . import peers
from .harness import Daemon, pinned_domain_xml
from .spdk_client import RpcError, SpdkDouble, call, storage_exports

L = libvirt
# A crash point set in the caller's environment would kill every restart too.
os.environ.pop("METALVIRT_CRASH_AT", None)

LAB = {}
ROWS = []
NODE = "bm-crash"
PREFIX = "nqn.2026-11.io.metalvirt"       # the daemon's default [node.disks] nqn_prefix
STORAGE_NQN = "nqn.2016-06.io.spdk"
ISCSI_BASE = "iqn.2016-06.io.spdk"
HOST_NQN = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000c7a5"
REPRESENTORS = 4
SETTLE_STABLE_S = 1.0     # the state must not change for this long after the restart …
SETTLE_MAX_S = 20.0       # … within this long
CONVERGE_S = 5.0          # then this long more for a check that still fails to pass
VIRSH_TIMEOUT = 30

# (operation, point, device kind or None). attach/detach run once with a disk, once with a
# NIC; detach cases first hot-plug the device (the crash point is not on that path).
CASES = [("define", "define:acked", None)]
CASES += [("start", p, None) for p in ("start:recorded", "start:mapped",
                                       "start:power-journaled", "start:powered",
                                       "start:active")]
CASES += [("attach", p, k) for p in ("attach:journaled", "attach:mapped", "attach:committed")
          for k in ("disk", "nic")]
CASES += [("detach", p, k) for p in ("detach:committed", "detach:unmapped")
          for k in ("disk", "nic")]
CASES += [("resize", p, None) for p in ("resize:before", "resize:after")]
CASES += [("stop", p, None) for p in ("stop:recorded", "stop:powered-off", "stop:unmapped")]

RUNNING = "running"
SHUTOFF = "shut off"
# What the restarted daemon must show for the domain: its state, and for interrupted starts
# the reason (libvirt's "failed": the start was rolled back).
EXPECT = {
    "define": (SHUTOFF, None),
    "start": (SHUTOFF, L.VIR_DOMAIN_SHUTOFF_FAILED),
    "attach": (RUNNING, None),
    "detach": (RUNNING, None),
    "resize": (RUNNING, None),
    "stop": (SHUTOFF, None),
}
EXPECT_POINT = {"start:active": (RUNNING, None)}

STATE_NAMES = {
    L.VIR_DOMAIN_NOSTATE: "no state", L.VIR_DOMAIN_RUNNING: RUNNING,
    L.VIR_DOMAIN_BLOCKED: "blocked", L.VIR_DOMAIN_PAUSED: "paused",
    L.VIR_DOMAIN_SHUTDOWN: "shutting down", L.VIR_DOMAIN_SHUTOFF: SHUTOFF,
    L.VIR_DOMAIN_CRASHED: "crashed", L.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
SHUTOFF_REASONS = {
    L.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown", L.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    L.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed", L.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    L.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated", L.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    L.VIR_DOMAIN_SHUTOFF_FAILED: "failed", L.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from snapshot",
}
RUNNING_REASONS = {
    L.VIR_DOMAIN_RUNNING_UNKNOWN: "unknown", L.VIR_DOMAIN_RUNNING_BOOTED: "booted",
    L.VIR_DOMAIN_RUNNING_UNPAUSED: "unpaused",
}

# Log lines of the restarted daemon worth showing in the matrix: what its recovery did.
RECOVERY_LOG = [
    ("finished an operation interrupted by a daemon stop", "finished interrupted op"),
    ("undid device changes interrupted by a daemon stop", "undid device change"),
    ("reattached to live domain", "reattached"),
    ("reconcile: removed a NIC port no live domain owns", "removed orphan port"),
    ("reconcile: re-plugged a NIC missing from the backend", "re-plugged NIC"),
    ("reconcile: unmapped a disk no live domain owns", "unmapped orphan disk"),
    ("reconcile: mapped again a disk missing from the backend", "re-mapped disk"),
    ("which no mapped disk uses", "tidied SPDK"),
    ("quarantined", "QUARANTINED"),
    ("cleanup failed", "cleanup failed"),
]


# -- peers -----------------------------------------------------------------------------------

def node_toml(spdk, lab):
    return f"""
[[node]]
name = "{NODE}"
cores = 4
memory_mib = 8192
[node.bmc]
driver = "sim"
[node.disks]
spdk = "{spdk.sock('dpu')}"
frontend = "nvmf"
listen = "tcp:127.0.0.1:4421"
host_nqn = "{HOST_NQN}"
attach_timeout_s = 10
resize_wait_s = 1
heal_interval_s = 0.2
[node.nics]
ovsdb = "{lab.db_addr}"
representors = ["pf0vf{{0..{REPRESENTORS - 1}}}"]
functions = ["hostvf{{0..{REPRESENTORS - 1}}}"]
wait = "ofport"
plug_timeout_s = 15
timeout_s = 5
"""


def setUpModule():
    LAB["t0"] = time.monotonic()
    # Module cleanups run in reverse, also when this fails half-way: OVS lab, double, dir.
    LAB["dir"] = unittest.enterModuleContext(
        tempfile.TemporaryDirectory(prefix="metalvirt-crashtest"))
    spdk = LAB["spdk"] = unittest.enterModuleContext(SpdkDouble("storage", "dpu"))
    storage_exports(spdk.sock("storage"))
    LAB["lab"] = unittest.enterModuleContext(
        peers.OvsLab(representors=REPRESENTORS, ovn=False))
    LAB["raw"] = node_toml(spdk, LAB["lab"])


def tearDownModule():
    report_matrix()


def rpc(role, method, params=None):
    return call(LAB["spdk"].sock(role), method, params)


def nvmf_volume(name, mib):
    """NVMe/TCP cloud volume: null bdev N-<name> as nsid 1 of nqn.2016-06.io.spdk:<name>."""
    nqn = f"{STORAGE_NQN}:{name}"
    bdev = f"N-{name}"
    rpc("storage", "bdev_null_create", {"name": bdev, "num_blocks": mib * 256, "block_size": 4096})
    rpc("storage", "nvmf_create_subsystem",
        {"nqn": nqn, "allow_any_host": True, "serial_number": "VOL" + name[-12:].upper(),
         "model_number": "cloud-volume"})
    rpc("storage", "nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": bdev,
                                                                       "nsid": 1}})
    rpc("storage", "nvmf_subsystem_add_listener",
        {"nqn": nqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
                                        "traddr": "127.0.0.1", "trsvcid": "4420"}})
    return nqn


def iscsi_volume(name, mib):
    """iSCSI LUN 0 of iqn.2016-06.io.spdk:<name>, without CHAP."""
    bdev = f"I-{name}"
    rpc("storage", "bdev_null_create", {"name": bdev, "num_blocks": mib * 2048, "block_size": 512})
    rpc("storage", "iscsi_create_target_node",
        {"name": name, "alias_name": name, "luns": [{"bdev_name": bdev, "lun_id": 0}],
         "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64, "disable_chap": True})
    return f"{ISCSI_BASE}:{name}"


def spdk_objects():
    """Everything of metalvirt's on the DPU: ({bdev: driver}, {controller}, {nqn: {nsid:
    bdev}})."""
    s = rpc("dpu", "double_state", {"role": "dpu"})
    bdevs = {n: b["driver"] for n, b in s["bdevs"].items() if n.startswith("mv-")}
    ctrls = {n for n in s["controllers"] if n.startswith("mv-")}
    subs = {n: dict(v["namespaces"]) for n, v in s["subsystems"].items()
            if n.startswith(PREFIX + ":") or ":mv-" in n}
    extra = [f"vhost {n}" for n in s["vhost"] if n.startswith("mv-")]
    extra += [f"vfu {n}" for n in s["vfu_endpoints"] if n.startswith("mv-")]
    return bdevs, ctrls, subs, extra


def scrub_spdk():
    """Removes metalvirt's objects from the DPU (after a failed case, for the next one)."""
    gone = []
    s = rpc("dpu", "double_state", {"role": "dpu"})
    for n in s["subsystems"]:
        if ":mv-" in n:
            rpc("dpu", "nvmf_delete_subsystem", {"nqn": n})
            gone.append(n)
    for n in s["controllers"]:
        if n.startswith("mv-"):
            rpc("dpu", "bdev_nvme_detach_controller", {"name": n})
            gone.append(n)
    for n, b in rpc("dpu", "double_state", {"role": "dpu"})["bdevs"].items():
        if n.startswith("mv-"):
            try:
                rpc("dpu", f"bdev_{b['driver']}_delete", {"name": n})
            except RpcError:
                pass
            gone.append(n)
    return gone


def sim_power(d):
    """The node's simulated power (Off until it first changes)."""
    return d.sim_power(NODE)


def ovs_ours():
    """{interface name: external_ids} of every Interface carrying metalvirt's keys."""
    return {n: r["external_ids"] for n, r in LAB["lab"].interfaces().items()
            if "metalvirt-handle" in r["external_ids"]
            or "metalvirt-domain" in r["external_ids"]}


def scrub_ovs():
    lab = LAB["lab"]
    gone = lab.ports()
    for p in gone:
        lab.vsctl("--if-exists", "del-port", "br-int", p)
    return gone


# -- domain XML ------------------------------------------------------------------------------

def nvme_disk(target, nqn, boot=None, serial=None):
    b = f"<boot order='{boot}'/>" if boot else ""
    s = f"<serial>{serial}</serial>" if serial else ""
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='nvme-tcp' name='{nqn}'><host name='127.0.0.1' port='4420'/>"
            f"</source><target dev='{target}' bus='virtio'/>{b}{s}</disk>")


def iscsi_disk(target, iqn):
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='iscsi' name='{iqn}/0'><host name='127.0.0.1' port='3260'/>"
            f"</source><target dev='{target}' bus='virtio'/></disk>")


def nic(mac):
    return (f"<interface type='bridge'><mac address='{mac}'/><source bridge='br-int'/>"
            f"<virtualport type='openvswitch'/><model type='virtio'/></interface>")


def domain_xml(name, dom_uuid, devices):
    return pinned_domain_xml(name, NODE, devices, dom_uuid)


def live_devices(xml_text):
    """({disk target: protocol}, {mac: interface target dev}) of a domain XML."""
    root = ET.fromstring(xml_text)
    disks, nics = {}, {}
    for d in root.iter("disk"):
        t = d.find("target")
        src = d.find("source")
        if t is not None:
            disks[t.get("dev")] = src.get("protocol") if src is not None else None
    for i in root.iter("interface"):
        m = i.find("mac")
        t = i.find("target")
        if m is not None:
            nics[m.get("address")] = t.get("dev") if t is not None else None
    return disks, nics


# -- the cases ---------------------------------------------------------------------------------

class Case:
    """One crash point: the daemon, the domain and what was seen."""

    def __init__(self, idx, op, point, kind):
        self.idx, self.op, self.point, self.kind = idx, op, point, kind
        self.name = f"crash{idx:02d}"
        self.uuid = f"c7a50000-0000-4000-8000-{idx:012x}"
        self.hex = self.uuid.replace("-", "")
        self.keep_name = f"keep{idx:02d}"
        self.keep_uuid = f"c7a5ffff-0000-4000-8000-{idx:012x}"
        self.boot_vol = f"c{idx:02d}-boot"
        self.data_vol = f"c{idx:02d}-data"
        self.mac1 = f"52:54:00:c7:{idx:02x}:01"
        self.mac2 = f"52:54:00:c7:{idx:02x}:02"
        self.dir = os.path.join(LAB["dir"], self.name)
        os.makedirs(self.dir)
        self.row = {"n": str(idx), "op": op + (f" {kind}" if kind else ""), "point": point,
                    "at_crash": "?", "state": "?", "power": "?", "ovs": "?", "spdk": "?",
                    "lost": "?", "devices": "", "recovery": "", "verdict": "not run"}

    def file(self, name, text):
        p = os.path.join(self.dir, name)
        with open(p, "w") as f:
            f.write(text)
        return p


class CrashPoints(unittest.TestCase):
    def setUp(self):
        self.d = None
        self.conn = None
        self.t0 = time.monotonic()

    def tearDown(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
        if self.d is not None:
            self.d.__exit__(None, None, None)   # SIGTERM (SIGKILL after 10 s), temp dir gone
        # Whatever a failed case left must not spoil the next one.
        left_ovs = scrub_ovs()
        left_spdk = scrub_spdk()
        if ROWS and (left_ovs or left_spdk):
            ROWS[-1]["scrubbed"] = left_ovs + left_spdk
        if ROWS:
            ROWS[-1]["secs"] = time.monotonic() - self.t0

    # -- helpers ----------------------------------------------------------------------------

    def virsh(self, *args):
        d = self.d
        return subprocess.run(["virsh", "-q", "-c", d.uri, *args], capture_output=True,
                              text=True, timeout=VIRSH_TIMEOUT)

    def ok(self, *args):
        r = self.virsh(*args)
        if r.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed: {r.stderr.strip()}\n"
                                 f"--- daemon log (tail) ---\n{self.log_tail()}")
        return r.stdout

    def log_tail(self, since=0, lines=60):
        text = self.d.log()[since:] if self.d else ""
        return "\n".join(text.splitlines()[-lines:])

    def observe(self, c):
        """What the restarted daemon and the peers show now (a comparable snapshot)."""
        if self.conn is None:
            self.conn = libvirt.open(self.d.uri)
        try:
            dom = self.conn.lookupByName(c.name)
            st, rsn = dom.state()
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as e:
            if e.get_error_code() != L.VIR_ERR_NO_DOMAIN:
                raise
            st, rsn, xml = None, None, None
        bdevs, ctrls, subs, extra = spdk_objects()
        ovs = ovs_ours()
        return {
            "state": st, "reason": rsn, "xml": xml,
            "power": sim_power(self.d),
            "bdevs": bdevs, "ctrls": ctrls, "subs": subs, "spdk_extra": extra,
            "ovs": {n: (ids.get("attached-mac"), ids.get("metalvirt-domain"))
                    for n, ids in ovs.items()},
            "ports": LAB["lab"].ports(),
        }

    def peers_now(self, c):
        """What the server and the peers hold (while the daemon is down): power; OVS ports;
        the DPU's bdevs of the domain."""
        bdevs, _, subs, _ = spdk_objects()
        ports = LAB["lab"].ports()
        disks = sorted(b.replace(f"mv-{c.hex}-", "") for b in bdevs)
        return (f"{sim_power(self.d)}; {' '.join(ports) or 'no port'}; "
                f"{' '.join(disks) or 'no bdev'}{'' if subs else ', no subsys'}")

    def settle(self, c):
        """Waits until the restarted daemon's reconcile is done: nothing it or the peers show
        changes for SETTLE_STABLE_S."""
        deadline = time.monotonic() + SETTLE_MAX_S
        last, since = None, time.monotonic()
        while True:
            now = self.observe(c)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= SETTLE_STABLE_S:
                return now
            if time.monotonic() >= deadline:
                return now   # still changing: checked as it is
            time.sleep(0.1)

    def problems(self, c, o):
        """Every way the observation `o` breaks the rules (empty when all is well)."""
        out = []
        state_name = STATE_NAMES.get(o["state"], f"state {o['state']}")
        want_state, want_reason = EXPECT_POINT.get(c.point, EXPECT[c.op])
        if o["state"] is None:
            out.append(f"domain {c.name} is gone")
            return out
        if state_name != want_state:
            out.append(f"state is {state_name}, expected {want_state}")
        if want_reason is not None and o["reason"] != want_reason:
            out.append(f"shut-off reason is {SHUTOFF_REASONS.get(o['reason'], o['reason'])}, "
                       f"expected {SHUTOFF_REASONS.get(want_reason)}")
        running = o["state"] in (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_PAUSED)
        if running != (o["power"] == "On"):
            out.append(f"domain {state_name} but its server's power is {o['power']}")
        disks, nics = live_devices(o["xml"]) if running else ({}, {})
        # OVS: the Interfaces with our keys, and the ports on br-int, are the live NICs.
        want_ovs = {rep: (mac, c.uuid) for mac, rep in nics.items()}
        if o["ovs"] != want_ovs:
            out.append(f"OVS Interfaces with metalvirt keys {o['ovs']}, live XML wants {want_ovs}")
        if o["ports"] != sorted(want_ovs):
            out.append(f"br-int ports {o['ports']}, live XML wants {sorted(want_ovs)}")
        # SPDK: bdevs, controllers and namespaces of the live disks, nothing else.
        key = f"mv-{c.hex}-"
        want_bdevs = {key + t + ("n1" if p == "nvme-tcp" else "") for t, p in disks.items()}
        want_ctrls = {key + t for t, p in disks.items() if p == "nvme-tcp"}
        if set(o["bdevs"]) != want_bdevs:
            out.append(f"DPU bdevs {sorted(o['bdevs'])}, live XML wants {sorted(want_bdevs)}")
        if o["ctrls"] != want_ctrls:
            out.append(f"DPU controllers {sorted(o['ctrls'])}, live XML wants "
                       f"{sorted(want_ctrls)}")
        want_subs = {f"{PREFIX}:mv-{c.hex}": want_bdevs} if disks else {}
        got_subs = {n: set(ns.values()) for n, ns in o["subs"].items()}
        if got_subs != want_subs:
            out.append(f"DPU subsystems {o['subs']}, live XML wants {want_subs}")
        if o["spdk_extra"]:
            out.append(f"DPU also holds {o['spdk_extra']}")
        return out

    def describe(self, c, o):
        r = c.row
        st = STATE_NAMES.get(o["state"], "gone" if o["state"] is None else str(o["state"]))
        if o["state"] == L.VIR_DOMAIN_SHUTOFF:
            st += f" ({SHUTOFF_REASONS.get(o['reason'], o['reason'])})"
        elif o["state"] == L.VIR_DOMAIN_RUNNING:
            st += f" ({RUNNING_REASONS.get(o['reason'], o['reason'])})"
        r["state"] = st
        r["power"] = o["power"]
        r["ovs"] = ", ".join(f"{n}={m}" for n, (m, _) in sorted(o["ovs"].items())) or "none"
        if sorted(o["ovs"]) != o["ports"]:
            r["ovs"] += f" (br-int: {' '.join(o['ports']) or '-'})"
        short = lambda n: n.replace(f"mv-{c.hex}-", "mv-…-")  # noqa: E731
        parts = [short(b) for b in sorted(o["bdevs"])]
        parts += [f"{len(ns)}-ns subsys" for ns in o["subs"].values()]
        r["spdk"] = ", ".join(parts) or "none"
        if o["state"] in (L.VIR_DOMAIN_RUNNING, L.VIR_DOMAIN_PAUSED) and o["xml"]:
            disks, nics = live_devices(o["xml"])
            r["devices"] = "+".join(sorted(disks)) + f", {len(nics)} NIC"
        else:
            r["devices"] = "-"

    # -- one case ---------------------------------------------------------------------------

    def run_case(self, idx, op, point, kind):
        c = Case(idx, op, point, kind)
        ROWS.append(c.row)
        c.row["verdict"] = "ERROR (see test output)"
        boot_nqn = nvmf_volume(c.boot_vol, 16)
        data_iqn = iscsi_volume(c.data_vol, 16)
        dom_file = c.file("dom.xml", domain_xml(c.name, c.uuid, [
            nvme_disk("vda", boot_nqn, boot=1, serial=c.uuid), nic(c.mac1)]))
        keep_file = c.file("keep.xml", domain_xml(c.keep_name, c.keep_uuid, [
            nvme_disk("vda", boot_nqn, boot=1)]))
        extra_file = c.file("extra.xml", iscsi_disk("vdb", data_iqn) if kind == "disk"
                            else nic(c.mac2))
        # The bystander's define reaches define:acked first: crash at the second one.
        at = point + "#2" if point == "define:acked" else point
        self.d = Daemon(raw=LAB["raw"], ceph_secret=False, env={"METALVIRT_CRASH_AT": at})
        self.d.__enter__()
        self.ok("define", keep_file)

        # Bring the domain where the operation needs it.
        if op != "define":
            self.ok("define", dom_file)
        if op in ("attach", "detach", "resize", "stop"):
            self.ok("start", c.name)
        if op == "detach":
            self.ok("attach-device", c.name, extra_file, "--live")
        if op == "resize":
            # The storage target grows the volume first (SPDK cannot grow a remote one).
            rpc("storage", "bdev_null_resize", {"name": f"N-{c.boot_vol}", "new_size": 32})

        # The operation, cut short by the crash point.
        argv = {
            "define": ("define", dom_file),
            "start": ("start", c.name),
            "attach": ("attach-device", c.name, extra_file, "--live"),
            "detach": (("detach-disk", c.name, "vdb", "--live") if kind == "disk" else
                       ("detach-interface", c.name, "bridge", "--mac", c.mac2, "--live")),
            "resize": ("blockresize", c.name, "vda", "32M"),
            "stop": ("destroy", c.name),
        }[op]
        r = self.virsh(*argv)
        try:
            rc = self.d.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            rc = None
        self.assertEqual(rc, -signal.SIGKILL,
                         f"the daemon did not die at {point} (virsh {argv[0]} rc "
                         f"{r.returncode}: {r.stderr.strip()})\n{self.log_tail()}")
        self.assertIn(f"crash point {point}: killing the daemon", self.d.log())
        self.assertNotEqual(r.returncode, 0, f"virsh {argv[0]} succeeded although the daemon "
                                             f"died: {r.stdout}")
        c.row["virsh"] = r.stderr.strip().splitlines()[0] if r.stderr.strip() else ""
        c.row["at_crash"] = self.peers_now(c)

        # Restart without the crash point on the same directories.
        self.d.env.pop("METALVIRT_CRASH_AT")
        since = len(self.d.log())
        self.d._spawn()
        o = self.settle(c)
        problems = self.problems(c, o)
        if problems:   # converging late is not leaking: give the reconcile a little longer
            deadline = time.monotonic() + CONVERGE_S
            while problems and time.monotonic() < deadline:
                time.sleep(0.2)
                o = self.observe(c)
                problems = self.problems(c, o)
            if not problems:
                c.row["late"] = True
        self.describe(c, o)
        # No lost definitions, and the daemon answers.
        listed = self.ok("list", "--all", "--name").split()
        lost = [n for n in (c.keep_name, c.name) if n not in listed]
        for n, u in ((c.keep_name, c.keep_uuid), (c.name, c.uuid)):
            if n not in lost and self.conn.lookupByName(n).UUIDString() != u:
                lost.append(n)
                problems.append(f"{n} came back with another uuid")
        c.row["lost"] = str(len(lost))
        if lost:
            problems.append(f"definitions lost: {lost} (virsh list --all: {listed})")
        log = self.d.log()[since:]
        c.row["recovery"] = ", ".join(s for pat, s in RECOVERY_LOG if pat in log) or "-"
        if op == "resize" and o["state"] == L.VIR_DOMAIN_RUNNING:
            mib = self.conn.lookupByName(c.name).blockInfo("vda")[0] >> 20
            c.row["devices"] += f"; vda {mib} MiB"

        # Finally: destroy and undefine what is left; nothing may remain.
        if o["state"] is not None and o["state"] != L.VIR_DOMAIN_SHUTOFF:
            r = self.virsh("destroy", c.name)
            if r.returncode != 0:
                problems.append(f"destroy after the restart failed: {r.stderr.strip()}")
        for n in (c.name, c.keep_name):
            if n not in lost:
                r = self.virsh("undefine", n)
                if r.returncode != 0:
                    problems.append(f"undefine {n} after the restart failed: {r.stderr.strip()}")
        left = self.ok("list", "--all", "--name").split()
        bdevs, ctrls, subs, extra = spdk_objects()
        after = {"domains": left, "power": sim_power(self.d), "ovs": sorted(ovs_ours()),
                 "ports": LAB["lab"].ports(),
                 "spdk": sorted(bdevs) + sorted(ctrls) + sorted(subs) + extra}
        if after != {"domains": [], "power": "Off", "ovs": [], "ports": [], "spdk": []}:
            problems.append(f"after destroy/undefine: {after}")

        c.row["verdict"] = "ok" if not problems else "FAIL: " + "; ".join(problems)
        self.assertEqual(problems, [], f"{point}: restarted daemon's log:\n"
                                       f"{self.log_tail(since, 80)}")


def _make(idx, op, point, kind):
    def test(self):
        self.run_case(idx, op, point, kind)
    test.__doc__ = f"{point}" + (f" ({kind})" if kind else "")
    return test


for _i, (_op, _point, _kind) in enumerate(CASES, 1):
    _n = f"test_{_i:02d}_{_point.replace(':', '_').replace('-', '_')}" + (f"_{_kind}" if _kind
                                                                           else "")
    setattr(CrashPoints, _n, _make(_i, _op, _point, _kind))


# -- the matrix --------------------------------------------------------------------------------

COLUMNS = [("#", "n"), ("operation", "op"), ("point", "point"),
           ("at crash: power; ports; bdevs", "at_crash"),
           ("state after restart", "state"), ("power", "power"), ("live devices", "devices"),
           ("OVS ports (metalvirt keys)", "ovs"), ("SPDK bdevs/subsystems (DPU)", "spdk"),
           ("defs lost", "lost"), ("recovery (log)", "recovery"), ("s", "secs"),
           ("verdict", "verdict")]


def report_matrix():
    if not ROWS:
        return
    rows = []
    for i, r in enumerate(ROWS, 1):
        r = dict(r, secs=f"{r.get('secs', 0):.1f}")
        if r.get("late"):
            r["verdict"] += " (converged late)"
        if r.get("scrubbed"):
            r["verdict"] += f" [scrubbed after: {', '.join(r['scrubbed'])}]"
        rows.append([str(r.get(k, "")) for _, k in COLUMNS])
    heads = [h for h, _ in COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    total = time.monotonic() - LAB.get("t0", time.monotonic())
    text = ["", "crash-point matrix:", line(heads), "-+-".join("-" * w for w in widths)]
    text += [line(row) for row in rows]
    text.append(f"({len(rows)} points, {total:.1f} s)")
    print("\n".join(text), file=sys.stderr)
    out = os.environ.get("CRASH_MATRIX_OUT")
    if out:
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        md = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        md += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
        with open(out, "w") as f:
            f.write("\n".join(md) + f"\n\n{len(rows)} crash points, {total:.1f} s\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
