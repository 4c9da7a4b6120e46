//! Building the minimal Linux guest (Debian kernel, busybox, a UIO driver
//! with MSI-X, ivnet-bridge) and running it in QEMU.
//!
//! The guest is assembled at test time from Debian packages, fetched with
//! `apt-get download` and unpacked with `dpkg-deb` (never installed), and
//! from this repository:
//!
//! | what | from |
//! |---|---|
//! | `vmlinuz`, `uio.ko`, `tun.ko`, vfio-pci and its dependencies | `linux-image-<release>`, the kernel `linux-image-amd64` depends on |
//! | `uio_ivshmem_doorbell.ko` | `tests/linux-vm/uio_ivshmem_doorbell/`, compiled with Kbuild against `linux-headers-<release>` (+ `-common`, `linux-kbuild-*`) unpacked into the cache |
//! | `/bin/busybox` | `busybox-static` |
//! | `/bin/ivnet-bridge`, `/bin/ivnet-echo-check` | this workspace's release builds ([`crate::netns::bins`]), debug info stripped |
//! | their shared libraries | the host's glibc, as `ldd` lists them |
//! | `/init` | `tests/linux-vm/init` |
//!
//! Kernel, modules and busybox are cached in `target/linux-vm/<release>/`
//! and built once (a `ready` stamp, under a file lock so that concurrent
//! test processes build them once; the UIO module is recompiled when its
//! source changes); the initramfs itself is written per VM, in a second.
//!
//! **The UIO driver.** QEMU's ivshmem-doorbell delivers doorbells only as
//! MSI-X messages (with MSI-X disabled it drops them), and ivshmem-net uses
//! two vectors: 0 for state changes, 1 for data. None of the drivers at hand
//! delivers both:
//! - `uio_pci_generic` (mainline) is INTx-only;
//! - `igb_uio` (Debian's `dpdk-kmods-dkms`) enables exactly one MSI-X
//!   vector; vector 1's table entry stays masked, QEMU only sets its pending
//!   bit, and data doorbells never reach user space (measured in this
//!   guest: vector-0 doorbells counted as UIO events, vector-1 doorbells
//!   not), so the bridge could only poll for data;
//! - VFIO without an IOMMU needs `CONFIG_VFIO_NOIOMMU`, which Debian's
//!   kernel does not set.
//!
//! So the guest carries a 150-line UIO driver of its own,
//! `uio_ivshmem_doorbell`, with the user-space contract of Jailhouse's
//! `uio_ivshmem` (the driver ivnet-bridge meets in a Jailhouse cell): BAR0
//! and BAR2 as maps, every MSI-X vector counted in the one UIO event
//! counter, `irqcontrol` to enable/disable. See its source for details.
//!
//! **Why glibc-linked binaries with their libraries.** The toolchain here
//! has no `x86_64-unknown-linux-musl` target (and cannot download one);
//! a `crt-static` glibc build would compile the whole dependency tree a
//! second time. The release binaries the bridge tests build anyway run
//! unchanged once the loader and libraries `ldd` names sit at the same
//! paths in the initramfs (same Debian release, same glibc).
//!
//! Environment knobs: `IVNET_LINUX_RELEASE` (use this kernel release, e.g.
//! `6.1.0-56-amd64`, instead of the one `linux-image-amd64` depends on),
//! `IVNET_LINUX_BRIDGE=PATH` (put this `ivnet-bridge` binary into the guest
//! instead of the workspace's release build, e.g. to try a patched bridge),
//! `IVNET_QEMU_ACCEL=tcg|kvm`, `IVNET_TEST_KEEP=1` (keep the per-VM
//! directory with the serial log and the initramfs).

use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::qemu::{Accel, QEMU, QemuProcess, ensure_qemu_installed, repo_root, unique_dir};

/// The Debian meta-package whose dependency names the kernel to use.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

/// Host packages the module build needs: Kbuild's make, the compiler the
/// Debian kernel was built with (`.kernelvariables` says `gcc-12`), and the
/// libelf that the prebuilt `objtool` of `linux-kbuild-*` links against.
const HOST_BUILD_PACKAGES: [&str; 3] = ["make", "gcc-12", "libelf1"];

