/*
 * jh-el2-arm64: the `-bios` of the arm64 Jailhouse rig with EL2
 * (tests/tests/jailhouse_arm64_syndromes.rs) on `qemu-system-aarch64 -M
 * virt,gic-version=3,its=off,virtualization=on` (the CPU starts at EL2).
 * A minimal hypervisor that does what Jailhouse does with the cell's MMIO
 * (shared/reference/jailhouse-arm64-cell.md §2.4, §5, §6.3): stage 2
 * maps only the cell's memory, every access to a device page traps, and a
 * trap is emulated from the data abort's syndrome, or is fatal.
 *
 * 1. EL2: VBAR_EL2 = the vectors below; stage 2 on (VTCR_EL2: 4 KiB
 *    granule, 39-bit IPA, walks from level 1; VTTBR_EL2 = the level-1 table
 *    the test wrote at STUB + 0x2000, VMID 0); HCR_EL2 = VM | TSC | TAC | RW
 *    as Jailhouse's minus IMO/FMO: IRQs stay with EL1 and the GIC's physical
 *    CPU interface (ICC_SRE_EL2.SRE|Enable), not a virtual one; SMC and
 *    ACTLR_EL1 accesses trap (fatal under Jailhouse, fatal here);
 *    CNTHCTL_EL2 = EL1PCTEN | EL1PCEN, CNTVOFF_EL2 = 0, CPTR_EL2 traps no
 *    FP/SIMD; ELR_EL2 = 0x40080000, SPSR_EL2 = 0x3c5 (EL1h, DAIF masked).
 * 2. then the EL1 rig's firmware, jh-reset-arm64.s, included verbatim: the
 *    GIC and PL011 as root Linux leaves them, the fw_cfg marker, EL1's
 *    reset state of Jailhouse's arm_cpu_reset; its final ERET (at EL2 here)
 *    enters the image at EL1 through ELR_EL2/SPSR_EL2 set in 1.
 * 3. a synchronous exception from EL1 (vector 0x400):
 *    - a data abort (EC 0x24) with a valid syndrome (ISV = 1) whose IPA
 *      (HPFAR_EL2.FIPA << 12 | FAR_EL2[11:0]) and size fit one of the
 *      regions the test wrote at STUB + 0x100 (the cell's MMIO: start, end,
 *      largest access, count): the access is done here at EL2 (MMU off,
 *      so Device-nGnRnE) with the size (SAS), direction (WnR), register
 *      (SRT; 31 = XZR), sign extension (SSE) and register width (SF) of
 *      the syndrome; ELR_EL2 += 4, the region's count and the total count
 *      go up, ERET;
 *    - anything else is fatal as under Jailhouse: a data abort with
 *      ISV = 0 (ldp/stp, writeback addressing, SIMD/FP registers, cache
 *      maintenance: reason 1), one at an address or of a size no region
 *      allows (unmapped IPA, a write to a read-only section: reason 2),
 *      any other trap (HVC, SMC, a trapped system register, an instruction
 *      abort: reason 3), an exception taken at EL2 itself or an IRQ/FIQ/
 *      SError to EL2 (reason 4). The stub writes the record (reason, ESR,
 *      FAR, HPFAR, ELR, SPSR, IPA) into the record page at STUB, sets the
 *      comm region's cell_state to FAILED as Jailhouse's panic_park does
 *      once all of a cell's CPUs have failed, prints a FATAL line on the
 *      PL011 and parks the CPU.
 *
 * The record page (STUB = 0xbfe00000, the top 2 MiB of the 2 GiB RAM,
 * outside the cell's RAM; stage 2 does not map it; the test writes the
 * regions and tables before the CPU starts and reads the rest):
 *   +0x00 u64 "EL2STUB\0" once the stub enters the cell
 *   +0x08 u64 accesses emulated      +0x10 u64 fatal traps (0 or 1)
 *   +0x18 u64 reason                 +0x20 ESR  +0x28 FAR  +0x30 HPFAR
 *   +0x38 ELR                        +0x40 SPSR +0x48 IPA
 *   +0x100 regions: {u64 start, end, largest access in bytes, count},
 *          up to 8, ended by end = 0
 *   +0x1000 EL1's x0..x30 and XZR while a trap is handled
 *   +0x2000 stage-2 tables (level 1 first)
 *
 * Built by tests/src/jailhouse_arm64.rs (`assemble`):
 *   llvm-mc -triple=aarch64 -filetype=obj -I tests/jailhouse-rig;
 *   llvm-objcopy -O binary -j .text
 */
	.equ	STUB,		0xbfe00000
	.equ	FRAME,		STUB + 0x1000
	.equ	REGIONS,	STUB + 0x100
	.equ	STAGE2_L1,	STUB + 0x2000
	.equ	CELL_STATE,	0x80000008
	.equ	CELL_FAILED,	3
	.equ	UART,		0x09000000
	/* T0SZ 25 | SL0 level 1 | IRGN0/ORGN0 WB | SH0 inner | TG0 4K |
	 * PS 40 bits | RES1 */
	.equ	VTCR,		25 | 1 << 6 | 1 << 8 | 1 << 10 | 3 << 12 | 2 << 16 | 1 << 31
	/* VM | TSC | TAC | RW */
	.equ	HCR,		1 | 1 << 19 | 1 << 21 | 1 << 31

	.text
	.globl	el2_start
