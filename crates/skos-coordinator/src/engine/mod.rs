//! The coordinator's decisions, as a synchronous state machine.
//!
//! Inputs are already-decoded messages and the current time; outputs are
//! [`Effect`]s, which the service carries out in order. Nothing here does
//! I/O, so every safety rule is unit-tested directly.
//!
//! This file is the flow every problem goes through: an alert is recorded
//! and decided from its healing table, each action passes the gates
//! (dry-run, node offline, same action in progress, circuit breaker, rate
//! limit) and is sent, its result is judged, a fix is verified on later
//! heartbeats (only a fall after it took effect, held: `credit`) or
//! escalated, a flapping problem is reported once and not acted on at each
//! swing (`flap`), and all of it is audited. A result counts only
//! from the node its command was sent to; a command without a result by
//! its deadline plus `coordinator.result_grace_seconds` is closed as
//! `no_result`. Each node's clock offset is measured from its heartbeats,
//! and commands carry their timestamp and deadline in the node's clock.
//! Ids of what a coordinator decides from heartbeats and timers derive from
//! the agents' timestamps, never from the coordinator's clock, so two
//! coordinators deciding the same thing give it the same id (JetStream
//! keeps one). What is particular to
//! a kind of problem (how its actions are carried out, what verifies them,
//! what happens on a heartbeat, a clear or a tick) lives in `kinds`, one
//! module per kind. State that survives a restart is in `state`.

use skos_core::counters::Counter;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use skos_core::recent::RecentIds;

use chrono::Duration;
use serde_json::{json, Value};
use skos_core::breaker::{Admission, BreakerKey, Breakers, Transition};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{
    Alert, AlertKind, AuditEntry, AuditEvent, Command, CommandResult, Heartbeat, ResultStatus,
    Severity,
};
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;
use skos_core::{catalogue, policy};

#[cfg(test)]
use crate::status::NodeHealth;
use crate::status::{ActionRecord, ActionState, Leadership};

mod control;
mod credit;
mod flap;
mod forget;
mod index;
mod kinds;
mod ledger;
mod originals;
mod placement;
mod quota;
mod silence;
mod state;
mod status;
mod unanswered;

pub use forget::ForgetError;
use index::{Ladders, OpenAlerts, Pendings, PerNode, Verifications, Watchers};
use kinds::Recovery;
pub use ledger::{LedgerEntry, Outcome as LedgerOutcome, Record as LedgerRecord};
pub use placement::{
    Approval, ApprovalError, Drain, Failback, Fleet, MinHealthy, Placement, Reason as PlanReason,
    WorkloadDef,
};
pub use state::EngineSnapshot;
use state::{
    AgentType, LastHeartbeat, NodeState, Pending, ResetAttempt, ResetRetry, Verification,
    HANDLED_WINDOW,
};

const ACTOR: &str = "coordinator";

/// Why an action was not sent: the `reason` of a `skipped` audit record
/// and the last part of its `actions.skipped.<reason>` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SkipReason {
    /// `dry_run: true`: decided and audited, never sent.
    DryRun,
    NodeOffline,
    /// The same action for the same problem is being carried out or
    /// verified (or, for a ladder, the problem is being healed).
    InProgress,
    CircuitOpen,
    RateLimited,
    /// A mesh problem that is really its peer node's problem.
    PeerNodeDown,
    /// Fewer nodes are healthy than `failover.min_healthy`: destructive
    /// actions are frozen.
    FleetDegraded,
    /// A workload plan (`redistribute`, `failover`, ...) with no
    /// workloads configured.
    NoWorkloads,
    /// The plan waits for a person's `skos approve`.
    AwaitingApproval,
    /// A person denied this plan for this alert.
    Denied,
    /// An operator's silence or maintenance window covers it.
    Silenced,
}

