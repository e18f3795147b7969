#!/usr/bin/env bash
# What a DPU's agent adds per disk map and NIC plug (docs/PERFORMANCE.md, "Controller
# mode"): makes a throw-away test PKI and runs metalvirt-agent-bench (release build) on it.
#
#   scripts/bench-agent.sh [--calls N] [--concurrency N] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release}
if [ "$bin" = target/release ]; then
  cargo build --release -q --bin metalvirt-agent-bench
fi
pki=$(mktemp -d "${TMPDIR:-/tmp}/metalvirt-agent-pki.XXXXXX")
trap 'rm -rf "$pki"' EXIT
PYTHONPATH=tests /usr/bin/python3 -c "import sys; from blackbox.pki import AgentPki; AgentPki(sys.argv[1])" "$pki"
"$bin/metalvirt-agent-bench" --pki "$pki" "$@"
