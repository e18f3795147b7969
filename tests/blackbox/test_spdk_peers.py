"""Disks mapped by SPDK on the node's DPU, black-box: virsh and python3-libvirt drive the
daemon; SPDK is the test double tests/blackbox/spdk_double (a v26.05 spdk_tgt following
the recordings in fixtures/spdk). One double process plays every SPDK: "storage" is the
cloud-volume target (NVMe-oF subsystems at 127.0.0.1:4420, iSCSI portal 127.0.0.1:3260,
and the fake Ceph at 127.0.0.1:6789), "dpu" and "dpu2" are the SPDKs of two nvmf nodes,
"vhost" and "vfu" those of a vhost-blk node and a vfio-user node. double_state and
double_calls tell what really happened; double_rule injects failures and delays.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_spdk_peers
"""

import base64
import os
import re
import stat
import subprocess
import tempfile
import unittest
import uuid

import libvirt

from .harness import (
    CEPH_KEY, CEPH_SECRET_UUID, Daemon, EventCollector, expect_error,
    pinned_domain_xml,
    start_event_loop, wait_until,
)
from . import spdk_client
from .spdk_client import RpcError, SpdkDouble, call, nvme_disk, storage_exports

L = libvirt
LAB = {}
PREFIX = "nqn.2026-11.io.metalvirt"
STORAGE_NQN = "nqn.2016-06.io.spdk"
ISCSI_BASE = "iqn.2016-06.io.spdk"
MON = "127.0.0.1:6789"
CEPH_KEY64 = base64.b64encode(CEPH_KEY).decode()   # what Ceph (and SPDK) want: base64
CHAP_USER = "chapuser"
CHAP_SECRET = "chap-Secret-4711"
CHAP_USAGE = "metalvirt-chap-target"
DPUS = ("dpu", "dpu2", "vhost", "vfu")
# node name -> (double role, [node.disks] lines besides spdk = …)
NODES = {
    "bm-spdk": ("dpu", 'frontend = "nvmf"\nlisten = "tcp:127.0.0.1:4421"\n'
                'host_nqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000a1"'),
    "bm-spdk2": ("dpu2", 'frontend = "nvmf"\nlisten = "tcp:127.0.0.1:4422"\n'
                 'host_nqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000a2"'),
    "bm-vhost": ("vhost", 'frontend = "vhost-blk"'),
    "bm-vfu": ("vfu", 'frontend = "vfio-user"\nlisten = "{vfu_dir}"'),
}


def node_toml(name, role, frontend, spdk):
    return f"""
[[node]]
name = "{name}"
cores = 4
memory_mib = 8192
[node.bmc]
driver = "sim"
[node.disks]
spdk = "{spdk.sock(role)}"
{frontend}
attach_timeout_s = 10
resize_wait_s = 1
heal_interval_s = 0.2
"""


def setUpModule():
    start_event_loop()  # before any connection is opened, or it gets no events
    # Module cleanups run in reverse, also when this fails half-way: daemon, double, dir.
    LAB["dir"] = unittest.enterModuleContext(
        tempfile.TemporaryDirectory(prefix="metalvirt-spdktest"))
    spdk = LAB["spdk"] = unittest.enterModuleContext(SpdkDouble("storage", *DPUS))
    LAB["vfu_dir"] = spdk.path("vfu")
    os.mkdir(LAB["vfu_dir"])
    storage_exports(spdk.sock("storage"), chap=(CHAP_USER, CHAP_SECRET))
    raw = "".join(node_toml(n, role, fe.format(vfu_dir=LAB["vfu_dir"]), spdk)
                  for n, (role, fe) in NODES.items())
    LAB["daemon"] = unittest.enterModuleContext(Daemon(raw=raw))


# -- SPDK double ---------------------------------------------------------------------------

def rpc(role, method, params=None):
    return call(LAB["spdk"].sock(role), method, params)


def state(role="dpu"):
    return rpc(role, "double_state", {"role": role})


def calls(role="dpu", clear=False):
    return rpc(role, "double_calls", {"role": role, "clear": clear})


def rule(**spec):
    return rpc("storage", "double_rule", spec)


def nvmf_volume(name, mib):
    return spdk_client.nvmf_volume(LAB["spdk"].sock("storage"), name, mib)


