//! Two ivnet-bridges over one ivshmem-server, each TAP in its own network
//! namespace: ping both ways, full-MTU pings with DF set, and a byte-exact
//! TCP bulk transfer of 1 GiB in each direction (both at once), at MTU 1500
//! and at ivshmem-net's default 16384; interface down/up stops and restores
//! the link. Then SIGTERM: exit 0, TAP removed.

use std::time::Duration;

use ivnet_e2e::netns::{self, ADDR_A, ADDR_B, BridgedPair, Proc, TAP, last_stats};

const GIB: u64 = 1 << 30;

/// Runs `ivnet-stream` receivers/senders for one transfer per direction at
/// the same time and asserts both are byte-exact.
fn bulk_both_ways(pair: &BridgedPair, bytes: u64, tag: &str) {
    let stream = &netns::bins().stream;
    let dir = pair.dir.path();
    let n = bytes.to_string();
    let mut cmd = pair.ns_b.command(stream);
    cmd.args(["recv", &format!("{ADDR_B}:5001"), &n, "11", "600"]);
    let mut recv_b = Proc::spawn(cmd, dir, &format!("{tag}-recv-b"));
    let mut cmd = pair.ns_a.command(stream);
    cmd.args(["recv", &format!("{ADDR_A}:5002"), &n, "22", "600"]);
    let mut recv_a = Proc::spawn(cmd, dir, &format!("{tag}-recv-a"));
    let mut cmd = pair.ns_a.command(stream);
    cmd.args(["send", &format!("{ADDR_B}:5001"), &n, "11", "600"]);
    let mut send_a = Proc::spawn(cmd, dir, &format!("{tag}-send-a"));
    let mut cmd = pair.ns_b.command(stream);
    cmd.args(["send", &format!("{ADDR_A}:5002"), &n, "22", "600"]);
    let mut send_b = Proc::spawn(cmd, dir, &format!("{tag}-send-b"));
    for p in [&mut send_a, &mut send_b, &mut recv_a, &mut recv_b] {
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

/// Asks a bridge for its counters (SIGUSR1) and returns the report.
fn snapshot(p: &Proc) -> serde_json::Value {
    netns::signal_report(p)
}

fn link_test(mtu: u32) {
    let _serial = netns::serial();
    let mut pair = BridgedPair::start(mtu, &[]);
    assert!(
        pair.ns_a.ping(ADDR_B, 5, None),
        "ping A -> B failed\n{}",
        pair.logs()
    );
    assert!(
        pair.ns_b.ping(ADDR_A, 5, None),
        "ping B -> A failed\n{}",
        pair.logs()
    );
    // The largest ICMP echo that fits the MTU without fragmentation.
    let max_payload = mtu - 28;
    assert!(
        pair.ns_a.ping(ADDR_B, 3, Some(max_payload)),
        "full-MTU ping A -> B failed\n{}",
        pair.logs()
    );
    assert!(
        pair.ns_b.ping(ADDR_A, 3, Some(max_payload)),
        "full-MTU ping B -> A failed\n{}",
        pair.logs()
    );
    // One byte more must not pass with DF set (the MTU is really `mtu`).
    assert!(
        !pair.ns_a.ping(ADDR_B, 1, Some(max_payload + 1)),
        "oversized DF ping passed"
    );

    // Taking one TAP down stops the link for the other side too (as
    // ndo_stop does for ivshmem-net); bringing it up restores it.
    pair.ns_a.run(&["ip", "link", "set", TAP, "down"]);
    pair.ns_b
        .wait_carrier(TAP, false, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    pair.ns_a.run(&["ip", "link", "set", TAP, "up"]);
    pair.wait_link_up(Duration::from_secs(10));
    assert!(
        pair.ns_a.ping(ADDR_B, 3, None),
        "ping after down/up failed\n{}",
        pair.logs()
    );

    bulk_both_ways(&pair, GIB, &format!("mtu{mtu}"));

    // Nothing lost silently: every frame read from a TAP was published to
    // the peer or counted as dropped, every frame received was written to
    // the TAP or counted, and (with the link idle) what one side published
    // the other received.
    let sa = snapshot(&pair.a);
    let sb = snapshot(&pair.b);
    for s in [&sa, &sb] {
        let (b, r) = (&s["bridge"], &s["ring"]);
        let n = |v: &serde_json::Value| v.as_u64().unwrap();
        assert_eq!(
            n(&b["tap_read_frames"]),
            n(&r["tx_frames"]) + n(&b["drop_oversize"]) + n(&b["drop_link_down"]),
            "{s}"
        );
        assert_eq!(
            n(&r["rx_frames"]),
            n(&b["tap_written_frames"]) + n(&b["drop_tap_write"]),
            "{s}"
        );
    }
    for (tx, rx) in [(&sa, &sb), (&sb, &sa)] {
        let sent = tx["ring"]["tx_frames"].as_u64().unwrap();
        let got = rx["ring"]["rx_frames"].as_u64().unwrap();
        assert!(
            sent.abs_diff(got) <= 2,
            "published {sent}, received {got}:\n{tx}\n{rx}"
        );
    }

    // SIGTERM: RESET, TAP removed (the bridge created it), exit 0, and a
    // final report without peer errors that claims nothing untrue: the
    // side that left first saw no link reset (leaving is not one), and no
    // side reports a peer state or a carrier after it left.
    for (i, (p, ns)) in [(&mut pair.a, &pair.ns_a), (&mut pair.b, &pair.ns_b)]
        .into_iter()
        .enumerate()
    {
        let st = p.stop(libc::SIGTERM, Duration::from_secs(10));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} did not exit 0 on SIGTERM: {st:?}\n{}",
            p.name,
            p.stderr()
        );
        assert!(
            !ns.has_link(TAP),
            "{}: TAP still present after exit",
            p.name
        );
        let stats = last_stats(&p.stdout(), "exit").expect("final stats line");
        assert_eq!(stats["ring"]["peer_errors"], 0, "{stats}");
        assert_eq!(stats["bridge"]["drop_oversize"], 0, "{stats}");
        assert_eq!(stats["state"], "RESET", "{stats}");
        assert_eq!(stats["carrier"], false, "{stats}");
        assert!(stats["peer_state"].is_null(), "{stats}");
        if i == 0 {
            assert_eq!(stats["ring"]["link_resets"], 0, "{stats}");
        }
        assert!(stats["ring"]["tx_bytes"].as_u64().unwrap() > GIB, "{stats}");
        assert!(stats["ring"]["rx_bytes"].as_u64().unwrap() > GIB, "{stats}");
        eprintln!("{}: {stats}", p.name);
    }
}

#[test]
fn ping_and_bulk_at_mtu_1500() {
    link_test(1500);
}

#[test]
fn ping_and_bulk_at_mtu_16384() {
    link_test(16384);
}

/// Poll mode on one side, hybrid on the other: traffic flows byte-exact,
/// and the polling side's peer rings (almost) no data doorbells, because a
/// polling receiver never re-enables its RX notification.
#[test]
fn poll_and_hybrid_modes() {
    let _serial = netns::serial();
    let pair = BridgedPair::start_with(
        1500,
        // Plain frames: the frame count below assumes MTU-sized frames.
        &["--mode", "poll", "--offload", "off"],
        &[
            "--mode",
            "hybrid",
            "--busy-poll-us",
            "100",
            "--offload",
            "off",
        ],
    );
    assert!(
        pair.ns_a.ping(ADDR_B, 5, None),
        "ping A -> B failed\n{}",
        pair.logs()
    );
    assert!(
        pair.ns_b.ping(ADDR_A, 5, None),
        "ping B -> A failed\n{}",
        pair.logs()
    );
    bulk_both_ways(&pair, 64 << 20, "modes");
    let sb = snapshot(&pair.b);
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    let (rung, frames) = (
        n(&sb["bridge"]["doorbells_sent"]),
        n(&sb["ring"]["tx_frames"]),
    );
    assert!(frames > 40_000, "{sb}");
    assert!(
        rung * 100 < frames,
        "B rang the polling side {rung} times for {frames} frames: {sb}"
    );
    assert!(n(&sb["ring"]["notifications_suppressed"]) > 0, "{sb}");
}
