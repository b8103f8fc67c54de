//! `config.yaml`: the seed's shape, its healing tables as built-in defaults.
//!
//! Precedence: built-in defaults < config file < environment < command-line
//! flags. Parsing and checking are pure: the caller reads the file and hands
//! over the environment as a lookup function. Every problem is reported with
//! its key path (`thermal.thresholds.critical`) or variable (`env:WARNING_TEMP`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::catalogue::{self, Executor};
use crate::node::NodeName;

mod loops;
mod mesh;

pub use loops::{
    BreakMode, CycleRule, GroupLimits, KindLimits, LoopConfig, ProcessGroup, RateRule,
};
pub use mesh::{
    endpoint, interface_name, is_wg_key, parse_cidr, FailoverConfig, MeshConfig, MeshInterface,
    MeshPeer, MeshTools, ProbeConfig, ProbeMethod, RestartMethod, RouteVia,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path in the file (`thermal.thresholds.warning`) or `env:NAME`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

pub(crate) fn issue(path: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub node: NodeSection,
    pub nats: NatsSection,
    /// Where embedded mode keeps its audit trail and state.
    pub data_dir: PathBuf,
    /// Root under which every sysfs (and cgroup) path is read and written.
    pub sysfs_root: PathBuf,
    /// Root of procfs (open files, process trees).
    pub proc_root: PathBuf,
    pub log_level: String,
    /// Decide and audit, execute nothing.
    pub dry_run: bool,
    pub agent: AgentSection,
    pub coordinator: CoordinatorSection,
    pub circuit_breaker: BreakerConfig,
    pub thermal: ThermalConfig,
    pub storage: StorageConfig,
    pub mesh: MeshConfig,
    #[serde(rename = "loop")]
    pub loop_: LoopConfig,
    pub trust: TrustConfig,
}

/// Who may order a node to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustConfig {
    /// Agents refuse unsigned commands.
    pub require_signatures: bool,
    /// Public keys (nkeys, `U...`) whose signed commands agents accept;
    /// several, so keys can be rotated.
    pub coordinator_keys: Vec<String>,
    /// The coordinator's nkeys seed file (`skos keys generate`).
    pub signing_key_file: Option<PathBuf>,
    /// How long an executed `action_id` is remembered when its command
    /// carries no deadline (seconds).
    pub replay_window: f64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            require_signatures: true,
            coordinator_keys: Vec::new(),
            signing_key_file: None,
            replay_window: 7.0 * 86400.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: NodeSection::default(),
            nats: NatsSection::default(),
            data_dir: PathBuf::from("./skos-data"),
            sysfs_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
            log_level: "INFO".into(),
            dry_run: false,
            agent: AgentSection::default(),
            coordinator: CoordinatorSection::default(),
            circuit_breaker: BreakerConfig::default(),
            thermal: ThermalConfig::default(),
            storage: StorageConfig::default(),
            mesh: MeshConfig::default(),
            loop_: LoopConfig::default(),
            trust: TrustConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSection {
    /// This node's name (`NODE_NAME`); the seed's default is `nova`.
    pub name: NodeName,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: NodeName::parse("nova").unwrap_or_else(|_| unreachable!("valid literal")),
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsSection {
    pub url: String,
    /// Messages larger than this are rejected on every subject.
    pub max_message_bytes: usize,
    /// Authentication: at most one of user/password, token, nkey, creds.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkeys seed file (`skos fleet nats-config` writes one per node).
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS `.creds` file (JWT + seed).
    pub creds_file: Option<PathBuf>,
    pub tls: NatsTls,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsTls {
    /// Require TLS even when the URL does not say `tls://`.
    pub required: bool,
    /// CA certificate (PEM) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: "nats://localhost:4222".into(),
            max_message_bytes: crate::protocol::DEFAULT_MAX_MESSAGE_BYTES,
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: NatsTls::default(),
        }
    }
}

/// Passwords and tokens are never printed.
impl fmt::Debug for NatsSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSection")
            .field("url", &self.url)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSection {
    /// Seconds between heartbeats (`HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: f64,
    /// Seconds between sensor checks (`MONITOR_INTERVAL`).
    pub monitor_interval: f64,
    /// Enabled antibodies.
    pub antibodies: Vec<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            heartbeat_interval: 10.0,
            monitor_interval: 5.0,
            antibodies: vec!["thermal_sentinel".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorSection {
    /// Seconds without a heartbeat before a node is offline (`HEARTBEAT_TIMEOUT`).
    pub heartbeat_timeout: f64,
    /// Seconds a fix has to bring the metric back below the alert's level.
    pub verify_within: f64,
    /// Seconds a command stays valid; not executed after its deadline.
    pub command_deadline: f64,
    /// Most commands sent to one node per minute.
    pub max_actions_per_node_per_minute: u32,
    /// Recent actions kept for `skos status`.
    pub recent_actions: usize,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        Self {
            heartbeat_timeout: 30.0,
            verify_within: 120.0,
            command_deadline: 60.0,
            max_actions_per_node_per_minute: 30,
            recent_actions: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    pub max_failures: u32,
    pub window_seconds: f64,
    pub reset_timeout_seconds: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window_seconds: 300.0,
            reset_timeout_seconds: 60.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
    pub emergency: f64,
}

/// Actions per severity, run in order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionTable {
    pub warning: Vec<String>,
    pub critical: Vec<String>,
    pub emergency: Vec<String>,
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Seconds a level must hold before it counts (the `for` of a level).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LevelHold {
    pub warning: f64,
    pub critical: f64,
    pub emergency: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThermalConfig {
    pub thresholds: Thresholds,
    pub actions: ActionTable,
    /// °C below a threshold before its level clears.
    pub hysteresis: f64,
    /// Optional debounce: seconds each level must hold before alerting.
    #[serde(rename = "for")]
    pub for_: LevelHold,
    /// Seconds below `warning - hysteresis` before throttling is reset.
    pub clear_for: f64,
    /// Seconds before an unchanged alert is repeated.
    pub cooldown: f64,
    pub throttle: ThrottleConfig,
    pub gpu: GpuConfig,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds {
                warning: 75.0,
                critical: 85.0,
                emergency: 95.0,
            },
            actions: ActionTable {
                // The seed's table also names redistribute (critical),
                // shutdown_non_essential and failover (emergency); no
                // antibody executes those yet, so the defaults name only
                // what agents carry out. A config naming them still loads.
                warning: strings(&["throttle_10"]),
                critical: strings(&["throttle_50"]),
                emergency: strings(&["throttle_100"]),
            },
            hysteresis: 3.0,
            for_: LevelHold::default(),
            clear_for: 30.0,
            cooldown: 300.0,
            throttle: ThrottleConfig::default(),
            gpu: GpuConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleConfig {
    /// Cap every cpufreq policy's `scaling_max_freq`.
    pub cpufreq: bool,
    /// cgroups (relative to `<sysfs_root>/fs/cgroup`) whose CPU quota is cut.
    pub cgroups: Vec<PathBuf>,
    // cgroup v1 hierarchies live under `<sysfs_root>/fs/cgroup/cpu`; the
    // quota period is each cgroup's own.
    /// Lower NVIDIA GPU power limits through NVML.
    pub gpu_power_limit: bool,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            cpufreq: true,
            cgroups: Vec::new(),
            gpu_power_limit: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuConfig {
    /// Read NVIDIA GPUs through NVML (loaded at run time).
    pub nvml: bool,
    /// Fall back to `nvidia-smi` when NVML is not available.
    pub nvidia_smi: bool,
    /// Fall back to `sensors -j` when sysfs shows no sensor.
    pub lm_sensors: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            nvml: true,
            nvidia_smi: true,
            lm_sensors: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub thresholds: Thresholds,
    pub actions: ActionTable,
    /// Percentage points below a threshold before its level clears.
    pub hysteresis: f64,
    /// Mount points watched (bytes and inodes; the fuller of the two counts).
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
            .field("url", &redact_url(&self.url))
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

/// Scheme and host only: webhook paths and queries often carry a token.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{scheme}://{host}/<redacted>")
        }
        None => "<redacted>".to_string(),
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

/// Deserialize `T` from a YAML value, naming the key path of the first type
/// error and of every unknown key.
fn section<T: DeserializeOwned>(
    prefix: &str,
    value: serde_yaml_ng::Value,
    issues: &mut Vec<ConfigIssue>,
) -> Option<T> {
    let join = |p: String| {
        if p.is_empty() || p == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{p}")
        }
    };
    let mut unknown = Vec::new();
    let result = {
        let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let de = serde_ignored::Deserializer::new(value, &mut note);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    for path in unknown {
        issues.push(issue(join(path), "unknown key"));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = join(e.path().to_string());
            issues.push(issue(path, e.into_inner().to_string()));
            None
        }
    }
}

impl Config {
    /// Parse a config file's text. Every top-level section is read on its
    /// own, so one bad section does not hide errors in the others. Returns
    /// the config and all problems found (parse and semantic).
    pub fn from_yaml(text: &str) -> Result<Config, Vec<ConfigIssue>> {
        let root: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| format!("line {} column {}", l.line(), l.column()))
                    .unwrap_or_else(|| "(document)".into());
                return Err(vec![issue(at, e.to_string())]);
            }
        };
        let mut issues = Vec::new();
        let mut cfg = Config::default();
        let map = match root {
            serde_yaml_ng::Value::Null => serde_yaml_ng::Mapping::new(),
            serde_yaml_ng::Value::Mapping(m) => m,
            _ => {
                return Err(vec![issue(
                    "(root)",
                    "the config must be a mapping of sections",
                )])
            }
        };
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_owned) else {
                issues.push(issue("(root)", format!("non-string key {key:?}")));
                continue;
            };
            macro_rules! take {
                ($field:expr) => {
                    if let Some(v) = section(&key, value, &mut issues) {
                        $field = v;
                    }
                };
            }
            match key.as_str() {
                "node" => take!(cfg.node),
                "nats" => take!(cfg.nats),
                "data_dir" => take!(cfg.data_dir),
                "sysfs_root" => take!(cfg.sysfs_root),
                "proc_root" => take!(cfg.proc_root),
                "log_level" => take!(cfg.log_level),
                "dry_run" => take!(cfg.dry_run),
                "agent" => take!(cfg.agent),
                "coordinator" => take!(cfg.coordinator),
                "circuit_breaker" => take!(cfg.circuit_breaker),
                "thermal" => take!(cfg.thermal),
                "storage" => take!(cfg.storage),
                "mesh" => take!(cfg.mesh),
                "loop" => take!(cfg.loop_),
                "trust" => take!(cfg.trust),
                _ => issues.push(issue(key.clone(), "unknown key")),
            }
        }
        issues.extend(cfg.check());
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(issues)
        }
    }

    /// Apply the seed's environment variables (and SKOS_*), looked up
    /// through `env`. Unparseable values are reported with `env:NAME`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut num = |name: &str, slot: &mut f64| {
            if let Some(v) = env(name) {
                match v.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => *slot = x,
                    _ => issues.push(issue(
                        format!("env:{name}"),
                        format!("{v:?} is not a number"),
                    )),
                }
            }
        };
        num("HEARTBEAT_TIMEOUT", &mut self.coordinator.heartbeat_timeout);
        num("HEARTBEAT_INTERVAL", &mut self.agent.heartbeat_interval);
        num("MONITOR_INTERVAL", &mut self.agent.monitor_interval);
        num("WARNING_TEMP", &mut self.thermal.thresholds.warning);
        num("CRITICAL_TEMP", &mut self.thermal.thresholds.critical);
        num("EMERGENCY_TEMP", &mut self.thermal.thresholds.emergency);
        if let Some(v) = env("NODE_NAME") {
            match NodeName::parse(&v) {
                Ok(n) => self.node.name = n,
                Err(e) => issues.push(issue("env:NODE_NAME", e.to_string())),
            }
        }
        if let Some(v) = env("NATS_URL") {
            self.nats.url = v;
        }
        if let Some(v) = env("LOG_LEVEL") {
            self.log_level = v;
        }
        if let Some(v) = env("SKOS_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("SKOS_SYSFS_ROOT") {
            self.sysfs_root = PathBuf::from(v);
        }
        if let Some(v) = env("SKOS_PROC_ROOT") {
            self.proc_root = PathBuf::from(v);
        }
        issues.extend(self.check());
        issues
    }

    /// Semantic checks, every problem with its key path.
    pub fn check(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let positive = |out: &mut Vec<ConfigIssue>, path: &str, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                out.push(issue(
                    path,
                    format!("must be a positive number of seconds, got {v}"),
                ));
            }
        };
        positive(
            &mut out,
            "agent.heartbeat_interval",
            self.agent.heartbeat_interval,
        );
        positive(
            &mut out,
            "agent.monitor_interval",
            self.agent.monitor_interval,
        );
        positive(
            &mut out,
            "coordinator.heartbeat_timeout",
            self.coordinator.heartbeat_timeout,
        );
        positive(
            &mut out,
            "coordinator.verify_within",
            self.coordinator.verify_within,
        );
        positive(
            &mut out,
            "coordinator.command_deadline",
            self.coordinator.command_deadline,
        );
        positive(
            &mut out,
            "circuit_breaker.window_seconds",
            self.circuit_breaker.window_seconds,
        );
        positive(
            &mut out,
            "circuit_breaker.reset_timeout_seconds",
            self.circuit_breaker.reset_timeout_seconds,
        );
        if self.circuit_breaker.max_failures == 0 {
            out.push(issue("circuit_breaker.max_failures", "must be at least 1"));
        }
        let methods = [
            self.nats.user.is_some() || self.nats.password.is_some(),
            self.nats.token.is_some(),
            self.nats.nkey_seed_file.is_some(),
            self.nats.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            out.push(issue(
                "nats",
                "choose one of user/password, token, nkey_seed_file, creds_file",
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            out.push(issue("nats.password", "user and password go together"));
        }
        if self.nats.tls.cert_file.is_some() != self.nats.tls.key_file.is_some() {
            out.push(issue(
                "nats.tls.key_file",
                "cert_file and key_file go together",
            ));
        }
        if self.nats.max_message_bytes < 1024 {
            out.push(issue("nats.max_message_bytes", "must be at least 1024"));
        }
        if !["TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR"]
            .contains(&self.log_level.to_ascii_uppercase().as_str())
        {
            out.push(issue(
                "log_level",
                format!(
                    "{:?} is not one of TRACE, DEBUG, INFO, WARNING, ERROR",
                    self.log_level
                ),
            ));
        }
        for (i, a) in self.agent.antibodies.iter().enumerate() {
            let built: Vec<&str> = Executor::ALL
                .into_iter()
                .filter(|e| e.built())
                .map(Executor::as_str)
                .collect();
            match Executor::parse(a) {
                Some(e) if e.built() => {}
                Some(_) => out.push(issue(
                    format!("agent.antibodies[{i}]"),
                    format!(
                        "antibody {a:?} is not built yet (built: {})",
                        built.join(", ")
                    ),
                )),
                None => out.push(issue(
                    format!("agent.antibodies[{i}]"),
                    format!("unknown antibody {a:?} (known: {})", built.join(", ")),
                )),
            }
        }
        check_thresholds(&mut out, "thermal", &self.thermal.thresholds);
        check_thresholds(&mut out, "storage", &self.storage.thresholds);
        check_table(&mut out, "thermal.actions", &self.thermal.actions);
        check_table(&mut out, "storage.actions", &self.storage.actions);
        for (event, actions) in &self.mesh.actions {
            check_actions(&mut out, &format!("mesh.actions.{event}"), actions);
        }
        for (cond, actions) in &self.loop_.actions {
            check_actions(&mut out, &format!("loop.actions.{cond}"), actions);
        }
        if !non_negative(self.thermal.hysteresis) {
            out.push(issue("thermal.hysteresis", "must be zero or more"));
        }
        for (level, v) in [
            ("warning", self.thermal.for_.warning),
            ("critical", self.thermal.for_.critical),
            ("emergency", self.thermal.for_.emergency),
        ] {
            if !non_negative(v) {
                out.push(issue(
                    format!("thermal.for.{level}"),
                    "must be zero or more seconds",
                ));
            }
        }
        for (i, cg) in self.thermal.throttle.cgroups.iter().enumerate() {
            if let Err(m) = relative_inside(cg) {
                out.push(issue(format!("thermal.throttle.cgroups[{i}]"), m));
            }
        }
        out.extend(self.check_storage());
        for (i, k) in self.trust.coordinator_keys.iter().enumerate() {
            if !(k.len() == 56
                && k.starts_with('U')
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
            {
                out.push(issue(
                    format!("trust.coordinator_keys[{i}]"),
                    format!("{k:?} is not an nkeys public key (56 characters starting with U)"),
                ));
            }
        }
        if !non_negative(self.trust.replay_window) {
            out.push(issue("trust.replay_window", "must be zero or more seconds"));
        }
        out.extend(self.mesh.check());
        out.extend(self.loop_.check());
        out
    }
}

/// System directories SKOS never cleans, nor anything inside them.
const FORBIDDEN: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/dev", "/proc", "/sys", "/run",
];

