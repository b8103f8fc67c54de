//! Messages on the wire, in the seed's JSON formats.
//!
//! The seed's fields keep their names and meaning; fields we add sit beside
//! them and are optional on input, so the seed's own agents interoperate.
//! Unknown fields are ignored. Parsing never panics: [`decode`] returns a
//! [`DecodeError`] that says what was wrong.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::node::NodeName;
use crate::timefmt::{self, Timestamp};
pub use crate::workload::{WorkloadName, WorkloadReport, WorkloadState};

/// Largest message accepted on any subject, unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The JetStream stream holding the audit trail (`SKOS_AUDIT.<event_type>`).
/// Fixed: `nats.audit_stream` may only name it.
pub const AUDIT_STREAM: &str = "SKOS_AUDIT";
/// Deepest JSON nesting accepted.
pub const MAX_JSON_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("message nests deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
    /// Well formed, but not signed as its sender must sign it (a node's
    /// message without its node key's signature, a coordinator's own alert
    /// without a coordinator's).
    #[error("untrusted message: {0}")]
    Untrusted(String),
}

/// Decode a message with the size and depth limits applied before parsing.
pub fn decode<T: DeserializeOwned>(payload: &[u8], limit: usize) -> Result<T, DecodeError> {
    if payload.len() > limit {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    if too_deep(payload, MAX_JSON_DEPTH) {
        return Err(DecodeError::TooDeep);
    }
    // Parsed plainly first: tracking the path of every field costs a good
    // part of the parse, and it is only needed to say where a message is
    // wrong. A refused message is parsed again with it, for that.
    if let Ok(value) = serde_json::from_slice(payload) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            DecodeError::Invalid(if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            })
        } else {
            DecodeError::Malformed(inner.to_string())
        }
    })
}

/// Whether `payload` nests brackets deeper than `limit` ([`json_depth`]).
/// Nesting deeper than the limit needs more opening brackets than that: a
/// message with fewer (any heartbeat or alert) is not walked string by
/// string, only its brackets counted.
fn too_deep(payload: &[u8], limit: usize) -> bool {
    let opening = payload.iter().filter(|&&b| b == b'[' || b == b'{').count();
    opening > limit && json_depth(payload) > limit
}

