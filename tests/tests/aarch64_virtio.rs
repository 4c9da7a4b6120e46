//! The aarch64 guest on virtio-net (`nic=virtio`): QEMU `virt` with GICv2
//! (TCG), `virtio-net-pci` on the generic PCIe host, its MSI-X messages
//! reaching the GIC through GICv2m as SPIs, a TAP backend moved into a
//! network namespace (the rig of `guest_virtio`, `ivnet_e2e::virtio`). The
//! same checks as on x86: ping incl. 16000-byte payloads (IPv4 fragments
//! at virtio-net's MTU 1500, both ways), UDP echo of one to ten fragments,
//! TCP echo byte-exact, and the counters: no device errors, receive
//! interrupts taken and the device kicked, but not once per frame.

use std::net::UdpSocket;

use ivnet_e2e::netns;
use ivnet_e2e::qemu::{Arch, in_netns};
use ivnet_e2e::virtio::{GUEST, VirtioRig};

mod guest_common;
use guest_common::{fragmented_udp_echo, guest_stats, pattern, stat};

#[test]
fn aarch64_ping_udp_and_tcp_echo_on_virtio_net() {
    let _serial = netns::serial();
    let rig = VirtioRig::start("a64virtio", "event", Arch::Aarch64);
    let counters = || guest_stats(rig.ns.name(), GUEST, &|| rig.logs());
    let boot = rig.guest.serial();
    assert!(boot.contains("booting (aarch64"), "{boot}");
    assert!(boot.contains("nic=virtio"), "{boot}");
    rig.ping(20, 56);
    rig.ping(10, 1472);
    rig.ping(10, 16000);

    let sock = in_netns(rig.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.connect((GUEST, 7)).unwrap();
    fragmented_udp_echo(&sock, &|| rig.logs());

    let data = pattern(4 << 20, 11);
    rig.tcp_echo(&data);

    let stats = counters();
    assert!(stats.contains("nic=virtio"), "{stats}");
    assert_eq!(stat(&stats, "device_errors"), 0, "{stats}");
    assert_eq!(stat(&stats, "udp_echo_dropped"), 0, "{stats}");
    assert!(stat(&stats, "udp_echo_dgrams") >= 14, "{stats}");
    assert!(stat(&stats, "tcp_echo_bytes") >= 4 << 20, "{stats}");
    // Event mode: receive interrupts (MSI-X -> GICv2m -> SPI) woke the
    // guest, and it kicked the device, fewer times than it sent frames.
    assert!(stat(&stats, "interrupts") > 0, "{stats}");
    assert!(stat(&stats, "notifications") > 0, "{stats}");
    assert!(
        stat(&stats, "notifications") < stat(&stats, "tx_frames"),
        "a kick per frame: event-index suppression broken\n{stats}"
    );
    eprintln!("{stats}");
}
