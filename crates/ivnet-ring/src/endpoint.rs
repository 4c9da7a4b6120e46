//! One side of an ivshmem-net link: both queues, the link state machine and
//! the statistics, over the two output sections.
//!
//! The endpoint is sans-IO. It reads and writes the sections (that is its
//! job), but it never touches a register, an interrupt or a file
//! descriptor: every decision that needs one — publish a state, ring a
//! doorbell, switch the carrier — is returned to the caller.

use crate::error::{RingError, TxError};
use crate::geometry::{
    EXTENSION_LEN, FRAME_HEADROOM, Geometry, GeometryError, MIN_MTU, frame_slot_size,
};
use crate::link::{LinkMachine, LinkState};
use crate::notify::Notify;
use crate::rx::{RxDesc, RxQueue};
use crate::shm::{OwnSection, PeerSection, ShmError};
use crate::stats::Stats;
use crate::tx::TxQueue;
use crate::vring::Vrings;

/// Link parameters both peers must agree on out of band.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// IP MTU of the link. Frames may be up to `mtu + 18` bytes (Ethernet
    /// header and a VLAN tag).
    ///
    /// `None` (the default) takes the reference driver's default for the
    /// section size, [`Geometry::default_mtu`] = `min(16384, data_size /
    /// 16)`: 16384 on the usual 0x7f000-byte sections, 14456 on 0x3f000,
    /// 3416 on 0xf000 — what a Linux ivshmem-net peer uses unless its
    /// administrator changed it. Peers with a fixed MTU (Zephyr's
    /// eth_ivshmem registers 1500) need `Some(mtu)`.
    pub mtu: Option<usize>,
}

impl Config {
    /// A configuration with a fixed MTU.
    pub const fn with_mtu(mtu: usize) -> Self {
        Config { mtu: Some(mtu) }
    }

    /// The MTU this configuration gives a link over `geometry`.
    pub const fn mtu_for(&self, geometry: &Geometry) -> usize {
        match self.mtu {
            Some(mtu) => mtu,
            None => geometry.default_mtu(),
        }
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
    /// A prepared or running link went back to RESET because of the peer
    /// (it reset, restarted, or wrote a bad state) or a protocol fault;
    /// counted in [`Stats::link_resets`]. Never set by
    /// [`Endpoint::shutdown`] or by taking the interface down.
    pub link_reset: bool,
    /// The peer protocol error behind this step, if any (already counted).
    pub error: Option<RingError>,
}

/// One side of the link.
#[derive(Debug)]
pub struct Endpoint {
    rings: Vrings,
    mtu: usize,
    /// Largest frame `send`/`tx_reserve` accept (`mtu + 18` unless an
    /// extension the caller negotiated raised it).
    max_frame: usize,
    /// Extension block written into the own section after every zeroing
    /// (all zero: none, the reference protocol).
    own_extension: [u8; EXTENSION_LEN],
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
    /// size (the specification requires it; otherwise
    /// [`GeometryError::UnequalSections`]); the geometry is computed from
    /// it, and the MTU from `config` (see [`Config::mtu`]).
    pub fn new(own: OwnSection, peer: PeerSection, config: Config) -> Result<Self, GeometryError> {
        let rings = Vrings::new(own, peer)?;
        let mtu = config.mtu_for(rings.geometry());
        rings.geometry().check_mtu(mtu)?;
        Ok(Endpoint {
            rings,
            mtu,
            max_frame: mtu + FRAME_HEADROOM,
            own_extension: [0; EXTENSION_LEN],
            tx: TxQueue::new(mtu),
            rx: RxQueue::new(),
            link: LinkMachine::new(),
            stats: Stats::default(),
            tx_full: false,
            deferred_notify: Notify::Idle,
        })
    }

    /// The section geometry.
    pub fn geometry(&self) -> &Geometry {
        self.rings.geometry()
    }

    /// The link MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Largest frame `send` accepts (MTU + 18, unless raised with
    /// [`set_max_frame_len`](Self::set_max_frame_len)).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame
    }

