//! `workloads:`: what runs on the nodes and can be started, stopped and
//! checked, by name. Each workload has a driver (a plain `process`, a
//! `container` run through the Docker Engine API, a `systemd` unit) with
//! its own fields, an optional health check (HTTP, TCP or a command, each
//! with a timeout), how long a start may take to become healthy, its
//! priority and whether it is essential (by default from the seed's
//! `failover.services_priority`), whether it may be moved, and where it may
//! run (`nodes`, `roles`).
//!
//! ```yaml
//! workloads:
//!   synthesis-core:
//!     driver: process
//!     command: [/usr/bin/busybox, httpd, -f, -p, "8081"]
//!     health: {http: "http://127.0.0.1:8081/", timeout_seconds: 2}
//!     nodes: [nova, lyra]
//! ```
//!
//! The engine the container driver talks to is the agent's setting
//! `agent.workloads.docker_host`, not a workload.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{issue, positive_seconds, CheckContext, Config, ConfigIssue, Section};
use crate::node::NodeName;
use crate::workload::WorkloadName;

/// Every configured workload, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkloadsConfig(pub BTreeMap<WorkloadName, WorkloadSpec>);

/// How a workload is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A plain process: the configured argv, in a session of its own.
    Process,
    /// A container through the Docker Engine API (Docker or Podman),
    /// named `skos-<workload>`.
    Container,
    /// A systemd unit.
    Systemd,
}

impl DriverKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DriverKind::Process => "process",
            DriverKind::Container => "container",
            DriverKind::Systemd => "systemd",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The signal that asks a process workload to stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StopSignal {
    #[default]
    Term,
    Int,
    Quit,
    Hup,
    Kill,
    Usr1,
    Usr2,
}

impl StopSignal {
    const ALL: [StopSignal; 7] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Quit,
        StopSignal::Hup,
        StopSignal::Kill,
        StopSignal::Usr1,
        StopSignal::Usr2,
    ];

    /// Its name as written in the config (`SIGTERM`).
    pub const fn as_str(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Kill => "SIGKILL",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }
}

impl TryFrom<String> for StopSignal {
    type Error = String;
    /// `SIGTERM` or `TERM` (any case).
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let up = value.trim().to_ascii_uppercase();
        let full = if up.starts_with("SIG") {
            up
        } else {
            format!("SIG{up}")
        };
        StopSignal::ALL
            .into_iter()
            .find(|s| s.as_str() == full)
            .ok_or_else(|| {
                format!(
                    "unknown stop signal {value:?} (one of {})",
                    StopSignal::ALL.map(StopSignal::as_str).join(", ")
                )
            })
    }
}

impl From<StopSignal> for String {
    fn from(s: StopSignal) -> Self {
        s.as_str().to_string()
    }
}

fn default_stop_timeout() -> f64 {
    10.0
}

fn default_start_timeout() -> f64 {
    30.0
}

fn default_health_timeout() -> f64 {
    2.0
}

fn yes() -> bool {
    true
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub driver: DriverKind,
    /// Process driver: the argv, its program an absolute path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Process driver: the signal sent to its process group to stop it.
    #[serde(default)]
    pub stop_signal: StopSignal,
    /// Seconds a stop waits before SIGKILL (process driver) or the
    /// engine's kill (container driver).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_seconds: f64,
    /// Container driver: the image (`local/synth`), used as it is found
    /// on the engine (nothing is pulled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container driver: the command, instead of the image's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_command: Vec<String>,
    /// Container driver: its network mode (`host`, `bridge`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Systemd driver: the unit (`synthesis.service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// How to tell it is healthy; without one, running is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Seconds a start may take to become healthy; past it the start is
    /// undone and fails.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: f64,
    /// Lower runs first and stops last; default from
    /// `failover.services_priority` ([`WorkloadsConfig::priority_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Whether it must keep running (non-essential ones may be stopped to
    /// shed heat or load); default: listed in `failover.services_priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    /// Whether it may be moved to another node.
    #[serde(default = "yes")]
    pub movable: bool,
    /// The nodes it may run on; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeName>,
    /// The node roles it may run on; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// A health check: exactly one of `http`, `tcp`, `command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// A URL answered 2xx or 3xx when healthy (`http://127.0.0.1:8081/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// `host:port` that accepts a connection when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// An argv (program an absolute path) that exits 0 when healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Seconds one check may take; longer is unhealthy.
    #[serde(default = "default_health_timeout")]
    pub timeout_seconds: f64,
}

