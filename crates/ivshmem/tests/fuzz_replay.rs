//! Bounded fuzzing inside the normal test run: replays the checked-in
//! corpora of the `layout_page` and `config_space` fuzz targets through the
//! same checks (fuzz/oracles.rs), then seeded random inputs and mutations
//! of valid images. The coverage-guided runs are
//! `cargo +nightly fuzz run layout_page` / `config_space` in crates/ivshmem.

#[path = "../fuzz/oracles.rs"]
mod oracles;

mod common;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8]) -> oracles::Outcome) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let (mut count, mut probed) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // Name the input that fails.
        eprintln!("replaying {}", path.display());
        probed += usize::from(check(&data).probed);
        count += 1;
    }
    // The corpus reaches both sides, so the checks on accepted results run.
    assert!(
        probed > 0 && probed < count,
        "{probed} of {count} inputs in {} pass the probe",
        dir.display()
    );
}

#[test]
fn replay_layout_page_corpus() {
    replay("layout_page", oracles::layout_page);
}

#[test]
fn replay_config_space_corpus() {
    replay("config_space", oracles::config_space);
}

/// xorshift64: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Valid images with a few bytes changed reach the deep paths that random
/// bytes rarely do.
#[test]
fn seeded_mutations() {
    let mut rng = Rng(0x1f0c_5eed_d00d_cafe);
    let jailhouse = common::jailhouse_net().0;
    let qemu = common::qemu_doorbell(2).0;
    let page = ivshmem::LayoutPage::new(0x0001, 2, 2, 0x1000, 0, 0x7f000).encode();
    for _ in 0..2000 {
        // config_space: 24 parameter bytes (2 peers, ID 0 or 1, a window),
        // then one of the two images with up to 8 bytes changed.
        let mut input = Vec::new();
        input.extend_from_slice(&2u32.to_le_bytes());
        input.extend_from_slice(&((rng.next() % 3) as u32).to_le_bytes());
        input.extend_from_slice(&0x10_0000u64.to_le_bytes());
        input.extend_from_slice(&rng.bytes(8));
        let mut image = if rng.next().is_multiple_of(2) {
            jailhouse
        } else {
            qemu
        };
        for _ in 0..rng.next() % 8 {
            image[(rng.next() % 256) as usize] = rng.next() as u8;
        }
        input.extend_from_slice(&image);
        oracles::config_space(&input);

        let mut page = page;
        for _ in 0..rng.next() % 4 {
            page[(rng.next() % 0x30) as usize] = rng.next() as u8;
        }
        let mut input = page.to_vec();
        input.extend_from_slice(&(0x1000u64 << (rng.next() % 12)).to_le_bytes());
        input.extend_from_slice(&((rng.next() % 3) as u32).to_le_bytes());
        oracles::layout_page(&input);
    }
}

#[test]
fn seeded_random_inputs() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..2000 {
        let len = (rng.next() % 300) as usize;
        let data = rng.bytes(len);
        oracles::layout_page(&data);
        oracles::config_space(&data);
    }
}
