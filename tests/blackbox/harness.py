"""Black-box harness for the Python (libvirt-python) tests of metalvirtd.

Starts the real `metalvirtd` (the environment variable METALVIRTD, else the debug build
target/debug/metalvirtd) on a fresh temporary directory with a fast simulated lab, and
stops it again. Mirrors tests/common/mod.rs. `DaemonCase` is the shared fixture: one fresh
daemon per test, stopped however the test ends.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest

import libvirt

# Fast simulated hardware, so tests spend no time sleeping.
FAST_CONFIG = {
    "watcher": {"interval_ms": 100},
    "sim": {
        "nodes": 4,
        "power_latency_ms": 5,
        "graceful_shutdown_ms": 50,
        "disk_latency_ms": 2,
        "nic_latency_ms": 1,
    },
}

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# libvirt error handler that swallows the default stderr printing; tests look at the
# exceptions instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg):
    """Writes a two-level dict (top-level keys and [section] tables) as TOML."""
    lines = []
    for k, v in cfg.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            for k2, v2 in v.items():
                lines.append(f"{k2} = {_toml_value(v2)}")
    return "\n".join(lines) + "\n"


def merge_config(base, extra):
    """Merges `extra` into a copy of `base`; extra's keys win inside the same section."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


# The debug build of this checkout, used when METALVIRTD is not set.
DEFAULT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target",
                              "debug", "metalvirtd")



def sim_state(state_dir):
    """The simulated lab's hardware state under `state_dir` (see Daemon.sim_state)."""
    lab = {"nodes": {}, "volumes": {}}
    d = os.path.join(state_dir, "sim-lab")
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if not name.endswith(".json"):
            continue
        for attempt in range(5):
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            try:
                data = json.loads(raw)
                break
            except ValueError:
                # The sim rewrites its files in place: this read met a rewrite.
                if attempt == 4:
                    raise
                time.sleep(0.01)
        if name == "volumes.json":
            lab["volumes"] = data
        else:
            lab["nodes"][name[:-5]] = data
    return lab

class DaemonError(RuntimeError):
    pass


