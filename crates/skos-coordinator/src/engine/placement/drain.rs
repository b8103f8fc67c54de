//! Nodes handed to their orchestrator. A node with
//! `nodes.<node>.orchestrator` belongs to Docker Swarm, Kubernetes or
//! Nomad: moving its containers is the orchestrator's job. For it,
//! `redistribute`, `failover` and `shutdown_non_essential` send one
//! `node_drain` step instead of SKOS's own moves, and `failback` (and the
//! return of a node calm for `failover.failback_hold_seconds`) one
//! `node_undrain`. The step goes to the node's own agent while it is
//! online, else to the first online hot spare's (the orchestrator's API is
//! reachable from any node). It passes the same gates as any step
//! (dry-run, fleet gate, approval, the breaker of (agent,
//! `orchestrator:<node>`, action) and the agent's rate), is audited as a
//! `placement` record, and its state ([`Drain`]) is kept in the node's
//! part of the snapshot: a drained node is not drained again until it is
//! undrained.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skos_core::catalogue::{NODE_DRAIN, NODE_UNDRAIN};
use skos_core::events::ProblemKey;
use skos_core::protocol::{Alert, AuditEvent, CommandResult, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::Reason;
use crate::engine::state::Pending;
use crate::engine::{audit, Effect, Engine, SkipReason};

/// The parameter naming the drained node.
const NODE_PARAM: &str = "node";

/// A node's state with its orchestrator, by SKOS's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub(crate) node: NodeName,
    /// The last drain succeeded and no undrain has since.
    #[serde(default)]
    pub(crate) drained: bool,
    /// The drain or undrain under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) op: Option<DrainOp>,
    /// Steps taken so far (names each step's action id).
    #[serde(default)]
    pub(crate) epoch: u64,
}

/// A drain or undrain in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DrainOp {
    /// The plan that asked for it.
    pub(crate) reason: Reason,
    /// `node_undrain` (else `node_drain`).
    pub(crate) undrain: bool,
    /// The node whose agent runs the command.
    pub(crate) via: NodeName,
    pub(crate) action_id: String,
}

impl Drain {
    fn new(node: &NodeName) -> Self {
        Drain {
            node: node.clone(),
            drained: false,
            op: None,
            epoch: 0,
        }
    }

    /// `drained`, `draining`, `undraining` or `undrained`.
    pub(crate) fn state(&self) -> &'static str {
        match (&self.op, self.drained) {
            (Some(op), _) if op.undrain => "undraining",
            (Some(_), _) => "draining",
            (None, true) => "drained",
            (None, false) => "undrained",
        }
    }
}

/// Whether `reason` hands the node back to its orchestrator's scheduling
/// (undrain) rather than taking work off it (drain).
const fn undrains(reason: Reason) -> bool {
    matches!(reason, Reason::Failback | Reason::Restart)
}

impl Engine {
    /// Whether `node` has `nodes.<node>.orchestrator`.
    pub(super) fn orchestrated(&self, node: &NodeName) -> bool {
        self.placement.fleet.orchestrated.contains(node)
    }

    /// Whether `node` is drained (and no undrain is under way).
    pub(super) fn drained(&self, node: &NodeName) -> bool {
        self.placement
            .drains
            .get(node)
            .is_some_and(|d| d.drained && d.op.is_none())
    }

    /// Whether a drain or undrain of `node` is under way.
    pub(super) fn draining(&self, node: &NodeName) -> bool {
        self.placement
            .drains
            .get(node)
            .is_some_and(|d| d.op.is_some())
    }

