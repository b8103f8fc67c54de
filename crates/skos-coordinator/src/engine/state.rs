//! What the engine keeps between messages, and the part of it that must
//! survive a restart ([`EngineSnapshot`]).

use std::sync::Arc;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use skos_core::breaker::BreakerSnapshot;
use skos_core::events::ProblemKey;
use skos_core::level::secs;
use skos_core::protocol::{Alert, Command, Heartbeat, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::kinds::mesh::Ladder;
use super::{Effect, Engine};
use crate::status::ActionRecord;

/// How many clock offset samples are kept per node; the offset is the
/// largest of them (see [`NodeState::clock_offset`]).
pub(super) const OFFSET_SAMPLES: usize = 5;

/// What the engine keeps of a node: when it was last heard from, the few
/// readings of its last heartbeat the engine and `skos status` read
/// ([`LastHeartbeat`]), its agents, and what its clock and cool-down checks
/// carry from one heartbeat to the next. Not the heartbeat itself: its
/// metadata maps are most of its size and the engine reads only the mesh
/// levels out of them.
#[derive(Debug, Clone)]
pub(super) struct NodeState {
    /// When its last heartbeat arrived (coordinator clock).
    pub(in crate::engine) last_seen: Timestamp,
    /// What is kept of the last heartbeat.
    pub(in crate::engine) heartbeat: LastHeartbeat,
    /// Silent for longer than `heartbeat_timeout` (and alerted as such).
    pub(in crate::engine) offline: bool,
    /// Offline as restored from a record whose offline alert was open,
    /// and not seen since: a back alert closing that alert (said by the
    /// last leader from a heartbeat) ends it.
    pub(in crate::engine) restored_offline: bool,
    /// A `clock_skew` alert is raised for the node and not yet cleared.
    pub(in crate::engine) skewed: bool,
    /// The agents that sent its heartbeats, and when each was last heard.
    pub(in crate::engine) agents: Agents,
    /// Since when every temperature has been below `warning - hysteresis`
    /// (only while throttled): boxed, as most nodes never have one.
    pub(in crate::engine) cool_since: Option<Box<CoolSince>>,
    /// The last [`OFFSET_SAMPLES`] clock offsets measured from heartbeats
    /// (the agent's timestamp minus the time the heartbeat arrived).
    pub(in crate::engine) offsets: Offsets,
    /// The coordinator's copy of the node's throttle originals (see
    /// [`super::originals`]); empty while it is not throttled.
    pub(in crate::engine) throttle_originals: Vec<skos_core::catalogue::ThrottleOriginal>,
    /// When a change to `throttle_originals` was last audited.
    pub(in crate::engine) originals_audited_at: Option<Timestamp>,
    /// Changes to `throttle_originals` since then that were not audited
    /// (at most one record per [`super::originals::AUDIT_EVERY`]).
    pub(in crate::engine) originals_suppressed: u64,
}

impl NodeState {
    /// A node first seen through `heartbeat` (from an agent of `agent_type`)
    /// at `now`.
    pub(in crate::engine) fn new(
        heartbeat: &Heartbeat,
        agent_type: AgentType,
        now: Timestamp,
    ) -> Self {
        let agents = Agents::new(&heartbeat.agent_id, agent_type, now);
        let mut throttle_originals = Vec::new();
        if let Some(r) = super::originals::reported(heartbeat) {
            super::originals::merge(&mut throttle_originals, r);
        }
        Self {
            last_seen: now,
            heartbeat: LastHeartbeat::of(heartbeat),
            offline: false,
            restored_offline: false,
            skewed: false,
            agents,
            cool_since: None,
            offsets: Offsets::default(),
            throttle_originals,
            originals_audited_at: None,
            originals_suppressed: 0,
        }
    }

    /// Record the clock offset a heartbeat stamped `sent` (agent clock)
    /// and received at `now` (coordinator clock) shows.
    pub(in crate::engine) fn measure_offset(&mut self, sent: Timestamp, now: Timestamp) {
        self.offsets.push(sent - now);
    }

    /// How far the node's clock is ahead of the coordinator's (negative:
    /// behind); `None` before its first heartbeat since the coordinator
    /// started.
    ///
    /// A sample is the true offset minus the heartbeat's transit time,
    /// which is never negative, so the largest of the last few samples is
    /// the best estimate: one heartbeat held up on the way does not move
    /// it, and a clock set forward shows at once. A clock set back shows
    /// once the larger samples from before have left the window.
    pub(in crate::engine) fn clock_offset(&self) -> Option<Duration> {
        self.offsets.max()
    }

    /// The heartbeat kept in a snapshot: the node and its last agent, the
    /// readings, not the metadata (it comes back with the next heartbeat),
    /// except the throttle originals, kept as `metadata.throttle`.
    fn kept_heartbeat(&self, node: &NodeName) -> Heartbeat {
        let (agent_id, agent_type) = self
            .agents
            .last()
            .map(|a| (a.id.to_string(), a.kind.to_string()))
            .unwrap_or_default();
        let hb = &self.heartbeat;
        let mut metadata = serde_json::Map::new();
        if let Some(throttle) = super::originals::as_metadata(&self.throttle_originals) {
            metadata.insert("throttle".into(), throttle);
        }
        Heartbeat {
            agent_id,
            agent_type,
            node: node.clone(),
            timestamp: hb.timestamp,
            cpu_temp: hb.cpu_temp,
            gpu_temp: hb.gpu_temp,
            storage_percent: hb.storage_percent,
            interval_seconds: hb.interval_seconds,
            throttle_level: hb.throttle_level,
            metadata,
            workloads: Vec::new(),
        }
    }
}

/// The readings of a node's last heartbeat that the engine and `skos
/// status` read: its timestamp (the agent's clock), temperatures, storage,
/// interval, throttle, and the mesh levels and peers from its metadata.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LastHeartbeat {
    /// When the agent sent it, in the agent's clock.
    pub(in crate::engine) timestamp: Timestamp,
    /// Hottest CPU reading in °C.
    pub(in crate::engine) cpu_temp: Option<f64>,
    /// Hottest GPU reading in °C.
    pub(in crate::engine) gpu_temp: Option<f64>,
    /// Fullest watched mount, in percent.
    pub(in crate::engine) storage_percent: Option<f64>,
    /// Seconds until the next heartbeat (kept for snapshots).
    pub(in crate::engine) interval_seconds: Option<f64>,
    /// Active throttle level in percent, unexplained caps included.
    pub(in crate::engine) throttle_level: Option<u8>,
    /// The level SKOS applied and recorded
    /// (`metadata.throttle.level`), when the heartbeat says.
    pub(in crate::engine) recorded_level: Option<u8>,
    /// The targets of the caps in force its agent has no record of
    /// (`metadata.throttle.unexplained[].target`).
    pub(in crate::engine) unexplained_targets: Vec<String>,
    /// `metadata.mesh`, when it names any level or peer node.
    pub(in crate::engine) mesh: Option<Box<MeshReadings>>,
    /// How many caps in force its agent has no record of
    /// (`metadata.throttle.unexplained_count`).
    pub(in crate::engine) unexplained_caps: u32,
    /// The loop breaker's chains whose circuit is not closed
    /// (`metadata.loop_breaker.circuits`: chain id, state), at most
    /// [`LOOP_CIRCUITS_KEPT`]; `None` when there are none.
    pub(in crate::engine) loop_circuits: Option<LoopCircuits>,
}

