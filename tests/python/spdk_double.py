#!/usr/bin/env python3
"""A test double of SPDK's `spdk_tgt` JSON-RPC server (v26.05), stdlib only.

One process serves several SPDK "instances" (roles such as storage, dpu, host), each on its
own unix stream socket, joined by an in-process fabric: NVMe-oF (tcp/rdma addresses and
vfio-user directories are only keys), iSCSI portals and a fake Ceph. What it answers, and
the exact error codes and texts, come from the recordings of a real v26.05 target in
fixtures/spdk (files 01..07; "R" = the recorder's notes that came with them, not in this
repository) and, where those are silent, from SPDK v26.05's
sources (schema/schema.json and the RPC handlers), which is noted as "src".

    spdk_double.py --sock ROLE=PATH [--sock ROLE=PATH ...] [--latency MIN_MS[-MAX_MS]]
                   [--attach-latency MS] [--log PATH] [--bare]

It prints `ready` once every socket listens; SIGTERM (or SIGINT) removes the sockets and
every file it made (vhost sockets, vfio-user `cntrl` and endpoint sockets) and exits 0. A
role's vhost sockets go in the directory of its RPC socket (R: `-S dir`, default cwd).

Wire (R §3, 04, src lib/jsonrpc): bare concatenated JSON values, parsed as a stream (no
delimiter needed, whitespace allowed); each single response is compact with keys in the
order jsonrpc, id, result|error and is followed by "\\n" as jsonrpc_server.c writes it
(`--bare` leaves it out, to prove a client needs no delimiter); a batch gets one array (in
completion order, which is request order unless an element is slow) followed by "\\n". A
notification that succeeds gets no reply; one that fails still gets its error with
"id":null (src: spdk_jsonrpc_send_error_response always sends).
Invalid JSON closes the connection without a reply.

Latency: 0 by default. With `--latency 4-8` each reply waits a random time in the range and
`bdev_nvme_attach_controller` completes after `--attach-latency` (default 68 ms then, R §6),
so pipelined replies may come back out of order (R). Synchronous methods take effect in
arrival order; an attach takes effect when it completes.

Test-control methods (never sent by the daemon; accepted on any role's socket, acting on
the whole process unless a role is named; not logged by double_calls):
  double_rule {method, role?, match?: {params subset}, error?: {code, message}, delay_ms?,
               hang?: bool, times?: int (1; 0 = forever), skip?: int}   -> rule id
  double_clear_rules {}                                   -> true
  double_calls {role?, clear?: bool}   -> [{"role","method","params"}] in arrival order
  double_state {role?}                 -> compact summary of every (or one) instance
  double_latency {min_ms?, max_ms?, attach_ms?}           -> the new settings
  double_ceph_create {mon_host, user? ("admin"), key, pool, image, size_mib}  -> true
  double_ceph_resize {mon_host, pool, image, size_mib}    (resize outside SPDK) -> true
  double_io {role?, name?}   I/O happens on iSCSI bdevs: they notice a LUN resize -> names
  double_restart {role}      the instance restarts empty (connections dropped)   -> true
"""

import argparse
import asyncio
import codecs
import copy
import errno as E
import fcntl
import ipaddress
import json
import os
import random
import re
import signal
import socket
import stat
import struct
import sys
import time
import traceback
import uuid as uuidlib

VERSION = {"version": "SPDK v26.05",
           "fields": {"major": 26, "minor": 5, "patch": 0, "suffix": ""}}
FIRMWARE = "26.05"
MiB = 1024 * 1024
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
HOSTNQN_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"
ISCSI_NODEBASE = "iqn.2016-06.io.spdk"
ISCSI_LOGIN_ERROR = "iSCSI error (251658241)."          # 05, 04: any login failure
CPUMASKS = {"storage": "0x1", "dpu": "0x2", "host": "0x4", "bdevperf": "0x2"}
NVME_MAX_IO_SIZE = 131072                                # src: TCP/RDMA/vfio-user default

IO_TYPES = ["read", "write", "unmap", "flush", "reset", "nvme_admin", "nvme_io", "nvme_io_md",
            "write_zeroes", "zcopy", "get_zone_info", "zone_management", "zone_append",
            "compare", "compare_and_write", "abort", "seek_hole", "seek_data", "copy",
            "nvme_iov_md", "nvme_nssr", "write_uncorrectable"]


# ------------------------------------------------------------------------------------------
# Errors

class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def errno_error(err, code=None):
    """SPDK's usual `send_error_response(request, -err, spdk_strerror(err))`; `code`
    replaces the code for handlers that wrap the errno text in a JSON-RPC code."""
    return RpcError(-err if code is None else code, os.strerror(err))


INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


def invalid_params(message="Invalid parameters"):
    return RpcError(INVALID_PARAMS, message)


DECODE_FAILED = (INTERNAL_ERROR, "spdk_json_decode_object failed")
DECODE_INVALID_PARAMS = (INVALID_PARAMS, "Invalid parameters")
DECODE_EINVAL = (INVALID_PARAMS, os.strerror(E.EINVAL))


class DecodeError(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Parameter schemas, as spdk_json_decode_object applies them: unknown keys rejected (unless
# the handler decodes "relaxed"), required keys enforced, strict types, integer ranges.

INT_RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF),
              "u64": (0, 0xFFFFFFFFFFFFFFFF), "i32": (-0x80000000, 0x7FFFFFFF)}
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")


