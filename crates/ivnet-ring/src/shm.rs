//! Raw access to the two output sections — the only `unsafe` of the crate.
//!
//! Shared memory is reached only through raw pointers. Nothing here hands
//! out a `&T` or `&mut T` to memory the peer can write:
//!
//! - ring indices and event words are accessed as atomics (created from the
//!   raw pointer for the duration of one load or store; atomic types are
//!   built for memory that changes underneath them);
//! - descriptor and used-ring fields are accessed as `Relaxed` atomics too,
//!   so that even a peer writing them concurrently is not a data race (on
//!   x86 these compile to plain moves); their ordering comes from the
//!   Acquire/Release on the index that handed them over;
//! - payload is copied with `ptr::copy_nonoverlapping` after that Acquire.
//!
//! Offsets passed here come either from [`Geometry`](crate::Geometry)
//! (masked ring slots, always in bounds by construction) or from peer values
//! that the queue modules validated first. Bounds are re-checked with
//! `debug_assert!` so that tests catch any internal slip.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Alignment the section base must have (the vring alignment).
pub const SECTION_ALIGN: usize = 64;

/// This peer's own output section: read-write for us, read-only for the
/// peer.
#[derive(Debug)]
pub struct OwnSection {
    base: NonNull<u8>,
    len: usize,
}

/// The peer's output section: read-only for us (mapped `PROT_READ` or
/// read-only in page tables wherever the platform allows it).
#[derive(Debug)]
pub struct PeerSection {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a section is a handle to a fixed memory window; all accesses are
// atomic or raw copies whose soundness does not depend on the thread that
// performs them. Ownership of the handle gives the exclusive right to write
// (own section) that the protocol assigns to this peer.
unsafe impl Send for OwnSection {}
// SAFETY: as above; a peer section is only ever read.
unsafe impl Send for PeerSection {}

impl OwnSection {
    /// Wraps the own output section.
    ///
    /// Returns `None` if `base` is null or not 64-byte aligned.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads and writes of `len` bytes for as long
    /// as the returned value (and anything built from it) lives, and no
    /// other code in this address space may write to it meanwhile. The peer
    /// may read it at any time.
    pub unsafe fn new(base: *mut u8, len: usize) -> Option<Self> {
        let base = NonNull::new(base)?;
        if !(base.as_ptr() as usize).is_multiple_of(SECTION_ALIGN) {
            return None;
        }
        Some(OwnSection { base, len })
    }

    /// Section length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the section is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base pointer (for the caller's zero-copy access to slots it owns).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn at(&self, offset: usize, size: usize) -> *mut u8 {
        debug_assert!(offset.checked_add(size).is_some_and(|end| end <= self.len));
        // SAFETY: offset + size <= len (checked above in debug builds and
        // guaranteed by every caller: geometry-derived or validated), so the
        // result stays inside the allocation `base` points into.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// Pointer for an atomic access of `size` bytes: in bounds and
    /// naturally aligned (the base is 64-byte aligned).
    fn at_atomic(&self, offset: usize, size: usize) -> *mut u8 {
        debug_assert!(offset.is_multiple_of(size));
        self.at(offset, size)
    }

    /// Atomic 16-bit load.
    pub fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        let ptr = self.at_atomic(offset, 2).cast::<u16>();
        // SAFETY: in bounds, 2-byte aligned (base 64-aligned, offsets even),
        // valid for the section's lifetime; an atomic may alias memory that
        // changes concurrently.
        unsafe { AtomicU16::from_ptr(ptr) }.load(order)
    }

