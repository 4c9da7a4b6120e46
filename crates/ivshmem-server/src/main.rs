//! `ivshmem-server`: serves QEMU `ivshmem-doorbell` devices and ivnet host
//! peers one shared memory with an ivnet layout page. See the crate docs for
//! the protocol.

use std::io::Write;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ivshmem::layout::{PROTOCOL_NET, PROTOCOL_UNDEFINED};
use ivshmem_server::server::{DEFAULT_VECTORS, MAX_VECTORS};
use ivshmem_server::size::parse_size;
use ivshmem_server::{Server, ServerConfig, ServerError, ShmBacking};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Exit code for an invalid command line or configuration.
const EXIT_USAGE: u8 = 2;
/// Exit code when another server is listening on the socket path.
const EXIT_SOCKET_IN_USE: u8 = 3;
/// Exit code for other failures.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "ivshmem-server",
    version,
    about = "Shared memory and doorbells for QEMU ivshmem-doorbell devices and ivnet host peers",
    long_about = "\
Shared memory and doorbells for QEMU ivshmem-doorbell devices and ivnet host peers.

Speaks QEMU's ivshmem-server protocol on a UNIX socket: every client (a QEMU \
`-device ivshmem-doorbell,chardev=…` or an ivnet host peer such as ivnet-bridge) \
gets the lowest free peer ID, the shared memory and one eventfd per vector of \
every peer. The server writes an ivnet layout page (magic IVSHMEM2) into the \
first 4 KiB and zeroes the state table before it listens; the window is sized \
to the next power of two. When a peer leaves, the server writes 0 (RESET) into \
its state-table entry and rings vector 0 of every remaining peer, as the \
Jailhouse hypervisor would.

By default that is the only departure signal: each peer ID keeps its eventfds \
for the server's lifetime, a returning ID gets the same eventfds back, and no \
disconnect message is sent, because QEMU 7.2 crashes when an ID it was told \
about disconnects twice (see --disconnect-messages).

QEMU reads its setup while the device realizes, so start the server first and \
wait for it: use --ready-file or --notify-fd, or --daemon (the parent exits \
once the server listens).

Example (an ivshmem-net link, 1 MiB window):
  ivshmem-server --socket /run/ivnet.sock --ready-file /run/ivnet.ready
  qemu-system-x86_64 … -chardev socket,path=/run/ivnet.sock,id=ivs \\
      -device ivshmem-doorbell,chardev=ivs,vectors=2",
    after_help = "\
Sizes accept 0x7f000, 520192, 508K or 1M (binary units) and must be multiples of 4 KiB.
SIGTERM, SIGINT or SIGHUP: remove the socket and exit 0. SIGUSR1: log the peers and counters.
Exit codes: 0 clean stop, 1 runtime failure, 2 invalid arguments, 3 socket in use by a running server."
)]
struct Cli {
    /// UNIX socket to listen on (QEMU: -chardev socket,path=PATH). A stale
    /// socket file nobody listens on is replaced; PATH.lock guards against
    /// a second server.
    #[arg(short = 'S', long = "socket", value_name = "PATH")]
    socket: PathBuf,

    /// Back the shared memory with a file instead of a memfd: a directory
    /// (tmpfs such as /dev/shm, or a hugetlbfs mount) gets an anonymous file
    /// that is unlinked at once; any other path is created (it must not
    /// exist) and removed at exit.
    #[arg(short = 'm', long, value_name = "PATH")]
    shm_path: Option<PathBuf>,

    /// Size of each peer's output section. Multiple of 4 KiB.
    #[arg(short = 'l', long, value_name = "SIZE", default_value = "0x7f000", value_parser = parse_size)]
    output_section_size: u64,

    /// Size of the common read/write section between the state table and the
    /// output sections. Multiple of 4 KiB.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    rw_section_size: u64,

    /// Vectors (eventfds, MSI-X vectors on QEMU) per peer; match QEMU's
    /// `vectors=`.
    #[arg(short = 'n', long, value_name = "N", default_value_t = DEFAULT_VECTORS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VECTORS)))]
    vectors: u32,

