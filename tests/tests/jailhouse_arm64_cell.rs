//! The aarch64 guest as a Jailhouse arm64 cell, in a rig that reproduces
//! Jailhouse's `cell load` + `cell start` on qemu-arm64 in plain QEMU
//! (shared/reference/jailhouse-arm64-cell.md; the cell config is
//! configs/jailhouse/arm64/ivnet-inmate-qemu-arm64.c; the x86 rig is
//! tests/jailhouse_cell.rs):
//!
//! - `qemu-system-aarch64 -M virt,gic-version=3,its=off -cpu cortex-a57
//!   -m 2G -smp 1`, TCG, no EL2/EL3: the cell's CPU runs at EL1 as under the
//!   hypervisor. QEMU's own DTB at the start of RAM is cleared (a cell gets
//!   none; x0 = 0 at entry);
//! - `tests/jailhouse-rig/jh-reset-arm64.s`, assembled here, is the `-bios`:
//!   it leaves the GIC as root Linux does (distributor on with affinity
//!   routing, SPIs in group 1, CPU 0's redistributor awake), writes the
//!   trace marker, and enters 0x40080000 with the register state of
//!   Jailhouse's `arm_cpu_reset` (MMU and caches off, DAIF masked, EL1h,
//!   every GPR 0, FP on);
//! - guest RAM (0x40000000.., 2 GiB) is a shared file the test maps: QEMU
//!   waits after its reset (`-S`) while the test writes the cell's 2 MiB of
//!   RAM as `jailhouse cell load ivnet-inmate ivnet-guest-aarch64.bin -a
//!   0x40080000 -s "…" -a 0x40081000` does (the flat image at 0x40080000,
//!   the command line plus its NUL at 0x40081000) and the comm region page at
//!   0x80000000 as `cell start` fills it ("JHCOMM" rev 2, PL011 console,
//!   ECAM, GICv3 bases, `vpci_irq_base`); then it lets the CPU go, reads
//!   `cell_state` and plays the hypervisor's side of the message protocol;
//! - the ivshmem 2.0 device of `tests/qemu-ivshmem2` in INTx mode
//!   (`vectors=0`) at 00:01.0 (pin B, as in the cell config), on
//!   `ivshmem-server` with `ivnet-bridge` in a namespace on the other side.
//!   QEMU's gpex swizzles slot 1 pin B to INTID 37, so the comm region says
//!   `vpci_irq_base` = 4 (32 + 4 + 2 − 1 = 37), as Jailhouse's would name
//!   the SPI it injects.
//!
//! What Jailhouse would kill the cell for, or handle differently, and QEMU
//! lets pass fails the test (QEMU's `memory_region_ops_*` trace, `-d int`
//! and `-d guest_errors`, after the firmware's marker; see [`check_log`]):
//!
//! - MMIO outside the cell's devices: allowed are the PL011 page, the GIC
//!   distributor (reads; writes only to ISENABLER/ICENABLER/ICFGR/
//!   IPRIORITYR/IROUTER, only the cell's SPI's bits, IROUTER = the cell
//!   CPU's MPIDR affinity, other bits unchanged — Jailhouse masks them away,
//!   QEMU would apply them; a GICD_CTLR write only if it leaves the value
//!   as root set it: Jailhouse ignores it, QEMU would apply it), CPU 0's
//!   redistributor (RD and SGI frames), ECAM config reads of bus 0 of at most 4 bytes and writes only to the
//!   ivshmem function, the ivshmem BAR0 the guest placed; anything else —
//!   the GICv2 CPU interface, GICv2m or ITS frames, fw_cfg, virtio-mmio,
//!   the RTC, another function's config space, an ECAM access wider than 4
//!   bytes, a write into a read-only ivshmem section — is a finding;
//! - every exception other than an IRQ: HVC (PSCI, or a hypercall other
//!   than the debug console: fatal), SMC, an undefined instruction (e.g.
//!   `hvc #0x4a48` itself: no EL2 here), semihosting, a data or
//!   instruction abort (e.g. an access to an address nothing backs, which
//!   QEMU also reports as a guest error);
//! - guest RAM written outside the cell's 2 MiB at 0x40000000 and the comm
//!   page (the RAM file's written pages, `SEEK_DATA`).
//!
//! Frames QEMU's GICv3 `virt` does not have (GICv2 CPU interface, v2m,
//! ITS) and other unbacked addresses are no traced access at all: QEMU
//! reports them as a guest error and the guest takes a data abort, both
//! findings.
//!
//! Not observable here: whether an MMIO access has a valid syndrome (ISV:
//! an `ldp`/`stp`, a writeback addressing mode or a SIMD register on a
//! trapped page is fatal under Jailhouse, while QEMU's trace shows the
//! same bus accesses as for single `ldr`/`str`); an 8-byte ECAM access
//! (fatal under Jailhouse): QEMU splits it into two 4-byte accesses before
//! the trace (the ECAM region's largest), indistinguishable from two
//! `ldr w` (the size check fires only for regions that take 8 bytes);
//! system-register accesses Jailhouse traps (ACTLR_EL1 through HCR_EL2.TAC,
//! ICC_SGI0R/ASGI1R writes: fatal there, executed here, untraced) — instead
//! no instruction word of the image may access them at all
//! ([`trapped_sysreg_accesses`], both start paths' code); cache maintenance
//! by VA on trapped pages (hangs the CPU in EL2 there), memory attributes
//! and cacheability (TCG has no caches); reads of RAM outside the cell
//! (the 2 GiB are all RAM here); the timer's offset; a second CPU (Jailhouse
//! starts only the first).
//!
//! `IVNET_GUEST_AARCH64_IMAGE` runs a ready image instead of building the
//! worktree's.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use ivnet_e2e::aarch64::aarch64_image;
use ivnet_e2e::jailhouse::{
    self, GUEST_IP, LinkedCell, Rig, SharedRam, TraceAccess, bar_ranges, console_bdf,
};
use ivnet_e2e::jailhouse_arm64::{
    self as arm64, BAR0, CMDLINE_SIZE, COMM_REGION, ECAM, GICD, GICR_CPU0, Machine, PL011,
    VPCI_IRQ_BASE,
};
use ivnet_e2e::netns;
use ivnet_e2e::qemu::QemuProcess;

