//! The PCI layer: derived narrow reads, the capability walk, BARs (decoding,
//! programming, sizing against a model of BAR hardware) and MSI-X control.

mod common;

use common::{jailhouse_net, qemu_doorbell};
use ivshmem::pci::{
    self, Bar, Command, ConfigImage, ConfigSpace, Header, MsixCapability, PciError, Status,
    read_command, write_command,
};

#[test]
fn narrow_reads_come_from_aligned_dwords() {
    struct Recording {
        img: ConfigImage,
        offsets: std::cell::RefCell<Vec<u16>>,
    }
    impl ConfigSpace for Recording {
        fn read32(&self, offset: u16) -> u32 {
            self.offsets.borrow_mut().push(offset);
            self.img.read32(offset)
        }
        fn write32(&mut self, offset: u16, value: u32) {
            self.img.write32(offset, value)
        }
    }
    let mut img = ConfigImage::zeroed();
    for (i, b) in img.0.iter_mut().enumerate() {
        *b = i as u8;
    }
    let cfg = Recording {
        img,
        offsets: Default::default(),
    };
    assert_eq!(cfg.read8(0x41), 0x41);
    assert_eq!(cfg.read16(0x42), 0x4342);
    assert_eq!(cfg.read16(0x43), 0x4443); // straddles two dwords
    assert_eq!(cfg.read16(0xff), 0xff_ff); // second byte beyond the end reads 0xff
    assert_eq!(cfg.read64(0x48), 0x4f4e_4d4c_4b4a_4948);
    assert!(
        cfg.offsets.borrow().iter().all(|o| o % 4 == 0),
        "{:?}",
        cfg.offsets.borrow()
    );
    assert_eq!(ConfigImage::zeroed().read32(0x100), 0xffff_ffff);
}

#[test]
fn header_and_command() {
    let mut img = jailhouse_net();
    let header = Header::read(&img);
    assert!(header.is_present());
    assert_eq!(header.status, Status::CAPABILITIES_LIST);
    assert_eq!(header.command, Command::empty());
    assert_eq!(header.capabilities_pointer, 0x40);
    write_command(&mut img, Command::MEMORY | Command::BUS_MASTER);
    assert_eq!(img.read32(0x04), 0x0000_0006, "status half written as 0");
    assert_eq!(read_command(&img), Command::MEMORY | Command::BUS_MASTER);
    assert_eq!(Command::INTX_DISABLE.bits(), 0x400);
    assert_eq!(Command::IO.bits(), 1);
}

#[test]
fn a_full_list_of_48_capabilities_is_walked() {
    let mut img = jailhouse_net();
    for offset in (0x40..0x100).step_by(4) {
        let next = if offset == 0xfc { 0 } else { offset + 4 };
        img.put32(offset, (next as u32) << 8 | 0x0a);
    }
    let caps: Vec<_> = pci::capabilities(&img).collect::<Result<_, _>>().unwrap();
    assert_eq!(caps.len(), 48);
    assert_eq!(caps.last().unwrap().offset, 0xfc);
    // The same list closed into a ring is a loop, not an endless walk.
    img.put8(0xfd, 0x40);
    let results: Vec<_> = pci::capabilities(&img).collect();
    assert_eq!(results.len(), 49);
    assert_eq!(results[48], Err(PciError::CapabilityLoop { pointer: 0x40 }));
    // Reads beyond 0xff (0xffffffff) end in an unaligned pointer, as on a
    // Jailhouse device past its 0x80 emulated bytes.
    let mut img = jailhouse_net();
    img.put8(0x61, 0x80);
    for b in &mut img.0[0x80..] {
        *b = 0xff;
    }
    let walked: Vec<_> = pci::capabilities(&img).collect();
    assert_eq!(walked.len(), 4);
    assert_eq!(walked[2].unwrap().id, 0xff);
    assert_eq!(
        walked[3],
        Err(PciError::UnalignedCapabilityPointer {
            at: 0x81,
            pointer: 0xff
        })
    );
}

