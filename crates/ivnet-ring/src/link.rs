//! The ivshmem-net link state machine, as a pure type.
//!
//! Each peer publishes one of four states in its state-table entry:
//!
//! | value | state | meaning |
//! |---:|---|---|
//! | 0 | RESET | not participating (also what the hypervisor writes when a peer leaves) |
//! | 1 | INIT  | present, wants a link |
//! | 2 | READY | own section zeroed and initialised |
//! | 3 | RUN   | data path running |
//!
//! The handshake (Jailhouse's `ivshm_net_state_change`):
//!
//! | local | peer | action |
//! |---|---|---|
//! | RESET | RESET or INIT | → INIT |
//! | INIT | not RESET | zero own section, init queues, → READY |
//! | READY / RUN | RESET | stop, → RESET |
//! | READY | READY or RUN, interface up | → RUN |
//! | READY / RUN | INIT | nothing |
//!
//! The carrier is on only while both sides are in RUN.
//!
//! Beyond the reference, ivnet treats the peer's state as hostile input:
//! a value that is not a state stops the link (and is counted); a peer that
//! goes *backwards* (RUN → INIT, RUN → READY, READY → INIT) restarted
//! without us seeing its RESET, so we stop too instead of running on stale
//! queue indices; and a data-path protocol error ([`LinkMachine::fault`])
//! sends us to RESET so that both sides zero their sections and start over.
//!
//! The machine only decides. Its caller publishes the state (Jailhouse:
//! the STATE register; QEMU profile: the own state-table entry plus a
//! vector-0 doorbell), zeroes the section and switches the carrier.

use crate::error::RingError;

/// Link states, with their wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LinkState {
    /// Not participating.
    Reset = 0,
    /// Present, wants a link.
    Init = 1,
    /// Own section initialised.
    Ready = 2,
    /// Data path running.
    Run = 3,
}

impl LinkState {
    /// Parses a state-table value; `None` for anything but 0..=3.
    pub const fn from_raw(raw: u32) -> Option<LinkState> {
        match raw {
            0 => Some(LinkState::Reset),
            1 => Some(LinkState::Init),
            2 => Some(LinkState::Ready),
            3 => Some(LinkState::Run),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// Upper-case name as in the reference driver.
    pub const fn name(self) -> &'static str {
        match self {
            LinkState::Reset => "RESET",
            LinkState::Init => "INIT",
            LinkState::Ready => "READY",
            LinkState::Run => "RUN",
        }
    }
}

impl core::fmt::Display for LinkState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one step of the machine asks its caller to do, in this order:
/// reset the queues, publish the state, switch the carrier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Zero the own section and re-initialise both queues (before
    /// publishing READY).
    pub reset_queues: bool,
    /// Publish this as the own state.
    pub write_state: Option<LinkState>,
    /// The carrier changed to this value.
    pub carrier: Option<bool>,
    /// A prepared or running link went back to RESET.
    pub link_reset: bool,
    /// A peer protocol error to count.
    pub error: Option<RingError>,
}

/// The state machine of one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkMachine {
    local: LinkState,
    last_peer: Option<LinkState>,
    last_raw: Option<u32>,
    carrier: bool,
    faulted: bool,
}

impl Default for LinkMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkMachine {
    /// A machine in RESET that has not seen the peer yet.
    pub const fn new() -> Self {
        LinkMachine {
            local: LinkState::Reset,
            last_peer: None,
            last_raw: None,
            carrier: false,
            faulted: false,
        }
    }

    /// The local state.
    pub const fn local(&self) -> LinkState {
        self.local
    }

    /// The peer state seen last (if it was a valid state).
    pub const fn last_peer(&self) -> Option<LinkState> {
        self.last_peer
    }

    /// Whether the carrier is on (both sides in RUN).
    pub const fn carrier(&self) -> bool {
        self.carrier
    }

    /// Whether a data-path error is waiting for the link to reset.
    pub const fn faulted(&self) -> bool {
        self.faulted
    }