mod guest_common;

const TAP: &str = "ivja0";

// The cell's devices as the checker sees them (the layout is
// ivnet_e2e::jailhouse_arm64's).
/// Frames a GICv3 cell without ITS has none of: virt's GICv2 CPU interface
/// and GICv2m (gic-version=2 machines), the ITS.
const NOT_IN_A_GICV3_CELL: [(u64, u64, &str); 3] = [
    (0x0801_0000, 0x0802_0000, "the GICv2 CPU interface"),
    (0x0802_0000, 0x0803_0000, "GICv2m"),
    (0x0808_0000, 0x080a_0000, "the ITS"),
];
/// QEMU's name of the ECAM region (traced with the offset in the window).
const ECAM_REGION: &str = "pcie-mmcfg-mmio";
/// The ivshmem function, 00:01.0 as in the cell config.
const IVSHMEM_BDF: u32 = 1 << 3;
/// gpex: INTID 32 + 3 + (slot + pin) % 4 with pin B = 1: 37.
const IVSHMEM_INTID: u32 = 37;
/// The cell CPU's MPIDR affinity (QEMU's CPU 0), the only IROUTER value.
const CPU0_AFFINITY: u64 = 0;

// ---------------------------------------------------------------------------
// One cell.

/// The arm64 rig: `virt` with the rig's firmware as a Jailhouse arm64
/// cell.
struct VirtArm64;

/// QEMU as the rig's cell.
type Cell = jailhouse::Cell<VirtArm64>;

