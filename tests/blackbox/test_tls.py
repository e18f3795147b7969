"""Remote access as libvirtd offers it: the TLS listener with client certificates (virsh and
python3-libvirt over qemu+tls:// and metal+tls://), its refusals, read-only DNs, and the plain
TCP listener that exists only when asked for explicitly.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_tls
"""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import unittest

import libvirt

from .harness import Daemon, DaemonError, EventCollector, start_event_loop, wait_until
from .peers import free_port
from .pki import Pki, dn



REFUSED = "server verification (of our certificate or IP address) failed"

BM_XML = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='GiB'>16</memory>
  <vcpu>8</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='volumes/{name}-root'><host name='10.0.0.1' port='6789'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><source bridge='br-int'/><virtualport type='openvswitch'/></interface>
  </devices>
</domain>
"""


class TlsListener(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_event_loop()
        cls.tmp = tempfile.mkdtemp(prefix="metalvirt-tls")
        cls.pki = Pki(cls.tmp)
        cls.port = free_port()
        extra = (
            "listen_addr = \"127.0.0.1\"\n"
            f"tls_port = \"{cls.port}\"\n"
            + cls.pki.daemon_config(allowed=[f"C=GB,O=metalvirt tests,CN=nova*"],
                                    readonly=["*,CN=monitor*"])
        )
        cls.daemon = Daemon(extra=extra, args=["--listen"]).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def uri(self, client, scheme="qemu+tls"):
        return f"{scheme}://localhost:{self.port}/system?pkipath={self.pki.client(client)}"

    def virsh(self, client, *args, scheme="qemu+tls"):
        return subprocess.run(["virsh", "-q", "-c", self.uri(client, scheme), *args],
                              capture_output=True, text=True, timeout=60)

    def raw_tls(self, client):
        """A TLS connection as libvirt's client makes it; returns what the server sends
        first (b'\\x01' when admitted, b'' when refused)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki.server("cacert.pem"))
        d = self.pki.client(client)
        if os.path.exists(os.path.join(d, "clientcert.pem")):
            ctx.load_cert_chain(os.path.join(d, "clientcert.pem"), os.path.join(d, "clientkey.pem"))
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                try:
                    return t.recv(1)
                except (ssl.SSLError, ConnectionResetError) as e:
                    return repr(e).encode()

    # ------------------------------------------------------------------ admitted clients

    def test_virsh_lifecycle_over_tls(self):
        xml = os.path.join(self.tmp, "bm-tls.xml")
        with open(xml, "w") as f:
            f.write(BM_XML.format(name="bm-tls"))
        for args in (["define", xml], ["start", "bm-tls"]):
            r = self.virsh("nova", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
        r = self.virsh("nova", "domstate", "bm-tls")
        self.assertEqual(r.stdout.strip(), "running", r.stderr)
        # metal+tls:// reaches the same daemon
        r = self.virsh("nova", "list", "--name", scheme="metal+tls")
        self.assertEqual(r.stdout.split(), ["bm-tls"], r.stderr)
        for args in (["destroy", "bm-tls"], ["undefine", "bm-tls"]):
            r = self.virsh("nova", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"dn '{dn('nova1')}'", self.daemon.log())

    def test_python_libvirt_lifecycle_with_events(self):
        conn = libvirt.open(self.uri("nova", "metal+tls"))
        try:
            self.assertEqual(conn.isSecure(), 1)
            ev = EventCollector(conn)
            ev.register(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
            dom = conn.defineXML(BM_XML.format(name="bm-py"))
            dom.create()
            self.assertEqual(dom.state()[0], libvirt.VIR_DOMAIN_RUNNING)
            started = (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED)
            self.assertTrue(ev.wait_for(lambda _e: started in ev.lifecycle("bm-py")),
                            ev.events)
            dom.destroy()
            stopped = (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
            self.assertTrue(ev.wait_for(lambda _e: stopped in ev.lifecycle("bm-py")),
                            ev.events)
            dom.undefine()
            ev.deregister_all()
        finally:
            conn.close()

    def test_confirmation_byte_after_the_handshake(self):
        self.assertEqual(self.raw_tls("nova"), b"\x01")

    def test_readonly_dn_may_read_but_not_change(self):
        r = self.virsh("monitor", "list", "--all")
        self.assertEqual(r.returncode, 0, r.stderr)
        conn = libvirt.open(self.uri("monitor"))
        try:
            conn.listAllDomains()
            with self.assertRaises(libvirt.libvirtError) as cm:
                conn.defineXML(BM_XML.format(name="bm-ro"))
            self.assertEqual(cm.exception.get_error_code(), libvirt.VIR_ERR_OPERATION_DENIED)
        finally:
            conn.close()
        # nothing was defined
        self.assertNotIn("bm-ro", self.virsh("nova", "list", "--all", "--name").stdout)
        r = self.virsh("monitor", "start", "bm-none")
        self.assertNotEqual(r.returncode, 0)

    # ------------------------------------------------------------------ refused clients

    def assert_refused(self, client, cn=None, why=None):
        r = self.virsh(client, "list")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(REFUSED, r.stderr)
        self.assert_logged(cn, why)

    def assert_logged(self, cn, why):
        def logged():
            for line in self.daemon.log().splitlines():
                if "TLS client refused" not in line or "addr=127.0.0.1:" not in line:
                    continue
                if cn is not None and f'dn="{dn(cn)}"' not in line:
                    continue
                if why is not None and why.lower() not in line.lower():
                    continue
                return True
            return False
        wait_until(logged, what=f"refusal of {cn} ({why}) logged with DN and address")

    def test_dn_not_in_the_allowlist_is_refused(self):
        self.assert_refused("stranger", "stranger", "not in tls_allowed_dn_list")

    def test_certificate_from_another_ca_is_refused(self):
        self.assert_refused("wrongca", "nova3", "UnknownIssuer")

    def test_client_without_certificate_is_refused(self):
        r = self.virsh("nocert", "list")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(REFUSED, r.stderr)
        self.assert_logged(None, "no client certificate")
        self.assertEqual(self.raw_tls("nocert"), b"")

    def test_revoked_certificate_is_refused(self):
        self.assert_refused("revoked", "nova4", "revoked")

    def test_expired_certificate_is_refused(self):
        # libvirt's client already refuses to present its own expired certificate ...
        r = self.virsh("expired", "list")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("expired", r.stderr.lower())
        # ... a client that does present one gets no confirmation byte.
        self.assertEqual(self.raw_tls("expired"), b"")
        self.assert_logged("nova2", "certificate expired")

    def test_plain_tcp_is_not_listening(self):
        r = subprocess.run(["virsh", "-c", "qemu+tcp://127.0.0.1:%d/system" % free_port(), "list"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        # the TLS port does not speak plain RPC either
        r = subprocess.run(["virsh", "-c", f"qemu+tcp://127.0.0.1:{self.port}/system", "list"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)


class PlainTcp(unittest.TestCase):
    def test_tcp_needs_auth_tcp_none(self):
        port = free_port()
        with self.assertRaises(DaemonError) as cm:
            with Daemon(extra=f"listen_tcp = true\ntcp_port = {port}\nlisten_addr = \"127.0.0.1\"\n",
                        args=["--listen"]):
                pass
        self.assertIn("auth_tcp", str(cm.exception))

    def test_tcp_with_auth_none_serves_and_warns(self):
        port = free_port()
        extra = (f"listen_tcp = true\nlisten_tls = false\nauth_tcp = \"none\"\n"
                 f"tcp_port = {port}\nlisten_addr = \"127.0.0.1\"\n")
        with Daemon(extra=extra, args=["--listen"]) as d:
            uri = f"qemu+tcp://127.0.0.1:{port}/system"
            r = subprocess.run(["virsh", "-q", "-c", uri, "list", "--all"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            conn = libvirt.open(uri)
            try:
                self.assertEqual(conn.isSecure(), 0)
            finally:
                conn.close()
            self.assertIn("PLAIN TCP LISTENER", d.log())

    def test_no_network_listener_without_listen(self):
        port = free_port()
        extra = (f"listen_tcp = true\nauth_tcp = \"none\"\ntcp_port = {port}\n"
                 f"listen_addr = \"127.0.0.1\"\n")
        with Daemon(extra=extra):
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()

    def test_bad_port_is_refused_naming_the_key(self):
        with self.assertRaises(DaemonError) as cm:
            with Daemon(extra="tls_port = \"sixteen\"\n", args=["--listen"]):
                pass
        self.assertIn("tls_port", str(cm.exception))
        self.assertIn("'sixteen' is not a port number", str(cm.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
