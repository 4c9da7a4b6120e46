//! UIO backends: the ivshmem PCI device is driven from user space through
//! `/dev/uioN`. The profile is chosen from the PCI IDs in sysfs.
//!
//! **Jailhouse ivshmem 2.0** (`110a:4106`) on Jailhouse's `uio_ivshmem`: the
//! driver exports the regions as separate maps, found by name
//! (`registers`, `state_table`, `rw_section` if present, `input_sections`,
//! `output_section`); the state table and the input sections are read-only
//! (the hypervisor enforces it, and the driver refuses a writable mmap).
//! Interrupts are one-shot: the hypervisor clears INT_CONTROL when it
//! delivers one, so after each wakeup the bridge writes 1 to INT_CONTROL
//! and only then re-reads shared memory (an event while disabled is dropped,
//! not latched): [`LinkDevice::rearm`], called by the driver core before its
//! final re-check. The own state goes through the STATE register. When the
//! PCI configuration space is readable (CAP_SYS_ADMIN), the map sizes are
//! cross-checked against the vendor capability.
//!
//! Register access, the capability and layout-page parsing come from the
//! `ivshmem` crate; this module only finds the memory through UIO.
//!
//! **QEMU ivshmem-doorbell** (`1af4:1110`) on a generic PCI UIO driver with
//! MSI-X (e.g. `igb_uio`): BAR0 (registers) and BAR2 (the whole shared
//! window) are maps, identified by their physical address against the PCI
//! `resource` file. A driver that exports no maps (`uio_pci_generic`) works
//! too: the BARs are mapped through the PCI sysfs `resourceN` files, and as
//! such a driver enables no MSI-X (and ivshmem-doorbell has no INTx), the
//! bridge then polls every millisecond. The layout comes from the layout page in BAR2's first
//! 4 KiB. QEMU enforces no permissions, so the bridge write-protects the
//! layout page and the peer's section itself (`mprotect`). The own state is
//! stored into the own state-table entry, followed by a doorbell on vector 0
//! of the peer (`ivshmem::OwnStateEntry`). Interrupts are re-enabled through
//! the driver's `irqcontrol`.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use ivnet_driver::{LinkDevice, STATE_VECTOR, check_net_link, data_vector};
use ivnet_ring::LinkState;
use ivshmem::jailhouse::{self, VendorCapability};
use ivshmem::pci::ConfigImage;
use tracing::{debug, warn};

use super::jailhouse_link::JailhouseLink;
use super::qemu_window::QemuWindow;
use super::{Backend, BackendError, Wake, monotonic_us};
use crate::uio::{Access, PciIdentity, UioDevice, UioMap, msi_irq_count};

/// Jailhouse ivshmem 2.0 PCI IDs.
const JAILHOUSE_IDS: (u16, u16) = (0x110a, 0x4106);
/// QEMU ivshmem PCI IDs.
const QEMU_IDS: (u16, u16) = (0x1af4, 0x1110);

/// Opens `/dev/uioN` and picks the profile from the PCI IDs.
pub fn open(node: &Path) -> Result<Box<dyn Backend>, BackendError> {
    let dev = UioDevice::open(node)?;
    let id = PciIdentity::read(&dev.pci_dir())?;
    match (id.vendor, id.device) {
        JAILHOUSE_IDS => Ok(Box::new(JailhouseUio::new(dev, id)?)),
        QEMU_IDS => Ok(Box::new(QemuUio::new(dev, id)?)),
        (v, d) => Err(BackendError::Unsupported(format!(
            "{}: PCI device {v:04x}:{d:04x} is neither Jailhouse ivshmem 2.0 (110a:4106) nor QEMU ivshmem \
             (1af4:1110)",
            node.display()
        ))),
    }
}

/// Checks that a register map is writable and covers `len` bytes.
fn check_register_map(map: &UioMap, len: u64, node: &Path) -> Result<NonNull<u8>, BackendError> {
    match map.as_mut_ptr().and_then(NonNull::new) {
        Some(base) if map.len() as u64 >= len => Ok(base),
        _ => Err(BackendError::Unsupported(format!(
            "{}: register map is {} bytes (or not writable), needs {len}",
            node.display(),
            map.len()
        ))),
    }
}

