//! What the two arm64 Jailhouse rigs share (tests/tests/jailhouse_arm64_cell.rs,
//! the cell at EL1 with QEMU's trace as the checker, and
//! tests/tests/jailhouse_arm64_syndromes.rs, the cell under the EL2 stub):
//!
//! - the machine and the cell (configs/jailhouse/arm64/ivnet-inmate-qemu-arm64.c):
//!   `virt` with 2 GiB of RAM at 0x40000000, the cell's 2 MiB, the image and
//!   command-line addresses, the comm region page, the cell's MMIO
//!   regions, the ivshmem 2.0 device's link window;
//! - the comm region page as `cell start` fills it ([`comm_region_page`]);
//! - the flat image as `cell load` takes it ([`cell_image`]);
//! - the rigs' firmware, assembled from tests/jailhouse-rig/ with LLVM's
//!   assembler ([`assemble`], [`firmware`]);
//! - the start sequence ([`start`]): QEMU stopped after its reset (`-S`)
//!   with the RAM a file the test maps, the cell's RAM cleared and loaded
//!   as `cell load` + `cell start` leave it, then `cont`; what differs
//!   between the rigs is a [`Machine`];
//! - the start of the link scenario ([`start_linked`]);
//! - the findings both checkers share ([`shared_findings`]): RAM written
//!   outside the cell, what QEMU's ivshmem 2.0 device reports.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use crate::aarch64::{QEMU_AARCH64, aarch64_image, ensure_qemu_aarch64_installed};
use crate::jailhouse::{
    GUEST_IP, HOST_IP, HostLink, LinkedCell, Rig, SharedRam, bar_ranges, comm, load_string,
    rig_dir, scratch_dir,
};
use crate::linuxvm::run;
use crate::qemu::{Accel, QemuProcess, repo_root};

/// Guest RAM: 2 GiB at 0x40000000 (virt's `-m 2G`).
pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_SIZE: usize = 2 << 30;
/// The cell's RAM: 2 MiB at guest-physical 0x40000000.
pub const CELL_RAM: (u64, u64) = (0x4000_0000, 0x4020_0000);
/// `cpu_reset_address` = byte 0 of the image.
pub const IMAGE_ADDRESS: u64 = 0x4008_0000;
/// The image's zero-filled `.cmdline` buffer (base + 0x1000).
pub const CMDLINE_ADDRESS: u64 = 0x4008_1000;
pub const CMDLINE_SIZE: usize = 1024;
/// The comm region: one page.
pub const COMM_REGION: u64 = 0x8000_0000;
pub const COMM_PAGE: (u64, u64) = (COMM_REGION, COMM_REGION + 0x1000);
pub const PL011: (u64, u64) = (0x0900_0000, 0x0900_1000);
pub const GICD: (u64, u64) = (0x0800_0000, 0x0801_0000);
/// CPU 0's redistributor: RD frame and SGI frame, 64 KiB each.
pub const GICR_CPU0: (u64, u64) = (0x080a_0000, 0x080c_0000);
/// virt's ECAM with highmem (256 buses; the cell's is bus 0 only).
pub const ECAM: u64 = 0x40_1000_0000;
/// Where the guest puts BAR0 (the interface: 0x10000000, 4 KiB).
pub const BAR0: (u64, u64) = (0x1000_0000, 0x1000_1000);
/// gpex swizzles slot 1 pin B to INTID 37 = 32 + `vpci_irq_base` + 2 − 1.
pub const VPCI_IRQ_BASE: u32 = 4;
/// Where the 2.0 device maps the link (over RAM, as the cell config's
/// JAILHOUSE_SHMEM_NET_REGIONS(0x7fb00000, 1)).
pub const SHMEM_BASE: u64 = 0x7fb0_0000;

