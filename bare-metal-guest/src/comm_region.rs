//! The Jailhouse communication region as the inmate reads it, pure: the
//! header check, the timer source and the message protocol. The hypervisor
//! writes the page; `platform.rs` copies the header out with volatile reads
//! and carries out what these functions decide, so the decisions are
//! host-tested and fuzzed (`fuzz/fuzz_targets/comm_region.rs`).
//!
//! Layout (Jailhouse `COMM_REGION_GENERIC_HEADER` plus the x86 part, packed,
//! little-endian):
//!
//! | offset | field |
//! |---:|---|
//! | 0x00 | signature `"JHCOMM"` |
//! | 0x06 | ABI revision (u16, 2) |
//! | 0x08 | `cell_state` (u32, written by the cell) |
//! | 0x0c | `msg_to_cell` (u32) |
//! | 0x10 | `reply_from_cell` (u32, written by the cell) |
//! | 0x40 | `pm_timer_address` (u16, an I/O port) |
//! | 0x42 | `num_cpus` (u16) |
//! | 0x44 | `tsc_khz` (u32) |
//! | 0x48 | `apic_khz` (u32) |

use core::fmt;

/// `COMM_REGION_MAGIC`.
pub const SIGNATURE: [u8; 6] = *b"JHCOMM";
/// `COMM_REGION_ABI_REVISION`.
pub const ABI_REVISION: u16 = 2;

/// Offset of the ABI revision.
pub const OFF_REVISION: usize = 0x06;
/// Offset of `cell_state`.
pub const OFF_CELL_STATE: usize = 0x08;
/// Offset of `msg_to_cell`.
pub const OFF_MSG_TO_CELL: usize = 0x0c;
/// Offset of `reply_from_cell`.
pub const OFF_REPLY_FROM_CELL: usize = 0x10;
const OFF_PM_TIMER_ADDRESS: usize = 0x40;
const OFF_NUM_CPUS: usize = 0x42;
const OFF_TSC_KHZ: usize = 0x44;
const OFF_APIC_KHZ: usize = 0x48;
/// Bytes of the header [`parse`] reads.
pub const HEADER_LEN: usize = 0x4c;

// Messages to the cell and replies (include/jailhouse/hypercall.h).
const MSG_NONE: u32 = 0;
const MSG_SHUTDOWN_REQUEST: u32 = 1;
const MSG_RECONFIG_COMPLETED: u32 = 2;
/// `JAILHOUSE_MSG_UNKNOWN`.
pub const REPLY_UNKNOWN: u32 = 1;
/// `JAILHOUSE_MSG_REQUEST_APPROVED`.
pub const REPLY_REQUEST_APPROVED: u32 = 3;
/// `JAILHOUSE_MSG_RECEIVED`.
pub const REPLY_RECEIVED: u32 = 4;

/// Where the guest's clocks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerSource {
    /// The rates the hypervisor measured (both nonzero).
    Rates {
        /// TSC frequency.
        tsc_khz: u32,
        /// Local APIC timer input frequency.
        apic_khz: u32,
    },
    /// Calibrate against the ACPI PM timer at this I/O port.
    PmTimer(u16),
}

/// What the comm region says about the cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommInfo {
    /// CPUs of the cell.
    pub num_cpus: u16,
    /// `tsc_khz` as published (0: not measured).
    pub tsc_khz: u32,
    /// `apic_khz` as published (0: not measured).
    pub apic_khz: u32,
    /// `pm_timer_address` (0: none).
    pub pm_timer_port: u16,
    /// The clock source these give.
    pub timer: TimerSource,
}

