//! The loop breaker antibody: runaway processing chains, cooperative and not.
//!
//! * Cooperative chains: applications ask before every step on
//!   `skos.chain.<node>` ([`chain`], a task the runtime runs beside the
//!   agent loop so answers never wait for sensing). A step over a limit is
//!   denied at once and the chain's circuit opens locally for its cool-off;
//!   a `loop` alert with the chain's last steps as evidence goes to the
//!   coordinator, whose table (`loop.actions`) answers with
//!   `circuit_break` (the circuit is re-opened for a full cool-off from
//!   the decision, announced with the command's id) and/or `reset_chain`
//!   (counters cleared, circuit closed, generation one up). Without a
//!   decision (coordinator away, dry-run, empty table) the local circuit
//!   half-opens after its cool-off: the local deny is the floor, the
//!   coordinator decides what happens beyond it.
//! * Uncooperative chains: configured process groups read from `/proc`
//!   every `monitor_interval` ([`procwatch`]): tree depth, descendants,
//!   respawns within a window. A trip raises the same kind of alert; no
//!   process is signalled until a command says so (a refused step harms
//!   nothing, a signal does). `circuit_break` stops the trees (SIGSTOP,
//!   then SIGTERM and SIGKILL after the grace, or as configured) and keeps
//!   stopping new members for the cool-off; `reset_chain` terminates the
//!   trees so their supervisor starts them fresh.
//!   Respawns are also heard as they happen ([`procevents`], the kernel's
//!   process events, where the agent may listen: the initial namespaces,
//!   and `CAP_NET_ADMIN` before Linux 6.6), so a crash loop whose process lives less than one
//!   monitor interval is counted at every start, not only when a snapshot
//!   happens to see it; without them (said once, with why) the snapshots
//!   count alone.
//!
//! A command names its chain through its `cause` (the id of the alert this
//! antibody raised), or `parameters.chain_id`, or its `problem`
//! (`loop:chain:<id>`, `loop:proc:<group>`); each only selects among
//! tracked chains and configured groups.

pub mod chain;
pub mod procevents;
pub mod procwatch;

use skos_core::counters::Counter;
use skos_core::escape::ShowPath;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use skos_bus::Bus;
use skos_core::chain::tree::{
    self, CgroupPath, ExeMatch, GroupChange, GroupStep, GroupTracker, GroupTrip, ProcInfo, Selector,
};
use skos_core::chain::{
    ChainControl, ChainTable, ChainView, CircuitState, ControlEvent, Reason, Trip,
};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Alert, AlertKind, Change, Command, Heartbeat, ResultStatus, Severity};
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;
use tokio::sync::mpsc;

use crate::antibody::{Antibody, Execution};
use crate::offloop::Reader;
use crate::Outcome;
use procevents::{EventsError, Inbox};
use procwatch::{Doubt, Needs, ProcWatch, Trust};

pub const AGENT_TYPE: &str = skos_core::catalogue::Executor::LoopBreaker.as_str();

/// Alerts raised for cooperative chains per minute, at most; beyond that
/// chains are still denied locally, the alert is only counted.
const CHAIN_ALERTS_PER_MINUTE: usize = 60;
/// Alert ids remembered to find the chain a command is about.
const ALERT_INDEX: usize = 4096;
/// Announcements and alerts waiting to be published.
const OUTBOX: usize = 1024;
/// Passes made to stop processes forked while a tree was being stopped.
const STOP_PASSES: usize = 5;
/// Respawn times listed in an alert, at most.
const EVIDENCE_RESPAWNS: usize = 20;

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    skos_core::catalogue::Executor::LoopBreaker.handles(action)
}

/// What a loop alert, and so a command, is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Chain(String),
    Group(String),
}

impl Target {
    /// `details.sensor` of its alerts; the problem is `loop:<sensor>`.
    pub fn sensor(&self) -> String {
        match self {
            Target::Chain(id) => format!("chain:{id}"),
            Target::Group(name) => format!("proc:{name}"),
        }
    }
}

/// Alert id → target, for the commands those alerts cause. Bounded.
#[derive(Debug, Default)]
pub(crate) struct AlertIndex {
    map: HashMap<String, (Target, Option<Reason>)>,
    order: VecDeque<String>,
}

