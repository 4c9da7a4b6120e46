//! Bringing up the ivshmem device: find it on the PCI bus, give its BARs
//! addresses if the firmware did not, map registers, MSI-X table and shared
//! memory with the right permissions, enable memory decoding and bus
//! mastering, and route its MSI-X vectors to this CPU's local APIC.
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
use core::sync::atomic::{AtomicU32, Ordering};

use ivshmem::layout::PROTOCOL_NET;
use ivshmem::pci::{self, Bar, Command, MsixCapability, MsixEntryField, PciError};
use ivshmem::{
    Device, DeviceError, Ivshmem, JailhouseDevice, LayoutPage, Profile, QemuDevice,
    SharedMemoryLayout, SharedMemoryLocation, jailhouse, qemu,
};
use volatile::VolatilePtr;

use crate::idt::{DOORBELL_VECTORS, VECTOR_DOORBELL};
use crate::paging::{self, Kind, MapError};
use crate::pci::{Bdf, PortConfigSpace};
use crate::println;

/// Where unassigned memory BARs are placed: the top of q35's 32-bit PCI
/// hole, above the MMCONFIG window (0xB000_0000..0xC000_0000) and below the
/// IOAPIC (0xFEC0_0000). Used only when the firmware left a BAR at 0 (qboot
/// does; SeaBIOS assigns everything; Jailhouse clears ivshmem BARs on reset).
const BAR_WINDOW: core::ops::Range<u64> = 0xC000_0000..0xFEC0_0000;

/// Virtual address of the read-write alias of the state-table page that
/// holds the own entry (QEMU profile). Far above any physical address the
/// identity mapping can cover on the machines the guest runs on; a clash
/// would be reported as a mapping conflict.
pub const STATE_ALIAS_VIRT: u64 = 0x0000_7f00_0000_0000;

/// Doorbell vector for link-state changes (ivshmem-net: 0; data is 1).
pub const VECTOR_STATE: u16 = 0;

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
    /// The device has no MSI-X capability (doorbells would be dropped).
    NoMsix,
    /// The MSI-X table does not lie inside its BAR.
    MsixTableOutsideBar,
    /// The link is not a two-peer ivshmem-net link.
    NotTwoPeers(u16),
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
            BringUpError::NoBarSpace { index, size } => write!(
                f,
                "no room for BAR{index} ({size:#x} bytes) in {:#x}..{:#x}",
                BAR_WINDOW.start, BAR_WINDOW.end
            ),
            BringUpError::NoMsix => write!(f, "the device has no MSI-X capability"),
            BringUpError::MsixTableOutsideBar => {
                write!(f, "the MSI-X table does not fit in its BAR")
            }
            BringUpError::NotTwoPeers(n) => {
                write!(f, "the link has {n} peers; ivshmem-net needs exactly 2")
            }
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
    /// MSI-X vectors routed to this CPU.
    pub vectors: u16,
    /// Read-write alias of the own state-table entry (QEMU profile).
    own_state_alias: Option<NonNull<u32>>,
}

/// Allocates addresses for unassigned BARs.
struct BarAllocator {
    next: u64,
}

impl BarAllocator {
    fn alloc(&mut self, index: u8, size: u64) -> Result<u64, BringUpError> {
        let err = BringUpError::NoBarSpace { index, size };
        // BARs are naturally aligned to their (power-of-two) size.
        let start = self
            .next
            .checked_next_multiple_of(size.max(0x1000))
            .ok_or(err)?;
        let end = start.checked_add(size).ok_or(err)?;
        if end > BAR_WINDOW.end {
            return Err(err);
        }
        self.next = end;
        Ok(start)
    }
}

