//! Where everything lives inside one output section.
//!
//! ivshmem-net gives each peer one output section of `S` bytes. The section
//! starts with a legacy split virtqueue ("vring", 64-byte aligned) followed
//! by a data area used as a byte FIFO of frame slots:
//!
//! ```text
//! 0                      desc[qlen]          16 B each: addr u64, len u32, flags u16, next u16
//! 16*qlen                avail.flags u16, avail.idx u16, avail.ring[qlen] u16, used_event u16
//! align64(…)             used.flags u16, used.idx u16, used.ring[qlen] {id u32, len u32}, avail_event u16
//! ring_header_size       data area (data_size bytes) — the owner's TX frame slots
//! S
//! ```
//!
//! The queue length and the header size come from `S` with the formula of
//! Jailhouse's `ivshm_net_calc_qsize`: start at 4096 entries and halve while
//! the 64-aligned vring size is not below `S / 8`, stopping at 32. If no
//! length satisfies the condition (sections below ~14 KiB), the loop ends
//! with `qlen = 32` but keeps the size computed for 64 entries; both peers
//! must replicate that quirk, because each interprets the other's section
//! with its own computation.
//!
//! Who writes what: the descriptors, the avail ring and `used_event` of a
//! section belong to the owner's **TX** queue; the used ring and
//! `avail_event` of the same section belong to the owner's **RX** queue (the
//! peer's TX). So every peer writes only its own section.

use core::fmt;

/// Alignment of the vring and of its used ring (`IVSHM_NET_VQ_ALIGN`).
pub const VRING_ALIGN: usize = 64;
/// Bytes per frame-slot header allowance (`IVSHM_NET_FRAME_SIZE`: 14-byte
/// Ethernet header + 4-byte VLAN tag).
pub const FRAME_HEADROOM: usize = 18;
/// Cache-line size the TX slots are rounded to. Only the sender interprets
/// its own slot rounding, so this need not match the peer's.
pub const SLOT_ALIGN: usize = 64;
/// Smallest MTU ivshmem-net accepts (`ETH_MIN_MTU`).
pub const MIN_MTU: usize = 68;
/// Largest MTU ivshmem-net accepts (`ETH_MAX_MTU`).
pub const MAX_MTU: usize = 65535;
/// Default MTU of ivshmem-net (`IVSHM_NET_MTU_DEF`).
pub const DEFAULT_MTU: usize = 16384;
/// Largest queue length the formula produces.
pub const MAX_QUEUE_LEN: usize = 4096;
/// Bytes of the extension block ([`Geometry::extension_offset`]).
pub const EXTENSION_LEN: usize = 16;

/// Size of a descriptor.
const DESC_SIZE: usize = 16;
/// Size of a used-ring element.
const USED_ELEM_SIZE: usize = 8;

const fn align_up(value: usize, align: usize) -> usize {
    (value + align - 1) & !(align - 1)
}

/// `vring_size(num, align)` of Linux's `virtio_ring.h`.
const fn vring_size(num: usize, align: usize) -> usize {
    align_up(DESC_SIZE * num + 2 * (3 + num), align) + 2 * 3 + USED_ELEM_SIZE * num
}

/// Slot size a frame of `len` bytes occupies in the data area
/// (`IVSHM_NET_FRAME_SIZE`).
pub const fn frame_slot_size(len: usize) -> usize {
    align_up(FRAME_HEADROOM + len, SLOT_ALIGN)
}

/// Layout of one output section, identical on both peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Output-section size in bytes.
    pub section_size: usize,
    /// Entries per queue (a power of two, 32..=4096).
    pub queue_len: u16,
    /// Size of the vring header (`vrsize`): offset of the data area.
    pub ring_header_size: usize,
    /// Size of the data area (`qsize`).
    pub data_size: usize,
    /// Offset of the avail ring (`avail.flags`).
    pub avail_offset: usize,
    /// Offset of the used ring (`used.flags`).
    pub used_offset: usize,
}