/// Kernel modules taken from the image package (path under `kernel/`): UIO
/// and TUN, then vfio-pci with its dependencies in load order (Debian's 6.1
/// has no `iommufd` and no `CONFIG_VFIO_NOIOMMU`: VFIO needs the IOMMU).
const KERNEL_MODULES: [&str; 8] = [
    "drivers/uio/uio.ko",
    "drivers/net/tun.ko",
    "drivers/vfio/vfio.ko",
    "drivers/vfio/vfio_iommu_type1.ko",
    "drivers/vfio/vfio_virqfd.ko",
    "virt/lib/irqbypass.ko",
    "drivers/vfio/pci/vfio-pci-core.ko",
    "drivers/vfio/pci/vfio-pci.ko",
];

/// Where the modules go in the initramfs (the init script loads them from
/// there with `insmod`; no `depmod` needed).
const INITRAMFS_MODULE_DIR: &str = "lib/modules/ivnet";

/// Root of the cache: `target/linux-vm` of the repository.
pub fn cache_root() -> PathBuf {
    repo_root().join("target/linux-vm")
}

/// The built parts of the guest that do not change between VMs.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `vmlinuz` (a bzImage QEMU boots with `-kernel`).
    pub kernel: PathBuf,
    /// `busybox` from `busybox-static`.
    pub busybox: PathBuf,
    /// `uio.ko`, `tun.ko` and `uio_ivshmem_doorbell.ko`, built for `release`.
    pub modules: Vec<PathBuf>,
    /// `ivnet-bridge` (release build of this workspace).
    pub bridge: PathBuf,
    /// `ivnet-echo-check` (release build of this workspace).
    pub echo_check: PathBuf,
}

/// Runs `cmd` (no stdin); its stdout, or an error naming `what` with both
/// outputs. Shared by the Linux VM and the Jailhouse rig builds.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn apt_get(args: &[&str], dir: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("apt-get");
    // `apt-get download` into a root-owned directory: do not drop to `_apt`.
    cmd.args(["-q", "-o", "APT::Sandbox::User=root"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    run(&mut cmd, &format!("apt-get {}", args.join(" ")))
}

/// Runs an apt command; if it fails (no package lists yet on a fresh
/// machine, or stale ones), runs `apt-get update` once and tries again.
fn with_apt_update<T>(mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    static UPDATED: OnceLock<Result<(), String>> = OnceLock::new();
    match f() {
        Ok(v) => Ok(v),
        Err(first) => {
            UPDATED
                .get_or_init(|| apt_get(&["update"], None).map(|_| ()))
                .clone()
                .map_err(|e| format!("{first}\nand apt-get update failed: {e}"))?;
            f()
        }
    }
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

/// Installs the host packages of [`HOST_BUILD_PACKAGES`] that are missing.
fn ensure_host_packages() -> Result<(), String> {
    let missing: Vec<&str> = HOST_BUILD_PACKAGES
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    with_apt_update(|| apt_get(&args, None)).map(|_| ())
}

/// The kernel release to use: `IVNET_LINUX_RELEASE`, or the one the
/// `linux-image-amd64` meta-package of this Debian release depends on.
fn kernel_release() -> Result<String, String> {
    if let Ok(r) = std::env::var("IVNET_LINUX_RELEASE") {
        return Ok(r);
    }
    let deps = with_apt_update(|| {
        let out = run(
            Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]),
            "apt-cache depends",
        )?;
        if out.contains("Depends: linux-image-") {
            Ok(out)
        } else {
            Err(format!("apt-cache knows no {KERNEL_META_PACKAGE}:\n{out}"))
        }
    })?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .find(|r| r.ends_with("-amd64") && !r.contains('<'))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("no linux-image-*-amd64 dependency of {KERNEL_META_PACKAGE}:\n{deps}")
        })
}

/// The `.deb` in `dir` whose file name starts with `<package>_`.
fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, String> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| format!("no {package}_*.deb in {}", dir.display()))
}

