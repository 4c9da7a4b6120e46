//! The echo clients' logic (`ping=` and `udpecho=`, see
//! [`crate::cmdline::EchoClientConfig`]): when a request goes out, what its
//! payload is, what its reply must be, and the counts and round-trip
//! times. A pure state machine; the binary's `net` module moves the
//! packets (a smoltcp ICMP socket for `ping=`, a UDP socket for `udpecho=`,
//! whose datagrams are the payload with the identifier and sequence number
//! in place of its first four bytes, [`UDP_HEADER`]), so the logic is tested
//! on the host.
//!
//! - **One request in flight.** The first goes out once the link is up; a
//!   checked reply sends the next at once, at most [`BURST`] requests per
//!   interval; otherwise one per interval. While the link is down nothing is
//!   sent.
//! - **Loss.** A request unanswered for [`reply_timeout_us`] (the interval,
//!   at least [`MIN_REPLY_TIMEOUT_US`]) is lost, and the next may go; a
//!   reply to it that comes afterwards is counted as late (so is a
//!   duplicate).
//! - **Payloads** alternate [`SMALL_PAYLOAD`] and [`LARGE_PAYLOAD`] bytes
//!   (even and odd sequence numbers): at an IP MTU below 4028 the large
//!   requests and their replies travel as IPv4 fragments (ICMP and UDP
//!   headers are both 8 bytes: both clients' packets are 4028 bytes). The bytes are a
//!   function of the identifier, sequence number and position, so a reply
//!   is checked byte for byte without keeping a copy of the request.

use core::fmt;
use core::net::Ipv4Addr;

use crate::cmdline::EchoClientConfig;

/// Payload of the even-numbered requests (the classic `ping` size).
pub const SMALL_PAYLOAD: usize = 56;
/// Payload of the odd-numbered requests: three frames at MTU 1500.
pub const LARGE_PAYLOAD: usize = 4000;
/// Requests per interval at most (each checked reply sends the next).
pub const BURST: u32 = 8;
/// Shortest time a request waits for its reply before it counts as lost.
pub const MIN_REPLY_TIMEOUT_US: u64 = 1_000_000;
/// IPv4 header (no options) and the ICMP echo or UDP header in front of a
/// payload.
pub const HEADERS: usize = 20 + 8;
/// `udpecho=` datagrams: identifier and sequence number (big-endian) in
/// place of the payload's first bytes.
pub const UDP_HEADER: usize = 4;

/// The payload length of request `seq`.
pub const fn payload_len(seq: u16) -> usize {
    if seq.is_multiple_of(2) {
        SMALL_PAYLOAD
    } else {
        LARGE_PAYLOAD
    }
}

/// Byte `i` of the payload of request `seq` with identifier `ident`: a
/// multiplicative hash, so a byte from another request, another offset or
/// another client does not match by accident.
pub const fn payload_byte(ident: u16, seq: u16, i: usize) -> u8 {
    let x = (i as u32)
        .wrapping_add((seq as u32) << 16)
        .wrapping_mul(0x9e37_79b1)
        ^ (ident as u32).wrapping_mul(0x85eb_ca6b);
    (x >> 24) as u8 ^ (x >> 8) as u8
}

/// Fills `buf` with the payload of request `seq` (its first `buf.len()`
/// bytes).
pub fn fill_payload(ident: u16, seq: u16, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = payload_byte(ident, seq, i);
    }
}

/// Whether `data` is exactly the payload of request `seq`, but for its
/// first `skip` bytes (which carry a header).
pub fn payload_matches(ident: u16, seq: u16, data: &[u8], skip: usize) -> bool {
    data.len() == payload_len(seq)
        && data
            .iter()
            .enumerate()
            .skip(skip)
            .all(|(i, &b)| b == payload_byte(ident, seq, i))
}

/// The request interval in microseconds.
fn interval_us(config: &EchoClientConfig) -> u64 {
    u64::from(config.interval_ms) * 1000
}

