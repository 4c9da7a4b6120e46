//! QEMU ivshmem-doorbell: identification, MSI-X, the layout page in BAR2,
//! the registers and the device, on a configuration-space image dumped from
//! QEMU 7.2 and on fake BARs.

mod common;

use common::{FakeBar, jailhouse_net, qemu_doorbell};
use ivshmem::layout::{
    LAYOUT_PAGE_SIZE, LayoutError, LayoutPage, PROTOCOL_NET, PROTOCOL_UNDEFINED,
};
use ivshmem::pci::{self, Bar, MsixCapability, MsixEntryField};
use ivshmem::qemu::{self, Registers, doorbell_value, read_layout_page};
use ivshmem::{DeviceError, Ivshmem, Profile, QemuDevice, SharedMemoryLocation};

const IV_POSITION: usize = 0x08;
const DOORBELL: usize = 0x0c;

fn registers(bar: &FakeBar) -> Registers<'_> {
    // SAFETY: the fake BAR is 8-aligned heap memory of at least 0x100 bytes
    // that outlives the handle and is only accessed through raw pointers.
    unsafe { Registers::new(bar.base()) }
}

/// A 1 MiB BAR2 with the layout page of a net link (2 peers, 2 vectors,
/// 0x7f000-byte output sections) at offset 0.
fn net_window() -> (FakeBar, LayoutPage) {
    let page = LayoutPage::new(PROTOCOL_NET, 2, 2, 0x1000, 0, 0x7f000);
    let window = FakeBar::new(0x10_0000);
    window.write_bytes(0, &page.encode());
    (window, page)
}

fn probe<'a>(
    bar0: &'a FakeBar,
    bar2: &'a FakeBar,
    protocol: u16,
) -> Result<QemuDevice<'a>, DeviceError> {
    // SAFETY: bar2 is a live allocation of bar2.size() bytes, accessed only
    // through raw pointers, that outlives the device.
    unsafe { QemuDevice::probe(registers(bar0), bar2.base(), bar2.size(), protocol) }
}

#[test]
fn identify_qemu_7_2_doorbell() {
    let img = qemu_doorbell(2);
    let header = qemu::identify(&img).unwrap();
    assert_eq!(
        (header.vendor_id, header.device_id, header.class.revision),
        (0x1af4, 0x1110, 1)
    );
    assert_eq!(
        Profile::from_ids(header.vendor_id, header.device_id),
        Some(Profile::QemuDoorbell)
    );
    assert_eq!(
        pci::read_bar(&img, 0),
        Ok(Bar::Memory32 {
            address: 0,
            prefetchable: false
        })
    );
    assert_eq!(
        pci::read_bar(&img, 2),
        Ok(Bar::Memory64 {
            address: 0,
            prefetchable: true
        })
    );

    let msix = MsixCapability::find(&img).unwrap().unwrap();
    assert_eq!(
        (
            msix.offset,
            msix.table_size,
            msix.table_bar,
            msix.table_offset,
            msix.pba_bar,
            msix.pba_offset
        ),
        (0x40, 2, qemu::MSIX_BAR, 0, qemu::MSIX_BAR, 0x800)
    );
    assert_eq!(msix.entry_offset(1, MsixEntryField::Data), Some(0x18));
    assert_eq!(msix.entry_offset(2, MsixEntryField::Data), None);
}

#[test]
fn refuses_other_devices() {
    assert_eq!(
        qemu::identify(&jailhouse_net()).unwrap_err(),
        DeviceError::WrongDevice {
            vendor_id: 0x110a,
            device_id: 0x4106
        }
    );
    let mut img = qemu_doorbell(2);
    img.put8(0x08, 0);
    assert_eq!(
        qemu::identify(&img).unwrap_err(),
        DeviceError::UnsupportedRevision {
            found: 0,
            expected: 1
        }
    );
    let mut img = qemu_doorbell(2);
    img.put8(0x0b, 0xff);
    assert!(matches!(qemu::identify(&img), Err(DeviceError::WrongClass(c)) if c.base == 0xff));
    let mut img = qemu_doorbell(2);
    img.put16(0x02, 0x1000); // virtio-net
    assert!(matches!(
        qemu::identify(&img),
        Err(DeviceError::WrongDevice {
            device_id: 0x1000,
            ..
        })
    ));
}

