//! Publishing the own state where there is no STATE register.
//!
//! On Jailhouse the hypervisor owns the state table: a peer writes its
//! STATE register, and the hypervisor copies the value into the read-only
//! table and rings vector 0 of the other peers. QEMU's ivshmem-doorbell
//! and host peers of ivnet's ivshmem-server have no such register: each
//! peer stores into its own entry itself and then rings vector 0 of the
//! others. [`OwnStateEntry`] is that protocol, written once; each platform
//! supplies only where its writable view of its own entry is (the BAR2
//! mapping, a one-page alias in the guest's page tables, a one-page
//! `mmap` in a host process) and how to ring.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::error::DeviceError;

/// A writable view of this peer's own state-table entry.
#[derive(Debug)]
pub struct OwnStateEntry {
    entry: NonNull<u32>,
}

// SAFETY: the entry is only accessed through atomic stores (see `publish`),
// which are sound from any thread.
unsafe impl Send for OwnStateEntry {}
// SAFETY: as for `Send`: `&self` performs only atomic stores.
unsafe impl Sync for OwnStateEntry {}

impl OwnStateEntry {
    /// Wraps the own entry. Fails for a pointer that is not 4-aligned.
    ///
    /// # Safety
    ///
    /// `entry` must point to this peer's entry of the state table, mapped
    /// writable for as long as the value lives, and every party (this
    /// process, the peers, the server) must access the word only atomically.
    pub unsafe fn new(entry: NonNull<u32>) -> Result<Self, DeviceError> {
        if !(entry.as_ptr() as usize).is_multiple_of(4) {
            return Err(DeviceError::UnalignedPointer);
        }
        Ok(OwnStateEntry { entry })
    }

    /// Stores `state` with Release ordering (everything written before,
    /// e.g. a zeroed and re-initialised section, is visible to a peer that
    /// reads the entry), then calls `wake_peers`, which rings vector 0 of
    /// the other peers (the ring's own full fence orders it after the
    /// store). Returns what `wake_peers` returns.
    ///
    /// Unlike Jailhouse's STATE register, which rings only when the value
    /// changes, this always rings: QEMU drops doorbells to peers that are
    /// not connected yet, so repeating a state is how a peer retries, and a
    /// spurious vector-0 interrupt costs the receiver one comparison.
    pub fn publish<E>(
        &self,
        state: u32,
        wake_peers: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        // SAFETY: `new`'s contract: the entry is 4-aligned, mapped writable
        // while `self` lives, and only ever accessed atomically.
        let entry = unsafe { AtomicU32::from_ptr(self.entry.as_ptr()) };
        entry.store(state, Ordering::Release);
        wake_peers()
    }

    /// The entry's address (diagnostics, tests).
    pub fn as_ptr(&self) -> *mut u32 {
        self.entry.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_then_wakes() {
        let word = AtomicU32::new(0);
        // SAFETY: a local atomic, aligned, alive for the test.
        let e = unsafe { OwnStateEntry::new(NonNull::from(&word).cast()) }.unwrap();
        let mut seen = None;
        let r: Result<(), ()> = e.publish(3, || {
            seen = Some(word.load(Ordering::Relaxed));
            Ok(())
        });
        assert_eq!(r, Ok(()));
        assert_eq!(seen, Some(3), "the store happens before the wake-up");
    }

    #[test]
    fn refuses_unaligned() {
        let words = [AtomicU32::new(0), AtomicU32::new(0)];
        let p = NonNull::from(&words[0]).cast::<u8>();
        // SAFETY: the pointer is refused before any access.
        let r =
            unsafe { OwnStateEntry::new(NonNull::new(p.as_ptr().wrapping_add(1)).unwrap().cast()) };
        assert!(matches!(r, Err(DeviceError::UnalignedPointer)));
    }
}
