//! Property test: random sequences of send / receive / reclaim / flush /
//! reset on both ends against a model (one FIFO per direction), across u16
//! index wrap-around and data-area wrap.

use std::collections::VecDeque;

use ivnet_ring::testing::{SharedRegion, check_frame, fill_frame, handshake};
use ivnet_ring::{Config, Endpoint, TxError};
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
    /// Side restarts (both renegotiate; in-flight frames are lost).
    Reset(usize),
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
        1 => side.prop_map(Op::Reset),
    ]
}

struct World {
    eps: [Endpoint; 2],
    /// Frames queued by side i, not yet received by the other side, in
    /// order: (seq, len).
    in_flight: [VecDeque<(u64, usize)>; 2],
    next_seq: u64,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

impl World {
    fn new(region: &SharedRegion) -> Self {
        let cfg = Config { mtu: MTU };
        let (mut a, mut b) = region.pair(cfg);
        handshake(&mut a, &mut b);
        World {
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
                    fill_frame(seq, &mut slot.as_mut_slice()[..len]);
                    slot.commit(len).unwrap();
                    self.next_seq += 1;
                    self.in_flight[s].push_back((seq, len));
                }
            }
            Op::Reset(s) => {
                // Side s restarts: a fresh endpoint, the other side sees RESET.
                let cfg = Config { mtu: MTU };
                self.eps[s] = region.endpoint(s, cfg);
                let out = self.eps[1 - s].on_peer_state(0, true);
                assert!(out.link_reset);
                let [a, b] = &mut self.eps;
                handshake(a, b);
                self.in_flight = [VecDeque::new(), VecDeque::new()];
            }
        }
        // Invariants after every step.
        for s in 0..2 {
            assert!(usize::from(self.eps[s].tx_in_flight()) <= 64);
            assert_eq!(self.eps[s].stats().total_errors(), 0);
        }
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
    // Unoptimised builds (plain `cargo test`) run fewer cases; the test
    // command runs the release build with all of them.
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 16 } else { 96 },
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
