//! Starting QEMU with the bare-metal guest and reading its serial log.
//!
//! - [`ensure_qemu_installed`] installs `qemu-system-x86` with apt if it is
//!   missing (the tests run real QEMU, never a stand-in).
//! - [`guest_image`] builds `bare-metal-guest` (its own cargo workspace,
//!   target `x86_64-unknown-none`) once per test process and returns the ELF.
//! - [`accelerators`] probes KVM and TCG by booting the guest's
//!   `selftest=boot` (under KVM with the CPU models this host's KVM
//!   accepts); [`default_accel`] is KVM when it works and is not much slower
//!   than TCG, TCG otherwise.
//! - [`Firmware`]: qboot by default (it starts in well under a second, where
//!   SeaBIOS takes ~10 s under nested KVM); SeaBIOS on request, which
//!   pre-assigns the PCI BARs where qboot leaves that to the guest.
//! - [`Guest::start`] runs QEMU with the serial console in a log file and the
//!   `isa-debug-exit` device; [`Guest::wait_exit`] maps the exit status back
//!   to the guest's [`ExitCode`].
//!
//! Environment knobs: `IVNET_GUEST_IMAGE` (use this ELF instead of
//! building), `IVNET_QEMU_ACCEL=tcg|kvm` (force an accelerator),
//! `IVNET_TEST_KEEP=1` (keep the per-guest directory with the serial log).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[path = "../../bare-metal-guest/src/exit_code.rs"]
pub mod exit_code;

pub use crate::aarch64::Arch;
pub use exit_code::ExitCode;

/// An ivshmem server (ivnet's `ivshmem-server` library, on its own thread)
/// on a socket in a fresh directory, with the default ivshmem-net layout
/// (two peers, two vectors, 0x7f000-byte output sections: a 1 MiB window).
pub struct IvshmemServer {
    handle: Option<ivshmem_server::ServerHandle>,
    dir: PathBuf,
}

impl IvshmemServer {
    /// Starts a server; it listens when this returns.
    pub fn start(name: &str) -> Result<IvshmemServer, String> {
        Self::start_with(name, |_| {})
    }

    /// Starts a server whose configuration `adjust` may change first (e.g.
    /// a protocol or peer count the guest must refuse).
    pub fn start_with(
        name: &str,
        adjust: impl FnOnce(&mut ivshmem_server::ServerConfig),
    ) -> Result<IvshmemServer, String> {
        let dir = unique_dir(name).map_err(|e| format!("temp dir: {e}"))?;
        let mut config = ivshmem_server::ServerConfig::new(dir.join("ivshmem.sock"));
        adjust(&mut config);
        let handle = ivshmem_server::ServerHandle::spawn(&config)
            .map_err(|e| format!("ivshmem server: {e}"))?;
        Ok(IvshmemServer {
            handle: Some(handle),
            dir,
        })
    }

    /// The socket QEMU and host peers connect to.
    pub fn socket(&self) -> PathBuf {
        self.handle
            .as_ref()
            .expect("running")
            .socket_path()
            .to_path_buf()
    }

    /// The server handle.
    pub fn handle(&self) -> &ivshmem_server::ServerHandle {
        self.handle.as_ref().expect("running")
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        drop(self.handle.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread that has joined the network namespace `netns`
/// (`/run/netns/NAME`) and returns its result. Sockets `f` creates belong to
/// that namespace and can be used from any thread afterwards; the calling
/// thread's namespace is untouched.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns(2) on a valid namespace fd; it changes only
                // this (scoped, short-lived) thread's network namespace.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread panicked")
    })
}

/// Generous timeouts: TCG on a loaded 2-core machine is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Root of the repository (parent of the `tests` package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn qemu_present() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `qemu-system-x86_64` is installed, installing Debian's
/// `qemu-system-x86` package with apt if it is not.
pub fn ensure_qemu_installed() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if qemu_present() {
            return Ok(());
        }
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map_err(|e| format!("apt-get: {e}"))
        };
        let installed = apt(&["install", "-y", "qemu-system-x86"])?;
        if !installed.success() {
            apt(&["update"])?;
            let again = apt(&["install", "-y", "qemu-system-x86"])?;
            if !again.success() {
                return Err(format!("apt-get install qemu-system-x86 failed: {again}"));
            }
        }
        if qemu_present() {
            Ok(())
        } else {
            Err(format!(
                "{QEMU} still missing after installing qemu-system-x86"
            ))
        }
    })
    .clone()
}

