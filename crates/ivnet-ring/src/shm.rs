//! Bounds-checked access to the two output sections, in the style of
//! rust-vmm's vm-memory: every public accessor checks its offset against
//! the section and returns a typed [`ShmError`] instead of touching memory
//! outside it, so no safe call can be undefined behaviour.
//!
//! Shared memory is reached only through raw pointers. Nothing here hands
//! out a `&T`, `&mut T` or slice into memory the peer can see:
//!
//! - ring indices, event words, descriptor and used-ring fields are
//!   accessed as atomics created from the raw pointer for one load or
//!   store (atomic types are built for memory that changes underneath
//!   them; on x86 these compile to plain moves);
//! - payload is copied with `ptr::copy_nonoverlapping` from or into a local
//!   buffer (the raw, `VolatileSlice`-style copy of vm-memory).
//!
//! ## Reading memory we may not write
//!
//! The peer's section and the state table are mapped read-only wherever
//! the platform allows it. Rust promises only that *Relaxed* atomic loads
//! of small types work on read-only memory (an Acquire or SeqCst load may
//! be implemented with a read-modify-write instruction on some targets,
//! which faults there). So every read of such memory in ivnet is a Relaxed
//! atomic load, and where the protocol needs Acquire semantics (reading an
//! index that publishes data) it is followed by `fence(Acquire)`, which
//! gives the same happens-before edge. [`load_acquire_u16`] /
//! [`load_acquire_u32`] / [`load_acquire_u64`] are that one policy, for the
//! ring and for every other reader of a read-only mapping (the driver core,
//! the bridge, the server).
//!
//! ## The fast path
//!
//! The queues do not go through the checked accessors: `crate::vring`
//! builds the layout once from the section length, checks once that every
//! ring field lies inside both sections, and then reads and writes fields
//! through the crate-private `*_unchecked` functions below with indices
//! masked to the queue length. See that module for the argument.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering, fence};

/// Alignment the section base must have (the vring alignment).
pub const SECTION_ALIGN: usize = 64;

/// Why a section access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmError {
    /// `offset..offset + size` does not lie inside the section.
    OutOfBounds {
        /// Requested offset.
        offset: usize,
        /// Requested size.
        size: usize,
        /// Section length.
        len: usize,
    },
    /// An atomic access whose offset is not a multiple of its size.
    Misaligned {
        /// Requested offset.
        offset: usize,
        /// Required alignment.
        align: usize,
    },
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmError::OutOfBounds { offset, size, len } => write!(
                f,
                "access [{offset:#x}, +{size:#x}) outside a section of {len:#x} bytes"
            ),
            ShmError::Misaligned { offset, align } => {
                write!(
                    f,
                    "atomic access at {offset:#x} is not {align}-byte aligned"
                )
            }
        }
    }
}

impl core::error::Error for ShmError {}

/// Relaxed atomic 16-bit load followed by `fence(Acquire)`: the one way
/// ivnet reads memory that it may not write (the peer's section, the state
/// table) and whose value publishes other data.
///
/// Why not `AtomicU16::load(Acquire)`: Rust guarantees only that
/// sufficiently small *Relaxed* atomic loads work on read-only memory; an
/// Acquire load may be compiled to a read-modify-write on some targets and
/// fault on a read-only mapping. A Relaxed load followed by an Acquire
/// fence synchronises with the writer's Release store just the same.
///
/// # Safety
///
/// `ptr` must be non-null, 2-byte aligned and valid for reads of 2 bytes
/// for the duration of the call (it may be read-only, and another process
/// or VM may write it concurrently).
#[inline]
pub unsafe fn load_acquire_u16(ptr: *const u16) -> u16 {
    // SAFETY: forwarded to the caller.
    let value = unsafe { load_relaxed_u16(ptr) };
    fence(Ordering::Acquire);
    value
}

