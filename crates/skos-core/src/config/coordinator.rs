//! `coordinator:`: offline detection, verification, command deadlines and
//! rate limits.

use serde::{Deserialize, Serialize};

use super::{positive_seconds, CheckContext, Config, ConfigIssue, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorSection {
    /// Seconds without a heartbeat before a node is offline (`HEARTBEAT_TIMEOUT`).
    pub heartbeat_timeout: f64,
    /// Seconds a fix has to bring the metric back below the alert's level.
    pub verify_within: f64,
    /// Seconds a command stays valid; not executed after its deadline.
    pub command_deadline: f64,
    /// Most commands sent to one node per minute.
    pub max_actions_per_node_per_minute: u32,
    /// Alerts one node may have handled per minute; past it, its alerts
    /// are coalesced (counted, summed up in one audit record a minute)
    /// unless one makes its problem worse.
    pub max_alerts_per_node_per_minute: u32,
    /// Recent actions kept for `skos status`.
    pub recent_actions: usize,
    /// Seconds after a command's deadline that its result may still take
    /// to arrive; without one by then the command is closed as `no_result`.
    pub result_grace_seconds: f64,
    /// Seconds a node's clock may be off from the coordinator's before a
    /// `clock_skew` warning is raised for it.
    pub max_clock_skew_seconds: f64,
    /// Seconds a leader's lease lasts (distributed mode): a standby takes
    /// over at most this long after the leader dies or is cut off. The
    /// leader renews every third of it.
    pub leader_lease_seconds: f64,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        Self {
            heartbeat_timeout: 30.0,
            verify_within: 120.0,
            command_deadline: 60.0,
            max_actions_per_node_per_minute: 30,
            max_alerts_per_node_per_minute: 120,
            recent_actions: 50,
            result_grace_seconds: 30.0,
            max_clock_skew_seconds: 30.0,
            leader_lease_seconds: 10.0,
        }
    }
}

impl Section for CoordinatorSection {
    const KEY: &'static str = "coordinator";

    fn get(cfg: &Config) -> &Self {
        &cfg.coordinator
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.coordinator
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        positive_seconds(out, "coordinator.heartbeat_timeout", self.heartbeat_timeout);
        positive_seconds(out, "coordinator.verify_within", self.verify_within);
        positive_seconds(out, "coordinator.command_deadline", self.command_deadline);
        positive_seconds(
            out,
            "coordinator.result_grace_seconds",
            self.result_grace_seconds,
        );
        positive_seconds(
            out,
            "coordinator.max_clock_skew_seconds",
            self.max_clock_skew_seconds,
        );
        positive_seconds(
            out,
            "coordinator.leader_lease_seconds",
            self.leader_lease_seconds,
        );
        let lease = self.leader_lease_seconds;
        if lease.is_finite() && lease > 0.0 && !(1.0..=600.0).contains(&lease) {
            out.push(super::issue(
                "coordinator.leader_lease_seconds",
                format!(
                    "must be between 1 and 600 seconds (renewed every third of it; a dead leader is replaced after it), got {lease}"
                ),
            ));
        }
        if self.max_alerts_per_node_per_minute == 0 {
            out.push(super::issue(
                "coordinator.max_alerts_per_node_per_minute",
                "must be at least 1 (0 would coalesce every alert)",
            ));
        }
    }
}
