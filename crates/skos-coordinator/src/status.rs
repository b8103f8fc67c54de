//! What `skos status` shows: a summary of the whole fleet and one page of
//! its nodes.
//!
//! A status request carries an optional [`StatusQuery`] (JSON; an empty
//! payload is the default query, so older clients still work) and is
//! answered with one [`Status`]: the [`Summary`] (nodes by health, agents
//! online and offline, open alerts by severity, open circuits, recent
//! actions held), the counters, the leader and the mode, plus one page of
//! nodes and capped lists of their agents, the open alerts, the recent
//! actions and the open circuits. Every list has a fixed cap and every
//! string in it a fixed length ([`MAX_TEXT_BYTES`]), so the reply stays
//! below the 1 MiB a NATS message may carry whatever the size of the
//! fleet: under 700 KiB even with every listed string at its cap, and
//! [`MAX_REPLY_BYTES`] is enforced on top; a full page of 200 nodes with
//! 100 long alerts takes about 160 KiB.
//!
//! | list | at most | which |
//! |---|---|---|
//! | `nodes` | `per_page` ([`MAX_PER_PAGE`]) | the page: problems first (critical, offline, degraded, then healthy), by name within each |
//! | `agents` | [`MAX_AGENTS`] | the agents of the page's nodes |
//! | `open_alerts` | [`MAX_OPEN_ALERTS`] | worst severity first; with `node`, that node's |
//! | `recent_actions` | [`MAX_RECENT_ACTIONS`] | the newest, oldest first; with `node`, that node's |
//! | `open_circuits` | [`MAX_OPEN_CIRCUITS`] | by (node, problem, action); with `node`, that node's |
//! | `workloads` | [`MAX_WORKLOADS`] | the configured workloads whose home or place the query concerns |
//! | `drains` | [`MAX_DRAINS`] | the nodes with `nodes.<node>.orchestrator` the query concerns, and their drain state |
//! | `approvals` | [`MAX_APPROVALS`] | plans waiting for approval; with `node`, that node's |
//! | `ledger` | [`MAX_LEDGER_ROWS`] | the fleet's (problem, action) records, most attempts first; with `node`, that node's |
//! | `silences` | [`MAX_SILENCES`] | by node, then start; with `node`, that node's |
//!
//! The summary always counts everything, so a reply says how much it left
//! out; `node` shows one node in full (its alerts, actions and circuits).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use skos_core::protocol::{decode, DecodeError, ResultStatus, Severity};
use skos_core::silence::Silence;
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;
use std::collections::BTreeMap;

/// Nodes on a page when the query names no `per_page`.
pub const DEFAULT_PER_PAGE: usize = 50;
/// The most nodes one reply lists (a larger `per_page` is lowered to it).
pub const MAX_PER_PAGE: usize = 200;
/// The most agents one reply lists (those of the page's nodes).
pub const MAX_AGENTS: usize = 200;
/// The most open alerts one reply lists.
pub const MAX_OPEN_ALERTS: usize = 100;
/// The most recent actions one reply lists.
pub const MAX_RECENT_ACTIONS: usize = 50;
/// The most open circuits one reply lists.
pub const MAX_OPEN_CIRCUITS: usize = 100;
/// The most silences one reply lists.
pub const MAX_SILENCES: usize = 50;
/// The longest string (in bytes) a listed item keeps; longer ones are cut
/// on a character boundary and end in `…`.
pub const MAX_TEXT_BYTES: usize = 256;
/// The most bytes one listed alert or circuit takes once its strings are
/// cut; past it, its `details` are replaced by `{"truncated": true}`.
pub const MAX_ITEM_BYTES: usize = 1024;
/// The largest status query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// The largest reply a coordinator sends: a status that would be larger
/// (it cannot be, given the caps above, unless the counters grew without
/// bound) is answered with a [`StatusRefusal`] instead.
pub const MAX_REPLY_BYTES: usize = 768 * 1024;

/// What a status request asks for. Every field may be left out; `{}` and
/// an empty payload are the default: the first page of
/// [`DEFAULT_PER_PAGE`] nodes, problems first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusQuery {
    /// Which page of nodes, from 0.
    pub page: usize,
    /// Nodes per page, 1 to [`MAX_PER_PAGE`] (0 means the default; more is
    /// lowered to the cap).
    pub per_page: usize,
    /// Only this node, in full: its alerts, actions and circuits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// Only nodes that are not healthy (critical, offline or degraded).
    pub problem_nodes_only: bool,
    /// How the nodes are ordered before they are paged.
    pub order: NodeOrder,
}

impl Default for StatusQuery {
    fn default() -> Self {
        Self {
            page: 0,
            per_page: DEFAULT_PER_PAGE,
            node: None,
            problem_nodes_only: false,
            order: NodeOrder::default(),
        }
    }
}

/// How nodes are ordered before they are paged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOrder {
    /// Critical, then offline, then degraded, then healthy nodes; by name
    /// within each: the first page is what needs an operator.
    #[default]
    ProblemsFirst,
    /// By name only: pages that do not move when a node's health changes.
    Name,
}

/// A status query that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusQueryError {
    #[error("status query: {0}")]
    Decode(#[from] DecodeError),
}

