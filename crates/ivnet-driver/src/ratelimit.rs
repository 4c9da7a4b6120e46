//! Log rate limiting by message kind, in the manner of the kernel's
//! `net_ratelimit`: per kind, a burst of messages per interval, then
//! silence; the first message of a later interval is preceded by one
//! summary line "N similar messages suppressed".
//!
//! The peer decides how often the driver has something to say (every bad
//! index, every state it writes), so nothing the peer can trigger is logged
//! without going through here: on Jailhouse the inmate's console is a
//! 115200-baud UART that a chatty driver would stall on.

/// What a message is about; each kind has its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum LogKind {
    /// The local state changed (a real transition, never a repeat).
    LinkState = 0,
    /// The carrier went on or off.
    Carrier = 1,
    /// The peer broke the protocol (bad index, descriptor, state).
    ProtocolFault = 2,
    /// The renegotiation backoff holds the next handshake back.
    Backoff = 3,
    /// A doorbell or state publication was refused by the device.
    Refused = 4,
}

impl LogKind {
    /// Number of kinds.
    pub const COUNT: usize = 5;

    /// Every kind, in index order.
    pub const ALL: [LogKind; LogKind::COUNT] = [
        LogKind::LinkState,
        LogKind::Carrier,
        LogKind::ProtocolFault,
        LogKind::Backoff,
        LogKind::Refused,
    ];

    /// Short name used in summary lines.
    pub const fn name(self) -> &'static str {
        match self {
            LogKind::LinkState => "link state",
            LogKind::Carrier => "carrier",
            LogKind::ProtocolFault => "protocol fault",
            LogKind::Backoff => "backoff",
            LogKind::Refused => "refused doorbell/state",
        }
    }
}

/// Budget of each kind: `burst` messages per `interval_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages let through per interval.
    pub burst: u32,
    /// Interval length in microseconds.
    pub interval_us: u64,
}

impl RateLimit {
    /// The kernel's `net_ratelimit` defaults: 10 messages per 5 seconds.
    pub const NET_DEFAULT: RateLimit = RateLimit {
        burst: 10,
        interval_us: 5_000_000,
    };
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::NET_DEFAULT
    }
}

/// Whether to emit a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Emit it; first emit a summary line if `suppressed_before > 0`.
    Emit {
        /// Messages of this kind suppressed in earlier intervals, not yet
        /// reported.
        suppressed_before: u64,
    },
    /// Drop it (counted).
    Suppress,
}

#[derive(Clone, Copy, Debug, Default)]
struct KindState {
    window_start: Option<u64>,
    emitted: u32,
    missed: u64,
}

/// Per-kind limiter state. No allocation, constant size.
#[derive(Clone, Debug)]
pub struct LogLimiter {
    limit: RateLimit,
    kinds: [KindState; LogKind::COUNT],
    suppressed_total: u64,
}

impl LogLimiter {
    /// A limiter with the given budget per kind.
    pub const fn new(limit: RateLimit) -> Self {
        LogLimiter {
            limit,
            kinds: [KindState {
                window_start: None,
                emitted: 0,
                missed: 0,
            }; LogKind::COUNT],
            suppressed_total: 0,
        }
    }

    /// Messages suppressed so far, all kinds.
    pub const fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }

    /// Decides on one message of `kind` at `now_us`.
    pub fn check(&mut self, kind: LogKind, now_us: u64) -> Verdict {
        let limit = self.limit;
        let k = &mut self.kinds[kind as usize];
        let mut suppressed_before = 0;
        let expired = match k.window_start {
            None => true,
            Some(start) => now_us.saturating_sub(start) >= limit.interval_us,
        };
        if expired {
            suppressed_before = core::mem::take(&mut k.missed);
            k.window_start = Some(now_us);
            k.emitted = 0;
        }
        if k.emitted < limit.burst {
            k.emitted += 1;
            Verdict::Emit { suppressed_before }
        } else {
            k.missed += 1;
            self.suppressed_total += 1;
            Verdict::Suppress
        }
    }

    /// Summaries that are due without a new message: kinds whose interval
    /// ended with messages suppressed. Calls `report(kind, n)` for each and
    /// forgets them (so a peer that goes quiet still gets its summary).
    pub fn flush_due(&mut self, now_us: u64, mut report: impl FnMut(LogKind, u64)) {
        let interval = self.limit.interval_us;
        for kind in LogKind::ALL {
            let k = &mut self.kinds[kind as usize];
            if k.missed > 0
                && k.window_start
                    .is_some_and(|start| now_us.saturating_sub(start) >= interval)
            {
                report(kind, core::mem::take(&mut k.missed));
                k.window_start = Some(now_us);
                k.emitted = 0;
            }
        }
    }
}

/// Logs through `limiter`: a summary line first when messages were
/// suppressed, then the message, or nothing.
macro_rules! limited {
    ($limiter:expr, $now:expr, $kind:expr, $level:expr, $($arg:tt)+) => {{
        let kind: $crate::ratelimit::LogKind = $kind;
        match $limiter.check(kind, $now) {
            $crate::ratelimit::Verdict::Emit { suppressed_before } => {
                if suppressed_before > 0 {
                    log::warn!(
                        target: "ivnet",
                        "{}: {} similar messages suppressed",
                        kind.name(),
                        suppressed_before
                    );
                }
                log::log!(target: "ivnet", $level, $($arg)+);
            }
            $crate::ratelimit::Verdict::Suppress => {}
        }
    }};
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_silence_then_summary() {
        let limit = RateLimit {
            burst: 3,
            interval_us: 1000,
        };
        let mut l = LogLimiter::new(limit);
        let mut emitted = 0;
        for t in 0..100 {
            if let Verdict::Emit { suppressed_before } = l.check(LogKind::ProtocolFault, t) {
                assert_eq!(suppressed_before, 0);
                emitted += 1;
            }
        }
        assert_eq!(emitted, 3);
        assert_eq!(l.suppressed_total(), 97);
        // Other kinds have their own budget.
        assert_eq!(
            l.check(LogKind::Carrier, 100),
            Verdict::Emit {
                suppressed_before: 0
            }
        );
        // Next interval: the first message carries the summary.
        assert_eq!(
            l.check(LogKind::ProtocolFault, 1000),
            Verdict::Emit {
                suppressed_before: 97
            }
        );
        assert_eq!(
            l.check(LogKind::ProtocolFault, 1001),
            Verdict::Emit {
                suppressed_before: 0
            }
        );
    }

    #[test]
    fn quiet_peer_still_gets_its_summary() {
        let mut l = LogLimiter::new(RateLimit {
            burst: 1,
            interval_us: 10,
        });
        let _ = l.check(LogKind::Refused, 0);
        let _ = l.check(LogKind::Refused, 1);
        let _ = l.check(LogKind::Refused, 2);
        let mut seen = [0u64; LogKind::COUNT];
        l.flush_due(5, |k, n| seen[k as usize] += n);
        assert_eq!(seen, [0; LogKind::COUNT], "interval not over yet");
        l.flush_due(10, |k, n| seen[k as usize] += n);
        assert_eq!(seen[LogKind::Refused as usize], 2);
        l.flush_due(100, |k, n| seen[k as usize] += n);
        assert_eq!(seen[LogKind::Refused as usize], 2, "reported once");
    }
}
