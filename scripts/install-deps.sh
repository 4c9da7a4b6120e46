#!/usr/bin/env bash
# Installs what ivnet's build, tests and demo use, when it is missing.
# Debian 12 (bookworm), as root (or with sudo). Idempotent and quiet when
# everything is present.
#
#   scripts/install-deps.sh          packages + the bare-metal Rust target
#   scripts/install-deps.sh --miri   also the nightly toolchain with Miri
#   scripts/install-deps.sh --fuzz   also nightly and cargo-fuzz, for the
#                                    coverage-guided runs of the fuzz targets
#                                    (the test command only replays corpora)
set -euo pipefail

want_miri=0
want_fuzz=0
for arg in "$@"; do
  case "$arg" in
    --miri) want_miri=1 ;;
    --fuzz) want_fuzz=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)

# command -> Debian package providing it
declare -A pkg_for=(
  [qemu-system-x86_64]=qemu-system-x86
  # the aarch64 guest's tests (QEMU virt under TCG)
  [qemu-system-aarch64]=qemu-system-arm
  [ip]=iproute2
  [ping]=iputils-ping
  [cpio]=cpio
  [iperf3]=iperf3
  [busybox]=busybox-static
  [gcc]=gcc
  [make]=make
  [ethtool]=ethtool
  # objcopy (flat Jailhouse image), as/ld (the Jailhouse rig's firmware)
  [objcopy]=binutils
  # the aarch64 Image (Debian's binutils objcopy knows no aarch64 ELF) and
  # the arm64 Jailhouse rigs' firmware (llvm-mc assembles, llvm-objcopy
  # flattens; Debian's llvm links both unversioned into /usr/bin)
  [llvm-objcopy]=llvm
  [llvm-mc]=llvm
)
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
# Build dependencies of the QEMU with the ivshmem 2.0 device, built by the
# tests on first use (tests/qemu-ivshmem2/build.sh; meson comes from PyPI).
for pkg in ninja-build flex bison pkg-config libglib2.0-dev libpixman-1-dev \
           libfdt-dev python3-venv dpkg-dev xz-utils qemu-system-data; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v rustup >/dev/null 2>&1; then
  echo "install-deps: rustup is required (the machine's Rust toolchain comes with it)" >&2
  exit 1
fi
rustup target list --installed | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none
rustup target list --installed | grep -qx aarch64-unknown-none || rustup target add aarch64-unknown-none
for comp in rustfmt clippy; do
  rustup component list --installed | grep -q "^$comp" || rustup component add "$comp"
done

if [ "$want_miri" = 1 ]; then
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal --component miri,rust-src
  fi
  rustup component list --installed --toolchain nightly | grep -q '^miri' \
    || rustup component add --toolchain nightly miri rust-src
fi

if [ "$want_fuzz" = 1 ]; then
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
fi
