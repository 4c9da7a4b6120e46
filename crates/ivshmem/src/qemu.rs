//! QEMU `ivshmem-doorbell` (`1af4:1110`, revision 1) with ivnet's layout page.
//!
//! # The device
//!
//! | BAR | content |
//! |---|---|
//! | BAR0 | 256 bytes of registers ([`Registers`]), 32-bit accesses only |
//! | BAR1 | MSI-X: table at +0 (16 bytes per vector), PBA at +2048 (for up to 128 vectors) |
//! | BAR2 | the shared memory, 64-bit prefetchable, size a power of two |
//!
//! Registers: IntrMask 0x00 and IntrStatus 0x04 (meaningful only for
//! revision 0 and INTx; unused here), IVPosition 0x08 (this peer's ID, as
//! assigned by the server), Doorbell 0x0C (`vector | peer << 16`, write-only).
//! QEMU decodes only bits 7:0 of the vector, so [`Registers::ring`] refuses
//! vectors above 255 rather than ring the wrong one. Doorbells to absent peers
//! or unconnected vectors are silently dropped by QEMU. MSI-X is the only
//! interrupt path: until the guest enables MSI-X, QEMU consumes and drops
//! every incoming doorbell.
//!
//! # The layout
//!
//! QEMU has no capability describing sections, so ivnet's ivshmem-server
//! writes a [layout page](crate::layout::LayoutPage) into the first 4 KiB of
//! BAR2 and the ivshmem 2.0 layout follows it. [`read_layout_page`] copies the
//! page out with volatile reads and validates the copy against the BAR2 size.
//!
//! There is no STATE register: a peer stores its own state-table entry itself
//! and rings vector 0 of the others ([`QemuDevice::set_own_state`]); the
//! server writes RESET (0) into the entry of a peer whose connection closes.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

use volatile::VolatilePtr;
use volatile::access::{ReadOnly, WriteOnly};

use crate::device::{Ivshmem, Profile, SharedMemoryLocation, check_link};
use crate::error::DeviceError;
use crate::layout::{LAYOUT_PAGE_SIZE, LayoutPage, SharedMemoryLayout};
use crate::pci::{ConfigSpace, Header};
use crate::state::OwnStateEntry;

/// Red Hat / Qumranet vendor ID.
pub const VENDOR_ID: u16 = 0x1AF4;
/// ivshmem device ID.
pub const DEVICE_ID: u16 = 0x1110;
/// Revision of QEMU >= 2.6 ivshmem (`ivshmem-plain` / `ivshmem-doorbell`).
pub const REVISION: u8 = 1;
/// Base class: memory controller.
pub const BASE_CLASS: u8 = 0x05;
/// Sub-class: RAM.
pub const SUB_CLASS: u8 = 0x00;
/// BAR holding the registers.
pub const REGISTER_BAR: u8 = 0;
/// BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 1;
/// BAR holding the shared memory.
pub const SHARED_MEMORY_BAR: u8 = 2;
/// Highest vector QEMU's doorbell decodes (bits 7:0).
pub const MAX_DOORBELL_VECTOR: u16 = 0xFF;

/// Checks that `cfg` is a QEMU ivshmem device of revision 1 (class memory /
/// RAM) and returns its header. Whether it is `ivshmem-doorbell` (with
/// MSI-X) or `ivshmem-plain` shows in the capability list:
/// [`crate::pci::MsixCapability::find`].
pub fn identify<C: ConfigSpace + ?Sized>(cfg: &C) -> Result<Header, DeviceError> {
    let header = Header::read(cfg);
    if !header.is_present() {
        return Err(DeviceError::NoDevice);
    }
    if (header.vendor_id, header.device_id) != (VENDOR_ID, DEVICE_ID) {
        return Err(DeviceError::WrongDevice {
            vendor_id: header.vendor_id,
            device_id: header.device_id,
        });
    }
    if (header.class.base, header.class.sub) != (BASE_CLASS, SUB_CLASS) {
        return Err(DeviceError::WrongClass(header.class));
    }
    if header.class.revision != REVISION {
        return Err(DeviceError::UnsupportedRevision {
            found: header.class.revision,
            expected: REVISION,
        });
    }
    Ok(header)
}