    /// Sets the largest frame this side queues, for an extension both
    /// peers negotiated (e.g. a per-frame header and GSO super-frames; the
    /// ring carries such frames without interpreting them). The space rule
    /// then keeps room for two frames of this size, so it must be at most a
    /// quarter of the data area, as the MTU is. `mtu + 18` restores the
    /// reference rule exactly. In-flight frames are unaffected.
    pub fn set_max_frame_len(&mut self, len: usize) -> Result<(), GeometryError> {
        let max = self.rings.geometry().data_size / 4;
        if !(MIN_MTU + FRAME_HEADROOM..=max).contains(&len) || len > u32::MAX as usize {
            return Err(GeometryError::MtuOutOfRange { mtu: len, max });
        }
        self.max_frame = len;
        let slot = if len == self.mtu + FRAME_HEADROOM {
            // The reference's unit: IVSHM_NET_FRAME_SIZE(mtu).
            frame_slot_size(self.mtu)
        } else {
            frame_slot_size(len)
        };
        self.tx.set_rule_slot(slot);
        Ok(())
    }

    /// Sets the extension block this side advertises in its own section
    /// ([`Geometry::extension_offset`]). It is written after every zeroing
    /// of the own section (INIT→READY), so the peer finds it once it sees
    /// this side in READY or later. All zeroes (the default) advertise
    /// nothing: the section is then bit for bit the reference protocol's.
    pub fn set_own_extension(&mut self, block: [u8; EXTENSION_LEN]) {
        self.own_extension = block;
    }