/// Downloads `packages` into `dir` (skipping those already there).
fn download(dir: &Path, packages: &[String]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| find_deb(dir, p).is_err())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["download"];
    args.extend(&missing);
    with_apt_update(|| apt_get(&args, Some(dir))).map(|_| ())
}

/// A field of a `.deb`'s control file (`dpkg-deb -f`).
fn deb_field(deb: &Path, field: &str) -> Result<String, String> {
    run(
        Command::new("dpkg-deb").arg("-f").arg(deb).arg(field),
        "dpkg-deb -f",
    )
    .map(|s| s.trim().to_owned())
}

/// Package names in a `Depends:` value (alternatives and versions dropped).
fn depends_names(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|d| d.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_owned())
        .collect()
}

/// Unpacks the whole package into `dest`.
fn unpack(deb: &Path, dest: &Path) -> Result<(), String> {
    fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest),
        "dpkg-deb -x",
    )
    .map(|_| ())
}

/// Unpacks only `members` (paths as in the package, `./…`) into `dest`:
/// the kernel image package holds ~400 MiB of modules, of which the guest
/// needs two.
fn unpack_members(deb: &Path, dest: &Path, members: &[String]) -> Result<(), String> {
    fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("dpkg-deb --fsys-tarfile: {e}"))?;
    let tar_in = dpkg.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .args(members)
        .stdin(tar_in)
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    let dpkg_status = dpkg.wait().map_err(|e| format!("dpkg-deb: {e}"))?;
    if !tar.status.success() || !dpkg_status.success() {
        return Err(format!(
            "unpacking {members:?} from {} failed (dpkg-deb {dpkg_status}, tar {}): {}",
            deb.display(),
            tar.status,
            String::from_utf8_lossy(&tar.stderr)
        ));
    }
    Ok(())
}

/// Builds (once) the cached parts and returns them; the Rust binaries are
/// the release builds of [`crate::netns::bins`].
pub fn linux_guest() -> Result<LinuxGuest, String> {
    static GUEST: OnceLock<Result<LinuxGuest, String>> = OnceLock::new();
    GUEST.get_or_init(build_guest).clone()
}

fn build_guest() -> Result<LinuxGuest, String> {
    let release = kernel_release()?;
    let dir = cache_root().join(&release);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One builder at a time across test processes; the others wait and
    // then find the stamp.
    let lock = File::create(cache_root().join(".lock")).map_err(|e| format!("cache lock: {e}"))?;
    lock.lock().map_err(|e| format!("cache lock: {e}"))?;
    let stamp = dir.join("ready");
    if !stamp.exists() {
        build_cache(&release, &dir)?;
        fs::write(&stamp, "built by tests/src/linuxvm.rs\n").map_err(|e| e.to_string())?;
    }
    let mut modules: Vec<PathBuf> = KERNEL_MODULES
        .iter()
        .map(|m| {
            dir.join("modules")
                .join(Path::new(m).file_name().expect("file"))
        })
        .collect();
    if modules.iter().any(|m| !m.is_file()) {
        unpack_kernel(&release, &dir)?;
    }
    let uio_module = build_uio_module(&release, &dir)?;
    drop(lock);
    modules.push(uio_module);
    if let Some(m) = modules.iter().find(|m| !m.is_file()) {
        return Err(format!(
            "{} is missing although {} exists: remove {} to rebuild",
            m.display(),
            stamp.display(),
            dir.display()
        ));
    }
    let bins = crate::netns::bins();
    let echo_check = bins.bridge.with_file_name("ivnet-echo-check");
    if !echo_check.is_file() {
        return Err(format!("{} was not built", echo_check.display()));
    }
    let bridge =
        std::env::var_os("IVNET_LINUX_BRIDGE").map_or_else(|| bins.bridge.clone(), PathBuf::from);
    Ok(LinuxGuest {
        kernel: dir.join("vmlinuz"),
        busybox: dir.join("busybox"),
        modules,
        bridge,
        echo_check,
        release,
    })
}