/// 32-bit variant of [`load_acquire_u16`] (e.g. a state-table entry).
///
/// # Safety
///
/// As [`load_acquire_u16`], for 4 bytes, 4-byte aligned.
#[inline]
pub unsafe fn load_acquire_u32(ptr: *const u32) -> u32 {
    // SAFETY: forwarded to the caller.
    let value = unsafe { load_relaxed_u32(ptr) };
    fence(Ordering::Acquire);
    value
}

/// 64-bit variant of [`load_acquire_u16`].
///
/// # Safety
///
/// As [`load_acquire_u16`], for 8 bytes, 8-byte aligned.
#[inline]
pub unsafe fn load_acquire_u64(ptr: *const u64) -> u64 {
    // SAFETY: forwarded to the caller.
    let value = unsafe { load_relaxed_u64(ptr) };
    fence(Ordering::Acquire);
    value
}

/// Relaxed atomic 16-bit load of possibly read-only, concurrently written
/// memory (for fields whose ordering comes from an earlier
/// [`load_acquire_u16`] of the index that handed them over).
///
/// # Safety
///
/// As [`load_acquire_u16`].
#[inline]
pub unsafe fn load_relaxed_u16(ptr: *const u16) -> u16 {
    // SAFETY: the caller guarantees a valid, aligned pointer. `from_ptr`
    // takes `*mut` as a formality; a Relaxed load only reads, which Rust
    // documents as fine on read-only memory for this size.
    unsafe { AtomicU16::from_ptr(ptr.cast_mut()) }.load(Ordering::Relaxed)
}

/// 32-bit variant of [`load_relaxed_u16`].
///
/// # Safety
///
/// As [`load_acquire_u32`].
#[inline]
pub unsafe fn load_relaxed_u32(ptr: *const u32) -> u32 {
    // SAFETY: as in `load_relaxed_u16`.
    unsafe { AtomicU32::from_ptr(ptr.cast_mut()) }.load(Ordering::Relaxed)
}

/// 64-bit variant of [`load_relaxed_u16`].
///
/// # Safety
///
/// As [`load_acquire_u64`].
#[inline]
pub unsafe fn load_relaxed_u64(ptr: *const u64) -> u64 {
    // SAFETY: as in `load_relaxed_u16`.
    unsafe { AtomicU64::from_ptr(ptr.cast_mut()) }.load(Ordering::Relaxed)
}

