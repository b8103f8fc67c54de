//! What the engine keeps between messages, and the part of it that must
//! survive a restart ([`EngineSnapshot`]).

use std::collections::{BTreeMap, VecDeque};

use chrono::Duration;
use serde::{Deserialize, Serialize};
use skos_core::breaker::BreakerSnapshot;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{Alert, Heartbeat, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::kinds::mesh::Ladder;
use super::Engine;
use crate::status::ActionRecord;

/// How many clock offset samples are kept per node; the offset is the
/// largest of them (see [`NodeState::clock_offset`]).
pub(super) const OFFSET_SAMPLES: usize = 5;

#[derive(Debug, Clone)]
pub(super) struct NodeState {
    pub(in crate::engine) last_seen: Timestamp,
    pub(in crate::engine) heartbeat: Heartbeat,
    pub(in crate::engine) offline: bool,
    pub(in crate::engine) agents: BTreeMap<String, (String, Timestamp)>,
    /// Since when every temperature has been below `warning - hysteresis`.
    pub(in crate::engine) cool_since: Option<CoolSince>,
    /// The last [`OFFSET_SAMPLES`] clock offsets measured from heartbeats
    /// (the agent's timestamp minus the time the heartbeat arrived),
    /// oldest first.
    pub(in crate::engine) offsets: VecDeque<Duration>,
    /// A `clock_skew` alert is raised for the node and not yet cleared.
    pub(in crate::engine) skewed: bool,
}

impl NodeState {
    /// A node first seen through `heartbeat` at `now`.
    pub(in crate::engine) fn new(heartbeat: Heartbeat, now: Timestamp) -> Self {
        Self {
            last_seen: now,
            agents: BTreeMap::from([(
                heartbeat.agent_id.clone(),
                (heartbeat.agent_type.clone(), now),
            )]),
            heartbeat,
            offline: false,
            cool_since: None,
            offsets: VecDeque::new(),
            skewed: false,
        }
    }

    /// Record the clock offset a heartbeat stamped `sent` (agent clock)
    /// and received at `now` (coordinator clock) shows.
    pub(in crate::engine) fn measure_offset(&mut self, sent: Timestamp, now: Timestamp) {
        self.offsets.push_back(sent - now);
        while self.offsets.len() > OFFSET_SAMPLES {
            self.offsets.pop_front();
        }
    }

    /// How far the node's clock is ahead of the coordinator's (negative:
    /// behind); `None` before its first heartbeat since the coordinator
    /// started.
    ///
    /// A sample is the true offset minus the heartbeat's transit time,
    /// which is never negative, so the largest of the last few samples is
    /// the best estimate: one heartbeat held up on the way does not move
    /// it, and a clock set forward shows at once. A clock set back shows
    /// once the larger samples from before have left the window.
    pub(in crate::engine) fn clock_offset(&self) -> Option<Duration> {
        self.offsets.iter().max().copied()
    }
}

/// The start of a node's cool period: when the coordinator saw it, and
/// the agent's timestamp of the heartbeat that showed it (the same for
/// every coordinator, so ids derived from it are too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CoolSince {
    pub(in crate::engine) at: Timestamp,
    pub(in crate::engine) agent_at: Timestamp,
}

/// One try at lifting a throttle after a cool period: which cool period
/// (the agent's timestamp of the heartbeat that started it) and which try
/// (from 1). The `reset_throttle` action id is derived from both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ResetAttempt {
    pub(in crate::engine) origin: Timestamp,
    pub(in crate::engine) attempt: u32,
}