impl Rig for VirtArm64 {
    /// The ivshmem 2.0 device in INTx mode, the only one.
    type Device = ();
    const COMM_REGION: u64 = COMM_REGION;

    /// `cell load` writes the image, then the command line at its address;
    /// the firmware is tests/jailhouse-rig/jh-reset-arm64.s, QEMU traces
    /// every MMIO access and logs exceptions and guest errors.
    fn start(link: Option<(&Path, ())>, cmdline: &str, comm: &[u8]) -> (QemuProcess, SharedRam) {
        let image = arm64::cell_image();
        let firmware = arm64::firmware("jh-reset-arm64").unwrap_or_else(|e| panic!("{e}"));
        let machine = Machine {
            firmware: &firmware,
            el2: false,
            log_args: &[
                "-trace",
                "memory_region_ops_read",
                "-trace",
                "memory_region_ops_write",
                "-d",
                "int,guest_errors",
            ],
            scratch: "ivnet-jharm",
            name: "jailhouse arm64 cell",
        };
        let link = link.map(|(socket, ())| socket);
        arm64::start(&machine, link, &image, Some(cmdline), comm, |_, _| {})
    }

    fn comm_region_page() -> Vec<u8> {
        arm64::comm_region_page()
    }

    /// See the module docs.
    fn violations(cell: &Cell) -> Vec<String> {
        let serial = cell.serial();
        let rules = CellRules {
            intid: IVSHMEM_INTID,
            ivshmem_bdf: console_bdf(&serial).unwrap_or(IVSHMEM_BDF),
            bars: bar_ranges(&serial),
            affinity: CPU0_AFFINITY,
        };
        let mut bad = check_log(&cell.qemu_log(), &rules);
        bad.extend(arm64::shared_findings(
            &cell.ram,
            &cell.process.qemu_stderr(),
            &[],
        ));
        bad
    }
}

// ---------------------------------------------------------------------------
// The checker.

/// The cell's devices as the checker needs them.
struct CellRules {
    /// The cell's only SPI.
    intid: u32,
    /// The ivshmem function (bus << 8 | dev << 3 | fn).
    ivshmem_bdf: u32,
    /// Its BARs as the guest placed them.
    bars: Vec<(u64, u64)>,
    /// The cell CPU's MPIDR affinity (Aff3 in bits 39:32).
    affinity: u64,
}

/// The marker the firmware writes before it enters the image: fw_cfg's
/// selector (big-endian: 0x4a48 reads back as 0x484a).
const MARKER: &str = "name 'fwcfg.ctl'";

/// Checks QEMU's log (the `memory_region_ops_*` trace, `-d int`,
/// `-d guest_errors`) against the rules of the cell; one line per finding.
fn check_log(log: &str, rules: &CellRules) -> Vec<String> {
    let Some(marker) = log.find(MARKER) else {
        return vec!["the firmware's fw_cfg marker is missing from the log".into()];
    };
    let mut bad = Vec::new();
    // GICD bytes as QEMU holds them (for "other bits unchanged"), from every
    // access the log shows, the firmware's too; 0 is QEMU's reset value of
    // the registers checked this way.
    let mut gicd = GicdShadow::default();
    for line in log[..marker].lines() {
        if let Some(a) = TraceAccess::parse(line)
            && (GICD.0..GICD.1).contains(&a.addr)
        {
            gicd.observe(&a);
        }
    }
    let after = &log[marker..];
    for line in after.lines().skip(1) {
        if let Some(a) = TraceAccess::parse(line) {
            if a.cpu < 0 {
                continue; // a device model's access, not the guest's
            }
            if let Some(why) = access_violation(&a, rules, &gicd) {
                bad.push(format!("{why}: {line}"));
            }
            if (GICD.0..GICD.1).contains(&a.addr) {
                gicd.observe(&a);
            }
        } else if let Some(exc) = line.strip_prefix("Taking exception ") {
            if !exc.contains("[IRQ]") {
                bad.push(format!("an exception other than an IRQ: {line}"));
            }
        } else if !(line.is_empty()
            || line.starts_with("...")
            || line.starts_with("Exception return"))
        {
            bad.push(format!("QEMU reports a guest error: {line}"));
        }
    }
    bad
}

