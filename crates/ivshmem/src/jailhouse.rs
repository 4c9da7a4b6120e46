//! Jailhouse ivshmem 2.0 (`110a:4106`).
//!
//! # Configuration space
//!
//! | offset | content |
//! |---:|---|
//! | 0x00 | vendor 110Ah, device 4106h |
//! | 0x08 | revision 00h, protocol in prog-if (bits 7:0) and sub-class (bits 15:8), base class FFh |
//! | 0x10 | BAR0: 4 KiB register page ([`Registers`]) |
//! | 0x14 | BAR1: MSI-X table (+0) and PBA (+0x100) |
//! | 0x18 | BAR2: shared memory, only when the vendor capability has no Base Address |
//! | 0x34 | capabilities: vendor-specific (09h) and MSI-X (11h) |
//!
//! The vendor-specific capability ([`VendorCapability`]) carries the section
//! sizes and, when its length is 0x20, the guest-physical base of the shared
//! memory (Jailhouse always provides it and never implements BAR2):
//!
//! | cap + | field |
//! |---:|---|
//! | 0x02 | Length: 0x18 (memory in BAR2) or 0x20 (with Base Address) |
//! | 0x03 | Privileged Control: bit 0 = one-shot interrupt mode |
//! | 0x04 | State Table Size (u32) |
//! | 0x08 | R/W Section Size (u64) |
//! | 0x10 | Output Section Size (u64) |
//! | 0x18 | Base Address (u64, optional) |
//!
//! The number of peers is not in configuration space but in the MAX_PEERS
//! register, so a layout is validated only once BAR0 is mapped
//! ([`VendorCapability::validate`] takes it as an argument).
//!
//! # Registers (BAR0)
//!
//! ID 0x00 (RO), MAX_PEERS 0x04 (RO), INT_CONTROL 0x08 (bit 0 enables
//! interrupt generation), DOORBELL 0x0C (WO, `vector | target << 16`),
//! STATE 0x10 (writing it updates this peer's state-table entry and rings
//! vector 0 of every other peer if the value changed). Aligned 32-bit accesses
//! only. An event for a disabled or masked vector is dropped, not latched.

use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

use bitflags::bitflags;
use volatile::VolatilePtr;
use volatile::access::{ReadOnly, WriteOnly};

use crate::device::{Ivshmem, Profile, SharedMemoryLocation, check_link};
use crate::error::DeviceError;
use crate::layout::{LayoutError, PAGE_SIZE, Region, SharedMemoryLayout};
use crate::pci::{CAP_ID_VENDOR, Capability, ClassCode, ConfigSpace, Header, find_capability};

/// Siemens vendor ID.
pub const VENDOR_ID: u16 = 0x110A;
/// ivshmem 2.0 device ID.
pub const DEVICE_ID: u16 = 0x4106;
/// The revision ID of the final specification.
pub const REVISION: u8 = 0;
/// Base class of every ivshmem 2.0 device ("other").
pub const BASE_CLASS: u8 = 0xFF;
/// Peers the Jailhouse hypervisor supports per link (the specification
/// allows 65536). Informational: the MAX_PEERS register is authoritative.
pub const HYPERVISOR_MAX_PEERS: u32 = 12;

/// Offsets inside the vendor-specific capability.
pub mod cap {
    /// Length byte.
    pub const LENGTH: u16 = 0x02;
    /// Privileged Control byte.
    pub const PRIV_CONTROL: u16 = 0x03;
    /// State Table Size (u32).
    pub const STATE_TABLE_SIZE: u16 = 0x04;
    /// R/W Section Size (u64).
    pub const RW_SECTION_SIZE: u16 = 0x08;
    /// Output Section Size (u64).
    pub const OUTPUT_SECTION_SIZE: u16 = 0x10;
    /// Base Address (u64), present when the length is 0x20.
    pub const BASE_ADDRESS: u16 = 0x18;
    /// Length of a capability whose memory is in BAR2.
    pub const LENGTH_WITHOUT_BASE: u8 = 0x18;
    /// Length of a capability with Base Address.
    pub const LENGTH_WITH_BASE: u8 = 0x20;
    /// Privileged Control bit 0: one-shot interrupt mode.
    pub const PRIV_CONTROL_ONE_SHOT: u8 = 1 << 0;
}

/// What [`identify`] learned from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Protocol from the class code (sub-class << 8 | prog-if).
    pub protocol: u16,
    /// The header as read.
    pub header: Header,
}

