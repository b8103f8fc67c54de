//! Workloads: what runs on a node and can be started, stopped and checked
//! (a plain process, a container, a systemd unit). Their names, their
//! states on the wire and what an agent reports of each in its heartbeat.
//! The configuration of each is `config::workloads`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timefmt::{self, Timestamp};

/// Longest accepted workload name, in bytes.
pub const MAX_WORKLOAD_NAME_LEN: usize = 64;

/// A workload's name: letters, digits, `-`, `_` and `.`, not starting with
/// `.`, at most [`MAX_WORKLOAD_NAME_LEN`] bytes. Safe as a command
/// parameter (a catalogue `Token`), a file-name component and, prefixed
/// with `skos-`, a container name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkloadName(String);

/// Why a workload name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadNameError {
    #[error("workload name is empty")]
    Empty,
    #[error("workload name is {0} bytes long, the limit is {MAX_WORKLOAD_NAME_LEN}")]
    TooLong(usize),
    #[error("workload name {0:?} starts with '.'")]
    LeadingDot(String),
    #[error("workload name {name:?} contains {ch:?} (letters, digits, '-', '_' and '.' only)")]
    BadChar { name: String, ch: char },
}

impl WorkloadName {
    /// # Errors
    /// [`WorkloadNameError`] saying what is wrong with `name`.
    pub fn parse(name: &str) -> Result<Self, WorkloadNameError> {
        Self::check(name)?;
        Ok(Self(name.to_owned()))
    }

    fn check(name: &str) -> Result<(), WorkloadNameError> {
        if name.is_empty() {
            return Err(WorkloadNameError::Empty);
        }
        if name.len() > MAX_WORKLOAD_NAME_LEN {
            return Err(WorkloadNameError::TooLong(name.len()));
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(WorkloadNameError::BadChar {
                name: name.escape_debug().to_string(),
                ch,
            });
        }
        if name.starts_with('.') {
            return Err(WorkloadNameError::LeadingDot(name.to_owned()));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkloadName {
    type Error = WorkloadNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::check(&value)?;
        Ok(Self(value))
    }
}

impl From<WorkloadName> for String {
    fn from(value: WorkloadName) -> Self {
        value.0
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an agent saw of a workload. The one place each state is spelt on
/// the wire ([`WorkloadState::as_str`]); a state this build does not know
/// reads as `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    /// Its process, container or unit runs.
    Running,
    /// It does not run.
    Stopped,
    /// A start is in progress (not yet healthy).
    Starting,
    /// A stop is in progress.
    Stopping,
    /// It ended in failure (a unit in `failed`, a container that exited
    /// with a non-zero code), or a start did not become healthy in time.
    Failed,
    /// It could not be looked at (the container engine does not answer,
    /// `systemctl` cannot be run).
    #[serde(other)]
    Unknown,
}

impl WorkloadState {
    pub const ALL: [WorkloadState; 6] = [
        WorkloadState::Running,
        WorkloadState::Stopped,
        WorkloadState::Starting,
        WorkloadState::Stopping,
        WorkloadState::Failed,
        WorkloadState::Unknown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            WorkloadState::Running => "running",
            WorkloadState::Stopped => "stopped",
            WorkloadState::Starting => "starting",
            WorkloadState::Stopping => "stopping",
            WorkloadState::Failed => "failed",
            WorkloadState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for WorkloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One workload in a heartbeat's `workloads` list: what the agent saw of
/// it, never what it hoped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub name: WorkloadName,
    pub state: WorkloadState,
    /// The last health check's verdict; absent when none ran (it does not
    /// run, or has no health check configured and was not looked at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Since when it is in `state`, when the agent saw it change (absent
    /// when it was already so when the agent first looked).
    #[serde(
        default,
        with = "timefmt::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<Timestamp>,
    /// What was seen, for a person (`pid 4242`, `container 3f2a… running`,
    /// the health check's failure).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens_safe_in_files_and_containers() {
        for ok in ["synthesis-core", "qwen", "docker_swarm", "pg.main", "a1"] {
            assert!(WorkloadName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(WorkloadName::parse(""), Err(WorkloadNameError::Empty));
        assert!(matches!(
            WorkloadName::parse(".."),
            Err(WorkloadNameError::LeadingDot(_))
        ));
        for bad in ["a/b", "a b", "x:y", "é", "a*"] {
            assert!(
                matches!(
                    WorkloadName::parse(bad),
                    Err(WorkloadNameError::BadChar { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            WorkloadName::parse(&"x".repeat(65)),
            Err(WorkloadNameError::TooLong(65))
        ));
        let n: Result<WorkloadName, _> = serde_json::from_str("\"../etc\"");
        assert!(n.is_err());
    }

    #[test]
    fn each_state_is_spelt_once() {
        for s in WorkloadState::ALL {
            let wire = serde_json::to_value(s).unwrap();
            assert_eq!(wire, s.as_str());
            assert_eq!(
                serde_json::from_value::<WorkloadState>(wire).unwrap(),
                s,
                "{s}"
            );
        }
        let later: WorkloadState = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(later, WorkloadState::Unknown);
    }

    #[test]
    fn a_report_omits_what_was_not_seen() {
        let r = WorkloadReport {
            name: WorkloadName::parse("synthesis-core").unwrap(),
            state: WorkloadState::Stopped,
            healthy: None,
            since: None,
            detail: String::new(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "synthesis-core", "state": "stopped"})
        );
        let full: WorkloadReport = serde_json::from_value(serde_json::json!({
            "name": "synthesis-core", "state": "running", "healthy": true,
            "since": "2026-12-01T01:00:00Z", "detail": "pid 42"
        }))
        .unwrap();
        assert_eq!(full.healthy, Some(true));
        assert!(full.since.is_some());
    }
}