/// The GICD register bytes seen so far (offset → byte).
#[derive(Default)]
struct GicdShadow(HashMap<u64, u8>);

impl GicdShadow {
    fn observe(&mut self, a: &TraceAccess) {
        for i in 0..a.size.min(8) {
            self.0
                .insert(a.addr - GICD.0 + i, (a.value >> (8 * i)) as u8);
        }
    }

    /// The `size` bytes at GICD offset `off` as QEMU holds them.
    fn value(&self, off: u64, size: u64) -> u64 {
        (0..size.min(8)).fold(0, |v, i| {
            v | u64::from(self.0.get(&(off + i)).copied().unwrap_or(0)) << (8 * i)
        })
    }
}

fn within(a: &TraceAccess, (start, end): (u64, u64)) -> bool {
    a.addr >= start && a.end() <= end
}

/// Why Jailhouse would refuse (or, for GICD bits of other interrupts, mask
/// away) this access; `None` if the cell may make it.
fn access_violation(a: &TraceAccess, rules: &CellRules, gicd: &GicdShadow) -> Option<String> {
    if a.name == ECAM_REGION {
        let (bus, bdf) = (a.addr >> 20, (a.addr >> 12 & 0xffff) as u32);
        return if a.size > 4 {
            Some("ECAM access wider than 4 bytes".into())
        } else if bus != 0 {
            Some(format!(
                "ECAM access to bus {bus} (the cell has bus 0 only)"
            ))
        } else if a.write && bdf != rules.ivshmem_bdf {
            Some(format!(
                "config write to 00:{:02x}.{} (not the cell's device)",
                bdf >> 3 & 0x1f,
                bdf & 7
            ))
        } else {
            None
        };
    }
    if within(a, PL011) || within(a, GICR_CPU0) {
        return None;
    }
    if within(a, GICD) {
        return if a.write {
            gicd_write_violation(a.addr - GICD.0, a.size, a.value, rules, gicd)
        } else {
            None
        };
    }
    if rules.bars.iter().any(|&bar| within(a, bar)) {
        return None;
    }
    if let Some((_, _, what)) = NOT_IN_A_GICV3_CELL
        .iter()
        .find(|&&(s, e, _)| a.addr >= s && a.addr < e)
    {
        return Some(format!(
            "access to {what} (not in a GICv3 cell without ITS)"
        ));
    }
    Some("MMIO outside the cell's devices".into())
}

