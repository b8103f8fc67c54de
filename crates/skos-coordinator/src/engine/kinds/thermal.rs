//! Heat: a throttle is verified when the sensor's temperature falls below
//! the alert level's threshold; a throttled node that has stayed cool (below
//! `warning - hysteresis`, [`skos_core::level::cleared`]) for `clear_for`
//! gets `reset_throttle`. Throttled means a throttle SKOS recorded
//! ([`LastHeartbeat::throttled`]): a cap the agent has no record of and
//! the coordinator no original for (an operator's power limit, a firmware
//! cap) raises the heartbeat's `throttle_level` but is no throttle to lift,
//! so it never sends a reset.
//!
//! The reset's action id is derived from the node, the agent's timestamp of
//! the heartbeat that started the cool period and the try's number, never
//! from the coordinator's clock, so two coordinators that decide the same
//! reset give it the same id. A reset that fails, expires or gets no result
//! is sent again (the next try) until a result confirms it, for as long as
//! the node is still throttled and cool. Every try passes the offline,
//! circuit breaker and rate limit gates; one held back goes out on a later
//! tick.

use serde_json::json;
use skos_core::breaker::{Admission, BreakerKey, Transition};
use skos_core::config::Config;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::policy;
use skos_core::protocol::{Alert, AlertKind, AuditEvent, CommandResult, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{level_threshold, ProblemKind, Recovery};
use crate::engine::state::CoolSince;
use crate::engine::{
    audit, key_str, Effect, Engine, LastHeartbeat, Pending, ResetAttempt, ResetRetry, SkipReason,
};

/// The action that lifts a throttle.
const RESET: &str = "reset_throttle";

pub(crate) struct Thermal;

impl ProblemKind for Thermal {
    fn recovery(&self, cfg: &Config, alert: &Alert, severity: Severity) -> Option<Recovery> {
        Some(Recovery {
            metric: policy::metric_for(alert.problem().as_str())?,
            below: level_threshold(&cfg.thermal.thresholds, severity),
        })
    }

    fn on_heartbeat(
        &self,
        eng: &mut Engine,
        node: &NodeName,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        eng.check_cool_down(node, now, out);
    }

    fn on_result(
        &self,
        eng: &mut Engine,
        p: &Pending,
        result: &CommandResult,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Some(tried) = p.reset else {
            return;
        };
        match result.status {
            ResultStatus::Succeeded => {}
            ResultStatus::Failed | ResultStatus::Expired => {
                eng.retry_reset_later(&p.node, tried, result.status.as_str(), now, out);
            }
            // Refused as of an older term: sent again, in the next.
            ResultStatus::Rejected if crate::engine::is_stale_term(result) => {
                eng.retry_reset_later(&p.node, tried, result.status.as_str(), now, out);
            }
            // A reset is never refused as not needed; an agent that did
            // anyway is not asked again, as for a refusal.
            ResultStatus::Rejected | ResultStatus::Unsupported | ResultStatus::NotNeeded => out.push(audit(
                AuditEvent::Decision,
                now,
                Some(&p.node),
                format!(
                    "{RESET} on {} was {}: not sent again",
                    p.node,
                    result.status.as_str()
                ),
                json!({"problem": p.problem, "actions": [], "reason": "recovery", "attempt": tried.attempt, "outcome": result.status}),
            )),
        }
    }

    fn on_no_result(&self, eng: &mut Engine, p: &Pending, now: Timestamp, out: &mut Vec<Effect>) {
        if let Some(tried) = p.reset {
            eng.retry_reset_later(&p.node, tried, "no_result", now, out);
        }
    }

    /// Resets held back (node offline, circuit open, rate limit) go out
    /// as soon as the gates let them.
    fn on_tick(&self, eng: &mut Engine, now: Timestamp, out: &mut Vec<Effect>) {
        let nodes: Vec<NodeName> = eng.reset_retries.keys().cloned().collect();
        for node in nodes {
            eng.retry_reset(&node, now, out);
        }
    }
}

/// The CPU problem a reset is filed under.
fn cpu() -> ProblemKey {
    ProblemKey::new(&AlertKind::Thermal, Some("cpu"))
}

/// Whether every temperature in a heartbeat (at least one) is below the
/// clear level.
fn cool(cfg: &Config, hb: &LastHeartbeat) -> bool {
    let mut temps = [hb.cpu_temp, hb.gpu_temp].into_iter().flatten().peekable();
    temps.peek().is_some()
        && temps.all(|t| {
            skos_core::level::cleared(cfg.thermal.thresholds.warning, cfg.thermal.hysteresis, t)
        })
}

/// The action id of one try at lifting a throttle.
fn reset_id(node: &NodeName, tried: ResetAttempt) -> String {
    format!(
        "{node}:thermal:{RESET}:{}:{}",
        tried.origin.timestamp_millis(),
        tried.attempt
    )
}

impl Engine {
    /// When a throttled node has been cool for `clear_for`, lift the throttle.
    fn check_cool_down(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        let clear_below = self.cfg.thermal.thresholds.warning - self.cfg.thermal.hysteresis;
        let clear_for = secs(self.cfg.thermal.clear_for);
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let hb = &state.heartbeat;
        // Most heartbeats end here (a node not throttled, or not cool):
        // the problem keys are made only past it.
        if !cool(&self.cfg, hb) || !hb.throttled(&state.throttle_originals) {
            state.cool_since = None;
            return;
        }
        let cpu = cpu();
        let gpu = ProblemKey::new(&AlertKind::Thermal, Some("gpu"));
        // A flapping problem keeps its throttle until it is stable.
        if self.flaps.is_flapping(node, &cpu) || self.flaps.is_flapping(node, &gpu) {
            state.cool_since = None;
            return;
        }
        let agent_at = hb.timestamp;
        let since = **state
            .cool_since
            .get_or_insert_with(|| Box::new(CoolSince { at: now, agent_at }));
        if now - since.at < clear_for {
            return;
        }
        let resetting = self.reset_retries.contains_key(node)
            || self.pending.of(node).any(|(_, p)| p.action == RESET);
        if resetting {
            return;
        }
        state.cool_since = None;
        out.push(audit(
            AuditEvent::Decision,
            now,
            Some(node),
            format!(
                "{node} has been cool below {clear_below:.1}°C for {}s: {RESET}",
                self.cfg.thermal.clear_for
            ),
            json!({"problem": cpu, "actions": [RESET], "reason": "recovery", "attempt": 1}),
        ));
        for problem in [&cpu, &gpu] {
            self.open_alerts.remove(node, problem);
            self.flap_recovered(node, problem);
            self.settle_on_recovery(node, problem, now, out);
        }
        if self.cfg.dry_run {
            self.skip(
                (node, &cpu, RESET),
                SkipReason::DryRun,
                "dry-run mode executes nothing".into(),
                now,
                out,
            );
            return;
        }
        // The first try passes the same gates as the next ones.
        let first = ResetAttempt {
            origin: since.agent_at,
            attempt: 1,
        };
        self.reset_retries.insert(
            node.clone(),
            ResetRetry {
                next: first,
                held: None,
            },
        );
        self.retry_reset(node, now, out);
    }

    /// Send one try at lifting `node`'s throttle.
    fn send_reset(
        &mut self,
        node: &NodeName,
        tried: ResetAttempt,
        trial: bool,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let cpu = cpu();
        let alert = self.own_alert(
            node,
            AlertKind::Thermal,
            Severity::Normal,
            format!("{node} cool for {}s", self.cfg.thermal.clear_for),
            json!({"sensor": "cpu", "reason": "recovery"}),
            now,
        );
        let cmd = self.command(
            node,
            RESET,
            reset_id(node, tried),
            Some("recovery".into()),
            &cpu,
            now,
        );
        let pending = Pending {
            reset: Some(tried),
            ..Pending::new(node.clone(), cpu, RESET, Severity::Normal, alert, trial)
        };
        self.send(cmd, pending, now, out);
    }

    /// The try `tried` ended `how` (failed, expired, no result): send the
    /// next one as soon as the gates let it.
    fn retry_reset_later(
        &mut self,
        node: &NodeName,
        tried: ResetAttempt,
        how: &str,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let next = ResetAttempt {
            origin: tried.origin,
            attempt: tried.attempt.saturating_add(1),
        };
        out.push(audit(
            AuditEvent::Decision,
            now,
            Some(node),
            format!(
                "{RESET} on {node} ended {how} (try {}): sending it again",
                tried.attempt
            ),
            json!({"problem": cpu(), "actions": [RESET], "reason": "recovery", "attempt": next.attempt, "after": how}),
        ));
        self.reset_retries
            .insert(node.clone(), ResetRetry { next, held: None });
        self.retry_reset(node, now, out);
    }

    /// Send `node`'s waiting reset if it is still needed and the gates let
    /// it; a node no longer throttled or no longer cool needs none.
    fn retry_reset(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(retry) = self.reset_retries.get(node).cloned() else {
            return;
        };
        let cpu = cpu();
        let state = self.nodes.get(node);
        let gone = match state {
            None => Some("the node is unknown"),
            Some(s) if !s.heartbeat.throttled(&s.throttle_originals) => {
                Some("the node is no longer throttled")
            }
            Some(s) if !cool(&self.cfg, &s.heartbeat) => Some("the node is no longer cool"),
            Some(_) => None,
        };
        if let Some(why) = gone {
            self.reset_retries.remove(node);
            out.push(audit(
                AuditEvent::Decision,
                now,
                Some(node),
                format!("{RESET} on {node} not sent again: {why}"),
                json!({"problem": cpu, "actions": [], "reason": "recovery", "attempt": retry.next.attempt, "outcome": why}),
            ));
            return;
        }
        let offline = state.is_some_and(|s| s.offline);
        let key = BreakerKey::new(node.as_str(), cpu.as_str(), RESET);
        let held = if offline {
            Some((SkipReason::NodeOffline, "the node is offline".to_string()))
        } else {
            let (admission, transition) = self.breakers.admit(&key, now);
            if transition == Some(Transition::HalfOpened) {
                out.push(audit(
                    AuditEvent::Breaker,
                    now,
                    Some(node),
                    format!("circuit {} half-open: one trial allowed", key_str(&key)),
                    json!({"key": key, "state": "half_open"}),
                ));
            }
            if admission == Admission::Deny {
                Some((
                    SkipReason::CircuitOpen,
                    format!("circuit {} is open", key_str(&key)),
                ))
            } else if !self.take_rate(node, now) {
                if admission == Admission::Trial {
                    self.breakers.release_trial(&key);
                }
                Some((
                    SkipReason::RateLimited,
                    "per-node action rate limit reached".to_string(),
                ))
            } else {
                self.reset_retries.remove(node);
                self.send_reset(node, retry.next, admission == Admission::Trial, now, out);
                None
            }
        };
        if let Some((reason, detail)) = held {
            // Audited once per reason, not on every tick.
            if retry.held != Some(reason) {
                if let Some(r) = self.reset_retries.get_mut(node) {
                    r.held = Some(reason);
                }
                self.skip((node, &cpu, RESET), reason, detail, now, out);
            }
        }
    }
}