    /// Records a data-path protocol error; the next [`step`](Self::step)
    /// takes the link to RESET.
    pub fn fault(&mut self) {
        if self.local != LinkState::Reset {
            self.faulted = true;
        }
    }

    /// Goes to RESET (shutdown or interface removal).
    pub fn shutdown(&mut self) -> Decision {
        let mut decision = Decision::default();
        self.stop(&mut decision);
        self.update_carrier(&mut decision);
        decision
    }

    /// Feeds the peer's state-table value (read once) and whether the local
    /// interface is up; returns what to do.
    pub fn step(&mut self, peer_raw: u32, interface_up: bool) -> Decision {
        let mut decision = Decision::default();
        let Some(peer) = LinkState::from_raw(peer_raw) else {
            if self.last_raw != Some(peer_raw) {
                decision.error = Some(RingError::InvalidPeerState(peer_raw));
            }
            self.last_raw = Some(peer_raw);
            self.last_peer = None;
            self.stop(&mut decision);
            self.update_carrier(&mut decision);
            return decision;
        };
        self.last_raw = Some(peer_raw);

        if self.faulted {
            self.stop(&mut decision);
        }
        if let Some(last) = self.last_peer
            && self.local >= LinkState::Ready
            && peer < last
            && peer != LinkState::Reset
        {
            decision.error = Some(RingError::PeerRestarted {
                from: last.raw(),
                to: peer.raw(),
            });
            self.stop(&mut decision);
        }
        self.last_peer = Some(peer);

        // Apply the table until nothing changes (at most one pass per state).
        for _ in 0..4 {
            let before = self.local;
            match self.local {
                LinkState::Reset => {
                    if peer < LinkState::Ready {
                        self.set(LinkState::Init, &mut decision);
                    }
                }
                LinkState::Init => {
                    if peer > LinkState::Reset {
                        decision.reset_queues = true;
                        self.set(LinkState::Ready, &mut decision);
                    }
                }
                LinkState::Ready | LinkState::Run => {
                    if peer == LinkState::Reset || (!interface_up && self.local == LinkState::Run) {
                        self.stop(&mut decision);
                    } else if peer >= LinkState::Ready
                        && self.local == LinkState::Ready
                        && interface_up
                    {
                        self.set(LinkState::Run, &mut decision);
                    }
                }
            }
            if self.local == before {
                break;
            }
        }
        self.update_carrier(&mut decision);
        decision
    }

    fn set(&mut self, state: LinkState, decision: &mut Decision) {
        self.local = state;
        decision.write_state = Some(state);
    }

    fn stop(&mut self, decision: &mut Decision) {
        self.faulted = false;
        if self.local >= LinkState::Ready {
            decision.link_reset = true;
        }
        if self.local != LinkState::Reset {
            self.set(LinkState::Reset, decision);
        }
    }

