//! An ivshmem server for QEMU's `ivshmem-doorbell` device, and the host-peer
//! library that lets a plain process join the same shared memory.
//!
//! # The protocol
//!
//! QEMU's `-chardev socket,path=…` connects to the server over a UNIX stream
//! socket. The connection is one-way, server → client. Every message is an
//! 8-byte little-endian signed integer sent with its own `sendmsg`, carrying
//! at most one file descriptor (`SCM_RIGHTS`). A new client N receives:
//!
//! 1. `0`: the protocol version, no fd;
//! 2. `N`: its ID (the lowest free one), no fd — QEMU shows it as IVPosition;
//! 3. `-1` with the shared-memory fd (QEMU maps it as BAR2; its size must be
//!    a power of two);
//! 4. meanwhile every existing peer P is told about N: `N` with N's eventfd
//!    for vector 0, then for vector 1, …;
//! 5. for every existing peer P: `P` with P's eventfd for vector 0, 1, …;
//! 6. `N` with its own eventfds, vector 0, 1, … — the ones it waits on.
//!
//! Peer X's eventfd for vector i is the same object for everyone: the others
//! write `1u64` to it to ring X (QEMU does this for a guest write of
//! `X << 16 | i` to the Doorbell register at BAR0+12), X reads it to learn it
//! was rung (QEMU turns that into MSI-X vector i). QEMU reads steps 1–3 (and
//! its own vectors) synchronously while the device realizes, so the server
//! must be listening before QEMU starts.
//!
//! A client never sends anything. When its socket becomes readable (EOF:
//! the process exited), the peer is gone; the others receive `X` *without*
//! an fd. ivnet's server then also plays the Jailhouse hypervisor's part: it
//! writes 0 (RESET) into X's entry of the state table and rings vector 0 of
//! every remaining peer.
//!
//! # The shared memory
//!
//! The first 4 KiB are the layout page of `ivshmem::layout`: magic
//! `IVSHMEM2`, protocol, max peers, vectors and section sizes. After it comes
//! the ivshmem 2.0 layout: `state table | R/W section | output section of
//! peer 0 | of peer 1 | …`. Each peer writes only its own output section
//! and its own state entry.
//!
//! # Modules
//!
//! - [`server`]: [`Server`] (bind, then [`Server::run_until`]) and
//!   [`ServerHandle`] (a server on its own thread, for tests and embedding);
//! - [`peer`]: [`HostPeer`], a peer without a VM;
//! - [`shm`]: creating and initializing the shared memory;
//! - [`protocol`]: framing, sending and receiving single messages;
//! - [`size`]: parsing sizes such as `0x7f000` or `1M` for the CLI.

pub mod peer;
pub mod protocol;
pub mod server;
mod shared;
pub mod shm;
pub mod size;

pub use peer::{ClientError, DoorbellError, Event, HostPeer};
pub use server::{ConfigError, Server, ServerConfig, ServerError, ServerHandle, ServerStats};
pub use shm::ShmBacking;
