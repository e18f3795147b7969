"""Real BMC peers for the black-box tests: sushy-tools' Redfish emulator (fake driver, HTTP or
HTTPS with basic auth), OpenIPMI's ipmi_sim and pyghmi's IPMI BMC, each on loopback in its
own temp dir, started and stopped by context managers. The peers come from
scripts/install-deps.sh (apt: openipmi, ipmitool; venv: sushy-tools, pyghmi).
"""

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PEERS = os.path.join(REPO, "tests", "peers")
VENV = os.environ.get("METALVIRT_PEERS_VENV", os.path.join(REPO, "target", "peers-venv"))
PY = os.path.join(VENV, "bin", "python")

USER = "admin"
# A password no log line may ever contain (the tests grep the daemon's log for it).
PASSWORD = "Pw-7f3a9c-nolog"  # IPMI passwords are at most 20 bytes


class PeerError(RuntimeError):
    pass


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise PeerError(f"timed out after {timeout}s waiting for {what}")


def _need_venv():
    if not os.path.exists(PY):
        raise PeerError(f"no peers venv at {VENV}: run scripts/install-deps.sh")


def write_password_file(path, password=PASSWORD):
    with open(path, "w") as f:
        f.write(password + "\n")
    os.chmod(path, 0o600)
    return path