impl StatusQuery {
    /// Read a request's payload: empty (or only whitespace) is the default
    /// query; anything else must be a [`StatusQuery`] of at most
    /// [`MAX_QUERY_BYTES`]. The result is [`StatusQuery::normalized`].
    pub fn parse(payload: &[u8]) -> Result<Self, StatusQueryError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let q: Self = decode(payload, MAX_QUERY_BYTES)?;
        Ok(q.normalized())
    }

    /// `per_page` within 1..=[`MAX_PER_PAGE`] (0: the default).
    pub fn normalized(mut self) -> Self {
        self.per_page = match self.per_page {
            0 => DEFAULT_PER_PAGE,
            n => n.min(MAX_PER_PAGE),
        };
        self
    }

    /// Whether a node with `health` named `name` is selected (before
    /// paging).
    pub fn selects(&self, name: &str, health: NodeHealth) -> bool {
        if self.node.as_ref().is_some_and(|n| n.as_str() != name) {
            return false;
        }
        !self.problem_nodes_only || health.is_problem()
    }

    /// Whether an item about `node` belongs in the reply (every item
    /// unless the query names one node).
    pub fn concerns(&self, node: &str) -> bool {
        self.node.as_ref().is_none_or(|n| n.as_str() == node)
    }

    /// How many pages `total` selected nodes fill.
    pub fn pages(&self, total: usize) -> usize {
        total.div_ceil(self.per_page.max(1))
    }

    /// The index range of the page within `total` selected nodes (empty
    /// past the last page).
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = self.page.saturating_mul(self.per_page).min(total);
        start..start.saturating_add(self.per_page).min(total)
    }
}

/// The answer to a status request that cannot be given (a malformed query,
/// a reply that would be too large), sent in place of a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRefusal {
    /// Why, for a person.
    pub error: String,
}

/// Why a status reply cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusReplyError {
    /// The coordinator refused the query.
    #[error("the coordinator refused the status query: {0}")]
    Refused(String),
    #[error("unreadable status: {0}")]
    Unreadable(#[from] serde_json::Error),
}

/// Counts of nodes by health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeCounts {
    pub total: usize,
    pub healthy: usize,
    pub degraded: usize,
    pub critical: usize,
    /// Nodes whose worst open alert is an emergency.
    pub emergency: usize,
    pub offline: usize,
}

impl NodeCounts {
    /// Count one node.
    pub fn add(&mut self, health: NodeHealth) {
        self.total += 1;
        match health {
            NodeHealth::Healthy => self.healthy += 1,
            NodeHealth::Degraded => self.degraded += 1,
            NodeHealth::Critical => self.critical += 1,
            NodeHealth::Emergency => self.emergency += 1,
            NodeHealth::Offline => self.offline += 1,
        }
    }
}

/// Counts of agents: online when heard from within
/// `coordinator.heartbeat_timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentCounts {
    pub online: usize,
    pub offline: usize,
}

/// Counts of open alerts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertCounts {
    pub total: usize,
    pub warning: usize,
    pub critical: usize,
    pub emergency: usize,
}

impl AlertCounts {
    /// Count one open alert.
    pub fn add(&mut self, severity: Severity) {
        self.total += 1;
        match severity {
            Severity::Warning => self.warning += 1,
            Severity::Critical => self.critical += 1,
            Severity::Emergency => self.emergency += 1,
            Severity::Normal => {}
        }
    }
}

/// The whole fleet in numbers, whatever page the reply lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub nodes: NodeCounts,
    pub agents: AgentCounts,
    pub open_alerts: AlertCounts,
    /// Circuits open or half-open.
    pub open_circuits: usize,
    /// Recent actions held (`coordinator.recent_actions` at most).
    pub recent_actions: usize,
    /// Silences kept (holding now or starting later).
    #[serde(default)]
    pub silences: usize,
}

/// One status reply: the summary, one page of nodes and capped lists (see
/// the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub mode: String,
    #[serde(with = "timefmt")]
    pub generated_at: Timestamp,
    /// The whole fleet in numbers (zero in a reply from a coordinator
    /// older than paging).
    #[serde(default)]
    pub summary: Summary,
    /// The query answered, normalized.
    #[serde(default)]
    pub query: StatusQuery,
    /// How many nodes the query selects (every node unless it filters).
    #[serde(default)]
    pub total_nodes: usize,
    /// This page, from 0.
    #[serde(default)]
    pub page: usize,
    #[serde(default)]
    pub per_page: usize,
    /// How many pages the selected nodes fill.
    #[serde(default)]
    pub pages: usize,
    /// The page's nodes, in the query's order.
    pub nodes: Vec<NodeStatus>,
    /// The agents of the page's nodes (at most [`MAX_AGENTS`]).
    pub agents: Vec<AgentStatus>,
    /// Open alerts, worst first (at most [`MAX_OPEN_ALERTS`]).
    pub open_alerts: Vec<Value>,
    /// The newest actions, oldest first (at most [`MAX_RECENT_ACTIONS`]).
    pub recent_actions: Vec<ActionRecord>,
    /// Open and half-open circuits (at most [`MAX_OPEN_CIRCUITS`]).
    pub open_circuits: Vec<Value>,
    pub counters: BTreeMap<String, u64>,
    /// Silences and maintenance windows, holding now or starting later
    /// (at most [`MAX_SILENCES`]; comments cut to [`MAX_TEXT_BYTES`]).
    #[serde(default)]
    pub silences: Vec<SilenceStatus>,
    /// The coordinator that answered, when coordinators elect a leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Leadership>,
    /// Where each configured workload runs, and any step under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadStatus>,
    /// Nodes drained and undrained through their orchestrator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<DrainStatus>,
    /// Plans waiting for `skos approve` or `skos deny`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalStatus>,
    /// What each action did for each problem: the fleet's, or the named
    /// node's (at most [`MAX_LEDGER_ROWS`], most attempts first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledger: Vec<LedgerRow>,
    /// When the process that wrote this snapshot stopped cleanly (an
    /// embedded `status.json` written last, on the way out).
    #[serde(
        default,
        with = "timefmt::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stopped_at: Option<Timestamp>,
}

