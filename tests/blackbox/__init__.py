"""Black-box tests of metalvirtd: the real daemon driven by real clients (libvirt-python, as
OpenStack nova uses it) against real peers (sushy-tools, ipmi_sim, Open vSwitch and OVN) or,
where none can run here, the SPDK test double.

All of them: `cargo test --test blackbox` (part of scripts/test.sh). One module, from the
repository root (METALVIRTD defaults to target/debug/metalvirtd):

    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_connect

- harness: the daemon under test and `DaemonCase`, the shared lab fixture (a fresh daemon
  and a nova-like connection per test, cleaned up however the test ends);
- peers: the BMC, OVS/OVN peers; pki: a test CA and certificates;
- spdk_client, spdk_double: SPDK's JSON-RPC client and the test double of spdk_tgt.
"""
