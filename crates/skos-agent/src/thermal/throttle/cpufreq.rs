//! cpufreq: the cap of every policy, planned from `cpuinfo_{min,max}_freq`
//! and rounded down to a listed P-state, and what the driver put in force.

use skos_core::escape::ShowPath;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use skos_core::catalogue::ThrottleOriginal;

use super::files::{ensure_inside, parse_u64_at, read_trimmed, read_u64};
use super::reconcile::Check;
use super::state::Target;
use super::{Step, Survey, Throttler};
use crate::Result;

/// One cpufreq policy's cap: what a throttle asked for and what the driver
/// put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreqCap {
    /// The policy's `scaling_max_freq` file.
    pub path: String,
    /// The level's cap in kHz: `capped_freq(cpuinfo_min, cpuinfo_max, level)`.
    pub target_khz: u64,
    /// What was written, in kHz: the target rounded down to a listed
    /// P-state, and never above the original value.
    pub requested_khz: u64,
    /// What `scaling_max_freq` reads back, in kHz: the cap in force.
    pub accepted_khz: u64,
    /// `cpuinfo_max_freq`, the policy's full speed, in kHz.
    pub max_khz: u64,
}

impl FreqCap {
    /// The share of full speed the accepted cap takes away, in percent,
    /// rounded down: `(max - accepted) * 100 / max` (1,600,000 of 3,600,000
    /// kHz → 55).
    pub fn effective_percent(&self) -> u8 {
        if self.max_khz == 0 {
            return 0;
        }
        let taken = self.max_khz.saturating_sub(self.accepted_khz);
        u8::try_from(u128::from(taken) * 100 / u128::from(self.max_khz)).unwrap_or(100)
    }
}

/// The least [`FreqCap::effective_percent`] of `caps`: the throttle every
/// policy gets at least. `None` for no caps.
pub fn effective_throttle(caps: &[FreqCap]) -> Option<u8> {
    caps.iter().map(FreqCap::effective_percent).min()
}

#[derive(Debug, Clone, Copy)]
pub(super) struct CapPlan {
    /// The policy's place in the sorted list of policies.
    pub(super) index: usize,
    target_khz: u64,
    requested_khz: u64,
    max_khz: u64,
}

impl Throttler {
    /// The cpufreq policy directories (`policyN`), by number, and the
    /// directory they were looked for in. A directory that cannot be
    /// listed is logged and counts as none.
    pub(super) fn policies(&self) -> (PathBuf, Vec<(u64, PathBuf)>) {
        let base = self.root.join("devices/system/cpu/cpufreq");
        let mut policies: Vec<(u64, PathBuf)> = match fs::read_dir(&base) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| {
                    let name = entry.file_name();
                    let n = name.to_str()?.strip_prefix("policy")?.parse().ok()?;
                    Some((n, entry.path()))
                })
                .collect(),
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %base.escaped(), error = %e, "cannot list cpufreq policies");
                }
                Vec::new()
            }
        };
        policies.sort();
        (base, policies)
    }

    pub(super) fn plan_cpufreq(
        &self,
        level: u8,
        given: &[ThrottleOriginal],
        notes: &mut Vec<String>,
        survey: &mut Survey,
    ) -> Vec<Step> {
        if !self.cfg.cpufreq {
            survey
                .absent
                .push("cpufreq caps are off (thermal.throttle.cpufreq)".to_string());
            return Vec::new();
        }
        let (base, policies) = self.policies();
        if policies.is_empty() {
            notes.push(format!(
                "no cpufreq policies found under {}",
                base.escaped()
            ));
            survey
                .absent
                .push(format!("no cpufreq policy under {}", base.escaped()));
            return Vec::new();
        }

        let mut steps = Vec::new();
        for (index, (_, dir)) in policies.into_iter().enumerate() {
            match self.plan_policy(&dir, level, index, given) {
                Ok(step) => steps.push(step),
                Err(e) => {
                    tracing::warn!(path = %dir.escaped(), error = %e, "skipping cpufreq policy");
                    survey.broken.get_or_insert(e);
                }
            }
        }
        if steps.is_empty() {
            notes.push(format!("no usable cpufreq policy under {}", base.escaped()));
        }
        steps
    }

    fn plan_policy(
        &self,
        dir: &Path,
        level: u8,
        index: usize,
        given: &[ThrottleOriginal],
    ) -> Result<Step> {
        let min = read_u64(&dir.join("cpuinfo_min_freq"))?;
        let max = read_u64(&dir.join("cpuinfo_max_freq"))?;
        let file = dir.join("scaling_max_freq");
        let current = read_trimmed(&file)?;
        let current_khz = parse_u64_at(&file, &current)?;
        ensure_inside(&file, &self.root)?;
        let target = self.file_target(&file)?;
        let adopted = self.adopt(&target, Check::Freq { min, max }, given);
        let original_text = self
            .original(&target)
            .or(adopted.as_deref())
            .unwrap_or(&current)
            .to_string();
        let original = original_text.parse::<u64>().unwrap_or(current_khz);
        let cap = capped_freq(min, max, level);
        let wanted = read_pstates(&dir.join("scaling_available_frequencies"))
            .and_then(|pstates| highest_pstate_at_or_below(&pstates, cap))
            .unwrap_or(cap);
        let requested = wanted.min(original.max(min));
        // Asked for before, and the driver made it what it holds now:
        // writing it again would change nothing.
        let path = self.describe(&target);
        let answered = self.caps.iter().any(|c| {
            c.path == path && c.requested_khz == requested && c.accepted_khz == current_khz
        });
        let new = if answered { current_khz } else { requested };
        Ok(Step {
            target,
            current,
            new: new.to_string(),
            original: original_text,
            adopted: adopted.is_some(),
            cap: Some(CapPlan {
                index,
                target_khz: cap,
                requested_khz: requested,
                max_khz: max,
            }),
        })
    }

    /// The cap in force on a policy whose original is recorded (after an
    /// agent restart, before any new apply): what `scaling_max_freq` holds
    /// now, against the recorded level's cap. `None` when the policy
    /// cannot be read.
    pub(super) fn recorded_cap(&self, dir: &Path, index: usize) -> Option<FreqCap> {
        let min = read_u64(&dir.join("cpuinfo_min_freq")).ok()?;
        let max = read_u64(&dir.join("cpuinfo_max_freq")).ok()?;
        let file = dir.join("scaling_max_freq");
        let khz = read_u64(&file).ok()?;
        let target = self.file_target(&file).ok()?;
        self.original(&target)?;
        let plan = CapPlan {
            index,
            target_khz: capped_freq(min, max, self.state.level),
            requested_khz: khz,
            max_khz: max,
        };
        Some(self.freq_cap(&target, plan, khz))
    }

    pub(super) fn freq_cap(&self, target: &Target, plan: CapPlan, accepted_khz: u64) -> FreqCap {
        FreqCap {
            path: self.describe(target),
            target_khz: plan.target_khz,
            requested_khz: plan.requested_khz,
            accepted_khz,
            max_khz: plan.max_khz,
        }
    }
}

