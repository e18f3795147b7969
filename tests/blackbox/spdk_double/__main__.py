"""The command line and the sockets: `python3 -m blackbox.spdk_double --sock ROLE=PATH …`."""

import argparse
import asyncio
import codecs
import os
import signal
import socket
import sys

from .wire import *  # noqa: F401,F403
from .objects import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .instance import *  # noqa: F401,F403
from .methods import *  # noqa: F401,F403
from .fabric import *  # noqa: F401,F403


class RpcProtocol(asyncio.Protocol):
    """One client connection to one role's socket."""

    def __init__(self, fabric, inst):
        self.fabric = fabric
        self.inst = inst
        self.transport = None
        self.buf = ""
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.pending = 0
        self.eof = False
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        self.fabric.conns.setdefault(self.inst.role, set()).add(self)

    def data_received(self, data):
        if self.closed:
            return
        try:
            self.buf += self.utf8.decode(data)
        except UnicodeDecodeError:
            return self.abort()
        values, self.buf, invalid = split_values(self.buf)
        for v in values:
            if self.closed:
                return
            self.fabric.handle(self, v)
        if invalid:
            self.abort()                        # R §3: invalid JSON closes, no reply

    def deliver(self, reply):
        self.pending -= 1
        if reply is not None and not self.closed:
            text = encode(reply)
            self.fabric._log(self.inst.role, "<<", text)
            self.transport.write((text + self.fabric.terminator).encode())
        if self.eof and self.pending <= 0:
            self.abort()

    def eof_received(self):
        self.eof = True
        if self.pending <= 0:
            self.abort()
        return True

    def abort(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    def connection_lost(self, exc):
        self.closed = True
        self.fabric.conns.get(self.inst.role, set()).discard(self)


# ------------------------------------------------------------------------------------------

def parse_latency(text):
    lo, _, hi = text.partition("-")
    lo = float(lo)
    hi = float(hi) if hi else lo
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError("latency must be MIN_MS[-MAX_MS] with MIN <= MAX")
    return lo, hi


def parse_sock(text):
    role, sep, path = text.partition("=")
    if not sep or not role or not path:
        raise argparse.ArgumentTypeError("--sock takes ROLE=PATH")
    return role, path


async def serve(fabric, socks):
    for role, path in socks:
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise SystemExit("%s: socket %s is in use" % (role, path))
            except OSError:
                os.unlink(path)
            finally:
                probe.close()
        inst = Instance(fabric, role, path)
        fabric.instances[role] = inst
        fabric.servers[role] = await fabric.loop.create_unix_server(
            lambda inst=inst: RpcProtocol(fabric, inst), path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sock", action="append", type=parse_sock, required=True,
                    help="ROLE=PATH: serve an SPDK instance for ROLE on this unix socket")
    ap.add_argument("--latency", type=parse_latency, default=(0.0, 0.0),
                    help="MIN_MS[-MAX_MS] per reply (default 0)")
    ap.add_argument("--attach-latency", type=float, default=None,
                    help="ms for bdev_nvme_attach_controller (default 0, or 68 with --latency)")
    ap.add_argument("--log", help="append every request and reply to this file")
    ap.add_argument("--bare", action="store_true",
                    help="no newline after replies (SPDK writes one; clients must not need it)")
    args = ap.parse_args(argv)
    roles = [r for r, _ in args.sock]
    if len(set(roles)) != len(roles):
        ap.error("each role needs its own --sock")
    log = open(args.log, "a") if args.log else None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    fabric = Fabric(loop, args.latency, args.attach_latency, log, args.bare)
    try:
        loop.run_until_complete(serve(fabric, args.sock))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fabric.shutdown)
        print("ready", flush=True)
        loop.run_forever()
    finally:
        for inst in list(fabric.instances.values()):
            fabric.stop_instance(inst)
        for role, path in args.sock:
            try:
                os.unlink(path)
            except OSError:
                pass
        loop.close()
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
