#!/usr/bin/env bash
# NIC plumbing benchmark against real Open vSwitch: plug/unplug through metalvirtd versus a
# raw OVSDB transact, and 100 domains with one interface each started concurrently.
# Usage: scripts/bench-ovs.sh [--rounds N] [--domains N]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
scripts/release-build.sh
METALVIRTD=$PWD/target/release/metalvirtd exec /usr/bin/python3 benches/ovs_peers.py "$@"
