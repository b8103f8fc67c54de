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

//!
//! Laid out by concern: `cpufreq.rs` (planning the caps, P-states, what the
//! driver accepted), `cgroup.rs` (CPU quotas), `gpu.rs` (NVML power
//! limits), `state.rs` (the saved originals and the state file) and
//! `files.rs` (single-value sysfs files, paths kept inside their root); the
//! pure arithmetic and parsers live beside the code that uses them.

mod cgroup;
mod cpufreq;
mod files;
mod gpu;
mod state;

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use nvml_wrapper::Nvml;
use skos_core::config::ThrottleConfig;
use skos_core::protocol::Change;

use crate::{Error, Result};
use cpufreq::{cap_notes, CapPlan};
use files::{ensure_inside, parse_u64_at, read_trimmed, write_value};
use gpu::{restore_gpu_limit, set_gpu_limit};
use state::{load_state, Original, SavedState, Target};

pub use cgroup::{cgroup_quota, parse_cfs_quota, parse_cpu_list, parse_cpu_max, MIN_QUOTA_US};
pub use cpufreq::{
    capped_freq, effective_throttle, highest_pstate_at_or_below, parse_available_frequencies,
    FreqCap,
};
pub use gpu::gpu_power_limit;

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

/// One value to set: its target, what it holds now, what it will hold.
#[derive(Debug)]
struct Step {
    target: Target,
    current: String,
    new: String,
    /// For a `scaling_max_freq`: what the cap was planned from.
    cap: Option<CapPlan>,
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
                restore_gpu_limit(uuid, &original.value, target, nvml)
            }
        }
    }
}