impl SkipReason {
    const fn as_str(self) -> &'static str {
        match self {
            SkipReason::DryRun => "dry_run",
            SkipReason::NodeOffline => "node_offline",
            SkipReason::InProgress => "in_progress",
            SkipReason::CircuitOpen => "circuit_open",
            SkipReason::RateLimited => "rate_limited",
            SkipReason::PeerNodeDown => "peer_node_down",
            SkipReason::FleetDegraded => "fleet_degraded",
            SkipReason::NoWorkloads => "no_workloads",
            SkipReason::AwaitingApproval => "awaiting_approval",
            SkipReason::Denied => "denied",
            SkipReason::Silenced => "silenced",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a command to a node's agent.
    Command(NodeName, Command),
    /// Raise an alert (offline node, escalation, open circuit); it comes
    /// back through the alert feed and is handled like any other.
    Alert(Alert),
    Audit(AuditEntry),
}

/// The coordinator's state and decisions (see the module documentation).
///
/// What a message touches is found by its node or its action id: a
/// message costs O(log n) in the fleet plus its node's own entries, never
/// a walk over every node or every open alert (see `index`).
pub struct Engine {
    cfg: Config,
    counters: Counters,
    /// Every node's state, boxed: the map's nodes hold only pointers, so
    /// its slack (a `BTreeMap` node is often half full) costs a few bytes
    /// per node, not a few hundred.
    nodes: BTreeMap<NodeName, Box<NodeState>>,
    /// Open alerts by (node, problem).
    open_alerts: OpenAlerts,
    breakers: Breakers,
    /// Commands awaiting their result, by node and action id.
    pending: Pendings,
    /// Fixes awaiting a heartbeat that shows they worked, by node.
    verifications: Verifications,
    recent: VecDeque<ActionRecord>,
    handled: RecentIds,
    sent_times: BTreeMap<NodeName, VecDeque<Timestamp>>,
    mode: String,
    /// Mesh problems being healed step by step, by (node, problem).
    ladders: Ladders,
    /// Which nodes have each node as a mesh peer: the config's
    /// `mesh.topology`, never what a node's heartbeat says.
    watchers: Watchers,
    /// Agent type names, one copy shared by all nodes (see
    /// [`Engine::agent_type`]).
    agent_types: BTreeSet<AgentType>,
    /// The leader's term, stamped on every command (its fencing token);
    /// `None` for a coordinator that elects no leader (embedded mode).
    term: Option<u64>,
    /// Alerts per node per minute (fairness).
    quotas: quota::Quotas,
    /// Problems whose actions were skipped because their node was
    /// offline: decided again when it is back.
    offline_skipped: PerNode<ProblemKey, ()>,
    /// Throttle resets to send again (their last try failed, expired or
    /// got no result), by node.
    reset_retries: BTreeMap<NodeName, ResetRetry>,
    /// Readings of the commands waiting for a result (see `credit`).
    watches: credit::Watches,
    /// Problems' recent state changes, and which flap (see `flap`).
    flaps: flap::Flaps,
    /// Who leads, shown by `skos status`.
    leader: Option<Leadership>,
    /// Where each workload runs, and the plans moving them (see
    /// `placement`).
    placement: placement::Placements,
    /// What each action did for each problem on each node (see `ledger`).
    ledger: ledger::Ledger,
    /// Operators' silences and maintenance windows, by node (see `silence`).
    silences: silence::Silences,
    /// Commands closed as `no_result` whose late answer is still news.
    unanswered: unanswered::Unanswereds,
}

/// Why a result was refused: it came from another node than the one its
/// command was sent to (the `reason` of its `rejected` audit record).
const FOREIGN_NODE: &str = "foreign_node";

/// Whether `result` is an agent refusing a step because another start or
/// stop of the same workload runs there (`details.reason: busy`): no
/// verdict on the step, so no breaker failure.
fn is_busy(result: &CommandResult) -> bool {
    result.status == ResultStatus::Rejected
        && result.details.get("reason").and_then(Value::as_str) == Some("busy")
}

/// Whether `result` is an agent refusing a command as of a term older than
/// the highest it has seen (`details.reason: stale_term`): no verdict on
/// the action, which it never ran (the leader leads again in a higher term,
/// and the problem is decided again), so no breaker failure.
pub(crate) fn is_stale_term(result: &CommandResult) -> bool {
    result.status == ResultStatus::Rejected
        && result.details.get("reason").and_then(Value::as_str)
            == Some(skos_core::protocol::REASON_STALE_TERM)
}

/// Whether `result` is an agent refusing an action id it already executed
/// (`details.reason: replay`; without a reason, only the exact
/// [`REPLAY_MESSAGE`]): no verdict on the command, which stays open. Never
/// judged by words in the message, which may name anything (a workload
/// called `replay-worker`) and would keep a real answer from closing its
/// command.
///
/// [`REPLAY_MESSAGE`]: skos_core::protocol::REPLAY_MESSAGE
fn is_replay(result: &CommandResult) -> bool {
    use skos_core::protocol::{REASON_REPLAY, REPLAY_MESSAGE};
    if result.status != ResultStatus::Rejected {
        return false;
    }
    match result.details.get("reason") {
        Some(reason) => reason.as_str() == Some(REASON_REPLAY),
        None => result.message == REPLAY_MESSAGE,
    }
}

/// Whether `result` is an agent refusing a command that was not the
/// coordinator's to judge by: an action id it already executed
/// ([`is_replay`]), or a message under that id it could not trust or read
/// (`details.reason: untrusted | malformed`: someone else's copy, whose
/// refusal says nothing of the real command). It closes nothing: the
/// command stays open for its real answer, or until `no_result`.
fn closes_nothing(result: &CommandResult) -> bool {
    is_replay(result) || refused_copy(result).is_some()
}

/// The reason of an agent's refusal of a command it could not trust or
/// read (`untrusted`, `malformed`); `None` for any other result.
fn refused_copy(result: &CommandResult) -> Option<&'static str> {
    use skos_core::protocol::{REASON_MALFORMED, REASON_UNTRUSTED};
    if result.status != ResultStatus::Rejected {
        return None;
    }
    match result.details.get("reason").and_then(Value::as_str) {
        Some(REASON_UNTRUSTED) => Some(REASON_UNTRUSTED),
        Some(REASON_MALFORMED) => Some(REASON_MALFORMED),
        _ => None,
    }
}

