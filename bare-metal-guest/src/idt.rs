//! The IDT, its entry stubs, CPU-exception reporting and interrupt events.
//!
//! Stable Rust has no `extern "x86-interrupt"` ABI, so every vector gets a
//! small `#[unsafe(naked)]` stub:
//!
//! - **Exceptions** (vectors 0–31) push a dummy error code where the CPU
//!   pushes none, push the vector number and jump to `exception_common`,
//!   which saves all general-purpose registers and calls
//!   [`exception_handler`] with a [`TrapFrame`]. Every exception is fatal: the
//!   handler prints what happened (for a page fault: CR2, the decoded error
//!   code and which region the address belongs to) and exits QEMU.
//! - **Interrupts** save the caller-saved registers (the callee-saved ones
//!   are preserved by the Rust handler per the C ABI), call
//!   [`irq_dispatch`] with the vector, restore and `iretq`. Handlers only
//!   count and set event bits; the main loop does the work (NAPI style).
//!
//! Stack alignment: the CPU aligns RSP to 16 before pushing its 5-word frame;
//! exceptions add error code + vector + 15 registers (22 words in total),
//! interrupts 9 registers (14 words), so RSP is 16-byte aligned at each
//! `call`, as the C ABI requires. `x86_64-unknown-none` uses no SSE or x87
//! registers, so there is no FPU state to save.

use core::arch::naked_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ivnet_guest::exit_code::ExitCode;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::InterruptDescriptorTable;

use crate::{apic, exit, gdt, paging, serial};

/// LAPIC timer interrupt.
pub const VECTOR_TIMER: u8 = 0x30;
/// First doorbell vector: MSI-X table entry `i` raises `VECTOR_DOORBELL + i`.
pub const VECTOR_DOORBELL: u8 = 0x40;
/// Number of doorbell vectors the guest handles (ivshmem-net uses 2:
/// 0 = state change, 1 = data).
pub const DOORBELL_VECTORS: u8 = 4;
/// LAPIC error interrupt.
pub const VECTOR_APIC_ERROR: u8 = 0xFE;
/// LAPIC spurious-interrupt vector (never gets an EOI).
pub const VECTOR_SPURIOUS: u8 = 0xFF;

/// Registers saved on a CPU exception, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

// ---------------------------------------------------------------------------
// Interrupt events: set by handlers, consumed by the main loop.

/// Pending-event bits, one per doorbell vector plus the timer.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Event bit of the LAPIC timer.
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
    /// Spurious interrupts.
    pub spurious: AtomicU64,
    /// LAPIC error interrupts.
    pub apic_error: AtomicU64,
    /// Interrupts on vectors nobody asked for.
    pub unexpected: AtomicU64,
}

/// The interrupt counters.
pub static IRQ_COUNTERS: IrqCounters = IrqCounters {
    doorbell: [const { AtomicU64::new(0) }; DOORBELL_VECTORS as usize],
    timer: AtomicU64::new(0),
    spurious: AtomicU64::new(0),
    apic_error: AtomicU64::new(0),
    unexpected: AtomicU64::new(0),
};

/// Takes (and clears) the pending events.
pub fn take_events() -> u32 {
    PENDING.swap(0, Ordering::AcqRel)
}

