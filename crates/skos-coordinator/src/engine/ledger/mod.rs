//! The effectiveness ledger: what each action did for each problem on
//! each node, from verified outcomes, and what the coordinator learns from
//! it.
//!
//! Every command sent is an attempt; its verification (or, for an action
//! verified by its result, its result) is a success, a failure or
//! uncredited (the metric fell without proof the action did it). The
//! ledger keeps per (node, problem, action) the counts, the current run
//! of failures and the time from fault to verified recovery; the fleet's
//! view per (problem, action) is their sum. Each node's entries are kept
//! in its durable state, so what was learnt survives restarts and
//! takeovers.
//!
//! Learning (`learning.kinds`) stays inside the table: an action whose
//! last `skip_after_failures` verifications on a node all failed is
//! replaced there by the next action of the table's next row up that has
//! not failed so (never more than one level stronger); within a row, the action with the best record on the
//! node goes first. Nothing the table does not list is ever chosen, and
//! every choice still passes the gates (breakers, rate, approval).
//! Each change to the table's order is audited with its evidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use skos_core::counters::Counter;
use skos_core::events::ProblemKey;
use skos_core::protocol::{Alert, AlertKind, AuditEvent, Severity};
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;

use super::{audit, Effect, Engine};

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its metric fell after it and stayed down (or, for an action
    /// verified by its result, it succeeded).
    Verified,
    /// Its metric did not fall in time, or it failed, expired, was
    /// refused or got no result.
    Failed,
    /// The metric fell without proof the action brought it down.
    Uncredited,
    /// The agent found the problem gone when the action was to run and did
    /// nothing (`not_needed`): a false remediation avoided; neither a
    /// success nor a failure of the action.
    NotNeeded,
}

/// What one action did for one problem on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Commands sent.
    pub attempts: u64,
    pub verified: u64,
    pub failed: u64,
    pub uncredited: u64,
    /// Commands answered `not_needed`: the problem was gone before the
    /// action ran.
    #[serde(default)]
    pub not_needed: u64,
    /// Failures since the last verified success.
    pub failing_streak: u32,
    /// Seconds from the fault's alert to its verified recovery, summed
    /// over `verified` (the mean is this over `verified`).
    pub recovery_seconds_total: f64,
    /// The longest of them.
    pub recovery_seconds_max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<Outcome>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "timefmt::option"
    )]
    pub last_at: Option<Timestamp>,
}

impl Record {
    /// Verified successes over judged attempts, when any was judged.
    pub fn success_rate(&self) -> Option<f64> {
        let judged = self.verified + self.failed;
        (judged > 0).then(|| self.verified as f64 / judged as f64)
    }

    /// Mean seconds from fault to verified recovery.
    pub fn mean_recovery_seconds(&self) -> Option<f64> {
        (self.verified > 0).then(|| self.recovery_seconds_total / self.verified as f64)
    }

    fn add(&mut self, other: &Record) {
        self.attempts += other.attempts;
        self.verified += other.verified;
        self.failed += other.failed;
        self.uncredited += other.uncredited;
        self.not_needed += other.not_needed;
        self.recovery_seconds_total += other.recovery_seconds_total;
        self.recovery_seconds_max = self.recovery_seconds_max.max(other.recovery_seconds_max);
        if other.last_at > self.last_at {
            self.last_at = other.last_at;
            self.last_outcome = other.last_outcome;
        }
    }
}

/// One ledger entry as kept in a node's saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub node: NodeName,
    pub problem: String,
    pub action: String,
    #[serde(flatten)]
    pub record: Record,
}

/// Entries per node at most: a node's problems times their actions is a
/// few dozen; a flood of invented problem names must not grow it.
const MAX_PER_NODE: usize = 256;

/// The ledger: records by (node, problem, action).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    by: BTreeMap<NodeName, BTreeMap<(String, String), Record>>,
}

impl Ledger {
    fn entry(&mut self, node: &NodeName, problem: &str, action: &str) -> Option<&mut Record> {
        let of_node = self.by.entry(node.clone()).or_default();
        let key = (problem.to_string(), action.to_string());
        if !of_node.contains_key(&key) && of_node.len() >= MAX_PER_NODE {
            return None;
        }
        Some(of_node.entry(key).or_default())
    }

