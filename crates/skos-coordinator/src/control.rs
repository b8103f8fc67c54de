//! What operators ask the coordinator to change (request/reply on
//! `skos.coordinator.control`): add, list and expire silences, forget a
//! node, list, approve and deny plans waiting for approval. `skos
//! silence`, `skos node forget`, `skos approvals`, `skos approve`, `skos
//! deny` and the HTTP API's writes send a [`ControlRequest`]; only the
//! leader answers, with a [`ControlReply`].

use serde::{Deserialize, Serialize};
use skos_core::protocol::{decode, DecodeError};
use skos_core::silence::{Silence, SilenceSpec};
use skos_core::NodeName;

/// The largest control request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// One operator's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Add a silence; the reply holds it (with its id).
    SilenceAdd { silence: SilenceSpec },
    /// Every silence kept (holding now or starting later).
    SilenceList,
    /// Expire a silence now; the reply holds it.
    SilenceExpire { id: String, by: String },
    /// Forget a node that left the fleet: its state, open alerts, pending
    /// commands and deadlines. Refused for a node heard from within
    /// `coordinator.heartbeat_timeout` unless `force`.
    NodeForget {
        node: NodeName,
        by: String,
        #[serde(default)]
        force: bool,
    },
    /// The plans waiting for approval.
    ApprovalList,
    /// Start a plan waiting for approval (the fleet gate still applies).
    Approve { id: String, by: String },
    /// Drop a plan waiting for approval.
    Deny { id: String, by: String },
}

/// Why a control request was refused: `error` says why, `kind` whether the
/// request was wrong (`invalid`), named nothing kept (`not_found`) or
/// conflicts with what is (`conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    Invalid,
    NotFound,
    Conflict,
}

/// The coordinator's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Why the request was refused (nothing was changed); absent when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// The silences the request added, listed or expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silences: Vec<Silence>,
    /// The plans waiting for approval the request listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<crate::status::ApprovalStatus>,
    /// What was done, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl ControlReply {
    /// A refusal saying why.
    pub fn refused(refusal: Refusal, error: impl ToString) -> Self {
        Self {
            error: Some(error.to_string()),
            refusal: Some(refusal),
            ..Self::default()
        }
    }

    /// The reply's bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A control request that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("control request: {0}")]
pub struct ControlRequestError(#[from] DecodeError);

impl ControlRequest {
    /// Read a request's payload (at most [`MAX_REQUEST_BYTES`]).
    pub fn parse(payload: &[u8]) -> Result<Self, ControlRequestError> {
        Ok(decode(payload, MAX_REQUEST_BYTES)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_and_unknown_ones_are_refused() {
        let r: ControlRequest = ControlRequest::parse(
            br#"{"op":"silence_add","silence":{"node":"nova","comment":"x","by":"ana","duration_seconds":60}}"#,
        )
        .unwrap();
        assert!(matches!(r, ControlRequest::SilenceAdd { .. }));
        let r = ControlRequest::parse(br#"{"op":"silence_list"}"#).unwrap();
        assert_eq!(r, ControlRequest::SilenceList);
        let r = ControlRequest::parse(br#"{"op":"node_forget","node":"nova","by":"ana"}"#).unwrap();
        assert!(matches!(r, ControlRequest::NodeForget { force: false, .. }));
        let r = ControlRequest::parse(br#"{"op":"approve","id":"failover-nova-1","by":"ana"}"#)
            .unwrap();
        assert!(matches!(r, ControlRequest::Approve { .. }));
        let r = ControlRequest::parse(br#"{"op":"approval_list"}"#).unwrap();
        assert_eq!(r, ControlRequest::ApprovalList);
        assert!(ControlRequest::parse(br#"{"op":"shutdown"}"#).is_err());
        assert!(ControlRequest::parse(br#"{"op":"node_forget","node":"a.b","by":"x"}"#).is_err());
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(ControlRequest::parse(&big).is_err());
    }
}
