//! The two-VM link of `uio_two_vms` with the stock `vfio-pci` driver in
//! place of a UIO module:
//!
//! ```text
//!  VM1: bare-metal guest            VM2: Debian kernel + busybox, -device intel-iommu
//!  10.77.0.2/24, ICMP, UDP/TCP echo  intel_iommu=on, vfio-pci (driver_override)
//!        │ ivshmem-doorbell           ivnet-bridge --vfio 0000:00:BB.F --tap ivnet0
//!        └──── ivshmem-server ────────┘ ivshmem-doorbell, 2 MSI-X vectors
//! ```
//!
//! VM2's init script (`ivnet_test=two-vm-vfio`) loads vfio, vfio_iommu_type1,
//! vfio-pci and their dependencies from the same Debian kernel package,
//! binds vfio-pci to the device through `driver_override` (it needs the IOMMU
//! group the virtual Intel IOMMU gives it: Debian's 6.1 kernel has no
//! `CONFIG_VFIO_NOIOMMU`), and runs the bridge with `--vfio`. The checks are
//! `uio_two_vms`'s (`ivnet_e2e::two_vms`): ping, full-MTU ping, UDP echo,
//! 4 MiB TCP echo byte-exact; both MSI-X vectors delivered (the
//! `vfio-msix[0]` and `vfio-msix[1]` lines of `/proc/interrupts`) and no
//! polling fallback; the layout page, state table and VM1's section mapped
//! read-only from the device fd (`/proc/<bridge>/maps`, where vfio-pci's
//! mappings carry the BAR's physical address as offset); VM1 killed and started again, the traffic again.
//! And the other side's restart: the bridge killed with SIGKILL with the link
//! up and started again (`ivnet_e2e::two_vms::linux_bridge_restart`).

use ivnet_e2e::two_vms::{LinuxDriver, linux_bridge_restart, two_vms_across_restart};

#[test]
fn vfio_bridge_in_linux_vm_links_to_bare_metal_guest_across_restart() {
    two_vms_across_restart(&LinuxDriver::Vfio);
}

/// The same link with the ivshmem 2.0 device (`tests/qemu-ivshmem2`, the
/// Jailhouse profile, 110a:4106) in both VMs, both run by the QEMU built
/// with it: the bare-metal guest on its Jailhouse profile; in VM2 the
/// bridge's `--vfio` on the 2.0 device — BAR0 registers (ID, STATE,
/// one-shot INT_CONTROL, DOORBELL) and both MSI-X vectors through
/// vfio-pci, the shared memory at the vendor capability's base address
/// (0x40000000 in VM2) through `/dev/mem`: the state table and VM1's
/// output section mapped `r--s`, only the own output section writable.
/// The Debian kernel's `CONFIG_STRICT_DEVMEM`/`CONFIG_IO_STRICT_DEVMEM`
/// let `/dev/mem` map it: the range is neither RAM nor a claimed resource.
#[test]
fn vfio_bridge_on_ivshmem2_device_links_to_bare_metal_guest_across_restart() {
    on_ivshmem2(
        "vfio_bridge_on_ivshmem2_device_links_to_bare_metal_guest_across_restart",
        two_vms_across_restart,
    );
}

/// Runs `scenario` on the ivshmem 2.0 device, or skips `test` when the
/// QEMU built with it is not available.
fn on_ivshmem2(test: &str, scenario: fn(&LinuxDriver)) {
    if ivnet_e2e::ivshmem2::qemu_binary_or_skip(test).is_some() {
        scenario(&LinuxDriver::VfioIvshmem2);
    }
}

/// `ivnet-bridge --vfio` killed with SIGKILL with the link up and started
/// again, on ivshmem-doorbell and on the ivshmem 2.0 device: the new bridge
/// opens the VFIO group and device again, relinks, and the traffic passes.
#[test]
fn vfio_bridge_killed_with_the_link_up_relinks_after_a_restart() {
    linux_bridge_restart(&LinuxDriver::Vfio);
}

#[test]
fn vfio_bridge_on_ivshmem2_device_killed_with_the_link_up_relinks_after_a_restart() {
    on_ivshmem2(
        "vfio_bridge_on_ivshmem2_device_killed_with_the_link_up_relinks_after_a_restart",
        linux_bridge_restart,
    );
}
