// SPDX-License-Identifier: GPL-2.0
/*
 * uio_ivshmem_doorbell - UIO driver for QEMU's ivshmem-doorbell device
 * (PCI 1af4:1110, revision 1) that delivers every MSI-X vector, written for
 * ivnet's Linux test guest (tests/linux-vm, built by tests/src/linuxvm.rs).
 *
 * Why not igb_uio (Debian's dpdk-kmods-dkms): it enables exactly one MSI-X
 * vector (pci_alloc_irq_vectors(dev, 1, 1, PCI_IRQ_MSIX)). ivshmem-net rings
 * state changes on vector 0 and data on vector 1; with igb_uio the table
 * entry of vector 1 stays masked, QEMU only sets its pending bit, and data
 * doorbells never reach user space (measured in this guest: three vector-0
 * doorbells gave UIO events 1..3, three vector-1 doorbells gave none). Why
 * not VFIO: Debian's kernel has no CONFIG_VFIO_NOIOMMU, and the VM has no
 * IOMMU. uio_pci_generic is INTx-only, and ivshmem-doorbell drops doorbells
 * unless MSI-X is enabled.
 *
 * The user-space contract is the one of Jailhouse's uio_ivshmem (the driver
 * ivnet-bridge meets in a Jailhouse cell), so the bridge's UIO path is
 * exercised the same way:
 *
 *   map0 "BAR0"      registers (IntrMask, IntrStatus, IVPosition, Doorbell),
 *                    mapped uncached; one page (see the BAR0 check)
 *   map1 "BAR2"      the whole shared-memory window, mapped cached
 *                    (UIO_MEM_IOVA: it is RAM on the host side)
 *   read()/poll()    wait for an interrupt on any vector; read() returns the
 *                    event count, all vectors coalesced
 *   write(u32 1|0)   irqcontrol: enable/disable all vectors. MSI-X is edge
 *                    triggered, so nothing must be re-armed after an event;
 *                    one that arrives while disabled stays pending in the
 *                    kernel (lazy disable) and is delivered on enable.
 */

#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/uio_driver.h>

#define DRV_NAME "uio_ivshmem_doorbell"

struct ivshmem_uio {
	struct uio_info info;
	struct pci_dev *pdev;
	int vectors;
	bool enabled;
	struct mutex lock; /* serialises irqcontrol */
};

static irqreturn_t ivshmem_uio_interrupt(int irq, void *data)
{
	struct ivshmem_uio *dev = data;

	uio_event_notify(&dev->info);
	return IRQ_HANDLED;
}

static int ivshmem_uio_irqcontrol(struct uio_info *info, s32 on)
{
	struct ivshmem_uio *dev = container_of(info, struct ivshmem_uio, info);
	int i;

	mutex_lock(&dev->lock);
	if (on && !dev->enabled) {
		for (i = 0; i < dev->vectors; i++)
			enable_irq(pci_irq_vector(dev->pdev, i));
	} else if (!on && dev->enabled) {
		for (i = 0; i < dev->vectors; i++)
			disable_irq(pci_irq_vector(dev->pdev, i));
	}
	dev->enabled = !!on;
	mutex_unlock(&dev->lock);
	return 0;
}

static int ivshmem_uio_probe(struct pci_dev *pdev,
			     const struct pci_device_id *id)
{
	struct ivshmem_uio *dev;
	int err, i, vectors;

	if (pdev->revision != 1) {
		dev_err(&pdev->dev, "revision %u: only ivshmem-doorbell revision 1 is supported\n",
			pdev->revision);
		return -ENODEV;
	}
	dev = devm_kzalloc(&pdev->dev, sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	dev->pdev = pdev;
	mutex_init(&dev->lock);

	/* Everything below is device-managed: undone on unbind in reverse. */
	err = pcim_enable_device(pdev);
	if (err)
		return err;
	err = pci_request_regions(pdev, DRV_NAME);
	if (err)
		return err;
	if (!pci_resource_len(pdev, 0) || !pci_resource_len(pdev, 2)) {
		dev_err(&pdev->dev, "BAR0 or BAR2 is missing\n");
		return -ENODEV;
	}
	/*
	 * The UIO core refuses an mmap larger than the map, and a mapping is
	 * at least a page, so QEMU's 256-byte BAR0 could never be mapped.
	 * "pci=resource_alignment=12@pci:1af4:1110" makes the PCI core size
	 * the resource up to a page of its own (no other BAR shares it).
	 */
	if (pci_resource_len(pdev, 0) < PAGE_SIZE ||
	    !PAGE_ALIGNED(pci_resource_start(pdev, 0))) {
		dev_err(&pdev->dev,
			"BAR0 %pR is not a whole page: boot with pci=resource_alignment=12@pci:1af4:1110\n",
			&pdev->resource[0]);
		return -ENODEV;
	}

	vectors = pci_msix_vec_count(pdev);
	if (vectors <= 0) {
		/* ivshmem-plain: no MSI-X, and doorbells need MSI-X. */
		dev_err(&pdev->dev, "no MSI-X capability (ivshmem-plain?): nothing to deliver\n");
		return -ENODEV;
	}
	vectors = pci_alloc_irq_vectors(pdev, vectors, vectors, PCI_IRQ_MSIX);
	if (vectors < 0)
		return vectors;
	dev->vectors = vectors;
	for (i = 0; i < vectors; i++) {
		err = devm_request_irq(&pdev->dev, pci_irq_vector(pdev, i),
				       ivshmem_uio_interrupt, 0, DRV_NAME, dev);
		if (err)
			return err;
	}
	dev->enabled = true;
	/* MSI-X messages are memory writes: bus mastering must be on. */
	pci_set_master(pdev);

	dev->info.name = DRV_NAME;
	dev->info.version = "1";
	dev->info.irq = UIO_IRQ_CUSTOM;
	dev->info.irqcontrol = ivshmem_uio_irqcontrol;
	dev->info.mem[0].name = "BAR0";
	dev->info.mem[0].addr = pci_resource_start(pdev, 0);
	dev->info.mem[0].size = pci_resource_len(pdev, 0);
	dev->info.mem[0].memtype = UIO_MEM_PHYS;
	dev->info.mem[1].name = "BAR2";
	dev->info.mem[1].addr = pci_resource_start(pdev, 2);
	dev->info.mem[1].size = pci_resource_len(pdev, 2);
	dev->info.mem[1].memtype = UIO_MEM_IOVA;
	err = devm_uio_register_device(&pdev->dev, &dev->info);
	if (err)
		return err;
	pci_set_drvdata(pdev, dev);
	dev_info(&pdev->dev, "%d MSI-X vectors, shared memory %pR\n", vectors,
		 &pdev->resource[2]);
	return 0;
}

/*
 * No ID table: the init script binds the device explicitly through
 * /sys/bus/pci/drivers/uio_ivshmem_doorbell/new_id.
 */
static struct pci_driver ivshmem_uio_driver = {
	.name = DRV_NAME,
	.probe = ivshmem_uio_probe,
};
module_pci_driver(ivshmem_uio_driver);

MODULE_DESCRIPTION("UIO driver for QEMU ivshmem-doorbell with all MSI-X vectors (ivnet test guest)");
MODULE_LICENSE("GPL");
