"""The objects an SPDK instance holds: bdevs, NVMe-oF subsystems and their namespaces and
hosts, NVMe controllers, vhost controllers, vfio-user endpoints, lvstores; and the
address and name rules they follow."""

import os
import random
import re
import socket
import uuid as uuidlib

from .wire import *  # noqa: F401,F403


# ------------------------------------------------------------------------------------------
# The model

def new_uuid():
    return str(uuidlib.uuid4())


def nguid_of(uuid):
    return uuid.replace("-", "").upper()


def pow2(n):
    return n > 0 and n & (n - 1) == 0


class Desc:
    """An open descriptor on a bdev: who uses it, whether for writing. Consumers are hot
    removed with the bdev (R gotcha 2, 04 id 12, 01 id 52)."""

    def __init__(self, kind, owner, write=True):
        self.kind = kind
        self.owner = owner
        self.write = write


class Bdev:
    """One bdev with the fields bdev_get_bdevs prints (src lib/bdev/bdev_rpc.c)."""

    def __init__(self, name, driver, product, block_size, num_blocks, uuid=None,
                 io=(), numa_id=None, domains=(), preferred=(0, 0, 0, 0, 0),
                 phys_block_size=0, md_size=0, md_interleave=False, dif_type=0,
                 dif_is_head_of_md=False, dif_pi_format=0):
        self.name = name
        self.driver = driver
        self.product = product
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.uuid = uuid or new_uuid()
        self.aliases = []
        self.io = set(io)
        self.numa_id = numa_id
        self.domains = list(domains)
        # write alignment, write granularity, optimal write, unmap alignment, unmap granularity
        self.preferred = preferred
        self.phys_block_size = phys_block_size or block_size
        self.md_size = md_size
        self.md_interleave = md_interleave
        self.dif_type = dif_type
        self.dif_is_head_of_md = dif_is_head_of_md
        self.dif_pi_format = dif_pi_format
        self.claim = None            # (claim type, owner)
        # QoS (src lib/bdev/bdev.c): rw I/Os per second, then rw, read and write bytes per
        # second; 0 = no limit.
        self.qos = [0, 0, 0, 0]
        self.descs = []
        self.specific = lambda: {}   # driver_specific

    def supports(self, io_type):
        if io_type == "write_zeroes" and "write" in self.io:
            return True              # src: the bdev layer emulates write zeroes
        return io_type in self.io

    def to_json(self):
        b = {"name": self.name, "aliases": list(self.aliases), "product_name": self.product,
             "block_size": self.block_size, "num_blocks": self.num_blocks}
        for key, value in zip(("preferred_write_alignment", "preferred_write_granularity",
                               "optimal_write_size", "preferred_unmap_alignment",
                               "preferred_unmap_granularity"), self.preferred):
            b[key] = value
        b["uuid"] = self.uuid
        if self.numa_id is not None:
            b["numa_id"] = self.numa_id
        if self.md_size:
            b["md_size"] = self.md_size
            b["md_interleave"] = self.md_interleave
            b["dif_type"] = self.dif_type
            if self.dif_type:
                b["dif_is_head_of_md"] = self.dif_is_head_of_md
                b["enabled_dif_check_types"] = {"reftag": self.dif_type in (1, 2),
                                                "apptag": False, "guard": True}
                b["dif_pi_format"] = self.dif_pi_format
        b["assigned_rate_limits"] = {
            "rw_ios_per_sec": self.qos[0], "rw_mbytes_per_sec": self.qos[1] >> 20,
            "r_mbytes_per_sec": self.qos[2] >> 20, "w_mbytes_per_sec": self.qos[3] >> 20}
        b["claimed"] = self.claim is not None
        if self.claim:
            b["claim_type"] = self.claim[0]
        b["zoned"] = False
        b["supported_io_types"] = {t: self.supports(t) for t in IO_TYPES}
        if self.domains:
            b["memory_domains"] = [{"dma_device_type": d} for d in self.domains]
        b["driver_specific"] = self.specific()
        return b


class Namespace:
    def __init__(self, nsid, bdev, uuid, nguid, eui64, anagrpid):
        self.nsid = nsid
        self.bdev = bdev
        self.uuid = uuid
        self.nguid = nguid
        self.eui64 = eui64
        self.anagrpid = anagrpid


class HostConn:
    """A host controller connected to a subsystem (nvmf_subsystem_get_controllers)."""

    def __init__(self, cntlid, hostnqn, listener, initiator, ctrl):
        self.cntlid = cntlid
        self.hostnqn = hostnqn
        self.listener = listener
        self.initiator = initiator
        self.ctrl = ctrl
        self.peer_port = random.randint(32768, 60999)


