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
pub mod exit_code;
pub mod ping;

#[cfg(test)]
#[path = "../fuzz/cmdline_oracle.rs"]
mod cmdline_oracle;

#[cfg(test)]
#[path = "../fuzz/comm_region_oracle.rs"]
mod comm_region_oracle;

/// Replays the checked-in corpus of the `comm_region` fuzz target
/// (fuzz/corpus/comm_region), then seeded random headers around the valid
/// one.
#[cfg(test)]
mod comm_region_replay {
    use super::comm_region_oracle::check;

    #[test]
    fn replay_comm_region_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/comm_region");
        let (mut count, mut accepted) = (0, 0);
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            check(&data);
            count += 1;
            accepted += usize::from(crate::comm_region::parse(&data).is_ok());
        }
        assert!(
            count > 0 && accepted > 0 && accepted < count,
            "corpus must reach acceptance and refusal"
        );
    }

    #[test]
    fn seeded_mutations_of_a_valid_header() {
        let mut base = [0u8; crate::comm_region::HEADER_LEN + 4];
        base[..6].copy_from_slice(b"JHCOMM");
        base[6] = 2;
        base[0x44] = 1;
        base[0x48] = 1;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut d = base;
            for _ in 0..(x % 4) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                d[(x as usize) % d.len()] = (x >> 32) as u8;
            }
            let cut = if x % 5 == 0 {
                (x >> 8) as usize % d.len()
            } else {
                d.len()
            };
            check(&d[..cut]);
        }
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
