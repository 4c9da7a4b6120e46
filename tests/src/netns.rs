//! Network namespaces, TAP/veth plumbing and process helpers for the bridge
//! tests.
//!
//! Everything here drives real things: `ip netns` namespaces created (and
//! deleted) per test, the real `ivshmem-server` and `ivnet-bridge` binaries
//! (built in release mode on first use, since debug builds are too slow for
//! gigabyte transfers), and `/proc` for a process's descriptors and memory.
//! Addresses used by the tests live in 10.77.0.0/24 inside the namespaces.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Serialises the bridge tests of one test binary: they move a lot of data
/// and measure a process's descriptors, so they must not overlap.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics with a clear message unless running as root (namespaces and TAP
/// devices need CAP_SYS_ADMIN and CAP_NET_ADMIN).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the bridge tests create network namespaces and TAP devices: run them as root"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing (modprobe tun)"
    );
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Debian packages that provide the given programs if any is
/// missing (`(program, package)` pairs).
pub fn ensure_tools(tools: &[(&str, &str)]) {
    static APT_UPDATED: OnceLock<()> = OnceLock::new();
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(p, _)| !have(p))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return;
    }
    APT_UPDATED.get_or_init(|| {
        let _ = Command::new("apt-get").args(["-qq", "update"]).status();
    });
    let status = Command::new("apt-get")
        .args(["-qq", "install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get runs");
    assert!(status.success(), "apt-get install {missing:?} failed");
    for (p, pkg) in tools {
        assert!(have(p), "{p} still missing after installing {pkg}");
    }
}

/// The tools every bridge test uses.
pub fn ensure_base_tools() {
    ensure_tools(&[("ip", "iproute2"), ("ping", "iputils-ping")]);
}

/// Paths of the release binaries the bridge tests run.
#[derive(Debug)]
pub struct Bins {
    /// `ivnet-bridge`.
    pub bridge: PathBuf,
    /// `ivshmem-server`.
    pub server: PathBuf,
    /// `ivnet-stream` (the byte-exact TCP transfer check), optimised: its
    /// PRNG and compare loop would limit a debug build to a fraction of the
    /// link's speed.
    pub stream: PathBuf,
}

