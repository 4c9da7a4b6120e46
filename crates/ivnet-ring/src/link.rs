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
//! The handshake (Jailhouse's `ivshm_net_state_change`), one row applied
//! after another within a step until nothing changes, except where noted:
//!
//! | local | peer | action |
//! |---|---|---|
//! | *first step* | READY or RUN | publish RESET and stop there (below) |
//! | *first step* | RESET or INIT | go on by the rows below at once, publishing the state reached |
//! | RESET | RESET or INIT | → INIT |
//! | INIT | not RESET | zero own section, init queues, → READY |
//! | READY / RUN | RESET | stop, → RESET, and end the step there (RUN → RESET → INIT, as the reference) |
//! | READY | READY or RUN, interface up | → RUN |
//! | READY / RUN | INIT | nothing |
//!
//! The carrier is on only while both sides are in RUN.
//!
//! **The first step publishes.** A fresh machine is in RESET, but the own
//! state-table entry may still hold what an earlier instance of this side
//! wrote — RUN, if it was killed while linked and its VM or cell lives on.
//! The reference writes RESET at probe; here the first step always writes
//! a state, so the stale entry is overwritten at once:
//!
//! - peer in READY or RUN: it may be running against our earlier
//!   instance, reading our section and waiting for completions. We publish
//!   RESET and go no further in this step: the peer must first see our
//!   RESET and stop (→ RESET); only then may we zero our section. The next
//!   step (its state interrupt, or the caller's periodic tick) links.
//! - peer in RESET or INIT: it does not read our section, so we may link
//!   at once — RESET → INIT, and if the peer is INIT → READY — in the same
//!   step, without waiting for a tick. The state published (INIT or READY)
//!   replaces the stale one just as RESET would.
//!
//! **Stopping on a peer RESET ends the step.** The reference stops (→
//! RESET) when the peer resets and moves to INIT only on a later state
//! change. Going RUN → INIT directly would never show the peer our RESET;
//! the Linux driver copes, other implementations may not.
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
    /// A prepared or running link went back to RESET because of the peer
    /// (it reset, restarted, wrote a bad state) or a protocol fault; not
    /// set for a local shutdown or interface-down.
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
    /// Whether a state has been published since creation (see "the first
    /// step publishes" in the module doc).
    announced: bool,
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
            announced: false,
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

    /// Goes to RESET (shutdown or interface removal) and always asks to
    /// publish it. A local decision: `link_reset` stays `false`.
    pub fn shutdown(&mut self) -> Decision {
        let mut decision = Decision::default();
        self.stop(&mut decision, false);
        decision.write_state = Some(LinkState::Reset);
        self.announced = true;
        self.update_carrier(&mut decision);
        decision
    }

    /// Feeds the peer's state-table value (read once) and whether the local
    /// interface is up; returns what to do.
    pub fn step(&mut self, peer_raw: u32, interface_up: bool) -> Decision {
        let mut decision = self.transition(peer_raw, interface_up);
        if !self.announced {
            // First step: publish whatever state we are in, RESET included,
            // to overwrite a stale entry (module doc).
            self.announced = true;
            decision.write_state = Some(self.local);
        }
        self.update_carrier(&mut decision);
        decision
    }

    fn transition(&mut self, peer_raw: u32, interface_up: bool) -> Decision {
        let mut decision = Decision::default();
        let Some(peer) = LinkState::from_raw(peer_raw) else {
            if self.last_raw != Some(peer_raw) {
                decision.error = Some(RingError::InvalidPeerState(peer_raw));
            }
            self.last_raw = Some(peer_raw);
            self.last_peer = None;
            self.stop(&mut decision, true);
            return decision;
        };
        self.last_raw = Some(peer_raw);

        if self.faulted {
            self.stop(&mut decision, true);
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
            self.stop(&mut decision, true);
        }
        self.last_peer = Some(peer);

        // Apply the table until nothing changes (at most one pass per state).
        for _ in 0..4 {
            match self.local {
                LinkState::Reset => {
                    if peer < LinkState::Ready {
                        self.set(LinkState::Init, &mut decision);
                    } else {
                        // Peer READY/RUN: it has to see our RESET first (on
                        // the first step this is the stale-entry case).
                        break;
                    }
                }
                LinkState::Init => {
                    if peer > LinkState::Reset {
                        decision.reset_queues = true;
                        self.set(LinkState::Ready, &mut decision);
                    } else {
                        break;
                    }
                }
                LinkState::Ready | LinkState::Run => {
                    if peer == LinkState::Reset {
                        // Publish RESET and end the step (module doc).
                        self.stop(&mut decision, true);
                        break;
                    } else if !interface_up && self.local == LinkState::Run {
                        self.stop(&mut decision, false);
                    } else if peer >= LinkState::Ready
                        && self.local == LinkState::Ready
                        && interface_up
                    {
                        self.set(LinkState::Run, &mut decision);
                    } else {
                        break;
                    }
                }
            }
        }
        decision
    }

    fn set(&mut self, state: LinkState, decision: &mut Decision) {
        self.local = state;
        decision.write_state = Some(state);
    }

    /// Goes to RESET; `by_peer` says whether the peer (or a protocol
    /// fault) caused it, which makes it a counted link reset.
    fn stop(&mut self, decision: &mut Decision, by_peer: bool) {
        self.faulted = false;
        if by_peer && self.local >= LinkState::Ready {
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
        // As the reference: RUN → RESET, published, and the step ends.
        assert_eq!(m.local(), Reset);
        assert_eq!(d.write_state, Some(Reset));
        // The next step (tick or the peer's next change) starts over.
        let d = m.step(Reset.raw(), true);
        assert_eq!(d.write_state, Some(Init));
        assert!(!d.link_reset);
    }

    #[test]
    fn first_step_publishes_reset_against_a_running_peer() {
        for peer in [Ready, Run] {
            let mut m = LinkMachine::new();
            let d = m.step(peer.raw(), true);
            assert_eq!(d.write_state, Some(Reset), "peer {peer}");
            assert!(!d.reset_queues && !d.link_reset && d.carrier.is_none());
            // Not again, and no further while the peer stays up.
            let d = m.step(peer.raw(), true);
            assert_eq!(d, Decision::default());
            let d = m.step(Reset.raw(), true);
            assert_eq!(d.write_state, Some(Init));
        }
    }

    #[test]
    fn first_step_links_at_once_against_a_reset_or_init_peer() {
        let mut m = LinkMachine::new();
        assert_eq!(m.step(Reset.raw(), true).write_state, Some(Init));
        let mut m = LinkMachine::new();
        let d = m.step(Init.raw(), true);
        assert_eq!(d.write_state, Some(Ready));
        assert!(d.reset_queues);
        // A bad value on the first step: RESET is still published.
        let mut m = LinkMachine::new();
        let d = m.step(9, true);
        assert_eq!(d.write_state, Some(Reset));
        assert_eq!(d.error, Some(RingError::InvalidPeerState(9)));
    }

    #[test]
    fn shutdown_is_not_a_link_reset() {
        let mut m = LinkMachine::new();
        m.step(Init.raw(), true);
        m.step(Run.raw(), true);
        let d = m.shutdown();
        assert_eq!(d.write_state, Some(Reset));
        assert_eq!(d.carrier, Some(false));
        assert!(!d.link_reset);
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
