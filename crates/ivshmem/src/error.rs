//! The error type of device identification, parsing and register use.

use core::fmt;

use crate::layout::LayoutError;
use crate::pci::{ClassCode, PciError};

/// Why a device was refused or a request to it was not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The configuration space is malformed (capability list, BARs).
    Pci(PciError),
    /// The shared-memory layout is invalid (sizes, alignment, window).
    Layout(LayoutError),
    /// Vendor ID reads `0xFFFF`: no device answers at this address.
    NoDevice,
    /// A device answered, but not the one the profile drives.
    WrongDevice {
        /// Vendor ID found.
        vendor_id: u16,
        /// Device ID found.
        device_id: u16,
    },
    /// The class code is not the profile's (Jailhouse: base class FFh;
    /// QEMU: memory controller / RAM, 05h/00h).
    WrongClass(ClassCode),
    /// A revision this crate does not drive (Jailhouse ivshmem 2.0: 0;
    /// QEMU ivshmem: 1, revision 0 predates QEMU 2.6 and differs).
    UnsupportedRevision {
        /// Revision found.
        found: u8,
        /// Revision expected.
        expected: u8,
    },
    /// The device speaks another protocol than the caller expects.
    WrongProtocol {
        /// Protocol found (Jailhouse: class sub-class/prog-if; QEMU: layout
        /// page).
        found: u16,
        /// Protocol expected.
        expected: u16,
    },
    /// A capability the profile needs is missing (Jailhouse: vendor-specific
    /// 09h).
    MissingCapability {
        /// Capability ID.
        id: u8,
    },
    /// The vendor-specific capability is shorter than the 0x18 bytes that
    /// hold the three sizes.
    TruncatedVendorCapability {
        /// Offset of the capability.
        offset: u8,
        /// Its Length byte.
        length: u8,
    },
    /// The vendor capability's Length is between 0x19 and 0x1F: the Base
    /// Address field is only partly there.
    BadVendorCapabilityLength {
        /// Offset of the capability.
        offset: u8,
        /// Its Length byte.
        length: u8,
    },
    /// The shared memory is in BAR2 (vendor capability without Base Address)
    /// but no BAR2 window was given, or it has size 0.
    NoSharedMemoryWindow,
    /// The Base Address in the vendor capability is not page-aligned.
    UnalignedBaseAddress(u64),
    /// More peers than the protocol or this crate allows (ivshmem-net: 2;
    /// the layout's peer count is a u16).
    TooManyPeers {
        /// Maximum peers the device reports.
        max_peers: u32,
        /// The limit.
        limit: u32,
    },
    /// The device's own ID is not below its maximum peer count.
    IdOutOfRange {
        /// The ID (Jailhouse ID register, QEMU IVPosition).
        id: u32,
        /// Maximum peers.
        max_peers: u32,
    },
    /// A doorbell to a peer that cannot exist.
    PeerOutOfRange {
        /// Target peer.
        peer: u16,
        /// Maximum peers.
        max_peers: u16,
    },
    /// A doorbell vector the device cannot carry (QEMU decodes only bits
    /// 7:0 of the vector, and peers have only as many vectors as the layout
    /// page says).
    VectorOutOfRange {
        /// The vector.
        vector: u16,
        /// Highest usable vector.
        max: u16,
    },
    /// The shared-memory window is smaller than the layout page.
    WindowTooSmall {
        /// Size of the window.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A window or register pointer is not 4-byte aligned, so 32-bit
    /// accesses through it would be unaligned.
    UnalignedPointer,
}

impl From<PciError> for DeviceError {
    fn from(e: PciError) -> Self {
        DeviceError::Pci(e)
    }
}

impl From<LayoutError> for DeviceError {
    fn from(e: LayoutError) -> Self {
        DeviceError::Layout(e)
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceError::Pci(e) => write!(f, "malformed PCI configuration space: {e}"),
            DeviceError::Layout(e) => write!(f, "invalid shared-memory layout: {e}"),
            DeviceError::NoDevice => {
                f.write_str("no PCI device at this address (vendor ID 0xffff)")
            }
            DeviceError::WrongDevice {
                vendor_id,
                device_id,
            } => write!(
                f,
                "device {vendor_id:04x}:{device_id:04x} is neither Jailhouse ivshmem 2.0 (110a:4106) nor QEMU ivshmem (1af4:1110)"
            ),
            DeviceError::WrongClass(c) => write!(
                f,
                "unexpected class code {:02x}/{:02x}/{:02x} (base/sub/prog-if)",
                c.base, c.sub, c.prog_if
            ),
            DeviceError::UnsupportedRevision { found, expected } => {
                write!(
                    f,
                    "device revision {found} is not supported (expected {expected})"
                )
            }
            DeviceError::WrongProtocol { found, expected } => {
                write!(
                    f,
                    "device speaks protocol {found:#06x}, expected {expected:#06x}"
                )
            }
            DeviceError::MissingCapability { id } => {
                write!(f, "required PCI capability {id:#04x} is missing")
            }
            DeviceError::TruncatedVendorCapability { offset, length } => write!(
                f,
                "vendor capability at {offset:#04x} has length {length:#x}, needs at least 0x18"
            ),
            DeviceError::BadVendorCapabilityLength { offset, length } => write!(
                f,
                "vendor capability at {offset:#04x} has length {length:#x}; expected 0x18 (memory in BAR2) or 0x20 (with Base Address)"
            ),
            DeviceError::NoSharedMemoryWindow => {
                f.write_str("shared memory is in BAR2, but BAR2 is absent or empty")
            }
            DeviceError::UnalignedBaseAddress(a) => {
                write!(f, "shared-memory base address {a:#x} is not page-aligned")
            }
            DeviceError::TooManyPeers { max_peers, limit } => {
                write!(
                    f,
                    "device allows {max_peers} peers, at most {limit} are supported"
                )
            }
            DeviceError::IdOutOfRange { id, max_peers } => {
                write!(
                    f,
                    "own peer ID {id} is not below the maximum of {max_peers} peers"
                )
            }
            DeviceError::PeerOutOfRange { peer, max_peers } => {
                write!(f, "peer {peer} does not exist (maximum {max_peers} peers)")
            }
            DeviceError::VectorOutOfRange { vector, max } => {
                write!(
                    f,
                    "doorbell vector {vector} is out of range (highest is {max})"
                )
            }
            DeviceError::WindowTooSmall { size, needed } => write!(
                f,
                "shared-memory window of {size:#x} bytes is smaller than the {needed:#x} bytes required"
            ),
            DeviceError::UnalignedPointer => {
                f.write_str("register or window pointer is not 4-byte aligned")
            }
        }
    }
}

impl core::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DeviceError::Pci(e) => Some(e),
            DeviceError::Layout(e) => Some(e),
            _ => None,
        }
    }
}