/// A node's loop-breaker circuits that are not closed: (chain id, state).
pub(in crate::engine) type LoopCircuits = Box<[(Box<str>, Box<str>)]>;

/// Loop-breaker circuits kept per node (as many as its agent reports).
const LOOP_CIRCUITS_KEPT: usize = 20;

/// What `metadata.loop_breaker.circuits` says: `[{chain_id, circuit}]`.
fn loop_circuits(hb: &Heartbeat) -> Option<LoopCircuits> {
    let circuits = hb
        .metadata
        .get(skos_core::catalogue::Executor::LoopBreaker.as_str())?
        .get("circuits")?
        .as_array()?;
    let kept: Vec<(Box<str>, Box<str>)> = circuits
        .iter()
        .filter_map(|c| {
            let id = c.get("chain_id")?.as_str()?;
            let state = c.get("circuit")?.as_str()?;
            (state != "closed" && id.len() <= 128 && state.len() <= 16)
                .then(|| (id.into(), state.into()))
        })
        .take(LOOP_CIRCUITS_KEPT)
        .collect();
    (!kept.is_empty()).then(|| kept.into_boxed_slice())
}

impl LastHeartbeat {
    /// What is kept of `hb`.
    pub(in crate::engine) fn of(hb: &Heartbeat) -> Self {
        Self {
            timestamp: hb.timestamp,
            cpu_temp: hb.cpu_temp,
            gpu_temp: hb.gpu_temp,
            storage_percent: hb.storage_percent,
            interval_seconds: hb.interval_seconds,
            throttle_level: hb.throttle_level,
            recorded_level: super::originals::recorded_level(hb),
            unexplained_targets: super::originals::unexplained_targets(hb),
            mesh: MeshReadings::of(hb).map(Box::new),
            unexplained_caps: u32::try_from(super::originals::unexplained_count(hb))
                .unwrap_or(u32::MAX),
            loop_circuits: loop_circuits(hb),
        }
    }

