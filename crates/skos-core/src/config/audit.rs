//! `audit:`: how the audit trail is kept compact: when the embedded
//! trail's live file is sealed into a compressed segment, how long sealed
//! records are kept (expiry by policy, recorded in the trail), and how
//! often a leader anchors the distributed trail with a checkpoint record.

use serde::{Deserialize, Serialize};

use super::{issue, CheckContext, Config, ConfigIssue, Section};

/// The bounds of `audit.retention_days` (and `general.audit_retention_days`).
pub const RETENTION_DAYS: std::ops::RangeInclusive<u64> = 1..=36_500;
/// The bounds of `audit.segment_bytes`: 64 KiB to 1 GiB.
pub const SEGMENT_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=1 << 30;
/// The bounds of `audit.segment_hours`: an hour to a year.
pub const SEGMENT_HOURS: std::ops::RangeInclusive<u64> = 1..=8_760;
/// The bounds of `audit.checkpoint_minutes`: a minute to a day.
pub const CHECKPOINT_MINUTES: std::ops::RangeInclusive<u64> = 1..=1_440;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    /// Days a record is kept (by the time of the newest record of its
    /// segment, embedded; by the stream's `max_age`, distributed); `None`
    /// (the default): every record is kept. Overrides
    /// `general.audit_retention_days`.
    pub retention_days: Option<u64>,
    /// The live file is sealed into a segment once it holds this many
    /// bytes (embedded mode).
    pub segment_bytes: u64,
    /// ... or once its oldest record is this many hours old.
    pub segment_hours: u64,
    /// A leader writes an `audit_checkpoint` record at least this often,
    /// in minutes (distributed mode with a retention): the anchor verify
    /// tells expiry from a purge by.
    pub checkpoint_minutes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: None,
            segment_bytes: 64 << 20,
            segment_hours: 24,
            checkpoint_minutes: 60,
        }
    }
}

impl Config {
    /// The retention that applies, in days: `audit.retention_days`, else
    /// the seed's `general.audit_retention_days`; `None`: keep every record.
    pub fn audit_retention_days(&self) -> Option<u64> {
        self.audit
            .retention_days
            .or(self.general.audit_retention_days)
    }
}

fn bounded(
    out: &mut Vec<ConfigIssue>,
    key: &str,
    value: u64,
    range: &std::ops::RangeInclusive<u64>,
    unit: &str,
) {
    if !range.contains(&value) {
        out.push(issue(
            key,
            format!(
                "{value} is out of bounds: {} – {} {unit}",
                range.start(),
                range.end()
            ),
        ));
    }
}

impl Section for AuditConfig {
    const KEY: &'static str = "audit";

    fn get(cfg: &Config) -> &Self {
        &cfg.audit
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.audit
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        if let Some(days) = self.retention_days {
            bounded(out, "audit.retention_days", days, &RETENTION_DAYS, "days");
        }
        bounded(
            out,
            "audit.segment_bytes",
            self.segment_bytes,
            &SEGMENT_BYTES,
            "bytes",
        );
        bounded(
            out,
            "audit.segment_hours",
            self.segment_hours,
            &SEGMENT_HOURS,
            "hours",
        );
        bounded(
            out,
            "audit.checkpoint_minutes",
            self.checkpoint_minutes,
            &CHECKPOINT_MINUTES,
            "minutes",
        );
    }

    fn warn(&self, cfg: &Config, out: &mut Vec<ConfigIssue>) {
        if let (Some(mine), Some(seed)) = (self.retention_days, cfg.general.audit_retention_days) {
            if mine != seed {
                out.push(issue(
                    "general.audit_retention_days",
                    format!("{seed} is not applied: audit.retention_days ({mine}) is"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retention_is_the_audit_keys_else_the_seeds_and_bounded() {
        let cfg = Config::from_yaml("general: {audit_retention_days: 30}\n").unwrap();
        assert_eq!(cfg.audit_retention_days(), Some(30));
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
        let cfg =
            Config::from_yaml("general: {audit_retention_days: 30}\naudit: {retention_days: 90}\n")
                .unwrap();
        assert_eq!(cfg.audit_retention_days(), Some(90));
        assert_eq!(cfg.warnings()[0].path, "general.audit_retention_days");
        assert_eq!(Config::default().audit_retention_days(), None);
        for (text, key) in [
            ("audit: {retention_days: 0}\n", "audit.retention_days"),
            (
                "general: {audit_retention_days: 0}\n",
                "general.audit_retention_days",
            ),
            ("audit: {segment_bytes: 10}\n", "audit.segment_bytes"),
            ("audit: {segment_hours: 0}\n", "audit.segment_hours"),
            (
                "audit: {checkpoint_minutes: 5000}\n",
                "audit.checkpoint_minutes",
            ),
        ] {
            let issues = match Config::from_yaml(text) {
                Ok(c) => c.check(),
                Err(issues) => issues,
            };
            assert!(issues.iter().any(|i| i.path == key), "{text}: {issues:?}");
        }
    }
}
