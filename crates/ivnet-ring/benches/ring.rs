//! Ring throughput benchmark: `cargo bench -p ivnet-ring --bench ring`.
//!
//! Two threads, one per core (pinned), over one shared region: a producer
//! sends frames through the ivnet ring and a consumer copies them out.
//! Doorbells are real eventfds; each side busy-polls for a short window
//! and then sleeps on its eventfd after re-arming the event index, like the
//! bridge's hybrid mode. Reported per frame size and batch size: frames/s,
//! Gbit/s of payload, and doorbells per frame (both directions).
//!
//! Baselines measured in the same run, on the same cores:
//! - an in-process SPSC queue (crossbeam `ArrayQueue`) moving the same
//!   frames with the same copy-in/copy-out (buffers recycled through a
//!   second queue);
//! - the memcpy bandwidth bound: one core copying frames of the same size
//!   between two buffers as large as the ring's data area.
//!
//! `IVNET_BENCH_SECS` sets the seconds per measurement (default 1.0);
//! each measurement is repeated `IVNET_BENCH_REPS` times (default 3) and the
//! median is reported. `IVNET_BENCH_SIZES=64,1500` picks frame sizes,
//! `IVNET_BENCH_MTU` the link MTU (default 16384).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use ivnet_ring::testing::{SharedRegion, handshake};
use ivnet_ring::{Config, Notify};

const SECTION: usize = 0x7f000;
const SPIN: u32 = 2000;

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data for which all-zeroes is valid.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and cpu % 2 is within it.
    unsafe { libc::CPU_SET(cpu % 2, &mut set) };
    // SAFETY: sched_setaffinity reads `set` for the calling thread.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
}

/// An eventfd doorbell.
struct EventFd(i32);

impl EventFd {
    fn new() -> Self {
        // SAFETY: creates a new eventfd.
        let fd = unsafe { libc::eventfd(0, 0) };
        assert!(fd >= 0);
        EventFd(fd)
    }
    fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8-byte write from a local buffer to our eventfd.
        unsafe { libc::write(self.0, one.as_ptr().cast(), 8) };
    }
    /// Waits up to 10 ms (the stop flag is checked between waits).
    fn wait(&self) {
        let mut pfd = libc::pollfd {
            fd: self.0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 10) };
        if n > 0 {
            let mut v = [0u8; 8];
            // SAFETY: 8-byte read into a local buffer.
            unsafe { libc::read(self.0, v.as_mut_ptr().cast(), 8) };
        }
    }
}

struct RingResult {
    frames_per_sec: f64,
    doorbells_per_frame: f64,
}

fn ring_run(frame_len: usize, batch: usize, secs: f64, mtu: usize) -> RingResult {
    let region = SharedRegion::new(SECTION);
    let (mut tx, mut rx) = region.pair(Config::with_mtu(mtu));
    handshake(&mut tx, &mut rx);
    let wake_tx = EventFd::new();
    let wake_rx = EventFd::new();
    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let doorbells = AtomicU64::new(0);
    let elapsed = thread::scope(|s| {
        s.spawn(|| {
            pin(0);
            let frame = vec![0xa5u8; frame_len];
            let mut rung = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..batch {
                    let mut spins = 0;
                    while !tx.tx_ready() {
                        if tx.flush_tx() == Notify::Doorbell {
                            wake_rx.ring();
                            rung += 1;
                        }
                        spins += 1;
                        if spins > SPIN {
                            wake_tx.wait();
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        core::hint::spin_loop();
                    }
                    if tx.send(&frame).is_err() {
                        break;
                    }
                }
                if tx.flush_tx() == Notify::Doorbell {
                    wake_rx.ring();
                    rung += 1;
                }
            }
            doorbells.fetch_add(rung, Ordering::Relaxed);
        });
        s.spawn(|| {
            pin(1);
            let mut buf = vec![0u8; 16384 + 18];
            let mut count = 0u64;
            let mut rung = 0u64;
            let mut idle = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut got = 0;
                while got < batch.max(1) {
                    match rx.recv(&mut buf) {
                        Ok(Some(n)) => {
                            black_box(&buf[..n]);
                            got += 1;
                        }
                        _ => break,
                    }
                }
                count += got as u64;
                if rx.flush_rx() == Notify::Doorbell {
                    wake_tx.ring();
                    rung += 1;
                }
                if got > 0 {
                    idle = 0;
                    continue;
                }
                idle += 1;
                if idle < SPIN {
                    core::hint::spin_loop();
                    continue;
                }
                if !rx.enable_rx_notify().unwrap_or(false) {
                    wake_rx.wait();
                }
            }
            received.store(count, Ordering::Relaxed);
            doorbells.fetch_add(rung, Ordering::Relaxed);
        });
        let start = Instant::now();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        wake_rx.ring();
        wake_tx.ring();
        start.elapsed()
    });
    let frames = received.load(Ordering::Relaxed) as f64;
    RingResult {
        frames_per_sec: frames / elapsed.as_secs_f64(),
        doorbells_per_frame: doorbells.load(Ordering::Relaxed) as f64 / frames.max(1.0),
    }
}

