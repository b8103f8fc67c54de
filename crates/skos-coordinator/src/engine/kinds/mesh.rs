//! WireGuard tunnels and peers: a problem's actions are a ladder, tried one
//! at a time in table order until one is verified (the mesh level back to
//! healthy); a peer that is down from every node that watches it, or whose
//! node is offline, is its node's problem, not a tunnel problem.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skos_core::config::Config;
use skos_core::counters::Counter;
use skos_core::events::{peer_node_of, MeshEvent, ProblemKey, EVENT_KEY, MESH_NODE_SENSOR};
use skos_core::policy;
use skos_core::protocol::{Alert, AlertKind, AuditEvent, CommandResult, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::{catalogue, NodeName};

use super::{event_of, ProblemKind, Recovery};
use crate::engine::{audit, Effect, Engine, LastHeartbeat, Pending, SkipReason, Verification};

pub(crate) struct Mesh;

impl ProblemKind for Mesh {
    fn plan(
        &self,
        eng: &mut Engine,
        alert: &Alert,
        severity: Severity,
        actions: Vec<String>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        eng.start_ladder(alert, severity, actions, now, out);
    }

    fn recovery(&self, _cfg: &Config, _alert: &Alert, _severity: Severity) -> Option<Recovery> {
        Some(Recovery {
            metric: policy::MESH_METRIC,
            below: policy::MESH_RECOVERED_BELOW,
        })
    }

    /// The problem's level in `metadata.mesh`.
    fn metric_value(&self, hb: &LastHeartbeat, _metric: &str, problem: &ProblemKey) -> Option<f64> {
        hb.mesh_level(problem.as_str())
    }

    fn on_clear(&self, eng: &mut Engine, alert: &Alert, now: Timestamp, out: &mut Vec<Effect>) {
        eng.mesh_cleared(alert, now, out);
    }

    fn on_result(
        &self,
        eng: &mut Engine,
        p: &Pending,
        result: &CommandResult,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        eng.ladder_result(p, result, now, out);
    }

    /// A step without a result is a failed step: the next one, if the
    /// problem is still being healed.
    fn on_no_result(&self, eng: &mut Engine, p: &Pending, now: Timestamp, out: &mut Vec<Effect>) {
        if eng.ladders.contains(&p.node, &p.problem) {
            eng.climb(&p.node, &p.problem, now, out);
        }
    }

    fn on_verified(&self, eng: &mut Engine, v: &Verification) {
        eng.ladders.remove(&v.node, &v.problem);
    }

    /// The next step, if the problem is still being healed (no ladder: it
    /// cleared or was decided anew).
    fn on_not_verified(
        &self,
        eng: &mut Engine,
        v: Verification,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        eng.climb(&v.node, &v.problem, now, out);
    }
}

/// Mesh problems are healed one action at a time: the next action of the
/// table is sent when the previous one failed or did not verify.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ladder {
    pub(in crate::engine) alert: Alert,
    pub(in crate::engine) severity: Severity,
    pub(in crate::engine) event: String,
    pub(in crate::engine) remaining: Vec<String>,
    /// Whether a step was sent (a ladder of skips does not escalate).
    pub(in crate::engine) sent: bool,
}

/// Mesh problems: one action at a time, and a peer that is down from every
/// node's point of view is its node's problem, not a tunnel problem.
impl Engine {
    fn start_ladder(
        &mut self,
        alert: &Alert,
        severity: Severity,
        actions: Vec<String>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let node = alert.node.clone();
        let problem = alert.problem();
        let event = event_of(alert).to_string();
        if self
            .ladders
            .get(&node, &problem)
            .is_some_and(|l| l.event == event)
        {
            self.skip(
                (&node, &problem, &actions.join(", ")),
                SkipReason::InProgress,
                format!("{event} on {problem} is still being healed step by step"),
                now,
                out,
            );
            return;
        }
        if let Some((peer, reason, offline)) = self.node_problem(alert) {
            self.node_problem_found(alert, &peer, &reason, offline, &actions, now, out);
            return;
        }
        self.ladders.insert(
            &node,
            problem.clone(),
            Ladder {
                alert: alert.clone(),
                severity,
                event,
                remaining: actions,
                sent: false,
            },
        );
        self.climb(&node, &problem, now, out);
    }

