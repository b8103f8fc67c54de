//! The workloads antibody: starts, stops and checks the workloads of
//! `workloads:` on this node, and reports each one it is responsible for
//! in every heartbeat (`Heartbeat::workloads`).
//!
//! Responsible for: the workloads whose home is this node ([`homed_here`])
//! and those it was told to start (kept in `workloads-<node>.json` in the
//! state dir, so a restarted agent still reports them, until a
//! `workload_stop`). It reports what it saw, never what it hoped: the
//! driver's state (`running`, `stopped`, ...), whether the last health
//! check passed, since when it is so (when it saw the change) and what it
//! saw. Nothing is started or stopped on its own: only on a command.
//!
//! Actions (background jobs, each answered with
//! `details: {workload, state, healthy}`):
//! * `workload_start`: succeeds at once when it already runs and is
//!   healthy; else starts it and succeeds once its health check passes
//!   within `start_timeout_seconds` (without a health check, once it
//!   runs). A start that does not become healthy in time is stopped again
//!   and answered `failed` with the reason.
//! * `workload_stop`: stops it (idempotent); `fence: "true"` is recorded
//!   in the result only.
//! * `node_drain` / `node_undrain` (parameter `node`): run that node's
//!   `nodes.<node>.orchestrator` command ([`drain`]).
//!
//! Drivers: [`process`] (argv in a session of its own, pid file with start
//! time), [`container`] (Docker Engine API through `bollard`), [`systemd`]
//! (`systemctl`). Health checks: [`health`].

pub mod container;
pub mod drain;
mod error;
pub mod health;
pub mod process;
pub mod systemd;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use skos_core::catalogue::{WORKLOAD_START as START, WORKLOAD_STOP as STOP};
use skos_core::config::{Config, DriverKind, WorkloadSpec, WorkloadsConfig};
use skos_core::protocol::{Alert, Command, Heartbeat, ResultStatus};
use skos_core::timefmt::Timestamp;
use skos_core::{NodeName, WorkloadName, WorkloadReport, WorkloadState};

pub use error::WorkloadError;

use crate::antibody::{Antibody, Execution, Inventory};
use crate::offloop::{Reader, FIRST_LOOK};
use crate::Outcome;
use container::ContainerDriver;
use health::Health;
use process::{ProcessDriver, Records};
use systemd::SystemdDriver;

pub const AGENT_TYPE: &str = skos_core::catalogue::Executor::Workloads.as_str();

/// How often a start looks whether it has become healthy.
const START_POLL: Duration = Duration::from_millis(250);

/// A read of every workload this agent is responsible for may take this
/// long before it is `slow` in `metadata.sensor_errors`.
const READ_BUDGET: Duration = Duration::from_secs(30);

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    skos_core::catalogue::Executor::Workloads.handles(action)
}

/// The workloads whose home is `node` ([`Config::workload_home`]: the
/// seed's `nodes.<node>.services`, else the first node a workload's own
/// `nodes` allows).
pub fn homed_here(cfg: &Config, node: &NodeName) -> BTreeSet<WorkloadName> {
    cfg.workloads
        .iter()
        .filter(|(name, _)| cfg.workload_home(name.as_str()) == Some(node))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The `reason` of a refusal because another start or stop of the same
/// workload is running: it says nothing of the refused step's own outcome.
pub const BUSY: &str = "busy";

/// What a driver saw of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub state: WorkloadState,
    pub detail: String,
}

/// Longest `detail` kept, in bytes (a health check's error can be long;
/// a heartbeat lists every workload).
pub const MAX_DETAIL: usize = 240;

impl Seen {
    /// `detail` is cut to [`MAX_DETAIL`] bytes (at a character boundary,
    /// with `…`).
    pub fn new(state: WorkloadState, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Seen { state, detail }
    }
}

/// One workload's driver, built from its configuration.
#[derive(Debug, Clone)]
pub enum Driver {
    Process(ProcessDriver),
    Container(ContainerDriver),
    Systemd(SystemdDriver),
}

/// What a driver needs from the agent: where its process records live,
/// the procfs root, the container engine.
#[derive(Debug, Clone)]
pub struct DriverContext {
    pub proc_root: PathBuf,
    pub records: Records,
    pub docker_host: String,
}

