"""The process: instances joined by an in-process fabric (NVMe-oF, iSCSI portals, a fake
Ceph), the test-control rules (double_rule and friends), latency, and the call log."""

import errno as E
import os
import random
import re
import time
import traceback

from .wire import *  # noqa: F401,F403
from .objects import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .instance import *  # noqa: F401,F403
from .methods import *  # noqa: F401,F403


# ------------------------------------------------------------------------------------------
# The fabric: the instances, the addresses they listen on, a fake Ceph, and the test controls

def subset(match, value):
    if match is None:
        return True
    if isinstance(match, dict):
        return isinstance(value, dict) and all(
            k in value and subset(v, value[k]) for k, v in match.items())
    return match == value


class Rule:
    def __init__(self, rid, spec):
        self.id = rid
        self.method = spec["method"]
        self.role = spec.get("role")
        self.match = spec.get("match")
        self.error = spec.get("error")
        self.delay = spec.get("delay_ms", 0) / 1000.0
        self.hang = bool(spec.get("hang", False))
        self.times = spec.get("times", 1)
        self.skip = spec.get("skip", 0)
        self.used = 0


class Fabric:
    def __init__(self, loop, latency=(0.0, 0.0), attach_ms=None, log=None, bare=False):
        self.loop = loop
        self.instances = {}
        self.servers = {}
        self.conns = {}              # role -> set of RpcProtocol
        self.addresses = {}          # nvmf listen keys -> {"inst", "subsys"}
        self.portals = {}            # (host, port) -> instance
        self.ceph = {}               # mon_host -> {"users": {}, "pools": {pool: {image: {}}}}
        self.rules = []
        self.next_rule = 1
        self.calls = []
        self.min_ms, self.max_ms = latency
        self.attach_ms = attach_ms if attach_ms is not None else (68.0 if self.max_ms else 0.0)
        self.log = log
        self.terminator = "" if bare else "\n"
        self.stopping = False

    # --- latency -----------------------------------------------------------------------------

    def latency(self):
        if self.max_ms <= 0:
            return 0.0
        return random.uniform(self.min_ms, self.max_ms) / 1000.0

    def attach_latency(self):
        return self.attach_ms / 1000.0

    # --- NVMe-oF addresses ------------------------------------------------------------------

    @staticmethod
    def _key(trid):
        if trid["trtype"] == "VFIOUSER":
            return ("VFIOUSER", os.path.realpath(trid["traddr"]))
        return (trid["trtype"], trid["traddr"], trid["trsvcid"])

    def claim_address(self, inst, subsys, trid):
        """A TCP/RDMA address belongs to one instance (its subsystems share it, as the
        real target's listener does); a vfio-user directory to one subsystem."""
        key = self._key(trid)
        owner = self.addresses.get(key)
        if owner is not None and (owner["inst"] is not inst or key[0] == "VFIOUSER"):
            return False
        self.addresses[key] = {"inst": inst, "subsys": subsys}
        return True

    def release_address(self, inst, trid):
        key = self._key(trid)
        owner = self.addresses.get(key)
        if owner is None or owner["inst"] is not inst:
            return
        if key[0] != "VFIOUSER" and any(trid in s.listeners for s in inst.subsystems.values()):
            return
        del self.addresses[key]

    def release_all(self, inst):
        for key in [k for k, v in self.addresses.items() if v["inst"] is inst]:
            del self.addresses[key]
        for key in [k for k, v in self.portals.items() if v is inst]:
            del self.portals[key]

    def resolve(self, ctrl):
        """Where an attach would connect: (instance, subsystem, listener) or None."""
        t = ctrl.trid
        trtype = t["trtype"]
        if trtype in ("TCP", "RDMA"):
            svc, addr = t.get("trsvcid", ""), t.get("traddr", "")
            owner = None
            for a in (addr, "0.0.0.0", "::"):
                owner = self.addresses.get((trtype, a, svc))
                if owner:
                    break
            if owner is None:
                return None
            s = owner["inst"].subsystems.get(t.get("subnqn") or DISCOVERY_NQN)
            if s is None or s.discovery:
                return None
            listener = next((x for x in s.listeners if x["trtype"] == trtype and
                             x["trsvcid"] == svc and x["traddr"] in (addr, "0.0.0.0", "::")),
                            None)
        elif trtype == "VFIOUSER":
            owner = self.addresses.get(("VFIOUSER", os.path.realpath(t.get("traddr", ""))))
            if owner is None:
                return None
            s = owner["subsys"]
            if t.get("subnqn") and t["subnqn"] != s.nqn:
                return None
            listener = next((x for x in s.listeners if x["trtype"] == "VFIOUSER" and
                             os.path.realpath(x["traddr"]) == os.path.realpath(t["traddr"])),
                            None)
        else:
            return None
        if listener is None or s.nqn not in owner["inst"].subsystems:
            return None
        if not s.allow_any_host and ctrl.hostnqn not in s.hosts:
            return None
        return owner["inst"], s, listener

    def connect(self, initiator, ctrl):
        found = self.resolve(ctrl)
        if found is None:
            return None
        target, s, listener = found
        conn = target.accept_host(s, listener, ctrl.hostnqn, initiator, ctrl)
        if conn is None:
            return None
        ctrl.target = (target, s, conn)
        ctrl.cntlid = conn.cntlid
        ctrl.cdata = {"vendor_id": "0x4e58" if listener["trtype"] == "VFIOUSER" else "0x8086",
                      "model": s.model, "serial": s.serial, "subnqn": s.nqn,
                      "ana": s.ana_reporting}
        return ctrl.target

    # --- iSCSI ---------------------------------------------------------------------------------

    def claim_portal(self, inst, addr):
        if self.portals.get(addr, inst) is not inst:
            return False
        self.portals[addr] = inst
        return True

    def release_portal(self, inst, addr):
        if self.portals.get(addr) is inst:
            del self.portals[addr]

    def iscsi_login(self, initiator, host, port, iqn, lun_id, user, secret):
        """A libiscsi full connect: portal, target, initiator group, CHAP, then the LUN."""
        for addr in ((host, port), ("0.0.0.0", port), ("::", port)):
            target = self.portals.get(addr)
            if target is not None:
                break
        else:
            return None
        node = next((n for k, n in target.target_nodes.items() if k.lower() == iqn.lower()), None)
        if node is None:
            return None
        tags = {t for t, portals in target.portal_groups.items() if addr in portals}

        def allowed(ig):
            names = [n.lower() for n in target.initiator_groups[ig]["initiators"]]
            if "!" + initiator.lower() in names:
                return False
            return "any" in names or initiator.lower() in names
        if not any(pg in tags and allowed(ig) for pg, ig in node["maps"]):
            return None
        if node["require_chap"]:
            secrets = target.auth_groups.get(node["chap_group"], [])
            if not any(s["user"] == user and s["secret"] == secret for s in secrets):
                return None
        lun = node["luns"].get(lun_id)
        if lun is None:
            return None
        return target, node, lun_id, lun

    # --- Ceph ----------------------------------------------------------------------------------

    def ceph_connect(self, mon_host, user, key):
        if not mon_host or key is None:
            return None
        for host in re.split(r"[,; ]+", mon_host):
            c = self.ceph.get(host)
            if c is not None and c["users"].get(user) == key:
                return c
        return None

    def ceph_image_resized(self, image):
        for inst in list(self.instances.values()):
            for b in list(inst.bdevs.values()):
                if b.driver == "rbd" and b.rbd["image"] is image:
                    try:
                        inst.resize_bdev(b, image["size"] // b.block_size)
                    except RpcError:
                        pass

    # --- instances -----------------------------------------------------------------------------

    def stop_instance(self, inst):
        """The process of one role exits: its socket goes away, its peers notice."""
        if self.instances.get(inst.role) is not inst:
            return
        del self.instances[inst.role]
        server = self.servers.pop(inst.role, None)
        if server is not None:
            server.close()
        for conn in list(self.conns.pop(inst.role, ())):
            conn.abort()
        inst.teardown()
        try:
            os.unlink(inst.sock_path)
        except OSError:
            pass
        if not self.instances:
            self.shutdown()

    def shutdown(self):
        if self.stopping:
            return
        self.stopping = True
        for inst in list(self.instances.values()):
            self.stop_instance(inst)
        self.loop.call_soon(self.loop.stop)

    # --- test controls -------------------------------------------------------------------------

    def match_rule(self, role, method, params):
        for r in list(self.rules):
            if r.method != method or (r.role is not None and r.role != role) or \
                    not subset(r.match, params if params is not None else {}):
                continue
            if r.skip > 0:
                r.skip -= 1
                continue
            r.used += 1
            if r.times and r.used >= r.times:
                self.rules.remove(r)
            return r
        return None

    def _role(self, p, required=False):
        role = p.get("role")
        if role is None and not required:
            return None
        if role not in self.instances:
            raise RpcError(INVALID_PARAMS, "unknown role %r" % (role,))
        return role

    def control(self, conn, method, p):
        """The double_* methods (see the module docstring)."""
        if p is None:
            p = {}
        if not isinstance(p, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object")
        if method == "double_rule":
            if not isinstance(p.get("method"), str):
                raise RpcError(INVALID_PARAMS, "double_rule needs a method")
            rule = Rule(self.next_rule, p)
            self.next_rule += 1
            self.rules.append(rule)
            return rule.id
        if method == "double_clear_rules":
            self.rules = []
            return True
        if method == "double_calls":
            role = self._role(p)
            out = [dict(c) for c in self.calls if role is None or c["role"] == role]
            if p.get("clear"):
                self.calls = [c for c in self.calls if role is not None and c["role"] != role]
            return out
        if method == "double_state":
            role = self._role(p)
            if role is not None:
                return self.instances[role].summary()
            return {r: i.summary() for r, i in self.instances.items()}
        if method == "double_latency":
            self.min_ms = float(p.get("min_ms", self.min_ms))
            self.max_ms = float(p.get("max_ms", max(self.max_ms, self.min_ms)))
            self.attach_ms = float(p.get("attach_ms", self.attach_ms))
            return {"min_ms": self.min_ms, "max_ms": self.max_ms, "attach_ms": self.attach_ms}
        if method == "double_ceph_create":
            for key in ("mon_host", "key", "pool", "image"):
                if not isinstance(p.get(key), str):
                    raise RpcError(INVALID_PARAMS, "double_ceph_create needs %s" % key)
            c = self.ceph.setdefault(p["mon_host"], {"users": {}, "pools": {}})
            c["users"][p.get("user", "admin")] = p["key"]
            pool = c["pools"].setdefault(p["pool"], {})
            if p["image"] in pool:
                raise errno_error(E.EEXIST)
            pool[p["image"]] = {"size": int(p.get("size_mib", 0)) * MiB}
            return True
        if method == "double_ceph_resize":
            image = self.ceph.get(p.get("mon_host"), {}).get("pools", {}).get(
                p.get("pool"), {}).get(p.get("image"))
            if image is None:
                raise errno_error(E.ENOENT)
            image["size"] = int(p["size_mib"]) * MiB
            self.ceph_image_resized(image)
            return True
        if method == "double_io":
            role = self._role(p)
            changed = []
            for r, inst in self.instances.items():
                if role is None or r == role:
                    changed += inst.iscsi_io(p.get("name"))
            return changed
        if method == "double_restart":
            inst = self.instances[self._role(p, required=True)]
            inst.teardown()
            for c in list(self.conns.get(inst.role, ())):
                if c is conn:
                    self.loop.call_soon(c.abort)
                else:
                    c.abort()
            return True
        raise RpcError(-32601, "Method not found")

    # --- requests ------------------------------------------------------------------------------

    def _log(self, role, arrow, text):
        if self.log is not None:
            self.log.write("%.3f %s %s %s\n" % (time.time(), role, arrow, text))
            self.log.flush()

    def _after(self, delay, fn, *args):
        if delay <= 0:
            fn(*args)
        else:
            self.loop.call_later(delay, fn, *args)

    def execute(self, conn, req, done, delay):
        """Run one request object and call done(reply or None) when its reply is due
        (never, for a request a rule makes hang)."""
        inst = conn.inst
        rid, has_id = None, False

        def reply(result=None, error=None):
            if error is not None:
                return {"jsonrpc": "2.0", "id": rid, "error": error}
            if not has_id or rid is None:
                return None                         # a notification (04: no reply)
            return {"jsonrpc": "2.0", "id": rid, "result": result}

        def fail(e):
            return reply(error={"code": e.code, "message": e.message})

        invalid = fail(RpcError(-32600, "Invalid request"))
        if not isinstance(req, dict) or set(req) - {"jsonrpc", "method", "params", "id"} or \
                ("jsonrpc" in req and req["jsonrpc"] != "2.0") or \
                not isinstance(req.get("method"), str):
            return self._after(delay, done, invalid)
        if "id" in req:
            if isinstance(req["id"], (bool, dict, list)):
                return self._after(delay, done, invalid)
            rid, has_id = req["id"], True
        params = req.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            return self._after(delay, done, fail(RpcError(-32600, "Invalid request")))
        method = req["method"]
        if method.startswith("double_"):
            try:
                return done(reply(self.control(conn, method, params)))
            except RpcError as e:
                return done(fail(e))
        self.calls.append({"role": inst.role, "method": method, "params": params})
        rule = self.match_rule(inst.role, method, params)
        if rule is not None:
            if rule.hang:
                return None
            delay += rule.delay
            if rule.error is not None:
                err = rule.error
                return self._after(delay, done, reply(error={
                    "code": err.get("code", INTERNAL_ERROR), "message": err.get("message", "")}))
        try:
            result = invoke(inst, method, params)
        except RpcError as e:
            return self._after(delay, done, fail(e))
        except Exception:                          # a bug in the double: say so, keep serving
            traceback.print_exc()
            return self._after(delay, done, fail(RpcError(INTERNAL_ERROR, "Internal error")))
        if isinstance(result, Later):
            return self._later(result, rule.delay if rule else 0.0, done, reply, fail)
        return self._after(delay, done, reply(result))

    def _later(self, later, extra, done, reply, fail):
        def step():
            try:
                result = later.finish()
            except RpcError as e:
                return done(fail(e))
            except Exception:
                traceback.print_exc()
                return done(fail(RpcError(INTERNAL_ERROR, "Internal error")))
            if isinstance(result, Later):
                return self._later(result, 0.0, done, reply, fail)
            return done(reply(result))
        self._after(later.delay + extra, step)

    def handle(self, conn, value):
        """A complete JSON value from a connection: a request, a batch or junk (src
        jsonrpc_server.c: an empty batch or a non-object top level is an invalid request)."""
        self._log(conn.inst.role, ">>", encode(value))
        if isinstance(value, list) and value:
            return self._batch(conn, value)
        if isinstance(value, list) or not isinstance(value, dict):
            value = None
        conn.pending += 1
        self.execute(conn, value, conn.deliver, self.latency())

    def _batch(self, conn, items):
        """Each element runs in order; the array goes out once all are done, in completion
        order, after one latency for the whole batch (04; R: 50 batched ~ 8 ms)."""
        replies = []
        state = {"left": len(items), "due": time.monotonic() + self.latency()}
        conn.pending += 1

        def element_done(r):
            if r is not None:
                replies.append(r)
            state["left"] -= 1
            if state["left"] == 0:
                wait = state["due"] - time.monotonic()
                self._after(wait, conn.deliver, replies if replies else None)
        for item in items:
            self.execute(conn, item, element_done, 0.0)