impl AlertIndex {
    fn insert(&mut self, alert_id: &str, target: Target, reason: Option<Reason>) {
        if self
            .map
            .insert(alert_id.to_string(), (target, reason))
            .is_none()
        {
            self.order.push_back(alert_id.to_string());
        }
        while self.order.len() > ALERT_INDEX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn get(&self, alert_id: &str) -> Option<&(Target, Option<Reason>)> {
        self.map.get(alert_id)
    }
}

/// State shared by the antibody (commands, heartbeats) and the chain
/// service (requests, ticks).
pub(crate) struct Shared {
    pub table: ChainTable,
    pub index: AlertIndex,
    alert_times: VecDeque<Timestamp>,
}

impl Shared {
    /// Whether one more chain alert fits in the per-minute budget.
    fn alert_budget(&mut self, now: Timestamp) -> bool {
        while self
            .alert_times
            .front()
            .is_some_and(|t| now - *t > chrono::Duration::seconds(60))
        {
            self.alert_times.pop_front();
        }
        if self.alert_times.len() >= CHAIN_ALERTS_PER_MINUTE {
            return false;
        }
        self.alert_times.push_back(now);
        true
    }
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A poisoned lock means a panic elsewhere mid-update; the table is
    // still consistent enough to keep answering.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Something to publish, in order, off the request path.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Control(ChainControl),
    Alert(Alert),
}

/// Who this loop breaker is, for the messages it makes.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub node: NodeName,
    pub agent_id: String,
    pub dry_run: bool,
    /// Alerts must stay under the bus's message limit.
    pub max_message_bytes: usize,
}