/// Checks that `cfg` is a Jailhouse ivshmem 2.0 device and returns its
/// protocol: vendor/device `110a:4106`, base class FFh, revision 0.
pub fn identify<C: ConfigSpace + ?Sized>(cfg: &C) -> Result<Identity, DeviceError> {
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
    if header.class.base != BASE_CLASS {
        return Err(DeviceError::WrongClass(header.class));
    }
    if header.class.revision != REVISION {
        return Err(DeviceError::UnsupportedRevision {
            found: header.class.revision,
            expected: REVISION,
        });
    }
    Ok(Identity {
        protocol: protocol_of(header.class),
        header,
    })
}

/// The protocol encoded in a class code (sub-class << 8 | prog-if).
pub const fn protocol_of(class: ClassCode) -> u16 {
    (class.sub as u16) << 8 | class.prog_if as u16
}

/// The vendor-specific capability, as read (not yet validated against the
/// peer count; see [`VendorCapability::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VendorCapability {
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Its Length byte (0x18 or 0x20 or more).
    pub length: u8,
    /// State Table Size.
    pub state_table_size: u32,
    /// R/W Section Size.
    pub rw_section_size: u64,
    /// Output Section Size.
    pub output_section_size: u64,
    /// Base Address, when the length includes it.
    pub base_address: Option<u64>,
}

impl VendorCapability {
    /// Finds the vendor-specific capability (09h) and parses it.
    pub fn find<C: ConfigSpace + ?Sized>(cfg: &C) -> Result<Self, DeviceError> {
        match find_capability(cfg, CAP_ID_VENDOR)? {
            Some(found) => Self::parse(cfg, found),
            None => Err(DeviceError::MissingCapability { id: CAP_ID_VENDOR }),
        }
    }

    /// Parses the vendor-specific capability at `found`. Checks its length
    /// (at least 0x18; 0x19..=0x1F is refused because the Base Address
    /// would be cut off) and that it ends inside configuration space.
    pub fn parse<C: ConfigSpace + ?Sized>(cfg: &C, found: Capability) -> Result<Self, DeviceError> {
        let offset = u16::from(found.offset);
        let length = cfg.read8(offset + cap::LENGTH);
        if length < cap::LENGTH_WITHOUT_BASE {
            return Err(DeviceError::TruncatedVendorCapability {
                offset: found.offset,
                length,
            });
        }
        if length > cap::LENGTH_WITHOUT_BASE && length < cap::LENGTH_WITH_BASE {
            return Err(DeviceError::BadVendorCapabilityLength {
                offset: found.offset,
                length,
            });
        }
        // The fields this code reads, not the length byte, decide how far it
        // reads; both must lie inside configuration space.
        found.check_length(u16::from(length))?;
        let base_address = if length >= cap::LENGTH_WITH_BASE {
            Some(cfg.read64(offset + cap::BASE_ADDRESS))
        } else {
            None
        };
        Ok(VendorCapability {
            offset: found.offset,
            length,
            state_table_size: cfg.read32(offset + cap::STATE_TABLE_SIZE),
            rw_section_size: cfg.read64(offset + cap::RW_SECTION_SIZE),
            output_section_size: cfg.read64(offset + cap::OUTPUT_SECTION_SIZE),
            base_address,
        })
    }

    /// Where the shared memory is: the Base Address, or BAR2.
    pub const fn location(&self) -> SharedMemoryLocation {
        match self.base_address {
            Some(base) => SharedMemoryLocation::Physical(base),
            None => SharedMemoryLocation::Bar(2),
        }
    }

    /// The layout for `max_peers` peers, without any checks: state table at
    /// offset 0 of the shared memory, then the R/W section, then the output
    /// sections.
    pub const fn layout(&self, max_peers: u16) -> SharedMemoryLayout {
        SharedMemoryLayout {
            state_table_offset: 0,
            state_table_size: self.state_table_size as u64,
            rw_section_size: self.rw_section_size,
            output_section_size: self.output_section_size,
            max_peers,
        }
    }

    /// Validates the capability together with the MAX_PEERS and ID
    /// registers and returns the layout.
    ///
    /// - `max_peers`, `id`: the MAX_PEERS and ID registers.
    /// - `bar2_size`: size of BAR2, needed when the capability has no Base
    ///   Address; ignored otherwise.
    ///
    /// Checks: 2..=65535 peers (a protocol's own limit, such as
    /// ivshmem-net's two, is the protocol layer's), ID below the peer count,
    /// non-zero state table and output sections, page-aligned sizes and base,
    /// a state table with room for every peer, and sections that fit the
    /// window (BAR2) or the physical address space (Base Address) without
    /// overflow.
    pub fn validate(
        &self,
        max_peers: u32,
        id: u32,
        bar2_size: Option<u64>,
    ) -> Result<SharedMemoryLayout, DeviceError> {
        let (max_peers, _) = check_link(max_peers, id)?;
        let layout = self.layout(max_peers);
        if layout.state_table_size == 0 {
            return Err(LayoutError::ZeroSize(Region::StateTable).into());
        }
        if layout.output_section_size == 0 {
            return Err(LayoutError::ZeroSize(Region::OutputSection).into());
        }
        match self.base_address {
            Some(base) => {
                if base % PAGE_SIZE != 0 {
                    return Err(DeviceError::UnalignedBaseAddress(base));
                }
                // The region must not wrap around the address space.
                layout.validate(u64::MAX - base)?;
            }
            None => match bar2_size {
                Some(size) if size > 0 => layout.validate(size)?,
                _ => return Err(DeviceError::NoSharedMemoryWindow),
            },
        }
        Ok(layout)
    }