/// Configuration space with BARs that behave like hardware: the low bits of
/// an implemented BAR are hard-wired to its type and its size mask, so
/// writing all-ones reads back the size.
struct BarModel {
    img: ConfigImage,
    /// (size, type bits) per BAR slot; size 0 = not implemented. A 64-bit
    /// BAR's upper slot has type bits `u32::MAX`.
    bars: [(u64, u32); 6],
    /// Command register value whenever a BAR was written all-ones.
    command_while_sizing: Vec<Command>,
}

impl BarModel {
    fn new(bars: [(u64, u32); 6]) -> Self {
        let mut img = qemu_doorbell(2);
        img.put16(
            0x04,
            (Command::MEMORY | Command::IO | Command::BUS_MASTER).bits(),
        );
        for (i, (size, ty)) in bars.iter().enumerate() {
            if *size != 0 && *ty != u32::MAX {
                img.put32(0x10 + 4 * i, *ty);
            } else {
                img.put32(0x10 + 4 * i, 0);
            }
        }
        BarModel {
            img,
            bars,
            command_while_sizing: Vec::new(),
        }
    }
}

impl ConfigSpace for BarModel {
    fn read32(&self, offset: u16) -> u32 {
        self.img.read32(offset)
    }

    fn write32(&mut self, offset: u16, value: u32) {
        if (0x10..0x28).contains(&offset) {
            let i = usize::from((offset - 0x10) / 4);
            if value == u32::MAX {
                self.command_while_sizing.push(read_command(&self.img));
            }
            let stored = match self.bars[i] {
                (0, _) => 0,
                (_, u32::MAX) => {
                    let size = self.bars[i - 1].0;
                    value & ((!(size - 1)) >> 32) as u32
                }
                (size, ty) => (value & !(size - 1) as u32 & !0xf) | ty,
            };
            self.img.write32(offset, stored);
        } else if offset == 0x04 {
            // Status (upper half) is read-only or write-1-to-clear.
            let status = self.img.read32(0x04) & 0xffff_0000;
            self.img.write32(offset, status | (value & 0xffff));
        } else {
            self.img.write32(offset, value);
        }
    }
}

#[test]
fn bar_sizing_restores_everything() {
    let mut cfg = BarModel::new([
        (0x100, 0x0),            // BAR0: 32-bit memory, 256 B (QEMU registers)
        (0x1000, 0x0),           // BAR1: 32-bit memory, 4 KiB (MSI-X)
        (0x4000_0000, 0xc),      // BAR2: 64-bit prefetchable, 1 GiB
        (0x4000_0000, u32::MAX), // BAR3: its upper half
        (0x20, 0x1),             // BAR4: I/O, 32 ports
        (0, 0),                  // BAR5: none
    ]);
    pci::program_bar(&mut cfg, 0, 0xfebf_1000).unwrap();
    pci::program_bar(&mut cfg, 1, 0xfebf_2000).unwrap();
    let bar2 = pci::program_bar(&mut cfg, 2, 0x8_0000_0000).unwrap();
    assert_eq!(
        bar2,
        Bar::Memory64 {
            address: 0x8_0000_0000,
            prefetchable: true
        }
    );
    pci::program_bar(&mut cfg, 4, 0xc040).unwrap();
    let before = cfg.img;

    assert_eq!(
        pci::size_bar(&mut cfg, 0),
        Ok((
            Bar::Memory32 {
                address: 0xfebf_1000,
                prefetchable: false
            },
            0x100
        ))
    );
    assert_eq!(pci::size_bar(&mut cfg, 1).unwrap().1, 0x1000);
    assert_eq!(pci::size_bar(&mut cfg, 2), Ok((bar2, 0x4000_0000)));
    assert_eq!(
        pci::size_bar(&mut cfg, 4),
        Ok((Bar::Io { port: 0xc040 }, 0x20))
    );
    assert_eq!(pci::size_bar(&mut cfg, 5).unwrap().1, 0);
    assert_eq!(cfg.img, before, "BARs and Command restored");
    assert!(
        cfg.command_while_sizing
            .iter()
            .all(|c| !c.intersects(Command::MEMORY | Command::IO)),
        "decoding must be off while a BAR holds all-ones: {:?}",
        cfg.command_while_sizing
    );
    assert!(cfg.command_while_sizing.len() >= 5);
}

