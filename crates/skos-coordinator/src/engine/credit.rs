//! Verification that credits only the fix.
//!
//! A fix worked when its metric fell below the alert level's threshold
//! after the change took effect and then stayed below it for
//! `coordinator.verify_hold_seconds`. "After the change took effect" is a
//! reading the agent sent at or after its `succeeded` result (the result's
//! timestamp is when it had carried the action out), never one sent before:
//! a command merely sent has changed nothing yet. So the cooling of a flap
//! (hot for three seconds, cool for three) is not credited: it began before
//! the change, or it does not last for the hold.
//!
//! The readings of a fix are followed from the first heartbeat after its
//! command was sent, through the wait for its result ([`Watches`]), into
//! its verification's [`Descent`]: the newest reading seen and since when
//! the metric has been below the level. The alert is the starting point:
//! it says the metric was at or above the level when it was raised.
//!
//! At the verification's deadline (`coordinator.verify_within` after the
//! result) the metric is
//! - still at or above the level: the fix failed (a breaker failure, and
//!   its kind escalates or moves on);
//! - below it since a fall after the change, its hold not over: it gets the
//!   rest of the hold (and one heartbeat interval) once;
//! - below it since before the change (or its hold never ended): the
//!   problem is gone but not provably by the fix, `uncredited`: neither a
//!   breaker success nor a failure, nothing escalates.
//!
//! A fix of a problem that starts flapping is `uncredited` at once (see
//! `flap`).

use std::collections::BTreeMap;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::json;
use skos_core::breaker::BreakerKey;
use skos_core::catalogue;
use skos_core::counters::Counter;
use skos_core::level::secs;
use skos_core::protocol::{Alert, AuditEvent, Severity};
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;

use super::kinds::{self, Recovery};
use super::{audit, Effect, Engine, LastHeartbeat, Pending, Verification, ACTOR};
use crate::status::ActionState;

/// What the readings since a command was sent say about its metric's
/// fall, in the agent's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Descent {
    /// The newest reading taken into account; an older one (a heartbeat
    /// held up on the way) changes nothing.
    #[serde(default)]
    seen: Option<Timestamp>,
    /// The first reading below the level since the last one at or above
    /// it; `None` while the metric is at or above the level (as it was when
    /// the alert was raised).
    #[serde(default)]
    low_since: Option<Timestamp>,
    /// The deadline was moved once already for the rest of a hold.
    #[serde(default)]
    extended: bool,
    /// No reading at or above the level since the alert: the coordinator's
    /// own alerts (an escalation) claim a level no reading showed, so a
    /// fix of one is credited only once a reading shows the metric at or
    /// above the level and then a fall after the change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unproven: bool,
}

/// Why a fix was not credited although its metric is below the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Uncredited {
    /// The metric fell before the change took effect.
    FellBefore,
    /// It fell after the change, but no reading showed it held for the
    /// whole hold before the (extended) deadline.
    HoldUnfinished,
    /// The problem started flapping.
    Flapping,
    /// No reading ever showed the level the coordinator's own alert (an
    /// escalation) claimed.
    Unproven,
}

impl Uncredited {
    /// Its `reason` in the audit record.
    const fn as_str(self) -> &'static str {
        match self {
            Uncredited::FellBefore => "fell_before_change",
            Uncredited::HoldUnfinished => "hold_unfinished",
            Uncredited::Flapping => "flapping",
            Uncredited::Unproven => "level_unproven",
        }
    }

    /// What it means, for the summary and `skos status`.
    const fn says(self) -> &'static str {
        match self {
            Uncredited::FellBefore => "it fell before the change took effect",
            Uncredited::HoldUnfinished => "it did not stay down for the hold",
            Uncredited::Flapping => "the problem is flapping",
            Uncredited::Unproven => "no reading ever showed the level it was sent for",
        }
    }
}

/// What a verification's readings say at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtDeadline {
    /// Still at or above the level (or never read since).
    Failed,
    /// Below it since a fall after the change, `rest` of the hold to go.
    Holding { rest: Duration },
    /// Below it, but not creditable.
    Uncredited(Uncredited),
}

impl Descent {
    /// Where a fix for `alert` starts. An agent's alert is a reading: the
    /// metric at or above the level as of the alert, in the agent's clock,
    /// so readings older than it are left out. The coordinator's own alerts
    /// (escalations) are in its clock, which the agent's readings are not
    /// compared with, and are no reading: the level is unproven until a
    /// reading shows it.
    pub(super) fn from_alert(alert: &Alert) -> Self {
        let own = alert.agent_id == ACTOR;
        Self {
            seen: (!own).then_some(alert.timestamp),
            low_since: None,
            extended: false,
            unproven: own,
        }
    }

