//! Counters of the bridge and their two presentations: one log line, or one
//! JSON object per line on stdout (`--stats-json`).
//!
//! Direction names follow the link: `tx` is TAP → peer, `rx` is peer → TAP.

use std::io::Write;
use std::time::Instant;

use serde::Serialize;

/// Counters kept by the bridge itself (the ring library keeps its own, see
/// [`RingCounters`]).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BridgeCounters {
    /// Frames read from the TAP interface. Each one was published to the
    /// peer (`ring.tx_frames`) or counted in `drop_link_down` or
    /// `drop_oversize`.
    pub tap_read_frames: u64,
    /// Frames written to the TAP interface. With `drop_tap_write` (and
    /// `offload.drop_bad_header`) they add up to `ring.rx_frames`.
    pub tap_written_frames: u64,
    /// Bytes read from the TAP (virtio-net headers included; divided by
    /// `tap_read_frames`: bytes per read system call).
    pub tap_read_bytes: u64,
    /// Bytes written to the TAP (headers excluded; divided by
    /// `tap_written_frames`: bytes per write system call).
    pub tap_written_bytes: u64,
    /// Data doorbells this bridge rang at the peer (the driver core's
    /// `doorbells_rung`, all vectors).
    pub doorbells_sent: u64,
    /// Interrupts/eventfd signals received (all vectors).
    pub doorbells_received: u64,
    /// State publications (each notifies the peer on vector 0; the driver
    /// core's `state_writes`).
    pub state_doorbells_sent: u64,
    /// Times the TX ring was full and the bridge stopped reading the TAP.
    pub ring_full_events: u64,
    /// Frames read from the TAP while the link was not running (dropped).
    pub drop_link_down: u64,
    /// Frames from the peer the TAP refused (dropped).
    pub drop_tap_write: u64,
    /// Frames read from the TAP that did not fit a ring slot (dropped).
    pub drop_oversize: u64,
    /// Carrier changes of the link (the driver core's ups + downs).
    pub carrier_changes: u64,
    /// Errors of the peer detected by the ring (each resets the link; the
    /// driver core's `protocol_faults`).
    pub peer_errors: u64,
}

/// Counters of the ring library's endpoint, copied out for reporting.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RingCounters {
    /// Frames published to the peer.
    pub tx_frames: u64,
    /// Bytes published to the peer.
    pub tx_bytes: u64,
    /// Frames received from the peer.
    pub rx_frames: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Doorbells the event-index logic asked for.
    pub doorbells_requested: u64,
    /// Doorbells the event-index logic suppressed (peer was polling).
    pub notifications_suppressed: u64,
    /// Times a send found the TX ring full.
    pub tx_ring_full: u64,
    /// Link resets caused by the peer (its RESET, a fault); leaving the
    /// link ourselves is not counted.
    pub link_resets: u64,
    /// Protocol violations of the peer, all kinds.
    pub peer_errors: u64,
}

/// One report.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Why the report was made: "interval", "signal" or "exit".
    pub reason: &'a str,
    /// Seconds since the bridge started.
    pub uptime_s: f64,
    /// TAP interface name.
    pub tap: &'a str,
    /// Local link state (RESET, INIT, READY, RUN).
    pub state: &'a str,
    /// The peer's state as last read (its name, or the raw value in hex);
    /// `None` before the first read and after this side left the link.
    pub peer_state: Option<&'a str>,
    /// Whether the TAP carrier is on.
    pub carrier: bool,
    /// Bridge counters.
    pub bridge: BridgeCounters,
    /// Ring counters.
    pub ring: RingCounters,
    /// Driver-core counters.
    pub driver: ivnet_driver::Counters,
    /// What the link carries: the negotiated offloads, "plain (peer
    /// offers none)", or "off".
    pub offloads: &'a str,
    /// Offload counters.
    pub offload: crate::offload::OffloadCounters,
}

impl Report<'_> {
    /// Writes the report as one JSON line on stdout, or as one `info` log
    /// line.
    pub fn emit(&self, json: bool) {
        if json {
            let line =
                serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        } else {
            let b = &self.bridge;
            let r = &self.ring;
            tracing::info!(
                "stats ({}): tap {} state {} peer {} carrier {} | tx {} frames {} bytes, rx {} frames {} bytes | \
                 doorbells sent {} received {} suppressed {} | ring full {} | drops: link-down {} tap-write {} \
                 oversize {} | link resets {} peer errors {} backoff waits {} short links {} | offloads {} \
                 tx csum/tso4/tso6/uso {}/{}/{}/{} rx {}/{}/{}/{} bad headers {} | uptime {:.1}s",
                self.reason,
                self.tap,
                self.state,
                self.peer_state.unwrap_or("-"),
                if self.carrier { "on" } else { "off" },
                r.tx_frames,
                r.tx_bytes,
                r.rx_frames,
                r.rx_bytes,
                b.doorbells_sent,
                b.doorbells_received,
                r.notifications_suppressed,
                b.ring_full_events,
                b.drop_link_down,
                b.drop_tap_write,
                b.drop_oversize,
                r.link_resets,
                r.peer_errors,
                self.driver.backoff_waits,
                self.driver.short_links,
                self.offloads,
                self.offload.tx_csum,
                self.offload.tx_tso4,
                self.offload.tx_tso6,
                self.offload.tx_uso,
                self.offload.rx_csum,
                self.offload.rx_tso4,
                self.offload.rx_tso6,
                self.offload.rx_uso,
                self.offload.drop_bad_header,
                self.uptime_s,
            );
        }
    }
}

/// Seconds since `start`.
pub fn uptime(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
