//! PCI configuration space: the reader trait, the type-0 header, BARs, the
//! capability list and the MSI-X capability.
//!
//! Everything here works on a [`ConfigSpace`], a device's configuration space
//! seen as aligned 32-bit registers. The bare-metal guest implements it with
//! port I/O at `0xCF8`/`0xCFC`, the Linux bridge with the sysfs `config` file,
//! and tests with a [`ConfigImage`] byte array. Only aligned 32-bit accesses
//! are ever issued: Jailhouse stops an x86 cell that makes a non-4-byte access
//! to `0xCF8`, and narrower values are derived from the dword that holds them.
//!
//! Nothing a configuration space returns is trusted: the capability walk is
//! bounded and rejects pointers into the header, unaligned pointers, loops and
//! capabilities that run past the end of the legacy 256-byte space, each with
//! its own [`PciError`].
//!
//! These few helpers are written by hand rather than taken from a PCI crate
//! (`pci_types`) because ivnet needs the strict, typed validation of every
//! pointer and length, and an accessor trait that a Linux sysfs file and a
//! bare-metal port pair can both implement in a few lines.

mod bar;
mod capability;
mod image;
mod msix;

use core::fmt;

use bitflags::bitflags;

pub use bar::{Bar, program_bar, read_bar, size_bar};
pub use capability::{Capabilities, Capability, capabilities, find_capability};
pub use image::ConfigImage;
pub use msix::{MSIX_ENTRY_SIZE, MsixCapability, MsixEntryField};

/// Size of the legacy configuration space reachable through port I/O.
pub const LEGACY_CONFIG_SPACE_SIZE: u16 = 0x100;

/// Offset of Vendor ID (u16).
pub const VENDOR_ID: u16 = 0x00;
/// Offset of Device ID (u16).
pub const DEVICE_ID: u16 = 0x02;
/// Offset of Command (u16).
pub const COMMAND: u16 = 0x04;
/// Offset of Status (u16).
pub const STATUS: u16 = 0x06;
/// Offset of the class/revision dword: revision (0x08), programming interface
/// (0x09), sub-class (0x0A), base class (0x0B).
pub const CLASS_REVISION: u16 = 0x08;
/// Offset of Header Type (u8).
pub const HEADER_TYPE: u16 = 0x0E;
/// Offset of BAR0; BAR `n` is at `BAR0 + 4 * n`.
pub const BAR0: u16 = 0x10;
/// Offset of Subsystem Vendor ID (u16).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
/// Offset of Subsystem ID (u16).
pub const SUBSYSTEM_ID: u16 = 0x2E;
/// Offset of the Capabilities Pointer (u8).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Offset of Interrupt Line (u8).
pub const INTERRUPT_LINE: u16 = 0x3C;
/// Offset of Interrupt Pin (u8).
pub const INTERRUPT_PIN: u16 = 0x3D;
/// First byte after the type-0 header: capabilities live at or above it.
pub const HEADER_END: u16 = 0x40;

/// Capability ID of the MSI-X capability.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Capability ID of a vendor-specific capability.
pub const CAP_ID_VENDOR: u8 = 0x09;

/// A device's configuration space, accessed as aligned 32-bit registers.
///
/// `offset` is always a multiple of 4 when this crate calls the required
/// methods. Reads of offsets the implementation cannot reach should return
/// `0xFFFF_FFFF` (what PCI returns for a missing device or register), and
/// writes there should be dropped; neither may panic.
pub trait ConfigSpace {
    /// Reads the dword at `offset` (a multiple of 4).
    fn read32(&self, offset: u16) -> u32;

    /// Writes the dword at `offset` (a multiple of 4).
    fn write32(&mut self, offset: u16, value: u32);

    /// Reads the byte at `offset`, from the aligned dword that contains it.
    fn read8(&self, offset: u16) -> u8 {
        let shift = 8 * u32::from(offset & 3);
        (self.read32(offset & !3) >> shift) as u8
    }