    /// Reads the one-shot bit (Privileged Control bit 0).
    pub fn one_shot<C: ConfigSpace + ?Sized>(&self, cfg: &C) -> bool {
        cfg.read8(u16::from(self.offset) + cap::PRIV_CONTROL) & cap::PRIV_CONTROL_ONE_SHOT != 0
    }

    /// Sets or clears one-shot interrupt mode. In one-shot mode the device
    /// clears INT_CONTROL bit 0 on every interrupt it delivers, and the
    /// driver re-arms with [`Registers::set_int_control`] (UIO-style
    /// throttling); a kernel-style driver turns it off.
    ///
    /// Written as one dword (ID, next, length, Privileged Control): Jailhouse
    /// stores only the one-shot bit of it, and the other bytes are read-only.
    pub fn set_one_shot<C: ConfigSpace + ?Sized>(&self, cfg: &mut C, on: bool) {
        let offset = u16::from(self.offset);
        let mut dword = cfg.read32(offset);
        let bit = u32::from(cap::PRIV_CONTROL_ONE_SHOT) << 24;
        if on {
            dword |= bit;
        } else {
            dword &= !bit;
        }
        cfg.write32(offset, dword);
    }
}

bitflags! {
    /// The INT_CONTROL register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct IntControl: u32 {
        /// Interrupt generation enabled. Cleared by the device on delivery in
        /// one-shot mode.
        const ENABLE = 1 << 0;
        const _ = !0;
    }
}

/// The register block at the start of BAR0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterBlock {
    /// 0x00 ID (RO).
    pub id: u32,
    /// 0x04 Maximum Peers (RO).
    pub max_peers: u32,
    /// 0x08 Interrupt Control (RW).
    pub int_control: u32,
    /// 0x0C Doorbell (WO).
    pub doorbell: u32,
    /// 0x10 State (RW).
    pub state: u32,
}

const _: () = {
    assert!(core::mem::offset_of!(RegisterBlock, id) == 0x00);
    assert!(core::mem::offset_of!(RegisterBlock, max_peers) == 0x04);
    assert!(core::mem::offset_of!(RegisterBlock, int_control) == 0x08);
    assert!(core::mem::offset_of!(RegisterBlock, doorbell) == 0x0C);
    assert!(core::mem::offset_of!(RegisterBlock, state) == 0x10);
};

/// The value written to DOORBELL to ring `vector` of peer `target`.
pub const fn doorbell_value(target: u16, vector: u16) -> u32 {
    (target as u32) << 16 | vector as u32
}

/// The BAR0 registers, accessed with aligned 32-bit volatile reads and
/// writes. `Copy`: the handle is a pointer to device registers, and the
/// device serialises accesses itself.
#[derive(Clone, Copy, Debug)]
pub struct Registers<'a> {
    block: VolatilePtr<'a, RegisterBlock>,
}

// SAFETY: `Registers` only performs single aligned 32-bit volatile accesses to
// device registers. Such accesses from several threads at once are what
// device registers are designed for (the hypervisor's trap handler serialises
// them), and no Rust memory is reached through the pointer.
unsafe impl Send for Registers<'_> {}
// SAFETY: as for `Send`: every method takes `&self` and issues one register
// access, which is atomic with respect to other CPUs' register accesses.
unsafe impl Sync for Registers<'_> {}

impl<'a> Registers<'a> {
    /// Size of the BAR0 register region on Jailhouse (one page, so that it
    /// can be mapped on its own, e.g. to an unprivileged process).
    pub const REGION_SIZE: u64 = 0x1000;

