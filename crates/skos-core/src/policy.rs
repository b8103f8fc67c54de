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

/// The parameters an action accepts, with their kind. Every other
/// parameter, or one of the wrong kind, makes the command invalid. The
/// targets of an action (files, cgroups, interfaces, processes) always come
/// from the node's configuration, never from a parameter.
pub fn parameter_schema(action: &str) -> &'static [(&'static str, ParamKind)] {
    match action {
        "circuit_break" | "reset_chain" => &[
            ("chain_id", ParamKind::Token),
            ("chain_kind", ParamKind::Token),
        ],
        "ping_peer" | "failover_route" => &[("peer", ParamKind::Token)],
        "restart_wireguard" | "regenerate_config" => &[("interface", ParamKind::Token)],
        _ => &[],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A short name: letters, digits, `-`, `_`, `.`, `:`, at most 128 bytes;
    /// it can only select among configured targets.
    Token,
}

/// Check a command's parameters against its action's schema.
pub fn validate_parameters(
    action: &str,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let schema = parameter_schema(action);
    for (name, value) in params {
        let Some((_, kind)) = schema.iter().find(|(n, _)| n == name) else {
            return Err(format!("{action} takes no parameter {name:?}"));
        };
        match kind {
            ParamKind::Token => {
                let ok = value.as_str().is_some_and(|s| {
                    !s.is_empty()
                        && s.len() <= 128
                        && s.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
                        })
                });
                if !ok {
                    return Err(format!("{action}: parameter {name:?} must be a short name"));
                }
            }
        }
    }
    Ok(())
}

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
        p if p.starts_with("mesh:") => Some(MESH_METRIC),
        _ => None,
    }
}

/// The metric of a mesh problem (`mesh:<interface or peer>`): the health
/// level the agent reports for it in `metadata.mesh` (0 healthy, 1
/// degraded or stale, 2 down), read by [`mesh_level`].
pub const MESH_METRIC: &str = "mesh_level";

/// A mesh fix worked when its problem's level fell below this: healthy
/// again (fresh handshake, peer answering).
pub const MESH_RECOVERED_BELOW: f64 = 1.0;

/// Mesh actions are tried one at a time, in table order, until one works.
pub fn is_sequential(kind: &AlertKind) -> bool {
    *kind == AlertKind::Mesh
}

/// The level a heartbeat reports for a mesh problem, from
/// `metadata.mesh.interfaces.<name>.level` or `metadata.mesh.peers.<name>.level`.
pub fn mesh_level(hb: &crate::protocol::Heartbeat, problem: &str) -> Option<f64> {
    let name = problem.strip_prefix("mesh:")?;
    let mesh = hb.metadata.get("mesh")?;
    ["interfaces", "peers"]
        .iter()
        .find_map(|k| mesh.get(k)?.get(name)?.get("level")?.as_f64())
}

/// The SKOS nodes a heartbeat's node watches as mesh peers
/// (`metadata.mesh.peers.<name>.node`).
pub fn mesh_peer_nodes(hb: &crate::protocol::Heartbeat) -> Vec<String> {
    hb.metadata
        .get("mesh")
        .and_then(|m| m.get("peers"))
        .and_then(|p| p.as_object())
        .map(|peers| {
            peers
                .values()
                .filter_map(|p| p.get("node")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    throttle_level(action).is_some()
        || frees_space(action)
        || matches!(
            action,
            "restart_wireguard" | "regenerate_config" | "failover_route"
        )
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
    fn parameters_follow_the_schema() {
        let p = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(validate_parameters("throttle_50", &p(serde_json::json!({}))).is_ok());
        assert!(validate_parameters(
            "throttle_50",
            &p(serde_json::json!({"path": "/etc/passwd"}))
        )
        .is_err());
        assert!(
            validate_parameters("reset_chain", &p(serde_json::json!({"chain_id": "job-42"})))
                .is_ok()
        );
        assert!(validate_parameters(
            "reset_chain",
            &p(serde_json::json!({"chain_id": "a; rm -rf /"}))
        )
        .is_err());
        assert!(
            validate_parameters("reset_chain", &p(serde_json::json!({"chain_id": 5}))).is_err()
        );
        assert!(
            validate_parameters("ping_peer", &p(serde_json::json!({"peer": "../../x"}))).is_err()
        );
    }

    #[test]
    fn mesh_levels_come_from_heartbeat_metadata() {
        let hb: crate::protocol::Heartbeat = serde_json::from_value(serde_json::json!({
            "agent_id": "a", "agent_type": "mesh_healer", "node": "nova",
            "timestamp": "2024-01-01T00:00:00Z",
            "metadata": {"mesh": {
                "interfaces": {"wg0": {"level": 2}},
                "peers": {"lyra": {"level": 0, "node": "lyra"}, "x": {"level": 1}}
            }}
        }))
        .unwrap();
        assert_eq!(metric_for("mesh:wg0"), Some(MESH_METRIC));
        assert_eq!(mesh_level(&hb, "mesh:wg0"), Some(2.0));
        assert_eq!(mesh_level(&hb, "mesh:lyra"), Some(0.0));
        assert_eq!(mesh_level(&hb, "mesh:nope"), None);
        assert_eq!(mesh_level(&hb, "thermal:cpu"), None);
        assert_eq!(mesh_peer_nodes(&hb), vec!["lyra".to_string()]);
        assert!(is_verifiable("restart_wireguard") && !is_verifiable("ping_peer"));
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
