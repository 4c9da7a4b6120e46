//! The bridge's event loop: one thread, one epoll set over the TAP, the
//! backend's wakeup descriptors, a signalfd and a timerfd.
//!
//! Link state, doorbells, resets, backoff and their logging are the driver
//! core's ([`ivnet_driver::Driver`]); the bridge owns the TAP, epoll,
//! signals, the timer and the stats. Per wakeup:
//! 1. link state: `poll_link`, then switch the TAP carrier as it says;
//! 2. TX completions (`reclaim`);
//! 3. RX: write frames from the peer's section straight to the TAP until the
//!    ring is empty or the budget is spent;
//! 4. TX: read TAP frames straight into reserved slots of the own section.
//!    When the ring is full, the TAP is taken out of the epoll set until
//!    completions free space (backpressure instead of dropping). After RX
//!    wrote frames, the TAP is read at once if the kernel tends to answer
//!    inside the write (a ping reply leaves in the round of its request,
//!    see `ReplyCatcher`);
//! 5. `flush`: both queues published, at most one data doorbell;
//! 6. before sleeping, `prepare_sleep` (NAPI style: RX notify on, re-arm the
//!    device interrupt, re-check) decides whether sleeping is safe.
//!
//! Frames are dropped only where the bridge cannot do otherwise, and each
//! drop is counted by reason (see [`BridgeCounters`]).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use ivnet_driver::{Driver, DriverConfig};
use ivnet_ring::geometry::{FRAME_HEADROOM, MAX_MTU};
use ivnet_ring::{Config, Endpoint, LinkState, OwnSection, PeerSection, RingError};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tracing::{debug, info, warn};

use crate::backend::{Backend, BackendError};
use crate::cli::{Mode, OffloadMode};
use crate::offload::{self, Advert, Features, HDR_LEN, Negotiated, OffloadCounters};
use crate::stats::{BridgeCounters, Report, RingCounters};
use crate::tap::Tap;

const TOKEN_TAP: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_TIMER: u64 = 3;
const TOKEN_BACKEND: u64 = 16;

/// Housekeeping period: re-reads the peer state and TX completions even if a
/// notification was lost, and drives `--stats-interval`.
const TICK: Duration = Duration::from_millis(100);

/// Settings of the loop.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// Link MTU.
    pub mtu: u32,
    /// Frames per direction per round.
    pub budget: u32,
    /// Waiting strategy.
    pub mode: Mode,
    /// Busy-poll window in hybrid mode.
    pub busy_poll: Duration,
    /// Periodic report (zero: none).
    pub stats_interval: Duration,
    /// Reports as JSON lines.
    pub stats_json: bool,
    /// Offloads offered to the peer.
    pub offload: OffloadMode,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The ring library refused the sections or the MTU.
    #[error("ring setup: {0}")]
    Ring(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// epoll/signalfd/timerfd failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: nix::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> BridgeError {
    move |source| BridgeError::Sys { what, source }
}

/// The running bridge.
pub struct Bridge {
    /// The driver core over the backend. Its endpoint holds raw pointers
    /// into memory the backend maps; the driver drops the endpoint before
    /// the backend.
    driver: Driver<Box<dyn Backend>>,
    tap: Tap,
    cfg: LoopConfig,
    counters: BridgeCounters,
    epoll: Epoll,
    signals: SignalFd,
    timer: TimerFd,
    backend_fds: Vec<RawFd>,
    /// The TAP is in the epoll set with EPOLLIN.
    tap_armed: bool,
    /// The TAP may have frames (epoll said so, or the last read did not
    /// return EAGAIN).
    tap_readable: bool,
    /// Frames from the peer may be waiting (doorbell, or budget exhausted).
    rx_pending: bool,
    /// Whether the TAP is read right after frames were written to it,
    /// before epoll says so (see [`ReplyCatcher`]).
    catcher: ReplyCatcher,
    /// The peer's state entry may have changed (seen at the re-check
    /// before sleeping).
    link_recheck: bool,
    /// This side has left the link (shutdown): the peer's entry is no
    /// longer watched.
    left: bool,
    started: Instant,
    next_report: Option<Instant>,
    last_work: Instant,
    forced_poll: Option<Duration>,
    last_forced_poll: Instant,
    /// Scratch buffer for frames read from the TAP while the link is down.
    discard: Vec<u8>,
    /// The TAP is administratively up (checked every tick).
    interface_up: bool,
    /// What this side advertises (None: nothing, the plain protocol).
    advert: Option<Advert>,
    /// What the running link carries (None: plain frames).
    negotiated: Option<Negotiated>,
    /// Link session the negotiation was made for (driver counters that
    /// change whenever the link restarts); None while not running.
    session: Option<u64>,
    /// Largest frame of the plain protocol (MTU + 18).
    mtu_frame: usize,
    offload: OffloadCounters,
}

