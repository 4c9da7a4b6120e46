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
 * Its last I/O is a write of 0xa5 to port 0x80 (a port Jailhouse ignores),
 * which marks, in QEMU's trace, where the inmate's own accesses begin.
 *
 * Built by tests/tests/jailhouse_cell.rs: as --32; ld -Ttext 0 --oformat binary.
 */
    .code16
    .text
    .globl _start
_start:
    cli
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

    /* x2APIC host: IA32_APIC_BASE |= EN | EXTD if CPUID.1:ECX[21]. */
    movl $1, %eax
    cpuid
    testl $(1 << 21), %ecx
    jz 1f
    movl $0x1b, %ecx
    rdmsr
    orl $0xc00, %eax
    wrmsr
1:
    /* End of the firmware's own accesses (see above). */
    movb $0xa5, %al
    outb %al, $0x80

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

    /* The reset vector, F000:FFF0. */
    .org 0xfff0
    ljmp $0xf000, $_start
    .org 0x10000
