//! The ivshmem 2.0 shared-memory layout and the QEMU-profile layout page.
//!
//! Everything above this crate sees one layout, the one the ivshmem 2.0
//! specification defines:
//!
//! ```text
//! state table | R/W section | output section of peer 0 | output section of peer 1 | …
//! ```
//!
//! On Jailhouse the sizes come from the vendor-specific PCI capability. QEMU's
//! `ivshmem-doorbell` has no such capability, so ivnet's ivshmem-server writes
//! a *layout page* into the first 4 KiB of the window and the 2.0 layout
//! starts after it. Peers only read that page; they copy it out of shared
//! memory once and validate the copy ([`LayoutPage::parse`]).

use core::fmt;

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the layout page at the start of a QEMU-profile window.
pub const LAYOUT_PAGE_SIZE: u64 = 0x1000;
/// Magic bytes at offset 0 of the layout page.
pub const LAYOUT_MAGIC: [u8; 8] = *b"IVSHMEM2";
/// The only layout-page version this crate understands.
pub const LAYOUT_VERSION: u32 = 1;
/// Granule that every section size and offset must be a multiple of, so that
/// each section can be mapped with its own permissions.
pub const PAGE_SIZE: u64 = 0x1000;

/// PCI protocol (class sub-class/prog-if) of ivshmem-net, "virtual
/// peer-to-peer Ethernet" (`JAILHOUSE_SHMEM_PROTO_VETH`).
pub const PROTOCOL_NET: u16 = 0x0001;
/// Undefined protocol (`JAILHOUSE_SHMEM_PROTO_UNDEFINED`).
pub const PROTOCOL_UNDEFINED: u16 = 0x0000;
/// ivshmem-net links connect exactly two peers.
pub const NET_MAX_PEERS: u16 = 2;

/// Wire format of the layout page (little-endian, 0x30 bytes, at offset 0 of
/// the shared memory in the QEMU profile).
///
/// | offset | type | field |
/// |---:|---|---|
/// | 0x00 | `[u8; 8]` | magic `b"IVSHMEM2"` |
/// | 0x08 | u32 | layout version, 1 |
/// | 0x0C | u16 | protocol (0x0001 = ivshmem-net) |
/// | 0x0E | u16 | max peers |
/// | 0x10 | u32 | state table size |
/// | 0x14 | u32 | MSI-X vectors per peer |
/// | 0x18 | u64 | R/W section size |
/// | 0x20 | u64 | output section size |
/// | 0x28 | u64 | offset of the state table from the start of the window |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct LayoutPageRaw {
    /// `b"IVSHMEM2"`.
    pub magic: [u8; 8],
    /// Layout version.
    pub version: U32,
    /// PCI protocol number.
    pub protocol: U16,
    /// Maximum number of peers, including the reader.
    pub max_peers: U16,
    /// State table size in bytes.
    pub state_table_size: U32,
    /// MSI-X vectors per peer.
    pub vectors: U32,
    /// R/W section size in bytes.
    pub rw_section_size: U64,
    /// Output section size in bytes.
    pub output_section_size: U64,
    /// Offset of the state table from the start of the window.
    pub state_table_offset: U64,
}

const _: () = assert!(size_of::<LayoutPageRaw>() == LayoutPage::ENCODED_LEN);

/// A validated layout page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutPage {
    /// PCI protocol of the link.
    pub protocol: u16,
    /// MSI-X vectors per peer.
    pub vectors: u32,
    /// Where the sections are.
    pub layout: SharedMemoryLayout,
}

/// Positions and sizes of the ivshmem 2.0 regions inside one window, in bytes
/// from the start of the window the reader sees (BAR2 on QEMU, the region at
/// the capability's base address on Jailhouse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedMemoryLayout {
    /// Offset of the state table.
    pub state_table_offset: u64,
    /// Size of the state table (at least `4 * max_peers`).
    pub state_table_size: u64,
    /// Size of the common read/write section (may be 0).
    pub rw_section_size: u64,
    /// Size of each peer's output section.
    pub output_section_size: u64,
    /// Number of peers, each with one output section.
    pub max_peers: u16,
}