/// What to do after handling signals.
enum Control {
    Continue,
    Quit(Signal),
}

/// Blocks the signals the bridge handles through its signalfd (SIGINT,
/// SIGTERM: leave the link and exit 0; SIGUSR1: counters; SIGHUP), and
/// returns them. From then on such a signal waits in the queue for the
/// signalfd instead of killing a half set-up process: `main` calls this
/// before it creates the TAP (the first thing a supervisor or a test sees
/// and may answer with SIGTERM), [`Bridge::new`] again (idempotent).
pub fn block_handled_signals() -> Result<SigSet, BridgeError> {
    let mask = SigSet::from_iter([
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGHUP,
    ]);
    mask.thread_block().map_err(sys("blocking signals"))?;
    Ok(mask)
}

impl Bridge {
    /// Sets up the endpoint over the backend's sections and the epoll set.
    pub fn new(backend: Box<dyn Backend>, tap: Tap, cfg: LoopConfig) -> Result<Self, BridgeError> {
        let len = backend.section_len();
        // SAFETY: the backend maps its own output section read-write for
        // `len` bytes and keeps it mapped for its lifetime; `backend` and
        // `ep` are moved into one `Driver`, which drops the endpoint before
        // the device. Only this process writes the section.
        let own = unsafe { OwnSection::new(backend.own_section(), len) }
            .ok_or_else(|| BridgeError::Ring("own section is misaligned or empty".into()))?;
        // SAFETY: as above for the peer's section, mapped readable for `len`
        // bytes (read-only) for the backend's lifetime.
        let peer = unsafe { PeerSection::new(backend.peer_section(), len) }
            .ok_or_else(|| BridgeError::Ring("peer section is misaligned or empty".into()))?;
        let mut ep = Endpoint::new(own, peer, Config::with_mtu(cfg.mtu as usize))
            .map_err(|e| BridgeError::Ring(e.to_string()))?;
        let tap_features = if tap.vnet_hdr() {
            probe_offloads(&tap)
        } else {
            Features::empty()
        };
        let advert = offload::own_advert(cfg.offload, tap_features, ep.geometry().data_size / 4);
        match &advert {
            Some(a) => {
                ep.set_own_extension(a.encode());
                info!(
                    "offloads offered to an ivnet peer: {:?}, frames up to {} bytes",
                    a.features, a.max_frame
                );
                if !a.features.contains(Features::TSO4) && tap_features.contains(Features::TSO4) {
                    warn!(
                        "the data area ({} bytes) is below 4 x {} bytes: no 64 KiB super-frames,                          checksum offload only (use output sections of 0x7f000 bytes or more)",
                        ep.geometry().data_size,
                        HDR_LEN + offload::MAX_SUPER_FRAME
                    );
                }
            }
            None => info!("offloads off: plain ivshmem-net frames only"),
        }
        let mtu_frame = ep.max_frame_len();
        let backend_fds = backend.wakeup_fds();
        let forced_poll = backend.forced_poll();
        let driver = Driver::new(backend, ep, DriverConfig::default());

        let mask = block_handled_signals()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys("signalfd"))?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(sys("timerfd"))?;
        let tick = if cfg.stats_interval.is_zero() {
            TICK
        } else {
            TICK.min(cfg.stats_interval)
        };
        let tick = tick.max(Duration::from_millis(5));
        timer
            .set(
                Expiration::Interval(TimeSpec::from_duration(tick)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(sys("timerfd_settime"))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
        epoll
            .add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))
            .map_err(sys("epoll add signalfd"))?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))
            .map_err(sys("epoll add timerfd"))?;
        epoll
            .add(
                tap_fd(&tap),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TAP),
            )
            .map_err(sys("epoll add TAP"))?;
        for (i, fd) in backend_fds.iter().enumerate() {
            // SAFETY: the backend owns `fd` and keeps it open while it lives;
            // the borrow ends with this call.
            let bfd = unsafe { BorrowedFd::borrow_raw(*fd) };
            epoll
                .add(
                    bfd,
                    EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_BACKEND + i as u64),
                )
                .map_err(sys("epoll add backend fd"))?;
        }
        let now = Instant::now();
        Ok(Bridge {
            driver,
            tap,
            next_report: (!cfg.stats_interval.is_zero()).then(|| now + cfg.stats_interval),
            cfg,
            counters: BridgeCounters::default(),
            epoll,
            signals,
            timer,
            backend_fds,
            tap_armed: true,
            tap_readable: true,
            rx_pending: true,
            catcher: ReplyCatcher::default(),
            link_recheck: false,
            left: false,
            started: now,
            last_work: now,
            forced_poll,
            last_forced_poll: now,
            discard: vec![0; 2 * (MAX_MTU + FRAME_HEADROOM)],
            interface_up: true,
            advert,
            negotiated: None,
            session: None,
            mtu_frame,
            offload: OffloadCounters::default(),
        })
    }

    /// Runs until SIGINT/SIGTERM; then leaves the link (state RESET) and
    /// switches the carrier off.
    pub fn run(&mut self) -> Result<(), BridgeError> {
        self.step_link();
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let timeout = self.wait_timeout()?;
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(sys("epoll_wait")(e)),
            };
            let mut link_event = false;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_TAP => self.tap_readable = true,
                    TOKEN_SIGNAL => {
                        if let Control::Quit(sig) = self.handle_signals() {
                            info!("{sig}: leaving the link");
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    TOKEN_TIMER => {
                        let _ = self.timer.wait();
                        link_event = true;
                        self.on_tick();
                    }
                    t if t >= TOKEN_BACKEND => {
                        let fd = self.backend_fds[(t - TOKEN_BACKEND) as usize];
                        let wake = self.driver.device_mut().on_wakeup(fd)?;
                        self.counters.doorbells_received += wake.doorbells;
                        link_event = true;
                        self.rx_pending = true;
                    }
                    _ => {}
                }
            }
            if let Some(period) = self.forced_poll
                && self.last_forced_poll.elapsed() >= period
            {
                self.last_forced_poll = Instant::now();
                link_event = true;
                self.rx_pending = true;
            }
            if link_event || std::mem::take(&mut self.link_recheck) {
                self.step_link();
            }
            let worked = self.pump()?;
            if worked {
                self.last_work = Instant::now();
            }
        }
    }

    /// How long epoll may sleep: not at all while there is work or while
    /// polling; otherwise until a descriptor fires, once the driver core has
    /// re-enabled notifications, re-armed the interrupt and re-checked
    /// (which may reveal work that arrived meanwhile); at most until a
    /// held-back handshake may start or a forced poll is due.
    fn wait_timeout(&mut self) -> Result<EpollTimeout, BridgeError> {
        let busy = match self.cfg.mode {
            Mode::Poll => true,
            Mode::Hybrid => self.last_work.elapsed() < self.cfg.busy_poll,
            Mode::Event => false,
        };
        if busy || self.rx_pending || (self.tap_readable && self.tap_armed && self.driver.running())
        {
            return Ok(EpollTimeout::ZERO);
        }
        let more = self.driver.prepare_sleep();
        self.sync_carrier();
        if more {
            self.rx_pending = true;
            self.link_recheck = true;
            return Ok(EpollTimeout::ZERO);
        }
        let held = self
            .driver
            .backoff_remaining_us()
            .map(Duration::from_micros);
        let limit = match (self.forced_poll, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(period) = limit {
            let ms = period.as_millis().clamp(1, u16::MAX as u128) as u16;
            return Ok(EpollTimeout::from(ms));
        }
        Ok(EpollTimeout::NONE)
    }

    fn on_tick(&mut self) {
        self.rx_pending = true;
        // `ip link set TAP down` stops the link like ndo_stop stops
        // ivshmem-net (the peer sees RESET); `up` restarts the handshake.
        match self.tap.is_up() {
            Ok(up) if up != self.interface_up => {
                info!(
                    "{}: interface {}",
                    self.tap.name(),
                    if up { "up" } else { "down" }
                );
                self.interface_up = up;
            }
            Ok(_) => {}
            Err(e) => debug!("{}: cannot read interface flags: {e}", self.tap.name()),
        }
        if let Some(at) = self.next_report
            && Instant::now() >= at
        {
            self.report("interval");
            self.next_report = Some(at + self.cfg.stats_interval);
        }
    }

    fn handle_signals(&mut self) -> Control {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGUSR1) => self.report("signal"),
                    Ok(Signal::SIGHUP) => debug!("SIGHUP ignored"),
                    Ok(sig) => return Control::Quit(sig),
                    Err(_) => {}
                },
                Ok(None) => return Control::Continue,
                Err(e) => {
                    warn!("signalfd read: {e}");
                    return Control::Continue;
                }
            }
        }
    }

    /// Steps the link (the driver core reads the peer's entry once,
    /// publishes, counts and logs) and switches the TAP carrier as it says.
    fn step_link(&mut self) {
        let update = self.driver.poll_link(self.interface_up);
        self.apply_carrier(update.carrier);
        if self.driver.running() {
            self.rx_pending = true;
        }
    }

    /// Applies a carrier change the driver core made inside a data-path
    /// call.
    fn sync_carrier(&mut self) {
        let change = self.driver.take_carrier_change();
        self.apply_carrier(change);
    }

    fn apply_carrier(&mut self, change: Option<bool>) {
        let Some(on) = change else { return };
        match self.tap.set_carrier(on) {
            Ok(()) => {
                let status = if on { "link up" } else { "link down" };
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
            }
            Err(e) => warn!("{}: cannot switch carrier: {e}", self.tap.name()),
        }
    }

    /// A data-path error from the peer: the driver core counts and logs it
    /// and resets the link.
    fn peer_error(&mut self, e: RingError) {
        let update = self.driver.data_error(e);
        self.apply_carrier(update.carrier);
    }

    /// One round of RX and TX; returns whether any frame moved.
    fn pump(&mut self) -> Result<bool, BridgeError> {
        if self.driver.running() {
            self.driver.reclaim();
            self.sync_carrier();
        }
        if !self.driver.running() {
            self.session = None;
            self.rx_pending = false;
            self.drain_tap_link_down();
            return Ok(false);
        }
        let d = self.driver.counters();
        let session = d.carrier_ups + d.carrier_downs + d.link_resets + d.protocol_faults;
        if self.session != Some(session) {
            self.session = Some(session);
            self.negotiate();
        }
        let rx = self.pump_rx();
        let tx = self.pump_tx()?;
        self.driver.flush();
        Ok(rx + tx > 0)
    }

    /// Decides from both extension blocks what the link carries (the same
    /// rule on both sides, so both agree) and sets the ring's frame limit
    /// and the TAP's offloads accordingly. Called whenever the link
    /// (re)enters RUN: the peer is then READY or RUN, so its block is
    /// written.
    fn negotiate(&mut self) {
        let peer = self.driver.endpoint().peer_extension();
        let mut negotiated = offload::negotiate(self.advert, &peer, self.mtu_frame);
        let max = negotiated.map_or(self.mtu_frame, |n| n.max_frame);
        if let Err(e) = self.driver.endpoint_mut().set_max_frame_len(max) {
            warn!("negotiated frames of {max} bytes do not fit the ring ({e}): plain frames");
            negotiated = None;
            let _ = self.driver.endpoint_mut().set_max_frame_len(self.mtu_frame);
        }
        if self.tap.vnet_hdr() {
            let flags = negotiated.map_or(0, |n| n.features.tun_flags());
            if let Err(e) = self.tap.set_offload(flags) {
                warn!("{}: TUNSETOFFLOAD {flags:#x} failed: {e}", self.tap.name());
            }
        }
        if negotiated != self.negotiated
            || self.offload.negotiated_links + self.offload.plain_links == 0
        {
            match &negotiated {
                Some(n) => info!(
                    "offloads negotiated with the peer: {:?}, frames up to {} bytes",
                    n.features, n.max_frame
                ),
                None if self.advert.is_some() => {
                    info!("the peer offers no offloads: plain ivshmem-net frames")
                }
                None => {}
            }
        }
        if negotiated.is_some() {
            self.offload.negotiated_links += 1;
        } else {
            self.offload.plain_links += 1;
        }
        self.negotiated = negotiated;
    }

    fn pump_rx(&mut self) -> u32 {
        let mut moved = 0;
        self.rx_pending = false;
        while moved < self.cfg.budget {
            match self.driver.endpoint_mut().rx_peek() {
                Ok(Some(frame)) => {
                    // SAFETY: `frame.as_ptr()` points to `frame.len()` bytes
                    // inside the peer's section that the ring validated to lie
                    // in its data area; they stay mapped and are not reused by
                    // the peer until the frame is released below. No
                    // reference to them is formed; write(2) copies them.
                    let len = frame.len();
                    let res = if !self.tap.vnet_hdr() {
                        // SAFETY: see above.
                        unsafe { self.tap.write_raw(frame.as_ptr(), len) }
                    } else if let Some(n) = &self.negotiated {
                        // The header is copied out once, validated, and
                        // handed to the kernel from the copy.
                        let mut hdr = [0u8; HDR_LEN];
                        let checked = if len < HDR_LEN {
                            Err(offload::HdrError::TooShort(len))
                        } else {
                            let _ = frame.read_at(0, &mut hdr);
                            offload::check_header(&hdr, len - HDR_LEN, Some(n), self.mtu_frame)
                        };
                        match checked {
                            Ok(kind) => {
                                self.offload.count(kind, false);
                                // SAFETY: as above, for the bytes after the
                                // header (len >= HDR_LEN was checked).
                                unsafe {
                                    self.tap.write_split(
                                        &hdr,
                                        frame.as_ptr().wrapping_add(HDR_LEN),
                                        len - HDR_LEN,
                                    )
                                }
                            }
                            Err(e) => {
                                self.offload.drop_bad_header += 1;
                                if self.offload.drop_bad_header.is_power_of_two() {
                                    warn!(
                                        "dropped a {len}-byte frame from the peer: bad virtio-net                                          header: {e} ({} such drops so far)",
                                        self.offload.drop_bad_header
                                    );
                                }
                                frame.release();
                                moved += 1;
                                continue;
                            }
                        }
                    } else {
                        // SAFETY: as above.
                        unsafe { self.tap.write_split(&[0; HDR_LEN], frame.as_ptr(), len) }
                    };
                    if let Err(e) = res {
                        self.counters.drop_tap_write += 1;
                        if self.counters.drop_tap_write.is_power_of_two() {
                            warn!(
                                "{}: writing a {}-byte frame failed: {e} ({} such drops so far)",
                                self.tap.name(),
                                frame.len(),
                                self.counters.drop_tap_write
                            );
                        }
                    } else {
                        self.counters.tap_written_frames += 1;
                        self.counters.tap_written_bytes += len as u64;
                    }
                    frame.release();
                    moved += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    self.peer_error(e);
                    return moved;
                }
            }
        }
        if moved == self.cfg.budget {
            self.rx_pending = true;
        }
        if moved > 0 && self.tap_armed && !self.tap_readable && self.catcher.try_now() {
            self.tap_readable = true;
        }
        moved
    }

    fn pump_tx(&mut self) -> Result<u32, BridgeError> {
        let mut moved = 0;
        let capacity = self.driver.endpoint().max_frame_len();
        if !self.tap_armed && self.driver.endpoint_mut().tx_ready() {
            self.arm_tap(true)?;
        }
        while self.tap_readable && self.tap_armed && moved < self.cfg.budget {
            if !self.driver.endpoint_mut().tx_ready() {
                self.counters.ring_full_events += 1;
                self.arm_tap(false)?;
                break;
            }
            let Ok(mut slot) = self.driver.endpoint_mut().tx_reserve(capacity) else {
                self.counters.ring_full_events += 1;
                self.arm_tap(false)?;
                break;
            };
            // SAFETY: the slot is `slot.capacity()` writable bytes of the own
            // output section, reserved for us and not yet visible to the
            // peer; nothing else references them during the read.
            let mut hdr = [0u8; HDR_LEN];
            let read = if !self.tap.vnet_hdr() || self.negotiated.is_some() {
                // Plain TAP, or the header goes on the wire as it is.
                // SAFETY: see above.
                unsafe { self.tap.read_raw(slot.as_mut_ptr(), slot.capacity()) }
            } else {
                // SAFETY: as above; the header goes to a local.
                unsafe {
                    self.tap
                        .read_split(&mut hdr, slot.as_mut_ptr(), slot.capacity())
                }
            };
            self.catcher.saw(matches!(read, Ok(Some(_))));
            match read {
                Ok(Some(len)) if len > 0 && len <= slot.capacity() => {
                    self.counters.tap_read_frames += 1;
                    self.counters.tap_read_bytes += len as u64;
                    if self.tap.vnet_hdr() {
                        let payload = if self.negotiated.is_some() {
                            let _ = slot.read_at(0, &mut hdr);
                            len.saturating_sub(HDR_LEN)
                        } else {
                            len
                        };
                        match offload::check_header(
                            &hdr,
                            payload,
                            self.negotiated.as_ref(),
                            self.mtu_frame,
                        ) {
                            Ok(kind) => self.offload.count(kind, true),
                            Err(e) => {
                                // An offload from before a renegotiation.
                                self.offload.drop_unnegotiated += 1;
                                debug!("TAP frame not sendable on this link: {e}");
                                continue;
                            }
                        }
                    }
                    if let Err(e) = slot.commit(len) {
                        // Cannot happen for 0 < len <= capacity; count it
                        // rather than lose the frame silently.
                        self.counters.drop_oversize += 1;
                        debug!("commit of {len} bytes refused: {e}");
                    } else {
                        moved += 1;
                    }
                }
                Ok(Some(len)) => {
                    self.counters.tap_read_frames += 1;
                    self.counters.drop_oversize += 1;
                    if self.counters.drop_oversize.is_power_of_two() {
                        warn!(
                            "{}: dropped a {len}-byte frame that does not fit the link MTU {} (was the \
                             interface MTU raised? {} such drops so far)",
                            self.tap.name(),
                            self.cfg.mtu,
                            self.counters.drop_oversize
                        );
                    }
                }
                Ok(None) => {
                    self.tap_readable = false;
                }
                Err(e) => {
                    warn!("TAP read failed: {e}");
                    self.tap_readable = false;
                }
            }
        }
        Ok(moved)
    }

    fn arm_tap(&mut self, on: bool) -> Result<(), BridgeError> {
        if self.tap_armed == on {
            return Ok(());
        }
        let flags = if on {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::empty()
        };
        let mut ev = EpollEvent::new(flags, TOKEN_TAP);
        self.epoll
            .modify(tap_fd(&self.tap), &mut ev)
            .map_err(sys("epoll modify TAP"))?;
        self.tap_armed = on;
        if on {
            self.tap_readable = true;
        }
        Ok(())
    }

    /// Frames the kernel queued on the TAP while the link is down cannot go
    /// anywhere: read and count them, so nothing stale is sent later.
    fn drain_tap_link_down(&mut self) {
        if !self.tap_armed {
            let _ = self.arm_tap(true);
        }
        while self.tap_readable {
            let cap = self.discard.len();
            // SAFETY: `discard` is a private buffer of `cap` bytes.
            match unsafe { self.tap.read_raw(self.discard.as_mut_ptr(), cap) } {
                Ok(Some(_)) => {
                    self.counters.tap_read_frames += 1;
                    self.counters.drop_link_down += 1;
                }
                _ => self.tap_readable = false,
            }
        }
    }

    /// Leaves the link: RESET, carrier off, final report.
    pub fn shutdown(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let _ = self.driver.shutdown();
        let _ = self.tap.set_carrier(false);
        self.left = true;
        self.report("exit");
    }

    fn report(&self, reason: &str) {
        let d = self.driver.counters();
        let s = self.driver.endpoint().stats();
        let ring = RingCounters {
            tx_frames: s.tx_frames,
            tx_bytes: s.tx_bytes,
            rx_frames: s.rx_frames,
            rx_bytes: s.rx_bytes,
            doorbells_requested: s.doorbells_requested,
            notifications_suppressed: s.notifications_suppressed,
            tx_ring_full: s.tx_ring_full,
            // Resets caused by the peer; leaving the link is not one.
            link_resets: d.link_resets,
            peer_errors: s.total_errors(),
        };
        // The peer's state as last read while this side was on the link;
        // after leaving, nothing is watched and nothing is claimed.
        let peer_state = (!self.left)
            .then(|| self.driver.peer_state_raw())
            .flatten()
            .map(|raw| {
                LinkState::from_raw(raw)
                    .map_or_else(|| format!("{raw:#x}"), |s| s.name().to_owned())
            });
        let offloads = match (&self.negotiated, self.advert) {
            (Some(n), _) => format!("{:?}", n.features),
            (None, Some(_)) => "plain (peer offers none)".to_owned(),
            (None, None) => "off".to_owned(),
        };
        Report {
            reason,
            uptime_s: crate::stats::uptime(self.started),
            tap: self.tap.name(),
            state: self.driver.local_state().name(),
            peer_state: peer_state.as_deref(),
            carrier: self.driver.carrier() && !self.left,
            bridge: BridgeCounters {
                doorbells_sent: d.doorbells_rung.iter().sum(),
                state_doorbells_sent: d.state_writes,
                carrier_changes: d.carrier_ups + d.carrier_downs,
                peer_errors: d.protocol_faults,
                ..self.counters
            },
            ring,
            driver: d,
            offloads: &offloads,
            offload: self.offload,
        }
        .emit(self.cfg.stats_json);
    }
}

