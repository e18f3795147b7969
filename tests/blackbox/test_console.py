"""Serial consoles through libvirt streams (virDomainOpenConsole, what `virsh console` does),
on the simulated lab's serial line: a banner and a login prompt, every keystroke echoed.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_console
"""

import unittest

import libvirt
import libvirt as L

from .harness import (
    DaemonCase, expect_error, nova_domain_xml, read_until, start_event_loop, wait_eof,
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
        self.addCleanup(lambda: _quietly(st.abort))
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


def _quietly(fn):
    try:
        fn()
    except libvirt.libvirtError:
        pass


if __name__ == "__main__":
    unittest.main(verbosity=2)
