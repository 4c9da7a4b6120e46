//! The ivshmem 2.0 device (`tests/qemu-ivshmem2/ivshmem2.c`) on its own,
//! register by register, against the specification (Jailhouse
//! `Documentation/ivshmem-v2-specification.md`, as the Jailhouse hypervisor
//! emulates it).
//!
//! No guest OS: QEMU runs with `-accel qtest`, and the test drives the
//! machine through the qtest protocol (port I/O for PCI configuration
//! mechanism #1, physical memory reads and writes for BAR0, BAR1 and the
//! shared memory) and reads the device's counters through QMP `qom-get`.
//! The other side of the link is a [`HostPeer`] on the same ivnet
//! ivshmem-server, or a second QEMU with `ivshmem-doorbell`.
//!
//! MSI-X is observed without an interrupt controller: the test programs a
//! vector's message address to a RAM word, so that a delivered interrupt is
//! a 32-bit store of the message data there.
//!
//! INTx (`vectors=0`) is observed on the aarch64 `virt` machine the
//! Jailhouse-style rig uses (`qemu-system-aarch64` of the same build): qtest
//! intercepts the GIC's inputs, so every level change of an SPI line is
//! reported (`IRQ raise n` / `IRQ lower n`, n = INTID − 32), and the GIC
//! distributor's pending bits show the edge latch a guest sees.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ivnet_e2e::ivshmem2::{qemu_binary_aarch64_or_skip, qemu_binary_or_skip};
use ivnet_e2e::qemu::{Accel, IvshmemServer, QemuProcess};
use ivshmem_server::{HostPeer, ServerConfig};

/// Where the tests put the device: bus 0, device 4, function 0.
const SLOT: u32 = 4;
/// Where the test places BAR0 and BAR1 (inside q35's 32-bit PCI window).
const BAR0: u64 = 0xe000_0000;
const BAR1: u64 = 0xe000_1000;
/// The device's default base address (documented in the README).
const DEFAULT_BASE: u64 = 0x2000_0000;
/// RAM words the MSI-X vectors write to (vector v at `MSI_WORD + 4 v`).
const MSI_WORD: u64 = 0x10_0000;
const MSI_DATA: u32 = 0xfeed_0000;

// BAR0 registers.
const REG_ID: u64 = 0x00;
const REG_MAX_PEERS: u64 = 0x04;
const REG_INT_CTRL: u64 = 0x08;
const REG_DOORBELL: u64 = 0x0c;
const REG_STATE: u64 = 0x10;

/// Generous: TCG and qtest on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A qtest connection (`-qtest unix:…`, QEMU connects to the test).
struct Qtest {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// PCI configuration space: mechanism #1 (port I/O, q35), or the ECAM
    /// at this address (aarch64 `virt`).
    ecam: Option<u64>,
    /// The device (bus 0, function 0) the configuration accessors address.
    slot: u32,
    /// Intercepted IRQ level changes (`IRQ raise n`), in order.
    irqs: Vec<String>,
}

impl Qtest {
    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.writer, "{line}").unwrap();
        loop {
            let mut reply = String::new();
            let n = self.reader.read_line(&mut reply).unwrap();
            assert!(n > 0, "qtest: QEMU closed the connection after `{line}`");
            // Asynchronous IRQ notifications (of intercepted lines).
            if reply.starts_with("IRQ") {
                self.irqs.push(reply.trim_end().to_string());
                continue;
            }
            let reply = reply.trim_end().to_string();
            assert!(reply.starts_with("OK"), "qtest `{line}`: {reply}");
            return reply;
        }
    }

    fn value(&mut self, line: &str) -> u64 {
        let reply = self.cmd(line);
        let hex = reply
            .strip_prefix("OK 0x")
            .unwrap_or_else(|| panic!("qtest `{line}`: {reply}"));
        u64::from_str_radix(hex, 16).unwrap()
    }

    fn readl(&mut self, addr: u64) -> u32 {
        self.value(&format!("readl {addr:#x}")) as u32
    }
    fn writel(&mut self, addr: u64, v: u32) {
        self.cmd(&format!("writel {addr:#x} {v:#x}"));
    }
    fn readb(&mut self, addr: u64) -> u8 {
        self.value(&format!("readb {addr:#x}")) as u8
    }
    fn writeb(&mut self, addr: u64, v: u8) {
        self.cmd(&format!("writeb {addr:#x} {v:#x}"));
    }
    fn readw(&mut self, addr: u64) -> u16 {
        self.value(&format!("readw {addr:#x}")) as u16
    }
    fn writew(&mut self, addr: u64, v: u16) {
        self.cmd(&format!("writew {addr:#x} {v:#x}"));
    }
    fn readq(&mut self, addr: u64) -> u64 {
        self.value(&format!("readq {addr:#x}"))
    }
    fn writeq(&mut self, addr: u64, v: u64) {
        self.cmd(&format!("writeq {addr:#x} {v:#x}"));
    }

    /// Selects `off` of the device's configuration space: the ECAM address
    /// to access, or `None` after pointing port 0xcf8 at it.
    fn cfg_select(&mut self, off: u32) -> Option<u64> {
        match self.ecam {
            Some(ecam) => Some(ecam + (u64::from(self.slot) << 15) + u64::from(off)),
            None => {
                let addr = 0x8000_0000 | (self.slot << 11) | (off & 0xfc);
                self.cmd(&format!("outl 0xcf8 {addr:#x}"));
                None
            }
        }
    }
    fn cfg_readl(&mut self, off: u32) -> u32 {
        match self.cfg_select(off) {
            Some(addr) => self.readl(addr),
            None => self.value("inl 0xcfc") as u32,
        }
    }
    fn cfg_writel(&mut self, off: u32, v: u32) {
        match self.cfg_select(off) {
            Some(addr) => self.writel(addr, v),
            None => _ = self.cmd(&format!("outl 0xcfc {v:#x}")),
        }
    }
    fn cfg_readb(&mut self, off: u32) -> u8 {
        match self.cfg_select(off) {
            Some(addr) => self.readb(addr),
            None => self.value(&format!("inb {:#x}", 0xcfc + (off & 3))) as u8,
        }
    }
    fn cfg_writeb(&mut self, off: u32, v: u8) {
        match self.cfg_select(off) {
            Some(addr) => self.writeb(addr, v),
            None => _ = self.cmd(&format!("outb {:#x} {v:#x}", 0xcfc + (off & 3))),
        }
    }
    fn cfg_writew(&mut self, off: u32, v: u16) {
        match self.cfg_select(off) {
            Some(addr) => self.writew(addr, v),
            None => _ = self.cmd(&format!("outw {:#x} {v:#x}", 0xcfc + (off & 2))),
        }
    }

    /// The IRQ level changes reported so far (a qtest round trip first:
    /// QEMU sends them before the reply to any later command).
    fn take_irqs(&mut self) -> Vec<String> {
        self.cmd("endianness");
        std::mem::take(&mut self.irqs)
    }
}

/// A QMP connection (`-chardev socket` + `-mon`, QEMU connects to the test).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn execute(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        writeln!(self.writer, "{cmd}").unwrap();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "qmp: QEMU closed the connection after {cmd}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            panic!("qmp {cmd}: {v}");
        }
    }
}

/// One QEMU (qtest accelerator) with an `ivshmem2` (or another device) on
/// an ivshmem server.
struct Machine {
    process: QemuProcess,
    qt: Qtest,
    qmp: Qmp,
    base: u64,
}

fn unique_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ivnet-ivshmem2-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Accepts QEMU's connection on `listener`, failing early if QEMU exits.
fn accept(listener: &UnixListener, process: &mut QemuProcess, what: &str) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept {what}: {e}"),
        }
        if let Some(status) = process.exit() {
            panic!(
                "QEMU exited ({status}) before connecting {what}:\n{}",
                process.qemu_stderr()
            );
        }
        assert!(Instant::now() < deadline, "QEMU did not connect {what}");
        // Polling a non-blocking accept; QEMU connects during startup.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The aarch64 machine of the Jailhouse-style rig (GICv3, no ITS: INTx only).