class Daemon:
    """A running metalvirtd on its own temp dirs.

    `sim` is a dict of extra [sim] keys; `extra` a TOML string merged on top
    (its keys win inside the same section); `raw` TOML text appended as is (for
    arrays of tables such as the [[node]] inventory). `env` holds extra environment
    variables for the daemon process (e.g. METALVIRT_CRASH_AT); change `self.env` before a
    restart to start it differently on the same directories. `args` are extra command-line
    arguments (e.g. --listen).
    """

    def __init__(self, sim=None, extra="", ceph_secret=True, raw="", env=None, args=()):
        self.ceph_secret = ceph_secret
        self.raw = raw
        self.env = dict(env or {})
        self.args = list(args)
        self.binary = os.environ.get("METALVIRTD") or DEFAULT_BINARY
        if not os.path.exists(self.binary):
            raise DaemonError(f"{self.binary} does not exist: build it (cargo build) or set "
                              "METALVIRTD to the metalvirtd binary")
        cfg = merge_config(FAST_CONFIG, {"sim": dict(sim or {})})
        if extra:
            cfg = merge_config(cfg, tomllib.loads(extra))
        self.config = cfg
        self.dir = None
        self.proc = None

    # -- context manager -------------------------------------------------------

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="metalvirt-pytest")
        try:
            self._write_config()
            self._spawn()
            if self.ceph_secret:
                # What an operator does once per compute host (nova references this uuid
                # as rbd_secret_uuid in every RBD disk's <auth>).
                conn = libvirt.open(self.uri)
                try:
                    define_ceph_secret(conn)
                finally:
                    conn.close()
        except BaseException:
            self._kill()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    # -- process control ---------------------------------------------------------

    def _write_config(self):
        with open(self.path("metalvirtd.toml"), "w") as f:
            f.write(to_toml(self.config))
            if self.raw:
                f.write("\n" + self.raw)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def _spawn(self):
        env = dict(os.environ)
        env.setdefault("METALVIRT_LOG", "info,metalvirt=debug")
        env["NO_COLOR"] = "1"
        env.update(self.env)
        log_start = os.path.getsize(self.path("daemon.log")) if os.path.exists(
            self.path("daemon.log")) else 0
        with open(self.path("daemon.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--config", self.path("metalvirtd.toml"),
                    "--socket-dir", self.path("run"),
                    "--state-dir", self.path("state"),
                    "--config-dir", self.path("etc"),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if "ready" in self.log()[log_start:] and self._socket_accepts():
                return
            rc = self.proc.poll()
            if rc is not None:
                raise DaemonError(f"metalvirtd exited early ({rc}):\n{self.log()}")
            time.sleep(0.02)
        raise DaemonError(f"metalvirtd did not become ready:\n{self.log()}")

    def _socket_accepts(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self):
        """SIGTERM, then SIGKILL if still alive after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, sim=None, remove_sim=()):
        """Stops with SIGTERM and starts again on the same directories. `sim` updates
        [sim] keys and `remove_sim` drops [sim] keys of the config before the start."""
        self.stop()
        if sim or remove_sim:
            section = dict(self.config.get("sim", {}))
            section.update(sim or {})
            for k in remove_sim:
                section.pop(k, None)
            self.config = merge_config(self.config, {})
            self.config["sim"] = section
            self._write_config()
        self._spawn()

    def kill_and_restart(self):
        """SIGKILLs and starts again on the same directories."""
        self._kill()
        self._spawn()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    # -- paths and URIs ------------------------------------------------------------

    @property
    def socket(self):
        return self.path("run", "virtmetald-sock")

    @property
    def ro_socket(self):
        return self.path("run", "virtmetald-sock-ro")

    @property
    def uri(self):
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def ro_uri(self):
        return f"qemu+unix:///system?socket={self.ro_socket}"

    @property
    def state_dir(self):
        return self.path("state")

    @property
    def config_dir(self):
        return self.path("etc")

    def virsh(self, *args, check=True):
        """Runs virsh against this daemon; raises AssertionError on failure when `check`."""
        r = subprocess.run(["virsh", "-q", "-c", self.uri, *args],
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed: {r.stderr}")
        return r

    def log(self):
        try:
            with open(self.path("daemon.log"), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- simulated hardware ----------------------------------------------------------

    def sim_state(self):
        """The simulated lab's hardware state, as {"nodes": {name: state}, "volumes": {...}}
        from its files (state_dir/sim-lab/NODE.json, written once a node changes, and
        volumes.json)."""
        return sim_state(self.state_dir)

    def live_status(self, uuid):
        """A domain's live status as the daemon last recorded it durably: the newest record
        for it in the status commit log (state_dir/domains.log; its file follows within an
        idle moment), else its file; None when it has none."""
        latest, found = None, False
        try:
            with open(os.path.join(self.state_dir, "domains.log"), "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a record being appended
                    rec = json.loads(line)
                    if rec["name"] == uuid:
                        latest, found = rec["xml"], True
        except FileNotFoundError:
            pass
        if found:
            return None if latest is None else json.loads(latest)
        try:
            with open(os.path.join(self.state_dir, "domains", f"{uuid}.json"), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def sim_node_file(self, node):
        """The file of one simulated node's state."""
        return os.path.join(self.state_dir, "sim-lab", f"{node}.json")

    def sim_mapped(self):
        """(disks mapped, NICs plugged) summed over all simulated nodes."""
        disks = nics = 0
        for node in self.sim_state().get("nodes", {}).values():
            disks += len(node.get("disks") or {})
            nics += len(node.get("nics") or {})
        return disks, nics

    def sim_power(self, node):
        """A simulated node's power; a node that never changed has no file and is Off."""
        return self.sim_state()["nodes"].get(node, {}).get("power", "Off")

    def sim_powers(self):
        return {n: v.get("power") for n, v in self.sim_state().get("nodes", {}).items()}


def quietly(fn):
    """Calls fn(), ignoring the libvirt error it may raise (cleanups, calls cut short)."""
    try:
        fn()
    except libvirt.libvirtError:
        pass


def wait_until(predicate, timeout=10.0, interval=0.025, what="condition"):
    """Polls predicate() until it is truthy; returns its value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- events ------------------------------------------------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_event_loop():
    """Registers libvirt's default event implementation once per process and runs it on a
    daemon thread. Must happen before the connection is opened (as nova does)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class EventCollector:
    """Collects domain events of one connection into a thread-safe list.

    Entries are tuples: ("lifecycle", dom_name, uuid, event, detail),
    ("device-removed", name, uuid, alias), ("device-removal-failed", name, uuid, alias),
    ("reboot", name, uuid), or (str(event_id), name, uuid, *args) for anything else.
    """

    def __init__(self, conn):
        start_event_loop()
        self.conn = conn
        self._events = []
        self._cond = threading.Condition()
        self._ids = []

    def _add(self, ev):
        with self._cond:
            self._events.append(ev)
            self._cond.notify_all()

    def register(self, event_id, dom=None):
        """Registers a callback for event_id; returns libvirt's callback id."""
        if event_id == libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE:
            def cb(_c, d, event, detail, _o):
                self._add(("lifecycle", d.name(), d.UUIDString(), event, detail))
        elif event_id == libvirt.VIR_DOMAIN_EVENT_ID_REBOOT:
            def cb(_c, d, _o):
                self._add(("reboot", d.name(), d.UUIDString()))
        elif event_id == libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED:
            def cb(_c, d, alias, _o):
                self._add(("device-removed", d.name(), d.UUIDString(), alias))
        elif event_id == libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED:
            def cb(_c, d, alias, _o):
                self._add(("device-removal-failed", d.name(), d.UUIDString(), alias))
        elif event_id == libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED:
            def cb(_c, d, alias, _o):
                self._add(("device-added", d.name(), d.UUIDString(), alias))
        else:
            def cb(_c, d, *args):
                self._add((str(event_id), d.name(), d.UUIDString()) + tuple(args[:-1]))
        cid = self.conn.domainEventRegisterAny(dom, event_id, cb, None)
        self._ids.append(cid)
        return cid

    def deregister_all(self):
        for cid in self._ids:
            try:
                self.conn.domainEventDeregisterAny(cid)
            except libvirt.libvirtError:
                pass
        self._ids = []

    @property
    def events(self):
        with self._cond:
            return list(self._events)

    def clear(self):
        with self._cond:
            self._events.clear()

    def lifecycle(self, name=None):
        """[(event, detail)] of lifecycle events, optionally for one domain name."""
        return [(e[3], e[4]) for e in self.events
                if e[0] == "lifecycle" and (name is None or e[1] == name)]

    def wait_for(self, predicate, timeout=10.0):
        """Waits until predicate(list_of_events) is truthy; returns the value or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = predicate(list(self._events))
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


CEPH_SECRET_UUID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
CEPH_KEY = b"AQBvbWV0YWx2aXJ0LXRlc3Qta2V5LS0tLS0tLS0tLQ=="


def define_ceph_secret(conn, uuid=CEPH_SECRET_UUID, key=CEPH_KEY):
    """Defines the cinder user's Ceph key as a libvirt secret, as operators do."""
    sec = conn.secretDefineXML(f"""<secret ephemeral='no' private='yes'>
  <uuid>{uuid}</uuid>
  <usage type='ceph'><name>client.cinder secret</name></usage>
</secret>""")
    sec.setValue(key)
    return sec


NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
METALVIRT_NS = "https://metalvirt.dev/xmlns/1"


def pinned_domain_xml(name, node, devices, dom_uuid):
    """A 2-vCPU, 2 GiB domain pinned to `node` with the given device elements."""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>{dom_uuid}</uuid>
  <memory unit='GiB'>2</memory>
  <vcpu>2</vcpu>
  <metadata><mv:node xmlns:mv='{METALVIRT_NS}' name='{node}'/></metadata>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{''.join(devices)}</devices>
</domain>"""


def nova_instance_xml(display_name="web-1", root_volume="11111111-2222-3333-4444-555555555555",
                      port_id="0d3c4f7e-5a1b-4c2d-8e9f-a0b1c2d3e4f5"):
    """The <nova:instance> metadata element nova writes (PROTOCOL.md 4.6)."""
    return f"""<nova:instance xmlns:nova="{NOVA_NS}">
      <nova:package version="29.0.0"/>
      <nova:name>{display_name}</nova:name>
      <nova:creationTime>2025-01-01 00:00:00</nova:creationTime>
      <nova:flavor name="m1.small" id="3">
        <nova:memory>2048</nova:memory><nova:disk>20</nova:disk><nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral><nova:vcpus>2</nova:vcpus>
        <nova:extraSpecs><nova:extraSpec name="hw:cpu_policy">shared</nova:extraSpec></nova:extraSpecs>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="5e8d6a3b0c9f4e2a8b7c6d5e4f3a2b1c">admin</nova:user>
        <nova:project uuid="9a8b7c6d5e4f4a3b2c1d0e9f8a7b6c5d">demo</nova:project>
      </nova:owner>
      <nova:root type="volume" uuid="{root_volume}"/>
      <nova:ports>
        <nova:port uuid="{port_id}"><nova:ip type="fixed" address="10.0.0.5" ipVersion="4"/></nova:port>
      </nova:ports>
    </nova:instance>"""


def nova_domain_xml(uuid, name, volume_id="11111111-2222-3333-4444-555555555555",
                    mac="fa:16:3e:aa:bb:cc", port_id="0d3c4f7e-5a1b-4c2d-8e9f-a0b1c2d3e4f5",
                    memory_kib=2097152, vcpus=2, machine="pc", display_name="web-1"):
    """A domain as nova's libvirt driver defines it for a boot-from-volume (RBD) instance
    with one OVS port (PROTOCOL.md 4.6)."""
    tap = "tap" + port_id[:11]
    return f"""<domain type="kvm">
  <uuid>{uuid}</uuid>
  <name>{name}</name>
  <memory>{memory_kib}</memory>
  <vcpu>{vcpus}</vcpu>
  <metadata>
    {nova_instance_xml(display_name, volume_id, port_id)}
  </metadata>
  <sysinfo type="smbios">
    <system>
      <entry name="manufacturer">OpenStack Foundation</entry>
      <entry name="product">OpenStack Nova</entry>
      <entry name="version">29.0.0</entry>
      <entry name="serial">{uuid}</entry>
      <entry name="uuid">{uuid}</entry>
      <entry name="family">Virtual Machine</entry>
    </system>
  </sysinfo>
  <os>
    <type arch="x86_64" machine="{machine}">hvm</type>
    <boot dev="hd"/>
    <smbios mode="sysinfo"/>
  </os>
  <features>
    <acpi/>
    <apic/>
    <vmcoreinfo/>
  </features>
  <clock offset="utc">
    <timer name="pit" tickpolicy="delay"/>
    <timer name="rtc" tickpolicy="catchup"/>
    <timer name="hpet" present="no"/>
  </clock>
  <cpu mode="host-model" match="exact">
    <topology sockets="{vcpus}" cores="1" threads="1"/>
  </cpu>
  <devices>
    <disk type="network" device="disk">
      <driver name="qemu" type="raw" cache="none" discard="unmap"/>
      <alias name="ua-{volume_id}"/>
      <source protocol="rbd" name="volumes/volume-{volume_id}">
        <host name="10.0.0.1" port="6789"/>
        <host name="10.0.0.2" port="6789"/>
      </source>
      <auth username="cinder">
        <secret type="ceph" uuid="7c9e6679-7425-40de-944b-e07fc1f90ae7"/>
      </auth>
      <target dev="vda" bus="virtio"/>
      <serial>{volume_id}</serial>
    </disk>
    <interface type="bridge">
      <mac address="{mac}"/>
      <model type="virtio"/>
      <source bridge="br-int"/>
      <mtu size="1442"/>
      <target dev="{tap}"/>
      <virtualport type="openvswitch">
        <parameters interfaceid="{port_id}"/>
      </virtualport>
    </interface>
    <serial type="pty">
      <log file="/var/lib/nova/instances/{uuid}/console.log" append="off"/>
    </serial>
    <graphics type="vnc" autoport="yes" listen="127.0.0.1"/>
    <video>
      <model type="virtio"/>
    </video>
    <input type="tablet" bus="usb"/>
    <memballoon model="virtio">
      <stats period="10"/>
    </memballoon>
  </devices>
</domain>
"""


def bound_node(xml_text):
    """The simulated node named in the live XML's <metalvirt:node name=…/>, or None."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml_text)
    el = root.find(f"metadata/{{{METALVIRT_NS}}}node")
    return None if el is None else el.get("name")


def open_like_nova(uri):
    """libvirt.openAuth as nova's Host._get_new_connection does it."""
    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_NOECHOPROMPT], _auth_cb, None]
    return libvirt.openAuth(uri, auth, 0)


