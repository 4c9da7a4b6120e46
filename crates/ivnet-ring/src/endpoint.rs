//! One side of an ivshmem-net link: both queues, the link state machine and
//! the statistics, over the two output sections.
//!
//! The endpoint is sans-IO. It reads and writes the sections (that is its
//! job), but it never touches a register, an interrupt or a file
//! descriptor: every decision that needs one — publish a state, ring a
//! doorbell, switch the carrier — is returned to the caller.

use core::sync::atomic::Ordering;

use crate::error::{RingError, TxError};
use crate::geometry::{DEFAULT_MTU, FRAME_HEADROOM, Geometry, GeometryError, frame_slot_size};
use crate::link::{LinkMachine, LinkState};
use crate::notify::Notify;
use crate::rx::{RxDesc, RxQueue};
use crate::shm::{OwnSection, PeerSection};
use crate::stats::Stats;
use crate::tx::TxQueue;

/// Link parameters both peers must agree on out of band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// IP MTU of the link (ivshmem-net's default is 16384). Frames may be up
    /// to `mtu + 18` bytes (Ethernet header and a VLAN tag).
    pub mtu: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { mtu: DEFAULT_MTU }
    }
}

/// What the caller must do after a state step, in this order: publish
/// `write_state`, then apply `carrier`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "the new state must be published or the peer never sees it"]
pub struct StepOutput {
    /// Publish this own state (Jailhouse: the STATE register; QEMU
    /// profile: the own state-table entry, then a vector-0 doorbell).
    pub write_state: Option<LinkState>,
    /// The carrier changed.
    pub carrier: Option<bool>,
    /// A prepared or running link went back to RESET.
    pub link_reset: bool,
    /// The peer protocol error behind this step, if any (already counted).
    pub error: Option<RingError>,
}

/// One side of the link.
#[derive(Debug)]
pub struct Endpoint {
    own: OwnSection,
    peer: PeerSection,
    geometry: Geometry,
    mtu: usize,
    tx: TxQueue,
    rx: RxQueue,
    link: LinkMachine,
    stats: Stats,
    /// The TX ring was full at the last check (for counting transitions).
    tx_full: bool,
    /// Doorbell decision of an early publish inside a large batch, handed
    /// to the caller with the batch's own decision at `flush_tx`.
    deferred_notify: Notify,
}

impl Endpoint {
    /// Builds an endpoint over the two sections. Both must have the same
    /// size (the specification requires it); the geometry is computed from
    /// it.
    pub fn new(own: OwnSection, peer: PeerSection, config: Config) -> Result<Self, GeometryError> {
        if own.len() != peer.len() {
            return Err(GeometryError::SectionTooSmall {
                section_size: own.len().min(peer.len()),
                ring_header_size: own.len().max(peer.len()),
            });
        }
        let geometry = Geometry::for_section(own.len())?;
        geometry.check_mtu(config.mtu)?;
        Ok(Endpoint {
            own,
            peer,
            geometry,
            mtu: config.mtu,
            tx: TxQueue::new(config.mtu),
            rx: RxQueue::new(),
            link: LinkMachine::new(),
            stats: Stats::default(),
            tx_full: false,
            deferred_notify: Notify::Idle,
        })
    }

