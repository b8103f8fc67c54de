//! Forgetting a node that left the fleet (`skos node forget`): its state,
//! open alerts, pending commands, verifications, ladders, breakers,
//! silences and deadlines are dropped, and the forgetting audited with who
//! asked. A node heard from within `coordinator.heartbeat_timeout` is
//! refused unless forced: it has not left.

use serde_json::json;
use skos_core::protocol::{AuditEntry, AuditEvent};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{Effect, Engine};
use crate::control::Refusal;

/// Why a node was not forgotten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error(
        "by: say who (1 to {} printable characters, no spaces)",
        skos_core::silence::MAX_BY_CHARS
    )]
    By,
    #[error("node {0}: nothing is kept about it")]
    Unknown(NodeName),
    #[error("node {node} was heard from {ago_seconds} s ago and is not offline: it has not left the fleet (force to forget it anyway; it comes back with its next heartbeat)")]
    Recent { node: NodeName, ago_seconds: i64 },
}

impl ForgetError {
    /// How the refusal is told.
    pub fn refusal(&self) -> Refusal {
        match self {
            ForgetError::By => Refusal::Invalid,
            ForgetError::Unknown(_) => Refusal::NotFound,
            ForgetError::Recent { .. } => Refusal::Conflict,
        }
    }
}

impl Engine {
    /// Forget `node`, `by` someone: everything kept about it goes, and one
    /// `node` audit record (`event: forgotten`) says what went. Refused
    /// for a node nothing is kept about, and, unless `force`, for one that
    /// is not offline.
    pub fn forget_node(
        &mut self,
        node: &NodeName,
        by: &str,
        force: bool,
        now: Timestamp,
    ) -> Result<Vec<Effect>, ForgetError> {
        if !skos_core::silence::valid_by(by) {
            return Err(ForgetError::By);
        }
        if !self.known_nodes().contains(node) {
            return Err(ForgetError::Unknown(node.clone()));
        }
        if let Some(state) = self.nodes.get(node) {
            if !state.offline && !force {
                return Err(ForgetError::Recent {
                    node: node.clone(),
                    ago_seconds: (now - state.last_seen).num_seconds(),
                });
            }
        }
        let last_seen = self.nodes.get(node).map(|s| s.last_seen);
        self.nodes.remove(node);
        let pending: Vec<String> = self.pending.of(node).map(|(id, _)| id.clone()).collect();
        for id in &pending {
            self.pending.remove(id);
        }
        let verifications = self.verifications.take_of(node, |_| true).len();
        let alerts: Vec<_> = self.open_alerts.of(node).map(|(p, _)| p.clone()).collect();
        for p in &alerts {
            self.open_alerts.remove(node, p);
        }
        let ladders: Vec<_> = self.ladders.of(node).map(|(p, _)| p.clone()).collect();
        for p in &ladders {
            self.ladders.remove(node, p);
        }
        let breakers = self.breakers.forget_node(node.as_str());
        let silences = self.silences.remove(node).map_or(0, |v| v.len());
        self.unanswered.forget(node);
        let ledger = self.ledger.forget(node);
        let approvals = self.placement.forget_approvals(node);
        let unplaced = self.placement.forget_node(node);
        self.reset_retries.remove(node);
        self.sent_times.remove(node);
        self.offline_skipped.take_of(node, |_| true);
        self.watches.forget(node);
        self.flaps.forget(node);
        self.recent.retain(|r| r.node != node.as_str());
        let entry = AuditEntry::new(
            AuditEvent::Node,
            now,
            Some(node),
            by,
            format!("node {node} forgotten by {by}"),
            json!({
                "event": "forgotten",
                "by": by,
                "force": force,
                "last_seen": last_seen.map(|t| skos_core::timefmt::format(&t)),
                "dropped": {
                    "open_alerts": alerts.len(),
                    "pending_commands": pending.len(),
                    "verifications": verifications,
                    "ladders": ladders.len(),
                    "breakers": breakers,
                    "silences": silences,
                    "ledger_entries": ledger,
                    "approvals": approvals,
                    "workloads_unplaced": unplaced,
                },
            }),
        );
        Ok(vec![Effect::Audit(entry)])
    }
}
