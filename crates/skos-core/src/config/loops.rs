//! `loop:`: the loop breaker (runaway processing chains).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{strings, ConfigIssue};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoopConfig {
    pub max_depth: u32,
    pub max_iterations: u32,
    /// Actions per condition.
    pub actions: BTreeMap<String, Vec<String>>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_iterations: 100,
            actions: BTreeMap::from([
                ("depth_exceeded".to_string(), strings(&["circuit_break"])),
                ("iterations_exceeded".to_string(), strings(&["reset_chain"])),
            ]),
        }
    }
}

impl LoopConfig {
    /// Checks beyond the action names (which `Config::check` does).
    pub fn check(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        if self.max_depth == 0 {
            out.push(super::issue("loop.max_depth", "must be at least 1"));
        }
        if self.max_iterations == 0 {
            out.push(super::issue("loop.max_iterations", "must be at least 1"));
        }
        out
    }
}