/// A policy's P-states (see [`parse_available_frequencies`]); `None` when
/// the driver lists none (no such file, as with `intel_pstate`) or the list
/// cannot be read or parsed (logged with the path): the cap is then written
/// as computed, and read back.
fn read_pstates(path: &Path) -> Option<Vec<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let pstates = parse_available_frequencies(&text);
            if pstates.is_none() {
                tracing::warn!(path = %path.escaped(), text = %text.trim(), "unparsable P-state list; ignored");
            }
            pstates
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.escaped(), error = %e, "cannot read the P-state list; ignored");
            None
        }
    }
}

/// Notes for the outcome's message: every group of policies whose cap in
/// force is not the level's cap (a P-state below it, a driver's rounding,
/// or a lower cap that was there before), with what was written when the
/// driver changed it.
pub(super) fn cap_notes(caps: &[FreqCap]) -> Vec<String> {
    let mut groups: Vec<(&FreqCap, usize)> = Vec::new();
    for cap in caps.iter().filter(|c| c.accepted_khz != c.target_khz) {
        let same = |g: &&mut (&FreqCap, usize)| {
            (
                g.0.target_khz,
                g.0.requested_khz,
                g.0.accepted_khz,
                g.0.max_khz,
            ) == (
                cap.target_khz,
                cap.requested_khz,
                cap.accepted_khz,
                cap.max_khz,
            )
        };
        match groups.iter_mut().find(same) {
            Some(group) => group.1 += 1,
            None => groups.push((cap, 1)),
        }
    }
    groups
        .into_iter()
        .map(|(cap, n)| {
            let written = if cap.requested_khz == cap.accepted_khz {
                String::new()
            } else {
                format!(" ({} kHz written)", cap.requested_khz)
            };
            format!(
                "cpufreq: {} kHz in force on {n} policy(ies) for a cap of {} kHz{written}, \
                 effective throttle {}%",
                cap.accepted_khz,
                cap.target_khz,
                cap.effective_percent()
            )
        })
        .collect()
}

/// The `scaling_max_freq` (kHz) for a throttle of `level` percent:
/// `max(min_khz, max_khz * (100 - level) / 100)`.
pub fn capped_freq(min_khz: u64, max_khz: u64, level: u8) -> u64 {
    let keep = 100 - u64::from(level.min(100));
    (max_khz.saturating_mul(keep) / 100).max(min_khz)
}

