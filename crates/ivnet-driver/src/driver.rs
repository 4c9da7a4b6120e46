//! The runner: one [`Endpoint`] (and through it the link state machine)
//! over one [`LinkDevice`].

use ivnet_ring::{Endpoint, LinkState, Notify, RingError};
use log::Level;

use crate::backoff::{Backoff, BackoffConfig};
use crate::device::{LinkDevice, data_vector};
use crate::ratelimit::{LogKind, LogLimiter, RateLimit, limited};

/// Driver settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverConfig {
    /// Renegotiation backoff after repeated protocol faults.
    pub backoff: BackoffConfig,
    /// Log budget per message kind.
    pub log_limit: RateLimit,
}

/// What the driver did, for the bridge's JSON stats and the guest's counter
/// line. The ring's own counters (frames, bytes, errors by kind) are in
/// [`Endpoint::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Counters {
    /// Data doorbells written to the device, by vector (0 and 1).
    pub doorbells_rung: [u64; 2],
    /// Data doorbells the device refused (not counted as rung).
    pub doorbells_refused: u64,
    /// Own-state publications that reached the device.
    pub state_writes: u64,
    /// Own-state publications the device refused.
    pub state_writes_refused: u64,
    /// Carrier transitions to on.
    pub carrier_ups: u64,
    /// Carrier transitions to off.
    pub carrier_downs: u64,
    /// Peer protocol violations (data path and state), each a link reset.
    pub protocol_faults: u64,
    /// A prepared or running link went back to RESET because of the peer
    /// (its RESET, a fault). Leaving the link ourselves is not counted.
    pub link_resets: u64,
    /// Handshakes held back by the renegotiation backoff.
    pub backoff_waits: u64,
    /// Links the peer dropped before they settled (carrier on for less than
    /// the backoff's settle period): counted toward the backoff like faults.
    pub short_links: u64,
    /// Log messages dropped by the rate limiter.
    pub log_suppressed: u64,
}

/// What [`Driver::poll_link`] changed, for the caller to carry out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "a carrier change must be applied to the interface"]
pub struct LinkUpdate {
    /// The carrier changed to this value: switch the interface's carrier.
    pub carrier: Option<bool>,
    /// The next handshake is held back this long (µs): poll the link again
    /// by then (a timer; no doorbell will come for it).
    pub held_us: Option<u64>,
}

/// The ivshmem-net driver core.
///
/// Call pattern (the bridge's epoll loop and the guest's interrupt loop are
/// both this):
///
/// ```text
/// loop {
///     wait for an interrupt / doorbell / timer / frames to send
///     driver.poll_link(up)          // state may have changed (always safe)
///     driver.reclaim()              // TX completions
///     while let Some(f) = rx ... ; tx ...   // data path via endpoint_mut()
///     driver.flush()                // publish both queues, ≤ 1 data doorbell
///     if !driver.prepare_sleep() { sleep }  // notify on, re-arm, re-check
/// }
/// ```
#[derive(Debug)]
pub struct Driver<D: LinkDevice> {
    /// Declared before `device`, so it is dropped first: the endpoint holds
    /// raw pointers into memory the device (e.g. a UIO or host-peer
    /// backend) may map and unmap on drop.
    endpoint: Endpoint,
    device: D,
    data_vector: u16,
    counters: Counters,
    backoff: Backoff,
    limiter: LogLimiter,
    interface_up: bool,
    /// The last state published; `None` before the first publication.
    published: Option<LinkState>,
    /// The peer's entry as last fed to the state machine.
    last_peer_raw: Option<u32>,
    /// A carrier change not yet handed to the caller.
    pending_carrier: Option<bool>,
}