/// Sizes BAR `index` and, if the firmware left it unassigned, places it.
/// Returns its address and size. Memory decoding must be off.
fn setup_bar(
    cfg: &mut PortConfigSpace,
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

fn map_shared_memory(
    base: u64,
    layout: &SharedMemoryLayout,
    id: u16,
    peer: u16,
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
    let own = l
        .output_section_offset(id)
        .ok_or(BringUpError::NotTwoPeers(l.max_peers))?;
    let theirs = l
        .output_section_offset(peer)
        .ok_or(BringUpError::NotTwoPeers(l.max_peers))?;
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

/// Programs MSI-X entries `0..n` to deliver `VECTOR_DOORBELL + i` to the
/// local APIC `apic_id` (fixed delivery, edge), unmasked, then enables MSI-X.
fn setup_msix(
    cfg: &mut PortConfigSpace,
    bars: &[(u64, u64); 6],
    wanted: u32,
    apic_id: u32,
) -> Result<u16, BringUpError> {
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
    let destination = 0xfee0_0000 | (apic_id & 0xff) << 12;
    for v in 0..n {
        let entry = |field| {
            let off = msix.entry_offset(v, field).expect("v < n <= table_size");
            let p = (table_base + off) as *mut u32;
            // SAFETY: `p` is inside the table BAR (checked above), which is
            // mapped uncached; entry fields are 4-aligned and the table is
            // only accessed with 32-bit volatile writes, as MSI-X requires.
            unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }
        };
        entry(MsixEntryField::VectorControl).write(1);
        entry(MsixEntryField::AddressLow).write(destination);
        entry(MsixEntryField::AddressHigh).write(0);
        entry(MsixEntryField::Data).write(u32::from(VECTOR_DOORBELL) + u32::from(v));
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

    // BARs are placed and sized with decoding off; on Jailhouse the
    // register traps are installed when MEMORY goes 0 -> 1, so it is set
    // only after all BARs hold their final addresses.
    let command = pci::read_command(&cfg);
    pci::write_command(
        &mut cfg,
        command.difference(Command::MEMORY | Command::BUS_MASTER),
    );
    let mut alloc = BarAllocator {
        next: BAR_WINDOW.start,
    };
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
    for index in [0u8, 1] {
        bars[usize::from(index)] = setup_bar(&mut cfg, index, &mut alloc)?;
    }
    if uses_bar2 {
        bars[2] = setup_bar(&mut cfg, 2, &mut alloc)?;
    }
    pci::write_command(
        &mut cfg,
        command | Command::MEMORY | Command::BUS_MASTER | Command::INTX_DISABLE,
    );

    let (bar0, bar0_size) = bars[0];
    paging::map(bar0, bar0_size, Kind::Mmio, "ivshmem registers (BAR0)")?;
    let (bar1, bar1_size) = bars[1];
    paging::map(bar1, bar1_size, Kind::Mmio, "ivshmem MSI-X table (BAR1)")?;
    let bar0_ptr = NonNull::new(bar0 as *mut u8).ok_or(BringUpError::BadBar { index: 0 })?;

    let (device, shm_base, wanted_vectors): (Device<'static>, u64, u32) = match profile {
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
            if l.max_peers != 2 {
                return Err(BringUpError::NotTwoPeers(l.max_peers));
            }
            // SAFETY: BAR0 is mapped uncached above, 256 bytes, 4-aligned,
            // and only accessed as registers from now on.
            let regs = unsafe { qemu::Registers::new(bar0_ptr) };
            let id = regs.iv_position();
            let id16 = u16::try_from(id)
                .ok()
                .filter(|&i| i < 2)
                .ok_or(BringUpError::Device(DeviceError::IdOutOfRange {
                    id,
                    max_peers: 2,
                }))?;
            map_shared_memory(bar2, &l, id16, 1 - id16)?;
            // SAFETY: the window at `bar2` is mapped for every region the
            // device touches: the layout page (read) and the state table
            // (atomic loads only: `set_own_state`, the one write, is never
            // called in this guest; see `NicDevice::set_own_state`). The
            // memory is shared with peers and is never referenced as Rust
            // data.
            let dev = unsafe { QemuDevice::probe(regs, bar2_ptr, bar2_size, PROTOCOL_NET)? };
            let vectors = dev.vectors();
            (dev.into(), bar2, vectors)
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
            if l.max_peers != 2 {
                return Err(BringUpError::NotTwoPeers(l.max_peers));
            }
            map_shared_memory(base, &l, dev.id(), 1 - dev.id())?;
            (dev.into(), base, u32::from(DOORBELL_VECTORS))
        }
    };

    let layout = device.layout();
    let id = device.id();
    let peer = device
        .peer_id()
        .ok_or(BringUpError::NotTwoPeers(layout.max_peers))?;
    let vectors = setup_msix(&mut cfg, &bars, wanted_vectors, apic_id)?;
    device.enable_interrupts();

    let own_state_alias = match profile {
        Profile::QemuDoorbell => {
            let entry = shm_base
                + layout
                    .state_entry_offset(id)
                    .ok_or(BringUpError::NotTwoPeers(layout.max_peers))?;
            let page = entry & !0xfff;
            paging::map_at(
                STATE_ALIAS_VIRT,
                page,
                0x1000,
                Kind::SharedReadWrite,
                "own state-table entry (read-write alias)",
            )?;
            NonNull::new((STATE_ALIAS_VIRT + (entry - page)) as *mut u32)
        }
        Profile::Jailhouse => None,
    };

    println!(
        "ivshmem: {:?} id {id} peer {peer}, shared memory at {shm_base:#x}: state table +{:#x} ({:#x}), rw +{:#x} ({:#x}), output sections {:#x} bytes at +{:#x}, {vectors} MSI-X vectors -> APIC {apic_id}",
        profile,
        layout.state_table_offset,
        layout.state_table_size,
        layout.rw_section_offset(),
        layout.rw_section_size,
        layout.output_section_size,
        layout.output_sections_offset(),
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
        own_state_alias,
    })
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

    fn state_entry(&self, peer: u16) -> &AtomicU32 {
        let off = self.layout.state_entry_offset(peer).expect("peer < 2");
        let p = (self.shm_base + off) as *mut u32;
        // SAFETY: the entry is inside the state table, mapped read-only for
        // the guest's lifetime; it is 4-aligned (page-aligned table) and only
        // ever accessed atomically (by the guest: loads only).
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// `peer`'s state-table entry, loaded once (Acquire). Peer-written:
    /// the caller validates it.
    pub fn peer_state(&self) -> u32 {
        self.state_entry(self.peer).load(Ordering::Acquire)
    }

    /// Publishes the own link state and wakes the peer on vector 0.
    ///
    /// Jailhouse: the STATE register (the hypervisor updates the read-only
    /// table and interrupts the peer). QEMU: a Release store through the
    /// read-write alias of the own entry, then a vector-0 doorbell — the
    /// same protocol as `ivshmem::QemuDevice::set_own_state`, which the
    /// guest cannot use because its identity mapping of the state table is
    /// read-only.
    pub fn set_own_state(&self, state: u32) {
        match self.own_state_alias {
            Some(alias) => {
                // SAFETY: `alias` maps the own entry read-write (4-aligned,
                // inside the page mapped by `bring_up` for the guest's
                // lifetime); the entry is only accessed atomically.
                let entry = unsafe { AtomicU32::from_ptr(alias.as_ptr()) };
                entry.store(state, Ordering::Release);
                // The doorbell write is ordered after the store by the
                // fence in `ring`.
                self.ring(VECTOR_STATE);
            }
            None => self.device.set_own_state(state),
        }
    }

    /// Rings the peer's `vector`. Out-of-range vectors are refused by the
    /// `ivshmem` crate, which is a driver bug: counted, not fatal.
    pub fn ring(&self, vector: u16) -> bool {
        self.device.ring(self.peer, vector).is_ok()
    }

    /// Re-arms one-shot interrupts (Jailhouse); nothing on QEMU.
    pub fn rearm(&self) {
        self.device.rearm();
    }
}
