//! Host peers against an in-process server: setup, doorbells on every vector
//! in both directions, sections and permissions, state table, departure,
//! ID reuse and the max-peers refusal — in the default departure mode
//! (state table + vector 0, eventfds kept per ID) and in the
//! `disconnect_messages` mode (QEMU's upstream protocol).

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ivshmem::layout::{LAYOUT_MAGIC, PROTOCOL_NET, PROTOCOL_UNDEFINED};
use ivshmem_server::{ClientError, DoorbellError, Event, HostPeer, ServerConfig, ServerHandle};

const SETUP: Duration = Duration::from_secs(10);

fn server(dir: &Path, configure: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
    let mut config = ServerConfig::new(dir.join("ivshmem.sock"));
    configure(&mut config);
    ServerHandle::spawn(&config).expect("server starts")
}

/// Waits until `want` has been seen among the events of `peer`, collecting
/// everything seen on the way. Panics after `limit`.
fn wait_for(peer: &mut HostPeer, want: &[Event], limit: Duration) -> HashSet<Event> {
    let deadline = Instant::now() + limit;
    let mut seen = HashSet::new();
    while !want.iter().all(|e| seen.contains(e)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "peer {}: waited {limit:?} for {want:?}, saw {seen:?}",
            peer.id()
        );
        seen.extend(peer.wait(Some(left)).expect("wait"));
    }
    seen
}

/// Asserts that nothing arrives for a short while.
fn assert_quiet(peer: &mut HostPeer) {
    let events = peer.wait(Some(Duration::from_millis(50))).expect("wait");
    assert!(
        events.is_empty(),
        "peer {} got unexpected {events:?}",
        peer.id()
    );
}

/// Permissions of the mapping that contains `addr`, from /proc/self/maps.
fn mapping_perms(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&addr) {
            return perms.to_string();
        }
    }
    panic!("{addr:#x} is not mapped");
}

#[test]
fn two_peers_join_ring_both_vectors_both_ways_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    assert_eq!(
        server.window_size(),
        0x100000,
        "two 0x7f000 sections fit 1 MiB"
    );

    let mut a = HostPeer::connect(server.socket_path(), SETUP).expect("peer A connects");
    assert_eq!(a.id(), 0, "first peer gets ID 0");
    assert_eq!(a.peers(), Vec::<u16>::new());
    assert_eq!(a.layout().protocol, PROTOCOL_NET);
    assert_eq!(a.layout().vectors, 2);
    assert_eq!(a.layout().layout.output_section_size, 0x7f000);
    assert_eq!(a.window_size(), 0x100000);
    assert_eq!(a.vector_fds().len(), 2);

    let mut b = HostPeer::connect(server.socket_path(), SETUP).expect("peer B connects");
    assert_eq!(b.id(), 1);
    assert_eq!(b.peers(), vec![0], "B learns about A during its setup");
    wait_for(&mut a, &[Event::PeerJoined(1)], SETUP);
    assert_eq!(a.peers(), vec![1]);

    // Doorbells on both vectors, both ways; each arrives exactly where sent.
    for vector in 0..2 {
        a.doorbell(1, vector).unwrap();
        assert_eq!(wait_for(&mut b, &[Event::Vector(vector)], SETUP).len(), 1);
        assert_quiet(&mut a);
        b.doorbell(0, vector).unwrap();
        assert_eq!(wait_for(&mut a, &[Event::Vector(vector)], SETUP).len(), 1);
        assert_quiet(&mut b);
    }
    // Several rings before a drain coalesce into one event, counted.
    a.doorbell(1, 1).unwrap();
    a.doorbell(1, 1).unwrap();
    a.doorbell(1, 1).unwrap();
    assert_eq!(b.drain_vector(1).unwrap(), 3);
    assert_eq!(b.drain_vector(1).unwrap(), 0);

    // Unknown targets are typed errors.
    assert!(matches!(
        a.doorbell(5, 0),
        Err(DoorbellError::UnknownPeer(5))
    ));
    assert!(matches!(
        a.doorbell(1, 2),
        Err(DoorbellError::NoSuchVector { peer: 1, vector: 2 })
    ));

    // Sections: each writes its own, reads the other's.
    let (own_a, len_a) = a.own_section();
    assert_eq!(len_a, 0x7f000);
    // SAFETY: `own_a` is A's read-write section of `len_a` bytes.
    unsafe { std::ptr::copy_nonoverlapping(b"from A".as_ptr(), own_a.wrapping_add(100), 6) };
    let (peer_a, len) = b.peer_section(0).expect("B sees A's section");
    assert_eq!(len, 0x7f000);
    let mut buf = [0u8; 6];
    // SAFETY: `peer_a` is A's section mapped read-only in B, `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(peer_a.wrapping_add(100), buf.as_mut_ptr(), 6) };
    assert_eq!(&buf, b"from A");
    assert!(b.peer_section(1).is_none(), "own ID has no peer section");
    assert!(b.peer_section(2).is_none(), "beyond max peers");

    // Permissions: own section RW, the other's section and the state table
    // read-only, all shared.
    assert_eq!(&mapping_perms(own_a as usize)[..3], "rw-");
    assert_eq!(mapping_perms(peer_a as usize), "r--s");
    let (own_b, _) = b.own_section();
    let (peer_b, _) = a.peer_section(1).unwrap();
    assert_eq!(mapping_perms(own_b as usize), "rw-s");
    assert_eq!(mapping_perms(peer_b as usize), "r--s");

    // The state table: both start at 0, writes are seen by the other.
    assert_eq!(a.peer_state(0), Some(0));
    assert_eq!(a.peer_state(1), Some(0));
    assert_eq!(a.peer_state(2), None);
    a.publish_state(1).unwrap();
    assert_eq!(wait_for(&mut b, &[Event::Vector(0)], SETUP).len(), 1);
    b.publish_state(3).unwrap();
    assert_eq!(
        wait_for(&mut a, &[Event::Vector(0)], SETUP).len(),
        1,
        "a state change of a present peer is no membership event"
    );
    assert_eq!(b.peer_state(0), Some(1));
    assert_eq!(a.peer_state(1), Some(3));

    // B leaves: A sees its state reset to 0 and vector 0, and reports the
    // departure; no message comes from the server (default mode).
    drop(b);
    let seen = wait_for(&mut a, &[Event::PeerLeft(1), Event::Vector(0)], SETUP);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        a.peer_state(1),
        Some(0),
        "server reset the departed peer's state"
    );
    assert_eq!(a.peer_state(0), Some(1), "own state untouched");
    assert!(a.peers().is_empty());
    assert_quiet(&mut a);
    // A still holds ID 1's eventfds; a ring nobody reads is harmless.
    a.doorbell(1, 0).unwrap();

    let stats = server.stop().unwrap();
    assert_eq!(stats.peers_joined, 2);
    assert_eq!(
        stats.peers_left, 1,
        "A was still connected when the server stopped"
    );
}