/// Sleeps until an interrupt has posted an event and returns the events.
/// The check and the `hlt` happen with interrupts disabled and `sti; hlt`
/// re-enables them atomically with the halt, so an interrupt arriving
/// between the check and the halt still wakes the CPU.
pub fn wait_for_events() -> u32 {
    loop {
        x86_64::instructions::interrupts::disable();
        let events = take_events();
        if events != 0 {
            x86_64::instructions::interrupts::enable();
            return events;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Called by the interrupt stubs with the vector number.
extern "C" fn irq_dispatch(vector: u64) {
    let v = vector as u8;
    match v {
        VECTOR_TIMER => {
            IRQ_COUNTERS.timer.fetch_add(1, Ordering::Relaxed);
            PENDING.fetch_or(EVENT_TIMER, Ordering::Release);
        }
        VECTOR_SPURIOUS => {
            // Spurious interrupts are not in service: no EOI.
            IRQ_COUNTERS.spurious.fetch_add(1, Ordering::Relaxed);
            return;
        }
        VECTOR_APIC_ERROR => {
            IRQ_COUNTERS.apic_error.fetch_add(1, Ordering::Relaxed);
        }
        _ if (VECTOR_DOORBELL..VECTOR_DOORBELL + DOORBELL_VECTORS).contains(&v) => {
            let i = v - VECTOR_DOORBELL;
            IRQ_COUNTERS.doorbell[usize::from(i)].fetch_add(1, Ordering::Relaxed);
            PENDING.fetch_or(event_doorbell(i), Ordering::Release);
        }
        _ => {
            IRQ_COUNTERS.unexpected.fetch_add(1, Ordering::Relaxed);
        }
    }
    apic::eoi();
}

// ---------------------------------------------------------------------------
// Stubs.

/// Saves all GPRs below the vector/error-code words the stub pushed and
/// hands the frame to [`exception_handler`], which never returns.
#[unsafe(naked)]
unsafe extern "C" fn exception_common() -> ! {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rdi, rsp",
        "call {handler}",
        "ud2",
        handler = sym exception_handler,
    )
}

macro_rules! exception_stub {
    ($name:ident, $vector:literal, error_code) => {
        #[unsafe(naked)]
        unsafe extern "C" fn $name() -> ! {
            naked_asm!("push {v}", "jmp {common}", v = const $vector, common = sym exception_common)
        }
    };
    ($name:ident, $vector:literal) => {
        #[unsafe(naked)]
        unsafe extern "C" fn $name() -> ! {
            naked_asm!("push 0", "push {v}", "jmp {common}", v = const $vector, common = sym exception_common)
        }
    };
}

exception_stub!(exc_divide, 0);
exception_stub!(exc_debug, 1);
exception_stub!(exc_nmi, 2);
exception_stub!(exc_breakpoint, 3);
exception_stub!(exc_overflow, 4);
exception_stub!(exc_bound, 5);
exception_stub!(exc_invalid_opcode, 6);
exception_stub!(exc_device_na, 7);
exception_stub!(exc_double_fault, 8, error_code);
exception_stub!(exc_invalid_tss, 10, error_code);
exception_stub!(exc_segment_np, 11, error_code);
exception_stub!(exc_stack_segment, 12, error_code);
exception_stub!(exc_gp, 13, error_code);
exception_stub!(exc_page_fault, 14, error_code);
exception_stub!(exc_x87, 16);
exception_stub!(exc_alignment, 17, error_code);
exception_stub!(exc_machine_check, 18);
exception_stub!(exc_simd, 19);
exception_stub!(exc_virtualization, 20);
exception_stub!(exc_control_protection, 21, error_code);
exception_stub!(exc_hv_injection, 28);
exception_stub!(exc_vmm_communication, 29, error_code);
exception_stub!(exc_security, 30, error_code);

macro_rules! irq_stub {
    ($name:ident, $vector:expr) => {
        #[unsafe(naked)]
        unsafe extern "C" fn $name() {
            naked_asm!(
                "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
                "push r8", "push r9", "push r10", "push r11",
                "mov edi, {v}",
                "call {dispatch}",
                "pop r11", "pop r10", "pop r9", "pop r8",
                "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
                "iretq",
                v = const $vector,
                dispatch = sym irq_dispatch,
            )
        }
    };
}

irq_stub!(irq_timer, VECTOR_TIMER);
irq_stub!(irq_doorbell0, VECTOR_DOORBELL);
irq_stub!(irq_doorbell1, VECTOR_DOORBELL + 1);
irq_stub!(irq_doorbell2, VECTOR_DOORBELL + 2);
irq_stub!(irq_doorbell3, VECTOR_DOORBELL + 3);
irq_stub!(irq_apic_error, VECTOR_APIC_ERROR);
irq_stub!(irq_spurious, VECTOR_SPURIOUS);
// Any other vector: counted as unexpected (vector 0 is never an interrupt).
irq_stub!(irq_unexpected, 0);

// ---------------------------------------------------------------------------
// The table.

static IDT: Once<InterruptDescriptorTable> = Once::new();

fn addr(stub: unsafe extern "C" fn() -> !) -> VirtAddr {
    VirtAddr::new(stub as usize as u64)
}

fn irq_addr(stub: unsafe extern "C" fn()) -> VirtAddr {
    VirtAddr::new(stub as usize as u64)
}

/// Builds and loads the IDT.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // SAFETY: every address is one of the stubs above,
        // which follow the interrupt-frame protocol (exception stubs never
        // return, interrupt stubs end in `iretq` with all registers restored);
        // the IST indices name the stacks `gdt::init` installed, each used by
        // exceptions that cannot nest with each other (they exit the guest).
        unsafe {
            idt.divide_error.set_handler_addr(addr(exc_divide));
            idt.debug.set_handler_addr(addr(exc_debug));
            idt.non_maskable_interrupt
                .set_handler_addr(addr(exc_nmi))
                .set_stack_index(gdt::IST_NMI);
            idt.breakpoint.set_handler_addr(addr(exc_breakpoint));
            idt.overflow.set_handler_addr(addr(exc_overflow));
            idt.bound_range_exceeded.set_handler_addr(addr(exc_bound));
            idt.invalid_opcode
                .set_handler_addr(addr(exc_invalid_opcode));
            idt.device_not_available
                .set_handler_addr(addr(exc_device_na));
            idt.double_fault
                .set_handler_addr(addr(exc_double_fault))
                .set_stack_index(gdt::IST_DOUBLE_FAULT);
            idt.invalid_tss.set_handler_addr(addr(exc_invalid_tss));
            idt.segment_not_present
                .set_handler_addr(addr(exc_segment_np));
            idt.stack_segment_fault
                .set_handler_addr(addr(exc_stack_segment));
            idt.general_protection_fault.set_handler_addr(addr(exc_gp));
            idt.page_fault
                .set_handler_addr(addr(exc_page_fault))
                .set_stack_index(gdt::IST_PAGE_FAULT);
            idt.x87_floating_point.set_handler_addr(addr(exc_x87));
            idt.alignment_check.set_handler_addr(addr(exc_alignment));
            idt.machine_check
                .set_handler_addr(addr(exc_machine_check))
                .set_stack_index(gdt::IST_NMI);
            idt.simd_floating_point.set_handler_addr(addr(exc_simd));
            idt.virtualization
                .set_handler_addr(addr(exc_virtualization));
            idt.cp_protection_exception
                .set_handler_addr(addr(exc_control_protection));
            idt.hv_injection_exception
                .set_handler_addr(addr(exc_hv_injection));
            idt.vmm_communication_exception
                .set_handler_addr(addr(exc_vmm_communication));
            idt.security_exception.set_handler_addr(addr(exc_security));

            for v in 32..=255u8 {
                idt[v].set_handler_addr(irq_addr(irq_unexpected));
            }
            idt[VECTOR_TIMER].set_handler_addr(irq_addr(irq_timer));
            idt[VECTOR_DOORBELL].set_handler_addr(irq_addr(irq_doorbell0));
            idt[VECTOR_DOORBELL + 1].set_handler_addr(irq_addr(irq_doorbell1));
            idt[VECTOR_DOORBELL + 2].set_handler_addr(irq_addr(irq_doorbell2));
            idt[VECTOR_DOORBELL + 3].set_handler_addr(irq_addr(irq_doorbell3));
            idt[VECTOR_APIC_ERROR].set_handler_addr(irq_addr(irq_apic_error));
            idt[VECTOR_SPURIOUS].set_handler_addr(irq_addr(irq_spurious));
        }
        idt
    });
    idt.load();
}