const VIRT: &[&str] = &[
    "-machine",
    "virt,gic-version=3,its=off",
    "-cpu",
    "cortex-a57",
];
/// `virt`'s ECAM with highmem (the default for a 64-bit CPU): 256 buses.
const VIRT_ECAM: u64 = 0x40_1000_0000;
/// `virt`'s GIC distributor, and the first SPI of its PCIe INTx lines
/// (`virt`'s gpex INTA..INTD are SPIs 3..6, swizzled by slot).
const VIRT_GICD: u64 = 0x0800_0000;
const VIRT_PCIE_FIRST_INTID: u32 = 32 + 3;
/// Where the aarch64 tests put the device (as the rig and the Jailhouse
/// cell config, 00:01.0), BAR0 (the start of `virt`'s 32-bit PCI window,
/// where the guest puts it) and the shared memory (above the tests' 256 MiB
/// of RAM at 0x40000000).
const VIRT_SLOT: u32 = 1;
const VIRT_BAR0: u64 = 0x1000_0000;
const VIRT_BASE: u64 = 0x6000_0000;

impl Machine {
    /// Starts a q35 QEMU with `device` (a `-device` argument; the chardev
    /// `ivs` is the server's socket) and `extra` arguments.
    fn start(
        qemu: &Path,
        server: &IvshmemServer,
        device: &str,
        extra: &[&str],
        base: u64,
    ) -> Machine {
        Self::start_on(
            qemu,
            &["-machine", "q35", "-m", "64M"],
            None,
            server,
            &[device],
            extra,
            base,
        )
    }

    /// Starts QEMU (qtest accelerator) on `machine` (configuration space
    /// through `ecam`, or port I/O) with `devices` on the server's chardev
    /// `ivs`; the configuration accessors address [`SLOT`].
    fn start_on(
        qemu: &Path,
        machine: &[&str],
        ecam: Option<u64>,
        server: &IvshmemServer,
        devices: &[&str],
        extra: &[&str],
        base: u64,
    ) -> Machine {
        let dir = unique_dir("qtest");
        let qt_sock = dir.join("qtest.sock");
        let qmp_sock = dir.join("qmp.sock");
        let qt_listener = UnixListener::bind(&qt_sock).unwrap();
        let qmp_listener = UnixListener::bind(&qmp_sock).unwrap();
        let mut cmd = Command::new(qemu);
        cmd.args(machine)
            .args(["-accel", "qtest"])
            .args(["-nodefaults", "-display", "none"])
            .arg("-qtest")
            .arg(format!("unix:{}", qt_sock.display()))
            .args(["-qtest-log", "/dev/null"])
            .arg("-chardev")
            .arg(format!("socket,path={},id=qmp", qmp_sock.display()))
            .args(["-mon", "chardev=qmp,mode=control"])
            .arg("-chardev")
            .arg(format!("socket,path={},id=ivs", server.socket().display()));
        for device in devices {
            cmd.arg("-device").arg(device);
        }
        cmd.args(extra);
        let mut process = QemuProcess::spawn(&mut cmd, dir, Accel::Tcg, "ivshmem2 qtest").unwrap();
        let qt = accept(&qt_listener, &mut process, "qtest");
        let qmp = accept(&qmp_listener, &mut process, "QMP");
        let mut m = Machine {
            process,
            qt: Qtest {
                reader: BufReader::new(qt.try_clone().unwrap()),
                writer: qt,
                ecam,
                slot: SLOT,
                irqs: Vec::new(),
            },
            qmp: Qmp {
                reader: BufReader::new(qmp.try_clone().unwrap()),
                writer: qmp,
            },
            base,
        };
        let mut greeting = String::new();
        m.qmp.reader.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        m.qmp
            .execute(serde_json::json!({"execute": "qmp_capabilities"}));
        m
    }

    /// QEMU with `ivshmem2` (id `dev`) at [`SLOT`] on `server`.
    fn ivshmem2(qemu: &Path, server: &IvshmemServer) -> Machine {
        Self::ivshmem2_with(qemu, server, "", &[])
    }

    fn ivshmem2_with(qemu: &Path, server: &IvshmemServer, props: &str, extra: &[&str]) -> Machine {
        let base = props
            .split(',')
            .find_map(|p| p.strip_prefix("base="))
            .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
            .unwrap_or(DEFAULT_BASE);
        Self::start(
            qemu,
            server,
            &format!("ivshmem2,chardev=ivs,id=dev,addr={SLOT:#x}.0{props}"),
            extra,
            base,
        )
    }

    /// A device counter (a QOM property of `dev`).
    fn counter(&mut self, name: &str) -> u64 {
        let v = self.qmp.execute(serde_json::json!({
            "execute": "qom-get",
            "arguments": {"path": "/machine/peripheral/dev", "property": name}
        }));
        v.as_u64().unwrap_or_else(|| panic!("{name}: {v}"))
    }