/// Why the comm region is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Short(usize),
    /// Not `"JHCOMM"`.
    Signature([u8; 6]),
    /// Another ABI revision (Jailhouse's inmates stop with FAILED_COMM_REV).
    Revision(u16),
    /// Neither timer rates nor a PM timer: the guest has no clock.
    NoTimer,
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::Short(n) => write!(f, "comm region header is {n} bytes, need {HEADER_LEN}"),
            CommError::Signature(s) => write!(f, "signature {s:02x?}, expected \"JHCOMM\""),
            CommError::Revision(r) => write!(f, "ABI revision {r}, expected {ABI_REVISION}"),
            CommError::NoTimer => {
                write!(f, "no tsc_khz/apic_khz and no pm_timer_address: no clock")
            }
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Checks the header copied out of the comm region and reads what the
/// guest needs from it.
pub fn parse(header: &[u8]) -> Result<CommInfo, CommError> {
    if header.len() < HEADER_LEN {
        return Err(CommError::Short(header.len()));
    }
    let mut signature = [0u8; 6];
    signature.copy_from_slice(&header[..6]);
    if signature != SIGNATURE {
        return Err(CommError::Signature(signature));
    }
    let revision = u16_at(header, OFF_REVISION);
    if revision != ABI_REVISION {
        return Err(CommError::Revision(revision));
    }
    let tsc_khz = u32_at(header, OFF_TSC_KHZ);
    let apic_khz = u32_at(header, OFF_APIC_KHZ);
    let pm_timer_port = u16_at(header, OFF_PM_TIMER_ADDRESS);
    let timer = if tsc_khz != 0 && apic_khz != 0 {
        TimerSource::Rates { tsc_khz, apic_khz }
    } else if pm_timer_port != 0 {
        TimerSource::PmTimer(pm_timer_port)
    } else {
        return Err(CommError::NoTimer);
    };
    Ok(CommInfo {
        num_cpus: u16_at(header, OFF_NUM_CPUS),
        tsc_khz,
        apic_khz,
        pm_timer_port,
        timer,
    })
}

/// What to do about `msg_to_cell`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No message pending.
    Nothing,
    /// SHUTDOWN_REQUEST: take the link down, reply REQUEST_APPROVED, halt.
    ShutDown,
    /// Reply this and go on (RECEIVED for RECONFIG_COMPLETED, UNKNOWN for
    /// anything else).
    Reply(u32),
}

/// The answer to a message (the cell config is not passive, so the
/// hypervisor waits for it).
pub fn action_for(msg: u32) -> Action {
    match msg {
        MSG_NONE => Action::Nothing,
        MSG_SHUTDOWN_REQUEST => Action::ShutDown,
        MSG_RECONFIG_COMPLETED => Action::Reply(REPLY_RECEIVED),
        _ => Action::Reply(REPLY_UNKNOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header(revision: u16, tsc: u32, apic: u32, pm: u16) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..6].copy_from_slice(&SIGNATURE);
        h[OFF_REVISION..OFF_REVISION + 2].copy_from_slice(&revision.to_le_bytes());
        h[OFF_NUM_CPUS..OFF_NUM_CPUS + 2].copy_from_slice(&1u16.to_le_bytes());
        h[OFF_TSC_KHZ..OFF_TSC_KHZ + 4].copy_from_slice(&tsc.to_le_bytes());
        h[OFF_APIC_KHZ..OFF_APIC_KHZ + 4].copy_from_slice(&apic.to_le_bytes());
        h[OFF_PM_TIMER_ADDRESS..OFF_PM_TIMER_ADDRESS + 2].copy_from_slice(&pm.to_le_bytes());
        h
    }

    #[test]
    fn header_checks_and_timer_source() {
        let ok = parse(&header(2, 2_000_000, 1_000_000, 0x408)).unwrap();
        assert_eq!(
            ok.timer,
            TimerSource::Rates {
                tsc_khz: 2_000_000,
                apic_khz: 1_000_000
            }
        );
        assert_eq!(
            parse(&header(2, 0, 1_000_000, 0x408)).unwrap().timer,
            TimerSource::PmTimer(0x408)
        );
        assert_eq!(parse(&header(2, 0, 0, 0)), Err(CommError::NoTimer));
        assert_eq!(parse(&header(1, 1, 1, 1)), Err(CommError::Revision(1)));
        let mut bad = header(2, 1, 1, 1);
        bad[0] = b'X';
        assert!(matches!(parse(&bad), Err(CommError::Signature(_))));
        assert_eq!(parse(&bad[..10]), Err(CommError::Short(10)));
    }

    #[test]
    fn messages() {
        assert_eq!(action_for(0), Action::Nothing);
        assert_eq!(action_for(1), Action::ShutDown);
        assert_eq!(action_for(2), Action::Reply(REPLY_RECEIVED));
        assert_eq!(action_for(7), Action::Reply(REPLY_UNKNOWN));
    }
}