    /// Carry out `reason` for orchestrated `node` (past every plan gate):
    /// one `node_drain` or `node_undrain`, unless the node is already so.
    pub(super) fn drain_step(
        &mut self,
        reason: Reason,
        node: &NodeName,
        cause: &Alert,
        severity: Severity,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let undrain = undrains(reason);
        let action = if undrain { NODE_UNDRAIN } else { NODE_DRAIN };
        let problem = ProblemKey::of_orchestrator(node);
        let plan = reason.as_str();
        let d = self
            .placement
            .drains
            .get(node)
            .cloned()
            .unwrap_or_else(|| Drain::new(node));
        if d.op.is_some() {
            self.skip(
                (node, &problem, action),
                SkipReason::InProgress,
                format!("a {} of {node} is still under way", d.state()),
                now,
                out,
            );
            return;
        }
        if d.drained != undrain {
            let already = if undrain {
                "not drained"
            } else {
                "already drained"
            };
            out.push(audit(
                AuditEvent::Placement,
                now,
                Some(node),
                format!("{plan} on {node}: {already} through its orchestrator, nothing to do"),
                json!({"plan": plan, "node": node, "step": action, "outcome": "nothing_to_do", "alert_id": cause.alert_id}),
            ));
            return;
        }
        if self.cfg.dry_run {
            self.skip(
                (node, &problem, action),
                SkipReason::DryRun,
                "dry-run mode executes nothing".into(),
                now,
                out,
            );
            return;
        }
        let via = if self.online(node) {
            Some(node.clone())
        } else {
            self.placement
                .fleet
                .spares
                .iter()
                .find(|s| *s != node && self.online(s))
                .cloned()
        };
        let Some(via) = via else {
            self.skip(
                (node, &problem, action),
                SkipReason::NodeOffline,
                format!("{node} is offline and no hot spare is online to run its {action}"),
                now,
                out,
            );
            return;
        };
        let trial = match self.admit_step(&via, &problem, action, now, out) {
            Ok(trial) => trial,
            Err((why, detail)) => {
                if reason.destructive() {
                    self.skip((&via, &problem, action), why, detail, now, out);
                } else {
                    self.counters
                        .inc(skos_core::counters::Counter::ActionsSkipped(why.as_str()));
                }
                return;
            }
        };
        let d = self
            .placement
            .drains
            .entry(node.clone())
            .or_insert_with(|| Drain::new(node));
        d.epoch += 1;
        let action_id = format!("{via}:{action}:{node}:{}", d.epoch);
        d.op = Some(DrainOp {
            reason,
            undrain,
            via: via.clone(),
            action_id: action_id.clone(),
        });
        let on = if via == *node {
            String::new()
        } else {
            format!(" (run on {via}: {node} is offline)")
        };
        out.push(audit(
            AuditEvent::Placement,
            now,
            Some(node),
            format!("{plan} step: {action} {node} through its orchestrator{on}"),
            json!({"plan": plan, "node": node, "step": action, "via": via, "action_id": action_id, "alert_id": cause.alert_id}),
        ));
        let mut cmd = self.command(
            &via,
            action,
            action_id,
            Some(cause.alert_id.clone()),
            &problem,
            now,
        );
        cmd.parameters
            .insert(NODE_PARAM.into(), Value::String(node.to_string()));
        let pending = Pending::new(via, problem, action, severity, cause.clone(), trial);
        self.send(cmd, pending, now, out);
    }

    /// A drain or undrain of `node` was answered (`Some`) or got no
    /// result (`None`): drained or undrained on success, unchanged else.
    pub(super) fn drain_result(
        &mut self,
        node: &NodeName,
        action_id: &str,
        result: Option<&CommandResult>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Some(d) = self.placement.drains.get_mut(node) else {
            return;
        };
        let op = match d.op.take() {
            Some(op) if op.action_id == action_id => op,
            other => {
                d.op = other;
                return;
            }
        };
        let ok = result.is_some_and(|r| r.status == ResultStatus::Succeeded);
        let action = if op.undrain { NODE_UNDRAIN } else { NODE_DRAIN };
        let plan = op.reason.as_str();
        if ok {
            d.drained = !op.undrain;
        }
        let (outcome, summary) = match (ok, op.undrain) {
            (true, false) => (
                "drained",
                format!("{plan}: {node} drained through its orchestrator"),
            ),
            (true, true) => (
                "undrained",
                format!("{plan}: {node} undrained: its orchestrator may place work on it again"),
            ),
            (false, _) => {
                let why = match result {
                    Some(r) => format!("{} {}", r.status.as_str(), r.message),
                    None => "no result".to_string(),
                };
                (
                    "failed",
                    format!("{plan}: {action} of {node} failed ({why})"),
                )
            }
        };
        out.push(audit(
            AuditEvent::Placement,
            now,
            Some(node),
            summary,
            json!({"plan": plan, "node": node, "step": action, "via": op.via, "outcome": outcome, "action_id": action_id}),
        ));
    }

    /// Every orchestrated node `query` concerns and its drain state, for
    /// `skos status`.
    pub(in crate::engine) fn drain_statuses(
        &self,
        query: &crate::status::StatusQuery,
    ) -> Vec<crate::status::DrainStatus> {
        self.placement
            .fleet
            .orchestrated
            .iter()
            .filter(|n| query.concerns(n.as_str()))
            .map(|n| {
                let d = self
                    .placement
                    .drains
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| Drain::new(n));
                crate::status::DrainStatus {
                    node: n.to_string(),
                    state: d.state().into(),
                    via: d.op.as_ref().map(|o| o.via.to_string()),
                }
            })
            .take(crate::status::MAX_DRAINS)
            .collect()
    }
}
