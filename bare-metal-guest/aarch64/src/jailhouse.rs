//! The guest as a Jailhouse arm64 cell: entered at the cell's reset address
//! with x0 = 0 (no device tree), it learns its platform from the comm
//! region at 0x80000000 (`ivnet_guest::comm_region::parse_arm`, pure and
//! fuzzed), answers the hypervisor's messages and stops through
//! `cell_state`. Facts: shared/reference/jailhouse-arm64-cell.md (§2 reset
//! state, §3 comm region, §4 interrupts, §5 PCI, §7 console, §8
//! hypercalls).
//!
//! | what | from |
//! |---|---|
//! | console | the comm region's `console`: PL011 (type 3) at its address, reprogrammed only if `divider` != 0; else the debug-console hypercall if the cell may use it |
//! | GIC | `gic_version`: GICv3 (`gicd_base`, `gicr_base`) or GICv2 (`gicd_base`, `gicc_base`) |
//! | PCI | ECAM at `pci_mmconfig_base`, bus 0 only (1 MiB: past it nothing is mapped and an access is fatal); BARs placed from [`BAR_WINDOW_BASE`] |
//! | doorbells | INTx: pin n -> INTID 32 + `vpci_irq_base` + n - 1, edge-triggered |
//! | command line | the `.cmdline` buffer at image base + 0x1000 (`jailhouse cell load … -s "…" -a 0x40081000`) |
//! | stop | `cell_state` SHUT_DOWN (success) or FAILED, then WFI with interrupts masked; never semihosting or PSCI (an HVC other than 0x4a48 is fatal, PSCI SYSTEM_OFF is refused) |

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use ivnet_guest::cmdline::CmdlineError;
use ivnet_guest::comm_region::{self, ArmCommInfo, CommPage, ConsoleChoice, Field, Gic};
use ivnet_guest::exit_code::ExitCode;

use crate::mmu::{self, Kind, MapError};
use crate::pci::{HostBridge, Interrupts};
use crate::{println, serial};

/// Guest-physical address of the communication region
/// (`COMM_REGION_BASE` of Jailhouse's ARM inmates; every qemu-arm64 cell
/// config maps it there).
pub const COMM_REGION_BASE: u64 = 0x8000_0000;
const COMM_REGION_SIZE: u64 = 0x1000;

/// Where the guest places the ivshmem device's BAR0 (and BAR1, if any):
/// an address with no stage-2 mapping in the cell, so that Jailhouse's
/// BAR handlers (registered when Command.MEMORY goes 0 -> 1) catch every
/// access, and at the same time the start of QEMU `virt`'s 32-bit PCI
/// window, where the test rig's real device decodes. The cell config says
/// the same (configs/jailhouse/arm64/ivnet-inmate-qemu-arm64.c).
pub const BAR_WINDOW_BASE: u64 = 0x1000_0000;
/// Room for BAR0 and BAR1 (4 KiB each, 64 KiB with the `_64K` BAR masks).
const BAR_WINDOW_SIZE: u64 = 0x2_0000;
/// ECAM of bus 0 (the virtual host decodes no other bus).
const ECAM_BUS0_SIZE: u64 = 0x10_0000;

/// `hvc` immediate of Jailhouse hypercalls; any other is fatal.
const JAILHOUSE_HVC: u16 = 0x4a48;
/// `JAILHOUSE_HC_DEBUG_CONSOLE_PUTC`.
const HC_DEBUG_CONSOLE_PUTC: u64 = 8;

/// The guest was entered without a device tree (set before anything can
/// fail, so that `exit` never tries semihosting in a cell).
static ENTERED: AtomicBool = AtomicBool::new(false);
/// The comm region passed its checks (`cell_state` and messages are
/// meaningful).
static COMM_VALID: AtomicBool = AtomicBool::new(false);

/// Records that the guest takes the Jailhouse path (x0 was 0).
pub fn enter() {
    ENTERED.store(true, Ordering::Relaxed);
}

/// Whether the guest runs as a Jailhouse cell (entered without a DTB).
pub fn entered() -> bool {
    ENTERED.load(Ordering::Relaxed)
}

/// The communication region, one page the hypervisor and the root cell
/// also read and write: only volatile accesses of naturally aligned
/// fields, never references. (Normal memory, not trapped: plain volatile
/// accesses are fine here.)
#[derive(Clone, Copy)]
struct CommRegion;