/// What a health check does, resolved from a checked [`HealthCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProbe<'a> {
    Http(&'a str),
    Tcp(&'a str),
    Command(&'a [String]),
}

impl HealthCheck {
    /// The check to run; `None` only for a config that failed its check.
    pub fn probe(&self) -> Option<HealthProbe<'_>> {
        match (&self.http, &self.tcp, self.command.as_slice()) {
            (Some(u), None, []) => Some(HealthProbe::Http(u)),
            (None, Some(a), []) => Some(HealthProbe::Tcp(a)),
            (None, None, argv) if !argv.is_empty() => Some(HealthProbe::Command(argv)),
            _ => None,
        }
    }
}

impl WorkloadSpec {
    /// Whether it may run on `node`, whose role is `role` (when known):
    /// named by `nodes` (or `nodes` empty) and its role in `roles` (or
    /// `roles` empty; a node of unknown role passes only an empty list).
    pub fn allowed_on(&self, node: &NodeName, role: Option<&str>) -> bool {
        let node_ok = self.nodes.is_empty() || self.nodes.contains(node);
        let role_ok =
            self.roles.is_empty() || role.is_some_and(|r| self.roles.iter().any(|x| x == r));
        node_ok && role_ok
    }

    fn check(&self, at: &str, out: &mut Vec<ConfigIssue>) {
        let own = |field: &str, used: bool, driver: DriverKind, out: &mut Vec<ConfigIssue>| {
            if used && self.driver != driver {
                out.push(issue(
                    format!("{at}.{field}"),
                    format!("only for driver {driver}, this one is {}", self.driver),
                ));
            }
        };
        own(
            "command",
            !self.command.is_empty(),
            DriverKind::Process,
            out,
        );
        own(
            "stop_signal",
            self.stop_signal != StopSignal::default(),
            DriverKind::Process,
            out,
        );
        own("image", self.image.is_some(), DriverKind::Container, out);
        own(
            "container_command",
            !self.container_command.is_empty(),
            DriverKind::Container,
            out,
        );
        own(
            "network",
            self.network.is_some(),
            DriverKind::Container,
            out,
        );
        own("unit", self.unit.is_some(), DriverKind::Systemd, out);
        match self.driver {
            DriverKind::Process => argv(&format!("{at}.command"), &self.command, out),
            DriverKind::Container => {
                match self.image.as_deref() {
                    None => out.push(issue(
                        format!("{at}.image"),
                        "a container workload needs an image",
                    )),
                    Some(i) if !image_ref(i) => out.push(issue(
                        format!("{at}.image"),
                        format!(
                            "{:?} is not an image reference",
                            i.escape_debug().to_string()
                        ),
                    )),
                    Some(_) => {}
                }
                if self.container_command.iter().any(|a| a.contains('\0')) {
                    out.push(issue(
                        format!("{at}.container_command"),
                        "an argument contains a NUL byte",
                    ));
                }
                if let Some(n) = self.network.as_deref().filter(|n| !token(n)) {
                    out.push(issue(
                        format!("{at}.network"),
                        format!("{:?} is not a network name", n.escape_debug().to_string()),
                    ));
                }
            }
            DriverKind::Systemd => match self.unit.as_deref() {
                None => out.push(issue(
                    format!("{at}.unit"),
                    "a systemd workload needs a unit",
                )),
                Some(u) if !unit_name(u) => out.push(issue(
                    format!("{at}.unit"),
                    format!(
                        "{:?} is not a unit name (name.service, name.socket, ...)",
                        u.escape_debug().to_string()
                    ),
                )),
                Some(_) => {}
            },
        }
        positive_seconds(
            out,
            &format!("{at}.stop_timeout_seconds"),
            self.stop_timeout_seconds,
        );
        positive_seconds(
            out,
            &format!("{at}.start_timeout_seconds"),
            self.start_timeout_seconds,
        );
        if self.priority == Some(0) {
            out.push(issue(format!("{at}.priority"), "must be 1 or more"));
        }
        for (i, r) in self.roles.iter().enumerate() {
            if !token(r) {
                out.push(issue(
                    format!("{at}.roles[{i}]"),
                    format!("{:?} is not a role name", r.escape_debug().to_string()),
                ));
            }
        }
        if let Some(h) = &self.health {
            h.check(&format!("{at}.health"), out);
        }
    }
}

impl HealthCheck {
    fn check(&self, at: &str, out: &mut Vec<ConfigIssue>) {
        let set = [
            self.http.is_some(),
            self.tcp.is_some(),
            !self.command.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            out.push(issue(
                at,
                format!("needs exactly one of http, tcp, command ({set} given)"),
            ));
        }
        if let Some(u) = &self.http {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
                || u.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                out.push(issue(
                    format!("{at}.http"),
                    format!(
                        "{:?} is not an http:// or https:// URL",
                        u.escape_debug().to_string()
                    ),
                ));
            }
        }
        if let Some(a) = &self.tcp {
            if !host_port(a) {
                out.push(issue(
                    format!("{at}.tcp"),
                    format!(
                        "{:?} is not host:port (127.0.0.1:8081, [::1]:8081, db.local:5432)",
                        a.escape_debug().to_string()
                    ),
                ));
            }
        }
        if !self.command.is_empty() {
            argv(&format!("{at}.command"), &self.command, out);
        }
        positive_seconds(out, &format!("{at}.timeout_seconds"), self.timeout_seconds);
    }
}