    /// Whether a throttle SKOS set is in force: the recorded level
    /// (`throttle_level` from an agent that does not say) is above 0, or a
    /// cap the agent has no record of is one `kept` (the coordinator's
    /// copy of its originals) explains. A cap nobody recorded (an
    /// operator's, the firmware's) is reported but is no throttle to lift.
    pub(in crate::engine) fn throttled(
        &self,
        kept: &[skos_core::catalogue::ThrottleOriginal],
    ) -> bool {
        self.recorded_level.or(self.throttle_level).unwrap_or(0) > 0
            || super::originals::explains_any(kept, &self.unexplained_targets)
    }

    /// The reading a problem is measured by, if the heartbeat carried it
    /// (as [`Heartbeat::metric`]).
    pub(in crate::engine) fn metric(&self, metric: &str) -> Option<f64> {
        match metric {
            "cpu_temp" => self.cpu_temp,
            "gpu_temp" => self.gpu_temp,
            "storage_percent" => self.storage_percent,
            _ => None,
        }
    }

    /// The level the heartbeat reported for a mesh problem (as
    /// [`skos_core::policy::mesh_level`]).
    pub(in crate::engine) fn mesh_level(&self, problem: &str) -> Option<f64> {
        self.mesh.as_ref()?.level(problem)
    }
}

/// What a heartbeat's `metadata.mesh` says: the level of each interface
/// and peer. (Which nodes it has as peers is not kept: the coordinator's
/// `mesh.topology` says that, never a node about itself.)
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MeshReadings {
    /// `interfaces.<name>.level`, where it is a number.
    interfaces: Vec<(Box<str>, f64)>,
    /// `peers.<name>.level`, where it is a number.
    peers: Vec<(Box<str>, f64)>,
}

impl MeshReadings {
    /// What `hb.metadata.mesh` says, or `None` when it names no level.
    fn of(hb: &Heartbeat) -> Option<Self> {
        let mesh = hb.metadata.get("mesh")?;
        let levels = |key: &str| -> Vec<(Box<str>, f64)> {
            mesh.get(key)
                .and_then(serde_json::Value::as_object)
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|(name, e)| {
                            Some((name.as_str().into(), e.get("level")?.as_f64()?))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let readings = Self {
            interfaces: levels("interfaces"),
            peers: levels("peers"),
        };
        let empty = readings.interfaces.is_empty() && readings.peers.is_empty();
        (!empty).then_some(readings)
    }

    /// The level of a mesh problem (`mesh:<interface or peer>`): the
    /// interface's, else the peer's.
    fn level(&self, problem: &str) -> Option<f64> {
        let name = problem.strip_prefix(skos_core::events::MESH_PREFIX)?;
        let find = |levels: &[(Box<str>, f64)]| {
            levels
                .iter()
                .find(|(n, _)| &**n == name)
                .map(|(_, level)| *level)
        };
        find(&self.interfaces).or_else(|| find(&self.peers))
    }
}

/// An agent type's name, shared by every node whose agent has it (see
/// [`Engine::agent_type`]).
pub(super) type AgentType = Arc<str>;

/// One agent of a node, and when it was last heard.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AgentSeen {
    /// The agent's id.
    pub(in crate::engine) id: Box<str>,
    /// Its type.
    pub(in crate::engine) kind: AgentType,
    /// When its last heartbeat arrived (coordinator clock).
    pub(in crate::engine) seen: Timestamp,
}

impl AgentSeen {
    /// `id`, of type `kind`, first heard at `now`.
    fn new(id: &str, kind: AgentType, now: Timestamp) -> Self {
        Self {
            id: id.into(),
            kind,
            seen: now,
        }
    }