/// Why a section size cannot carry an ivshmem-net link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// The vring header does not fit into the section.
    SectionTooSmall {
        /// Section size.
        section_size: usize,
        /// Header size the formula asks for.
        ring_header_size: usize,
    },
    /// The data area is smaller than four minimum-MTU frames.
    DataAreaTooSmall {
        /// Data area size.
        data_size: usize,
    },
    /// The section is larger than the 32-bit descriptor lengths can address.
    SectionTooLarge(usize),
    /// The MTU is outside 68..=65535 or larger than the data area allows
    /// (`data_size / 4`, the driver's `max_mtu`).
    MtuOutOfRange {
        /// Requested MTU.
        mtu: usize,
        /// Largest MTU this section allows.
        max: usize,
    },
    /// The section pointer is not 64-byte aligned.
    Misaligned,
    /// The two output sections differ in length (the specification makes
    /// them equal; each peer interprets the other's with its own layout).
    UnequalSections {
        /// Length of the own output section.
        own: usize,
        /// Length of the peer's output section.
        peer: usize,
    },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GeometryError::SectionTooSmall {
                section_size,
                ring_header_size,
            } => write!(
                f,
                "output section of {section_size:#x} bytes cannot hold the {ring_header_size:#x}-byte ring header"
            ),
            GeometryError::DataAreaTooSmall { data_size } => write!(
                f,
                "data area of {data_size} bytes is smaller than four minimum-MTU frames ({})",
                4 * MIN_MTU
            ),
            GeometryError::SectionTooLarge(size) => {
                write!(f, "output section of {size:#x} bytes exceeds 4 GiB")
            }
            GeometryError::MtuOutOfRange { mtu, max } => {
                write!(
                    f,
                    "MTU {mtu} is outside {MIN_MTU}..={max} for this section size"
                )
            }
            GeometryError::Misaligned => f.write_str("section base is not 64-byte aligned"),
            GeometryError::UnequalSections { own, peer } => write!(
                f,
                "output sections differ in size: own {own:#x}, peer {peer:#x} bytes"
            ),
        }
    }
}

impl core::error::Error for GeometryError {}

impl Geometry {
    /// Computes the geometry exactly as `ivshm_net_calc_qsize` does.
    pub const fn for_section(section_size: usize) -> Result<Geometry, GeometryError> {
        if section_size > u32::MAX as usize {
            return Err(GeometryError::SectionTooLarge(section_size));
        }
        let mut queue_len = MAX_QUEUE_LEN;
        let mut ring_header_size = 0;
        while queue_len > 32 {
            ring_header_size = align_up(vring_size(queue_len, VRING_ALIGN), VRING_ALIGN);
            if ring_header_size < section_size / 8 {
                break;
            }
            queue_len >>= 1;
        }
        // The quirk: falling out of the loop leaves queue_len at 32 with the
        // header size of 64 entries.
        if ring_header_size > section_size {
            return Err(GeometryError::SectionTooSmall {
                section_size,
                ring_header_size,
            });
        }
        let data_size = section_size - ring_header_size;
        if data_size < 4 * MIN_MTU {
            return Err(GeometryError::DataAreaTooSmall { data_size });
        }
        let avail_offset = DESC_SIZE * queue_len;
        let used_offset = align_up(avail_offset + 4 + 2 * queue_len + 2, VRING_ALIGN);
        Ok(Geometry {
            section_size,
            queue_len: queue_len as u16,
            ring_header_size,
            data_size,
            avail_offset,
            used_offset,
        })
    }

    /// Largest MTU the driver allows for this section (`qsize / 4`, capped
    /// at 65535).
    pub const fn max_mtu(&self) -> usize {
        let max = self.data_size / 4;
        if max > MAX_MTU { MAX_MTU } else { max }
    }

    /// Default MTU for this section (`min(16384, qsize / 16)`).
    pub const fn default_mtu(&self) -> usize {
        let mtu = self.data_size / 16;
        if mtu > DEFAULT_MTU { DEFAULT_MTU } else { mtu }
    }

    /// Checks an MTU against this section.
    pub const fn check_mtu(&self, mtu: usize) -> Result<(), GeometryError> {
        if mtu < MIN_MTU || mtu > self.max_mtu() {
            return Err(GeometryError::MtuOutOfRange {
                mtu,
                max: self.max_mtu(),
            });
        }
        Ok(())
    }

    /// Mask that turns a free-running ring index into a slot number.
    pub const fn index_mask(&self) -> u16 {
        self.queue_len - 1
    }

    /// Offset of descriptor `id`.
    pub const fn desc_offset(&self, id: u16) -> usize {
        DESC_SIZE * id as usize
    }

    /// Offset of `avail.idx`.
    pub const fn avail_idx_offset(&self) -> usize {
        self.avail_offset + 2
    }

    /// Offset of `avail.ring[slot]`.
    pub const fn avail_ring_offset(&self, slot: u16) -> usize {
        self.avail_offset + 4 + 2 * slot as usize
    }

    /// Offset of `used_event` (after the avail ring).
    pub const fn used_event_offset(&self) -> usize {
        self.avail_ring_offset(self.queue_len)
    }

    /// Offset of `used.idx`.
    pub const fn used_idx_offset(&self) -> usize {
        self.used_offset + 2
    }

    /// Offset of `used.ring[slot]` (`id` at +0, `len` at +4).
    pub const fn used_elem_offset(&self, slot: u16) -> usize {
        self.used_offset + 4 + USED_ELEM_SIZE * slot as usize
    }

    /// Offset of `avail_event` (after the used ring).
    pub const fn avail_event_offset(&self) -> usize {
        self.used_elem_offset(self.queue_len)
    }

    /// Offset of the data area.
    pub const fn data_offset(&self) -> usize {
        self.ring_header_size
    }