/// An argv to run: not empty, its program an absolute path, no NUL.
fn argv(at: &str, argv: &[String], out: &mut Vec<ConfigIssue>) {
    match argv.first() {
        None => out.push(issue(at, "needs a command: [program, args...]")),
        Some(p) if !p.starts_with('/') => out.push(issue(
            format!("{at}[0]"),
            format!(
                "the program must be an absolute path, got {:?}",
                p.escape_debug().to_string()
            ),
        )),
        Some(_) => {}
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        out.push(issue(format!("{at}[{i}]"), "contains a NUL byte"));
    }
}

/// Letters, digits, `-`, `_`, `.`: a role or network name.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An image reference as Docker writes them (`local/synth:1`,
/// `registry:5000/a/b@sha256:...`): no whitespace, control characters or
/// leading `-`.
fn image_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@'))
}

/// A systemd unit name: `name.type`, of systemd's characters, not an
/// option.
fn unit_name(s: &str) -> bool {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "path",
        "timer",
        "slice",
        "scope",
    ];
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'))
        && s.rsplit_once('.')
            .is_some_and(|(name, ty)| !name.is_empty() && TYPES.contains(&ty))
}

/// `host:port`: a port from 1 to 65535 after the last colon, and a host
/// (a name, an IPv4 address or a bracketed IPv6 address) before it.
fn host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => token(host),
    };
    port_ok && host_ok
}

impl WorkloadsConfig {
    /// The workload named `name`, if configured.
    pub fn get(&self, name: &WorkloadName) -> Option<&WorkloadSpec> {
        self.0.get(name)
    }

