//! Workload actions, named by the seed's healing tables. No antibody
//! executes them yet: agents answer `unsupported`, and no default table of
//! SKOS names them.

use super::{ActionSpec, Executor::Workloads};

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new("redistribute", Workloads).destructive(),
    ActionSpec::new("shutdown_non_essential", Workloads).destructive(),
    ActionSpec::new("failover", Workloads).destructive(),
    ActionSpec::new("failback", Workloads).destructive(),
];
