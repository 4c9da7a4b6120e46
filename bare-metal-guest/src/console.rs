//! The console glue both guests share over their platform's UART
//! (`super::CONSOLE`, a spin lock around a `core::fmt::Write` UART: the
//! 16550 on x86, the PL011 on aarch64): `print!`/`println!` and the writer
//! for the fatal paths. Compiled as `serial::console` into each guest.
//!
//! Interrupt handlers never print (they only count and set flags), so the
//! lock is only contended by fatal paths (panic, CPU exceptions). Those call
//! [`emergency_writer`], which takes the UART even if the interrupted code
//! held the lock: the machine is about to stop anyway.

use core::fmt::{self, Write};

use super::CONSOLE;

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// A writer for fatal paths that must print even if the code they
/// interrupted held the console lock.
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

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}
