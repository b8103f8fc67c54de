//! Messages the bus dropped before they were read (a node past its
//! per-node limit, messages past the stream's age; found by
//! [`crate::gaps`]): every one is counted (`<feed>s.dropped_unread`), but a
//! flood that keeps a node past its limit fills neither the audit trail nor
//! the log. Per feed, in a minute, the first [`AUDITED_PER_MINUTE`] batches
//! with a gap have an audited record (and a warning) each, naming their
//! stream sequences; the rest are held and summed up in one record when the
//! minute ends, or when the coordinator stops leading, with their sequences
//! (the first [`RANGES_KEPT`] ranges) ([`super::minutes`]). Before, every
//! batch with a gap wrote its own record and warning: about one per batch
//! of a flood, for as long as it lasted. What is held is kept in the saved
//! state with the refusals held ([`super::refusals`]).

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use skos_core::timefmt::Timestamp;

#[cfg(test)]
use super::minutes::AUDITED_PER_MINUTE;
use super::minutes::{Minutes, Tally};

/// Ranges of sequences named in a summary; past them only counted.
const RANGES_KEPT: usize = 64;

/// The gaps of one feed's minute past those audited one by one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Gaps {
    /// Messages dropped in them.
    pub(super) dropped: u64,
    /// Their sequences, `[first, last]`, merged where they touch (at most
    /// [`RANGES_KEPT`]).
    pub(super) sequences: Vec<[u64; 2]>,
    /// Messages in ranges past those kept.
    pub(super) unnamed: u64,
}

impl Gaps {
    fn add(&mut self, skipped: &[RangeInclusive<u64>]) {
        for r in skipped {
            let (start, end) = (*r.start(), *r.end());
            self.dropped += end - start + 1;
            let kept = self.sequences.len();
            match self.sequences.last_mut() {
                Some(last) if last[1].checked_add(1) == Some(start) => last[1] = end,
                _ if kept < RANGES_KEPT => self.sequences.push([start, end]),
                _ => self.unnamed += end - start + 1,
            }
        }
    }
}

impl Tally for Gaps {
    fn is_empty(&self) -> bool {
        self.dropped == 0
    }
}

/// The windows of the feeds with gaps in the last minute.
pub(super) type Drops = Minutes<Gaps>;

impl Drops {
    /// Count a batch's gaps (`skipped`, not empty) on `feed`: true when
    /// they are to be audited (and logged) on their own, false when held
    /// for the minute's summary.
    pub(super) fn note(
        &mut self,
        feed: &str,
        skipped: &[RangeInclusive<u64>],
        now: Timestamp,
    ) -> bool {
        self.note_with(feed, now, |held| held.add(skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skos_core::level::secs;

    fn t(s: f64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap() + secs(s)
    }

    /// Past ten gaps a minute, the rest are held and summed up once: their
    /// count, and their sequences merged where they touch, up to the ranges
    /// kept; another feed has its own ten; stopping ends every window.
    #[test]
    fn past_ten_gaps_a_minute_they_are_summed_up_once() {
        let mut d = Drops::default();
        for i in 0..u64::from(AUDITED_PER_MINUTE) {
            assert!(d.note("alert", &[i * 10..=i * 10 + 1], t(i as f64)));
        }
        // Touching ranges merge: 100..=109 is one range.
        for i in 100..110 {
            assert!(!d.note("alert", &[i..=i], t(20.0)));
        }
        // 100 more, apart: past the ranges kept they are only counted.
        for i in 0..100u64 {
            assert!(!d.note("alert", &[1_000 + i * 2..=1_000 + i * 2], t(21.0)));
        }
        assert!(d.note("result", &[5..=5], t(22.0)));
        assert!(d.ended(t(59.0), false).is_empty(), "ended early");
        let held = d.ended(t(60.0), false);
        assert_eq!(held.len(), 1, "{held:?}");
        let h = &held[0];
        assert_eq!((h.feed.as_str(), h.since, h.audited), ("alert", t(0.0), 10));
        assert_eq!(h.held.dropped, 110);
        assert_eq!(h.held.sequences.len(), RANGES_KEPT);
        assert_eq!(h.held.sequences[0], [100, 109]);
        assert_eq!(h.held.sequences[1], [1_000, 1_000]);
        assert_eq!(h.held.unnamed, 100 - (RANGES_KEPT as u64 - 1));
        // The result feed held nothing.
        assert!(d.ended(t(100.0), true).is_empty());
        assert!(
            d.note("alert", &[7..=7], t(101.0)),
            "a new minute starts afresh"
        );
    }
}