#[test]
fn layout_page_and_state_table_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| {
        c.protocol = PROTOCOL_UNDEFINED;
        c.max_peers = 3;
        c.vectors = 1;
        c.output_section_size = 0x10000;
        c.rw_section_size = 0x2000;
    });
    // 0x1000 page + 0x1000 state + 0x2000 rw + 3 * 0x10000 = 0x34000 -> 0x40000
    assert_eq!(server.window_size(), 0x40000);
    let peer = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    assert_eq!(peer.window_size(), 0x40000);
    let l = peer.layout();
    assert_eq!(
        (l.protocol, l.vectors, l.layout.max_peers),
        (PROTOCOL_UNDEFINED, 1, 3)
    );
    assert_eq!(l.layout.state_table_offset, 0x1000);
    assert_eq!(l.layout.rw_section_offset(), 0x2000);
    assert_eq!(l.layout.output_section_offset(0), Some(0x4000));
    let (rw, rw_len) = peer.rw_section().expect("R/W section present");
    assert_eq!(rw_len, 0x2000);
    assert_eq!(&mapping_perms(rw as usize)[..2], "rw");

    // Read the raw page through a private read-only view of the fd.
    let raw = memmap2::MmapOptions::new()
        .len(0x2000)
        .map_raw_read_only(std::os::fd::AsRawFd::as_raw_fd(&peer.shm_fd()))
        .unwrap();
    let mut page = [0u8; 0x2000];
    // SAFETY: the mapping is 0x2000 bytes; this copies it once.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), page.as_mut_ptr(), page.len()) };
    assert_eq!(page[..8], LAYOUT_MAGIC);
    assert!(
        page[0x30..].iter().all(|&b| b == 0),
        "rest of the page and the state table are zero"
    );
}

