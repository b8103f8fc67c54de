//! Where each workload runs, and the plans that change it.
//!
//! The healing tables name four coordinator-level actions:
//! `shutdown_non_essential`, `redistribute`, `failover` and `failback`.
//! None is sent to an agent as such: each is a plan the engine carries out
//! one step at a time as `workload_start` and `workload_stop` commands,
//! judging each step's result before the next, so a move is always
//! two-phase (started and healthy at the target, then stopped at the
//! source) and a workload never runs in two places by SKOS's doing.
//!
//! The placement ([`Placement`], one per configured workload) is the
//! engine's record of where each workload runs; it starts at the
//! workload's home (`nodes.<node>.services`) and is kept in the durable
//! state of that home node, so a restart or a takeover continues a move
//! where it stopped. Heartbeats report what really runs: a copy running
//! where the placement says it must not is stopped (fenced), and one
//! that should run where it is placed but does not is started again.
//!
//! A node with `nodes.<node>.orchestrator` is drained and undrained
//! through its orchestrator instead ([`drain`]).
//!
//! Fleet safety: destructive plans freeze while fewer nodes than
//! `failover.min_healthy` are healthy (a `fleet_degraded` alert says why),
//! at most `failover.max_concurrent` failovers run at once, and dry-run
//! decides and audits every plan without sending anything.

mod drain;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{Alert, AlertKind, AuditEvent, CommandResult, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::state::Pending;
use super::{audit, Effect, Engine, SkipReason};
pub use drain::Drain;

/// The agent action that starts a workload on a node.
pub(crate) const START: &str = skos_core::catalogue::WORKLOAD_START;
/// The agent action that stops a workload on a node.
pub(crate) const STOP: &str = skos_core::catalogue::WORKLOAD_STOP;
/// The parameter naming the workload in both.
const WORKLOAD_PARAM: &str = "workload";

/// The sensor of the `fleet_degraded` alert.
const DEGRADED_SENSOR: &str = "min_healthy";

/// A plan named by a healing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `shutdown_non_essential`: stop non-essential workloads, lowest
    /// priority first, while the problem lasts.
    Shed,
    /// Start again what was shed, once the node has been calm.
    Restart,
    /// `redistribute`: move movable workloads, highest priority first, to
    /// the best other node while the problem lasts.
    Redistribute,
    /// `failover`: start essential workloads on a hot spare.
    Failover,
    /// `failback`: move workloads back home once it has been calm.
    Failback,
    /// A workload placed on a node that reports it stopped, started again.
    Supervise,
}

impl Reason {
    /// The plan's name in tables and records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Shed => "shutdown_non_essential",
            Reason::Restart => "restart",
            Reason::Redistribute => "redistribute",
            Reason::Failover => "failover",
            Reason::Failback => "failback",
            Reason::Supervise => "supervise",
        }
    }

    /// The plan a healing-table action names, if it is one.
    pub fn of_action(action: &str) -> Option<Reason> {
        [
            Reason::Shed,
            Reason::Redistribute,
            Reason::Failover,
            Reason::Failback,
        ]
        .into_iter()
        .find(|r| r.as_str() == action)
    }

    /// Whether it stops work or moves it off a node (frozen while the
    /// fleet is degraded). Restarting what SKOS shed is not.
    const fn destructive(self) -> bool {
        !matches!(self, Reason::Restart | Reason::Supervise)
    }
}

/// How a workload goes back home after a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failback {
    /// Once its home has been calm for `failback_hold`.
    #[default]
    Auto,
    /// Never by itself (a table's `failback` action still does).
    Off,
}

/// How many nodes must be healthy for destructive plans to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinHealthy {
    /// At least this many nodes.
    Count(usize),
    /// At least this fraction (0–1) of the known nodes, rounded up.
    Fraction(f64),
}

impl Default for MinHealthy {
    fn default() -> Self {
        MinHealthy::Count(1)
    }
}

impl MinHealthy {
    /// The number of healthy nodes needed among `known`.
    fn needed(self, known: usize) -> usize {
        match self {
            MinHealthy::Count(n) => n,
            MinHealthy::Fraction(f) => (f.clamp(0.0, 1.0) * known as f64).ceil() as usize,
        }
    }
}

/// One configured workload, as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadDef {
    pub name: String,
    /// Where it normally runs.
    pub home: NodeName,
    /// Lower runs first and stops last.
    pub priority: u32,
    /// Kept running through an emergency (failed over, never shed).
    pub essential: bool,
    /// May be moved to another node.
    pub movable: bool,
    /// The nodes it may run on; empty: any.
    pub nodes: Vec<NodeName>,
    /// The roles of nodes it may run on; empty: any.
    pub roles: Vec<String>,
}

impl WorkloadDef {
    fn allowed_on(&self, node: &NodeName, role: Option<&str>) -> bool {
        (self.nodes.is_empty() || self.nodes.contains(node))
            && (self.roles.is_empty() || role.is_some_and(|r| self.roles.iter().any(|x| x == r)))
    }
}

/// The fleet's workloads and failover settings, from the config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// Every workload with a home, by priority then name.
    pub workloads: Vec<WorkloadDef>,
    /// Hot spares, in the order they are tried.
    pub spares: Vec<NodeName>,
    /// Each configured node's role.
    pub roles: BTreeMap<NodeName, String>,
    /// Seconds a node is offline before its workloads fail over.
    pub failover_delay: f64,
    pub failback: Failback,
    /// Seconds a node must be calm before workloads go back to it.
    pub failback_hold: f64,
    /// Seconds a node must be calm before what was shed starts again.
    pub restart_hold: f64,
    pub min_healthy: MinHealthy,
    /// Failovers carried out at once, fleet-wide.
    pub max_concurrent_failovers: usize,
    /// Plans that wait for a person's `skos approve` before they start.
    pub approval: Vec<Reason>,
    /// Seconds a plan waits for approval before it expires.
    pub approval_timeout: f64,
    /// Nodes with `nodes.<node>.orchestrator`: drained and undrained
    /// through their orchestrator instead of having workloads moved.
    pub orchestrated: BTreeSet<NodeName>,
}