#[test]
fn layout_page_from_bar2() {
    let (window, page) = net_window();
    // SAFETY: the window is a live 1 MiB allocation.
    let read = unsafe { read_layout_page(window.base(), window.size()) }.unwrap();
    assert_eq!(read, page);
    assert_eq!(read.layout.state_table_offset, LAYOUT_PAGE_SIZE);
    assert_eq!(read.layout.output_section_offset(1), Some(0x81000));
}

#[test]
fn bad_layout_pages() {
    let read = |w: &FakeBar, size: u64| {
        // SAFETY: reads stay inside min(size, 0x1000) <= w.size() bytes.
        unsafe { read_layout_page(w.base(), size) }
    };
    let (window, _) = net_window();
    // A window smaller than the page it must contain.
    assert_eq!(
        read(&window, 0x800),
        Err(DeviceError::WindowTooSmall {
            size: 0x800,
            needed: 0x1000
        })
    );
    // Sizes that do not fit the BAR.
    assert_eq!(
        read(&window, 0x80000),
        Err(DeviceError::Layout(LayoutError::DoesNotFit {
            end: 0x100000,
            window_size: 0x80000
        }))
    );
    // Nobody wrote a page (all zero).
    let empty = FakeBar::new(0x10_0000);
    assert_eq!(
        read(&empty, empty.size()),
        Err(DeviceError::Layout(LayoutError::BadMagic([0; 8])))
    );
    // Another version.
    window.write32(0x08, 2);
    assert_eq!(
        read(&window, window.size()),
        Err(DeviceError::Layout(LayoutError::UnsupportedVersion(2)))
    );
    // An unaligned window pointer is refused before any access.
    let (window, _) = net_window();
    let unaligned = window.base().map_addr(|a| a.checked_add(2).unwrap());
    // SAFETY: the pointer is inside the allocation; the function refuses it
    // before reading.
    let result = unsafe { read_layout_page(unaligned, 0x1000) };
    assert_eq!(result, Err(DeviceError::UnalignedPointer));
}

#[test]
fn doorbell_decodes_eight_vector_bits() {
    assert_eq!(doorbell_value(1, 0), Ok(0x0001_0000));
    assert_eq!(doorbell_value(0, 255), Ok(0x0000_00ff));
    assert_eq!(
        doorbell_value(0, 256),
        Err(DeviceError::VectorOutOfRange {
            vector: 256,
            max: 255
        })
    );

    let bar = FakeBar::new(0x100);
    bar.write32(IV_POSITION, 5);
    let regs = registers(&bar);
    assert_eq!(regs.iv_position(), 5);
    regs.ring(1, 1).unwrap();
    assert_eq!(bar.read32(DOORBELL), 0x0001_0001);
    regs.ring(0xffff, 0xff).unwrap();
    assert_eq!(bar.read32(DOORBELL), 0xffff_00ff);
    // QEMU would ring vector 0 for 256: refused, and the device untouched.
    assert_eq!(
        regs.ring(1, 256),
        Err(DeviceError::VectorOutOfRange {
            vector: 256,
            max: 255
        })
    );
    assert_eq!(bar.read32(DOORBELL), 0xffff_00ff);

    regs.set_intr_mask(1);
    assert_eq!(bar.read32(0x00), 1);
    bar.write32(0x04, 3);
    assert_eq!(regs.intr_status(), 3);
}

