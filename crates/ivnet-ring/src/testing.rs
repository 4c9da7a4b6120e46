//! Test support (feature `test-utils`): two output sections on the heap, an
//! endpoint pair over them, a handshake driver, and raw writes that play a
//! hostile peer. Used by the crate's tests, its fuzz target and benchmarks.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::format;
use std::string::String;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::endpoint::{Config, Endpoint};
use crate::shm::{OwnSection, PeerSection};

/// Two adjacent output sections (peer 0's, then peer 1's) and a two-entry
/// state table, page aligned, zeroed.
#[derive(Debug)]
pub struct SharedRegion {
    base: *mut u8,
    layout: Layout,
    section_size: usize,
    states: [AtomicU32; 2],
}

// SAFETY: the region is plain heap memory; all access to it goes through
// raw pointers and atomics.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Allocates two zeroed sections of `section_size` bytes each.
    pub fn new(section_size: usize) -> Self {
        let layout = Layout::from_size_align(2 * section_size, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "allocation failed");
        SharedRegion {
            base,
            layout,
            section_size,
            states: [AtomicU32::new(0), AtomicU32::new(0)],
        }
    }

    /// Size of one section.
    pub fn section_size(&self) -> usize {
        self.section_size
    }

    /// Base of peer `id`'s section.
    pub fn section_ptr(&self, id: usize) -> *mut u8 {
        assert!(id < 2);
        // SAFETY: id < 2, so the offset stays inside the allocation.
        unsafe { self.base.add(id * self.section_size) }
    }

    /// The endpoint of peer `id` (own section `id`, peer section `1 - id`).
    ///
    /// The region must outlive the endpoint.
    pub fn endpoint(&self, id: usize, config: Config) -> Endpoint {
        // SAFETY: the sections are inside our allocation, page aligned, and
        // the caller keeps the region alive for the endpoint's lifetime.
        // Each peer id is handed out once per test by convention.
        let own = unsafe { OwnSection::new(self.section_ptr(id), self.section_size) };
        // SAFETY: as above; read-only use.
        let peer = unsafe { PeerSection::new(self.section_ptr(1 - id), self.section_size) };
        Endpoint::new(own.expect("aligned"), peer.expect("aligned"), config).expect("geometry")
    }

    /// Both endpoints.
    pub fn pair(&self, config: Config) -> (Endpoint, Endpoint) {
        (self.endpoint(0, config), self.endpoint(1, config))
    }

    /// State-table entry of peer `id`.
    pub fn state(&self, id: usize) -> &AtomicU32 {
        &self.states[id]
    }

    /// Writes raw bytes into a section, as a (hostile) peer would.
    pub fn poke(&self, id: usize, offset: usize, bytes: &[u8]) {
        assert!(
            offset + bytes.len() <= self.section_size,
            "poke outside the section"
        );
        // SAFETY: offset + len <= section size (checked above).
        let dst = unsafe { self.section_ptr(id).add(offset) };
        // SAFETY: `dst` is inside the region; the region is plain memory
        // that the endpoints only access through atomics and raw copies.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    }

    /// Reads raw bytes from a section.
    pub fn peek(&self, id: usize, offset: usize, out: &mut [u8]) {
        assert!(
            offset + out.len() <= self.section_size,
            "peek outside the section"
        );
        // SAFETY: offset + len <= section size (checked above).
        let src = unsafe { self.section_ptr(id).add(offset) };
        // SAFETY: `src` is inside the region, `out` is a local buffer.
        unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, self.layout) };
    }
}

/// Runs the state handshake between two endpoints (both interfaces up)
/// until both are RUN with carrier; panics if it does not settle. The
/// state-table entries start out as the endpoints' local states.
pub fn handshake(a: &mut Endpoint, b: &mut Endpoint) {
    let (state_a, state_b) = (a.local_state().raw(), b.local_state().raw());
    handshake_from(a, b, state_a, state_b);
}

/// Like [`handshake`], but the state-table entries start out as given —
/// e.g. a restarted side's entry still holding RUN (or garbage) from its
/// previous instance. Returns the number of rounds it took.
pub fn handshake_from(a: &mut Endpoint, b: &mut Endpoint, entry_a: u32, entry_b: u32) -> usize {
    let mut state_a = entry_a;
    let mut state_b = entry_b;
    for round in 0..16 {
        if let Some(s) = a.on_peer_state(state_b, true).write_state {
            state_a = s.raw();
        }
        if let Some(s) = b.on_peer_state(state_a, true).write_state {
            state_b = s.raw();
        }
        if a.carrier() && b.carrier() {
            return round + 1;
        }
    }
    panic!(
        "handshake did not settle: {:?} {:?}",
        a.local_state(),
        b.local_state()
    );
}

/// Deterministic frame content: byte `i` of frame `seq`.
pub fn pattern_byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8).wrapping_mul(31)
}

