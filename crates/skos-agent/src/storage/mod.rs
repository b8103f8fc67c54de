//! The storage watcher antibody.
//!
//! Senses statvfs of every watched mount (bytes and inodes), raises
//! alerts on level changes with hysteresis, and a `predicted` warning when
//! the fill rate will take a mount to critical within the horizon. Carries
//! out `cleanup_temp`, `cleanup_logs`, `archive_old`, `emergency_cleanup`
//! and `alert_human`, strictly inside the configured directories.
//!
//! The watched mounts are `storage.mounts` when it is set, else the mounts
//! holding the configured temp, log and archive dirs. Only what can fill
//! and can be cleaned is judged ([`mounts::judge`]): read-only mounts,
//! image filesystems and mounts without blocks never, pseudo filesystems
//! only when listed in `storage.mounts`. A mount not judged raises no
//! alert, is left out of `storage_percent` and of what the actions check
//! usage on, and is listed with its reason under
//! `metadata.storage_not_judged`.

pub mod actions;
pub mod mounts;
pub mod notify;
pub mod usage;

use skos_core::escape::ShowPath;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Map, Value};
use skos_core::config::{Config, StorageConfig};
use skos_core::level::{LevelRules, LevelTracker, Report};
use skos_core::protocol::{Alert, AlertKind, Command, Heartbeat, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use crate::antibody::{Antibody, Execution, Precondition};
use crate::offloop::{Reader, FIRST_LOOK};
use crate::Outcome;
use mounts::{MountEntry, NotJudged};
use notify::Notification;
use usage::{FillRate, MountUsage, StatSource};

pub const AGENT_TYPE: &str = skos_core::catalogue::Executor::StorageWatcher.as_str();

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    skos_core::catalogue::Executor::StorageWatcher.handles(action)
}

#[derive(Default)]
struct MountState {
    tracker: LevelTracker,
    fill: FillRate,
    predicted: bool,
    unreadable: bool,
    /// Why the mount is not judged, while it is not.
    not_judged: Option<NotJudged>,
    /// Its usage as last judged; `None` while it is not judged or cannot
    /// be read.
    usage: Option<MountUsage>,
}

/// A watched mount that is not judged for fullness, and why (in
/// `metadata.storage_not_judged`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unjudged {
    /// The mount as watched (configured, or found holding a configured dir).
    #[serde(serialize_with = "skos_core::escape::path")]
    pub mount: PathBuf,
    /// Why; serialised flat (`reason`, and `fs_type` where known).
    #[serde(flatten)]
    pub why: NotJudged,
}

/// A mount to watch, and whether it was listed in `storage.mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The mount point (or the configured path; statvfs of any path gives
    /// its filesystem's numbers).
    pub mount: PathBuf,
    /// Listed in `storage.mounts` (pseudo filesystems are then judged).
    pub explicit: bool,
}

/// The mounts to watch: `storage.mounts` when set (explicit), else the
/// mount points holding each configured temp, log and archive dir (found in
/// `table`, the mountinfo entries, when it is known, else by walking up to
/// the dir's device boundary), each once.
pub fn watched_mounts(st: &StorageConfig, table: Option<&[MountEntry]>) -> Vec<Watched> {
    if !st.mounts.is_empty() {
        return st
            .mounts
            .iter()
            .map(|m| Watched {
                mount: m.clone(),
                explicit: true,
            })
            .collect();
    }
    let mut seen = BTreeSet::new();
    let dirs = st
        .temp
        .dirs
        .iter()
        .chain(&st.logs.dirs)
        .chain(&st.archive.dirs);
    let mut out = Vec::new();
    for dir in dirs {
        let resolved = mounts::resolve_existing(dir);
        let mount = match table.and_then(|t| mounts::mount_holding(t, &resolved)) {
            Some(e) => e.mount_point.clone(),
            None => match mounts::mount_point_by_device(&resolved) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(dir = %dir.escaped(), error = %e, "cannot find the mount of a storage dir");
                    continue;
                }
            },
        };
        if seen.insert(mount.clone()) {
            out.push(Watched {
                mount,
                explicit: false,
            });
        }
    }
    out
}

