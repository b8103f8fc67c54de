//! The thermal sentinel's actions: cap the node's CPUs (cpufreq, cgroup
//! quotas) and GPUs (power limits) by a percentage, and lift the cap.
//!
//! Every one of them may carry [`ORIGINALS`]: the coordinator's copy of
//! the values the node had before SKOS throttled it, which the agent
//! reported in its heartbeats (`metadata.throttle.originals`). An agent
//! that lost its own record (its data dir) takes a value from there for a
//! target it found itself and has no record of; the parameter never names
//! a target the agent would not touch anyway.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActionSpec, Executor::ThermalSentinel, ParamKind};

/// The parameter that carries the coordinator's copy of the originals.
pub const ORIGINALS: &str = "originals";

/// The most originals one list may hold (one per cpufreq policy, cgroup
/// and GPU of a node).
pub const MAX_ORIGINALS: usize = 4096;

const PARAMS: &[(&str, ParamKind)] = &[(ORIGINALS, ParamKind::ThrottleOriginals)];

/// The action that lifts a throttle SKOS applied.
pub(super) const RESET: &str = "reset_throttle";

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new("throttle_10", ThermalSentinel)
        .params(PARAMS)
        .verified(),
    ActionSpec::new("throttle_50", ThermalSentinel)
        .params(PARAMS)
        .verified(),
    ActionSpec::new("throttle_100", ThermalSentinel)
        .params(PARAMS)
        .verified(),
    // Lifting the cap is the recovery, not a fix to verify.
    ActionSpec::new(RESET, ThermalSentinel).params(PARAMS),
];

/// `throttle_<n>` → n, for n in 1..=100.
pub(super) fn level_of(action: &str) -> Option<u8> {
    let n: u8 = action.strip_prefix("throttle_")?.parse().ok()?;
    (1..=100).contains(&n).then_some(n)
}

/// One value a throttle changed, as it was before: what agents report in
/// `metadata.throttle.originals` and the coordinator gives back in
/// [`ORIGINALS`].
///
/// `target` is `cpufreq:policy<N>` (the `scaling_max_freq` of a cpufreq
/// policy, in kHz; `cpufreq:policy<A>-<B>` for policies A to B that share
/// the value, see [`ThrottleOriginal::compact`]), `file:<path relative
/// to the sysfs root>` (a `cpu.max` or `cpu.cfs_quota_us`) or
/// `gpu:<uuid>` (a power limit in mW); `value` is the file's text or the
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleOriginal {
    pub target: String,
    pub value: String,
}

/// Why a list of originals was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginalsError {
    #[error("not a list of {{target, value}} objects")]
    NotAList,
    #[error("more than {MAX_ORIGINALS} originals")]
    TooMany,
    #[error("original {index}: bad target")]
    BadTarget { index: usize },
    #[error("original {index}: bad value")]
    BadValue { index: usize },
}

impl ThrottleOriginal {
    /// Reads and checks a list of originals (a parameter, or a
    /// heartbeat's `metadata.throttle.originals`): at most
    /// [`MAX_ORIGINALS`] objects of exactly `target` and `value`, each
    /// target well-formed (see [`ThrottleOriginal::target_ok`]) and each
    /// value short plain text (letters, digits, `-`, spaces).
    ///
    /// # Errors
    /// [`OriginalsError`] naming the first offending entry.
    pub fn parse_list(value: &Value) -> Result<Vec<ThrottleOriginal>, OriginalsError> {
        let list = value.as_array().ok_or(OriginalsError::NotAList)?;
        if list.len() > MAX_ORIGINALS {
            return Err(OriginalsError::TooMany);
        }
        let mut out = Vec::with_capacity(list.len());
        for (index, entry) in list.iter().enumerate() {
            let obj = entry.as_object().ok_or(OriginalsError::NotAList)?;
            if obj.len() != 2 {
                return Err(OriginalsError::NotAList);
            }
            let target = obj
                .get("target")
                .and_then(Value::as_str)
                .filter(|t| Self::target_ok(t))
                .ok_or(OriginalsError::BadTarget { index })?;
            let value = obj
                .get("value")
                .and_then(Value::as_str)
                .filter(|v| Self::value_ok(v))
                .ok_or(OriginalsError::BadValue { index })?;
            out.push(ThrottleOriginal {
                target: target.to_string(),
                value: value.to_string(),
            });
        }
        Ok(out)
    }

