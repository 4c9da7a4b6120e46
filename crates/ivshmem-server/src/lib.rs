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
//! the process exited), the peer is gone. ivnet's server then plays the
//! Jailhouse hypervisor's part: it writes 0 (RESET) into X's entry of the
//! state table and rings vector 0 of every remaining peer (within
//! milliseconds; the processes test holds it to 100 ms).
//!
//! # Departures, and QEMU 7.2's double free
//!
//! QEMU's contrib server also sends the remaining peers a *disconnect*
//! message, `X` without an fd, closes X's eventfds, and gives the next
//! client on ID X fresh ones, announced to everyone again. QEMU 7.2
//! (Debian 12) mishandles that: on the disconnect, `close_peer_eventfds()`
//! in hw/misc/ivshmem.c `g_free()`s `s->peers[X].eventfds` without clearing
//! the pointer; the next connect of X writes the new eventfds into the
//! freed array, and a later disconnect frees it again — QEMU dies ("double
//! free or corruption", "malloc(): unaligned tcache chunk detected", or
//! SIGSEGV). The server hands out the lowest free ID and an ivshmem-net
//! link has only IDs 0 and 1, so restarting a host peer (ivnet-bridge) next
//! to a VM always reuses an ID, and kills the VM within two restarts.
//!
//! So by default the server never sends a disconnect message:
//!
//! - each ID's eventfds (one per vector) are created on its first
//!   connection and kept for the server's lifetime; a client that gets an
//!   ID used before receives the *same* eventfd objects for its own vectors,
//!   drained first (a non-blocking read) so that it does not see a doorbell
//!   rung while nobody held the ID;
//! - the server remembers, per client, which IDs' eventfds it holds, and
//!   announces an ID (step 4) only to clients that do not hold it yet; a new
//!   client gets the eventfds of every present peer (step 5) as usual;
//! - a departure is signalled only through the state table and vector 0,
//!   which is exactly what the ivshmem 2.0 design expects of the hypervisor.
//!
//! QEMU thus never sees a disconnect, keeps its (still valid) eventfds for
//! X, and its doorbells to X reach whoever holds X next. The price: a client
//! is not told on the socket that a peer left or returned. [`HostPeer`]
//! derives [`Event::PeerLeft`] and [`Event::PeerJoined`] for such IDs from
//! the state table on vector 0 (see [`peer`]). A client that the server
//! drops while it keeps running (it sent data) still holds its own eventfds
//! and could read doorbells meant for the ID's next holder; clients are
//! trusted that far (any client can ring any peer anyway).
//!
//! [`ServerConfig::disconnect_messages`] (`--disconnect-messages`) restores
//! the upstream behaviour exactly (fresh eventfds per connection,
//! disconnect messages). It is safe only when every client is a host peer,
//! or every QEMU has the fix. The server logs the mode at startup. The
//! `qemu` integration test checks the default mode with a host peer
//! returning to the same ID next to a VM six times, and (ignored, run by
//! hand) that QEMU 7.2 dies in `--disconnect-messages` mode.

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
//! - [`peer`]: [`HostPeer`], a peer without a VM (and how it reports joins
//!   and departures);
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
