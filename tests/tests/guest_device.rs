//! The guest's ivshmem bring-up against a real `ivshmem-doorbell` device
//! served by ivnet's ivshmem server: BAR placement (by the firmware or by the
//! guest), read-only mappings of what the peer owns, and doorbells in both
//! directions through MSI-X and the local APIC, with the test process as the
//! other peer.

use std::time::Duration;

use ivnet_e2e::guest_device::{answer_doorbell, assert_no_device, assert_shared_memory_unchanged};
use ivnet_e2e::qemu::{
    BOOT_TIMEOUT, ExitCode, Firmware, Guest, GuestConfig, GuestExit, IvshmemServer, accelerators,
};
use ivshmem_server::HostPeer;

fn guest_on(server: &IvshmemServer, cmdline: &str, name: &str) -> GuestConfig {
    GuestConfig {
        cmdline: cmdline.into(),
        ivshmem_socket: Some(server.socket()),
        name: name.into(),
        ..GuestConfig::default()
    }
}

/// With qboot the BARs are unassigned and the guest places them; SeaBIOS
/// assigns them and the guest keeps its addresses. Either way the layout
/// page is found and the device comes up with the server's geometry.
#[test]
fn device_comes_up_with_firmware_or_guest_assigned_bars() {
    for firmware in [Firmware::Qboot, Firmware::SeaBios] {
        let server = IvshmemServer::start("bars").unwrap();
        let mut cfg = guest_on(&server, "ip=10.77.0.2/24 selftest=boot", "bars");
        cfg.firmware = firmware;
        let mut g = Guest::start(&cfg).unwrap();
        let exit = g.wait_exit(BOOT_TIMEOUT).unwrap();
        let log = g.diagnostics();
        assert_eq!(
            exit,
            GuestExit::Code(ExitCode::Success),
            "{firmware:?}\n{log}"
        );
        assert!(log.contains("ivshmem QemuDoorbell"), "{log}");
        assert!(
            log.contains(
                "state table +0x1000 (0x1000), rw +0x2000 (0x0), output sections 0x7f000 bytes at +0x2000, 2 MSI-X vectors"
            ),
            "{log}"
        );
        assert!(
            log.contains("selftest boot: ok") && log.contains("ivshmem up"),
            "{log}"
        );
        let guest_assigned = log.contains("(assigned by the guest)");
        match firmware {
            Firmware::Qboot => assert!(guest_assigned, "qboot leaves BARs to the guest\n{log}"),
            Firmware::SeaBios => assert!(!guest_assigned, "SeaBIOS assigns BARs\n{log}"),
        }
    }
}

/// A store into the peer's output section or into the state table must
/// fault: the guest maps both read-only. The fault report names the region,
/// and the host peer's memory is unchanged.
#[test]
fn peer_section_and_state_table_are_read_only_in_the_guest() {
    for (test, region) in [
        ("write-peer-section", "in peer's output section (read-only)"),
        ("write-state-table", "in ivshmem state table (read-only)"),
    ] {
        let server = IvshmemServer::start("ro").unwrap();
        // The host peer takes ID 0, so the guest's peer section is ours.
        let host = HostPeer::connect(server.socket(), Duration::from_secs(10)).unwrap();
        assert_eq!(host.id(), 0);
        let mut g = Guest::start(&guest_on(
            &server,
            &format!("ip=10.77.0.2/24 selftest={test}"),
            "ro",
        ))
        .unwrap();
        let exit = g.wait_exit(BOOT_TIMEOUT).unwrap();
        let log = g.diagnostics();
        assert_eq!(exit, GuestExit::Code(ExitCode::PageFault), "{test}\n{log}");
        assert!(
            log.contains("(protection violation on write data access)") && log.contains(region),
            "{test}\n{log}"
        );
        assert_shared_memory_unchanged(&host);
    }
}

/// The guest rings the test process (peer 0) on vector 1 through its
/// Doorbell register; the test process rings back, and the guest takes the
/// MSI-X interrupt on vector 1. Under every accelerator (KVM: ioeventfd and
/// irqfd in the host kernel; TCG: QEMU's event loop).
#[test]
fn doorbells_travel_both_ways_through_msix() {
    for accel in accelerators() {
        let server = IvshmemServer::start("doorbell").unwrap();
        let mut host = HostPeer::connect(server.socket(), Duration::from_secs(10)).unwrap();
        let mut cfg = guest_on(&server, "ip=10.77.0.2/24 selftest=doorbell", "doorbell");
        cfg.accel = Some(accel.clone());
        let mut g = Guest::start(&cfg).unwrap();
        let (joined, rang_back) = answer_doorbell(&mut host, &mut g);
        let exit = g.wait_exit(Duration::from_secs(30)).unwrap();
        let log = g.diagnostics();
        assert!(
            joined && rang_back,
            "{}: joined {joined} rang back {rang_back}\n{log}",
            accel.name()
        );
        assert_eq!(
            exit,
            GuestExit::Code(ExitCode::Success),
            "{}\n{log}",
            accel.name()
        );
        assert!(
            log.contains("selftest doorbell: ok (vector 1 interrupt from peer 0"),
            "{log}"
        );
    }
}

/// Without an ivshmem device the guest says so and exits with `NoDevice`.
#[test]
fn without_a_device_the_guest_exits_with_no_device() {
    let mut g = Guest::start(&GuestConfig {
        name: "nodev".into(),
        ..GuestConfig::default()
    })
    .unwrap();
    let exit = g.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_no_device(&exit, &g.diagnostics());
}

/// A link that is not ivshmem-net (another protocol, or more than two
/// peers) is refused with a typed error and the `DeviceError` exit code.
#[test]
fn a_link_that_is_not_ivshmem_net_is_refused() {
    /// Expected guest message, and how the server's layout differs.
    type Case = (&'static str, fn(&mut ivshmem_server::ServerConfig));
    // The wording is `ivnet_driver::check_net_link`'s. The server builds
    // links of more than two peers only for other protocols, so the second
    // case breaks the protocol rule first (the peer-count branch is
    // unit-tested in ivnet-driver).
    let cases: [Case; 2] = [
        (
            "the device speaks protocol 0x0000, not ivshmem-net (0x0001)",
            |c| {
                c.protocol = ivshmem::layout::PROTOCOL_UNDEFINED;
            },
        ),
        (
            "the device speaks protocol 0x0000, not ivshmem-net (0x0001)",
            |c| {
                c.protocol = ivshmem::layout::PROTOCOL_UNDEFINED;
                c.max_peers = 3;
            },
        ),
    ];
    for (message, adjust) in cases {
        let server = IvshmemServer::start_with("refuse", adjust).unwrap();
        let mut g = Guest::start(&guest_on(&server, "ip=10.77.0.2/24", "refuse")).unwrap();
        let exit = g.wait_exit(BOOT_TIMEOUT).unwrap();
        let log = g.diagnostics();
        assert_eq!(
            exit,
            GuestExit::Code(ExitCode::DeviceError),
            "{message}\n{log}"
        );
        assert!(log.contains(&format!("FATAL: ivshmem: {message}")), "{log}");
    }
}
