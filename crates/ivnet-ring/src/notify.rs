//! Event-index notification suppression (`VIRTIO_RING_F_EVENT_IDX`
//! semantics, without feature negotiation, as ivshmem-net uses it).
//!
//! Each side publishes the index at which it wants to be woken: the receiver
//! writes `avail_event` ("ring me when your avail index passes this") when it
//! leaves polling; the sender writes `used_event` ("ring me when your used
//! index passes this") only when it is short of TX space. After publishing a
//! batch that moved an index from `old` to `new`, a side rings the doorbell
//! only if the peer's event index lies in `[old, new)`.
//!
//! The side that publishes an index must issue a full fence between that
//! store and the load of the peer's event word, and the side that publishes
//! an event word must fence and re-check the index afterwards; otherwise
//! both can decide that the other will act and a wakeup is lost.

/// `vring_need_event`: did moving the index from `old` to `new` cross
/// `event` (all arithmetic modulo 2^16)?
#[inline]
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// What the caller must do after a publish. The ring never touches MMIO.
#[must_use = "a Doorbell decision must be carried out or the peer may sleep forever"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Ring the peer's data vector (vector 1 with MSI-X, 0 with INTx).
    Doorbell,
    /// Entries were published but the peer is polling (or asked to be woken
    /// later): no doorbell needed.
    Suppressed,
    /// Nothing was published.
    Idle,
}

impl Notify {
    /// Whether the doorbell must be rung.
    pub const fn needs_doorbell(self) -> bool {
        matches!(self, Notify::Doorbell)
    }

    /// Combines two decisions (one doorbell covers both).
    pub const fn or(self, other: Notify) -> Notify {
        match (self, other) {
            (Notify::Doorbell, _) | (_, Notify::Doorbell) => Notify::Doorbell,
            (Notify::Suppressed, _) | (_, Notify::Suppressed) => Notify::Suppressed,
            _ => Notify::Idle,
        }
    }
}

/// Decides on the doorbell after publishing a ring index: the one rule
/// behind both `avail.idx` (TX) and `used.idx` (RX).
///
/// The caller stored `new` with Release (so that everything written before
/// — descriptors, ring entries, payload or used elements — is visible to a
/// peer that Acquire-loads the index), then issued a full fence (store→load,
/// pairing with the fence the peer issues between writing its event index
/// and re-reading ours), then read the peer's `event` index once
/// (`crate::vring::Vrings::publish_avail_idx` / `publish_used_idx`).
pub(crate) fn decide(event: u16, new: u16, old: u16, stats: &mut crate::stats::Stats) -> Notify {
    if need_event(event, new, old) {
        stats.doorbells_requested += 1;
        Notify::Doorbell
    } else {
        stats.notifications_suppressed += 1;
        Notify::Suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_window() {
        // Event index inside [old, new) → notify.
        assert!(need_event(0, 1, 0));
        assert!(need_event(5, 10, 3));
        assert!(need_event(3, 10, 3));
        assert!(!need_event(10, 10, 3));
        assert!(!need_event(2, 10, 3));
        // Wrap-around.
        assert!(need_event(65535, 2, 65534));
        assert!(need_event(0, 2, 65534));
        assert!(!need_event(2, 2, 65534));
        // Nothing published → never.
        assert!(!need_event(7, 7, 7));
    }

    #[test]
    fn need_event_matches_definition_exhaustively_for_small_windows() {
        for old in [0u16, 1, 100, 65530, 65535] {
            for n in 0u16..40 {
                let new = old.wrapping_add(n);
                for d in 0u16..50 {
                    let event = old.wrapping_add(d).wrapping_sub(5);
                    let in_window = event.wrapping_sub(old) < n;
                    assert_eq!(
                        need_event(event, new, old),
                        in_window,
                        "{event} {new} {old}"
                    );
                }
            }
        }
    }
}