#[test]
fn new_peer_reuses_lowest_free_id_and_max_peers_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| {
        c.protocol = PROTOCOL_UNDEFINED;
        c.max_peers = 3;
    });
    let mut p0 = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    let mut p1 = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    let mut p2 = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    assert_eq!((p0.id(), p1.id(), p2.id()), (0, 1, 2));
    assert_eq!(p2.peers(), vec![0, 1]);

    // A fourth is refused: the server closes the connection, which shows as
    // an error during setup, promptly.
    let start = Instant::now();
    let refused = HostPeer::connect(server.socket_path(), SETUP);
    assert!(
        matches!(refused, Err(ClientError::ClosedDuringSetup)),
        "{refused:?}"
    );
    assert!(start.elapsed() < SETUP / 2);

    // The middle one (up: state 1) leaves; the next newcomer gets its ID
    // and the same eventfds, so it is not announced again: the others see
    // it join when its state leaves 0.
    wait_for(&mut p1, &[Event::PeerJoined(2)], SETUP);
    p1.publish_state(1).unwrap();
    wait_for(&mut p0, &[Event::Vector(0)], SETUP);
    wait_for(&mut p2, &[Event::Vector(0)], SETUP);
    drop(p1);
    wait_for(&mut p0, &[Event::PeerLeft(1), Event::Vector(0)], SETUP);
    wait_for(&mut p2, &[Event::PeerLeft(1), Event::Vector(0)], SETUP);
    let mut p1b = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    assert_eq!(p1b.id(), 1);
    assert_eq!(p1b.peers(), vec![0, 2]);
    assert_quiet(&mut p0);
    p1b.publish_state(1).unwrap();
    wait_for(&mut p0, &[Event::PeerJoined(1), Event::Vector(0)], SETUP);
    wait_for(&mut p2, &[Event::PeerJoined(1), Event::Vector(0)], SETUP);
    assert_eq!(p0.peers(), vec![1, 2]);
    p1b.doorbell(2, 1).unwrap();
    wait_for(&mut p2, &[Event::Vector(1)], SETUP);
    p2.doorbell(1, 1).unwrap();
    wait_for(&mut p1b, &[Event::Vector(1)], SETUP);

    let stats = server.stop().unwrap();
    assert_eq!(stats.refused_full, 1);
    assert_eq!(stats.peers_joined, 4);
}

#[test]
fn server_gone_is_reported_and_doorbells_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let socket = server.socket_path().to_path_buf();
    let mut a = HostPeer::connect(&socket, SETUP).unwrap();
    let mut b = HostPeer::connect(&socket, SETUP).unwrap();
    wait_for(&mut a, &[Event::PeerJoined(1)], SETUP);
    server.stop().unwrap();
    assert!(!socket.exists(), "stopping removes the socket");
    wait_for(&mut a, &[Event::ServerGone], SETUP);
    assert!(a.server_fd().is_none());
    a.doorbell(1, 0).unwrap();
    wait_for(&mut b, &[Event::ServerGone, Event::Vector(0)], SETUP);
}

#[test]
fn second_server_on_a_live_socket_is_refused_and_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = server(dir.path(), |_| {});
    let config = ServerConfig::new(first.socket_path());
    let err = ServerHandle::spawn(&config).expect_err("socket in use");
    assert!(
        matches!(err, ivshmem_server::ServerError::SocketInUse(_)),
        "{err}"
    );
    // The live server is unaffected.
    let peer = HostPeer::connect(first.socket_path(), SETUP).unwrap();
    assert_eq!(peer.id(), 0);
    drop(peer);
    drop(first);

    // A stale socket file (bound, nobody listening) is replaced.
    let path = dir.path().join("ivshmem.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let second = ServerHandle::spawn(&config).expect("stale socket replaced");
    HostPeer::connect(second.socket_path(), SETUP).unwrap();

    // A regular file is never removed.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let err = ServerHandle::spawn(&ServerConfig::new(&file)).expect_err("not a socket");
    assert!(
        matches!(err, ivshmem_server::ServerError::NotASocket(_)),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert!(
        !dir.path().join("not-a-socket.lock").exists(),
        "nothing half-created left"
    );
}

#[test]
fn shm_path_directory_and_named_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory gets an anonymous (unlinked) file.
    let shm_dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let s = server(dir.path(), |c| {
        c.shm = ivshmem_server::ShmBacking::Path(shm_dir.path().into())
    });
    let p = HostPeer::connect(s.socket_path(), SETUP).unwrap();
    assert_eq!(p.window_size(), 0x100000);
    assert_eq!(
        std::fs::read_dir(shm_dir.path()).unwrap().count(),
        0,
        "file unlinked"
    );
    drop(p);
    drop(s);

    // A named file is created, and removed at exit; an existing one is
    // refused.
    let file = shm_dir.path().join("link0");
    let s = server(dir.path(), |c| {
        c.shm = ivshmem_server::ShmBacking::Path(file.clone())
    });
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0x100000);
    let mut cfg = ServerConfig::new(dir.path().join("other.sock"));
    cfg.shm = ivshmem_server::ShmBacking::Path(file.clone());
    let err = ServerHandle::spawn(&cfg).expect_err("existing file refused");
    assert!(err.to_string().contains("exists"), "{err}");
    assert!(!dir.path().join("other.sock").exists());
    drop(s);
    assert!(!file.exists(), "named file removed at exit");
}

