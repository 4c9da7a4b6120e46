//! Real separate processes: the `ivshmem-server` binary, an `ivshmem-peer`
//! process and a host peer in this process. Doorbells both ways on both
//! vectors, `kill -9` of the peer process, ID reuse, SIGTERM.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{LIMIT, PeerProc, ServerProc};
use ivshmem_server::{Event, HostPeer};
use nix::sys::signal::Signal;

/// The departure notification target: the server must have reset the state
/// entry and rung vector 0 within this time after the peer was killed.
const DEPARTURE_BUDGET: Duration = Duration::from_millis(100);

fn wait_for(peer: &mut HostPeer, want: &[Event]) -> HashSet<Event> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = HashSet::new();
    while !want.iter().all(|e| seen.contains(e)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "waited for {want:?}, saw {seen:?}");
        seen.extend(peer.wait(Some(left)).unwrap());
    }
    seen
}

#[test]
fn kill_dash_nine_resets_state_and_rings_vector_zero_within_100ms() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &[]);

    // Peer process first: ID 0, publishes state 3 (RUN).
    let mut remote = PeerProc::start(&server.socket, &["--state", "3"]);
    assert_eq!(remote.id, 0);

    let mut local = HostPeer::connect(&server.socket, LIMIT).unwrap();
    assert_eq!(local.id(), 1);
    assert_eq!(local.peers(), vec![0]);
    assert_eq!(
        local.peer_state(0),
        Some(3),
        "the other process's state write is visible"
    );
    remote.expect_prefix("joined 1");

    // Both vectors, both ways, across processes.
    for vector in 0..2u32 {
        local.doorbell(0, vector).unwrap();
        assert_eq!(remote.expect_prefix("vector "), format!("vector {vector}"));
        assert_eq!(remote.command(&format!("ring 1 {vector}"), "ok"), "ok");
        let seen = wait_for(&mut local, &[Event::Vector(vector)]);
        assert_eq!(seen.len(), 1, "{seen:?}");
    }
    local.set_own_state(2);
    assert_eq!(remote.command("peer-state 1", "state "), "state 1 2");

    // kill -9: no chance to clean up; the server sees EOF on the socket.
    let killed_at = Instant::now();
    remote.child.kill().unwrap();
    let mut seen = HashSet::new();
    let mut elapsed = None;
    while elapsed.is_none() {
        assert!(
            killed_at.elapsed() < LIMIT,
            "no departure after {LIMIT:?}, saw {seen:?}"
        );
        seen.extend(local.wait(Some(Duration::from_millis(10))).unwrap());
        if seen.contains(&Event::Vector(0)) && local.peer_state(0) == Some(0) {
            elapsed = Some(killed_at.elapsed());
        }
    }
    let elapsed = elapsed.unwrap();
    eprintln!("departure seen (state 0 + vector 0) {elapsed:?} after kill -9");
    assert!(elapsed < DEPARTURE_BUDGET, "departure took {elapsed:?}");
    if !seen.contains(&Event::PeerLeft(0)) {
        wait_for(&mut local, &[Event::PeerLeft(0)]);
    }
    assert!(local.peers().is_empty());
    assert_eq!(local.peer_state(1), Some(2), "own state untouched");
    remote.child.wait().unwrap();

    // A new process gets the freed ID and sees us.
    // Same ID, same eventfds: no announcement; it shows as joined when it
    // publishes a state (and rings vector 0).
    let mut again = PeerProc::start(&server.socket, &["--state", "1"]);
    assert_eq!(again.id, 0, "lowest free ID is reused");
    wait_for(&mut local, &[Event::PeerJoined(0), Event::Vector(0)]);
    assert_eq!(again.command("peers", "peers"), "peers 1");
    assert_eq!(again.command("ring 1 1", "ok"), "ok");
    wait_for(&mut local, &[Event::Vector(1)]);

    // SIGTERM: clean exit, socket and ready file removed; peers are told.
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0));
    assert!(!server.socket.exists(), "socket removed");
    assert!(!server.ready_file.exists(), "ready file removed");
    wait_for(&mut local, &[Event::ServerGone]);
    again.expect_prefix("server-gone");
    // Doorbells do not depend on the server.
    local.doorbell(0, 0).unwrap();
    assert_eq!(again.expect_prefix("vector "), "vector 0");
}

#[test]
fn three_processes_each_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &["--protocol", "undefined", "--max-peers", "3"]);
    let mut p: Vec<PeerProc> = (0..3)
        .map(|_| PeerProc::start(&server.socket, &[]))
        .collect();
    assert_eq!(p.iter().map(|x| x.id).collect::<Vec<_>>(), vec![0, 1, 2]);
    p[0].expect_prefix("joined 1");
    p[0].expect_prefix("joined 2");
    p[1].expect_prefix("joined 2");
    for from in 0..3 {
        for to in 0..3u16 {
            if from as u16 == to {
                continue;
            }
            assert_eq!(p[from].command(&format!("ring {to} 1"), "ok"), "ok");
            assert_eq!(p[to as usize].expect_prefix("vector"), "vector 1");
        }
    }
    // A fourth is refused by the server.
    let out = std::process::Command::new(common::peer_bin())
        .arg("--socket")
        .arg(&server.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("closed the connection during setup"),
        "{stderr}"
    );
    assert_eq!(p[2].command("peers", "peers"), "peers 0,1");
}
