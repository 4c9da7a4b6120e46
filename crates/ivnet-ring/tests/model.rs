//! Property test: random sequences of send / receive / reclaim / flush /
//! restart on both ends against a model (one FIFO per direction), across u16
//! index wrap-around and data-area wrap.
//!
//! The state table is modelled too: each side's entry holds what that side
//! last published. A restart is modelled honestly: the restarted side gets
//! a fresh endpoint while its entry still holds the old value (RUN), and
//! the survivor is not touched — it only sees what the restarted side
//! publishes. A hostile phase lets one side's entry take arbitrary values
//! (including non-states) before that side restarts honestly. Either way
//! the link must come back with no help from outside.

use std::collections::VecDeque;

use ivnet_ring::testing::{SharedRegion, check_frame, fill_frame, handshake};
use ivnet_ring::{Config, Endpoint, LinkState, TxError};
use proptest::prelude::*;

/// qlen 64, data area 0x3900: both wraps come quickly.
const SECTION: usize = 0x4000;
const MTU: usize = 1500;

#[derive(Clone, Debug)]
enum Op {
    /// Side sends a frame of this length.
    Send(usize, usize),
    /// Side sends a batch of frames and publishes once.
    Batch(usize, Vec<usize>),
    /// Side publishes its queued frames.
    FlushTx(usize),
    /// Side receives up to n frames.
    Recv(usize, usize),
    /// Side publishes completions.
    FlushRx(usize),
    /// Side processes completions.
    Reclaim(usize),
    /// Side leaves polling.
    EnableNotify(usize),
    /// Zero-copy send on side.
    Reserve(usize, usize),
    /// Side restarts: fresh endpoint, stale RUN entry; `bool` says who
    /// steps first while relinking. In-flight frames are lost.
    Restart(usize, bool),
    /// Side's state entry shows these values to the other side (which steps
    /// on each), then the side restarts honestly with the last value still
    /// in its entry.
    HostileState(usize, Vec<u32>),
}

fn op() -> impl Strategy<Value = Op> {
    let side = 0usize..2;
    let len = prop_oneof![Just(60usize), 14usize..=MTU + 18, Just(MTU + 18)];
    prop_oneof![
        6 => (side.clone(), len.clone()).prop_map(|(s, l)| Op::Send(s, l)),
        2 => (side.clone(), proptest::collection::vec(len.clone(), 1..20)).prop_map(|(s, v)| Op::Batch(s, v)),
        3 => side.clone().prop_map(Op::FlushTx),
        5 => (side.clone(), 1usize..40).prop_map(|(s, n)| Op::Recv(s, n)),
        3 => side.clone().prop_map(Op::FlushRx),
        3 => side.clone().prop_map(Op::Reclaim),
        1 => side.clone().prop_map(Op::EnableNotify),
        2 => (side.clone(), len).prop_map(|(s, l)| Op::Reserve(s, l)),
        1 => (side.clone(), any::<bool>()).prop_map(|(s, first)| Op::Restart(s, first)),
        1 => (side, proptest::collection::vec(
            prop_oneof![0u32..4, any::<u32>()], 1..6)).prop_map(|(s, v)| Op::HostileState(s, v)),
    ]
}

struct World {
    eps: [Endpoint; 2],
    /// The state table: what each side last published.
    entries: [u32; 2],
    /// Peer protocol errors each side is allowed to have counted (only a
    /// hostile phase raises it).
    error_baseline: [u64; 2],
    /// Frames queued by side i, not yet received by the other side, in
    /// order: (seq, len).
    in_flight: [VecDeque<(u64, usize)>; 2],
    next_seq: u64,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

impl World {
    fn new(region: &SharedRegion) -> Self {
        let cfg = Config::with_mtu(MTU);
        let (mut a, mut b) = region.pair(cfg);
        handshake(&mut a, &mut b);
        World {
            entries: [LinkState::Run.raw(); 2],
            error_baseline: [0; 2],
            eps: [a, b],
            in_flight: [VecDeque::new(), VecDeque::new()],
            next_seq: 0,
            frame: vec![0; MTU + 18],
            buf: vec![0; MTU + 18],
        }
    }

    fn send(&mut self, side: usize, len: usize) -> Result<(), TxError> {
        let seq = self.next_seq;
        fill_frame(seq, &mut self.frame[..len.max(8)]);
        let result = self.eps[side].send(&self.frame[..len.max(8)]);
        match result {
            Ok(()) => {
                self.next_seq += 1;
                self.in_flight[side].push_back((seq, len.max(8)));
            }
            Err(TxError::Full) => {}
            Err(e) => panic!("unexpected send error {e:?}"),
        }
        result
    }

    fn recv(&mut self, side: usize, max: usize) {
        let from = 1 - side;
        for _ in 0..max {
            match self.eps[side]
                .recv(&mut self.buf)
                .expect("no protocol error between honest peers")
            {
                Some(n) => {
                    let (seq, len) = self.in_flight[from]
                        .pop_front()
                        .expect("received a frame nobody sent");
                    assert_eq!(n, len, "length of frame {seq}");
                    assert_eq!(check_frame(&self.buf[..n]).expect("content"), seq, "order");
                }
                None => {
                    // Everything published must have been received.
                    return;
                }
            }
        }
    }

