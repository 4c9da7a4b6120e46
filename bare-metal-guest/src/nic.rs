//! The ivshmem-net NIC: the driver core (`ivnet_driver::Driver`, which owns
//! the ring endpoint and the link state machine) over the guest's device,
//! plus a `smoltcp` `phy::Device`.
//!
//! The driver core decides and acts through `ivnet_driver::DeviceLink`
//! (the `ivshmem` device as its platform): RESET at start,
//! the link steps, the data doorbell vector (1 with two or more MSI-X
//! vectors, else 0), one doorbell decision per flush, protocol faults as
//! counted resets with renegotiation backoff, rate-limited log records.
//! This module keeps only the guest's part: handing frames to smoltcp and
//! the guest-only counters.
//!
//! smoltcp's token model maps onto the ring as follows:
//!
//! - `receive()` hands out a frame only when one is waiting *and* a TX slot
//!   is free (the paired TX token may be used for an immediate reply such as
//!   an ICMP echo or an ACK). The frame is copied out of the peer's section
//!   into a guest buffer first — smoltcp wants a `&[u8]`, and no reference
//!   may point into memory the peer can write — and completed at once; the
//!   completion is published with the next [`Nic::flush`] (one Release
//!   store and one doorbell decision per batch).
//! - `transmit()` hands out a token only when a maximum-size frame fits;
//!   the token builds the frame in the guest's scratch buffer (no `&mut`
//!   into shared memory either) and copies it into the own section with
//!   the ring's `send`; it becomes visible to the peer at the next flush.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use ivnet_driver::{Counters, DeviceLink, Driver, DriverConfig, LinkUpdate};
use ivnet_guest::cmdline::Mode;
use ivnet_ring::geometry::FRAME_HEADROOM;
use ivnet_ring::{Config, Endpoint, OwnSection, PeerSection, Stats, TxError};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::device::NicDevice;
use crate::net::NetDevice;
use crate::{logger, println};

/// Ethernet header bytes on top of the IP MTU (smoltcp's MTU is the frame
/// without VLAN tag).
pub const ETHERNET_HEADER: usize = 14;
/// Largest frame the guest handles: the maximum IP MTU plus the ring's
/// per-frame headroom (Ethernet header and a VLAN tag).
pub const MAX_FRAME: usize = ivnet_guest::cmdline::MAX_MTU as usize + FRAME_HEADROOM;

/// The main loop's clock reading for the current round, the driver core's
/// clock (one RDTSC per round: under nested KVM every RDTSC is a VM exit).
static ROUND_NOW_US: AtomicU64 = AtomicU64::new(0);

fn round_now_us() -> u64 {
    ROUND_NOW_US.load(Ordering::Relaxed)
}

/// Guest-only counters (the driver core and the ring keep theirs).
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestCounters {
    /// TX tokens that found no slot (should stay 0: tokens are only handed
    /// out with a free slot).
    pub tx_token_no_slot: u64,
    /// Frames smoltcp built larger than the link's maximum (dropped).
    pub tx_oversize: u64,
}

/// The NIC.
pub struct Nic {
    driver: Driver<DeviceLink<'static>>,
    mode: Mode,
    mtu: usize,
    counters: GuestCounters,
    /// When the renegotiation backoff lets the next handshake start: poll
    /// the link by then (no doorbell comes for it).
    link_held_until: Option<u64>,
    rx_buf: &'static mut [u8; MAX_FRAME],
    tx_scratch: &'static mut [u8; MAX_FRAME],
}

/// Why the NIC could not be created.
#[derive(Clone, Copy, Debug)]
pub enum NicError {
    /// A section pointer is null or misaligned.
    BadSection,
    /// The section size does not give a usable ring for the MTU.
    Geometry(ivnet_ring::GeometryError),
    /// The device does not carry an ivshmem-net link.
    Link(ivnet_driver::LinkShapeError),
}

impl fmt::Display for NicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicError::BadSection => write!(f, "output section pointer null or misaligned"),
            NicError::Geometry(e) => write!(f, "ring geometry: {e}"),
            NicError::Link(e) => write!(f, "{e}"),
        }
    }
}

