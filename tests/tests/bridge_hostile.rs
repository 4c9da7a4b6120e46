//! A hostile peer. The test process joins the server as the bridge's peer
//! (an ivshmem-server host peer writing raw shared memory), completes the
//! handshake, then breaks the protocol: a descriptor that points outside its
//! data area, and a state value that does not exist. Each time the bridge
//! must count the error, reset the link (state RESET, carrier off), keep
//! running, and come back when the peer restarts the handshake properly.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ivnet_e2e::hostile::{HostilePeer, bounds};
use ivnet_e2e::netns::{self, BridgeSpec, Netns, Proc, Server};
use ivnet_ring::Geometry;
use ivshmem_server::HostPeer;

const RESET: u32 = 0;
const INIT: u32 = 1;
const READY: u32 = 2;
const RUN: u32 = 3;
const TAP: &str = "ivn0";

struct Peer {
    host: HostPeer,
    bridge: u16,
}

impl Peer {
    fn set_state(&self, state: u32) {
        self.host.set_own_state(state);
        self.host
            .doorbell(self.bridge, 0)
            .expect("ring the bridge's vector 0");
    }

    fn bridge_state(&self) -> u32 {
        self.host.peer_state(self.bridge).unwrap()
    }

    fn wait_bridge(&self, want: u32, bridge: &Proc) {
        let ok = netns::wait_until(Duration::from_secs(10), Duration::from_millis(2), || {
            self.bridge_state() == want
        });
        assert!(
            ok.is_ok(),
            "bridge state is {}, expected {want}\n{}",
            self.bridge_state(),
            bridge.stderr()
        );
    }

    /// The handshake from RESET, as ivshmem-net does it: INIT, zero the own
    /// section once the bridge is past RESET, READY, RUN.
    fn handshake(&self, bridge: &Proc) {
        self.set_state(INIT);
        self.wait_bridge(READY, bridge);
        let (own, len) = self.host.own_section();
        // SAFETY: the own output section is mapped read-write for `len`
        // bytes and only this process writes it; the bridge reads it only
        // through its ring code after we announce READY below.
        unsafe { std::ptr::write_bytes(own, 0, len) };
        self.set_state(READY);
        self.set_state(RUN);
        self.wait_bridge(RUN, bridge);
    }

    /// Publishes one descriptor whose address lies far outside the own
    /// section and rings the bridge's data vector.
    fn publish_wild_descriptor(&self) {
        let (own, len) = self.host.own_section();
        let g = Geometry::for_section(len).unwrap();
        let at = |off: usize| own.wrapping_add(off);
        // The SAFETY argument of every `from_ptr` below: the offset comes
        // from this section's geometry, is naturally aligned and inside the
        // section, which is mapped read-write for this process; both sides
        // access these words only atomically.
        // SAFETY: see above.
        let addr = unsafe { AtomicU64::from_ptr(at(g.desc_offset(0)).cast()) };
        // SAFETY: see above.
        let dlen = unsafe { AtomicU32::from_ptr(at(g.desc_offset(0) + 8).cast()) };
        // SAFETY: see above.
        let flags = unsafe { AtomicU16::from_ptr(at(g.desc_offset(0) + 12).cast()) };
        // SAFETY: see above.
        let ring0 = unsafe { AtomicU16::from_ptr(at(g.avail_ring_offset(0)).cast()) };
        // SAFETY: see above.
        let avail_idx = unsafe { AtomicU16::from_ptr(at(g.avail_idx_offset()).cast()) };
        addr.store(u64::MAX - 0xfff, Ordering::Relaxed);
        dlen.store(60, Ordering::Relaxed);
        flags.store(0, Ordering::Relaxed);
        ring0.store(0, Ordering::Relaxed);
        avail_idx.store(1, Ordering::Release);
        self.host
            .doorbell(self.bridge, 1)
            .expect("ring the bridge's data vector");
    }
}

