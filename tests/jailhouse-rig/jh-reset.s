/*
 * jh-reset: a 64 KiB `-bios` firmware that reproduces what Jailhouse's
 * `cell start` hands an x86 inmate (Jailhouse e57d1eff,
 * hypervisor/arch/x86/vmx.c:783-880): CS:IP = 0000:0000 in real mode,
 * CR0 = CD|NW|ET (the hardware reset value), CR3 = CR4 = EFER = 0,
 * RFLAGS = 2, every general-purpose register and RSP = 0, data segments
 * with selector 0 and base 0. Before that it sets up what the root cell's
 * platform provides: the ACPI PM timer at port 0x608 (q35's ICH9 LPC
 * PMBASE = 0x600, ACPI enabled; qemu-x86.c's pm_timer_address) and, when
 * the CPU has one, the local APIC in x2APIC mode (an x2APIC host: the
 * cell then gets x2APIC MSRs, and any xAPIC MMIO access is fatal).
 *
 * Jailhouse starts every CPU of the cell at the reset address; QEMU's other
 * CPUs wait for a SIPI. The boot CPU sends INIT and SIPI (vector 0xf0: they
 * start here, at F000:0000), each of them puts its APIC in x2APIC mode too,
 * jumps to a copy of `ap_wait` in the comm region page (0x100f00), counts
 * itself in a scratch word there (0x100fe0; the guest reads neither) and
 * waits; when all `num_cpus` - 1 have arrived, the boot CPU turns
 * 0xc0000..0xfffff into RAM (q35's PAM registers: a cell's first MiB is
 * RAM, and the image reaches into it), writes the marker, clears the word,
 * and every CPU enters the image with the same register state: all race for
 * the image's CPU ticket. The boot CPU runs from the 0xffff0000 alias
 * throughout (the reset vector jumps near, keeping the reset CS base).
 *
 * The boot CPU's last I/O is a write of 0xa5 to port 0x80 (a port Jailhouse
 * ignores), which marks, in QEMU's trace, where the inmate's own accesses
 * begin; no CPU enters the image before it.
 *
 * Built by tests/tests/jailhouse_cell.rs: as --32; ld -Ttext 0 --oformat binary.
 */
    /* x2APIC host: IA32_APIC_BASE |= EN | EXTD if CPUID.1:ECX[21]. (A
     * macro, not a call: the reset stack pointer 0:0 would push into the
     * image.) */
    .macro x2apic_on
    movl $1, %eax
    cpuid
    testl $(1 << 21), %ecx
    jz 1f
    movl $0x1b, %ecx
    rdmsr
    orl $0xc00, %eax
    wrmsr
1:
    .endm

    .set AP_WAIT_OFFSET, 0xf10      /* ffff:0f10 = 0x100f00 */

    .code16
    .text
    .globl _start
_start:
    cli
    /* The comm region page (0x100000) through segment 0xffff (A20 is on). */
    movw $0xffff, %ax
    movw %ax, %ds
    movl $0x1b, %ecx
    rdmsr
    testl $0x100, %eax              /* IA32_APIC_BASE.BSP */
    jnz boot_cpu

    /* Other CPUs: x2APIC as the boot CPU, then on to the copy of
     * `ap_wait` in the comm region page (the boot CPU turns 0xf0000.. into
     * RAM once all have checked in, so they must not run from here then). */
    x2apic_on
    ljmp $0xffff, $AP_WAIT_OFFSET

boot_cpu:
    /* Copy `ap_wait` (check in, wait, enter) to the comm region page's
     * scratch area 0x100f00 (ffff:0f10; the guest reads neither it nor the
     * check-in word), from this code's copy at 0xf0000 (still ROM). */
    movw $0xf000, %ax
    movw %ax, %ds
    movw $0xffff, %ax
    movw %ax, %es
    movw $ap_wait, %si
    movw $AP_WAIT_OFFSET, %di
    movw $(ap_wait_end - ap_wait), %cx
    cld
    rep movsb
    movw $0xffff, %ax
    movw %ax, %ds
    /* ICH9 LPC (00:1f.0): PMBASE (0x40) = 0x600, ACPI_CNTL (0x44) ACPI_EN. */
    movl $0x8000f840, %eax
    movw $0xcf8, %dx
    outl %eax, %dx
    movl $0x601, %eax
    movw $0xcfc, %dx
    outl %eax, %dx
    movl $0x8000f844, %eax
    movw $0xcf8, %dx
    outl %eax, %dx
    movb $0x80, %al
    movw $0xcfc, %dx
    outb %al, %dx

    x2apic_on
    /* The other CPUs: num_cpus (comm region +0x42) - 1 of them. */
    movw 0x52, %bx
    decw %bx
    jz 3f
    movl $0x830, %ecx               /* x2APIC ICR, "all excluding self" */
    xorl %edx, %edx
    movl $0x000c4500, %eax          /* INIT, assert */
    wrmsr
    movl $0x000c46f0, %eax          /* Start-up, vector 0xf0 */
    wrmsr
4:  pause
    cmpw %bx, 0xff0
    jne 4b
3:
    /* A cell's memory below 1 MiB is RAM: q35's PAM0..PAM6 (00:00.0
     * 0x90..0x96) to read/write DRAM for 0xc0000..0xfffff, where QEMU keeps
     * pc.rom and the BIOS alias (the test puts the image into RAM itself).
     * This CPU runs from the 0xffff0000 alias (the reset CS base; the reset
     * vector jumps near), the others from the comm region page. */
    movw $0x90, %cx
5:  movl $0x80000000, %eax
    movb %cl, %al
    andb $0xfc, %al
    movw $0xcf8, %dx
    outl %eax, %dx
    movw %cx, %dx
    andw $3, %dx
    addw $0xcfc, %dx
    movb $0x33, %al
    cmpw $0x90, %cx
    jne 6f
    movb $0x30, %al                 /* PAM0: only bits 5:4 (0xf0000..0xfffff) */
6:  outb %al, %dx
    incw %cx
    cmpw $0x97, %cx
    jne 5b
    /* End of the firmware's own accesses (see above), then release them. */
    movb $0xa5, %al
    outb %al, $0x80
    movw $0, 0xff0
    jmp enter

    /* The other CPUs run this from 0x100f00 (position-independent). */
ap_wait:
    lock incw 0xff0                 /* 0x100fe0: checked in */
2:  pause
    cmpw $0, 0xff0
    jne 2b
enter:
    xorl %eax, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    xorl %esp, %esp
    /* RFLAGS = 2: the xors cleared OF; SAHF loads SF ZF AF PF CF from AH. */
    movb $0x02, %ah
    sahf
    movl $0, %eax
    /* The inmate's entry, as Jailhouse's pseudo-SIPI with cpu_reset_address 0. */
    ljmp $0, $0
ap_wait_end:

    /* The reset vector, F000:FFF0 (CS base 0xffff0000): a near jump keeps
     * that base, so the boot CPU never runs from the 0xf0000 alias. */
    .org 0xfff0
    jmp _start
    .org 0x10000
