//! The driver against a fake platform over in-memory sections, with a real
//! `Endpoint` playing the peer.

use core::cell::{Cell, RefCell};
use core::sync::atomic::Ordering;
use std::boxed::Box;
use std::format;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

use ivnet_ring::testing::SharedRegion;
use ivnet_ring::{Config, Endpoint, LinkState};

use crate::{BackoffConfig, Driver, DriverConfig, LinkDevice, RateLimit};

const SECTION: usize = 0x20000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Publish(LinkState),
    Ring(u16),
    Rearm,
}

/// What the fake platform did, shared with the test.
#[derive(Default)]
struct Trace {
    calls: RefCell<Vec<Call>>,
    now: Cell<u64>,
}

struct FakeDevice<'r> {
    region: &'r SharedRegion,
    id: usize,
    vectors: u32,
    refuse_ring: bool,
    trace: Rc<Trace>,
    on_rearm: Option<Box<dyn FnMut() + 'r>>,
}

impl LinkDevice for FakeDevice<'_> {
    type Error = &'static str;

    fn peer_state(&self) -> u32 {
        self.region.state(1 - self.id).load(Ordering::Relaxed)
    }

    fn publish_state(&mut self, state: LinkState) -> Result<(), &'static str> {
        self.region
            .state(self.id)
            .store(state.raw(), Ordering::Release);
        self.trace.calls.borrow_mut().push(Call::Publish(state));
        Ok(())
    }

    fn vectors(&self) -> u32 {
        self.vectors
    }

    fn ring(&mut self, vector: u16) -> Result<(), &'static str> {
        if self.refuse_ring || u32::from(vector) >= self.vectors {
            return Err("vector out of range");
        }
        self.trace.calls.borrow_mut().push(Call::Ring(vector));
        Ok(())
    }

    fn rearm(&mut self) {
        self.trace.calls.borrow_mut().push(Call::Rearm);
        if let Some(f) = self.on_rearm.as_mut() {
            f();
        }
    }

    fn now_us(&self) -> u64 {
        self.trace.now.get()
    }
}

struct Setup<'r> {
    driver: Driver<FakeDevice<'r>>,
    peer: Endpoint,
    region: &'r SharedRegion,
    trace: Rc<Trace>,
}

fn setup(region: &SharedRegion, vectors: u32) -> Setup<'_> {
    let trace = Rc::new(Trace::default());
    let device = FakeDevice {
        region,
        id: 0,
        vectors,
        refuse_ring: false,
        trace: trace.clone(),
        on_rearm: None,
    };
    let config = Config::default();
    let driver = Driver::new(device, region.endpoint(0, config), DriverConfig::default());
    Setup {
        driver,
        peer: region.endpoint(1, config),
        region,
        trace,
    }
}

impl Setup<'_> {
    fn peer_step(&mut self) {
        let raw = self.region.state(0).load(Ordering::Acquire);
        let out = self.peer.on_peer_state(raw, true);
        if let Some(s) = out.write_state {
            self.region.state(1).store(s.raw(), Ordering::Release);
        }
    }

    fn link_up(&mut self) {
        for _ in 0..16 {
            let _ = self.driver.poll_link(true);
            self.peer_step();
            if self.driver.carrier() && self.peer.carrier() {
                return;
            }
        }
        panic!(
            "no link: local {:?}, peer {:?}",
            self.driver.local_state(),
            self.peer.local_state()
        );
    }

    fn publishes(&self) -> Vec<LinkState> {
        self.trace
            .calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Publish(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn advance(&self, us: u64) {
        self.trace.now.set(self.trace.now.get() + us);
    }
}

#[test]
fn restarted_side_publishes_reset_over_its_stale_run_and_relinks() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    // We are restarted while the peer keeps running: our entry says RUN.
    assert_eq!(
        region.state(0).load(Ordering::Relaxed),
        LinkState::Run.raw()
    );
    let device = FakeDevice {
        region: &region,
        id: 0,
        vectors: 2,
        refuse_ring: false,
        trace: s.trace.clone(),
        on_rearm: None,
    };
    s.trace.calls.borrow_mut().clear();
    s.driver = Driver::new(
        device,
        region.endpoint(0, Config::default()),
        DriverConfig::default(),
    );
    let _ = s.driver.poll_link(true);
    assert_eq!(s.publishes(), [LinkState::Reset]);
    assert_eq!(region.state(0).load(Ordering::Relaxed), 0);
    // The peer sees RESET, stops, and renegotiates with the new us.
    s.peer_step();
    assert!(!s.peer.carrier());
    s.link_up();
}

#[test]
fn first_publish_is_reset_on_a_fresh_link() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    let _ = s.driver.poll_link(true);
    let p = s.publishes();
    assert_eq!(p.first(), Some(&LinkState::Reset), "{p:?}");
    assert_eq!(p.iter().filter(|s| **s == LinkState::Reset).count(), 1);
    s.link_up();
    let c = s.driver.counters();
    assert_eq!(c.carrier_ups, 1);
    assert_eq!(c.link_resets, 0);
    assert_eq!(c.state_writes as usize, s.publishes().len());
}

