//! The QEMU profile against a real QEMU 7.2 `ivshmem-doorbell` device.
//!
//! The test plays ivshmem-server itself (a memfd with a layout page, peer 0's
//! eventfds, QEMU's own eventfds) and drives the device through QEMU's qtest
//! protocol: configuration space with port I/O at 0xCF8/0xCFC — exactly what
//! the bare-metal guest does — and MMIO with `readl`/`writel`. The guest CPU
//! never runs (`-S`), so this needs neither KVM nor firmware.
//!
//! Requires `qemu-system-x86_64` (Debian: `qemu-system-x86`); set
//! `IVNET_QEMU_BIN` to use another binary.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, Stdio};
use std::time::{Duration, Instant};

use ivshmem::layout::{LayoutPage, PROTOCOL_NET};
use ivshmem::pci::{self, Bar, Command, ConfigSpace, MsixCapability, MsixEntryField};
use ivshmem::qemu;
use rustix::event::{EventfdFlags, eventfd};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

const SHM_SIZE: u64 = 0x10_0000;
const QEMU_ID: i64 = 1;
const TEST_PEER_ID: i64 = 0;
const VECTORS: usize = 2;
/// Where the test places the BARs (inside the `pc` machine's PCI hole).
const BAR0_ADDR: u64 = 0xfe00_0000;
const BAR1_ADDR: u64 = 0xfe00_1000;
const BAR2_ADDR: u64 = 0xe000_0000;

/// A QEMU process speaking qtest on stdin/stdout.
struct Qtest {
    /// Held for its `Drop`, which kills QEMU after the qtest stream is closed.
    _process: Qemu,
    io: RefCell<(ChildStdin, BufReader<ChildStdout>)>,
    /// Bus/device/function of the ivshmem device, as a CF8 address.
    cf8_base: u32,
}

impl Qtest {
    fn command(&self, line: &str) -> String {
        let mut io = self.io.borrow_mut();
        writeln!(io.0, "{line}").expect("qtest: QEMU went away");
        io.0.flush().unwrap();
        loop {
            let mut reply = String::new();
            let n = io.1.read_line(&mut reply).expect("qtest read");
            assert!(n > 0, "qtest: QEMU exited while handling {line:?}");
            let reply = reply.trim_end();
            // Asynchronous events ("IRQ raise …") are not replies.
            if let Some(rest) = reply.strip_prefix("OK") {
                return rest.trim().to_string();
            }
            assert!(
                !reply.starts_with("FAIL") && !reply.starts_with("ERR"),
                "qtest {line:?}: {reply}"
            );
        }
    }

    fn value(&self, line: &str) -> u64 {
        let reply = self.command(line);
        let hex = reply
            .strip_prefix("0x")
            .unwrap_or_else(|| panic!("qtest {line:?}: {reply:?}"));
        u64::from_str_radix(hex, 16).unwrap()
    }

    fn readl(&self, addr: u64) -> u32 {
        self.value(&format!("readl {addr:#x}")) as u32
    }

    fn writel(&self, addr: u64, value: u32) {
        self.command(&format!("writel {addr:#x} {value:#x}"));
    }

    fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let reply = self.command(&format!("read {addr:#x} {len:#x}"));
        let hex = reply.strip_prefix("0x").unwrap();
        (0..len)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }
}

/// Configuration space through the legacy port-I/O mechanism: the CF8
/// address `0x8000_0000 | bus << 16 | device << 11 | function << 8 | offset`,
/// then a 32-bit access to 0xCFC.
impl ConfigSpace for Qtest {
    fn read32(&self, offset: u16) -> u32 {
        if offset >= pci::LEGACY_CONFIG_SPACE_SIZE {
            return u32::MAX;
        }
        self.command(&format!(
            "outl 0xcf8 {:#x}",
            self.cf8_base | u32::from(offset & 0xfc)
        ));
        self.value("inl 0xcfc") as u32
    }

    fn write32(&mut self, offset: u16, value: u32) {
        if offset >= pci::LEGACY_CONFIG_SPACE_SIZE {
            return;
        }
        self.command(&format!(
            "outl 0xcf8 {:#x}",
            self.cf8_base | u32::from(offset & 0xfc)
        ));
        self.command(&format!("outl 0xcfc {value:#x}"));
    }
}

