//! The pure half of the main loop's fragment guard (`net.rs`,
//! `FragmentGuard`): what to do with each Ethernet frame smoltcp writes so
//! that its IPv4 fragmentation stays correct. Two smoltcp 0.14 defects:
//!
//! 1. **One fragmentation buffer, no busy check.** smoltcp sends the first
//!    fragment of a large packet at once and the rest one per
//!    `poll_egress`, but starts the next large packet in the same buffer
//!    without waiting: a second large packet in the same round cuts the
//!    first one short. The guard marks fragments as pending from a frame
//!    with More Fragments set until the last fragment (MF clear), and the
//!    binary gives smoltcp no receive token and only one transmit token per
//!    `poll_egress` (the pending fragment's) meanwhile.
//! 2. **Wrong ICMP checksums.** smoltcp computes the checksum of a
//!    fragmented ICMP packet over the whole 16 KiB fragmentation buffer, so
//!    after a longer fragmented packet the stale bytes beyond the packet
//!    spoil it and the peer drops the packet. The guard holds the first
//!    fragment of every fragmented ICMP packet back (the only one with the
//!    ICMP header), sums the ICMP bytes of all fragments as they go out,
//!    and once the last one is out sends the held first fragment with the
//!    checksum of exactly those bytes. Reassembly takes fragments in any
//!    order.
//!
//! Frames are read with bounds-checked accesses only: whatever smoltcp
//! wrote, the guard never indexes out of range.

/// Ethernet header (no VLAN tag) in front of the IPv4 header.
pub const ETHERNET_HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_ICMP: u8 = 1;
/// IPv4 flags: More Fragments.
const MF: u16 = 0x2000;
/// Offset of the ICMP checksum in the ICMP header.
const ICMP_CHECKSUM: usize = 2;

/// What to do with a frame smoltcp wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Send,
    /// Keep it (the caller copies it aside and sends it when
    /// [`GuardState::release`] says so).
    Hold,
}

/// The IPv4 fields the guard needs.
struct Ipv4<'a> {
    ident: u16,
    more_fragments: bool,
    offset: usize,
    protocol: u8,
    header_len: usize,
    payload: &'a [u8],
}

fn parse(frame: &[u8]) -> Option<Ipv4<'_>> {
    if frame.get(12..14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let flags = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    Some(Ipv4 {
        ident: u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]),
        more_fragments: flags & MF != 0,
        offset: usize::from(flags & 0x1fff) * 8,
        protocol: *ip.get(9)?,
        header_len,
        payload: ip.get(header_len..total_len)?,
    })
}

/// The 16-bit ones'-complement sum of `data` (big-endian words, an odd
/// last byte padded with zero), not yet folded.
fn ones_sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum()
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A fragmented ICMP packet whose first fragment is held.
#[derive(Clone, Copy, Debug)]
struct Repair {
    ident: u16,
    /// Sum of the ICMP bytes seen so far (the checksum field as zero).
    sum: u64,
    /// The held first fragment's frame length.
    held_len: usize,
    /// Its IPv4 header length (where the ICMP header starts).
    header_len: usize,
    /// The last fragment is out: the held one may go.
    complete: bool,
}

/// The guard's state: whether fragments are pending, and the ICMP packet
/// being repaired.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuardState {
    more_fragments: bool,
    repair: Option<Repair>,
    /// Fragmented ICMP packets whose first fragment was sent unrepaired
    /// (no room to hold it).
    unrepaired: u64,
}

impl GuardState {
    /// No fragments pending.
    pub const fn new() -> Self {
        GuardState {
            more_fragments: false,
            repair: None,
            unrepaired: 0,
        }
    }

    /// Whether smoltcp still has fragments to send or a held first
    /// fragment waits: no receiving, no other packets.
    pub fn pending(&self) -> bool {
        self.more_fragments || self.repair.is_some()
    }

    /// Whether a complete repair waits for [`GuardState::release`]: no
    /// transmit token for smoltcp before it is sent.
    pub fn held_complete(&self) -> bool {
        self.repair.is_some_and(|r| r.complete)
    }

    /// Fragmented ICMP packets sent with smoltcp's checksum because a held
    /// one was still waiting.
    pub fn unrepaired(&self) -> u64 {
        self.unrepaired
    }

