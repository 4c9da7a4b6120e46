//! The aarch64 guest as a Jailhouse arm64 cell under a minimal EL2 that
//! traps the cell's MMIO as Jailhouse does: the one thing the EL1 rig
//! (tests/jailhouse_arm64_cell.rs) cannot see is whether each MMIO access
//! has a valid syndrome (ESR_EL2.ISV = 1). Under Jailhouse, every access to
//! the GIC distributor and redistributor, the virtual PCI host's ECAM and
//! the ivshmem BAR0 (and here also the PL011) is a stage-2 data abort that
//! `arch_handle_dabt` emulates from the syndrome; an access without one
//! (`ldp`/`stp`, pre/post-index writeback, a SIMD/FP register, cache
//! maintenance by VA) is "Unhandled data read/write" and FATAL for the cell
//! (shared/reference/jailhouse-arm64-cell.md §2.4, §5, §6.3).
//!
//! The rig: `qemu-system-aarch64 -M virt,gic-version=3,its=off,
//! virtualization=on -cpu cortex-a57 -m 2G -smp 1`, TCG; the CPU starts at
//! EL2 in `tests/jailhouse-rig/jh-el2-arm64.s` (assembled here), which
//! turns stage 2 on with tables the test writes into the RAM file before
//! the CPU runs, then does what the EL1 rig's firmware does (it includes
//! jh-reset-arm64.s) and enters the image at EL1 with Jailhouse's reset
//! state. Stage 2 maps only what Jailhouse maps for this cell
//! (configs/jailhouse/arm64/ivnet-inmate-qemu-arm64.c), as Normal
//! write-back memory: the 2 MiB of RAM at 0x40000000, the comm region page
//! at 0x80000000, and the ivshmem-net sections at 0x7fb00000 (state table
//! and the peer's output section read-only, the cell's own output section
//! read-write; which one is the cell's follows the ID the server gives the
//! device, 0 in the rig, where the cell config says 1). Everything else traps to the stub, which emulates a data
//! abort with ISV = 1 inside one of the cell's MMIO regions (PL011 page,
//! GICD, CPU 0's redistributor frames, ECAM bus 0 at most 4 bytes wide, the
//! ivshmem BAR0 at 0x10000000) with the syndrome's size, direction,
//! register and extension, counting each region's accesses; anything else
//! is fatal: a record in the stub's page (reason, ESR, FAR, HPFAR, ELR,
//! SPSR, IPA), cell_state FAILED, a "FATAL: …" console line, the CPU
//! parked.
//!
//! What this proves: every MMIO access the guest makes on its Jailhouse
//! path, through boot, the link with ping (up to 16000-byte payloads), UDP
//! and TCP echo, the comm-region messages, a shutdown and a second start,
//! has a valid syndrome, hits only the cell's MMIO regions and pages, and
//! never writes a read-only shared-memory section (stage 2 makes that a
//! permission fault); the guest takes no HVC, SMC, trapped system register
//! (ACTLR_EL1 through HCR_EL2.TAC) or instruction abort to EL2; and it
//! works when its device accesses are emulated one instruction at a time
//! (the value of a read is what the syndrome's register receives). The
//! negative tests prove the stub tells them apart: a plain `ldr`/`str`
//! (sign-extending, 8 to 64 bits, XZR) is emulated with the right values,
//! an `ldp` or a post-indexed `ldr` on a trapped page, an 8-byte ECAM read,
//! an access outside the cell's regions and an `hvc` are fatal.
//!
//! What it still cannot: caches and memory attributes (TCG has none; stage
//! 2 here is Normal WB like Jailhouse's, but nothing checks coherency);
//! Jailhouse's own emulation details (the GIC's masking of other
//! interrupts' bits and the redistributor/distributor register rules are
//! the EL1 rig's trace checker's; here the real device answers every
//! emulated access); the virtual GIC interface (IRQs stay with EL1 and the
//! physical CPU interface: HCR_EL2.IMO clear, so ICC_SGI0R/ASGI1R writes
//! do not trap here); cache maintenance by VA on a trapped page (hangs the
//! CPU in Jailhouse's EL2; QEMU reports it as ISV = 0 here, so it fails as
//! reason 1); a second CPU.
//!
//! `IVNET_GUEST_AARCH64_IMAGE` runs a ready image instead of building the
//! worktree's.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use ivnet_e2e::jailhouse::{
    self, GUEST_IP, LINK_TIMEOUT, LinkedCell, Rig, SharedRam, comm, rig_dir,
};
use ivnet_e2e::jailhouse_arm64::{
    self as arm64, BAR0, CELL_RAM, COMM_REGION, ECAM, GICD, GICR_CPU0, IMAGE_ADDRESS, Machine,
    PL011, SHMEM_BASE,
};
use ivnet_e2e::netns;
use ivnet_e2e::qemu::QemuProcess;

