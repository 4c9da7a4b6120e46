//! The guest's own stage-1 translation tables (EL1, TTBR0, 4 KiB granule,
//! 48-bit VA, identity mapping plus the one state-table alias) with
//! per-region permissions, the same `Kind`s and interface as the x86
//! `paging` module (both compile the architecture-independent half,
//! `../../src/page_tables.rs`; here the descriptor encoding and the walk):
//!
//! | kind | memory type (MAIR index) | access |
//! |---|---|---|
//! | Code | Normal write-back | read-only, executable |
//! | ReadOnly | Normal write-back | read-only, execute-never |
//! | Data | Normal write-back | read-write, execute-never |
//! | Mmio | Device-nGnRE | read-write, execute-never |
//! | SharedReadOnly | Normal write-back, inner shareable | read-only, execute-never |
//! | SharedReadWrite | Normal write-back, inner shareable | read-write, execute-never |
//! | Guard | — (invalid descriptor) | recorded for fault reports |
//!
//! Nothing is accessible from EL0 (AP[1] = 0) and everything writable is
//! execute-never (PXN and UXN). Aligned 2 MiB stretches become level-2
//! block descriptors (ECAM, large shared memory); everything else level-3
//! pages. Remapping a page with the same descriptor is a no-op, with
//! another one a `Conflict` (blocks are never split).

use core::ptr;

use spin::Mutex;

// The region kinds, the table pool, the named regions, the image's
// sections, the errors: shared with the x86 guest's `paging`.
#[path = "../../src/page_tables.rs"]
mod common;
use common::Ledger;
pub use common::{Kind, MapError, describe, map, usage};

const SIZE_4K: u64 = 0x1000;
const SIZE_2M: u64 = 0x20_0000;
/// Tables in the static pool (4 KiB each).
const POOL_TABLES: usize = 48;
/// One translation table: 512 descriptors.
#[repr(C, align(4096))]
struct Table([u64; 512]);
const EMPTY_TABLE: Table = Table([0; 512]);
/// `Kind::Mmio` in fault reports.
const MMIO_DESCRIPTION: &str = "Device-nGnRE MMIO";
/// The verb of `MapError::BadRange`'s message.
const BAD_RANGE: &str = "map";
/// Named regions remembered for fault reports.
const MAX_REGIONS: usize = 32;
/// 48-bit virtual addresses (TCR_EL1.T0SZ = 16).
const VA_END: u64 = 1 << 48;

const DESC_VALID: u64 = 1 << 0;
/// Table descriptor at levels 0-2, page descriptor at level 3.
const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_INDEX_NORMAL: u64 = 0 << 2;
const ATTR_INDEX_DEVICE: u64 = 1 << 2;
/// AP[2]: read-only.
const AP_READ_ONLY: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const OUTPUT_ADDRESS: u64 = 0x0000_ffff_ffff_f000;
/// MAIR_EL1: index 0 Normal inner/outer write-back read/write-allocate,
/// index 1 Device-nGnRE.
const MAIR: u64 = 0xff | 0x04 << 8;

impl Kind {
    /// Descriptor attribute bits (without the address and type bits).
    fn attributes(self) -> u64 {
        let normal = ATTR_INDEX_NORMAL | SH_INNER | ACCESS_FLAG;
        match self {
            Kind::Code => normal | AP_READ_ONLY | UXN,
            Kind::ReadOnly | Kind::SharedReadOnly => normal | AP_READ_ONLY | PXN | UXN,
            Kind::Data | Kind::SharedReadWrite => normal | PXN | UXN,
            Kind::Mmio => ATTR_INDEX_DEVICE | ACCESS_FLAG | PXN | UXN,
            Kind::Guard => 0,
        }
    }
}

struct Mapper {
    root: *mut Table,
    ledger: Ledger,
    max_phys: u64,
}

// SAFETY: the raw pointers point into the static pool; the mapper lives
// behind a lock.
unsafe impl Send for Mapper {}

static MAPPER: Mutex<Option<Mapper>> = Mutex::new(None);

impl Mapper {
    /// The next-level table behind `entry`, created if empty. `None` if
    /// the entry is a block.
    fn next_table(&mut self, entry: *mut u64) -> Result<Option<*mut Table>, MapError> {
        // SAFETY: `entry` points into a pool table (see `map_to`).
        let e = unsafe { entry.read_volatile() };
        if e & DESC_VALID == 0 {
            let t = self.ledger.alloc_table()?;
            // SAFETY: as above; the new table is zeroed (bss, used once).
            unsafe { entry.write_volatile(t as u64 | DESC_TABLE_OR_PAGE | DESC_VALID) };
            return Ok(Some(t));
        }
        if e & DESC_TABLE_OR_PAGE == 0 {
            return Ok(None);
        }
        Ok(Some((e & OUTPUT_ADDRESS) as *mut Table))
    }

