//! Operators' requests (`crate::control`), answered by the engine: what
//! they change goes into the affected node's state like any other
//! decision, and is audited with who asked.

use skos_core::silence::SilenceError;
use skos_core::timefmt::Timestamp;

use super::{Effect, Engine};
use crate::control::{ControlReply, ControlRequest, Refusal};

/// How a silence refusal is told.
fn refusal(e: &SilenceError) -> Refusal {
    match e {
        SilenceError::Unknown(_) => Refusal::NotFound,
        SilenceError::Exists(_) | SilenceError::TooMany { .. } => Refusal::Conflict,
        _ => Refusal::Invalid,
    }
}

impl Engine {
    /// Answer `req` at `now`: the reply, and the effects to carry out
    /// (audit records; commands when an expired silence held a problem).
    pub fn control(&mut self, req: &ControlRequest, now: Timestamp) -> (ControlReply, Vec<Effect>) {
        match req {
            ControlRequest::SilenceAdd { silence } => match self.add_silence(silence, now) {
                Ok((s, fx)) => (
                    ControlReply {
                        message: format!("silence {} added: {}", s.id, s.scope()),
                        silences: vec![s],
                        ..ControlReply::default()
                    },
                    fx,
                ),
                Err(e) => (ControlReply::refused(refusal(&e), &e), Vec::new()),
            },
            ControlRequest::SilenceList => (
                ControlReply {
                    silences: self.silences(),
                    ..ControlReply::default()
                },
                Vec::new(),
            ),
            ControlRequest::SilenceExpire { id, by } => match self.expire_silence(id, by, now) {
                Ok((s, fx)) => (
                    ControlReply {
                        message: format!("silence {} expired: {}", s.id, s.scope()),
                        silences: vec![s],
                        ..ControlReply::default()
                    },
                    fx,
                ),
                Err(e) => (ControlReply::refused(refusal(&e), &e), Vec::new()),
            },
            ControlRequest::NodeForget { node, by, force } => {
                match self.forget_node(node, by, *force, now) {
                    Ok(fx) => (
                        ControlReply {
                            message: format!("node {node} forgotten"),
                            ..ControlReply::default()
                        },
                        fx,
                    ),
                    Err(e) => (ControlReply::refused(e.refusal(), &e), Vec::new()),
                }
            }
            ControlRequest::ApprovalList => (
                ControlReply {
                    approvals: self.approval_statuses(&crate::status::StatusQuery::default()),
                    ..ControlReply::default()
                },
                Vec::new(),
            ),
            ControlRequest::Approve { id, by } | ControlRequest::Deny { id, by } => {
                let approve = matches!(req, ControlRequest::Approve { .. });
                if !skos_core::silence::valid_by(by) {
                    return (
                        ControlReply::refused(Refusal::Invalid, format!("by {by:?}: not a name")),
                        Vec::new(),
                    );
                }
                let done = if approve {
                    self.approve(id, by, now)
                } else {
                    self.deny(id, by, now)
                };
                match done {
                    Ok(fx) => (
                        ControlReply {
                            message: format!(
                                "{id} {} by {by}",
                                if approve { "approved" } else { "denied" }
                            ),
                            ..ControlReply::default()
                        },
                        fx,
                    ),
                    Err(e) => (ControlReply::refused(Refusal::NotFound, &e), Vec::new()),
                }
            }
        }
    }
}