    /// A target name: `cpufreq:policy<N>` or `cpufreq:policy<A>-<B>`
    /// (A < B), `file:` and a relative path of visible ASCII components
    /// (no `.` or `..`, no empty one), or `gpu:` and a UUID of letters,
    /// digits and `-`; at most 512 bytes.
    pub fn target_ok(target: &str) -> bool {
        if target.len() > 512 {
            return false;
        }
        if target.starts_with(CPUFREQ) {
            return policy_range(target).is_some();
        }
        if let Some(path) = target.strip_prefix("file:") {
            return !path.is_empty()
                && path.split('/').all(|c| {
                    !c.is_empty()
                        && c != "."
                        && c != ".."
                        && c.chars().all(|ch| ch.is_ascii_graphic())
                });
        }
        if let Some(uuid) = target.strip_prefix("gpu:") {
            return !uuid.is_empty() && uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        }
        false
    }

    /// The name of the `scaling_max_freq` of cpufreq policies `first` to
    /// `last` (one policy when they are the same).
    pub fn cpufreq_target(first: u32, last: u32) -> String {
        if first == last {
            format!("{CPUFREQ}{first}")
        } else {
            format!("{CPUFREQ}{first}-{last}")
        }
    }

    /// The value `list` gives for `target`: its entry, or for a cpufreq
    /// policy the entry whose range holds it.
    pub fn find<'a>(list: &'a [ThrottleOriginal], target: &str) -> Option<&'a str> {
        if let Some(o) = list.iter().find(|o| o.target == target) {
            return Some(&o.value);
        }
        let (n, _) = policy_range(target)?;
        list.iter()
            .find(|o| policy_range(&o.target).is_some_and(|(a, b)| (a..=b).contains(&n)))
            .map(|o| o.value.as_str())
    }

    /// `list` with the cpufreq policies that follow one another and share a
    /// value merged into one `cpufreq:policy<A>-<B>` entry (one per machine
    /// when all policies had the same original, as usual), cpufreq first,
    /// the others after in their order: a machine with hundreds of
    /// policies fits in a heartbeat.
    pub fn compact(list: Vec<ThrottleOriginal>) -> Vec<ThrottleOriginal> {
        let (mut freqs, others): (Vec<_>, Vec<_>) = list
            .into_iter()
            .partition(|o| policy_range(&o.target).is_some());
        freqs.sort_by_key(|o| policy_range(&o.target));
        let mut merged: Vec<(u32, u32, String)> = Vec::new();
        for o in freqs {
            let Some((first, last)) = policy_range(&o.target) else {
                continue;
            };
            match merged.last_mut() {
                Some((_, end, value)) if *value == o.value && end.checked_add(1) == Some(first) => {
                    *end = last;
                }
                _ => merged.push((first, last, o.value)),
            }
        }
        merged
            .into_iter()
            .map(|(first, last, value)| ThrottleOriginal {
                target: Self::cpufreq_target(first, last),
                value,
            })
            .chain(others)
            .collect()
    }

    /// A value: 1 to 64 bytes of letters, digits, `-` and spaces, not all
    /// spaces (`3600000`, `max 100000`, `-1`).
    pub fn value_ok(value: &str) -> bool {
        !value.trim().is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ' ')
    }
}

/// The prefix of a cpufreq policy's target name.
const CPUFREQ: &str = "cpufreq:policy";

