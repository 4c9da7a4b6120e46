//! The host peer: a process that joins an ivshmem server like a QEMU
//! `ivshmem-doorbell` device does, without a VM.
//!
//! [`HostPeer::connect`] receives the whole setup, validating every message
//! the way QEMU does (and a little more: the server is untrusted input), and
//! maps the window with the ivshmem 2.0 permissions:
//!
//! | region | mapping |
//! |---|---|
//! | layout page | `PROT_READ` (copied out and validated once) |
//! | state table | `PROT_READ`, plus a one-page `PROT_READ|PROT_WRITE` view used only by [`HostPeer::set_own_state`] |
//! | R/W section | `PROT_READ|PROT_WRITE` (if non-empty) |
//! | own output section | `PROT_READ|PROT_WRITE` |
//! | other peers' output sections | `PROT_READ` |
//!
//! All of them are [`MmapRaw`]: the memory is shared with peers that write
//! it concurrently, so no Rust reference ever points into it. Callers get raw
//! pointers and must follow the ring protocol's ordering rules.
//!
//! Doorbells are eventfds: [`HostPeer::doorbell`] adds 1 to the target's
//! eventfd for a vector; [`HostPeer::wait`] polls the own eventfds and the
//! server socket. For an event loop of one's own, use
//! [`HostPeer::vector_fds`], [`HostPeer::server_fd`],
//! [`HostPeer::drain_vector`], [`HostPeer::handle_server_messages`] and
//! [`HostPeer::check_peer_states_into`].
//!
//! # Joins and departures
//!
//! The server announces a peer ID to a client once, with its eventfds; that
//! is [`Event::PeerJoined`]. In the server's default mode nothing more is
//! said on the socket: a departure shows only as the departed peer's
//! state-table entry reset to 0 (RESET) and a ring on the own vector 0, and
//! a client taking that ID again reuses the same eventfds, which this peer
//! still holds. So the host peer derives membership from the state table
//! whenever its vector 0 is rung (and when asked to):
//!
//! - a present peer whose entry was seen non-zero and is now 0 is reported
//!   as [`Event::PeerLeft`] — whether it left (the server reset its entry)
//!   or reset its link itself; for ivshmem-net both mean the link is down;
//! - an absent peer whose entry becomes non-zero (it returned and
//!   published INIT or later) is reported as [`Event::PeerJoined`].
//!
//! A peer that comes and goes without ever leaving state 0, or that leaves
//! and returns between two looks, is not reported. With a server in
//! `--disconnect-messages` mode (QEMU's upstream behaviour) the server's
//! disconnect messages are reported as [`Event::PeerLeft`] as well, and the
//! same state rules apply in between.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ivshmem::OwnStateEntry;
use ivshmem::layout::{LAYOUT_PAGE_SIZE, LayoutError, LayoutPage, PAGE_SIZE};
use memmap2::{MmapOptions, MmapRaw};
use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::protocol::{
    self, FramingError, MAX_PEER_ID, Message, MessageReader, PROTOCOL_VERSION, RecvError,
    SHM_MESSAGE,
};
use crate::shared::shared_u32;

/// Something that happened, as reported by [`HostPeer::wait`] and
/// [`HostPeer::handle_server_messages`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// One of the own vectors was rung (possibly several times; the eventfd
    /// counter was read and cleared).
    Vector(u32),
    /// A peer is present: the server announced it with all its vectors, or
    /// (for an ID whose eventfds this peer already holds) its state entry
    /// left 0 after a [`PeerLeft`](Event::PeerLeft). See the module docs.
    PeerJoined(u16),
    /// A peer is gone: the server sent a disconnect message
    /// (`--disconnect-messages` mode), or a vector-0 ring found the state
    /// entry of a present peer back at 0 (RESET) after it had been seen
    /// non-zero — the server writes 0 when a peer's socket closes, and a
    /// peer resetting its own link looks the same. See the module docs.
    PeerLeft(u16),
    /// The server closed the connection. Existing peers can still ring each
    /// other, but nobody resets a departed peer's state entry any more, so
    /// departures go unnoticed, and no new peer can join.
    ServerGone,
}

