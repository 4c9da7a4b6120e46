//! The architecture-independent half of the guest's page tables, compiled
//! into both guests as `common` under their own module (x86 `paging`,
//! aarch64 `mmu`), which supplies the descriptor encoding and the table
//! walk: the region kinds, the table pool and its usage, the named regions
//! the fault handlers report, the image's sections, and the errors.
//!
//! The parent module provides `Table` (one 4 KiB translation table) and
//! `EMPTY_TABLE`, `POOL_TABLES`, `MAX_REGIONS`, `MMIO_DESCRIPTION`,
//! `BAD_RANGE` (the wording of [`MapError::BadRange`]), `MAPPER` (its
//! mapper, with a `ledger` field, behind a lock) and `map_at`.

use core::fmt;

use super::{BAD_RANGE, EMPTY_TABLE, MAPPER, MAX_REGIONS, MMIO_DESCRIPTION, POOL_TABLES, Table};

/// What a range of memory is, which decides its permissions and caching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Guest code: read-only, executable.
    Code,
    /// Guest constants (and on aarch64 the DTB): read-only.
    ReadOnly,
    /// Guest data, bss, stacks: read-write.
    Data,
    /// Device registers: read-write, uncached (x86 UC, aarch64
    /// Device-nGnRE).
    Mmio,
    /// Shared memory the guest must only read: read-only, write-back.
    SharedReadOnly,
    /// Shared memory the guest owns: read-write, write-back.
    SharedReadWrite,
    /// Deliberately unmapped (guard pages); recorded for fault reports only.
    Guard,
}

impl Kind {
    const fn describe(self) -> &'static str {
        match self {
            Kind::Code => "code, read-only",
            Kind::ReadOnly => "read-only",
            Kind::Data => "read-write",
            Kind::Mmio => MMIO_DESCRIPTION,
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
    /// address width / the virtual address space.
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
                write!(f, "cannot {BAD_RANGE} {len:#x} bytes at {start:#x}")
            }
            MapError::Conflict { addr } => {
                write!(f, "page {addr:#x} is already mapped with other permissions")
            }
        }
    }
}

#[repr(C, align(4096))]
struct Pool([Table; POOL_TABLES]);

/// The tables. Only the [`Ledger`] hands them out, under the `MAPPER` lock.
static mut POOL: Pool = Pool([const { EMPTY_TABLE }; POOL_TABLES]);

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    kind: Kind,
    name: &'static str,
}

/// What the mapper has handed out: pool tables and named regions.
pub struct Ledger {
    used: usize,
    regions: [Option<Region>; MAX_REGIONS],
}

impl Ledger {
    /// Nothing handed out yet.
    pub const fn new() -> Self {
        Self {
            used: 0,
            regions: [None; MAX_REGIONS],
        }
    }

    /// The next unused (zeroed) table of the pool.
    pub fn alloc_table(&mut self) -> Result<*mut Table, MapError> {
        if self.used == POOL_TABLES {
            return Err(MapError::OutOfTables);
        }
        // SAFETY: `used < POOL_TABLES`, so the element exists; each element
        // is handed out once, through the mapper under its lock, and only
        // raw pointers to it are kept.
        let table = unsafe { &raw mut POOL.0[self.used] };
        self.used += 1;
        Ok(table)
    }

    /// Remembers `[start, end)` as `name` for fault reports (while there
    /// is room: a full list only makes reports less precise).
    pub fn record(&mut self, start: u64, end: u64, kind: Kind, name: &'static str) {
        if let Some(slot) = self.regions.iter_mut().find(|r| r.is_none()) {
            *slot = Some(Region {
                start,
                end,
                kind,
                name,
            });
        }
    }

    fn find(&self, addr: u64) -> Option<Region> {
        self.regions
            .iter()
            .flatten()
            .find(|r| (r.start..r.end).contains(&addr))
            .copied()
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
}

/// The image's exception stacks: the linker symbols of the guard below
/// them, their bottom and their top, and their name in fault reports.
pub type ExceptionStacks = (*const u8, *const u8, *const u8, &'static str);

/// Maps the image's sections by their linker symbols through `map`
/// (identity): text, rodata, data, bss, the main stack and the exception
/// stacks with unmapped guard pages below both, and the null page as a
/// guard. Empty sections are skipped.
pub fn map_image(
    exception: ExceptionStacks,
    mut map: impl FnMut(u64, u64, Kind, &'static str) -> Result<(), MapError>,
) -> Result<(), MapError> {
    let (exception_guard, exception_bottom, exception_top, exception_name) = exception;
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
            exception_guard,
            Kind::Data,
            "main stack",
        ),
        (
            exception_guard,
            exception_bottom,
            Kind::Guard,
            "exception stack guard",
        ),
        (exception_bottom, exception_top, Kind::Data, exception_name),
    ];
    for (start, end, kind, name) in sections {
        let (start, end) = (start as u64, end as u64);
        // A section may be empty (e.g. no initialised data).
        if end > start {
            map(start, end - start, kind, name)?;
        }
    }
    map(0, 0x1000, Kind::Guard, "null page")
}

/// Statistics for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct PoolUsage {
    /// Tables in use.
    pub used: usize,
    /// Tables in the pool.
    pub total: usize,
}

/// Identity-maps `len` bytes at physical address `start` as `kind`, and
/// records the range as `name` for fault reports.
pub fn map(start: u64, len: u64, kind: Kind, name: &'static str) -> Result<(), MapError> {
    super::map_at(start, start, len, kind, name)
}

/// Page-table pool usage.
pub fn usage() -> PoolUsage {
    let used = MAPPER.lock().as_ref().map_or(0, |m| m.ledger.used);
    PoolUsage {
        used,
        total: POOL_TABLES,
    }
}

/// What `addr` belongs to, for fault reports. Never blocks: called from the
/// fault handlers, which may have interrupted a mapping in progress.
pub fn describe(addr: u64) -> Describe {
    let found = MAPPER
        .try_lock()
        .and_then(|g| g.as_ref().and_then(|m| m.ledger.find(addr)));
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