impl Fleet {
    /// The fleet `cfg` describes: each workload of `workloads:` with a home
    /// ([`skos_core::config::Config::workload_home`]), its priority and
    /// whether it is essential from `failover.services_priority` unless it
    /// says itself, sorted by priority then name; the spares, roles and
    /// holds of `nodes:` and `failover:`.
    pub fn from_config(cfg: &skos_core::config::Config) -> Self {
        let f = &cfg.failover;
        let order = &f.services_priority;
        let mut workloads: Vec<WorkloadDef> = cfg
            .workloads
            .iter()
            .filter_map(|(name, spec)| {
                let home = cfg.workload_home(name.as_str())?.clone();
                Some(WorkloadDef {
                    name: name.as_str().to_string(),
                    home,
                    priority: cfg.workloads.priority_of(name, order),
                    essential: cfg.workloads.is_essential(name, order),
                    movable: spec.movable,
                    nodes: spec.nodes.clone(),
                    roles: spec.roles.clone(),
                })
            })
            .collect();
        workloads.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        let min_healthy = match f.min_healthy.fraction() {
            Some(fr) => MinHealthy::Fraction(fr),
            None => match f.min_healthy {
                skos_core::config::MinHealthySpec::Count(n) => MinHealthy::Count(n as usize),
                skos_core::config::MinHealthySpec::Percent(_) => MinHealthy::Count(1),
            },
        };
        Fleet {
            workloads,
            spares: f.hot_spare_nodes.clone(),
            roles: cfg
                .nodes
                .0
                .iter()
                .filter(|(_, s)| !s.role.is_empty())
                .map(|(n, s)| (n.clone(), s.role.clone()))
                .collect(),
            failover_delay: f.failover_delay_seconds,
            failback: match f.failback {
                skos_core::config::FailbackMode::Auto => Failback::Auto,
                skos_core::config::FailbackMode::Off => Failback::Off,
            },
            failback_hold: f.failback_hold_seconds,
            restart_hold: f.restart_hold_seconds,
            min_healthy,
            max_concurrent_failovers: f.max_concurrent as usize,
            approval: f
                .require_approval
                .iter()
                .filter_map(|p| Reason::of_action(p))
                .collect(),
            approval_timeout: f.approval_timeout_seconds,
            orchestrated: cfg
                .nodes
                .0
                .iter()
                .filter(|(_, s)| s.orchestrator.is_some())
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    fn def(&self, workload: &str) -> Option<&WorkloadDef> {
        self.workloads.iter().find(|w| w.name == workload)
    }
}

/// One step of a plan under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// `workload_start` sent to `to`; `from` is stopped once it is healthy.
    Start {
        to: NodeName,
        from: Option<NodeName>,
    },
    /// `workload_stop` sent to `from`; `to` already runs it (none: shed).
    Stop {
        from: NodeName,
        to: Option<NodeName>,
    },
}

/// A plan's step in flight for one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Op {
    pub(crate) reason: Reason,
    pub(crate) step: Step,
    /// The action id of the step's command.
    pub(crate) action_id: String,
    /// The alert the plan answers.
    pub(crate) cause: Box<Alert>,
    /// The severity it was decided at.
    pub(crate) severity: Severity,
    /// Targets already tried and failed, not tried again by this plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tried: Vec<NodeName>,
}

/// Where one workload runs, by SKOS's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub(crate) workload: String,
    /// The node it runs on; `None`: stopped by SKOS.
    pub(crate) at: Option<NodeName>,
    /// Stopped to shed load on this node: started there again once it has
    /// been calm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) shed_from: Option<NodeName>,
    /// The step under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) op: Option<Op>,
    /// Nodes whose copy must be stopped when they report it running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) fence: Vec<NodeName>,
    /// Steps taken so far: names each step's action id, so two
    /// coordinators deciding the same step give it the same id.
    #[serde(default)]
    pub(crate) epoch: u64,
}

impl Placement {
    fn at_home(def: &WorkloadDef) -> Self {
        Self {
            workload: def.name.clone(),
            at: Some(def.home.clone()),
            shed_from: None,
            op: None,
            fence: Vec::new(),
            epoch: 0,
        }
    }

    /// It runs on `node` now: a fence there is over (a copy that was
    /// fenced on it is the one placed there again).
    fn place_at(&mut self, node: NodeName) {
        self.fence.retain(|n| n != &node);
        self.at = Some(node);
    }

    /// Whether `node` takes part in the step under way.
    fn op_touches(&self, node: &NodeName) -> bool {
        match self.op.as_ref().map(|o| &o.step) {
            Some(Step::Start { to, from }) => to == node || from.as_ref() == Some(node),
            Some(Step::Stop { from, to }) => from == node || to.as_ref() == Some(node),
            None => false,
        }
    }
}

/// A plan waiting for a person's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// What `skos approve` and `skos deny` name: the plan, the node and a
    /// digest of the alert it answers (the same on every coordinator).
    pub id: String,
    pub plan: Reason,
    pub node: NodeName,
    /// The alert it answers.
    pub cause: Box<Alert>,
    pub severity: Severity,
    #[serde(with = "skos_core::timefmt")]
    pub requested_at: Timestamp,
    #[serde(with = "skos_core::timefmt")]
    pub expires_at: Timestamp,
}

/// Why an approval or a denial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no plan waits for approval under {0:?} (it may have expired, or been decided)")]
    Unknown(String),
}

/// How a step's command goes: as a fence, as a half-open trial.
#[derive(Debug, Clone, Copy)]
struct Send {
    fence: bool,
    trial: bool,
}

/// The node a step's command goes to.
fn step_node(step: &Step) -> &NodeName {
    match step {
        Step::Start { to, .. } => to,
        Step::Stop { from, .. } => from,
    }
}

/// What a heartbeat says of one workload on its node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) name: String,
    /// Running (not still starting).
    pub(crate) running: bool,
    /// Stopped or failed (not unknown, not on its way).
    pub(crate) stopped: bool,
}

/// The engine's placement state: the fleet's definition and every
/// workload's placement.
#[derive(Debug, Default)]
pub(crate) struct Placements {
    pub(crate) fleet: Fleet,
    by_workload: BTreeMap<String, Placement>,
    /// Since when each node has been calm (online, no open alert at
    /// warning or above); not kept across restarts (a restarted
    /// coordinator waits the whole hold again).
    calm_since: BTreeMap<NodeName, Timestamp>,
    /// The node named in the open `fleet_degraded` alert, if one is open.
    degraded: Option<NodeName>,
    /// Plans waiting for approval, by id.
    approvals: BTreeMap<String, Approval>,
    /// Orchestrated nodes' drain state, by node.
    drains: BTreeMap<NodeName, Drain>,
    /// Plans a person denied: (node, plan, the alert they answered), not
    /// asked again for that alert (dropped once the node is calm).
    denied: std::collections::BTreeSet<(NodeName, Reason, String)>,
    /// What the last try of a plan tried on every tick came to when it
    /// sent nothing (its audit records' kinds and reasons): the same
    /// outcome again is counted, not audited again.
    quiet: BTreeMap<(NodeName, Reason), String>,
}

impl Placements {
    /// Placements for `fleet`, every workload at home.
    pub(crate) fn new(fleet: Fleet) -> Self {
        let by_workload = fleet
            .workloads
            .iter()
            .map(|w| (w.name.clone(), Placement::at_home(w)))
            .collect();
        Self {
            fleet,
            by_workload,
            calm_since: BTreeMap::new(),
            degraded: None,
            approvals: BTreeMap::new(),
            drains: BTreeMap::new(),
            denied: std::collections::BTreeSet::new(),
            quiet: BTreeMap::new(),
        }
    }

    /// `node`'s drain state, kept in its state once it was ever drained.
    pub(crate) fn drains_of(&self, node: &NodeName) -> Vec<Drain> {
        self.drains
            .get(node)
            .filter(|d| d.epoch > 0)
            .cloned()
            .into_iter()
            .collect()
    }

    /// Every drain state kept.
    pub(crate) fn drains(&self) -> impl Iterator<Item = &Drain> {
        self.drains.values().filter(|d| d.epoch > 0)
    }

    /// Continue from saved drain states.
    pub(crate) fn restore_drains(&mut self, saved: Vec<Drain>) {
        for d in saved {
            self.drains.insert(d.node.clone(), d);
        }
    }

    /// The plans waiting for approval on `node` (kept in its state).
    pub(crate) fn approvals_of(&self, node: &NodeName) -> Vec<Approval> {
        self.approvals
            .values()
            .filter(|a| &a.node == node)
            .cloned()
            .collect()
    }

    /// Every plan waiting for approval, by id.
    pub(crate) fn approvals(&self) -> impl Iterator<Item = &Approval> {
        self.approvals.values()
    }

