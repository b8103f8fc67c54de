//! The systemd driver: `systemctl start`, `stop` and `is-active` on the
//! configured unit (argv only, each within a deadline).

use std::time::Duration;

use skos_core::{WorkloadName, WorkloadState};

use super::error::WorkloadError;
use super::Seen;

/// How long `systemctl is-active` may take.
const ASK: Duration = Duration::from_secs(10);

/// One systemd workload.
#[derive(Debug, Clone)]
pub struct SystemdDriver {
    pub name: WorkloadName,
    pub unit: String,
    /// How long a start may take (its `start_timeout_seconds`).
    pub start_timeout: Duration,
    /// How long a stop may take (its `stop_timeout_seconds`, and ten
    /// seconds for systemd's own work).
    pub stop_timeout: Duration,
}

/// The workload state `systemctl is-active` prints.
pub fn parse_is_active(text: &str) -> WorkloadState {
    match text.trim() {
        "active" | "reloading" | "refreshing" => WorkloadState::Running,
        "inactive" => WorkloadState::Stopped,
        "activating" => WorkloadState::Starting,
        "deactivating" => WorkloadState::Stopping,
        "failed" => WorkloadState::Failed,
        _ => WorkloadState::Unknown,
    }
}

impl SystemdDriver {
    fn systemctl(
        &self,
        verb: &str,
        timeout: Duration,
    ) -> Result<crate::mesh::exec::Output, WorkloadError> {
        let argv = crate::mesh::exec::argv(&["systemctl", verb, "--", &self.unit]);
        crate::mesh::exec::run(&argv, timeout).map_err(|e| WorkloadError::Systemctl {
            workload: self.name.clone(),
            reason: e.to_string(),
        })
    }

    pub fn observe(&self) -> Seen {
        match self.systemctl("is-active", ASK) {
            // is-active exits non-zero for anything but active: its
            // word is the answer either way.
            Ok(out) if !out.timed_out && !out.stdout.trim().is_empty() => {
                let word = out.stdout.trim();
                Seen::new(parse_is_active(word), format!("{} {word}", self.unit))
            }
            Ok(out) => Seen::new(WorkloadState::Unknown, out.describe()),
            Err(e) => Seen::new(WorkloadState::Unknown, e.to_string()),
        }
    }

    pub fn start(&self) -> Result<String, WorkloadError> {
        self.verb("start", self.start_timeout)
    }

    pub fn stop(&self) -> Result<String, WorkloadError> {
        self.verb("stop", self.stop_timeout)
    }

    fn verb(&self, verb: &str, timeout: Duration) -> Result<String, WorkloadError> {
        let out = self.systemctl(verb, timeout)?;
        if out.success() {
            Ok(format!("systemctl {verb} {}", self.unit))
        } else {
            Err(WorkloadError::Systemctl {
                workload: self.name.clone(),
                reason: out.describe(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_active_words_map_to_states() {
        for (word, state) in [
            ("active\n", WorkloadState::Running),
            ("inactive\n", WorkloadState::Stopped),
            ("activating", WorkloadState::Starting),
            ("deactivating", WorkloadState::Stopping),
            ("failed\n", WorkloadState::Failed),
            ("maintenance", WorkloadState::Unknown),
            ("", WorkloadState::Unknown),
        ] {
            assert_eq!(parse_is_active(word), state, "{word:?}");
        }
    }
}