/// A distributor write the cell may make: to its own SPI's bits of
/// ISENABLER, ICENABLER, ICFGR, IPRIORITYR, and IROUTER = its CPU.
fn gicd_write_violation(
    off: u64,
    size: u64,
    value: u64,
    rules: &CellRules,
    gicd: &GicdShadow,
) -> Option<String> {
    let intid = u64::from(rules.intid);
    // GICD_CTLR: root owns the distributor; Jailhouse ignores the cell's
    // writes. Rewriting the value it has changes nothing here either.
    if off == 0 {
        return (size != 4 || value != gicd.value(0, 4)).then(|| {
            "GICD_CTLR write that changes it (Jailhouse ignores it: root owns the distributor)"
                .into()
        });
    }
    // Bit registers: ISENABLER (0x100), ICENABLER (0x180), 1 bit per INTID.
    if (0x100..0x200).contains(&off) {
        if size != 4 || !off.is_multiple_of(4) {
            return Some("GICD_IS/ICENABLER access that is not one aligned word".into());
        }
        let first = (off & 0x7f) / 4 * 32;
        let own = if (first..first + 32).contains(&intid) {
            1u64 << (intid - first)
        } else {
            0
        };
        return (value & !own != 0).then(|| {
            format!("GICD_IS/ICENABLER bits of INTIDs other than {intid} (Jailhouse masks them)")
        });
    }
    // Field registers: the other INTIDs' fields must stay as they are.
    let (field_bits, base) = match off {
        0x400..0x800 => (8, 0x400), // IPRIORITYR, 8 bits per INTID
        0xc00..0xd00 => (2, 0xc00), // ICFGR, 2 bits per INTID
        0x6000..0x8000 => {
            let own = 0x6000 + 8 * intid;
            let ok = match (off, size) {
                (o, 8) if o == own => value == rules.affinity,
                (o, 4) if o == own => value == rules.affinity & 0xffff_ffff,
                (o, 4) if o == own + 4 => value == rules.affinity >> 32,
                _ => false,
            };
            return (!ok).then(|| {
                format!(
                    "GICD_IROUTER write other than INTID {intid} -> affinity {:#x}",
                    rules.affinity
                )
            });
        }
        _ => return Some("GICD write to a register the cell may not write".into()),
    };
    if !matches!(size, 1 | 4) || !off.is_multiple_of(size) {
        return Some("GICD field register access that is not one aligned byte or word".into());
    }
    let own_bit = (intid * field_bits).checked_sub((off - base) * 8);
    let own_mask = match own_bit {
        Some(bit) if bit < size * 8 => ((1u64 << field_bits) - 1) << bit,
        _ => 0,
    };
    let changed = (value ^ gicd.value(off, size)) & !own_mask;
    (changed != 0).then(|| {
        format!("GICD write changing fields of INTIDs other than {intid} (Jailhouse ignores them)")
    })
}

// ---------------------------------------------------------------------------
// The tests.

/// The guest's counters line, over UDP from the link's namespace.
fn guest_stats(rig: &LinkedCell<VirtArm64>) -> String {
    guest_common::guest_stats(rig.host.ns.name(), GUEST_IP, &|| rig.logs())
}

/// The flat image started as `cell start` does links with `ivnet-bridge`
/// over the ivshmem 2.0 device in INTx mode, answers ping (up to a
/// 16000-byte payload), UDP echo and TCP echo (16 MiB, byte-exact), is woken
/// by each INTx doorbell of an idle link and counts them (and so does the
/// bridge), answers the comm region's messages, takes the link
/// down on SHUTDOWN_REQUEST before approving it, and a second start of the
/// image relinks; nothing Jailhouse would kill it for happens on the way.
#[test]
fn flat_image_runs_as_a_jailhouse_arm64_cell() {
    if ivnet_e2e::ivshmem2::qemu_binary_aarch64_or_skip("flat_image_runs_as_a_jailhouse_arm64_cell")
        .is_none()
    {
        return;
    }
    let _serial = netns::serial();
    let started = Instant::now();
    let mut rig = arm64::start_linked::<VirtArm64>("jharm", TAP);
    let serial = rig.cell.serial();
    let platform = serial
        .lines()
        .find(|l| l.contains("platform: jailhouse arm64"))
        .unwrap_or_default();
    for says in [
        "GICv3".to_string(),
        format!("ECAM {ECAM:#x} bus 0"),
        format!("vpci_irq_base {VPCI_IRQ_BASE}"),
    ] {
        assert!(platform.contains(&says), "{platform:?} lacks {says:?}");
    }
    // "ivshmem: … INTx pin B -> interrupt 37 (edge) …"
    let intid = IVSHMEM_INTID.to_string();
    assert!(
        serial.lines().any(|l| l.starts_with("ivshmem:")
            && l.contains("pin B")
            && l.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == intid)),
        "the device's pin B and INTID {IVSHMEM_INTID} are not named:\n{serial}"
    );

    // INTx wakes the guest: pings 0.2 s apart reach it asleep, and each
    // one's doorbell must be taken as an interrupt (a dropped doorbell
    // leaves the guest to its timer: no count, a long round trip).
    let before = guest_common::stat(&guest_stats(&rig), "interrupts");
    rig.ping(5, None);
    let woken = guest_common::stat(&guest_stats(&rig), "interrupts") - before;
    assert!(
        woken >= 5,
        "5 pings of an idle guest woke it by INTx {woken} times\n{}",
        rig.logs()
    );
    rig.ping(2, Some(16000));
    rig.udp_echo();
    rig.tcp_echo(16 << 20);

    // INTx doorbells, counted by the guest and by the bridge.
    let stats = guest_stats(&rig);
    let interrupts = guest_common::stat(&stats, "interrupts");
    assert!(interrupts > 0, "no INTx doorbell counted: {stats}");
    let report = netns::signal_report(rig.host.bridge());
    let n = |k: &str| report["bridge"][k].as_u64().unwrap_or(0);
    assert!(
        n("doorbells_sent") > 0 && n("doorbells_received") > 0,
        "bridge: {report}"
    );
    eprintln!(
        "doorbells: guest took {interrupts} INTx interrupts; bridge sent {}, received {}",
        n("doorbells_sent"),
        n("doorbells_received")
    );

    rig.messages_shutdown_and_restart();
    eprintln!("rig test done after {:?}", started.elapsed());
}

