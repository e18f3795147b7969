#!/usr/bin/env bash
# BMC power benchmark against the real peers (sushy-tools, pyghmi, ipmi_sim): CREATE→RUNNING
# through metalvirtd versus the same BMC calls made directly with curl/ipmitool, and the
# watcher's request rate. Usage: scripts/bench-bmc.sh [--rounds N] [--watch-secs S]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
scripts/release-build.sh
METALVIRTD=$PWD/target/release/metalvirtd exec /usr/bin/python3 benches/bmc_peers.py "$@"
