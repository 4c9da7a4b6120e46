//! The MSI-X capability (ID 11h).
//!
//! ```text
//! cap+0x00  ID 11h | next | Message Control (u16): bits 10:0 table size - 1,
//!                                                  bit 14 function mask, bit 15 enable
//! cap+0x04  Table offset (bits 31:3) | table BIR (bits 2:0)
//! cap+0x08  PBA offset   (bits 31:3) | PBA BIR   (bits 2:0)
//! ```
//!
//! The table itself (16 bytes per vector: address low, address high, data,
//! vector control) lives in the BAR the BIR names; the driver programs its
//! entries with 32-bit MMIO writes at the offsets of [`MsixEntryField`].
//! Neither ivshmem device implements the PBA usefully (Jailhouse: always 0;
//! QEMU: only for masked vectors, at the cost of a VM exit per read).

use super::{CAP_ID_MSIX, Capability, ConfigSpace, PciError};

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u32 = 16;

/// Offsets of the 32-bit fields inside one MSI-X table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsixEntryField {
    /// Message address, low 32 bits (x86: `0xFEE0_0000 | apic_id << 12`).
    AddressLow = 0x0,
    /// Message address, high 32 bits.
    AddressHigh = 0x4,
    /// Message data (x86: the IDT vector in bits 7:0).
    Data = 0x8,
    /// Vector control: bit 0 masks the vector.
    VectorControl = 0xC,
}

const CONTROL_ENABLE: u32 = 1 << 15;
const CONTROL_FUNCTION_MASK: u32 = 1 << 14;
const CONTROL_TABLE_SIZE: u32 = 0x7FF;

/// A parsed MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-aligned).
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-aligned).
    pub pba_offset: u32,
    /// MSI-X enable (Message Control bit 15) at the time of parsing.
    pub enabled: bool,
    /// Function mask (Message Control bit 14) at the time of parsing.
    pub function_masked: bool,
}

impl MsixCapability {
    /// Bytes of configuration space the capability occupies.
    pub const LENGTH: u16 = 12;

    /// Parses the MSI-X capability found at `cap` (found by its ID, 11h).
    pub fn parse<C: ConfigSpace + ?Sized>(cfg: &C, cap: Capability) -> Result<Self, PciError> {
        cap.check_length(Self::LENGTH)?;
        let offset = u16::from(cap.offset);
        let control = cfg.read32(offset) >> 16;
        let table = cfg.read32(offset + 4);
        let pba = cfg.read32(offset + 8);
        let (table_bar, pba_bar) = ((table & 7) as u8, (pba & 7) as u8);
        for bir in [table_bar, pba_bar] {
            if bir > 5 {
                return Err(PciError::ReservedMsixBir { bir });
            }
        }
        Ok(MsixCapability {
            offset: cap.offset,
            table_size: (control & CONTROL_TABLE_SIZE) as u16 + 1,
            table_bar,
            table_offset: table & !7,
            pba_bar,
            pba_offset: pba & !7,
            enabled: control & CONTROL_ENABLE != 0,
            function_masked: control & CONTROL_FUNCTION_MASK != 0,
        })
    }

    /// Finds and parses the MSI-X capability; `Ok(None)` if there is none.
    pub fn find<C: ConfigSpace + ?Sized>(cfg: &C) -> Result<Option<Self>, PciError> {
        match super::find_capability(cfg, CAP_ID_MSIX)? {
            Some(cap) => Self::parse(cfg, cap).map(Some),
            None => Ok(None),
        }
    }

    /// Offset of `field` of table entry `vector` from the start of the table
    /// BAR, or `None` if the table has no such entry.
    pub fn entry_offset(&self, vector: u16, field: MsixEntryField) -> Option<u64> {
        if vector >= self.table_size {
            return None;
        }
        Some(
            u64::from(self.table_offset)
                + u64::from(vector) * u64::from(MSIX_ENTRY_SIZE)
                + field as u64,
        )
    }

    /// Sets MSI-X enable and function mask with one dword write of the
    /// capability header. The ID and next-pointer bytes in the low half are
    /// read-only, so writing back what was read leaves them as they are.
    ///
    /// The usual sequence is `set_control(cfg, true, true)`, program the table
    /// entries, then `set_control(cfg, true, false)`.
    pub fn set_control<C: ConfigSpace + ?Sized>(
        &mut self,
        cfg: &mut C,
        enable: bool,
        function_mask: bool,
    ) {
        let offset = u16::from(self.offset);
        let mut dword = cfg.read32(offset);
        dword &= !((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) << 16);
        if enable {
            dword |= CONTROL_ENABLE << 16;
        }
        if function_mask {
            dword |= CONTROL_FUNCTION_MASK << 16;
        }
        cfg.write32(offset, dword);
        self.enabled = enable;
        self.function_masked = function_mask;
    }
}
