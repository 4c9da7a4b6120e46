//! The virtio-net NIC (`nic=virtio`): the NIC a user would otherwise pick,
//! behind the same smoltcp services as ivshmem-net, so that one image
//! measures both on the same workload.
//!
//! A minimal virtio 1.0 driver: the modern PCI transport (vendor
//! capabilities for the common, notify and device configuration; MSI-X
//! vector 0 for both queues), two split virtqueues of [`QUEUE_LEN`]
//! entries, features `VERSION_1`, `MAC` and `RING_EVENT_IDX` only (no
//! offloads, no mergeable buffers: frames are at most 1514 bytes, the IP
//! MTU is 1500).
//!
//! Why not the `virtio-drivers` crate: without `alloc` it offers
//! `VirtIONetRaw`, but its PCI transport never programs MSI-X vectors (the
//! guest has no INTx routing), re-reads `queue_notify_off` through the
//! common configuration on every kick (two extra register accesses per
//! notification), and with `RING_EVENT_IDX` it moves `used_event` on every
//! completion, so the device interrupts for every batch even while the
//! driver is polling. Each of these would make virtio-net look worse than
//! it is; this driver does what Linux's does instead: NAPI-style, the
//! receive interrupt is re-armed (`used_event` = last seen) only before the
//! guest sleeps, transmit completions interrupt only when the queue is full,
//! and a kick is sent only when the device's `avail_event` asks for it
//! (`vring_need_event`), at most once per queue per flush.
//!
//! Memory the device writes (used rings, receive buffers) is only accessed
//! through raw pointers, volatile loads and copies, never through Rust
//! references: frames are copied out of the receive buffers into the
//! guest's frame buffer and built in the guest's scratch buffer before they
//! are copied into a transmit buffer, as the ivshmem-net NIC does (same
//! copies on both NICs). The queues and buffers are statics: the guest is
//! identity-mapped, so their addresses are the device's DMA addresses.

use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering, fence};

use ivshmem::pci::{self, CAP_ID_VENDOR, Command, ConfigSpace, PciError};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::device::{BarAllocator, BringUpError, setup_bar, setup_msix};
use crate::net::NetDevice;
use crate::nic::{ETHERNET_HEADER, MAX_FRAME};
use crate::paging::{self, Kind};
use crate::pci::PlatformConfigSpace;
use crate::{logger, println};

const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional and modern-only virtio-net device IDs.
const NET_DEVICE_IDS: [u16; 2] = [0x1000, 0x1041];

/// virtio-pci capability types (`cfg_type`).
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_DEVICE_CFG: u8 = 4;

/// Common configuration registers (virtio 1.0 §4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

const F_MAC: u64 = 1 << 5;
const F_RING_EVENT_IDX: u64 = 1 << 29;
const F_VERSION_1: u64 = 1 << 32;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 0x80;

const NO_VECTOR: u16 = 0xffff;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Entries per virtqueue (and buffers per direction): 2 × 32 × 1536 bytes
/// keep the image inside Jailhouse's 1 MiB; a full receive queue makes QEMU
/// stop reading the TAP (backpressure), not drop.
pub const QUEUE_LEN: usize = 32;
/// `virtio_net_hdr` with `num_buffers` (VERSION_1): 12 bytes before every frame.
const NET_HDR: usize = 12;
/// The IP MTU (no `VIRTIO_NET_F_MTU`: the Ethernet default).
pub const VIRTIO_MTU: usize = 1500;
/// One buffer: the header and a 1514-byte frame, rounded up.
const BUF_LEN: usize = 1536;
const DESC_F_WRITE: u16 = 2;
/// `used_event` this far ahead of the last used entry means "no interrupt".
const FAR: u16 = 0x8000;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct AvailRing {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_LEN],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4))]
struct UsedRing {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_LEN],
    avail_event: u16,
}

/// One split virtqueue's rings and buffers (shared with the device).
#[repr(C, align(4096))]
struct QueueMemory {
    desc: [Desc; QUEUE_LEN],
    avail: AvailRing,
    used: UsedRing,
    buffers: [[u8; BUF_LEN]; QUEUE_LEN],
}