fn send_one(s: &mut Setup<'_>) -> bool {
    s.driver.endpoint_mut().send(&[0xab; 60]).unwrap();
    s.driver.flush()
}

#[test]
fn one_vector_device_rings_vector_0_and_counts_it() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 1);
    assert_eq!(s.driver.data_vector(), 0);
    s.link_up();
    // The peer waits for data (published avail_event).
    assert!(!s.peer.enable_rx_notify().unwrap());
    assert!(send_one(&mut s));
    assert!(s.trace.calls.borrow().contains(&Call::Ring(0)));
    let c = s.driver.counters();
    assert_eq!(c.doorbells_rung, [1, 0]);
    assert_eq!(c.doorbells_refused, 0);
}

#[test]
fn two_vector_device_rings_vector_1() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    assert_eq!(s.driver.data_vector(), 1);
    s.link_up();
    assert!(!s.peer.enable_rx_notify().unwrap());
    assert!(send_one(&mut s));
    assert_eq!(s.driver.counters().doorbells_rung, [0, 1]);
}

#[test]
fn refused_ring_is_not_counted() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    s.driver.device_mut().refuse_ring = true;
    assert!(!s.peer.enable_rx_notify().unwrap());
    assert!(!send_one(&mut s), "a refused ring is not reported as rung");
    let c = s.driver.counters();
    assert_eq!(c.doorbells_rung, [0, 0]);
    assert_eq!(c.doorbells_refused, 1);
}

#[test]
fn at_most_one_doorbell_per_flush() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    // Both directions want a doorbell: the peer waits for data and for
    // completions.
    s.peer.send(&[1; 60]).unwrap();
    let _ = s.peer.flush_tx();
    assert!(!s.peer.enable_rx_notify().unwrap());
    let mut buf = [0u8; 2048];
    assert_eq!(s.driver.recv(&mut buf), Some(60));
    s.driver.endpoint_mut().send(&[2; 60]).unwrap();
    assert!(s.driver.flush());
    assert_eq!(s.driver.counters().doorbells_rung, [0, 1]);
}

/// Drives a fault: the peer writes a state that is not a state.
fn fault_once(s: &mut Setup<'_>, garbage: u32) -> Option<u64> {
    s.region.state(1).store(garbage, Ordering::Relaxed);
    s.driver.poll_link(true).held_us
}

#[test]
fn backoff_grows_is_capped_and_resets_after_a_clean_link() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    // First fault: no wait, the handshake restarts at once.
    assert_eq!(fault_once(&mut s, 100), None);
    let mut waits = Vec::new();
    for i in 0..10u32 {
        let held = fault_once(&mut s, 101 + i);
        // A valid RESET from the peer while held: we stay in RESET.
        s.region.state(1).store(0, Ordering::Relaxed);
        let u = s.driver.poll_link(true);
        assert_eq!(s.driver.local_state(), LinkState::Reset);
        assert!(u.held_us.is_some());
        waits.push(held.expect("held back"));
        // Let the hold-back pass.
        s.advance(held.unwrap());
    }
    assert_eq!(
        &waits[..7],
        &[16_000, 32_000, 64_000, 128_000, 256_000, 512_000, 1_000_000]
    );
    assert!(waits[7..].iter().all(|w| *w == 1_000_000), "{waits:?}");
    let c = s.driver.counters();
    assert_eq!(c.protocol_faults, 11);
    assert_eq!(c.backoff_waits, 10);

    // A well-behaved peer again: the link comes up once the hold-back
    // passed, and after it ran cleanly, the next fault costs nothing.
    s.peer = region.endpoint(1, Config::default());
    s.region.state(1).store(0, Ordering::Relaxed);
    s.link_up();
    s.advance(BackoffConfig::default().settle_us);
    let _ = s.driver.poll_link(true);
    assert_eq!(
        fault_once(&mut s, 999),
        None,
        "clean link resets the backoff"
    );
}

#[test]
fn held_handshake_waits_then_links() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    fault_once(&mut s, 7);
    let held = fault_once(&mut s, 8).expect("second fault in a row holds back");
    s.region.state(1).store(0, Ordering::Relaxed);
    s.peer = region.endpoint(1, Config::default());
    for _ in 0..8 {
        let _ = s.driver.poll_link(true);
        s.peer_step();
    }
    assert!(
        !s.driver.carrier(),
        "handshake started during the hold-back"
    );
    s.advance(held);
    s.link_up();
}