/// Ledger rows listed at most.
pub const MAX_LEDGER_ROWS: usize = 64;

/// What one action did for one problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub problem: String,
    pub action: String,
    pub attempts: u64,
    pub verified: u64,
    pub failed: u64,
    pub uncredited: u64,
    /// Answered `not_needed`: the problem was gone before the action ran
    /// (false remediations avoided).
    #[serde(default)]
    pub not_needed: u64,
    /// Verified over verified plus failed.
    pub success_rate: Option<f64>,
    /// Seconds from the fault's alert to its verified recovery.
    pub mean_recovery_seconds: Option<f64>,
    pub max_recovery_seconds: Option<f64>,
    pub last_outcome: Option<crate::engine::LedgerOutcome>,
}

/// Workloads listed at most (a fleet configures a few).
pub const MAX_WORKLOADS: usize = 64;
/// Plans waiting for approval listed at most.
pub const MAX_APPROVALS: usize = 32;
/// Orchestrated nodes listed at most.
pub const MAX_DRAINS: usize = 64;

/// A node with `nodes.<node>.orchestrator`, as `skos status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub node: String,
    /// `drained`, `draining`, `undraining` or `undrained`.
    pub state: String,
    /// The node whose agent runs the drain or undrain under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// One workload as `skos status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub name: String,
    /// Where it normally runs.
    pub home: String,
    /// Where it runs by SKOS's record; `None`: stopped by SKOS.
    pub at: Option<String>,
    /// `placed`, `moving`, `shed` (stopped to shed load) or `stopped`.
    pub state: String,
    /// The step under way, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Nodes whose stale copy is stopped as soon as they report it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<String>,
}

/// A plan waiting for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalStatus {
    /// What `skos approve` and `skos deny` take.
    pub id: String,
    pub plan: String,
    pub node: String,
    /// The alert it answers, in words.
    pub reason: String,
    #[serde(with = "timefmt")]
    pub expires_at: Timestamp,
}
/// A silence as status lists it: the silence, whether it holds when the
/// status was made, and when it holds in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilenceStatus {
    #[serde(flatten)]
    pub silence: Silence,
    pub holding: bool,
    /// `holding until ...`, `from ... to ...`, `next window from ...`.
    pub when: String,
}

/// Who leads the coordinators, in which term, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader's holder id (`<host>:<pid>:<random>`).
    pub holder: String,
    /// Its term, the fencing token on its commands and audit records.
    pub term: u64,
    #[serde(with = "timefmt")]
    pub since: Timestamp,
}

/// One node as `skos status` lists it: its health and its last heartbeat's
/// readings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub status: NodeHealth,
    #[serde(with = "timefmt")]
    pub last_seen: Timestamp,
    pub cpu_temp: Option<f64>,
    pub gpu_temp: Option<f64>,
    pub storage_percent: Option<f64>,
    pub throttle_level: Option<u8>,
    /// How many caps in force its agent has no record of (set before the
    /// agent lost its data dir, or by someone else); counted in
    /// `throttle_level`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unexplained_caps: u32,
    /// How far the node's clock is ahead of the coordinator's, in seconds
    /// (negative: behind), as measured from its heartbeats; `None` before
    /// its first heartbeat since the coordinator started.
    #[serde(default)]
    pub clock_offset_seconds: Option<f64>,
    /// The offset is beyond `coordinator.max_clock_skew_seconds` (a
    /// `clock_skew` alert is open).
    #[serde(default)]
    pub clock_skewed: bool,
}

/// One agent of a listed node: online when heard from within
/// `coordinator.heartbeat_timeout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    pub agent_type: String,
    pub node: String,
    #[serde(with = "timefmt")]
    pub last_seen: Timestamp,
    pub online: bool,
}

/// An action the coordinator sent, and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action_id: String,
    pub action_type: String,
    pub node: String,
    pub problem: String,
    pub cause: String,
    #[serde(with = "timefmt")]
    pub sent_at: Timestamp,
    pub state: ActionState,
    #[serde(default)]
    pub message: String,
}

/// A node as `skos status` sums it up: offline without heartbeats, else
/// from its worst open alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    Healthy,
    /// Its worst open alert is a warning.
    Degraded,
    /// Its worst open alert is critical.
    Critical,
    /// Its worst open alert is an emergency.
    Emergency,
    Offline,
}

impl NodeHealth {
    /// Whether an operator should look at the node (anything but healthy).
    pub const fn is_problem(self) -> bool {
        !matches!(self, NodeHealth::Healthy)
    }

    /// Where [`NodeOrder::ProblemsFirst`] puts the node: emergency,
    /// critical, offline, degraded, healthy.
    pub const fn rank(self) -> u8 {
        match self {
            NodeHealth::Emergency => 0,
            NodeHealth::Critical => 1,
            NodeHealth::Offline => 2,
            NodeHealth::Degraded => 3,
            NodeHealth::Healthy => 4,
        }
    }

