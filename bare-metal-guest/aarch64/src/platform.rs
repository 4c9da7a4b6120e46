//! The machine the guest runs on under QEMU, read from the device tree QEMU
//! passes in x0 (x0 = 0: a Jailhouse cell, see `jailhouse`): the console (`/chosen/stdout-path`, else the first `arm,pl011`), the
//! GIC (`arm,cortex-a15-gic`/`arm,gic-400`: GICD = reg[0], GICC = reg[1]),
//! its GICv2m MSI frame (`arm,gic-v2m-frame`), the PCI host bridge
//! (`pci-host-ecam-generic`: ECAM = reg[0], `bus-range`, and the 32-bit
//! memory window from `ranges`), and the command line
//! (`/chosen/bootargs`). Nothing of `virt`'s memory map is hard-coded.

use fdt::Fdt;

use crate::gic;
use crate::mmu::{self, Kind, MapError};
use crate::pci::{HostBridge, Interrupts};

/// What the guest found.
pub struct Machine {
    /// PL011 base.
    pub uart: u64,
    /// GIC distributor.
    pub gicd: u64,
    /// GIC CPU interface.
    pub gicc: u64,
    /// GICv2m MSI frame.
    pub v2m: u64,
    /// PCI host bridge.
    pub host: HostBridge,
    /// The command line.
    pub cmdline: &'static str,
}

/// Why the device tree was refused.
#[derive(Clone, Copy, Debug)]
pub enum DtbError {
    /// No DTB (x0 was 0) or a bad header.
    NoDtb(u64),
    /// Mapping it failed.
    Map(MapError),
    /// A node or property the guest needs is missing or malformed.
    Missing(&'static str),
    /// A GICv3 (with a DTB only GICv2 with v2m is supported; see `gic`).
    GicV3,
}

impl core::fmt::Display for DtbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DtbError::NoDtb(a) => write!(f, "no device tree at {a:#x} (x0 at entry)"),
            DtbError::Map(e) => write!(f, "mapping the device tree: {e}"),
            DtbError::Missing(what) => write!(f, "device tree: no usable {what}"),
            DtbError::GicV3 => write!(
                f,
                "device tree: GICv3 found; under QEMU this guest takes MSI-X through GICv2m (GICv3 MSIs need an ITS, which it does not drive): use -M virt,gic-version=2"
            ),
        }
    }
}