    /// Waits until counter `name` reaches `value` (events arrive through
    /// QEMU's main loop, after the qtest command that caused them).
    fn wait_counter(&mut self, name: &str, value: u64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.counter(name);
            if now >= value {
                assert_eq!(now, value, "{name} overshot");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {now}, expected {value}\n{}",
                self.process.qemu_stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Places BAR0 and BAR1 and enables memory decoding and bus mastering.
    fn enable(&mut self) {
        self.qt.cfg_writel(0x10, BAR0 as u32);
        self.qt.cfg_writel(0x14, BAR1 as u32);
        self.qt.cfg_writew(0x04, 0x0006);
    }

    fn reg(&mut self, off: u64) -> u32 {
        self.qt.readl(BAR0 + off)
    }
    fn set_reg(&mut self, off: u64, v: u32) {
        self.qt.writel(BAR0 + off, v);
    }

    /// Enables MSI-X with every vector writing `MSI_DATA | v` to its RAM
    /// word, unmasked.
    fn enable_msix(&mut self, vectors: u32) {
        for v in 0..vectors {
            let entry = BAR1 + 16 * u64::from(v);
            self.qt.writel(entry, (MSI_WORD + 4 * u64::from(v)) as u32);
            self.qt.writel(entry + 4, 0);
            self.qt.writel(entry + 8, MSI_DATA | v);
            self.qt.writel(entry + 12, 0);
            self.qt.writel(MSI_WORD + 4 * u64::from(v), 0);
        }
        // Message Control (MSI-X cap at 0x60): enable, function not masked.
        self.qt.cfg_writew(0x62, 0x8000);
    }

    fn mask_vector(&mut self, v: u32, masked: bool) {
        self.qt
            .writel(BAR1 + 16 * u64::from(v) + 12, u32::from(masked));
    }

    /// The MSI word of vector `v`, read and cleared.
    fn take_msi(&mut self, v: u32) -> u32 {
        let addr = MSI_WORD + 4 * u64::from(v);
        let got = self.qt.readl(addr);
        self.qt.writel(addr, 0);
        got
    }

    /// Waits for an interrupt on vector `v` (its RAM word written).
    fn wait_msi(&mut self, v: u32) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.take_msi(v);
            if got != 0 {
                assert_eq!(got, MSI_DATA | v, "MSI data of vector {v}");
                return;
            }
            assert!(Instant::now() < deadline, "no MSI-X on vector {v}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&self) -> String {
        self.process.qemu_stderr()
    }
}

fn host_peer(server: &IvshmemServer) -> HostPeer {
    HostPeer::connect(server.socket(), TIMEOUT).unwrap()
}

/// Volatile read of the `T` at `off` of a host peer's mapping `(ptr, len)`
/// (bounds and alignment checked).
fn shm_read<T: Copy>(section: (*const u8, usize), off: usize) -> T {
    assert!(off + size_of::<T>() <= section.1 && off.is_multiple_of(align_of::<T>()));
    // SAFETY: inside the mapping (checked above), which the HostPeer keeps
    // mapped while it lives; `off` is aligned for T.
    let p = unsafe { section.0.add(off) }.cast::<T>();
    // SAFETY: as above; shared memory is only accessed volatilely here.
    unsafe { p.read_volatile() }
}

/// Volatile write of `v` at `off` of a host peer's writable mapping.
fn shm_write<T: Copy>(section: (*mut u8, usize), off: usize, v: T) {
    assert!(off + size_of::<T>() <= section.1 && off.is_multiple_of(align_of::<T>()));
    // SAFETY: inside the read-write mapping (checked above), which the
    // HostPeer keeps mapped while it lives; `off` is aligned for T.
    let p = unsafe { section.0.add(off) }.cast::<T>();
    // SAFETY: as above.
    unsafe { p.write_volatile(v) }
}

/// The host peer learns about the VM (announced when the VM connected, i.e.
/// before QEMU finished starting).
fn learn_peers(host: &mut HostPeer) {
    host.handle_server_messages().unwrap();
}

/// Config space, dword by dword, as in the spec table and Jailhouse's
/// default config space; what is writable, and what is not; BAR sizes.
#[test]
fn config_space_is_the_specified_one() {
    let Some(qemu) = qemu_binary_or_skip("config_space_is_the_specified_one") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-cfg").unwrap();
    let mut m = Machine::ivshmem2(&qemu, &server);
    let qt = &mut m.qt;
    assert_eq!(qt.cfg_readl(0x00), 0x4106_110a, "vendor/device");
    assert_eq!(qt.cfg_readl(0x04), 0x0010_0000, "command 0, status: caps");
    assert_eq!(
        qt.cfg_readl(0x08),
        0xff00_0100,
        "class ff, protocol 0001, rev 0"
    );
    assert_eq!(qt.cfg_readb(0x0e), 0, "header type 0");
    assert_eq!(qt.cfg_readl(0x2c), 0x4106_110a, "subsystem = vendor/device");
    assert_eq!(qt.cfg_readb(0x34), 0x40, "capability pointer");
    assert_eq!(qt.cfg_readb(0x3d), 0, "interrupt pin 0 (MSI-X only)");
    // Vendor capability: ID 09, next 0x60 (MSI-X), length 0x20, PrivCtl 0.
    assert_eq!(qt.cfg_readl(0x40), 0x0020_6009);
    assert_eq!(qt.cfg_readl(0x44), 0x1000, "state table size");
    assert_eq!((qt.cfg_readl(0x48), qt.cfg_readl(0x4c)), (0, 0), "R/W size");
    assert_eq!(
        (qt.cfg_readl(0x50), qt.cfg_readl(0x54)),
        (0x7f000, 0),
        "output section size"
    );
    assert_eq!(
        (qt.cfg_readl(0x58), qt.cfg_readl(0x5c)),
        (DEFAULT_BASE as u32, 0),
        "base address"
    );
    // MSI-X: ID 11, last capability, 2 vectors; table BAR1+0, PBA BAR1+0x100.
    assert_eq!(qt.cfg_readl(0x60), 0x0001_0011);
    assert_eq!(qt.cfg_readl(0x64), 0x0000_0001);
    assert_eq!(qt.cfg_readl(0x68), 0x0000_0101);

    // BAR sizes: BAR0 and BAR1 4 KiB 32-bit memory, no BAR2..5.
    for (bar, expect) in [
        (0x10, 0xffff_f000),
        (0x14, 0xffff_f000),
        (0x18, 0),
        (0x1c, 0),
        (0x20, 0),
        (0x24, 0),
    ] {
        qt.cfg_writel(bar, 0xffff_ffff);
        assert_eq!(qt.cfg_readl(bar), expect, "BAR at {bar:#x}");
        qt.cfg_writel(bar, 0);
    }
    // Command: I/O, memory, bus master and INTx disable are writable.
    qt.cfg_writew(0x04, 0xffff);
    assert_eq!(qt.cfg_readl(0x04) & 0xffff, 0x0407);
    qt.cfg_writew(0x04, 0);
    // Privileged Control: only bit 0 (one-shot); the rest of the capability
    // is read-only.
    qt.cfg_writeb(0x43, 0xff);
    assert_eq!(qt.cfg_readb(0x43), 0x01);
    qt.cfg_writeb(0x43, 0);
    assert_eq!(qt.cfg_readb(0x43), 0x00);
    for off in [0x40, 0x44, 0x48, 0x50, 0x58, 0x5c] {
        let before = qt.cfg_readl(off);
        qt.cfg_writel(off, !before);
        let after = qt.cfg_readl(off);
        if off == 0x40 {
            // Only PrivCtl bit 0 may change.
            assert_eq!(after & !0x0100_0000, before, "vendor cap header");
            qt.cfg_writel(off, before);
        } else {
            assert_eq!(after, before, "capability dword {off:#x} is read-only");
        }
    }
    // Vendor ID, class, cap pointer: read-only.
    qt.cfg_writel(0x00, 0);
    qt.cfg_writel(0x08, 0);
    assert_eq!(qt.cfg_readl(0x00), 0x4106_110a);
    assert_eq!(qt.cfg_readl(0x08), 0xff00_0100);
}

/// Another link: a user-defined protocol, three peers, an R/W section,
/// three vectors, a non-default base address: the config space and
/// MAX_PEERS follow the server's layout.
#[test]
fn config_space_follows_the_link_layout() {
    let Some(qemu) = qemu_binary_or_skip("config_space_follows_the_link_layout") else {
        return;
    };
    let server = IvshmemServer::start_with("ivs2-cfg3", |c: &mut ServerConfig| {
        c.protocol = 0x4123;
        c.max_peers = 3;
        c.vectors = 3;
        c.rw_section_size = 0x2000;
        c.output_section_size = 0x3000;
    })
    .unwrap();
    let mut m = Machine::ivshmem2_with(&qemu, &server, ",base=0x30000000", &[]);
    assert_eq!(m.qt.cfg_readl(0x08), 0xff41_2300, "protocol 0x4123");
    assert_eq!(m.qt.cfg_readl(0x44), 0x1000);
    assert_eq!(m.qt.cfg_readl(0x48), 0x2000);
    assert_eq!(m.qt.cfg_readl(0x50), 0x3000);
    assert_eq!(m.qt.cfg_readl(0x58), 0x3000_0000);
    assert_eq!(m.qt.cfg_readl(0x60), 0x0002_0011, "3 MSI-X vectors");
    m.enable();
    assert_eq!(m.reg(REG_ID), 0);
    assert_eq!(m.reg(REG_MAX_PEERS), 3);
    // The R/W section is writable and shared: the write lands.
    let rw = m.base + 0x1000;
    m.qt.writel(rw + 0x10, 0x5555_aaaa);
    assert_eq!(m.qt.readl(rw + 0x10), 0x5555_aaaa);
    assert_eq!(m.counter("violations"), 0);
}

/// ID, MAX_PEERS, INT_CONTROL, STATE; DOORBELL reads 0; unbacked offsets
/// read 0 and ignore writes; anything but an aligned 32-bit access is
/// dropped (reads 0) and counted.
#[test]
fn registers_follow_the_spec() {
    let Some(qemu) = qemu_binary_or_skip("registers_follow_the_spec") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-regs").unwrap();
    // The host peer takes ID 0, so the VM's ID (1) is not 0.
    let mut host = host_peer(&server);
    let mut m = Machine::ivshmem2(&qemu, &server);
    learn_peers(&mut host);
    m.enable();
    assert_eq!(m.reg(REG_ID), 1);
    assert_eq!(m.reg(REG_MAX_PEERS), 2);
    assert_eq!(m.reg(REG_INT_CTRL), 0, "INT_CONTROL resets to 0");
    assert_eq!(m.reg(REG_STATE), 0, "STATE resets to 0");
    assert_eq!(m.reg(REG_DOORBELL), 0, "DOORBELL reads 0");
    // Read-only registers ignore writes.
    m.set_reg(REG_ID, 7);
    m.set_reg(REG_MAX_PEERS, 9);
    assert_eq!((m.reg(REG_ID), m.reg(REG_MAX_PEERS)), (1, 2));
    // INT_CONTROL keeps bit 0 only.
    m.set_reg(REG_INT_CTRL, 0xffff_ffff);
    assert_eq!(m.reg(REG_INT_CTRL), 1);
    m.set_reg(REG_INT_CTRL, 0);
    assert_eq!(m.reg(REG_INT_CTRL), 0);
    // STATE reads back what was written.
    m.set_reg(REG_STATE, 0x1234_5678);
    assert_eq!(m.reg(REG_STATE), 0x1234_5678);
    // Unbacked offsets: read 0, writes ignored, in the whole 4 KiB page.
    for off in [0x14, 0x100, 0xffc] {
        m.set_reg(off, 0xdead_beef);
        assert_eq!(m.reg(off), 0, "offset {off:#x}");
    }
    assert_eq!(m.counter("bad-register-accesses"), 0);

    // Not aligned 32-bit: dropped, reads 0, counted, no side effect.
    assert_eq!(m.qt.readb(BAR0 + REG_ID), 0);
    assert_eq!(m.qt.readw(BAR0 + REG_MAX_PEERS), 0);
    assert_eq!(m.qt.readq(BAR0 + REG_ID), 0);
    assert_eq!(m.qt.readl(BAR0 + REG_STATE + 1), 0);
    m.qt.writeb(BAR0 + REG_STATE, 0x42);
    m.qt.writew(BAR0 + REG_INT_CTRL, 1);
    m.qt.writeq(BAR0 + REG_STATE, 0x99);
    m.qt.writel(BAR0 + REG_STATE + 2, 0x77);
    assert_eq!(m.counter("bad-register-accesses"), 8);
    assert_eq!(m.reg(REG_STATE), 0x1234_5678);
    assert_eq!(m.reg(REG_INT_CTRL), 0);
    assert_eq!(host.peer_state(1), Some(0x1234_5678));
    assert!(
        m.stderr().contains("aligned 32-bit accesses only"),
        "{}",
        m.stderr()
    );
}

/// A STATE write lands in this peer's state-table entry (seen by the host
/// peer and through the VM's read-only window), and rings vector 0 of the
/// other peer only when the value changed.
#[test]
fn state_writes_reach_the_state_table_and_signal_only_on_change() {
    let Some(qemu) = qemu_binary_or_skip("state_writes_reach_the_state_table") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-state").unwrap();
    let mut host = host_peer(&server);
    let mut m = Machine::ivshmem2(&qemu, &server);
    learn_peers(&mut host);
    assert_eq!(host.peers(), vec![1]);
    m.enable();
    host.drain_vector(0).unwrap();
    host.drain_vector(1).unwrap();

    for (value, signalled) in [(1, true), (1, false), (2, true), (2, false), (0, true)] {
        // The register write completes (qtest replies) after the device
        // rang the eventfd, so the count is final here.
        m.set_reg(REG_STATE, value);
        assert_eq!(host.peer_state(1), Some(value), "state table entry");
        assert_eq!(m.qt.readl(m.base + 4), value, "state table in the window");
        assert_eq!(
            host.drain_vector(0).unwrap(),
            u64::from(signalled),
            "vector 0 after STATE={value}"
        );
        assert_eq!(host.drain_vector(1).unwrap(), 0, "vector 1 untouched");
    }
    assert_eq!(m.counter("state-signals-sent"), 3);

    // The other direction: the host peer publishes its state; the VM sees
    // the table entry and takes vector 0.
    m.enable_msix(2);
    m.set_reg(REG_INT_CTRL, 1);
    host.publish_state(3).unwrap();
    m.wait_msi(0);
    assert_eq!(m.qt.readl(m.base), 3, "host's entry in the VM's window");
    assert_eq!(m.take_msi(1), 0);
}

/// Doorbells: the VM rings the host peer (vector and target decoded from
/// DOORBELL; unknown targets and vectors dropped); the host peer rings the
/// VM, which takes MSI-X only with INT_CONTROL set, MSI-X enabled, the
/// vector unmasked and bus mastering on; one-shot mode clears INT_CONTROL
/// on delivery; the PBA stays 0.
#[test]
fn doorbells_and_interrupt_control() {
    let Some(qemu) = qemu_binary_or_skip("doorbells_and_interrupt_control") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-bell").unwrap();
    let mut host = host_peer(&server);
    let mut m = Machine::ivshmem2(&qemu, &server);
    learn_peers(&mut host);
    m.enable();

    // VM -> host.
    host.drain_vector(0).unwrap();
    host.drain_vector(1).unwrap();
    m.set_reg(REG_DOORBELL, 1); // target 0, vector 1
    assert_eq!(host.drain_vector(1).unwrap(), 1);
    m.set_reg(REG_DOORBELL, 0); // target 0, vector 0
    assert_eq!(host.drain_vector(0).unwrap(), 1);
    m.set_reg(REG_DOORBELL, 5); // no vector 5
    m.set_reg(REG_DOORBELL, 7 << 16 | 1); // no peer 7
    assert_eq!(
        host.drain_vector(0).unwrap() + host.drain_vector(1).unwrap(),
        0
    );
    assert_eq!(m.counter("doorbells-sent"), 2);
    assert_eq!(m.counter("doorbells-dropped"), 2);

    // host -> VM with interrupts disabled (INT_CONTROL 0): dropped.
    m.enable_msix(2);
    host.doorbell(1, 1).unwrap();
    m.wait_counter("irqs-dropped", 1);
    assert_eq!(m.take_msi(1), 0);

    // Enabled: delivered as MSI-X vector 1, repeatedly.
    m.set_reg(REG_INT_CTRL, 1);
    for n in 1..=3 {
        host.doorbell(1, 1).unwrap();
        m.wait_msi(1);
        assert_eq!(m.counter("irqs-delivered"), n);
    }
    assert_eq!(m.reg(REG_INT_CTRL), 1, "not one-shot: stays enabled");

    // A masked vector: dropped, not latched (PBA reads 0, and unmasking
    // delivers nothing).
    m.mask_vector(1, true);
    host.doorbell(1, 1).unwrap();
    m.wait_counter("irqs-dropped", 2);
    assert_eq!(m.qt.readl(BAR1 + 0x100), 0, "PBA");
    m.mask_vector(1, false);
    assert_eq!(m.take_msi(1), 0);

    // Bus mastering off: dropped.
    m.qt.cfg_writew(0x04, 0x0002);
    host.doorbell(1, 1).unwrap();
    m.wait_counter("irqs-dropped", 3);
    m.qt.cfg_writew(0x04, 0x0006);

    // One-shot: the first event is delivered and clears INT_CONTROL, the
    // next is dropped until the guest sets INT_CONTROL again.
    m.qt.cfg_writeb(0x43, 1);
    host.doorbell(1, 1).unwrap();
    m.wait_msi(1);
    assert_eq!(m.reg(REG_INT_CTRL), 0, "one-shot cleared INT_CONTROL");
    host.doorbell(1, 1).unwrap();
    m.wait_counter("irqs-dropped", 4);
    assert_eq!(m.take_msi(1), 0);
    m.set_reg(REG_INT_CTRL, 1);
    host.doorbell(1, 0).unwrap();
    m.wait_msi(0);
    assert_eq!(m.reg(REG_INT_CTRL), 0);
    m.qt.cfg_writeb(0x43, 0);

    // The VM rings itself (target = own ID).
    m.set_reg(REG_INT_CTRL, 1);
    m.set_reg(REG_DOORBELL, 1 << 16 | 1);
    m.wait_msi(1);
    assert_eq!(m.counter("irqs-delivered"), 6);
    assert_eq!(m.counter("irqs-dropped"), 4);
}

/// Writes to the state table and to the other peer's output section are
/// dropped and reported (stderr marker, counter); the own output section
/// and reads of the peer's section work.
#[test]
fn writes_to_read_only_sections_are_caught() {
    let Some(qemu) = qemu_binary_or_skip("writes_to_read_only_sections_are_caught") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-ro").unwrap();
    let mut host = host_peer(&server);
    let mut m = Machine::ivshmem2(&qemu, &server);
    learn_peers(&mut host);
    host.set_own_state(0x11);
    let state_table = m.base;
    let out0 = m.base + 0x1000; // the host peer's output section
    let out1 = out0 + 0x7f000; // the VM's own
    let host_own = host.own_section();
    assert_eq!(host_own.1, 0x7f000);
    shm_write(host_own, 0, 0xabcd_0001u32);
    shm_write(host_own, 0x7e000, 0xabcd_0002u32);

    // Reads of the read-only sections see the shared memory.
    assert_eq!(m.qt.readl(state_table), 0x11);
    assert_eq!(m.qt.readl(out0), 0xabcd_0001);
    assert_eq!(m.qt.readl(out0 + 0x7e000), 0xabcd_0002);

    // Writes to them: dropped and reported, every size.
    m.qt.writel(state_table, 0x99);
    m.qt.writeb(state_table + 4, 0x99);
    m.qt.writel(out0, 0x99);
    m.qt.writeq(out0 + 0x7e000, 0x99);
    m.qt.writew(out0 + 0x7eff0, 0x99);
    assert_eq!(m.counter("violations"), 5);
    let stderr = m.stderr();
    for n in 1..=5 {
        assert!(
            stderr.contains(&format!("ivshmem2: WRITE VIOLATION #{n}:")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("into the state table"), "{stderr}");
    assert!(stderr.contains("into peer 0's output section"), "{stderr}");
    assert_eq!(host.peer_state(0), Some(0x11));
    assert_eq!(host.peer_state(1), Some(0));
    assert_eq!(m.qt.readl(out0), 0xabcd_0001);
    assert_eq!(m.qt.readl(out0 + 0x7e000), 0xabcd_0002);
    let host_view = (host_own.0.cast_const(), host_own.1);
    assert_eq!(shm_read::<u32>(host_view, 0), 0xabcd_0001);
    assert_eq!(shm_read::<u16>(host_view, 0x7eff0), 0);

    // The own output section is writable, and the host peer sees it.
    m.qt.writel(out1 + 0x40, 0x600d_f00d);
    let peer = host.peer_section(1).unwrap();
    assert_eq!(peer.1, 0x7f000);
    assert_eq!(shm_read::<u32>(peer, 0x40), 0x600d_f00d);
    assert_eq!(m.counter("violations"), 5);
}

/// With stop-on-violation=on the first write to a read-only section is a
/// guest panic; with `-action panic=exit-failure` QEMU exits with failure.
#[test]
fn stop_on_violation_ends_the_vm() {
    let Some(qemu) = qemu_binary_or_skip("stop_on_violation_ends_the_vm") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-stop").unwrap();
    let mut m = Machine::ivshmem2_with(
        &qemu,
        &server,
        ",stop-on-violation=on",
        &["-action", "panic=exit-failure"],
    );
    // A legal write first: nothing happens.
    m.qt.writel(m.base + 0x1000, 1);
    assert_eq!(m.counter("violations"), 0);
    writeln!(m.qt.writer, "writel {:#x} 0x1", m.base).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = m.process.exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU still runs after a violation"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success(), "{status}");
    assert!(
        m.stderr().contains("ivshmem2: WRITE VIOLATION #1:"),
        "{}",
        m.stderr()
    );
}

/// One link, two VMs: one with the 2.0 device, one with QEMU's
/// `ivshmem-doorbell` (the QEMU profile, BAR2 = the whole memfd with the
/// layout page). Data, state and doorbells cross in both directions.
#[test]
fn ivshmem2_and_ivshmem_doorbell_share_a_link() {
    let Some(qemu) = qemu_binary_or_skip("ivshmem2_and_ivshmem_doorbell_share_a_link") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-mixed").unwrap();
    // Peer 0: ivshmem-doorbell.
    let mut a = Machine::start(
        &qemu,
        &server,
        &format!("ivshmem-doorbell,chardev=ivs,vectors=2,id=dev,addr={SLOT:#x}.0"),
        &[],
        0,
    );
    // Peer 1: ivshmem2.
    let mut b = Machine::ivshmem2(&qemu, &server);
    b.enable();
    assert_eq!(b.reg(REG_ID), 1);

    // A: BAR0 registers, BAR1 MSI-X, BAR2 (64-bit) the memfd.
    const A_BAR2: u64 = 0x1_0000_0000;
    a.qt.cfg_writel(0x10, BAR0 as u32);
    a.qt.cfg_writel(0x14, BAR1 as u32);
    a.qt.cfg_writel(0x18, A_BAR2 as u32);
    a.qt.cfg_writel(0x1c, (A_BAR2 >> 32) as u32);
    a.qt.cfg_writew(0x04, 0x0006);
    assert_eq!(a.qt.readl(BAR0 + 8), 0, "IVPosition of A");
    assert_eq!(&a.qt.readq(A_BAR2).to_le_bytes(), b"IVSHMEM2");

    // B -> A: data in B's output section, state through STATE.
    let b_out_in_a = A_BAR2 + 0x1000 + 0x1000 + 0x7f000;
    b.qt.writel(b.base + 0x1000 + 0x7f000, 0x0b0b_0b0b);
    assert_eq!(a.qt.readl(b_out_in_a), 0x0b0b_0b0b);
    b.set_reg(REG_STATE, 2);
    assert_eq!(a.qt.readl(A_BAR2 + 0x1000 + 4), 2, "B's state entry in A");

    // A -> B: A writes its output section and state entry (the QEMU
    // profile writes the table itself), then rings B's vector 1 and 0.
    a.qt.writel(A_BAR2 + 0x2000, 0x0a0a_0a0a);
    a.qt.writel(A_BAR2 + 0x1000, 3);
    assert_eq!(b.qt.readl(b.base + 0x1000), 0x0a0a_0a0a);
    assert_eq!(b.qt.readl(b.base), 3);
    b.enable_msix(2);
    b.set_reg(REG_INT_CTRL, 1);
    a.qt.writel(BAR0 + 12, 1 << 16 | 1);
    b.wait_msi(1);
    a.qt.writel(BAR0 + 12, 1 << 16);
    b.wait_msi(0);

    // B -> A doorbell: A's eventfd for vector 1 (QEMU turns it into MSI-X
    // on A; here it is enough that the event is consumed by A's device,
    // which QEMU does only with MSI-X enabled — so enable it).
    for v in 0..2u64 {
        let entry = BAR1 + 16 * v;
        a.qt.writel(entry, (MSI_WORD + 4 * v) as u32);
        a.qt.writel(entry + 4, 0);
        a.qt.writel(entry + 8, MSI_DATA | v as u32);
        a.qt.writel(entry + 12, 0);
    }
    a.qt.writel(MSI_WORD + 4, 0);
    // ivshmem-doorbell's MSI-X capability: walk the list to find it.
    let mut cap = u32::from(a.qt.cfg_readb(0x34));
    while cap != 0 && a.qt.cfg_readb(cap) != 0x11 {
        cap = u32::from(a.qt.cfg_readb(cap + 1));
    }
    assert_ne!(cap, 0, "ivshmem-doorbell has MSI-X");
    a.qt.cfg_writew(cap + 2, 0x8000);
    b.set_reg(REG_DOORBELL, 1);
    let deadline = Instant::now() + TIMEOUT;
    while a.qt.readl(MSI_WORD + 4) == 0 {
        assert!(Instant::now() < deadline, "no MSI-X on A's vector 1");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a.qt.readl(MSI_WORD + 4), MSI_DATA | 1);
    assert_eq!(b.counter("violations"), 0);
}

/// QEMU's `virt` (aarch64, GICv3, no ITS; the rig's machine) with
/// `ivshmem2` in INTx mode (`vectors=0`, id `dev`) at [`VIRT_SLOT`], BAR0
/// at [`VIRT_BAR0`] and memory decoding on; `extra` arguments.
fn virt_intx(qemu: &Path, server: &IvshmemServer, extra: &[&str]) -> Machine {
    let device =
        format!("ivshmem2,chardev=ivs,id=dev,addr={VIRT_SLOT:#x}.0,vectors=0,base={VIRT_BASE:#x}");
    let mut machine: Vec<&str> = VIRT.to_vec();
    machine.extend(["-m", "256M"]);
    let mut m = Machine::start_on(
        qemu,
        &machine,
        Some(VIRT_ECAM),
        server,
        &[&device],
        extra,
        VIRT_BASE,
    );
    m.qt.slot = VIRT_SLOT;
    m.qt.cfg_writel(0x10, VIRT_BAR0 as u32);
    m.qt.cfg_writew(0x04, 0x0002);
    m
}

/// The INTID `virt`'s gpex routes (`slot`, `pin` 1..4) to: INTA..INTD of
/// slot 0 are SPIs 3..6, rotated by the slot (the PCI swizzle).
fn virt_intid(slot: u32, pin: u32) -> u32 {
    VIRT_PCIE_FIRST_INTID + (slot + pin - 1) % 4
}

impl Machine {
    /// The QOM path of the child of `parent` whose type is `ty`.
    fn child_of_type(&mut self, parent: &str, ty: &str) -> String {
        let list = self.qmp.execute(serde_json::json!({
            "execute": "qom-list", "arguments": {"path": parent}
        }));
        let want = format!("child<{ty}>");
        let name = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == want.as_str())
            .unwrap_or_else(|| panic!("no {want} under {parent}: {list}"))["name"]
            .as_str()
            .unwrap()
            .to_string();
        format!("{parent}/{name}")
    }

    /// Reports every level change of the GIC's inputs (`IRQ raise n`, n =
    /// INTID − 32 for SPIs) from now on.
    fn intercept_gic(&mut self) {
        let gic = self.child_of_type("/machine/unattached", "arm-gicv3");
        self.qt.cmd(&format!("irq_intercept_in {gic}"));
    }

    /// Whether the GIC distributor has `intid` pending (GICD_ISPENDR).
    fn gic_pending(&mut self, intid: u32) -> bool {
        let reg = self.qt.readl(VIRT_GICD + 0x200 + 4 * u64::from(intid / 32));
        reg & (1 << (intid % 32)) != 0
    }

    /// Makes `intid` edge-triggered (GICD_ICFGR), as Jailhouse's device
    /// trees declare the ivshmem SPIs and the guest configures them.
    fn gic_set_edge(&mut self, intid: u32) {
        let addr = VIRT_GICD + 0xc00 + 4 * u64::from(intid / 16);
        let v = self.qt.readl(addr);
        self.qt.writel(addr, v | 2 << (2 * (intid % 16)));
    }

    fn gic_clear_pending(&mut self, intid: u32) {
        self.qt.writel(
            VIRT_GICD + 0x280 + 4 * u64::from(intid / 32),
            1 << (intid % 32),
        );
    }

    /// Waits for `counter` to reach `value` and returns the IRQ level
    /// changes reported up to then.
    fn irqs_after(&mut self, counter: &str, value: u64) -> Vec<String> {
        self.wait_counter(counter, value);
        self.qt.take_irqs()
    }
}

/// The IRQ lines of one pulse of SPI `intid` (raise, then lower at once).
fn pulse(intid: u32) -> Vec<String> {
    let n = intid - 32;
    vec![format!("IRQ raise {n}"), format!("IRQ lower {n}")]
}

/// `vectors=0`: INTx only, as Jailhouse's qemu-arm64 cells see the device:
/// no MSI-X capability (the vendor capability is the last), no BAR1, and
/// Interrupt Pin = (slot & 3) + 1 (Jailhouse's rule), here on slots 1..4
/// (pins B, C, D, A); `vectors` other than 0 or the link's count is
/// refused. The aarch64 binary of the same build. (MSI-X mode cannot
/// realize on this machine: GICv3 without ITS has no MSI controller.)
#[test]
fn intx_mode_has_no_msix_and_the_jailhouse_pin() {
    let Some(qemu) = qemu_binary_aarch64_or_skip("intx_mode_has_no_msix_and_the_jailhouse_pin")
    else {
        return;
    };
    // Four peers: a user-defined protocol (ivshmem-net links exactly two).
    let server = IvshmemServer::start_with("ivs2-intx-cfg", |c: &mut ServerConfig| {
        c.protocol = 0x4000;
        c.max_peers = 4;
    })
    .unwrap();
    let sock = server.socket();
    let mut extra: Vec<String> = Vec::new();
    for slot in 2..=4u32 {
        extra.push("-chardev".into());
        extra.push(format!("socket,path={},id=ivs{slot}", sock.display()));
        let base = VIRT_BASE + u64::from(slot) * 0x100_0000;
        extra.push("-device".into());
        extra.push(format!(
            "ivshmem2,chardev=ivs{slot},addr={slot:#x}.0,base={base:#x},vectors=0"
        ));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut m = virt_intx(&qemu, &server, &extra);
    for (slot, pin) in [(1, 2), (2, 3), (3, 4), (4, 1)] {
        m.qt.slot = slot;
        let qt = &mut m.qt;
        assert_eq!(qt.cfg_readl(0x00), 0x4106_110a, "slot {slot}");
        assert_eq!(qt.cfg_readl(0x04) >> 16, 0x0010, "status: caps");
        assert_eq!(qt.cfg_readb(0x3d), pin, "interrupt pin of slot {slot}");
        assert_eq!(qt.cfg_readb(0x34), 0x40, "capability pointer");
        // Vendor capability, next 0: no MSI-X capability.
        assert_eq!(qt.cfg_readl(0x40), 0x0020_0009, "slot {slot}");
        assert_eq!(qt.cfg_readl(0x60), 0, "nothing at 60h");
        // BAR0 4 KiB; no BAR1 (nor BAR2..5).
        for (bar, expect) in [(0x10, 0xffff_f000), (0x14, 0), (0x18, 0)] {
            let before = qt.cfg_readl(bar);
            qt.cfg_writel(bar, 0xffff_ffff);
            assert_eq!(qt.cfg_readl(bar), expect, "slot {slot} BAR at {bar:#x}");
            qt.cfg_writel(bar, before);
        }
        // The interrupt line register stays writable, as in every PCI device.
        qt.cfg_writeb(0x3c, 0x25);
        assert_eq!(qt.cfg_readb(0x3c), 0x25);
        // One-shot and INTx disable are writable.
        qt.cfg_writeb(0x43, 1);
        assert_eq!(qt.cfg_readb(0x43), 1);
        qt.cfg_writeb(0x43, 0);
        let command = qt.cfg_readl(0x04) as u16;
        qt.cfg_writew(0x04, command | 0x0400);
        assert_eq!(qt.cfg_readl(0x04) & 0x0400, 0x0400, "Command.INTX_DISABLE");
        qt.cfg_writew(0x04, command);
    }
    assert!(
        m.stderr().contains("INTx pin B"),
        "realize message: {}",
        m.stderr()
    );

    // vectors=1 on a two-vector link: refused at realize.
    let server = IvshmemServer::start("ivs2-intx-vectors").unwrap();
    let sock = server.socket();
    let out = Command::new(&qemu)
        .args(VIRT)
        .args(["-m", "256M", "-accel", "qtest", "-display", "none"])
        .args(["-nodefaults", "-qtest", "null"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", sock.display()))
        .args(["-device", "ivshmem2,chardev=ivs,vectors=1,base=0x60000000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vectors=1, but the link has 2 vectors"),
        "{err}"
    );
}

/// INTx delivery (`vectors=0`) on `virt`: an event on the device's vector 0
/// — a peer's doorbell with vector 0, a peer's STATE change, its own
/// doorbell — pulses the line `virt` routes 00:01.0 pin B to (INTID 37)
/// only while INT_CONTROL is 1 and Command.INTX_DISABLE is clear; otherwise
/// (and for any other vector) it is dropped and counted; one-shot clears
/// INT_CONTROL on delivery. The pulse leaves an edge-triggered SPI pending
/// in the GIC (what Jailhouse's GICD_ISPENDR write does) and a
/// level-triggered one not.
#[test]
fn intx_pulses_only_when_armed() {
    let Some(qemu) = qemu_binary_aarch64_or_skip("intx_pulses_only_when_armed") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-intx").unwrap();
    let mut host = host_peer(&server);
    let mut m = virt_intx(&qemu, &server, &[]);
    learn_peers(&mut host);
    m.intercept_gic();
    let intid = virt_intid(VIRT_SLOT, 2);
    assert_eq!(intid, 37, "virt: 00:01.0 pin B");
    let reg = |off| VIRT_BAR0 + off;
    assert_eq!(m.qt.readl(reg(REG_ID)), 1);
    assert_eq!(m.qt.readl(reg(REG_INT_CTRL)), 0);

    // Not armed (INT_CONTROL 0): dropped, the line stays quiet.
    host.doorbell(1, 0).unwrap();
    assert_eq!(m.irqs_after("irqs-dropped", 1), Vec::<String>::new());

    // Armed: one pulse per doorbell; the default (level) SPI is not left
    // pending by a pulse.
    m.qt.writel(reg(REG_INT_CTRL), 1);
    host.doorbell(1, 0).unwrap();
    assert_eq!(m.irqs_after("irqs-delivered", 1), pulse(intid));
    assert!(!m.gic_pending(intid), "level-triggered: no latch");
    // Edge-triggered (as the guests configure it): the pulse latches.
    m.gic_set_edge(intid);
    host.doorbell(1, 0).unwrap();
    assert_eq!(m.irqs_after("irqs-delivered", 2), pulse(intid));
    assert!(m.gic_pending(intid), "edge-triggered: pending");
    m.gic_clear_pending(intid);
    assert!(!m.gic_pending(intid));

    // Only vector 0 interrupts: a doorbell on vector 1 reaches nothing.
    host.doorbell(1, 1).unwrap();
    assert_eq!(m.irqs_after("irqs-dropped", 2), Vec::<String>::new());

    // Command.INTX_DISABLE masks it (dropped, not latched), and clearing it
    // delivers nothing afterwards.
    m.qt.cfg_writew(0x04, 0x0402);
    host.doorbell(1, 0).unwrap();
    assert_eq!(m.irqs_after("irqs-dropped", 3), Vec::<String>::new());
    m.qt.cfg_writew(0x04, 0x0002);
    assert_eq!(m.qt.take_irqs(), Vec::<String>::new());
    assert!(!m.gic_pending(intid));

    // A peer's STATE change is an interrupt too.
    host.publish_state(3).unwrap();
    assert_eq!(m.irqs_after("irqs-delivered", 3), pulse(intid));
    assert_eq!(m.qt.readl(VIRT_BASE), 3, "host's state entry");
    m.gic_clear_pending(intid);

    // One-shot: delivery clears INT_CONTROL; the next event is dropped
    // until INT_CONTROL is set again.
    m.qt.cfg_writeb(0x43, 1);
    host.doorbell(1, 0).unwrap();
    assert_eq!(m.irqs_after("irqs-delivered", 4), pulse(intid));
    assert_eq!(m.qt.readl(reg(REG_INT_CTRL)), 0, "one-shot cleared it");
    host.doorbell(1, 0).unwrap();
    assert_eq!(m.irqs_after("irqs-dropped", 4), Vec::<String>::new());
    m.qt.writel(reg(REG_INT_CTRL), 1);
    host.publish_state(4).unwrap();
    assert_eq!(m.irqs_after("irqs-delivered", 5), pulse(intid));
    assert_eq!(m.qt.readl(reg(REG_INT_CTRL)), 0);
    m.qt.cfg_writeb(0x43, 0);

    // Its own doorbell (target = own ID, vector 0) and, the other way, a
    // doorbell to the host peer.
    m.qt.writel(reg(REG_INT_CTRL), 1);
    m.qt.writel(reg(REG_DOORBELL), 1 << 16);
    assert_eq!(m.irqs_after("irqs-delivered", 6), pulse(intid));
    host.drain_vector(0).unwrap();
    m.qt.writel(reg(REG_DOORBELL), 0);
    assert_eq!(host.drain_vector(0).unwrap(), 1);
    assert_eq!(m.counter("irqs-dropped"), 4);
    assert_eq!(m.counter("violations"), 0);
}

/// The shared-memory window must not silently cover guest RAM: on `virt`
/// (RAM from 0x40000000) a base inside RAM is refused unless `over-ram=on`,
/// which hides that RAM behind the window (as a Jailhouse cell's shared
/// memory is carved out of RAM; the arm64 cell config's 0x7fb00000).
#[test]
fn window_over_ram_only_on_request() {
    let Some(qemu) = qemu_binary_aarch64_or_skip("window_over_ram_only_on_request") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-over-ram").unwrap();
    let run = |props: &str| {
        Command::new(&qemu)
            .args(VIRT)
            .args(["-m", "2G", "-accel", "qtest", "-display", "none"])
            .args(["-nodefaults", "-qtest", "null"])
            .arg("-chardev")
            .arg(format!("socket,path={},id=ivs", server.socket().display()))
            .arg("-device")
            .arg(format!(
                "ivshmem2,chardev=ivs,vectors=0,base=0x7fb00000{props}"
            ))
            .output()
            .unwrap()
    };
    let out = run("");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("covers guest RAM at 0x7fb00000"), "{err}");

    let mut m = Machine::start_on(
        &qemu,
        &[VIRT, &["-m", "2G"]].concat(),
        Some(VIRT_ECAM),
        &server,
        &["ivshmem2,chardev=ivs,id=dev,addr=1.0,vectors=0,base=0x7fb00000,over-ram=on"],
        &[],
        0x7fb0_0000,
    );
    m.qt.slot = 1;
    assert_eq!(m.qt.cfg_readl(0x58), 0x7fb0_0000, "base address");
    // The state table (read-only) is what the guest sees there, not RAM.
    m.qt.writel(0x7fb0_0000, 0x99);
    assert_eq!(m.qt.readl(0x7fb0_0000), 0);
    assert_eq!(m.counter("violations"), 1);
    // RAM right below the window is still RAM.
    m.qt.writel(0x7faf_f000, 0x1234_5678);
    assert_eq!(m.qt.readl(0x7faf_f000), 0x1234_5678);
}

/// Starts the bare-metal guest (PVH, qboot, TCG) with the 2.0 device on
/// the server at `socket` and `cmdline`.
fn spawn_guest(qemu: &Path, socket: &Path, cmdline: &str) -> QemuProcess {
    spawn_guest_on(qemu, socket, cmdline, "ivshmem2,chardev=ivs,id=dev")
}

/// Starts the bare-metal guest with the ivshmem `device` (a `-device`
/// argument on the chardev `ivs`, the server at `socket`).
fn spawn_guest_on(qemu: &Path, socket: &Path, cmdline: &str, device: &str) -> QemuProcess {
    let image = ivnet_e2e::qemu::guest_image().unwrap();
    let dir = unique_dir("guest");
    let serial = dir.join("serial.log");
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-m", "64M", "-accel", "tcg"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-bios", "/usr/share/qemu/qboot.rom"])
        .arg("-kernel")
        .arg(&image)
        .args(["-append", cmdline])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", socket.display()))
        .args(["-device", device]);
    QemuProcess::spawn(&mut cmd, dir, Accel::Tcg, "guest").unwrap()
}

/// Runs the bare-metal guest with the 2.0 device and `cmdline` to its
/// end; returns QEMU's exit status and the serial console.
fn run_guest(qemu: &Path, server: &IvshmemServer, cmdline: &str) -> (Option<i32>, String) {
    let mut process = spawn_guest(qemu, &server.socket(), cmdline);
    let deadline = Instant::now() + ivnet_e2e::qemu::BOOT_TIMEOUT;
    let status = loop {
        if let Some(status) = process.exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "guest still running:\n{}\n{}",
            process.serial(),
            process.qemu_stderr()
        );
        // Waiting for the guest to exit through isa-debug-exit.
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        format!(
            "{}\n--- qemu stderr:\n{}",
            process.serial(),
            process.qemu_stderr()
        ),
    )
}

/// The bare-metal guest finds 110a:4106 (the Jailhouse profile), reads the
/// vendor capability (sizes and base address), places BAR0/BAR1 itself
/// (qboot leaves them), brings ivshmem up, and maps the state table and
/// the peer's output section read-only: a store there faults in the guest.
#[test]
fn bare_metal_guest_runs_on_the_jailhouse_profile() {
    use ivnet_e2e::qemu::ExitCode;
    let Some(qemu) = qemu_binary_or_skip("bare_metal_guest_runs_on_the_jailhouse_profile") else {
        return;
    };
    let server = IvshmemServer::start("ivs2-guest").unwrap();
    let (code, log) = run_guest(&qemu, &server, "ip=10.77.0.2/24 selftest=boot");
    assert_eq!(code, Some(ExitCode::Success.qemu_status()), "{log}");
    assert!(log.contains("ivshmem Jailhouse"), "{log}");
    assert!(
        log.contains(&format!(
            "shared memory at {DEFAULT_BASE:#x}: state table +0x0 (0x1000), rw +0x1000 (0x0), \
             output sections 0x7f000 bytes at +0x1000, 2 MSI-X vectors"
        )),
        "{log}"
    );
    assert!(log.contains("selftest boot: ok"), "{log}");
    for (test, region) in [
        ("write-peer-section", "in peer's output section (read-only)"),
        ("write-state-table", "in ivshmem state table (read-only)"),
    ] {
        let (code, log) = run_guest(&qemu, &server, &format!("ip=10.77.0.2/24 selftest={test}"));
        assert_eq!(
            code,
            Some(ExitCode::PageFault.qemu_status()),
            "{test}\n{log}"
        );
        assert!(
            log.contains("(protection violation on write data access)") && log.contains(region),
            "{test}\n{log}"
        );
        // The guest's own page tables stopped the store: the device saw none.
        assert!(!log.contains("WRITE VIOLATION"), "{test}\n{log}");
    }
}

/// The Jailhouse profile end to end: the bare-metal guest on the 2.0 device
/// links with `ivnet-bridge --server` (a host peer on the same server) and
/// answers ping, UDP echo and a 4 MiB TCP echo, byte-exact; no write
/// violation on the way.
#[test]
fn bare_metal_guest_links_with_the_bridge_on_the_jailhouse_profile() {
    use ivnet_e2e::netns::{self, BridgeSpec, Netns, Server, tail};
    use std::io::Read;
    let Some(qemu) = qemu_binary_or_skip("bare_metal_guest_links_with_the_bridge") else {
        return;
    };
    netns::require_root();
    netns::ensure_base_tools();
    let dir = tempfile::Builder::new()
        .prefix("ivnet-ivshmem2-link")
        .tempdir()
        .unwrap();
    let ns = Netns::new("ivs2link");
    let server = Server::start(dir.path(), &[]);
    let guest = spawn_guest(&qemu, &server.socket, "ip=10.77.0.2/24 stats=5");
    let spec = BridgeSpec {
        name: "bridge".into(),
        socket: server.socket.clone(),
        netns: ns.name().into(),
        tap: "ivs2".into(),
        mtu: 16384,
        extra: vec!["--mode".into(), "event".into()],
    };
    let mut bridge = spec.spawn_fresh(dir.path());
    let logs = |bridge: &netns::Proc, guest: &QemuProcess| {
        format!(
            "--- bridge ---\n{}\n--- guest ---\n{}\n--- qemu ---\n{}",
            tail(&bridge.stderr()),
            tail(&guest.serial()),
            guest.qemu_stderr()
        )
    };
    let started = bridge.wait_stderr("TAP, MTU", 1, TIMEOUT);
    assert!(started.is_ok(), "{started:?}\n{}", logs(&bridge, &guest));
    let tap = netns::wait_until(TIMEOUT, Duration::from_millis(20), || ns.has_link("ivs2"));
    assert!(tap.is_ok(), "no TAP\n{}", logs(&bridge, &guest));
    ns.add_addr("ivs2", "10.77.0.1/24");
    ns.wait_carrier("ivs2", true, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&bridge, &guest)));
    assert!(guest.serial().contains("nic: ivshmem-net on Jailhouse"));

