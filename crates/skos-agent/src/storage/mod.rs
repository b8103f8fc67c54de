//! The storage watcher antibody.
//!
//! Senses statvfs of every configured mount (bytes and inodes), raises
//! alerts on level changes with hysteresis, and a `predicted` warning when
//! the fill rate will take a mount to critical within the horizon. Carries
//! out `cleanup_temp`, `cleanup_logs`, `archive_old`, `emergency_cleanup`
//! and `alert_human`, strictly inside the configured directories.

pub mod actions;
pub mod notify;
pub mod usage;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use skos_core::config::Config;
use skos_core::level::{LevelRules, LevelTracker, Report};
use skos_core::protocol::{Alert, AlertKind, Command, Heartbeat, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use crate::antibody::{Antibody, Execution};
use crate::Outcome;
use notify::Notification;
use usage::{FillRate, MountUsage};

pub const AGENT_TYPE: &str = skos_core::catalogue::Executor::StorageWatcher.as_str();

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    skos_core::catalogue::Executor::StorageWatcher.handles(action)
}

struct MountState {
    tracker: LevelTracker,
    fill: FillRate,
    predicted: bool,
    unreadable: bool,
}

pub struct StorageWatcher {
    cfg: Config,
    node: NodeName,
    agent_id: String,
    mounts: BTreeMap<PathBuf, MountState>,
    last: Vec<MountUsage>,
    /// What the recent actions did, for the message to a person.
    history: VecDeque<String>,
}

impl StorageWatcher {
    pub fn new(cfg: &Config) -> Self {
        Self {
            node: cfg.node.name.clone(),
            agent_id: format!("storage-watcher-{}", cfg.node.name),
            mounts: cfg
                .storage
                .mounts
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        MountState {
                            tracker: LevelTracker::default(),
                            fill: FillRate::default(),
                            predicted: false,
                            unreadable: false,
                        },
                    )
                })
                .collect(),
            cfg: cfg.clone(),
            last: Vec::new(),
            history: VecDeque::new(),
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

    /// The fullest watched mount, in percent; `None` when nothing is watched
    /// or readable.
    pub fn storage_percent(&self) -> Option<f64> {
        self.last.iter().map(|u| u.percent).reduce(f64::max)
    }

    pub fn usage(&self) -> &[MountUsage] {
        &self.last
    }

    /// Read every mount and return the alerts to raise.
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        let rules = self.rules();
        let st = self.cfg.storage.clone();
        let mut alerts = Vec::new();
        let mut last = Vec::new();
        for (mount, state) in self.mounts.iter_mut() {
            let u = match usage::read(mount) {
                Ok(u) => {
                    state.unreadable = false;
                    u
                }
                Err(e) => {
                    if !state.unreadable {
                        tracing::warn!(mount = %mount.display(), error = %e, "cannot read mount usage");
                        state.unreadable = true;
                    }
                    continue;
                }
            };
            state.fill.push(st.fill_rate_window, now, u.used_bytes);
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
                    format!("{} back to {:.1}% used", mount.display(), u.percent)
                } else {
                    format!(
                        "{} is {:.1}% used ({}), over the {} threshold",
                        mount.display(),
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
            } else if state.tracker.current() < Severity::Critical && !state.predicted {
                if let Some(eta) = to_critical.filter(|eta| *eta <= st.predict_horizon) {
                    state.predicted = true;
                    let message = format!(
                        "{} will reach critical ({}%) in about {:.0} s at {:.0} B/s",
                        mount.display(),
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
                        Some("predicted"),
                        now,
                    ));
                }
            }
            last.push(u);
        }
        self.last = last;
        alerts
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
            history: self.history.iter().cloned().collect(),
        }
    }

    /// Remember what a finished job did (for the next message to a person).
    pub fn record(&mut self, action: &str, outcome: &Outcome) {
        self.history.push_back(format!(
            "{action}: {} ({})",
            outcome.status.as_str(),
            outcome.message
        ));
        while self.history.len() > 10 {
            self.history.pop_front();
        }
    }
}

fn what_is_full(u: &MountUsage) -> String {
    match u.inodes_percent {
        Some(i) if i >= u.bytes_percent => format!("inodes {i:.1}%, bytes {:.1}%", u.bytes_percent),
        Some(i) => format!("bytes {:.1}%, inodes {i:.1}%", u.bytes_percent),
        None => format!("bytes {:.1}%", u.bytes_percent),
    }
}

/// 8 hex digits of the SHA-256 of a mount's path.
fn mount_digest(mount: &std::path::Path) -> String {
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
        "sensor": u.mount.display().to_string(),
        "mount": u.mount.display().to_string(),
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
pub struct StorageJob {
    cfg: Config,
    node: NodeName,
    action: String,
    cause: Option<String>,
    problem: Option<String>,
    usage: Vec<MountUsage>,
    history: Vec<String>,
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
        let mounts = st.mounts.clone();
        let usage_now = move || {
            mounts
                .iter()
                .filter_map(|m| usage::read(m).ok())
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
                let mut details = match serde_json::to_value(&r) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
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
                    u.mount.display(),
                    u.percent,
                    what_is_full(u),
                    u.available_bytes
                )
            })
            .collect();
        let done = if self.history.is_empty() {
            "nothing yet".to_string()
        } else {
            self.history.join("\n  ")
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

    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        StorageWatcher::sense(self, now)
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.storage_percent = self.storage_percent();
        hb.metadata.insert("storage".into(), json!(self.usage()));
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        let job = self.job(cmd);
        Execution::Background(Box::new(move || job.run()))
    }

    fn finished(&mut self, action: &str, outcome: &Outcome) {
        self.record(action, outcome);
    }
}
