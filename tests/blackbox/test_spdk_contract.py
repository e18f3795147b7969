"""Contract test of tests/blackbox/spdk_double against the recordings of a real SPDK v26.05
target in fixtures/spdk (01..07): every recorded request is replayed, byte for byte, against
a fresh double with the roles the recording used, and every reply must equal the recorded
one after normalising only what is random per run (uuids and the nguids and host NQNs made
from them, the run directory, qpair peer ports). The side effects the recordings note
(resize reaching the DPU and the host, namespaces vanishing and not coming back, ...) are
checked with further calls. Then: out-of-order replies with latency on, batches and
notifications, bad input, the test controls, the parameter shapes metalvirtd sends, and the
real client (PyPI `spdk` in the peers venv) against the double.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_spdk_contract
"""

import json
import os
import re
import subprocess
import sys
import time
import unittest

from .spdk_client import Client, RpcError, SpdkDouble, call

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RECORDINGS = os.environ.get("METALVIRT_SPDK_RECORDINGS",
                            os.path.join(REPO, "fixtures", "spdk"))
VENV = os.environ.get("METALVIRT_PEERS_VENV", os.path.join(REPO, "target", "peers-venv"))

# A file replays after the recordings whose state it starts from (04 attaches to 01's vol1
# with its two namespaces and meets 01's host1 listener and TCP transport; 03 attaches to 02's
# vfio-user controller; 06 logs in to 05's target, whose LUN 05 grew to 256 MiB; 07 starts
# from 01's end: vol1 with ns 1 (Null0, 2 GiB) and ns 2, host1 with its 4421 listener).
PREREQUISITES = {"01": [], "02": [], "03": ["02"], "04": ["01"], "05": [], "06": ["05"],
                 "07": ["01"]}

# Exchanges not replayed, with the reason.
SKIPS = {
    ("06", "bdevperf", 3): "perform_tests is bdevperf's own RPC (a separate program doing I/O)",
    ("07", "bdevperf", 5): "perform_tests is bdevperf's own RPC (a separate program doing I/O)",
}

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NGUID = re.compile(r"(?<![0-9A-Fa-f])[0-9A-F]{32}(?![0-9A-Fa-f])")
PEER_PORT = re.compile(r'("peer_address":\{[^{}]*"trsvcid":")\d+(")')


