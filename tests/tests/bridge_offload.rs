//! The offload extension between two ivnet-bridges over one ivshmem-server
//! started with default options, each TAP in its own network namespace:
//! offloads are negotiated with no flag and carry 1 GiB of TCP byte-exact
//! each way at MTU 1500 as super-frames (the offload counters say so); a
//! bridge with `--offload off` still links with one that offers them, and
//! the wire stays plain (no header, no frame over MTU + 18, nothing dropped
//! by the plain side's kernel); UDP with checksum offload is echoed
//! byte-exact; a peer sending bad virtio-net headers gets counted drops.
//! (The bare-metal guest as a plain peer: `guest_bridge`'s TCP echo test.)

use std::time::Duration;

use ivnet_e2e::netns::{self, ADDR_A, ADDR_B, BridgedPair, Proc};

const GIB: u64 = 1 << 30;

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// One byte-exact `ivnet-stream` transfer per direction, both at once.
fn bulk_both_ways(pair: &BridgedPair, bytes: u64, tag: &str) {
    let stream = &netns::bins().stream;
    let dir = pair.dir.path();
    let len = bytes.to_string();
    let mut procs = Vec::new();
    for (ns, addr, port, seed) in [
        (&pair.ns_b, ADDR_B, 5011, "31"),
        (&pair.ns_a, ADDR_A, 5012, "32"),
    ] {
        let mut cmd = ns.command(stream);
        cmd.args(["recv", &format!("{addr}:{port}"), &len, seed, "600"]);
        procs.push(Proc::spawn(cmd, dir, &format!("{tag}-recv-{port}")));
    }
    for (ns, addr, port, seed) in [
        (&pair.ns_a, ADDR_B, 5011, "31"),
        (&pair.ns_b, ADDR_A, 5012, "32"),
    ] {
        let mut cmd = ns.command(stream);
        cmd.args(["send", &format!("{addr}:{port}"), &len, seed, "600"]);
        procs.push(Proc::spawn(cmd, dir, &format!("{tag}-send-{port}")));
    }
    for p in &mut procs {
        let st = p.wait(Duration::from_secs(600));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} failed ({st:?}): {}{}\n{}",
            p.name,
            p.stdout(),
            p.stderr(),
            pair.logs()
        );
        eprintln!("{}: {}", p.name, p.stdout().trim());
    }
}

/// Every frame read was sent or counted, every frame received was written
/// or counted.
fn check_accounting(s: &serde_json::Value) {
    let (b, r, o) = (&s["bridge"], &s["ring"], &s["offload"]);
    assert_eq!(
        n(&b["tap_read_frames"]),
        n(&r["tx_frames"])
            + n(&b["drop_oversize"])
            + n(&b["drop_link_down"])
            + n(&o["drop_unnegotiated"]),
        "{s}"
    );
    assert_eq!(
        n(&r["rx_frames"]),
        n(&b["tap_written_frames"]) + n(&b["drop_tap_write"]) + n(&o["drop_bad_header"]),
        "{s}"
    );
}

#[test]
fn offloads_negotiated_by_default_carry_tcp_byte_exact() {
    let _serial = netns::serial();
    let mut pair = BridgedPair::start(1500, &[]);
    let logs = pair.logs();
    for p in [&mut pair.a, &mut pair.b] {
        p.wait_stderr(
            "offloads negotiated with the peer",
            1,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|_| panic!("{}: no negotiation\n{logs}", p.name));
    }
    assert!(pair.ns_a.ping(ADDR_B, 3, None), "ping\n{}", pair.logs());
    // Full-MTU frames still pass with DF, one byte more does not.
    assert!(
        pair.ns_a.ping(ADDR_B, 2, Some(1472)),
        "ping 1472\n{}",
        pair.logs()
    );
    assert!(
        !pair.ns_a.ping(ADDR_B, 1, Some(1473)),
        "oversized DF ping passed"
    );
    bulk_both_ways(&pair, GIB, "offload");
    for p in [&pair.a, &pair.b] {
        let s = netns::signal_report(p);
        check_accounting(&s);
        let o = &s["offload"];
        assert!(s["offloads"].as_str().unwrap().contains("TSO4"), "{s}");
        assert!(
            n(&o["tx_tso4"]) > 0 && n(&o["rx_tso4"]) > 0,
            "no super-frames: {s}"
        );
        assert_eq!(n(&o["drop_bad_header"]), 0, "{s}");
        assert_eq!(n(&s["ring"]["peer_errors"]), 0, "{s}");
        // Super-frames: far more than an MTU per read/write system call.
        let b = &s["bridge"];
        let per_read = n(&b["tap_read_bytes"]) / n(&b["tap_read_frames"]).max(1);
        let per_write = n(&b["tap_written_bytes"]) / n(&b["tap_written_frames"]).max(1);
        assert!(
            per_read > 4 * 1518 && per_write > 4 * 1518,
            "{per_read} {per_write}: {s}"
        );
        assert!(
            n(&s["ring"]["tx_bytes"]) > GIB && n(&s["ring"]["rx_bytes"]) > GIB,
            "{s}"
        );
        eprintln!(
            "{}: {per_read} bytes/read, {per_write} bytes/write, {o}",
            p.name
        );
    }
}

