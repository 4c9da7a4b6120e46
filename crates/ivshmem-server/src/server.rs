//! The server: configuration, the listening socket, and the poll loop that
//! hands out IDs, eventfds and the shared memory, and plays the hypervisor's
//! part when a peer leaves.
//!
//! Two departure modes (see the crate docs for why): by default an ID's
//! eventfds live as long as the server and a departure is signalled only
//! through the state table and vector 0 ([`ServerConfig::disconnect_messages`]
//! `false`); with `disconnect_messages` the server behaves exactly like
//! QEMU's contrib server (fresh eventfds per connection, disconnect
//! messages).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use ivshmem::layout::{
    LAYOUT_PAGE_SIZE, LayoutError, LayoutPage, NET_MAX_PEERS, PAGE_SIZE, PROTOCOL_NET,
};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tracing::{debug, error, info, warn};

use crate::protocol::{self, PROTOCOL_VERSION, SHM_MESSAGE, SendError};
use crate::shm::{SharedMemory, ShmBacking, ShmError};

/// Default output-section size: 0x7f000, the size of Jailhouse's ivshmem-net
/// link, so that a two-peer window is exactly 1 MiB.
pub const DEFAULT_OUTPUT_SECTION_SIZE: u64 = 0x7f000;
/// Default number of vectors per peer. ivshmem-net with MSI-X uses exactly
/// two: vector 0 for state changes, vector 1 for TX/RX.
pub const DEFAULT_VECTORS: u32 = 2;
/// Most vectors per peer the server hands out (QEMU's example server uses
/// the same limit).
pub const MAX_VECTORS: u32 = 64;
/// How long a peer may keep its socket buffer full before the server gives
/// up on it.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Path of the UNIX socket QEMU's `-chardev socket,path=…` connects to.
    pub socket_path: PathBuf,
    /// Where the shared memory comes from.
    pub shm: ShmBacking,
    /// PCI protocol written into the layout page.
    pub protocol: u16,
    /// Vectors (eventfds) per peer.
    pub vectors: u32,
    /// Peer IDs 0..max_peers; one output section each.
    pub max_peers: u16,
    /// Size of each peer's output section.
    pub output_section_size: u64,
    /// Size of the common read/write section.
    pub rw_section_size: u64,
    /// How long a full socket buffer is tolerated before a peer is dropped.
    pub send_timeout: Duration,
    /// QEMU's upstream departure behaviour: every connection gets fresh
    /// eventfds, and when a peer leaves the others receive a disconnect
    /// message (its ID without an fd).
    ///
    /// Off by default, because QEMU 7.2 (Debian 12) frees a departed peer's
    /// eventfd array on the disconnect message without clearing the
    /// pointer, and aborts ("double free or corruption") on the second
    /// disconnect of a reused ID. Safe only when every client is a host peer,
    /// or every QEMU has that bug fixed. In the default mode an ID keeps its
    /// eventfds for the server's lifetime, a client is told about an ID only
    /// once, and departures are signalled only through the state table and
    /// vector 0 (which happens in both modes).
    pub disconnect_messages: bool,
}

