//! The two-VM scenario shared by `uio_two_vms` and `vfio_two_vms`: the
//! bare-metal guest (VM1) and the Linux test guest (VM2, `ivnet-bridge` on
//! a UIO driver or on vfio-pci) on one ivshmem-server link, and the checks
//! of VM2's console reports (`tests/linux-vm/init`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::linuxvm::{IvshmemDevice, LinuxVm, LinuxVmConfig, tagged_lines};
use crate::netns::Server;
use crate::qemu::{BOOT_TIMEOUT, Guest, GuestConfig};

pub const VM1_ADDR: &str = "10.77.0.2";
pub const VM2_CIDR: &str = "10.77.0.1/24";
pub const TCP_BYTES: u64 = 4 << 20;
/// From VM2's start to the end of its first traffic phase (TCG boot,
/// module load, link-up, ping/UDP/TCP).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// Carrier changes after VM1 is killed or started.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(180);
/// The UIO core selects map N by mmap offset N pages.
pub const UIO_MAP_PAGE: u64 = 4096;

/// How the Linux guest's bridge reaches the ivshmem-doorbell device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxDriver {
    /// `uio_ivshmem_doorbell`, `--uio /dev/uio0` (`ivnet_test=two-vm`).
    Uio,
    /// Stock `vfio-pci` behind the VM's virtual IOMMU, `--vfio BDF`
    /// (`ivnet_test=two-vm-vfio`).
    Vfio,
    /// `--vfio BDF` on the ivshmem 2.0 device (`tests/qemu-ivshmem2`, the
    /// Jailhouse profile) in both VMs: registers through vfio-pci, the
    /// shared memory through `/dev/mem` at the vendor capability's base.
    VfioIvshmem2,
}

/// Where the Linux VM's ivshmem 2.0 device puts the shared memory: above
/// its 512 MiB of RAM (which ends at the device's default base,
/// 0x20000000), below q35's 32-bit PCI window (2 GiB).
pub const LINUX_VM_IVSHMEM2_BASE: u64 = 0x4000_0000;