/// Builds the bare-metal guest (release profile) once per process and
/// returns the path of its ELF image.
pub fn guest_image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("IVNET_GUEST_IMAGE") {
                return Ok(PathBuf::from(p));
            }
            let dir = repo_root().join("bare-metal-guest");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--bin", "ivnet-guest"]);
            build_guest(
                cmd,
                &dir,
                "bare-metal-guest",
                dir.join("target/x86_64-unknown-none/release/ivnet-guest"),
            )
        })
        .clone()
}

/// Runs a guest's build `cmd` in its directory `dir` and returns its
/// `artifact`. The guest's .cargo/config.toml (target, relocation model) is
/// found from the working directory; variables that would override it or
/// redirect the output are removed. `what` names the guest in errors.
pub(crate) fn build_guest(
    mut cmd: Command,
    dir: &Path,
    what: &str,
    artifact: PathBuf,
) -> Result<PathBuf, String> {
    let out = cmd
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running the build of {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if artifact.is_file() {
        Ok(artifact)
    } else {
        Err(format!(
            "{what} built but {} is missing",
            artifact.display()
        ))
    }
}

/// The QEMU arguments both guests' machines share: no default devices, no
/// display, `-no-reboot` unless `cfg` asks to reboot, the serial console
/// into `dir/serial.log`, QMP at `dir/qmp.sock`.
pub(crate) fn console_args(cmd: &mut Command, cfg: &GuestConfig, dir: &Path) {
    cmd.args(["-nodefaults", "-display", "none"])
        .args((!cfg.reboot_on_reset).then_some("-no-reboot"))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("serial.log").display()))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join(QMP_SOCKET).display()
        ));
}

/// The `ivshmem-doorbell` on the server socket `cfg` names, if any, with
/// its vector count.
pub(crate) fn ivshmem_args(cmd: &mut Command, cfg: &GuestConfig) {
    if let Some(sock) = &cfg.ivshmem_socket {
        cmd.arg("-chardev")
            .arg(format!("socket,path={},id=ivs", sock.display()))
            .arg("-device")
            .arg(format!(
                "ivshmem-doorbell,chardev=ivs,vectors={}",
                cfg.vectors
            ));
    }
}

/// How QEMU executes the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation with this `-cpu` model.
    Kvm {
        /// The `-cpu` argument.
        cpu: String,
    },
    /// QEMU's binary translator.
    Tcg,
}

impl Accel {
    fn args(&self) -> Vec<String> {
        match self {
            Accel::Kvm { cpu } => vec!["-accel".into(), "kvm".into(), "-cpu".into(), cpu.clone()],
            Accel::Tcg => vec!["-accel".into(), "tcg".into()],
        }
    }

    /// Short name for test output.
    pub fn name(&self) -> String {
        match self {
            Accel::Kvm { cpu } => format!("kvm(-cpu {cpu})"),
            Accel::Tcg => "tcg".into(),
        }
    }
}

/// CPU models tried under KVM, best first. Some hosts' KVM refuses to set
/// IA32_ARCH_CAPABILITIES (MSR 0x10a) that QEMU 7.2 passes for `host`.
const KVM_CPUS: [&str; 2] = ["host", "host,-arch-capabilities"];

/// KVM is preferred unless it runs the guest more than this many times
/// slower than TCG.
const KVM_SLOWDOWN_LIMIT: u64 = 4;