    /// The section geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The link MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Largest frame `send` accepts (MTU + 18).
    pub fn max_frame_len(&self) -> usize {
        self.mtu + FRAME_HEADROOM
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The local link state.
    pub fn local_state(&self) -> LinkState {
        self.link.local()
    }

    /// The peer state seen last, if valid.
    pub fn peer_state(&self) -> Option<LinkState> {
        self.link.last_peer()
    }

    /// Whether the carrier is on (both sides RUN).
    pub fn carrier(&self) -> bool {
        self.link.carrier()
    }

    /// Whether the data path may be used (local state RUN, no fault).
    pub fn running(&self) -> bool {
        self.link.local() == LinkState::Run && !self.link.faulted()
    }

    // ----- link state ------------------------------------------------------

    /// Feeds the peer's state-table entry (read once by the caller) and
    /// whether the local interface is up.
    ///
    /// Call it on every state-change interrupt (vector 0), at start, after
    /// any data-path `Err`, and periodically (a missed interrupt must not
    /// stall the handshake; a few hundred milliseconds is plenty).
    pub fn on_peer_state(&mut self, peer_raw: u32, interface_up: bool) -> StepOutput {
        let decision = self.link.step(peer_raw, interface_up);
        if decision.reset_queues {
            // INIT → READY: zero our own section and start both queues from
            // index 0, as the reference does.
            self.own.zero();
            self.tx.reset();
            self.rx.reset();
            self.deferred_notify = Notify::Idle;
        }
        if let Some(error) = &decision.error {
            self.stats.errors.record(error);
        }
        if decision.link_reset {
            self.stats.link_resets += 1;
        }
        StepOutput {
            write_state: decision.write_state,
            carrier: decision.carrier,
            link_reset: decision.link_reset,
            error: decision.error,
        }
    }

    /// Goes to RESET (on shutdown).
    pub fn shutdown(&mut self) -> StepOutput {
        let decision = self.link.shutdown();
        if decision.link_reset {
            self.stats.link_resets += 1;
        }
        StepOutput {
            write_state: decision.write_state,
            carrier: decision.carrier,
            link_reset: decision.link_reset,
            error: None,
        }
    }

    fn fail<T>(&mut self, error: RingError) -> Result<T, RingError> {
        self.stats.errors.record(&error);
        self.link.fault();
        Err(error)
    }

    fn check_running(&self) -> Result<bool, RingError> {
        if self.link.faulted() {
            return Err(RingError::Faulted);
        }
        Ok(self.link.local() == LinkState::Run)
    }

    // ----- TX --------------------------------------------------------------

    /// Processes the peer's TX completions; returns how many slots were
    /// freed. When still short of space, asks the peer for a completion
    /// doorbell (publishes `used_event`) and re-checks.
    pub fn reclaim(&mut self) -> Result<usize, RingError> {
        if !self.check_running()? {
            return Ok(0);
        }
        match self.tx.reclaim(&self.own, &self.peer, &self.geometry) {
            Ok(n) => Ok(n),
            Err(e) => self.fail(e),
        }
    }

    /// Whether one more maximum-size frame fits (reclaiming first if it
    /// does not). `false` also when the link is not running.
    pub fn tx_ready(&mut self) -> bool {
        if !self.running() {
            return false;
        }
        if self.tx.ok(&self.geometry) {
            self.tx_full = false;
            return true;
        }
        if self.reclaim().is_err() {
            return false;
        }
        self.note_space()
    }

    /// Re-evaluates the space rule, counting each transition into "full".
    fn note_space(&mut self) -> bool {
        let ok = self.tx.ok(&self.geometry);
        if !ok && !self.tx_full {
            self.stats.tx_ring_full += 1;
        }
        self.tx_full = !ok;
        ok
    }

    fn tx_admit(&mut self, len: usize) -> Result<(), TxError> {
        TxQueue::check_len(len, self.max_frame_len())?;
        if !self.running() {
            return Err(TxError::LinkDown);
        }
        if !self.tx.ok(&self.geometry) {
            // A peer error here faults the link; the caller sees LinkDown
            // on the next call and the error through on_peer_state.
            let _ = self.reclaim();
            if !self.note_space() {
                return Err(TxError::Full);
            }
        }
        Ok(())
    }

    /// Copies a frame into the own section and queues it. It becomes
    /// visible to the peer at the next [`flush_tx`](Self::flush_tx).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxError> {
        self.tx_admit(frame.len())?;
        let start = self
            .tx
            .slot_start(&self.geometry, frame_slot_size(frame.len()));
        self.own
            .write_bytes(self.geometry.data_offset() + start, frame);
        self.tx.queue(&self.own, &self.geometry, start, frame.len());
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
        self.publish_large_batch();
        Ok(())
    }