impl QueueMemory {
    const ZERO: QueueMemory = QueueMemory {
        desc: [Desc {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        }; QUEUE_LEN],
        avail: AvailRing {
            flags: 0,
            idx: 0,
            ring: [0; QUEUE_LEN],
            used_event: 0,
        },
        used: UsedRing {
            flags: 0,
            idx: 0,
            ring: [UsedElem { id: 0, len: 0 }; QUEUE_LEN],
            avail_event: 0,
        },
        buffers: [[0; BUF_LEN]; QUEUE_LEN],
    };
}

static mut RX_MEMORY: QueueMemory = QueueMemory::ZERO;
static mut TX_MEMORY: QueueMemory = QueueMemory::ZERO;
static TAKEN: AtomicBool = AtomicBool::new(false);

/// `vring_need_event` (virtio 1.0 §2.4.7.2): whether moving an index from
/// `old` to `new` crosses `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One virtqueue: its memory, the driver's shadow indices, its doorbell.
struct Virtqueue {
    mem: *mut QueueMemory,
    index: u16,
    notify: *mut u16,
    /// Next free slot of the available ring (not yet published).
    avail_idx: u16,
    /// The available index the device has seen (last published).
    published: u16,
    /// Used entries consumed so far.
    last_used: u16,
    kicks: u64,
}

impl Virtqueue {
    /// The device's used index (Acquire: the entries and buffers it covers
    /// are visible after it).
    fn used_idx(&self) -> u16 {
        // SAFETY: `mem` is this queue's static memory (valid for the
        // guest's lifetime); the device writes the field, so it is read
        // with a volatile load, never through a reference.
        let idx = unsafe { ptr::read_volatile(&raw const (*self.mem).used.idx) };
        fence(Ordering::Acquire);
        idx
    }

    /// Used entries waiting, or `None` if the device claims more than the
    /// queue holds (a device error).
    fn pending(&self) -> Option<u16> {
        let n = self.used_idx().wrapping_sub(self.last_used);
        (usize::from(n) <= QUEUE_LEN).then_some(n)
    }

    /// The next used entry `(descriptor id, length)`; call after
    /// [`Virtqueue::pending`] said there is one.
    fn pop_used(&mut self) -> (usize, usize) {
        let slot = usize::from(self.last_used) % QUEUE_LEN;
        // SAFETY: as in `used_idx`; `slot < QUEUE_LEN`.
        let e = unsafe { ptr::read_volatile(&raw const (*self.mem).used.ring[slot]) };
        self.last_used = self.last_used.wrapping_add(1);
        (e.id as usize, e.len as usize)
    }