impl<D: LinkDevice> Driver<D> {
    /// Takes over `endpoint` and `device`. Nothing is published yet: the
    /// first [`poll_link`](Self::poll_link) publishes RESET (a restarted
    /// side must never leave a stale RUN behind) and starts the handshake.
    pub fn new(device: D, endpoint: Endpoint, config: DriverConfig) -> Self {
        let data_vector = data_vector(device.vectors());
        Driver {
            endpoint,
            device,
            data_vector,
            counters: Counters::default(),
            backoff: Backoff::new(config.backoff),
            limiter: LogLimiter::new(config.log_limit),
            interface_up: true,
            published: None,
            last_peer_raw: None,
            pending_carrier: None,
        }
    }

    // ----- accessors -------------------------------------------------------

    /// The endpoint (geometry, state, ring statistics).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint for the data path (`rx_peek`, `tx_reserve`, `send`).
    /// Hand every `Err(RingError)` it returns to [`data_error`](Self::data_error).
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// The platform device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The platform device, mutably (for the platform's own work, e.g.
    /// consuming a wakeup). Do not publish states or ring through it.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The vector data doorbells go to.
    pub fn data_vector(&self) -> u16 {
        self.data_vector
    }

    /// Counters (a copy).
    pub fn counters(&self) -> Counters {
        Counters {
            log_suppressed: self.limiter.suppressed_total(),
            ..self.counters
        }
    }

    /// The local link state.
    pub fn local_state(&self) -> LinkState {
        self.endpoint.local_state()
    }

    /// The last state this side published (`None` before the first).
    pub fn published_state(&self) -> Option<LinkState> {
        self.published
    }

    /// The peer's entry as last read (raw; may be any value).
    pub fn peer_state_raw(&self) -> Option<u32> {
        self.last_peer_raw
    }

    /// Whether the carrier is on.
    pub fn carrier(&self) -> bool {
        self.endpoint.carrier()
    }

    /// Whether the data path may be used.
    pub fn running(&self) -> bool {
        self.endpoint.running()
    }

    /// Time left before a held-back handshake may start.
    pub fn backoff_remaining_us(&mut self) -> Option<u64> {
        let now = self.device.now_us();
        self.backoff.remaining_us(now)
    }

    // ----- link ------------------------------------------------------------

    /// Reads the peer's state entry once and steps the link: publishes what
    /// the state machine says (RESET first on the very first call), counts
    /// and logs real transitions. Call it at start, on every vector-0
    /// interrupt (every interrupt on a one-vector device), when
    /// [`prepare_sleep`](Self::prepare_sleep) says so, and periodically (a
    /// lost interrupt must not stall the handshake; 100 ms is plenty).
    pub fn poll_link(&mut self, interface_up: bool) -> LinkUpdate {
        self.interface_up = interface_up;
        let held_us = self.step_link();
        LinkUpdate {
            carrier: self.pending_carrier.take(),
            held_us,
        }
    }

    /// One step of the link; returns the backoff hold-back, if any.
    fn step_link(&mut self) -> Option<u64> {
        let now = self.device.now_us();
        let interface_up = self.interface_up;
        self.flush_log_summaries(now);
        let raw = self.device.peer_state();
        self.last_peer_raw = Some(raw);
        if self.endpoint.local_state() == LinkState::Reset
            && let Some(held) = self.backoff.remaining_us(now)
        {
            // In RESET after repeated faults: the peer waits in INIT for us
            // (or keeps breaking things); the next handshake waits.
            if self.published.is_none() {
                self.publish(LinkState::Reset, now);
            }
            return Some(held);
        }
        let before = self.endpoint.local_state();
        let out = self.endpoint.on_peer_state(raw, interface_up);
        // A restarted side publishes RESET before anything else, whatever
        // the first step says (a fresh state machine may see a peer in RUN
        // and stay in RESET without a write, leaving our stale RUN behind).
        if self.published.is_none() && out.write_state != Some(LinkState::Reset) {
            self.publish(LinkState::Reset, now);
        }
        if let Some(e) = out.error {
            self.record_fault(&e, now);
        }
        if let Some(state) = out.write_state {
            self.publish(state, now);
        }
        if out.link_reset {
            self.counters.link_resets += 1;
        }
        let after = self.endpoint.local_state();
        if after != before {
            limited!(
                self.limiter,
                now,
                LogKind::LinkState,
                Level::Info,
                "link: local {} -> {}, peer {}",
                before,
                after,
                PeerState(raw)
            );
        }
        if let Some(on) = out.carrier {
            // With our interface up, a drop comes from the peer (its RESET
            // or a fault, already counted as such).
            self.note_carrier(on, interface_up, now);
        }
        self.backoff.remaining_us(now)
    }

