//! The guest's NIC against a host peer in the test process: the test joins
//! the ivshmem server like a second VM (ivshmem-server's `HostPeer`),
//! drives its own `ivnet_ring::Endpoint`, and talks to the guest with frames
//! built by hand — ARP, ICMP echo, UDP echo, the UDP counters service — so
//! every byte on the link is checked, without a kernel stack in between.

use std::time::{Duration, Instant};

use ivnet_e2e::qemu::{BOOT_TIMEOUT, Guest, GuestConfig, IvshmemServer, accelerators};
use ivnet_ring::{Config, Endpoint, LinkState, Notify, OwnSection, PeerSection};
use ivshmem_server::{Event, HostPeer};

const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const DATA_VECTOR: u32 = 1;
const STATE_VECTOR: u32 = 0;

/// The test process as the other end of the link.
struct HostLink {
    peer: HostPeer,
    ep: Endpoint,
    guest: u16,
    doorbells_sent: u64,
}

impl HostLink {
    fn connect(server: &IvshmemServer) -> HostLink {
        let peer = HostPeer::connect(server.socket(), Duration::from_secs(10)).unwrap();
        assert_eq!(peer.id(), 0, "the host peer connects first");
        let guest = 1;
        let (own_ptr, own_len) = peer.own_section();
        let (peer_ptr, peer_len) = peer.peer_section(guest).unwrap();
        // SAFETY: HostPeer maps its own output section read-write and the
        // guest's read-only for as long as `peer` lives; `HostLink` keeps
        // both together and drops the endpoint first (field order).
        let own = unsafe { OwnSection::new(own_ptr, own_len) }.unwrap();
        // SAFETY: as above.
        let theirs = unsafe { PeerSection::new(peer_ptr, peer_len) }.unwrap();
        let ep = Endpoint::new(own, theirs, Config::default()).unwrap();
        HostLink {
            ep,
            peer,
            guest,
            doorbells_sent: 0,
        }
    }

    fn step_link(&mut self) {
        let raw = self.peer.peer_state(self.guest).unwrap();
        let out = self.ep.on_peer_state(raw, true);
        if let Some(state) = out.write_state {
            self.peer.set_own_state(state.raw());
            // The guest may not be connected yet; then this doorbell is
            // dropped and the guest's own periodic check catches up.
            let _ = self.peer.doorbell(self.guest, STATE_VECTOR);
        }
    }

    fn ring_if(&mut self, n: Notify) {
        if n == Notify::Doorbell {
            self.peer.doorbell(self.guest, DATA_VECTOR).unwrap();
            self.doorbells_sent += 1;
        }
    }

    /// Waits for doorbells (or a short timeout) and handles state changes.
    fn wait(&mut self, timeout: Duration) {
        for e in self.peer.wait(Some(timeout)).unwrap() {
            if matches!(
                e,
                Event::Vector(0) | Event::PeerJoined(_) | Event::PeerLeft(_)
            ) {
                self.step_link();
            }
        }
        self.step_link();
    }

    fn wait_carrier(&mut self, guest: &mut Guest) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while !self.ep.carrier() {
            assert!(
                Instant::now() < deadline && guest.is_running(),
                "no carrier: host {:?}, guest entry {:?}\n{}",
                self.ep.local_state(),
                self.peer.peer_state(self.guest),
                guest.diagnostics()
            );
            self.wait(Duration::from_millis(50));
        }
    }

    fn send(&mut self, frame: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ep.tx_ready() {
            assert!(Instant::now() < deadline, "TX ring stays full");
            self.wait(Duration::from_millis(10));
        }
        self.ep.send(frame).unwrap();
        let n = self.ep.flush_tx();
        self.ring_if(n);
    }

    /// Receives frames until `pick` accepts one (others, e.g. gratuitous
    /// traffic, are skipped) or the timeout passes.
    fn recv_until(
        &mut self,
        guest: &mut Guest,
        timeout: Duration,
        mut pick: impl FnMut(&[u8]) -> bool,
    ) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 16384 + 18];
        loop {
            self.ep.reclaim().unwrap();
            while let Some(len) = self.ep.recv(&mut buf).unwrap() {
                let n = self.ep.flush_rx();
                self.ring_if(n);
                if pick(&buf[..len]) {
                    return buf[..len].to_vec();
                }
            }
            let n = self.ep.flush_rx();
            self.ring_if(n);
            assert!(
                Instant::now() < deadline && guest.is_running(),
                "no matching frame within {timeout:?}; ring stats {:?}\n{}",
                self.ep.stats(),
                guest.diagnostics()
            );
            // Ask for a doorbell before sleeping; the timeout covers none.
            if !self.ep.enable_rx_notify().unwrap() {
                self.wait(Duration::from_millis(100));
            }
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request() -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    a.extend_from_slice(&HOST_MAC);
    a.extend_from_slice(&HOST_IP);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&GUEST_IP);
    ethernet([0xff; 6], 0x0806, &a)
}

