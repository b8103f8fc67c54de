//! The healing tables: which actions answer which problem at which severity.

use crate::config::{ActionTable, Config};
use crate::protocol::{Alert, AlertKind, Severity};

/// Antibodies an agent can run.
pub const ANTIBODIES: &[&str] = &[
    "thermal_sentinel",
    "storage_watcher",
    "mesh_healer",
    "loop_breaker",
];

/// Every action name the healing tables may use. Agents implement a subset
/// and answer `unsupported` for the rest.
pub const KNOWN_ACTIONS: &[&str] = &[
    // thermal
    "throttle_10",
    "throttle_50",
    "throttle_100",
    "reset_throttle",
    // workloads
    "redistribute",
    "shutdown_non_essential",
    "failover",
    "failback",
    // storage
    "cleanup_temp",
    "cleanup_logs",
    "archive_old",
    "emergency_cleanup",
    "alert_human",
    // mesh
    "restart_wireguard",
    "regenerate_config",
    "ping_peer",
    "failover_route",
    // loop
    "circuit_break",
    "reset_chain",
];

/// The throttle level in percent named by an action (`throttle_50` → 50).
pub fn throttle_level(action: &str) -> Option<u8> {
    let n: u8 = action.strip_prefix("throttle_")?.parse().ok()?;
    (n <= 100).then_some(n)
}

fn by_severity(table: &ActionTable, s: Severity) -> &[String] {
    match s {
        Severity::Normal => &[],
        Severity::Warning => &table.warning,
        Severity::Critical => &table.critical,
        Severity::Emergency => &table.emergency,
    }
}

/// The actions the config prescribes for an alert, in order.
pub fn actions_for(cfg: &Config, alert: &Alert) -> Vec<String> {
    match alert.kind {
        AlertKind::Thermal => by_severity(&cfg.thermal.actions, alert.severity).to_vec(),
        AlertKind::Storage => by_severity(&cfg.storage.actions, alert.severity).to_vec(),
        AlertKind::Mesh => detail_event(alert)
            .and_then(|e| cfg.mesh.actions.get(e))
            .cloned()
            .unwrap_or_default(),
        AlertKind::Loop => detail_event(alert)
            .and_then(|e| cfg.loop_.actions.get(e))
            .cloned()
            .unwrap_or_default(),
        AlertKind::HeartbeatMissing | AlertKind::Circuit | AlertKind::Other => Vec::new(),
    }
}

fn detail_event(alert: &Alert) -> Option<&str> {
    alert
        .details
        .get("event")
        .or_else(|| alert.details.get("condition"))
        .and_then(|v| v.as_str())
}

/// The heartbeat field that measures a problem, for verification.
pub fn metric_for(problem: &str) -> Option<&'static str> {
    match problem {
        "thermal:cpu" => Some("cpu_temp"),
        "thermal:gpu" => Some("gpu_temp"),
        p if p.starts_with("storage") => Some("storage_percent"),
        _ => None,
    }
}

/// Actions whose job is to free space: one that freed nothing failed.
pub fn frees_space(action: &str) -> bool {
    matches!(
        action,
        "cleanup_temp" | "cleanup_logs" | "archive_old" | "emergency_cleanup"
    )
}

/// Whether an action's effect can be checked on a heartbeat metric.
pub fn is_verifiable(action: &str) -> bool {
    throttle_level(action).is_some() || frees_space(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str, severity: &str, details: serde_json::Value) -> Alert {
        serde_json::from_value(serde_json::json!({
            "agent_id": "a", "type": kind, "severity": severity, "node": "nova",
            "message": "", "details": details, "timestamp": "2024-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn seed_thermal_table() {
        let cfg = Config::default();
        let t = |s| {
            actions_for(
                &cfg,
                &alert("thermal", s, serde_json::json!({"sensor": "cpu"})),
            )
        };
        assert_eq!(t("warning"), vec!["throttle_10"]);
        assert_eq!(t("critical"), vec!["throttle_50", "redistribute"]);
        assert_eq!(t("emergency"), vec!["shutdown_non_essential", "failover"]);
        assert!(t("normal").is_empty());
    }

    #[test]
    fn seed_storage_mesh_loop_tables() {
        let cfg = Config::default();
        assert_eq!(
            actions_for(&cfg, &alert("storage", "critical", serde_json::json!({}))),
            vec!["cleanup_logs", "archive_old"]
        );
        assert_eq!(
            actions_for(
                &cfg,
                &alert(
                    "mesh",
                    "critical",
                    serde_json::json!({"event": "peer_unreachable"})
                )
            ),
            vec!["ping_peer", "failover_route"]
        );
        assert_eq!(
            actions_for(
                &cfg,
                &alert(
                    "loop",
                    "critical",
                    serde_json::json!({"condition": "iterations_exceeded"})
                )
            ),
            vec!["reset_chain"]
        );
    }

    #[test]
    fn throttle_levels() {
        assert_eq!(throttle_level("throttle_50"), Some(50));
        assert_eq!(throttle_level("throttle_100"), Some(100));
        assert_eq!(throttle_level("throttle_150"), None);
        assert_eq!(throttle_level("reset_throttle"), None);
        assert_eq!(metric_for("thermal:cpu"), Some("cpu_temp"));
        assert_eq!(metric_for("mesh"), None);
    }
}