class Skip(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Recordings

def parse_recording(path):
    """-> [{"role", "title", "request", "replies", "notes"}] in file order."""
    out = []
    cur = None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^### \[([^\]]+)\] (.*?)(?:\s+\(([\d.]+) ms\))?$", line)
            if m:
                cur = {"role": m.group(1).split("(")[0], "title": m.group(2), "request": None,
                       "replies": [], "notes": []}
                out.append(cur)
            elif line.startswith(">> ") and cur is not None:
                cur["request"] = line[3:]
            elif line.startswith("<< ") and cur is not None:
                cur["replies"].append(line[3:])
            elif line.startswith("### NOTE") and cur is not None:
                cur["notes"].append(line)
    for ex in out:
        assert ex["request"] is not None, ex
        req = json.loads(ex["request"]) if ex["request"].startswith("[") else \
            json.JSONDecoder().raw_decode(ex["request"])[0]
        ex["id"] = req.get("id") if isinstance(req, dict) else None
        ex["method"] = req.get("method") if isinstance(req, dict) else "batch"
    return out


def recording(num):
    assert os.path.isdir(RECORDINGS), \
        "no recordings at %s (fixtures/spdk, or METALVIRT_SPDK_RECORDINGS)" \
        % RECORDINGS
    names = [n for n in os.listdir(RECORDINGS) if n.startswith(num + "-")]
    assert len(names) == 1, names
    return os.path.join(RECORDINGS, names[0])


class Normaliser:
    """Replaces what is random per run by stable tokens in order of first appearance: uuids
    not given by a request (and the uppercase nguids made from them), and qpair peer ports.
    One instance per side (recorded, actual) of a replay session."""

    def __init__(self, fixed):
        self.fixed = fixed
        self.tokens = {}

    def token(self, uuid):
        return self.tokens.setdefault(uuid, "UUID#%d" % (len(self.tokens) + 1))

    def __call__(self, text, run_dir=None):
        if run_dir:
            text = text.replace(run_dir, "$RUN")
        text = PEER_PORT.sub(r"\1PORT\2", text)

        def nguid(m):
            u = m.group(0).lower()
            u = "-".join((u[:8], u[8:12], u[12:16], u[16:20], u[20:]))
            return m.group(0) if u in self.fixed else "NGUID(%s)" % self.token(u)

        def uuid(m):
            u = m.group(0).lower()
            return m.group(0) if u in self.fixed else self.token(u)
        return UUID.sub(uuid, NGUID.sub(nguid, text))


class RawClient(Client):
    """Keeps the exact text of each reply value."""

    def recv_raw(self, timeout=10.0):
        """-> (value, its exact text); `gap` is the whitespace that preceded it."""
        self.sock.settimeout(timeout)
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    value, end = self.decoder.raw_decode(text)
                    self.gap = self.buf[:len(self.buf) - len(text)]
                    self.buf = text[end:]
                    return value, text[:end]
                except ValueError:
                    pass
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data.decode()

    def idle(self, wait=0.05):
        """True if nothing more arrives."""
        if self.buf.strip():
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except OSError:
            return True
        self.buf += data.decode()
        return False


# ------------------------------------------------------------------------------------------
# Side effects the recordings note, keyed by (file, role, request id): run after that reply.

def blocks(spdk, role, name):
    try:
        return call(spdk.sock(role), "bdev_get_bdevs", {"name": name})[0]["num_blocks"]
    except RpcError as e:
        assert e.code == -19, e
        return None


def namespaces(spdk, role, nqn):
    return call(spdk.sock(role), "nvmf_get_subsystems", {"nqn": nqn})[0]["namespaces"]


def expect_blocks(role, name, n):
    def check(spdk):
        got = blocks(spdk, role, name)
        assert got == n, "%s %s: %s blocks, expected %s" % (role, name, got, n)
    check.__doc__ = "%s %s has %s blocks" % (role, name, n)
    return check


def expect_file(rel, present=True, sock=False):
    def check(spdk):
        path = spdk.path(*rel.split("/"))
        assert os.path.exists(path) == present, "%s exists=%s" % (rel, not present)
        if present and sock:
            assert os.stat(path).st_mode & 0o170000 == 0o140000, rel + " is not a socket"
    return check


def expect_claim(role, name, claim_type):
    def check(spdk):
        b = call(spdk.sock(role), "bdev_get_bdevs", {"name": name})[0]
        assert b["claimed"] and b.get("claim_type") == claim_type, b
    return check


def expect_notifications(role, expected):
    """The given (type, ctx) events occur in this order, with increasing ids."""
    def check(spdk):
        events = call(spdk.sock(role), "notify_get_notifications", {"id": 0, "max": 1000})
        ids = [e["id"] for e in events]
        assert ids == list(range(len(events))), ids
        seq = [(e["type"], e["ctx"]) for e in events]
        pos = 0
        for want in expected:
            assert want in seq[pos:], "%s not after position %d in %s" % (want, pos, seq)
            pos = seq.index(want, pos) + 1
        assert call(spdk.sock(role), "notify_get_types") == \
            ["bdev_register", "bdev_unregister", "bdev_resize"]
    return check


def iscsi_io_then(role, name, n):
    """06 NOTE: with I/O running the iSCSI bdev grew; the double's I/O is double_io."""
    def check(spdk):
        assert blocks(spdk, role, name) == 524288, "no growth without I/O"
        assert spdk.control("double_io", {"role": role}) == [name]
        expect_blocks(role, name, n)(spdk)
    return check


HOST1 = "nqn.2016-06.io.spdk:host1"
EFFECTS = {
    ("01", "storage", 20): [expect_blocks("dpu", "Vol1n1", 524288),
                            expect_blocks("host", "Host0n1", 524288)],
    ("01", "dpu", 25): [expect_blocks("host", "Host0n1", None)],
    ("01", "dpu", 27): [expect_blocks("host", "Host0n1", 524288)],
    ("01", "storage", 30): [expect_blocks("dpu", "Vol1n1", None),
                            expect_blocks("host", "Host0n1", None)],
    ("01", "storage", 34): [expect_blocks("dpu", "Vol1n1", 524288),
                            expect_blocks("host", "Host0n1", None),
                            lambda s: namespaces(s, "dpu", HOST1) == [] or
                            (_ for _ in ()).throw(AssertionError("ns re-added"))],
    ("01", "dpu", 37): [expect_blocks("host", "Host0n1", 524288)],
    ("01", "storage", 43): [expect_blocks("dpu", "Vol1n2", 4096)],
    ("01", "storage", 46): [expect_blocks("dpu", "Vol1n2", 16384)],
    ("01", "storage", 49): [expect_blocks("dpu", "Vol1n2", 16384)],
    ("01", "dpu", 54): [expect_notifications("dpu", [
        ("bdev_register", "Vol1n1"), ("bdev_resize", "Vol1n1"), ("bdev_unregister", "Vol1n1"),
        ("bdev_register", "Vol1n1"), ("bdev_register", "Vol1n2"), ("bdev_resize", "Vol1n2"),
        ("bdev_unregister", "Vol1n1")])],
    ("02", "dpu", 2): [expect_file("vhost.0", sock=True)],
    ("02", "dpu", 4): [expect_file("vhost.0", present=False)],
    ("02", "dpu", 10): [expect_file("vfu/ctrl0/cntrl", sock=True)],
    ("02", "dpu", 14): [expect_file("vfu/vfu.blk0", sock=True)],
    ("02", "dpu", 15): [expect_file("vfu/vfu.blk0", present=False)],
    ("03", "dpu", 3): [expect_blocks("host", "Vfu0n2", 262144)],
    ("03", "dpu", 7): [expect_blocks("host", "Vfu0n2", 524288)],
    ("03", "dpu", 10): [expect_blocks("host", "Vfu0n2", None)],
    ("04", "dpu", 11): [expect_claim("dpu", "MallocE", "exclusive_write")],
    ("04", "dpu", 28): [expect_blocks("dpu", "VolXn1", None)],
    ("05", "dpu", 5): [expect_blocks("dpu", "Iscsi0", 262144)],
    ("05", "storage", 11): [expect_blocks("dpu", "Iscsi0", 262144)],
    ("06", "storage", 4): [iscsi_io_then("bdevperf", "Isc", 1048576)],
    ("07", "storage", 7): [expect_blocks("dpu", "Vol1n1", 786432),
                           expect_blocks("bdevperf", "Hn1", 786432)],
}


def replay(num):
    """Replays `num` after its prerequisites on one fresh double; returns exchanges checked."""
    files = PREREQUISITES[num] + [num]
    sessions = [(f, parse_recording(recording(f))) for f in files]
    roles = []
    for _, exchanges in sessions:
        for ex in exchanges:
            if ex["role"] not in roles:
                roles.append(ex["role"])
    fixed = set()
    for _, exchanges in sessions:
        for ex in exchanges:
            fixed |= {u.lower() for u in UUID.findall(ex["request"])}
    recorded_norm, actual_norm = Normaliser(fixed), Normaliser(fixed)
    checked = 0
    with SpdkDouble(*roles) as spdk:
        os.makedirs(spdk.path("vfu", "ctrl0"))      # 02 made it before add_listener
        conns = {}
        try:
            for f, exchanges in sessions:
                for ex in exchanges:
                    key = (f, ex["role"], ex["id"])
                    if key in SKIPS:
                        continue
                    if ex["role"] not in conns:
                        conns[ex["role"]] = RawClient(spdk.sock(ex["role"]))
                    c = conns[ex["role"]]
                    c.send_raw(ex["request"].replace("$RUN", spdk.dir))
                    for want in ex["replies"]:
                        _, raw = c.recv_raw()
                        got = actual_norm(raw, spdk.dir)
                        exp = recorded_norm(want)
                        assert got == exp, "%s [%s] %s (id %s):\n  recorded %s\n  double   %s" % (
                            f, ex["role"], ex["title"], ex["id"], exp, got)
                        checked += 1
                    assert c.idle(0.0 if ex["replies"] else 0.02), \
                        "%s [%s] id %s: an unexpected extra reply" % (f, ex["role"], ex["id"])
                    for effect in EFFECTS.get(key, []):
                        effect(spdk)
            for c in conns.values():
                assert c.idle(0.02), "an unexpected extra reply at the end"
        finally:
            for c in conns.values():
                c.close()
    return checked


# ------------------------------------------------------------------------------------------
# The checks

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


for _num in sorted(PREREQUISITES):
    def _replay_check(num=_num):
        n = replay(num)
        assert n > 0
        return "%d replies equal" % n
    _replay_check.__name__ = "replay_%s%s" % (_num, "".join(
        " after " + p for p in PREREQUISITES[_num]))
    check(_replay_check)


def storage_volume(spdk, role="storage", name="Null0", nqn="nqn.2016-06.io.spdk:vol1",
                   port="4420"):
    s = spdk.sock(role)
    call(s, "bdev_null_create", {"name": name, "num_blocks": 262144, "block_size": 4096})
    try:
        call(s, "nvmf_create_transport", {"trtype": "TCP"})
    except RpcError:
        pass
    call(s, "nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": True})
    call(s, "nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": name}})
    call(s, "nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port}})


ATTACH = {"name": "Vol1", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
          "trsvcid": "4420", "subnqn": "nqn.2016-06.io.spdk:vol1"}


@check
def pipelined_replies_come_out_of_order():
    """R §3: a slow attach then spdk_get_version on one connection -> "ver" first."""
    with SpdkDouble("storage", "dpu", latency="4-8", attach_latency=60, bare=True) as spdk:
        storage_volume(spdk)
        with RawClient(spdk.sock("dpu")) as c:
            t0 = time.monotonic()
            c.send_raw(json.dumps({"jsonrpc": "2.0", "method": "bdev_nvme_attach_controller",
                                   "id": "attach", "params": ATTACH}) +
                       '{"jsonrpc":"2.0","method":"spdk_get_version","id":"ver"}')
            first, _ = c.recv_raw()
            t1 = time.monotonic()
            second, _ = c.recv_raw()
            t2 = time.monotonic()
            assert first["id"] == "ver" and second["id"] == "attach", (first, second)
            assert c.gap == "" and c.buf == "", "--bare still sent a delimiter"
            assert second["result"] == ["Vol1n1"], second
            assert t1 - t0 >= 0.004 and t2 - t0 >= 0.06, (t1 - t0, t2 - t0)
            # A sync call costs the poller latency.
            t0 = time.monotonic()
            c.call("bdev_get_bdevs")
            assert time.monotonic() - t0 >= 0.004


@check
def batches_and_notifications():
    """04: a batch gets one array in request order; a notification no reply (one that
    fails still gets its error with id null, as jsonrpc_server.c sends every error)."""
    with SpdkDouble("dpu", latency="4-8") as spdk, RawClient(spdk.sock("dpu")) as c:
        c.send_raw('[{"jsonrpc":"2.0","method":"spdk_get_version","id":9},'
                   '{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{"name":"nope"},"id":10},'
                   '{"jsonrpc":"2.0","method":"spdk_get_version"}]')
        _, raw = c.recv_raw()
        assert c.buf == "\n", "src jsonrpc_server.c ends each reply with a newline"
        assert raw == ('[{"jsonrpc":"2.0","id":9,"result":{"version":"SPDK v26.05","fields":'
                       '{"major":26,"minor":5,"patch":0,"suffix":""}}},{"jsonrpc":"2.0","id":10,'
                       '"error":{"code":-19,"message":"No such device"}}]'), raw
        c.send_raw('{"jsonrpc":"2.0","method":"bdev_malloc_create","params":'
                   '{"name":"N","num_blocks":8,"block_size":512}}\n  \n'
                   '{"method":"bdev_get_bdevs","params":{"name":"nope"}}'
                   '{"method":"spdk_get_version","id":"s"}')
        got = sorted((c.recv_raw() for _ in range(2)), key=lambda v: str(v[0]["id"]))
        assert got[0][1] == \
            '{"jsonrpc":"2.0","id":null,"error":{"code":-19,"message":"No such device"}}'
        assert got[1][0]["id"] == "s" and c.idle(0.03)
        assert c.call("bdev_get_bdevs", {"name": "N"})[0]["num_blocks"] == 8
        c.send_raw('[{"method":"spdk_get_version"}]')                     # all notifications
        c.send_raw('[]{"jsonrpc":"2.0","id":5}{"method":7,"id":6}{"method":"x","id":[1]}'
                   '{"jsonrpc":"1.0","method":"spdk_get_version","id":7}'
                   '{"method":"spdk_get_version","id":8,"params":"x"}')
        invalid = '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}'
        got = sorted(c.recv_raw()[1] for _ in range(6))         # latency may reorder them
        assert got == sorted([invalid] * 5 + ['{"jsonrpc":"2.0","id":8,"error":{"code":-32600,'
                                              '"message":"Invalid request"}}']), got
        assert c.idle(0.03)
        c.send_raw('{"method":"spdk_get_version","id":9,"par')             # split mid-value
        time.sleep(0.02)
        c.send_raw('ams":null}')
        assert c.recv_raw()[0]["id"] == 9
        c.send_raw('{"method": nope}')                                     # invalid JSON
        try:
            c.recv_raw(2.0)
            raise AssertionError("the connection stayed open")
        except ConnectionError:
            pass


@check
def decode_errors_per_method():
    """The same bad input answers differently per method (04; src decoders)."""
    with SpdkDouble("dpu") as spdk:
        d = spdk.sock("dpu")
        cases = [
            ("bdev_malloc_create", {"name": "X", "num_blocks": 8, "block_size": 512, "x": 1},
             -32603, "spdk_json_decode_object failed"),
            ("bdev_malloc_create", {"name": "X", "num_blocks": True, "block_size": 512},
             -32603, "spdk_json_decode_object failed"),
            ("bdev_malloc_create", {"name": "X", "num_blocks": -1, "block_size": 512},
             -32603, "spdk_json_decode_object failed"),
            ("bdev_malloc_create", None, -32603, "spdk_json_decode_object failed"),
            ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:a", "x": 1},
             -32602, "Invalid parameters"),
            ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:a",
                                       "serial_number": "S" * 21}, -32602, "Invalid parameters"),
            ("nvmf_get_subsystems", {"x": 1}, -32602, "Invalid parameters"),
            ("notify_get_notifications", {"id": "0"}, -32602, "Invalid argument"),
            ("notify_get_types", {}, -32602, "No parameters required"),
            ("vhost_delete_controller", {"ctrlr": 1}, -32602, "Invalid argument"),
            ("vhost_get_controllers", {"name": "nope"}, -32603, "No such device"),
            ("bdev_nvme_get_controllers", {"name": "nope"}, -22, "Controller nope does not exist"),
            ("bdev_nvme_attach_controller", dict(ATTACH, disable_sq_flow_control=False),
             -32603, "spdk_json_decode_object failed"),
            ("bdev_null_resize", {"name": "nope", "new_size": 1}, -19, "No such device"),
            ("bdev_lvol_resize", {"name": "nope", "size_in_mib": 1}, -19, "No such device"),
            ("bdev_rbd_get_clusters_info", None, -2, "No such file or directory"),
            ("bdev_aio_create", {"name": "A", "filename": spdk.path("nope")},
             -2, "No such file or directory"),
            ("spdk_kill_instance", {"sig_name": "SIGFOO"}, -32602, "Invalid parameters"),
        ]
        for method, params, code, message in cases:
            try:
                call(d, method, params)
                raise AssertionError("%s %s succeeded" % (method, params))
            except RpcError as e:
                assert (e.code, e.message) == (code, message), (method, params, e.code, e.message)