pub struct StorageWatcher {
    cfg: Config,
    node: NodeName,
    agent_id: String,
    stat: StatSource,
    mounts: BTreeMap<PathBuf, MountState>,
    last: Vec<MountUsage>,
    not_judged: Vec<Unjudged>,
    /// Whether the missing mountinfo was said (once).
    said_no_mountinfo: bool,
    /// What the recent actions did, and which run now: for the message to a
    /// person.
    history: Arc<History>,
    /// The watched mounts, as last listed.
    watched: Vec<Watched>,
    /// The mount table, as last read (`None`: unreadable).
    table: Option<Vec<MountEntry>>,
    /// The agent loop's listings of the watched mounts, off the loop.
    list: Reader<Listing>,
    /// Each watched mount's statvfs, off the loop, one reader per mount:
    /// a hung mount holds its own reads only.
    stats: BTreeMap<PathBuf, Reader<crate::Result<usage::RawStat>>>,
    /// Raised when any of its readers has read.
    arrivals: std::sync::Arc<tokio::sync::Notify>,
    /// The first look waited for its reads.
    looked: bool,
}

/// A listing (the mount table, and the mounts holding the configured dirs)
/// or one mount's statvfs longer than this is slow: each takes
/// microseconds on a healthy machine. A mount whose statvfs runs past it is
/// left out of the heartbeat's usage (its last numbers are not current).
const READ_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

impl StorageWatcher {
    /// A watcher reading the real statvfs and `<proc_root>/self/mountinfo`.
    pub fn new(cfg: &Config) -> Self {
        Self::with_stat_source(cfg, usage::system_stat_source())
    }

    /// A watcher whose statvfs numbers come from `stat` (a replay of what
    /// a real machine reported, in tests); mountinfo is still read from
    /// `<proc_root>/self/mountinfo`.
    pub fn with_stat_source(cfg: &Config, stat: StatSource) -> Self {
        let arrivals = std::sync::Arc::new(tokio::sync::Notify::new());
        Self {
            node: cfg.node.name.clone(),
            agent_id: format!("storage-watcher-{}", cfg.node.name),
            stat,
            mounts: BTreeMap::new(),
            cfg: cfg.clone(),
            last: Vec::new(),
            not_judged: Vec::new(),
            said_no_mountinfo: false,
            history: Arc::new(History::default()),
            watched: Vec::new(),
            table: None,
            list: Reader::new(
                "storage",
                "mountinfo and the mounts of the storage dirs",
                READ_BUDGET,
            )
            .notify_on(arrivals.clone()),
            stats: BTreeMap::new(),
            arrivals,
            looked: false,
        }
    }

    fn rules(&self) -> LevelRules {
        let s = &self.cfg.storage;
        LevelRules {
            thresholds: s.thresholds,
            hysteresis: s.hysteresis,
            hold_up: Default::default(),
            hold_down: 0.0,
            cooldown: s.cooldown,
        }
    }

    /// The fullest judged mount, in percent; `None` when nothing is judged
    /// or readable.
    pub fn storage_percent(&self) -> Option<f64> {
        self.last.iter().map(|u| u.percent).reduce(f64::max)
    }

    /// Usage of the judged mounts, as last sensed.
    pub fn usage(&self) -> &[MountUsage] {
        &self.last
    }

    /// The watched mounts not judged for fullness, with why, as last sensed.
    pub fn not_judged(&self) -> &[Unjudged] {
        &self.not_judged
    }