/// The comm region as `cell start` leaves it for this cell
/// (jailhouse-arm64-cell.md §3).
pub fn comm_region_page() -> Vec<u8> {
    let mut c = comm::page();
    // console: PL011 (type 3) at 0x09000000, MMIO | REGDIST_4, divider 0
    c[0x18..0x20].copy_from_slice(&PL011.0.to_le_bytes());
    c[0x24..0x26].copy_from_slice(&3u16.to_le_bytes());
    c[0x26..0x28].copy_from_slice(&3u16.to_le_bytes());
    c[0x38..0x40].copy_from_slice(&ECAM.to_le_bytes());
    c[0x40] = 3; // gic_version
    c[0x48..0x50].copy_from_slice(&GICD.0.to_le_bytes());
    // gicc_base 0 (GICv3)
    c[0x58..0x60].copy_from_slice(&GICR_CPU0.0.to_le_bytes());
    c[0x60..0x64].copy_from_slice(&VPCI_IRQ_BASE.to_le_bytes());
    c
}

/// The guest's flat image, checked to have the zero-filled command-line
/// buffer at +0x1000 that `cell load -s … -a 0x40081000` writes into.
pub fn cell_image() -> Vec<u8> {
    let path = aarch64_image().unwrap_or_else(|e| panic!("{e}"));
    let image = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let buffer = image.get(0x1000..0x1000 + CMDLINE_SIZE);
    assert!(
        buffer.is_some_and(|b| b.iter().all(|&x| x == 0)),
        "the image has no zero-filled {CMDLINE_SIZE}-byte command line buffer at +0x1000"
    );
    image
}

/// Assembles `src` (with `include` as `.include` directory) with LLVM's
/// assembler (package `llvm`, as llvm-objcopy) into a flat binary
/// `name.bin` of its `.text` in the rig directory.
pub fn assemble(src: &Path, include: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = rig_dir();
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    run(
        Command::new("llvm-mc")
            .args(["-triple=aarch64", "-filetype=obj", "-I"])
            .arg(include)
            .arg("-o")
            .arg(&obj)
            .arg(src),
        &format!("llvm-mc {name}"),
    )?;
    run(
        Command::new("llvm-objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin),
        &format!("llvm-objcopy {name}"),
    )?;
    Ok(bin)
}

/// The rig firmware tests/jailhouse-rig/`name`.s, assembled once per
/// process (tests of one binary start cells in parallel).
pub fn firmware(name: &'static str) -> Result<PathBuf, String> {
    static BUILT: Mutex<Option<HashMap<&'static str, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .get_or_insert_with(HashMap::new)
        .entry(name)
        .or_insert_with(|| {
            let dir = repo_root().join("tests/jailhouse-rig");
            assemble(&dir.join(format!("{name}.s")), &dir, name)
        })
        .clone()
}

/// What differs between the rigs' machines.
pub struct Machine<'a> {
    /// The `-bios` (see [`firmware`]).
    pub firmware: &'a Path,
    /// `virtualization=on`: the CPU starts at EL2 in the firmware.
    pub el2: bool,
    /// What QEMU logs to the rig's `trace.log` (`-trace …`, `-d …`).
    pub log_args: &'a [&'a str],
    /// The scratch directory's prefix.
    pub scratch: &'a str,
    /// The QEMU process's name in messages.
    pub name: &'static str,
}

