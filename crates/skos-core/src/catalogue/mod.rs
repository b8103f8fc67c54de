//! The action catalogue: one declaration per action, grouped by the
//! antibody that executes it (one file each).
//!
//! Everything the rest of SKOS knows about an action comes from here: the
//! names a healing table may use ([`is_known`]), the parameters a command
//! may carry (its `params`, checked by [`validate_parameters`]),
//! which antibody carries it out ([`ActionSpec::executor`]; agents derive
//! `handles` from it), how its effect is verified ([`ActionSpec::verify`]),
//! whether it must free space, and whether it is destructive.
//!
//! To add an action: one entry in its antibody's file here, one arm in that
//! antibody's `execute`, and, if it is a default, one entry in a default
//! healing table. The catalogue test in `skos-agent` fails when a default
//! table names an action no antibody handles, or an antibody handles an
//! action declared for another.

use std::fmt;

use serde_json::{Map, Value};

mod loops;
mod mesh;
mod storage;
mod thermal;
mod workloads;

pub use thermal::{OriginalsError, ThrottleOriginal, MAX_ORIGINALS, ORIGINALS};
pub use workloads::{
    is_workload_step, NODE_DRAIN, NODE_UNDRAIN, START as WORKLOAD_START, STOP as WORKLOAD_STOP,
};

/// The antibodies, each of which executes its own actions. The wire and
/// config name of each is [`Executor::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Executor {
    ThermalSentinel,
    StorageWatcher,
    MeshHealer,
    LoopBreaker,
    /// Starts, stops and checks workloads (processes, containers, systemd
    /// units): `workload_start`, `workload_stop`; drains and undrains a node
    /// through its orchestrator: `node_drain`, `node_undrain`. Its coordinator plans
    /// (`redistribute`, `failover`...) are declared beside them but
    /// handled by no agent ([`ActionSpec::coordinator_plan`]).
    Workloads,
}

impl Executor {
    /// Every antibody, in registry order.
    pub const ALL: [Executor; 5] = [
        Executor::ThermalSentinel,
        Executor::StorageWatcher,
        Executor::MeshHealer,
        Executor::LoopBreaker,
        Executor::Workloads,
    ];

    /// The antibody's name in `agent.antibodies` and in heartbeats'
    /// `agent_type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Executor::ThermalSentinel => "thermal_sentinel",
            Executor::StorageWatcher => "storage_watcher",
            Executor::MeshHealer => "mesh_healer",
            Executor::LoopBreaker => "loop_breaker",
            Executor::Workloads => "workloads",
        }
    }

    /// Whether agents of this build carry this antibody (every one is
    /// built today; a declared antibody not yet built would answer its
    /// actions `unsupported`).
    pub const fn built(self) -> bool {
        true
    }

    /// The antibody named `name` in a config, if any.
    pub fn parse(name: &str) -> Option<Executor> {
        Executor::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// Whether this antibody executes `action` on an agent (a coordinator
    /// plan is executed by no agent, whatever its executor).
    pub fn handles(self, action: &str) -> bool {
        spec(action).is_some_and(|a| a.executor == self && !a.coordinator_plan)
    }
}

impl fmt::Display for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the coordinator checks that an action worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not checked on a metric: a `succeeded` result is success.
    Result,
    /// The problem's metric (`cpu_temp`, `gpu_temp`, `storage_percent`, a
    /// mesh level) must fall below the alert level's threshold (for mesh
    /// problems: to healthy) in a heartbeat sent after the result, within
    /// `coordinator.verify_within`.
    MetricBelow,
}

/// The kind of value a command parameter may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A short name: letters, digits, `-`, `_`, `.`, `:`, at most 128 bytes;
    /// it can only select among configured targets.
    Token,
    /// A list of throttle originals ([`ThrottleOriginal::parse_list`]):
    /// values for targets the agent found itself, matched by name.
    ThrottleOriginals,
}

