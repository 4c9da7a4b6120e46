//! The console (`print!`/`println!` are the shared `console` glue): a PL011
//! (from the DTB's `/chosen/stdout-path` or first `arm,pl011`, or from the
//! Jailhouse comm region), or Jailhouse's debug-console hypercall. The
//! firmware, the root cell or the hypervisor has set the PL011 up unless
//! the comm region gives a baud divider; the guest only writes the data
//! register when the transmit FIFO has room (UARTFR.TXFF). Register
//! accesses are single 32-bit `ldr`/`str` (`mmio`).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

use crate::mmio;

// `_print`, `emergency_writer`, `print!`/`println!`: shared with the other guest.
#[path = "../../src/console.rs"]
mod console;
pub use console::{_print, emergency_writer};

/// UARTDR: data register.
const UARTDR: u64 = 0x00;
/// UARTFR: flag register.
const UARTFR: u64 = 0x18;
/// UARTIBRD: integer baud divider.
const UARTIBRD: u64 = 0x24;
/// UARTLCR_H: line control.
const UARTLCR_H: u64 = 0x2c;
/// UARTCR: control.
const UARTCR: u64 = 0x30;
/// UARTFR.TXFF: transmit FIFO full.
const TXFF: u32 = 1 << 5;
/// UARTFR.BUSY: transmitting.
const BUSY: u32 = 1 << 3;
/// UARTLCR_H.WLEN: 8 data bits.
const LCR_H_WLEN_8: u32 = 3 << 5;
/// UARTCR: UART enable, transmit enable, Out1, Out2 (what Jailhouse's
/// inmate library programs).
const CR_ENABLE: u32 = 1 << 0 | 1 << 8 | 1 << 12 | 1 << 13;

/// The PL011's base address (0 = none).
static BASE: AtomicU64 = AtomicU64::new(0);
/// Write through the hypervisor's debug console instead.
static HYPERCALL: AtomicBool = AtomicBool::new(false);

struct Console;

static CONSOLE: Mutex<Console> = Mutex::new(Console);

fn read(base: u64, off: u64) -> u32 {
    // SAFETY: `base` is a PL011 mapped as Device memory by `init`'s caller;
    // 32-bit registers.
    unsafe { mmio::read32(base + off) }
}

fn write(base: u64, off: u64, value: u32) {
    // SAFETY: as in `read`.
    unsafe { mmio::write32(base + off, value) }
}

fn put(b: u8) {
    let base = BASE.load(Ordering::Relaxed);
    if base != 0 {
        while read(base, UARTFR) & TXFF != 0 {
            core::hint::spin_loop();
        }
        write(base, UARTDR, u32::from(b));
    } else if HYPERCALL.load(Ordering::Relaxed) {
        crate::jailhouse::debug_console_putc(b);
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Uses the PL011 at `base`, which must be mapped (`Kind::Mmio`) and set up.
pub fn init(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

/// Uses the PL011 at `base` (mapped), first programming its baud divider
/// if `divider` is nonzero (Jailhouse's console `divider`; 0 means the
/// UART is shared and already set up: leave it alone).
pub fn init_pl011(base: u64, divider: u32) {
    if divider != 0 {
        write(base, UARTCR, 0);
        while read(base, UARTFR) & BUSY != 0 {
            core::hint::spin_loop();
        }
        write(base, UARTIBRD, divider);
        write(base, UARTLCR_H, LCR_H_WLEN_8);
        write(base, UARTCR, CR_ENABLE);
    }
    init(base);
}

/// Writes through the Jailhouse debug-console hypercall.
pub fn init_hypercall() {
    HYPERCALL.store(true, Ordering::Relaxed);
}