/// Maximum bracket nesting of a JSON text, counted without parsing it, so a
/// hostile message cannot make the parser recurse deeply.
fn json_depth(payload: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in payload {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Finite-number guard: JSON cannot carry NaN, but a reading can be huge.
fn finite(v: Option<f64>, field: &str) -> Result<(), DecodeError> {
    match v {
        Some(x) if !x.is_finite() => Err(DecodeError::Invalid(format!("{field} is not finite"))),
        _ => Ok(()),
    }
}

/// Agent heartbeat, `skos.heartbeat.<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_id: String,
    pub agent_type: String,
    pub node: NodeName,
    #[serde(with = "timefmt")]
    pub timestamp: Timestamp,
    /// Hottest CPU reading in °C; `null` when the node has no CPU sensor.
    #[serde(default)]
    pub cpu_temp: Option<f64>,
    /// Hottest GPU reading in °C; `null` when the node has no GPU sensor.
    #[serde(default)]
    pub gpu_temp: Option<f64>,
    /// Fullest watched mount, in percent; `null` when nothing is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_percent: Option<f64>,
    /// Seconds until the next heartbeat (added; lets the coordinator judge lateness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
    /// Active throttle level in percent (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_level: Option<u8>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The workloads this agent is responsible for (those whose home is
    /// this node, and those it was told to start), as it saw them (added;
    /// omitted when empty, absent from older agents' heartbeats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadReport>,
}

impl Heartbeat {
    /// A heartbeat with no reading yet: every sensor `null` (a reading is
    /// never invented), no metadata, no workloads; antibodies fill in what
    /// they read (`report`).
    pub fn bare(
        agent_id: impl Into<String>,
        agent_type: impl Into<String>,
        node: NodeName,
        timestamp: Timestamp,
    ) -> Self {
        Heartbeat {
            agent_id: agent_id.into(),
            agent_type: agent_type.into(),
            node,
            timestamp,
            cpu_temp: None,
            gpu_temp: None,
            storage_percent: None,
            interval_seconds: None,
            throttle_level: None,
            metadata: Map::new(),
            workloads: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        finite(self.cpu_temp, "cpu_temp")?;
        finite(self.gpu_temp, "gpu_temp")?;
        finite(self.storage_percent, "storage_percent")?;
        finite(self.interval_seconds, "interval_seconds")
    }

    /// What the heartbeat says of the workload `name`, if it lists it.
    pub fn workload(&self, name: &str) -> Option<&WorkloadReport> {
        self.workloads.iter().find(|w| w.name.as_str() == name)
    }

    /// The reading a problem is measured by, if the heartbeat carries it.
    pub fn metric(&self, metric: &str) -> Option<f64> {
        match metric {
            "cpu_temp" => self.cpu_temp,
            "gpu_temp" => self.gpu_temp,
            "storage_percent" => self.storage_percent,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Back to normal: the problem cleared.
    #[serde(alias = "info", alias = "ok", alias = "resolved")]
    Normal,
    Warning,
    Critical,
    Emergency,
}

impl Severity {
    pub const LEVELS: [Severity; 3] = [Severity::Warning, Severity::Critical, Severity::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "normal",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
            Severity::Emergency => "emergency",
        }
    }

    /// The next level up, for escalation.
    pub fn next(self) -> Option<Severity> {
        match self {
            Severity::Normal => Some(Severity::Warning),
            Severity::Warning => Some(Severity::Critical),
            Severity::Critical => Some(Severity::Emergency),
            Severity::Emergency => None,
        }
    }

    /// The severity below this one (`None` for `normal`).
    pub fn previous(self) -> Option<Severity> {
        match self {
            Severity::Normal => None,
            Severity::Warning => Some(Severity::Normal),
            Severity::Critical => Some(Severity::Warning),
            Severity::Emergency => Some(Severity::Critical),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Thermal,
    Storage,
    Mesh,
    Loop,
    HeartbeatMissing,
    Circuit,
    /// A node's clock is off from the coordinator's by more than
    /// `coordinator.max_clock_skew_seconds`.
    ClockSkew,
    /// The coordinator cannot write its audit trail: no new action is
    /// carried out until it can (raised on the coordinator's node).
    Audit,
    /// Fewer nodes are healthy than `failover.min_healthy`: destructive
    /// actions are frozen until the fleet recovers.
    FleetDegraded,
    #[serde(other)]
    Other,
}

impl AlertKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::Thermal => "thermal",
            AlertKind::Storage => "storage",
            AlertKind::Mesh => "mesh",
            AlertKind::Loop => "loop",
            AlertKind::HeartbeatMissing => "heartbeat_missing",
            AlertKind::Circuit => "circuit",
            AlertKind::ClockSkew => "clock_skew",
            AlertKind::Audit => "audit",
            AlertKind::FleetDegraded => "fleet_degraded",
            AlertKind::Other => "other",
        }
    }
}

/// Alert, `skos.alert.<node>` (stream `SKOS_ALERTS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique id, used as the JetStream message id for de-duplication. The
    /// seed's agents send none: [`Alert::ensure_id`] derives a stable one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alert_id: String,
    pub agent_id: String,
    #[serde(rename = "type")]
    pub kind: AlertKind,
    pub severity: Severity,
    pub node: NodeName,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: Map<String, Value>,
    #[serde(with = "timefmt")]
    pub timestamp: Timestamp,
}

impl Alert {
    /// Give a seed-style alert (no `alert_id`) an id derived from its
    /// content, so a redelivered copy gets the same id.
    pub fn ensure_id(&mut self) {
        if !self.alert_id.is_empty() {
            return;
        }
        let mut h = Sha256::new();
        for part in [
            self.node.as_str(),
            self.kind.as_str(),
            self.severity.as_str(),
            &self.agent_id,
            &self.message,
            &timefmt::format(&self.timestamp),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        self.alert_id = format!("seed-{}", &hex::encode(h.finalize())[..32]);
    }

    /// A short digest of the alert id (12 hex digits of its SHA-256), for
    /// names derived from the alert such as a command's `action_id`: two
    /// alerts with different ids get different digests, however alike the
    /// ids' ends are (`...-cpu-critical` and `...-gpu-critical`).
    pub fn id_digest(&self) -> String {
        hex::encode(&Sha256::digest(self.alert_id.as_bytes())[..6])
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.alert_id.len() > 256 || self.alert_id.chars().any(|c| c.is_control()) {
            return Err(DecodeError::Invalid("alert_id is not a valid id".into()));
        }
        Ok(())
    }

    /// The sensor or subject of the alert (`details.sensor`), e.g. `cpu`.
    pub fn sensor(&self) -> Option<&str> {
        self.details.get("sensor").and_then(Value::as_str)
    }

    /// Whether only a coordinator raises alerts like this one: a node's
    /// silence (`heartbeat_missing`), an open circuit, a skewed clock, an
    /// unwritable audit trail, or a peer node found unreachable
    /// (`mesh:node`). A coordinator with trusted keys refuses such an alert
    /// unless one of them signed it.
    pub fn is_coordinators_own(&self) -> bool {
        match self.kind {
            AlertKind::HeartbeatMissing
            | AlertKind::Circuit
            | AlertKind::ClockSkew
            | AlertKind::Audit
            | AlertKind::FleetDegraded => true,
            AlertKind::Mesh => self.sensor() == Some(crate::events::MESH_NODE_SENSOR),
            _ => false,
        }
    }

    /// The problem this alert is about: kind plus sensor, e.g. `thermal:cpu`.
    /// Circuit breakers and verification are kept per (node, problem, action).
    pub fn problem(&self) -> crate::events::ProblemKey {
        crate::events::ProblemKey::new(&self.kind, self.sensor())
    }

    pub fn detail_f64(&self, key: &str) -> Option<f64> {
        self.details.get(key).and_then(Value::as_f64)
    }
}

/// Command, `skos.command.<node>` (stream `SKOS_COMMANDS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub action_id: String,
    pub action_type: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(with = "timefmt")]
    pub timestamp: Timestamp,
    /// Target node (added; the subject says it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// Not executed after this instant (added).
    #[serde(
        default,
        with = "timefmt::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Timestamp>,
    /// Why: the alert id, or `verification`, `recovery`… (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The problem the command answers, e.g. `thermal:cpu` (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The term of the coordinator that sent it (added): its fencing token.
    /// Agents remember the highest term seen and refuse commands from an
    /// older one, so a deposed leader cannot act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The level of `problem`'s reading the command answers (added): the
    /// threshold of the alert's level (°C, percent, a mesh health level).
    /// Just before acting the agent checks that its reading is still at it
    /// (not cleared past the hysteresis); where it is not, the command is
    /// answered [`ResultStatus::NotNeeded`] and nothing is done. Absent: no
    /// such check (restoring actions, workload steps, predictions, older
    /// coordinators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<f64>,
}

