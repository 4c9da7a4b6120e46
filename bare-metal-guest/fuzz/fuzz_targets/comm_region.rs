//! The Jailhouse comm region header and message, any bytes the hypervisor
//! could leave there. Checks: ../comm_region_oracle.rs.
#![no_main]

use ivnet_guest::comm_region;

#[path = "../comm_region_oracle.rs"]
mod comm_region_oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| comm_region_oracle::check(data));