    /// `node` left the fleet: what was placed on it is placed nowhere
    /// (stopped, to be failed over or started again by the next plan),
    /// fences and steps touching it are dropped; the workloads moved.
    pub(crate) fn forget_node(&mut self, node: &NodeName) -> Vec<String> {
        let mut moved = Vec::new();
        for p in self.by_workload.values_mut() {
            p.fence.retain(|n| n != node);
            if p.op_touches(node) {
                p.op = None;
            }
            let home = self
                .fleet
                .workloads
                .iter()
                .find(|w| w.name == p.workload)
                .map(|w| w.home.clone());
            if p.shed_from.as_ref() == Some(node) {
                p.shed_from = None;
            }
            if p.at.as_ref() == Some(node) {
                p.at = None;
                p.epoch += 1;
                // Started again at home once it is calm (as a shed one).
                p.shed_from = home.filter(|h| h != node);
                moved.push(p.workload.clone());
            }
        }
        self.calm_since.remove(node);
        self.denied.retain(|(n, _, _)| n != node);
        self.quiet.retain(|(n, _), _| n != node);
        moved
    }

    /// Drop the plans waiting for approval on `node` (it left the fleet);
    /// how many there were.
    pub(crate) fn forget_approvals(&mut self, node: &NodeName) -> usize {
        let before = self.approvals.len();
        self.approvals.retain(|_, a| &a.node != node);
        before - self.approvals.len()
    }

    /// Continue waiting for saved approvals.
    pub(crate) fn restore_approvals(&mut self, saved: Vec<Approval>) {
        for a in saved {
            self.approvals.insert(a.id.clone(), a);
        }
    }

    /// The placements kept in `node`'s state (those of the workloads whose
    /// home it is).
    /// A placement still as it started (at home, never changed) is not
    /// kept: it is what a restart begins with anyway.
    pub(crate) fn of_home(&self, node: &NodeName) -> Vec<Placement> {
        self.fleet
            .workloads
            .iter()
            .filter(|w| &w.home == node)
            .filter_map(|w| self.by_workload.get(&w.name))
            .filter(|p| p.epoch > 0 || !p.fence.is_empty())
            .cloned()
            .collect()
    }

    /// Continue from saved placements; one of a workload no longer
    /// configured is dropped.
    pub(crate) fn restore(&mut self, saved: Vec<Placement>) {
        for p in saved {
            if self.fleet.def(&p.workload).is_some() {
                self.by_workload.insert(p.workload.clone(), p);
            }
        }
    }

    /// Every placement, by workload.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Placement> {
        self.by_workload.values()
    }
}

impl Engine {
    /// Every configured workload's placement `query` concerns (its home
    /// or where it runs), for `skos status`.
    pub(in crate::engine) fn workload_statuses(
        &self,
        query: &crate::status::StatusQuery,
    ) -> Vec<crate::status::WorkloadStatus> {
        self.placement
            .fleet
            .workloads
            .iter()
            .filter_map(|w| {
                let p = self.placement.by_workload.get(&w.name)?;
                let concerns = query.concerns(w.home.as_str())
                    || p.at.as_ref().is_some_and(|a| query.concerns(a.as_str()));
                if !concerns {
                    return None;
                }
                let state = match (&p.op, &p.at, &p.shed_from) {
                    (Some(_), _, _) => "moving",
                    (None, Some(_), _) => "placed",
                    (None, None, Some(_)) => "shed",
                    (None, None, None) => "stopped",
                };
                let step = p.op.as_ref().map(|op| {
                    let what = match &op.step {
                        Step::Start { to, .. } => format!("starting on {to}"),
                        Step::Stop { from, .. } => format!("stopping on {from}"),
                    };
                    crate::status::clip(&format!("{} {what}", op.reason.as_str()))
                });
                Some(crate::status::WorkloadStatus {
                    name: w.name.clone(),
                    home: w.home.to_string(),
                    at: p.at.as_ref().map(ToString::to_string),
                    state: state.into(),
                    step,
                    fenced: p.fence.iter().map(ToString::to_string).collect(),
                })
            })
            .take(crate::status::MAX_WORKLOADS)
            .collect()
    }

    /// The plans waiting for approval that `query` concerns.
    pub(in crate::engine) fn approval_statuses(
        &self,
        query: &crate::status::StatusQuery,
    ) -> Vec<crate::status::ApprovalStatus> {
        self.placement
            .approvals()
            .filter(|a| query.concerns(a.node.as_str()))
            .map(|a| crate::status::ApprovalStatus {
                id: a.id.clone(),
                plan: a.plan.as_str().into(),
                node: a.node.to_string(),
                reason: crate::status::clip(&a.cause.message),
                expires_at: a.expires_at,
            })
            .take(crate::status::MAX_APPROVALS)
            .collect()
    }
}

/// The workload a step's problem key names.
fn workload_of(problem: &ProblemKey) -> Option<&str> {
    problem.workload()
}

/// The problem key a workload's steps are kept under.
fn problem_of(workload: &str) -> ProblemKey {
    ProblemKey::of_workload(workload)
}

/// What `hb` says of its node's workloads.
pub(crate) fn seen(hb: &skos_core::protocol::Heartbeat) -> Vec<Seen> {
    use skos_core::WorkloadState as S;
    hb.workloads
        .iter()
        .map(|w| Seen {
            name: w.name.as_str().to_string(),
            // A copy still starting is left alone until it runs: it may be
            // the start of a step whose result is on its way.
            running: w.state == S::Running,
            stopped: matches!(w.state, S::Stopped | S::Failed),
        })
        .collect()
}

/// Whether `action` is one of the agent steps placement sends
/// (`workload_start`, `workload_stop`, `node_drain`, `node_undrain`).
pub(crate) fn is_step(action: &str) -> bool {
    skos_core::catalogue::is_workload_step(action)
}

impl Engine {
    /// The placement state.
    pub(crate) fn placements(&self) -> &Placements {
        &self.placement
    }

    /// Whether `node` is online and known.
    fn online(&self, node: &NodeName) -> bool {
        self.nodes.get(node).is_some_and(|n| !n.offline)
    }

    /// Whether `node` has an open alert at `at_least` or above.
    fn has_open_alert(&self, node: &NodeName, at_least: Severity) -> bool {
        self.open_alerts
            .of(node)
            .any(|(_, a)| a.severity >= at_least && a.kind != AlertKind::Circuit)
    }

    /// Whether `node` is healthy for the fleet gate: online and without an
    /// open emergency.
    fn healthy(&self, node: &NodeName) -> bool {
        self.online(node) && !self.has_open_alert(node, Severity::Emergency)
    }

    /// How many known nodes are healthy, and how many must be.
    fn fleet_health(&self) -> (usize, usize) {
        let known = self.nodes.len();
        let healthy = self.nodes.keys().filter(|n| self.healthy(n)).count();
        (healthy, self.placement.fleet.min_healthy.needed(known))
    }

    /// Carry out a plan a healing table named for `alert` (already past
    /// dry-run). Returns false when `action` is no plan.
    pub(super) fn plan_action(
        &mut self,
        alert: &Alert,
        severity: Severity,
        action: &str,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(reason) = Reason::of_action(action) else {
            return false;
        };
        let node = alert.node.clone();
        let problem = alert.problem();
        if self.placement.fleet.workloads.is_empty() && !self.orchestrated(&node) {
            self.skip(
                (&node, &problem, action),
                SkipReason::NoWorkloads,
                "no workloads are configured".into(),
                now,
                out,
            );
            return true;
        }
        if reason != Reason::Failover && !self.online(&node) {
            self.skip(
                (&node, &problem, action),
                SkipReason::NodeOffline,
                "the node is offline".into(),
                now,
                out,
            );
            return true;
        }
        self.start_plan(reason, &node, alert, severity, false, now, out);
        true
    }

