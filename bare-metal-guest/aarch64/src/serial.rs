//! The PL011 console (`print!`/`println!` are the shared `console` glue). The UART's address comes from
//! the DTB (`/chosen/stdout-path`, else the first `arm,pl011`), or from
//! the comm region under Jailhouse. The firmware / root cell has set the
//! baud rate; the guest only writes the data register when the transmit
//! FIFO has room (UARTFR.TXFF).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

// `_print`, `emergency_writer`, `print!`/`println!`: shared with the other guest.
#[path = "../../src/console.rs"]
mod console;
pub use console::{_print, emergency_writer};

/// UARTDR: data register.
const UARTDR: u64 = 0x00;
/// UARTFR: flag register.
const UARTFR: u64 = 0x18;
/// UARTFR.TXFF: transmit FIFO full.
const TXFF: u32 = 1 << 5;

/// The UART's base address (0 = no console yet).
static BASE: AtomicU64 = AtomicU64::new(0);

struct Console;

static CONSOLE: Mutex<Console> = Mutex::new(Console);

fn put(base: u64, b: u8) {
    // SAFETY: `base` is a PL011 mapped as Device memory by `init`'s caller;
    // 32-bit accesses to UARTFR and UARTDR only.
    unsafe {
        while ((base + UARTFR) as *const u32).read_volatile() & TXFF != 0 {
            core::hint::spin_loop();
        }
        ((base + UARTDR) as *mut u32).write_volatile(u32::from(b));
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let base = BASE.load(Ordering::Relaxed);
        if base == 0 {
            return Ok(());
        }
        for b in s.bytes() {
            if b == b'\n' {
                put(base, b'\r');
            }
            put(base, b);
        }
        Ok(())
    }
}

/// Uses the PL011 at `base`, which must be mapped (`Kind::Mmio`).
pub fn init(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}