el2_start:
	b	el2_setup

/* One entry of the vector table: 128 bytes, a branch to `target`. */
	.macro	vector target
	.balign	128
	b	\target
	.endm

	.balign	2048
el2_vectors:
	/* current EL with SP_EL0, then with SP_ELx: sync, IRQ, FIQ, SError */
	.rept	8
	vector	el2_self
	.endr
	/* lower EL, AArch64: sync (the cell's traps), IRQ, FIQ, SError */
	vector	el1_sync
	.rept	3
	vector	el2_self
	.endr
	/* lower EL, AArch32 */
	.rept	4
	vector	el2_self
	.endr
	.balign	128

el2_setup:
	adr	x0, el2_vectors		/* PC-relative: the image runs at 0 */
	msr	vbar_el2, x0
	ldr	x0, =VTCR
	msr	vtcr_el2, x0
	ldr	x0, =STAGE2_L1
	msr	vttbr_el2, x0
	mov	x0, #0x33ff		/* CPTR_EL2: RES1 bits, TFP clear */
	msr	cptr_el2, x0
	mov	x0, #3			/* CNTHCTL_EL2: EL1PCTEN | EL1PCEN */
	msr	cnthctl_el2, x0
	msr	cntvoff_el2, xzr
	mov	x0, #0x9		/* ICC_SRE_EL2: SRE | Enable */
	msr	icc_sre_el2, x0
	ldr	x0, =HCR
	msr	hcr_el2, x0
	isb
	tlbi	vmalls12e1
	dsb	sy
	isb
	ldr	x0, =0x40080000
	msr	elr_el2, x0
	mov	x0, #0x3c5
	msr	spsr_el2, x0
	ldr	x0, =STUB
	ldr	x1, =0x0042555453324c45	/* "EL2STUB\0" */
	str	x1, [x0]
	dsb	sy
	b	jh_reset