impl Nic {
    /// Builds the endpoint and the driver core over the device's sections.
    /// `mtu: None` takes the section's default (`Geometry::default_mtu`,
    /// the reference rule). The
    /// link stays in RESET until [`Nic::poll_link`] runs (its first call
    /// publishes RESET).
    pub fn new(
        device: NicDevice,
        mode: Mode,
        mtu: Option<u16>,
        rx_buf: &'static mut [u8; MAX_FRAME],
        tx_scratch: &'static mut [u8; MAX_FRAME],
    ) -> Result<Nic, NicError> {
        let (own_ptr, own_len) = device.own_section();
        let (peer_ptr, peer_len) = device.peer_section();
        // SAFETY: `bring_up` mapped the own output section read-write for
        // the guest's lifetime, and nothing else in the guest writes it (the
        // endpoint owns it from here on).
        let own = unsafe { OwnSection::new(own_ptr, own_len) }.ok_or(NicError::BadSection)?;
        // SAFETY: the peer's output section is mapped read-only for the
        // guest's lifetime; the ring only reads it through atomics and
        // volatile copies.
        let peer = unsafe { PeerSection::new(peer_ptr, peer_len) }.ok_or(NicError::BadSection)?;
        // `None`: the reference rule for the section (`Geometry::default_mtu`,
        // at most 16384 = the guest's `MAX_MTU`, which its buffers hold).
        let config = Config {
            mtu: mtu.map(usize::from),
        };
        let endpoint = Endpoint::new(own, peer, config).map_err(NicError::Geometry)?;
        let mtu = endpoint.mtu();
        println!(
            "nic: ivshmem-net on {:?} {} (peer {} -> {}, {} interrupt vectors), mode {:?}, mtu {mtu}",
            device.profile, device.bdf, device.id, device.peer, device.vectors, mode
        );
        let link = device.into_link(round_now_us).map_err(NicError::Link)?;
        let driver = Driver::new(link, endpoint, DriverConfig::default());
        println!("nic: data doorbells on vector {}", driver.data_vector());
        Ok(Nic {
            driver,
            mode,
            mtu,
            counters: GuestCounters::default(),
            link_held_until: None,
            rx_buf,
            tx_scratch,
        })
    }

    /// The ring endpoint (geometry, state).
    pub fn endpoint(&self) -> &Endpoint {
        self.driver.endpoint()
    }

    /// Ring counters.
    pub fn stats(&self) -> &Stats {
        self.driver.endpoint().stats()
    }

    /// Driver-core counters.
    pub fn driver_counters(&self) -> Counters {
        self.driver.counters()
    }

    /// Guest-only counters.
    pub fn counters(&self) -> &GuestCounters {
        &self.counters
    }

    /// The vector data doorbells go to.
    pub fn data_vector(&self) -> u16 {
        self.driver.data_vector()
    }

    /// Starts a main-loop round: the clock the driver core reads.
    pub fn set_now(&mut self, now_us: u64) {
        ROUND_NOW_US.store(now_us, Ordering::Relaxed);
    }

    /// Reads the peer's state entry and steps the link (the first call
    /// publishes RESET). Cheap (one load): the main loop calls it every
    /// round, which covers vector-0 interrupts, data-path faults and lost
    /// interrupts alike.
    pub fn poll_link(&mut self, now_us: u64) {
        let update = self.driver.poll_link(true);
        self.apply(update, now_us);
    }

    /// Takes the link to RESET (cell shutdown) and tells the peer.
    pub fn shutdown(&mut self) {
        let update = self.driver.shutdown();
        self.apply(update, round_now_us());
    }

    /// Notes what a link step changed. The carrier has no consumer in the
    /// guest (smoltcp runs regardless; the driver logs the change); a
    /// backoff hold-back becomes a wake-up deadline.
    fn apply(&mut self, update: LinkUpdate, now_us: u64) {
        let _ = update.carrier;
        self.link_held_until = update.held_us.map(|h| now_us.saturating_add(h));
    }

    /// When the held-back handshake may start, if the backoff holds it.
    pub fn link_held_until(&self) -> Option<u64> {
        self.link_held_until
    }

    /// Processes TX completions.
    pub fn reclaim(&mut self) {
        if self.driver.running() {
            self.driver.reclaim();
        }
    }

    /// Publishes completed RX frames and queued TX frames, ringing the peer
    /// on the data vector when its event index asks for it (at most one
    /// doorbell per flush).
    pub fn flush(&mut self) {
        self.driver.flush();
    }

    /// Whether one more maximum-size frame can be queued now.
    pub fn can_transmit(&mut self) -> bool {
        self.driver.endpoint_mut().tx_ready()
    }

    /// Whether received frames are waiting.
    pub fn rx_pending(&mut self) -> bool {
        self.driver.rx_pending()
    }

    /// Before sleeping (event mode): asks the peer for an RX doorbell,
    /// re-arms the device interrupt, and only then re-checks the RX ring
    /// and the peer's state entry (the core's `prepare_sleep`). Returns
    /// `true` if there is work after all: poll again instead of sleeping.
    pub fn prepare_sleep(&mut self) -> bool {
        debug_assert!(self.mode == Mode::Event, "poll mode never sleeps");
        self.driver.prepare_sleep()
    }

    /// The IP MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }
}

/// A received frame, already copied out of shared memory.
pub struct NicRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for NicRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Permission to send one frame of up to MTU + 14 bytes.
pub struct NicTxToken<'a> {
    endpoint: &'a mut Endpoint,
    counters: &'a mut GuestCounters,
    scratch: &'a mut [u8; MAX_FRAME],
}