    /// Its name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Healthy => "healthy",
            NodeHealth::Degraded => "degraded",
            NodeHealth::Critical => "critical",
            NodeHealth::Emergency => "emergency",
            NodeHealth::Offline => "offline",
        }
    }
}

impl std::fmt::Display for NodeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a sent action stands: `sent`, then the agent's result (or
/// `no_result` when none came by its deadline plus the grace period),
/// then, for an action whose effect is checked, `verified` or
/// `not_verified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Sent,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Unsupported,
    /// The agent found the problem gone when the action was to run, and
    /// did nothing.
    NotNeeded,
    Verified,
    NotVerified,
    /// No result came by the command's deadline plus
    /// `coordinator.result_grace_seconds`: its outcome is unknown.
    NoResult,
}

impl ActionState {
    /// Its name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionState::Sent => "sent",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            ActionState::Rejected => "rejected",
            ActionState::Expired => "expired",
            ActionState::Unsupported => "unsupported",
            ActionState::NotNeeded => "not_needed",
            ActionState::Verified => "verified",
            ActionState::NotVerified => "not_verified",
            ActionState::NoResult => "no_result",
        }
    }
}

impl From<ResultStatus> for ActionState {
    fn from(s: ResultStatus) -> Self {
        match s {
            ResultStatus::Succeeded => ActionState::Succeeded,
            ResultStatus::Failed => ActionState::Failed,
            ResultStatus::Rejected => ActionState::Rejected,
            ResultStatus::Expired => ActionState::Expired,
            ResultStatus::Unsupported => ActionState::Unsupported,
            ResultStatus::NotNeeded => ActionState::NotNeeded,
        }
    }
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `s` cut to at most [`MAX_TEXT_BYTES`] bytes, on a character boundary,
/// ending in `…` when cut.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT_BYTES {
        return s.to_string();
    }
    let ellipsis = '…';
    let mut end = MAX_TEXT_BYTES - ellipsis.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(MAX_TEXT_BYTES);
    out.push_str(&s[..end]);
    out.push(ellipsis);
    out
}

/// Every string inside `v` [`clip`]ped.
fn clip_strings(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_TEXT_BYTES => *s = clip(s),
        Value::Array(items) => items.iter_mut().for_each(clip_strings),
        Value::Object(map) => map.values_mut().for_each(clip_strings),
        _ => {}
    }
}

/// An alert or circuit as a reply lists it: its strings [`clip`]ped and,
/// when it still takes more than [`MAX_ITEM_BYTES`], its `details`
/// replaced by `{"truncated": true}`.
pub fn bounded_item(mut v: Value) -> Value {
    clip_strings(&mut v);
    let size = serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len());
    if size > MAX_ITEM_BYTES {
        if let Some(details) = v.get_mut("details") {
            *details = serde_json::json!({"truncated": true});
        }
    }
    v
}

