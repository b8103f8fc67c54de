//! The thermal sentinel's actions: cap the node's CPUs (cpufreq, cgroup
//! quotas) and GPUs (power limits) by a percentage, and lift the cap.

use super::{ActionSpec, Executor::ThermalSentinel};

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new("throttle_10", ThermalSentinel).verified(),
    ActionSpec::new("throttle_50", ThermalSentinel).verified(),
    ActionSpec::new("throttle_100", ThermalSentinel).verified(),
    // Lifting the cap is the recovery, not a fix to verify.
    ActionSpec::new("reset_throttle", ThermalSentinel),
];

/// `throttle_<n>` → n, for n in 1..=100.
pub(super) fn level_of(action: &str) -> Option<u8> {
    let n: u8 = action.strip_prefix("throttle_")?.parse().ok()?;
    (1..=100).contains(&n).then_some(n)
}
