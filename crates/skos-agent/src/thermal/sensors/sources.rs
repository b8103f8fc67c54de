//! Every sensor source read on its own thread, within its own time budget.
//!
//! A source is one hwmon device (`class/hwmon/hwmonN`), the thermal zones,
//! NVML, `nvidia-smi` or `sensors -j`; the list of hwmon devices is read
//! the same way. Each source has one worker thread, started on its first
//! read and kept. A read is asked of an idle worker only, so a read that
//! hangs (a driver waiting on its bus, a tool that never exits) holds that
//! one thread and nothing else, and no thread piles up behind it.
//!
//! What each read found is kept: the source's last good readings with the
//! time they came, the last answer (for `skos sensors`), and whether the
//! source is slow (a read ran past its budget) or failing (it answers with
//! problems and no reading), since when and how many times in a row.
//! Nothing waits for a source but [`Pool::settle`], which waits at most the
//! budget it is given. Threads are never joined: dropping the pool (an
//! agent stopping) returns at once, and a hung thread ends with the
//! process.

use super::{
    lmsensors, nvidia, sysfs, FileReader, Problem, ProblemKind, Reading, Scan, ToolBudget,
};
use nvml_wrapper::Nvml;
use serde::Serialize;
use skos_core::config::GpuConfig;
use skos_core::escape::ShowPath;
use skos_core::timefmt::Timestamp;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long past its timeout a tool's worker may take to kill and reap it
/// before the source counts as slow.
const TOOL_GRACE: Duration = Duration::from_secs(1);

/// Stack of a worker thread, bytes: walking sysfs, running a tool and
/// parsing its output need little.
const WORKER_STACK: usize = 512 * 1024;

/// One source of readings, read on its own thread.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceId {
    /// The list of `class/hwmon` entries: gives no reading, finds the
    /// hwmon devices.
    HwmonList,
    /// One hwmon device, `class/hwmon/<entry>`.
    Hwmon(String),
    /// Every `class/thermal/thermal_zone*`.
    ThermalZones,
    /// NVIDIA GPUs through NVML.
    Nvml,
    /// NVIDIA GPUs through `nvidia-smi`.
    NvidiaSmi,
    /// `sensors -j`.
    LmSensors,
}

impl SourceId {
    /// Its short name: `hwmon3`, `hwmon_list`, `thermal_zones`, `nvml`,
    /// `nvidia-smi`, `lm-sensors`.
    pub fn name(&self) -> &str {
        match self {
            SourceId::HwmonList => "hwmon_list",
            SourceId::Hwmon(entry) => entry,
            SourceId::ThermalZones => "thermal_zones",
            SourceId::Nvml => "nvml",
            SourceId::NvidiaSmi => "nvidia-smi",
            SourceId::LmSensors => "lm-sensors",
        }
    }

    /// Whether it reads sysfs (the sources `sensors -j` stands in for).
    fn is_sysfs(&self) -> bool {
        matches!(
            self,
            SourceId::HwmonList | SourceId::Hwmon(_) | SourceId::ThermalZones
        )
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a source is slow or failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TroubleKind {
    /// Its last read ran (or is running) past its time budget.
    Slow,
    /// It answers with problems and no reading.
    Failing,
}

/// A source that is slow or keeps failing, as heartbeats
/// (`metadata.sensor_errors`) and `skos sensors` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceTrouble {
    /// The source's short name ([`SourceId::name`]).
    pub source: String,
    /// Where: the hwmon device's class path, the `class/thermal` dir,
    /// `nvml`, `nvidia-smi` or `sensors`.
    pub at: String,
    /// The hwmon chip's `name`, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip: Option<String>,
    /// Slow or failing.
    pub problem: TroubleKind,
    /// What went wrong the last time.
    pub message: String,
    /// When the first read of this run of slow or failed reads began.
    #[serde(serialize_with = "skos_core::timefmt::serialize")]
    pub since: Timestamp,
    /// Slow or failed reads in a row since `since`.
    pub count: u32,
    /// Seconds the read in progress has been running; absent when the
    /// source is idle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reading_for_seconds: Option<f64>,
    /// Seconds since the source last gave its readings; `None` when it
    /// never did.
    pub last_good_seconds: Option<f64>,
}

/// What the sources gave, as of now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    /// The last good readings of every source that gave them at most
    /// `max_age` ago, sorted by path.
    pub readings: Vec<Reading>,
    /// How long ago each of `readings` was read, seconds (same order).
    pub ages: Vec<f64>,
    /// Every source that is slow or keeps failing, by source name.
    pub troubles: Vec<SourceTrouble>,
}

