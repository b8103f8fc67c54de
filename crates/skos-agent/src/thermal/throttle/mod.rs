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
//! A throttle SKOS applied can always be lifted. The originals are saved
//! to the state file before the first write, and a throttle whose
//! originals cannot be saved there is not applied
//! ([`Error::OriginalsNotSaved`]). They also travel in every heartbeat
//! while throttled ([`Throttler::report`]), and the coordinator keeps that
//! copy and gives it back in the parameters of its thermal commands
//! (`originals`): an agent that lost its state file takes from there the
//! original of a target it found itself and has no record of, checked as a
//! value that target can hold ([`Throttler::apply_with`],
//! [`Throttler::reset_with`]). At start, and after every apply and reset,
//! the hardware is reconciled with the record: a cap in force that nothing
//! recorded explains is an [`UnexplainedCap`], reported in heartbeats and
//! counted in their throttle level, and lifted only with such an original.
//!
//! A throttle with nothing to act on (no cpufreq policy, no configured
//! cgroup, no GPU) is [`Error::NothingToAct`], answered `unsupported`.

//!
//! Laid out by concern: `cpufreq.rs` (planning the caps, P-states, what the
//! driver accepted), `cgroup.rs` (CPU quotas), `gpu.rs` (NVML power
//! limits), `state.rs` (the saved originals and the state file),
//! `reconcile.rs` (caps in force against the record, the heartbeat's
//! report, the coordinator's originals, the actuators found) and
//! `files.rs` (single-value sysfs files, paths kept inside their root); the
//! pure arithmetic and parsers live beside the code that uses them.

mod cgroup;
mod cpufreq;
mod files;
mod gpu;
mod reconcile;
mod state;

use skos_core::escape::ShowPath;
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use nvml_wrapper::Nvml;
use skos_core::catalogue::ThrottleOriginal;
use skos_core::config::ThrottleConfig;
use skos_core::protocol::Change;

use crate::{Error, Result};
use cpufreq::{cap_notes, CapPlan};
use files::{ensure_inside, parse_u64_at, read_trimmed, write_value};
use gpu::{restore_gpu_limit, set_gpu_limit};
use reconcile::Unexplained;
use state::{load_state, Original, SavedState, Target};

pub use cgroup::{cgroup_quota, parse_cfs_quota, parse_cpu_list, parse_cpu_max, MIN_QUOTA_US};
pub use cpufreq::{
    capped_freq, effective_throttle, highest_pstate_at_or_below, parse_available_frequencies,
    FreqCap,
};
pub use gpu::gpu_power_limit;
pub use reconcile::{Actuators, ThrottleReport, UnexplainedCap, MAX_REPORTED_CAPS};

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
    /// The caps in force afterwards that SKOS has no original for (after
    /// a reset: the ones it could not lift).
    pub unexplained: Vec<UnexplainedCap>,
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
    /// The cpufreq caps in force after the last apply (memory only), or
    /// read back at start for a throttle recorded before a restart.
    caps: Vec<FreqCap>,
    /// Caps in force that nothing recorded explains, as last reconciled.
    unexplained: Vec<Unexplained>,
}

/// One value to set: its target, what it holds now, what it will hold.
#[derive(Debug)]
struct Step {
    target: Target,
    current: String,
    new: String,
    /// Its original: the recorded one, the coordinator's, or `current`.
    original: String,
    /// The original is the coordinator's (none was recorded here).
    adopted: bool,
    /// For a `scaling_max_freq`: what the cap was planned from.
    cap: Option<CapPlan>,
}