/// The Jailhouse register block in a mapped BAR0.
fn jailhouse_registers(map: &UioMap) -> jailhouse::Registers<'_> {
    let base = NonNull::new(map.as_mut_ptr().expect("checked writable at open")).expect("mapped");
    // SAFETY: `map` is BAR0 as mapped by uio_ivshmem (UIO_MEM_PHYS, so
    // uncached), page-aligned, writable and at least 0x14 bytes long (checked
    // at open by `check_register_map`); it stays mapped for the borrow of
    // `map`, and nothing forms references into it.
    unsafe { jailhouse::Registers::new(base) }
}

/// The ivshmem-net link rule ([`check_net_link`]) with the device named in
/// the error. Returns (own ID, peer ID).
fn net_link(
    node: &Path,
    protocol: u16,
    max_peers: u32,
    id: u32,
) -> Result<(u16, u16), BackendError> {
    check_net_link(protocol, max_peers, id)
        .map_err(|e| BackendError::Unsupported(format!("{}: {e}", node.display())))
}

/// Cross-checks the UIO maps against the vendor capability in the PCI
/// configuration space, when it can be read (beyond the first 64 bytes it
/// needs CAP_SYS_ADMIN; without it the maps alone are trusted).
fn check_capability(
    pci_dir: &Path,
    node: &Path,
    max_peers: u32,
    id: u32,
    sizes: (u64, u64),
) -> Result<(), BackendError> {
    let config = match fs::read(pci_dir.join("config")) {
        Ok(c) if c.len() > 0x40 => c,
        Ok(_) | Err(_) => {
            debug!(
                "{}: PCI configuration space not readable beyond the header; trusting the UIO maps",
                node.display()
            );
            return Ok(());
        }
    };
    let image = ConfigImage::from_prefix(&config);
    let layout = VendorCapability::find(&image)
        .and_then(|cap| cap.validate(max_peers, id, None))
        .map_err(|e| {
            BackendError::Unsupported(format!("{}: vendor capability: {e}", node.display()))
        })?;
    let (state_table, output) = sizes;
    if layout.state_table_size != state_table || layout.output_section_size != output {
        return Err(BackendError::Unsupported(format!(
            "{}: the UIO maps (state table {state_table:#x}, output section {output:#x}) do not match the vendor \
             capability (state table {:#x}, output sections {:#x})",
            node.display(),
            layout.state_table_size,
            layout.output_section_size
        )));
    }
    Ok(())
}

/// Jailhouse ivshmem 2.0 on `uio_ivshmem`.
pub struct JailhouseUio {
    /// Registers and state table; first, so that it is dropped (interrupts
    /// off) before the maps it points into.
    link: JailhouseLink,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "kept mapped for `link`; the tests write it")
    )]
    regs: UioMap,
    _state_table: UioMap,
    inputs: UioMap,
    output: UioMap,
    id: u16,
    peer: u16,
    section_len: usize,
    data_vector: u16,
    vectors: usize,
    last_count: Option<u32>,
    dev: UioDevice,
}

impl JailhouseUio {
    fn new(dev: UioDevice, pci: PciIdentity) -> Result<Self, BackendError> {
        let node = dev.node().to_owned();
        let regs = dev.map(dev.find_map("registers")?, Access::ReadWrite)?;
        check_register_map(&regs, 0x14, &node)?;
        let r = jailhouse_registers(&regs);
        let protocol = (pci.class & 0xffff) as u16;
        let (max_peers, raw_id) = (r.max_peers(), r.id());
        let (id, peer) = net_link(&node, protocol, max_peers, raw_id)?;
        let state_table = dev.map(dev.find_map("state_table")?, Access::ReadOnly)?;
        if state_table.len() < 8 {
            return Err(BackendError::Unsupported(format!(
                "{}: state table of {} bytes cannot hold two entries",
                node.display(),
                state_table.len()
            )));
        }
        let out_info = dev.find_map("output_section")?.clone();
        let in_info = dev.find_map("input_sections")?.clone();
        let section_len = out_info.size as usize;
        if in_info.size < 2 * out_info.size {
            return Err(BackendError::Unsupported(format!(
                "{}: input sections ({:#x} bytes) do not hold two output sections of {:#x} bytes",
                node.display(),
                in_info.size,
                out_info.size
            )));
        }
        if out_info.addr != in_info.addr + u64::from(id) * out_info.size {
            return Err(BackendError::Unsupported(format!(
                "{}: output section at {:#x} is not section {id} of the input sections at {:#x}",
                node.display(),
                out_info.addr,
                in_info.addr
            )));
        }
        check_capability(
            &dev.pci_dir(),
            &node,
            max_peers,
            raw_id,
            (state_table.len() as u64, out_info.size),
        )?;
        let output = dev.map(&out_info, Access::ReadWrite)?;
        let inputs = dev.map(&in_info, Access::ReadOnly)?;
        let vectors = msi_irq_count(&dev.pci_dir());
        let data_vector = data_vector(vectors as u32);
        let (regs_ptr, table_ptr) = (
            NonNull::new(regs.as_mut_ptr().expect("checked writable")).expect("mapped"),
            NonNull::new(state_table.as_ptr().cast_mut()).expect("mapped"),
        );
        // SAFETY: BAR0 mapped uncached, writable, >= 0x14 bytes
        // (`check_register_map`); the state table readable, page-aligned,
        // >= 8 bytes (checked); both maps live in the same `JailhouseUio`,
        // dropped after `link`. Interrupts go on here; one-shot mode is set
        // by uio_ivshmem at probe.
        let link = unsafe { JailhouseLink::new(regs_ptr, table_ptr, peer) };
        Ok(JailhouseUio {
            link,
            regs,
            _state_table: state_table,
            inputs,
            output,
            id,
            peer,
            section_len,
            data_vector,
            vectors,
            last_count: None,
            dev,
        })
    }
}