/// What the pool needs to read every source; fixed when it starts.
pub(super) struct Spec {
    pub root: PathBuf,
    pub gpu: GpuConfig,
    pub read_file: FileReader,
    /// Budget of a sysfs source or NVML.
    pub read_timeout: Duration,
    /// How long a tool may run, and the flag that stops it.
    pub tool: ToolBudget,
    /// Told (from a worker thread) each time a source answers.
    pub arrived: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Spec {
    /// The time budget of one read of `id`.
    fn budget(&self, id: &SourceId) -> Duration {
        match id {
            SourceId::NvidiaSmi | SourceId::LmSensors => self.tool.timeout + TOOL_GRACE,
            _ => self.read_timeout,
        }
    }

    /// Where `id` reads, as problems name it.
    fn at(&self, id: &SourceId) -> String {
        match id {
            SourceId::HwmonList => self.root.join("class/hwmon").escaped().to_string(),
            SourceId::Hwmon(entry) => self
                .root
                .join("class/hwmon")
                .join(entry)
                .escaped()
                .to_string(),
            SourceId::ThermalZones => self.root.join("class/thermal").escaped().to_string(),
            SourceId::Nvml => "nvml".into(),
            SourceId::NvidiaSmi => "nvidia-smi".into(),
            SourceId::LmSensors => "sensors".into(),
        }
    }

    /// The read of `id`, run on its worker thread.
    fn job(&self, id: &SourceId) -> Job {
        let root = self.root.clone();
        let read_file = self.read_file.clone();
        match id {
            SourceId::HwmonList => Box::new(move |_| Found::Entries(sysfs::hwmon_entries(&root))),
            SourceId::Hwmon(entry) => {
                let entry = entry.clone();
                Box::new(move |named| {
                    Found::Scan(sysfs::read_hwmon(&root, &entry, read_file.as_ref(), named))
                })
            }
            SourceId::ThermalZones => {
                Box::new(move |_| Found::Scan(sysfs::read_thermal_zones(&root, read_file.as_ref())))
            }
            SourceId::Nvml => {
                // Loaded on the first read, on this thread: a driver that
                // hangs in init holds this source only.
                let mut nvml: Option<Option<Nvml>> = None;
                Box::new(move |_| {
                    let handle = nvml.get_or_insert_with(|| match Nvml::init() {
                        Ok(nvml) => {
                            tracing::debug!("NVML initialised");
                            Some(nvml)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "NVML not available; no NVIDIA readings through it");
                            None
                        }
                    });
                    Found::Scan(handle.as_ref().map(nvidia::read_nvml).unwrap_or_default())
                })
            }
            SourceId::NvidiaSmi => {
                let tool = self.tool.clone();
                Box::new(move |_| Found::Scan(nvidia::read_nvidia_smi(&tool)))
            }
            SourceId::LmSensors => {
                let tool = self.tool.clone();
                Box::new(move |_| Found::Scan(lmsensors::read_lm_sensors(&tool)))
            }
        }
    }
}

/// What one read found.
enum Found {
    /// Readings and problems.
    Scan(Scan),
    /// The `class/hwmon` entries.
    Entries(Vec<String>),
}

/// One read of a source; told the chip name when it learns it.
type Job = Box<dyn FnMut(&dyn Fn(&str)) -> Found + Send>;

/// A read in progress.
#[derive(Debug)]
struct Busy {
    started: Instant,
    /// Whether running past the budget was counted already.
    overdue_counted: bool,
}

/// One source's worker and what it found.
struct Source {
    budget: Duration,
    chip: Option<String>,
    /// The worker's request channel; `None` until the first read.
    worker: Option<SyncSender<()>>,
    busy: Option<Busy>,
    /// The last answer, and the pass that was the latest when it came.
    last: Option<(u64, Scan)>,
    /// The last readings of a read that did not fail, and when they came.
    good: Option<(Vec<Reading>, Instant)>,
    trouble: Option<Trouble>,
}

/// A run of slow or failed reads.
#[derive(Debug, Clone)]
struct Trouble {
    kind: TroubleKind,
    message: String,
    since: Timestamp,
    count: u32,
}

impl Source {
    fn new(budget: Duration) -> Self {
        Self {
            budget,
            chip: None,
            worker: None,
            busy: None,
            last: None,
            good: None,
            trouble: None,
        }
    }

    /// Answered, or running past its budget: nothing more to wait for.
    fn settled(&self, now: Instant) -> bool {
        self.busy
            .as_ref()
            .is_none_or(|b| now.saturating_duration_since(b.started) > self.budget)
    }