mod guest_common;

const TAP: &str = "ivje0";

// The cell as the stub sees it (the layout is ivnet_e2e::jailhouse_arm64's,
// as in the EL1 rig).
/// The cell's ECAM: bus 0 only (1 MiB).
const ECAM_BUS0: (u64, u64) = (ECAM, ECAM + (1 << 20));
/// JAILHOUSE_SHMEM_NET_REGIONS(0x7fb00000, id): the state table
/// (read-only), then one output section per peer, read-write only for the
/// cell's own ID. The cell config makes the cell peer 1; in the rig the ID
/// is the one `ivshmem-server` gives QEMU's device (its first client: 0).
const SHMEM_STATE_TABLE: u64 = 0x1000;
const SHMEM_OUTPUT_SECTION: u64 = 0x7f000;
const SHMEM_PEERS: u64 = 2;

// The stub's page (jh-el2-arm64.s) and its stage-2 tables.
const STUB: u64 = 0xbfe0_0000;
const STUB_AREA: (u64, u64) = (STUB, STUB + 0x7000);
const STUB_MAGIC: u64 = u64::from_le_bytes(*b"EL2STUB\0");
const STUB_REGIONS: u64 = STUB + 0x100;
const STAGE2_L1: u64 = STUB + 0x2000;
/// The cell's MMIO regions the stub emulates: (name, range, largest access).
const MMIO_REGIONS: [(&str, (u64, u64), u64); 5] = [
    ("PL011", PL011, 4),
    ("GICD", GICD, 8),
    ("GICR", GICR_CPU0, 8),
    ("ECAM", ECAM_BUS0, 4),
    ("BAR0", BAR0, 4),
];
/// The stub's reasons for a fatal trap.
const NO_SYNDROME: u64 = 1;
const UNHANDLED_ACCESS: u64 = 2;
const UNHANDLED_TRAP: u64 = 3;

// ---------------------------------------------------------------------------
// Building the rig's parts.

/// A small test image from assembly `text` (entered at 0x40080000).
fn test_image(name: &str, text: &str) -> Vec<u8> {
    let dir = rig_dir();
    fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.s"));
    fs::write(&src, format!("\t.text\n{text}\n\t.ltorg\n")).unwrap();
    let bin = arm64::assemble(&src, &dir, name).unwrap_or_else(|e| panic!("{e}"));
    fs::read(bin).unwrap()
}

/// Stage-2 descriptor bits: Normal Outer+Inner WB (MemAttr 0b1111), inner
/// shareable, access flag; S2AP read-only or read-write.
const S2_NORMAL: u64 = 0xf << 2 | 3 << 8 | 1 << 10;
const S2_RO: u64 = 1 << 6;
const S2_RW: u64 = 3 << 6;
const S2_TABLE: u64 = 3;
const S2_PAGE: u64 = 3;
const S2_BLOCK: u64 = 1;