    /// Puts descriptor `id` (< QUEUE_LEN) on the available ring; published
    /// with the next [`Virtqueue::publish`].
    fn push_avail(&mut self, id: u16) {
        let slot = usize::from(self.avail_idx) % QUEUE_LEN;
        // SAFETY: the available ring is written only by the driver; `slot <
        // QUEUE_LEN`.
        unsafe { ptr::write_volatile(&raw mut (*self.mem).avail.ring[slot], id) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the available index (Release: entries and buffers first)
    /// and kicks the device if its `avail_event` asks for it.
    fn publish(&mut self) {
        if self.avail_idx == self.published {
            return;
        }
        fence(Ordering::Release);
        // SAFETY: driver-owned field of this queue's static memory.
        unsafe { ptr::write_volatile(&raw mut (*self.mem).avail.idx, self.avail_idx) };
        // The index store before the `avail_event` load (the device stores
        // `avail_event`, then re-reads the index: one of the two sees the other).
        fence(Ordering::SeqCst);
        // SAFETY: device-written field, volatile load.
        let event = unsafe { ptr::read_volatile(&raw const (*self.mem).used.avail_event) };
        let old = self.published;
        self.published = self.avail_idx;
        if need_event(event, self.avail_idx, old) {
            // SAFETY: `notify` is this queue's notification address inside
            // the notify BAR, mapped uncached (checked in `bring_up`).
            unsafe { ptr::write_volatile(self.notify, self.index) };
            self.kicks += 1;
        }
    }

    /// Asks for an interrupt when the used index passes `event`.
    fn set_used_event(&mut self, event: u16) {
        // SAFETY: driver-owned field of this queue's static memory.
        unsafe { ptr::write_volatile(&raw mut (*self.mem).avail.used_event, event) };
    }

    fn buffer(&self, id: usize) -> *mut u8 {
        // SAFETY: callers pass `id < QUEUE_LEN`: inside the static.
        unsafe { (&raw mut (*self.mem).buffers[id]).cast() }
    }
}

/// Counters of the virtio-net NIC.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioCounters {
    /// Frames and bytes received (without the virtio-net header).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames and bytes queued for transmission.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Times no transmit descriptor was free.
    pub tx_queue_full: u64,
    /// Used entries with a bad descriptor ID or length, or a used index
    /// ahead by more than the queue (dropped).
    pub device_errors: u64,
    /// Frames smoltcp built larger than a buffer (dropped).
    pub tx_oversize: u64,
}

/// Why the virtio-net device could not be brought up.
#[derive(Clone, Copy, Debug)]
pub enum VirtioError {
    /// No virtio-net function on the bus.
    NotFound,
    /// A virtio-pci capability is missing or points outside its BAR.
    Capability(u8),
    /// Configuration space, BARs, MSI-X, mappings.
    BringUp(BringUpError),
    /// The device lacks a feature the driver needs.
    Features(u64),
    /// The device refused FEATURES_OK.
    FeaturesRefused,
    /// A queue is missing or smaller than [`QUEUE_LEN`].
    Queue(u16),
    /// The device refused the MSI-X vector of a queue.
    Vector(u16),
}

impl From<BringUpError> for VirtioError {
    fn from(e: BringUpError) -> Self {
        VirtioError::BringUp(e)
    }
}

impl From<PciError> for VirtioError {
    fn from(e: PciError) -> Self {
        VirtioError::BringUp(BringUpError::Pci(e))
    }
}

impl From<paging::MapError> for VirtioError {
    fn from(e: paging::MapError) -> Self {
        VirtioError::BringUp(BringUpError::Map(e))
    }
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioError::NotFound => write!(f, "no virtio-net device (1af4:1000/1041)"),
            VirtioError::Capability(t) => {
                write!(f, "virtio-pci capability {t} missing or outside its BAR")
            }
            VirtioError::BringUp(e) => write!(f, "{e}"),
            VirtioError::Features(missing) => {
                write!(f, "device lacks features {missing:#x}")
            }
            VirtioError::FeaturesRefused => write!(f, "device refused FEATURES_OK"),
            VirtioError::Queue(q) => {
                write!(f, "queue {q} missing or shorter than {QUEUE_LEN}")
            }
            VirtioError::Vector(q) => write!(f, "device refused an MSI-X vector for queue {q}"),
        }
    }
}

/// A virtio-pci structure: BAR index, offset, length.
#[derive(Clone, Copy)]
struct CapRef {
    bar: u8,
    offset: u32,
    length: u32,
}

/// Uncached registers of the common configuration.
struct Common(u64);

impl Common {
    fn read<T: Copy>(&self, offset: u64) -> T {
        // SAFETY: `self.0` is the common configuration structure, mapped
        // uncached and at least 0x38 bytes long (checked in `bring_up`);
        // every offset used is a field of the width `T`.
        unsafe { ptr::read_volatile((self.0 + offset) as *const T) }
    }

    fn write<T: Copy>(&self, offset: u64, value: T) {
        // SAFETY: as in `read`.
        unsafe { ptr::write_volatile((self.0 + offset) as *mut T, value) }
    }

    fn write_u64(&self, offset: u64, value: u64) {
        self.write::<u32>(offset, value as u32);
        self.write::<u32>(offset + 4, (value >> 32) as u32);
    }
}

/// The NIC.
pub struct VirtioNic {
    rx: Virtqueue,
    tx: Virtqueue,
    /// Free transmit descriptors (a stack of IDs).
    tx_free: [u16; QUEUE_LEN],
    tx_free_len: usize,
    event_mode: bool,
    counters: VirtioCounters,
    rx_buf: &'static mut [u8; MAX_FRAME],
    tx_scratch: &'static mut [u8; MAX_FRAME],
}

