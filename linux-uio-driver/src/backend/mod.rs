//! Where the link's memory is and how to ring the peer.
//!
//! A backend is the bridge's platform for the driver core: it implements
//! [`LinkDevice`] (read the peer's state entry, publish the own state, ring
//! a vector, re-arm, time) and, beyond it, hands the bridge two sections
//! (its own output section, writable, and the peer's, read-only) and turns
//! its wakeup file descriptors into "something may have changed". It knows
//! nothing about rings, frames, link states or which vector to ring: that
//! is [`ivnet_driver::Driver`]'s.
//!
//! | backend | memory | own state | doorbell | wakeup | re-arm |
//! |---|---|---|---|---|---|
//! | [`server`] | memfd from ivnet's ivshmem-server | `OwnStateEntry` + vector 0 | peer eventfd | own eventfds | nothing |
//! | [`uio`] Jailhouse | `uio_ivshmem` maps | STATE register | DOORBELL register | `/dev/uioN` | INT_CONTROL (one-shot) |
//! | [`uio`] QEMU | BAR2 of ivshmem-doorbell via a generic UIO driver | `OwnStateEntry` + vector 0 | BAR0 doorbell | `/dev/uioN` | irqcontrol |
//! | [`vfio`] QEMU | BAR2 of ivshmem-doorbell via vfio-pci | `OwnStateEntry` + vector 0 | BAR0 doorbell | one eventfd per MSI-X vector | nothing |
//! | [`vfio`] Jailhouse | `/dev/mem` at the capability's base address | STATE register | DOORBELL register | one eventfd per MSI-X vector | INT_CONTROL (one-shot) |
//!
//! What the UIO and VFIO backends share over their mappings:
//! [`qemu_window`] (the QEMU profile: layout page, write-protection, own
//! state entry, doorbell) and [`jailhouse_link`] (the 2.0 registers).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use ivnet_driver::LinkDevice;
use ivnet_ring::LinkState;

/// `LinkDevice` for a backend on the Jailhouse 2.0 register profile (UIO
/// and VFIO alike): its `link` ([`jailhouse_link::JailhouseLink`]) reads the
/// peer's state, publishes its own, rings and re-arms; `vectors` is how many
/// vectors the device has.
macro_rules! jailhouse_link_device {
    ($backend:ty) => {
        impl ivnet_driver::LinkDevice for $backend {
            type Error = $crate::backend::BackendError;

            fn peer_state(&self) -> u32 {
                self.link.peer_state()
            }
            fn publish_state(
                &mut self,
                state: ivnet_ring::LinkState,
            ) -> Result<(), $crate::backend::BackendError> {
                self.link.publish_state(state);
                Ok(())
            }
            fn vectors(&self) -> u32 {
                self.vectors as u32
            }
            fn ring(&mut self, vector: u16) -> Result<(), $crate::backend::BackendError> {
                self.link.ring(vector);
                Ok(())
            }
            fn rearm(&mut self) {
                self.link.rearm();
            }
            fn now_us(&self) -> u64 {
                $crate::backend::monotonic_us()
            }
        }
    };
}

pub mod jailhouse_link;
pub mod qemu_window;
pub mod server;
pub mod uio;
pub mod vfio;

/// Monotonic microseconds (the clock every backend gives the driver core).
pub fn monotonic_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1000
}

/// What a wakeup meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// Interrupts or eventfd signals consumed.
    pub doorbells: u64,
    /// The server connection reported a peer joining or leaving.
    pub membership: bool,
}

/// Why a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Opening or using the UIO device.
    #[error(transparent)]
    Uio(#[from] crate::uio::UioError),
    /// Opening or using the device through vfio-pci.
    #[error(transparent)]
    Vfio(#[from] vfio::VfioError),
    /// The device or link does not have the shape ivshmem-net needs.
    #[error("{0}")]
    Unsupported(String),
    /// A doorbell the device cannot carry.
    #[error("doorbell: {0}")]
    Doorbell(ivshmem::DeviceError),
    /// Talking to the server.
    #[error("ivshmem-server: {0}")]
    Server(String),
    /// An I/O error on a wakeup descriptor.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One side of an ivshmem link as the bridge sees it: the driver core's
/// platform ([`LinkDevice`]) plus memory and wakeups.
pub trait Backend: LinkDevice<Error = BackendError> {
    /// One line for the log: device, IDs, sizes.
    fn describe(&self) -> String;
    /// This peer's ID.
    fn own_id(&self) -> u16;
    /// The other peer's ID.
    fn peer_id(&self) -> u16;
    /// Size of each output section.
    fn section_len(&self) -> usize;
    /// The own output section (read-write, valid while the backend lives).
    fn own_section(&self) -> *mut u8;
    /// The peer's output section (read-only, valid while the backend lives).
    fn peer_section(&self) -> *const u8;
    /// Descriptors to wait on (readable = wakeup).
    fn wakeup_fds(&self) -> Vec<RawFd>;
    /// Consumes the wakeup on `fd`. Re-arming is [`LinkDevice::rearm`],
    /// which the driver core calls before its final re-check.
    fn on_wakeup(&mut self, fd: RawFd) -> Result<Wake, BackendError>;
    /// A poll period the bridge must keep even in event mode because some
    /// doorbells cannot reach it (e.g. a UIO driver with fewer vectors than
    /// the link uses).
    fn forced_poll(&self) -> Option<Duration> {
        None
    }
}

/// The driver core drives the bridge's backend through the box.
impl LinkDevice for Box<dyn Backend> {
    type Error = BackendError;

    fn peer_state(&self) -> u32 {
        (**self).peer_state()
    }

    fn publish_state(&mut self, state: LinkState) -> Result<(), BackendError> {
        (**self).publish_state(state)
    }

    fn vectors(&self) -> u32 {
        (**self).vectors()
    }

    fn ring(&mut self, vector: u16) -> Result<(), BackendError> {
        (**self).ring(vector)
    }

    fn rearm(&mut self) {
        (**self).rearm()
    }

    fn now_us(&self) -> u64 {
        (**self).now_us()
    }
}