/// The P-states of a `scaling_available_frequencies` file, lowest first,
/// without duplicates. The kernel prints them space-separated in the
/// driver's table order with a trailing space (`acpi-cpufreq`: highest
/// first, `"3600000 2800000 800000 \n"`). `None` for an empty list, a word
/// that is not a number, or a frequency of 0.
pub fn parse_available_frequencies(text: &str) -> Option<Vec<u64>> {
    let mut freqs = text
        .split_whitespace()
        .map(|word| word.parse::<u64>().ok().filter(|&khz| khz > 0))
        .collect::<Option<Vec<u64>>>()?;
    if freqs.is_empty() {
        return None;
    }
    freqs.sort_unstable();
    freqs.dedup();
    Some(freqs)
}

/// The highest of `pstates` at or below `khz`, or the lowest of them when
/// none is that low (a cap cannot go below the slowest P-state). `None`
/// for no P-states.
pub fn highest_pstate_at_or_below(pstates: &[u64], khz: u64) -> Option<u64> {
    let lowest = pstates.iter().copied().min()?;
    Some(
        pstates
            .iter()
            .copied()
            .filter(|&f| f <= khz)
            .max()
            .unwrap_or(lowest),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_freq_takes_a_share_never_below_min() {
        assert_eq!(capped_freq(800_000, 3_600_000, 10), 3_240_000);
        assert_eq!(capped_freq(800_000, 3_600_000, 50), 1_800_000);
        assert_eq!(capped_freq(800_000, 3_600_000, 80), 800_000);
        assert_eq!(capped_freq(800_000, 3_600_000, 100), 800_000);
        assert_eq!(capped_freq(800_000, 3_600_000, 0), 3_600_000);
        assert_eq!(capped_freq(800_000, 3_600_000, 200), 800_000);
    }

    #[test]
    fn available_frequencies_as_the_kernel_prints_them() {
        // acpi-cpufreq: highest first, a trailing space and a newline.
        assert_eq!(
            parse_available_frequencies("3600000 2800000 2000000 800000 \n"),
            Some(vec![800_000, 2_000_000, 2_800_000, 3_600_000])
        );
        assert_eq!(
            parse_available_frequencies("800000 1200000"),
            Some(vec![800_000, 1_200_000])
        );
        // Boost entry and a duplicate.
        assert_eq!(
            parse_available_frequencies("3601000 3600000 3600000 \n"),
            Some(vec![3_600_000, 3_601_000])
        );
        assert_eq!(parse_available_frequencies(""), None);
        assert_eq!(parse_available_frequencies(" \n"), None);
        assert_eq!(parse_available_frequencies("<unsupported>\n"), None);
        assert_eq!(parse_available_frequencies("800000 fast"), None);
        assert_eq!(parse_available_frequencies("0 800000"), None);
        assert_eq!(parse_available_frequencies("-800000"), None);
    }

    #[test]
    fn highest_pstate_at_or_below_never_goes_under_the_lowest() {
        let p = [800_000, 1_200_000, 1_600_000, 2_000_000];
        assert_eq!(highest_pstate_at_or_below(&p, 1_800_000), Some(1_600_000));
        assert_eq!(highest_pstate_at_or_below(&p, 1_600_000), Some(1_600_000));
        assert_eq!(highest_pstate_at_or_below(&p, 9_000_000), Some(2_000_000));
        assert_eq!(highest_pstate_at_or_below(&p, 500_000), Some(800_000));
        assert_eq!(highest_pstate_at_or_below(&[], 500_000), None);
    }

    #[test]
    fn effective_throttle_is_what_the_accepted_cap_takes_away() {
        let cap = |accepted_khz| FreqCap {
            path: "policy0/scaling_max_freq".to_string(),
            target_khz: 1_800_000,
            requested_khz: 1_600_000,
            accepted_khz,
            max_khz: 3_600_000,
        };
        assert_eq!(cap(1_600_000).effective_percent(), 55);
        assert_eq!(cap(1_800_000).effective_percent(), 50);
        assert_eq!(cap(3_600_000).effective_percent(), 0);
        assert_eq!(cap(4_000_000).effective_percent(), 0);
        assert_eq!(cap(0).effective_percent(), 100);
        assert_eq!(
            effective_throttle(&[cap(800_000), cap(1_600_000)]),
            Some(55)
        );
        assert_eq!(effective_throttle(&[]), None);
        let notes = cap_notes(&[cap(1_600_000), cap(1_600_000), cap(1_800_000)]);
        assert_eq!(
            notes,
            [
                "cpufreq: 1600000 kHz in force on 2 policy(ies) for a cap of 1800000 kHz, \
                 effective throttle 55%"
            ]
        );
    }
}
