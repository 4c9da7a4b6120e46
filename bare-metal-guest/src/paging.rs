//! Identity-mapped page tables with per-region permissions and caching.
//!
//! The boot trampoline maps the first 1 GiB read-write-execute with 2 MiB
//! pages. [`init`] replaces that with precise tables built from a small
//! static pool:
//!
//! - the image: text read-only + executable, rodata read-only, data/bss and
//!   the stacks read-write + no-execute, with unmapped guard pages below the
//!   main stack and the exception stacks, and nothing else of low memory
//!   (page 0 stays unmapped, so null-pointer accesses fault);
//!
//! later, as devices are found, [`map`] adds
//!
//! - MMIO (LAPIC, BAR0 registers, the MSI-X table): uncached (PCD|PWT, which
//!   selects UC in the power-on PAT), no-execute;
//! - shared memory: write-back, no-execute, read-only or read-write per
//!   region (the layout page, the state table and the peer's output section
//!   are read-only: the guest must never write them, and a bug that does
//!   faults at once instead of corrupting the peer).
//!
//! 2 MiB pages are used where a whole aligned 2 MiB chunk has one kind,
//! 4 KiB pages elsewhere. Every mapped range is recorded with a name so that
//! the page-fault handler can say what the faulting address belongs to.
//!
//! Written by hand: the `x86_64` crate provides the table and entry types
//! used here, but its mappers cannot split 2 MiB pages or describe regions.

use core::fmt;
use core::ptr;

use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{PageTable, PageTableFlags as F, PhysFrame};

const SIZE_4K: u64 = 0x1000;
const SIZE_2M: u64 = 0x20_0000;
/// Page tables available for all mappings (each maps 2 MiB in 4 KiB pages,
/// or 1 GiB in 2 MiB pages, or is one of the upper levels).
const POOL_TABLES: usize = 16;
/// Named regions remembered for fault reports.
const MAX_REGIONS: usize = 24;
/// First non-canonical address of the lower half (48-bit virtual addresses).
const CANONICAL_LOWER_HALF_END: u64 = 1 << 47;

/// What a range of memory is, which decides its permissions and caching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Guest code: read-only, executable.
    Code,
    /// Guest constants: read-only.
    ReadOnly,
    /// Guest data, bss, stacks: read-write.
    Data,
    /// Device registers: read-write, uncached.
    Mmio,
    /// Shared memory the guest must only read: read-only, write-back.
    SharedReadOnly,
    /// Shared memory the guest owns: read-write, write-back.
    SharedReadWrite,
    /// Deliberately unmapped (guard pages); recorded for fault reports only.
    Guard,
}

impl Kind {
    fn flags(self, nx: bool) -> F {
        let nx = if nx { F::NO_EXECUTE } else { F::empty() };
        match self {
            Kind::Code => F::PRESENT,
            Kind::ReadOnly | Kind::SharedReadOnly => F::PRESENT | nx,
            Kind::Data | Kind::SharedReadWrite => F::PRESENT | F::WRITABLE | nx,
            Kind::Mmio => F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH | nx,
            Kind::Guard => F::empty(),
        }
    }

    const fn describe(self) -> &'static str {
        match self {
            Kind::Code => "code, read-only",
            Kind::ReadOnly => "read-only",
            Kind::Data => "read-write",
            Kind::Mmio => "uncached MMIO",
            Kind::SharedReadOnly => "shared memory, read-only",
            Kind::SharedReadWrite => "shared memory, read-write",
            Kind::Guard => "unmapped guard page",
        }
    }
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The static table pool is exhausted.
    OutOfTables,
    /// The range is empty, wraps around, or lies outside the physical
    /// address width / the canonical lower half.
    BadRange {
        /// Start of the rejected range.
        start: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A page is already mapped with other permissions.
    Conflict {
        /// The page in conflict.
        addr: u64,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::OutOfTables => write!(f, "out of page tables ({POOL_TABLES} in the pool)"),
            MapError::BadRange { start, len } => {
                write!(f, "cannot identity-map {len:#x} bytes at {start:#x}")
            }
            MapError::Conflict { addr } => {
                write!(f, "page {addr:#x} is already mapped with other permissions")
            }
        }
    }
}

#[repr(C, align(4096))]
struct Pool([PageTable; POOL_TABLES]);

/// The page tables. Only [`Mapper`] touches them, under the `MAPPER` lock.
static mut POOL: Pool = Pool([const { PageTable::new() }; POOL_TABLES]);

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    kind: Kind,
    name: &'static str,
}

struct Mapper {
    pml4: *mut PageTable,
    used: usize,
    nx: bool,
    max_phys: u64,
    regions: [Option<Region>; MAX_REGIONS],
}

// SAFETY: the raw table pointers point into `POOL`, which lives forever and
// is only accessed through the `Mapper` behind `MAPPER`'s lock.
unsafe impl Send for Mapper {}

static MAPPER: Mutex<Option<Mapper>> = Mutex::new(None);