impl Command {
    pub fn validate(&self) -> Result<(), DecodeError> {
        let ok_id = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
        if !ok_id(&self.action_id) {
            return Err(DecodeError::Invalid(
                "action_id is empty, too long or has control characters".into(),
            ));
        }
        if !ok_id(&self.action_type)
            || !self
                .action_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(DecodeError::Invalid(format!(
                "action_type {:?} is not a known action name",
                self.action_type.escape_debug().to_string()
            )));
        }
        if self.level.is_some_and(|l| !l.is_finite()) {
            return Err(DecodeError::Invalid("level is not finite".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Unsupported,
    /// The problem the command answers was gone when it was to run (its
    /// reading had cleared the command's `level`): nothing was done.
    NotNeeded,
}

impl ResultStatus {
    /// Every status, for parsing one back from [`ResultStatus::as_str`].
    pub const ALL: [ResultStatus; 6] = [
        ResultStatus::Succeeded,
        ResultStatus::Failed,
        ResultStatus::Rejected,
        ResultStatus::Expired,
        ResultStatus::Unsupported,
        ResultStatus::NotNeeded,
    ];

    /// Its name on the wire (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Succeeded => "succeeded",
            ResultStatus::Failed => "failed",
            ResultStatus::Rejected => "rejected",
            ResultStatus::Expired => "expired",
            ResultStatus::Unsupported => "unsupported",
            ResultStatus::NotNeeded => "not_needed",
        }
    }
}

/// `details.reason` of a `rejected` result refusing an action id the agent
/// already executed (a replay): no verdict on the command.
pub const REASON_REPLAY: &str = "replay";

/// `details.reason` of a `rejected` result refusing a command of a term
/// older than the highest the agent has seen (or of none, once it has seen
/// one); `details.highest_term` says which.
pub const REASON_STALE_TERM: &str = "stale_term";

/// `details` key of a [`REASON_STALE_TERM`] refusal: the highest term the
/// agent has seen.
pub const DETAIL_HIGHEST_TERM: &str = "highest_term";

/// The message of that refusal, as agents have always sent it. An answer
/// without `details.reason` is a replay only with exactly this message:
/// any other text (a workload or peer named `replay-…`, a tool's error)
/// is the command's real answer.
pub const REPLAY_MESSAGE: &str = "action_id already executed (replay)";

/// `details.reason` of a `rejected` result refusing a command the agent
/// could not trust (unsigned, a bad signature, an unknown signer). The
/// coordinator signs what it sends, so such a command is someone else's:
/// a copy of a real one under its action id says nothing of the real one,
/// which stays open.
pub const REASON_UNTRUSTED: &str = "untrusted";

/// `details.reason` of a `rejected` result refusing a trusted message that
/// is not a well-formed command: as [`REASON_UNTRUSTED`], no verdict on a
/// command of that action id.
pub const REASON_MALFORMED: &str = "malformed";

/// The agent's answer to a command, `skos.result.<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub action_id: String,
    pub action_type: String,
    pub node: NodeName,
    pub agent_id: String,
    pub status: ResultStatus,
    #[serde(default)]
    pub message: String,
    /// What was changed on the node, one line per change (e.g. a file and its
    /// old and new value).
    #[serde(default)]
    pub changes: Vec<Change>,
    /// Action-specific figures (added), e.g. `bytes_freed`, per-directory reports.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    #[serde(with = "timefmt")]
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub target: String,
    pub before: String,
    pub after: String,
}

