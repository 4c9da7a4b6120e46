//! The clock and the alarm on the architected generic timer: the virtual
//! counter CNTVCT_EL0 at CNTFRQ_EL0 (no calibration) and the virtual timer
//! (CNTV_CVAL/CTL, PPI 27), the one Jailhouse passes to cells. The entry
//! code makes CNTVOFF_EL2 zero when it starts at EL2; Linux leaves it zero
//! for Jailhouse cells.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::exceptions::{self, EVENT_TIMER, IRQ_COUNTERS};

/// The virtual timer's interrupt (PPI 11 = INTID 27).
pub const TIMER_INTID: u32 = 27;

static FREQ_HZ: AtomicU64 = AtomicU64::new(1);
static COUNT_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// Deadline of the armed alarm (µs since boot), `u64::MAX` if none.
static ALARM_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// The virtual counter.
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reads the counter; the ISB orders it after earlier code.
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Reads CNTFRQ_EL0 and starts the clock. Returns the frequency in Hz.
pub fn init() -> u64 {
    let f: u64;
    // SAFETY: reads the frequency register.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    FREQ_HZ.store(f.max(1), Ordering::Relaxed);
    COUNT_AT_BOOT.store(counter(), Ordering::Relaxed);
    f
}

/// Microseconds since [`init`].
pub fn now_us() -> u64 {
    let elapsed = counter().wrapping_sub(COUNT_AT_BOOT.load(Ordering::Relaxed));
    (u128::from(elapsed) * 1_000_000 / u128::from(FREQ_HZ.load(Ordering::Relaxed))) as u64
}

fn program(deadline_us: u64) {
    ALARM_AT.store(deadline_us, Ordering::Relaxed);
    let freq = u128::from(FREQ_HZ.load(Ordering::Relaxed));
    let ticks = (u128::from(deadline_us) * freq / 1_000_000).min(u128::from(u64::MAX / 2)) as u64;
    let cval = COUNT_AT_BOOT.load(Ordering::Relaxed).wrapping_add(ticks);
    // SAFETY: programs the virtual timer's compare value and enables it
    // (CTL.ENABLE = 1, IMASK = 0).
    unsafe {
        core::arch::asm!("msr cntv_cval_el0, {}", "msr cntv_ctl_el0, {}", "isb",
            in(reg) cval, in(reg) 1u64, options(nomem, nostack));
    }
}

/// Arms the timer to interrupt after `us` microseconds.
pub fn arm_alarm_us(us: u64) {
    program(now_us().saturating_add(us));
}

/// Makes sure an alarm fires no later than `deadline` (µs, from [`now_us`]
/// read as `now`); an earlier pending alarm is kept.
pub fn alarm_at(now: u64, deadline: u64) {
    let armed = ALARM_AT.load(Ordering::Relaxed);
    if armed > now && armed <= deadline {
        return;
    }
    program(deadline);
}

/// The timer interrupt (level-triggered: masked until re-armed).
pub fn handle_interrupt() {
    // SAFETY: CTL.ENABLE = 1 with IMASK = 1 silences the timer's output.
    unsafe {
        core::arch::asm!("msr cntv_ctl_el0, {}", "isb", in(reg) 3u64, options(nomem, nostack))
    };
    ALARM_AT.store(u64::MAX, Ordering::Relaxed);
    IRQ_COUNTERS.timer.fetch_add(1, Ordering::Relaxed);
    exceptions::post(EVENT_TIMER);
}

/// How long 1000 loads from guest memory take, in nanoseconds (the boot
/// log's speed figure, as on x86).
pub fn memory_speed_ns_per_1000() -> u64 {
    static WORDS: [u64; 512] = [0; 512];
    const LOADS: usize = 10_000;
    let start = now_ns();
    let mut acc = 0u64;
    for i in 0..LOADS {
        // SAFETY: `i % 512` indexes the static array; a volatile load keeps
        // the compiler from folding the loop away.
        acc = acc.wrapping_add(unsafe { (&raw const WORDS[i % 512]).read_volatile() });
    }
    core::hint::black_box(acc);
    (now_ns() - start) / (LOADS as u64 / 1000)
}

fn now_ns() -> u64 {
    (u128::from(counter()) * 1_000_000_000 / u128::from(FREQ_HZ.load(Ordering::Relaxed))) as u64
}
