//! The host peer treats everything the server sends as untrusted: a scripted
//! fake server breaks each rule, and the peer must answer with the right
//! typed error (never a panic or a hang).

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use ivshmem::layout::{LayoutError, LayoutPage, PROTOCOL_NET};
use ivshmem_server::protocol::{FramingError, send_message};
use ivshmem_server::{ClientError, Event, HostPeer};
use rustix::event::EventfdFlags;
use rustix::fs::MemfdFlags;

const T: Duration = Duration::from_secs(5);

struct FakeServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("fake server script panicked");
        }
    }
}

/// A server that runs `script` on the first connection, then waits for the
/// client to hang up.
fn fake(script: impl FnOnce(&mut UnixStream) + Send + 'static) -> FakeServer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        script(&mut stream);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    });
    FakeServer {
        _dir: dir,
        path,
        thread: Some(thread),
    }
}

fn send(s: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) {
    send_message(s.as_fd(), value, fd, T).unwrap();
}

fn net_layout() -> LayoutPage {
    LayoutPage::new(PROTOCOL_NET, 2, 2, 0x1000, 0, 0x7f000)
}

fn shm(size: u64, layout: Option<LayoutPage>) -> OwnedFd {
    let fd = rustix::fs::memfd_create("fake-shm", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    if let Some(l) = layout {
        rustix::io::pwrite(&fd, &l.encode(), 0).unwrap();
    }
    fd
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
}

/// Version, ID `id`, and a valid 1 MiB ivshmem-net window.
fn preamble(s: &UnixStream, id: i64) {
    send(s, 0, None);
    send(s, id, None);
    send(s, -1, Some(shm(0x100000, Some(net_layout())).as_fd()));
}

fn connect_err(script: impl FnOnce(&mut UnixStream) + Send + 'static) -> ClientError {
    let server = fake(script);
    match HostPeer::connect(&server.path, T) {
        Ok(p) => panic!("connected as peer {} to a hostile server", p.id()),
        Err(e) => e,
    }
}

macro_rules! assert_err {
    ($err:expr, $pat:pat) => {{
        let err = $err;
        assert!(matches!(err, $pat), "got {err:?}");
        // Every error explains itself.
        assert!(!err.to_string().is_empty());
    }};
}

#[test]
fn bad_version_and_id_messages() {
    assert_err!(
        connect_err(|s| send(s, 1, None)),
        ClientError::UnsupportedVersion(1)
    );
    assert_err!(
        connect_err(|s| send(s, 0, Some(eventfd().as_fd()))),
        ClientError::UnexpectedFd("version")
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 70000, None);
        }),
        ClientError::InvalidId(70000)
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, -3, None);
        }),
        ClientError::InvalidId(-3)
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 0, Some(eventfd().as_fd()));
        }),
        ClientError::UnexpectedFd("ID")
    );
}

#[test]
fn bad_shared_memory_messages() {
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 0, None);
            send(s, 5, Some(eventfd().as_fd()));
        }),
        ClientError::ExpectedShm(5)
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 0, None);
            send(s, -1, None);
        }),
        ClientError::MissingShmFd
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 0, None);
            send(s, -1, Some(shm(0x3000, None).as_fd()));
        }),
        ClientError::BadShmSize(0x3000)
    );
    assert_err!(
        connect_err(|s| {
            let (r, _w) = rustix::pipe::pipe().unwrap();
            send(s, 0, None);
            send(s, 0, None);
            send(s, -1, Some(r.as_fd()));
        }),
        ClientError::ShmNotRegular(_)
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 0, None);
            send(s, -1, Some(shm(0x100000, None).as_fd()));
        }),
        ClientError::Layout(LayoutError::BadMagic(_))
    );
    assert_err!(
        connect_err(|s| {
            send(s, 0, None);
            send(s, 0, None);
            send(s, -1, Some(shm(0x80000, Some(net_layout())).as_fd()));
        }),
        ClientError::Layout(LayoutError::DoesNotFit { .. })
    );
    assert_err!(
        connect_err(|s| preamble(s, 5)),
        ClientError::IdOutOfRange {
            id: 5,
            max_peers: 2
        }
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, -1, Some(shm(0x100000, Some(net_layout())).as_fd()));
        }),
        ClientError::DuplicateShm
    );
}

