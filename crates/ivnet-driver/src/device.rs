//! The platform side of the driver: the one trait every ivshmem-net peer
//! implements, the link-shape rule (two peers, protocol 0x0001), the data
//! doorbell vector rule, and the one read of a peer-written state entry.

use core::fmt;
use ivnet_ring::LinkState;

/// ivshmem-net's protocol number (PCI class code / layout page).
pub const PROTOCOL_NET: u16 = 0x0001;
/// Vector that carries state changes (and, on one-vector devices, data).
pub const STATE_VECTOR: u16 = 0;
/// Vector that carries data doorbells on devices with two or more vectors.
pub const DATA_VECTOR: u16 = 1;

/// Which vector carries data doorbells on a device with `vectors` vectors:
/// vector 1 with two or more, else vector 0 (ivshmem-net's rule). With one
/// vector the receiver treats every vector-0 interrupt as "state may have
/// changed and data may be waiting".
pub const fn data_vector(vectors: u32) -> u16 {
    if vectors >= 2 {
        DATA_VECTOR
    } else {
        STATE_VECTOR
    }
}

/// What an ivshmem-net peer needs from its platform: the device profile
/// (Jailhouse STATE/DOORBELL registers, QEMU ivshmem-doorbell), a UIO or
/// host-peer backend, or a test fake. Everything else — the link state
/// machine, which vector to ring, when to ring, resets and backoff — is the
/// [`Driver`](crate::Driver)'s.
///
/// Implementations are small by design: "where is the peer's state entry",
/// "how do I publish mine", "how do I ring", "how do I re-arm", "what time
/// is it".
pub trait LinkDevice {
    /// Why a doorbell or a state publication failed (shown in logs).
    type Error: fmt::Display;

    /// Reads the peer's state-table entry once. The table is mapped
    /// read-only on every platform: read it with
    /// [`ivnet_ring::shm::load_acquire_u32`] (Relaxed load, then an Acquire
    /// fence), never through a reference.
    fn peer_state(&self) -> u32;

    /// Publishes this peer's state and wakes the peer on vector 0
    /// (Jailhouse: the STATE register, the hypervisor rings; QEMU and host
    /// peers: a Release store into the own entry, then a vector-0 doorbell,
    /// see `ivshmem::state::OwnStateEntry`). Everything the caller stored
    /// before must be visible to the peer before it is woken.
    fn publish_state(&mut self, state: LinkState) -> Result<(), Self::Error>;

    /// Interrupt vectors per peer the link has (at least 1). Decides the
    /// data doorbell vector ([`data_vector`]).
    fn vectors(&self) -> u32;

    /// Rings `vector` of the peer, after a full fence (stores before the call
    /// are visible to the peer before its interrupt). A refusal (vector the
    /// device cannot carry, peer gone, I/O error) is an `Err`, and the driver
    /// does not count it as rung.
    fn ring(&mut self, vector: u16) -> Result<(), Self::Error>;

    /// Re-arms this side's interrupt after one was taken (Jailhouse one-shot
    /// INT_CONTROL, UIO irqcontrol; nothing on QEMU MSI-X). The driver calls
    /// it *before* its final re-check of shared memory: an event that
    /// arrives while disarmed is dropped, not latched, so the re-check must
    /// come after the re-arm.
    fn rearm(&mut self);

    /// Monotonic time in microseconds (any epoch). Drives the renegotiation
    /// backoff and the log rate limiter only; a coarse clock is fine.
    fn now_us(&self) -> u64;
}

/// Why a device cannot carry an ivshmem-net link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkShapeError {
    /// The device speaks another protocol.
    WrongProtocol {
        /// Protocol found.
        found: u16,
    },
    /// ivshmem-net connects exactly two peers.
    PeerCount {
        /// Peers the device has.
        max_peers: u32,
    },
    /// The own ID is not 0 or 1.
    IdOutOfRange {
        /// The ID.
        id: u32,
    },
}

impl fmt::Display for LinkShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkShapeError::WrongProtocol { found } => write!(
                f,
                "the device speaks protocol {found:#06x}, not ivshmem-net ({PROTOCOL_NET:#06x})"
            ),
            LinkShapeError::PeerCount { max_peers } => write!(
                f,
                "the link has {max_peers} peers; ivshmem-net connects exactly 2"
            ),
            LinkShapeError::IdOutOfRange { id } => {
                write!(f, "own peer ID {id} on a two-peer link")
            }
        }
    }
}

impl core::error::Error for LinkShapeError {}

/// The ivshmem-net link rule, in one place: protocol 0x0001, exactly two
/// peers, own ID 0 or 1. Returns `(own ID, peer ID)`.
pub const fn check_net_link(
    protocol: u16,
    max_peers: u32,
    id: u32,
) -> Result<(u16, u16), LinkShapeError> {
    if protocol != PROTOCOL_NET {
        return Err(LinkShapeError::WrongProtocol { found: protocol });
    }
    if max_peers != 2 {
        return Err(LinkShapeError::PeerCount { max_peers });
    }
    if id > 1 {
        return Err(LinkShapeError::IdOutOfRange { id });
    }
    Ok((id as u16, 1 - id as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_vector_rule() {
        assert_eq!(data_vector(0), 0);
        assert_eq!(data_vector(1), 0);
        assert_eq!(data_vector(2), 1);
        assert_eq!(data_vector(64), 1);
    }

    #[test]
    fn net_link_rule() {
        assert_eq!(check_net_link(1, 2, 0), Ok((0, 1)));
        assert_eq!(check_net_link(1, 2, 1), Ok((1, 0)));
        assert_eq!(
            check_net_link(2, 2, 0),
            Err(LinkShapeError::WrongProtocol { found: 2 })
        );
        assert_eq!(
            check_net_link(1, 3, 0),
            Err(LinkShapeError::PeerCount { max_peers: 3 })
        );
        assert_eq!(
            check_net_link(1, 2, 2),
            Err(LinkShapeError::IdOutOfRange { id: 2 })
        );
    }
}
