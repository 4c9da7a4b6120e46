//! PCI configuration space through ECAM (the DTB's
//! `pci-host-ecam-generic` node, or the comm region's `pci_mmconfig_base`
//! under Jailhouse, bus 0 only), a bus scan, and how the host bridge's
//! functions interrupt the CPU (MSI through GICv2m, or INTx under
//! Jailhouse). Parsing (header, BARs, capabilities, MSI-X) is
//! `ivshmem::pci`, as on x86. Every configuration access is one 32-bit
//! `ldr`/`str` (`mmio`): Jailhouse emulates ECAM from the data abort.

use core::ops::Range;

use ivnet_guest::comm_region;
use ivshmem::pci::{ConfigSpace, HEADER_TYPE, Header, VENDOR_ID};
use spin::Once;

use crate::{gic, mmio};

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
    /// How functions interrupt the CPU.
    pub interrupts: Interrupts,
}

/// How the host bridge's functions interrupt the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupts {
    /// MSI(-X) writes to the GICv2m frame (QEMU `virt` with GICv2); INTx
    /// is not routed.
    Msi,
    /// INTx only (Jailhouse's virtual host bridge): pin n of any function
    /// is INTID 32 + `vpci_irq_base` + n - 1, edge-triggered.
    Intx {
        /// The cell's `vpci_irq_base`.
        vpci_irq_base: u32,
    },
}

/// Why MSI(-X) cannot work on this platform, or `None` if it can.
pub fn msi_unsupported() -> Option<&'static str> {
    match HOST.get()?.interrupts {
        Interrupts::Msi => None,
        Interrupts::Intx { .. } => Some(
            "this platform takes PCI interrupts only as INTx (Jailhouse's virtual PCI host: \
             a GICv3 has no MSI frame, and without an ITS nothing turns an MSI write into \
             an interrupt; the guest drives no ITS)",
        ),
    }
}

/// Routes INTx pin `pin` (1..=4, the function's Interrupt Pin) to this CPU
/// as doorbell vector 0 (an edge-triggered SPI) and returns its INTID;
/// `None` if the platform routes no INTx or the pin maps to no SPI.
pub fn route_intx(_bdf: Bdf, pin: u8) -> Option<u32> {
    match HOST.get()?.interrupts {
        Interrupts::Msi => None,
        Interrupts::Intx { vpci_irq_base } => {
            let intid = comm_region::intx_intid(vpci_irq_base, pin)?;
            gic::enable_doorbells(intid, 1);
            Some(intid)
        }
    }
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
        // which the platform mapped as Device memory for the guest's
        // lifetime; the access is an aligned 32-bit load.
        unsafe { mmio::read32(self.base + u64::from(offset & !3)) }
    }

    fn write32(&mut self, offset: u16, value: u32) {
        if offset >= 0x1000 {
            return;
        }
        // SAFETY: as in `read32`; the callers write only registers whose
        // effects they own (Command, BARs, the MSI-X capability).
        unsafe { mmio::write32(self.base + u64::from(offset & !3), value) }
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
