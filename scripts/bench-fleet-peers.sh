#!/usr/bin/env bash
# Fleet benchmark against real peers (sushy-tools with N Redfish systems, N ports on one
# ovsdb-server): starts at once, the watcher's requests, destroys. docs/PERFORMANCE.md.
# Usage: scripts/bench-fleet-peers.sh [--nodes N] [--watch-secs S]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
scripts/release-build.sh
METALVIRTD=$PWD/target/release/metalvirtd exec /usr/bin/python3 benches/fleet_peers.py "$@"