/// Catches a reply in the round that wrote its request.
///
/// The kernel answers many frames written to the TAP (an ICMP echo, a TCP
/// ACK) inside the `write` itself, so the reply is queued on the TAP before
/// the bridge looks again. Reading the TAP at once sends it in the same
/// round and saves the loop a pass through `prepare_sleep` and an
/// `epoll_wait` on the round trip's critical path. Where frames written
/// are rarely answered at once (the side whose TAP leads to the pinging
/// socket), that read only finds the TAP empty: after such a miss the
/// bridge waits for epoll as before and tries again only every
/// [`ReplyCatcher::PROBE`] rounds, so the miss costs 1/PROBE of a `read`.
#[derive(Clone, Copy, Debug, Default)]
struct ReplyCatcher {
    /// The last early read found a frame.
    hit: bool,
    /// Rounds since the last early read, while missing.
    skipped: u8,
    /// An early read is in progress: its result decides `hit`.
    armed: bool,
}

impl ReplyCatcher {
    const PROBE: u8 = 16;

    /// Whether to read the TAP now, after frames were written to it.
    fn try_now(&mut self) -> bool {
        let now = self.hit || {
            self.skipped += 1;
            self.skipped >= Self::PROBE
        };
        if now {
            self.skipped = 0;
            self.armed = true;
        }
        now
    }

