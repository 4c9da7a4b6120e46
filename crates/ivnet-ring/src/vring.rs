//! The vring fields of both sections, by name: the queues' only way into
//! shared memory.
//!
//! [`Vrings`] owns the two sections and the geometry computed from their
//! length. Every accessor names one field (`avail.idx`, descriptor `id`,
//! `used.ring[slot]`, ...) and takes ring indices that it masks to the
//! queue length itself, so each method is in bounds for *every* argument.
//! That is what lets the hot path skip a per-access bounds check soundly.
//!
//! ## Why the unchecked accesses are in bounds
//!
//! [`Vrings::new`] is the only constructor. It requires both sections to
//! have the same length `L`, computes the geometry from `L`, and then
//! checks once, at run time, that
//!
//! 1. the queue length is a power of two (so `i & (qlen - 1) < qlen`);
//! 2. the descriptor table (`16 * qlen` bytes) ends at or before the avail
//!    ring, the avail ring and `used_event` end at or before the used ring,
//!    and the used ring and `avail_event` end at or before the data area;
//! 3. the data area starts at or before `L`;
//! 4. the avail ring is 2-byte aligned and the used ring 4-byte aligned
//!    (descriptors are 16-byte aligned from offset 0).
//!
//! The section bases are 64-byte aligned (checked by
//! [`OwnSection::new`]/[`PeerSection::new`]), so offset alignment is
//! address alignment. With a masked index every field offset below is
//! therefore inside `[0, ring_header_size) ⊆ [0, L)` of both sections and
//! naturally aligned, which is the contract of the `*_unchecked` accessors
//! of [`crate::shm`]. Payload copies (data area) go through the checked
//! accessors; they cost one comparison per frame.
//!
//! All reads of the peer's section are Relaxed atomic loads; where an index
//! publishes data they are followed by `fence(Acquire)` (the read-only
//! policy of [`crate::shm`]).

use core::sync::atomic::{Ordering, fence};

use crate::geometry::{Geometry, GeometryError};
use crate::shm::{OwnSection, PeerSection};

/// Offsets of the fields inside a descriptor.
const DESC_ADDR: usize = 0;
const DESC_LEN: usize = 8;
const DESC_FLAGS: usize = 12;
const DESC_SIZE: usize = 16;

/// The two sections with a geometry proven to fit both.
#[derive(Debug)]
pub(crate) struct Vrings {
    own: OwnSection,
    peer: PeerSection,
    geo: Geometry,
}

impl Vrings {
    /// Builds the layout for two sections of equal length and checks once
    /// that every ring field fits (see the module doc).
    pub(crate) fn new(own: OwnSection, peer: PeerSection) -> Result<Self, GeometryError> {
        if own.len() != peer.len() {
            return Err(GeometryError::UnequalSections {
                own: own.len(),
                peer: peer.len(),
            });
        }
        let len = own.len();
        let geo = Geometry::for_section(len)?;
        let qlen = usize::from(geo.queue_len);
        let fits = geo.queue_len.is_power_of_two()
            && geo.section_size == len
            && DESC_SIZE * qlen <= geo.avail_offset
            && geo.used_event_offset() + 2 <= geo.used_offset
            && geo.avail_event_offset() + 2 <= geo.ring_header_size
            && geo.ring_header_size <= len
            && geo.avail_offset.is_multiple_of(2)
            && geo.used_offset.is_multiple_of(4);
        if !fits {
            // Unreachable with the reference formula (golden-tested); kept
            // as a check so the soundness argument does not rest on it.
            return Err(GeometryError::SectionTooSmall {
                section_size: len,
                ring_header_size: geo.ring_header_size,
            });
        }
        Ok(Vrings { own, peer, geo })
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geo
    }

    pub(crate) fn own(&self) -> &OwnSection {
        &self.own
    }

    pub(crate) fn peer(&self) -> &PeerSection {
        &self.peer
    }

    fn slot(&self, index: u16) -> u16 {
        index & self.geo.index_mask()
    }

    // ----- own section: our TX queue -------------------------------------

