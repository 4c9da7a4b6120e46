//! Counters an operator reads: traffic, doorbells, suppression, errors.

use crate::error::{ERROR_KINDS, KIND_NAMES, RingError};

/// Per-kind counts of peer protocol errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; ERROR_KINDS]);

impl ErrorCounts {
    /// Counts one error.
    pub fn record(&mut self, error: &RingError) {
        self.0[error.kind_index()] += 1;
    }

    /// Count for one kind.
    pub fn get(&self, error: &RingError) -> u64 {
        self.0[error.kind_index()]
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(name, count)` for every kind, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KIND_NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

/// Statistics of one endpoint. All counters are monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames queued for the peer.
    pub tx_frames: u64,
    /// Bytes queued for the peer.
    pub tx_bytes: u64,
    /// Frames received from the peer.
    pub rx_frames: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Received frames dropped because the caller's buffer was too small
    /// (one per `recv` call at most).
    pub rx_dropped_oversize: u64,
    /// TX publishes (batches made visible to the peer).
    pub tx_batches: u64,
    /// Doorbells the endpoint asked its caller to ring.
    pub doorbells_requested: u64,
    /// Publishes after which the event index said the peer needs no
    /// doorbell.
    pub notifications_suppressed: u64,
    /// Times a send found the ring full.
    pub tx_ring_full: u64,
    /// Times `used_event` was published to ask for a completion doorbell
    /// (TX short of space after reclaiming).
    pub tx_completion_irq_requests: u64,
    /// Link resets: a prepared or running link went back to RESET because
    /// the peer reset, restarted or wrote a bad state, or because of a
    /// protocol fault. A local shutdown or interface-down is not counted.
    pub link_resets: u64,
    /// Peer protocol errors by kind.
    pub errors: ErrorCounts,
}

impl Stats {
    /// Total peer protocol errors.
    pub fn total_errors(&self) -> u64 {
        self.errors.total()
    }
}
