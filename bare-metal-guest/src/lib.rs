//! Platform-independent parts of the ivnet bare-metal guest.
//!
//! Everything in this library is pure logic that runs the same on the host
//! and in the guest, so it is unit-tested on the host with
//! `cargo test --lib --target x86_64-unknown-linux-gnu`. The platform code
//! (boot, paging, interrupts, devices) lives in the binary (`src/main.rs`
//! and its modules) because it only makes sense on bare metal.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod bdf;
pub mod cmdline;
pub mod comm_region;
pub mod console_budget;
pub mod echo_client;
pub mod exit_code;
pub mod fragment_guard;

#[cfg(test)]
#[path = "../fuzz/cmdline_oracle.rs"]
mod cmdline_oracle;

#[cfg(test)]
#[path = "../fuzz/comm_region_oracle.rs"]
mod comm_region_oracle;

/// Replays the checked-in corpus of the `comm_region` fuzz target
/// (fuzz/corpus/comm_region), then seeded random headers around a valid x86
/// and a valid ARM one.
#[cfg(test)]
mod comm_region_replay {
    use super::comm_region_oracle::check;
    use crate::comm_region::{ARM_HEADER_LEN, HEADER_LEN, parse, parse_arm};

    #[test]
    fn replay_comm_region_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/comm_region");
        let (mut count, mut x86, mut arm) = (0, 0, 0);
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            check(&data);
            count += 1;
            x86 += usize::from(parse(&data).is_ok());
            arm += usize::from(parse_arm(&data).is_ok());
        }
        assert!(
            count > 0 && x86 > 0 && x86 < count && arm > 0 && arm < count,
            "corpus must reach acceptance and refusal of both layouts \
             ({count} files, {x86} x86 and {arm} ARM headers accepted)"
        );
    }

    fn mutate(base: &[u8], seed: u64) {
        let mut x = seed;
        let mut d = base.to_vec();
        for _ in 0..20_000 {
            d.copy_from_slice(base);
            for _ in 0..(x % 4) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % d.len();
                d[i] = (x >> 32) as u8;
            }
            let cut = if x.is_multiple_of(5) {
                (x >> 8) as usize % d.len()
            } else {
                d.len()
            };
            check(&d[..cut]);
        }
    }

    #[test]
    fn seeded_mutations_of_a_valid_header() {
        let mut x86 = [0u8; HEADER_LEN + 4];
        x86[..6].copy_from_slice(b"JHCOMM");
        x86[6] = 2;
        x86[0x44] = 1;
        x86[0x48] = 1;
        assert!(parse(&x86).is_ok());
        mutate(&x86, 0x9e37_79b9_7f4a_7c15);
        let mut arm = [0u8; ARM_HEADER_LEN];
        arm[..6].copy_from_slice(b"JHCOMM");
        arm[6] = 2;
        arm[0x1a] = 0x00; // console 0x09000000, PL011, divider 0
        arm[0x1b] = 0x09;
        arm[0x24] = 3;
        arm[0x3c] = 0x10; // ECAM 0x4010000000
        arm[0x40] = 3;
        arm[0x4b] = 0x08; // GICD 0x08000000
        arm[0x52] = 0x01; // GICC 0x08010000 (read with version 2)
        arm[0x53] = 0x08;
        arm[0x5a] = 0x0a; // GICR 0x080a0000
        arm[0x5b] = 0x08;
        arm[0x60] = 4;
        assert!(parse_arm(&arm).is_ok());
        mutate(&arm, 0x2545_f491_4f6c_dd1d);
    }
}

/// Replays the checked-in corpus of the `cmdline` fuzz target
/// (fuzz/corpus/cmdline) through its checks, then seeded random lines.
#[cfg(test)]
mod fuzz_replay {
    use super::cmdline_oracle::check;

    #[test]
    fn replay_cmdline_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/cmdline");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let path = entry.unwrap().path();
            eprintln!("replaying {}", path.display());
            check(&std::fs::read(&path).unwrap());
            count += 1;
        }
        assert!(count > 0, "empty corpus");
    }

    /// Lines made of the command line's own vocabulary, so that most of
    /// them get past the first word.
    #[test]
    fn seeded_random_lines() {
        const PIECES: &[&str] = &[
            "ip=",
            "gw=",
            "mac=",
            "mode=",
            "mtu=",
            "stats=",
            "selftest=",
            "ping=",
            "udpecho=",
            ",count=",
            ",interval=",
            ",",
            "10.77.0.2",
            "10.77.0.255",
            "/24",
            "/0",
            "/32",
            ".",
            ":",
            "02",
            "ff",
            "0a",
            "event",
            "poll",
            "16384",
            "68",
            "1500",
            "65536",
            "boot",
            "doorbell",
            " ",
            "\t",
            "=",
            "-1",
            "é",
        ];
        let mut seed = 0x5eed_c0de_1234_5678u64;
        for _ in 0..20_000 {
            let mut line = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut s = seed;
            for _ in 0..(s % 24) {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                line.push_str(PIECES[((s >> 33) as usize) % PIECES.len()]);
            }
            check(line.as_bytes());
        }
    }
}
