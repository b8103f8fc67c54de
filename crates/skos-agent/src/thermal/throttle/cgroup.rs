//! cgroups: the CPU quota of every configured cgroup (v2 `cpu.max`, v1
//! `cpu.cfs_quota_us`), found under `<root>/fs/cgroup` without leaving it.

use skos_core::escape::ShowPath;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Component, Path, PathBuf};

use skos_core::catalogue::ThrottleOriginal;

use super::files::{ensure_inside, read_trimmed, read_u64};
use super::reconcile::Check;
use super::{Step, Survey, Throttler};
use crate::{Error, Result};

/// Shortest CPU quota ever written, in µs (the kernel refuses less than
/// 1000 µs).
pub const MIN_QUOTA_US: u64 = 1000;

impl Throttler {
    pub(super) fn plan_cgroups(
        &self,
        level: u8,
        given: &[ThrottleOriginal],
        survey: &mut Survey,
    ) -> Result<Vec<Step>> {
        if self.cfg.cgroups.is_empty() {
            survey
                .absent
                .push("no cgroup configured (thermal.throttle.cgroups)".to_string());
            return Ok(Vec::new());
        }
        let ncpus = self.online_cpus();
        let mut cgroups: Vec<&PathBuf> = self.cfg.cgroups.iter().collect();
        // Children before parents: a v1 parent may not go below its children.
        cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let mut steps = Vec::new();
        for rel in cgroups {
            let step = match self.resolve_cgroup(rel)? {
                Cgroup::V2 { cpu_max } => self.plan_cgroup_v2(&cpu_max, ncpus, level, given)?,
                Cgroup::V1 { quota, period } => {
                    self.plan_cgroup_v1(&quota, &period, ncpus, level, given)?
                }
            };
            steps.push(step);
        }
        Ok(steps)
    }

    fn plan_cgroup_v2(
        &self,
        file: &Path,
        ncpus: usize,
        level: u8,
        given: &[ThrottleOriginal],
    ) -> Result<Step> {
        let current = read_trimmed(file)?;
        let target = self.file_target(file)?;
        let adopted = self.adopt(&target, Check::CpuMax, given);
        let original = self
            .original(&target)
            .or(adopted.as_deref())
            .unwrap_or(&current)
            .to_string();
        let (quota, period) = parse_cpu_max(&original).ok_or_else(|| Error::Parse {
            path: file.to_path_buf(),
            text: original.clone(),
            reason: "expected \"<quota|max> <period>\"".to_string(),
        })?;
        let mut new = cgroup_quota(period, ncpus, level);
        if let Some(quota) = quota {
            new = new.min(quota);
        }
        Ok(Step {
            target,
            current,
            new: format!("{new} {period}"),
            original,
            adopted: adopted.is_some(),
            cap: None,
        })
    }

    fn plan_cgroup_v1(
        &self,
        quota_file: &Path,
        period_file: &Path,
        ncpus: usize,
        level: u8,
        given: &[ThrottleOriginal],
    ) -> Result<Step> {
        let current = read_trimmed(quota_file)?;
        let period = read_u64(period_file)?;
        let target = self.file_target(quota_file)?;
        let adopted = self.adopt(&target, Check::CfsQuota, given);
        let original = self
            .original(&target)
            .or(adopted.as_deref())
            .unwrap_or(&current)
            .to_string();
        let quota = parse_cfs_quota(&original).ok_or_else(|| Error::Parse {
            path: quota_file.to_path_buf(),
            text: original.clone(),
            reason: "expected a quota in µs or -1".to_string(),
        })?;
        let mut new = cgroup_quota(period, ncpus, level);
        if let Some(quota) = quota {
            new = new.min(quota);
        }
        Ok(Step {
            target,
            current,
            new: new.to_string(),
            original,
            adopted: adopted.is_some(),
            cap: None,
        })
    }