/// The register block at the start of BAR0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterBlock {
    /// 0x00 Interrupt Mask (revision 0 / INTx only).
    pub intr_mask: u32,
    /// 0x04 Interrupt Status, cleared on read (revision 0 / INTx only).
    pub intr_status: u32,
    /// 0x08 IVPosition: this peer's ID (RO).
    pub iv_position: u32,
    /// 0x0C Doorbell (WO).
    pub doorbell: u32,
}

const _: () = {
    assert!(core::mem::offset_of!(RegisterBlock, intr_mask) == 0x00);
    assert!(core::mem::offset_of!(RegisterBlock, intr_status) == 0x04);
    assert!(core::mem::offset_of!(RegisterBlock, iv_position) == 0x08);
    assert!(core::mem::offset_of!(RegisterBlock, doorbell) == 0x0C);
};

/// The value written to Doorbell to ring `vector` of `peer`, or an error if
/// QEMU would not decode the vector (it uses bits 7:0 only).
pub const fn doorbell_value(peer: u16, vector: u16) -> Result<u32, DeviceError> {
    if vector > MAX_DOORBELL_VECTOR {
        return Err(DeviceError::VectorOutOfRange {
            vector,
            max: MAX_DOORBELL_VECTOR,
        });
    }
    Ok((peer as u32) << 16 | vector as u32)
}

/// The BAR0 registers, accessed with aligned 32-bit volatile reads and
/// writes.
#[derive(Clone, Copy, Debug)]
pub struct Registers<'a> {
    block: VolatilePtr<'a, RegisterBlock>,
}

// SAFETY: `Registers` only performs single aligned 32-bit volatile accesses to
// device registers, which QEMU handles one at a time whichever CPU issues
// them; no Rust memory is reached through the pointer.
unsafe impl Send for Registers<'_> {}
// SAFETY: as for `Send`: every method takes `&self` and issues one register
// access.
unsafe impl Sync for Registers<'_> {}

impl<'a> Registers<'a> {
    /// Size of BAR0.
    pub const REGION_SIZE: u64 = 0x100;

    /// Wraps the register block at `base`.
    ///
    /// # Safety
    ///
    /// `base` must point to the start of the device's BAR0 (or to memory
    /// standing in for it), mapped uncached, 4-byte aligned, and valid for
    /// 32-bit volatile reads and writes of the first 0x10 bytes for all of
    /// `'a`. Nothing else may treat that memory as ordinary Rust data (no
    /// references to it) during `'a`.
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        // SAFETY: the caller guarantees that `base` is an aligned, mapped
        // register block valid for volatile access during 'a and that no
        // references alias it.
        let block = unsafe { VolatilePtr::new(base.cast::<RegisterBlock>()) };
        Registers { block }
    }

    /// IVPosition: this peer's ID.
    pub fn iv_position(&self) -> u32 {
        register!(self.iv_position).restrict::<ReadOnly>().read()
    }

    /// Interrupt Mask (revision 0 / INTx only; unused by ivnet).
    pub fn intr_mask(&self) -> u32 {
        register!(self.intr_mask).read()
    }

    /// Writes Interrupt Mask.
    pub fn set_intr_mask(&self, value: u32) {
        register!(self.intr_mask).write(value);
    }

    /// Reads (and thereby clears) Interrupt Status.
    pub fn intr_status(&self) -> u32 {
        register!(self.intr_status).read()
    }

    /// Rings `vector` of `peer`. Vectors above 255 are refused: QEMU would
    /// ring `vector & 0xFF` instead.
    ///
    /// A full fence comes first, so that every store before the call is
    /// visible to the peer before its interrupt arrives. With KVM ioeventfd
    /// the write completes in the host kernel and QEMU never sees it.
    pub fn ring(&self, peer: u16, vector: u16) -> Result<(), DeviceError> {
        let value = doorbell_value(peer, vector)?;
        fence(Ordering::SeqCst);
        register!(self.doorbell)
            .restrict::<WriteOnly>()
            .write(value);
        Ok(())
    }
}