    /// Writes descriptor `id & mask` (flags cleared only if set, to keep
    /// the line shared with the peer).
    pub(crate) fn write_desc(&self, id: u16, addr: u64, len: u32) {
        let desc = self.geo.desc_offset(self.slot(id));
        // SAFETY: masked descriptor, in bounds and
        // 16-byte aligned by the checks in `new`.
        unsafe {
            self.own
                .store_u64_unchecked(desc + DESC_ADDR, addr, Ordering::Relaxed)
        };
        // SAFETY: as above.
        unsafe {
            self.own
                .store_u32_unchecked(desc + DESC_LEN, len, Ordering::Relaxed)
        };
        // SAFETY: as above.
        if unsafe {
            self.own
                .load_u16_unchecked(desc + DESC_FLAGS, Ordering::Relaxed)
        } != 0
        {
            // SAFETY: as above.
            unsafe {
                self.own
                    .store_u16_unchecked(desc + DESC_FLAGS, 0, Ordering::Relaxed)
            };
        }
    }

    /// Sets `avail.ring[slot & mask] = id` unless it already holds it.
    pub(crate) fn write_avail_entry(&self, slot: u16, id: u16) {
        let offset = self.geo.avail_ring_offset(self.slot(slot));
        // SAFETY: masked slot of the avail ring, in bounds and aligned.
        if unsafe { self.own.load_u16_unchecked(offset, Ordering::Relaxed) } != id {
            // SAFETY: as above.
            unsafe { self.own.store_u16_unchecked(offset, id, Ordering::Relaxed) };
        }
    }

    /// Release-stores `avail.idx`, fences (store→load), and returns the
    /// peer's `avail_event` (read once).
    pub(crate) fn publish_avail_idx(&self, value: u16) -> u16 {
        // SAFETY: fixed field of the fitted layout.
        unsafe {
            self.own
                .store_u16_unchecked(self.geo.avail_idx_offset(), value, Ordering::Release)
        };
        fence(Ordering::SeqCst);
        // SAFETY: fixed field of the fitted layout.
        unsafe { self.peer.load_u16_unchecked(self.geo.avail_event_offset()) }
    }

    /// Publishes `used_event` ("ring me at this completion").
    pub(crate) fn arm_used_event(&self, value: u16) {
        // SAFETY: fixed field of the fitted layout.
        unsafe {
            self.own
                .store_u16_unchecked(self.geo.used_event_offset(), value, Ordering::Relaxed)
        };
    }

    // ----- own section: our RX queue's used ring --------------------------

    /// Writes `used.ring[slot & mask] = {id, 1}`, skipping stores of values
    /// already there.
    pub(crate) fn write_used_elem(&self, slot: u16, id: u16) {
        let elem = self.geo.used_elem_offset(self.slot(slot));
        let id = u32::from(id);
        // SAFETY: masked used element, in bounds and
        // 4-byte aligned by the checks in `new`.
        if unsafe { self.own.load_u32_unchecked(elem, Ordering::Relaxed) } != id {
            // SAFETY: as above.
            unsafe { self.own.store_u32_unchecked(elem, id, Ordering::Relaxed) };
        }
        // SAFETY: as above.
        if unsafe { self.own.load_u32_unchecked(elem + 4, Ordering::Relaxed) } != 1 {
            // SAFETY: as above.
            unsafe { self.own.store_u32_unchecked(elem + 4, 1, Ordering::Relaxed) };
        }
    }

    /// Release-stores `used.idx`, fences (store→load), and returns the
    /// peer's `used_event` (read once).
    pub(crate) fn publish_used_idx(&self, value: u16) -> u16 {
        // SAFETY: fixed field of the fitted layout.
        unsafe {
            self.own
                .store_u16_unchecked(self.geo.used_idx_offset(), value, Ordering::Release)
        };
        fence(Ordering::SeqCst);
        // SAFETY: fixed field of the fitted layout.
        unsafe { self.peer.load_u16_unchecked(self.geo.used_event_offset()) }
    }

    /// Publishes `avail_event` ("ring me when your avail index passes
    /// this").
    pub(crate) fn arm_avail_event(&self, value: u16) {
        // SAFETY: fixed field of the fitted layout.
        unsafe {
            self.own
                .store_u16_unchecked(self.geo.avail_event_offset(), value, Ordering::Relaxed)
        };
    }

    // ----- peer section: our RX queue (the peer's TX) ----------------------

    /// The peer's `avail.idx`, with Acquire semantics: descriptors, avail
    /// entries and payload written before it are visible afterwards.
    pub(crate) fn peer_avail_idx(&self) -> u16 {
        // SAFETY: fixed field of the fitted layout.
        let value = unsafe { self.peer.load_u16_unchecked(self.geo.avail_idx_offset()) };
        fence(Ordering::Acquire);
        value
    }

