//! The bare-metal guest on virtio-net (`nic=virtio`), the NIC ivnet is
//! measured against (`scripts/bench-guest.sh`): QEMU's `virtio-net-pci` on a
//! TAP backend, the TAP moved into a network namespace where the test talks
//! to the guest with the kernel's stack. These tests keep the comparison from
//! rotting: ping, TCP echo byte-exact, IPv4 fragments at MTU 1500, and the
//! counters the benchmark reads.
//!
//! vhost-net is used where `/dev/vhost-net` exists (`vhost=on`), else QEMU's
//! own TAP backend (`vhost=off`; the development hosts have no vhost-net).
//!
//! Addresses: the namespace's TAP is 10.78.0.1/24, the guest 10.78.0.2/24.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::Duration;

use ivnet_e2e::netns::{self, Netns};
use ivnet_e2e::qemu::{Guest, GuestConfig, in_netns};

mod guest_common;
use guest_common::{fragmented_udp_echo, guest_stats, pattern, stat};

const HOST: &str = "10.78.0.1";
const GUEST: &str = "10.78.0.2";
const IO_TIMEOUT: Duration = Duration::from_secs(60);

struct VirtioRig {
    guest: Guest,
    ns: Netns,
    tap: String,
}

impl VirtioRig {
    fn start(tag: &str, mode: &str) -> VirtioRig {
        netns::require_root();
        netns::ensure_base_tools();
        let ns = Netns::new(tag);
        // Created by QEMU in this namespace, then moved: a name unique to
        // this process and test.
        let tap = format!(
            "vt{}{}",
            std::process::id() % 100_000,
            &tag[..tag.len().min(4)]
        );
        let vhost = if std::path::Path::new("/dev/vhost-net").exists() {
            "on"
        } else {
            "off"
        };
        let config = GuestConfig {
            cmdline: format!("ip={GUEST}/24 gw={HOST} stats=5 nic=virtio mode={mode}"),
            name: tag.into(),
            extra_args: vec![
                "-netdev".into(),
                format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost={vhost}"),
                "-device".into(),
                "virtio-net-pci,netdev=n0,mac=02:00:0a:4e:00:02".into(),
            ],
            ..GuestConfig::default()
        };
        let mut guest = Guest::start(&config).unwrap();
        // QEMU opens the TAP before the guest runs; the guest's services
        // line says it is up.
        if let Err(e) = guest.wait_for_serial("services:", Duration::from_secs(60)) {
            panic!("{e}\n{}", guest.diagnostics());
        }
        ns.adopt_link(&tap);
        ns.add_addr(&tap, &format!("{HOST}/24"));
        VirtioRig { guest, ns, tap }
    }

    fn logs(&self) -> String {
        format!("TAP {}\n{}", self.tap, self.guest.diagnostics())
    }

    fn ping(&self, count: u32, size: u32) -> String {
        let (count, size) = (count.to_string(), size.to_string());
        let out = self.ns.try_run(&[
            "ping", "-n", "-q", "-c", &count, "-i", "0.02", "-s", &size, "-W", "5", GUEST,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ping failed:\n{text}\n{}",
            self.logs()
        );
        assert!(text.contains(&format!("{count} received")), "{text}");
        text
    }

    fn guest_stats(&self) -> String {
        guest_stats(self.ns.name(), GUEST, &|| self.logs())
    }
}

/// TCP echo of `data` on port 7, written by one thread and read back by
/// another, compared byte for byte.
fn tcp_echo(rig: &VirtioRig, data: &[u8]) {
    let mut s = in_netns(rig.ns.name(), || {
        let addr = std::net::SocketAddr::from((GUEST.parse::<std::net::Ipv4Addr>().unwrap(), 7));
        TcpStream::connect_timeout(&addr, IO_TIMEOUT)
    })
    .unwrap_or_else(|e| panic!("connect: {e}\n{}", rig.logs()));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut back = Vec::with_capacity(data.len());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            w.write_all(data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        s.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("read: {e}\n{}", rig.logs()));
    });
    assert_eq!(back.len(), data.len(), "echo length\n{}", rig.logs());
    assert!(back == data, "TCP echo differs");
}

#[test]
fn ping_and_tcp_echo_are_byte_exact() {
    let _serial = netns::serial();
    let rig = VirtioRig::start("gvirtio", "event");
    rig.ping(20, 56);
    rig.ping(20, 1472);
    let data = pattern(4 << 20, 7);
    tcp_echo(&rig, &data);
    let stats = rig.guest_stats();
    assert_eq!(stat(&stats, "device_errors"), 0, "{stats}");
    assert!(stat(&stats, "tcp_echo_bytes") >= 4 << 20, "{stats}");
    // Event mode: the guest slept and was woken by receive interrupts, and
    // it kicked the device (at least for the first transmit).
    assert!(stat(&stats, "interrupts") > 0, "{stats}");
    assert!(stat(&stats, "notifications") > 0, "{stats}");
    assert!(
        stat(&stats, "notifications") < stat(&stats, "tx_frames"),
        "a kick per frame: event-index suppression broken\n{stats}"
    );
}

/// virtio-net's MTU is 1500: larger datagrams arrive as fragments.
#[test]
fn fragmented_ping_and_udp_echo_at_mtu_1500() {
    let _serial = netns::serial();
    let rig = VirtioRig::start("gvfrag", "poll");
    rig.ping(10, 8000);
    let sock = in_netns(rig.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.connect((GUEST, 7)).unwrap();
    let before = stat(&rig.guest_stats(), "rx_frames");
    fragmented_udp_echo(&sock, &|| rig.logs());
    let stats = rig.guest_stats();
    assert!(stat(&stats, "rx_frames") - before >= 64, "{stats}");
    assert_eq!(stat(&stats, "device_errors"), 0, "{stats}");
    assert_eq!(stat(&stats, "udp_echo_dropped"), 0, "{stats}");
}
