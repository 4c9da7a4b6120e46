//! Jailhouse ivshmem 2.0: identification, the vendor capability and the
//! registers, on configuration-space images built from the specification
//! and Jailhouse's `default_cspace`, and on a fake BAR0.

mod common;

use common::{FakeBar, JailhouseParams, NET_LINK, jailhouse_cspace, jailhouse_net};
use ivshmem::jailhouse::{self, IntControl, Registers, VendorCapability, doorbell_value};
use ivshmem::layout::{LayoutError, PROTOCOL_NET, PROTOCOL_UNDEFINED, Region};
use ivshmem::pci::{
    self, Bar, CAP_ID_MSIX, CAP_ID_VENDOR, Capability, ConfigImage, ConfigSpace, MsixCapability,
    PciError,
};
use ivshmem::{DeviceError, Ivshmem, JailhouseDevice, Profile, SharedMemoryLocation};

const STATE: usize = 0x10;
const DOORBELL: usize = 0x0c;
const INT_CONTROL: usize = 0x08;

fn bar0(id: u32, max_peers: u32) -> FakeBar {
    let bar = FakeBar::new(0x1000);
    bar.write32(0x00, id);
    bar.write32(0x04, max_peers);
    bar
}

fn registers(bar: &FakeBar) -> Registers<'_> {
    // SAFETY: the fake BAR is 4 KiB of 8-aligned heap memory that outlives
    // the returned handle and is only accessed through raw pointers.
    unsafe { Registers::new(bar.base()) }
}

fn validate(
    img: &ConfigImage,
    max_peers: u32,
    id: u32,
) -> Result<ivshmem::SharedMemoryLayout, DeviceError> {
    jailhouse::identify(img)?;
    VendorCapability::find(img)?.validate(max_peers, id, None)
}

#[test]
fn default_cspace_of_a_net_link() {
    let img = jailhouse_net();
    let identity = jailhouse::identify(&img).unwrap();
    assert_eq!(identity.protocol, PROTOCOL_NET);
    assert_eq!(identity.header.class.to_dword(), 0xff00_0100);
    assert_eq!(identity.header.subsystem_vendor_id, 0x110a);
    assert_eq!(Profile::from_ids(0x110a, 0x4106), Some(Profile::Jailhouse));

    let caps: Vec<Capability> = pci::capabilities(&img).map(Result::unwrap).collect();
    assert_eq!(
        caps,
        [
            Capability {
                id: CAP_ID_VENDOR,
                offset: 0x40
            },
            Capability {
                id: CAP_ID_MSIX,
                offset: 0x60
            }
        ]
    );

    let cap = VendorCapability::find(&img).unwrap();
    assert_eq!(
        cap,
        VendorCapability {
            offset: 0x40,
            length: 0x20,
            state_table_size: 0x1000,
            rw_section_size: 0,
            output_section_size: 0x7f000,
            base_address: Some(0x3f10_0000),
        }
    );
    assert_eq!(cap.location(), SharedMemoryLocation::Physical(0x3f10_0000));
    assert!(!cap.one_shot(&img));

    let layout = cap.validate(2, 1, None).unwrap();
    assert_eq!(layout.state_table_offset, 0);
    assert_eq!(layout.output_section_offset(0), Some(0x1000));
    assert_eq!(layout.output_section_offset(1), Some(0x80000));
    assert_eq!(layout.end(), 0xff000);

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
        (0x60, 2, 1, 0, 1, 0x100)
    );
    assert!(!msix.enabled && !msix.function_masked);

    // BARs are cleared on reset; the guest programs them.
    assert_eq!(
        pci::read_bar(&img, 0),
        Ok(Bar::Memory32 {
            address: 0,
            prefetchable: false
        })
    );
}