/// One action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionSpec {
    /// The wire name (`action_type`), also its name in healing tables.
    pub name: &'static str,
    pub executor: Executor,
    /// The parameters a command may carry, with their kind. Every other
    /// parameter, or one of the wrong kind, makes the command invalid. The
    /// targets of an action (files, cgroups, interfaces, processes) always
    /// come from the node's configuration, never from a parameter (throttle
    /// originals only give values to targets the agent found itself).
    pub params: &'static [(&'static str, ParamKind)],
    pub verify: Verify,
    /// Its job is to free space: a result with `bytes_freed: 0` is a
    /// failure at once.
    pub frees_space: bool,
    /// It deletes data, stops work or moves it off a node (as opposed to
    /// slowing a node down or restarting a tunnel).
    pub destructive: bool,
    /// A plan the coordinator carries out itself, as commands of other
    /// actions to the nodes concerned (`failover` is `workload_start` on a
    /// spare, then `workload_stop` where it ran). Never sent to an agent:
    /// no antibody handles it ([`Executor::handles`]); its `executor` says
    /// whose actions the plan is made of.
    pub coordinator_plan: bool,
}

impl ActionSpec {
    /// A plain action of `executor`: no parameters, verified by its result
    /// only, frees nothing, not destructive.
    pub(crate) const fn new(name: &'static str, executor: Executor) -> Self {
        ActionSpec {
            name,
            executor,
            params: &[],
            verify: Verify::Result,
            frees_space: false,
            destructive: false,
            coordinator_plan: false,
        }
    }

    pub(crate) const fn params(mut self, params: &'static [(&'static str, ParamKind)]) -> Self {
        self.params = params;
        self
    }

    pub(crate) const fn verified(mut self) -> Self {
        self.verify = Verify::MetricBelow;
        self
    }

    pub(crate) const fn frees_space(mut self) -> Self {
        self.frees_space = true;
        self
    }

    pub(crate) const fn destructive(mut self) -> Self {
        self.destructive = true;
        self
    }

    pub(crate) const fn coordinator_plan(mut self) -> Self {
        self.coordinator_plan = true;
        self
    }
}

/// Every action, antibody by antibody.
pub fn all() -> impl Iterator<Item = &'static ActionSpec> {
    thermal::ACTIONS
        .iter()
        .chain(storage::ACTIONS)
        .chain(mesh::ACTIONS)
        .chain(loops::ACTIONS)
        .chain(workloads::ACTIONS)
}

/// The declaration of `action`, if it is one.
pub fn spec(action: &str) -> Option<&'static ActionSpec> {
    all().find(|a| a.name == action)
}

/// Whether `action` is a name the healing tables may use.
pub fn is_known(action: &str) -> bool {
    spec(action).is_some()
}

/// Whether an action's effect is checked on a heartbeat metric.
pub fn is_verifiable(action: &str) -> bool {
    spec(action).is_some_and(|a| a.verify == Verify::MetricBelow)
}

/// Whether an action undoes what SKOS did (lifting its own throttle): it
/// is still carried out while the audit trail cannot be written, when
/// every new action waits.
pub fn restores(action: &str) -> bool {
    action == thermal::RESET
}

/// Whether an action is a plan the coordinator carries out itself
/// ([`ActionSpec::coordinator_plan`]), never sent to an agent as such.
pub fn is_coordinator_plan(action: &str) -> bool {
    spec(action).is_some_and(|a| a.coordinator_plan)
}

/// Whether a command for `action` is checked, just before it runs, for
/// whether its problem is still there (see `Command::level`): every
/// action but the restoring ones (they undo a fix: the problem being gone
/// is their reason) and workload steps (steps of a plan, not answers to a
/// reading).
pub fn rechecked_before_acting(action: &str) -> bool {
    !restores(action) && !workloads::is_workload_step(action)
}

/// Whether an action's job is to free space (one that freed nothing
/// failed).
pub fn frees_space(action: &str) -> bool {
    spec(action).is_some_and(|a| a.frees_space)
}

