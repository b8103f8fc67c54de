//! A node that stopped reporting: offline after `heartbeat_timeout` without
//! a heartbeat (a critical `heartbeat_missing` alert), back with its next
//! heartbeat. No action heals it from here; its table row is empty. Both
//! alerts' ids derive from the agent's timestamp of the last heartbeat
//! seen, so every coordinator gives them the same id.

use serde_json::json;
use skos_core::counters::Counter;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{Alert, AlertKind, Severity};
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;

use super::ProblemKind;
use crate::engine::{heartbeat_alert_id, Effect, Engine};

/// The problem an offline alert is open under.
pub(in crate::engine) fn problem() -> ProblemKey {
    ProblemKey::new(&AlertKind::HeartbeatMissing, Some(SENSOR))
}

/// The `sensor` of the alerts: offline, and back.
pub(in crate::engine) const SENSOR: &str = "heartbeat";

/// The detail both alerts carry: the agent's time of the node's last
/// heartbeat before it went silent (offline), or of the one that brought it
/// back (back), as the wire writes times.
pub(in crate::engine) const HEARTBEAT_AT: &str = "heartbeat_at";

fn heartbeat_at(alert: &Alert) -> Option<Timestamp> {
    alert
        .details
        .get(HEARTBEAT_AT)
        .and_then(|v| v.as_str())
        .and_then(timefmt::parse)
}

/// Whether `back`, a node said back, is older than `open`, the offline
/// alert open for it: said from a heartbeat no later than the last one
/// before that time away (an earlier time away, its back alert delivered
/// again). Such a back alert must not close the alert nor end the offline
/// state. Alerts without the detail (written by earlier versions) are
/// never stale.
pub(in crate::engine) fn stale_back(back: &Alert, open: Option<&Alert>) -> bool {
    if back.kind != AlertKind::HeartbeatMissing || back.severity != Severity::Normal {
        return false;
    }
    let Some(open) = open.filter(|o| o.severity != Severity::Normal) else {
        return false;
    };
    matches!((heartbeat_at(back), heartbeat_at(open)), (Some(b), Some(o)) if b <= o)
}

pub(crate) struct Offline;

impl ProblemKind for Offline {
    fn on_tick(&self, eng: &mut Engine, now: Timestamp, out: &mut Vec<Effect>) {
        eng.detect_offline(now, out);
    }
}

impl Engine {
    /// Nodes silent for longer than `heartbeat_timeout` become offline,
    /// each with one alert.
    fn detect_offline(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
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
            self.counters.inc(Counter::NodesOffline);
            let (last, sent) = self
                .nodes
                .get(&node)
                .map_or((now, now), |s| (s.last_seen, s.heartbeat.timestamp));
            let silent = (now - last).num_milliseconds() as f64 / 1000.0;
            let mut alert = self.own_alert(
                &node,
                AlertKind::HeartbeatMissing,
                Severity::Critical,
                format!("node {node} is offline: no heartbeat for {silent:.1}s"),
                json!({"sensor": SENSOR, "silent_seconds": silent, "timeout": self.cfg.coordinator.heartbeat_timeout, HEARTBEAT_AT: timefmt::format(&sent)}),
                now,
            );
            alert.alert_id = heartbeat_alert_id(&node, &alert.kind, alert.severity, sent);
            out.push(Effect::Alert(alert));
        }
    }
}
