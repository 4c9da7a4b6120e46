//! Bringing up the ivshmem device: find it on the PCI bus, decide how its
//! doorbells reach this CPU, give its BARs addresses if the firmware did
//! not, map registers, MSI-X table and shared memory with the right
//! permissions, enable memory decoding and bus mastering, and route its
//! interrupts here.
//!
//! Doorbells (the platform's `pci::msi_unsupported`, `pci::route_intx`):
//!
//! | device | platform takes MSI (x86 LAPIC, GICv2m) | platform takes INTx only (Jailhouse arm64) |
//! |---|---|---|
//! | MSI-X capability | MSI-X vectors, the platform's message per vector | refused: `MsiUnsupported` with the platform's reason |
//! | Jailhouse 2.0 device without MSI-X (Interrupt Pin 1..4) | refused: `IntxNotRouted` | INTx: one vector (0), Command.INTX_DISABLE clear, INT_CTRL = 1 |
//! | no MSI-X, no pin | refused: `NoMsix` | refused: `NoMsix` |
//!
//! Both profiles are handled through `ivshmem::Device`:
//!
//! - **QEMU `ivshmem-doorbell`**: BAR0 registers, BAR1 MSI-X, BAR2 shared
//!   memory starting with ivnet's layout page. There is no STATE register:
//!   the own state-table entry is written by the guest itself, through a
//!   one-page read-write *alias* of the state table (at [`STATE_ALIAS_VIRT`]),
//!   while the identity mapping of the state table stays read-only; then the
//!   peer's vector 0 is rung.
//! - **Jailhouse ivshmem 2.0**: BAR0 registers (with STATE), BAR1 MSI-X, the
//!   shared memory at the vendor capability's base address (or BAR2).
//!
//! Shared-memory permissions (identity-mapped, write-back, no-execute):
//!
//! | region | access |
//! |---|---|
//! | layout page (QEMU) | read-only |
//! | state table | read-only |
//! | R/W section | read-write |
//! | own output section | read-write |
//! | peer's output section | read-only |

use core::fmt;
use core::ptr::NonNull;

use ivnet_driver::{DeviceLink, LinkShapeError, PROTOCOL_NET, check_net_link};
use ivshmem::pci::{self, Bar, Command, ConfigSpace, MsixCapability, MsixEntryField, PciError};
use ivshmem::{
    Device, DeviceError, Ivshmem, JailhouseDevice, LayoutPage, Profile, QemuDevice,
    SharedMemoryLayout, SharedMemoryLocation, jailhouse, qemu,
};
use volatile::VolatilePtr;

use crate::idt::DOORBELL_VECTORS;
use crate::paging::{self, Kind, MapError};
use crate::pci::{Bdf, PlatformConfigSpace};
use crate::println;

/// Virtual address of the read-write alias of the state-table page that
/// holds the own entry (QEMU profile). Far above any physical address the
/// identity mapping can cover on the machines the guest runs on; a clash
/// would be reported as a mapping conflict.
pub const STATE_ALIAS_VIRT: u64 = 0x0000_7f00_0000_0000;