@check
def qos_limits():
    """bdev_set_qos_limit (src bdev_rpc.c, bdev.c; no recording): limits not given keep their
    value, MB/s are whole MiB, an IOPS limit off the 1000 grid is rounded up (not refused),
    0 removes a limit; bdev_get_bdevs shows them as assigned_rate_limits."""
    with SpdkDouble("dpu") as spdk:
        d = spdk.sock("dpu")
        call(d, "bdev_null_create", {"name": "Q", "num_blocks": 2048, "block_size": 512})
        limits = lambda: call(d, "bdev_get_bdevs", {"name": "Q"})[0]["assigned_rate_limits"]
        assert limits() == {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0,
                            "w_mbytes_per_sec": 0}
        assert call(d, "bdev_set_qos_limit", {"name": "Q", "rw_ios_per_sec": 20000,
                                              "w_mbytes_per_sec": 5}) is True
        call(d, "bdev_set_qos_limit", {"name": "Q", "r_mbytes_per_sec": 7})
        assert limits() == {"rw_ios_per_sec": 20000, "rw_mbytes_per_sec": 0,
                            "r_mbytes_per_sec": 7, "w_mbytes_per_sec": 5}, limits()
        call(d, "bdev_set_qos_limit", {"name": "Q", "rw_ios_per_sec": 1500,
                                       "w_mbytes_per_sec": 0})
        assert limits()["rw_ios_per_sec"] == 2000 and limits()["w_mbytes_per_sec"] == 0
        for params, code, message in [
            ({"name": "Q"}, -22, "No rate limits specified"),
            ({"name": "nope", "rw_ios_per_sec": 1000}, -19, "No such device"),
            ({"name": "Q", "rw_ios_per_sec": -1}, -32603, "spdk_json_decode_object failed"),
            ({"name": "Q", "iops": 1}, -32603, "spdk_json_decode_object failed"),
        ]:
            try:
                call(d, "bdev_set_qos_limit", params)
                raise AssertionError("%s succeeded" % params)
            except RpcError as e:
                assert (e.code, e.message) == (code, message), (params, e.code, e.message)
    return "set, keep, round up, remove, errors"


