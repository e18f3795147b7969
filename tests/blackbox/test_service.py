"""metalvirtd as a system service: --check-config, the packaged configuration (no servers),
socket activation by systemd-socket-activate (real LISTEN_FDS), readiness notification, and
the Debian package installed with dpkg, used through metal:///system and purged again.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_service
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

import libvirt

from .harness import wait_until
from .peers import free_port
from .pki import Pki

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGED = os.path.join(REPO, "packaging", "metalvirtd.toml")
BIN = os.environ.get("METALVIRTD", "")


def run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kw)


class CheckConfig(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="metalvirt-check")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, name, text):
        p = os.path.join(self.dir, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def test_packaged_configuration_is_valid_and_has_no_servers(self):
        r = run(BIN, "--check-config", "--config", PACKAGED)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("valid: 0 nodes", r.stdout)

    def test_unknown_key_is_named_with_file_and_line(self):
        p = self.write("bad.toml", "max_clients = 10\nmax_readonly_clients = 5\nlisten_tsl = true\n")
        r = run(BIN, "--check-config", "--config", p)
        self.assertEqual(r.returncode, 1)
        self.assertIn(p, r.stderr)
        self.assertIn("listen_tsl", r.stderr)
        self.assertIn("line 3", r.stderr)

    def test_inventory_errors_name_node_and_key(self):
        p = self.write("node.toml", """
[[node]]
name = "rack1-u07"
cores = 8
memory_mib = 1024
[node.bmc]
driver = "redfish"
address = "https://127.0.0.1:1"
username = "admin"
""")
        r = run(BIN, "--check-config", "--config", p)
        self.assertEqual(r.returncode, 1)
        self.assertIn(p, r.stderr)
        self.assertIn("node 'rack1-u07'", r.stderr)
        self.assertIn("bmc.password_file", r.stderr)

    def test_no_bmc_is_contacted(self):
        bmc = socket.socket()
        bmc.bind(("127.0.0.1", 0))
        bmc.listen(8)
        bmc.settimeout(0.5)
        port = bmc.getsockname()[1]
        self.write("bmc.pass", "secret\n")
        p = self.write("node.toml", f"""