    /// Send the next action of the ladder for `problem` on `node`; when none
    /// is left, escalate.
    fn climb(
        &mut self,
        node: &NodeName,
        problem: &ProblemKey,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        loop {
            let Some(l) = self.ladders.get_mut(node, problem) else {
                return;
            };
            if l.remaining.is_empty() {
                if let Some(l) = self.ladders.remove(node, problem) {
                    if l.sent {
                        self.ladder_exhausted(l, now, out);
                    }
                }
                return;
            }
            let action = l.remaining.remove(0);
            let (alert, severity) = (l.alert.clone(), l.severity);
            if let Some((peer, reason, offline)) = self.node_problem(&alert) {
                self.ladders.remove(node, problem);
                self.node_problem_found(&alert, &peer, &reason, offline, &[action], now, out);
                return;
            }
            let before = self.pending.len();
            self.dispatch(&alert, severity, &action, now, out);
            if self.pending.len() > before {
                if let Some(l) = self.ladders.get_mut(node, problem) {
                    l.sent = true;
                }
                return;
            }
        }
    }

    /// A result of a ladder step: a verifiable success waits for its
    /// verification; a diagnostic that found the problem gone ends the
    /// ladder; anything else moves to the next step.
    fn ladder_result(
        &mut self,
        p: &Pending,
        result: &CommandResult,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        if !self.ladders.contains(&p.node, &p.problem) {
            return;
        }
        match result.status {
            ResultStatus::Succeeded if catalogue::is_verifiable(&p.action) => {}
            ResultStatus::NotNeeded => {
                self.ladders.remove(&p.node, &p.problem);
            }
            ResultStatus::Succeeded
                if result.details.get("resolved").and_then(Value::as_bool) == Some(true) =>
            {
                self.ladders.remove(&p.node, &p.problem);
                out.push(audit(
                    AuditEvent::Decision,
                    now,
                    Some(&p.node),
                    format!(
                        "{} on {}: {} found it resolved; no further action",
                        p.problem, p.node, p.action
                    ),
                    json!({"problem": p.problem, "action": p.action, "reason": "resolved"}),
                ));
            }
            _ => self.climb(&p.node, &p.problem, now, out),
        }
    }

    fn ladder_exhausted(&mut self, l: Ladder, now: Timestamp, out: &mut Vec<Effect>) {
        let node = l.alert.node.clone();
        let problem = l.alert.problem();
        self.counters.inc(Counter::EscalationsMesh);
        match l.severity.next() {
            Some(next) => {
                let mut details = l.alert.details.clone();
                details.insert(EVENT_KEY.into(), json!(MeshEvent::Escalated.as_str()));
                details.insert("escalated_from".into(), json!(l.event));
                let mut esc = self.own_alert(
                    &node,
                    AlertKind::Mesh,
                    next,
                    format!(
                        "escalated: no action in mesh.actions.{} healed {problem}",
                        l.event
                    ),
                    Value::Object(details),
                    now,
                );
                esc.alert_id = format!("{}-esc-{}", l.alert.alert_id, next.as_str());
                out.push(Effect::Alert(esc));
            }
            None => out.push(audit(
                AuditEvent::Escalation,
                now,
                Some(&node),
                format!("{problem} on {node}: nothing left to escalate to; a human must decide"),
                json!({"problem": problem}),
            )),
        }
    }

