//! The bare-metal guest as a Jailhouse cell, in a rig that reproduces
//! Jailhouse's `cell load` + `cell start` in plain QEMU
//! (shared/reference/jailhouse-x86-cell.md §3.1, §3.2, §5):
//!
//! - `tests/jailhouse-rig/jh-reset.s`, assembled here, is the `-bios`: it
//!   enables q35's ACPI PM timer at port 0x608, puts the local APIC in
//!   x2APIC mode (an x2APIC host), marks the end of its own I/O with a write
//!   to port 0x80, and enters the image at 0000:0000 in real mode with the
//!   register state of Jailhouse's pseudo-SIPI (CR0 = CD|NW|ET, all else 0),
//!   on every CPU (`num_cpus` of the comm region = QEMU's `-smp`);
//! - the flat `ivnet-guest.bin` at 0, with the command line written at
//!   0x1000 as `jailhouse cell load … -s "…" -a 0x1000` does;
//! - a comm region at 0x100000 filled as `cell start` fills it
//!   ("JHCOMM", ABI revision 2, console, MMCONFIG base, PM timer port,
//!   1 CPU, `tsc_khz` = the host's TSC rate, `apic_khz` = QEMU's 1 GHz APIC
//!   bus);
//! - guest RAM is a shared file the test maps: it reads `cell_state` and
//!   plays the hypervisor's side of the message protocol (SHUTDOWN_REQUEST).
//!
//! QEMU 7.2's TCG has no x2APIC, which every Jailhouse cell has; the rig
//! uses QEMU ≥ 9 (x2APIC under TCG): `IVNET_RIG_QEMU`, else the system's
//! `qemu-system-x86_64` if new enough, else Debian bookworm-backports'
//! `qemu-system-x86` (10.0), downloaded with `apt-get download` through a
//! private package list and unpacked (never installed) into
//! `target/jailhouse-rig/qemu-backports/`. The rest of the suite keeps the
//! system QEMU.
//!
//! What Jailhouse would kill and QEMU lets pass fails the test (QEMU's
//! `memory_region_ops_*` and `cpu_set_apic_base` trace events, after the
//! firmware's marker):
//!
//! - port I/O outside the cell's `pio_regions` (0x3f8..0x3ff), 32-bit
//!   0xcf8, 0xcfc..0xcff, the PM timer (0x608..0x60b) and byte writes to
//!   0x80 — e.g. the PIT, port 0x61, the PICs, `isa-debug-exit`;
//! - PCI configuration writes to any function but the cell's ivshmem device;
//! - MMIO outside the ivshmem device's BARs, e.g. the xAPIC page (fatal on an
//!   x2APIC host);
//! - MSI-X messages not aimed at the cell's own APIC ID (0 in QEMU);
//! - writes to IA32_APIC_BASE.
//!
//! Not observable here: writes to the MTRR range MSRs (0x200..0x277; TCG
//! keeps them without a trace event or any effect), other MSRs Jailhouse
//! intercepts, RAM accesses outside the cell's 1 MiB (QEMU's RAM is 128 MiB;
//! the linker script's ASSERT and the guest's page tables are what keep the
//! footprint inside), and caching effects of CR0.CD/NW and MTRR_DEF_TYPE.E.
//! With two CPUs the firmware releases both into the image at once, as
//! `cell start` does, so the CPU-ticket scheme is exercised.
//!
//! The test writes the image (with the command line) and the comm region
//! into the shared RAM file before QEMU starts; the firmware turns q35's
//! 0xc0000..0xfffff (ROM: `pc.rom`, the BIOS alias) into RAM through the
//! PAM registers, as a cell's first MiB is RAM (the image reaches up to
//! 0x100000). `IVNET_RIG_IMAGE=/path/ivnet-guest.bin` runs a ready flat
//! image instead of building the worktree's.
//!
//! The cell's ivshmem device is QEMU's `ivshmem-doorbell` or the ivshmem
//! 2.0 device of `tests/qemu-ivshmem2` (then in the QEMU built with it,
//! which has x2APIC under TCG too); the allowed MMIO is the
//! BARs the guest reports having placed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ivnet_e2e::jailhouse::{
    self, GUEST_IP, HOST_IP, HostLink, LINK_TIMEOUT, LinkedCell, Rig, SharedRam, TraceAccess,
    bar_ranges, comm, console_bdf, load_string, rig_dir, scratch_dir,
};
use ivnet_e2e::linuxvm::run;
use ivnet_e2e::netns;
use ivnet_e2e::qemu::{Accel, QemuProcess, repo_root};