    /// Heard again at `now`, as an agent of type `kind`.
    fn heard(&mut self, kind: AgentType, now: Timestamp) {
        if self.kind != kind {
            self.kind = kind;
        }
        self.seen = now;
    }
}

/// A node's agents, by id, and which one sent its last heartbeat. Most
/// nodes have one agent, kept inline: a fleet of them costs no allocation
/// for it.
#[derive(Debug, Clone)]
pub(super) enum Agents {
    /// The node's only agent so far.
    One(AgentSeen),
    /// Several agents, sorted by id, and the index in `seen` of the agent
    /// of the last heartbeat.
    Many { seen: Vec<AgentSeen>, last: usize },
}

impl Agents {
    /// Agents of a node first heard from `id`, an agent of type `kind`, at
    /// `now`.
    pub(in crate::engine) fn new(id: &str, kind: AgentType, now: Timestamp) -> Self {
        Self::One(AgentSeen::new(id, kind, now))
    }

    /// `id`, an agent of type `kind`, sent a heartbeat at `now`.
    pub(in crate::engine) fn record(&mut self, id: &str, kind: AgentType, now: Timestamp) {
        if let Self::One(agent) = self {
            if &*agent.id == id {
                agent.heard(kind, now);
                return;
            }
        }
        let none = Self::Many {
            seen: Vec::new(),
            last: 0,
        };
        let mut seen = match std::mem::replace(self, none) {
            Self::One(agent) => vec![agent],
            Self::Many { seen, .. } => seen,
        };
        let last = match seen.binary_search_by(|a| (*a.id).cmp(id)) {
            Ok(i) => {
                seen[i].heard(kind, now);
                i
            }
            Err(i) => {
                seen.reserve_exact(1);
                seen.insert(i, AgentSeen::new(id, kind, now));
                i
            }
        };
        *self = Self::Many { seen, last };
    }

    /// Every agent, sorted by id.
    fn all(&self) -> &[AgentSeen] {
        match self {
            Self::One(agent) => std::slice::from_ref(agent),
            Self::Many { seen, .. } => seen,
        }
    }

    /// The agent of the last heartbeat.
    pub(in crate::engine) fn last(&self) -> Option<&AgentSeen> {
        match self {
            Self::One(agent) => Some(agent),
            Self::Many { seen, last } => seen.get(*last),
        }
    }

    /// Every agent as (id, (type, last heard)), by id.
    pub(in crate::engine) fn iter(&self) -> impl Iterator<Item = (&str, (&str, &Timestamp))> {
        self.all().iter().map(|a| (&*a.id, (&*a.kind, &a.seen)))
    }
}

/// The last [`OFFSET_SAMPLES`] clock offsets, in a ring. Each is kept as
/// its whole seconds and the nanoseconds beyond them (as
/// [`Duration::num_seconds`] and [`Duration::subsec_nanos`] give them):
/// the same values as [`Duration`]s, in 12 bytes each instead of 16.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Offsets {
    secs: [i64; OFFSET_SAMPLES],
    nanos: [i32; OFFSET_SAMPLES],
    /// How many samples are kept (up to [`OFFSET_SAMPLES`]).
    len: u8,
    /// Where the next sample goes, modulo [`OFFSET_SAMPLES`] (at most
    /// [`OFFSET_SAMPLES`]).
    next: u8,
}

impl Offsets {
    /// Keep `offset`, forgetting the oldest sample past [`OFFSET_SAMPLES`].
    fn push(&mut self, offset: Duration) {
        let next = usize::from(self.next) % OFFSET_SAMPLES;
        self.secs[next] = offset.num_seconds();
        self.nanos[next] = offset.subsec_nanos();
        // Wrapped once, where it is read: a second `%` here would change
        // nothing (a mutation of it no test could tell apart).
        self.next = (next + 1) as u8;
        self.len = (self.len + 1).min(OFFSET_SAMPLES as u8);
    }