/// One side with offloads off: both link plain, the offering side sends
/// nothing but reference frames, and TCP is byte-exact both ways.
#[test]
fn offload_off_on_one_side_falls_back_to_plain() {
    let _serial = netns::serial();
    let mut pair = BridgedPair::start_with(1500, &[], &["--offload", "off"]);
    let logs = pair.logs();
    pair.a
        .wait_stderr("the peer offers no offloads", 1, Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("A did not fall back\n{logs}"));
    assert!(pair.b.stderr().contains("offloads off"), "{}", pair.logs());
    assert!(pair.ns_b.ping(ADDR_A, 3, None), "ping\n{}", pair.logs());
    assert!(
        pair.ns_a.ping(ADDR_B, 2, Some(1472)),
        "ping 1472\n{}",
        pair.logs()
    );
    bulk_both_ways(&pair, 256 << 20, "plain");
    let sa = netns::signal_report(&pair.a);
    let sb = netns::signal_report(&pair.b);
    for s in [&sa, &sb] {
        check_accounting(s);
        let o = &s["offload"];
        for k in [
            "tx_csum",
            "tx_tso4",
            "tx_tso6",
            "tx_uso",
            "rx_csum",
            "rx_tso4",
            "rx_tso6",
            "rx_uso",
            "negotiated_links",
        ] {
            assert_eq!(n(&o[k]), 0, "{k}: {s}");
        }
        assert_eq!(n(&s["bridge"]["drop_tap_write"]), 0, "{s}");
        assert_eq!(n(&s["ring"]["peer_errors"]), 0, "{s}");
    }
    assert_eq!(sa["offloads"], "plain (peer offers none)", "{sa}");
    assert_eq!(sb["offloads"], "off", "{sb}");
    // What the plain side received is plain Ethernet: at most MTU + 18 per
    // frame on average over >100k frames, all accepted by its kernel.
    let (rx, bytes) = (n(&sb["ring"]["rx_frames"]), n(&sb["ring"]["rx_bytes"]));
    assert!(rx > 100_000 && bytes / rx <= 1518, "{sb}");
    assert_eq!(n(&sb["bridge"]["tap_written_frames"]), rx, "{sb}");
}

