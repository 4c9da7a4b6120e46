//! Bounded fuzzing inside the normal test run: replays the checked-in
//! corpus of the `peer_bytes` fuzz target, then runs seeded random inputs
//! through the same entry point. (The coverage-guided run is
//! `cargo +nightly fuzz run peer_bytes` in crates/ivnet-ring.)

use ivnet_ring::testing::fuzz_peer_bytes;

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
    let runs = if cfg!(debug_assertions) {
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