/* x0..x29 to (`op` = stp) or from (ldp) the frame at sp: slot n at 8n. */
	.macro	frame_x0_x29 op
	\op	x0, x1, [sp, #0]
	\op	x2, x3, [sp, #16]
	\op	x4, x5, [sp, #32]
	\op	x6, x7, [sp, #48]
	\op	x8, x9, [sp, #64]
	\op	x10, x11, [sp, #80]
	\op	x12, x13, [sp, #96]
	\op	x14, x15, [sp, #112]
	\op	x16, x17, [sp, #128]
	\op	x18, x19, [sp, #144]
	\op	x20, x21, [sp, #160]
	\op	x22, x23, [sp, #176]
	\op	x24, x25, [sp, #192]
	\op	x26, x27, [sp, #208]
	\op	x28, x29, [sp, #224]
	.endm

/* The access of `x23` = SAS (1 << SAS bytes) at x21 with register x27
 * (w27 below 8 bytes): instruction `op8`, `op16`, `op32` or `op64`. */
	.macro	by_size op8, op16, op32, op64
	cmp	x23, #1
	b.lo	101f
	b.eq	102f
	cmp	x23, #2
	b.eq	104f
	\op64	x27, [x21]
	b	109f
101:	\op8	w27, [x21]
	b	109f
102:	\op16	w27, [x21]
	b	109f
104:	\op32	w27, [x21]
109:
	.endm

/* A synchronous exception from EL1. */
el1_sync:
	msr	tpidr_el2, x0
	ldr	x0, =FRAME
	mov	sp, x0
	mrs	x0, tpidr_el2
	frame_x0_x29	stp
	stp	x30, xzr, [sp, #240]	/* slot 31: XZR */

	mrs	x19, esr_el2
	lsr	x20, x19, #26
	mov	x21, #0
	cmp	x20, #0x24		/* data abort from a lower EL */
	mov	x0, #3
	b.ne	fatal
	/* the IPA */
	mrs	x21, hpfar_el2
	ubfx	x21, x21, #4, #40
	lsl	x21, x21, #12
	mrs	x22, far_el2
	and	x22, x22, #0xfff
	orr	x21, x21, x22
	mov	x0, #1
	tbz	x19, #24, fatal		/* ISV = 0 */
	ubfx	x23, x19, #22, #2	/* SAS */
	mov	x24, #1
	lsl	x24, x24, x23		/* bytes */
	add	x28, x21, x24		/* end of the access */
	mov	x0, #2
	ldr	x25, =REGIONS
1:	ldr	x26, [x25, #8]		/* end */
	cbz	x26, fatal		/* no region: unhandled */
	ldr	x27, [x25]		/* start */
	cmp	x21, x27
	b.lo	2f
	cmp	x28, x26
	b.hi	2f
	ldr	x27, [x25, #16]		/* largest access */
	cmp	x24, x27
	b.hi	fatal
	b	3f
2:	add	x25, x25, #32
	b	1b

3:	ubfx	x26, x19, #16, #5	/* SRT */
	tbnz	x19, #6, 5f		/* WnR */
	/* a read */
	by_size	ldrb, ldrh, ldr, ldr
4:	tbz	x19, #21, 6f		/* SSE: sign-extend from the access size */
	lsl	x28, x24, #3
	mov	x29, #64
	sub	x28, x29, x28
	lsl	x27, x27, x28
	asr	x27, x27, x28
6:	tbnz	x19, #15, 7f		/* SF: an X register */
	mov	w27, w27
7:	cmp	x26, #31
	b.eq	8f
	str	x27, [sp, x26, lsl #3]
	b	8f
	/* a write */
5:	ldr	x27, [sp, x26, lsl #3]	/* slot 31 reads 0 */
	by_size	strb, strh, str, str

	/* counted, the instruction skipped */
8:	ldr	x28, [x25, #24]
	add	x28, x28, #1
	str	x28, [x25, #24]
	ldr	x25, =STUB
	ldr	x28, [x25, #8]
	add	x28, x28, #1
	str	x28, [x25, #8]
	mrs	x28, elr_el2
	add	x28, x28, #4
	msr	elr_el2, x28
	frame_x0_x29	ldp
	ldr	x30, [sp, #240]
	eret

/* An exception taken at EL2, or an IRQ/FIQ/SError routed to it. */
el2_self:
	mov	x0, #4
	mrs	x19, esr_el2
	mov	x21, #0			/* no IPA */

/* Fatal: x0 = reason, x19 = ESR; record, cell_state FAILED, say, park. */
fatal:
	ldr	x25, =STUB
	str	x0, [x25, #0x18]
	str	x19, [x25, #0x20]
	mrs	x1, far_el2
	str	x1, [x25, #0x28]
	mrs	x1, hpfar_el2
	str	x1, [x25, #0x30]
	mrs	x1, elr_el2
	str	x1, [x25, #0x38]
	mrs	x1, spsr_el2
	str	x1, [x25, #0x40]
	str	x21, [x25, #0x48]	/* the IPA of a data abort, else 0 */
	ldr	x1, [x25, #0x10]
	add	x1, x1, #1
	str	x1, [x25, #0x10]
	ldr	x1, =CELL_STATE
	mov	w2, #CELL_FAILED
	str	w2, [x1]
	dsb	sy
	mov	x20, x0
	adr	x0, msg_fatal
	bl	puts
	sub	x20, x20, #1
	adr	x0, msg_reasons
	add	x0, x0, x20, lsl #5
	bl	puts
	adr	x0, msg_esr
	bl	puts
	mov	x0, x19
	bl	puthex
	adr	x0, msg_far
	bl	puts
	mrs	x0, far_el2
	bl	puthex
	adr	x0, msg_ipa
	bl	puts
	ldr	x0, [x25, #0x48]
	bl	puthex
	adr	x0, msg_elr
	bl	puts
	mrs	x0, elr_el2
	bl	puthex
	adr	x0, msg_nl
	bl	puts
park:	wfi
	b	park

/* Prints the NUL-terminated string at x0 on the PL011. */
puts:
	ldr	x1, =UART
1:	ldrb	w2, [x0]
	add	x0, x0, #1
	cbz	w2, 3f
2:	ldr	w3, [x1, #0x18]		/* UARTFR */
	tbnz	w3, #5, 2b		/* TXFF */
	str	w2, [x1]
	b	1b
3:	ret

/* Prints x0 as 16 hex digits. */
puthex:
	ldr	x1, =UART
	mov	x4, #60
1:	lsr	x2, x0, x4
	and	x2, x2, #0xf
	add	x3, x2, #'0'
	add	x5, x2, #('a' - 10)
	cmp	x2, #10
	csel	x2, x3, x5, lo
2:	ldr	w3, [x1, #0x18]
	tbnz	w3, #5, 2b
	str	w2, [x1]
	subs	x4, x4, #4
	b.ge	1b
	ret

msg_fatal:
	.asciz	"\nFATAL: "
	.balign	32
msg_reasons:
	.asciz	"data abort without syndrome"	/* 1 */
	.balign	32
	.asciz	"unhandled data access"		/* 2 */
	.balign	32
	.asciz	"unhandled trap"		/* 3 */
	.balign	32
	.asciz	"exception in EL2"		/* 4 */
	.balign	32
msg_esr:
	.asciz	" esr 0x"
msg_far:
	.asciz	" far 0x"
msg_ipa:
	.asciz	" ipa 0x"
msg_elr:
	.asciz	" elr 0x"
msg_nl:
	.asciz	"\n"
	.balign	4
	.ltorg

/* 2. the EL1 rig's firmware: GIC, PL011, marker, EL1 reset state, ERET
 * (a local label: a branch to its global _start would be left to a
 * relocation that the flat binary drops) */
jh_reset:
	.include "jh-reset-arm64.s"