fn ipv4(protocol: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, protocol, 0, 0]); // DF, TTL 64
    h.extend_from_slice(&HOST_IP);
    h.extend_from_slice(&GUEST_IP);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    ethernet(GUEST_MAC, 0x0800, &h)
}

fn icmp_echo(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(1, seq, &m)
}

fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&HOST_IP);
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&u);
    let c = match checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(17, 0x1000 + src_port, &u)
}

/// The IPv4 payload of an Ethernet frame from the guest to us with the given
/// protocol, after checking the Ethernet and IPv4 headers (addresses,
/// version, header checksum).
fn ipv4_payload(frame: &[u8], protocol: u8) -> Option<&[u8]> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[0..6] != HOST_MAC {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ip[9] != protocol || ip[12..16] != GUEST_IP || ip[16..20] != HOST_IP {
        return None;
    }
    assert_eq!(
        checksum(&ip[..ihl]),
        0,
        "bad IPv4 header checksum from the guest"
    );
    Some(&ip[ihl..total])
}

#[test]
fn link_reaches_run_and_icmp_and_udp_echo_round_trip_byte_exact() {
    for accel in accelerators() {
        let server = IvshmemServer::start("hostpeer").unwrap();
        let mut host = HostLink::connect(&server);
        host.step_link();
        let mut guest = Guest::start(&GuestConfig {
            cmdline: "ip=10.77.0.2/24 mac=02:00:00:00:00:02 stats=1".into(),
            ivshmem_socket: Some(server.socket()),
            accel: Some(accel.clone()),
            name: "hostpeer".into(),
            ..GuestConfig::default()
        })
        .unwrap();
        let what = accel.name();

        // Link: both sides RUN, in the state table and on the console.
        host.wait_carrier(&mut guest);
        assert_eq!(host.ep.local_state(), LinkState::Run);
        assert_eq!(host.peer.peer_state(1), Some(LinkState::Run.raw()));
        guest
            .wait_for_serial("link: carrier on (local RUN, peer RUN)", BOOT_TIMEOUT)
            .unwrap();

        // ARP: the guest answers for its address with its MAC.
        host.send(&arp_request());
        let reply = host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        });
        assert_eq!(&reply[0..6], &HOST_MAC, "{what}: ARP reply to us");
        assert_eq!(&reply[22..28], &GUEST_MAC, "{what}: sender MAC");
        assert_eq!(&reply[28..32], &GUEST_IP, "{what}: sender IP");

        // ICMP echo, small and near the MTU.
        for (seq, size) in [(1u16, 56usize), (2, 1400), (3, 16000)] {
            let data: Vec<u8> = (0..size)
                .map(|i| (i * 7 + usize::from(seq)) as u8)
                .collect();
            host.send(&icmp_echo(0x1234, seq, &data));
            let frame = host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
                ipv4_payload(f, 1).is_some_and(|m| m[0] == 0 && m[6..8] == seq.to_be_bytes())
            });
            let m = ipv4_payload(&frame, 1).unwrap();
            assert_eq!(checksum(m), 0, "{what}: ICMP checksum");
            assert_eq!(&m[4..6], &0x1234u16.to_be_bytes());
            assert_eq!(&m[8..], &data[..], "{what}: echo payload of {size} bytes");
        }

        // UDP echo on port 7, byte-exact.
        for (port, size) in [(40000u16, 1usize), (40001, 1472), (40002, 16000)] {
            let data: Vec<u8> = (0..size).map(|i| (i * 13 + 5) as u8).collect();
            host.send(&udp(port, 7, &data));
            let frame = host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
                ipv4_payload(f, 17).is_some_and(|u| u[2..4] == port.to_be_bytes())
            });
            let u = ipv4_payload(&frame, 17).unwrap();
            assert_eq!(&u[0..2], &7u16.to_be_bytes(), "{what}: from port 7");
            assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), 8 + size);
            assert_eq!(&u[8..], &data[..], "{what}: UDP echo of {size} bytes");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&GUEST_IP);
            pseudo.extend_from_slice(&HOST_IP);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(u.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(u);
            assert_eq!(checksum(&pseudo), 0, "{what}: UDP checksum from the guest");
        }

        // The counters service answers with a line that reflects all this.
        host.send(&udp(40100, 7777, b"stats"));
        let frame = host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
            ipv4_payload(f, 17).is_some_and(|u| u[2..4] == 40100u16.to_be_bytes())
        });
        let line = String::from_utf8_lossy(&ipv4_payload(&frame, 17).unwrap()[8..]).into_owned();
        assert!(line.starts_with("stats: "), "{line}");
        assert!(line.contains("link=RUN/RUN carrier=1"), "{line}");
        assert!(line.contains("udp_echo_dgrams=3"), "{line}");
        assert!(line.contains("ring_errors=0"), "{line}");
        assert_eq!(host.ep.stats().total_errors(), 0, "host saw ring errors");
        assert!(guest.is_running(), "{}", guest.diagnostics());
        guest.kill();
    }
}