impl ServerConfig {
    /// The defaults of an ivshmem-net link (two peers, two vectors, 0x7f000
    /// output sections, memfd) on `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        ServerConfig {
            socket_path: socket_path.into(),
            shm: ShmBacking::Memfd,
            protocol: PROTOCOL_NET,
            vectors: DEFAULT_VECTORS,
            max_peers: NET_MAX_PEERS,
            output_section_size: DEFAULT_OUTPUT_SECTION_SIZE,
            rw_section_size: 0,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            disconnect_messages: false,
        }
    }

    /// Size of the state table: one `u32` per peer, rounded up to a page.
    pub fn state_table_size(&self) -> u64 {
        (4 * u64::from(self.max_peers)).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE
    }

    /// Validates the configuration and computes the layout page.
    pub fn layout(&self) -> Result<LayoutPage, ConfigError> {
        if self.vectors == 0 {
            return Err(ConfigError::ZeroVectors);
        }
        if self.vectors > MAX_VECTORS {
            return Err(ConfigError::TooManyVectors(self.vectors));
        }
        if self.max_peers < 2 {
            return Err(ConfigError::TooFewPeers(self.max_peers));
        }
        if self.protocol == PROTOCOL_NET && self.max_peers != NET_MAX_PEERS {
            return Err(ConfigError::NetNeedsTwoPeers(self.max_peers));
        }
        if self.output_section_size == 0 {
            return Err(ConfigError::ZeroOutputSection);
        }
        for (what, value) in [
            ("output section size", self.output_section_size),
            ("R/W section size", self.rw_section_size),
        ] {
            if value % PAGE_SIZE != 0 {
                return Err(ConfigError::Unaligned { what, value });
            }
        }
        let page = LayoutPage::new(
            self.protocol,
            self.vectors,
            self.max_peers,
            self.state_table_size(),
            self.rw_section_size,
            self.output_section_size,
        );
        let window = page.window_size().ok_or(ConfigError::TooLarge)?;
        // The window is at least the layout's end by construction; validate
        // the same way a peer will, so that the server never writes a page
        // its peers refuse.
        page.layout.validate(window).map_err(ConfigError::Layout)?;
        debug_assert!(page.layout.state_table_offset == LAYOUT_PAGE_SIZE);
        Ok(page)
    }
}

/// A configuration value the server refuses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--vectors 0`.
    #[error("vectors must be at least 1")]
    ZeroVectors,
    /// More vectors than [`MAX_VECTORS`].
    #[error("{0} vectors requested, at most {MAX_VECTORS} are supported")]
    TooManyVectors(u32),
    /// Fewer than two peers.
    #[error("max peers is {0}, at least 2 are required")]
    TooFewPeers(u16),
    /// ivshmem-net is point-to-point.
    #[error(
        "protocol ivshmem-net (0x0001) links exactly 2 peers, not {0}; use --protocol undefined for more"
    )]
    NetNeedsTwoPeers(u16),
    /// Output section size 0.
    #[error("output section size must not be 0")]
    ZeroOutputSection,
    /// A size that is not a multiple of 4 KiB.
    #[error("{what} {value:#x} is not a multiple of the 4 KiB page size")]
    Unaligned {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The window would not fit 64 bits.
    #[error("the shared memory would be larger than 2^63 bytes")]
    TooLarge,
    /// The layout itself is inconsistent.
    #[error("layout: {0}")]
    Layout(LayoutError),
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another server is listening on the socket path.
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{0} exists and is not a socket (refusing to remove it)")]
    NotASocket(PathBuf),
    /// The socket path does not fit `sockaddr_un`.
    #[error("socket path {0} is too long for a UNIX socket address")]
    SocketPathTooLong(PathBuf),
    /// Creating the shared memory failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl ServerError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
        let what = what.into();
        move |source| ServerError::Io { what, source }
    }

    fn errno(what: impl Into<String>) -> impl FnOnce(Errno) -> ServerError {
        let what = what.into();
        move |e| ServerError::Io {
            what,
            source: e.into(),
        }
    }
}

/// Counters an operator may want (logged at exit and on `SIGUSR1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Peers that received their complete setup.
    pub peers_joined: u64,
    /// Peers that left (socket closed or dropped by the server).
    pub peers_left: u64,
    /// Connections refused because every ID was in use.
    pub refused_full: u64,
    /// Connections dropped because the setup could not be sent or an
    /// eventfd could not be created.
    pub setup_failures: u64,
    /// Messages that could not be delivered (the receiver was dropped).
    pub send_failures: u64,
}

/// One connected peer.
#[derive(Debug)]
struct Peer {
    socket: OwnedFd,
    /// The other IDs whose eventfds this client has received (and, in the
    /// default mode, still holds: nothing ever tells it to close them). An
    /// ID is announced to a client only if it is not in here.
    holds: BTreeSet<u16>,
}

/// The socket file and its lock file; both are removed on drop.
///
/// `<socket>.lock` is held with `flock` for the server's lifetime, so that
/// a second server detects a live one without connecting to it (a probe
/// connection would look like a peer joining and leaving to everyone).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    bound: bool,
}