/// `(N caps SKOS has no record of)` after a node's throttle, when any.
fn unexplained(caps: u32) -> String {
    if caps == 0 {
        String::new()
    } else {
        format!(" ({caps} cap(s) SKOS has no record of)")
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A person's rendering of a temperature.
fn celsius(t: Option<f64>) -> String {
    t.map(|t| format!("{t:.1}°C"))
        .unwrap_or_else(|| "none".into())
}

impl Status {
    /// Read a status reply: a [`Status`], or the coordinator's
    /// [`StatusRefusal`].
    pub fn from_reply(body: &[u8]) -> Result<Self, StatusReplyError> {
        let v: Value = serde_json::from_slice(body)?;
        if v.get("mode").is_none() {
            if let Ok(r) = serde_json::from_value::<StatusRefusal>(v.clone()) {
                return Err(StatusReplyError::Refused(r.error));
            }
        }
        Ok(serde_json::from_value(v)?)
    }

    /// The reply's bytes: this status as JSON, or a [`StatusRefusal`] when
    /// it would take more than [`MAX_REPLY_BYTES`].
    pub fn to_reply(&self) -> Vec<u8> {
        let refuse =
            |error: String| serde_json::to_vec(&StatusRefusal { error }).unwrap_or_default();
        match serde_json::to_vec(self) {
            Ok(body) if body.len() <= MAX_REPLY_BYTES => body,
            Ok(body) => refuse(format!(
                "the status reply would take {} bytes (the limit is {MAX_REPLY_BYTES}); \
                 ask for fewer nodes per page or one node",
                body.len()
            )),
            Err(e) => refuse(format!("status not encoded: {e}")),
        }
    }

    /// The part of this status that `query` asks for, chosen from what it
    /// holds: embedded mode's status file holds the first
    /// [`MAX_PER_PAGE`] nodes (its own node, in practice), and `skos
    /// status` pages and filters those. The summary and counters stay
    /// those of the whole fleet.
    pub fn select(mut self, query: &StatusQuery) -> Self {
        if self.per_page == 0 {
            // Written by a version older than paging: every node, as is.
            return self;
        }
        let query = query.clone().normalized();
        let mut nodes: Vec<NodeStatus> = std::mem::take(&mut self.nodes)
            .into_iter()
            .filter(|n| query.selects(&n.name, n.status))
            .collect();
        match query.order {
            NodeOrder::ProblemsFirst => {
                nodes.sort_by(|a, b| (a.status.rank(), &a.name).cmp(&(b.status.rank(), &b.name)))
            }
            NodeOrder::Name => nodes.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        self.total_nodes = nodes.len();
        self.pages = query.pages(nodes.len());
        let range = query.range(nodes.len());
        self.nodes = nodes.drain(range).collect();
        self.page = query.page;
        self.per_page = query.per_page;
        let listed: std::collections::BTreeSet<&str> =
            self.nodes.iter().map(|n| n.name.as_str()).collect();
        self.agents.retain(|a| listed.contains(a.node.as_str()));
        let concerns = |v: &Value| query.concerns(v["node"].as_str().unwrap_or_default());
        self.open_alerts.retain(concerns);
        self.open_circuits.retain(concerns);
        self.recent_actions.retain(|a| query.concerns(&a.node));
        self.silences
            .retain(|s| query.concerns(s.silence.node.as_str()));
        self.query = query;
        self
    }

    /// A person's rendering: the summary and the page of nodes, or, for a
    /// query of one node, that node in full.
    pub fn render(&self) -> String {
        let mut out = format!(
            "SKOS status ({}), {}\n",
            self.mode,
            timefmt::format(&self.generated_at)
        );
        if let Some(at) = &self.stopped_at {
            out.push_str(&format!(
                "stopped at {}: what follows is as it was then\n",
                timefmt::format(at)
            ));
        }
        if let Some(l) = &self.leader {
            out.push_str(&format!(
                "leader {} (term {}, since {})\n",
                l.holder,
                l.term,
                timefmt::format(&l.since)
            ));
        }
        match &self.query.node {
            Some(name) => self.render_node(name, &mut out),
            None => self.render_fleet(&mut out),
        }
        out
    }

    fn render_summary(&self, out: &mut String) {
        let s = &self.summary;
        out.push_str(&format!(
            "\nSUMMARY\n  nodes     {} total: {} healthy, {} degraded, {} critical, {} emergency, {} offline\n",
            s.nodes.total,
            s.nodes.healthy,
            s.nodes.degraded,
            s.nodes.critical,
            s.nodes.emergency,
            s.nodes.offline
        ));
        out.push_str(&format!(
            "  agents    {} online, {} offline\n",
            s.agents.online, s.agents.offline
        ));
        out.push_str(&format!(
            "  alerts    {} open: {} emergency, {} critical, {} warning\n",
            s.open_alerts.total,
            s.open_alerts.emergency,
            s.open_alerts.critical,
            s.open_alerts.warning
        ));
        out.push_str(&format!(
            "  circuits  {} open\n  actions   {} recent\n  silences  {}\n",
            s.open_circuits, s.recent_actions, s.silences
        ));
    }

    /// The silences listed, one line each: holding now (until when) or
    /// from when to when.
    fn render_silences(&self, out: &mut String) {
        out.push_str(&format!(
            "\nSILENCES ({}{})\n",
            self.silences.len(),
            shown_of(self.silences.len(), self.summary.silences, "by node")
        ));
        for SilenceStatus {
            silence: s, when, ..
        } in &self.silences
        {
            out.push_str(&format!(
                "  {}  {}  {}  by {}: {}\n",
                s.id,
                s.scope(),
                when,
                s.by,
                s.comment
            ));
        }
    }

    fn node_line(n: &NodeStatus) -> String {
        let clock = match n.clock_offset_seconds {
            Some(s) if n.clock_skewed => format!("  clock {s:+.1}s SKEWED"),
            Some(s) => format!("  clock {s:+.1}s"),
            None => String::new(),
        };
        format!(
            "  {:<16} {:<9} cpu {:<8} gpu {:<8} throttle {}%{}  last seen {}{clock}\n",
            n.name,
            n.status,
            celsius(n.cpu_temp),
            celsius(n.gpu_temp),
            n.throttle_level.unwrap_or(0),
            unexplained(n.unexplained_caps),
            timefmt::format(&n.last_seen)
        )
    }

    fn render_fleet(&self, out: &mut String) {
        // A reply from a coordinator older than paging lists every node.
        let paged = self.per_page > 0;
        if paged {
            self.render_summary(out);
        }
        let order = match self.query.order {
            NodeOrder::ProblemsFirst => "problems first",
            NodeOrder::Name => "by name",
        };
        let filter = if self.query.problem_nodes_only {
            ", problem nodes only"
        } else {
            ""
        };
        if paged {
            out.push_str(&format!(
                "\nNODES (page {} of {}: {} of {}, {order}{filter})\n",
                self.page + 1,
                self.pages.max(1),
                self.nodes.len(),
                self.total_nodes
            ));
        } else {
            out.push_str(&format!("\nNODES ({})\n", self.nodes.len()));
        }
        if self.nodes.is_empty() {
            out.push_str(match (self.total_nodes, self.query.problem_nodes_only) {
                (0, true) => "  (no node has a problem)\n",
                (0, false) => "  (no node has reported yet)\n",
                _ => "  (past the last page)\n",
            });
        }
        for n in &self.nodes {
            out.push_str(&Self::node_line(n));
        }
        if paged && self.page + 1 < self.pages {
            out.push_str(&format!(
                "  ... --page {} for the next {}; --node NAME for one node\n",
                self.page + 2,
                self.per_page
            ));
        }
        // Many agents: only the offline ones, one line each.
        let many = self.agents.len() > 10;
        let online = self.agents.iter().filter(|a| a.online).count();
        out.push_str(&format!("\nAGENTS ({})\n", self.agents.len()));
        for a in self.agents.iter().filter(|a| !many || !a.online) {
            out.push_str(&format!(
                "  {:<32} {:<18} {:<12} {}\n",
                a.agent_id,
                a.agent_type,
                a.node,
                if a.online { "online" } else { "offline" }
            ));
        }
        if many && online > 0 {
            out.push_str(&format!(
                "  ({online} online, not listed; --node NAME lists a node's agents)\n"
            ));
        }
        out.push_str(&format!(
            "\nOPEN ALERTS ({}{})\n",
            self.open_alerts.len(),
            shown_of(
                self.open_alerts.len(),
                self.summary.open_alerts.total,
                "worst first"
            )
        ));
        for a in &self.open_alerts {
            out.push_str(&format!(
                "  {:<10} {:<12} {}\n",
                a["severity"].as_str().unwrap_or("?"),
                a["node"].as_str().unwrap_or("?"),
                a["message"].as_str().unwrap_or("")
            ));
        }
        out.push_str(&format!(
            "\nRECENT ACTIONS ({}{})\n",
            self.recent_actions.len(),
            shown_of(
                self.recent_actions.len(),
                self.summary.recent_actions,
                "newest"
            )
        ));
        for a in self.recent_actions.iter().rev().take(10) {
            out.push_str(&format!(
                "  {} {:<22} {:<10} {:<12} {}\n",
                timefmt::format(&a.sent_at),
                a.action_type,
                a.node,
                a.state,
                a.message
            ));
        }
        out.push_str(&format!(
            "\nOPEN CIRCUITS ({}{})\n",
            self.open_circuits.len(),
            shown_of(
                self.open_circuits.len(),
                self.summary.open_circuits,
                "by node"
            )
        ));
        for c in &self.open_circuits {
            out.push_str(&circuit_line(c));
        }
        if !self.workloads.is_empty() {
            out.push_str(&format!("\nWORKLOADS ({})\n", self.workloads.len()));
            for w in &self.workloads {
                out.push_str(&workload_line(w));
            }
        }
        if !self.drains.is_empty() {
            out.push_str(&format!("\nORCHESTRATED NODES ({})\n", self.drains.len()));
            for d in &self.drains {
                let via = d
                    .via
                    .as_deref()
                    .map(|v| format!(" (run on {v})"))
                    .unwrap_or_default();
                out.push_str(&format!("  {:<20} {}{via}\n", d.node, d.state));
            }
        }
        if !self.ledger.is_empty() {
            out.push_str(&format!(
                "\nWHAT WORKED ({} problem, action pairs)\n",
                self.ledger.len()
            ));
            for r in self.ledger.iter().take(10) {
                let rate = r
                    .success_rate
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "-".into());
                let mean = r
                    .mean_recovery_seconds
                    .map(|x| format!("{x:.0}s"))
                    .unwrap_or_else(|| "-".into());
                let avoided = if r.not_needed > 0 {
                    format!(", {} not needed", r.not_needed)
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "  {:<20} {:<22} {} tried, {} verified, {} failed ({rate}){avoided}, recovery {mean}\n",
                    r.problem, r.action, r.attempts, r.verified, r.failed
                ));
            }
        }
        if !self.approvals.is_empty() {
            out.push_str(&format!("\nAPPROVALS WAITING ({})\n", self.approvals.len()));
            for a in &self.approvals {
                out.push_str(&format!(
                    "  {} {} on {} until {}: {}\n",
                    a.id,
                    a.plan,
                    a.node,
                    timefmt::format(&a.expires_at),
                    a.reason
                ));
            }
        }
        self.render_silences(out);
        // What `--json` carries in full: the counters that moved.
        let moved: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("\nCOUNTERS ({} non-zero)\n", moved.len()));
        for line in moved.chunks(3) {
            out.push_str(&format!("  {}\n", line.join(", ")));
        }
    }

    fn render_node(&self, name: &NodeName, out: &mut String) {
        let Some(n) = self.nodes.iter().find(|n| n.name == name.as_str()) else {
            out.push_str(&format!("\nno node named {name} has reported\n"));
            return;
        };
        let percent = |p: Option<f64>| {
            p.map(|p| format!("{p:.1}%"))
                .unwrap_or_else(|| "none".into())
        };
        out.push_str(&format!(
            "\nNODE {}\n  status      {}\n  last seen   {}\n  cpu         {}\n  gpu         {}\n  storage     {}\n  throttle    {}%{}\n",
            n.name,
            n.status,
            timefmt::format(&n.last_seen),
            celsius(n.cpu_temp),
            celsius(n.gpu_temp),
            percent(n.storage_percent),
            n.throttle_level.unwrap_or(0),
            unexplained(n.unexplained_caps),
        ));
        if let Some(s) = n.clock_offset_seconds {
            let skewed = if n.clock_skewed { " SKEWED" } else { "" };
            out.push_str(&format!("  clock       {s:+.1}s{skewed}\n"));
        }
        out.push_str(&format!("\nAGENTS ({})\n", self.agents.len()));
        for a in &self.agents {
            out.push_str(&format!(
                "  {:<32} {:<18} {:<8} last seen {}\n",
                a.agent_id,
                a.agent_type,
                if a.online { "online" } else { "offline" },
                timefmt::format(&a.last_seen)
            ));
        }
        out.push_str(&format!("\nOPEN ALERTS ({})\n", self.open_alerts.len()));
        for a in &self.open_alerts {
            out.push_str(&format!(
                "  {:<10} {:<18} {} {}\n",
                a["severity"].as_str().unwrap_or("?"),
                a["type"].as_str().unwrap_or("?"),
                a["timestamp"].as_str().unwrap_or("?"),
                a["message"].as_str().unwrap_or("")
            ));
            if let Some(d) = a
                .get("details")
                .filter(|d| d.as_object().is_some_and(|m| !m.is_empty()))
            {
                out.push_str(&format!("             details {d}\n"));
            }
        }
        out.push_str(&format!(
            "\nRECENT ACTIONS ({})\n",
            self.recent_actions.len()
        ));
        for a in self.recent_actions.iter().rev() {
            out.push_str(&format!(
                "  {} {:<22} {:<12} {:<16} {}\n",
                timefmt::format(&a.sent_at),
                a.action_type,
                a.state,
                a.problem,
                a.message
            ));
        }
        out.push_str(&format!("\nOPEN CIRCUITS ({})\n", self.open_circuits.len()));
        for c in &self.open_circuits {
            out.push_str(&circuit_line(c));
        }
        self.render_silences(out);
    }
}

