//! The ivnet bare-metal guest: an x86_64 inmate with the ivshmem-net NIC
//! and an IP stack.
//!
//! Module map (platform code; the pure logic is in the library, `lib.rs`):
//!
//! | module | what |
//! |---|---|
//! | `boot` | PVH note, Jailhouse 16-bit reset entry, 32→64-bit trampoline |
//! | `serial` | 16550 console; `print!`/`println!` from the shared `console` glue (`console.rs`) |
//! | `logger` | the `log` facade on the console, with a byte budget |
//! | `exit` | `isa-debug-exit` |
//! | `cpu` | CPUID features, NX, TSC |
//! | `gdt` | GDT and TSS with exception stacks |
//! | `idt` | exception and interrupt stubs, fault reports, interrupt events |
//! | `paging` | identity page tables with per-region permissions |
//! | `platform` | QEMU or Jailhouse cell: PIC, APIC mode, timer rates, MTRRs, stop |
//! | `apic` | local APIC (xAPIC / x2APIC) |
//! | `time` | TSC clock and LAPIC alarm, PIT-calibrated |
//! | `pci` | configuration space through ports 0xCF8/0xCFC, bus scan |
//! | `device` | ivshmem bring-up: BARs, mappings, MSI-X, own state |
//! | `nic` | the ivshmem-net NIC on `ivnet-ring`, smoltcp `phy::Device` |
//! | `virtio_net` | the virtio-net NIC (`nic=virtio`, the comparison baseline), smoltcp `phy::Device` |
//! | `net` | smoltcp interface, services, the NAPI-style main loop |
//! | `footprint` | image size and stack high-water mark |
//! | `selftest` | platform self-tests selected on the command line |
//! | `start` | after bring-up: the NIC (ivshmem-net or virtio-net), then services or a self-test (shared with the aarch64 guest) |
//!
//! Boot order: console → start info and command line → CPU features →
//! GDT/IDT → own page tables → legacy PIC masked → LAPIC → clock → devices →
//! services (or a self-test).
#![no_std]
#![no_main]

mod apic;
mod boot;
mod cpu;
mod device;
mod exit;
mod footprint;
mod gdt;
mod idt;
mod logger;
mod net;
mod nic;
mod paging;
mod pci;
mod platform;
mod selftest;
mod serial;
mod start;
mod time;
mod virtio_net;

use core::fmt::Write;
use core::panic::PanicInfo;

use ivnet_guest::cmdline::{self, CmdlineError};
use ivnet_guest::exit_code::ExitCode;
use pvh::start_info::reader::StartInfoReader;

/// Room for the kernel command line (QEMU's `-append`).
const CMDLINE_MAX: usize = 1024;

/// The command line, copied out of the loader's memory before the guest
/// switches to page tables that no longer map it.
static CMDLINE: spin::Once<([u8; CMDLINE_MAX], usize)> = spin::Once::new();

/// Prints a fatal error and stops the guest with `code`.
pub(crate) fn fail(code: ExitCode, args: core::fmt::Arguments<'_>) -> ! {
    println!("FATAL: {args}");
    exit::exit(code)
}

/// Copies the command line out of the PVH start info, or out of the
/// `.cmdline` buffer after the Jailhouse entry. Runs while the boot tables
/// still identity-map the first 1 GiB, where QEMU puts both.
fn read_start_info(start_info_paddr: u32) -> Result<&'static str, CmdlineError<'static>> {
    let bytes = if start_info_paddr == boot::NO_START_INFO {
        // The Jailhouse entry: the `.cmdline` buffer at 0x1000.
        boot::jailhouse_cmdline().ok_or(CmdlineError::TooLong(CMDLINE_MAX))?
    } else {
        // SAFETY: QEMU's PVH loader passes the start info's physical address
        // in ebx (forwarded here); the reader checks the magic before
        // trusting the structure, and the boot tables identity-map the low
        // memory it and the command line live in.
        let reader = unsafe { StartInfoReader::from_paddr_identity(start_info_paddr) };
        let Some(reader) = reader else {
            fail(
                ExitCode::BootError,
                format_args!(
                    "no PVH start info at {start_info_paddr:#x} (bad magic; expected 0x336ec578)"
                ),
            );
        };
        reader.cmdline().map_or(&b""[..], |c| c.to_bytes())
    };
    if bytes.len() > CMDLINE_MAX {
        return Err(CmdlineError::TooLong(bytes.len()));
    }
    let (buf, len) = CMDLINE.call_once(|| {
        let mut buf = [0u8; CMDLINE_MAX];
        buf[..bytes.len()].copy_from_slice(bytes);
        (buf, bytes.len())
    });
    core::str::from_utf8(&buf[..*len]).map_err(|_| CmdlineError::NotUtf8)
}

/// The Rust entry point, called by the trampoline in `boot.rs` on the main
/// stack with the PVH start-info address.
extern "C" fn rust_entry(start_info_paddr: u32) -> ! {
    serial::init();
    logger::init();
    if start_info_paddr == boot::NO_START_INFO {
        println!(
            "ivnet-guest {} booting (reset entry at 0000:0000, Jailhouse layout)",
            env!("CARGO_PKG_VERSION")
        );
    } else {
        println!(
            "ivnet-guest {} booting (PVH, start info at {start_info_paddr:#x})",
            env!("CARGO_PKG_VERSION")
        );
    }

    // First, so that even a bad command line stops a cell the cell's way.
    platform::detect(start_info_paddr == boot::NO_START_INFO);
    let line = read_start_info(start_info_paddr)
        .unwrap_or_else(|e| fail(ExitCode::BadCommandLine, format_args!("command line: {e}")));
    println!("command line: {line}");
    let config = cmdline::parse(line)
        .unwrap_or_else(|e| fail(ExitCode::BadCommandLine, format_args!("command line: {e}")));

    let features = cpu::detect();
    println!(
        "cpu: hypervisor {}, x2apic {}, nx {}, mtrr {}, {} physical address bits",
        features.hypervisor.name(),
        features.x2apic,
        features.nx,
        features.mtrr,
        features.phys_addr_bits
    );
    platform::setup_caching(&features);
    gdt::init();
    idt::init();
    if features.nx {
        cpu::enable_nx();
    }
    paging::init(features.nx, features.phys_addr_bits)
        .unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("page tables: {e}")));

    platform::map_comm_region()
        .unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("comm region: {e}")));
    let (apic_mode, cal) = platform::init_interrupts_and_time(&features)
        .unwrap_or_else(|e| fail(ExitCode::BootError, format_args!("local APIC: {e}")));
    println!(
        "apic: {:?} id {}, tsc {} kHz, apic timer {} kHz",
        apic_mode,
        apic::id(),
        cal.tsc_khz,
        cal.apic_timer_khz
    );
    x86_64::instructions::interrupts::enable();

    start::run(&config, apic::id())
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    let mut w = serial::emergency_writer();
    let _ = writeln!(w, "\nPANIC: {info}");
    exit::exit(ExitCode::Panic)
}