/// Why the device could not be brought up.
#[derive(Clone, Copy, Debug)]
pub enum BringUpError {
    /// No ivshmem function on any bus.
    NotFound,
    /// Identification, layout or register checks of the `ivshmem` crate.
    Device(DeviceError),
    /// Configuration space (BARs, capabilities).
    Pci(PciError),
    /// A BAR the profile needs is not a memory BAR or has size 0.
    BadBar {
        /// BAR index.
        index: u8,
    },
    /// No room left in the BAR window for an unassigned BAR.
    NoBarSpace {
        /// BAR index.
        index: u8,
        /// Its size.
        size: u64,
    },
    /// The device has no MSI-X capability and no INTx pin (doorbells
    /// would be dropped).
    NoMsix,
    /// The device has MSI-X only, and the platform cannot take MSIs (why).
    MsiUnsupported(&'static str),
    /// The device has INTx only (this pin), and the platform routes no INTx
    /// (or the pin maps to no interrupt).
    IntxNotRouted {
        /// Interrupt Pin (1 = INTA).
        pin: u8,
    },
    /// The MSI-X table does not lie inside its BAR.
    MsixTableOutsideBar,
    /// The link is not a two-peer ivshmem-net link.
    Link(LinkShapeError),
    /// Page-table mapping failed.
    Map(MapError),
}

impl From<DeviceError> for BringUpError {
    fn from(e: DeviceError) -> Self {
        BringUpError::Device(e)
    }
}

impl From<PciError> for BringUpError {
    fn from(e: PciError) -> Self {
        BringUpError::Pci(e)
    }
}

impl From<LinkShapeError> for BringUpError {
    fn from(e: LinkShapeError) -> Self {
        BringUpError::Link(e)
    }
}

impl From<MapError> for BringUpError {
    fn from(e: MapError) -> Self {
        BringUpError::Map(e)
    }
}

impl fmt::Display for BringUpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BringUpError::NotFound => write!(
                f,
                "no ivshmem device (1af4:1110 or 110a:4106) on the PCI bus"
            ),
            BringUpError::Device(e) => write!(f, "{e}"),
            BringUpError::Pci(e) => write!(f, "configuration space: {e}"),
            BringUpError::BadBar { index } => {
                write!(f, "BAR{index} is not a usable memory BAR")
            }
            BringUpError::NoBarSpace { index, size } => {
                let window = crate::pci::bar_window();
                write!(
                    f,
                    "no room for BAR{index} ({size:#x} bytes) in {:#x}..{:#x}",
                    window.start, window.end
                )
            }
            BringUpError::NoMsix => write!(f, "the device has no MSI-X capability"),
            BringUpError::MsiUnsupported(why) => write!(
                f,
                "the device signals doorbells only through MSI-X, and {why}"
            ),
            BringUpError::IntxNotRouted { pin } => write!(
                f,
                "the device has no MSI-X capability (INTx pin {}), and this platform routes no INTx",
                pin_name(*pin)
            ),
            BringUpError::MsixTableOutsideBar => {
                write!(f, "the MSI-X table does not fit in its BAR")
            }
            BringUpError::Link(e) => write!(f, "{e}"),
            BringUpError::Map(e) => write!(f, "mapping: {e}"),
        }
    }
}

/// The ivshmem device, ready for the NIC driver.
pub struct NicDevice {
    /// Where it is.
    pub bdf: Bdf,
    /// Which profile.
    pub profile: Profile,
    /// The `ivshmem` crate's device handle.
    device: Device<'static>,
    /// Layout (offsets from `shm_base`).
    pub layout: SharedMemoryLayout,
    /// Physical (= virtual) address of the shared memory.
    pub shm_base: u64,
    /// Own peer ID.
    pub id: u16,
    /// The other peer's ID (`1 - id`).
    pub peer: u16,
    /// Interrupt vectors routed to this CPU (MSI-X vectors, or 1 for INTx).
    pub vectors: u16,
}

/// How the device's doorbells reach this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// MSI-X: the platform's message per vector.
    Msix,
    /// INTx on this pin (Jailhouse ivshmem 2.0 without MSI-X): one vector,
    /// 0. (The QEMU ivshmem-doorbell's INTx is level-triggered behind a
    /// status register the driver does not serve, so only the 2.0 device.)
    Intx {
        /// Interrupt Pin (1 = INTA .. 4 = INTD).
        pin: u8,
    },
}

/// `A`..`D` for Interrupt Pin 1..4.
fn pin_name(pin: u8) -> char {
    match pin {
        1..=4 => char::from(b'A' + pin - 1),
        _ => '?',
    }
}

/// Decides [`Delivery`] from the device's capabilities and the platform
/// (the table in the module docs), before any BAR is touched.
fn delivery(cfg: &PlatformConfigSpace, profile: Profile) -> Result<Delivery, BringUpError> {
    let msix = MsixCapability::find(cfg)?.is_some();
    let pin = match profile {
        Profile::Jailhouse => cfg.read8(pci::INTERRUPT_PIN),
        Profile::QemuDoorbell => 0,
    };
    let pin = (1..=4).contains(&pin).then_some(pin);
    match (msix, crate::pci::msi_unsupported(), pin) {
        (true, None, _) => Ok(Delivery::Msix),
        (_, Some(_), Some(pin)) => Ok(Delivery::Intx { pin }),
        (true, Some(why), None) => Err(BringUpError::MsiUnsupported(why)),
        (false, None, Some(pin)) => Err(BringUpError::IntxNotRouted { pin }),
        (false, _, None) => Err(BringUpError::NoMsix),
    }
}