static ALERT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Ctx {
    fn alert_id(&self, target: &Target, now: Timestamp) -> String {
        let seq = ALERT_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = now.timestamp_nanos_opt().unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (target.sensor(), seq, nanos, std::process::id()).hash(&mut h);
        // Ends in hex that differs per alert: the coordinator builds
        // action ids from an alert id's last characters.
        format!("{}-{nanos}-{:016x}", self.agent_id, h.finish())
    }

    fn alert(
        &self,
        target: &Target,
        severity: Severity,
        message: String,
        details: Value,
        now: Timestamp,
    ) -> Alert {
        let mut d = match details {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        d.insert("sensor".into(), json!(target.sensor()));
        match target {
            Target::Chain(id) => d.insert("chain_id".into(), json!(id)),
            Target::Group(name) => d.insert("group".into(), json!(name)),
        };
        Alert {
            alert_id: self.alert_id(target, now),
            agent_id: self.agent_id.clone(),
            kind: AlertKind::Loop,
            severity,
            node: self.node.clone(),
            message,
            details: d,
            timestamp: now,
        }
    }

    pub(crate) fn trip_alert(&self, trip: &Trip, now: Timestamp) -> Alert {
        let target = Target::Chain(trip.chain_id.clone());
        // The newest steps, as many as fit in half a message.
        let mut evidence: &[_] = &trip.evidence;
        while evidence.len() > 1
            && serde_json::to_vec(evidence).map_or(0, |v| v.len()) > self.max_message_bytes / 2
        {
            evidence = &evidence[1..];
        }
        let verb = if self.dry_run {
            "would be denied (dry-run)"
        } else {
            "denied, circuit open"
        };
        self.alert(
            &target,
            Severity::Critical,
            format!("chain {}: {}; step {verb}", trip.chain_id, trip.message),
            json!({
                "condition": trip.condition.as_str(),
                "kind": trip.kind,
                "value": trip.value,
                "limit": trip.limit,
                "generation": trip.generation,
                "until": timefmt::format(&trip.until),
                "local_action": if self.dry_run { "none (dry-run)" } else { "deny" },
                "evidence": evidence,
            }),
            now,
        )
    }

    fn group_alert(&self, trip: &GroupTrip, now: Timestamp) -> Alert {
        let target = Target::Group(trip.group.clone());
        let respawns: Vec<String> = trip
            .respawns
            .iter()
            .rev()
            .take(EVIDENCE_RESPAWNS)
            .rev()
            .map(timefmt::format)
            .collect();
        self.alert(
            &target,
            Severity::Critical,
            trip.message.clone(),
            json!({
                "condition": trip.condition.as_str(),
                "value": trip.value,
                "limit": trip.limit,
                "local_action": "none until a command",
                "evidence": trip.evidence,
                "respawns": respawns,
            }),
            now,
        )
    }

    pub(crate) fn recovery_alert(&self, target: &Target, message: String, now: Timestamp) -> Alert {
        self.alert(
            target,
            Severity::Normal,
            message,
            json!({"condition": "recovered"}),
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn control(
        &self,
        event: ControlEvent,
        chain_id: &str,
        reason: Option<Reason>,
        message: String,
        view: Option<&ChainView>,
        action_id: Option<&str>,
        now: Timestamp,
    ) -> ChainControl {
        ChainControl {
            event,
            node: self.node.clone(),
            chain_id: chain_id.to_string(),
            reason,
            message,
            generation: view.map(|v| v.generation).unwrap_or(0),
            circuit: view.map(|v| v.circuit).unwrap_or(match event {
                ControlEvent::CircuitOpen => CircuitState::Open,
                ControlEvent::HalfOpen => CircuitState::HalfOpen,
                ControlEvent::Closed | ControlEvent::Reset => CircuitState::Closed,
            }),
            source: if action_id.is_some() {
                "coordinator".into()
            } else {
                "local".into()
            },
            action_id: action_id.map(str::to_owned),
            until: view.and_then(|v| v.until),
            timestamp: now,
        }
    }
}

struct Group {
    selector: Selector,
    tracker: GroupTracker,
    /// Why the group's executable is not believed, when it is not (said
    /// once per change).
    exe_doubt: Option<String>,
}

pub struct LoopBreaker {
    ctx: Ctx,
    shared: Arc<Mutex<Shared>>,
    outbox: mpsc::Sender<Outgoing>,
    outbox_rx: Option<mpsc::Receiver<Outgoing>>,
    counters: Counters,
    cfg: Config,
    groups: Vec<Group>,
    procs: ProcWatch,
    trust: Trust,
    /// Cgroups found untrusted, said once each (bounded).
    doubted_cgroups: HashSet<CgroupPath>,
    scan_failed: bool,
    /// The agent loop's scans, off the loop.
    reader: Reader<Look>,
    /// Processes started as the kernel tells it, when it does.
    events: Events,
    /// Processes never signalled, as of the last scan.
    protected: HashSet<u32>,
}

/// Whether respawns are heard from the kernel's process events.
enum Events {
    /// Not asked for yet (asked on the agent loop's first look).
    Untried,
    Listening(Arc<Mutex<Inbox>>),
    /// Not available; the snapshots count alone.
    Unavailable(String),
}

/// A scan of `/proc` longer than this is slow (it takes milliseconds; a
/// process in uninterruptible sleep can hold a read of its `cmdline`).
const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

impl LoopBreaker {
    pub fn new(cfg: &Config) -> Self {
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let groups = cfg
            .loop_
            .process_groups
            .iter()
            .filter_map(|g| {
                let Some(mut selector) = Selector::of(g) else {
                    // `config check` refuses such a group; one built
                    // around it still selects nothing.
                    tracing::error!(group = %g.name, "process group without uid, exe, unit or cgroup: it has no members");
                    return None;
                };
                selector.command_lines = cfg.loop_.record_command_lines;
                Some(Group {
                    selector,
                    tracker: GroupTracker::new(&g.name, cfg.loop_.group_limits(g)),
                    exe_doubt: None,
                })
            })
            .collect();
        Self {
            ctx: Ctx {
                node: cfg.node.name.clone(),
                agent_id: format!("loop-breaker-{}", cfg.node.name),
                dry_run: cfg.dry_run,
                max_message_bytes: cfg.nats.max_message_bytes,
            },
            shared: Arc::new(Mutex::new(Shared {
                table: ChainTable::new(&cfg.loop_),
                index: AlertIndex::default(),
                alert_times: VecDeque::new(),
            })),
            outbox,
            outbox_rx: Some(outbox_rx),
            counters: Counters::default(),
            cfg: cfg.clone(),
            groups,
            procs: ProcWatch::new(&cfg.proc_root),
            trust: Trust::new(),
            doubted_cgroups: HashSet::new(),
            scan_failed: false,
            reader: Reader::new("processes", "a scan of /proc", SCAN_BUDGET),
            events: Events::Untried,
            protected: HashSet::from([0, 1, 2, std::process::id()]),
        }
    }

    /// Hear processes start from the kernel's process events
    /// ([`procevents`]) from now on, so a respawn is counted even when the
    /// process lives less than one monitor interval. The agent loop does
    /// this on its first look; where it fails, it says why once and the
    /// snapshots count alone.
    ///
    /// # Errors
    /// Why events cannot be heard ([`EventsError`]): no `CAP_NET_ADMIN`
    /// (before Linux 6.6), not in the initial pid and user namespace,
    /// `proc_root` not this machine's procfs.
    pub fn listen(&mut self) -> std::result::Result<(), EventsError> {
        if matches!(self.events, Events::Listening(_)) {
            return Ok(());
        }
        match procevents::spawn(self.procs.clone(), self.needs(), self.reader.arrivals()) {
            Ok(inbox) => {
                tracing::info!("loop breaker: respawns heard from the kernel's process events");
                self.events = Events::Listening(inbox);
                Ok(())
            }
            Err(e) => {
                self.events = Events::Unavailable(e.to_string());
                Err(e)
            }
        }
    }

    /// Whether respawns are heard from the kernel's process events.
    pub fn listening(&self) -> bool {
        matches!(self.events, Events::Listening(_))
    }

    /// Judge the processes started since the last call, as the kernel told
    /// them: each that roots a group's tree is a respawn at once
    /// ([`GroupTracker::started`]), and an open circuit stops it at once.
    /// Returns the alerts to raise. Nothing when not listening.
    pub fn hear(&mut self) -> Vec<Alert> {
        let Events::Listening(inbox) = &self.events else {
            return Vec::new();
        };
        let started: Vec<procevents::Started> = procevents_lock(inbox).started.drain(..).collect();
        if started.is_empty() || self.groups.is_empty() {
            return Vec::new();
        }
        let protected = self.protected.clone();
        let trust = self.trust.clone();
        let trusted = CgroupTrust::new(&trust, &self.cfg.sysfs_root);
        let mut alerts = Vec::new();
        for s in &started {
            for gi in 0..self.groups.len() {
                let root = tree::is_root(
                    &s.proc,
                    s.parent.as_ref(),
                    &self.groups[gi].selector,
                    &protected,
                    &|cg| trusted.check(cg),
                );
                if !root {
                    continue;
                }
                let step = self.groups[gi].tracker.started(s.proc.id, s.at);
                if !step.signals.is_empty() {
                    let mut changes = Vec::new();
                    let refused = self.send(&step, &protected, &mut changes);
                    tracing::info!(
                        group = self.groups[gi].tracker.name(),
                        pid = s.proc.id.pid,
                        sent = changes.len(),
                        refused,
                        "open circuit: a new member stopped as it started"
                    );
                }
                let name = self.groups[gi].tracker.name().to_string();
                alerts.extend(self.group_alerts(&name, &step.changes, s.at));
            }
        }
        self.note_doubts(&trusted);
        alerts
    }

    /// A tracked chain, as the loop breaker sees it now.
    pub fn chain(&self, chain_id: &str) -> Option<ChainView> {
        lock(&self.shared).table.view(chain_id)
    }

    fn queue(&self, o: Outgoing) {
        if self.outbox.try_send(o).is_err() {
            self.counters.inc(Counter::LoopOutboxDropped);
            tracing::warn!("loop breaker outbox full; an announcement or alert was dropped");
        }
    }

    /// Which chain or group a command is about.
    fn resolve(&self, cmd: &Command) -> Option<(Target, Option<Reason>)> {
        let shared = lock(&self.shared);
        if let Some(found) = cmd.cause.as_deref().and_then(|c| shared.index.get(c)) {
            return Some(found.clone());
        }
        let named = cmd
            .parameters
            .get("chain_id")
            .and_then(Value::as_str)
            .filter(|id| skos_core::chain::valid_id(id));
        if let Some(id) = named {
            if self.groups.iter().any(|g| g.tracker.name() == id) {
                return Some((Target::Group(id.to_string()), None));
            }
            return Some((Target::Chain(id.to_string()), None));
        }
        let sensor = cmd.problem.as_deref()?.strip_prefix("loop:")?;
        if let Some(name) = sensor.strip_prefix("proc:") {
            return self
                .groups
                .iter()
                .any(|g| g.tracker.name() == name)
                .then(|| (Target::Group(name.to_string()), None));
        }
        let id = sensor.strip_prefix("chain:")?;
        shared
            .table
            .view(id)
            .map(|_| (Target::Chain(id.to_string()), None))
    }

    fn chain_command(
        &self,
        cmd: &Command,
        chain_id: &str,
        reason: Option<Reason>,
        now: Timestamp,
    ) -> Outcome {
        let mut shared = lock(&self.shared);
        let before = shared.table.view(chain_id);
        let before_state = before
            .as_ref()
            .map(|v| v.circuit.as_str())
            .unwrap_or("untracked");
        let (message, view, event) = if cmd.action_type == "circuit_break" {
            let view =
                shared
                    .table
                    .open(chain_id, None, reason.unwrap_or(Reason::CircuitOpen), now);
            let until = view.until.map(|u| timefmt::format(&u)).unwrap_or_default();
            (
                format!("circuit of chain {chain_id} open until {until}"),
                Some(view),
                ControlEvent::CircuitOpen,
            )
        } else {
            match shared.table.reset(chain_id, now) {
                Some(view) => (
                    format!(
                        "chain {chain_id} reset: counters cleared, generation {}",
                        view.generation
                    ),
                    Some(view),
                    ControlEvent::Reset,
                ),
                None => (
                    format!("chain {chain_id} is not tracked: it starts from zero anyway"),
                    None,
                    ControlEvent::Reset,
                ),
            }
        };
        drop(shared);
        let after = view
            .as_ref()
            .map(|v| v.circuit.as_str())
            .unwrap_or("untracked");
        let ctl = self.ctx.control(
            event,
            chain_id,
            reason,
            message.clone(),
            view.as_ref(),
            Some(&cmd.action_id),
            now,
        );
        self.queue(Outgoing::Control(ctl));
        if event == ControlEvent::Reset {
            let target = Target::Chain(chain_id.to_string());
            self.queue(Outgoing::Alert(self.ctx.recovery_alert(
                &target,
                format!("chain {chain_id} reset by {}", cmd.action_id),
                now,
            )));
        }
        self.counters.inc(Counter::LoopCommands(&cmd.action_type));
        tracing::info!(chain_id, action = %cmd.action_type, action_id = %cmd.action_id, "{message}");
        let evidence = before.map(|v| v.evidence).unwrap_or_default();
        let mut o = Outcome::new(ResultStatus::Succeeded, message);
        o.changes.push(Change {
            target: format!("chain:{chain_id}"),
            before: before_state.to_string(),
            after: after.to_string(),
        });
        o.details = json!({
            "chain_id": chain_id,
            "circuit": after,
            "until": view.as_ref().and_then(|v| v.until).map(|u| timefmt::format(&u)),
            "generation": view.as_ref().map(|v| v.generation),
            "evidence": evidence,
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        o
    }

    /// Send a group's signals in order: one change per signal sent; returns
    /// how many were refused (the process was gone, or is protected).
    fn send(&self, step: &GroupStep, protected: &HashSet<u32>, changes: &mut Vec<Change>) -> usize {
        let mut failed = 0;
        for (id, sig) in &step.signals {
            match self.procs.signal(*id, *sig, protected) {
                Ok(()) => {
                    self.counters.inc(Counter::LoopSignals(sig.as_str()));
                    changes.push(Change {
                        target: format!("pid:{}", id.pid),
                        before: "running".into(),
                        after: sig.as_str().into(),
                    });
                }
                Err(e) => {
                    failed += 1;
                    self.counters.inc(Counter::LoopSignalsFailed);
                    tracing::debug!(pid = id.pid, signal = sig.as_str(), error = %e, "signal not sent");
                }
            }
        }
        failed
    }

    fn group_command(&mut self, cmd: &Command, name: &str, now: Timestamp) -> Outcome {
        let Some(gi) = self.groups.iter().position(|g| g.tracker.name() == name) else {
            return Outcome::new(ResultStatus::Failed, format!("no process group {name}"));
        };
        if !self.procs.is_live() {
            return Outcome::new(
                ResultStatus::Failed,
                format!(
                    "proc_root {} is not this machine's procfs; no process is signalled",
                    self.procs.root().escaped()
                ),
            );
        }
        let exes = resolve_exes(&self.trust, &self.exe_paths());
        self.set_exes(exes);
        let needs = self.needs();
        let snapshot = match self.procs.scan(needs) {
            Ok(s) => s,
            Err(e) => return Outcome::new(ResultStatus::Failed, e.to_string()),
        };
        let protected = self.procs.protected(&snapshot);
        let trust = self.trust.clone();
        let trusted = CgroupTrust::new(&trust, &self.cfg.sysfs_root);
        let obs = tree::observe(&snapshot, &self.groups[gi].selector, &protected, &|cg| {
            trusted.check(cg)
        });
        let breaking = cmd.action_type == "circuit_break";
        let step = if breaking {
            self.groups[gi].tracker.circuit_break(&obs, now)
        } else {
            self.groups[gi].tracker.reset(&obs, now)
        };
        let mut changes = Vec::new();
        let mut failed = self.send(&step, &protected, &mut changes);
        // A tree that forks while it is being stopped: stop the newcomers.
        for _ in 0..STOP_PASSES {
            if !breaking {
                break;
            }
            let Ok(snapshot) = self.procs.scan(needs) else {
                break;
            };
            let obs = tree::observe(&snapshot, &self.groups[gi].selector, &protected, &|cg| {
                trusted.check(cg)
            });
            let step = self.groups[gi].tracker.enforce(&obs, now);
            if step.signals.is_empty() {
                break;
            }
            failed += self.send(&step, &protected, &mut changes);
        }
        self.counters.inc(Counter::LoopCommands(&cmd.action_type));
        let limits = self.cfg.loop_.group_limits(
            self.cfg
                .loop_
                .process_groups
                .iter()
                .find(|g| g.name == name)
                .unwrap_or(&Default::default()),
        );
        let message = if breaking {
            format!(
                "process group {name}: {} signals sent ({} refused); on_break {} for {} s, grace {} s",
                changes.len(),
                failed,
                limits.on_break.as_str(),
                limits.cool_off_seconds,
                limits.grace_seconds
            )
        } else {
            format!(
                "process group {name}: {} signals sent ({} refused) to terminate the trees; SIGKILL after {} s",
                changes.len(),
                failed,
                limits.grace_seconds
            )
        };
        tracing::info!(group = name, action = %cmd.action_type, action_id = %cmd.action_id, "{message}");
        let status = if changes.is_empty() && failed > 0 {
            ResultStatus::Failed
        } else {
            ResultStatus::Succeeded
        };
        self.note_doubts(&trusted);
        let mut o = Outcome::new(status, message);
        o.changes = changes;
        o.details = json!({
            "group": name,
            "members": obs.members.len(),
            "depth": obs.depth,
            "descendants": obs.descendants,
            "evidence": obs.evidence,
            "state": self.groups[gi].tracker.view(),
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        o
    }

    fn group_alerts(&self, name: &str, changes: &[GroupChange], now: Timestamp) -> Vec<Alert> {
        let target = Target::Group(name.to_string());
        let mut out = Vec::new();
        for c in changes {
            match c {
                GroupChange::Tripped(trip) => {
                    self.counters
                        .inc(Counter::LoopTrips(trip.condition.as_str()));
                    let a = self.ctx.group_alert(trip, now);
                    lock(&self.shared).index.insert(
                        &a.alert_id,
                        target.clone(),
                        Some(trip.condition.into()),
                    );
                    out.push(a);
                }
                GroupChange::Cleared => out.push(self.ctx.recovery_alert(
                    &target,
                    format!("process group {name} is back within its limits"),
                    now,
                )),
                GroupChange::HalfOpened => {
                    tracing::info!(group = name, "process group circuit half-open");
                }
                GroupChange::Closed => out.push(self.ctx.recovery_alert(
                    &target,
                    format!("process group {name}: circuit closed, within its limits"),
                    now,
                )),
            }
        }
        out
    }
}

fn procevents_lock(inbox: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    inbox.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cgroup trust, asked once per cgroup path per scan.
struct CgroupTrust<'a> {
    trust: &'a Trust,
    root: PathBuf,
    seen: RefCell<HashMap<CgroupPath, Result<(), Doubt>>>,
}

impl<'a> CgroupTrust<'a> {
    /// Cgroups under `<sysfs_root>/fs/cgroup`.
    fn new(trust: &'a Trust, sysfs_root: &std::path::Path) -> Self {
        CgroupTrust {
            trust,
            root: sysfs_root.join("fs/cgroup"),
            seen: RefCell::new(HashMap::new()),
        }
    }

    fn check(&self, cg: &CgroupPath) -> bool {
        if let Some(r) = self.seen.borrow().get(cg) {
            return r.is_ok();
        }
        let r = self.trust.cgroup(&self.root, cg);
        let ok = r.is_ok();
        self.seen.borrow_mut().insert(cg.clone(), r);
        ok
    }
}

/// Most untrusted cgroups remembered (so each is said once).
const DOUBTED_CGROUPS: usize = 256;

/// One look at the processes, with the groups' executables resolved at the
/// same time (off the agent loop: a stat may wait on a slow filesystem).
pub(crate) struct Look {
    procs: crate::Result<Vec<ProcInfo>>,
    /// Per group, in order: `None` for a group without `exe`.
    exes: Vec<Option<Result<ExeMatch, Doubt>>>,
}

/// Resolve each configured executable again (it may have been upgraded,
/// or its directory made writable).
fn resolve_exes(trust: &Trust, paths: &[Option<PathBuf>]) -> Vec<Option<Result<ExeMatch, Doubt>>> {
    paths
        .iter()
        .map(|p| p.as_ref().map(|p| trust.exe(p)))
        .collect()
}

impl LoopBreaker {
    /// What a scan must read: only what some group selects by.
    fn needs(&self) -> Needs {
        self.groups
            .iter()
            .map(|g| {
                let (cgroups, uids, exe) = g.selector.needs();
                Needs { cgroups, uids, exe }
            })
            .fold(Needs::default(), Needs::or)
    }

    /// Each group's configured executable, in group order.
    fn exe_paths(&self) -> Vec<Option<PathBuf>> {
        self.groups
            .iter()
            .map(|g| g.selector.exe.as_ref().map(|e| e.configured.clone()))
            .collect()
    }

    /// Take each group's executable as resolved (in group order); an
    /// untrusted one selects nothing, and is said once per change.
    fn set_exes(&mut self, exes: Vec<Option<Result<ExeMatch, Doubt>>>) {
        for (g, resolved) in self.groups.iter_mut().zip(exes) {
            let Some(resolved) = resolved else {
                continue;
            };
            let (file, doubt) = match resolved {
                Ok(m) => (m.file, None),
                Err(why) => (None, Some(why.to_string())),
            };
            if doubt != g.exe_doubt {
                match &doubt {
                    Some(why) => {
                        tracing::warn!(group = g.tracker.name(), reason = %why, "process group executable not trusted: the group has no members")
                    }
                    None => tracing::info!(
                        group = g.tracker.name(),
                        "process group executable trusted again"
                    ),
                }
                g.exe_doubt = doubt;
            }
            if let Some(exe) = &mut g.selector.exe {
                exe.file = file;
            }
        }
    }

    /// Say (once each) which cgroups a scan did not believe.
    fn note_doubts(&mut self, trusted: &CgroupTrust<'_>) {
        for (path, r) in trusted.seen.borrow().iter() {
            let Err(why) = r else { continue };
            if self.doubted_cgroups.len() < DOUBTED_CGROUPS
                && self.doubted_cgroups.insert(path.clone())
            {
                tracing::warn!(cgroup = %path, reason = %why, "cgroup not trusted: its processes are no group's members");
            }
        }
    }

    /// Scan the processes here and now and return the alerts to raise
    /// (the agent loop scans off the loop instead, then
    /// [`LoopBreaker::apply`]).
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        if self.groups.is_empty() {
            return Vec::new();
        }
        let mut alerts = self.hear();
        let exes = resolve_exes(&self.trust, &self.exe_paths());
        let procs = self.procs.scan(self.needs());
        alerts.extend(self.apply(Look { procs, exes }, now));
        alerts
    }

    /// Judge a scan of the processes: each watched group's tracker, the
    /// signals an open circuit sends, and the alerts to raise.
    fn apply(&mut self, look: Look, now: Timestamp) -> Vec<Alert> {
        self.set_exes(look.exes);
        let snapshot = match look.procs {
            Ok(s) => {
                self.scan_failed = false;
                s
            }
            Err(e) => {
                if !self.scan_failed {
                    tracing::warn!(root = %self.procs.root().escaped(), error = %e, "cannot read processes");
                    self.scan_failed = true;
                }
                return Vec::new();
            }
        };
        let live = snapshot.iter().map(|p| p.id).collect();
        let protected = self.procs.protected(&snapshot);
        self.protected = protected.clone();
        let mut alerts = Vec::new();
        let trust = self.trust.clone();
        let trusted = CgroupTrust::new(&trust, &self.cfg.sysfs_root);
        for gi in 0..self.groups.len() {
            let obs = tree::observe(&snapshot, &self.groups[gi].selector, &protected, &|cg| {
                trusted.check(cg)
            });
            let step = self.groups[gi].tracker.observe(&obs, &live, now);
            if !step.signals.is_empty() {
                let mut changes = Vec::new();
                let refused = self.send(&step, &protected, &mut changes);
                let mut by_signal: std::collections::BTreeMap<&str, usize> = Default::default();
                for c in &changes {
                    *by_signal.entry(c.after.as_str()).or_default() += 1;
                }
                tracing::info!(group = self.groups[gi].tracker.name(), sent = ?by_signal, refused, "open circuit: signals sent");
            }
            let name = self.groups[gi].tracker.name().to_string();
            alerts.extend(self.group_alerts(&name, &step.changes, now));
        }
        self.note_doubts(&trusted);
        alerts
    }
}

impl Antibody for LoopBreaker {
    fn name(&self) -> &'static str {
        AGENT_TYPE
    }

    fn handles(&self, action: &str) -> bool {
        handles(action)
    }

    /// Judges what arrived and asks for the next scan, off the loop (the
    /// first look waits up to a second for it).
    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        if self.groups.is_empty() {
            return Vec::new();
        }
        if matches!(self.events, Events::Untried) {
            if let Err(e) = self.listen() {
                tracing::warn!(error = %e, "loop breaker: process events unavailable; respawns are counted from /proc snapshots every monitor interval, so a process that lives less than one may be missed");
            }
        }
        let mut alerts = Antibody::judge(self, now);
        let (procs, needs) = (self.procs.clone(), self.needs());
        let (trust, exe_paths) = (self.trust.clone(), self.exe_paths());
        let look = move || Look {
            exes: resolve_exes(&trust, &exe_paths),
            procs: procs.scan(needs),
        };
        if self.reader.look(look) {
            alerts.extend(Antibody::judge(self, now));
        }
        alerts
    }

    fn arrivals(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.reader.arrivals())
    }

    fn judge(&mut self, now: Timestamp) -> Vec<Alert> {
        let mut alerts = self.hear();
        if let Some(scan) = self.reader.take() {
            alerts.extend(self.apply(scan, now));
        }
        alerts
    }

    fn report(&self, hb: &mut Heartbeat) {
        let shared = lock(&self.shared);
        let circuits: Vec<Value> = shared
            .table
            .circuits()
            .into_iter()
            .take(20)
            .map(|(id, state)| json!({"chain_id": id, "circuit": state}))
            .collect();
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| serde_json::to_value(g.tracker.view()).unwrap_or(Value::Null))
            .collect();
        let process_events = match &self.events {
            Events::Untried => json!({"listening": false}),
            Events::Listening(inbox) => {
                let ib = procevents_lock(inbox);
                json!({"listening": true, "lost": ib.lost, "unread": ib.unread, "forged": ib.forged})
            }
            Events::Unavailable(why) => json!({"listening": false, "why": why}),
        };
        hb.metadata.insert(
            AGENT_TYPE.into(),
            json!({"chains": shared.table.len(), "circuits": circuits, "groups": groups, "process_events": process_events}),
        );
        drop(shared);
        self.reader.report(hb);
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        // A scan in progress shows the processes from before this command
        // (a tree just stopped would trip its group again).
        self.reader.invalidate();
        let now = chrono::Utc::now();
        let outcome = match self.resolve(cmd) {
            Some((Target::Chain(id), reason)) => self.chain_command(cmd, &id, reason, now),
            Some((Target::Group(name), _)) => self.group_command(cmd, &name, now),
            None => Outcome::new(
                ResultStatus::Failed,
                format!(
                    "no tracked chain or process group for this command (cause {:?}, problem {:?})",
                    cmd.cause.as_deref().unwrap_or(""),
                    cmd.problem.as_deref().unwrap_or("")
                ),
            ),
        };
        Execution::Done(outcome)
    }

    fn serve(&mut self, bus: &Bus, counters: &Counters) -> Option<BoxFuture<'static, ()>> {
        self.counters = counters.clone();
        let outbox_rx = self.outbox_rx.take()?;
        let service = chain::ChainService {
            ctx: self.ctx.clone(),
            shared: self.shared.clone(),
            outbox: self.outbox.clone(),
            bus: bus.clone(),
            counters: counters.clone(),
            max_message_bytes: self.cfg.nats.max_message_bytes,
        };
        Some(Box::pin(service.run(outbox_rx)))
    }
}