@check
def daemon_call_shapes():
    """Each call shape metalvirtd sends is accepted; an unknown key is refused where SPDK
    decodes strictly and ignored where it decodes relaxed (add_listener, add_ns,
    create_transport, vhost_create_blk_controller)."""
    mv = "mv-0123456789abcdef0123456789abcdef"
    nqn = "nqn.2026-11.io.metalvirt:" + mv
    with SpdkDouble("storage", "dpu") as spdk:
        storage_volume(spdk)
        d = spdk.sock("dpu")
        spdk.control("double_ceph_create", {"mon_host": "10.0.0.1:6789", "key": "AQB==",
                                            "pool": "rbd", "image": "img", "size_mib": 64})
        img = spdk.path("disk.img")
        with open(img, "wb") as f:
            f.truncate(8 * 1024 * 1024)
        shapes = [
            ("bdev_nvme_attach_controller", dict(ATTACH, name=mv + "-vda"), [mv + "-vdan1"]),
            ("bdev_get_bdevs", {"name": mv + "-vdan1"}, None),
            ("bdev_get_bdevs", None, None),
            ("bdev_get_iostat", None, None),
            ("bdev_nvme_get_controllers", {"name": mv + "-vda"}, None),
            ("bdev_nvme_get_controllers", None, None),
            ("bdev_rbd_register_cluster", {"name": mv + "-c", "user_id": "admin",
                                           "config_param": {"mon_host": "10.0.0.1:6789",
                                                            "key": "AQB=="}}, mv + "-c"),
            ("bdev_rbd_get_clusters_info", {"name": mv + "-c"}, None),
            ("bdev_rbd_create", {"name": mv + "-vdb", "pool_name": "rbd", "rbd_name": "img",
                                 "block_size": 512, "cluster_name": mv + "-c"}, mv + "-vdb"),
            ("bdev_rbd_resize", {"name": mv + "-vdb", "new_size": 128}, True),
            ("bdev_aio_create", {"name": mv + "-vdc", "filename": img, "block_size": 512},
             mv + "-vdc"),
            ("nvmf_create_transport", {"trtype": "VFIOUSER"}, True),
            ("nvmf_create_transport", {"trtype": "TCP"}, True),
            ("nvmf_get_transports", None, None),
            ("nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": True,
                                       "serial_number": "MV0123456789ABCDEF",
                                       "model_number": "metalvirt disk", "max_namespaces": 8},
             True),
            ("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": {
                "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4430"}},
             True),
            ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {
                "bdev_name": mv + "-vdan1", "nsid": 1,
                "uuid": "0a1b2c3d-0000-4000-8000-000000000001",
                "nguid": "0A1B2C3D000040008000000000000001"}}, 1),
            ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {
                "bdev_name": mv + "-vdb", "uuid": "0a1b2c3d-0000-4000-8000-000000000002",
                "nguid": "0A1B2C3D000040008000000000000002"}}, 2),
            ("nvmf_get_subsystems", {"nqn": nqn}, None),
            ("nvmf_get_subsystems", None, None),
            ("nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": 2}, True),
            ("vhost_create_blk_controller", {"ctrlr": mv + "-vdc", "dev_name": mv + "-vdc",
                                             "readonly": True}, True),
            ("vhost_get_controllers", {"name": mv + "-vdc"}, None),
            ("vhost_get_controllers", None, None),
            ("vhost_delete_controller", {"ctrlr": mv + "-vdc"}, True),
            ("notify_get_notifications", {"id": 0, "max": 100}, None),
            ("spdk_get_version", None, None),
            ("bdev_rbd_delete", {"name": mv + "-vdb"}, True),
            ("bdev_rbd_unregister_cluster", {"name": mv + "-c"}, True),
            ("bdev_aio_delete", {"name": mv + "-vdc"}, True),
            ("nvmf_delete_subsystem", {"nqn": nqn}, True),
            ("bdev_nvme_detach_controller", {"name": mv + "-vda"}, True),
        ]
        for method, params, want in shapes:
            got = call(d, method, params)
            if want is not None:
                assert got == want, (method, got)
        b = call(d, "notify_get_notifications", {"id": 0, "max": 100})
        assert ("bdev_resize", mv + "-vdb") in [(e["type"], e["ctx"]) for e in b]
        strict = [("bdev_get_bdevs", {"name": "x", "bogus": 1}),
                  ("bdev_nvme_detach_controller", {"name": "x", "bogus": 1}),
                  ("bdev_iscsi_create", {"name": "x", "initiator_iqn": "iqn.x", "url": "u",
                                         "bogus": 1}),
                  ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "x",
                                                                       "bogus": 1}}),
                  ("bdev_rbd_create", {"pool_name": "p", "rbd_name": "r", "block_size": 512,
                                       "bogus": 1}),
                  ("vhost_delete_controller", {"ctrlr": "x", "bogus": 1})]
        for method, params in strict:
            try:
                call(d, method, params)
                raise AssertionError("%s accepted an unknown key" % method)
            except RpcError as e:
                assert e.code in (-32602, -32603), (method, e.code)
        call(d, "bdev_malloc_create", {"name": "M", "num_blocks": 64, "block_size": 512})
        call(d, "nvmf_create_subsystem", {"nqn": nqn})
        assert call(d, "nvmf_subsystem_add_ns", {"nqn": nqn, "bogus": 1,
                                                 "namespace": {"bdev_name": "M"}}) == 1
        assert call(d, "vhost_create_blk_controller", {"ctrlr": "v", "dev_name": "M",
                                                       "readonly": True, "bogus": 1})


