//! CPU identification (through `raw-cpuid`) and the few control-register
//! and MSR bits the guest needs.

use raw_cpuid::{CpuId, Hypervisor};
use x86_64::registers::control::{Cr0, Cr0Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};

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
    /// CPUID.01H:EDX[12]: memory type range registers.
    pub mtrr: bool,
}

/// The hypervisor under the guest, for the boot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervisorKind {
    /// KVM (QEMU with `-accel kvm`).
    Kvm,
    /// QEMU without an accelerator (TCG).
    QemuTcg,
    /// The Jailhouse partitioning hypervisor (a non-root cell).
    Jailhouse,
    /// Anything else, or none announced.
    Other,
}

impl HypervisorKind {
    /// Name for the boot log.
    pub const fn name(self) -> &'static str {
        match self {
            HypervisorKind::Kvm => "kvm",
            HypervisorKind::QemuTcg => "tcg",
            HypervisorKind::Jailhouse => "jailhouse",
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
        // CPUID 0x4000_0000: EBX, ECX, EDX = "Jail", "hous", "e\0\0\0".
        Some(Hypervisor::Unknown(0x6c69_614a, 0x7375_6f68, 0x65)) => HypervisorKind::Jailhouse,
        _ => HypervisorKind::Other,
    };
    let mtrr = cpuid.get_feature_info().is_some_and(|f| f.has_mtrr());
    CpuFeatures {
        x2apic,
        nx,
        phys_addr_bits,
        hypervisor,
        mtrr,
    }
}

/// Writes back and invalidates all caches (no crate wraps WBINVD).
///
/// # Safety
///
/// Ring 0 only; it has no effect on memory contents.
unsafe fn wbinvd() {
    // SAFETY: the caller runs in ring 0; WBINVD touches no registers and
    // only flushes caches.
    unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
}

const IA32_MTRRCAP: u32 = 0xfe;
const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const IA32_MTRR_PHYSMASK0: u32 = 0x201;
/// MTRRdefType: MTRRs enabled (E, bit 11), fixed ranges off, default type
/// write-back (6).
const DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// Makes write-back the memory type of all physical memory as far as the
/// MTRRs are concerned, so that the page tables alone decide caching
/// (PCD|PWT → uncached for MMIO, plain → write-back for RAM and shared
/// memory). Returns the number of variable ranges cleared.
///
/// Firmware leaves the MTRRs in different states: qboot leaves them
/// disabled, which makes *all* memory uncached (harmless under TCG, but
/// under KVM every access then costs microseconds); SeaBIOS marks the PCI
/// hole uncached, which would make the ivshmem window — a BAR in that hole
/// — uncached too. The Jailhouse inmate library likewise enables the MTRRs
/// with a write-back default.
pub fn mtrr_write_back() -> u32 {
    let cap = Msr::new(IA32_MTRRCAP);
    // SAFETY: IA32_MTRRCAP exists when CPUID reports MTRR support (the
    // caller checked); reading it has no side effects.
    let variable = unsafe { cap.read() } as u32 & 0xff;
    let cr0 = Cr0::read();
    // The SDM's sequence for changing MTRRs: caches off and flushed, MTRRs
    // off, change, MTRRs on, flush, caches on. Interrupts are still off at
    // this point of the boot.
    // SAFETY: only caching attributes change; no mapping, no memory
    // contents. CD is set only for the duration of the update.
    unsafe {
        Cr0::write(cr0 | Cr0Flags::CACHE_DISABLE);
        wbinvd();
        Msr::new(IA32_MTRR_DEF_TYPE).write(0);
        for i in 0..variable {
            Msr::new(IA32_MTRR_PHYSMASK0 + 2 * i).write(0);
        }
        Msr::new(IA32_MTRR_DEF_TYPE).write(DEF_TYPE_WB_ENABLED);
        wbinvd();
        Cr0::write(cr0 - Cr0Flags::CACHE_DISABLE - Cr0Flags::NOT_WRITE_THROUGH);
    }
    variable
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
