#!/bin/sh
# Builds both guest images with one command:
#   target/x86_64-unknown-none/release/ivnet-guest      ELF for `qemu -kernel` (PVH)
#   target/x86_64-unknown-none/release/ivnet-guest.bin  flat image for
#       `jailhouse cell load <cell> ivnet-guest.bin -s "ip=..." -a 0x1000`
# (the flat image is `ivnet-guest-jailhouse`, linked at 0, through
# `objcopy -O binary`; binutils' objcopy or llvm-objcopy).
set -eu
cd "$(dirname "$0")"
cargo build --release "$@"
out=target/x86_64-unknown-none/release
objcopy=objcopy
command -v "$objcopy" >/dev/null 2>&1 || objcopy=llvm-objcopy
"$objcopy" -O binary "$out/ivnet-guest-jailhouse" "$out/ivnet-guest.bin"
echo "$out/ivnet-guest (PVH ELF), $out/ivnet-guest.bin (Jailhouse flat image, $(wc -c <"$out/ivnet-guest.bin") bytes)"