    /// Begin (or go on with) `reason` for `node`, answering `cause`; a
    /// plan that needs approval waits for it unless `approved`.
    #[allow(clippy::too_many_arguments)]
    fn start_plan(
        &mut self,
        reason: Reason,
        node: &NodeName,
        cause: &Alert,
        severity: Severity,
        approved: bool,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let problem = cause.problem();
        let action = reason.as_str();
        if let Some(s) = self.silenced(node, &cause.kind, &problem, action, now) {
            let why = format!("silence {} holds {node} ({})", s.id, s.when(now));
            self.skip(
                (node, &problem, action),
                SkipReason::Silenced,
                why,
                now,
                out,
            );
            return;
        }
        if self
            .placement
            .denied
            .contains(&(node.clone(), reason, cause.alert_id.clone()))
        {
            self.skip(
                (node, &problem, action),
                SkipReason::Denied,
                format!("a person denied {action} on {node} for this alert"),
                now,
                out,
            );
            return;
        }
        if self.busy(node, reason) {
            self.skip(
                (node, &problem, action),
                SkipReason::InProgress,
                format!("a {action} step on {node} is still under way"),
                now,
                out,
            );
            return;
        }
        if reason.destructive() && !self.fleet_gate(node, (&problem, action), now, out) {
            return;
        }
        if !approved && self.placement.fleet.approval.contains(&reason) {
            self.request_approval(reason, node, cause, severity, now, out);
            return;
        }
        if reason == Reason::Failover {
            let running = self
                .placement
                .all()
                .filter(|p| p.op.as_ref().is_some_and(|o| o.reason == Reason::Failover))
                .count();
            let limit = self.placement.fleet.max_concurrent_failovers.max(1);
            if running >= limit {
                self.skip(
                    (node, &problem, action),
                    SkipReason::RateLimited,
                    format!("{running} failovers under way, the most at once is {limit}"),
                    now,
                    out,
                );
                return;
            }
        }
        if self.orchestrated(node) {
            self.drain_step(reason, node, cause, severity, now, out);
            return;
        }
        if !self.next_step(reason, node, cause, severity, &[], now, out) {
            out.push(audit(
                AuditEvent::Placement,
                now,
                Some(node),
                format!("{action} on {node}: nothing to do"),
                json!({"plan": action, "node": node, "outcome": "nothing_to_do", "alert_id": cause.alert_id}),
            ));
        }
    }

    /// Whether a step of `reason` involving `node` is under way (one at a
    /// time per node and plan).
    fn busy(&self, node: &NodeName, reason: Reason) -> bool {
        self.placement
            .all()
            .any(|p| p.op.as_ref().is_some_and(|o| o.reason == reason) && p.op_touches(node))
    }

