//! The 64-bit GDT and the TSS, whose interrupt stack table (IST) gives the
//! fatal exceptions stacks of their own: a stack overflow runs into the
//! unmapped guard page, and the resulting page fault must not need the
//! overflowed stack to report itself.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (1-based in the IDT, 0-based here) of the double-fault stack.
pub const IST_DOUBLE_FAULT: u16 = 0;
/// IST slot of the page-fault stack.
pub const IST_PAGE_FAULT: u16 = 1;
/// IST slot of the NMI and machine-check stack.
pub const IST_NMI: u16 = 2;
/// Size of each IST stack (see `link.ld`).
const IST_STACK_SIZE: u64 = 8 * 1024;

unsafe extern "C" {
    /// Start of the IST stacks, reserved by the linker script.
    static __ist_stacks: u8;
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();

/// Loads the GDT (code, data, TSS) and the TSS, and reloads the segment
/// registers.
pub fn init() {
    let tss = TSS.call_once(|| {
        let base = VirtAddr::from_ptr(&raw const __ist_stacks);
        let mut tss = TaskStateSegment::new();
        for (i, slot) in [IST_DOUBLE_FAULT, IST_PAGE_FAULT, IST_NMI]
            .into_iter()
            .enumerate()
        {
            // Stacks grow down: each slot holds the top of its stack.
            tss.interrupt_stack_table[usize::from(slot)] = base + (i as u64 + 1) * IST_STACK_SIZE;
        }
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded and describe a
    // flat 64-bit code segment, a flat data segment and a valid TSS that
    // lives in a `static` for the rest of the guest's life.
    unsafe {
        CS::set_reg(*code);
        SS::set_reg(*data);
        DS::set_reg(*data);
        ES::set_reg(*data);
        load_tss(*tss_sel);
    }
}
