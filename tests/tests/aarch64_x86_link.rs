//! Two architectures on one ivshmem-net link: the aarch64 guest (QEMU
//! `virt`, TCG) and the x86_64 guest (q35) attached to one `ivshmem-server`
//! as its two peers. Both run the same NIC over the same driver core, on
//! opposite byte-level views of one shared memory, so the handshake only
//! completes if both agree on every layout word and state value: each
//! reaches RUN with carrier on; killing and restarting either one takes the
//! other's carrier off and on again without a reboot of the survivor.
//!
//! Not covered: traffic between the two. Both guests only answer (echo
//! services, ARP, ICMP); neither originates a frame, so there is nothing
//! to exchange without a client in one of them.

use std::time::Duration;

use ivnet_e2e::qemu::{Arch, Guest, GuestConfig, IvshmemServer};

const LINK_TIMEOUT: Duration = Duration::from_secs(90);

fn guest(server: &IvshmemServer, arch: Arch, ip: &str, name: &str) -> GuestConfig {
    GuestConfig {
        cmdline: format!("ip={ip}/24 stats=1"),
        ivshmem_socket: Some(server.socket()),
        name: name.into(),
        arch,
        ..GuestConfig::default()
    }
}

fn wait(g: &mut Guest, needle: &str, times: usize) {
    g.wait_for_serial_count(needle, times, LINK_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn aarch64_and_x86_guests_link_and_survive_each_others_restart() {
    let server = IvshmemServer::start("mixed").unwrap();
    let a64_cfg = guest(&server, Arch::Aarch64, "10.77.0.3", "mixed-a64");
    let x86_cfg = guest(&server, Arch::X86_64, "10.77.0.2", "mixed-x86");
    let mut a64 = Guest::start(&a64_cfg).unwrap();
    let mut x86 = Guest::start(&x86_cfg).unwrap();
    wait(&mut a64, "link: carrier on", 1);
    wait(&mut x86, "link: carrier on", 1);
    // The counters line of each shows both ends in RUN.
    wait(&mut a64, "link=RUN/RUN carrier=1", 1);
    wait(&mut x86, "link=RUN/RUN carrier=1", 1);

    // The x86 guest leaves and comes back: the aarch64 guest follows.
    x86.kill();
    wait(&mut a64, "link: carrier off", 1);
    let mut x86 = Guest::start(&x86_cfg).unwrap();
    wait(&mut x86, "link: carrier on", 1);
    wait(&mut a64, "link: carrier on", 2);

    // The aarch64 guest leaves and comes back: the x86 guest follows.
    a64.kill();
    wait(&mut x86, "link: carrier off", 1);
    let mut a64 = Guest::start(&a64_cfg).unwrap();
    wait(&mut a64, "link: carrier on", 1);
    wait(&mut x86, "link: carrier on", 2);
    let runs = a64.serial().matches("link=RUN/RUN carrier=1").count();
    wait(&mut a64, "link=RUN/RUN carrier=1", runs + 1);

    for g in [&mut a64, &mut x86] {
        let log = g.serial();
        assert_eq!(log.matches("booting (").count(), 1, "{log}");
        assert!(g.is_running(), "{}", g.diagnostics());
    }
}