/// Copies the layout page out of BAR2 with aligned 32-bit volatile reads and
/// validates the copy ([`LayoutPage::parse`]) against the BAR2 size.
///
/// # Safety
///
/// `bar2` must point to the start of the shared memory, mapped, and valid for
/// reads of `min(bar2_size, 0x1000)` bytes. It may be written by peers
/// concurrently (the page is read once and only the copy is used).
pub unsafe fn read_layout_page(
    bar2: NonNull<u8>,
    bar2_size: u64,
) -> Result<LayoutPage, DeviceError> {
    if !(bar2.as_ptr() as usize).is_multiple_of(4) {
        return Err(DeviceError::UnalignedPointer);
    }
    if bar2_size < LAYOUT_PAGE_SIZE {
        return Err(DeviceError::WindowTooSmall {
            size: bar2_size,
            needed: LAYOUT_PAGE_SIZE,
        });
    }
    let mut bytes = [0u8; LayoutPage::ENCODED_LEN];
    let words = bar2.cast::<u32>();
    for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
        // SAFETY: i < 12 and the window holds at least 0x1000 bytes (the
        // caller's contract and the size check), so the pointer stays inside
        // the mapping.
        let word_ptr = unsafe { words.add(i) };
        // SAFETY: `word_ptr` is 4-aligned (`bar2` is, checked above) and
        // valid for reads (bytes 4i..4i+4 < 0x30 of the window).
        let word = unsafe { word_ptr.read_volatile() };
        // The bytes as they are in memory; `parse` decodes them as
        // little-endian.
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ok(LayoutPage::parse(&bytes, bar2_size)?)
}

/// A validated QEMU ivshmem-doorbell device with its shared memory.
#[derive(Debug)]
pub struct QemuDevice<'a> {
    registers: Registers<'a>,
    id: u16,
    page: LayoutPage,
    /// The state table (`max_peers` u32 entries) inside BAR2.
    state_table: NonNull<u32>,
    /// Where this peer stores its own state: its entry in BAR2, or a
    /// writable alias the platform supplies when it maps the table
    /// read-only ([`QemuDevice::set_own_state_view`]).
    own_state: OwnStateEntry,
    window: PhantomData<&'a ()>,
}

// SAFETY: the device holds register handles (Send + Sync, see `Registers`)
// and a pointer into shared memory that is only accessed through atomics.
unsafe impl Send for QemuDevice<'_> {}
// SAFETY: as for `Send`: `&self` methods access the state table only with
// atomic operations and the registers with single volatile accesses.
unsafe impl Sync for QemuDevice<'_> {}

impl<'a> QemuDevice<'a> {
    /// Reads and validates the layout page, reads IVPosition, and checks the
    /// protocol, the peer count and the ID.
    ///
    /// # Safety
    ///
    /// `bar2` must point to the start of BAR2, mapped (cacheable) and valid
    /// for reads and writes of `bar2_size` bytes for all of `'a`; the memory
    /// may be written concurrently by peers and must not be referenced as
    /// ordinary Rust data. `registers` must belong to the same device.
    pub unsafe fn probe(
        registers: Registers<'a>,
        bar2: NonNull<u8>,
        bar2_size: u64,
        expected_protocol: u16,
    ) -> Result<Self, DeviceError> {
        // SAFETY: forwarded from this function's contract.
        let page = unsafe { read_layout_page(bar2, bar2_size)? };
        if page.protocol != expected_protocol {
            return Err(DeviceError::WrongProtocol {
                found: page.protocol,
                expected: expected_protocol,
            });
        }
        let (_, id) = check_link(u32::from(page.layout.max_peers), registers.iv_position())?;
        // `parse` checked that the state table (offset + size, page-aligned)
        // lies inside the window, so the offset fits a usize on any target
        // that could map the window.
        let offset = usize::try_from(page.layout.state_table_offset).map_err(|_| {
            DeviceError::WindowTooSmall {
                size: bar2_size,
                needed: page.layout.end(),
            }
        })?;
        // SAFETY: the state table lies inside the `bar2_size`-byte window
        // (validated by `read_layout_page`), so the offset stays within the
        // mapping that `bar2` points to.
        let state_table = unsafe { bar2.add(offset) }.cast::<u32>();
        // SAFETY: id < max_peers and the table holds max_peers entries inside
        // the window, so the offset stays inside the mapping.
        let own_entry = unsafe { state_table.add(usize::from(id)) };
        // SAFETY: the entry is inside the window, readable and writable for
        // 'a (this function's contract), and only ever accessed atomically.
        let own_state = unsafe { OwnStateEntry::new(own_entry)? };
        Ok(QemuDevice {
            registers,
            id,
            page,
            state_table,
            own_state,
            window: PhantomData,
        })
    }