def _auth_cb(creds, _opaque):
    return 0


def expect_error(fn, *args):
    """Calls fn(*args) and returns the libvirtError (raises AssertionError if it succeeds)."""
    try:
        fn(*args)
    except libvirt.libvirtError as e:
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args!r} unexpectedly succeeded")


class DaemonCase(unittest.TestCase):
    """The shared lab fixture: every test gets a fresh daemon on the simulated lab as `self.d`
    and a connection opened as nova opens it as `self.conn`, with the lifecycle (and other)
    events in `events` collected by `self.ev`; all closed and stopped (the daemon's
    directory removed) however the test ends. A subclass tunes it with the class attributes
    `sim` (simulated lab settings), `daemon_kwargs` (other `Daemon` arguments) and `events`,
    or by overriding `daemon()`."""

    sim = None
    daemon_kwargs = {}
    events = ()

    def daemon(self):
        return Daemon(sim=self.sim, **self.daemon_kwargs)

    def setUp(self):
        self.d = self.enterContext(self.daemon())
        self.conn = self.connect()
        if self.events:
            self.ev = EventCollector(self.conn)
            for eid in self.events:
                self.ev.register(eid)

    def connect(self):
        """Another nova-like connection, closed at the end of the test."""
        conn = open_like_nova(self.d.uri)

        def close():
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        self.addCleanup(close)
        return conn


def read_until(st, want, timeout=5.0):
    """Reads a non-blocking stream until `want` arrived; b"" marks end of file."""
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        r = st.recv(4096)
        if r == -2:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {want!r} within {timeout}s; got {got!r}")
            time.sleep(0.01)
            continue
        if not r:
            raise EOFError(got)
        got += r
    return got


def wait_eof(st, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        r = st.recv(4096)
        if r == -2:
            if time.monotonic() > deadline:
                raise AssertionError("no end of file")
            time.sleep(0.01)
            continue
        if not r:
            return
        # Output still on its way is fine.


if __name__ == "__main__":
    sys.exit("harness.py is a library; run a test module: python3 -m blackbox.test_connect")