class Obj:
    """An object schema: `fields` maps key -> (type, required); `relaxed` ignores unknown
    keys (spdk_json_decode_object_relaxed)."""

    def __init__(self, fields, relaxed=False):
        self.fields = fields
        self.relaxed = relaxed


class Arr:
    def __init__(self, item, max_count):
        self.item = item
        self.max_count = max_count


class Enum:
    def __init__(self, *values):
        self.values = values


def Req(t):
    return (t, True)


def Opt(t):
    return (t, False)


def decode_value(t, v):
    if isinstance(t, Obj):
        return decode_object(t, v)
    if isinstance(t, Arr):
        if not isinstance(v, list) or len(v) > t.max_count:
            raise DecodeError()
        return [decode_value(t.item, x) for x in v]
    if isinstance(t, Enum):
        if not isinstance(v, str) or v not in t.values:
            raise DecodeError()
        return v
    if callable(t):
        return t(v)
    if t == "string":
        if not isinstance(v, str):
            raise DecodeError()
        return v
    if t == "bool":
        if not isinstance(v, bool):
            raise DecodeError()
        return v
    if t == "uuid":
        if not isinstance(v, str) or not UUID_RE.match(v):
            raise DecodeError()
        return v.lower()
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise DecodeError()
        return v
    raise AssertionError(t)


def decode_object(schema, params):
    if not isinstance(params, dict):
        raise DecodeError()
    out = {}
    for key, value in params.items():
        if key not in schema.fields:
            if schema.relaxed:
                continue
            raise DecodeError()
        out[key] = decode_value(schema.fields[key][0], value)
    for key, (_, required) in schema.fields.items():
        if required and key not in params:
            raise DecodeError()
    return out


def hex_bytes(size):
    """decode_ns_nguid / decode_ns_eui64 (src nvmf_rpc.c): exactly 2*size hex digits."""
    def decode(v):
        if not isinstance(v, str) or not re.fullmatch(r"[0-9a-fA-F]{%d}" % (2 * size), v):
            raise DecodeError()
        return v.upper()
    return decode


