#!/usr/bin/env bash
# The whole test suite in one command: installs the system packages the black-box tests use
# (real libvirt clients and the schema validator) when they are missing, then runs
# `cargo test`, which builds the daemon and runs unit tests, wire tests, virsh tests, the
# libvirt C client (virt crate) tests and the python3-libvirt scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libvirt-clients libvirt-dev python3-libvirt libxml2-utils pkg-config gcc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --all-targets -- --test-threads "${TEST_THREADS:-4}"
