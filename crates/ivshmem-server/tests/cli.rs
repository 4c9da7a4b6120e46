//! The `ivshmem-server` command line: bad values, a socket in use, signals,
//! readiness (ready file, notify fd, pidfile, daemon).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{LIMIT, ServerProc, server_bin, wait_until};
use ivshmem_server::HostPeer;
use nix::sys::signal::Signal;

fn run(args: &[&str]) -> Output {
    Command::new(server_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ivshmem-server")
}

/// Runs the server with `args`, expecting it to fail at once with `code`
/// and `message` on stderr, and to leave nothing in `dir`.
fn assert_refused(dir: &Path, args: &[&str], code: i32, message: &str) {
    let socket = dir.join("s.sock");
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: expected {message:?} in stderr: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
}

#[test]
fn bad_values_exit_2_with_a_clear_message_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_refused(
        d,
        &["--output-section-size", "0x7f001"],
        2,
        "not a multiple of the 4 KiB page size",
    );
    assert_refused(
        d,
        &["--rw-section-size", "100"],
        2,
        "R/W section size 0x64 is not a multiple",
    );
    assert_refused(
        d,
        &["--output-section-size", "0"],
        2,
        "output section size must not be 0",
    );
    assert_refused(d, &["-l", "12Q"], 2, "invalid size \"12Q\"");
    assert_refused(d, &["--vectors", "0"], 2, "--vectors");
    assert_refused(d, &["--vectors", "65"], 2, "--vectors");
    assert_refused(d, &["--max-peers", "1"], 2, "--max-peers");
    assert_refused(d, &["--max-peers", "3"], 2, "links exactly 2 peers");
    assert_refused(d, &["--protocol", "bogus"], 2, "invalid protocol \"bogus\"");
    assert_refused(d, &["--log-level", "[[["], 2, "invalid --log-level");
    assert_refused(d, &["--notify-fd", "999"], 2, "not an open file descriptor");
    assert_refused(
        d,
        &["--shm-path", "/nonexistent-dir/x"],
        1,
        "/nonexistent-dir/x",
    );

    let long = format!("{}/{}", d.display(), "x".repeat(120));
    let out = run(&["--socket", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too long"));
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
}

#[test]
fn help_explains_itself() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--socket",
        "--shm-path",
        "--output-section-size",
        "--vectors",
        "--max-peers",
        "--protocol",
        "--pidfile",
        "--ready-file",
        "--notify-fd",
        "--daemon",
        "--log-level",
        "--disconnect-messages",
        "double free",
        "RESET",
        "Exit codes",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn socket_in_use_by_a_live_server_exits_3_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let out = run(&["--socket", server.socket.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("in use by a running server"), "{stderr}");
    assert!(server.socket.exists());
    let peer = HostPeer::connect(&server.socket, LIMIT).expect("first server still serves");
    assert_eq!(peer.id(), 0, "the refused start did not connect as a peer");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ivshmem.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let server = ServerProc::start(dir.path(), &[]);
    HostPeer::connect(&server.socket, LIMIT).expect("serves on the replaced socket");
}

#[test]
fn sigterm_and_sigint_remove_socket_and_files_and_exit_0() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut server = ServerProc::start(dir.path(), &["--pidfile", pidfile.to_str().unwrap()]);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, server.child.id());
        let ready = std::fs::read_to_string(&server.ready_file).unwrap();
        assert!(ready.contains(&format!("pid={pid}")), "{ready}");
        assert!(ready.contains("window_size=0x100000"), "{ready}");
        let _peer = HostPeer::connect(&server.socket, LIMIT).unwrap();

        server.signal(sig);
        assert_eq!(server.wait_exit(LIMIT).code(), Some(0), "{sig}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{sig}: left {left:?}");
    }
}

#[test]
fn notify_fd_says_ready_after_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ivshmem.sock");
    let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let tx_raw = tx.as_raw_fd();
    let mut cmd = Command::new(server_bin());
    cmd.arg("--socket").arg(&socket).args(["--notify-fd", "7"]);
    let dup_to_7 = move || -> std::io::Result<()> {
        if tx_raw == 7 {
            // dup2 onto itself is a no-op that keeps CLOEXEC: clear it.
            // SAFETY: fcntl on an fd we own touches no memory.
            if unsafe { nix::libc::fcntl(7, nix::libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        // SAFETY: dup2 touches no memory; it makes the pipe's write end fd 7
        // (without CLOEXEC, so the server inherits it).
        if unsafe { nix::libc::dup2(tx_raw, 7) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls dup2, which is async-signal-safe, and allocates nothing.
    unsafe { cmd.pre_exec(dup_to_7) };
    let child = cmd.spawn().unwrap();
    drop(tx);
    let _guard = KillOnDrop(child);
    let mut file = std::fs::File::from(rx);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).unwrap();
    assert_eq!(text, "READY\n", "READY, then the fd is closed (EOF)");
    assert!(socket.exists());
    HostPeer::connect(&socket, LIMIT).expect("listening when READY arrives");
}

#[test]
fn daemon_parent_exits_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ivshmem.sock");
    let pidfile = dir.path().join("pid");
    let out = Command::new(server_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
    // Listening by the time the parent exited.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _peer = HostPeer::connect(&socket, LIMIT).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_until("daemon removes its socket", LIMIT, || {
        !socket.exists() && !pidfile.exists()
    });

    // A failing daemon start makes the parent fail.
    let status = Command::new(server_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["--shm-path", "/nonexistent-dir/x", "--daemon"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!socket.exists());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn refusal_beyond_max_peers_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ivshmem.sock");
    let log = dir.path().join("server.log");
    let ready = dir.path().join("ready");
    let child = Command::new(server_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    wait_until("ready file", LIMIT, || ready.exists());
    let _a = HostPeer::connect(&socket, LIMIT).unwrap();
    let _b = HostPeer::connect(&socket, LIMIT).unwrap();
    let third = HostPeer::connect(&socket, LIMIT);
    assert!(
        matches!(third, Err(ivshmem_server::ClientError::ClosedDuringSetup)),
        "{third:?}"
    );
    wait_until("refusal in the log", LIMIT, || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("refusing connection: all 2 peer IDs are in use (--max-peers 2)")
    });
}
