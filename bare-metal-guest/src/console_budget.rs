//! The console's byte budget: a token bucket of bytes per second with a
//! burst, which bounds what the guest's log records can write to its
//! console whatever a peer does (the binary's `logger` applies it).

/// A token bucket of console bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteBudget {
    rate: u64,
    burst: u64,
    tokens: u64,
    last_us: u64,
    unreported: u64,
    dropped: u64,
}

/// What to do with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; first write a summary line for `dropped_before` records
    /// dropped since the last summary (if nonzero).
    Write {
        /// Records dropped since the last summary.
        dropped_before: u64,
    },
    /// Drop it (counted).
    Drop,
}

/// Bytes charged for a summary line ("log: N messages dropped ...").
pub const SUMMARY_COST: u64 = 64;

impl ByteBudget {
    /// `rate` bytes per second sustained, `burst` at once; starts full.
    pub const fn new(rate: u64, burst: u64) -> Self {
        ByteBudget {
            rate,
            burst,
            tokens: burst,
            last_us: 0,
            unreported: 0,
            dropped: 0,
        }
    }

    /// Records dropped so far.
    pub const fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Decides on a record of `bytes` bytes at `now_us` (monotonic). A
    /// record is written only if it and the summary line it needs fit the
    /// bucket: in any `t` seconds at most `burst + rate * t` bytes go out.
    pub fn admit(&mut self, now_us: u64, bytes: u64) -> Admit {
        let refill = now_us
            .saturating_sub(self.last_us)
            .saturating_mul(self.rate)
            / 1_000_000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(self.burst);
            self.last_us = now_us;
        }
        let need = bytes.saturating_add(if self.unreported > 0 { SUMMARY_COST } else { 0 });
        if self.tokens < need {
            self.unreported += 1;
            self.dropped += 1;
            return Admit::Drop;
        }
        self.tokens -= need;
        Admit::Write {
            dropped_before: core::mem::take(&mut self.unreported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_bounded_and_summarised() {
        let (rate, burst) = (2048, 4096);
        let mut b = ByteBudget::new(rate, burst);
        let mut written = 0u64;
        let mut summaries = 0u64;
        // 100-byte records every 10 µs for 10 s: 10 MB offered.
        for i in 0..1_000_000u64 {
            if let Admit::Write { dropped_before } = b.admit(i * 10, 100) {
                written += 100;
                if dropped_before > 0 {
                    written += SUMMARY_COST;
                    summaries += 1;
                }
            }
        }
        assert!(written <= burst + rate * 10, "{written}");
        assert!(
            written >= rate * 9,
            "the budget is used, not starved: {written}"
        );
        assert!(summaries > 0);
        assert_eq!(
            b.dropped() + (written - summaries * SUMMARY_COST) / 100,
            1_000_000
        );
    }

    #[test]
    fn quiet_console_writes_everything() {
        let mut b = ByteBudget::new(2048, 4096);
        for i in 0..100u64 {
            assert_eq!(
                b.admit(i * 1_000_000, 200),
                Admit::Write { dropped_before: 0 }
            );
        }
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn first_record_after_drops_carries_the_count() {
        let mut b = ByteBudget::new(1000, 1000);
        assert_eq!(b.admit(0, 900), Admit::Write { dropped_before: 0 });
        assert_eq!(b.admit(1, 900), Admit::Drop);
        assert_eq!(b.admit(2, 900), Admit::Drop);
        assert_eq!(b.admit(2_000_000, 900), Admit::Write { dropped_before: 2 });
    }
}