    /// Publishes early when the current batch has grown large (see
    /// `TxQueue::batch_is_large`); the doorbell decision waits for
    /// `flush_tx`, so a batch still yields one decision.
    fn publish_large_batch(&mut self) {
        if self.tx.batch_is_large(&self.geometry) {
            let notify = self
                .tx
                .publish(&self.own, &self.peer, &self.geometry, &mut self.stats);
            self.deferred_notify = self.deferred_notify.or(notify);
        }
    }

    /// Queues as many frames as fit and publishes them with one index
    /// store and one doorbell decision. Returns how many were queued.
    pub fn send_batch<'f>(
        &mut self,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> (usize, Result<Notify, TxError>) {
        let mut sent = 0;
        for frame in frames {
            match self.send(frame) {
                Ok(()) => sent += 1,
                Err(e) => return (sent, Err(e)),
            }
        }
        (sent, Ok(self.flush_tx()))
    }

    /// Reserves a slot for a frame of up to `max_len` bytes in the own
    /// section, to be filled in place.
    pub fn tx_reserve(&mut self, max_len: usize) -> Result<TxSlot<'_>, TxError> {
        self.tx_admit(max_len)?;
        let start = self.tx.slot_start(&self.geometry, frame_slot_size(max_len));
        Ok(TxSlot {
            endpoint: self,
            start,
            capacity: max_len,
        })
    }

    /// Publishes queued frames (one Release store of `avail.idx`) and
    /// decides with the peer's `avail_event` whether to ring it.
    ///
    /// Within a large batch (a quarter of the data area or more) frames
    /// are published early as they are queued, so the peer can start on
    /// them; the doorbell decisions of those publishes are folded into the
    /// one returned here.
    pub fn flush_tx(&mut self) -> Notify {
        let deferred = core::mem::replace(&mut self.deferred_notify, Notify::Idle);
        if self.tx.unpublished() == 0 {
            return deferred;
        }
        let notify = self
            .tx
            .publish(&self.own, &self.peer, &self.geometry, &mut self.stats);
        deferred.or(notify)
    }

    /// Frames queued or in flight.
    pub fn tx_in_flight(&self) -> u16 {
        self.tx.in_flight()
    }

    // ----- RX --------------------------------------------------------------

    /// Copies the next received frame into `buf` and completes it. Frames
    /// larger than `buf` are dropped and counted (`rx_dropped_oversize`).
    /// Completions become visible at the next [`flush_rx`](Self::flush_rx).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        loop {
            let Some(frame) = self.rx_peek()? else {
                return Ok(None);
            };
            let len = frame.len();
            if len > buf.len() {
                // Not the peer's fault (it may use a larger MTU): drop the
                // frame, count it, and keep the ring moving.
                frame.endpoint.stats.rx_dropped_oversize += 1;
                frame.release();
                continue;
            }
            frame.copy_to(&mut buf[..len]);
            frame.release();
            return Ok(Some(len));
        }
    }

    /// Validates the next received frame and returns it for in-place
    /// reading. It stays at the head of the queue until released.
    pub fn rx_peek(&mut self) -> Result<Option<RxFrame<'_>>, RingError> {
        if !self.check_running()? {
            return Ok(None);
        }
        match self.rx.peek(&self.peer, &self.geometry) {
            Ok(Some(desc)) => Ok(Some(RxFrame {
                endpoint: self,
                desc,
            })),
            Ok(None) => Ok(None),
            Err(e) => self.fail(e),
        }
    }

    /// Whether received frames are waiting.
    pub fn rx_pending(&mut self) -> Result<bool, RingError> {
        if !self.check_running()? {
            return Ok(false);
        }
        match self.rx.pending(&self.peer, &self.geometry) {
            Ok(p) => Ok(p),
            Err(e) => self.fail(e),
        }
    }

    /// Publishes completions (one Release store of `used.idx`) and decides
    /// with the peer's `used_event` whether to ring it.
    pub fn flush_rx(&mut self) -> Notify {
        if self.rx.unpublished() == 0 {
            return Notify::Idle;
        }
        self.rx
            .publish(&self.own, &self.peer, &self.geometry, &mut self.stats)
    }

    /// Leaves polling: publishes `avail_event`, fences, and re-checks.
    /// `Ok(true)` means frames arrived meanwhile: keep polling.
    pub fn enable_rx_notify(&mut self) -> Result<bool, RingError> {
        if !self.check_running()? {
            return Ok(false);
        }
        match self.rx.enable_notify(&self.own, &self.peer, &self.geometry) {
            Ok(more) => Ok(more),
            Err(e) => self.fail(e),
        }
    }

    /// Reads the peer's avail index without side effects (diagnostics).
    pub fn peer_avail_index(&self) -> u16 {
        self.peer
            .load_u16(self.geometry.avail_idx_offset(), Ordering::Relaxed)
    }
}

