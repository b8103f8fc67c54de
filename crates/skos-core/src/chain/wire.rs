//! The chain protocol's messages: [`ChainEvent`] in, [`ChainDecision`] out,
//! [`ChainControl`] announcements, and the rules for ids and signatures.

use serde::{Deserialize, Serialize};

use super::{valid_kind, Condition, MAX_KIND_LEN};
use crate::node::NodeName;
use crate::protocol::DecodeError;
use crate::timefmt::{self, Timestamp};

/// Longest chain id, step id and signature, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Chain ids and step ids: 1 to [`MAX_ID_LEN`] letters, digits, `-`, `_`,
/// `.` or `:` (so a chain id is also a valid command parameter).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Step signatures: 1 to [`MAX_ID_LEN`] printable ASCII characters, no
/// spaces (`call:summarise`, `GET:/api/items`).
pub fn valid_signature(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// One step of a chain, as an application reports it (`skos.chain.<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainEvent {
    pub chain_id: String,
    pub step_id: String,
    /// The step that caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_step: Option<String>,
    /// 1 for a chain's first step; a step caused by a step one deeper.
    pub depth: u32,
    /// The application's count of steps in the chain, 1 for the first.
    pub iteration: u32,
    /// What kind of step this is (`call:summarise`, `job:resize`).
    pub signature: String,
    /// Selects `loop.kinds.<kind>` limits; fixed by the chain's first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// If present, must be the node the subject names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
}

impl ChainEvent {
    pub fn validate(&self) -> Result<(), DecodeError> {
        for (field, v) in [
            ("chain_id", Some(&self.chain_id)),
            ("step_id", Some(&self.step_id)),
            ("parent_step", self.parent_step.as_ref()),
        ] {
            if v.is_some_and(|v| !valid_id(v)) {
                return Err(DecodeError::Invalid(format!(
                    "{field} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_', '.' or ':'"
                )));
            }
        }
        if !valid_signature(&self.signature) {
            return Err(DecodeError::Invalid(format!(
                "signature must be 1 to {MAX_ID_LEN} printable ASCII characters without spaces"
            )));
        }
        if let Some(k) = &self.kind {
            if !valid_kind(k) {
                return Err(DecodeError::Invalid(format!(
                    "kind must be 1 to {MAX_KIND_LEN} letters, digits, '_' or '-'"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why a step was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    DepthExceeded,
    IterationsExceeded,
    Cycle,
    RateExceeded,
    DescendantsExceeded,
    CrashLoop,
    /// The chain's circuit is open (it broke a limit, or a command opened it).
    CircuitOpen,
    /// The request was malformed or invalid.
    Invalid,
    /// The loop breaker tracks as many chains as it may, all with open circuits.
    Capacity,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DepthExceeded => "depth_exceeded",
            Reason::IterationsExceeded => "iterations_exceeded",
            Reason::Cycle => "cycle",
            Reason::RateExceeded => "rate_exceeded",
            Reason::DescendantsExceeded => "descendants_exceeded",
            Reason::CrashLoop => "crash_loop",
            Reason::CircuitOpen => "circuit_open",
            Reason::Invalid => "invalid",
            Reason::Capacity => "capacity",
        }
    }
}

impl From<Condition> for Reason {
    fn from(c: Condition) -> Self {
        match c {
            Condition::DepthExceeded => Reason::DepthExceeded,
            Condition::IterationsExceeded => Reason::IterationsExceeded,
            Condition::Cycle => Reason::Cycle,
            Condition::RateExceeded => Reason::RateExceeded,
            Condition::DescendantsExceeded => Reason::DescendantsExceeded,
            Condition::CrashLoop => Reason::CrashLoop,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    /// The cool-off is over: the next step is a trial.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// The answer to a [`ChainEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainDecision {
    pub chain_id: String,
    pub step_id: String,
    pub decision: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default)]
    pub message: String,
    /// The chain's circuit after this step.
    pub circuit: CircuitState,
    /// Steps allowed in this chain since its last reset, this one included.
    pub steps: u32,
    /// How many times the chain was reset.
    pub generation: u64,
    /// For `circuit_open`: seconds until the circuit half-opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<f64>,
    /// Dry-run: the step would have been denied (see `reason`) but is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl ChainDecision {
    /// The answer to a request that could not be read: denied, fail-closed.
    pub fn invalid(chain_id: &str, step_id: &str, message: impl Into<String>) -> Self {
        let clean = |s: &str| {
            if valid_id(s) {
                s.to_string()
            } else {
                String::new()
            }
        };
        Self {
            chain_id: clean(chain_id),
            step_id: clean(step_id),
            decision: Verdict::Deny,
            reason: Some(Reason::Invalid),
            message: message.into(),
            circuit: CircuitState::Closed,
            steps: 0,
            generation: 0,
            retry_after_seconds: None,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlEvent {
    /// Further steps are denied until `until`.
    CircuitOpen,
    /// The cool-off is over: the next step is judged as a trial.
    HalfOpen,
    /// A trial step passed: the chain runs normally again.
    Closed,
    /// The chain's counters were cleared: start again from iteration 1.
    Reset,
}

impl ControlEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlEvent::CircuitOpen => "circuit_open",
            ControlEvent::HalfOpen => "half_open",
            ControlEvent::Closed => "closed",
            ControlEvent::Reset => "reset",
        }
    }
}

/// A break or reset announced to applications (`skos.chainctl.<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainControl {
    pub event: ControlEvent,
    pub node: NodeName,
    pub chain_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default)]
    pub message: String,
    pub generation: u64,
    pub circuit: CircuitState,
    /// `local` (the loop breaker itself) or `coordinator` (a command).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    #[serde(
        default,
        with = "timefmt::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<Timestamp>,
    #[serde(with = "timefmt")]
    pub timestamp: Timestamp,
}

/// One step as kept for evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_step: Option<String>,
    pub depth: u32,
    pub iteration: u32,
    pub signature: String,
    #[serde(with = "timefmt")]
    pub at: Timestamp,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_events_are_spelt_as_serialised() {
        for (e, text) in [
            (ControlEvent::CircuitOpen, "circuit_open"),
            (ControlEvent::HalfOpen, "half_open"),
            (ControlEvent::Closed, "closed"),
            (ControlEvent::Reset, "reset"),
        ] {
            assert_eq!(e.as_str(), text);
            assert_eq!(serde_json::to_value(e).unwrap(), text);
        }
    }