impl NicTxToken<'_> {
    /// Builds a frame of `len` bytes with `build` and sends it if `build`
    /// says so (`NetDevice::build_frame`).
    fn build<R>(self, len: usize, build: impl FnOnce(&mut [u8]) -> (R, bool)) -> R {
        // Built in the guest's scratch buffer (smoltcp wants a `&mut [u8]`,
        // and none may point into shared memory), then copied into the own
        // section by the ring.
        let n = len.min(MAX_FRAME);
        let (r, send) = build(&mut self.scratch[..n]);
        if !send {
            return r;
        }
        match self.endpoint.send(&self.scratch[..n]) {
            Ok(()) => {}
            Err(TxError::TooLong { .. }) => self.counters.tx_oversize += 1,
            // Empty frames are never built; `Full`/`LinkDown` only if the
            // ring changed since the token was handed out.
            Err(_) => self.counters.tx_token_no_slot += 1,
        }
        r
    }
}

impl phy::TxToken for NicTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.build(len, |frame| (f(frame), true))
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = NicRxToken<'a>;
    type TxToken<'a> = NicTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.driver.endpoint_mut().tx_ready() {
            return None;
        }
        let len = self.driver.recv(&mut self.rx_buf[..])?;
        Some((
            NicRxToken {
                frame: &self.rx_buf[..len],
            },
            NicTxToken {
                endpoint: self.driver.endpoint_mut(),
                counters: &mut self.counters,
                scratch: &mut *self.tx_scratch,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.driver.endpoint_mut().tx_ready() {
            return None;
        }
        Some(NicTxToken {
            endpoint: self.driver.endpoint_mut(),
            counters: &mut self.counters,
            scratch: &mut *self.tx_scratch,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER;
        caps.max_burst_size = None;
        // The far side is a TAP into real stacks: compute and verify.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        caps.checksum = checksum;
        caps
    }
}

/// The main loop's view (`net::run`): the inherent methods above, plus the
/// ring's part of the boot and counters lines.
impl NetDevice for Nic {
    const NAME: &'static str = "ivnet";

    fn build_frame<'a, R>(
        token: Self::TxToken<'a>,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> (R, bool),
    ) -> R
    where
        Self: 'a,
    {
        token.build(len, build)
    }

    fn set_now(&mut self, now_us: u64) {
        Nic::set_now(self, now_us)
    }

    fn poll_link(&mut self, now_us: u64) {
        Nic::poll_link(self, now_us)
    }

    fn shutdown(&mut self) {
        Nic::shutdown(self)
    }

    fn link_held_until(&self) -> Option<u64> {
        Nic::link_held_until(self)
    }

    fn reclaim(&mut self) {
        Nic::reclaim(self)
    }

    fn flush(&mut self) {
        Nic::flush(self)
    }

    fn can_transmit(&mut self) -> bool {
        Nic::can_transmit(self)
    }

    fn rx_pending(&mut self) -> bool {
        Nic::rx_pending(self)
    }

    fn prepare_sleep(&mut self) -> bool {
        Nic::prepare_sleep(self)
    }

    fn mtu(&self) -> usize {
        Nic::mtu(self)
    }

    fn carrier(&self) -> bool {
        self.driver.carrier()
    }

    fn write_link(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        let g = self.endpoint().geometry();
        write!(
            w,
            "ring: queue {} entries, data area {:#x} bytes",
            g.queue_len, g.data_size
        )
    }

    fn write_counters(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        let ep = self.endpoint();
        let s = self.stats();
        let d = self.driver_counters();
        let g = self.counters();
        let doorbells = d.doorbells_rung[0] + d.doorbells_rung[1];
        write!(
            w,
            " link={}/{} carrier={} rx_frames={} rx_bytes={} tx_frames={} tx_bytes={} \
             tx_batches={} doorbells_rung={doorbells} notifications={doorbells} doorbells_suppressed={} \
             tx_ring_full={} tx_completion_requests={} link_resets={} ring_errors={} rx_oversize={} \
             tx_no_slot={} data_vector={} doorbells_v0={} doorbells_v1={} doorbells_refused={} \
             state_writes={} state_writes_refused={} carrier_ups={} carrier_downs={} protocol_faults={} \
             backoff_waits={} short_links={} log_suppressed={} tx_oversize={}",
            ep.local_state(),
            ep.peer_state().map_or("?", |p| p.name()),
            u8::from(ep.carrier()),
            s.rx_frames,
            s.rx_bytes,
            s.tx_frames,
            s.tx_bytes,
            s.tx_batches,
            s.notifications_suppressed,
            s.tx_ring_full,
            s.tx_completion_irq_requests,
            d.link_resets,
            s.total_errors(),
            s.rx_dropped_oversize,
            g.tx_token_no_slot,
            self.data_vector(),
            d.doorbells_rung[0],
            d.doorbells_rung[1],
            d.doorbells_refused,
            d.state_writes,
            d.state_writes_refused,
            d.carrier_ups,
            d.carrier_downs,
            d.protocol_faults,
            d.backoff_waits,
            d.short_links,
            d.log_suppressed + logger::dropped(),
            g.tx_oversize,
        )
    }
}