impl DriverContext {
    pub fn new(cfg: &Config, state_dir: Option<&Path>) -> Self {
        DriverContext {
            proc_root: cfg.proc_root.clone(),
            records: Records::new(state_dir),
            docker_host: cfg.agent.workloads.docker_host.clone(),
        }
    }
}

impl Driver {
    pub fn new(name: &WorkloadName, spec: &WorkloadSpec, ctx: &DriverContext) -> Driver {
        match spec.driver {
            DriverKind::Process => Driver::Process(ProcessDriver::new(
                name,
                spec,
                &ctx.proc_root,
                ctx.records.clone(),
            )),
            DriverKind::Container => {
                Driver::Container(ContainerDriver::new(name, spec, &ctx.docker_host))
            }
            DriverKind::Systemd => Driver::Systemd(SystemdDriver {
                name: name.clone(),
                unit: spec.unit.clone().unwrap_or_default(),
                start_timeout: Duration::from_secs_f64(spec.start_timeout_seconds),
                stop_timeout: Duration::from_secs_f64(spec.stop_timeout_seconds + 10.0),
            }),
        }
    }

    pub fn observe(&self) -> Seen {
        match self {
            Driver::Process(d) => d.observe(),
            Driver::Container(d) => d.observe(),
            Driver::Systemd(d) => d.observe(),
        }
    }

    /// Start it (idempotent); what was done.
    pub fn start(&self) -> Result<String, WorkloadError> {
        match self {
            Driver::Process(d) => d.start(),
            Driver::Container(d) => d.start(),
            Driver::Systemd(d) => d.start(),
        }
    }

    /// Stop it (idempotent); what was done.
    pub fn stop(&self) -> Result<String, WorkloadError> {
        match self {
            Driver::Process(d) => d.stop(),
            Driver::Container(d) => d.stop(),
            Driver::Systemd(d) => d.stop(),
        }
    }
}

/// A workload's state and health as seen now: the driver's state, and
/// for a running one its health check (without one, running is healthy).
pub fn look(driver: &Driver, spec: &WorkloadSpec) -> (Seen, Option<bool>) {
    let seen = driver.observe();
    if seen.state != WorkloadState::Running {
        return (seen, None);
    }
    match &spec.health {
        None => (seen, Some(true)),
        Some(check) => match health::check(check) {
            Health::Healthy => (seen, Some(true)),
            Health::Unhealthy(why) => {
                let detail = format!("{}; unhealthy: {why}", seen.detail);
                (Seen::new(seen.state, detail), Some(false))
            }
        },
    }
}

/// The last thing seen of one workload.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    state: WorkloadState,
    healthy: Option<bool>,
    since: Option<Timestamp>,
    detail: String,
}

/// What the antibody, its reads and its jobs share.
#[derive(Debug, Default)]
struct Shared {
    /// The last seen of each workload reported.
    seen: BTreeMap<WorkloadName, Entry>,
    /// Workloads a job is starting or stopping: not judged by reads.
    busy: BTreeSet<WorkloadName>,
    /// Workloads it was told to start (and not told to stop since).
    started: BTreeSet<WorkloadName>,
}

