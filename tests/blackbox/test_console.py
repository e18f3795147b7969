"""Serial consoles through libvirt streams (virDomainOpenConsole, what `virsh console` does),
on the simulated lab's serial line: a banner and a login prompt, every keystroke echoed.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_console
"""

import socket
import time
import unittest

import libvirt
import libvirt as L

from .peers import free_port
from .harness import (
    DaemonCase, expect_error, nova_domain_xml, quietly, read_until, start_event_loop, wait_eof,
)

UUID = "c0750000-0000-4000-8000-000000000001"
NAME = "instance-c0n"


class Console(DaemonCase):
    def setUp(self):
        start_event_loop()  # the client's stream I/O runs in the event loop
        super().setUp()
        self.dom = self.conn.defineXML(nova_domain_xml(UUID, NAME))

    def stream(self):
        st = self.conn.newStream(L.VIR_STREAM_NONBLOCK)
        self.addCleanup(lambda: quietly(st.abort))
        return st

    def test_console_carries_output_and_keystrokes(self):
        self.dom.create()
        st = self.stream()
        self.dom.openConsole(None, st, 0)
        got = read_until(st, b"login: ")
        self.assertIn(b"metalvirt simulated serial console of node-", got)
        self.assertEqual(st.send(b"root\r"), 5)
        read_until(st, b"root\r\n")
        st.finish()

    def test_a_second_console_fails_unless_it_forces(self):
        self.dom.create()
        first = self.stream()
        self.dom.openConsole("serial0", first, 0)
        read_until(first, b"login: ")
        e = expect_error(self.dom.openConsole, None, self.stream(), 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED)
        self.assertIn("Active console session exists for this domain", str(e))
        # FORCE takes the console over: the first session ends (end of file).
        second = self.stream()
        self.dom.openConsole(None, second, L.VIR_DOMAIN_CONSOLE_FORCE)
        wait_eof(first)
        first.finish()
        read_until(second, b"login: ")
        second.finish()
        # Finished: the console is free again.
        third = self.stream()
        self.dom.openConsole(None, third, 0)
        read_until(third, b"login: ")
        third.finish()

    def test_the_session_ends_with_the_run(self):
        self.dom.create()
        st = self.stream()
        self.dom.openConsole(None, st, 0)
        read_until(st, b"login: ")
        self.dom.destroy()
        wait_eof(st)
        st.finish()

    def test_bad_console_requests(self):
        e = expect_error(self.dom.openConsole, None, self.stream(), 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_INVALID)
        self.assertIn("domain is not running", str(e))
        self.dom.create()
        e = expect_error(self.dom.openConsole, "channel7", self.stream(), 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INTERNAL_ERROR)
        self.assertIn("cannot find character device channel7", str(e))
        e = expect_error(self.dom.openConsole, None, self.stream(), 8)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_ARG)
        # Read-only connections may not open consoles (libvirt: write access).
        ro = libvirt.openReadOnly(self.d.ro_uri)
        self.addCleanup(ro.close)
        e = expect_error(ro.lookupByName(NAME).openConsole, None,
                         ro.newStream(L.VIR_STREAM_NONBLOCK), 0)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_DENIED)


def tcp_serial(port, mode="bind", protocol="raw"):
    return (f"<serial type='tcp'><source mode='{mode}' host='127.0.0.1' service='{port}'/>"
            f"<protocol type='{protocol}'/><target port='0'/></serial>")


def with_devices(xml, devices):
    return xml.replace("</devices>", devices + "</devices>", 1)


def recv_until(sock, want, timeout=5.0):
    sock.settimeout(timeout)
    got = b""
    while want not in got:
        data = sock.recv(4096)
        if not data:
            raise EOFError(got)
        got += data
    return got


class TcpSerial(DaemonCase):
    """nova's serial proxy: <serial type='tcp'> in bind mode, metalvirtd listening there
    for the run and bridging to the server's serial line."""

    def setUp(self):
        start_event_loop()
        super().setUp()

    def test_the_tcp_serial_port_is_the_console(self):
        port = free_port()
        dom = self.conn.defineXML(with_devices(nova_domain_xml(UUID, NAME), tcp_serial(port)))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        dom.create()
        deadline = time.monotonic() + 5
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with sock:
            self.assertIn(b"metalvirt simulated serial console", recv_until(sock, b"login: "))
            sock.sendall(b"admin\r")
            recv_until(sock, b"admin\r\n")
            # The TCP client holds the console: virsh console needs --force.
            st = self.conn.newStream(L.VIR_STREAM_NONBLOCK)
            e = expect_error(dom.openConsole, None, st, 0)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_FAILED)
            st = self.conn.newStream(L.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, st, L.VIR_DOMAIN_CONSOLE_FORCE)
            read_until(st, b"login: ")
            # Taken over: the TCP client is disconnected.
            sock.settimeout(5)
            while sock.recv(4096):
                pass
            st.finish()
        # The port goes with the run.
        dom.destroy()
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            if time.monotonic() > deadline:
                raise AssertionError("still listening after the run ended")
            time.sleep(0.1)

    def test_what_cannot_be_served_is_refused_at_define(self):
        port = free_port()
        for dev, want in [(tcp_serial(port, mode="connect"), "mode='connect'"),
                          (tcp_serial(port, protocol="telnet"), "protocol 'telnet'")]:
            e = expect_error(self.conn.defineXML,
                             with_devices(nova_domain_xml(UUID, NAME), dev))
            self.assertEqual(e.get_error_code(), L.VIR_ERR_CONFIG_UNSUPPORTED)
            self.assertIn(want, str(e))



if __name__ == "__main__":
    unittest.main(verbosity=2)
