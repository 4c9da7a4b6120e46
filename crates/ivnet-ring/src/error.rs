//! Errors: what the peer did wrong, and why a frame could not be queued.

use core::fmt;

/// A protocol violation by the peer, found while validating a value it
/// wrote. Each one faults the endpoint: the link is reset and renegotiated
/// (the reference driver skips the entry and stalls instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer's `avail.idx` is more than a queue length ahead of what we
    /// consumed.
    AvailIndexOutOfRange {
        /// Index the peer published.
        published: u16,
        /// Our consumer position.
        consumed: u16,
    },
    /// An avail-ring entry names a descriptor beyond the queue.
    DescriptorIdOutOfRange(u32),
    /// A descriptor has flags set (ivshmem-net uses no chaining, no
    /// indirect descriptors).
    DescriptorFlags(u16),
    /// A descriptor's address or length lies outside the sender's data
    /// area.
    DescriptorOutOfBounds {
        /// `desc.addr` (offset from the start of the sender's section).
        addr: u64,
        /// `desc.len`.
        len: u32,
    },
    /// A descriptor of length zero.
    EmptyFrame,
    /// The peer's `used.idx` completes more descriptors than we have in
    /// flight.
    UsedIndexOutOfRange {
        /// Index the peer published.
        published: u16,
        /// Our completion position.
        completed: u16,
        /// Descriptors in flight.
        in_flight: u16,
    },
    /// A used element whose `len` is not 1.
    UsedLength(u32),
    /// A completion out of order (the data area is a FIFO: completions
    /// must come in the order of submission).
    OutOfOrderCompletion {
        /// Descriptor id we expected.
        expected: u16,
        /// Descriptor id the peer wrote.
        got: u32,
    },
    /// The peer's state-table entry holds a value that is not a state.
    InvalidPeerState(u32),
    /// The peer went back in the handshake (e.g. RUN → INIT) without
    /// passing through RESET: it restarted behind our back.
    PeerRestarted {
        /// State we saw last.
        from: u32,
        /// State now.
        to: u32,
    },
    /// The endpoint already faulted; the link must be reset first.
    Faulted,
}

/// Number of [`RingError`] kinds (for per-kind counters).
pub const ERROR_KINDS: usize = 11;

impl RingError {
    /// Index of this error's kind in [`ErrorCounts`](crate::ErrorCounts).
    pub const fn kind_index(&self) -> usize {
        match self {
            RingError::AvailIndexOutOfRange { .. } => 0,
            RingError::DescriptorIdOutOfRange(_) => 1,
            RingError::DescriptorFlags(_) => 2,
            RingError::DescriptorOutOfBounds { .. } => 3,
            RingError::EmptyFrame => 4,
            RingError::UsedIndexOutOfRange { .. } => 5,
            RingError::UsedLength(_) => 6,
            RingError::OutOfOrderCompletion { .. } => 7,
            RingError::InvalidPeerState(_) => 8,
            RingError::PeerRestarted { .. } => 9,
            RingError::Faulted => 10,
        }
    }

    /// Short stable name of the kind (for logs and JSON counters).
    pub const fn kind_name(&self) -> &'static str {
        KIND_NAMES[self.kind_index()]
    }
}

/// Stable names of the error kinds, by [`RingError::kind_index`].
pub const KIND_NAMES: [&str; ERROR_KINDS] = [
    "avail_index_out_of_range",
    "descriptor_id_out_of_range",
    "descriptor_flags",
    "descriptor_out_of_bounds",
    "empty_frame",
    "used_index_out_of_range",
    "used_length",
    "out_of_order_completion",
    "invalid_peer_state",
    "peer_restarted",
    "faulted",
];

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::AvailIndexOutOfRange {
                published,
                consumed,
            } => write!(
                f,
                "peer avail index {published} is more than a queue ahead of consumed index {consumed}"
            ),
            RingError::DescriptorIdOutOfRange(id) => {
                write!(
                    f,
                    "peer avail entry names descriptor {id}, beyond the queue"
                )
            }
            RingError::DescriptorFlags(flags) => {
                write!(f, "peer descriptor has flags {flags:#x} (must be 0)")
            }
            RingError::DescriptorOutOfBounds { addr, len } => write!(
                f,
                "peer descriptor [{addr:#x}, +{len:#x}) lies outside its data area"
            ),
            RingError::EmptyFrame => f.write_str("peer descriptor has length 0"),
            RingError::UsedIndexOutOfRange {
                published,
                completed,
                in_flight,
            } => write!(
                f,
                "peer used index {published} completes more than the {in_flight} descriptors in flight after {completed}"
            ),
            RingError::UsedLength(len) => write!(f, "peer used element has len {len} (must be 1)"),
            RingError::OutOfOrderCompletion { expected, got } => write!(
                f,
                "peer completed descriptor {got} out of order (expected {expected})"
            ),
            RingError::InvalidPeerState(s) => write!(f, "peer state {s} is not a link state"),
            RingError::PeerRestarted { from, to } => {
                write!(f, "peer state went back from {from} to {to} without RESET")
            }
            RingError::Faulted => f.write_str("link faulted; waiting for reset"),
        }
    }
}

impl core::error::Error for RingError {}

/// Why a frame could not be queued for transmission. None of these is the
/// peer's fault; the frame stays with the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// Not enough descriptors or data-area space (the reference's
    /// `num_free >= 2 && space >= 2 * FRAME_SIZE(mtu)` rule). Reclaim
    /// completions or wait for the peer.
    Full,
    /// The frame is longer than the link's maximum frame (MTU + 18).
    TooLong {
        /// Frame length.
        len: usize,
        /// Maximum frame length.
        max: usize,
    },
    /// A zero-length frame.
    Empty,
    /// The link is not running.
    LinkDown,
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Full => f.write_str("TX ring full"),
            TxError::TooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            TxError::Empty => f.write_str("empty frame"),
            TxError::LinkDown => f.write_str("link is not running"),
        }
    }
}

impl core::error::Error for TxError {}
