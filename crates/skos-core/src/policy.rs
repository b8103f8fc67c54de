//! The healing tables: which actions answer which problem at which severity.

use crate::config::{ActionTable, Config};
use crate::protocol::{Alert, AlertKind, Severity};

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
        AlertKind::HeartbeatMissing
        | AlertKind::Circuit
        | AlertKind::ClockSkew
        | AlertKind::Audit
        | AlertKind::FleetDegraded
        | AlertKind::Other => Vec::new(),
    }
}

fn detail_event(alert: &Alert) -> Option<&str> {
    alert
        .details
        .get(crate::events::EVENT_KEY)
        .or_else(|| alert.details.get("condition"))
        .and_then(|v| v.as_str())
}

/// The heartbeat field that measures a problem, for verification.
pub fn metric_for(problem: &str) -> Option<&'static str> {
    match problem {
        "thermal:cpu" => Some("cpu_temp"),
        "thermal:gpu" => Some("gpu_temp"),
        p if p.starts_with("storage") => Some("storage_percent"),
        p if p.starts_with(crate::events::MESH_PREFIX) => Some(MESH_METRIC),
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

/// The level a heartbeat reports for a mesh problem, from
/// `metadata.mesh.interfaces.<name>.level` or `metadata.mesh.peers.<name>.level`.
pub fn mesh_level(hb: &crate::protocol::Heartbeat, problem: &str) -> Option<f64> {
    let name = problem.strip_prefix(crate::events::MESH_PREFIX)?;
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
        assert_eq!(t("critical"), vec!["throttle_50"]);
        assert_eq!(t("emergency"), vec!["throttle_100"]);
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
    }

    #[test]
    fn metrics_of_problems() {
        assert_eq!(metric_for("thermal:cpu"), Some("cpu_temp"));
        assert_eq!(metric_for("thermal:gpu"), Some("gpu_temp"));
        assert_eq!(metric_for("storage:/srv"), Some("storage_percent"));
        assert_eq!(metric_for("storage"), Some("storage_percent"));
        assert_eq!(metric_for("mesh:wg0"), Some(MESH_METRIC));
        assert_eq!(metric_for("mesh"), None);
        assert_eq!(metric_for("loop:job-1"), None);
    }
}