/// `" of N shown, <order>"` when a list shows `shown` of `total`.
fn shown_of(shown: usize, total: usize, order: &str) -> String {
    if total > shown {
        format!(" of {total} shown, {order}; --node NAME for one node's")
    } else {
        String::new()
    }
}

fn workload_line(w: &WorkloadStatus) -> String {
    let at = w.at.as_deref().unwrap_or("-");
    let mut line = format!(
        "  {:<20} {:<8} on {:<12} home {}",
        w.name, w.state, at, w.home
    );
    if let Some(step) = &w.step {
        line.push_str(&format!("; {step}"));
    }
    if !w.fenced.is_empty() {
        line.push_str(&format!("; fenced on {}", w.fenced.join(", ")));
    }
    line.push('\n');
    line
}

fn circuit_line(c: &Value) -> String {
    format!(
        "  {} {} {} ({})\n",
        c["node"].as_str().unwrap_or("?"),
        c["problem"].as_str().unwrap_or("?"),
        c["action"].as_str().unwrap_or("?"),
        c["state"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string at the cap.
    fn long() -> String {
        clip(&"x".repeat(10 * MAX_TEXT_BYTES))
    }

    fn token() -> String {
        "x".repeat(128)
    }

    /// Every list full and every string at its cap (no escapes needed):
    /// the bound the module documentation states.
    #[test]
    fn a_reply_with_every_list_and_string_at_its_cap_fits() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let node = "n".repeat(skos_core::node::MAX_NODE_NAME_LEN);
        let alert = serde_json::json!({
            "alert_id": long(), "agent_id": long(), "type": "heartbeat_missing",
            "severity": "emergency", "node": node, "message": long(),
            "details": {"a": long(), "b": long(), "c": long(), "d": long()},
            "timestamp": timefmt::format(&now),
        });
        let circuit = serde_json::json!({
            "node": long(), "problem": long(), "action": long(),
            "state": "half_open", "since": timefmt::format(&now),
        });
        let s = Status {
            silences: Vec::new(),
            mode: "distributed".into(),
            generated_at: now,
            summary: Summary::default(),
            query: StatusQuery {
                node: NodeName::parse(&node).ok(),
                ..StatusQuery::default()
            },
            total_nodes: usize::MAX,
            page: usize::MAX,
            per_page: MAX_PER_PAGE,
            pages: usize::MAX,
            nodes: (0..MAX_PER_PAGE)
                .map(|_| NodeStatus {
                    name: node.clone(),
                    status: NodeHealth::Degraded,
                    last_seen: now,
                    cpu_temp: Some(-123.456_789_012_345),
                    gpu_temp: Some(-123.456_789_012_345),
                    storage_percent: Some(-123.456_789_012_345),
                    throttle_level: Some(100),
                    unexplained_caps: u32::MAX,
                    clock_offset_seconds: Some(-123_456.789),
                    clock_skewed: false,
                })
                .collect(),
            agents: (0..MAX_AGENTS)
                .map(|_| AgentStatus {
                    agent_id: long(),
                    agent_type: long(),
                    node: node.clone(),
                    last_seen: now,
                    online: false,
                })
                .collect(),
            open_alerts: (0..MAX_OPEN_ALERTS)
                .map(|_| bounded_item(alert.clone()))
                .collect(),
            recent_actions: (0..MAX_RECENT_ACTIONS)
                .map(|_| ActionRecord {
                    action_id: long(),
                    action_type: long(),
                    node: node.clone(),
                    problem: long(),
                    cause: long(),
                    sent_at: now,
                    state: ActionState::NotVerified,
                    message: long(),
                })
                .collect(),
            open_circuits: (0..MAX_OPEN_CIRCUITS)
                .map(|_| bounded_item(circuit.clone()))
                .collect(),
            counters: (0..200)
                .map(|i| (format!("rejected.some_feed.reason_{i}"), u64::MAX))
                .collect(),
            leader: Some(Leadership {
                holder: long(),
                term: u64::MAX,
                since: now,
            }),
            // Workload and node names are tokens of at most 128 bytes.
            workloads: (0..MAX_WORKLOADS)
                .map(|_| WorkloadStatus {
                    name: token(),
                    home: token(),
                    at: Some(token()),
                    state: "moving".into(),
                    step: Some(long()),
                    fenced: vec![token(), token()],
                })
                .collect(),
            drains: (0..MAX_DRAINS)
                .map(|_| DrainStatus {
                    node: token(),
                    state: "undraining".into(),
                    via: Some(token()),
                })
                .collect(),
            approvals: (0..MAX_APPROVALS)
                .map(|_| ApprovalStatus {
                    id: long(),
                    plan: "failover".into(),
                    node: token(),
                    reason: long(),
                    expires_at: now,
                })
                .collect(),
            ledger: (0..MAX_LEDGER_ROWS)
                .map(|_| LedgerRow {
                    problem: long(),
                    action: long(),
                    attempts: u64::MAX,
                    verified: u64::MAX,
                    failed: u64::MAX,
                    uncredited: u64::MAX,
                    not_needed: u64::MAX,
                    success_rate: Some(0.123_456_789),
                    mean_recovery_seconds: Some(f64::MAX),
                    max_recovery_seconds: Some(f64::MAX),
                    last_outcome: Some(crate::engine::LedgerOutcome::Uncredited),
                })
                .collect(),
            stopped_at: Some(now),
        };
        let body = serde_json::to_vec(&s).unwrap_or_default();
        assert!(body.len() < 700 * 1024, "{} bytes", body.len());
        assert_eq!(s.to_reply(), body);
        assert_eq!(
            s.open_alerts[0]["details"],
            serde_json::json!({"truncated": true})
        );
    }

    /// Embedded mode's file, paged and filtered by `skos status`.
    #[test]
    fn a_status_file_is_paged_and_filtered_locally() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let node = |name: &str, status| NodeStatus {
            name: name.into(),
            status,
            last_seen: now,
            cpu_temp: None,
            gpu_temp: None,
            storage_percent: None,
            throttle_level: None,
            unexplained_caps: 0,
            clock_offset_seconds: None,
            clock_skewed: false,
        };
        let agent = |name: &str| AgentStatus {
            agent_id: format!("a-{name}"),
            agent_type: "thermal_sentinel".into(),
            node: name.into(),
            last_seen: now,
            online: true,
        };
        let file = Status {
            silences: Vec::new(),
            mode: "embedded".into(),
            generated_at: now,
            summary: Summary::default(),
            query: StatusQuery::default(),
            total_nodes: 3,
            page: 0,
            per_page: MAX_PER_PAGE,
            pages: 1,
            nodes: vec![
                node("b", NodeHealth::Critical),
                node("a", NodeHealth::Healthy),
                node("c", NodeHealth::Healthy),
            ],
            agents: vec![agent("a"), agent("b"), agent("c")],
            open_alerts: vec![serde_json::json!({"node": "b", "severity": "critical"})],
            recent_actions: Vec::new(),
            open_circuits: vec![serde_json::json!({"node": "a", "state": "open"})],
            counters: [
                ("alerts.received", 4),
                ("commands.sent", 2),
                ("rejected", 0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            leader: None,
            workloads: Vec::new(),
            drains: Vec::new(),
            approvals: Vec::new(),
            ledger: Vec::new(),
            stopped_at: None,
        };
        // The text shows the counters that moved, as --json has them all.
        let text = file.render();
        assert!(
            text.contains("COUNTERS (2 non-zero)\n  alerts.received 4, commands.sent 2\n"),
            "{text}"
        );
        let names = |s: &Status| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        let page = file.clone().select(&StatusQuery {
            page: 1,
            per_page: 2,
            ..StatusQuery::default()
        });
        assert_eq!(names(&page), ["c"]);
        assert_eq!((page.total_nodes, page.pages), (3, 2));
        assert_eq!(page.agents.len(), 1);
        let by_name = file.clone().select(&StatusQuery {
            order: NodeOrder::Name,
            ..StatusQuery::default()
        });
        assert_eq!(names(&by_name), ["a", "b", "c"]);
        let problems = file.clone().select(&StatusQuery {
            problem_nodes_only: true,
            ..StatusQuery::default()
        });
        assert_eq!(names(&problems), ["b"]);
        let one = file.select(&StatusQuery {
            node: NodeName::parse("a").ok(),
            ..StatusQuery::default()
        });
        assert_eq!(names(&one), ["a"]);
        assert!(one.open_alerts.is_empty());
        assert_eq!(one.open_circuits.len(), 1);
        assert!(one.render().contains("NODE a"), "{}", one.render());
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let cut = clip(&"é".repeat(MAX_TEXT_BYTES));
        assert!(cut.len() <= MAX_TEXT_BYTES && cut.ends_with('…'));
        assert_eq!(clip(&"x".repeat(MAX_TEXT_BYTES)).len(), MAX_TEXT_BYTES);
    }

    #[test]
    fn an_oversized_reply_is_a_refusal() {
        let s = Status {
            silences: Vec::new(),
            mode: "embedded".into(),
            generated_at: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
            summary: Summary::default(),
            query: StatusQuery::default(),
            total_nodes: 0,
            page: 0,
            per_page: DEFAULT_PER_PAGE,
            pages: 0,
            nodes: Vec::new(),
            agents: Vec::new(),
            open_alerts: Vec::new(),
            recent_actions: Vec::new(),
            open_circuits: Vec::new(),
            counters: (0..20_000).map(|i| (format!("c{i:040}"), 1)).collect(),
            leader: None,
            workloads: Vec::new(),
            drains: Vec::new(),
            approvals: Vec::new(),
            ledger: Vec::new(),
            stopped_at: None,
        };
        assert!(matches!(
            Status::from_reply(&s.to_reply()),
            Err(StatusReplyError::Refused(e)) if e.contains("limit")
        ));
    }
}