class Subsystem:
    def __init__(self, nqn, discovery=False):
        self.nqn = nqn
        self.discovery = discovery
        self.listeners = []          # canonical trid dicts
        self.allow_any_host = discovery
        self.hosts = []              # allowed host NQNs, newest first (src)
        self.serial = "00000000000000000000"
        self.model = "SPDK bdev Controller"
        self.max_namespaces = 0 if discovery else 32
        self.passthrough = False
        self.ana_reporting = False
        self.min_cntlid = 1
        self.max_cntlid = 0xFFEF
        self.dmrsl = 2097152
        self.wzsl = 12
        self.namespaces = {}
        self.conns = []
        self.next_cntlid = 1

    @property
    def max_nsid(self):
        if self.discovery:
            return 0
        return self.max_namespaces or 1024

    def to_json(self):
        s = {"nqn": self.nqn, "subtype": "Discovery" if self.discovery else "NVMe",
             "listen_addresses": [dict(t) for t in self.listeners],
             "allow_any_host": self.allow_any_host,
             "hosts": [{"nqn": h} for h in self.hosts]}
        if self.discovery:
            return s
        s["serial_number"] = self.serial
        s["model_number"] = self.model
        if self.max_namespaces:
            s["max_namespaces"] = self.max_namespaces
        s.update(passthrough=self.passthrough, min_cntlid=self.min_cntlid,
                 max_cntlid=self.max_cntlid, dmrsl=self.dmrsl, wzsl=self.wzsl)
        nss = []
        for nsid in sorted(self.namespaces):
            ns = self.namespaces[nsid]
            n = {"nsid": nsid, "bdev_name": ns.bdev.name, "name": ns.bdev.name,
                 "nguid": ns.nguid}
            if ns.eui64:
                n["eui64"] = ns.eui64
            n["uuid"] = ns.uuid
            if self.ana_reporting:
                n["anagrpid"] = ns.anagrpid
            nss.append(n)
        s["namespaces"] = nss
        return s


class NvmeCtrlr:
    """A bdev_nvme controller on an initiator instance (bdev_nvme_get_controllers)."""

    def __init__(self, name, trid, hostnqn, opts):
        self.name = name
        self.trid = trid             # as bdev_nvme prints it: trtype, [adrfam], traddr, ...
        self.hostnqn = hostnqn
        self.opts = opts
        self.target = None           # (instance, subsystem, HostConn) while connected
        self.state = "enabled"
        self.cntlid = 0
        self.cdata = None            # the target's controller data at connect time
        self.ns_bdevs = {}           # nsid -> bdev name
        self.timers = []


class VhostCtrlr:
    def __init__(self, name, bdev, cpumask, socket_path, readonly, transport):
        self.name = name
        self.bdev = bdev
        self.cpumask = cpumask
        self.socket_path = socket_path
        self.readonly = readonly
        self.transport = transport
        self.sock = None


class VfuEndpoint:
    def __init__(self, name, bdev, path, sock):
        self.name = name
        self.bdev = bdev
        self.path = path
        self.sock = sock


class Lvstore:
    def __init__(self, name, base, cluster_size):
        self.name = name
        self.uuid = new_uuid()
        self.base = base
        self.cluster_size = cluster_size
        # src blobstore: a few clusters go to metadata; the rest is usable.
        self.total_clusters = max(0, base.num_blocks * base.block_size // cluster_size - 1)
        self.lvols = {}              # lvol name -> bdev

    def used_clusters(self):
        return sum(b.lvol["clusters"] for b in self.lvols.values() if not b.lvol["thin"])


# ------------------------------------------------------------------------------------------
# One SPDK instance (role)

def trtype_canon(s):
    """spdk_nvme_transport_id_parse_trtype + trtype_str, or None if unknown."""
    known = {"pcie": "PCIe", "rdma": "RDMA", "fc": "FC", "tcp": "TCP",
             "vfiouser": "VFIOUSER", "custom": "CUSTOM"}
    return known.get(s.lower())


def adrfam_canon(s):
    known = {"ipv4": "IPv4", "ipv6": "IPv6", "ib": "IB", "fc": "FC", "intra_host": "INTRA_HOST"}
    return known.get(s.lower())


def nqn_is_valid(nqn):
    """nvmf_nqn_is_valid (src lib/nvmf/subsystem.c)."""
    if not 11 <= len(nqn.encode()) <= 223:
        return False
    if nqn == DISCOVERY_NQN:
        return True
    if nqn.startswith(HOSTNQN_PREFIX):
        return bool(UUID_RE.match(nqn[len(HOSTNQN_PREFIX):]))
    if not re.match(r"^nqn\.\d{4}-\d{2}\.", nqn):
        return False
    colon = nqn.find(":")
    if colon < 0 or colon >= len(nqn) - 1:
        return False
    expect_letter, length = True, 0
    for i in range(12, colon):
        c = nqn[i]
        if length > 63:
            return False
        if expect_letter:
            if not c.isascii() or not c.isalpha():
                return False
            expect_letter, length = False, length + 1
        elif c.isascii() and c.isalnum():
            length += 1
        elif c == "-" and i != colon - 1:
            length += 1
        elif c == "." and nqn[i - 1] != "-":
            expect_letter, length = True, 0
        else:
            return False
    return True


def printable(s, max_len):
    return len(s) <= max_len and all(0x20 <= ord(c) <= 0x7E for c in s)


def make_unix_socket(path):
    """Bind a unix socket file at `path` (vhost sockets, vfio-user `cntrl`)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        s.listen(1)
    except OSError:
        s.close()
        raise
    return s


def close_unix_socket(sock, path):
    if sock is not None:
        sock.close()
    try:
        os.unlink(path)
    except OSError:
        pass
