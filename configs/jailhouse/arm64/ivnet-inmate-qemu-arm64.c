/*
 * Jailhouse cell configuration (arm64, qemu-arm64 target): the ivnet
 * aarch64 guest as a non-root cell with an ivshmem-net link to the root
 * cell.
 *
 * Build it inside a Jailhouse source tree (configs/arm64/) like the shipped
 * demo configs; it follows configs/arm64/qemu-arm64-inmate-demo.c and
 * qemu-arm64-linux-demo.c of Jailhouse e57d1eff (config revision 14). Facts
 * with source lines: shared/reference/jailhouse-arm64-cell.md, §9.3 for the
 * choice of everything below.
 *
 * The link: the root config qemu-arm64.c already declares it, as 00:01.0
 * (domain 1) with JAILHOUSE_SHMEM_NET_REGIONS(0x7fb00000, 0), 2 peers,
 * protocol VETH (= ivshmem-net, 0x0001), INTx. This cell is peer 1: it may
 * write only output section 1 (0x7fb80000..0x7fbfefff) and reads the root's
 * output 0 (0x7fb01000..). The same (bdf, dev_id) as linux-demo and
 * zephyr-demo: run one of them, not both (the second `cell create` fails
 * with -EBUSY).
 *
 * Interrupt: INTx only (Jailhouse's arm64 ivshmem has no usable MSI-X on
 * qemu-arm64's GICv3 without ITS). 00:01.0 has pin B, so the doorbell SPI
 * is INTID 32 + vpci_irq_base + 1 = 32 + 108 + 1 = 141 (as linux-demo):
 * pin_bitmap[3] bit 13 with pin_base 32 (32 + 3 * 32 + 13 = 141). The
 * PL011's SPI (INTID 33) is not given: the guest polls the UART.
 *
 * RAM: 2 MiB of root RAM no shipped config uses (0x78000000, above the
 * root kernel's mem=768M) at guest-physical 0x40000000, so the image the
 * guest is linked for (0x40080000, the QEMU `virt` Image) loads unchanged,
 * command line included:
 *   jailhouse cell load ivnet-inmate ivnet-guest-aarch64.bin -a 0x40080000 \
 *       -s "ip=10.0.0.2/24" -a 0x40081000
 * and cpu_reset_address = 0x40080000 (byte 0 of the Image is its entry
 * branch; the zero-filled 1 KiB .cmdline buffer is at +0x1000, code starts
 * 128 KiB after it, so an overlong -s string only reaches bss).
 *
 * The guest's start path (bare-metal-guest/aarch64/src/jailhouse.rs): x0 = 0
 * at reset (no DTB) selects it. It reads the comm region at 0x80000000
 * ("JHCOMM" rev 2, else cell_state FAILED_COMM_REV): console (the PL011
 * below; divider 0, so not reprogrammed), ECAM (pci_mmconfig_base
 * 0x08e00000, bus 0 only), GICv3 (gicd 0x08000000, the redistributor of
 * its CPU found by GICR_TYPER affinity from gicr 0x080a0000, ICC_* system
 * registers), vpci_irq_base. The ivshmem 2.0 device has no MSI-X here
 * (BAR_MASK_INTX), so its doorbells come as INTx: INTID 141, edge,
 * INT_CTRL = 1 after every reset. It places BAR0 at 0x10000000 (the
 * guest's one constant, jailhouse::BAR_WINDOW_BASE): an address with no
 * region below, so the BAR handlers Jailhouse installs when Command.MEMORY
 * is set catch every access (a BAR over a mapped region would hit RAM or
 * the UART instead), and the start of QEMU virt's 32-bit PCI window, where
 * the test rig's device decodes. Every trapped MMIO access (GICD, GICR,
 * ECAM, BAR0) is a single ldr/str without writeback. It stops through
 * cell_state (SHUT_DOWN or FAILED) and WFI, never PSCI or semihosting.
 *
 * CPU 2 (root keeps CPU 0; inmate-demo uses CPU 1, linux-demo 2-3, which is
 * excluded anyway by the link). Console: the PL011 at 0x09000000, shared
 * with root (IO | ROOTSHARED), as in the demos.
 *
 * Not JAILHOUSE_CELL_PASSIVE_COMMREG: the guest answers the hypervisor's
 * messages as the x86 one does (SHUTDOWN_REQUEST: it takes the ivshmem-net
 * link to RESET, so the root cell's side sees the carrier drop at once,
 * then approves; RECONFIG_COMPLETED: RECEIVED; anything else: UNKNOWN).
 * msg_reply_timeout bounds the root CPU's wait (a loop count, not time:
 * 10^9 turns of the hypervisor's poll loop, seconds on current CPUs; the
 * guest answers within its 250 ms link tick) for a cell that cannot
 * answer, e.g. one stopped with FAILED_COMM_REV, which the hypervisor does
 * not count as terminal; on expiry the cell is suspended and marked
 * failed.
 */
