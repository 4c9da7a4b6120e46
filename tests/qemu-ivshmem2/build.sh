#!/usr/bin/env bash
# Builds qemu-system-x86_64 and qemu-system-aarch64 with the ivshmem 2.0
# device (ivshmem2.c) from Debian's QEMU 10.0 source (bookworm-backports),
# in one configure (the target-independent objects are compiled once), and
# caches both outside the clone, so a machine builds them once:
#
#   $IVNET_QEMU_CACHE/qemu-<version>-<hash>/qemu-system-x86_64
#   $IVNET_QEMU_CACHE/qemu-<version>-<hash>/qemu-system-aarch64
#
# (IVNET_QEMU_CACHE defaults to /var/cache/ivnet; <hash> covers ivshmem2.c,
# devices.mak (x86_64), devices-aarch64.mak and this script). Prints the
# path of the --arch binary (default x86_64) as the last line of stdout;
# everything else goes to stderr. The build tree
# ($IVNET_QEMU_CACHE/qemu-<version>-build) is kept, so a changed device
# rebuilds in seconds. Needs the packages of scripts/install-deps.sh and
# root (or a writable cache and an existing deb-src entry) for apt.
#
#   tests/qemu-ivshmem2/build.sh [--force] [--arch x86_64|aarch64]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${IVNET_QEMU_CACHE:-/var/cache/ivnet}
version=10.0.2
debian_source="qemu/bookworm-backports"
tarball_name="qemu_${version}+ds.orig.tar.xz"
# From Debian's (signed) Sources index for 1:10.0.2+ds-2+deb13u1~bpo12+1.
tarball_sha256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
meson_version=1.5.2
pycotap_version=1.3.1

log() { echo "qemu-ivshmem2: $*" >&2; }

force=false
arch=x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=true ;;
    --arch)
      arch=${2:-}
      shift
      ;;
    *)
      log "unknown argument $1 (usage: build.sh [--force] [--arch x86_64|aarch64])"
      exit 2
      ;;
  esac
  shift
done
case "$arch" in
  x86_64 | aarch64) ;;
  *)
    log "--arch must be x86_64 or aarch64, not '$arch'"
    exit 2
    ;;
esac
targets=(x86_64 aarch64)

hash=$(cat "$here/ivshmem2.c" "$here/devices.mak" "$here/devices-aarch64.mak" "$here/build.sh" \
  | sha256sum | cut -c1-16)
out="$cache/qemu-$version-$hash"
binary="$out/qemu-system-$arch"
# Both binaries are installed together, the aarch64 one last.
done_marker="$out/qemu-system-aarch64"
if ! $force && [ -x "$done_marker" ]; then
  echo "$binary"
  exit 0
fi

mkdir -p "$cache/src"
# One build at a time per machine (test binaries may start in parallel).
exec 9>"$cache/qemu-build.lock"
flock 9
if ! $force && [ -x "$done_marker" ]; then
  echo "$binary"
  exit 0
fi
start=$(date +%s)

# --- source: Debian's orig tarball of QEMU 10.0 (apt-get source) ----------
tarball="$cache/src/$tarball_name"
if ! echo "$tarball_sha256  $tarball" | sha256sum -c --status 2>/dev/null; then
  if ! apt-cache showsrc qemu 2>/dev/null | grep -q "^Version: 1:$version"; then
    log "adding a deb-src entry for bookworm and bookworm-backports"
    cat >/etc/apt/sources.list.d/ivnet-qemu-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq >&2
  fi
  log "downloading $debian_source source"
  # Only the orig tarball is used (upstream QEMU; Debian's patches are not
  # needed). apt fails when the mirror lacks the .dsc although the tarball
  # came: the checksum below decides.
  (cd "$cache/src" && apt-get source --download-only -qq "$debian_source" >&2) || true
  echo "$tarball_sha256  $tarball" | sha256sum -c --status || {
    log "$tarball missing or wrong checksum"
    exit 1
  }