@check
def fabric_semantics():
    """Exported bdevs are claimed; deleting the source removes the remote namespace and
    the exported namespace with it; a killed target leaves its host's controller failed;
    iSCSI CHAP; vfio-user attach; a restart empties an instance."""
    with SpdkDouble("storage", "dpu", "host") as spdk:
        S, D, H = spdk.sock("storage"), spdk.sock("dpu"), spdk.sock("host")
        storage_volume(spdk)
        assert call(D, "bdev_nvme_attach_controller", ATTACH) == ["Vol1n1"]
        call(D, "nvmf_create_transport", {"trtype": "TCP"})
        call(D, "nvmf_create_subsystem", {"nqn": HOST1, "allow_any_host": True})
        call(D, "nvmf_subsystem_add_ns", {"nqn": HOST1, "namespace": {"bdev_name": "Vol1n1"}})
        call(D, "nvmf_subsystem_add_listener", {"nqn": HOST1, "listen_address": {
            "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4421"}})
        try:                                       # the port belongs to the storage process
            call(D, "nvmf_subsystem_add_listener", {"nqn": HOST1, "listen_address": {
                "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"}})
            raise AssertionError("two processes listen on 4420")
        except RpcError as e:
            assert (e.code, e.message) == (-32602, "Invalid parameters")
        assert call(H, "bdev_nvme_attach_controller", dict(
            ATTACH, name="H", trsvcid="4421", subnqn=HOST1)) == ["Hn1"]
        try:
            call(D, "vhost_create_blk_controller", {"ctrlr": "v0", "dev_name": "Vol1n1"})
            raise AssertionError("vhost opened a claimed bdev for writing")
        except RpcError as e:
            assert (e.code, e.message) == (-32602, "Operation not permitted")
        assert call(S, "bdev_null_delete", {"name": "Null0"}) is True
        assert blocks(spdk, "dpu", "Vol1n1") is None and blocks(spdk, "host", "Hn1") is None
        assert namespaces(spdk, "dpu", HOST1) == []
        # The storage process dies: the DPU's controller stays, failed (ctrlr_loss_timeout 0).
        call(S, "bdev_null_create", {"name": "Null1", "num_blocks": 1024, "block_size": 512})
        call(S, "nvmf_subsystem_add_ns", {"nqn": "nqn.2016-06.io.spdk:vol1",
                                          "namespace": {"bdev_name": "Null1"}})
        assert blocks(spdk, "dpu", "Vol1n1") == 1024
        assert call(S, "spdk_kill_instance", {"sig_name": "SIGTERM"}) is True
        deadline = time.monotonic() + 3
        while os.path.exists(S) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(S)
        ctrl = call(D, "bdev_nvme_get_controllers", {"name": "Vol1"})[0]["ctrlrs"][0]
        assert ctrl["state"] == "failed" and blocks(spdk, "dpu", "Vol1n1") == 1024
        # vfio-user: the host attaches to a DPU subsystem through its directory.
        os.makedirs(spdk.path("vfu", "c0"))
        call(D, "nvmf_create_transport", {"trtype": "VFIOUSER"})
        call(D, "bdev_malloc_create", {"name": "VM", "num_blocks": 2048, "block_size": 512})
        call(D, "nvmf_create_subsystem", {"nqn": "nqn.2019-07.io.spdk:vfu0",
                                          "allow_any_host": True})
        call(D, "nvmf_subsystem_add_ns", {"nqn": "nqn.2019-07.io.spdk:vfu0",
                                          "namespace": {"bdev_name": "VM"}})
        vfu = {"trtype": "VFIOUSER", "traddr": spdk.path("vfu", "c0"), "trsvcid": "0"}
        try:                                       # R gotcha 5: no adrfam for VFIOUSER
            call(D, "nvmf_subsystem_add_listener", {"nqn": "nqn.2019-07.io.spdk:vfu0",
                                                    "listen_address": dict(vfu, adrfam="ipv4")})
            raise AssertionError("VFIOUSER listener with adrfam")
        except RpcError as e:
            assert e.code == -32602
        call(D, "nvmf_subsystem_add_listener", {"nqn": "nqn.2019-07.io.spdk:vfu0",
                                                "listen_address": vfu})
        assert call(H, "bdev_nvme_attach_controller", {
            "name": "Vfu0", "trtype": "vfiouser", "traddr": spdk.path("vfu", "c0")}) == ["Vfu0n1"]
        b = call(H, "bdev_get_bdevs", {"name": "Vfu0n1"})[0]
        assert "memory_domains" not in b and b["num_blocks"] == 2048
        assert b["driver_specific"]["nvme"][0]["ctrlr_data"]["vendor_id"] == "0x4e58"
        assert b["driver_specific"]["nvme"][0]["trid"] == {
            "trtype": "VFIOUSER", "traddr": spdk.path("vfu", "c0")}
        # A restart empties the DPU; its host loses the vfio-user controller's target.
        assert spdk.control("double_restart", {"role": "dpu"}, role="host") is True
        assert call(D, "bdev_get_bdevs") == []
        assert call(H, "bdev_nvme_get_controllers", {"name": "Vfu0"})[0]["ctrlrs"][0][
            "state"] == "failed"
        assert not os.path.exists(spdk.path("vfu", "c0", "cntrl"))