/// Allocates addresses for unassigned BARs, in the platform's window
/// (`crate::pci::bar_window`).
pub(crate) struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// An allocator at the start of the window.
    pub(crate) fn new() -> Self {
        let window = crate::pci::bar_window();
        BarAllocator {
            next: window.start,
            end: window.end,
        }
    }

    fn alloc(&mut self, index: u8, size: u64) -> Result<u64, BringUpError> {
        let err = BringUpError::NoBarSpace { index, size };
        // BARs are naturally aligned to their (power-of-two) size.
        let start = self
            .next
            .checked_next_multiple_of(size.max(0x1000))
            .ok_or(err)?;
        let end = start.checked_add(size).ok_or(err)?;
        if end > self.end {
            return Err(err);
        }
        self.next = end;
        Ok(start)
    }
}

/// Sizes BAR `index` and, if the firmware left it unassigned, places it.
/// Returns its address and size. Memory decoding must be off.
pub(crate) fn setup_bar(
    cfg: &mut PlatformConfigSpace,
    index: u8,
    alloc: &mut BarAllocator,
) -> Result<(u64, u64), BringUpError> {
    let (bar, size) = pci::size_bar(cfg, index)?;
    if !bar.is_memory() || size == 0 || !size.is_power_of_two() {
        return Err(BringUpError::BadBar { index });
    }
    let mut address = bar.address();
    let assigned = address != 0;
    if !assigned {
        address = alloc.alloc(index, size)?;
        let programmed = pci::program_bar(cfg, index, address)?;
        if programmed.address() != address {
            return Err(BringUpError::BadBar { index });
        }
    }
    let kind = match bar {
        Bar::Memory64 { .. } => "64-bit",
        _ => "32-bit",
    };
    println!(
        "pci {}: BAR{index} {kind} at {address:#x} size {size:#x}{}",
        cfg.bdf(),
        if assigned {
            ""
        } else {
            " (assigned by the guest)"
        }
    );
    Ok((address, size))
}

/// The error for a layout whose peer count `check_net_link` should have
/// refused (an entry or section of peer 0 or 1 is missing).
fn not_two_peers(layout: &SharedMemoryLayout) -> BringUpError {
    BringUpError::Link(LinkShapeError::PeerCount {
        max_peers: u32::from(layout.max_peers),
    })
}

/// Maps the shared memory of a link `(own ID, peer ID)` checked by
/// [`check_net_link`].
fn map_shared_memory(
    base: u64,
    layout: &SharedMemoryLayout,
    (id, peer): (u16, u16),
) -> Result<(), BringUpError> {
    let l = layout;
    paging::map(
        base + l.state_table_offset,
        l.state_table_size,
        Kind::SharedReadOnly,
        "ivshmem state table (read-only)",
    )?;
    if l.rw_section_size > 0 {
        paging::map(
            base + l.rw_section_offset(),
            l.rw_section_size,
            Kind::SharedReadWrite,
            "ivshmem R/W section",
        )?;
    }
    // Both offsets exist: id and peer are < max_peers (2).
    let own = l.output_section_offset(id).ok_or(not_two_peers(l))?;
    let theirs = l.output_section_offset(peer).ok_or(not_two_peers(l))?;
    paging::map(
        base + own,
        l.output_section_size,
        Kind::SharedReadWrite,
        "own output section",
    )?;
    paging::map(
        base + theirs,
        l.output_section_size,
        Kind::SharedReadOnly,
        "peer's output section (read-only)",
    )?;
    Ok(())
}

