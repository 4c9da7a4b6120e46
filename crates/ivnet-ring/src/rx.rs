//! The RX queue: the peer's frames, read from the peer's section, completed
//! in our own.
//!
//! Descriptors and the avail ring (and `used_event`) live in the peer's
//! section, which we only read; the used ring and `avail_event` of this
//! queue live in our own section.
//!
//! Everything read from the peer's section is read once into a local and
//! validated before use:
//! - `avail.idx` may be at most one queue length ahead of what we consumed;
//! - an avail entry must name a descriptor inside the queue;
//! - a descriptor must have `flags == 0`, a non-zero length, and lie
//!   entirely inside the sender's data area.
//!
//! Completions are written in order with `len == 1`, as the reference does.

use core::sync::atomic::{Ordering, fence};

use crate::error::RingError;
use crate::notify::{Notify, decide};
use crate::stats::Stats;
use crate::vring::Vrings;

/// A validated frame in the peer's data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RxDesc {
    /// Descriptor id to complete.
    pub(crate) id: u16,
    /// Offset from the start of the peer's section.
    pub(crate) offset: usize,
    /// Frame length.
    pub(crate) len: usize,
}

/// Local state of the RX queue.
#[derive(Debug)]
pub(crate) struct RxQueue {
    /// Next avail entry to consume.
    next_avail: u16,
    /// Peer's avail index as seen last (saves re-reading the shared line for
    /// every frame of a batch).
    cached_avail: u16,
    /// Used index including completions not yet published.
    next_used: u16,
    /// Used index last published.
    published_used: u16,
    /// `avail_event` last written.
    avail_event: Option<u16>,
}

impl RxQueue {
    pub(crate) const fn new() -> Self {
        RxQueue {
            next_avail: 0,
            cached_avail: 0,
            next_used: 0,
            published_used: 0,
            avail_event: None,
        }
    }

    pub(crate) fn reset(&mut self) {
        *self = RxQueue::new();
    }

    /// Loads and validates the peer's avail index.
    fn refresh_avail(&mut self, rings: &Vrings) -> Result<(), RingError> {
        // Acquire: descriptors, avail entries and payload the peer wrote
        // before its Release store of avail.idx are visible after this.
        let published = rings.peer_avail_idx();
        if published.wrapping_sub(self.next_avail) > rings.geometry().queue_len {
            return Err(RingError::AvailIndexOutOfRange {
                published,
                consumed: self.next_avail,
            });
        }
        self.cached_avail = published;
        Ok(())
    }

    /// Whether the peer has published frames we have not consumed.
    pub(crate) fn pending(&mut self, rings: &Vrings) -> Result<bool, RingError> {
        if self.next_avail == self.cached_avail {
            self.refresh_avail(rings)?;
        }
        Ok(self.next_avail != self.cached_avail)
    }

    /// Validates the next frame without consuming it.
    pub(crate) fn peek(&mut self, rings: &Vrings) -> Result<Option<RxDesc>, RingError> {
        if !self.pending(rings)? {
            return Ok(None);
        }
        let geo = rings.geometry();
        let id = rings.peer_avail_entry(self.next_avail);
        if id >= geo.queue_len {
            return Err(RingError::DescriptorIdOutOfRange(u32::from(id)));
        }
        // Each field read exactly once; the checks below use the locals.
        let (addr, len, flags) = rings.peer_desc(id);
        if flags != 0 {
            return Err(RingError::DescriptorFlags(flags));
        }
        if len == 0 {
            return Err(RingError::EmptyFrame);
        }
        let section = geo.section_size as u64;
        let data_start = geo.data_offset() as u64;
        if addr < data_start || addr >= section || u64::from(len) > section - addr {
            return Err(RingError::DescriptorOutOfBounds { addr, len });
        }
        Ok(Some(RxDesc {
            id,
            offset: addr as usize,
            len: len as usize,
        }))
    }

    /// Completes the frame returned by the last `peek`.
    pub(crate) fn complete(&mut self, rings: &Vrings, id: u16) {
        // With ivnet senders (ids in ring order) the element already holds
        // {id, 1} after the first lap: the stores are skipped to keep the
        // line shared.
        rings.write_used_elem(self.next_used, id);
        self.next_used = self.next_used.wrapping_add(1);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes the completions and decides on the doorbell.
    pub(crate) fn publish(&mut self, rings: &Vrings, stats: &mut Stats) -> Notify {
        let (new, old) = (self.next_used, self.published_used);
        if new == old {
            return Notify::Idle;
        }
        let event = rings.publish_used_idx(new);
        self.published_used = new;
        decide(event, new, old, stats)
    }

    /// Leaves polling: asks to be rung at the next avail entry, then
    /// re-checks. Returns `true` if frames arrived in the meantime (keep
    /// polling; the doorbell may never come for them).
    pub(crate) fn enable_notify(&mut self, rings: &Vrings) -> Result<bool, RingError> {
        if self.avail_event != Some(self.next_avail) {
            rings.arm_avail_event(self.next_avail);
            self.avail_event = Some(self.next_avail);
        }
        // Store→load fence: pairs with the sender's fence between
        // publishing avail.idx and reading avail_event. Either it sees our
        // event index and rings, or we see its index here.
        fence(Ordering::SeqCst);
        self.refresh_avail(rings)?;
        Ok(self.cached_avail != self.next_avail)
    }
}
