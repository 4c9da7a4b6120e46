#!/bin/sh
# Builds the aarch64 guest:
#   target/aarch64-unknown-none/release/ivnet-guest-aarch64      ELF (symbols)
#   target/aarch64-unknown-none/release/ivnet-guest-aarch64.bin  arm64 Image for
#       `qemu-system-aarch64 -M virt,gic-version=2 -kernel ivnet-guest-aarch64.bin`
# (`objcopy -O binary`: binutils' objcopy knows aarch64 ELF only as
# multiarch, so llvm-objcopy first).
set -eu
cd "$(dirname "$0")"
cargo build --release "$@"
out=target/aarch64-unknown-none/release
objcopy=llvm-objcopy
command -v "$objcopy" >/dev/null 2>&1 || objcopy=objcopy
"$objcopy" -O binary "$out/ivnet-guest-aarch64" "$out/ivnet-guest-aarch64.bin"
echo "$out/ivnet-guest-aarch64.bin (arm64 Image, $(wc -c <"$out/ivnet-guest-aarch64.bin") bytes)"
