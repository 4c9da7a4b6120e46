//! `DeviceLink` over the `ivshmem` crate's QEMU profile, on fake BARs in
//! heap memory: the driver's state publications and data doorbells reach
//! the registers and the state table as the profile prescribes.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use ivnet_driver::{DeviceLink, Driver, DriverConfig, LinkDevice};
use ivnet_ring::{Config, Endpoint, LinkState, OwnSection, PeerSection};
use ivshmem::layout::{LayoutPage, PROTOCOL_NET};
use ivshmem::qemu::Registers;
use ivshmem::{DeviceError, QemuDevice};

const DOORBELL: usize = 0x0c;
const IV_POSITION: usize = 0x08;
const SECTION: u64 = 0x20000;
const STATE_TABLE: usize = 0x1000;

/// Page-aligned, zeroed heap memory standing in for a BAR.
struct Bar {
    base: NonNull<u8>,
    layout: Layout,
}

impl Bar {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes, 4096).unwrap();
        // SAFETY: non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation");
        Bar { base, layout }
    }
    fn base(&self) -> NonNull<u8> {
        self.base
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
    fn cell(&self, byte_offset: usize) -> &AtomicU32 {
        assert!(byte_offset + 4 <= self.len() && byte_offset.is_multiple_of(4));
        let ptr = self.base.as_ptr().wrapping_add(byte_offset).cast();
        // SAFETY: in bounds and aligned (checked), the allocation lives as
        // long as `self`, and every access to it is atomic or raw.
        unsafe { AtomicU32::from_ptr(ptr) }
    }
    fn word(&self, byte_offset: usize) -> u32 {
        self.cell(byte_offset).load(Ordering::SeqCst)
    }
    fn set(&self, byte_offset: usize, v: u32) {
        self.cell(byte_offset).store(v, Ordering::SeqCst)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

fn now() -> u64 {
    0
}

fn qemu_link<'a>(bar0: &'a Bar, bar2: &'a Bar, vectors: u32) -> DeviceLink<'a> {
    let page = LayoutPage::new(PROTOCOL_NET, vectors, 2, 0x1000, 0, SECTION);
    for (i, chunk) in page.encode().chunks(4).enumerate() {
        bar2.set(4 * i, u32::from_le_bytes(chunk.try_into().unwrap()));
    }
    bar0.set(IV_POSITION, 0);
    // SAFETY: the fake BARs are live heap memory, accessed only through raw
    // pointers and atomics, outliving the device.
    let regs = unsafe { Registers::new(bar0.base()) };
    // SAFETY: as above; bar2 holds the whole window.
    let dev =
        unsafe { QemuDevice::probe(regs, bar2.base(), bar2.len() as u64, PROTOCOL_NET) }.unwrap();
    let table = dev.state_table();
    // SAFETY: the state table of the fake window, alive for 'a.
    unsafe { DeviceLink::new(dev, table, 64, now) }.unwrap()
}

fn endpoint(bar2: &Bar) -> Endpoint {
    let base = bar2.base().as_ptr();
    let off = 0x2000usize; // layout page + state table
    // SAFETY: both sections lie inside the fake window, which outlives the
    // endpoint in these tests.
    let own = unsafe { OwnSection::new(base.wrapping_add(off), SECTION as usize) }.unwrap();
    // SAFETY: as above.
    let peer =
        unsafe { PeerSection::new(base.wrapping_add(off + SECTION as usize), SECTION as usize) }
            .unwrap();
    Endpoint::new(own, peer, Config::with_mtu(1500)).unwrap()
}

#[test]
fn qemu_profile_publishes_through_the_table_and_rings_the_peer() {
    let bar0 = Bar::new(0x100);
    let bar2 = Bar::new(0x1000 + 0x1000 + 2 * SECTION as usize);
    let link = qemu_link(&bar0, &bar2, 1);
    assert_eq!(link.vectors(), 1, "at most the layout page's vectors");
    let mut driver = Driver::new(link, endpoint(&bar2), DriverConfig::default());
    assert_eq!(driver.data_vector(), 0);
    bar0.set(DOORBELL, 0xdead_beef);
    let _ = driver.poll_link(true);
    // Peer 1 in RESET: we published RESET, then INIT, each with a vector-0
    // doorbell to peer 1.
    assert_eq!(bar2.word(STATE_TABLE), LinkState::Init.raw());
    assert_eq!(bar0.word(DOORBELL), 1 << 16);
    assert_eq!(driver.counters().state_writes, 2);
    // The peer's entry is read from the table.
    bar2.set(STATE_TABLE + 4, LinkState::Init.raw());
    let _ = driver.poll_link(true);
    assert_eq!(driver.local_state(), LinkState::Ready);
    assert_eq!(driver.peer_state_raw(), Some(1));
}

#[test]
fn refused_vector_is_an_error() {
    let bar0 = Bar::new(0x100);
    let bar2 = Bar::new(0x1000 + 0x1000 + 2 * SECTION as usize);
    let mut link = qemu_link(&bar0, &bar2, 1);
    bar0.set(DOORBELL, 0x1234);
    assert!(matches!(
        link.ring(1),
        Err(DeviceError::VectorOutOfRange { vector: 1, max: 0 })
    ));
    assert_eq!(
        bar0.word(DOORBELL),
        0x1234,
        "refused ring touched the device"
    );
    link.ring(0).unwrap();
    assert_eq!(bar0.word(DOORBELL), 1 << 16);
}
