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

use ivnet_e2e::two_vms::{LinuxDriver, linux_bridge_restart, two_vms_across_restart};

#[test]
fn uio_bridge_in_linux_vm_links_to_bare_metal_guest_across_restart() {
    two_vms_across_restart(&LinuxDriver::Uio);
}

/// `ivnet-bridge` inside the Linux VM killed with SIGKILL with the link
/// up, its state entry left in RUN, and started again
/// (`ivnet_e2e::two_vms::linux_bridge_restart`).
#[test]
fn uio_bridge_killed_with_the_link_up_relinks_after_a_restart() {
    linux_bridge_restart(&LinuxDriver::Uio);
}