    /// Notes a frame smoltcp wrote. `can_hold`: the frame is in a buffer
    /// the caller can keep (otherwise it is sent whatever it is).
    pub fn track(&mut self, frame: &[u8], can_hold: bool) -> Verdict {
        let Some(ip) = parse(frame) else {
            return Verdict::Send;
        };
        self.more_fragments = ip.more_fragments;
        let fragment = ip.more_fragments || ip.offset != 0;
        if !fragment || ip.protocol != PROTO_ICMP {
            return Verdict::Send;
        }
        if ip.offset == 0 {
            // A complete repair still waiting is never overwritten (the
            // binary sends it before it hands out tokens; this is the
            // fallback): the new packet goes with smoltcp's checksum.
            if !can_hold || self.held_complete() {
                self.unrepaired += 1;
                return Verdict::Send;
            }
            // An unfinished repair of an earlier packet is abandoned (its
            // remaining fragments never came, e.g. the link went down).
            let sum = ones_sum(ip.payload)
                - ip.payload
                    .get(ICMP_CHECKSUM..ICMP_CHECKSUM + 2)
                    .map_or(0, |c| u64::from(u16::from_be_bytes([c[0], c[1]])));
            self.repair = Some(Repair {
                ident: ip.ident,
                sum,
                held_len: frame.len(),
                header_len: ip.header_len,
                complete: !ip.more_fragments,
            });
            return Verdict::Hold;
        }
        if let Some(r) = &mut self.repair
            && r.ident == ip.ident
            && !r.complete
        {
            r.sum += ones_sum(ip.payload);
            r.complete = !ip.more_fragments;
        }
        Verdict::Send
    }

    /// If the held first fragment may go: writes the checksum of the whole
    /// ICMP packet into `held` (the copy the caller kept) and returns its
    /// length. Call [`GuardState::released`] once it is sent.
    pub fn release(&self, held: &mut [u8]) -> Option<usize> {
        let r = self.repair.filter(|r| r.complete)?;
        let at = ETHERNET_HEADER + r.header_len + ICMP_CHECKSUM;
        let field = held.get_mut(at..at + 2)?;
        field.copy_from_slice(&(!fold(r.sum)).to_be_bytes());
        Some(r.held_len.min(held.len()))
    }