impl Backend for JailhouseUio {
    fn describe(&self) -> String {
        format!(
            "{}: Jailhouse ivshmem 2.0 on {}, peer {} of 2 (other peer {}), output sections {:#x} bytes, {} MSI-X \
             vectors (data on vector {})",
            self.dev.node().display(),
            self.dev.driver_name(),
            self.id,
            self.peer,
            self.section_len,
            self.vectors,
            self.data_vector
        )
    }
    fn own_id(&self) -> u16 {
        self.id
    }
    fn peer_id(&self) -> u16 {
        self.peer
    }
    fn section_len(&self) -> usize {
        self.section_len
    }
    fn own_section(&self) -> *mut u8 {
        self.output
            .as_mut_ptr()
            .expect("output section is mapped read-write")
    }
    fn peer_section(&self) -> *const u8 {
        // `peer * section_len + section_len <= inputs.len()` (checked at open).
        self.inputs
            .as_ptr()
            .wrapping_add(usize::from(self.peer) * self.section_len)
    }
    fn wakeup_fds(&self) -> Vec<RawFd> {
        vec![self.dev.as_raw_fd()]
    }
    fn on_wakeup(&mut self, _fd: RawFd) -> Result<Wake, BackendError> {
        let doorbells = take_events(&self.dev, &mut self.last_count)?;
        Ok(Wake {
            doorbells,
            membership: false,
        })
    }
}

jailhouse_link_device!(JailhouseUio);

/// QEMU ivshmem-doorbell on a generic MSI-X UIO driver.
pub struct QemuUio {
    /// BAR0 and BAR2, mapped for `link` (which holds pointers into them).
    _regs: UioMap,
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "kept mapped for `link`; the tests read its address"
        )
    )]
    window: UioMap,
    /// A second view of BAR2 in which only the page of the own state-table
    /// entry is accessible (read-write): QEMU has no STATE register, so the
    /// bridge stores its state itself, while `window` maps the whole state
    /// table read-only.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "kept mapped for `link`; the tests read its address"
        )
    )]
    state_view: UioMap,
    /// The link over `regs`, `window` and `state_view`.
    link: QemuWindow,
    irqs: usize,
    last_count: Option<u32>,
    dev: UioDevice,
}

/// Start addresses of the BARs from a PCI device's `resource` file (one line
/// `start end flags` per resource).
fn bar_starts(pci_dir: &Path) -> Vec<u64> {
    let Ok(text) = fs::read_to_string(pci_dir.join("resource")) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0)
        })
        .collect()
}