    /// One more slow or failed read.
    fn note(&mut self, id: &SourceId, kind: TroubleKind, message: String, since: Timestamp) {
        match &mut self.trouble {
            Some(t) => {
                t.count = t.count.saturating_add(1);
                t.kind = kind;
                t.message = message;
            }
            None => {
                tracing::warn!(source = %id, chip = ?self.chip, problem = ?kind, message = %message, "sensor source in trouble; other sources go on");
                self.trouble = Some(Trouble {
                    kind,
                    message,
                    since,
                    count: 1,
                });
            }
        }
    }
}

/// The sources and what they found.
struct State {
    sources: BTreeMap<SourceId, Source>,
    /// The number of the last pass asked for.
    pass: u64,
    /// Fallback sources (`nvidia-smi` behind NVML, `sensors -j` behind
    /// sysfs) whose need in this pass is still open.
    undecided: Vec<SourceId>,
    /// The pool was dropped: workers stop after their read.
    stopped: bool,
}

/// What the pool and its workers share.
pub(super) struct Shared {
    spec: Spec,
    state: Mutex<State>,
    /// Signalled when a source answers.
    changed: Condvar,
}

/// The worker threads of every source of one [`super::Sensors`].
pub(super) struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    pub(super) fn new(spec: Spec) -> Self {
        Self {
            shared: Arc::new(Shared {
                spec,
                state: Mutex::new(State {
                    sources: BTreeMap::new(),
                    pass: 0,
                    undecided: Vec::new(),
                    stopped: false,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    /// Asks every idle source for a read and returns at once with the
    /// pass's number. A source still busy with an earlier read is not
    /// asked again. `nvidia-smi` is asked only when NVML is off or gave no
    /// reading, `sensors -j` only when sysfs gave none: decided as soon as
    /// those have answered or run past their budget.
    pub(super) fn request(&self) -> u64 {
        let shared = &self.shared;
        let gpu = &shared.spec.gpu;
        let mut st = shared.lock();
        st.pass += 1;
        let pass = st.pass;
        let mut ask = vec![SourceId::HwmonList, SourceId::ThermalZones];
        ask.extend(
            st.sources
                .keys()
                .filter(|id| matches!(id, SourceId::Hwmon(_)))
                .cloned(),
        );
        st.undecided.clear();
        if gpu.nvml {
            ask.push(SourceId::Nvml);
        }
        if gpu.nvidia_smi {
            if gpu.nvml {
                st.undecided.push(SourceId::NvidiaSmi);
            } else {
                ask.push(SourceId::NvidiaSmi);
            }
        }
        if gpu.lm_sensors {
            st.undecided.push(SourceId::LmSensors);
        }
        for id in ask {
            shared.kick(&mut st, id);
        }
        shared.tick(&mut st);
        pass
    }

    /// Waits until every source answered or ran past its budget, and the
    /// fallbacks are decided, or `budget` is over.
    pub(super) fn settle(&self, budget: Duration) {
        let shared = &self.shared;
        let end = Instant::now() + budget;
        let mut st = shared.lock();
        loop {
            shared.tick(&mut st);
            let now = Instant::now();
            let next = st
                .sources
                .values()
                .filter_map(|s| s.busy.as_ref().map(|b| b.started + s.budget))
                .filter(|at| *at >= now)
                .min();
            if (next.is_none() && st.undecided.is_empty()) || now >= end {
                return;
            }
            let until = next.map_or(end, |n| n.min(end));
            // A little past the budget, so the source counts as overdue.
            let wait = until.saturating_duration_since(now) + Duration::from_millis(2);
            st = match shared.changed.wait_timeout(st, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// What pass `pass` found: the answer of every source that answered
    /// since it was asked for, and a `slow` problem for every source still
    /// reading.
    pub(super) fn scan_of(&self, pass: u64) -> Scan {
        let shared = &self.shared;
        let mut st = shared.lock();
        shared.tick(&mut st);
        let now = Instant::now();
        let mut scan = Scan::default();
        for (id, src) in &st.sources {
            if let Some((p, last)) = &src.last {
                if *p >= pass {
                    scan.extend(last.clone());
                    continue;
                }
            }
            if let Some(b) = &src.busy {
                let p = Problem::new(
                    shared.spec.at(id),
                    ProblemKind::Slow {
                        seconds: now.saturating_duration_since(b.started).as_secs_f64(),
                        budget_seconds: src.budget.as_secs_f64(),
                        chip: src.chip.clone(),
                    },
                );
                tracing::debug!(source = %id, problem = %p, "sensor source still reading");
                scan.problems.push(p);
            }
        }
        scan.readings.sort_by(|a, b| a.path.cmp(&b.path));
        scan
    }

    /// The last good readings of every source read at most `max_age` ago,
    /// and the sources in trouble. Never waits for a source.
    pub(super) fn current(&self, max_age: Duration) -> Current {
        let shared = &self.shared;
        let mut st = shared.lock();
        shared.tick(&mut st);
        let now = Instant::now();
        let mut aged: Vec<(Reading, f64)> = Vec::new();
        let mut troubles = Vec::new();
        for (id, src) in &st.sources {
            let good_age = src
                .good
                .as_ref()
                .map(|(readings, at)| (readings, now.saturating_duration_since(*at)));
            if let Some((readings, age)) = good_age {
                if age <= max_age {
                    aged.extend(readings.iter().map(|r| (r.clone(), age.as_secs_f64())));
                }
            }
            if let Some(t) = &src.trouble {
                troubles.push(SourceTrouble {
                    source: id.name().to_string(),
                    at: shared.spec.at(id),
                    chip: src.chip.clone(),
                    problem: t.kind,
                    message: t.message.clone(),
                    since: t.since,
                    count: t.count,
                    reading_for_seconds: src
                        .busy
                        .as_ref()
                        .map(|b| now.saturating_duration_since(b.started).as_secs_f64()),
                    last_good_seconds: good_age.map(|(_, age)| age.as_secs_f64()),
                });
            }
        }
        aged.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        let (readings, ages) = aged.into_iter().unzip();
        Current {
            readings,
            ages,
            troubles,
        }
    }
}

impl Drop for Pool {
    /// Stops every worker after its read and any tool at once; joins
    /// nothing.
    fn drop(&mut self) {
        self.shared.spec.tool.stop.store(true, Ordering::SeqCst);
        let mut st = self.shared.lock();
        st.stopped = true;
        // Dropping the request channels ends the idle workers now and the
        // busy ones after their read.
        st.sources.clear();
        drop(st);
        self.shared.changed.notify_all();
    }
}

impl Shared {
    /// The state, even if a thread panicked while holding it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks `id` for a read when it is idle, starting its worker on the
    /// first read.
    fn kick(self: &Arc<Self>, st: &mut State, id: SourceId) {
        if st.stopped {
            return;
        }
        let budget = self.spec.budget(&id);
        let src = st
            .sources
            .entry(id.clone())
            .or_insert_with(|| Source::new(budget));
        if src.busy.is_some() {
            return;
        }
        if src.worker.is_none() {
            match spawn_worker(self.clone(), id.clone(), self.spec.job(&id)) {
                Ok(tx) => src.worker = Some(tx),
                Err(e) => {
                    let message = format!("cannot start its reader thread: {e}");
                    src.note(&id, TroubleKind::Failing, message, chrono::Utc::now());
                    return;
                }
            }
        }
        let Some(tx) = &src.worker else {
            return;
        };
        match tx.try_send(()) {
            Ok(()) => {
                src.busy = Some(Busy {
                    started: Instant::now(),
                    overdue_counted: false,
                });
            }
            // Idle means nothing queued: a full channel cannot happen, and
            // a worker that is gone is started again on the next pass.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                src.worker = None;
            }
        }
    }

    /// Counts reads that ran past their budget, and decides the fallbacks
    /// that can be decided now.
    fn tick(self: &Arc<Self>, st: &mut State) {
        let now = Instant::now();
        for (id, src) in st.sources.iter_mut() {
            let budget = src.budget;
            let Some(b) = src.busy.as_mut() else {
                continue;
            };
            if b.overdue_counted || now.saturating_duration_since(b.started) <= budget {
                continue;
            }
            b.overdue_counted = true;
            let since = chrono::Utc::now()
                - chrono::Duration::from_std(now.saturating_duration_since(b.started))
                    .unwrap_or_default();
            let message = format!("no answer within its budget of {} s", budget.as_secs_f64());
            src.note(id, TroubleKind::Slow, message, since);
        }
        for id in std::mem::take(&mut st.undecided) {
            match needed(st, &id, now) {
                Some(true) => self.kick(st, id),
                Some(false) => {}
                None => st.undecided.push(id),
            }
        }
    }

    /// Sets the chip name of `id`.
    fn named(&self, id: &SourceId, chip: &str) {
        let mut st = self.lock();
        if let Some(src) = st.sources.get_mut(id) {
            if src.chip.as_deref() != Some(chip) {
                src.chip = Some(chip.to_string());
            }
        }
    }

    /// Records what a read of `id` found. False when the worker should
    /// stop (the pool was dropped, or the source is gone).
    fn finish(self: &Arc<Self>, id: &SourceId, found: Found) -> bool {
        let now = Instant::now();
        let mut st = self.lock();
        if st.stopped {
            return false;
        }
        let scan = match found {
            Found::Scan(scan) => scan,
            Found::Entries(entries) => {
                self.found_hwmons(&mut st, &entries);
                Scan::default()
            }
        };
        let pass = st.pass;
        let Some(src) = st.sources.get_mut(id) else {
            return false;
        };
        let (took, counted) = match src.busy.take() {
            Some(b) => (now.saturating_duration_since(b.started), b.overdue_counted),
            None => (Duration::ZERO, false),
        };
        let late = took > src.budget;
        let failed = scan.readings.is_empty() && !scan.problems.is_empty();
        if failed {
            let message = summary(&scan.problems);
            match &mut src.trouble {
                // Running late was counted already: this is the same read.
                Some(t) if late && counted => {
                    t.kind = TroubleKind::Failing;
                    t.message = message;
                }
                _ => src.note(id, TroubleKind::Failing, message, chrono::Utc::now()),
            }
        } else {
            src.good = Some((scan.readings.clone(), now));
            if !late {
                if let Some(t) = src.trouble.take() {
                    tracing::info!(source = %id, chip = ?src.chip, after = t.count, "sensor source answers on time again");
                }
            } else if !counted {
                let message = format!(
                    "answered after {:.1} s, past its budget of {} s",
                    took.as_secs_f64(),
                    src.budget.as_secs_f64()
                );
                src.note(id, TroubleKind::Slow, message, chrono::Utc::now());
            }
        }
        src.last = Some((pass, scan));
        self.tick(&mut st);
        drop(st);
        self.changed.notify_all();
        if let Some(arrived) = &self.spec.arrived {
            arrived();
        }
        true
    }

    /// The hwmon devices listed now: new ones are asked for a read in the
    /// current pass, gone ones are forgotten.
    fn found_hwmons(self: &Arc<Self>, st: &mut State, entries: &[String]) {
        st.sources.retain(|id, _| match id {
            SourceId::Hwmon(e) => entries.contains(e),
            _ => true,
        });
        for e in entries {
            let id = SourceId::Hwmon(e.clone());
            if !st.sources.contains_key(&id) {
                self.kick(st, id);
            }
        }
    }
}

/// Whether the fallback `id` is needed in this pass: `None` while what
/// decides it has not answered yet (and is within its budget).
fn needed(st: &State, id: &SourceId, now: Instant) -> Option<bool> {
    let gave = |src: &Source| {
        src.last
            .as_ref()
            .is_some_and(|(_, scan)| !scan.readings.is_empty())
    };
    match id {
        SourceId::NvidiaSmi => {
            let Some(nvml) = st.sources.get(&SourceId::Nvml) else {
                return Some(true);
            };
            match &nvml.busy {
                Some(_) if !nvml.settled(now) => None,
                // NVML hangs: nvidia-smi may still answer.
                Some(_) => Some(true),
                None => Some(!gave(nvml)),
            }
        }
        SourceId::LmSensors => {
            let sysfs: Vec<&Source> = st
                .sources
                .iter()
                .filter(|(id, _)| id.is_sysfs())
                .map(|(_, s)| s)
                .collect();
            if sysfs.iter().any(|s| gave(s)) {
                Some(false)
            } else if sysfs.iter().any(|s| !s.settled(now)) {
                None
            } else {
                Some(true)
            }
        }
        _ => Some(false),
    }
}

/// The first problem of a failed read, and how many more there were.
fn summary(problems: &[Problem]) -> String {
    match problems {
        [] => "no reading".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// Starts the worker of `id`: it reads each time it is asked, until its
/// channel is dropped or the pool stops.
fn spawn_worker(
    shared: Arc<Shared>,
    id: SourceId,
    mut job: Job,
) -> std::io::Result<SyncSender<()>> {
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name(format!("sensor-{}", id.name()))
        .stack_size(WORKER_STACK)
        .spawn(move || {
            while rx.recv().is_ok() {
                let named = |chip: &str| shared.named(&id, chip);
                // A reader that panics answers with a problem, so its
                // source is asked again.
                let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&named)))
                    .unwrap_or_else(|_| {
                        let mut scan = Scan::default();
                        scan.problem(
                            shared.spec.at(&id),
                            ProblemKind::Unreadable {
                                error: "its reader panicked".into(),
                            },
                        );
                        Found::Scan(scan)
                    });
                if !shared.finish(&id, found) {
                    break;
                }
            }
        })?;
    Ok(tx)
}