/// Whether `result` is an agent answering again, with its recorded outcome,
/// a command it already executed (`details.replayed: true`): the real
/// outcome, which closes a command still open (its first answer was lost),
/// but a replay when nothing is open.
fn is_replayed_answer(result: &CommandResult) -> bool {
    result.details.get("replayed").and_then(Value::as_bool) == Some(true)
}

/// The id of an alert the coordinator raises about `node` from its
/// heartbeats (offline, back, clock skew): the node, the alert's kind and
/// severity, and the agent's own timestamp of the last heartbeat seen.
/// Every coordinator sees the same heartbeats, so every one gives the same
/// alert the same id, whenever each received them.
fn heartbeat_alert_id(
    node: &NodeName,
    kind: &AlertKind,
    severity: Severity,
    agent_at: Timestamp,
) -> String {
    format!(
        "coord-{node}-{}-{}-{}",
        kind.as_str(),
        severity.as_str(),
        agent_at.timestamp_millis()
    )
}

fn audit(
    event: AuditEvent,
    now: Timestamp,
    node: Option<&NodeName>,
    summary: impl Into<String>,
    data: Value,
) -> Effect {
    Effect::Audit(AuditEntry::new(event, now, node, ACTOR, summary, data))
}

impl Engine {
    pub fn new(cfg: Config, counters: Counters, mode: &str) -> Self {
        let witnesses = cfg.mesh.witnesses();
        let fleet = Fleet::from_config(&cfg);
        Self {
            breakers: Breakers::new(cfg.circuit_breaker),
            cfg,
            counters,
            nodes: BTreeMap::new(),
            open_alerts: OpenAlerts::default(),
            pending: Pendings::default(),
            verifications: Verifications::default(),
            recent: VecDeque::new(),
            handled: RecentIds::new(HANDLED_WINDOW),
            sent_times: BTreeMap::new(),
            mode: mode.to_string(),
            ladders: Ladders::default(),
            watchers: Watchers::new(witnesses),
            agent_types: BTreeSet::new(),
            term: None,
            quotas: quota::Quotas::default(),
            offline_skipped: PerNode::default(),
            reset_retries: BTreeMap::new(),
            watches: credit::Watches::default(),
            flaps: flap::Flaps::default(),
            leader: None,
            placement: placement::Placements::new(fleet),
            ledger: ledger::Ledger::default(),
            silences: silence::Silences::new(),
            unanswered: unanswered::Unanswereds::default(),
        }
    }

    /// The fleet's workloads and failover settings: every workload is
    /// placed at its home until a saved placement is restored.
    pub fn set_fleet(&mut self, fleet: Fleet) {
        self.placement = placement::Placements::new(fleet);
    }

    /// Who leads (this coordinator, when it answers status).
    pub fn set_leader(&mut self, leader: Option<Leadership>) {
        self.leader = leader;
    }

    /// Stamp every later command with `term` (see [`Command::term`]).
    pub fn set_term(&mut self, term: Option<u64>) {
        self.term = term;
    }

    /// The term commands are stamped with.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Remember an alert as handled (also used to reload the set from the
    /// audit trail after a restart).
    pub fn mark_handled(&mut self, alert_id: &str) -> bool {
        self.handled.insert(alert_id)
    }

    /// Undo [`Engine::mark_handled`] for an alert whose effects could not
    /// be carried out, so its redelivery is handled.
    pub fn forget_handled(&mut self, alert_id: &str) {
        self.handled.remove(alert_id);
    }

    pub fn on_heartbeat(&mut self, hb: Heartbeat, now: Timestamp) -> Vec<Effect> {
        self.counters.inc(Counter::HeartbeatsReceived);
        let mut out = Vec::new();
        let node = hb.node.clone();
        let sent = hb.timestamp;
        let kind = self.agent_type(&hb.agent_type);
        let kept = LastHeartbeat::of(&hb);
        // One search of the fleet's map per heartbeat (its keys share
        // long prefixes: each search compares names a dozen times).
        let (state, first, was_offline) = match self.nodes.entry(node.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => {
                let state = e.into_mut();
                let was_offline = state.offline;
                (state, false, was_offline)
            }
            std::collections::btree_map::Entry::Vacant(e) => (
                e.insert(Box::new(NodeState::new(&hb, kind.clone(), now))),
                true,
                false,
            ),
        };
        state.last_seen = now;
        state.offline = false;
        state.restored_offline = false;
        state.agents.record(&hb.agent_id, kind, now);
        state.measure_offset(sent, now);
        state.heartbeat = kept;
        self.keep_throttle_originals(&node, &hb, now, &mut out);
        if first {
            out.push(audit(
                AuditEvent::Node,
                now,
                Some(&node),
                format!("node {node} joined"),
                json!({"event": "joined"}),
            ));
        }
        if was_offline {
            let mut back = self.own_alert(
                &node,
                AlertKind::HeartbeatMissing,
                Severity::Normal,
                format!("node {node} is back: heartbeats resumed"),
                json!({"sensor": kinds::offline::SENSOR, kinds::offline::HEARTBEAT_AT: timefmt::format(&sent)}),
                now,
            );
            back.alert_id = heartbeat_alert_id(&node, &back.kind, back.severity, sent);
            out.push(Effect::Alert(back));
            self.retry_skipped_offline(&node, now, &mut out);
        }
        self.check_verifications(&node, now, &mut out);
        if !hb.workloads.is_empty() {
            let seen = placement::seen(&hb);
            self.placement_heartbeat(&node, &seen, sent, now, &mut out);
        }
        for kind in kinds::ALL {
            kind.on_heartbeat(self, &node, now, &mut out);
        }
        out
    }