const TAP: &str = "ivj0";

/// Guest RAM of the rig (the cell itself uses 0..0x101000).
const RAM_SIZE: usize = 128 << 20;
const CMDLINE_ADDRESS: usize = 0x1000;
const COMM_REGION: u64 = 0x10_0000;
const PM_TIMER_PORT: u16 = 0x608;
/// QEMU's APIC timer counts at 1 GHz (before the divider).
const QEMU_APIC_KHZ: u32 = 1_000_000;

// ---------------------------------------------------------------------------
// Building the rig's parts.

/// The flat Jailhouse image: the guest's `ivnet-guest-jailhouse` (linked at
/// 0 by link-jailhouse.ld) through `objcopy -O binary`, as
/// bare-metal-guest/build-images.sh makes it.
fn flat_image() -> &'static Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // A ready flat image instead (e.g. one built from another commit).
        if let Some(p) = std::env::var_os("IVNET_RIG_IMAGE") {
            return Ok(PathBuf::from(p));
        }
        let guest = repo_root().join("bare-metal-guest");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(
            Command::new(cargo)
                .current_dir(&guest)
                .args(["build", "--release", "--bin", "ivnet-guest-jailhouse"])
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_RUSTFLAGS"),
            "building ivnet-guest-jailhouse",
        )?;
        let elf = guest.join("target/x86_64-unknown-none/release/ivnet-guest-jailhouse");
        fs::create_dir_all(rig_dir()).map_err(|e| e.to_string())?;
        let bin = rig_dir().join("ivnet-guest.bin");
        run(
            Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(&bin),
            "objcopy -O binary",
        )?;
        Ok(bin)
    })
}

/// The rig's firmware, assembled from tests/jailhouse-rig/jh-reset.s.
fn firmware() -> &'static Result<PathBuf, String> {
    static FW: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FW.get_or_init(|| {
        let src = repo_root().join("tests/jailhouse-rig/jh-reset.s");
        let dir = rig_dir();
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let obj = dir.join("jh-reset.o");
        let bin = dir.join("jh-reset.bin");
        run(
            Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&src),
            "as --32 jh-reset.s",
        )?;
        run(
            Command::new("ld")
                .args(["-m", "elf_i386", "-Ttext", "0", "--oformat", "binary", "-o"])
                .arg(&bin)
                .arg(&obj),
            "ld jh-reset",
        )?;
        let len = fs::metadata(&bin).map_err(|e| e.to_string())?.len();
        if len != 0x10000 {
            return Err(format!("jh-reset.bin is {len} bytes, not 64 KiB"));
        }
        Ok(bin)
    })
}

