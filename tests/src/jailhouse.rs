//! What the two Jailhouse rigs share (tests/tests/jailhouse_cell.rs on
//! x86 q35, tests/tests/jailhouse_arm64_cell.rs on aarch64 `virt`): both
//! reproduce `jailhouse cell load` + `cell start` in plain QEMU, so both
//!
//! - keep guest RAM in a shared file the test maps ([`SharedRam`]): the
//!   image and the command line are written there as `cell load` copies
//!   them, the comm region as `cell start` fills it, and the test reads
//!   `cell_state` and plays the hypervisor's side of the message protocol
//!   ([`send_message`], the [`comm`] constants: jailhouse-x86-cell.md §3.4,
//!   §3.5; jailhouse-arm64-cell.md §3, the same on both);
//! - check QEMU's `memory_region_ops_read/write` trace for accesses
//!   Jailhouse would have killed the cell for ([`TraceAccess`] parses one
//!   line; each rig has its own rules);
//! - run the host side of the link ([`HostLink`]: namespace, `ivshmem-server`,
//!   `ivnet-bridge` with a TAP) and the traffic checks on it (ping, UDP and
//!   TCP echo with [`pattern`] data);
//! - watch and stop a started [`Cell`] and run the same scenarios on it:
//!   each rig implements [`Rig`] (how QEMU starts and the cell is loaded,
//!   the comm region's place and platform part, the checker of what
//!   Jailhouse would kill the cell for), and [`LinkedCell`] (a cell with
//!   its [`HostLink`]), [`exits_set_the_cell_state`],
//!   [`command_line_too_long_fails_the_cell`] and
//!   [`wrong_comm_region_revision_fails_with_comm_rev`] are the scenario
//!   bodies both rigs' tests call.

use std::fs::File;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{self, BridgeSpec, Netns, Proc, Server, tail};
use crate::qemu::{QemuProcess, in_netns};

/// Comm region offsets and values (jailhouse-x86-cell.md §3.4, §3.5; the
/// arm64 layout shares the generic header, jailhouse-arm64-cell.md §3).
pub mod comm {
    /// `u16 revision` of the header, after the 6-byte signature.
    pub const REVISION: usize = 0x06;
    /// The ABI revision both guests speak (`COMM_REGION_ABI_REVISION`).
    pub const ABI_REVISION: u16 = 2;
    /// `volatile u32 cell_state`.
    pub const CELL_STATE: u64 = 0x08;
    /// `volatile u32 msg_to_cell`.
    pub const MSG_TO_CELL: u64 = 0x0c;
    /// `volatile u32 reply_from_cell`.
    pub const REPLY_FROM_CELL: u64 = 0x10;
    pub const MSG_SHUTDOWN_REQUEST: u32 = 1;
    pub const MSG_RECONFIG_COMPLETED: u32 = 2;
    pub const REPLY_UNKNOWN: u32 = 1;
    pub const REPLY_REQUEST_APPROVED: u32 = 3;
    pub const REPLY_RECEIVED: u32 = 4;
    pub const CELL_RUNNING: u32 = 0;
    pub const CELL_SHUT_DOWN: u32 = 2;
    pub const CELL_FAILED: u32 = 3;
    pub const CELL_FAILED_COMM_REV: u32 = 4;

    /// A comm region page with the generic header as `cell start` writes
    /// it ("JHCOMM", [`ABI_REVISION`]); the rig fills in its platform part.
    pub fn page() -> Vec<u8> {
        let mut c = vec![0u8; 0x1000];
        c[0..6].copy_from_slice(b"JHCOMM");
        c[REVISION..REVISION + 2].copy_from_slice(&ABI_REVISION.to_le_bytes());
        c
    }
}

/// The cell's and the host's addresses on the rigs' link.
pub const GUEST_IP: &str = "10.77.0.2";
pub const HOST_IP: &str = "10.77.0.1";
/// The command line of a linked cell (`-s` of `cell load`).
pub const CMDLINE: &str = "ip=10.77.0.2/24 gw=10.77.0.1 stats=5";
/// The TAP's MTU on the host side of the link.
pub const MTU: u32 = 16384;
/// How long a cell may take to boot, link, answer or stop.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the rigs keep what they build (firmware, flat image, QEMU):
/// `target/jailhouse-rig`.
pub fn rig_dir() -> PathBuf {
    crate::qemu::repo_root().join("target/jailhouse-rig")
}

