//! `nodes:` and `failover:`: the fleet as the seed describes it. `nodes`
//! names every node with its role and the services (workloads) that
//! normally run there, their home; `failover` names the hot spares that
//! take services over, how long to wait first, and which services go first.
//!
//! (`mesh.failover` is another thing: the failover of mesh routes.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{issue, non_negative, CheckContext, Config, ConfigIssue, Section};
use crate::node::NodeName;

/// Longest service (workload) name, in bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 128;

/// A service (workload) name: 1 to [`MAX_SERVICE_NAME_LEN`] of letters,
/// digits, `-`, `_`, `.`, not starting with `-` or `.`.
pub fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SERVICE_NAME_LEN
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `nodes:`: node name → its role and home services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FleetNodes(pub BTreeMap<NodeName, NodeSpec>);

/// One node of `nodes:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSpec {
    /// What the node is for (`primary`, `secondary`, `storage`): a name of
    /// letters, digits, `-`, `_`; empty when not given.
    pub role: String,
    /// The services whose home is this node (a service has one home).
    pub services: Vec<String>,
    /// The node belongs to an orchestrator (Docker Swarm, Kubernetes,
    /// Nomad): the coordinator's plans drain it through these commands
    /// instead of moving its workloads themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<OrchestratorSpec>,
}

/// `nodes.<node>.orchestrator`: the commands that hand a node's work to
/// its orchestrator. Each is an argv (never a shell): the program an
/// absolute path, `{node}` in any argument replaced by the node's name.
/// Run by the `node_drain` / `node_undrain` agent actions, on the node
/// itself or, while it is offline, on a hot spare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestratorSpec {
    /// Moves the node's work elsewhere and keeps new work off it (e.g.
    /// `[/usr/bin/kubectl, drain, "{node}", --ignore-daemonsets]`).
    pub drain: Vec<String>,
    /// Lets work onto the node again (e.g. `[/usr/bin/kubectl, uncordon, "{node}"]`).
    pub undrain: Vec<String>,
    /// Seconds either command may run before it is killed and fails.
    pub timeout_seconds: f64,
}

impl Default for OrchestratorSpec {
    fn default() -> Self {
        Self {
            drain: Vec::new(),
            undrain: Vec::new(),
            timeout_seconds: 300.0,
        }
    }
}

/// What [`OrchestratorSpec::argv`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainCommand {
    Drain,
    Undrain,
}

impl DrainCommand {
    /// The command's key under `nodes.<node>.orchestrator`.
    pub const fn key(self) -> &'static str {
        match self {
            DrainCommand::Drain => "drain",
            DrainCommand::Undrain => "undrain",
        }
    }
}

/// What replaces `{node}` in an orchestrator command's arguments.
pub const NODE_PLACEHOLDER: &str = "{node}";

impl OrchestratorSpec {
    /// The argv to run for `which` on `node`: `{node}` replaced by its
    /// name in every argument.
    pub fn argv(&self, which: DrainCommand, node: &NodeName) -> Vec<String> {
        let raw = match which {
            DrainCommand::Drain => &self.drain,
            DrainCommand::Undrain => &self.undrain,
        };
        raw.iter()
            .map(|a| a.replace(NODE_PLACEHOLDER, node.as_str()))
            .collect()
    }

    fn check(&self, at: &str, out: &mut Vec<ConfigIssue>) {
        for which in [DrainCommand::Drain, DrainCommand::Undrain] {
            let key = format!("{at}.{}", which.key());
            let argv = match which {
                DrainCommand::Drain => &self.drain,
                DrainCommand::Undrain => &self.undrain,
            };
            let Some(program) = argv.first() else {
                out.push(issue(
                    key,
                    "must name a command (argv: the program an absolute path, then its arguments)",
                ));
                continue;
            };
            let path = std::path::Path::new(program);
            if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
                out.push(issue(
                    format!("{key}[0]"),
                    format!("{program:?} must be an absolute path without '..'"),
                ));
            }
            for (i, a) in argv.iter().enumerate() {
                if a.contains('\0') {
                    out.push(issue(format!("{key}[{i}]"), "must not contain a NUL byte"));
                }
            }
        }
        if !(self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0) {
            out.push(issue(
                format!("{at}.timeout_seconds"),
                format!("must be more than 0 seconds, got {}", self.timeout_seconds),
            ));
        }
    }
}

