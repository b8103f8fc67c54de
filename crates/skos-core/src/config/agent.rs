//! `agent:`: the agent's timers and which antibodies it runs.

use serde::{Deserialize, Serialize};

use super::{issue, positive_seconds, AgentWorkloads, CheckContext, Config, ConfigIssue, Section};
use crate::catalogue::Executor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSection {
    /// Seconds between heartbeats (`HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: f64,
    /// Seconds between sensor checks (`MONITOR_INTERVAL`).
    pub monitor_interval: f64,
    /// Enabled antibodies.
    pub antibodies: Vec<String>,
    /// The workloads antibody's settings (the container engine).
    pub workloads: AgentWorkloads,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            heartbeat_interval: 10.0,
            monitor_interval: 5.0,
            antibodies: vec!["thermal_sentinel".into()],
            workloads: AgentWorkloads::default(),
        }
    }
}

impl Section for AgentSection {
    const KEY: &'static str = "agent";

    fn get(cfg: &Config) -> &Self {
        &cfg.agent
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.agent
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        positive_seconds(out, "agent.heartbeat_interval", self.heartbeat_interval);
        positive_seconds(out, "agent.monitor_interval", self.monitor_interval);
        self.workloads.check(out);
        for (i, a) in self.antibodies.iter().enumerate() {
            let built: Vec<&str> = Executor::ALL
                .into_iter()
                .filter(|e| e.built())
                .map(Executor::as_str)
                .collect();
            match Executor::parse(a) {
                Some(e) if e.built() => {}
                Some(_) => out.push(issue(
                    format!("agent.antibodies[{i}]"),
                    format!(
                        "antibody {a:?} is not built yet (built: {})",
                        built.join(", ")
                    ),
                )),
                None => out.push(issue(
                    format!("agent.antibodies[{i}]"),
                    format!("unknown antibody {a:?} (known: {})", built.join(", ")),
                )),
            }
        }
    }
}