impl Shared {
    /// Record what was seen at `now`; `since` moves only on a change seen
    /// (the first look does not know since when).
    fn record(&mut self, name: &WorkloadName, seen: Seen, healthy: Option<bool>, now: Timestamp) {
        let since = match self.seen.get(name) {
            Some(e) if e.state == seen.state => e.since,
            Some(_) => Some(now),
            None => None,
        };
        self.seen.insert(
            name.clone(),
            Entry {
                state: seen.state,
                healthy,
                since,
                detail: seen.detail,
            },
        );
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The record of workloads told to start, `workloads-<node>.json` in the
/// state dir (a JSON list of names); in memory without a state dir.
#[derive(Debug, Clone)]
struct StartedFile(Option<PathBuf>);

impl StartedFile {
    fn load(&self, configured: &WorkloadsConfig) -> BTreeSet<WorkloadName> {
        let Some(path) = &self.0 else {
            return BTreeSet::new();
        };
        let bytes = match skos_fs::read_nofollow(path) {
            Ok(Some(b)) => b,
            Ok(None) => return BTreeSet::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "record of started workloads not read: only this node's own are reported");
                return BTreeSet::new();
            }
        };
        match serde_json::from_slice::<Vec<WorkloadName>>(&bytes) {
            Ok(names) => names
                .into_iter()
                .filter(|n| {
                    let known = configured.get(n).is_some();
                    if !known {
                        tracing::warn!(workload = %n, path = %path.display(), "a workload started here earlier is no longer configured: not reported");
                    }
                    known
                })
                .collect(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "record of started workloads unreadable: only this node's own are reported");
                BTreeSet::new()
            }
        }
    }

    fn save(&self, names: &BTreeSet<WorkloadName>) -> Result<(), WorkloadError> {
        let Some(path) = &self.0 else { return Ok(()) };
        let text = serde_json::to_vec(names).unwrap_or_else(|_| b"[]".to_vec());
        skos_fs::write_private(path, &text)?;
        Ok(())
    }
}

/// The workloads antibody.
pub struct Workloads {
    node: NodeName,
    workloads: WorkloadsConfig,
    ctx: DriverContext,
    homed: BTreeSet<WorkloadName>,
    started_file: StartedFile,
    shared: Arc<Mutex<Shared>>,
    reader: Reader<Vec<(WorkloadName, Seen, Option<bool>)>>,
    orchestrators: drain::Orchestrators,
}

impl Workloads {
    /// `state_dir`: where process records, their logs and the record of
    /// started workloads are kept; `None` keeps them in memory.
    pub fn new(cfg: &Config, state_dir: Option<&Path>) -> Self {
        let node = cfg.node.name.clone();
        let started_file = StartedFile(state_dir.map(|d| d.join(format!("workloads-{node}.json"))));
        let started = started_file.load(&cfg.workloads);
        Workloads {
            homed: homed_here(cfg, &node),
            node,
            workloads: cfg.workloads.clone(),
            ctx: DriverContext::new(cfg, state_dir),
            started_file,
            shared: Arc::new(Mutex::new(Shared {
                started,
                ..Default::default()
            })),
            reader: Reader::new(
                "workloads",
                "workloads' drivers and health checks",
                READ_BUDGET,
            ),
            orchestrators: drain::Orchestrators::new(cfg),
        }
    }

    /// Read every workload reported now, waiting at most `limit` for the
    /// read (a container engine may be slow to answer); whether it came
    /// in time (if not, the reports stay as last read).
    pub fn look_now(&mut self, now: Timestamp, limit: Duration) -> bool {
        let job = self.read_job();
        match self.reader.read_fresh(limit, job) {
            Some(read) => {
                self.apply(read, now);
                true
            }
            None => false,
        }
    }

    /// The workloads reported: home here, or told to start here.
    fn responsible(&self) -> BTreeSet<WorkloadName> {
        let mut all = self.homed.clone();
        all.extend(lock(&self.shared).started.iter().cloned());
        all
    }