    /// Offset of the [`EXTENSION_LEN`]-byte extension block: the last 16
    /// bytes of the alignment padding between `used_event` and
    /// `used.flags`. The reference layout pads `18 * qlen + 6` bytes of
    /// avail ring up to 64, which leaves 58 unused bytes for every queue
    /// length the formula yields (32..=4096, quirk included). No reference
    /// driver reads or writes them except when zeroing its own section on
    /// INIT→READY, so a peer that does not know the block sees all zeroes
    /// in ours, and ours reads as zero in a plain peer's section. The ring
    /// carries the block; it does not interpret it.
    pub const fn extension_offset(&self) -> usize {
        self.used_offset - EXTENSION_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden table: qlen / ring header / data area as Jailhouse's
    /// ivshmem-net computes them.
    #[test]
    fn golden_geometry() {
        let golden: [(usize, u16, usize, usize); 7] = [
            (0x7f000, 2048, 0xd080, 0x71f80),
            (0x3f000, 1024, 0x6880, 0x38780),
            (0x1f000, 512, 0x3480, 0x1bb80),
            (0xf000, 256, 0x1a80, 0xd580),
            (0x4000, 64, 0x700, 0x3900),
            (0x3000, 32, 0x700, 0x2900),
            (0x2000, 32, 0x700, 0x1900),
        ];
        for (section, qlen, header, data) in golden {
            let g = Geometry::for_section(section).unwrap();
            assert_eq!(
                (g.queue_len, g.ring_header_size, g.data_size),
                (qlen, header, data),
                "section {section:#x}"
            );
        }
    }

    /// Offsets inside a Jailhouse net section (reference §2.3).
    #[test]
    fn net_section_offsets() {
        let g = Geometry::for_section(0x7f000).unwrap();
        assert_eq!(g.desc_offset(0), 0);
        assert_eq!(g.avail_offset, 0x8000);
        assert_eq!(g.avail_idx_offset(), 0x8002);
        assert_eq!(g.avail_ring_offset(0), 0x8004);
        assert_eq!(g.used_event_offset(), 0x9004);
        assert_eq!(g.used_offset, 0x9040);
        assert_eq!(g.used_idx_offset(), 0x9042);
        assert_eq!(g.used_elem_offset(0), 0x9044);
        assert_eq!(g.avail_event_offset(), 0xd044);
        assert_eq!(g.data_offset(), 0xd080);
        assert_eq!(g.default_mtu(), 16384);
        assert_eq!(g.max_mtu(), 65535);
    }

    /// The extension block lies in the padding after `used_event`, before
    /// `used.flags`, for every queue length (quirk included).
    #[test]
    fn extension_block_is_in_the_padding() {
        for section in [
            0x2000, 0x4000, 0xf000, 0x3f000, 0x7f000, 0x10_0000, 0x400_0000,
        ] {
            let g = Geometry::for_section(section).unwrap();
            assert!(
                g.extension_offset() >= g.used_event_offset() + 2,
                "{section:#x}"
            );
            assert_eq!(
                g.extension_offset() + EXTENSION_LEN,
                g.used_offset,
                "{section:#x}"
            );
            assert_eq!(g.extension_offset() % 8, 0);
        }
    }

    /// The quirk layout still keeps every field inside the header.
    #[test]
    fn quirk_layout_fits() {
        let g = Geometry::for_section(0x2000).unwrap();
        assert!(g.avail_event_offset() + 2 <= g.ring_header_size);
    }

    #[test]
    fn default_and_max_mtu_match_reference() {
        for (section, default, max) in [
            (0x3f000, 14456, 57824),
            (0x1f000, 7096, 28384),
            (0xf000, 3416, 13664),
        ] {
            let g = Geometry::for_section(section).unwrap();
            assert_eq!(
                (g.default_mtu(), g.max_mtu()),
                (default, max),
                "section {section:#x}"
            );
        }
    }

    #[test]
    fn rejects_tiny_sections() {
        assert!(matches!(
            Geometry::for_section(0x700),
            Err(GeometryError::DataAreaTooSmall { .. })
        ));
        assert!(matches!(
            Geometry::for_section(0x100),
            Err(GeometryError::SectionTooSmall { .. })
        ));
        assert!(matches!(
            Geometry::for_section(0x1_0000_0000),
            Err(GeometryError::SectionTooLarge(_))
        ));
    }

    #[test]
    fn every_field_fits_for_all_page_multiples() {
        for pages in 1..512usize {
            let section = pages * 0x1000;
            if let Ok(g) = Geometry::for_section(section) {
                assert!(
                    g.avail_event_offset() + 2 <= g.ring_header_size,
                    "{section:#x}"
                );
                assert!(g.used_event_offset() + 2 <= g.used_offset, "{section:#x}");
                assert_eq!(g.ring_header_size + g.data_size, section);
                assert!(g.queue_len.is_power_of_two());
            }
        }
    }
}