/// Sends an ICMP echo request and checks the reply byte for byte.
fn ping_guest(host: &mut HostLink, guest: &mut Guest, seq: u16, size: usize) {
    let data: Vec<u8> = (0..size)
        .map(|i| (i * 3 + usize::from(seq)) as u8)
        .collect();
    host.send(&icmp_echo(0x4321, seq, &data));
    let frame = host.recv_until(guest, BOOT_TIMEOUT, |f| {
        ipv4_payload(f, 1).is_some_and(|m| m[0] == 0 && m[6..8] == seq.to_be_bytes())
    });
    let m = ipv4_payload(&frame, 1).unwrap();
    assert_eq!(checksum(m), 0, "ICMP checksum");
    assert_eq!(&m[8..], &data[..], "echo payload of {size} bytes");
}

/// Asks the guest for its counters line over UDP 7777.
fn guest_stats(host: &mut HostLink, guest: &mut Guest, port: u16) -> String {
    host.send(&udp(port, 7777, b"stats"));
    let frame = host.recv_until(guest, BOOT_TIMEOUT, |f| {
        ipv4_payload(f, 17).is_some_and(|u| u[2..4] == port.to_be_bytes())
    });
    String::from_utf8_lossy(&ipv4_payload(&frame, 17).unwrap()[8..]).into_owned()
}

fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn start_link(cmdline: &str, name: &str) -> (IvshmemServer, HostLink, Guest) {
    let server = IvshmemServer::start(name).unwrap();
    let mut host = HostLink::connect(&server);
    host.step_link();
    let mut guest = Guest::start(&GuestConfig {
        cmdline: cmdline.into(),
        ivshmem_socket: Some(server.socket()),
        name: name.into(),
        ..GuestConfig::default()
    })
    .unwrap();
    host.wait_carrier(&mut guest);
    host.send(&arp_request());
    host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
    });
    (server, host, guest)
}

