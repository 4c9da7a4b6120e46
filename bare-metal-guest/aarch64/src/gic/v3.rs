//! GICv3: distributor with affinity routing, this CPU's redistributor, and
//! the CPU interface through the ICC_* system registers.
//!
//! Under Jailhouse (shared/reference/jailhouse-arm64-cell.md §4.2) the
//! GICD page and every GICR frame are trapped: IGROUPR, ICFGR and
//! IPRIORITYR are read-modify-written for the cell's interrupts only,
//! ISENABLER is masked to them, IROUTER must name a cell CPU's MPIDR
//! (anything else is fatal), GICD_CTLR writes are ignored (root Linux has
//! enabled the distributor); the redistributor registers pass through on
//! the cell's own CPUs' frames only, and TYPER, PIDR2 on all of them, so the
//! cell can walk the frames. The ICC_* registers reach the virtual CPU
//! interface without exits. Every MMIO access is a single `ldr`/`str`
//! (`mmio`).

use core::sync::atomic::{AtomicU64, Ordering};

use super::{GicError, PRIORITY};
use crate::mmio;
use crate::mmu::{self, Kind};

const GICD_CTLR: u64 = 0x0000;
const GICD_IGROUPR: u64 = 0x0080;
const GICD_ISENABLER: u64 = 0x0100;
const GICD_IPRIORITYR: u64 = 0x0400;
const GICD_ICFGR: u64 = 0x0c00;
const GICD_IROUTER: u64 = 0x6000;
/// GICD_CTLR: register write pending.
const GICD_CTLR_RWP: u32 = 1 << 31;
/// GICD_CTLR: EnableGrp0, EnableGrp1, ARE (the single-security-state view
/// QEMU `virt` and Jailhouse's root cell use).
const GICD_CTLR_ENABLE: u32 = 1 << 0 | 1 << 1 | 1 << 4;
/// The distributor's register frame.
const GICD_SIZE: u64 = 0x1_0000;

const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
const GICR_PIDR2: u64 = 0xffe8;
/// GICR_TYPER: the frame has the GICv4 virtual-LPI pages (256 KiB stride).
const GICR_TYPER_VLPIS: u64 = 1 << 1;
/// GICR_TYPER: the last frame of the region.
const GICR_TYPER_LAST: u64 = 1 << 4;
/// GICR_WAKER: the CPU's redistributor is asleep / its interface is
/// quiescent.
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// The SGI/PPI page follows the RD page.
const GICR_SGI_BASE: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = GICR_SGI_BASE + 0x0080;
const GICR_ISENABLER0: u64 = GICR_SGI_BASE + 0x0100;
const GICR_IPRIORITYR: u64 = GICR_SGI_BASE + 0x0400;
/// RD and SGI pages of one redistributor.
const GICR_PAGES_SIZE: u64 = 0x2_0000;
/// Frame strides without and with the VLPI pages.
const GICR_STRIDE: u64 = 0x2_0000;
const GICR_STRIDE_VLPIS: u64 = 0x4_0000;
/// Bound on the frames walked (the architecture allows 2^16 CPUs; no
/// machine this guest runs on has more than a few hundred).
const MAX_FRAMES: u32 = 1024;
/// Bound on polls of RWP and ChildrenAsleep (they settle within a few
/// register reads on QEMU and real GICs).
const MAX_POLLS: u32 = 1_000_000;
/// MPIDR_EL1 affinity fields Aff3 (39:32) and Aff2..Aff0 (23:0): the
/// IROUTER value that names this CPU (Jailhouse's `MPIDR_CPUID_MASK`).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

static GICD: AtomicU64 = AtomicU64::new(0);
/// This CPU's redistributor (RD page; the SGI page follows).
static GICR: AtomicU64 = AtomicU64::new(0);
/// IROUTER value for this CPU.
static ROUTE: AtomicU64 = AtomicU64::new(0);

fn gicd_read(off: u64) -> u32 {
    // SAFETY: `init` mapped the 64 KiB distributor frame as Device memory;
    // `off` is a 4-aligned register inside it.
    unsafe { mmio::read32(GICD.load(Ordering::Relaxed) + off) }
}

