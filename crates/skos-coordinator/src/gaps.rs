//! Messages a durable feed lost before they were read.
//!
//! The coordinator's consumers read every subject of their stream, so the
//! stream sequences they deliver go up by one; a jump means the bus
//! dropped messages in between before they were read (a node past
//! `coordinator.max_queued_per_node`, or messages past the stream's age).
//! A redelivery goes back and is not a gap.
//!
//! At start (a restart, a takeover), what lies between the consumer's ack
//! floor and its last delivered sequence is unsettled: each such message
//! was taken by the previous leader and not acknowledged, so it is either
//! delivered again after the ack wait or was dropped meanwhile. Those seen
//! again are struck off; the rest count as dropped once the settle time
//! has passed.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Instant;

/// Most unsettled sequences tracked at start; a larger span (a consumer
/// far behind) is left uncounted rather than held in memory.
const MAX_UNSETTLED: u64 = 1_000_000;

/// Where a durable consumer stood when this coordinator started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Every sequence up to this one is acknowledged.
    pub acked: u64,
    /// The highest sequence delivered.
    pub delivered: u64,
}

/// The highest stream sequence read so far on one feed, and what was in
/// flight at start.
#[derive(Debug, Default, Clone)]
pub struct SequenceGaps {
    last: Option<u64>,
    unsettled: BTreeSet<u64>,
    settle_at: Option<Instant>,
}

impl SequenceGaps {
    /// Gaps counted from where the consumer stood (`None`: unknown, the
    /// first message seen starts the count); what was in flight then is
    /// settled at `settle_at` (past the ack wait).
    pub fn after(position: Option<Position>, settle_at: Instant) -> Self {
        let Some(p) = position else {
            return Self::default();
        };
        let span = p.delivered.saturating_sub(p.acked);
        let unsettled = if span <= MAX_UNSETTLED {
            (p.acked + 1..=p.delivered).collect()
        } else {
            BTreeSet::new()
        };
        Self {
            last: Some(p.delivered),
            settle_at: (!unsettled.is_empty()).then_some(settle_at),
            unsettled,
        }
    }

    /// Take the sequences of a batch, in delivery order, at `now`: the
    /// ranges of sequences skipped since the highest one read before, and,
    /// once the settle time has passed, those in flight at start that never
    /// came again.
    pub fn observe(
        &mut self,
        sequences: impl IntoIterator<Item = u64>,
        now: Instant,
    ) -> Vec<RangeInclusive<u64>> {
        let mut gaps = Vec::new();
        for seq in sequences {
            self.unsettled.remove(&seq);
            match self.last {
                Some(last) if seq > last => {
                    if seq - last > 1 {
                        gaps.push(last + 1..=seq - 1);
                    }
                    self.last = Some(seq);
                }
                Some(_) => {}
                None => self.last = Some(seq),
            }
        }
        gaps.extend(self.settle(now));
        gaps
    }

    /// The sequences in flight at start that never came again, as ranges,
    /// once the settle time has passed (then nothing more).
    pub fn settle(&mut self, now: Instant) -> Vec<RangeInclusive<u64>> {
        if self.settle_at.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.settle_at = None;
        let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
        for seq in std::mem::take(&mut self.unsettled) {
            match ranges.last_mut() {
                Some(r) if *r.end() + 1 == seq => *r = *r.start()..=seq,
                _ => ranges.push(seq..=seq),
            }
        }
        ranges
    }
}

/// How many sequences the ranges span.
pub fn count(gaps: &[RangeInclusive<u64>]) -> u64 {
    gaps.iter().map(|g| g.end() - g.start() + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_jump_is_a_gap_and_a_step_back_is_a_redelivery() {
        let now = Instant::now();
        let mut g = SequenceGaps::default();
        assert!(
            g.observe([5, 6, 7], now).is_empty(),
            "the first seen has no known predecessor"
        );
        assert_eq!(g.observe([8, 12, 13, 20], now), vec![9..=11, 14..=19]);
        assert_eq!(count(&[9..=11, 14..=19]), 9);
        // Delivered again after a failed batch: nothing skipped.
        assert!(g.observe([9, 10, 21], now).is_empty());
        assert_eq!(g.observe([23], now), vec![22..=22]);
        assert_eq!(count(&[22..=22]), 1);
        assert_eq!(count(&[]), 0);
    }

    /// A takeover: 3 to 5 were delivered to a leader that died, 4 was then
    /// dropped by the bus. The new leader gets 6 first, then 3 and 5 again
    /// after the ack wait: only 4 is dropped, and only once settled.
    #[test]
    fn what_was_in_flight_at_start_is_dropped_only_if_it_never_comes_again() {
        let start = Instant::now();
        let settle = start + Duration::from_secs(30);
        let position = Position {
            acked: 2,
            delivered: 5,
        };
        let mut g = SequenceGaps::after(Some(position), settle);
        assert!(g.observe([6, 7], start).is_empty());
        assert!(g.observe([3, 5], start).is_empty());
        assert!(g.settle(start + Duration::from_secs(29)).is_empty());
        assert_eq!(g.observe([8], settle), vec![4..=4]);
        assert!(
            g.settle(settle + Duration::from_secs(60)).is_empty(),
            "once"
        );
        // Nothing in flight: gaps count from the last delivered at once.
        let p = Position {
            acked: 10,
            delivered: 10,
        };
        let mut g = SequenceGaps::after(Some(p), settle);
        assert_eq!(g.observe([15, 16], start), vec![11..=14]);
        // All of a long span dropped: contiguous ranges.
        let p = Position {
            acked: 0,
            delivered: 6,
        };
        let mut g = SequenceGaps::after(Some(p), settle);
        assert!(g.observe([2], start).is_empty());
        assert_eq!(g.settle(settle), vec![1..=1, 3..=6]);
        let mut g = SequenceGaps::after(None, settle);
        assert!(g.observe([7], start).is_empty());
    }
}
