//! `general:`: the seed's general settings. `general.log_level` is the
//! top-level `log_level` (moved there when the file is read, see
//! `seed.rs`); the version stamp and the audit retention are accepted and
//! said to be unused.

use serde::{Deserialize, Serialize};

use super::{issue, Config, ConfigIssue, Section};

/// The version of SKOS this is; a `general.version` equal to it is not
/// remarked on.
pub const SKOS_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GeneralSection {
    /// The seed's version stamp of the file. Not used.
    pub version: Option<String>,
    /// The seed's audit retention in days. Not applied: the audit trail
    /// keeps every record.
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

    fn warn(&self, _cfg: &Config, out: &mut Vec<ConfigIssue>) {
        if let Some(v) = self.version.as_deref().filter(|v| *v != SKOS_VERSION) {
            out.push(issue(
                "general.version",
                format!("{v:?} is not used: this is SKOS {SKOS_VERSION}, and it reads the file as it is"),
            ));
        }
        if let Some(days) = self.audit_retention_days {
            out.push(issue(
                "general.audit_retention_days",
                format!("not applied: SKOS keeps every audit record (the trail is never aged out), so records older than {days} days stay"),
            ));
        }
    }
}
