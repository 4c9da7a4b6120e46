//! Hostile peer bytes against the receive and completion paths.
//! Run: `cargo +nightly fuzz run peer_bytes` in crates/ivnet-ring.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ivnet_ring::testing::fuzz_peer_bytes(data);
});
