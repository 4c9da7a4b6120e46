//! Where the guest runs, and the few platform services that differ there:
//! interrupt controllers, timer calibration, caching setup and how the guest
//! stops.
//!
//! | | QEMU (PVH entry) | Jailhouse cell (reset entry at 0) |
//! |---|---|---|
//! | detection | the PVH start info | CPUID 0x4000_0000 = "Jailhouse", or the reset entry; then the comm region at 0x100000 must say "JHCOMM", ABI revision 2 (else `cell_state = FAILED_COMM_REV`) |
//! | legacy PIC | remapped and masked | untouched (ports 0x20/0x21/0xa0/0xa1 are fatal) |
//! | local APIC | x2APIC if CPUID has it (set in IA32_APIC_BASE), else xAPIC MMIO | x2APIC MSRs only; IA32_APIC_BASE is never written (fatal) |
//! | TSC and APIC timer rates | measured against PIT channel 2 (ports 0x42/0x43/0x61) | `tsc_khz`, `apic_khz` of the comm region; the ACPI PM timer at `pm_timer_address` if either is 0 |
//! | MTRRs | all of RAM write-back (variable ranges cleared) | only MTRR_DEF_TYPE.E, set by the entry code (range MSRs are fatal) |
//! | stop | `isa-debug-exit` (port 0xf4) | `cell_state` = SHUT_DOWN (success) or FAILED, then `cli; hlt` |
//!
//! Jailhouse facts: shared/reference/jailhouse-x86-cell.md §3.4 (comm
//! region layout), §3.5 (messages), §3.7 (APIC), §3.9 (what is fatal).

use core::sync::atomic::{AtomicBool, Ordering};

use ivnet_guest::comm_region::{
    self, CommError, CommInfo, CommPage, Field, TimerSource, cell_state,
};
use ivnet_guest::exit_code::ExitCode;

use crate::cpu::{CpuFeatures, HypervisorKind};
use crate::paging::{self, Kind, MapError};
use crate::{apic, println, time};

/// Guest-physical address of the communication region (the cell config's
/// `JAILHOUSE_MEM_COMM_REGION`, right above the cell's 1 MiB of RAM).
pub const COMM_REGION_BASE: u64 = 0x10_0000;
const COMM_REGION_SIZE: u64 = 0x1000;

static JAILHOUSE: AtomicBool = AtomicBool::new(false);
/// What [`detect`] read from the comm region (cells only).
static COMM_INFO: spin::Mutex<Option<CommInfo>> = spin::Mutex::new(None);

/// Whether the guest runs as a Jailhouse cell (set once by [`detect`]).
pub fn is_jailhouse() -> bool {
    JAILHOUSE.load(Ordering::Relaxed)
}

/// The communication region, one page at [`COMM_REGION_BASE`] that the
/// hypervisor (and the root cell's tools) also read and write: only
/// volatile accesses of naturally aligned fields, never references.
#[derive(Clone, Copy)]
struct CommRegion;

impl CommRegion {
    fn read_u8(self, off: usize) -> u8 {
        // SAFETY: `off` < COMM_REGION_SIZE; the page is identity-mapped (by
        // the boot tables, then by `init`) and belongs to the hypervisor's
        // per-cell comm page, which is always readable by the cell.
        unsafe { ((COMM_REGION_BASE as usize + off) as *const u8).read_volatile() }
    }

    /// The header, copied out byte by byte with volatile reads, for
    /// [`comm_region::parse`].
    fn header(self) -> [u8; comm_region::HEADER_LEN] {
        core::array::from_fn(|i| self.read_u8(i))
    }

    fn set_cell_state(self, state: u32) {
        self.write_u32(Field::CellState, state);
    }
}

impl CommPage for CommRegion {
    fn read_u32(&self, field: Field) -> u32 {
        // SAFETY: as in `read_u8`: `Field::offset` is 4-aligned and inside
        // the header, so inside the page.
        unsafe { ((COMM_REGION_BASE as usize + field.offset()) as *const u32).read_volatile() }
    }

    fn write_u32(&self, field: Field, value: u32) {
        // SAFETY: as in `read_u32`; every `Field` is one the cell may write
        // (`cell_state`, `msg_to_cell`, `reply_from_cell`), and the region
        // is mapped writable (JAILHOUSE_MEM_WRITE).
        unsafe { ((COMM_REGION_BASE as usize + field.offset()) as *mut u32).write_volatile(value) }
    }
}

/// Answers the hypervisor's message, if one is pending (called from the
/// main loop; a no-op outside Jailhouse): `comm_region::serve_message`,
/// then a halt once a shutdown is approved.
pub fn poll_messages(take_link_down: impl FnOnce()) {
    if is_jailhouse()
        && comm_region::serve_message(&CommRegion, take_link_down, |a| println!("{a}"))
    {
        halt_forever();
    }
}