    /// The quota in force on the configured cgroup `rel` when it limits
    /// the cgroup to less than every online CPU; `None` when it is
    /// unlimited or cannot be read.
    pub(super) fn cgroup_limit(&self, rel: &Path, ncpus: usize) -> Option<QuotaLimit> {
        let (file, text, quota, period, full, check) = match self.resolve_cgroup(rel).ok()? {
            Cgroup::V2 { cpu_max } => {
                let text = read_trimmed(&cpu_max).ok()?;
                let (quota, period) = parse_cpu_max(&text)?;
                let full = format!("max {period}");
                (cpu_max, text, quota?, period, full, Check::CpuMax)
            }
            Cgroup::V1 { quota, period } => {
                let text = read_trimmed(&quota).ok()?;
                let limit = parse_cfs_quota(&text)??;
                let period = read_u64(&period).ok()?;
                (
                    quota,
                    text,
                    limit,
                    period,
                    "-1".to_string(),
                    Check::CfsQuota,
                )
            }
        };
        let all = u128::from(period) * u128::try_from(ncpus.max(1)).unwrap_or(1);
        let quota = u128::from(quota);
        if quota >= all {
            return None;
        }
        let percent = u8::try_from((all - quota) * 100 / all)
            .unwrap_or(100)
            .max(1);
        Some(QuotaLimit {
            file,
            text,
            full,
            percent,
            check,
        })
    }

    /// Finds the quota files of the configured cgroup `rel`, refusing any
    /// path that leaves `<root>/fs/cgroup`.
    pub(super) fn resolve_cgroup(&self, rel: &Path) -> Result<Cgroup> {
        let cg_root = self.root.join("fs/cgroup");
        if rel.as_os_str().is_empty() {
            return Err(Error::Device {
                what: "throttle cgroup".to_string(),
                reason: "empty cgroup path".to_string(),
            });
        }
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Error::OutsideRoot {
                path: rel.to_path_buf(),
                root: cg_root,
            });
        }

        let v2 = cg_root.join(rel);
        if v2.exists() {
            ensure_inside(&v2, &cg_root)?;
            let cpu_max = v2.join("cpu.max");
            if cpu_max.is_file() {
                ensure_inside(&cpu_max, &cg_root)?;
                return Ok(Cgroup::V2 { cpu_max });
            }
        }
        for hierarchy in ["cpu", "cpu,cpuacct"] {
            let base = cg_root.join(hierarchy);
            let dir = base.join(rel);
            if !dir.exists() {
                continue;
            }
            ensure_inside(&dir, &base)?;
            ensure_inside(&dir, &cg_root)?;
            let quota = dir.join("cpu.cfs_quota_us");
            let period = dir.join("cpu.cfs_period_us");
            if quota.is_file() {
                ensure_inside(&quota, &base)?;
                ensure_inside(&period, &base)?;
                return Ok(Cgroup::V1 { quota, period });
            }
        }
        if v2.exists() {
            return Err(Error::Device {
                what: format!("cgroup {}", v2.escaped()),
                reason: "no cpu.max (is +cpu in its parent's cgroup.subtree_control?) \
                         and no cgroup v1 cpu.cfs_quota_us"
                    .to_string(),
            });
        }
        Err(Error::io(
            &v2,
            io::Error::new(
                ErrorKind::NotFound,
                format!(
                    "configured cgroup {} does not exist (nor under {}/cpu)",
                    rel.escaped(),
                    cg_root.escaped()
                ),
            ),
        ))
    }

    pub(super) fn online_cpus(&self) -> usize {
        let path = self.root.join("devices/system/cpu/online");
        let parsed = fs::read_to_string(&path)
            .ok()
            .and_then(|text| parse_cpu_list(&text));
        parsed.unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            tracing::debug!(path = %path.escaped(), ncpus = n, "cpu list unreadable; using available parallelism");
            n
        })
    }
}

/// A CPU quota in force that keeps a cgroup below every online CPU.
pub(super) struct QuotaLimit {
    /// The quota file (`cpu.max` or `cpu.cfs_quota_us`).
    pub(super) file: PathBuf,
    /// What it holds.
    pub(super) text: String,
    /// What it holds when unlimited (`max <period>`, `-1`).
    pub(super) full: String,
    /// The share of the CPUs it takes away, in percent (at least 1).
    pub(super) percent: u8,
    /// How a value for it is checked.
    pub(super) check: Check,
}