    assert!(
        ns.ping("10.77.0.2", 5, None),
        "ping\n{}",
        logs(&bridge, &guest)
    );

    let udp =
        ivnet_e2e::qemu::in_netns(ns.name(), || std::net::UdpSocket::bind("0.0.0.0:0")).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7) as u8).collect();
    let mut echoed = None;
    // UDP may be lost before ARP settles; a few tries, each waiting for
    // the answer.
    for _ in 0..5 {
        udp.send_to(&payload, ("10.77.0.2", 7)).unwrap();
        if let Ok((n, _)) = udp.recv_from(&mut buf) {
            echoed = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(echoed.as_deref(), Some(&payload[..]), "UDP echo");

    const TCP_BYTES: usize = 4 << 20;
    let started = Instant::now();
    let data: Vec<u8> = (0..TCP_BYTES as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let stream = ivnet_e2e::qemu::in_netns(ns.name(), || {
        std::net::TcpStream::connect_timeout(&"10.77.0.2:7".parse().unwrap(), TIMEOUT)
    })
    .unwrap_or_else(|e| panic!("connect: {e}\n{}", logs(&bridge, &guest)));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let received = std::thread::scope(|scope| {
        let rx = scope.spawn(move || {
            let mut got = Vec::with_capacity(TCP_BYTES);
            let mut chunk = vec![0u8; 65536];
            while got.len() < TCP_BYTES {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            got
        });
        (&stream).write_all(&data).unwrap();
        rx.join().unwrap()
    });
    assert!(
        received == data,
        "TCP echo: {} of {} bytes, or different\n{}",
        received.len(),
        data.len(),
        logs(&bridge, &guest)
    );
    eprintln!("TCP echo of {TCP_BYTES} bytes in {:?}", started.elapsed());
    assert!(
        !guest.qemu_stderr().contains("WRITE VIOLATION"),
        "{}",
        guest.qemu_stderr()
    );
}

/// Waits until `process`'s console shows `needle` `times` times.
fn wait_serial_count(process: &mut QemuProcess, needle: &str, times: usize, what: &str) -> String {
    let deadline = Instant::now() + ivnet_e2e::qemu::BOOT_TIMEOUT;
    loop {
        let log = process.serial_lines();
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            process.exit().is_none() && Instant::now() < deadline,
            "{what}: {needle:?} not {times}x on the console ({:?})\n{log}\n--- qemu:\n{}",
            process.exit(),
            process.qemu_stderr()
        );
        // Polling the console file QEMU appends to.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last complete counters line on `log` (`stats=N`).
fn last_counters(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.contains(" link=") && l.contains(" carrier="))
        .unwrap_or("")
}

/// Two bare-metal guests on one link, one per profile: peer 0 on QEMU's
/// `ivshmem-doorbell` (QEMU profile: the guest writes its state-table entry
/// itself and rings vector 0), peer 1 on the 2.0 device (Jailhouse
/// profile: STATE in BAR0, the device copies it into the table and rings).
/// Both reach RUN/RUN with carrier, and their counters lines say so; the
/// 2.0 guest sees its peer leave (the server resets the departed entry and
/// rings vector 0) and a restarted peer relink.
///
/// No frame crosses: the guest only answers (ping, echo) and never
/// originates traffic, and no third party fits on a two-peer ivshmem-net
/// link; data between the profiles is covered at the device level by
/// `ivshmem2_and_ivshmem_doorbell_share_a_link`.
#[test]
fn bare_metal_guests_link_across_the_two_profiles() {
    let Some(qemu) = qemu_binary_or_skip("bare_metal_guests_link_across_the_two_profiles") else {
        return;
    };
    let started = Instant::now();
    let server = IvshmemServer::start("ivs2-two-guests").unwrap();
    let doorbell = "ivshmem-doorbell,chardev=ivs,vectors=2";
    const UP: &str = "link: carrier on (local RUN, peer RUN)";
    let mut a = spawn_guest_on(&qemu, &server.socket(), "ip=10.77.0.1/24 stats=1", doorbell);
    wait_serial_count(&mut a, "nic: ivshmem-net on QemuDoorbell", 1, "peer 0");
    let mut b = spawn_guest(&qemu, &server.socket(), "ip=10.77.0.2/24 stats=1");
    let log_a = wait_serial_count(&mut a, UP, 1, "peer 0 (ivshmem-doorbell)");
    let log_b = wait_serial_count(&mut b, UP, 1, "peer 1 (ivshmem2)");
    assert!(log_a.contains("ivshmem QemuDoorbell"), "{log_a}");
    assert!(log_b.contains("nic: ivshmem-net on Jailhouse"), "{log_b}");
    // A counters line printed after the link came up, on both.
    for (p, name) in [(&mut a, "peer 0"), (&mut b, "peer 1")] {
        let lines = p.serial_lines().matches(" carrier=").count();
        let log = wait_serial_count(p, " carrier=", lines + 1, name);
        let line = last_counters(&log);
        assert!(line.contains("link=RUN/RUN carrier=1"), "{name}: {line}");
        assert!(line.contains("protocol_faults=0"), "{name}: {line}");
    }
    eprintln!("both guests RUN/RUN after {:?}", started.elapsed());

    // Peer 0 goes away: the 2.0 guest's carrier drops; a new peer 0 links.
    let log_b = b.serial_lines();
    assert_eq!(log_b.matches("link: carrier off").count(), 0, "{log_b}");
    assert_eq!(log_b.matches(UP).count(), 1, "{log_b}");
    a.kill();
    wait_serial_count(&mut b, "link: carrier off", 1, "peer 1 after peer 0 left");
    let mut a = spawn_guest_on(&qemu, &server.socket(), "ip=10.77.0.1/24 stats=1", doorbell);
    wait_serial_count(&mut a, UP, 1, "new peer 0");
    wait_serial_count(&mut b, UP, 2, "peer 1 relinking");
    assert!(
        !b.qemu_stderr().contains("WRITE VIOLATION"),
        "{}",
        b.qemu_stderr()
    );
    eprintln!("relinked after {:?}", started.elapsed());
}
