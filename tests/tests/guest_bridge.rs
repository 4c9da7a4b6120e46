//! The whole chain: the bare-metal guest in QEMU (KVM when usable, TCG
//! otherwise) ↔ `ivshmem-doorbell` ↔ ivnet's `ivshmem-server` ↔
//! `ivnet-bridge --server` ↔ a TAP in a network namespace, where the test
//! talks to the guest with the kernel's own stack: ping, UDP echo, TCP echo,
//! TCP discard; and restarts of either end of the link.
//!
//! Addresses: the namespace's TAP is 10.77.0.1/24, the guest 10.77.0.2/24.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ivnet_e2e::netns::{self, BridgeSpec, Netns, Proc, Server, tail};
use ivnet_e2e::qemu::{Arch, Guest, GuestConfig, in_netns};

/// The guest these tests start. `aarch64_bridge.rs` runs this file as a
/// module with its own `crate::ARCH`.
#[allow(dead_code)]
const ARCH: Arch = Arch::X86_64;

mod guest_common;
use guest_common::{fragmented_udp_echo, guest_stats, pattern, stat};

const HOST: &str = "10.77.0.1";
const GUEST: &str = "10.77.0.2";
const TAP: &str = "ivg0";
const LINK_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Server, guest, bridge and namespace, started in that order.
struct Rig {
    bridge: Proc,
    guest: Guest,
    bridge_spec: BridgeSpec,
    guest_config: GuestConfig,
    server: Server,
    ns: Netns,
    dir: tempfile::TempDir,
}

/// How to set up a [`Rig`] beyond the defaults (two vectors, reboots end
/// QEMU).
#[derive(Default)]
struct RigOptions {
    /// MSI-X vectors (server `--vectors` and QEMU `vectors=`); 0 = 2.
    vectors: u32,
    /// QEMU reboots the guest on a reset instead of exiting.
    reboot_on_reset: bool,
    /// Link MTU on both ends (guest `mtu=`, bridge `--mtu`); 0 = the
    /// guest's section default and 16384 on the bridge.
    mtu: u32,
}

impl Rig {
    fn start(tag: &str) -> Rig {
        Self::start_with(tag, RigOptions::default())
    }

    // `crate::ARCH`: this file's own constant here, the including test's
    // in `aarch64_bridge.rs`.
    #[allow(unused_qualifications)]
    fn start_with(tag: &str, options: RigOptions) -> Rig {
        netns::require_root();
        netns::ensure_base_tools();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ivnet-guest-{tag}"))
            .tempdir()
            .unwrap();
        let ns = Netns::new(tag);
        let vectors = if options.vectors == 0 {
            2
        } else {
            options.vectors
        };
        let server = Server::start(dir.path(), &["--vectors", &vectors.to_string()]);
        let guest_config = GuestConfig {
            cmdline: if options.mtu == 0 {
                format!("ip={GUEST}/24 gw={HOST} stats=5")
            } else {
                format!("ip={GUEST}/24 gw={HOST} stats=5 mtu={}", options.mtu)
            },
            ivshmem_socket: Some(server.socket.clone()),
            name: tag.into(),
            vectors,
            reboot_on_reset: options.reboot_on_reset,
            arch: crate::ARCH,
            ..GuestConfig::default()
        };
        let guest = Guest::start(&guest_config).unwrap();
        let bridge_spec = BridgeSpec {
            name: "bridge".into(),
            socket: server.socket.clone(),
            netns: ns.name().into(),
            tap: TAP.into(),
            mtu: if options.mtu == 0 { 16384 } else { options.mtu },
            extra: vec![
                "--stats-interval".into(),
                "5".into(),
                "--mode".into(),
                "event".into(),
            ],
        };
        let bridge = bridge_spec.spawn_fresh(dir.path());
        let mut rig = Rig {
            bridge,
            guest,
            bridge_spec,
            guest_config,
            server,
            ns,
            dir,
        };
        rig.configure_tap();
        rig.wait_carrier(true);
        rig
    }

    fn logs(&self) -> String {
        format!(
            "--- bridge ---\n{}\n--- server ---\n{}\n{}",
            tail(&self.bridge.stderr()),
            tail(&self.server.proc.stderr()),
            self.guest.diagnostics()
        )
    }

