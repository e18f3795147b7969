"""The state of one SPDK instance and the bookkeeping every RPC handler shares."""

import errno as E
import os
import time

from .wire import *  # noqa: F401,F403
from .objects import *  # noqa: F401,F403


class InstanceModel:
    """An instance's state and the cascades between its parts and across the fabric;
    the RPC handlers are in Instance below."""

    def __init__(self, fabric, role, sock_path):
        self.fabric = fabric
        self.role = role
        self.sock_path = sock_path
        self.run_dir = os.path.dirname(os.path.abspath(sock_path))
        self.cpumask = CPUMASKS.get(role, "0x1")
        self.reset_state()

    def reset_state(self):
        self.hostid = new_uuid()
        self.hostnqn = HOSTNQN_PREFIX + self.hostid
        self.bdevs = {}              # name -> Bdev, registration order
        self.notifications = []      # (type, ctx); id = index
        self.malloc_count = 0
        self.rbd_count = 0
        self.transports = {}         # canonical name -> opts dict (get_transports order)
        self.subsystems = {DISCOVERY_NQN: Subsystem(DISCOVERY_NQN, discovery=True)}
        self.ctrlrs = {}             # bdev_nvme controllers by name
        self.vhost = {}
        self.vfu_base = self.run_dir + "/"
        self.vfu_endpoints = {}      # name -> VfuEndpoint
        self.vfu_listeners = {}      # cntrl path -> socket
        self.lvstores = {}
        self.portal_groups = {}
        self.initiator_groups = {}
        self.target_nodes = {}
        self.auth_groups = {}
        self.rbd_clusters = {}       # name -> registration (dict)

    # --- bdev registry ------------------------------------------------------------------

    def notify(self, kind, ctx):
        self.notifications.append((kind, ctx))

    def find_bdev(self, name):
        """spdk_bdev_open_ext's lookup: a name or an alias (uuid, lvs/lvol)."""
        b = self.bdevs.get(name)
        if b is not None:
            return b
        for b in self.bdevs.values():
            if name in b.aliases:
                return b
        return None

    def _taken(self, name):
        return self.find_bdev(name) is not None

    def register_bdev(self, b, extra_aliases=()):
        """spdk_bdev_register: the uuid becomes an alias unless it is the name; any clash
        of name or alias -> -EEXIST (src; 04 id 4/5 "File exists")."""
        aliases = [] if b.uuid == b.name else [b.uuid]
        aliases += list(extra_aliases)
        if self._taken(b.name) or any(self._taken(a) for a in aliases) \
                or b.name in aliases or len(set(aliases)) != len(aliases):
            raise errno_error(E.EEXIST)
        b.aliases = aliases
        self.bdevs[b.name] = b
        self.notify("bdev_register", b.name)

    def open_bdev(self, name, write, kind, owner):
        """spdk_bdev_open_ext: -ENODEV if unknown; writing a claimed bdev -> -EPERM."""
        b = self.find_bdev(name)
        if b is None:
            raise errno_error(E.ENODEV)
        if write and b.claim is not None:
            raise errno_error(E.EPERM)
        d = Desc(kind, owner, write)
        b.descs.append(d)
        return b, d

    def close_desc(self, b, owner):
        b.descs = [d for d in b.descs if d.owner is not owner]
        if b.claim and b.claim[1] is owner:
            b.claim = None

    def claim(self, b, claim_type, owner):
        """A module claim; -EPERM when someone else holds one (04 id 10/11). A
        read_many_write_one claim also needs no other writer."""
        if b.claim is not None and b.claim[1] is not owner:
            raise errno_error(E.EPERM)
        if claim_type == "read_many_write_one" and any(
                d.write and d.owner is not owner for d in b.descs):
            raise errno_error(E.EPERM)
        b.claim = (claim_type, owner)

    def unregister_bdev(self, b):
        """Hot remove: every consumer lets go first, then bdev_unregister."""
        for d in list(b.descs):
            if d.kind == "nvmf":
                subsys, ns = d.owner
                if subsys.namespaces.get(ns.nsid) is ns:
                    self.remove_namespace(subsys, ns.nsid)
            elif d.kind == "vhost":
                d.owner.bdev = None
            elif d.kind == "vfu":
                d.owner.bdev = None
            elif d.kind == "iscsi_lun":
                node, lun_id = d.owner
                node["luns"].pop(lun_id, None)
            elif d.kind == "lvstore":
                self.drop_lvstore(d.owner)
        b.descs = []
        b.claim = None
        if self.bdevs.get(b.name) is b:
            del self.bdevs[b.name]
            self.notify("bdev_unregister", b.name)

    def resize_bdev(self, b, num_blocks):
        """spdk_bdev_notify_blockcnt_change: shrinking an open bdev -> -EBUSY; else a
        bdev_resize event that nvmf passes on to the hosts (R §4 resize row)."""
        if num_blocks == b.num_blocks:
            return
        if num_blocks < b.num_blocks and b.descs:
            raise errno_error(E.EBUSY)
        b.num_blocks = num_blocks
        self.notify("bdev_resize", b.name)
        for d in list(b.descs):
            if d.kind == "nvmf":
                subsys, ns = d.owner
                for conn in list(subsys.conns):
                    conn.initiator.remote_ns_changed(conn.ctrl, ns.nsid)

    # --- nvmf target side -------------------------------------------------------------------

    def add_namespace(self, subsys, bdev_name, nsid=0, uuid=None, nguid=None, eui64=None,
                      anagrpid=0):
        """spdk_nvmf_subsystem_add_ns_ext; any failure is 0 -> "Invalid parameters"."""
        if nsid == 0xFFFFFFFF:
            raise invalid_params()
        if nsid == 0:
            nsid = next((i for i in range(1, subsys.max_nsid + 1)
                         if i not in subsys.namespaces), 0)
            if nsid == 0:
                raise invalid_params()
        if nsid > subsys.max_nsid or nsid in subsys.namespaces:
            raise invalid_params()
        anagrpid = anagrpid or nsid
        if anagrpid > subsys.max_nsid:
            raise invalid_params()
        ns = Namespace(nsid, None, None, None, eui64, anagrpid)
        ns.owner = owner = (subsys, ns)
        try:
            b, _ = self.open_bdev(bdev_name, True, "nvmf", owner)
        except RpcError:
            raise invalid_params()
        if b.md_size and not b.md_interleave:
            self.close_desc(b, owner)
            raise invalid_params()
        try:
            self.claim(b, "exclusive_write", owner)
        except RpcError:
            self.close_desc(b, owner)
            raise invalid_params()
        ns.bdev = b
        ns.uuid = uuid or b.uuid
        ns.nguid = nguid or nguid_of(b.uuid)     # 02: derived from the bdev's uuid
        subsys.namespaces[nsid] = ns
        for conn in list(subsys.conns):
            conn.initiator.remote_ns_changed(conn.ctrl, nsid)
        return nsid

    def remove_namespace(self, subsys, nsid):
        ns = subsys.namespaces.pop(nsid)
        self.close_desc(ns.bdev, ns.owner)
        for conn in list(subsys.conns):
            conn.initiator.remote_ns_changed(conn.ctrl, nsid)

    def disconnect_hosts(self, subsys, conns=None):
        for conn in list(subsys.conns if conns is None else conns):
            subsys.conns.remove(conn)
            conn.initiator.ctrl_lost(conn.ctrl)

    def delete_subsystem(self, subsys):
        for nsid in sorted(subsys.namespaces):
            ns = subsys.namespaces.pop(nsid)
            self.close_desc(ns.bdev, ns.owner)
        self.disconnect_hosts(subsys)
        for trid in list(subsys.listeners):
            self.drop_listener(subsys, trid)
        del self.subsystems[subsys.nqn]

    def drop_listener(self, subsys, trid):
        subsys.listeners.remove(trid)
        self.disconnect_hosts(subsys, [c for c in subsys.conns if c.listener == trid])
        if trid["trtype"] == "VFIOUSER":
            path = os.path.join(trid["traddr"], "cntrl")
            close_unix_socket(self.vfu_listeners.pop(path, None), path)
        self.fabric.release_address(self, trid)

    def accept_host(self, subsys, listener, hostnqn, initiator, ctrl):
        """A host connects (fabric connect): allowed host, then a new cntlid."""
        if not subsys.allow_any_host and hostnqn not in subsys.hosts:
            return None
        cntlid = subsys.next_cntlid
        subsys.next_cntlid = cntlid + 1 if cntlid < subsys.max_cntlid else subsys.min_cntlid
        conn = HostConn(cntlid, hostnqn, listener, initiator, ctrl)
        subsys.conns.append(conn)
        return conn

    # --- nvme initiator side (bdev_nvme) -----------------------------------------------------

    def nvme_bdev_for(self, ctrl, nsid):
        """The NVMe bdev for a remote namespace, built from what the target reports."""
        target, subsys, _ = ctrl.target
        ns = subsys.namespaces[nsid]
        src = ns.bdev
        trtype = ctrl.trid["trtype"]
        # src ctrlr_bdev.c identify: preferred sizes from the source bdev, else its
        # physical block; optimal write = transport max I/O size (01: 32 blocks of 4 KiB).
        gran = src.preferred[1] or max(1, src.phys_block_size // src.block_size)
        pref = (src.preferred[0] or gran, gran,
                src.preferred[2] or max(1, NVME_MAX_IO_SIZE // src.block_size),
                src.preferred[3] or gran, src.preferred[4] or gran)
        io = {"read", "write", "flush", "reset", "nvme_admin", "nvme_io", "compare",
              "compare_and_write", "abort", "copy"}
        if src.supports("unmap"):
            io.add("unmap")
        domains = {"TCP": ["DMA"], "RDMA": ["RDMA"]}.get(trtype, [])
        b = Bdev("%sn%d" % (ctrl.name, nsid), "nvme", "NVMe disk", src.block_size,
                 src.num_blocks, uuid=ns.uuid, io=io, numa_id=-1, domains=domains,
                 preferred=pref)
        b.nvme = (ctrl, nsid)

        def specific():
            cdata = ctrl.cdata
            info = {"trid": dict(ctrl.trid),
                    "ctrlr_data": {"cntlid": ctrl.cntlid, "vendor_id": cdata["vendor_id"],
                                   "model_number": cdata["model"],
                                   "serial_number": cdata["serial"],
                                   "firmware_revision": FIRMWARE, "subnqn": cdata["subnqn"],
                                   "oacs": {"security": 0, "format": 0, "firmware": 0,
                                            "ns_manage": 0},
                                   "multi_ctrlr": True, "ana_reporting": cdata["ana"]},
                    "vs": {"nvme_version": "2.0"},
                    "ns_data": {"id": nsid}}
            if cdata["ana"]:
                info["ns_data"]["ana_state"] = "optimized"
            info["ns_data"]["can_share"] = True
            return {"nvme": [info], "mp_policy": "active_passive"}
        b.specific = specific
        return b

    def remote_ns_changed(self, ctrl, nsid):
        """A namespace of the subsystem `ctrl` is connected to appeared, vanished or
        resized (01: hot add/remove/resize seen by bdev_nvme without any RPC)."""
        if self.ctrlrs.get(ctrl.name) is not ctrl or ctrl.target is None:
            return
        _, subsys, _ = ctrl.target
        ns = subsys.namespaces.get(nsid)
        name = ctrl.ns_bdevs.get(nsid)
        b = self.bdevs.get(name) if name else None
        if ns is None:
            if b is not None:
                ctrl.ns_bdevs.pop(nsid, None)
                self.unregister_bdev(b)
            return
        if b is None:
            nb = self.nvme_bdev_for(ctrl, nsid)
            try:
                self.register_bdev(nb)
            except RpcError:
                return               # R: duplicate uuid alias -> the bdev is not created
            ctrl.ns_bdevs[nsid] = nb.name
        else:
            try:
                self.resize_bdev(b, ns.bdev.num_blocks)
            except RpcError:
                pass

    def ctrl_lost(self, ctrl):
        """The target went away (subsystem deleted, listener removed, instance stopped).
        ctrlr_loss_timeout_sec 0 (the default): the controller stays "failed" with its
        bdevs; otherwise it retries every reconnect_delay_sec and is deleted after the
        loss timeout (src bdev_nvme.c)."""
        if self.ctrlrs.get(ctrl.name) is not ctrl:
            return
        ctrl.target = None
        loss = ctrl.opts.get("ctrlr_loss_timeout_sec", 0)
        if loss == 0:
            ctrl.state = "failed"
            return
        ctrl.state = "reconnect_is_delayed"
        delay = max(1, ctrl.opts.get("reconnect_delay_sec", 1))
        deadline = time.monotonic() + loss if loss > 0 else None
        loop = self.fabric.loop

        def retry():
            if self.ctrlrs.get(ctrl.name) is not ctrl or ctrl.target is not None:
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.delete_ctrlr(ctrl)
                return
            if self.fabric.connect(self, ctrl) is None:
                ctrl.timers.append(loop.call_later(delay, retry))
                return
            ctrl.state = "enabled"
            for nsid in sorted(set(ctrl.ns_bdevs) | set(ctrl.target[1].namespaces)):
                self.remote_ns_changed(ctrl, nsid)
        ctrl.timers.append(loop.call_later(delay, retry))

    def delete_ctrlr(self, ctrl):
        for t in ctrl.timers:
            t.cancel()
        if ctrl.target is not None:
            target, subsys, conn = ctrl.target
            if conn in subsys.conns:
                subsys.conns.remove(conn)
            ctrl.target = None
        for nsid in sorted(ctrl.ns_bdevs):
            b = self.bdevs.get(ctrl.ns_bdevs[nsid])
            if b is not None:
                self.unregister_bdev(b)
        ctrl.ns_bdevs = {}
        self.ctrlrs.pop(ctrl.name, None)

    # --- lvol ---------------------------------------------------------------------------------

    def drop_lvstore(self, lvs):
        for b in list(lvs.lvols.values()):
            self.unregister_bdev(b)
        lvs.lvols = {}
        self.close_desc(lvs.base, lvs)
        self.lvstores.pop(lvs.name, None)

    # --- whole instance -----------------------------------------------------------------------

    def teardown(self):
        """The process stops: its hosts lose their controllers, its own controllers let go of
        their targets, and every file it made is removed."""
        for subsys in list(self.subsystems.values()):
            self.disconnect_hosts(subsys)
            for trid in list(subsys.listeners):
                self.drop_listener(subsys, trid)
        for ctrl in list(self.ctrlrs.values()):
            for t in ctrl.timers:
                t.cancel()
            if ctrl.target is not None:
                _, subsys, conn = ctrl.target
                if conn in subsys.conns:
                    subsys.conns.remove(conn)
        for v in self.vhost.values():
            close_unix_socket(v.sock, v.socket_path)
        for ep in self.vfu_endpoints.values():
            close_unix_socket(ep.sock, ep.path)
        for path, sock in list(self.vfu_listeners.items()):
            close_unix_socket(sock, path)
        for node in self.target_nodes.values():
            node["luns"].clear()                 # iSCSI sessions to it see no LUN any more
        self.fabric.release_all(self)
        self.reset_state()

    def summary(self):
        return {
            "bdevs": {n: {"driver": b.driver, "num_blocks": b.num_blocks,
                          "block_size": b.block_size, "claimed": b.claim is not None,
                          "uuid": b.uuid}
                      for n, b in self.bdevs.items()},
            "subsystems": {s.nqn: {"namespaces": {str(i): ns.bdev.name
                                                  for i, ns in sorted(s.namespaces.items())},
                                   "listeners": [dict(t) for t in s.listeners],
                                   "hosts": [c.hostnqn for c in s.conns]}
                           for s in self.subsystems.values() if not s.discovery},
            "controllers": {c.name: {"state": c.state, "trid": dict(c.trid),
                                     "bdevs": [c.ns_bdevs[i] for i in sorted(c.ns_bdevs)]}
                            for c in self.ctrlrs.values()},
            "transports": list(self.transports),
            "vhost": {v.name: {"bdev": v.bdev.name if v.bdev else None,
                               "socket": v.socket_path} for v in self.vhost.values()},
            "vfu_endpoints": {n: {"bdev": e.bdev.name if e.bdev else None, "socket": e.path}
                              for n, e in self.vfu_endpoints.items()},
            "lvstores": {n: sorted(l.lvols) for n, l in self.lvstores.items()},
            "iscsi_targets": {n: {str(k): v.name for k, v in t["luns"].items()}
                              for n, t in self.target_nodes.items()},
            "rbd_clusters": sorted(self.rbd_clusters),
            "hostnqn": self.hostnqn,
            "notifications": len(self.notifications),
        }
