//! The QEMU with the ivshmem 2.0 device (`tests/qemu-ivshmem2/`): QEMU 10.0
//! from Debian's source plus `ivshmem2.c`, built by
//! `tests/qemu-ivshmem2/build.sh` on first use and cached per machine
//! (`/var/cache/ivnet/qemu-<version>-<hash>/`, see the script).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Environment variable naming a ready binary to use instead of building.
pub const QEMU_ENV: &str = "IVNET_QEMU_IVSHMEM2";

/// The path of `qemu-system-x86_64` with the `ivshmem2` device, building it
/// on the first call of the process (a cold build takes tens of minutes on
/// 2 cores; later calls and later runs on the machine take the cache).
/// `Err` carries the build's output.
pub fn qemu_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os(QEMU_ENV) {
                return Ok(PathBuf::from(path));
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
            // Say how the binary came (cached or built, and how long).
            for line in stderr.lines().filter(|l| l.contains("built ")) {
                eprintln!("{line}");
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = stdout
                .lines()
                .last()
                .map(|l| PathBuf::from(l.trim()))
                .ok_or_else(|| format!("{} printed no path", script.display()))?;
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{} printed {}, not a file",
                    script.display(),
                    path.display()
                ))
            }
        })
        .clone()
}

/// The binary, or `None` after a loud message when it cannot be built here
/// and the run is not CI (under `CI` a failed build fails the test).
pub fn qemu_binary_or_skip(test: &str) -> Option<PathBuf> {
    match qemu_binary() {
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
