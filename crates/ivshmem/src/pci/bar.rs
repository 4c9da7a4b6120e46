//! Base address registers: decoding, programming and sizing.

use super::{BAR0, Command, ConfigSpace, PciError, read_command, write_command};

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bar {
    /// An I/O-space BAR.
    Io {
        /// Port base (bits 31:2).
        port: u32,
    },
    /// A 32-bit memory BAR.
    Memory32 {
        /// Base address (bits 31:4).
        address: u32,
        /// Prefetchable (bit 3).
        prefetchable: bool,
    },
    /// A 64-bit memory BAR, occupying this slot and the next.
    Memory64 {
        /// Base address (bits 63:4).
        address: u64,
        /// Prefetchable (bit 3).
        prefetchable: bool,
    },
}

impl Bar {
    /// The base address (port number for I/O BARs).
    pub const fn address(&self) -> u64 {
        match *self {
            Bar::Io { port } => port as u64,
            Bar::Memory32 { address, .. } => address as u64,
            Bar::Memory64 { address, .. } => address,
        }
    }

    /// Whether this is a memory BAR.
    pub const fn is_memory(&self) -> bool {
        !matches!(self, Bar::Io { .. })
    }

    /// Number of BAR slots taken (2 for a 64-bit BAR).
    pub const fn slots(&self) -> u8 {
        match self {
            Bar::Memory64 { .. } => 2,
            _ => 1,
        }
    }
}

fn bar_offset(index: u8) -> Result<u16, PciError> {
    if index > 5 {
        return Err(PciError::NoSuchBar(index));
    }
    Ok(BAR0 + 4 * u16::from(index))
}

/// Decodes BAR `index` (0..=5). A 64-bit BAR is read together with its upper
/// half in slot `index + 1`. An address of 0 usually means the BAR has not
/// been assigned yet (Jailhouse clears the BARs of ivshmem devices on cell
/// reset; the guest programs them with [`program_bar`]).
pub fn read_bar<C: ConfigSpace + ?Sized>(cfg: &C, index: u8) -> Result<Bar, PciError> {
    let offset = bar_offset(index)?;
    let raw = cfg.read32(offset);
    if raw & 1 == 1 {
        return Ok(Bar::Io { port: raw & !0x3 });
    }
    let prefetchable = raw & 0x8 != 0;
    match (raw >> 1) & 0x3 {
        0b00 => Ok(Bar::Memory32 {
            address: raw & !0xF,
            prefetchable,
        }),
        0b10 => {
            if index == 5 {
                return Err(PciError::Truncated64BitBar);
            }
            let high = cfg.read32(offset + 4);
            Ok(Bar::Memory64 {
                address: u64::from(high) << 32 | u64::from(raw & !0xF),
                prefetchable,
            })
        }
        _ => Err(PciError::ReservedBarType { index, raw }),
    }
}

/// Writes `address` into BAR `index`, keeping its type bits; a 64-bit BAR gets
/// both halves. Returns the BAR as read back afterwards.
///
/// On Jailhouse, program BARs while [`Command::MEMORY`] is clear and set it
/// afterwards: the hypervisor installs the register trap at the BAR address
/// when the bit goes from 0 to 1, and does not move it for later BAR writes.
pub fn program_bar<C: ConfigSpace + ?Sized>(
    cfg: &mut C,
    index: u8,
    address: u64,
) -> Result<Bar, PciError> {
    let offset = bar_offset(index)?;
    match read_bar(cfg, index)? {
        Bar::Io { .. } => cfg.write32(offset, address as u32 & !0x3),
        Bar::Memory32 { .. } => cfg.write32(offset, address as u32 & !0xF),
        Bar::Memory64 { .. } => {
            cfg.write32(offset, address as u32 & !0xF);
            cfg.write32(offset + 4, (address >> 32) as u32);
        }
    }
    read_bar(cfg, index)
}

/// Sizes BAR `index` by writing all-ones and reading back the address mask,
/// then restores the BAR. Returns the BAR (as it was) and its size in bytes;
/// a size of 0 means the BAR is not implemented.
///
/// I/O and memory decoding are switched off in the Command register for the
/// duration (otherwise the device would briefly claim the all-ones address)
/// and the Command register is restored afterwards.
pub fn size_bar<C: ConfigSpace + ?Sized>(cfg: &mut C, index: u8) -> Result<(Bar, u64), PciError> {
    let offset = bar_offset(index)?;
    let bar = read_bar(cfg, index)?;
    let command = read_command(cfg);
    write_command(cfg, command.difference(Command::IO | Command::MEMORY));

    let low = cfg.read32(offset);
    cfg.write32(offset, 0xFFFF_FFFF);
    let low_mask = cfg.read32(offset);
    cfg.write32(offset, low);
    let size = match bar {
        Bar::Io { .. } => {
            let mut mask = low_mask & !0x3;
            if mask != 0 && mask & 0xFFFF_0000 == 0 {
                // 16-bit I/O decoders leave the upper half 0.
                mask |= 0xFFFF_0000;
            }
            if mask == 0 {
                0
            } else {
                u64::from((!mask).wrapping_add(1))
            }
        }
        Bar::Memory32 { .. } => {
            let mask = low_mask & !0xF;
            if mask == 0 {
                0
            } else {
                u64::from((!mask).wrapping_add(1))
            }
        }
        Bar::Memory64 { .. } => {
            let high = cfg.read32(offset + 4);
            cfg.write32(offset + 4, 0xFFFF_FFFF);
            let high_mask = cfg.read32(offset + 4);
            cfg.write32(offset + 4, high);
            let mask = u64::from(high_mask) << 32 | u64::from(low_mask & !0xF);
            if mask == 0 {
                0
            } else {
                (!mask).wrapping_add(1)
            }
        }
    };

    write_command(cfg, command);
    Ok((bar, size))
}
