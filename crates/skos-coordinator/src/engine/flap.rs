//! Flapping problems: reported once, not acted on at every swing.
//!
//! A problem's state is whether its agent last reported it at `normal` or
//! above; each agent alert that moves it between the two (hot, cool,
//! hot...) is a state change. Moving between two alert levels (critical
//! to emergency and back) is not: a problem that stays hot is acted on and
//! escalated as ever. The
//! coordinator's own alerts (an escalation, an offline node, an open
//! circuit) are its judgements, not the problem's state, and do not count:
//! an escalation followed by the agent's unchanged reminder is no flap. A
//! problem with
//! `coordinator.flap_start_changes` state changes within the last
//! `coordinator.flap_window_seconds` is flapping, as Monit counts a
//! service's state changes within its last cycles (Sensu and Nagios weigh
//! the share of state changes among the last 21 checks the same way, with
//! a high threshold to start and a low one to stop). Then:
//!
//! - it is reported once: a `flapping` audit record (`state: started`),
//!   counted as `flapping.started`;
//! - a fix of it under verification is closed as `uncredited` (a flap's
//!   own cooling proves nothing) and a mesh ladder healing it stops;
//! - while it flaps its alerts are recorded and audited as usual, and
//!   clears still clear, but an alert no more severe than what was already
//!   decided for it since its last recovery is not decided again (counted
//!   as `alerts.held_flapping`), and its recovery (lifting a throttle) waits
//!   until it is stable: the fix in place stays in place instead of being
//!   undone and redone at each swing. A more severe alert, or a hot one
//!   after a recovery, is decided as ever;
//! - once at most `coordinator.flap_stop_changes` changes are left within
//!   the window it is stable again: reported once (`state: stopped`,
//!   `flapping.stopped`), and its open alert, if it is still open, is
//!   decided again, so a problem that settled hot is acted on.
//!
//! Times are the coordinator's: this is about when it acts (as the alert
//! quota). What a problem's changes were is not kept across a restart; a
//! restarted coordinator finds a flap again within a few swings.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::json;
use skos_core::counters::Counter;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{Alert, AuditEvent, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::credit::Uncredited;
use super::{audit, Effect, Engine, ACTOR};

/// A node's problem.
type Key = (NodeName, ProblemKey);

/// The recent state changes of every problem that changed state within
/// its window, or is flapping.
#[derive(Debug, Default)]
pub(super) struct Flaps {
    problems: BTreeMap<Key, Flap>,
    /// When the oldest change kept of each problem leaves the window, so
    /// a tick looks only at the problems whose count goes down.
    due: BTreeSet<(Timestamp, Key)>,
}

/// One problem's state and its recent changes.
#[derive(Debug)]
struct Flap {
    /// The severity of its last alert.
    last: Severity,
    /// When its state changed, oldest first: at most the start threshold
    /// of them, all within the window.
    changes: VecDeque<Timestamp>,
    /// Since when it has been flapping.
    since: Option<Timestamp>,
    /// The most severe level decided for it since its last recovery.
    decided: Option<Severity>,
}

/// Whether each rise of a problem needs a fix of its own: a storage
/// cleanup frees what is there and leaves nothing in place, while a
/// throttle stays until its recovery and a mesh repair (a restart, a route
/// switch) stays in force, so for those the fix in place is enough while
/// the problem flaps.
fn cleaned_each_time(problem: &ProblemKey) -> bool {
    problem.as_str().starts_with("storage:")
}

/// The flap detection settings.
#[derive(Debug, Clone, Copy)]
struct Limits {
    window: chrono::Duration,
    start: usize,
    stop: usize,
}

impl Flap {
    /// Forget the changes that left the window by `now`.
    fn prune(&mut self, now: Timestamp, window: chrono::Duration) {
        while self.changes.front().is_some_and(|&c| now - c >= window) {
            self.changes.pop_front();
        }
    }

    /// When the oldest change kept leaves the window.
    fn due(&self, window: chrono::Duration) -> Option<Timestamp> {
        self.changes.front().map(|&c| c + window)
    }
}

impl Flaps {
    /// Drop every problem of `node` (a forgotten node).
    pub(super) fn forget(&mut self, node: &NodeName) {
        self.problems.retain(|(n, _), _| n != node);
        self.due.retain(|(_, (n, _))| n != node);
    }
}

impl Flaps {
    /// `key` is flapping.
    pub(super) fn is_flapping(&self, node: &NodeName, problem: &ProblemKey) -> bool {
        self.problems
            .get(&(node.clone(), problem.clone()))
            .is_some_and(|f| f.since.is_some())
    }

    /// An alert put `key` in `severity` at `now`; returns the number of
    /// changes within the window when that made it start flapping.
    fn change(
        &mut self,
        key: &Key,
        severity: Severity,
        now: Timestamp,
        limits: Limits,
    ) -> Option<usize> {
        let flap = match self.problems.get_mut(key) {
            Some(f) => f,
            // Normal is where every problem starts: nothing changed.
            None if severity == Severity::Normal => return None,
            None => self.problems.entry(key.clone()).or_insert(Flap {
                last: Severity::Normal,
                changes: VecDeque::new(),
                since: None,
                decided: None,
            }),
        };
        let was_normal = flap.last == Severity::Normal;
        flap.last = severity;
        if severity == Severity::Normal && cleaned_each_time(&key.1) {
            // A cleanup leaves nothing in place: the next rise needs its own.
            flap.decided = None;
        }
        if was_normal == (severity == Severity::Normal) {
            return None;
        }
        let was_due = flap.due(limits.window);
        flap.changes.push_back(now);
        flap.prune(now, limits.window);
        while flap.changes.len() > limits.start {
            flap.changes.pop_front();
        }
        let now_due = flap.due(limits.window);
        let started = (flap.since.is_none() && flap.changes.len() >= limits.start).then(|| {
            flap.since = Some(now);
            flap.changes.len()
        });
        if was_due != now_due {
            if let Some(d) = was_due {
                self.due.remove(&(d, key.clone()));
            }
            if let Some(d) = now_due {
                self.due.insert((d, key.clone()));
            }
        }
        started
    }

    /// The problems that became stable by `now`, each with when it
    /// started flapping; problems with nothing left to remember are
    /// forgotten.
    fn ended(&mut self, now: Timestamp, limits: Limits) -> Vec<(Key, Timestamp)> {
        let mut stopped = Vec::new();
        while let Some((at, key)) = self.due.first().cloned() {
            if at > now {
                break;
            }
            self.due.pop_first();
            let Some(flap) = self.problems.get_mut(&key) else {
                continue;
            };
            flap.prune(now, limits.window);
            if let Some(d) = flap.due(limits.window) {
                self.due.insert((d, key.clone()));
            }
            if flap.changes.len() <= limits.stop {
                if let Some(since) = flap.since.take() {
                    stopped.push((key.clone(), since));
                }
            }
            // Nothing left in the window and not flapping: forgotten, even
            // at an alert level (its next change starts afresh), so a node
            // naming ever new problems keeps nothing past the window.
            if flap.changes.is_empty() && flap.since.is_none() {
                self.problems.remove(&key);
            }
        }
        stopped
    }
}

impl Engine {
    /// The flap detection settings; `None` when it is off.
    fn flap_limits(&self) -> Option<Limits> {
        let c = &self.cfg.coordinator;
        (c.flap_start_changes > 0).then(|| Limits {
            window: secs(c.flap_window_seconds),
            start: c.flap_start_changes as usize,
            stop: c.flap_stop_changes as usize,
        })
    }

    /// Record the state an agent's `alert` puts its problem in; report a
    /// problem that starts flapping with it, and close its fix under
    /// verification as uncredited.
    pub(super) fn note_state(&mut self, alert: &Alert, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(limits) = self.flap_limits() else {
            return;
        };
        if alert.agent_id == ACTOR {
            return;
        }
        let key = (alert.node.clone(), alert.problem());
        let Some(changes) = self.flaps.change(&key, alert.severity, now, limits) else {
            return;
        };
        let (node, problem) = key;
        let window = self.cfg.coordinator.flap_window_seconds;
        self.counters.inc(Counter::Flapping("started"));
        out.push(audit(
            AuditEvent::Flapping,
            now,
            Some(&node),
            format!(
                "{problem} on {node} is flapping: {changes} state changes within {window}s; \
                 its alerts are recorded but not acted on until it is stable"
            ),
            json!({"problem": problem, "state": "started", "changes": changes, "window_seconds": window, "alert_id": alert.alert_id}),
        ));
        let fixes = self.verifications.take_of(&node, |v| v.problem == problem);
        for v in fixes {
            self.uncredit(v, Uncredited::Flapping, now, out);
        }
        self.ladders.remove(&node, &problem);
    }

    /// Whether `alert` at `severity` is held: its problem flaps and a
    /// command at that severity, or a worse one, was sent for it since its
    /// last recovery (counted). A decision whose actions were all skipped
    /// (node offline, breaker open) holds nothing back.
    pub(super) fn flap_holds(&self, alert: &Alert, severity: Severity) -> bool {
        let key = (alert.node.clone(), alert.problem());
        let held = self
            .flaps
            .problems
            .get(&key)
            .is_some_and(|f| f.since.is_some() && f.decided.is_some_and(|d| d >= severity));
        if held {
            self.counters.inc(Counter::AlertsHeldFlapping);
        }
        held
    }

    /// A command at `severity` was sent for `node`'s `problem`.
    pub(super) fn flap_acted(&mut self, node: &NodeName, problem: &ProblemKey, severity: Severity) {
        if let Some(flap) = self
            .flaps
            .problems
            .get_mut(&(node.clone(), problem.clone()))
        {
            if flap.decided.is_none_or(|d| d < severity) {
                flap.decided = Some(severity);
            }
        }
    }

    /// `node`'s `problem` was recovered (its throttle lifted): what is
    /// decided for it next starts afresh.
    pub(super) fn flap_recovered(&mut self, node: &NodeName, problem: &ProblemKey) {
        if let Some(flap) = self
            .flaps
            .problems
            .get_mut(&(node.clone(), problem.clone()))
        {
            flap.decided = None;
        }
    }

    /// Report the problems that became stable, and decide again those
    /// still open.
    pub(super) fn flap_tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(limits) = self.flap_limits() else {
            return;
        };
        for ((node, problem), since) in self.flaps.ended(now, limits) {
            let window = self.cfg.coordinator.flap_window_seconds;
            let stop = limits.stop;
            self.counters.inc(Counter::Flapping("stopped"));
            let open = self.open_alerts.get(&node, &problem).cloned();
            out.push(audit(
                AuditEvent::Flapping,
                now,
                Some(&node),
                format!(
                    "{problem} on {node} is stable again: at most {stop} state changes within {window}s{}",
                    if open.is_some() { "; deciding its open alert" } else { "" }
                ),
                json!({
                    "problem": problem,
                    "state": "stopped",
                    "since": skos_core::timefmt::format(&since),
                    "window_seconds": window,
                    "open": open.as_ref().map(|a| a.severity),
                }),
            ));
            if let Some(alert) = open {
                self.decide(&alert, alert.severity, now, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
    }

    fn key() -> Key {
        (
            NodeName::parse("nova").unwrap(),
            ProblemKey::new(&skos_core::protocol::AlertKind::Thermal, Some("cpu")),
        )
    }

    fn limits() -> Limits {
        Limits {
            window: secs(60.0),
            start: 6,
            stop: 2,
        }
    }

    #[test]
    fn six_changes_in_a_minute_start_it_once_and_a_quiet_window_ends_it_once() {
        let mut f = Flaps::default();
        let (node, problem) = key();
        let mut started = Vec::new();
        // Hot 3 s, cool 3 s, for a minute: a change every 3 s.
        for i in 0..20 {
            let s = if i % 2 == 0 {
                Severity::Critical
            } else {
                Severity::Normal
            };
            let at = f64::from(i) * 3.0;
            if let Some(n) = f.change(&key(), s, t(at), limits()) {
                started.push((at, n));
            }
            // A reminder at the same severity is no change.
            assert_eq!(f.change(&key(), s, t(at + 0.5), limits()), None);
            assert!(f.ended(t(at + 1.0), limits()).is_empty());
        }
        assert_eq!(started, [(15.0, 6)]);
        assert!(f.is_flapping(&node, &problem));
        assert_eq!(f.problems[&key()].changes.len(), 6, "bounded");
        // The last changes were at 51, 54 and 57: two are left from 111 on.
        assert!(f.ended(t(110.9), limits()).is_empty());
        assert!(f.is_flapping(&node, &problem));
        assert_eq!(f.ended(t(111.0), limits()), [(key(), t(15.0))]);
        assert!(!f.is_flapping(&node, &problem));
        assert!(f.ended(t(500.0), limits()).is_empty());
        assert!(f.problems.is_empty() && f.due.is_empty(), "forgotten");
    }

    #[test]
    fn a_problem_that_starts_normal_and_stays_so_is_not_kept() {
        let mut f = Flaps::default();
        assert_eq!(f.change(&key(), Severity::Normal, t(0.0), limits()), None);
        assert!(f.problems.is_empty() && f.due.is_empty());
    }

    #[test]
    fn a_problem_left_at_an_alert_level_is_forgotten_after_the_window() {
        let mut f = Flaps::default();
        assert_eq!(f.change(&key(), Severity::Critical, t(0.0), limits()), None);
        assert_eq!(f.problems.len(), 1);
        assert!(f.ended(t(60.0), limits()).is_empty());
        assert!(f.problems.is_empty() && f.due.is_empty());
    }

    #[test]
    fn swinging_between_two_alert_levels_is_no_flap() {
        let mut f = Flaps::default();
        for i in 0..40 {
            let s = if i % 2 == 0 {
                Severity::Critical
            } else {
                Severity::Emergency
            };
            assert_eq!(f.change(&key(), s, t(f64::from(i)), limits()), None);
        }
        assert_eq!(f.problems[&key()].changes.len(), 1, "only the first rise");
    }
}