    /// The sample kept at `i`.
    fn get(&self, i: usize) -> Option<Duration> {
        let secs = Duration::try_seconds(*self.secs.get(i)?)?;
        secs.checked_add(&Duration::nanoseconds(i64::from(*self.nanos.get(i)?)))
    }

    /// The largest sample kept.
    fn max(&self) -> Option<Duration> {
        (0..usize::from(self.len)).filter_map(|i| self.get(i)).max()
    }
}

/// The start of a node's cool period: when the coordinator saw it, and
/// the agent's timestamp of the heartbeat that showed it (the same for
/// every coordinator, so ids derived from it are too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CoolSince {
    pub(in crate::engine) at: Timestamp,
    pub(in crate::engine) agent_at: Timestamp,
}

/// One try at lifting a throttle after a cool period: which cool period
/// (the agent's timestamp of the heartbeat that started it) and which try
/// (from 1). The `reset_throttle` action id is derived from both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ResetAttempt {
    pub(in crate::engine) origin: Timestamp,
    pub(in crate::engine) attempt: u32,
}

/// A `reset_throttle` that must be sent again (its last try failed,
/// expired or got no result), as soon as the gates let it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ResetRetry {
    /// The try to send next.
    pub(in crate::engine) next: ResetAttempt,
    /// Why the last try to send it was held back, so a hold is audited
    /// once, not on every tick.
    #[serde(skip)]
    pub(in crate::engine) held: Option<super::SkipReason>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(in crate::engine) node: NodeName,
    pub(in crate::engine) problem: ProblemKey,
    pub(in crate::engine) action: String,
    pub(in crate::engine) severity: Severity,
    pub(in crate::engine) alert: Alert,
    pub(in crate::engine) trial: bool,
    /// When it was sent (coordinator clock); `None` in a snapshot from a
    /// version that did not keep it (set on restore).
    #[serde(default)]
    pub(in crate::engine) sent_at: Option<Timestamp>,
    /// Its deadline in the coordinator's clock (the command itself carries
    /// it in the node's clock): without a result by this instant plus
    /// `coordinator.result_grace_seconds`, it is closed as `no_result`.
    #[serde(default)]
    pub(in crate::engine) deadline: Option<Timestamp>,
    /// For a recovery `reset_throttle`: which cool period and try.
    #[serde(default)]
    pub(in crate::engine) reset: Option<ResetAttempt>,
    /// The command as sent, so a coordinator that stopped between keeping
    /// it and publishing it can publish it after a restart
    /// ([`Engine::unsent`]).
    #[serde(default)]
    pub(in crate::engine) command: Option<Command>,
}

