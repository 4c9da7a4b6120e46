//! Concurrency check of the index and event protocol: two threads, one
//! endpoint each, over one region; doorbells are counting semaphores.
//!
//! Each side sleeps only after the protocol says it may (the receiver after
//! `enable_rx_notify` found nothing, the sender after `tx_ready` armed
//! `used_event`). If the event-index logic could lose a wakeup, both threads
//! would sleep and the wait would time out: the test fails. Frames carry
//! their sequence number and a pattern, so a torn frame or a frame seen
//! twice fails the content or order check.
//!
//! Run natively (many frames, real preemption) and under Miri, whose data
//! race detector and weak-memory emulation check the orderings:
//! `cargo +nightly miri test -p ivnet-ring --test concurrent`, with
//! `MIRIFLAGS=-Zmiri-many-seeds=0..16` for more schedules.

use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use ivnet_ring::testing::{SharedRegion, check_frame, fill_frame, handshake};
use ivnet_ring::{Config, Notify};

/// A doorbell: a counting semaphore.
struct Bell {
    rings: Mutex<u64>,
    cv: Condvar,
}

impl Bell {
    fn new() -> Self {
        Bell {
            rings: Mutex::new(0),
            cv: Condvar::new(),
        }
    }

    fn ring(&self) {
        *self.rings.lock().unwrap() += 1;
        self.cv.notify_one();
    }

    /// Waits for a ring; `false` on timeout.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = self.rings.lock().unwrap();
        let (mut guard, result) = self
            .cv
            .wait_timeout_while(guard, timeout, |rings| *rings == 0)
            .unwrap();
        if result.timed_out() {
            return false;
        }
        *guard = 0;
        true
    }
}

fn run(section: usize, mtu: usize, frames: u64, max_len: usize) {
    let region = SharedRegion::new(section);
    let cfg = Config::with_mtu(mtu);
    let (mut tx, mut rx) = region.pair(cfg);
    handshake(&mut tx, &mut rx);
    let wake_tx = Bell::new();
    let wake_rx = Bell::new();
    let timeout = Duration::from_secs(if cfg!(miri) { 3600 } else { 20 });

    thread::scope(|s| {
        s.spawn(|| {
            let mut frame = vec![0u8; max_len];
            for seq in 0..frames {
                let len = 16 + (seq as usize * 7919) % (max_len - 16);
                fill_frame(seq, &mut frame[..len]);
                while !tx.tx_ready() {
                    if tx.flush_tx() == Notify::Doorbell {
                        wake_rx.ring();
                    }
                    // tx_ready() armed used_event: a completion must ring us.
                    assert!(
                        wake_tx.wait(timeout),
                        "lost completion wakeup at frame {seq}"
                    );
                }
                tx.send(&frame[..len]).unwrap();
                if seq % 5 == 4 && tx.flush_tx() == Notify::Doorbell {
                    wake_rx.ring();
                }
            }
            if tx.flush_tx() == Notify::Doorbell {
                wake_rx.ring();
            }
        });
        s.spawn(|| {
            let mut buf = vec![0u8; max_len];
            let mut expected = 0u64;
            while expected < frames {
                let mut batch = 0;
                while let Some(n) = rx.recv(&mut buf).unwrap() {
                    let seq = check_frame(&buf[..n]).expect("torn frame");
                    assert_eq!(seq, expected, "frame lost or seen twice");
                    expected += 1;
                    batch += 1;
                    if batch == 8 {
                        break;
                    }
                }
                if rx.flush_rx() == Notify::Doorbell {
                    wake_tx.ring();
                }
                if batch > 0 || expected == frames {
                    continue;
                }
                // Nothing pending: leave polling, re-check, then sleep.
                if rx.enable_rx_notify().unwrap() {
                    continue;
                }
                assert!(
                    wake_rx.wait(timeout),
                    "lost RX wakeup after frame {expected}"
                );
            }
        });
    });
    assert_eq!(rx.stats().rx_frames, frames);
    assert_eq!(tx.stats().total_errors() + rx.stats().total_errors(), 0);
}

/// Small ring (qlen 64) and small frames: the ring fills constantly, so
/// both wakeup paths (RX avail, TX completion) are exercised.
#[test]
fn no_lost_wakeup_small_ring() {
    let frames = if cfg!(miri) { 150 } else { 300_000 };
    run(0x4000, 68, frames, 86);
}

/// The Jailhouse net section with jumbo frames.
#[test]
#[cfg_attr(miri, ignore = "too large for the interpreter")]
fn no_lost_wakeup_net_section() {
    run(0x7f000, 16384, 50_000, 16384 + 18);
}
