//! One chain's state: its counters, cycle window, rate window, evidence
//! and circuit (closed → open → half-open).

use std::collections::VecDeque;

use super::wire::{CircuitState, Reason, StepRecord};
use crate::timefmt::Timestamp;

/// Buckets of the sliding rate window.
const RATE_BUCKETS: usize = 10;

/// Steps per window in [`RATE_BUCKETS`] buckets: constant memory, exact to
/// a tenth of the window.
#[derive(Debug, Clone, Default)]
pub(super) struct RateWindow {
    buckets: [(i64, u32); RATE_BUCKETS],
}

impl RateWindow {
    fn slot(now: Timestamp, window_seconds: f64) -> i64 {
        let bucket_ms = ((window_seconds * 1000.0) / RATE_BUCKETS as f64).max(1.0) as i64;
        now.timestamp_millis().div_euclid(bucket_ms)
    }

    pub(super) fn count(&self, now: Timestamp, window_seconds: f64) -> u32 {
        let cur = Self::slot(now, window_seconds);
        self.buckets
            .iter()
            .filter(|(s, _)| *s <= cur && cur - *s < RATE_BUCKETS as i64)
            .map(|(_, n)| *n)
            .sum()
    }

    pub(super) fn add(&mut self, now: Timestamp, window_seconds: f64) {
        let cur = Self::slot(now, window_seconds);
        let b = &mut self.buckets[cur.rem_euclid(RATE_BUCKETS as i64) as usize];
        if b.0 != cur {
            *b = (cur, 0);
        }
        b.1 = b.1.saturating_add(1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Circuit {
    Closed,
    Open { until: Timestamp, reason: Reason },
    HalfOpen,
}

impl Circuit {
    pub(super) fn state(&self) -> CircuitState {
        match self {
            Circuit::Closed => CircuitState::Closed,
            Circuit::Open { .. } => CircuitState::Open,
            Circuit::HalfOpen => CircuitState::HalfOpen,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct ChainState {
    pub(super) kind: Option<String>,
    pub(super) generation: u64,
    pub(super) steps: u32,
    pub(super) evidence: VecDeque<StepRecord>,
    pub(super) fingerprints: VecDeque<u64>,
    pub(super) rate: RateWindow,
    pub(super) circuit: Circuit,
    pub(super) last_seen: Timestamp,
    pub(super) seq: u64,
}

impl ChainState {
    pub(super) fn new(kind: Option<String>, now: Timestamp, seq: u64) -> Self {
        Self {
            kind,
            generation: 0,
            steps: 0,
            evidence: VecDeque::new(),
            fingerprints: VecDeque::new(),
            rate: RateWindow::default(),
            circuit: Circuit::Closed,
            last_seen: now,
            seq,
        }
    }

    /// Forget what led to a break (counters, cycle window, rate), keep the
    /// evidence.
    pub(super) fn clear_counters(&mut self) {
        self.steps = 0;
        self.fingerprints.clear();
        self.rate = RateWindow::default();
    }

    pub(super) fn open_until(&self, now: Timestamp) -> Option<Timestamp> {
        match self.circuit {
            Circuit::Open { until, .. } if now < until => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> Timestamp {
        chrono::Utc
            .timestamp_millis_opt(1_700_000_000_000 + ms)
            .unwrap()
    }

    /// A 10 s window in ten 1 s buckets: a step counts while its bucket is
    /// one of the last ten, then drops out.
    #[test]
    fn the_rate_window_slides_by_buckets() {
        let mut w = RateWindow::default();
        w.add(at(0), 10.0);
        w.add(at(500), 10.0);
        w.add(at(4_200), 10.0);
        assert_eq!(w.count(at(4_300), 10.0), 3);
        assert_eq!(w.count(at(9_999), 10.0), 3);
        assert_eq!(w.count(at(10_000), 10.0), 1, "the first second's two left");
        assert_eq!(w.count(at(13_999), 10.0), 1);
        assert_eq!(w.count(at(14_000), 10.0), 0, "ten buckets after its own");
        // A bucket reused after a full turn starts from zero.
        w.add(at(20_100), 10.0);
        assert_eq!(w.count(at(20_200), 10.0), 1);
    }
}