fi

# --- meson >= 1.5 and pycotap (bookworm has meson 1.0; Debian's source drops
# the wheels QEMU vendors), from PyPI into a venv of the cache -------------
pytools="$cache/pytools-meson-$meson_version-pycotap-$pycotap_version"
if [ ! -x "$pytools/bin/meson" ]; then
  log "installing meson $meson_version into $pytools"
  rm -rf "$pytools"
  python3 -m venv "$pytools"
  "$pytools/bin/pip" install -q "meson==$meson_version" "pycotap==$pycotap_version" >&2
fi

# --- tree: the tarball plus the device, its Kconfig symbol and devices.mak --
tree="$cache/qemu-$version-build"
srcdir="$tree/src"
if [ ! -f "$srcdir/.ivnet-extracted" ]; then
  log "extracting $tarball_name"
  rm -rf "$tree"
  mkdir -p "$srcdir"
  tar -xJf "$tarball" -C "$srcdir" --strip-components=1
  cat >>"$srcdir/hw/misc/Kconfig" <<'KC'

config IVSHMEM2_DEVICE
    bool
    depends on PCI && LINUX && IVSHMEM && MSI_NONBROKEN
KC
  echo "system_ss.add(when: 'CONFIG_IVSHMEM2_DEVICE', if_true: files('ivshmem2.c'))" \
    >>"$srcdir/hw/misc/meson.build"
  # Debian's +ds tarball has no firmware blobs (the system's firmware from
  # qemu-system-data is used through --firmwarepath): do not unpack EDK2.
  sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' "$srcdir/meson.build"
  grep -q 'unpack_edk2_blobs = false$' "$srcdir/meson.build"
  touch "$srcdir/.ivnet-extracted"
fi
cmp -s "$here/ivshmem2.c" "$srcdir/hw/misc/ivshmem2.c" || cp "$here/ivshmem2.c" "$srcdir/hw/misc/ivshmem2.c"
cmp -s "$here/devices.mak" "$srcdir/configs/devices/x86_64-softmmu/ivnet.mak" \
  || cp "$here/devices.mak" "$srcdir/configs/devices/x86_64-softmmu/ivnet.mak"
cmp -s "$here/devices-aarch64.mak" "$srcdir/configs/devices/aarch64-softmmu/ivnet.mak" \
  || cp "$here/devices-aarch64.mak" "$srcdir/configs/devices/aarch64-softmmu/ivnet.mak"

# --- configure (once per set of options) and build -----------------------
builddir="$tree/build"
configure_args=(
  --python="$pytools/bin/python3"
  --target-list=x86_64-softmmu,aarch64-softmmu
  --without-default-devices
  --with-devices-x86_64=ivnet
  --with-devices-aarch64=ivnet
  --without-default-features
  --enable-kvm --enable-tcg --enable-fdt=system
  --disable-docs --disable-werror --disable-tools --disable-guest-agent
  --disable-debug-info --disable-download --disable-install-blobs
  --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
)
# A tree configured with other options (an older x86-only build.sh) is
# configured afresh.
stamp="$builddir/.ivnet-configure"
if [ ! -f "$builddir/build.ninja" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${configure_args[*]}" ]; then
  log "configuring"
  rm -rf "$builddir"
  mkdir -p "$builddir"
  (cd "$builddir" && "$srcdir/configure" "${configure_args[@]}" >&2)
  echo "${configure_args[*]}" >"$stamp"
fi
log "building (ninja -j$(nproc))"
ninja -C "$builddir" -j"$(nproc)" "${targets[@]/#/qemu-system-}" >&2

mkdir -p "$out"
for t in "${targets[@]}"; do
  cp "$builddir/qemu-system-$t" "$out/qemu-system-$t.tmp"
  mv "$out/qemu-system-$t.tmp" "$out/qemu-system-$t"
done
log "built ${targets[*]/#/qemu-system-} in $out in $(( $(date +%s) - start )) s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "$binary"