/// The QEMU process, killed when dropped (also when a test panics): QEMU
/// does not exit when the qtest stream closes.
struct Qemu {
    child: Child,
    watchdog: Watchdog,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.watchdog.disarm();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills QEMU (by its PID, while it is still our unreaped child) if the test
/// hangs, so that a blocked qtest read turns into a failure.
struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(child: &Child, limit: Duration) -> Self {
        let pid = rustix::process::Pid::from_child(child);
        let (disarm, expired) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = expired.recv_timeout(limit) {
                eprintln!("qtest watchdog: QEMU unresponsive for {limit:?}, killing it");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        });
        Watchdog {
            disarm: Some(disarm),
            thread: Some(thread),
        }
    }

    /// Stops the watchdog before the child is reaped (after which its PID
    /// could be reused).
    fn disarm(&mut self) {
        drop(self.disarm.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One message of the ivshmem-server protocol: a little-endian i64, with an
/// optional file descriptor attached.
fn send_message(stream: &UnixStream, value: i64, fd: Option<&OwnedFd>) {
    let bytes = value.to_le_bytes();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    }
    let sent = sendmsg(
        stream,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(sent, 8);
}

fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        Err(rustix::io::Errno::AGAIN) => 0,
        other => panic!("eventfd read: {other:?}"),
    }
}