impl SocketFile {
    fn lock(path: &Path) -> Result<Self, ServerError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(ServerError::io(format!(
                "open lock file {}",
                lock_path.display()
            )))?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(ServerError::SocketInUse(path.to_path_buf())),
            Err(e) => {
                return Err(ServerError::errno(format!("lock {}", lock_path.display()))(
                    e,
                ));
            }
        }
        // From here on we own the lock file: drop removes it on any error.
        Ok(SocketFile {
            path: path.to_path_buf(),
            lock_path,
            _lock: lock,
            bound: false,
        })
    }

    /// Removes a stale socket file, refusing to touch anything else.
    fn clear_stale(&self) -> Result<(), ServerError> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ServerError::io(format!("stat {}", self.path.display()))(e)),
        };
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(self.path.clone()));
        }
        // We hold the lock, so no ivnet server owns this socket. Another
        // kind of server (e.g. QEMU's example) might: probe it. A refused
        // connection means nobody listens.
        let addr = unix_addr(&self.path)?;
        let probe = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(ServerError::errno("socket"))?;
        match rustix::net::connect(&probe, &addr) {
            Ok(()) => return Err(ServerError::SocketInUse(self.path.clone())),
            Err(Errno::CONNREFUSED) => {}
            Err(e) => return Err(ServerError::errno(format!("probe {}", self.path.display()))(e)),
        }
        info!(path = %self.path.display(), "removing stale socket file (nobody listens on it)");
        std::fs::remove_file(&self.path).map_err(ServerError::io(format!(
            "remove stale socket {}",
            self.path.display()
        )))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

fn unix_addr(path: &Path) -> Result<SocketAddrUnix, ServerError> {
    SocketAddrUnix::new(path).map_err(|_| ServerError::SocketPathTooLong(path.to_path_buf()))
}

/// A listening ivshmem server.
///
/// [`Server::bind`] does everything that can fail at startup (shared memory,
/// layout page, socket); once it returns, the server is listening and QEMU
/// may start. [`Server::run_until`] then serves until told to stop. Dropping
/// the server removes the socket file.
#[derive(Debug)]
pub struct Server {
    // Field order matters for drop: close the listener before removing the
    // socket file.
    listener: OwnedFd,
    peers: BTreeMap<u16, Peer>,
    /// The eventfds of each ID, one per vector: its holder waits on them,
    /// every other peer rings them. Default mode: created on the ID's first
    /// connection and kept for the server's lifetime, so that a client
    /// returning to an ID gets the very objects the others already hold.
    /// `disconnect_messages` mode: removed when the ID's peer leaves.
    eventfds: BTreeMap<u16, Vec<OwnedFd>>,
    disconnect_messages: bool,
    shm: SharedMemory,
    socket: SocketFile,
    vectors: u32,
    max_peers: u16,
    send_timeout: Duration,
    stats: ServerStats,
}

impl Server {
    /// Validates `config`, creates the shared memory (layout page written,
    /// state table zeroed), and binds and listens on the socket.
    ///
    /// A live server on the same path is reported as
    /// [`ServerError::SocketInUse`]; a stale socket file is replaced. On
    /// error nothing is left behind.
    pub fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let layout = config.layout()?;
        let addr = unix_addr(&config.socket_path)?;
        let mut socket = SocketFile::lock(&config.socket_path)?;
        socket.clear_stale()?;
        let shm = SharedMemory::create(&config.shm, layout)?;

        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(ServerError::errno("socket"))?;
        rustix::net::bind(&listener, &addr).map_err(ServerError::errno(format!(
            "bind {}",
            config.socket_path.display()
        )))?;
        socket.bound = true;
        rustix::net::listen(&listener, 16).map_err(ServerError::errno(format!(
            "listen on {}",
            config.socket_path.display()
        )))?;