#[test]
fn bad_eventfd_and_peer_messages() {
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, 1, Some(shm(0x1000, None).as_fd()));
        }),
        ClientError::NotAnEventfd { peer: 1, .. }
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            for _ in 0..3 {
                send(s, 1, Some(eventfd().as_fd()));
            }
        }),
        ClientError::TooManyEventfds {
            peer: 1,
            vectors: 2
        }
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, 9, Some(eventfd().as_fd()));
        }),
        ClientError::PeerOutOfRange {
            peer: 9,
            max_peers: 2
        }
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, -5, None);
        }),
        ClientError::InvalidMessage(-5)
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, 1 << 20, None);
        }),
        ClientError::InvalidMessage(0x100000)
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, 1, None);
        }),
        ClientError::InvalidDisconnect(1)
    );
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            send(s, 0, None);
        }),
        ClientError::InvalidDisconnect(0)
    );
}

#[test]
fn framing_violations_and_silence() {
    // Two fds with one message.
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            let (a, b) = (eventfd(), eventfd());
            let fds = [a.as_fd(), b.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(
                s.as_fd(),
                &[std::io::IoSlice::new(&1i64.to_le_bytes())],
                &mut control,
                rustix::net::SendFlags::empty(),
            )
            .unwrap();
        }),
        ClientError::Framing(FramingError::TooManyFds)
    );
    // Half a message, then the server hangs up.
    assert_err!(
        connect_err(|s| {
            preamble(s, 0);
            s.write_all(&[1, 0, 0, 0]).unwrap();
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }),
        ClientError::Framing(FramingError::TruncatedMessage(4))
    );
    // The server closes at once (as ivshmem-server does when full).
    assert_err!(
        connect_err(|s| s.shutdown(std::net::Shutdown::Both).unwrap()),
        ClientError::ClosedDuringSetup
    );
    // The server says nothing: the timeout applies.
    let server = fake(|_| std::thread::sleep(Duration::from_millis(400)));
    let start = std::time::Instant::now();
    let err = HostPeer::connect(&server.path, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // No server at all.
    let err = HostPeer::connect("/nonexistent/ivshmem.sock", T).unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

#[test]
fn messages_split_across_writes_are_reassembled() {
    let server = fake(|s| {
        // Version and ID byte by byte.
        for value in [0i64, 1] {
            for byte in value.to_le_bytes() {
                s.write_all(&[byte]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        send(s, -1, Some(shm(0x100000, Some(net_layout())).as_fd()));
        for _ in 0..2 {
            send(s, 0, Some(eventfd().as_fd()));
        }
        for _ in 0..2 {
            send(s, 1, Some(eventfd().as_fd()));
        }
    });
    let peer = HostPeer::connect(&server.path, T).unwrap();
    assert_eq!(peer.id(), 1);
    assert_eq!(peer.peers(), vec![0]);
}

#[test]
fn a_bad_message_after_setup_is_reported_and_later_ones_still_processed() {
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let server = fake(move |s| {
        preamble(s, 0);
        for _ in 0..2 {
            send(s, 0, Some(eventfd().as_fd()));
        }
        go_rx.recv().unwrap();
        send(s, -7, None);
        for _ in 0..2 {
            send(s, 1, Some(eventfd().as_fd()));
        }
    });
    let mut peer = HostPeer::connect(&server.path, T).unwrap();
    go_tx.send(()).unwrap();
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while !events.contains(&Event::PeerJoined(1)) {
        assert!(
            std::time::Instant::now() < deadline,
            "events {events:?} errors {errors:?}"
        );
        let fd = peer.server_fd().unwrap();
        ivshmem_server::protocol::wait_fd(fd, rustix::event::PollFlags::IN, Some(T)).unwrap();
        if let Err(e) = peer.handle_server_messages_into(&mut events) {
            errors.push(e);
        }
    }
    assert!(
        matches!(errors.as_slice(), [ClientError::InvalidMessage(-7)]),
        "{errors:?}"
    );
    assert_eq!(peer.peers(), vec![1]);
    peer.doorbell(1, 1).unwrap();
}
