"""JSON-RPC on the wire as SPDK speaks it: the version and limits a v26.05 target reports,
its error codes and texts, the parameter decoder (spdk_json_decode_object) and the
stream framing of concatenated JSON values."""

import errno as E
import json
import os
import re


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
