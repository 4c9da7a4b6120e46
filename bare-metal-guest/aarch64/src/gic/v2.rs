//! GICv2: distributor (GICD), CPU interface (GICC) and the GICv2m MSI
//! frame (QEMU `virt`: MSI-X messages become SPIs, which needs nothing but
//! the distributor). Under Jailhouse the GICD page is trapped and emulated
//! for the cell's interrupts only, and the GICC page is a stage-2 mapping
//! of the virtual CPU interface (GICV).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::PRIORITY;
use crate::mmio;

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

static GICD: AtomicU64 = AtomicU64::new(0);
static GICC: AtomicU64 = AtomicU64::new(0);
/// ITARGETSR byte that names this CPU's interface.
static TARGET: AtomicU32 = AtomicU32::new(1);

fn read(base: &AtomicU64, off: u64) -> u32 {
    // SAFETY: `init` stored the mapped (Device) base of a GIC frame; the
    // offsets are 4-aligned registers inside it.
    unsafe { mmio::read32(base.load(Ordering::Relaxed) + off) }
}

fn write(base: &AtomicU64, off: u64, value: u32) {
    // SAFETY: as in `read`.
    unsafe { mmio::write32(base.load(Ordering::Relaxed) + off, value) }
}

/// Replaces byte `intid % 4` of the byte-per-interrupt register array at
/// `reg` with a 32-bit read-modify-write (Jailhouse emulates word accesses
/// and keeps other cells' bytes).
fn set_byte(reg: u64, intid: u32, value: u32) {
    let off = reg + u64::from(intid & !3);
    let shift = 8 * (intid & 3);
    let old = read(&GICD, off);
    write(&GICD, off, (old & !(0xff << shift)) | value << shift);
}

/// Sets priority, target (SPIs), trigger and enable of `intid`.
pub(super) fn configure(intid: u32, edge: bool) {
    set_byte(GICD_IPRIORITYR, intid, PRIORITY);
    if intid >= 32 {
        set_byte(GICD_ITARGETSR, intid, TARGET.load(Ordering::Relaxed));
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

/// Initialises distributor and CPU interface (both already mapped).
pub(super) fn init(gicd: u64, gicc: u64) {
    GICD.store(gicd, Ordering::Relaxed);
    GICC.store(gicc, Ordering::Relaxed);
    // ITARGETSR0..7 read as the reading CPU's own interface bit; a
    // uniprocessor GIC (QEMU `virt` with one CPU) reads 0 there and ignores
    // targets, so interface 0. Under Jailhouse a target outside the cell is
    // fatal, and the cell's CPU need not be interface 0.
    let own = read(&GICD, GICD_ITARGETSR) & 0xff;
    TARGET.store(if own == 0 { 1 } else { own }, Ordering::Relaxed);
    // Group 0 and 1 forwarding on (ignored under Jailhouse, where the root
    // cell owns the distributor and has enabled it).
    write(&GICD, GICD_CTLR, 3);
    write(&GICC, GICC_PMR, 0xff);
    write(&GICC, GICC_BPR, 0);
    write(&GICC, GICC_CTLR, 3);
}

/// Reads GICC_IAR (acknowledges the highest-priority pending interrupt).
pub(super) fn acknowledge() -> u32 {
    read(&GICC, GICC_IAR)
}

/// Writes GICC_EOIR with the value `acknowledge` returned.
pub(super) fn end_of_interrupt(iar: u32) {
    write(&GICC, GICC_EOIR, iar);
}

/// The SPIs a v2m frame (mapped at `frame`) offers: (first, count).
pub fn v2m_spis(frame: u64) -> (u32, u32) {
    // SAFETY: `frame` is the mapped v2m frame; MSI_TYPER is a 32-bit register.
    let typer = unsafe { mmio::read32(frame + V2M_MSI_TYPER) };
    ((typer >> 16) & 0x3ff, typer & 0x3ff)
}
