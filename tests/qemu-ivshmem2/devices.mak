# The devices ivnet's tests need, and nothing else (--without-default-devices).
# q35 with its chipset (PCIe, LPC, ISA serial, fw_cfg DMA for -kernel/PVH).
CONFIG_Q35=y
CONFIG_SERIAL_ISA=y
# isa-debug-exit: the guests report their result through port 0xf4.
CONFIG_ISA_DEBUG=y
# QEMU's ivshmem-doorbell (the QEMU profile) next to the 2.0 device.
CONFIG_IVSHMEM_DEVICE=y
CONFIG_IVSHMEM2_DEVICE=y
# intel-iommu, for the VFIO tests in the Linux VM (issue 11 item 4).
CONFIG_VTD=y