/// Programs MSI-X entries `0..n` with the platform's message for doorbell
/// `i` to the CPU `apic_id` (`crate::platform::msi_message`: on x86 the
/// local APIC's vector `VECTOR_DOORBELL + i`), unmasked, then enables MSI-X.
pub(crate) fn setup_msix(
    cfg: &mut PlatformConfigSpace,
    bars: &[(u64, u64); 6],
    wanted: u32,
    apic_id: u32,
) -> Result<u16, BringUpError> {
    if let Some(why) = crate::pci::msi_unsupported() {
        return Err(BringUpError::MsiUnsupported(why));
    }
    let mut msix = MsixCapability::find(cfg)?.ok_or(BringUpError::NoMsix)?;
    let (table_base, table_bar_size) = bars[usize::from(msix.table_bar)];
    let n = u32::from(msix.table_size)
        .min(wanted)
        .min(u32::from(DOORBELL_VECTORS)) as u16;
    let end = msix.entry_offset(n.saturating_sub(1), MsixEntryField::VectorControl);
    match end {
        Some(end) if table_base != 0 && end + 4 <= table_bar_size => {}
        _ => return Err(BringUpError::MsixTableOutsideBar),
    }
    // Enabled but function-masked while the entries change.
    msix.set_control(cfg, true, true);
    for v in 0..n {
        let entry = |field| {
            let off = msix.entry_offset(v, field).expect("v < n <= table_size");
            let p = (table_base + off) as *mut u32;
            // SAFETY: `p` is inside the table BAR (checked above), which is
            // mapped uncached; entry fields are 4-aligned and the table is
            // only accessed with 32-bit volatile writes, as MSI-X requires.
            unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }
        };
        let (address, data) = crate::platform::msi_message(apic_id, v);
        entry(MsixEntryField::VectorControl).write(1);
        entry(MsixEntryField::AddressLow).write(address as u32);
        entry(MsixEntryField::AddressHigh).write((address >> 32) as u32);
        entry(MsixEntryField::Data).write(data);
        entry(MsixEntryField::VectorControl).write(0);
    }
    msix.set_control(cfg, true, false);
    Ok(n)
}

