//! The TX queue: our frames into our own section, completions from the
//! peer's.
//!
//! Descriptors and the avail ring live in the own section; the used ring of
//! this queue lives in the **peer's** section (it is the peer's RX used
//! ring), as does `avail_event`, the peer's "ring me when your avail index
//! passes this".
//!
//! The data area is a byte FIFO of frame slots: a frame of `len` bytes takes
//! `align64(18 + len)` bytes at `head`, or at offset 0 if the tail of the
//! area is too short (the remainder is wasted until the FIFO wraps).
//! Completions must come in submission order; each frees its slot by moving
//! `tail` to the slot's end.
//!
//! Descriptor ids are handed out in ring order (`id = avail_idx % qlen`),
//! which the in-order rule makes possible. The peer only echoes ids, so
//! this is wire-compatible with the reference, and it has two benefits: a
//! completion is checked against the exact id expected, and `avail.ring[i]`
//! always holds `i`, so after the first lap it is never rewritten and its
//! cache lines stay shared with the peer.
//!
//! Where a slot ends is remembered locally, not re-read from the
//! descriptor: on QEMU nothing but convention keeps a hostile peer from
//! writing our section, so our bookkeeping does not depend on it.

use core::sync::atomic::{Ordering, fence};

use crate::error::{RingError, TxError};
use crate::geometry::{Geometry, MAX_QUEUE_LEN, frame_slot_size};
use crate::notify::{Notify, decide};
use crate::stats::Stats;
use crate::vring::Vrings;

/// Local state of the TX queue.
#[derive(Debug)]
pub(crate) struct TxQueue {
    /// Avail index including queued but unpublished frames.
    next_avail: u16,
    /// Avail index last published to the peer.
    published_avail: u16,
    /// Completions consumed (our shadow of the peer's used index).
    last_used: u16,
    /// Data-area FIFO head (next free byte, relative to the data area).
    head: usize,
    /// Data-area FIFO tail (first byte still in flight).
    tail: usize,
    /// Value of `used_event` we last published, if any.
    armed_used_event: Option<u16>,
    /// Where each in-flight descriptor's slot ends (the new tail once it
    /// completes), by descriptor id.
    slot_end: [u32; MAX_QUEUE_LEN],
    /// Slot size of a maximum-MTU frame (the space rule's unit).
    mtu_slot: usize,
    /// Data-area bytes queued since the last publish.
    unpublished_bytes: usize,
}

impl TxQueue {
    pub(crate) const fn new(mtu: usize) -> Self {
        TxQueue {
            next_avail: 0,
            published_avail: 0,
            last_used: 0,
            head: 0,
            tail: 0,
            armed_used_event: None,
            slot_end: [0; MAX_QUEUE_LEN],
            mtu_slot: frame_slot_size(mtu),
            unpublished_bytes: 0,
        }
    }

    /// Sets the slot size the space rule must leave room for (twice).
    pub(crate) fn set_rule_slot(&mut self, slot: usize) {
        self.mtu_slot = slot;
    }

    /// Forgets everything (the section was zeroed).
    pub(crate) fn reset(&mut self) {
        let mtu_slot = self.mtu_slot;
        self.next_avail = 0;
        self.published_avail = 0;
        self.last_used = 0;
        self.head = 0;
        self.tail = 0;
        self.armed_used_event = None;
        self.mtu_slot = mtu_slot;
        self.unpublished_bytes = 0;
    }

    /// Whether the frames queued since the last publish fill a quarter of
    /// the data area: publishing then lets the peer start on them while
    /// the rest of a large batch is still being written (a batch of 32
    /// jumbo frames would otherwise fill more than half the area before
    /// the consumer sees any of it).
    pub(crate) fn batch_is_large(&self, geo: &Geometry) -> bool {
        self.unpublished_bytes >= geo.data_size / 4
    }