/// crossbeam ArrayQueue SPSC moving the same frames (copy in, copy out).
fn queue_run(frame_len: usize, secs: f64) -> f64 {
    let slots = 2048;
    let full = Arc::new(ArrayQueue::<Vec<u8>>::new(slots));
    let empty = Arc::new(ArrayQueue::<Vec<u8>>::new(slots));
    for _ in 0..slots {
        empty.push(vec![0u8; frame_len]).unwrap();
    }
    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let elapsed = thread::scope(|s| {
        s.spawn(|| {
            pin(0);
            let frame = vec![0xa5u8; frame_len];
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut b) = empty.pop() {
                    b.copy_from_slice(&frame);
                    full.push(b).unwrap();
                } else {
                    core::hint::spin_loop();
                }
            }
        });
        s.spawn(|| {
            pin(1);
            let mut out = vec![0u8; frame_len];
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(b) = full.pop() {
                    out.copy_from_slice(&b);
                    black_box(&out);
                    empty.push(b).unwrap();
                    count += 1;
                } else {
                    core::hint::spin_loop();
                }
            }
            received.store(count, Ordering::Relaxed);
        });
        let start = Instant::now();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        start.elapsed()
    });
    received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// memcpy bandwidth (bytes/s) for frames of this size over a working set
/// as large as the ring's data area.
fn memcpy_run(frame_len: usize, secs: f64) -> f64 {
    pin(0);
    let area = 0x71f80;
    let src = vec![0x5au8; area];
    let mut dst = vec![0u8; area];
    let per_area = area / frame_len;
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for i in 0..per_area {
            let off = i * frame_len;
            dst[off..off + frame_len].copy_from_slice(black_box(&src[off..off + frame_len]));
        }
        black_box(&dst);
        bytes += (per_area * frame_len) as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass no
    // such flag: run a tiny smoke configuration then.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("IVNET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 1.0 } else { 0.05 });
    let reps: usize = std::env::var("IVNET_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 3 } else { 1 });
    println!("# ivnet-ring throughput ({secs} s x {reps} reps, median)");
    println!(
        "| frame B | batch | ring Mpps | ring Gbit/s | doorbells/frame | ArrayQueue Mpps | ring/queue | memcpy GB/s | ring GB/s / memcpy |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mtu: usize = std::env::var("IVNET_BENCH_MTU")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16384);
    let sizes: Vec<usize> = std::env::var("IVNET_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 1500, 9000]);
    println!("# link MTU {mtu}");
    for frame_len in sizes {
        let queue = median((0..reps).map(|_| queue_run(frame_len, secs)).collect());
        let memcpy = median((0..reps).map(|_| memcpy_run(frame_len, secs)).collect());
        for batch in [1usize, 32] {
            let runs: Vec<RingResult> = (0..reps)
                .map(|_| ring_run(frame_len, batch, secs, mtu))
                .collect();
            let fps = median(runs.iter().map(|r| r.frames_per_sec).collect());
            let dpf = median(runs.iter().map(|r| r.doorbells_per_frame).collect());
            let bytes_per_sec = fps * frame_len as f64;
            println!(
                "| {frame_len} | {batch} | {:.2} | {:.2} | {:.5} | {:.2} | {:.2} | {:.2} | {:.2} |",
                fps / 1e6,
                bytes_per_sec * 8.0 / 1e9,
                dpf,
                queue / 1e6,
                fps / queue,
                memcpy / 1e9,
                bytes_per_sec / memcpy,
            );
        }
    }
}
