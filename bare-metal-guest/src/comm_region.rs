//! The Jailhouse communication region as the inmate reads it, pure: the
//! header check, what the x86 and the ARM part say (timer source; console,
//! GIC, ECAM, INTx base) and the message protocol. The hypervisor writes
//! the page; the platform code (x86 `platform.rs`, aarch64 `jailhouse.rs`)
//! copies the header out with volatile reads and carries out what these
//! functions decide, so the decisions are host-tested and fuzzed
//! (`fuzz/fuzz_targets/comm_region.rs`).
//!
//! Layout (Jailhouse `COMM_REGION_GENERIC_HEADER` plus the architecture's
//! part, packed, little-endian; shared/reference/jailhouse-x86-cell.md §3.4,
//! jailhouse-arm64-cell.md §3):
//!
//! | offset | generic header |
//! |---:|---|
//! | 0x00 | signature `"JHCOMM"` |
//! | 0x06 | ABI revision (u16, 2) |
//! | 0x08 | `cell_state` (u32, written by the cell) |
//! | 0x0c | `msg_to_cell` (u32) |
//! | 0x10 | `reply_from_cell` (u32, written by the cell) |
//! | 0x14 | `flags` (u32: bit 0 debug-console hypercall permitted, bit 1 preferred) |
//! | 0x18 | `console`: address u64, size u32 @0x20, type u16 @0x24, flags u16 @0x26, divider u32 @0x28, gate_nr u32 @0x2c, clock_reg u64 @0x30 |
//! | 0x38 | `pci_mmconfig_base` (u64, 0: no PCI) |
//!
//! | offset | x86 part | ARM part (arm64 and arm32) |
//! |---:|---|---|
//! | 0x40 | `pm_timer_address` (u16, an I/O port) | `gic_version` (u8), 7 bytes padding |
//! | 0x42 | `num_cpus` (u16) | |
//! | 0x44 | `tsc_khz` (u32) | |
//! | 0x48 | `apic_khz` (u32) | `gicd_base` (u64) |
//! | 0x50 | | `gicc_base` (u64, GICv2 only) |
//! | 0x58 | | `gicr_base` (u64, GICv3 only) |
//! | 0x60 | | `vpci_irq_base` (u32): INTx pin n of a virtual PCI device is SPI `vpci_irq_base + n - 1` |

use core::fmt;

/// `COMM_REGION_MAGIC`.
pub const SIGNATURE: [u8; 6] = *b"JHCOMM";
/// `COMM_REGION_ABI_REVISION`.
pub const ABI_REVISION: u16 = 2;

/// Offset of the ABI revision.
pub const OFF_REVISION: usize = 0x06;
/// Offset of `cell_state`.
pub const OFF_CELL_STATE: usize = 0x08;
/// Offset of `msg_to_cell`.
pub const OFF_MSG_TO_CELL: usize = 0x0c;
/// Offset of `reply_from_cell`.
pub const OFF_REPLY_FROM_CELL: usize = 0x10;
const OFF_FLAGS: usize = 0x14;
const OFF_CONSOLE_ADDRESS: usize = 0x18;
const OFF_CONSOLE_SIZE: usize = 0x20;
const OFF_CONSOLE_TYPE: usize = 0x24;
const OFF_CONSOLE_FLAGS: usize = 0x26;
const OFF_CONSOLE_DIVIDER: usize = 0x28;
const OFF_PCI_MMCONFIG_BASE: usize = 0x38;
// The x86 part.
const OFF_PM_TIMER_ADDRESS: usize = 0x40;
const OFF_NUM_CPUS: usize = 0x42;
const OFF_TSC_KHZ: usize = 0x44;
const OFF_APIC_KHZ: usize = 0x48;
/// Bytes of the x86 header [`parse`] reads.
pub const HEADER_LEN: usize = 0x4c;
// The ARM part.
const OFF_GIC_VERSION: usize = 0x40;
const OFF_GICD_BASE: usize = 0x48;
const OFF_GICC_BASE: usize = 0x50;
const OFF_GICR_BASE: usize = 0x58;
const OFF_VPCI_IRQ_BASE: usize = 0x60;
/// Bytes of the ARM header [`parse_arm`] reads (`sizeof(struct
/// jailhouse_comm_region)` on arm64).
pub const ARM_HEADER_LEN: usize = 0x64;