    /// Ask for a read of every workload reported and not busy.
    fn read_job(
        &self,
    ) -> impl FnOnce() -> Vec<(WorkloadName, Seen, Option<bool>)> + Send + 'static {
        let busy = lock(&self.shared).busy.clone();
        let todo: Vec<(WorkloadName, WorkloadSpec, Driver)> = self
            .responsible()
            .into_iter()
            .filter(|n| !busy.contains(n))
            .filter_map(|n| {
                let spec = self.workloads.get(&n)?.clone();
                let driver = Driver::new(&n, &spec, &self.ctx);
                Some((n, spec, driver))
            })
            .collect();
        move || {
            todo.into_iter()
                .map(|(n, spec, driver)| {
                    let (seen, healthy) = look(&driver, &spec);
                    (n, seen, healthy)
                })
                .collect()
        }
    }

    fn apply(&self, read: Vec<(WorkloadName, Seen, Option<bool>)>, now: Timestamp) {
        let mut sh = lock(&self.shared);
        for (name, seen, healthy) in read {
            if sh.busy.contains(&name) {
                continue;
            }
            sh.record(&name, seen, healthy, now);
        }
    }

    /// The heartbeat's list: every workload reported, as last seen (one
    /// not seen yet is `unknown`).
    pub fn reports(&self) -> Vec<WorkloadReport> {
        let responsible = self.responsible();
        let sh = lock(&self.shared);
        responsible
            .into_iter()
            .map(|name| match sh.seen.get(&name) {
                Some(e) => WorkloadReport {
                    name,
                    state: e.state,
                    healthy: e.healthy,
                    since: e.since,
                    detail: e.detail.clone(),
                },
                None => WorkloadReport {
                    name,
                    state: WorkloadState::Unknown,
                    healthy: None,
                    since: None,
                    detail: "not looked at yet".into(),
                },
            })
            .collect()
    }

    fn job(&mut self, cmd: &Command) -> Result<Job, Outcome> {
        let Some(param) = cmd.parameters.get("workload").and_then(Value::as_str) else {
            return Err(Outcome::new(
                ResultStatus::Rejected,
                format!("{} names no workload (parameter workload)", cmd.action_type),
            ));
        };
        let Some((name, spec)) = self.workloads.find(param) else {
            return Err(Outcome::new(
                ResultStatus::Rejected,
                format!("{param:?} is not a configured workload"),
            ));
        };
        let (name, spec) = (name.clone(), spec.clone());
        if cmd.action_type == START && !spec.nodes.is_empty() && !spec.nodes.contains(&self.node) {
            return Err(Outcome::new(
                ResultStatus::Rejected,
                format!(
                    "{name} may not run on {} (workloads.{name}.nodes)",
                    self.node
                ),
            ));
        }
        if !lock(&self.shared).busy.insert(name.clone()) {
            let mut busy = Outcome::new(
                ResultStatus::Rejected,
                format!("a start or stop of {name} is in progress"),
            );
            busy.details.insert("reason".into(), json!(BUSY));
            return Err(busy);
        }
        let fence = cmd.parameters.get("fence").and_then(Value::as_str) == Some("true");
        Ok(Job {
            driver: Driver::new(&name, &spec, &self.ctx),
            name,
            spec,
            fence,
            shared: self.shared.clone(),
            started_file: self.started_file.clone(),
        })
    }
}

/// One start or stop, run as a background job. Dropping it frees the
/// workload for the next one.
struct Job {
    name: WorkloadName,
    spec: WorkloadSpec,
    driver: Driver,
    fence: bool,
    shared: Arc<Mutex<Shared>>,
    started_file: StartedFile,
}

impl Drop for Job {
    fn drop(&mut self) {
        lock(&self.shared).busy.remove(&self.name);
    }
}

impl Job {
    fn record(&self, seen: Seen, healthy: Option<bool>) {
        lock(&self.shared).record(&self.name, seen, healthy, chrono::Utc::now());
    }

    /// Change the record of started workloads and save it.
    fn mark_started(&self, started: bool) -> Result<(), WorkloadError> {
        let names = {
            let mut sh = lock(&self.shared);
            let changed = if started {
                sh.started.insert(self.name.clone())
            } else {
                sh.started.remove(&self.name)
            };
            if !changed {
                return Ok(());
            }
            sh.started.clone()
        };
        self.started_file.save(&names)
    }

    fn outcome(
        &self,
        status: ResultStatus,
        message: String,
        seen: &Seen,
        healthy: Option<bool>,
    ) -> Outcome {
        let mut o = Outcome::new(status, message);
        let mut d = Map::new();
        d.insert("workload".into(), json!(self.name));
        d.insert("state".into(), json!(seen.state));
        d.insert("healthy".into(), json!(healthy));
        d.insert("detail".into(), json!(seen.detail));
        if self.fence {
            d.insert("fence".into(), json!(true));
        }
        o.details = d;
        o
    }