    /// A data-path error from the endpoint (the peer broke the protocol):
    /// counts it, logs it (rate-limited), arms the backoff, and steps the
    /// link (to RESET). Apply the returned carrier change.
    pub fn data_error(&mut self, error: RingError) -> LinkUpdate {
        self.fault_and_step(error);
        LinkUpdate {
            carrier: self.pending_carrier.take(),
            held_us: self.backoff_remaining_us(),
        }
    }

    /// Counts and logs a data-path fault and steps the link to RESET; a
    /// carrier change waits in `pending_carrier`.
    fn fault_and_step(&mut self, error: RingError) {
        let now = self.device.now_us();
        self.record_fault(&error, now);
        let _ = self.step_link();
    }

    /// Leaves the link: publishes RESET, carrier off. Not counted as a link
    /// reset. Apply the returned carrier change.
    pub fn shutdown(&mut self) -> LinkUpdate {
        let now = self.device.now_us();
        let before = self.endpoint.local_state();
        let out = self.endpoint.shutdown();
        if out.write_state.is_some() || self.published != Some(LinkState::Reset) {
            self.publish(LinkState::Reset, now);
        }
        if before != LinkState::Reset {
            limited!(
                self.limiter,
                now,
                LogKind::LinkState,
                Level::Info,
                "link: local {} -> RESET (leaving)",
                before
            );
        }
        if let Some(on) = out.carrier {
            self.note_carrier(on, false, now);
        }
        LinkUpdate {
            carrier: self.pending_carrier.take(),
            held_us: None,
        }
    }

    fn publish(&mut self, state: LinkState, now: u64) {
        match self.device.publish_state(state) {
            Ok(()) => {
                self.counters.state_writes += 1;
                self.published = Some(state);
            }
            Err(e) => {
                self.counters.state_writes_refused += 1;
                limited!(
                    self.limiter,
                    now,
                    LogKind::Refused,
                    Level::Warn,
                    "link: publishing {} failed: {}",
                    state,
                    e
                );
            }
        }
    }

    fn record_fault(&mut self, error: &RingError, now: u64) {
        self.counters.protocol_faults += 1;
        limited!(
            self.limiter,
            now,
            LogKind::ProtocolFault,
            Level::Warn,
            "link: peer protocol error: {}; resetting the link",
            error
        );
        if let Some(wait) = self.backoff.on_fault(now) {
            self.counters.backoff_waits += 1;
            limited!(
                self.limiter,
                now,
                LogKind::Backoff,
                Level::Warn,
                "link: {} protocol faults in a row; next handshake in {} ms",
                self.backoff.faults_in_row(),
                wait / 1000
            );
        }
    }

    fn note_carrier(&mut self, on: bool, peer_caused: bool, now: u64) {
        self.pending_carrier = Some(on);
        if let Some(short) = self.backoff.on_carrier(on, peer_caused, now) {
            self.counters.short_links += 1;
            if let Some(wait) = short.hold_us {
                self.counters.backoff_waits += 1;
                limited!(
                    self.limiter,
                    now,
                    LogKind::Backoff,
                    Level::Warn,
                    "link: {} faults or unsettled links in a row; next handshake in {} ms",
                    self.backoff.faults_in_row(),
                    wait / 1000
                );
            }
        }
        if on {
            self.counters.carrier_ups += 1;
        } else {
            self.counters.carrier_downs += 1;
        }
        limited!(
            self.limiter,
            now,
            LogKind::Carrier,
            Level::Info,
            "link: carrier {} (local {}, peer {})",
            if on { "on" } else { "off" },
            self.endpoint.local_state(),
            PeerState(self.last_peer_raw.unwrap_or(u32::MAX))
        );
    }

