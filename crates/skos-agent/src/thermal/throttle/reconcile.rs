//! What the hardware holds against what was recorded: caps in force that
//! SKOS has no original for ([`UnexplainedCap`]), what a heartbeat says of
//! the throttle ([`ThrottleReport`]), the values the coordinator gives back
//! (adopted only for a target found here, after a [`Check`]), and the
//! actuators this machine has ([`Actuators`]).

use skos_core::escape::ShowPath;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use skos_core::catalogue::ThrottleOriginal;

use super::cgroup::{parse_cfs_quota, parse_cpu_max, MIN_QUOTA_US};
use super::files::read_u64;
use super::state::Target;
use super::Throttler;

/// A cap in force that SKOS has no record of: SKOS set it before its
/// record was lost (a data dir wiped), or someone else did. Reported in
/// heartbeats (`metadata.throttle.unexplained`) and counted in the
/// heartbeat's `throttle_level`; lifted only with an original from the
/// coordinator's copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnexplainedCap {
    /// The target's wire name (`cpufreq:policy<N>`, or
    /// `cpufreq:policy<A>-<B>` for policies that follow one another with
    /// the same cap; `file:<relative path>`, `gpu:<uuid>`).
    pub target: String,
    /// The file (full path; the first policy's for a range) or
    /// `nvml:<uuid>:power_limit_mw`.
    pub path: String,
    /// What it holds.
    pub value: String,
    /// What it holds uncapped: the policy's full speed in kHz, the quota
    /// file's unlimited value, the GPU's default power limit in mW.
    pub full: String,
    /// The share it takes away, in percent (at least 1).
    pub percent: u8,
}

/// An [`UnexplainedCap`] with what the throttler needs to lift it.
#[derive(Debug, Clone)]
pub(super) struct Unexplained {
    pub(super) target: Target,
    pub(super) check: Check,
    pub(super) cap: UnexplainedCap,
}

/// How a value given for a target (an original from the coordinator) is
/// checked before it is used: it must be a value the target can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// A frequency in kHz within the policy's `cpuinfo_{min,max}_freq`.
    Freq { min: u64, max: u64 },
    /// A cgroup v2 `cpu.max` (`max <period>` or `<quota> <period>`).
    CpuMax,
    /// A cgroup v1 `cpu.cfs_quota_us` (`-1` or a quota).
    CfsQuota,
    /// A power limit in mW within the GPU's constraints.
    PowerLimit { min: u32, max: u32 },
}

impl Check {
    /// Whether `value` is one the target can hold.
    pub(super) fn accepts(self, value: &str) -> bool {
        let value = value.trim();
        match self {
            Check::Freq { min, max } => value
                .parse::<u64>()
                .is_ok_and(|khz| (min..=max).contains(&khz)),
            Check::CpuMax => parse_cpu_max(value)
                .is_some_and(|(quota, _)| quota.is_none_or(|q| q >= MIN_QUOTA_US)),
            Check::CfsQuota => {
                parse_cfs_quota(value).is_some_and(|quota| quota.is_none_or(|q| q >= MIN_QUOTA_US))
            }
            Check::PowerLimit { min, max } => value
                .parse::<u32>()
                .is_ok_and(|mw| (min..=max).contains(&mw)),
        }
    }
}

/// At most this many [`UnexplainedCap`]s go into a report (policies that
/// follow one another with the same cap are one): a heartbeat must stay
/// under the message size limit on a machine with hundreds of policies.
pub const MAX_REPORTED_CAPS: usize = 32;

/// What a heartbeat says of the throttle (see [`Throttler::report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleReport {
    /// The level SKOS applied and recorded (0 = none).
    pub level: u8,
    /// What the heartbeat's `throttle_level` says: the recorded level, or
    /// more when an unexplained cap takes more away.
    pub effective_level: u8,
    /// The recorded originals, as the coordinator keeps them, compacted
    /// ([`ThrottleOriginal::compact`]).
    pub originals: Vec<ThrottleOriginal>,
    /// The caps in force with no record: policies that follow one another
    /// with the same cap as one entry (`cpufreq:policy<A>-<B>`), at most
    /// [`MAX_REPORTED_CAPS`] entries.
    pub unexplained: Vec<UnexplainedCap>,
    /// How many targets hold a cap with no record (all of them, also those
    /// past [`MAX_REPORTED_CAPS`]).
    pub unexplained_count: usize,
}

