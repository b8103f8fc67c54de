//! What the engine keeps between messages, and the part of it that must
//! survive a restart ([`EngineSnapshot`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use skos_core::breaker::BreakerSnapshot;
use skos_core::events::ProblemKey;
use skos_core::protocol::{Alert, Heartbeat, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::kinds::mesh::Ladder;
use super::Engine;
use crate::status::ActionRecord;

#[derive(Debug, Clone)]
pub(super) struct NodeState {
    pub(in crate::engine) last_seen: Timestamp,
    pub(in crate::engine) heartbeat: Heartbeat,
    pub(in crate::engine) offline: bool,
    pub(in crate::engine) agents: BTreeMap<String, (String, Timestamp)>,
    /// Since when every temperature has been below `warning - hysteresis`.
    pub(in crate::engine) cool_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(in crate::engine) node: NodeName,
    pub(in crate::engine) problem: ProblemKey,
    pub(in crate::engine) action: String,
    pub(in crate::engine) severity: Severity,
    pub(in crate::engine) alert: Alert,
    pub(in crate::engine) trial: bool,
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
        }
    }

    /// Continue from a snapshot. Known nodes count as seen `now`: a node
    /// that does not report within the heartbeat timeout is then offline.
    pub fn restore(&mut self, snap: EngineSnapshot, now: Timestamp) {
        self.breakers.restore(snap.breakers);
        self.pending = snap.pending.into_iter().collect();
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
            self.nodes.entry(name).or_insert(NodeState {
                last_seen: now,
                agents: BTreeMap::from([(
                    heartbeat.agent_id.clone(),
                    (heartbeat.agent_type.clone(), now),
                )]),
                heartbeat,
                offline: false,
                cool_since: None,
            });
        }
    }
}
