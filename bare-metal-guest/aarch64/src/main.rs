//! The ivnet bare-metal guest on aarch64: the x86 guest's NICs, driver glue
//! and smoltcp services (`../../src/{device,nic,virtio_net,net,start,logger,footprint,selftest}.rs`,
//! compiled here unchanged over the same driver core) on an arm64 platform
//! layer.
//!
//! Module map (platform code):
//!
//! | module | what | x86 counterpart (the name the shared code uses) |
//! |---|---|---|
//! | `boot` | Image header, EL2 -> EL1, stacks, `.bss` | `boot` |
//! | `mmu` | stage-1 tables, per-region permissions | `paging` |
//! | `exceptions` | vector table, fault reports, interrupt events | `idt` |
//! | `gic` | GICv2 distributor, CPU interface, v2m | `apic` |
//! | `time` | generic timer: CNTVCT clock, CNTV alarm | `time` |
//! | `serial` | PL011 console | `serial` |
//! | `pci` | ECAM configuration space, bus scan | `pci` |
//! | `platform` | the DTB: UART, GIC, v2m, ECAM, BAR window, command line | `platform` |
//! | `exit` | semihosting SYS_EXIT with the x86 exit statuses | `exit` |
//!
//! Boot order: MMU on (image only) -> DTB -> console -> command line ->
//! GIC + timer -> device -> services (or a self-test).
#![no_std]
#![no_main]

mod boot;
mod exceptions;
mod exit;
mod gic;
mod mmu;
mod pci;
mod platform;
mod serial;
mod time;

#[path = "../../src/device.rs"]
mod device;
#[path = "../../src/footprint.rs"]
mod footprint;
#[path = "../../src/logger.rs"]
mod logger;
#[path = "../../src/net.rs"]
mod net;
#[path = "../../src/nic.rs"]
mod nic;
#[path = "../../src/selftest.rs"]
mod selftest;
#[path = "../../src/start.rs"]
mod start;
#[path = "../../src/virtio_net.rs"]
mod virtio_net;

// The names the shared modules use for the platform parts.
use exceptions as idt;
use mmu as paging;

/// The shared main loop seeds smoltcp from `cpu::rdtsc()`: here the
/// virtual counter.
mod cpu {
    pub fn rdtsc() -> u64 {
        crate::time::counter()
    }
}

use core::fmt::Write;
use core::panic::PanicInfo;

use ivnet_guest::cmdline;
use ivnet_guest::exit_code::ExitCode;

/// Prints a fatal error and stops the guest with `code`.
pub(crate) fn fail(code: ExitCode, args: core::fmt::Arguments<'_>) -> ! {
    println!("FATAL: {args}");
    exit::exit(code)
}

/// The Rust entry point, called by `boot` on the main stack with the DTB
/// address and the exception level the guest was entered at.
#[unsafe(no_mangle)]
extern "C" fn rust_entry(dtb: u64, entry_el: u64) -> ! {
    let pa_bits = mmu::init().unwrap_or_else(|_| exit::exit(ExitCode::BootError));
    // Sets up the console first, so that a refused DTB is reported.
    let machine = platform::from_dtb(dtb);
    logger::init();
    println!(
        "ivnet-guest {} booting (aarch64, entered at EL{entry_el}, DTB at {dtb:#x}, {pa_bits} physical address bits)",
        env!("CARGO_PKG_VERSION")
    );
    let machine = machine.unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("{e}")));
    let line = machine.cmdline;
    println!("command line: {line}");
    let config = cmdline::parse(line)
        .unwrap_or_else(|e| fail(ExitCode::BadCommandLine, format_args!("command line: {e}")));
    gic::init(machine.gicd, machine.gicc);
    let (spi, spis) = platform::init_msi(machine.v2m);
    let freq = time::init();
    pci::init(machine.host.clone());
    println!(
        "platform: PL011 {:#x}, GICv2 GICD {:#x} GICC {:#x}, v2m {:#x} (SPIs {spi}..{}), ECAM {:#x} buses {:?}, BAR window {:#x}..{:#x}, timer {freq} Hz",
        machine.uart,
        machine.gicd,
        machine.gicc,
        machine.v2m,
        spi + spis,
        machine.host.ecam,
        machine.host.buses,
        machine.host.window.start,
        machine.host.window.end
    );
    exceptions::enable();
    start::run(&config, 0)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    exceptions::disable();
    let mut w = serial::emergency_writer();
    let _ = writeln!(w, "\nPANIC: {info}");
    exit::exit(ExitCode::Panic)
}