def iscsi_volume(name, mib, chap=False):
    """An iSCSI LUN 0 of target iqn.2016-06.io.spdk:<name> (05-iscsi.txt); with `chap` the
    target requires CHAP from auth group 1."""
    bdev = f"I-{name}"
    rpc("storage", "bdev_null_create",
        {"name": bdev, "num_blocks": mib * 2048, "block_size": 512})
    params = {"name": name, "alias_name": name, "luns": [{"bdev_name": bdev, "lun_id": 0}],
              "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64}
    if chap:
        params.update(require_chap=True, chap_group=1)
    else:
        params["disable_chap"] = True
    rpc("storage", "iscsi_create_target_node", params)
    return f"{ISCSI_BASE}:{name}"


def rbd_image(image, mib):
    rpc("storage", "double_ceph_create", {"mon_host": MON, "user": "cinder", "key": CEPH_KEY64,
                                          "pool": "volumes", "image": image,
                                          "size_mib": mib})


def leftovers(role, key="mv-"):
    return spdk_client.leftovers(LAB["spdk"].sock(role), role, key)


def scrub(role):
    """Removes metalvirt's objects from a DPU double, so one failing test does not spoil
    the next; returns what it removed."""
    s = state(role)
    gone = []
    for n in s["subsystems"]:
        if ":mv-" in n:
            rpc(role, "nvmf_delete_subsystem", {"nqn": n})
            gone.append(n)
    for n in s["vhost"]:
        if n.startswith("mv-"):
            rpc(role, "vhost_delete_controller", {"ctrlr": n})
            gone.append(n)
    for n in s["controllers"]:
        if n.startswith("mv-"):
            rpc(role, "bdev_nvme_detach_controller", {"name": n})
            gone.append(n)
    for n, b in state(role)["bdevs"].items():
        if n.startswith("mv-"):
            try:
                rpc(role, f"bdev_{b['driver']}_delete", {"name": n})
            except RpcError:
                pass
            gone.append(n)
    return gone


def namespaces(role, dom_hex):
    """{nsid: {bdev_name, uuid, nguid}} of a domain's subsystem as SPDK reports it, or None
    when there is no subsystem."""
    try:
        subs = rpc(role, "nvmf_get_subsystems", {"nqn": f"{PREFIX}:mv-{dom_hex}"})
    except RpcError:
        return None
    return {n["nsid"]: n for n in subs[0]["namespaces"]}


def ns_bdevs(role, dom_hex):
    sub = state(role)["subsystems"].get(f"{PREFIX}:mv-{dom_hex}")
    return None if sub is None else sub["namespaces"]


# -- domain XML ----------------------------------------------------------------------------

def iscsi_disk(target, iqn, auth=None, bus="virtio"):
    a = (f"<auth username='{CHAP_USER}'><secret type='iscsi' usage='{auth}'/></auth>"
         if auth else "")
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='iscsi' name='{iqn}/0'><host name='127.0.0.1' port='3260'/>"
            f"</source>{a}<target dev='{target}' bus='{bus}'/></disk>")


def rbd_disk(target, image, secret=CEPH_SECRET_UUID, serial=None):
    s = f"<serial>{serial}</serial>" if serial else ""
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='rbd' name='volumes/{image}'><host name='127.0.0.1' port='6789'/>"
            f"</source><auth username='cinder'><secret type='ceph' uuid='{secret}'/></auth>"
            f"<target dev='{target}' bus='virtio'/>{s}</disk>")


def domain_xml(name, node, disks, dom_uuid):
    return pinned_domain_xml(name, node, disks, dom_uuid)


def hexid(dom_uuid):
    return dom_uuid.replace("-", "")


def handle(dom_uuid, target):
    return f"mv-{hexid(dom_uuid)}-{target}"