impl Mapper {
    fn alloc_table(&mut self) -> Result<*mut PageTable, MapError> {
        if self.used == POOL_TABLES {
            return Err(MapError::OutOfTables);
        }
        // SAFETY: `used < POOL_TABLES`, so the element exists; each element
        // is handed out once, and only raw pointers to it are kept.
        let table = unsafe { (&raw mut POOL.0[self.used]).cast::<PageTable>() };
        self.used += 1;
        Ok(table)
    }

    /// The table an upper-level `entry` points to, creating it (or splitting
    /// a 2 MiB page into 512 4 KiB pages with the same attributes) if needed.
    fn next_table(&mut self, entry: *mut PageTableEntry) -> Result<*mut PageTable, MapError> {
        // SAFETY: `entry` points into a table of the pool (see callers), and
        // the lock on MAPPER makes this the only access.
        let e = unsafe { &mut *entry };
        let link = F::PRESENT | F::WRITABLE;
        if e.is_unused() {
            let t = self.alloc_table()?;
            e.set_addr(PhysAddr::new(t as u64), link);
            return Ok(t);
        }
        if e.flags().contains(F::HUGE_PAGE) {
            let base = e.addr().as_u64();
            let leaf = e.flags() - F::HUGE_PAGE;
            let t = self.alloc_table()?;
            // SAFETY: `t` is a fresh table from the pool, not yet linked.
            let table = unsafe { &mut *t };
            for (i, pte) in table.iter_mut().enumerate() {
                pte.set_addr(PhysAddr::new(base + i as u64 * SIZE_4K), leaf);
            }
            e.set_addr(PhysAddr::new(t as u64), link);
            return Ok(t);
        }
        Ok(e.addr().as_u64() as *mut PageTable)
    }

    fn entry(table: *mut PageTable, index: u64) -> *mut PageTableEntry {
        // SAFETY: `table` is a pool table, `PageTable` is `repr(C)` around
        // `[PageTableEntry; 512]`, and `index < 512` (masked by the callers),
        // so the entry is in bounds; no reference is created.
        unsafe { table.cast::<PageTableEntry>().add(index as usize) }
    }

    fn set_leaf(entry: *mut PageTableEntry, addr: u64, flags: F) -> Result<(), MapError> {
        // SAFETY: `entry` points into a pool table, exclusively ours under
        // the lock.
        let e = unsafe { &mut *entry };
        if !e.is_unused() {
            if e.addr().as_u64() == addr && e.flags() == flags {
                return Ok(());
            }
            return Err(MapError::Conflict { addr });
        }
        e.set_addr(PhysAddr::new(addr), flags);
        Ok(())
    }

    fn map(
        &mut self,
        start: u64,
        len: u64,
        kind: Kind,
        name: &'static str,
    ) -> Result<(), MapError> {
        self.map_to(start, start, len, kind, name)
    }

    /// Maps `len` bytes of physical memory at `phys` to virtual `virt`
    /// (both rounded out to pages; their offsets within a page must agree).
    fn map_to(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        kind: Kind,
        name: &'static str,
    ) -> Result<(), MapError> {
        let bad = MapError::BadRange { start: phys, len };
        let phys_end = phys.checked_add(len).ok_or(bad)?;
        let virt_end = virt.checked_add(len).ok_or(bad)?;
        if len == 0
            || phys_end > self.max_phys
            || virt_end > CANONICAL_LOWER_HALF_END
            || (virt ^ phys) & (SIZE_4K - 1) != 0
        {
            return Err(bad);
        }
        let start = virt & !(SIZE_4K - 1);
        let end = virt_end.checked_add(SIZE_4K - 1).ok_or(bad)? & !(SIZE_4K - 1);
        // Physical = virtual + delta, for every page of the range.
        let delta = (phys & !(SIZE_4K - 1)).wrapping_sub(start);
        let slot = self.regions.iter_mut().find(|r| r.is_none());
        if let Some(slot) = slot {
            *slot = Some(Region {
                start,
                end,
                kind,
                name,
            });
        }
        if kind == Kind::Guard {
            return Ok(());
        }
        let flags = kind.flags(self.nx);
        let mut a = start;
        while a < end {
            let pa = a.wrapping_add(delta);
            let pdpt = self.next_table(Self::entry(self.pml4, (a >> 39) & 511))?;
            let pd = self.next_table(Self::entry(pdpt, (a >> 30) & 511))?;
            let pde = Self::entry(pd, (a >> 21) & 511);
            // SAFETY: `pde` points into a pool table (just looked up).
            let pde_unused = unsafe { (*pde).is_unused() };
            if a.is_multiple_of(SIZE_2M)
                && pa.is_multiple_of(SIZE_2M)
                && end - a >= SIZE_2M
                && pde_unused
            {
                Self::set_leaf(pde, pa, flags | F::HUGE_PAGE)?;
                a += SIZE_2M;
            } else {
                let pt = self.next_table(pde)?;
                Self::set_leaf(Self::entry(pt, (a >> 12) & 511), pa, flags)?;
                a += SIZE_4K;
            }
        }
        Ok(())
    }
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __bss_start: u8;
    static __bss_end: u8;
    static __stack_guard: u8;
    static __stack_bottom: u8;
    static __ist_guard: u8;
    static __ist_stacks: u8;
    static __ist_stacks_end: u8;
}

