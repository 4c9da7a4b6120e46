//! The bare-metal guest boots under real QEMU (KVM when usable, and always
//! TCG), reports on its serial console and ends through `isa-debug-exit`
//! with the documented exit codes.

use ivnet_e2e::qemu::{
    Accel, BOOT_TIMEOUT, ExitCode, Firmware, Guest, GuestConfig, GuestExit, accelerators,
};

fn run_to_exit(cfg: GuestConfig) -> (GuestExit, String) {
    let mut g = Guest::start(&cfg).unwrap_or_else(|e| panic!("start: {e}"));
    let exit = g
        .wait_exit(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e}", g.accel().name()));
    (exit, g.diagnostics())
}

/// `selftest=boot` brings up serial, paging, IDT, LAPIC and the clock, and
/// waits for a real LAPIC timer interrupt before exiting with `Success`:
/// under every accelerator this machine offers, after both firmwares.
#[test]
fn boots_and_takes_a_timer_interrupt_under_every_accelerator() {
    let firmwares = [Firmware::default_for_tests(), Firmware::SeaBios];
    for accel in accelerators() {
        for firmware in firmwares {
            let (exit, log) = run_to_exit(GuestConfig {
                cmdline: "ip=10.77.0.2/24 selftest=boot".into(),
                accel: Some(accel.clone()),
                firmware,
                name: "boot".into(),
                ..GuestConfig::default()
            });
            check_boot(&accel, firmware, exit, &log);
        }
    }
}

fn check_boot(accel: &Accel, firmware: Firmware, exit: GuestExit, log: &str) {
    let what = format!("{} {firmware:?}", accel.name());
    assert_eq!(exit, GuestExit::Code(ExitCode::Success), "{what}\n{log}");
    assert!(log.contains("ivnet-guest"), "{log}");
    assert!(
        log.contains("command line: ip=10.77.0.2/24 selftest=boot"),
        "{log}"
    );
    assert!(log.contains("selftest boot: ok (timer interrupt"), "{log}");
    // The APIC mode follows what the CPU offers: TCG has no x2APIC.
    match accel {
        Accel::Tcg => assert!(log.contains("apic: XApic"), "{log}"),
        Accel::Kvm { .. } => assert!(log.contains("apic: "), "{log}"),
    }
}

#[test]
fn panic_prints_the_message_and_exits_with_the_panic_code() {
    let (exit, log) = run_to_exit(GuestConfig {
        cmdline: "ip=10.77.0.2/24 selftest=panic".into(),
        name: "panic".into(),
        ..GuestConfig::default()
    });
    assert_eq!(exit, GuestExit::Code(ExitCode::Panic), "{log}");
    assert!(
        log.contains("PANIC: panicked at") && log.contains("selftest panic requested"),
        "{log}"
    );
}

#[test]
fn malformed_command_lines_are_rejected_with_a_typed_error() {
    let cases = [
        (
            "ip=10.77.0.2/24 mode=fast",
            "mode=`fast` is neither `event` nor `poll`",
        ),
        ("ip=10.77.0.2/33", "prefix length `33` is not 1..=32"),
        ("gw=10.77.0.1", "missing ip="),
        (
            "ip=10.77.0.2/24 mac=01:00:5e:00:00:01",
            "mac=01:00:5e:00:00:01 is a multicast address",
        ),
        ("ip=10.77.0.2/24 colour=blue", "unknown key `colour`"),
    ];
    for (line, message) in cases {
        let (exit, log) = run_to_exit(GuestConfig {
            cmdline: line.into(),
            name: "cmdline".into(),
            ..GuestConfig::default()
        });
        assert_eq!(
            exit,
            GuestExit::Code(ExitCode::BadCommandLine),
            "{line}\n{log}"
        );
        assert!(
            log.contains(&format!("FATAL: command line: {message}")),
            "{line}\n{log}"
        );
    }
}

/// A stack overflow runs into the unmapped guard page below the main stack;
/// the page fault is handled on its own exception stack, reported with the
/// region it hit, and ends the guest with `PageFault` (no triple fault).
#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported() {
    let (exit, log) = run_to_exit(GuestConfig {
        cmdline: "ip=10.77.0.2/24 selftest=stack-overflow".into(),
        name: "stack".into(),
        ..GuestConfig::default()
    });
    assert_eq!(exit, GuestExit::Code(ExitCode::PageFault), "{log}");
    assert!(
        log.contains("(not present on write data access) in main stack guard (stack overflow)"),
        "{log}"
    );
}
