//! A configuration space held in a byte array.

use super::ConfigSpace;

/// A legacy (256-byte) configuration space held in memory: a test fixture, or
/// a snapshot taken from somewhere else (for example the first 256 bytes of a
/// Linux sysfs `config` file) to be parsed with this crate's functions.
///
/// Reads at or beyond 0x100 return `0xFFFF_FFFF`, and writes there are
/// dropped, as on a real bus. Writes store all 32 bits; the image models no
/// read-only or write-1-to-clear bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigImage(pub [u8; 256]);

impl ConfigImage {
    /// An all-zero image.
    pub const fn zeroed() -> Self {
        ConfigImage([0; 256])
    }

    /// An image of the first bytes of a configuration space, for example the
    /// contents of a Linux sysfs `config` file (256 bytes for root, only the
    /// 64-byte header for other users, 4096 on PCIe). Bytes beyond `bytes`
    /// read as `0xFF`, like registers nobody answers for, so a capability
    /// list that leads there fails with a typed error instead of parsing
    /// zeros.
    pub fn from_prefix(bytes: &[u8]) -> Self {
        let mut image = ConfigImage([0xFF; 256]);
        let n = bytes.len().min(256);
        image.0[..n].copy_from_slice(&bytes[..n]);
        image
    }

    /// Stores `value` little-endian at `offset`; bytes beyond the end are
    /// dropped. For building fixtures.
    pub fn put(&mut self, offset: usize, value: &[u8]) {
        for (i, b) in value.iter().enumerate() {
            if let Some(slot) = self.0.get_mut(offset + i) {
                *slot = *b;
            }
        }
    }

    /// Stores a u8 at `offset`.
    pub fn put8(&mut self, offset: usize, value: u8) {
        self.put(offset, &[value]);
    }

    /// Stores a little-endian u16 at `offset`.
    pub fn put16(&mut self, offset: usize, value: u16) {
        self.put(offset, &value.to_le_bytes());
    }

    /// Stores a little-endian u32 at `offset`.
    pub fn put32(&mut self, offset: usize, value: u32) {
        self.put(offset, &value.to_le_bytes());
    }

    /// Stores a little-endian u64 at `offset`.
    pub fn put64(&mut self, offset: usize, value: u64) {
        self.put(offset, &value.to_le_bytes());
    }
}

impl Default for ConfigImage {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl ConfigSpace for ConfigImage {
    fn read32(&self, offset: u16) -> u32 {
        let start = usize::from(offset & !3);
        match self.0.get(start..start + 4) {
            Some(bytes) => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            None => 0xFFFF_FFFF,
        }
    }

    fn write32(&mut self, offset: u16, value: u32) {
        let start = usize::from(offset & !3);
        if let Some(bytes) = self.0.get_mut(start..start + 4) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
    }
}
