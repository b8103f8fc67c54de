//! Messages a durable feed lost before they were read.
//!
//! The coordinator's consumers read every subject of their stream, so the
//! stream sequences it is delivered go up by one; a jump means the bus
//! dropped messages in between before they were read (a node past
//! `coordinator.max_queued_per_node`, or messages past the stream's age).
//! A redelivery goes back and is not a gap.

use std::ops::RangeInclusive;

/// The highest stream sequence read so far on one feed.
#[derive(Debug, Default, Clone)]
pub struct SequenceGaps {
    last: Option<u64>,
}

impl SequenceGaps {
    /// Gaps counted from `delivered`, the highest sequence delivered
    /// before (a durable consumer's; what was delivered and not
    /// acknowledged comes again below it and is no gap); `None`: unknown.
    pub fn after(delivered: Option<u64>) -> Self {
        Self { last: delivered }
    }

    /// Take the sequences of a batch, in delivery order: the ranges of
    /// sequences skipped since the highest one read before (none for the
    /// first message ever seen, whose predecessors are unknown).
    pub fn observe(
        &mut self,
        sequences: impl IntoIterator<Item = u64>,
    ) -> Vec<RangeInclusive<u64>> {
        let mut gaps = Vec::new();
        for seq in sequences {
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
}

/// How many sequences the ranges span.
pub fn count(gaps: &[RangeInclusive<u64>]) -> u64 {
    gaps.iter().map(|g| g.end() - g.start() + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn from_the_last_delivered_the_first_message_may_follow_a_gap() {
        let mut g = SequenceGaps::after(Some(10));
        assert_eq!(g.observe([15, 16]), vec![11..=14]);
        let mut g = SequenceGaps::after(Some(0));
        assert!(g.observe([1, 2]).is_empty());
        let mut g = SequenceGaps::after(None);
        assert!(g.observe([7]).is_empty());
        // A failover: 3 to 5 were delivered to a leader that died; the new
        // one gets 6 first, then 3 to 5 again after the ack wait: no gap.
        let mut g = SequenceGaps::after(Some(5));
        assert!(g.observe([6, 7]).is_empty());
        assert!(g.observe([3, 4, 5]).is_empty());
    }
}