    /// Descriptors queued or published and not yet completed.
    pub(crate) fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }

    /// Largest contiguous free run of the data area (the reference's
    /// `tx_space`).
    fn space(&self, geo: &Geometry) -> usize {
        if self.head < self.tail {
            self.tail - self.head
        } else {
            (geo.data_size - self.head).max(self.tail)
        }
    }

    /// The reference's space rule: two free descriptors and room for two
    /// maximum-size frames.
    pub(crate) fn ok(&self, geo: &Geometry) -> bool {
        let num_free = geo.queue_len - self.in_flight();
        num_free >= 2 && self.space(geo) >= 2 * self.mtu_slot
    }

    /// Where a slot of `slot` bytes starts (relative to the data area).
    /// Only called when `ok()` holds, which guarantees room.
    pub(crate) fn slot_start(&self, geo: &Geometry, slot: usize) -> usize {
        if geo.data_size - self.head < slot {
            0
        } else {
            self.head
        }
    }

    /// Queues a frame whose bytes are already in the slot at `start`.
    pub(crate) fn queue(&mut self, rings: &Vrings, start: usize, len: usize) {
        let geo = rings.geometry();
        let id = self.next_avail & geo.index_mask();
        let end = start + frame_slot_size(len);
        debug_assert!(end <= geo.data_size);
        // Relaxed stores: the Release store of avail.idx in `publish`
        // orders them (and the payload) before the peer's Acquire load.
        rings.write_desc(id, (geo.data_offset() + start) as u64, len as u32);
        // avail.ring[i] == i after the first lap: the store is skipped so
        // the line is not invalidated in the peer's cache.
        rings.write_avail_entry(id, id);
        self.slot_end[usize::from(id)] = end as u32;
        self.unpublished_bytes += end - start;
        self.head = end;
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes everything queued and decides on the doorbell.
    pub(crate) fn publish(&mut self, rings: &Vrings, stats: &mut Stats) -> Notify {
        let (new, old) = (self.next_avail, self.published_avail);
        if new == old {
            return Notify::Idle;
        }
        let event = rings.publish_avail_idx(new);
        self.published_avail = new;
        self.unpublished_bytes = 0;
        stats.tx_batches += 1;
        decide(event, new, old, stats)
    }

    /// Consumes the peer's completions; when short of space afterwards,
    /// publishes `used_event` and re-checks so no completion wakeup is lost.
    pub(crate) fn reclaim(
        &mut self,
        rings: &Vrings,
        stats: &mut Stats,
    ) -> Result<usize, RingError> {
        let geo = rings.geometry();
        let mask = geo.index_mask();
        let mut reclaimed = 0usize;
        loop {
            // Acquire: the used elements written before the peer's Release
            // store of used.idx are visible after this load.
            let published = rings.peer_used_idx();
            let pending = published.wrapping_sub(self.last_used);
            let in_flight = self.published_avail.wrapping_sub(self.last_used);
            if pending > in_flight {
                return Err(RingError::UsedIndexOutOfRange {
                    published,
                    completed: self.last_used,
                    in_flight,
                });
            }
            for _ in 0..pending {
                let expected = self.last_used & mask;
                let (id, len) = rings.peer_used_elem(expected);
                if len != 1 {
                    return Err(RingError::UsedLength(len));
                }
                if id != u32::from(expected) {
                    return Err(RingError::OutOfOrderCompletion { expected, got: id });
                }
                self.tail = self.slot_end[usize::from(expected)] as usize;
                self.last_used = self.last_used.wrapping_add(1);
                reclaimed += 1;
            }
            if self.in_flight() == 0 {
                // Empty FIFO: restart at the beginning so large frames do
                // not have to wrap.
                self.head = 0;
                self.tail = 0;
            }
            if self.ok(geo) || self.armed_used_event == Some(self.last_used) {
                return Ok(reclaimed);
            }
            // Short of space: ask for a doorbell at the next completion.
            rings.arm_used_event(self.last_used);
            self.armed_used_event = Some(self.last_used);
            stats.tx_completion_irq_requests += 1;
            // Full fence (store→load) pairs with the one the peer issues
            // between publishing used.idx and reading used_event.
            fence(Ordering::SeqCst);
            if rings.peer_used_idx() == published {
                return Ok(reclaimed);
            }
        }
    }

    /// Checks the length of a frame to queue.
    pub(crate) fn check_len(len: usize, max: usize) -> Result<(), TxError> {
        if len == 0 {
            return Err(TxError::Empty);
        }
        if len > max {
            return Err(TxError::TooLong { len, max });
        }
        Ok(())
    }
}