#include <jailhouse/types.h>
#include <jailhouse/cell-config.h>

struct {
	struct jailhouse_cell_desc cell;
	__u64 cpus[1];
	struct jailhouse_memory mem_regions[7];
	struct jailhouse_irqchip irqchips[1];
	struct jailhouse_pci_device pci_devices[1];
} __attribute__((packed)) config = {
	.cell = {
		.signature = JAILHOUSE_CELL_DESC_SIGNATURE,
		.architecture = JAILHOUSE_ARM64,
		.revision = JAILHOUSE_CONFIG_REVISION,
		.name = "ivnet-inmate",
		.flags = 0,
		.msg_reply_timeout = 1000000000,

		.cpu_set_size = sizeof(config.cpus),
		.num_memory_regions = ARRAY_SIZE(config.mem_regions),
		.num_irqchips = ARRAY_SIZE(config.irqchips),
		.num_pci_devices = ARRAY_SIZE(config.pci_devices),

		.cpu_reset_address = 0x40080000,
		.vpci_irq_base = 108,

		.console = {
			.address = 0x09000000,
			.type = JAILHOUSE_CON_TYPE_PL011,
			.flags = JAILHOUSE_CON_ACCESS_MMIO |
				 JAILHOUSE_CON_REGDIST_4,
		},
	},

	.cpus = {
		0b0100,
	},

	.mem_regions = {
		/* ivshmem-net link, this cell is peer 1: regions 0..3 */
		JAILHOUSE_SHMEM_NET_REGIONS(0x7fb00000, 1),
		/* UART */ {
			.phys_start = 0x09000000,
			.virt_start = 0x09000000,
			.size = 0x1000,
			.flags = JAILHOUSE_MEM_READ | JAILHOUSE_MEM_WRITE |
				JAILHOUSE_MEM_IO | JAILHOUSE_MEM_ROOTSHARED,
		},
		/* RAM: 2 MiB at guest-physical 0x40000000, loaded with the image */ {
			.phys_start = 0x78000000,
			.virt_start = 0x40000000,
			.size = 0x00200000,
			.flags = JAILHOUSE_MEM_READ | JAILHOUSE_MEM_WRITE |
				JAILHOUSE_MEM_EXECUTE | JAILHOUSE_MEM_LOADABLE,
		},
		/* communication region */ {
			.virt_start = 0x80000000,
			.size = 0x00001000,
			.flags = JAILHOUSE_MEM_READ | JAILHOUSE_MEM_WRITE |
				JAILHOUSE_MEM_COMM_REGION,
		},
	},

	.irqchips = {
		/* GIC distributor: INTID 141 (ivshmem 00:01.0, pin B) */ {
			.address = 0x08000000,
			.pin_base = 32,
			.pin_bitmap = {
				0,
				0,
				0,
				1 << (141 - 32 - 3 * 32),
			},
		},
	},

	.pci_devices = {
		/* 00:01.0: ivshmem 2.0, protocol 0x0001 (ivshmem-net), INTx */ {
			.type = JAILHOUSE_PCI_TYPE_IVSHMEM,
			.domain = 1,
			.bdf = 1 << 3,
			.bar_mask = JAILHOUSE_IVSHMEM_BAR_MASK_INTX,
			.shmem_regions_start = 0,
			.shmem_dev_id = 1,
			.shmem_peers = 2,
			.shmem_protocol = JAILHOUSE_SHMEM_PROTO_VETH,
		},
	},
};
