"""The RPC handlers of one SPDK instance (bdev, NVMe-oF, iSCSI, vhost, vfio-user, lvol)."""

import copy
import errno as E
import fcntl
import ipaddress
import os
import re
import stat
import struct
import time

from .wire import *  # noqa: F401,F403
from .objects import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403


# ------------------------------------------------------------------------------------------
# RPC handlers. Each takes the decoded params (a dict, or None where params may be absent)
# and returns the result, a Later, or raises RpcError.

class Later:
    """A reply that completes after `delay` seconds: `finish()` then runs and returns the
    result (or a further Later, or raises RpcError)."""

    def __init__(self, delay, finish):
        self.delay = delay
        self.finish = finish


def parse_cpumask(s):
    """A core mask as spdk_cpuset_parse takes it: hex (0x optional) or a [list]."""
    s = s.strip()
    if s.startswith("["):
        if not s.endswith("]"):
            return None
        mask = 0
        for part in s[1:-1].split(","):
            lo, _, hi = part.strip().partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                return None
            for c in range(int(lo), int(hi or lo) + 1):
                mask |= 1 << c
        return mask
    try:
        return int(s, 16)
    except ValueError:
        return None


ISCSI_URL = re.compile(r"^iscsi://(?:(?P<user>[^%@/]*)(?:%(?P<secret>[^@/]*))?@)?"
                       r"(?P<host>\[[^\]]+\]|[^/:\[\]@]+)(?::(?P<port>\d+))?"
                       r"/(?P<iqn>[^/]+)/(?P<lun>\d+)$")