    /// Atomic 16-bit store.
    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        let ptr = self.at_atomic(offset, 2).cast::<u16>();
        // SAFETY: as in `load_u16`; the section is writable for us.
        unsafe { AtomicU16::from_ptr(ptr) }.store(value, order);
    }

    /// Atomic 32-bit load.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        let ptr = self.at_atomic(offset, 4).cast::<u32>();
        // SAFETY: in bounds, 4-byte aligned by the layout, valid for the
        // section's lifetime.
        unsafe { AtomicU32::from_ptr(ptr) }.load(order)
    }

    /// Atomic 32-bit store.
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        let ptr = self.at_atomic(offset, 4).cast::<u32>();
        // SAFETY: as in `load_u32`; the section is writable for us.
        unsafe { AtomicU32::from_ptr(ptr) }.store(value, order);
    }

    /// Atomic 64-bit load.
    pub fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        let ptr = self.at_atomic(offset, 8).cast::<u64>();
        // SAFETY: in bounds, 8-byte aligned (descriptors are 16-byte
        // aligned from a 64-aligned base), valid for the section's lifetime.
        unsafe { AtomicU64::from_ptr(ptr) }.load(order)
    }

    /// Atomic 64-bit store.
    pub fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        let ptr = self.at_atomic(offset, 8).cast::<u64>();
        // SAFETY: as in `load_u64`; the section is writable for us.
        unsafe { AtomicU64::from_ptr(ptr) }.store(value, order);
    }

    /// Copies `src` into the section at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) {
        let dst = self.at(offset, src.len());
        // SAFETY: dst..dst+len is inside our section (see `at`), `src` is a
        // local buffer that cannot overlap shared memory we own exclusively
        // for writing, and the slot being written is not yet published.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }

    /// Raw pointer to `len` bytes at `offset` (for zero-copy slot filling).
    pub fn slot_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        self.at(offset, len)
    }

    /// Zeroes the whole section (ivshmem-net does this on INIT → READY).
    ///
    /// A plain `memset`, as in the reference. The handshake guarantees the
    /// peer is not reading our section at this point: we leave INIT only
    /// when the peer is past RESET, and a peer reads our section only in
    /// RUN, which it enters after seeing us READY — i.e. after this. (A
    /// driver must publish RESET when it starts, so that a peer still
    /// running against an earlier instance stops first.)
    pub fn zero(&self) {
        let dst = self.at(0, self.len);
        // SAFETY: `dst..dst+len` is exactly our section, writable for us;
        // see above for why no concurrent access happens.
        unsafe { core::ptr::write_bytes(dst, 0, self.len) };
    }
}

impl PeerSection {
    /// Wraps the peer's output section.
    ///
    /// Returns `None` if `base` is null or not 64-byte aligned.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads of `len` bytes for as long as the
    /// returned value lives. The memory may change at any time (the peer
    /// writes it); this type never creates references to it.
    pub unsafe fn new(base: *const u8, len: usize) -> Option<Self> {
        let base = NonNull::new(base.cast_mut())?;
        if !(base.as_ptr() as usize).is_multiple_of(SECTION_ALIGN) {
            return None;
        }
        Some(PeerSection { base, len })
    }

    /// Section length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the section is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: usize, size: usize) -> *const u8 {
        debug_assert!(offset.checked_add(size).is_some_and(|end| end <= self.len));
        // SAFETY: offset + size <= len (checked in debug builds, guaranteed
        // by callers: geometry-derived or validated peer values).
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// Pointer for an atomic access: in bounds and naturally aligned.
    fn at_atomic(&self, offset: usize, size: usize) -> *const u8 {
        debug_assert!(offset.is_multiple_of(size));
        self.at(offset, size)
    }

    /// Atomic 16-bit load.
    pub fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        let ptr = self.at_atomic(offset, 2).cast::<u16>().cast_mut();
        // SAFETY: in bounds and aligned; `AtomicU16::load` only reads, so
        // a read-only mapping is fine (the `*mut` is an API formality of
        // `from_ptr`; nothing is written through it).
        unsafe { AtomicU16::from_ptr(ptr) }.load(order)
    }

    /// Atomic 32-bit load.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        let ptr = self.at_atomic(offset, 4).cast::<u32>().cast_mut();
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU32::from_ptr(ptr) }.load(order)
    }

    /// Atomic 64-bit load.
    pub fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        let ptr = self.at_atomic(offset, 8).cast::<u64>().cast_mut();
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU64::from_ptr(ptr) }.load(order)
    }

    /// Copies `dst.len()` bytes at `offset` out of the peer's section.
    ///
    /// The caller validated `offset..offset + dst.len()` against the data
    /// area and performed the Acquire load that handed the buffer over.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let src = self.at(offset, dst.len());
        // SAFETY: src..src+len is inside the peer's section (validated by
        // the caller); `dst` is local memory and cannot overlap it. A
        // hostile peer rewriting the bytes meanwhile yields garbage bytes,
        // never an out-of-bounds access.
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    }

    /// Raw pointer to `len` bytes at `offset` (for in-place reads by the
    /// caller, e.g. `write(2)` to a TAP straight from shared memory).
    pub fn slot_ptr(&self, offset: usize, len: usize) -> *const u8 {
        self.at(offset, len)
    }
}
