//! ivshmem device profiles behind one interface.
//!
//! Two devices carry an ivnet link:
//! - **Jailhouse ivshmem 2.0** (`110a:4106`): sizes and base address come from
//!   the vendor-specific PCI capability; BAR0 has ID, MAX_PEERS, INT_CONTROL,
//!   DOORBELL and STATE.
//! - **QEMU ivshmem-doorbell** (`1af4:1110`): BAR0 has IntrMask, IntrStatus,
//!   IVPosition and Doorbell; BAR2 is one flat window whose first page is the
//!   [layout page](layout::LayoutPage) written by ivnet's ivshmem-server.
//!
//! Both are presented to the layers above as the ivshmem 2.0
//! [`SharedMemoryLayout`](layout::SharedMemoryLayout).
#![no_std]
#![warn(missing_docs)]

pub mod layout;
