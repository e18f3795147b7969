#!/usr/bin/env bash
# The whole test suite in one command: installs the system packages the black-box tests use
# and the BMC peers (scripts/install-deps.sh) when they are missing, then runs `cargo test`,
# which builds the daemon and runs unit tests, domain-XML fixtures, wire tests, virsh tests,
# the libvirt C client (virt crate) tests and the python3-libvirt scripts (among them the
# BMC tests against sushy-tools, ipmi_sim and pyghmi, the NIC tests against Open vSwitch
# and OVN, and the disk tests against the SPDK test double and its contract test).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Benchmarks run a few rounds only under `cargo test` (proves they still work) — first, so the
# closing lines are the test summaries.
# One feature set for every cargo command here (and .ci/run's clippy), so the crate builds
# once: spdk-double adds the SPDK test double that metalvirt-spdk-bench drives.
features=(--features spdk-double)
cargo test -q --bench domain_xml "${features[@]}"
cargo build -q --bins "${features[@]}"
METALVIRTD=$PWD/target/debug/metalvirtd /usr/bin/python3 benches/bmc_peers.py --rounds 2 --watch-secs 3 >/dev/null
METALVIRTD=$PWD/target/debug/metalvirtd /usr/bin/python3 benches/ovs_peers.py --rounds 2 --domains 10 >/dev/null
target/debug/metalvirt-spdk-bench --rounds 2 --domains 10 >/dev/null
BIN=target/debug ./scripts/soak.sh --clients 5 --calls 60 --non-readers 2 --idle 20 --settle-secs 1 >/dev/null
cargo test --lib --bins --tests "${features[@]}" -- --test-threads "${TEST_THREADS:-4}"