    /// Reads the peer's extension block once (a copy; the peer may rewrite
    /// it at any time, so validate the copy). Meaningful once the peer was
    /// seen in READY or later: a peer zeroes its section, then writes its
    /// block, then publishes READY. A peer that does not know the block
    /// leaves zeroes there.
    pub fn peer_extension(&self) -> [u8; EXTENSION_LEN] {
        let mut block = [0; EXTENSION_LEN];
        let offset = self.rings.geometry().extension_offset();
        // In bounds: the block lies inside the ring header.
        let _ = self.rings.peer().read_at(offset, &mut block);
        block
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
            self.rings.own().zero();
            if self.own_extension != [0; EXTENSION_LEN] {
                let offset = self.rings.geometry().extension_offset();
                // In bounds: the block lies inside the ring header. Ordered
                // before the READY the caller publishes next like the
                // zeroing is (the state publication is a Release store).
                let _ = self.rings.own().write_at(offset, &self.own_extension);
            }
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

    /// Goes to RESET (on shutdown). Always asks to publish RESET, so that
    /// a peer still running against us stops.
    ///
    /// A local shutdown is not a link reset: it is not counted in
    /// [`Stats::link_resets`] (which counts resets the peer or a protocol
    /// fault caused) and `link_reset` is `false`.
    pub fn shutdown(&mut self) -> StepOutput {
        let decision = self.link.shutdown();
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
    /// doorbell (publishes `used_event`, counted in
    /// [`Stats::tx_completion_irq_requests`]) and re-checks.
    pub fn reclaim(&mut self) -> Result<usize, RingError> {
        if !self.check_running()? {
            return Ok(0);
        }
        match self.tx.reclaim(&self.rings, &mut self.stats) {
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
        if self.tx.ok(self.rings.geometry()) {
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
        let ok = self.tx.ok(self.rings.geometry());
        if !ok && !self.tx_full {
            self.stats.tx_ring_full += 1;
        }
        self.tx_full = !ok;
        ok
    }

    /// Admits a frame of up to `len` bytes and returns where its slot
    /// starts in the data area.
    ///
    /// The slot `start..start + frame_slot_size(len)` lies inside the data
    /// area: the space rule guarantees it, and it is checked here once more
    /// (one comparison) so that [`TxSlot`]'s raw pointer is in bounds even
    /// if the queue bookkeeping had a bug.
    fn tx_admit(&mut self, len: usize) -> Result<usize, TxError> {
        TxQueue::check_len(len, self.max_frame_len())?;
        if !self.running() {
            return Err(TxError::LinkDown);
        }
        if !self.tx.ok(self.rings.geometry()) {
            // A peer error here faults the link; the caller sees LinkDown
            // on the next call and the error through on_peer_state.
            let _ = self.reclaim();
            if !self.note_space() {
                return Err(TxError::Full);
            }
        }
        let geo = self.rings.geometry();
        let slot = frame_slot_size(len);
        let start = self.tx.slot_start(geo, slot);
        if start + slot > geo.data_size {
            debug_assert!(false, "space rule admitted a slot beyond the data area");
            return Err(TxError::Full);
        }
        Ok(start)
    }

    /// Queues a frame whose bytes are in the slot at `start`: the one path
    /// behind [`send`](Self::send) and [`TxSlot::commit`].
    ///
    /// Publishes early when the current batch has grown large (see
    /// `TxQueue::batch_is_large`), so the peer can start on it; the
    /// doorbell decision waits for `flush_tx`, so a batch still yields one
    /// decision.
    fn queue_frame(&mut self, start: usize, len: usize) {
        self.tx.queue(&self.rings, start, len);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        if self.tx.batch_is_large(self.rings.geometry()) {
            let notify = self.tx.publish(&self.rings, &mut self.stats);
            self.deferred_notify = self.deferred_notify.or(notify);
        }
    }

    /// Copies a frame into the own section and queues it. It becomes
    /// visible to the peer at the next [`flush_tx`](Self::flush_tx) (or
    /// earlier inside a large batch).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxError> {
        let start = self.tx_admit(frame.len())?;
        let offset = self.rings.geometry().data_offset() + start;
        if self.rings.own().write_at(offset, frame).is_err() {
            // Unreachable: `tx_admit` checked the slot against the data
            // area, which lies inside the section.
            return Err(TxError::Full);
        }
        self.queue_frame(start, frame.len());
        Ok(())
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
    /// section, to be filled in place ([`TxSlot::write_at`], or
    /// [`TxSlot::as_mut_ptr`] for a system call) and then committed.
    pub fn tx_reserve(&mut self, max_len: usize) -> Result<TxSlot<'_>, TxError> {
        let start = self.tx_admit(max_len)?;
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
    /// are published early as they are queued — by `send` and by
    /// `TxSlot::commit` alike — so the peer can start on them; the doorbell
    /// decisions of those publishes are folded into the one returned here.
    pub fn flush_tx(&mut self) -> Notify {
        let deferred = core::mem::replace(&mut self.deferred_notify, Notify::Idle);
        deferred.or(self.tx.publish(&self.rings, &mut self.stats))
    }

    /// Frames queued or in flight.
    pub fn tx_in_flight(&self) -> u16 {
        self.tx.in_flight()
    }

    // ----- RX --------------------------------------------------------------

    /// Copies the next received frame into `buf` and completes it;
    /// returns its length. Completions become visible at the next
    /// [`flush_rx`](Self::flush_rx).
    ///
    /// Handles at most one frame per call, so a caller's budget bounds the
    /// work per doorbell whatever the peer sends. A frame larger than
    /// `buf` (not the peer's fault: it may use a larger MTU) is dropped,
    /// counted in [`Stats::rx_dropped_oversize`], and the call returns
    /// `Ok(None)` without looking further — `None` therefore means "no
    /// frame delivered by this call", not "ring empty": before sleeping,
    /// the caller asks [`enable_rx_notify`](Self::enable_rx_notify) (or
    /// [`rx_pending`](Self::rx_pending)), as it must anyway.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let Some(frame) = self.rx_peek()? else {
            return Ok(None);
        };
        let len = frame.len();
        if len > buf.len() {
            frame.endpoint.stats.rx_dropped_oversize += 1;
            frame.release();
            return Ok(None);
        }
        let copied = frame.copy_to(&mut buf[..len]);
        frame.release();
        Ok(Some(copied))
    }

    /// Validates the next received frame and returns it for in-place
    /// reading. It stays at the head of the queue until released.
    pub fn rx_peek(&mut self) -> Result<Option<RxFrame<'_>>, RingError> {
        if !self.check_running()? {
            return Ok(None);
        }
        match self.rx.peek(&self.rings) {
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
        match self.rx.pending(&self.rings) {
            Ok(p) => Ok(p),
            Err(e) => self.fail(e),
        }
    }

    /// Publishes completions (one Release store of `used.idx`) and decides
    /// with the peer's `used_event` whether to ring it.
    pub fn flush_rx(&mut self) -> Notify {
        self.rx.publish(&self.rings, &mut self.stats)
    }

    /// Leaves polling: publishes `avail_event`, fences, and re-checks.
    /// `Ok(true)` means frames arrived meanwhile: keep polling.
    pub fn enable_rx_notify(&mut self) -> Result<bool, RingError> {
        if !self.check_running()? {
            return Ok(false);
        }
        match self.rx.enable_notify(&self.rings) {
            Ok(more) => Ok(more),
            Err(e) => self.fail(e),
        }
    }

    /// Reads the peer's avail index without side effects (diagnostics).
    pub fn peer_avail_index(&self) -> u16 {
        self.rings.peer_avail_idx_relaxed()
    }
}

/// A reserved TX slot in the own section (zero-copy transmit).
///
/// No reference into shared memory is handed out: on QEMU every VM can
/// write the whole window, so a `&mut [u8]` into it would be unsound. Fill
/// the slot with bounds-checked copies ([`write_at`](Self::write_at)) or,
/// for a system call that writes into it (e.g. `read(2)` from a TAP),
/// through the raw pointer ([`as_mut_ptr`](Self::as_mut_ptr)).
#[derive(Debug)]
pub struct TxSlot<'a> {
    endpoint: &'a mut Endpoint,
    /// Start of the slot relative to the data area; `start +
    /// frame_slot_size(capacity) <= data_size` (checked in `tx_admit`).
    start: usize,
    capacity: usize,
}

impl TxSlot<'_> {
    /// Bytes the slot can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn section_offset(&self) -> usize {
        self.endpoint.rings.geometry().data_offset() + self.start
    }

    /// Pointer to the first of the slot's [`capacity`](Self::capacity)
    /// bytes, for system calls that write into it. The slot is not
    /// published until [`commit`](Self::commit).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // In bounds: data_offset + start + capacity <= section length
        // (`tx_admit`); `wrapping_add` keeps this free of `unsafe`.
        self.endpoint
            .rings
            .own()
            .as_ptr()
            .wrapping_add(self.section_offset())
    }

    /// Copies `src` into the slot at `offset` (relative to the slot).
    /// Fails without writing if it does not fit the slot's capacity.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), ShmError> {
        if offset
            .checked_add(src.len())
            .is_none_or(|end| end > self.capacity)
        {
            return Err(ShmError::OutOfBounds {
                offset,
                size: src.len(),
                len: self.capacity,
            });
        }
        self.endpoint
            .rings
            .own()
            .write_at(self.section_offset() + offset, src)
    }

    /// Copies `dst.len()` bytes at `offset` (relative to the slot) back out
    /// of the slot, e.g. to inspect a header a system call wrote.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > self.capacity)
        {
            return Err(ShmError::OutOfBounds {
                offset,
                size: dst.len(),
                len: self.capacity,
            });
        }
        self.endpoint
            .rings
            .own()
            .read_at(self.section_offset() + offset, dst)
    }

    /// Queues the first `len` bytes of the slot as a frame (publishing
    /// early inside a large batch, as `send` does).
    pub fn commit(self, len: usize) -> Result<(), TxError> {
        TxQueue::check_len(len, self.capacity)?;
        self.endpoint.queue_frame(self.start, len);
        Ok(())
    }
}