/// How long a request waits for its reply (microseconds).
pub fn reply_timeout_us(config: &EchoClientConfig) -> u64 {
    interval_us(config).max(MIN_REPLY_TIMEOUT_US)
}

/// A request to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// ICMP sequence number.
    pub seq: u16,
    /// Payload length ([`payload_len`]).
    pub len: usize,
}

/// What a reply was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The reply to the request in flight, payload exact.
    Answered {
        /// Round-trip time in microseconds.
        rtt_us: u64,
        /// Whether request and reply were larger than one frame.
        fragmented: bool,
    },
    /// A correct reply to a request already counted as lost or answered.
    Late,
    /// A reply with the wrong length or bytes, or to a request never sent.
    Bad,
}

/// The client's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Requests handed to the socket.
    pub sent: u64,
    /// Replies to the request in flight with the exact payload.
    pub received: u64,
    /// Of those, replies to requests larger than one frame.
    pub received_fragmented: u64,
    /// Replies that failed the check.
    pub bad: u64,
    /// Requests unanswered within the timeout.
    pub lost: u64,
    /// Correct replies that came after their request was counted as lost,
    /// or twice.
    pub late: u64,
    /// Smallest round-trip time (µs; 0 before the first reply).
    pub rtt_min_us: u64,
    /// Largest round-trip time (µs).
    pub rtt_max_us: u64,
    /// Sum of the round-trip times (µs), for the average.
    pub rtt_sum_us: u64,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: u16,
    sent_us: u64,
}

/// The client: pacing, checking, counting.
#[derive(Clone, Debug)]
pub struct EchoClient {
    config: EchoClientConfig,
    ident: u16,
    mtu: usize,
    skip: usize,
    in_flight: Option<InFlight>,
    window_start_us: Option<u64>,
    window_sent: u32,
    stats: EchoStats,
}

impl EchoClient {
    /// A client as `config` says, with identifier `ident`, on an
    /// interface with IP MTU `mtu`; the first `skip` bytes of each payload
    /// carry a header and are not checked (0 for ICMP, [`UDP_HEADER`]).
    pub fn new(config: EchoClientConfig, ident: u16, mtu: usize, skip: usize) -> EchoClient {
        EchoClient {
            config,
            ident,
            mtu,
            skip,
            in_flight: None,
            window_start_us: None,
            window_sent: 0,
            stats: EchoStats::default(),
        }
    }

    /// The identifier a guest with address `own` uses: its low 16 bits, so
    /// that two guests pinging each other use different ones.
    pub fn ident_for(own: Ipv4Addr) -> u16 {
        u32::from(own) as u16
    }

    /// The identifier (ICMP echo identifier, or the first two bytes of a
    /// `udpecho=` datagram).
    pub fn ident(&self) -> u16 {
        self.ident
    }

    /// The target address.
    pub fn target(&self) -> Ipv4Addr {
        self.config.target
    }

    /// The counters.
    pub fn stats(&self) -> &EchoStats {
        &self.stats
    }

    /// Whether `count` requests went out and none is in flight any more.
    pub fn done(&self) -> bool {
        self.in_flight.is_none() && self.count_reached()
    }

    fn count_reached(&self) -> bool {
        self.config
            .count
            .is_some_and(|n| self.stats.sent >= u64::from(n))
    }

    /// Counts the request in flight as lost if its time is up; returns its
    /// sequence number then.
    pub fn expire(&mut self, now_us: u64) -> Option<u16> {
        let f = self.in_flight?;
        if now_us.saturating_sub(f.sent_us) < reply_timeout_us(&self.config) {
            return None;
        }
        self.in_flight = None;
        self.stats.lost += 1;
        Some(f.seq)
    }

    fn window_open(&self, now_us: u64) -> bool {
        match self.window_start_us {
            None => true,
            Some(start) => {
                now_us.saturating_sub(start) >= interval_us(&self.config)
                    || self.window_sent < BURST
            }
        }
    }