/// Fills `buf` with frame `seq`'s pattern; the first 8 bytes hold `seq`.
pub fn fill_frame(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seq, i);
    }
    if buf.len() >= 8 {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Checks a frame filled by [`fill_frame`]; returns its sequence number.
pub fn check_frame(buf: &[u8]) -> Result<u64, String> {
    if buf.len() < 8 {
        return Err(format!("frame of {} bytes too short", buf.len()));
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    for (i, &b) in buf.iter().enumerate().skip(8) {
        if b != pattern_byte(seq, i) {
            return Err(format!(
                "frame {seq}: byte {i} is {b:#x}, expected {:#x}",
                pattern_byte(seq, i)
            ));
        }
    }
    Ok(seq)
}

/// Loads a state-table entry.
pub fn load_state(cell: &AtomicU32) -> u32 {
    cell.load(Ordering::Acquire)
}

/// Fuzz entry point for the receive and completion paths: `data` is a
/// script that lets a hostile peer overwrite arbitrary bytes of the shared
/// sections (its own and, as on QEMU where nothing enforces it, ours) and
/// report arbitrary states, interleaved with the victim's operations.
///
/// Checked: nothing panics or reaches outside the sections (debug bounds
/// assertions are on in tests and fuzz builds); every failure is a typed
/// error and counted; and afterwards, once the peer restarts honestly, the
/// link renegotiates and a frame gets through — a hostile peer can break
/// the link, but never wedge it.
pub fn fuzz_peer_bytes(data: &[u8]) {
    const SECTION: usize = 0x4000;
    let region = SharedRegion::new(SECTION);
    let cfg = Config::with_mtu(1500);
    let (mut victim, mut hostile) = region.pair(cfg);
    handshake(&mut victim, &mut hostile);
    // State-table entries as last written: the victim's by the victim, the
    // hostile peer's by whatever op 8 made it claim.
    let mut victim_entry = victim.local_state().raw();
    let mut hostile_entry = hostile.local_state().raw();
    let mut buf = [0u8; 1518];
    let frame = [0x5au8; 1518];
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let mut errors_seen = 0u64;
    while let Some(op) = next() {
        let result: Result<(), crate::RingError> = match op % 12 {
            // Overwrite up to 8 bytes of the hostile peer's own section.
            0..=3 => {
                let (Some(lo), Some(hi), Some(n)) = (next(), next(), next()) else {
                    break;
                };
                let offset = usize::from(u16::from_le_bytes([lo, hi])) % SECTION;
                let len = usize::from(n % 8 + 1).min(SECTION - offset);
                let payload: std::vec::Vec<u8> = (0..len).map(|_| next().unwrap_or(0xff)).collect();
                region.poke(1, offset, &payload);
                Ok(())
            }
            // Overwrite bytes of the victim's own section.
            4 => {
                let (Some(lo), Some(hi), Some(v)) = (next(), next(), next()) else {
                    break;
                };
                let offset = usize::from(u16::from_le_bytes([lo, hi])) % SECTION;
                region.poke(0, offset, &[v]);
                Ok(())
            }
            5 => victim.recv(&mut buf).map(|_| ()),
            6 => victim.reclaim().map(|_| ()),
            7 => {
                let _ = victim.flush_rx();
                let _ = victim.flush_tx();
                victim.enable_rx_notify().map(|_| ())
            }
            8 => {
                let (Some(a), Some(b)) = (next(), next()) else {
                    break;
                };
                let raw = u32::from(a) | (u32::from(b) << 24);
                hostile_entry = raw % 5 + (raw & 0xff00_0000);
                let out = victim.on_peer_state(hostile_entry, true);
                if let Some(state) = out.write_state {
                    victim_entry = state.raw();
                    let _ = hostile.on_peer_state(state.raw(), true);
                }
                Ok(())
            }
            9 => {
                let len = (usize::from(next().unwrap_or(0)) * 6 + 1).min(1518);
                let how = next().unwrap_or(0);
                if how & 1 == 0 {
                    let _ = victim.send(&frame[..len]);
                } else if let Ok(mut slot) = victim.tx_reserve(len) {
                    // Zero-copy path with a fuzzed offset: writes outside
                    // the slot must be refused, not performed.
                    let offset = usize::from(how >> 1) * 16;
                    let fits = offset + 8 <= slot.capacity();
                    assert_eq!(slot.write_at(offset, &frame[..8]).is_ok(), fits);
                    let _ = slot.write_at(0, &frame[..len]);
                    let _ = slot.commit(len);
                }
                Ok(())
            }
            10 => {
                // Honest-looking activity from the peer.
                let len = usize::from(next().unwrap_or(0)) * 6 + 14;
                let _ = hostile.send(&frame[..len.min(1518)]);
                let _ = hostile.flush_tx();
                let _ = hostile.recv(&mut buf);
                let _ = hostile.flush_rx();
                let _ = hostile.reclaim();
                Ok(())
            }
            _ => match victim.rx_peek() {
                Ok(Some(f)) => {
                    assert!(f.len() <= SECTION);
                    let mut local = [0u8; 64];
                    f.copy_to(&mut local);
                    // Reads with a fuzzed offset: refused outside the frame.
                    let offset = usize::from(next().unwrap_or(0)) * 8;
                    let fits = offset + 8 <= f.len();
                    assert_eq!(f.read_at(offset, &mut local[..8]).is_ok(), fits);
                    f.release();
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            if e != crate::RingError::Faulted {
                errors_seen += 1;
            }
            assert!(!victim.running(), "an error must fault the endpoint");
        }
        assert!(usize::from(victim.tx_in_flight()) <= 64);
    }
    assert!(
        victim.stats().total_errors() >= errors_seen,
        "every error is counted"
    );

    // The peer restarts honestly — a fresh endpoint whose state entry
    // still holds whatever the hostile instance wrote: the link must come
    // back.
    let mut honest = region.endpoint(1, cfg);
    handshake_from(&mut victim, &mut honest, victim_entry, hostile_entry);
    honest
        .send(&frame[..100])
        .expect("honest peer can send after renegotiation");
    let _ = honest.flush_tx();
    let mut got = None;
    for _ in 0..4 {
        if let Some(n) = victim.recv(&mut buf).expect("no error from an honest peer") {
            got = Some(n);
            break;
        }
    }
    assert_eq!(got, Some(100), "frame after renegotiation");
    victim
        .send(&frame[..200])
        .expect("victim can send after renegotiation");
    let _ = victim.flush_tx();
    assert_eq!(honest.recv(&mut buf).expect("honest"), Some(200));
}
