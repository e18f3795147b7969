#!/usr/bin/env bash
# Disk mapping benchmark: N disks of one domain and 50 domains mapped at once through the
# SPDK backend, against the SPDK test double with a real target's latency modelled
# (4-8 ms per call, 68 ms per NVMe-oF attach).
# Usage: scripts/bench-spdk.sh [--rounds N] [--domains N] [--latency MIN-MAX] [--attach-ms MS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q --features spdk-double
exec target/release/metalvirt-spdk-bench "$@"
