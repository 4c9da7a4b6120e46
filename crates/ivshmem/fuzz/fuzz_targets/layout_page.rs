//! The QEMU-profile layout page, as the server (or anything else with write
//! access to the window) wrote it, against an arbitrary BAR2 size: parse,
//! the volatile reader and the device probe. Checks: ../oracles.rs.
#![no_main]

#[path = "../oracles.rs"]
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracles::layout_page(data);
});