impl SharedMemoryLayout {
    /// Offset of the R/W section.
    pub const fn rw_section_offset(&self) -> u64 {
        self.state_table_offset + self.state_table_size
    }

    /// Offset of the first output section (peer 0's).
    pub const fn output_sections_offset(&self) -> u64 {
        self.rw_section_offset() + self.rw_section_size
    }

    /// Offset of `peer`'s output section, or `None` if there is no such peer.
    pub const fn output_section_offset(&self, peer: u16) -> Option<u64> {
        if peer >= self.max_peers {
            return None;
        }
        Some(self.output_sections_offset() + peer as u64 * self.output_section_size)
    }

    /// First byte after the last output section.
    pub const fn end(&self) -> u64 {
        self.output_sections_offset() + self.max_peers as u64 * self.output_section_size
    }

    /// Offset of `peer`'s entry (a `u32`) in the state table.
    pub const fn state_entry_offset(&self, peer: u16) -> Option<u64> {
        if peer >= self.max_peers {
            return None;
        }
        Some(self.state_table_offset + 4 * peer as u64)
    }

    /// Checks the layout against the rules of the ivshmem 2.0 specification
    /// and against a window of `window_size` bytes: page-granular sections,
    /// a state table large enough for every peer, at least two peers, and
    /// everything inside the window (with overflow-checked arithmetic).
    pub fn validate(&self, window_size: u64) -> Result<(), LayoutError> {
        if self.max_peers < 2 {
            return Err(LayoutError::TooFewPeers(self.max_peers));
        }
        if self.state_table_size == 0 {
            return Err(LayoutError::ZeroSize(Region::StateTable));
        }
        if self.state_table_size < 4 * u64::from(self.max_peers) {
            return Err(LayoutError::StateTableTooSmall {
                size: self.state_table_size,
                max_peers: self.max_peers,
            });
        }
        for (region, value) in [
            (Region::StateTableOffset, self.state_table_offset),
            (Region::StateTable, self.state_table_size),
            (Region::RwSection, self.rw_section_size),
            (Region::OutputSection, self.output_section_size),
        ] {
            if value % PAGE_SIZE != 0 {
                return Err(LayoutError::Unaligned { region, value });
            }
        }
        let end = self
            .state_table_offset
            .checked_add(self.state_table_size)
            .and_then(|v| v.checked_add(self.rw_section_size))
            .and_then(|v| {
                self.output_section_size
                    .checked_mul(u64::from(self.max_peers))
                    .and_then(|outputs| v.checked_add(outputs))
            })
            .ok_or(LayoutError::Overflow)?;
        if end > window_size {
            return Err(LayoutError::DoesNotFit { end, window_size });
        }
        Ok(())
    }
}

/// A region of the layout, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The state table.
    StateTable,
    /// The offset of the state table.
    StateTableOffset,
    /// The common read/write section.
    RwSection,
    /// A per-peer output section.
    OutputSection,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Region::StateTable => "state table size",
            Region::StateTableOffset => "state table offset",
            Region::RwSection => "R/W section size",
            Region::OutputSection => "output section size",
        })
    }
}