/// Unpacks `vmlinuz` and [`KERNEL_MODULES`] from the image package in
/// `dir/debs` (downloaded again if it is gone). Also run on a cache built
/// before a module joined the list.
fn unpack_kernel(release: &str, dir: &Path) -> Result<(), String> {
    let debs = dir.join("debs");
    let image_pkg = format!("linux-image-{release}");
    if find_deb(&debs, &image_pkg).is_err() {
        fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
        download(&debs, std::slice::from_ref(&image_pkg))?;
    }
    let image_deb = find_deb(&debs, &image_pkg)?;
    let image_root = dir.join("image");
    let _ = fs::remove_dir_all(&image_root);
    let mut members = vec![format!("./boot/vmlinuz-{release}")];
    members.extend(
        KERNEL_MODULES
            .iter()
            .map(|m| format!("./lib/modules/{release}/kernel/{m}")),
    );
    unpack_members(&image_deb, &image_root, &members)?;
    let modules = dir.join("modules");
    fs::create_dir_all(&modules).map_err(|e| e.to_string())?;
    copy(&image_root.join(&members[0][2..]), &dir.join("vmlinuz"))?;
    for m in &members[1..] {
        let src = image_root.join(&m[2..]);
        copy(&src, &modules.join(src.file_name().expect("module file")))?;
    }
    let _ = fs::remove_dir_all(&image_root);
    Ok(())
}