    /// Read every watched mount here and now and return the alerts to
    /// raise (the agent loop reads off the loop instead: [`listing`] and
    /// a statvfs per mount, each on a reader of its own, then
    /// [`StorageWatcher::apply`]).
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        self.set_listing(listing(&self.cfg.storage, &self.cfg.proc_root));
        let read: Vec<(Watched, crate::Result<usage::RawStat>)> = self
            .watched
            .iter()
            .map(|w| (w.clone(), (self.stat)(&w.mount)))
            .collect();
        self.apply(read, now)
    }

    /// Take a listing of the watched mounts: what is no longer watched is
    /// forgotten.
    fn set_listing(&mut self, l: Listing) {
        self.table = match l.table {
            Ok(t) => {
                self.said_no_mountinfo = false;
                Some(t)
            }
            Err(e) => {
                if !self.said_no_mountinfo {
                    tracing::warn!(error = %e, "cannot read mountinfo: filesystem types unknown, mounts judged on statvfs alone");
                    self.said_no_mountinfo = true;
                }
                None
            }
        };
        self.watched = l.watched;
        let watched = &self.watched;
        self.mounts
            .retain(|m, _| watched.iter().any(|w| &w.mount == m));
        self.stats
            .retain(|m, _| watched.iter().any(|w| &w.mount == m));
    }

    /// Judge the statvfs numbers that arrived for some of the watched
    /// mounts: each one's level, fill rate and prediction, and the alerts
    /// to raise. The others keep their state until their numbers come.
    pub fn apply(
        &mut self,
        read: Vec<(Watched, crate::Result<usage::RawStat>)>,
        now: Timestamp,
    ) -> Vec<Alert> {
        let rules = self.rules();
        let st = self.cfg.storage.clone();
        let table = self.table.clone();
        let mut alerts = Vec::new();
        for (w, stat) in read {
            let mount = &w.mount;
            let state = self.mounts.entry(mount.clone()).or_default();
            let raw = match stat {
                Ok(r) => {
                    state.unreadable = false;
                    r
                }
                Err(e) => {
                    if !state.unreadable {
                        tracing::warn!(mount = %mount.escaped(), error = %e, "cannot read mount usage");
                        state.unreadable = true;
                    }
                    state.usage = None;
                    continue;
                }
            };
            let u = usage::usage_from(mount, raw);
            let entry = table
                .as_deref()
                .and_then(|t| mounts::mount_holding(t, &mounts::resolve_existing(mount)));
            if let Err(why) = mounts::judge(&raw, entry, w.explicit) {
                if state.not_judged.as_ref() != Some(&why) {
                    tracing::info!(mount = %mount.escaped(), reason = %why, percent = u.percent, "mount not judged for fullness");
                }
                let was = state.tracker.current();
                let read_only = matches!(why, NotJudged::ReadOnly { .. });
                if read_only && was != Severity::Normal {
                    // Full and now read-only too (errors=remount-ro): its
                    // alert stays open, a clear would call it healthy. Its
                    // level is kept, so once it is writable and judged
                    // again a fall below the level clears it.
                    if state.not_judged.is_none() {
                        tracing::warn!(mount = %mount.escaped(), severity = %was.as_str(), "mount turned read-only while alerting; its alert stays open");
                    }
                    state.not_judged = Some(why);
                    state.usage = None;
                    continue;
                } else if was != Severity::Normal {
                    // It was judged and alerting and can no longer fill (an
                    // image, no blocks): clear its problem, or the
                    // coordinator would wait on it forever.
                    alerts.push(alert(
                        &self.node,
                        &self.agent_id,
                        Severity::Normal,
                        was,
                        format!(
                            "{} is no longer judged for fullness: {why}",
                            mount.escaped()
                        ),
                        &u,
                        None,
                        None,
                        rules.threshold(was),
                        None,
                        now,
                    ));
                }
                *state = MountState {
                    not_judged: Some(why),
                    ..MountState::default()
                };
                continue;
            }
            if let Some(why) = state.not_judged.take() {
                tracing::info!(mount = %mount.escaped(), was = %why, "mount judged for fullness again");
            }
            let capacity = u.used_bytes.saturating_add(u.available_bytes);
            if state
                .fill
                .push(st.fill_rate_window, now, u.used_bytes, capacity)
            {
                tracing::debug!(mount = %mount.escaped(), used_bytes = u.used_bytes, "usage dropped: fill rate restarted");
                // The fill a prediction was made on has ended: one raised
                // at `normal` is withdrawn below, any other forgotten.
                if state.tracker.current() != Severity::Normal {
                    state.predicted = false;
                }
            }
            let rate = state.fill.rate();
            let to_critical = usage::seconds_until(&u, st.thresholds.critical, rate);
            if let Some(report) = state.tracker.observe(&rules, u.percent, now) {
                let (severity, previous) = match report {
                    Report::Changed { from, to } => (to, from),
                    Report::Reminder(s) => (s, s),
                };
                if severity == Severity::Normal {
                    state.predicted = false;
                }
                let message = if severity == Severity::Normal {
                    format!("{} back to {:.1}% used", mount.escaped(), u.percent)
                } else {
                    format!(
                        "{} is {:.1}% used ({}), over the {} threshold",
                        mount.escaped(),
                        u.percent,
                        what_is_full(&u),
                        severity.as_str()
                    )
                };
                alerts.push(alert(
                    &self.node,
                    &self.agent_id,
                    severity,
                    previous,
                    message,
                    &u,
                    rate,
                    to_critical,
                    rules.threshold(severity),
                    None,
                    now,
                ));
            } else if state.predicted
                && state.tracker.current() == Severity::Normal
                && !to_critical.is_some_and(|eta| eta <= 2.0 * st.predict_horizon)
            {
                // Raised at `normal` and no longer coming within twice the
                // horizon (the fill ended or slowed): withdrawn, so the
                // warning and what answered it do not stay open.
                state.predicted = false;
                let message = format!(
                    "{} at {:.1}% no longer heading for critical ({}%): early warning withdrawn",
                    mount.escaped(),
                    u.percent,
                    st.thresholds.critical
                );
                alerts.push(alert(
                    &self.node,
                    &self.agent_id,
                    Severity::Normal,
                    Severity::Warning,
                    message,
                    &u,
                    rate,
                    to_critical,
                    rules.threshold(Severity::Warning),
                    Some(skos_core::events::PREDICTION_WITHDRAWN),
                    now,
                ));
            } else if state.tracker.current() < Severity::Critical && !state.predicted {
                if let Some(eta) = to_critical.filter(|eta| *eta <= st.predict_horizon) {
                    state.predicted = true;
                    let message = format!(
                        "{} will reach critical ({}%) in about {:.0} s at {:.0} B/s",
                        mount.escaped(),
                        st.thresholds.critical,
                        eta,
                        rate.unwrap_or(0.0)
                    );
                    alerts.push(alert(
                        &self.node,
                        &self.agent_id,
                        Severity::Warning,
                        state.tracker.current(),
                        message,
                        &u,
                        rate,
                        Some(eta),
                        st.thresholds.critical,
                        Some(skos_core::events::PREDICTED),
                        now,
                    ));
                }
            }
            state.usage = Some(u);
        }
        self.summarise();
        alerts
    }

    /// The heartbeat's view of every watched mount: the usage of those
    /// judged whose numbers are current (a mount whose statvfs runs past
    /// its budget is left out: its last numbers are not), and those not
    /// judged, with why.
    fn summarise(&mut self) {
        let mut last = Vec::new();
        let mut not_judged = Vec::new();
        for w in &self.watched {
            let Some(state) = self.mounts.get(&w.mount) else {
                continue;
            };
            if let Some(why) = &state.not_judged {
                not_judged.push(Unjudged {
                    mount: w.mount.clone(),
                    why: why.clone(),
                });
            }
            let late = self.stats.get(&w.mount).is_some_and(Reader::running_late);
            if let Some(u) = state.usage.as_ref().filter(|_| !late) {
                last.push(u.clone());
            }
        }
        self.last = last;
        self.not_judged = not_judged;
    }

    /// Ask every idle reader for a new read: the listing, and each watched
    /// mount's statvfs.
    fn ask_reads(&mut self) {
        let (st, root) = (self.cfg.storage.clone(), self.cfg.proc_root.clone());
        self.list.ask(move || listing(&st, &root));
        for w in &self.watched {
            let arrivals = &self.arrivals;
            let reader = self.stats.entry(w.mount.clone()).or_insert_with(|| {
                Reader::new(
                    format!("storage:{}", w.mount.escaped()),
                    format!("statvfs of {}", w.mount.escaped()),
                    READ_BUDGET,
                )
                .notify_on(arrivals.clone())
            });
            let (stat, mount) = (self.stat.clone(), w.mount.clone());
            reader.ask(move || stat(&mount));
        }
    }

    /// Take what the readers gave since the last look and judge it.
    fn judge_arrived(&mut self, now: Timestamp) -> Vec<Alert> {
        if let Some(l) = self.list.take() {
            self.set_listing(l);
        }
        let mut arrived = Vec::new();
        for w in &self.watched {
            if let Some(stat) = self.stats.get_mut(&w.mount).and_then(Reader::take) {
                arrived.push((w.clone(), stat));
            }
        }
        let alerts = self.apply(arrived, now);
        // A mount's reader running late changes the view even when
        // nothing arrived.
        self.summarise();
        alerts
    }

    /// Discard every read in progress: a job changed the mounts' usage.
    fn invalidate_reads(&mut self) {
        self.list.invalidate();
        for r in self.stats.values_mut() {
            r.invalidate();
        }
    }

    /// Whether `problem` (`storage:<mount>`) is still at `level` percent by
    /// the mount's usage as last judged: gone once it is below `level -
    /// storage.hysteresis` (as its level alert would clear).
    /// [`Precondition::Unknown`] for another problem, or a mount not judged
    /// or not readable now.
    pub fn precondition(&self, problem: &str, level: f64) -> Precondition {
        let Some(mount) = problem.strip_prefix("storage:") else {
            return Precondition::Unknown;
        };
        let Some(u) = self
            .last
            .iter()
            .find(|u| u.mount.escaped().to_string() == mount)
        else {
            return Precondition::Unknown;
        };
        if skos_core::level::cleared(level, self.cfg.storage.hysteresis, u.percent) {
            Precondition::Gone {
                reading: u.percent,
                source: mount.to_string(),
            }
        } else {
            Precondition::Holds
        }
    }

    /// A job that can run on a blocking thread while the agent keeps
    /// heartbeating.
    pub fn job(&self, cmd: &Command) -> StorageJob {
        StorageJob {
            cfg: self.cfg.clone(),
            node: self.node.clone(),
            action: cmd.action_type.clone(),
            cause: cmd.cause.clone(),
            problem: cmd.problem.clone(),
            usage: self.last.clone(),
            judged: self.last.iter().map(|u| u.mount.clone()).collect(),
            stat: self.stat.clone(),
            history: self.history.clone(),
        }
    }

    /// Remember what a finished job did (for the next message to a person).
    pub fn record(&mut self, action: &str, outcome: &Outcome) {
        self.history.finished(
            action,
            format!(
                "{action}: {} ({})",
                outcome.status.as_str(),
                outcome.message
            ),
        );
    }
}

