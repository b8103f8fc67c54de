//! What is particular to each kind of problem, behind one small trait.
//!
//! The engine's flow (gates, dispatch, verification deadlines, escalation,
//! audit) is the same for every problem; a [`ProblemKind`] says how its
//! actions are carried out (all at once, or a ladder one at a time), which
//! heartbeat value verifies a fix and below what, and adds hooks on a
//! heartbeat, a cleared alert, a result, a command that got no result, a
//! verified or failed fix and a tick. One module per kind; [`of`] and
//! [`ALL`] are the registry.
//!
//! To add a problem kind: a module here implementing [`ProblemKind`] (only
//! the methods whose default does not fit), one arm in [`of`], one entry in
//! [`ALL`] if it has heartbeat or tick hooks.

use serde_json::Value;
use skos_core::config::{Config, Thresholds};
use skos_core::events::ProblemKey;
use skos_core::protocol::{Alert, AlertKind, CommandResult, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{Effect, Engine, LastHeartbeat, Pending, Verification};

pub(super) mod clock;
pub(super) mod loops;
pub(super) mod mesh;
pub(super) mod offline;
pub(super) mod storage;
pub(super) mod thermal;

/// What proves a fix worked: `metric` (a heartbeat value) below `below` in
/// a heartbeat the agent sent after its result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Recovery {
    pub metric: &'static str,
    pub below: f64,
}

pub(crate) trait ProblemKind: Sync {
    /// Carry out the actions a decision chose for `alert` at `severity`.
    /// By default every action is dispatched at once.
    fn plan(
        &self,
        eng: &mut Engine,
        alert: &Alert,
        severity: Severity,
        actions: Vec<String>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        for action in actions {
            eng.dispatch(alert, severity, &action, now, out);
        }
    }

    /// What verifies a fix for `alert` decided at `severity`; `None`: a
    /// succeeded result is the success.
    fn recovery(&self, _cfg: &Config, _alert: &Alert, _severity: Severity) -> Option<Recovery> {
        None
    }

    /// The value of `metric`, which verifies a fix for `problem`, in a
    /// node's last heartbeat.
    fn metric_value(&self, hb: &LastHeartbeat, metric: &str, _problem: &ProblemKey) -> Option<f64> {
        hb.metric(metric)
    }

    /// A heartbeat from `node` was recorded.
    fn on_heartbeat(
        &self,
        _eng: &mut Engine,
        _node: &NodeName,
        _now: Timestamp,
        _out: &mut Vec<Effect>,
    ) {
    }

    /// An alert of this kind came back to normal.
    fn on_clear(&self, _eng: &mut Engine, _alert: &Alert, _now: Timestamp, _out: &mut Vec<Effect>) {
    }

    /// A command for a problem of this kind was answered (after the
    /// generic judgement: breaker, verification).
    fn on_result(
        &self,
        _eng: &mut Engine,
        _p: &Pending,
        _result: &CommandResult,
        _now: Timestamp,
        _out: &mut Vec<Effect>,
    ) {
    }

    /// A command for a problem of this kind got no result by its deadline
    /// plus the grace period (already closed as `no_result` and counted
    /// against its breaker).
    fn on_no_result(
        &self,
        _eng: &mut Engine,
        _p: &Pending,
        _now: Timestamp,
        _out: &mut Vec<Effect>,
    ) {
    }

    /// A fix was verified.
    fn on_verified(&self, _eng: &mut Engine, _v: &Verification) {}

    /// A fix did not verify in time (already counted against its breaker).
    /// By default the alert is raised one severity.
    fn on_not_verified(
        &self,
        eng: &mut Engine,
        v: Verification,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        eng.escalate(v, now, out);
    }

    /// Periodic work.
    fn on_tick(&self, _eng: &mut Engine, _now: Timestamp, _out: &mut Vec<Effect>) {}
}

/// A kind with nothing particular (the coordinator's own circuit alerts,
/// kinds it does not know).
struct Plain;

impl ProblemKind for Plain {}

/// The module that handles alerts of `kind`.
pub(super) fn of(kind: &AlertKind) -> &'static dyn ProblemKind {
    match kind {
        AlertKind::Thermal => &thermal::Thermal,
        AlertKind::Storage => &storage::Storage,
        AlertKind::Mesh => &mesh::Mesh,
        AlertKind::Loop => &loops::Loops,
        AlertKind::HeartbeatMissing => &offline::Offline,
        AlertKind::ClockSkew => &clock::Clock,
        AlertKind::Circuit | AlertKind::Audit | AlertKind::FleetDegraded | AlertKind::Other => {
            &Plain
        }
    }
}

/// Every kind with heartbeat or tick hooks, in the order they run.
pub(super) const ALL: &[&dyn ProblemKind] = &[
    &thermal::Thermal,
    &mesh::Mesh,
    &offline::Offline,
    &clock::Clock,
];

/// The threshold of a severity in a table of thresholds (normal counts as
/// warning: a fix decided at normal has nothing below it to reach).
pub(super) fn level_threshold(t: &Thresholds, s: Severity) -> f64 {
    match s {
        Severity::Normal | Severity::Warning => t.warning,
        Severity::Critical => t.critical,
        Severity::Emergency => t.emergency,
    }
}

/// An alert's `details.event` (mesh), or "".
pub(super) fn event_of(alert: &Alert) -> &str {
    alert
        .details
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("")
}