/// A self-test that passes ends the cell with SHUT_DOWN, one that panics
/// with FAILED; never through semihosting or PSCI (either would be an
/// exception the checker reports).
#[test]
fn exits_set_the_cell_state() {
    jailhouse::exits_set_the_cell_state::<VirtArm64>();
}

/// A `-s` string of 1024 characters fills the buffer; its NUL lands past
/// it: the guest finds no NUL within the buffer and fails the cell.
#[test]
fn command_line_without_nul_fails_the_cell() {
    let long = format!("ip=10.77.0.2/24 {}", "x".repeat(CMDLINE_SIZE - 16));
    assert_eq!(long.len(), CMDLINE_SIZE);
    jailhouse::command_line_too_long_fails_the_cell::<VirtArm64>(&long);
}

/// A `-s` string far longer than the buffer (the loader does not check)
/// runs into the bss, not the code: the guest boots, finds no NUL in the
/// buffer and fails the cell.
#[test]
fn overlong_command_line_fails_the_cell() {
    let long = format!("ip=10.77.0.2/24 {}", "x".repeat(100_000));
    jailhouse::command_line_too_long_fails_the_cell::<VirtArm64>(&long);
}

/// A comm region of another ABI revision: FAILED_COMM_REV, nothing else.
#[test]
fn wrong_comm_region_revision_fails_with_comm_rev() {
    jailhouse::wrong_comm_region_revision_fails_with_comm_rev::<VirtArm64>();
}

/// System registers whose every access traps to Jailhouse and is fatal
/// there (jailhouse-arm64-cell.md §2.4: ACTLR_EL1 through HCR_EL2.TAC,
/// ICC_SGI0R/ICC_ASGI1R writes through IMO/FMO), while QEMU executes them:
/// `(op0, op1, CRn, CRm, op2, name)`.
const TRAPPED_SYSREGS: [(u32, u32, u32, u32, u32, &str); 3] = [
    (3, 0, 1, 0, 1, "ACTLR_EL1"),
    (3, 0, 12, 11, 7, "ICC_SGI0R_EL1"),
    (3, 0, 12, 11, 6, "ICC_ASGI1R_EL1"),
];

/// The MSR/MRS instructions (register form, any Xt) in a flat image that
/// access one of [`TRAPPED_SYSREGS`]: `(offset, name)`.
fn trapped_sysreg_accesses(image: &[u8]) -> Vec<(usize, &'static str)> {
    image
        .chunks_exact(4)
        .enumerate()
        .filter_map(|(i, w)| {
            let insn = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            // 1101010100 L 1 o0 op1 CRn CRm op2 Rt; L (MRS) and Rt masked.
            TRAPPED_SYSREGS
                .iter()
                .find_map(|&(op0, op1, crn, crm, op2, name)| {
                    let enc =
                        0xd510_0000 | (op0 & 1) << 19 | op1 << 16 | crn << 12 | crm << 8 | op2 << 5;
                    (insn & 0xffdf_ffe0 == enc).then_some((i * 4, name))
                })
        })
        .collect()
}

