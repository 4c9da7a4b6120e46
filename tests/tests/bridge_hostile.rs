//! A hostile peer. The test process joins the server as the bridge's peer
//! (an ivshmem-server host peer writing raw shared memory), completes the
//! handshake, then breaks the protocol: a descriptor that points outside its
//! data area, and a state value that does not exist. Each time the bridge
//! must count the error, reset the link (state RESET, carrier off), keep
//! running, and come back when the peer restarts the handshake properly.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ivnet_e2e::netns::{self, BridgeSpec, Netns, Proc, Server, last_stats};
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

fn stats(p: &Proc) -> serde_json::Value {
    let before = p.stdout().matches("\"reason\":\"signal\"").count();
    p.send_signal(libc::SIGUSR1);
    let ok = netns::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        p.stdout().matches("\"reason\":\"signal\"").count() > before
    });
    assert!(ok.is_ok(), "no report on SIGUSR1");
    last_stats(&p.stdout(), "signal").unwrap()
}

#[test]
fn hostile_peer_resets_the_link_and_the_bridge_recovers() {
    let _serial = netns::serial();
    netns::require_root();
    netns::ensure_base_tools();
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("hostile");
    let server = Server::start(dir.path(), &[]);
    let spec = BridgeSpec {
        name: "bridge".into(),
        socket: server.socket.clone(),
        netns: ns.name().into(),
        tap: TAP.into(),
        mtu: 1500,
        extra: vec![],
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