#[test]
fn bar_decoding_errors() {
    let mut img = ConfigImage::zeroed();
    assert_eq!(pci::read_bar(&img, 6), Err(PciError::NoSuchBar(6)));
    img.put32(0x10, 0x2); // type 01b: "below 1 MiB", reserved since PCI 3.0
    assert_eq!(
        pci::read_bar(&img, 0),
        Err(PciError::ReservedBarType { index: 0, raw: 0x2 })
    );
    img.put32(0x10, 0x6); // type 11b
    assert!(matches!(
        pci::read_bar(&img, 0),
        Err(PciError::ReservedBarType { .. })
    ));
    img.put32(0x24, 0x4); // 64-bit BAR in slot 5
    assert_eq!(pci::read_bar(&img, 5), Err(PciError::Truncated64BitBar));
    img.put32(0x14, 0xfebf_0008);
    assert_eq!(
        pci::read_bar(&img, 1),
        Ok(Bar::Memory32 {
            address: 0xfebf_0000,
            prefetchable: true
        })
    );
    img.put32(0x18, 0x0000_e001);
    assert_eq!(pci::read_bar(&img, 2), Ok(Bar::Io { port: 0xe000 }));
    assert!(!pci::read_bar(&img, 2).unwrap().is_memory());
}

#[test]
fn msix_control_and_bad_capabilities() {
    let mut img = qemu_doorbell(2);
    let mut msix = MsixCapability::find(&img).unwrap().unwrap();
    msix.set_control(&mut img, true, true);
    assert_eq!(img.read32(0x40), 0xc001_0011);
    assert!(msix.enabled && msix.function_masked);
    msix.set_control(&mut img, true, false);
    assert_eq!(img.read32(0x40), 0x8001_0011);
    let reparsed = MsixCapability::find(&img).unwrap().unwrap();
    assert_eq!(reparsed, msix);
    msix.set_control(&mut img, false, false);
    assert_eq!(img.read32(0x40), 0x0001_0011);

    // Table size field 0x7ff = 2048 entries.
    img.put16(0x42, 0x07ff);
    assert_eq!(
        MsixCapability::find(&img).unwrap().unwrap().table_size,
        2048
    );

    let mut img = qemu_doorbell(2);
    img.put8(0x44, 0x06);
    assert_eq!(
        MsixCapability::find(&img),
        Err(PciError::ReservedMsixBir { bir: 6 })
    );
    let mut img = qemu_doorbell(2);
    img.put8(0x48, 0x07);
    assert_eq!(
        MsixCapability::find(&img),
        Err(PciError::ReservedMsixBir { bir: 7 })
    );

    // An MSI-X capability at 0xf8 would need bytes up to 0x103.
    let mut img = qemu_doorbell(2);
    img.put8(0x34, 0xf8);
    img.put32(0xf8, 0x0001_0011);
    assert_eq!(
        MsixCapability::find(&img),
        Err(PciError::CapabilityPastEnd {
            id: 0x11,
            offset: 0xf8,
            length: 12
        })
    );
    // No MSI-X at all (ivshmem-plain): Ok(None).
    let mut img = qemu_doorbell(2);
    img.put16(0x06, 0);
    assert_eq!(MsixCapability::find(&img), Ok(None));
}

#[test]
fn image_from_a_short_sysfs_read() {
    // Unprivileged readers of /sys/bus/pci/devices/*/config get 64 bytes.
    let full = jailhouse_net();
    let header_only = ConfigImage::from_prefix(&full.0[..64]);
    assert_eq!(Header::read(&header_only), Header::read(&full));
    assert_eq!(
        ivshmem::jailhouse::VendorCapability::find(&header_only),
        Err(ivshmem::DeviceError::Pci(
            PciError::UnalignedCapabilityPointer {
                at: 0x41,
                pointer: 0xff
            }
        ))
    );
    // A 4 KiB PCIe read keeps the legacy part.
    let mut long = full.0.to_vec();
    long.resize(4096, 0);
    assert_eq!(ConfigImage::from_prefix(&long), full);
}
