#!/usr/bin/env bash
# Installs what the test suite needs, when missing, and is quick when all is present:
# - Debian packages: real libvirt clients (virsh, libvirt's C library for the `virt` crate,
#   python3-libvirt), the schema validators, a C toolchain for -sys crates, and the IPMI peers
#   and client (OpenIPMI's ipmi_sim, ipmitool), and Open vSwitch + OVN (ovsdb-server, ovs-vswitchd,
#   northd, ovn-controller) for the NIC plumbing tests;
# - a Python venv with the Redfish and IPMI BMC peers (sushy-tools, pyghmi) and SPDK's own
#   JSON-RPC client (PyPI spdk: spdk-rpc, spdk.rpc.client; no SPDK target is packaged, the
#   tests use tests/blackbox/spdk_double and check it against this client), in
#   $METALVIRT_PEERS_VENV (default target/peers-venv).
# Root or sudo for apt; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libvirt-clients libvirt-dev python3-libvirt libxml2-utils pkg-config gcc
          openipmi ipmitool openssl curl openvswitch-switch ovn-central ovn-host
          python3-cryptography systemd dpkg-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
    --no-install-recommends "${missing[@]}"
fi

venv=${METALVIRT_PEERS_VENV:-target/peers-venv}
pins=(sushy-tools==2.2.0 pyghmi==1.6.19 spdk==26.9)
if ! "$venv/bin/python" -c 'import sushy_tools, pyghmi, spdk' 2>/dev/null; then
  echo "creating the peers' venv in $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
fi