/// Checks `offset..offset + size` against `len` and, for atomics, the
/// alignment (the base is 64-byte aligned, so offset alignment is address
/// alignment).
#[inline]
fn check(offset: usize, size: usize, align: usize, len: usize) -> Result<(), ShmError> {
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(ShmError::OutOfBounds { offset, size, len });
    }
    if !offset.is_multiple_of(align) {
        return Err(ShmError::Misaligned { offset, align });
    }
    Ok(())
}

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

    /// Base pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Raw pointer to `size` bytes at `offset` (for system calls that fill
    /// a slot in place), checked to lie inside the section.
    pub fn ptr_at(&self, offset: usize, size: usize) -> Result<*mut u8, ShmError> {
        check(offset, size, 1, self.len)?;
        // SAFETY: offset + size <= len (checked), so the pointer stays
        // inside the section `base` points to.
        Ok(unsafe { self.base.as_ptr().add(offset) })
    }

    /// Pointer for an atomic access at an offset the caller proved to be
    /// in bounds and aligned.
    ///
    /// # Safety
    ///
    /// `offset + size <= self.len()` and `offset % size == 0`.
    #[inline(always)]
    unsafe fn at_unchecked(&self, offset: usize, size: usize) -> *mut u8 {
        debug_assert!(check(offset, size, size, self.len).is_ok());
        // SAFETY: in bounds by the caller's contract.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// Atomic 16-bit load.
    ///
    /// # Panics
    ///
    /// If `order` is `Release` or `AcqRel` (as `AtomicU16::load`).
    pub fn load_u16(&self, offset: usize, order: Ordering) -> Result<u16, ShmError> {
        check(offset, 2, 2, self.len)?;
        // SAFETY: checked just above.
        Ok(unsafe { self.load_u16_unchecked(offset, order) })
    }

    /// Atomic 16-bit store.
    ///
    /// # Panics
    ///
    /// If `order` is `Acquire` or `AcqRel` (as `AtomicU16::store`).
    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) -> Result<(), ShmError> {
        check(offset, 2, 2, self.len)?;
        // SAFETY: checked just above.
        unsafe { self.store_u16_unchecked(offset, value, order) };
        Ok(())
    }

    /// Atomic 32-bit load. Panics as [`load_u16`](Self::load_u16).
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, ShmError> {
        check(offset, 4, 4, self.len)?;
        // SAFETY: checked just above.
        Ok(unsafe { self.load_u32_unchecked(offset, order) })
    }

    /// Atomic 32-bit store. Panics as [`store_u16`](Self::store_u16).
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), ShmError> {
        check(offset, 4, 4, self.len)?;
        // SAFETY: checked just above.
        unsafe { self.store_u32_unchecked(offset, value, order) };
        Ok(())
    }

    /// Atomic 64-bit load. Panics as [`load_u16`](Self::load_u16).
    pub fn load_u64(&self, offset: usize, order: Ordering) -> Result<u64, ShmError> {
        check(offset, 8, 8, self.len)?;
        // SAFETY: checked just above.
        let ptr = unsafe { self.at_unchecked(offset, 8) }.cast::<u64>();
        // SAFETY: in bounds and aligned (checked), valid for the section's
        // lifetime; an atomic may alias memory read concurrently.
        Ok(unsafe { AtomicU64::from_ptr(ptr) }.load(order))
    }

    /// Atomic 64-bit store. Panics as [`store_u16`](Self::store_u16).
    pub fn store_u64(&self, offset: usize, value: u64, order: Ordering) -> Result<(), ShmError> {
        check(offset, 8, 8, self.len)?;
        // SAFETY: checked just above.
        unsafe { self.store_u64_unchecked(offset, value, order) };
        Ok(())
    }

    /// Copies `src` into the section at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), ShmError> {
        let dst = self.ptr_at(offset, src.len())?;
        // SAFETY: dst..dst+len is inside our section (checked by `ptr_at`);
        // `src` is a Rust slice, which cannot point into memory only
        // reachable through raw pointers of this section.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` out of the section.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        let src = self.ptr_at(offset, dst.len())?;
        // SAFETY: src..src+len is inside our section (checked); `dst` is a
        // local buffer and cannot overlap it.
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Zeroes the whole section (ivshmem-net does this on INIT → READY).
    ///
    /// A plain `memset`, as in the reference. The handshake guarantees the
    /// peer is not reading our section at this point: we leave INIT only
    /// when the peer is past RESET, and a peer reads our section only in
    /// RUN, which it enters after seeing us READY — i.e. after this. (A
    /// driver publishes RESET when it starts — the link machine's first
    /// step does — so that a peer still running against an earlier
    /// instance stops first.)
    pub fn zero(&self) {
        // SAFETY: `base..base+len` is exactly our section, writable for
        // us; see above for why no concurrent access happens.
        unsafe { core::ptr::write_bytes(self.base.as_ptr(), 0, self.len) };
    }

    /// Unchecked atomic 16-bit load.
    ///
    /// # Safety
    ///
    /// `offset + 2 <= len` and `offset` even.
    #[inline(always)]
    pub(crate) unsafe fn load_u16_unchecked(&self, offset: usize, order: Ordering) -> u16 {
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.at_unchecked(offset, 2) }.cast::<u16>();
        // SAFETY: valid, aligned, in our section for its lifetime.
        unsafe { AtomicU16::from_ptr(ptr) }.load(order)
    }

    /// Unchecked atomic 16-bit store.
    ///
    /// # Safety
    ///
    /// As [`load_u16_unchecked`](Self::load_u16_unchecked).
    #[inline(always)]
    pub(crate) unsafe fn store_u16_unchecked(&self, offset: usize, value: u16, order: Ordering) {
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.at_unchecked(offset, 2) }.cast::<u16>();
        // SAFETY: valid, aligned, writable for us.
        unsafe { AtomicU16::from_ptr(ptr) }.store(value, order);
    }

    /// Unchecked atomic 32-bit load.
    ///
    /// # Safety
    ///
    /// `offset + 4 <= len` and `offset` a multiple of 4.
    #[inline(always)]
    pub(crate) unsafe fn load_u32_unchecked(&self, offset: usize, order: Ordering) -> u32 {
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.at_unchecked(offset, 4) }.cast::<u32>();
        // SAFETY: valid, aligned, in our section for its lifetime.
        unsafe { AtomicU32::from_ptr(ptr) }.load(order)
    }

    /// Unchecked atomic 32-bit store.
    ///
    /// # Safety
    ///
    /// As [`load_u32_unchecked`](Self::load_u32_unchecked).
    #[inline(always)]
    pub(crate) unsafe fn store_u32_unchecked(&self, offset: usize, value: u32, order: Ordering) {
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.at_unchecked(offset, 4) }.cast::<u32>();
        // SAFETY: valid, aligned, writable for us.
        unsafe { AtomicU32::from_ptr(ptr) }.store(value, order);
    }

    /// Unchecked atomic 64-bit store.
    ///
    /// # Safety
    ///
    /// `offset + 8 <= len` and `offset` a multiple of 8.
    #[inline(always)]
    pub(crate) unsafe fn store_u64_unchecked(&self, offset: usize, value: u64, order: Ordering) {
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.at_unchecked(offset, 8) }.cast::<u64>();
        // SAFETY: valid, aligned, writable for us.
        unsafe { AtomicU64::from_ptr(ptr) }.store(value, order);
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
    /// writes it) and may be mapped read-only; this type never creates
    /// references to it and only reads it with Relaxed atomic loads and raw
    /// copies.
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

    /// Base pointer. The peer can write through it: never build a
    /// reference from it.
    pub fn as_ptr(&self) -> *const u8 {
        self.base.as_ptr()
    }

    /// Raw pointer to `size` bytes at `offset` (for system calls that read
    /// a frame in place, e.g. `write(2)` to a TAP), checked to lie inside
    /// the section. The peer can write there: never build a reference
    /// from it.
    pub fn ptr_at(&self, offset: usize, size: usize) -> Result<*const u8, ShmError> {
        check(offset, size, 1, self.len)?;
        // SAFETY: offset + size <= len (checked).
        Ok(unsafe { self.base.as_ptr().add(offset) })
    }

    #[inline(always)]
    fn atomic_ptr(&self, offset: usize, size: usize) -> Result<*const u8, ShmError> {
        check(offset, size, size, self.len)?;
        // SAFETY: offset + size <= len (checked).
        Ok(unsafe { self.base.as_ptr().add(offset) })
    }

    /// Relaxed atomic 16-bit load (the read-only policy of this module).
    pub fn load_u16(&self, offset: usize) -> Result<u16, ShmError> {
        let ptr = self.atomic_ptr(offset, 2)?.cast::<u16>();
        // SAFETY: in bounds and aligned (checked), readable for the
        // section's lifetime.
        Ok(unsafe { load_relaxed_u16(ptr) })
    }

    /// Relaxed atomic 32-bit load.
    pub fn load_u32(&self, offset: usize) -> Result<u32, ShmError> {
        let ptr = self.atomic_ptr(offset, 4)?.cast::<u32>();
        // SAFETY: in bounds and aligned (checked).
        Ok(unsafe { load_relaxed_u32(ptr) })
    }

    /// Relaxed atomic 64-bit load.
    pub fn load_u64(&self, offset: usize) -> Result<u64, ShmError> {
        let ptr = self.atomic_ptr(offset, 8)?.cast::<u64>();
        // SAFETY: in bounds and aligned (checked).
        Ok(unsafe { load_relaxed_u64(ptr) })
    }

    /// 16-bit load with Acquire semantics ([`load_acquire_u16`]).
    pub fn load_acquire_u16(&self, offset: usize) -> Result<u16, ShmError> {
        let ptr = self.atomic_ptr(offset, 2)?.cast::<u16>();
        // SAFETY: in bounds and aligned (checked).
        Ok(unsafe { load_acquire_u16(ptr) })
    }

    /// Copies `dst.len()` bytes at `offset` out of the peer's section.
    ///
    /// A peer rewriting the bytes meanwhile yields garbage bytes, never an
    /// out-of-bounds access.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        let src = self.ptr_at(offset, dst.len())?;
        // SAFETY: src..src+len is inside the peer's section (checked);
        // `dst` is local memory and cannot overlap it.
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Unchecked Relaxed load.
    ///
    /// # Safety
    ///
    /// `offset + 2 <= len` and `offset` even.
    #[inline(always)]
    pub(crate) unsafe fn load_u16_unchecked(&self, offset: usize) -> u16 {
        debug_assert!(check(offset, 2, 2, self.len).is_ok());
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.base.as_ptr().add(offset) }.cast::<u16>();
        // SAFETY: valid, aligned, readable for the section's lifetime.
        unsafe { load_relaxed_u16(ptr) }
    }

    /// Unchecked Relaxed load.
    ///
    /// # Safety
    ///
    /// `offset + 4 <= len` and `offset` a multiple of 4.
    #[inline(always)]
    pub(crate) unsafe fn load_u32_unchecked(&self, offset: usize) -> u32 {
        debug_assert!(check(offset, 4, 4, self.len).is_ok());
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.base.as_ptr().add(offset) }.cast::<u32>();
        // SAFETY: valid, aligned, readable for the section's lifetime.
        unsafe { load_relaxed_u32(ptr) }
    }

    /// Unchecked Relaxed load.
    ///
    /// # Safety
    ///
    /// `offset + 8 <= len` and `offset` a multiple of 8.
    #[inline(always)]
    pub(crate) unsafe fn load_u64_unchecked(&self, offset: usize) -> u64 {
        debug_assert!(check(offset, 8, 8, self.len).is_ok());
        // SAFETY: in bounds and aligned by the caller's contract.
        let ptr = unsafe { self.base.as_ptr().add(offset) }.cast::<u64>();
        // SAFETY: valid, aligned, readable for the section's lifetime.
        unsafe { load_relaxed_u64(ptr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SharedRegion;

    #[test]
    fn accessors_refuse_out_of_bounds_and_misaligned() {
        let region = SharedRegion::new(0x1000);
        // SAFETY: the section is 0x1000 bytes, page aligned, and outlives
        // both views.
        let own = unsafe { OwnSection::new(region.section_ptr(0), 0x1000) }.unwrap();
        // SAFETY: as above, read-only use.
        let peer = unsafe { PeerSection::new(region.section_ptr(0), 0x1000) }.unwrap();
        assert_eq!(
            own.load_u16(0x104000, Ordering::Relaxed),
            Err(ShmError::OutOfBounds {
                offset: 0x104000,
                size: 2,
                len: 0x1000
            })
        );
        assert!(own.store_u32(0xffe, 1, Ordering::Relaxed).is_err());
        assert!(own.store_u64(usize::MAX - 3, 1, Ordering::Relaxed).is_err());
        assert_eq!(
            own.store_u16(3, 1, Ordering::Relaxed),
            Err(ShmError::Misaligned {
                offset: 3,
                align: 2
            })
        );
        assert!(own.write_at(0xfff, &[1, 2]).is_err());
        assert!(peer.load_u64(0x1000).is_err());
        assert!(peer.load_acquire_u16(0x1001).is_err());
        assert!(peer.read_at(usize::MAX, &mut [0u8; 2]).is_err());
        assert!(peer.ptr_at(0x800, 0x801).is_err());
        // In bounds: works, and the two views see the same bytes.
        own.store_u16(0xffe, 0xbeef, Ordering::Relaxed).unwrap();
        assert_eq!(peer.load_u16(0xffe), Ok(0xbeef));
        own.write_at(0x10, b"abcd").unwrap();
        let mut out = [0u8; 4];
        peer.read_at(0x10, &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        assert_eq!(own.load_u32(0x10, Ordering::Relaxed), peer.load_u32(0x10));
    }
}