/// Downloads the packages and unpacks kernel, modules, busybox and the
/// kernel headers into `dir`.
fn build_cache(release: &str, dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    ensure_host_packages()?;
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    let image_pkg = format!("linux-image-{release}");
    let headers_pkg = format!("linux-headers-{release}");
    download(
        &debs,
        &[
            image_pkg.clone(),
            headers_pkg.clone(),
            "busybox-static".into(),
        ],
    )?;
    // The arch headers need the common headers and the prebuilt Kbuild
    // tools (fixdep, modpost, objtool) of the same kernel.
    let headers_deb = find_deb(&debs, &headers_pkg)?;
    let header_deps: Vec<String> = depends_names(&deb_field(&headers_deb, "Depends")?)
        .into_iter()
        .filter(|d| d.starts_with("linux-headers-") || d.starts_with("linux-kbuild-"))
        .collect();
    download(&debs, &header_deps)?;

    // Kernel and the modules.
    unpack_kernel(release, dir)?;

    // busybox.
    let bb_root = dir.join("busybox-pkg");
    let _ = fs::remove_dir_all(&bb_root);
    unpack(&find_deb(&debs, "busybox-static")?, &bb_root)?;
    copy(&bb_root.join("bin/busybox"), &dir.join("busybox"))?;

    // Headers for external modules.
    let headers_root = dir.join("headers");
    let _ = fs::remove_dir_all(&headers_root);
    unpack(&headers_deb, &headers_root)?;
    for d in &header_deps {
        unpack(&find_deb(&debs, d)?, &headers_root)?;
    }

    // Only the results are kept; the unpacked tree can go.
    let _ = fs::remove_dir_all(&bb_root);
    eprintln!(
        "linux guest {release}: kernel, modules, busybox and headers ready in {:.1}s in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

/// The source directory of the guest's UIO driver.
const UIO_MODULE_SOURCE: &str = "tests/linux-vm/uio_ivshmem_doorbell";

/// Compiles `uio_ivshmem_doorbell.ko` against the cached headers, unless
/// the cached build is of the same source. Returns the module's path.
fn build_uio_module(release: &str, dir: &Path) -> Result<PathBuf, String> {
    let src = repo_root().join(UIO_MODULE_SOURCE);
    let build = dir.join("uio_ivshmem_doorbell-build");
    let module = build.join("uio_ivshmem_doorbell.ko");
    let files = ["uio_ivshmem_doorbell.c", "Kbuild"];
    let same = |f: &str| matches!((fs::read(src.join(f)), fs::read(build.join(f))), (Ok(a), Ok(b)) if a == b);
    if module.is_file() && files.iter().all(|f| same(f)) {
        return Ok(module);
    }
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build).map_err(|e| e.to_string())?;
    for f in files {
        copy(&src.join(f), &build.join(f))?;
    }
    build_external_module(&dir.join("headers"), release, &build)?;
    if module.is_file() {
        Ok(module)
    } else {
        Err(format!("the module build produced no {}", module.display()))
    }
}

/// Compiles the external module in `module_dir`. The arch headers'
/// `Makefile` is one line that includes the common headers' `Makefile` by
/// absolute path (`/usr/src/…`, where nothing is installed here), so Kbuild
/// is started with `-f` on the common `Makefile` directly, from the arch
/// headers directory (its object tree: `.config`, `Module.symvers`,
/// `.kernelvariables`).
fn build_external_module(
    headers_root: &Path,
    release: &str,
    module_dir: &Path,
) -> Result<(), String> {
    let src = headers_root.join("usr/src");
    let arch = src.join(format!("linux-headers-{release}"));
    let common = fs::read_dir(&src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-common"))
        })
        .ok_or_else(|| format!("no linux-headers-*-common in {}", src.display()))?;
    run(
        Command::new("make")
            .arg("-C")
            .arg(&arch)
            .arg("-f")
            .arg(common.join("Makefile"))
            .arg(format!("M={}", module_dir.display()))
            .arg("modules"),
        &format!("building the kernel module in {}", module_dir.display()),
    )
    .map(|_| ())
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// The shared objects `ldd` says `binary` needs (absolute paths, loader
/// included); empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(format!(
            "ldd {} failed: {}{}",
            binary.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(format!("{}: {line}", binary.display()));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; linux-vdso has no path.
        let path = line.split("=>").last().unwrap_or(line).trim();
        let path = path.split(" (").next().unwrap_or(path).trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// An initramfs (`newc` cpio, uncompressed) under construction.
pub struct Initramfs {
    entries: Vec<(cpio::NewcBuilder, Cursor<Vec<u8>>)>,
    /// Paths added so far (directories and files).
    paths: std::collections::BTreeSet<String>,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    /// An archive with `/dev/console`, so that init has a console before it
    /// mounts devtmpfs.
    pub fn new() -> Initramfs {
        let mut me = Initramfs {
            entries: Vec::new(),
            paths: Default::default(),
        };
        me.dir("dev");
        me.paths.insert("dev/console".into());
        me.entries.push((
            cpio::NewcBuilder::new("dev/console")
                .mode(0o020600)
                .rdev_major(5)
                .rdev_minor(1),
            Cursor::new(Vec::new()),
        ));
        me
    }

    /// Adds directory `path` (relative, no leading `/`) and its parents.
    pub fn dir(&mut self, path: &str) {
        let mut so_far = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(part);
            if self.paths.insert(so_far.clone()) {
                self.entries.push((
                    cpio::NewcBuilder::new(&so_far).mode(0o040755),
                    Cursor::new(Vec::new()),
                ));
            }
        }
    }

    /// Adds a regular file with `contents` at `path` (parents created).
    pub fn file(&mut self, path: &str, mode: u32, contents: Vec<u8>) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        assert!(self.paths.insert(path.to_owned()), "{path} added twice");
        self.entries.push((
            cpio::NewcBuilder::new(path).mode(0o100000 | mode),
            Cursor::new(contents),
        ));
    }

    /// Adds the host file `from` at `path`.
    pub fn copy(&mut self, path: &str, mode: u32, from: &Path) -> Result<(), String> {
        let data = fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
        self.file(path, mode, data);
        Ok(())
    }

    /// Adds a dynamically linked host binary at `path` together with the
    /// libraries it needs, at the paths `ldd` reports.
    pub fn binary_with_libraries(&mut self, path: &str, from: &Path) -> Result<(), String> {
        self.copy(path, 0o755, from)?;
        for lib in shared_libraries(from)? {
            let p = lib.to_str().ok_or("non-UTF-8 library path")?.to_owned();
            if !self.paths.contains(p.trim_start_matches('/')) {
                self.copy(&p, 0o755, &lib)?;
            }
        }
        Ok(())
    }

    /// Writes the archive.
    pub fn write(self, out: &Path) -> Result<(), String> {
        let file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut w = cpio::write_cpio(self.entries.into_iter(), io::BufWriter::new(file))
            .map_err(|e| format!("writing {}: {e}", out.display()))?;
        w.flush()
            .map_err(|e| format!("writing {}: {e}", out.display()))
    }
}

