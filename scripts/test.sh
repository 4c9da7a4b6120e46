#!/usr/bin/env bash
# ivnet's test command: installs what is missing, then runs every layer:
#  1. ring library (unit, golden, property, hostile-peer, fuzz replay,
#     concurrency, two processes over one memfd), device profiles,
#     ivshmem-server (host peers, real QEMU), ivnet-bridge (TAP devices in
#     network namespaces), the bare-metal guest in QEMU end to end;
#  2. the fuzz corpora (ring, layout page, PCI configuration space, guest
#     command line) and the ring's model test again with debug assertions
#     and overflow checks on: the bounds checks the fuzz targets rely on are
#     debug_assert!s, which step 1's --release build removes;
#  3. the bare-metal guest's host unit tests (debug build, same reason);
#  4. the ring's concurrency check and its fuzz replay under Miri (data
#     races, weak memory, undefined behaviour on hostile input).
# Extra arguments go to the test binaries of step 1 (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --miri

echo "== cargo test --workspace --release =="
cargo test --workspace --release --no-fail-fast -- "$@"

echo "== fuzz replays and the ring model with debug assertions =="
cargo test -p ivnet-ring --test fuzz_replay --test model
cargo test -p ivshmem --test fuzz_replay

echo "== bare-metal guest: host unit tests of its pure parts (with the command-line fuzz replay) =="
(cd bare-metal-guest && cargo test --lib --target x86_64-unknown-linux-gnu)

echo "== ivnet-ring concurrency check under Miri (seeds 0..${MIRI_SEEDS:-4}) =="
MIRIFLAGS="-Zmiri-many-seeds=0..${MIRI_SEEDS:-4}" \
  cargo +nightly miri test -p ivnet-ring --test concurrent

echo "== ivnet-ring fuzz replay under Miri (a compiled-in corpus subset) =="
cargo +nightly miri test -p ivnet-ring --test fuzz_replay