/// QEMU major version of `qemu` (`QEMU emulator version X.Y.Z`).
fn qemu_major(qemu: &Path) -> Option<u32> {
    let out = Command::new(qemu).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("version ")
        .nth(1)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// A QEMU whose TCG has x2APIC (≥ 9), with its data directory for `-L`.
fn rig_qemu() -> &'static Result<(PathBuf, Option<PathBuf>), String> {
    static QEMU10: OnceLock<Result<(PathBuf, Option<PathBuf>), String>> = OnceLock::new();
    QEMU10.get_or_init(|| {
        if let Some(q) = std::env::var_os("IVNET_RIG_QEMU") {
            return Ok((PathBuf::from(q), None));
        }
        let system = PathBuf::from("qemu-system-x86_64");
        if qemu_major(&system).is_some_and(|v| v >= 9) {
            return Ok((system, None));
        }
        let cache = rig_dir().join("qemu-backports");
        let root = cache.join("root");
        let bin = root.join("usr/bin/qemu-system-x86_64");
        let data = root.join("usr/share/qemu");
        fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
        let lock = File::create(cache.join(".lock")).map_err(|e| e.to_string())?;
        lock.lock().map_err(|e| format!("cache lock: {e}"))?;
        if qemu_major(&bin).is_some_and(|v| v >= 9) {
            return Ok((bin, Some(data)));
        }
        // A package list of its own: the system's apt sources stay as they are.
        let sources = cache.join("sources.list");
        fs::write(
            &sources,
            "deb http://deb.debian.org/debian bookworm-backports main\n",
        )
        .map_err(|e| e.to_string())?;
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(cache.join(d)).map_err(|e| e.to_string())?;
        }
        let opts = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".into(),
            format!("Dir::State::Lists={}", cache.join("lists").display()),
            format!("Dir::Cache={}", cache.join("cache").display()),
            "APT::Sandbox::User=root".into(),
        ];
        let apt = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.arg("-q").current_dir(cache.join("debs"));
            for o in &opts {
                cmd.arg("-o").arg(o);
            }
            cmd.args(args);
            run(&mut cmd, &format!("apt-get {}", args.join(" ")))
        };
        apt(&["update"])?;
        apt(&[
            "download",
            "qemu-system-x86/bookworm-backports",
            "qemu-system-common/bookworm-backports",
            "qemu-system-data/bookworm-backports",
        ])?;
        for entry in fs::read_dir(cache.join("debs")).map_err(|e| e.to_string())? {
            let deb = entry.map_err(|e| e.to_string())?.path();
            if deb.extension().is_some_and(|x| x == "deb") {
                run(
                    Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
                    "dpkg-deb -x",
                )?;
            }
        }
        match qemu_major(&bin) {
            Some(v) if v >= 9 => Ok((bin, Some(data))),
            other => Err(format!(
                "{} from bookworm-backports reports version {other:?}",
                bin.display()
            )),
        }
    })
}

/// The host's TSC rate in kHz (TCG's RDTSC reads the host's TSC), measured
/// over 200 ms: what Jailhouse's driver puts in `tsc_khz` when the config
/// leaves it 0.
fn host_tsc_khz() -> u32 {
    static KHZ: OnceLock<u32> = OnceLock::new();
    *KHZ.get_or_init(|| {
        // SAFETY: RDTSC has no side effects.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let us = start.elapsed().as_micros() as u64;
        ((t1 - t0) * 1000 / us) as u32
    })
}

/// The comm region as `cell start` leaves it (jailhouse-x86-cell.md §3.4).
fn comm_region_page() -> Vec<u8> {
    let mut c = comm::page();
    // console: address 0x3f8, size 0, type 2 (8250), flags 0 (PIO)
    c[0x18..0x20].copy_from_slice(&0x3f8u64.to_le_bytes());
    c[0x24..0x26].copy_from_slice(&2u16.to_le_bytes());
    c[0x38..0x40].copy_from_slice(&0xb000_0000u64.to_le_bytes());
    c[0x40..0x42].copy_from_slice(&PM_TIMER_PORT.to_le_bytes());
    c[0x42..0x44].copy_from_slice(&1u16.to_le_bytes());
    c[0x44..0x48].copy_from_slice(&host_tsc_khz().to_le_bytes());
    c[0x48..0x4c].copy_from_slice(&QEMU_APIC_KHZ.to_le_bytes());
    c
}

// ---------------------------------------------------------------------------
// One cell.

/// The cell's ivshmem device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    /// QEMU's `ivshmem-doorbell` (the guest's QEMU profile: the layout page
    /// and the sections in BAR2), in the rig's QEMU ≥ 9.
    Doorbell,
    /// The ivshmem 2.0 device of `tests/qemu-ivshmem2` (the guest's
    /// Jailhouse profile: 110a:4106, the sections at the capability's base
    /// address, STATE in BAR0), in the QEMU 10 built with it — what a
    /// Jailhouse cell is given.
    Ivshmem2,
}

impl Device {
    fn qemu_device(self) -> &'static str {
        match self {
            Device::Doorbell => "ivshmem-doorbell,chardev=ivs,vectors=2",
            Device::Ivshmem2 => "ivshmem2,chardev=ivs",
        }
    }
}

