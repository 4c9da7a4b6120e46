//! The Linux test guest on its own: Debian's kernel boots from the
//! initramfs built by `ivnet_e2e::linuxvm` and runs `tests/linux-vm/init`;
//! its UIO driver (`uio_ivshmem_doorbell`) binds to a real ivshmem-doorbell
//! and turns doorbells on both MSI-X vectors into UIO events.

use std::time::{Duration, Instant};

use ivnet_e2e::linuxvm::{LinuxVm, LinuxVmConfig, tagged_lines};

/// Boot to init and power off, TCG included.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn linux_guest_boots_and_runs_init() {
    let started = Instant::now();
    let mut vm = LinuxVm::start(&LinuxVmConfig {
        name: "boot".into(),
        append: "ivnet_test=boot".into(),
        ..LinuxVmConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let built = started.elapsed();
    let log = vm
        .wait_for_serial("IVNET-DONE", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tagged_lines(&log, "IVNET-DONE"),
        ["ok"],
        "{}",
        vm.diagnostics()
    );
    let info = tagged_lines(&log, "IVNET-INFO");
    assert!(
        info.iter()
            .any(|l| l.starts_with("kernel ") && l.contains("ivnet_test=boot")),
        "init did not report the kernel and its command line\n{}",
        vm.diagnostics()
    );
    eprintln!(
        "Linux guest ({}): image ready after {built:.1?}, booted and powered off after {:.1?}",
        vm.accel().name(),
        started.elapsed()
    );
}

/// Parses the UIO event counter the init script reported last.
fn last_event_count(log: &str) -> Option<u64> {
    let mut n = None;
    for l in log.lines() {
        if let Some(v) = l.strip_prefix("IVNET-INFO uio0-events ") {
            n = v.trim().parse().ok();
        }
        if let Some(v) = l.strip_prefix("IVNET-EVENT ") {
            n = v.trim().parse().ok();
        }
    }
    n
}

/// A host peer of the same ivshmem-server rings the VM's vector 0 and
/// vector 1, one doorbell at a time; each must show up as the next value of
/// `/sys/class/uio/uio0/event` (QEMU: eventfd → MSI-X → the driver's
/// handler → `uio_event_notify`).
#[test]
fn uio_driver_counts_doorbells_on_every_vector() {
    use ivnet_e2e::qemu::IvshmemServer;
    use ivshmem_server::HostPeer;

    let server = IvshmemServer::start("uio-probe").unwrap();
    let mut vm = LinuxVm::start(&LinuxVmConfig {
        name: "probe".into(),
        append: "ivnet_test=probe ivnet_probe_secs=600".into(),
        ivshmem_socket: Some(server.socket()),
        ..LinuxVmConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let log = vm
        .wait_for_serial("IVNET-PHASE probe-ready done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let info = tagged_lines(&log, "IVNET-INFO");
    eprintln!("{}", info.join("\n"));
    let msi_irqs = info
        .iter()
        .find_map(|l| l.strip_prefix("msi-irqs "))
        .map_or(0, |l| l.split_whitespace().count());
    assert_eq!(
        msi_irqs,
        2,
        "the UIO driver must enable both MSI-X vectors\n{}",
        vm.diagnostics()
    );
    let peer = HostPeer::connect(server.socket(), Duration::from_secs(10)).unwrap();
    let vm_id = *peer.peers().first().expect("the VM is a peer");
    let mut count = last_event_count(&log).expect("event count reported");
    for vector in [0u32, 1] {
        for _ in 0..3 {
            peer.doorbell(vm_id, vector).unwrap();
            count += 1;
            let r = vm.wait_for_serial(&format!("IVNET-EVENT {count}\n"), Duration::from_secs(30));
            if let Err(e) = r {
                panic!("doorbell on vector {vector}: no UIO event {count}\n{e}");
            }
        }
        eprintln!("vector {vector}: 3 doorbells -> UIO events up to {count}");
    }
}