fn reg(
    node: Option<fdt::node::FdtNode<'_, '_>>,
    index: usize,
    what: &'static str,
) -> Result<(u64, u64), DtbError> {
    let r = node
        .and_then(|n| n.reg())
        .and_then(|mut r| r.nth(index))
        .ok_or(DtbError::Missing(what))?;
    Ok((r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

fn be_cells(bytes: &[u8], cells: usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..cells {
        let c = bytes.get(4 * i..4 * i + 4)?;
        v = v << 32 | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    Some(v)
}

/// Maps and parses the DTB at `dtb`; maps the console and the GIC frames.
pub fn from_dtb(dtb: u64) -> Result<Machine, DtbError> {
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return Err(DtbError::NoDtb(dtb));
    }
    mmu::map(dtb, 0x1000, Kind::ReadOnly, "device tree").map_err(DtbError::Map)?;
    // SAFETY: the first page is mapped read-only; the header's magic and
    // totalsize are aligned big-endian words.
    let (magic, total) = unsafe {
        (
            u32::from_be((dtb as *const u32).read_volatile()),
            u32::from_be(((dtb + 4) as *const u32).read_volatile()),
        )
    };
    if magic != 0xd00d_feed || !(0x40..=0x10_0000).contains(&total) {
        return Err(DtbError::NoDtb(dtb));
    }
    if total > 0x1000 {
        mmu::map(
            dtb + 0x1000,
            u64::from(total) - 0x1000,
            Kind::ReadOnly,
            "device tree",
        )
        .map_err(DtbError::Map)?;
    }
    // SAFETY: the whole blob (totalsize) is mapped read-only for the guest's
    // lifetime and nothing writes it; the crate checks the header.
    let fdt: Fdt<'static> =
        unsafe { Fdt::from_ptr(dtb as *const u8) }.map_err(|_| DtbError::NoDtb(dtb))?;

    let uart_node = fdt
        .chosen()
        .stdout()
        .filter(|n| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
        })
        .or_else(|| fdt.find_compatible(&["arm,pl011"]));
    let (uart, _) = reg(uart_node, 0, "PL011 UART")?;
    mmu::map(uart, 0x1000, Kind::Mmio, "PL011 UART").map_err(DtbError::Map)?;
    crate::serial::init(uart);

    if fdt.find_compatible(&["arm,gic-v3"]).is_some() {
        return Err(DtbError::GicV3);
    }
    let gic_node = fdt.find_compatible(&["arm,cortex-a15-gic", "arm,gic-400"]);
    let (gicd, gicd_size) = reg(gic_node, 0, "GICv2 distributor")?;
    let (gicc, gicc_size) = reg(gic_node, 1, "GICv2 CPU interface")?;
    let (v2m, v2m_size) = reg(
        fdt.find_compatible(&["arm,gic-v2m-frame"]),
        0,
        "GICv2m frame",
    )?;

    let pci = fdt.find_compatible(&["pci-host-ecam-generic"]);
    let (ecam, ecam_size) = reg(pci, 0, "PCI host bridge (pci-host-ecam-generic)")?;
    let pci = pci.ok_or(DtbError::Missing("PCI host bridge"))?;
    let buses = match pci.property("bus-range").map(|p| p.value) {
        Some(v) => {
            let (a, b) = (be_cells(v, 1), v.get(4..).and_then(|v| be_cells(v, 1)));
            match (a, b) {
                (Some(a), Some(b)) if a <= b && b < 256 => a as u16..b as u16 + 1,
                _ => return Err(DtbError::Missing("PCI bus-range")),
            }
        }
        None => 0..256,
    };
    // Each `ranges` entry: PCI address (3 cells, space code in bits 25:24 of
    // the first), CPU address (the root's #address-cells), size (the
    // bridge's #size-cells). The 32-bit memory space (code 0b10) is the BAR
    // window.
    let parent_cells = fdt.root().cell_sizes().address_cells;
    let size_cells = pci.cell_sizes().size_cells;
    let entry = 4 * (3 + parent_cells + size_cells);
    let ranges = pci
        .property("ranges")
        .ok_or(DtbError::Missing("PCI ranges"))?
        .value;
    let window = ranges
        .chunks_exact(entry)
        .find_map(|e| {
            let space = (be_cells(e, 1)? >> 24) & 3;
            let cpu = be_cells(&e[12..], parent_cells)?;
            let size = be_cells(&e[12 + 4 * parent_cells..], size_cells)?;
            (space == 2 && size > 0).then(|| cpu..cpu + size)
        })
        .ok_or(DtbError::Missing("32-bit memory window in PCI ranges"))?;
    // Only the decoded buses' part of ECAM.
    let ecam_size = ecam_size.min(u64::from(buses.end - buses.start) << 20);

    for (base, size, name) in [
        (gicd, gicd_size.max(0x1000), "GIC distributor"),
        (gicc, gicc_size.max(0x2000), "GIC CPU interface"),
        (v2m, v2m_size.max(0x1000), "GICv2m MSI frame"),
        (ecam, ecam_size, "PCI ECAM"),
    ] {
        mmu::map(base, size, Kind::Mmio, name).map_err(DtbError::Map)?;
    }
    Ok(Machine {
        uart,
        gicd,
        gicc,
        v2m,
        host: HostBridge {
            ecam,
            buses,
            window,
            interrupts: Interrupts::Msi,
        },
        cmdline: fdt.chosen().bootargs().unwrap_or(""),
    })
}

static V2M: spin::Once<(u64, u32, u32)> = spin::Once::new();

/// Sets up the v2m frame's SPIs as doorbell vectors. Returns (first SPI, count).
pub fn init_msi(v2m: u64) -> (u32, u32) {
    let (first, count) = gic::v2m_spis(v2m);
    gic::enable_doorbells(first, count);
    V2M.call_once(|| (v2m, first, count));
    (first, count)
}

/// The MSI message (address, data) for doorbell `index`: a write of the
/// SPI number `first + index` to the v2m frame's MSI_SETSPI_NS (the CPU
/// is the one the SPI targets, see `gic`).
pub fn msi_message(_cpu: u32, index: u16) -> (u64, u32) {
    let (frame, first, _) = V2M.get().copied().unwrap_or((0, 0, 0));
    (frame + gic::V2M_MSI_SETSPI_NS, first + u32::from(index))
}

/// Answers the hypervisor's messages (a Jailhouse cell's comm region,
/// `jailhouse::poll_messages`); nothing to do on QEMU.
pub fn poll_messages(take_link_down: impl FnOnce()) {
    crate::jailhouse::poll_messages(take_link_down);
}