/// The x86 rig: q35 with the rig's firmware as a Jailhouse cell.
struct Q35;

/// QEMU as the rig's cell.
type Cell = jailhouse::Cell<Q35>;

impl Rig for Q35 {
    type Device = Device;
    const COMM_REGION: u64 = COMM_REGION;

    /// As many CPUs as the comm region's `num_cpus`.
    fn start(
        link: Option<(&Path, Device)>,
        cmdline: &str,
        comm: &[u8],
    ) -> (QemuProcess, SharedRam) {
        let cpus = u16::from_le_bytes([comm[0x42], comm[0x43]]).max(1);
        let ivshmem2_qemu;
        let (qemu, data) = match link {
            Some((_, Device::Ivshmem2)) => {
                ivshmem2_qemu =
                    ivnet_e2e::ivshmem2::qemu_binary().unwrap_or_else(|e| panic!("{e}"));
                (&ivshmem2_qemu, &None)
            }
            _ => {
                let (q, d) = rig_qemu().as_ref().unwrap_or_else(|e| panic!("{e}"));
                (q, d)
            }
        };
        let image = flat_image().as_ref().unwrap_or_else(|e| panic!("{e}"));
        let fw = firmware().as_ref().unwrap_or_else(|e| panic!("{e}"));
        let dir = scratch_dir("ivnet-jhcell");
        // `jailhouse cell load ivnet-inmate ivnet-guest.bin -s "…" -a 0x1000`
        let mut img = fs::read(image).unwrap();
        let s = load_string(cmdline);
        let end = CMDLINE_ADDRESS + s.len();
        if img.len() < end {
            img.resize(end, 0);
        }
        img[CMDLINE_ADDRESS..end].copy_from_slice(&s);
        // Written into the cell's RAM before its CPUs run, as the root cell
        // does (QEMU keeps the contents of a shared memory-backend-file; a
        // `loader` would write 0xc0000.. into q35's ROM instead, which the
        // firmware then replaces by RAM through PAM).
        let ram = SharedRam::create(&dir.join("ram"), 0, RAM_SIZE);
        ram.load(0, &img);
        ram.load(COMM_REGION, comm);

        let mut cmd = Command::new(qemu);
        if let Some(d) = data {
            cmd.arg("-L").arg(d);
        }
        cmd.args(["-machine", "q35,memory-backend=ram", "-m", "128M"])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=ram,size=128M,mem-path={},share=on",
                dir.join("ram").display()
            ))
            .args(["-cpu", "max", "-accel", "tcg"])
            .args(["-smp", &cpus.to_string()])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("serial.log").display()))
            .arg("-bios")
            .arg(fw)
            .args(["-trace", "memory_region_ops_read"])
            .args(["-trace", "memory_region_ops_write"])
            .args(["-trace", "cpu_set_apic_base"])
            .arg("-D")
            .arg(dir.join("trace.log"));
        if let Some((socket, device)) = link {
            cmd.arg("-chardev")
                .arg(format!("socket,path={},id=ivs", socket.display()))
                .args(["-device", device.qemu_device()]);
        }
        let process = QemuProcess::spawn(&mut cmd, dir, Accel::Tcg, "jailhouse cell").unwrap();
        (process, ram)
    }

    fn comm_region_page() -> Vec<u8> {
        comm_region_page()
    }

    /// See the module docs.
    fn violations(cell: &Cell) -> Vec<String> {
        let serial = cell.serial();
        // "pci 00:03.0: BAR0 …": the ivshmem function the cell owns.
        let bdf = console_bdf(&serial);
        let mut bad = check_trace(&cell.qemu_log(), PM_TIMER_PORT, bdf, &bar_ranges(&serial));
        // The 2.0 device reports writes into its read-only sections itself
        // (they are dropped; Jailhouse would stop the cell).
        let stderr = cell.process.qemu_stderr();
        bad.extend(
            stderr
                .lines()
                .filter(|l| l.contains("WRITE VIOLATION"))
                .map(|l| format!("write into a read-only ivshmem section: {l}")),
        );
        bad
    }
}