struct Rig {
    qtest: Qtest,
    shm: File,
    page: LayoutPage,
    /// Peer 0's eventfds: QEMU signals them when the guest rings peer 0.
    peer_vectors: Vec<OwnedFd>,
    _server: UnixStream,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start() -> Rig {
    let dir = std::env::temp_dir().join(format!("ivshmem-qtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let socket = dir.0.join("ivshmem.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();

    let shm: File = rustix::fs::memfd_create("ivshmem-qtest", rustix::fs::MemfdFlags::CLOEXEC)
        .unwrap()
        .into();
    shm.set_len(SHM_SIZE).unwrap();
    let page = LayoutPage::new(PROTOCOL_NET, VECTORS as u32, 2, 0x1000, 0, 0x7f000);
    shm.write_all_at(&page.encode(), 0).unwrap();

    let bin = std::env::var("IVNET_QEMU_BIN").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let child = Process::new(&bin)
        .args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-qtest", "stdio", "-qtest-log", "/dev/null", "-chardev"])
        .arg(format!("socket,path={},id=ivshmem", socket.display()))
        .args([
            "-device",
            &format!("ivshmem-doorbell,chardev=ivshmem,vectors={VECTORS},addr=4"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} (Debian: apt-get install qemu-system-x86): {e}")
        });

    let watchdog = Watchdog::arm(&child, Duration::from_secs(120));
    let mut qemu = Qemu { child, watchdog };

    // QEMU connects during device realize and waits for version, ID and
    // memory before it finishes starting.
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = qemu.child.try_wait().unwrap() {
                    panic!("QEMU exited before connecting: {status}");
                }
                assert!(
                    Instant::now() < deadline,
                    "QEMU did not connect to the server socket"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    server.set_nonblocking(false).unwrap();
    send_message(&server, 0, None); // protocol version
    send_message(&server, QEMU_ID, None);
    send_message(&server, -1, Some(&OwnedFd::from(shm.try_clone().unwrap())));
    let peer_vectors: Vec<OwnedFd> = (0..VECTORS)
        .map(|_| eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap())
        .collect();
    for fd in &peer_vectors {
        send_message(&server, TEST_PEER_ID, Some(fd));
    }
    for _ in 0..VECTORS {
        let own = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap();
        send_message(&server, QEMU_ID, Some(&own));
    }

    let stdin = qemu.child.stdin.take().unwrap();
    let stdout = BufReader::new(qemu.child.stdout.take().unwrap());
    let qtest = Qtest {
        _process: qemu,
        io: RefCell::new((stdin, stdout)),
        cf8_base: 0x8000_0000 | 4 << 11,
    };
    Rig {
        qtest,
        shm,
        page,
        peer_vectors,
        _server: server,
        _dir: dir,
    }
}

#[test]
fn real_ivshmem_doorbell() {
    let mut rig = start();
    let cfg = &mut rig.qtest;

    // Identification and MSI-X, through port I/O as the guest does it.
    let header = qemu::identify(&*cfg).unwrap();
    assert_eq!(header.class.to_dword(), 0x0500_0001);
    let mut msix = MsixCapability::find(&*cfg)
        .unwrap()
        .expect("ivshmem-doorbell has MSI-X");
    assert_eq!(
        (msix.table_size, msix.table_bar, msix.table_offset),
        (VECTORS as u16, 1, 0)
    );
    assert_eq!((msix.pba_bar, msix.pba_offset), (1, 0x800));

    // BARs: sizes as the reference documents them.
    assert_eq!(
        pci::size_bar(cfg, 0).unwrap(),
        (
            Bar::Memory32 {
                address: 0,
                prefetchable: false
            },
            0x100
        )
    );
    assert_eq!(pci::size_bar(cfg, 1).unwrap().1, 0x1000);
    assert_eq!(
        pci::size_bar(cfg, 2).unwrap(),
        (
            Bar::Memory64 {
                address: 0,
                prefetchable: true
            },
            SHM_SIZE
        )
    );
    pci::program_bar(cfg, 0, BAR0_ADDR).unwrap();
    pci::program_bar(cfg, 1, BAR1_ADDR).unwrap();
    assert_eq!(
        pci::program_bar(cfg, 2, BAR2_ADDR).unwrap(),
        Bar::Memory64 {
            address: BAR2_ADDR,
            prefetchable: true
        }
    );
    pci::write_command(cfg, Command::MEMORY | Command::BUS_MASTER);
    assert_eq!(
        pci::read_command(&*cfg),
        Command::MEMORY | Command::BUS_MASTER
    );
    // Sizing with decoding on must restore it, and the BARs.
    assert_eq!(pci::size_bar(cfg, 2).unwrap().1, SHM_SIZE);
    assert_eq!(
        pci::read_command(&*cfg),
        Command::MEMORY | Command::BUS_MASTER
    );
    assert_eq!(pci::read_bar(&*cfg, 0).unwrap().address(), BAR0_ADDR);

    // IVPosition is the ID the server gave.
    assert_eq!(cfg.readl(BAR0_ADDR + 0x08), QEMU_ID as u32);

    // The layout page, as the guest sees it at the start of BAR2.
    let bytes: [u8; LayoutPage::ENCODED_LEN] = cfg
        .read_bytes(BAR2_ADDR, LayoutPage::ENCODED_LEN)
        .try_into()
        .unwrap();
    assert_eq!(LayoutPage::parse(&bytes, SHM_SIZE), Ok(rig.page));
    // A guest store to its state-table entry lands in the shared memory.
    let entry = rig.page.layout.state_entry_offset(QEMU_ID as u16).unwrap();
    cfg.writel(BAR2_ADDR + entry, 2);
    let mut word = [0u8; 4];
    rig.shm.read_exact_at(&mut word, entry).unwrap();
    assert_eq!(u32::from_le_bytes(word), 2);

    // MSI-X table and PBA where the capability says.
    msix.set_control(cfg, true, true);
    assert!(MsixCapability::find(&*cfg).unwrap().unwrap().enabled);
    let data = msix.entry_offset(1, MsixEntryField::Data).unwrap();
    cfg.writel(BAR1_ADDR + data, 0x41);
    assert_eq!(cfg.readl(BAR1_ADDR + data), 0x41);
    assert_eq!(cfg.readl(BAR1_ADDR + u64::from(msix.pba_offset)), 0);
    msix.set_control(cfg, false, false);

    // Doorbell encoding: `vector | peer << 16` reaches exactly that eventfd.
    for vector in 0..VECTORS as u16 {
        cfg.writel(
            BAR0_ADDR + 0x0c,
            qemu::doorbell_value(TEST_PEER_ID as u16, vector).unwrap(),
        );
        let counts: Vec<u64> = rig.peer_vectors.iter().map(eventfd_count).collect();
        let mut expected = vec![0; VECTORS];
        expected[usize::from(vector)] = 1;
        assert_eq!(counts, expected, "ringing vector {vector}");
    }
    // Doorbells to absent peers vanish.
    cfg.writel(BAR0_ADDR + 0x0c, qemu::doorbell_value(7, 0).unwrap());
    assert_eq!(rig.peer_vectors.iter().map(eventfd_count).sum::<u64>(), 0);
    // QEMU decodes only bits 7:0 of the vector: 0x101 rings vector 1. This
    // is why `doorbell_value` and `Registers::ring` refuse vectors > 255.
    cfg.writel(BAR0_ADDR + 0x0c, 0x0000_0101);
    assert_eq!(eventfd_count(&rig.peer_vectors[1]), 1);
    assert!(qemu::doorbell_value(0, 0x101).is_err());
}
