//! `config.yaml`: the seed's shape, its healing tables as built-in defaults.
//!
//! Precedence: built-in defaults < config file < environment < command-line
//! flags. Parsing and checking are pure: the caller reads the file and hands
//! over the environment as a lookup function. Every problem is reported with
//! its key path (`thermal.thresholds.critical`) or variable (`env:WARNING_TEMP`).
//!
//! Each top-level section is a [`Section`] in its own file (`general.rs`,
//! `node.rs`, `nats.rs`, `agent.rs`, `agents.rs`, `fleet.rs` (`nodes` and
//! `failover`), `coordinator.rs`, `breaker.rs`, `thermal.rs`, `storage.rs`,
//! `mesh.rs`, `loops.rs`, `trust.rs`, `http.rs`, `learning.rs`,
//! `workloads.rs`; `levels.rs` holds what thermal and
//! storage share, `validate.rs` the validators of single values, `seed.rs`
//! the seed's names for keys SKOS spells otherwise). [`Config::from_yaml`]
//! reads and [`Config::check`] checks every top-level key through one
//! table, [`SECTIONS`].
//!
//! Besides errors, a file may draw warnings ([`Config::warnings`]): a key
//! of the seed that SKOS accepts but does not apply as the seed did, each
//! saying what SKOS does instead. A file with warnings loads.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::node::NodeName;

mod agent;
mod agents;
mod audit;
mod breaker;
mod coordinator;
mod fleet;
mod general;
mod http;
mod learning;
mod levels;
mod loops;
mod mesh;
mod nats;
mod node;
mod seed;
mod storage;
mod thermal;
mod trust;
mod validate;
mod workloads;

pub use agent::AgentSection;
pub use agents::{AgentsSection, AntibodyTimers};
pub use audit::{AuditConfig, CHECKPOINT_MINUTES, RETENTION_DAYS, SEGMENT_BYTES, SEGMENT_HOURS};
pub use breaker::BreakerConfig;
pub use coordinator::CoordinatorSection;
pub use fleet::{
    is_service_name, DrainCommand, FailbackMode, FleetNodes, MinHealthySpec, NodeSpec,
    OrchestratorSpec, SpareConfig, APPROVABLE_PLANS, MAX_SERVICE_NAME_LEN, NODE_PLACEHOLDER,
};
pub use general::{GeneralSection, SKOS_VERSION};
pub use http::{HttpConfig, HttpListen, HttpTls, DEFAULT_HTTP_LISTEN};
pub use learning::{LearningConfig, LEARNABLE_KINDS};
pub use levels::{ActionTable, LevelHold, Thresholds};
pub use loops::{
    BreakMode, ChainLimits, Condition, CycleRule, GroupLimits, KindLimits, LoopConfig,
    ProcessGroup, RateRule,
};
pub use mesh::{
    FailoverConfig, MeshConfig, MeshInterface, MeshPeer, MeshTools, ProbeConfig, ProbeMethod,
    RestartMethod, RouteVia,
};
pub use nats::{NatsSection, NatsTls};
pub use node::NodeSection;
pub use seed::{SeedKey, SEED_KEYS};
pub use storage::{
    ArchiveConfig, EmailConfig, LogCleanup, NotifyConfig, StorageConfig, TempCleanup, WebhookConfig,
};
pub use thermal::{GpuConfig, PredictConfig, SourcesConfig, ThermalConfig, ThrottleConfig};
pub use trust::TrustConfig;
pub use validate::{
    endpoint, interface_name, is_wg_key, parse_cidr, relative_inside, sensor_name, valid_kind,
    InvalidValue, MAX_KIND_LEN,
};
pub use workloads::{
    AgentWorkloads, DockerHost, DriverKind, HealthCheck, HealthProbe, StopSignal, WorkloadSpec,
    WorkloadsConfig, DEFAULT_DOCKER_HOST,
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
    /// The seed's general settings (version stamp, audit retention).
    pub general: GeneralSection,
    /// How the audit trail is kept compact: segments, retention.
    pub audit: AuditConfig,
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
    /// The seed's timers per antibody.
    pub agents: AgentsSection,
    /// The fleet: each node's role and home services.
    pub nodes: FleetNodes,
    /// Hot spares and the order services move in.
    pub failover: SpareConfig,
    pub coordinator: CoordinatorSection,
    pub circuit_breaker: BreakerConfig,
    pub thermal: ThermalConfig,
    pub storage: StorageConfig,
    pub mesh: MeshConfig,
    #[serde(rename = "loop")]
    pub loop_: LoopConfig,
    pub trust: TrustConfig,
    /// The operator's HTTP API, metrics and live page.
    pub http: HttpConfig,
    pub learning: LearningConfig,
    /// What runs on the nodes and can be started, stopped and checked.
    pub workloads: WorkloadsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            general: GeneralSection::default(),
            audit: AuditConfig::default(),
            node: NodeSection::default(),
            nats: NatsSection::default(),
            data_dir: PathBuf::from("./skos-data"),
            sysfs_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
            log_level: "INFO".into(),
            dry_run: false,
            agent: AgentSection::default(),
            agents: AgentsSection::default(),
            nodes: FleetNodes::default(),
            failover: SpareConfig::default(),
            coordinator: CoordinatorSection::default(),
            circuit_breaker: BreakerConfig::default(),
            thermal: ThermalConfig::default(),
            storage: StorageConfig::default(),
            mesh: MeshConfig::default(),
            loop_: LoopConfig::default(),
            trust: TrustConfig::default(),
            http: HttpConfig::default(),
            learning: LearningConfig::default(),
            workloads: WorkloadsConfig::default(),
        }
    }
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One top-level section of `config.yaml`, in its own file: its key, where
/// it lives in a [`Config`], and its semantic checks.
pub trait Section: DeserializeOwned {
    /// The section's key at the top of the file.
    const KEY: &'static str;

    fn get(cfg: &Config) -> &Self;

    fn get_mut(cfg: &mut Config) -> &mut Self;

    /// Push every problem, with its key path, onto `out`.
    fn check(&self, _ctx: &CheckContext<'_>, _out: &mut Vec<ConfigIssue>) {}

    /// Push a warning, with its key path, for every value that is
    /// accepted but not applied as written (saying what SKOS does
    /// instead). `cfg` is the whole config.
    fn warn(&self, _cfg: &Config, _out: &mut Vec<ConfigIssue>) {}
}

/// What a section's check may know of the rest of the config.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// Storage dirs must stay apart from it.
    pub data_dir: &'a Path,
    /// The fleet's nodes: hot spares must be among them.
    pub nodes: &'a FleetNodes,
}

/// How one top-level key is read into a [`Config`] and checked.
pub struct TopLevel {
    pub key: &'static str,
    read: fn(&mut Config, serde_yaml_ng::Value, &mut Vec<ConfigIssue>),
    check: fn(&Config, &mut Vec<ConfigIssue>),
    warn: fn(&Config, &mut Vec<ConfigIssue>),
}

