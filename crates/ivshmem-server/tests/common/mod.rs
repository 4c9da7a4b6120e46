//! Helpers shared by the integration tests: the server and peer binaries as
//! child processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Generous limit for anything that should take milliseconds.
pub const LIMIT: Duration = Duration::from_secs(10);

pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ivshmem-server")
}

pub fn peer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ivshmem-peer")
}

/// Polls for `cond` until `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An `ivshmem-server` child, killed on drop if still running.
pub struct ServerProc {
    pub child: Child,
    pub socket: PathBuf,
    pub ready_file: PathBuf,
}

impl ServerProc {
    /// Starts the server on `dir/ivshmem.sock` with `args` and waits for its
    /// ready file.
    pub fn start(dir: &Path, args: &[&str]) -> ServerProc {
        let socket = dir.join("ivshmem.sock");
        let ready_file = dir.join("ready");
        let child = Command::new(server_bin())
            .arg("--socket")
            .arg(&socket)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ivshmem-server");
        let mut server = ServerProc {
            child,
            socket,
            ready_file,
        };
        let ready = server.ready_file.clone();
        wait_until("the server's ready file", LIMIT, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("ivshmem-server exited early: {status}");
            }
            ready.exists()
        });
        server
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `ivshmem-peer` child: commands on stdin, lines from stdout.
pub struct PeerProc {
    pub child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub id: u16,
}

impl PeerProc {
    pub fn start(socket: &Path, extra: &[&str]) -> PeerProc {
        let mut child = Command::new(peer_bin())
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ivshmem-peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = PeerProc {
            child,
            stdin,
            lines,
            id: u16::MAX,
        };
        let ready = peer.expect_prefix("ready ");
        let id = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("id="))
            .unwrap();
        peer.id = id.parse().unwrap();
        peer
    }

    pub fn send(&mut self, command: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Next line starting with `prefix`, skipping others; panics after
    /// `LIMIT`.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => skipped.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line starting with {prefix:?} within {LIMIT:?}; skipped {skipped:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("peer exited before {prefix:?}; skipped {skipped:?}")
                }
            }
        }
    }

    /// Sends `command` and returns the reply line.
    pub fn command(&mut self, command: &str, reply_prefix: &str) -> String {
        self.send(command);
        self.expect_prefix(reply_prefix)
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