/// Why a layout (from a layout page or a capability) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The page does not start with `b"IVSHMEM2"` (no server wrote it, or it
    /// is not an ivnet window).
    BadMagic([u8; 8]),
    /// A layout version this code does not know.
    UnsupportedVersion(u32),
    /// Fewer than two peers.
    TooFewPeers(u16),
    /// A region that must exist has size 0.
    ZeroSize(Region),
    /// A size or offset is not a multiple of 4 KiB.
    Unaligned {
        /// Which value.
        region: Region,
        /// The value.
        value: u64,
    },
    /// The state table cannot hold one `u32` per peer.
    StateTableTooSmall {
        /// State table size.
        size: u64,
        /// Peers that need an entry.
        max_peers: u16,
    },
    /// The state table starts inside the layout page.
    StateTableOverlapsLayoutPage(u64),
    /// Zero MSI-X vectors.
    ZeroVectors,
    /// Sizes overflow 64-bit arithmetic.
    Overflow,
    /// The sections end beyond the window.
    DoesNotFit {
        /// First byte after the last section.
        end: u64,
        /// Size of the window (BAR2 or region).
        window_size: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::BadMagic(m) => write!(
                f,
                "layout page magic is {m:02x?}, expected \"IVSHMEM2\" (is an ivnet ivshmem-server serving this memory?)"
            ),
            LayoutError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "layout page version {v} is not supported (expected {LAYOUT_VERSION})"
                )
            }
            LayoutError::TooFewPeers(n) => write!(f, "max peers is {n}, at least 2 are required"),
            LayoutError::ZeroSize(r) => write!(f, "{r} is 0"),
            LayoutError::Unaligned { region, value } => {
                write!(f, "{region} {value:#x} is not a multiple of {PAGE_SIZE:#x}")
            }
            LayoutError::StateTableTooSmall { size, max_peers } => write!(
                f,
                "state table of {size:#x} bytes cannot hold {max_peers} peers (needs {})",
                4 * u64::from(*max_peers)
            ),
            LayoutError::StateTableOverlapsLayoutPage(off) => write!(
                f,
                "state table offset {off:#x} lies inside the layout page (must be >= {LAYOUT_PAGE_SIZE:#x})"
            ),
            LayoutError::ZeroVectors => f.write_str("zero MSI-X vectors"),
            LayoutError::Overflow => f.write_str("section sizes overflow 64-bit arithmetic"),
            LayoutError::DoesNotFit { end, window_size } => write!(
                f,
                "sections end at {end:#x}, beyond the {window_size:#x}-byte shared memory window"
            ),
        }
    }
}

impl core::error::Error for LayoutError {}

impl LayoutPage {
    /// Bytes of the encoded page that carry data; the rest of the 4 KiB page
    /// is zero.
    pub const ENCODED_LEN: usize = 0x30;

    /// Builds the page the server writes for a window laid out as
    /// `layout page | state table | R/W | outputs…`.
    pub const fn new(
        protocol: u16,
        vectors: u32,
        max_peers: u16,
        state_table_size: u64,
        rw_section_size: u64,
        output_section_size: u64,
    ) -> Self {
        LayoutPage {
            protocol,
            vectors,
            layout: SharedMemoryLayout {
                state_table_offset: LAYOUT_PAGE_SIZE,
                state_table_size,
                rw_section_size,
                output_section_size,
                max_peers,
            },
        }
    }

    /// Window size the server must allocate: the layout rounded up to the
    /// next power of two (QEMU requires BAR2 to be a power of two).
    pub fn window_size(&self) -> Option<u64> {
        self.layout.end().checked_next_power_of_two()
    }

