//! The offload extension: a virtio-net header per frame and GSO
//! super-frames between two ivnet peers, negotiated through the ring's
//! extension block, invisible to peers that do not know it.
//!
//! ## Wire format (version 1)
//!
//! Advertisement: the 16-byte extension block of each output section (the
//! last 16 bytes of the padding between `used_event` and `used.flags`,
//! [`ivnet_ring::Geometry::extension_offset`]), little-endian:
//!
//! | offset | field | value |
//! |---:|---|---|
//! | 0 | magic u32 | `0x584e5649` ("IVNX") |
//! | 4 | version u16 | 1 |
//! | 6 | header length u16 | 10 (`struct virtio_net_hdr`) |
//! | 8 | features u32 | [`Features`] bits this side can send and receive |
//! | 12 | max frame u32 | largest frame it accepts, header included |
//!
//! A peer writes the block right after zeroing its section on INIT→READY
//! and before publishing READY; the other side reads it once when its own
//! link enters RUN (the peer is then READY or RUN). Every reference peer
//! (Linux ivshmem-net, Zephyr, NuttX, older ivnet, ivnet's guest) zeroes
//! its section there too and never writes the padding, so it reads as
//! zeroes: no advertisement.
//!
//! Negotiated = both blocks valid (magic, version 1, header length 10),
//! features = the intersection, which must contain `CSUM`; max frame = the
//! smaller one. Anything else — a zero block, an unknown magic, another
//! version or header length, no common `CSUM` — is the plain reference
//! protocol 0x0001 in both directions, and each side decides that alone
//! from the same two blocks, so both agree. Then every frame starts with a
//! 10-byte virtio-net header (flags, gso_type, hdr_len, gso_size,
//! csum_start, csum_offset, little-endian; `csum_start` counts from the
//! Ethernet header), followed by the Ethernet frame; a frame without GSO is
//! at most MTU + 18 bytes after the header, a GSO frame at most the
//! negotiated max frame in all.

use crate::cli::OffloadMode;

/// "IVNX", little-endian.
pub const MAGIC: u32 = 0x584e_5649;
/// Extension version.
pub const VERSION: u16 = 1;
/// Length of the per-frame header (`struct virtio_net_hdr`).
pub const HDR_LEN: usize = 10;
/// Largest super-frame (header excluded): a 64 KiB GSO packet with its
/// Ethernet header and a VLAN tag.
pub const MAX_SUPER_FRAME: usize = 65536 + 18;

// virtio-net header values (virtio 1.x, the layout TAP's IFF_VNET_HDR uses).
const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

bitflags::bitflags! {
    /// Offloads a side can carry (bits of the advertisement).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u32 {
        /// Partial checksums (`NEEDS_CSUM`).
        const CSUM = 1 << 0;
        /// TCP segmentation, IPv4.
        const TSO4 = 1 << 1;
        /// TCP segmentation, IPv6.
        const TSO6 = 1 << 2;
        /// TCP segmentation with ECN (CWR) set.
        const TSO_ECN = 1 << 3;
        /// UDP segmentation (`GSO_UDP_L4`).
        const USO = 1 << 4;
    }
}

impl Features {
    /// The TAP's `TUNSETOFFLOAD` flags for these features.
    pub fn tun_flags(self) -> u32 {
        const TUN_F_CSUM: u32 = 0x01;
        const TUN_F_TSO4: u32 = 0x02;
        const TUN_F_TSO6: u32 = 0x04;
        const TUN_F_TSO_ECN: u32 = 0x08;
        const TUN_F_USO4: u32 = 0x20;
        const TUN_F_USO6: u32 = 0x40;
        if !self.contains(Features::CSUM) {
            return 0;
        }
        let mut f = TUN_F_CSUM;
        for (feature, flag) in [
            (Features::TSO4, TUN_F_TSO4),
            (Features::TSO6, TUN_F_TSO6),
            (Features::TSO_ECN, TUN_F_TSO_ECN),
            (Features::USO, TUN_F_USO4 | TUN_F_USO6),
        ] {
            if self.contains(feature) {
                f |= flag;
            }
        }
        f
    }
}

/// One side's advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Offloads offered.
    pub features: Features,
    /// Largest frame accepted, header included.
    pub max_frame: u32,
}

