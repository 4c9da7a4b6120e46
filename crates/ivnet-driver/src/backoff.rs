//! Renegotiation backoff: a peer that keeps breaking the protocol must not
//! be able to flap the link (and the carrier, and the logs) as fast as it
//! can write its section.
//!
//! The first fault after a clean link costs nothing: the handshake restarts
//! at once. Each further fault before the link has been clean again holds
//! the next handshake back, exponentially longer, up to a cap. A link is
//! *clean* once it has carried the carrier for a settle period without a
//! fault; then the fault count starts over. (Resetting the count at carrier
//! on alone would let a peer that handshakes correctly and faults right
//! after flap at full speed.)
//!
//! A peer can also flap the link without breaking the protocol: handshake
//! correctly, go to RESET, handshake again, as fast as it can. Each such
//! drop of a link that carried the carrier for less than the settle period
//! counts as a fault too (a *short link*), so a single restart of a good
//! peer still relinks at once, but a peer that keeps doing it is held back
//! like one that breaks the protocol.

/// Backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Hold-back after the second fault in a row; doubles per further fault.
    pub first_wait_us: u64,
    /// Longest hold-back.
    pub max_wait_us: u64,
    /// How long the carrier must stay on without a fault for the link to
    /// count as clean (resets the fault count).
    pub settle_us: u64,
}

impl Default for BackoffConfig {
    /// 16 ms, doubling, capped at 1 s; clean after 1 s of carrier.
    fn default() -> Self {
        BackoffConfig {
            first_wait_us: 16_000,
            max_wait_us: 1_000_000,
            settle_us: 1_000_000,
        }
    }
}

/// A peer-caused drop of a link that had not settled (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortLink {
    /// The hold-back it started, if any (none for the first in a row).
    pub hold_us: Option<u64>,
}

/// Fault history and the current hold-back.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Faults since the link was last clean.
    faults_in_row: u32,
    hold_until: Option<u64>,
    carrier_since: Option<u64>,
}

impl Backoff {
    /// No faults seen.
    pub const fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            faults_in_row: 0,
            hold_until: None,
            carrier_since: None,
        }
    }

    /// Faults since the link was last clean.
    pub const fn faults_in_row(&self) -> u32 {
        self.faults_in_row
    }

    /// Records a protocol fault at `now_us`; returns the hold-back it
    /// starts, if any.
    pub fn on_fault(&mut self, now_us: u64) -> Option<u64> {
        self.settle(now_us);
        self.carrier_since = None;
        self.faults_in_row = self.faults_in_row.saturating_add(1);
        if self.faults_in_row < 2 {
            return None;
        }
        let shift = (self.faults_in_row - 2).min(63);
        let wait = self
            .config
            .first_wait_us
            .checked_shl(shift)
            .unwrap_or(u64::MAX)
            .min(self.config.max_wait_us);
        self.hold_until = Some(now_us.saturating_add(wait));
        Some(wait)
    }

    /// Records a carrier change at `now_us`. `peer_caused` says the link
    /// dropped because of the peer (not because we left or our interface
    /// went down). A peer-caused drop of a link that had not yet settled is
    /// a short link: it counts as a fault and is returned, with the
    /// hold-back it starts, if any.
    pub fn on_carrier(&mut self, on: bool, peer_caused: bool, now_us: u64) -> Option<ShortLink> {
        self.settle(now_us);
        let short_link = !on
            && peer_caused
            && self
                .carrier_since
                .is_some_and(|since| now_us.saturating_sub(since) < self.config.settle_us);
        self.carrier_since = if on { Some(now_us) } else { None };
        short_link.then(|| ShortLink {
            hold_us: self.on_fault(now_us),
        })
    }

    /// Resets the fault count once the carrier has been on for the settle
    /// period.
    fn settle(&mut self, now_us: u64) {
        if let Some(since) = self.carrier_since
            && now_us.saturating_sub(since) >= self.config.settle_us
        {
            self.faults_in_row = 0;
        }
    }

    /// Time left before the next handshake may start, if held back.
    pub fn remaining_us(&mut self, now_us: u64) -> Option<u64> {
        self.settle(now_us);
        match self.hold_until {
            Some(until) if now_us < until => Some(until - now_us),
            Some(_) => {
                self.hold_until = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let mut b = Backoff::new(BackoffConfig::default());
        assert_eq!(b.on_fault(0), None, "first fault: relink at once");
        let waits: [Option<u64>; 9] = core::array::from_fn(|i| b.on_fault(i as u64));
        assert_eq!(
            waits,
            [
                Some(16_000),
                Some(32_000),
                Some(64_000),
                Some(128_000),
                Some(256_000),
                Some(512_000),
                Some(1_000_000),
                Some(1_000_000),
                Some(1_000_000),
            ]
        );
        assert_eq!(b.remaining_us(8), Some(1_000_000));
        assert_eq!(b.remaining_us(1_000_008), None);
    }

    #[test]
    fn clean_link_resets_the_count() {
        let mut b = Backoff::new(BackoffConfig::default());
        for t in 0..5 {
            b.on_fault(t);
        }
        assert_eq!(b.on_carrier(true, true, 2_000_000), None);
        // Carrier on, fault soon after: not clean, still backing off.
        assert!(b.on_fault(2_000_100).is_some());
        assert_eq!(b.on_carrier(true, true, 3_000_000), None);
        assert_eq!(b.on_carrier(false, true, 4_000_000), None);
        assert_eq!(b.faults_in_row(), 0);
        assert_eq!(b.on_fault(4_000_001), None);
    }

    #[test]
    fn short_links_back_off_like_faults() {
        let mut b = Backoff::new(BackoffConfig::default());
        // A good peer restarts once, right after linking: relink at once.
        assert_eq!(b.on_carrier(true, true, 0), None);
        assert_eq!(
            b.on_carrier(false, true, 10_000),
            Some(ShortLink { hold_us: None })
        );
        assert_eq!(b.faults_in_row(), 1);
        // It keeps doing it: held back, growing, capped.
        let mut t = 20_000;
        let mut waits = [0u64; 8];
        for w in &mut waits {
            assert_eq!(b.on_carrier(true, true, t), None);
            *w = b
                .on_carrier(false, true, t + 1_000)
                .and_then(|s| s.hold_us)
                .expect("held back");
            t += 2_000_000;
        }
        assert_eq!(waits[0], 16_000);
        assert_eq!(waits[1], 32_000);
        assert_eq!(waits[7], 1_000_000);
    }

    #[test]
    fn drops_we_cause_or_after_settling_are_not_short_links() {
        let mut b = Backoff::new(BackoffConfig::default());
        for i in 0..5u64 {
            assert_eq!(b.on_carrier(true, true, i * 10), None);
            assert_eq!(b.on_carrier(false, false, i * 10 + 5), None);
        }
        assert_eq!(
            b.faults_in_row(),
            0,
            "our own drops are not the peer's flapping"
        );
        assert_eq!(b.on_carrier(true, true, 100), None);
        assert_eq!(b.on_carrier(false, true, 1_000_100), None);
        assert_eq!(b.faults_in_row(), 0, "a link that settled is not short");
    }
}
