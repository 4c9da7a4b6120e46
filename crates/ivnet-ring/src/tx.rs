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
use crate::notify::{Notify, publish_index};
use crate::shm::{OwnSection, PeerSection};
use crate::stats::Stats;

/// Offsets of the fields inside a descriptor.
const DESC_ADDR: usize = 0;
const DESC_LEN: usize = 8;
const DESC_FLAGS: usize = 12;

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

    /// Frames queued but not yet published.
    pub(crate) fn unpublished(&self) -> u16 {
        self.next_avail.wrapping_sub(self.published_avail)
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
    pub(crate) fn queue(&mut self, own: &OwnSection, geo: &Geometry, start: usize, len: usize) {
        let mask = geo.index_mask();
        let id = self.next_avail & mask;
        let end = start + frame_slot_size(len);
        debug_assert!(end <= geo.data_size);
        let desc = geo.desc_offset(id);
        // Relaxed stores: the Release store of avail.idx in `publish`
        // orders them (and the payload) before the peer's Acquire load.
        own.store_u64(
            desc + DESC_ADDR,
            (geo.data_offset() + start) as u64,
            Ordering::Relaxed,
        );
        own.store_u32(desc + DESC_LEN, len as u32, Ordering::Relaxed);
        if own.load_u16(desc + DESC_FLAGS, Ordering::Relaxed) != 0 {
            own.store_u16(desc + DESC_FLAGS, 0, Ordering::Relaxed);
        }
        let ring = geo.avail_ring_offset(id);
        // avail.ring[i] == i after the first lap: skip the store so the
        // line is not invalidated in the peer's cache.
        if own.load_u16(ring, Ordering::Relaxed) != id {
            own.store_u16(ring, id, Ordering::Relaxed);
        }
        self.slot_end[usize::from(id)] = end as u32;
        self.unpublished_bytes += end - start;
        self.head = end;
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes everything queued and decides on the doorbell.
    pub(crate) fn publish(
        &mut self,
        own: &OwnSection,
        peer: &PeerSection,
        geo: &Geometry,
        stats: &mut Stats,
    ) -> Notify {
        let (new, old) = (self.next_avail, self.published_avail);
        let notify = publish_index(
            own,
            peer,
            geo.avail_idx_offset(),
            geo.avail_event_offset(),
            new,
            old,
            stats,
        );
        if notify != Notify::Idle {
            self.published_avail = new;
            self.unpublished_bytes = 0;
            stats.tx_batches += 1;
        }
        notify
    }

    /// Consumes the peer's completions; when short of space afterwards,
    /// publishes `used_event` and re-checks so no completion wakeup is lost.
    pub(crate) fn reclaim(
        &mut self,
        own: &OwnSection,
        peer: &PeerSection,
        geo: &Geometry,
    ) -> Result<usize, RingError> {
        let mask = geo.index_mask();
        let mut reclaimed = 0usize;
        loop {
            // Acquire: the used elements written before the peer's Release
            // store of used.idx are visible after this load.
            let published = peer.load_u16(geo.used_idx_offset(), Ordering::Acquire);
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
                let elem = geo.used_elem_offset(expected);
                let id = peer.load_u32(elem, Ordering::Relaxed);
                let len = peer.load_u32(elem + 4, Ordering::Relaxed);
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
            own.store_u16(geo.used_event_offset(), self.last_used, Ordering::Relaxed);
            self.armed_used_event = Some(self.last_used);
            // Full fence (store→load) pairs with the one the peer issues
            // between publishing used.idx and reading used_event.
            fence(Ordering::SeqCst);
            if peer.load_u16(geo.used_idx_offset(), Ordering::Acquire) == published {
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
