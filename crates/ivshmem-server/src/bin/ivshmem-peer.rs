//! `ivshmem-peer`: a host peer on the command line, for debugging a link
//! (like QEMU's ivshmem-client) and as a separate process in tests.
//!
//! It prints one line per fact on stdout and takes commands on stdin:
//!
//! ```text
//! > ready id=<ID> peers=<P,…> window_size=<SIZE>   (after the setup)
//! > vector <N> | joined <ID> | left <ID> | server-gone
//! < ring <PEER> <VECTOR>     > ok | error <…>
//! < state <VALUE>            > ok | error <…>      (own state-table entry, then vector 0 of every peer)
//! < peer-state <PEER>        > state <PEER> <VALUE>
//! < peers                    > peers <P,…>
//! < quit
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ivshmem_server::{Event, HostPeer};
use rustix::event::{PollFd, PollFlags};

#[derive(Parser, Debug)]
#[command(
    name = "ivshmem-peer",
    version,
    about = "Join an ivshmem server as a host peer; \
commands on stdin (ring PEER VECTOR, state VALUE, peer-state PEER, peers, quit), events on stdout"
)]
struct Cli {
    /// The server's UNIX socket.
    #[arg(short = 'S', long = "socket", value_name = "PATH")]
    socket: PathBuf,
    /// Seconds to wait for the complete setup.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,
    /// Write this value into the own state-table entry after connecting, then
    /// ring vector 0 of every peer.
    #[arg(long, value_name = "VALUE")]
    state: Option<u32>,
}

fn join(ids: &[u16]) -> String {
    ids.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::try_from_secs_f64(cli.timeout).unwrap_or(Duration::from_secs(10));
    let mut peer = match HostPeer::connect(&cli.socket, timeout) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ivshmem-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(state) = cli.state
        && let Err(e) = peer.publish_state(state)
    {
        eprintln!("ivshmem-peer: publishing state {state}: {e}");
    }
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: String| {
        // A closed stdout ends the process like a closed stdin does.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    };
    say(
        &mut out,
        format!(
            "ready id={} peers={} window_size={:#x}",
            peer.id(),
            join(&peer.peers()),
            peer.window_size()
        ),
    );

    let mut pending: Vec<u8> = Vec::new();
    loop {
        let (stdin_ready, events) = {
            let stdin_fd = std::io::stdin();
            let mut fds = vec![PollFd::new(&stdin_fd, PollFlags::IN)];
            fds.extend(
                peer.vector_fds()
                    .into_iter()
                    .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
            );
            if let Some(server) = peer.server_fd() {
                fds.push(PollFd::from_borrowed_fd(server, PollFlags::IN));
            }
            if let Err(e) = ivshmem_server::protocol::poll(&mut fds, None) {
                eprintln!("ivshmem-peer: poll: {e}");
                return ExitCode::FAILURE;
            }
            (
                !fds[0].revents().is_empty(),
                fds.len() > 1 && fds[1..].iter().any(|f| !f.revents().is_empty()),
            )
        };
        if events {
            match peer.wait(Some(Duration::ZERO)) {
                Ok(events) => {
                    for event in events {
                        say(
                            &mut out,
                            match event {
                                Event::Vector(n) => format!("vector {n}"),
                                Event::PeerJoined(id) => format!("joined {id}"),
                                Event::PeerLeft(id) => format!("left {id}"),
                                Event::ServerGone => "server-gone".to_string(),
                            },
                        );
                    }
                }
                Err(e) => say(&mut out, format!("error {e}")),
            }
        }
        if !stdin_ready {
            continue;
        }
        // Raw reads, not a BufReader: buffered lines would hide from poll.
        let mut buf = [0u8; 4096];
        match rustix::io::read(std::io::stdin(), &mut buf) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => {
                eprintln!("ivshmem-peer: read stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            match command(&peer, &line) {
                Some(reply) => say(&mut out, reply),
                None if line == "quit" => return ExitCode::SUCCESS,
                None => {}
            }
        }
    }
}

/// Executes one command line; `None` for an empty line or `quit`.
fn command(peer: &HostPeer, line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["ring", p, v] => match (p.parse(), v.parse()) {
            (Ok(p), Ok(v)) => match peer.doorbell(p, v) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("error {e}"),
            },
            _ => "error usage: ring PEER VECTOR".to_string(),
        },
        ["state", v] => match v.parse() {
            Ok(v) => match peer.publish_state(v) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("error {e}"),
            },
            Err(_) => "error usage: state VALUE".to_string(),
        },
        ["peer-state", p] => match p.parse().ok().and_then(|p| Some((p, peer.peer_state(p)?))) {
            Some((p, v)) => format!("state {p} {v}"),
            None => "error usage: peer-state PEER (below max peers)".to_string(),
        },
        ["peers"] => format!("peers {}", join(&peer.peers())),
        ["quit"] | [] => return None,
        _ => format!("error unknown command {line:?}"),
    };
    Some(reply)
}