    /// Take a reading of `value` the agent sent `at`, against the level
    /// `below`.
    pub(super) fn observe(&mut self, at: Timestamp, value: f64, below: f64) {
        if self.seen.is_some_and(|seen| at <= seen) {
            return;
        }
        self.seen = Some(at);
        if value < below {
            self.low_since.get_or_insert(at);
        } else {
            self.low_since = None;
            self.unproven = false;
        }
    }

    /// When the metric fell, if it is below the level since a reading sent
    /// at or after `after` (when the change took effect; `None`: any).
    pub(super) fn fell_after(&self, after: Option<Timestamp>) -> Option<Timestamp> {
        self.low_since
            .filter(|_| !self.unproven)
            .filter(|&fell| after.is_none_or(|after| fell >= after))
    }

    /// How long the metric has stayed below the level since a fall after
    /// `after`, up to the newest reading.
    pub(super) fn held(&self, after: Option<Timestamp>) -> Option<Duration> {
        Some(self.seen? - self.fell_after(after)?)
    }

    /// Whether the readings credit the fix: a fall after `after`, held for
    /// `hold`.
    pub(super) fn credits(&self, after: Option<Timestamp>, hold: Duration) -> bool {
        self.held(after).is_some_and(|held| held >= hold)
    }

    /// What the readings say when the deadline comes.
    fn at_deadline(&self, after: Option<Timestamp>, hold: Duration) -> AtDeadline {
        match (self.low_since, self.held(after)) {
            (None, _) => AtDeadline::Failed,
            (Some(_), _) if self.unproven => AtDeadline::Uncredited(Uncredited::Unproven),
            (Some(_), Some(held)) if !self.extended => AtDeadline::Holding {
                rest: (hold - held).max(Duration::zero()),
            },
            (Some(_), Some(_)) => AtDeadline::Uncredited(Uncredited::HoldUnfinished),
            (Some(_), None) => AtDeadline::Uncredited(Uncredited::FellBefore),
        }
    }
}

/// The readings of commands waiting for their result, by node and action
/// id: what their verification starts from.
#[derive(Debug, Default)]
pub(super) struct Watches {
    by_node: BTreeMap<NodeName, BTreeMap<String, Descent>>,
}

impl Watches {
    /// Drop every reading followed for `node` (a forgotten node).
    pub(super) fn forget(&mut self, node: &NodeName) {
        self.by_node.remove(node);
    }

    /// Take out the readings of the command `action_id` sent to `node`.
    fn take(&mut self, node: &NodeName, action_id: &str) -> Option<Descent> {
        let of_node = self.by_node.get_mut(node)?;
        let taken = of_node.remove(action_id);
        if of_node.is_empty() {
            self.by_node.remove(node);
        }
        taken
    }
}

/// The detail an escalation carries, for the record: the level its
/// failed fix was judged against.
pub(super) const ESCALATED_FROM_BELOW: &str = "escalated_from_below";

/// What verifies the fix `p` is waiting for a result on, if anything does.
/// A fix of an escalation (the coordinator's own alert) must bring the
/// metric below the level the failed fix was judged against, the one of
/// the severity below (from the config, never from the alert's payload,
/// which a node could forge), not only below the escalated level no
/// reading showed: a `throttle_100` that leaves a CPU at 87 °C, critical
/// since 85 °C, has failed.
pub(super) fn recovery_of(cfg: &skos_core::config::Config, p: &Pending) -> Option<Recovery> {
    if !catalogue::is_verifiable(&p.action) {
        return None;
    }
    problem_level(cfg, &p.alert, p.severity)
}

/// The metric that measures `alert`'s problem decided at `severity`, and
/// the level it is at while the problem is there: the severity's
/// threshold, or for an escalation the lower one of the severity below
/// (see [`recovery_of`]). `None` for a problem no metric measures.
pub(super) fn problem_level(
    cfg: &skos_core::config::Config,
    alert: &Alert,
    severity: Severity,
) -> Option<Recovery> {
    let kind = kinds::of(&alert.kind);
    let mut r = kind.recovery(cfg, alert, severity)?;
    let escalated = alert.agent_id == ACTOR && alert.details.contains_key(ESCALATED_FROM_BELOW);
    if let Some(below) = severity.previous().filter(|_| escalated) {
        if let Some(from) = kind.recovery(cfg, alert, below) {
            r.below = r.below.min(from.below);
        }
    }
    Some(r)
}