impl Config {
    /// Every directory the storage watcher may touch must be absolute, free
    /// of `..`, inside an allowed root, not a system directory, and apart
    /// from SKOS's own data dir.
    fn check_storage(&self) -> Vec<ConfigIssue> {
        let st = &self.storage;
        let mut out = Vec::new();
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
                    format!("{} must be absolute, without '..'", r.display()),
                ));
            } else if r == Path::new("/") || FORBIDDEN.iter().any(|f| r.starts_with(f)) {
                out.push(issue(
                    format!("storage.allowed_roots[{i}]"),
                    format!("{} is a system directory", r.display()),
                ));
            }
        }
        for (path, d) in dirs {
            if !d.is_absolute() || has_parent(d) {
                out.push(issue(
                    path,
                    format!("{} must be an absolute path without '..'", d.display()),
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
                    format!("{} is inside the system directory {f}", d.display()),
                ));
                continue;
            }
            if self.data_dir.is_absolute()
                && (d.starts_with(&self.data_dir) || self.data_dir.starts_with(d))
            {
                out.push(issue(
                    path,
                    format!(
                        "{} overlaps SKOS's own data dir {}",
                        d.display(),
                        self.data_dir.display()
                    ),
                ));
                continue;
            }
            if !st
                .allowed_roots
                .iter()
                .any(|r| d.starts_with(r) && d != r.as_path())
            {
                out.push(issue(
                    path,
                    format!(
                        "{} is not inside an allowed root (storage.allowed_roots)",
                        d.display()
                    ),
                ));
            }
        }
        for (i, m) in st.mounts.iter().enumerate() {
            if !m.is_absolute() {
                out.push(issue(
                    format!("storage.mounts[{i}]"),
                    format!("{} must be absolute", m.display()),
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
        out
    }
}

fn has_parent(p: &Path) -> bool {
    p.components().any(|c| matches!(c, Component::ParentDir))
}

/// A configured path that must stay inside its root: relative, no `..`.
pub fn relative_inside(p: &Path) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("{} must not contain '..'", p.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{} must be relative to the cgroup root",
                    p.display()
                ))
            }
        }
    }
    Ok(())
}