    /// The result of a TAP read: whether it returned a frame.
    fn saw(&mut self, frame: bool) {
        if std::mem::take(&mut self.armed) {
            self.hit = frame;
        }
    }
}

fn tap_fd(tap: &Tap) -> BorrowedFd<'_> {
    // SAFETY: the TAP's descriptor lives as long as `tap`, which outlives the
    // returned borrow.
    unsafe { BorrowedFd::borrow_raw(tap.as_raw_fd()) }
}

/// Which offloads the kernel lets this TAP take (`TUNSETOFFLOAD` probes,
/// USO first, as older kernels lack it), then switches them off until a
/// link negotiates them.
fn probe_offloads(tap: &Tap) -> Features {
    let candidates = [
        Features::all(),
        Features::all() - Features::USO,
        Features::CSUM,
    ];
    let found = candidates
        .into_iter()
        .find(|f| tap.set_offload(f.tun_flags()).is_ok())
        .unwrap_or(Features::empty());
    if let Err(e) = tap.set_offload(0) {
        warn!("{}: TUNSETOFFLOAD 0 failed: {e}", tap.name());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::ReplyCatcher;

    #[test]
    fn reply_catcher_reads_early_while_replies_come_and_backs_off_after_a_miss() {
        let mut c = ReplyCatcher::default();
        // Starts cautious: the first early read comes after PROBE rounds.
        let first = (1..=ReplyCatcher::PROBE)
            .find(|_| c.try_now())
            .expect("an early read within PROBE rounds");
        assert_eq!(first, ReplyCatcher::PROBE);
        c.saw(true);
        // While early reads find replies, every round reads early.
        for _ in 0..5 {
            assert!(c.try_now());
            c.saw(true);
        }
        // One miss: back to one early read per PROBE rounds.
        assert!(c.try_now());
        c.saw(false);
        let tries = (0..3 * ReplyCatcher::PROBE).filter(|_| c.try_now()).count();
        assert_eq!(tries, 3);
    }

    #[test]
    fn reply_catcher_ignores_reads_it_did_not_ask_for() {
        let mut c = ReplyCatcher::default();
        // A read epoll asked for says nothing about early reads.
        c.saw(true);
        assert!(!c.try_now());
    }
}