    fn flush_log_summaries(&mut self, now: u64) {
        self.limiter.flush_due(now, |kind, n| {
            log::warn!(target: "ivnet", "{}: {} similar messages suppressed", kind.name(), n);
        });
    }

    // ----- data path -------------------------------------------------------

    /// Processes TX completions; returns the slots freed.
    pub fn reclaim(&mut self) -> usize {
        match self.endpoint.reclaim() {
            Ok(n) => n,
            Err(e) => {
                self.fault_and_step(e);
                0
            }
        }
    }

    /// Whether received frames are waiting.
    pub fn rx_pending(&mut self) -> bool {
        match self.endpoint.rx_pending() {
            Ok(p) => p,
            Err(e) => {
                self.fault_and_step(e);
                false
            }
        }
    }

    /// Copies the next received frame into `buf` and completes it.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.endpoint.recv(buf) {
            Ok(n) => n,
            Err(e) => {
                self.fault_and_step(e);
                None
            }
        }
    }

    /// Publishes completed RX frames and queued TX frames and rings the
    /// peer's data vector if either publication asks for it: at most one
    /// data doorbell per flush. Returns whether a doorbell was rung.
    pub fn flush(&mut self) -> bool {
        let rx = self.endpoint.flush_rx();
        let tx = self.endpoint.flush_tx();
        if rx.or(tx) == Notify::Doorbell {
            self.ring_data()
        } else {
            false
        }
    }

    fn ring_data(&mut self) -> bool {
        let vector = self.data_vector;
        match self.device.ring(vector) {
            Ok(()) => {
                self.counters.doorbells_rung[usize::from(vector.min(1))] += 1;
                true
            }
            Err(e) => {
                self.counters.doorbells_refused += 1;
                let now = self.device.now_us();
                limited!(
                    self.limiter,
                    now,
                    LogKind::Refused,
                    Level::Warn,
                    "link: doorbell on vector {} refused: {}",
                    vector,
                    e
                );
                false
            }
        }
    }

    /// Before sleeping (NAPI style, after polling to empty and
    /// [`flush`](Self::flush)): asks the peer for an RX doorbell
    /// (`avail_event`), re-arms the device interrupt, and only then
    /// re-checks shared memory — the RX ring and the peer's state entry.
    /// Returns `true` if there is work after all: poll the link and the
    /// rings again instead of sleeping.
    pub fn prepare_sleep(&mut self) -> bool {
        let mut more = false;
        if self.endpoint.running() {
            match self.endpoint.enable_rx_notify() {
                Ok(m) => more = m,
                Err(e) => {
                    self.fault_and_step(e);
                    return true;
                }
            }
        }
        self.device.rearm();
        // The final re-check, after the re-arm: anything that arrived while
        // the interrupt was disarmed is seen here.
        let peer_changed = Some(self.device.peer_state()) != self.last_peer_raw;
        more | peer_changed | self.rx_pending()
    }

    /// Takes a carrier change that happened inside a data-path call
    /// ([`reclaim`](Self::reclaim), [`rx_pending`](Self::rx_pending),
    /// [`recv`](Self::recv), [`prepare_sleep`](Self::prepare_sleep)): a
    /// peer error there resets the link at once. [`poll_link`](Self::poll_link),
    /// [`data_error`](Self::data_error) and [`shutdown`](Self::shutdown)
    /// return it instead.
    pub fn take_carrier_change(&mut self) -> Option<bool> {
        self.pending_carrier.take()
    }
}

/// Displays a raw peer state: its name, or the number if it is not a state.
struct PeerState(u32);

impl core::fmt::Display for PeerState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match LinkState::from_raw(self.0) {
            Some(s) => f.write_str(s.name()),
            None => write!(f, "{:#x} (not a state)", self.0),
        }
    }
}
