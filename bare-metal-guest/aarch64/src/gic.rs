//! The GIC: set up the version the platform names, route the timer PPI and
//! the doorbell SPIs to this CPU, and take the IRQ exception.
//!
//! | | GICv2 (`v2`) | GICv3 (`v3`) |
//! |---|---|---|
//! | where | QEMU `virt,gic-version=2` (DTB); a Jailhouse GICv2 board (comm region) | a Jailhouse GICv3 board, e.g. qemu-arm64 (comm region) |
//! | distributor | GICD, SPIs targeted by ITARGETSR (this CPU's interface) | GICD with affinity routing, SPIs routed by IROUTER = this CPU's MPIDR affinity |
//! | PPIs | GICD banked registers | this CPU's redistributor, found by GICR_TYPER affinity |
//! | CPU interface | GICC MMIO (the GICV frame under Jailhouse) | ICC_* system registers (the virtual interface under Jailhouse) |
//! | doorbells | MSI-X through the GICv2m frame (QEMU), or INTx (Jailhouse) | INTx only |
//!
//! Why no ITS: on GICv3 an MSI needs an ITS (device and collection tables,
//! a command queue, LPI configuration tables in memory), and Jailhouse
//! neither emulates nor passes one to a cell: its virtual PCI devices
//! raise INTx, which it turns into SPIs from the cell's `vpci_irq_base`
//! (shared/reference/jailhouse-arm64-cell.md §4.3). Nothing this guest
//! runs on would use an ITS driver, so QEMU `virt` with GICv3 and an
//! MSI-X-only device is refused with that reason (`device`).
//!
//! Interrupts used: the virtual timer (PPI 27, level) and the doorbells:
//! one edge-triggered SPI per MSI-X vector (v2m), or the device's one
//! INTx SPI as vector 0. All at priority 0xa0, group 1 on GICv3 (group 0
//! on the GICv2 without security extensions QEMU and Jailhouse present,
//! where it is signalled as IRQ).

mod v2;
mod v3;

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub use v2::{V2M_MSI_SETSPI_NS, v2m_spis};

use crate::exceptions::{self, DOORBELL_VECTORS, IRQ_COUNTERS, event_doorbell};
use crate::mmu::MapError;
use crate::time;

/// The priority of every interrupt the guest enables.
const PRIORITY: u32 = 0xa0;

/// The GIC and where its parts are: the comm region's description (the
/// DTB path builds the same), with the frames already mapped, except
/// GICv3's redistributors, which `init` maps while walking them.
pub use ivnet_guest::comm_region::Gic;

/// Why the GIC could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum GicError {
    /// No redistributor frame carries this CPU's affinity.
    NoRedistributor {
        /// MPIDR_EL1.
        mpidr: u64,
        /// Frames looked at.
        frames: u32,
    },
    /// A register did not settle (`what`) within the polling bound.
    Timeout(&'static str),
    /// Mapping a redistributor frame failed.
    Map(MapError),
}

impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GicError::NoRedistributor { mpidr, frames } => write!(
                f,
                "GICv3: no redistributor for MPIDR {mpidr:#x} among {frames} frame(s)"
            ),
            GicError::Timeout(what) => write!(f, "GIC: {what} did not settle"),
            GicError::Map(e) => write!(f, "GICv3 redistributor: {e}"),
        }
    }
}

static V3: AtomicBool = AtomicBool::new(false);
/// First INTID of the doorbell vectors and how many there are (0: none).
static DOORBELL_INTID: AtomicU32 = AtomicU32::new(0);
static DOORBELL_COUNT: AtomicU32 = AtomicU32::new(0);

/// What `init` found, for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct GicInfo {
    /// GICv3: this CPU's redistributor frame.
    pub redistributor: Option<u64>,
}

/// Initialises distributor and CPU interface and enables the timer PPI.
pub fn init(gic: Gic) -> Result<GicInfo, GicError> {
    let redistributor = match gic {
        Gic::V2 { gicd, gicc } => {
            v2::init(gicd, gicc);
            None
        }
        Gic::V3 { gicd, gicr } => {
            let frame = v3::init(gicd, gicr)?;
            V3.store(true, Ordering::Relaxed);
            Some(frame)
        }
    };
    configure(time::TIMER_INTID, false);
    Ok(GicInfo { redistributor })
}

/// Sets group, priority, trigger (SPIs), routing to this CPU (SPIs) and
/// enable of `intid`.
fn configure(intid: u32, edge: bool) {
    if V3.load(Ordering::Relaxed) {
        v3::configure(intid, edge);
    } else {
        v2::configure(intid, edge);
    }
}

/// Enables `count` edge-triggered SPIs from `first` as doorbell vectors
/// `0..count` (at most [`DOORBELL_VECTORS`]).
pub fn enable_doorbells(first: u32, count: u32) {
    let count = count.min(u32::from(DOORBELL_VECTORS));
    DOORBELL_INTID.store(first, Ordering::Relaxed);
    DOORBELL_COUNT.store(count, Ordering::Relaxed);
    for i in 0..count {
        configure(first + i, true);
    }
}

/// The IRQ exception: acknowledge, dispatch, end of interrupt.
pub fn handle_irq() {
    let v3 = V3.load(Ordering::Relaxed);
    let iar = if v3 {
        v3::acknowledge()
    } else {
        v2::acknowledge()
    };
    let intid = if v3 { iar & 0xff_ffff } else { iar & 0x3ff };
    if (1020..1024).contains(&intid) {
        IRQ_COUNTERS.spurious.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let first = DOORBELL_INTID.load(Ordering::Relaxed);
    let count = DOORBELL_COUNT.load(Ordering::Relaxed);
    if intid == time::TIMER_INTID {
        time::handle_interrupt();
    } else if (first..first + count).contains(&intid) {
        let v = (intid - first) as u8;
        IRQ_COUNTERS.doorbell[usize::from(v)].fetch_add(1, Ordering::Relaxed);
        exceptions::post(event_doorbell(v));
    } else {
        IRQ_COUNTERS.unexpected.fetch_add(1, Ordering::Relaxed);
    }
    if v3 {
        v3::end_of_interrupt(iar);
    } else {
        v2::end_of_interrupt(iar);
    }
}
