# The aarch64 devices ivnet's tests need, and nothing else
# (--without-default-devices). QEMU's `virt` machine selects what it needs
# to build: GICv2/GICv3 (+ v2m; the ITS too), PL011, the gpex PCIe host,
# fw_cfg, flash, PL031/PL061, virtio-mmio, ACPI, SMMUv3.
CONFIG_ARM_VIRT=y
# QEMU's ivshmem-doorbell (the QEMU profile) next to the 2.0 device.
CONFIG_IVSHMEM_DEVICE=y
CONFIG_IVSHMEM2_DEVICE=y
# -device loader: the Jailhouse-style rig sets the entry point (and may
# place the flat image) with it.
CONFIG_GENERIC_LOADER=y