/// The kinds of audit record SKOS writes; [`AuditEvent::as_str`] is the one
/// place each `event_type` (and `SKOS_AUDIT.<event_type>` subject token) is
/// spelt. Records read back keep their `event_type` as text, so a trail
/// written by another version still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditEvent {
    /// A process started (`skos up`, coordinator, agent).
    Start,
    /// A process stopped cleanly.
    Stop,
    /// A torn last line of the trail file was set aside on open.
    AuditRecovered,
    /// Old records of the trail file moved into a sealed, compressed
    /// segment: `data` names the segment, its first and last seq, the
    /// first record's prev_hash, the last record's hash, the record count
    /// and the SHA-256 of the segment file.
    AuditSealed,
    /// Records aged out by the retention policy: `data` names the range
    /// (`first_seq` ..= `through_seq`) and `through_hash`, the last aged-out
    /// record's hash, so `skos audit verify` tells expiry from deletion.
    AuditExpired,
    /// A leader's anchor on a stream that ages records out by its
    /// `max_age`: `data` names the head before it (seq, hash, when it was
    /// stored) and the `max_age`, so `skos audit verify` tells expiry from
    /// a purge.
    AuditCheckpoint,
    /// The trail was replaced under its writer (the stream deleted and
    /// made again, or the live file removed or swapped): `data` names the
    /// writer's head before (seq, hash) and what it found, so the records
    /// the old trail held are named lost, never silently forgotten.
    AuditTrailReplaced,
    /// An alert was handled.
    Alert,
    /// The actions chosen for an alert (or a recovery).
    Decision,
    /// A command was sent.
    Command,
    /// A command's result came back.
    Result,
    /// A fix was checked on a later heartbeat (or freed nothing).
    Verification,
    /// A circuit breaker changed state.
    Breaker,
    /// Nothing is left to escalate to: a human must decide.
    Escalation,
    /// An action was not sent, with the reason.
    Skipped,
    /// A node joined.
    Node,
    /// A message was refused (malformed, hostile, misaddressed).
    Rejected,
    /// A coordinator became leader (with its term) or stepped down.
    Leader,
    /// A command got no result by its deadline plus the grace period.
    NoResult,
    /// A node's alerts over its quota in a minute, summed up.
    Coalesced,
    /// Messages the bus dropped before they were read (a node past its
    /// per-node limit in the stream), counted from the gap in sequences.
    Dropped,
    /// A problem started flapping (its state changed too often to act on
    /// each change) or became stable again: `data.state` says which.
    Flapping,
    /// Where a workload runs changed, or a step of a plan that moves,
    /// stops or starts workloads was taken (`data.plan`, `data.workload`).
    Placement,
    /// A plan waits for a person's approval, or was approved, denied or
    /// expired (`data.state`, `data.by`).
    Approval,
    /// The effectiveness ledger changed what a decision tries: the
    /// table's actions, the ones chosen and the records behind it.
    Learned,
    /// At start, nodes' saved state older than the audit trail says it
    /// must be (written back, emptied or replaced on the bus), listed by
    /// node.
    StateRollback,
    /// A silence was added, expired by someone, ended at its time, or one
    /// window of a recurring silence closed: `data.event` says which
    /// (`added`, `expired`, `ended`, `window_closed`), `data.by` who.
    Silence,
}

