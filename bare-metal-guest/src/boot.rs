//! Entries: the PVH note, the Jailhouse 16-bit reset entry, and the common
//! 32-bit → 64-bit trampoline.
//!
//! - QEMU (`-kernel`, PVH boot) enters `pvh_start32` in 32-bit protected
//!   mode with paging off, flat segments, and `ebx` holding the physical
//!   address of the `hvm_start_info` structure.
//! - Jailhouse (`cell start`, image linked at 0 by link-jailhouse.ld) starts
//!   **every** CPU of the cell at `jailhouse_reset16` = 0000:0000 in real
//!   mode, with CR0 = CD|NW|ET (caches off), all other registers 0 and RSP
//!   0. Each CPU takes a ticket; only ticket 0 goes on, the others halt with
//!   interrupts off (nothing ever wakes them: the guest is single-CPU). The
//!   boot CPU loads the GDT, enters protected mode, loads flat data
//!   segments and a stack, clears CR0.CD/NW and sets only
//!   MTRR_DEF_TYPE.E (bit 11; the one bit Jailhouse emulates), then joins
//!   the PVH path with no start info (`esi` = 0): [`crate::rust_entry`]
//!   then reads the command line from the `.cmdline` buffer at 0x1000.
//!
//! The common trampoline
//!
//! 1. zeroes `.bss` and the stacks (neither QEMU's loader nor Jailhouse's
//!    does),
//! 2. identity-maps the first 1 GiB with 2 MiB pages — just enough to reach
//!    the image, the start info and the command line; `paging::init` replaces
//!    these tables with precise ones right after entry,
//! 3. enables PAE, long mode (EFER.LME) and paging with CR0.WP set, so that
//!    read-only pages are read-only for ring 0 too,
//! 4. loads a minimal GDT, far-returns into 64-bit code, sets up the stack,
//!    and calls [`crate::rust_entry`] with the start-info address.
//!
//! Written by hand because this is the one piece no crate can provide: it
//! runs before Rust code can.

use core::arch::global_asm;

/// What `rust_entry` receives instead of a start-info address when the
/// guest came in through the Jailhouse reset entry.
pub const NO_START_INFO: u32 = 0;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note type that announces a PVH entry.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

global_asm!(
    // The PVH note: name "Xen", type 18, descriptor = 32-bit entry address.
    // It must be an SHT_NOTE section (`@note`) in a PT_NOTE segment.
    r#".section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long {note_type}
    .asciz "Xen"
    .p2align 2
    .long pvh_start32
    .p2align 2
    "#,
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
);

global_asm!(
    r#".section .text.reset16, "ax"
    .code16
    .global jailhouse_reset16
jailhouse_reset16:
    cli
    cld
    // CS = DS = 0 at reset: offsets below 64 KiB are linear addresses. The
    // ticket is loaded from the image as 0 at every `cell load`.
    mov ax, 1
    lock xadd word ptr [jailhouse_cpu_tickets], ax
    test ax, ax
    jnz .Lpark16
    lgdt [reset16_gdt_ptr]        // 16-bit form: 24-bit base, below 1 MiB here
    mov eax, cr0
    or eax, 1                     // CR0.PE
    mov cr0, eax
    .byte 0x66, 0xea              // ljmpl 0x18:jailhouse_start32
    .long jailhouse_start32
    .word 0x18
.Lpark16:
    cli
    hlt
    jmp .Lpark16

    .p2align 2
    .global jailhouse_cpu_tickets     // read by the rig test: CPUs that entered
jailhouse_cpu_tickets:
    .word 0
reset16_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot, "ax"
    .code32
jailhouse_start32:
    mov eax, 0x10                 // flat data
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov esp, offset __stack_top
    mov eax, cr0
    and eax, 0x9fffffff           // clear CR0.CD and CR0.NW: caches on
    mov cr0, eax
    mov ecx, 0x2ff                // IA32_MTRR_DEF_TYPE: set E only
    rdmsr
    or eax, 0x800
    wrmsr
    xor esi, esi                  // no PVH start info
    jmp .Lcommon32

    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                  // start-info paddr, kept until rust_entry
    mov esp, offset __stack_top

.Lcommon32:
    // Zero .bss and the stacks.
    mov edi, offset __zero_start
    mov ecx, offset __zero_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    // Boot page tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB.
    mov eax, offset boot_pdpt
    or eax, 0x3                   // present | writable
    mov dword ptr [boot_pml4], eax
    mov eax, offset boot_pd
    or eax, 0x3
    mov dword ptr [boot_pdpt], eax
    xor ecx, ecx
.Lfill_pd:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83                  // present | writable | 2 MiB page
    mov dword ptr [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 512
    jne .Lfill_pd

    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20                  // CR4.PAE
    mov cr4, eax
    mov ecx, 0xC0000080           // IA32_EFER
    rdmsr
    or eax, 0x100                 // EFER.LME
    wrmsr
    mov eax, cr0
    or eax, 0x80010001            // CR0.PG | CR0.WP | CR0.PE
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    // LLVM's Intel syntax has no absolute far jmp: far-return instead.
    mov eax, 0x08
    push eax
    mov eax, offset .Llong_mode
    push eax
    retf

    .code64
.Llong_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset __stack_top
    xor ebp, ebp
    mov edi, esi
    call {rust_entry}
    ud2

    .section .rodata.boot, "a"
    .p2align 4
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff      // 0x08: 64-bit code, accessed
    .quad 0x00cf93000000ffff      // 0x10: data, accessed
    .quad 0x00cf9b000000ffff      // 0x18: 32-bit code (Jailhouse entry)
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot_tables, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096
    .code64
    "#,
    rust_entry = sym crate::rust_entry,
);

unsafe extern "C" {
    /// The command-line buffer at 0x1000 of the Jailhouse image
    /// (link-jailhouse.ld; the PVH image has none).
    static __cmdline_start: u8;
    static __cmdline_end: u8;
}

/// The command line `jailhouse cell load … -s "…" -a 0x1000` wrote into the
/// `.cmdline` buffer: the bytes before the first NUL, or `None` if the
/// buffer holds no NUL (the string was longer than the buffer; its tail
/// went into the bss, which the entry code has zeroed since). Only for the
/// Jailhouse entry, before `paging::init` (which leaves the buffer
/// unmapped).
pub fn jailhouse_cmdline() -> Option<&'static [u8]> {
    let start = &raw const __cmdline_start;
    let len = (&raw const __cmdline_end as usize).saturating_sub(start as usize);
    // SAFETY: the linker script reserves `len` bytes at `__cmdline_start`
    // inside the loaded image; only the Jailhouse loader writes them, before
    // the cell starts, and nothing in the guest writes them afterwards.
    let buf = unsafe { core::slice::from_raw_parts(start, len) };
    buf.iter().position(|&b| b == 0).map(|n| &buf[..n])
}
