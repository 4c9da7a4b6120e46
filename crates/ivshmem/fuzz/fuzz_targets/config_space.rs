//! An arbitrary PCI configuration space (up to 4096 bytes) as the platform
//! presents it: identification of both profiles, the capability walk, the
//! vendor capability 09h, MSI-X, BAR decoding and sizing, the Jailhouse
//! probe. Checks: ../oracles.rs.
#![no_main]

#[path = "../oracles.rs"]
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracles::config_space(data);
});
