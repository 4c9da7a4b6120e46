//! A scripted hostile peer: an ivshmem-server host peer that, for a given
//! time, writes random states, ring indices, event indices, descriptors
//! and ring entries into its own state entry and output section and rings
//! the other peer's doorbells — everything a peer on the other side of an
//! ivshmem-net link can do to it. Used against `ivnet-bridge` and the
//! bare-metal guest to check that the honest side's log output and carrier
//! flaps stay bounded and that it links with a good peer afterwards.
//!
//! The random sequence comes from a seed, printed by the tests, so a
//! failure can be replayed (`IVNET_HOSTILE_SEED`).

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ivnet_ring::Geometry;
use ivshmem_server::HostPeer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the hostile peer did.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostileCounts {
    /// Writes into the own section and state entry.
    pub writes: u64,
    /// Doorbells rung at the victim (both vectors).
    pub doorbells: u64,
    /// State values published.
    pub states: u64,
}

/// The hostile peer.
pub struct HostilePeer {
    host: HostPeer,
    victim: u16,
    vectors: u32,
    geometry: Geometry,
    rng: StdRng,
    /// The seed of `rng`.
    pub seed: u64,
}

/// Actions per pause: the peer runs in bursts so that it floods without
/// taking a whole CPU of a small CI machine for the entire run.
const BURST: u32 = 16;
/// Pause between bursts (pacing only; nothing waits on a condition here).
const PAUSE: Duration = Duration::from_micros(500);

impl HostilePeer {
    /// Connects to the server at `socket` as the peer of `victim`'s link.
    /// The seed is `IVNET_HOSTILE_SEED` if set, else taken from the clock.
    pub fn connect(socket: &std::path::Path) -> HostilePeer {
        let host = HostPeer::connect(socket, Duration::from_secs(10)).expect("join the server");
        assert!(host.id() < 2, "an ivshmem-net link has peers 0 and 1");
        let victim = 1 - host.id();
        let vectors = host.layout().vectors;
        let (_, len) = host.own_section();
        let geometry = Geometry::for_section(len).expect("section geometry");
        let seed = std::env::var("IVNET_HOSTILE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        HostilePeer {
            host,
            victim,
            vectors,
            geometry,
            rng: StdRng::seed_from_u64(seed),
            seed,
        }
    }

    /// The victim's state-table entry.
    pub fn victim_state(&self) -> u32 {
        self.host.peer_state(self.victim).unwrap_or(u32::MAX)
    }

    fn ring(&mut self, counts: &mut HostileCounts) {
        let vector = self.rng.random_range(0..self.vectors);
        // The victim may be between lives (not connected): ignore.
        if self.host.doorbell(self.victim, vector).is_ok() {
            counts.doorbells += 1;
        }
    }

    /// Stores `value` (`size` bytes: 2, 4 or 8) at `offset` of the own
    /// section.
    fn store(&mut self, offset: usize, size: usize, value: u64) {
        let (own, len) = self.host.own_section();
        assert!(
            offset.is_multiple_of(size) && offset + size <= len,
            "{offset:#x}"
        );
        let at = own.wrapping_add(offset);
        // The SAFETY argument of each `from_ptr` below: `at` is
        // `size`-aligned and inside the own output section (checked above),
        // which HostPeer maps read-write for as long as `self.host` lives;
        // the peer only reads this memory, with atomic loads.
        match size {
            // SAFETY: see above.
            2 => unsafe { AtomicU16::from_ptr(at.cast()) }.store(value as u16, Ordering::Release),
            // SAFETY: see above.
            4 => unsafe { AtomicU32::from_ptr(at.cast()) }.store(value as u32, Ordering::Release),
            // SAFETY: see above.
            _ => unsafe { AtomicU64::from_ptr(at.cast()) }.store(value, Ordering::Release),
        }
    }