impl LinuxDriver {
    fn name(&self) -> &'static str {
        match self {
            LinuxDriver::Uio => "uio",
            LinuxDriver::Vfio => "vfio",
            LinuxDriver::VfioIvshmem2 => "vfio-ivshmem2",
        }
    }

    fn init_mode(&self) -> &'static str {
        match self {
            LinuxDriver::Uio => "two-vm",
            LinuxDriver::Vfio | LinuxDriver::VfioIvshmem2 => "two-vm-vfio",
        }
    }

    /// The init script's mode that kills and restarts the bridge.
    fn bridge_restart_mode(&self) -> &'static str {
        match self {
            LinuxDriver::Uio => "bridge-restart",
            LinuxDriver::Vfio | LinuxDriver::VfioIvshmem2 => "bridge-restart-vfio",
        }
    }

    /// The mmap offset of BAR2 in the bridge's `/proc/PID/maps` lines and
    /// what the mapped file is, from VM2's `IVNET-INFO` lines.
    fn bar2_offset(&self, info: &[&str], diag: &dyn Fn() -> String) -> (u64, String) {
        match self {
            LinuxDriver::Uio => {
                let index: u64 = info
                    .iter()
                    .filter_map(|l| l.strip_prefix("uio0-map map"))
                    .find(|l| l.contains("name BAR2"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no BAR2 map reported\n{}", diag()));
                (
                    index * UIO_MAP_PAGE,
                    format!("/dev/uio0 (BAR2 = map{index})"),
                )
            }
            LinuxDriver::Vfio => {
                let start = info
                    .iter()
                    .find_map(|l| l.strip_prefix("bar2-start 0x"))
                    .and_then(|a| u64::from_str_radix(a.trim(), 16).ok())
                    .unwrap_or_else(|| panic!("no BAR2 address reported\n{}", diag()));
                (
                    start,
                    format!("the vfio-pci device fd (BAR2 at {start:#x})"),
                )
            }
            LinuxDriver::VfioIvshmem2 => {
                let base = info
                    .iter()
                    .find_map(|l| l.strip_prefix("shmem-base 0x"))
                    .and_then(|a| u64::from_str_radix(a.trim(), 16).ok())
                    .unwrap_or_else(|| panic!("no shared-memory base reported\n{}", diag()));
                assert_eq!(
                    base,
                    LINUX_VM_IVSHMEM2_BASE,
                    "the vendor capability's base address\n{}",
                    diag()
                );
                (base, format!("/dev/mem (shared memory at {base:#x})"))
            }
        }
    }
}

/// The regions of the shared-memory window (BAR2) and the permissions the
/// bridge must map them with.
pub struct Regions {
    /// (name, BAR2 offset, length, expected permissions).
    list: Vec<(&'static str, u64, u64, &'static str)>,
    /// The page holding the bridge's own state-table entry.
    own_state_page: u64,
}

pub fn regions(own_id: u16) -> Regions {
    let layout = ivshmem_server::ServerConfig::new("/unused")
        .layout()
        .expect("default layout")
        .layout;
    let peer = 1 - own_id;
    let sec = layout.output_section_size;
    let own_entry = layout.state_entry_offset(own_id).expect("own entry");
    Regions {
        list: vec![
            ("layout page", 0, ivshmem::layout::LAYOUT_PAGE_SIZE, "r--s"),
            (
                "state table",
                layout.state_table_offset,
                layout.state_table_size,
                "r--s",
            ),
            (
                "peer output section",
                layout.output_section_offset(peer).expect("peer section"),
                sec,
                "r--s",
            ),
            (
                "own output section",
                layout.output_section_offset(own_id).expect("own section"),
                sec,
                "rw-s",
            ),
        ],
        own_state_page: own_entry & !0xfff,
    }
}

/// Checks the bridge's `/dev/mem` mappings of the ivshmem 2.0 shared
/// memory (offsets from the vendor capability's base; the sizes are the
/// server's, the device's capability reports them: state table at 0, the
/// R/W section after it, then one output section per peer): the state
/// table and the peer's output section only read-only, the own output
/// section mapped writable, nothing else writable. Returns the violations.
pub fn check_maps_ivshmem2(vmas: &[Vma], own_id: u16) -> Vec<String> {
    let layout = ivshmem_server::ServerConfig::new("/unused")
        .layout()
        .expect("default layout")
        .layout;
    let sec = layout.output_section_size;
    let section = |id: u16| layout.state_table_size + layout.rw_section_size + u64::from(id) * sec;
    let own = (section(own_id), sec);
    let read_only = [
        ("state table", 0, layout.state_table_size),
        ("peer output section", section(1 - own_id), sec),
    ];
    let mapped: Vec<&Vma> = vmas.iter().filter(|v| v.bar2_offset.is_some()).collect();
    let overlaps = |v: &Vma, off: u64, len: u64| {
        let o = v.bar2_offset.unwrap();
        o < off + len && off < o + (v.end - v.start)
    };
    let mut bad = Vec::new();
    for (name, off, len) in read_only {
        let views: Vec<&&Vma> = mapped.iter().filter(|v| overlaps(v, off, len)).collect();
        if views.is_empty() {
            bad.push(format!("{name} ({off:#x}+{len:#x}) is not mapped"));
        }
        for v in views.iter().filter(|v| v.perms != "r--s") {
            bad.push(format!(
                "{name} ({off:#x}+{len:#x}) is mapped {} (want r--s) at {:#x}-{:#x}",
                v.perms, v.start, v.end
            ));
        }
    }
    let own_rw = mapped.iter().any(|v| {
        let o = v.bar2_offset.unwrap();
        v.perms == "rw-s" && o <= own.0 && o + (v.end - v.start) >= own.0 + own.1
    });
    if !own_rw {
        bad.push(format!(
            "own output section ({:#x}+{:#x}) has no rw-s mapping",
            own.0, own.1
        ));
    }
    for v in mapped.iter().filter(|v| v.perms.contains('w')) {
        let o = v.bar2_offset.unwrap();
        if o < own.0 || o + (v.end - v.start) > own.0 + own.1 {
            bad.push(format!(
                "writable view {o:#x}+{:#x} ({}) outside the own output section",
                v.end - v.start,
                v.perms
            ));
        }
    }
    bad
}

/// One line of `/proc/PID/maps` for the device (`/dev/uio0`, `[vfio-device]`).
#[derive(Debug)]
pub struct Vma {
    start: u64,
    end: u64,
    perms: String,
    /// Offset into the BAR2 map (the mmap offset minus the map's index ×
    /// page size); `None` for other maps (BAR0).
    bar2_offset: Option<u64>,
}

pub fn parse_maps(lines: &[&str], bar2_base: u64) -> Vec<Vma> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
            let (s, e) = range.split_once('-')?;
            let start = u64::from_str_radix(s, 16).ok()?;
            let end = u64::from_str_radix(e, 16).ok()?;
            let offset = u64::from_str_radix(offset, 16).ok()?;
            // BAR2 starts at mmap offset `bar2_base` (UIO: map N at N
            // pages; vfio-pci: the BAR's physical address); splitting a mapping with
            // mprotect keeps the offsets contiguous. BAR0 has smaller ones.
            let bar2_offset = (offset >= bar2_base).then(|| offset - bar2_base);
            Some(Vma {
                start,
                end,
                perms: perms.to_owned(),
                bar2_offset,
            })
        })
        .collect()
}

