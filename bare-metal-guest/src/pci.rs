//! PCI configuration space through the legacy ports 0xCF8/0xCFC
//! ("configuration mechanism #1"), which q35 and Jailhouse both offer, and a
//! bus scan. Parsing (header, BARs, capabilities, MSI-X) is `ivshmem::pci`.

use ivshmem::pci::{ConfigSpace, HEADER_TYPE, Header, LEGACY_CONFIG_SPACE_SIZE, VENDOR_ID};
use x86_64::instructions::port::Port;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

pub use ivnet_guest::bdf::Bdf;

/// Where unassigned memory BARs are placed: the top of q35's 32-bit PCI
/// hole, above the MMCONFIG window (0xB000_0000..0xC000_0000) and below the
/// IOAPIC (0xFEC0_0000). Used only when the firmware left a BAR at 0 (qboot
/// does; SeaBIOS assigns everything; Jailhouse clears ivshmem BARs on reset).
pub fn bar_window() -> core::ops::Range<u64> {
    0xC000_0000..0xFEC0_0000
}

/// Why MSI(-X) cannot work on this platform: it always can (the local
/// APIC takes MSIs on every PC and in every Jailhouse x86 cell).
pub fn msi_unsupported() -> Option<&'static str> {
    None
}

/// INTx: not routed (the guest drives no IOAPIC; ivshmem devices on q35
/// and Jailhouse x86 have MSI-X).
pub fn route_intx(_bdf: Bdf, _pin: u8) -> Option<u32> {
    None
}

/// The configuration-space access `device` uses on this platform.
pub type PlatformConfigSpace = PortConfigSpace;

/// The configuration space of one function, through port I/O.
#[derive(Clone, Copy, Debug)]
pub struct PortConfigSpace {
    bdf: Bdf,
}

impl PortConfigSpace {
    /// The function at `bdf` (`device < 32`, `function < 8`).
    pub fn new(bdf: Bdf) -> Self {
        PortConfigSpace { bdf }
    }

    /// Where this function is.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    fn address(&self, offset: u16) -> u32 {
        0x8000_0000
            | u32::from(self.bdf.bus) << 16
            | u32::from(self.bdf.device & 0x1f) << 11
            | u32::from(self.bdf.function & 0x7) << 8
            | u32::from(offset & 0xfc)
    }
}

impl ConfigSpace for PortConfigSpace {
    fn read32(&self, offset: u16) -> u32 {
        if offset >= LEGACY_CONFIG_SPACE_SIZE {
            return u32::MAX;
        }
        let mut address = Port::<u32>::new(CONFIG_ADDRESS);
        let mut data = Port::<u32>::new(CONFIG_DATA);
        // SAFETY: 0xCF8/0xCFC are the PCI configuration ports; the address
        // selects a register of this function (offset < 256). Only the main
        // loop accesses configuration space (never interrupt handlers), so
        // the address/data pair cannot be interleaved.
        unsafe {
            address.write(self.address(offset));
            data.read()
        }
    }

    fn write32(&mut self, offset: u16, value: u32) {
        if offset >= LEGACY_CONFIG_SPACE_SIZE {
            return;
        }
        let mut address = Port::<u32>::new(CONFIG_ADDRESS);
        let mut data = Port::<u32>::new(CONFIG_DATA);
        // SAFETY: as in `read32`; the callers write only registers whose
        // effects they own (Command, BARs, the MSI-X capability).
        unsafe {
            address.write(self.address(offset));
            data.write(value);
        }
    }
}

/// Calls `f` for every function present on buses 0..=255 (function 0 of
/// every device, and functions 1..8 of multi-function devices), until `f`
/// returns `Some`.
pub fn find_map<T>(mut f: impl FnMut(PortConfigSpace, &Header) -> Option<T>) -> Option<T> {
    for bus in 0..=255u8 {
        for device in 0..32u8 {
            let cfg0 = PortConfigSpace::new(Bdf {
                bus,
                device,
                function: 0,
            });
            // One read per empty slot: the vendor ID reads 0xFFFF there.
            if cfg0.read32(VENDOR_ID) as u16 == 0xffff {
                continue;
            }
            let header = Header::read(&cfg0);
            if let Some(t) = f(cfg0, &header) {
                return Some(t);
            }
            let multi_function = cfg0.read8(HEADER_TYPE) & 0x80 != 0;
            if !multi_function {
                continue;
            }
            for function in 1..8u8 {
                let cfg = PortConfigSpace::new(Bdf {
                    bus,
                    device,
                    function,
                });
                if cfg.read32(VENDOR_ID) as u16 == 0xffff {
                    continue;
                }
                if let Some(t) = f(cfg, &Header::read(&cfg)) {
                    return Some(t);
                }
            }
        }
    }
    None
}
