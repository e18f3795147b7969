#!/usr/bin/env bash
# Runs libvirt's conformance kit (libvirt-tck, Perl, Sys::Virt) against metalvirtd on its
# simulated lab and prints one line per script: exit status, passed and failed checks.
# docs/COMPATIBILITY.md records the result and explains every failure.
#
# Usage: scripts/tck.sh [--tck DIR] [SCRIPT_DIR...]   (default: domain networks storage nwfilter)
# The kit is cloned from gitlab.com at the pinned commit below unless --tck names a checkout.
# Not part of .ci/run: it needs the network for the clone and takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TCK_URL=https://gitlab.com/libvirt/libvirt-tck.git
TCK_COMMIT=d5984ff328df0d306131cf0b853a479308382f59 # 2025-08-28
TCK=${XDG_CACHE_HOME:-$HOME/.cache}/metalvirt/libvirt-tck
if [ "${1:-}" = --tck ]; then TCK=$2; shift 2; fi
DIRS=("$@")
[ ${#DIRS[@]} -gt 0 ] || DIRS=(domain networks storage nwfilter)

apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends \
    libsys-virt-perl libaccessors-perl libconfig-record-perl libtap-formatter-html-perl \
    libtap-harness-archive-perl libxml-twig-perl libxml-writer-perl libxml-xpath-perl \
    libio-string-perl libsub-uplevel-perl libwww-perl libyaml-perl libio-interface-perl \
    libnetaddr-ip-perl libtest-exception-perl libfile-slurp-perl git >/dev/null
if [ ! -d "$TCK/scripts" ]; then
    git clone -q "$TCK_URL" "$TCK"
    git -C "$TCK" checkout -q "$TCK_COMMIT"
fi

cargo build -q --bin metalvirtd
WORK=$(mktemp -d /tmp/metalvirt-tck.XXXXXX)
cleanup() {
    [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
"$REPO/target/debug/metalvirtd" --sim-nodes 4 --socket-dir "$WORK/run" \
    --state-dir "$WORK/state" --config-dir "$WORK/etc" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do [ -S "$WORK/run/virtmetald-sock" ] && break; sleep 0.1; done

# The kit boots its domains from a kernel and initrd it copies into its scratch directory:
# any file does, a bare-metal server boots from its own disk or the network.
printf 'not a kernel' >"$WORK/vmlinuz"
printf 'not an initrd' >"$WORK/initrd"
cat >"$WORK/tck.yml" <<EOF
uri: "qemu+unix:///system?socket=$WORK/run/virtmetald-sock"
scratch_dir: $WORK/scratch
kernels:
  - arch: x86_64
    ostype: hvm
    kernel: $WORK/vmlinuz
    initrd: $WORK/initrd
EOF
mkdir -p "$WORK/scratch" "$WORK/out"

cd "$TCK"
printf '%-4s %5s %7s  %s\n' exit ok 'not ok' script
for dir in "${DIRS[@]}"; do
    for t in scripts/"$dir"/*.t; do
        out=$WORK/out/$dir-$(basename "$t").out
        rc=0
        LIBVIRT_TCK_CONFIG=$WORK/tck.yml LIBVIRT_TCK_AUTOCLEAN=1 \
            timeout 120 perl -Ilib "$t" >"$out" 2>&1 || rc=$?
        printf '%-4s %5s %7s  %s\n' "$rc" "$(grep -c '^ok' "$out" || true)" \
            "$(grep -c '^not ok' "$out" || true)" "$t"
        if [ -n "${TCK_VERBOSE:-}" ] && [ "$rc" != 0 ]; then sed 's/^/    /' "$out"; fi
    done
done
if grep -q "unknown procedure" "$WORK/daemon.log"; then
    echo "the daemon met procedures it does not know:"
    grep "unknown procedure" "$WORK/daemon.log" | sort | uniq -c
else
    echo "the daemon met no unknown procedure"
fi