/// What the storage actions did lately (the last ten), and which run now:
/// shared with the jobs, so a message to a person written while a cleanup
/// for the same problem runs waits for it and says what it freed.
#[derive(Default)]
pub struct History {
    state: std::sync::Mutex<HistoryState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct HistoryState {
    done: VecDeque<String>,
    /// Actions running now, with their cause.
    running: Vec<(String, Option<String>)>,
}

impl History {
    /// Kept lines.
    const KEPT: usize = 10;

    fn started(&self, action: &str, cause: Option<&str>) {
        if let Ok(mut st) = self.state.lock() {
            st.running
                .push((action.to_string(), cause.map(str::to_owned)));
        }
    }

    fn finished(&self, action: &str, line: String) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(i) = st.running.iter().position(|(a, _)| a == action) {
                st.running.remove(i);
            }
            st.done.push_back(line);
            while st.done.len() > Self::KEPT {
                st.done.pop_front();
            }
        }
        self.changed.notify_all();
    }

    /// What was done, once no other action for `cause` runs (waiting at
    /// most `wait`; what still runs then is said to be running).
    fn done_for(&self, action: &str, cause: Option<&str>, wait: Duration) -> Vec<String> {
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        let others = |st: &HistoryState| {
            st.running
                .iter()
                .any(|(a, c)| a != action && c.as_deref() == cause)
        };
        let st = match self.changed.wait_timeout_while(st, wait, |st| others(st)) {
            Ok((st, _)) => st,
            Err(poisoned) => poisoned.into_inner().0,
        };
        let mut out: Vec<String> = st.done.iter().cloned().collect();
        out.extend(
            st.running
                .iter()
                .filter(|(a, _)| a != action)
                .map(|(a, _)| format!("{a}: still running")),
        );
        out
    }
}