impl Advert {
    /// The 16-byte block.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(HDR_LEN as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.features.bits().to_le_bytes());
        b[12..16].copy_from_slice(&self.max_frame.to_le_bytes());
        b
    }

    /// Parses a block; `None` for anything but a valid version-1 block
    /// (zeroes included).
    pub fn decode(b: &[u8; 16]) -> Option<Advert> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u32_at(0) != MAGIC || u16_at(4) != VERSION || usize::from(u16_at(6)) != HDR_LEN {
            return None;
        }
        Some(Advert {
            features: Features::from_bits_truncate(u32_at(8)),
            max_frame: u32_at(12),
        })
    }
}

/// What a link carries after negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Common offloads (contains `CSUM`).
    pub features: Features,
    /// Largest frame either way, header included.
    pub max_frame: usize,
}

/// The negotiation rule: both valid, common `CSUM`, the smaller max frame
/// (at least an MTU-sized frame plus header, else plain).
pub fn negotiate(own: Option<Advert>, peer: &[u8; 16], mtu_frame: usize) -> Option<Negotiated> {
    let own = own?;
    let peer = Advert::decode(peer)?;
    let features = own.features & peer.features;
    let max_frame = own.max_frame.min(peer.max_frame) as usize;
    if !features.contains(Features::CSUM) || max_frame < HDR_LEN + mtu_frame {
        return None;
    }
    Some(Negotiated {
        features,
        max_frame,
    })
}

/// What this side advertises for `mode`, its TAP's features and the
/// ring's largest admissible frame (`data area / 4`).
pub fn own_advert(mode: OffloadMode, tap: Features, ring_max: usize) -> Option<Advert> {
    if mode == OffloadMode::Off || !tap.contains(Features::CSUM) {
        return None;
    }
    let max_frame = (HDR_LEN + MAX_SUPER_FRAME).min(ring_max);
    let mut features = tap;
    if max_frame < HDR_LEN + MAX_SUPER_FRAME {
        // Super-frames would not fit the data area: checksums only.
        features &= Features::CSUM;
    }
    Some(Advert {
        features,
        max_frame: max_frame as u32,
    })
}

/// Kind of a frame, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No offload.
    Plain,
    /// Partial checksum only.
    Csum,
    /// TCP/IPv4 super-frame.
    Tso4,
    /// TCP/IPv6 super-frame.
    Tso6,
    /// UDP super-frame.
    Uso,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    /// Unknown flag bits.
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    /// GSO type unknown or not negotiated.
    #[error("GSO type {0:#x} not negotiated")]
    GsoType(u8),
    /// GSO without a partial checksum, or with gso_size 0.
    #[error("GSO frame without gso_size or NEEDS_CSUM")]
    GsoShape,
    /// Checksum start/offset outside the frame.
    #[error("checksum at {start}+{offset} outside a {len}-byte frame")]
    CsumRange {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// Frame length (header excluded).
        len: usize,
    },
    /// Longer than allowed for its kind.
    #[error("{len}-byte frame longer than {max}")]
    TooLong {
        /// Frame length (header excluded).
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Shorter than an Ethernet header.
    #[error("{0}-byte frame shorter than an Ethernet header")]
    TooShort(usize),
}