    /// The request to send now, if any (call [`EchoClient::sent`] once the
    /// socket took it).
    pub fn next_request(&self, now_us: u64, link_up: bool) -> Option<Request> {
        if !link_up || self.in_flight.is_some() || self.count_reached() {
            return None;
        }
        if !self.window_open(now_us) {
            return None;
        }
        // The sequence number wraps; a reply is matched to the request in
        // flight first, so an old reply with a reused number is late at
        // worst.
        let seq = self.stats.sent as u16;
        Some(Request {
            seq,
            len: payload_len(seq),
        })
    }

    /// Records that `request` went out at `now_us`.
    pub fn sent(&mut self, request: Request, now_us: u64) {
        match self.window_start_us {
            Some(start) if now_us.saturating_sub(start) < interval_us(&self.config) => {
                self.window_sent += 1
            }
            _ => {
                self.window_start_us = Some(now_us);
                self.window_sent = 1;
            }
        }
        self.in_flight = Some(InFlight {
            seq: request.seq,
            sent_us: now_us,
        });
        self.stats.sent += 1;
    }

    /// Checks an echo reply with our identifier (`seq`, `data` = its
    /// payload) that arrived at `now_us`.
    pub fn reply(&mut self, seq: u16, data: &[u8], now_us: u64) -> Reply {
        let ok = payload_matches(self.ident, seq, data, self.skip);
        match self.in_flight {
            Some(f) if f.seq == seq => {
                self.in_flight = None;
                if !ok {
                    self.stats.bad += 1;
                    return Reply::Bad;
                }
                let rtt_us = now_us.saturating_sub(f.sent_us);
                let fragmented = data.len() + HEADERS > self.mtu;
                let s = &mut self.stats;
                s.rtt_min_us = if s.received == 0 {
                    rtt_us
                } else {
                    s.rtt_min_us.min(rtt_us)
                };
                s.rtt_max_us = s.rtt_max_us.max(rtt_us);
                s.rtt_sum_us = s.rtt_sum_us.saturating_add(rtt_us);
                s.received += 1;
                s.received_fragmented += u64::from(fragmented);
                Reply::Answered { rtt_us, fragmented }
            }
            // Only a number already used can be late.
            _ if ok && (u64::from(seq) < self.stats.sent || self.stats.sent > 0xffff) => {
                self.stats.late += 1;
                Reply::Late
            }
            _ => {
                self.stats.bad += 1;
                Reply::Bad
            }
        }
    }

    /// Counts a reply that cannot be ours at all (a `udpecho=` datagram
    /// from the echo port too short for its header, or with another
    /// identifier) as bad.
    pub fn stray(&mut self) -> Reply {
        self.stats.bad += 1;
        Reply::Bad
    }

    /// When the client next has something to do by itself (a timeout or
    /// the next interval), if anything: the caller sleeps no longer.
    pub fn deadline(&self, now_us: u64, link_up: bool) -> Option<u64> {
        if let Some(f) = self.in_flight {
            return Some(f.sent_us.saturating_add(reply_timeout_us(&self.config)));
        }
        if !link_up || self.count_reached() {
            // A link change comes with an interrupt or the link tick.
            return None;
        }
        if self.window_open(now_us) {
            return Some(now_us);
        }
        self.window_start_us
            .map(|s| s.saturating_add(interval_us(&self.config)))
    }

    /// The summary line, prefixed with `name` (the command-line key).
    pub fn summary<'a>(&'a self, name: &'a str) -> Summary<'a> {
        Summary(self, name)
    }
}

