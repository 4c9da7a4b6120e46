//! # ivnet-driver — the ivshmem-net driver core, `no_std`, no alloc
//!
//! Every ivshmem-net peer needs the same glue between the ring library
//! ([`ivnet_ring::Endpoint`], which decides) and its device (which acts):
//! publish RESET at start, carry out each link step (state, then carrier),
//! pick the data doorbell vector, ring at most once per flush, re-arm
//! before the final re-check, turn a peer's protocol error into a counted
//! reset with backoff, and keep a hostile peer from flooding the logs. This
//! crate is that glue, written once, in the manner of embassy-net's driver
//! channel: one generic runner ([`Driver`]) over one small platform trait
//! ([`LinkDevice`]). The bridge (`linux-uio-driver`) and the bare-metal
//! guest keep only what is theirs (TAP/epoll; smoltcp/interrupts).
//!
//! ## Module map
//!
//! | module | concern |
//! |---|---|
//! | [`device`] | [`LinkDevice`], the link-shape rule [`check_net_link`], [`data_vector`] |
//! | [`driver`] | [`Driver`], [`Counters`], [`LinkUpdate`], [`DriverConfig`] |
//! | [`profile`] | [`DeviceLink`]: `LinkDevice` for the `ivshmem` crate's Jailhouse and QEMU profiles (bare metal) |
//! | [`backoff`] | renegotiation backoff after repeated faults |
//! | [`ratelimit`] | per-kind log limiter (burst, then "N similar messages suppressed") |
//!
//! ## Public API (for platform ports)
//!
//! ```text
//! trait LinkDevice {
//!     type Error: Display;
//!     fn peer_state(&self) -> u32;                        // once: ivnet_ring::shm::load_acquire_u32
//!     fn publish_state(&mut self, LinkState) -> Result<(), Error>;  // + vector-0 doorbell
//!     fn vectors(&self) -> u32;                           // >= 2: data on vector 1, else 0
//!     fn ring(&mut self, vector: u16) -> Result<(), Error>;  // Err = refused, not counted
//!     fn rearm(&mut self);                                // before the final re-check
//!     fn now_us(&self) -> u64;                            // monotonic
//! }
//!
//! Driver::new(device, endpoint, DriverConfig::default())   // publishes nothing yet
//! driver.poll_link(interface_up) -> LinkUpdate { carrier: Option<bool>, held_us: Option<u64> }
//!     // first call publishes RESET; on every vector-0 IRQ, on a timer, and when
//!     // prepare_sleep() returns true. Apply `carrier`; re-poll by `held_us`.
//! driver.reclaim() -> usize                // TX completions
//! driver.rx_pending() -> bool
//! driver.recv(&mut buf) -> Option<usize>   // copy out + complete
//! driver.endpoint_mut()                    // rx_peek / tx_reserve / send; give every
//! driver.data_error(RingError) -> LinkUpdate   //   Err(RingError) to data_error()
//! driver.flush() -> bool                   // publish RX+TX, at most one data doorbell
//! driver.prepare_sleep() -> bool           // enable RX notify, rearm, re-check (true: don't sleep)
//! driver.take_carrier_change() -> Option<bool>  // after reclaim/rx_pending/recv/prepare_sleep
//! driver.shutdown() -> LinkUpdate          // RESET, carrier off; not a "link reset"
//! driver.counters() -> Counters            // doorbells_rung[vector], doorbells_refused,
//!     // state_writes, state_writes_refused, carrier_ups, carrier_downs, protocol_faults,
//!     // link_resets, backoff_waits, log_suppressed
//! driver.endpoint() / device() / device_mut() / data_vector() / local_state()
//!     / published_state() / peer_state_raw() / carrier() / running() / backoff_remaining_us()
//! check_net_link(protocol, max_peers, id) -> Result<(own, peer), LinkShapeError>
//! unsafe DeviceLink::new(ivshmem device, state_table: NonNull<u32>, vectors, clock: fn() -> u64)
//!     // LinkDevice for ivshmem::{JailhouseDevice, QemuDevice, Device}; QEMU with a read-only
//!     // table: QemuDevice::set_own_state_view(alias of the own entry) first
//! ```
//!
//! Drop order: the driver drops its endpoint before the device, so a
//! device that owns the mappings (UIO, host peer) may unmap them on drop.
//! Feature `serde`: `Serialize` for [`Counters`] (the bridge's JSON stats).
//!
//! Logging goes through the [`log`] facade (target `"ivnet"`), every record
//! through the limiter; the bridge maps it into `tracing`, the guest
//! implements `log::Log` over its serial port. Only real transitions are
//! logged (never "RESET -> RESET").
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod backoff;
pub mod device;
pub mod driver;
pub mod profile;
pub mod ratelimit;

pub use backoff::{Backoff, BackoffConfig, ShortLink};
pub use device::{
    DATA_VECTOR, LinkDevice, LinkShapeError, PROTOCOL_NET, STATE_VECTOR, check_net_link,
    data_vector,
};
pub use driver::{Counters, Driver, DriverConfig, LinkUpdate};
pub use profile::DeviceLink;
pub use ratelimit::{LogKind, LogLimiter, RateLimit};

#[cfg(test)]
mod tests;
