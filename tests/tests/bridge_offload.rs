//! The offload extension between two ivnet-bridges over one ivshmem-server
//! started with default options, each TAP in its own network namespace:
//! offloads are negotiated with no flag and carry 1 GiB of TCP byte-exact
//! each way at MTU 1500 as super-frames (the offload counters say so); a
//! bridge with `--offload off` still links with one that offers them, and
//! the wire stays plain (no header, no frame over MTU + 18, nothing dropped
//! by the plain side's kernel).

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