    /// Peer IDs 0..N and as many output sections. Connections beyond N are
    /// refused (and logged).
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(2..))]
    max_peers: u16,

    /// PCI protocol in the layout page: `net` (ivshmem-net, 0x0001, exactly
    /// 2 peers), `undefined` (0x0000), or a number.
    #[arg(long, value_name = "PROTO", default_value = "net", value_parser = parse_protocol)]
    protocol: u16,

    /// Write the process ID to this file once listening; removed at exit.
    #[arg(short = 'p', long, value_name = "PATH")]
    pidfile: Option<PathBuf>,

    /// Create this file (atomically) once the socket listens; removed at
    /// exit. Contains `pid=`, `socket=` and `window_size=` lines.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,

    /// Write "READY\n" to this inherited file descriptor once the socket
    /// listens, then close it (e.g. the write end of a pipe).
    #[arg(long, value_name = "FD")]
    notify_fd: Option<RawFd>,

    /// Detach: fork, start a new session and chdir to /. The parent exits 0
    /// once the server listens (1 if it failed). Logs still go to stderr.
    /// Default: stay in the foreground.
    #[arg(short = 'd', long)]
    daemon: bool,

    /// Behave exactly like QEMU's contrib ivshmem-server on departures: fresh
    /// eventfds for every connection, and a disconnect message (the ID
    /// without an fd) to the remaining peers when a peer leaves.
    ///
    /// Off by default because of a bug in QEMU 7.2 (Debian 12): on a
    /// disconnect message hw/misc/ivshmem.c frees the departed peer's
    /// eventfd array without clearing the pointer; the next connect of the
    /// same ID writes into freed memory, and its second disconnect aborts
    /// QEMU ("double free or corruption"). With only IDs 0 and 1 on an
    /// ivshmem-net link, the second restart of a host peer (ivnet-bridge)
    /// next to a VM kills the VM. Safe only if every client is a host peer,
    /// or every QEMU has that bug fixed. Without this flag, departures are
    /// signalled through the state table and vector 0 only.
    #[arg(long)]
    disconnect_messages: bool,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// (default: $RUST_LOG, else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn parse_protocol(text: &str) -> Result<u16, String> {
    match text {
        "net" | "ivshmem-net" => Ok(PROTOCOL_NET),
        "undefined" => Ok(PROTOCOL_UNDEFINED),
        _ => {
            let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u16::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.map_err(|_| {
                format!("invalid protocol {text:?}: expected net, undefined or a 16-bit number")
            })
        }
    }
}

/// Files created after the server listens; removed on drop.
#[derive(Default)]
struct RuntimeFiles(Vec<PathBuf>);

impl Drop for RuntimeFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ivshmem-server: invalid --log-level: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            error!("{message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| {
        (
            EXIT_USAGE,
            format!("cannot resolve {}: {e}", path.display()),
        )
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    // Take the notify fd before this process opens anything, so that it
    // cannot be confused with an fd of our own.
    let notify = cli.notify_fd.map(take_inherited_fd).transpose()?;

    let config = ServerConfig {
        socket_path: absolute(&cli.socket)?,
        shm: match &cli.shm_path {
            Some(p) => ShmBacking::Path(absolute(p)?),
            None => ShmBacking::Memfd,
        },
        protocol: cli.protocol,
        vectors: cli.vectors,
        max_peers: cli.max_peers,
        output_section_size: cli.output_section_size,
        rw_section_size: cli.rw_section_size,
        disconnect_messages: cli.disconnect_messages,
        ..ServerConfig::new("")
    };
    config
        .layout()
        .map_err(|e| (EXIT_USAGE, format!("invalid configuration: {e}")))?;
    let pidfile = cli.pidfile.as_deref().map(absolute).transpose()?;
    let ready_file = cli.ready_file.as_deref().map(absolute).transpose()?;

    // Writes to a closed stderr must not kill the server (sockets use
    // MSG_NOSIGNAL already).
    // SAFETY: setting SIGPIPE to SIG_IGN installs no handler code; it is
    // done before any thread exists.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }
        .map_err(|e| (EXIT_FAILURE, format!("ignore SIGPIPE: {e}")))?;

    let daemon_pipe = if cli.daemon { Some(daemonize()?) } else { None };

    // Signals are handled in the poll loop through a signalfd; block them
    // first so that one arriving during startup waits for the loop.
    let mask = SigSet::from_iter([
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ]);
    mask.thread_block()
        .map_err(|e| (EXIT_FAILURE, format!("block signals: {e}")))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| (EXIT_FAILURE, format!("signalfd: {e}")))?;

    let mut server = Server::bind(&config).map_err(|e| {
        let code = match e {
            ServerError::SocketInUse(_) => EXIT_SOCKET_IN_USE,
            ServerError::Config(_)
            | ServerError::SocketPathTooLong(_)
            | ServerError::NotASocket(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        };
        (code, e.to_string())
    })?;

    // Readiness. Every file is removed again on any exit path.
    let mut files = RuntimeFiles::default();
    let pid = std::process::id();
    if let Some(path) = &pidfile {
        write_file_atomically(path, format!("{pid}\n").as_bytes())?;
        files.0.push(path.clone());
    }
    if let Some(path) = &ready_file {
        let text = format!(
            "pid={pid}\nsocket={}\nwindow_size={:#x}\n",
            config.socket_path.display(),
            server.window_size()
        );
        write_file_atomically(path, text.as_bytes())?;
        files.0.push(path.clone());
    }
    if let Some(fd) = notify {
        notify_ready(fd, "--notify-fd")?;
    }
    if let Some(fd) = daemon_pipe {
        notify_ready(fd, "daemon parent")?;
        detach_stdio()?;
    }

    server
        .run_until(signals.as_fd(), |server| {
            loop {
                match signals.read_signal() {
                    Ok(Some(info)) => {
                        let sig = Signal::try_from(info.ssi_signo as i32).ok();
                        if sig == Some(Signal::SIGUSR1) {
                            server.log_status();
                            continue;
                        }
                        info!("received {}", sig.map_or("a signal", |s| s.as_str()));
                        return ControlFlow::Break(());
                    }
                    Ok(None) => return ControlFlow::Continue(()),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        error!("reading signalfd: {e}; stopping");
                        return ControlFlow::Break(());
                    }
                }
            }
        })
        .map_err(|e| (EXIT_FAILURE, e.to_string()))?;
    drop(server);
    drop(files);
    Ok(())
}