/// Which mounts are watched: taken off the agent loop ([`listing`]).
pub struct Listing {
    /// `<proc_root>/self/mountinfo`, or why it could not be read.
    table: crate::Result<Vec<MountEntry>>,
    /// The mounts to watch.
    watched: Vec<Watched>,
}

/// Read the mount table and find the watched mounts, touching no state
/// (resolving a configured dir stats each of its components, which a hung
/// network mount does not answer: this runs off the agent loop,
/// [`crate::offloop`]).
pub fn listing(st: &StorageConfig, proc_root: &Path) -> Listing {
    let table = mounts::read_mountinfo(proc_root);
    let watched = watched_mounts(st, table.as_deref().ok());
    Listing { table, watched }
}

fn what_is_full(u: &MountUsage) -> String {
    match u.inodes_percent {
        Some(i) if i >= u.bytes_percent => format!("inodes {i:.1}%, bytes {:.1}%", u.bytes_percent),
        Some(i) => format!("bytes {:.1}%, inodes {i:.1}%", u.bytes_percent),
        None => format!("bytes {:.1}%", u.bytes_percent),
    }
}

/// 8 hex digits of the SHA-256 of a mount's path.
fn mount_digest(mount: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(mount.as_os_str().as_encoded_bytes())[..4])
}

