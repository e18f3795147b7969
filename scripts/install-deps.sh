#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when missing: real libvirt clients
# (virsh, libvirt's C library for the `virt` crate, python3-libvirt), the schema validators
# and a C toolchain for -sys crates. Root or sudo; idempotent and quick when all are present.
set -euo pipefail
packages=(libvirt-clients libvirt-dev python3-libvirt libxml2-utils pkg-config gcc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
  --no-install-recommends "${missing[@]}"
