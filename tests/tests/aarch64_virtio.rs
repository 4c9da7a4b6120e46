//! The aarch64 guest on virtio-net (`nic=virtio`): QEMU `virt` with GICv2
//! (TCG), `virtio-net-pci` on the generic PCIe host, its MSI-X messages
//! reaching the GIC through GICv2m as SPIs, a TAP backend moved into a
//! network namespace (the rig of `guest_virtio`, `ivnet_e2e::virtio`). The
//! same checks as on x86: ping incl. 16000-byte payloads (IPv4 fragments
//! at virtio-net's MTU 1500, both ways), UDP echo of one to ten fragments,
//! TCP echo byte-exact, and the counters: no device errors, receive
//! interrupts taken and the device kicked, but not once per frame. And the
//! checksums of fragmented echo replies after a longer fragmented packet,
//! read on a raw socket (iputils `ping` counts replies with bad checksums
//! as received): smoltcp 0.14 computes them over its whole fragmentation
//! buffer, the guest's fragment guard repairs them.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ivnet_e2e::netns;
use ivnet_e2e::qemu::{Arch, in_netns};
use ivnet_e2e::virtio::{GUEST, VirtioRig};

mod guest_common;
use guest_common::{assert_virtio_event_mode, fragmented_udp_echo, guest_stats, pattern, stat};

/// The 16-bit ones'-complement sum of `data`, folded.
fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An ICMP echo of `len` bytes to `dst` on a raw socket made in the
/// namespace `ns`; returns the reply's ICMP message as it arrived (a raw
/// socket gets it before the kernel checks its checksum).
fn raw_echo(ns: &str, dst: Ipv4Addr, seq: u16, len: usize) -> Vec<u8> {
    const IDENT: u16 = 0x4976;
    let fd = in_netns(ns, || {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO with a timeval of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let mut request = vec![8u8, 0, 0, 0];
    request.extend(IDENT.to_be_bytes());
    request.extend(seq.to_be_bytes());
    request.extend(pattern(len, u64::from(seq)));
    let sum = !ones_sum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the given lengths.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        sent,
        request.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n > 0,
            "no echo reply of {len} bytes: {}",
            std::io::Error::last_os_error()
        );
        let ip = &buf[..n as usize];
        let icmp = &ip[usize::from(ip[0] & 0x0f) * 4..];
        if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..8] == request[4..8] {
            return icmp.to_vec();
        }
    }
}

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

    // Fragmented echo replies after a longer fragmented datagram: the
    // checksum covers exactly the reply.
    let guest: Ipv4Addr = GUEST.parse().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = pattern(9000, 5);
    sock.send(&big).unwrap();
    let mut back = vec![0u8; 16384];
    let n = sock.recv(&mut back).unwrap();
    assert!(back[..n] == big[..], "UDP echo of 9000 bytes");
    for (seq, len) in [(1, 4000), (2, 2000), (3, 8000), (4, 1472)] {
        let reply = raw_echo(rig.ns.name(), guest, seq, len);
        assert_eq!(reply.len(), 8 + len);
        assert_eq!(reply[8..], pattern(len, u64::from(seq))[..]);
        assert_eq!(
            ones_sum(&reply),
            0xffff,
            "checksum of the {len}-byte echo reply"
        );
    }

    let data = pattern(4 << 20, 11);
    rig.tcp_echo(&data);

    let stats = counters();
    assert!(stats.contains("nic=virtio"), "{stats}");
    assert_eq!(stat(&stats, "device_errors"), 0, "{stats}");
    assert_eq!(stat(&stats, "udp_echo_dropped"), 0, "{stats}");
    assert!(stat(&stats, "udp_echo_dgrams") >= 14, "{stats}");
    assert!(stat(&stats, "tcp_echo_bytes") >= 4 << 20, "{stats}");
    // Event mode: receive interrupts (MSI-X -> GICv2m -> SPI) woke the guest.
    assert_virtio_event_mode(&stats);
    eprintln!("{stats}");
}
