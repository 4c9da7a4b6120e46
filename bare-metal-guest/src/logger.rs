//! The `log` facade on the serial console, with a byte budget.
//!
//! Everything the guest says about its peer goes through here: the driver
//! core's records (link transitions, carrier, protocol faults, backoff,
//! refused doorbells — already rate-limited per kind by the core) and the
//! guest's own peer-triggered lines (the counters line a UDP request asks
//! for). On Jailhouse the console is a real 115200-baud UART (~11 KB/s)
//! that every line stalls on, so on top of the core's per-kind limits the
//! console as a whole has a budget: [`BYTES_PER_SECOND`] with a burst of
//! [`BURST_BYTES`]. A record that does not fit is dropped and counted; the
//! next record that fits is preceded by one summary line. Whatever a peer
//! does, the guest writes at most `BURST_BYTES + BYTES_PER_SECOND * t`
//! bytes of log records to its console in `t` seconds.
//!
//! Boot messages and the periodic counters line (`stats=N`, requested by
//! the operator) are printed directly and do not draw on the budget.

use core::fmt::{self, Write};

use ivnet_guest::console_budget::{Admit, ByteBudget};
use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::{println, time};

/// Sustained console budget for log records.
pub const BYTES_PER_SECOND: u64 = 2048;
/// Console bytes a burst of records may use at once.
pub const BURST_BYTES: u64 = 4096;
/// Longest line written (longer ones are cut). The counters line is about
/// 600 bytes of keys plus up to 20 digits per value: it fits, as it fits
/// the stats socket's 2048-byte datagram.
const LINE_MAX: usize = 2048;

static BUDGET: Mutex<ByteBudget> = Mutex::new(ByteBudget::new(BYTES_PER_SECOND, BURST_BYTES));

/// Records the console budget dropped so far.
pub fn dropped() -> u64 {
    BUDGET.lock().dropped()
}

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

/// Installs the logger (informational records and above).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = LineBuf::new();
        // A record longer than the buffer is cut (`write_str` keeps what fits).
        let _ = write!(line, "{}", record.args());
        // The line and its newline (the console adds a carriage return).
        let cost = line.len as u64 + 2;
        let verdict = BUDGET.lock().admit(time::now_us(), cost);
        if let Admit::Write { dropped_before } = verdict {
            if dropped_before > 0 {
                println!("log: {dropped_before} messages dropped (console budget)");
            }
            println!("{}", line.as_str());
        }
    }

    fn flush(&self) {}
}

/// A fixed-size text buffer for one line; keeps what fits.
pub struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl LineBuf {
    /// An empty line.
    pub const fn new() -> Self {
        LineBuf {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// The bytes written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text written (whole characters only, see `write_str`).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl Write for LineBuf {
    /// Appends `s`, or as many whole characters of it as fit (then fails).
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() { Err(fmt::Error) } else { Ok(()) }
    }
}