fn gicd_write(off: u64, value: u32) {
    // SAFETY: as in `gicd_read`.
    unsafe { mmio::write32(GICD.load(Ordering::Relaxed) + off, value) }
}

fn gicr_read(frame: u64, off: u64) -> u32 {
    // SAFETY: the caller passes a redistributor frame `init` has mapped
    // (RD page, plus the SGI page for this CPU's frame); `off` is a
    // 4-aligned register inside the mapped part.
    unsafe { mmio::read32(frame + off) }
}

fn gicr_write(off: u64, value: u32) {
    // SAFETY: this CPU's frame, RD and SGI pages mapped by `init`.
    unsafe { mmio::write32(GICR.load(Ordering::Relaxed) + off, value) }
}

fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reads an ID register.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// Polls until `done` or the bound; `what` names the register for the error.
fn settle(what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), GicError> {
    for _ in 0..MAX_POLLS {
        if done() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(GicError::Timeout(what))
}

/// Finds this CPU's redistributor: frames from `first`, RD pages mapped as
/// they are read, until GICR_TYPER[63:32] equals this CPU's affinity
/// (Aff3.Aff2.Aff1.Aff0), the frame marked Last, or something that is not
/// a GICv3/v4 redistributor (PIDR2.ArchRev).
fn find_redistributor(first: u64) -> Result<u64, GicError> {
    let mpidr = mpidr();
    let affinity = (mpidr >> 32 & 0xff) << 24 | (mpidr & 0xff_ffff);
    let mut frame = first;
    for frames in 1..=MAX_FRAMES {
        mmu::map(frame, 0x1_0000, Kind::Mmio, "GICv3 redistributor").map_err(GicError::Map)?;
        let arch = gicr_read(frame, GICR_PIDR2) >> 4 & 0xf;
        if arch != 3 && arch != 4 {
            return Err(GicError::NoRedistributor { mpidr, frames });
        }
        // Two 32-bit halves, as Jailhouse's own inmates read it.
        let typer = u64::from(gicr_read(frame, GICR_TYPER))
            | u64::from(gicr_read(frame, GICR_TYPER + 4)) << 32;
        if typer >> 32 == affinity {
            return Ok(frame);
        }
        if typer & GICR_TYPER_LAST != 0 {
            return Err(GicError::NoRedistributor { mpidr, frames });
        }
        frame += if typer & GICR_TYPER_VLPIS != 0 {
            GICR_STRIDE_VLPIS
        } else {
            GICR_STRIDE
        };
    }
    Err(GicError::NoRedistributor {
        mpidr,
        frames: MAX_FRAMES,
    })
}

/// Maps and initialises the distributor, this CPU's redistributor and the
/// CPU interface. Returns the redistributor frame.
pub(super) fn init(gicd: u64, gicr: u64) -> Result<u64, GicError> {
    mmu::map(gicd, GICD_SIZE, Kind::Mmio, "GICv3 distributor").map_err(GicError::Map)?;
    GICD.store(gicd, Ordering::Relaxed);
    ROUTE.store(mpidr() & MPIDR_AFFINITY, Ordering::Relaxed);

    let frame = find_redistributor(gicr)?;
    mmu::map(
        frame,
        GICR_PAGES_SIZE,
        Kind::Mmio,
        "GICv3 redistributor (this CPU)",
    )
    .map_err(GicError::Map)?;
    GICR.store(frame, Ordering::Relaxed);
    // Wake the redistributor (QEMU resets it asleep; Jailhouse's root
    // Linux has woken every CPU's).
    let waker = gicr_read(frame, GICR_WAKER);
    if waker & GICR_WAKER_PROCESSOR_SLEEP != 0 {
        gicr_write(GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
        settle("GICR_WAKER.ChildrenAsleep", || {
            gicr_read(frame, GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP == 0
        })?;
    }

    // Groups 0 and 1, affinity routing, unless already on: under Jailhouse
    // the root cell has enabled the distributor and the write would be
    // ignored anyway (one trap fewer); QEMU without firmware resets it off.
    if gicd_read(GICD_CTLR) & GICD_CTLR_ENABLE != GICD_CTLR_ENABLE {
        gicd_write(GICD_CTLR, GICD_CTLR_ENABLE);
        settle("GICD_CTLR.RWP", || {
            gicd_read(GICD_CTLR) & GICD_CTLR_RWP == 0
        })?;
    }

    // SAFETY: the GICv3 CPU interface registers of this CPU. SRE first
    // (the system-register interface; RAO under Jailhouse and QEMU, and the
    // entry code enabled it at EL2), then: every priority unmasked, no
    // preemption grouping, EOImode 0 (EOIR also deactivates, which under
    // Jailhouse deactivates the physical interrupt through the list
    // register's HW bit), group 1 on.
    unsafe {
        core::arch::asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #1",
            "msr icc_sre_el1, {t}",
            "isb",
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_ctlr_el1, xzr",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            t = out(reg) _,
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            options(nomem, nostack),
        );
    }
    Ok(frame)
}

/// Replaces byte `intid % 4` of the byte-per-interrupt register array at
/// `off` (of `read`/`write`) with a 32-bit read-modify-write.
fn set_byte(read: impl Fn(u64) -> u32, write: impl Fn(u64, u32), off: u64, intid: u32) {
    let reg = off + u64::from(intid & !3);
    let shift = 8 * (intid & 3);
    write(reg, (read(reg) & !(0xff << shift)) | PRIORITY << shift);
}

/// Group 1, priority, trigger (SPIs), route to this CPU (SPIs), enable.
/// The group bit is written only if it is not set yet: root Linux puts
/// every interrupt in group 1 before Jailhouse starts, and an IGROUPR
/// write is one more trapped access (QEMU without firmware resets them to
/// group 0).
pub(super) fn configure(intid: u32, edge: bool) {
    let bit = 1u32 << (intid % 32);
    if intid < 32 {
        // SGIs and PPIs live in this CPU's redistributor (the SGI page).
        let frame = GICR.load(Ordering::Relaxed);
        let group = gicr_read(frame, GICR_IGROUPR0);
        if group & bit == 0 {
            gicr_write(GICR_IGROUPR0, group | bit);
        }
        set_byte(
            |off| gicr_read(frame, off),
            gicr_write,
            GICR_IPRIORITYR,
            intid,
        );
        gicr_write(GICR_ISENABLER0, bit);
        return;
    }
    let word = u64::from(intid / 32 * 4);
    let group = gicd_read(GICD_IGROUPR + word);
    if group & bit == 0 {
        gicd_write(GICD_IGROUPR + word, group | bit);
    }
    set_byte(gicd_read, gicd_write, GICD_IPRIORITYR, intid);
    let cfg = GICD_ICFGR + u64::from(intid / 16 * 4);
    let edge_bit = 1 << (2 * (intid % 16) + 1);
    let old = gicd_read(cfg);
    gicd_write(
        cfg,
        if edge {
            old | edge_bit
        } else {
            old & !edge_bit
        },
    );
    // SAFETY: IROUTER<intid> is an 8-aligned 64-bit register inside the
    // mapped distributor frame (0x6000 + 8 * intid < 0x8000 for INTIDs
    // below 1024); the value is this CPU's affinity, routing mode 0.
    unsafe {
        mmio::write64(
            GICD.load(Ordering::Relaxed) + GICD_IROUTER + 8 * u64::from(intid),
            ROUTE.load(Ordering::Relaxed),
        );
    }
    gicd_write(GICD_ISENABLER + word, bit);
}

/// Reads ICC_IAR1_EL1 (acknowledges the highest-priority group-1 interrupt).
pub(super) fn acknowledge() -> u32 {
    let iar: u64;
    // SAFETY: reads the interrupt acknowledge register of this CPU's
    // interface (an access with a side effect on the GIC only).
    unsafe { core::arch::asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack)) };
    iar as u32
}

/// Writes ICC_EOIR1_EL1 with the value `acknowledge` returned.
pub(super) fn end_of_interrupt(iar: u32) {
    // SAFETY: ends the interrupt `iar` names (priority drop and, EOImode 0,
    // deactivation).
    unsafe {
        core::arch::asm!("msr icc_eoir1_el1, {}", in(reg) u64::from(iar), options(nomem, nostack))
    };
}
