//! Helpers shared by the guest tests over a TAP (`guest_bridge`,
//! `guest_virtio`).
#![allow(dead_code)]

use std::net::UdpSocket;
use std::time::Duration;

pub use ivnet_e2e::jailhouse::pattern;
use ivnet_e2e::qemu::in_netns;

/// A counter value from the guest's `key=value` stats line.
pub fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// UDP echo of datagrams of one to ten fragments at MTU 1500, byte-exact
/// (the ivshmem-net and virtio-net tests).
pub fn fragmented_udp_echo(sock: &UdpSocket, logs: &dyn Fn() -> String) {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    for (i, size) in [1472usize, 1473, 2960, 4000, 8000, 8972, 14000]
        .into_iter()
        .cycle()
        .take(14)
        .enumerate()
    {
        let data = pattern(size, i as u64 + 77);
        let mut got = None;
        for _attempt in 0..3 {
            sock.send(&data).unwrap();
            if let Ok(n) = sock.recv(&mut buf) {
                got = Some(n);
                break;
            }
        }
        let n = got.unwrap_or_else(|| panic!("no echo of {size} bytes\n{}", logs()));
        assert_eq!(n, size, "echo length");
        assert!(buf[..n] == data[..], "echo of {size} bytes differs");
    }
}

/// The virtio-net guest's counters in event mode: it slept and was woken by
/// receive interrupts, and it kicked the device (at least for the first
/// transmit), fewer times than it sent frames (event-index suppression).
pub fn assert_virtio_event_mode(stats: &str) {
    assert!(stat(stats, "interrupts") > 0, "{stats}");
    assert!(stat(stats, "notifications") > 0, "{stats}");
    assert!(
        stat(stats, "notifications") < stat(stats, "tx_frames"),
        "a kick per frame: event-index suppression broken\n{stats}"
    );
}

/// The guest's counters line, fetched over UDP (`stats` to port 7777 of
/// `guest`) from inside the network namespace `ns`; five tries.
pub fn guest_stats(ns: &str, guest: &str, logs: &dyn Fn() -> String) -> String {
    let sock = in_netns(ns, || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..5 {
        sock.send_to(b"stats", (guest, 7777)).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no stats answer\n{}", logs());
}