impl CommRegion {
    /// The header, copied out byte by byte with volatile reads.
    fn header(self) -> [u8; comm_region::ARM_HEADER_LEN] {
        core::array::from_fn(|i| {
            // SAFETY: `i` < ARM_HEADER_LEN < COMM_REGION_SIZE; `init`
            // mapped the page read-write for the guest's lifetime.
            unsafe { ((COMM_REGION_BASE as usize + i) as *const u8).read_volatile() }
        })
    }
}

impl CommPage for CommRegion {
    fn read_u32(&self, field: Field) -> u32 {
        // SAFETY: as in `header`: `Field::offset` is 4-aligned and inside
        // the header, so inside the page.
        unsafe { ((COMM_REGION_BASE as usize + field.offset()) as *const u32).read_volatile() }
    }

    fn write_u32(&self, field: Field, value: u32) {
        // SAFETY: as in `read_u32`; every `Field` is one the cell may write
        // (`cell_state`, `msg_to_cell`, `reply_from_cell`).
        unsafe { ((COMM_REGION_BASE as usize + field.offset()) as *mut u32).write_volatile(value) }
    }
}

/// What the comm region gave the guest.
pub struct Cell {
    /// The comm region's ARM part.
    pub info: ArmCommInfo,
    /// The GIC (GICv2 frames mapped; GICv3 maps itself).
    pub gic: Gic,
    /// The virtual PCI host, if the cell has PCI.
    pub host: Option<HostBridge>,
}

/// Maps and checks the comm region, then sets up the console and maps the
/// GICv2 frames and ECAM. A comm region the guest cannot use stops the
/// cell as Jailhouse's inmate library does: `cell_state` = FAILED_COMM_REV
/// for another signature or ABI revision (FAILED for an unusable GIC or
/// ECAM base), silently (there is no console yet).
pub fn init() -> Result<Cell, MapError> {
    mmu::map(
        COMM_REGION_BASE,
        COMM_REGION_SIZE,
        Kind::SharedReadWrite,
        "Jailhouse comm region",
    )?;
    let comm = CommRegion;
    let info = match comm_region::parse_arm(&comm.header()) {
        Ok(info) => info,
        Err(e) => {
            comm.write_u32(Field::CellState, e.cell_state());
            halt_forever();
        }
    };
    COMM_VALID.store(true, Ordering::Relaxed);
    match info.console_choice() {
        ConsoleChoice::Pl011 { base, divider } => {
            mmu::map(base, 0x1000, Kind::Mmio, "PL011 UART")?;
            serial::init_pl011(base, divider);
        }
        ConsoleChoice::Hypercall => serial::init_hypercall(),
        ConsoleChoice::None => {}
    }
    let gic = info.gic;
    if let Gic::V2 { gicd, gicc } = gic {
        mmu::map(gicd, 0x1000, Kind::Mmio, "GICv2 distributor")?;
        mmu::map(gicc, 0x2000, Kind::Mmio, "GICv2 CPU interface")?;
    }
    let host = match info.pci_mmconfig_base {
        Some(ecam) => {
            mmu::map(ecam, ECAM_BUS0_SIZE, Kind::Mmio, "PCI ECAM (bus 0)")?;
            Some(HostBridge {
                ecam,
                buses: 0..1,
                window: BAR_WINDOW_BASE..BAR_WINDOW_BASE + BAR_WINDOW_SIZE,
                interrupts: Interrupts::Intx {
                    vpci_irq_base: info.vpci_irq_base,
                },
            })
        }
        None => None,
    };
    Ok(Cell { info, gic, host })
}

/// The boot log's `platform: jailhouse arm64 …` line.
pub struct PlatformLine<'a> {
    /// What the comm region gave.
    pub cell: &'a Cell,
    /// GICv3: this CPU's redistributor frame.
    pub redistributor: Option<u64>,
    /// CNTFRQ_EL0.
    pub timer_hz: u64,
}