impl LinuxGuest {
    /// Writes an initramfs for this guest: busybox, the modules, the two
    /// Rust binaries with their libraries, and `tests/linux-vm/init`.
    pub fn write_initramfs(&self, out: &Path) -> Result<(), String> {
        let mut root = Initramfs::new();
        for d in ["proc", "sys", "tmp", "run", "bin"] {
            root.dir(d);
        }
        root.copy("bin/busybox", 0o755, &self.busybox)?;
        root.copy("init", 0o755, &repo_root().join("tests/linux-vm/init"))?;
        for m in &self.modules {
            let name = m.file_name().and_then(|n| n.to_str()).expect("module name");
            root.copy(&format!("{INITRAMFS_MODULE_DIR}/{name}"), 0o644, m)?;
        }
        let scratch = out.with_extension("bins");
        fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        for (name, bin) in [
            ("ivnet-bridge", &self.bridge),
            ("ivnet-echo-check", &self.echo_check),
        ] {
            let small = strip_debug_info(bin, &scratch.join(name));
            root.binary_with_libraries(&format!("bin/{name}"), &small)?;
        }
        let written = root.write(out);
        let _ = fs::remove_dir_all(&scratch);
        written
    }
}

/// A copy of `bin` without debug information (the release profile keeps
/// it: 20 MiB of the bridge's 21), or `bin` itself if `strip` fails.
fn strip_debug_info(bin: &Path, out: &Path) -> PathBuf {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(out)
        .arg(bin)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        out.to_owned()
    } else {
        bin.to_owned()
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LinuxVmConfig {
    /// A name for the per-VM directory.
    pub name: String,
    /// Accelerator; `None` = [`linux_accel`].
    pub accel: Option<Accel>,
    /// Guest RAM (`-m`).
    pub memory: String,
    /// Kernel command line after the fixed part (console, panic): the
    /// `ivnet_*` parameters the init script reads.
    pub append: String,
    /// ivshmem-server socket for an `ivshmem-doorbell` device.
    pub ivshmem_socket: Option<PathBuf>,
    /// MSI-X vectors of the ivshmem-doorbell device.
    pub vectors: u32,
    /// A virtual Intel IOMMU (`-device intel-iommu`, `intel_iommu=on`), so
    /// that stock `vfio-pci` binds the ivshmem device.
    pub iommu: bool,
    /// The QEMU binary; `None` = [`QEMU`] (the ivshmem 2.0 device needs
    /// `crate::ivshmem2::qemu_binary`).
    pub qemu: Option<PathBuf>,
    /// The ivshmem device on [`Self::ivshmem_socket`].
    pub ivshmem_device: IvshmemDevice,
}

/// Which ivshmem device the Linux VM gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvshmemDevice {
    /// QEMU's `ivshmem-doorbell` (1af4:1110, the QEMU profile).
    Doorbell,
    /// The ivshmem 2.0 device of `tests/qemu-ivshmem2` (110a:4106, the
    /// Jailhouse profile) with its shared memory at guest-physical `base`:
    /// outside the VM's RAM and outside the PCI window (q35: RAM below
    /// 2 GiB ends at `-m`, the 32-bit PCI window starts at 2 GiB).
    Ivshmem2 { base: u64 },
}

impl Default for LinuxVmConfig {
    fn default() -> Self {
        LinuxVmConfig {
            name: "linux".into(),
            accel: None,
            memory: "512M".into(),
            append: "ivnet_test=boot".into(),
            ivshmem_socket: None,
            vectors: 2,
            iommu: false,
            qemu: None,
            ivshmem_device: IvshmemDevice::Doorbell,
        }
    }
}

