//! Device-register accessors: each access is exactly one `ldr`/`str` of a
//! `w` (32-bit) or `x` (64-bit) register, addressed by a plain base
//! register — no pair (`ldp`/`stp`), no pre/post-index writeback, no
//! SIMD/FP register.
//!
//! Why not `read_volatile`/`write_volatile`: they guarantee one access of
//! the right width but leave the instruction to LLVM, which may pick a
//! writeback form (e.g. a post-indexed load when walking registers in a
//! loop). Under Jailhouse the GIC distributor and redistributors, the
//! virtual PCI host's ECAM and the ivshmem BAR0 are trapped and emulated
//! from the data abort's syndrome; those forms (and pairs, and FP
//! registers) report ISV = 0, and the hypervisor can only declare the
//! access fatal and park the cell ("Unhandled data read/write",
//! shared/reference/jailhouse-arm64-cell.md §5, §6.3). Pinning the
//! instruction in `asm!` makes every trapped access decodable, also on
//! pages that are not trapped today (the PL011), so there is one rule.
//!
//! The `asm!` blocks are not `nomem`: the compiler treats each as a memory
//! access it cannot move other memory accesses across (program order for
//! the compiler); the hardware keeps Device-memory accesses to one device
//! in program order, and the callers add barriers where ordering against
//! Normal memory matters (doorbells).

/// Reads the 32-bit register at `addr`.
///
/// # Safety
///
/// `addr` must be a 4-aligned register address mapped as Device memory
/// (or memory standing in for it), and reading it must have no effect the
/// caller has not accounted for.
#[inline(always)]
pub unsafe fn read32(addr: u64) -> u32 {
    let value: u32;
    // SAFETY: the caller guarantees a mapped, aligned register; one `ldr`
    // of a w register with a base register and no writeback.
    unsafe {
        core::arch::asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value,
            options(nostack, preserves_flags));
    }
    value
}

/// Writes the 32-bit register at `addr`.
///
/// # Safety
///
/// As for [`read32`], and the write's effect on the device must be one the
/// caller owns.
#[inline(always)]
pub unsafe fn write32(addr: u64, value: u32) {
    // SAFETY: the caller guarantees a mapped, aligned register; one `str`
    // of a w register with a base register and no writeback.
    unsafe {
        core::arch::asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value,
            options(nostack, preserves_flags));
    }
}

/// Writes the 64-bit register at `addr` (GICD_IROUTER).
///
/// # Safety
///
/// As for [`write32`], with `addr` 8-aligned.
#[inline(always)]
pub unsafe fn write64(addr: u64, value: u64) {
    // SAFETY: the caller guarantees a mapped, aligned register; one `str`
    // of an x register with a base register and no writeback.
    unsafe {
        core::arch::asm!("str {v:x}, [{a}]", a = in(reg) addr, v = in(reg) value,
            options(nostack, preserves_flags));
    }
}