/// `cell_state` values (include/jailhouse/hypercall.h).
pub mod cell_state {
    /// `JAILHOUSE_CELL_RUNNING`.
    pub const RUNNING: u32 = 0;
    /// `JAILHOUSE_CELL_SHUT_DOWN` (terminal).
    pub const SHUT_DOWN: u32 = 2;
    /// `JAILHOUSE_CELL_FAILED` (terminal).
    pub const FAILED: u32 = 3;
    /// `JAILHOUSE_CELL_FAILED_COMM_REV` (terminal).
    pub const FAILED_COMM_REV: u32 = 4;
}

/// Comm `flags` bit 0: the debug-console hypercall is permitted
/// (`JAILHOUSE_COMM_FLAG_DBG_PUTC_PERMITTED`).
pub const FLAG_DBG_PUTC_PERMITTED: u32 = 1 << 0;
/// Comm `flags` bit 1: the cell config asks inmates to prefer it.
pub const FLAG_DBG_PUTC_ACTIVE: u32 = 1 << 1;
/// `JAILHOUSE_CON_TYPE_PL011`.
pub const CON_TYPE_PL011: u16 = 0x0003;
/// `JAILHOUSE_CON_ACCESS_MMIO`.
pub const CON_ACCESS_MMIO: u16 = 0x0001;

/// The first SPI (INTIDs 0..32 are SGIs and PPIs).
const FIRST_SPI: u32 = 32;
/// One past the last SPI (1020..1023 are special INTIDs).
const SPI_END: u32 = 1020;

// Messages to the cell and replies (include/jailhouse/hypercall.h).
const MSG_NONE: u32 = 0;
const MSG_SHUTDOWN_REQUEST: u32 = 1;
const MSG_RECONFIG_COMPLETED: u32 = 2;
/// `JAILHOUSE_MSG_UNKNOWN`.
pub const REPLY_UNKNOWN: u32 = 1;
/// `JAILHOUSE_MSG_REQUEST_APPROVED`.
pub const REPLY_REQUEST_APPROVED: u32 = 3;
/// `JAILHOUSE_MSG_RECEIVED`.
pub const REPLY_RECEIVED: u32 = 4;

/// Where the guest's clocks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerSource {
    /// The rates the hypervisor measured (both nonzero).
    Rates {
        /// TSC frequency.
        tsc_khz: u32,
        /// Local APIC timer input frequency.
        apic_khz: u32,
    },
    /// Calibrate against the ACPI PM timer at this I/O port.
    PmTimer(u16),
}

/// What the comm region says about an x86 cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommInfo {
    /// CPUs of the cell.
    pub num_cpus: u16,
    /// `tsc_khz` as published (0: not measured).
    pub tsc_khz: u32,
    /// `apic_khz` as published (0: not measured).
    pub apic_khz: u32,
    /// `pm_timer_address` (0: none).
    pub pm_timer_port: u16,
    /// The clock source these give.
    pub timer: TimerSource,
}

/// Why the comm region is not usable (the generic header, or the x86
/// part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommError {
    /// Shorter than the architecture's header ([`HEADER_LEN`],
    /// [`ARM_HEADER_LEN`]).
    Short(usize),
    /// Not `"JHCOMM"`.
    Signature([u8; 6]),
    /// Another ABI revision (Jailhouse's inmates stop with FAILED_COMM_REV).
    Revision(u16),
    /// Neither timer rates nor a PM timer: the guest has no clock (x86).
    NoTimer,
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::Short(n) => write!(f, "comm region header is only {n} bytes"),
            CommError::Signature(s) => write!(f, "signature {s:02x?}, expected \"JHCOMM\""),
            CommError::Revision(r) => write!(f, "ABI revision {r}, expected {ABI_REVISION}"),
            CommError::NoTimer => {
                write!(f, "no tsc_khz/apic_khz and no pm_timer_address: no clock")
            }
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

/// The generic header's check: at least `len` bytes, the signature, the
/// ABI revision.
fn check_header(header: &[u8], len: usize) -> Result<(), CommError> {
    if header.len() < len {
        return Err(CommError::Short(header.len()));
    }
    let mut signature = [0u8; 6];
    signature.copy_from_slice(&header[..6]);
    if signature != SIGNATURE {
        return Err(CommError::Signature(signature));
    }
    let revision = u16_at(header, OFF_REVISION);
    if revision != ABI_REVISION {
        return Err(CommError::Revision(revision));
    }
    Ok(())
}

