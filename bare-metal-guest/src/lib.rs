//! Platform-independent parts of the ivnet bare-metal guest.
//!
//! Everything in this library is pure logic that runs the same on the host
//! and in the guest, so it is unit-tested on the host with
//! `cargo test --lib --target x86_64-unknown-linux-gnu`. The platform code
//! (boot, paging, interrupts, devices) lives in the binary (`src/main.rs`
//! and its modules) because it only makes sense on bare metal.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod cmdline;
pub mod console_budget;
pub mod exit_code;
