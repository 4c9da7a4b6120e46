/*
 * Jailhouse cell configuration (x86): the ivnet bare-metal guest as a
 * non-root cell with an ivshmem-net link to the root cell.
 *
 * Build it inside a Jailhouse source tree (configs/x86/) like the shipped
 * demo configs; it follows configs/x86/ivshmem-demo.c and
 * configs/x86/linux-x86-demo.c of Jailhouse (config revision 14).
 *
 * The link: JAILHOUSE_SHMEM_NET_REGIONS(0x3f100000, 1) = 1 MiB at
 * 0x3f100000: state table (0x1000, read-only), no R/W section, output
 * section of peer 0 (the root cell, read-only here) and of peer 1 (this
 * cell, writable), 0x7f000 bytes each. The root cell must declare the same
 * link with shmem_dev_id 0 (see ivnet-root-link.c.snippet) and the same
 * BDF. Two MSI-X vectors: 0 = state change, 1 = TX/RX doorbell.
 *
 * The image: bare-metal-guest/build-images.sh builds ivnet-guest.bin, a flat
 * binary linked at 0 (16-bit entry at 0, command-line buffer at 0x1000,
 * everything below 0x100000). Load it with
 *   jailhouse cell load ivnet-inmate ivnet-guest.bin -s "ip=..." -a 0x1000
 * The test tests/tests/jailhouse_cell.rs reproduces `cell load` and
 * `cell start` with this layout in QEMU; no real Jailhouse runs in the
 * project's tests.
 *
 * Not JAILHOUSE_CELL_PASSIVE_COMMREG: the guest answers the hypervisor's
 * messages (SHUTDOWN_REQUEST: it takes the ivshmem-net link to RESET, so the
 * root cell's side sees the carrier drop at once, then approves;
 * RECONFIG_COMPLETED: RECEIVED). msg_reply_timeout bounds the root CPU's
 * wait (a loop count, not time: 10^9 turns of the hypervisor's poll loop,
 * seconds on current CPUs; the guest answers within its 250 ms link tick)
 * for a cell that cannot answer, e.g. one stopped with FAILED_COMM_REV,
 * which the hypervisor does not count as terminal; on expiry the cell is
 * suspended and marked failed. Without a timeout such a cell would make
 * `jailhouse cell shutdown/destroy` spin forever.
 */
#include <jailhouse/types.h>
#include <jailhouse/cell-config.h>

struct {
	struct jailhouse_cell_desc cell;
	__u64 cpus[1];
	struct jailhouse_memory mem_regions[6];
	struct jailhouse_pio pio_regions[1];
	struct jailhouse_pci_device pci_devices[1];
	struct jailhouse_pci_capability pci_caps[0];
} __attribute__((packed)) config = {
	.cell = {
		.signature = JAILHOUSE_CELL_DESC_SIGNATURE,
		.architecture = JAILHOUSE_X86,
		.revision = JAILHOUSE_CONFIG_REVISION,
		.name = "ivnet-inmate",
		.flags = 0,
		.msg_reply_timeout = 1000000000,

		.cpu_set_size = sizeof(config.cpus),
		.num_memory_regions = ARRAY_SIZE(config.mem_regions),
		.num_irqchips = 0,
		.num_pio_regions = ARRAY_SIZE(config.pio_regions),
		.num_pci_devices = ARRAY_SIZE(config.pci_devices),

		.console = {
			.type = JAILHOUSE_CON_TYPE_8250,
			.flags = JAILHOUSE_CON_ACCESS_PIO,
			.address = 0x3f8,
		},
	},

	/* One CPU (CPU 1); the root cell keeps CPU 0. */
	.cpus = {
		0b0010,
	},

	.mem_regions = {
		/* ivshmem-net link, this cell is peer 1: regions 0..3 */
		JAILHOUSE_SHMEM_NET_REGIONS(0x3f100000, 1),
		/* RAM: 1 MiB at guest-physical 0, loaded with the image */ {
			.phys_start = 0x3ee00000,
			.virt_start = 0,
			.size = 0x00100000,
			.flags = JAILHOUSE_MEM_READ | JAILHOUSE_MEM_WRITE |
				JAILHOUSE_MEM_EXECUTE | JAILHOUSE_MEM_LOADABLE,
		},
		/* communication region */ {
			.virt_start = 0x00100000,
			.size = 0x00001000,
			.flags = JAILHOUSE_MEM_READ | JAILHOUSE_MEM_WRITE |
				JAILHOUSE_MEM_COMM_REGION,
		},
	},

	/*
	 * Every port the guest uses in a cell: COM1. PCI configuration
	 * (0xcf8/0xcfc, 32-bit) and the ACPI PM timer (pm_timer_address) need
	 * no entry; the guest touches no PIT, PIC, port 0x61 or 0xf4 there.
	 */
	.pio_regions = {
		PIO_RANGE(0x3f8, 8), /* serial console */
	},

	.pci_devices = {
		/* ivshmem 2.0, protocol 0x0001 (virtual peer-to-peer Ethernet) */ {
			.type = JAILHOUSE_PCI_TYPE_IVSHMEM,
			.domain = 0x0000,
			.bdf = 0x100 | (0x0f << 3),	/* 01:0f.0, as the root cell */
			.bar_mask = JAILHOUSE_IVSHMEM_BAR_MASK_MSIX,
			.num_msix_vectors = 2,
			.shmem_regions_start = 0,
			.shmem_dev_id = 1,
			.shmem_peers = 2,
			.shmem_protocol = JAILHOUSE_SHMEM_PROTO_VETH,
		},
	},
};
