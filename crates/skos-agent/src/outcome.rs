//! What carrying out a command did, before it becomes a `CommandResult`.

use serde_json::{Map, Value};
use skos_core::protocol::{Change, ResultStatus};

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: ResultStatus,
    pub message: String,
    pub changes: Vec<Change>,
    /// Action-specific figures (`bytes_freed`, per-directory reports…).
    pub details: Map<String, Value>,
}

impl Outcome {
    pub fn new(status: ResultStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            changes: Vec::new(),
            details: Map::new(),
        }
    }
}