/// Validates a header (copied once out of the frame) for a frame of
/// `len` bytes after the header, against what was negotiated (`None`:
/// plain link, only headers without offload pass) and the link's
/// MTU-sized frame. A header that passes is one the kernel accepts.
pub fn check_header(
    hdr: &[u8; HDR_LEN],
    len: usize,
    negotiated: Option<&Negotiated>,
    mtu_frame: usize,
) -> Result<Kind, HdrError> {
    let flags = hdr[0];
    let gso = hdr[1];
    let hdr_len = u16::from_le_bytes([hdr[2], hdr[3]]);
    let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
    let csum_start = u16::from_le_bytes([hdr[6], hdr[7]]);
    let csum_offset = u16::from_le_bytes([hdr[8], hdr[9]]);
    let features = negotiated.map_or(Features::empty(), |n| n.features);
    if len < 14 {
        return Err(HdrError::TooShort(len));
    }
    if usize::from(hdr_len) > len {
        return Err(HdrError::TooLong {
            len: usize::from(hdr_len),
            max: len,
        });
    }
    if flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0
        || (flags & F_NEEDS_CSUM != 0 && !features.contains(Features::CSUM))
    {
        return Err(HdrError::Flags(flags));
    }
    if flags & F_NEEDS_CSUM != 0 && usize::from(csum_start) + usize::from(csum_offset) + 2 > len {
        return Err(HdrError::CsumRange {
            start: csum_start,
            offset: csum_offset,
            len,
        });
    }
    let ecn = gso & GSO_ECN != 0;
    let kind = match gso & !GSO_ECN {
        GSO_NONE if !ecn => Kind::Plain,
        GSO_TCPV4 if features.contains(Features::TSO4) => Kind::Tso4,
        GSO_TCPV6 if features.contains(Features::TSO6) => Kind::Tso6,
        GSO_UDP_L4 if !ecn && features.contains(Features::USO) => Kind::Uso,
        _ => return Err(HdrError::GsoType(gso)),
    };
    if ecn && !features.contains(Features::TSO_ECN) {
        return Err(HdrError::GsoType(gso));
    }
    if kind == Kind::Plain {
        if len > mtu_frame {
            return Err(HdrError::TooLong {
                len,
                max: mtu_frame,
            });
        }
        return Ok(if flags & F_NEEDS_CSUM != 0 {
            Kind::Csum
        } else {
            Kind::Plain
        });
    }
    if gso_size == 0 || flags & F_NEEDS_CSUM == 0 {
        return Err(HdrError::GsoShape);
    }
    let max = negotiated.map_or(0, |n| n.max_frame - HDR_LEN);
    if len > max {
        return Err(HdrError::TooLong { len, max });
    }
    Ok(kind)
}

/// Offload counters (frames by kind and direction).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct OffloadCounters {
    /// TAP → peer, partial checksum only.
    pub tx_csum: u64,
    /// TAP → peer, TCP/IPv4 super-frames.
    pub tx_tso4: u64,
    /// TAP → peer, TCP/IPv6 super-frames.
    pub tx_tso6: u64,
    /// TAP → peer, UDP super-frames.
    pub tx_uso: u64,
    /// Peer → TAP, partial checksum only.
    pub rx_csum: u64,
    /// Peer → TAP, TCP/IPv4 super-frames.
    pub rx_tso4: u64,
    /// Peer → TAP, TCP/IPv6 super-frames.
    pub rx_tso6: u64,
    /// Peer → TAP, UDP super-frames.
    pub rx_uso: u64,
    /// Frames from the peer with a header the bridge refused (dropped).
    pub drop_bad_header: u64,
    /// Frames from the TAP with an offload the link did not negotiate
    /// (left from before a renegotiation; dropped).
    pub drop_unnegotiated: u64,
    /// Links that came up with offloads negotiated.
    pub negotiated_links: u64,
    /// Links that came up plain.
    pub plain_links: u64,
}

impl OffloadCounters {
    /// Counts a frame of `kind`; `tx`: TAP → peer.
    pub fn count(&mut self, kind: Kind, tx: bool) {
        let c = match (kind, tx) {
            (Kind::Plain, _) => return,
            (Kind::Csum, true) => &mut self.tx_csum,
            (Kind::Tso4, true) => &mut self.tx_tso4,
            (Kind::Tso6, true) => &mut self.tx_tso6,
            (Kind::Uso, true) => &mut self.tx_uso,
            (Kind::Csum, false) => &mut self.rx_csum,
            (Kind::Tso4, false) => &mut self.rx_tso4,
            (Kind::Tso6, false) => &mut self.rx_tso6,
            (Kind::Uso, false) => &mut self.rx_uso,
        };
        *c += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU_FRAME: usize = 1518;

    fn full() -> Negotiated {
        Negotiated {
            features: Features::all(),
            max_frame: HDR_LEN + MAX_SUPER_FRAME,
        }
    }

    fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, off: u16) -> [u8; HDR_LEN] {
        let mut h = [0; HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&off.to_le_bytes());
        h
    }

