//! NVIDIA GPUs: the power limit of every GPU NVML sees.

use nvml_wrapper::Nvml;
use skos_core::catalogue::ThrottleOriginal;
use skos_core::protocol::Change;

use super::reconcile::Check;
use super::state::Target;
use super::{Step, Survey, Throttler};
use crate::{Error, Result};

impl Throttler {
    pub(super) fn plan_gpu(
        &self,
        level: u8,
        given: &[ThrottleOriginal],
        notes: &mut Vec<String>,
        survey: &mut Survey,
    ) -> Option<(Nvml, Vec<Step>)> {
        if !self.cfg.gpu_power_limit {
            survey
                .absent
                .push("GPU power limits are off (thermal.throttle.gpu_power_limit)".to_string());
            return None;
        }
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                tracing::info!(error = %e, "NVML not available: no GPU power limit set");
                notes.push(format!(
                    "no GPU power limit could be set: NVML not available ({e})"
                ));
                survey.absent.push(format!("NVML not available ({e})"));
                return None;
            }
        };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "NVML cannot count devices");
                notes.push(format!("no GPU power limit could be set: {e}"));
                survey.broken.get_or_insert(Error::Device {
                    what: "NVML".to_string(),
                    reason: format!("cannot count GPUs: {e}"),
                });
                return None;
            }
        };
        let mut steps = Vec::new();
        for index in 0..count {
            match self.plan_one_gpu(&nvml, index, level, given) {
                Ok(step) => steps.push(step),
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "skipping GPU power limit");
                    notes.push(format!("GPU {index}: no power limit set ({e})"));
                    survey.broken.get_or_insert(Error::Device {
                        what: format!("GPU {index}"),
                        reason: e.to_string(),
                    });
                }
            }
        }
        if count == 0 {
            notes.push("no GPU power limit could be set: NVML sees no GPU".to_string());
            survey.absent.push("NVML sees no GPU".to_string());
        }
        Some((nvml, steps))
    }

    fn plan_one_gpu(
        &self,
        nvml: &Nvml,
        index: u32,
        level: u8,
        given: &[ThrottleOriginal],
    ) -> std::result::Result<Step, nvml_wrapper::error::NvmlError> {
        let device = nvml.device_by_index(index)?;
        let uuid = device.uuid()?;
        let current = device.power_management_limit()?;
        let default = device.power_management_limit_default()?;
        let constraints = device.power_management_limit_constraints()?;
        let target = Target::GpuPowerLimit { uuid };
        let check = Check::PowerLimit {
            min: constraints.min_limit,
            max: constraints.max_limit,
        };
        let adopted = self.adopt(&target, check, given);
        let original = self
            .original(&target)
            .or(adopted.as_deref())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(current);
        let new = gpu_power_limit(constraints.min_limit, default, level)
            .min(original.max(constraints.min_limit));
        Ok(Step {
            target,
            current: current.to_string(),
            new: new.to_string(),
            original: original.to_string(),
            adopted: adopted.is_some(),
            cap: None,
        })
    }

    /// Every GPU whose power limit is below its default, as (target,
    /// limit, default, its check), in mW; empty when NVML is not there.
    pub(super) fn gpu_limits(&self) -> Vec<(Target, u32, u32, Check)> {
        let Ok(nvml) = Nvml::init() else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let uuid = device.uuid().ok()?;
                let limit = device.power_management_limit().ok()?;
                let default = device.power_management_limit_default().ok()?;
                let constraints = device.power_management_limit_constraints().ok()?;
                let check = Check::PowerLimit {
                    min: constraints.min_limit,
                    max: constraints.max_limit,
                };
                (limit < default).then_some((Target::GpuPowerLimit { uuid }, limit, default, check))
            })
            .collect()
    }

    /// How many GPUs NVML sees, or why none can be throttled.
    pub(super) fn gpu_count(&self) -> std::result::Result<u32, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML not available ({e})"))?;
        nvml.device_count()
            .map_err(|e| format!("NVML cannot count GPUs ({e})"))
    }
}

pub(super) fn set_gpu_limit(nvml: &Nvml, uuid: &str, value: &str) -> Result<String> {
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

/// Restores the power limit of the GPU `uuid` to `value` (NVML is loaded
/// into `nvml` on first use); `target` names it in the change.
pub(super) fn restore_gpu_limit(
    uuid: &str,
    value: &str,
    target: String,
    nvml: &mut Option<Nvml>,
) -> Result<Option<Change>> {
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
        .device_by_uuid(uuid)
        .and_then(|d| d.power_management_limit())
        .map(|mw| mw.to_string())
        .unwrap_or_default();
    let after = set_gpu_limit(nvml, uuid, value)?;
    Ok(Some(Change {
        target,
        before,
        after,
    }))
}

/// The GPU power limit (mW) for a throttle of `level` percent:
/// `max(min_mw, default_mw * (100 - level) / 100)`.
pub fn gpu_power_limit(min_mw: u32, default_mw: u32, level: u8) -> u32 {
    let keep = 100 - u64::from(level.min(100));
    let limit = u64::from(default_mw) * keep / 100;
    u32::try_from(limit).unwrap_or(u32::MAX).max(min_mw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_power_limit_respects_the_minimum() {
        assert_eq!(gpu_power_limit(100_000, 700_000, 50), 350_000);
        assert_eq!(gpu_power_limit(200_000, 300_000, 50), 200_000);
        assert_eq!(gpu_power_limit(100_000, 700_000, 100), 100_000);
    }
}