/// The policies a `cpufreq:policy<N>` or `cpufreq:policy<A>-<B>` target
/// names, as (first, last); `None` for any other name, or a range that is
/// empty or backwards.
fn policy_range(target: &str) -> Option<(u32, u32)> {
    let rest = target.strip_prefix(CPUFREQ)?;
    let number = |t: &str| -> Option<u32> {
        (!t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    match rest.split_once('-') {
        None => number(rest).map(|n| (n, n)),
        Some((a, b)) => {
            let (a, b) = (number(a)?, number(b)?);
            (a < b).then_some((a, b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn originals_lists_are_checked() {
        let ok = json!([
            {"target": "cpufreq:policy0-3", "value": "3600000"},
            {"target": "file:fs/cgroup/system.slice/batch@1.service/cpu.max", "value": "max 100000"},
            {"target": "file:fs/cgroup/cpu/legacy/cpu.cfs_quota_us", "value": "-1"},
            {"target": "gpu:GPU-0a1b2c3d-aaaa-bbbb-cccc-000011112222", "value": "700000"},
        ]);
        let list = ThrottleOriginal::parse_list(&ok).unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list[1].value, "max 100000");

        let bad = |v: Value| ThrottleOriginal::parse_list(&v).unwrap_err();
        assert_eq!(bad(json!("3600000")), OriginalsError::NotAList);
        assert_eq!(
            bad(json!([{"target": "file:a", "value": "1", "x": 1}])),
            OriginalsError::NotAList
        );
        for target in [
            "/etc/passwd",
            "file:/etc/passwd",
            "file:../etc/passwd",
            "file:fs/cgroup/../../etc/passwd",
            "file:fs//cpu.max",
            "file:fs/./cpu.max",
            "file:fs/cg roup/cpu.max",
            "file:",
            "gpu:",
            "gpu:GPU-1;rm",
            "nvml:GPU-1",
            "cpufreq:policy",
            "cpufreq:policy3-3",
            "cpufreq:policy4-2",
            "cpufreq:policy-1",
            "cpufreq:policy1-",
            "cpufreq:policyx",
            "cpufreq:policy1234567890",
        ] {
            assert_eq!(
                bad(json!([{"target": target, "value": "1"}])),
                OriginalsError::BadTarget { index: 0 },
                "{target}"
            );
        }
        for value in ["", " ", "1;reboot", "a\nb", &"9".repeat(65)] {
            assert_eq!(
                bad(json!([{"target": "file:a", "value": value}])),
                OriginalsError::BadValue { index: 0 },
                "{value:?}"
            );
        }
        let many: Vec<Value> = (0..=MAX_ORIGINALS)
            .map(|i| json!({"target": format!("file:p{i}"), "value": "1"}))
            .collect();
        assert_eq!(bad(Value::Array(many)), OriginalsError::TooMany);
    }

    #[test]
    fn cpufreq_originals_are_compacted_and_found_in_their_range() {
        let o = |target: &str, value: &str| ThrottleOriginal {
            target: target.into(),
            value: value.into(),
        };
        let list = vec![
            o("file:fs/cgroup/batch/cpu.max", "max 100000"),
            o("cpufreq:policy2", "3600000"),
            o("cpufreq:policy0", "3600000"),
            o("cpufreq:policy1", "3600000"),
            o("cpufreq:policy3", "2000000"),
            o("cpufreq:policy5", "2000000"),
            o("cpufreq:policy6-9", "2000000"),
        ];
        let compact = ThrottleOriginal::compact(list);
        assert_eq!(
            compact,
            [
                o("cpufreq:policy0-2", "3600000"),
                o("cpufreq:policy3", "2000000"),
                o("cpufreq:policy5-9", "2000000"),
                o("file:fs/cgroup/batch/cpu.max", "max 100000"),
            ]
        );
        let find = |t: &str| ThrottleOriginal::find(&compact, t);
        assert_eq!(find("cpufreq:policy1"), Some("3600000"));
        assert_eq!(find("cpufreq:policy3"), Some("2000000"));
        assert_eq!(find("cpufreq:policy4"), None);
        assert_eq!(find("cpufreq:policy9"), Some("2000000"));
        assert_eq!(find("cpufreq:policy10"), None);
        assert_eq!(find("file:fs/cgroup/batch/cpu.max"), Some("max 100000"));
        assert_eq!(find("file:fs/cgroup/other/cpu.max"), None);
        assert_eq!(ThrottleOriginal::cpufreq_target(4, 4), "cpufreq:policy4");
        // Every compacted target is a valid one.
        assert!(compact
            .iter()
            .all(|o| ThrottleOriginal::target_ok(&o.target)));
    }
}
