//! The action catalogue and the antibodies agree: every action a default
//! healing table names is carried out by exactly one antibody of this
//! build, the one the catalogue declares; no antibody handles an action
//! declared for another or missing from the catalogue; no antibody handles
//! a coordinator plan (`failover`, `redistribute`...), which the
//! coordinator carries out as commands of other actions.

use skos_agent::antibody::Antibody;
use skos_agent::registry;
use skos_core::catalogue::{self, Executor};
use skos_core::config::Config;

/// Every antibody this build carries, enabled, with default sections.
fn every_antibody() -> Vec<Box<dyn Antibody>> {
    let mut cfg = Config::default();
    cfg.agent.antibodies = Executor::ALL
        .into_iter()
        .filter(|e| e.built())
        .map(|e| e.as_str().to_string())
        .collect();
    let built = registry::enabled(&cfg, None);
    let names: Vec<&str> = built.iter().map(|a| a.name()).collect();
    assert_eq!(
        names, cfg.agent.antibodies,
        "the registry builds every antibody the catalogue calls built"
    );
    built
}

/// Every action named by a default healing table, with where it is named.
fn default_table_actions() -> Vec<(String, String)> {
    let cfg = Config::default();
    let mut out = Vec::new();
    for (section, table) in [
        ("thermal", &cfg.thermal.actions),
        ("storage", &cfg.storage.actions),
    ] {
        for (level, actions) in [
            ("warning", &table.warning),
            ("critical", &table.critical),
            ("emergency", &table.emergency),
        ] {
            for a in actions {
                out.push((format!("{section}.actions.{level}"), a.clone()));
            }
        }
    }
    for (event, actions) in &cfg.mesh.actions {
        for a in actions {
            out.push((format!("mesh.actions.{event}"), a.clone()));
        }
    }
    for (condition, actions) in &cfg.loop_.actions {
        for a in actions {
            out.push((format!("loop.actions.{condition}"), a.clone()));
        }
    }
    out
}

#[test]
fn every_default_action_has_exactly_one_executor() {
    let antibodies = every_antibody();
    let actions = default_table_actions();
    assert!(actions.len() >= 10, "{actions:?}");
    for (place, action) in actions {
        let spec = catalogue::spec(&action)
            .unwrap_or_else(|| panic!("{place}: {action} is not in the catalogue"));
        let by: Vec<&str> = antibodies
            .iter()
            .filter(|a| a.handles(&action))
            .map(|a| a.name())
            .collect();
        assert_eq!(
            by,
            [spec.executor.as_str()],
            "{place}: {action} must be carried out by {} alone",
            spec.executor
        );
    }
}

#[test]
fn antibodies_handle_their_catalogue_entries_and_nothing_else() {
    let antibodies = every_antibody();
    for spec in catalogue::all() {
        for a in &antibodies {
            assert_eq!(
                a.handles(spec.name),
                a.name() == spec.executor.as_str() && !spec.coordinator_plan,
                "{} and {} (declared for {})",
                a.name(),
                spec.name,
                spec.executor
            );
        }
    }
    for stranger in [
        "throttle_37",
        "throttle_0",
        "rm -rf /",
        "",
        "RESET_THROTTLE",
    ] {
        assert!(
            antibodies.iter().all(|a| !a.handles(stranger)),
            "{stranger:?} is not in the catalogue"
        );
    }
}

/// The coordinator's plans are declared (the seed's tables name them)
/// and handled by no antibody: an agent sent one answers `unsupported`.
/// The actions they are made of are handled by the workloads antibody.
#[test]
fn coordinator_plans_are_handled_by_no_antibody() {
    let antibodies = every_antibody();
    let plans: Vec<&str> = catalogue::all()
        .filter(|s| s.coordinator_plan)
        .map(|s| s.name)
        .collect();
    assert_eq!(
        plans,
        [
            "redistribute",
            "shutdown_non_essential",
            "failover",
            "failback"
        ]
    );
    for plan in plans {
        assert!(
            antibodies.iter().all(|a| !a.handles(plan)),
            "{plan} is handled by an antibody"
        );
    }
    for action in [
        catalogue::WORKLOAD_START,
        catalogue::WORKLOAD_STOP,
        catalogue::NODE_DRAIN,
        catalogue::NODE_UNDRAIN,
    ] {
        let by: Vec<&str> = antibodies
            .iter()
            .filter(|a| a.handles(action))
            .map(|a| a.name())
            .collect();
        assert_eq!(by, ["workloads"], "{action}");
    }
}
