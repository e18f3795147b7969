"""A DPU for controller-mode tests: a network namespace joined to the host by a veth pair
(the DPU's management link), and metalvirt-agent running inside it.

The agent binary is $METALVIRT_AGENT, else metalvirt-agent next to $METALVIRTD (else
target/debug/metalvirt-agent).
"""

import os
import signal
import subprocess
import time

from .harness import DEFAULT_BINARY

AGENT_LOG_READY = "metalvirt-agent ready"


def agent_binary():
    if os.environ.get("METALVIRT_AGENT"):
        return os.environ["METALVIRT_AGENT"]
    daemon = os.environ.get("METALVIRTD") or DEFAULT_BINARY
    return os.path.join(os.path.dirname(daemon), "metalvirt-agent")


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Netns:
    """Namespace `name` with a veth pair: `host_addr` on the host side, `dpu_addr` inside
    (both /30 in 10.231.N.0). Removed (with the pair) at exit."""

    def __init__(self, index):
        tag = f"{os.getpid() % 100000}x{index}"
        self.name = f"mvdpu{tag}"
        self.host_if = f"mvh{tag}"[:15]
        self.dpu_if = f"mvd{tag}"[:15]
        net = 4 * (index % 64)
        third = 200 + index // 64
        self.host_addr = f"10.231.{third}.{net + 1}"
        self.dpu_addr = f"10.231.{third}.{net + 2}"

    def __enter__(self):
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.dpu_if)
            _ip("link", "set", self.dpu_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self.run("ip", "addr", "add", f"{self.dpu_addr}/30", "dev", self.dpu_if)
            self.run("ip", "link", "set", self.dpu_if, "up")
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, *argv):
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True,
                              capture_output=True, text=True).stdout

    def link(self, up):
        """Cuts (or restores) the management link, as a pulled cable would."""
        _ip("link", "set", self.host_if, "up" if up else "down")

    def __exit__(self, *exc):
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        return False


class Agent:
    """metalvirt-agent in `netns` (or on the host when None) with the configuration text
    `toml`, written to `dir`/agent.toml; started at __enter__, killed at __exit__."""

    def __init__(self, dir, toml, netns=None):
        self.dir = dir
        self.toml = toml
        self.netns = netns
        self.proc = None
        os.makedirs(dir, exist_ok=True)
        with open(self.path("agent.toml"), "w") as f:
            f.write(toml)

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def log(self):
        try:
            with open(self.path("agent.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, timeout=10):
        pre = ["ip", "netns", "exec", self.netns.name] if self.netns else []
        log = open(self.path("agent.log"), "ab")
        env = dict(os.environ, METALVIRT_LOG=os.environ.get("METALVIRT_AGENT_LOG", "info"))
        self.proc = subprocess.Popen([*pre, agent_binary(), "-f", self.path("agent.toml")],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while self.log().count(AGENT_LOG_READY) < self.starts + 1:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.log()
                self.kill()
                raise RuntimeError(f"metalvirt-agent did not start:\n{out[-3000:]}")
            time.sleep(0.02)
        self.starts += 1
        return self

    starts = 0

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill(signal.SIGTERM)
        return False
