//! The ivshmem-net NIC: an `ivnet_ring::Endpoint` over the device's two
//! output sections, driven by doorbells, plus a `smoltcp` `phy::Device`.
//!
//! The ring library decides *what* to write and *whether* to ring; this
//! module carries its decisions out on the device (publish the own state,
//! ring vector 0 for state changes and vector 1 for data) and keeps the
//! counters an operator reads on the serial console.
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
//!   the token writes the frame in place into the own section (zero-copy)
//!   and queues it; it becomes visible to the peer at the next flush.

use core::fmt;

use ivnet_guest::cmdline::Mode;
use ivnet_ring::{
    Config, Endpoint, LinkState, Notify, OwnSection, PeerSection, RingError, Stats, StepOutput,
};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::device::NicDevice;
use crate::println;

/// Doorbell vector for data (new frames, completions).
pub const VECTOR_DATA: u16 = 1;
/// Ethernet header bytes on top of the IP MTU.
pub const ETHERNET_HEADER: usize = 14;
/// Largest frame the guest handles: the maximum IP MTU plus the Ethernet
/// header and room for a VLAN tag (what the ring accepts).
pub const MAX_FRAME: usize = ivnet_guest::cmdline::MAX_MTU as usize + 18;

/// Guest-side counters (the ring keeps its own, see [`Stats`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverCounters {
    /// Doorbells actually written to the device, data vector.
    pub doorbells_rung: u64,
    /// State publications (each rings vector 0 on QEMU).
    pub state_writes: u64,
    /// Carrier transitions to on.
    pub carrier_ups: u64,
    /// Carrier transitions to off.
    pub carrier_downs: u64,
    /// TX tokens that found no slot (should stay 0: tokens are only handed
    /// out with a free slot).
    pub tx_token_no_slot: u64,
    /// Frames smoltcp built larger than the slot it was given (dropped).
    pub tx_oversize: u64,
    /// Data-path errors reported by the ring (peer protocol violations).
    pub ring_errors: u64,
    /// Doorbell writes the device refused (a driver bug if nonzero).
    pub ring_refused: u64,
}

/// The NIC.
pub struct Nic {
    device: NicDevice,
    endpoint: Endpoint,
    mode: Mode,
    mtu: usize,
    counters: DriverCounters,
    /// Own copy of the peer's state-table entry as last fed to the ring.
    last_peer_raw: Option<u32>,
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
}

impl fmt::Display for NicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicError::BadSection => write!(f, "output section pointer null or misaligned"),
            NicError::Geometry(e) => write!(f, "ring geometry: {e}"),
        }
    }
}

impl Nic {
    /// Builds the endpoint over the device's sections. The link stays in
    /// RESET until [`Nic::step_link`] runs.
    pub fn new(
        device: NicDevice,
        mode: Mode,
        mtu: u16,
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
        let mtu = usize::from(mtu);
        let endpoint =
            Endpoint::new(own, peer, Config::with_mtu(mtu)).map_err(NicError::Geometry)?;
        println!(
            "nic: ivshmem-net on {:?} {} (peer {} -> {}, {} MSI-X vectors), mode {:?}, mtu {mtu}",
            device.profile, device.bdf, device.id, device.peer, device.vectors, mode
        );
        Ok(Nic {
            device,
            endpoint,
            mode,
            mtu,
            counters: DriverCounters::default(),
            last_peer_raw: None,
            rx_buf,
            tx_scratch,
        })
    }

    /// The ring endpoint (geometry, state).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Ring counters.
    pub fn stats(&self) -> &Stats {
        self.endpoint.stats()
    }

    /// Driver counters.
    pub fn counters(&self) -> &DriverCounters {
        &self.counters
    }

    fn ring(&mut self, vector: u16) {
        if !self.device.ring(vector) {
            self.counters.ring_refused += 1;
        }
    }

    fn apply(&mut self, out: StepOutput) {
        if let Some(state) = out.write_state {
            self.device.set_own_state(state.raw());
            self.counters.state_writes += 1;
        }
        if let Some(e) = out.error {
            println!("link: peer protocol error: {e}; resetting the link");
        }
        if let Some(on) = out.carrier {
            if on {
                self.counters.carrier_ups += 1;
            } else {
                self.counters.carrier_downs += 1;
            }
            println!(
                "link: carrier {} (local {}, peer {})",
                if on { "on" } else { "off" },
                self.endpoint.local_state(),
                self.endpoint
                    .peer_state()
                    .map_or("invalid", LinkState::name)
            );
        }
    }