/// Neither start path of the image touches a system register whose access
/// Jailhouse makes fatal and QEMU executes (so the trace cannot show it):
/// a scan of every instruction word of the image, both paths' code.
#[test]
fn image_accesses_no_system_register_jailhouse_traps() {
    let path = aarch64_image().unwrap_or_else(|e| panic!("{e}"));
    let image = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        image.len() > 0x1000,
        "{} is {} bytes",
        path.display(),
        image.len()
    );
    let found = trapped_sysreg_accesses(&image);
    assert!(found.is_empty(), "{found:#x?}");
    // The scan finds them: msr actlr_el1, x3; mrs x0, actlr_el1;
    // msr icc_sgi0r_el1, x1; msr icc_asgi1r_el1, x30; not msr
    // icc_sgi1r_el1, x1 (handled by Jailhouse) nor msr vbar_el1, x0.
    let words: [u32; 6] = [
        0xd518_1023,
        0xd538_1020,
        0xd518_cbe1,
        0xd518_cbde,
        0xd518_cba1,
        0xd518_c000,
    ];
    let probe: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let names: Vec<_> = trapped_sysreg_accesses(&probe)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        names,
        ["ACTLR_EL1", "ACTLR_EL1", "ICC_SGI0R_EL1", "ICC_ASGI1R_EL1"]
    );
}