    /// Stores the own state through `entry` from now on instead of through
    /// BAR2: for platforms that map the state table read-only and the own
    /// entry through a separate writable alias.
    ///
    /// # Safety
    ///
    /// As [`OwnStateEntry::new`]: `entry` is this peer's state-table entry
    /// (`self.id()`), mapped writable for all of `'a`, accessed atomically.
    pub unsafe fn set_own_state_view(&mut self, entry: NonNull<u32>) -> Result<(), DeviceError> {
        // SAFETY: forwarded from this function's contract.
        self.own_state = unsafe { OwnStateEntry::new(entry)? };
        Ok(())
    }

    /// The register handle.
    pub const fn registers(&self) -> Registers<'a> {
        self.registers
    }

    /// The validated layout page.
    pub const fn layout_page(&self) -> LayoutPage {
        self.page
    }

    /// MSI-X vectors per peer, from the layout page.
    pub const fn vectors(&self) -> u32 {
        self.page.vectors
    }

    /// Pointer to the state table (`max_peers` u32 entries, page-aligned)
    /// inside BAR2. Access entries only atomically.
    pub const fn state_table(&self) -> NonNull<u32> {
        self.state_table
    }
}

impl Ivshmem for QemuDevice<'_> {
    fn profile(&self) -> Profile {
        Profile::QemuDoorbell
    }

    fn id(&self) -> u16 {
        self.id
    }

    fn protocol(&self) -> u16 {
        self.page.protocol
    }

    /// Offsets are relative to the start of BAR2 (the state table starts
    /// after the 4 KiB layout page).
    fn layout(&self) -> SharedMemoryLayout {
        self.page.layout
    }

    fn location(&self) -> SharedMemoryLocation {
        SharedMemoryLocation::Bar(SHARED_MEMORY_BAR)
    }

    fn ring(&self, peer: u16, vector: u16) -> Result<(), DeviceError> {
        let max_peers = self.page.layout.max_peers;
        if peer >= max_peers {
            return Err(DeviceError::PeerOutOfRange { peer, max_peers });
        }
        // The layout page guarantees at least one vector.
        let max = self.page.vectors.min(u32::from(MAX_DOORBELL_VECTOR) + 1) - 1;
        if u32::from(vector) > max {
            return Err(DeviceError::VectorOutOfRange {
                vector,
                max: max as u16,
            });
        }
        self.registers.ring(peer, vector)
    }

    /// Stores `state` into this peer's state-table entry, then rings
    /// vector 0 of every other peer (on a two-peer link, just peer
    /// `1 - id`): [`OwnStateEntry::publish`].
    fn set_own_state(&self, state: u32) {
        let _ = self.own_state.publish(state, || {
            for peer in 0..self.page.layout.max_peers {
                if peer != self.id {
                    // Vector 0 always exists (vectors >= 1) and
                    // peer < max_peers: this cannot fail.
                    let _ = self.registers.ring(peer, 0);
                }
            }
            Ok::<(), DeviceError>(())
        });
    }

    /// Nothing to do: `ivshmem-doorbell` interrupts are MSI-X only, enabled
    /// through the MSI-X capability and table by the caller.
    fn enable_interrupts(&self) {}

    /// Nothing to do: mask MSI-X vectors to stop interrupts.
    fn disable_interrupts(&self) {}

    /// Nothing to do: QEMU has no one-shot mode.
    fn rearm(&self) {}
}
