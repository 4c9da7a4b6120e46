//! Time: the TSC as the clock, the LAPIC timer as the wake-up alarm. Their
//! rates come from
//!
//! - [`calibrate`]: the PIT (8254) channel 2, which every PC-compatible
//!   machine (and QEMU under TCG and KVM) has: under QEMU;
//! - [`set_rates`]: the rates Jailhouse publishes in the comm region
//!   (`tsc_khz`, `apic_khz`): in a cell, where the PIT ports are fatal;
//! - [`calibrate_pm_timer`]: the ACPI PM timer, which every cell may read:
//!   in a cell whose comm region gives no rates.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use crate::{apic, cpu};

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 50 ms (the PIT counter is 16 bits: at most ~55 ms).
const CALIBRATION_MS: u64 = 50;

static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static TSC_PER_MS: AtomicU64 = AtomicU64::new(1);
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(1);

/// Result of the calibration, for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// TSC frequency in kHz.
    pub tsc_khz: u64,
    /// LAPIC timer frequency (after the divider) in kHz.
    pub apic_timer_khz: u64,
}

/// Measures the TSC and LAPIC-timer rates over [`CALIBRATION_MS`] of PIT
/// time. The APIC must be initialised.
pub fn calibrate() -> Calibration {
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    let latch = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: ports 0x42/0x43/0x61 are the PIT channel 2 and its gate on
    // PC-compatible machines; channel 2 drives only the (disabled) speaker.
    let (tsc0, tsc1, apic_elapsed) = unsafe {
        // Gate on, speaker off.
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count).
        command.write(0xb0);
        channel2.write((latch & 0xff) as u8);
        channel2.write((latch >> 8) as u8);
        apic::timer_start(u32::MAX, false);
        let tsc0 = cpu::rdtsc();
        let apic0 = apic::timer_current();
        // OUT2 (bit 5) goes high at terminal count.
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let tsc1 = cpu::rdtsc();
        let apic1 = apic::timer_current();
        apic::timer_stop();
        (tsc0, tsc1, u64::from(apic0 - apic1))
    };
    store(
        (tsc1 - tsc0) / CALIBRATION_MS,
        apic_elapsed / CALIBRATION_MS,
        tsc0,
    )
}

/// Takes the rates as given: `tsc_khz` and `apic_timer_khz` (after the
/// divider) in kHz.
pub fn set_rates(tsc_khz: u64, apic_timer_khz: u64) -> Calibration {
    store(tsc_khz, apic_timer_khz, cpu::rdtsc())
}

/// ACPI PM timer rate, Hz (3.579545 MHz, 24 bits).
const PM_TIMER_HZ: u64 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// Measures the TSC and LAPIC-timer rates over [`CALIBRATION_MS`] of ACPI
/// PM timer time, read at I/O port `port` (32-bit reads; Jailhouse always
/// lets a cell read `pm_timer_address`..+3). The APIC must be initialised.
pub fn calibrate_pm_timer(port: u16) -> Calibration {
    let mut pm = Port::<u32>::new(port);
    let window = PM_TIMER_HZ * CALIBRATION_MS / 1000;
    // SAFETY: `port` is the ACPI PM timer the hypervisor names in the comm
    // region; reading it has no side effects.
    let (tsc0, tsc1, apic_elapsed) = unsafe {
        apic::timer_start(u32::MAX, false);
        let pm0 = pm.read() & PM_TIMER_MASK;
        let tsc0 = cpu::rdtsc();
        let apic0 = apic::timer_current();
        // The 24-bit counter wraps every ~4.7 s; the window is 50 ms.
        while u64::from(pm.read().wrapping_sub(pm0) & PM_TIMER_MASK) < window {
            core::hint::spin_loop();
        }
        let tsc1 = cpu::rdtsc();
        let apic1 = apic::timer_current();
        apic::timer_stop();
        (tsc0, tsc1, u64::from(apic0 - apic1))
    };
    store(
        (tsc1 - tsc0) / CALIBRATION_MS,
        apic_elapsed / CALIBRATION_MS,
        tsc0,
    )
}

fn store(tsc_per_ms: u64, apic_per_ms: u64, tsc0: u64) -> Calibration {
    let tsc_per_ms = tsc_per_ms.max(1);
    let apic_per_ms = apic_per_ms.max(1);
    TSC_AT_BOOT.store(tsc0, Ordering::Relaxed);
    TSC_PER_MS.store(tsc_per_ms, Ordering::Relaxed);
    APIC_TICKS_PER_MS.store(apic_per_ms, Ordering::Relaxed);
    Calibration {
        tsc_khz: tsc_per_ms,
        apic_timer_khz: apic_per_ms,
    }
}

/// Microseconds since calibration.
pub fn now_us() -> u64 {
    let elapsed = cpu::rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (u128::from(elapsed) * 1000 / u128::from(TSC_PER_MS.load(Ordering::Relaxed))) as u64
}

/// Deadline of the armed alarm (µs since calibration), `u64::MAX` if none.
static ALARM_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Arms the LAPIC timer to interrupt after `us` microseconds (clamped to
/// what the 32-bit counter can express).
pub fn arm_alarm_us(us: u64) {
    let now = now_us();
    ALARM_AT.store(now.saturating_add(us), Ordering::Relaxed);
    let ticks = u128::from(us) * u128::from(APIC_TICKS_PER_MS.load(Ordering::Relaxed)) / 1000;
    let ticks = ticks.clamp(1, u128::from(u32::MAX)) as u32;
    apic::timer_start(ticks, true);
}

/// Makes sure an alarm fires no later than `deadline` (µs, from [`now_us`]
/// read as `now`). Keeps an earlier alarm that is still pending instead of
/// reprogramming the timer: each LAPIC write is a VM exit, and an early
/// wake-up only costs one more round of the main loop.
pub fn alarm_at(now: u64, deadline: u64) {
    let armed = ALARM_AT.load(Ordering::Relaxed);
    if armed > now && armed <= deadline {
        return;
    }
    ALARM_AT.store(deadline, Ordering::Relaxed);
    let us = deadline.saturating_sub(now);
    let ticks = u128::from(us) * u128::from(APIC_TICKS_PER_MS.load(Ordering::Relaxed)) / 1000;
    let ticks = ticks.clamp(1, u128::from(u32::MAX)) as u32;
    apic::timer_start(ticks, true);
}

/// How long 1000 loads from guest memory take, in nanoseconds: a crude
/// speed figure for the boot log. Under some nested-KVM setups guest code
/// runs orders of magnitude slower than under TCG; the test harness uses
/// this number to pick the faster accelerator.
pub fn memory_speed_ns_per_1000() -> u64 {
    static WORDS: [u64; 512] = [0; 512];
    const LOADS: usize = 10_000;
    let start = cpu::rdtsc();
    let mut acc = 0u64;
    for i in 0..LOADS {
        // SAFETY: `i % 512` indexes the static array; a volatile load keeps
        // the compiler from folding the loop away.
        acc = acc.wrapping_add(unsafe { (&raw const WORDS[i % 512]).read_volatile() });
    }
    core::hint::black_box(acc);
    let cycles = cpu::rdtsc().wrapping_sub(start);
    let tsc_per_ms = TSC_PER_MS.load(Ordering::Relaxed);
    // cycles / (tsc_per_ms / 1e6 ns) / (LOADS / 1000)
    (u128::from(cycles) * 1_000_000 / u128::from(tsc_per_ms) / (LOADS as u128 / 1000)) as u64
}