#[allow(clippy::too_many_arguments)]
fn alert(
    node: &NodeName,
    agent_id: &str,
    severity: Severity,
    previous: Severity,
    message: String,
    u: &MountUsage,
    rate: Option<f64>,
    to_critical: Option<f64>,
    threshold: f64,
    event: Option<&str>,
    now: Timestamp,
) -> Alert {
    let mut details = json!({
        "sensor": u.mount.escaped().to_string(),
        "mount": u.mount.escaped().to_string(),
        "percent": u.percent,
        "bytes_percent": u.bytes_percent,
        "inodes_percent": u.inodes_percent,
        "used_bytes": u.used_bytes,
        "available_bytes": u.available_bytes,
        "fill_rate_bytes_per_second": rate,
        "seconds_to_critical": to_critical,
        "threshold": threshold,
        "previous_severity": previous,
    });
    if let (Some(e), Some(m)) = (event, details.as_object_mut()) {
        m.insert("event".into(), json!(e));
    }
    Alert {
        // One sensing pass stamps every mount with the same time: the
        // mount's digest keeps their alert ids (and so their commands) apart.
        alert_id: format!(
            "{agent_id}-{}-{}-{}-{}",
            now.timestamp_nanos_opt().unwrap_or_default(),
            mount_digest(&u.mount),
            severity.as_str(),
            event.unwrap_or("level")
        ),
        agent_id: agent_id.to_string(),
        kind: AlertKind::Storage,
        severity,
        node: node.clone(),
        message,
        details: details.as_object().cloned().unwrap_or_default(),
        timestamp: now,
    }
}