@check
def host_admission():
    """nvmf_subsystem_add_host / remove_host (src nvmf_rpc.c, subsystem.c, tcp.c): without
    allow_any_host only listed hosts connect; the list shows the newest first; a removed
    host's controller is disconnected and its reconnects are refused until it is added
    again; the errors SPDK answers (no keyring in the double: any key name is unknown)."""
    nqn = "nqn.2016-06.io.spdk:vol1"
    host_a, host_b = "nqn.2016-06.io.spdk:host-a", "nqn.2016-06.io.spdk:host-b"

    def hosts(sock, subnqn=nqn):
        return [h["nqn"] for h in call(sock, "nvmf_get_subsystems", {"nqn": subnqn})[0]["hosts"]]

    def refused(sock, method, params, code, message):
        try:
            call(sock, method, params)
            raise AssertionError("%s %s succeeded" % (method, params))
        except RpcError as e:
            assert (e.code, e.message) == (code, message), (method, params, e.code, e.message)

    def state(sock, name):
        return call(sock, "bdev_nvme_get_controllers", {"name": name})[0]["ctrlrs"][0]["state"]

    with SpdkDouble("storage", "dpu") as spdk:
        S, D = spdk.sock("storage"), spdk.sock("dpu")
        call(S, "bdev_null_create", {"name": "Null0", "num_blocks": 1024, "block_size": 4096})
        call(S, "nvmf_create_transport", {"trtype": "TCP"})
        call(S, "nvmf_create_subsystem", {"nqn": nqn})
        call(S, "nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "Null0"}})
        call(S, "nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": {
            "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"}})
        attach = dict(ATTACH, hostnqn=host_a, ctrlr_loss_timeout_sec=-1, reconnect_delay_sec=1)
        refused(D, "bdev_nvme_attach_controller", attach, -5, "Input/output error")
        assert call(S, "nvmf_subsystem_add_host", {"nqn": nqn, "host": host_b}) is True
        assert call(S, "nvmf_subsystem_add_host", {"nqn": nqn, "host": host_a}) is True
        assert hosts(S) == [host_a, host_b]                    # TAILQ_INSERT_HEAD
        assert call(D, "bdev_nvme_attach_controller", attach) == ["Vol1n1"]
        assert [c["hostnqn"] for c in call(S, "nvmf_subsystem_get_controllers",
                                           {"nqn": nqn})] == [host_a]
        for params, code, message in [
                ({"nqn": nqn, "host": host_a}, -32603, "Internal error"),        # already there
                ({"nqn": nqn + "x", "host": host_a}, -32602, "Invalid parameters"),
                ({"nqn": nqn, "host": "host-c"}, -32603, "Internal error"),      # invalid NQN
                ({"nqn": nqn, "host": "nqn.2016-06.io.spdk:c", "dhchap_key": "k0"},
                 -32602, "Invalid parameters"),                                  # no such key
                ({"nqn": nqn, "host": "nqn.2016-06.io.spdk:c", "psk": "k0"},
                 -32603, "Internal error"),                        # TCP transport: no such key
                ({"nqn": nqn}, -32602, "Invalid parameters"),
                ({"nqn": nqn, "host": host_a, "tgt_name": "t"}, -32603,
                 "Unable to find a target.")]:
            refused(S, "nvmf_subsystem_add_host", params, code, message)
        assert hosts(S) == [host_a, host_b]
        # Relaxed decoding: unknown keys are ignored; psk is only read by a TCP transport.
        call(D, "nvmf_create_subsystem", {"nqn": HOST1})
        assert call(D, "nvmf_subsystem_add_host", {"nqn": HOST1, "host": host_a, "psk": 1,
                                                   "x": 1}) is True
        assert hosts(D, HOST1) == [host_a]
        # Removal: the controller goes, its reconnects are refused, then admitted again.
        assert call(S, "nvmf_subsystem_remove_host", {"nqn": nqn, "host": host_a,
                                                      "timeout_ms": 1000}) is True
        assert hosts(S) == [host_b]
        assert call(S, "nvmf_subsystem_get_controllers", {"nqn": nqn}) == []
        assert state(D, "Vol1") == "reconnect_is_delayed"
        time.sleep(1.3)
        assert state(D, "Vol1") == "reconnect_is_delayed"
        refused(D, "bdev_nvme_attach_controller", dict(attach, name="V2"), -5,
                "Input/output error")
        for params, code, message in [
                ({"nqn": nqn, "host": host_a}, -32603, "Internal error"),        # not there
                ({"nqn": nqn + "x", "host": host_b}, -32602, "Invalid parameters"),
                ({"nqn": nqn, "host": host_b, "x": 1}, -32602, "Invalid parameters"),
                ({"nqn": nqn, "host": host_b, "tgt_name": "t"}, -32603,
                 "Unable to find a target.")]:
            refused(S, "nvmf_subsystem_remove_host", params, code, message)
        assert call(S, "nvmf_subsystem_add_host", {"nqn": nqn, "host": host_a}) is True
        deadline = time.monotonic() + 3
        while state(D, "Vol1") != "enabled" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state(D, "Vol1") == "enabled" and blocks(spdk, "dpu", "Vol1n1") == 1024
        assert [c["hostnqn"] for c in call(S, "nvmf_subsystem_get_controllers",
                                           {"nqn": nqn})] == [host_a]
    return "add/remove, admission, disconnect on removal, errors"


