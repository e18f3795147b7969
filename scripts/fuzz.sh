#!/usr/bin/env bash
# Coverage-guided fuzzing of one target, or of all of them one after another:
#
#   scripts/fuzz.sh TARGET SECONDS [RUNS]   # TARGET: rpc_call domain_xml device_xml secret_xml
#                                           #   config_toml spdk_reply ovsdb_reply redfish_json,
#                                           #   or all; RUNS: stop after that many executions
#
# Uses cargo-fuzz (libFuzzer) on the nightly toolchain; installs cargo-fuzz when missing.
# Seeds come from the fixtures (written by `tests/fuzz_smoke.rs`), the growing corpus lives in
# target/fuzz/corpus/TARGET, findings in target/fuzz/artifacts/TARGET/. A finding gets a
# regression input in fixtures/fuzz/regressions/TARGET/ (replayed by the test suite) and a
# line in docs/RELIABILITY.md. Sanitizer: none (the crate forbids unsafe code; libFuzzer's
# coverage, debug assertions and overflow checks stay on), for speed.
# The summary line per target: executions, exec/s, coverage (edges) and features, corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 TARGET|all SECONDS [RUNS]" >&2
  exit 2
fi
target=$1
secs=$2
runs=${3:--1}
all=(rpc_call domain_xml device_xml secret_xml config_toml spdk_reply ovsdb_reply redfish_json)
if [ "$target" = all ]; then targets=("${all[@]}"); else targets=("$target"); fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q

work=$PWD/target/fuzz
mkdir -p "$work"
METALVIRT_FUZZ_SEEDS=$work/seeds cargo test -q --test fuzz_smoke write_seeds >/dev/null

for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  log=$work/$t.log
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz -s none -a "$t" \
    "$work/corpus/$t" "$work/seeds/$t" -- \
    -max_total_time="$secs" -runs="$runs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  pick() { grep -ao "$1" | grep -o '[0-9]*$' | tail -n1 || true; }
  execs=$(pick 'stat::number_of_executed_units: *[0-9]*' <"$log")
  speed=$(pick 'stat::average_exec_per_sec: *[0-9]*' <"$log")
  last=$(grep -aE '^#[0-9]+' "$log" | tail -n1 || true)
  cov=$(echo "$last" | pick 'cov: [0-9]*')
  ft=$(echo "$last" | pick 'ft: [0-9]*')
  corp=$(echo "$last" | pick 'corp: [0-9]*')
  findings=$(find "$work/artifacts/$t" -type f | wc -l)
  echo "$t: executions ${execs:-?}, ${speed:-?} exec/s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, findings $findings (exit $rc, log $log)"
  if [ "$rc" -ne 0 ]; then
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -n 5 >&2 || true
  fi
done