class Instance(InstanceModel):

    # --- app -----------------------------------------------------------------------------------

    def rpc_spdk_get_version(self, p):
        return copy.deepcopy(VERSION)

    def rpc_rpc_get_methods(self, p):
        return [m for m in reversed(list(METHODS))]

    def rpc_spdk_kill_instance(self, p):
        """Signals the process; the instance stops once the reply is out (R §3)."""
        if p["sig_name"] != "SIGUSR1":
            self.fabric.loop.call_later(self.fabric.max_ms / 1000.0 + 0.05,
                                        self.fabric.stop_instance, self)
        return True

    def rpc_bdev_wait_for_examine(self, p):
        return True

    def rpc_notify_get_types(self, p):
        return ["bdev_register", "bdev_unregister", "bdev_resize"]          # R §3

    def rpc_notify_get_notifications(self, p):
        """src notify.c: ids count from 0, a ring of the last 1024 events (R §3)."""
        p = p or {}
        start = p.get("id", 0)
        count = p.get("max", 0xFFFFFFFFFFFFFFFF)
        head = len(self.notifications)
        start = max(start, head - 1024)
        out = []
        for i in range(start, head):
            if len(out) >= count:
                break
            kind, ctx = self.notifications[i]
            out.append({"type": kind, "ctx": ctx, "id": i})
        return out

    # --- bdev --------------------------------------------------------------------------------

    def rpc_bdev_get_bdevs(self, p):
        """01 id 9, 05 id 7; unknown -> -19 (04 id 14); `timeout` (ms) waits for it."""
        p = p or {}
        name = p.get("name")
        if name is None:
            return [b.to_json() for b in self.bdevs.values()]
        deadline = time.monotonic() + p.get("timeout", 0) / 1000.0

        def lookup():
            b = self.find_bdev(name)
            if b is not None:
                return [b.to_json()]
            if time.monotonic() < deadline:
                return Later(0.01, lookup)
            raise errno_error(E.ENODEV)
        return lookup()

    QOS_KEYS = ("rw_ios_per_sec", "rw_mbytes_per_sec", "r_mbytes_per_sec", "w_mbytes_per_sec")

    def rpc_bdev_set_qos_limit(self, p):
        """src bdev_rpc.c rpc_bdev_set_qos_limit and bdev.c bdev_qos_limits_set: the bdev must
        open (-ENODEV, strerror), at least one limit must be given (-EINVAL "No rate limits
        specified"); a limit not given keeps its value; MB/s become bytes; a limit that is not
        a multiple of the minimum (1000 I/Os, 1 MiB) is rounded up, with an error logged,
        not refused; 0 removes that limit. Answers true."""
        b = self.find_bdev(p["name"])
        if b is None:
            raise errno_error(E.ENODEV)
        given = [(i, p[k]) for i, k in enumerate(self.QOS_KEYS) if k in p]
        if not given:
            raise RpcError(-E.EINVAL, "No rate limits specified")
        for i, v in given:
            minimum = 1000 if i == 0 else 1 << 20
            limit = v if i == 0 else v << 20
            if limit % minimum:      # src: SPDK_ERRLOG "... is not a multiple of ...", then
                limit += minimum - limit % minimum      # "Round up the rate limit"
            b.qos[i] = limit
        return True

    def rpc_bdev_get_iostat(self, p):
        """src bdev_rpc.c: tick_rate, ticks, then every (or each named) bdev's counters;
        v26.05 takes `names` (R API drift). Nothing does I/O here, so all are 0."""
        p = p or {}
        names = p.get("names")
        per_channel = p.get("per_channel", False)
        if per_channel and (names is None or len(names) != 1):
            raise errno_error(E.EINVAL)
        if names is None:
            bdevs = list(self.bdevs.values())
        else:
            bdevs = []
            for n in names:
                b = self.find_bdev(n)
                if b is None:
                    raise errno_error(E.ENODEV)
                bdevs.append(b)
        counters = {k: 0 for k in (
            "bytes_read", "num_read_ops", "bytes_written", "num_write_ops", "bytes_unmapped",
            "num_unmap_ops", "bytes_copied", "num_copy_ops", "read_latency_ticks",
            "max_read_latency_ticks", "min_read_latency_ticks", "write_latency_ticks",
            "max_write_latency_ticks", "min_write_latency_ticks", "unmap_latency_ticks",
            "max_unmap_latency_ticks", "min_unmap_latency_ticks", "copy_latency_ticks",
            "max_copy_latency_ticks", "min_copy_latency_ticks")}
        out = {"tick_rate": 2100000000, "ticks": time.monotonic_ns() * 21 // 10}
        if per_channel:
            out["name"] = bdevs[0].name
            out["channels"] = [dict({"thread_id": 1}, **counters)]
            return out
        out["bdevs"] = [dict({"name": b.name}, **counters, io_error={}) for b in bdevs]
        return out

    def _delete(self, name, driver):
        """spdk_bdev_unregister_by_name: unknown, or another module's -> -19 (04 id 16)."""
        b = self.find_bdev(name)
        if b is None or b.driver != driver:
            raise errno_error(E.ENODEV)
        self.unregister_bdev(b)
        return True

    def _check_md(self, p):
        if p.get("md_size", 0) not in (0, 8, 16, 32, 64, 128):
            raise errno_error(E.EINVAL)
        if p.get("dif_type", 0) not in (0, 1, 2, 3) or (p.get("dif_type") and not p.get("md_size")):
            raise errno_error(E.EINVAL)
        if p.get("physical_block_size", 0) % 512:
            raise errno_error(E.EINVAL)

    def rpc_bdev_malloc_create(self, p):
        """01 id 2, 04 id 1/4/33; without a name it takes Malloc<N> from its own counter
        (R gotcha 4)."""
        if p["num_blocks"] == 0 or p["block_size"] % 512 or p["block_size"] == 0:
            raise errno_error(E.EINVAL)                 # 04 id 33: block_size 1000 -> -22
        self._check_md(p)
        if p.get("numa_id", -1) not in (-1, 0):
            raise errno_error(E.EINVAL)
        name = p.get("name")
        if name is None:
            name = "Malloc%d" % self.malloc_count
            self.malloc_count += 1
        md = p.get("md_size", 0)
        interleave = p.get("md_interleave", False)
        b = Bdev(name, "malloc", "Malloc disk", p["block_size"] + (md if interleave else 0),
                 p["num_blocks"], uuid=p.get("uuid"), numa_id=p.get("numa_id", -1),
                 io={"read", "write", "flush", "reset", "unmap", "write_zeroes", "zcopy",
                     "abort", "compare", "copy"},
                 phys_block_size=p.get("physical_block_size", 0), md_size=md,
                 md_interleave=interleave, dif_type=p.get("dif_type", 0),
                 dif_is_head_of_md=p.get("dif_is_head_of_md", False),
                 dif_pi_format=p.get("dif_pi_format", 0))
        self.register_bdev(b)                           # 04 id 4: duplicate -> -17
        return name

    def rpc_bdev_malloc_delete(self, p):
        return self._delete(p["name"], "malloc")

    def rpc_bdev_null_create(self, p):
        """01 id 1, 03 id 2, 05 id 1; duplicate (even a malloc's name) -> -17 (04 id 5)."""
        self._check_md(p)
        if p["block_size"] % 512 or p["block_size"] == 0 or p["num_blocks"] == 0:
            raise errno_error(E.EINVAL)
        md = p.get("md_size", 0)
        b = Bdev(p["name"], "null", "Null disk", p["block_size"] + md, p["num_blocks"],
                 uuid=p.get("uuid"), io={"read", "write", "write_zeroes", "reset", "abort"},
                 preferred=tuple(p.get(k, 0) for k in (
                     "preferred_write_alignment", "preferred_write_granularity",
                     "optimal_write_size", "preferred_unmap_alignment",
                     "preferred_unmap_granularity")),
                 phys_block_size=p.get("physical_block_size", 0), md_size=md,
                 md_interleave=bool(md), dif_type=p.get("dif_type", 0),
                 dif_is_head_of_md=p.get("dif_is_head_of_md", False),
                 dif_pi_format=p.get("dif_pi_format", 0))
        self.register_bdev(b)
        return b.name

    def rpc_bdev_null_delete(self, p):
        return self._delete(p["name"], "null")

    def rpc_bdev_null_resize(self, p):
        """`new_size` in MiB, grow only (R gotcha 6); unknown -> -19 (04 id 17)."""
        b = self.find_bdev(p["name"])
        if b is None:
            raise errno_error(E.ENODEV)
        if b.driver != "null" or p["new_size"] < b.block_size * b.num_blocks // MiB:
            raise errno_error(E.EINVAL)
        self.resize_bdev(b, p["new_size"] * MiB // b.block_size)
        return True

    def rpc_bdev_aio_create(self, p):
        """src bdev_aio.c: open() errors come back as -errno (ENOENT -> -2 "No such file or
        directory"); a regular file needs block_size (it cannot be detected)."""
        readonly = p.get("readonly", False)
        try:
            fd = os.open(p["filename"], os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as e:
            raise errno_error(e.errno)
        try:
            st = os.fstat(fd)
            if stat.S_ISBLK(st.st_mode):
                size = os.lseek(fd, 0, os.SEEK_END)
                buf = fcntl.ioctl(fd, 0x1268, struct.pack("I", 0))       # BLKSSZGET
                detected = struct.unpack("I", buf)[0]
            else:
                size = st.st_size
                detected = 0
        finally:
            os.close(fd)
        if p.get("nowait") and not stat.S_ISBLK(st.st_mode):
            raise errno_error(E.EINVAL)
        bs = p.get("block_size", 0)
        if bs == 0:
            if detected == 0:
                raise errno_error(E.EINVAL)
            bs = detected
        elif bs < detected:
            raise errno_error(E.EINVAL)
        if bs < 512 or not pow2(bs) or size % bs:
            raise errno_error(E.EINVAL)
        io = {"read", "write", "flush", "reset"}
        if p.get("fallocate"):
            io |= {"unmap", "write_zeroes"}
        b = Bdev(p["name"], "aio", "AIO disk", bs, size // bs, uuid=p.get("uuid"), io=io)
        b.aio = {"filename": p["filename"], "block_size_override": "block_size" in p
                 and p["block_size"] != 0, "readonly": readonly,
                 "fallocate": p.get("fallocate", False), "nowait": p.get("nowait", False)}
        b.specific = lambda: {"aio": dict(b.aio)}
        self.register_bdev(b)
        return b.name

    def rpc_bdev_aio_delete(self, p):
        return self._delete(p["name"], "aio")

    def rpc_bdev_aio_rescan(self, p):
        b = self.find_bdev(p["name"])
        if b is None or b.driver != "aio":
            raise errno_error(E.ENODEV)
        try:
            size = os.stat(b.aio["filename"]).st_size
        except OSError as e:
            raise errno_error(e.errno)
        self.resize_bdev(b, size // b.block_size)
        return True

    # --- lvol ----------------------------------------------------------------------------------

    def rpc_bdev_lvol_create_lvstore(self, p):
        """01 id 41 returns the lvstore uuid; a claimed base -> -1 (04 id 11)."""
        cluster = p.get("cluster_sz", 4 * MiB)
        if p.get("clear_method") is not None and p["clear_method"].lower() not in (
                "none", "unmap", "write_zeroes"):
            raise RpcError(-E.EINVAL, "Invalid clear_method parameter")
        if not pow2(cluster) or cluster < 8192 or len(p["lvs_name"]) >= 64 or not p["lvs_name"]:
            raise errno_error(E.EINVAL)
        if p["lvs_name"] in self.lvstores:
            raise errno_error(E.EEXIST)
        base = self.find_bdev(p["bdev_name"])
        if base is None:
            raise errno_error(E.ENODEV)
        lvs = Lvstore(p["lvs_name"], base, cluster)
        self.claim(base, "read_many_write_one", lvs)     # -EPERM when claimed
        base.descs.append(Desc("lvstore", lvs))
        self.lvstores[lvs.name] = lvs
        return lvs.uuid

    def _lvstore(self, uuid, name):
        if (uuid is None) == (name is None):
            raise errno_error(E.EINVAL)
        for lvs in self.lvstores.values():
            if lvs.uuid == uuid or lvs.name == name:
                return lvs
        raise errno_error(E.ENODEV)

    def rpc_bdev_lvol_create(self, p):
        """01 id 42: returns the lvol bdev's name, which is its uuid; it is reachable as
        "lvs/lvol" too."""
        lvs = self._lvstore(p.get("uuid"), p.get("lvs_name"))
        if p.get("clear_method") is not None and p["clear_method"].lower() not in (
                "none", "unmap", "write_zeroes"):
            raise RpcError(-E.EINVAL, "Invalid clean_method option")
        name = p["lvol_name"]
        if not name or len(name) >= 64:
            raise errno_error(E.EINVAL)
        if name in lvs.lvols:
            raise errno_error(E.EEXIST)
        clusters = -(-p["size_in_mib"] * MiB // lvs.cluster_size)
        thin = p.get("thin_provision", False)
        if not thin and clusters > lvs.total_clusters - lvs.used_clusters():
            raise errno_error(E.ENOSPC, INVALID_PARAMS)
        base = lvs.base
        uuid = new_uuid()
        b = Bdev(uuid, "lvol", "Logical Volume", base.block_size,
                 clusters * lvs.cluster_size // base.block_size, uuid=uuid,
                 io={"read", "write", "unmap", "write_zeroes", "reset", "seek_data",
                     "seek_hole"},
                 numa_id=base.numa_id, domains=base.domains,
                 phys_block_size=base.phys_block_size)
        b.lvol = {"lvs": lvs, "name": name, "clusters": clusters, "thin": thin}
        b.specific = lambda: {"lvol": {
            "lvol_store_uuid": lvs.uuid, "base_bdev": lvs.base.name, "thin_provision": thin,
            "num_allocated_clusters": 0 if thin else b.lvol["clusters"], "snapshot": False,
            "clone": False, "esnap_clone": False}}
        self.register_bdev(b, ["%s/%s" % (lvs.name, name)])
        lvs.lvols[name] = b
        return uuid

    def rpc_bdev_lvol_resize(self, p):
        """01 id 46/49: growing propagates; shrinking a claimed lvol -> -32602 "Device or
        resource busy" and nothing changes."""
        b = self.find_bdev(p["name"])
        if b is None or b.driver != "lvol":
            raise errno_error(E.ENODEV)
        lvs = b.lvol["lvs"]
        clusters = -(-p["size_in_mib"] * MiB // lvs.cluster_size)
        if not b.lvol["thin"] and clusters - b.lvol["clusters"] > \
                lvs.total_clusters - lvs.used_clusters():
            raise errno_error(E.ENOSPC, INVALID_PARAMS)
        try:
            self.resize_bdev(b, clusters * lvs.cluster_size // b.block_size)
        except RpcError as e:
            raise RpcError(INVALID_PARAMS, e.message)
        b.lvol["clusters"] = clusters
        return True

    # --- bdev_nvme (initiator) -----------------------------------------------------------------

    def rpc_bdev_nvme_attach_controller(self, p):
        """01 id 7/15, 03 id 1, 04 id 24-27: one bdev per namespace, `<name>n<nsid>`;
        nothing listening / wrong subnqn -> -5; same name and path -> -114. The controller
        exists once the attach completes (attach latency)."""
        name = p["name"]
        if p.get("max_bdevs", 128) == 0:
            raise RpcError(-E.EINVAL, "max_bdevs cannot be zero")
        if len(p["trtype"]) > 32:
            raise RpcError(-E.EINVAL, "Failed to parse trtype: %s" % p["trtype"])
        trtype = trtype_canon(p["trtype"]) or p["trtype"].upper()
        for key, limit in (("traddr", 256), ("trsvcid", 33), ("subnqn", 224),
                           ("hostnqn", 224), ("hostaddr", 256), ("hostsvcid", 33)):
            if key in p and len(p[key].encode()) >= limit:
                raise RpcError(-E.EINVAL, "%s too long: %s" % (key, p[key]))
        adrfam = None
        if "adrfam" in p:
            adrfam = adrfam_canon(p["adrfam"])
            if adrfam is None:
                raise RpcError(-E.EINVAL, "Failed to parse adrfam: %s" % p["adrfam"])
        trid = {"trtype": trtype}
        if adrfam:
            trid["adrfam"] = adrfam
        if p["traddr"]:
            trid["traddr"] = p["traddr"]
        if p.get("trsvcid"):
            trid["trsvcid"] = p["trsvcid"]
        if p.get("subnqn"):
            trid["subnqn"] = p["subnqn"]
        hostnqn = p.get("hostnqn", self.hostnqn)
        self._check_existing_ctrlr(p, trid, hostnqn)
        if not 1 <= p.get("num_io_queues", 1024) <= 65536:
            raise RpcError(-E.EINVAL, "num_io_queues out of bounds, min: 1 max: 65536")
        loss = p.get("ctrlr_loss_timeout_sec", 0)
        delay = p.get("reconnect_delay_sec", 0)
        fast = p.get("fast_io_fail_timeout_sec", 0)
        if loss < -1 or (loss == 0 and (delay or fast)) or (loss != 0 and delay == 0) or \
                (loss > 0 and (delay > loss or fast > loss)) or (fast and fast < delay):
            raise errno_error(E.EINVAL)
        ctrl = NvmeCtrlr(name, trid, hostnqn, p)
        ctrl.host = {"addr": p.get("hostaddr", ""), "svcid": p.get("hostsvcid", "")}
        if self.fabric.resolve(ctrl) is None:
            raise errno_error(E.EIO)                    # fails fast (04: 8 ms)

        def finish():
            self._check_existing_ctrlr(p, trid, hostnqn)
            if self.fabric.connect(self, ctrl) is None:
                raise errno_error(E.EIO)
            self.ctrlrs[name] = ctrl
            target, subsys, _ = ctrl.target
            for nsid in sorted(subsys.namespaces):
                self.remote_ns_changed(ctrl, nsid)
            names = [ctrl.ns_bdevs[n] for n in sorted(ctrl.ns_bdevs)]
            return names[:p.get("max_bdevs", 128)]
        return Later(self.fabric.attach_latency(), finish)

    def _check_existing_ctrlr(self, p, trid, hostnqn):
        """src bdev_nvme_rpc.c: a second attach under an existing name is a multipath add
        unless it is the same network path (-114, 04 id 27) or a different subsystem."""
        ctrl = self.ctrlrs.get(p["name"])
        if ctrl is None:
            return
        name = p["name"]
        if p.get("multipath") == "disable":
            raise RpcError(-E.EALREADY, "A controller named %s already exists and multipath "
                                        "is disabled" % name)
        if ctrl.trid.get("traddr", "") == trid.get("traddr", "") and \
                ctrl.trid.get("trsvcid", "") == trid.get("trsvcid", "") and \
                ctrl.host["addr"] == p.get("hostaddr", "") and \
                ctrl.host["svcid"] == p.get("hostsvcid", ""):
            raise RpcError(-E.EALREADY, "A controller named %s already exists with the "
                                        "specified network path" % name)
        if ctrl.trid.get("subnqn", "") != trid.get("subnqn", ""):
            raise RpcError(-E.EINVAL, "A controller named %s already exists, but uses a "
                                      "different subnqn (%s)" % (name, ctrl.trid.get("subnqn", "")))
        if ctrl.hostnqn != hostnqn:
            raise RpcError(-E.EINVAL, "A controller named %s already exists, but uses a "
                                      "different hostnqn (%s)" % (name, ctrl.hostnqn))
        if p.get("prchk_reftag") or p.get("prchk_guard"):
            raise RpcError(-E.EINVAL, "A controller named %s already exists. To add a path, "
                                      "do not specify PI options." % name)
        raise RpcError(-E.EINVAL, "multipath is not modelled by the SPDK double")

    def rpc_bdev_nvme_detach_controller(self, p):
        """01 id 51/52 (exported bdevs lose their namespace); unknown -> -19 (04 id 23)."""
        ctrl = self.ctrlrs.get(p["name"])
        if ctrl is None:
            raise errno_error(E.ENODEV)
        for key in ("trtype", "adrfam"):
            if key in p:
                canon = (trtype_canon if key == "trtype" else adrfam_canon)(p[key])
                if canon is None:
                    raise RpcError(-E.EINVAL, "Failed to parse %s: %s" % (key, p[key]))
                if ctrl.trid.get(key) != canon:
                    raise errno_error(E.ENODEV)
        for key in ("traddr", "trsvcid", "subnqn"):
            if key in p and ctrl.trid.get(key, "") != p[key]:
                raise errno_error(E.ENODEV)
        for key, field in (("hostaddr", "addr"), ("hostsvcid", "svcid")):
            if key in p and ctrl.host[field] != p[key]:
                raise errno_error(E.ENODEV)
        self.delete_ctrlr(ctrl)
        return True

    def rpc_bdev_nvme_get_controllers(self, p):
        """01 id 8/54, 03 id 13; unknown name -> -22 "Controller X does not exist" (src)."""
        p = p or {}
        if "name" in p:
            ctrl = self.ctrlrs.get(p["name"])
            if ctrl is None:
                raise RpcError(-E.EINVAL, "Controller %s does not exist" % p["name"])
            ctrls = [ctrl]
        else:
            ctrls = list(self.ctrlrs.values())
        return [{"name": c.name, "ctrlrs": [{
            "state": c.state, "trid": dict(c.trid), "cntlid": c.cntlid,
            "host": {"nqn": c.hostnqn, "addr": c.host["addr"], "svcid": c.host["svcid"],
                     "no_shn_notification": False}}]} for c in ctrls]

    # --- bdev_iscsi (initiator) ----------------------------------------------------------------

    def rpc_bdev_iscsi_create(self, p):
        """05 id 5; a login failure (portal, target, CHAP) -> -32602 "iSCSI error
        (251658241)." (05 id 9, 04 id 39); a taken name -> -32602 "File exists", after the
        login (05 id 8, R gotcha 4)."""
        if not p["initiator_iqn"]:
            raise errno_error(E.EINVAL)
        m = ISCSI_URL.match(p["url"])
        if m is None:
            raise errno_error(E.EINVAL)
        host = m.group("host").strip("[]")
        port = m.group("port") or "3260"
        found = self.fabric.iscsi_login(p["initiator_iqn"], host, port, m.group("iqn"),
                                        int(m.group("lun")), m.group("user"), m.group("secret"))
        if found is None:
            raise RpcError(INVALID_PARAMS, ISCSI_LOGIN_ERROR)
        target, node, lun_id, lun = found
        io = {"read", "write", "flush", "reset"}
        if lun.supports("unmap"):
            io.add("unmap")
        b = Bdev(p["name"], "iscsi", "iSCSI LUN", lun.block_size, lun.num_blocks, io=io)
        b.iscsi = (target, node, lun_id, lun)
        b.specific = lambda: {"iscsi": {"initiator_name": p["initiator_iqn"], "url": p["url"]}}
        try:
            self.register_bdev(b)
        except RpcError as e:
            raise RpcError(INVALID_PARAMS, e.message)
        return b.name

    def rpc_bdev_iscsi_delete(self, p):
        return self._delete(p["name"], "iscsi")

    def iscsi_io(self, name=None):
        """I/O on iSCSI bdevs makes them notice a resized LUN (R gotcha 8, 06)."""
        changed = []
        for b in list(self.bdevs.values()):
            if b.driver != "iscsi" or (name is not None and b.name != name):
                continue
            target, node, lun_id, lun = b.iscsi
            if node.get("luns", {}).get(lun_id) is lun and lun.num_blocks != b.num_blocks:
                try:
                    self.resize_bdev(b, lun.num_blocks)
                    changed.append(b.name)
                except RpcError:
                    pass
        return changed

    # --- bdev_rbd ------------------------------------------------------------------------------

    def rpc_bdev_rbd_register_cluster(self, p):
        """Connects to a Ceph cluster the double knows (double_ceph_create); anything else,
        or a taken name -> -1 "Operation not permitted" (04 id 38)."""
        name = p["name"]
        if name in self.rbd_clusters:
            raise errno_error(E.EPERM)
        conf = dict(p.get("config_param") or {})
        for key, path in (("config_file", p.get("config_file")), ("key_file", p.get("key_file"))):
            if path is not None:
                try:
                    with open(path) as f:
                        text = f.read()
                except OSError:
                    raise errno_error(E.EPERM)
                for k, v in re.findall(r"^\s*([A-Za-z_ ]+?)\s*=\s*(\S+)", text, re.M):
                    conf.setdefault(k.strip().replace(" ", "_"), v)
        if p.get("core_mask") is not None and parse_cpumask(p["core_mask"]) is None:
            raise errno_error(E.EPERM)
        user = p.get("user_id", "admin")
        cluster = self.fabric.ceph_connect(conf.get("mon_host"), user, conf.get("key"))
        if cluster is None:
            raise errno_error(E.EPERM)
        entry = {"cluster_name": name}
        for key in ("user_id", "config_param", "config_file", "key_file", "core_mask"):
            if p.get(key) is not None:
                entry[key] = p[key]
        self.rbd_clusters[name] = {"entry": entry, "ceph": cluster, "ref": 0}
        return name

    def rpc_bdev_rbd_unregister_cluster(self, p):
        c = self.rbd_clusters.get(p["name"])
        if c is None or c["ref"]:
            raise errno_error(E.EPERM)
        del self.rbd_clusters[p["name"]]
        return True

    def rpc_bdev_rbd_get_clusters_info(self, p):
        p = p or {}
        if not self.rbd_clusters:
            raise errno_error(E.ENOENT)
        if "name" in p:
            c = self.rbd_clusters.get(p["name"])
            if c is None:
                raise errno_error(E.ENOENT)
            return dict(c["entry"])
        return [dict(c["entry"]) for c in self.rbd_clusters.values()]

    def rpc_bdev_rbd_create(self, p):
        """Needs a registered cluster (or a `config` reaching one) and an existing image;
        otherwise -1 (04 id 37). Without a name it is Ceph<N>."""
        if p["block_size"] == 0:
            raise errno_error(E.EINVAL)
        cname = p.get("cluster_name")
        if cname is not None:
            reg = self.rbd_clusters.get(cname)
            if reg is None:
                raise errno_error(E.EPERM)
            cluster = reg["ceph"]
        else:
            conf = p.get("config") or {}
            cluster = self.fabric.ceph_connect(conf.get("mon_host"), p.get("user_id", "admin"),
                                               conf.get("key"))
            reg = None
        image = cluster and cluster["pools"].get(p["pool_name"], {}).get(p["rbd_name"])
        if image is None:
            raise errno_error(E.EPERM)
        name = p.get("name")
        if name is None:
            name = "Ceph%d" % self.rbd_count
        self.rbd_count += 1
        ro = p.get("read_only", False)
        io = {"read", "unmap", "flush", "reset"} | (set() if ro else {"write", "write_zeroes"})
        b = Bdev(name, "rbd", "Ceph Rbd Disk", p["block_size"],
                 image["size"] // p["block_size"], uuid=p.get("uuid"), io=io)
        b.rbd = {"image": image, "cluster": reg}
        info = {"pool_name": p["pool_name"], "rbd_name": p["rbd_name"]}
        if reg is not None:
            for key in ("user_id", "config_param", "config_file", "key_file"):
                if key in reg["entry"]:
                    info[key] = reg["entry"][key]
        else:
            if "user_id" in p:
                info["user_id"] = p["user_id"]
            if p.get("config"):
                info["config"] = dict(p["config"])
        b.specific = lambda: {"rbd": info}
        self.register_bdev(b)
        if reg is not None:
            reg["ref"] += 1
        return name

    def rpc_bdev_rbd_delete(self, p):
        b = self.find_bdev(p["name"])
        if b is None or b.driver != "rbd":
            raise errno_error(E.ENODEV)
        self.unregister_bdev(b)
        if b.rbd["cluster"] is not None:
            b.rbd["cluster"]["ref"] -= 1
        return True

    def rpc_bdev_rbd_resize(self, p):
        """`new_size` in MiB, grow only (-22); the image grows and every bdev on it sees
        bdev_resize (src: rbd update watch)."""
        b = self.find_bdev(p["name"])
        if b is None:
            raise errno_error(E.ENODEV)
        if b.driver != "rbd" or b.block_size * b.num_blocks // MiB > p["new_size"]:
            raise errno_error(E.EINVAL)
        self.resize_bdev(b, p["new_size"] * MiB // b.block_size)
        b.rbd["image"]["size"] = p["new_size"] * MiB
        self.fabric.ceph_image_resized(b.rbd["image"])
        return True

    # --- nvmf (target) -------------------------------------------------------------------------

    TRANSPORT_DEFAULTS = {
        "TCP": dict(max_queue_depth=128, max_io_qpairs_per_ctrlr=127, in_capsule_data_size=4096,
                    max_io_size=131072, max_aq_depth=128, iobuf_small_cache_size=4294967295,
                    iobuf_large_cache_size=4294967295, dif_insert_or_strip=False,
                    zcopy=False, c2h_success=True, sock_priority=0, abort_timeout_sec=1),
        "RDMA": dict(max_queue_depth=128, max_io_qpairs_per_ctrlr=127,
                     in_capsule_data_size=4096, max_io_size=131072, max_aq_depth=128,
                     iobuf_small_cache_size=4294967295, iobuf_large_cache_size=4294967295,
                     dif_insert_or_strip=False, zcopy=False, max_srq_depth=4096,
                     no_srq=False, acceptor_backlog=100, no_wr_batching=False,
                     abort_timeout_sec=1),
        "VFIOUSER": dict(max_queue_depth=256, max_io_qpairs_per_ctrlr=127,
                         in_capsule_data_size=0, max_io_size=131072, max_aq_depth=32,
                         iobuf_small_cache_size=0, iobuf_large_cache_size=0,
                         dif_insert_or_strip=False, zcopy=False, abort_timeout_sec=0),
    }
    TRANSPORT_SPECIFIC = {
        "TCP": {"c2h_success": "bool", "sock_priority": "u32", "control_msg_num": "u32"},
        "RDMA": {"max_srq_depth": "u32", "no_srq": "bool", "num_cqe": "i32",
                 "acceptor_backlog": "i32", "no_wr_batching": "bool"},
        "VFIOUSER": {"disable_mappable_bar0": "bool", "disable_adaptive_irq": "bool",
                     "disable_shadow_doorbells": "bool"},
    }

    def rpc_nvmf_create_transport(self, p, raw):
        """01 id 3/10, 02 id 6; "FOO" -> -32602 "Invalid transport type 'FOO'" (04 id 36);
        again -> -32603 "Transport type 'TCP' already exists" (04 id 7). Decoded relaxed:
        each transport reads its own extra keys (src)."""
        given = p["trtype"]
        canon = {"tcp": "TCP", "rdma": "RDMA", "vfiouser": "VFIOUSER"}.get(given.lower())
        if canon is None:
            raise RpcError(INVALID_PARAMS, "Invalid transport type '%s'" % given)
        if canon in self.transports:
            raise RpcError(INTERNAL_ERROR, "Transport type '%s' already exists" % given)
        opts = dict(self.TRANSPORT_DEFAULTS[canon])
        for key, t in self.TRANSPORT_SPECIFIC[canon].items():
            if key in raw:
                try:
                    opts[key] = decode_value(t, raw[key])
                except DecodeError:
                    raise RpcError(INTERNAL_ERROR, "Transport type '%s' create failed" % given)
        for key in ("max_queue_depth", "in_capsule_data_size", "max_io_size", "max_aq_depth",
                    "iobuf_small_cache_size", "iobuf_large_cache_size", "dif_insert_or_strip",
                    "zcopy", "abort_timeout_sec", "ack_timeout", "data_wr_pool_size",
                    "disable_command_passthru", "kas", "min_kato"):
            if key in p:
                opts[key] = p[key]
        if "max_io_qpairs_per_ctrlr" in p:
            opts["max_io_qpairs_per_ctrlr"] = p["max_io_qpairs_per_ctrlr"]
        self.transports[canon] = opts
        return True

    def rpc_nvmf_get_transports(self, p):
        p = p or {}
        if "trtype" in p:
            canon = {"tcp": "TCP", "rdma": "RDMA", "vfiouser": "VFIOUSER"}.get(p["trtype"].lower())
            if canon not in self.transports:
                raise errno_error(E.ENODEV)
            names = [canon]
        else:
            names = list(self.transports)
        out = []
        for name in names:
            o = self.transports[name]
            t = {"trtype": name}
            for key in ("max_queue_depth", "max_io_qpairs_per_ctrlr", "in_capsule_data_size",
                        "max_io_size", "max_aq_depth", "iobuf_small_cache_size",
                        "iobuf_large_cache_size", "dif_insert_or_strip", "zcopy"):
                t[key] = o[key]
            for key in self.TRANSPORT_SPECIFIC[name]:
                if key in o:
                    t[key] = o[key]
            t.update(abort_timeout_sec=o["abort_timeout_sec"], ack_timeout=o.get("ack_timeout", 0),
                     data_wr_pool_size=o.get("data_wr_pool_size", 0),
                     disable_command_passthru=o.get("disable_command_passthru", False),
                     kas=o.get("kas", 100), min_kato=o.get("min_kato", 10000))
            out.append(t)
        return out

    def rpc_nvmf_create_subsystem(self, p):
        """01 id 4/11, 02 id 8, 04 id 2/6/22: defaults serial of 20 zeros, model "SPDK bdev
        Controller", 32 namespaces; a taken or invalid NQN -> -32603 "Unable to create
        subsystem <nqn>"."""
        nqn = p["nqn"]
        if nqn in self.subsystems or not nqn_is_valid(nqn):
            raise RpcError(INTERNAL_ERROR, "Unable to create subsystem %s" % nqn)
        lo, hi = p.get("min_cntlid", 1), p.get("max_cntlid", 0xFFEF)
        if not 1 <= lo <= hi <= 0xFFEF:
            raise RpcError(INVALID_PARAMS, "Invalid cntlid range [%d-%d]" % (lo, hi))
        s = Subsystem(nqn)
        s.serial = p.get("serial_number", s.serial)
        s.model = p.get("model_number", s.model)
        s.max_namespaces = p.get("max_namespaces", s.max_namespaces)
        s.allow_any_host = p.get("allow_any_host", False)
        s.ana_reporting = p.get("ana_reporting", False)
        s.passthrough = p.get("passthrough", False)
        s.min_cntlid, s.max_cntlid = lo, hi
        s.next_cntlid = lo
        s.dmrsl = p.get("dmrsl", s.dmrsl)
        s.wzsl = p.get("wzsl", s.wzsl)
        self.subsystems[nqn] = s
        return True

    def _subsystem(self, nqn):
        s = self.subsystems.get(nqn)
        if s is None:
            raise invalid_params()
        return s

    def rpc_nvmf_delete_subsystem(self, p):
        """Unknown -> -32602 "Invalid parameters" (04 id 20). Its hosts lose the controller."""
        s = self._subsystem(p["nqn"])
        if s.discovery:
            raise invalid_params()
        self.delete_subsystem(s)
        return True

    def rpc_nvmf_get_subsystems(self, p):
        """01 id 14, 02 id 11, 04 id 13; unknown -> -19 (04 id 19). Unfiltered: sorted by
        NQN (src: an RB tree), the discovery subsystem included."""
        p = p or {}
        if "nqn" in p:
            s = self.subsystems.get(p["nqn"])
            if s is None:
                raise errno_error(E.ENODEV)
            return [s.to_json()]
        return [self.subsystems[n].to_json() for n in sorted(self.subsystems)]

    def _listen_trid(self, addr):
        """rpc_listen_address_to_trid: canonical trtype, adrfam (IPv4 by default for TCP
        and RDMA), traddr, trsvcid."""
        trtype = trtype_canon(addr["trtype"]) or addr["trtype"].upper()
        if len(addr["trtype"]) > 32:
            raise invalid_params()
        adrfam = "unknown"
        if "adrfam" in addr:
            adrfam = adrfam_canon(addr["adrfam"])
            if adrfam is None:
                raise invalid_params()
        elif trtype in ("TCP", "RDMA"):
            adrfam = "IPv4"
        if len(addr["traddr"].encode()) > 255 or len(addr.get("trsvcid", "").encode()) > 32:
            raise invalid_params()
        return {"trtype": trtype, "adrfam": adrfam, "traddr": addr["traddr"],
                "trsvcid": addr.get("trsvcid", "")}

    def rpc_nvmf_subsystem_add_listener(self, p):
        """01 id 6/13, 02 id 10 (VFIOUSER: traddr is a directory, no adrfam, makes
        `<traddr>/cntrl`); a duplicate -> -32602 (04 id 8). Any failure is -32602
        "Invalid parameters" (src)."""
        s = self._subsystem(p["nqn"])
        trid = self._listen_trid(p["listen_address"])
        if trid in s.listeners:
            raise invalid_params()
        if trid["trtype"] not in self.transports:
            raise invalid_params()
        if p.get("secure_channel") and s.allow_any_host:
            raise RpcError(INTERNAL_ERROR, "Cannot establish secure channel, when "
                                           "'allow_any_host' is set")
        if trid["trtype"] in ("TCP", "RDMA"):
            try:
                ip = ipaddress.ip_address(trid["traddr"])
            except ValueError:
                raise invalid_params()
            if (ip.version == 4) != (trid["adrfam"] == "IPv4") or \
                    not trid["trsvcid"].isdigit() or int(trid["trsvcid"]) > 65535:
                raise invalid_params()
        elif trid["trtype"] == "VFIOUSER":
            if "adrfam" in p["listen_address"] or not os.path.isdir(trid["traddr"]):
                raise invalid_params()                 # R gotcha 5
        else:
            raise invalid_params()
        if not self.fabric.claim_address(self, s, trid):
            raise invalid_params()
        if trid["trtype"] == "VFIOUSER":
            path = os.path.join(trid["traddr"], "cntrl")
            try:
                if os.path.exists(path):
                    raise OSError(E.EADDRINUSE, "stale")   # R gotcha 5: a stale cntrl
                self.vfu_listeners[path] = make_unix_socket(path)
            except OSError:
                self.fabric.release_address(self, trid)
                raise invalid_params()
        s.listeners.append(trid)
        return True

    def rpc_nvmf_subsystem_remove_listener(self, p):
        s = self._subsystem(p["nqn"])
        trid = self._listen_trid(p["listen_address"])
        if trid["trtype"] not in self.transports or trid not in s.listeners:
            raise invalid_params()
        self.drop_listener(s, trid)
        return True

    def rpc_nvmf_subsystem_add_ns(self, p):
        """01 id 5/12/27/43, 02 id 9, 03 id 3, 07 id 2: returns the nsid (next free one when
        omitted); uuid and nguid default to the bdev's uuid. Unknown subsystem or bdev,
        taken nsid, claimed bdev -> -32602 "Invalid parameters" (04 id 9/10/15/18)."""
        s = self._subsystem(p["nqn"])
        ns = p["namespace"]
        return self.add_namespace(s, ns["bdev_name"], ns.get("nsid", 0), ns.get("uuid"),
                                  ns.get("nguid"), ns.get("eui64"), ns.get("anagrpid", 0))

    def rpc_nvmf_subsystem_remove_ns(self, p):
        """01 id 25/30; unknown nsid -> -32602 (04 id 21)."""
        s = self._subsystem(p["nqn"])
        if p["nsid"] not in s.namespaces:
            raise invalid_params()
        self.remove_namespace(s, p["nsid"])
        return True

    def rpc_nvmf_subsystem_add_host(self, p, raw):
        """src nvmf_rpc.c rpc_nvmf_subsystem_add_host, subsystem.c
        spdk_nvmf_subsystem_add_host_ext, tcp.c nvmf_tcp_subsystem_add_host. Decoded
        relaxed; unknown subsystem -> -32602 "Invalid parameters". The double has no
        keyring, so every key name is one SPDK would not find: a dhchap_key or
        dhchap_ctrlr_key -> -32602 "Invalid parameters" (looked up before the host is
        added); `psk` is not in the RPC's decoder, only the TCP transport reads it (from
        the raw params): with a TCP transport any psk (an unknown key, or not a string)
        fails the add -> -32603 "Internal error", without one it is ignored. The other
        add_host_ext failures are -32603 "Internal error" too: a host NQN that
        nvmf_nqn_is_valid refuses, a host already in the list (-EINVAL: neither kept as
        success nor updated; keys change with nvmf_subsystem_set_keys, not modelled). A
        new host goes to the head of the list (TAILQ_INSERT_HEAD), so nvmf_get_subsystems
        shows the newest first."""
        s = self._subsystem(p["nqn"])
        if "dhchap_key" in p or "dhchap_ctrlr_key" in p:
            raise invalid_params()
        host = p["host"]
        if not nqn_is_valid(host) or host in s.hosts:
            raise RpcError(INTERNAL_ERROR, "Internal error")
        if "psk" in raw and "TCP" in self.transports:
            raise RpcError(INTERNAL_ERROR, "Internal error")
        s.hosts.insert(0, host)
        return True

    def rpc_nvmf_subsystem_remove_host(self, p):
        """src nvmf_rpc.c rpc_nvmf_subsystem_remove_host, subsystem.c
        spdk_nvmf_subsystem_remove_host and spdk_nvmf_subsystem_disconnect_host: unknown
        subsystem -> -32602 "Invalid parameters"; a host not in the list -> -ENOENT ->
        -32603 "Internal error". New connects from the host are refused from then on, and
        its controllers on this subsystem are disconnected before the reply (the target
        waits up to timeout_ms for its qpairs to go; here they go at once, so the
        "Timeout reached during host removal" error never happens). That holds under
        allow_any_host too, where the host may connect again."""
        s = self._subsystem(p["nqn"])
        host = p["host"]
        if host not in s.hosts:
            raise RpcError(INTERNAL_ERROR, "Internal error")
        s.hosts.remove(host)
        self.disconnect_hosts(s, [c for c in s.conns if c.hostnqn == host])
        return True

    def rpc_nvmf_subsystem_get_controllers(self, p):
        """01 id 16: one entry per connected host controller."""
        s = self._subsystem(p["nqn"])
        return [{"cntlid": c.cntlid, "cntrltype": "io", "hostnqn": c.hostnqn,
                 "hostid": c.initiator.hostid, "num_io_qpairs": 1} for c in s.conns]

    def rpc_nvmf_subsystem_get_qpairs(self, p):
        """01 id 17: the admin qpair of each controller (qid 0) with both addresses."""
        s = self._subsystem(p["nqn"])
        out = []
        for c in s.conns:
            q = {"cntlid": c.cntlid, "qid": 0, "state": "enabled",
                 "thread": "nvmf_tgt_poll_group_000", "hostnqn": c.hostnqn,
                 "listen_address": dict(c.listener)}
            if c.listener["trtype"] in ("TCP", "RDMA"):
                q["peer_address"] = dict(c.listener, trsvcid=str(c.peer_port))
            out.append(q)
        return out

    # --- vhost / vfio-user frontends -------------------------------------------------------------

    def _check_cpumask(self, mask):
        if mask is None:
            return self.cpumask
        value = parse_cpumask(mask)
        app = int(self.cpumask, 16)
        if not value or value & ~app:
            raise errno_error(E.EINVAL, INVALID_PARAMS)
        return "0x%x" % value

    def rpc_vhost_create_blk_controller(self, p):
        """02 id 2: a socket `<dir>/<ctrlr>`; unknown bdev -> -32602 "No such device"
        (02 id 5). Decoded relaxed (src); every failure is -32602 + strerror."""
        name = p["ctrlr"]
        readonly = p.get("readonly", False)
        if p.get("transport", "vhost_user_blk") != "vhost_user_blk":
            raise errno_error(E.EINVAL, INVALID_PARAMS)
        v = VhostCtrlr(name, None, None, os.path.join(self.run_dir, name), readonly,
                       "vhost_user_blk")
        try:
            b, _ = self.open_bdev(p["dev_name"], not readonly, "vhost", v)
        except RpcError as e:
            raise RpcError(INVALID_PARAMS, e.message)
        try:
            v.cpumask = self._check_cpumask(p.get("cpumask"))
            if name in self.vhost or not name:
                raise errno_error(E.EEXIST if name else E.EINVAL, INVALID_PARAMS)
            if len(v.socket_path.encode()) > 107:
                raise errno_error(E.EINVAL, INVALID_PARAMS)
            if os.path.lexists(v.socket_path):
                if not stat.S_ISSOCK(os.lstat(v.socket_path).st_mode):
                    raise errno_error(E.EIO, INVALID_PARAMS)
                os.unlink(v.socket_path)
            try:
                v.sock = make_unix_socket(v.socket_path)
            except OSError:
                raise errno_error(E.EIO, INVALID_PARAMS)
        except RpcError:
            self.close_desc(b, v)
            raise
        v.bdev = b
        self.vhost[name] = v
        return True

    def rpc_vhost_delete_controller(self, p):
        v = self.vhost.get(p["ctrlr"])
        if v is None:
            raise errno_error(E.ENODEV, INVALID_PARAMS)
        close_unix_socket(v.sock, v.socket_path)
        if v.bdev is not None:
            self.close_desc(v.bdev, v)
        del self.vhost[v.name]
        return True

    def rpc_vhost_get_controllers(self, p):
        """02 id 3; sorted by name (src: an RB tree); unknown name -> -32603 "No such
        device"."""
        p = p or {}
        if "name" in p:
            if p["name"] not in self.vhost:
                raise errno_error(E.ENODEV, INTERNAL_ERROR)
            names = [p["name"]]
        else:
            names = sorted(self.vhost)
        out = []
        for n in names:
            v = self.vhost[n]
            out.append({"ctrlr": v.name, "cpumask": v.cpumask, "delay_base_us": 0,
                        "iops_threshold": 60000, "socket": v.socket_path, "sessions": [],
                        "backend_specific": {"block": {
                            "readonly": v.readonly, "bdev": v.bdev.name if v.bdev else None,
                            "transport": v.transport}}})
        return out

    def rpc_vfu_tgt_set_base_path(self, p):
        path = p["path"]
        if len(path) >= 4094:
            raise errno_error(E.EINVAL, INVALID_PARAMS)
        if path:
            self.vfu_base = path if path.endswith("/") else path + "/"
        return True

    def rpc_vfu_virtio_create_blk_endpoint(self, p):
        """02 id 14: makes `<base_path>/<name>`; failures are -32602 + strerror (src)."""
        name = p["name"]
        if name in self.vfu_endpoints:
            raise errno_error(E.EEXIST, INVALID_PARAMS)
        path = self.vfu_base + name
        ep = VfuEndpoint(name, None, path, None)
        self._check_cpumask(p.get("cpumask"))
        try:
            b, _ = self.open_bdev(p["bdev_name"], True, "vfu", ep)
        except RpcError as e:
            raise RpcError(INVALID_PARAMS, e.message)
        try:
            ep.sock = make_unix_socket(path)
        except OSError as e:
            self.close_desc(b, ep)
            raise errno_error(e.errno or E.EINVAL, INVALID_PARAMS)
        ep.bdev = b
        self.vfu_endpoints[name] = ep
        return True

    def rpc_vfu_virtio_delete_endpoint(self, p):
        ep = self.vfu_endpoints.pop(p["name"], None)
        if ep is None:
            raise errno_error(E.ENODEV, INVALID_PARAMS)
        close_unix_socket(ep.sock, ep.path)
        if ep.bdev is not None:
            self.close_desc(ep.bdev, ep)
        return True

    # --- iSCSI target --------------------------------------------------------------------------
    # 05 id 2-4; every failure is -32602 "Invalid parameters" (src iscsi_rpc.c).

    def rpc_iscsi_create_portal_group(self, p):
        tag = p["tag"]
        if tag <= 0 or tag in self.portal_groups:
            raise invalid_params()
        portals = []
        for portal in p["portals"]:
            port = portal["port"]
            if not port.isdigit() or int(port) > 65535:
                raise invalid_params()
            portals.append((portal["host"].strip("[]"), port))
        claimed = []
        for addr in portals:
            if not self.fabric.claim_portal(self, addr):
                for a in claimed:
                    self.fabric.release_portal(self, a)
                raise invalid_params()
            claimed.append(addr)
        self.portal_groups[tag] = portals
        return True

    def rpc_iscsi_create_initiator_group(self, p):
        tag = p["tag"]
        if tag <= 0 or tag in self.initiator_groups or not p["initiators"] or not p["netmasks"]:
            raise invalid_params()
        for name in p["initiators"]:
            n = name[1:] if name.startswith("!") else name
            if n.upper() != "ANY" and not n.lower().startswith(("iqn.", "eui.", "naa.")):
                raise invalid_params()
        for mask in p["netmasks"]:
            if mask.upper() != "ANY":
                try:
                    ipaddress.ip_network(mask.strip("[]"), strict=False)
                except ValueError:
                    raise invalid_params()
        self.initiator_groups[tag] = {"initiators": list(p["initiators"]),
                                      "netmasks": list(p["netmasks"])}
        return True

    def rpc_iscsi_create_target_node(self, p):
        """The target is `iqn.2016-06.io.spdk:<name>` unless the name is already an iqn/eui/
        naa name; CHAP through require_chap + chap_group (an auth group)."""
        name = p["name"]
        iqn = name if name.lower().startswith(("iqn.", "eui.", "naa.")) else \
            "%s:%s" % (ISCSI_NODEBASE, name)
        if iqn.lower() in (n.lower() for n in self.target_nodes):
            raise invalid_params()
        disable, require = p.get("disable_chap", False), p.get("require_chap", False)
        mutual, group = p.get("mutual_chap", False), p.get("chap_group", 0)
        if (disable and require) or (mutual and not require) or group < 0 \
                or p["queue_depth"] < 1 or not p["luns"]:
            raise invalid_params()
        for m in p["pg_ig_maps"]:
            if m["pg_tag"] not in self.portal_groups or m["ig_tag"] not in self.initiator_groups:
                raise invalid_params()
        node = {"iqn": iqn, "alias": p["alias_name"], "luns": {},
                "maps": [(m["pg_tag"], m["ig_tag"]) for m in p["pg_ig_maps"]],
                "disable_chap": disable, "require_chap": require, "chap_group": group}
        opened = []
        try:
            for lun in p["luns"]:
                lun_id = lun.get("lun_id", 0)
                if "bdev_name" not in lun or lun_id in node["luns"] or not 0 <= lun_id < 64:
                    raise invalid_params()
                owner = (node, lun_id)
                try:
                    b, _ = self.open_bdev(lun["bdev_name"], True, "iscsi_lun", owner)
                except RpcError:
                    raise invalid_params()
                opened.append((b, owner))
                node["luns"][lun_id] = b
        except RpcError:
            for b, owner in opened:
                self.close_desc(b, owner)
            raise
        self.target_nodes[iqn] = node
        return True

    def rpc_iscsi_create_auth_group(self, p):
        tag = p["tag"]
        if tag <= 0:
            raise invalid_params("Could not add auth group (%d), %s" % (tag, os.strerror(E.EINVAL)))
        if tag in self.auth_groups:
            raise invalid_params("Could not add auth group (%d), %s" % (tag, os.strerror(E.EEXIST)))
        secrets = []
        for s in p.get("secrets", []):
            err = None
            if any(s["user"] == x["user"] for x in secrets):
                err = E.EEXIST
            elif ("muser" in s) != ("msecret" in s) or len(s["user"]) > 255 or \
                    len(s["secret"]) > 255:
                err = E.EINVAL
            if err:
                raise invalid_params("Could not add secret to auth group (%d), %s"
                                     % (tag, os.strerror(err)))
            secrets.append(dict(s))
        self.auth_groups[tag] = secrets
        return True
