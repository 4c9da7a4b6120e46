//! GICv2: distributor (GICD), CPU interface (GICC) and the GICv2m MSI
//! frame.
//!
//! Why GICv2 only: QEMU `virt` routes PCI MSI(-X) to a GICv2 through the
//! v2m frame (MSI_SETSPI_NS: the device writes the SPI number), which needs
//! nothing but the distributor; with `gic-version=3` MSIs need an ITS
//! (device and collection tables, command queue) and the CPU interface is
//! system registers plus redistributors — a second driver this guest does
//! not have yet. A GICv3 in the DTB is refused with a message.
//!
//! Interrupts used: the virtual timer (PPI 27) and one edge-triggered SPI
//! per MSI-X doorbell vector (`v2m base SPI + vector`), all group 0 on a
//! GIC without security extensions (QEMU `virt` without `secure=on`),
//! priority 0xa0, targeted at CPU interface 0.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::exceptions::{self, DOORBELL_VECTORS, IRQ_COUNTERS, event_doorbell};
use crate::time;

const GICD_CTLR: u64 = 0x000;
const GICD_ISENABLER: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
const GICD_ITARGETSR: u64 = 0x800;
const GICD_ICFGR: u64 = 0xc00;

const GICC_CTLR: u64 = 0x000;
const GICC_PMR: u64 = 0x004;
const GICC_BPR: u64 = 0x008;
const GICC_IAR: u64 = 0x00c;
const GICC_EOIR: u64 = 0x010;

/// GICv2m MSI_TYPER: base SPI in bits 25:16, count in bits 9:0.
const V2M_MSI_TYPER: u64 = 0x008;
/// GICv2m MSI_SETSPI_NS: the MSI doorbell (data = SPI number).
pub const V2M_MSI_SETSPI_NS: u64 = 0x040;

const SPURIOUS: u32 = 1023;

static GICD: AtomicU64 = AtomicU64::new(0);
static GICC: AtomicU64 = AtomicU64::new(0);
/// First SPI of the doorbell vectors (0 = none).
static DOORBELL_SPI_BASE: AtomicU32 = AtomicU32::new(0);

fn read(base: &AtomicU64, off: u64) -> u32 {
    // SAFETY: `init` stored the mapped (Device) base of a GIC frame; the
    // offsets are registers inside it, accessed with 32-bit volatile loads.
    unsafe { ((base.load(Ordering::Relaxed) + off) as *const u32).read_volatile() }
}

fn write(base: &AtomicU64, off: u64, value: u32) {
    // SAFETY: as in `read`.
    unsafe { ((base.load(Ordering::Relaxed) + off) as *mut u32).write_volatile(value) }
}

/// Sets priority, target (SPIs), trigger and enable of `intid`.
fn configure(intid: u32, edge: bool) {
    let byte = |reg: u64, value: u32| {
        let off = reg + u64::from(intid & !3);
        let shift = 8 * (intid & 3);
        let old = read(&GICD, off);
        write(&GICD, off, (old & !(0xff << shift)) | value << shift);
    };
    byte(GICD_IPRIORITYR, 0xa0);
    if intid >= 32 {
        byte(GICD_ITARGETSR, 0x01);
        let off = GICD_ICFGR + u64::from(intid / 16 * 4);
        let bit = 2 * (intid % 16) + 1;
        let old = read(&GICD, off);
        write(
            &GICD,
            off,
            if edge {
                old | 1 << bit
            } else {
                old & !(1 << bit)
            },
        );
    }
    write(
        &GICD,
        GICD_ISENABLER + u64::from(intid / 32 * 4),
        1 << (intid % 32),
    );
}

/// Initialises distributor and CPU interface (both already mapped) and
/// enables the timer PPI.
pub fn init(gicd: u64, gicc: u64) {
    GICD.store(gicd, Ordering::Relaxed);
    GICC.store(gicc, Ordering::Relaxed);
    // Group 0 and 1 forwarding on (a root cell may own the distributor
    // under Jailhouse: writes there are ignored).
    write(&GICD, GICD_CTLR, 3);
    write(&GICC, GICC_PMR, 0xff);
    write(&GICC, GICC_BPR, 0);
    write(&GICC, GICC_CTLR, 3);
    configure(time::TIMER_INTID, false);
}

/// The SPIs a v2m frame (mapped at `frame`) offers: (first, count).
pub fn v2m_spis(frame: u64) -> (u32, u32) {
    // SAFETY: `frame` is the mapped v2m frame; MSI_TYPER is a 32-bit register.
    let typer = unsafe { ((frame + V2M_MSI_TYPER) as *const u32).read_volatile() };
    ((typer >> 16) & 0x3ff, typer & 0x3ff)
}

/// Enables `count` edge-triggered SPIs from `first` as doorbell vectors
/// `0..count`.
pub fn enable_doorbells(first: u32, count: u32) {
    DOORBELL_SPI_BASE.store(first, Ordering::Relaxed);
    for i in 0..count.min(u32::from(DOORBELL_VECTORS)) {
        configure(first + i, true);
    }
}

/// The IRQ exception: acknowledge, dispatch, end of interrupt.
pub fn handle_irq() {
    let iar = read(&GICC, GICC_IAR);
    let intid = iar & 0x3ff;
    if intid == SPURIOUS {
        IRQ_COUNTERS.spurious.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let base = DOORBELL_SPI_BASE.load(Ordering::Relaxed);
    if intid == time::TIMER_INTID {
        time::handle_interrupt();
    } else if base != 0 && (base..base + u32::from(DOORBELL_VECTORS)).contains(&intid) {
        let v = (intid - base) as u8;
        IRQ_COUNTERS.doorbell[usize::from(v)].fetch_add(1, Ordering::Relaxed);
        exceptions::post(event_doorbell(v));
    } else {
        IRQ_COUNTERS.unexpected.fetch_add(1, Ordering::Relaxed);
    }
    write(&GICC, GICC_EOIR, iar);
}