#[test]
fn device_rings_and_publishes_state() {
    let (window, page) = net_window();
    let bar0 = FakeBar::new(0x100);
    bar0.write32(IV_POSITION, 1);
    let dev = probe(&bar0, &window, PROTOCOL_NET).unwrap();
    assert_eq!(
        (dev.profile(), dev.id(), dev.max_peers()),
        (Profile::QemuDoorbell, 1, 2)
    );
    assert_eq!(dev.layout(), page.layout);
    assert_eq!(dev.location(), SharedMemoryLocation::Bar(2));
    assert_eq!(dev.vectors(), 2);

    dev.ring(0, 1).unwrap();
    assert_eq!(bar0.read32(DOORBELL), 0x0000_0001);
    bar0.write32(DOORBELL, 0xdead_beef);
    assert_eq!(
        dev.ring(0, 2),
        Err(DeviceError::VectorOutOfRange { vector: 2, max: 1 })
    );
    assert_eq!(
        dev.ring(2, 0),
        Err(DeviceError::PeerOutOfRange {
            peer: 2,
            max_peers: 2
        })
    );
    assert_eq!(
        bar0.read32(DOORBELL),
        0xdead_beef,
        "a refused ring must not touch the device"
    );

    // Own entry (peer 1) at 0x1004; the peer's vector 0 rung.
    dev.set_own_state(2);
    assert_eq!(window.read32(0x1004), 2);
    assert_eq!(window.read32(0x1000), 0);
    assert_eq!(bar0.read32(DOORBELL), 0x0000_0000);

    // A platform that maps the table read-only publishes through its own
    // writable alias of the entry instead.
    let alias = FakeBar::new(0x1000);
    let mut dev = dev;
    // SAFETY: the alias is live, 8-aligned heap memory that outlives the
    // device and is only accessed atomically or through raw pointers.
    unsafe { dev.set_own_state_view(alias.base().cast()) }.unwrap();
    bar0.write32(DOORBELL, 0xdead_beef);
    dev.set_own_state(3);
    assert_eq!(alias.read32(0), 3, "stored through the alias");
    assert_eq!(window.read32(0x1004), 2, "BAR2 view left alone");
    assert_eq!(
        bar0.read32(DOORBELL),
        0x0000_0000,
        "vector 0 of peer 0 rung"
    );

    // Interrupt control is MSI-X only: these leave BAR0 alone.
    bar0.write32(DOORBELL, 0x1234_5678);
    dev.enable_interrupts();
    dev.rearm();
    dev.disable_interrupts();
    assert_eq!(
        (0..0x10)
            .step_by(4)
            .map(|o| bar0.read32(o))
            .collect::<Vec<_>>(),
        [0, 0, 1, 0x1234_5678]
    );
}

#[test]
fn set_own_state_rings_every_other_peer() {
    let page = LayoutPage::new(PROTOCOL_UNDEFINED, 1, 3, 0x1000, 0, 0x1000);
    let window = FakeBar::new(0x8000);
    window.write_bytes(0, &page.encode());
    let bar0 = FakeBar::new(0x100);
    let dev = probe(&bar0, &window, PROTOCOL_UNDEFINED).unwrap();
    assert_eq!((dev.id(), dev.max_peers()), (0, 3));
    dev.set_own_state(1);
    assert_eq!(window.read32(0x1000), 1);
    // The last doorbell went to peer 2, vector 0.
    assert_eq!(bar0.read32(DOORBELL), 0x0002_0000);
}

#[test]
fn probe_refuses_bad_devices() {
    let (window, _) = net_window();
    let bar0 = FakeBar::new(0x100);
    bar0.write32(IV_POSITION, 2);
    assert_eq!(
        probe(&bar0, &window, PROTOCOL_NET).unwrap_err(),
        DeviceError::IdOutOfRange {
            id: 2,
            max_peers: 2
        }
    );
    bar0.write32(IV_POSITION, 0);
    assert_eq!(
        probe(&bar0, &window, 0x4000).unwrap_err(),
        DeviceError::WrongProtocol {
            found: PROTOCOL_NET,
            expected: 0x4000
        }
    );
    // A net link that claims three peers: a valid device; ivshmem-net's
    // two-peer rule is the protocol layer's (`ivnet_driver::check_net_link`).
    let page = LayoutPage::new(PROTOCOL_NET, 2, 3, 0x1000, 0, 0x1000);
    let window = FakeBar::new(0x8000);
    window.write_bytes(0, &page.encode());
    assert_eq!(probe(&bar0, &window, PROTOCOL_NET).unwrap().max_peers(), 3);
}
