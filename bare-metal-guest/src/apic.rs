//! The local APIC, in x2APIC mode (MSRs) when the CPU offers it, otherwise
//! in xAPIC mode (uncached MMIO page at the base from `IA32_APIC_BASE`).
//!
//! QEMU's TCG has no x2APIC; KVM with `-cpu host` usually has it; under
//! Jailhouse the hypervisor emulates x2APIC on top of whatever the hardware
//! has. The guest uses the APIC for: accepting MSI-X doorbell interrupts
//! (which needs the software-enable bit and EOIs), the one-shot timer that
//! wakes the idle loop, and its ID (the MSI-X destination).
//!
//! The register interface is ~40 lines, simpler than adapting the `x2apic`
//! crate (which insists on starting a periodic timer), hence by hand.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use volatile::VolatilePtr;
use x86_64::registers::model_specific::Msr;

use crate::idt::{VECTOR_APIC_ERROR, VECTOR_SPURIOUS, VECTOR_TIMER};
use crate::paging::{self, Kind, MapError};

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

// Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset/16.
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ESR: u32 = 0x280;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration: divide the bus clock by 16.
const TIMER_DIVIDE_BY_16: u32 = 0b0011;
/// The divider [`TIMER_DIVIDE_BY_16`] selects: timer ticks = bus clock / 16.
pub const TIMER_DIVIDER: u64 = 16;

const MODE_NONE: u8 = 0;
const MODE_XAPIC: u8 = 1;
const MODE_X2APIC: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_NONE);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);
/// Last value written to the timer LVT.
static LVT_TIMER: AtomicU32 = AtomicU32::new(0);

/// Which interface the APIC runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// Memory-mapped registers.
    XApic,
    /// MSR registers.
    X2Apic,
}

fn read(reg: u32) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => {
            // SAFETY: x2APIC mode is enabled, so MSR 0x800 + reg/16 is the
            // APIC register `reg`; reading it has no side effects.
            unsafe { Msr::new(0x800 + (reg >> 4)).read() as u32 }
        }
        _ => {
            let base = XAPIC_BASE.load(Ordering::Relaxed);
            // SAFETY: `base` is the APIC page, mapped uncached by `init`;
            // `reg` is a register offset inside it, 16-byte aligned, so a
            // 32-bit volatile access is what the APIC requires.
            let p = unsafe {
                VolatilePtr::new(NonNull::new_unchecked((base + u64::from(reg)) as *mut u32))
            };
            p.read()
        }
    }
}

fn write(reg: u32, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => {
            let mut msr = Msr::new(0x800 + (reg >> 4));
            // SAFETY: x2APIC mode is on; the callers write only documented
            // values to documented registers.
            unsafe { msr.write(u64::from(value)) };
        }
        _ => {
            let base = XAPIC_BASE.load(Ordering::Relaxed);
            // SAFETY: as in `read`.
            let p = unsafe {
                VolatilePtr::new(NonNull::new_unchecked((base + u64::from(reg)) as *mut u32))
            };
            p.write(value);
        }
    }
}

/// Enables the local APIC (x2APIC if `x2apic`), sets the spurious and
/// error vectors, masks LINT0 (the legacy PIC's ExtINT path) and accepts all
/// priorities.
pub fn init(x2apic: bool) -> Result<ApicMode, MapError> {
    let mut base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { base_msr.read() };
    let mode = if x2apic {
        // SAFETY: CPUID reports x2APIC; enabling it (EN then EN|EXTD, the
        // legal transition from xAPIC) switches the register interface to
        // MSRs and changes no memory.
        unsafe {
            base_msr.write(base | APIC_BASE_ENABLE);
            base_msr.write(base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        }
        MODE.store(MODE_X2APIC, Ordering::Relaxed);
        ApicMode::X2Apic
    } else {
        let phys = base & 0x000f_ffff_ffff_f000;
        paging::map(phys, 0x1000, Kind::Mmio, "local APIC registers")?;
        // SAFETY: sets the global enable bit, keeping the base address.
        unsafe { base_msr.write(base | APIC_BASE_ENABLE) };
        XAPIC_BASE.store(phys, Ordering::Relaxed);
        MODE.store(MODE_XAPIC, Ordering::Relaxed);
        ApicMode::XApic
    };
    setup_registers();
    Ok(mode)
}

/// Uses the APIC through the x2APIC MSRs as it is, without touching
/// IA32_APIC_BASE: a Jailhouse cell always has the x2APIC MSR interface
/// (passed through on x2APIC hosts, emulated on xAPIC hosts) and must never
/// write IA32_APIC_BASE (fatal), nor touch the xAPIC page (fatal on x2APIC
/// hosts).
pub fn init_x2apic_as_is() -> ApicMode {
    MODE.store(MODE_X2APIC, Ordering::Relaxed);
    setup_registers();
    ApicMode::X2Apic
}

fn setup_registers() {
    write(REG_SVR, SVR_ENABLE | u32::from(VECTOR_SPURIOUS));
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_ERROR, u32::from(VECTOR_APIC_ERROR));
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(VECTOR_TIMER));
    LVT_TIMER.store(LVT_MASKED | u32::from(VECTOR_TIMER), Ordering::Relaxed);
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    // The error status register must be written before it is read.
    write(REG_ESR, 0);
}

/// Signals the end of the interrupt in service.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// This CPU's APIC ID (the MSI destination).
pub fn id() -> u32 {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

/// Starts the timer counting down from `ticks` (divided bus clock). With
/// `interrupt`, it raises [`VECTOR_TIMER`] once when it reaches zero.
pub fn timer_start(ticks: u32, interrupt: bool) {
    let mask = if interrupt { 0 } else { LVT_MASKED };
    let lvt = mask | u32::from(VECTOR_TIMER);
    // Each register write may be a VM exit: skip the LVT when unchanged.
    if LVT_TIMER.swap(lvt, Ordering::Relaxed) != lvt {
        write(REG_LVT_TIMER, lvt);
    }
    write(REG_TIMER_INITIAL, ticks);
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}

/// Stops the timer.
pub fn timer_stop() {
    write(REG_TIMER_INITIAL, 0);
}
