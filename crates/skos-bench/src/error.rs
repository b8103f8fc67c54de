//! The harness's one error type.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something the section needs is not there (the `skos` binary,
    /// `nats-server`).
    #[error("{0}")]
    Missing(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn failed(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Failed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            after,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Attach what was being done to any displayable error.
pub trait Context<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::failed(what, e))
    }
}

/// Run a helper that panics on failure (the test-support builders do) and
/// turn its panic into an error.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let reason = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        Error::failed(what, reason)
    })
}