    /// Reads the little-endian u16 at `offset`, from aligned dword reads.
    fn read16(&self, offset: u16) -> u16 {
        if offset & 3 == 3 {
            // Straddles two dwords.
            u16::from(self.read8(offset)) | u16::from(self.read8(offset.wrapping_add(1))) << 8
        } else {
            let shift = 8 * u32::from(offset & 3);
            (self.read32(offset & !3) >> shift) as u16
        }
    }

    /// Reads the little-endian u64 at `offset` (a multiple of 4) as two
    /// dwords, low first.
    fn read64(&self, offset: u16) -> u64 {
        u64::from(self.read32(offset)) | u64::from(self.read32(offset.wrapping_add(4))) << 32
    }
}

impl<C: ConfigSpace + ?Sized> ConfigSpace for &mut C {
    fn read32(&self, offset: u16) -> u32 {
        (**self).read32(offset)
    }

    fn write32(&mut self, offset: u16, value: u32) {
        (**self).write32(offset, value)
    }
}

bitflags! {
    /// The Command register (offset 0x04). Only the bits ivnet uses are named;
    /// others are kept as read.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Command: u16 {
        /// Respond to I/O-space accesses (I/O BARs).
        const IO = 1 << 0;
        /// Respond to memory-space accesses (memory BARs). On Jailhouse the
        /// register and MSI-X traps are installed when this bit goes 0 → 1,
        /// so program the BARs first.
        const MEMORY = 1 << 1;
        /// Allow the device to master the bus. MSI-X messages are bus-master
        /// writes: without this bit no interrupt is delivered.
        const BUS_MASTER = 1 << 2;
        /// Disable INTx assertion.
        const INTX_DISABLE = 1 << 10;
        const _ = !0;
    }
}

bitflags! {
    /// The Status register (offset 0x06).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Status: u16 {
        /// INTx is asserted.
        const INTERRUPT_STATUS = 1 << 3;
        /// The capabilities pointer at 0x34 is valid.
        const CAPABILITIES_LIST = 1 << 4;
        const _ = !0;
    }
}

/// Base class, sub-class, programming interface and revision (the dword at
/// 0x08).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClassCode {
    /// Base class (0x0B).
    pub base: u8,
    /// Sub-class (0x0A).
    pub sub: u8,
    /// Programming interface (0x09).
    pub prog_if: u8,
    /// Revision ID (0x08).
    pub revision: u8,
}

impl ClassCode {
    /// Splits the class/revision dword.
    pub const fn from_dword(dword: u32) -> Self {
        let [revision, prog_if, sub, base] = dword.to_le_bytes();
        ClassCode {
            base,
            sub,
            prog_if,
            revision,
        }
    }

    /// The dword as it appears at offset 0x08.
    pub const fn to_dword(self) -> u32 {
        u32::from_le_bytes([self.revision, self.prog_if, self.sub, self.base])
    }
}

/// The fields of a type-0 configuration header that ivnet looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Vendor ID; `0xFFFF` means no device.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Command register.
    pub command: Command,
    /// Status register.
    pub status: Status,
    /// Class code and revision.
    pub class: ClassCode,
    /// Header type (bit 7: multi-function).
    pub header_type: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Capabilities pointer (meaningful only with
    /// [`Status::CAPABILITIES_LIST`]).
    pub capabilities_pointer: u8,
    /// Interrupt line.
    pub interrupt_line: u8,
    /// Interrupt pin (0 = none, 1..4 = INTA#..INTD#).
    pub interrupt_pin: u8,
}

impl Header {
    /// Reads the header with aligned dword reads.
    pub fn read<C: ConfigSpace + ?Sized>(cfg: &C) -> Self {
        let ids = cfg.read32(VENDOR_ID);
        let command_status = cfg.read32(COMMAND);
        let subsystem = cfg.read32(SUBSYSTEM_VENDOR_ID);
        let interrupt = cfg.read32(INTERRUPT_LINE);
        Header {
            vendor_id: ids as u16,
            device_id: (ids >> 16) as u16,
            command: Command::from_bits_retain(command_status as u16),
            status: Status::from_bits_retain((command_status >> 16) as u16),
            class: ClassCode::from_dword(cfg.read32(CLASS_REVISION)),
            header_type: cfg.read8(HEADER_TYPE),
            subsystem_vendor_id: subsystem as u16,
            subsystem_id: (subsystem >> 16) as u16,
            capabilities_pointer: cfg.read8(CAPABILITIES_POINTER),
            interrupt_line: interrupt as u8,
            interrupt_pin: (interrupt >> 8) as u8,
        }
    }