/// One storage action, ready to run off the agent's loop.
/// Seconds a message to a person waits for a cleanup of the same problem
/// running beside it.
const ALERT_HUMAN_WAIT_SECONDS: u64 = 60;

pub struct StorageJob {
    cfg: Config,
    node: NodeName,
    action: String,
    cause: Option<String>,
    problem: Option<String>,
    usage: Vec<MountUsage>,
    /// The mounts judged at the last sensing: what "usage now" is read on
    /// (a read-only mount at 100 % would never let an emergency stop).
    judged: Vec<PathBuf>,
    stat: StatSource,
    history: Arc<History>,
}

impl StorageJob {
    pub fn action(&self) -> &str {
        &self.action
    }

    pub fn run(self) -> Outcome {
        if self.action == "alert_human" {
            return self.alert_human();
        }
        let st = &self.cfg.storage;
        let mounts = self.judged.clone();
        let stat = self.stat.clone();
        let usage_now = move || {
            mounts
                .iter()
                .filter_map(|m| stat(m).ok().map(|r| usage::usage_from(m, r)))
                .map(|u| u.percent)
                .reduce(f64::max)
        };
        let action = self.action.clone();
        let progress = move |line: &str| tracing::info!(action = %action, "{line}");
        let ctx = actions::RunCtx {
            now: std::time::SystemTime::now(),
            dry_run: st.dry_run || self.cfg.dry_run,
            max_delete_bytes: st.max_delete_bytes,
            proc_root: &self.cfg.proc_root,
            progress: &progress,
            usage: &usage_now,
            stop_below: st.thresholds.critical,
        };
        let report = match self.action.as_str() {
            "cleanup_temp" => actions::cleanup_temp(st, &ctx),
            "cleanup_logs" => actions::cleanup_logs(st, &ctx),
            "archive_old" => actions::archive_old(st, &ctx),
            "emergency_cleanup" => actions::emergency_cleanup(st, &ctx),
            other => {
                return Outcome::new(
                    ResultStatus::Unsupported,
                    format!("{other} is not a storage action"),
                )
            }
        };
        match report {
            Ok(r) => {
                // Paths serialize as their escaped text, so this cannot
                // fail on a file name; should it fail anyway, the result
                // says so instead of going without details silently.
                let mut details = match serde_json::to_value(&r) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => Map::new(),
                    Err(e) => {
                        tracing::error!(action = %r.action, error = %e, "storage report not serializable");
                        let mut m = Map::new();
                        m.insert("details_error".into(), json!(e.to_string()));
                        m
                    }
                };
                details.insert("bytes_freed".into(), json!(r.bytes_freed));
                let message = format!(
                    "{}{} freed {} bytes, {} files deleted{}",
                    r.action,
                    if r.dry_run {
                        " (dry run: nothing changed)"
                    } else {
                        ""
                    },
                    r.bytes_freed,
                    r.files_deleted,
                    r.stopped
                        .as_ref()
                        .map(|s| format!("; stopped: {s}"))
                        .unwrap_or_default()
                );
                Outcome {
                    details,
                    ..Outcome::new(ResultStatus::Succeeded, message)
                }
            }
            Err(e) => Outcome::new(ResultStatus::Failed, e.to_string()),
        }
    }

    fn alert_human(self) -> Outcome {
        let full: Vec<String> = self
            .usage
            .iter()
            .map(|u| {
                format!(
                    "{}: {:.1}% used ({}), {} bytes free",
                    u.mount.escaped(),
                    u.percent,
                    what_is_full(u),
                    u.available_bytes
                )
            })
            .collect();
        // A cleanup for the same problem that runs beside this message is
        // waited for (a while), so the message says what it freed.
        let history = self.history.done_for(
            &self.action,
            self.cause.as_deref(),
            Duration::from_secs(ALERT_HUMAN_WAIT_SECONDS),
        );
        let done = if history.is_empty() {
            "nothing yet".to_string()
        } else {
            history.join("\n  ")
        };
        let message = format!(
            "Storage on {node} needs a person.\n\nWhat is full:\n  {}\n\nWhat was done:\n  {done}\n\n\
What is left to decide: what else may be deleted or moved (data outside the configured \
temp, log and archive dirs is never touched), or whether to add space.",
            if full.is_empty() { "no watched mount could be read".to_string() } else { full.join("\n  ") },
            node = self.node,
        );
        let n = Notification {
            node: self.node.to_string(),
            severity: "emergency".into(),
            title: format!("storage emergency on {}", self.node),
            message,
            details: json!({"usage": self.usage, "cause": self.cause, "problem": self.problem}),
        };
        let deliveries = notify::send(&self.cfg.storage.notify, &n);
        let mut details = Map::new();
        details.insert("deliveries".into(), json!(deliveries));
        details.insert("bytes_freed".into(), json!(0));
        if deliveries.is_empty() {
            return Outcome {
                details,
                ..Outcome::new(
                    ResultStatus::Failed,
                    "no notification channel configured (storage.notify)",
                )
            };
        }
        let ok = deliveries.iter().filter(|d| d.ok).count();
        let status = if ok > 0 {
            ResultStatus::Succeeded
        } else {
            ResultStatus::Failed
        };
        Outcome {
            details,
            ..Outcome::new(
                status,
                format!(
                    "{ok} of {} notification channels delivered",
                    deliveries.len()
                ),
            )
        }
    }
}