    /// The workload named `name` (a string from a command), if configured.
    pub fn find(&self, name: &str) -> Option<(&WorkloadName, &WorkloadSpec)> {
        self.0.iter().find(|(n, _)| n.as_str() == name)
    }

    /// Every workload, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&WorkloadName, &WorkloadSpec)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its priority: its own `priority`, else its place in
    /// `services_priority` (the seed's `failover.services_priority`, from
    /// 1), else after all of them. Lower runs first and stops last.
    pub fn priority_of(&self, name: &WorkloadName, services_priority: &[String]) -> u32 {
        if let Some(p) = self.get(name).and_then(|s| s.priority) {
            return p;
        }
        let place = services_priority.iter().position(|s| s == name.as_str());
        let after_all = services_priority.len().saturating_add(1);
        u32::try_from(place.map_or(after_all, |i| i + 1)).unwrap_or(u32::MAX)
    }

    /// Whether it is essential: its own `essential`, else whether
    /// `services_priority` lists it.
    pub fn is_essential(&self, name: &WorkloadName, services_priority: &[String]) -> bool {
        self.get(name)
            .and_then(|s| s.essential)
            .unwrap_or_else(|| services_priority.iter().any(|s| s == name.as_str()))
    }
}

impl Section for WorkloadsConfig {
    const KEY: &'static str = "workloads";

    fn get(cfg: &Config) -> &Self {
        &cfg.workloads
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.workloads
    }

    /// Workloads SKOS would not manage as the file seems to mean: no
    /// home, a home their own `nodes` exclude, a start longer than a
    /// command may take, none able to run them, or no antibody to run them.
    fn warn(&self, cfg: &Config, out: &mut Vec<ConfigIssue>) {
        if self.0.is_empty() {
            return;
        }
        let executor = crate::catalogue::Executor::Workloads.as_str();
        if !cfg.agent.antibodies.iter().any(|a| a == executor) {
            out.push(issue(
                "workloads",
                format!(
                    "workloads are configured but {executor} is not in agent.antibodies ({}): agents with this config neither report nor start them",
                    cfg.agent.antibodies.join(", ")
                ),
            ));
        }
        let budget = cfg.coordinator.command_deadline;
        for (name, spec) in &self.0 {
            let at = format!("workloads.{name}");
            match cfg.workload_home(name.as_str()) {
                None => out.push(issue(
                    at.clone(),
                    "no home: no nodes.<node>.services lists it and it names no nodes, so SKOS never places, moves or fences it",
                )),
                Some(home) if !spec.nodes.is_empty() && !spec.nodes.contains(home) => {
                    out.push(issue(
                        format!("{at}.nodes"),
                        format!("its home {home} (nodes.{home}.services) is not among them: the agent there refuses to start it"),
                    ))
                }
                Some(_) => {}
            }
            if spec.start_timeout_seconds >= budget {
                out.push(issue(
                    format!("{at}.start_timeout_seconds"),
                    format!(
                        "{} s is not less than coordinator.command_deadline ({budget} s): a start that takes that long is closed as no_result and its target fenced; raise command_deadline or lower this",
                        spec.start_timeout_seconds
                    ),
                ));
            }
        }
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        for (name, spec) in &self.0 {
            spec.check(&format!("workloads.{name}"), out);
        }
    }
}

/// The agent's side of workloads: `agent.workloads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentWorkloads {
    /// The Docker Engine API the container driver talks to:
    /// `unix:///path/to.sock`, or `tcp://host:port` / `http://host:port`
    /// (plain HTTP, for a local engine only). The `DOCKER_HOST`
    /// environment variable wins over the file.
    pub docker_host: String,
}

/// Docker's own default socket.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

impl Default for AgentWorkloads {
    fn default() -> Self {
        Self {
            docker_host: DEFAULT_DOCKER_HOST.into(),
        }
    }
}

