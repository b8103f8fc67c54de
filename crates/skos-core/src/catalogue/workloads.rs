//! Workload actions, named by the seed's healing tables. No antibody
//! executes them yet: agents answer `unsupported`, and no default table of
//! SKOS names them.

use super::{ActionSpec, Executor::Workloads};

/// The agent action that starts a workload on a node (a step of a
/// placement plan).
pub const WORKLOAD_START: &str = "workload_start";
/// The agent action that stops a workload on a node (a step of a
/// placement plan).
pub const WORKLOAD_STOP: &str = "workload_stop";

/// Whether `action` is a step of a placement plan.
pub fn is_workload_step(action: &str) -> bool {
    action == WORKLOAD_START || action == WORKLOAD_STOP
}

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new("redistribute", Workloads).destructive(),
    ActionSpec::new("shutdown_non_essential", Workloads).destructive(),
    ActionSpec::new("failover", Workloads).destructive(),
    ActionSpec::new("failback", Workloads).destructive(),
];
