//! Memory footprint of the guest, for the boot log and the counters line:
//! the image's extent from the linker script, and how deep the main stack
//! has been used (the entry code zeroes it, so the lowest nonzero word is
//! the high-water mark, give or take words that happened to be written as
//! zero).

use core::fmt;

unsafe extern "C" {
    static __image_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __bss_start: u8;
    static __bss_end: u8;
    static __stack_bottom: u8;
    static __stack_top: u8;
    static __stack_guard: u8;
    static __ist_stacks_end: u8;
    static __image_end: u8;
}

fn addr(p: *const u8) -> usize {
    p as usize
}

/// Bytes of the main stack used so far (high-water mark).
pub fn stack_used() -> usize {
    let bottom = addr(&raw const __stack_bottom);
    let top = addr(&raw const __stack_top);
    let mut p = bottom;
    while p < top {
        // SAFETY: `p` is 8-aligned and inside the main stack, which is
        // mapped read-write for the guest's lifetime; a volatile read of a
        // word below the current stack pointer is harmless.
        let word = unsafe { (p as *const u64).read_volatile() };
        if word != 0 {
            break;
        }
        p += 8;
    }
    top - p
}

/// The image layout.
pub struct Image;

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = addr(&raw const __image_start);
        let end = addr(&raw const __image_end);
        let size = |from: *const u8, to: *const u8| (addr(to) - addr(from)) / 1024;
        let text = size(&raw const __text_start, &raw const __text_end);
        let rodata = size(&raw const __rodata_start, &raw const __rodata_end);
        let data = size(&raw const __data_start, &raw const __data_end);
        let bss = size(&raw const __bss_start, &raw const __bss_end);
        let stacks = size(&raw const __stack_guard, &raw const __ist_stacks_end);
        write!(
            f,
            "image {start:#x}..{end:#x}: {} KiB in RAM (text {text} KiB, rodata {rodata} KiB, data {data} KiB, bss {bss} KiB, stacks {stacks} KiB)",
            (end - start) / 1024,
        )
    }
}
