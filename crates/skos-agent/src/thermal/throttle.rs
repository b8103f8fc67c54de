//! The thermal actuator: throttles the machine for real, and restores it.
//!
//! A throttle of `level` percent (`throttle_10`, `throttle_50`,
//! `throttle_100`) takes that share away from:
//!
//! * every cpufreq policy: `scaling_max_freq` becomes
//!   `max(cpuinfo_min_freq, cpuinfo_max_freq * (100 - level) / 100)`, or,
//!   when the driver lists its P-states in `scaling_available_frequencies`
//!   (`acpi-cpufreq` does), the highest listed frequency at or below that
//!   (the lowest listed one if none is that low): a CPU only runs at its
//!   P-states, so that is the cap that really holds;
//! * every configured cgroup: its CPU quota (v2 `cpu.max`, v1
//!   `cpu.cfs_quota_us`) becomes `period * ncpus * (100 - level) / 100`
//!   (at least 1000 µs);
//! * every NVIDIA GPU (through NVML, when configured): its power limit becomes
//!   `max(min_limit, default_limit * (100 - level) / 100)`.
//!
//! A throttle never loosens a limit that was already tighter than what it
//! would set: the new value is the tighter of the computed one and the
//! original. The strongest active throttle wins: a weaker request changes
//! nothing. Every original value is saved before it is first changed (a later,
//! stronger throttle keeps the first original), persisted to the state file
//! (temp file, fsync, rename) before any write, and restored by
//! [`Throttler::reset`], also after the agent restarted.
//!
//! Every value is read back after it is written, and the outcome reports
//! what the driver accepted, not what was asked: a driver rounds a frequency
//! to one its CPU supports. [`ThrottleOutcome::cpufreq`] holds, for every
//! policy, the level's cap, the value written and the value read back, and
//! [`ThrottleOutcome::effective_throttle`] the share of full speed really
//! taken away. Asking again for a value the driver already rounded changes
//! nothing.
//!
//! Every path is under the sysfs root given to [`Throttler::new`] (`/sys`,
//! or a fake tree in tests); configured cgroup paths are relative to
//! `<root>/fs/cgroup` and may not leave it, through `..` or a symlink.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Component, Path, PathBuf};

use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};
use skos_core::config::ThrottleConfig;
use skos_core::protocol::Change;

use crate::{Error, Result};

/// Shortest CPU quota ever written, in µs (the kernel refuses less than
/// 1000 µs).
pub const MIN_QUOTA_US: u64 = 1000;

/// What an [`Throttler::apply`] or [`Throttler::reset`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleOutcome {
    /// The throttle level active afterwards (0 = not throttled).
    pub level: u8,
    /// Every value written, with what it was before.
    pub changes: Vec<Change>,
    /// A one-line account for people and the audit trail.
    pub message: String,
    /// The cpufreq cap of every policy in force afterwards, as read back
    /// from the driver (empty after a reset, or when cpufreq is not
    /// throttled).
    pub cpufreq: Vec<FreqCap>,
}

impl ThrottleOutcome {
    /// The share of full speed that the caps in force really take away,
    /// in percent: the least over all policies (see
    /// [`FreqCap::effective_percent`]); `None` without a cpufreq cap.
    pub fn effective_throttle(&self) -> Option<u8> {
        effective_throttle(&self.cpufreq)
    }
}

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

/// The thermal actuator of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Throttler {
    root: PathBuf,
    cfg: ThrottleConfig,
    state_file: Option<PathBuf>,
    state: SavedState,
    /// The cpufreq caps in force after the last apply (memory only).
    caps: Vec<FreqCap>,
}