    fn apply(&mut self, op: &Op, region: &SharedRegion) {
        match *op {
            Op::Send(s, len) => {
                let _ = self.send(s, len);
            }
            Op::Batch(s, ref lens) => {
                for &len in lens {
                    if self.send(s, len).is_err() {
                        break;
                    }
                }
                let _ = self.eps[s].flush_tx();
            }
            Op::FlushTx(s) => {
                let _ = self.eps[s].flush_tx();
            }
            Op::Recv(s, n) => self.recv(s, n),
            Op::FlushRx(s) => {
                let _ = self.eps[s].flush_rx();
            }
            Op::Reclaim(s) => {
                self.eps[s]
                    .reclaim()
                    .expect("no protocol error between honest peers");
            }
            Op::EnableNotify(s) => {
                let _ = self.eps[s].enable_rx_notify().expect("no protocol error");
            }
            Op::Reserve(s, len) => {
                let seq = self.next_seq;
                if let Ok(mut slot) = self.eps[s].tx_reserve(MTU + 18) {
                    let len = len.max(8);
                    fill_frame(seq, &mut self.frame[..len]);
                    slot.write_at(0, &self.frame[..len]).unwrap();
                    slot.commit(len).unwrap();
                    self.next_seq += 1;
                    self.in_flight[s].push_back((seq, len));
                }
            }
            Op::Restart(s, restarted_first) => {
                let survivor = 1 - s;
                let resets_before = self.eps[survivor].stats().link_resets;
                assert_eq!(self.entries[s], LinkState::Run.raw(), "stale entry");
                self.eps[s] = region.endpoint(s, Config::with_mtu(MTU));
                self.error_baseline[s] = 0;
                self.relink(s, restarted_first);
                assert_eq!(
                    self.eps[survivor].stats().link_resets,
                    resets_before + 1,
                    "the survivor saw the restart as one link reset"
                );
            }
            Op::HostileState(s, ref values) => {
                let victim = 1 - s;
                for &raw in values {
                    self.entries[s] = raw;
                    let out = self.eps[victim].on_peer_state(raw, true);
                    if let Some(state) = out.write_state {
                        self.entries[victim] = state.raw();
                    }
                }
                // The side comes back honestly; its entry keeps the last
                // hostile value.
                self.eps[s] = region.endpoint(s, Config::with_mtu(MTU));
                self.error_baseline[s] = 0;
                self.relink(s, values.len() % 2 == 0);
                self.error_baseline[victim] = self.eps[victim].stats().total_errors();
            }
        }
        // Invariants after every step.
        for s in 0..2 {
            assert!(usize::from(self.eps[s].tx_in_flight()) <= 64);
            assert_eq!(
                self.eps[s].stats().total_errors(),
                self.error_baseline[s],
                "protocol errors between honest peers"
            );
        }
    }

    /// Steps both sides through the modelled state table (each publishes
    /// into its own entry, reads the other's) until both have carrier;
    /// `restarted` is the side that restarted, which steps first if
    /// `restarted_first`. Frames in flight are lost with the reset.
    fn relink(&mut self, restarted: usize, restarted_first: bool) {
        let order = if restarted_first {
            [restarted, 1 - restarted]
        } else {
            [1 - restarted, restarted]
        };
        for _ in 0..8 {
            for &me in &order {
                let out = self.eps[me].on_peer_state(self.entries[1 - me], true);
                if let Some(state) = out.write_state {
                    self.entries[me] = state.raw();
                }
            }
            if self.eps[0].carrier() && self.eps[1].carrier() {
                self.in_flight = [VecDeque::new(), VecDeque::new()];
                return;
            }
        }
        panic!(
            "no relink after a restart of side {restarted}: {:?} / {:?}, entries {:?}",
            self.eps[0].local_state(),
            self.eps[1].local_state(),
            self.entries
        );
    }

    /// Drains both directions completely and checks the model is empty.
    fn finish(&mut self) {
        for _ in 0..200 {
            for s in 0..2 {
                let _ = self.eps[s].flush_tx();
                self.recv(1 - s, usize::MAX);
                let _ = self.eps[1 - s].flush_rx();
                self.eps[s].reclaim().unwrap();
            }
            if self.in_flight.iter().all(VecDeque::is_empty) {
                break;
            }
        }
        assert!(
            self.in_flight.iter().all(VecDeque::is_empty),
            "frames lost: {:?}",
            self.in_flight
        );
        for s in 0..2 {
            assert_eq!(self.eps[s].tx_in_flight(), 0);
            assert!(self.eps[s].tx_ready());
        }
    }

    /// Pumps `n` small frames A→B and B→A to move the indices.
    fn pump(&mut self, n: usize) {
        for i in 0..n {
            for s in 0..2 {
                if !self.eps[s].tx_ready() || i % 32 == 31 {
                    let _ = self.eps[s].flush_tx();
                    self.recv(1 - s, usize::MAX);
                    let _ = self.eps[1 - s].flush_rx();
                    self.eps[s].reclaim().unwrap();
                }
                self.send(s, 60).unwrap();
            }
        }
        self.finish();
    }
}

proptest! {
    // Unoptimised builds (plain `cargo test`, which the test command uses
    // so that debug assertions are on) run fewer cases than `--release`.
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 32 } else { 96 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn endpoints_behave_like_two_fifos(
        // Start right before the u16 index wrap in some cases.
        prefix in prop_oneof![Just(0usize), 65_480usize..65_536],
        ops in proptest::collection::vec(op(), 1..400),
    ) {
        let region = SharedRegion::new(SECTION);
        let mut world = World::new(&region);
        world.pump(prefix);
        for op in &ops {
            world.apply(op, &region);
        }
        world.finish();
    }
}
