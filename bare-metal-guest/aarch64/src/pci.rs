//! PCI configuration space through ECAM (the DTB's
//! `pci-host-ecam-generic` node, or the comm region's `pci_mmconfig_base`
//! under Jailhouse) and a bus scan. Parsing (header, BARs, capabilities,
//! MSI-X) is `ivshmem::pci`, as on x86.

use core::ops::Range;

use ivshmem::pci::{ConfigSpace, HEADER_TYPE, Header, VENDOR_ID};
use spin::Once;

pub use ivnet_guest::bdf::Bdf;

/// The host bridge: where ECAM is, which buses it decodes, and the 32-bit
/// memory window unassigned BARs go to.
#[derive(Clone, Debug)]
pub struct HostBridge {
    /// Physical address of bus `buses.start`'s configuration space (mapped
    /// as Device memory).
    pub ecam: u64,
    /// Bus numbers.
    pub buses: Range<u16>,
    /// CPU addresses of the non-prefetchable 32-bit memory window (CPU =
    /// PCI address on `virt` and Jailhouse).
    pub window: Range<u64>,
}

static HOST: Once<HostBridge> = Once::new();

/// Sets the host bridge (once, at boot).
pub fn init(host: HostBridge) {
    HOST.call_once(|| host);
}

/// Where unassigned memory BARs are placed.
pub fn bar_window() -> Range<u64> {
    HOST.get().map_or(0..0, |h| h.window.clone())
}

/// The configuration-space access `device` uses on this platform.
pub type PlatformConfigSpace = EcamConfigSpace;

/// The configuration space of one function, through ECAM (4 KiB).
#[derive(Clone, Copy, Debug)]
pub struct EcamConfigSpace {
    bdf: Bdf,
    base: u64,
}

impl EcamConfigSpace {
    fn new(host: &HostBridge, bdf: Bdf) -> Self {
        let off = (u64::from(bdf.bus) - u64::from(host.buses.start)) << 20
            | u64::from(bdf.device & 0x1f) << 15
            | u64::from(bdf.function & 7) << 12;
        EcamConfigSpace {
            bdf,
            base: host.ecam + off,
        }
    }

    /// Where this function is.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }
}

impl ConfigSpace for EcamConfigSpace {
    fn read32(&self, offset: u16) -> u32 {
        if offset >= 0x1000 {
            return u32::MAX;
        }
        // SAFETY: `base` is this function's 4 KiB inside the ECAM window,
        // which `platform` mapped as Device memory for the guest's
        // lifetime; the access is an aligned 32-bit volatile load.
        unsafe { ((self.base + u64::from(offset & !3)) as *const u32).read_volatile() }
    }

    fn write32(&mut self, offset: u16, value: u32) {
        if offset >= 0x1000 {
            return;
        }
        // SAFETY: as in `read32`; the callers write only registers whose
        // effects they own (Command, BARs, the MSI-X capability).
        unsafe { ((self.base + u64::from(offset & !3)) as *mut u32).write_volatile(value) }
    }
}

/// Calls `f` for every function present on the host bridge's buses
/// (function 0 of every device, and functions 1..8 of multi-function
/// devices), until `f` returns `Some`.
pub fn find_map<T>(mut f: impl FnMut(EcamConfigSpace, &Header) -> Option<T>) -> Option<T> {
    let host = HOST.get()?;
    for bus in host.buses.clone() {
        let bus = bus as u8;
        for device in 0..32u8 {
            for function in 0..8u8 {
                let cfg = EcamConfigSpace::new(
                    host,
                    Bdf {
                        bus,
                        device,
                        function,
                    },
                );
                if cfg.read32(VENDOR_ID) as u16 == 0xffff {
                    if function == 0 {
                        break;
                    }
                    continue;
                }
                if let Some(t) = f(cfg, &Header::read(&cfg)) {
                    return Some(t);
                }
                if function == 0 && cfg.read8(HEADER_TYPE) & 0x80 == 0 {
                    break;
                }
            }
        }
    }
    None
}
