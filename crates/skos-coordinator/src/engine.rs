//! The coordinator's decisions, as a synchronous state machine.
//!
//! Inputs are already-decoded messages and the current time; outputs are
//! [`Effect`]s, which the service carries out in order. Nothing here does
//! I/O, so every safety rule is unit-tested directly.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skos_core::breaker::{Admission, BreakerKey, BreakerSnapshot, Breakers, Transition};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::level::secs;
use skos_core::protocol::{
    Alert, AlertKind, AuditEntry, Command, CommandResult, Heartbeat, ResultStatus, Severity,
};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;
use skos_core::{catalogue, policy};

use crate::status::{ActionRecord, AgentStatus, NodeStatus, Status};

const ACTOR: &str = "coordinator";

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a command to a node's agent.
    Command(NodeName, Command),
    /// Raise an alert (offline node, escalation, open circuit); it comes
    /// back through the alert feed and is handled like any other.
    Alert(Alert),
    Audit(AuditEntry),
}

#[derive(Debug, Clone)]
struct NodeState {
    last_seen: Timestamp,
    heartbeat: Heartbeat,
    offline: bool,
    agents: BTreeMap<String, (String, Timestamp)>,
    /// Since when every temperature has been below `warning - hysteresis`.
    cool_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    node: NodeName,
    problem: String,
    action: String,
    severity: Severity,
    alert: Alert,
    trial: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verification {
    action_id: String,
    node: NodeName,
    problem: String,
    action: String,
    metric: String,
    /// The metric must fall below this (the alert level's threshold).
    below: f64,
    deadline: Timestamp,
    alert: Alert,
    /// When the agent answered (its own clock): only a heartbeat it sent
    /// at or after this instant can show the fix worked. The heartbeat
    /// known when the result arrives usually predates the command, often
    /// the alert itself, and shows the value from before the problem.
    #[serde(default)]
    after: Option<Timestamp>,
}

/// Mesh problems are healed one action at a time: the next action of the
/// table is sent when the previous one failed or did not verify.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ladder {
    alert: Alert,
    severity: Severity,
    event: String,
    remaining: Vec<String>,
    /// Whether a step was sent (a ladder of skips does not escalate).
    sent: bool,
}

pub struct Engine {
    cfg: Config,
    counters: Counters,
    nodes: BTreeMap<NodeName, NodeState>,
    /// Open alerts by (node, problem).
    open_alerts: BTreeMap<(NodeName, String), Alert>,
    breakers: Breakers,
    pending: BTreeMap<String, Pending>,
    verifications: Vec<Verification>,
    recent: VecDeque<ActionRecord>,
    handled: HashSet<String>,
    handled_order: VecDeque<String>,
    sent_times: BTreeMap<NodeName, VecDeque<Timestamp>>,
    mode: String,
    /// Mesh problems being healed step by step, by (node, problem).
    ladders: BTreeMap<(NodeName, String), Ladder>,
}

/// What the coordinator must not forget across a restart: breakers,
/// commands awaiting results, fixes under verification, open alerts, recent
/// actions and the names of known nodes (so one that died while the
/// coordinator was down is still reported offline).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    breakers: BreakerSnapshot,
    pending: Vec<(String, Pending)>,
    verifications: Vec<Verification>,
    open_alerts: Vec<Alert>,
    recent: Vec<ActionRecord>,
    nodes: Vec<(NodeName, Heartbeat)>,
    #[serde(default)]
    ladders: Vec<Ladder>,
}

/// Most nodes kept in a snapshot.
const SNAPSHOT_NODES: usize = 1_000;

/// Alert ids remembered for de-duplication.
const HANDLED_WINDOW: usize = 100_000;

fn audit(
    event: &str,
    now: Timestamp,
    node: Option<&NodeName>,
    summary: impl Into<String>,
    data: Value,
) -> Effect {
    Effect::Audit(AuditEntry::new(event, now, node, ACTOR, summary, data))
}