/// Why connecting or processing a server message failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The setup did not complete in time.
    #[error("setup incomplete after {0:?} (is the server full, or not an ivshmem server?)")]
    Timeout(Duration),
    /// The server closed the connection during the setup (e.g. it refused
    /// the connection because all peer IDs are in use).
    #[error("server closed the connection during setup (all peer IDs in use?)")]
    ClosedDuringSetup,
    /// A framing rule was broken.
    #[error("server broke the framing: {0}")]
    Framing(#[from] FramingError),
    /// A system call on the socket failed.
    #[error("server socket: {0}")]
    Io(std::io::Error),
    /// The first message is not protocol version 0.
    #[error("server sent protocol version {0}, expecting 0")]
    UnsupportedVersion(i64),
    /// The version or ID message carried an fd.
    #[error("server sent an fd with the {0} message")]
    UnexpectedFd(&'static str),
    /// The ID message is outside 0..=65535.
    #[error("server sent invalid ID {0}")]
    InvalidId(i64),
    /// The ID is not below the layout's max peers, so there is no output
    /// section for it.
    #[error("server assigned ID {id}, but the layout has only {max_peers} peers")]
    IdOutOfRange {
        /// Assigned ID.
        id: u16,
        /// Layout's max peers.
        max_peers: u16,
    },
    /// The third message is not the shared memory (-1).
    #[error("expected the shared-memory message (-1), got {0}")]
    ExpectedShm(i64),
    /// The shared-memory message carried no fd.
    #[error("shared-memory message without an fd")]
    MissingShmFd,
    /// A second shared-memory message.
    #[error("server sent the shared memory twice")]
    DuplicateShm,
    /// The shared-memory fd is not a regular file (memfd, tmpfs, hugetlbfs).
    #[error("shared-memory fd is not a regular file (mode {0:#o})")]
    ShmNotRegular(u32),
    /// The shared memory's size is not a power of two of at least 4 KiB.
    #[error("shared memory size {0:#x} is not a power of two >= 4 KiB")]
    BadShmSize(u64),
    /// The layout page is missing or invalid.
    #[error("layout page: {0}")]
    Layout(#[from] LayoutError),
    /// Mapping a region failed.
    #[error("map {what}: {source}")]
    Map {
        /// Which region.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A message value outside -1..=65535.
    #[error("server sent invalid message {0}")]
    InvalidMessage(i64),
    /// More eventfds for one peer than the layout's vector count.
    #[error("server sent more than {vectors} eventfds for peer {peer}")]
    TooManyEventfds {
        /// The peer.
        peer: u16,
        /// Vectors per peer in the layout.
        vectors: u32,
    },
    /// An fd announced as a peer's vector is not an eventfd.
    #[error("fd for peer {peer} is {kind}, not an eventfd")]
    NotAnEventfd {
        /// The peer.
        peer: u16,
        /// What `/proc/self/fd` says it is.
        kind: String,
    },
    /// An announced peer ID has no output section in the layout.
    #[error("server announced peer {peer}, but the layout has only {max_peers} peers")]
    PeerOutOfRange {
        /// The peer.
        peer: u16,
        /// Layout's max peers.
        max_peers: u16,
    },
    /// A disconnect for a peer that is not known, or for the own ID.
    #[error("server sent a disconnect for peer {0}, which is not connected")]
    InvalidDisconnect(u16),
}

impl From<RecvError> for ClientError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Closed => ClientError::ClosedDuringSetup,
            RecvError::Framing(f) => ClientError::Framing(f),
            RecvError::Io(io) => ClientError::Io(io),
        }
    }
}

/// Why a doorbell was not rung.
#[derive(Debug, thiserror::Error)]
pub enum DoorbellError {
    /// No such peer is connected (QEMU silently ignores such doorbell
    /// writes; the host peer reports them so the caller can count them).
    #[error("peer {0} is not connected")]
    UnknownPeer(u16),
    /// The peer has fewer vectors.
    #[error("peer {peer} has no vector {vector}")]
    NoSuchVector {
        /// The peer.
        peer: u16,
        /// The vector.
        vector: u32,
    },
    /// Writing the eventfd failed.
    #[error("ring peer {peer} vector {vector}: {source}")]
    Io {
        /// The peer.
        peer: u16,
        /// The vector.
        vector: u32,
        /// The error.
        source: std::io::Error,
    },
}