/// The `level` a command for `action` answering `alert` at `severity`
/// carries, for the agent's check just before acting that the problem is
/// still there ([`skos_core::protocol::Command::level`]): the problem's
/// level ([`problem_level`]). None for an action not rechecked (restoring
/// ones, workload steps), for a prediction (its reading is below every
/// threshold by design; it is acted on as raised) and for a problem no
/// metric measures.
pub(super) fn command_level(
    cfg: &skos_core::config::Config,
    alert: &Alert,
    severity: Severity,
    action: &str,
) -> Option<f64> {
    if !catalogue::rechecked_before_acting(action)
        || kinds::event_of(alert) == skos_core::events::PREDICTED
    {
        return None;
    }
    problem_level(cfg, alert, severity).map(|r| r.below)
}

/// The value of `v`'s metric in a heartbeat.
fn value_of(hb: &LastHeartbeat, v: &Verification) -> Option<f64> {
    kinds::of(&v.alert.kind).metric_value(hb, &v.metric, &v.problem)
}

impl Engine {
    /// Start verifying a fix whose command `succeeded`, from the readings
    /// seen since it was sent; a fix of a flapping problem is uncredited at
    /// once.
    pub(super) fn start_verification(
        &mut self,
        mut v: Verification,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        v.descent = self
            .watches
            .take(&v.node, &v.action_id)
            .unwrap_or_else(|| Descent::from_alert(&v.alert));
        if self.flaps.is_flapping(&v.node, &v.problem) {
            self.uncredit(v, Uncredited::Flapping, now, out);
            return;
        }
        let node = v.node.clone();
        self.verifications.push(v);
        // The node may have reported since the change took effect.
        self.check_verifications(&node, now, out);
    }

    /// Take `node`'s last heartbeat into account: in the readings of its
    /// commands waiting for a result, and in its verifications, closing
    /// those it credits (only that node's are looked at).
    pub(super) fn check_verifications(
        &mut self,
        node: &NodeName,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Some(hb) = self.nodes.get(node).map(|n| &n.heartbeat) else {
            return;
        };
        let at = hb.timestamp;
        // Commands waiting for a result: those no longer pending are
        // forgotten.
        let mut before = self.watches.by_node.remove(node).unwrap_or_default();
        let mut watched = BTreeMap::new();
        for (id, p) in self.pending.of(node) {
            let Some(recovery) = recovery_of(&self.cfg, p) else {
                continue;
            };
            let mut d = before
                .remove(id)
                .unwrap_or_else(|| Descent::from_alert(&p.alert));
            let value = kinds::of(&p.alert.kind).metric_value(hb, recovery.metric, &p.problem);
            if let Some(x) = value {
                d.observe(at, x, recovery.below);
            }
            watched.insert(id.clone(), d);
        }
        if !watched.is_empty() {
            self.watches.by_node.insert(node.clone(), watched);
        }
        for v in self.verifications.of_mut(node) {
            if let Some(x) = value_of(hb, v) {
                v.descent.observe(at, x, v.below);
            }
        }
        let hold = secs(self.cfg.coordinator.verify_hold_seconds);
        let done = self
            .verifications
            .take_of(node, |v| v.descent.credits(v.after, hold));
        for v in done {
            self.credit(v, now, out);
        }
    }

    /// A fix whose metric fell after the change and stayed down for the
    /// hold worked: audited, counted, a breaker success.
    fn credit(&mut self, v: Verification, now: Timestamp, out: &mut Vec<Effect>) {
        let node = v.node.clone();
        let value = self
            .nodes
            .get(&node)
            .and_then(|n| value_of(&n.heartbeat, &v));
        let fell_at = v.descent.fell_after(v.after);
        let held = v
            .descent
            .held(v.after)
            .map(|d| d.num_milliseconds() as f64 / 1000.0);
        kinds::of(&v.alert.kind).on_verified(self, &v);
        self.ledger_outcome(
            (&node, &v.problem, &v.action),
            super::ledger::Outcome::Verified,
            Some(v.alert.timestamp),
            now,
        );
        self.counters.inc(Counter::VerificationsSucceeded);
        self.set_action_state(
            &v.action_id,
            &node,
            ActionState::Verified,
            &format!(
                "{} fell to {:.1} and stayed below {:.1} for {:.0}s",
                v.metric,
                value.unwrap_or(f64::NAN),
                v.below,
                held.unwrap_or(0.0)
            ),
        );
        out.push(audit(
            AuditEvent::Verification,
            now,
            Some(&node),
            format!(
                "{} on {node} worked: {} {:.1} < {:.1}, down for {:.0}s since the change",
                v.action,
                v.metric,
                value.unwrap_or(f64::NAN),
                v.below,
                held.unwrap_or(0.0)
            ),
            json!({
                "action_id": v.action_id,
                "action": v.action,
                "problem": v.problem.as_str(),
                "alert_id": v.alert.alert_id,
                "alert_at": timefmt::format(&v.alert.timestamp),
                "outcome": "succeeded",
                "metric": v.metric,
                "value": value,
                "below": v.below,
                "fell_at": fell_at.map(|t| timefmt::format(&t)),
                "held_seconds": held,
            }),
        ));
        let key = BreakerKey::new(node.as_str(), v.problem.as_str(), &v.action);
        if let Some(t) = self.breakers.record_success(&key) {
            self.breaker_transition(&key, t, now, out);
        }
    }

