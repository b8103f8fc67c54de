//! `storage:`: the storage watcher's thresholds and table, which dirs its
//! actions may touch and how (temp, logs, archive), and how a person is
//! told. Webhook header values, URL paths and the SMTP password never
//! appear in `Debug` output.

use crate::escape::ShowPath;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::levels::{check_table, check_thresholds, ActionTable, Thresholds};
use super::{issue, non_negative, strings, CheckContext, Config, ConfigIssue, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub thresholds: Thresholds,
    pub actions: ActionTable,
    /// Percentage points below a threshold before its level clears.
    pub hysteresis: f64,
    /// Mount points watched (bytes and inodes; the fuller of the two
    /// counts). Empty: the mounts holding the configured temp, log and
    /// archive directories. Read-only mounts, image filesystems and mounts
    /// without blocks are never judged for fullness, even when listed;
    /// pseudo filesystems only when listed here.
    pub mounts: Vec<PathBuf>,
    /// Seconds before an unchanged alert is repeated.
    pub cooldown: f64,
    /// Seconds of history the fill rate is estimated over.
    pub fill_rate_window: f64,
    /// A `predicted` warning when a mount will reach critical within this many seconds.
    pub predict_horizon: f64,
    /// Every directory below must lie inside one of these roots.
    pub allowed_roots: Vec<PathBuf>,
    pub temp: TempCleanup,
    pub logs: LogCleanup,
    pub archive: ArchiveConfig,
    /// Most bytes one action may delete (a per-run cap).
    pub max_delete_bytes: u64,
    /// List what would go, delete nothing.
    pub dry_run: bool,
    pub notify: NotifyConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds {
                warning: 80.0,
                critical: 90.0,
                emergency: 95.0,
            },
            actions: ActionTable {
                warning: strings(&["cleanup_temp"]),
                critical: strings(&["cleanup_logs", "archive_old"]),
                emergency: strings(&["emergency_cleanup", "alert_human"]),
            },
            hysteresis: 2.0,
            mounts: Vec::new(),
            cooldown: 300.0,
            fill_rate_window: 300.0,
            predict_horizon: 3600.0,
            allowed_roots: [
                "/tmp",
                "/var/tmp",
                "/var/log",
                "/var/cache",
                "/srv",
                "/data",
                "/home",
                "/mnt",
                "/opt",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            temp: TempCleanup::default(),
            logs: LogCleanup::default(),
            archive: ArchiveConfig::default(),
            max_delete_bytes: 50 * 1024 * 1024 * 1024,
            dry_run: false,
            notify: NotifyConfig::default(),
        }
    }
}

/// `cleanup_temp`: files older than `max_age` seconds in `dirs` are deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TempCleanup {
    pub dirs: Vec<PathBuf>,
    pub max_age: f64,
    /// The age used by `emergency_cleanup`.
    pub emergency_max_age: f64,
}

impl Default for TempCleanup {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            max_age: 7.0 * 86400.0,
            emergency_max_age: 3600.0,
        }
    }
}

/// `cleanup_logs`: rotated logs older than `compress_after` are compressed;
/// compressed ones older than `retention` are deleted, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogCleanup {
    pub dirs: Vec<PathBuf>,
    pub compress_after: f64,
    pub retention: f64,
    /// The retention used by `emergency_cleanup`.
    pub emergency_retention: f64,
    /// When set (e.g. `500M`), also run `journalctl --vacuum-size=<this>`.
    pub journal_vacuum_size: Option<String>,
}

impl Default for LogCleanup {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            compress_after: 86400.0,
            retention: 30.0 * 86400.0,
            emergency_retention: 86400.0,
            journal_vacuum_size: None,
        }
    }
}

/// `archive_old`: files older than `older_than` in `dirs` are moved into a
/// tar + zstd archive under `destination` (on another mount), verified, and
/// only then deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchiveConfig {
    pub dirs: Vec<PathBuf>,
    pub older_than: f64,
    pub emergency_older_than: f64,
    pub destination: Option<PathBuf>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            older_than: 90.0 * 86400.0,
            emergency_older_than: 7.0 * 86400.0,
            destination: None,
        }
    }
}