@check
def iscsi_chap_and_rbd():
    """iSCSI CHAP through an auth group; wrong secret is the same login error; Ceph images
    resized outside SPDK reach the rbd bdev."""
    with SpdkDouble("storage", "dpu") as spdk:
        S, D = spdk.sock("storage"), spdk.sock("dpu")
        call(S, "bdev_malloc_create", {"name": "L", "num_blocks": 4096, "block_size": 512})
        call(S, "iscsi_create_portal_group", {"tag": 1, "portals": [
            {"host": "127.0.0.1", "port": "3260"}]})
        dpu_iqn = "iqn.2016-06.io.spdk:dpu"
        call(S, "iscsi_create_initiator_group", {"tag": 2, "initiators": [dpu_iqn],
                                                 "netmasks": ["127.0.0.1/32"]})
        call(S, "iscsi_create_auth_group", {"tag": 3, "secrets": [{"user": "u", "secret": "s3"}]})
        call(S, "iscsi_create_target_node", {
            "name": "vol", "alias_name": "vol", "luns": [{"bdev_name": "L", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64,
            "require_chap": True, "chap_group": 3})
        base = "iscsi://%s127.0.0.1:3260/iqn.2016-06.io.spdk:vol/0"
        for name, iqn, auth in (("I1", "iqn.2016-06.io.spdk:dpu", "u%bad@"),
                                ("I2", "iqn.2016-06.io.spdk:other", "u%s3@"),
                                ("I3", "iqn.2016-06.io.spdk:dpu", "")):
            try:
                call(D, "bdev_iscsi_create", {"name": name, "initiator_iqn": iqn,
                                              "url": base % auth})
                raise AssertionError("login %s succeeded" % name)
            except RpcError as e:
                assert (e.code, e.message) == (-32602, "iSCSI error (251658241)."), e
        assert call(D, "bdev_iscsi_create", {"name": "I0", "initiator_iqn": dpu_iqn,
                                             "url": base % "u%s3@"}) == "I0"
        b = call(D, "bdev_get_bdevs", {"name": "I0"})[0]
        assert b["supported_io_types"]["unmap"] and "numa_id" not in b
        # Ceph: unknown key -> -1; then create, grow outside SPDK, grow through SPDK.
        spdk.control("double_ceph_create", {"mon_host": "10.1.1.1", "user": "cinder",
                                            "key": "K1", "pool": "vols", "image": "v1",
                                            "size_mib": 16})
        try:
            call(D, "bdev_rbd_register_cluster", {"name": "c", "user_id": "cinder",
                                                  "config_param": {"mon_host": "10.1.1.1",
                                                                   "key": "K2"}})
            raise AssertionError("wrong Ceph key accepted")
        except RpcError as e:
            assert (e.code, e.message) == (-1, "Operation not permitted")
        call(D, "bdev_rbd_register_cluster", {"name": "c", "user_id": "cinder",
                                              "config_param": {"mon_host": "10.1.1.1",
                                                               "key": "K1"}})
        assert call(D, "bdev_rbd_create", {"pool_name": "vols", "rbd_name": "v1",
                                           "block_size": 4096, "cluster_name": "c"}) == "Ceph0"
        assert blocks(spdk, "dpu", "Ceph0") == 4096
        spdk.control("double_ceph_resize", {"mon_host": "10.1.1.1", "pool": "vols",
                                            "image": "v1", "size_mib": 32})
        assert blocks(spdk, "dpu", "Ceph0") == 8192
        for size, code in ((16, -22), (64, None)):
            try:
                call(D, "bdev_rbd_resize", {"name": "Ceph0", "new_size": size})
                assert code is None
            except RpcError as e:
                assert e.code == code, e
        assert blocks(spdk, "dpu", "Ceph0") == 16384
        try:
            call(D, "bdev_rbd_unregister_cluster", {"name": "c"})
            raise AssertionError("unregistered a cluster in use")
        except RpcError as e:
            assert e.code == -1


@check
def test_controls():
    """double_rule (error, delay, hang, skip, match), double_calls, double_latency."""
    with SpdkDouble("dpu") as spdk, RawClient(spdk.sock("dpu")) as c:
        c.call("double_rule", {"method": "bdev_malloc_create", "match": {"name": "B"},
                               "error": {"code": -12, "message": "Cannot allocate memory"},
                               "skip": 1})
        params = {"name": "A", "num_blocks": 8, "block_size": 512}
        assert c.call("bdev_malloc_create", params) == "A"
        assert c.call("bdev_malloc_create", dict(params, name="B")) == "B"      # skipped
        call(spdk.sock("dpu"), "bdev_malloc_delete", {"name": "B"})
        try:
            c.call("bdev_malloc_create", dict(params, name="B"))
            raise AssertionError("rule did not fire")
        except RpcError as e:
            assert (e.code, e.message) == (-12, "Cannot allocate memory")
        assert c.call("bdev_get_bdevs", {"name": "A"})
        c.call("double_rule", {"method": "spdk_get_version", "hang": True})
        c.call("double_rule", {"method": "bdev_get_bdevs", "delay_ms": 80})
        hung = c.request("spdk_get_version")
        t0 = time.monotonic()
        assert c.call("bdev_get_bdevs") is not None and time.monotonic() - t0 >= 0.08
        assert c.call("spdk_get_version") == call(spdk.sock("dpu"), "spdk_get_version")
        assert hung not in c.stash and c.idle(0.05)
        calls = c.call("double_calls", {"clear": True})
        assert calls[0] == {"role": "dpu", "method": "bdev_malloc_create", "params": params}
        assert [x["method"] for x in calls].count("spdk_get_version") == 3
        assert c.call("double_calls") == []
        assert c.call("double_latency", {"min_ms": 20, "max_ms": 20})["attach_ms"] == 0
        t0 = time.monotonic()
        c.call("bdev_get_bdevs")
        assert time.monotonic() - t0 >= 0.02


@check
def real_client_against_the_double():
    """PyPI spdk 26.9 (spdk-rpc and spdk.rpc.client) from the peers venv, with the keys it
    sends by default. Its bdev_nvme_attach_controller adds disable_sq_flow_control, which
    v26.05 does not know (added in July 2026): a real v26.05 target refuses it, and so does
    the double."""
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py) or \
            subprocess.run([py, "-c", "import spdk"], capture_output=True).returncode != 0:
        raise Skip("no `spdk` package in %s (scripts/install-deps.sh installs it)" % VENV)
    rpc = os.path.join(VENV, "bin", "spdk-rpc")
    with SpdkDouble("storage", "dpu") as spdk:
        S, D = spdk.sock("storage"), spdk.sock("dpu")
        nqn = "nqn.2016-06.io.spdk:cli"
        lines = [
            "-s %s bdev_malloc_create -b M0 64 4096" % S,
            "-s %s bdev_get_bdevs -b M0" % S,
            "-s %s nvmf_create_transport -t TCP" % S,
            "-s %s nvmf_create_subsystem %s -a -s SER1 -d MOD1 -m 16" % (S, nqn),
            "-s %s nvmf_subsystem_add_ns %s M0" % (S, nqn),
            "-s %s nvmf_subsystem_add_listener %s -t tcp -a 127.0.0.1 -s 4420 -f ipv4" % (S, nqn),
            "-s %s bdev_null_create N0 64 512" % D,
            "-s %s vhost_create_blk_controller vhost.0 N0" % D,
            "-s %s nvmf_get_subsystems" % S,
            "-s %s bdev_nvme_attach_controller -b V -t tcp -a 127.0.0.1 -f ipv4 -s 4420 -n %s"
            % (D, nqn),
        ]
        out = subprocess.run([rpc, "--server"], input="\n".join(lines) + "\n",
                             capture_output=True, text=True, timeout=60).stdout
        statuses = re.findall(r"\*\*STATUS=(\d)", out)
        assert statuses == ["0"] * 9 + ["1"], out
        assert "spdk_json_decode_object failed" in out.split("**STATUS=0")[-1], out
        sent = {c["method"]: c["params"] for c in spdk.control("double_calls")}
        assert sent["bdev_malloc_create"] == {"num_blocks": 16384, "block_size": 4096,
                                              "name": "M0", "md_interleave": False,
                                              "dif_is_head_of_md": False}, sent
        assert sent["nvmf_subsystem_add_ns"]["namespace"] == {"bdev_name": "M0",
                                                              "no_auto_visible": False}
        assert "disable_sq_flow_control" in sent["bdev_nvme_attach_controller"]
        script = (
            "import json, sys\n"
            "from spdk.rpc.client import JSONRPCClient\n"
            "c = JSONRPCClient(sys.argv[1])\n"
            "r = c.call('bdev_nvme_attach_controller', json.loads(sys.argv[2]))\n"
            "b = c.bdev_get_bdevs(name=r[0])\n"
            "print(json.dumps([r, b[0]['num_blocks'], c.spdk_get_version()['version']]))\n")
        res = subprocess.run([py, "-c", script, D, json.dumps(dict(
            ATTACH, name="V", subnqn=nqn))], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == [["Vn1"], 16384, "SPDK v26.05"], res.stdout
    return "spdk-rpc and JSONRPCClient accepted; CLI attach refused as by v26.05"


class Contract(unittest.TestCase):
    """One case per check in CHECKS, in their order (unittest sorts by name: the names carry
    the position)."""


# What the checks report besides passing (printed at the end: unittest's verbose lines
# carry only names and verdicts).
NOTES = []


def _case(fn):
    def case(self):
        try:
            note = fn()
        except Skip as e:
            self.skipTest(str(e))
        if note:
            NOTES.append("%s: %s" % (fn.__name__, note))
    case.__doc__ = fn.__doc__
    return case


for _i, _fn in enumerate(CHECKS):
    setattr(Contract, "test_%02d_%s" % (_i, _fn.__name__), _case(_fn))


def tearDownModule():
    for note in NOTES:
        print("note  " + note, file=sys.stderr)
    for (f, role, rid), why in sorted(SKIPS.items()):
        print("note  not replayed: %s [%s] id %s: %s" % (f, role, rid, why), file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