    #[test]
    fn negotiation_rule() {
        let a = own_advert(OffloadMode::Auto, Features::all(), 1 << 20).unwrap();
        let b = Advert {
            features: Features::CSUM | Features::TSO4,
            max_frame: 30000,
        };
        let n = negotiate(Some(a), &b.encode(), MTU_FRAME).unwrap();
        assert_eq!(n.features, Features::CSUM | Features::TSO4);
        assert_eq!(n.max_frame, 30000);
        // Zeroes (a plain peer), garbage, other versions, off: plain.
        assert_eq!(negotiate(Some(a), &[0; 16], MTU_FRAME), None);
        assert_eq!(negotiate(Some(a), &[0xa5; 16], MTU_FRAME), None);
        let mut v2 = a.encode();
        v2[4] = 2;
        assert_eq!(negotiate(Some(a), &v2, MTU_FRAME), None);
        assert_eq!(negotiate(None, &a.encode(), MTU_FRAME), None);
        assert_eq!(own_advert(OffloadMode::Off, Features::all(), 1 << 20), None);
        let no_csum = Advert {
            features: Features::TSO4,
            max_frame: 70000,
        };
        assert_eq!(negotiate(Some(a), &no_csum.encode(), MTU_FRAME), None);
        // A small data area: checksums only.
        let small = own_advert(OffloadMode::Auto, Features::all(), 20000).unwrap();
        assert_eq!(small.features, Features::CSUM);
        assert_eq!(Advert::decode(&small.encode()), Some(small));
    }

    #[test]
    fn header_checks() {
        let n = full();
        let ok = |h, len| check_header(&h, len, Some(&n), MTU_FRAME);
        assert_eq!(ok(hdr(0, 0, 0, 0, 0), 60), Ok(Kind::Plain));
        assert_eq!(ok(hdr(1, 0, 0, 34, 16), 100), Ok(Kind::Csum));
        assert_eq!(ok(hdr(1, 1, 1448, 34, 16), 60000), Ok(Kind::Tso4));
        assert_eq!(ok(hdr(1, 0x81, 1448, 34, 16), 60000), Ok(Kind::Tso4));
        assert_eq!(ok(hdr(1, 4, 1428, 54, 16), 60000), Ok(Kind::Tso6));
        assert_eq!(ok(hdr(1, 5, 1472, 34, 6), 60000), Ok(Kind::Uso));
        assert_eq!(ok(hdr(1, 3, 1472, 34, 6), 6000), Err(HdrError::GsoType(3)));
        assert_eq!(ok(hdr(1, 1, 0, 34, 16), 6000), Err(HdrError::GsoShape));
        assert_eq!(ok(hdr(0, 1, 1448, 34, 16), 6000), Err(HdrError::GsoShape));
        assert!(matches!(
            ok(hdr(1, 0, 0, 90, 16), 100),
            Err(HdrError::CsumRange { .. })
        ));
        assert!(matches!(
            ok(hdr(0, 0, 0, 0, 0), 1519),
            Err(HdrError::TooLong { .. })
        ));
        assert!(matches!(
            ok(hdr(1, 1, 1448, 34, 16), MAX_SUPER_FRAME + 1),
            Err(HdrError::TooLong { .. })
        ));
        assert_eq!(ok(hdr(4, 0, 0, 0, 0), 60), Err(HdrError::Flags(4)));
        assert_eq!(ok(hdr(0, 0, 0, 0, 0), 10), Err(HdrError::TooShort(10)));
        // Not negotiated: only plain headers pass.
        let plain = |h, len| check_header(&h, len, None, MTU_FRAME);
        assert_eq!(plain(hdr(2, 0, 0, 0, 0), 60), Ok(Kind::Plain));
        assert_eq!(plain(hdr(1, 0, 0, 34, 16), 100), Err(HdrError::Flags(1)));
        assert_eq!(plain(hdr(0, 1, 1448, 0, 0), 100), Err(HdrError::GsoType(1)));
        let csum_only = Negotiated {
            features: Features::CSUM,
            max_frame: 20000,
        };
        assert_eq!(
            check_header(&hdr(1, 1, 1448, 34, 16), 6000, Some(&csum_only), MTU_FRAME),
            Err(HdrError::GsoType(1))
        );
    }
}