    /// A fix whose metric is below the level without proof that the fix
    /// brought it there: audited and counted as `uncredited`, neither a
    /// breaker success nor a failure (a half-open trial is given back); a
    /// mesh ladder for its problem stops (the problem is gone, or flaps).
    pub(super) fn uncredit(
        &mut self,
        v: Verification,
        why: Uncredited,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let node = v.node.clone();
        let value = self
            .nodes
            .get(&node)
            .and_then(|n| value_of(&n.heartbeat, &v));
        self.counters.inc(Counter::VerificationsUncredited);
        self.ledger_outcome(
            (&node, &v.problem, &v.action),
            super::ledger::Outcome::Uncredited,
            None,
            now,
        );
        self.set_action_state(
            &v.action_id,
            &node,
            ActionState::NotVerified,
            &format!("not credited: {}", why.says()),
        );
        out.push(audit(
            AuditEvent::Verification,
            now,
            Some(&node),
            format!(
                "{} on {node} not credited: {} ({} {:.1}, level {:.1})",
                v.action,
                why.says(),
                v.metric,
                value.unwrap_or(f64::NAN),
                v.below
            ),
            json!({
                "action_id": v.action_id,
                "action": v.action,
                "problem": v.problem.as_str(),
                "outcome": "uncredited",
                "reason": why.as_str(),
                "metric": v.metric,
                "value": value,
                "below": v.below,
            }),
        ));
        let key = BreakerKey::new(node.as_str(), v.problem.as_str(), &v.action);
        self.breakers.release_trial(&key);
        self.ladders.remove(&node, &v.problem);
    }

    /// The recovery of `node`'s `problem` was decided (its metric stayed
    /// below the level for the kind's own clear time, e.g. a throttle is
    /// lifted): its fixes still under verification are judged now, since
    /// the change they made is being undone. A fall after the change is
    /// credited, the recovery's clear time standing in for the rest of the
    /// hold; anything else is `uncredited`. Heat that comes back after the
    /// recovery is a new problem, not these fixes' failure.
    pub(super) fn settle_on_recovery(
        &mut self,
        node: &NodeName,
        problem: &skos_core::events::ProblemKey,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        for v in self.verifications.take_of(node, |v| &v.problem == problem) {
            if v.descent.fell_after(v.after).is_some() {
                self.credit(v, now, out);
            } else {
                let why = if v.descent.unproven {
                    Uncredited::Unproven
                } else {
                    Uncredited::FellBefore
                };
                self.uncredit(v, why, now, out);
            }
        }
    }

    /// Judge every verification whose deadline has come (see the module
    /// documentation).
    pub(super) fn verification_deadlines(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let hold = secs(self.cfg.coordinator.verify_hold_seconds);
        for mut v in self.verifications.take_due(now) {
            match v.descent.at_deadline(v.after, hold) {
                AtDeadline::Holding { rest } => {
                    let interval = self
                        .nodes
                        .get(&v.node)
                        .and_then(|n| n.heartbeat.interval_seconds)
                        .unwrap_or(self.cfg.agent.heartbeat_interval);
                    v.descent.extended = true;
                    v.deadline = now + rest + secs(interval);
                    self.verifications.push(v);
                }
                AtDeadline::Uncredited(why) => self.uncredit(v, why, now, out),
                AtDeadline::Failed => self.not_verified(v, now, out),
            }
        }
    }