/// A reserved TX slot in the own section (zero-copy transmit).
#[derive(Debug)]
pub struct TxSlot<'a> {
    endpoint: &'a mut Endpoint,
    start: usize,
    capacity: usize,
}

impl TxSlot<'_> {
    /// Bytes the slot can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pointer to the first byte of the slot.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        let offset = self.endpoint.geometry.data_offset() + self.start;
        self.endpoint.own.slot_ptr(offset, self.capacity)
    }

    /// The slot as a byte slice.
    ///
    /// This is the one reference into shared memory the crate hands out:
    /// the slot is in our *own* section, which the peer may only read
    /// (enforced by the hypervisor on Jailhouse and by read-only mappings
    /// on ivnet's QEMU peers), and it is not published until `commit`.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.capacity;
        let ptr = self.as_mut_ptr();
        // SAFETY: `ptr..ptr+len` lies inside our own section (checked by
        // `slot_ptr` and the space rule), nothing else in this process
        // writes it while the slot borrows the endpoint mutably, and the
        // peer does not write our section.
        unsafe { core::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Queues the first `len` bytes of the slot as a frame.
    pub fn commit(self, len: usize) -> Result<(), TxError> {
        if len > self.capacity {
            return Err(TxError::TooLong {
                len,
                max: self.capacity,
            });
        }
        TxQueue::check_len(len, self.capacity)?;
        let endpoint = self.endpoint;
        endpoint
            .tx
            .queue(&endpoint.own, &endpoint.geometry, self.start, len);
        endpoint.stats.tx_frames += 1;
        endpoint.stats.tx_bytes += len as u64;
        Ok(())
    }
}

/// A received frame, validated, still in the peer's section.
#[derive(Debug)]
pub struct RxFrame<'a> {
    endpoint: &'a mut Endpoint,
    desc: RxDesc,
}

impl RxFrame<'_> {
    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.desc.len
    }

    /// Whether the frame is empty (never: empty frames are rejected).
    pub fn is_empty(&self) -> bool {
        self.desc.len == 0
    }

    /// Raw pointer to the frame in the peer's section. The peer can write
    /// there: never build a reference from it; use it for copies or
    /// system calls (e.g. `write(2)` to a TAP) only.
    pub fn as_ptr(&self) -> *const u8 {
        self.endpoint.peer.slot_ptr(self.desc.offset, self.desc.len)
    }

    /// Copies the frame into `buf` (which must be at least `len()` bytes);
    /// returns the number of bytes copied.
    pub fn copy_to(&self, buf: &mut [u8]) -> usize {
        let len = self.desc.len.min(buf.len());
        self.endpoint
            .peer
            .read_bytes(self.desc.offset, &mut buf[..len]);
        len
    }

    /// Completes the frame (its slot goes back to the peer at the next
    /// `flush_rx`).
    pub fn release(self) {
        let endpoint = self.endpoint;
        endpoint
            .rx
            .complete(&endpoint.own, &endpoint.geometry, self.desc.id);
        endpoint.stats.rx_frames += 1;
        endpoint.stats.rx_bytes += self.desc.len as u64;
    }
}
