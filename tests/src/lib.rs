//! Shared helpers for ivnet's end-to-end tests (real QEMU, real TAP devices,
//! real network namespaces). Each module belongs to one layer of tests.
#![allow(missing_docs)]

pub mod aarch64;
pub mod guest_device;
pub mod hostile;
pub mod ivshmem2;
pub mod jailhouse;
pub mod jailhouse_arm64;
pub mod linuxvm;
pub mod netns;
pub mod qemu;
pub mod two_vms;
pub mod virtio;