/// A peer that publishes an impossible avail index is a protocol violation:
/// the guest counts it, resets the link (it does not crash, hang or read
/// out of bounds), and once the host peer renegotiates, traffic flows again.
#[test]
fn hostile_avail_index_resets_the_link_and_it_recovers() {
    let (_server, mut host, mut guest) =
        start_link("ip=10.77.0.2/24 mac=02:00:00:00:00:02 stats=0", "hostile");
    ping_guest(&mut host, &mut guest, 1, 100);

    // Publish avail.idx far beyond anything sent, directly in our section.
    let (own, _) = host.peer.own_section();
    let offset = host.ep.geometry().avail_idx_offset();
    // SAFETY: `own` is the host peer's own output section, mapped
    // read-write; the avail index is a 2-byte aligned u16 inside its ring
    // header. The store is exactly the hostile act under test.
    let avail_idx = own.wrapping_add(offset).cast::<u16>();
    // SAFETY: as above.
    unsafe { avail_idx.write_volatile(0x7fff) };
    host.peer.doorbell(1, DATA_VECTOR).unwrap();

    let log = guest
        .wait_for_serial("link: peer protocol error:", BOOT_TIMEOUT)
        .unwrap();
    assert!(log.contains("resetting the link"), "{log}");
    guest
        .wait_for_serial("link: carrier off", BOOT_TIMEOUT)
        .unwrap();

    // The host follows the guest through RESET and back to RUN (its own
    // section is zeroed on the way, which removes the bad index).
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while host.ep.carrier() && Instant::now() < deadline {
        host.wait(Duration::from_millis(20));
    }
    host.wait_carrier(&mut guest);
    guest
        .wait_for_serial_count("link: carrier on", 2, BOOT_TIMEOUT)
        .unwrap();
    host.send(&arp_request());
    host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
    });
    ping_guest(&mut host, &mut guest, 2, 16000);
    let stats = guest_stats(&mut host, &mut guest, 41000);
    assert_eq!(stat(&stats, "ring_errors"), 1, "{stats}");
    assert_eq!(stat(&stats, "link_resets"), 1, "{stats}");
    assert!(guest.is_running(), "{}", guest.diagnostics());
}

/// In `mode=poll` the guest never sleeps and never asks the host for a
/// doorbell; in `mode=event` it sleeps between frames. Both carry traffic.
#[test]
fn poll_and_event_modes_both_carry_traffic() {
    for mode in ["event", "poll"] {
        let (_server, mut host, mut guest) = start_link(
            &format!("ip=10.77.0.2/24 mac=02:00:00:00:00:02 stats=0 mode={mode}"),
            mode,
        );
        let rung_before = host.doorbells_sent;
        for seq in 1..=20 {
            // Leave the guest idle first: a guest that is still polling
            // from the previous frame rightly needs no doorbell, one that
            // has gone to sleep must ask for one.
            std::thread::sleep(Duration::from_millis(100));
            ping_guest(&mut host, &mut guest, seq, 1000);
        }
        let rung = host.doorbells_sent - rung_before;
        let stats = guest_stats(&mut host, &mut guest, 42000);
        let sleeps = stat(&stats, "loop_sleeps");
        match mode {
            "poll" => {
                assert_eq!(sleeps, 0, "{stats}");
                assert_eq!(rung, 0, "the polling guest asked for doorbells");
            }
            _ => {
                assert!(sleeps > 0, "{stats}");
                assert!(rung > 0, "the sleeping guest never asked for a doorbell");
            }
        }
        assert_eq!(stat(&stats, "ring_errors"), 0, "{stats}");
        guest.kill();
    }
}

/// How long the scripted hostile peer acts against the guest.
const HOSTILE_FOR: Duration = Duration::from_secs(20);