impl fmt::Display for PlatformLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.cell.info;
        write!(f, "platform: jailhouse arm64, ")?;
        match self.cell.gic {
            Gic::V2 { gicd, gicc } => write!(f, "GICv2 GICD {gicd:#x} GICC {gicc:#x}")?,
            Gic::V3 { gicd, gicr } => {
                write!(f, "GICv3 GICD {gicd:#x} GICR {gicr:#x}")?;
                if let Some(own) = self.redistributor {
                    write!(f, " (this CPU's at {own:#x})")?;
                }
            }
        }
        match info.pci_mmconfig_base {
            Some(ecam) => write!(f, ", ECAM {ecam:#x} bus 0")?,
            None => write!(f, ", no PCI")?,
        }
        write!(f, ", vpci_irq_base {}", info.vpci_irq_base)?;
        write!(f, " (INTx INTIDs")?;
        for (pin, name) in (1..=4).zip(['A', 'B', 'C', 'D']) {
            match comm_region::intx_intid(info.vpci_irq_base, pin) {
                Some(intid) => write!(f, " {name} {intid}")?,
                None => write!(f, " {name} none")?,
            }
        }
        write!(f, ")")?;
        match info.console_choice() {
            ConsoleChoice::Pl011 { base, divider: 0 } => write!(f, ", console PL011 {base:#x}")?,
            ConsoleChoice::Pl011 { base, divider } => {
                write!(f, ", console PL011 {base:#x} (divider {divider})")?
            }
            ConsoleChoice::Hypercall => write!(f, ", console hypercall")?,
            ConsoleChoice::None => write!(f, ", no console")?,
        }
        write!(f, ", timer {} Hz", self.timer_hz)
    }
}

unsafe extern "C" {
    static __cmdline_start: u8;
    static __cmdline_end: u8;
}

/// The command line `jailhouse cell load … -s "…" -a 0x40081000` wrote
/// into the `.cmdline` buffer: the bytes before the first NUL. No NUL in
/// the buffer means the string was longer than it (its tail went into the
/// bss, which the entry code has zeroed since): refused as too long, as
/// on x86.
pub fn cmdline() -> Result<&'static str, CmdlineError<'static>> {
    let start = &raw const __cmdline_start;
    let len = (&raw const __cmdline_end as usize).saturating_sub(start as usize);
    // SAFETY: the linker script reserves `len` bytes at `__cmdline_start`
    // inside the loaded image, mapped read-only by `mmu::init`; only the
    // loader writes them, before the cell starts.
    let buf = unsafe { core::slice::from_raw_parts(start, len) };
    let n = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(CmdlineError::TooLong(len))?;
    core::str::from_utf8(&buf[..n]).map_err(|_| CmdlineError::NotUtf8)
}

/// Writes `c` to the hypervisor's debug console (the cell config must set
/// `JAILHOUSE_CELL_VIRTUAL_CONSOLE_PERMITTED`; the comm region says so).
pub fn debug_console_putc(c: u8) {
    // SAFETY: the Jailhouse hypercall: x0 = number (result), x1 = argument,
    // x2 and x3 clobbered by the ABI; the hypervisor writes only x0 and
    // resumes after the HVC. Only called when the comm region permits it.
    unsafe {
        core::arch::asm!("hvc #{imm}", imm = const JAILHOUSE_HVC,
            inout("x0") HC_DEBUG_CONSOLE_PUTC => _, inout("x1") u64::from(c) => _,
            out("x2") _, out("x3") _, options(nostack));
    }
}

/// Answers the hypervisor's message, if one is pending (called from the
/// main loop; a no-op outside Jailhouse): `comm_region::serve_message`, as
/// on x86, then a halt once a shutdown is approved.
pub fn poll_messages(take_link_down: impl FnOnce()) {
    if COMM_VALID.load(Ordering::Relaxed)
        && comm_region::serve_message(&CommRegion, take_link_down, |a| println!("{a}"))
    {
        halt_forever();
    }
}

/// Stops the cell: `cell_state` = SHUT_DOWN for success, FAILED otherwise
/// (if the comm region was valid), then halts for good.
pub fn stop_cell(code: ExitCode) -> ! {
    if COMM_VALID.load(Ordering::Relaxed) {
        CommRegion.write_u32(Field::CellState, comm_region::cell_state_for_exit(code));
    }
    halt_forever()
}

/// WFI forever with every interrupt masked (the hypervisor parks the CPU
/// at the next `cell shutdown`, `load` or `destroy`).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masks interrupts and waits; touches no memory.
        unsafe { core::arch::asm!("msr daifset, #0xf", "wfi", options(nomem, nostack)) };
    }
}