/// A peer of an ivshmem server, living in a host process.
#[derive(Debug)]
pub struct HostPeer {
    socket: Option<OwnedFd>,
    reader: MessageReader,
    id: u16,
    layout: LayoutPage,
    window_size: u64,
    shm: OwnedFd,
    /// State table, read-only.
    state_table: MmapRaw,
    /// The state-table page holding the own entry, read-write; kept mapped
    /// for `own_state` and used for nothing else.
    _own_state_page: MmapRaw,
    /// The own entry inside `_own_state_page`.
    own_state: OwnStateEntry,
    rw_section: Option<MmapRaw>,
    own_section: MmapRaw,
    /// Output sections of peers 0..id, read-only.
    sections_below: Option<MmapRaw>,
    /// Output sections of peers id+1..max_peers, read-only.
    sections_above: Option<MmapRaw>,
    own_vectors: Vec<OwnedFd>,
    /// Other peers' eventfds and membership. Peers still receiving their
    /// vectors are in here too; `peers()` lists only present ones.
    peers: BTreeMap<u16, KnownPeer>,
}

/// A peer ID whose eventfds this peer holds.
#[derive(Debug, Default)]
struct KnownPeer {
    /// Its eventfds, per vector (complete once there are `vectors`).
    vectors: Vec<OwnedFd>,
    /// Reported as joined and not (yet) as left.
    present: bool,
    /// Its state entry was seen non-zero while present: a 0 seen later
    /// means it left or reset.
    seen_up: bool,
}

// The bridge moves a HostPeer between threads and shares it for doorbells.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HostPeer>();
};

fn map_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Map { what, source }
}

fn to_usize(v: u64) -> Result<usize, ClientError> {
    usize::try_from(v).map_err(|_| ClientError::Map {
        what: "window",
        source: std::io::Error::other("offset does not fit usize"),
    })
}