    /// The fleet gate: whether destructive work may go on. Below
    /// `min_healthy` the action is skipped as `fleet_degraded` and one
    /// `fleet_degraded` alert is raised until the fleet recovers.
    fn fleet_gate(
        &mut self,
        node: &NodeName,
        (problem, action): (&ProblemKey, &str),
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> bool {
        let (healthy, needed) = self.fleet_health();
        if healthy >= needed {
            return true;
        }
        let why = format!(
            "{healthy} of {} nodes healthy, below failover.min_healthy ({needed}): destructive actions are frozen",
            self.nodes.len()
        );
        self.skip(
            (node, problem, action),
            SkipReason::FleetDegraded,
            why.clone(),
            now,
            out,
        );
        if self.placement.degraded.is_none() {
            self.placement.degraded = Some(node.clone());
            out.push(Effect::Alert(self.own_alert(
                node,
                AlertKind::FleetDegraded,
                Severity::Critical,
                format!("fleet degraded: {why}"),
                json!({"sensor": DEGRADED_SENSOR, "healthy": healthy, "needed": needed, "known": self.nodes.len()}),
                now,
            )));
        }
        false
    }

    /// Clear the `fleet_degraded` alert once enough nodes are healthy.
    fn fleet_recovered(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(node) = self.placement.degraded.clone() else {
            return;
        };
        let (healthy, needed) = self.fleet_health();
        if healthy < needed {
            return;
        }
        self.placement.degraded = None;
        out.push(Effect::Alert(self.own_alert(
            &node,
            AlertKind::FleetDegraded,
            Severity::Normal,
            format!(
                "fleet recovered: {healthy} of {} nodes healthy",
                self.nodes.len()
            ),
            json!({"sensor": DEGRADED_SENSOR, "healthy": healthy, "needed": needed}),
            now,
        )));
    }

    /// Choose and send the next step of `reason` for `node`. Returns false
    /// when there is nothing left to do.
    #[allow(clippy::too_many_arguments)]
    fn next_step(
        &mut self,
        reason: Reason,
        node: &NodeName,
        cause: &Alert,
        severity: Severity,
        tried: &[NodeName],
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> bool {
        let fleet = &self.placement.fleet;
        // No step under way, and no other command for it (a fence stop)
        // waiting for its result anywhere: a plan never races a fence.
        let idle = |w: &WorkloadDef| {
            self.placement
                .by_workload
                .get(&w.name)
                .is_some_and(|p| p.op.is_none())
                && !self
                    .pending
                    .iter()
                    .any(|(_, q)| workload_of(&q.problem) == Some(w.name.as_str()))
        };
        let at = |w: &WorkloadDef, n: &NodeName| {
            self.placement
                .by_workload
                .get(&w.name)
                .is_some_and(|p| p.at.as_ref() == Some(n))
        };
        // Workloads are sorted by priority: the first is the most important.
        let choice: Option<(String, Step)> = match reason {
            Reason::Shed => fleet
                .workloads
                .iter()
                .rev()
                .find(|w| !w.essential && idle(w) && at(w, node))
                .map(|w| {
                    (
                        w.name.clone(),
                        Step::Stop {
                            from: node.clone(),
                            to: None,
                        },
                    )
                }),
            Reason::Redistribute | Reason::Failover => fleet
                .workloads
                .iter()
                .filter(|w| w.movable && idle(w) && at(w, node))
                .filter(|w| reason == Reason::Redistribute || w.essential)
                .find_map(|w| {
                    let to = self.target(reason, w, node, tried)?;
                    Some((
                        w.name.clone(),
                        Step::Start {
                            to,
                            from: Some(node.clone()),
                        },
                    ))
                }),
            Reason::Failback => fleet
                .workloads
                .iter()
                .filter(|w| &w.home == node && idle(w))
                .find_map(|w| {
                    let p = self.placement.by_workload.get(&w.name)?;
                    let from = p.at.clone().filter(|a| a != node)?;
                    Some((
                        w.name.clone(),
                        Step::Start {
                            to: node.clone(),
                            from: Some(from),
                        },
                    ))
                }),
            Reason::Restart => fleet
                .workloads
                .iter()
                .filter(|w| idle(w))
                .find(|w| {
                    self.placement
                        .by_workload
                        .get(&w.name)
                        .is_some_and(|p| p.at.is_none() && p.shed_from.as_ref() == Some(node))
                })
                .map(|w| {
                    (
                        w.name.clone(),
                        Step::Start {
                            to: node.clone(),
                            from: None,
                        },
                    )
                }),
            Reason::Supervise => None,
        };
        let Some((workload, step)) = choice else {
            return false;
        };
        let target = step_node(&step).clone();
        if let Err((why, detail)) = self.send_step(
            &workload,
            reason,
            step,
            cause,
            severity,
            tried.to_vec(),
            now,
            out,
        ) {
            let problem = problem_of(&workload);
            if reason.destructive() {
                self.skip((&target, &problem, reason.as_str()), why, detail, now, out);
            } else {
                // Tried again on every tick or heartbeat: counted, not
                // audited each time (the breaker's opening was).
                self.counters
                    .inc(skos_core::counters::Counter::ActionsSkipped(why.as_str()));
            }
        }
        true
    }

    /// Why no step may go to `node` now whatever its breaker says: dry-run
    /// (every plan is decided and audited, nothing is sent), or a silence
    /// on the node covering it.
    fn step_held(
        &self,
        node: &NodeName,
        kind: &AlertKind,
        problem: &ProblemKey,
        action: &str,
        now: Timestamp,
    ) -> Option<(SkipReason, String)> {
        if self.cfg.dry_run {
            return Some((SkipReason::DryRun, "dry-run mode executes nothing".into()));
        }
        self.silenced(node, kind, problem, action, now).map(|s| {
            (
                SkipReason::Silenced,
                format!("silence {} holds {node} ({})", s.id, s.when(now)),
            )
        })
    }

    /// Whether a step's command may go to `node` now: the breaker of
    /// (node, `problem`: `workload:<name>` or `orchestrator:<node>`, action) admits it and the node's action
    /// rate has room. `Ok(trial)`: it may (as a half-open trial or not).
    fn admit_step(
        &mut self,
        node: &NodeName,
        problem: &ProblemKey,
        action: &str,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<bool, (SkipReason, String)> {
        use skos_core::breaker::{Admission, BreakerKey, Transition};
        let key = BreakerKey::new(node.as_str(), problem.as_str(), action);
        let (admission, transition) = self.breakers.admit(&key, now);
        if transition == Some(Transition::HalfOpened) {
            out.push(audit(
                AuditEvent::Breaker,
                now,
                Some(node),
                format!(
                    "circuit {} half-open: one trial allowed",
                    super::key_str(&key)
                ),
                json!({"key": key, "state": "half_open"}),
            ));
        }
        if admission == Admission::Deny {
            return Err((
                SkipReason::CircuitOpen,
                format!("circuit {} is open", super::key_str(&key)),
            ));
        }
        if !self.take_rate(node, now) {
            if admission == Admission::Trial {
                self.breakers.release_trial(&key);
            }
            return Err((
                SkipReason::RateLimited,
                "per-node action rate limit reached".into(),
            ));
        }
        Ok(admission == Admission::Trial)
    }

    /// The best node to move `w` to from `from`: online, not itself hot,
    /// allowed for the workload, not tried yet. A failover takes the first
    /// hot spare in order that passes; a redistribute the coolest node.
    fn target(
        &self,
        reason: Reason,
        w: &WorkloadDef,
        from: &NodeName,
        tried: &[NodeName],
    ) -> Option<NodeName> {
        let fleet = &self.placement.fleet;
        // Only a node the config names, and, where nodes sign, one with a
        // key: a node that merely heartbeated (a stray agent, a forged
        // heartbeat) never receives a workload.
        let configured = &self.cfg.nodes.0;
        let keyed = &self.cfg.trust.node_keys;
        let fit = |n: &NodeName| {
            n != from
                && (configured.is_empty() || configured.contains_key(n))
                && (keyed.is_empty() || keyed.contains_key(n.as_str()))
                && !tried.contains(n)
                && self.online(n)
                && !self.has_open_alert(n, Severity::Warning)
                && w.allowed_on(n, fleet.roles.get(n).map(String::as_str))
        };
        if reason == Reason::Failover {
            // The hot spares in order; when none can take it, its home,
            // then any other node that may run it.
            if let Some(spare) = fleet.spares.iter().find(|n| fit(n)) {
                return Some(spare.clone());
            }
            if fit(&w.home) {
                return Some(w.home.clone());
            }
        }
        // Coolest first; a node that reports no temperature after every
        // one that does; then the fewest workloads, then the name.
        self.nodes
            .iter()
            .filter(|(n, _)| fit(n))
            .min_by(|(a, sa), (b, sb)| {
                let temp = |s: &super::state::NodeState| s.heartbeat.cpu_temp.unwrap_or(f64::MAX);
                temp(sa)
                    .total_cmp(&temp(sb))
                    .then_with(|| self.load(a).cmp(&self.load(b)))
                    .then_with(|| a.cmp(b))
            })
            .map(|(n, _)| n.clone())
    }

    /// How many workloads are placed on `node`.
    fn load(&self, node: &NodeName) -> usize {
        self.placement
            .all()
            .filter(|p| p.at.as_ref() == Some(node))
            .count()
    }

    /// Send one step's command and record it as the workload's op.
    #[allow(clippy::too_many_arguments)]
    fn send_step(
        &mut self,
        workload: &str,
        reason: Reason,
        step: Step,
        cause: &Alert,
        severity: Severity,
        tried: Vec<NodeName>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<(), (SkipReason, String)> {
        let (node, action) = match &step {
            Step::Start { to, .. } => (to.clone(), START),
            Step::Stop { from, .. } => (from.clone(), STOP),
        };
        if !self.placement.by_workload.contains_key(workload) {
            return Ok(());
        }
        let problem = problem_of(workload);
        if let Some(held) = self.step_held(&node, &cause.kind, &problem, action, now) {
            return Err(held);
        }
        let trial = self.admit_step(&node, &problem, action, now, out)?;
        let Some(p) = self.placement.by_workload.get_mut(workload) else {
            return Ok(());
        };
        p.epoch += 1;
        let epoch = p.epoch;
        let action_id = format!("{node}:{action}:{workload}:{epoch}");
        p.op = Some(Op {
            reason,
            step: step.clone(),
            action_id: action_id.clone(),
            cause: Box::new(cause.clone()),
            severity,
            tried,
        });
        let home = self.placement.fleet.def(workload).map(|w| w.home.clone());
        let what = match &step {
            Step::Start { to, from: Some(f) } => {
                format!("{workload}: start on {to}, then stop on {f}")
            }
            Step::Start { to, from: None } => format!("{workload}: start on {to}"),
            Step::Stop { from, to: Some(t) } => {
                format!("{workload}: healthy on {t}, stop on {from}")
            }
            Step::Stop { from, to: None } => format!("{workload}: stop on {from}"),
        };
        out.push(audit(
            AuditEvent::Placement,
            now,
            home.as_ref().or(Some(&node)),
            format!("{} step: {what}", reason.as_str()),
            json!({"plan": reason.as_str(), "workload": workload, "step": step, "action_id": action_id, "alert_id": cause.alert_id}),
        ));
        let how = Send {
            fence: false,
            trial,
        };
        self.send_workload_command(
            &node, action, action_id, workload, cause, severity, how, now, out,
        );
        Ok(())
    }

    /// Send `action` for `workload` to `node` as a pending command.
    #[allow(clippy::too_many_arguments)]
    fn send_workload_command(
        &mut self,
        node: &NodeName,
        action: &str,
        action_id: String,
        workload: &str,
        cause: &Alert,
        severity: Severity,
        how: Send,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Send { fence, trial } = how;
        let problem = problem_of(workload);
        let mut cmd = self.command(
            node,
            action,
            action_id,
            Some(cause.alert_id.clone()),
            &problem,
            now,
        );
        cmd.parameters
            .insert(WORKLOAD_PARAM.into(), Value::String(workload.to_string()));
        if fence {
            cmd.parameters
                .insert("fence".into(), Value::String("true".into()));
        }
        let pending = Pending::new(
            node.clone(),
            problem,
            action,
            severity,
            cause.clone(),
            trial,
        );
        self.send(cmd, pending, now, out);
    }

    /// A step's command was answered (`Some`) or got no result (`None`).
    pub(super) fn placement_result(
        &mut self,
        p: &Pending,
        action_id: &str,
        result: Option<&CommandResult>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        if let Some(node) = p.problem.orchestrated_node() {
            self.drain_result(&node, action_id, result, now, out);
            return;
        }
        let Some(workload) = workload_of(&p.problem).map(str::to_string) else {
            return;
        };
        let ok = result.is_some_and(|r| r.status == ResultStatus::Succeeded);
        let why = match result {
            Some(r) => format!("{} {}", r.status.as_str(), r.message),
            None => "no result".to_string(),
        };
        let home = self.placement.fleet.def(&workload).map(|w| w.home.clone());
        let Some(pl) = self.placement.by_workload.get_mut(&workload) else {
            return;
        };
        let op = match pl.op.take() {
            Some(op) if op.action_id == action_id => op,
            other => {
                // A fence or a supervising start, or a step of a plan
                // already closed.
                pl.op = other;
                if p.action == STOP && ok {
                    pl.fence.retain(|n| n != &p.node);
                }
                if p.action == START && ok && pl.at.is_none() && pl.op.is_none() {
                    pl.place_at(p.node.clone());
                }
                return;
            }
        };
        let home = home.as_ref().unwrap_or(&p.node).clone();
        let plan = op.reason.as_str();
        match (&op.step, ok) {
            (Step::Start { to, from }, true) => match from {
                Some(f) if self.nodes.get(f).is_some_and(|n| !n.offline) => {
                    let step = Step::Stop {
                        from: f.clone(),
                        to: Some(to.clone()),
                    };
                    let cause = op.cause.clone();
                    let (to, f) = (to.clone(), f.clone());
                    let sent = self.send_step(
                        &workload,
                        op.reason,
                        step,
                        &cause,
                        op.severity,
                        op.tried.clone(),
                        now,
                        out,
                    );
                    let Err((_, why)) = sent else {
                        return;
                    };
                    // The stop cannot go now: running at its new place,
                    // the old copy is fenced (stopped once it may be).
                    let pl = self.placement_mut(&workload);
                    pl.place_at(to.clone());
                    pl.shed_from = None;
                    if !pl.fence.contains(&f) {
                        pl.fence.push(f.clone());
                    }
                    out.push(audit(
                        AuditEvent::Placement,
                        now,
                        Some(&home),
                        format!("{plan}: {workload} healthy on {to}; stopping it on {f} held ({why}): fenced there"),
                        json!({"plan": plan, "workload": workload, "outcome": "fenced", "from": f, "to": to, "reason": why}),
                    ));
                }
                Some(f) => {
                    let (to, f) = (to.clone(), f.clone());
                    let pl = self.placement_mut(&workload);
                    pl.place_at(to.clone());
                    pl.shed_from = None;
                    if !pl.fence.contains(&f) {
                        pl.fence.push(f.clone());
                    }
                    out.push(audit(
                        AuditEvent::Placement,
                        now,
                        Some(&home),
                        format!("{plan}: {workload} healthy on {to}; {f} is unreachable, its copy is fenced: stopped as soon as it reports it"),
                        json!({"plan": plan, "workload": workload, "outcome": "moved", "at": to, "fenced": f}),
                    ));
                }
                None => {
                    let to = to.clone();
                    let pl = self.placement_mut(&workload);
                    pl.place_at(to.clone());
                    pl.shed_from = None;
                    out.push(audit(
                        AuditEvent::Placement,
                        now,
                        Some(&home),
                        format!("{plan}: {workload} started and healthy on {to}"),
                        json!({"plan": plan, "workload": workload, "outcome": "started", "at": to}),
                    ));
                }
            },
            (Step::Start { to, from }, false) => {
                // The agent stops what it started when it fails; with no
                // result nobody knows, so the target's copy is fenced.
                let to = to.clone();
                let from = from.clone();
                let pl = self.placement_mut(&workload);
                if result.is_none() && pl.at.as_ref() != Some(&to) && !pl.fence.contains(&to) {
                    pl.fence.push(to.clone());
                }
                out.push(audit(
                    AuditEvent::Placement,
                    now,
                    Some(&home),
                    format!(
                        "{plan}: {workload} could not be started on {to} ({why}); it stays {}",
                        match &from {
                            Some(f) => format!("on {f}"),
                            None => "stopped".into(),
                        }
                    ),
                    json!({"plan": plan, "workload": workload, "outcome": "rolled_back", "target": to, "reason": why}),
                ));
                if matches!(op.reason, Reason::Failover | Reason::Redistribute) {
                    if let Some(f) = from {
                        let mut tried = op.tried.clone();
                        tried.push(to);
                        if self.next_step(op.reason, &f, &op.cause, op.severity, &tried, now, out) {
                            return;
                        }
                    }
                }
                return;
            }
            (Step::Stop { from, to }, ok) => {
                let (from, to) = (from.clone(), to.clone());
                let pl = self.placement_mut(&workload);
                match &to {
                    Some(t) => pl.place_at(t.clone()),
                    None if ok => {
                        pl.at = None;
                        pl.shed_from = Some(from.clone());
                    }
                    None => {}
                }
                if !ok && to.is_some() && !pl.fence.contains(&from) {
                    // Running at its new place: the old copy must go.
                    pl.fence.push(from.clone());
                }
                let summary = match (&to, ok) {
                    (Some(t), true) => format!("{plan}: {workload} moved from {from} to {t}"),
                    (Some(t), false) => format!("{plan}: {workload} runs on {t}; stopping it on {from} failed ({why}): fenced there"),
                    (None, true) => format!("{plan}: {workload} stopped on {from}"),
                    (None, false) => format!("{plan}: {workload} could not be stopped on {from} ({why})"),
                };
                out.push(audit(
                    AuditEvent::Placement,
                    now,
                    Some(&home),
                    summary,
                    json!({"plan": plan, "workload": workload, "outcome": if ok {"done"} else {"fenced"}, "from": from, "to": to, "reason": if ok {Value::Null} else {json!(why)}}),
                ));
                if !ok && to.is_none() {
                    return;
                }
            }
        }
        self.continue_plan(&op, now, out);
    }

    fn placement_mut(&mut self, workload: &str) -> &mut Placement {
        self.placement
            .by_workload
            .entry(workload.to_string())
            .or_insert_with(|| Placement {
                workload: workload.to_string(),
                at: None,
                shed_from: None,
                op: None,
                fence: Vec::new(),
                epoch: 0,
            })
    }

    /// After a step is done: shedding and redistributing go on while the
    /// problem that caused them is still open at their severity; failover,
    /// failback and restart go on until nothing is left.
    fn continue_plan(&mut self, op: &Op, now: Timestamp, out: &mut Vec<Effect>) {
        let node = match (&op.reason, &op.step) {
            (Reason::Failback | Reason::Restart, Step::Start { to, .. }) => to.clone(),
            (Reason::Failback, Step::Stop { to: Some(t), .. }) => t.clone(),
            (_, Step::Start { from: Some(f), .. }) => f.clone(),
            (_, Step::Stop { from, .. }) => from.clone(),
            (_, Step::Start { to, from: None }) => to.clone(),
        };
        let goes_on = match op.reason {
            Reason::Shed | Reason::Redistribute => self
                .open_alerts
                .get(&op.cause.node, &op.cause.problem())
                .is_some_and(|a| a.severity >= op.severity),
            Reason::Failover => true,
            // Going home, or starting again at home, only while it is calm.
            Reason::Failback | Reason::Restart => {
                self.online(&node) && !self.has_open_alert(&node, Severity::Warning)
            }
            Reason::Supervise => false,
        };
        if goes_on {
            self.next_step(op.reason, &node, &op.cause, op.severity, &[], now, out);
        }
    }

    /// A heartbeat from `node` listed its workloads: a copy running where
    /// it is not placed is stopped (fenced); a workload placed here that
    /// is stopped is started again.
    pub(super) fn placement_heartbeat(
        &mut self,
        node: &NodeName,
        seen: &[Seen],
        agent_at: Timestamp,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        if self.placement.fleet.workloads.is_empty() {
            return;
        }
        for s in seen {
            let Some(p) = self.placement.by_workload.get(&s.name) else {
                continue;
            };
            if p.op_touches(node) {
                continue;
            }
            let stopping = self
                .pending
                .of(node)
                .any(|(_, q)| workload_of(&q.problem) == Some(s.name.as_str()));
            if stopping {
                continue;
            }
            let placed_here = p.at.as_ref() == Some(node);
            if s.running && !placed_here {
                let epoch = p.epoch;
                let at = p.at.clone();
                let cause = self.placement_alert(node, &s.name, now);
                let problem = problem_of(&s.name);
                if let Some((why, _)) = self.step_held(node, &cause.kind, &problem, STOP, now) {
                    self.counters
                        .inc(skos_core::counters::Counter::ActionsSkipped(why.as_str()));
                    continue;
                }
                let Ok(trial) = self.admit_step(node, &problem, STOP, now, out) else {
                    continue;
                };
                out.push(audit(
                    AuditEvent::Placement,
                    now,
                    Some(node),
                    format!(
                        "{} runs on {node} but is placed {}: fenced (stopped here)",
                        s.name,
                        match &at {
                            Some(a) => format!("on {a}"),
                            None => "nowhere (stopped)".into(),
                        }
                    ),
                    json!({"workload": s.name, "outcome": "fence", "node": node, "at": at}),
                ));
                // Named by the heartbeat that saw the copy (the same on
                // every coordinator), so a fence that failed is sent anew.
                let action_id = format!(
                    "{node}:{STOP}:{}:{epoch}:fence:{}",
                    s.name,
                    agent_at.timestamp_millis()
                );
                let how = Send { fence: true, trial };
                self.send_workload_command(
                    node,
                    STOP,
                    action_id,
                    &s.name,
                    &cause,
                    Severity::Warning,
                    how,
                    now,
                    out,
                );
            } else if s.stopped && placed_here && !self.has_open_alert(node, Severity::Critical) {
                let name = s.name.clone();
                let cause = self.placement_alert(node, &name, now);
                let step = Step::Start {
                    to: node.clone(),
                    from: None,
                };
                if let Err((why, _)) = self.send_step(
                    &name,
                    Reason::Supervise,
                    step,
                    &cause,
                    Severity::Warning,
                    Vec::new(),
                    now,
                    out,
                ) {
                    self.counters
                        .inc(skos_core::counters::Counter::ActionsSkipped(why.as_str()));
                }
            }
        }
    }

    /// The alert a fence or a supervising start answers (none was raised:
    /// it is the heartbeat's own finding).
    fn placement_alert(&self, node: &NodeName, workload: &str, now: Timestamp) -> Alert {
        let mut a = self.own_alert(
            node,
            AlertKind::Other,
            Severity::Warning,
            format!("workload {workload} is not where it is placed"),
            json!({"sensor": problem_of(workload).as_str()}),
            now,
        );
        a.alert_id = format!("placement-{node}-{workload}");
        a
    }

    /// Periodic placement work: failover of nodes offline past
    /// `failover_delay`, failback and restart once a node has been calm,
    /// the `fleet_degraded` alert cleared once the fleet recovers.
    pub(super) fn placement_tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        if self.placement.fleet.workloads.is_empty() && self.placement.fleet.orchestrated.is_empty()
        {
            return;
        }
        self.expire_approvals(now, out);
        let nodes: Vec<NodeName> = self.nodes.keys().cloned().collect();
        for node in &nodes {
            let calm = self.online(node) && !self.has_open_alert(node, Severity::Warning);
            if calm {
                self.placement.calm_since.entry(node.clone()).or_insert(now);
            } else {
                self.placement.calm_since.remove(node);
            }
        }
        self.fleet_recovered(now, out);
        let delay =
            secs(self.cfg.coordinator.heartbeat_timeout + self.placement.fleet.failover_delay);
        for node in &nodes {
            let Some(state) = self.nodes.get(node) else {
                continue;
            };
            let wanted = if self.orchestrated(node) {
                !self.drained(node) && !self.draining(node)
            } else {
                self.has_essential_at(node)
            };
            if state.offline && now - state.last_seen >= delay && wanted {
                if self.busy(node, Reason::Failover) || self.waiting(node, Reason::Failover) {
                    continue;
                }
                let cause = self
                    .open_alerts
                    .of(node)
                    .find(|(_, a)| a.kind == AlertKind::HeartbeatMissing)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| self.placement_alert(node, "*", now));
                let mut local = Vec::new();
                self.start_plan(
                    Reason::Failover,
                    node,
                    &cause,
                    Severity::Critical,
                    false,
                    now,
                    &mut local,
                );
                self.quietly((node.clone(), Reason::Failover), local, out);
            }
        }
        for node in &nodes {
            let Some(since) = self.placement.calm_since.get(node).copied() else {
                continue;
            };
            // Calm again: what a person denied for its last alert is over.
            self.placement.denied.retain(|(n, _, _)| n != node);
            let calm_for = now - since;
            if calm_for >= secs(self.placement.fleet.restart_hold)
                && !self.busy(node, Reason::Restart)
                && self
                    .placement
                    .all()
                    .any(|p| p.at.is_none() && p.shed_from.as_ref() == Some(node) && p.op.is_none())
            {
                let cause = self.placement_alert(node, "*", now);
                let mut local = Vec::new();
                if self
                    .step_held(
                        node,
                        &cause.kind,
                        &cause.problem(),
                        Reason::Restart.as_str(),
                        now,
                    )
                    .is_none()
                {
                    self.next_step(
                        Reason::Restart,
                        node,
                        &cause,
                        Severity::Warning,
                        &[],
                        now,
                        &mut local,
                    );
                }
                self.quietly((node.clone(), Reason::Restart), local, out);
            }
            if self.placement.fleet.failback == Failback::Auto
                && !self.waiting(node, Reason::Failback)
                && calm_for >= secs(self.placement.fleet.failback_hold)
                && self.orchestrated(node)
                && self.drained(node)
            {
                // Handed back to its orchestrator's scheduling.
                let cause = self.placement_alert(node, "*", now);
                if self.placement.fleet.approval.contains(&Reason::Failback) {
                    self.request_approval(
                        Reason::Failback,
                        node,
                        &cause,
                        Severity::Warning,
                        now,
                        out,
                    );
                } else {
                    self.drain_step(Reason::Failback, node, &cause, Severity::Warning, now, out);
                }
                continue;
            }
            if self.placement.fleet.failback == Failback::Auto
                && !self.waiting(node, Reason::Failback)
                && calm_for >= secs(self.placement.fleet.failback_hold)
                && !self.busy(node, Reason::Failback)
                && self.away_from_home(node)
            {
                let cause = self.placement_alert(node, "*", now);
                if self.placement.fleet.approval.contains(&Reason::Failback) {
                    self.request_approval(
                        Reason::Failback,
                        node,
                        &cause,
                        Severity::Warning,
                        now,
                        out,
                    );
                } else {
                    let mut local = Vec::new();
                    self.next_step(
                        Reason::Failback,
                        node,
                        &cause,
                        Severity::Warning,
                        &[],
                        now,
                        &mut local,
                    );
                    self.quietly((node.clone(), Reason::Failback), local, out);
                }
            }
        }
    }

    /// Whether a `reason` plan for `node` waits for approval.
    fn waiting(&self, node: &NodeName, reason: Reason) -> bool {
        self.placement
            .approvals
            .values()
            .any(|a| &a.node == node && a.plan == reason)
    }

    /// Make `reason` for `node` wait for a person (once: a plan already
    /// waiting is not asked for again).
    fn request_approval(
        &mut self,
        reason: Reason,
        node: &NodeName,
        cause: &Alert,
        severity: Severity,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let action = reason.as_str();
        let waiting = self
            .placement
            .approvals
            .values()
            .find(|a| &a.node == node && a.plan == reason)
            .map(|a| a.id.clone());
        if let Some(id) = waiting {
            self.skip(
                (node, &cause.problem(), action),
                SkipReason::AwaitingApproval,
                format!("waiting for approval {id}"),
                now,
                out,
            );
            return;
        }
        let id = format!("{action}-{node}-{}", &cause.id_digest()[..8]);
        let expires_at = now + secs(self.placement.fleet.approval_timeout);
        let approval = Approval {
            id: id.clone(),
            plan: reason,
            node: node.clone(),
            cause: Box::new(cause.clone()),
            severity,
            requested_at: now,
            expires_at,
        };
        let until = skos_core::timefmt::format(&expires_at);
        out.push(audit(
            AuditEvent::Approval,
            now,
            Some(node),
            format!("{action} on {node} waits for approval: skos approve {id} (or skos deny {id}) before {until}"),
            json!({"id": id, "plan": action, "state": "waiting", "alert_id": cause.alert_id, "expires_at": until}),
        ));
        self.placement.approvals.insert(id, approval);
    }

    /// A person approved `id`: the plan starts (the fleet gate still
    /// applies).
    ///
    /// # Errors
    /// [`ApprovalError::Unknown`] when no plan waits under `id`.
    pub fn approve(
        &mut self,
        id: &str,
        by: &str,
        now: Timestamp,
    ) -> Result<Vec<Effect>, ApprovalError> {
        let a = self.take_approval(id, now)?;
        if !self.still_needed(&a) {
            return Ok(vec![audit(
                AuditEvent::Approval,
                now,
                Some(&a.node),
                format!(
                    "{} on {} approved by {by}, but no longer needed: {} is over",
                    a.plan.as_str(),
                    a.node,
                    a.cause.problem()
                ),
                json!({"id": a.id, "plan": a.plan.as_str(), "state": "not_needed", "by": by}),
            )]);
        }
        let mut out = vec![audit(
            AuditEvent::Approval,
            now,
            Some(&a.node),
            format!("{} on {} approved by {by}", a.plan.as_str(), a.node),
            json!({"id": a.id, "plan": a.plan.as_str(), "state": "approved", "by": by}),
        )];
        self.start_plan(a.plan, &a.node, &a.cause, a.severity, true, now, &mut out);
        Ok(out)
    }

    /// A person denied `id`: the plan is dropped.
    ///
    /// # Errors
    /// [`ApprovalError::Unknown`] when no plan waits under `id`.
    pub fn deny(
        &mut self,
        id: &str,
        by: &str,
        now: Timestamp,
    ) -> Result<Vec<Effect>, ApprovalError> {
        let a = self.take_approval(id, now)?;
        self.placement
            .denied
            .insert((a.node.clone(), a.plan, a.cause.alert_id.clone()));
        Ok(vec![audit(
            AuditEvent::Approval,
            now,
            Some(&a.node),
            format!("{} on {} denied by {by}", a.plan.as_str(), a.node),
            json!({"id": a.id, "plan": a.plan.as_str(), "state": "denied", "by": by}),
        )])
    }

    /// Take the approval `id` if it is still waiting (not past its
    /// expiry: the tick may not have dropped it yet).
    fn take_approval(&mut self, id: &str, now: Timestamp) -> Result<Approval, ApprovalError> {
        match self.placement.approvals.get(id) {
            Some(a) if now < a.expires_at => {}
            _ => return Err(ApprovalError::Unknown(id.to_string())),
        }
        self.placement
            .approvals
            .remove(id)
            .ok_or_else(|| ApprovalError::Unknown(id.to_string()))
    }

    /// Whether what an approval answers is still so: a failover's node
    /// still offline or its alert still open at its level, another
    /// plan's alert still open at its level, a failback's node still calm.
    fn still_needed(&self, a: &Approval) -> bool {
        let open = self
            .open_alerts
            .get(&a.node, &a.cause.problem())
            .is_some_and(|o| o.severity >= a.severity);
        match a.plan {
            Reason::Failover => open || self.nodes.get(&a.node).is_some_and(|n| n.offline),
            Reason::Failback | Reason::Restart | Reason::Supervise => {
                self.online(&a.node) && !self.has_open_alert(&a.node, Severity::Warning)
            }
            Reason::Shed | Reason::Redistribute => open,
        }
    }

    /// Drop the approvals nobody answered in time.
    fn expire_approvals(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let expired: Vec<String> = self
            .placement
            .approvals
            .values()
            .filter(|a| now >= a.expires_at)
            .map(|a| a.id.clone())
            .collect();
        for id in expired {
            let Some(a) = self.placement.approvals.remove(&id) else {
                continue;
            };
            out.push(audit(
                AuditEvent::Approval,
                now,
                Some(&a.node),
                format!(
                    "{} on {} expired: nobody approved it in time",
                    a.plan.as_str(),
                    a.node
                ),
                json!({"id": a.id, "plan": a.plan.as_str(), "state": "expired"}),
            ));
        }
    }

    /// Keep `local` (what a plan tried on a tick) in `out`, but its audit
    /// records only when its outcome differs from the last try's for
    /// (node, plan) or it sent something: a plan that can do nothing
    /// says so once, not on every tick (the repeats are counted).
    fn quietly(&mut self, key: (NodeName, Reason), local: Vec<Effect>, out: &mut Vec<Effect>) {
        let acted = local
            .iter()
            .any(|e| matches!(e, Effect::Command(..) | Effect::Alert(..)));
        if acted {
            self.placement.quiet.remove(&key);
            out.extend(local);
            return;
        }
        let outcome: Vec<String> = local
            .iter()
            .filter_map(|e| match e {
                Effect::Audit(a) => Some(format!(
                    "{}:{}",
                    a.event_type,
                    a.data
                        .get("reason")
                        .or_else(|| a.data.get("outcome"))
                        .or_else(|| a.data.get("state"))
                        .map(Value::to_string)
                        .unwrap_or_default()
                )),
                _ => None,
            })
            .collect();
        let outcome = outcome.join(",");
        if outcome.is_empty() {
            return;
        }
        if self.placement.quiet.get(&key) == Some(&outcome) {
            self.counters
                .inc(skos_core::counters::Counter::PlacementRepeatsQuiet);
            return;
        }
        self.placement.quiet.insert(key, outcome);
        out.extend(local);
    }

    /// Whether an essential workload is placed on `node`.
    fn has_essential_at(&self, node: &NodeName) -> bool {
        self.placement.fleet.workloads.iter().any(|w| {
            w.essential
                && w.movable
                && self
                    .placement
                    .by_workload
                    .get(&w.name)
                    .is_some_and(|p| p.at.as_ref() == Some(node) && p.op.is_none())
        })
    }

    /// Whether a workload whose home is `node` runs elsewhere.
    fn away_from_home(&self, node: &NodeName) -> bool {
        self.placement.fleet.workloads.iter().any(|w| {
            &w.home == node
                && self
                    .placement
                    .by_workload
                    .get(&w.name)
                    .is_some_and(|p| p.op.is_none() && p.at.as_ref().is_some_and(|a| a != node))
        })
    }
}

#[cfg(test)]
mod tests;
