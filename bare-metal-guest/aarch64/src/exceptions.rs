//! The exception vector table, fault reports, and interrupt events.
//!
//! The guest's code runs on SP_EL0; every exception is taken to EL1 on
//! SP_EL1 (the exception stack), so a main-stack overflow into its guard
//! page is still reported. Synchronous exceptions are fatal: the report
//! names the exception class, ESR, FAR, ELR and the region FAR lies in
//! (`mmu::describe`), and the guest exits with `PageFault` for aborts and
//! `CpuException` for anything else. IRQs go to the GIC driver, which posts
//! events the main loop collects (the same interface as the x86 IDT module:
//! `take_events`, `wait_for_events`, `IRQ_COUNTERS`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ivnet_guest::exit_code::ExitCode;

use crate::{exit, gic, mmu, serial};

/// Doorbell vectors the guest routes (MSI-X entries 0..4 -> consecutive SPIs).
pub const DOORBELL_VECTORS: u8 = 4;

core::arch::global_asm!(
    r#"
    .macro vector kind
    .balign 0x80
    sub     sp, sp, #272
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       exception_common
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global exception_vectors
exception_vectors:
    vector 0
    vector 1
    vector 2
    vector 3
    vector 4
    vector 5
    vector 6
    vector 7
    vector 8
    vector 9
    vector 10
    vector 11
    vector 12
    vector 13
    vector 14
    vector 15

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x30, x1, [sp, #240]
    str     x2, [sp, #256]
    mov     x1, sp
    bl      exception_entry
    ldp     x30, x1, [sp, #240]
    ldr     x2, [sp, #256]
    msr     elr_el1, x1
    msr     spsr_el1, x2
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #272
    eret
"#
);

/// Registers saved by the vector stub.
#[repr(C)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// ELR_EL1: where the exception was taken.
    pub elr: u64,
    /// SPSR_EL1.
    pub spsr: u64,
}

// ---------------------------------------------------------------------------
// Interrupt events: set by handlers, consumed by the main loop.

static PENDING: AtomicU32 = AtomicU32::new(0);
/// Event bit of the timer.
pub const EVENT_TIMER: u32 = 1 << 31;

/// Event bit of doorbell vector `v`.
pub const fn event_doorbell(v: u8) -> u32 {
    1 << v
}

/// Interrupt counters, for the statistics line.
pub struct IrqCounters {
    /// Doorbell interrupts per vector.
    pub doorbell: [AtomicU64; DOORBELL_VECTORS as usize],
    /// Timer interrupts.
    pub timer: AtomicU64,
    /// Spurious interrupts (INTID 1023).
    pub spurious: AtomicU64,
    /// Interrupts nobody asked for.
    pub unexpected: AtomicU64,
}

/// The interrupt counters.
pub static IRQ_COUNTERS: IrqCounters = IrqCounters {
    doorbell: [const { AtomicU64::new(0) }; DOORBELL_VECTORS as usize],
    timer: AtomicU64::new(0),
    spurious: AtomicU64::new(0),
    unexpected: AtomicU64::new(0),
};

/// Posts `events` for the main loop (interrupt handlers).
pub fn post(events: u32) {
    PENDING.fetch_or(events, Ordering::AcqRel);
}

/// Takes (and clears) the pending events.
pub fn take_events() -> u32 {
    PENDING.swap(0, Ordering::AcqRel)
}

/// Sleeps until an interrupt has posted an event and returns the events.
/// The check happens with IRQs masked; WFI wakes on a pending interrupt
/// even while PSTATE.I masks it, so one arriving between the check and the
/// WFI is taken right after the unmask.
pub fn wait_for_events() -> u32 {
    loop {
        disable();
        let events = take_events();
        if events != 0 {
            enable();
            return events;
        }
        // SAFETY: WFI only waits; it touches no memory.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
        enable();
    }
}

/// Unmasks IRQs.
pub fn enable() {
    // SAFETY: changes PSTATE.I only; the vector table is installed at entry.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nomem, nostack, preserves_flags)) };
}

/// Masks IRQs.
pub fn disable() {
    // SAFETY: changes PSTATE.I only.
    unsafe { core::arch::asm!("msr daifset, #2", options(nomem, nostack, preserves_flags)) };
}

fn exception_class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE trapped",
        0x07 => "FP/SIMD access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access trapped",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "FP exception",
        0x2f => "SError",
        0x3c => "BRK",
        _ => "other",
    }
}

fn fault_status_name(fsc: u64) -> &'static str {
    match fsc & 0x3c {
        0x04 => "translation fault",
        0x08 => "access flag fault",
        0x0c => "permission fault",
        0x00 => "address size fault",
        0x10 => "synchronous external abort",
        0x20 => "alignment fault",
        _ => "other fault",
    }
}

fn read_esr_far() -> (u64, u64) {
    let (esr, far): (u64, u64);
    // SAFETY: reads of the syndrome and fault address registers.
    unsafe {
        core::arch::asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far,
            options(nomem, nostack, preserves_flags));
    }
    (esr, far)
}

#[unsafe(no_mangle)]
extern "C" fn exception_entry(kind: u64, frame: &mut TrapFrame) {
    let origin = match kind >> 2 {
        0 => "EL1 on SP_EL0",
        1 => "EL1 on SP_EL1 (inside an exception handler)",
        2 => "EL0 AArch64",
        _ => "EL0 AArch32",
    };
    match kind & 3 {
        1 if kind >> 2 == 0 => gic::handle_irq(),
        0 => {
            let (esr, far) = read_esr_far();
            let ec = esr >> 26;
            let mut w = serial::emergency_writer();
            use core::fmt::Write;
            let _ = write!(
                w,
                "\nEXCEPTION: {} (EC {ec:#x}) from {origin}: ESR {esr:#x} ELR {:#x}",
                exception_class_name(ec),
                frame.elr
            );
            let abort = matches!(ec, 0x20 | 0x21 | 0x24 | 0x25);
            if abort {
                let write = ec >= 0x24 && esr & (1 << 6) != 0;
                let _ = writeln!(
                    w,
                    "\n  {} {} at FAR {far:#x}, level {}: {}",
                    fault_status_name(esr & 0x3f),
                    if ec >= 0x24 {
                        if write { "on write" } else { "on read" }
                    } else {
                        "on instruction fetch"
                    },
                    esr & 3,
                    mmu::describe(far)
                );
                exit::exit(ExitCode::PageFault)
            }
            let _ = writeln!(w);
            exit::exit(ExitCode::CpuException)
        }
        k => {
            let (esr, far) = read_esr_far();
            let mut w = serial::emergency_writer();
            use core::fmt::Write;
            let name = ["synchronous", "IRQ", "FIQ", "SError"][k as usize];
            let _ = writeln!(
                w,
                "\nEXCEPTION: unexpected {name} from {origin}: ESR {esr:#x} FAR {far:#x} ELR {:#x}",
                frame.elr
            );
            exit::exit(ExitCode::CpuException)
        }
    }
}
