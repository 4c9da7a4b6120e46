//! The QEMUs with the ivshmem 2.0 device (`tests/qemu-ivshmem2/`): QEMU 10.0
//! from Debian's source plus `ivshmem2.c`, `qemu-system-x86_64` and
//! `qemu-system-aarch64` from one build by `tests/qemu-ivshmem2/build.sh` on
//! first use, cached per machine (`/var/cache/ivnet/qemu-<version>-<hash>/`,
//! see the script).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Environment variable naming a ready x86_64 binary to use instead of
/// building.
pub const QEMU_ENV: &str = "IVNET_QEMU_IVSHMEM2";
/// Environment variable naming a ready aarch64 binary (without it, and with
/// [`QEMU_ENV`] set, `qemu-system-aarch64` beside that binary).
pub const QEMU_AARCH64_ENV: &str = "IVNET_QEMU_IVSHMEM2_AARCH64";

/// The two binaries of one build.
#[derive(Clone, Debug)]
struct Binaries {
    x86_64: PathBuf,
    aarch64: PathBuf,
}

/// Builds (or finds in the cache) both binaries, once per process: the
/// script prints the x86_64 binary's path; the aarch64 one lies beside it.
fn binaries() -> &'static Result<Binaries, String> {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let sibling = |x86_64: &Path| x86_64.with_file_name("qemu-system-aarch64");
        if let Some(path) = std::env::var_os(QEMU_ENV) {
            let x86_64 = PathBuf::from(path);
            let aarch64 = std::env::var_os(QEMU_AARCH64_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| sibling(&x86_64));
            return Ok(Binaries { x86_64, aarch64 });
        }
        let script = crate::qemu::repo_root().join("tests/qemu-ivshmem2/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                tail.join("\n")
            ));
        }
        // Say how the binaries came (cached or built, and how long).
        for line in stderr.lines().filter(|l| l.contains("built ")) {
            eprintln!("{line}");
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let x86_64 = stdout
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| format!("{} printed no path", script.display()))?;
        let aarch64 = sibling(&x86_64);
        for path in [&x86_64, &aarch64] {
            if !path.is_file() {
                return Err(format!(
                    "{} printed {}, and {} is not a file",
                    script.display(),
                    x86_64.display(),
                    path.display()
                ));
            }
        }
        Ok(Binaries { x86_64, aarch64 })
    })
}

/// The path of `qemu-system-x86_64` with the `ivshmem2` device, building it
/// (with the aarch64 one) on the first call of the process (a cold build
/// takes tens of minutes on 2 cores; later calls and later runs on the
/// machine take the cache). `Err` carries the build's output.
pub fn qemu_binary() -> Result<PathBuf, String> {
    binaries().clone().map(|b| b.x86_64)
}

/// The path of `qemu-system-aarch64` with the `ivshmem2` device (the `virt`
/// machine, GICv2/v3, PL011, gpex PCIe, `ivshmem-doorbell`, `-device
/// loader`); the same build as [`qemu_binary`].
pub fn qemu_binary_aarch64() -> Result<PathBuf, String> {
    binaries().clone().map(|b| b.aarch64)
}

/// The x86_64 binary, or `None` after a loud message when it cannot be
/// built here and the run is not CI (under `CI` a failed build fails the
/// test).
pub fn qemu_binary_or_skip(test: &str) -> Option<PathBuf> {
    or_skip(test, qemu_binary())
}

/// The aarch64 binary, or `None` as [`qemu_binary_or_skip`].
pub fn qemu_binary_aarch64_or_skip(test: &str) -> Option<PathBuf> {
    or_skip(test, qemu_binary_aarch64())
}

fn or_skip(test: &str, binary: Result<PathBuf, String>) -> Option<PathBuf> {
    match binary {
        Ok(path) => Some(path),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n!!! SKIPPED {test}: the QEMU with the ivshmem2 device cannot be built on \
                 this machine (set {QEMU_ENV} to a binary, or run scripts/install-deps.sh \
                 as root):\n{e}\n"
            );
            None
        }
        Err(e) => panic!("{test}: building the ivshmem2 QEMU failed:\n{e}"),
    }
}