/// Writes the stub's page: the regions it emulates and the stage-2 tables
/// that map exactly the cell's memory (level 1 at STUB + 0x2000, 1 GiB
/// entries; level 2 for 0x40000000 and 0x80000000; level 3 for the 2 MiB
/// holding the shared memory and for the comm page). `shmem_id`: the
/// cell's ivshmem ID if it has the device (its shared memory is mapped).
fn write_stub_page(ram: &SharedRam, shmem_id: Option<u64>) {
    ram.zero(STUB_AREA.0, (STUB_AREA.1 - STUB_AREA.0) as usize);
    let mut regions = Vec::new();
    for (_, (start, end), largest) in MMIO_REGIONS {
        for v in [start, end, largest, 0] {
            regions.extend_from_slice(&v.to_le_bytes());
        }
    }
    ram.load(STUB_REGIONS, &regions);

    let (l2_low, l2_high) = (STUB + 0x3000, STUB + 0x4000);
    let (l3_shmem, l3_comm) = (STUB + 0x5000, STUB + 0x6000);
    let entry =
        |table: u64, index: u64, desc: u64| ram.load(table + 8 * index, &desc.to_le_bytes());
    entry(STAGE2_L1, 1, l2_low | S2_TABLE);
    entry(STAGE2_L1, 2, l2_high | S2_TABLE);
    // The cell's RAM: one 2 MiB block.
    entry(l2_low, 0, CELL_RAM.0 | S2_NORMAL | S2_RW | S2_BLOCK);
    // Shared memory: pages of the 2 MiB at 0x7fa00000.
    if let Some(id) = shmem_id {
        let shmem_2m = SHMEM_BASE & !0x1f_ffff;
        entry(l2_low, (shmem_2m - 0x4000_0000) >> 21, l3_shmem | S2_TABLE);
        let output = |peer: u64| SHMEM_BASE + SHMEM_STATE_TABLE + peer * SHMEM_OUTPUT_SECTION;
        let mut sections = vec![(SHMEM_BASE, SHMEM_BASE + SHMEM_STATE_TABLE, false)];
        sections.extend((0..SHMEM_PEERS).map(|p| (output(p), output(p + 1), p == id)));
        for (start, end, writable) in sections {
            let ap = if writable { S2_RW } else { S2_RO };
            for page in (start..end).step_by(0x1000) {
                entry(
                    l3_shmem,
                    (page - shmem_2m) >> 12,
                    page | S2_NORMAL | ap | S2_PAGE,
                );
            }
        }
    }
    // The comm region page.
    entry(l2_high, 0, l3_comm | S2_TABLE);
    entry(l3_comm, 0, COMM_REGION | S2_NORMAL | S2_RW | S2_PAGE);
}

/// What the stub's page says after (or while) the cell runs.
#[derive(Debug)]
struct StubRecord {
    /// The stub entered the cell.
    entered: bool,
    emulated: u64,
    fatal: u64,
    reason: u64,
    esr: u64,
    far: u64,
    hpfar: u64,
    elr: u64,
    spsr: u64,
    ipa: u64,
    /// Accesses emulated per region of [`MMIO_REGIONS`].
    counts: Vec<(&'static str, u64)>,
}

fn read_u64(ram: &SharedRam, addr: u64) -> u64 {
    u64::from(ram.read_u32(addr)) | u64::from(ram.read_u32(addr + 4)) << 32
}

impl StubRecord {
    fn read(ram: &SharedRam) -> StubRecord {
        let at = |off: u64| read_u64(ram, STUB + off);
        StubRecord {
            entered: at(0) == STUB_MAGIC,
            emulated: at(0x08),
            fatal: at(0x10),
            reason: at(0x18),
            esr: at(0x20),
            far: at(0x28),
            hpfar: at(0x30),
            elr: at(0x38),
            spsr: at(0x40),
            ipa: at(0x48),
            counts: MMIO_REGIONS
                .iter()
                .enumerate()
                .map(|(i, (name, ..))| (*name, read_u64(ram, STUB_REGIONS + 32 * i as u64 + 24)))
                .collect(),
        }
    }

    fn count(&self, name: &str) -> u64 {
        self.counts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c)
    }
}