impl QemuUio {
    fn new(dev: UioDevice, pci: PciIdentity) -> Result<Self, BackendError> {
        let node = dev.node().to_owned();
        if pci.revision != 1 {
            return Err(BackendError::Unsupported(format!(
                "{}: QEMU ivshmem revision {} (need 1: ivshmem-doorbell of QEMU >= 2.6)",
                node.display(),
                pci.revision
            )));
        }
        let bars = bar_starts(&dev.pci_dir());
        // A UIO map for the BAR (igb_uio: one per memory BAR, named BARn),
        // matched by physical address or name; else the PCI sysfs resource
        // file (uio_pci_generic exports no maps).
        let map_bar = |bar: u8, names: [&'static str; 2]| -> Result<UioMap, BackendError> {
            let info = dev
                .maps()
                .iter()
                .find(|m| {
                    bars.get(usize::from(bar))
                        .is_some_and(|a| *a != 0 && *a == m.addr)
                })
                .or_else(|| dev.maps().iter().find(|m| names.contains(&m.name.as_str())));
            match info {
                Some(info) => Ok(dev.map(info, Access::ReadWrite)?),
                None => dev.map_pci_resource(bar, Access::ReadWrite).map_err(|e| {
                    BackendError::Unsupported(format!(
                        "{}: no UIO map for BAR{bar}, and the PCI resource file cannot be mapped: {e}",
                        node.display()
                    ))
                }),
            }
        };
        let regs = map_bar(0, ["BAR0", "bar0"])?;
        check_register_map(&regs, 0x10, &node)?;
        let window = map_bar(2, ["BAR2", "bar2"])?;
        let state_view = map_bar(2, ["BAR2", "bar2"])?;
        let ptr = |m: &UioMap| {
            m.as_mut_ptr().and_then(NonNull::new).ok_or_else(|| {
                BackendError::Unsupported(format!("{}: BAR not mapped writable", node.display()))
            })
        };
        // SAFETY: `regs` is BAR0 (>= 0x10 bytes, checked), `window` and
        // `state_view` two writable maps of all of BAR2; all three live in
        // the same `QemuUio` as the window, and nothing references them.
        let link = unsafe {
            QemuWindow::new(
                &node.display().to_string(),
                ptr(&regs)?,
                ptr(&window)?,
                ptr(&state_view)?,
                window.len(),
            )
        }?;
        let irqs = msi_irq_count(&dev.pci_dir());
        let me = QemuUio {
            _regs: regs,
            window,
            state_view,
            link,
            irqs,
            last_count: None,
            dev,
        };
        if let Err(e) = me.dev.irqcontrol(1) {
            warn!(
                "{}: enabling interrupts through irqcontrol failed ({e}); relying on the driver",
                node.display()
            );
        }
        Ok(me)
    }
}

impl Backend for QemuUio {
    fn describe(&self) -> String {
        format!(
            "{}: QEMU ivshmem-doorbell on {}, {}, {} MSI-X interrupts allocated",
            self.dev.node().display(),
            self.dev.driver_name(),
            self.link.summary(),
            self.irqs
        )
    }
    fn own_id(&self) -> u16 {
        self.link.id()
    }
    fn peer_id(&self) -> u16 {
        self.link.peer()
    }
    fn section_len(&self) -> usize {
        self.link.section_len()
    }
    fn own_section(&self) -> *mut u8 {
        self.link.own_section()
    }
    fn peer_section(&self) -> *const u8 {
        self.link.peer_section()
    }
    fn wakeup_fds(&self) -> Vec<RawFd> {
        vec![self.dev.as_raw_fd()]
    }
    fn on_wakeup(&mut self, _fd: RawFd) -> Result<Wake, BackendError> {
        let doorbells = take_events(&self.dev, &mut self.last_count)?;
        Ok(Wake {
            doorbells,
            membership: false,
        })
    }
    fn forced_poll(&self) -> Option<Duration> {
        // ivshmem-doorbell interrupts only through MSI-X. A driver without
        // MSI-X (uio_pci_generic) delivers nothing: poll state and rings. A
        // driver with one MSI-X interrupt misses data doorbells on vector 1
        // when the link has two vectors: poll for data.
        if self.irqs == 0 {
            warn!(
                "{}: {} enabled no MSI-X interrupts (ivshmem-doorbell has no INTx); polling every 1 ms",
                self.dev.node().display(),
                self.dev.driver_name()
            );
            return Some(Duration::from_millis(1));
        }
        (self.link.data_vector() != STATE_VECTOR && self.irqs < 2).then(|| {
            warn!(
                "{}: the UIO driver delivers {} MSI-X interrupt(s) but data doorbells use vector {}; polling every 1 ms",
                self.dev.node().display(),
                self.irqs,
                self.link.data_vector()
            );
            Duration::from_millis(1)
        })
    }
}