    /// Whether a device answered at all (`vendor_id != 0xFFFF`).
    pub const fn is_present(&self) -> bool {
        self.vendor_id != 0xFFFF
    }
}

/// Reads the Command register.
pub fn read_command<C: ConfigSpace + ?Sized>(cfg: &C) -> Command {
    Command::from_bits_retain(cfg.read16(COMMAND))
}

/// Writes the Command register with one dword write whose upper half (Status)
/// is 0: Status bits are read-only or write-1-to-clear, so writing 0 leaves
/// them alone.
pub fn write_command<C: ConfigSpace + ?Sized>(cfg: &mut C, command: Command) {
    cfg.write32(COMMAND, u32::from(command.bits()));
}

/// Why a configuration space was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// A capability pointer points into the type-0 header (below 0x40).
    CapabilityPointerInHeader {
        /// Where the pointer was read (0x34 or a capability's `next` byte).
        at: u16,
        /// The pointer.
        pointer: u8,
    },
    /// A capability pointer is not a multiple of 4.
    UnalignedCapabilityPointer {
        /// Where the pointer was read.
        at: u16,
        /// The pointer.
        pointer: u8,
    },
    /// The capability list visits the same offset twice.
    CapabilityLoop {
        /// The offset seen twice.
        pointer: u8,
    },
    /// The list is longer than the 48 capabilities that fit in legacy space.
    TooManyCapabilities,
    /// A capability's body runs past the end of the 256-byte configuration
    /// space.
    CapabilityPastEnd {
        /// Capability ID.
        id: u8,
        /// Offset of the capability.
        offset: u8,
        /// Bytes the capability needs from `offset`.
        length: u16,
    },
    /// BAR index above 5.
    NoSuchBar(u8),
    /// A memory BAR with the reserved type `01b` or `11b` in bits 2:1.
    ReservedBarType {
        /// BAR index.
        index: u8,
        /// The raw BAR value.
        raw: u32,
    },
    /// A 64-bit memory BAR in slot 5, which has no upper half.
    Truncated64BitBar,
    /// An MSI-X table or PBA BIR of 6 or 7 (reserved).
    ReservedMsixBir {
        /// The BIR.
        bir: u8,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PciError::CapabilityPointerInHeader { at, pointer } => write!(
                f,
                "capability pointer {pointer:#04x} read at {at:#04x} points into the header (below 0x40)"
            ),
            PciError::UnalignedCapabilityPointer { at, pointer } => write!(
                f,
                "capability pointer {pointer:#04x} read at {at:#04x} is not a multiple of 4"
            ),
            PciError::CapabilityLoop { pointer } => {
                write!(f, "capability list loops back to {pointer:#04x}")
            }
            PciError::TooManyCapabilities => {
                f.write_str("capability list longer than the 48 entries legacy space can hold")
            }
            PciError::CapabilityPastEnd { id, offset, length } => write!(
                f,
                "capability {id:#04x} at {offset:#04x} needs {length:#x} bytes and runs past the end of configuration space"
            ),
            PciError::NoSuchBar(i) => {
                write!(f, "BAR{i} does not exist (type-0 headers have BAR0..BAR5)")
            }
            PciError::ReservedBarType { index, raw } => {
                write!(f, "BAR{index} = {raw:#010x} has a reserved memory type")
            }
            PciError::Truncated64BitBar => {
                f.write_str("BAR5 claims to be 64-bit but has no upper half")
            }
            PciError::ReservedMsixBir { bir } => {
                write!(f, "MSI-X BIR {bir} is reserved (must be 0..5)")
            }
        }
    }
}

impl core::error::Error for PciError {}