/// Where a Docker Engine API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost<'a> {
    /// A unix socket at this absolute path.
    Unix(&'a str),
    /// Plain HTTP to `host:port`.
    Http(&'a str),
}

impl<'a> DockerHost<'a> {
    /// Read `unix:///path.sock`, `tcp://host:port` or `http://host:port`;
    /// `None` for anything else.
    pub fn parse(h: &'a str) -> Option<DockerHost<'a>> {
        if let Some(p) = h.strip_prefix("unix://") {
            return p.starts_with('/').then_some(DockerHost::Unix(p));
        }
        let addr = h
            .strip_prefix("tcp://")
            .or_else(|| h.strip_prefix("http://"))?;
        let addr = addr.strip_suffix('/').unwrap_or(addr);
        host_port(addr).then_some(DockerHost::Http(addr))
    }
}

impl AgentWorkloads {
    /// The engine's address; `None` for one that failed its check.
    pub fn docker_host(&self) -> Option<DockerHost<'_>> {
        DockerHost::parse(&self.docker_host)
    }

    pub(super) fn check(&self, out: &mut Vec<ConfigIssue>) {
        if self.docker_host().is_none() {
            out.push(issue(
                "agent.workloads.docker_host",
                format!(
                    "{:?} is not unix:///absolute/path.sock or tcp://host:port",
                    self.docker_host.escape_debug().to_string()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn paths(text: &str) -> Vec<String> {
        match Config::from_yaml(text) {
            Ok(_) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| i.path).collect(),
        }
    }

    fn name(s: &str) -> WorkloadName {
        WorkloadName::parse(s).unwrap()
    }

    const THREE: &str = "
workloads:
  synthesis-core:
    driver: process
    command: [/usr/bin/busybox, httpd, -f, -p, '8081']
    stop_signal: INT
    stop_timeout_seconds: 5
    health: {http: 'http://127.0.0.1:8081/', timeout_seconds: 2}
    start_timeout_seconds: 20
    priority: 1
    essential: true
    movable: true
    nodes: [nova, lyra]
  minio:
    driver: container
    image: local/minio:1
    container_command: [/bin/busybox, httpd, -f, -p, '9000']
    network: host
    health: {tcp: '127.0.0.1:9000'}
    roles: [storage]
  postgres:
    driver: systemd
    unit: postgresql@15-main.service
    health: {command: [/usr/bin/pg_isready, -q]}
    movable: false
";

    #[test]
    fn the_three_drivers_load_with_their_fields() {
        let cfg = Config::from_yaml(THREE).unwrap();
        let w = &cfg.workloads;
        let synth = w.get(&name("synthesis-core")).unwrap();
        assert_eq!(synth.driver, DriverKind::Process);
        assert_eq!(synth.command[0], "/usr/bin/busybox");
        assert_eq!(synth.stop_signal, StopSignal::Int);
        assert_eq!(synth.stop_timeout_seconds, 5.0);
        assert_eq!(synth.start_timeout_seconds, 20.0);
        assert_eq!(
            synth.health.as_ref().and_then(HealthCheck::probe),
            Some(HealthProbe::Http("http://127.0.0.1:8081/"))
        );
        let nova = NodeName::parse("nova").unwrap();
        let athena = NodeName::parse("athena").unwrap();
        assert!(synth.allowed_on(&nova, Some("primary")));
        assert!(!synth.allowed_on(&athena, None));
        let minio = w.get(&name("minio")).unwrap();
        assert_eq!(minio.image.as_deref(), Some("local/minio:1"));
        assert_eq!(minio.network.as_deref(), Some("host"));
        assert_eq!(minio.stop_signal, StopSignal::Term);
        assert_eq!(minio.stop_timeout_seconds, 10.0);
        assert_eq!(minio.start_timeout_seconds, 30.0);
        assert!(minio.movable);
        assert_eq!(
            minio.health.as_ref().and_then(HealthCheck::probe),
            Some(HealthProbe::Tcp("127.0.0.1:9000"))
        );
        assert!(minio.allowed_on(&athena, Some("storage")));
        assert!(!minio.allowed_on(&athena, Some("primary")));
        assert!(!minio.allowed_on(&athena, None));
        let pg = w.get(&name("postgres")).unwrap();
        assert_eq!(pg.unit.as_deref(), Some("postgresql@15-main.service"));
        assert!(!pg.movable);
        assert!(matches!(
            pg.health.as_ref().and_then(HealthCheck::probe),
            Some(HealthProbe::Command([p, _])) if p == "/usr/bin/pg_isready"
        ));
        assert_eq!(w.find("minio").map(|(n, _)| n.as_str()), Some("minio"));
        assert!(w.find("nope").is_none());
    }

    #[test]
    fn priority_and_essential_default_from_services_priority() {
        let cfg = Config::from_yaml(THREE).unwrap();
        let w = &cfg.workloads;
        let order = vec!["postgres".to_string(), "minio".to_string()];
        assert_eq!(w.priority_of(&name("synthesis-core"), &order), 1);
        assert_eq!(w.priority_of(&name("postgres"), &order), 1);
        assert_eq!(w.priority_of(&name("minio"), &order), 2);
        assert_eq!(w.priority_of(&name("qwen"), &order), 3);
        assert!(w.is_essential(&name("synthesis-core"), &[]));
        assert!(w.is_essential(&name("minio"), &order));
        assert!(!w.is_essential(&name("minio"), &[]));
    }

    #[test]
    fn every_bad_value_names_its_key_path() {
        for (yaml, want) in [
            // A missing field is named in the message of its mapping.
            ("workloads: {a: {command: [/bin/true]}}", "workloads.a"),
            ("workloads: {a: {driver: vm}}", "workloads.a.driver"),
            ("workloads: {a: {driver: process}}", "workloads.a.command"),
            (
                "workloads: {a: {driver: process, command: [busybox]}}",
                "workloads.a.command[0]",
            ),
            (
                "workloads: {a: {driver: process, command: [/bin/x], stop_signal: SIGFOO}}",
                "workloads.a.stop_signal",
            ),
            (
                "workloads: {a: {driver: process, command: [/bin/x], stop_timeout_seconds: 0}}",
                "workloads.a.stop_timeout_seconds",
            ),
            (
                "workloads: {a: {driver: process, command: [/bin/x], start_timeout_seconds: -1}}",
                "workloads.a.start_timeout_seconds",
            ),
            (
                "workloads: {a: {driver: process, command: [/bin/x], image: x}}",
                "workloads.a.image",
            ),
            ("workloads: {a: {driver: container}}", "workloads.a.image"),
            (
                "workloads: {a: {driver: container, image: 'a b'}}",
                "workloads.a.image",
            ),
            (
                "workloads: {a: {driver: container, image: x, network: 'a/b'}}",
                "workloads.a.network",
            ),
            (
                "workloads: {a: {driver: container, image: x, unit: a.service}}",
                "workloads.a.unit",
            ),
            ("workloads: {a: {driver: systemd}}", "workloads.a.unit"),
            (
                "workloads: {a: {driver: systemd, unit: '--now'}}",
                "workloads.a.unit",
            ),
            (
                "workloads: {a: {driver: systemd, unit: synth}}",
                "workloads.a.unit",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, command: [/bin/x]}}",
                "workloads.a.command",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, priority: 0}}",
                "workloads.a.priority",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, priority: -1}}",
                "workloads.a.priority",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, nodes: [a.b]}}",
                "workloads.a.nodes[0]",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, roles: ['x y']}}",
                "workloads.a.roles[0]",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, essential: maybe}}",
                "workloads.a.essential",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, movable: 3}}",
                "workloads.a.movable",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, colour: red}}",
                "workloads.a.colour",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {}}}",
                "workloads.a.health",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {http: 'http://x/', tcp: 'x:1'}}}",
                "workloads.a.health",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {http: 'ftp://x/'}}}",
                "workloads.a.health.http",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {tcp: 'x'}}}",
                "workloads.a.health.tcp",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {tcp: 'x:0'}}}",
                "workloads.a.health.tcp",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {command: [true]}}}",
                "workloads.a.health.command[0]",
            ),
            (
                "workloads: {a: {driver: systemd, unit: a.service, health: {tcp: 'x:1', timeout_seconds: 0}}}",
                "workloads.a.health.timeout_seconds",
            ),
            (
                "agent: {workloads: {docker_host: '/var/run/docker.sock'}}",
                "agent.workloads.docker_host",
            ),
            (
                "agent: {workloads: {docker_host: 'unix://relative.sock'}}",
                "agent.workloads.docker_host",
            ),
            ("agent: {workloads: {engine: x}}", "agent.workloads.engine"),
        ] {
            let got = paths(yaml);
            assert!(got.iter().any(|p| p == want), "{yaml}: {got:?}");
        }
        // A bad name is refused, and the message names it.
        let issues = Config::from_yaml("workloads: {'a/b': {driver: systemd, unit: a.service}}")
            .unwrap_err();
        assert!(issues[0].path.starts_with("workloads"), "{issues:?}");
        assert!(issues[0].message.contains("a/b"), "{issues:?}");
    }

    #[test]
    fn the_docker_host_is_a_socket_or_an_address() {
        let mut a = AgentWorkloads::default();
        assert_eq!(
            a.docker_host(),
            Some(DockerHost::Unix("/var/run/docker.sock"))
        );
        a.docker_host = "tcp://127.0.0.1:2375".into();
        assert_eq!(a.docker_host(), Some(DockerHost::Http("127.0.0.1:2375")));
        a.docker_host = "http://engine.local:2375/".into();
        assert_eq!(a.docker_host(), Some(DockerHost::Http("engine.local:2375")));
        a.docker_host = "ssh://x".into();
        assert_eq!(a.docker_host(), None);
        let mut cfg = Config::default();
        let issues = cfg.apply_env(|k| {
            (k == "DOCKER_HOST").then(|| "unix:///run/podman/podman.sock".to_string())
        });
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            cfg.agent.workloads.docker_host,
            "unix:///run/podman/podman.sock"
        );
    }

    #[test]
    fn stop_signals_read_with_or_without_sig() {
        for (text, want) in [
            ("SIGTERM", StopSignal::Term),
            ("term", StopSignal::Term),
            ("INT", StopSignal::Int),
            ("SIGUSR2", StopSignal::Usr2),
        ] {
            assert_eq!(StopSignal::try_from(text.to_string()), Ok(want), "{text}");
        }
        assert!(StopSignal::try_from("SIGSTOP".to_string()).is_err());
        assert_eq!(String::from(StopSignal::Hup), "SIGHUP");
    }

    #[test]
    fn workloads_skos_would_not_manage_as_meant_draw_warnings_with_their_keys() {
        let cfg = Config::from_yaml(
            "nodes: {nova: {services: [a]}}\ncoordinator: {command_deadline: 60}\nworkloads:\n  a: {driver: process, command: [/bin/true], nodes: [lyra], start_timeout_seconds: 90}\n  b: {driver: process, command: [/bin/true]}\n",
        )
        .unwrap();
        let paths: Vec<String> = cfg.warnings().into_iter().map(|w| w.path).collect();
        for p in [
            "workloads",
            "workloads.a.nodes",
            "workloads.a.start_timeout_seconds",
            "workloads.b",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }
        let fine = Config::from_yaml(
            "agent: {antibodies: [thermal_sentinel, workloads]}\nnodes: {nova: {services: [a]}}\nworkloads:\n  a: {driver: process, command: [/bin/true]}\n",
        )
        .unwrap();
        assert!(fine.warnings().is_empty(), "{:?}", fine.warnings());
    }
}
