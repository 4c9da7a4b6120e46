//! The guest's command line, any bytes its loader hands over. Checks:
//! ../cmdline_oracle.rs.
#![no_main]

use ivnet_guest::cmdline;

#[path = "../cmdline_oracle.rs"]
mod cmdline_oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cmdline_oracle::check(data));