/// Checks the x86 header copied out of the comm region and reads what the
/// guest needs from it.
pub fn parse(header: &[u8]) -> Result<CommInfo, CommError> {
    check_header(header, HEADER_LEN)?;
    let tsc_khz = u32_at(header, OFF_TSC_KHZ);
    let apic_khz = u32_at(header, OFF_APIC_KHZ);
    let pm_timer_port = u16_at(header, OFF_PM_TIMER_ADDRESS);
    let timer = if tsc_khz != 0 && apic_khz != 0 {
        TimerSource::Rates { tsc_khz, apic_khz }
    } else if pm_timer_port != 0 {
        TimerSource::PmTimer(pm_timer_port)
    } else {
        return Err(CommError::NoTimer);
    };
    Ok(CommInfo {
        num_cpus: u16_at(header, OFF_NUM_CPUS),
        tsc_khz,
        apic_khz,
        pm_timer_port,
        timer,
    })
}

/// `struct jailhouse_console` as the cell config gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Console {
    /// Register base (MMIO address or I/O port).
    pub address: u64,
    /// Size of the register window.
    pub size: u32,
    /// `JAILHOUSE_CON_TYPE_*`.
    pub kind: u16,
    /// `JAILHOUSE_CON_*` flags (access, register distance).
    pub flags: u16,
    /// Baud divider; 0: the UART is shared and already set up, do not
    /// reprogram it.
    pub divider: u32,
}

/// Which console an ARM cell writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleChoice {
    /// The PL011 at `base` (`divider` 0: leave its setup alone).
    Pl011 {
        /// Register base.
        base: u64,
        /// IBRD value, 0 for "do not reprogram".
        divider: u32,
    },
    /// The hypervisor's debug console (`hvc #0x4a48`, `DEBUG_CONSOLE_PUTC`).
    Hypercall,
    /// Nothing to write to.
    None,
}

/// The GIC an ARM cell runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gic {
    /// GICv2: distributor and (the cell's view of) the CPU interface.
    V2 {
        /// GICD.
        gicd: u64,
        /// GICC (a stage-2 mapping of the GICV frame under Jailhouse).
        gicc: u64,
    },
    /// GICv3: distributor and the first redistributor frame.
    V3 {
        /// GICD.
        gicd: u64,
        /// First GICR frame (the cell walks them by GICR_TYPER affinity).
        gicr: u64,
    },
}

/// What the comm region says about an ARM (arm64) cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmCommInfo {
    /// Comm `flags` (`FLAG_DBG_PUTC_*`).
    pub flags: u32,
    /// The console from the cell config.
    pub console: Console,
    /// ECAM of the virtual PCI host (bus 0 only), `None` if the cell has no
    /// PCI.
    pub pci_mmconfig_base: Option<u64>,
    /// The GIC.
    pub gic: Gic,
    /// INTx pin n of this cell's virtual PCI devices is SPI
    /// `vpci_irq_base + n - 1` (see [`intx_intid`]).
    pub vpci_irq_base: u32,
}

impl ArmCommInfo {
    /// The console to use: the PL011 the config names (type 3, a
    /// 4-aligned nonzero address); else the debug-console hypercall if the
    /// cell may use it; else none.
    pub fn console_choice(&self) -> ConsoleChoice {
        let c = self.console;
        if c.kind == CON_TYPE_PL011 && c.address != 0 && c.address.is_multiple_of(4) {
            ConsoleChoice::Pl011 {
                base: c.address,
                divider: c.divider,
            }
        } else if self.flags & FLAG_DBG_PUTC_PERMITTED != 0 {
            ConsoleChoice::Hypercall
        } else {
            ConsoleChoice::None
        }
    }
}

/// Why the ARM comm region is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmCommError {
    /// The generic header (length, signature, revision).
    Header(CommError),
    /// `gic_version` is neither 2 nor 3.
    GicVersion(u8),
    /// A GIC base the version needs is 0 or not page-aligned.
    BadGicBase {
        /// Which one (`gicd_base`, `gicc_base`, `gicr_base`).
        which: &'static str,
        /// Its value.
        address: u64,
    },
    /// `pci_mmconfig_base` is not 1 MiB-aligned (ECAM is bus-granular).
    BadEcam(u64),
}

