//! Clocks: a node whose clock is off from the coordinator's by more than
//! `coordinator.max_clock_skew_seconds` gets one `clock_skew` warning, and
//! a `normal` one when it is back within bounds. The offset itself is
//! measured on every heartbeat ([`NodeState::clock_offset`]) and shifts
//! every command's timestamp and deadline into the node's clock, so a
//! skewed node still runs its commands; no action heals a clock.
//!
//! [`NodeState::clock_offset`]: crate::engine::state::NodeState::clock_offset

use serde_json::json;
use skos_core::events::ProblemKey;
use skos_core::protocol::{AlertKind, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::ProblemKind;
use crate::engine::{heartbeat_alert_id, Effect, Engine};

/// The `sensor` of a `clock_skew` alert.
const SENSOR: &str = "clock";

/// The problem a `clock_skew` alert is about.
pub(in crate::engine) fn problem() -> ProblemKey {
    ProblemKey::new(&AlertKind::ClockSkew, Some(SENSOR))
}

pub(crate) struct Clock;

impl ProblemKind for Clock {
    fn on_heartbeat(
        &self,
        eng: &mut Engine,
        node: &NodeName,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        eng.check_clock(node, now, out);
    }
}

impl Engine {
    /// Raise `clock_skew` when the node's clock offset goes beyond the
    /// bound, and clear it when the offset comes back within it.
    fn check_clock(&mut self, node: &NodeName, now: Timestamp, out: &mut Vec<Effect>) {
        let max = self.cfg.coordinator.max_clock_skew_seconds;
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(offset) = state.clock_offset() else {
            return;
        };
        let seconds = offset.num_milliseconds() as f64 / 1000.0;
        let skewed = seconds.abs() > max;
        if skewed == state.skewed {
            return;
        }
        state.skewed = skewed;
        let sent = state.heartbeat.timestamp;
        let (severity, message) = if skewed {
            let way = if seconds > 0.0 { "ahead" } else { "behind" };
            (
                Severity::Warning,
                format!(
                    "the clock of {node} is {:.1}s {way} of the coordinator's (more than {max}s)",
                    seconds.abs()
                ),
            )
        } else {
            (
                Severity::Normal,
                format!("the clock of {node} is back within {max}s ({seconds:+.1}s)"),
            )
        };
        let mut alert = self.own_alert(
            node,
            AlertKind::ClockSkew,
            severity,
            message,
            json!({"sensor": SENSOR, "offset_seconds": seconds, "max_skew_seconds": max}),
            now,
        );
        alert.alert_id = heartbeat_alert_id(node, &alert.kind, severity, sent);
        out.push(Effect::Alert(alert));
    }
}