/// What survives an agent restart: the active level and the originals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SavedState {
    level: u8,
    /// In the order they were first changed; restored in reverse.
    originals: Vec<Original>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Original {
    target: Target,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Target {
    /// A sysfs or cgroupfs file, relative to the sysfs root.
    File { path: PathBuf },
    /// An NVIDIA GPU's power limit in milliwatts, by UUID.
    GpuPowerLimit { uuid: String },
}

/// One value to set: its target, what it holds now, what it will hold.
#[derive(Debug)]
struct Step {
    target: Target,
    current: String,
    new: String,
    /// For a `scaling_max_freq`: what the cap was planned from.
    cap: Option<CapPlan>,
}

#[derive(Debug, Clone, Copy)]
struct CapPlan {
    /// The policy's place in the sorted list of policies.
    index: usize,
    target_khz: u64,
    requested_khz: u64,
    max_khz: u64,
}

impl Throttler {
    /// `sysfs_root` is where sysfs lives (default "/sys"; tests pass a temp
    /// dir). cgroups live under `<sysfs_root>/fs/cgroup`.
    /// `state_file`: where originals are saved (JSON) so a restarted agent
    /// can still restore them; None = memory only.
    pub fn new(
        sysfs_root: impl Into<PathBuf>,
        cfg: ThrottleConfig,
        state_file: Option<PathBuf>,
    ) -> Self {
        let state = state_file.as_deref().map(load_state).unwrap_or_default();
        if state.level > 0 || !state.originals.is_empty() {
            tracing::info!(
                level = state.level,
                originals = state.originals.len(),
                "throttle state loaded: a throttle from before the restart is still active"
            );
        }
        Self {
            root: sysfs_root.into(),
            cfg,
            state_file,
            state,
            caps: Vec::new(),
        }
    }

    /// The active throttle level; 0 = not throttled.
    pub fn level(&self) -> u8 {
        self.state.level
    }

    /// The cpufreq caps in force after the last [`Throttler::apply`], as
    /// read back from the driver; empty when not throttled, and after an
    /// agent restart until the next apply.
    pub fn cpufreq_in_force(&self) -> &[FreqCap] {
        &self.caps
    }

    /// Apply a throttle of `level` percent (10, 50, 100...). The strongest
    /// active throttle wins: a weaker request while a stronger one is active
    /// changes nothing (and says so in the returned message). Returns what
    /// was changed.
    ///
    /// Configured cgroups are checked before anything is written: one that
    /// does not exist or escapes `<root>/fs/cgroup` fails the whole apply.
    /// A write that fails does not stop the others (a partial throttle is
    /// better than none when hot); the first failure is returned after all
    /// were tried, and the originals of every target stay saved.
    pub fn apply(&mut self, level: u8) -> Result<ThrottleOutcome> {
        if level == 0 || level > 100 {
            return Err(Error::Device {
                what: format!("throttle_{level}"),
                reason: "a throttle level is a percentage from 1 to 100".to_string(),
            });
        }
        let active = self.state.level;
        if level < active {
            let message = format!(
                "throttle_{level} is weaker than the active throttle_{active}: nothing changed"
            );
            tracing::info!(requested = level, active, "{message}");
            return Ok(ThrottleOutcome {
                level: active,
                changes: Vec::new(),
                message,
                cpufreq: self.caps.clone(),
            });
        }

        let mut notes = Vec::new();
        // Configured targets first: a bad one fails before anything is written.
        let cgroup_steps = self.plan_cgroups(level)?;
        let mut steps = if self.cfg.cpufreq {
            self.plan_cpufreq(level, &mut notes)
        } else {
            Vec::new()
        };
        steps.extend(cgroup_steps);
        let mut nvml = None;
        if self.cfg.gpu_power_limit {
            if let Some((handle, gpu_steps)) = self.plan_gpu(level, &mut notes) {
                steps.extend(gpu_steps);
                nvml = Some(handle);
            }
        }
        // A policy left as it is keeps the cap it holds.
        let mut caps = Vec::new();
        steps.retain(|s| {
            if s.current != s.new {
                return true;
            }
            if let (Some(plan), Ok(khz)) = (s.cap, s.current.parse::<u64>()) {
                caps.push((plan.index, self.freq_cap(&s.target, plan, khz)));
            }
            false
        });

        // Originals go to disk before the first write, so a crash half-way
        // still leaves everything restorable.
        for step in &steps {
            self.remember(&step.target, &step.current);
        }
        self.state.level = level;
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "cannot persist the throttle originals; throttling anyway");
            notes.push(format!(
                "originals NOT persisted ({e}): a restarted agent cannot restore them"
            ));
        }

        let mut changes = Vec::new();
        let mut first_error = None;
        for step in steps {
            match self.set(&step.target, &step.new, nvml.as_ref()) {
                Ok(after) => {
                    let target = self.describe(&step.target);
                    if let Some(plan) = step.cap {
                        // Judged on what the driver accepted, not on what was written.
                        match parse_u64_at(Path::new(&target), &after) {
                            Ok(khz) => {
                                caps.push((plan.index, self.freq_cap(&step.target, plan, khz)))
                            }
                            Err(e) => {
                                tracing::warn!(target = %target, error = %e, "cpufreq cap unreadable after the write");
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    tracing::info!(target = %target, before = %step.current, after = %after, level, "throttled");
                    changes.push(Change {
                        target,
                        before: step.current,
                        after,
                    });
                }
                Err(e) => {
                    tracing::warn!(target = %self.describe(&step.target), error = %e, level, "throttle write failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        caps.sort_by_key(|(index, _)| *index);
        self.caps = caps.into_iter().map(|(_, cap)| cap).collect();
        if let Some(e) = first_error {
            return Err(e);
        }
        notes.extend(cap_notes(&self.caps));

        let mut message = if changes.is_empty() {
            format!("throttle_{level} active: nothing needed changing")
        } else {
            format!(
                "throttle_{level} active: {} value(s) changed",
                changes.len()
            )
        };
        for note in notes {
            message.push_str("; ");
            message.push_str(&note);
        }
        Ok(ThrottleOutcome {
            level,
            changes,
            message,
            cpufreq: self.caps.clone(),
        })
    }

    /// Restore every original value saved by earlier applies (also those
    /// loaded from the state file), clear the state.
    ///
    /// A target that no longer exists (a removed cgroup) is dropped with a
    /// warning. If a restore fails, the others are still tried; the ones that
    /// failed stay saved (and persisted) for the next reset, the level stays,
    /// and the first failure is returned.
    pub fn reset(&mut self) -> Result<ThrottleOutcome> {
        let previous = self.state.level;
        let originals = std::mem::take(&mut self.state.originals);
        let mut nvml = None;
        let mut changes = Vec::new();
        let mut failed = Vec::new();
        let mut first_error = None;
        for original in originals.into_iter().rev() {
            match self.restore(&original, &mut nvml) {
                Ok(Some(change)) => {
                    tracing::info!(target = %change.target, before = %change.before, after = %change.after, "restored");
                    changes.push(change);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(target = %self.describe(&original.target), error = %e, "restore failed");
                    failed.push(original);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            failed.reverse();
            self.state.originals = failed;
            if let Err(pe) = self.persist() {
                tracing::error!(error = %pe, "cannot persist the originals left to restore");
            }
            return Err(e);
        }
        self.state = SavedState::default();
        self.caps.clear();
        self.remove_state_file()?;
        let message = if previous == 0 && changes.is_empty() {
            "not throttled: nothing to restore".to_string()
        } else {
            format!(
                "throttle_{previous} lifted: {} value(s) restored",
                changes.len()
            )
        };
        Ok(ThrottleOutcome {
            level: 0,
            changes,
            message,
            cpufreq: Vec::new(),
        })
    }

    // --- planning ---------------------------------------------------------

    fn plan_cpufreq(&self, level: u8, notes: &mut Vec<String>) -> Vec<Step> {
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
                    tracing::warn!(path = %base.display(), error = %e, "cannot list cpufreq policies");
                }
                Vec::new()
            }
        };
        if policies.is_empty() {
            notes.push(format!(
                "no cpufreq policies found under {}",
                base.display()
            ));
            return Vec::new();
        }
        policies.sort();

        let mut steps = Vec::new();
        for (index, (_, dir)) in policies.into_iter().enumerate() {
            match self.plan_policy(&dir, level, index) {
                Ok(step) => steps.push(step),
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "skipping cpufreq policy");
                }
            }
        }
        if steps.is_empty() {
            notes.push(format!("no usable cpufreq policy under {}", base.display()));
        }
        steps
    }

    fn plan_policy(&self, dir: &Path, level: u8, index: usize) -> Result<Step> {
        let min = read_u64(&dir.join("cpuinfo_min_freq"))?;
        let max = read_u64(&dir.join("cpuinfo_max_freq"))?;
        let file = dir.join("scaling_max_freq");
        let current = read_trimmed(&file)?;
        let current_khz = parse_u64_at(&file, &current)?;
        ensure_inside(&file, &self.root)?;
        let target = self.file_target(&file)?;
        let original = self
            .original(&target)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(current_khz);
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
            cap: Some(CapPlan {
                index,
                target_khz: cap,
                requested_khz: requested,
                max_khz: max,
            }),
        })
    }

    fn plan_cgroups(&self, level: u8) -> Result<Vec<Step>> {
        let ncpus = self.online_cpus();
        let mut cgroups: Vec<&PathBuf> = self.cfg.cgroups.iter().collect();
        // Children before parents: a v1 parent may not go below its children.
        cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let mut steps = Vec::new();
        for rel in cgroups {
            let step = match self.resolve_cgroup(rel)? {
                Cgroup::V2 { cpu_max } => self.plan_cgroup_v2(&cpu_max, ncpus, level)?,
                Cgroup::V1 { quota, period } => {
                    self.plan_cgroup_v1(&quota, &period, ncpus, level)?
                }
            };
            steps.push(step);
        }
        Ok(steps)
    }

    fn plan_cgroup_v2(&self, file: &Path, ncpus: usize, level: u8) -> Result<Step> {
        let current = read_trimmed(file)?;
        let target = self.file_target(file)?;
        let original = self.original(&target).unwrap_or(&current);
        let (quota, period) = parse_cpu_max(original).ok_or_else(|| Error::Parse {
            path: file.to_path_buf(),
            text: original.to_string(),
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
            cap: None,
        })
    }

    fn plan_cgroup_v1(
        &self,
        quota_file: &Path,
        period_file: &Path,
        ncpus: usize,
        level: u8,
    ) -> Result<Step> {
        let current = read_trimmed(quota_file)?;
        let period = read_u64(period_file)?;
        let target = self.file_target(quota_file)?;
        let original = self.original(&target).unwrap_or(&current);
        let quota = parse_cfs_quota(original).ok_or_else(|| Error::Parse {
            path: quota_file.to_path_buf(),
            text: original.to_string(),
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
            cap: None,
        })
    }

    /// Finds the quota files of the configured cgroup `rel`, refusing any
    /// path that leaves `<root>/fs/cgroup`.
    fn resolve_cgroup(&self, rel: &Path) -> Result<Cgroup> {
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
                what: format!("cgroup {}", v2.display()),
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
                    rel.display(),
                    cg_root.display()
                ),
            ),
        ))
    }

    fn plan_gpu(&self, level: u8, notes: &mut Vec<String>) -> Option<(Nvml, Vec<Step>)> {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                tracing::info!(error = %e, "NVML not available: no GPU power limit set");
                notes.push(format!(
                    "no GPU power limit could be set: NVML not available ({e})"
                ));
                return None;
            }
        };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "NVML cannot count devices");
                notes.push(format!("no GPU power limit could be set: {e}"));
                return None;
            }
        };
        let mut steps = Vec::new();
        for index in 0..count {
            match self.plan_one_gpu(&nvml, index, level) {
                Ok(step) => steps.push(step),
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "skipping GPU power limit");
                    notes.push(format!("GPU {index}: no power limit set ({e})"));
                }
            }
        }
        if count == 0 {
            notes.push("no GPU power limit could be set: NVML sees no GPU".to_string());
        }
        Some((nvml, steps))
    }

    fn plan_one_gpu(
        &self,
        nvml: &Nvml,
        index: u32,
        level: u8,
    ) -> std::result::Result<Step, nvml_wrapper::error::NvmlError> {
        let device = nvml.device_by_index(index)?;
        let uuid = device.uuid()?;
        let current = device.power_management_limit()?;
        let default = device.power_management_limit_default()?;
        let constraints = device.power_management_limit_constraints()?;
        let target = Target::GpuPowerLimit { uuid };
        let original = self
            .original(&target)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(current);
        let new = gpu_power_limit(constraints.min_limit, default, level)
            .min(original.max(constraints.min_limit));
        Ok(Step {
            target,
            current: current.to_string(),
            new: new.to_string(),
            cap: None,
        })
    }

    fn online_cpus(&self) -> usize {
        let path = self.root.join("devices/system/cpu/online");
        let parsed = fs::read_to_string(&path)
            .ok()
            .and_then(|text| parse_cpu_list(&text));
        parsed.unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            tracing::debug!(path = %path.display(), ncpus = n, "cpu list unreadable; using available parallelism");
            n
        })
    }

    // --- state ------------------------------------------------------------

    fn original(&self, target: &Target) -> Option<&str> {
        self.state
            .originals
            .iter()
            .find(|o| &o.target == target)
            .map(|o| o.value.as_str())
    }

    /// Saves `value` as the original of `target`, unless one is saved already.
    fn remember(&mut self, target: &Target, value: &str) {
        if self.original(target).is_none() {
            self.state.originals.push(Original {
                target: target.clone(),
                value: value.to_string(),
            });
        }
    }

    fn persist(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| Error::io(path, io::Error::new(ErrorKind::InvalidData, e)))?;
        write_atomic(path, &json)
    }

    fn remove_state_file(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        match fs::remove_file(path) {
            Ok(()) => {
                sync_parent(path);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    // --- effects ----------------------------------------------------------

    fn file_target(&self, file: &Path) -> Result<Target> {
        let rel = file
            .strip_prefix(&self.root)
            .map_err(|_| Error::OutsideRoot {
                path: file.to_path_buf(),
                root: self.root.clone(),
            })?;
        Ok(Target::File {
            path: rel.to_path_buf(),
        })
    }

    fn freq_cap(&self, target: &Target, plan: CapPlan, accepted_khz: u64) -> FreqCap {
        FreqCap {
            path: self.describe(target),
            target_khz: plan.target_khz,
            requested_khz: plan.requested_khz,
            accepted_khz,
            max_khz: plan.max_khz,
        }
    }

    fn describe(&self, target: &Target) -> String {
        match target {
            Target::File { path } => self.root.join(path).display().to_string(),
            Target::GpuPowerLimit { uuid } => format!("nvml:{uuid}:power_limit_mw"),
        }
    }

    /// Sets `target` to `value`; returns what it reads afterwards (a
    /// driver may round a frequency to one the CPU supports). A file that
    /// cannot be read back is an error naming it: what is in force is
    /// unknown.
    fn set(&self, target: &Target, value: &str, nvml: Option<&Nvml>) -> Result<String> {
        match target {
            Target::File { path } => {
                let file = self.root.join(path);
                write_value(&file, value)?;
                read_trimmed(&file)
            }
            Target::GpuPowerLimit { uuid } => {
                let nvml = nvml.ok_or_else(|| Error::Device {
                    what: format!("GPU {uuid}"),
                    reason: "NVML not available".to_string(),
                })?;
                set_gpu_limit(nvml, uuid, value)
            }
        }
    }

    fn restore(&self, original: &Original, nvml: &mut Option<Nvml>) -> Result<Option<Change>> {
        let target = self.describe(&original.target);
        match &original.target {
            Target::File { path } => {
                let file = self.root.join(path);
                if path.is_absolute()
                    || path
                        .components()
                        .any(|c| !matches!(c, Component::Normal(_)))
                {
                    return Err(Error::OutsideRoot {
                        path: file,
                        root: self.root.clone(),
                    });
                }
                let current = match fs::read_to_string(&file) {
                    Ok(text) => text.trim().to_string(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        tracing::warn!(path = %file.display(), "throttled target is gone; nothing to restore");
                        return Ok(None);
                    }
                    Err(e) => return Err(Error::io(&file, e)),
                };
                ensure_inside(&file, &self.root)?;
                if current == original.value {
                    return Ok(None);
                }
                write_value(&file, &original.value)?;
                let after = read_trimmed(&file)?;
                if after != original.value {
                    tracing::warn!(path = %file.display(), original = %original.value, after = %after, "restored, but the value in force differs from the original");
                }
                Ok(Some(Change {
                    target,
                    before: current,
                    after,
                }))
            }
            Target::GpuPowerLimit { uuid } => {
                if nvml.is_none() {
                    *nvml = Some(Nvml::init().map_err(|e| Error::Device {
                        what: format!("GPU {uuid}"),
                        reason: format!("NVML not available to restore the power limit: {e}"),
                    })?);
                }
                let Some(nvml) = nvml.as_ref() else {
                    return Ok(None);
                };
                let before = nvml
                    .device_by_uuid(uuid.as_str())
                    .and_then(|d| d.power_management_limit())
                    .map(|mw| mw.to_string())
                    .unwrap_or_default();
                let after = set_gpu_limit(nvml, uuid, &original.value)?;
                Ok(Some(Change {
                    target,
                    before,
                    after,
                }))
            }
        }
    }
}

enum Cgroup {
    V2 { cpu_max: PathBuf },
    V1 { quota: PathBuf, period: PathBuf },
}

fn set_gpu_limit(nvml: &Nvml, uuid: &str, value: &str) -> Result<String> {
    let device_err = |reason: String| Error::Device {
        what: format!("GPU {uuid}"),
        reason,
    };
    let milliwatts: u32 = value
        .parse()
        .map_err(|e| device_err(format!("power limit {value:?}: {e}")))?;
    let mut device = nvml
        .device_by_uuid(uuid)
        .map_err(|e| device_err(e.to_string()))?;
    device
        .set_power_management_limit(milliwatts)
        .map_err(|e| device_err(format!("cannot set power limit to {milliwatts} mW: {e}")))?;
    Ok(device
        .power_management_limit()
        .map_or_else(|_| value.to_string(), |mw| mw.to_string()))
}

// --- files ----------------------------------------------------------------

/// Writes `value` to an existing sysfs/cgroupfs file in one write.
fn write_value(path: &Path, value: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| Error::io(path, e))
}

fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|e| Error::io(path, e))
}

