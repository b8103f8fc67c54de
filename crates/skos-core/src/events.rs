//! The events that name a problem inside its kind, as alerts carry them in
//! `details.event`, and the problem keys built from them. Each wire string
//! is spelt here once.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::protocol::{Alert, AlertKind};
use crate::NodeName;

/// What breakers, verifications, ladders and open alerts are kept per on
/// a node: an alert's kind and sensor (`thermal:cpu`, `storage:/srv`,
/// `mesh:wg0`), or its kind alone when it names no sensor. On the wire
/// (commands' `problem`, snapshots, audit records) it is that string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProblemKey(String);

impl ProblemKey {
    /// The problem of an alert of `kind` about `sensor`.
    pub fn new(kind: &AlertKind, sensor: Option<&str>) -> Self {
        match sensor {
            Some(s) => ProblemKey(format!("{}:{s}", kind.as_str())),
            None => ProblemKey(kind.as_str().to_string()),
        }
    }

    /// `mesh:node`: a node that every peer watching it sees down.
    pub fn mesh_node() -> Self {
        ProblemKey::new(&AlertKind::Mesh, Some(MESH_NODE_SENSOR))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `workload:<name>`: what the coordinator keeps the steps that move,
    /// stop and start a workload under (breakers, pending commands).
    pub fn of_workload(workload: &str) -> Self {
        ProblemKey(format!("{WORKLOAD_PREFIX}{workload}"))
    }

    /// The workload of a `workload:<name>` problem.
    pub fn workload(&self) -> Option<&str> {
        self.0.strip_prefix(WORKLOAD_PREFIX)
    }

    /// `orchestrator:<node>`: what the coordinator keeps the drain and
    /// undrain of a node through its orchestrator under.
    pub fn of_orchestrator(node: &NodeName) -> Self {
        ProblemKey(format!("{ORCHESTRATOR_PREFIX}{node}"))
    }

    /// The node of an `orchestrator:<node>` problem.
    pub fn orchestrated_node(&self) -> Option<NodeName> {
        self.0
            .strip_prefix(ORCHESTRATOR_PREFIX)
            .and_then(|n| NodeName::parse(n).ok())
    }
}

/// The prefix of a node's orchestrator problem key.
pub const ORCHESTRATOR_PREFIX: &str = "orchestrator:";

/// The prefix of a workload's problem key.
pub const WORKLOAD_PREFIX: &str = "workload:";

impl fmt::Display for ProblemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl PartialEq<str> for ProblemKey {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ProblemKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// `details` key of an alert's event.
pub const EVENT_KEY: &str = "event";
/// `details.event` of an early warning: a `warning` raised because the
/// reading's trend (a mount's fill rate, a temperature's rise) will reach
/// critical within the horizon, before any threshold is crossed.
pub const PREDICTED: &str = "predicted";
/// `details.event` of the `normal` alert that withdraws an early warning
/// raised while the level was `normal`, once the trend no longer reaches
/// critical within twice the horizon (the rise stopped short, or the fill
/// ended): it closes the warning and lifts what answered it.
pub const PREDICTION_WITHDRAWN: &str = "prediction_withdrawn";
/// `details` key of the SKOS node a mesh peer runs on.
pub const PEER_NODE_KEY: &str = "peer_node";
/// Prefix of a mesh problem key: `mesh:<interface or peer>`.
pub const MESH_PREFIX: &str = "mesh:";
/// The sensor of a node that every peer watching it sees down: its
/// problem is `mesh:node`.
pub const MESH_NODE_SENSOR: &str = "node";

/// What a mesh alert is about (the row of `mesh.actions` that answers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MeshEvent {
    /// A WireGuard interface is down or its handshake is stale.
    TunnelDown,
    /// A peer does not answer probes.
    PeerUnreachable,
    /// A peer answers slowly or loses probes.
    PeerDegraded,
    /// Raised by the coordinator on a node every watcher sees down.
    NodeUnreachable,
    /// Raised by the coordinator when no action of a row healed the problem.
    Escalated,
    /// A peer's routes went back to the primary path after the hold time.
    RouteRestored,
}

impl MeshEvent {
    pub const ALL: [MeshEvent; 6] = [
        MeshEvent::TunnelDown,
        MeshEvent::PeerUnreachable,
        MeshEvent::PeerDegraded,
        MeshEvent::NodeUnreachable,
        MeshEvent::Escalated,
        MeshEvent::RouteRestored,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            MeshEvent::TunnelDown => "tunnel_down",
            MeshEvent::PeerUnreachable => "peer_unreachable",
            MeshEvent::PeerDegraded => "peer_degraded",
            MeshEvent::NodeUnreachable => "node_unreachable",
            MeshEvent::Escalated => "escalated",
            MeshEvent::RouteRestored => "route_restored",
        }
    }

    pub fn parse(s: &str) -> Option<MeshEvent> {
        MeshEvent::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event of a mesh alert (`details.event`), if it is one of these.
    pub fn of(alert: &Alert) -> Option<MeshEvent> {
        alert
            .details
            .get(EVENT_KEY)
            .and_then(|v| v.as_str())
            .and_then(MeshEvent::parse)
    }
}

impl std::fmt::Display for MeshEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The SKOS node a mesh alert's peer runs on (`details.peer_node`).
pub fn peer_node_of(alert: &Alert) -> Option<&str> {
    alert.details.get(PEER_NODE_KEY).and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_keys_compare_as_their_text() {
        let k = ProblemKey::new(&AlertKind::Thermal, Some("cpu"));
        assert_eq!(k.as_str(), "thermal:cpu");
        assert!(k == *"thermal:cpu");
        assert!(k != *"thermal:gpu");
        assert!(k == "thermal:cpu");
        assert!(k != "thermal:gpu");
        assert_eq!(ProblemKey::new(&AlertKind::Loop, None).as_str(), "loop");
    }

    #[test]
    fn events_and_peer_nodes_are_read_from_details() {
        let a: Alert = serde_json::from_value(serde_json::json!({
            "agent_id": "mesh-healer-nova", "type": "mesh", "severity": "critical",
            "node": "nova", "timestamp": "2024-01-01T00:00:00Z",
            "details": {"event": "peer_unreachable", "peer_node": "lyra", "sensor": "lyra"}
        }))
        .unwrap();
        assert_eq!(MeshEvent::of(&a), Some(MeshEvent::PeerUnreachable));
        assert_eq!(peer_node_of(&a), Some("lyra"));
        assert_eq!(a.problem(), "mesh:lyra");
        assert_eq!(MeshEvent::TunnelDown.to_string(), "tunnel_down");
        assert_eq!(ProblemKey::mesh_node().to_string(), "mesh:node");
        let mut b = a.clone();
        b.details.clear();
        assert_eq!(MeshEvent::of(&b), None);
        assert_eq!(peer_node_of(&b), None);
    }

    #[test]
    fn every_event_round_trips() {
        for e in MeshEvent::ALL {
            assert_eq!(MeshEvent::parse(e.as_str()), Some(e));
        }
        assert_eq!(MeshEvent::parse("melting"), None);
    }
}
