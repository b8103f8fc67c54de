//! `thermal:`: the thermal sentinel's thresholds, table, debounce, and how
//! it throttles and reads GPUs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::levels::{check_table, check_thresholds, ActionTable, LevelHold, Thresholds};
use super::validate::relative_inside;
use super::{issue, non_negative, strings, CheckContext, Config, ConfigIssue, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThermalConfig {
    pub thresholds: Thresholds,
    pub actions: ActionTable,
    /// °C below a threshold before its level clears.
    pub hysteresis: f64,
    /// Optional debounce: seconds each level must hold before alerting.
    #[serde(rename = "for")]
    pub for_: LevelHold,
    /// Seconds below `warning - hysteresis` before throttling is reset.
    pub clear_for: f64,
    /// Seconds before an unchanged alert is repeated.
    pub cooldown: f64,
    pub throttle: ThrottleConfig,
    pub gpu: GpuConfig,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds {
                warning: 75.0,
                critical: 85.0,
                emergency: 95.0,
            },
            actions: ActionTable {
                // The seed's table also names redistribute (critical),
                // shutdown_non_essential and failover (emergency); no
                // antibody executes those yet, so the defaults name only
                // what agents carry out. A config naming them still loads.
                warning: strings(&["throttle_10"]),
                critical: strings(&["throttle_50"]),
                emergency: strings(&["throttle_100"]),
            },
            hysteresis: 3.0,
            for_: LevelHold::default(),
            clear_for: 30.0,
            cooldown: 300.0,
            throttle: ThrottleConfig::default(),
            gpu: GpuConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleConfig {
    /// Cap every cpufreq policy's `scaling_max_freq`.
    pub cpufreq: bool,
    /// cgroups (relative to `<sysfs_root>/fs/cgroup`) whose CPU quota is cut.
    pub cgroups: Vec<PathBuf>,
    // cgroup v1 hierarchies live under `<sysfs_root>/fs/cgroup/cpu`; the
    // quota period is each cgroup's own.
    /// Lower NVIDIA GPU power limits through NVML.
    pub gpu_power_limit: bool,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            cpufreq: true,
            cgroups: Vec::new(),
            gpu_power_limit: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuConfig {
    /// Read NVIDIA GPUs through NVML (loaded at run time).
    pub nvml: bool,
    /// Fall back to `nvidia-smi` when NVML is not available.
    pub nvidia_smi: bool,
    /// Fall back to `sensors -j` when sysfs shows no sensor.
    pub lm_sensors: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            nvml: true,
            nvidia_smi: true,
            lm_sensors: true,
        }
    }
}

impl Section for ThermalConfig {
    const KEY: &'static str = "thermal";

    fn get(cfg: &Config) -> &Self {
        &cfg.thermal
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.thermal
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        check_thresholds(out, "thermal", &self.thresholds);
        check_table(out, "thermal.actions", &self.actions);
        if !non_negative(self.hysteresis) {
            out.push(issue("thermal.hysteresis", "must be zero or more"));
        }
        for (level, v) in [
            ("warning", self.for_.warning),
            ("critical", self.for_.critical),
            ("emergency", self.for_.emergency),
        ] {
            if !non_negative(v) {
                out.push(issue(
                    format!("thermal.for.{level}"),
                    "must be zero or more seconds",
                ));
            }
        }
        for (i, cg) in self.throttle.cgroups.iter().enumerate() {
            if let Err(m) = relative_inside(cg) {
                out.push(issue(
                    format!("thermal.throttle.cgroups[{i}]"),
                    m.to_string(),
                ));
            }
        }
    }
}