/// Checks the bridge's mappings of BAR2 against [`regions`]; returns the
/// violations.
pub fn check_maps(vmas: &[Vma], regions: &Regions, bar2_len: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let bar2: Vec<&Vma> = vmas.iter().filter(|v| v.bar2_offset.is_some()).collect();
    // Mappings: runs of VMAs adjacent in memory and in BAR2 offset (one
    // mmap split by mprotect).
    let mut windows: Vec<Vec<&Vma>> = Vec::new();
    for v in &bar2 {
        match windows.last_mut() {
            Some(run)
                if run.last().is_some_and(|p| {
                    p.end == v.start
                        && p.bar2_offset.unwrap() + (p.end - p.start) == v.bar2_offset.unwrap()
                }) =>
            {
                run.push(v)
            }
            _ => windows.push(vec![v]),
        }
    }
    // The main window: a readable mapping of all of BAR2 (a second view
    // for the own state entry is mostly PROT_NONE).
    let is_window = |run: &Vec<&Vma>| {
        let first = run.first().unwrap();
        let last = run.last().unwrap();
        first.bar2_offset == Some(0)
            && last.bar2_offset.unwrap() + (last.end - last.start) >= bar2_len
            && run.iter().all(|v| v.perms.starts_with('r'))
    };
    let mains: Vec<&Vec<&Vma>> = windows.iter().filter(|r| is_window(r)).collect();
    if mains.is_empty() {
        return vec![format!(
            "no readable mapping covers the whole BAR2 ({bar2_len:#x} bytes)"
        )];
    }
    for main in &mains {
        for &(name, off, len, want) in &regions.list {
            let overlapping: Vec<&&Vma> = main
                .iter()
                .filter(|v| {
                    let o = v.bar2_offset.unwrap();
                    o < off + len && off < o + (v.end - v.start)
                })
                .collect();
            if overlapping.is_empty() {
                bad.push(format!("{name} ({off:#x}+{len:#x}) is not mapped"));
            }
            for v in overlapping {
                if v.perms != want {
                    bad.push(format!(
                        "{name} ({off:#x}+{len:#x}) is mapped {} (want {want}) at {:#x}-{:#x}",
                        v.perms, v.start, v.end
                    ));
                }
            }
        }
    }
    // Other views of BAR2 may only write the page of the own state entry.
    for run in windows.iter().filter(|r| !is_window(r)) {
        for v in run.iter().filter(|v| v.perms.contains('w')) {
            let o = v.bar2_offset.unwrap();
            if !(o == regions.own_state_page && v.end - v.start == 0x1000) {
                bad.push(format!(
                    "extra writable view of BAR2 {o:#x}+{:#x} ({})",
                    v.end - v.start,
                    v.perms
                ));
            }
        }
    }
    bad
}

/// The `IVNET-RESULT <phase> <check> ok|fail <details>` lines, by
/// (phase, check).
pub fn results(log: &str) -> BTreeMap<(String, String), (bool, String)> {
    tagged_lines(log, "IVNET-RESULT")
        .into_iter()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (phase, check, verdict) = (f.next()?, f.next()?, f.next()?);
            Some((
                (phase.to_owned(), check.to_owned()),
                (verdict == "ok", f.next().unwrap_or("").to_owned()),
            ))
        })
        .collect()
}

pub fn json_of(details: &str) -> serde_json::Value {
    let start = details.find('{').unwrap_or(0);
    serde_json::from_str(details[start..].trim()).unwrap_or(serde_json::Value::Null)
}