/// Takes ownership of an inherited fd named on the command line, after
/// checking that it is open.
fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd, Failure> {
    if fd < 0 {
        return Err((
            EXIT_USAGE,
            format!("--notify-fd {fd}: not a file descriptor"),
        ));
    }
    // SAFETY: F_GETFD only queries the descriptor flags of `fd`; it does
    // not touch memory and fails with EBADF if `fd` is not open.
    let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    if flags < 0 {
        return Err((
            EXIT_USAGE,
            format!("--notify-fd {fd}: not an open file descriptor"),
        ));
    }
    // SAFETY: `fd` is open (checked above) and was inherited from the
    // parent; nothing in this process has opened or claimed it yet (this
    // runs before any file is opened), so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn notify_ready(fd: OwnedFd, what: &str) -> Result<(), Failure> {
    let mut file = std::fs::File::from(fd);
    file.write_all(b"READY\n")
        .map_err(|e| (EXIT_FAILURE, format!("{what}: write READY: {e}")))
}

fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<(), Failure> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = std::fs::write(&tmp, contents).and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        (EXIT_FAILURE, format!("write {}: {e}", path.display()))
    })
}

/// Forks. The parent waits for the child's readiness on a pipe and exits;
/// the child starts a new session and returns the pipe's write end.
fn daemonize() -> Result<OwnedFd, Failure> {
    let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| (EXIT_FAILURE, format!("pipe: {e}")))?;
    // SAFETY: the process is single-threaded here (no thread has been
    // spawned; the tracing subscriber writes synchronously), so the child
    // may keep running arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(tx);
            let mut buf = [0u8; 16];
            let n = loop {
                match rustix::io::read(&rx, &mut buf) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other.unwrap_or(0),
                }
            };
            // The child logged its own error, if any, to the shared stderr.
            std::process::exit(if &buf[..n] == b"READY\n" {
                0
            } else {
                i32::from(EXIT_FAILURE)
            });
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rx);
            nix::unistd::setsid().map_err(|e| (EXIT_FAILURE, format!("setsid: {e}")))?;
            std::env::set_current_dir("/").map_err(|e| (EXIT_FAILURE, format!("chdir /: {e}")))?;
            Ok(tx)
        }
        Err(e) => Err((EXIT_FAILURE, format!("fork: {e}"))),
    }
}

/// Points stdin and stdout at /dev/null (stderr keeps the logs).
fn detach_stdio() -> Result<(), Failure> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| (EXIT_FAILURE, format!("open /dev/null: {e}")))?;
    rustix::stdio::dup2_stdin(&null)
        .and_then(|()| rustix::stdio::dup2_stdout(&null))
        .map_err(|e| (EXIT_FAILURE, format!("redirect stdio: {e}")))?;
    Ok(())
}
