//! Workload actions. Agents carry out `workload_start` and `workload_stop`
//! on one named workload (the workloads antibody). The others are plans of
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

/// Whether `action` is a step of a placement plan.
pub fn is_workload_step(action: &str) -> bool {
    action == START || action == STOP
}

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new(START, Workloads).params(&[("workload", Token)]),
    ActionSpec::new(STOP, Workloads)
        .params(&[("workload", Token), ("fence", Token)])
        .destructive(),
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
