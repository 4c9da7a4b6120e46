//! The ivnet bare-metal guest on aarch64: the x86 guest's NICs, driver glue
//! and smoltcp services (`../../src/{device,nic,virtio_net,net,start,logger,footprint,selftest}.rs`,
//! compiled here unchanged over the same driver core) on an arm64 platform
//! layer.
//!
//! Module map (platform code):
//!
//! | module | what | x86 counterpart (the name the shared code uses) |
//! |---|---|---|
//! | `boot` | Image header, EL2 -> EL1 (ICC_SRE_EL2 on GICv3), stacks, `.bss` | `boot` |
//! | `mmu` | stage-1 tables, per-region permissions | `paging` |
//! | `exceptions` | vector table, fault reports, interrupt events | `idt` |
//! | `mmio` | single-register `ldr`/`str` device accessors (Jailhouse-trappable) | — |
//! | `gic` | GICv2 (+ v2m) or GICv3 (redistributor, ICC_* registers) | `apic` |
//! | `time` | generic timer: CNTVCT clock, CNTV alarm | `time` |
//! | `serial` | PL011 console, or Jailhouse's debug-console hypercall | `serial` |
//! | `pci` | ECAM configuration space, bus scan, MSI or INTx | `pci` |
//! | `platform` | QEMU: the DTB (UART, GIC, v2m, ECAM, BAR window, command line); MSI messages | `platform` |
//! | `jailhouse` | Jailhouse cell: comm region, `.cmdline`, messages, `cell_state` | `platform` (its cell half) |
//! | `exit` | semihosting SYS_EXIT with the x86 exit statuses, or `cell_state` | `exit` |
//!
//! Boot order: MMU on (image only) -> x0: DTB (QEMU) or comm region
//! (Jailhouse, x0 = 0) -> console -> command line -> GIC + timer -> device
//! -> services (or a self-test).
#![no_std]
#![no_main]

mod boot;
mod exceptions;
mod exit;
mod gic;
mod jailhouse;
mod mmio;
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

/// The Rust entry point, called by `boot` on the main stack with x0 at
/// entry (the DTB address, 0 under Jailhouse) and the exception level the
/// guest was entered at.
#[unsafe(no_mangle)]
extern "C" fn rust_entry(dtb: u64, entry_el: u64) -> ! {
    if dtb == 0 {
        jailhouse::enter();
    }
    let pa_bits = mmu::init().unwrap_or_else(|_| exit::exit(ExitCode::BootError));
    if dtb == 0 {
        start_jailhouse(entry_el, pa_bits)
    } else {
        start_qemu(dtb, entry_el, pa_bits)
    }
}

/// QEMU `-kernel`: the platform from the DTB, MSI-X through GICv2m.
fn start_qemu(dtb: u64, entry_el: u64, pa_bits: u8) -> ! {
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
    gic::init(gic::Gic::V2 {
        gicd: machine.gicd,
        gicc: machine.gicc,
    })
    .unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("{e}")));
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

/// A Jailhouse cell: the platform from the comm region, INTx doorbells.
fn start_jailhouse(entry_el: u64, pa_bits: u8) -> ! {
    // Stops the cell (cell_state) itself if the comm region is unusable.
    let cell = jailhouse::init();
    logger::init();
    println!(
        "ivnet-guest {} booting (aarch64, entered at EL{entry_el}, no DTB: Jailhouse cell, comm region at {:#x}, {pa_bits} physical address bits)",
        env!("CARGO_PKG_VERSION"),
        jailhouse::COMM_REGION_BASE
    );
    let cell = cell.unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("mapping: {e}")));
    let line = jailhouse::cmdline()
        .unwrap_or_else(|e| fail(ExitCode::BadCommandLine, format_args!("command line: {e}")));
    println!("command line: {line}");
    let config = cmdline::parse(line)
        .unwrap_or_else(|e| fail(ExitCode::BadCommandLine, format_args!("command line: {e}")));
    let gic_info =
        gic::init(cell.gic).unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("{e}")));
    let freq = time::init();
    if let Some(host) = cell.host.clone() {
        pci::init(host);
    }
    println!(
        "{}",
        jailhouse::PlatformLine {
            cell: &cell,
            redistributor: gic_info.redistributor,
            timer_hz: freq,
        }
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