impl Pending {
    /// A command for `action` on `node`'s `problem` at `severity`, raised by
    /// `alert`, about to be sent (`Engine::send` fills in when, its
    /// deadline and the command).
    pub(in crate::engine) fn new(
        node: NodeName,
        problem: ProblemKey,
        action: &str,
        severity: Severity,
        alert: Alert,
        trial: bool,
    ) -> Self {
        Self {
            node,
            problem,
            action: action.to_string(),
            severity,
            alert,
            trial,
            sent_at: None,
            deadline: None,
            reset: None,
            command: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Verification {
    pub(in crate::engine) action_id: String,
    pub(in crate::engine) node: NodeName,
    pub(in crate::engine) problem: ProblemKey,
    pub(in crate::engine) action: String,
    pub(in crate::engine) metric: String,
    /// The metric must fall below this (the alert level's threshold).
    pub(in crate::engine) below: f64,
    pub(in crate::engine) deadline: Timestamp,
    pub(in crate::engine) alert: Alert,
    /// When the agent answered (its own clock): only a heartbeat it sent
    /// at or after this instant can show the fix worked. The heartbeat
    /// known when the result arrives usually predates the command, often
    /// the alert itself, and shows the value from before the problem.
    #[serde(default)]
    pub(in crate::engine) after: Option<Timestamp>,
    /// What the readings since the command was sent say about the
    /// metric's fall (see [`super::credit`]).
    #[serde(default)]
    pub(in crate::engine) descent: super::credit::Descent,
}

/// What the coordinator must not forget across a restart: breakers,
/// commands awaiting results, fixes under verification, open alerts, recent
/// actions and the names of known nodes (so one that died while the
/// coordinator was down is still reported offline).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub(in crate::engine) breakers: BreakerSnapshot,
    pub(in crate::engine) pending: Vec<(String, Pending)>,
    pub(in crate::engine) verifications: Vec<Verification>,
    pub(in crate::engine) open_alerts: Vec<Alert>,
    pub(in crate::engine) recent: Vec<ActionRecord>,
    pub(in crate::engine) nodes: Vec<(NodeName, Heartbeat)>,
    #[serde(default)]
    pub(in crate::engine) ladders: Vec<Ladder>,
    /// Throttle resets waiting to be sent again, by node.
    #[serde(default)]
    pub(in crate::engine) reset_retries: Vec<(NodeName, ResetRetry)>,
    /// Where the workloads whose home is this node run, and the step of a
    /// plan under way for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) placements: Vec<super::Placement>,
    /// Plans for this node waiting for approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) approvals: Vec<super::Approval>,
    /// Orchestrated nodes' drain state (kept once ever drained).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) drains: Vec<super::placement::Drain>,
    /// What each action did for each problem on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) ledger: Vec<super::LedgerEntry>,
    /// Operators' silences and maintenance windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) silences: Vec<skos_core::silence::Silence>,
    /// Commands closed as `no_result` whose late answer is still news.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) unanswered: Vec<super::unanswered::Unanswered>,
    /// Problems whose actions were skipped because the node was offline:
    /// decided again when it is back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::engine) offline_skipped: Vec<(NodeName, ProblemKey)>,
}

impl EngineSnapshot {
    /// Nothing to keep (a node the engine has forgotten).
    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
            && self.pending.is_empty()
            && self.verifications.is_empty()
            && self.open_alerts.is_empty()
            && self.recent.is_empty()
            && self.nodes.is_empty()
            && self.ladders.is_empty()
            && self.reset_retries.is_empty()
            && self.placements.is_empty()
            && self.approvals.is_empty()
            && self.drains.is_empty()
            && self.ledger.is_empty()
            && self.silences.is_empty()
            && self.unanswered.is_empty()
            && self.offline_skipped.is_empty()
    }
}

/// Alert ids remembered for de-duplication.
pub(super) const HANDLED_WINDOW: usize = 100_000;

/// At most this many agent types are shared ([`Engine::agent_type`]);
/// past it each node keeps its own copy, so agents sending ever new types
/// cannot grow the shared set without bound.
pub(super) const SHARED_AGENT_TYPES: usize = 1024;

impl Engine {
    /// Everything that must survive a restart, all nodes together (see
    /// [`Engine::node_snapshot`] for one node's part).
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            breakers: self.breakers.snapshot(),
            pending: self
                .pending
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            verifications: self.verifications.all().into_iter().cloned().collect(),
            open_alerts: self.open_alerts.values().cloned().collect(),
            recent: self.recent.iter().cloned().collect(),
            nodes: self
                .nodes
                .iter()
                .map(|(n, s)| (n.clone(), s.kept_heartbeat(n)))
                .collect(),
            ladders: self.ladders.values().cloned().collect(),
            reset_retries: self
                .reset_retries
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
            placements: self.placements().all().cloned().collect(),
            approvals: self.placements().approvals().cloned().collect(),
            drains: self.placements().drains().cloned().collect(),
            ledger: self.ledger.all(),
            silences: self.silences.values().flatten().cloned().collect(),
            unanswered: self.unanswered.all(),
            offline_skipped: self
                .offline_skipped
                .iter()
                .map(|(n, p, ())| (n.clone(), p.clone()))
                .collect(),
        }
    }

    /// One node's part of [`Engine::snapshot`]: its breakers, pending
    /// commands, verifications, open alerts, recent actions, ladders and
    /// throttle retries. The coordinator keeps each node's part under its
    /// own key, written before the message that changed it is
    /// acknowledged; its size is bounded by the node's problems and
    /// actions, not by the fleet, and so is the time it takes: each part
    /// is kept by node (the recent actions, bounded by
    /// `coordinator.recent_actions`, are filtered).
    pub fn node_snapshot(&self, node: &NodeName) -> EngineSnapshot {
        EngineSnapshot {
            breakers: self.breakers.snapshot_node(node.as_str()),
            pending: self
                .pending
                .of(node)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            verifications: self.verifications.of(node).cloned().collect(),
            open_alerts: self.open_alerts.of(node).map(|(_, a)| a.clone()).collect(),
            recent: self
                .recent
                .iter()
                .filter(|r| r.node == node.as_str())
                .cloned()
                .collect(),
            nodes: self
                .nodes
                .get(node)
                .map(|s| (node.clone(), s.kept_heartbeat(node)))
                .into_iter()
                .collect(),
            ladders: self.ladders.of(node).map(|(_, l)| l.clone()).collect(),
            reset_retries: self
                .reset_retries
                .get(node)
                .map(|r| (node.clone(), r.clone()))
                .into_iter()
                .collect(),
            placements: self.placements().of_home(node),
            approvals: self.placements().approvals_of(node),
            drains: self.placements().drains_of(node),
            ledger: self.ledger.of_node(node),
            silences: self.silences.get(node).cloned().unwrap_or_default(),
            unanswered: self.unanswered.of(node),
            offline_skipped: self
                .offline_skipped
                .of(node)
                .map(|(p, ())| (node.clone(), p.clone()))
                .collect(),
        }
    }

    /// Every node the engine keeps anything for.
    pub fn known_nodes(&self) -> std::collections::BTreeSet<NodeName> {
        let mut out: std::collections::BTreeSet<NodeName> = self.nodes.keys().cloned().collect();
        out.extend(self.pending.iter().map(|(_, p)| p.node.clone()));
        out.extend(self.verifications.nodes().cloned());
        out.extend(self.open_alerts.nodes().cloned());
        out.extend(self.ladders.nodes().cloned());
        out.extend(self.reset_retries.keys().cloned());
        out.extend(self.silences.keys().cloned());
        out.extend(self.unanswered.nodes().cloned());
        out.extend(self.offline_skipped.nodes().cloned());
        out.extend(
            self.breakers
                .snapshot()
                .keys()
                .filter_map(|k| NodeName::parse(&k.node).ok()),
        );
        out
    }

    /// Commands kept as pending whose `command` record is not among
    /// `audited` (the action ids of the trail's recent `command` records):
    /// the coordinator stopped after keeping them and before publishing
    /// or auditing them. Publishing them again is safe: the action id is
    /// the message id and agents execute an id once.
    pub fn unsent(&self, audited: &std::collections::HashSet<String>) -> Vec<Effect> {
        let mut out = Vec::new();
        for (id, p) in self.pending.iter() {
            let Some(cmd) = &p.command else { continue };
            if audited.contains(id) {
                continue;
            }
            out.push(super::audit(
                skos_core::AuditEvent::Command,
                p.sent_at.unwrap_or(cmd.timestamp),
                Some(&p.node),
                format!(
                    "sent {} to {} for {} (again, after a restart)",
                    cmd.action_type, p.node, p.problem
                ),
                serde_json::json!({"command": cmd, "resent": true}),
            ));
            out.push(Effect::Command(p.node.clone(), cmd.clone()));
        }
        out
    }

    /// Continue from a snapshot, a whole one or one node's part: what it
    /// holds is added to what is already restored. Known nodes count as
    /// seen `now`: a node that does not report within the heartbeat
    /// timeout is then offline. A pending command from a snapshot that
    /// kept no deadline gets one from `now`.
    pub fn restore(&mut self, snap: EngineSnapshot, now: Timestamp) {
        self.breakers.restore(snap.breakers);
        let deadline = now + secs(self.cfg.coordinator.command_deadline);
        for (id, mut p) in snap.pending {
            p.sent_at.get_or_insert(now);
            p.deadline.get_or_insert(deadline);
            self.pending.insert(id, p);
        }
        self.reset_retries.extend(snap.reset_retries);
        self.unanswered.restore(snap.unanswered);
        for (node, problem) in snap.offline_skipped {
            self.offline_skipped.insert(&node, problem, ());
        }
        self.placement.restore(snap.placements);
        self.placement.restore_approvals(snap.approvals);
        self.placement.restore_drains(snap.drains);
        self.ledger.restore(snap.ledger);
        for s in snap.silences {
            let kept = self.silences.entry(s.node.clone()).or_default();
            if !kept.iter().any(|k| k.id == s.id) {
                kept.push(s);
            }
        }
        for v in snap.verifications {
            self.verifications.push(v);
        }
        for a in snap.open_alerts {
            let node = a.node.clone();
            self.open_alerts.insert(&node, a.problem(), a);
        }
        let mut recent: Vec<ActionRecord> = self.recent.drain(..).chain(snap.recent).collect();
        recent.sort_by_key(|r| r.sent_at);
        let keep = self.cfg.coordinator.recent_actions.max(1);
        self.recent = recent.into_iter().rev().take(keep).rev().collect();
        for l in snap.ladders {
            let node = l.alert.node.clone();
            self.ladders.insert(&node, l.alert.problem(), l);
        }
        for (name, heartbeat) in snap.nodes {
            if self.nodes.contains_key(&name) {
                continue;
            }
            let kind = self.agent_type(&heartbeat.agent_type);
            let mut state = NodeState::new(&heartbeat, kind, now);
            // Its clock_skew alert is still open: not raised again.
            state.skewed = self
                .open_alerts
                .contains(&name, &super::kinds::clock::problem());
            // Its offline alert is still open: offline until it beats
            // again (then said back, and what was skipped decided again),
            // not raised again.
            state.offline = self
                .open_alerts
                .contains(&name, &super::kinds::offline::problem());
            state.restored_offline = state.offline;
            self.nodes.insert(name, Box::new(state));
        }
    }

    /// The shared name of an agent type (one copy for every node whose
    /// agent has it, up to [`SHARED_AGENT_TYPES`] types).
    pub(super) fn agent_type(&mut self, name: &str) -> AgentType {
        if let Some(shared) = self.agent_types.get(name) {
            return shared.clone();
        }
        let kind: AgentType = Arc::from(name);
        if self.agent_types.len() < SHARED_AGENT_TYPES {
            self.agent_types.insert(kind.clone());
        }
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("a valid time")
    }

    #[test]
    fn offsets_keep_every_sample_exactly() {
        let mut o = Offsets::default();
        assert_eq!(o.max(), None);
        let samples = [
            Duration::milliseconds(-1_500),
            Duration::nanoseconds(-1),
            Duration::nanoseconds(999_999_999),
            Duration::seconds(-3600) - Duration::nanoseconds(7),
        ];
        for s in samples {
            o.push(s);
            assert_eq!(o.get(usize::from(o.len) - 1), Some(s));
        }
        assert_eq!(o.max(), Some(Duration::nanoseconds(999_999_999)));
        // The oldest samples leave the window.
        for _ in 0..OFFSET_SAMPLES {
            o.push(Duration::milliseconds(-2));
        }
        assert_eq!(o.max(), Some(Duration::milliseconds(-2)));
        let mut extremes = Offsets::default();
        extremes.push(Duration::MIN);
        assert_eq!(extremes.max(), Some(Duration::MIN));
        extremes.push(Duration::MAX);
        assert_eq!(extremes.max(), Some(Duration::MAX));
    }

    #[test]
    fn agents_of_a_node_are_kept_by_id_with_the_last_one() {
        let kind: AgentType = Arc::from("thermal_sentinel");
        let mut agents = Agents::new("b", kind.clone(), at(0));
        agents.record("b", kind.clone(), at(1));
        assert!(matches!(agents, Agents::One(_)));
        assert_eq!(agents.last().map(|a| (&*a.id, a.seen)), Some(("b", at(1))));
        agents.record("a", Arc::from("other"), at(2));
        agents.record("c", kind.clone(), at(3));
        let ids: Vec<_> = agents.iter().map(|(id, (k, s))| (id, k, *s)).collect();
        assert_eq!(
            ids,
            vec![
                ("a", "other", at(2)),
                ("b", "thermal_sentinel", at(1)),
                ("c", "thermal_sentinel", at(3))
            ]
        );
        assert_eq!(agents.last().map(|a| &*a.id), Some("c"));
        agents.record("a", kind, at(4));
        assert_eq!(
            agents.last().map(|a| (&*a.id, &*a.kind, a.seen)),
            Some(("a", "thermal_sentinel", at(4)))
        );
        assert_eq!(agents.iter().count(), 3);
    }
}
