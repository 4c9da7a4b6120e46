//! Where the link's memory is and how to ring the peer.
//!
//! A backend hands the bridge two sections (its own output section,
//! writable, and the peer's, read-only), reads the peer's state-table entry,
//! publishes the bridge's own state, rings the peer's data vector, and turns
//! its wakeup file descriptors into "something may have changed". It knows
//! nothing about rings or frames.
//!
//! | backend | memory | own state | doorbell | wakeup |
//! |---|---|---|---|---|
//! | [`server`] | memfd from ivnet's ivshmem-server | own state entry + vector 0 | peer eventfd | own eventfds |
//! | [`uio`] Jailhouse | `uio_ivshmem` maps | STATE register | DOORBELL register | `/dev/uioN`, one-shot, re-armed via INT_CONTROL |
//! | [`uio`] QEMU | BAR2 of ivshmem-doorbell via a generic UIO driver | own state entry + vector 0 | BAR0 doorbell | `/dev/uioN`, re-armed via irqcontrol |

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub mod server;
pub mod uio;

/// ivshmem-net's vector for state changes.
pub const STATE_VECTOR: u16 = 0;
/// ivshmem-net's vector for TX/RX when the device has at least two vectors.
pub const DATA_VECTOR: u16 = 1;

/// Which vector carries data doorbells on a device with `vectors` vectors
/// (ivshmem-net: vector 1 with MSI-X and two or more vectors, else 0).
pub fn data_vector(vectors: u32) -> u16 {
    if vectors >= 2 {
        DATA_VECTOR
    } else {
        STATE_VECTOR
    }
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
    /// The device or link does not have the shape ivshmem-net needs.
    #[error("{0}")]
    Unsupported(String),
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

/// One side of an ivshmem link as the bridge sees it.
pub trait Backend {
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
    /// The peer's state-table entry, read once.
    fn peer_state(&self) -> u32;
    /// Publishes the own state (and notifies the peer on vector 0).
    fn publish_state(&mut self, state: u32) -> Result<(), BackendError>;
    /// Rings the peer's data vector.
    fn ring_data(&mut self) -> Result<(), BackendError>;
    /// Descriptors to wait on (readable = wakeup).
    fn wakeup_fds(&self) -> Vec<RawFd>;
    /// Consumes the wakeup on `fd` and re-arms interrupts. The caller
    /// re-reads shared memory afterwards, so an event that arrived before the
    /// re-arm is not lost.
    fn on_wakeup(&mut self, fd: RawFd) -> Result<Wake, BackendError>;
    /// A poll period the bridge must keep even in event mode because some
    /// doorbells cannot reach it (e.g. a UIO driver with fewer vectors than
    /// the link uses).
    fn forced_poll(&self) -> Option<Duration> {
        None
    }
}