    /// A value that is sometimes plausible, sometimes wild.
    fn index(&mut self) -> u64 {
        let q = u64::from(self.geometry.queue_len);
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(0..q),
            1 => self.rng.random_range(0..4 * q),
            _ => u64::from(self.rng.random::<u16>()),
        }
    }

    /// One random hostile act.
    fn act(&mut self, counts: &mut HostileCounts) {
        let g = self.geometry;
        let q = g.queue_len;
        match self.rng.random_range(0..10) {
            // Own state: mostly valid states in random order, sometimes
            // values that are no state at all.
            0 | 1 => {
                let state = if self.rng.random_bool(0.85) {
                    self.rng.random_range(0..4)
                } else {
                    self.rng.random::<u32>()
                };
                self.host.set_own_state(state);
                counts.states += 1;
                if self.host.doorbell(self.victim, 0).is_ok() {
                    counts.doorbells += 1;
                }
            }
            // Ring indices (TX avail, RX used) and event indices.
            2 => {
                let v = self.index();
                self.store(g.avail_idx_offset(), 2, v);
            }
            3 => {
                let v = self.index();
                self.store(g.used_idx_offset(), 2, v);
            }
            4 => {
                let (off, v) = if self.rng.random_bool(0.5) {
                    (g.used_event_offset(), self.index())
                } else {
                    (g.avail_event_offset(), self.index())
                };
                self.store(off, 2, v);
            }
            // A descriptor: address inside, at the edge of, or far outside
            // the data area; any length; any flags.
            5 | 6 => {
                let id = self.rng.random_range(0..q);
                let base = g.desc_offset(id);
                let data = g.data_offset() as u64;
                let addr = match self.rng.random_range(0..4) {
                    0 => data + self.rng.random_range(0..g.data_size as u64),
                    1 => data + g.data_size as u64 - self.rng.random_range(0..64),
                    2 => self.rng.random_range(0..data),
                    _ => self.rng.random::<u64>(),
                };
                let len = match self.rng.random_range(0..3) {
                    0 => self.rng.random_range(0..2048),
                    1 => self.rng.random_range(0..(g.data_size as u64 + 4096)),
                    _ => u64::from(self.rng.random::<u32>()),
                };
                self.store(base, 8, addr);
                self.store(base + 8, 4, len);
                let flags = self.rng.random::<u16>() as u64;
                self.store(base + 12, 2, flags);
                let next = self.index();
                self.store(base + 14, 2, next);
            }
            // Ring entries: avail ring ids, used ring {id, len}.
            7 => {
                let slot = self.rng.random_range(0..q);
                let v = self.index();
                self.store(g.avail_ring_offset(slot), 2, v);
            }
            8 => {
                let slot = self.rng.random_range(0..q);
                let id = self.index();
                let len = u64::from(self.rng.random::<u32>());
                self.store(g.used_elem_offset(slot), 4, id);
                self.store(g.used_elem_offset(slot) + 4, 4, len);
            }
            _ => {}
        }
        counts.writes += 1;
        if self.rng.random_bool(0.5) {
            self.ring(counts);
        }
    }

    /// Acts for `duration`; returns what it did.
    pub fn run_for(&mut self, duration: Duration) -> HostileCounts {
        let mut counts = HostileCounts::default();
        let end = Instant::now() + duration;
        while Instant::now() < end {
            // Learn about the victim's (re)connections, so that its
            // doorbells can be rung (non-blocking).
            let _ = self.host.handle_server_messages();
            for _ in 0..BURST {
                self.act(&mut counts);
            }
            std::thread::sleep(PAUSE);
        }
        counts
    }

    /// Leaves the server. The server writes RESET into the hostile peer's
    /// state entry and rings the victim, as for any peer that goes away.
    pub fn leave(self) {
        drop(self.host);
    }
}

/// The bounds the honest side must keep while a hostile peer acts for a
/// while, derived from the design of issue 9 (not measured):
///
/// - **Renegotiation backoff**: after repeated protocol faults the next
///   handshake waits, doubling up to [`BACKOFF_CAP`]. Each handshake brings
///   the carrier up at most once, so in `t` seconds there are at most
///   `t / BACKOFF_CAP` link-ups at the cap plus the [`BACKOFF_RAMP`]
///   handshakes the doubling takes from its first step to the cap, plus
///   one.
/// - **Log rate limit** (like the kernel's `net_ratelimit`): per message
///   kind and [`LOG_INTERVAL`] a burst of [`LOG_BURST`] lines, then one "N
///   similar messages suppressed" summary; non-transitions are never
///   logged. So the lines are at most [`LINES_PER_LINK_CYCLE`] per link-up
///   (the transitions of one handshake and its teardown, each logged once)
///   plus, per kind, a burst and a summary per interval, plus a few lines
///   of context.
pub mod bounds {
    use std::time::Duration;

    /// Cap of the renegotiation backoff ("capped around one second").
    pub const BACKOFF_CAP: Duration = Duration::from_secs(1);
    /// Handshakes before the backoff reaches its cap: doubling from 1 ms
    /// (or more) to 1 s takes at most 10 steps.
    pub const BACKOFF_RAMP: u64 = 10;
    /// Lines of one link cycle: RESET→INIT, INIT→READY, READY→RUN, carrier
    /// on, the fault that ends it, RUN→RESET, carrier off, and one spare.
    pub const LINES_PER_LINK_CYCLE: u64 = 8;
    /// Message kinds a peer can provoke (peer protocol errors by kind,
    /// invalid states, restarts, ...): a generous count.
    pub const LOG_KINDS: u64 = 8;
    /// Lines per kind and interval before suppression (the kernel's
    /// default burst).
    pub const LOG_BURST: u64 = 10;
    /// One summary per kind per interval (the kernel's default interval).
    pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
    /// Longest log line counted in the byte bound.
    pub const MAX_LINE_BYTES: u64 = 240;
    /// Context lines (a hostile peer joining and leaving, stats lines the
    /// test asks for).
    pub const CONTEXT_LINES: u64 = 16;

    /// Link-ups allowed in `t` of hostile activity.
    pub fn max_link_ups(t: Duration) -> u64 {
        (t.as_secs_f64() / BACKOFF_CAP.as_secs_f64()).ceil() as u64 + BACKOFF_RAMP + 1
    }

    /// Carrier changes (on and off) allowed in `t`.
    pub fn max_carrier_changes(t: Duration) -> u64 {
        2 * max_link_ups(t)
    }

    /// Log lines allowed in `t`.
    pub fn max_log_lines(t: Duration) -> u64 {
        let intervals = (t.as_secs_f64() / LOG_INTERVAL.as_secs_f64()).ceil() as u64 + 1;
        max_link_ups(t) * LINES_PER_LINK_CYCLE
            + LOG_KINDS * intervals * (LOG_BURST + 1)
            + CONTEXT_LINES
    }

    /// Log bytes allowed in `t`.
    pub fn max_log_bytes(t: Duration) -> u64 {
        max_log_lines(t) * MAX_LINE_BYTES
    }

    /// A good peer must link within this after the hostile one left: the
    /// honest side may just have started a backoff wait (at most the cap),
    /// then one handshake of a few doorbells, with a wide margin for a
    /// loaded two-core CI machine running QEMU under TCG.
    pub const GOOD_PEER_LINK: Duration = Duration::from_secs(10);
}