/// Finds and brings up the device; see the module docs.
pub fn bring_up(apic_id: u32) -> Result<NicDevice, BringUpError> {
    let (mut cfg, profile) = crate::pci::find_map(|cfg, header| {
        Profile::from_ids(header.vendor_id, header.device_id).map(|p| (cfg, p))
    })
    .ok_or(BringUpError::NotFound)?;
    println!("pci {}: ivshmem {:?}", cfg.bdf(), profile);
    let delivery = delivery(&cfg, profile)?;

    // BARs are placed and sized with decoding off; on Jailhouse the
    // register traps are installed when MEMORY goes 0 -> 1, so it is set
    // only after all BARs hold their final addresses.
    let command = pci::read_command(&cfg);
    pci::write_command(
        &mut cfg,
        command.difference(Command::MEMORY | Command::BUS_MASTER),
    );
    let mut alloc = BarAllocator::new();
    let mut bars = [(0u64, 0u64); 6];
    let uses_bar2 = match profile {
        Profile::QemuDoorbell => {
            qemu::identify(&cfg)?;
            true
        }
        Profile::Jailhouse => {
            jailhouse::identify(&cfg)?;
            let cap = jailhouse::VendorCapability::find(&cfg)?;
            cap.location() == SharedMemoryLocation::Bar(2)
        }
    };
    // BAR1 holds the MSI-X table; with INTx Jailhouse gives the device
    // none (JAILHOUSE_IVSHMEM_BAR_MASK_INTX).
    let msix_bar = delivery == Delivery::Msix;
    for index in [0u8, 1] {
        if index == 0 || msix_bar {
            bars[usize::from(index)] = setup_bar(&mut cfg, index, &mut alloc)?;
        }
    }
    if uses_bar2 {
        bars[2] = setup_bar(&mut cfg, 2, &mut alloc)?;
    }
    // INTX_DISABLE only with MSI-X: with INTx the hypervisor (re)computes
    // the line when INT_CTRL is written and while the bit is clear.
    let mut enable = command | Command::MEMORY | Command::BUS_MASTER;
    match delivery {
        Delivery::Msix => enable |= Command::INTX_DISABLE,
        Delivery::Intx { .. } => enable.remove(Command::INTX_DISABLE),
    }
    pci::write_command(&mut cfg, enable);

    let (bar0, bar0_size) = bars[0];
    paging::map(bar0, bar0_size, Kind::Mmio, "ivshmem registers (BAR0)")?;
    if msix_bar {
        let (bar1, bar1_size) = bars[1];
        paging::map(bar1, bar1_size, Kind::Mmio, "ivshmem MSI-X table (BAR1)")?;
    }
    let bar0_ptr = NonNull::new(bar0 as *mut u8).ok_or(BringUpError::BadBar { index: 0 })?;

    let (device, shm_base, wanted_vectors, (id, peer)): (Device<'static>, u64, u32, (u16, u16)) =
        match profile {
            Profile::QemuDoorbell => {
                let (bar2, bar2_size) = bars[2];
                let bar2_ptr =
                    NonNull::new(bar2 as *mut u8).ok_or(BringUpError::BadBar { index: 2 })?;
                paging::map(
                    bar2,
                    0x1000,
                    Kind::SharedReadOnly,
                    "ivshmem layout page (read-only)",
                )?;
                // SAFETY: BAR2's first page is mapped (read-only) just above,
                // which is all `read_layout_page` reads.
                let page: LayoutPage = unsafe { qemu::read_layout_page(bar2_ptr, bar2_size)? };
                let l = page.layout;
                // SAFETY: BAR0 is mapped uncached above, 256 bytes, 4-aligned,
                // and only accessed as registers from now on.
                let regs = unsafe { qemu::Registers::new(bar0_ptr) };
                let link =
                    check_net_link(page.protocol, u32::from(l.max_peers), regs.iv_position())?;
                map_shared_memory(bar2, &l, link)?;
                // SAFETY: the window at `bar2` is mapped for every region the
                // device touches: the layout page (read) and the state table
                // (atomic loads only: the one write, the own state, goes
                // through the read-write alias installed below with
                // `set_own_state_view` before anything is published). The
                // memory is shared with peers and is never referenced as Rust
                // data.
                let dev = unsafe { QemuDevice::probe(regs, bar2_ptr, bar2_size, PROTOCOL_NET)? };
                let vectors = dev.vectors();
                (dev.into(), bar2, vectors, link)
            }
            Profile::Jailhouse => {
                // SAFETY: BAR0 is mapped uncached above and only accessed as
                // registers from now on.
                let regs = unsafe { jailhouse::Registers::new(bar0_ptr) };
                let bar2_size = uses_bar2.then_some(bars[2].1);
                let dev = JailhouseDevice::probe(&cfg, regs, PROTOCOL_NET, bar2_size)?;
                let base = match dev.location() {
                    SharedMemoryLocation::Physical(base) => base,
                    SharedMemoryLocation::Bar(_) => bars[2].0,
                };
                let l = dev.layout();
                let link =
                    check_net_link(dev.protocol(), u32::from(l.max_peers), u32::from(dev.id()))?;
                map_shared_memory(base, &l, link)?;
                (dev.into(), base, u32::from(DOORBELL_VECTORS), link)
            }
        };

    let mut device = device;
    let layout = device.layout();
    let (vectors, intx) = match delivery {
        Delivery::Msix => (setup_msix(&mut cfg, &bars, wanted_vectors, apic_id)?, None),
        Delivery::Intx { pin } => {
            let intid = crate::pci::route_intx(cfg.bdf(), pin)
                .ok_or(BringUpError::IntxNotRouted { pin })?;
            (1, Some((pin, intid)))
        }
    };
    // INT_CTRL = 1 (Jailhouse): interrupts on after the device's reset;
    // the driver core re-arms it before every sleep (one-shot mode).
    device.enable_interrupts();

    if let Device::QemuDoorbell(qemu) = &mut device {
        // No STATE register: the guest stores its own entry itself, through
        // a one-page read-write alias (the identity mapping of the table
        // stays read-only), with `ivshmem`'s one implementation of the
        // protocol (`OwnStateEntry`: Release store, then vector 0).
        let entry = shm_base
            + layout
                .state_entry_offset(id)
                .ok_or(not_two_peers(&layout))?;
        let page = entry & !0xfff;
        paging::map_at(
            STATE_ALIAS_VIRT,
            page,
            0x1000,
            Kind::SharedReadWrite,
            "own state-table entry (read-write alias)",
        )?;
        let alias = NonNull::new((STATE_ALIAS_VIRT + (entry - page)) as *mut u32).ok_or(
            BringUpError::Map(MapError::BadRange {
                start: STATE_ALIAS_VIRT,
                len: 0x1000,
            }),
        )?;
        // SAFETY: `alias` maps this peer's own entry (`id`) read-write for
        // the guest's lifetime (the page tables are never torn down), and
        // every party accesses the entry only atomically.
        unsafe { qemu.set_own_state_view(alias) }?;
    }

    println!(
        "ivshmem: {:?} id {id} peer {peer}, shared memory at {shm_base:#x}: state table +{:#x} ({:#x}), rw +{:#x} ({:#x}), output sections {:#x} bytes at +{:#x}, {}",
        profile,
        layout.state_table_offset,
        layout.state_table_size,
        layout.rw_section_offset(),
        layout.rw_section_size,
        layout.output_section_size,
        layout.output_sections_offset(),
        Doorbells {
            vectors,
            intx,
            apic_id
        },
    );
    Ok(NicDevice {
        bdf: cfg.bdf(),
        profile,
        device,
        layout,
        shm_base,
        id,
        peer,
        vectors,
    })
}

/// The boot log's doorbell routing.
struct Doorbells {
    vectors: u16,
    intx: Option<(u8, u32)>,
    apic_id: u32,
}

impl fmt::Display for Doorbells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.intx {
            Some((pin, intid)) => write!(
                f,
                "INTx pin {} -> interrupt {intid} (edge), doorbell vector 0",
                pin_name(pin)
            ),
            None => write!(f, "{} MSI-X vectors -> APIC {}", self.vectors, self.apic_id),
        }
    }
}

