//! The PL011 console (`print!`/`println!`). The UART's address comes from
//! the DTB (`/chosen/stdout-path`, else the first `arm,pl011`), or from
//! the comm region under Jailhouse. The firmware / root cell has set the
//! baud rate; the guest only writes the data register when the transmit
//! FIFO has room (UARTFR.TXFF).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

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

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// A writer for the fault and panic paths that does not wait for the
/// console lock (the interrupted code may hold it).
pub fn emergency_writer() -> impl Write {
    struct Emergency;
    impl Write for Emergency {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            // SAFETY: only used on paths that never return to the interrupted
            // code (they end in `exit`), so breaking its lock cannot let two
            // owners interleave beyond one garbled line.
            unsafe { CONSOLE.force_unlock() };
            CONSOLE.lock().write_str(s)
        }
    }
    Emergency
}

/// `print!` on the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// `println!` on the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::print!("{}\n", format_args!($($arg)*)));
}
