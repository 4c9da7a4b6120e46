//! The serial console: a 16550 UART on COM1 (port 0x3F8), through the
//! `uart_16550` crate, behind a spin lock; `print!`/`println!` and the
//! fatal paths' writer are the shared `console` glue.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550};

// `_print`, `emergency_writer`, `print!`/`println!`: shared with the other guest.
#[path = "console.rs"]
mod console;
pub use console::{_print, emergency_writer};

/// COM1's base I/O port.
const COM1: u16 = 0x3f8;

struct Console {
    uart: Option<Uart16550<PioBackend>>,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: None });

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.uart.as_mut() {
            for b in s.bytes() {
                if b == b'\n' {
                    uart.send_bytes_exact(b"\r");
                }
                uart.send_bytes_exact(&[b]);
            }
        }
        Ok(())
    }
}

/// Initialises COM1 as 115200 8-N-1 with FIFOs, no UART interrupts.
pub fn init() {
    // SAFETY: 0x3F8..0x3FF is COM1 on PC-compatible machines (QEMU, and the
    // port Jailhouse grants its inmates); nothing else in the guest touches
    // these ports, and the console owns the UART for the guest's lifetime.
    let uart = unsafe { Uart16550::new_port(COM1) };
    let Ok(mut uart) = uart else { return };
    let config = Config {
        baud_rate: BaudRate::Baud115200,
        ..Config::default()
    };
    // A failed init (no UART present) leaves the console silent rather than
    // stopping the guest: the exit code still tells what happened.
    if uart.init(config).is_ok() {
        CONSOLE.lock().uart = Some(uart);
    }
}