/// Reads every message that arrives within a short while, raw.
fn read_raw(stream: &std::os::unix::net::UnixStream) -> Vec<(i64, bool)> {
    use std::os::fd::AsFd;
    let mut reader = ivshmem_server::protocol::MessageReader::new();
    let mut out = Vec::new();
    loop {
        match reader.read(stream.as_fd()) {
            Ok(Some(msg)) => out.push((msg.value, msg.fd.is_some())),
            Ok(None) => {
                let more = ivshmem_server::protocol::wait_fd(
                    stream.as_fd(),
                    rustix::event::PollFlags::IN,
                    Some(Duration::from_millis(200)),
                )
                .unwrap();
                if !more {
                    return out;
                }
            }
            Err(e) => panic!("raw read: {e}"),
        }
    }
}

#[test]
fn wire_sequence_with_disconnect_messages_is_exactly_qemus() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| {
        c.protocol = PROTOCOL_UNDEFINED;
        c.max_peers = 3;
        c.vectors = 3;
        c.disconnect_messages = true;
    });
    let first = std::os::unix::net::UnixStream::connect(server.socket_path()).unwrap();
    first.set_nonblocking(true).unwrap();
    let fd = |v| (v, true);
    let no = |v| (v, false);
    assert_eq!(
        read_raw(&first),
        vec![no(0), no(0), fd(-1), fd(0), fd(0), fd(0)],
        "version, ID, shm, own vectors"
    );
    let second = std::os::unix::net::UnixStream::connect(server.socket_path()).unwrap();
    second.set_nonblocking(true).unwrap();
    assert_eq!(
        read_raw(&second),
        vec![
            no(0),
            no(1),
            fd(-1),
            fd(0),
            fd(0),
            fd(0),
            fd(1),
            fd(1),
            fd(1)
        ],
        "version, ID, shm, peer 0's vectors, own vectors"
    );
    assert_eq!(
        read_raw(&first),
        vec![fd(1), fd(1), fd(1)],
        "peer 1 announced with its vectors"
    );
    drop(second);
    assert_eq!(
        read_raw(&first),
        vec![no(1)],
        "disconnect: the ID without an fd"
    );
    // The ID is announced again (with fresh eventfds) when it is reused.
    let third = std::os::unix::net::UnixStream::connect(server.socket_path()).unwrap();
    third.set_nonblocking(true).unwrap();
    assert_eq!(read_raw(&third)[..3], [no(0), no(1), fd(-1)]);
    assert_eq!(read_raw(&first), vec![fd(1), fd(1), fd(1)]);
}

/// Reads every message that arrives within a short while, keeping the fds.
fn read_raw_fds(stream: &std::os::unix::net::UnixStream) -> Vec<(i64, Option<OwnedFd>)> {
    use std::os::fd::AsFd;
    let mut reader = ivshmem_server::protocol::MessageReader::new();
    let mut out = Vec::new();
    loop {
        match reader.read(stream.as_fd()) {
            Ok(Some(msg)) => out.push((msg.value, msg.fd)),
            Ok(None) => {
                let more = ivshmem_server::protocol::wait_fd(
                    stream.as_fd(),
                    rustix::event::PollFlags::IN,
                    Some(Duration::from_millis(200)),
                )
                .unwrap();
                if !more {
                    return out;
                }
            }
            Err(e) => panic!("raw read: {e}"),
        }
    }
}

fn shape(messages: &[(i64, Option<OwnedFd>)]) -> Vec<(i64, bool)> {
    messages.iter().map(|(v, fd)| (*v, fd.is_some())).collect()
}