/// A `reset_throttle` that must be sent again (its last try failed,
/// expired or got no result), as soon as the gates let it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ResetRetry {
    /// The try to send next.
    pub(in crate::engine) next: ResetAttempt,
    /// Why the last try to send it was held back, so a hold is audited
    /// once, not on every tick.
    #[serde(skip)]
    pub(in crate::engine) held: Option<super::SkipReason>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(in crate::engine) node: NodeName,
    pub(in crate::engine) problem: ProblemKey,
    pub(in crate::engine) action: String,
    pub(in crate::engine) severity: Severity,
    pub(in crate::engine) alert: Alert,
    pub(in crate::engine) trial: bool,
    /// When it was sent (coordinator clock); `None` in a snapshot from a
    /// version that did not keep it (set on restore).
    #[serde(default)]
    pub(in crate::engine) sent_at: Option<Timestamp>,
    /// Its deadline in the coordinator's clock (the command itself carries
    /// it in the node's clock): without a result by this instant plus
    /// `coordinator.result_grace_seconds`, it is closed as `no_result`.
    #[serde(default)]
    pub(in crate::engine) deadline: Option<Timestamp>,
    /// For a recovery `reset_throttle`: which cool period and try.
    #[serde(default)]
    pub(in crate::engine) reset: Option<ResetAttempt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Verification {
    pub(in crate::engine) action_id: String,
    pub(in crate::engine) node: NodeName,
    pub(in crate::engine) problem: ProblemKey,
    pub(in crate::engine) action: String,
    pub(in crate::engine) metric: String,
    /// The metric must fall below this (the alert level's threshold).
    pub(in crate::engine) below: f64,
    pub(in crate::engine) deadline: Timestamp,
    pub(in crate::engine) alert: Alert,
    /// When the agent answered (its own clock): only a heartbeat it sent
    /// at or after this instant can show the fix worked. The heartbeat
    /// known when the result arrives usually predates the command, often
    /// the alert itself, and shows the value from before the problem.
    #[serde(default)]
    pub(in crate::engine) after: Option<Timestamp>,
}

/// What the coordinator must not forget across a restart: breakers,
/// commands awaiting results, fixes under verification, open alerts, recent
/// actions and the names of known nodes (so one that died while the
/// coordinator was down is still reported offline).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub(in crate::engine) breakers: BreakerSnapshot,
    pub(in crate::engine) pending: Vec<(String, Pending)>,
    pub(in crate::engine) verifications: Vec<Verification>,
    pub(in crate::engine) open_alerts: Vec<Alert>,
    pub(in crate::engine) recent: Vec<ActionRecord>,
    pub(in crate::engine) nodes: Vec<(NodeName, Heartbeat)>,
    #[serde(default)]
    pub(in crate::engine) ladders: Vec<Ladder>,
    /// Throttle resets waiting to be sent again, by node.
    #[serde(default)]
    pub(in crate::engine) reset_retries: Vec<(NodeName, ResetRetry)>,
}

/// Most nodes kept in a snapshot.
pub(super) const SNAPSHOT_NODES: usize = 1_000;

/// Alert ids remembered for de-duplication.
pub(super) const HANDLED_WINDOW: usize = 100_000;

impl Engine {
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            breakers: self.breakers.snapshot(),
            pending: self
                .pending
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            verifications: self.verifications.clone(),
            open_alerts: self.open_alerts.values().cloned().collect(),
            recent: self.recent.iter().cloned().collect(),
            nodes: self
                .nodes
                .iter()
                .take(SNAPSHOT_NODES)
                .map(|(n, s)| {
                    // The node and its agent, not its readings: they come
                    // back with the next heartbeat.
                    let mut hb = s.heartbeat.clone();
                    hb.metadata.clear();
                    (n.clone(), hb)
                })
                .collect(),
            ladders: self.ladders.values().cloned().collect(),
            reset_retries: self
                .reset_retries
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
        }
    }

    /// Continue from a snapshot. Known nodes count as seen `now`: a node
    /// that does not report within the heartbeat timeout is then offline.
    /// A pending command from a snapshot that kept no deadline gets one
    /// from `now`.
    pub fn restore(&mut self, snap: EngineSnapshot, now: Timestamp) {
        self.breakers.restore(snap.breakers);
        let deadline = now + secs(self.cfg.coordinator.command_deadline);
        self.pending = snap
            .pending
            .into_iter()
            .map(|(id, mut p)| {
                p.sent_at.get_or_insert(now);
                p.deadline.get_or_insert(deadline);
                (id, p)
            })
            .collect();
        self.reset_retries = snap.reset_retries.into_iter().collect();
        self.verifications = snap.verifications;
        self.open_alerts = snap
            .open_alerts
            .into_iter()
            .map(|a| ((a.node.clone(), a.problem()), a))
            .collect();
        self.recent = snap.recent.into_iter().collect();
        self.ladders = snap
            .ladders
            .into_iter()
            .map(|l| ((l.alert.node.clone(), l.alert.problem()), l))
            .collect();
        for (name, heartbeat) in snap.nodes {
            let mut state = NodeState::new(heartbeat, now);
            // Its clock_skew alert is still open: not raised again.
            state.skewed = self
                .open_alerts
                .contains_key(&(name.clone(), super::kinds::clock::problem()));
            self.nodes.entry(name).or_insert(state);
        }
    }
}