/// Checks one traffic phase; returns a summary line.
pub fn check_phase(log: &str, phase: &str, tcp_bytes: u64, diag: &dyn Fn() -> String) -> String {
    let results = results(log);
    let get = |check: &str| {
        results
            .get(&(phase.to_owned(), check.to_owned()))
            .unwrap_or_else(|| panic!("no {phase}/{check} result\n{}", diag()))
    };
    for (check, sent) in [("ping", 5), ("ping-mtu", 3)] {
        let (ok, details) = get(check);
        assert!(
            *ok && details.contains(&format!(
                "{sent} packets transmitted, {sent} packets received"
            )),
            "{phase} {check}: {details}\n{}",
            diag()
        );
    }
    let (ok, udp) = get("udp-echo");
    let udp = json_of(udp);
    assert!(
        *ok && udp["ok"] == true && udp["datagrams"] == 200 && udp["retries"] == 0,
        "{phase} UDP echo: {udp}\n{}",
        diag()
    );
    let (ok, tcp) = get("tcp-echo");
    let tcp = json_of(tcp);
    assert!(
        *ok && tcp["ok"] == true && tcp["bytes"] == tcp_bytes,
        "{phase} TCP echo: {tcp}\n{}",
        diag()
    );

    // Interrupts: the UIO event counter (VFIO: the vfio-msix interrupt
    // counts) moved during the traffic.
    let events = tagged_lines(log, "IVNET-EVENTS")
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{phase} ")))
        .unwrap_or_else(|| panic!("no {phase} event counts\n{}", diag()));
    let nums: Vec<u64> = events
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        nums.len() == 2 && nums[1] > nums[0],
        "{phase}: the interrupt counter did not grow during the traffic ({events})\n{}",
        diag()
    );

    // Per MSI-X vector (/proc/interrupts: "IRQ: count… PCI-MSI hwirq-edge
    // uio_ivshmem_doorbell" or "vfio-msix[N](BDF)", hwirq = requester ID
    // << 11 | vector; "IR-PCI-MSI" behind interrupt remapping).
    let mut per_vector = BTreeMap::new();
    for l in tagged_lines(log, "IVNET-INFO") {
        let Some(line) = l.strip_prefix("interrupts ") else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(msi) = words.iter().position(|w| w.ends_with("PCI-MSI")) else {
            continue;
        };
        let count: u64 = words[1..msi]
            .iter()
            .filter_map(|w| w.parse::<u64>().ok())
            .sum();
        let hwirq = words
            .get(msi + 1)
            .and_then(|w| w.strip_suffix("-edge"))
            .and_then(|w| w.parse::<u64>().ok());
        if let Some(h) = hwirq {
            // Later reports (this phase's) replace earlier ones.
            per_vector.insert(h & 0x7ff, count);
        }
    }
    assert!(
        per_vector.len() == 2 && per_vector.values().all(|c| *c > 0),
        "{phase}: both MSI-X vectors must have delivered interrupts: {per_vector:?}\n{}",
        diag()
    );

    // The bridge's own counters (SIGUSR1 report).
    let stats = tagged_lines(log, "IVNET-STATS")
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{phase} ")))
        .map(json_of)
        .unwrap_or(serde_json::Value::Null);
    let n = |a: &str, b: &str| stats[a][b].as_u64().unwrap_or(u64::MAX);
    assert!(
        stats["state"] == "RUN"
            && n("bridge", "doorbells_received") > 0
            && n("bridge", "doorbells_sent") > 0
            && n("ring", "rx_frames") > 0
            && n("ring", "tx_frames") > 0
            && n("ring", "peer_errors") == 0
            && n("bridge", "drop_tap_write") == 0
            && n("bridge", "drop_oversize") == 0,
        "{phase}: bridge counters: {stats}\n{}",
        diag()
    );
    format!(
        "{phase}: TCP echo {} MiB in {}s ({} Mbit/s), UDP {} datagrams, interrupts {} -> {}, per \
         vector {per_vector:?}, bridge doorbells received {} sent {} (suppressed {}), frames rx {} tx {}",
        tcp_bytes >> 20,
        tcp["secs"],
        tcp["mbit_s"],
        udp["datagrams"],
        nums[0],
        nums[1],
        n("bridge", "doorbells_received"),
        n("bridge", "doorbells_sent"),
        n("ring", "notifications_suppressed"),
        n("ring", "rx_frames"),
        n("ring", "tx_frames"),
    )
}

/// The size of the shared-memory window the server hands out (BAR2).
pub fn server_window_len() -> u64 {
    let layout = ivshmem_server::ServerConfig::new("/unused")
        .layout()
        .expect("default layout")
        .layout;
    let end = layout
        .output_section_offset(layout.max_peers - 1)
        .expect("last section")
        + layout.output_section_size;
    end.next_power_of_two()
}

/// Both VMs' diagnostics, for failure messages.
pub fn both(vm2: &LinuxVm, vm1: &Guest) -> String {
    format!("{}\n--- VM1:\n{}", vm2.diagnostics(), vm1.diagnostics())
}