def rbd_config(v):
    """bdev_rbd_decode_config: an object of string values, or null for an empty one."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise DecodeError()
    return dict(v)


def cpumask(v):
    if not isinstance(v, str):
        raise DecodeError()
    return v


# ------------------------------------------------------------------------------------------
# Streaming JSON (R §3: no delimiter; SPDK parses value after value from its buffer)

_DECODER = json.JSONDecoder()
_LITERALS = ("true", "false", "null")


def _may_continue(buf, pos, msg):
    """Would more bytes make the value that failed at `pos` valid (an incomplete value)?"""
    rest = buf[pos:]
    if pos >= len(buf) or msg.startswith("Unterminated string"):
        return True
    if any(lit.startswith(rest) for lit in _LITERALS):
        return True
    if re.fullmatch(r"-?[0-9]*\.?[0-9]*([eE][-+]?[0-9]*)?", rest):
        return True
    if msg.startswith("Invalid \\uXXXX escape") and len(rest) < 6:
        return True
    if msg.startswith("Invalid \\escape") and rest.endswith("\\"):
        return True
    return False


def split_values(buf):
    """Complete JSON values at the head of `buf` -> (values, rest, invalid)."""
    values = []
    pos = 0
    n = len(buf)
    while True:
        while pos < n and buf[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            return values, "", False
        try:
            value, end = _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            if _may_continue(buf, e.pos, e.msg):
                return values, buf[pos:], False
            return values, "", True
        if end >= n and not isinstance(value, (dict, list, str)):
            return values, buf[pos:], False      # a number or literal may go on
        values.append(value)
        pos = end


def encode(obj):
    return json.dumps(obj, separators=(",", ":"))


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
        b["assigned_rate_limits"] = {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
                                     "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}
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


# ------------------------------------------------------------------------------------------
# The method table: the exact keys each method accepts (SPDK v26.05 schema.json and the
# handlers' decoders), and what a decode failure answers, which differs per method.

class Method:
    def __init__(self, schema=None, optional=False, decode_error=DECODE_FAILED, no_params=None,
                 raw=False):
        self.schema = schema
        self.optional = optional          # params may be absent (`if (params && ...)`)
        self.decode_error = decode_error
        self.no_params = no_params        # (code, message) when params are given
        self.raw = raw                    # the handler also reads undecoded keys


def serial_number(v):
    if not isinstance(v, str) or not printable(v, 20):
        raise DecodeError()
    return v


def model_number(v):
    if not isinstance(v, str) or not printable(v, 40):
        raise DecodeError()
    return v


STR = "string"
NAME_ONLY = Obj({"name": Req(STR)})
LISTEN_ADDRESS = Obj({"trtype": Req(STR), "adrfam": Opt(STR), "traddr": Req(STR),
                      "trsvcid": Opt(STR)})
NVMF_NAMESPACE = Obj({"nsid": Opt("u32"), "bdev_name": Req(STR), "ptpl_file": Opt(STR),
                      "nguid": Opt(hex_bytes(16)), "eui64": Opt(hex_bytes(8)), "uuid": Opt("uuid"),
                      "anagrpid": Opt("u32"), "no_auto_visible": Opt("bool"),
                      "hide_metadata": Opt("bool")})
SUBSYSTEM_QUERY = Obj({"nqn": Req(STR), "tgt_name": Opt(STR)})
PREFERRED = ("preferred_write_granularity", "preferred_write_alignment", "optimal_write_size",
             "preferred_unmap_granularity", "preferred_unmap_alignment")

METHODS = {
    "spdk_get_version": Method(no_params=(INVALID_PARAMS,
                                          "spdk_get_version method requires no parameters")),
    "rpc_get_methods": Method(Obj({"current": Opt("bool"), "include_aliases": Opt("bool")}),
                              optional=True, decode_error=DECODE_INVALID_PARAMS),
    "spdk_kill_instance": Method(Obj({"sig_name": Req(Enum(
        "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"))}),
                                 decode_error=DECODE_INVALID_PARAMS),
    "bdev_wait_for_examine": Method(no_params=(INVALID_PARAMS,
                                               "bdev_wait_for_examine requires no parameters")),
    "notify_get_types": Method(no_params=(INVALID_PARAMS, "No parameters required")),
    "notify_get_notifications": Method(Obj({"id": Opt("u64"), "max": Opt("u64")}), optional=True,
                                       decode_error=DECODE_EINVAL),
    "bdev_get_bdevs": Method(Obj({"name": Opt(STR), "timeout": Opt("u64")}), optional=True),
    "bdev_get_iostat": Method(Obj({"names": Opt(Arr(STR, 1024)), "per_channel": Opt("bool"),
                                   "reset_mode": Opt(Enum("all", "maxmin", "error", "none"))}),
                              optional=True),
    "bdev_malloc_create": Method(Obj({
        "name": Opt(STR), "block_size": Req("u32"), "num_blocks": Req("u64"), "uuid": Opt("uuid"),
        "optimal_io_boundary": Opt("u32"), "md_size": Opt("u32"), "md_interleave": Opt("bool"),
        "dif_type": Opt("i32"), "dif_is_head_of_md": Opt("bool"), "physical_block_size": Opt("u32"),
        "dif_pi_format": Opt("u32"), "numa_id": Opt("i32")})),
    "bdev_malloc_delete": Method(NAME_ONLY),
    "bdev_null_create": Method(Obj(dict({
        "name": Req(STR), "block_size": Req("u32"), "num_blocks": Req("u64"), "uuid": Opt("uuid"),
        "physical_block_size": Opt("u32"), "md_size": Opt("u32"), "dif_type": Opt("i32"),
        "dif_pi_format": Opt("u32"), "dif_is_head_of_md": Opt("bool")},
        **{k: Opt("u32") for k in PREFERRED}))),
    "bdev_null_delete": Method(NAME_ONLY),
    "bdev_null_resize": Method(Obj({"name": Req(STR), "new_size": Req("u64")})),
    "bdev_aio_create": Method(Obj({
        "name": Req(STR), "filename": Req(STR), "block_size": Opt("u32"), "readonly": Opt("bool"),
        "fallocate": Opt("bool"), "uuid": Opt("uuid"), "nowait": Opt("bool")})),
    "bdev_aio_delete": Method(NAME_ONLY),
    "bdev_aio_rescan": Method(NAME_ONLY),
    "bdev_lvol_create_lvstore": Method(Obj({
        "bdev_name": Req(STR), "lvs_name": Req(STR), "cluster_sz": Opt("u32"),
        "clear_method": Opt(STR), "num_md_pages_per_cluster_ratio": Opt("u32"),
        "md_page_size": Opt("u32")})),
    "bdev_lvol_create": Method(Obj({
        "lvol_name": Req(STR), "size_in_mib": Req("u64"), "thin_provision": Opt("bool"),
        "uuid": Opt(STR), "lvs_name": Opt(STR), "clear_method": Opt(STR)})),
    "bdev_lvol_resize": Method(Obj({"name": Req(STR), "size_in_mib": Req("u64")})),
    "bdev_nvme_attach_controller": Method(Obj({
        "name": Req(STR), "trtype": Req(STR), "traddr": Req(STR), "adrfam": Opt(STR),
        "trsvcid": Opt(STR), "priority": Opt(STR), "subnqn": Opt(STR), "hostnqn": Opt(STR),
        "hostaddr": Opt(STR), "hostsvcid": Opt(STR), "prchk_reftag": Opt("bool"),
        "prchk_guard": Opt("bool"), "hdgst": Opt("bool"), "ddgst": Opt("bool"),
        "fabrics_connect_timeout_us": Opt("u64"),
        "multipath": Opt(Enum("failover", "multipath", "disable")),
        "num_io_queues": Opt("u32"), "ctrlr_loss_timeout_sec": Opt("i32"),
        "reconnect_delay_sec": Opt("u32"), "fast_io_fail_timeout_sec": Opt("u32"),
        "psk": Opt(STR), "max_bdevs": Opt("u32"), "dhchap_key": Opt(STR),
        "dhchap_ctrlr_key": Opt(STR), "allow_unrecognized_csi": Opt("bool"),
        "multipath_opts": Opt(Obj({"policy": Opt(Enum("active_passive", "active_active")),
                                   "selector": Opt(Enum("round_robin", "queue_depth")),
                                   "min_io": Opt("u32")}))})),
    "bdev_nvme_detach_controller": Method(Obj({
        "name": Req(STR), "trtype": Opt(STR), "traddr": Opt(STR), "adrfam": Opt(STR),
        "trsvcid": Opt(STR), "subnqn": Opt(STR), "hostaddr": Opt(STR), "hostsvcid": Opt(STR)})),
    "bdev_nvme_get_controllers": Method(Obj({"name": Opt(STR)}), optional=True),
    "bdev_iscsi_create": Method(Obj({"name": Req(STR), "initiator_iqn": Req(STR),
                                     "url": Req(STR)})),
    "bdev_iscsi_delete": Method(NAME_ONLY),
    "bdev_rbd_register_cluster": Method(Obj({
        "name": Req(STR), "user_id": Opt(STR), "config_param": Opt(rbd_config),
        "config_file": Opt(STR), "key_file": Opt(STR), "core_mask": Opt(STR)})),
    "bdev_rbd_unregister_cluster": Method(NAME_ONLY),
    "bdev_rbd_get_clusters_info": Method(Obj({"name": Opt(STR)}), optional=True),
    "bdev_rbd_create": Method(Obj({
        "name": Opt(STR), "user_id": Opt(STR), "pool_name": Req(STR), "rbd_name": Req(STR),
        "block_size": Req("u32"), "config": Opt(rbd_config), "cluster_name": Opt(STR),
        "uuid": Opt("uuid"), "read_only": Opt("bool")})),
    "bdev_rbd_delete": Method(NAME_ONLY),
    "bdev_rbd_resize": Method(Obj({"name": Req(STR), "new_size": Req("u64")})),
    "nvmf_create_transport": Method(Obj({
        "trtype": Req(STR), "tgt_name": Opt(STR), "max_queue_depth": Opt("u16"),
        "max_io_qpairs_per_ctrlr": Opt("u16"), "in_capsule_data_size": Opt("u32"),
        "max_io_size": Opt("u32"), "io_unit_size": Opt("u32"), "max_aq_depth": Opt("u32"),
        "num_shared_buffers": Opt("u32"), "buf_cache_size": Opt("u32"),
        "iobuf_small_cache_size": Opt("u32"), "iobuf_large_cache_size": Opt("u32"),
        "dif_insert_or_strip": Opt("bool"), "abort_timeout_sec": Opt("u32"), "zcopy": Opt("bool"),
        "acceptor_poll_rate": Opt("u32"), "ack_timeout": Opt("u32"),
        "data_wr_pool_size": Opt("u32"), "disable_command_passthru": Opt("bool"),
        "kas": Opt("u16"), "min_kato": Opt("u32"), "masked_oncs": Opt(Arr(STR, 16)),
        "masked_fuses": Opt(Arr(STR, 16))}, relaxed=True),
        decode_error=DECODE_INVALID_PARAMS, raw=True),
    "nvmf_get_transports": Method(Obj({"trtype": Opt(STR), "tgt_name": Opt(STR)}), optional=True,
                                  decode_error=DECODE_INVALID_PARAMS),
    "nvmf_create_subsystem": Method(Obj({
        "nqn": Req(STR), "tgt_name": Opt(STR), "serial_number": Opt(serial_number),
        "model_number": Opt(model_number), "max_namespaces": Opt("u32"),
        "allow_any_host": Opt("bool"), "ana_reporting": Opt("bool"), "min_cntlid": Opt("u16"),
        "max_cntlid": Opt("u16"), "max_discard_size_kib": Opt("u64"),
        "max_write_zeroes_size_kib": Opt("u64"), "dmrsl": Opt("u32"), "wzsl": Opt("u8"),
        "passthrough": Opt("bool"), "enable_nssr": Opt("bool")}),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_delete_subsystem": Method(SUBSYSTEM_QUERY, decode_error=DECODE_INVALID_PARAMS),
    "nvmf_get_subsystems": Method(Obj({"nqn": Opt(STR), "tgt_name": Opt(STR)}), optional=True,
                                  decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_add_listener": Method(Obj({
        "nqn": Req(STR), "listen_address": Req(LISTEN_ADDRESS), "tgt_name": Opt(STR),
        "secure_channel": Opt("bool"),
        "ana_state": Opt(Enum("optimized", "non_optimized", "inaccessible")),
        "sock_impl": Opt(STR)}, relaxed=True), decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_remove_listener": Method(Obj({
        "nqn": Req(STR), "listen_address": Req(LISTEN_ADDRESS), "tgt_name": Opt(STR)}),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_add_ns": Method(Obj({
        "nqn": Req(STR), "namespace": Req(NVMF_NAMESPACE), "tgt_name": Opt(STR)}, relaxed=True),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_remove_ns": Method(Obj({"nqn": Req(STR), "nsid": Req("u32"),
                                            "tgt_name": Opt(STR)}),
                                       decode_error=DECODE_INVALID_PARAMS),
    # psk is left out on purpose: add_host decodes relaxed and only the TCP transport
    # reads psk, from the raw params (see the handler).
    "nvmf_subsystem_add_host": Method(Obj({
        "nqn": Req(STR), "host": Req(STR), "tgt_name": Opt(STR), "dhchap_key": Opt(STR),
        "dhchap_ctrlr_key": Opt(STR)}, relaxed=True),
        decode_error=DECODE_INVALID_PARAMS, raw=True),
    "nvmf_subsystem_remove_host": Method(Obj({
        "nqn": Req(STR), "host": Req(STR), "tgt_name": Opt(STR), "timeout_ms": Opt("u64")}),
        decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_get_controllers": Method(SUBSYSTEM_QUERY,
                                             decode_error=DECODE_INVALID_PARAMS),
    "nvmf_subsystem_get_qpairs": Method(SUBSYSTEM_QUERY, decode_error=DECODE_INVALID_PARAMS),
    "vhost_create_blk_controller": Method(Obj({
        "ctrlr": Req(STR), "dev_name": Req(STR), "cpumask": Opt(cpumask), "transport": Opt(STR),
        "readonly": Opt("bool"), "packed_ring": Opt("bool")}, relaxed=True),
        decode_error=DECODE_EINVAL),
    "vhost_delete_controller": Method(Obj({"ctrlr": Req(STR)}), decode_error=DECODE_EINVAL),
    "vhost_get_controllers": Method(Obj({"name": Opt(STR)}), optional=True,
                                    decode_error=(INTERNAL_ERROR, os.strerror(E.EINVAL))),
    "vfu_tgt_set_base_path": Method(Obj({"path": Req(STR)}), decode_error=DECODE_EINVAL),
    "vfu_virtio_create_blk_endpoint": Method(Obj({
        "name": Req(STR), "bdev_name": Req(STR), "cpumask": Opt(STR), "num_queues": Opt("u16"),
        "qsize": Opt("u16"), "packed_ring": Opt("bool")}), decode_error=DECODE_EINVAL),
    "vfu_virtio_delete_endpoint": Method(NAME_ONLY, decode_error=DECODE_EINVAL),
    "iscsi_create_portal_group": Method(Obj({
        "tag": Req("i32"), "portals": Req(Arr(Obj({"host": Req(STR), "port": Req(STR)}), 1024)),
        "private": Opt("bool"), "wait": Opt("bool")}), decode_error=DECODE_INVALID_PARAMS),
    "iscsi_create_initiator_group": Method(Obj({
        "tag": Req("i32"), "initiators": Req(Arr(STR, 256)), "netmasks": Req(Arr(STR, 256))}),
        decode_error=DECODE_INVALID_PARAMS),
    "iscsi_create_target_node": Method(Obj({
        "name": Req(STR), "alias_name": Req(STR),
        "pg_ig_maps": Req(Arr(Obj({"ig_tag": Req("i32"), "pg_tag": Req("i32")}), 256)),
        "luns": Req(Arr(Obj({"lun_id": Opt("i32"), "bdev_name": Opt(STR)}), 64)),
        "queue_depth": Req("i32"), "disable_chap": Opt("bool"), "require_chap": Opt("bool"),
        "mutual_chap": Opt("bool"), "chap_group": Opt("i32"), "header_digest": Opt("bool"),
        "data_digest": Opt("bool")}), decode_error=DECODE_INVALID_PARAMS),
    "iscsi_create_auth_group": Method(Obj({
        "tag": Req("i32"),
        "secrets": Opt(Arr(Obj({"user": Req(STR), "secret": Req(STR), "muser": Opt(STR),
                                "msecret": Opt(STR)}), 64))}),
        decode_error=DECODE_INVALID_PARAMS),
}


def invoke(inst, method, params):
    """Look the method up, decode its params as SPDK does, run the handler."""
    spec = METHODS.get(method)
    if spec is None:
        raise RpcError(-32601, "Method not found")                        # 04 id 29
    handler = getattr(inst, "rpc_" + method)
    if spec.no_params is not None:
        if params is not None:
            raise RpcError(*spec.no_params)                                # 04 id 35
        return handler(None)
    if params is None:
        if not spec.optional:
            raise RpcError(*spec.decode_error)
        return handler(None)
    try:
        p = decode_object(spec.schema, params)                             # 04 id 30-32, 34
    except DecodeError:
        raise RpcError(*spec.decode_error)
    if p.get("tgt_name", "nvmf_tgt") != "nvmf_tgt" and method.startswith("nvmf_"):
        raise RpcError(INTERNAL_ERROR, "Unable to find a target.")
    return handler(p, params) if spec.raw else handler(p)


# ------------------------------------------------------------------------------------------
# The fabric: the instances, the addresses they listen on, a fake Ceph, and the test controls

def subset(match, value):
    if match is None:
        return True
    if isinstance(match, dict):
        return isinstance(value, dict) and all(
            k in value and subset(v, value[k]) for k, v in match.items())
    return match == value


class Rule:
    def __init__(self, rid, spec):
        self.id = rid
        self.method = spec["method"]
        self.role = spec.get("role")
        self.match = spec.get("match")
        self.error = spec.get("error")
        self.delay = spec.get("delay_ms", 0) / 1000.0
        self.hang = bool(spec.get("hang", False))
        self.times = spec.get("times", 1)
        self.skip = spec.get("skip", 0)
        self.used = 0


class Fabric:
    def __init__(self, loop, latency=(0.0, 0.0), attach_ms=None, log=None, bare=False):
        self.loop = loop
        self.instances = {}
        self.servers = {}
        self.conns = {}              # role -> set of RpcProtocol
        self.addresses = {}          # nvmf listen keys -> {"inst", "subsys"}
        self.portals = {}            # (host, port) -> instance
        self.ceph = {}               # mon_host -> {"users": {}, "pools": {pool: {image: {}}}}
        self.rules = []
        self.next_rule = 1
        self.calls = []
        self.min_ms, self.max_ms = latency
        self.attach_ms = attach_ms if attach_ms is not None else (68.0 if self.max_ms else 0.0)
        self.log = log
        self.terminator = "" if bare else "\n"
        self.stopping = False

    # --- latency -----------------------------------------------------------------------------

    def latency(self):
        if self.max_ms <= 0:
            return 0.0
        return random.uniform(self.min_ms, self.max_ms) / 1000.0

    def attach_latency(self):
        return self.attach_ms / 1000.0

    # --- NVMe-oF addresses ------------------------------------------------------------------

    @staticmethod
    def _key(trid):
        if trid["trtype"] == "VFIOUSER":
            return ("VFIOUSER", os.path.realpath(trid["traddr"]))
        return (trid["trtype"], trid["traddr"], trid["trsvcid"])

    def claim_address(self, inst, subsys, trid):
        """A TCP/RDMA address belongs to one instance (its subsystems share it, as the
        real target's listener does); a vfio-user directory to one subsystem."""
        key = self._key(trid)
        owner = self.addresses.get(key)
        if owner is not None and (owner["inst"] is not inst or key[0] == "VFIOUSER"):
            return False
        self.addresses[key] = {"inst": inst, "subsys": subsys}
        return True

    def release_address(self, inst, trid):
        key = self._key(trid)
        owner = self.addresses.get(key)
        if owner is None or owner["inst"] is not inst:
            return
        if key[0] != "VFIOUSER" and any(trid in s.listeners for s in inst.subsystems.values()):
            return
        del self.addresses[key]

    def release_all(self, inst):
        for key in [k for k, v in self.addresses.items() if v["inst"] is inst]:
            del self.addresses[key]
        for key in [k for k, v in self.portals.items() if v is inst]:
            del self.portals[key]

    def resolve(self, ctrl):
        """Where an attach would connect: (instance, subsystem, listener) or None."""
        t = ctrl.trid
        trtype = t["trtype"]
        if trtype in ("TCP", "RDMA"):
            svc, addr = t.get("trsvcid", ""), t.get("traddr", "")
            owner = None
            for a in (addr, "0.0.0.0", "::"):
                owner = self.addresses.get((trtype, a, svc))
                if owner:
                    break
            if owner is None:
                return None
            s = owner["inst"].subsystems.get(t.get("subnqn") or DISCOVERY_NQN)
            if s is None or s.discovery:
                return None
            listener = next((x for x in s.listeners if x["trtype"] == trtype and
                             x["trsvcid"] == svc and x["traddr"] in (addr, "0.0.0.0", "::")),
                            None)
        elif trtype == "VFIOUSER":
            owner = self.addresses.get(("VFIOUSER", os.path.realpath(t.get("traddr", ""))))
            if owner is None:
                return None
            s = owner["subsys"]
            if t.get("subnqn") and t["subnqn"] != s.nqn:
                return None
            listener = next((x for x in s.listeners if x["trtype"] == "VFIOUSER" and
                             os.path.realpath(x["traddr"]) == os.path.realpath(t["traddr"])),
                            None)
        else:
            return None
        if listener is None or s.nqn not in owner["inst"].subsystems:
            return None
        if not s.allow_any_host and ctrl.hostnqn not in s.hosts:
            return None
        return owner["inst"], s, listener

    def connect(self, initiator, ctrl):
        found = self.resolve(ctrl)
        if found is None:
            return None
        target, s, listener = found
        conn = target.accept_host(s, listener, ctrl.hostnqn, initiator, ctrl)
        if conn is None:
            return None
        ctrl.target = (target, s, conn)
        ctrl.cntlid = conn.cntlid
        ctrl.cdata = {"vendor_id": "0x4e58" if listener["trtype"] == "VFIOUSER" else "0x8086",
                      "model": s.model, "serial": s.serial, "subnqn": s.nqn,
                      "ana": s.ana_reporting}
        return ctrl.target

    # --- iSCSI ---------------------------------------------------------------------------------

    def claim_portal(self, inst, addr):
        if self.portals.get(addr, inst) is not inst:
            return False
        self.portals[addr] = inst
        return True

    def release_portal(self, inst, addr):
        if self.portals.get(addr) is inst:
            del self.portals[addr]

    def iscsi_login(self, initiator, host, port, iqn, lun_id, user, secret):
        """A libiscsi full connect: portal, target, initiator group, CHAP, then the LUN."""
        for addr in ((host, port), ("0.0.0.0", port), ("::", port)):
            target = self.portals.get(addr)
            if target is not None:
                break
        else:
            return None
        node = next((n for k, n in target.target_nodes.items() if k.lower() == iqn.lower()), None)
        if node is None:
            return None
        tags = {t for t, portals in target.portal_groups.items() if addr in portals}

        def allowed(ig):
            names = [n.lower() for n in target.initiator_groups[ig]["initiators"]]
            if "!" + initiator.lower() in names:
                return False
            return "any" in names or initiator.lower() in names
        if not any(pg in tags and allowed(ig) for pg, ig in node["maps"]):
            return None
        if node["require_chap"]:
            secrets = target.auth_groups.get(node["chap_group"], [])
            if not any(s["user"] == user and s["secret"] == secret for s in secrets):
                return None
        lun = node["luns"].get(lun_id)
        if lun is None:
            return None
        return target, node, lun_id, lun

    # --- Ceph ----------------------------------------------------------------------------------

    def ceph_connect(self, mon_host, user, key):
        if not mon_host or key is None:
            return None
        for host in re.split(r"[,; ]+", mon_host):
            c = self.ceph.get(host)
            if c is not None and c["users"].get(user) == key:
                return c
        return None

    def ceph_image_resized(self, image):
        for inst in list(self.instances.values()):
            for b in list(inst.bdevs.values()):
                if b.driver == "rbd" and b.rbd["image"] is image:
                    try:
                        inst.resize_bdev(b, image["size"] // b.block_size)
                    except RpcError:
                        pass

    # --- instances -----------------------------------------------------------------------------

    def stop_instance(self, inst):
        """The process of one role exits: its socket goes away, its peers notice."""
        if self.instances.get(inst.role) is not inst:
            return
        del self.instances[inst.role]
        server = self.servers.pop(inst.role, None)
        if server is not None:
            server.close()
        for conn in list(self.conns.pop(inst.role, ())):
            conn.abort()
        inst.teardown()
        try:
            os.unlink(inst.sock_path)
        except OSError:
            pass
        if not self.instances:
            self.shutdown()

    def shutdown(self):
        if self.stopping:
            return
        self.stopping = True
        for inst in list(self.instances.values()):
            self.stop_instance(inst)
        self.loop.call_soon(self.loop.stop)

    # --- test controls -------------------------------------------------------------------------

    def match_rule(self, role, method, params):
        for r in list(self.rules):
            if r.method != method or (r.role is not None and r.role != role) or \
                    not subset(r.match, params if params is not None else {}):
                continue
            if r.skip > 0:
                r.skip -= 1
                continue
            r.used += 1
            if r.times and r.used >= r.times:
                self.rules.remove(r)
            return r
        return None

    def _role(self, p, required=False):
        role = p.get("role")
        if role is None and not required:
            return None
        if role not in self.instances:
            raise RpcError(INVALID_PARAMS, "unknown role %r" % (role,))
        return role

    def control(self, conn, method, p):
        """The double_* methods (see the module docstring)."""
        if p is None:
            p = {}
        if not isinstance(p, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object")
        if method == "double_rule":
            if not isinstance(p.get("method"), str):
                raise RpcError(INVALID_PARAMS, "double_rule needs a method")
            rule = Rule(self.next_rule, p)
            self.next_rule += 1
            self.rules.append(rule)
            return rule.id
        if method == "double_clear_rules":
            self.rules = []
            return True
        if method == "double_calls":
            role = self._role(p)
            out = [dict(c) for c in self.calls if role is None or c["role"] == role]
            if p.get("clear"):
                self.calls = [c for c in self.calls if role is not None and c["role"] != role]
            return out
        if method == "double_state":
            role = self._role(p)
            if role is not None:
                return self.instances[role].summary()
            return {r: i.summary() for r, i in self.instances.items()}
        if method == "double_latency":
            self.min_ms = float(p.get("min_ms", self.min_ms))
            self.max_ms = float(p.get("max_ms", max(self.max_ms, self.min_ms)))
            self.attach_ms = float(p.get("attach_ms", self.attach_ms))
            return {"min_ms": self.min_ms, "max_ms": self.max_ms, "attach_ms": self.attach_ms}
        if method == "double_ceph_create":
            for key in ("mon_host", "key", "pool", "image"):
                if not isinstance(p.get(key), str):
                    raise RpcError(INVALID_PARAMS, "double_ceph_create needs %s" % key)
            c = self.ceph.setdefault(p["mon_host"], {"users": {}, "pools": {}})
            c["users"][p.get("user", "admin")] = p["key"]
            pool = c["pools"].setdefault(p["pool"], {})
            if p["image"] in pool:
                raise errno_error(E.EEXIST)
            pool[p["image"]] = {"size": int(p.get("size_mib", 0)) * MiB}
            return True
        if method == "double_ceph_resize":
            image = self.ceph.get(p.get("mon_host"), {}).get("pools", {}).get(
                p.get("pool"), {}).get(p.get("image"))
            if image is None:
                raise errno_error(E.ENOENT)
            image["size"] = int(p["size_mib"]) * MiB
            self.ceph_image_resized(image)
            return True
        if method == "double_io":
            role = self._role(p)
            changed = []
            for r, inst in self.instances.items():
                if role is None or r == role:
                    changed += inst.iscsi_io(p.get("name"))
            return changed
        if method == "double_restart":
            inst = self.instances[self._role(p, required=True)]
            inst.teardown()
            for c in list(self.conns.get(inst.role, ())):
                if c is conn:
                    self.loop.call_soon(c.abort)
                else:
                    c.abort()
            return True
        raise RpcError(-32601, "Method not found")

    # --- requests ------------------------------------------------------------------------------

    def _log(self, role, arrow, text):
        if self.log is not None:
            self.log.write("%.3f %s %s %s\n" % (time.time(), role, arrow, text))
            self.log.flush()

    def _after(self, delay, fn, *args):
        if delay <= 0:
            fn(*args)
        else:
            self.loop.call_later(delay, fn, *args)

    def execute(self, conn, req, done, delay):
        """Run one request object and call done(reply or None) when its reply is due
        (never, for a request a rule makes hang)."""
        inst = conn.inst
        rid, has_id = None, False

        def reply(result=None, error=None):
            if error is not None:
                return {"jsonrpc": "2.0", "id": rid, "error": error}
            if not has_id or rid is None:
                return None                         # a notification (04: no reply)
            return {"jsonrpc": "2.0", "id": rid, "result": result}

        def fail(e):
            return reply(error={"code": e.code, "message": e.message})

        invalid = fail(RpcError(-32600, "Invalid request"))
        if not isinstance(req, dict) or set(req) - {"jsonrpc", "method", "params", "id"} or \
                ("jsonrpc" in req and req["jsonrpc"] != "2.0") or \
                not isinstance(req.get("method"), str):
            return self._after(delay, done, invalid)
        if "id" in req:
            if isinstance(req["id"], (bool, dict, list)):
                return self._after(delay, done, invalid)
            rid, has_id = req["id"], True
        params = req.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            return self._after(delay, done, fail(RpcError(-32600, "Invalid request")))
        method = req["method"]
        if method.startswith("double_"):
            try:
                return done(reply(self.control(conn, method, params)))
            except RpcError as e:
                return done(fail(e))
        self.calls.append({"role": inst.role, "method": method, "params": params})
        rule = self.match_rule(inst.role, method, params)
        if rule is not None:
            if rule.hang:
                return None
            delay += rule.delay
            if rule.error is not None:
                err = rule.error
                return self._after(delay, done, reply(error={
                    "code": err.get("code", INTERNAL_ERROR), "message": err.get("message", "")}))
        try:
            result = invoke(inst, method, params)
        except RpcError as e:
            return self._after(delay, done, fail(e))
        except Exception:                          # a bug in the double: say so, keep serving
            traceback.print_exc()
            return self._after(delay, done, fail(RpcError(INTERNAL_ERROR, "Internal error")))
        if isinstance(result, Later):
            return self._later(result, rule.delay if rule else 0.0, done, reply, fail)
        return self._after(delay, done, reply(result))

    def _later(self, later, extra, done, reply, fail):
        def step():
            try:
                result = later.finish()
            except RpcError as e:
                return done(fail(e))
            except Exception:
                traceback.print_exc()
                return done(fail(RpcError(INTERNAL_ERROR, "Internal error")))
            if isinstance(result, Later):
                return self._later(result, 0.0, done, reply, fail)
            return done(reply(result))
        self._after(later.delay + extra, step)

    def handle(self, conn, value):
        """A complete JSON value from a connection: a request, a batch or junk (src
        jsonrpc_server.c: an empty batch or a non-object top level is an invalid request)."""
        self._log(conn.inst.role, ">>", encode(value))
        if isinstance(value, list) and value:
            return self._batch(conn, value)
        if isinstance(value, list) or not isinstance(value, dict):
            value = None
        conn.pending += 1
        self.execute(conn, value, conn.deliver, self.latency())

    def _batch(self, conn, items):
        """Each element runs in order; the array goes out once all are done, in completion
        order, after one latency for the whole batch (04; R: 50 batched ~ 8 ms)."""
        replies = []
        state = {"left": len(items), "due": time.monotonic() + self.latency()}
        conn.pending += 1

        def element_done(r):
            if r is not None:
                replies.append(r)
            state["left"] -= 1
            if state["left"] == 0:
                wait = state["due"] - time.monotonic()
                self._after(wait, conn.deliver, replies if replies else None)
        for item in items:
            self.execute(conn, item, element_done, 0.0)


class RpcProtocol(asyncio.Protocol):
    """One client connection to one role's socket."""

    def __init__(self, fabric, inst):
        self.fabric = fabric
        self.inst = inst
        self.transport = None
        self.buf = ""
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.pending = 0
        self.eof = False
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        self.fabric.conns.setdefault(self.inst.role, set()).add(self)

    def data_received(self, data):
        if self.closed:
            return
        try:
            self.buf += self.utf8.decode(data)
        except UnicodeDecodeError:
            return self.abort()
        values, self.buf, invalid = split_values(self.buf)
        for v in values:
            if self.closed:
                return
            self.fabric.handle(self, v)
        if invalid:
            self.abort()                        # R §3: invalid JSON closes, no reply

    def deliver(self, reply):
        self.pending -= 1
        if reply is not None and not self.closed:
            text = encode(reply)
            self.fabric._log(self.inst.role, "<<", text)
            self.transport.write((text + self.fabric.terminator).encode())
        if self.eof and self.pending <= 0:
            self.abort()

    def eof_received(self):
        self.eof = True
        if self.pending <= 0:
            self.abort()
        return True

    def abort(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    def connection_lost(self, exc):
        self.closed = True
        self.fabric.conns.get(self.inst.role, set()).discard(self)


# ------------------------------------------------------------------------------------------

def parse_latency(text):
    lo, _, hi = text.partition("-")
    lo = float(lo)
    hi = float(hi) if hi else lo
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError("latency must be MIN_MS[-MAX_MS] with MIN <= MAX")
    return lo, hi


def parse_sock(text):
    role, sep, path = text.partition("=")
    if not sep or not role or not path:
        raise argparse.ArgumentTypeError("--sock takes ROLE=PATH")
    return role, path


async def serve(fabric, socks):
    for role, path in socks:
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise SystemExit("%s: socket %s is in use" % (role, path))
            except OSError:
                os.unlink(path)
            finally:
                probe.close()
        inst = Instance(fabric, role, path)
        fabric.instances[role] = inst
        fabric.servers[role] = await fabric.loop.create_unix_server(
            lambda inst=inst: RpcProtocol(fabric, inst), path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sock", action="append", type=parse_sock, required=True,
                    help="ROLE=PATH: serve an SPDK instance for ROLE on this unix socket")
    ap.add_argument("--latency", type=parse_latency, default=(0.0, 0.0),
                    help="MIN_MS[-MAX_MS] per reply (default 0)")
    ap.add_argument("--attach-latency", type=float, default=None,
                    help="ms for bdev_nvme_attach_controller (default 0, or 68 with --latency)")
    ap.add_argument("--log", help="append every request and reply to this file")
    ap.add_argument("--bare", action="store_true",
                    help="no newline after replies (SPDK writes one; clients must not need it)")
    args = ap.parse_args(argv)
    roles = [r for r, _ in args.sock]
    if len(set(roles)) != len(roles):
        ap.error("each role needs its own --sock")
    log = open(args.log, "a") if args.log else None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    fabric = Fabric(loop, args.latency, args.attach_latency, log, args.bare)
    try:
        loop.run_until_complete(serve(fabric, args.sock))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fabric.shutdown)
        print("ready", flush=True)
        loop.run_forever()
    finally:
        for inst in list(fabric.instances.values()):
            fabric.stop_instance(inst)
        for role, path in args.sock:
            try:
                os.unlink(path)
            except OSError:
                pass
        loop.close()
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