/// A directory for a rig's large scratch files (sparse guest RAM, QEMU
/// traces): `/dev/shm` when it has room (RAM; no disk space taken), else
/// the temp dir.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    const ROOM: u64 = 1 << 30;
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    let dir = if free_bytes(shm).is_some_and(|free| free >= ROOM) {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    };
    dir.unwrap_or_else(|e| panic!("scratch dir: {e}")).keep()
}

/// Free bytes of the file system holding `path` (`None` if there is none).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer statvfs fills.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Guest RAM, shared with QEMU through a file (`memory-backend-file,
/// share=on`); addressed by guest-physical address, the file's byte 0
/// being `base`.
pub struct SharedRam {
    ptr: *mut u8,
    len: usize,
    base: u64,
    file: File,
}

// SAFETY: the mapping lives as long as the struct, and every access is a
// volatile read or write of one aligned u32 through a raw pointer, or a copy
// into it before QEMU runs.
unsafe impl Send for SharedRam {}
// SAFETY: as for Send: no references into the mapping are ever made.
unsafe impl Sync for SharedRam {}

impl SharedRam {
    /// Creates (truncates) the file `path` of `len` bytes, sparse, and maps
    /// it; guest-physical address `base` is its byte 0.
    pub fn create(path: &Path, base: u64, len: usize) -> SharedRam {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        file.set_len(len as u64).unwrap();
        // SAFETY: a fresh shared mapping of a file of `len` bytes; QEMU maps
        // the same file (memory-backend-file,share=on).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap guest RAM");
        SharedRam {
            ptr: p.cast(),
            len,
            base,
            file,
        }
    }