impl TopLevel {
    const fn section<S: Section>() -> TopLevel {
        TopLevel {
            key: S::KEY,
            read: read_section::<S>,
            check: check_section::<S>,
            warn: warn_section::<S>,
        }
    }
}

fn read_section<S: Section>(
    cfg: &mut Config,
    value: serde_yaml_ng::Value,
    issues: &mut Vec<ConfigIssue>,
) {
    if let Some(v) = section(S::KEY, value, issues) {
        *S::get_mut(cfg) = v;
    }
}

fn check_section<S: Section>(cfg: &Config, out: &mut Vec<ConfigIssue>) {
    let ctx = CheckContext {
        data_dir: &cfg.data_dir,
        nodes: &cfg.nodes,
    };
    S::get(cfg).check(&ctx, out);
}

fn warn_section<S: Section>(cfg: &Config, out: &mut Vec<ConfigIssue>) {
    S::get(cfg).warn(cfg, out);
}

fn no_check(_: &Config, _: &mut Vec<ConfigIssue>) {}

/// Every top-level key, in the order of the file's sections: the sections,
/// and the plain values (`data_dir`, `log_level`, ...) that are checked here.
pub const SECTIONS: &[TopLevel] = &[
    TopLevel::section::<GeneralSection>(),
    TopLevel::section::<AuditConfig>(),
    TopLevel::section::<NodeSection>(),
    TopLevel::section::<NatsSection>(),
    TopLevel {
        key: "data_dir",
        read: |cfg, v, issues| read_value(&mut cfg.data_dir, "data_dir", v, issues),
        check: no_check,
        warn: no_check,
    },
    TopLevel {
        key: "sysfs_root",
        read: |cfg, v, issues| read_value(&mut cfg.sysfs_root, "sysfs_root", v, issues),
        check: no_check,
        warn: no_check,
    },
    TopLevel {
        key: "proc_root",
        read: |cfg, v, issues| read_value(&mut cfg.proc_root, "proc_root", v, issues),
        check: no_check,
        warn: no_check,
    },
    TopLevel {
        key: "log_level",
        read: |cfg, v, issues| read_value(&mut cfg.log_level, "log_level", v, issues),
        check: check_log_level,
        warn: no_check,
    },
    TopLevel {
        key: "dry_run",
        read: |cfg, v, issues| read_value(&mut cfg.dry_run, "dry_run", v, issues),
        check: no_check,
        warn: no_check,
    },
    TopLevel::section::<AgentSection>(),
    TopLevel::section::<AgentsSection>(),
    TopLevel::section::<FleetNodes>(),
    TopLevel::section::<SpareConfig>(),
    TopLevel::section::<CoordinatorSection>(),
    TopLevel::section::<BreakerConfig>(),
    TopLevel::section::<ThermalConfig>(),
    TopLevel::section::<StorageConfig>(),
    TopLevel::section::<MeshConfig>(),
    TopLevel::section::<LoopConfig>(),
    TopLevel::section::<TrustConfig>(),
    TopLevel::section::<HttpConfig>(),
    TopLevel::section::<LearningConfig>(),
    TopLevel::section::<WorkloadsConfig>(),
];

fn read_value<T: DeserializeOwned>(
    slot: &mut T,
    key: &str,
    value: serde_yaml_ng::Value,
    issues: &mut Vec<ConfigIssue>,
) {
    if let Some(v) = section(key, value, issues) {
        *slot = v;
    }
}

fn check_log_level(cfg: &Config, out: &mut Vec<ConfigIssue>) {
    if !["TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR"]
        .contains(&cfg.log_level.to_ascii_uppercase().as_str())
    {
        out.push(issue(
            "log_level",
            format!(
                "{:?} is not one of TRACE, DEBUG, INFO, WARNING, ERROR",
                cfg.log_level
            ),
        ));
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
            issues.push(issue(path, plain_types(&e.into_inner().to_string())));
            None
        }
    }
}

/// For a YAML "duplicate entry with key" error reported at the start of
/// its mapping (`line`, `column`, from 1): the lines (from 1) of the key's
/// first and second entries in that mapping, found as lines indented like
/// the mapping that start with the key and a colon.
fn duplicate_key_lines(
    text: &str,
    message: &str,
    line: usize,
    column: usize,
) -> Option<(usize, usize)> {
    let key = message
        .split("duplicate entry with key \"")
        .nth(1)?
        .split('"')
        .next()?;
    let indent = column.saturating_sub(1);
    let mut found = text
        .lines()
        .enumerate()
        .skip(line.saturating_sub(1))
        .filter(|(_, l)| {
            let body = l.trim_start_matches(' ');
            l.len() - body.len() == indent
                && [
                    format!("{key}:"),
                    format!("\"{key}\":"),
                    format!("'{key}':"),
                ]
                .iter()
                .any(|k| body.starts_with(k.as_str()))
        })
        .map(|(i, _)| i + 1);
    Some((found.next()?, found.next()?))
}