/// Decides the platform. `reset_entry`: the guest came in through the
/// Jailhouse reset entry (the flat image), not PVH.
///
/// Jailhouse announces itself with CPUID 0x4000_0000 = "Jailhouse". The
/// test rig (QEMU TCG, which cannot change that leaf) is recognised by the
/// reset entry instead; in both cases the comm region must be valid, and
/// a wrong signature or ABI revision stops the guest with
/// `FAILED_COMM_REV`, as Jailhouse's inmate library does.
pub fn detect(reset_entry: bool) {
    let announced = crate::cpu::detect().hypervisor == HypervisorKind::Jailhouse;
    if !(announced || reset_entry) {
        return;
    }
    let comm = CommRegion;
    let info = match comm_region::parse(&comm.header()) {
        Ok(info) => info,
        Err(e) => {
            println!("FATAL: Jailhouse comm region at {COMM_REGION_BASE:#x}: {e}");
            comm.set_cell_state(match e {
                CommError::Signature(_) | CommError::Revision(_) | CommError::Short(_) => {
                    cell_state::FAILED_COMM_REV
                }
                CommError::NoTimer => cell_state::FAILED,
            });
            halt_forever();
        }
    };
    *COMM_INFO.lock() = Some(info);
    JAILHOUSE.store(true, Ordering::Relaxed);
    println!(
        "platform: jailhouse cell ({}), comm region at {COMM_REGION_BASE:#x}: {} cpu(s), tsc {} kHz, apic {} kHz, pm timer port {:#x}",
        if announced {
            "CPUID says Jailhouse"
        } else {
            "reset entry; CPUID does not say Jailhouse: test rig"
        },
        info.num_cpus,
        info.tsc_khz,
        info.apic_khz,
        info.pm_timer_port,
    );
}

/// Caching: under QEMU all RAM write-back through the MTRRs. In a cell the
/// entry code already set MTRR_DEF_TYPE.E, the only MTRR bit Jailhouse
/// emulates (range MSR writes are fatal).
pub fn setup_caching(features: &CpuFeatures) {
    if features.mtrr && !is_jailhouse() {
        crate::cpu::mtrr_write_back();
    }
}

/// Maps the comm region (after `paging::init`, which maps only the image).
pub fn map_comm_region() -> Result<(), MapError> {
    if is_jailhouse() {
        paging::map(
            COMM_REGION_BASE,
            COMM_REGION_SIZE,
            Kind::SharedReadWrite,
            "Jailhouse comm region",
        )?;
    }
    Ok(())
}

/// Interrupt controllers and timers: returns the APIC mode and the rates.
pub fn init_interrupts_and_time(
    features: &CpuFeatures,
) -> Result<(apic::ApicMode, time::Calibration), MapError> {
    if is_jailhouse() {
        // No PIC in a cell; x2APIC MSRs always work (emulated over xAPIC
        // if the host runs xAPIC), IA32_APIC_BASE must not be written.
        let mode = apic::init_x2apic_as_is();
        let timer = COMM_INFO
            .lock()
            .expect("detect() read the comm region before a cell gets here")
            .timer;
        let cal = match timer {
            TimerSource::Rates { tsc_khz, apic_khz } => time::set_rates(
                u64::from(tsc_khz),
                u64::from(apic_khz) / apic::TIMER_DIVIDER,
            ),
            TimerSource::PmTimer(port) => time::calibrate_pm_timer(port),
        };
        return Ok((mode, cal));
    }
    // The legacy PIC: remapped away from the exception vectors, then fully
    // masked (SeaBIOS leaves the PIT tick on IRQ0 = vector 8 = #DF).
    // SAFETY: 0x20/0x21/0xA0/0xA1 are the two 8259s on PC-compatible
    // machines; 0x20..0x2F are free vectors (they land in the "unexpected"
    // stub if anything ever arrives).
    unsafe {
        let mut pics = pic8259::ChainedPics::new(0x20, 0x28);
        pics.initialize();
        pics.disable();
    }
    let mode = apic::init(features.x2apic)?;
    Ok((mode, time::calibrate()))
}

/// The MSI message (address, data) for doorbell `index` to the local APIC
/// `apic_id`: fixed delivery, edge, vector `VECTOR_DOORBELL + index`.
pub fn msi_message(apic_id: u32, index: u16) -> (u64, u32) {
    let address = 0xfee0_0000 | u64::from(apic_id & 0xff) << 12;
    (
        address,
        u32::from(crate::idt::VECTOR_DOORBELL) + u32::from(index),
    )
}

/// Stops a cell: `cell_state` = SHUT_DOWN for success, FAILED otherwise,
/// then halts for good. (The hypervisor parks the CPU at the next `cell
/// shutdown`/`load`/`destroy`.)
pub fn stop_cell(code: ExitCode) -> ! {
    CommRegion.set_cell_state(comm_region::cell_state_for_exit(code));
    halt_forever()
}

fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
