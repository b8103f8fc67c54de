//! The agent's log of refused and replayed commands, bounded. Whoever can
//! publish on the node's command subject without the coordinator's key can
//! send refused commands (or replay signed ones, expired or not) as fast as
//! the bus takes them; each is counted and answered (the coordinator bounds
//! what it audits of the answers), but only the first
//! [`LOGGED_PER_MINUTE`] of a minute of each [`Refusal`] kind are logged
//! one by one, so a flood of one kind never hides the first of another.
//! The next one logged says how many were not.
//!
//! Sans-IO: the caller passes the time.

use std::time::{Duration, Instant};

/// Refused commands logged one by one in a minute.
pub(super) const LOGGED_PER_MINUTE: u32 = 10;

/// The window.
const WINDOW: Duration = Duration::from_secs(60);

/// Why a command was not carried out, for its log line's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not signed by a coordinator key this agent trusts.
    Signature,
    /// Trusted but not a well-formed command.
    Malformed,
    /// Trusted and well formed, refused by the command gate: another
    /// node's, stale term, past its deadline, bad parameters, an id whose
    /// outcome is unknown.
    Gate,
    /// Executed before: answered with its recorded outcome.
    Replay,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::Signature,
        Refusal::Malformed,
        Refusal::Gate,
        Refusal::Replay,
    ];
}

/// A [`LogBudget`] per [`Refusal`] kind.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    budgets: [LogBudget; Refusal::ALL.len()],
}

impl RefusalLog {
    /// One more refusal of `kind` at `now`: see [`LogBudget::take`].
    pub(super) fn take(&mut self, kind: Refusal, now: Instant) -> Option<u64> {
        self.budgets[kind as usize].take(now)
    }
}

/// The current minute of refused commands' log lines.
#[derive(Debug, Default)]
pub(super) struct LogBudget {
    start: Option<Instant>,
    logged: u32,
    /// Not logged since the last one that was.
    quiet: u64,
}

impl LogBudget {
    /// One more refused command at `now`: `Some(n)` when it is to be
    /// logged, `n` the ones not logged before it; `None` when it is not.
    pub(super) fn take(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if fresh {
            self.start = Some(now);
            self.logged = 0;
        }
        if self.logged < LOGGED_PER_MINUTE {
            self.logged += 1;
            return Some(std::mem::take(&mut self.quiet));
        }
        self.quiet = self.quiet.saturating_add(1);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten a minute are logged; the rest are not, and the first logged in
    /// the next minute says how many were not.
    #[test]
    fn ten_a_minute_are_logged_and_the_next_says_how_many_were_not() {
        let t0 = Instant::now();
        let mut b = LogBudget::default();
        for i in 0..LOGGED_PER_MINUTE {
            assert_eq!(b.take(t0 + Duration::from_secs(u64::from(i))), Some(0));
        }
        for _ in 0..1_000 {
            assert_eq!(b.take(t0 + Duration::from_secs(30)), None);
        }
        assert_eq!(b.take(t0 + Duration::from_secs(59)), None);
        assert_eq!(b.take(t0 + WINDOW), Some(1_001));
        assert_eq!(b.take(t0 + WINDOW), Some(0));
    }

    /// A flood of one kind leaves every other kind its own ten.
    #[test]
    fn each_kind_has_its_own_budget() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        for _ in 0..1_000 {
            log.take(Refusal::Signature, t0);
        }
        assert_eq!(log.take(Refusal::Signature, t0), None);
        for kind in [Refusal::Malformed, Refusal::Gate, Refusal::Replay] {
            for _ in 0..LOGGED_PER_MINUTE {
                assert_eq!(log.take(kind, t0), Some(0), "{kind:?}");
            }
            assert_eq!(log.take(kind, t0), None, "{kind:?}");
        }
        assert_eq!(
            log.take(Refusal::Signature, t0 + WINDOW),
            Some(1_001 - u64::from(LOGGED_PER_MINUTE))
        );
    }
}
