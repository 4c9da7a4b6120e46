//! What the `comm_region` fuzz target checks, shared by the coverage-guided
//! target (`cargo +nightly fuzz run comm_region` in bare-metal-guest) and
//! the corpus replay in the guest's host unit tests (`src/lib.rs`). The
//! includer provides `crate::comm_region`.
//!
//! The comm region is written by the hypervisor: any bytes as far as the
//! guest is concerned. Input: the header bytes, then (if at least four more
//! bytes follow the x86 header) a `msg_to_cell` value. The same bytes are
//! read as the x86 header (`parse`, the first 0x4c bytes) and as the ARM
//! header (`parse_arm`, the first 0x64 bytes). Checks: no panic; an
//! accepted header has the signature and revision and reports exactly its
//! fields (x86: a timer source that matches them, rates only when both are
//! nonzero, else a nonzero PM timer port; ARM: GIC version 2 or 3 with
//! nonzero page-aligned bases, a 1 MiB-aligned or absent ECAM, the console
//! choice the documented rule gives); a refusal names the first reason in
//! order (length, signature, revision, then clock or GIC version, GIC
//! bases, ECAM); the INTx INTID of every pin follows `32 + base + pin - 1`
//! within the SPI range; every message gets exactly the documented action.

use crate::comm_region::{
    self, ABI_REVISION, ARM_HEADER_LEN, Action, ArmCommError, CommError, ConsoleChoice, Gic,
    HEADER_LEN, REPLY_RECEIVED, REPLY_UNKNOWN, SIGNATURE, TimerSource, cell_state,
};

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | u64::from(le32(b, o + 4)) << 32
}

/// The generic header's refusal for `header` of at least `len` bytes.
fn check_header_error(e: CommError, header: &[u8], len: usize) {
    match e {
        CommError::Short(n) => assert!(n == header.len() && n < len),
        CommError::Signature(s) => {
            assert!(header.len() >= len && s != SIGNATURE && header[..6] == s)
        }
        CommError::Revision(r) => {
            assert!(header[..6] == SIGNATURE && r != ABI_REVISION && r == le16(header, 6))
        }
        CommError::NoTimer => {
            assert!(len == HEADER_LEN);
            assert!((le32(header, 0x44) == 0 || le32(header, 0x48) == 0) && le16(header, 0x40) == 0)
        }
    }
}

fn check_x86(data: &[u8]) {
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
        Err(e) => check_header_error(e, header, HEADER_LEN),
    }
}

fn good_base(a: u64) -> bool {
    a != 0 && a.is_multiple_of(0x1000)
}

fn check_arm(data: &[u8]) {
    let header = &data[..data.len().min(ARM_HEADER_LEN)];
    match comm_region::parse_arm(header) {
        Ok(info) => {
            assert!(header.len() == ARM_HEADER_LEN);
            assert_eq!(header[..6], SIGNATURE);
            assert_eq!(le16(header, 6), ABI_REVISION);
            assert_eq!(info.flags, le32(header, 0x14));
            assert_eq!(info.console.address, le64(header, 0x18));
            assert_eq!(info.console.size, le32(header, 0x20));
            assert_eq!(info.console.kind, le16(header, 0x24));
            assert_eq!(info.console.flags, le16(header, 0x26));
            assert_eq!(info.console.divider, le32(header, 0x28));
            let ecam = le64(header, 0x38);
            assert!(ecam.is_multiple_of(0x10_0000));
            assert_eq!(info.pci_mmconfig_base, (ecam != 0).then_some(ecam));
            let (gicd, gicc, gicr) = (le64(header, 0x48), le64(header, 0x50), le64(header, 0x58));
            match info.gic {
                Gic::V2 { gicd: d, gicc: c } => {
                    assert_eq!((header[0x40], d, c), (2, gicd, gicc));
                    assert!(good_base(d) && good_base(c));
                }
                Gic::V3 { gicd: d, gicr: r } => {
                    assert_eq!((header[0x40], d, r), (3, gicd, gicr));
                    assert!(good_base(d) && good_base(r));
                }
            }
            assert_eq!(info.vpci_irq_base, le32(header, 0x60));
            let c = info.console;
            let want = if c.kind == 3 && c.address != 0 && c.address % 4 == 0 {
                ConsoleChoice::Pl011 {
                    base: c.address,
                    divider: c.divider,
                }
            } else if info.flags & 1 != 0 {
                ConsoleChoice::Hypercall
            } else {
                ConsoleChoice::None
            };
            assert_eq!(info.console_choice(), want);
            for pin in 0..=5u8 {
                let got = comm_region::intx_intid(info.vpci_irq_base, pin);
                let want = 32u64 + u64::from(info.vpci_irq_base) + u64::from(pin);
                match got {
                    Some(intid) => {
                        assert!((1..=4).contains(&pin));
                        assert_eq!(u64::from(intid) + 1, want);
                        assert!((32..1020).contains(&intid));
                    }
                    None => assert!(!(1..=4).contains(&pin) || want > 1020),
                }
            }
        }
        Err(e) => {
            let state = e.cell_state();
            match e {
                ArmCommError::Header(h) => {
                    assert_eq!(state, cell_state::FAILED_COMM_REV);
                    check_header_error(h, header, ARM_HEADER_LEN);
                }
                ArmCommError::GicVersion(v) => {
                    assert_eq!(state, cell_state::FAILED);
                    assert!(v == header[0x40] && v != 2 && v != 3);
                }
                ArmCommError::BadGicBase { which, address } => {
                    assert_eq!(state, cell_state::FAILED);
                    let gicd = le64(header, 0x48);
                    let (off, version) = match which {
                        "gicd_base" => (0x48, header[0x40]),
                        "gicc_base" => (0x50, 2),
                        "gicr_base" => (0x58, 3),
                        other => panic!("unknown base {other}"),
                    };
                    assert!(header[0x40] == version || off == 0x48);
                    assert!(matches!(header[0x40], 2 | 3));
                    assert!(off == 0x48 || good_base(gicd));
                    assert!(address == le64(header, off) && !good_base(address));
                }
                ArmCommError::BadEcam(a) => {
                    assert_eq!(state, cell_state::FAILED);
                    assert!(a == le64(header, 0x38) && !a.is_multiple_of(0x10_0000));
                }
            }
        }
    }
}

/// Checks one input (see the module doc).
pub fn check(data: &[u8]) {
    check_x86(data);
    check_arm(data);
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