#[test]
fn three_peer_demo_link() {
    // configs/x86/ivshmem-demo.c: ST 0x1000, RW 0x9000, 3 x 0x2000, 16 vectors.
    let img = jailhouse_cspace(JailhouseParams {
        protocol: PROTOCOL_UNDEFINED,
        state_table_size: 0x1000,
        rw_section_size: 0x9000,
        output_section_size: 0x2000,
        base: 0x3f0f_0000,
        msix_vectors: 16,
    });
    let layout = validate(&img, 3, 1).unwrap();
    assert_eq!(layout.rw_section_offset(), 0x1000);
    assert_eq!(layout.output_section_offset(2), Some(0xe000));
    assert_eq!(layout.end(), 0x10000);
    assert_eq!(MsixCapability::find(&img).unwrap().unwrap().table_size, 16);
    // The device layer has no per-protocol peer limit: ivshmem-net's two
    // peers are checked above it (`ivnet_driver::check_net_link`).
    let img = jailhouse_cspace(JailhouseParams {
        protocol: PROTOCOL_NET,
        ..NET_LINK
    });
    assert_eq!(validate(&img, 3, 0).unwrap().max_peers, 3);
}

#[test]
fn wrong_device_class_revision_protocol() {
    let mut img = jailhouse_net();
    img.put16(0x00, 0x1af4);
    assert_eq!(
        jailhouse::identify(&img).unwrap_err(),
        DeviceError::WrongDevice {
            vendor_id: 0x1af4,
            device_id: 0x4106
        }
    );
    let mut img = jailhouse_net();
    img.put16(0x02, 0x4107);
    assert!(matches!(
        jailhouse::identify(&img),
        Err(DeviceError::WrongDevice {
            device_id: 0x4107,
            ..
        })
    ));
    assert_eq!(
        jailhouse::identify(&ConfigImage([0xff; 256])),
        Err(DeviceError::NoDevice)
    );

    let mut img = jailhouse_net();
    img.put8(0x0b, 0x05);
    assert!(matches!(jailhouse::identify(&img), Err(DeviceError::WrongClass(c)) if c.base == 0x05));

    let mut img = jailhouse_net();
    img.put8(0x08, 2); // the July-2019 draft's revision
    assert_eq!(
        jailhouse::identify(&img).unwrap_err(),
        DeviceError::UnsupportedRevision {
            found: 2,
            expected: 0
        }
    );

    let img = jailhouse_cspace(JailhouseParams {
        protocol: 0x8002,
        ..NET_LINK
    });
    let bar = bar0(0, 2);
    assert_eq!(
        JailhouseDevice::probe(&img, registers(&bar), PROTOCOL_NET, None).unwrap_err(),
        DeviceError::WrongProtocol {
            found: 0x8002,
            expected: PROTOCOL_NET
        }
    );
}

#[test]
fn malformed_capability_lists() {
    // Capabilities pointer into the header.
    let mut img = jailhouse_net();
    img.put8(0x34, 0x20);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::Pci(PciError::CapabilityPointerInHeader {
            at: 0x34,
            pointer: 0x20
        }))
    );
    // Truncated list: the vendor capability's next pointer leads into the
    // header, so the walk to MSI-X stops there.
    let mut img = jailhouse_net();
    img.put8(0x41, 0x3c);
    assert!(VendorCapability::find(&img).is_ok());
    assert_eq!(
        MsixCapability::find(&img),
        Err(PciError::CapabilityPointerInHeader {
            at: 0x41,
            pointer: 0x3c
        })
    );
    // Unaligned next pointer.
    let mut img = jailhouse_net();
    img.put8(0x41, 0x62);
    assert_eq!(
        MsixCapability::find(&img),
        Err(PciError::UnalignedCapabilityPointer {
            at: 0x41,
            pointer: 0x62
        })
    );
    // Looping list: MSI-X points back to the vendor capability.
    let mut img = jailhouse_net();
    img.put8(0x61, 0x40);
    img.put8(0x60, 0x05); // MSI-X turned into MSI, so the search never ends by finding it
    assert_eq!(
        MsixCapability::find(&img),
        Err(PciError::CapabilityLoop { pointer: 0x40 })
    );
    // A capability that points to itself.
    let mut img = jailhouse_net();
    img.put8(0x40, 0x05);
    img.put8(0x41, 0x40);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::Pci(PciError::CapabilityLoop { pointer: 0x40 }))
    );
    // Status says there is no list.
    let mut img = jailhouse_net();
    img.put16(0x06, 0);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::MissingCapability { id: CAP_ID_VENDOR })
    );
    assert_eq!(pci::capabilities(&img).count(), 0);
    // A list without the vendor capability.
    let mut img = jailhouse_net();
    img.put8(0x40, 0x10);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::MissingCapability { id: CAP_ID_VENDOR })
    );
}

