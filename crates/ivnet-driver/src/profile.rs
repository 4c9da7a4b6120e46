//! [`LinkDevice`] for the two device profiles of the `ivshmem` crate
//! (Jailhouse ivshmem 2.0 and QEMU ivshmem-doorbell), as a bare-metal
//! peer drives them: registers mapped, shared memory mapped by the
//! platform, a monotonic clock from the platform.
//!
//! | | Jailhouse | QEMU |
//! |---|---|---|
//! | peer state | the caller's read-only mapping of the table | same |
//! | publish | STATE register (the hypervisor rings) | `OwnStateEntry` (BAR2 entry or a writable alias), then vector 0 |
//! | vectors | MSI-X vectors the platform set up | same, at most the layout page's |
//! | re-arm | INT_CONTROL (one-shot) | nothing |

use core::ptr::NonNull;

use ivnet_ring::LinkState;
use ivshmem::{Device, DeviceError, Ivshmem};

use ivnet_ring::shm::load_acquire_u32;

use crate::device::{LinkDevice, LinkShapeError, check_net_link};

/// An ivshmem device carrying an ivshmem-net link.
#[derive(Debug)]
pub struct DeviceLink<'a> {
    device: Device<'a>,
    peer: u16,
    peer_entry: NonNull<u32>,
    vectors: u32,
    clock: fn() -> u64,
}

// SAFETY: the device handle is Send + Sync (register handles and atomics),
// and `peer_entry` is only read with atomic loads.
unsafe impl Send for DeviceLink<'_> {}

impl<'a> DeviceLink<'a> {
    /// Checks that `device` carries an ivshmem-net link (protocol 0x0001,
    /// two peers) and wraps it. `state_table` is the platform's mapping of
    /// the state table (read-only is enough); `vectors` is the number of
    /// interrupt vectors the platform routed (data doorbells go on vector 1
    /// only with two or more); `clock` returns monotonic microseconds.
    ///
    /// # Safety
    ///
    /// `state_table` must point to the device's state table (at the
    /// layout's state-table offset in the shared memory), 4-aligned, mapped
    /// readable for all of `'a`, with at least two entries.
    pub unsafe fn new(
        device: impl Into<Device<'a>>,
        state_table: NonNull<u32>,
        vectors: u32,
        clock: fn() -> u64,
    ) -> Result<Self, LinkShapeError> {
        let device = device.into();
        let (_, peer) = check_net_link(
            device.protocol(),
            u32::from(device.max_peers()),
            u32::from(device.id()),
        )?;
        let vectors = match &device {
            Device::QemuDoorbell(q) => vectors.min(q.vectors()),
            Device::Jailhouse(_) => vectors,
        };
        // SAFETY: peer < 2 and the table has at least two entries (the
        // caller's contract), so the entry is inside the mapping.
        let peer_entry = unsafe { state_table.add(usize::from(peer)) };
        Ok(DeviceLink {
            device,
            peer,
            peer_entry,
            vectors,
            clock,
        })
    }

    /// The device.
    pub fn device(&self) -> &Device<'a> {
        &self.device
    }

    /// The other peer's ID.
    pub fn peer_id(&self) -> u16 {
        self.peer
    }
}

impl LinkDevice for DeviceLink<'_> {
    type Error = DeviceError;

    fn peer_state(&self) -> u32 {
        // SAFETY: `new`'s contract: the entry is 4-aligned, mapped readable
        // for 'a, and written only atomically (by the hypervisor or the peer).
        unsafe { load_acquire_u32(self.peer_entry.as_ptr()) }
    }

    fn publish_state(&mut self, state: LinkState) -> Result<(), DeviceError> {
        self.device.set_own_state(state.raw());
        Ok(())
    }

    fn vectors(&self) -> u32 {
        self.vectors
    }

    fn ring(&mut self, vector: u16) -> Result<(), DeviceError> {
        if u32::from(vector) >= self.vectors {
            return Err(DeviceError::VectorOutOfRange {
                vector,
                max: self.vectors.saturating_sub(1).min(u32::from(u16::MAX)) as u16,
            });
        }
        self.device.ring(self.peer, vector)
    }

    fn rearm(&mut self) {
        self.device.rearm();
    }

    fn now_us(&self) -> u64 {
        (self.clock)()
    }
}