    /// The offset of `len` bytes at guest-physical `addr` in the file.
    fn offset(&self, addr: u64, len: usize) -> usize {
        let off = addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= self.len));
        off.unwrap_or_else(|| panic!("{len} bytes at {addr:#x} are outside the RAM file"))
    }

    fn word(&self, addr: u64) -> *mut u32 {
        assert!(addr.is_multiple_of(4), "unaligned word at {addr:#x}");
        let off = self.offset(addr, 4);
        self.ptr.wrapping_add(off).cast()
    }

    /// The u32 at guest-physical `addr` (aligned).
    pub fn read_u32(&self, addr: u64) -> u32 {
        let p = self.word(addr);
        // SAFETY: in bounds and aligned (checked by `word`); volatile, no
        // reference into memory the guest writes.
        unsafe { p.read_volatile() }
    }

    /// Writes the u32 at guest-physical `addr` (aligned).
    pub fn write_u32(&self, addr: u64, value: u32) {
        let p = self.word(addr);
        // SAFETY: as in `read_u32`.
        unsafe { p.write_volatile(value) }
    }

    /// Copies `bytes` to guest-physical `addr` (while the guest's CPUs do
    /// not run: nothing else writes).
    pub fn load(&self, addr: u64, bytes: &[u8]) {
        let dst = self.ptr.wrapping_add(self.offset(addr, bytes.len()));
        // SAFETY: `dst..dst + len` is inside the mapping (checked by
        // `offset`), no reference into it exists, and `bytes` is the test's
        // own memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }

    /// Clears `len` bytes at guest-physical `addr` (as `load`).
    pub fn zero(&self, addr: u64, len: usize) {
        let dst = self.ptr.wrapping_add(self.offset(addr, len));
        // SAFETY: as in `load`.
        unsafe { std::ptr::write_bytes(dst, 0, len) }
    }

    /// The guest-physical ranges `(start, end)` of the file that hold data:
    /// the pages written since it was created (a sparse file's holes were
    /// never touched), from `lseek(SEEK_DATA/SEEK_HOLE)`.
    pub fn written_ranges(&self) -> Vec<(u64, u64)> {
        let fd = self.file.as_raw_fd();
        let mut ranges = Vec::new();
        let mut at: libc::off_t = 0;
        loop {
            // SAFETY: lseek on an open fd; no memory is involved.
            let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
            if data < 0 {
                break; // ENXIO: no data beyond `at`
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole <= data {
                break;
            }
            ranges.push((self.base + data as u64, self.base + hole as u64));
            at = hole;
        }
        ranges
    }
}

impl Drop for SharedRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `create`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The hypervisor's side of a message (jailhouse_hypercall.h:175-183): clear
/// the reply, fence, write the message; then wait for the reply (`None`
/// after `timeout`). `comm_region` is the region's guest-physical address.
pub fn send_message(ram: &SharedRam, comm_region: u64, msg: u32, timeout: Duration) -> Option<u32> {
    ram.write_u32(comm_region + comm::REPLY_FROM_CELL, 0);
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    ram.write_u32(comm_region + comm::MSG_TO_CELL, msg);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let reply = ram.read_u32(comm_region + comm::REPLY_FROM_CELL);
        if reply != 0 {
            return Some(reply);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Deterministic pseudo-random bytes (xorshift), so mismatches are
/// reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One `memory_region_ops_read/write` line of QEMU's trace (`cpu N mr P
/// addr A value V size S name 'NAME'`). `addr` is relative to the root of
/// the region's tree: the guest-physical address for devices mapped into
/// system memory, the bus address for PCI BARs, the offset for regions
/// mapped through an alias only (e.g. the PCIe ECAM window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceAccess<'a> {
    pub write: bool,
    /// The CPU index; -1 for an access made by a device model.
    pub cpu: i64,
    pub addr: u64,
    pub value: u64,
    pub size: u64,
    pub name: &'a str,
}

impl<'a> TraceAccess<'a> {
    /// Parses one trace line; `None` for other lines.
    pub fn parse(line: &'a str) -> Option<TraceAccess<'a>> {
        let (write, rest) = if let Some(r) = line.strip_prefix("memory_region_ops_write ") {
            (true, r)
        } else {
            (false, line.strip_prefix("memory_region_ops_read ")?)
        };
        let field = |key: &str| rest.split_whitespace().skip_while(|w| *w != key).nth(1);
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        Some(TraceAccess {
            write,
            cpu: field("cpu")?.parse().ok()?,
            addr: hex(field("addr")?)?,
            value: hex(field("value")?)?,
            size: field("size")?.parse().ok()?,
            name: rest.split("name '").nth(1)?.trim_end_matches('\''),
        })
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// The ivshmem device's BARs as the guest placed them, from its console
/// ("pci 00:03.0: BAR0 32-bit at 0xc0000000 size 0x100 …"): `(start, end)`.
/// These are the cell's only MMIO regions of the device: on Jailhouse the
/// shared memory is plain memory of the cell (reads and writes of the
/// writable sections never trap, in QEMU they are RAM and never traced), so
/// a traced access to a section is a write into a read-only one.
pub fn bar_ranges(serial: &str) -> Vec<(u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    serial
        .lines()
        .filter(|l| l.starts_with("pci ") && l.contains(": BAR"))
        .filter_map(|l| {
            let start = hex(l.split(" at ").nth(1)?.split_whitespace().next()?)?;
            let size = hex(l.split(" size ").nth(1)?.split_whitespace().next()?)?;
            Some((start, start.checked_add(size)?))
        })
        .collect()
}

/// The PCI function the guest drives, from its first "pci BB:DD.F: …"
/// console line: `bus << 8 | dev << 3 | fn`.
pub fn console_bdf(serial: &str) -> Option<u32> {
    serial.lines().find_map(|l| {
        let b = l.strip_prefix("pci ")?.get(..7)?;
        let bus = u32::from_str_radix(b.get(0..2)?, 16).ok()?;
        let dev = u32::from_str_radix(b.get(3..5)?, 16).ok()?;
        let func = b.get(6..7)?.parse::<u32>().ok()?;
        Some(bus << 8 | dev << 3 | func)
    })
}

/// The host side of a cell's link: a network namespace, `ivshmem-server`
/// in a fresh directory, and (after [`HostLink::start_bridge`])
/// `ivnet-bridge` with a TAP in the namespace carrying `host_ip`. The
/// traffic checks talk to `guest_ip`; their errors carry the bridge's and
/// the server's logs (the caller adds the cell's).
pub struct HostLink {
    bridge: Option<Proc>,
    pub server: Server,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    tap: String,
    host_ip: String,
    guest_ip: String,
}

/// How long a TCP echo may take to connect or to deliver its bytes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

impl HostLink {
    /// The namespace (`ns_tag`) and the server (with `server_args`); no
    /// bridge yet.
    pub fn new(
        ns_tag: &str,
        server_args: &[&str],
        tap: &str,
        host_ip: &str,
        guest_ip: &str,
    ) -> HostLink {
        netns::require_root();
        netns::ensure_base_tools();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ivnet-{ns_tag}"))
            .tempdir()
            .unwrap();
        let ns = Netns::new(ns_tag);
        let server = Server::start(dir.path(), server_args);
        HostLink {
            bridge: None,
            server,
            ns,
            dir,
            tap: tap.into(),
            host_ip: host_ip.into(),
            guest_ip: guest_ip.into(),
        }
    }

    /// Starts the bridge (fresh logs) with a TAP of `mtu` and gives the TAP
    /// its address (/24). Carrier comes when the guest's side is up.
    pub fn start_bridge(&mut self, mtu: u32) -> Result<(), String> {
        let bridge = BridgeSpec {
            name: "bridge".into(),
            socket: self.server.socket.clone(),
            netns: self.ns.name().into(),
            tap: self.tap.clone(),
            mtu,
            extra: vec![],
        }
        .spawn_fresh(self.dir.path());
        let started =
            self.bridge
                .insert(bridge)
                .wait_stderr("TAP, MTU", 1, Duration::from_secs(30));
        started.map_err(|e| format!("the bridge did not start: {e:?}\n{}", self.logs()))?;
        netns::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            self.ns.has_link(&self.tap)
        })
        .map_err(|_| format!("no {}\n{}", self.tap, self.logs()))?;
        self.ns.add_addr(&self.tap, &format!("{}/24", self.host_ip));
        Ok(())
    }

    /// The bridge (after [`HostLink::start_bridge`]).
    pub fn bridge(&self) -> &Proc {
        self.bridge.as_ref().expect("the bridge was started")
    }

    /// The bridge's and the server's logs.
    pub fn logs(&self) -> String {
        format!(
            "--- bridge ---\n{}\n--- server ---\n{}",
            self.bridge
                .as_ref()
                .map(|b| tail(&b.stderr()))
                .unwrap_or_default(),
            tail(&self.server.proc.stderr())
        )
    }

    /// Waits until the TAP's carrier is `on`; returns how long it took.
    pub fn wait_carrier(&self, on: bool, timeout: Duration) -> Result<Duration, String> {
        self.ns
            .wait_carrier(&self.tap, on, timeout)
            .map_err(|e| format!("{e}\n{}", self.logs()))
    }

    /// `count` pings of `size` payload bytes (ping's default 56 if `None`),
    /// none lost.
    pub fn ping(&self, count: u32, size: Option<u32>) -> Result<(), String> {
        let count = count.to_string();
        let size = size.unwrap_or(56).to_string();
        let out = self.ns.try_run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count,
            "-s",
            &size,
            "-i",
            "0.2",
            "-W",
            "5",
            &self.guest_ip,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(" 0% packet loss") {
            Ok(())
        } else {
            Err(format!("ping -s {size} failed:\n{text}\n{}", self.logs()))
        }
    }

    /// UDP echo (port 7) of one datagram of each size, byte-exact (three
    /// tries each: UDP may drop).
    pub fn udp_echo(&self, sizes: &[usize]) -> Result<(), String> {
        let sock = in_netns(self.ns.name(), || UdpSocket::bind("0.0.0.0:0").unwrap());
        sock.connect((self.guest_ip.as_str(), 7))
            .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 65536];
        for &size in sizes {
            let data = pattern(size, size as u64);
            let mut got = None;
            for _attempt in 0..3 {
                sock.send(&data).map_err(|e| format!("UDP send: {e}"))?;
                if let Ok(n) = sock.recv(&mut buf) {
                    got = Some(n);
                    break;
                }
            }
            let n = got.ok_or_else(|| format!("no UDP echo of {size} bytes\n{}", self.logs()))?;
            if buf[..n] != data[..] {
                return Err(format!(
                    "the UDP echo of {size} bytes differs ({n} bytes back)"
                ));
            }
        }
        Ok(())
    }

    /// TCP echo (port 7) of `len` bytes, byte-exact.
    pub fn tcp_echo(&self, len: usize) -> Result<(), String> {
        let data = pattern(len, 42);
        let guest: std::net::Ipv4Addr = self.guest_ip.parse().map_err(|e| format!("{e}"))?;
        let mut stream = in_netns(self.ns.name(), || {
            let addr = std::net::SocketAddr::from((guest, 7));
            std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        })
        .map_err(|e| format!("TCP connect: {e}\n{}", self.logs()))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let echoed = std::thread::scope(|s| {
            let r = s.spawn(move || {
                let mut got = Vec::with_capacity(len);
                reader.read_to_end(&mut got).map(|_| got)
            });
            let sent = stream
                .write_all(&data)
                .and_then(|()| stream.shutdown(Shutdown::Write));
            let got = r.join().unwrap();
            sent.and(got)
        })
        .map_err(|e| format!("the TCP echo: {e}\n{}", self.logs()))?;
        if echoed == data {
            Ok(())
        } else {
            Err(format!(
                "the TCP echo of {len} bytes differs ({} bytes back)\n{}",
                echoed.len(),
                self.logs()
            ))
        }
    }
}

/// The string `jailhouse cell load … -s "<s>" -a <address>` copies: the
/// string and its NUL (tools/jailhouse.c: strlen + 1 bytes).
pub fn load_string(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// What differs between the rigs: how the machine starts and the cell is
/// loaded, where the comm region is and what its platform part says, and
/// what Jailhouse would kill the cell for. The rest of a [`Cell`]'s life is
/// the same on both.
pub trait Rig: Sized {
    /// The ivshmem device the rig can give the cell (`()` where it has one).
    type Device: Copy;
    /// The comm region's guest-physical address.
    const COMM_REGION: u64;

    /// `jailhouse cell load` (the image, and `cmdline` as [`load_string`]
    /// copies it) and `cell start` (the comm region page `comm`), with the
    /// ivshmem device `link.1` on the server socket `link.0` if given:
    /// QEMU running as the cell, and the cell's RAM.
    fn start(
        link: Option<(&Path, Self::Device)>,
        cmdline: &str,
        comm: &[u8],
    ) -> (QemuProcess, SharedRam);

    /// The comm region page as `cell start` fills it for the rig's cell.
    fn comm_region_page() -> Vec<u8>;

    /// What Jailhouse would have killed `cell` for (the rig's checker of
    /// QEMU's trace and logs; QEMU has stopped).
    fn violations(cell: &Cell<Self>) -> Vec<String>;
}

/// QEMU started by rig `R` as a Jailhouse cell.
pub struct Cell<R: Rig> {
    pub process: QemuProcess,
    /// The cell's RAM and its comm region.
    pub ram: SharedRam,
    rig: PhantomData<R>,
}

impl<R: Rig> Cell<R> {
    /// [`Rig::start`].
    pub fn start(link: Option<(&Path, R::Device)>, cmdline: &str, comm: &[u8]) -> Cell<R> {
        let (process, ram) = R::start(link, cmdline, comm);
        Cell {
            process,
            ram,
            rig: PhantomData,
        }
    }

    /// A cell without a link, with `cmdline` and the rig's comm region.
    pub fn start_alone(cmdline: &str) -> Cell<R> {
        Cell::start(None, cmdline, &R::comm_region_page())
    }

    pub fn serial(&self) -> String {
        self.process.serial()
    }

    /// QEMU's `-D` log (`trace.log` in its directory: the trace events and
    /// `-d` output the rig's checker reads). QEMU creates it at startup, so
    /// a missing log is a broken rig, never a clean run (the EL2 rig reads
    /// an empty log as "no guest errors").
    pub fn qemu_log(&self) -> String {
        let path = self.process.dir().join("trace.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn cell_state(&self) -> u32 {
        self.ram.read_u32(R::COMM_REGION + comm::CELL_STATE)
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "--- cell serial:\n{}\n--- qemu stderr:\n{}\n--- cell_state {}",
            tail(&self.serial()),
            self.process.qemu_stderr(),
            self.cell_state()
        )
    }

    /// The hypervisor's side of message `msg` ([`send_message`]).
    pub fn send_message(&self, msg: u32) -> Option<u32> {
        send_message(&self.ram, R::COMM_REGION, msg, LINK_TIMEOUT)
    }

    /// Waits until a complete console line contains `needle` (fails early
    /// if QEMU exits first); returns the console's complete lines.
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> String {
        let ok = netns::wait_until(timeout, Duration::from_millis(20), || {
            self.process.serial_lines().contains(needle) || self.process.exit().is_some()
        });
        let serial = self.process.serial_lines();
        assert!(
            ok.is_ok() && serial.contains(needle),
            "no {needle:?} on the cell's console\n{}",
            self.diagnostics()
        );
        serial
    }

    /// Waits until the guest has stopped itself (`cell_state` terminal).
    pub fn wait_cell_state(&mut self, timeout: Duration) -> u32 {
        let ok = netns::wait_until(timeout, Duration::from_millis(20), || {
            self.cell_state() != comm::CELL_RUNNING || self.process.exit().is_some()
        });
        assert!(ok.is_ok(), "the cell did not stop\n{}", self.diagnostics());
        self.cell_state()
    }

    /// Kills QEMU and fails on anything Jailhouse would have made fatal.
    pub fn stop_and_check(&mut self) {
        self.process.kill();
        let bad = R::violations(self);
        assert!(
            bad.is_empty(),
            "{} accesses a Jailhouse cell may not make:\n{}\n{}",
            bad.len(),
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
            self.diagnostics()
        );
    }
}

/// A rig's cell linked to the host: the [`HostLink`] and the cell, whose
/// logs every host-side failure carries.
pub struct LinkedCell<R: Rig> {
    pub host: HostLink,
    pub cell: Cell<R>,
    device: R::Device,
}

impl<R: Rig> LinkedCell<R> {
    /// The server (in `host`), the cell on it with `device`, [`CMDLINE`] and
    /// the rig's comm region, then, once the cell's console says `platform`,
    /// the bridge, as on a Jailhouse host where the cell starts while root's
    /// driver waits. Returns with the carrier on and the cell running.
    pub fn start(host: HostLink, device: R::Device, platform: &str) -> LinkedCell<R> {
        let link = Some((host.server.socket.as_path(), device));
        let mut cell = Cell::start(link, CMDLINE, &R::comm_region_page());
        cell.wait_serial(platform, LINK_TIMEOUT);
        let mut rig = LinkedCell { host, cell, device };
        let started = rig.host.start_bridge(MTU);
        rig.check(started);
        rig.wait_carrier(true);
        assert_eq!(rig.cell.cell_state(), comm::CELL_RUNNING, "{}", rig.logs());
        rig
    }

    /// The host's and the cell's logs.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.host.logs(), self.cell.diagnostics())
    }

    /// The result of a host-side step; on an error, with the cell's logs.
    pub fn check<T>(&self, r: Result<T, String>) -> T {
        r.unwrap_or_else(|e| panic!("{e}\n{}", self.cell.diagnostics()))
    }

    /// Waits until the TAP's carrier is `on`; returns how long it took.
    pub fn wait_carrier(&self, on: bool) -> Duration {
        self.check(self.host.wait_carrier(on, LINK_TIMEOUT))
    }

    /// [`HostLink::ping`], none lost.
    pub fn ping(&self, count: u32, size: Option<u32>) {
        self.check(self.host.ping(count, size));
    }

    /// [`HostLink::udp_echo`] of datagrams from 1 byte to the [`MTU`]'s
    /// largest.
    pub fn udp_echo(&self) {
        self.check(self.host.udp_echo(&[1, 100, 1472, 8000, MTU as usize - 28]));
    }

    /// [`HostLink::tcp_echo`] of `len` bytes.
    pub fn tcp_echo(&self, len: usize) {
        self.check(self.host.tcp_echo(len));
    }

    /// The end of a linked cell's life and a new one: RECONFIG_COMPLETED is
    /// received and an unknown message answered UNKNOWN, the link still
    /// carrying pings; SHUTDOWN_REQUEST takes the link down (the bridge's
    /// carrier drops) before the cell approves it, and the cell has not
    /// failed (the hypervisor, not the cell, writes SHUT_DOWN once it has
    /// parked the CPU: `cell_set_loadable`); the cell stops with nothing
    /// Jailhouse would have killed it for. Then `cell load` + `cell start`
    /// again: a fresh cell relinks and answers pings, and stops as cleanly.
    pub fn messages_shutdown_and_restart(&mut self) {
        // Informational and unknown messages.
        let reply = self.cell.send_message(comm::MSG_RECONFIG_COMPLETED);
        assert_eq!(reply, Some(comm::REPLY_RECEIVED), "{}", self.logs());
        let reply = self.cell.send_message(0x77);
        assert_eq!(reply, Some(comm::REPLY_UNKNOWN), "{}", self.logs());
        self.ping(1, None);

        // SHUTDOWN_REQUEST: the link goes down first, then the approval.
        let reply = self.cell.send_message(comm::MSG_SHUTDOWN_REQUEST);
        assert_eq!(reply, Some(comm::REPLY_REQUEST_APPROVED), "{}", self.logs());
        let down = self.wait_carrier(false);
        eprintln!("carrier off {down:?} after the approval");
        let serial = self
            .cell
            .wait_serial("comm: shutdown approved", LINK_TIMEOUT);
        let reset = serial.find("link: carrier off");
        let approved = serial.find("comm: shutdown approved");
        assert!(
            reset.is_some() && approved.is_some() && reset < approved,
            "the link must go down before the approval\n{serial}"
        );
        let state = self.cell.cell_state();
        assert!(
            matches!(state, comm::CELL_RUNNING | comm::CELL_SHUT_DOWN),
            "cell_state {state} after the approval\n{}",
            self.logs()
        );
        self.cell.stop_and_check();

        // `cell load` + `cell start` again: a fresh cell relinks.
        let link = Some((self.host.server.socket.as_path(), self.device));
        self.cell = Cell::start(link, CMDLINE, &R::comm_region_page());
        self.wait_carrier(true);
        self.ping(3, None);
        self.cell.stop_and_check();
    }
}

/// A self-test that passes ends the cell with SHUT_DOWN, one that panics
/// with FAILED, each saying so on the console; neither makes an access or
/// takes an exit Jailhouse would kill the cell for.
pub fn exits_set_the_cell_state<R: Rig>() {
    let _serial = netns::serial();
    for (cmdline, state, says) in [
        (
            "ip=10.77.0.2/24 selftest=boot",
            comm::CELL_SHUT_DOWN,
            "selftest boot: ok",
        ),
        (
            "ip=10.77.0.2/24 selftest=panic",
            comm::CELL_FAILED,
            "PANIC: ",
        ),
    ] {
        let mut cell = Cell::<R>::start_alone(cmdline);
        assert_eq!(
            cell.wait_cell_state(LINK_TIMEOUT),
            state,
            "{cmdline}\n{}",
            cell.diagnostics()
        );
        cell.wait_serial(says, LINK_TIMEOUT);
        cell.stop_and_check();
    }
}

/// A command line that leaves no NUL in the image's buffer (`cmdline`):
/// the guest boots, says the command line is too long and fails the cell.
pub fn command_line_too_long_fails_the_cell<R: Rig>(cmdline: &str) {
    let _serial = netns::serial();
    let mut cell = Cell::<R>::start_alone(cmdline);
    assert_eq!(
        cell.wait_cell_state(LINK_TIMEOUT),
        comm::CELL_FAILED,
        "{}",
        cell.diagnostics()
    );
    cell.wait_serial("command line is too long", LINK_TIMEOUT);
    cell.stop_and_check();
}

/// A comm region of another ABI revision: FAILED_COMM_REV, nothing else.
pub fn wrong_comm_region_revision_fails_with_comm_rev<R: Rig>() {
    let _serial = netns::serial();
    let mut page = R::comm_region_page();
    page[comm::REVISION..comm::REVISION + 2]
        .copy_from_slice(&(comm::ABI_REVISION + 1).to_le_bytes());
    let mut cell = Cell::<R>::start(None, "ip=10.77.0.2/24", &page);
    assert_eq!(
        cell.wait_cell_state(LINK_TIMEOUT),
        comm::CELL_FAILED_COMM_REV,
        "{}",
        cell.diagnostics()
    );
    cell.stop_and_check();
}

#[cfg(test)]
mod tests {
    use super::TraceAccess;

    #[test]
    fn trace_lines_parse() {
        let a = TraceAccess::parse(
            "memory_region_ops_write cpu 0 mr 0x55d0 addr 0x8000000 value 0x13 size 4 name 'gicv3_dist'",
        )
        .unwrap();
        assert_eq!(
            a,
            TraceAccess {
                write: true,
                cpu: 0,
                addr: 0x800_0000,
                value: 0x13,
                size: 4,
                name: "gicv3_dist"
            }
        );
        let b = TraceAccess::parse(
            "memory_region_ops_read cpu -1 mr 0x1 addr 0x10 value 0x0 size 2 name 'x y'",
        )
        .unwrap();
        assert_eq!((b.write, b.cpu, b.name, b.end()), (false, -1, "x y", 0x12));
        assert_eq!(
            TraceAccess::parse("Taking exception 5 [IRQ] on CPU 0"),
            None
        );
    }
}