/// The fixed kernel parameters: console on the first serial port, a panic
/// ends QEMU at once (`-no-reboot`), warnings and worse on the console,
/// and ivshmem's 256-byte BAR0 sized up to a page of its own (the UIO core
/// cannot mmap a map smaller than a page; see the UIO driver).
const BASE_CMDLINE: &str = "console=ttyS0,115200 panic=-1 loglevel=4 8250.nr_uarts=1 \
                            pci=resource_alignment=12@pci:1af4:1110";

/// A running QEMU with the Linux guest. Killed on drop.
pub struct LinuxVm {
    process: QemuProcess,
}

/// The accelerator for the Linux guest: [`crate::qemu::default_accel`]
/// (KVM when it works and is not much slower than TCG, as measured with the
/// bare-metal guest), but TCG if a Debian kernel does not boot under that
/// KVM. `IVNET_QEMU_ACCEL=tcg|kvm` forces one.
///
/// Some KVM implementations run the small bare-metal guest but not a stock
/// Linux kernel (under the PVM backend, `kvm_pvm`, the kernel's
/// decompressor crawls for minutes and the uncompressed kernel stops with
/// an emulation failure). So the Linux guest itself is booted under KVM
/// once (`ivnet_test=boot`, 45 s); the verdict is cached per host boot
/// (`/proc/sys/kernel/random/boot_id`) in the cache directory.
pub fn linux_accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    ACCEL.get_or_init(probe_linux_accel).clone()
}

fn probe_linux_accel() -> Accel {
    let kvm = crate::qemu::default_accel();
    if kvm == Accel::Tcg {
        return Accel::Tcg;
    }
    if std::env::var("IVNET_QEMU_ACCEL").as_deref() == Ok("kvm") {
        return kvm;
    }
    let Ok(guest) = linux_guest() else {
        return Accel::Tcg;
    };
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let key = format!("{} {}", boot_id.trim(), kvm.name());
    let record = cache_root().join(&guest.release).join("kvm-probe");
    if let Ok(text) = fs::read_to_string(&record)
        && let Some(verdict) = text.strip_prefix(&format!("{key} "))
    {
        return if verdict.trim() == "ok" {
            kvm
        } else {
            Accel::Tcg
        };
    }
    let started = Instant::now();
    let ok = LinuxVm::start(&LinuxVmConfig {
        name: "kvm-probe".into(),
        accel: Some(kvm.clone()),
        append: "ivnet_test=boot".into(),
        ..LinuxVmConfig::default()
    })
    .and_then(|mut vm| {
        vm.wait_for_serial("IVNET-DONE ok", Duration::from_secs(45))
            .map(|_| ())
    })
    .is_ok();
    eprintln!(
        "Linux guest under {}: {} ({:.1}s); using {}",
        kvm.name(),
        if ok { "boots" } else { "does not boot" },
        started.elapsed().as_secs_f64(),
        if ok { "KVM" } else { "TCG" }
    );
    let _ = fs::write(
        &record,
        format!("{key} {}\n", if ok { "ok" } else { "fails" }),
    );
    if ok { kvm } else { Accel::Tcg }
}