/// False for NaN too.
fn non_negative(v: f64) -> bool {
    v.partial_cmp(&0.0).is_some_and(|o| o.is_ge())
}

/// False for NaN too.
fn ascending(low: f64, high: f64) -> bool {
    low.partial_cmp(&high).is_some_and(|o| o.is_lt())
}

fn check_thresholds(out: &mut Vec<ConfigIssue>, prefix: &str, t: &Thresholds) {
    for (name, v) in [
        ("warning", t.warning),
        ("critical", t.critical),
        ("emergency", t.emergency),
    ] {
        if !v.is_finite() {
            out.push(issue(
                format!("{prefix}.thresholds.{name}"),
                "must be a number",
            ));
        }
    }
    if !ascending(t.warning, t.critical) {
        out.push(issue(
            format!("{prefix}.thresholds.critical"),
            format!("must be above warning ({} <= {})", t.critical, t.warning),
        ));
    }
    if !ascending(t.critical, t.emergency) {
        out.push(issue(
            format!("{prefix}.thresholds.emergency"),
            format!("must be above critical ({} <= {})", t.emergency, t.critical),
        ));
    }
}

fn check_table(out: &mut Vec<ConfigIssue>, prefix: &str, t: &ActionTable) {
    check_actions(out, &format!("{prefix}.warning"), &t.warning);
    check_actions(out, &format!("{prefix}.critical"), &t.critical);
    check_actions(out, &format!("{prefix}.emergency"), &t.emergency);
}

