//! Single-threaded per-frame cost of the ring, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/per_frame SIZE FRAMES`.
//!
//! One thread owns both endpoints of one shared region and repeats: send a
//! batch of 32 frames of SIZE bytes, publish (`flush_tx`), receive them all,
//! publish (`flush_rx`), reclaim. No doorbells, no second core, no waiting:
//! what is left is the ring's own work per frame (descriptor and index
//! accesses, bounds checks, two copies), which an instruction counter
//! measures the same way on a loaded machine as on a quiet one.
//! `scripts/bench-regression.sh` runs it at two frame counts and takes the
//! difference, so setup and handshake cancel out.
//!
//! Written against the API that both a921f51 and later versions have
//! (`send`, `flush_tx`, `recv`, `flush_rx`, `reclaim`); the only line that
//! differs between versions is the `Config` constructor, which the script
//! rewrites when it builds an older tree.

use std::hint::black_box;

use ivnet_ring::Config;
use ivnet_ring::testing::{SharedRegion, handshake};

/// Jailhouse's ivshmem-net section size (2048 entries, 0x71f80-byte data area).
const SECTION: usize = 0x7f000;
const BATCH: usize = 32;
const MTU: usize = 16384;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: per_frame SIZE FRAMES";
    let size: usize = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let frames: usize = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let region = SharedRegion::new(SECTION);
    let (mut tx, mut rx) = region.pair(Config::with_mtu(MTU));
    handshake(&mut tx, &mut rx);
    let frame = vec![0xa5u8; size];
    let mut buf = vec![0u8; MTU + 18];
    let mut received = 0usize;
    let mut sent = 0usize;
    while sent < frames {
        let n = BATCH.min(frames - sent);
        for _ in 0..n {
            tx.send(black_box(&frame)).expect("a batch fits the ring");
        }
        sent += n;
        // One thread drives both sides and polls: no doorbell to ring.
        let _ = black_box(tx.flush_tx());
        while let Some(len) = rx.recv(&mut buf).expect("own frames are valid") {
            black_box(&buf[..len]);
            received += 1;
        }
        let _ = black_box(rx.flush_rx());
        tx.reclaim().expect("own completions are valid");
    }
    assert_eq!(received, frames);
    println!("{size} {frames} {received}");
}