/// The throttle level in percent named by a throttle action
/// (`throttle_50` → 50); `None` for any other action.
pub fn throttle_level(action: &str) -> Option<u8> {
    spec(action)?;
    thermal::level_of(action)
}

/// Why a command's parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown action {action:?}")]
    UnknownAction { action: String },
    #[error("{action} takes no parameter {name:?}")]
    Unexpected { action: String, name: String },
    #[error("{action}: parameter {name:?} must be a short name")]
    NotAToken { action: String, name: String },
    #[error("{action}: parameter {name:?}: {reason}")]
    BadOriginals {
        action: String,
        name: String,
        reason: OriginalsError,
    },
}

/// Check a command's parameters against its action's declaration.
///
/// # Errors
/// [`ParamError`] naming the action and the offending parameter.
pub fn validate_parameters(action: &str, params: &Map<String, Value>) -> Result<(), ParamError> {
    let spec = spec(action).ok_or_else(|| ParamError::UnknownAction {
        action: action.to_string(),
    })?;
    for (name, value) in params {
        let Some((_, kind)) = spec.params.iter().find(|(n, _)| n == name) else {
            return Err(ParamError::Unexpected {
                action: action.to_string(),
                name: name.clone(),
            });
        };
        match kind {
            ParamKind::Token => {
                let ok = value.as_str().is_some_and(|s| {
                    !s.is_empty()
                        && s.len() <= 128
                        && s.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
                        })
                });
                if !ok {
                    return Err(ParamError::NotAToken {
                        action: action.to_string(),
                        name: name.clone(),
                    });
                }
            }
            ParamKind::ThrottleOriginals => {
                if let Err(reason) = ThrottleOriginal::parse_list(value) {
                    return Err(ParamError::BadOriginals {
                        action: action.to_string(),
                        name: name.clone(),
                        reason,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_unique_wire_tokens() {
        let mut seen = std::collections::BTreeSet::new();
        for a in all() {
            assert!(seen.insert(a.name), "{} declared twice", a.name);
            assert!(
                !a.name.is_empty()
                    && a.name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn the_seed_actions_are_declared() {
        for name in [
            "throttle_10",
            "throttle_50",
            "throttle_100",
            "reset_throttle",
            "redistribute",
            "shutdown_non_essential",
            "failover",
            "failback",
            "workload_start",
            "workload_stop",
            "cleanup_temp",
            "cleanup_logs",
            "archive_old",
            "emergency_cleanup",
            "alert_human",
            "restart_wireguard",
            "regenerate_config",
            "ping_peer",
            "failover_route",
            "circuit_break",
            "reset_chain",
        ] {
            assert!(is_known(name), "{name}");
        }
        assert!(!is_known("rm -rf /"));
        assert!(!is_known("throttle_37"));
    }

    #[test]
    fn derived_properties() {
        assert_eq!(throttle_level("throttle_50"), Some(50));
        assert_eq!(throttle_level("throttle_100"), Some(100));
        assert_eq!(throttle_level("throttle_150"), None);
        assert_eq!(throttle_level("reset_throttle"), None);
        assert!(is_verifiable("throttle_10") && is_verifiable("cleanup_temp"));
        assert!(is_verifiable("restart_wireguard") && !is_verifiable("ping_peer"));
        assert!(!is_verifiable("reset_throttle") && !is_verifiable("alert_human"));
        assert!(restores("reset_throttle"));
        assert!(rechecked_before_acting("throttle_10") && rechecked_before_acting("cleanup_temp"));
        assert!(!rechecked_before_acting("reset_throttle"));
        assert!(
            !rechecked_before_acting(WORKLOAD_START) && !rechecked_before_acting(WORKLOAD_STOP)
        );
        assert!(!restores("throttle_10") && !restores("emergency_cleanup"));
        assert!(frees_space("archive_old") && !frees_space("alert_human"));
        assert!(spec("emergency_cleanup").is_some_and(|a| a.destructive));
        assert!(spec("throttle_50").is_some_and(|a| !a.destructive));
        assert!(Executor::ThermalSentinel.handles("reset_throttle"));
        assert!(!Executor::StorageWatcher.handles("reset_throttle"));
        assert_eq!(Executor::parse("mesh_healer"), Some(Executor::MeshHealer));
        assert_eq!(Executor::parse("nope"), None);
        assert_eq!(Executor::LoopBreaker.to_string(), "loop_breaker");
        assert!(Executor::ALL.into_iter().all(|e| e.built()));
        // Workload plans are the coordinator's: no agent handles them.
        assert!(Executor::Workloads.handles("workload_start"));
        assert!(Executor::Workloads.handles("workload_stop"));
        for plan in [
            "redistribute",
            "shutdown_non_essential",
            "failover",
            "failback",
        ] {
            assert!(is_coordinator_plan(plan), "{plan}");
            assert!(
                Executor::ALL.into_iter().all(|e| !e.handles(plan)),
                "{plan}"
            );
        }
        assert!(!is_coordinator_plan("workload_stop") && !is_coordinator_plan("throttle_50"));
        assert!(spec("workload_stop").is_some_and(|a| a.destructive));
    }

    #[test]
    fn parameters_follow_the_declaration() {
        let p = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(validate_parameters("throttle_50", &p(json!({}))).is_ok());
        assert_eq!(
            validate_parameters("throttle_50", &p(json!({"path": "/etc/passwd"}))),
            Err(ParamError::Unexpected {
                action: "throttle_50".into(),
                name: "path".into()
            })
        );
        assert!(validate_parameters("reset_chain", &p(json!({"chain_id": "job-42"}))).is_ok());
        assert!(
            validate_parameters("reset_chain", &p(json!({"chain_id": "a; rm -rf /"}))).is_err()
        );
        assert!(validate_parameters("reset_chain", &p(json!({"chain_id": 5}))).is_err());
        // Each declared name is accepted, any other refused by name.
        assert!(validate_parameters(
            "circuit_break",
            &p(json!({"chain_id": "job-1", "chain_kind": "etl"}))
        )
        .is_ok());
        assert_eq!(
            validate_parameters("circuit_break", &p(json!({"chain_ids": "job-1"}))),
            Err(ParamError::Unexpected {
                action: "circuit_break".into(),
                name: "chain_ids".into()
            })
        );
        assert!(validate_parameters("ping_peer", &p(json!({"peer": "../../x"}))).is_err());
        assert!(
            validate_parameters("workload_start", &p(json!({"workload": "synthesis-core"})))
                .is_ok()
        );
        assert!(validate_parameters(
            "workload_stop",
            &p(json!({"workload": "synthesis-core", "fence": "true"}))
        )
        .is_ok());
        assert!(validate_parameters(
            "workload_start",
            &p(json!({"fence": "true", "workload": "x"}))
        )
        .is_err());
        assert!(validate_parameters("workload_start", &p(json!({"workload": "a/b"}))).is_err());
        // Throttle originals: a checked list, on every thermal action.
        let originals = json!({"originals": [{"target": "cpufreq:policy0", "value": "3600000"}]});
        for action in [
            "throttle_10",
            "throttle_50",
            "throttle_100",
            "reset_throttle",
        ] {
            assert!(validate_parameters(action, &p(originals.clone())).is_ok());
        }
        assert!(matches!(
            validate_parameters(
                "reset_throttle",
                &p(json!({"originals": [{"target": "file:../../etc/shadow", "value": "x"}]}))
            ),
            Err(ParamError::BadOriginals { .. })
        ));
        assert!(validate_parameters("cleanup_temp", &p(originals)).is_err());
        assert!(matches!(
            validate_parameters("format_disk", &p(json!({}))),
            Err(ParamError::UnknownAction { .. })
        ));
    }
}