    /// Whether a mesh alert about a peer is really about the peer's node:
    /// that node is offline (the coordinator's own knowledge), or every
    /// node (two or more) that the config's `mesh.topology` names as having
    /// it as a peer sees it unreachable, the alerting node among them. What
    /// a node says it watches never counts. Returns (peer node, why,
    /// offline).
    fn node_problem(&self, alert: &Alert) -> Option<(NodeName, String, bool)> {
        if MeshEvent::of(alert) != Some(MeshEvent::PeerUnreachable) {
            return None;
        }
        let peer = NodeName::parse(peer_node_of(alert)?).ok()?;
        if peer == alert.node {
            return None;
        }
        if self.nodes.get(&peer).is_some_and(|n| n.offline) {
            return Some((
                peer.clone(),
                format!("{peer} is offline (no heartbeats)"),
                true,
            ));
        }
        // A node the topology does not name as the peer's witness is no
        // evidence against it.
        if !self.watchers.watches(&alert.node, &peer) {
            return None;
        }
        // The configured witnesses (an index, not a walk over the fleet),
        // and each one's own open alerts.
        let observers: Vec<&NodeName> = self
            .watchers
            .of(&peer)
            .filter(|n| **n != peer && self.nodes.get(*n).is_some_and(|s| !s.offline))
            .collect();
        let sees_it_down = |o: &NodeName| {
            self.open_alerts.of(o).any(|(_, a)| {
                a.kind == AlertKind::Mesh
                    && MeshEvent::of(a) == Some(MeshEvent::PeerUnreachable)
                    && peer_node_of(a) == Some(peer.as_str())
            })
        };
        if observers.len() >= 2 && observers.iter().all(|o| sees_it_down(o)) {
            let names: Vec<&str> = observers.iter().map(|n| n.as_str()).collect();
            return Some((
                peer.clone(),
                format!(
                    "{peer} is unreachable from every node that has it as a peer ({})",
                    names.join(", ")
                ),
                false,
            ));
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn node_problem_found(
        &mut self,
        alert: &Alert,
        peer: &NodeName,
        reason: &str,
        offline: bool,
        actions: &[String],
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let node = alert.node.clone();
        let problem = alert.problem();
        self.counters.inc(Counter::MeshNodeProblems);
        for a in actions {
            self.skip(
                (&node, &problem, a),
                SkipReason::PeerNodeDown,
                format!("a node problem, not a tunnel problem: {reason}"),
                now,
                out,
            );
        }
        // Stop healing tunnels to that node anywhere else.
        let others: Vec<(NodeName, ProblemKey)> = self
            .ladders
            .about_peer(peer)
            .map(|(n, p, _)| (n.clone(), p.clone()))
            .collect();
        for k in others {
            self.ladders.remove(&k.0, &k.1);
            out.push(audit(
                AuditEvent::Decision,
                now,
                Some(&k.0),
                format!("stopped healing {} on {}: {reason}", k.1, k.0),
                json!({"problem": k.1, "reason": SkipReason::PeerNodeDown.as_str()}),
            ));
        }
        if !offline && !self.open_alerts.contains(peer, &ProblemKey::mesh_node()) {
            let observers: Vec<String> = self
                .open_alerts
                .about_peer(peer)
                .filter(|(_, _, a)| MeshEvent::of(a) == Some(MeshEvent::PeerUnreachable))
                .filter(|(_, _, a)| self.watchers.watches(&a.node, peer))
                .map(|(_, _, a)| a.node.to_string())
                .collect();
            out.push(Effect::Alert(self.own_alert(
                peer,
                AlertKind::Mesh,
                Severity::Critical,
                format!("{reason}: a node problem, not a tunnel problem"),
                json!({EVENT_KEY: MeshEvent::NodeUnreachable.as_str(), "sensor": MESH_NODE_SENSOR, "observers": observers}),
                now,
            )));
        }
    }

    /// A mesh problem cleared: stop its ladder; a node seen down by every
    /// peer is back when one of them reaches it again.
    fn mesh_cleared(&mut self, alert: &Alert, now: Timestamp, out: &mut Vec<Effect>) {
        if alert.kind != AlertKind::Mesh {
            return;
        }
        self.ladders.remove(&alert.node, &alert.problem());
        let Some(peer) = peer_node_of(alert).and_then(|p| NodeName::parse(p).ok()) else {
            return;
        };
        // Only a configured witness's word clears it.
        if self.open_alerts.contains(&peer, &ProblemKey::mesh_node())
            && self.watchers.watches(&alert.node, &peer)
        {
            out.push(Effect::Alert(self.own_alert(
                &peer,
                AlertKind::Mesh,
                Severity::Normal,
                format!("{peer} is reachable again from {}", alert.node),
                json!({EVENT_KEY: MeshEvent::NodeUnreachable.as_str(), "sensor": MESH_NODE_SENSOR, "recovered": true}),
                now,
            )));
        }
    }
}
