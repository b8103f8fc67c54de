//! `coordinator:`: offline detection, verification, command deadlines and
//! rate limits.

use serde::{Deserialize, Serialize};

use super::{non_negative, positive_seconds, CheckContext, Config, ConfigIssue, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorSection {
    /// Seconds without a heartbeat before a node is offline (`HEARTBEAT_TIMEOUT`).
    pub heartbeat_timeout: f64,
    /// Seconds a fix has to bring the metric back below the alert's level.
    pub verify_within: f64,
    /// Seconds the metric must stay below the level, from the first
    /// reading below it after the fix took effect, before the fix is
    /// credited (a flap's own cooling does not last); a fall that began
    /// within `verify_within` may finish its hold after it. 0: the first
    /// such reading is enough.
    pub verify_hold_seconds: f64,
    /// Seconds over which a problem's state changes (its alerts changing
    /// severity) are counted to tell whether it flaps.
    pub flap_window_seconds: f64,
    /// State changes within `flap_window_seconds` at which a problem is
    /// flapping: reported once, and no new action is decided for it until
    /// it is stable again. 0 turns flap detection off.
    pub flap_start_changes: u32,
    /// A flapping problem is stable again once at most this many state
    /// changes are left within `flap_window_seconds` (below
    /// `flap_start_changes`, so it does not start and stop on one change).
    pub flap_stop_changes: u32,
    /// Seconds a command stays valid; not executed after its deadline.
    pub command_deadline: f64,
    /// Most commands sent to one node per minute.
    pub max_actions_per_node_per_minute: u32,
    /// Alerts one node may have handled per minute; past it, its alerts
    /// are coalesced (counted, summed up in one audit record a minute)
    /// unless one makes its problem worse.
    pub max_alerts_per_node_per_minute: u32,
    /// Alerts (and, apart, results) of one node the bus keeps in its
    /// stream (distributed mode): past it the node's oldest are dropped,
    /// read or not, so one node's flood never queues more than this many
    /// ahead of another node's alert. The coordinator counts and audits
    /// what was dropped before it was read. A stream setting
    /// (`max_msgs_per_subject`), applied by the coordinator at start.
    pub max_queued_per_node: u32,
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

/// Bounds of `coordinator.max_queued_per_node`: below 10 a node's normal
/// burst (an alert per sentinel at once) would be cut; above a million one
/// node could still hide every other node's alerts behind its own.
pub const MIN_QUEUED_PER_NODE: u32 = 10;
pub const MAX_QUEUED_PER_NODE: u32 = 1_000_000;

/// Most state changes `coordinator.flap_start_changes` may ask for (each
/// flapping problem keeps that many change times).
pub const MAX_FLAP_CHANGES: u32 = 1000;

impl Default for CoordinatorSection {
    fn default() -> Self {
        Self {
            heartbeat_timeout: 30.0,
            verify_within: 120.0,
            verify_hold_seconds: 10.0,
            flap_window_seconds: 60.0,
            flap_start_changes: 6,
            flap_stop_changes: 2,
            command_deadline: 60.0,
            max_actions_per_node_per_minute: 30,
            max_alerts_per_node_per_minute: 120,
            max_queued_per_node: 1000,
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
        self.check_flapping(out);
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
        let queued = self.max_queued_per_node;
        if !(MIN_QUEUED_PER_NODE..=MAX_QUEUED_PER_NODE).contains(&queued) {
            out.push(super::issue(
                "coordinator.max_queued_per_node",
                format!(
                    "must be between {MIN_QUEUED_PER_NODE} and {MAX_QUEUED_PER_NODE} (messages of one node the bus keeps), got {queued}"
                ),
            ));
        }
    }
}

impl CoordinatorSection {
    /// `verify_hold_seconds` and the flap detection keys.
    fn check_flapping(&self, out: &mut Vec<ConfigIssue>) {
        let hold = self.verify_hold_seconds;
        if !(hold.is_finite() && non_negative(hold)) {
            out.push(super::issue(
                "coordinator.verify_hold_seconds",
                format!("must be zero or more seconds, got {hold}"),
            ));
        }
        positive_seconds(
            out,
            "coordinator.flap_window_seconds",
            self.flap_window_seconds,
        );
        let (start, stop) = (self.flap_start_changes, self.flap_stop_changes);
        if start == 0 {
            return;
        }
        if !(2..=MAX_FLAP_CHANGES).contains(&start) {
            out.push(super::issue(
                "coordinator.flap_start_changes",
                format!(
                    "must be 0 (off) or between 2 and {MAX_FLAP_CHANGES} state changes, got {start}"
                ),
            ));
        }
        if stop >= start {
            out.push(super::issue(
                "coordinator.flap_stop_changes",
                format!("must be less than coordinator.flap_start_changes ({start}), got {stop}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    /// The issues of a config with only the `coordinator:` keys of `yaml`.
    fn issues(yaml: &str) -> Vec<(String, String)> {
        match Config::from_yaml(&format!("coordinator: {yaml}")) {
            Ok(_) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| (i.path, i.message)).collect(),
        }
    }

    #[test]
    fn the_hold_and_flap_keys_have_defaults_and_are_checked_by_name() {
        let cfg = Config::from_yaml("{}").unwrap();
        assert_eq!(cfg.coordinator.verify_hold_seconds, 10.0);
        assert_eq!(cfg.coordinator.flap_window_seconds, 60.0);
        assert_eq!(cfg.coordinator.flap_start_changes, 6);
        assert_eq!(cfg.coordinator.flap_stop_changes, 2);
        assert!(issues("{verify_hold_seconds: 0, flap_start_changes: 0}").is_empty());
        for (yaml, key, says) in [
            (
                "{verify_hold_seconds: -1}",
                "verify_hold_seconds",
                "zero or more",
            ),
            (
                "{verify_hold_seconds: .inf}",
                "verify_hold_seconds",
                "zero or more",
            ),
            (
                "{flap_window_seconds: 0}",
                "flap_window_seconds",
                "positive",
            ),
            (
                "{flap_start_changes: 1}",
                "flap_start_changes",
                "between 2 and 1000",
            ),
            (
                "{flap_start_changes: 1001}",
                "flap_start_changes",
                "between 2 and 1000",
            ),
            (
                "{flap_start_changes: 4, flap_stop_changes: 4}",
                "flap_stop_changes",
                "less than coordinator.flap_start_changes (4)",
            ),
        ] {
            let found = issues(yaml);
            assert!(
                found
                    .iter()
                    .any(|(p, m)| *p == format!("coordinator.{key}") && m.contains(says)),
                "{yaml}: {found:?}"
            );
        }
    }
}
