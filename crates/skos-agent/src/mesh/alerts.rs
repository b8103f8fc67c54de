//! The alerts of kind `mesh`: an interface down or back, a peer
//! unreachable, degraded or back, a route switched back.

use serde_json::{json, Map, Value};
use skos_core::config::MeshPeer;
use skos_core::events::{MeshEvent, EVENT_KEY, PEER_NODE_KEY};
use skos_core::level::Report;
use skos_core::protocol::{Alert, AlertKind, Severity};
use skos_core::timefmt::Timestamp;

use super::{age, unix, IfaceReading, MeshHealer, PeerReading};

impl MeshHealer {
    pub(super) fn alert(
        &self,
        sensor: &str,
        severity: Severity,
        message: String,
        details: Value,
        now: Timestamp,
    ) -> Alert {
        Alert {
            alert_id: format!(
                "{}-{}-{sensor}-{}",
                self.agent_id,
                now.timestamp_nanos_opt().unwrap_or_default(),
                severity.as_str()
            ),
            agent_id: self.agent_id.clone(),
            kind: AlertKind::Mesh,
            severity,
            node: self.node.clone(),
            message,
            details: match details {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            timestamp: now,
        }
    }

    pub(super) fn iface_alert(
        &self,
        name: &str,
        r: &IfaceReading,
        report: Report,
        now: Timestamp,
    ) -> Alert {
        let (severity, previous) = match report {
            Report::Changed { from, to } => (to, from),
            Report::Reminder(s) => (s, s),
        };
        let message = if severity == Severity::Normal {
            format!("WireGuard interface {name} is {} again", r.state)
        } else {
            format!(
                "WireGuard interface {name} is down: {}",
                r.reason.as_deref().unwrap_or(r.state)
            )
        };
        let peers: Vec<Value> = r
            .dump
            .as_ref()
            .map(|d| {
                d.peers
                    .iter()
                    .map(|p| {
                        json!({
                            "public_key": p.public_key, "endpoint": p.endpoint,
                            "latest_handshake_age_seconds": p.latest_handshake.and_then(unix).map(|h| age(now, h)),
                            "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.alert(
            name,
            severity,
            message,
            json!({
                EVENT_KEY: MeshEvent::TunnelDown.as_str(),
                "sensor": name,
                "interface": name,
                "state": r.state,
                "reason": r.reason,
                "level": r.level,
                "link": r.link,
                "peers": peers,
                "stale_after": self.cfg.stale_after,
                "previous_severity": previous,
                "recovered": severity == Severity::Normal,
                "reminder": matches!(report, Report::Reminder(_)),
            }),
            now,
        )
    }

    pub(super) fn peer_alert(
        &self,
        p: &MeshPeer,
        r: &PeerReading,
        report: Report,
        now: Timestamp,
    ) -> Alert {
        let (severity, previous) = match report {
            Report::Changed { from, to } => (to, from),
            Report::Reminder(s) => (s, s),
        };
        let event = match (severity, previous) {
            (Severity::Warning, _) | (Severity::Normal, Severity::Warning) => {
                MeshEvent::PeerDegraded
            }
            _ => MeshEvent::PeerUnreachable,
        };
        let target = p.address.map(|a| format!(" ({a})")).unwrap_or_default();
        let evidence = describe_evidence(r, self.cfg.stale_after);
        let message = match severity {
            Severity::Normal => format!("peer {}{target} reachable again: {evidence}", p.name),
            Severity::Warning => format!("peer {}{target} degraded: {evidence}", p.name),
            _ => format!("peer {}{target} unreachable: {evidence}", p.name),
        };
        self.alert(
            &p.name,
            severity,
            message,
            json!({
                EVENT_KEY: event.as_str(),
                "sensor": p.name,
                "peer": p.name,
                PEER_NODE_KEY: p.node_name(),
                "interface": p.interface,
                "address": p.address,
                "state": r.state,
                "level": r.level,
                "latest_handshake_age_seconds": r.handshake_age,
                "activity_age_seconds": r.activity_age,
                "stale_after": self.cfg.stale_after,
                "rx_bytes": r.rx_bytes,
                "tx_bytes": r.tx_bytes,
                "endpoint": r.endpoint,
                "probe": r.probe,
                "probe_error": r.probe_error,
                "route": r.route,
                "previous_severity": previous,
                "recovered": severity == Severity::Normal,
                "reminder": matches!(report, Report::Reminder(_)),
            }),
            now,
        )
    }

    pub(super) fn failback_alert(
        &self,
        p: &MeshPeer,
        f: &skos_core::config::FailoverConfig,
        r: &PeerReading,
        changes: Vec<skos_core::protocol::Change>,
        now: Timestamp,
    ) -> Alert {
        self.alert(
            &p.name,
            Severity::Normal,
            format!(
                "routes for peer {} back on the primary path after it answered for {} s",
                p.name, f.hold_seconds
            ),
            json!({
                EVENT_KEY: MeshEvent::RouteRestored.as_str(),
                "sensor": p.name,
                "peer": p.name,
                PEER_NODE_KEY: p.node_name(),
                "networks": f.networks,
                "primary_check": r.primary_check,
                "hold_seconds": f.hold_seconds,
                "changes": changes,
            }),
            now,
        )
    }
}

fn describe_evidence(r: &PeerReading, stale_after: f64) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &r.probe {
        parts.push(format!(
            "{}/{} {} probes answered{}",
            p.received,
            p.sent,
            p.method,
            p.rtt_avg_ms
                .map(|ms| format!(" ({ms:.1} ms average)"))
                .unwrap_or_default()
        ));
    } else if let Some(e) = &r.probe_error {
        parts.push(format!("not probed: {e}"));
    }
    match r.activity_age {
        Some(a) if a > stale_after => parts.push(format!(
            "no handshake or data for {a:.0} s (stale after {stale_after} s)"
        )),
        Some(a) => parts.push(format!("last handshake or data {a:.0} s ago")),
        None => parts.push("no handshake or data since the tunnel came up".into()),
    }
    parts.join(", ")
}
