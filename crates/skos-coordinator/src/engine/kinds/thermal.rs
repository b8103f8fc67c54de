//! Heat: a throttle is verified when the sensor's temperature falls below
//! the alert level's threshold; a throttled node that has stayed cool (below
//! `warning - hysteresis`, [`skos_core::level::cleared`]) for `clear_for`
//! gets `reset_throttle`.

use serde_json::json;
use skos_core::config::Config;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::policy;
use skos_core::protocol::{Alert, AlertKind, AuditEvent, Command, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{level_threshold, ProblemKind, Recovery};
use crate::engine::{audit, Effect, Engine, SkipReason};

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
}

impl Engine {
    /// When a throttled node has been cool for `clear_for`, lift the throttle.
    fn check_cool_down(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        let cpu = ProblemKey::new(&AlertKind::Thermal, Some("cpu"));
        let gpu = ProblemKey::new(&AlertKind::Thermal, Some("gpu"));
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
            AuditEvent::Decision,
            now,
            Some(node),
            format!(
                "{node} has been cool for {}s: reset_throttle",
                self.cfg.thermal.clear_for
            ),
            json!({"problem": cpu, "actions": ["reset_throttle"], "reason": "recovery"}),
        ));
        for key in [(node.clone(), cpu.clone()), (node.clone(), gpu)] {
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
            problem: Some(cpu.to_string()),
            term: self.term,
        };
        if self.cfg.dry_run {
            self.skip(
                (node, &cpu, "reset_throttle"),
                SkipReason::DryRun,
                "dry-run mode executes nothing".into(),
                now,
                out,
            );
            return;
        }
        self.send(cmd, node, &cpu, Severity::Normal, &alert, false, now, out);
    }
}
