//! The aarch64 guest on QEMU `virt` (GICv2 + v2m, TCG, `-kernel` with the
//! arm64 Image): boot at EL1 and from EL2, the platform read from the DTB,
//! a real timer interrupt, panic and command-line exits, a stack overflow
//! into the guard page, the read-only mappings of the peer's output section
//! and the state table (a write faults and the report names the region),
//! MSI-X doorbells both ways through GICv2m, and no device.

use std::time::Duration;

use ivnet_e2e::guest_device::{answer_doorbell, assert_no_device, assert_shared_memory_unchanged};
use ivnet_e2e::qemu::{Arch, BOOT_TIMEOUT, ExitCode, Guest, GuestConfig, GuestExit, IvshmemServer};
use ivshmem_server::HostPeer;

fn config(cmdline: &str, name: &str) -> GuestConfig {
    GuestConfig {
        cmdline: cmdline.into(),
        name: name.into(),
        arch: Arch::Aarch64,
        ..GuestConfig::default()
    }
}

fn run_to_exit(cfg: GuestConfig) -> (GuestExit, String) {
    let mut g = Guest::start(&cfg).unwrap_or_else(|e| panic!("start: {e}"));
    let exit = g.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    (exit, g.diagnostics())
}

/// `selftest=boot` at EL1 and entered at EL2: MMU, DTB, PL011, GICv2, the
/// generic timer's interrupt; the platform line carries what the DTB said
/// about `virt`.
#[test]
fn boots_at_el1_and_from_el2_and_takes_a_timer_interrupt() {
    for (arch, el) in [(Arch::Aarch64, "EL1"), (Arch::Aarch64El2, "EL2")] {
        let (exit, log) = run_to_exit(GuestConfig {
            arch,
            ..config("ip=10.77.0.2/24 selftest=boot", "a64boot")
        });
        assert_eq!(exit, GuestExit::Code(ExitCode::Success), "{arch:?}\n{log}");
        assert!(
            log.contains(&format!("booting (aarch64, entered at {el}")),
            "{log}"
        );
        assert!(
            log.contains("command line: ip=10.77.0.2/24 selftest=boot"),
            "{log}"
        );
        assert!(
            log.contains(
                "platform: PL011 0x9000000, GICv2 GICD 0x8000000 GICC 0x8010000, v2m 0x8020000"
            ),
            "{log}"
        );
        assert!(log.contains("BAR window 0x10000000..0x3eff0000"), "{log}");
        assert!(log.contains("selftest boot: ok (timer interrupt"), "{log}");
    }
}

#[test]
fn panic_and_bad_command_lines_exit_with_their_codes() {
    let (exit, log) = run_to_exit(config("ip=10.77.0.2/24 selftest=panic", "a64panic"));
    assert_eq!(exit, GuestExit::Code(ExitCode::Panic), "{log}");
    assert!(
        log.contains("PANIC: panicked at") && log.contains("selftest panic requested"),
        "{log}"
    );
    let (exit, log) = run_to_exit(config("ip=10.77.0.2/24 colour=blue", "a64cmdline"));
    assert_eq!(exit, GuestExit::Code(ExitCode::BadCommandLine), "{log}");
    assert!(
        log.contains("FATAL: command line: unknown key `colour`"),
        "{log}"
    );
}

/// The main stack (SP_EL0) runs into its unmapped guard page; the abort is
/// taken on the exception stack (SP_EL1) and reported with the region.
#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported() {
    let (exit, log) = run_to_exit(config(
        "ip=10.77.0.2/24 selftest=stack-overflow",
        "a64stack",
    ));
    assert_eq!(exit, GuestExit::Code(ExitCode::PageFault), "{log}");
    assert!(
        log.contains("translation fault on write at FAR")
            && log.contains("main stack guard (stack overflow)"),
        "{log}"
    );
}

/// The peer's output section and the state table are mapped read-only: a
/// write is a permission fault, the report names the region, and the host
/// peer's memory is unchanged.
#[test]
fn peer_section_and_state_table_are_read_only() {
    for (test, region) in [
        ("write-peer-section", ": peer's output section (read-only)"),
        ("write-state-table", ": ivshmem state table (read-only)"),
    ] {
        let server = IvshmemServer::start("a64ro").unwrap();
        let host = HostPeer::connect(server.socket(), Duration::from_secs(10)).unwrap();
        assert_eq!(host.id(), 0);
        let (exit, log) = run_to_exit(GuestConfig {
            ivshmem_socket: Some(server.socket()),
            ..config(&format!("ip=10.77.0.2/24 selftest={test}"), "a64ro")
        });
        assert_eq!(exit, GuestExit::Code(ExitCode::PageFault), "{test}\n{log}");
        assert!(
            log.contains("EXCEPTION: data abort (EC 0x25)")
                && log.contains("permission fault on write at FAR")
                && log.contains(region),
            "{test}\n{log}"
        );
        assert_shared_memory_unchanged(&host);
    }
}

/// The guest rings the test process (peer 0) on vector 1; the test process
/// rings back and the guest takes vector 1's MSI-X message as a GICv2m SPI.
#[test]
fn doorbells_travel_both_ways_through_gicv2m() {
    let server = IvshmemServer::start("a64doorbell").unwrap();
    let mut host = HostPeer::connect(server.socket(), Duration::from_secs(10)).unwrap();
    let mut g = Guest::start(&GuestConfig {
        ivshmem_socket: Some(server.socket()),
        ..config("ip=10.77.0.2/24 selftest=doorbell", "a64doorbell")
    })
    .unwrap();
    let (joined, rang_back) = answer_doorbell(&mut host, &mut g);
    let exit = g.wait_exit(Duration::from_secs(30)).unwrap();
    let log = g.diagnostics();
    assert!(
        joined && rang_back,
        "joined {joined} rang back {rang_back}\n{log}"
    );
    assert_eq!(exit, GuestExit::Code(ExitCode::Success), "{log}");
    assert!(
        log.contains("selftest doorbell: ok (vector 1 interrupt from peer 0"),
        "{log}"
    );
    assert!(log.contains("MSI-X vectors"), "{log}");
}

#[test]
fn without_a_device_the_guest_exits_with_no_device() {
    let (exit, log) = run_to_exit(config("ip=10.77.0.2/24", "a64nodev"));
    assert_no_device(&exit, &log);
}
