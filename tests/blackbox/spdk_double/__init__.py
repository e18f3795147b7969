"""A test double of SPDK's `spdk_tgt` JSON-RPC server (v26.05), stdlib only.

One process serves several SPDK "instances" (roles such as storage, dpu, host), each on its
own unix stream socket, joined by an in-process fabric: NVMe-oF (tcp/rdma addresses and
vfio-user directories are only keys), iSCSI portals and a fake Ceph. What it answers, and
the exact error codes and texts, come from the recordings of a real v26.05 target in
fixtures/spdk (files 01..07; "R" = the recorder's notes that came with them, not in this
repository) and, where those are silent, from SPDK v26.05's
sources (schema/schema.json and the RPC handlers), which is noted as "src".

    python3 -m blackbox.spdk_double --sock ROLE=PATH [--sock ROLE=PATH ...] [--latency MIN_MS[-MAX_MS]]
                   [--attach-latency MS] [--log PATH] [--bare]

It prints `ready` once every socket listens; SIGTERM (or SIGINT) removes the sockets and
every file it made (vhost sockets, vfio-user `cntrl` and endpoint sockets) and exits 0. A
role's vhost sockets go in the directory of its RPC socket (R: `-S dir`, default cwd).

Wire (R §3, 04, src lib/jsonrpc): bare concatenated JSON values, parsed as a stream (no
delimiter needed, whitespace allowed); each single response is compact with keys in the
order jsonrpc, id, result|error and is followed by "\\n" as jsonrpc_server.c writes it
(`--bare` leaves it out, to prove a client needs no delimiter); a batch gets one array (in
completion order, which is request order unless an element is slow) followed by "\\n". A
notification that succeeds gets no reply; one that fails still gets its error with
"id":null (src: spdk_jsonrpc_send_error_response always sends).
Invalid JSON closes the connection without a reply.

Latency: 0 by default. With `--latency 4-8` each reply waits a random time in the range and
`bdev_nvme_attach_controller` completes after `--attach-latency` (default 68 ms then, R §6),
so pipelined replies may come back out of order (R). Synchronous methods take effect in
arrival order; an attach takes effect when it completes.

Test-control methods (never sent by the daemon; accepted on any role's socket, acting on
the whole process unless a role is named; not logged by double_calls):
  double_rule {method, role?, match?: {params subset}, error?: {code, message}, delay_ms?,
               hang?: bool, times?: int (1; 0 = forever), skip?: int}   -> rule id
  double_clear_rules {}                                   -> true
  double_calls {role?, clear?: bool}   -> [{"role","method","params"}] in arrival order
  double_state {role?}                 -> compact summary of every (or one) instance
  double_latency {min_ms?, max_ms?, attach_ms?}           -> the new settings
  double_ceph_create {mon_host, user? ("admin"), key, pool, image, size_mib}  -> true
  double_ceph_resize {mon_host, pool, image, size_mib}    (resize outside SPDK) -> true
  double_io {role?, name?}   I/O happens on iSCSI bdevs: they notice a LUN resize -> names
  double_restart {role}      the instance restarts empty (connections dropped)   -> true
"""