/// Builds (once per test process) and returns the release binaries of
/// `ivnet-bridge`, `ivshmem-server` and `ivnet-stream`, in the target
/// directory of the running test.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // <target>/<profile>/deps/<test>-<hash>
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test binary lives in <target>/<profile>/deps")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "ivnet-bridge",
                "-p",
                "ivshmem-server",
                "-p",
                "ivnet-e2e",
                "--bins",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building ivnet-bridge and ivshmem-server failed"
        );
        let bins = Bins {
            bridge: target.join("release/ivnet-bridge"),
            server: target.join("release/ivshmem-server"),
            stream: target.join("release/ivnet-stream"),
        };
        assert!(
            bins.bridge.exists() && bins.server.exists(),
            "{bins:?} not built"
        );
        bins
    })
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "ivt-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `tag` (plus the test's PID and a
    /// counter) with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        check(
            Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("ip runs"),
            "ip netns add",
        );
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (under /run/netns).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`,
    /// which also mounts the namespace's own /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the
    /// exit status.
    pub fn try_run(&self, argv: &[&str]) -> Output {
        self.command(argv[0])
            .args(&argv[1..])
            .output()
            .expect("ip netns exec runs")
    }

    /// Runs `argv` inside the namespace; panics unless it succeeds.
    pub fn run(&self, argv: &[&str]) -> Output {
        check(self.try_run(argv), &argv.join(" "))
    }

    /// Whether `ifname` exists in the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.try_run(&["ip", "link", "show", "dev", ifname])
            .status
            .success()
    }

    /// The carrier of `ifname` (`/sys/class/net/IF/carrier`), `None` if the
    /// interface is missing or down.
    pub fn carrier(&self, ifname: &str) -> Option<bool> {
        let out = self.try_run(&["cat", &format!("/sys/class/net/{ifname}/carrier")]);
        if !out.status.success() {
            return None;
        }
        match String::from_utf8_lossy(&out.stdout).trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }
    }

    /// Waits until the carrier of `ifname` is `want`; returns how long it
    /// took.
    pub fn wait_carrier(
        &self,
        ifname: &str,
        want: bool,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        wait_until(timeout, Duration::from_millis(2), || {
            self.carrier(ifname) == Some(want)
        })
        .map(|()| start.elapsed())
        .map_err(|TimedOut| {
            format!(
                "{}: carrier of {ifname} did not become {want} within {timeout:?}",
                self.name
            )
        })
    }

    /// Adds `cidr` to `ifname` (and keeps the link up).
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        self.run(&["ip", "addr", "add", cidr, "dev", ifname]);
        self.run(&["ip", "link", "set", ifname, "up"]);
    }

    /// Moves `ifname` from the current namespace into this one.
    pub fn adopt_link(&self, ifname: &str) {
        check(
            Command::new("ip")
                .args(["link", "set", ifname, "netns", &self.name])
                .output()
                .expect("ip runs"),
            "ip link set netns",
        );
    }

    /// Pings `dst` from inside the namespace; true if `count` echo requests
    /// got replies.
    pub fn ping(&self, dst: &str, count: u32, size: Option<u32>) -> bool {
        let count = count.to_string();
        let mut argv = vec!["ping", "-n", "-q", "-c", &count, "-i", "0.05", "-W", "5"];
        let size_s;
        if let Some(s) = size {
            size_s = s.to_string();
            argv.extend(["-s", &size_s, "-M", "do"]);
        }
        argv.push(dst);
        self.try_run(&argv).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// [`wait_until`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// Polls `cond` every `every` until it holds or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TimedOut);
        }
        std::thread::sleep(every);
    }
}

/// A child process whose stdout and stderr go to files; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    /// For messages.
    pub name: String,
    /// Captured stdout.
    pub stdout_path: PathBuf,
    /// Captured stderr.
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr captured in `dir/NAME.{out,err}`
    /// (appended to, so restarts keep the history).
    pub fn spawn(cmd: Command, dir: &Path, name: &str) -> Proc {
        Self::spawn_with(cmd, dir, name, true)
    }

    /// Like [`spawn`](Self::spawn), but truncates the capture files first.
    pub fn spawn_fresh(cmd: Command, dir: &Path, name: &str) -> Proc {
        Self::spawn_with(cmd, dir, name, false)
    }

    fn spawn_with(mut cmd: Command, dir: &Path, name: &str, append: bool) -> Proc {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(p)
                .expect("log file")
        };
        // SAFETY: `die_with_parent` only calls prctl(2), which is
        // async-signal-safe, as required between fork and exec.
        unsafe { cmd.pre_exec(die_with_parent) };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(open(&stdout_path))
            .stderr(open(&stderr_path))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.to_owned(),
            stdout_path,
            stderr_path,
        }
    }

    /// Process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's PID, which has not been reaped
        // (the Child is still held), so it cannot name another process.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.child.take().expect("running").wait().expect("wait")
    }

    /// Sends `sig` and waits up to `timeout` for the exit status.
    pub fn stop(&mut self, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        self.wait(timeout)
    }

    /// Sends a signal without waiting (e.g. SIGUSR1).
    pub fn send_signal(&self, sig: libc::c_int) {
        self.signal(sig);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Captured stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Captured stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits until stderr contains `needle` at least `times` times.
    pub fn wait_stderr(
        &mut self,
        needle: &str,
        times: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut exited = false;
        let r = wait_until(timeout, Duration::from_millis(2), || {
            if !self.running() {
                exited = true;
                return true;
            }
            self.stderr().matches(needle).count() >= times
        });
        if exited && self.stderr().matches(needle).count() < times {
            return Err(format!(
                "{} exited before logging {needle:?}:\n{}",
                self.name,
                self.stderr()
            ));
        }
        r.map_err(|TimedOut| {
            format!(
                "{}: {needle:?} not logged {times}x within {timeout:?}:\n{}",
                self.name,
                tail(&self.stderr())
            )
        })
    }

    /// The `--stats-json` reports on stdout whose `reason` is `reason`,
    /// oldest first. Only complete lines count: a report being written is
    /// not JSON yet (its `"reason"` field, the first, may already be there).
    pub fn reports(&self, reason: &str) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == reason)
            .collect()
    }

    /// Number of open descriptors (`/proc/PID/fd`).
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Runs in a spawned child before exec: die with the test, so that a killed
/// or panicking test leaves no bridges and servers behind.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no
    // memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last 40 lines of a log, for failure messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A running `ivshmem-server` for one ivshmem-net link.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Its socket.
    pub socket: PathBuf,
}

impl Server {
    /// Starts a server in `dir` (socket `dir/ivshmem.sock`) with extra
    /// arguments, and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let socket = dir.join("ivshmem.sock");
        let ready = dir.join("ivshmem.ready");
        let mut cmd = Command::new(&bins().server);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra);
        let mut proc = Proc::spawn(cmd, dir, "ivshmem-server");
        let ok = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            ready.exists() || !proc.running()
        });
        assert!(
            ok.is_ok() && ready.exists(),
            "ivshmem-server did not become ready:\n{}",
            proc.stderr()
        );
        Server { proc, socket }
    }
}

/// How to start one bridge.
#[derive(Clone, Debug)]
pub struct BridgeSpec {
    /// Log/capture name (also distinguishes restarts' files: they append).
    pub name: String,
    /// Server socket.
    pub socket: PathBuf,
    /// Namespace to create the TAP in.
    pub netns: String,
    /// TAP name.
    pub tap: String,
    /// Link MTU.
    pub mtu: u32,
    /// More arguments.
    pub extra: Vec<String>,
}

impl BridgeSpec {
    /// Spawns the bridge (`RUST_LOG=info`, stats as JSON lines on stdout),
    /// appending to its capture files.
    pub fn spawn(&self, dir: &Path) -> Proc {
        Proc::spawn(self.command(), dir, &self.name)
    }

    /// Spawns the bridge with fresh (truncated) capture files.
    pub fn spawn_fresh(&self, dir: &Path) -> Proc {
        Proc::spawn_fresh(self.command(), dir, &self.name)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&bins().bridge);
        cmd.arg("--server")
            .arg(&self.socket)
            .args([
                "--netns",
                &self.netns,
                "--tap",
                &self.tap,
                "--mtu",
                &self.mtu.to_string(),
                "--stats-json",
            ])
            .args(&self.extra)
            .env("RUST_LOG", "info");
        cmd
    }
}

/// Two namespaces joined by two bridges over one server:
/// `ns_a` (10.77.0.1, TAP `ivn0`) ↔ bridge A ↔ shared memory ↔ bridge B ↔
/// `ns_b` (10.77.0.2, TAP `ivn0`).
#[derive(Debug)]
pub struct BridgedPair {
    /// Bridge A (declared first: dropped before the server and namespaces).
    pub a: Proc,
    /// Bridge B.
    pub b: Proc,
    /// How A was started.
    pub spec_a: BridgeSpec,
    /// How B was started.
    pub spec_b: BridgeSpec,
    /// The server.
    pub server: Server,
    /// Namespace of A.
    pub ns_a: Netns,
    /// Namespace of B.
    pub ns_b: Netns,
    /// Logs and the socket.
    pub dir: tempfile::TempDir,
}

/// Address of side A.
pub const ADDR_A: &str = "10.77.0.1";
/// Address of side B.
pub const ADDR_B: &str = "10.77.0.2";
/// TAP name on both sides (each in its own namespace).
pub const TAP: &str = "ivn0";

impl BridgedPair {
    /// Starts server and both bridges with `mtu`, configures the addresses,
    /// and waits for carrier on both sides.
    pub fn start(mtu: u32, extra: &[&str]) -> BridgedPair {
        Self::start_with(mtu, extra, extra)
    }

    /// Like [`start`](Self::start) with different extra arguments for the
    /// two bridges.
    pub fn start_with(mtu: u32, extra_a: &[&str], extra_b: &[&str]) -> BridgedPair {
        require_root();
        ensure_base_tools();
        let dir = tempfile::Builder::new()
            .prefix("ivnet-bridge-test")
            .tempdir()
            .expect("tempdir");
        let ns_a = Netns::new("a");
        let ns_b = Netns::new("b");
        let server = Server::start(dir.path(), &[]);
        let spec = |name: &str, ns: &Netns, extra: &[&str]| BridgeSpec {
            name: name.into(),
            socket: server.socket.clone(),
            netns: ns.name().into(),
            tap: TAP.into(),
            mtu,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let spec_a = spec("bridge-a", &ns_a, extra_a);
        let spec_b = spec("bridge-b", &ns_b, extra_b);
        let mut a = spec_a.spawn(dir.path());
        a.wait_stderr("TAP, MTU", 1, Duration::from_secs(20))
            .expect("bridge A starts");
        let mut b = spec_b.spawn(dir.path());
        b.wait_stderr("TAP, MTU", 1, Duration::from_secs(20))
            .expect("bridge B starts");
        let pair = BridgedPair {
            a,
            b,
            spec_a,
            spec_b,
            server,
            ns_a,
            ns_b,
            dir,
        };
        pair.ns_a.add_addr(TAP, &format!("{ADDR_A}/24"));
        pair.ns_b.add_addr(TAP, &format!("{ADDR_B}/24"));
        pair.wait_link_up(Duration::from_secs(20));
        pair
    }

    /// Waits for carrier on both TAPs.
    pub fn wait_link_up(&self, timeout: Duration) {
        for ns in [&self.ns_a, &self.ns_b] {
            if let Err(e) = ns.wait_carrier(TAP, true, timeout) {
                panic!(
                    "{e}\nbridge A:\n{}\nbridge B:\n{}",
                    tail(&self.a.stderr()),
                    tail(&self.b.stderr())
                );
            }
        }
    }

    /// Everything both bridges and the server logged, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- bridge A ---\n{}\n--- bridge B ---\n{}\n--- server ---\n{}",
            tail(&self.a.stderr()),
            tail(&self.b.stderr()),
            tail(&self.server.proc.stderr())
        )
    }
}

/// Writes `text` to `path` (test artefacts).
pub fn write_file(path: &Path, text: &str) {
    let mut f = fs::File::create(path).expect("create");
    f.write_all(text.as_bytes()).expect("write");
}

/// Asks a bridge started with `--stats-json` for its counters (SIGUSR1),
/// waits for the report line it writes in reply, and returns it: a
/// `"signal"` report beyond those complete before the signal, so that an
/// older one cannot pass for the answer (and a line still being written,
/// whose `"reason"` comes first, is not counted).
pub fn signal_report(p: &Proc) -> serde_json::Value {
    let before = p.reports("signal").len();
    p.send_signal(libc::SIGUSR1);
    let mut report = None;
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
        report = p.reports("signal").into_iter().nth(before);
        report.is_some()
    });
    match (ok, report) {
        (Ok(()), Some(report)) => report,
        _ => panic!(
            "{} wrote no report within 10 s of SIGUSR1:\n{}",
            p.name,
            tail(&p.stderr())
        ),
    }
}

/// Parses the last JSON stats line a bridge wrote to stdout with the given
/// `reason` and returns it.
pub fn last_stats(stdout: &str, reason: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reason"] == reason)
}