/// `failover:`: where services go when their home fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpareConfig {
    /// Nodes kept ready to take over services, in order of preference.
    /// When `nodes` is given, each must be one of them.
    pub hot_spare_nodes: Vec<NodeName>,
    /// Seconds a home must stay failed before its services move (0 or more).
    pub failover_delay_seconds: f64,
    /// Services in order of importance: the first moves first and is
    /// stopped last. Each at most once.
    pub services_priority: Vec<String>,
    /// Workloads go back home by themselves once it has been calm for
    /// `failback_hold_seconds` (`auto`), or only when a table or a person
    /// asks (`off`).
    pub failback: FailbackMode,
    /// Seconds a node must be calm (online, no open alert) before moved
    /// workloads go back to it.
    pub failback_hold_seconds: f64,
    /// Seconds a node must be calm before the workloads shed from it
    /// start again.
    pub restart_hold_seconds: f64,
    /// Below this many healthy nodes (online, no emergency), destructive
    /// actions freeze and a `fleet_degraded` alert says why: a count
    /// (`2`) or a fraction of the known nodes (`"50%"`).
    pub min_healthy: MinHealthySpec,
    /// Failovers carried out at once, fleet-wide.
    pub max_concurrent: u32,
    /// Plans that wait for `skos approve` (`failover`, `failback`,
    /// `redistribute`, `shutdown_non_essential`).
    pub require_approval: Vec<String>,
    /// Seconds a plan waits for approval before it expires.
    pub approval_timeout_seconds: f64,
}

/// `failover.failback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailbackMode {
    #[default]
    Auto,
    Off,
}

/// `failover.min_healthy`: a count of nodes, or a percentage of the known
/// ones (`"50%"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MinHealthySpec {
    Count(u32),
    Percent(String),
}

impl Default for MinHealthySpec {
    fn default() -> Self {
        MinHealthySpec::Count(1)
    }
}

impl MinHealthySpec {
    /// The fraction (0–1) a percentage names, or `None` for a count or a
    /// text that is not `N%` with N from 0 to 100.
    pub fn fraction(&self) -> Option<f64> {
        let MinHealthySpec::Percent(text) = self else {
            return None;
        };
        let n: f64 = text.strip_suffix('%')?.trim().parse().ok()?;
        (0.0..=100.0).contains(&n).then_some(n / 100.0)
    }
}

/// The plans `failover.require_approval` may name.
pub const APPROVABLE_PLANS: &[&str] = &[
    "shutdown_non_essential",
    "redistribute",
    "failover",
    "failback",
];

impl Default for SpareConfig {
    fn default() -> Self {
        Self {
            hot_spare_nodes: Vec::new(),
            failover_delay_seconds: 10.0,
            services_priority: Vec::new(),
            failback: FailbackMode::Auto,
            failback_hold_seconds: 300.0,
            restart_hold_seconds: 120.0,
            min_healthy: MinHealthySpec::Count(1),
            max_concurrent: 1,
            require_approval: Vec::new(),
            approval_timeout_seconds: 900.0,
        }
    }
}

impl Section for FleetNodes {
    const KEY: &'static str = "nodes";

    fn get(cfg: &Config) -> &Self {
        &cfg.nodes
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.nodes
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        let mut homes: BTreeMap<&str, &NodeName> = BTreeMap::new();
        for (node, spec) in &self.0 {
            let at = format!("nodes.{node}");
            let role_ok = spec
                .role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                && spec.role.len() <= 64;
            if !role_ok {
                out.push(issue(
                    format!("{at}.role"),
                    format!(
                        "{:?} is not a role (up to 64 of A-Z a-z 0-9 _ -)",
                        spec.role
                    ),
                ));
            }
            for (i, s) in spec.services.iter().enumerate() {
                let key = format!("{at}.services[{i}]");
                if !is_service_name(s) {
                    out.push(issue(
                        key,
                        format!(
                            "{s:?} is not a service name (1-{MAX_SERVICE_NAME_LEN} of A-Z a-z 0-9 - _ .)"
                        ),
                    ));
                } else if let Some(home) = homes.insert(s, node) {
                    let message = if home == node {
                        format!("{s} is listed twice")
                    } else {
                        format!("{s} already has its home on {home}; a service has one home")
                    };
                    out.push(issue(key, message));
                    homes.insert(s, home);
                }
            }
            if let Some(o) = &spec.orchestrator {
                o.check(&format!("{at}.orchestrator"), out);
            }
        }
    }
}

impl Section for SpareConfig {
    const KEY: &'static str = "failover";

    fn get(cfg: &Config) -> &Self {
        &cfg.failover
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.failover
    }