    /// The released first fragment is sent.
    pub fn released(&mut self) {
        self.repair = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ICMP checksum of `icmp` is right.
    fn checksum_ok(icmp: &[u8]) -> bool {
        fold(ones_sum(icmp)) == 0xffff
    }

    fn icmp_echo(len: usize, seq: u8) -> Vec<u8> {
        let mut m = vec![8, 0, 0, 0, 0, 1, 0, seq];
        m.extend((0..len).map(|i| (i * 7) as u8 ^ seq));
        let c = !fold(ones_sum(&m));
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    /// The frames smoltcp sends for `payload` (protocol `proto`) at IP MTU
    /// `mtu`, with `spoil` added to the first fragment's bytes 2..4 (the
    /// ICMP checksum) as smoltcp's stale-buffer sum does.
    fn fragments(payload: &[u8], proto: u8, ident: u16, mtu: usize, spoil: u16) -> Vec<Vec<u8>> {
        let step = (mtu - 20) / 8 * 8;
        let mut frames = Vec::new();
        let mut off = 0;
        while off < payload.len() {
            let chunk = &payload[off..(off + step).min(payload.len())];
            let more = off + chunk.len() < payload.len();
            let mut f = vec![0u8; 12];
            f.extend(ETHERTYPE_IPV4);
            let total = (20 + chunk.len()) as u16;
            let flags = (if more { MF } else { 0 }) | (off / 8) as u16;
            f.extend([0x45, 0]);
            f.extend(total.to_be_bytes());
            f.extend(ident.to_be_bytes());
            f.extend(flags.to_be_bytes());
            f.extend([64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            f.extend(chunk);
            if off == 0 && spoil != 0 {
                let at = ETHERNET_HEADER + 20 + 2;
                let c = u16::from_be_bytes([f[at], f[at + 1]]).wrapping_add(spoil);
                f[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            frames.push(f);
            off += chunk.len();
        }
        frames
    }

    /// Runs `frames` through the guard as the binary does; returns the
    /// frames in the order they go out.
    fn run(g: &mut GuardState, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut held = vec![0u8; 16398];
        for f in frames {
            assert!(!g.held_complete(), "a token while a repair waits");
            match g.track(&f, true) {
                Verdict::Send => out.push(f.clone()),
                Verdict::Hold => held[..f.len()].copy_from_slice(&f),
            }
            if let Some(n) = g.release(&mut held) {
                out.push(held[..n].to_vec());
                g.released();
            }
        }
        out
    }

    fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = vec![0u8; 20000];
        let mut end = 0;
        for f in frames {
            let ip = parse(f).unwrap();
            buf[ip.offset..ip.offset + ip.payload.len()].copy_from_slice(ip.payload);
            if !ip.more_fragments {
                end = ip.offset + ip.payload.len();
            }
        }
        buf.truncate(end);
        buf
    }

    #[test]
    fn a_spoiled_icmp_checksum_is_repaired_and_the_first_fragment_goes_last() {
        for (len, mtu) in [(4000, 1500), (4001, 1500), (8000, 576), (2000, 1499)] {
            let msg = icmp_echo(len, 3);
            let mut g = GuardState::new();
            let frames = fragments(&msg, PROTO_ICMP, 77, mtu, 0x1234);
            let n = frames.len();
            assert!(!checksum_ok(&reassemble(&frames)));
            let out = run(&mut g, frames);
            assert_eq!(out.len(), n);
            assert_eq!(parse(out.last().unwrap()).unwrap().offset, 0);
            let back = reassemble(&out);
            assert_eq!(back.len(), msg.len());
            assert!(checksum_ok(&back), "{len} at MTU {mtu}");
            assert_eq!(back, msg);
            assert!(!g.pending());
        }
    }

    #[test]
    fn other_frames_pass_and_udp_fragments_only_mark_pending() {
        let mut g = GuardState::new();
        let udp = vec![0x11u8; 4000];
        let frames = fragments(&udp, 17, 5, 1500, 0);
        assert_eq!(g.track(&frames[0], true), Verdict::Send);
        assert!(g.pending());
        assert_eq!(g.track(&frames[1], true), Verdict::Send);
        assert_eq!(g.track(&frames[2], true), Verdict::Send);
        assert!(!g.pending());
        // Unfragmented ICMP, ARP, runts: sent, nothing pending.
        let small = fragments(&icmp_echo(56, 1), PROTO_ICMP, 6, 1500, 0);
        assert_eq!(small.len(), 1);
        assert_eq!(g.track(&small[0], true), Verdict::Send);
        let mut arp = [0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for f in [&arp[..], &[][..], &small[0][..20], &small[0][..16]] {
            assert_eq!(g.track(f, true), Verdict::Send);
        }
        assert!(!g.pending());
    }

    #[test]
    fn no_room_to_hold_or_a_waiting_repair_sends_unrepaired() {
        let msg = icmp_echo(4000, 9);
        let mut g = GuardState::new();
        let frames = fragments(&msg, PROTO_ICMP, 8, 1500, 0);
        assert_eq!(g.track(&frames[0], false), Verdict::Send);
        assert_eq!(g.unrepaired(), 1);
        // A repair that waits is not overwritten by the next packet's.
        let mut g = GuardState::new();
        for f in &frames {
            g.track(f, true);
        }
        assert!(g.held_complete());
        let next = fragments(&msg, PROTO_ICMP, 9, 1500, 0);
        assert_eq!(g.track(&next[0], true), Verdict::Send);
        assert_eq!(g.unrepaired(), 1);
        let mut held = frames[0].clone();
        assert_eq!(g.release(&mut held), Some(frames[0].len()));
        g.released();
        assert!(!g.held_complete());
    }

    #[test]
    fn an_abandoned_repair_gives_way_to_the_next() {
        let a = fragments(&icmp_echo(4000, 1), PROTO_ICMP, 1, 1500, 0);
        let b = fragments(&icmp_echo(4000, 2), PROTO_ICMP, 2, 1500, 7);
        let mut g = GuardState::new();
        g.track(&a[0], true);
        g.track(&a[1], true);
        // Packet a's last fragment never comes.
        let out = run(&mut g, b.clone());
        assert!(checksum_ok(&reassemble(&out)));
    }
}
