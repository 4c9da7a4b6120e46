/*
 * jh-reset-arm64: the `-bios` of the arm64 Jailhouse rig
 * (tests/tests/jailhouse_arm64_cell.rs) on `qemu-system-aarch64 -M
 * virt,gic-version=3,its=off` without EL2/EL3. It plays the parts a cell
 * finds done when `jailhouse cell start` runs it
 * (shared/reference/jailhouse-arm64-cell.md):
 *
 * 1. what root Linux left in the GIC (§4.1, §4.2): the distributor enabled
 *    with affinity routing and group 1 (GICD_CTLR = ARE | EnableGrp1 |
 *    EnableGrp0, as Linux's gic_dist_init with a single security state),
 *    every SPI in group 1 (GICD_IGROUPR1..) with priority 0xa0
 *    (GICD_IPRIORITYR8..), CPU 0's redistributor awake
 *    (GICR_WAKER.ProcessorSleep clear) with SGIs/PPIs in group 1 at
 *    priority 0xa0 and the SGIs enabled (Jailhouse keeps them so, §4.2); the
 *    cell's SPIs are left disabled and routed to CPU 0 (QEMU's reset
 *    state: `cell start` disables them, config_commit routes them to the
 *    cell's first CPU); and the PL011 enabled (8N1, FIFOs, TX and RX: the
 *    comm region's console has divider 0, so the cell uses the UART as
 *    root's console driver set it up, §7);
 * 2. the marker: a 2-byte write of 0x4a48 ("JH") to fw_cfg's selector
 *    register (0x09020008, harmless: it selects no item). In QEMU's trace it
 *    separates the rig's own accesses from the inmate's; the inmate never
 *    touches fw_cfg (it is not in the cell);
 * 3. the register state of Jailhouse's arm_cpu_reset (§2.1,
 *    hypervisor/arch/arm64/control.c:21-94): SCTLR_EL1 = 0x30d00800 (MMU,
 *    caches, alignment checks off), CPACR_EL1.FPEN = 0b11, VBAR, MAIR, TCR,
 *    TTBR0/1, TPIDR*, CONTEXTIDR, CNTKCTL, timers, SP_EL0 and SP_EL1 all 0,
 *    x0-x30 all 0, then ERET to the reset address 0x40080000 with
 *    SPSR_EL1 = 0x3c5 (EL1h, DAIF masked). ERET leaves ELR_EL1 = 0x40080000
 *    and SPSR_EL1 = 0x3c5 behind (Jailhouse: 0); nothing reads them before
 *    the first exception overwrites them.
 *
 * Only CPU 0 exists (-smp 1): the cell has one CPU. The cell's RAM (the
 * image, the command line, no DTB) and the comm region are written by the
 * test while QEMU waits (-S) after its reset, as `cell load` does while
 * the cell's CPUs are parked.
 *
 * Built by tests/tests/jailhouse_arm64_cell.rs:
 *   llvm-mc -triple=aarch64 -filetype=obj; llvm-objcopy -O binary -j .text
 */
	.text
	.globl	_start
_start:
	/* 1. GIC distributor */
	ldr	x0, =0x08000000		/* GICD */
	mov	w1, #0x13		/* ARE | EnableGrp1 | EnableGrp0 */
	str	w1, [x0]		/* GICD_CTLR */
	ldr	w1, [x0, #0x4]		/* GICD_TYPER */
	and	w1, w1, #0x1f		/* ITLinesNumber: IGROUPR1..n */
	mov	w2, #1
	mov	w3, #-1
	add	x4, x0, #0x80		/* GICD_IGROUPR0 */
1:	cmp	w2, w1
	b.hi	2f
	str	w3, [x4, w2, uxtw #2]
	add	w2, w2, #1
	b	1b
2:
	/* IPRIORITYR8.. (SPIs from INTID 32): 0xa0 each, Linux's default */
	ldr	w5, =0xa0a0a0a0
	add	w6, w1, #1		/* 32-INTID blocks, SGI/PPI block included */
	lsl	w6, w6, #3		/* IPRIORITYR words */
	mov	w2, #8
	add	x4, x0, #0x400		/* GICD_IPRIORITYR0 */
5:	cmp	w2, w6
	b.hs	6f
	str	w5, [x4, w2, uxtw #2]
	add	w2, w2, #1
	b	5b
6:
	/* CPU 0's redistributor: RD frame, then SGI frame at +64 KiB */
	ldr	x0, =0x080a0000
	ldr	w1, [x0, #0x14]		/* GICR_WAKER */
	bic	w1, w1, #0x2		/* ProcessorSleep */
	str	w1, [x0, #0x14]
3:	ldr	w1, [x0, #0x14]
	tbnz	w1, #2, 3b		/* ChildrenAsleep */
	ldr	x0, =0x080b0000
	str	w3, [x0, #0x80]		/* GICR_IGROUPR0 */
	mov	w2, #0
	add	x4, x0, #0x400		/* GICR_IPRIORITYR0..7: 0xa0 */
7:	str	w5, [x4, w2, uxtw #2]
	add	w2, w2, #1
	cmp	w2, #8
	b.lo	7b
	mov	w1, #0xffff
	str	w1, [x0, #0x100]	/* GICR_ISENABLER0: the SGIs, as root left them */

	/* the PL011 as root Linux's console driver leaves it (the cell
	 * shares it with divider 0: it does not program the UART) */
	ldr	x0, =0x09000000
	mov	w1, #0x70		/* UARTLCR_H: 8 bits, FIFOs on */
	str	w1, [x0, #0x2c]
	mov	w1, #0x301		/* UARTCR: UARTEN | TXE | RXE */
	str	w1, [x0, #0x30]

	/* 2. the marker */
	ldr	x0, =0x09020008
	mov	w1, #0x4a48
	strh	w1, [x0]
	dsb	sy

	/* 3. Jailhouse's reset state */
	ldr	x0, =0x30d00800
	msr	sctlr_el1, x0
	mov	x0, #(3 << 20)
	msr	cpacr_el1, x0
	msr	vbar_el1, xzr
	msr	mair_el1, xzr
	msr	tcr_el1, xzr
	msr	ttbr0_el1, xzr
	msr	ttbr1_el1, xzr
	msr	contextidr_el1, xzr
	msr	tpidr_el0, xzr
	msr	tpidr_el1, xzr
	msr	tpidrro_el0, xzr
	msr	cntkctl_el1, xzr
	msr	cntv_ctl_el0, xzr
	msr	cntp_ctl_el0, xzr
	msr	cntv_cval_el0, xzr
	msr	cntp_cval_el0, xzr
	msr	sp_el0, xzr
	ldr	x0, =0x40080000
	msr	elr_el1, x0
	mov	x0, #0x3c5
	msr	spsr_el1, x0
	mov	x0, #0
	mov	sp, x0
	isb
	mov	x1, #0
	mov	x2, #0
	mov	x3, #0
	mov	x4, #0
	mov	x5, #0
	mov	x6, #0
	mov	x7, #0
	mov	x8, #0
	mov	x9, #0
	mov	x10, #0
	mov	x11, #0
	mov	x12, #0
	mov	x13, #0
	mov	x14, #0
	mov	x15, #0
	mov	x16, #0
	mov	x17, #0
	mov	x18, #0
	mov	x19, #0
	mov	x20, #0
	mov	x21, #0
	mov	x22, #0
	mov	x23, #0
	mov	x24, #0
	mov	x25, #0
	mov	x26, #0
	mov	x27, #0
	mov	x28, #0
	mov	x29, #0
	mov	x30, #0
	eret
	.ltorg