impl ArmCommError {
    /// The `cell_state` the cell stops with: FAILED_COMM_REV for a header
    /// of another ABI (as Jailhouse's inmate library), FAILED otherwise.
    pub fn cell_state(&self) -> u32 {
        match self {
            ArmCommError::Header(_) => cell_state::FAILED_COMM_REV,
            _ => cell_state::FAILED,
        }
    }
}

impl fmt::Display for ArmCommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArmCommError::Header(e) => write!(f, "{e}"),
            ArmCommError::GicVersion(v) => write!(f, "gic_version {v}, expected 2 or 3"),
            ArmCommError::BadGicBase { which, address } => {
                write!(f, "{which} {address:#x} is not a page-aligned address")
            }
            ArmCommError::BadEcam(a) => {
                write!(f, "pci_mmconfig_base {a:#x} is not 1 MiB-aligned")
            }
        }
    }
}

fn gic_base(header: &[u8], off: usize, which: &'static str) -> Result<u64, ArmCommError> {
    let address = u64_at(header, off);
    if address == 0 || !address.is_multiple_of(0x1000) {
        return Err(ArmCommError::BadGicBase { which, address });
    }
    Ok(address)
}

/// Checks the ARM header copied out of the comm region and reads what the
/// guest needs from it. Refusals in order: the generic header, the GIC
/// version, its bases (GICD, then GICC or GICR), the ECAM base.
pub fn parse_arm(header: &[u8]) -> Result<ArmCommInfo, ArmCommError> {
    check_header(header, ARM_HEADER_LEN).map_err(ArmCommError::Header)?;
    let gic = match header[OFF_GIC_VERSION] {
        2 => Gic::V2 {
            gicd: gic_base(header, OFF_GICD_BASE, "gicd_base")?,
            gicc: gic_base(header, OFF_GICC_BASE, "gicc_base")?,
        },
        3 => Gic::V3 {
            gicd: gic_base(header, OFF_GICD_BASE, "gicd_base")?,
            gicr: gic_base(header, OFF_GICR_BASE, "gicr_base")?,
        },
        v => return Err(ArmCommError::GicVersion(v)),
    };
    let ecam = u64_at(header, OFF_PCI_MMCONFIG_BASE);
    if !ecam.is_multiple_of(0x10_0000) {
        return Err(ArmCommError::BadEcam(ecam));
    }
    Ok(ArmCommInfo {
        flags: u32_at(header, OFF_FLAGS),
        console: Console {
            address: u64_at(header, OFF_CONSOLE_ADDRESS),
            size: u32_at(header, OFF_CONSOLE_SIZE),
            kind: u16_at(header, OFF_CONSOLE_TYPE),
            flags: u16_at(header, OFF_CONSOLE_FLAGS),
            divider: u32_at(header, OFF_CONSOLE_DIVIDER),
        },
        pci_mmconfig_base: (ecam != 0).then_some(ecam),
        gic,
        vpci_irq_base: u32_at(header, OFF_VPCI_IRQ_BASE),
    })
}

/// The interrupt (GIC INTID) of INTx pin `pin` (1 = INTA .. 4 = INTD, the
/// device's Interrupt Pin register) of a virtual PCI device in a cell with
/// `vpci_irq_base`: `32 + vpci_irq_base + pin - 1`, as Jailhouse's
/// `arch_ivshmem_update_intx` raises it (no swizzling by slot). `None` for
/// pin 0 (no INTx) or > 4, and when the result is not an SPI.
pub fn intx_intid(vpci_irq_base: u32, pin: u8) -> Option<u32> {
    if !(1..=4).contains(&pin) {
        return None;
    }
    let intid = FIRST_SPI
        .checked_add(vpci_irq_base)?
        .checked_add(u32::from(pin) - 1)?;
    (intid < SPI_END).then_some(intid)
}

/// What to do about `msg_to_cell`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No message pending.
    Nothing,
    /// SHUTDOWN_REQUEST: take the link down, reply REQUEST_APPROVED, halt.
    ShutDown,
    /// Reply this and go on (RECEIVED for RECONFIG_COMPLETED, UNKNOWN for
    /// anything else).
    Reply(u32),
}

/// The answer to a message (the cell config is not passive, so the
/// hypervisor waits for it).
pub fn action_for(msg: u32) -> Action {
    match msg {
        MSG_NONE => Action::Nothing,
        MSG_SHUTDOWN_REQUEST => Action::ShutDown,
        MSG_RECONFIG_COMPLETED => Action::Reply(REPLY_RECEIVED),
        _ => Action::Reply(REPLY_UNKNOWN),
    }
}