// ---------------------------------------------------------------------------
// Exception reporting.

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        20 => "virtualization",
        21 => "control protection",
        28 => "hypervisor injection",
        29 => "VMM communication",
        30 => "security",
        _ => "reserved",
    }
}

/// Reports a CPU exception on the serial console and stops the guest:
/// `PageFault` for #PF, `CpuException` for everything else.
extern "C" fn exception_handler(frame: &TrapFrame) -> ! {
    let mut w = serial::emergency_writer();
    let _ = writeln!(
        w,
        "\nFATAL: CPU exception {} ({}) error code {:#x} at rip {:#x} rsp {:#x} rflags {:#x}",
        frame.vector,
        exception_name(frame.vector),
        frame.error_code,
        frame.rip,
        frame.rsp,
        frame.rflags
    );
    if frame.vector == 14 {
        let cr2 = Cr2::read_raw();
        let e = frame.error_code;
        let _ = writeln!(
            w,
            "FATAL: page fault address {cr2:#x} ({} {} {}{}) in {}",
            if e & 1 != 0 {
                "protection violation"
            } else {
                "not present"
            },
            if e & 2 != 0 { "on write" } else { "on read" },
            if e & 16 != 0 {
                "instruction fetch"
            } else {
                "data access"
            },
            if e & 8 != 0 { ", reserved bit set" } else { "" },
            paging::describe(cr2),
        );
        exit::exit(ExitCode::PageFault);
    }
    let _ = writeln!(
        w,
        "FATAL: rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp
    );
    let _ = writeln!(
        w,
        "FATAL: r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x} cs {:#x} ss {:#x}",
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        frame.cs,
        frame.ss
    );
    exit::exit(ExitCode::CpuException);
}
