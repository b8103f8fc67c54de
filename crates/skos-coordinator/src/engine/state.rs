//! What the engine keeps between messages, and the part of it that must
//! survive a restart ([`EngineSnapshot`]).

use std::collections::{BTreeMap, VecDeque};

use chrono::Duration;
use serde::{Deserialize, Serialize};
use skos_core::breaker::BreakerSnapshot;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{Alert, Command, Heartbeat, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::kinds::mesh::Ladder;
use super::{Effect, Engine};
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
    /// The command as sent, so a coordinator that stopped between keeping
    /// it and publishing it can publish it after a restart
    /// ([`Engine::unsent`]).
    #[serde(default)]
    pub(in crate::engine) command: Option<Command>,
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

impl EngineSnapshot {
    /// Nothing to keep (a node the engine has forgotten).
    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
            && self.pending.is_empty()
            && self.verifications.is_empty()
            && self.open_alerts.is_empty()
            && self.recent.is_empty()
            && self.nodes.is_empty()
            && self.ladders.is_empty()
            && self.reset_retries.is_empty()
    }
}

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
                .map(|(n, s)| (n.clone(), kept_heartbeat(s)))
                .collect(),
            ladders: self.ladders.values().cloned().collect(),
            reset_retries: self
                .reset_retries
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
        }
    }

    /// One node's part of [`Engine::snapshot`]: its breakers, pending
    /// commands, verifications, open alerts, recent actions, ladders and
    /// throttle retries. The coordinator keeps each node's part under its
    /// own key, written before the message that changed it is
    /// acknowledged; its size is bounded by the node's problems and
    /// actions, not by the fleet.
    pub fn node_snapshot(&self, node: &NodeName) -> EngineSnapshot {
        EngineSnapshot {
            breakers: self.breakers.snapshot_node(node.as_str()),
            pending: self
                .pending
                .iter()
                .filter(|(_, p)| &p.node == node)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            verifications: self
                .verifications
                .iter()
                .filter(|v| &v.node == node)
                .cloned()
                .collect(),
            open_alerts: self
                .open_alerts
                .iter()
                .filter(|((n, _), _)| n == node)
                .map(|(_, a)| a.clone())
                .collect(),
            recent: self
                .recent
                .iter()
                .filter(|r| r.node == node.as_str())
                .cloned()
                .collect(),
            nodes: self
                .nodes
                .get(node)
                .map(|s| (node.clone(), kept_heartbeat(s)))
                .into_iter()
                .collect(),
            ladders: self
                .ladders
                .iter()
                .filter(|((n, _), _)| n == node)
                .map(|(_, l)| l.clone())
                .collect(),
            reset_retries: self
                .reset_retries
                .get(node)
                .map(|r| (node.clone(), r.clone()))
                .into_iter()
                .collect(),
        }
    }

    /// Every node the engine keeps anything for.
    pub fn known_nodes(&self) -> std::collections::BTreeSet<NodeName> {
        let mut out: std::collections::BTreeSet<NodeName> = self.nodes.keys().cloned().collect();
        out.extend(self.pending.values().map(|p| p.node.clone()));
        out.extend(self.verifications.iter().map(|v| v.node.clone()));
        out.extend(self.open_alerts.keys().map(|(n, _)| n.clone()));
        out.extend(self.ladders.keys().map(|(n, _)| n.clone()));
        out.extend(self.reset_retries.keys().cloned());
        out.extend(
            self.breakers
                .snapshot()
                .keys()
                .filter_map(|k| NodeName::parse(&k.node).ok()),
        );
        out
    }

    /// Commands kept as pending whose `command` record is not among
    /// `audited` (the action ids of the trail's recent `command` records):
    /// the coordinator stopped after keeping them and before publishing
    /// or auditing them. Publishing them again is safe: the action id is
    /// the message id and agents execute an id once.
    pub fn unsent(&self, audited: &std::collections::HashSet<String>) -> Vec<Effect> {
        let mut out = Vec::new();
        for (id, p) in &self.pending {
            let Some(cmd) = &p.command else { continue };
            if audited.contains(id) {
                continue;
            }
            out.push(super::audit(
                skos_core::AuditEvent::Command,
                p.sent_at.unwrap_or(cmd.timestamp),
                Some(&p.node),
                format!(
                    "sent {} to {} for {} (again, after a restart)",
                    cmd.action_type, p.node, p.problem
                ),
                serde_json::json!({"command": cmd, "resent": true}),
            ));
            out.push(Effect::Command(p.node.clone(), cmd.clone()));
        }
        out
    }

    /// Continue from a snapshot, a whole one or one node's part: what it
    /// holds is added to what is already restored. Known nodes count as
    /// seen `now`: a node that does not report within the heartbeat
    /// timeout is then offline. A pending command from a snapshot that
    /// kept no deadline gets one from `now`.
    pub fn restore(&mut self, snap: EngineSnapshot, now: Timestamp) {
        self.breakers.restore(snap.breakers);
        let deadline = now + secs(self.cfg.coordinator.command_deadline);
        self.pending
            .extend(snap.pending.into_iter().map(|(id, mut p)| {
                p.sent_at.get_or_insert(now);
                p.deadline.get_or_insert(deadline);
                (id, p)
            }));
        self.reset_retries.extend(snap.reset_retries);
        self.verifications.extend(snap.verifications);
        self.open_alerts.extend(
            snap.open_alerts
                .into_iter()
                .map(|a| ((a.node.clone(), a.problem()), a)),
        );
        let mut recent: Vec<ActionRecord> = self.recent.drain(..).chain(snap.recent).collect();
        recent.sort_by_key(|r| r.sent_at);
        let keep = self.cfg.coordinator.recent_actions.max(1);
        self.recent = recent.into_iter().rev().take(keep).rev().collect();
        self.ladders.extend(
            snap.ladders
                .into_iter()
                .map(|l| ((l.alert.node.clone(), l.alert.problem()), l)),
        );
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

/// The node and its agent, not its readings: they come back with the next
/// heartbeat.
fn kept_heartbeat(s: &NodeState) -> Heartbeat {
    let mut hb = s.heartbeat.clone();
    hb.metadata.clear();
    hb
}