/// Where a configured cgroup's CPU quota lives.
pub(super) enum Cgroup {
    /// cgroup v2: its `cpu.max`.
    V2 { cpu_max: PathBuf },
    /// cgroup v1: its `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
    V1 { quota: PathBuf, period: PathBuf },
}

/// The CPU quota (µs per `period_us`) for a throttle of `level` percent of
/// `ncpus` CPUs: `period * ncpus * (100 - level) / 100`, at least
/// [`MIN_QUOTA_US`].
pub fn cgroup_quota(period_us: u64, ncpus: usize, level: u8) -> u64 {
    let keep = 100 - u64::from(level.min(100));
    let ncpus = u64::try_from(ncpus.max(1)).unwrap_or(u64::MAX);
    (period_us.saturating_mul(ncpus).saturating_mul(keep) / 100).max(MIN_QUOTA_US)
}

/// The number of CPUs in a kernel CPU list (`"0-3,8-11"` → 8, `"0"` → 1).
/// `None` for an empty or malformed list.
pub fn parse_cpu_list(text: &str) -> Option<usize> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count = 0usize;
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: usize = lo.trim().parse().ok()?;
                let hi: usize = hi.trim().parse().ok()?;
                if hi < lo {
                    return None;
                }
                count = count.checked_add(hi - lo + 1)?;
            }
            None => {
                part.parse::<usize>().ok()?;
                count = count.checked_add(1)?;
            }
        }
    }
    Some(count)
}

/// A cgroup v2 `cpu.max`: `"max 100000"` → `(None, 100000)`,
/// `"150000 100000"` → `(Some(150000), 100000)`.
pub fn parse_cpu_max(text: &str) -> Option<(Option<u64>, u64)> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: u64 = fields.next()?.parse().ok()?;
    if fields.next().is_some() || period == 0 {
        return None;
    }
    let quota = match quota {
        "max" => None,
        q => Some(q.parse().ok()?),
    };
    Some((quota, period))
}

/// A cgroup v1 `cpu.cfs_quota_us`: `"-1"` (or any negative) → `Some(None)`
/// (unlimited), `"50000"` → `Some(Some(50000))`.
pub fn parse_cfs_quota(text: &str) -> Option<Option<u64>> {
    let quota: i64 = text.trim().parse().ok()?;
    Some(u64::try_from(quota).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_quota_scales_with_cpus_and_has_a_floor() {
        assert_eq!(cgroup_quota(100_000, 4, 50), 200_000);
        assert_eq!(cgroup_quota(100_000, 1, 10), 90_000);
        assert_eq!(cgroup_quota(100_000, 8, 100), MIN_QUOTA_US);
        assert_eq!(cgroup_quota(1_000, 1, 99), MIN_QUOTA_US);
        assert_eq!(cgroup_quota(100_000, 0, 50), 50_000);
        assert_eq!(cgroup_quota(u64::MAX, usize::MAX, 10), u64::MAX / 100);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0,2,4-5"), Some(4));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("\n"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a-b"), None);
        assert_eq!(parse_cpu_list("0,,1"), None);
    }

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), Some((None, 100_000)));
        assert_eq!(
            parse_cpu_max("150000 100000"),
            Some((Some(150_000), 100_000))
        );
        assert_eq!(parse_cpu_max("max"), None);
        assert_eq!(parse_cpu_max("max 0"), None);
        assert_eq!(parse_cpu_max("-1 100000"), None);
        assert_eq!(parse_cpu_max("1 2 3"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn cfs_quota() {
        assert_eq!(parse_cfs_quota("-1\n"), Some(None));
        assert_eq!(parse_cfs_quota("50000"), Some(Some(50_000)));
        assert_eq!(parse_cfs_quota("max"), None);
    }
}