impl AuditEvent {
    /// Every kind, in the order declared.
    pub const ALL: [AuditEvent; 27] = [
        AuditEvent::Start,
        AuditEvent::Stop,
        AuditEvent::AuditRecovered,
        AuditEvent::AuditSealed,
        AuditEvent::AuditExpired,
        AuditEvent::AuditCheckpoint,
        AuditEvent::AuditTrailReplaced,
        AuditEvent::Alert,
        AuditEvent::Decision,
        AuditEvent::Command,
        AuditEvent::Result,
        AuditEvent::Verification,
        AuditEvent::Breaker,
        AuditEvent::Escalation,
        AuditEvent::Skipped,
        AuditEvent::Node,
        AuditEvent::Rejected,
        AuditEvent::Leader,
        AuditEvent::NoResult,
        AuditEvent::Coalesced,
        AuditEvent::Dropped,
        AuditEvent::Flapping,
        AuditEvent::Placement,
        AuditEvent::Approval,
        AuditEvent::Learned,
        AuditEvent::StateRollback,
        AuditEvent::Silence,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Start => "start",
            AuditEvent::Stop => "stop",
            AuditEvent::AuditRecovered => "audit_recovered",
            AuditEvent::AuditSealed => "audit_sealed",
            AuditEvent::AuditExpired => "audit_expired",
            AuditEvent::AuditCheckpoint => "audit_checkpoint",
            AuditEvent::AuditTrailReplaced => "audit_trail_replaced",
            AuditEvent::Alert => "alert",
            AuditEvent::Decision => "decision",
            AuditEvent::Command => "command",
            AuditEvent::Result => "result",
            AuditEvent::Verification => "verification",
            AuditEvent::Breaker => "breaker",
            AuditEvent::Escalation => "escalation",
            AuditEvent::Skipped => "skipped",
            AuditEvent::Node => "node",
            AuditEvent::Rejected => "rejected",
            AuditEvent::Leader => "leader",
            AuditEvent::NoResult => "no_result",
            AuditEvent::Coalesced => "coalesced",
            AuditEvent::Dropped => "dropped",
            AuditEvent::Flapping => "flapping",
            AuditEvent::Placement => "placement",
            AuditEvent::Approval => "approval",
            AuditEvent::Learned => "learned",
            AuditEvent::StateRollback => "state_rollback",
            AuditEvent::Silence => "silence",
        }
    }
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event in the audit trail (`SKOS_AUDIT.<event_type>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub event_type: String,
    #[serde(with = "timefmt")]
    pub timestamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// Who: `coordinator`, an agent id, `bus`…
    pub actor: String,
    pub summary: String,
    #[serde(default)]
    pub data: Value,
    /// The writing coordinator's term (its fencing token), when it has
    /// one: a deposed leader's append is refused once a newer term wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

impl AuditEntry {
    pub fn new(
        event_type: AuditEvent,
        timestamp: Timestamp,
        node: Option<&NodeName>,
        actor: &str,
        summary: impl Into<String>,
        data: Value,
    ) -> Self {
        Self {
            event_type: event_type.as_str().to_string(),
            timestamp,
            node: node.cloned(),
            actor: actor.to_string(),
            summary: summary.into(),
            data,
            term: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command's `level` is optional on the wire (older coordinators
    /// send none) and must be a finite number when present.
    #[test]
    fn a_command_level_is_optional_and_finite() {
        let text =
            r#"{"action_id":"a","action_type":"throttle_10","timestamp":"2024-01-01T00:00:00Z"}"#;
        let old: Command = decode(text.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(old.level, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("level"));
        let with = Command {
            level: Some(75.0),
            ..old.clone()
        };
        let back: Command = decode(
            serde_json::to_string(&with).unwrap().as_bytes(),
            DEFAULT_MAX_MESSAGE_BYTES,
        )
        .unwrap();
        assert_eq!(back.level, Some(75.0));
        assert!(with.validate().is_ok());
        let inf = Command {
            level: Some(f64::INFINITY),
            ..old
        };
        assert!(inf.validate().is_err());
    }

    /// The wire strings of result statuses and audit event types.
    #[test]
    fn statuses_and_audit_events_are_spelt_once() {
        for (s, text) in [
            (ResultStatus::Succeeded, "succeeded"),
            (ResultStatus::Failed, "failed"),
            (ResultStatus::Rejected, "rejected"),
            (ResultStatus::Expired, "expired"),
            (ResultStatus::Unsupported, "unsupported"),
            (ResultStatus::NotNeeded, "not_needed"),
        ] {
            assert_eq!(s.as_str(), text);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                text,
                "as_str and serde agree"
            );
            assert!(ResultStatus::ALL.contains(&s));
        }
        assert_eq!(ResultStatus::ALL.len(), 6);
        for (e, text) in [
            (AuditEvent::Start, "start"),
            (AuditEvent::AuditRecovered, "audit_recovered"),
            (AuditEvent::AuditSealed, "audit_sealed"),
            (AuditEvent::AuditExpired, "audit_expired"),
            (AuditEvent::AuditCheckpoint, "audit_checkpoint"),
            (AuditEvent::AuditTrailReplaced, "audit_trail_replaced"),
            (AuditEvent::Verification, "verification"),
            (AuditEvent::Skipped, "skipped"),
            (AuditEvent::Flapping, "flapping"),
        ] {
            assert_eq!(e.as_str(), text);
            assert_eq!(e.to_string(), text);
        }
        // A kind added to the enum fails this exhaustive match until it is
        // listed here: list it in ALL (and the README) too.
        for e in AuditEvent::ALL {
            match e {
                AuditEvent::Start
                | AuditEvent::Stop
                | AuditEvent::AuditRecovered
                | AuditEvent::AuditSealed
                | AuditEvent::AuditExpired
                | AuditEvent::AuditCheckpoint
                | AuditEvent::AuditTrailReplaced
                | AuditEvent::Alert
                | AuditEvent::Decision
                | AuditEvent::Command
                | AuditEvent::Result
                | AuditEvent::Verification
                | AuditEvent::Breaker
                | AuditEvent::Escalation
                | AuditEvent::Skipped
                | AuditEvent::Node
                | AuditEvent::Rejected
                | AuditEvent::Leader
                | AuditEvent::NoResult
                | AuditEvent::Coalesced
                | AuditEvent::Dropped
                | AuditEvent::Flapping
                | AuditEvent::Placement
                | AuditEvent::Approval
                | AuditEvent::Learned
                | AuditEvent::StateRollback
                | AuditEvent::Silence => {}
            }
        }
        let mut spelt: Vec<&str> = AuditEvent::ALL.iter().map(|e| e.as_str()).collect();
        spelt.sort();
        spelt.dedup();
        assert_eq!(spelt.len(), AuditEvent::ALL.len());
        // The README's AuditRecord paragraph names every kind.
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let at = readme.find("**AuditRecord**").unwrap();
        let paragraph = &readme[at..at + readme[at..].find("\n\n").unwrap()];
        for e in AuditEvent::ALL {
            assert!(
                paragraph.contains(&format!("`{e}`")),
                "the README's AuditRecord paragraph does not name `{e}`"
            );
        }
        let entry = AuditEntry::new(
            AuditEvent::Breaker,
            crate::timefmt::parse("2024-01-01T00:00:00Z").unwrap(),
            None,
            "coordinator",
            "x",
            Value::Null,
        );
        assert_eq!(entry.event_type, "breaker");
    }

    fn hb_json(extra: &str) -> String {
        format!(
            r#"{{"agent_id":"a","agent_type":"thermal_sentinel","node":"nova","timestamp":"2024-01-01T00:00:00Z"{extra}}}"#
        )
    }

    /// The size limit is inclusive, the depth limit counts brackets only
    /// outside strings (escaped quotes included), and both come before
    /// parsing.
    #[test]
    fn decode_limits_are_exact() {
        let text = hb_json("");
        let n = text.len();
        assert!(decode::<Heartbeat>(text.as_bytes(), n).is_ok());
        assert_eq!(
            decode::<Heartbeat>(text.as_bytes(), n - 1),
            Err(DecodeError::TooLarge {
                size: n,
                limit: n - 1
            })
        );
        assert_eq!(DEFAULT_MAX_MESSAGE_BYTES, 65_536);
        let nest = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert_eq!(json_depth(nest(MAX_JSON_DEPTH).as_bytes()), MAX_JSON_DEPTH);
        assert!(!matches!(
            decode::<Value>(nest(MAX_JSON_DEPTH).as_bytes(), 1 << 20),
            Err(DecodeError::TooDeep)
        ));
        assert_eq!(
            decode::<Value>(nest(MAX_JSON_DEPTH + 1).as_bytes(), 1 << 20),
            Err(DecodeError::TooDeep)
        );
        // Brackets inside strings, behind escaped quotes, do not count;
        // closing brackets bring the depth down.
        assert_eq!(json_depth(br#"{"a":"[[[[\"[[[[","b":[1]}"#), 2);
        assert_eq!(json_depth(br#"[[1],[2],[3]]"#), 2);
        assert_eq!(json_depth(br#"["\\", [1]]"#), 2);
        // The bracket count only lets a shallow message through early.
        let deep = nest(MAX_JSON_DEPTH + 1);
        assert!(too_deep(deep.as_bytes(), MAX_JSON_DEPTH));
        assert!(!too_deep(nest(MAX_JSON_DEPTH).as_bytes(), MAX_JSON_DEPTH));
        let many_in_strings = format!("{{\"a\":\"{}\"}}", "[".repeat(100));
        assert!(!too_deep(many_in_strings.as_bytes(), MAX_JSON_DEPTH));
    }

    /// A heartbeat without workloads (an older agent's) decodes, one
    /// without any says none, and one with them carries them both ways.
    #[test]
    fn heartbeat_workloads_are_optional_and_omitted_when_empty() {
        let old: Heartbeat = decode(hb_json("").as_bytes(), 1 << 16).unwrap();
        assert!(old.workloads.is_empty());
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("workloads"), "{text}");
        let with = hb_json(
            r#","workloads":[{"name":"synthesis-core","state":"running","healthy":true,"since":"2026-12-01T01:00:00Z","detail":"pid 7"},{"name":"minio","state":"stopped"}]"#,
        );
        let hb: Heartbeat = decode(with.as_bytes(), 1 << 16).unwrap();
        assert_eq!(hb.workloads.len(), 2);
        assert_eq!(hb.workloads[0].state, WorkloadState::Running);
        assert_eq!(hb.workloads[0].healthy, Some(true));
        assert_eq!(hb.workloads[1].healthy, None);
        assert_eq!(
            hb.workload("minio").map(|w| w.state),
            Some(WorkloadState::Stopped)
        );
        assert!(hb.workload("qwen").is_none());
        let again: Heartbeat = serde_json::from_str(&serde_json::to_string(&hb).unwrap()).unwrap();
        assert_eq!(again, hb);
        let bad = hb_json(r#","workloads":[{"name":"../x","state":"running"}]"#);
        assert!(decode::<Heartbeat>(bad.as_bytes(), 1 << 16).is_err());
    }

    #[test]
    fn readings_must_be_finite() {
        let mut hb: Heartbeat = decode(hb_json(r#","cpu_temp":70.5"#).as_bytes(), 1 << 16).unwrap();
        assert!(hb.validate().is_ok());
        for field in [
            "cpu_temp",
            "gpu_temp",
            "storage_percent",
            "interval_seconds",
        ] {
            let mut bad = hb.clone();
            match field {
                "cpu_temp" => bad.cpu_temp = Some(f64::INFINITY),
                "gpu_temp" => bad.gpu_temp = Some(f64::NAN),
                "storage_percent" => bad.storage_percent = Some(f64::NEG_INFINITY),
                _ => bad.interval_seconds = Some(f64::NAN),
            }
            let err = bad.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        hb.gpu_temp = Some(-5.0);
        assert!(hb.validate().is_ok());
        assert_eq!(hb.metric("cpu_temp"), Some(70.5));
        assert_eq!(hb.metric("gpu_temp"), Some(-5.0));
        hb.storage_percent = Some(42.0);
        assert_eq!(hb.metric("storage_percent"), Some(42.0));
        assert_eq!(hb.metric("fan_rpm"), None);
    }

    #[test]
    fn severities_spell_and_escalate() {
        let names: Vec<&str> = [
            Severity::Normal,
            Severity::Warning,
            Severity::Critical,
            Severity::Emergency,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(names, ["normal", "warning", "critical", "emergency"]);
        assert_eq!(Severity::Normal.next(), Some(Severity::Warning));
        assert_eq!(Severity::Warning.next(), Some(Severity::Critical));
        assert_eq!(Severity::Critical.next(), Some(Severity::Emergency));
        assert_eq!(Severity::Emergency.next(), None);
    }

    #[test]
    fn alert_ids_are_kept_derived_digested_and_checked() {
        let text = r#"{"agent_id":"x","type":"thermal","severity":"critical","node":"nova","message":"hot","timestamp":"2024-01-01T00:00:00Z"}"#;
        let mut a: Alert = decode(text.as_bytes(), 1 << 16).unwrap();
        assert!(a.alert_id.is_empty());
        a.ensure_id();
        let derived = a.alert_id.clone();
        assert!(
            derived.starts_with("seed-") && derived.len() == 37,
            "{derived}"
        );
        a.ensure_id();
        assert_eq!(a.alert_id, derived, "an id is kept once set");
        a.alert_id = "given".into();
        a.ensure_id();
        assert_eq!(a.alert_id, "given");
        let d = a.id_digest();
        assert_eq!(d.len(), 12);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        a.alert_id = "given2".into();
        assert_ne!(a.id_digest(), d);
        assert!(a.validate().is_ok());
        a.alert_id = "x".repeat(256);
        assert!(a.validate().is_ok(), "256 bytes is the limit");
        a.alert_id = "x".repeat(257);
        assert!(a.validate().is_err());
        a.alert_id = "bad\nid".into();
        assert!(a.validate().is_err());
    }

    const SEED_HEARTBEAT: &str = r#"{
      "agent_id": "thermal-sentinel-nova",
      "agent_type": "thermal_sentinel",
      "node": "nova",
      "timestamp": "2024-01-01T00:00:00Z",
      "cpu_temp": 65.5,
      "gpu_temp": 70.2,
      "metadata": {}
    }"#;

    const SEED_ALERT: &str = r#"{
      "agent_id": "thermal-sentinel-nova",
      "type": "thermal",
      "severity": "critical",
      "node": "nova",
      "message": "CPU temperature 87.5°C exceeds critical threshold",
      "details": {
        "sensor": "cpu",
        "temperature": 87.5,
        "threshold": 85
      },
      "timestamp": "2024-01-01T00:00:00Z"
    }"#;

    const SEED_COMMAND: &str = r#"{
      "action_id": "nova:thermal:throttle_50:1704067200",
      "action_type": "throttle_50",
      "parameters": {},
      "timestamp": "2024-01-01T00:00:00Z"
    }"#;

    const L: usize = DEFAULT_MAX_MESSAGE_BYTES;

    #[test]
    fn seed_examples_parse_as_they_are() {
        let hb: Heartbeat = decode(SEED_HEARTBEAT.as_bytes(), L).unwrap();
        assert_eq!(hb.node.as_str(), "nova");
        assert_eq!(hb.cpu_temp, Some(65.5));
        let mut alert: Alert = decode(SEED_ALERT.as_bytes(), L).unwrap();
        assert_eq!(alert.severity, Severity::Critical);
        assert_eq!(alert.kind, AlertKind::Thermal);
        assert_eq!(alert.problem(), "thermal:cpu");
        assert_eq!(alert.detail_f64("temperature"), Some(87.5));
        alert.ensure_id();
        let again = {
            let mut a: Alert = decode(SEED_ALERT.as_bytes(), L).unwrap();
            a.ensure_id();
            a.alert_id
        };
        assert_eq!(alert.alert_id, again, "derived id is stable");
        let cmd: Command = decode(SEED_COMMAND.as_bytes(), L).unwrap();
        assert_eq!(cmd.action_type, "throttle_50");
        assert!(cmd.deadline.is_none());
        cmd.validate().unwrap();
    }

    #[test]
    fn emitted_messages_keep_seed_fields() {
        let hb: Heartbeat = decode(SEED_HEARTBEAT.as_bytes(), L).unwrap();
        let v = serde_json::to_value(&hb).unwrap();
        for k in [
            "agent_id",
            "agent_type",
            "node",
            "timestamp",
            "cpu_temp",
            "gpu_temp",
            "metadata",
        ] {
            assert!(v.get(k).is_some(), "heartbeat lost {k}");
        }
        let alert: Alert = decode(SEED_ALERT.as_bytes(), L).unwrap();
        let v = serde_json::to_value(&alert).unwrap();
        for k in [
            "agent_id",
            "type",
            "severity",
            "node",
            "message",
            "details",
            "timestamp",
        ] {
            assert!(v.get(k).is_some(), "alert lost {k}");
        }
        let cmd: Command = decode(SEED_COMMAND.as_bytes(), L).unwrap();
        let v = serde_json::to_value(&cmd).unwrap();
        for k in ["action_id", "action_type", "parameters", "timestamp"] {
            assert!(v.get(k).is_some(), "command lost {k}");
        }
    }

    #[test]
    fn null_temperatures_stay_null() {
        let text = SEED_HEARTBEAT.replace("70.2", "null");
        let hb: Heartbeat = decode(text.as_bytes(), L).unwrap();
        assert_eq!(hb.gpu_temp, None);
        let v = serde_json::to_value(&hb).unwrap();
        assert!(v["gpu_temp"].is_null());
    }

    #[test]
    fn python_naive_timestamps_accepted() {
        let text = SEED_ALERT.replace("2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123456");
        let a: Alert = decode(text.as_bytes(), L).unwrap();
        assert_eq!(a.timestamp.timestamp(), 1704067200);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            br#"{"agent_id": 5}"#.to_vec(),
            SEED_HEARTBEAT.replace("\"nova\"", "\"no.va\"").into_bytes(),
            SEED_HEARTBEAT.replace("65.5", "\"hot\"").into_bytes(),
            SEED_HEARTBEAT.replace("65.5", "1e999").into_bytes(),
            vec![0xff, 0xfe, 0x00],
            "[".repeat(100_000).into_bytes(),
        ];
        for c in cases {
            assert!(
                decode::<Heartbeat>(&c, L).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(&c[..c.len().min(40)])
            );
        }
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(L));
        assert!(matches!(
            decode::<Heartbeat>(big.as_bytes(), L),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            decode::<Heartbeat>("[".repeat(100).as_bytes(), L),
            Err(DecodeError::TooDeep)
        );
    }

    #[test]
    fn unknown_fields_ignored_and_type_errors_name_the_field() {
        let text = SEED_ALERT.replace("\"details\"", "\"future_field\": [1,2], \"details\"");
        assert!(decode::<Alert>(text.as_bytes(), L).is_ok());
        let text = SEED_ALERT.replace("\"critical\"", "\"melting\"");
        let err = decode::<Alert>(text.as_bytes(), L).unwrap_err();
        assert!(err.to_string().contains("severity"), "{err}");
    }

    #[test]
    fn command_validation() {
        let mut cmd: Command = decode(SEED_COMMAND.as_bytes(), L).unwrap();
        cmd.action_type = "rm -rf /".into();
        assert!(cmd.validate().is_err());
        cmd.action_type = "throttle_10".into();
        cmd.action_id = String::new();
        assert!(cmd.validate().is_err());
    }
}
