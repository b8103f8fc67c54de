//! What the level-based sections (thermal, storage) share: thresholds per
//! level, the healing table per level, the `for` of each level, and their
//! checks; `check_actions` checks every healing table's action names.

use serde::{Deserialize, Serialize};

use super::{ascending, issue, ConfigIssue};
use crate::catalogue;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
    pub emergency: f64,
}

/// Actions per severity, run in order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionTable {
    pub warning: Vec<String>,
    pub critical: Vec<String>,
    pub emergency: Vec<String>,
}

/// Seconds a level must hold before it counts (the `for` of a level).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LevelHold {
    pub warning: f64,
    pub critical: f64,
    pub emergency: f64,
}

pub(super) fn check_thresholds(out: &mut Vec<ConfigIssue>, prefix: &str, t: &Thresholds) {
    for (name, v) in [
        ("warning", t.warning),
        ("critical", t.critical),
        ("emergency", t.emergency),
    ] {
        if !v.is_finite() {
            out.push(issue(
                format!("{prefix}.thresholds.{name}"),
                "must be a number",
            ));
        }
    }
    if !ascending(t.warning, t.critical) {
        out.push(issue(
            format!("{prefix}.thresholds.critical"),
            format!("must be above warning ({} <= {})", t.critical, t.warning),
        ));
    }
    if !ascending(t.critical, t.emergency) {
        out.push(issue(
            format!("{prefix}.thresholds.emergency"),
            format!("must be above critical ({} <= {})", t.emergency, t.critical),
        ));
    }
}

pub(super) fn check_table(out: &mut Vec<ConfigIssue>, prefix: &str, t: &ActionTable) {
    check_actions(out, &format!("{prefix}.warning"), &t.warning);
    check_actions(out, &format!("{prefix}.critical"), &t.critical);
    check_actions(out, &format!("{prefix}.emergency"), &t.emergency);
}

pub(super) fn check_actions(out: &mut Vec<ConfigIssue>, prefix: &str, actions: &[String]) {
    for (i, a) in actions.iter().enumerate() {
        if !catalogue::is_known(a) {
            // Every name it could have meant (there are a few dozen).
            let known: Vec<&str> = catalogue::all().map(|s| s.name).collect();
            out.push(issue(
                format!("{prefix}[{i}]"),
                format!("unknown action {a:?}; known: {}", known.join(", ")),
            ));
        }
    }
}
