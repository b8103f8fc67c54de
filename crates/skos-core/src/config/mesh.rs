//! `mesh:`: the mesh healer (WireGuard tunnels and peer reachability).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{strings, ConfigIssue};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshConfig {
    /// Actions per event.
    pub actions: BTreeMap<String, Vec<String>>,
    pub reconnect_attempts: u32,
    pub reconnect_delay_seconds: f64,
    pub interfaces: Vec<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            actions: BTreeMap::from([
                (
                    "tunnel_down".to_string(),
                    strings(&["restart_wireguard", "regenerate_config"]),
                ),
                (
                    "peer_unreachable".to_string(),
                    strings(&["ping_peer", "failover_route"]),
                ),
            ]),
            reconnect_attempts: 3,
            reconnect_delay_seconds: 5.0,
            interfaces: Vec::new(),
        }
    }
}

impl MeshConfig {
    /// Checks beyond the action names (which `Config::check` does).
    pub fn check(&self) -> Vec<ConfigIssue> {
        Vec::new()
    }
}
