//! The Jailhouse ivshmem 2.0 profile over mapped registers and state table,
//! whoever mapped them (`uio_ivshmem` or vfio-pci + `/dev/mem`): the own
//! state through the STATE register, doorbells through DOORBELL, and the
//! one-shot re-arm through INT_CONTROL. The UIO and VFIO backends own the
//! mappings and the wakeups; this is the part they share.

use std::ptr::NonNull;
use std::sync::atomic::{Ordering, fence};

use ivnet_ring::LinkState;
use ivnet_ring::shm::load_acquire_u32;
use ivshmem::jailhouse::{self, IntControl};

/// One peer's registers and state table of a Jailhouse ivshmem 2.0 link.
/// Interrupts are enabled on creation and disabled on drop.
pub struct JailhouseLink {
    regs: NonNull<u8>,
    state_table: NonNull<u8>,
    peer: u16,
}

impl JailhouseLink {
    /// # Safety
    /// `regs` maps BAR0 uncached and writable, at least
    /// [`jailhouse::Registers::REGION_SIZE`] bytes; `state_table` maps the
    /// state table readable, at least `4 * (peer + 1)` bytes, page-aligned.
    /// Both stay mapped while the result lives, and nothing references them.
    pub unsafe fn new(regs: NonNull<u8>, state_table: NonNull<u8>, peer: u16) -> Self {
        let me = JailhouseLink {
            regs,
            state_table,
            peer,
        };
        // Interrupts on (one-shot mode is the driver's or the backend's).
        me.registers().set_int_control(IntControl::ENABLE);
        me
    }

    fn registers(&self) -> jailhouse::Registers<'_> {
        // SAFETY: BAR0 as `new`'s contract promises, alive with `self`.
        unsafe { jailhouse::Registers::new(self.regs) }
    }

    /// The peer's state-table entry (written only by the hypervisor).
    pub fn peer_state(&self) -> u32 {
        let entry = self
            .state_table
            .as_ptr()
            .wrapping_add(4 * usize::from(self.peer))
            .cast::<u32>();
        // SAFETY: inside the mapped state table (`new`'s contract),
        // 4-aligned, read-only for us.
        unsafe { load_acquire_u32(entry) }
    }

    /// The hypervisor copies the value into the state table and rings
    /// vector 0 of the peer; `set_state` fences first, so the section
    /// contents written before are visible by then.
    pub fn publish_state(&self, state: LinkState) {
        self.registers().set_state(state.raw());
    }

    /// Rings `vector` of the peer; `ring` fences first, so published
    /// indices are visible before the interrupt arrives.
    pub fn ring(&self, vector: u16) {
        self.registers().ring(self.peer, vector);
    }

    /// One-shot mode: the hypervisor cleared INT_CONTROL when it sent the
    /// interrupt. The fence orders the re-arm before the driver's re-check
    /// of shared memory.
    pub fn rearm(&self) {
        self.registers().set_int_control(IntControl::ENABLE);
        fence(Ordering::SeqCst);
    }
}

impl Drop for JailhouseLink {
    fn drop(&mut self) {
        self.registers().set_int_control(IntControl::empty());
    }
}
