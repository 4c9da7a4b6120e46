//! Walking the capability list.
//!
//! The list starts at the pointer at 0x34 (valid only when Status bit 4 is
//! set); each capability begins with its ID byte and the pointer to the next
//! one, 0 ending the list. A configuration space is device- or
//! hypervisor-provided data, so the walk trusts nothing: every pointer must be
//! 4-aligned and at or above 0x40, no offset may be visited twice, and the
//! walk ends after 48 capabilities (the number of 4-byte slots between 0x40
//! and 0xFF). The PCI specification tells software to mask the two low
//! pointer bits; ivnet rejects them instead, because neither ivshmem device
//! sets them and a set bit there means the data is not what it should be.

use super::{
    CAPABILITIES_POINTER, ConfigSpace, HEADER_END, LEGACY_CONFIG_SPACE_SIZE, PciError, STATUS,
    Status,
};

/// At most this many capabilities fit between 0x40 and 0xFF.
const MAX_CAPABILITIES: u8 = 48;

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capability {
    /// Capability ID (byte 0).
    pub id: u8,
    /// Offset of the capability in configuration space (4-aligned, >= 0x40).
    pub offset: u8,
}

impl Capability {
    /// Checks that `length` bytes starting at the capability lie inside the
    /// legacy configuration space.
    pub fn check_length(&self, length: u16) -> Result<(), PciError> {
        if u32::from(self.offset) + u32::from(length) > u32::from(LEGACY_CONFIG_SPACE_SIZE) {
            return Err(PciError::CapabilityPastEnd {
                id: self.id,
                offset: self.offset,
                length,
            });
        }
        Ok(())
    }
}

/// Iterator over the capability list, yielding an error (and then nothing)
/// when the list is malformed. Created by [`capabilities`].
#[derive(Debug)]
pub struct Capabilities<'c, C: ?Sized> {
    cfg: &'c C,
    /// Where the next pointer is read from; 0 once finished.
    next_at: u16,
    /// Offsets visited so far, one bit per byte offset.
    seen: [u64; 4],
    count: u8,
}

/// Walks the capability list of `cfg`. Yields nothing when Status bit 4
/// (capabilities list) is clear.
pub fn capabilities<C: ConfigSpace + ?Sized>(cfg: &C) -> Capabilities<'_, C> {
    let status = Status::from_bits_retain(cfg.read16(STATUS));
    let next_at = if status.contains(Status::CAPABILITIES_LIST) {
        CAPABILITIES_POINTER
    } else {
        0
    };
    Capabilities {
        cfg,
        next_at,
        seen: [0; 4],
        count: 0,
    }
}

/// Finds the first capability with `id`. `Ok(None)` when the list does not
/// have one; an error when the list is malformed before it is found.
pub fn find_capability<C: ConfigSpace + ?Sized>(
    cfg: &C,
    id: u8,
) -> Result<Option<Capability>, PciError> {
    for cap in capabilities(cfg) {
        let cap = cap?;
        if cap.id == id {
            return Ok(Some(cap));
        }
    }
    Ok(None)
}

impl<C: ConfigSpace + ?Sized> Capabilities<'_, C> {
    fn step(&mut self) -> Result<Option<Capability>, PciError> {
        let at = self.next_at;
        let pointer = self.cfg.read8(at);
        if pointer == 0 {
            return Ok(None);
        }
        if u16::from(pointer) < HEADER_END {
            return Err(PciError::CapabilityPointerInHeader { at, pointer });
        }
        if pointer & 3 != 0 {
            return Err(PciError::UnalignedCapabilityPointer { at, pointer });
        }
        let (word, bit) = (usize::from(pointer / 64), pointer % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return Err(PciError::CapabilityLoop { pointer });
        }
        if self.count == MAX_CAPABILITIES {
            // Unreachable with the loop check (there are only 48 aligned
            // slots), but the bound must not depend on that reasoning.
            return Err(PciError::TooManyCapabilities);
        }
        self.seen[word] |= 1 << bit;
        self.count += 1;
        let header = self.cfg.read16(u16::from(pointer));
        self.next_at = u16::from(pointer) + 1;
        Ok(Some(Capability {
            id: header as u8,
            offset: pointer,
        }))
    }
}

impl<C: ConfigSpace + ?Sized> Iterator for Capabilities<'_, C> {
    type Item = Result<Capability, PciError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_at == 0 {
            return None;
        }
        match self.step() {
            Ok(Some(cap)) => Some(Ok(cap)),
            Ok(None) => {
                self.next_at = 0;
                None
            }
            Err(e) => {
                self.next_at = 0;
                Some(Err(e))
            }
        }
    }
}

impl<C: ConfigSpace + ?Sized> core::iter::FusedIterator for Capabilities<'_, C> {}
