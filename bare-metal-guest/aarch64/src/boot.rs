//! The entry: the arm64 Image header QEMU's `-kernel` loader recognises,
//! the drop from EL2 to EL1 (if entered at EL2), SCTLR_EL1 in a known
//! state (MMU and caches off), FP/SIMD on, `.bss` and the stacks zeroed,
//! the two stacks (SP_EL0 for the guest's code, SP_EL1 for exception
//! handlers), the vector table, then `rust_entry(dtb, entry_el)`.
//!
//! One image, two starts: QEMU `-kernel` enters byte 0 with x0 = the DTB;
//! Jailhouse's `cell start` enters the same byte 0 (the cell's
//! `cpu_reset_address`, 0x40080000) at EL1 with the MMU off and every
//! general register 0, so x0 = 0 selects the Jailhouse path (`jailhouse`).
//! The `.cmdline` buffer at image base + 0x1000 is what `jailhouse cell
//! load … -s "…" -a 0x40081000` fills (`cmdline`; link.ld).
//!
//! Image header facts (Linux Documentation/arch/arm64/booting.rst): 64
//! bytes at offset 0; code0 is the first instruction; text_offset at 0x08,
//! image_size at 0x10, flags at 0x18 (bit 0 = big-endian: 0; bits 1-2 =
//! page size: 1 = 4 KiB), magic "ARM\x64" at 0x38. The boot protocol gives
//! x0 = the DTB's physical address and x1..x3 = 0, MMU off.

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       2f                      // code0
    .long   0                       // code1
    .quad   0x80000                 // text_offset (link.ld: RAM base + 0x80000)
    .quad   __image_size            // image_size, .bss and stacks included
    .quad   0x2                     // flags: little-endian, 4 KiB pages
    .quad   0, 0, 0                 // res2..res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5 (no PE header)

2:  mov     x19, x0                 // the DTB (0 under Jailhouse: no DTB)
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2
    cmp     x20, #2
    b.ne    3f
    // EL2 -> EL1: EL1 is AArch64 (HCR_EL2.RW) with nothing trapped to EL2;
    // EL1 may use the physical counter and timer, and the virtual counter
    // equals the physical one; no FP/SIMD traps (CPTR_EL2 RES1 bits only).
    mov     x1, #(1 << 31)
    msr     hcr_el2, x1
    mov     x1, #3
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    // A GICv3 CPU interface (ID_AA64PFR0_EL1.GIC != 0): ICC_SRE_EL2.SRE
    // and .Enable, so that EL1 may use the ICC_* system registers.
    mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #24, #4
    cbz     x1, 1f
    mov     x1, #0x9
    msr     icc_sre_el2, x1
    isb
1:
    ldr     x1, =0x30d00800
    msr     sctlr_el1, x1
    mov     x1, #0x3c5              // EL1h, D, A, I, F masked
    msr     spsr_el2, x1
    adr     x1, 3f
    msr     elr_el2, x1
    eret

3:  msr     daifset, #0xf
    ldr     x1, =0x30d00800         // SCTLR_EL1 RES1 bits: MMU, caches, alignment checks off
    msr     sctlr_el1, x1
    mov     x1, #(3 << 20)          // CPACR_EL1.FPEN: FP/SIMD not trapped
    msr     cpacr_el1, x1
    isb
    // Zero .bss and both stacks: the Image file holds them as zeros, but a
    // restarted cell finds the previous run's data there, and an overlong
    // command line runs into them (link.ld).
    ldr     x1, =__bss_start
    ldr     x2, =__ist_stacks_end
4:  cmp     x1, x2
    b.hs    5f
    stp     xzr, xzr, [x1], #16
    b       4b
5:  ldr     x1, =__exception_stack_top
    mov     sp, x1                  // SP_EL1 (SPSel = 1): exception handlers
    msr     spsel, #0
    ldr     x1, =__stack_top
    mov     sp, x1                  // SP_EL0: everything else
    ldr     x1, =exception_vectors
    msr     vbar_el1, x1
    isb
    mov     x0, x19
    mov     x1, x20
    bl      rust_entry
6:  wfi
    b       6b
    .ltorg
"#
);