/// Starts the link of `driver`'s scenario: an ivshmem-server in a fresh
/// directory, VM1 (the bare-metal guest, up to its NIC line) and VM2 (the
/// Linux guest, its init run with `append` and the addresses). The 2.0
/// device needs the QEMU built with it, in both VMs. Returns VM1's config
/// for a restart; the directory and the server must outlive the VMs.
pub fn start_vms(
    driver: &LinuxDriver,
    test: &str,
    append: &str,
) -> (tempfile::TempDir, Server, GuestConfig, Guest, LinuxVm) {
    let name = driver.name();
    let dir = tempfile::Builder::new()
        .prefix(&format!("ivnet-{name}-{test}"))
        .tempdir()
        .unwrap();
    let server = Server::start(dir.path(), &[]);
    let ivshmem2_qemu = (*driver == LinuxDriver::VfioIvshmem2)
        .then(|| crate::ivshmem2::qemu_binary().unwrap_or_else(|e| panic!("{e}")));
    let vm1_config = match &ivshmem2_qemu {
        None => GuestConfig {
            cmdline: format!("ip={VM1_ADDR}/24"),
            ivshmem_socket: Some(server.socket.clone()),
            name: format!("{name}-{test}-vm1"),
            ..GuestConfig::default()
        },
        Some(qemu) => GuestConfig {
            cmdline: format!("ip={VM1_ADDR}/24"),
            name: format!("{name}-{test}-vm1"),
            qemu: Some(qemu.clone()),
            extra_args: vec![
                "-chardev".into(),
                format!("socket,path={},id=ivs", server.socket.display()),
                "-device".into(),
                "ivshmem2,chardev=ivs".into(),
            ],
            ..GuestConfig::default()
        },
    };
    let mut vm1 = Guest::start(&vm1_config).unwrap_or_else(|e| panic!("{e}"));
    vm1.wait_for_serial("nic: ivshmem-net", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("VM1: {e}"));

    let vm2 = LinuxVm::start(&LinuxVmConfig {
        name: format!("{name}-{test}-vm2"),
        append: format!("{append} ivnet_peer={VM1_ADDR} ivnet_self={VM2_CIDR}"),
        ivshmem_socket: Some(server.socket.clone()),
        iommu: matches!(driver, LinuxDriver::Vfio | LinuxDriver::VfioIvshmem2),
        qemu: ivshmem2_qemu.clone(),
        ivshmem_device: if ivshmem2_qemu.is_some() {
            IvshmemDevice::Ivshmem2 {
                base: LINUX_VM_IVSHMEM2_BASE,
            }
        } else {
            IvshmemDevice::Doorbell
        },
        ..LinuxVmConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (dir, server, vm1_config, vm1, vm2)
}

/// The end of VM2's run (`log` up to its `IVNET-DONE` line): the init
/// script finished ok, the (last) bridge left with status 0 on SIGTERM,
/// VM2 powered off, and neither VM stored into a read-only section (the
/// 2.0 device reports that on QEMU's stderr: the state table, another
/// peer's output section).
pub fn vm2_finished_cleanly(log: &str, vm2: &mut LinuxVm, vm1: &Guest) {
    assert_eq!(
        tagged_lines(log, "IVNET-DONE"),
        ["ok"],
        "VM2 did not finish cleanly\n{}",
        both(vm2, vm1)
    );
    assert!(
        tagged_lines(log, "IVNET-INFO").contains(&"bridge-exit 0"),
        "the bridge must leave with status 0 on SIGTERM\n{}",
        both(vm2, vm1)
    );
    vm2.wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let diag = both(vm2, vm1);
    assert!(
        !diag.contains("WRITE VIOLATION"),
        "a VM wrote into a read-only section of the shared memory\n{diag}"
    );
}

/// The two-VM scenario of `uio_two_vms` and `vfio_two_vms`: VM1 the
/// bare-metal guest, VM2 the Linux guest with `ivnet-bridge` on `driver`;
/// traffic, interrupts per vector, read-only mappings, VM1 killed and
/// started again, traffic again. Panics with both consoles on failure.
pub fn two_vms_across_restart(driver: &LinuxDriver) {
    let name = driver.name();
    let started = Instant::now();
    let (_dir, _server, vm1_config, mut vm1, mut vm2) = start_vms(
        driver,
        "two-vms",
        &format!(
            "ivnet_test={} ivnet_tcp_bytes={TCP_BYTES}",
            driver.init_mode()
        ),
    );
    let vm2_started = Instant::now();
    eprintln!(
        "VM1 (bare metal) on {}, VM2 (Linux) on {}; images ready after {:.1?}",
        vm1.accel().name(),
        vm2.accel().name(),
        started.elapsed()
    );

    let phase = |vm2: &mut LinuxVm, vm1: &Guest, needle: &str, timeout| {
        vm2.wait_for_serial(needle, timeout)
            .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()))
    };
    let log = phase(&mut vm2, &vm1, "IVNET-PHASE first done", PHASE_TIMEOUT);
    let first_done = vm2_started.elapsed();
    let diag = || format!("{}\n--- VM1:\n{}", vm2.diagnostics(), vm1.diagnostics());
    let first = check_phase(&log, "first", TCP_BYTES, &diag);
    eprintln!("{first} (VM2 boot to end of phase: {first_done:.1?})");

    // The bridge's view of the device.
    let info = tagged_lines(&log, "IVNET-INFO");
    let msi_irqs = info
        .iter()
        .find_map(|l| l.strip_prefix("msi-irqs "))
        .map_or(0, |l| l.split_whitespace().count());
    assert_eq!(
        msi_irqs,
        2,
        "both MSI-X vectors must be enabled\n{}",
        diag()
    );
    let bridge_lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("bridge: "))
        .collect();
    assert!(
        !bridge_lines.iter().any(|l| l.contains("polling every")),
        "the bridge fell back to polling: doorbells must arrive as interrupts\n{}",
        diag()
    );
    let own_id: u16 = bridge_lines
        .iter()
        .find_map(|l| l.split("own peer ID ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the bridge did not log its peer ID\n{}", diag()));
    let (bar2_base, bar2_name) = driver.bar2_offset(&info, &diag);
    let bar2_len = server_window_len();
    let maps = tagged_lines(&log, "IVNET-MAPS");
    let maps: Vec<&str> = maps
        .iter()
        .filter_map(|l| l.strip_prefix("first "))
        .collect();
    let vmas = parse_maps(&maps, bar2_base);
    // Checked now, asserted at the end, so that one run reports the
    // restart as well.
    let violations = match driver {
        LinuxDriver::VfioIvshmem2 => check_maps_ivshmem2(&vmas, own_id),
        _ => check_maps(&vmas, &regions(own_id), bar2_len),
    };
    let maps_report = format!(
        "bridge (peer {own_id}) maps {bar2_name}:\n  {}",
        maps.join("\n  ")
    );
    eprintln!("{maps_report}");

    // Restart VM1 while VM2 keeps running.
    let bridge_lines_before = bridge_lines.len();
    let vm1_before = vm1.diagnostics();
    assert!(
        !vm1_before.contains("WRITE VIOLATION"),
        "VM1 wrote into a read-only section of the shared memory\n{vm1_before}"
    );
    vm1.kill();
    let killed = Instant::now();
    phase(&mut vm2, &vm1, "IVNET-LINK down", LINK_TIMEOUT);
    let down = killed.elapsed();
    let vm1 = Guest::start(&vm1_config).unwrap_or_else(|e| panic!("{e}"));
    let restarted = Instant::now();
    phase(&mut vm2, &vm1, "IVNET-PHASE restarted done", PHASE_TIMEOUT);
    let up = restarted.elapsed();
    let log = vm2
        .wait_for_serial("IVNET-DONE", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let diag = || format!("{}\n--- VM1:\n{}", vm2.diagnostics(), vm1.diagnostics());
    let again = check_phase(&log, "restarted", TCP_BYTES, &diag);
    eprintln!(
        "{again} (carrier off {down:.1?} after the kill; phase done {up:.1?} after the restart)"
    );

    // RESET, then RUN, in the bridge's log after the kill. The driver core
    // logs each step with the peer's state at that step: after a restart the
    // bridge waits in INIT and goes INIT -> RUN seeing the guest in READY
    // (its carrier-on line may not have reached the console by IVNET-DONE;
    // the traffic of the phase shows both sides in RUN).
    let after: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("bridge: "))
        .skip(bridge_lines_before)
        .collect();
    let reset = after
        .iter()
        .position(|l| l.contains("link: ") && l.contains("peer RESET"));
    let run = reset.and_then(|r| {
        after[r..]
            .iter()
            .position(|l| l.contains("link: ") && l.contains("-> RUN"))
    });
    assert!(
        reset.is_some() && run.is_some(),
        "the bridge must log the peer's RESET and then RUN after VM1's restart:\n  {}\n{}",
        after.join("\n  "),
        diag()
    );
    vm2_finished_cleanly(&log, &mut vm2, &vm1);
    assert!(
        violations.is_empty(),
        "the bridge's mappings of the shared memory are wrong:\n  {}\n{maps_report}",
        violations.join("\n  "),
    );
    eprintln!(
        "two-VM {name} test: VM2 on {}, {:.1?} in all",
        vm2.accel().name(),
        started.elapsed()
    );
}

