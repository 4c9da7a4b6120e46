//! Starting QEMU with the bare-metal guest and reading its serial log.