/// A received frame, validated, still in the peer's section.
///
/// No slice into the peer's section is handed out (the peer can rewrite
/// it at any time): copy it out ([`copy_to`](Self::copy_to),
/// [`read_at`](Self::read_at)) or pass the raw pointer to a system call.
#[derive(Debug)]
pub struct RxFrame<'a> {
    endpoint: &'a mut Endpoint,
    /// Validated: `offset + len <= section length`.
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

    /// Raw pointer to the frame's [`len`](Self::len) bytes in the peer's
    /// section. The peer can write there: never build a reference from it;
    /// use it for copies or system calls (e.g. `write(2)` to a TAP) only.
    pub fn as_ptr(&self) -> *const u8 {
        // In bounds: the descriptor was validated against the section.
        self.endpoint
            .rings
            .peer()
            .as_ptr()
            .wrapping_add(self.desc.offset)
    }

    /// Copies the frame into `buf` (up to `buf.len()` bytes); returns the
    /// number of bytes copied.
    pub fn copy_to(&self, buf: &mut [u8]) -> usize {
        let len = self.desc.len.min(buf.len());
        match self.read_at(0, &mut buf[..len]) {
            Ok(()) => len,
            Err(_) => 0, // unreachable: validated against the section
        }
    }

    /// Copies `dst.len()` bytes at `offset` (relative to the frame) out of
    /// the peer's section; fails if that range is not inside the frame.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > self.desc.len)
        {
            return Err(ShmError::OutOfBounds {
                offset,
                size: dst.len(),
                len: self.desc.len,
            });
        }
        self.endpoint
            .rings
            .peer()
            .read_at(self.desc.offset + offset, dst)
    }

    /// Completes the frame (its slot goes back to the peer at the next
    /// `flush_rx`).
    pub fn release(self) {
        let endpoint = self.endpoint;
        endpoint.rx.complete(&endpoint.rings, self.desc.id);
        endpoint.stats.rx_frames += 1;
        endpoint.stats.rx_bytes += self.desc.len as u64;
    }
}