    fn check(&self, ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        for (i, n) in self.hot_spare_nodes.iter().enumerate() {
            let key = format!("failover.hot_spare_nodes[{i}]");
            if self.hot_spare_nodes[..i].contains(n) {
                out.push(issue(key, format!("{n} is listed twice")));
            } else if !ctx.nodes.0.is_empty() && !ctx.nodes.0.contains_key(n) {
                let known: Vec<&str> = ctx.nodes.0.keys().map(NodeName::as_str).collect();
                out.push(issue(
                    key,
                    format!("{n} is not one of nodes ({})", known.join(", ")),
                ));
            }
        }
        if !(non_negative(self.failover_delay_seconds) && self.failover_delay_seconds.is_finite()) {
            out.push(issue(
                "failover.failover_delay_seconds",
                format!(
                    "must be zero or more seconds, got {}",
                    self.failover_delay_seconds
                ),
            ));
        }
        for (key, v) in [
            ("failover.failback_hold_seconds", self.failback_hold_seconds),
            ("failover.restart_hold_seconds", self.restart_hold_seconds),
        ] {
            if !(non_negative(v) && v.is_finite()) {
                out.push(issue(key, format!("must be zero or more seconds, got {v}")));
            }
        }
        if !(self.approval_timeout_seconds.is_finite() && self.approval_timeout_seconds > 0.0) {
            out.push(issue(
                "failover.approval_timeout_seconds",
                format!(
                    "must be more than 0 seconds, got {}",
                    self.approval_timeout_seconds
                ),
            ));
        }
        if let MinHealthySpec::Percent(text) = &self.min_healthy {
            if self.min_healthy.fraction().is_none() {
                out.push(issue(
                    "failover.min_healthy",
                    format!(
                        "{text:?} is neither a count of nodes nor a percentage such as \"50%\""
                    ),
                ));
            }
        }
        if self.max_concurrent == 0 {
            out.push(issue("failover.max_concurrent", "must be at least 1"));
        }
        for (i, p) in self.require_approval.iter().enumerate() {
            if !APPROVABLE_PLANS.contains(&p.as_str()) {
                out.push(issue(
                    format!("failover.require_approval[{i}]"),
                    format!(
                        "{p:?} is not a plan that can wait for approval (known: {})",
                        APPROVABLE_PLANS.join(", ")
                    ),
                ));
            }
        }
        for (i, s) in self.services_priority.iter().enumerate() {
            let key = format!("failover.services_priority[{i}]");
            if !is_service_name(s) {
                out.push(issue(
                    key,
                    format!(
                        "{s:?} is not a service name (1-{MAX_SERVICE_NAME_LEN} of A-Z a-z 0-9 - _ .)"
                    ),
                ));
            } else if self.services_priority[..i].contains(s) {
                out.push(issue(key, format!("{s} is listed twice")));
            }
        }
    }
}

impl Config {
    /// The node where `service` normally runs (its home), from `nodes`.
    pub fn home_of(&self, service: &str) -> Option<&NodeName> {
        self.nodes
            .0
            .iter()
            .find(|(_, spec)| spec.services.iter().any(|s| s == service))
            .map(|(node, _)| node)
    }

    /// Where the workload `name` normally runs (its home): the node whose
    /// `nodes.<node>.services` lists it, else the first node its own
    /// `workloads.<name>.nodes` allows; `None` when neither says. The one
    /// place agents and coordinator resolve a home.
    pub fn workload_home(&self, name: &str) -> Option<&NodeName> {
        self.home_of(name).or_else(|| {
            self.workloads
                .find(name)
                .and_then(|(_, spec)| spec.nodes.first())
        })
    }

    /// `node`'s role in `nodes`, when it is listed with one.
    pub fn role_of(&self, node: &NodeName) -> Option<&str> {
        self.nodes
            .0
            .get(node)
            .map(|spec| spec.role.as_str())
            .filter(|r| !r.is_empty())
    }

    /// The services whose home is `node` (empty when it is not listed).
    pub fn services_of(&self, node: &NodeName) -> &[String] {
        self.nodes
            .0
            .get(node)
            .map(|spec| spec.services.as_slice())
            .unwrap_or_default()
    }