/// What planning found to act on: why each kind of target offers nothing,
/// and the first target found that could not be planned.
#[derive(Debug, Default)]
struct Survey {
    absent: Vec<String>,
    broken: Option<Error>,
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
        let mut throttler = Self {
            root: sysfs_root.into(),
            cfg,
            state_file,
            state,
            caps: Vec::new(),
            unexplained: Vec::new(),
        };
        if throttler.state.level > 0 {
            let (_, policies) = throttler.policies();
            throttler.caps = policies
                .iter()
                .enumerate()
                .filter_map(|(index, (_, dir))| throttler.recorded_cap(dir, index))
                .collect();
        }
        throttler.reconcile();
        throttler
    }

    /// The active throttle level; 0 = not throttled.
    pub fn level(&self) -> u8 {
        self.state.level
    }

    /// The cpufreq caps in force after the last [`Throttler::apply`], as
    /// read back from the driver (after an agent restart: as read at start
    /// for the recorded throttle); empty when not throttled.
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
        self.apply_with(level, &[])
    }

    /// [`Throttler::apply`], with the coordinator's copy of the originals
    /// (`given`): a target found here with no original recorded that
    /// holds a cap reported as unexplained takes its original from there,
    /// when it is a value the target can hold (an agent that lost its
    /// state file throttles a capped target without taking the cap for
    /// its original); any other target keeps what it holds as original.
    ///
    /// Fails with [`Error::NothingToAct`] when there is nothing to
    /// throttle (no cpufreq policy, no configured cgroup, no GPU), and
    /// with [`Error::OriginalsNotSaved`], writing nothing, when the
    /// originals cannot be saved to the state file.
    pub fn apply_with(&mut self, level: u8, given: &[ThrottleOriginal]) -> Result<ThrottleOutcome> {
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
                unexplained: self.unexplained_caps(),
            });
        }

        let mut notes = Vec::new();
        let mut survey = Survey::default();
        // Configured targets first: a bad one fails before anything is written.
        let cgroup_steps = self.plan_cgroups(level, given, &mut survey)?;
        let mut steps = self.plan_cpufreq(level, given, &mut notes, &mut survey);
        steps.extend(cgroup_steps);
        let mut nvml = None;
        if let Some((handle, gpu_steps)) = self.plan_gpu(level, given, &mut notes, &mut survey) {
            steps.extend(gpu_steps);
            nvml = Some(handle);
        }
        if steps.is_empty() {
            if let Some(e) = survey.broken {
                return Err(e);
            }
            let reason = survey.absent.join("; ");
            tracing::warn!(level, reason = %reason, "nothing to throttle on this machine");
            return Err(Error::NothingToAct {
                what: format!("throttle_{level}"),
                reason,
            });
        }

        // Originals go to disk before the first write, so a crash half-way
        // still leaves everything restorable; a target left as it is keeps
        // the coordinator's original when it is capped below it.
        let before = self.state.clone();
        let mut adopted = 0;
        for step in &steps {
            if step.current != step.new || step.original != step.current {
                if step.adopted && self.original(&step.target).is_none() {
                    adopted += 1;
                }
                self.remember(&step.target, &step.original);
            }
        }
        self.state.level = level;
        if self.state != before {
            if let Err(e) = self.persist() {
                self.state = before;
                tracing::error!(error = %e, level, "cannot save the throttle originals: throttle not applied");
                return Err(not_saved(e));
            }
        }
        if adopted > 0 {
            notes.push(format!(
                "{adopted} original(s) taken from the coordinator's copy"
            ));
        }
        let mut unexplained = std::mem::take(&mut self.unexplained);
        unexplained.retain(|u| self.original(&u.target).is_none());
        self.unexplained = unexplained;

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
            unexplained: self.unexplained_caps(),
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
        self.reset_with(&[])
    }

    /// [`Throttler::reset`], and every cap in force that nothing recorded
    /// explains lifted to its original in `given` (the coordinator's
    /// copy), when that is a value the target can hold. The caps left
    /// without one stay, and the outcome lists them
    /// ([`ThrottleOutcome::unexplained`]).
    ///
    /// Fails with [`Error::NothingToAct`] when nothing is recorded, no cap
    /// is in force and the machine has nothing to throttle.
    pub fn reset_with(&mut self, given: &[ThrottleOriginal]) -> Result<ThrottleOutcome> {
        let previous = self.state.level;
        self.reconcile();
        let originals = std::mem::take(&mut self.state.originals);
        let unexplained = std::mem::take(&mut self.unexplained);
        if previous == 0 && originals.is_empty() && unexplained.is_empty() {
            let actuators = self.actuators();
            if actuators.is_empty() {
                return Err(Error::NothingToAct {
                    what: "reset_throttle".to_string(),
                    reason: actuators.absent.join("; "),
                });
            }
        }
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
        let mut adopted = 0;
        for u in unexplained {
            // Each holds a cap this agent reports unexplained.
            let Some(value) = self.given_original(&u.target, u.check, given) else {
                continue;
            };
            let original = Original {
                target: u.target,
                value,
            };
            match self.restore(&original, &mut nvml) {
                Ok(change) => {
                    adopted += 1;
                    if let Some(change) = change {
                        tracing::info!(target = %change.target, before = %change.before, after = %change.after, "restored from the coordinator's copy of the original");
                        changes.push(change);
                    }
                }
                Err(e) => {
                    tracing::warn!(target = %self.describe(&original.target), error = %e, "restore from the coordinator's copy failed");
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
            self.reconcile();
            return Err(e);
        }
        self.state = SavedState::default();
        self.caps.clear();
        self.remove_state_file()?;
        self.reconcile();
        let mut message = if previous == 0 && changes.is_empty() {
            "not throttled: nothing to restore".to_string()
        } else if previous == 0 {
            format!("caps lifted: {} value(s) restored", changes.len())
        } else {
            format!(
                "throttle_{previous} lifted: {} value(s) restored",
                changes.len()
            )
        };
        if adopted > 0 {
            message.push_str(&format!(
                "; {adopted} from the coordinator's copy of the originals"
            ));
        }
        let unexplained = self.unexplained_caps();
        if !unexplained.is_empty() {
            let caps: Vec<String> = unexplained
                .iter()
                .map(|u| format!("{} holds {} (uncapped {})", u.path, u.value, u.full))
                .collect();
            message.push_str(&format!(
                "; {} cap(s) not lifted, no original known here or at the coordinator: {}",
                unexplained.len(),
                caps.join(", ")
            ));
        }
        Ok(ThrottleOutcome {
            level: 0,
            changes,
            message,
            cpufreq: Vec::new(),
            unexplained,
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
            Target::File { path } => self.root.join(path).escaped().to_string(),
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
                        tracing::warn!(path = %file.escaped(), "throttled target is gone; nothing to restore");
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
                    tracing::warn!(path = %file.escaped(), original = %original.value, after = %after, "restored, but the value in force differs from the original");
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

/// A state file that cannot be written, as the refusal of a throttle.
fn not_saved(e: Error) -> Error {
    match e {
        Error::Io { path, source } => Error::OriginalsNotSaved { path, source },
        Error::Fs(skos_fs::Error::Io { path, source }) => Error::OriginalsNotSaved { path, source },
        Error::Fs(e) => Error::OriginalsNotSaved {
            path: e.path().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        },
        other => other,
    }
}
