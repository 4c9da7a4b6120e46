//! Link loss and recovery: `kill -9` of one bridge in the middle of a
//! transfer, its restart, and 1,000 restarts in a row without the survivor
//! growing in descriptors or memory.

use std::time::{Duration, Instant};

use ivnet_e2e::netns::{self, ADDR_B, BridgedPair, Proc, TAP, tail};

/// Starts an endless-ish transfer A -> B and returns (receiver, sender).
fn start_transfer(pair: &BridgedPair, bytes: u64, seed: u64, port: u16, tag: &str) -> (Proc, Proc) {
    let stream = &netns::bins().stream;
    let n = bytes.to_string();
    let seed = seed.to_string();
    let mut cmd = pair.ns_b.command(stream);
    cmd.args(["recv", &format!("{ADDR_B}:{port}"), &n, &seed, "120"]);
    let recv = Proc::spawn(cmd, pair.dir.path(), &format!("{tag}-recv"));
    let mut cmd = pair.ns_a.command(stream);
    cmd.args(["send", &format!("{ADDR_B}:{port}"), &n, &seed, "120"]);
    let send = Proc::spawn(cmd, pair.dir.path(), &format!("{tag}-send"));
    (recv, send)
}

fn assert_exact(p: &mut Proc, pair: &BridgedPair) {
    let st = p.wait(Duration::from_secs(300));
    assert!(
        st.is_some_and(|s| s.success()),
        "{} failed ({st:?}): {}{}\n{}",
        p.name,
        p.stdout(),
        p.stderr(),
        pair.logs()
    );
}

#[test]
fn kill_9_mid_transfer_then_restart() {
    let _serial = netns::serial();
    let mut pair = BridgedPair::start(16384, &[]);
    let (mut recv, mut send) = start_transfer(&pair, 64 << 30, 1, 5101, "doomed");
    // Wait until data is really flowing through the bridges.
    let flowing = netns::wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        netns::signal_report(&pair.b)["ring"]["rx_bytes"]
            .as_u64()
            .is_some_and(|b| b > 64 << 20)
    });
    assert!(flowing.is_ok(), "transfer did not start\n{}", pair.logs());

    let st = pair.b.kill9();
    assert!(!st.success());
    // The survivor notices (the server writes RESET for the dead peer and
    // rings vector 0) and drops the carrier.
    pair.ns_a
        .wait_carrier(TAP, false, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert!(pair.a.running(), "survivor died\n{}", pair.logs());
    // The half-done transfer cannot complete; stop it.
    let _ = send.kill9();
    let _ = recv.kill9();

    // Restart B: its TAP is new (the old one went with the process).
    pair.b = pair.spec_b.spawn(pair.dir.path());
    pair.b
        .wait_stderr("TAP, MTU", 2, Duration::from_secs(20))
        .unwrap();
    pair.ns_b.add_addr(TAP, &format!("{ADDR_B}/24"));
    pair.wait_link_up(Duration::from_secs(20));
    assert!(
        pair.a.stderr().contains("-> RUN"),
        "survivor never reached RUN again\n{}",
        pair.logs()
    );
    assert!(
        pair.ns_a.ping(ADDR_B, 3, None),
        "ping after restart failed\n{}",
        pair.logs()
    );
    let (mut recv, mut send) = start_transfer(&pair, 256 << 20, 2, 5102, "after");
    assert_exact(&mut send, &pair);
    assert_exact(&mut recv, &pair);

    let s = netns::signal_report(&pair.a);
    assert!(s["ring"]["link_resets"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["ring"]["peer_errors"], 0, "{s}");
}

#[test]
fn thousand_flaps_do_not_leak() {
    const FLAPS: usize = 1000;
    const WARMUP: usize = 20;
    let _serial = netns::serial();
    let mut pair = BridgedPair::start(1500, &[]);
    let dir = pair.dir.path().to_owned();
    let mut baseline = None;
    let start = Instant::now();
    for i in 0..FLAPS + WARMUP {
        // Alternate an orderly exit (RESET through the state entry) and a
        // crash (RESET written by the server on disconnect).
        if i % 2 == 0 {
            let st = pair.b.stop(libc::SIGTERM, Duration::from_secs(10));
            assert!(
                st.is_some_and(|s| s.success()),
                "flap {i}: SIGTERM exit {st:?}\n{}",
                pair.b.stderr()
            );
        } else {
            pair.b.kill9();
        }
        // The survivor's carrier goes down ...
        if let Err(e) = pair.ns_a.wait_carrier(TAP, false, Duration::from_secs(10)) {
            panic!("flap {i}: {e}\nsurvivor:\n{}", tail(&pair.a.stderr()));
        }
        pair.b = pair.spec_b.spawn_fresh(&dir);
        if let Err(e) = pair.b.wait_stderr("carrier on", 1, Duration::from_secs(20)) {
            panic!("flap {i}: {e}\nsurvivor:\n{}", tail(&pair.a.stderr()));
        }
        // ... and up again.
        if let Err(e) = pair.ns_a.wait_carrier(TAP, true, Duration::from_secs(10)) {
            panic!("flap {i}: {e}\nsurvivor:\n{}", tail(&pair.a.stderr()));
        }
        if i + 1 == WARMUP {
            baseline = Some((pair.a.fd_count(), pair.a.rss_kib()));
        }
    }
    let elapsed = start.elapsed();
    let (fds0, rss0) = baseline.unwrap();
    let (fds1, rss1) = (pair.a.fd_count(), pair.a.rss_kib());
    eprintln!(
        "{FLAPS} flaps in {elapsed:?}: survivor fds {fds0} -> {fds1}, VmRSS {rss0} -> {rss1} KiB"
    );
    assert_eq!(
        fds1, fds0,
        "survivor's descriptor count grew over {FLAPS} flaps"
    );
    assert!(
        rss1 <= rss0 + 512,
        "survivor's RSS grew from {rss0} to {rss1} KiB over {FLAPS} flaps"
    );

    // The survivor went through every flap, and the link works afterwards.
    pair.ns_b.add_addr(TAP, &format!("{ADDR_B}/24"));
    pair.wait_link_up(Duration::from_secs(20));
    assert!(
        pair.ns_a.ping(ADDR_B, 3, None),
        "ping after the flaps failed\n{}",
        pair.logs()
    );
    let s = netns::signal_report(&pair.a);
    let resets = s["ring"]["link_resets"].as_u64().unwrap();
    assert!(
        resets >= (FLAPS + WARMUP) as u64,
        "survivor saw {resets} link resets for {} flaps: {s}",
        FLAPS + WARMUP
    );
    assert!(
        s["bridge"]["carrier_changes"].as_u64().unwrap() >= 2 * (FLAPS + WARMUP) as u64,
        "{s}"
    );
    assert_eq!(s["ring"]["peer_errors"], 0, "{s}");
}
