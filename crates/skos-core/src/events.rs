//! The events that name a problem inside its kind, as alerts carry them in
//! `details.event`, and the problem keys built from them. Each wire string
//! is spelt here once.

use crate::protocol::Alert;

/// `details` key of an alert's event.
pub const EVENT_KEY: &str = "event";
/// `details` key of the SKOS node a mesh peer runs on.
pub const PEER_NODE_KEY: &str = "peer_node";
/// Prefix of a mesh problem key: `mesh:<interface or peer>`.
pub const MESH_PREFIX: &str = "mesh:";
/// The problem key of a node that every peer watching it sees down.
pub const MESH_NODE_PROBLEM: &str = "mesh:node";

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
    fn every_event_round_trips() {
        for e in MeshEvent::ALL {
            assert_eq!(MeshEvent::parse(e.as_str()), Some(e));
        }
        assert_eq!(MeshEvent::parse("melting"), None);
    }
}