fn parse_u64_at(path: &Path, text: &str) -> Result<u64> {
    text.trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| Error::Parse {
            path: path.to_path_buf(),
            text: text.to_string(),
            reason: e.to_string(),
        })
}

fn read_u64(path: &Path) -> Result<u64> {
    parse_u64_at(path, &read_trimmed(path)?)
}

/// Fails with [`Error::OutsideRoot`] unless `path`, symlinks resolved, is
/// inside `base`, symlinks resolved.
fn ensure_inside(path: &Path, base: &Path) -> Result<()> {
    let real_base = fs::canonicalize(base).map_err(|e| Error::io(base, e))?;
    let real = fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    if real.starts_with(&real_base) {
        Ok(())
    } else {
        tracing::warn!(path = %path.display(), resolved = %real.display(), root = %base.display(), "path escapes its root");
        Err(Error::OutsideRoot {
            path: path.to_path_buf(),
            root: base.to_path_buf(),
        })
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory,
/// fsynced, then renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "throttle-state".to_string());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_parent(path);
    Ok(())
}

/// fsyncs the directory holding `path` (best effort: a rename or removal is
/// only durable once its directory is).
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(path = %dir.display(), error = %e, "cannot fsync directory");
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
                tracing::warn!(path = %path.display(), text = %text.trim(), "unparsable P-state list; ignored");
            }
            pstates
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the P-state list; ignored");
            None
        }
    }
}