    /// The peer's `avail.idx` without ordering (diagnostics).
    pub(crate) fn peer_avail_idx_relaxed(&self) -> u16 {
        // SAFETY: fixed field of the fitted layout.
        unsafe { self.peer.load_u16_unchecked(self.geo.avail_idx_offset()) }
    }

    /// The peer's `avail.ring[slot & mask]`.
    pub(crate) fn peer_avail_entry(&self, slot: u16) -> u16 {
        let offset = self.geo.avail_ring_offset(self.slot(slot));
        // SAFETY: masked slot of the avail ring, in bounds and aligned.
        unsafe { self.peer.load_u16_unchecked(offset) }
    }

    /// The peer's descriptor `id & mask`: `(addr, len, flags)`, each read
    /// once.
    pub(crate) fn peer_desc(&self, id: u16) -> (u64, u32, u16) {
        let desc = self.geo.desc_offset(self.slot(id));
        // SAFETY: masked descriptor, in bounds and
        // 16-byte aligned.
        let addr = unsafe { self.peer.load_u64_unchecked(desc + DESC_ADDR) };
        // SAFETY: as above.
        let len = unsafe { self.peer.load_u32_unchecked(desc + DESC_LEN) };
        // SAFETY: as above.
        let flags = unsafe { self.peer.load_u16_unchecked(desc + DESC_FLAGS) };
        (addr, len, flags)
    }

    // ----- peer section: our TX queue's used ring ----------------------------

    /// The peer's `used.idx`, with Acquire semantics: the used elements
    /// written before it are visible afterwards.
    pub(crate) fn peer_used_idx(&self) -> u16 {
        // SAFETY: fixed field of the fitted layout.
        let value = unsafe { self.peer.load_u16_unchecked(self.geo.used_idx_offset()) };
        fence(Ordering::Acquire);
        value
    }

    /// The peer's `used.ring[slot & mask]`: `(id, len)`, each read once.
    pub(crate) fn peer_used_elem(&self, slot: u16) -> (u32, u32) {
        let elem = self.geo.used_elem_offset(self.slot(slot));
        // SAFETY: masked used element, in bounds and 4-byte
        // aligned.
        let id = unsafe { self.peer.load_u32_unchecked(elem) };
        // SAFETY: as above.
        let len = unsafe { self.peer.load_u32_unchecked(elem + 4) };
        (id, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SharedRegion;

    #[test]
    fn unequal_sections_have_their_own_error() {
        let region = SharedRegion::new(0x8000);
        // SAFETY: both views lie inside the region, which outlives them.
        let own = unsafe { OwnSection::new(region.section_ptr(0), 0x8000) }.unwrap();
        // SAFETY: as above (a shorter view of the other section).
        let peer = unsafe { PeerSection::new(region.section_ptr(1), 0x4000) }.unwrap();
        assert_eq!(
            Vrings::new(own, peer).unwrap_err(),
            GeometryError::UnequalSections {
                own: 0x8000,
                peer: 0x4000
            }
        );
    }

    /// Every field the accessors can reach, for every index, lies inside
    /// the ring header, for every page-multiple section size and a few odd
    /// ones (the runtime check in `new` must accept them all).
    #[test]
    fn fitted_layouts_cover_all_indices() {
        for len in (1..=0x80usize)
            .map(|p| p * 0x1000)
            .chain([0x2040, 0x3f40, 0x7f000 + 64])
        {
            let region = SharedRegion::new(len);
            // SAFETY: the sections lie inside the region, which outlives
            // them.
            let own = unsafe { OwnSection::new(region.section_ptr(0), len) }.unwrap();
            // SAFETY: as above.
            let peer = unsafe { PeerSection::new(region.section_ptr(1), len) }.unwrap();
            let Ok(v) = Vrings::new(own, peer) else {
                assert!(Geometry::for_section(len).is_err(), "{len:#x}");
                continue;
            };
            // Exercise the extreme indices (debug assertions check bounds).
            for i in [0u16, 1, v.geo.queue_len - 1, v.geo.queue_len, u16::MAX] {
                v.write_desc(i, 1, 2);
                v.write_avail_entry(i, 3);
                v.write_used_elem(i, 4);
                let _ = v.peer_desc(i);
                let _ = v.peer_avail_entry(i);
                let _ = v.peer_used_elem(i);
            }
            let _ = v.publish_avail_idx(1);
            let _ = v.publish_used_idx(1);
            v.arm_used_event(1);
            v.arm_avail_event(1);
            let _ = (v.peer_avail_idx(), v.peer_used_idx());
        }
    }
}