/// The machine-readable summary line of an [`EchoClient`]:
/// `ping: to=A.B.C.D ident=N sent=N received=N received_fragmented=N bad=N
/// lost=N late=N in_flight=0|1 rtt_min_us=N rtt_avg_us=N rtt_max_us=N done=0|1`
/// (`udpecho:` for the UDP client).
pub struct Summary<'a>(&'a EchoClient, &'a str);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, name) = (self.0, self.1);
        let s = &p.stats;
        let avg = s.rtt_sum_us.checked_div(s.received).unwrap_or(0);
        write!(
            f,
            "{name}: to={} ident={} sent={} received={} received_fragmented={} bad={} lost={} \
             late={} in_flight={} rtt_min_us={} rtt_avg_us={avg} rtt_max_us={} done={}",
            p.config.target,
            p.ident,
            s.sent,
            s.received,
            s.received_fragmented,
            s.bad,
            s.lost,
            s.late,
            u8::from(p.in_flight.is_some()),
            s.rtt_min_us,
            s.rtt_max_us,
            u8::from(p.done()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinger(count: Option<u32>, interval_ms: u32, mtu: usize) -> EchoClient {
        let config = EchoClientConfig {
            target: Ipv4Addr::new(10, 77, 0, 3),
            count,
            interval_ms,
        };
        EchoClient::new(
            config,
            EchoClient::ident_for(Ipv4Addr::new(10, 77, 0, 2)),
            mtu,
            0,
        )
    }

    fn payload(p: &EchoClient, r: Request) -> Vec<u8> {
        payload_for(p, r.seq)
    }

    /// Sends the next request and answers it after `rtt` µs.
    fn round_trip(p: &mut EchoClient, now: u64, rtt: u64) -> Reply {
        let r = p.next_request(now, true).expect("a request");
        p.sent(r, now);
        let data = payload(p, r);
        p.reply(r.seq, &data, now + rtt)
    }

    #[test]
    fn alternating_sizes_and_fragments_at_mtu_1500() {
        let mut p = pinger(None, 1000, 1500);
        assert_eq!(p.ident(), 2);
        for i in 0..4u64 {
            let got = round_trip(&mut p, i * 10_000, 100 + i);
            assert_eq!(
                got,
                Reply::Answered {
                    rtt_us: 100 + i,
                    fragmented: i % 2 == 1
                }
            );
        }
        let s = p.stats();
        assert_eq!((s.sent, s.received, s.received_fragmented), (4, 4, 2));
        assert_eq!((s.rtt_min_us, s.rtt_max_us, s.rtt_sum_us), (100, 103, 406));
        let line = p.summary("ping").to_string();
        assert!(line.starts_with("ping: to=10.77.0.3 ident=2 "));
        assert!(line.contains(" sent=4 received=4 received_fragmented=2 bad=0 lost=0"));
        assert!(line.contains("rtt_min_us=100 rtt_avg_us=101 rtt_max_us=103 done=0"));
        // UDP: the first four bytes are the header, not checked.
        let mut u = EchoClient::new(p.config, 2, 1500, UDP_HEADER);
        let r = u.next_request(0, true).unwrap();
        u.sent(r, 0);
        let mut data = payload(&u, r);
        data[..UDP_HEADER].copy_from_slice(&[0, 2, 0, 0]);
        assert!(matches!(u.reply(r.seq, &data, 1), Reply::Answered { .. }));
        let r = u.next_request(2, true).unwrap();
        u.sent(r, 2);
        let mut data = payload(&u, r);
        data[UDP_HEADER] ^= 1;
        assert_eq!(u.reply(r.seq, &data, 3), Reply::Bad);
        assert_eq!(
            u.summary("udpecho").to_string().split(' ').next(),
            Some("udpecho:")
        );
        // At MTU 16384 nothing is fragmented.
        let mut p = pinger(None, 1000, 16384);
        round_trip(&mut p, 0, 1);
        round_trip(&mut p, 10, 1);
        assert_eq!(p.stats().received_fragmented, 0);
    }

    #[test]
    fn burst_per_interval_then_one_per_interval() {
        let mut p = pinger(None, 100, 1500);
        for i in 0..u64::from(BURST) {
            assert!(matches!(
                round_trip(&mut p, i * 10, 5),
                Reply::Answered { .. }
            ));
        }
        // The burst is used up: the next one waits for the interval.
        let now = u64::from(BURST) * 10;
        assert_eq!(p.next_request(now, true), None);
        assert_eq!(p.deadline(now, true), Some(100_000));
        assert!(p.next_request(100_000, true).is_some());
        assert_eq!(p.deadline(100_000, true), Some(100_000));
    }

    #[test]
    fn link_down_timeout_and_late_reply() {
        let mut p = pinger(Some(3), 200, 1500);
        assert_eq!(p.next_request(0, false), None);
        assert_eq!(p.deadline(0, false), None);
        let r = p.next_request(0, true).unwrap();
        p.sent(r, 0);
        // One in flight: nothing more, the deadline is its timeout.
        assert_eq!(p.next_request(10, true), None);
        assert_eq!(p.deadline(10, true), Some(MIN_REPLY_TIMEOUT_US));
        assert_eq!(p.expire(MIN_REPLY_TIMEOUT_US - 1), None);
        assert_eq!(p.expire(MIN_REPLY_TIMEOUT_US), Some(r.seq));
        assert_eq!(p.stats().lost, 1);
        // Its reply comes after all: late, not received.
        let data = payload(&p, r);
        assert_eq!(p.reply(r.seq, &data, MIN_REPLY_TIMEOUT_US + 5), Reply::Late);
        // The next two, then done.
        assert!(matches!(
            round_trip(&mut p, 2_000_000, 7),
            Reply::Answered { .. }
        ));
        assert!(matches!(
            round_trip(&mut p, 2_000_100, 9),
            Reply::Answered { .. }
        ));
        assert!(p.done());
        assert_eq!(p.next_request(9_000_000, true), None);
        assert_eq!(p.deadline(9_000_000, true), None);
        let s = p.stats();
        assert_eq!((s.sent, s.received, s.lost, s.late, s.bad), (3, 2, 1, 1, 0));
        assert!(p.summary("ping").to_string().ends_with("done=1"));
    }

    #[test]
    fn wrong_payloads_are_bad() {
        let mut p = pinger(None, 1000, 1500);
        let r = p.next_request(0, true).unwrap();
        p.sent(r, 0);
        let mut data = payload(&p, r);
        // A reply to a number never sent.
        assert_eq!(
            p.reply(r.seq + 1, &payload_for(&p, r.seq + 1), 1),
            Reply::Bad
        );
        // One byte flipped: bad, and the request is answered (badly).
        data[10] ^= 1;
        assert_eq!(p.reply(r.seq, &data, 2), Reply::Bad);
        assert!(p.next_request(3, true).is_some());
        // Cut short, or from another client's identifier.
        let r = p.next_request(3, true).unwrap();
        p.sent(r, 3);
        let data = payload(&p, r);
        assert_eq!(p.reply(r.seq, &data[..r.len - 1], 4), Reply::Bad);
        let r = p.next_request(5, true).unwrap();
        p.sent(r, 5);
        let mut other = vec![0; r.len];
        fill_payload(p.ident() ^ 1, r.seq, &mut other);
        assert_eq!(p.reply(r.seq, &other, 6), Reply::Bad);
        assert_eq!(p.stray(), Reply::Bad);
        assert_eq!(p.stats().bad, 5);
        assert_eq!(p.stats().received, 0);
    }

    fn payload_for(p: &EchoClient, seq: u16) -> Vec<u8> {
        let mut v = vec![0; payload_len(seq)];
        fill_payload(p.ident(), seq, &mut v);
        v
    }

    #[test]
    fn payloads_differ_between_requests() {
        let a = payload_for(&pinger(None, 1, 1500), 1);
        let b = payload_for(&pinger(None, 1, 1500), 3);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < a.len() / 64, "{same} equal bytes");
    }
}