/// TCP echo volume of the bridge-restart test (each phase).
pub const RESTART_TCP_BYTES: u64 = 1 << 20;

/// `ivnet-bridge` inside the Linux VM is killed with SIGKILL while the link
/// is up and started again, with VM2 (and its QEMU, connected to the
/// server) alive all along (`ivnet_test=bridge-restart[-vfio]`): nobody
/// writes RESET into the dead bridge's state entry — the server sees no
/// disconnect, the bridge had no chance — so on ivshmem-doorbell it still
/// says RUN (checked: VM2 reads the state table through BAR2 after the
/// kill), and VM1 keeps RUN with its carrier on. The restarted bridge must
/// publish RESET itself at start, as the reference driver does at probe:
/// VM1 then drops and renegotiates the link, and ping, UDP echo and TCP
/// echo pass again. Without that, the new bridge waits in RESET for a peer
/// that stays in RUN. Under vfio-pci the new bridge must also open the
/// group and device again and get fresh eventfds for both vectors. The
/// ivshmem 2.0 device's state is its STATE register (no BAR2 to read it
/// through): there only the relink is checked.
pub fn linux_bridge_restart(driver: &LinuxDriver) {
    let name = driver.name();
    let started = Instant::now();
    let (_dir, _server, _vm1_config, vm1, mut vm2) = start_vms(
        driver,
        "bridge-restart",
        &format!(
            "ivnet_test={} ivnet_tcp_bytes={RESTART_TCP_BYTES} ivnet_relink_timeout=60",
            driver.bridge_restart_mode()
        ),
    );

    let log = vm2
        .wait_for_serial("IVNET-PHASE first done", PHASE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()));
    let first = check_phase(&log, "first", RESTART_TCP_BYTES, &|| both(&vm2, &vm1));
    eprintln!("{first}");
    let own_id: u16 = log
        .lines()
        .filter_map(|l| l.strip_prefix("bridge: "))
        .find_map(|l| l.split("own peer ID ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the bridge did not log its peer ID\n{}", both(&vm2, &vm1)));
    let vm1_carrier_ons = vm1.serial().matches("link: carrier on").count();

    // The stale entry: after the kill, the dead bridge's entry says RUN.
    let log = vm2
        .wait_for_serial("IVNET-STATES after-kill", LINK_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()));
    let killed = Instant::now();
    let states = tagged_lines(&log, "IVNET-STATES")
        .into_iter()
        .find_map(|l| l.strip_prefix("after-kill "))
        .unwrap_or_default();
    if *driver == LinuxDriver::VfioIvshmem2 {
        assert_eq!(states, "none", "{}", both(&vm2, &vm1));
    } else {
        let states: Vec<u32> = states
            .strip_prefix("states ")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(
            states.get(usize::from(own_id)),
            Some(&3),
            "the killed bridge's entry must still say RUN (3): states {states:?}, bridge peer {own_id}\n{}",
            both(&vm2, &vm1)
        );
    }

    let log = vm2
        .wait_for_serial("IVNET-PHASE bridge-restarted done", PHASE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- VM1:\n{}", vm1.diagnostics()));
    let relinked = killed.elapsed();
    let again = check_phase(&log, "bridge-restarted", RESTART_TCP_BYTES, &|| {
        both(&vm2, &vm1)
    });
    eprintln!("{again} (phase done {relinked:.1?} after the kill was reported)");
    // VM1 went down (the new bridge's RESET) and up again, without a reboot.
    let vm1_log = vm1.serial();
    assert!(
        vm1_log.matches("link: carrier on").count() > vm1_carrier_ons
            && vm1_log.matches("booting (PVH").count() == 1,
        "VM1 must relink with the restarted bridge, without a reboot\n{}",
        both(&vm2, &vm1)
    );
    let log = vm2
        .wait_for_serial("IVNET-DONE", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm2_finished_cleanly(&log, &mut vm2, &vm1);
    eprintln!(
        "{name} bridge restart test: VM2 on {}, {:.1?} in all",
        vm2.accel().name(),
        started.elapsed()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The maps check on `/proc/PID/maps` lines as the bridge produced them
    /// (peer 1, BAR2 = map1): with the state table inside the read-write
    /// window it must object; with the state table read-only and a separate
    /// view that leaves only the own entry's page writable it must pass.
    #[test]
    fn maps_check_requires_a_read_only_state_table() {
        let state_table_writable = [
            "7f4a98374000-7f4a98375000 r--s 00001000 00:05 96 /dev/uio0",
            "7f4a98375000-7f4a98376000 rw-s 00002000 00:05 96 /dev/uio0",
            "7f4a98376000-7f4a983f5000 r--s 00003000 00:05 96 /dev/uio0",
            "7f4a983f5000-7f4a98474000 rw-s 00082000 00:05 96 /dev/uio0",
            "7f4a98474000-7f4a98475000 rw-s 00000000 00:05 96 /dev/uio0",
        ];
        let bad = check_maps(
            &parse_maps(&state_table_writable, UIO_MAP_PAGE),
            &regions(1),
            server_window_len(),
        );
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].starts_with("state table"), "{bad:?}");

        let state_view = [
            "7f20c5d22000-7f20c5d23000 ---s 00001000 00:05 96 /dev/uio0",
            "7f20c5d23000-7f20c5d24000 rw-s 00002000 00:05 96 /dev/uio0",
            "7f20c5d24000-7f20c5e22000 ---s 00003000 00:05 96 /dev/uio0",
            "7f20c5e22000-7f20c5e23000 r--s 00001000 00:05 96 /dev/uio0",
            "7f20c5e23000-7f20c5e24000 r--s 00002000 00:05 96 /dev/uio0",
            "7f20c5e24000-7f20c5ea3000 r--s 00003000 00:05 96 /dev/uio0",
            "7f20c5ea3000-7f20c5f22000 rw-s 00082000 00:05 96 /dev/uio0",
            "7f20c5f22000-7f20c5f23000 rw-s 00000000 00:05 96 /dev/uio0",
        ];
        let ok = check_maps(
            &parse_maps(&state_view, UIO_MAP_PAGE),
            &regions(1),
            server_window_len(),
        );
        assert!(ok.is_empty(), "{ok:?}");

        // A writable peer section, or a second writable view of more than the
        // own entry's page, is refused.
        let mut peer_writable = state_view;
        peer_writable[5] = "7f20c5e24000-7f20c5ea3000 rw-s 00003000 00:05 96 /dev/uio0";
        let bad = check_maps(
            &parse_maps(&peer_writable, UIO_MAP_PAGE),
            &regions(1),
            server_window_len(),
        );
        assert!(
            bad.iter().any(|b| b.starts_with("peer output section")),
            "{bad:?}"
        );
        let mut wide_view = state_view;
        wide_view[2] = "7f20c5d24000-7f20c5e22000 rw-s 00003000 00:05 96 /dev/uio0";
        let bad = check_maps(
            &parse_maps(&wide_view, UIO_MAP_PAGE),
            &regions(1),
            server_window_len(),
        );
        assert!(
            bad.iter().any(|b| b.starts_with("extra writable view")),
            "{bad:?}"
        );
    }

    /// The `/dev/mem` check of the 2.0 device on the bridge's mappings as
    /// the end-to-end run produced them (peer 1, base 0x40000000), and
    /// with the state table or the peer's section writable.
    #[test]
    fn ivshmem2_maps_check_requires_read_only_peer_memory() {
        let base = LINUX_VM_IVSHMEM2_BASE;
        let seen = [
            "7f1c02399000-7f1c02418000 rw-s 40080000 00:05 3 /dev/mem",
            "7f1c02418000-7f1c02516000 r--s 40001000 00:05 3 /dev/mem",
            "7f1c02516000-7f1c02517000 r--s 40000000 00:05 3 /dev/mem",
        ];
        let ok = check_maps_ivshmem2(&parse_maps(&seen, base), 1);
        assert!(ok.is_empty(), "{ok:?}");
        // Peer 0's view of the same mappings: its own section is not writable.
        let bad = check_maps_ivshmem2(&parse_maps(&seen, base), 0);
        assert!(bad.iter().any(|b| b.contains("no rw-s")), "{bad:?}");
        let mut state_writable = seen;
        state_writable[2] = "7f1c02516000-7f1c02517000 rw-s 40000000 00:05 3 /dev/mem";
        let bad = check_maps_ivshmem2(&parse_maps(&state_writable, base), 1);
        assert!(bad.iter().any(|b| b.starts_with("state table")), "{bad:?}");
        let mut inputs_writable = seen;
        inputs_writable[1] = "7f1c02418000-7f1c02516000 rw-s 40001000 00:05 3 /dev/mem";
        let bad = check_maps_ivshmem2(&parse_maps(&inputs_writable, base), 1);
        assert!(
            bad.iter().any(|b| b.starts_with("peer output section")),
            "{bad:?}"
        );
    }
}
