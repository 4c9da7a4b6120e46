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
use core::sync::atomic::{AtomicU64, Ordering};

use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::{println, time};

/// Sustained console budget for log records.
pub const BYTES_PER_SECOND: u64 = 2048;
/// Console bytes a burst of records may use at once.
pub const BURST_BYTES: u64 = 4096;
/// Longest record written (longer ones are cut; the counters line fits).
const LINE_MAX: usize = 1024;

/// Token bucket of console bytes.
struct Budget {
    tokens: u64,
    last_us: u64,
    /// Records dropped since the last summary line.
    unreported: u64,
}

static BUDGET: Mutex<Budget> = Mutex::new(Budget {
    tokens: BURST_BYTES,
    last_us: 0,
    unreported: 0,
});

/// Records dropped for the console budget, in total.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Records the console budget dropped so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
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
        let cost = line.len as u64 + 1;
        let now = time::now_us();
        let mut b = BUDGET.lock();
        let refill = now
            .saturating_sub(b.last_us)
            .saturating_mul(BYTES_PER_SECOND)
            / 1_000_000;
        if refill > 0 {
            b.tokens = (b.tokens + refill).min(BURST_BYTES);
            b.last_us = now;
        }
        const SUMMARY_COST: u64 = 64;
        let summary = b.unreported > 0;
        let need = cost + if summary { SUMMARY_COST } else { 0 };
        if b.tokens < need {
            b.unreported += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        b.tokens -= need;
        let unreported = core::mem::take(&mut b.unreported);
        drop(b);
        if summary {
            println!("log: {unreported} messages dropped (console budget)");
        }
        println!("{}", line.as_str());
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