    fn update_carrier(&mut self, decision: &mut Decision) {
        let carrier = self.local == LinkState::Run && self.last_peer == Some(LinkState::Run);
        if carrier != self.carrier {
            self.carrier = carrier;
            decision.carrier = Some(carrier);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LinkState::*;

    /// Runs two machines against each other until neither changes.
    fn settle(a: &mut LinkMachine, b: &mut LinkMachine) {
        for _ in 0..16 {
            let da = a.step(b.local().raw(), true);
            let db = b.step(a.local().raw(), true);
            if da.write_state.is_none() && db.write_state.is_none() {
                return;
            }
        }
        panic!("handshake did not settle: {a:?} {b:?}");
    }

    #[test]
    fn handshake_reaches_run_with_carrier() {
        let mut a = LinkMachine::new();
        let mut b = LinkMachine::new();
        settle(&mut a, &mut b);
        // One more step each so both have seen the other's RUN.
        a.step(b.local().raw(), true);
        b.step(a.local().raw(), true);
        assert_eq!((a.local(), b.local()), (Run, Run));
        assert!(a.carrier() && b.carrier());
    }

    #[test]
    fn init_to_ready_resets_queues() {
        let mut m = LinkMachine::new();
        let d = m.step(Reset.raw(), true);
        assert_eq!(d.write_state, Some(Init));
        assert!(!d.reset_queues);
        let d = m.step(Init.raw(), true);
        assert!(d.reset_queues);
        assert_eq!(d.write_state, Some(Ready));
        let d = m.step(Ready.raw(), true);
        assert_eq!(d.write_state, Some(Run));
        assert_eq!(d.carrier, None, "carrier only when the peer is RUN too");
        let d = m.step(Run.raw(), true);
        assert_eq!(d.carrier, Some(true));
    }

    #[test]
    fn carrier_never_on_in_ready() {
        let mut m = LinkMachine::new();
        m.step(Init.raw(), true);
        assert_eq!(m.local(), Ready);
        let d = m.step(Run.raw(), false);
        assert_eq!(m.local(), Ready, "interface down: stays READY");
        assert!(!m.carrier() && d.carrier.is_none());
    }

    #[test]
    fn peer_reset_stops_and_restarts_handshake() {
        let mut m = LinkMachine::new();
        m.step(Init.raw(), true);
        m.step(Run.raw(), true);
        assert!(m.carrier());
        let d = m.step(Reset.raw(), true);
        assert!(d.link_reset);
        assert_eq!(d.carrier, Some(false));
        // The peer is in RESET, so it reads nothing of ours: the handshake
        // starts again at once.
        assert_eq!(m.local(), Init);
        assert_eq!(d.write_state, Some(Init));
    }

    #[test]
    fn fault_waits_for_peer_to_reset() {
        let mut m = LinkMachine::new();
        m.step(Init.raw(), true);
        m.step(Run.raw(), true);
        m.fault();
        let d = m.step(Run.raw(), true);
        assert_eq!(d.write_state, Some(Reset));
        assert!(d.link_reset);
        // The peer has not noticed yet: we must not re-INIT and zero under it.
        let d = m.step(Run.raw(), true);
        assert_eq!(d.write_state, None);
        assert_eq!(m.local(), Reset);
        // It resets: handshake restarts.
        let d = m.step(Reset.raw(), true);
        assert_eq!(d.write_state, Some(Init));
    }

    #[test]
    fn backwards_peer_is_a_restart() {
        let mut m = LinkMachine::new();
        m.step(Init.raw(), true);
        m.step(Run.raw(), true);
        let d = m.step(Init.raw(), true);
        assert_eq!(d.error, Some(RingError::PeerRestarted { from: 3, to: 1 }));
        assert!(d.link_reset);
        // The restarted peer is in INIT: we start over at once, zeroing our
        // section, so neither side runs on stale indices.
        assert!(d.reset_queues);
        assert_eq!(m.local(), Ready);
    }

    #[test]
    fn invalid_peer_state_is_counted_once_and_stops() {
        let mut m = LinkMachine::new();
        m.step(Init.raw(), true);
        m.step(Run.raw(), true);
        let d = m.step(0xdead_beef, true);
        assert_eq!(d.error, Some(RingError::InvalidPeerState(0xdead_beef)));
        assert_eq!(m.local(), Reset);
        let d = m.step(0xdead_beef, true);
        assert_eq!(d.error, None, "same bad value is not counted twice");
        assert_eq!(d.write_state, None);
        // A valid state again: handshake resumes.
        let d = m.step(Reset.raw(), true);
        assert_eq!(d.write_state, Some(Init));
    }

    /// Random peer state sequences never panic and never leave the carrier
    /// on unless both are RUN.
    #[test]
    fn arbitrary_sequences_keep_invariants() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut m = LinkMachine::new();
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let raw = if seed.is_multiple_of(17) {
                (seed >> 32) as u32
            } else {
                (seed % 4) as u32
            };
            if seed.is_multiple_of(31) {
                m.fault();
            }
            let up = !seed.is_multiple_of(13);
            m.step(raw, up);
            if m.carrier() {
                assert_eq!(m.local(), Run);
                assert_eq!(raw, 3);
            }
        }
    }
}
