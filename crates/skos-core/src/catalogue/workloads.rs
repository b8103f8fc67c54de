//! Workload actions. Agents carry out `workload_start` and `workload_stop`
//! on one named workload, and `node_drain` / `node_undrain` on a node that
//! belongs to an orchestrator (the workloads antibody). The others are plans of
//! the coordinator ([`ActionSpec::coordinator_plan`]): it carries them out
//! as a series of `workload_start` / `workload_stop` commands to the nodes
//! concerned, and never sends them to an agent as such.

use super::{ActionSpec, Executor::Workloads, ParamKind::Token};

/// Start a configured workload on this node: succeeds once its health
/// check passes within `start_timeout_seconds`.
pub const START: &str = "workload_start";
/// Stop a workload on this node; `fence: "true"` says (for the record)
/// that it stops because the workload now runs elsewhere.
pub const STOP: &str = "workload_stop";

/// Run the node's `nodes.<node>.orchestrator.drain` command (parameter
/// `node`): its orchestrator moves its work elsewhere.
pub const NODE_DRAIN: &str = "node_drain";
/// Run the node's `nodes.<node>.orchestrator.undrain` command (parameter
/// `node`): its orchestrator may place work on it again.
pub const NODE_UNDRAIN: &str = "node_undrain";

/// Whether `action` is a step of a placement plan.
pub fn is_workload_step(action: &str) -> bool {
    matches!(action, START | STOP | NODE_DRAIN | NODE_UNDRAIN)
}

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new(START, Workloads).params(&[("workload", Token)]),
    ActionSpec::new(STOP, Workloads)
        .params(&[("workload", Token), ("fence", Token)])
        .destructive(),
    ActionSpec::new(NODE_DRAIN, Workloads)
        .params(&[("node", Token)])
        .destructive(),
    ActionSpec::new(NODE_UNDRAIN, Workloads).params(&[("node", Token)]),
    ActionSpec::new("redistribute", Workloads)
        .destructive()
        .coordinator_plan(),
    ActionSpec::new("shutdown_non_essential", Workloads)
        .destructive()
        .coordinator_plan(),
    ActionSpec::new("failover", Workloads)
        .destructive()
        .coordinator_plan(),
    ActionSpec::new("failback", Workloads)
        .destructive()
        .coordinator_plan(),
];
