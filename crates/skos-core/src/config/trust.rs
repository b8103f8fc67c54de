//! `trust:`: who may order a node to act.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{issue, non_negative, CheckContext, Config, ConfigIssue, Section};

/// Who may order a node to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustConfig {
    /// Agents refuse unsigned commands.
    pub require_signatures: bool,
    /// Public keys (nkeys, `U...`) whose signed commands agents accept;
    /// several, so keys can be rotated.
    pub coordinator_keys: Vec<String>,
    /// The coordinator's nkeys seed file (`skos keys generate`).
    pub signing_key_file: Option<PathBuf>,
    /// How long an executed `action_id` is remembered when its command
    /// carries no deadline (seconds). No longer used: agents refuse a
    /// command without a deadline; kept so older configs load.
    pub replay_window: f64,
    /// Agents refuse a command whose deadline is further away than this
    /// (seconds): a signed command cannot be kept for later use. Keep
    /// `coordinator.command_deadline` below it (`skos up`, one config for
    /// both, refuses to start otherwise).
    pub max_deadline_seconds: f64,
    /// This node's own nkeys seed file (`skos keys generate`, or the
    /// `<node>-signing.nk` that `skos fleet nats-config` writes): the
    /// agent signs its heartbeats, alerts and command results with it.
    /// Never a NATS login key.
    pub node_key_file: Option<PathBuf>,
    /// Each node's public key (node name → `U...`), on the coordinator:
    /// a message that speaks for a node listed here (its heartbeat, alert
    /// or result) is taken only signed with that node's key; any other is
    /// refused, counted and audited.
    pub node_keys: BTreeMap<String, String>,
    /// The coordinator refuses a heartbeat, alert or result from a node
    /// that has no key in `node_keys` too (off: such a node's messages are
    /// taken unsigned, as before node keys existed).
    pub require_node_signatures: bool,
}

/// The longest `trust.max_deadline_seconds` may be (a day).
pub(crate) const MAX_DEADLINE_BOUND: f64 = 86_400.0;

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            require_signatures: true,
            coordinator_keys: Vec::new(),
            signing_key_file: None,
            replay_window: 7.0 * 86400.0,
            max_deadline_seconds: 900.0,
            node_key_file: None,
            node_keys: BTreeMap::new(),
            require_node_signatures: false,
        }
    }
}

impl Section for TrustConfig {
    const KEY: &'static str = "trust";

    fn get(cfg: &Config) -> &Self {
        &cfg.trust
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.trust
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        let ahead = self.max_deadline_seconds;
        if !(ahead.is_finite() && ahead > 0.0 && ahead <= MAX_DEADLINE_BOUND) {
            out.push(issue(
                "trust.max_deadline_seconds",
                format!(
                    "must be more than 0 and at most {MAX_DEADLINE_BOUND} seconds, got {ahead}"
                ),
            ));
        }
        let public_key = |k: &str| {
            k.len() == 56
                && k.starts_with('U')
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        };
        for (i, k) in self.coordinator_keys.iter().enumerate() {
            if !public_key(k) {
                out.push(issue(
                    format!("trust.coordinator_keys[{i}]"),
                    format!("{k:?} is not an nkeys public key (56 characters starting with U)"),
                ));
            }
        }
        for (node, k) in &self.node_keys {
            if let Err(e) = crate::NodeName::parse(node) {
                out.push(issue(
                    format!("trust.node_keys.{}", node.escape_debug()),
                    format!("not a node name: {e}"),
                ));
            }
            if !public_key(k) {
                out.push(issue(
                    format!("trust.node_keys.{}", node.escape_debug()),
                    format!("{k:?} is not an nkeys public key (56 characters starting with U)"),
                ));
            } else if self.coordinator_keys.iter().any(|c| c == k) {
                out.push(issue(
                    format!("trust.node_keys.{}", node.escape_debug()),
                    "is also in trust.coordinator_keys: a node's key must be its own, never a coordinator's",
                ));
            }
        }
        if !non_negative(self.replay_window) {
            out.push(issue("trust.replay_window", "must be zero or more seconds"));
        }
    }
}