/// A peer that advertises the extension and then sends bad virtio-net
/// headers — a GSO type that was not negotiated, a checksum offset beyond
/// the frame, TSO with gso_size 0, a super-frame longer than negotiated —
/// gets each frame dropped and counted; nothing reaches the kernel that it
/// refuses, the link stays up, and a good frame after them is delivered.
#[test]
fn bad_virtio_net_headers_are_counted_drops() {
    use ivnet_ring::{Config, Endpoint, Notify, OwnSection, PeerSection};
    use ivshmem_server::HostPeer;

    let _serial = netns::serial();
    netns::require_root();
    netns::ensure_base_tools();
    let dir = tempfile::tempdir().unwrap();
    let ns = netns::Netns::new("hdr");
    let server = netns::Server::start(dir.path(), &[]);
    let mut peer = HostPeer::connect(&server.socket, Duration::from_secs(10)).unwrap();
    assert_eq!(peer.id(), 0);
    let (own_ptr, own_len) = peer.own_section();
    let (peer_ptr, peer_len) = peer.peer_section(1).unwrap();
    // SAFETY: HostPeer maps its own section read-write and the other one
    // read-only while `peer` lives; the endpoint is dropped first (below).
    let own = unsafe { OwnSection::new(own_ptr, own_len) }.unwrap();
    // SAFETY: as above.
    let theirs = unsafe { PeerSection::new(peer_ptr, peer_len) }.unwrap();
    let mut ep = Endpoint::new(own, theirs, Config::with_mtu(1500)).unwrap();
    // Version 1 block: "IVNX", version 1, header 10, CSUM|TSO4|TSO6, 65564.
    let mut block = [0u8; 16];
    block[0..4].copy_from_slice(&0x584e_5649u32.to_le_bytes());
    block[4..6].copy_from_slice(&1u16.to_le_bytes());
    block[6..8].copy_from_slice(&10u16.to_le_bytes());
    block[8..12].copy_from_slice(&0b111u32.to_le_bytes());
    block[12..16].copy_from_slice(&65564u32.to_le_bytes());
    ep.set_own_extension(block);

    let spec = netns::BridgeSpec {
        name: "bridge".into(),
        socket: server.socket.clone(),
        netns: ns.name().into(),
        tap: "ivn0".into(),
        mtu: 1500,
        extra: vec![],
    };
    let mut bridge = spec.spawn(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ep.carrier() {
        assert!(
            std::time::Instant::now() < deadline,
            "no carrier\n{}",
            bridge.stderr()
        );
        let raw = peer.peer_state(1).unwrap_or(0);
        if let Some(s) = ep.on_peer_state(raw, true).write_state {
            peer.set_own_state(s.raw());
            let _ = peer.doorbell(1, 0);
        }
        let _ = peer.wait(Some(Duration::from_millis(20)));
    }
    bridge
        .wait_stderr(
            "offloads negotiated with the peer",
            1,
            Duration::from_secs(10),
        )
        .expect("negotiated");
    ep.set_max_frame_len(10 + 70_000).unwrap();

    let hdr = |flags: u8, gso: u8, gso_size: u16, start: u16, off: u16| {
        let mut h = vec![flags, gso, 0, 0];
        h.extend_from_slice(&gso_size.to_le_bytes());
        h.extend_from_slice(&start.to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
        h
    };
    // A broadcast ARP request from 10.77.0.9 for 10.77.0.8 (nobody): the
    // kernel accepts it and answers nothing.
    let mut eth = vec![0xff; 6];
    eth.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
    eth.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 10, 77, 0, 9]);
    eth.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 77, 0, 8]);
    eth.resize(60, 0);
    let frames: Vec<Vec<u8>> = vec![
        [hdr(1, 3, 1400, 14, 6), eth.clone()].concat(), // UFO: not negotiated
        [hdr(1, 0, 0, 50, 16), eth.clone()].concat(),   // checksum beyond the frame
        [hdr(1, 1, 0, 34, 16), eth.clone()].concat(),   // TSO with gso_size 0
        [hdr(1, 1, 1448, 34, 16), vec![0; 70_000]].concat(), // longer than negotiated
        [hdr(0, 0, 0, 0, 0), eth.clone()].concat(),     // good
    ];
    for f in &frames {
        while !ep.tx_ready() {
            ep.reclaim().unwrap();
            let _ = peer.wait(Some(Duration::from_millis(5)));
        }
        ep.send(f).unwrap();
        if ep.flush_tx() == Notify::Doorbell {
            peer.doorbell(1, 1).unwrap();
        }
    }
    let mut report = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        report = netns::signal_report(&bridge);
        if n(&report["ring"]["rx_frames"]) >= frames.len() as u64 {
            break;
        }
    }
    assert_eq!(n(&report["ring"]["rx_frames"]), 5, "{report}");
    assert_eq!(n(&report["offload"]["drop_bad_header"]), 4, "{report}");
    assert_eq!(n(&report["bridge"]["tap_written_frames"]), 1, "{report}");
    assert_eq!(n(&report["bridge"]["drop_tap_write"]), 0, "{report}");
    assert_eq!(n(&report["ring"]["peer_errors"]), 0, "{report}");
    assert_eq!(report["carrier"], true, "{report}");
    let st = bridge.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{}", bridge.stderr());
}

const UDP_ECHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.0.2", 7007))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
"#;

const UDP_CLIENT: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
ok = 0
for i in range(1000):
    d = bytes((i * 7 + j) & 0xff for j in range(1400))
    for attempt in range(5):
        s.sendto(d, ("10.77.0.2", 7007))
        try:
            while True:
                e, _ = s.recvfrom(65535)
                if e == d:
                    ok += 1
                    break
        except socket.timeout:
            continue
        break
print("echoed", ok, flush=True)
"#;

/// UDP with checksum offload: 1000 datagrams of 1400 bytes echoed
/// byte-exact (the kernel checks each UDP checksum the peer's kernel left
/// to the other side), counted as checksum-offload frames both ways.
#[test]
fn udp_with_checksum_offload_is_byte_exact() {
    let _serial = netns::serial();
    let pair = BridgedPair::start(1500, &[]);
    let dir = pair.dir.path();
    let mut cmd = pair.ns_b.command("python3");
    cmd.args(["-c", UDP_ECHO]);
    let mut echo = Proc::spawn(cmd, dir, "udp-echo");
    netns::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        echo.stdout().contains("ready")
    })
    .unwrap_or_else(|_| panic!("UDP echo server: {}", echo.stderr()));
    let before = netns::signal_report(&pair.a);
    let mut cmd = pair.ns_a.command("python3");
    cmd.args(["-c", UDP_CLIENT]);
    let mut client = Proc::spawn(cmd, dir, "udp-client");
    let st = client.wait(Duration::from_secs(120));
    assert!(st.is_some_and(|s| s.success()), "{}", client.stderr());
    assert_eq!(client.stdout().trim(), "echoed 1000", "{}", pair.logs());
    let after = netns::signal_report(&pair.a);
    let d = |k: &str| n(&after["offload"][k]) - n(&before["offload"][k]);
    assert!(d("tx_csum") >= 1000, "{after}");
    assert!(d("rx_csum") >= 1000, "{after}");
    assert_eq!(n(&after["offload"]["drop_bad_header"]), 0, "{after}");
    assert_eq!(n(&after["bridge"]["drop_tap_write"]), 0, "{after}");
    let _ = echo.stop(libc::SIGTERM, Duration::from_secs(5));
}
