//! What `skos status` shows.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use skos_core::protocol::ResultStatus;
use skos_core::timefmt::{self, Timestamp};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub mode: String,
    #[serde(with = "timefmt")]
    pub generated_at: Timestamp,
    pub nodes: Vec<NodeStatus>,
    pub agents: Vec<AgentStatus>,
    pub open_alerts: Vec<Value>,
    pub recent_actions: Vec<ActionRecord>,
    pub open_circuits: Vec<Value>,
    pub counters: BTreeMap<String, u64>,
    /// The coordinator that answered, when coordinators elect a leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Leadership>,
}

/// Who leads the coordinators, in which term, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader's holder id (`<host>:<pid>:<random>`).
    pub holder: String,
    /// Its term, the fencing token on its commands and audit records.
    pub term: u64,
    #[serde(with = "timefmt")]
    pub since: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub status: NodeHealth,
    #[serde(with = "timefmt")]
    pub last_seen: Timestamp,
    pub cpu_temp: Option<f64>,
    pub gpu_temp: Option<f64>,
    pub storage_percent: Option<f64>,
    pub throttle_level: Option<u8>,
    /// How far the node's clock is ahead of the coordinator's, in seconds
    /// (negative: behind), as measured from its heartbeats; `None` before
    /// its first heartbeat since the coordinator started.
    #[serde(default)]
    pub clock_offset_seconds: Option<f64>,
    /// The offset is beyond `coordinator.max_clock_skew_seconds` (a
    /// `clock_skew` alert is open).
    #[serde(default)]
    pub clock_skewed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    pub agent_type: String,
    pub node: String,
    #[serde(with = "timefmt")]
    pub last_seen: Timestamp,
    pub online: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action_id: String,
    pub action_type: String,
    pub node: String,
    pub problem: String,
    pub cause: String,
    #[serde(with = "timefmt")]
    pub sent_at: Timestamp,
    pub state: ActionState,
    #[serde(default)]
    pub message: String,
}

/// A node as `skos status` sums it up: offline without heartbeats, else
/// from its worst open alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    Healthy,
    /// Its worst open alert is a warning.
    Degraded,
    /// Its worst open alert is critical or an emergency.
    Critical,
    Offline,
}

impl NodeHealth {
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Healthy => "healthy",
            NodeHealth::Degraded => "degraded",
            NodeHealth::Critical => "critical",
            NodeHealth::Offline => "offline",
        }
    }
}

impl std::fmt::Display for NodeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a sent action stands: `sent`, then the agent's result (or
/// `no_result` when none came by its deadline plus the grace period),
/// then, for an action whose effect is checked, `verified` or
/// `not_verified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Sent,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Unsupported,
    Verified,
    NotVerified,
    /// No result came by the command's deadline plus
    /// `coordinator.result_grace_seconds`: its outcome is unknown.
    NoResult,
}

impl ActionState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionState::Sent => "sent",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            ActionState::Rejected => "rejected",
            ActionState::Expired => "expired",
            ActionState::Unsupported => "unsupported",
            ActionState::Verified => "verified",
            ActionState::NotVerified => "not_verified",
            ActionState::NoResult => "no_result",
        }
    }
}

impl From<ResultStatus> for ActionState {
    fn from(s: ResultStatus) -> Self {
        match s {
            ResultStatus::Succeeded => ActionState::Succeeded,
            ResultStatus::Failed => ActionState::Failed,
            ResultStatus::Rejected => ActionState::Rejected,
            ResultStatus::Expired => ActionState::Expired,
            ResultStatus::Unsupported => ActionState::Unsupported,
        }
    }
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Status {
    /// A short human rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "SKOS status ({}), {}\n",
            self.mode,
            timefmt::format(&self.generated_at)
        ));
        out.push_str(&format!("\nNODES ({})\n", self.nodes.len()));
        if self.nodes.is_empty() {
            out.push_str("  (no node has reported yet)\n");
        }
        let temp = |t: Option<f64>| {
            t.map(|t| format!("{t:.1}°C"))
                .unwrap_or_else(|| "none".into())
        };
        for n in &self.nodes {
            let clock = match n.clock_offset_seconds {
                Some(s) if n.clock_skewed => format!("  clock {s:+.1}s SKEWED"),
                Some(s) => format!("  clock {s:+.1}s"),
                None => String::new(),
            };
            out.push_str(&format!(
                "  {:<16} {:<9} cpu {:<8} gpu {:<8} throttle {}%  last seen {}{clock}\n",
                n.name,
                n.status,
                temp(n.cpu_temp),
                temp(n.gpu_temp),
                n.throttle_level.unwrap_or(0),
                timefmt::format(&n.last_seen)
            ));
        }
        out.push_str(&format!("\nAGENTS ({})\n", self.agents.len()));
        for a in &self.agents {
            out.push_str(&format!(
                "  {:<32} {:<18} {:<12} {}\n",
                a.agent_id,
                a.agent_type,
                a.node,
                if a.online { "online" } else { "offline" }
            ));
        }
        out.push_str(&format!("\nOPEN ALERTS ({})\n", self.open_alerts.len()));
        for a in &self.open_alerts {
            out.push_str(&format!(
                "  {:<10} {:<12} {}\n",
                a["severity"].as_str().unwrap_or("?"),
                a["node"].as_str().unwrap_or("?"),
                a["message"].as_str().unwrap_or("")
            ));
        }
        out.push_str(&format!(
            "\nRECENT ACTIONS ({})\n",
            self.recent_actions.len()
        ));
        for a in self.recent_actions.iter().rev().take(10) {
            out.push_str(&format!(
                "  {} {:<22} {:<10} {:<12} {}\n",
                timefmt::format(&a.sent_at),
                a.action_type,
                a.node,
                a.state,
                a.message
            ));
        }
        out.push_str(&format!("\nOPEN CIRCUITS ({})\n", self.open_circuits.len()));
        for c in &self.open_circuits {
            out.push_str(&format!(
                "  {} {} {} ({})\n",
                c["node"].as_str().unwrap_or("?"),
                c["problem"].as_str().unwrap_or("?"),
                c["action"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?")
            ));
        }
        out
    }
}