    fn ev(chain: &str, step: usize, depth: u32, iteration: u32, sig: &str) -> ChainEvent {
        ChainEvent {
            chain_id: chain.into(),
            step_id: format!("s{step}"),
            parent_step: None,
            depth,
            iteration,
            signature: sig.into(),
            kind: None,
            node: None,
        }
    }

    #[test]
    fn events_are_validated() {
        let ok = ev("chain-1", 1, 1, 1, "call:summarise");
        assert!(ok.validate().is_ok());
        for bad in [
            ChainEvent {
                chain_id: String::new(),
                ..ok.clone()
            },
            ChainEvent {
                chain_id: "x".repeat(129),
                ..ok.clone()
            },
            ChainEvent {
                signature: "has space".into(),
                ..ok.clone()
            },
            ChainEvent {
                step_id: "bell\u{7}".into(),
                ..ok.clone()
            },
            ChainEvent {
                chain_id: "a/b".into(),
                ..ok.clone()
            },
            ChainEvent {
                kind: Some("a.b".into()),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let limit = crate::protocol::DEFAULT_MAX_MESSAGE_BYTES;
        let text = r#"{"chain_id":"c","step_id":"s","depth":-1,"iteration":1,"signature":"a"}"#;
        assert!(crate::protocol::decode::<ChainEvent>(text.as_bytes(), limit).is_err());
        let text = r#"{"chain_id":"c","step_id":"s","depth":1,"iteration":1,"signature":"a","node":"a.b"}"#;
        assert!(crate::protocol::decode::<ChainEvent>(text.as_bytes(), limit).is_err());
        let text = r#"{"chain_id":"c","step_id":"s","parent_step":null,"depth":1,"iteration":1,"signature":"a","future":[1]}"#;
        assert!(crate::protocol::decode::<ChainEvent>(text.as_bytes(), limit).is_ok());
    }

    #[test]
    fn wire_names_are_stable() {
        let d = ChainDecision::invalid("c", "s", "bad");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["reason"], "invalid");
        assert_eq!(v["circuit"], "closed");
        for c in Condition::ALL {
            assert_eq!(Condition::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(Reason::from(c).as_str(), c.as_str());
        }
    }

    #[test]
    fn circuit_states_are_spelt_as_serialised() {
        for (c, text) in [
            (CircuitState::Closed, "closed"),
            (CircuitState::Open, "open"),
            (CircuitState::HalfOpen, "half_open"),
        ] {
            assert_eq!(c.as_str(), text);
            assert_eq!(serde_json::to_value(c).unwrap(), text);
        }
    }
}
