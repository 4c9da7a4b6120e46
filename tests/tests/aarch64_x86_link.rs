//! Two architectures on one ivshmem-net link: the aarch64 guest (QEMU
//! `virt`, TCG) and the x86_64 guest (q35) attached to one `ivshmem-server`
//! as its two peers. Both run the same NIC over the same driver core, on
//! opposite byte-level views of one shared memory, so the handshake only
//! completes if both agree on every layout word and state value.
//!
//! Traffic: each guest runs the `ping=` and the `udpecho=` client against
//! the other (all four at once, MTU 1500 on both), so frames cross the link
//! in both directions: ARP, ICMP echo requests and replies and UDP echo
//! datagrams of 56 and 4000 bytes of payload (the large ones as three IPv4
//! fragments each way), every reply checked byte for byte by the guest that
//! sent the request. The test reads the clients' summary lines (`ping: to=…
//! sent=… received=… bad=… lost=…`, `udpecho: …`) and the counters lines
//! (doorbells rung and taken on both sides, UDP datagrams echoed).
//! Killing and restarting either guest takes the other's carrier off and on
//! again without a reboot of the survivor, and its pings resume.

use std::time::{Duration, Instant};

use ivnet_e2e::qemu::{Arch, Guest, GuestConfig, IvshmemServer};

mod guest_common;
use guest_common::stat;

const LINK_TIMEOUT: Duration = Duration::from_secs(90);
const A64_IP: &str = "10.77.0.3";
const X86_IP: &str = "10.77.0.2";
/// Replies each client must have before a phase counts as done: half of
/// them to 4000-byte requests, fragmented at MTU 1500.
const REPLIES: u64 = 20;

fn guest(server: &IvshmemServer, arch: Arch, ip: &str, peer: &str, name: &str) -> GuestConfig {
    GuestConfig {
        cmdline: format!(
            "ip={ip}/24 mtu=1500 stats=1 ping={peer},interval=200 udpecho={peer},interval=200"
        ),
        ivshmem_socket: Some(server.socket()),
        name: name.into(),
        arch,
        ..GuestConfig::default()
    }
}

fn wait(g: &mut Guest, needle: &str, times: usize) {
    g.wait_for_serial_count(needle, times, LINK_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The last complete line of `log` that starts with `prefix`.
fn last_line<'a>(log: &'a str, prefix: &str) -> Option<&'a str> {
    let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().rev().find(|l| l.starts_with(prefix))
}

