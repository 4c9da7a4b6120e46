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
//! The rig (`ivnet_e2e::virtio`) is shared with `aarch64_virtio`.

use std::net::UdpSocket;

use ivnet_e2e::netns;
use ivnet_e2e::qemu::{Arch, in_netns};
use ivnet_e2e::virtio::{GUEST, VirtioRig};

mod guest_common;
use guest_common::{assert_virtio_event_mode, fragmented_udp_echo, guest_stats, pattern, stat};

fn counters(rig: &VirtioRig) -> String {
    guest_stats(rig.ns.name(), GUEST, &|| rig.logs())
}

#[test]
fn ping_and_tcp_echo_are_byte_exact() {
    let _serial = netns::serial();
    let rig = VirtioRig::start("gvirtio", "event", Arch::X86_64);
    rig.ping(20, 56);
    rig.ping(20, 1472);
    let data = pattern(4 << 20, 7);
    rig.tcp_echo(&data);
    let stats = counters(&rig);
    assert_eq!(stat(&stats, "device_errors"), 0, "{stats}");
    assert!(stat(&stats, "tcp_echo_bytes") >= 4 << 20, "{stats}");
    assert_virtio_event_mode(&stats);
}

/// virtio-net's MTU is 1500: larger datagrams arrive as fragments.
#[test]
fn fragmented_ping_and_udp_echo_at_mtu_1500() {
    let _serial = netns::serial();
    let rig = VirtioRig::start("gvfrag", "poll", Arch::X86_64);
    rig.ping(10, 8000);
    let sock = in_netns(rig.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.connect((GUEST, 7)).unwrap();
    let before = stat(&counters(&rig), "rx_frames");
    fragmented_udp_echo(&sock, &|| rig.logs());
    let stats = counters(&rig);
    assert!(stat(&stats, "rx_frames") - before >= 64, "{stats}");
    assert_eq!(stat(&stats, "device_errors"), 0, "{stats}");
    assert_eq!(stat(&stats, "udp_echo_dropped"), 0, "{stats}");
}