impl Engine {
    pub fn new(cfg: Config, counters: Counters, mode: &str) -> Self {
        Self {
            breakers: Breakers::new(cfg.circuit_breaker),
            cfg,
            counters,
            nodes: BTreeMap::new(),
            open_alerts: BTreeMap::new(),
            pending: BTreeMap::new(),
            verifications: Vec::new(),
            recent: VecDeque::new(),
            handled: HashSet::new(),
            handled_order: VecDeque::new(),
            sent_times: BTreeMap::new(),
            mode: mode.to_string(),
            ladders: BTreeMap::new(),
        }
    }

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

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Remember an alert as handled (also used to reload the set from the
    /// audit trail after a restart).
    pub fn mark_handled(&mut self, alert_id: &str) -> bool {
        if !self.handled.insert(alert_id.to_string()) {
            return false;
        }
        self.handled_order.push_back(alert_id.to_string());
        if self.handled_order.len() > HANDLED_WINDOW {
            if let Some(old) = self.handled_order.pop_front() {
                self.handled.remove(&old);
            }
        }
        true
    }

    /// Undo [`Engine::mark_handled`] for an alert whose effects could not
    /// be carried out, so its redelivery is handled.
    pub fn forget_handled(&mut self, alert_id: &str) {
        self.handled.remove(alert_id);
    }

    pub fn on_heartbeat(&mut self, hb: Heartbeat, now: Timestamp) -> Vec<Effect> {
        self.counters.inc("heartbeats.received");
        let mut out = Vec::new();
        let node = hb.node.clone();
        let was_offline = self.nodes.get(&node).is_some_and(|n| n.offline);
        let first = !self.nodes.contains_key(&node);
        let state = self.nodes.entry(node.clone()).or_insert_with(|| NodeState {
            last_seen: now,
            heartbeat: hb.clone(),
            offline: false,
            agents: BTreeMap::new(),
            cool_since: None,
        });
        state.last_seen = now;
        state.offline = false;
        state
            .agents
            .insert(hb.agent_id.clone(), (hb.agent_type.clone(), now));
        state.heartbeat = hb;
        if first {
            out.push(audit(
                "node",
                now,
                Some(&node),
                format!("node {node} joined"),
                json!({"event": "joined"}),
            ));
        }
        if was_offline {
            out.push(Effect::Alert(self.own_alert(
                &node,
                AlertKind::HeartbeatMissing,
                Severity::Normal,
                format!("node {node} is back: heartbeats resumed"),
                json!({"sensor": "heartbeat"}),
                now,
            )));
        }
        self.check_verifications(&node, now, &mut out);
        self.check_cool_down(&node, now, &mut out);
        out
    }

    pub fn on_alert(&mut self, mut alert: Alert, now: Timestamp) -> Vec<Effect> {
        alert.ensure_id();
        if !self.mark_handled(&alert.alert_id) {
            self.counters.inc("alerts.duplicate");
            return Vec::new();
        }
        self.counters.inc("alerts.handled");
        let node = alert.node.clone();
        let problem = alert.problem();
        let mut out = vec![audit(
            "alert",
            now,
            Some(&node),
            format!(
                "{} {} alert on {node}: {}",
                alert.severity.as_str(),
                alert.kind.as_str(),
                alert.message
            ),
            json!({"alert_id": alert.alert_id, "alert": alert}),
        )];
        let key = (node.clone(), problem.clone());
        if alert.severity == Severity::Normal {
            self.open_alerts.remove(&key);
            self.mesh_cleared(&alert, now, &mut out);
            return out;
        }
        self.open_alerts.insert(key, alert.clone());
        self.decide(&alert, alert.severity, now, &mut out);
        out
    }

    /// Choose and send the actions for an alert at a severity.
    fn decide(&mut self, alert: &Alert, severity: Severity, now: Timestamp, out: &mut Vec<Effect>) {
        let node = alert.node.clone();
        let problem = alert.problem();
        let mut at_level = alert.clone();
        at_level.severity = severity;
        let actions = policy::actions_for(&self.cfg, &at_level);
        out.push(audit(
            "decision",
            now,
            Some(&node),
            if actions.is_empty() {
                format!("no action for {problem} at {}", severity.as_str())
            } else {
                format!("{problem} at {}: {}", severity.as_str(), actions.join(", "))
            },
            json!({"alert_id": alert.alert_id, "problem": problem, "severity": severity, "actions": actions}),
        ));
        if policy::is_sequential(&alert.kind) {
            self.start_ladder(alert, severity, actions, now, out);
            return;
        }
        for action in actions {
            self.dispatch(alert, severity, &action, now, out);
        }
    }

    /// Record that an action for (node, problem) was not sent, and why.
    fn skip(
        &mut self,
        (node, problem, action): (&NodeName, &str, &str),
        reason: &str,
        detail: String,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        self.counters.inc(&format!("actions.skipped.{reason}"));
        out.push(audit(
            "skipped",
            now,
            Some(node),
            format!("{action} for {problem} on {node} skipped: {detail}"),
            json!({"problem": problem, "action": action, "reason": reason}),
        ));
    }

    fn dispatch(
        &mut self,
        alert: &Alert,
        severity: Severity,
        action: &str,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let node = alert.node.clone();
        let problem = alert.problem();
        if self.cfg.dry_run {
            self.skip(
                (&node, &problem, action),
                "dry_run",
                "dry-run mode executes nothing".into(),
                now,
                out,
            );
            return;
        }
        if self.nodes.get(&node).is_some_and(|n| n.offline) {
            self.skip(
                (&node, &problem, action),
                "node_offline",
                "the node is offline".into(),
                now,
                out,
            );
            return;
        }
        let in_progress = self
            .pending
            .values()
            .any(|p| p.node == node && p.problem == problem && p.action == action)
            || self
                .verifications
                .iter()
                .any(|v| v.node == node && v.problem == problem && v.action == action);
        if in_progress {
            self.skip(
                (&node, &problem, action),
                "in_progress",
                "the same action is still being carried out or verified".into(),
                now,
                out,
            );
            return;
        }
        let key = BreakerKey::new(node.as_str(), &problem, action);
        let (admission, transition) = self.breakers.admit(&key, now);
        if transition == Some(Transition::HalfOpened) {
            out.push(audit(
                "breaker",
                now,
                Some(&node),
                format!("circuit {} half-open: one trial allowed", key_str(&key)),
                json!({"key": key, "state": "half_open"}),
            ));
        }
        if admission == Admission::Deny {
            self.skip(
                (&node, &problem, action),
                "circuit_open",
                format!("circuit {} is open", key_str(&key)),
                now,
                out,
            );
            return;
        }
        let window = Duration::seconds(60);
        let times = self.sent_times.entry(node.clone()).or_default();
        while times.front().is_some_and(|&t| now - t > window) {
            times.pop_front();
        }
        if times.len() >= self.cfg.coordinator.max_actions_per_node_per_minute as usize {
            if admission == Admission::Trial {
                self.breakers.release_trial(&key);
            }
            self.skip(
                (&node, &problem, action),
                "rate_limited",
                "per-node action rate limit reached".into(),
                now,
                out,
            );
            return;
        }
        times.push_back(now);
        // The digest of the whole alert id: alerts raised in one sensing
        // pass (CPU and GPU, two mounts) share a time and often the end of
        // their ids, and must still give distinct commands.
        let action_id = format!(
            "{node}:{}:{action}:{}:{}",
            alert.kind.as_str(),
            alert.timestamp.timestamp(),
            alert.id_digest()
        );
        let cmd = Command {
            action_id: action_id.clone(),
            action_type: action.to_string(),
            parameters: Default::default(),
            timestamp: now,
            node: Some(node.clone()),
            deadline: Some(now + secs(self.cfg.coordinator.command_deadline)),
            cause: Some(alert.alert_id.clone()),
            problem: Some(problem.clone()),
        };
        self.send(
            cmd,
            &node,
            &problem,
            severity,
            alert,
            admission == Admission::Trial,
            now,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        cmd: Command,
        node: &NodeName,
        problem: &str,
        severity: Severity,
        alert: &Alert,
        trial: bool,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        self.counters.inc("commands.sent");
        out.push(audit(
            "command",
            now,
            Some(node),
            format!("sent {} to {node} for {problem}", cmd.action_type),
            json!({"command": cmd}),
        ));
        self.pending.insert(
            cmd.action_id.clone(),
            Pending {
                node: node.clone(),
                problem: problem.to_string(),
                action: cmd.action_type.clone(),
                severity,
                alert: alert.clone(),
                trial,
            },
        );
        self.recent.push_back(ActionRecord {
            action_id: cmd.action_id.clone(),
            action_type: cmd.action_type.clone(),
            node: node.to_string(),
            problem: problem.to_string(),
            cause: cmd.cause.clone().unwrap_or_default(),
            sent_at: now,
            state: "sent".into(),
            message: String::new(),
        });
        while self.recent.len() > self.cfg.coordinator.recent_actions.max(1) {
            self.recent.pop_front();
        }
        out.push(Effect::Command(node.clone(), cmd));
    }

    fn set_action_state(&mut self, action_id: &str, state: &str, message: &str) {
        if let Some(r) = self
            .recent
            .iter_mut()
            .rev()
            .find(|r| r.action_id == action_id)
        {
            r.state = state.to_string();
            r.message = message.to_string();
        }
    }

    pub fn on_result(&mut self, result: CommandResult, now: Timestamp) -> Vec<Effect> {
        self.counters
            .inc(&format!("results.{}", result.status.as_str()));
        let node = result.node.clone();
        let mut out = vec![audit(
            "result",
            now,
            Some(&node),
            format!(
                "{} on {node}: {} {}",
                result.action_type,
                result.status.as_str(),
                result.message
            ),
            json!({"result": result}),
        )];
        self.set_action_state(&result.action_id, result.status.as_str(), &result.message);
        let Some(p) = self.pending.remove(&result.action_id) else {
            // A reset, or a result for a command sent before a restart.
            if result.status != ResultStatus::Succeeded {
                self.counters.inc("results.unmatched");
            }
            return out;
        };
        let key = BreakerKey::new(p.node.as_str(), &p.problem, &p.action);
        let freed = result.details.get("bytes_freed").and_then(Value::as_u64);
        match result.status {
            ResultStatus::Succeeded if catalogue::frees_space(&p.action) && freed == Some(0) => {
                self.counters.inc("actions.freed_nothing");
                out.push(audit(
                    "verification",
                    now,
                    Some(&node),
                    format!("{} on {node} freed nothing", p.action),
                    json!({"action_id": result.action_id, "outcome": "failed", "reason": "freed_nothing"}),
                ));
                self.set_action_state(&result.action_id, "not_verified", "freed nothing");
                self.failure(&key, now, &mut out);
            }
            ResultStatus::Succeeded => {
                match (
                    catalogue::is_verifiable(&p.action),
                    policy::metric_for(&p.problem),
                ) {
                    (true, Some(metric)) => {
                        let below = if p.alert.kind == AlertKind::Mesh {
                            policy::MESH_RECOVERED_BELOW
                        } else {
                            thresholds_for(&self.cfg, &p.alert)
                                .map(|t| level_threshold(t, p.severity))
                                .unwrap_or(f64::INFINITY)
                        };
                        self.verifications.push(Verification {
                            action_id: result.action_id.clone(),
                            node: p.node.clone(),
                            problem: p.problem.clone(),
                            action: p.action.clone(),
                            metric: metric.to_string(),
                            below,
                            deadline: now + secs(self.cfg.coordinator.verify_within),
                            alert: p.alert.clone(),
                            after: Some(result.timestamp),
                        });
                        // The node may already be cool (if it reported since).
                        self.check_verifications(&node, now, &mut out);
                    }
                    _ => {
                        if let Some(t) = self.breakers.record_success(&key) {
                            self.breaker_transition(&key, t, now, &mut out);
                        }
                    }
                }
            }
            ResultStatus::Failed | ResultStatus::Expired | ResultStatus::Rejected => {
                self.failure(&key, now, &mut out);
            }
            ResultStatus::Unsupported => {
                // Not a failure of the fix: nobody implements it here.
                if p.trial {
                    self.breakers.release_trial(&key);
                }
            }
        }
        if policy::is_sequential(&p.alert.kind) {
            self.ladder_result(&p, &result, now, &mut out);
        }
        out
    }

    fn failure(&mut self, key: &BreakerKey, now: Timestamp, out: &mut Vec<Effect>) {
        self.counters.inc("breaker.failures");
        if let Some(t) = self.breakers.record_failure(key, now) {
            self.breaker_transition(key, t, now, out);
        }
    }

    fn breaker_transition(
        &mut self,
        key: &BreakerKey,
        t: Transition,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let node = NodeName::parse(&key.node).ok();
        let state = match t {
            Transition::Opened => "open",
            Transition::HalfOpened => "half_open",
            Transition::Closed => "closed",
        };
        self.counters.inc(&format!("breaker.{state}"));
        out.push(audit(
            "breaker",
            now,
            node.as_ref(),
            format!("circuit {} {state}", key_str(key)),
            json!({"key": key, "state": state}),
        ));
        if let (Transition::Opened, Some(node)) = (t, node) {
            out.push(Effect::Alert(self.own_alert(
                &node,
                AlertKind::Circuit,
                Severity::Warning,
                format!("circuit opened for {} on {}: it failed {} times", key.action, key.problem, self.cfg.circuit_breaker.max_failures),
                json!({"sensor": format!("{}/{}", key.problem, key.action), "problem": key.problem, "action": key.action}),
                now,
            )));
        }
    }

    fn check_verifications(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(hb) = self.nodes.get(node).map(|n| n.heartbeat.clone()) else {
            return;
        };
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.verifications)
            .into_iter()
            .partition(|v| {
                &v.node == node
                    && v.after.is_none_or(|t| hb.timestamp >= t)
                    && metric_value(&hb, v).is_some_and(|x| x < v.below)
            });
        self.verifications = keep;
        for v in done {
            let value = metric_value(&hb, &v);
            if policy::is_sequential(&v.alert.kind) {
                self.ladders.remove(&(v.node.clone(), v.problem.clone()));
            }
            self.counters.inc("verifications.succeeded");
            self.set_action_state(
                &v.action_id,
                "verified",
                &format!("{} fell to {:.1}", v.metric, value.unwrap_or(f64::NAN)),
            );
            out.push(audit(
                "verification",
                now,
                Some(node),
                format!("{} on {node} worked: {} {:.1} < {:.1}", v.action, v.metric, value.unwrap_or(f64::NAN), v.below),
                json!({"action_id": v.action_id, "outcome": "succeeded", "metric": v.metric, "value": value, "below": v.below}),
            ));
            let key = BreakerKey::new(node.as_str(), &v.problem, &v.action);
            if let Some(t) = self.breakers.record_success(&key) {
                self.breaker_transition(&key, t, now, out);
            }
        }
    }

    /// When a throttled node has been cool for `clear_for`, lift the throttle.
    fn check_cool_down(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        let clear_below = self.cfg.thermal.thresholds.warning - self.cfg.thermal.hysteresis;
        let clear_for = secs(self.cfg.thermal.clear_for);
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let hb = &state.heartbeat;
        let throttled = hb.throttle_level.unwrap_or(0) > 0;
        let temps: Vec<f64> = [hb.cpu_temp, hb.gpu_temp].into_iter().flatten().collect();
        let cool = !temps.is_empty()
            && temps.iter().all(|&t| {
                skos_core::level::cleared(
                    self.cfg.thermal.thresholds.warning,
                    self.cfg.thermal.hysteresis,
                    t,
                )
            });
        if !cool || !throttled {
            state.cool_since = None;
            return;
        }
        let since = *state.cool_since.get_or_insert(now);
        if now - since < clear_for {
            return;
        }
        let resetting = self
            .pending
            .values()
            .any(|p| &p.node == node && p.action == "reset_throttle");
        if resetting {
            return;
        }
        state.cool_since = None;
        let alert = self.own_alert(
            node,
            AlertKind::Thermal,
            Severity::Normal,
            format!(
                "{node} cool below {clear_below:.1}°C for {}s",
                self.cfg.thermal.clear_for
            ),
            json!({"sensor": "cpu", "reason": "recovery"}),
            now,
        );
        out.push(audit(
            "decision",
            now,
            Some(node),
            format!(
                "{node} has been cool for {}s: reset_throttle",
                self.cfg.thermal.clear_for
            ),
            json!({"problem": "thermal:cpu", "actions": ["reset_throttle"], "reason": "recovery"}),
        ));
        for key in [
            (node.clone(), "thermal:cpu".to_string()),
            (node.clone(), "thermal:gpu".to_string()),
        ] {
            self.open_alerts.remove(&key);
        }
        let cmd = Command {
            action_id: format!("{node}:thermal:reset_throttle:{}", now.timestamp_millis()),
            action_type: "reset_throttle".into(),
            parameters: Default::default(),
            timestamp: now,
            node: Some(node.clone()),
            deadline: Some(now + secs(self.cfg.coordinator.command_deadline)),
            cause: Some("recovery".into()),
            problem: Some("thermal:cpu".into()),
        };
        if self.cfg.dry_run {
            self.skip(
                (node, "thermal:cpu", "reset_throttle"),
                "dry_run",
                "dry-run mode executes nothing".into(),
                now,
                out,
            );
            return;
        }
        self.send(
            cmd,
            node,
            "thermal:cpu",
            Severity::Normal,
            &alert,
            false,
            now,
            out,
        );
    }

    /// Periodic work: offline detection and verification deadlines.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Effect> {
        let mut out = Vec::new();
        let timeout = secs(self.cfg.coordinator.heartbeat_timeout);
        let newly_offline: Vec<NodeName> = self
            .nodes
            .iter_mut()
            .filter(|(_, s)| !s.offline && now - s.last_seen > timeout)
            .map(|(n, s)| {
                s.offline = true;
                n.clone()
            })
            .collect();
        for node in newly_offline {
            self.counters.inc("nodes.offline");
            let last = self.nodes.get(&node).map(|s| s.last_seen).unwrap_or(now);
            let silent = (now - last).num_milliseconds() as f64 / 1000.0;
            out.push(Effect::Alert(self.own_alert(
                &node,
                AlertKind::HeartbeatMissing,
                Severity::Critical,
                format!("node {node} is offline: no heartbeat for {silent:.1}s"),
                json!({"sensor": "heartbeat", "silent_seconds": silent, "timeout": self.cfg.coordinator.heartbeat_timeout}),
                now,
            )));
        }
        let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.verifications)
            .into_iter()
            .partition(|v| now >= v.deadline);
        self.verifications = keep;
        for v in expired {
            self.counters.inc("verifications.failed");
            let value = self
                .nodes
                .get(&v.node)
                .and_then(|n| metric_value(&n.heartbeat, &v));
            self.set_action_state(
                &v.action_id,
                "not_verified",
                &format!(
                    "{} still {:?} after {}s",
                    v.metric, value, self.cfg.coordinator.verify_within
                ),
            );
            out.push(audit(
                "verification",
                now,
                Some(&v.node),
                format!("{} on {} did not work: {} not below {:.1} within {}s", v.action, v.node, v.metric, v.below, self.cfg.coordinator.verify_within),
                json!({"action_id": v.action_id, "outcome": "failed", "metric": v.metric, "value": value, "below": v.below}),
            ));
            let key = BreakerKey::new(v.node.as_str(), &v.problem, &v.action);
            self.failure(&key, now, &mut out);
            if policy::is_sequential(&v.alert.kind) {
                // The next step, if the problem is still being healed
                // (no ladder: it cleared or was decided anew).
                self.climb(&(v.node.clone(), v.problem.clone()), now, &mut out);
                continue;
            }
            match v.alert.severity.next() {
                Some(next) => {
                    let mut esc = self.own_alert(
                        &v.node,
                        v.alert.kind.clone(),
                        next,
                        format!(
                            "escalated: {} did not bring {} below {:.1}",
                            v.action, v.metric, v.below
                        ),
                        Value::Object(v.alert.details.clone()),
                        now,
                    );
                    esc.alert_id = format!("{}-esc-{}", v.alert.alert_id, next.as_str());
                    out.push(Effect::Alert(esc));
                }
                None => out.push(audit(
                    "escalation",
                    now,
                    Some(&v.node),
                    format!(
                        "{} on {}: nothing left to escalate to; a human must decide",
                        v.problem, v.node
                    ),
                    json!({"problem": v.problem}),
                )),
            }
        }
        out
    }

    fn own_alert(
        &self,
        node: &NodeName,
        kind: AlertKind,
        severity: Severity,
        message: String,
        details: Value,
        now: Timestamp,
    ) -> Alert {
        let mut a = Alert {
            alert_id: String::new(),
            agent_id: ACTOR.to_string(),
            kind,
            severity,
            node: node.clone(),
            message,
            details: match details {
                Value::Object(m) => m,
                _ => Default::default(),
            },
            timestamp: now,
        };
        a.ensure_id();
        a.alert_id = a.alert_id.replacen("seed-", "coord-", 1);
        a
    }

    pub fn status(&self, now: Timestamp) -> Status {
        let node_status = |name: &NodeName, s: &NodeState| -> &'static str {
            if s.offline {
                return "offline";
            }
            let worst = self
                .open_alerts
                .iter()
                .filter(|((n, _), _)| n == name)
                .map(|(_, a)| a.severity)
                .max()
                .unwrap_or(Severity::Normal);
            match worst {
                Severity::Normal => "healthy",
                Severity::Warning => "degraded",
                Severity::Critical | Severity::Emergency => "critical",
            }
        };
        let timeout = secs(self.cfg.coordinator.heartbeat_timeout);
        Status {
            mode: self.mode.clone(),
            generated_at: now,
            nodes: self
                .nodes
                .iter()
                .map(|(name, s)| NodeStatus {
                    name: name.to_string(),
                    status: node_status(name, s).to_string(),
                    last_seen: s.last_seen,
                    cpu_temp: s.heartbeat.cpu_temp,
                    gpu_temp: s.heartbeat.gpu_temp,
                    storage_percent: s.heartbeat.storage_percent,
                    throttle_level: s.heartbeat.throttle_level,
                })
                .collect(),
            agents: self
                .nodes
                .iter()
                .flat_map(|(name, s)| {
                    s.agents.iter().map(move |(id, (kind, seen))| AgentStatus {
                        agent_id: id.clone(),
                        agent_type: kind.clone(),
                        node: name.to_string(),
                        last_seen: *seen,
                        online: now - *seen <= timeout,
                    })
                })
                .collect(),
            open_alerts: self
                .open_alerts
                .values()
                .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
                .collect(),
            recent_actions: self.recent.iter().cloned().collect(),
            open_circuits: self
                .breakers
                .open()
                .iter()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect(),
            counters: self.counters.snapshot(),
        }
    }
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
        let key = (node.clone(), problem.clone());
        if self.ladders.get(&key).is_some_and(|l| l.event == event) {
            self.skip(
                (&node, &problem, &actions.join(", ")),
                "in_progress",
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
            key.clone(),
            Ladder {
                alert: alert.clone(),
                severity,
                event,
                remaining: actions,
                sent: false,
            },
        );
        self.climb(&key, now, out);
    }

    /// Send the next action of a ladder; when none is left, escalate.
    fn climb(&mut self, key: &(NodeName, String), now: Timestamp, out: &mut Vec<Effect>) {
        loop {
            let Some(l) = self.ladders.get_mut(key) else {
                return;
            };
            if l.remaining.is_empty() {
                if let Some(l) = self.ladders.remove(key) {
                    if l.sent {
                        self.ladder_exhausted(l, now, out);
                    }
                }
                return;
            }
            let action = l.remaining.remove(0);
            let (alert, severity) = (l.alert.clone(), l.severity);
            if let Some((peer, reason, offline)) = self.node_problem(&alert) {
                self.ladders.remove(key);
                self.node_problem_found(&alert, &peer, &reason, offline, &[action], now, out);
                return;
            }
            let before = self.pending.len();
            self.dispatch(&alert, severity, &action, now, out);
            if self.pending.len() > before {
                if let Some(l) = self.ladders.get_mut(key) {
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
        let key = (p.node.clone(), p.problem.clone());
        if !self.ladders.contains_key(&key) {
            return;
        }
        match result.status {
            ResultStatus::Succeeded if catalogue::is_verifiable(&p.action) => {}
            ResultStatus::Succeeded
                if result.details.get("resolved").and_then(Value::as_bool) == Some(true) =>
            {
                self.ladders.remove(&key);
                out.push(audit(
                    "decision",
                    now,
                    Some(&p.node),
                    format!(
                        "{} on {}: {} found it resolved; no further action",
                        p.problem, p.node, p.action
                    ),
                    json!({"problem": p.problem, "action": p.action, "reason": "resolved"}),
                ));
            }
            _ => self.climb(&key, now, out),
        }
    }

    fn ladder_exhausted(&mut self, l: Ladder, now: Timestamp, out: &mut Vec<Effect>) {
        let node = l.alert.node.clone();
        let problem = l.alert.problem();
        self.counters.inc("escalations.mesh");
        match l.severity.next() {
            Some(next) => {
                let mut details = l.alert.details.clone();
                details.insert("event".into(), json!("escalated"));
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
                "escalation",
                now,
                Some(&node),
                format!("{problem} on {node}: nothing left to escalate to; a human must decide"),
                json!({"problem": problem}),
            )),
        }
    }

    /// Whether a mesh alert about a peer is really about the peer's node:
    /// that node is offline, or every node (two or more) that watches it
    /// sees it unreachable. Returns (peer node, why, offline).
    fn node_problem(&self, alert: &Alert) -> Option<(NodeName, String, bool)> {
        if event_of(alert) != "peer_unreachable" {
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
        let observers: Vec<&NodeName> = self
            .nodes
            .iter()
            .filter(|(n, s)| {
                !s.offline
                    && **n != peer
                    && policy::mesh_peer_nodes(&s.heartbeat)
                        .iter()
                        .any(|x| x == peer.as_str())
            })
            .map(|(n, _)| n)
            .collect();
        let sees_it_down = |o: &NodeName| {
            self.open_alerts.values().any(|a| {
                &a.node == o
                    && a.kind == AlertKind::Mesh
                    && event_of(a) == "peer_unreachable"
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
        self.counters.inc("mesh.node_problems");
        for a in actions {
            self.skip(
                (&node, &problem, a),
                "peer_node_down",
                format!("a node problem, not a tunnel problem: {reason}"),
                now,
                out,
            );
        }
        // Stop healing tunnels to that node anywhere else.
        let others: Vec<(NodeName, String)> = self
            .ladders
            .iter()
            .filter(|(_, l)| peer_node_of(&l.alert) == Some(peer.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in others {
            self.ladders.remove(&k);
            out.push(audit(
                "decision",
                now,
                Some(&k.0),
                format!("stopped healing {} on {}: {reason}", k.1, k.0),
                json!({"problem": k.1, "reason": "peer_node_down"}),
            ));
        }
        let nkey = (peer.clone(), "mesh:node".to_string());
        if !offline && !self.open_alerts.contains_key(&nkey) {
            let observers: Vec<String> = self
                .open_alerts
                .values()
                .filter(|a| {
                    event_of(a) == "peer_unreachable" && peer_node_of(a) == Some(peer.as_str())
                })
                .map(|a| a.node.to_string())
                .collect();
            out.push(Effect::Alert(self.own_alert(
                peer,
                AlertKind::Mesh,
                Severity::Critical,
                format!("{reason}: a node problem, not a tunnel problem"),
                json!({"event": "node_unreachable", "sensor": "node", "observers": observers}),
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
        self.ladders.remove(&(alert.node.clone(), alert.problem()));
        let Some(peer) = peer_node_of(alert).and_then(|p| NodeName::parse(p).ok()) else {
            return;
        };
        if self
            .open_alerts
            .contains_key(&(peer.clone(), "mesh:node".to_string()))
        {
            out.push(Effect::Alert(self.own_alert(
                &peer,
                AlertKind::Mesh,
                Severity::Normal,
                format!("{peer} is reachable again from {}", alert.node),
                json!({"event": "node_unreachable", "sensor": "node", "recovered": true}),
                now,
            )));
        }
    }
}

/// The value a verification watches: a heartbeat field, or for a mesh
/// problem its level in `metadata.mesh`.
fn metric_value(hb: &Heartbeat, v: &Verification) -> Option<f64> {
    if v.metric == policy::MESH_METRIC {
        policy::mesh_level(hb, &v.problem)
    } else {
        hb.metric(&v.metric)
    }
}

fn event_of(alert: &Alert) -> &str {
    alert
        .details
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn peer_node_of(alert: &Alert) -> Option<&str> {
    alert.details.get("peer_node").and_then(Value::as_str)
}

fn key_str(k: &BreakerKey) -> String {
    format!("({}, {}, {})", k.node, k.problem, k.action)
}

fn thresholds_for<'a>(cfg: &'a Config, alert: &Alert) -> Option<&'a skos_core::config::Thresholds> {
    match alert.kind {
        AlertKind::Thermal => Some(&cfg.thermal.thresholds),
        AlertKind::Storage => Some(&cfg.storage.thresholds),
        _ => None,
    }
}

fn level_threshold(t: &skos_core::config::Thresholds, s: Severity) -> f64 {
    match s {
        Severity::Normal | Severity::Warning => t.warning,
        Severity::Critical => t.critical,
        Severity::Emergency => t.emergency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
    }

    fn nova() -> NodeName {
        NodeName::parse("nova").unwrap()
    }

    fn hb(cpu: Option<f64>, throttle: u8, at: f64) -> Heartbeat {
        Heartbeat {
            agent_id: "thermal-sentinel-nova".into(),
            agent_type: "thermal_sentinel".into(),
            node: nova(),
            timestamp: t(at),
            cpu_temp: cpu,
            gpu_temp: None,
            storage_percent: None,
            interval_seconds: Some(10.0),
            throttle_level: Some(throttle),
            metadata: Default::default(),
        }
    }

    fn alert(severity: Severity, temp: f64, at: f64) -> Alert {
        let mut a = Alert {
            alert_id: String::new(),
            agent_id: "thermal-sentinel-nova".into(),
            kind: AlertKind::Thermal,
            severity,
            node: nova(),
            message: format!("CPU temperature {temp}°C"),
            details: json!({"sensor": "cpu", "temperature": temp})
                .as_object()
                .unwrap()
                .clone(),
            timestamp: t(at),
        };
        a.ensure_id();
        a
    }

    fn commands(effects: &[Effect]) -> Vec<Command> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Command(_, c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    fn audits<'a>(effects: &'a [Effect], kind: &str) -> Vec<&'a AuditEntry> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Audit(a) if a.event_type == kind => Some(a),
                _ => None,
            })
            .collect()
    }

    fn alerts(effects: &[Effect]) -> Vec<Alert> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Alert(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    fn result(cmd: &Command, status: ResultStatus) -> CommandResult {
        CommandResult {
            action_id: cmd.action_id.clone(),
            action_type: cmd.action_type.clone(),
            node: nova(),
            agent_id: "thermal-sentinel-nova".into(),
            status,
            message: String::new(),
            changes: vec![],
            details: Default::default(),
            timestamp: t(0.0),
        }
    }

    /// The defaults with the seed's thermal table, which also names
    /// actions no antibody executes (`redistribute`, ...): they show how an
    /// `unsupported` answer is handled.
    fn seed_config() -> Config {
        let mut cfg = Config::default();
        cfg.thermal.actions.critical = vec!["throttle_50".into(), "redistribute".into()];
        cfg.thermal.actions.emergency = vec!["shutdown_non_essential".into(), "failover".into()];
        cfg
    }

    fn engine() -> Engine {
        Engine::new(seed_config(), Counters::default(), "test")
    }

    #[test]
    fn critical_alert_follows_the_seed_table_and_is_audited() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
        let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
        let cmds = commands(&fx);
        let names: Vec<&str> = cmds.iter().map(|c| c.action_type.as_str()).collect();
        assert_eq!(names, ["throttle_50", "redistribute"]);
        assert!(cmds
            .iter()
            .all(|c| c.deadline == Some(t(60.0)) && c.cause.is_some()));
        assert_eq!(audits(&fx, "alert").len(), 1);
        assert_eq!(audits(&fx, "decision").len(), 1);
        assert_eq!(audits(&fx, "command").len(), 2);
        let s = e.status(t(1.0));
        assert_eq!(s.nodes[0].status, "critical");
        assert_eq!(s.open_alerts.len(), 1);
        assert_eq!(s.recent_actions.len(), 2);
    }

    /// CPU and GPU hot in one sensing pass: same node, time and severity,
    /// ids that end alike. Two problems, so two commands, with two ids (the
    /// id is the JetStream message id: a shared one would drop the second).
    #[test]
    fn alerts_of_one_pass_get_distinct_commands() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
        let mut cpu = alert(Severity::Critical, 87.0, 0.0);
        cpu.alert_id = "thermal-sentinel-nova-1000-cpu-critical".into();
        let mut gpu = alert(Severity::Critical, 88.0, 0.0);
        gpu.alert_id = "thermal-sentinel-nova-1000-gpu-critical".into();
        gpu.details.insert("sensor".into(), json!("gpu"));
        let mut ids = Vec::new();
        for a in [cpu, gpu] {
            for c in commands(&e.on_alert(a, t(0.0))) {
                if c.action_type == "throttle_50" {
                    ids.push(c.action_id);
                }
            }
        }
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn duplicate_alert_is_handled_once() {
        let mut e = engine();
        let a = alert(Severity::Warning, 76.0, 0.0);
        assert_eq!(commands(&e.on_alert(a.clone(), t(0.0))).len(), 1);
        assert!(e.on_alert(a, t(1.0)).is_empty());
        assert_eq!(e.counters.get("alerts.duplicate"), 1);
    }

    #[test]
    fn unsupported_is_audited_but_not_a_breaker_failure() {
        let mut e = engine();
        let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
        let redistribute = commands(&fx)
            .into_iter()
            .find(|c| c.action_type == "redistribute")
            .unwrap();
        let fx = e.on_result(result(&redistribute, ResultStatus::Unsupported), t(1.0));
        assert_eq!(audits(&fx, "result").len(), 1);
        let key = BreakerKey::new("nova", "thermal:cpu", "redistribute");
        assert_eq!(e.breakers.failures(&key), 0);
        assert_eq!(e.counters.get("breaker.failures"), 0);
    }

    #[test]
    fn verification_success_when_temperature_falls() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
        let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
        let throttle = commands(&fx).remove(0);
        e.on_result(result(&throttle, ResultStatus::Succeeded), t(1.0));
        let fx = e.on_heartbeat(hb(Some(86.0), 50, 10.0), t(10.0));
        assert!(audits(&fx, "verification").is_empty(), "still hot");
        let fx = e.on_heartbeat(hb(Some(80.0), 50, 20.0), t(20.0));
        let v = audits(&fx, "verification");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].data["outcome"], "succeeded");
        assert_eq!(e.status(t(21.0)).recent_actions[0].state, "verified");
    }

    #[test]
    fn verification_needs_a_heartbeat_sent_after_the_result() {
        let mut e = engine();
        // The last heartbeat before the alert: still cool.
        e.on_heartbeat(hb(Some(60.0), 0, 0.0), t(0.0));
        let fx = e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0));
        let throttle = commands(&fx).remove(0);
        let mut r = result(&throttle, ResultStatus::Succeeded);
        r.timestamp = t(2.0);
        let fx = e.on_result(r, t(2.0));
        assert!(
            audits(&fx, "verification").is_empty(),
            "60 °C was read before the alert"
        );
        // Sent before the result, delivered after it: no proof either.
        let fx = e.on_heartbeat(hb(Some(60.0), 0, 1.5), t(2.5));
        assert!(audits(&fx, "verification").is_empty());
        let fx = e.on_heartbeat(hb(Some(88.0), 50, 3.0), t(3.0));
        assert!(audits(&fx, "verification").is_empty(), "still hot");
        let fx = e.tick(t(122.5));
        assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
        assert_eq!(
            e.breakers
                .failures(&BreakerKey::new("nova", "thermal:cpu", "throttle_50")),
            1
        );
    }

    #[test]
    fn failed_verification_counts_and_escalates() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
        let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
        let throttle = commands(&fx).remove(0);
        e.on_result(result(&throttle, ResultStatus::Succeeded), t(1.0));
        e.on_heartbeat(hb(Some(88.0), 50, 100.0), t(100.0));
        assert!(e.tick(t(100.0)).is_empty());
        let fx = e.tick(t(121.5));
        let v = audits(&fx, "verification");
        assert_eq!(v[0].data["outcome"], "failed");
        let key = BreakerKey::new("nova", "thermal:cpu", "throttle_50");
        assert_eq!(e.breakers.failures(&key), 1);
        let esc = alerts(&fx);
        assert_eq!(esc.len(), 1);
        assert_eq!(esc[0].severity, Severity::Emergency);
        let fx = e.on_alert(esc[0].clone(), t(122.0));
        let names: Vec<String> = commands(&fx).into_iter().map(|c| c.action_type).collect();
        assert_eq!(names, ["shutdown_non_essential", "failover"]);
    }

    #[test]
    fn breaker_opens_after_five_failures_and_half_opens() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(76.0), 0, 0.0), t(0.0));
        for i in 0..5 {
            let fx = e.on_alert(
                alert(Severity::Warning, 76.0 + f64::from(i), f64::from(i)),
                t(f64::from(i)),
            );
            let cmd = commands(&fx).remove(0);
            let fx = e.on_result(result(&cmd, ResultStatus::Failed), t(f64::from(i) + 0.5));
            if i == 4 {
                assert_eq!(audits(&fx, "breaker").len(), 1);
                assert_eq!(alerts(&fx)[0].kind, AlertKind::Circuit);
            }
        }
        let fx = e.on_alert(alert(Severity::Warning, 80.0, 10.0), t(10.0));
        assert!(commands(&fx).is_empty());
        assert_eq!(audits(&fx, "skipped")[0].data["reason"], "circuit_open");
        assert_eq!(e.status(t(10.0)).open_circuits.len(), 1);
        // After the reset timeout: one trial.
        let fx = e.on_alert(alert(Severity::Warning, 81.0, 70.0), t(70.0));
        let trial = commands(&fx).remove(0);
        e.on_heartbeat(hb(Some(70.0), 10, 71.0), t(71.0));
        e.on_result(result(&trial, ResultStatus::Succeeded), t(71.0));
        assert!(
            e.status(t(72.0)).open_circuits.is_empty(),
            "trial success closes it"
        );
    }

    #[test]
    fn offline_within_timeout_and_back() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
        assert!(e.tick(t(29.9)).is_empty());
        let fx = e.tick(t(30.3));
        let a = alerts(&fx);
        assert_eq!(a[0].kind, AlertKind::HeartbeatMissing);
        assert_eq!(a[0].severity, Severity::Critical);
        assert_eq!(e.status(t(31.0)).nodes[0].status, "offline");
        assert!(e.tick(t(40.0)).is_empty(), "reported once");
        let fx = e.on_heartbeat(hb(Some(50.0), 0, 50.0), t(50.0));
        assert_eq!(alerts(&fx)[0].severity, Severity::Normal);
    }

    #[test]
    fn cool_node_gets_reset_throttle_after_clear_for() {
        let mut e = engine();
        assert!(commands(&e.on_heartbeat(hb(Some(70.0), 50, 0.0), t(0.0))).is_empty());
        assert!(
            commands(&e.on_heartbeat(hb(Some(60.0), 50, 1.0), t(1.0))).is_empty(),
            "72 is the clear level"
        );
        assert!(commands(&e.on_heartbeat(hb(Some(60.0), 50, 20.0), t(20.0))).is_empty());
        let fx = e.on_heartbeat(hb(Some(60.0), 50, 31.0), t(31.0));
        let cmds = commands(&fx);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].action_type, "reset_throttle");
        assert!(
            commands(&e.on_heartbeat(hb(Some(60.0), 50, 40.0), t(40.0))).is_empty(),
            "not while pending"
        );
    }

    /// The seed config: warning 75, hysteresis 3 (clear below 72),
    /// clear_for 30 s.
    fn reset_commands(fx: &[Effect]) -> usize {
        let cmds = commands(fx);
        assert!(
            cmds.iter().all(|c| c.action_type == "reset_throttle"),
            "{cmds:?}"
        );
        cmds.len()
    }

    /// Exactly at the clear level (72.0) the agent still reports warning,
    /// so the coordinator must not lift the throttle either.
    #[test]
    fn the_clear_level_itself_is_not_cool() {
        let mut e = engine();
        for i in 0..=10 {
            let at = f64::from(i) * 10.0;
            let fx = e.on_heartbeat(hb(Some(72.0), 50, at), t(at));
            assert_eq!(reset_commands(&fx), 0, "72.0 °C at {at} s is not cool");
        }
        e.on_heartbeat(hb(Some(71.9), 50, 101.0), t(101.0));
        let fx = e.on_heartbeat(hb(Some(71.9), 50, 131.0), t(131.0));
        assert_eq!(reset_commands(&fx), 1);
    }

    #[test]
    fn throttled_node_inside_the_hysteresis_band_keeps_its_throttle() {
        let mut e = engine();
        // 73.5 °C: below warning (75), above the clear level (72), for 400 s,
        // thirteen times clear_for.
        for i in 0..=40 {
            let at = f64::from(i) * 10.0;
            let fx = e.on_heartbeat(hb(Some(73.5), 50, at), t(at));
            assert_eq!(reset_commands(&fx), 0, "73.5 °C at {at} s is not cool");
            assert!(audits(&fx, "decision").is_empty(), "{fx:?}");
        }
        // Below the clear level: reset after clear_for, exactly once.
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 401.0), t(401.0))),
            0
        );
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 420.0), t(420.0))),
            0
        );
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 430.9), t(430.9))),
            0
        );
        let fx = e.on_heartbeat(hb(Some(71.0), 50, 431.0), t(431.0));
        let cmds = commands(&fx);
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert_eq!(cmds[0].action_type, "reset_throttle");
        assert_eq!(cmds[0].cause.as_deref(), Some("recovery"));
        let decisions = audits(&fx, "decision");
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].data["actions"], json!(["reset_throttle"]));
        // Still throttled until the result: nothing more while it is pending.
        for at in [432.0, 470.0, 500.0] {
            assert_eq!(
                reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, at), t(at))),
                0
            );
        }
        e.on_result(result(&cmds[0], ResultStatus::Succeeded), t(501.0));
        // Unthrottled: nothing to reset, however long it stays cool.
        for i in 0..20 {
            let at = 502.0 + f64::from(i) * 10.0;
            assert_eq!(
                reset_commands(&e.on_heartbeat(hb(Some(60.0), 0, at), t(at))),
                0
            );
        }
    }

    #[test]
    fn a_reading_inside_the_hysteresis_band_starts_clear_for_over() {
        let mut e = engine();
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 0.0), t(0.0))),
            0
        );
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(73.5), 50, 20.0), t(20.0))),
            0
        );
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 25.0), t(25.0))),
            0
        );
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 54.9), t(54.9))),
            0,
            "cool for 29.9 s since the warm reading"
        );
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 55.0), t(55.0))),
            1
        );
    }

    #[test]
    fn a_gpu_inside_the_hysteresis_band_keeps_the_throttle() {
        let mut e = engine();
        for i in 0..=20 {
            let at = f64::from(i) * 10.0;
            let mut h = hb(Some(60.0), 50, at);
            h.gpu_temp = Some(73.5);
            assert_eq!(reset_commands(&e.on_heartbeat(h, t(at))), 0, "at {at} s");
        }
        let mut h = hb(Some(60.0), 50, 201.0);
        h.gpu_temp = Some(71.0);
        assert_eq!(reset_commands(&e.on_heartbeat(h.clone(), t(201.0))), 0);
        assert_eq!(reset_commands(&e.on_heartbeat(h, t(231.0))), 1);
    }

    #[test]
    fn snapshot_keeps_breakers_verifications_and_nodes() {
        let mut e = engine();
        e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
        let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
        let throttle = commands(&fx).remove(0);
        e.on_result(result(&throttle, ResultStatus::Succeeded), t(1.0));
        for i in 0..5 {
            e.breakers.record_failure(
                &BreakerKey::new("nova", "thermal:cpu", "redistribute"),
                t(f64::from(i)),
            );
        }
        let text = serde_json::to_string(&e.snapshot()).unwrap();

        let mut restarted = engine();
        restarted.restore(serde_json::from_str(&text).unwrap(), t(50.0));
        let s = restarted.status(t(50.0));
        assert_eq!(s.open_circuits.len(), 1);
        assert_eq!(s.open_alerts.len(), 1);
        assert_eq!(s.nodes[0].name, "nova");
        // The restored node is reported offline if it never reports again.
        let fx = restarted.tick(t(81.0));
        assert!(alerts(&fx)
            .iter()
            .any(|a| a.kind == AlertKind::HeartbeatMissing));
        // The verification carries on: no heartbeat below 85 by its deadline -> failure.
        let fx = restarted.tick(t(121.5));
        assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
    }

    #[test]
    fn storage_action_that_freed_nothing_is_a_failure() {
        let mut e = engine();
        let mut a = alert(Severity::Warning, 85.0, 0.0);
        a.kind = AlertKind::Storage;
        a.details = json!({"sensor": "/data", "percent": 85.0})
            .as_object()
            .unwrap()
            .clone();
        a.alert_id = "storage-1".into();
        let fx = e.on_alert(a, t(0.0));
        let cmd = commands(&fx).remove(0);
        assert_eq!(cmd.action_type, "cleanup_temp");
        assert_eq!(cmd.problem.as_deref(), Some("storage:/data"));
        let mut r = result(&cmd, ResultStatus::Succeeded);
        r.details.insert("bytes_freed".into(), json!(0));
        let fx = e.on_result(r, t(1.0));
        assert_eq!(
            audits(&fx, "verification")[0].data["reason"],
            "freed_nothing"
        );
        assert_eq!(
            e.breakers
                .failures(&BreakerKey::new("nova", "storage:/data", "cleanup_temp")),
            1
        );
    }

    #[test]
    fn dry_run_decides_and_audits_but_sends_nothing() {
        let cfg = Config {
            dry_run: true,
            ..seed_config()
        };
        let mut e = Engine::new(cfg, Counters::default(), "test");
        let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
        assert!(commands(&fx).is_empty());
        assert_eq!(audits(&fx, "skipped").len(), 2);
        assert_eq!(audits(&fx, "decision").len(), 1);
    }

    #[test]
    fn rate_limit_per_node() {
        let mut cfg = seed_config();
        cfg.coordinator.max_actions_per_node_per_minute = 2;
        let mut e = Engine::new(cfg, Counters::default(), "test");
        let fx = e.on_alert(alert(Severity::Emergency, 99.0, 0.0), t(0.0));
        assert_eq!(commands(&fx).len(), 2);
        let fx = e.on_alert(alert(Severity::Critical, 90.0, 1.0), t(1.0));
        assert!(commands(&fx).is_empty());
        assert!(audits(&fx, "skipped")
            .iter()
            .all(|a| a.data["reason"] == "rate_limited"));
    }

    fn node(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    /// A mesh healer heartbeat: `levels` of interfaces/peers, and the peer
    /// nodes it watches.
    fn mesh_hb(n: &str, at: f64, levels: Value) -> Heartbeat {
        Heartbeat {
            agent_id: format!("mesh-healer-{n}"),
            agent_type: "mesh_healer".into(),
            node: node(n),
            timestamp: t(at),
            cpu_temp: None,
            gpu_temp: None,
            storage_percent: None,
            interval_seconds: Some(10.0),
            throttle_level: None,
            metadata: json!({"mesh": levels}).as_object().unwrap().clone(),
        }
    }

    fn mesh_alert(n: &str, severity: Severity, details: Value, at: f64) -> Alert {
        let mut a = Alert {
            alert_id: String::new(),
            agent_id: format!("mesh-healer-{n}"),
            kind: AlertKind::Mesh,
            severity,
            node: node(n),
            message: format!("mesh {details}"),
            details: details.as_object().unwrap().clone(),
            timestamp: t(at),
        };
        a.ensure_id();
        a
    }

    fn tunnel_down(n: &str, at: f64) -> Alert {
        mesh_alert(
            n,
            Severity::Critical,
            json!({"event": "tunnel_down", "sensor": "wg0"}),
            at,
        )
    }

    fn unreachable(n: &str, peer: &str, at: f64) -> Alert {
        mesh_alert(
            n,
            Severity::Critical,
            json!({"event": "peer_unreachable", "sensor": peer, "peer_node": peer}),
            at,
        )
    }

    fn result_on(cmd: &Command, status: ResultStatus, details: Value) -> CommandResult {
        CommandResult {
            node: cmd.node.clone().unwrap(),
            details: details.as_object().cloned().unwrap_or_default(),
            ..result(cmd, status)
        }
    }

    fn names(fx: &[Effect]) -> Vec<String> {
        commands(fx).into_iter().map(|c| c.action_type).collect()
    }

    #[test]
    fn mesh_actions_are_tried_one_at_a_time() {
        let mut e = engine();
        e.on_heartbeat(
            mesh_hb("nova", 0.0, json!({"interfaces": {"wg0": {"level": 2}}})),
            t(0.0),
        );
        let fx = e.on_alert(tunnel_down("nova", 0.0), t(0.0));
        assert_eq!(names(&fx), ["restart_wireguard"], "not both at once");
        let restart = commands(&fx).remove(0);
        assert_eq!(restart.problem.as_deref(), Some("mesh:wg0"));
        // A reminder while it is being healed starts nothing new.
        let fx = e.on_alert(tunnel_down("nova", 5.0), t(5.0));
        assert!(commands(&fx).is_empty());
        assert_eq!(audits(&fx, "skipped")[0].data["reason"], "in_progress");
        // The restart fails (a corrupt config): next step.
        let fx = e.on_result(result_on(&restart, ResultStatus::Failed, json!({})), t(6.0));
        assert_eq!(names(&fx), ["regenerate_config"]);
        let regen = commands(&fx).remove(0);
        let fx = e.on_result(
            result_on(&regen, ResultStatus::Succeeded, json!({})),
            t(8.0),
        );
        assert!(
            audits(&fx, "verification").is_empty(),
            "waits for the handshake"
        );
        let fx = e.on_heartbeat(
            mesh_hb("nova", 9.0, json!({"interfaces": {"wg0": {"level": 1}}})),
            t(9.0),
        );
        assert!(
            audits(&fx, "verification").is_empty(),
            "up but stale is not healed"
        );
        let fx = e.on_heartbeat(
            mesh_hb("nova", 10.0, json!({"interfaces": {"wg0": {"level": 0}}})),
            t(10.0),
        );
        let v = audits(&fx, "verification");
        assert_eq!(v[0].data["outcome"], "succeeded");
        assert_eq!(v[0].data["metric"], "mesh_level");
        assert!(e.ladders.is_empty());
        assert_eq!(
            e.breakers
                .failures(&BreakerKey::new("nova", "mesh:wg0", "restart_wireguard")),
            1
        );
    }

    #[test]
    fn mesh_fix_that_does_not_verify_moves_on_then_escalates() {
        let mut e = engine();
        e.on_heartbeat(
            mesh_hb("nova", 0.0, json!({"interfaces": {"wg0": {"level": 2}}})),
            t(0.0),
        );
        let restart = commands(&e.on_alert(tunnel_down("nova", 0.0), t(0.0))).remove(0);
        e.on_result(
            result_on(&restart, ResultStatus::Succeeded, json!({})),
            t(1.0),
        );
        e.on_heartbeat(
            mesh_hb("nova", 121.0, json!({"interfaces": {"wg0": {"level": 1}}})),
            t(121.0),
        );
        let fx = e.tick(t(122.0));
        assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
        assert_eq!(names(&fx), ["regenerate_config"]);
        assert!(alerts(&fx).is_empty(), "no escalation while steps are left");
        let regen = commands(&fx).remove(0);
        e.on_result(result_on(&regen, ResultStatus::Failed, json!({})), t(123.0));
        let fx = e.tick(t(124.0));
        assert!(fx.is_empty());
        // The last step failed: the ladder is exhausted and escalates.
        let esc: Vec<Alert> = {
            let mut e2 = engine();
            e2.on_heartbeat(mesh_hb("nova", 0.0, json!({})), t(0.0));
            let r = commands(&e2.on_alert(tunnel_down("nova", 0.0), t(0.0))).remove(0);
            let fx = e2.on_result(result_on(&r, ResultStatus::Failed, json!({})), t(1.0));
            let g = commands(&fx).remove(0);
            let fx = e2.on_result(result_on(&g, ResultStatus::Failed, json!({})), t(2.0));
            let esc = alerts(&fx);
            let fx = e2.on_alert(esc[0].clone(), t(3.0));
            assert!(commands(&fx).is_empty(), "no table entry for escalated");
            assert_eq!(e2.status(t(3.0)).open_alerts[0]["severity"], "emergency");
            esc
        };
        assert_eq!(esc.len(), 1);
        assert_eq!(esc[0].severity, Severity::Emergency);
        assert_eq!(esc[0].details["event"], "escalated");
        assert_eq!(esc[0].details["escalated_from"], "tunnel_down");
        assert_eq!(esc[0].problem(), "mesh:wg0");
    }

    #[test]
    fn ping_that_finds_the_peer_ends_it_otherwise_failover() {
        let mut e = engine();
        let watch = json!({"peers": {"lyra": {"level": 2, "node": "lyra"}}});
        e.on_heartbeat(mesh_hb("nova", 0.0, watch.clone()), t(0.0));
        let fx = e.on_alert(unreachable("nova", "lyra", 0.0), t(0.0));
        assert_eq!(names(&fx), ["ping_peer"]);
        let ping = commands(&fx).remove(0);
        let fx = e.on_result(
            result_on(&ping, ResultStatus::Succeeded, json!({"resolved": false})),
            t(1.0),
        );
        assert_eq!(names(&fx), ["failover_route"]);
        let fo = commands(&fx).remove(0);
        e.on_result(result_on(&fo, ResultStatus::Succeeded, json!({})), t(2.0));
        let fx = e.on_heartbeat(
            mesh_hb(
                "nova",
                3.0,
                json!({"peers": {"lyra": {"level": 0, "node": "lyra"}}}),
            ),
            t(3.0),
        );
        assert_eq!(audits(&fx, "verification")[0].data["outcome"], "succeeded");

        let mut e = engine();
        e.on_heartbeat(mesh_hb("nova", 0.0, watch), t(0.0));
        let ping = commands(&e.on_alert(unreachable("nova", "lyra", 0.0), t(0.0))).remove(0);
        let fx = e.on_result(
            result_on(&ping, ResultStatus::Succeeded, json!({"resolved": true})),
            t(1.0),
        );
        assert!(commands(&fx).is_empty());
        assert_eq!(audits(&fx, "decision")[0].data["reason"], "resolved");
    }

    #[test]
    fn a_peer_down_from_every_node_is_a_node_problem() {
        let mut e = engine();
        let watches_c = json!({"peers": {"c": {"level": 2, "node": "c"}}});
        e.on_heartbeat(mesh_hb("a", 0.0, watches_c.clone()), t(0.0));
        e.on_heartbeat(mesh_hb("b", 0.0, watches_c), t(0.0));
        e.on_heartbeat(mesh_hb("c", 0.0, json!({})), t(0.0));
        // Only a sees c down so far: a tunnel problem, healed on a.
        let fx = e.on_alert(unreachable("a", "c", 0.0), t(0.0));
        let ping_a = commands(&fx).remove(0);
        assert_eq!(ping_a.action_type, "ping_peer");
        // b sees it down too: c itself is the problem.
        let fx = e.on_alert(unreachable("b", "c", 1.0), t(1.0));
        assert!(commands(&fx).is_empty(), "no tunnel touched");
        let skipped = audits(&fx, "skipped");
        assert!(skipped.iter().all(|s| s.data["reason"] == "peer_node_down"));
        assert!(
            audits(&fx, "decision")
                .iter()
                .any(|d| d.data["reason"] == "peer_node_down"),
            "a's healing stopped"
        );
        let node_alert = alerts(&fx).remove(0);
        assert_eq!(node_alert.node.as_str(), "c");
        assert_eq!(node_alert.details["event"], "node_unreachable");
        assert_eq!(node_alert.problem(), "mesh:node");
        let fx = e.on_alert(node_alert, t(1.5));
        assert!(commands(&fx).is_empty());
        // a's ping comes back: no failover follows.
        let fx = e.on_result(
            result_on(&ping_a, ResultStatus::Succeeded, json!({"resolved": false})),
            t(2.0),
        );
        assert!(commands(&fx).is_empty(), "{:?}", names(&fx));
        // a reaches c again: c's node problem clears.
        let mut back = unreachable("a", "c", 3.0);
        back.severity = Severity::Normal;
        back.alert_id = "back".into();
        let fx = e.on_alert(back, t(3.0));
        let clear = alerts(&fx).remove(0);
        assert_eq!(
            (clear.node.as_str(), clear.severity),
            ("c", Severity::Normal)
        );
    }

    #[test]
    fn a_peer_whose_node_is_offline_is_not_a_tunnel_problem() {
        let mut e = engine();
        e.on_heartbeat(mesh_hb("c", 0.0, json!({})), t(0.0));
        e.on_heartbeat(
            mesh_hb(
                "a",
                25.0,
                json!({"peers": {"c": {"node": "c", "level": 2}}}),
            ),
            t(25.0),
        );
        e.tick(t(31.0));
        let fx = e.on_alert(unreachable("a", "c", 31.0), t(31.0));
        assert!(commands(&fx).is_empty());
        assert_eq!(audits(&fx, "skipped")[0].data["reason"], "peer_node_down");
        assert!(alerts(&fx).is_empty(), "the offline alert already says it");
    }

    #[test]
    fn mesh_ladder_survives_a_restart() {
        let mut e = engine();
        e.on_heartbeat(mesh_hb("nova", 0.0, json!({})), t(0.0));
        let restart = commands(&e.on_alert(tunnel_down("nova", 0.0), t(0.0))).remove(0);
        let text = serde_json::to_string(&e.snapshot()).unwrap();
        let mut again = engine();
        again.restore(serde_json::from_str(&text).unwrap(), t(1.0));
        let fx = again.on_result(result_on(&restart, ResultStatus::Failed, json!({})), t(2.0));
        assert_eq!(names(&fx), ["regenerate_config"]);
        // Snapshots from before ladders existed still load.
        let old: EngineSnapshot = serde_json::from_str(
            r#"{"breakers":[],"pending":[],"verifications":[],"open_alerts":[],"recent":[],"nodes":[]}"#,
        )
        .unwrap();
        engine().restore(old, t(0.0));
    }
}
