//! Bounded fuzzing inside the normal test run: replays the checked-in
//! corpus of the `peer_bytes` fuzz target, then runs seeded random inputs
//! through the same entry point. (The coverage-guided run is
//! `cargo +nightly fuzz run peer_bytes` in crates/ivnet-ring/fuzz.)
//!
//! Meant to run with debug assertions (`cargo test -p ivnet-ring --test
//! fuzz_replay`, no `--release`): the bounds `debug_assert!`s on the
//! crate-private unchecked accessors are then an oracle on top of the
//! release-mode checks. It also runs under Miri (`cargo +nightly miri test
//! -p ivnet-ring --test fuzz_replay`), which checks every shared-memory
//! access for undefined behaviour. Miri is ~1000x slower and isolates the
//! test from the file system, so under Miri a fixed subset of the corpus is
//! compiled in (`MIRI_SUBSET`, chosen to span the corpus's input sizes) and
//! fewer random inputs run; the whole corpus runs everywhere else.

use ivnet_ring::testing::fuzz_peer_bytes;

/// The corpus inputs replayed under Miri: every 40th file by size, largest
/// first (282 down to 1 byte).
#[cfg(miri)]
const MIRI_SUBSET: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/peer_bytes/7a48a37c81005d52826fc200a7064a78f8def55d"),
    include_bytes!("../fuzz/corpus/peer_bytes/d64e0fe1a108c3c2e81d5480c4a4fd12985233f2"),
    include_bytes!("../fuzz/corpus/peer_bytes/12682d3b32ec7e9976d32b3d41eeb97914e948af"),
    include_bytes!("../fuzz/corpus/peer_bytes/dfdba1ab50af6bca56af9824305168e755ac78eb"),
    include_bytes!("../fuzz/corpus/peer_bytes/71f6543c3a89b0709335ec235ee6848127d815ff"),
    include_bytes!("../fuzz/corpus/peer_bytes/6de658f8dea331bdd8b3acaea2272ee6aabef5a1"),
    include_bytes!("../fuzz/corpus/peer_bytes/17c7d89515a3173b6aaa39efebd48ad576781547"),
    include_bytes!("../fuzz/corpus/peer_bytes/9f603b51fd38b4fd75a859bdf669bc22d602ebcb"),
    include_bytes!("../fuzz/corpus/peer_bytes/c2d0a6efa6e11c69aa179959c0264d97f4ce8b8a"),
    include_bytes!("../fuzz/corpus/peer_bytes/f79c6fe623eb85580f653061e3b0e9302fcb3eac"),
    include_bytes!("../fuzz/corpus/peer_bytes/d6cf51340b58fe6fe88b42626d4401c92de7ca72"),
    include_bytes!("../fuzz/corpus/peer_bytes/a2ba7e3f2c2aa6f7e7590565804b13e8b0dc8b82"),
    include_bytes!("../fuzz/corpus/peer_bytes/3bc15c8aae3e4124dd409035f32ea2fd6835efc9"),
];

#[cfg(miri)]
#[test]
fn replay_corpus() {
    for data in MIRI_SUBSET {
        fuzz_peer_bytes(data);
    }
}

#[cfg(not(miri))]
#[test]
fn replay_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/peer_bytes");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        fuzz_peer_bytes(&data);
        count += 1;
    }
    assert!(count > 0, "empty corpus");
}

#[test]
fn seeded_random_inputs() {
    let mut seed = 0xdead_beef_cafe_f00du64;
    let runs = if cfg!(miri) {
        64
    } else if cfg!(debug_assertions) {
        3_000
    } else {
        30_000
    };
    for _ in 0..runs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 512) as usize;
        let mut s = seed;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect();
        fuzz_peer_bytes(&data);
    }
}