impl LinuxVm {
    /// Builds the guest (cached), writes its initramfs and starts QEMU:
    /// q35, one vCPU, serial console into `serial.log`, qboot (or SeaBIOS),
    /// and optionally an `ivshmem-doorbell` on a server socket.
    pub fn start(cfg: &LinuxVmConfig) -> Result<LinuxVm, String> {
        ensure_qemu_installed()?;
        let guest = linux_guest()?;
        let accel = cfg.accel.clone().unwrap_or_else(linux_accel);
        let dir =
            unique_dir(&format!("linuxvm-{}", cfg.name)).map_err(|e| format!("temp dir: {e}"))?;
        let initramfs = dir.join("initramfs.cpio");
        guest.write_initramfs(&initramfs)?;
        let serial = dir.join("serial.log");
        let mut cmd = Command::new(cfg.qemu.as_deref().unwrap_or(Path::new(QEMU)));
        cmd.args(["-machine", "q35", "-m", &cfg.memory, "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(accel_args(&accel))
            .args(firmware_args())
            .arg("-kernel")
            .arg(&guest.kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .arg("-append")
            .arg(format!(
                "{BASE_CMDLINE} {}{}",
                if cfg.iommu { "intel_iommu=on " } else { "" },
                cfg.append
            ));
        if cfg.iommu {
            // Before the PCI devices it translates for. With interrupt
            // remapping: vfio_iommu_type1 refuses an IOMMU without it
            // (EPERM, "No interrupt remapping support"); under KVM that
            // needs the split irqchip (ignored by TCG).
            cmd.args(["-machine", "kernel-irqchip=split"])
                .args(["-device", "intel-iommu,intremap=on"]);
        }
        if let Some(sock) = &cfg.ivshmem_socket {
            cmd.arg("-chardev")
                .arg(format!("socket,path={},id=ivs", sock.display()))
                .arg("-device")
                .arg(match cfg.ivshmem_device {
                    IvshmemDevice::Doorbell => {
                        format!("ivshmem-doorbell,chardev=ivs,vectors={}", cfg.vectors)
                    }
                    IvshmemDevice::Ivshmem2 { base } => {
                        format!("ivshmem2,chardev=ivs,base={base:#x}")
                    }
                });
        }
        let process = QemuProcess::spawn(&mut cmd, dir, accel, "Linux VM")?;
        Ok(LinuxVm { process })
    }

    /// The accelerator this VM runs with.
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

    /// Everything useful for a failure message.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- linux vm: accel {}\n--- serial:\n{}\n--- qemu stderr:\n{}",
            self.accel().name(),
            self.serial(),
            self.process.qemu_stderr()
        )
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.exit().is_none()
    }

    /// Waits until the console shows `needle` `count` times; fails early if
    /// QEMU exits or the init script reports `IVNET-FAIL`, and after
    /// `timeout`.
    pub fn wait_for_serial_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.is_running();
            let log = self.process.serial_lines();
            if log.matches(needle).count() >= count {
                return Ok(log);
            }
            if let Some(line) = log.lines().find(|l| l.starts_with("IVNET-FAIL")) {
                return Err(format!(
                    "the Linux guest failed while waiting for {needle:?}: {line}\n{}",
                    self.diagnostics()
                ));
            }
            if !running {
                return Err(format!(
                    "the Linux guest ended ({:?}) before printing {needle:?} {count}x\n{}",
                    self.process.exit(),
                    self.diagnostics()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {needle:?} ({count}x) on the Linux guest's console after {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Self::wait_for_serial_count`] for the first occurrence.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_serial_count(needle, 1, timeout)
    }

    /// Waits for QEMU to exit (the init script powers off), at most
    /// `timeout` (then kills it and fails).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "the Linux guest still ran after {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.process.exit().expect("recorded by is_running"))
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// qboot when installed (it starts in well under a second and boots a
/// bzImage through fw_cfg), QEMU's default SeaBIOS otherwise.
fn firmware_args() -> Vec<String> {
    const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";
    if Path::new(QBOOT_ROM).is_file() {
        vec!["-bios".into(), QBOOT_ROM.into()]
    } else {
        Vec::new()
    }
}

/// QEMU arguments for an accelerator (as `qemu::Guest` uses them).
fn accel_args(accel: &Accel) -> Vec<String> {
    match accel {
        Accel::Kvm { cpu } => vec!["-accel".into(), "kvm".into(), "-cpu".into(), cpu.clone()],
        Accel::Tcg => vec!["-accel".into(), "tcg".into()],
    }
}

/// The `IVNET-…` lines of a console log whose tag is `tag` (the part after
/// the tag, trimmed).
pub fn tagged_lines<'a>(log: &'a str, tag: &str) -> Vec<&'a str> {
    log.lines()
        .filter_map(|l| l.strip_prefix(tag))
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
        .map(str::trim)
        .collect()
}
