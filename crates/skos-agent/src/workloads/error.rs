//! The workloads antibody's error: each variant names the workload, file,
//! program or engine it failed on.

use std::path::PathBuf;

use skos_core::escape::ShowPath;
use skos_core::WorkloadName;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A file of the antibody (pid file, log, record of started ones).
    #[error("{}: {source}", .path.escaped())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] skos_fs::Error),
    /// The configured program could not be started.
    #[error("{workload}: cannot start {}: {source}", .program.escaped())]
    Spawn {
        workload: WorkloadName,
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A signal could not be sent.
    #[error("{workload}: cannot signal pid {pid}: {source}")]
    Signal {
        workload: WorkloadName,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// It did not stop within its stop timeout and SIGKILL.
    #[error("{workload}: {what} still runs after SIGKILL")]
    Unkillable {
        workload: WorkloadName,
        what: String,
    },
    /// The container engine refused or did not answer (`host`: where it
    /// was asked).
    #[error("{workload}: container engine at {host}: {reason}")]
    Engine {
        workload: WorkloadName,
        host: String,
        reason: String,
    },
    /// `systemctl` failed (its output, described).
    #[error("{workload}: {reason}")]
    Systemctl {
        workload: WorkloadName,
        reason: String,
    },
}

impl WorkloadError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WorkloadError::Io {
            path: path.into(),
            source,
        }
    }
}
