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
//! The region kinds, the table pool, the named regions and the image's
//! sections are the architecture-independent half in `page_tables.rs`,
//! shared with the aarch64 guest; this module is the x86 entry encoding
//! and the walk.
//!
//! Written by hand: the `x86_64` crate provides the table and entry types
//! used here, but its mappers cannot split 2 MiB pages or describe regions.

use core::ptr;

use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{PageTable, PageTableFlags as F, PhysFrame};

// The region kinds, the table pool, the named regions, the image's
// sections, the errors: shared with the aarch64 guest's `mmu`.
#[path = "page_tables.rs"]
mod common;
use common::Ledger;
pub use common::{Kind, MapError, describe, map, usage};

const SIZE_4K: u64 = 0x1000;
const SIZE_2M: u64 = 0x20_0000;
/// Page tables available for all mappings (each maps 2 MiB in 4 KiB pages,
/// or 1 GiB in 2 MiB pages, or is one of the upper levels).
const POOL_TABLES: usize = 16;
/// One table of the shared pool.
type Table = PageTable;
const EMPTY_TABLE: Table = PageTable::new();
/// `Kind::Mmio` in fault reports.
const MMIO_DESCRIPTION: &str = "uncached MMIO";
/// The verb of `MapError::BadRange`'s message.
const BAD_RANGE: &str = "identity-map";
/// Named regions remembered for fault reports.
const MAX_REGIONS: usize = 24;
/// First non-canonical address of the lower half (48-bit virtual addresses).
const CANONICAL_LOWER_HALF_END: u64 = 1 << 47;

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
}

struct Mapper {
    pml4: *mut PageTable,
    ledger: Ledger,
    nx: bool,
    max_phys: u64,
}

// SAFETY: the raw table pointers point into the shared pool, which lives
// forever and is only accessed through the `Mapper` behind `MAPPER`'s lock.
unsafe impl Send for Mapper {}

static MAPPER: Mutex<Option<Mapper>> = Mutex::new(None);

impl Mapper {
    /// The table an upper-level `entry` points to, creating it (or splitting
    /// a 2 MiB page into 512 4 KiB pages with the same attributes) if needed.
    fn next_table(&mut self, entry: *mut PageTableEntry) -> Result<*mut PageTable, MapError> {
        // SAFETY: `entry` points into a table of the pool (see callers), and
        // the lock on MAPPER makes this the only access.
        let e = unsafe { &mut *entry };
        let link = F::PRESENT | F::WRITABLE;
        if e.is_unused() {
            let t = self.ledger.alloc_table()?;
            e.set_addr(PhysAddr::new(t as u64), link);
            return Ok(t);
        }
        if e.flags().contains(F::HUGE_PAGE) {
            let base = e.addr().as_u64();
            let leaf = e.flags() - F::HUGE_PAGE;
            let t = self.ledger.alloc_table()?;
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
        self.ledger.record(start, end, kind, name);
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
    static __ist_guard: u8;
    static __ist_stacks: u8;
    static __ist_stacks_end: u8;
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
        ledger: Ledger::new(),
        nx,
        // Identity mapping needs canonical lower-half addresses too.
        max_phys: 1u64 << phys_addr_bits.min(52),
    };
    m.pml4 = m.ledger.alloc_table()?;
    let exception_stacks = (
        &raw const __ist_guard,
        &raw const __ist_stacks,
        &raw const __ist_stacks_end,
        "exception stacks",
    );
    common::map_image(exception_stacks, |start, len, kind, name| {
        m.map(start, len, kind, name)
    })?;
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