    /// Encodes the page (the first [`Self::ENCODED_LEN`] bytes of the 4 KiB
    /// page; the server zeroes the rest).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let raw = LayoutPageRaw {
            magic: LAYOUT_MAGIC,
            version: U32::new(LAYOUT_VERSION),
            protocol: U16::new(self.protocol),
            max_peers: U16::new(self.layout.max_peers),
            // The wire field is 32 bits wide, like the capability's.
            state_table_size: U32::new(self.layout.state_table_size as u32),
            vectors: U32::new(self.vectors),
            rw_section_size: U64::new(self.layout.rw_section_size),
            output_section_size: U64::new(self.layout.output_section_size),
            state_table_offset: U64::new(self.layout.state_table_offset),
        };
        let mut out = [0u8; Self::ENCODED_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Parses and validates a copy of the page taken from a window of
    /// `window_size` bytes.
    pub fn parse(bytes: &[u8; Self::ENCODED_LEN], window_size: u64) -> Result<Self, LayoutError> {
        let raw = LayoutPageRaw::read_from_bytes(bytes).map_err(|_| LayoutError::Overflow)?;
        if raw.magic != LAYOUT_MAGIC {
            return Err(LayoutError::BadMagic(raw.magic));
        }
        if raw.version.get() != LAYOUT_VERSION {
            return Err(LayoutError::UnsupportedVersion(raw.version.get()));
        }
        if raw.vectors.get() == 0 {
            return Err(LayoutError::ZeroVectors);
        }
        let layout = SharedMemoryLayout {
            state_table_offset: raw.state_table_offset.get(),
            state_table_size: u64::from(raw.state_table_size.get()),
            rw_section_size: raw.rw_section_size.get(),
            output_section_size: raw.output_section_size.get(),
            max_peers: raw.max_peers.get(),
        };
        if layout.state_table_offset < LAYOUT_PAGE_SIZE {
            return Err(LayoutError::StateTableOverlapsLayoutPage(
                layout.state_table_offset,
            ));
        }
        layout.validate(window_size)?;
        Ok(LayoutPage {
            protocol: raw.protocol.get(),
            vectors: raw.vectors.get(),
            layout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net_page() -> LayoutPage {
        LayoutPage::new(PROTOCOL_NET, 2, 2, 0x1000, 0, 0x7f000)
    }

    #[test]
    fn jailhouse_net_link_fits_one_mib() {
        let page = net_page();
        assert_eq!(page.layout.output_section_offset(0), Some(0x2000));
        assert_eq!(page.layout.output_section_offset(1), Some(0x81000));
        assert_eq!(page.layout.output_section_offset(2), None);
        assert_eq!(page.layout.end(), 0x100000);
        assert_eq!(page.window_size(), Some(0x100000));
    }

    #[test]
    fn encode_parse_round_trip() {
        let page = net_page();
        let bytes = page.encode();
        assert_eq!(&bytes[..8], b"IVSHMEM2");
        assert_eq!(bytes[0x08], 1);
        assert_eq!(bytes[0x0c], 1);
        assert_eq!(bytes[0x0e], 2);
        assert_eq!(
            u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()),
            0x7f000
        );
        assert_eq!(
            u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()),
            0x1000
        );
        assert_eq!(LayoutPage::parse(&bytes, 0x100000), Ok(page));
    }

    #[test]
    fn rejects_bad_pages() {
        let good = net_page().encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            LayoutPage::parse(&b, 0x100000),
            Err(LayoutError::BadMagic(_))
        ));
        let mut b = good;
        b[0x08] = 2;
        assert_eq!(
            LayoutPage::parse(&b, 0x100000),
            Err(LayoutError::UnsupportedVersion(2))
        );
        assert_eq!(
            LayoutPage::parse(&good, 0x80000),
            Err(LayoutError::DoesNotFit {
                end: 0x100000,
                window_size: 0x80000
            })
        );
        let mut b = good;
        b[0x20] = 0x10; // output size 0x7f010
        assert!(matches!(
            LayoutPage::parse(&b, 0x200000),
            Err(LayoutError::Unaligned { .. })
        ));
        let mut b = good;
        b[0x14] = 0;
        assert_eq!(
            LayoutPage::parse(&b, 0x100000),
            Err(LayoutError::ZeroVectors)
        );
        let mut b = good;
        b[0x28..0x30].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(
            LayoutPage::parse(&b, 0x100000),
            Err(LayoutError::StateTableOverlapsLayoutPage(0))
        );
        let mut b = good;
        b[0x20..0x28].copy_from_slice(&u64::MAX.wrapping_sub(0xfff).to_le_bytes());
        assert_eq!(LayoutPage::parse(&b, 0x100000), Err(LayoutError::Overflow));
        let mut b = good;
        b[0x0e] = 1;
        assert_eq!(
            LayoutPage::parse(&b, 0x100000),
            Err(LayoutError::TooFewPeers(1))
        );
    }
}
