//! Access to words of shared memory.

use std::sync::atomic::AtomicU32;

/// The `u32` at `base + offset` in shared memory, as an atomic.
///
/// Shared memory is only ever accessed through raw pointers and atomics
/// (never a `&u32` or `&[u8]`, since peers write it concurrently); an
/// `&AtomicU32` is the sanctioned way to perform atomic operations on a raw
/// address (`AtomicU32::from_ptr`).
///
/// # Safety
///
/// `base + offset` must lie inside a mapping that outlives `'a`, be 4-byte
/// aligned, and the word must only be accessed atomically (or by aligned
/// 32-bit accesses from a guest) by every party. If the mapping is
/// read-only, only loads may be performed (atomic loads of a `u32` from
/// read-only memory are permitted, see `core::sync::atomic`).
pub(crate) unsafe fn shared_u32<'a>(base: *mut u8, offset: usize) -> &'a AtomicU32 {
    // SAFETY: the caller guarantees that `base + offset` is inside the
    // mapping `base` points into.
    let ptr = unsafe { base.add(offset) };
    // SAFETY: the caller guarantees alignment, liveness for 'a and
    // atomic-only access.
    unsafe { AtomicU32::from_ptr(ptr.cast()) }
}