/// Checks a QEMU trace (memory_region_ops_read/write, cpu_set_apic_base)
/// against the rules of a Jailhouse cell with `pio_regions` = COM1, the
/// ivshmem function `ivshmem_bdf` (bus << 8 | dev << 3 | fn) and its BARs
/// `bars` (`(start, end)`, the only MMIO the cell is given). Returns one
/// line per access Jailhouse would have made fatal.
fn check_trace(
    trace: &str,
    pm_timer: u16,
    ivshmem_bdf: Option<u32>,
    bars: &[(u64, u64)],
) -> Vec<String> {
    let marker = "value 0xa5 size 1 name 'ioport80'";
    let Some((_, inmate)) = trace.split_once(marker) else {
        return vec!["the firmware's port-0x80 marker is missing from the trace".into()];
    };
    let pm = u64::from(pm_timer);
    let mut bad = Vec::new();
    let mut config_address = 0u64;
    for line in inmate.lines().skip(1) {
        if line.starts_with("cpu_set_apic_base") {
            bad.push(format!("IA32_APIC_BASE write: {line}"));
            continue;
        }
        let Some(TraceAccess {
            write,
            cpu,
            addr,
            value,
            size,
            name,
        }) = TraceAccess::parse(line)
        else {
            continue;
        };
        // cpu -1: the access came from a device model, not the guest.
        if cpu < 0 {
            continue;
        }
        let end = addr + size;
        if addr < 0x1_0000 {
            let ok = (0x3f8..=0x400).contains(&end) && addr >= 0x3f8
                || addr == 0xcf8 && size == 4
                || addr >= 0xcfc && end <= 0xd00
                || addr >= pm && end <= pm + 4
                || addr == 0x80 && write && size == 1;
            if !ok {
                bad.push(format!("port I/O outside the cell: {line}"));
            }
            if addr == 0xcf8 && write {
                config_address = value;
            }
            if addr >= 0xcfc && write {
                let bdf = (config_address >> 8 & 0xffff) as u32;
                if Some(bdf) != ivshmem_bdf {
                    bad.push(format!(
                        "PCI config write to {:02x}:{:02x}.{} (not the cell's device): {line}",
                        bdf >> 8,
                        bdf >> 3 & 0x1f,
                        bdf & 7
                    ));
                }
            }
        } else if name.starts_with("msix-table") {
            // Message address entries: 0xfee00000 | destination << 12; the
            // cell's only CPU has APIC ID 0 in QEMU.
            if write
                && addr % 16 == 0
                && value & 0xfff0_0000 == 0xfee0_0000
                && value >> 12 & 0xff != 0
            {
                bad.push(format!("MSI-X aimed outside the cell: {line}"));
            }
        }
        if addr >= 0x1_0000 && !bars.iter().any(|&(s, e)| addr >= s && end <= e) {
            bad.push(format!("MMIO outside the cell's device BARs: {line}"));
        }
    }
    bad
}

// ---------------------------------------------------------------------------
// The network around it.

/// The link side of the rig: namespace `jhcell`, the server with its
/// default two vectors (MSI-X), `ivj0`.
fn host_link() -> HostLink {
    HostLink::new("jhcell", &[], TAP, HOST_IP, GUEST_IP)
}

/// The flat image boots from the reset entry, links with `ivnet-bridge`
/// through `ivshmem-server`, answers ping, UDP and TCP echo, answers the
/// comm-region messages, takes the link down on SHUTDOWN_REQUEST (the
/// bridge's carrier drops) before approving it, and makes no access
/// Jailhouse would kill it for; a restarted cell relinks. The device is
/// QEMU's `ivshmem-doorbell` (the guest's QEMU profile).
#[test]
fn flat_image_runs_as_a_jailhouse_cell() {
    run_cell(Device::Doorbell);
}

