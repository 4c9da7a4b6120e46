//! The aarch64 guest (QEMU `virt`, GICv2 + v2m, TCG) in the whole chain of
//! `guest_bridge.rs` — ivshmem-doorbell ↔ ivshmem-server ↔ `ivnet-bridge
//! --server` ↔ a TAP in a network namespace — with the same tests: ping
//! incl. 1000 × 16000 bytes, UDP echo, TCP echo 16 MiB, TCP discard 256 MiB,
//! guest restart, bridge restart without a guest reboot, a one-vector link,
//! and a reset with a stale RUN entry. One source for both architectures:
//! that file is compiled here as a module and reads `crate::ARCH`.

use ivnet_e2e::qemu::Arch;

const ARCH: Arch = Arch::Aarch64;

#[path = "guest_bridge.rs"]
mod guest_bridge;
