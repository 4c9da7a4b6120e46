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
 * counts itself in a scratch word of the comm region page (0x100fe0, which
 * the guest does not read) and waits; when all `num_cpus` - 1 have arrived,
 * the boot CPU writes the marker, clears the word, and every CPU enters the
 * image with the same register state: all race for the image's CPU ticket.
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

    /* Other CPUs: x2APIC as the boot CPU, check in, wait for the marker. */
    x2apic_on
    lock incw 0xff0                 /* 0x100fe0 */
2:  pause
    cmpw $0, 0xff0
    jne 2b
    jmp enter

boot_cpu:
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
    /* End of the firmware's own accesses (see above), then release them. */
    movb $0xa5, %al
    outb %al, $0x80
    movw $0, 0xff0

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

    /* The reset vector, F000:FFF0. */
    .org 0xfff0
    ljmp $0xf000, $_start
    .org 0x10000
