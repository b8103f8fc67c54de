//! Simulated nodes: names, heartbeats and alerts in the wire format (built
//! as JSON, so fields added to the protocol later do not break the harness).

use async_nats::Subject;
use bytes::Bytes;
use serde_json::json;
use skos_bus::subjects;
use skos_core::NodeName;

use crate::error::Context;
use crate::Result;

/// A short id that keeps names and ids of one run apart from another's
/// (matters with `--nats-url`, where streams outlive a run).
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}",
        (nanos as u64 ^ u64::from(std::process::id())) & 0xff_ffff
    )
}

pub fn node(prefix: &str, i: usize) -> Result<NodeName> {
    let name = format!("{prefix}{i:06}");
    NodeName::parse(&name).ctx(format!("node name {name}"))
}

/// A heartbeat as a thermal-sentinel agent sends it.
pub fn heartbeat(node: &NodeName, interval: f64, cpu_temp: f64) -> Result<Bytes> {
    let hb = json!({
        "agent_id": format!("thermal-sentinel-{node}"),
        "agent_type": "thermal_sentinel",
        "node": node,
        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
        "cpu_temp": cpu_temp,
        "gpu_temp": null,
        "interval_seconds": interval,
        "throttle_level": 0,
        "metadata": {"antibodies": ["thermal_sentinel"]}
    });
    serde_json::to_vec(&hb)
        .map(Bytes::from)
        .ctx("encode heartbeat")
}

/// A thermal alert with its own id (the JetStream message id).
pub fn alert(node: &NodeName, alert_id: &str, severity: &str, temp: f64) -> Result<Bytes> {
    let a = json!({
        "alert_id": alert_id,
        "agent_id": format!("thermal-sentinel-{node}"),
        "type": "thermal",
        "severity": severity,
        "node": node,
        "message": format!("CPU temperature {temp:.1}°C exceeds {severity} threshold"),
        "details": {"sensor": "cpu", "temperature": temp, "threshold": 75.0},
        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
    });
    serde_json::to_vec(&a).map(Bytes::from).ctx("encode alert")
}

/// The result an agent sends once it has carried out a command
/// successfully (`command` as received, JSON).
pub fn result(command: &serde_json::Value) -> Result<(NodeName, Bytes)> {
    let node = command["node"].as_str().unwrap_or_default();
    let node = NodeName::parse(node).ctx(format!("node of command {command}"))?;
    let r = json!({
        "action_id": command["action_id"],
        "action_type": command["action_type"],
        "node": node,
        "agent_id": format!("thermal-sentinel-{node}"),
        "status": "succeeded",
        "message": "done (skos-bench responder)",
        "changes": [],
        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
    });
    let body = serde_json::to_vec(&r)
        .map(Bytes::from)
        .ctx("encode result")?;
    Ok((node, body))
}

/// A simulated node: its name, heartbeat subject and the CPU temperature
/// its heartbeats report (°C).
pub struct SimNode {
    pub node: NodeName,
    pub subject: Subject,
    pub cpu_temp: f64,
}

impl SimNode {
    /// Its heartbeat, stamped now. A payload sent long after it was built
    /// reads as a clock that is behind (the coordinator raises
    /// `clock_skew` past `coordinator.max_clock_skew_seconds`), so
    /// payloads are built just before they are sent.
    pub fn heartbeat(&self, interval: f64) -> Result<Bytes> {
        heartbeat(&self.node, interval, self.cpu_temp)
    }
}

/// `n` simulated nodes named `prefix` and a number, at 45–64 °C.
pub fn nodes(prefix: &str, n: usize) -> Result<Vec<SimNode>> {
    (0..n)
        .map(|i| {
            let node = node(prefix, i)?;
            Ok(SimNode {
                subject: Subject::from(subjects::heartbeat(&node)),
                node,
                cpu_temp: 45.0 + (i % 20) as f64,
            })
        })
        .collect()
}

/// Subject and heartbeat payload of `n` nodes ([`nodes`]), stamped now:
/// build them just before they are sent ([`SimNode::heartbeat`]).
pub fn fleet(prefix: &str, n: usize, interval: f64) -> Result<Vec<(Subject, Bytes)>> {
    nodes(prefix, n)?
        .into_iter()
        .map(|s| Ok((s.subject.clone(), s.heartbeat(interval)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skos_core::protocol::{decode, Alert, Heartbeat};

    /// A simulated node's heartbeat says when it was built, not when its
    /// node was made: a payload built once and sent a minute later read
    /// as a clock a minute behind, and every node raised `clock_skew`.
    #[test]
    fn a_heartbeat_is_stamped_when_it_is_built() {
        let fleet = nodes("sim-", 3).unwrap();
        assert_eq!(fleet[2].node.as_str(), "sim-000002");
        assert_eq!(
            fleet[2].subject.as_str(),
            subjects::heartbeat(&fleet[2].node)
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
        let hb: Heartbeat = decode(&fleet[1].heartbeat(5.0).unwrap(), 65536).unwrap();
        assert!(
            hb.timestamp >= before && hb.timestamp <= chrono::Utc::now(),
            "stamped {} (built after {before})",
            hb.timestamp
        );
        assert_eq!(hb.cpu_temp, Some(46.0));
    }

    #[test]
    fn messages_decode_as_the_coordinator_decodes_them() {
        let n = node("sim-", 7).unwrap();
        assert_eq!(n.as_str(), "sim-000007");
        let hb: Heartbeat = decode(&heartbeat(&n, 5.0, 50.0).unwrap(), 65536).unwrap();
        assert_eq!(hb.node, n);
        assert_eq!(hb.cpu_temp, Some(50.0));
        let a: Alert = decode(&alert(&n, "x-1", "warning", 80.0).unwrap(), 65536).unwrap();
        assert_eq!(a.alert_id, "x-1");
        assert_eq!(a.problem(), "thermal:cpu");
        let cmd = serde_json::json!({"action_id": "a-1", "action_type": "throttle_50", "node": "sim-000007", "cause": "x-1"});
        let (rn, body) = result(&cmd).unwrap();
        assert_eq!(rn, n);
        let r: skos_core::protocol::CommandResult = decode(&body, 65536).unwrap();
        assert_eq!(r.action_id, "a-1");
        assert!(result(&serde_json::json!({"action_id": "a"})).is_err());
        let f = fleet("f-", 3, 5.0).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[2].0.as_str(), "skos.heartbeat.f-000002");
    }
}