    /// The record of (node, problem, action), if any.
    pub(crate) fn get(&self, node: &NodeName, problem: &str, action: &str) -> Option<&Record> {
        self.by
            .get(node)?
            .get(&(problem.to_string(), action.to_string()))
    }

    /// A node's entries, for its saved state.
    pub(crate) fn of_node(&self, node: &NodeName) -> Vec<LedgerEntry> {
        self.by
            .get(node)
            .into_iter()
            .flat_map(|m| m.iter())
            .map(|((problem, action), record)| LedgerEntry {
                node: node.clone(),
                problem: problem.clone(),
                action: action.clone(),
                record: record.clone(),
            })
            .collect()
    }

    /// Every entry.
    pub(crate) fn all(&self) -> Vec<LedgerEntry> {
        self.by.keys().flat_map(|n| self.of_node(n)).collect()
    }

    /// Continue from saved entries.
    pub(crate) fn restore(&mut self, entries: Vec<LedgerEntry>) {
        for e in entries {
            if let Some(r) = self.entry(&e.node, &e.problem, &e.action) {
                *r = e.record;
            }
        }
    }

    /// Forget a node's entries (it left the fleet); how many there were.
    pub(crate) fn forget(&mut self, node: &NodeName) -> usize {
        self.by.remove(node).map_or(0, |m| m.len())
    }

    /// The fleet's view: records summed per (problem, action).
    pub(crate) fn fleet(&self) -> BTreeMap<(String, String), Record> {
        let mut out: BTreeMap<(String, String), Record> = BTreeMap::new();
        for of_node in self.by.values() {
            for (key, r) in of_node {
                out.entry(key.clone()).or_default().add(r);
            }
        }
        out
    }
}

impl Engine {
    /// A command for (node, problem, action) was sent.
    pub(super) fn ledger_attempt(&mut self, node: &NodeName, problem: &ProblemKey, action: &str) {
        if let Some(r) = self.ledger.entry(node, problem.as_str(), action) {
            r.attempts += 1;
        }
    }

    /// An attempt ended in `outcome` at `now`; for a verified one, `fault`
    /// is when its problem was raised (in the node's clock).
    pub(super) fn ledger_outcome(
        &mut self,
        (node, problem, action): (&NodeName, &ProblemKey, &str),
        outcome: Outcome,
        fault: Option<Timestamp>,
        now: Timestamp,
    ) {
        let recovered = fault.map(|f| {
            let secs = (self.node_time(node, now) - f).num_milliseconds() as f64 / 1000.0;
            secs.max(0.0)
        });
        let Some(r) = self.ledger.entry(node, problem.as_str(), action) else {
            return;
        };
        match outcome {
            Outcome::Verified => {
                r.verified += 1;
                r.failing_streak = 0;
                if let Some(s) = recovered {
                    r.recovery_seconds_total += s;
                    r.recovery_seconds_max = r.recovery_seconds_max.max(s);
                }
            }
            Outcome::Failed => {
                r.failed += 1;
                r.failing_streak = r.failing_streak.saturating_add(1);
            }
            Outcome::Uncredited => r.uncredited += 1,
            Outcome::NotNeeded => r.not_needed += 1,
        }
        r.last_outcome = Some(outcome);
        r.last_at = Some(now);
    }

