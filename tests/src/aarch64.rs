//! The aarch64 guest under `qemu-system-aarch64 -M virt,gic-version=2`
//! (TCG: this host is x86), used by [`crate::qemu::Guest::start`] when a
//! [`GuestConfig`] says [`Arch::Aarch64`]: the arm64 Image (built once per
//! test process from `bare-metal-guest/aarch64`, `IVNET_GUEST_AARCH64_IMAGE`
//! to use another), QEMU's DTB, PL011 console into `serial.log`, exit
//! statuses through semihosting SYS_EXIT (the x86 `isa-debug-exit` values),
//! the `ivshmem-doorbell` on the server socket as on x86.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::qemu::{
    Accel, GuestConfig, QemuProcess, build_guest, console_args, ivshmem_args, repo_root, unique_dir,
};

/// The QEMU binary (Debian package `qemu-system-arm`).
pub const QEMU_AARCH64: &str = "qemu-system-aarch64";

/// Which guest a [`GuestConfig`] starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    /// The x86_64 guest on q35 (PVH entry).
    #[default]
    X86_64,
    /// The aarch64 guest on `virt` with GICv2 (arm64 Image), entered at EL1.
    Aarch64,
    /// The same, entered at EL2 (`virtualization=on`): the guest drops to EL1.
    Aarch64El2,
}

impl Arch {
    /// Whether this is one of the aarch64 variants.
    pub fn is_aarch64(self) -> bool {
        matches!(self, Arch::Aarch64 | Arch::Aarch64El2)
    }
}

/// Makes sure `qemu-system-aarch64` is installed (apt `qemu-system-arm`).
pub fn ensure_qemu_aarch64_installed() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let present = || {
            Command::new(QEMU_AARCH64)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if present() {
            return Ok(());
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "qemu-system-arm"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if status.success() && present() {
            Ok(())
        } else {
            Err(format!("installing qemu-system-arm failed ({status})"))
        }
    })
    .clone()
}

/// Builds the aarch64 guest (release) once per process and returns its
/// arm64 Image (`objcopy -O binary` of the ELF).
pub fn aarch64_image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("IVNET_GUEST_AARCH64_IMAGE") {
                return Ok(PathBuf::from(p));
            }
            let dir = repo_root().join("bare-metal-guest/aarch64");
            let mut cmd = Command::new("sh");
            cmd.arg(dir.join("build-image.sh"));
            build_guest(
                cmd,
                &dir,
                "the aarch64 guest",
                dir.join("target/aarch64-unknown-none/release/ivnet-guest-aarch64.bin"),
            )
        })
        .clone()
}

/// Starts QEMU with the aarch64 guest as `cfg` says (its `firmware` and
/// `accel` do not apply: no firmware, TCG), `extra_args` last.
pub(crate) fn start(cfg: &GuestConfig) -> Result<QemuProcess, String> {
    ensure_qemu_aarch64_installed()?;
    let image = aarch64_image()?;
    let dir = unique_dir(&cfg.name).map_err(|e| format!("temp dir: {e}"))?;
    let machine = match cfg.arch {
        Arch::Aarch64El2 => "virt,gic-version=2,virtualization=on",
        _ => "virt,gic-version=2",
    };
    let mut cmd = Command::new(cfg.qemu.as_deref().unwrap_or(Path::new(QEMU_AARCH64)));
    cmd.args(["-machine", machine, "-cpu", "cortex-a57", "-m", &cfg.memory]);
    console_args(&mut cmd, cfg, &dir);
    cmd.args(["-accel", "tcg"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .arg("-kernel")
        .arg(&image)
        .args(["-append", &cfg.cmdline]);
    ivshmem_args(&mut cmd, cfg);
    cmd.args(&cfg.extra_args);
    QemuProcess::spawn(&mut cmd, dir, Accel::Tcg, "aarch64 guest")
}