/// `cell load` + `cell start`: QEMU on `machine` (TCG, cortex-a57, one
/// CPU, RAM a shared file, stopped after its reset), with the ivshmem 2.0
/// device in INTx mode at 00:01.0 on the server socket `link` if given;
/// once QMP answers, the cell's RAM is cleared (QEMU's DTB is gone) and
/// holds `image` at 0x40080000, `cmdline` (if any) as [`load_string`]
/// copies it at 0x40081000, and the comm region page `comm`; then
/// `before_cont` (the rig's own setup) and `cont`.
pub fn start(
    machine: &Machine<'_>,
    link: Option<&Path>,
    image: &[u8],
    cmdline: Option<&str>,
    comm: &[u8],
    before_cont: impl FnOnce(&QemuProcess, &SharedRam),
) -> (QemuProcess, SharedRam) {
    let qemu = match link {
        Some(_) => crate::ivshmem2::qemu_binary_aarch64().unwrap_or_else(|e| panic!("{e}")),
        None => {
            ensure_qemu_aarch64_installed().unwrap_or_else(|e| panic!("{e}"));
            PathBuf::from(QEMU_AARCH64)
        }
    };
    let dir = scratch_dir(machine.scratch);
    let ram = SharedRam::create(&dir.join("ram"), RAM_BASE, RAM_SIZE);
    let virtualization = if machine.el2 {
        "virtualization=on,"
    } else {
        ""
    };
    let mut cmd = Command::new(qemu);
    cmd.arg("-machine")
        .arg(format!(
            "virt,gic-version=3,its=off,{virtualization}memory-backend=ram"
        ))
        .args(["-cpu", "cortex-a57", "-m", "2G", "-smp", "1"])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=ram,size=2G,mem-path={},share=on",
            dir.join("ram").display()
        ))
        .args(["-accel", "tcg", "-S"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("serial.log").display()))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("qmp.sock").display()
        ))
        .arg("-bios")
        .arg(machine.firmware)
        .args(machine.log_args)
        .arg("-D")
        .arg(dir.join("trace.log"));
    if let Some(socket) = link {
        cmd.arg("-chardev")
            .arg(format!("socket,path={},id=ivs", socket.display()))
            .arg("-device")
            .arg(format!(
                "ivshmem2,chardev=ivs,vectors=0,addr=01.0,base={SHMEM_BASE:#x},over-ram=on"
            ));
    }
    let mut process = QemuProcess::spawn(&mut cmd, dir, Accel::Tcg, machine.name).unwrap();
    // QEMU has reset the machine (its DTB is in RAM) and waits: load the
    // cell as the root cell would, then start its CPU.
    if let Err(e) = process.qmp("query-status") {
        panic!("{e}\n{}", process.qemu_stderr());
    }
    ram.zero(CELL_RAM.0, (CELL_RAM.1 - CELL_RAM.0) as usize);
    ram.load(IMAGE_ADDRESS, image);
    if let Some(cmdline) = cmdline {
        ram.load(CMDLINE_ADDRESS, &load_string(cmdline));
    }
    ram.load(COMM_REGION, comm);
    before_cont(&process, &ram);
    if let Err(e) = process.qmp("cont") {
        panic!("{e}\n{}", process.qemu_stderr());
    }
    (process, ram)
}

/// What both rigs' checkers report: RAM written outside the cell's RAM,
/// the comm page and the rig's own `also_written` ranges, a write into a
/// read-only ivshmem section and an ivshmem BAR0 access that is not 32
/// bits (QEMU's device reports both on its stderr).
pub fn shared_findings(
    ram: &SharedRam,
    qemu_stderr: &str,
    also_written: &[(u64, u64)],
) -> Vec<String> {
    let mut bad = Vec::new();
    for (start, end) in ram.written_ranges() {
        let inside = |&(s, e): &(u64, u64)| start >= s && end <= e;
        if ![CELL_RAM, COMM_PAGE].iter().chain(also_written).any(inside) {
            bad.push(format!(
                "RAM written outside the cell: {start:#x}..{end:#x}"
            ));
        }
    }
    for l in qemu_stderr.lines() {
        if l.contains("WRITE VIOLATION") {
            bad.push(format!("write into a read-only ivshmem section: {l}"));
        } else if l.contains("-byte register") {
            bad.push(format!("ivshmem BAR0 access not 32-bit aligned: {l}"));
        }
    }
    bad
}

/// The link side of a rig: namespace `ns`, TAP `tap`, and one interrupt
/// vector per peer, as Jailhouse gives an INTx device (num_msix_vectors 0):
/// state changes and data doorbells share vector 0 (with the default two,
/// the bridge would ring data on vector 1, which an INTx device drops).
pub fn host_link(ns: &str, tap: &str) -> HostLink {
    HostLink::new(ns, &["--vectors", "1"], tap, HOST_IP, GUEST_IP)
}

/// Rig `R`'s cell linked over the ivshmem 2.0 device in INTx mode with the
/// link side [`host_link`]`(ns, tap)`: started, its platform line and link
/// up; the guest placed BAR0 at the cell's [`BAR0`].
pub fn start_linked<R: Rig<Device = ()>>(ns: &str, tap: &str) -> LinkedCell<R> {
    let started = Instant::now();
    let rig = LinkedCell::<R>::start(host_link(ns, tap), (), "platform: jailhouse arm64");
    eprintln!("cell linked after {:?}", started.elapsed());
    let serial = rig.cell.serial();
    assert!(
        bar_ranges(&serial).first() == Some(&BAR0),
        "BAR0 is not at {BAR0:#x?}:\n{serial}"
    );
    rig
}
