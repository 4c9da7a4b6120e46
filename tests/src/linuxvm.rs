//! Building the minimal Linux guest (Debian kernel, busybox, igb_uio, ivnet-bridge) and running it in QEMU.