/// Reads the virtio-pci vendor capabilities of `cfg`.
fn read_caps(
    cfg: &PlatformConfigSpace,
) -> Result<(CapRef, CapRef, u32, Option<CapRef>), VirtioError> {
    let (mut common, mut notify, mut device, mut multiplier) = (None, None, None, 0);
    for cap in pci::capabilities(cfg) {
        let cap = cap?;
        if cap.id != CAP_ID_VENDOR {
            continue;
        }
        let o = u16::from(cap.offset);
        cap.check_length(16)?;
        let r = CapRef {
            bar: cfg.read8(o + 4),
            offset: cfg.read32(o + 8),
            length: cfg.read32(o + 12),
        };
        match cfg.read8(o + 3) {
            CAP_COMMON_CFG if common.is_none() => common = Some(r),
            CAP_NOTIFY_CFG if notify.is_none() => {
                cap.check_length(20)?;
                multiplier = cfg.read32(o + 16);
                notify = Some(r);
            }
            CAP_DEVICE_CFG if device.is_none() => device = Some(r),
            _ => {}
        }
    }
    Ok((
        common.ok_or(VirtioError::Capability(CAP_COMMON_CFG))?,
        notify.ok_or(VirtioError::Capability(CAP_NOTIFY_CFG))?,
        multiplier,
        device,
    ))
}