    /// Wraps the register block at `base`.
    ///
    /// # Safety
    ///
    /// `base` must point to the start of the device's BAR0 register region
    /// (or to memory standing in for it), mapped uncached, 4-byte aligned,
    /// and valid for 32-bit volatile reads and writes of the first 0x14
    /// bytes for all of `'a`. Nothing else may treat that memory as ordinary
    /// Rust data (no references to it) during `'a`.
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        // SAFETY: the caller guarantees that `base` is an aligned, mapped
        // register block valid for volatile access during 'a and that no
        // references alias it.
        let block = unsafe { VolatilePtr::new(base.cast::<RegisterBlock>()) };
        Registers { block }
    }

    /// The ID register: this peer's ID.
    pub fn id(&self) -> u32 {
        register!(self.id).restrict::<ReadOnly>().read()
    }

    /// The MAX_PEERS register.
    pub fn max_peers(&self) -> u32 {
        register!(self.max_peers).restrict::<ReadOnly>().read()
    }

    /// Reads INT_CONTROL.
    pub fn int_control(&self) -> IntControl {
        IntControl::from_bits_retain(register!(self.int_control).read())
    }

    /// Writes INT_CONTROL.
    pub fn set_int_control(&self, value: IntControl) {
        register!(self.int_control).write(value.bits());
    }

    /// Rings `vector` of peer `target` (`DOORBELL = vector | target << 16`).
    ///
    /// A full fence comes first, so that every store before the call is
    /// visible to the peer before its interrupt arrives. The device drops
    /// doorbells to absent peers and to vectors the target has not enabled.
    pub fn ring(&self, target: u16, vector: u16) {
        fence(Ordering::SeqCst);
        register!(self.doorbell)
            .restrict::<WriteOnly>()
            .write(doorbell_value(target, vector));
    }

    /// Reads STATE (this peer's last written state).
    pub fn state(&self) -> u32 {
        register!(self.state).read()
    }

    /// Writes STATE. The hypervisor copies the value into this peer's
    /// state-table entry and, if it changed, rings vector 0 of every other
    /// peer. A full fence comes first so that, for example, a zeroed output
    /// section is visible before the peer sees the new state.
    pub fn set_state(&self, state: u32) {
        fence(Ordering::SeqCst);
        register!(self.state).write(state);
    }
}

/// A validated Jailhouse ivshmem 2.0 device.
#[derive(Clone, Copy, Debug)]
pub struct JailhouseDevice<'a> {
    registers: Registers<'a>,
    id: u16,
    protocol: u16,
    layout: SharedMemoryLayout,
    capability: VendorCapability,
}

impl<'a> JailhouseDevice<'a> {
    /// Identifies the device, parses its vendor capability, reads ID and
    /// MAX_PEERS from `registers` and validates everything together.
    ///
    /// `expected_protocol` is the protocol the caller drives
    /// ([`crate::layout::PROTOCOL_NET`] for ivnet). `bar2_size` is the size
    /// of BAR2 if the device has one (Jailhouse never does; pass `None`).
    pub fn probe<C: ConfigSpace + ?Sized>(
        cfg: &C,
        registers: Registers<'a>,
        expected_protocol: u16,
        bar2_size: Option<u64>,
    ) -> Result<Self, DeviceError> {
        let identity = identify(cfg)?;
        if identity.protocol != expected_protocol {
            return Err(DeviceError::WrongProtocol {
                found: identity.protocol,
                expected: expected_protocol,
            });
        }
        let capability = VendorCapability::find(cfg)?;
        let id = registers.id();
        let max_peers = registers.max_peers();
        let layout = capability.validate(max_peers, id, bar2_size)?;
        // validate() checked that the ID is below a u16 peer count.
        Ok(JailhouseDevice {
            registers,
            id: id as u16,
            protocol: identity.protocol,
            layout,
            capability,
        })
    }

    /// The register handle.
    pub const fn registers(&self) -> Registers<'a> {
        self.registers
    }

    /// The parsed vendor capability (for [`VendorCapability::set_one_shot`]).
    pub const fn capability(&self) -> VendorCapability {
        self.capability
    }
}

impl Ivshmem for JailhouseDevice<'_> {
    fn profile(&self) -> Profile {
        Profile::Jailhouse
    }

    fn id(&self) -> u16 {
        self.id
    }

    fn protocol(&self) -> u16 {
        self.protocol
    }

    fn layout(&self) -> SharedMemoryLayout {
        self.layout
    }

    fn location(&self) -> SharedMemoryLocation {
        self.capability.location()
    }

    fn ring(&self, peer: u16, vector: u16) -> Result<(), DeviceError> {
        if peer >= self.layout.max_peers {
            return Err(DeviceError::PeerOutOfRange {
                peer,
                max_peers: self.layout.max_peers,
            });
        }
        self.registers.ring(peer, vector);
        Ok(())
    }

    /// Writes STATE; the hypervisor updates the table and rings the others.
    fn set_own_state(&self, state: u32) {
        self.registers.set_state(state);
    }

    fn enable_interrupts(&self) {
        self.registers.set_int_control(IntControl::ENABLE);
    }

    fn disable_interrupts(&self) {
        self.registers.set_int_control(IntControl::empty());
    }

    fn rearm(&self) {
        self.registers.set_int_control(IntControl::ENABLE);
    }
}