    /// A fix that did not bring its metric down in time: a breaker
    /// failure, and its kind decides what follows (escalation, the next
    /// step of a ladder).
    fn not_verified(&mut self, v: Verification, now: Timestamp, out: &mut Vec<Effect>) {
        self.counters.inc(Counter::VerificationsFailed);
        self.ledger_outcome(
            (&v.node, &v.problem, &v.action),
            super::ledger::Outcome::Failed,
            None,
            now,
        );
        let value = self
            .nodes
            .get(&v.node)
            .and_then(|n| value_of(&n.heartbeat, &v));
        let within = self.cfg.coordinator.verify_within;
        self.set_action_state(
            &v.action_id,
            &v.node,
            ActionState::NotVerified,
            &match value {
                Some(value) => format!("{} still {value} after {within}s", v.metric),
                None => format!("{} not read after {within}s", v.metric),
            },
        );
        out.push(audit(
            AuditEvent::Verification,
            now,
            Some(&v.node),
            format!(
                "{} on {} did not work: {} not below {:.1} within {within}s",
                v.action, v.node, v.metric, v.below
            ),
            json!({"action_id": v.action_id, "action": v.action, "problem": v.problem.as_str(), "alert_id": v.alert.alert_id, "alert_at": timefmt::format(&v.alert.timestamp), "outcome": "failed", "metric": v.metric, "value": value, "below": v.below}),
        ));
        let key = BreakerKey::new(v.node.as_str(), v.problem.as_str(), &v.action);
        self.failure(&key, now, out);
        kinds::of(&v.alert.kind).on_not_verified(self, v, now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
    }

    fn hot_from(at: f64) -> Descent {
        Descent {
            seen: Some(t(at)),
            ..Descent::default()
        }
    }

    #[test]
    fn a_fall_after_the_change_held_for_the_hold_credits() {
        let mut d = hot_from(0.0);
        d.observe(t(1.0), 88.0, 85.0);
        d.observe(t(2.0), 80.0, 85.0);
        assert_eq!(d.fell_after(Some(t(1.5))), Some(t(2.0)));
        d.observe(t(11.0), 79.0, 85.0);
        assert!(!d.credits(Some(t(1.5)), secs(10.0)), "held 9 s");
        d.observe(t(12.0), 79.0, 85.0);
        assert!(d.credits(Some(t(1.5)), secs(10.0)));
    }

    /// An escalation claims a level no reading showed (87 °C escalated to
    /// emergency, whose level is 95 °C): a fix of it is credited only once
    /// a reading shows the level and then a fall after the change.
    #[test]
    fn an_escalations_level_is_unproven_until_a_reading_shows_it() {
        let mut escalated = Descent {
            unproven: true,
            ..Descent::default()
        };
        for s in 2..30 {
            escalated.observe(t(f64::from(s)), 87.0, 95.0);
        }
        assert!(!escalated.credits(Some(t(1.5)), secs(10.0)));
        assert_eq!(
            escalated.at_deadline(Some(t(1.5)), secs(10.0)),
            AtDeadline::Uncredited(Uncredited::Unproven)
        );
        escalated.observe(t(30.0), 96.0, 95.0);
        escalated.observe(t(31.0), 90.0, 95.0);
        escalated.observe(t(41.0), 90.0, 95.0);
        assert!(escalated.credits(Some(t(1.5)), secs(10.0)));
    }

    #[test]
    fn a_fall_before_the_change_never_credits_until_it_rises_and_falls_again() {
        let mut d = hot_from(0.0);
        d.observe(t(1.0), 70.0, 85.0);
        for s in 2..60 {
            d.observe(t(f64::from(s)), 70.0, 85.0);
        }
        assert!(!d.credits(Some(t(1.5)), secs(10.0)));
        assert_eq!(
            d.at_deadline(Some(t(1.5)), secs(10.0)),
            AtDeadline::Uncredited(Uncredited::FellBefore)
        );
        d.observe(t(60.0), 90.0, 85.0);
        d.observe(t(61.0), 70.0, 85.0);
        d.observe(t(71.0), 70.0, 85.0);
        assert!(d.credits(Some(t(1.5)), secs(10.0)));
    }

    #[test]
    fn a_rise_within_the_hold_starts_it_over_and_old_readings_change_nothing() {
        let mut d = hot_from(0.0);
        d.observe(t(2.0), 80.0, 85.0);
        d.observe(t(5.0), 88.0, 85.0);
        assert_eq!(d.at_deadline(None, secs(10.0)), AtDeadline::Failed);
        // Held up on the way: older than the newest reading.
        d.observe(t(4.0), 70.0, 85.0);
        assert_eq!(d.low_since, None);
        d.observe(t(6.0), 80.0, 85.0);
        d.observe(t(12.0), 80.0, 85.0);
        assert_eq!(
            d.at_deadline(None, secs(10.0)),
            AtDeadline::Holding { rest: secs(4.0) }
        );
        d.extended = true;
        assert_eq!(
            d.at_deadline(None, secs(10.0)),
            AtDeadline::Uncredited(Uncredited::HoldUnfinished)
        );
    }
}