#[test]
fn truncated_vendor_capability() {
    let mut img = jailhouse_net();
    img.put8(0x42, 0x10);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::TruncatedVendorCapability {
            offset: 0x40,
            length: 0x10
        })
    );
    let mut img = jailhouse_net();
    img.put8(0x42, 0x1c);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::BadVendorCapabilityLength {
            offset: 0x40,
            length: 0x1c
        })
    );
    // A complete capability whose body runs past the end of config space.
    let mut img = ConfigImage::zeroed();
    img.0[..0x40].copy_from_slice(&jailhouse_net().0[..0x40]);
    img.put8(0x34, 0xf0);
    img.put32(0xf0, 0x20 << 16 | 0x09);
    assert_eq!(
        VendorCapability::find(&img),
        Err(DeviceError::Pci(PciError::CapabilityPastEnd {
            id: 0x09,
            offset: 0xf0,
            length: 0x20
        }))
    );
    // The same capability with length 0x18 ends at 0x108: still too long.
    img.put8(0xf2, 0x18);
    assert!(matches!(
        VendorCapability::find(&img),
        Err(DeviceError::Pci(PciError::CapabilityPastEnd {
            length: 0x18,
            ..
        }))
    ));
    // At 0xe8 it ends exactly at 0x100 and is accepted (memory in BAR2).
    img.put8(0x34, 0xe8);
    img.put32(0xe8, 0x18 << 16 | 0x09);
    img.put32(0xec, 0x1000);
    img.put64(0xf8, 0x7f000);
    let cap = VendorCapability::find(&img).unwrap();
    assert_eq!((cap.offset, cap.base_address), (0xe8, None));
}

#[test]
fn memory_in_bar2_when_there_is_no_base_address() {
    let mut img = jailhouse_net();
    img.put8(0x42, 0x18);
    img.put64(0x58, 0xdead_beef_0000); // beyond the capability: ignored
    let cap = VendorCapability::find(&img).unwrap();
    assert_eq!(cap.base_address, None);
    assert_eq!(cap.location(), SharedMemoryLocation::Bar(2));
    assert_eq!(
        cap.validate(2, 0, None),
        Err(DeviceError::NoSharedMemoryWindow)
    );
    assert_eq!(
        cap.validate(2, 0, Some(0)),
        Err(DeviceError::NoSharedMemoryWindow)
    );
    assert_eq!(cap.validate(2, 0, Some(0x100000)).unwrap().end(), 0xff000);
    assert_eq!(
        cap.validate(2, 0, Some(0x80000)),
        Err(DeviceError::Layout(LayoutError::DoesNotFit {
            end: 0xff000,
            window_size: 0x80000
        }))
    );
}