/// The accelerators that work on this machine, preferred first.
///
/// Each candidate boots the guest's `selftest=boot`, which also reports how
/// long 1000 memory loads take. KVM comes first when it works and is not
/// much slower than TCG. Nested KVM can be dramatically slower (on the
/// development machine of this project: ~800x for plain loads, tens of
/// microseconds per VM exit), and then TCG is preferred, with KVM still
/// listed for the tests that run under every accelerator.
/// `IVNET_QEMU_ACCEL=kvm|tcg` forces one.
pub fn accelerators() -> Vec<Accel> {
    static ACCELS: OnceLock<Vec<Accel>> = OnceLock::new();
    ACCELS
        .get_or_init(|| {
            match std::env::var("IVNET_QEMU_ACCEL").as_deref() {
                Ok("tcg") => return vec![Accel::Tcg],
                Ok("kvm") => {
                    let (kvm, _) = probe_kvm().expect("IVNET_QEMU_ACCEL=kvm but KVM fails");
                    return vec![kvm];
                }
                _ => {}
            }
            let tcg_speed = probe(&Accel::Tcg);
            let Some((kvm, kvm_speed)) = probe_kvm() else {
                eprintln!("qemu: KVM unusable here; using TCG");
                return vec![Accel::Tcg];
            };
            let tcg_speed = tcg_speed.unwrap_or(u64::MAX);
            let kvm_first = kvm_speed <= tcg_speed.saturating_mul(KVM_SLOWDOWN_LIMIT);
            eprintln!(
                "qemu: {} {kvm_speed} ns, TCG {tcg_speed} ns per 1000 guest loads; preferring {}",
                kvm.name(),
                if kvm_first { "KVM" } else { "TCG" }
            );
            if kvm_first {
                vec![kvm, Accel::Tcg]
            } else {
                vec![Accel::Tcg, kvm]
            }
        })
        .clone()
}

/// The preferred accelerator (see [`accelerators`]).
pub fn default_accel() -> Accel {
    accelerators().into_iter().next().unwrap_or(Accel::Tcg)
}

/// Boots `selftest=boot` with `accel`; returns the guest's speed figure
/// (ns per 1000 loads) if it booted and exited with `Success`.
fn probe(accel: &Accel) -> Option<u64> {
    let cfg = GuestConfig {
        cmdline: "ip=10.77.0.2/24 selftest=boot".into(),
        accel: Some(accel.clone()),
        name: "probe".into(),
        ..GuestConfig::default()
    };
    let mut g = Guest::start(&cfg).ok()?;
    match g.wait_exit(Duration::from_secs(60)) {
        Ok(GuestExit::Code(ExitCode::Success)) => {}
        _ => return None,
    }
    let log = g.serial();
    let speed = log
        .split("speed ")
        .nth(1)?
        .split(" ns per 1000 loads")
        .next()?
        .parse()
        .ok()?;
    Some(speed)
}

fn probe_kvm() -> Option<(Accel, u64)> {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return None;
    }
    KVM_CPUS.into_iter().find_map(|cpu| {
        let accel = Accel::Kvm { cpu: cpu.into() };
        probe(&accel).map(|speed| (accel, speed))
    })
}

/// The firmware that runs before the guest's PVH entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default, SeaBIOS: assigns every PCI BAR before the guest runs.
    /// Slow to start under nested KVM (~10 s).
    SeaBios,
    /// qboot (`/usr/share/qemu/qboot.rom`, Debian's qemu-system-data): a
    /// minimal firmware that starts in well under a second.
    Qboot,
}

/// Where Debian keeps qboot.
const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

impl Firmware {
    fn args(self) -> Vec<String> {
        match self {
            Firmware::SeaBios => Vec::new(),
            Firmware::Qboot => vec!["-bios".into(), QBOOT_ROM.into()],
        }
    }

    /// qboot when installed (fast), SeaBIOS otherwise.
    pub fn default_for_tests() -> Firmware {
        if Path::new(QBOOT_ROM).is_file() {
            Firmware::Qboot
        } else {
            Firmware::SeaBios
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Firmware before the PVH entry.
    pub firmware: Firmware,
    /// Kernel command line (`-append`).
    pub cmdline: String,
    /// Accelerator; `None` = [`default_accel`].
    pub accel: Option<Accel>,
    /// ivshmem-server socket to attach an `ivshmem-doorbell` to.
    pub ivshmem_socket: Option<PathBuf>,
    /// MSI-X vectors of the ivshmem-doorbell device.
    pub vectors: u32,
    /// Guest RAM (`-m`).
    pub memory: String,
    /// A name for the per-guest directory (helps when reading kept logs).
    pub name: String,
    /// Let a reset reboot the guest (no `-no-reboot`), e.g. QMP's
    /// `system_reset` (with `-no-reboot` QEMU exits instead).
    pub reboot_on_reset: bool,
    /// More QEMU arguments (e.g. a `virtio-net-pci` device and its netdev).
    pub extra_args: Vec<String>,
    /// Which guest (x86_64 by default; see `crate::aarch64`).
    pub arch: Arch,
    /// The QEMU binary; `None` = [`QEMU`] (aarch64 guests:
    /// `crate::aarch64::QEMU_AARCH64`), e.g. the one with the ivshmem 2.0
    /// device, `crate::ivshmem2::qemu_binary`.
    pub qemu: Option<PathBuf>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            firmware: Firmware::default_for_tests(),
            cmdline: "ip=10.77.0.2/24".into(),
            accel: None,
            ivshmem_socket: None,
            vectors: 2,
            memory: "64M".into(),
            name: "guest".into(),
            reboot_on_reset: false,
            extra_args: Vec::new(),
            arch: Arch::default(),
            qemu: None,
        }
    }
}

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// Through `isa-debug-exit` with one of the guest's codes.
    Code(ExitCode),
    /// Some other exit status (QEMU error, triple fault with `-no-reboot`…).
    Status(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::Code(c) => write!(f, "guest exit {c:?} (status {})", c.qemu_status()),
            GuestExit::Status(s) => write!(f, "QEMU exit status {s}"),
            GuestExit::Signal(s) => write!(f, "QEMU killed by signal {s}"),
        }
    }
}