    /// The actions to take for `alert` at `severity`, given the table's
    /// `actions`: the table's, unless learning applies to the problem's
    /// kind and the ledger says otherwise (see the module documentation).
    pub(super) fn learned(
        &mut self,
        alert: &Alert,
        severity: Severity,
        actions: Vec<String>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Vec<String> {
        let learning = &self.cfg.learning;
        if !learning.applies_to(&alert.kind) || actions.is_empty() {
            return actions;
        }
        let limit = learning.skip_after_failures.max(1);
        let node = &alert.node;
        let problem = alert.problem();
        let record = |a: &str| self.ledger.get(node, problem.as_str(), a);
        let failing = |a: &str| record(a).is_some_and(|r| r.failing_streak >= limit);
        // The table's later rows, in order: where a skipped action's
        // replacement comes from.
        let later: Vec<String> = higher_rows(&self.cfg, &alert.kind, severity)
            .into_iter()
            .filter(|a| !actions.contains(a))
            .collect();
        let destructive = |a: &str| skos_core::catalogue::spec(a).is_some_and(|s| s.destructive);
        let mut chosen: Vec<String> = Vec::new();
        let mut skipped: Vec<(String, Option<String>)> = Vec::new();
        for a in &actions {
            if !failing(a) {
                chosen.push(a.clone());
                continue;
            }
            // A replacement is never more drastic in kind: a failing
            // throttle is not replaced by moving workloads off the node.
            let next = later
                .iter()
                .filter(|b| destructive(a) || !destructive(b))
                .find(|b| !failing(b) && !chosen.contains(b) && !actions.contains(b))
                .cloned();
            match &next {
                Some(b) => chosen.push(b.clone()),
                // Nothing better in the table: the breaker decides.
                None => chosen.push(a.clone()),
            }
            skipped.push((a.clone(), next));
        }
        if learning.reorder {
            // Stable: equal records keep the table's order.
            chosen.sort_by(|a, b| {
                let rate = |x: &str| record(x).and_then(Record::success_rate).unwrap_or(-1.0);
                rate(b).total_cmp(&rate(a))
            });
        }
        chosen.dedup();
        if chosen == actions {
            return actions;
        }
        let evidence: Vec<serde_json::Value> = actions
            .iter()
            .chain(chosen.iter())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|a| {
                let r = record(a).cloned().unwrap_or_default();
                json!({"action": a, "attempts": r.attempts, "verified": r.verified, "failed": r.failed, "failing_streak": r.failing_streak, "last_at": r.last_at.map(|t| timefmt::format(&t))})
            })
            .collect();
        self.counters.inc(Counter::LearningApplied);
        let skipped_text: Vec<String> = skipped
            .iter()
            .map(|(a, b)| match b {
                Some(b) => format!("{a} failed its last {limit} verifications here: {b} instead"),
                None => format!(
                    "{a} failed its last {limit} verifications here, nothing later in the table"
                ),
            })
            .collect();
        out.push(audit(
            AuditEvent::Learned,
            now,
            Some(node),
            format!(
                "{problem} on {node} at {}: {} instead of the table's {}{}",
                severity.as_str(),
                chosen.join(", "),
                actions.join(", "),
                if skipped_text.is_empty() {
                    " (better record first)".to_string()
                } else {
                    format!(" ({})", skipped_text.join("; "))
                }
            ),
            json!({"alert_id": alert.alert_id, "problem": problem, "severity": severity, "table": actions, "chosen": chosen, "evidence": evidence}),
        ));
        chosen
    }
}

impl Engine {
    /// The ledger as `skos status` shows it: the fleet's records per
    /// (problem, action), or, when the query names a node, that node's;
    /// most attempts first.
    pub(in crate::engine) fn ledger_rows(
        &self,
        query: &crate::status::StatusQuery,
    ) -> Vec<crate::status::LedgerRow> {
        let rows: Vec<((String, String), Record)> = match &query.node {
            Some(node) => self
                .ledger
                .of_node(node)
                .into_iter()
                .map(|e| ((e.problem, e.action), e.record))
                .collect(),
            None => self.ledger.fleet().into_iter().collect(),
        };
        let mut rows: Vec<crate::status::LedgerRow> = rows
            .into_iter()
            .map(|((problem, action), r)| crate::status::LedgerRow {
                problem: crate::status::clip(&problem),
                action: crate::status::clip(&action),
                attempts: r.attempts,
                verified: r.verified,
                failed: r.failed,
                uncredited: r.uncredited,
                not_needed: r.not_needed,
                success_rate: r.success_rate(),
                mean_recovery_seconds: r.mean_recovery_seconds(),
                max_recovery_seconds: (r.verified > 0).then_some(r.recovery_seconds_max),
                last_outcome: r.last_outcome,
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.attempts));
        rows.truncate(crate::status::MAX_LEDGER_ROWS);
        rows
    }
}

/// The actions of the table row just above `severity` for `kind`: a
/// failing action is replaced by one at most one level stronger (a
/// warning's by a critical one, never an emergency's).
fn higher_rows(
    cfg: &skos_core::config::Config,
    kind: &AlertKind,
    severity: Severity,
) -> Vec<String> {
    let table = match kind {
        AlertKind::Thermal => &cfg.thermal.actions,
        AlertKind::Storage => &cfg.storage.actions,
        _ => return Vec::new(),
    };
    match severity {
        Severity::Normal | Severity::Warning => table.critical.clone(),
        Severity::Critical => table.emergency.clone(),
        Severity::Emergency => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
