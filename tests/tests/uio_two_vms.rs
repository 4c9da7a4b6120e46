//! The deployment path end to end, with two VMs on one ivshmem-net link:
//!
//! ```text
//!  VM1: bare-metal guest            VM2: Debian kernel + busybox
//!  10.77.0.2/24, ICMP, UDP/TCP echo  uio_ivshmem_doorbell → /dev/uio0
//!        │ ivshmem-doorbell           ivnet-bridge --uio /dev/uio0 --tap ivnet0
//!        │                            ivnet0 10.77.0.1/24: ping, UDP echo,
//!        │                            TCP echo of 4 MiB (ivnet-echo-check)
//!        └──── ivshmem-server ────────┘ ivshmem-doorbell
//! ```
//!
//! Everything in VM2 is run by its init script (`tests/linux-vm/init`,
//! `ivnet_test=two-vm`), which reports on the serial console; this test
//! drives VM1 and reads VM2's console. It checks:
//!
//! 1. ping (5 × 56 bytes, 3 × 16356 bytes), UDP echo (200 datagrams),
//!    TCP echo of 4 MiB byte-exact, all from inside VM2;
//! 2. interrupts carry the doorbells: the UIO event counter grows during
//!    the traffic, the bridge (in `--mode event`) counts received
//!    doorbells, never falls back to polling, and both MSI-X vectors fired;
//! 3. the bridge maps the layout page, the state table and VM1's output
//!    section read-only and only its own section read-write
//!    (`/proc/<bridge>/maps` inside VM2; a separate writable view of the
//!    state-table page that holds the own entry is allowed, since QEMU's
//!    device has no STATE register);
//! 4. VM1's QEMU is killed and started again while VM2 runs: the bridge
//!    logs the peer going to RESET and then RUN, and the traffic of (1)
//!    passes again.
//!
//! VM2 runs under TCG unless a Debian kernel boots under this host's KVM
//! (see `ivnet_e2e::linuxvm::linux_accel`).

use std::time::{Duration, Instant};

use ivnet_e2e::linuxvm::{LinuxVm, LinuxVmConfig, tagged_lines};
use ivnet_e2e::netns::Server;
use ivnet_e2e::qemu::{BOOT_TIMEOUT, Guest, GuestConfig};
use ivnet_e2e::two_vms::{
    LINK_TIMEOUT, LinuxDriver, PHASE_TIMEOUT, VM1_ADDR, VM2_CIDR, both, check_phase,
    two_vms_across_restart,
};

#[test]
fn uio_bridge_in_linux_vm_links_to_bare_metal_guest_across_restart() {
    two_vms_across_restart(&LinuxDriver::Uio);
}

/// TCP echo volume of the bridge-restart test (each phase).
const RESTART_TCP_BYTES: u64 = 1 << 20;

/// `ivnet-bridge` inside the Linux VM is killed with SIGKILL while the link
/// is up and started again, with VM2 (and its QEMU, connected to the
/// server) alive all along (`ivnet_test=bridge-restart`): nobody writes
/// RESET into the dead bridge's state entry — the server sees no
/// disconnect, the bridge had no chance — so it still says RUN (checked:
/// VM2 reads the state table through BAR2 after the kill), and VM1 keeps
/// RUN with its carrier on. The restarted bridge must publish RESET itself
/// at start, as the reference driver does at probe: VM1 then drops and
/// renegotiates the link, and ping, UDP echo and TCP echo pass again. Without
/// that, the new bridge waits in RESET for a peer that stays in RUN.
#[test]
fn uio_bridge_killed_with_the_link_up_relinks_after_a_restart() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("ivnet-uio-bridge-restart")
        .tempdir()
        .unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut vm1 = Guest::start(&GuestConfig {
        cmdline: format!("ip={VM1_ADDR}/24"),
        ivshmem_socket: Some(server.socket.clone()),
        name: "uio-restart-vm1".into(),
        ..GuestConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm1.wait_for_serial("nic: ivshmem-net", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("VM1: {e}"));
    let mut vm2 = LinuxVm::start(&LinuxVmConfig {
        name: "uio-restart-vm2".into(),
        append: format!(
            "ivnet_test=bridge-restart ivnet_peer={VM1_ADDR} ivnet_self={VM2_CIDR} \
             ivnet_tcp_bytes={RESTART_TCP_BYTES} ivnet_relink_timeout=60"
        ),
        ivshmem_socket: Some(server.socket.clone()),
        ..LinuxVmConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let log = vm2
        .wait_for_serial("IVNET-PHASE first done", PHASE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()));
    let first = check_phase(&log, "first", RESTART_TCP_BYTES, &|| both(&vm2, &vm1));
    eprintln!("{first}");
    let own_id: u16 = log
        .lines()
        .filter_map(|l| l.strip_prefix("bridge: "))
        .find_map(|l| l.split("own peer ID ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the bridge did not log its peer ID\n{}", both(&vm2, &vm1)));
    let vm1_carrier_ons = vm1.serial().matches("link: carrier on").count();

    // The stale entry: after the kill, the dead bridge's entry says RUN.
    let log = vm2
        .wait_for_serial("IVNET-STATES after-kill", LINK_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()));
    let killed = Instant::now();
    let states: Vec<u32> = tagged_lines(&log, "IVNET-STATES")
        .into_iter()
        .find_map(|l| l.strip_prefix("after-kill states "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        states.get(usize::from(own_id)),
        Some(&3),
        "the killed bridge's entry must still say RUN (3): states {states:?}, bridge peer {own_id}\n{}",
        both(&vm2, &vm1)
    );

    let log = vm2
        .wait_for_serial("IVNET-PHASE bridge-restarted done", PHASE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()));
    let relinked = killed.elapsed();
    let again = check_phase(&log, "bridge-restarted", RESTART_TCP_BYTES, &|| {
        both(&vm2, &vm1)
    });
    eprintln!("{again} (phase done {relinked:.1?} after the kill was reported)");
    // VM1 went down (the new bridge's RESET) and up again, without a reboot.
    let vm1_log = vm1.serial();
    assert!(
        vm1_log.matches("link: carrier on").count() > vm1_carrier_ons
            && vm1_log.matches("booting (PVH").count() == 1,
        "VM1 must relink with the restarted bridge, without a reboot\n{}",
        both(&vm2, &vm1)
    );
    let log = vm2
        .wait_for_serial("IVNET-DONE", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tagged_lines(&log, "IVNET-DONE"),
        ["ok"],
        "{}",
        both(&vm2, &vm1)
    );
    assert!(
        tagged_lines(&log, "IVNET-INFO").contains(&"bridge-exit 0"),
        "the restarted bridge must leave with status 0 on SIGTERM\n{}",
        both(&vm2, &vm1)
    );
    vm2.wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "UIO bridge restart test: VM2 on {}, {:.1?} in all",
        vm2.accel().name(),
        started.elapsed()
    );
}
