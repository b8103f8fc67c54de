//! `general:`: the seed's general settings. `general.log_level` is the
//! top-level `log_level` (moved there when the file is read, see
//! `seed.rs`); the version stamp is accepted and said to be unused; the
//! audit retention applies unless `audit.retention_days` is set.

use serde::{Deserialize, Serialize};

use super::{issue, CheckContext, Config, ConfigIssue, Section};

/// The version of SKOS this is; a `general.version` equal to it is not
/// remarked on.
pub const SKOS_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GeneralSection {
    /// The seed's version stamp of the file. Not used.
    pub version: Option<String>,
    /// The seed's audit retention in days: applied as
    /// `audit.retention_days` when that is not set.
    pub audit_retention_days: Option<u64>,
}

impl Section for GeneralSection {
    const KEY: &'static str = "general";

    fn get(cfg: &Config) -> &Self {
        &cfg.general
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.general
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        if let Some(days) = self.audit_retention_days {
            if !super::RETENTION_DAYS.contains(&days) {
                out.push(issue(
                    "general.audit_retention_days",
                    format!(
                        "{days} is out of bounds: {} – {} days",
                        super::RETENTION_DAYS.start(),
                        super::RETENTION_DAYS.end()
                    ),
                ));
            }
        }
    }

    fn warn(&self, _cfg: &Config, out: &mut Vec<ConfigIssue>) {
        if let Some(v) = self.version.as_deref().filter(|v| *v != SKOS_VERSION) {
            out.push(issue(
                "general.version",
                format!("{v:?} is not used: this is SKOS {SKOS_VERSION}, and it reads the file as it is"),
            ));
        }
    }
}