/// The checker flags each kind of access Jailhouse would kill the cell for
/// (or mask away), and lets the cell's own pass.
#[test]
fn trace_checker_flags_fatal_accesses() {
    let rules = CellRules {
        intid: IVSHMEM_INTID,
        ivshmem_bdf: IVSHMEM_BDF,
        bars: vec![BAR0],
        affinity: CPU0_AFFINITY,
    };
    let w = |addr: u64, value: u64, size: u64, name: &str| {
        format!(
            "memory_region_ops_write cpu 0 mr 0x1 addr {addr:#x} value {value:#x} size {size} name '{name}'"
        )
    };
    let r = |addr: u64, value: u64, size: u64, name: &str| {
        format!(
            "memory_region_ops_read cpu 0 mr 0x1 addr {addr:#x} value {value:#x} size {size} name '{name}'"
        )
    };
    let (d, rd) = ("gicv3_dist", "gicv3_redist_region[0]");
    // The firmware's part: GICD state the checker must learn (ICFGR2 of
    // INTIDs 32-47 with another INTID's field set), then the marker.
    let head = [
        w(0x0800_0000, 0x13, 4, d),
        w(0x0800_0c08, 0x3, 4, d),
        w(0x0902_0008, 0x484a, 2, "fwcfg.ctl"),
    ]
    .join("\n");
    let ok = [
        w(0x0900_0000, 0x41, 4, "pl011"),
        r(0x0900_0018, 0x90, 4, "pl011"),
        r(0x0800_0004, 0x37a0007, 4, d),
        w(0x0800_0000, 0x13, 4, d), // GICD_CTLR unchanged
        r(0x0800_0c08, 0x3, 4, d),
        w(0x0800_0104, 1 << 5, 4, d),          // ISENABLER1: INTID 37
        w(0x0800_0184, 1 << 5, 4, d),          // ICENABLER1
        w(0x0800_0c08, 0x3 | 2 << 10, 4, d),   // ICFGR2: 37 edge, 32 kept
        w(0x0800_0425, 0xa0, 1, d),            // IPRIORITYR byte 37
        w(0x0800_0424, 0xa0 << 8, 4, d),       // IPRIORITYR word 36-39
        w(0x0800_6128, 0, 8, d),               // IROUTER37 = CPU 0
        w(0x0800_612c, 0, 4, d),               // its upper half
        r(0x080a_0008, 0, 8, rd),              // GICR_TYPER
        w(0x080b_0100, 1 << 27, 4, rd),        // GICR_ISENABLER0 (SGI frame)
        r(0x8000, 0x4106110a, 4, ECAM_REGION), // 00:01.0 ID
        r(0x10_0000 - 4, 0xffff_ffff, 4, ECAM_REGION), // bus 0 end
        w(0x8004, 0x6, 2, ECAM_REGION),        // 00:01.0 command
        w(0x1000_0008, 1, 4, "ivshmem2-regs"), // INT_CTRL
        "memory_region_ops_write cpu -1 mr 0x2 addr 0x9000000 value 0x0 size 4 name 'dma'".into(),
        "Taking exception 5 [IRQ] on CPU 0".into(),
        "...from EL1 to EL1".into(),
        "Exception return from AArch64 EL1 to AArch64 EL1 PC 0x40081234".into(),
    ];
    let log = format!("{head}\n{}\n", ok.join("\n"));
    assert_eq!(check_log(&log, &rules), Vec::<String>::new());

    let fatal = [
        r(0x0801_0000, 0, 4, "gic_cpu"),              // GICv2 CPU interface
        r(0x0802_0000, 0, 4, "gicv2m"),               // v2m frame
        w(0x0808_0040, 0, 4, "arm_gicv3_its"),        // ITS
        r(0x0901_0000, 0, 4, "pl031"),                // RTC
        w(0x0902_0008, 0, 2, "fwcfg.ctl"),            // fw_cfg
        r(0x0a00_0000, 0, 4, "virtio-mmio"),          // virtio-mmio
        w(0x0800_0000, 0, 4, d),                      // GICD_CTLR
        w(0x0800_0104, 1 << 6, 4, d),                 // ISENABLER1: INTID 38
        w(0x0800_0204, 1 << 5, 4, d),                 // ISPENDR1
        w(0x0800_0c08, 2 << 10, 4, d),                // ICFGR2 clearing INTID 32's field
        w(0x0800_0424, 0xa0a0, 4, d),                 // IPRIORITYR 36 and 37
        w(0x0800_0426, 0xa0, 1, d),                   // IPRIORITYR 38
        w(0x0800_6128, 1 << 8, 8, d),                 // IROUTER37 -> CPU 1
        w(0x0800_6130, 0, 8, d),                      // IROUTER38
        w(0x0800_0080, 0, 4, d),                      // IGROUPR0
        r(0x080c_0000, 0, 4, rd),                     // CPU 1's redistributor
        r(0x8000, 0, 8, ECAM_REGION),                 // 8-byte config read
        r(0x10_8000, 0, 4, ECAM_REGION),              // bus 1
        w(0x0004, 0x6, 2, ECAM_REGION),               // 00:00.0 command
        r(0x1000_1000, 0, 4, "ivshmem2-regs"),        // past BAR0
        w(0x7fb0_0000, 1, 4, "ivshmem2-state-table"), // read-only section
        "Taking exception 11 [Hypervisor Call] on CPU 0".into(),
        "Taking exception 13 [Secure Monitor Call] on CPU 0".into(),
        "Taking exception 1 [Undefined Instruction] on CPU 0".into(),
        "Taking exception 4 [Data Abort] on CPU 0".into(),
        "Taking exception 16 [Semihosting call] on CPU 0".into(),
        "Invalid access at addr 0x8E00000, size 4, region '(null)', reason: rejected".into(),
    ];
    let log = format!("{head}\n{}\n", fatal.join("\n"));
    let bad = check_log(&log, &rules);
    assert_eq!(bad.len(), fatal.len(), "{bad:#?}");
    for (finding, line) in bad.iter().zip(&fatal) {
        assert!(finding.ends_with(line.as_str()), "{finding} vs {line}");
    }
    assert_eq!(check_log(&ok.join("\n"), &rules).len(), 1, "no marker");
}
