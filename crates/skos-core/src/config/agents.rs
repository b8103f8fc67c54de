//! `agents:`: the seed's timers per antibody. Each antibody senses at its
//! own `monitor_interval_seconds` (default `agent.monitor_interval`). One
//! heartbeat per node carries every antibody's readings: when the file
//! does not set `agent.heartbeat_interval`, it is the shortest
//! `heartbeat_interval_seconds` of the antibodies this agent runs. An
//! antibody's `alert_cooldown_seconds` is its section's `cooldown` (moved
//! there when the file is read, see `seed.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{issue, positive_seconds, CheckContext, Config, ConfigIssue, Section};
use crate::catalogue::Executor;

/// `agents:`: antibody name (`thermal_sentinel`) → its timers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentsSection(pub BTreeMap<String, AntibodyTimers>);

/// One antibody's timers under `agents:`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AntibodyTimers {
    /// Seconds between two looks of this antibody (`None`:
    /// `agent.monitor_interval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_interval_seconds: Option<f64>,
    /// Seconds between heartbeats this antibody asks for (`None`: no
    /// wish). The node's one heartbeat goes at `agent.heartbeat_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<f64>,
}

impl AgentsSection {
    /// The shortest `heartbeat_interval_seconds` among `running`, if any
    /// of them sets one.
    pub fn shortest_heartbeat(&self, running: &[String]) -> Option<f64> {
        running
            .iter()
            .filter_map(|a| self.0.get(a)?.heartbeat_interval_seconds)
            .min_by(f64::total_cmp)
    }
}

impl Section for AgentsSection {
    const KEY: &'static str = "agents";

    fn get(cfg: &Config) -> &Self {
        &cfg.agents
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.agents
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        for (name, t) in &self.0 {
            let at = format!("agents.{name}");
            if Executor::parse(name).is_none() {
                let known: Vec<&str> = Executor::ALL.into_iter().map(Executor::as_str).collect();
                out.push(issue(
                    at,
                    format!("unknown antibody {name:?} (known: {})", known.join(", ")),
                ));
                continue;
            }
            if let Some(v) = t.monitor_interval_seconds {
                positive_seconds(out, &format!("{at}.monitor_interval_seconds"), v);
            }
            if let Some(v) = t.heartbeat_interval_seconds {
                positive_seconds(out, &format!("{at}.heartbeat_interval_seconds"), v);
            }
        }
    }

    fn warn(&self, cfg: &Config, out: &mut Vec<ConfigIssue>) {
        let running = &cfg.agent.antibodies;
        for (name, t) in &self.0 {
            if !running.contains(name) {
                out.push(issue(
                    format!("agents.{name}"),
                    format!(
                        "{name} is not in agent.antibodies ({}): its settings here are unused until it is enabled there",
                        running.join(", ")
                    ),
                ));
                continue;
            }
            let every = cfg.agent.heartbeat_interval;
            if let Some(v) = t.heartbeat_interval_seconds.filter(|v| *v != every) {
                out.push(issue(
                    format!("agents.{name}.heartbeat_interval_seconds"),
                    format!(
                        "one heartbeat per node carries every antibody's readings, sent every {every} s (agent.heartbeat_interval), not every {v} s for {name} alone"
                    ),
                ));
            }
        }
    }
}

impl Config {
    /// Seconds between two looks of `antibody`: its
    /// `agents.<antibody>.monitor_interval_seconds`, else
    /// `agent.monitor_interval`.
    pub fn monitor_interval_of(&self, antibody: &str) -> f64 {
        self.agents
            .0
            .get(antibody)
            .and_then(|t| t.monitor_interval_seconds)
            .unwrap_or(self.agent.monitor_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        Config::from_yaml(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn each_antibody_looks_at_its_own_interval() {
        let cfg = load(
            "agent: {monitor_interval: 7, antibodies: [thermal_sentinel, storage_watcher]}\n\
agents: {storage_watcher: {monitor_interval_seconds: 60}}\n",
        );
        assert_eq!(cfg.monitor_interval_of("storage_watcher"), 60.0);
        assert_eq!(cfg.monitor_interval_of("thermal_sentinel"), 7.0);
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    }

    #[test]
    fn the_heartbeat_is_the_shortest_of_the_running_antibodies() {
        let text = "agent: {antibodies: [thermal_sentinel, storage_watcher]}\n\
agents:\n  thermal_sentinel: {heartbeat_interval_seconds: 10}\n  storage_watcher: {heartbeat_interval_seconds: 30}\n  loop_breaker: {heartbeat_interval_seconds: 5}\n";
        let cfg = load(text);
        assert_eq!(
            cfg.agent.heartbeat_interval, 10.0,
            "loop_breaker does not run"
        );
        let said: Vec<String> = cfg.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "agents.loop_breaker: loop_breaker is not in agent.antibodies (thermal_sentinel, storage_watcher): its settings here are unused until it is enabled there",
                "agents.storage_watcher.heartbeat_interval_seconds: one heartbeat per node carries every antibody's readings, sent every 10 s (agent.heartbeat_interval), not every 30 s for storage_watcher alone",
            ]
        );
        // The file's own agent.heartbeat_interval stands.
        let cfg = load(&format!("{text}\n").replace(
            "agent: {antibodies",
            "agent: {heartbeat_interval: 20, antibodies",
        ));
        assert_eq!(cfg.agent.heartbeat_interval, 20.0);
        assert_eq!(cfg.warnings().len(), 3, "{:?}", cfg.warnings());
    }

    #[test]
    fn an_unknown_antibody_or_a_bad_interval_is_named_by_key() {
        let errs = Config::from_yaml(
            "agents:\n  thermal_sentinal: {monitor_interval_seconds: 5}\n  mesh_healer: {monitor_interval_seconds: 0, heartbeat_interval_seconds: -1, beat: 1}\n",
        )
        .unwrap_err();
        let said: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "agents.mesh_healer.beat: unknown key",
                "agents.mesh_healer.monitor_interval_seconds: must be a positive number of seconds, got 0",
                "agents.mesh_healer.heartbeat_interval_seconds: must be a positive number of seconds, got -1",
                "agents.thermal_sentinal: unknown antibody \"thermal_sentinal\" (known: thermal_sentinel, storage_watcher, mesh_healer, loop_breaker, workloads)",
            ]
        );
    }
}