    fn start(self) -> Outcome {
        if let Err(e) = self.mark_started(true) {
            let seen = Seen::new(WorkloadState::Unknown, "not started");
            return self.outcome(
                ResultStatus::Failed,
                format!(
                    "{}: not started: the record of started workloads cannot be written: {e}",
                    self.name
                ),
                &seen,
                None,
            );
        }
        let (seen, healthy) = look(&self.driver, &self.spec);
        if seen.state == WorkloadState::Running && healthy == Some(true) {
            self.record(seen.clone(), healthy);
            return self.outcome(
                ResultStatus::Succeeded,
                format!("{} already runs and is healthy", self.name),
                &seen,
                healthy,
            );
        }
        self.record(Seen::new(WorkloadState::Starting, "starting"), None);
        let began = Instant::now();
        let did = match self.driver.start() {
            Ok(did) => did,
            Err(e) => {
                let _ = self.driver.stop();
                let (seen, healthy) = look(&self.driver, &self.spec);
                self.record(seen.clone(), healthy);
                return self.outcome(
                    ResultStatus::Failed,
                    format!("{}: start failed: {e}", self.name),
                    &seen,
                    healthy,
                );
            }
        };
        let within = Duration::from_secs_f64(self.spec.start_timeout_seconds);
        let mut last;
        loop {
            let (seen, healthy) = look(&self.driver, &self.spec);
            if seen.state == WorkloadState::Running && healthy == Some(true) {
                self.record(seen.clone(), healthy);
                return self.outcome(
                    ResultStatus::Succeeded,
                    format!(
                        "{} started and healthy after {:.1} s ({did})",
                        self.name,
                        began.elapsed().as_secs_f64()
                    ),
                    &seen,
                    healthy,
                );
            }
            let ended = matches!(seen.state, WorkloadState::Stopped | WorkloadState::Failed);
            last = seen.detail;
            if ended || began.elapsed() >= within {
                break;
            }
            std::thread::sleep(START_POLL);
        }
        let why = if began.elapsed() >= within {
            format!(
                "not healthy within start_timeout_seconds ({} s): {last}",
                within.as_secs_f64()
            )
        } else {
            format!("ended before it became healthy: {last}")
        };
        let undone = match self.driver.stop() {
            Ok(how) => format!("stopped again ({how})"),
            Err(e) => format!("and could not be stopped again: {e}"),
        };
        let (seen, healthy) = look(&self.driver, &self.spec);
        self.record(seen.clone(), healthy);
        tracing::warn!(workload = %self.name, reason = %why, "workload start failed");
        self.outcome(
            ResultStatus::Failed,
            format!("{}: {why}; {undone}", self.name),
            &seen,
            healthy,
        )
    }

    fn stop(self) -> Outcome {
        self.record(Seen::new(WorkloadState::Stopping, "stopping"), None);
        let did = self.driver.stop();
        let (seen, healthy) = look(&self.driver, &self.spec);
        self.record(seen.clone(), healthy);
        match did {
            Ok(how) if matches!(seen.state, WorkloadState::Stopped | WorkloadState::Failed) => {
                let message = match self.mark_started(false) {
                    Ok(()) => format!("{} stopped ({how})", self.name),
                    Err(e) => format!(
                        "{} stopped ({how}); the record of started workloads was not updated: {e}",
                        self.name
                    ),
                };
                self.outcome(ResultStatus::Succeeded, message, &seen, healthy)
            }
            Ok(how) => self.outcome(
                ResultStatus::Failed,
                format!(
                    "{}: {how}, but it is {}: {}",
                    self.name, seen.state, seen.detail
                ),
                &seen,
                healthy,
            ),
            Err(e) => self.outcome(
                ResultStatus::Failed,
                format!("{}: stop failed: {e}", self.name),
                &seen,
                healthy,
            ),
        }
    }
}