fn check_actions(out: &mut Vec<ConfigIssue>, prefix: &str, actions: &[String]) {
    for (i, a) in actions.iter().enumerate() {
        if !catalogue::is_known(a) {
            out.push(issue(
                format!("{prefix}[{i}]"),
                format!("unknown action {a:?}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "
thermal:
  thresholds:
    warning: 75
    critical: 85
    emergency: 95
  actions:
    warning:
      - throttle_10
    critical:
      - throttle_50
      - redistribute
    emergency:
      - shutdown_non_essential
      - failover
";

    #[test]
    fn seed_config_parses_to_defaults_but_for_its_workload_actions() {
        let cfg = Config::from_yaml(SEED).unwrap();
        let mut want = Config::default();
        want.thermal.actions.critical = strings(&["throttle_50", "redistribute"]);
        want.thermal.actions.emergency = strings(&["shutdown_non_essential", "failover"]);
        assert_eq!(cfg, want);
    }

    #[test]
    fn empty_file_is_defaults_with_all_four_tables() {
        let cfg = Config::from_yaml("").unwrap();
        assert_eq!(cfg.thermal.actions.critical, vec!["throttle_50"]);
        assert_eq!(
            cfg.storage.actions.emergency,
            vec!["emergency_cleanup", "alert_human"]
        );
        assert_eq!(
            cfg.mesh.actions["tunnel_down"],
            vec!["restart_wireguard", "regenerate_config"]
        );
        assert_eq!(cfg.loop_.actions["depth_exceeded"], vec!["circuit_break"]);
        assert_eq!(cfg.loop_.max_depth, 10);
        assert_eq!(cfg.circuit_breaker.max_failures, 5);
        assert_eq!(cfg.agent.heartbeat_interval, 10.0);
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../../../config.example.yaml");
        Config::from_yaml(text).unwrap();
    }

    #[test]
    fn every_error_has_its_key_path() {
        let text = "
thermal:
  thresholds: {warning: 90, critical: 85, emergency: 95}
  actions:
    critical: [throttle_50, launch_missiles]
  colour: blue
coordinator:
  heartbeat_timeout: soon
storage:
  thresholds: {warning: 80, critical: 90, emergency: 95}
mystery: 1
node: {name: 'bad.name'}
";
        let errs = Config::from_yaml(text).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "thermal.colour",
            "coordinator.heartbeat_timeout",
            "mystery",
            "node.name",
            "thermal.thresholds.critical",
            "thermal.actions.critical[1]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:?}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let mut cfg = Config::from_yaml(SEED).unwrap();
        let env = |k: &str| match k {
            "WARNING_TEMP" => Some("70".to_string()),
            "NODE_NAME" => Some("lyra".to_string()),
            "HEARTBEAT_TIMEOUT" => Some("3".to_string()),
            "SKOS_SYSFS_ROOT" => Some("/tmp/fake".to_string()),
            _ => None,
        };
        assert!(cfg.apply_env(env).is_empty());
        assert_eq!(cfg.thermal.thresholds.warning, 70.0);
        assert_eq!(cfg.node.name.as_str(), "lyra");
        assert_eq!(cfg.coordinator.heartbeat_timeout, 3.0);
        assert_eq!(cfg.sysfs_root, PathBuf::from("/tmp/fake"));
    }

    #[test]
    fn bad_env_is_reported_by_name() {
        let mut cfg = Config::default();
        let errs = cfg.apply_env(|k| match k {
            "CRITICAL_TEMP" => Some("hot".into()),
            "NODE_NAME" => Some("a b".into()),
            _ => None,
        });
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"env:CRITICAL_TEMP"));
        assert!(paths.contains(&"env:NODE_NAME"));
    }

    #[test]
    fn cgroup_paths_must_stay_inside() {
        let text = "thermal: {throttle: {cgroups: ['../../etc', '/abs', 'skos.slice/work']}}";
        let errs = Config::from_yaml(text).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].path, "thermal.throttle.cgroups[0]");
    }

    #[test]
    fn storage_dirs_must_be_safe() {
        let text = "
data_dir: /srv/skos
storage:
  temp: {dirs: [/tmp/app, /, /etc/app, relative/dir, /srv/skos/tmp, /opt/../etc]}
  logs: {dirs: [/var/log/app, /root/logs]}
  archive: {dirs: [/data/old], destination: /mnt/archive}
";
        let errs = Config::from_yaml(text).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "storage.temp.dirs[1]",
                "storage.temp.dirs[2]",
                "storage.temp.dirs[3]",
                "storage.temp.dirs[4]",
                "storage.temp.dirs[5]",
                "storage.logs.dirs[1]",
            ],
            "{errs:?}"
        );
        assert!(errs[3].message.contains("data dir"));
        assert!(errs[5].message.contains("allowed root"));
    }

    #[test]
    fn nats_secrets_never_appear_and_auth_is_one_method() {
        let cfg = Config::from_yaml("nats: {user: u, password: pw5ecret}").unwrap();
        assert!(!format!("{cfg:?}").contains("pw5ecret"));
        let cfg = Config::from_yaml("nats: {token: t0k3n}").unwrap();
        assert!(!format!("{cfg:?}").contains("t0k3n"));
        let errs =
            Config::from_yaml("nats: {token: t, nkey_seed_file: /x.nk, user: u}").unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["nats", "nats.password"]);
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let text = "storage:\n  notify:\n    webhook: {url: 'https://hooks.example/services/T0K3N', headers: {Authorization: 'Bearer s3cret'}}\n    email: {password: hunter2, to: [ops@example.org]}\n";
        let cfg = Config::from_yaml(text).unwrap();
        let dbg = format!("{cfg:?}");
        for secret in ["T0K3N", "s3cret", "hunter2"] {
            assert!(!dbg.contains(secret), "{secret} leaked: {dbg}");
        }
        assert!(dbg.contains("hooks.example"));
    }

    #[test]
    fn malformed_yaml_is_located() {
        let errs = Config::from_yaml("thermal: [unclosed").unwrap_err();
        assert!(errs[0].path.starts_with("line"), "{errs:?}");
    }
}