    /// Takes the link to RESET (cell shutdown) and tells the peer.
    pub fn shutdown(&mut self) {
        let out = self.endpoint.shutdown();
        self.apply(out);
    }

    /// Reads the peer's state once and runs the link state machine. `force`
    /// re-runs it even if the peer's entry did not change (after a vector-0
    /// interrupt, after a data-path error, and periodically).
    pub fn step_link(&mut self, force: bool) {
        let raw = self.device.peer_state();
        if !force && self.last_peer_raw == Some(raw) && !self.endpoint_faulted() {
            return;
        }
        self.last_peer_raw = Some(raw);
        let out = self.endpoint.on_peer_state(raw, true);
        self.apply(out);
    }

    fn endpoint_faulted(&self) -> bool {
        self.endpoint.local_state() == LinkState::Run && !self.endpoint.running()
    }

    /// Reports and counts a data-path error (the peer broke the protocol)
    /// and lets the state machine reset the link.
    fn data_error(&mut self, e: RingError) {
        self.counters.ring_errors += 1;
        println!("link: peer protocol error: {e}; resetting the link");
        self.step_link(true);
    }

    /// Processes TX completions.
    pub fn reclaim(&mut self) {
        if self.endpoint.running()
            && let Err(e) = self.endpoint.reclaim()
        {
            self.data_error(e);
        }
    }

    /// Publishes completed RX frames and queued TX frames, ringing the peer
    /// when its event index asks for it (at most one doorbell per flush).
    pub fn flush(&mut self) {
        let rx = self.endpoint.flush_rx();
        let tx = self.endpoint.flush_tx();
        if rx == Notify::Doorbell || tx == Notify::Doorbell {
            self.ring(VECTOR_DATA);
            self.counters.doorbells_rung += 1;
        }
    }

    /// Whether one more maximum-size frame can be queued now.
    pub fn can_transmit(&mut self) -> bool {
        self.endpoint.tx_ready()
    }

    /// Whether received frames are waiting.
    pub fn rx_pending(&mut self) -> bool {
        match self.endpoint.rx_pending() {
            Ok(p) => p,
            Err(e) => {
                self.data_error(e);
                false
            }
        }
    }

    /// Leaves busy polling (event mode): publishes `avail_event` and
    /// re-checks. Returns `true` if frames arrived meanwhile, i.e. polling
    /// must go on. In poll mode the peer is never asked to ring.
    pub fn arm_rx_notify(&mut self) -> bool {
        if self.mode == Mode::Poll || !self.endpoint.running() {
            return false;
        }
        match self.endpoint.enable_rx_notify() {
            Ok(more) => more,
            Err(e) => {
                self.data_error(e);
                false
            }
        }
    }

    /// Re-arms the device's interrupt (one-shot on Jailhouse).
    pub fn rearm(&self) {
        self.device.rearm();
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
    counters: &'a mut DriverCounters,
    scratch: &'a mut [u8; MAX_FRAME],
}

impl phy::TxToken for NicTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if len > self.endpoint.max_frame_len() {
            // smoltcp never builds frames above the advertised MTU; if it
            // did, the frame is built into scratch space and dropped.
            self.counters.tx_oversize += 1;
            let n = len.min(MAX_FRAME);
            return f(&mut self.scratch[..n]);
        }
        match self.endpoint.tx_reserve(len) {
            Ok(mut slot) => {
                // No `&mut [u8]` into shared memory: build the frame in the
                // scratch buffer, then copy it into the slot.
                let r = f(&mut self.scratch[..len]);
                // `len` fits the slot (reserved with this length).
                if slot.write_at(0, &self.scratch[..len]).is_ok() {
                    let _ = slot.commit(len);
                }
                r
            }
            Err(_) => {
                self.counters.tx_token_no_slot += 1;
                f(&mut self.scratch[..len])
            }
        }
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = NicRxToken<'a>;
    type TxToken<'a> = NicTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.endpoint.tx_ready() {
            return None;
        }
        let len = match self.endpoint.recv(&mut self.rx_buf[..]) {
            Ok(Some(len)) => len,
            Ok(None) => return None,
            Err(e) => {
                self.data_error(e);
                return None;
            }
        };
        Some((
            NicRxToken {
                frame: &self.rx_buf[..len],
            },
            NicTxToken {
                endpoint: &mut self.endpoint,
                counters: &mut self.counters,
                scratch: &mut *self.tx_scratch,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.endpoint.tx_ready() {
            return None;
        }
        Some(NicTxToken {
            endpoint: &mut self.endpoint,
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