/// What this machine offers to throttle (see [`Throttler::actuators`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actuators {
    /// cpufreq policies whose `scaling_max_freq` can be capped.
    pub cpufreq_policies: usize,
    /// Configured cgroups found with a CPU quota file.
    pub cgroups: Vec<String>,
    /// GPUs NVML sees, when GPU power limits are on.
    pub gpus: u32,
    /// Why each kind that offers nothing offers nothing.
    pub absent: Vec<String>,
}

impl Actuators {
    /// Nothing to throttle at all.
    pub fn is_empty(&self) -> bool {
        self.cpufreq_policies == 0 && self.cgroups.is_empty() && self.gpus == 0
    }
}

impl fmt::Display for Actuators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.cpufreq_policies > 0 {
            parts.push(format!(
                "cpufreq caps on {} policy(ies)",
                self.cpufreq_policies
            ));
        }
        if !self.cgroups.is_empty() {
            parts.push(format!("CPU quotas of cgroup {}", self.cgroups.join(", ")));
        }
        if self.gpus > 0 {
            parts.push(format!("power limits of {} GPU(s)", self.gpus));
        }
        if parts.is_empty() {
            parts.push("none".to_string());
        }
        write!(f, "{}", parts.join(", "))?;
        if !self.absent.is_empty() {
            write!(f, " (not available: {})", self.absent.join("; "))?;
        }
        Ok(())
    }
}

impl Throttler {
    /// Compares what the hardware holds with what is recorded, and keeps
    /// the caps in force that nothing recorded explains: a
    /// `scaling_max_freq` below the policy's full speed, a configured
    /// cgroup's quota below its CPUs, a GPU power limit below its default
    /// (when GPU power limits are on). Each new one is logged.
    pub(super) fn reconcile(&mut self) {
        let mut found = Vec::new();
        if self.cfg.cpufreq {
            self.unexplained_freqs(&mut found);
        }
        if !self.cfg.cgroups.is_empty() {
            let ncpus = self.online_cpus();
            for rel in &self.cfg.cgroups {
                let Some(limit) = self.cgroup_limit(rel, ncpus) else {
                    continue;
                };
                let Ok(target) = self.file_target(&limit.file) else {
                    continue;
                };
                if self.original(&target).is_some() {
                    continue;
                }
                self.push_unexplained(
                    &mut found,
                    target,
                    limit.check,
                    limit.text,
                    limit.full,
                    limit.percent,
                );
            }
        }
        if self.cfg.gpu_power_limit {
            for (target, limit, default, check) in self.gpu_limits() {
                if self.original(&target).is_some() {
                    continue;
                }
                let percent = share_taken(u64::from(default), u64::from(limit));
                self.push_unexplained(
                    &mut found,
                    target,
                    check,
                    limit.to_string(),
                    default.to_string(),
                    percent,
                );
            }
        }
        for u in &found {
            let known = self
                .unexplained
                .iter()
                .any(|k| k.target == u.target && k.cap.value == u.cap.value);
            if !known {
                tracing::warn!(
                    target = %u.cap.path,
                    value = %u.cap.value,
                    full = %u.cap.full,
                    percent = u.cap.percent,
                    "a cap is in force that SKOS has no record of: reported as unexplained, lifted only with the coordinator's copy of its original"
                );
            }
        }
        self.unexplained = found;
    }

    fn unexplained_freqs(&self, found: &mut Vec<Unexplained>) {
        let (_, policies) = self.policies();
        for (_, dir) in policies {
            let file = dir.join("scaling_max_freq");
            let (Ok(min), Ok(max), Ok(khz), Ok(target)) = (
                read_u64(&dir.join("cpuinfo_min_freq")),
                read_u64(&dir.join("cpuinfo_max_freq")),
                read_u64(&file),
                self.file_target(&file),
            ) else {
                continue;
            };
            if self.original(&target).is_some() {
                continue;
            }
            let full = self.full_speed(&dir, max);
            if khz >= full {
                continue;
            }
            self.push_unexplained(
                found,
                target,
                Check::Freq { min, max },
                khz.to_string(),
                full.to_string(),
                share_taken(full, khz),
            );
        }
    }