/// Waits (polling the console, as `wait_for_serial` does) until the latest
/// summary line of the client `name` (`ping`, `udpecho`) satisfies `done`;
/// returns that line. Fails at once on a bad reply.
fn wait_client(g: &mut Guest, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LINK_TIMEOUT;
    let (summary, bad) = (format!("{name}: to="), format!("{name}: BAD"));
    loop {
        let log = g.serial();
        assert!(!log.contains(&bad), "{what} {name}: bad reply\n{log}");
        if let Some(line) = last_line(&log, &summary) {
            assert_eq!(stat(line, "bad"), 0, "{what}: {line}\n{log}");
            if done(line) {
                return line.to_owned();
            }
        }
        assert!(g.is_running(), "{what}: guest ended\n{}", g.diagnostics());
        assert!(
            Instant::now() < deadline,
            "{what} {name}: not reached in {LINK_TIMEOUT:?}\n{}",
            g.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The latest summary lines of both clients of `g`.
fn summaries(g: &Guest) -> [Option<String>; 2] {
    let log = g.serial();
    ["ping: to=", "udpecho: to="].map(|p| last_line(&log, p).map(str::to_owned))
}

/// Waits until both clients of `g` have [`REPLIES`] more correct replies
/// than in `before` (summary lines, or none), at least half of them
/// fragmented; returns the two summary lines.
fn wait_replies(g: &mut Guest, what: &str, before: &[Option<String>; 2]) -> String {
    let mut lines = String::new();
    for (name, before) in ["ping", "udpecho"].into_iter().zip(before) {
        let base = |k| before.as_deref().map_or(0, |l| stat(l, k));
        let (received, fragmented) = (base("received"), base("received_fragmented"));
        let line = wait_client(g, name, what, |l| {
            stat(l, "received") >= received + REPLIES
                && stat(l, "received_fragmented") >= fragmented + REPLIES / 2
        });
        lines += &format!("\n  {line}");
    }
    lines
}

/// Both directions of the link carried doorbells: `g` rang its peer and
/// took data interrupts from it.
fn assert_doorbells_both_ways(g: &mut Guest, what: &str) {
    let log = g.serial();
    let line = last_line(&log, "stats: ").unwrap_or_else(|| panic!("{what}: no counters\n{log}"));
    assert!(stat(line, "doorbells_rung") > 0, "{what}: {line}");
    assert!(stat(line, "irq_data") > 0, "{what}: {line}");
    assert_eq!(stat(line, "ring_errors"), 0, "{what}: {line}");
    // The peer's UDP echo client was answered here.
    assert!(stat(line, "udp_echo_dgrams") > 0, "{what}: {line}");
    assert_eq!(stat(line, "udp_echo_dropped"), 0, "{what}: {line}");
}

#[test]
fn aarch64_and_x86_guests_echo_each_other_and_survive_each_others_restart() {
    let server = IvshmemServer::start("mixed").unwrap();
    let a64_cfg = guest(&server, Arch::Aarch64, A64_IP, X86_IP, "mixed-a64");
    let x86_cfg = guest(&server, Arch::X86_64, X86_IP, A64_IP, "mixed-x86");
    let mut a64 = Guest::start(&a64_cfg).unwrap();
    let mut x86 = Guest::start(&x86_cfg).unwrap();
    wait(&mut a64, "link: carrier on", 1);
    wait(&mut x86, "link: carrier on", 1);

    // Both ping each other and echo each other's datagrams over the one
    // link, at the same time.
    let none = [None, None];
    let a64_lines = wait_replies(&mut a64, "aarch64 -> x86", &none);
    let x86_lines = wait_replies(&mut x86, "x86 -> aarch64", &none);
    eprintln!("aarch64:{a64_lines}\nx86:{x86_lines}");
    assert_doorbells_both_ways(&mut a64, "aarch64");
    assert_doorbells_both_ways(&mut x86, "x86");

    // The x86 guest leaves and comes back: the aarch64 guest's clients
    // resume, and the new x86 guest's start.
    x86.kill();
    wait(&mut a64, "link: carrier off", 1);
    let a64_before = summaries(&a64);
    let mut x86 = Guest::start(&x86_cfg).unwrap();
    wait(&mut x86, "link: carrier on", 1);
    wait(&mut a64, "link: carrier on", 2);
    let a64_lines = wait_replies(&mut a64, "aarch64 -> new x86", &a64_before);
    let x86_lines = wait_replies(&mut x86, "new x86 -> aarch64", &none);
    eprintln!("after the x86 restart\naarch64:{a64_lines}\nx86:{x86_lines}");

    // The aarch64 guest leaves and comes back: the same the other way.
    a64.kill();
    wait(&mut x86, "link: carrier off", 1);
    let x86_before = summaries(&x86);
    let mut a64 = Guest::start(&a64_cfg).unwrap();
    wait(&mut a64, "link: carrier on", 1);
    wait(&mut x86, "link: carrier on", 2);
    let x86_lines = wait_replies(&mut x86, "x86 -> new aarch64", &x86_before);
    let a64_lines = wait_replies(&mut a64, "new aarch64 -> x86", &none);
    eprintln!("after the aarch64 restart\naarch64:{a64_lines}\nx86:{x86_lines}");
    assert_doorbells_both_ways(&mut a64, "new aarch64");
    assert_doorbells_both_ways(&mut x86, "x86");

    for g in [&mut a64, &mut x86] {
        let log = g.serial();
        assert_eq!(log.matches("booting (").count(), 1, "{log}");
        assert!(g.is_running(), "{}", g.diagnostics());
    }
}
