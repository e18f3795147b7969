"""Helpers for tests that need SPDK: `SpdkDouble` runs the `spdk_double` package (a double
of spdk_tgt v26.05, see its docstring) in a temp dir, one unix socket per role, and stops
it (its whole process group) and removes the dir on exit; `call` and `Client` speak SPDK's
JSON-RPC with a streaming decoder (responses are bare concatenated JSON values).

    with SpdkDouble("storage", "dpu", latency="4-8") as spdk:
        call(spdk.sock("dpu"), "bdev_get_bdevs")
"""

import json
import os
import socket
import subprocess
import sys
import time

from .peers import _Process

# The directory holding this package: the double runs as `python3 -m blackbox.spdk_double`
# with it on the module path, from any working directory.
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RpcError(Exception):
    def __init__(self, error):
        super().__init__("%s %s" % (error.get("code"), error.get("message")))
        self.code = error.get("code")
        self.message = error.get("message")


class Client:
    """A JSON-RPC connection to one socket; replies are matched by id."""

    def __init__(self, sock_path, timeout=30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(sock_path)
        self.buf = ""
        self.decoder = json.JSONDecoder()
        self.next_id = 0
        self.stash = {}

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv_value(self):
        """The next complete JSON value from the stream."""
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    value, end = self.decoder.raw_decode(text)
                    self.buf = text[end:]
                    return value
                except ValueError:
                    pass
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the server")
            self.buf += data.decode()

    def request(self, method, params=None):
        self.next_id += 1
        req = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        if params is not None:
            req["params"] = params
        self.send_raw(json.dumps(req))
        return self.next_id

    def reply(self, rid):
        while rid not in self.stash:
            v = self.recv_value()
            self.stash[v.get("id") if isinstance(v, dict) else None] = v
        return self.stash.pop(rid)

    def call(self, method, params=None):
        r = self.reply(self.request(method, params))
        if "error" in r:
            raise RpcError(r["error"])
        return r["result"]


def call(sock_path, method, params=None, timeout=30.0):
    """One request on a fresh connection; raises RpcError on an error reply."""
    with Client(sock_path, timeout) as c:
        return c.call(method, params)


class SpdkDouble(_Process):
    """The double in its own session on a temp dir, sockets `<dir>/<role>.sock`, started at
    __enter__ (waits for its `ready` line) and killed with its group at __exit__."""

    prefix = "metalvirt-spdk"

    def __init__(self, *roles, latency=None, attach_latency=None, bare=False, log=True):
        super().__init__()
        self.roles = roles or ("dpu",)
        self.bare = bare
        self.latency = latency
        self.attach_latency = attach_latency
        self.want_log = log
        self.stderr = None

    def sock(self, role):
        return os.path.join(self.dir, role + ".sock")

    def start(self):
        argv = [sys.executable, "-m", "blackbox.spdk_double"]
        for role in self.roles:
            argv += ["--sock", "%s=%s" % (role, self.sock(role))]
        if self.latency is not None:
            argv += ["--latency", str(self.latency)]
        if self.attach_latency is not None:
            argv += ["--attach-latency", str(self.attach_latency)]
        if self.bare:
            argv.append("--bare")
        if self.want_log:
            argv += ["--log", self.path("double.log")]
        self.stderr = open(self.path("stderr.log"), "wb")
        env = dict(os.environ, PYTHONPATH=TESTS)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr, cwd=self.dir, env=env,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("spdk_double did not start: %r\n%s" % (line, self.errors()))

    def errors(self):
        try:
            with open(self.path("stderr.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def call(self, role, method, params=None):
        return call(self.sock(role), method, params)

    def control(self, method, params=None, role=None):
        return call(self.sock(role or self.roles[0]), method, params)

    def stop(self):
        if self.proc is not None:
            self.proc.stdout.close()
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None
        super().stop()


def wait_until(pred, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out")


def storage_exports(sock, chap=None):
    """The storage target's standing exports the disk tests use (05-iscsi.txt,
    01-nvmf-chain.txt): an NVMe/TCP transport, an iSCSI portal on 127.0.0.1:3260 open to any
    initiator and, with `chap` = (user, secret), a CHAP auth group (tag 1)."""
    call(sock, "nvmf_create_transport", {"trtype": "TCP"})
    call(sock, "iscsi_create_portal_group",
         {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]})
    call(sock, "iscsi_create_initiator_group",
         {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})
    if chap:
        call(sock, "iscsi_create_auth_group",
             {"tag": 1, "secrets": [{"user": chap[0], "secret": chap[1]}]})


STORAGE_NQN = "nqn.2016-06.io.spdk"


def nvmf_volume(storage_sock, name, mib):
    """An NVMe-oF cloud volume on the storage target: a null bdev as namespace 1 of
    nqn.2016-06.io.spdk:<name>, listening at 127.0.0.1:4420 (01-nvmf-chain.txt)."""
    nqn = f"{STORAGE_NQN}:{name}"
    bdev = f"N-{name}"
    call(storage_sock, "bdev_null_create",
         {"name": bdev, "num_blocks": mib * 256, "block_size": 4096})
    call(storage_sock, "nvmf_create_subsystem",
         {"nqn": nqn, "allow_any_host": True, "serial_number": "VOL" + name[-12:].upper(),
          "model_number": "cloud-volume"})
    call(storage_sock, "nvmf_subsystem_add_ns",
         {"nqn": nqn, "namespace": {"bdev_name": bdev, "nsid": 1}})
    call(storage_sock, "nvmf_subsystem_add_listener",
         {"nqn": nqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
                                         "traddr": "127.0.0.1", "trsvcid": "4420"}})
    return nqn


def nvme_disk(target, nqn, boot=None, serial=None, bus="virtio", port="4420"):
    """A <disk> of an NVMe/TCP cloud volume."""
    b = f"<boot order='{boot}'/>" if boot else ""
    s = f"<serial>{serial}</serial>" if serial else ""
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='nvme-tcp' name='{nqn}'><host name='127.0.0.1' port='{port}'/>"
            f"</source><target dev='{target}' bus='{bus}'/>{b}{s}</disk>")


def leftovers(sock, role, key="mv-"):
    """What SPDK `role` (at `sock`) still holds of metalvirt's (of one domain with key
    `mv-<hex>`)."""
    s = call(sock, "double_state", {"role": role})
    out = [f"bdev {n}" for n in s["bdevs"] if n.startswith(key)]
    out += [f"controller {n}" for n in s["controllers"] if n.startswith(key)]
    out += [f"subsystem {n}" for n in s["subsystems"] if f":{key}" in n]
    out += [f"vhost {n}" for n in s["vhost"] if n.startswith(key)]
    out += [f"vfu {n}" for n in s["vfu_endpoints"] if n.startswith(key)]
    return out
