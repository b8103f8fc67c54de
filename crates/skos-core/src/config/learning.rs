//! `learning:`: what the coordinator may learn from verified outcomes.
//!
//! The effectiveness ledger is always kept; learning only changes which
//! of a healing table's own actions is tried first, and only for the
//! problem kinds listed here.

use serde::{Deserialize, Serialize};

use super::{issue, CheckContext, Config, ConfigIssue, Section};
use crate::protocol::AlertKind;

/// The problem kinds whose table rows the ledger may reorder.
pub const LEARNABLE_KINDS: &[AlertKind] = &[AlertKind::Thermal, AlertKind::Storage];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearningConfig {
    /// Problem kinds learning applies to (`thermal`, `storage`); empty:
    /// learning is off and every decision is the table's.
    pub kinds: Vec<String>,
    /// An action whose last this many verifications on a node all failed
    /// is skipped there, the table's next action tried instead.
    pub skip_after_failures: u32,
    /// Within a row, try first the action with the best verified record
    /// on the node (ties keep the table's order).
    pub reorder: bool,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            kinds: Vec::new(),
            skip_after_failures: 3,
            reorder: true,
        }
    }
}

impl LearningConfig {
    /// Whether learning applies to problems of `kind`.
    pub fn applies_to(&self, kind: &AlertKind) -> bool {
        self.kinds.iter().any(|k| k == kind.as_str())
    }
}

impl Section for LearningConfig {
    const KEY: &'static str = "learning";

    fn get(cfg: &Config) -> &Self {
        &cfg.learning
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.learning
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        for (i, k) in self.kinds.iter().enumerate() {
            if !LEARNABLE_KINDS.iter().any(|l| l.as_str() == k) {
                let known: Vec<&str> = LEARNABLE_KINDS.iter().map(AlertKind::as_str).collect();
                out.push(issue(
                    format!("learning.kinds[{i}]"),
                    format!(
                        "{k:?} is not a kind learning applies to (known: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        if self.skip_after_failures == 0 {
            out.push(issue(
                "learning.skip_after_failures",
                "must be at least 1 (an action is skipped only after it failed)",
            ));
        }
    }
}