#[test]
fn bad_sizes() {
    let with = |p: JailhouseParams| validate(&jailhouse_cspace(p), 2, 0);
    assert_eq!(
        with(JailhouseParams {
            state_table_size: 0,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::ZeroSize(
            Region::StateTable
        )))
    );
    assert_eq!(
        with(JailhouseParams {
            output_section_size: 0,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::ZeroSize(
            Region::OutputSection
        )))
    );
    assert_eq!(
        with(JailhouseParams {
            output_section_size: 0x7f010,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::Unaligned {
            region: Region::OutputSection,
            value: 0x7f010
        }))
    );
    assert_eq!(
        with(JailhouseParams {
            rw_section_size: 0x800,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::Unaligned {
            region: Region::RwSection,
            value: 0x800
        }))
    );
    assert_eq!(
        with(JailhouseParams {
            state_table_size: 0x1004,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::Unaligned {
            region: Region::StateTable,
            value: 0x1004
        }))
    );
    assert_eq!(
        with(JailhouseParams {
            output_section_size: !0xfff_u64,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::Overflow))
    );
    assert_eq!(
        with(JailhouseParams {
            rw_section_size: !0xfff_u64,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::Overflow))
    );
    // The region would wrap around the top of the address space.
    assert_eq!(
        with(JailhouseParams {
            base: 0xffff_ffff_ffff_0000,
            ..NET_LINK
        }),
        Err(DeviceError::Layout(LayoutError::DoesNotFit {
            end: 0xff000,
            window_size: 0xffff
        }))
    );
    assert_eq!(
        with(JailhouseParams {
            base: 0x3f10_0800,
            ..NET_LINK
        }),
        Err(DeviceError::UnalignedBaseAddress(0x3f10_0800))
    );
}

#[test]
fn peer_count_and_id() {
    let img = jailhouse_net();
    // No per-protocol limit in the device layer (see above).
    assert_eq!(validate(&img, 3, 0).unwrap().max_peers, 3);
    assert_eq!(validate(&img, 12, 11).unwrap().max_peers, 12);
    assert_eq!(
        validate(&img, 1, 0),
        Err(DeviceError::Layout(LayoutError::TooFewPeers(1)))
    );
    assert_eq!(
        validate(&img, 0, 0),
        Err(DeviceError::Layout(LayoutError::TooFewPeers(0)))
    );
    assert_eq!(
        validate(&img, 2, 2),
        Err(DeviceError::IdOutOfRange {
            id: 2,
            max_peers: 2
        })
    );
    assert_eq!(
        validate(&img, 2, u32::MAX),
        Err(DeviceError::IdOutOfRange {
            id: u32::MAX,
            max_peers: 2
        })
    );
    let undefined = jailhouse_cspace(JailhouseParams {
        protocol: PROTOCOL_UNDEFINED,
        ..NET_LINK
    });
    assert_eq!(
        validate(&undefined, 0x10000, 0),
        Err(DeviceError::TooManyPeers {
            max_peers: 0x10000,
            limit: 0xffff
        })
    );
    // 12 peers of 0x7f000 need more than 1 MiB, which is fine with a base.
    assert_eq!(validate(&undefined, 12, 11).unwrap().max_peers, 12);
}

#[test]
fn one_shot_bit() {
    let mut img = jailhouse_net();
    let cap = VendorCapability::find(&img).unwrap();
    cap.set_one_shot(&mut img, true);
    assert!(cap.one_shot(&img));
    assert_eq!(img.0[0x43], 0x01);
    // ID, next and length untouched.
    assert_eq!(img.read32(0x40), 0x0120_6009);
    cap.set_one_shot(&mut img, false);
    assert!(!cap.one_shot(&img));
    assert_eq!(img.read32(0x40), 0x0020_6009);
}