impl NicDevice {
    /// Own output section (read-write).
    pub fn own_section(&self) -> (*mut u8, usize) {
        let off = self.layout.output_section_offset(self.id).expect("id < 2");
        (
            (self.shm_base + off) as *mut u8,
            self.layout.output_section_size as usize,
        )
    }

    /// The peer's output section (mapped read-only).
    pub fn peer_section(&self) -> (*const u8, usize) {
        let off = self
            .layout
            .output_section_offset(self.peer)
            .expect("peer < 2");
        (
            (self.shm_base + off) as *const u8,
            self.layout.output_section_size as usize,
        )
    }

    /// Physical address of the state table (mapped read-only).
    pub fn state_table(&self) -> *const u32 {
        (self.shm_base + self.layout.state_table_offset) as *const u32
    }

    /// The device as the driver core's platform (`ivnet_driver::DeviceLink`:
    /// the peer's entry read through the read-only table, the own state
    /// through the STATE register or the alias, data doorbells on the
    /// vectors routed here, the one-shot re-arm). `clock` returns monotonic
    /// microseconds.
    pub fn into_link(self, clock: fn() -> u64) -> Result<DeviceLink<'static>, LinkShapeError> {
        let table =
            NonNull::new(self.state_table().cast_mut()).ok_or(LinkShapeError::PeerCount {
                max_peers: u32::from(self.layout.max_peers),
            })?;
        // SAFETY: `table` is the device's state table (at the layout's
        // offset in the shared memory), page-aligned, mapped read-only for
        // the guest's lifetime, with `max_peers` = 2 entries (checked by
        // `check_net_link` in `bring_up`).
        unsafe { DeviceLink::new(self.device, table, u32::from(self.vectors), clock) }
    }

    /// Rings the peer's `vector` (self-tests). Out-of-range vectors are
    /// refused by the `ivshmem` crate.
    pub fn ring(&self, vector: u16) -> bool {
        self.device.ring(self.peer, vector).is_ok()
    }
}