/// The `u32` fields of the comm page a cell accesses while it runs (the
/// header is copied out once, before). Naming them as a type keeps every
/// [`CommPage`] access inside the page and 4-aligned whatever the caller
/// passes, so the platforms' volatile accesses stay behind safe functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `cell_state` (written by the cell).
    CellState,
    /// `msg_to_cell` (written by the hypervisor, cleared by the cell).
    MsgToCell,
    /// `reply_from_cell` (written by the cell).
    ReplyFromCell,
}

impl Field {
    /// The field's offset in the page (4-aligned, inside the header).
    pub const fn offset(self) -> usize {
        match self {
            Field::CellState => OFF_CELL_STATE,
            Field::MsgToCell => OFF_MSG_TO_CELL,
            Field::ReplyFromCell => OFF_REPLY_FROM_CELL,
        }
    }
}

/// The comm page as a platform reaches it: volatile accesses of naturally
/// aligned `u32` fields at the page's address (the `unsafe` stays in the
/// platform's implementation; the protocol below is the same on x86 and
/// arm64).
pub trait CommPage {
    /// Reads `field`.
    fn read_u32(&self, field: Field) -> u32;
    /// Writes `field` (all of them are fields a cell may write).
    fn write_u32(&self, field: Field, value: u32);
}

/// `jailhouse_send_reply_from_cell`: clear the message, full fence, then
/// the reply (the hypervisor cleared the reply before writing the message,
/// and spins on it).
pub fn reply(page: &impl CommPage, reply: u32) {
    page.write_u32(Field::MsgToCell, 0);
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    page.write_u32(Field::ReplyFromCell, reply);
}