    pub fn on_alert(&mut self, mut alert: Alert, now: Timestamp) -> Vec<Effect> {
        alert.ensure_id();
        if !self.cfg.loop_.record_command_lines {
            skos_core::chain::tree::strip_command_lines(&mut alert.details);
        }
        if !self.mark_handled(&alert.alert_id) {
            self.counters.inc(Counter::AlertsDuplicate);
            return Vec::new();
        }
        let node = alert.node.clone();
        let problem = alert.problem();
        let limit = self.cfg.coordinator.max_alerts_per_node_per_minute;
        if !self.quotas.admit(&node, &alert.alert_id, now, limit) {
            // Over the node's quota: coalesced, unless it makes its
            // problem worse than what is open, or closes it (a node said
            // back): both are still handled.
            let open = self.open_alerts.get(&node, &problem).map(|a| a.severity);
            let closes = alert.severity == Severity::Normal && open.is_some();
            if !closes && open.is_none_or(|s| alert.severity <= s) {
                self.counters.inc(Counter::AlertsCoalesced);
                return Vec::new();
            }
            self.quotas.handled_anyway(&node);
        }
        self.counters.inc(Counter::AlertsHandled);
        let mut out = vec![audit(
            AuditEvent::Alert,
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
        if kinds::offline::stale_back(&alert, self.open_alerts.get(&node, &problem)) {
            // Said back from a heartbeat before the one the open offline
            // alert followed (an earlier time away, delivered again):
            // recorded, and nothing else.
            self.counters.inc(Counter::AlertsDuplicate);
            return out;
        }
        self.note_state(&alert, now, &mut out);
        if alert.severity == Severity::Normal {
            self.open_alerts.remove(&node, &problem);
            // The last leader said it back, from a heartbeat this one
            // never got: offline no longer, and what was skipped while it
            // was away is decided again.
            if problem == kinds::offline::problem() {
                if let Some(s) = self.nodes.get_mut(&node).filter(|s| s.restored_offline) {
                    s.offline = false;
                    s.restored_offline = false;
                    self.retry_skipped_offline(&node, now, &mut out);
                }
            }
            kinds::of(&alert.kind).on_clear(self, &alert, now, &mut out);
            return out;
        }
        self.open_alerts.insert(&node, problem, alert.clone());
        self.decide(&alert, alert.severity, now, &mut out);
        out
    }

    /// Decide again the open problems of `node` whose actions were skipped
    /// while it was offline, now that it is back.
    fn retry_skipped_offline(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        for (problem, ()) in self.offline_skipped.take_of(node, |_| true) {
            if let Some(alert) = self.open_alerts.get(node, &problem).cloned() {
                self.decide(&alert, alert.severity, now, out);
            }
        }
    }

    /// Choose and send the actions for an alert at a severity.
    fn decide(&mut self, alert: &Alert, severity: Severity, now: Timestamp, out: &mut Vec<Effect>) {
        if self.flap_holds(alert, severity) {
            return;
        }
        let node = alert.node.clone();
        let problem = alert.problem();
        let mut at_level = alert.clone();
        at_level.severity = severity;
        let actions = policy::actions_for(&self.cfg, &at_level);
        let actions = self.learned(alert, severity, actions, now, out);
        out.push(audit(
            AuditEvent::Decision,
            now,
            Some(&node),
            if actions.is_empty() {
                format!("no action for {problem} at {}", severity.as_str())
            } else {
                format!("{problem} at {}: {}", severity.as_str(), actions.join(", "))
            },
            json!({"alert_id": alert.alert_id, "problem": problem, "severity": severity, "actions": actions}),
        ));
        kinds::of(&alert.kind).plan(self, alert, severity, actions, now, out);
    }

    /// Record that an action for (node, problem) was not sent, and why.
    fn skip(
        &mut self,
        (node, problem, action): (&NodeName, &ProblemKey, &str),
        reason: SkipReason,
        detail: String,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        if reason == SkipReason::NodeOffline {
            self.offline_skipped.insert(node, problem.clone(), ());
        }
        let reason = reason.as_str();
        self.counters.inc(Counter::ActionsSkipped(reason));
        out.push(audit(
            AuditEvent::Skipped,
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
        if let Some(s) = self.silenced(&node, &alert.kind, &problem, action, now) {
            let (id, detail) = (
                s.id.clone(),
                format!(
                    "silence {} by {} until {}: {}",
                    s.id,
                    s.by,
                    timefmt::format(&s.holds_until(now)),
                    s.comment
                ),
            );
            self.silence_held(&node, &id, &problem);
            self.skip(
                (&node, &problem, action),
                SkipReason::Silenced,
                detail,
                now,
                out,
            );
            if let Some(Effect::Audit(entry)) = out.last_mut() {
                entry.data["silence_id"] = json!(id);
            }
            return;
        }
        if self.cfg.dry_run {
            self.skip(
                (&node, &problem, action),
                SkipReason::DryRun,
                "dry-run mode executes nothing".into(),
                now,
                out,
            );
            return;
        }
        if self.plan_action(alert, severity, action, now, out) {
            return;
        }
        if self.nodes.get(&node).is_some_and(|n| n.offline) {
            self.skip(
                (&node, &problem, action),
                SkipReason::NodeOffline,
                "the node is offline".into(),
                now,
                out,
            );
            return;
        }
        // The node's own commands and verifications only.
        let in_progress = self
            .pending
            .of(&node)
            .any(|(_, p)| p.problem == problem && p.action == action)
            || self
                .verifications
                .of(&node)
                .any(|v| v.problem == problem && v.action == action);
        if in_progress {
            self.skip(
                (&node, &problem, action),
                SkipReason::InProgress,
                "the same action is still being carried out or verified".into(),
                now,
                out,
            );
            return;
        }
        let key = BreakerKey::new(node.as_str(), problem.as_str(), action);
        let (admission, transition) = self.breakers.admit(&key, now);
        if transition == Some(Transition::HalfOpened) {
            out.push(audit(
                AuditEvent::Breaker,
                now,
                Some(&node),
                format!("circuit {} half-open: one trial allowed", key_str(&key)),
                json!({"key": key, "state": "half_open"}),
            ));
        }
        if admission == Admission::Deny {
            self.skip(
                (&node, &problem, action),
                SkipReason::CircuitOpen,
                format!("circuit {} is open", key_str(&key)),
                now,
                out,
            );
            return;
        }
        if !self.take_rate(&node, now) {
            if admission == Admission::Trial {
                self.breakers.release_trial(&key);
            }
            self.skip(
                (&node, &problem, action),
                SkipReason::RateLimited,
                "per-node action rate limit reached".into(),
                now,
                out,
            );
            return;
        }
        // The digest of the whole alert id: alerts raised in one sensing
        // pass (CPU and GPU, two mounts) share a time and often the end of
        // their ids, and must still give distinct commands.
        let action_id = format!(
            "{node}:{}:{action}:{}:{}",
            alert.kind.as_str(),
            alert.timestamp.timestamp(),
            alert.id_digest()
        );
        let mut cmd = self.command(
            &node,
            action,
            action_id,
            Some(alert.alert_id.clone()),
            &problem,
            now,
        );
        cmd.level = credit::command_level(&self.cfg, alert, severity, action);
        let pending = Pending::new(
            node.clone(),
            problem.clone(),
            action,
            severity,
            alert.clone(),
            admission == Admission::Trial,
        );
        self.send(cmd, pending, now, out);
    }

    /// Whether one more command to `node` fits in the per-node rate limit
    /// (`max_actions_per_node_per_minute`); if it does, it is counted.
    fn take_rate(&mut self, node: &NodeName, now: Timestamp) -> bool {
        let window = Duration::seconds(60);
        let times = self.sent_times.entry(node.clone()).or_default();
        while times.front().is_some_and(|&t| now - t > window) {
            times.pop_front();
        }
        if times.len() >= self.cfg.coordinator.max_actions_per_node_per_minute as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    /// `now` in `node`'s clock: the coordinator's time plus the node's
    /// measured clock offset (none before its first heartbeat).
    fn node_time(&self, node: &NodeName, now: Timestamp) -> Timestamp {
        now + self
            .nodes
            .get(node)
            .and_then(|state| state.clock_offset())
            .unwrap_or_else(Duration::zero)
    }

    /// A command for `node`, stamped in the node's own clock: its
    /// `timestamp` is now and its `deadline` `command_deadline` later, both
    /// shifted by the node's clock offset, so an agent whose clock is
    /// ahead or behind still has the whole time budget to run it.
    fn command(
        &self,
        node: &NodeName,
        action: &str,
        action_id: String,
        cause: Option<String>,
        problem: &ProblemKey,
        now: Timestamp,
    ) -> Command {
        let local = self.node_time(node, now);
        Command {
            action_id,
            action_type: action.to_string(),
            parameters: Default::default(),
            timestamp: local,
            node: Some(node.clone()),
            deadline: Some(local + secs(self.cfg.coordinator.command_deadline)),
            cause,
            problem: Some(problem.to_string()),
            term: self.term,
            level: None,
        }
    }

    /// Send `cmd` and remember it as `pending` (stamped here with when it
    /// was sent and its deadline in the coordinator's clock). A thermal
    /// command carries the node's throttle originals (`originals`).
    fn send(
        &mut self,
        mut cmd: Command,
        mut pending: Pending,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let node = pending.node.clone();
        self.give_back_originals(&node, &mut cmd);
        let problem = pending.problem.clone();
        self.flap_acted(&node, &problem, pending.severity);
        pending.sent_at = Some(now);
        pending.deadline = Some(now + secs(self.cfg.coordinator.command_deadline));
        self.counters.inc(Counter::CommandsSent);
        out.push(audit(
            AuditEvent::Command,
            now,
            Some(&node),
            format!("sent {} to {node} for {problem}", cmd.action_type),
            json!({"command": cmd}),
        ));
        pending.command = Some(cmd.clone());
        self.ledger_attempt(&node, &problem, &cmd.action_type);
        self.pending.insert(cmd.action_id.clone(), pending);
        self.recent.push_back(ActionRecord {
            action_id: cmd.action_id.clone(),
            action_type: cmd.action_type.clone(),
            node: node.to_string(),
            problem: problem.to_string(),
            cause: cmd.cause.clone().unwrap_or_default(),
            sent_at: now,
            state: ActionState::Sent,
            message: String::new(),
        });
        while self.recent.len() > self.cfg.coordinator.recent_actions.max(1) {
            self.recent.pop_front();
        }
        out.push(Effect::Command(node, cmd));
    }

    /// The state of the recent action `action_id` sent to `node`.
    fn set_action_state(
        &mut self,
        action_id: &str,
        node: &NodeName,
        state: ActionState,
        message: &str,
    ) {
        if let Some(r) = self
            .recent
            .iter_mut()
            .rev()
            .find(|r| r.action_id == action_id && r.node == node.as_str())
        {
            r.state = state;
            r.message = message.to_string();
        }
    }

    /// A command's result. It counts only from the node the command was
    /// sent to: one from another node is refused (audited as `rejected`,
    /// counted as `results.foreign`) and touches nothing. An agent's
    /// refusal of an action id it already executed (a replay) is audited
    /// but closes nothing and is no breaker failure.
    pub fn on_result(&mut self, mut result: CommandResult, now: Timestamp) -> Vec<Effect> {
        if !self.cfg.loop_.record_command_lines {
            skos_core::chain::tree::strip_command_lines(&mut result.details);
        }
        if let Some(target) = self.foreign_target(&result) {
            return vec![self.foreign_result(&result, &target, now)];
        }
        self.count_result(&result, self.pending.contains_key(&result.action_id));
        let node = result.node.clone();
        let replay = is_replay(&result);
        let closes_nothing = closes_nothing(&result);
        let mut data = json!({"result": result});
        if replay {
            data["replay"] = json!(true);
        }
        let mut out = vec![audit(
            AuditEvent::Result,
            now,
            Some(&node),
            format!(
                "{} on {node}: {} {}",
                result.action_type,
                result.status.as_str(),
                result.message
            ),
            data,
        )];
        if closes_nothing {
            return out;
        }
        if self.result_is_news(&result) {
            self.unanswered.answered(&node, &result.action_id);
            self.set_action_state(
                &result.action_id,
                &node,
                result.status.into(),
                &result.message,
            );
        }
        let Some(p) = self.pending.remove(&result.action_id) else {
            // A reset, or a result for a command sent before a restart.
            return out;
        };
        let key = BreakerKey::new(p.node.as_str(), p.problem.as_str(), &p.action);
        let freed = result.details.get("bytes_freed").and_then(Value::as_u64);
        match result.status {
            ResultStatus::Succeeded if catalogue::frees_space(&p.action) && freed == Some(0) => {
                self.counters.inc(Counter::ActionsFreedNothing);
                out.push(audit(
            AuditEvent::Verification,
                    now,
                    Some(&node),
                    format!("{} on {node} freed nothing", p.action),
                    json!({"action_id": result.action_id, "action": p.action, "outcome": "failed", "reason": "freed_nothing"}),
                ));
                self.set_action_state(
                    &result.action_id,
                    &node,
                    ActionState::NotVerified,
                    "freed nothing",
                );
                self.ledger_outcome(
                    (&p.node, &p.problem, &p.action),
                    ledger::Outcome::Failed,
                    None,
                    now,
                );
                self.failure(&key, now, &mut out);
            }
            ResultStatus::Succeeded => match credit::recovery_of(&self.cfg, &p) {
                Some(Recovery { metric, below }) => {
                    let v = Verification {
                        action_id: result.action_id.clone(),
                        node: p.node.clone(),
                        problem: p.problem.clone(),
                        action: p.action.clone(),
                        metric: metric.to_string(),
                        below,
                        deadline: now + secs(self.cfg.coordinator.verify_within),
                        alert: p.alert.clone(),
                        after: Some(result.timestamp),
                        descent: credit::Descent::default(),
                    };
                    self.start_verification(v, now, &mut out);
                }
                _ => {
                    let fault = Some(p.alert.timestamp);
                    self.ledger_outcome(
                        (&p.node, &p.problem, &p.action),
                        ledger::Outcome::Verified,
                        fault,
                        now,
                    );
                    if let Some(t) = self.breakers.record_success(&key) {
                        self.breaker_transition(&key, t, now, &mut out);
                    }
                }
            },
            ResultStatus::Rejected if is_busy(&result) || is_stale_term(&result) => {
                if p.trial {
                    self.breakers.release_trial(&key);
                }
            }
            ResultStatus::Failed | ResultStatus::Expired | ResultStatus::Rejected => {
                self.ledger_outcome(
                    (&p.node, &p.problem, &p.action),
                    ledger::Outcome::Failed,
                    None,
                    now,
                );
                self.failure(&key, now, &mut out);
            }
            ResultStatus::Unsupported => {
                // Not a failure of the fix: nobody implements it here.
                if p.trial {
                    self.breakers.release_trial(&key);
                }
            }
            ResultStatus::NotNeeded => {
                // The problem was gone when the command was to run: a
                // false remediation avoided. Neither a failure nor a
                // success of the fix, which never ran.
                self.counters.inc(Counter::RemediationsAvoided);
                if p.trial {
                    self.breakers.release_trial(&key);
                }
                out.push(audit(
                    AuditEvent::Verification,
                    now,
                    Some(&node),
                    format!(
                        "{} on {node} not carried out: {} was gone ({})",
                        p.action, p.problem, result.message
                    ),
                    json!({"action_id": result.action_id, "action": p.action, "problem": p.problem, "outcome": "not_needed", "reason": "avoided", "level": result.details.get("level"), "reading": result.details.get("reading")}),
                ));
                self.ledger_outcome(
                    (&p.node, &p.problem, &p.action),
                    ledger::Outcome::NotNeeded,
                    None,
                    now,
                );
            }
        }
        if placement::is_step(&p.action) {
            self.placement_result(&p, &result.action_id, Some(&result), now, &mut out);
        } else {
            kinds::of(&p.alert.kind).on_result(self, &p, &result, now, &mut out);
        }
        out
    }

    /// Whether `result`, from the node its action was sent to (see
    /// [`Engine::foreign_target`]), can change anything: it answers a
    /// pending command, or a recent one still open (sent, or closed as
    /// `no_result`, whose late answer tells what happened). Any other (a
    /// second answer to a command already judged, one for an action id
    /// never sent or long forgotten) is only audited and counted. Nor is
    /// a refusal that closes nothing ([`closes_nothing`]: a replay, or a
    /// copy the agent could not trust or read): it would stay news as long
    /// as its command stays open.
    pub(crate) fn result_is_news(&self, result: &CommandResult) -> bool {
        if closes_nothing(result) {
            return false;
        }
        self.pending.contains_key(&result.action_id)
            || self.unanswered.contains(&result.node, &result.action_id)
            || self
                .recent
                .iter()
                .rev()
                .find(|r| r.action_id == result.action_id && r.node == result.node.as_str())
                .is_some_and(|r| matches!(r.state, ActionState::Sent | ActionState::NoResult))
    }

    /// Count `result` by its status; besides, as a replay (a refusal of an
    /// id already executed, or an answer given again when it answers
    /// nothing open), as a refused copy (`results.refused.<reason>`), or as
    /// unmatched when it answers no `pending` command and is no success (a
    /// late success is no news).
    pub(crate) fn count_result(&self, result: &CommandResult, pending: bool) {
        self.counters.inc(Counter::Results(result.status.as_str()));
        if is_replay(result)
            || (!pending && is_replayed_answer(result) && !self.result_is_news(result))
        {
            self.counters.inc(Counter::ResultsReplay);
        } else if let Some(reason) = refused_copy(result) {
            self.counters.inc(Counter::ResultsRefused(reason));
        } else if !pending && result.status != ResultStatus::Succeeded {
            self.counters.inc(Counter::ResultsUnmatched);
        }
    }

    /// Why a result that is no news ([`Engine::result_is_news`]) changes
    /// nothing, as a refusals summary names it and as
    /// [`Engine::count_result`] counts it besides its status: `replay`
    /// (`results.replay`), `untrusted` or `malformed` (a copy the agent
    /// refused, `results.refused.<reason>`), `unmatched`
    /// (`results.unmatched`), or `late_success` (a success answering
    /// nothing open: no news).
    pub(crate) fn no_news_reason(result: &CommandResult) -> &'static str {
        if is_replay(result) || is_replayed_answer(result) {
            skos_core::protocol::REASON_REPLAY
        } else if let Some(reason) = refused_copy(result) {
            reason
        } else if result.status != ResultStatus::Succeeded {
            "unmatched"
        } else {
            "late_success"
        }
    }

    /// The node `result`'s action was sent to, when the result comes from
    /// another node (a pending command, one closed as `no_result` and not
    /// answered, or a recent one).
    pub(crate) fn foreign_target(&self, result: &CommandResult) -> Option<String> {
        if let Some(p) = self.pending.get(&result.action_id) {
            return (p.node != result.node).then(|| p.node.to_string());
        }
        if let Some(node) = self.unanswered.node_of(&result.action_id) {
            return (*node != result.node).then(|| node.to_string());
        }
        self.recent
            .iter()
            .rev()
            .find(|r| r.action_id == result.action_id)
            .filter(|r| r.node != result.node.as_str())
            .map(|r| r.node.clone())
    }

    /// The audit record refusing a result as it came off the bus from a
    /// node its action was not sent to (the caller counts it): its command
    /// lines stripped first, as [`Engine::on_result`] strips them.
    pub(crate) fn refuse_foreign(
        &self,
        mut result: CommandResult,
        target: &str,
        now: Timestamp,
    ) -> Effect {
        if !self.cfg.loop_.record_command_lines {
            skos_core::chain::tree::strip_command_lines(&mut result.details);
        }
        Self::foreign_audit(&result, target, now)
    }

    /// Refuse a result from a node its action was not sent to.
    fn foreign_result(&self, result: &CommandResult, target: &str, now: Timestamp) -> Effect {
        self.counters.inc(Counter::ResultsForeign);
        Self::foreign_audit(result, target, now)
    }

    fn foreign_audit(result: &CommandResult, target: &str, now: Timestamp) -> Effect {
        let from = &result.node;
        let error = format!(
            "result for {} comes from {from}, but the action was sent to {target}",
            result.action_id
        );
        audit(
            AuditEvent::Rejected,
            now,
            Some(from),
            format!("rejected result from {from}: {error}"),
            json!({"feed": "result", "reason": FOREIGN_NODE, "error": error, "action_id": result.action_id, "from": from, "sent_to": target, "result": result}),
        )
    }

    /// Close every pending command without a result by its deadline plus
    /// `result_grace_seconds` as `no_result`: audited, counted, a breaker
    /// failure (its outcome is unknown), and no longer in progress, so a
    /// later alert can act. Its kind decides what follows (the next step
    /// of a ladder, another try at a throttle reset).
    fn expire_pending(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let grace = secs(self.cfg.coordinator.result_grace_seconds);
        let lost = self.pending.due(|deadline| now > deadline + grace);
        for action_id in lost {
            let Some(p) = self.pending.remove(&action_id) else {
                continue;
            };
            self.counters.inc(Counter::ResultsMissing);
            self.unanswered.close(&p.node, &action_id, now);
            let grace_s = self.cfg.coordinator.result_grace_seconds;
            self.set_action_state(
                &action_id,
                &p.node,
                ActionState::NoResult,
                &format!("no result by the deadline plus {grace_s}s"),
            );
            out.push(audit(
                AuditEvent::NoResult,
                now,
                Some(&p.node),
                format!(
                    "{} on {} for {}: no result by its deadline plus {grace_s}s",
                    p.action, p.node, p.problem
                ),
                json!({
                    "action_id": action_id,
                    "action": p.action,
                    "problem": p.problem,
                    "sent_at": p.sent_at.map(|t| timefmt::format(&t)),
                    "deadline": p.deadline.map(|t| timefmt::format(&t)),
                    "grace_seconds": grace_s,
                }),
            ));
            let key = BreakerKey::new(p.node.as_str(), p.problem.as_str(), &p.action);
            self.ledger_outcome(
                (&p.node, &p.problem, &p.action),
                ledger::Outcome::Failed,
                None,
                now,
            );
            self.failure(&key, now, out);
            if placement::is_step(&p.action) {
                self.placement_result(&p, &action_id, None, now, out);
            } else {
                kinds::of(&p.alert.kind).on_no_result(self, &p, now, out);
            }
        }
    }

    fn failure(&mut self, key: &BreakerKey, now: Timestamp, out: &mut Vec<Effect>) {
        self.counters.inc(Counter::BreakerFailures);
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
        self.counters.inc(Counter::Breaker(state));
        out.push(audit(
            AuditEvent::Breaker,
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

    /// Periodic work: offline detection, held throttle resets, commands
    /// without a result and verification deadlines.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Effect> {
        let mut out = Vec::new();
        for c in self.quotas.ended(now) {
            out.push(audit(
                AuditEvent::Coalesced,
                now,
                Some(&c.node),
                format!(
                    "{} of {} alerts from {} in the minute since {} coalesced (over {} a minute)",
                    c.coalesced,
                    c.seen,
                    c.node,
                    skos_core::timefmt::format(&c.since),
                    self.cfg.coordinator.max_alerts_per_node_per_minute
                ),
                json!({"since": skos_core::timefmt::format(&c.since), "seen": c.seen, "coalesced": c.coalesced, "first_alert_id": c.first, "last_alert_id": c.last}),
            ));
        }
        for kind in kinds::ALL {
            kind.on_tick(self, now, &mut out);
        }
        self.flap_tick(now, &mut out);
        self.silence_tick(now, &mut out);
        self.expire_pending(now, &mut out);
        self.placement_tick(now, &mut out);
        self.verification_deadlines(now, &mut out);
        out
    }

    /// A fix that did not verify: raise the alert one severity (its table
    /// row then decides), or say a human must decide past `emergency`.
    fn escalate(&mut self, v: Verification, now: Timestamp, out: &mut Vec<Effect>) {
        match v.alert.severity.next() {
            Some(next) => {
                let mut details = v.alert.details.clone();
                details.insert(credit::ESCALATED_FROM_BELOW.into(), json!(v.below));
                let mut esc = self.own_alert(
                    &v.node,
                    v.alert.kind.clone(),
                    next,
                    format!(
                        "escalated: {} did not bring {} below {:.1}",
                        v.action, v.metric, v.below
                    ),
                    Value::Object(details),
                    now,
                );
                esc.alert_id = format!("{}-esc-{}", v.alert.alert_id, next.as_str());
                out.push(Effect::Alert(esc));
            }
            None => out.push(audit(
                AuditEvent::Escalation,
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
}

fn key_str(k: &BreakerKey) -> String {
    format!("({}, {}, {})", k.node, k.problem, k.action)
}

#[cfg(test)]
mod tests;
