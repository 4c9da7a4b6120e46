//! # ivnet-ring — the ivshmem-net ring protocol, `no_std`, sans-IO
//!
//! Two partitions share a memory window laid out by ivshmem 2.0: a state
//! table, then one *output section* per peer. Each peer writes only its own
//! section and reads the other's. ivshmem-net (Jailhouse's "virtual
//! peer-to-peer Ethernet", PCI protocol 0x0001) turns the two sections into
//! an Ethernet link; this crate implements that protocol bit for bit, so it
//! interoperates with the Linux, Zephyr and NuttX drivers.
//!
//! ## The protocol in one picture
//!
//! ```text
//!        peer A's output section                     peer B's output section
//!  ┌──────────────────────────────────┐      ┌──────────────────────────────────┐
//!  │ desc[] + avail  (A's TX queue)   │ ───► │ read by B (B's RX queue)         │
//!  │ used + avail_event (A's RX queue)│ ◄─── │ desc[] + avail  (B's TX queue)   │
//!  │ data area: A's TX frame slots    │      │ data area: B's TX frame slots    │
//!  └──────────────────────────────────┘      └──────────────────────────────────┘
//! ```
//!
//! Each direction is one split virtqueue whose descriptors and avail ring
//! live in the sender's section and whose used ring lives in the
//! receiver's. `desc.addr` is an offset from the start of the sender's
//! section; one descriptor per frame; `used.len == 1`; completion in order.
//! Doorbells are suppressed with event indices both ways
//! ([`notify`]), and a four-state handshake ([`link`]) brings the link up.
//!
//! ## Module map
//!
//! | module | concern |
//! |---|---|
//! | [`geometry`] | where everything lives in a section (the driver's sizing formula, golden-tested) |
//! | [`shm`] | bounds-checked access to the two sections (typed [`ShmError`]), the read-only load policy ([`shm::load_acquire_u32`] and friends) |
//! | `vring` | the ring fields by name, in bounds for every index once the layout is fitted to the sections — the hot path's only way into shared memory |
//! | `tx`, `rx` | the two queues, with validation of every peer-written value |
//! | [`notify`] | the event-index rule and the doorbell decision type |
//! | [`link`] | RESET / INIT / READY / RUN as a pure state machine |
//! | [`endpoint`] | one side of the link: queues + link + statistics |
//! | [`stats`], [`error`] | counters and typed errors |
//!
//! ## Hostile peers
//!
//! Every value the peer writes — indices, descriptor fields, used elements,
//! event indices, its state — is read once into a local and validated
//! before use. A violation never panics and never reaches outside the
//! sections; it becomes a [`RingError`], is counted, and faults the
//! endpoint, which takes the link through RESET so both sides zero their
//! sections and renegotiate (the reference driver skips the entry and
//! stalls its sender instead).
//!
//! ## Memory ordering
//!
//! `avail.idx` and `used.idx` are published with Release stores and read
//! with Relaxed loads followed by `fence(Acquire)` (the peer's section may
//! be mapped read-only, where Rust promises only Relaxed loads to work: see
//! [`shm`]); descriptors and used elements are Relaxed atomics ordered by
//! those; a `SeqCst` fence separates publishing an index from reading the
//! peer's event index, and publishing an event index from re-reading the
//! peer's index. Payload is copied after the Acquire that handed it over.
//!
//! ## Bounded work
//!
//! Every call does work bounded by the queue length, whatever the peer
//! writes: [`Endpoint::recv`] handles one frame per call (an oversize frame
//! is dropped, counted, and the call returns), `reclaim` consumes at most
//! the descriptors in flight, and the state machine applies at most four
//! transitions per step.
//!
//! ## Use
//!
//! ```no_run
//! use ivnet_ring::{Config, Endpoint, Notify, OwnSection, PeerSection};
//! # let (own_ptr, peer_ptr, len) = (core::ptr::null_mut(), core::ptr::null(), 0x7f000);
//! # fn ring_doorbell() {}
//! # fn read_peer_state() -> u32 { 0 }
//! # fn publish_state(_: ivnet_ring::LinkState) {}
//! // SAFETY: the caller mapped both sections for the endpoint's lifetime.
//! let own = unsafe { OwnSection::new(own_ptr, len) }.expect("aligned");
//! let peer = unsafe { PeerSection::new(peer_ptr, len) }.expect("aligned");
//! let mut ep = Endpoint::new(own, peer, Config::default()).unwrap();
//! // On every state interrupt and periodically:
//! let out = ep.on_peer_state(read_peer_state(), true);
//! if let Some(state) = out.write_state { publish_state(state) }
//! // Data path, batched:
//! if ep.tx_ready() { ep.send(&[0u8; 60]).unwrap(); }
//! if ep.flush_tx() == Notify::Doorbell { ring_doorbell() }
//! let mut buf = [0u8; 16384 + 18];
//! while let Ok(Some(_len)) = ep.recv(&mut buf) { /* deliver */ }
//! if ep.flush_rx() == Notify::Doorbell { ring_doorbell() }
//! // Before sleeping: ask for a doorbell; `true` means frames are waiting
//! // (`recv` returns `None` after dropping an oversize frame, too).
//! if ep.enable_rx_notify() == Ok(true) { /* poll again */ }
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(any(test, feature = "test-utils"))]
extern crate std;

pub mod endpoint;
pub mod error;
pub mod geometry;
pub mod link;
pub mod notify;
mod rx;
pub mod shm;
pub mod stats;
#[cfg(feature = "test-utils")]
pub mod testing;
mod tx;
mod vring;

pub use endpoint::{Config, Endpoint, RxFrame, StepOutput, TxSlot};
pub use error::{RingError, TxError};
pub use geometry::{Geometry, GeometryError, frame_slot_size};
pub use link::{LinkMachine, LinkState};
pub use notify::{Notify, need_event};
pub use shm::{OwnSection, PeerSection, ShmError};
pub use stats::{ErrorCounts, Stats};
