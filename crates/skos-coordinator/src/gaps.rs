//! Messages a durable feed lost before they were read.
//!
//! The coordinator's consumers read every subject of their stream, so the
//! stream sequences they deliver go up by one; a jump means the bus
//! dropped messages in between before they were read (a node past
//! `coordinator.max_queued_per_node`, or messages past the stream's age).
//! A redelivery goes back and is not a gap.
//!
//! At start (a restart, a takeover), what lies between the consumer's ack
//! floor and its last delivered sequence is unsettled: such a message was
//! acknowledged already (acks are per message, the floor stops below the
//! lowest pending one), or taken by the previous leader and not
//! acknowledged (it comes again after the ack wait), or dropped by the bus
//! meanwhile. Those seen again are struck off; once the settle time has
//! passed the rest are candidates, and only those the stream no longer
//! holds count as dropped (the service asks the stream).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Instant;

/// Most unsettled sequences looked up at start (a pull consumer has at most
/// 1,000 unacknowledged by default); a larger span is left uncounted, and
/// said so.
pub const MAX_UNSETTLED: u64 = 10_000;

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
    /// What was in flight at start, and which of it came again.
    unsettled: Option<RangeInclusive<u64>>,
    seen_again: BTreeSet<u64>,
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
        if span > MAX_UNSETTLED {
            tracing::warn!(
                acked = p.acked,
                delivered = p.delivered,
                "too many messages in flight at start to look up; those the bus dropped meanwhile are not counted"
            );
        }
        let unsettled = (span > 0 && span <= MAX_UNSETTLED).then(|| p.acked + 1..=p.delivered);
        Self {
            last: Some(p.delivered),
            settle_at: unsettled.as_ref().map(|_| settle_at),
            unsettled,
            seen_again: BTreeSet::new(),
        }
    }

    /// Take the sequences of a batch, in delivery order: the ranges of
    /// sequences skipped since the highest one read before.
    pub fn observe(
        &mut self,
        sequences: impl IntoIterator<Item = u64>,
    ) -> Vec<RangeInclusive<u64>> {
        let mut gaps = Vec::new();
        for seq in sequences {
            if self.unsettled.as_ref().is_some_and(|r| r.contains(&seq)) {
                self.seen_again.insert(seq);
            }
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
        gaps
    }

    /// Once the settle time has passed (then never again): the sequences
    /// in flight at start that did not come again, to be looked up in the
    /// stream.
    pub fn settle(&mut self, now: Instant) -> Vec<u64> {
        if self.settle_at.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.settle_at = None;
        let seen = std::mem::take(&mut self.seen_again);
        self.unsettled
            .take()
            .map(|r| r.filter(|s| !seen.contains(s)).collect())
            .unwrap_or_default()
    }
}

/// Consecutive sequences as ranges.
pub fn ranges(sequences: &[u64]) -> Vec<RangeInclusive<u64>> {
    let mut out: Vec<RangeInclusive<u64>> = Vec::new();
    for &seq in sequences {
        match out.last_mut() {
            Some(r) if *r.end() + 1 == seq => *r = *r.start()..=seq,
            _ => out.push(seq..=seq),
        }
    }
    out
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
        let mut g = SequenceGaps::default();
        assert!(
            g.observe([5, 6, 7]).is_empty(),
            "the first seen has no known predecessor"
        );
        assert_eq!(g.observe([8, 12, 13, 20]), vec![9..=11, 14..=19]);
        assert_eq!(count(&[9..=11, 14..=19]), 9);
        // Delivered again after a failed batch: nothing skipped.
        assert!(g.observe([9, 10, 21]).is_empty());
        assert_eq!(g.observe([23]), vec![22..=22]);
        assert_eq!(count(&[22..=22]), 1);
        assert_eq!(count(&[]), 0);
    }

    /// A takeover: 3 to 5 were delivered to a leader that died. The new
    /// leader gets 6 first, then 3 and 5 again after the ack wait: only 4
    /// is left to look up, once settled, and only once.
    #[test]
    fn what_was_in_flight_at_start_is_looked_up_only_if_it_never_comes_again() {
        let start = Instant::now();
        let settle = start + Duration::from_secs(30);
        let position = Position {
            acked: 2,
            delivered: 5,
        };
        let mut g = SequenceGaps::after(Some(position), settle);
        assert!(g.observe([6, 7]).is_empty());
        assert!(g.observe([3, 5]).is_empty());
        assert!(g.settle(start + Duration::from_secs(29)).is_empty());
        assert_eq!(g.settle(settle), [4]);
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
        assert_eq!(g.observe([15, 16]), vec![11..=14]);
        assert!(g.settle(settle).is_empty());
        // Far too many in flight: nothing looked up.
        let p = Position {
            acked: 0,
            delivered: MAX_UNSETTLED + 1,
        };
        assert!(SequenceGaps::after(Some(p), start)
            .settle(settle)
            .is_empty());
        let mut g = SequenceGaps::after(None, settle);
        assert!(g.observe([7]).is_empty());
        assert_eq!(ranges(&[1, 3, 4, 5, 9]), vec![1..=1, 3..=5, 9..=9]);
    }
}