fn sym(s: *const u8) -> u64 {
    s as u64
}

/// Statistics for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct PoolUsage {
    /// Tables in use.
    pub used: usize,
    /// Tables in the pool.
    pub total: usize,
}

/// Builds the guest's own page tables for the image and switches to them.
/// `nx`: the CPU supports no-execute (EFER.NXE must already be set).
///
/// The sections are mapped by their linker symbols, so the PVH layout
/// (link.ld: text, rodata, data, bss, stacks from 1 MiB) and the Jailhouse
/// layout (link-jailhouse.ld: entry page, command line, bss, stacks, then
/// text, rodata, data) get the same permissions. The Jailhouse entry page
/// and the command-line buffer stay unmapped: both are used only before
/// this runs.
pub fn init(nx: bool, phys_addr_bits: u8) -> Result<(), MapError> {
    let mut guard = MAPPER.lock();
    let mut m = Mapper {
        pml4: ptr::null_mut(),
        used: 0,
        nx,
        // Identity mapping needs canonical lower-half addresses too.
        max_phys: 1u64 << phys_addr_bits.min(52),
        regions: [None; MAX_REGIONS],
    };
    m.pml4 = m.alloc_table()?;
    let sections = [
        (
            &raw const __text_start,
            &raw const __text_end,
            Kind::Code,
            "guest code",
        ),
        (
            &raw const __rodata_start,
            &raw const __rodata_end,
            Kind::ReadOnly,
            "guest rodata",
        ),
        (
            &raw const __data_start,
            &raw const __data_end,
            Kind::Data,
            "guest data",
        ),
        (
            &raw const __bss_start,
            &raw const __bss_end,
            Kind::Data,
            "guest bss",
        ),
        (
            &raw const __stack_guard,
            &raw const __stack_bottom,
            Kind::Guard,
            "main stack guard (stack overflow)",
        ),
        (
            &raw const __stack_bottom,
            &raw const __ist_guard,
            Kind::Data,
            "main stack",
        ),
        (
            &raw const __ist_guard,
            &raw const __ist_stacks,
            Kind::Guard,
            "exception stack guard",
        ),
        (
            &raw const __ist_stacks,
            &raw const __ist_stacks_end,
            Kind::Data,
            "exception stacks",
        ),
    ];
    for (start, end, kind, name) in sections {
        let (start, end) = (sym(start), sym(end));
        // A section may be empty (e.g. no initialised data).
        if end > start {
            m.map(start, end - start, kind, name)?;
        }
    }
    m.map(0, SIZE_4K, Kind::Guard, "null page")?;
    let frame = PhysFrame::from_start_address(PhysAddr::new(m.pml4 as u64)).map_err(|_| {
        MapError::BadRange {
            start: m.pml4 as u64,
            len: SIZE_4K,
        }
    })?;
    // SAFETY: the new tables map everything the guest touches from now on
    // with at least the access it needs: the code that runs (text), the
    // stacks, data and bss (including the tables themselves), and rodata.
    // Nothing else is referenced after this point except through `map`.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    *guard = Some(m);
    Ok(())
}

/// Identity-maps `len` bytes at physical address `start` as `kind`, and
/// records the range as `name` for fault reports.
pub fn map(start: u64, len: u64, kind: Kind, name: &'static str) -> Result<(), MapError> {
    map_at(start, start, len, kind, name)
}

/// Maps `len` bytes of physical memory at `phys` to the virtual address
/// `virt` (an alias: used for the one page the guest must write through a
/// second, writable view while its identity mapping stays read-only).
pub fn map_at(
    virt: u64,
    phys: u64,
    len: u64,
    kind: Kind,
    name: &'static str,
) -> Result<(), MapError> {
    let mut guard = MAPPER.lock();
    let m = guard.as_mut().expect("paging::init runs first");
    let r = m.map_to(virt, phys, len, kind, name);
    // Entries may have changed (2 MiB pages split): drop stale translations.
    x86_64::instructions::tlb::flush_all();
    r
}

/// Page-table pool usage.
pub fn usage() -> PoolUsage {
    let used = MAPPER.lock().as_ref().map_or(0, |m| m.used);
    PoolUsage {
        used,
        total: POOL_TABLES,
    }
}

/// What `addr` belongs to, for fault reports. Never blocks: called from the
/// page-fault handler, which may have interrupted a mapping in progress.
pub fn describe(addr: u64) -> Describe {
    let found = MAPPER.try_lock().and_then(|g| {
        g.as_ref().and_then(|m| {
            m.regions
                .iter()
                .flatten()
                .find(|r| (r.start..r.end).contains(&addr))
                .copied()
        })
    });
    Describe(found)
}

/// The region an address belongs to (see [`describe`]).
pub struct Describe(Option<Region>);

impl fmt::Display for Describe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(
                f,
                "{} [{:#x}..{:#x}) ({})",
                r.name,
                r.start,
                r.end,
                r.kind.describe()
            ),
            None => write!(f, "no mapped region"),
        }
    }
}
