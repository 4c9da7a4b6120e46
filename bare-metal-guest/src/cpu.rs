//! CPU identification (through `raw-cpuid`) and the few control-register
//! and MSR bits the guest needs.

use raw_cpuid::{CpuId, Hypervisor};
use x86_64::registers::model_specific::{Efer, EferFlags};

/// What the guest needs to know about the CPU it runs on.
#[derive(Clone, Copy, Debug)]
pub struct CpuFeatures {
    /// CPUID.01H:ECX[21]: the local APIC can run in x2APIC (MSR) mode.
    pub x2apic: bool,
    /// CPUID.80000001H:EDX[20]: page-table NX bit.
    pub nx: bool,
    /// Physical address width (MAXPHYADDR).
    pub phys_addr_bits: u8,
    /// Hypervisor as announced by CPUID 4000_0000H.
    pub hypervisor: HypervisorKind,
}

/// The hypervisor under the guest, for the boot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervisorKind {
    /// KVM (QEMU with `-accel kvm`).
    Kvm,
    /// QEMU without an accelerator (TCG).
    QemuTcg,
    /// Anything else, or none announced.
    Other,
}

impl HypervisorKind {
    /// Name for the boot log.
    pub const fn name(self) -> &'static str {
        match self {
            HypervisorKind::Kvm => "kvm",
            HypervisorKind::QemuTcg => "tcg",
            HypervisorKind::Other => "other",
        }
    }
}

/// Reads the CPU's features.
pub fn detect() -> CpuFeatures {
    let cpuid = CpuId::new();
    let x2apic = cpuid.get_feature_info().is_some_and(|f| f.has_x2apic());
    let ext = cpuid.get_extended_processor_and_feature_identifiers();
    let nx = ext.as_ref().is_some_and(|e| e.has_execute_disable());
    let phys_addr_bits = cpuid
        .get_processor_capacity_feature_info()
        .map_or(36, |c| c.physical_address_bits());
    let hypervisor = match cpuid.get_hypervisor_info().map(|h| h.identify()) {
        Some(Hypervisor::KVM) => HypervisorKind::Kvm,
        Some(Hypervisor::QEMU) => HypervisorKind::QemuTcg,
        _ => HypervisorKind::Other,
    };
    CpuFeatures {
        x2apic,
        nx,
        phys_addr_bits,
        hypervisor,
    }
}

/// Turns on EFER.NXE so that page-table entries may carry NO_EXECUTE.
pub fn enable_nx() {
    // SAFETY: setting NXE only gives meaning to bit 63 of page-table
    // entries; the boot tables never set it, so no mapping changes. The
    // caller checked CPUID for NX support (writing NXE without it #GPs).
    unsafe { Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE)) };
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}