/// One `ivnet-bridge` in its own namespace on a fresh server, with the test
/// process as its raw host peer.
struct Rig {
    peer: Peer,
    bridge: Proc,
    _server: Server,
    ns: Netns,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(ns: &str, extra: &[&str]) -> Rig {
        netns::require_root();
        netns::ensure_base_tools();
        let dir = tempfile::tempdir().unwrap();
        let ns = Netns::new(ns);
        let server = Server::start(dir.path(), &[]);
        let spec = BridgeSpec {
            name: "bridge".into(),
            socket: server.socket.clone(),
            netns: ns.name().into(),
            tap: TAP.into(),
            mtu: 1500,
            extra: extra.iter().map(|a| (*a).into()).collect(),
        };
        let mut bridge = spec.spawn(dir.path());
        bridge
            .wait_stderr("TAP, MTU", 1, Duration::from_secs(20))
            .unwrap();
        let host = HostPeer::connect(&server.socket, Duration::from_secs(5)).unwrap();
        let peer = Peer {
            bridge: 1 - host.id(),
            host,
        };
        Rig {
            peer,
            bridge,
            _server: server,
            ns,
            _dir: dir,
        }
    }
}

fn stats(p: &Proc) -> serde_json::Value {
    netns::signal_report(p)
}

#[test]
fn hostile_peer_resets_the_link_and_the_bridge_recovers() {
    let _serial = netns::serial();
    // Bound in this order so that they drop in reverse: peer and bridge
    // first, the directory last.
    let Rig {
        _dir,
        ns,
        _server,
        mut bridge,
        peer,
    } = Rig::start("hostile", &[]);
    peer.wait_bridge(INIT, &bridge);

    peer.handshake(&bridge);
    ns.wait_carrier(TAP, true, Duration::from_secs(10)).unwrap();

    // 1. A descriptor outside the data area.
    peer.publish_wild_descriptor();
    peer.wait_bridge(RESET, &bridge);
    ns.wait_carrier(TAP, false, Duration::from_secs(10))
        .unwrap();
    assert!(bridge.running(), "the bridge died:\n{}", bridge.stderr());
    let s = stats(&bridge);
    assert!(s["ring"]["peer_errors"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        bridge.stderr().contains("peer protocol error"),
        "{}",
        bridge.stderr()
    );

    // The peer starts over: RESET, then the handshake; the link runs again.
    peer.set_state(RESET);
    peer.wait_bridge(INIT, &bridge);
    peer.handshake(&bridge);
    ns.wait_carrier(TAP, true, Duration::from_secs(10)).unwrap();

    // 2. A state value that does not exist.
    let errors = stats(&bridge)["ring"]["peer_errors"].as_u64().unwrap();
    peer.set_state(0xdead_beef);
    peer.wait_bridge(RESET, &bridge);
    ns.wait_carrier(TAP, false, Duration::from_secs(10))
        .unwrap();
    let s = stats(&bridge);
    assert!(s["ring"]["peer_errors"].as_u64().unwrap() > errors, "{s}");
    peer.set_state(RESET);
    peer.wait_bridge(INIT, &bridge);
    peer.handshake(&bridge);
    ns.wait_carrier(TAP, true, Duration::from_secs(10)).unwrap();

    let st = bridge.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}\n{}",
        bridge.stderr()
    );
    assert_eq!(peer.bridge_state(), RESET, "the bridge leaves in RESET");
}

/// How long the scripted hostile peer acts.
const HOSTILE_FOR: Duration = Duration::from_secs(20);

