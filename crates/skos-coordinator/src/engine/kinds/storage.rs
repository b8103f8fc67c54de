//! A mount filling up: a fix is verified when the node's `storage_percent`
//! falls below the alert level's threshold. A cleanup that freed nothing
//! has already failed (the generic flow reads `bytes_freed`).

use skos_core::config::Config;
use skos_core::policy;
use skos_core::protocol::{Alert, Severity};

use super::{level_threshold, ProblemKind, Recovery};

pub(crate) struct Storage;

impl ProblemKind for Storage {
    fn recovery(&self, cfg: &Config, alert: &Alert, severity: Severity) -> Option<Recovery> {
        Some(Recovery {
            metric: policy::metric_for(alert.problem().as_str())?,
            below: level_threshold(&cfg.storage.thresholds, severity),
        })
    }
}