    fn map_to(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        kind: Kind,
        name: &'static str,
    ) -> Result<(), MapError> {
        let bad = MapError::BadRange { start: phys, len };
        let vstart = virt & !(SIZE_4K - 1);
        let pstart = phys & !(SIZE_4K - 1);
        let pend = phys
            .checked_add(len)
            .and_then(|e| e.checked_next_multiple_of(SIZE_4K))
            .ok_or(bad)?;
        let size = pend - pstart;
        if len == 0 || pend > self.max_phys || vstart.checked_add(size).is_none_or(|e| e > VA_END) {
            return Err(bad);
        }
        self.ledger.record(vstart, vstart + size, kind, name);
        if kind == Kind::Guard {
            return Ok(());
        }
        let attrs = kind.attributes();
        let mut off = 0;
        while off < size {
            let (v, p) = (vstart + off, pstart + off);
            let index = |level: u32| ((v >> (39 - 9 * level)) & 511) as usize;
            let mut table = self.root;
            for level in 0..2 {
                // SAFETY: `table` is a pool table; the index is < 512.
                let entry = unsafe { &raw mut (*table).0[index(level)] };
                table = self
                    .next_table(entry)?
                    .ok_or(MapError::Conflict { addr: v })?;
            }
            // SAFETY: as above, the level-2 entry.
            let l2 = unsafe { &raw mut (*table).0[index(2)] };
            let block = v % SIZE_2M == 0 && p % SIZE_2M == 0 && size - off >= SIZE_2M;
            // SAFETY: `l2` points into a pool table.
            let existing = unsafe { l2.read_volatile() };
            if block && existing & DESC_VALID == 0 {
                // SAFETY: as above.
                unsafe { l2.write_volatile(p | attrs | DESC_VALID) };
                off += SIZE_2M;
                continue;
            }
            if existing & DESC_VALID != 0 && existing & DESC_TABLE_OR_PAGE == 0 {
                // Inside an existing block: fine only with the same attributes.
                let want = (p & !(SIZE_2M - 1)) | attrs | DESC_VALID;
                if existing != want {
                    return Err(MapError::Conflict { addr: v });
                }
                off += SIZE_4K;
                continue;
            }
            let l3 = self.next_table(l2)?.ok_or(MapError::Conflict { addr: v })?;
            // SAFETY: `l3` is a pool table; the index is < 512.
            let entry = unsafe { &raw mut (*l3).0[index(3)] };
            let want = p | attrs | DESC_TABLE_OR_PAGE | DESC_VALID;
            // SAFETY: as above.
            let e = unsafe { entry.read_volatile() };
            if e & DESC_VALID != 0 && e != want {
                return Err(MapError::Conflict { addr: v });
            }
            // SAFETY: as above.
            unsafe { entry.write_volatile(want) };
            off += SIZE_4K;
        }
        Ok(())
    }
}

unsafe extern "C" {
    static __head_start: u8;
    static __head_end: u8;
    static __cmdline_start: u8;
    static __cmdline_end: u8;
    static __exception_stack_guard: u8;
    static __exception_stack_bottom: u8;
    static __exception_stack_top: u8;
}

/// Physical address bits of the CPU (ID_AA64MMFR0_EL1.PARange) and the
/// matching TCR_EL1.IPS encoding.
fn physical_address_size() -> (u8, u64) {
    let mmfr0: u64;
    // SAFETY: reads an ID register.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64mmfr0_el1", out(reg) mmfr0, options(nomem, nostack))
    };
    // 52-bit output addresses need the LPA descriptor format: cap at 48.
    let ips = (mmfr0 & 0xf).min(5);
    ([32u8, 36, 40, 42, 44, 48][ips as usize], ips)
}

/// Builds the tables for the image and turns the MMU and the caches on.
/// Runs first, with the MMU off (all data accesses Device-nGnRnE: the
/// target's strict alignment keeps them aligned).
pub fn init() -> Result<u8, MapError> {
    let (pa_bits, ips) = physical_address_size();
    let mut guard = MAPPER.lock();
    let mut m = Mapper {
        root: ptr::null_mut(),
        ledger: Ledger::new(),
        max_phys: 1u64 << pa_bits,
    };
    m.root = m.ledger.alloc_table()?;
    let exception_stack = (
        &raw const __exception_stack_guard,
        &raw const __exception_stack_bottom,
        &raw const __exception_stack_top,
        "exception stack",
    );
    common::map_image(exception_stack, |start, len, kind, name| {
        m.map_to(start, start, len, kind, name)
    })?;
    // The two pages in front of the shared sections (link.ld): the entry
    // code, and the command line `jailhouse cell load` wrote.
    for (start, end, kind, name) in [
        (
            &raw const __head_start,
            &raw const __head_end,
            Kind::Code,
            "entry code (Image header)",
        ),
        (
            &raw const __cmdline_start,
            &raw const __cmdline_end,
            Kind::ReadOnly,
            "command line (.cmdline)",
        ),
    ] {
        let (start, end) = (start as u64, end as u64);
        m.map_to(start, start, end - start, kind, name)?;
    }
    let tcr: u64 = 16 // T0SZ: 48-bit VA
        | 1 << 8 // IRGN0: write-back, write-allocate
        | 1 << 10 // ORGN0: write-back, write-allocate
        | 3 << 12 // SH0: inner shareable
        // TG0 = 0: 4 KiB granule
        | 1 << 23 // EPD1: no TTBR1 walks
        | ips << 32;
    let root = m.root as u64;
    // SAFETY: the tables map everything the guest touches from here on with
    // the access it needs (code, rodata, data, bss with the tables, the
    // stacks); the code runs identity-mapped, so the next instruction's
    // address is the same with the MMU on.
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {root}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, #(1 << 0)", // M
            "orr {tmp}, {tmp}, #(1 << 2)", // C
            "orr {tmp}, {tmp}, #(1 << 12)", // I
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) tcr,
            root = in(reg) root,
            tmp = out(reg) _,
            options(nostack),
        );
    }
    *guard = Some(m);
    Ok(pa_bits)
}

/// Maps `len` bytes of physical memory at `phys` to the virtual address
/// `virt` (the state-table alias).
pub fn map_at(
    virt: u64,
    phys: u64,
    len: u64,
    kind: Kind,
    name: &'static str,
) -> Result<(), MapError> {
    let mut guard = MAPPER.lock();
    let m = guard.as_mut().expect("mmu::init runs first");
    let r = m.map_to(virt, phys, len, kind, name);
    // New descriptors visible to the walker, stale translations gone.
    // SAFETY: barriers and a local TLB invalidation only.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack)
        );
    }
    r
}
