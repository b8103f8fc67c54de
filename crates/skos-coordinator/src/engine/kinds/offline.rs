//! A node that stopped reporting: offline after `heartbeat_timeout` without
//! a heartbeat (a critical `heartbeat_missing` alert), back with its next
//! heartbeat. No action heals it from here; its table row is empty.

use serde_json::json;
use skos_core::counters::Counter;
use skos_core::level::secs;
use skos_core::protocol::{AlertKind, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::ProblemKind;
use crate::engine::{Effect, Engine};

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
    }
}