#[test]
fn data_path_error_is_a_counted_reset() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    // The peer publishes an avail index far beyond its queue.
    let off = s.driver.endpoint().geometry().avail_idx_offset();
    s.region.poke(1, off, &0x7000u16.to_le_bytes());
    assert!(!s.driver.rx_pending());
    assert_eq!(s.driver.take_carrier_change(), Some(false));
    assert_eq!(s.driver.take_carrier_change(), None);
    assert_eq!(s.driver.local_state(), LinkState::Reset);
    let c = s.driver.counters();
    assert_eq!(
        (c.protocol_faults, c.link_resets, c.carrier_downs),
        (1, 1, 1)
    );
}

#[test]
fn shutdown_is_not_a_link_reset() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    s.link_up();
    let u = s.driver.shutdown();
    assert_eq!(u.carrier, Some(false));
    assert_eq!(region.state(0).load(Ordering::Relaxed), 0);
    assert_eq!(s.publishes().last(), Some(&LinkState::Reset));
    assert_eq!(s.driver.counters().link_resets, 0);
}

#[test]
fn rearm_comes_before_the_final_recheck() {
    let region = SharedRegion::new(SECTION);
    let peer_tx = RefCell::new(region.endpoint(1, Config::default()));
    let mut s = setup(&region, 2);
    // Run the handshake with the endpoint the hook will use.
    core::mem::swap(&mut s.peer, &mut *peer_tx.borrow_mut());
    s.link_up();
    core::mem::swap(&mut s.peer, &mut *peer_tx.borrow_mut());
    // A frame arrives exactly while the interrupt is being re-armed: only a
    // re-check after the re-arm can see it.
    s.driver.device_mut().on_rearm = Some(Box::new(|| {
        let mut p = peer_tx.borrow_mut();
        p.send(&[3; 60]).unwrap();
        let _ = p.flush_tx();
    }));
    assert!(
        s.driver.prepare_sleep(),
        "frame that arrived at re-arm missed"
    );
    let calls = s.trace.calls.borrow();
    assert_eq!(calls.last(), Some(&Call::Rearm));
    drop(calls);
    s.driver.device_mut().on_rearm = None;
    let mut buf = [0u8; 128];
    assert_eq!(s.driver.recv(&mut buf), Some(60));
    assert!(!s.driver.prepare_sleep());
}

#[test]
fn peer_state_change_at_rearm_is_seen() {
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 1);
    s.link_up();
    let r = s.region;
    s.driver.device_mut().on_rearm = Some(Box::new(move || {
        r.state(1).store(0, Ordering::Release);
    }));
    assert!(s.driver.prepare_sleep());
}

// ----- logging ---------------------------------------------------------------

std::thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES.with(|l| l.borrow_mut().push(format!("{}", record.args())));
    }
    fn flush(&self) {}
}

fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.with(|l| l.borrow_mut().clear());
}

fn lines() -> Vec<String> {
    LINES.with(|l| l.borrow().clone())
}

#[test]
fn hostile_peer_log_bursts_then_summarises() {
    capture();
    let region = SharedRegion::new(SECTION);
    let trace = Rc::new(Trace::default());
    let device = FakeDevice {
        region: &region,
        id: 0,
        vectors: 2,
        refuse_ring: false,
        trace: trace.clone(),
        on_rearm: None,
    };
    let config = DriverConfig {
        log_limit: RateLimit {
            burst: 3,
            interval_us: 1_000_000,
        },
        backoff: BackoffConfig {
            // No hold-back: the peer gets every chance to make us talk.
            first_wait_us: 0,
            max_wait_us: 0,
            settle_us: u64::MAX,
        },
    };
    let mut driver = Driver::new(device, region.endpoint(0, Config::default()), config);
    // 1000 distinct garbage states within one interval.
    for i in 0..1000u32 {
        region.state(1).store(1000 + i, Ordering::Relaxed);
        let _ = driver.poll_link(true);
        region.state(1).store(0, Ordering::Relaxed);
        let _ = driver.poll_link(true);
    }
    let l = lines();
    let faults = l.iter().filter(|l| l.contains("protocol error")).count();
    assert_eq!(faults, 3, "{l:#?}");
    assert!(l.len() <= 4 * 3, "{} lines: {l:#?}", l.len());
    assert!(driver.counters().log_suppressed > 1000);
    assert_eq!(driver.counters().protocol_faults, 1000);
    // Next interval: one summary per kind that was suppressed.
    trace.now.set(1_000_000);
    let _ = driver.poll_link(true);
    let l = lines();
    let summary = l
        .iter()
        .find(|l| l.starts_with("protocol fault: ") && l.ends_with("similar messages suppressed"))
        .unwrap_or_else(|| panic!("no summary: {l:#?}"));
    assert!(summary.contains(" 997 "), "{summary}");
}

#[test]
fn no_line_for_a_non_transition() {
    capture();
    let region = SharedRegion::new(SECTION);
    let mut s = setup(&region, 2);
    // The peer stays in RESET: we go to INIT once and then say nothing.
    for _ in 0..50 {
        let _ = s.driver.poll_link(true);
    }
    let l = lines();
    assert_eq!(l, ["link: local RESET -> INIT, peer RESET"], "{l:#?}");
}