/// The guest against a scripted hostile peer for [`HOSTILE_FOR`] (random
/// states, indices, descriptors and ring entries in its section, doorbells
/// on both vectors; see `ivnet_e2e::hostile`): the guest keeps running, its
/// serial console output and its link resets stay within the design's
/// bounds (`ivnet_e2e::hostile::bounds`: backoff capped at 1 s, rate-limited
/// messages) — on Jailhouse that console is a 115200-baud UART (~11.5 KB/s)
/// that a flood would stall the inmate on — and once the hostile peer has
/// left, a good host peer links within a bound and gets ICMP echoes back.
///
/// Before the backoff and the limiter, such a peer made the guest write
/// 1 MB to its console in 50 s.
#[test]
fn hostile_peer_for_20_s_keeps_console_and_resets_bounded_then_a_good_peer_links() {
    use ivnet_e2e::hostile::{HostilePeer, bounds};
    let server = IvshmemServer::start("ghostile").unwrap();
    let mut hostile = HostilePeer::connect(&server.socket());
    let mut guest = Guest::start(&GuestConfig {
        cmdline: "ip=10.77.0.2/24 mac=02:00:00:00:00:02 stats=0".into(),
        ivshmem_socket: Some(server.socket()),
        name: "ghostile".into(),
        ..GuestConfig::default()
    })
    .unwrap();
    guest.wait_for_serial("net: ", BOOT_TIMEOUT).unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while hostile.victim_state() != LinkState::Init.raw() {
        assert!(
            Instant::now() < deadline && guest.is_running(),
            "the guest never published INIT\n{}",
            guest.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let console_before = guest.serial().len();

    let started = Instant::now();
    let counts = hostile.run_for(HOSTILE_FOR);
    let acted = started.elapsed();
    assert!(
        guest.is_running(),
        "the guest died\n{}",
        guest.diagnostics()
    );
    let console = guest.serial();
    let window = &console[console_before..];
    let lines = window.lines().count() as u64;
    let bytes = window.len() as u64;
    let seed = hostile.seed;
    eprintln!(
        "hostile peer (seed {seed}) for {acted:.1?}: {} writes, {} states, {} doorbells; guest console: {lines} \
         lines, {bytes} bytes ({:.0} B/s); bounds {} lines, {} bytes",
        counts.writes,
        counts.states,
        counts.doorbells,
        bytes as f64 / acted.as_secs_f64(),
        bounds::max_log_lines(acted),
        bounds::max_log_bytes(acted),
    );
    // Checked now, asserted at the end, so one run also shows whether a
    // good peer links.
    let mut violations = Vec::new();
    if lines > bounds::max_log_lines(acted) || bytes > bounds::max_log_bytes(acted) {
        violations.push(format!(
            "console: {lines} lines / {bytes} bytes, bounds {} / {}: the guest's messages are not rate-limited; \
             the last lines:\n{}",
            bounds::max_log_lines(acted),
            bounds::max_log_bytes(acted),
            window.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }

    // On Jailhouse the console is a 115200-baud UART (8N1: 11,520 bytes/s)
    // that the guest writes synchronously: its messages must leave it idle
    // at least half of the time.
    const UART_BYTES_PER_S: f64 = 115_200.0 / 10.0;
    let rate = bytes as f64 / acted.as_secs_f64();
    if rate > UART_BYTES_PER_S / 2.0 {
        violations.push(format!(
            "console: {rate:.0} bytes/s, more than half of a 115200-baud UART ({:.0} bytes/s)",
            UART_BYTES_PER_S / 2.0
        ));
    }

    // The hostile peer leaves; the server resets its entry and rings the
    // guest. A good host peer joins and must link at once.
    hostile.leave();
    let mut host = HostLink::connect(&server);
    host.step_link();
    let joined = Instant::now();
    let deadline = joined + bounds::GOOD_PEER_LINK;
    while !host.ep.carrier() {
        assert!(
            Instant::now() < deadline && guest.is_running(),
            "a good peer did not link within {:?} after the hostile one left: host {:?}, guest entry {:?}\n{}\n{}",
            bounds::GOOD_PEER_LINK,
            host.ep.local_state(),
            host.peer.peer_state(host.guest),
            violations.join("\n"),
            guest.diagnostics()
        );
        host.wait(Duration::from_millis(20));
    }
    let linked = joined.elapsed();
    host.send(&arp_request());
    host.recv_until(&mut guest, BOOT_TIMEOUT, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
    });
    ping_guest(&mut host, &mut guest, 1, 1000);
    let stats = guest_stats(&mut host, &mut guest, 43000);
    let resets = stat(&stats, "link_resets");
    let errors = stat(&stats, "ring_errors");
    eprintln!(
        "good peer linked {linked:.1?} after it joined; guest: {resets} link resets, {errors} ring errors; bound \
         {} link-ups; {:.1?} in all",
        bounds::max_link_ups(acted),
        started.elapsed()
    );
    // Every link reset ends one link that got at least to READY: at most
    // one per handshake, and the good peer's link adds one.
    if resets > bounds::max_link_ups(acted) + 1 {
        violations.push(format!(
            "{resets} link resets, bound {}: the renegotiation backoff does not hold",
            bounds::max_link_ups(acted) + 1
        ));
    }
    assert!(
        counts.doorbells > 0,
        "the hostile peer rang no doorbell: the test did not test anything"
    );
    assert!(
        errors > 0,
        "the hostile peer provoked no protocol error: the test did not test anything\n{stats}"
    );
    assert!(
        violations.is_empty(),
        "hostile peer for {acted:.1?} (seed {seed}):\n{}",
        violations.join("\n")
    );
}