/// Default mode: no disconnect message; a returning ID is not announced to
/// a client that holds its eventfds, and its new holder gets the very same
/// eventfd objects, drained of doorbells rung while nobody held the ID. A
/// new ID is still announced to everyone.
#[test]
fn wire_sequence_default_mode_keeps_eventfds_per_id() {
    use ivshmem_server::protocol::{drain_eventfd, ring_eventfd};
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| {
        c.protocol = PROTOCOL_UNDEFINED;
        c.max_peers = 3;
        c.vectors = 2;
    });
    let connect = || {
        let s = std::os::unix::net::UnixStream::connect(server.socket_path()).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let fd = |v| (v, true);
    let no = |v| (v, false);
    let first = connect();
    assert_eq!(
        shape(&read_raw_fds(&first)),
        vec![no(0), no(0), fd(-1), fd(0), fd(0)]
    );
    let second = connect();
    assert_eq!(
        shape(&read_raw_fds(&second)),
        vec![no(0), no(1), fd(-1), fd(0), fd(0), fd(1), fd(1)]
    );
    let announced = read_raw_fds(&first);
    assert_eq!(shape(&announced), vec![fd(1), fd(1)]);
    let id1_in_first: Vec<OwnedFd> = announced.into_iter().map(|(_, f)| f.unwrap()).collect();

    drop(second);
    assert!(read_raw_fds(&first).is_empty(), "no disconnect message");
    // Rung while ID 1 is free: must not reach its next holder.
    ring_eventfd(id1_in_first[1].as_fd()).unwrap();

    let third = connect();
    let setup = read_raw_fds(&third);
    assert_eq!(
        shape(&setup),
        vec![no(0), no(1), fd(-1), fd(0), fd(0), fd(1), fd(1)]
    );
    assert!(read_raw_fds(&first).is_empty(), "ID 1 is not re-announced");
    let own: Vec<&OwnedFd> = setup[5..]
        .iter()
        .map(|(_, f)| f.as_ref().unwrap())
        .collect();
    for fd in &own {
        rustix::io::ioctl_fionbio(fd, true).unwrap();
    }
    assert_eq!(
        drain_eventfd(own[1].as_fd()).unwrap(),
        0,
        "stale ring drained"
    );
    // The same objects: what the first client rings, the third receives.
    for vector in 0..2 {
        ring_eventfd(id1_in_first[vector].as_fd()).unwrap();
        assert_eq!(drain_eventfd(own[vector].as_fd()).unwrap(), 1);
        assert_eq!(drain_eventfd(own[1 - vector].as_fd()).unwrap(), 0);
    }

    // A new ID is announced to both.
    let fourth = connect();
    assert_eq!(shape(&read_raw_fds(&fourth))[..3], [no(0), no(2), fd(-1)]);
    assert_eq!(shape(&read_raw_fds(&first)), vec![fd(2), fd(2)]);
    assert_eq!(shape(&read_raw_fds(&third)), vec![fd(2), fd(2)]);
    drop(fourth);
    assert!(read_raw_fds(&first).is_empty());
    assert!(read_raw_fds(&third).is_empty());
}

/// `disconnect_messages` mode through the host peer: the departure comes as
/// a message (no state change needed), the departed ID can no longer be
/// rung, and a newcomer on that ID is announced again.
#[test]
fn host_peers_with_disconnect_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| c.disconnect_messages = true);
    let mut a = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    let b = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    wait_for(&mut a, &[Event::PeerJoined(1)], SETUP);
    drop(b);
    let seen = wait_for(&mut a, &[Event::PeerLeft(1), Event::Vector(0)], SETUP);
    assert_eq!(seen.len(), 2, "departure reported once: {seen:?}");
    assert!(a.peers().is_empty());
    assert!(matches!(
        a.doorbell(1, 0),
        Err(DoorbellError::UnknownPeer(1))
    ));
    let mut c = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    assert_eq!(c.id(), 1);
    wait_for(&mut a, &[Event::PeerJoined(1)], SETUP);
    a.doorbell(1, 1).unwrap();
    wait_for(&mut c, &[Event::Vector(1)], SETUP);
    // A peer that was up and leaves is still reported once.
    c.publish_state(3).unwrap();
    wait_for(&mut a, &[Event::Vector(0)], SETUP);
    drop(c);
    let seen = wait_for(&mut a, &[Event::PeerLeft(1), Event::Vector(0)], SETUP);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_quiet(&mut a);
    let stats = server.stop().unwrap();
    assert_eq!((stats.peers_joined, stats.peers_left), (3, 2));
}

#[test]
fn a_client_that_sends_anything_is_dropped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let mut a = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    let mut rude = std::os::unix::net::UnixStream::connect(server.socket_path()).unwrap();
    wait_for(&mut a, &[Event::PeerJoined(1)], SETUP);
    // Clients never send; the server treats it like a departure: vector 0
    // rung, and ID 1 free again.
    rude.write_all(b"hello").unwrap();
    wait_for(&mut a, &[Event::Vector(0)], SETUP);
    let next = HostPeer::connect(server.socket_path(), SETUP).unwrap();
    assert_eq!(next.id(), 1, "the rude client's ID was freed");
    let stats = server.stop().unwrap();
    assert_eq!(stats.peers_left, 1, "only the rude client left");
}