impl Antibody for Workloads {
    fn name(&self) -> &'static str {
        AGENT_TYPE
    }

    fn handles(&self, action: &str) -> bool {
        handles(action)
    }

    /// Judges what arrived and asks for the next read, off the loop (the
    /// first look waits up to [`FIRST_LOOK`] for it).
    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        let mut alerts = Antibody::judge(self, now);
        let job = self.read_job();
        if self.reader.look(job) {
            alerts.extend(Antibody::judge(self, now));
        }
        alerts
    }

    fn arrivals(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.reader.arrivals())
    }

    fn judge(&mut self, now: Timestamp) -> Vec<Alert> {
        if let Some(read) = self.reader.take() {
            self.apply(read, now);
        }
        Vec::new()
    }

    /// After a job: read again now (at most a second).
    fn refresh(&mut self, now: Timestamp) -> Vec<Alert> {
        self.look_now(now, FIRST_LOOK);
        Vec::new()
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.workloads = self.reports();
        self.reader.report(hb);
    }

    fn inventory(&self) -> Option<Inventory> {
        let names: Vec<String> = self.responsible().iter().map(|n| n.to_string()).collect();
        Some(Inventory {
            sensors: if names.is_empty() {
                "none".into()
            } else {
                format!("workloads {}", names.join(", "))
            },
            actuators: format!(
                "{} configured workloads (process, container at {}, systemd); {} nodes with orchestrator commands",
                self.workloads.iter().count(),
                self.ctx.docker_host,
                self.orchestrators.configured()
            ),
        })
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        if let Some(which) = drain::command_of(&cmd.action_type) {
            return match self.orchestrators.job(which, cmd) {
                Ok(job) => Execution::Background(Box::new(move || job.run())),
                Err(o) => Execution::Done(o),
            };
        }
        // A read in progress shows the workloads from before this command.
        self.reader.invalidate();
        let job = match self.job(cmd) {
            Ok(j) => j,
            Err(o) => return Execution::Done(o),
        };
        match cmd.action_type.as_str() {
            START => Execution::Background(Box::new(move || job.start())),
            STOP => Execution::Background(Box::new(move || job.stop())),
            other => Execution::Done(Outcome::new(
                ResultStatus::Unsupported,
                format!("{other} is not a workload action of an agent"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_the_first_allowed_node() {
        let cfg = Config::from_yaml(
            "workloads:\n  a: {driver: systemd, unit: a.service, nodes: [nova, lyra]}\n  b: {driver: systemd, unit: b.service, nodes: [lyra]}\n  c: {driver: systemd, unit: c.service}\n",
        )
        .unwrap();
        let nova = NodeName::parse("nova").unwrap();
        let lyra = NodeName::parse("lyra").unwrap();
        let names = |s: BTreeSet<WorkloadName>| s.into_iter().map(String::from).collect::<Vec<_>>();
        assert_eq!(names(homed_here(&cfg, &nova)), ["a"]);
        assert_eq!(names(homed_here(&cfg, &lyra)), ["b"]);
        // The seed's nodes.<node>.services says first.
        let cfg = Config::from_yaml(
            "nodes: {athena: {services: [a]}}\nworkloads:\n  a: {driver: systemd, unit: a.service, nodes: [nova, athena]}\n",
        )
        .unwrap();
        let athena = NodeName::parse("athena").unwrap();
        assert_eq!(names(homed_here(&cfg, &athena)), ["a"]);
        assert!(homed_here(&cfg, &nova).is_empty());
    }

    #[test]
    fn a_long_detail_is_cut_at_a_character() {
        let s = Seen::new(WorkloadState::Unknown, "é".repeat(200));
        assert!(s.detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(s.detail.ends_with('…'));
        assert_eq!(Seen::new(WorkloadState::Running, "pid 7").detail, "pid 7");
    }

    #[test]
    fn since_moves_only_on_a_change_seen() {
        let mut sh = Shared::default();
        let n = WorkloadName::parse("w").unwrap();
        let t = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
        sh.record(
            &n,
            Seen::new(WorkloadState::Running, "pid 1"),
            Some(true),
            t(10),
        );
        assert_eq!(sh.seen[&n].since, None);
        sh.record(
            &n,
            Seen::new(WorkloadState::Running, "pid 1"),
            Some(false),
            t(20),
        );
        assert_eq!(sh.seen[&n].since, None);
        sh.record(
            &n,
            Seen::new(WorkloadState::Stopped, "not running"),
            None,
            t(30),
        );
        assert_eq!(sh.seen[&n].since, Some(t(30)));
        sh.record(
            &n,
            Seen::new(WorkloadState::Stopped, "not running"),
            None,
            t(40),
        );
        assert_eq!(sh.seen[&n].since, Some(t(30)));
    }
}
