//! What the `cmdline` fuzz target checks, shared by the coverage-guided
//! target (`cargo +nightly fuzz run cmdline` in bare-metal-guest) and the
//! corpus replay in the guest's host unit tests (`src/lib.rs`,
//! `fuzz_replay`). The includer provides `crate::cmdline`.
//!
//! The command line is written by whoever starts the guest (QEMU's
//! `-append`, a Jailhouse cell's command-line page): any bytes. Checks: no
//! panic; an accepted line satisfies every documented range and renders to
//! a canonical line that parses to the same configuration; a refused line
//! gets an error that quotes a piece of the line itself and renders.

use core::fmt::Write as _;

use crate::cmdline::{self, CmdlineError, Mode};

/// Whether `part` is a sub-slice of `line` (errors quote the line, not a
/// copy).
fn inside(line: &str, part: &str) -> bool {
    let (l, p) = (line.as_ptr() as usize, part.as_ptr() as usize);
    p >= l && p + part.len() <= l + line.len()
}

/// Runs the parser on the raw bytes and asserts its contract.
pub fn check(data: &[u8]) {
    let Ok(line) = core::str::from_utf8(data) else {
        // The loader glue reports NotUtf8 before the parser runs.
        assert!(!CmdlineError::NotUtf8.to_string().is_empty());
        return;
    };
    match cmdline::parse(line) {
        Ok(c) => {
            assert!((1..=32).contains(&c.ip.prefix_len));
            if let Some(mtu) = c.mtu {
                assert!((cmdline::MIN_MTU..=cmdline::MAX_MTU).contains(&mtu));
            }
            assert_eq!(c.mac.0[0] & 1, 0, "multicast MAC accepted");
            if let Some(g) = c.gateway {
                assert!(c.ip.contains(g), "gateway outside the subnet accepted");
            }
            assert!(c.ip.contains(c.ip.address));
            assert!(line.split_ascii_whitespace().count() <= 10, "a key twice");
            for p in [c.ping, c.udp_echo].into_iter().flatten() {
                assert_ne!(
                    p.target, c.ip.address,
                    "echo client of the own address accepted"
                );
                assert!(!p.target.is_multicast() && !p.target.is_broadcast());
                assert!(!p.target.is_unspecified());
                assert_ne!(Some(p.target), c.ip.broadcast());
                assert!((1..=cmdline::MAX_CLIENT_INTERVAL_MS).contains(&p.interval_ms));
                assert_ne!(p.count, Some(0));
            }

            let mut canonical = String::new();
            write!(canonical, "ip={}/{}", c.ip.address, c.ip.prefix_len).unwrap();
            if let Some(g) = c.gateway {
                write!(canonical, " gw={g}").unwrap();
            }
            let mode = match c.mode {
                Mode::Event => "event",
                Mode::Poll => "poll",
            };
            write!(
                canonical,
                " mac={} mode={mode} stats={}",
                c.mac, c.stats_interval_s
            )
            .unwrap();
            if let Some(mtu) = c.mtu {
                write!(canonical, " mtu={mtu}").unwrap();
            }
            if let Some(t) = c.selftest {
                write!(canonical, " selftest={}", t.name()).unwrap();
            }
            if c.nic == cmdline::NicKind::Virtio {
                canonical.push_str(" nic=virtio");
            }
            for (key, client) in [("ping", c.ping), ("udpecho", c.udp_echo)] {
                if let Some(p) = client {
                    write!(canonical, " {key}={},interval={}", p.target, p.interval_ms).unwrap();
                    if let Some(n) = p.count {
                        write!(canonical, ",count={n}").unwrap();
                    }
                }
            }
            assert_eq!(cmdline::parse(&canonical), Ok(c), "{canonical}");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let quoted = match e {
                CmdlineError::NotKeyValue(s)
                | CmdlineError::UnknownKey(s)
                | CmdlineError::DuplicateKey(s)
                | CmdlineError::BadIp(s)
                | CmdlineError::BadPrefixLen(s)
                | CmdlineError::BadGateway(s)
                | CmdlineError::BadMac(s)
                | CmdlineError::BadMode(s)
                | CmdlineError::BadMtu(s)
                | CmdlineError::BadStatsInterval(s)
                | CmdlineError::BadSelfTest(s)
                | CmdlineError::BadNic(s)
                | CmdlineError::BadClient(_, s)
                | CmdlineError::BadClientCount(_, s)
                | CmdlineError::BadClientInterval(_, s) => Some(s),
                CmdlineError::MissingIp => {
                    assert!(!line.contains("ip="), "ip= given but reported missing");
                    None
                }
                CmdlineError::MulticastMac(m) => {
                    assert_eq!(m.0[0] & 1, 1);
                    None
                }
                CmdlineError::GatewayOutsideSubnet(_) => None,
                CmdlineError::ClientTarget(key, t) => {
                    // Refused only once the whole line is read: exactly one
                    // `ip=` word, and the target is special or one of its
                    // subnet's own addresses.
                    assert!(line.contains(&format!("{key}=")));
                    let ip_word = line
                        .split_ascii_whitespace()
                        .find(|w| w.starts_with("ip="))
                        .expect("ping target refused without ip=");
                    let own = cmdline::parse(ip_word).expect("the ip= word parses").ip;
                    assert!(
                        t.is_unspecified()
                            || t.is_broadcast()
                            || t.is_multicast()
                            || t == own.address
                            || Some(t) == own.broadcast(),
                        "{t} refused"
                    );
                    None
                }
                CmdlineError::NotUtf8 | CmdlineError::TooLong(_) => {
                    panic!("the parser reported {e:?} for a str")
                }
            };
            if let Some(s) = quoted {
                assert!(
                    inside(line, s),
                    "error quotes {s:?}, not a piece of the line"
                );
                assert!(!s.chars().any(|c| c.is_ascii_whitespace()));
            }
        }
    }
}
