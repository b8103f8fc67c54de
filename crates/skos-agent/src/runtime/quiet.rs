//! The agent's log of refused and replayed commands, bounded. Whoever can
//! publish on the node's command subject without the coordinator's key can
//! send refused commands (or replay signed ones) as fast as the bus takes
//! them; each is counted and answered (the coordinator bounds what it
//! audits of the answers), but only the first [`LOGGED_PER_MINUTE`] of a
//! minute of each are logged one by one. The next one logged says how many
//! were not.
//!
//! Sans-IO: the caller passes the time.

use std::time::{Duration, Instant};

/// Refused commands logged one by one in a minute.
pub(super) const LOGGED_PER_MINUTE: u32 = 10;

/// The window.
const WINDOW: Duration = Duration::from_secs(60);

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
}