    fn push_unexplained(
        &self,
        found: &mut Vec<Unexplained>,
        target: Target,
        check: Check,
        value: String,
        full: String,
        percent: u8,
    ) {
        let Some(wire) = target.wire() else {
            tracing::warn!(target = %self.describe(&target), "a cap with no record on a target the wire cannot name; not reported");
            return;
        };
        found.push(Unexplained {
            cap: UnexplainedCap {
                target: wire,
                path: self.describe(&target),
                value,
                full,
                percent,
            },
            target,
            check,
        });
    }

    /// A policy's full speed in kHz: `cpuinfo_max_freq`, or, while turbo
    /// or boost is switched off (`intel_pstate/no_turbo` 1, `cpufreq/boost`
    /// 0) and the policy says so, its `base_frequency`: a
    /// `scaling_max_freq` held there by the driver is no cap.
    fn full_speed(&self, dir: &Path, max: u64) -> u64 {
        let cpu = self.root.join("devices/system/cpu");
        let read = |p: &Path| std::fs::read_to_string(p).map(|t| t.trim().to_string());
        let boost_off = read(&cpu.join("intel_pstate/no_turbo")).is_ok_and(|t| t == "1")
            || read(&cpu.join("cpufreq/boost")).is_ok_and(|t| t == "0");
        if boost_off {
            if let Ok(base) = read_u64(&dir.join("base_frequency")) {
                if base > 0 && base < max {
                    return base;
                }
            }
        }
        max
    }

    /// The value the coordinator gives for `target` (in `given`), when
    /// there is no record of its own, the target holds a cap this agent
    /// reports as unexplained (as last reconciled), and the value passes
    /// `check`. A target that is not capped keeps what it holds as its
    /// original: a stale or foreign copy never becomes one.
    pub(super) fn adopt(
        &self,
        target: &Target,
        check: Check,
        given: &[ThrottleOriginal],
    ) -> Option<String> {
        if !self.unexplained.iter().any(|u| u.target == *target) {
            return None;
        }
        self.given_original(target, check, given)
    }

    /// The value the coordinator gives for `target` (in `given`), when
    /// there is no record of its own and the value passes `check`; for a
    /// target known to hold an unexplained cap ([`Self::adopt`] checks).
    pub(super) fn given_original(
        &self,
        target: &Target,
        check: Check,
        given: &[ThrottleOriginal],
    ) -> Option<String> {
        if self.original(target).is_some() {
            return None;
        }
        let name = target.wire()?;
        let value = ThrottleOriginal::find(given, &name)?;
        if check.accepts(value) {
            Some(value.trim().to_string())
        } else {
            tracing::warn!(target = %self.describe(target), value = %value, "the coordinator's original is not a value this target can hold; ignored");
            None
        }
    }

    /// What a heartbeat says of the throttle: the recorded level and
    /// originals, the unexplained caps, and the level in force, which an
    /// unexplained cap raises to what it takes away.
    pub fn report(&self) -> ThrottleReport {
        let originals = self
            .state
            .originals
            .iter()
            .filter_map(|o| {
                let target = o.target.wire()?;
                ThrottleOriginal::value_ok(&o.value).then(|| ThrottleOriginal {
                    target,
                    value: o.value.clone(),
                })
            })
            .collect();
        let effective_level = self
            .unexplained
            .iter()
            .map(|u| u.cap.percent)
            .fold(self.state.level, u8::max);
        let mut unexplained = group_caps(&self.unexplained);
        unexplained.truncate(MAX_REPORTED_CAPS);
        ThrottleReport {
            level: self.state.level,
            effective_level,
            originals: ThrottleOriginal::compact(originals),
            unexplained,
            unexplained_count: self.unexplained.len(),
        }
    }

    /// The caps in force that SKOS has no record of, as last reconciled
    /// (at start, and after every apply and reset).
    pub fn unexplained_caps(&self) -> Vec<UnexplainedCap> {
        self.unexplained.iter().map(|u| u.cap.clone()).collect()
    }

