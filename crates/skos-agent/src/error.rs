use std::path::PathBuf;

/// Errors of the agent and its antibodies; each names the file, device or
/// command involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {text:?}: {reason}")]
    Parse {
        path: PathBuf,
        text: String,
        reason: String,
    },
    #[error("{path}: escapes its root {root}")]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("{what}: {reason}")]
    Device { what: String, reason: String },
    #[error("{command}: {reason}")]
    Command { command: String, reason: String },
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