/// Secrets are never printed: header values and passwords are redacted.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &crate::redact::url_origin(&self.url))
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(|k| (k, "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `alert_human`: where a person is told.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NotifyConfig {
    pub webhook: Option<WebhookConfig>,
    pub email: Option<EmailConfig>,
    /// A command run with the message on stdin (argv, no shell).
    pub command: Option<Vec<String>>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub timeout: f64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            headers: BTreeMap::new(),
            timeout: 10.0,
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailConfig {
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls`.
    pub security: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub timeout: f64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: "localhost".into(),
            smtp_port: 25,
            security: "starttls".into(),
            username: None,
            password: None,
            from: "skos@localhost".into(),
            to: Vec::new(),
            timeout: 10.0,
        }
    }
}

impl Section for StorageConfig {
    const KEY: &'static str = "storage";

    fn get(cfg: &Config) -> &Self {
        &cfg.storage
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.storage
    }

    fn check(&self, ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        check_thresholds(out, "storage", &self.thresholds);
        check_table(out, "storage.actions", &self.actions);
        check_dirs(self, ctx.data_dir, out);
    }
}

/// System directories SKOS never cleans, nor anything inside them.
const FORBIDDEN: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/dev", "/proc", "/sys", "/run",
];

/// Every directory the storage watcher may touch must be absolute, free of
/// `..`, inside an allowed root, not a system directory, and apart from
/// SKOS's own data dir; then the ages, the archive and the notify channels.
fn check_dirs(st: &StorageConfig, data_dir: &Path, out: &mut Vec<ConfigIssue>) {
    let mut dirs: Vec<(String, &Path)> = Vec::new();
    for (i, d) in st.temp.dirs.iter().enumerate() {
        dirs.push((format!("storage.temp.dirs[{i}]"), d));
    }
    for (i, d) in st.logs.dirs.iter().enumerate() {
        dirs.push((format!("storage.logs.dirs[{i}]"), d));
    }
    for (i, d) in st.archive.dirs.iter().enumerate() {
        dirs.push((format!("storage.archive.dirs[{i}]"), d));
    }
    if let Some(d) = &st.archive.destination {
        dirs.push(("storage.archive.destination".into(), d));
    }
    for (i, r) in st.allowed_roots.iter().enumerate() {
        if !r.is_absolute() || has_parent(r) {
            out.push(issue(
                format!("storage.allowed_roots[{i}]"),
                format!("{} must be absolute, without '..'", r.escaped()),
            ));
        } else if r == Path::new("/") || FORBIDDEN.iter().any(|f| r.starts_with(f)) {
            out.push(issue(
                format!("storage.allowed_roots[{i}]"),
                format!("{} is a system directory", r.escaped()),
            ));
        }
    }
    for (path, d) in dirs {
        if !d.is_absolute() || has_parent(d) {
            out.push(issue(
                path,
                format!("{} must be an absolute path without '..'", d.escaped()),
            ));
            continue;
        }
        if d == Path::new("/") {
            out.push(issue(path, "/ is never cleaned"));
            continue;
        }
        if let Some(f) = FORBIDDEN.iter().find(|f| d.starts_with(f)) {
            out.push(issue(
                path,
                format!("{} is inside the system directory {f}", d.escaped()),
            ));
            continue;
        }
        if data_dir.is_absolute() && (d.starts_with(data_dir) || data_dir.starts_with(d)) {
            out.push(issue(
                path,
                format!(
                    "{} overlaps SKOS's own data dir {}",
                    d.escaped(),
                    data_dir.escaped()
                ),
            ));
            continue;
        }
        if st.allowed_roots.iter().any(|r| d == r.as_path()) {
            // A root itself holds what other software keeps there: only a
            // dir of SKOS's own below it may be cleaned.
            out.push(issue(
                path,
                format!(
                    "{} is an allowed root itself (storage.allowed_roots); name a dir inside it, e.g. {}",
                    d.escaped(),
                    d.join("myapp").escaped()
                ),
            ));
        } else if !st.allowed_roots.iter().any(|r| d.starts_with(r)) {
            out.push(issue(
                path,
                format!(
                    "{} is not inside an allowed root (storage.allowed_roots)",
                    d.escaped()
                ),
            ));
        }
    }
    for (i, m) in st.mounts.iter().enumerate() {
        if !m.is_absolute() {
            out.push(issue(
                format!("storage.mounts[{i}]"),
                format!("{} must be absolute", m.escaped()),
            ));
        }
    }
    for (path, v) in [
        ("storage.temp.max_age", st.temp.max_age),
        ("storage.temp.emergency_max_age", st.temp.emergency_max_age),
        ("storage.logs.compress_after", st.logs.compress_after),
        ("storage.logs.retention", st.logs.retention),
        (
            "storage.logs.emergency_retention",
            st.logs.emergency_retention,
        ),
        ("storage.archive.older_than", st.archive.older_than),
        (
            "storage.archive.emergency_older_than",
            st.archive.emergency_older_than,
        ),
        ("storage.fill_rate_window", st.fill_rate_window),
        ("storage.predict_horizon", st.predict_horizon),
    ] {
        if !non_negative(v) {
            out.push(issue(path, "must be zero or more seconds"));
        }
    }
    if !st.archive.dirs.is_empty() && st.archive.destination.is_none() {
        out.push(issue(
            "storage.archive.destination",
            "archive.dirs are set but no destination",
        ));
    }
    if let Some(w) = &st.notify.webhook {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            out.push(issue(
                "storage.notify.webhook.url",
                format!("{:?} is not an http(s) URL", w.url),
            ));
        }
    }
    if let Some(e) = &st.notify.email {
        if e.to.is_empty() {
            out.push(issue("storage.notify.email.to", "no recipient"));
        }
        if !["none", "starttls", "tls"].contains(&e.security.as_str()) {
            out.push(issue(
                "storage.notify.email.security",
                "must be none, starttls or tls",
            ));
        }
    }
    if let Some(c) = &st.notify.command {
        if c.is_empty() {
            out.push(issue("storage.notify.command", "must name a program"));
        }
    }
}

fn has_parent(p: &Path) -> bool {
    p.components().any(|c| matches!(c, Component::ParentDir))
}
