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
//! [`SharedMemoryLayout`]:
//!
//! ```text
//! Jailhouse (Base Address from the capability):
//!   base + 0: state table | R/W section | output peer 0 | output peer 1 | …
//! QEMU (BAR2):
//!   bar2 + 0: layout page (4 KiB) | state table | R/W section | output peer 0 | output peer 1 | …
//! ```
//!
//! Offsets in the layout are relative to the start of the shared memory
//! ([`SharedMemoryLocation`]); on QEMU the state table simply starts at
//! 0x1000 instead of 0.
//!
//! # Module map
//!
//! | module | what it does |
//! |---|---|
//! | [`pci`] | the [`ConfigSpace`](pci::ConfigSpace) reader trait, header, Command flags, BARs, a bounded capability walk, MSI-X capability |
//! | [`jailhouse`] | identification, vendor capability 09h → layout, one-shot bit, BAR0 registers, [`JailhouseDevice`] |
//! | [`qemu`] | identification, BAR0 registers, the layout page read from BAR2, [`QemuDevice`] |
//! | [`state`] | [`OwnStateEntry`]: publishing the own state without a STATE register (QEMU, host peers) |
//! | [`layout`] | the ivshmem 2.0 layout and the layout page format (shared with the server) |
//! | [`device`] | the [`Ivshmem`] trait, [`Profile`], [`Device`] (either profile) |
//! | [`error`] | [`DeviceError`] |
//!
//! # Typical use (bare-metal guest)
//!
//! ```text
//! cfg = port-I/O ConfigSpace for the device's bus/device/function
//! match Profile::from_ids(vendor, device):
//!   Jailhouse:    jailhouse::identify(cfg); program BAR0/BAR1; Command = MEMORY | BUS_MASTER;
//!                 regs = jailhouse::Registers::new(bar0);
//!                 dev = JailhouseDevice::probe(cfg, regs, PROTOCOL_NET, None)
//!                 memory at dev.location() = Physical(base)
//!   QemuDoorbell: qemu::identify(cfg); map BAR0 and BAR2 (sizes via pci::size_bar);
//!                 regs = qemu::Registers::new(bar0);
//!                 dev = QemuDevice::probe(regs, bar2, bar2_size, PROTOCOL_NET)
//! MsixCapability::find(cfg) → program the table in BAR1, enable
//! dev.enable_interrupts(); dev.set_own_state(…); dev.ring(peer, vector)
//! ```
//!
//! Nothing a device, hypervisor or peer provides is trusted: every pointer
//! in configuration space and every size is checked, and a bad value is a
//! [`DeviceError`], never a panic. Registers are accessed with aligned 32-bit
//! volatile accesses only, as both specifications require. The crate is
//! `#![no_std]`, never allocates, and builds for `x86_64-unknown-none`.
#![no_std]
#![warn(missing_docs)]

/// Projects the volatile pointer of one register out of `self.block` (the
/// `map_field!` macro wants a plain identifier).
macro_rules! register {
    ($self:ident . $field:ident) => {{
        let block = $self.block;
        volatile::map_field!(block.$field)
    }};
}

pub mod device;
pub mod error;
pub mod jailhouse;
pub mod layout;
pub mod pci;
pub mod qemu;
pub mod state;

pub use device::{Device, Ivshmem, Profile, SharedMemoryLocation};
pub use error::DeviceError;
pub use jailhouse::JailhouseDevice;
pub use layout::{LayoutError, LayoutPage, SharedMemoryLayout};
pub use qemu::QemuDevice;
pub use state::OwnStateEntry;