impl VirtioNic {
    /// Finds the virtio-net function, places and maps its BARs, routes
    /// MSI-X vector 0 to this CPU, negotiates features and sets up both
    /// queues. `event_mode`: interrupts and sleeping (`mode=event`), else
    /// pure polling.
    pub fn bring_up(
        apic_id: u32,
        event_mode: bool,
        rx_buf: &'static mut [u8; MAX_FRAME],
        tx_scratch: &'static mut [u8; MAX_FRAME],
    ) -> Result<VirtioNic, VirtioError> {
        let mut cfg = crate::pci::find_map(|cfg, h| {
            (h.vendor_id == VIRTIO_VENDOR && NET_DEVICE_IDS.contains(&h.device_id)).then_some(cfg)
        })
        .ok_or(VirtioError::NotFound)?;
        println!("pci {}: virtio-net", cfg.bdf());
        let (common_ref, notify_ref, multiplier, device_ref) = read_caps(&cfg)?;
        let msix = pci::MsixCapability::find(&cfg)?.ok_or(BringUpError::NoMsix)?;

        let command = pci::read_command(&cfg);
        pci::write_command(
            &mut cfg,
            command.difference(Command::MEMORY | Command::BUS_MASTER),
        );
        let mut alloc = BarAllocator::new();
        let mut bars = [(0u64, 0u64); 6];
        let mut wanted = [common_ref.bar, notify_ref.bar, msix.table_bar, u8::MAX];
        if let Some(d) = device_ref {
            wanted[3] = d.bar;
        }
        for (i, &bar) in wanted.iter().enumerate() {
            if bar >= 6 || wanted[..i].contains(&bar) {
                continue;
            }
            let (address, size) = setup_bar(&mut cfg, bar, &mut alloc)?;
            bars[usize::from(bar)] = (address, size);
            paging::map(address, size, Kind::Mmio, "virtio-net registers")?;
        }
        pci::write_command(
            &mut cfg,
            command | Command::MEMORY | Command::BUS_MASTER | Command::INTX_DISABLE,
        );
        let locate = |r: CapRef, min_len: u32, t: u8| -> Result<u64, VirtioError> {
            let (base, size) = *bars
                .get(usize::from(r.bar))
                .ok_or(VirtioError::Capability(t))?;
            let end = u64::from(r.offset) + u64::from(min_len);
            if base == 0 || r.length < min_len || end > size {
                return Err(VirtioError::Capability(t));
            }
            Ok(base + u64::from(r.offset))
        };
        let common = Common(locate(common_ref, 0x38, CAP_COMMON_CFG)?);
        let notify_base = locate(notify_ref, 2, CAP_NOTIFY_CFG)?;

        // Reset, acknowledge, negotiate (virtio 1.0 §3.1.1).
        common.write::<u8>(common::DEVICE_STATUS, 0);
        while common.read::<u8>(common::DEVICE_STATUS) != 0 {
            core::hint::spin_loop();
        }
        common.write::<u8>(common::DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut features = 0u64;
        for half in 0..2u32 {
            common.write::<u32>(common::DEVICE_FEATURE_SELECT, half);
            features |= u64::from(common.read::<u32>(common::DEVICE_FEATURE)) << (32 * half);
        }
        let want = F_VERSION_1 | F_MAC | F_RING_EVENT_IDX;
        if features & want != want {
            common.write::<u8>(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(VirtioError::Features(want & !features));
        }
        for half in 0..2u32 {
            common.write::<u32>(common::DRIVER_FEATURE_SELECT, half);
            common.write::<u32>(common::DRIVER_FEATURE, (want >> (32 * half)) as u32);
        }
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        common.write::<u8>(common::DEVICE_STATUS, status);
        if common.read::<u8>(common::DEVICE_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(VirtioError::FeaturesRefused);
        }

        let vectors = setup_msix(&mut cfg, &bars, 1, apic_id)?;
        common.write::<u16>(common::MSIX_CONFIG, NO_VECTOR);

        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(VirtioError::Queue(RX_QUEUE));
        }
        let queue = |index: u16, mem: *mut QueueMemory| -> Result<Virtqueue, VirtioError> {
            common.write::<u16>(common::QUEUE_SELECT, index);
            let max = common.read::<u16>(common::QUEUE_SIZE);
            if usize::from(max) < QUEUE_LEN {
                return Err(VirtioError::Queue(index));
            }
            common.write::<u16>(common::QUEUE_SIZE, QUEUE_LEN as u16);
            // Both queues on vector 0; `used_event` decides which
            // completions interrupt.
            common.write::<u16>(common::QUEUE_MSIX_VECTOR, 0);
            if common.read::<u16>(common::QUEUE_MSIX_VECTOR) != 0 {
                return Err(VirtioError::Vector(index));
            }
            let off =
                u64::from(common.read::<u16>(common::QUEUE_NOTIFY_OFF)) * u64::from(multiplier);
            if off + 2 > u64::from(notify_ref.length) {
                return Err(VirtioError::Capability(CAP_NOTIFY_CFG));
            }
            // The guest is identity-mapped: addresses are physical.
            // SAFETY: `mem` is one of the queue statics; only field
            // addresses are taken.
            let (desc, avail, used) = unsafe {
                (
                    (&raw mut (*mem).desc) as u64,
                    (&raw mut (*mem).avail) as u64,
                    (&raw mut (*mem).used) as u64,
                )
            };
            common.write_u64(common::QUEUE_DESC, desc);
            common.write_u64(common::QUEUE_DRIVER, avail);
            common.write_u64(common::QUEUE_DEVICE, used);
            common.write::<u16>(common::QUEUE_ENABLE, 1);
            Ok(Virtqueue {
                mem,
                index,
                notify: (notify_base + off) as *mut u16,
                avail_idx: 0,
                published: 0,
                last_used: 0,
                kicks: 0,
            })
        };
        let mut rx = queue(RX_QUEUE, &raw mut RX_MEMORY)?;
        let mut tx = queue(TX_QUEUE, &raw mut TX_MEMORY)?;

        // Receive descriptors: buffer `i` in descriptor `i`, device-writable,
        // all posted; transmit descriptors: buffer `i`, filled per frame.
        for i in 0..QUEUE_LEN {
            for (q, flags) in [(&rx, DESC_F_WRITE), (&tx, 0)] {
                let desc = Desc {
                    addr: q.buffer(i) as u64,
                    len: BUF_LEN as u32,
                    flags,
                    next: 0,
                };
                // SAFETY: descriptor tables are written only by the driver;
                // `i < QUEUE_LEN`.
                unsafe { ptr::write_volatile(&raw mut (*q.mem).desc[i], desc) };
            }
            rx.push_avail(i as u16);
        }
        // No transmit-completion interrupts, no receive interrupt until the
        // first sleep asks for one.
        rx.set_used_event(FAR);
        tx.set_used_event(FAR);
        common.write::<u8>(common::DEVICE_STATUS, status | STATUS_DRIVER_OK);
        rx.publish();

        let mut mac = [0u8; 6];
        if let Some(d) = device_ref.and_then(|d| locate(d, 6, CAP_DEVICE_CFG).ok()) {
            for (i, b) in mac.iter_mut().enumerate() {
                // SAFETY: the device configuration is mapped uncached and at
                // least 6 bytes long (checked by `locate`).
                *b = unsafe { ptr::read_volatile((d + i as u64) as *const u8) };
            }
        }
        println!(
            "nic: virtio-net on {} (features {:#x}, device mac {:02x?}, {} MSI-X vector(s)), \
             queues of {QUEUE_LEN}, mtu {VIRTIO_MTU}",
            cfg.bdf(),
            want,
            mac,
            vectors
        );
        let mut tx_free = [0u16; QUEUE_LEN];
        for (i, id) in tx_free.iter_mut().enumerate() {
            *id = i as u16;
        }
        Ok(VirtioNic {
            rx,
            tx,
            tx_free,
            tx_free_len: QUEUE_LEN,
            event_mode,
            counters: VirtioCounters::default(),
            rx_buf,
            tx_scratch,
        })
    }

    /// Returns completed transmit descriptors to the free list.
    pub fn reclaim(&mut self) {
        let Some(n) = self.tx.pending() else {
            self.counters.device_errors += 1;
            self.tx.last_used = self.tx.used_idx();
            return;
        };
        for _ in 0..n {
            let (id, _) = self.tx.pop_used();
            if id < QUEUE_LEN
                && self.tx_free_len < QUEUE_LEN
                && !self.tx_free[..self.tx_free_len].contains(&(id as u16))
            {
                self.tx_free[self.tx_free_len] = id as u16;
                self.tx_free_len += 1;
            } else {
                self.counters.device_errors += 1;
            }
        }
        if n > 0 {
            self.tx.set_used_event(self.tx.last_used.wrapping_add(FAR));
        }
    }

    /// Publishes reposted receive buffers and queued frames, kicking each
    /// queue at most once, and only if the device asked.
    pub fn flush(&mut self) {
        self.rx.publish();
        self.tx.publish();
    }

    /// Whether a transmit descriptor is free.
    pub fn can_transmit(&self) -> bool {
        self.tx_free_len > 0
    }

    /// Whether received frames are waiting.
    pub fn rx_pending(&self) -> bool {
        self.rx.used_idx() != self.rx.last_used
    }

    /// Before sleeping: asks for a receive interrupt (and a completion
    /// interrupt if the transmit queue is full), then re-checks both queues.
    /// `true`: work arrived meanwhile, poll again.
    pub fn prepare_sleep(&mut self) -> bool {
        debug_assert!(self.event_mode, "poll mode never sleeps");
        self.rx.set_used_event(self.rx.last_used);
        let tx_full = self.tx_free_len == 0;
        if tx_full {
            self.tx.set_used_event(self.tx.last_used);
        }
        // The event stores before the index loads (the device stores the
        // used index, then loads the event).
        fence(Ordering::SeqCst);
        self.rx_pending() || (tx_full && self.tx.used_idx() != self.tx.last_used)
    }

    /// Takes the next received frame into `rx_buf`; its length.
    fn recv(&mut self) -> Option<usize> {
        loop {
            let Some(n) = self.rx.pending() else {
                self.counters.device_errors += 1;
                self.rx.last_used = self.rx.used_idx();
                return None;
            };
            if n == 0 {
                return None;
            }
            let (id, len) = self.rx.pop_used();
            if id >= QUEUE_LEN || !(NET_HDR..=BUF_LEN).contains(&len) {
                self.counters.device_errors += 1;
                if id < QUEUE_LEN {
                    self.rx.push_avail(id as u16);
                }
                continue;
            }
            let frame = len - NET_HDR;
            // SAFETY: the device has returned buffer `id` (it no longer
            // writes it until it is reposted below); `NET_HDR + frame <=
            // BUF_LEN` and `frame <= BUF_LEN < MAX_FRAME`; raw copy, no
            // reference into the buffer.
            unsafe {
                ptr::copy_nonoverlapping(
                    self.rx.buffer(id).add(NET_HDR),
                    self.rx_buf.as_mut_ptr(),
                    frame,
                );
            }
            self.rx.push_avail(id as u16);
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += frame as u64;
            return Some(frame);
        }
    }
}

/// A received frame, copied out of its buffer.
pub struct VirtioRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for VirtioRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Permission to queue one frame: a free transmit descriptor.
pub struct VirtioTxToken<'a> {
    tx: &'a mut Virtqueue,
    tx_free: &'a mut [u16; QUEUE_LEN],
    tx_free_len: &'a mut usize,
    counters: &'a mut VirtioCounters,
    scratch: &'a mut [u8; MAX_FRAME],
}