    /// `service`'s place in `failover.services_priority`, from 1 (the
    /// most important); `None` when it is not listed.
    pub fn service_priority(&self, service: &str) -> Option<usize> {
        self.failover
            .services_priority
            .iter()
            .position(|s| s == service)
            .map(|i| i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeName {
        NodeName::parse(name).unwrap()
    }

    fn errors(text: &str) -> Vec<ConfigIssue> {
        Config::from_yaml(text).err().unwrap_or_default()
    }

    const FLEET: &str = "
nodes:
  nova: {role: primary, services: [qwen, synthesis-core]}
  lyra: {role: secondary, services: [backup]}
  athena: {services: []}
failover:
  hot_spare_nodes: [lyra, athena]
  failover_delay_seconds: 0
  services_priority: [synthesis-core, qwen]
";

    #[test]
    fn homes_roles_and_priorities_come_from_nodes_and_failover() {
        let cfg = Config::from_yaml(FLEET).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.home_of("qwen"), Some(&node("nova")));
        assert_eq!(cfg.home_of("backup"), Some(&node("lyra")));
        assert_eq!(cfg.home_of("minio"), None);
        assert_eq!(cfg.role_of(&node("nova")), Some("primary"));
        assert_eq!(cfg.role_of(&node("athena")), None, "no role given");
        assert_eq!(cfg.role_of(&node("vega")), None, "not listed");
        assert_eq!(cfg.services_of(&node("nova")), ["qwen", "synthesis-core"]);
        assert!(cfg.services_of(&node("vega")).is_empty());
        assert_eq!(cfg.service_priority("synthesis-core"), Some(1));
        assert_eq!(cfg.service_priority("qwen"), Some(2));
        assert_eq!(cfg.service_priority("backup"), None);
        assert_eq!(cfg.failover.hot_spare_nodes, [node("lyra"), node("athena")]);
        assert_eq!(cfg.failover.failover_delay_seconds, 0.0);
    }

    #[test]
    fn an_orchestrator_names_its_commands_with_the_node() {
        let cfg = Config::from_yaml(
            "nodes:\n  nova:\n    orchestrator:\n      drain: [/usr/bin/kubectl, drain, \"{node}\", --ignore-daemonsets]\n      undrain: [/usr/bin/kubectl, uncordon, \"node={node}\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let o = cfg.nodes.0[&node("nova")].orchestrator.clone().unwrap();
        assert_eq!(o.timeout_seconds, 300.0, "the default");
        assert_eq!(
            o.argv(DrainCommand::Drain, &node("nova")),
            ["/usr/bin/kubectl", "drain", "nova", "--ignore-daemonsets"]
        );
        assert_eq!(
            o.argv(DrainCommand::Undrain, &node("nova")),
            ["/usr/bin/kubectl", "uncordon", "node=nova"]
        );
    }

    #[test]
    fn an_orchestrator_command_is_checked_with_its_key() {
        let errs = errors(
            "nodes:\n  nova:\n    orchestrator: {drain: [kubectl, drain], timeout_seconds: 0}\n",
        );
        let said: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "nodes.nova.orchestrator.drain[0]: \"kubectl\" must be an absolute path without '..'",
                "nodes.nova.orchestrator.undrain: must name a command (argv: the program an absolute path, then its arguments)",
                "nodes.nova.orchestrator.timeout_seconds: must be more than 0 seconds, got 0",
            ]
        );
    }

    #[test]
    fn without_nodes_spares_are_not_judged_against_them() {
        let cfg = Config::from_yaml("failover: {hot_spare_nodes: [vega]}\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.failover.hot_spare_nodes, [node("vega")]);
        assert_eq!(
            cfg.failover.failover_delay_seconds, 10.0,
            "the seed's delay"
        );
        assert_eq!(cfg.home_of("qwen"), None);
    }

    #[test]
    fn a_spare_must_be_a_listed_node() {
        let errs = errors(&FLEET.replace("[lyra, athena]", "[lyra, vega, lyra]"));
        let said: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "failover.hot_spare_nodes[1]: vega is not one of nodes (athena, lyra, nova)",
                "failover.hot_spare_nodes[2]: lyra is listed twice",
            ]
        );
    }

    #[test]
    fn bad_names_delays_and_repeats_are_named_by_key() {
        let text = "
nodes:
  nova: {role: 'main node', services: [qwen, 'bad name', qwen]}
  lyra: {services: [qwen]}
failover:
  failover_delay_seconds: -1
  services_priority: [qwen, -x, qwen]
";
        let paths: Vec<String> = errors(text).into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "nodes.nova.role",
                "nodes.nova.services[0]",
                "nodes.nova.services[1]",
                "nodes.nova.services[2]",
                "failover.failover_delay_seconds",
                "failover.services_priority[1]",
                "failover.services_priority[2]",
            ]
        );
        let errs = errors("nodes:\n  lyra: {services: [qwen]}\n  nova: {services: [qwen]}\n");
        assert_eq!(
            errs[0].to_string(),
            "nodes.nova.services[0]: qwen already has its home on lyra; a service has one home"
        );
    }

    #[test]
    fn a_node_name_that_cannot_be_a_subject_token_is_refused() {
        let errs = errors("nodes:\n  nova.local: {role: primary}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].path.starts_with("nodes"), "{errs:?}");
        assert!(errs[0].message.contains("nova.local"), "{errs:?}");
        let errs = errors("failover: {hot_spare_nodes: ['a b']}\n");
        assert!(
            errs[0].path.starts_with("failover.hot_spare_nodes"),
            "{errs:?}"
        );
        let errs = errors("nodes:\n  nova: {role: primary, colour: blue}\n");
        assert_eq!(errs[0].path, "nodes.nova.colour", "{errs:?}");
    }
}