fn classify(status: ExitStatus) -> GuestExit {
    if let Some(code) = status.code() {
        ExitCode::from_qemu_status(code).map_or(GuestExit::Status(code), GuestExit::Code)
    } else {
        GuestExit::Signal(status.signal().unwrap_or(0))
    }
}

/// A running QEMU with the guest. Killed on drop.
pub struct Guest {
    process: QemuProcess,
}

/// One QEMU process and its per-instance directory (`serial.log`,
/// `qemu.stderr`): spawning, reading the console, recording the exit,
/// killing, and removing the directory on drop (kept with
/// `IVNET_TEST_KEEP=1`). Shared by the bare-metal [`Guest`] and the Linux
/// test VM.
pub struct QemuProcess {
    child: Child,
    dir: PathBuf,
    accel: Accel,
    exit: Option<ExitStatus>,
    what: &'static str,
}

impl QemuProcess {
    /// Spawns `cmd` with stdin and stdout closed and stderr into
    /// `dir/qemu.stderr`; `what` names the machine in messages.
    pub fn spawn(
        cmd: &mut Command,
        dir: PathBuf,
        accel: Accel,
        what: &'static str,
    ) -> Result<QemuProcess, String> {
        let stderr = fs::File::create(dir.join("qemu.stderr")).map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {QEMU}: {e}"))?;
        Ok(QemuProcess {
            child,
            dir,
            accel,
            exit: None,
            what,
        })
    }

    /// The accelerator QEMU runs with.
    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    /// QEMU's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The per-instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serial console output so far (`serial.log`, CRs removed).
    pub fn serial(&self) -> String {
        fs::read(self.dir.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    /// The complete lines of the serial console so far: QEMU writes each
    /// byte as the emulated UART sends it, so the file often ends in the
    /// middle of a line (`IVNET-DONE o`). Waits match and parse only what
    /// this returns; once QEMU has exited, everything is complete.
    pub fn serial_lines(&mut self) -> String {
        let running = self.exit().is_none();
        let mut log = self.serial();
        if running {
            log.truncate(log.rfind('\n').map_or(0, |i| i + 1));
        }
        log
    }

    /// QEMU's own error output so far.
    pub fn qemu_stderr(&self) -> String {
        fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default()
    }

    /// How QEMU ended, recorded the first time it is seen; `None` while it
    /// runs.
    pub fn exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.exit().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some(status);
            }
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("IVNET_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {} directory {}", self.what, self.dir.display());
        }
    }
}