#[test]
fn register_offsets_and_doorbell_encoding() {
    assert_eq!(doorbell_value(1, 0), 0x0001_0000);
    assert_eq!(doorbell_value(0, 1), 0x0000_0001);
    assert_eq!(doorbell_value(0xffff, 0xffff), 0xffff_ffff);
    assert_eq!(doorbell_value(0x1234, 0xabcd), 0x1234_abcd);

    let bar = bar0(1, 2);
    bar.write32(STATE, 7);
    let regs = registers(&bar);
    assert_eq!(regs.id(), 1);
    assert_eq!(regs.max_peers(), 2);
    assert_eq!(regs.state(), 7);
    assert_eq!(regs.int_control(), IntControl::empty());

    regs.set_int_control(IntControl::ENABLE);
    assert_eq!(bar.read32(INT_CONTROL), 1);
    bar.write32(INT_CONTROL, 0); // the device clearing it in one-shot mode
    assert_eq!(regs.int_control(), IntControl::empty());

    regs.ring(0, 1);
    assert_eq!(bar.read32(DOORBELL), 0x0000_0001);
    regs.ring(3, 9);
    assert_eq!(bar.read32(DOORBELL), 0x0003_0009);
    regs.set_state(3);
    assert_eq!(bar.read32(STATE), 3);
    // Nothing beyond the 5 registers was touched.
    for offset in (0x14..0x1000).step_by(4) {
        assert_eq!(bar.read32(offset), 0, "offset {offset:#x}");
    }
}

#[test]
fn device_over_fake_bar0() {
    let img = jailhouse_net();
    let bar = bar0(1, 2);
    let dev = JailhouseDevice::probe(&img, registers(&bar), PROTOCOL_NET, None).unwrap();
    assert_eq!(
        (dev.profile(), dev.id(), dev.max_peers()),
        (Profile::Jailhouse, 1, 2)
    );
    assert_eq!(dev.protocol(), PROTOCOL_NET);
    assert_eq!(dev.location(), SharedMemoryLocation::Physical(0x3f10_0000));
    assert_eq!(dev.layout().output_section_offset(1), Some(0x80000));

    dev.enable_interrupts();
    assert_eq!(bar.read32(INT_CONTROL), 1);
    dev.disable_interrupts();
    assert_eq!(bar.read32(INT_CONTROL), 0);
    dev.rearm();
    assert_eq!(bar.read32(INT_CONTROL), 1);

    dev.ring(0, 1).unwrap();
    assert_eq!(bar.read32(DOORBELL), 0x0000_0001);
    bar.write32(DOORBELL, 0xdead_beef);
    assert_eq!(
        dev.ring(2, 0),
        Err(DeviceError::PeerOutOfRange {
            peer: 2,
            max_peers: 2
        })
    );
    assert_eq!(
        bar.read32(DOORBELL),
        0xdead_beef,
        "a refused ring must not touch the device"
    );

    dev.set_own_state(2);
    assert_eq!(bar.read32(STATE), 2);

    // Through the run-time enum as well.
    let any = ivshmem::Device::from(dev);
    any.ring(0, 0).unwrap();
    assert_eq!(bar.read32(DOORBELL), 0);
    assert_eq!(any.profile(), Profile::Jailhouse);

    // A device whose ID register is out of range is refused.
    let bar = bar0(2, 2);
    assert_eq!(
        JailhouseDevice::probe(&img, registers(&bar), PROTOCOL_NET, None).unwrap_err(),
        DeviceError::IdOutOfRange {
            id: 2,
            max_peers: 2
        }
    );
    let bar = bar0(0, 0x1_0000);
    assert_eq!(
        JailhouseDevice::probe(&img, registers(&bar), PROTOCOL_NET, None).unwrap_err(),
        DeviceError::TooManyPeers {
            max_peers: 0x1_0000,
            limit: 0xffff
        }
    );
}

#[test]
fn errors_display_something_useful() {
    let e = DeviceError::Pci(PciError::CapabilityLoop { pointer: 0x40 });
    assert_eq!(
        e.to_string(),
        "malformed PCI configuration space: capability list loops back to 0x40"
    );
    let e: &dyn std::error::Error = &e;
    assert!(e.source().is_some());
    assert_eq!(
        DeviceError::TooManyPeers {
            max_peers: 3,
            limit: 2
        }
        .to_string(),
        "device allows 3 peers, at most 2 are supported"
    );
}