/// The same cell life with the ivshmem 2.0 device (`tests/qemu-ivshmem2`),
/// i.e. what Jailhouse gives a cell: 110a:4106 found through 0xcf8/0xcfc,
/// the vendor capability read, BAR0 (registers, STATE) and BAR1 (MSI-X)
/// the only MMIO, the sections at the capability's fixed base address, the
/// state table and the peer's section read-only (a write would show up in
/// the trace and in the device's WRITE VIOLATION report). SHUTDOWN_REQUEST
/// writes RESET through STATE, which the device copies into the state
/// table and signals to the bridge on vector 0.
#[test]
fn flat_image_runs_as_a_jailhouse_cell_on_the_ivshmem2_device() {
    if ivnet_e2e::ivshmem2::qemu_binary_or_skip(
        "flat_image_runs_as_a_jailhouse_cell_on_the_ivshmem2_device",
    )
    .is_none()
    {
        return;
    }
    run_cell(Device::Ivshmem2);
}

fn run_cell(device: Device) {
    let _serial = netns::serial();
    let started = Instant::now();
    let mut rig = LinkedCell::<Q35>::start(host_link(), device, "platform: jailhouse cell");
    eprintln!("{device:?}: cell linked after {:?}", started.elapsed());
    let serial = rig.cell.serial();
    assert!(serial.contains("apic: X2Apic"), "{serial}");
    let profile = match device {
        Device::Doorbell => "ivshmem QemuDoorbell",
        Device::Ivshmem2 => "ivshmem Jailhouse",
    };
    assert!(serial.contains(profile), "{serial}");

    rig.ping(3, None);
    rig.udp_echo();
    rig.tcp_echo(1 << 20);
    rig.messages_shutdown_and_restart();
    eprintln!("{device:?}: rig test done after {:?}", started.elapsed());
}

/// A self-test that passes ends the cell with SHUT_DOWN, one that panics
/// with FAILED; neither touches `isa-debug-exit` (not even present here).
#[test]
fn exits_set_the_cell_state() {
    jailhouse::exits_set_the_cell_state::<Q35>();
}

/// A `-s` string longer than the 1024-byte buffer runs into the bss, not
/// the code: the guest boots, finds no NUL in the buffer and fails the cell.
#[test]
fn overlong_command_line_fails_the_cell() {
    let long = format!("ip=10.77.0.2/24 {}", "x".repeat(100_000));
    jailhouse::command_line_too_long_fails_the_cell::<Q35>(&long);
}

/// A comm region of another ABI revision: FAILED_COMM_REV, nothing else.
#[test]
fn wrong_comm_region_revision_fails_with_comm_rev() {
    jailhouse::wrong_comm_region_revision_fails_with_comm_rev::<Q35>();
}