impl VirtioTxToken<'_> {
    /// Builds a frame of `len` bytes with `build` and queues it if `build`
    /// says so (`NetDevice::build_frame`).
    fn build<R>(self, len: usize, build: impl FnOnce(&mut [u8]) -> (R, bool)) -> R {
        let n = len.min(MAX_FRAME);
        let (r, send) = build(&mut self.scratch[..n]);
        if !send {
            return r;
        }
        if n > BUF_LEN - NET_HDR {
            self.counters.tx_oversize += 1;
            return r;
        }
        let Some(top) = self.tx_free_len.checked_sub(1) else {
            self.counters.tx_queue_full += 1;
            return r;
        };
        let id = self.tx_free[top];
        *self.tx_free_len = top;
        let buf = self.tx.buffer(usize::from(id));
        // SAFETY: descriptor `id` is free (the device returned it or never
        // had it), so the driver owns its buffer: a zero header, then the
        // frame (`NET_HDR + n <= BUF_LEN`); then the descriptor's length.
        unsafe {
            ptr::write_bytes(buf, 0, NET_HDR);
            ptr::copy_nonoverlapping(self.scratch.as_ptr(), buf.add(NET_HDR), n);
            ptr::write_volatile(
                &raw mut (*self.tx.mem).desc[usize::from(id)].len,
                (NET_HDR + n) as u32,
            );
        }
        self.tx.push_avail(id);
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += n as u64;
        r
    }
}