/// QEMU with the stub as firmware (tests/jailhouse-rig/jh-el2-arm64.s,
/// the CPU starting at EL2; QEMU logs guest errors), `image` at
/// 0x40080000, the command line (if any) at 0x40081000 and the comm region
/// `comm`, on the ivshmem 2.0 device on `link` if given; before the CPU
/// runs, the stub's page with the stage-2 tables for the device's ID.
fn start_el2(
    image: &[u8],
    link: Option<&Path>,
    cmdline: Option<&str>,
    comm: &[u8],
) -> (QemuProcess, SharedRam) {
    let firmware = arm64::firmware("jh-el2-arm64").unwrap_or_else(|e| panic!("{e}"));
    let machine = Machine {
        firmware: &firmware,
        el2: true,
        log_args: &["-d", "guest_errors"],
        scratch: "ivnet-jhel2",
        name: "jailhouse arm64 cell at EL2",
    };
    arm64::start(&machine, link, image, cmdline, comm, |process, ram| {
        // The device's ID, as it says when it has joined the server
        // (before QMP answers): "ivshmem2: peer N of 2".
        let shmem_id = link.map(|_| {
            let stderr = process.qemu_stderr();
            stderr
                .split("ivshmem2: peer ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                .filter(|&id| id < SHMEM_PEERS)
                .unwrap_or_else(|| panic!("no ivshmem2 peer ID from QEMU:\n{stderr}"))
        });
        write_stub_page(ram, shmem_id);
    })
}

// ---------------------------------------------------------------------------
// The rig.

/// The arm64 rig with the EL2 stub.
struct VirtArm64El2;

impl Rig for VirtArm64El2 {
    type Device = ();
    const COMM_REGION: u64 = COMM_REGION;

    fn start(link: Option<(&Path, ())>, cmdline: &str, comm: &[u8]) -> (QemuProcess, SharedRam) {
        let image = arm64::cell_image();
        start_el2(&image, link.map(|(s, ())| s), Some(cmdline), comm)
    }

    fn comm_region_page() -> Vec<u8> {
        arm64::comm_region_page()
    }

    /// A fatal trap the stub recorded (an access without a syndrome, one
    /// outside the cell's MMIO, any other trap), a stub that never entered
    /// the cell, RAM written outside the cell, the comm page and the stub's
    /// page, and what QEMU reports: a guest error, a write into a
    /// read-only ivshmem section, a BAR0 access that is not 32 bits.
    fn violations(cell: &jailhouse::Cell<Self>) -> Vec<String> {
        let mut bad = Vec::new();
        let record = StubRecord::read(&cell.ram);
        if !record.entered {
            bad.push("the EL2 stub never entered the cell".into());
        }
        if record.fatal != 0 {
            bad.push(format!("a fatal trap to EL2: {record:#x?}"));
        }
        bad.extend(arm64::shared_findings(
            &cell.ram,
            &cell.process.qemu_stderr(),
            &[STUB_AREA],
        ));
        for l in cell.qemu_log().lines().filter(|l| !l.is_empty()) {
            bad.push(format!("QEMU reports a guest error: {l}"));
        }
        bad
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// The EL1 rig's link scenario under the stub: boot, link, ping (5 idle
/// pings woken by INTx, 2 of 16000 bytes), UDP echo, 16 MiB TCP echo, the
/// comm-region messages, SHUTDOWN_REQUEST and a second start; every MMIO
/// access of the guest is emulated from its syndrome, none is fatal, and
/// each of the cell's MMIO regions is accessed.
#[test]
fn every_mmio_access_of_the_guest_has_a_syndrome() {
    if ivnet_e2e::ivshmem2::qemu_binary_aarch64_or_skip(
        "every_mmio_access_of_the_guest_has_a_syndrome",
    )
    .is_none()
    {
        return;
    }
    let _serial = netns::serial();
    let started = Instant::now();
    let mut rig = arm64::start_linked::<VirtArm64El2>("jhel2", TAP);
    let stats = |rig: &LinkedCell<VirtArm64El2>| {
        guest_common::guest_stats(rig.host.ns.name(), GUEST_IP, &|| rig.logs())
    };
    let before = guest_common::stat(&stats(&rig), "interrupts");
    rig.ping(5, None);
    let woken = guest_common::stat(&stats(&rig), "interrupts") - before;
    assert!(woken >= 5, "5 idle pings woke the guest {woken} times");
    rig.ping(2, Some(16000));
    rig.udp_echo();
    rig.tcp_echo(16 << 20);

    let record = StubRecord::read(&rig.cell.ram);
    eprintln!(
        "accesses emulated: {} ({})",
        record.emulated,
        record
            .counts
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(record.entered && record.fatal == 0, "{record:#x?}");
    for (name, count) in &record.counts {
        assert!(*count > 0, "no {name} access emulated: {record:#x?}");
    }
    assert_eq!(
        record.emulated,
        record.counts.iter().map(|(_, c)| c).sum::<u64>(),
        "{record:#x?}"
    );

    rig.messages_shutdown_and_restart();
    eprintln!("test done after {:?}", started.elapsed());
}

/// A self-test that passes ends the cell with SHUT_DOWN, one that panics
/// with FAILED, under the stub as under the EL1 rig, and no access on the
/// way is fatal.
#[test]
fn exits_set_the_cell_state_under_el2() {
    jailhouse::exits_set_the_cell_state::<VirtArm64El2>();
}

/// A small image under the stub, with the comm region, until cell_state
/// leaves RUNNING: its console, the record, the RAM.
fn run_test_image(name: &str, text: &str) -> (QemuProcess, SharedRam, String, StubRecord) {
    let image = test_image(name, text);
    let (mut process, ram) = start_el2(&image, None, None, &arm64::comm_region_page());
    let ok = netns::wait_until(LINK_TIMEOUT, Duration::from_millis(10), || {
        ram.read_u32(COMM_REGION + comm::CELL_STATE) != comm::CELL_RUNNING
            || process.exit().is_some()
    });
    assert!(
        ok.is_ok() && process.exit().is_none(),
        "{name}: cell_state stayed RUNNING or QEMU exited\n{}\n{}",
        process.serial(),
        process.qemu_stderr()
    );
    // The console line is complete once the stub parks (the state is
    // written first): wait for its end.
    let state = ram.read_u32(COMM_REGION + comm::CELL_STATE);
    let serial = if state == comm::CELL_FAILED {
        let ok = netns::wait_until(LINK_TIMEOUT, Duration::from_millis(10), || {
            process.serial_lines().contains(" elr 0x")
        });
        assert!(ok.is_ok(), "{name}: no FATAL line\n{}", process.serial());
        process.serial_lines()
    } else {
        process.serial()
    };
    let record = StubRecord::read(&ram);
    (process, ram, serial, record)
}

/// Single-register loads and stores on trapped pages are emulated with the
/// syndrome's size, register, sign extension and width: ECAM reads of 4
/// and 2 bytes, sign-extending byte loads into an X and a W register from
/// the PL011's ID registers, a 64-bit GICR_TYPER read, a load into WZR,
/// stores of WZR and of a W register (console output); the image stores
/// what it read in its RAM and ends the cell as SHUT_DOWN.
#[test]
fn stub_emulates_single_register_accesses() {
    let _serial = netns::serial();
    let text = "
	ldr	x0, =0x09000000
	ldr	x1, =0x4010000000
	ldr	x9, =0x40001000
	ldr	x10, =0x080a0000
	mov	x30, #0x77
	ldr	w2, [x1]
	str	x2, [x9, #0]
	ldrh	w3, [x1, #2]
	str	x3, [x9, #8]
	ldrsb	x4, [x0, #0xff4]
	str	x4, [x9, #16]
	ldrsb	w5, [x0, #0xffc]
	str	x5, [x9, #24]
	ldr	x6, [x10, #8]
	str	x6, [x9, #32]
	ldr	wzr, [x0, #0x18]
	str	x30, [x9, #40]
	str	wzr, [x0, #0x38]
	mov	w7, #0x4f
	str	w7, [x0]
	mov	w7, #0x4b
	str	w7, [x0]
	mov	w7, #0x0a
	str	w7, [x0]
	ldr	x8, =0x80000008
	mov	w7, #2
	str	w7, [x8]
1:	wfi
	b	1b";
    let (_process, ram, serial, record) = run_test_image("el2-single", text);
    assert!(
        record.entered && record.fatal == 0,
        "{record:#x?}\n{serial}"
    );
    assert_eq!(
        ram.read_u32(COMM_REGION + comm::CELL_STATE),
        comm::CELL_SHUT_DOWN
    );
    assert!(serial.contains("OK\n"), "{serial:?}");
    let got = |i: u64| read_u64(&ram, 0x4000_1000 + 8 * i);
    // 00:00.0 of virt's gpex: Red Hat 0x1b36, device 0x0008.
    assert_eq!(got(0), 0x0008_1b36, "ECAM ldr w");
    assert_eq!(got(1), 0x0008, "ECAM ldrh");
    // PL011 PCellID1 = 0xf0, PCellID3 = 0xb1.
    assert_eq!(got(2), 0xffff_ffff_ffff_fff0, "ldrsb x");
    assert_eq!(got(3), 0xffff_ffb1, "ldrsb w");
    // GICR_TYPER: Last (bit 4) of the only CPU, affinity 0.
    assert_eq!(got(4) & (1 << 4 | 0xffff_ffff << 32), 1 << 4, "ldr x");
    assert_eq!(got(5), 0x77, "a load into WZR changed x30");
    assert_eq!(
        (
            record.count("ECAM"),
            record.count("PL011"),
            record.count("GICR")
        ),
        (2, 7, 1),
        "{record:#x?}"
    );
    assert_eq!(record.emulated, 10);
}

/// Every kind of access Jailhouse cannot emulate is fatal under the stub,
/// reported with its reason, address and instruction (at image + 4).
#[test]
fn stub_reports_accesses_jailhouse_cannot_emulate() {
    let _serial = netns::serial();
    let cases: [(&str, &str, u64, Option<u64>, &str); 6] = [
        (
            "el2-ldp",
            "ldr x0, =0x09000000\n\tldp w1, w2, [x0]",
            NO_SYNDROME,
            Some(PL011.0),
            "data abort without syndrome",
        ),
        (
            "el2-post-index",
            "ldr x0, =0x10000000\n\tldr w1, [x0], #4",
            NO_SYNDROME,
            Some(BAR0.0),
            "data abort without syndrome",
        ),
        (
            "el2-simd",
            "ldr x0, =0x08000000\n\tldr s1, [x0]",
            NO_SYNDROME,
            Some(GICD.0),
            "data abort without syndrome",
        ),
        (
            "el2-ecam-8",
            "ldr x0, =0x4010000000\n\tldr x1, [x0]",
            UNHANDLED_ACCESS,
            Some(ECAM),
            "unhandled data access",
        ),
        (
            "el2-fw-cfg",
            "ldr x0, =0x09020008\n\tldr w1, [x0]",
            UNHANDLED_ACCESS,
            Some(0x0902_0008),
            "unhandled data access",
        ),
        (
            "el2-hvc",
            "ldr x0, =0\n\thvc #0",
            UNHANDLED_TRAP,
            None,
            "unhandled trap",
        ),
    ];
    for (name, insns, reason, ipa, says) in cases {
        let text = format!("\t{insns}\n1:\twfi\n\tb\t1b");
        let (_process, _ram, serial, record) = run_test_image(name, &text);
        let what = format!("{name}: {record:#x?}\n{serial}");
        assert_eq!(record.fatal, 1, "{what}");
        assert_eq!(record.reason, reason, "{what}");
        assert!(serial.contains(&format!("FATAL: {says}")), "{what}");
        match ipa {
            Some(ipa) => {
                assert_eq!(record.esr >> 26, 0x24, "{what}");
                assert_eq!(record.ipa, ipa, "{what}");
                // The fault is on the instruction after the literal load.
                assert_eq!(record.elr, IMAGE_ADDRESS + 4, "{what}");
            }
            // HVC: ELR is the return address, past the hvc.
            None => {
                assert_eq!(record.esr >> 26, 0x16, "{what}");
                assert_eq!(record.elr, IMAGE_ADDRESS + 8, "{what}");
            }
        }
        assert_eq!(record.emulated, 0, "{what}");
        // Taken from EL1h; for a data abort, HPFAR and FAR name the IPA.
        assert_eq!(record.spsr & 0xf, 0x5, "{what}");
        if let Some(ipa) = ipa {
            assert_eq!(record.hpfar >> 4 << 12, ipa & !0xfff, "{what}");
            assert_eq!(record.far & 0xfff, ipa & 0xfff, "{what}");
        }
    }
}