impl Antibody for StorageWatcher {
    fn name(&self) -> &'static str {
        AGENT_TYPE
    }

    fn handles(&self, action: &str) -> bool {
        handles(action)
    }

    /// Judges what arrived and asks every idle reader for the next read,
    /// off the loop (the first look waits up to a second for them).
    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        let mut alerts = self.judge_arrived(now);
        self.ask_reads();
        if !self.looked {
            self.looked = true;
            let until = std::time::Instant::now() + FIRST_LOOK;
            let left = || until.saturating_duration_since(std::time::Instant::now());
            self.list.settle(left());
            alerts.extend(self.judge_arrived(now));
            self.ask_reads();
            for r in self.stats.values() {
                r.settle(left());
            }
            alerts.extend(self.judge_arrived(now));
        }
        alerts
    }

    fn arrivals(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.arrivals.clone())
    }

    fn judge(&mut self, now: Timestamp) -> Vec<Alert> {
        self.judge_arrived(now)
    }

    /// After a job: the usage it left, read now (at most a second).
    fn refresh(&mut self, now: Timestamp) -> Vec<Alert> {
        self.invalidate_reads();
        let until = std::time::Instant::now() + FIRST_LOOK;
        let mut read = Vec::new();
        for w in self.watched.clone() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let (stat, mount) = (self.stat.clone(), w.mount.clone());
            let Some(reader) = self.stats.get_mut(&w.mount) else {
                continue;
            };
            if let Some(r) = reader.read_fresh(left, move || stat(&mount)) {
                read.push((w, r));
            }
        }
        self.apply(read, now)
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.storage_percent = self.storage_percent();
        hb.metadata.insert("storage".into(), json!(self.usage()));
        hb.metadata
            .insert("storage_not_judged".into(), json!(self.not_judged()));
        self.list.report(hb);
        for r in self.stats.values() {
            r.report(hb);
        }
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        // What is read from now on may be from before the job's changes.
        self.invalidate_reads();
        self.history.started(&cmd.action_type, cmd.cause.as_deref());
        let job = self.job(cmd);
        Execution::Background(Box::new(move || job.run()))
    }

    fn finished(&mut self, action: &str, outcome: &Outcome) {
        self.record(action, outcome);
    }

    fn precondition(&self, problem: &str, level: f64) -> Precondition {
        StorageWatcher::precondition(self, problem, level)
    }
}