/// Notes for the outcome's message: every group of policies whose cap in
/// force is not the level's cap (a P-state below it, a driver's rounding,
/// or a lower cap that was there before), with what was written when the
/// driver changed it.
fn cap_notes(caps: &[FreqCap]) -> Vec<String> {
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

fn load_state(path: &Path) -> SavedState {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return SavedState::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the throttle state; originals from before the restart are unknown");
            return SavedState::default();
        }
    };
    match serde_json::from_slice::<SavedState>(&bytes) {
        Ok(mut state) => {
            state.originals.retain(|o| match &o.target {
                Target::File { path: rel } => {
                    let ok = !rel.as_os_str().is_empty()
                        && rel.components().all(|c| matches!(c, Component::Normal(_)));
                    if !ok {
                        tracing::error!(path = %path.display(), target = %rel.display(), "throttle state names a path outside the sysfs root; ignored");
                    }
                    ok
                }
                Target::GpuPowerLimit { .. } => true,
            });
            if state.level > 100 {
                state.level = 100;
            }
            state
        }
        Err(e) => {
            let aside = path.with_extension("corrupt");
            tracing::error!(path = %path.display(), error = %e, moved_to = %aside.display(), "throttle state unreadable; moved aside");
            if let Err(e) = fs::rename(path, &aside) {
                tracing::error!(path = %path.display(), error = %e, "cannot move the unreadable throttle state aside");
            }
            SavedState::default()
        }
    }
}

