#!/usr/bin/env bash
# ivnet's test command: installs what is missing, then runs every layer:
#  1. ring library (unit, golden, property, hostile-peer, fuzz replay,
#     concurrency, two processes over one memfd), device profiles,
#     ivshmem-server (host peers, real QEMU), ivnet-bridge (TAP devices in
#     network namespaces), the bare-metal guest in QEMU end to end;
#  2. the ring's concurrency check under Miri (data races, weak memory).
# Extra arguments go to the test binaries (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --miri

echo "== cargo test --workspace --release =="
cargo test --workspace --release --no-fail-fast -- "$@"

echo "== bare-metal guest: host unit tests of its pure parts =="
(cd bare-metal-guest && cargo test --release --lib --target x86_64-unknown-linux-gnu)

echo "== ivnet-ring concurrency check under Miri (seeds 0..${MIRI_SEEDS:-4}) =="
MIRIFLAGS="-Zmiri-many-seeds=0..${MIRI_SEEDS:-4}" \
  cargo +nightly miri test -p ivnet-ring --test concurrent
