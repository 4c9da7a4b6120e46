//! Entry: the PVH note and the 32-bit → 64-bit trampoline.
//!
//! QEMU (`-kernel`, PVH boot) enters `pvh_start32` in 32-bit protected mode
//! with paging off, flat segments, and `ebx` holding the physical address of
//! the `hvm_start_info` structure. The trampoline
//!
//! 1. zeroes `.bss` and the stacks (a flat-binary loader would not),
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
    r#".section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                  // start-info paddr, kept until rust_entry

    // Zero .bss and the stacks.
    mov edi, offset __bss_start
    mov ecx, offset __image_end
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