/// A peer that, for [`HOSTILE_FOR`], writes random states, indices,
/// descriptors and ring entries into its own section and rings both
/// vectors (see `ivnet_e2e::hostile`) cannot make `ivnet-bridge` flood its
/// log or flap the TAP carrier beyond the design's bounds (backoff capped at
/// 1 s, rate-limited logs: `ivnet_e2e::hostile::bounds`); the bridge stays
/// alive; and once the hostile peer is gone, a real `ivnet-bridge` as a
/// good peer links within a bound and carries a ping.
///
/// Before the backoff and the log limiter, 100 s of such a peer made the
/// bridge write 303,838 lines (31 MB) and flap the carrier 29,193 times.
#[test]
fn hostile_peer_for_20_s_keeps_logs_and_flaps_bounded_then_a_good_peer_links() {
    let _serial = netns::serial();
    netns::require_root();
    netns::ensure_base_tools();
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("hflood");
    let ns_good = Netns::new("hgood");
    let server = Server::start(dir.path(), &[]);
    let spec = |name: &str, ns: &Netns| BridgeSpec {
        name: name.into(),
        socket: server.socket.clone(),
        netns: ns.name().into(),
        tap: TAP.into(),
        mtu: 1500,
        extra: vec!["--mode".into(), "event".into()],
    };
    let mut bridge = spec("bridge", &ns).spawn(dir.path());
    bridge
        .wait_stderr("TAP, MTU", 1, Duration::from_secs(20))
        .unwrap();
    ns.add_addr(TAP, "10.77.0.1/24");
    let mut hostile = HostilePeer::connect(&server.socket);
    let ok = netns::wait_until(Duration::from_secs(10), Duration::from_millis(2), || {
        hostile.victim_state() == INIT
    });
    assert!(
        ok.is_ok(),
        "the bridge never reached INIT:\n{}",
        bridge.stderr()
    );
    let before = stats(&bridge);
    let log_before = bridge.stderr();

    let started = Instant::now();
    let counts = hostile.run_for(HOSTILE_FOR);
    let acted = started.elapsed();
    assert!(bridge.running(), "the bridge died:\n{}", tail_of(&bridge));
    let after = stats(&bridge);
    let log = bridge.stderr();
    let window = &log[log_before.len()..];
    let lines = window.lines().count() as u64;
    let bytes = window.len() as u64;
    let n = |v: &serde_json::Value, a: &str, b: &str| v[a][b].as_u64().unwrap();
    let flaps = n(&after, "bridge", "carrier_changes") - n(&before, "bridge", "carrier_changes");
    let errors = n(&after, "ring", "peer_errors") - n(&before, "ring", "peer_errors");
    let resets = n(&after, "ring", "link_resets") - n(&before, "ring", "link_resets");
    eprintln!(
        "hostile peer (seed {}) for {acted:.1?}: {} writes, {} states, {} doorbells; bridge: {lines} log lines, \
         {bytes} bytes, {flaps} carrier changes, {resets} link resets, {errors} peer errors; bounds: {} lines, \
         {} bytes, {} carrier changes",
        hostile.seed,
        counts.writes,
        counts.states,
        counts.doorbells,
        bounds::max_log_lines(acted),
        bounds::max_log_bytes(acted),
        bounds::max_carrier_changes(acted),
    );
    // The bounds are checked now and asserted at the end, so that one run
    // also shows whether the good peer links.
    let mut violations = Vec::new();
    if flaps > bounds::max_carrier_changes(acted) {
        violations.push(format!(
            "{flaps} carrier changes, bound {}: the renegotiation backoff does not hold",
            bounds::max_carrier_changes(acted)
        ));
    }
    if lines > bounds::max_log_lines(acted) || bytes > bounds::max_log_bytes(acted) {
        violations.push(format!(
            "{lines} log lines / {bytes} bytes, bounds {} / {}: the log is not rate-limited; the last lines:\n{}",
            bounds::max_log_lines(acted),
            bounds::max_log_bytes(acted),
            netns::tail(window)
        ));
    }
    let non_transitions = window
        .lines()
        .filter(|l| {
            l.split("link: local ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|r| r.split_once(" -> "))
                .is_some_and(|(a, b)| a == b)
        })
        .count();
    if non_transitions > 0 {
        violations.push(format!(
            "{non_transitions} non-transitions logged (\"link: local X -> X\")"
        ));
    }
    assert!(
        counts.doorbells > 0,
        "the hostile peer rang no doorbell: the test did not test anything"
    );
    assert!(
        errors > 0,
        "the hostile peer provoked no protocol error: the test did not test anything"
    );

    // The hostile peer leaves (the server resets its entry and rings the
    // bridge); a real bridge takes its place and must link at once.
    let hostile_seed = hostile.seed;
    hostile.leave();
    let mut good = spec("good", &ns_good).spawn(dir.path());
    good.wait_stderr("TAP, MTU", 1, Duration::from_secs(20))
        .unwrap();
    ns_good.add_addr(TAP, "10.77.0.2/24");
    let joined = Instant::now();
    for n in [&ns, &ns_good] {
        n.wait_carrier(TAP, true, bounds::GOOD_PEER_LINK)
            .unwrap_or_else(|e| {
                panic!(
                    "{e}\n--- bridge:\n{}\n--- good peer:\n{}",
                    tail_of(&bridge),
                    tail_of(&good)
                )
            });
    }
    let linked = joined.elapsed();
    assert!(
        ns.ping("10.77.0.2", 3, None),
        "no ping over the relinked bridge\n{}\n{}",
        tail_of(&bridge),
        tail_of(&good)
    );
    eprintln!(
        "good peer linked {linked:.1?} after it started; {:.1?} in all",
        started.elapsed()
    );
    assert!(
        violations.is_empty(),
        "hostile peer for {acted:.1?} (seed {}):\n{}",
        hostile_seed,
        violations.join("\n")
    );
}

fn tail_of(p: &Proc) -> String {
    netns::tail(&p.stderr())
}

/// A peer that keeps the protocol but flaps the link: a correct handshake,
/// RESET as soon as the bridge runs, again and again. Nothing here is a
/// protocol fault, yet before short links counted toward the backoff such a
/// peer flapped the bridge's carrier about 1,200 times a minute. Each drop
/// of a link that never settled now counts like a fault, so the carrier
/// changes stay within the same bound as for a peer that writes garbage;
/// and the peer, once it stays, links.
#[test]
fn flapping_peer_is_held_back_like_a_faulting_one_then_links() {
    const FLAP_FOR: Duration = Duration::from_secs(10);
    let _serial = netns::serial();
    // Bound in this order so that they drop in reverse: peer and bridge
    // first, the directory last.
    let Rig {
        _dir,
        ns,
        _server,
        mut bridge,
        peer,
    } = Rig::start("hflap", &["--mode", "event"]);
    peer.wait_bridge(INIT, &bridge);
    let before = stats(&bridge);

    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < FLAP_FOR {
        // Held back by the backoff, the bridge waits in RESET; the
        // handshake's own wait (10 s) covers the 1 s cap.
        peer.handshake(&bridge);
        peer.set_state(RESET);
        let left = netns::wait_until(Duration::from_secs(10), Duration::from_millis(1), || {
            peer.bridge_state() != RUN
        });
        assert!(
            left.is_ok(),
            "the bridge stayed in RUN:\n{}",
            bridge.stderr()
        );
        cycles += 1;
    }
    let acted = started.elapsed();
    let after = stats(&bridge);
    let n = |v: &serde_json::Value, a: &str, b: &str| v[a][b].as_u64().unwrap();
    let flaps = n(&after, "bridge", "carrier_changes") - n(&before, "bridge", "carrier_changes");
    let short = n(&after, "driver", "short_links") - n(&before, "driver", "short_links");
    let waits = n(&after, "driver", "backoff_waits") - n(&before, "driver", "backoff_waits");
    let faults = n(&after, "ring", "peer_errors") - n(&before, "ring", "peer_errors");
    eprintln!(
        "flapping peer for {acted:.1?}: {cycles} link cycles; bridge: {flaps} carrier changes (bound {}), \
         {short} short links, {waits} backoff waits, {faults} peer errors",
        bounds::max_carrier_changes(acted)
    );
    assert!(
        cycles >= 3,
        "the peer linked only {cycles} times: the test did not test anything"
    );
    assert_eq!(faults, 0, "the flapping peer keeps the protocol: {after}");
    assert!(
        short >= 2 && waits >= 1,
        "no backoff for short links: {after}"
    );
    assert!(
        flaps <= bounds::max_carrier_changes(acted),
        "{flaps} carrier changes in {acted:.1?}, bound {}: short links are not held back",
        bounds::max_carrier_changes(acted)
    );

    // The peer stops flapping: it links (after at most one backoff wait).
    let linked = Instant::now();
    peer.handshake(&bridge);
    ns.wait_carrier(TAP, true, bounds::GOOD_PEER_LINK).unwrap();
    eprintln!("the peer linked for good in {:.1?}", linked.elapsed());
    assert!(bridge.running(), "the bridge died:\n{}", bridge.stderr());
}