    /// What this machine offers to throttle: cpufreq policies (when
    /// `cpufreq` is on), the configured cgroups found with a quota file,
    /// the GPUs NVML sees (when `gpu_power_limit` is on), and why each
    /// kind that offers nothing offers nothing.
    pub fn actuators(&self) -> Actuators {
        let mut a = Actuators::default();
        if self.cfg.cpufreq {
            let (base, policies) = self.policies();
            a.cpufreq_policies = policies
                .iter()
                .filter(|(_, dir)| dir.join("scaling_max_freq").is_file())
                .count();
            if a.cpufreq_policies == 0 {
                a.absent
                    .push(format!("no cpufreq policy under {}", base.escaped()));
            }
        } else {
            a.absent
                .push("cpufreq caps are off (thermal.throttle.cpufreq)".to_string());
        }
        if self.cfg.cgroups.is_empty() {
            a.absent
                .push("no cgroup configured (thermal.throttle.cgroups)".to_string());
        }
        for rel in &self.cfg.cgroups {
            match self.resolve_cgroup(rel) {
                Ok(_) => a.cgroups.push(rel.escaped().to_string()),
                Err(e) => a.absent.push(format!("cgroup {}: {e}", rel.escaped())),
            }
        }
        if self.cfg.gpu_power_limit {
            match self.gpu_count() {
                Ok(0) => a.absent.push("NVML sees no GPU".to_string()),
                Ok(n) => a.gpus = n,
                Err(why) => a.absent.push(why),
            }
        } else {
            a.absent
                .push("GPU power limits are off (thermal.throttle.gpu_power_limit)".to_string());
        }
        a
    }
}

/// The caps, with cpufreq policies that follow one another and hold the
/// same cap (value, full speed) as one entry named
/// `cpufreq:policy<A>-<B>` (its path is the first policy's).
fn group_caps(caps: &[Unexplained]) -> Vec<UnexplainedCap> {
    let mut out: Vec<(Option<(u32, u32)>, UnexplainedCap)> = Vec::new();
    for u in caps {
        let policy = u.target.policy();
        if let (Some(n), Some((Some((first, last)), prev))) = (policy, out.last_mut()) {
            if last.checked_add(1) == Some(n)
                && prev.value == u.cap.value
                && prev.full == u.cap.full
            {
                *last = n;
                prev.target = ThrottleOriginal::cpufreq_target(*first, n);
                continue;
            }
        }
        out.push((policy.map(|n| (n, n)), u.cap.clone()));
    }
    out.into_iter().map(|(_, cap)| cap).collect()
}

/// The share of `full` that `value` takes away, in percent, at least 1.
fn share_taken(full: u64, value: u64) -> u8 {
    if full == 0 {
        return 1;
    }
    let taken = u128::from(full.saturating_sub(value)) * 100 / u128::from(full);
    u8::try_from(taken).unwrap_or(100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_values_must_fit_their_target() {
        let freq = Check::Freq {
            min: 800_000,
            max: 3_600_000,
        };
        assert!(freq.accepts("3600000") && freq.accepts("800000\n"));
        assert!(!freq.accepts("3600001") && !freq.accepts("0") && !freq.accepts("max"));
        assert!(Check::CpuMax.accepts("max 100000") && Check::CpuMax.accepts("200000 100000"));
        assert!(!Check::CpuMax.accepts("10 100000") && !Check::CpuMax.accepts("-1"));
        assert!(Check::CfsQuota.accepts("-1") && Check::CfsQuota.accepts("50000"));
        assert!(!Check::CfsQuota.accepts("5") && !Check::CfsQuota.accepts("max 100000"));
        let gpu = Check::PowerLimit {
            min: 100_000,
            max: 700_000,
        };
        assert!(gpu.accepts("700000") && !gpu.accepts("800000") && !gpu.accepts("-1"));
    }

    #[test]
    fn share_taken_is_at_least_one_percent() {
        assert_eq!(share_taken(3_600_000, 1_800_000), 50);
        assert_eq!(share_taken(3_600_000, 1_600_000), 55);
        assert_eq!(share_taken(3_600_000, 3_599_000), 1);
        assert_eq!(share_taken(3_600_000, 0), 100);
        assert_eq!(share_taken(0, 0), 1);
    }

    #[test]
    fn actuators_say_what_there_is_and_why_not() {
        let a = Actuators {
            cpufreq_policies: 4,
            cgroups: vec!["batch".into()],
            gpus: 0,
            absent: vec!["GPU power limits are off".into()],
        };
        assert!(!a.is_empty());
        assert_eq!(
            a.to_string(),
            "cpufreq caps on 4 policy(ies), CPU quotas of cgroup batch (not available: GPU power limits are off)"
        );
        let none = Actuators {
            absent: vec!["no cpufreq policy under /x".into()],
            ..Actuators::default()
        };
        assert!(none.is_empty());
        assert_eq!(
            none.to_string(),
            "none (not available: no cpufreq policy under /x)"
        );
    }
}
