use std::path::PathBuf;

use skos_core::escape::ShowPath;

/// Errors of the agent and its antibodies; each names the file, device or
/// command involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", .path.escaped())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or directory SKOS refused to write through (a symlink, a
    /// directory others may write, a hard-linked file...), or could not.
    #[error(transparent)]
    Fs(#[from] skos_fs::Error),
    #[error("{}: cannot parse {text:?}: {reason}", .path.escaped())]
    Parse {
        path: PathBuf,
        text: String,
        reason: String,
    },
    #[error("{}: escapes its root {}", .path.escaped(), .root.escaped())]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("{what}: {reason}")]
    Device { what: String, reason: String },
    #[error("{command}: {reason}")]
    Command { command: String, reason: String },
    /// An action found nothing on this machine to act on (a throttle on a
    /// machine without cpufreq, configured cgroups or GPUs): answered
    /// `unsupported`, not `failed`.
    #[error("{what}: nothing to act on: {reason}")]
    NothingToAct { what: String, reason: String },
    /// A throttle was not applied because the values it would change could
    /// not be saved first (`path`: the state file or its temp file), so a
    /// restarted agent could not lift it.
    #[error("throttle not applied: its originals cannot be saved to {}: {source}", .path.escaped())]
    OriginalsNotSaved {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bus: {0}")]
    Bus(#[from] skos_bus::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