def ident(dom_uuid, target):
    """The namespace uuid of a disk without a UUID serial: uuid5(OID, handle)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, handle(dom_uuid, target)))


def blkinfo(name, target):
    out = LAB["daemon"].virsh("domblkinfo", name, target).stdout
    return int(re.search(r"Capacity:\s+(\d+)", out).group(1))


MiB = 1 << 20


class SpdkPeers(unittest.TestCase):
    def setUp(self):
        self.d = LAB["daemon"]
        self.conn = libvirt.open(self.d.uri)
        self.secrets = []
        rpc("storage", "double_clear_rules")

    def tearDown(self):
        rpc("storage", "double_clear_rules")
        for dom in self.conn.listAllDomains(0):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        for u in self.secrets:
            try:
                self.conn.secretLookupByUUIDString(u).undefine()
            except libvirt.libvirtError:
                pass
        self.conn.close()
        left = {role: leftovers(role) for role in DPUS}
        scrubbed = {role: scrub(role) for role in DPUS}
        left = {r: v for r, v in left.items() if v}
        # An empty subsystem left now and then is test_3b's heal/unmap race.
        self.assertEqual(left, {}, f"left behind in SPDK after the test (scrubbed {scrubbed})")

    def define(self, name, node, disks, dom_uuid):
        return self.conn.defineXML(domain_xml(name, node, disks, dom_uuid))

    def secret(self, usage_xml, value):
        u = str(uuid.uuid4())
        sec = self.conn.secretDefineXML(
            f"<secret ephemeral='no' private='yes'><uuid>{u}</uuid>{usage_xml}</secret>")
        sec.setValue(value)
        self.secrets.append(u)
        return u

    def assert_failed_start(self, dom, code, *texts, rolled_back=True):
        """The start fails with `code` and `texts`; the domain is shut off, as FAILED when
        the start got as far as the backends (`rolled_back`; a refusal before anything
        moves leaves the reason as it was)."""
        e = expect_error(dom.create)
        self.assertEqual(e.get_error_code(), code, str(e))
        for t in texts:
            self.assertIn(t, str(e))
        self.assertFalse(dom.isActive())
        self.assertEqual(dom.state()[0], L.VIR_DOMAIN_SHUTOFF)
        if rolled_back:
            self.assertEqual(dom.state()[1], L.VIR_DOMAIN_SHUTOFF_FAILED)
        return e

    # ------------------------------------------------------------------------------ (1)

    def test_1_start_maps_boot_disk_first_and_destroy_unmaps_all(self):
        u = "5b0d0001-0000-4000-8000-000000000001"
        h = hexid(u)
        vol = "11111111-2222-4333-8444-555555555555"
        boot_nqn = nvmf_volume("t1-boot", 64)
        data_iqn = iscsi_volume("t1-data", 128)
        # The iSCSI data disk comes first in the XML; the NVMe-oF disk has boot order 1.
        dom = self.define("t1", "bm-spdk", [iscsi_disk("vdb", data_iqn),
                                            nvme_disk("vda", boot_nqn, boot=1, serial=vol)], u)
        calls("dpu", clear=True)
        self.d.virsh("start", "t1")
        self.assertTrue(dom.isActive())
        st = state("dpu")
        self.assertEqual(st["controllers"][f"mv-{h}-vda"]["trid"],
                         {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                          "trsvcid": "4420", "subnqn": boot_nqn})
        self.assertEqual(st["controllers"][f"mv-{h}-vda"]["bdevs"], [f"mv-{h}-vdan1"])
        self.assertEqual(st["bdevs"][f"mv-{h}-vdan1"]["driver"], "nvme")
        self.assertEqual(st["bdevs"][f"mv-{h}-vdan1"]["num_blocks"] *
                         st["bdevs"][f"mv-{h}-vdan1"]["block_size"], 64 * MiB)
        self.assertEqual(st["bdevs"][f"mv-{h}-vdb"]["driver"], "iscsi")
        self.assertEqual(st["bdevs"][f"mv-{h}-vdb"]["num_blocks"], 128 * 2048)
        sub = st["subsystems"][f"{PREFIX}:mv-{h}"]
        self.assertEqual(sub["listeners"], [{"trtype": "TCP", "adrfam": "IPv4",
                                             "traddr": "127.0.0.1", "trsvcid": "4421"}])
        self.assertEqual(sub["namespaces"], {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb"})
        self.assertEqual(len(st["subsystems"]), 1, st["subsystems"])
        # Only the server's own host NQN is admitted (disks.host_nqn), never any host.
        real = rpc("dpu", "nvmf_get_subsystems", {"nqn": f"{PREFIX}:mv-{h}"})[0]
        self.assertFalse(real["allow_any_host"])
        self.assertEqual(real["hosts"],
                         [{"nqn": "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000a1"}])
        ns = namespaces("dpu", h)
        self.assertEqual(ns[1]["uuid"], vol)
        self.assertEqual(ns[1]["nguid"], vol.replace("-", "").upper())
        self.assertEqual(ns[2]["uuid"], ident(u, "vdb"))
        # The iSCSI LUN was looked up by name before it was created (a duplicate name leaks a
        # session in SPDK) and logged in with the node's initiator name.
        cs = calls("dpu")
        i = next(n for n, c in enumerate(cs) if c["method"] == "bdev_iscsi_create")
        self.assertEqual(cs[i]["params"], {
            "name": f"mv-{h}-vdb", "initiator_iqn": "iqn.2026-11.io.metalvirt:bm-spdk",
            "url": f"iscsi://127.0.0.1:3260/{data_iqn}/0"})
        self.assertTrue(any(c["method"] == "bdev_get_bdevs" and
                            (c["params"] or {}).get("name") == f"mv-{h}-vdb" for c in cs[:i]))
        # Both disks say bus virtio; the nvmf frontend shows them as NVMe namespaces.
        msgs = dom.messages(0)
        for t in ("vda", "vdb"):
            self.assertTrue(any(f"disk {t} (bus virtio) is presented to the host as an NVMe "
                                "namespace" in m for m in msgs), msgs)
        self.assertEqual(blkinfo("t1", "vda"), 64 * MiB)
        self.assertEqual(blkinfo("t1", "vdb"), 128 * MiB)

        self.d.virsh("destroy", "t1")
        self.assertEqual(leftovers("dpu", f"mv-{h}"), [])
        self.assertEqual(state("dpu")["subsystems"], {})
        # Started again: the same shape (nothing stale in the way).
        self.d.virsh("start", "t1")
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb"})
        self.d.virsh("destroy", "t1")
        self.assertEqual(leftovers("dpu"), [])

    # ------------------------------------------------------------------------------ (2)

    def test_2_hotplug_unplug_resize_and_blockinfo(self):
        u = "5b0d0002-0000-4000-8000-000000000002"
        h = hexid(u)
        boot_nqn = nvmf_volume("t2-boot", 64)
        data_iqn = iscsi_volume("t2-data", 32)
        chap_iqn = iscsi_volume("t2-chap", 16, chap=True)
        path_iqn = iscsi_volume("t2-path", 8)
        rbd_image("t2-rbd", 64)
        self.secret(f"<usage type='iscsi'><target>{CHAP_USAGE}</target></usage>",
                           CHAP_SECRET.encode())
        dom = self.define("t2", "bm-spdk", [nvme_disk("vda", boot_nqn, boot=1)], u)
        dom.create()
        events = EventCollector(self.conn)
        events.register(L.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, dom)
        events.register(L.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, dom)

        # attach-disk --live: the next namespace, a bdev of the disk's handle.
        self.d.virsh("attach-disk", "t2", f"{data_iqn}/0", "vdb", "--sourcetype", "network",
                     "--source-protocol", "iscsi", "--source-host-name", "127.0.0.1:3260",
                     "--targetbus", "virtio", "--live")
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb"})
        self.assertEqual(state("dpu")["bdevs"][f"mv-{h}-vdb"]["driver"], "iscsi")
        self.assertIn("dev='vdb'", dom.XMLDesc(0))
        # nova's attach_volume: an RBD disk with the cinder user's ceph secret.
        calls("dpu", clear=True)
        dom.attachDeviceFlags(rbd_disk("vdc", "t2-rbd"), L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(ns_bdevs("dpu", h)["3"], f"mv-{h}-vdc")
        self.assertEqual(state("dpu")["bdevs"][f"mv-{h}-vdc"]["driver"], "rbd")
        reg = next(c["params"] for c in calls("dpu")
                   if c["method"] == "bdev_rbd_register_cluster")
        self.assertEqual(reg["config_param"], {"mon_host": MON, "key": CEPH_KEY64})
        self.assertEqual(reg["user_id"], "cinder")
        # An iSCSI disk with CHAP (the key from an iscsi secret), and the same kind of LUN
        # named by its udev by-path link as os-brick hands it to nova.
        dom.attachDeviceFlags(iscsi_disk("vdd", chap_iqn, auth=CHAP_USAGE),
                              L.VIR_DOMAIN_AFFECT_LIVE)
        self.d.virsh("attach-disk", "t2",
                     f"/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{path_iqn}-lun-0", "vde",
                     "--sourcetype", "block", "--targetbus", "virtio", "--live")
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb",
                                              "3": f"mv-{h}-vdc", "4": f"mv-{h}-vdd",
                                              "5": f"mv-{h}-vde"})
        urls = {c["params"]["name"]: c["params"]["url"] for c in calls("dpu")
                if c["method"] == "bdev_iscsi_create"}
        self.assertEqual(urls, {
            f"mv-{h}-vdd": f"iscsi://{CHAP_USER}%{CHAP_SECRET}@127.0.0.1:3260/{chap_iqn}/0",
            f"mv-{h}-vde": f"iscsi://127.0.0.1:3260/{path_iqn}/0"})
        self.assertEqual(state("dpu")["bdevs"][f"mv-{h}-vde"]["num_blocks"], 8 * 2048)
        self.assertTrue(events.wait_for(
            lambda evs: len([e for e in evs if e[0] == "device-added"]) >= 4, 5), events.events)

        # blockresize: RBD through bdev_rbd_resize (MiB), and domblkinfo shows it.
        self.assertEqual(blkinfo("t2", "vdc"), 64 * MiB)
        calls("dpu", clear=True)
        self.d.virsh("blockresize", "t2", "vdc", "128M")
        self.assertIn({"name": f"mv-{h}-vdc", "new_size": 128},
                      [c["params"] for c in calls("dpu") if c["method"] == "bdev_rbd_resize"])
        self.assertEqual(blkinfo("t2", "vdc"), 128 * MiB)
        self.assertEqual(state("dpu")["bdevs"][f"mv-{h}-vdc"]["num_blocks"], 128 * 2048)
        # NVMe-oF: SPDK cannot grow a remote volume; until its target did, a clear refusal.
        e = expect_error(dom.blockResize, "vda", 96 * MiB, L.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        self.assertIn("grow the volume on its storage target first", str(e))
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_UNSUPPORTED, str(e))
        self.assertEqual(blkinfo("t2", "vda"), 64 * MiB)
        rpc("storage", "bdev_null_resize", {"name": "N-t2-boot", "new_size": 96})
        self.d.virsh("blockresize", "t2", "vda", "96M")
        self.assertEqual(blkinfo("t2", "vda"), 96 * MiB)
        # Shrinking is refused before SPDK is asked.
        e = expect_error(dom.blockResize, "vda", 32 * MiB, L.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG, str(e))
        self.assertIn("cannot shrink", str(e))
        self.assertEqual(blkinfo("t2", "vda"), 96 * MiB)

        # detach-disk --live: namespace and bdev gone when it returns, then DEVICE_REMOVED.
        self.d.virsh("detach-disk", "t2", "vdb", "--live")
        self.assertNotIn("2", ns_bdevs("dpu", h))
        self.assertNotIn(f"mv-{h}-vdb", state("dpu")["bdevs"])
        self.assertTrue(events.wait_for(
            lambda evs: any(e[0] == "device-removed" for e in evs), 5), events.events)
        self.assertNotIn("dev='vdb'", dom.XMLDesc(0))
        self.d.virsh("detach-disk", "t2", "vdd", "--live")
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vdan1", "3": f"mv-{h}-vdc",
                                              "5": f"mv-{h}-vde"})
        # A disk attached after a detach takes the next position, not a freed one.
        self.d.virsh("attach-disk", "t2", f"{data_iqn}/0", "vdf", "--sourcetype", "network",
                     "--source-protocol", "iscsi", "--source-host-name", "127.0.0.1:3260",
                     "--live")
        self.assertEqual(ns_bdevs("dpu", h)["6"], f"mv-{h}-vdf")
        events.deregister_all()
        log = self.d.log()
        for s in (CHAP_SECRET, CEPH_KEY.decode(), CEPH_KEY64):
            self.assertNotIn(s, log)
        self.d.virsh("destroy", "t2")
        self.assertEqual(leftovers("dpu"), [])

    # ------------------------------------------------------------------------------ (3)

    def test_3_a_failing_spdk_step_fails_the_start_and_rolls_back(self):
        u = "5b0d0003-0000-4000-8000-000000000003"
        h = hexid(u)
        boot_nqn = nvmf_volume("t3-boot", 16)
        data_iqn = iscsi_volume("t3-data", 16)
        dom = self.define("t3", "bm-spdk", [nvme_disk("vda", boot_nqn, boot=1),
                                            iscsi_disk("vdb", data_iqn)], u)
        for method, code in (("bdev_nvme_attach_controller", -5),
                             ("bdev_iscsi_create", -32602),
                             ("nvmf_create_subsystem", -32603),
                             ("nvmf_subsystem_add_listener", -32602),
                             ("nvmf_subsystem_add_ns", -32603)):
            with self.subTest(method=method):
                rule(method=method, role="dpu",
                     error={"code": code, "message": f"injected {method} fault"})
                self.assert_failed_start(
                    dom, L.VIR_ERR_OPERATION_FAILED,
                    f"SPDK {method} failed: injected {method} fault (code {code})")
                self.assertEqual(leftovers("dpu", f"mv-{h}"), [], method)
                self.assertEqual(state("dpu")["subsystems"], {}, method)
                rpc("storage", "double_clear_rules")
                scrub("dpu")
        # The same domain starts cleanly afterwards: nothing stale in SPDK's way.
        dom.create()
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb"})
        dom.destroy()

    def test_3b_destroy_while_the_heal_loop_runs_leaves_nothing(self):
        u = "5b0d0003-0000-4000-8000-00000000003b"
        h = hexid(u)
        dom = self.define("t3b", "bm-spdk", [
            nvme_disk("vda", nvmf_volume("t3b", 16), boot=1),
            iscsi_disk("vdb", iscsi_volume("t3b", 16))], u)
        dom.create()
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb"})
        # SPDK is slow to confirm one namespace's removal (it is removed at once, the reply
        # comes 0.8 s later), so the heal loop runs (every 0.2 s) while vdb is half unmapped.
        rule(method="nvmf_subsystem_remove_ns", role="dpu", match={"nsid": 2}, delay_ms=800)
        dom.destroy()
        # The heal loop never presents a disk again while it is being unmapped.
        self.assertEqual(leftovers("dpu", f"mv-{h}"), [])
        self.assertNotIn("healed", "\n".join(
            line for line in self.d.log().splitlines() if f"mv-{h}" in line))

    # ------------------------------------------------------------------------------ (4)

    def test_4_restart_undoes_a_killed_start_removes_orphans_and_maps_lost_disks(self):
        d = self.d
        ku = "5b0d0004-0000-4000-8000-0000000000a4"
        su = "5b0d0004-0000-4000-8000-0000000000b4"
        kh, sh = hexid(ku), hexid(su)
        keep = self.define("keep", "bm-spdk", [
            nvme_disk("vda", nvmf_volume("t4-keep", 16), boot=1),
            iscsi_disk("vdb", iscsi_volume("t4-keep", 16))], ku)
        keep.create()
        self.assertEqual(ns_bdevs("dpu", kh), {"1": f"mv-{kh}-vdan1", "2": f"mv-{kh}-vdb"})
        # A start stopped dead in the middle: its second namespace is being added (SPDK
        # holds the reply) when the daemon is killed.
        stuck = self.define("stuck", "bm-spdk2", [
            nvme_disk("vda", nvmf_volume("t4-stuck", 16), boot=1),
            iscsi_disk("vdb", iscsi_volume("t4-stuck", 16))], su)
        rule(method="nvmf_subsystem_add_ns", role="dpu2", skip=1, delay_ms=20000)
        calls("dpu2", clear=True)
        starter = subprocess.Popen(["virsh", "-q", "-c", d.uri, "start", "stuck"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: [c["method"] for c in calls("dpu2")].count(
                "nvmf_subsystem_add_ns") >= 2, 10, what="the start's second add_ns")
            self.conn.close()
            d._kill()
            starter.wait(timeout=10)
        finally:
            if starter.poll() is None:
                starter.kill()
                starter.wait()
        rpc("storage", "double_clear_rules")
        self.assertNotEqual(leftovers("dpu2", f"mv-{sh}"), [])
        # While it is down: orphans of a domain that does not exist (an empty subsystem, an
        # iSCSI bdev as metalvirt makes them, and a null bdev), and the running domain loses
        # its second namespace.
        ghost = "mv-" + "f" * 32
        rpc("dpu", "nvmf_create_subsystem", {"nqn": f"{PREFIX}:{ghost}", "allow_any_host": True})
        rpc("dpu", "bdev_iscsi_create", {"name": f"{ghost}-vdb",
                                         "initiator_iqn": "iqn.2026-11.io.metalvirt:bm-spdk",
                                         "url": f"iscsi://127.0.0.1:3260/{ISCSI_BASE}:t4-keep/0"})
        rpc("dpu", "bdev_null_create", {"name": f"{ghost}-vda", "num_blocks": 2048,
                                        "block_size": 512})
        rpc("dpu", "nvmf_subsystem_remove_ns", {"nqn": f"{PREFIX}:mv-{kh}", "nsid": 2})
        self.assertEqual(ns_bdevs("dpu", kh), {"1": f"mv-{kh}-vdan1"})
        d._spawn()
        self.conn = libvirt.open(d.uri)

        # The interrupted start is undone: nothing of it in its DPU, shut off as failed.
        wait_until(lambda: leftovers("dpu2") == [], 10, what="the killed start undone")
        stuck = self.conn.lookupByUUIDString(su)
        self.assertFalse(stuck.isActive())
        self.assertEqual(stuck.state(), [L.VIR_DOMAIN_SHUTOFF, L.VIR_DOMAIN_SHUTOFF_FAILED])
        # The running domain's namespace is back at its place; the orphans are gone.
        wait_until(lambda: ns_bdevs("dpu", kh) == {"1": f"mv-{kh}-vdan1", "2": f"mv-{kh}-vdb"},
                   10, what="the lost namespace mapped again")
        wait_until(lambda: f"{PREFIX}:{ghost}" not in state("dpu")["subsystems"], 10,
                   what="the orphan subsystem removed")
        wait_until(lambda: f"{ghost}-vdb" not in state("dpu")["bdevs"], 10,
                   what="the orphan iSCSI bdev removed")
        keep = self.conn.lookupByName("keep")
        self.assertTrue(keep.isActive())
        self.assertEqual(namespaces("dpu", kh)[2]["uuid"], ident(ku, "vdb"))
        self.assertIn("reconcile: unmapped a disk no live domain owns", d.log())
        # A bdev with our prefix but of a kind metalvirt never makes (a null bdev) is left
        # alone, and the log says so instead of claiming it was unmapped.
        self.assertIn(f"{ghost}-vda", state("dpu")["bdevs"])
        self.assertIn("metalvirt does not make; left alone", d.log())
        self.assertNotRegex(d.log(), rf"unmapped a disk no live domain owns[^\n]*{ghost}-vda")
        rpc("dpu", "bdev_null_delete", {"name": f"{ghost}-vda"})

    # ------------------------------------------------------------------------------ (5)

    def test_5_heal_presents_a_blinking_remote_volume_again(self):
        u = "5b0d0005-0000-4000-8000-000000000005"
        h = hexid(u)
        va, vb = "aaaaaaaa-0000-4000-8000-00000000000a", "bbbbbbbb-0000-4000-8000-00000000000b"
        na, nb = nvmf_volume("t5-a", 16), nvmf_volume("t5-b", 16)
        dom = self.define("t5", "bm-spdk", [nvme_disk("vda", na, boot=1, serial=va),
                                            nvme_disk("vdb", nb, serial=vb)], u)
        dom.create()
        full = {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdbn1"}
        self.assertEqual(ns_bdevs("dpu", h), full)
        # Both volumes vanish on their target: the DPU drops its bdevs and namespaces.
        for nqn in (na, nb):
            rpc("storage", "nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": 1})
        wait_until(lambda: ns_bdevs("dpu", h) == {}, 5, what="the namespaces dropped")
        self.assertNotIn(f"mv-{h}-vdan1", state("dpu")["bdevs"])
        # The second comes back first: SPDK re-registers its bdev but does not present it;
        # metalvirtd does, at its own nsid (not the lowest free one).
        rpc("storage", "nvmf_subsystem_add_ns", {"nqn": nb, "namespace": {"bdev_name": "N-t5-b",
                                                                         "nsid": 1}})
        wait_until(lambda: ns_bdevs("dpu", h) == {"2": f"mv-{h}-vdbn1"}, 5,
                   what="vdb presented again")
        rpc("storage", "nvmf_subsystem_add_ns", {"nqn": na, "namespace": {"bdev_name": "N-t5-a",
                                                                         "nsid": 1}})
        wait_until(lambda: ns_bdevs("dpu", h) == full, 5, what="vda presented again")
        ns = namespaces("dpu", h)
        self.assertEqual((ns[1]["uuid"], ns[1]["nguid"]), (va, va.replace("-", "").upper()))
        self.assertEqual((ns[2]["uuid"], ns[2]["nguid"]), (vb, vb.replace("-", "").upper()))
        self.assertIn("disk backend healed", self.d.log())
        self.assertTrue(dom.isActive())

    # ------------------------------------------------------------------------------ (6)

    def test_6_bad_disk_input_is_refused(self):
        u = "5b0d0006-0000-4000-8000-000000000006"
        nqn = f"{STORAGE_NQN}:t6"
        net = "<disk type='network' device='disk'><source protocol='{p}' name='{n}'>{h}</source>" \
              "<target dev='vdb' bus='virtio'/></disk>"
        host = "<host name='127.0.0.1' port='{}'/>"
        # Protocols and types the DPU cannot connect: CONFIG_UNSUPPORTED at define.
        for proto in ("gluster", "nbd", "http"):
            e = expect_error(self.conn.defineXML, domain_xml("bad", "bm-spdk", [
                net.format(p=proto, n="vol/img", h=host.format(24007))], u))
            self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED, str(e))
            self.assertIn(f"disk protocol '{proto}'", str(e))
        e = expect_error(self.conn.defineXML, domain_xml("bad", "bm-spdk", [
            "<disk type='dir' device='disk'><source dir='/srv/x'/>"
            "<target dev='vdb' bus='virtio'/></disk>"], u))
        self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED, str(e))
        self.assertIn("disk type 'dir'", str(e))
        # Incomplete sources: XML_ERROR at define.
        for what, disk in (
                ("nvme-tcp without host", net.format(p="nvme-tcp", n=nqn, h="")),
                ("nvme-tcp without port", net.format(p="nvme-tcp", n=nqn,
                                                     h="<host name='127.0.0.1'/>")),
                ("iscsi without name", "<disk type='network' device='disk'>"
                 "<source protocol='iscsi'><host name='127.0.0.1' port='3260'/></source>"
                 "<target dev='vdb' bus='virtio'/></disk>")):
            with self.subTest(what=what):
                e = expect_error(self.conn.defineXML, domain_xml("bad", "bm-spdk", [disk], u))
                self.assertEqual(e.get_error_code(), L.VIR_ERR_XML_ERROR, str(e))
        self.assertEqual(self.conn.listAllDomains(0), [])

        # rbd without <host> is valid libvirt (QEMU reads ceph.conf), so it defines; a DPU
        # has no ceph.conf: an SPDK node refuses it at start (bfae9eb; the brief had
        # XML_ERROR at define).
        dom = self.define("bad", "bm-spdk", [
            "<disk type='network' device='disk'><source protocol='rbd' name='volumes/x'/>"
            "<auth username='cinder'><secret type='ceph' uuid='%s'/></auth>"
            "<target dev='vdb' bus='virtio'/></disk>" % CEPH_SECRET_UUID], u)
        calls("dpu", clear=True)
        self.assert_failed_start(dom, L.VIR_ERR_CONFIG_UNSUPPORTED,
                                 "rbd disk vdb names no Ceph monitor", rolled_back=False)
        self.assertEqual(calls("dpu"), [])
        dom.undefine()
        # A secret of the wrong usage type: INVALID_ARG at start, before anything moves.
        rbd_image("t6-rbd", 16)
        vol_secret = self.secret("<usage type='volume'><volume>/var/lib/x.img</volume></usage>",
                                 b"not-a-ceph-key")
        dom = self.define("bad", "bm-spdk", [rbd_disk("vda", "t6-rbd", secret=vol_secret)], u)
        calls("dpu", clear=True)
        self.assert_failed_start(
            dom, L.VIR_ERR_INVALID_ARG,
            f"secret with uuid {vol_secret} is of type 'volume' not expected 'ceph' type",
            rolled_back=False)
        self.assertEqual(calls("dpu"), [])
        dom.undefine()
        # An IDE disk cannot be presented by the DPU: CONFIG_UNSUPPORTED, nothing mapped.
        dom = self.define("bad", "bm-spdk", [
            nvme_disk("vda", nvmf_volume("t6", 16), boot=1),
            iscsi_disk("hda", iscsi_volume("t6", 16), bus="ide")], u)
        self.assert_failed_start(dom, L.VIR_ERR_CONFIG_UNSUPPORTED, "disk bus 'ide'",
                                 "disk hda", rolled_back=False)
        made = [c["method"] for c in calls("dpu")
                if re.search(r"create|attach|add", c["method"])]
        self.assertEqual(made, [])
        self.assertEqual(leftovers("dpu"), [])
        self.assertFalse(any("ide" in m for m in dom.messages(0)), dom.messages(0))
        dom.undefine()
        # A read-only disk on the nvmf frontend (NVMe-oF namespaces cannot be read-only in
        # SPDK) is refused rather than presented writable.
        ro = iscsi_disk("vdb", iscsi_volume("t6ro", 16)).replace("</disk>", "<readonly/></disk>")
        dom = self.define("bad", "bm-spdk", [nvme_disk("vda", nvmf_volume("t6ro", 16)), ro], u)
        self.assert_failed_start(dom, L.VIR_ERR_CONFIG_UNSUPPORTED,
                                 "cannot present a disk read-only", "disk vdb",
                                 rolled_back=False)
        self.assertEqual(leftovers("dpu"), [])

    # ------------------------------------------------------------------------------ (7)

    def test_7a_vhost_blk_node_one_controller_per_disk(self):
        u = "5b0d0007-0000-4000-8000-00000000007a"
        h = hexid(u)
        ro = iscsi_disk("vda", iscsi_volume("t7a", 16)).replace("</disk>", "<readonly/></disk>")
        dom = self.define("t7a", "bm-vhost", [ro, nvme_disk("vdb", nvmf_volume("t7a", 32))], u)
        dom.create()
        run = LAB["spdk"].dir
        st = state("vhost")
        self.assertEqual(st["vhost"], {
            f"mv-{h}-vda": {"bdev": f"mv-{h}-vda", "socket": f"{run}/mv-{h}-vda"},
            f"mv-{h}-vdb": {"bdev": f"mv-{h}-vdbn1", "socket": f"{run}/mv-{h}-vdb"}})
        self.assertEqual(st["subsystems"], {})
        for t in ("vda", "vdb"):
            self.assertTrue(stat.S_ISSOCK(os.lstat(f"{run}/mv-{h}-{t}").st_mode))
        ctrls = {c["ctrlr"]: c for c in rpc("vhost", "vhost_get_controllers")}
        self.assertEqual(ctrls[f"mv-{h}-vdb"]["backend_specific"]["block"],
                         {"readonly": False, "bdev": f"mv-{h}-vdbn1",
                          "transport": "vhost_user_blk"})
        # vhost-blk can present a <readonly/> disk read-only.
        self.assertTrue(ctrls[f"mv-{h}-vda"]["backend_specific"]["block"]["readonly"])
        self.assertEqual(blkinfo("t7a", "vdb"), 32 * MiB)
        # virtio-blk is what vhost-blk presents: no note about the bus.
        self.assertFalse(any("presented to the host as" in m for m in dom.messages(0)))
        dom.destroy()
        self.assertEqual(leftovers("vhost"), [])
        self.assertFalse(os.path.exists(f"{run}/mv-{h}-vda"))

    def test_7b_vfio_user_node_emulated_nvme_controller(self):
        u = "5b0d0007-0000-4000-8000-00000000007b"
        h = hexid(u)
        vfu = LAB["vfu_dir"]
        dom = self.define("t7b", "bm-vfu", [
            nvme_disk("vda", nvmf_volume("t7b", 16), boot=1, bus="nvme"),
            iscsi_disk("vdb", iscsi_volume("t7b", 16))], u)
        for _ in range(2):  # twice: no stale cntrl socket in the way of the second start
            dom.create()
            st = state("vfu")
            self.assertIn("VFIOUSER", st["transports"])
            sub = st["subsystems"][f"{PREFIX}:mv-{h}"]
            self.assertEqual(sub["listeners"], [{"trtype": "VFIOUSER", "adrfam": "unknown",
                                                 "traddr": vfu, "trsvcid": "0"}])
            self.assertEqual(sub["namespaces"], {"1": f"mv-{h}-vdan1", "2": f"mv-{h}-vdb"})
            self.assertTrue(stat.S_ISSOCK(os.lstat(os.path.join(vfu, "cntrl")).st_mode))
            add = next(c["params"] for c in calls("vfu")
                       if c["method"] == "nvmf_subsystem_add_listener")
            self.assertNotIn("adrfam", add["listen_address"])
            msgs = dom.messages(0)
            self.assertFalse(any("disk vda" in m for m in msgs), msgs)   # bus nvme: native
            self.assertTrue(any("disk vdb (bus virtio) is presented to the host as an NVMe "
                                "namespace" in m for m in msgs), msgs)
            dom.destroy()
            self.assertEqual(leftovers("vfu"), [])
            self.assertFalse(os.path.exists(os.path.join(vfu, "cntrl")))
            calls("vfu", clear=True)

    def test_8_local_file_disk_maps_as_aio_bdev(self):
        u = "5b0d0008-0000-4000-8000-000000000008"
        h = hexid(u)
        img = os.path.join(LAB["dir"], "lab.img")
        with open(img, "wb") as f:
            f.truncate(16 * MiB)
        dom = self.define("t8", "bm-spdk", [
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{img}'/><target dev='vda' bus='virtio'/></disk>"], u)
        calls("dpu", clear=True)
        # SPDK (bdev_aio.c) cannot detect the block size of a regular file: the daemon gives
        # 512 for files (and lets SPDK detect it for block devices).
        dom.create()
        aio = next(c["params"] for c in calls("dpu") if c["method"] == "bdev_aio_create")
        self.assertEqual(aio, {"name": f"mv-{h}-vda", "filename": img, "block_size": 512})
        self.assertEqual(state("dpu")["bdevs"][f"mv-{h}-vda"]["driver"], "aio")
        self.assertEqual(ns_bdevs("dpu", h), {"1": f"mv-{h}-vda"})
        self.assertEqual(blkinfo("t8", "vda"), 16 * MiB)
        dom.destroy()

    def test_8b_io_limits_become_the_bdevs_qos(self):
        """<iotune> and virDomainSetBlockIoTune reach SPDK as bdev_set_qos_limit on the
        disk's bdev (I/Os per second, MiB/s), exactly."""
        u = "5b0d0088-0000-4000-8000-000000000088"
        h = hexid(u)
        img = os.path.join(LAB["dir"], "qos.img")
        with open(img, "wb") as f:
            f.truncate(16 * MiB)
        dom = self.define("t8b", "bm-spdk", [
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{img}'/><target dev='vda' bus='virtio'/>"
            f"<iotune><total_iops_sec>5000</total_iops_sec>"
            f"<total_bytes_sec>{20 * MiB}</total_bytes_sec></iotune></disk>"], u)
        dom.create()
        bdev = f"mv-{h}-vda"

        def limits():
            return rpc("dpu", "bdev_get_bdevs", {"name": bdev})[0]["assigned_rate_limits"]
        self.assertEqual(limits(), {"rw_ios_per_sec": 5000, "rw_mbytes_per_sec": 20,
                                    "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0})
        dom.setBlockIoTune("vda", {"total_iops_sec": 8000}, L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(limits()["rw_ios_per_sec"], 8000)
        self.assertEqual(limits()["rw_mbytes_per_sec"], 20, "fields not given are kept")
        got = dom.blockIoTune("vda", 0)
        self.assertEqual((got["total_iops_sec"], got["total_bytes_sec"]), (8000, 20 * MiB))
        e = expect_error(dom.setBlockIoTune, "vda", {"total_iops_sec": 8500},
                         L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED)
        self.assertIn("multiples of 1000", str(e))
        self.assertEqual(limits()["rw_ios_per_sec"], 8000, "nothing sent to SPDK")
        # Removing every limit: zeros to SPDK, no <iotune> left.
        dom.setBlockIoTune("vda", {"total_iops_sec": 0, "total_bytes_sec": 0},
                           L.VIR_DOMAIN_AFFECT_LIVE)
        self.assertEqual(set(limits().values()), {0})
        self.assertNotIn("<iotune>", dom.XMLDesc(0))
        dom.destroy()

    # ------------------------------------------------------------------------------ (9)

    def test_9_the_log_never_holds_a_chap_secret_or_ceph_key(self):
        # Test 2 mapped a CHAP disk and an RBD disk; test 3 failed starts on purpose.
        log = self.d.log()
        for s in (CHAP_SECRET, CEPH_KEY.decode(), CEPH_KEY64):
            self.assertNotIn(s, log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
