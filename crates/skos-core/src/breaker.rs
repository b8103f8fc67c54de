//! Circuit breakers per (node, problem, action).
//!
//! Closed: failures inside the window are counted; `max_failures` of them
//! open the circuit. Open: the action is refused until `reset_timeout` has
//! passed, then the circuit is half-open and lets one trial through. The
//! trial's success closes it, its failure opens it again.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::BreakerConfig;
use crate::level::secs;
use crate::timefmt::{self, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BreakerKey {
    pub node: String,
    pub problem: String,
    pub action: String,
}

impl BreakerKey {
    pub fn new(node: &str, problem: &str, action: &str) -> Self {
        Self {
            node: node.into(),
            problem: problem.into(),
            action: action.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum State {
    Closed { failures: VecDeque<Timestamp> },
    Open { since: Timestamp },
    HalfOpen { trial_in_flight: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Half-open: this is the single trial.
    Trial,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenCircuit {
    #[serde(flatten)]
    pub key: BreakerKey,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none", with = "timefmt::option")]
    pub since: Option<Timestamp>,
}

#[derive(Debug, Clone, Default)]
pub struct Breakers {
    cfg: BreakerConfig,
    states: BTreeMap<BreakerKey, State>,
}

/// The breakers' state, to be kept across a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakerSnapshot(Vec<(BreakerKey, State)>);

impl BreakerSnapshot {
    /// No breaker in it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys of the breakers in it.
    pub fn keys(&self) -> impl Iterator<Item = &BreakerKey> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl Breakers {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            states: BTreeMap::new(),
        }
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot(
            self.states
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
        )
    }

    /// The breakers of one node (its part of [`Breakers::snapshot`]).
    pub fn snapshot_node(&self, node: &str) -> BreakerSnapshot {
        let from = BreakerKey::new(node, "", "");
        BreakerSnapshot(
            self.states
                .range(from..)
                .take_while(|(k, _)| k.node == node)
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
        )
    }

    /// Drop every breaker of `node` (a forgotten node); how many went.
    pub fn forget_node(&mut self, node: &str) -> usize {
        let before = self.states.len();
        self.states.retain(|k, _| k.node != node);
        before - self.states.len()
    }

    /// Take the breakers of a snapshot, keeping those of other nodes (a
    /// whole snapshot, or one node's part, is restored the same way).
    pub fn restore(&mut self, snap: BreakerSnapshot) {
        self.states.extend(snap.0);
    }

    /// Ask whether the action may run now. May move Open → HalfOpen.
    pub fn admit(&mut self, key: &BreakerKey, now: Timestamp) -> (Admission, Option<Transition>) {
        let reset = secs(self.cfg.reset_timeout_seconds);
        let Some(state) = self.states.get_mut(key) else {
            return (Admission::Allow, None);
        };
        match state {
            State::Closed { .. } => (Admission::Allow, None),
            State::Open { since } if now - *since >= reset => {
                *state = State::HalfOpen {
                    trial_in_flight: true,
                };
                (Admission::Trial, Some(Transition::HalfOpened))
            }
            State::Open { .. } => (Admission::Deny, None),
            State::HalfOpen { trial_in_flight } if !*trial_in_flight => {
                *trial_in_flight = true;
                (Admission::Trial, None)
            }
            State::HalfOpen { .. } => (Admission::Deny, None),
        }
    }

    pub fn record_success(&mut self, key: &BreakerKey) -> Option<Transition> {
        match self.states.get(key) {
            Some(State::HalfOpen { .. }) | Some(State::Open { .. }) => {
                self.states.remove(key);
                Some(Transition::Closed)
            }
            _ => {
                self.states.remove(key);
                None
            }
        }
    }

    pub fn record_failure(&mut self, key: &BreakerKey, now: Timestamp) -> Option<Transition> {
        let window = secs(self.cfg.window_seconds);
        let max = self.cfg.max_failures as usize;
        let state = self.states.entry(key.clone()).or_insert(State::Closed {
            failures: VecDeque::new(),
        });
        match state {
            State::Closed { failures } => {
                failures.push_back(now);
                while failures.front().is_some_and(|&t| now - t > window) {
                    failures.pop_front();
                }
                if failures.len() >= max {
                    *state = State::Open { since: now };
                    return Some(Transition::Opened);
                }
                None
            }
            State::HalfOpen { .. } => {
                *state = State::Open { since: now };
                Some(Transition::Opened)
            }
            State::Open { since } => {
                *since = now;
                None
            }
        }
    }

    /// A trial that produced no verdict (e.g. `unsupported`) frees the slot.
    pub fn release_trial(&mut self, key: &BreakerKey) {
        if let Some(State::HalfOpen { trial_in_flight }) = self.states.get_mut(key) {
            *trial_in_flight = false;
        }
    }

    pub fn failures(&self, key: &BreakerKey) -> usize {
        match self.states.get(key) {
            Some(State::Closed { failures }) => failures.len(),
            _ => 0,
        }
    }

    /// Circuits that are open or half-open.
    pub fn open(&self) -> Vec<OpenCircuit> {
        self.states
            .iter()
            .filter_map(|(k, s)| match s {
                State::Open { since } => Some(OpenCircuit {
                    key: k.clone(),
                    state: "open",
                    since: Some(*since),
                }),
                State::HalfOpen { .. } => Some(OpenCircuit {
                    key: k.clone(),
                    state: "half_open",
                    since: None,
                }),
                State::Closed { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_nodes_breakers_snapshot_alone_and_restore_beside_the_others() {
        let cfg = BreakerConfig {
            max_failures: 1,
            ..Default::default()
        };
        let mut b = Breakers::new(cfg);
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for node in ["a", "ab", "b"] {
            b.record_failure(&BreakerKey::new(node, "thermal:cpu", "throttle_50"), now);
        }
        assert!(Breakers::new(cfg).snapshot().is_empty());
        assert!(!b.snapshot().is_empty());
        let snap = b.snapshot();
        let nodes: Vec<&str> = snap.keys().map(|k| k.node.as_str()).collect();
        assert_eq!(nodes, ["a", "ab", "b"]);
        let a = b.snapshot_node("a");
        assert_eq!(a.0.len(), 1, "{a:?}");
        assert_eq!(a.0[0].0.node, "a");
        assert!(b.snapshot_node("c").0.is_empty());
        let mut fresh = Breakers::new(cfg);
        fresh.restore(b.snapshot_node("b"));
        fresh.restore(a);
        let nodes: Vec<String> = fresh
            .snapshot()
            .0
            .into_iter()
            .map(|(k, _)| k.node)
            .collect();
        assert_eq!(nodes, ["a", "b"]);
        assert_eq!(fresh.open().len(), 2);
    }
    use chrono::TimeZone;

    fn t(s: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn key() -> BreakerKey {
        BreakerKey::new("nova", "thermal:cpu", "throttle_50")
    }

    #[test]
    fn opens_after_max_failures_in_window() {
        let mut b = Breakers::new(BreakerConfig::default());
        for i in 0..4 {
            assert_eq!(b.record_failure(&key(), t(i)), None);
            assert_eq!(b.admit(&key(), t(i)).0, Admission::Allow);
        }
        assert_eq!(b.record_failure(&key(), t(4)), Some(Transition::Opened));
        assert_eq!(b.admit(&key(), t(5)).0, Admission::Deny);
        assert_eq!(b.open().len(), 1);
        // Other keys are untouched.
        assert_eq!(
            b.admit(&BreakerKey::new("lyra", "thermal:cpu", "throttle_50"), t(5))
                .0,
            Admission::Allow
        );
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let mut b = Breakers::new(BreakerConfig::default());
        for i in 0..4 {
            b.record_failure(&key(), t(i * 100));
        }
        // Failures at 0 and 100 are older than 300 s at t=500.
        assert_eq!(b.record_failure(&key(), t(500)), None);
        assert_eq!(b.failures(&key()), 3);
    }

    #[test]
    fn half_open_trial_closes_or_reopens() {
        let mut b = Breakers::new(BreakerConfig::default());
        for i in 0..5 {
            b.record_failure(&key(), t(i));
        }
        assert_eq!(b.admit(&key(), t(30)).0, Admission::Deny);
        assert_eq!(
            b.admit(&key(), t(65)),
            (Admission::Trial, Some(Transition::HalfOpened))
        );
        assert_eq!(
            b.admit(&key(), t(66)).0,
            Admission::Deny,
            "one trial at a time"
        );
        assert_eq!(b.record_failure(&key(), t(70)), Some(Transition::Opened));
        assert_eq!(b.admit(&key(), t(100)).0, Admission::Deny);
        assert_eq!(b.admit(&key(), t(131)).0, Admission::Trial);
        assert_eq!(b.record_success(&key()), Some(Transition::Closed));
        assert_eq!(b.admit(&key(), t(132)).0, Admission::Allow);
        assert!(b.open().is_empty());
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut b = Breakers::new(BreakerConfig::default());
        for i in 0..5 {
            b.record_failure(&key(), t(i));
        }
        let text = serde_json::to_string(&b.snapshot()).unwrap();
        let mut c = Breakers::new(BreakerConfig::default());
        c.restore(serde_json::from_str(&text).unwrap());
        assert_eq!(c.admit(&key(), t(10)).0, Admission::Deny);
        assert_eq!(c.open().len(), 1);
    }

    #[test]
    fn released_trial_can_be_retried() {
        let mut b = Breakers::new(BreakerConfig::default());
        for i in 0..5 {
            b.record_failure(&key(), t(i));
        }
        assert_eq!(b.admit(&key(), t(65)).0, Admission::Trial);
        b.release_trial(&key());
        assert_eq!(b.admit(&key(), t(66)).0, Admission::Trial);
    }
}