    /// Waits for the bridge's TAP and gives it the host address.
    fn configure_tap(&mut self) {
        let started = self
            .bridge
            .wait_stderr("TAP, MTU", 1, Duration::from_secs(30));
        assert!(started.is_ok(), "{started:?}\n{}", self.logs());
        let ok = netns::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            self.ns.has_link(TAP)
        });
        assert!(ok.is_ok(), "no {TAP}\n{}", self.logs());
        self.ns.add_addr(TAP, &format!("{HOST}/24"));
    }

    fn wait_carrier(&self, on: bool) -> Duration {
        self.ns
            .wait_carrier(TAP, on, LINK_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    fn ping(&self, count: u32, interval: &str, size: u32) -> String {
        let (count, size) = (count.to_string(), size.to_string());
        let out = self.ns.try_run(&[
            "ping", "-n", "-q", "-c", &count, "-i", interval, "-s", &size, "-W", "5", GUEST,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ping failed:\n{text}\n{}",
            self.logs()
        );
        text
    }

    /// The guest's counters line, fetched over UDP.
    fn guest_stats(&self) -> String {
        guest_stats(self.ns.name(), GUEST, &|| self.logs())
    }

    fn tcp_connect(&self, port: u16) -> TcpStream {
        let s = in_netns(self.ns.name(), || {
            let addr =
                std::net::SocketAddr::from((GUEST.parse::<std::net::Ipv4Addr>().unwrap(), port));
            TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}\n{}", self.logs()));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

fn packets_received(ping_output: &str) -> u32 {
    ping_output
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn ping_including_1000_pings_of_16000_bytes() {
    let _serial = netns::serial();
    let rig = Rig::start("gping");
    let out = rig.ping(3, "0.2", 56);
    assert_eq!(packets_received(&out), 3, "{out}");
    let out = rig.ping(1000, "0.002", 16000);
    assert_eq!(packets_received(&out), 1000, "{out}\n{}", rig.logs());
    assert!(out.contains(" 0% packet loss"), "{out}");
    let stats = rig.guest_stats();
    assert_eq!(stat(&stats, "ring_errors"), 0, "{stats}");
    assert!(stat(&stats, "rx_frames") >= 1003, "{stats}");
}

#[test]
fn udp_echo_is_byte_exact() {
    let _serial = netns::serial();
    let rig = Rig::start("gudp");
    let sock = in_netns(rig.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.connect((GUEST, 7)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sizes = vec![1usize, 2, 18, 100, 1472, 1473, 8000, 16000, 16356];
    sizes.extend((0..200).map(|i| 1 + (i * 7919) % 16356));
    let mut buf = vec![0u8; 65536];
    for (i, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, i as u64 + 1);
        // One datagram at a time: a lost one would be a real failure, not
        // a queue overflow of the test's making.
        let mut got = None;
        for _attempt in 0..3 {
            sock.send(&data).unwrap();
            if let Ok(n) = sock.recv(&mut buf) {
                got = Some(n);
                break;
            }
        }
        let n = got.unwrap_or_else(|| panic!("no echo of {size} bytes\n{}", rig.logs()));
        assert_eq!(n, size, "echo length");
        assert!(buf[..n] == data[..], "echo of {size} bytes differs");
    }
    let stats = rig.guest_stats();
    assert!(stat(&stats, "udp_echo_dgrams") >= 209, "{stats}");
    assert_eq!(stat(&stats, "udp_echo_dropped"), 0, "{stats}");
}

/// At MTU 1500 (virtio-net's default, a common Linux setting) datagrams
/// larger than the MTU arrive as IPv4 fragments: the guest reassembles them
/// and fragments its answers.
#[test]
fn fragmented_ping_and_udp_echo_at_mtu_1500() {
    let _serial = netns::serial();
    let rig = Rig::start_with(
        "gfrag",
        RigOptions {
            mtu: 1500,
            ..RigOptions::default()
        },
    );
    let out = rig.ping(20, "0.02", 8000);
    assert_eq!(packets_received(&out), 20, "{out}\n{}", rig.logs());
    let sock = in_netns(rig.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.connect((GUEST, 7)).unwrap();
    let before = stat(&rig.guest_stats(), "rx_frames");
    fragmented_udp_echo(&sock, &|| rig.logs());
    let stats = rig.guest_stats();
    // Every datagram above 1472 bytes came as fragments of at most 1480
    // bytes: 1 + 2 + 3 + 3 + 6 + 7 + 10 frames per round of sizes, twice.
    assert!(stat(&stats, "rx_frames") - before >= 64, "{stats}");
    assert_eq!(stat(&stats, "ring_errors"), 0, "{stats}");
    assert_eq!(stat(&stats, "udp_echo_dropped"), 0, "{stats}");
}

#[test]
fn tcp_echo_of_16_mib_is_byte_exact() {
    let _serial = netns::serial();
    let rig = Rig::start("gtcpe");
    const LEN: usize = 16 << 20;
    let data = pattern(LEN, 42);
    let mut stream = rig.tcp_connect(7);
    let mut reader = stream.try_clone().unwrap();
    let started = Instant::now();
    let echoed = std::thread::scope(|s| {
        let r = s.spawn(move || {
            let mut got = Vec::with_capacity(LEN);
            reader.read_to_end(&mut got).map(|_| got)
        });
        stream.write_all(&data).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        r.join().unwrap()
    })
    .unwrap_or_else(|e| panic!("reading the echo: {e}\n{}", rig.logs()));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(echoed.len(), LEN, "echo length\n{}", rig.logs());
    let first_diff = echoed.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "echo differs");
    eprintln!(
        "tcp echo: 16 MiB in {secs:.2} s ({:.1} MB/s)",
        LEN as f64 / secs / 1e6
    );
    let stats = rig.guest_stats();
    assert_eq!(stat(&stats, "tcp_echo_bytes"), LEN as u64, "{stats}");
    assert_eq!(stat(&stats, "ring_errors"), 0, "{stats}");
    // The guest knows no offload extension: the bridge (offloads on by
    // default) found no advertisement and sent reference frames only.
    let report = netns::signal_report(&rig.bridge);
    assert_eq!(report["offloads"], "plain (peer offers none)", "{report}");
    assert_eq!(report["offload"]["negotiated_links"], 0, "{report}");
    assert_eq!(report["offload"]["tx_tso4"], 0, "{report}");
    assert_eq!(report["offload"]["drop_unnegotiated"], 0, "{report}");
}

#[test]
fn tcp_discard_of_256_mib() {
    let _serial = netns::serial();
    let rig = Rig::start("gtcpd");
    const LEN: usize = 256 << 20;
    let chunk = pattern(1 << 20, 7);
    let mut stream = rig.tcp_connect(9);
    let started = Instant::now();
    for _ in 0..LEN >> 20 {
        stream
            .write_all(&chunk)
            .unwrap_or_else(|e| panic!("discard write: {e}\n{}", rig.logs()));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    // The guest closes after the client's FIN, once it has read everything.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "discard sent data back");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "tcp discard: 256 MiB in {secs:.2} s ({:.1} MB/s)",
        LEN as f64 / secs / 1e6
    );
    let stats = rig.guest_stats();
    assert_eq!(stat(&stats, "tcp_discard_bytes"), LEN as u64, "{stats}");
    assert_eq!(stat(&stats, "ring_errors"), 0, "{stats}");
}

/// Killing QEMU drops the bridge's carrier (the server resets the guest's
/// state entry and rings the bridge); a new guest on the same server brings
/// it back, and the next ping is answered.
#[test]
fn guest_restart_drops_and_restores_the_carrier() {
    let _serial = netns::serial();
    let mut rig = Rig::start("grestart");
    assert_eq!(packets_received(&rig.ping(2, "0.2", 56)), 2);
    for round in 0..2 {
        rig.guest.kill();
        let down = rig.wait_carrier(false);
        eprintln!("round {round}: carrier off {down:?} after QEMU was killed");
        rig.guest = Guest::start(&rig.guest_config).unwrap();
        let up = rig.wait_carrier(true);
        eprintln!("round {round}: carrier on {up:?} after the new QEMU started");
        let out = rig.ping(3, "0.2", 56);
        assert_eq!(packets_received(&out), 3, "{out}\n{}", rig.logs());
    }
}

/// Killing the bridge takes the guest's link down (the server resets the
/// bridge's state entry and rings the guest); a new bridge relinks with the
/// same guest — no reboot: one boot banner, carrier off and on again on its
/// console — and the next ping is answered.
///
/// This works because ivshmem-server, by default, sends no disconnect
/// messages and hands a returning ID the eventfds it had before: QEMU 7.2's
/// `close_peer_eventfds()` (hw/misc/ivshmem.c) frees a departed peer's
/// eventfd array without clearing the pointer, and the next connect of the
/// same ID writes into the freed array, so with QEMU's upstream protocol
/// (`ivshmem-server --disconnect-messages`) a restarted bridge, which always
/// reuses its ID on an ivshmem-net link, crashes the guest's QEMU.
#[test]
fn bridge_restart_relinks_without_a_guest_reboot() {
    let _serial = netns::serial();
    let mut rig = Rig::start("gbridge");
    assert_eq!(packets_received(&rig.ping(2, "0.2", 56)), 2);
    for round in 1..=2 {
        rig.bridge.kill9();
        let log = rig
            .guest
            .wait_for_serial_count("link: carrier off", round, LINK_TIMEOUT)
            .unwrap();
        assert_eq!(log.matches("booting (").count(), 1, "{log}");
        rig.bridge = rig.bridge_spec.spawn(rig.dir.path());
        rig.configure_tap();
        rig.wait_carrier(true);
        rig.guest
            .wait_for_serial_count("link: carrier on", round + 1, LINK_TIMEOUT)
            .unwrap();
        let out = rig.ping(3, "0.2", 56);
        assert_eq!(packets_received(&out), 3, "{out}\n{}", rig.logs());
    }
    let log = rig.guest.serial();
    assert_eq!(
        log.matches("booting (").count(),
        1,
        "the guest rebooted\n{log}"
    );
    assert!(rig.guest.is_running(), "{}", rig.logs());
    let stats = rig.guest_stats();
    assert!(stat(&stats, "link_resets") >= 2, "{stats}");
}

/// The bridge's housekeeping tick (`TICK` in linux-uio-driver/src/bridge.rs):
/// without doorbells, frames from the guest would wait for it.
const BRIDGE_TICK: Duration = Duration::from_millis(100);

/// Round-trip times of a `ping` run, in milliseconds, one per reply.
fn ping_times_ms(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// UDP echo of `count` datagrams of assorted sizes, one at a time, byte
/// exact.
fn udp_echo(rig: &Rig, count: usize) {
    let sock = in_netns(rig.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.connect((GUEST, 7)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        let size = 1 + (i * 7919) % 16356;
        let data = pattern(size, i as u64 + 100);
        sock.send(&data).unwrap();
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no echo of {size} bytes: {e}\n{}", rig.logs()));
        assert!(buf[..n] == data[..], "echo of {size} bytes differs");
    }
}

/// A one-vector link (`ivshmem-server --vectors 1`, QEMU `vectors=1`): the
/// README's advice for UIO drivers with one interrupt. ivshmem-net then
/// carries data doorbells on vector 0 like state changes, both ways. The
/// guest must ring vector 0 (ringing vector 1 is refused by the device, and
/// the bridge would see the guest's frames only at its 100 ms tick), and the
/// bridge rings the guest's vector 0.
///
/// Checked: ping and UDP echo work; the bridge says it rings data on vector
/// 0; the guest counts only vector-0 interrupts and no refused doorbell;
/// both sides' doorbell counters grow by about one per reply; and the
/// round-trip times are not tick-bound: if the guest's replies waited for
/// the bridge's tick T, each would wait a uniform share of T, so at most a
/// quarter of them would come back within T/4 and the median would be
/// about T/2. Required: at least 45 of 50 within T/4.
#[test]
fn one_vector_link_carries_data_with_doorbells_not_ticks() {
    let _serial = netns::serial();
    let started = Instant::now();
    let mut rig = Rig::start_with(
        "g1vec",
        RigOptions {
            vectors: 1,
            ..RigOptions::default()
        },
    );
    let describe = rig.bridge.stderr();
    assert!(
        describe.contains("1 vectors (data on vector 0)"),
        "the bridge must ring data on vector 0 of a one-vector link\n{}",
        rig.logs()
    );
    rig.guest
        .wait_for_serial("1 MSI-X vectors", LINK_TIMEOUT)
        .unwrap();
    // Warm up ARP and both stacks.
    assert_eq!(packets_received(&rig.ping(2, "0.2", 56)), 2);
    let guest_before = rig.guest_stats();
    let bridge_before = netns::signal_report(&rig.bridge);

    const PINGS: u32 = 50;
    const UDP_ECHOES: usize = 50;
    let (count, interval) = (PINGS.to_string(), "0.05");
    let out = rig.ns.try_run(&[
        "ping", "-n", "-c", &count, "-i", interval, "-s", "56", "-W", "5", GUEST,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ping failed:\n{text}\n{}", rig.logs());
    let mut times = ping_times_ms(&text);
    assert_eq!(times.len(), PINGS as usize, "{text}");
    let guest_pinged = rig.guest_stats();
    let bridge_pinged = netns::signal_report(&rig.bridge);
    udp_echo(&rig, UDP_ECHOES);

    let guest_after = rig.guest_stats();
    let bridge_after = netns::signal_report(&rig.bridge);
    let g = |line: &str, key: &str| stat(line, key);
    let b = |v: &serde_json::Value, key: &str| v["bridge"][key].as_u64().unwrap();
    let replies = u64::from(PINGS) + UDP_ECHOES as u64;
    // About one doorbell per reply and request: the idle side re-arms its
    // event index before it sleeps. A tenth may coincide with a tick or a
    // busy peer and rightly need none. Towards the guest this is counted
    // over the pings only (50 ms apart: the guest sleeps before each); a
    // back-to-back UDP request may find it still polling after the last
    // echo (the slower the guest, the more often: aarch64 under TCG), and
    // then rightly needs no doorbell.
    let at_least = replies * 9 / 10;
    let at_least_pings = u64::from(PINGS) * 9 / 10;
    let guest_rung = g(&guest_after, "doorbells_v0") - g(&guest_before, "doorbells_v0");
    let guest_irqs = g(&guest_pinged, "irq_state") - g(&guest_before, "irq_state");
    let bridge_received =
        b(&bridge_after, "doorbells_received") - b(&bridge_before, "doorbells_received");
    let bridge_sent = b(&bridge_pinged, "doorbells_sent") - b(&bridge_before, "doorbells_sent");
    times.sort_by(f64::total_cmp);
    let quarter_tick_ms = BRIDGE_TICK.as_secs_f64() * 1000.0 / 4.0;
    let within = times.iter().filter(|t| **t < quarter_tick_ms).count();
    eprintln!(
        "one-vector link: {PINGS} pings RTT min {:.2} median {:.2} max {:.2} ms ({within} under {quarter_tick_ms} \
         ms); guest rang {guest_rung}, bridge received {bridge_received} doorbells; during the pings the bridge sent \
         {bridge_sent}, the guest took {guest_irqs} vector-0 interrupts ({:.1?} in all)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        started.elapsed()
    );
    assert_eq!(
        g(&guest_after, "irq_data"),
        0,
        "a one-vector device has no vector 1\n{guest_after}"
    );
    assert!(
        guest_rung >= at_least && bridge_received >= at_least,
        "the guest's data doorbells must reach the bridge: guest rang {guest_rung}, bridge received \
         {bridge_received}, want >= {at_least} each\n{guest_after}\n{bridge_after}\n{}",
        rig.logs()
    );
    assert!(
        bridge_sent >= at_least_pings && guest_irqs >= at_least_pings,
        "the bridge's data doorbells must reach the guest on vector 0: during the pings the bridge sent \
         {bridge_sent}, the guest took {guest_irqs} vector-0 interrupts, want >= {at_least_pings} each\n\
         {guest_pinged}\n{bridge_pinged}"
    );
    // Tick-bound round trips would wait for the bridge's 100 ms tick: their
    // median would be about half a tick. The median (not a count of fast
    // ones) keeps a loaded CI machine's scheduling spikes out of the verdict.
    let median = times[times.len() / 2];
    assert!(
        median < quarter_tick_ms,
        "round trips are tick-bound: median {median:.2} ms, {within} of {PINGS} under {quarter_tick_ms} ms \
         (sorted: {times:?})\n{}",
        rig.logs()
    );
    assert_eq!(
        g(&guest_after, "data_vector"),
        0,
        "data doorbells of a one-vector link go on vector 0\n{guest_after}"
    );
    assert_eq!(
        g(&guest_after, "doorbells_v1"),
        0,
        "the guest rang vector 1 of a one-vector device\n{guest_after}"
    );
    assert_eq!(
        g(&guest_after, "doorbells_refused"),
        0,
        "the device refused doorbells of the guest\n{guest_after}"
    );
    assert_eq!(g(&guest_after, "ring_errors"), 0, "{guest_after}");
}

/// The guest restarts while its VM lives on: the QEMU QMP
/// `system_reset` reboots it without closing QEMU's connection to the
/// server, so the server writes no RESET into the guest's state-table entry
/// and rings nobody — the entry still says RUN from the guest's previous
/// life, and the bridge keeps its carrier. The new guest must publish RESET
/// itself when its driver starts (as the reference driver does at probe);
/// the bridge then drops the link, both sides renegotiate, and traffic
/// flows again. Without that, the bridge stays in RUN and the new guest
/// waits in RESET for good.
#[test]
fn guest_reset_with_a_stale_run_entry_relinks() {
    let _serial = netns::serial();
    let started = Instant::now();
    let mut rig = Rig::start_with(
        "greset",
        RigOptions {
            reboot_on_reset: true,
            ..RigOptions::default()
        },
    );
    assert_eq!(packets_received(&rig.ping(2, "0.2", 56)), 2);
    let bridge_lines = rig.bridge.stderr().lines().count();
    let carrier_ons = rig.guest.serial().matches("link: carrier on").count();

    rig.guest.qmp("system_reset").unwrap();
    let reset_at = Instant::now();
    rig.guest
        .wait_for_serial_count("booting (", 2, LINK_TIMEOUT)
        .unwrap();
    let rebooted = reset_at.elapsed();
    rig.guest
        .wait_for_serial_count("link: carrier on", carrier_ons + 1, LINK_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "the rebooted guest did not relink (its stale RUN entry wedges the link?)\n{e}\n--- bridge:\n{}",
                tail(&rig.bridge.stderr())
            )
        });
    let up = rig.wait_carrier(true);
    let relinked = reset_at.elapsed();
    // The rebooted guest's ARP cache is empty, and smoltcp drops the reply
    // that makes it ask; the carrier was off too briefly for the kernel to
    // forget the guest's MAC. Forget it, so the host asks first and the
    // guest learns the host's MAC from that request.
    rig.ns.run(&["ip", "neigh", "flush", "dev", TAP]);
    let out = rig.ping(3, "0.2", 56);
    assert_eq!(packets_received(&out), 3, "{out}\n{}", rig.logs());
    udp_echo(&rig, 20);

    // The precondition: QEMU never left the server, so nobody but the new
    // guest wrote its entry; the bridge saw it go to RESET and back to RUN.
    let server_log = rig.server.proc.stderr();
    assert!(
        !server_log.contains(" left ("),
        "the server saw a peer leave: the reset must keep QEMU connected\n{server_log}"
    );
    let bridge_log = rig.bridge.stderr();
    let after: Vec<&str> = bridge_log.lines().skip(bridge_lines).collect();
    let reset = after.iter().position(|l| l.contains("peer RESET"));
    let run = reset.and_then(|r| {
        after[r..]
            .iter()
            .position(|l| l.contains("-> RUN") || l.contains("carrier on"))
    });
    assert!(
        reset.is_some() && run.is_some(),
        "the bridge must see the guest's RESET and then relink:\n  {}",
        after.join("\n  ")
    );
    let stats = rig.guest_stats();
    assert_eq!(stat(&stats, "ring_errors"), 0, "{stats}");
    assert!(rig.guest.is_running(), "{}", rig.logs());
    eprintln!(
        "guest reset: rebooted {rebooted:.1?}, relinked {relinked:.1?} after system_reset (bridge carrier on \
         {up:.1?} after the guest's); {:.1?} in all",
        started.elapsed()
    );
}