// --- pure arithmetic and parsing --------------------------------------------

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

/// The CPU quota (µs per `period_us`) for a throttle of `level` percent of
/// `ncpus` CPUs: `period * ncpus * (100 - level) / 100`, at least
/// [`MIN_QUOTA_US`].
pub fn cgroup_quota(period_us: u64, ncpus: usize, level: u8) -> u64 {
    let keep = 100 - u64::from(level.min(100));
    let ncpus = u64::try_from(ncpus.max(1)).unwrap_or(u64::MAX);
    (period_us.saturating_mul(ncpus).saturating_mul(keep) / 100).max(MIN_QUOTA_US)
}

/// The GPU power limit (mW) for a throttle of `level` percent:
/// `max(min_mw, default_mw * (100 - level) / 100)`.
pub fn gpu_power_limit(min_mw: u32, default_mw: u32, level: u8) -> u32 {
    let keep = 100 - u64::from(level.min(100));
    let limit = u64::from(default_mw) * keep / 100;
    u32::try_from(limit).unwrap_or(u32::MAX).max(min_mw)
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
    fn gpu_power_limit_respects_the_minimum() {
        assert_eq!(gpu_power_limit(100_000, 700_000, 50), 350_000);
        assert_eq!(gpu_power_limit(200_000, 300_000, 50), 200_000);
        assert_eq!(gpu_power_limit(100_000, 700_000, 100), 100_000);
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

    #[test]
    fn state_round_trips_through_json() {
        let state = SavedState {
            level: 50,
            originals: vec![
                Original {
                    target: Target::File {
                        path: PathBuf::from("fs/cgroup/batch/cpu.max"),
                    },
                    value: "max 100000".to_string(),
                },
                Original {
                    target: Target::GpuPowerLimit {
                        uuid: "GPU-1234".to_string(),
                    },
                    value: "700000".to_string(),
                },
            ],
        };
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"kind\":\"file\""), "{json}");
        assert_eq!(serde_json::from_str::<SavedState>(&json).unwrap(), state);
    }

    #[test]
    fn tampered_state_paths_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        fs::write(
            &file,
            r#"{"level":50,"originals":[
                {"target":{"kind":"file","path":"../etc/passwd"},"value":"x"},
                {"target":{"kind":"file","path":"/etc/passwd"},"value":"x"},
                {"target":{"kind":"file","path":"devices/system/cpu/cpufreq/policy0/scaling_max_freq"},"value":"3600000"}
            ]}"#,
        )
        .unwrap();
        let state = load_state(&file);
        assert_eq!(state.level, 50);
        assert_eq!(state.originals.len(), 1);
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        fs::write(&file, "{not json").unwrap();
        assert_eq!(load_state(&file), SavedState::default());
        assert!(!file.exists());
        assert!(dir.path().join("state.corrupt").exists());
    }
}