def stop_group(proc, grace=5):
    """Stops a process started with start_new_session=True and everything in its session:
    SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class _Process:
    """A peer process in its own session (killed with its children at stop), on a temp dir
    made at __enter__; subclasses set `prefix`, `needs_venv`, `prepare()` (ports) and
    `start()`."""

    prefix = "metalvirt-peer"
    needs_venv = False

    def __init__(self):
        self.dir = None
        self.proc = None

    def prepare(self):
        pass

    def __enter__(self):
        if self.needs_venv:
            _need_venv()
        self.dir = tempfile.mkdtemp(prefix=self.prefix)
        try:
            self.prepare()
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def _popen(self, argv, env=None, cwd=None):
        self.log_path = self.path("peer.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, cwd=cwd or self.dir, start_new_session=True)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None

    def __exit__(self, *exc):
        self.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


class Sushy(_Process):
    """sushy-emulator with the fake driver. `systems`: list of (uuid, name, power)."""

    prefix = "metalvirt-sushy"
    needs_venv = True

    def __init__(self, systems, tls=False, auth=True, delay="0"):
        super().__init__()
        self.systems = systems
        self.tls = tls
        self.auth = auth
        self.delay = delay
        self.port = None

    def start(self, fresh=True):
        if fresh:
            shutil.rmtree(self.path("state"), ignore_errors=True)
        if self.port is None:
            self.port = free_port()
        conf = [
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
            f"SUSHY_EMULATOR_STATE_DIR = {self.path('state')!r}",
            "SUSHY_EMULATOR_FEATURE_SET = 'full'",
            "SUSHY_EMULATOR_FAKE_SYSTEMS = " + repr([
                {"uuid": u, "name": n, "power_state": p, "external_notifier": False,
                 "nics": [{"mac": "52:54:00:00:%02x:01" % i, "ip": "127.0.0.%d" % (100 + i)}]}
                for i, (u, n, p) in enumerate(self.systems)]),
        ]
        if self.auth and not os.path.exists(self.path("htpasswd")):
            out = subprocess.run(
                [PY, "-c", "import bcrypt,sys; print(sys.argv[1] + ':' + bcrypt.hashpw("
                 "sys.argv[2].encode(), bcrypt.gensalt(4)).decode())", USER, PASSWORD],
                check=True, capture_output=True, text=True).stdout
            with open(self.path("htpasswd"), "w") as f:
                f.write(out)
        if self.auth:
            conf.append(f"SUSHY_EMULATOR_AUTH_FILE = {self.path('htpasswd')!r}")
        if self.tls:
            if not os.path.exists(self.path("cert.pem")):
                subprocess.run(
                    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                     "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                     "-keyout", self.path("key.pem"), "-out", self.path("cert.pem")],
                    check=True, capture_output=True)
            conf.append(f"SUSHY_EMULATOR_SSL_CERT = {self.path('cert.pem')!r}")
            conf.append(f"SUSHY_EMULATOR_SSL_KEY = {self.path('key.pem')!r}")
        with open(self.path("emulator.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        env = dict(os.environ, SUSHY_FAKE_POWER_DELAY=self.delay)
        self._popen([PY, os.path.join(PEERS, "sushy_fast.py"), "--config",
                     self.path("emulator.conf")], env=env)
        wait_until(self._ready, 30, "sushy-emulator")

    def _ready(self):
        if not self.alive():
            raise PeerError("sushy-emulator exited:\n" + self.log())
        try:
            self.get("/redfish/v1/")
            return True
        except (OSError, PeerError):
            return False

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def system_path(self, uuid):
        return f"/redfish/v1/Systems/{uuid}"

    def _request(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method)
        if self.auth:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.path("cert.pem"))
        try:
            with urllib.request.urlopen(req, data=data, timeout=10, context=ctx) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raise PeerError(f"{method} {path}: {e.code} {e.read()!r}")

    def get(self, path):
        return self._request("GET", path)

    def system(self, uuid):
        return self.get(self.system_path(uuid))

    def power(self, uuid):
        return self.system(uuid)["PowerState"]

    def reset(self, uuid, reset_type):
        self._request("POST", self.system_path(uuid) + "/Actions/ComputerSystem.Reset",
                      {"ResetType": reset_type})

    def boot(self, uuid):
        return self.system(uuid)["Boot"]


class Ipmitool:
    """ipmitool against one lanplus BMC; the password goes through the environment."""

    def __init__(self, port, cipher=3):
        self.port = port
        self.cipher = cipher

    def run(self, *args, check=True, retries=2):
        argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port),
                "-U", USER, "-E", "-C", str(self.cipher), "-R", str(retries), "-N", "1", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, IPMI_PASSWORD=PASSWORD))
        if check and r.returncode != 0:
            raise PeerError(f"ipmitool {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout if check else r.returncode == 0

    def answers(self, what, peer):
        """Readiness probe: True once the BMC answers; raises if its process died."""
        if not peer.alive():
            raise PeerError(f"{what} exited:\n" + peer.log())
        return self.run("chassis", "power", "status", check=False, retries=1)

    def power(self):
        out = self.run("chassis", "power", "status")
        return "on" if out.strip().endswith("on") else "off"

    def set_power(self, what):
        self.run("chassis", "power", what)

    def bootparam(self):
        return self.run("chassis", "bootparam", "get", "5")


class SerialLine:
    """The far end of a server's serial port for ipmi_sim's SOL (`sol "tcp:…"`: ipmi_sim
    connects to it when SOL is activated): it greets each connection with `banner` and
    answers every chunk it receives with `[got …]`; `received` holds what was typed."""

    def __init__(self, banner=b"serial line of the ipmi_sim server\r\nlogin: "):
        self.banner = banner
        self.received = b""
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn):
        with conn:
            try:
                conn.sendall(self.banner)
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    self.received += data
                    conn.sendall(b"[got " + data + b"]")
            except OSError:
                return


class IpmiSim(_Process):
    """OpenIPMI's ipmi_sim with one LAN channel on a loopback UDP port; with `sol_port`, its
    Serial-over-LAN goes to a TCP serial line there (see `SerialLine`)."""

    prefix = "metalvirt-ipmisim"

    def __init__(self, sol_port=None):
        self.sol_port = sol_port
        super().__init__()

    def prepare(self):
        self.port = free_port(socket.SOCK_DGRAM)

    def start(self):
        for d in ("state", "power"):
            shutil.rmtree(self.path(d), ignore_errors=True)
            os.makedirs(self.path(d))
        with open(self.path("lan.conf"), "w") as f:
            f.write(f"""name "bmsim"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {self.port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{os.path.join(PEERS, 'ipmi_chassis.sh')} {self.path('power')}"
  user 2 true  "{USER}" "{PASSWORD}" admin 10 none md2 md5 straight
""")
            if self.sol_port:
                f.write(f'  sol "tcp:127.0.0.1:{self.sol_port}" 115200\n')
        self.set_sensor("inlet", 23)
        self.set_sensor("watts", 412)
        with open(self.path("bmsim.emu"), "w") as f:
            f.write("mc_setbmc 0x20\n"
                    "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
                    "sel_enable 0x20 1000 0x0a\n")
            # Two sensors as a server's BMC has them: full sensor records in the SDR
            # repository, each polled every second from a file set_sensor writes.
            f.write(_full_sensor_sdr(0x30, 0x01, 0x37, 1, 1, "Inlet Temp"))
            f.write(f'sensor_add 0x20 0 0x30 0x01 0x01 poll 1000 file "{self.path("inlet")}"\n')
            f.write(_full_sensor_sdr(0x31, 0x0b, 0x15, 6, 4, "Pwr Consumption"))
            f.write(f'sensor_add 0x20 0 0x31 0x0b 0x01 poll 1000 file "{self.path("watts")}"'
                    " div=4\n")
            f.write("mc_enable 0x20\n")
        self._popen(["ipmi_sim", "-c", self.path("lan.conf"), "-f", self.path("bmsim.emu"),
                     "-s", self.path("state"), "-n"])
        self.tool = Ipmitool(self.port)
        wait_until(lambda: self.tool.answers("ipmi_sim", self), 30, "ipmi_sim", step=0.1)

    def boot_file(self):
        with open(self.path("power", "boot")) as f:
            return f.read().strip()

    def set_sensor(self, which, value, wait=False):
        """What the BMC's sensor reads: `inlet` in degrees C, `watts` (in steps of 4 W, the
        record's resolution). ipmi_sim polls the file every second; with `wait`, returns
        once the BMC reports the new value."""
        with open(self.path(which), "w") as f:
            f.write(f"{value}\n")
        if wait:
            name = {"inlet": "Inlet Temp", "watts": "Pwr Consumption"}[which]
            wait_until(lambda: f"{name},{value}," in self.tool.run("-c", "sdr", "list", "full"),
                       10, f"ipmi_sim's {name} to read {value}", step=0.2)


def _full_sensor_sdr(number, sensor_type, entity, unit, m, name):
    """An ipmi_sim `main_sdr_add` line: an IPMI 2.0 full sensor record (SDR type 01h, spec
    table 43-1) for a linear, unsigned, threshold sensor reading raw * `m` in `unit`
    (1 = degrees C, 6 = Watts), with no thresholds set."""
    name = name.encode()
    body = [0x20, 0, number, entity, 1,  # owner, LUN, number; entity and instance
            0x67, 0x68, sensor_type, 0x01,  # initialisation, capabilities, type, threshold
            0, 0, 0, 0, 0, 0,  # event and reading masks
            0x00, unit, 0, 0,  # unsigned; base unit; no modifier; linear
            m & 0xff, (m >> 8) << 6, 0, 0, 0, 0,  # M, tolerance, B, accuracy, exponents
            0x00,  # analog characteristics
            0, 0, 0, 0xff, 0,  # nominal, normal max and min, sensor max and min
            0, 0, 0, 0, 0, 0, 0, 0,  # thresholds, hysteresis
            0, 0, 0,  # reserved, OEM
            0xC0 | len(name), *name]  # 8-bit ASCII ID string
    record = [0, 0, 0x51, 0x01, len(body), *body]  # ID (assigned), SDR 1.5/2.0, type, length
    return "main_sdr_add 0x20 " + " ".join(f"0x{b:02x}" for b in record) + "\n"


class Pyghmi(_Process):
    """pyghmi BMCs, one per port, all in one process."""

    prefix = "metalvirt-pyghmi"
    needs_venv = True

    def __init__(self, count=1):
        super().__init__()
        self.count = count

    def prepare(self):
        self.ports = [free_port(socket.SOCK_DGRAM) for _ in range(self.count)]

    def start(self):
        pw = write_password_file(self.path("password"))
        self._popen([PY, os.path.join(PEERS, "fakebmc.py"), USER, pw, *map(str, self.ports)])
        self.tools = [Ipmitool(p) for p in self.ports]
        wait_until(lambda: self.tools[-1].answers("pyghmi BMC", self), 30, "pyghmi BMC",
                   step=0.1)


class OpenBmcBus(_Process):
    """A private D-Bus (dbus-daemon with the session policy, on a socket in a temp dir) with
    an OpenBMC's objects on it (blackbox.openbmc_peer). `delay`: seconds a power transition
    takes. `address` is what [node.bmc] address takes."""

    prefix = "metalvirt-dbus"

    def __init__(self, delay=0.3):
        super().__init__()
        self.delay = delay
        self.bus = None

    @property
    def address(self):
        return "unix:path=" + self.path("bus")

    def start(self):
        with open(self.path("dbus.log"), "ab") as log:
            self.bus = subprocess.Popen(
                ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                 f"--address={self.address}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_until(lambda: os.path.exists(self.path("bus")), 10, "dbus-daemon's socket")
        self.start_peer()

    def start_peer(self):
        """(Re)starts the OpenBMC's services on the bus (their state starts Off)."""
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
        seen = self.log().count("ready") if hasattr(self, "log_path") else 0
        self._popen(["/usr/bin/python3", "-u", "-m", "blackbox.openbmc_peer",
                     "--address", self.address, "--delay", str(self.delay)], env=env)
        wait_until(lambda: self.log().count("ready") > seen or not self.alive(), 10,
                   "openbmc_peer")
        if not self.alive():
            raise PeerError(f"openbmc_peer exited: {self.log()[-2000:]}")

    def stop_peer(self):
        """Takes the OpenBMC's services off the bus (the bus stays)."""
        super().stop()

    def busctl(self, *args):
        return subprocess.run(["busctl", f"--address={self.address}", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    def prop(self, service, path, iface, name):
        """A property's value as busctl prints it, without its type (`s "…"` → `…`)."""
        out = self.busctl("get-property", service, path, iface, name)
        value = out.split(" ", 1)[1]
        return value.strip('"')

    def host_state(self):
        return self.prop("xyz.openbmc_project.State.Host", "/xyz/openbmc_project/state/host0",
                         "xyz.openbmc_project.State.Host", "CurrentHostState").rsplit(".", 1)[1]

    def set_power(self, state):
        """Out of band: the power button, a crash (On, Off, Quiesced)."""
        self.busctl("call", "xyz.openbmc_project.State.Host", "/io/metalvirt/test",
                    "io.metalvirt.Test", "SetPower", "s", state)

    def requests(self):
        out = self.busctl("call", "xyz.openbmc_project.State.Host", "/io/metalvirt/test",
                          "io.metalvirt.Test", "Requests")
        return [w.strip('"').rsplit(".", 1)[1] for w in out.split()[2:]]

    def stop(self):
        super().stop()
        if self.bus is not None:
            stop_group(self.bus)
            self.bus = None


def _stop_popen(proc, timeout=5):
    if proc is not None:
        stop_group(proc, timeout)


class OvsLab:
    """Open vSwitch and OVN as ../shared/PEERS.md §4 runs them, on a temp dir: ovsdb-server
    on a private database with br-int (netdev datapath), ovs-vswitchd in its own network
    namespace where each representor `pf0vfN` is one end of a veth pair whose other end
    `hostvfN` stands for the host-facing function, and optionally OVN (NB/SB ovsdb-servers,
    ovn-northd, ovn-controller with this OVS as chassis `chassis-bm`). Every daemon runs in
    the foreground as our child and is stopped at exit. `representors`: how many pairs."""

    def __init__(self, representors=4, ovn=True):
        self.count = representors
        self.with_ovn = ovn
        self.dir = None
        self.procs = {}

    def path(self, *p):
        return os.path.join(self.dir, *p)

    @property
    def db_addr(self):
        return "unix:" + self.path("db.sock")

    @property
    def vswitchd_pid(self):
        return self.procs["vswitchd"].pid

    def env(self):
        e = dict(os.environ)
        e.update(OVS_RUNDIR=self.dir, OVS_LOGDIR=self.dir, OVS_DBDIR=self.dir,
                 OVN_RUNDIR=self.path("ovn"), OVN_LOGDIR=self.path("ovn"))
        return e

    def _spawn(self, key, argv):
        log = open(self.path(f"{key}.out"), "ab")
        self.procs[key] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env(),
            cwd=self.dir, start_new_session=True)
        log.close()

    def _check_alive(self, key):
        p = self.procs.get(key)
        if p is None or p.poll() is not None:
            with open(self.path(f"{key}.out"), errors="replace") as f:
                raise PeerError(f"{key} exited: {f.read()[-2000:]}")
        return True

    def _ovsdb_server(self, key, db, sock):
        self._spawn(key, ["ovsdb-server", db, f"--remote=punix:{sock}",
                          f"--pidfile={self.path(key + '.pid')}",
                          f"--unixctl={self.path(key + '.ctl')}",
                          f"--log-file={self.path(key + '.log')}", "--no-chdir",
                          "-vconsole:off"])
        wait_until(lambda: self._check_alive(key) and _connects(sock), 10, f"{key} socket")

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="metalvirt-ovs")
        os.makedirs(self.path("ovn"))
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self):
        run = lambda *a: subprocess.run(a, check=True, capture_output=True, env=self.env())  # noqa: E731
        run("ovsdb-tool", "create", self.path("conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema")
        self.start_ovsdb()
        self.vsctl("init", "--", "add-br", "br-int", "--", "set", "Bridge", "br-int",
                   "datapath_type=netdev", "fail_mode=secure", wait=False)
        pairs = " && ".join(
            f"ip link add pf0vf{i} type veth peer name hostvf{i} && ip link set pf0vf{i} up"
            f" && ip link set hostvf{i} up" for i in range(self.count))
        script = (f"ip link set lo up && {pairs} && exec ovs-vswitchd {self.db_addr}"
                  f" --pidfile={self.path('vswitchd.pid')} --unixctl={self.path('vswitchd.ctl')}"
                  f" --log-file={self.path('vswitchd.log')} --no-chdir -vconsole:off")
        self._spawn("vswitchd", ["unshare", "--net", "--", "sh", "-c", script])
        wait_until(lambda: self._check_alive("vswitchd") and self.vsctl(
            "get", "Interface", "br-int", "ofport", wait=False) == "65534", 10, "ovs-vswitchd")
        if not self.with_ovn:
            return
        n = self.path("ovn")
        for db in ("nb", "sb"):
            run("ovsdb-tool", "create", os.path.join(n, f"{db}.db"),
                f"/usr/share/ovn/ovn-{db}.ovsschema")
            self._ovsdb_server(db, os.path.join(n, f"{db}.db"), os.path.join(n, f"{db}.sock"))
        self._spawn("northd", ["ovn-northd", f"--ovnnb-db=unix:{n}/nb.sock",
                               f"--ovnsb-db=unix:{n}/sb.sock", f"--pidfile={n}/northd.pid",
                               f"--unixctl={n}/northd.ctl", f"--log-file={n}/northd.log",
                               "--no-chdir", "-vconsole:off"])
        self.vsctl("set", "Open_vSwitch", ".", "external_ids:system-id=chassis-bm",
                   f"external_ids:ovn-remote=unix:{n}/sb.sock",
                   "external_ids:ovn-encap-type=geneve", "external_ids:ovn-encap-ip=127.0.0.1",
                   "external_ids:ovn-bridge=br-int")
        # (ovn-controller rejects --unixctl: its socket is $OVN_RUNDIR/ovn-controller.PID.ctl)
        self._spawn("controller", ["ovn-controller", self.db_addr,
                                   f"--pidfile={n}/controller.pid",
                                   f"--log-file={n}/controller.log", "--no-chdir",
                                   "-vconsole:off"])
        wait_until(lambda: self._check_alive("controller") and "chassis-bm" in self.sbctl(
            "--columns=name", "list", "Chassis"), 15, "ovn-controller's chassis")
        self.nbctl("ls-add", "net1")

    def start_ovsdb(self):
        self._ovsdb_server("ovsdb", self.path("conf.db"), self.path("db.sock"))

    def stop_ovsdb(self):
        _stop_popen(self.procs.pop("ovsdb", None))

    def _ctl(self, tool, db, args, check=True):
        r = subprocess.run([tool, f"--db={db}", "--timeout=10", *args], capture_output=True,
                           text=True, env=self.env())
        if check and r.returncode != 0:
            raise PeerError(f"{tool} {' '.join(args)}: {r.stderr}")
        return r.stdout.strip()

    def vsctl(self, *args, wait=None, check=True):
        """ovs-vsctl; waits for ovs-vswitchd to apply changes once it runs."""
        if wait is None:
            wait = "vswitchd" in self.procs
        pre = [] if wait else ["--no-wait"]
        return self._ctl("ovs-vsctl", self.db_addr, [*pre, *args], check)

    def nbctl(self, *args):
        return self._ctl("ovn-nbctl", "unix:" + self.path("ovn", "nb.sock"), args)

    def sbctl(self, *args):
        return self._ctl("ovn-sbctl", "unix:" + self.path("ovn", "sb.sock"), args)

    def interfaces(self):
        """{name: {ofport, external_ids, error}} of every Interface except bridges'."""
        out = json.loads(self.vsctl("--format=json", "--columns=name,ofport,external_ids,error,type",
                                    "list", "Interface", wait=False))
        rows = {}
        for r in out["data"]:
            name, ofport, ids, err, typ = r
            if typ == "internal":
                continue
            rows[name] = {
                "ofport": ofport if isinstance(ofport, int) else None,
                "external_ids": dict(ids[1]),
                "error": err if isinstance(err, str) else None,
            }
        return rows

    def ports(self):
        return sorted(self.vsctl("list-ports", "br-int", wait=False).split())

    def add_lsp(self, port_id, mac):
        self.nbctl("lsp-add", "net1", port_id)
        self.nbctl("lsp-set-addresses", port_id, mac)

    def lsp_up(self, port_id):
        return self.nbctl("get", "Logical_Switch_Port", port_id, "up") in ("true", "[true]")

    def binding_chassis(self, port_id):
        return self.sbctl("--bare", "--columns=chassis", "find", "Port_Binding",
                          f"logical_port={port_id}")

    def netns(self, *argv):
        """Runs a command in ovs-vswitchd's network namespace (where hostvfN live)."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.vswitchd_pid}/ns/net", *argv],
                              capture_output=True, text=True, check=True).stdout

    def host_mac(self, function):
        out = self.netns("ip", "-o", "link", "show", function)
        return out.split("link/ether")[1].split()[0]

    def __exit__(self, *exc):
        for key in ("controller", "northd", "vswitchd", "sb", "nb", "ovsdb"):
            _stop_popen(self.procs.pop(key, None))
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


def _connects(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
