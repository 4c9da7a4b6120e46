//! The host-peer side of the device tests both guests run (x86
//! `guest_device`, `aarch64_guest`): answering the doorbell self-test, and
//! checking that a faulting write to a read-only mapping left the shared
//! memory alone.

use std::time::Instant;

use ivshmem_server::{Event, HostPeer};

use crate::qemu::{BOOT_TIMEOUT, ExitCode, Guest, GuestExit};

/// The host side of `selftest=doorbell` with the test process as peer 0:
/// once peer 1 (the guest) has joined and rung vector 1, rings it back on
/// vector 1, until the guest exits or [`BOOT_TIMEOUT`]. Returns whether the
/// guest joined and whether it was rung back.
pub fn answer_doorbell(host: &mut HostPeer, guest: &mut Guest) -> (bool, bool) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let (mut joined, mut rang_back) = (false, false);
    while Instant::now() < deadline && guest.is_running() {
        for event in host
            .wait(Some(std::time::Duration::from_millis(100)))
            .unwrap()
        {
            match event {
                Event::PeerJoined(1) => joined = true,
                Event::Vector(1) if joined => {
                    // MSI-X is enabled before the guest rings, so this
                    // doorbell is not dropped.
                    host.doorbell(1, 1).unwrap();
                    rang_back = true;
                }
                _ => {}
            }
        }
    }
    (joined, rang_back)
}

/// After the guest's write to the peer's output section or the state table
/// faulted: the host peer's own output section (the guest's peer section)
/// still starts with 0 and the guest's state entry is unchanged.
pub fn assert_shared_memory_unchanged(host: &HostPeer) {
    let (own, _) = host.own_section();
    // SAFETY: `own` points to the host peer's own output section, mapped
    // read-write for as long as `host` lives; a volatile byte read of
    // shared memory.
    let first = unsafe { own.read_volatile() };
    assert_eq!(first, 0, "the guest's store reached shared memory");
    assert_eq!(host.peer_state(1), Some(0), "state table changed");
}

/// The guest found no ivshmem device: `NoDevice`, and it said so.
pub fn assert_no_device(exit: &GuestExit, log: &str) {
    assert_eq!(*exit, GuestExit::Code(ExitCode::NoDevice), "{log}");
    assert!(
        log.contains("FATAL: no ivshmem device (1af4:1110 or 110a:4106) on the PCI bus"),
        "{log}"
    );
}
