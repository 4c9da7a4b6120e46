//! Exit codes the guest reports through QEMU's `isa-debug-exit` device.
//!
//! Writing value `v` to the device's port makes QEMU exit with status
//! `(v << 1) | 1`, so a guest can never produce status 0 and every code below
//! maps to a distinct odd status. The end-to-end tests include this file
//! (`#[path]`) so that both sides agree on the numbers; it must stay free of
//! dependencies.

/// I/O port of the `isa-debug-exit` device
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// A self-test requested on the command line passed (status 33).
    Success = 0x10,
    /// A Rust panic (status 35).
    Panic = 0x11,
    /// A page fault: a stray or forbidden access, e.g. a write to the peer's
    /// read-only output section (status 37).
    PageFault = 0x12,
    /// Any other CPU exception (status 39).
    CpuException = 0x13,
    /// The kernel command line could not be parsed (status 41).
    BadCommandLine = 0x14,
    /// No usable ivshmem device was found on the PCI bus (status 43).
    NoDevice = 0x15,
    /// The ivshmem device or its layout is unusable (status 45).
    DeviceError = 0x16,
    /// The boot environment is broken, e.g. a bad PVH start-info magic
    /// (status 47).
    BootError = 0x17,
    /// A self-test ran and found a failure (status 49).
    SelfTestFailed = 0x18,
}

impl ExitCode {
    /// Every exit code, for reverse lookups.
    pub const ALL: [ExitCode; 9] = [
        ExitCode::Success,
        ExitCode::Panic,
        ExitCode::PageFault,
        ExitCode::CpuException,
        ExitCode::BadCommandLine,
        ExitCode::NoDevice,
        ExitCode::DeviceError,
        ExitCode::BootError,
        ExitCode::SelfTestFailed,
    ];

    /// The value written to the `isa-debug-exit` port.
    pub const fn port_value(self) -> u32 {
        self as u32
    }

    /// The exit status of the QEMU process: `(value << 1) | 1`.
    pub const fn qemu_status(self) -> i32 {
        ((self as u32 as i32) << 1) | 1
    }

    /// The exit code behind a QEMU exit status, if it is one of ours.
    pub fn from_qemu_status(status: i32) -> Option<ExitCode> {
        Self::ALL.into_iter().find(|c| c.qemu_status() == status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct_and_odd() {
        for (i, a) in ExitCode::ALL.iter().enumerate() {
            assert_eq!(a.qemu_status() & 1, 1);
            assert_eq!(ExitCode::from_qemu_status(a.qemu_status()), Some(*a));
            for b in &ExitCode::ALL[i + 1..] {
                assert_ne!(a.qemu_status(), b.qemu_status());
            }
        }
        assert_eq!(ExitCode::Success.qemu_status(), 33);
        assert_eq!(ExitCode::from_qemu_status(0), None);
    }
}
