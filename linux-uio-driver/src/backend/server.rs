//! The bridge as a host peer of ivnet's ivshmem-server (a memfd plus one
//! eventfd per vector and peer, exactly what a QEMU `ivshmem-doorbell`
//! device receives). The mappings and their permissions are the
//! [`HostPeer`]'s: own output section read-write, everything else the peer
//! writes read-only.
//!
//! There is no STATE register: the own state goes into the own state-table
//! entry, followed by a doorbell on the peer's vector 0
//! ([`HostPeer::publish_state`], over `ivshmem::OwnStateEntry`). When a peer's
//! connection closes, the server writes RESET into its entry and rings
//! vector 0 of everyone left, which is how the bridge notices a peer that
//! was killed.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use ivnet_driver::{LinkDevice, check_net_link, data_vector};
use ivnet_ring::LinkState;
use ivshmem_server::peer::{DoorbellError, Event, HostPeer};
use tracing::{debug, info, warn};

use super::{Backend, BackendError, Wake, monotonic_us};

/// A host peer of ivshmem-server carrying one ivshmem-net link.
pub struct ServerBackend {
    peer: HostPeer,
    path: String,
    peer_id: u16,
    data_vector: u16,
    /// Raw numbers of the own vectors' eventfds, by vector.
    vector_fds: Vec<RawFd>,
    server_fd: Option<RawFd>,
}

impl ServerBackend {
    /// Connects to the server at `path`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, BackendError> {
        let peer =
            HostPeer::connect(path, timeout).map_err(|e| BackendError::Server(e.to_string()))?;
        let layout = *peer.layout();
        let (_, peer_id) = check_net_link(
            layout.protocol,
            u32::from(layout.layout.max_peers),
            u32::from(peer.id()),
        )
        .map_err(|e| BackendError::Unsupported(format!("{}: {e}", path.display())))?;
        let vector_fds = peer.vector_fds().iter().map(|fd| fd.as_raw_fd()).collect();
        let server_fd = peer.server_fd().map(|fd| fd.as_raw_fd());
        Ok(ServerBackend {
            path: path.display().to_string(),
            peer_id,
            data_vector: data_vector(layout.vectors),
            vector_fds,
            server_fd,
            peer,
        })
    }
}

impl LinkDevice for ServerBackend {
    type Error = BackendError;

    fn peer_state(&self) -> u32 {
        self.peer
            .peer_state(self.peer_id)
            .expect("peer ID < max peers")
    }

    fn publish_state(&mut self, state: LinkState) -> Result<(), BackendError> {
        self.peer
            .publish_state(state.raw())
            .map_err(|e| BackendError::Server(e.to_string()))
    }

    fn vectors(&self) -> u32 {
        self.peer.layout().vectors
    }

    fn ring(&mut self, vector: u16) -> Result<(), BackendError> {
        match self.peer.doorbell(self.peer_id, u32::from(vector)) {
            Ok(()) => Ok(()),
            // Like QEMU: ringing a peer that is not connected does nothing.
            Err(DoorbellError::UnknownPeer(_)) => Ok(()),
            Err(e) => Err(BackendError::Server(e.to_string())),
        }
    }

    /// Eventfds need no re-arming.
    fn rearm(&mut self) {}

    fn now_us(&self) -> u64 {
        monotonic_us()
    }
}

impl Backend for ServerBackend {
    fn describe(&self) -> String {
        let l = self.peer.layout();
        format!(
            "{}: host peer {} of 2 (other peer {}{}), output sections {:#x} bytes, {} vectors (data on vector {})",
            self.path,
            self.peer.id(),
            self.peer_id,
            if self.peer.peers().contains(&self.peer_id) {
                ", connected"
            } else {
                ", not connected yet"
            },
            l.layout.output_section_size,
            l.vectors,
            self.data_vector
        )
    }
    fn own_id(&self) -> u16 {
        self.peer.id()
    }
    fn peer_id(&self) -> u16 {
        self.peer_id
    }
    fn section_len(&self) -> usize {
        self.peer.own_section().1
    }
    fn own_section(&self) -> *mut u8 {
        self.peer.own_section().0
    }
    fn peer_section(&self) -> *const u8 {
        self.peer
            .peer_section(self.peer_id)
            .expect("peer ID < max peers, not own ID")
            .0
    }
    fn wakeup_fds(&self) -> Vec<RawFd> {
        self.vector_fds
            .iter()
            .copied()
            .chain(self.server_fd)
            .collect()
    }
    fn on_wakeup(&mut self, fd: RawFd) -> Result<Wake, BackendError> {
        if let Some(vector) = self.vector_fds.iter().position(|v| *v == fd) {
            let n = self
                .peer
                .drain_vector(vector as u32)
                .map_err(|source| BackendError::Io {
                    what: "reading a vector eventfd",
                    source,
                })?;
            return Ok(Wake {
                doorbells: n,
                membership: false,
            });
        }
        let mut events = Vec::new();
        let res = self.peer.handle_server_messages_into(&mut events);
        for ev in &events {
            match ev {
                Event::PeerJoined(p) if *p == self.peer_id => info!("peer {p} joined the server"),
                Event::PeerLeft(p) if *p == self.peer_id => info!("peer {p} left the server"),
                Event::ServerGone => {
                    warn!(
                        "{}: the server closed the connection; peer departures will go unnoticed",
                        self.path
                    );
                    self.server_fd = None;
                }
                other => debug!("server event {other:?}"),
            }
        }
        if let Err(e) = res {
            warn!("{}: bad server message ignored: {e}", self.path);
        }
        Ok(Wake {
            doorbells: 0,
            membership: true,
        })
    }
}