/// Address of the image's CPU ticket counter (`jailhouse_cpu_tickets`).
fn ticket_address() -> usize {
    let elf = repo_root()
        .join("bare-metal-guest/target/x86_64-unknown-none/release/ivnet-guest-jailhouse");
    let syms = run(Command::new("nm").arg(&elf), "nm").unwrap();
    let line = syms
        .lines()
        .find(|l| l.ends_with(" jailhouse_cpu_tickets"))
        .unwrap_or_else(|| panic!("no jailhouse_cpu_tickets in {}", elf.display()));
    usize::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

/// With two CPUs, both start at the reset address (as at Jailhouse's `cell
/// start`): both take a ticket, one boots (one banner), the other stays
/// parked, and the self-test ends the cell normally.
#[test]
fn second_cpu_parks_at_the_reset_entry() {
    let _serial = netns::serial();
    let mut comm = comm_region_page();
    comm[0x42..0x44].copy_from_slice(&2u16.to_le_bytes());
    let mut cell = Cell::start(None, "ip=10.77.0.2/24 selftest=boot", &comm);
    assert_eq!(
        cell.wait_cell_state(LINK_TIMEOUT),
        comm::CELL_SHUT_DOWN,
        "{}",
        cell.diagnostics()
    );
    let tickets = ticket_address();
    let word = cell.ram.read_u32((tickets & !3) as u64) >> (8 * (tickets & 3));
    assert_eq!(word & 0xffff, 2, "CPUs that took a ticket");
    let serial = cell.serial();
    assert_eq!(
        serial.matches("booting (reset entry").count(),
        1,
        "{serial}"
    );
    cell.stop_and_check();
}

/// The trace checker flags what Jailhouse kills (so the rig test can fail).
#[test]
fn trace_checker_flags_fatal_accesses() {
    let head = "memory_region_ops_write cpu 0 mr 0x1 addr 0x80 value 0xa5 size 1 name 'ioport80'\n";
    let ok = [
        "memory_region_ops_write cpu 0 mr 0x2 addr 0x3f8 value 0x41 size 1 name 'serial'",
        "memory_region_ops_write cpu 0 mr 0x3 addr 0xcf8 value 0x80001800 size 4 name 'pci-conf-idx'",
        "memory_region_ops_write cpu 0 mr 0x4 addr 0xcfc value 0x6 size 2 name 'pci-conf-data'",
        "memory_region_ops_read cpu 0 mr 0x5 addr 0x608 value 0x1234 size 4 name 'acpi-tmr'",
        "memory_region_ops_write cpu -1 mr 0x6 addr 0xfee00000 value 0x0 size 4 name 'apic-msi'",
        "memory_region_ops_write cpu 0 mr 0x7 addr 0xc0001000 value 0xfee00000 size 4 name 'msix-table'",
        "memory_region_ops_write cpu 0 mr 0xd addr 0xc0000010 value 0x2 size 4 name 'ivshmem2-regs'",
        "memory_region_ops_read cpu 0 mr 0xd addr 0xc0000000 value 0x1 size 4 name 'ivshmem2-regs'",
    ];
    let bars = bar_ranges(
        "pci 00:03.0: ivshmem Jailhouse\n\
         pci 00:03.0: BAR0 32-bit at 0xc0000000 size 0x1000 (assigned by the guest)\n\
         pci 00:03.0: BAR1 32-bit at 0xc0001000 size 0x1000 (assigned by the guest)\n",
    );
    assert_eq!(
        bars,
        [(0xc000_0000, 0xc000_1000), (0xc000_1000, 0xc000_2000)]
    );
    let trace = format!("{head}{}\n", ok.join("\n"));
    assert_eq!(
        check_trace(&trace, 0x608, Some(0x18), &bars),
        Vec::<String>::new()
    );
    let fatal = [
        "memory_region_ops_write cpu 0 mr 0x8 addr 0x43 value 0xb0 size 1 name 'pit'",
        "memory_region_ops_read cpu 0 mr 0x9 addr 0x61 value 0x0 size 1 name 'pcspk'",
        "memory_region_ops_write cpu 0 mr 0xa addr 0x21 value 0xff size 1 name 'pic'",
        "memory_region_ops_write cpu 0 mr 0xb addr 0xf4 value 0x10 size 4 name 'isa-debug-exit'",
        "memory_region_ops_write cpu 0 mr 0x3 addr 0xcf8 value 0x8000f800 size 2 name 'pci-conf-idx'",
        "memory_region_ops_write cpu 0 mr 0x3 addr 0xcf8 value 0x8000f800 size 4 name 'pci-conf-idx'",
        "memory_region_ops_write cpu 0 mr 0x4 addr 0xcfc value 0x6 size 4 name 'pci-conf-data'",
        "memory_region_ops_read cpu 0 mr 0xc addr 0xfee00020 value 0x0 size 4 name 'apic-msi'",
        "memory_region_ops_write cpu 0 mr 0x7 addr 0xc0001000 value 0xfee01000 size 4 name 'msix-table'",
        "cpu_set_apic_base 0x00000000fee00c00",
        // Another device's MMIO although its name looks like ours.
        "memory_region_ops_read cpu 0 mr 0xe addr 0xc0002000 value 0x0 size 4 name 'ivshmem-mmio'",
        // A write into the 2.0 device's state table (a ROM device: writes trap).
        "memory_region_ops_write cpu 0 mr 0xf addr 0x20000000 value 0x1 size 4 name 'ivshmem2-state-table'",
    ];
    let trace = format!("{head}{}\n", fatal.join("\n"));
    let bad = check_trace(&trace, 0x608, Some(0x18), &bars);
    // The 2-byte 0xcf8 write is one violation; the config write after the
    // 4-byte one names 00:1f.0, another.
    assert_eq!(bad.len(), fatal.len() - 1, "{bad:#?}");
    assert_eq!(check_trace("", 0x608, None, &bars).len(), 1, "no marker");
}