fn map_ro(
    shm: &OwnedFd,
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<Option<MmapRaw>, ClientError> {
    if len == 0 {
        return Ok(None);
    }
    MmapOptions::new()
        .offset(offset)
        .len(to_usize(len)?)
        .map_raw_read_only(shm.as_raw_fd())
        .map(Some)
        .map_err(map_err(what))
}

fn map_rw(
    shm: &OwnedFd,
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<MmapRaw, ClientError> {
    MmapOptions::new()
        .offset(offset)
        .len(to_usize(len)?)
        .map_raw(shm.as_raw_fd())
        .map_err(map_err(what))
}

impl HostPeer {
    /// Connects to the server at `path` and receives the complete setup
    /// (version, ID, shared memory, the other peers' eventfds, the own
    /// eventfds), all within `timeout`.
    ///
    /// Peers already connected are listed by [`peers`](Self::peers); no
    /// [`Event::PeerJoined`] is reported for them.
    ///
    /// Sections are mapped at 4 KiB granularity, so a window on hugetlbfs
    /// (served with `--shm-path /dev/hugepages`) cannot be joined by a host
    /// peer ([`ClientError::Map`]); QEMU peers are unaffected.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<HostPeer, ClientError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let connect_err = |source: std::io::Error| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let addr = SocketAddrUnix::new(path).map_err(|e| connect_err(e.into()))?;
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| connect_err(e.into()))?;
        loop {
            match rustix::net::connect(&socket, &addr) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                // A full listen backlog: the server is busy, retry.
                Err(Errno::AGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(connect_err(e.into())),
            }
        }

        let mut reader = MessageReader::new();
        let mut recv = || recv_until(&mut reader, socket.as_fd(), deadline, timeout);

        let version = recv()?;
        if version.value != PROTOCOL_VERSION {
            return Err(ClientError::UnsupportedVersion(version.value));
        }
        if version.fd.is_some() {
            return Err(ClientError::UnexpectedFd("version"));
        }
        let id_msg = recv()?;
        if id_msg.fd.is_some() {
            return Err(ClientError::UnexpectedFd("ID"));
        }
        let id = u16::try_from(id_msg.value).map_err(|_| ClientError::InvalidId(id_msg.value))?;
        let shm_msg = recv()?;
        if shm_msg.value != SHM_MESSAGE {
            return Err(ClientError::ExpectedShm(shm_msg.value));
        }
        let shm = shm_msg.fd.ok_or(ClientError::MissingShmFd)?;

        let stat = rustix::fs::fstat(&shm).map_err(|e| map_err("fstat")(e.into()))?;
        let mode = stat.st_mode;
        if rustix::fs::FileType::from_raw_mode(mode) != rustix::fs::FileType::RegularFile {
            return Err(ClientError::ShmNotRegular(mode));
        }
        let window_size = u64::try_from(stat.st_size).unwrap_or(0);
        if !window_size.is_power_of_two() || window_size < LAYOUT_PAGE_SIZE {
            return Err(ClientError::BadShmSize(window_size));
        }

        let layout = {
            let page = map_ro(&shm, "layout page", 0, LAYOUT_PAGE_SIZE)?
                .expect("layout page size is not 0");
            let mut copy = [0u8; LayoutPage::ENCODED_LEN];
            // SAFETY: the mapping is LAYOUT_PAGE_SIZE (4096) bytes, larger
            // than ENCODED_LEN; `copy` is a local array. Other peers may
            // write the page concurrently (a QEMU window is writable); the
            // copy is taken once and only the copy is validated and used.
            unsafe {
                std::ptr::copy_nonoverlapping(page.as_ptr(), copy.as_mut_ptr(), copy.len());
            }
            LayoutPage::parse(&copy, window_size)?
        };
        let l = layout.layout;
        if id >= l.max_peers {
            return Err(ClientError::IdOutOfRange {
                id,
                max_peers: l.max_peers,
            });
        }

        let state_table = map_ro(
            &shm,
            "state table",
            l.state_table_offset,
            l.state_table_size,
        )?
        .expect("validated layout has a state table");
        let entry = l.state_entry_offset(id).expect("id < max_peers");
        let entry_page = entry & !(PAGE_SIZE - 1);
        let own_state_page = map_rw(&shm, "own state entry", entry_page, PAGE_SIZE)?;
        let own_entry = own_state_page
            .as_mut_ptr()
            .wrapping_add(to_usize(entry - entry_page)?)
            .cast::<u32>();
        // SAFETY: the own entry (4-aligned: the table is page-aligned and
        // entries are 4 bytes) inside the one-page read-write mapping, which
        // lives in the HostPeer next to `own_state`; every party accesses
        // state words only atomically.
        let own_state =
            unsafe { OwnStateEntry::new(std::ptr::NonNull::new(own_entry).expect("mapped")) }
                .expect("state entries are 4-aligned in a validated layout");
        let rw_section = if l.rw_section_size > 0 {
            Some(map_rw(
                &shm,
                "R/W section",
                l.rw_section_offset(),
                l.rw_section_size,
            )?)
        } else {
            None
        };
        let own_offset = l.output_section_offset(id).expect("id < max_peers");
        let own_section = map_rw(
            &shm,
            "own output section",
            own_offset,
            l.output_section_size,
        )?;
        let sections_below = map_ro(
            &shm,
            "peer output sections",
            l.output_sections_offset(),
            own_offset - l.output_sections_offset(),
        )?;
        let above_start = own_offset + l.output_section_size;
        let sections_above = map_ro(
            &shm,
            "peer output sections",
            above_start,
            l.end() - above_start,
        )?;

        let mut peer = HostPeer {
            socket: Some(socket),
            reader,
            id,
            layout,
            window_size,
            shm,
            state_table,
            own_state,
            _own_state_page: own_state_page,
            rw_section,
            own_section,
            sections_below,
            sections_above,
            own_vectors: Vec::new(),
            peers: BTreeMap::new(),
        };
        // The other peers' eventfds, then the own ones; the setup is complete
        // when the last own vector has arrived.
        let mut discard = Vec::new();
        while peer.own_vectors.len() < peer.layout.vectors as usize {
            let socket = peer.socket.as_ref().expect("connected").as_fd();
            let msg = recv_until(&mut peer.reader, socket, deadline, timeout)?;
            peer.process(msg, &mut discard)?;
        }
        Ok(peer)
    }

    /// The ID the server assigned (IVPosition on QEMU).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The validated layout page.
    pub fn layout(&self) -> &LayoutPage {
        &self.layout
    }

    /// Size of the shared memory (BAR2 on QEMU).
    pub fn window_size(&self) -> u64 {
        self.window_size
    }

    /// The shared-memory fd (e.g. to map it differently; the mappings of
    /// this type do not depend on it).
    pub fn shm_fd(&self) -> BorrowedFd<'_> {
        self.shm.as_fd()
    }

    /// The own output section: start and length, mapped read-write. Only
    /// this peer writes it; peers read it concurrently.
    pub fn own_section(&self) -> (*mut u8, usize) {
        (self.own_section.as_mut_ptr(), self.own_section.len())
    }

    /// `peer`'s output section, mapped read-only (a write faults). `None` for
    /// the own ID (use [`own_section`](Self::own_section)) and for IDs beyond
    /// the layout's max peers. The section exists whether or not the peer is
    /// connected.
    pub fn peer_section(&self, peer: u16) -> Option<(*const u8, usize)> {
        let len = self.layout.layout.output_section_size;
        let len_usize = usize::try_from(len).ok()?;
        if peer >= self.layout.layout.max_peers || peer == self.id {
            return None;
        }
        let (map, index) = if peer < self.id {
            (self.sections_below.as_ref()?, u64::from(peer))
        } else {
            (self.sections_above.as_ref()?, u64::from(peer - self.id - 1))
        };
        let offset = usize::try_from(index * len).ok()?;
        debug_assert!(offset + len_usize <= map.len());
        // SAFETY: `map` holds the sections of consecutive peers, each `len`
        // bytes, and `index` is in range for it (peer < max_peers), so
        // `offset` is inside the mapping; no dereference happens here.
        Some((unsafe { map.as_ptr().add(offset) }, len_usize))
    }

    /// The common read/write section, if the layout has one.
    pub fn rw_section(&self) -> Option<(*mut u8, usize)> {
        self.rw_section.as_ref().map(|m| (m.as_mut_ptr(), m.len()))
    }

    /// `peer`'s state-table entry (Acquire load through the read-only
    /// mapping), or `None` beyond the layout's max peers.
    pub fn peer_state(&self, peer: u16) -> Option<u32> {
        let offset =
            self.layout.layout.state_entry_offset(peer)? - self.layout.layout.state_table_offset;
        let offset = usize::try_from(offset).ok()?;
        // SAFETY: `offset` is 4-byte aligned and inside the state table
        // (`state_entry_offset` checks peer < max_peers and the validated
        // table holds 4 bytes per peer), which `state_table` maps read-only.
        // Shared words are only ever accessed atomically; an atomic load of
        // a u32 from read-only memory is permitted (see
        // `core::sync::atomic`, "atomic accesses to read-only memory").
        let entry = unsafe { shared_u32(self.state_table.as_mut_ptr(), offset) };
        Some(entry.load(Ordering::Acquire))
    }

    /// Publishes the own state (Release store into the own state-table
    /// entry). Ring vector 0 of the other peers afterwards so that they look.
    ///
    /// This is the stand-in for the STATE register of Jailhouse's ivshmem
    /// 2.0 device, through which the hypervisor updates the read-only state
    /// table. QEMU's device has no such register, so the entry is written
    /// through a separate one-page read-write mapping that is used for
    /// nothing else.
    pub fn set_own_state(&self, state: u32) {
        let _ = self
            .own_state
            .publish(state, || Ok::<(), DoorbellError>(()));
    }

    /// Publishes the own state ([`set_own_state`](Self::set_own_state)),
    /// then rings vector 0 of every other peer whose eventfds this peer
    /// holds, present or not, so that they look. Returns the first doorbell
    /// error after trying all of them.
    pub fn publish_state(&self, state: u32) -> Result<(), DoorbellError> {
        self.own_state.publish(state, || {
            let mut result = Ok(());
            for &peer in self.peers.keys() {
                if let Err(e) = self.doorbell(peer, 0) {
                    result = result.and(Err(e));
                }
            }
            result
        })
    }

    /// IDs of the other peers that are present (announced with all their
    /// vectors and not reported as left since, see the module docs),
    /// ascending.
    pub fn peers(&self) -> Vec<u16> {
        self.peers
            .iter()
            .filter(|(_, p)| p.present)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Rings `vector` of `peer` (writes 1 to its eventfd). Ringing the own ID
    /// is allowed and rings the own vector.
    ///
    /// Any ID whose eventfds this peer holds can be rung, present or not:
    /// in the server's default mode a departed ID keeps its eventfds, and a
    /// peer that reset its own link is still there. A ring nobody reads is
    /// harmless: the server drains an ID's eventfds before it hands them to
    /// the ID's next holder. [`DoorbellError::UnknownPeer`] means the server
    /// never announced `peer` (or sent a disconnect for it).
    pub fn doorbell(&self, peer: u16, vector: u32) -> Result<(), DoorbellError> {
        let fds = if peer == self.id {
            &self.own_vectors
        } else {
            &self
                .peers
                .get(&peer)
                .ok_or(DoorbellError::UnknownPeer(peer))?
                .vectors
        };
        let fd = fds
            .get(vector as usize)
            .ok_or(DoorbellError::NoSuchVector { peer, vector })?;
        protocol::ring_eventfd(fd.as_fd()).map_err(|source| DoorbellError::Io {
            peer,
            vector,
            source,
        })
    }

    /// The own vectors' eventfds, in vector order, for an external poll or
    /// epoll loop (readable = rung; clear with
    /// [`drain_vector`](Self::drain_vector)).
    pub fn vector_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.own_vectors.iter().map(|fd| fd.as_fd()).collect()
    }

    /// The server socket, for an external poll loop (readable = call
    /// [`handle_server_messages`](Self::handle_server_messages)). `None`
    /// after [`Event::ServerGone`].
    pub fn server_fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(|s| s.as_fd())
    }

    /// Reads and clears the counter of own vector `vector`: how often it was
    /// rung since the last drain (0 if not, or if there is no such vector).
    pub fn drain_vector(&self, vector: u32) -> std::io::Result<u64> {
        match self.own_vectors.get(vector as usize) {
            Some(fd) => protocol::drain_eventfd(fd.as_fd()),
            None => Ok(0),
        }
    }

    /// Processes every message the server has sent so far, without blocking.
    ///
    /// Events are appended to `events`. On a protocol violation the
    /// offending message is discarded (its fd closed) and the error returned;
    /// the events decoded before it are already in `events`, and later
    /// messages are processed by the next call.
    pub fn handle_server_messages_into(
        &mut self,
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        while let Some(socket) = self.socket.as_ref() {
            match self.reader.read(socket.as_fd()) {
                Ok(Some(msg)) => self.process(msg, events)?,
                Ok(None) => return Ok(()),
                Err(RecvError::Closed) => {
                    self.socket = None;
                    events.push(Event::ServerGone);
                }
                Err(e) => {
                    // A broken connection ends like a closed one, but is
                    // reported.
                    if matches!(
                        e,
                        RecvError::Io(_) | RecvError::Framing(FramingError::TruncatedMessage(_))
                    ) {
                        self.socket = None;
                        events.push(Event::ServerGone);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Like [`handle_server_messages_into`](Self::handle_server_messages_into),
    /// returning the events. On error, the events decoded before the bad
    /// message are dropped (the join/leave they report is still reflected in
    /// [`peers`](Self::peers)); use the `_into` form to keep them.
    pub fn handle_server_messages(&mut self) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        self.handle_server_messages_into(&mut events)?;
        Ok(events)
    }

    /// Looks at the state entries of the peers whose eventfds this peer
    /// holds and appends the joins and departures they show (see the module
    /// docs). [`wait`](Self::wait) does this whenever vector 0 was rung; an
    /// event loop of its own should call it after draining vector 0.
    pub fn check_peer_states_into(&mut self, events: &mut Vec<Event>) {
        let vectors = self.layout.vectors as usize;
        let states: Vec<(u16, u32)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.vectors.len() == vectors)
            .filter_map(|(&id, _)| Some((id, self.peer_state(id)?)))
            .collect();
        for (id, state) in states {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            if p.present {
                if state != 0 {
                    p.seen_up = true;
                } else if p.seen_up {
                    p.present = false;
                    p.seen_up = false;
                    events.push(Event::PeerLeft(id));
                }
            } else if state != 0 {
                p.present = true;
                p.seen_up = true;
                events.push(Event::PeerJoined(id));
            }
        }
    }

    /// Like [`check_peer_states_into`](Self::check_peer_states_into),
    /// returning the events.
    pub fn check_peer_states(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        self.check_peer_states_into(&mut events);
        events
    }

    /// Waits up to `timeout` (`None`: forever) for own vectors or server
    /// messages, and returns what happened (empty on timeout). Vectors are
    /// drained. Server messages are processed first; when vector 0 was rung,
    /// the peers' state entries are checked afterwards
    /// ([`check_peer_states_into`](Self::check_peer_states_into)).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let (ready_vectors, server_ready) = {
            let mut fds: Vec<_> = self
                .own_vectors
                .iter()
                .map(|fd| rustix::event::PollFd::new(fd, PollFlags::IN))
                .collect();
            if let Some(s) = &self.socket {
                fds.push(rustix::event::PollFd::new(s, PollFlags::IN));
            }
            protocol::poll(&mut fds, timeout).map_err(ClientError::Io)?;
            let n = self.own_vectors.len();
            let ready: Vec<u32> = (0..n)
                .filter(|&i| !fds[i].revents().is_empty())
                .map(|i| i as u32)
                .collect();
            (ready, fds.get(n).is_some_and(|f| !f.revents().is_empty()))
        };
        // Messages first: with --disconnect-messages the server sends the
        // disconnect before it rings vector 0, so the departure is reported
        // once, from the message.
        let messages = if server_ready {
            self.handle_server_messages_into(&mut events)
        } else {
            Ok(())
        };
        let mut state_vector = false;
        for vector in ready_vectors {
            if self.drain_vector(vector).map_err(ClientError::Io)? > 0 {
                events.push(Event::Vector(vector));
                state_vector |= vector == 0;
            }
        }
        if state_vector {
            self.check_peer_states_into(&mut events);
        }
        messages.map(|()| events)
    }

    /// Applies one post-shm message: an eventfd for a peer (or for us), or a
    /// disconnect.
    fn process(&mut self, msg: Message, events: &mut Vec<Event>) -> Result<(), ClientError> {
        if msg.value == SHM_MESSAGE {
            return Err(ClientError::DuplicateShm);
        }
        if !(0..=MAX_PEER_ID).contains(&msg.value) {
            return Err(ClientError::InvalidMessage(msg.value));
        }
        let peer = msg.value as u16;
        let vectors = self.layout.vectors;
        let max_peers = self.layout.layout.max_peers;
        let Some(fd) = msg.fd else {
            if peer == self.id {
                return Err(ClientError::InvalidDisconnect(peer));
            }
            let gone = self
                .peers
                .remove(&peer)
                .ok_or(ClientError::InvalidDisconnect(peer))?;
            // Not again if the state table already showed the departure.
            if gone.present || gone.vectors.len() < vectors as usize {
                events.push(Event::PeerLeft(peer));
            }
            return Ok(());
        };
        if peer >= max_peers {
            return Err(ClientError::PeerOutOfRange { peer, max_peers });
        }
        check_eventfd(peer, &fd)?;
        if peer == self.id {
            if self.own_vectors.len() >= vectors as usize {
                return Err(ClientError::TooManyEventfds { peer, vectors });
            }
            self.own_vectors.push(fd);
            return Ok(());
        }
        let up = self.peer_state(peer).is_some_and(|s| s != 0);
        let known = self.peers.entry(peer).or_default();
        if known.vectors.len() >= vectors as usize {
            return Err(ClientError::TooManyEventfds { peer, vectors });
        }
        known.vectors.push(fd);
        if known.vectors.len() == vectors as usize {
            known.present = true;
            known.seen_up = up;
            events.push(Event::PeerJoined(peer));
        }
        Ok(())
    }
}

/// Receives one message, waiting until `deadline`.
fn recv_until(
    reader: &mut MessageReader,
    socket: BorrowedFd<'_>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Message, ClientError> {
    loop {
        if let Some(msg) = reader.read(socket)? {
            return Ok(msg);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout(timeout));
        }
        protocol::wait_fd(socket, PollFlags::IN, Some(deadline - now)).map_err(ClientError::Io)?;
    }
}

/// Refuses fds that are not eventfds (writing 8 bytes into, say, a file the
/// server passed would corrupt it), and makes sure reads never block.
fn check_eventfd(peer: u16, fd: &OwnedFd) -> Result<(), ClientError> {
    // Linux names the target of an eventfd "anon_inode:[eventfd]". If /proc
    // is not mounted the check is skipped.
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) if target.as_os_str() != "anon_inode:[eventfd]" => {
            return Err(ClientError::NotAnEventfd {
                peer,
                kind: target.to_string_lossy().into_owned(),
            });
        }
        _ => {}
    }
    rustix::io::ioctl_fionbio(fd, true).map_err(|e| ClientError::Io(e.into()))
}