impl LinkDevice for QemuUio {
    type Error = BackendError;

    fn peer_state(&self) -> u32 {
        self.link.peer_state()
    }

    fn publish_state(&mut self, state: LinkState) -> Result<(), BackendError> {
        self.link.publish_state(state)
    }

    fn vectors(&self) -> u32 {
        self.link.vectors()
    }

    fn ring(&mut self, vector: u16) -> Result<(), BackendError> {
        self.link.ring(vector)
    }

    fn rearm(&mut self) {
        // Generic UIO drivers mask the interrupt in their handler; unmask it
        // before the driver re-checks shared memory.
        let _ = self.dev.irqcontrol(1);
    }

    fn now_us(&self) -> u64 {
        monotonic_us()
    }
}

/// Reads the UIO event counter (non-blocking) and returns how many
/// interrupts arrived since the last read (all vectors are coalesced into
/// one counter by the UIO drivers).
fn take_events(dev: &UioDevice, last_count: &mut Option<u32>) -> Result<u64, BackendError> {
    let count = dev.take_event().map_err(|source| BackendError::Io {
        what: "reading the UIO event count",
        source,
    })?;
    let doorbells = match (count, *last_count) {
        (Some(c), Some(last)) => u64::from(c.wrapping_sub(last)),
        (Some(_), None) => 1,
        (None, _) => 0,
    };
    if count.is_some() {
        *last_count = count;
    }
    Ok(doorbells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivshmem::jailhouse::IntControl;
    use ivshmem::layout::{LayoutPage, PROTOCOL_NET};
    use std::path::PathBuf;

    const SECTION: u64 = 0x4000;
    // BAR0 register offsets, to read back what the profiles wrote.
    const REG_INT_CONTROL: usize = 0x08;
    const REG_DOORBELL: usize = 0x0c;
    const REG_STATE: usize = 0x10;
    const QEMU_REG_DOORBELL: usize = 0x0c;

    /// A fake `uio_ivshmem` device: sysfs attributes in a temp dir and a
    /// regular file standing in for `/dev/uioN` (map N at offset N pages).
    struct Fake {
        _dir: tempfile::TempDir,
        class: PathBuf,
        node: PathBuf,
    }

    fn fake_jailhouse(
        id: u32,
        max_peers: u32,
        class: &str,
        msi: usize,
        out_addr_shift: u64,
    ) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let class_dir = dir.path().join("class");
        let dev = class_dir.join("uio3");
        let base = 0x1_0000_0000u64;
        let maps = [
            ("registers", 0xfeb0_0000, 0x1000),
            ("state_table", base, 0x1000),
            ("input_sections", base + 0x1000, 2 * SECTION),
            (
                "output_section",
                base + 0x1000 + u64::from(id) * SECTION + out_addr_shift,
                SECTION,
            ),
        ];
        for (i, (name, addr, size)) in maps.iter().enumerate() {
            let m = dev.join("maps").join(format!("map{i}"));
            fs::create_dir_all(&m).unwrap();
            fs::write(m.join("name"), format!("{name}\n")).unwrap();
            fs::write(m.join("addr"), format!("{addr:#018x}\n")).unwrap();
            fs::write(m.join("size"), format!("{size:#x}\n")).unwrap();
            fs::write(m.join("offset"), "0x0\n").unwrap();
        }
        fs::write(dev.join("name"), "uio_ivshmem\n").unwrap();
        let pci = dev.join("device");
        fs::create_dir_all(pci.join("msi_irqs")).unwrap();
        for v in 0..msi {
            fs::write(pci.join("msi_irqs").join(format!("{}", 40 + v)), "msix\n").unwrap();
        }
        fs::write(pci.join("vendor"), "0x110a\n").unwrap();
        fs::write(pci.join("device"), "0x4106\n").unwrap();
        fs::write(pci.join("class"), format!("{class}\n")).unwrap();
        let node = dir.path().join("uio3");
        let mut image = vec![0u8; (3 * 0x1000 + 2 * SECTION) as usize];
        image[0..4].copy_from_slice(&id.to_ne_bytes());
        image[4..8].copy_from_slice(&max_peers.to_ne_bytes());
        // The peer's state-table entry says READY.
        let peer = 1 - id.min(1) as usize;
        image[0x1000 + 4 * peer..0x1000 + 4 * peer + 4].copy_from_slice(&2u32.to_ne_bytes());
        fs::write(&node, &image).unwrap();
        Fake {
            _dir: dir,
            class: class_dir,
            node,
        }
    }

    fn open_fake(f: &Fake) -> Result<JailhouseUio, BackendError> {
        let dev = UioDevice::open_with_sysfs(&f.node, &f.class)?;
        let pci = PciIdentity::read(&dev.pci_dir())?;
        JailhouseUio::new(dev, pci)
    }

    fn reg(f: &Fake, offset: usize) -> u32 {
        let image = fs::read(&f.node).unwrap();
        u32::from_ne_bytes(image[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn jailhouse_profile_maps_by_name_and_uses_the_registers() {
        let f = fake_jailhouse(1, 2, "0xff0001", 2, 0);
        let mut j = open_fake(&f).unwrap();
        assert_eq!(
            (j.own_id(), j.peer_id(), j.section_len()),
            (1, 0, SECTION as usize)
        );
        assert_eq!(j.peer_state(), 2);
        assert_eq!(reg(&f, REG_INT_CONTROL), 1, "interrupts enabled at open");
        j.publish_state(LinkState::Init).unwrap();
        assert_eq!(reg(&f, REG_STATE), 1);
        assert_eq!(data_vector(j.vectors()), 1);
        j.ring(1).unwrap();
        assert_eq!(reg(&f, REG_DOORBELL), 1, "vector 1 to peer 0");
        // A wakeup only consumes the event; the re-arm is the driver core's
        // call, before its re-check.
        jailhouse_registers(&j.regs).set_int_control(IntControl::empty());
        let fd = j.wakeup_fds()[0];
        j.on_wakeup(fd).unwrap();
        assert_eq!(reg(&f, REG_INT_CONTROL), 0, "not re-armed by the wakeup");
        j.rearm();
        assert_eq!(reg(&f, REG_INT_CONTROL), 1, "re-armed");
        assert!(j.describe().contains("Jailhouse"));
        drop(j);
        assert_eq!(reg(&f, REG_INT_CONTROL), 0, "interrupts off on close");

        // INTx (no MSI-X vectors): data goes on vector 0.
        let f = fake_jailhouse(0, 2, "0xff0001", 0, 0);
        let mut j = open_fake(&f).unwrap();
        assert_eq!(data_vector(j.vectors()), 0);
        j.ring(0).unwrap();
        assert_eq!(reg(&f, REG_DOORBELL), 1 << 16, "vector 0 to peer 1");
    }

    #[test]
    fn jailhouse_profile_refuses_what_is_not_an_ivshmem_net_link() {
        let err = |f: Fake| {
            open_fake(&f)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(fake_jailhouse(0, 3, "0xff0001", 2, 0)).contains("exactly 2"));
        assert!(err(fake_jailhouse(0, 2, "0xff0000", 2, 0)).contains("not ivshmem-net"));
        assert!(err(fake_jailhouse(2, 2, "0xff0001", 2, 0)).contains("own peer ID 2"));
        assert!(err(fake_jailhouse(1, 2, "0xff0001", 2, 0x1000)).contains("is not section 1"));
    }

    /// A configuration space with the vendor capability of an ivshmem-net
    /// device whose output sections are `output` bytes.
    fn config_space(output: u64) -> Vec<u8> {
        let mut c = ConfigImage::from_prefix(&[0; 256]);
        c.put(0x00, &0x4106_110au32.to_le_bytes());
        c.put(0x06, &0x0010u16.to_le_bytes()); // status: capability list
        c.put(0x08, &0xff00_0100u32.to_le_bytes());
        c.put(0x34, &[0x40]);
        c.put(0x40, &[0x09, 0x00, 0x20, 0x00]);
        c.put(0x44, &0x1000u32.to_le_bytes());
        c.put(0x48, &0u64.to_le_bytes());
        c.put(0x50, &output.to_le_bytes());
        c.put(0x58, &0x1_0000_0000u64.to_le_bytes());
        c.0.to_vec()
    }

    #[test]
    fn jailhouse_profile_cross_checks_the_vendor_capability() {
        let f = fake_jailhouse(0, 2, "0xff0001", 2, 0);
        let pci = f.class.join("uio3/device");
        fs::write(pci.join("config"), config_space(SECTION)).unwrap();
        open_fake(&f).unwrap();
        fs::write(pci.join("config"), config_space(2 * SECTION)).unwrap();
        let e = open_fake(&f).err().unwrap().to_string();
        assert!(e.contains("do not match the vendor capability"), "{e}");
        // Only the 64-byte header is readable (no CAP_SYS_ADMIN): the maps
        // alone are trusted.
        fs::write(pci.join("config"), &config_space(2 * SECTION)[..64]).unwrap();
        open_fake(&f).unwrap();
    }
    /// A fake QEMU ivshmem-doorbell device under a generic UIO driver: map0
    /// = BAR0 (registers), map1 = BAR2 (1 MiB window with a layout page).
    fn fake_qemu(ivposition: u32, page: [u8; LayoutPage::ENCODED_LEN]) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let class_dir = dir.path().join("class");
        let dev = class_dir.join("uio5");
        let (bar0, bar2) = (0xfe00_0000u64, 0x80_0000_0000u64);
        for (i, (name, addr, size)) in [("BAR0", bar0, 0x1000u64), ("BAR2", bar2, 0x10_0000)]
            .iter()
            .enumerate()
        {
            let m = dev.join("maps").join(format!("map{i}"));
            fs::create_dir_all(&m).unwrap();
            fs::write(m.join("name"), format!("{name}\n")).unwrap();
            fs::write(m.join("addr"), format!("{addr:#018x}\n")).unwrap();
            fs::write(m.join("size"), format!("{size:#x}\n")).unwrap();
        }
        fs::write(dev.join("name"), "igb_uio\n").unwrap();
        let pci = dev.join("device");
        fs::create_dir_all(&pci).unwrap();
        fs::write(pci.join("vendor"), "0x1af4\n").unwrap();
        fs::write(pci.join("device"), "0x1110\n").unwrap();
        fs::write(pci.join("class"), "0x050000\n").unwrap();
        fs::write(pci.join("revision"), "0x01\n").unwrap();
        let z = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        let resource = format!(
            "{bar0:#018x} {:#018x} 0x0000000000040200\n0x00000000fe001000 0x00000000fe001fff 0x0000000000040200\n\
             {bar2:#018x} {:#018x} 0x000000000014220c\n{z}{z}{z}",
            bar0 + 0xff,
            bar2 + 0xf_ffff
        );
        fs::write(pci.join("resource"), resource).unwrap();
        let node = dir.path().join("uio5");
        let mut image = vec![0u8; 0x1000 + 0x10_0000];
        image[8..12].copy_from_slice(&ivposition.to_ne_bytes());
        image[0x1000..0x1000 + page.len()].copy_from_slice(&page);
        fs::write(&node, &image).unwrap();
        Fake {
            _dir: dir,
            class: class_dir,
            node,
        }
    }

    fn open_fake_qemu(f: &Fake) -> Result<QemuUio, BackendError> {
        let dev = UioDevice::open_with_sysfs(&f.node, &f.class)?;
        let pci = PciIdentity::read(&dev.pci_dir())?;
        QemuUio::new(dev, pci)
    }

    /// Permissions of the mapping that contains `addr`, from /proc/self/maps.
    fn perms_at(addr: usize) -> String {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            if (lo..hi).contains(&addr) {
                return rest[..4].to_owned();
            }
        }
        panic!("{addr:#x} not mapped");
    }

    #[test]
    fn qemu_profile_reads_the_layout_page_and_protects_the_peer() {
        let page = LayoutPage::new(PROTOCOL_NET, 2, 2, 0x1000, 0, 0x7f000).encode();
        let f = fake_qemu(1, page);
        let mut q = open_fake_qemu(&f).unwrap();
        assert_eq!((q.own_id(), q.peer_id(), q.section_len()), (1, 0, 0x7f000));
        assert_eq!(
            q.own_section() as usize - q.window.as_ptr() as usize,
            0x2000 + 0x7f000
        );
        assert_eq!(
            q.peer_section() as usize - q.window.as_ptr() as usize,
            0x2000
        );
        // The layout page, the state table and the peer's section are
        // read-only, the own section writable; the state view leaves only
        // the page of the own state entry accessible, read-write.
        assert_eq!(perms_at(q.window.as_ptr() as usize), "r--s");
        assert_eq!(perms_at(q.window.as_ptr() as usize + 0x1000), "r--s");
        assert_eq!(perms_at(q.peer_section() as usize + 0x7e000), "r--s");
        assert_eq!(perms_at(q.own_section() as usize), "rw-s");
        assert_eq!(perms_at(q.state_view.as_ptr() as usize), "---s");
        assert_eq!(perms_at(q.state_view.as_ptr() as usize + 0x1000), "rw-s");
        assert_eq!(perms_at(q.state_view.as_ptr() as usize + 0x2000), "---s");
        q.publish_state(LinkState::Ready).unwrap();
        let image = fs::read(&f.node).unwrap();
        assert_eq!(
            u32::from_ne_bytes(image[0x1000 + 0x1004..0x1000 + 0x1008].try_into().unwrap()),
            2
        );
        assert_eq!(
            reg(&f, QEMU_REG_DOORBELL),
            0,
            "state change: vector 0 of peer 0"
        );
        assert_eq!(data_vector(q.vectors()), 1);
        q.ring(1).unwrap();
        assert_eq!(reg(&f, QEMU_REG_DOORBELL), 1, "data: vector 1 of peer 0");
        assert!(q.ring(2).is_err(), "the link has two vectors");
        assert_eq!(
            reg(&f, QEMU_REG_DOORBELL),
            1,
            "a refused ring left the device alone"
        );
        assert_eq!(q.peer_state(), 0);
        // No MSI-X interrupts for vector 1 behind a generic UIO driver: poll.
        assert_eq!(q.forced_poll(), Some(Duration::from_millis(1)));
    }

    /// Turns the igb_uio-style fake into a uio_pci_generic one: no maps,
    /// the BARs only as PCI sysfs resource files.
    fn without_maps(f: &Fake) -> (PathBuf, PathBuf) {
        let dev = f.class.join("uio5");
        fs::remove_dir_all(dev.join("maps")).unwrap();
        fs::write(dev.join("name"), "uio_pci_generic\n").unwrap();
        let image = fs::read(&f.node).unwrap();
        let (r0, r2) = (dev.join("device/resource0"), dev.join("device/resource2"));
        fs::write(&r0, &image[..0x100]).unwrap();
        fs::write(&r2, &image[0x1000..]).unwrap();
        (r0, r2)
    }

    #[test]
    fn qemu_profile_falls_back_to_pci_resources_and_polls_without_msix() {
        let page = LayoutPage::new(PROTOCOL_NET, 1, 2, 0x1000, 0, 0x7f000).encode();
        let f = fake_qemu(0, page);
        let (r0, r2) = without_maps(&f);
        let mut q = open_fake_qemu(&f).unwrap();
        assert_eq!((q.own_id(), q.peer_id()), (0, 1));
        q.publish_state(LinkState::Init).unwrap();
        let bar2 = fs::read(&r2).unwrap();
        assert_eq!(
            u32::from_ne_bytes(bar2[0x1000..0x1004].try_into().unwrap()),
            1
        );
        assert_eq!(data_vector(q.vectors()), 0, "one vector: data on vector 0");
        q.ring(0).unwrap();
        let bar0 = fs::read(&r0).unwrap();
        assert_eq!(
            u32::from_ne_bytes(bar0[0x0c..0x10].try_into().unwrap()),
            1 << 16,
            "vector 0 of peer 1"
        );
        assert_eq!(
            q.forced_poll(),
            Some(Duration::from_millis(1)),
            "no MSI-X: poll"
        );
    }

    #[test]
    fn qemu_profile_refuses_bad_layouts() {
        let err = |f: Fake| {
            open_fake_qemu(&f)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let mut bad_magic = LayoutPage::new(PROTOCOL_NET, 2, 2, 0x1000, 0, 0x7f000).encode();
        bad_magic[0] = b'X';
        assert!(err(fake_qemu(0, bad_magic)).contains("magic"));
        let other_protocol = LayoutPage::new(0x4000, 2, 2, 0x1000, 0, 0x7f000).encode();
        assert!(err(fake_qemu(0, other_protocol)).contains("not ivshmem-net"));
        let too_big = LayoutPage::new(PROTOCOL_NET, 2, 2, 0x1000, 0, 0xff000).encode();
        assert!(err(fake_qemu(0, too_big)).contains("beyond"));
        let three = LayoutPage::new(PROTOCOL_NET, 2, 3, 0x1000, 0, 0x3f000).encode();
        assert!(err(fake_qemu(0, three)).contains("exactly 2"));
    }
}