/// A fresh, empty directory under the temp dir for one QEMU instance.
pub(crate) fn unique_dir(name: &str) -> io::Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ivnet-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Guest {
    /// Starts QEMU: q35, no default devices, serial console into
    /// `serial.log`, `isa-debug-exit` on port 0xf4, the guest via PVH
    /// (`-kernel`), and optionally an `ivshmem-doorbell` on a server socket.
    pub fn start(cfg: &GuestConfig) -> Result<Guest, String> {
        if cfg.arch.is_aarch64() {
            let process = crate::aarch64::start(cfg)?;
            return Ok(Guest { process });
        }
        ensure_qemu_installed()?;
        let image = guest_image()?;
        let accel = cfg.accel.clone().unwrap_or_else(default_accel);
        let dir = unique_dir(&cfg.name).map_err(|e| format!("temp dir: {e}"))?;
        let mut cmd = Command::new(cfg.qemu.as_deref().unwrap_or(Path::new(QEMU)));
        cmd.args(["-machine", "q35", "-m", &cfg.memory]);
        console_args(&mut cmd, cfg, &dir);
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(accel.args())
            .args(cfg.firmware.args())
            .arg("-kernel")
            .arg(&image)
            .args(["-append", &cfg.cmdline]);
        ivshmem_args(&mut cmd, cfg);
        cmd.args(&cfg.extra_args);
        let process = QemuProcess::spawn(&mut cmd, dir, accel, "guest")?;
        Ok(Guest { process })
    }

    /// The accelerator this guest runs with.
    pub fn accel(&self) -> &Accel {
        self.process.accel()
    }

    /// QEMU's process ID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The serial console output so far.
    pub fn serial(&self) -> String {
        self.process.serial()
    }

    /// QEMU's own error output so far.
    pub fn qemu_stderr(&self) -> String {
        self.process.qemu_stderr()
    }

    /// Everything useful for a failure message.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- accel: {}\n--- serial:\n{}\n--- qemu stderr:\n{}",
            self.accel().name(),
            self.serial(),
            self.qemu_stderr()
        )
    }

    /// Whether QEMU still runs (records the exit if it ended).
    pub fn is_running(&mut self) -> bool {
        self.process.exit().is_none()
    }

    /// How the guest ended, if it did.
    pub fn exit_status(&mut self) -> Option<GuestExit> {
        self.process.exit().map(classify)
    }

    /// Waits until the serial log contains `needle`. Fails early if QEMU
    /// exits first, and after `timeout`.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_serial_count(needle, 1, timeout)
    }

    /// Waits until the serial log contains `needle` at least `times` times.
    pub fn wait_for_serial_count(
        &mut self,
        needle: &str,
        times: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.process.serial_lines();
            if log.matches(needle).count() >= times {
                return Ok(log);
            }
            if !self.is_running() {
                // One last read: the line may have landed just before exit.
                let log = self.process.serial_lines();
                if log.matches(needle).count() >= times {
                    return Ok(log);
                }
                return Err(format!(
                    "guest ended ({}) before printing {needle:?} {times}x\n{}",
                    self.exit_status().expect("recorded by is_running"),
                    self.diagnostics()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{needle:?} not {times}x on the serial console after {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for QEMU to exit, at most `timeout` (then kills it and fails).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<GuestExit, String> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "guest still running after {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.exit_status().expect("recorded by is_running"))
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Runs one QMP command without arguments (e.g. `system_reset`) and
    /// returns its result.
    pub fn qmp(&mut self, command: &str) -> Result<serde_json::Value, String> {
        self.process.qmp(command)
    }
}

/// The QMP socket in a QEMU instance's directory.
const QMP_SOCKET: &str = "qmp.sock";

impl QemuProcess {
    /// Runs one QMP command without arguments (e.g. `system_reset`) on the
    /// socket at `dir/qmp.sock` (started with `-qmp unix:…,server=on,wait=off`)
    /// and returns its `return` value. QEMU creates the socket while it
    /// starts, so connecting is retried for a bounded time; events QEMU
    /// sends in between are skipped.
    pub fn qmp(&mut self, command: &str) -> Result<serde_json::Value, String> {
        use std::io::{BufRead, BufReader, Write};
        use std::os::unix::net::UnixStream;
        const TIMEOUT: Duration = Duration::from_secs(30);
        let path = self.dir.join(QMP_SOCKET);
        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline || self.exit().is_some() => {
                    let exit = self.exit();
                    return Err(format!(
                        "{} QMP {}: {e} (QEMU exit {exit:?})",
                        self.what,
                        path.display()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        // The reply to the command just sent: the next message with
        // "return" or "error" (the greeting and events have neither).
        let mut reply = || -> Result<serde_json::Value, String> {
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => return Err("QMP: connection closed".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("QMP: {e}")),
                }
                let msg: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}"))?;
                if let Some(r) = msg.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = msg.get("error") {
                    return Err(format!("QMP error: {e}"));
                }
            }
        };
        let mut result = serde_json::Value::Null;
        for cmd in ["qmp_capabilities", command] {
            writer
                .write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
                .map_err(|e| format!("QMP: {e}"))?;
            result = reply().map_err(|e| format!("{cmd}: {e}"))?;
        }
        Ok(result)
    }
}
