//! What the `comm_region` fuzz target checks, shared by the coverage-guided
//! target (`cargo +nightly fuzz run comm_region` in bare-metal-guest) and
//! the corpus replay in the guest's host unit tests (`src/lib.rs`). The
//! includer provides `crate::comm_region`.
//!
//! The comm region is written by the hypervisor: any bytes as far as the
//! guest is concerned. Input: the header bytes, then (if at least four more
//! bytes follow) a `msg_to_cell` value. Checks: no panic; an accepted header
//! has the signature and revision and a timer source that matches its
//! fields (rates only when both are nonzero, else a nonzero PM timer port);
//! a refusal names the first reason in order (length, signature, revision,
//! clock); every message gets exactly the documented action.

use crate::comm_region::{
    self, ABI_REVISION, Action, CommError, HEADER_LEN, REPLY_RECEIVED, REPLY_UNKNOWN, SIGNATURE,
    TimerSource,
};

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Checks one input (see the module doc).
pub fn check(data: &[u8]) {
    let header = &data[..data.len().min(HEADER_LEN)];
    match comm_region::parse(header) {
        Ok(info) => {
            assert!(header.len() == HEADER_LEN);
            assert_eq!(header[..6], SIGNATURE);
            assert_eq!(le16(header, 6), ABI_REVISION);
            assert_eq!(info.tsc_khz, le32(header, 0x44));
            assert_eq!(info.apic_khz, le32(header, 0x48));
            assert_eq!(info.pm_timer_port, le16(header, 0x40));
            assert_eq!(info.num_cpus, le16(header, 0x42));
            match info.timer {
                TimerSource::Rates { tsc_khz, apic_khz } => {
                    assert!(tsc_khz != 0 && apic_khz != 0);
                    assert_eq!((tsc_khz, apic_khz), (info.tsc_khz, info.apic_khz));
                }
                TimerSource::PmTimer(port) => {
                    assert!(info.tsc_khz == 0 || info.apic_khz == 0);
                    assert!(port != 0 && port == info.pm_timer_port);
                }
            }
        }
        Err(CommError::Short(n)) => assert!(n == header.len() && n < HEADER_LEN),
        Err(CommError::Signature(s)) => {
            assert!(header.len() == HEADER_LEN && s != SIGNATURE && header[..6] == s)
        }
        Err(CommError::Revision(r)) => {
            assert!(header[..6] == SIGNATURE && r != ABI_REVISION && r == le16(header, 6))
        }
        Err(CommError::NoTimer) => {
            assert!((le32(header, 0x44) == 0 || le32(header, 0x48) == 0) && le16(header, 0x40) == 0)
        }
    }
    if let Some(m) = data.get(HEADER_LEN..HEADER_LEN + 4) {
        let msg = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        let want = match msg {
            0 => Action::Nothing,
            1 => Action::ShutDown,
            2 => Action::Reply(REPLY_RECEIVED),
            _ => Action::Reply(REPLY_UNKNOWN),
        };
        assert_eq!(comm_region::action_for(msg), want);
    }
}