impl phy::TxToken for VirtioTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.build(len, |frame| (f(frame), true))
    }
}

impl phy::Device for VirtioNic {
    type RxToken<'a> = VirtioRxToken<'a>;
    type TxToken<'a> = VirtioTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.tx_free_len == 0 {
            return None;
        }
        let len = self.recv()?;
        Some((
            VirtioRxToken {
                frame: &self.rx_buf[..len],
            },
            VirtioTxToken {
                tx: &mut self.tx,
                tx_free: &mut self.tx_free,
                tx_free_len: &mut self.tx_free_len,
                counters: &mut self.counters,
                scratch: &mut *self.tx_scratch,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx_free_len == 0 {
            self.counters.tx_queue_full += 1;
            return None;
        }
        Some(VirtioTxToken {
            tx: &mut self.tx,
            tx_free: &mut self.tx_free,
            tx_free_len: &mut self.tx_free_len,
            counters: &mut self.counters,
            scratch: &mut *self.tx_scratch,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = VIRTIO_MTU + ETHERNET_HEADER;
        caps.max_burst_size = None;
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        caps.checksum = checksum;
        caps
    }
}

/// The main loop's view (`net::run`). virtio-net has no link state of its
/// own (the device is up once `DRIVER_OK` is set).
impl NetDevice for VirtioNic {
    const NAME: &'static str = "virtio";

    fn build_frame<'a, R>(
        token: Self::TxToken<'a>,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> (R, bool),
    ) -> R
    where
        Self: 'a,
    {
        token.build(len, build)
    }

    fn set_now(&mut self, _now_us: u64) {}

    fn poll_link(&mut self, _now_us: u64) {}

    fn shutdown(&mut self) {}

    fn link_held_until(&self) -> Option<u64> {
        None
    }

    fn reclaim(&mut self) {
        VirtioNic::reclaim(self)
    }

    fn flush(&mut self) {
        VirtioNic::flush(self)
    }

    fn can_transmit(&mut self) -> bool {
        VirtioNic::can_transmit(self)
    }

    fn rx_pending(&mut self) -> bool {
        VirtioNic::rx_pending(self)
    }

    fn prepare_sleep(&mut self) -> bool {
        VirtioNic::prepare_sleep(self)
    }

    fn mtu(&self) -> usize {
        VIRTIO_MTU
    }

    fn write_link(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        write!(
            w,
            "virtio: rx and tx queues of {QUEUE_LEN} entries, {BUF_LEN}-byte buffers"
        )
    }

    fn write_counters(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        let c = &self.counters;
        write!(
            w,
            " rx_frames={} rx_bytes={} tx_frames={} tx_bytes={} notifications={} kicks_rx={} kicks_tx={} \
             tx_queue_full={} device_errors={} tx_oversize={} log_suppressed={}",
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            self.rx.kicks + self.tx.kicks,
            self.rx.kicks,
            self.tx.kicks,
            c.tx_queue_full,
            c.device_errors,
            c.tx_oversize,
            logger::dropped(),
        )
    }
}