/// A deserializer's message with Rust's type names (`expected f64`) in
/// words an operator reads (`expected a number`).
fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 10] = [
        ("f64", "a number"),
        ("f32", "a number"),
        ("usize", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("u32", "a whole number, 0 or more"),
        ("u16", "a whole number, 0 or more"),
        ("u8", "a whole number, 0 or more"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("bool", "true or false"),
    ];
    let mut out = message.to_string();
    for (rust, plain) in WORDS {
        let from = format!("expected {rust}");
        let mut at = 0;
        while let Some(i) = out[at..].find(&from).map(|i| i + at) {
            let end = i + from.len();
            let whole = out[end..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric());
            if whole {
                out.replace_range(i..end, &format!("expected {plain}"));
                at = i + "expected ".len() + plain.len();
            } else {
                at = end;
            }
        }
    }
    out
}

impl Config {
    /// Parse a config file's text. Every top-level section is read on its
    /// own, so one bad section does not hide errors in the others. Returns
    /// the config and all problems found (parse and semantic).
    pub fn from_yaml(text: &str) -> Result<Config, Vec<ConfigIssue>> {
        let root: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let message = e.to_string();
                let at = match e.location() {
                    Some(l) => match duplicate_key_lines(text, &message, l.line(), l.column()) {
                        // The parser names where the mapping starts: say
                        // where the key comes again.
                        Some((first, again)) => {
                            return Err(vec![issue(
                                format!("line {again}"),
                                format!(
                                    "{} (first at line {first})",
                                    message.split(" at line ").next().unwrap_or(&message)
                                ),
                            )]);
                        }
                        None => format!("line {} column {}", l.line(), l.column()),
                    },
                    None => "(document)".into(),
                };
                // The place is said once, before the message.
                let said = format!(" at {at}");
                let message = message
                    .strip_suffix(&said)
                    .map(str::to_string)
                    .unwrap_or(message);
                return Err(vec![issue(at, message)]);
            }
        };
        let mut issues = Vec::new();
        let mut cfg = Config::default();
        let mut map = match root {
            serde_yaml_ng::Value::Null => serde_yaml_ng::Mapping::new(),
            serde_yaml_ng::Value::Mapping(m) => m,
            _ => {
                return Err(vec![issue(
                    "(root)",
                    "the config must be a mapping of sections",
                )])
            }
        };
        // The seed's names for SKOS keys, moved to where SKOS reads them.
        let moved = seed::move_seed_keys(&mut map, &mut issues);
        let heartbeat_given = seed::given(&map, "agent.heartbeat_interval");
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_owned) else {
                issues.push(issue("(root)", format!("non-string key {key:?}")));
                continue;
            };
            match SECTIONS.iter().find(|s| s.key == key) {
                Some(s) => (s.read)(&mut cfg, value, &mut issues),
                None => issues.push(issue(key.clone(), "unknown key")),
            }
        }
        // One heartbeat per node: as often as the most demanding antibody
        // it runs asks, unless the file says how often.
        if !heartbeat_given {
            if let Some(s) = cfg.agents.shortest_heartbeat(&cfg.agent.antibodies) {
                cfg.agent.heartbeat_interval = s;
            }
        }
        issues.extend(cfg.check());
        seed::rename_issues(&mut issues, &moved);
        let mut seen = Vec::new();
        issues.retain(|i| {
            let new = !seen.contains(i);
            seen.push(i.clone());
            new
        });
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(issues)
        }
    }

    /// The environment variables [`Config::apply_env`] reads, each with the
    /// key it sets.
    pub const ENV_KEYS: &'static [(&'static str, &'static str)] = &[
        ("HEARTBEAT_TIMEOUT", "coordinator.heartbeat_timeout"),
        ("HEARTBEAT_INTERVAL", "agent.heartbeat_interval"),
        ("MONITOR_INTERVAL", "agent.monitor_interval"),
        ("WARNING_TEMP", "thermal.thresholds.warning"),
        ("CRITICAL_TEMP", "thermal.thresholds.critical"),
        ("EMERGENCY_TEMP", "thermal.thresholds.emergency"),
        ("NODE_NAME", "node.name"),
        ("NATS_URL", "nats.url"),
        ("LOG_LEVEL", "log_level"),
        ("SKOS_DATA_DIR", "data_dir"),
        ("SKOS_SYSFS_ROOT", "sysfs_root"),
        ("SKOS_PROC_ROOT", "proc_root"),
        ("DOCKER_HOST", "agent.workloads.docker_host"),
    ];

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
        if env("MONITOR_INTERVAL").is_some() {
            // The environment's interval is every antibody's.
            for t in self.agents.0.values_mut() {
                t.monitor_interval_seconds = None;
            }
        }
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
        if let Some(v) = env("DOCKER_HOST") {
            self.agent.workloads.docker_host = v;
        }
        issues.extend(self.check());
        issues
    }

    /// The warnings of a config that loads: each value accepted but not
    /// applied as written, with its key path and what SKOS does instead,
    /// in the order of [`SECTIONS`]. Callers say them (`skos config
    /// check` prints them; the daemons log them at start).
    pub fn warnings(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        for s in SECTIONS {
            (s.warn)(self, &mut out);
        }
        out
    }

    /// Semantic checks, every problem with its key path: each section's in
    /// turn, in the order of [`SECTIONS`].
    pub fn check(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        for s in SECTIONS {
            (s.check)(self, &mut out);
        }
        // Every number read as seconds, degrees, a share or a rate is
        // bounded, whatever its section checks, so no time arithmetic on
        // it can overflow (a `command_deadline` of 1e15 once panicked the
        // coordinator's task).
        if let Ok(v) = serde_json::to_value(self) {
            let mut unbounded = Vec::new();
            bounded_numbers(&v, "", &mut unbounded);
            // Once per key: a section may have said it already.
            unbounded.retain(|i| !out.iter().any(|o| o.path == i.path));
            out.extend(unbounded);
        }
        out
    }
}

/// The largest size of a number read as a decimal (seconds, degrees,
/// percents, rates): about 31 years in seconds.
pub const MAX_DECIMAL: f64 = 1e9;