        info!(
            socket = %config.socket_path.display(),
            window_size = format_args!("{:#x}", shm.window_size()),
            protocol = format_args!("{:#06x}", layout.protocol),
            max_peers = layout.layout.max_peers,
            vectors = layout.vectors,
            output_section_size = format_args!("{:#x}", layout.layout.output_section_size),
            "listening"
        );
        if config.disconnect_messages {
            info!(
                "departure mode: disconnect messages (QEMU's upstream protocol: fresh eventfds \
                 per connection; QEMU 7.2 aborts when a peer ID is reused twice)"
            );
        } else {
            info!(
                "departure mode: state table + vector 0 only (eventfds kept per ID, no \
                 disconnect messages; works around QEMU 7.2's ivshmem double free)"
            );
        }
        Ok(Server {
            listener,
            peers: BTreeMap::new(),
            eventfds: BTreeMap::new(),
            disconnect_messages: config.disconnect_messages,
            shm,
            socket,
            vectors: config.vectors,
            max_peers: config.max_peers,
            send_timeout: config.send_timeout,
            stats: ServerStats::default(),
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// The layout written into the first page of the shared memory.
    pub fn layout(&self) -> &LayoutPage {
        self.shm.layout()
    }

    /// Size of the shared memory (a power of two).
    pub fn window_size(&self) -> u64 {
        self.shm.window_size()
    }

    /// IDs of the connected peers, ascending.
    pub fn peer_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.peers.keys().copied()
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Reads a peer's state-table entry (what the hypervisor would see).
    pub fn peer_state(&self, peer: u16) -> Option<u32> {
        self.shm.state(peer)
    }

    /// Logs the connected peers and counters at INFO.
    pub fn log_status(&self) {
        let ids: Vec<u16> = self.peer_ids().collect();
        info!(peers = ?ids, stats = ?self.stats, "status");
    }

    /// Serves until `control` becomes readable and `on_control` returns
    /// [`ControlFlow::Break`]. `on_control` must consume the readiness
    /// (read the signalfd or eventfd), or it is called again at once.
    pub fn run_until(
        &mut self,
        control: BorrowedFd<'_>,
        mut on_control: impl FnMut(&Server) -> ControlFlow<()>,
    ) -> Result<ServerStats, ServerError> {
        loop {
            let (control_ready, listener_ready, departed) = {
                let mut fds = Vec::with_capacity(2 + self.peers.len());
                fds.push(PollFd::from_borrowed_fd(control, PollFlags::IN));
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
                for peer in self.peers.values() {
                    // Peers never send anything: any readability (data, EOF,
                    // error) means the peer is gone or misbehaving, as in
                    // QEMU's example server.
                    fds.push(PollFd::new(&peer.socket, PollFlags::IN | PollFlags::RDHUP));
                }
                protocol::poll(&mut fds, None).map_err(ServerError::io("poll"))?;
                let departed: VecDeque<u16> = self
                    .peers
                    .keys()
                    .zip(&fds[2..])
                    .filter(|(_, fd)| !fd.revents().is_empty())
                    .map(|(id, _)| *id)
                    .collect();
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    departed,
                )
            };
            if !departed.is_empty() {
                self.remove_peers(departed, "socket closed");
            }
            if listener_ready {
                self.accept_all();
            }
            if control_ready && on_control(self).is_break() {
                info!(stats = ?self.stats, "stopping");
                return Ok(self.stats);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match rustix::net::accept_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(socket) => self.add_peer(socket),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
                    // The connection stays queued; back off instead of
                    // spinning on a listener that stays readable.
                    error!("accept: {e}; retrying in 100 ms");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
                Err(e) => {
                    error!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn lowest_free_id(&self) -> Option<u16> {
        (0..self.max_peers).find(|id| !self.peers.contains_key(id))
    }

    /// The eventfds for `id`: the ones it had before (pending counts
    /// drained, so that its new holder does not see a stale doorbell), or
    /// new ones.
    fn eventfds_for(&mut self, id: u16) -> Result<(), Errno> {
        if let Some(fds) = self.eventfds.get(&id) {
            for (vector, fd) in fds.iter().enumerate() {
                match protocol::drain_eventfd(fd.as_fd()) {
                    Ok(0) => {}
                    Ok(n) => debug!("ID {id} vector {vector}: discarded {n} stale doorbells"),
                    Err(e) => warn!("ID {id} vector {vector}: draining failed: {e}"),
                }
            }
            return Ok(());
        }
        let fds = (0..self.vectors)
            .map(|_| rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC))
            .collect::<Result<Vec<OwnedFd>, Errno>>()?;
        self.eventfds.insert(id, fds);
        Ok(())
    }

    fn add_peer(&mut self, socket: OwnedFd) {
        let Some(id) = self.lowest_free_id() else {
            self.stats.refused_full += 1;
            warn!(
                "refusing connection: all {} peer IDs are in use (--max-peers {})",
                self.max_peers, self.max_peers
            );
            return;
        };
        if let Err(e) = self.eventfds_for(id) {
            self.stats.setup_failures += 1;
            error!("refusing connection: cannot create eventfds for peer {id}: {e}");
            return;
        }
        let timeout = self.send_timeout;
        // 1–3: version, ID, shared memory. Nothing is announced yet, so a
        // failure here only drops the new connection.
        let first = protocol::send_message(socket.as_fd(), PROTOCOL_VERSION, None, timeout)
            .and_then(|()| protocol::send_message(socket.as_fd(), i64::from(id), None, timeout))
            .and_then(|()| {
                protocol::send_message(socket.as_fd(), SHM_MESSAGE, Some(self.shm.fd()), timeout)
            });
        if let Err(e) = first {
            self.stats.setup_failures += 1;
            warn!("dropping new connection (would be peer {id}): sending setup failed: {e}");
            return;
        }

        let own = &self.eventfds[&id];
        let mut doomed = VecDeque::new();
        // 4: announce the newcomer to every existing peer that does not hold
        // its ID's eventfds yet, one message per vector, each with the
        // eventfd for that vector. In the default mode a peer that was told
        // about this ID before already holds these very eventfds; announcing
        // them again would make QEMU refuse them ("Too many eventfd").
        let mut announced = 0usize;
        for (&other_id, other) in self.peers.iter_mut() {
            if other.holds.contains(&id) {
                continue;
            }
            let sent = own.iter().try_for_each(|fd| {
                protocol::send_message(
                    other.socket.as_fd(),
                    i64::from(id),
                    Some(fd.as_fd()),
                    timeout,
                )
            });
            match sent {
                Ok(()) => {
                    other.holds.insert(id);
                    announced += 1;
                }
                Err(e) => {
                    self.stats.send_failures += 1;
                    warn!("peer {other_id}: send failed: {e}; dropping it");
                    doomed.push_back(other_id);
                }
            }
        }
        // 5–6: the present peers' eventfds, then the newcomer's own.
        let mut holds = BTreeSet::new();
        let mut setup = Ok(());
        'peers: for &other_id in self.peers.keys() {
            for fd in &self.eventfds[&other_id] {
                setup = protocol::send_message(
                    socket.as_fd(),
                    i64::from(other_id),
                    Some(fd.as_fd()),
                    timeout,
                );
                if setup.is_err() {
                    break 'peers;
                }
            }
            holds.insert(other_id);
        }
        if setup.is_ok() {
            setup = own.iter().try_for_each(|fd| {
                protocol::send_message(socket.as_fd(), i64::from(id), Some(fd.as_fd()), timeout)
            });
        }
        self.peers.insert(id, Peer { socket, holds });
        match setup {
            Ok(()) => {
                self.stats.peers_joined += 1;
                info!(
                    "peer {id} joined ({} vectors; announced to {announced} peers, the others \
                     still hold its eventfds); {} connected",
                    self.vectors,
                    self.peers.len()
                );
            }
            Err(e) => {
                self.stats.setup_failures += 1;
                warn!("peer {id}: sending setup failed: {e}; dropping it");
                doomed.push_back(id);
            }
        }
        if !doomed.is_empty() {
            self.remove_peers(doomed, "dropped after a failed send");
        }
    }

    fn note_send_failure(&mut self, to: u16, e: &SendError) {
        self.stats.send_failures += 1;
        warn!("peer {to}: send failed: {e}; dropping it");
    }

    /// The hypervisor's part of a departure, for each peer in `queue`:
    /// 1. write 0 (RESET) into its state-table entry,
    /// 2. only with `disconnect_messages`: tell everyone left that holds its
    ///    eventfds (an ID without fd), and forget its eventfds,
    /// 3. ring vector 0 of everyone left, so that they look at the state
    ///    table,
    /// 4. close its socket (and, with `disconnect_messages`, its eventfds;
    ///    by default the server keeps them for the ID's next holder).
    ///
    /// A peer that cannot be told is dropped in turn.
    fn remove_peers(&mut self, mut queue: VecDeque<u16>, reason: &str) {
        let mut reason = reason;
        while let Some(id) = queue.pop_front() {
            let Some(peer) = self.peers.remove(&id) else {
                continue;
            };
            self.shm.set_state(id, 0);
            let mut failed = Vec::new();
            if self.disconnect_messages {
                for (&other_id, other) in self.peers.iter_mut() {
                    if !other.holds.remove(&id) {
                        continue;
                    }
                    if let Err(e) = protocol::send_message(
                        other.socket.as_fd(),
                        i64::from(id),
                        None,
                        self.send_timeout,
                    ) {
                        failed.push((other_id, e));
                    }
                }
            }
            for &other_id in self.peers.keys() {
                if let Err(e) = protocol::ring_eventfd(self.eventfds[&other_id][0].as_fd()) {
                    error!("ringing vector 0 of peer {other_id} after peer {id} left: {e}");
                }
            }
            if self.disconnect_messages {
                self.eventfds.remove(&id);
            }
            drop(peer);
            self.stats.peers_left += 1;
            info!("peer {id} left ({reason}); {} connected", self.peers.len());
            for (other_id, e) in failed {
                self.note_send_failure(other_id, &e);
                if !queue.contains(&other_id) {
                    queue.push_back(other_id);
                }
            }
            reason = "dropped after a failed send";
        }
        debug!(peers = ?self.peers.keys().collect::<Vec<_>>(), "peer table");
    }
}

/// A server running on its own thread: the library API for tests and for
/// embedding. Dropping the handle stops the server and removes the socket.
#[derive(Debug)]
pub struct ServerHandle {
    stop: OwnedFd,
    thread: Option<JoinHandle<Result<ServerStats, ServerError>>>,
    socket_path: PathBuf,
    layout: LayoutPage,
    window_size: u64,
}

impl ServerHandle {
    /// Binds (see [`Server::bind`]) on the calling thread, so that errors are
    /// returned here and the server is listening when this returns; then
    /// serves on a new thread.
    pub fn spawn(config: &ServerConfig) -> Result<Self, ServerError> {
        let mut server = Server::bind(config)?;
        let stop = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .map_err(ServerError::errno("eventfd"))?;
        let stop_rx = stop.try_clone().map_err(ServerError::io("dup eventfd"))?;
        let socket_path = server.socket_path().to_path_buf();
        let layout = *server.layout();
        let window_size = server.window_size();
        let thread = std::thread::Builder::new()
            .name("ivshmem-server".into())
            .spawn(move || server.run_until(stop_rx.as_fd(), |_| ControlFlow::Break(())))
            .map_err(ServerError::io("spawn server thread"))?;
        Ok(ServerHandle {
            stop,
            thread: Some(thread),
            socket_path,
            layout,
            window_size,
        })
    }

    /// The socket path to connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The layout the server wrote.
    pub fn layout(&self) -> &LayoutPage {
        &self.layout
    }

    /// Size of the shared memory.
    pub fn window_size(&self) -> u64 {
        self.window_size
    }

    /// Stops the server, waits for it, and returns its counters.
    pub fn stop(mut self) -> Result<ServerStats, ServerError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<ServerStats, ServerError> {
        let _ = protocol::ring_eventfd(self.stop.as_fd());
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(ServerError::Io {
                    what: "server thread".into(),
                    source: std::io::Error::other("panicked"),
                })
            }),
            None => Ok(ServerStats::default()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
