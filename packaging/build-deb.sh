#!/usr/bin/env bash
# Builds the Debian package of metalvirt from this repository:
#
#   packaging/build-deb.sh [--bin-dir DIR] [--out DIR] [--fast]
#
# Without --bin-dir the release binaries are built first (cargo build --release); with it,
# the metalvirtd, metalvirt-agent and metalvirt-manpage found there are packaged (the test suite packages its
# debug build this way). The package: /usr/bin/metalvirtd and metalvirt-agent, the systemd units, the commented
# configuration as a conffile (no servers configured: the daemon serves and says so),
# metalvirtd(8) generated from the command-line definition, docs under
# /usr/share/doc/metalvirt. Prints the path of the .deb. --fast compresses with gzip -1
# (tests) instead of xz.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=""
out=target/debian
compress=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "usage: $0 [--bin-dir DIR] [--out DIR] [--fast]" >&2; exit 2 ;;
  esac
done
if [ -z "$bin_dir" ]; then
  scripts/release-build.sh --bin metalvirtd --bin metalvirt-agent --bin metalvirt-manpage
  bin_dir=target/release
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d "${TMPDIR:-/tmp}/metalvirt-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root

install -D -m 0755 "$bin_dir/metalvirtd" "$root/usr/bin/metalvirtd"
# The DPU side of controller mode (its unit is not enabled: it needs its configuration).
install -D -m 0755 "$bin_dir/metalvirt-agent" "$root/usr/bin/metalvirt-agent"
# Line tables stay out of the package (they are for profiling the build tree).
if command -v strip >/dev/null; then
  strip --strip-debug "$root/usr/bin/metalvirtd" "$root/usr/bin/metalvirt-agent"
fi
for u in packaging/systemd/*; do
  install -D -m 0644 "$u" "$root/lib/systemd/system/$(basename "$u")"
done
install -D -m 0644 packaging/metalvirtd.toml "$root/etc/metalvirt/metalvirtd.toml"
mkdir -p "$root/usr/share/man/man8"
"$bin_dir/metalvirt-manpage" | gzip -9n > "$root/usr/share/man/man8/metalvirtd.8.gz"
doc=$root/usr/share/doc/metalvirt
install -D -m 0644 README.md "$doc/README.md"
for f in docs/*.md; do install -D -m 0644 "$f" "$doc/$(basename "$f")"; done
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
install -D -m 0644 packaging/metalvirt-agent.toml "$doc/examples/metalvirt-agent.toml"

# Shared-library dependencies as dpkg-shlibdeps finds them (it wants a debian/control).
depends="libc6"
if command -v dpkg-shlibdeps >/dev/null; then
  mkdir -p "$stage/src/debian"
  printf 'Source: metalvirt\n\nPackage: metalvirt\nArchitecture: any\n' > "$stage/src/debian/control"
  if shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O "$root/usr/bin/metalvirtd" \
      "$root/usr/bin/metalvirt-agent" 2>/dev/null); then
    depends=${shlibs#shlibs:Depends=}
  fi
fi
size=$(du -sk "$root" | cut -f1)
mkdir -p "$root/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
  -e "s/@SIZE@/$size/" packaging/debian/control.in > "$root/DEBIAN/control"
echo /etc/metalvirt/metalvirtd.toml > "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
deb="$out/metalvirt_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