/// Push an issue for every decimal number in `v` (a serialised config)
/// larger than [`MAX_DECIMAL`] in size, named by its key path. Integers
/// (counts, byte sizes) are left to their sections.
fn bounded_numbers(v: &serde_json::Value, path: &str, out: &mut Vec<ConfigIssue>) {
    match v {
        serde_json::Value::Number(n)
            if n.is_f64() && n.as_f64().is_some_and(|x| x.abs() > MAX_DECIMAL) =>
        {
            out.push(issue(
                path,
                format!("must be at most {MAX_DECIMAL:e} in size, got {n}"),
            ));
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                bounded_numbers(x, &at, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                bounded_numbers(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// False for NaN too.
fn non_negative(v: f64) -> bool {
    v.partial_cmp(&0.0).is_some_and(|o| o.is_ge())
}

/// False for NaN too.
fn ascending(low: f64, high: f64) -> bool {
    low.partial_cmp(&high).is_some_and(|o| o.is_lt())
}

fn positive_seconds(out: &mut Vec<ConfigIssue>, path: &str, v: f64) {
    if !(v.is_finite() && v > 0.0) {
        out.push(issue(
            path,
            format!("must be a positive number of seconds, got {v}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every section is read into its place in `Config` and checked under
    /// its own key: a value set in the file is the value in force, and a
    /// bad one is reported at its key path.
    #[test]
    fn every_section_is_read_and_checked_in_its_place() {
        let cfg = Config::from_yaml(
            "node: {name: lyra}\nnats: {max_message_bytes: 2048}\nagent: {monitor_interval: 2}\n\
coordinator: {verify_within: 7}\ncircuit_breaker: {max_failures: 2}\nthermal: {hysteresis: 4}\n\
storage: {hysteresis: 1}\ntrust: {replay_window: 9}\nmesh: {stale_after: 99}\nloop: {max_depth: 3}\n\
dry_run: true\nlog_level: DEBUG\n",
        )
        .unwrap();
        assert_eq!(cfg.node.name.as_str(), "lyra");
        assert_eq!(cfg.nats.max_message_bytes, 2048);
        assert_eq!(cfg.agent.monitor_interval, 2.0);
        assert_eq!(cfg.coordinator.verify_within, 7.0);
        assert_eq!(cfg.circuit_breaker.max_failures, 2);
        assert_eq!(cfg.thermal.hysteresis, 4.0);
        assert_eq!(cfg.storage.hysteresis, 1.0);
        assert_eq!(cfg.trust.replay_window, 9.0);
        assert_eq!(cfg.mesh.stale_after, 99.0);
        assert_eq!(cfg.loop_.max_depth, 3);
        assert!(cfg.dry_run);

        for (yaml, path) in [
            ("agent: {monitor_interval: 0}", "agent.monitor_interval"),
            (
                "coordinator: {verify_within: -1}",
                "coordinator.verify_within",
            ),
            (
                "circuit_breaker: {window_seconds: 0}",
                "circuit_breaker.window_seconds",
            ),
            (
                "agent: {antibodies: [immune_to_all]}",
                "agent.antibodies[0]",
            ),
        ] {
            let issues = Config::from_yaml(yaml).unwrap_err();
            assert!(issues.iter().any(|i| i.path == path), "{yaml}: {issues:?}");
        }
    }

    #[test]
    fn issues_read_as_path_and_message() {
        let i = issue("thermal.hysteresis", "must be zero or more");
        assert_eq!(i.to_string(), "thermal.hysteresis: must be zero or more");
    }

    #[test]
    fn environment_numbers_must_be_finite() {
        let mut cfg = Config::default();
        let issues = cfg.apply_env(|k| (k == "WARNING_TEMP").then(|| "inf".to_string()));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, "env:WARNING_TEMP");
        assert_eq!(cfg.thermal.thresholds.warning, 75.0);
        let issues = cfg.apply_env(|k| (k == "WARNING_TEMP").then(|| " 70.5 ".to_string()));
        assert!(issues.is_empty());
        assert_eq!(cfg.thermal.thresholds.warning, 70.5);
    }

    #[test]
    fn intervals_must_be_positive_seconds() {
        for (bad, ok) in [(0.0, 0.001), (-1.0, 30.0), (f64::NAN, 5.0)] {
            let mut cfg = Config::default();
            cfg.agent.heartbeat_interval = bad;
            let issues = cfg.check();
            assert!(
                issues.iter().any(|i| i.path == "agent.heartbeat_interval"),
                "{bad}: {issues:?}"
            );
            cfg.agent.heartbeat_interval = ok;
            assert!(cfg
                .check()
                .iter()
                .all(|i| i.path != "agent.heartbeat_interval"));
        }
    }

    #[test]
    fn a_section_error_names_its_key_path() {
        let err = Config::from_yaml("thermal:\n  thresholds: 5\n").unwrap_err();
        assert!(
            err.iter().any(|i| i.path == "thermal.thresholds"),
            "{err:?}"
        );
        let err = Config::from_yaml("thermal: [1, 2]\n").unwrap_err();
        assert!(err.iter().any(|i| i.path == "thermal"), "{err:?}");
    }

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

    /// The seed's own `config.yaml`, byte for byte.
    const SEED_FILE: &str = include_str!("../../tests/fixtures/seed-config.yaml");

    /// Every key of the seed's file lands where SKOS reads it: the whole
    /// config is the defaults but for what the file sets, and what SKOS
    /// does not apply as the seed did is said in a warning.
    #[test]
    fn the_seed_config_file_loads_each_key_in_its_place() {
        let cfg = Config::from_yaml(SEED_FILE).unwrap_or_else(|e| panic!("{e:#?}"));
        let node = |n: &str| NodeName::parse(n).unwrap();
        let mut want = Config::default();
        want.general.version = Some("0.1.0".into());
        want.general.audit_retention_days = Some(30);
        want.log_level = "INFO".into();
        want.nats.url = "nats://localhost:4222".into();
        want.nats.audit_stream = "SKOS_AUDIT".into();
        want.nats.max_reconnects = Some(10);
        want.nats.reconnect_wait_seconds = Some(2.0);
        for (name, role, services) in [
            (
                "nova",
                "primary",
                &["qwen", "synthesis-core", "docker-swarm"][..],
            ),
            ("lyra", "secondary", &["backup", "monitoring"]),
            ("athena", "storage", &["minio", "postgres"]),
        ] {
            want.nodes.0.insert(
                node(name),
                NodeSpec {
                    role: role.into(),
                    services: strings(services),
                    orchestrator: None,
                },
            );
        }
        for (antibody, monitor, heartbeat) in [
            ("thermal_sentinel", 5.0, 10.0),
            ("storage_watcher", 60.0, 30.0),
            ("mesh_healer", 10.0, 15.0),
            ("loop_breaker", 1.0, 5.0),
        ] {
            want.agents.0.insert(
                antibody.into(),
                AntibodyTimers {
                    monitor_interval_seconds: Some(monitor),
                    heartbeat_interval_seconds: Some(heartbeat),
                },
            );
        }
        // One heartbeat for the antibodies this agent runs (the default
        // thermal_sentinel alone): its 10 s.
        want.agent.heartbeat_interval = 10.0;
        want.thermal.actions.critical = strings(&["throttle_50", "redistribute"]);
        want.thermal.actions.emergency = strings(&["shutdown_non_essential", "failover"]);
        // thermal.cooldown_seconds and the sentinel's alert_cooldown_seconds.
        want.thermal.cooldown = 60.0;
        want.storage.mounts = ["/var/log", "/var/lib/docker", "/data"]
            .iter()
            .map(PathBuf::from)
            .collect();
        want.mesh.reconnect_attempts = 3;
        want.mesh.reconnect_delay_seconds = 5.0;
        want.mesh.actions.insert(
            "peer_unreachable".into(),
            strings(&["ping_peer", "failover_route"]),
        );
        // loop.max_chain_depth
        want.loop_.max_depth = 10;
        want.loop_.max_iterations = 100;
        want.circuit_breaker.max_failures = 5;
        want.circuit_breaker.reset_timeout_seconds = 300.0;
        want.failover = SpareConfig {
            hot_spare_nodes: vec![node("lyra"), node("athena")],
            failover_delay_seconds: 10.0,
            services_priority: strings(&["qwen", "synthesis-core", "docker-swarm"]),
            ..SpareConfig::default()
        };
        assert_eq!(cfg, want);

        assert_eq!(cfg.home_of("synthesis-core"), Some(&node("nova")));
        assert_eq!(cfg.home_of("postgres"), Some(&node("athena")));
        assert_eq!(cfg.role_of(&node("lyra")), Some("secondary"));
        assert_eq!(cfg.service_priority("docker-swarm"), Some(3));
        assert_eq!(cfg.monitor_interval_of("thermal_sentinel"), 5.0);
        assert_eq!(cfg.monitor_interval_of("storage_watcher"), 60.0);

        let warnings: Vec<String> = cfg.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "nats.max_reconnects: not applied: SKOS keeps reconnecting for as long as it runs (after 10 attempts an agent that gave up would stop healing until restarted)",
                "agents.loop_breaker: loop_breaker is not in agent.antibodies (thermal_sentinel): its settings here are unused until it is enabled there",
                "agents.mesh_healer: mesh_healer is not in agent.antibodies (thermal_sentinel): its settings here are unused until it is enabled there",
                "agents.storage_watcher: storage_watcher is not in agent.antibodies (thermal_sentinel): its settings here are unused until it is enabled there",
            ]
        );
    }

    #[test]
    fn the_seed_config_with_every_antibody_running_beats_at_the_shortest_interval() {
        let text = SEED_FILE.replace(
            "# Agent configuration\n",
            "agent: {antibodies: [thermal_sentinel, storage_watcher, mesh_healer, loop_breaker]}\n",
        );
        let cfg = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(cfg.agent.heartbeat_interval, 5.0, "the loop breaker's");
        let paths: Vec<String> = cfg.warnings().into_iter().map(|w| w.path).collect();
        assert_eq!(
            paths,
            [
                "nats.max_reconnects",
                "agents.mesh_healer.heartbeat_interval_seconds",
                "agents.storage_watcher.heartbeat_interval_seconds",
                "agents.thermal_sentinel.heartbeat_interval_seconds",
            ]
        );
        // A version stamp other than this SKOS's is said to be unused.
        let cfg = Config::from_yaml(&SEED_FILE.replace("\"0.1.0\"", "\"0.0.9\"")).unwrap();
        assert_eq!(cfg.warnings()[0].path, "general.version");
        assert!(cfg.warnings()[0].message.contains("not used"));
    }

    #[test]
    fn the_environment_interval_is_every_antibodys() {
        let mut cfg = Config::from_yaml(SEED_FILE).unwrap();
        let issues = cfg.apply_env(|k| (k == "MONITOR_INTERVAL").then(|| "3".to_string()));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(cfg.monitor_interval_of("storage_watcher"), 3.0);
        assert_eq!(cfg.monitor_interval_of("thermal_sentinel"), 3.0);
    }

    #[test]
    fn an_audit_stream_other_than_skos_audit_is_refused() {
        assert!(paths("nats: {audit_stream: SKOS_AUDIT}").is_empty());
        let errs = Config::from_yaml("nats: {audit_stream: MY_AUDIT}").unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "nats.audit_stream: \"MY_AUDIT\": the audit stream is always SKOS_AUDIT; name it or leave the key out"
        );
        assert!(paths("nats: {reconnect_wait_seconds: 0}").is_empty());
        assert_eq!(
            paths("nats: {reconnect_wait_seconds: -1}"),
            ["nats.reconnect_wait_seconds"]
        );
    }

    #[test]
    fn fleet_safety_keys_are_checked_with_their_paths() {
        let issues = Config::from_yaml(
            "failover: {min_healthy: \"half\", max_concurrent: 0, require_approval: [failover, reboot], approval_timeout_seconds: 0, failback_hold_seconds: -1}",
        )
        .unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "failover.min_healthy",
            "failover.max_concurrent",
            "failover.require_approval[1]",
            "failover.approval_timeout_seconds",
            "failover.failback_hold_seconds",
        ] {
            assert!(paths.contains(&p), "{p} in {issues:?}");
        }
        let cfg = Config::from_yaml("failover: {min_healthy: \"50%\", failback: off}").unwrap();
        assert_eq!(cfg.failover.min_healthy.fraction(), Some(0.5));
        assert_eq!(cfg.failover.failback, FailbackMode::Off);
        let cfg = Config::from_yaml("failover: {min_healthy: 2}").unwrap();
        assert_eq!(cfg.failover.min_healthy, MinHealthySpec::Count(2));
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
    fn every_top_level_key_is_read_and_checked_through_the_table() {
        let value = serde_yaml_ng::to_value(Config::default()).unwrap();
        let mut keys: Vec<String> = value
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        keys.sort();
        let mut table: Vec<String> = SECTIONS.iter().map(|s| s.key.to_string()).collect();
        table.sort();
        assert_eq!(keys, table);
        // A value read through the table lands in its field.
        let cfg = Config::from_yaml("log_level: debug\nloop: {max_depth: 3}\n").unwrap();
        assert_eq!(cfg.log_level, "debug");
        assert_eq!(cfg.loop_.max_depth, 3);
        let errs = Config::from_yaml("log_level: loud\ntrust: {replay_window: -1}\n").unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["log_level", "trust.replay_window"]);
    }

    #[test]
    fn malformed_yaml_is_located() {
        let errs = Config::from_yaml("thermal: [unclosed").unwrap_err();
        assert!(errs[0].path.starts_with("line"), "{errs:?}");
    }

    /// The key paths of the issues `text` raises (none when it loads).
    fn paths(text: &str) -> Vec<String> {
        match Config::from_yaml(text) {
            Ok(_) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| i.path).collect(),
        }
    }

    #[test]
    fn every_decimal_is_bounded_whatever_its_section_checks() {
        for (yaml, key) in [
            (
                "coordinator: {command_deadline: 1e15}",
                "coordinator.command_deadline",
            ),
            ("thermal: {clear_for: 1e12}", "thermal.clear_for"),
            ("storage: {retention: 1e300}", "storage.retention"),
            ("thermal: {hysteresis: 1e10}", "thermal.hysteresis"),
        ] {
            let got = paths(yaml);
            assert!(got.iter().any(|p| p == key), "{yaml}: {got:?}");
        }
        // The largest accepted, and the defaults.
        assert!(paths("thermal: {clear_for: 1e9}").is_empty());
        assert!(Config::default().check().is_empty());
    }

    /// A YAML syntax error says where once, as its path.
    #[test]
    fn a_syntax_error_says_where_once() {
        let issues = Config::from_yaml("agent:\n  heartbeat_interval: 1\n  a: b: c\n").unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].path.starts_with("line 3 column "), "{issues:?}");
        assert!(!issues[0].message.contains(" at line "), "{issues:?}");
        assert!(!issues[0].message.is_empty());
    }

    #[test]
    fn a_duplicate_key_is_named_where_it_comes_again() {
        let top =
            "thermal:\n  clear_for: 5\nagent:\n  heartbeat_interval: 1\nthermal:\n  cooldown: 3\n";
        let issues = Config::from_yaml(top).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, "line 5");
        assert!(
            issues[0].message.contains("\"thermal\"")
                && issues[0].message.contains("first at line 1"),
            "{issues:?}"
        );
        let nested = "thermal:\n  clear_for: 5\n  clear_for: 6\n";
        let issues = Config::from_yaml(nested).unwrap_err();
        assert_eq!(issues[0].path, "line 3", "{issues:?}");
        assert!(issues[0].message.contains("first at line 2"), "{issues:?}");
    }

    #[test]
    fn wrong_types_are_said_in_plain_words() {
        let issues = Config::from_yaml(
            "thermal: {clear_for: abc}\nagent: {heartbeat_interval: true}\nnats: {max_message_bytes: -5}\n",
        )
        .unwrap_err();
        let said: Vec<String> = issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect();
        assert!(
            said.contains(
                &"thermal.clear_for: invalid type: string \"abc\", expected a number".to_string()
            ),
            "{said:?}"
        );
        assert!(
            said.iter()
                .any(|m| m.starts_with("agent.heartbeat_interval")
                    && m.ends_with("expected a number")),
            "{said:?}"
        );
        assert!(
            said.iter().any(|m| m.starts_with("nats.max_message_bytes")
                && m.ends_with("expected a whole number, 0 or more")),
            "{said:?}"
        );
        assert_eq!(plain_types("expected u64x"), "expected u64x");
        assert_eq!(plain_types("expected bool"), "expected true or false");
    }

    #[test]
    fn max_deadline_seconds_is_bounded() {
        assert!(paths("trust: {max_deadline_seconds: 900}").is_empty());
        for bad in ["0", "-1", "1e15", ".nan", "86401"] {
            assert_eq!(
                paths(&format!("trust: {{max_deadline_seconds: {bad}}}")),
                ["trust.max_deadline_seconds"],
                "{bad}"
            );
        }
    }

    /// `storage: {a: {b: <value>}}` for the dotted key `a.b`.
    fn storage_yaml(key: &str, value: &str) -> String {
        let mut yaml = value.to_string();
        for part in key.rsplit('.') {
            yaml = format!("{{{part}: {yaml}}}");
        }
        format!("storage: {yaml}\n")
    }

    #[test]
    fn trust_keys_are_nkeys_public_keys() {
        let good = format!("U{}23456", "A".repeat(50));
        assert_eq!(good.len(), 56);
        assert!(paths(&format!("trust: {{coordinator_keys: [{good}]}}")).is_empty());
        let lower = format!("U{}", "a".repeat(55));
        let short = &good[..55];
        let long = format!("{good}A");
        let not_u = format!("A{}", &good[1..]);
        let symbol = format!("{}=", &good[..55]);
        for bad in [short, &long, &not_u, &lower, &symbol] {
            let errs =
                Config::from_yaml(&format!("trust: {{coordinator_keys: [{good}, '{bad}']}}"))
                    .unwrap_err();
            assert_eq!(
                errs,
                [issue(
                    "trust.coordinator_keys[1]",
                    format!("{bad:?} is not an nkeys public key (56 characters starting with U)")
                )]
            );
        }
    }

    /// Each node key belongs to a valid node name, is a public key, and
    /// is no coordinator key.
    #[test]
    fn node_keys_are_nkeys_public_keys_of_named_nodes() {
        let good = format!("U{}23456", "A".repeat(50));
        let other = format!("U{}23457", "A".repeat(50));
        assert!(paths(&format!(
            "trust: {{node_keys: {{nova: {good}, lyra: {other}}}, require_node_signatures: true}}"
        ))
        .is_empty());
        let errs = Config::from_yaml("trust: {node_keys: {nova: 'U123'}}").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "trust.node_keys.nova");
        let errs =
            Config::from_yaml(&format!("trust: {{node_keys: {{'a b': {good}}}}}")).unwrap_err();
        assert_eq!(errs[0].path, "trust.node_keys.a b");
        let errs = Config::from_yaml(&format!(
            "trust: {{coordinator_keys: [{good}], node_keys: {{nova: {good}}}}}"
        ))
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "trust.node_keys.nova");
        assert!(errs[0].message.contains("coordinator_keys"), "{errs:?}");
    }

    #[test]
    fn replay_window_may_be_zero_not_negative() {
        assert!(paths("trust: {replay_window: 0}").is_empty());
        for bad in ["-1", ".nan"] {
            let errs = Config::from_yaml(&format!("trust: {{replay_window: {bad}}}")).unwrap_err();
            assert_eq!(
                errs,
                [issue("trust.replay_window", "must be zero or more seconds")],
                "{bad}"
            );
        }
    }

    #[test]
    fn nats_takes_one_auth_method_at_a_time() {
        for one in [
            "{user: u, password: p}",
            "{token: t}",
            "{nkey_seed_file: /etc/skos/node.nk}",
            "{creds_file: /etc/skos/node.creds}",
        ] {
            assert!(paths(&format!("nats: {one}")).is_empty(), "{one}");
        }
        assert_eq!(paths("nats: {token: t, creds_file: /x.creds}"), ["nats"]);
        assert_eq!(
            paths("nats: {user: u, password: p, nkey_seed_file: /x.nk}"),
            ["nats"]
        );
        // A user or a password alone still counts as the user/password method.
        assert_eq!(
            paths("nats: {user: u, token: t}"),
            ["nats", "nats.password"]
        );
        assert_eq!(
            paths("nats: {password: p, creds_file: /x.creds}"),
            ["nats", "nats.password"]
        );
        assert_eq!(paths("nats: {user: u}"), ["nats.password"]);
        assert_eq!(paths("nats: {password: p}"), ["nats.password"]);
    }

    #[test]
    fn nats_tls_client_cert_and_key_go_together() {
        assert!(paths("nats: {tls: {cert_file: /c.pem, key_file: /k.pem}}").is_empty());
        assert!(paths("nats: {tls: {required: true, ca_file: /ca.pem}}").is_empty());
        assert_eq!(
            paths("nats: {tls: {cert_file: /c.pem}}"),
            ["nats.tls.key_file"]
        );
        assert_eq!(
            paths("nats: {tls: {key_file: /k.pem}}"),
            ["nats.tls.key_file"]
        );
    }

    #[test]
    fn nats_message_limit_is_at_least_1024() {
        assert_eq!(
            paths("nats: {max_message_bytes: 1023}"),
            ["nats.max_message_bytes"]
        );
        assert_eq!(
            paths("nats: {max_message_bytes: 0}"),
            ["nats.max_message_bytes"]
        );
        assert!(paths("nats: {max_message_bytes: 1024}").is_empty());
        assert!(paths("nats: {max_message_bytes: 8388608}").is_empty());
    }

    #[test]
    fn nats_debug_shows_settings_but_not_secrets() {
        let cfg =
            Config::from_yaml("nats: {url: 'nats://hub:4222', user: ops, password: pw5ecret}")
                .unwrap();
        let dbg = format!("{:?}", cfg.nats);
        assert!(dbg.contains("nats://hub:4222"), "{dbg}");
        assert!(dbg.contains("\"ops\""), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert!(!dbg.contains("pw5ecret"), "{dbg}");
    }

    #[test]
    fn breaker_needs_one_failure_and_positive_seconds() {
        assert_eq!(
            paths("circuit_breaker: {max_failures: 0}"),
            ["circuit_breaker.max_failures"]
        );
        assert!(paths("circuit_breaker: {max_failures: 1}").is_empty());
        for key in ["window_seconds", "reset_timeout_seconds"] {
            assert_eq!(
                paths(&format!("circuit_breaker: {{{key}: 0}}")),
                [format!("circuit_breaker.{key}")]
            );
            assert!(paths(&format!("circuit_breaker: {{{key}: 0.5}}")).is_empty());
        }
    }

    #[test]
    fn timers_are_positive_finite_seconds() {
        for (section, key) in [
            ("agent", "heartbeat_interval"),
            ("agent", "monitor_interval"),
            ("coordinator", "heartbeat_timeout"),
            ("coordinator", "verify_within"),
            ("coordinator", "command_deadline"),
        ] {
            for bad in ["0", "-1", ".inf", ".nan"] {
                let errs = Config::from_yaml(&format!("{section}: {{{key}: {bad}}}")).unwrap_err();
                assert_eq!(errs.len(), 1, "{section}.{key}: {bad}: {errs:?}");
                assert_eq!(errs[0].path, format!("{section}.{key}"));
                assert!(
                    errs[0]
                        .message
                        .starts_with("must be a positive number of seconds, got"),
                    "{errs:?}"
                );
            }
            assert!(paths(&format!("{section}: {{{key}: 0.01}}")).is_empty());
        }
    }

    #[test]
    fn antibodies_must_be_known_and_built() {
        assert!(paths("agent: {antibodies: [thermal_sentinel]}").is_empty());
        assert!(paths("agent: {antibodies: []}").is_empty());
        assert!(paths("agent: {antibodies: [thermal_sentinel, workloads]}").is_empty());
        let errs = Config::from_yaml("agent: {antibodies: [thermal_sentinel, workloads, zap]}")
            .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["agent.antibodies[2]"]);
        assert!(errs[0].message.starts_with("unknown antibody \"zap\""));
    }

    #[test]
    fn thresholds_must_ascend() {
        for section in ["thermal", "storage"] {
            let t = |w: &str, c: &str, e: &str| {
                paths(&format!(
                    "{section}: {{thresholds: {{warning: {w}, critical: {c}, emergency: {e}}}}}"
                ))
            };
            assert!(t("70", "71", "72").is_empty());
            assert_eq!(
                t("70", "70", "72"),
                [format!("{section}.thresholds.critical")]
            );
            assert_eq!(
                t("70", "72", "72"),
                [format!("{section}.thresholds.emergency")]
            );
            assert_eq!(
                t(".nan", "71", "72"),
                [
                    format!("{section}.thresholds.warning"),
                    format!("{section}.thresholds.critical")
                ]
            );
            assert_eq!(
                t("70", "71", ".inf"),
                [format!("{section}.thresholds.emergency")]
            );
        }
    }

    #[test]
    fn action_tables_name_known_actions() {
        assert_eq!(
            paths("storage: {actions: {warning: [cleanup_temp, nuke]}}"),
            ["storage.actions.warning[1]"]
        );
        assert_eq!(
            paths("thermal: {actions: {emergency: [nuke]}}"),
            ["thermal.actions.emergency[0]"]
        );
        let errs = Config::from_yaml("mesh: {actions: {tunnel_down: [nuke]}}").unwrap_err();
        assert_eq!(
            errs,
            [issue(
                "mesh.actions.tunnel_down[0]",
                format!(
                    "unknown action \"nuke\"; known: {}",
                    crate::catalogue::all()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            )]
        );
    }

    #[test]
    fn thermal_hysteresis_and_holds_are_zero_or_more() {
        assert!(
            paths("thermal: {hysteresis: 0, for: {warning: 0, critical: 0, emergency: 0}}")
                .is_empty()
        );
        assert_eq!(paths("thermal: {hysteresis: -1}"), ["thermal.hysteresis"]);
        for level in ["warning", "critical", "emergency"] {
            assert_eq!(
                paths(&format!("thermal: {{for: {{{level}: -1}}}}")),
                [format!("thermal.for.{level}")]
            );
            assert!(paths(&format!("thermal: {{for: {{{level}: 5}}}}")).is_empty());
        }
    }

    #[test]
    fn allowed_roots_are_absolute_and_not_system_dirs() {
        let root = |r: &str| paths(&format!("storage: {{allowed_roots: ['{r}']}}"));
        assert!(root("/srv/data").is_empty());
        for bad in ["srv", "/srv/../etc", "/", "/etc/skos", "/usr", "/boot"] {
            assert_eq!(root(bad), ["storage.allowed_roots[0]"], "{bad}");
        }
        let errs = Config::from_yaml("storage: {allowed_roots: [srv, /etc/skos]}").unwrap_err();
        assert_eq!(errs[0].message, "srv must be absolute, without '..'");
        assert_eq!(errs[1].message, "/etc/skos is a system directory");
    }

    #[test]
    fn storage_dirs_lie_strictly_inside_an_allowed_root() {
        let dirs = |data_dir: &str, list: &str| {
            Config::from_yaml(&format!(
                "data_dir: {data_dir}\nstorage: {{temp: {{dirs: [{list}]}}}}\n"
            ))
            .err()
            .unwrap_or_default()
        };
        assert!(dirs("/srv/skos", "/tmp/app, /srv/skosx, /srv/other").is_empty());
        // A root itself is never cleaned, only what lies below it.
        let errs = dirs("/srv/skos", "/tmp");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "storage.temp.dirs[0]");
        assert_eq!(
            errs[0].message,
            "/tmp is an allowed root itself (storage.allowed_roots); name a dir inside it, e.g. /tmp/myapp"
        );
        let errs = dirs("/srv/skos", "/nowhere/app");
        assert!(
            errs[0].message.contains("is not inside an allowed root"),
            "{errs:?}"
        );
        // A dir that holds the data dir overlaps it as much as one inside it.
        let errs = dirs("/srv/skos", "/srv");
        assert!(
            errs.iter().any(|e| e.message.contains("data dir")),
            "{errs:?}"
        );
        let errs = dirs("/srv/skos", "/srv/skos/tmp");
        assert!(
            errs.iter().any(|e| e.message.contains("data dir")),
            "{errs:?}"
        );
        // A relative data dir cannot be compared and is not.
        assert!(dirs("./srv/skos", "/srv/skos/tmp").is_empty());
        let errs = dirs("/srv/skos", "/");
        assert_eq!(errs, [issue("storage.temp.dirs[0]", "/ is never cleaned")]);
    }

    #[test]
    fn every_storage_dir_list_is_checked() {
        for key in ["temp.dirs", "logs.dirs", "archive.dirs"] {
            let text = storage_yaml(key, "[/srv/x, relative]");
            let text = if key == "archive.dirs" {
                text.replace(
                    "storage: {archive: {",
                    "storage: {archive: {destination: /mnt/a, ",
                )
            } else {
                text
            };
            assert_eq!(paths(&text), [format!("storage.{key}[1]")], "{text}");
        }
        assert_eq!(
            paths("storage: {archive: {destination: /etc/archive}}"),
            ["storage.archive.destination"]
        );
        assert_eq!(paths("storage: {mounts: [/, data]}"), ["storage.mounts[1]"]);
    }

    #[test]
    fn storage_ages_are_zero_or_more_seconds() {
        for key in [
            "temp.max_age",
            "temp.emergency_max_age",
            "logs.compress_after",
            "logs.retention",
            "logs.emergency_retention",
            "archive.older_than",
            "archive.emergency_older_than",
            "fill_rate_window",
            "predict_horizon",
        ] {
            let errs = Config::from_yaml(&storage_yaml(key, "-1")).unwrap_err();
            assert_eq!(
                errs,
                [issue(
                    format!("storage.{key}"),
                    "must be zero or more seconds"
                )],
                "{key}"
            );
            assert!(paths(&storage_yaml(key, "0")).is_empty(), "{key}");
        }
    }

    #[test]
    fn archive_dirs_need_a_destination() {
        let errs = Config::from_yaml("storage: {archive: {dirs: [/data/old]}}").unwrap_err();
        assert_eq!(
            errs,
            [issue(
                "storage.archive.destination",
                "archive.dirs are set but no destination"
            )]
        );
        assert!(paths("storage: {archive: {dirs: [/data/old], destination: /mnt/a}}").is_empty());
        assert!(paths("storage: {archive: {destination: /mnt/a}}").is_empty());
    }

    #[test]
    fn notify_channels_are_checked() {
        for ok in ["http://hooks.example/x", "https://hooks.example"] {
            assert!(paths(&format!(
                "storage: {{notify: {{webhook: {{url: '{ok}'}}}}}}"
            ))
            .is_empty());
        }
        for bad in ["ftp://hooks.example/x", "hooks.example/x", ""] {
            assert_eq!(
                paths(&format!(
                    "storage: {{notify: {{webhook: {{url: '{bad}'}}}}}}"
                )),
                ["storage.notify.webhook.url"],
                "{bad:?}"
            );
        }
        for security in ["none", "starttls", "tls"] {
            assert!(paths(&format!(
                "storage: {{notify: {{email: {{to: [ops@example.org], security: {security}}}}}}}"
            ))
            .is_empty());
        }
        assert_eq!(
            paths("storage: {notify: {email: {to: [ops@example.org], security: ssl}}}"),
            ["storage.notify.email.security"]
        );
        assert_eq!(
            paths("storage: {notify: {email: {to: []}}}"),
            ["storage.notify.email.to"]
        );
        assert_eq!(
            paths("storage: {notify: {command: []}}"),
            ["storage.notify.command"]
        );
        assert!(paths("storage: {notify: {command: [/usr/bin/logger, -t, skos]}}").is_empty());
    }

    #[test]
    fn nats_debug_shows_the_server_but_not_its_credentials() {
        let cfg = Config::from_yaml("nats: {url: 'nats://ops:hunter2@bus:4222,nats://t0k3n@bus2'}")
            .unwrap();
        let text = format!("{:?}", cfg.nats);
        assert!(text.contains("nats://bus:4222,nats://bus2"), "{text}");
        for secret in ["hunter2", "t0k3n", "ops:"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn notify_debug_shows_where_but_not_secrets() {
        let text = "storage:\n  notify:\n    webhook: {url: 'https://bot:t0k3n@hooks.example/services/T0K3N?x=1', headers: {X-Key: 's3cret'}}\n    email: {smtp_host: mail.example, username: ops, password: hunter2, to: [ops@example.org]}\n";
        let cfg = Config::from_yaml(text).unwrap();
        let webhook = format!("{:?}", cfg.storage.notify.webhook.as_ref().unwrap());
        assert!(webhook.contains("\"https://hooks.example\""), "{webhook}");
        assert!(webhook.contains("X-Key"), "{webhook}");
        for secret in ["t0k3n", "T0K3N", "s3cret", "x=1"] {
            assert!(!webhook.contains(secret), "{secret} leaked: {webhook}");
        }
        let email = format!("{:?}", cfg.storage.notify.email.as_ref().unwrap());
        for shown in ["mail.example", "\"ops\"", "ops@example.org", "<redacted>"] {
            assert!(email.contains(shown), "{shown} missing: {email}");
        }
        assert!(!email.contains("hunter2"), "{email}");
        // A URL without a scheme (rejected by the check) is not shown at all.
        let w = WebhookConfig {
            url: "hooks.example/T0K3N".into(),
            ..WebhookConfig::default()
        };
        let dbg = format!("{w:?}");
        assert!(dbg.contains("url: \"<url>\""), "{dbg}");
        assert!(!dbg.contains("T0K3N"), "{dbg}");
    }

    /// `Section::get` and `get_mut` are where the section lives in a
    /// `Config`: the very field, not a copy.
    #[test]
    fn each_section_gets_its_own_field() {
        fn same<S: Section>(cfg: &mut Config, field: fn(&Config) -> *const S) {
            let want = field(cfg);
            assert!(std::ptr::eq(S::get(cfg), want), "{}", S::KEY);
            assert!(std::ptr::eq(S::get_mut(cfg), want), "{}", S::KEY);
        }
        let mut cfg = Config::default();
        same::<NodeSection>(&mut cfg, |c| &c.node);
        same::<NatsSection>(&mut cfg, |c| &c.nats);
        same::<AgentSection>(&mut cfg, |c| &c.agent);
        same::<CoordinatorSection>(&mut cfg, |c| &c.coordinator);
        same::<BreakerConfig>(&mut cfg, |c| &c.circuit_breaker);
        same::<ThermalConfig>(&mut cfg, |c| &c.thermal);
        same::<StorageConfig>(&mut cfg, |c| &c.storage);
        same::<MeshConfig>(&mut cfg, |c| &c.mesh);
        same::<LoopConfig>(&mut cfg, |c| &c.loop_);
        same::<TrustConfig>(&mut cfg, |c| &c.trust);
        same::<WorkloadsConfig>(&mut cfg, |c| &c.workloads);
    }

    #[test]
    fn at_least_one_alert_a_minute_per_node_is_handled() {
        assert_eq!(
            paths("coordinator: {max_alerts_per_node_per_minute: 0}\n"),
            ["coordinator.max_alerts_per_node_per_minute"]
        );
        assert!(paths("coordinator: {max_alerts_per_node_per_minute: 1}\n").is_empty());
    }

    #[test]
    fn a_leader_lease_is_between_one_second_and_ten_minutes() {
        for bad in ["0.5", "601"] {
            assert_eq!(
                paths(&format!("coordinator: {{leader_lease_seconds: {bad}}}\n")),
                ["coordinator.leader_lease_seconds"],
                "{bad}"
            );
        }
        for good in ["1", "600"] {
            assert!(paths(&format!("coordinator: {{leader_lease_seconds: {good}}}\n")).is_empty());
        }
    }
}
