//! Memory footprint of the guest, for the boot log and the counters line:
//! the image's extent from the linker script, and how deep the main stack
//! has been used (the entry code zeroes it, so the lowest nonzero word is
//! the high-water mark, give or take words that happened to be written as
//! zero).

use core::fmt;

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __bss_start: u8;
    static __stack_bottom: u8;
    static __stack_top: u8;
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
        let text = addr(&raw const __text_end) - start;
        let rodata = addr(&raw const __rodata_end) - addr(&raw const __text_end);
        let data_bss = addr(&raw const __stack_bottom) - addr(&raw const __rodata_end);
        let bss = addr(&raw const __stack_bottom) - addr(&raw const __bss_start);
        let stacks = end - addr(&raw const __stack_bottom);
        write!(
            f,
            "image {start:#x}..{end:#x}: {} KiB in RAM (text {} KiB, rodata {} KiB, data+bss {} KiB of which bss {} KiB, stacks {} KiB)",
            (end - start) / 1024,
            text / 1024,
            rodata / 1024,
            data_bss / 1024,
            bss / 1024,
            stacks / 1024
        )
    }
}