[[node]]
name = "rack1-u07"
cores = 8
memory_mib = 1024
[node.bmc]
driver = "redfish"
address = "https://127.0.0.1:{port}"
username = "admin"
password_file = "bmc.pass"
""")
        r = run(BIN, "--check-config", "--config", p)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("valid: 1 nodes", r.stdout)
        with self.assertRaises(socket.timeout):
            bmc.accept()
        bmc.close()
        # a missing password file is named
        os.unlink(os.path.join(self.dir, "bmc.pass"))
        r = run(BIN, "--check-config", "--config", p)
        self.assertEqual(r.returncode, 1)
        self.assertIn("bmc.pass", r.stderr)

    def test_tls_files_are_checked_with_listen(self):
        p = self.write("tls.toml", f"cert_file = \"{self.dir}/missing.pem\"\n")
        r = run(BIN, "--check-config", "--listen", "--config", p)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cert_file", r.stderr)
        self.assertIn("missing.pem", r.stderr)
        # a key that does not belong to the certificate
        pki = Pki(os.path.join(self.dir, "pki"))
        other = Pki(os.path.join(self.dir, "pki2"))
        p = self.write("tls2.toml", pki.daemon_config().replace(
            pki.server("serverkey.pem"), other.server("serverkey.pem")))
        r = run(BIN, "--check-config", "--listen", "--config", p)
        self.assertEqual(r.returncode, 1)
        self.assertIn("key_file", r.stderr)
        # a server certificate from another CA than ca_file
        p = self.write("tls3.toml", pki.daemon_config().replace(
            pki.server("servercert.pem"), other.server("servercert.pem")).replace(
            pki.server("serverkey.pem"), other.server("serverkey.pem")))
        r = run(BIN, "--check-config", "--listen", "--config", p)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not signed by a CA of ca_file", r.stderr)
        p = self.write("tls4.toml", pki.daemon_config())
        r = run(BIN, "--check-config", "--listen", "--config", p)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("TLS: certificate, key and CA valid", r.stdout)

    def test_help_documents_the_log_filter(self):
        r = run(BIN, "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("METALVIRT_LOG", r.stdout)
        self.assertIn("--check-config", r.stdout)


class PackagedConfiguration(unittest.TestCase):
    def test_serves_with_no_servers_and_says_so(self):
        tmp = tempfile.mkdtemp(prefix="metalvirt-pkgcfg")
        try:
            log = open(os.path.join(tmp, "log"), "w+")
            proc = subprocess.Popen(
                [BIN, "--config", PACKAGED, "--socket-dir", f"{tmp}/run",
                 "--state-dir", f"{tmp}/state", "--config-dir", f"{tmp}/etc"],
                stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, NO_COLOR="1"))
            try:
                sock = f"{tmp}/run/virtmetald-sock"
                wait_until(lambda: os.path.exists(sock), what="the socket")
                r = run("virsh", "-q", "-c", f"qemu+unix:///system?socket={sock}", "list", "--all")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout.strip(), "")
                log.seek(0)
                text = log.read()
                self.assertIn("no nodes configured", text)
                self.assertNotIn("SIMULATED", text)
                # No ANSI escapes in a log that is not a terminal.
                self.assertNotIn("\x1b[", text)
                self.assertIsNone(proc.poll())
            finally:
                proc.terminate()
                proc.wait(timeout=20)
                log.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class SocketActivation(unittest.TestCase):
    def test_serves_the_sockets_systemd_passes(self):
        tmp = tempfile.mkdtemp(prefix="metalvirt-activate")
        proc = None
        try:
            pki = Pki(os.path.join(tmp, "pki"))
            port = free_port()
            cfg = os.path.join(tmp, "metalvirtd.toml")
            with open(cfg, "w") as f:
                # A socket directory the daemon must not use: the sockets are systemd's.
                f.write(f"socket_dir = \"{tmp}/unused\"\n" + pki.daemon_config() +
                        "[sim]\nnodes = 2\npower_latency_ms = 1\n")
            rw, ro = f"{tmp}/run/rw-sock", f"{tmp}/run/ro-sock"
            os.makedirs(f"{tmp}/run")
            log = open(os.path.join(tmp, "log"), "w+")
            proc = subprocess.Popen(
                ["systemd-socket-activate", "-l", rw, "-l", ro, "-l", f"127.0.0.1:{port}",
                 "--fdname=metalvirtd.socket:metalvirtd-ro.socket:metalvirtd-tls.socket",
                 "-E", "METALVIRT_LOG=info", "-E", "NO_COLOR=1",
                 BIN, "--config", cfg, "--state-dir", f"{tmp}/state",
                 "--config-dir", f"{tmp}/etc"],
                stdout=subprocess.DEVNULL, stderr=log)
            wait_until(lambda: os.path.exists(rw) and os.path.exists(ro), what="passed sockets")
            # The first connection starts the daemon (as systemd does); it waits in the backlog.
            r = run("virsh", "-q", "-c", f"qemu+unix:///system?socket={rw}", "list", "--all")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run("virsh", "-q", "-c", f"qemu+unix:///system?socket={rw}", "nodeinfo")
            self.assertEqual(r.returncode, 0, r.stderr)
            conn = libvirt.openReadOnly(f"qemu+unix:///system?socket={ro}")
            try:
                conn.listAllDomains()
                with self.assertRaises(libvirt.libvirtError) as cm:
                    conn.defineXML("<domain type='kvm'><name>x</name></domain>")
                self.assertEqual(cm.exception.get_error_code(),
                                 libvirt.VIR_ERR_OPERATION_DENIED)
            finally:
                conn.close()
            uri = f"metal+tls://localhost:{port}/system?pkipath={pki.client('nova')}"
            r = run("virsh", "-q", "-c", uri, "list", "--all")
            self.assertEqual(r.returncode, 0, r.stderr)
            log.seek(0)
            text = log.read()
            self.assertIn("read-write socket (passed by systemd)", text)
            self.assertIn("read-only socket (passed by systemd)", text)
            self.assertIn("TLS (passed by systemd)", text)
            self.assertFalse(os.path.exists(f"{tmp}/unused"), "the daemon bound its own sockets")
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=20), 0)
            proc = None
            log.close()
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)


class Readiness(unittest.TestCase):
    def test_ready_only_once_serving_and_stopping_at_sigterm(self):
        tmp = tempfile.mkdtemp(prefix="metalvirt-notify")
        try:
            n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            n.bind(f"{tmp}/notify")
            n.settimeout(20)
            cfg = f"{tmp}/m.toml"
            with open(cfg, "w") as f:
                f.write("[sim]\nnodes = 3\n")
            proc = subprocess.Popen(
                [BIN, "--config", cfg, "--socket-dir", f"{tmp}/run", "--state-dir",
                 f"{tmp}/state", "--config-dir", f"{tmp}/etc"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=dict(os.environ, NOTIFY_SOCKET=f"{tmp}/notify"))
            try:
                msg = n.recv(4096).decode()
                self.assertIn("READY=1", msg)
                self.assertIn("serving 3 nodes", msg)
                # Ready means serving: the socket answers at once.
                c = socket.socket(socket.AF_UNIX)
                c.connect(f"{tmp}/run/virtmetald-sock")
                c.close()
                proc.send_signal(signal.SIGTERM)
                self.assertIn("STOPPING=1", n.recv(4096).decode())
                self.assertEqual(proc.wait(timeout=20), 0)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                n.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _sudo():
    if os.geteuid() == 0:
        return []
    return ["sudo", "-n"]


class DebianPackage(unittest.TestCase):
    """Builds the .deb from this tree (the test's own build), installs it with dpkg, runs the
    installed daemon with the installed configuration, talks to it through metal:///system,
    and purges the package again."""

    def test_install_use_and_purge(self):
        for mine in ("/usr/bin/metalvirtd", "/etc/metalvirt", "/run/libvirt/virtmetald-sock"):
            if os.path.exists(mine):
                self.fail(f"{mine} exists: not touching a machine with metalvirt installed or running")
        out = tempfile.mkdtemp(prefix="metalvirt-deb")
        sudo = _sudo()
        proc = log = None
        try:
            r = run(os.path.join(REPO, "packaging", "build-deb.sh"), "--bin-dir",
                    os.path.dirname(BIN), "--out", out, "--fast")
            self.assertEqual(r.returncode, 0, r.stderr)
            deb = r.stdout.strip().splitlines()[-1]
            r = run(*sudo, "dpkg", "-i", deb)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            for f in ("/usr/bin/metalvirtd", "/etc/metalvirt/metalvirtd.toml",
                      "/lib/systemd/system/metalvirtd.service",
                      "/lib/systemd/system/metalvirtd-tls.socket",
                      "/usr/share/man/man8/metalvirtd.8.gz",
                      "/usr/share/doc/metalvirt/README.md"):
                self.assertTrue(os.path.exists(f), f)
            r = run("dpkg-query", "-W", "-f=${Conffiles}", "metalvirt")
            self.assertIn("/etc/metalvirt/metalvirtd.toml", r.stdout)
            if shutil.which("systemd-analyze"):
                r = run("systemd-analyze", "verify", "--man=no",
                        *[f"/lib/systemd/system/{u}" for u in (
                            "metalvirtd.service", "metalvirtd.socket", "metalvirtd-ro.socket",
                            "metalvirtd-tls.socket")])
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            r = run("man", "-l", "/usr/share/man/man8/metalvirtd.8.gz", env=dict(
                os.environ, MANPAGER="cat", MANWIDTH="100")) if shutil.which("man") else None
            if r is not None:
                self.assertIn("check-config", r.stdout)
            # The installed daemon with the installed configuration, as the unit runs it.
            log = open(os.path.join(out, "log"), "w+")
            proc = subprocess.Popen([*sudo, "/usr/bin/metalvirtd"], stdout=subprocess.DEVNULL,
                                    stderr=log, env=dict(os.environ, NO_COLOR="1"))
            wait_until(lambda: os.path.exists("/run/libvirt/virtmetald-sock"), timeout=20,
                       what="/run/libvirt/virtmetald-sock")
            r = run(*sudo, "virsh", "-q", "-c", "metal:///system", "list", "--all")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run("virsh", "-q", "-r", "-c", "metal:///system", "nodeinfo")
            self.assertEqual(r.returncode, 0, r.stderr)
            log.seek(0)
            self.assertIn("no nodes configured", log.read())
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
            if log is not None:
                log.close()
            r = run(*sudo, "dpkg", "--purge", "metalvirt")
            shutil.rmtree(out, ignore_errors=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for f in ("/usr/bin/metalvirtd", "/etc/metalvirt", "/var/lib/metalvirt",
                  "/run/libvirt/virtmetald-sock"):
            self.assertFalse(os.path.exists(f), f"{f} left after purge")


if __name__ == "__main__":
    unittest.main(verbosity=2)