/// Answers the hypervisor's pending message, if any. The cell configs are
/// not `JAILHOUSE_CELL_PASSIVE_COMMREG`, so `jailhouse cell shutdown`,
/// `load`, `start` and `destroy` ask the cell first (SHUTDOWN_REQUEST): the
/// guest calls `take_link_down` (its ivshmem-net state to RESET, the peer
/// rung — the root cell's bridge sees the carrier drop before the
/// hypervisor resets the device), then approves. RECONFIG_COMPLETED
/// (another cell was created or destroyed) is acknowledged with RECEIVED;
/// anything else gets UNKNOWN. `log` prints a line.
///
/// Returns `true` when the shutdown was approved: the caller then halts
/// until the hypervisor parks the CPU.
pub fn serve_message(
    page: &impl CommPage,
    take_link_down: impl FnOnce(),
    mut log: impl FnMut(fmt::Arguments<'_>),
) -> bool {
    let msg = page.read_u32(Field::MsgToCell);
    match action_for(msg) {
        Action::Nothing => false,
        Action::ShutDown => {
            log(format_args!(
                "comm: shutdown requested; taking the link down"
            ));
            take_link_down();
            reply(page, REPLY_REQUEST_APPROVED);
            log(format_args!(
                "comm: shutdown approved; halting until the hypervisor parks this CPU"
            ));
            true
        }
        Action::Reply(r) => {
            if r == REPLY_UNKNOWN {
                log(format_args!("comm: unknown message {msg}"));
            }
            reply(page, r);
            false
        }
    }
}

/// The terminal `cell_state` for a guest exit: SHUT_DOWN for success,
/// FAILED otherwise.
pub fn cell_state_for_exit(code: crate::exit_code::ExitCode) -> u32 {
    if code == crate::exit_code::ExitCode::Success {
        cell_state::SHUT_DOWN
    } else {
        cell_state::FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header(revision: u16, tsc: u32, apic: u32, pm: u16) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..6].copy_from_slice(&SIGNATURE);
        h[OFF_REVISION..OFF_REVISION + 2].copy_from_slice(&revision.to_le_bytes());
        h[OFF_NUM_CPUS..OFF_NUM_CPUS + 2].copy_from_slice(&1u16.to_le_bytes());
        h[OFF_TSC_KHZ..OFF_TSC_KHZ + 4].copy_from_slice(&tsc.to_le_bytes());
        h[OFF_APIC_KHZ..OFF_APIC_KHZ + 4].copy_from_slice(&apic.to_le_bytes());
        h[OFF_PM_TIMER_ADDRESS..OFF_PM_TIMER_ADDRESS + 2].copy_from_slice(&pm.to_le_bytes());
        h
    }

    #[test]
    fn header_checks_and_timer_source() {
        let ok = parse(&header(2, 2_000_000, 1_000_000, 0x408)).unwrap();
        assert_eq!(
            ok.timer,
            TimerSource::Rates {
                tsc_khz: 2_000_000,
                apic_khz: 1_000_000
            }
        );
        assert_eq!(
            parse(&header(2, 0, 1_000_000, 0x408)).unwrap().timer,
            TimerSource::PmTimer(0x408)
        );
        assert_eq!(parse(&header(2, 0, 0, 0)), Err(CommError::NoTimer));
        assert_eq!(parse(&header(1, 1, 1, 1)), Err(CommError::Revision(1)));
        let mut bad = header(2, 1, 1, 1);
        bad[0] = b'X';
        assert!(matches!(parse(&bad), Err(CommError::Signature(_))));
        assert_eq!(parse(&bad[..10]), Err(CommError::Short(10)));
    }

    /// The page `jailhouse cell start` writes for the qemu-arm64 root
    /// platform and the ivnet cell (reference §3, §9): PL011 at 0x09000000
    /// (MMIO | REGDIST_4, divider 0), ECAM 0x08e00000, GICv3 0x08000000 /
    /// 0x080a0000, vpci_irq_base 108.
    pub(crate) fn qemu_arm64_page() -> [u8; ARM_HEADER_LEN] {
        let mut h = [0u8; ARM_HEADER_LEN];
        h[..6].copy_from_slice(&SIGNATURE);
        h[OFF_REVISION] = 2;
        h[OFF_CONSOLE_ADDRESS..][..8].copy_from_slice(&0x0900_0000u64.to_le_bytes());
        h[OFF_CONSOLE_SIZE..][..4].copy_from_slice(&0x1000u32.to_le_bytes());
        h[OFF_CONSOLE_TYPE] = 3;
        h[OFF_CONSOLE_FLAGS] = 3;
        h[OFF_PCI_MMCONFIG_BASE..][..8].copy_from_slice(&0x08e0_0000u64.to_le_bytes());
        h[OFF_GIC_VERSION] = 3;
        h[OFF_GICD_BASE..][..8].copy_from_slice(&0x0800_0000u64.to_le_bytes());
        h[OFF_GICR_BASE..][..8].copy_from_slice(&0x080a_0000u64.to_le_bytes());
        h[OFF_VPCI_IRQ_BASE] = 108;
        h
    }

    #[test]
    fn arm_part_of_the_qemu_arm64_cell() {
        let info = parse_arm(&qemu_arm64_page()).unwrap();
        assert_eq!(
            info.gic,
            Gic::V3 {
                gicd: 0x0800_0000,
                gicr: 0x080a_0000
            }
        );
        assert_eq!(info.pci_mmconfig_base, Some(0x08e0_0000));
        assert_eq!(info.vpci_irq_base, 108);
        assert_eq!(
            info.console_choice(),
            ConsoleChoice::Pl011 {
                base: 0x0900_0000,
                divider: 0
            }
        );
        // 00:01.0 has pin B: INTID 141, as the cell config's pin_bitmap says.
        assert_eq!(intx_intid(info.vpci_irq_base, 2), Some(141));
    }

    #[test]
    fn arm_refusals_and_choices() {
        let page = qemu_arm64_page();
        assert_eq!(
            parse_arm(&page[..0x4c]),
            Err(ArmCommError::Header(CommError::Short(0x4c)))
        );
        let mut p = page;
        p[OFF_REVISION] = 1;
        let e = parse_arm(&p).unwrap_err();
        assert_eq!(e, ArmCommError::Header(CommError::Revision(1)));
        assert_eq!(e.cell_state(), cell_state::FAILED_COMM_REV);
        let mut p = page;
        p[OFF_GIC_VERSION] = 4;
        let e = parse_arm(&p).unwrap_err();
        assert_eq!(e, ArmCommError::GicVersion(4));
        assert_eq!(e.cell_state(), cell_state::FAILED);
        // GICv2 needs gicc_base, which qemu-arm64 leaves 0.
        let mut p = page;
        p[OFF_GIC_VERSION] = 2;
        assert_eq!(
            parse_arm(&p),
            Err(ArmCommError::BadGicBase {
                which: "gicc_base",
                address: 0
            })
        );
        p[OFF_GICC_BASE + 2] = 1;
        assert_eq!(
            parse_arm(&p).unwrap().gic,
            Gic::V2 {
                gicd: 0x0800_0000,
                gicc: 0x1_0000
            }
        );
        let mut p = page;
        p[OFF_PCI_MMCONFIG_BASE] = 0x40;
        assert_eq!(parse_arm(&p), Err(ArmCommError::BadEcam(0x08e0_0040)));
        let mut p = page;
        p[OFF_PCI_MMCONFIG_BASE..][..8].fill(0);
        assert_eq!(parse_arm(&p).unwrap().pci_mmconfig_base, None);
        // No PL011: the hypercall if permitted, else nothing.
        let mut p = page;
        p[OFF_CONSOLE_TYPE] = 2;
        assert_eq!(parse_arm(&p).unwrap().console_choice(), ConsoleChoice::None);
        p[OFF_FLAGS] = 1;
        assert_eq!(
            parse_arm(&p).unwrap().console_choice(),
            ConsoleChoice::Hypercall
        );
    }

    #[test]
    fn intx_pins() {
        assert_eq!(intx_intid(108, 0), None);
        assert_eq!(intx_intid(108, 1), Some(140));
        assert_eq!(intx_intid(108, 4), Some(143));
        assert_eq!(intx_intid(108, 5), None);
        assert_eq!(intx_intid(4, 2), Some(37));
        assert_eq!(intx_intid(984, 4), Some(1019));
        assert_eq!(intx_intid(985, 4), None);
        assert_eq!(intx_intid(u32::MAX, 1), None);
    }

    #[test]
    fn messages() {
        assert_eq!(action_for(0), Action::Nothing);
        assert_eq!(action_for(1), Action::ShutDown);
        assert_eq!(action_for(2), Action::Reply(REPLY_RECEIVED));
        assert_eq!(action_for(7), Action::Reply(REPLY_UNKNOWN));
    }

    /// A comm page in host memory.
    struct FakePage(core::cell::RefCell<[u32; 8]>);

    impl CommPage for FakePage {
        fn read_u32(&self, field: Field) -> u32 {
            self.0.borrow()[field.offset() / 4]
        }
        fn write_u32(&self, field: Field, value: u32) {
            self.0.borrow_mut()[field.offset() / 4] = value;
        }
    }

    #[test]
    fn messages_are_served_as_jailhouse_expects() {
        let page = FakePage(core::cell::RefCell::new([0; 8]));
        let mut lines = 0;
        let mut down = false;
        // Nothing pending: no reply, no link change.
        assert!(!serve_message(&page, || down = true, |_| lines += 1));
        assert!(!down);
        assert_eq!(page.read_u32(Field::ReplyFromCell), 0);
        // RECONFIG_COMPLETED: RECEIVED, message cleared.
        page.write_u32(Field::MsgToCell, MSG_RECONFIG_COMPLETED);
        assert!(!serve_message(&page, || down = true, |_| lines += 1));
        assert_eq!(page.read_u32(Field::MsgToCell), 0);
        assert_eq!(page.read_u32(Field::ReplyFromCell), REPLY_RECEIVED);
        assert!(!down);
        // Unknown: UNKNOWN and one log line.
        page.write_u32(Field::MsgToCell, 99);
        assert!(!serve_message(&page, || down = true, |_| lines += 1));
        assert_eq!(page.read_u32(Field::ReplyFromCell), REPLY_UNKNOWN);
        assert_eq!(lines, 1);
        // SHUTDOWN_REQUEST: link down first, then approved, then halt.
        page.write_u32(Field::MsgToCell, MSG_SHUTDOWN_REQUEST);
        let halt = serve_message(
            &page,
            || {
                assert_eq!(page.read_u32(Field::ReplyFromCell), REPLY_UNKNOWN);
                down = true;
            },
            |_| lines += 1,
        );
        assert!(halt && down);
        assert_eq!(page.read_u32(Field::MsgToCell), 0);
        assert_eq!(page.read_u32(Field::ReplyFromCell), REPLY_REQUEST_APPROVED);
    }

    #[test]
    fn exit_codes_map_to_terminal_cell_states() {
        use crate::exit_code::ExitCode;
        assert_eq!(
            cell_state_for_exit(ExitCode::Success),
            cell_state::SHUT_DOWN
        );
        assert_eq!(cell_state_for_exit(ExitCode::Panic), cell_state::FAILED);
    }
}
