//! `thermal:`: the thermal sentinel's thresholds, table, debounce, and how
//! it throttles and reads GPUs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::levels::{check_table, check_thresholds, ActionTable, LevelHold, Thresholds};
use super::validate::relative_inside;
use super::{
    issue, non_negative, positive_seconds, strings, CheckContext, Config, ConfigIssue, Section,
};

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
    /// How long each sensor source may take, and how long its readings
    /// stay current.
    pub sources: SourcesConfig,
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
            sources: SourcesConfig::default(),
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

/// `thermal.sources`: the time budget of every sensor source. Each source
/// (one hwmon device, the thermal zones, NVML, `nvidia-smi`, `sensors -j`)
/// is read on its own thread, so a slow one delays nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourcesConfig {
    /// Seconds one sysfs source (one hwmon device, the thermal zones) or
    /// NVML may take to answer before it is reported slow. Its reading is
    /// still used when it comes.
    pub read_timeout: f64,
    /// Seconds `nvidia-smi` or `sensors -j` may run before it is killed.
    /// `nvidia-smi` without the persistence daemon takes several seconds.
    pub tool_timeout: f64,
    /// Seconds a source's last good reading stays current; an older one is
    /// not used. `None`: three of the thermal sentinel's monitor
    /// intervals ([`Config::monitor_interval_of`]).
    pub max_age: Option<f64>,
}

impl Default for SourcesConfig {
    fn default() -> Self {
        Self {
            read_timeout: 2.0,
            tool_timeout: 15.0,
            max_age: None,
        }
    }
}

impl SourcesConfig {
    /// How many monitor intervals a reading stays current when `max_age`
    /// is not set.
    pub const DEFAULT_AGE_INTERVALS: f64 = 3.0;

    /// Seconds a reading stays current: `max_age`, or three
    /// `monitor_interval`s (seconds).
    pub fn max_age_seconds(&self, monitor_interval: f64) -> f64 {
        self.max_age
            .unwrap_or(Self::DEFAULT_AGE_INTERVALS * monitor_interval)
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
        let s = &self.sources;
        positive_seconds(out, "thermal.sources.read_timeout", s.read_timeout);
        positive_seconds(out, "thermal.sources.tool_timeout", s.tool_timeout);
        if let Some(age) = s.max_age {
            positive_seconds(out, "thermal.sources.max_age", age);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_budgets_default_to_what_real_tools_need() {
        let cfg = Config::from_yaml("").unwrap_or_else(|e| panic!("{e:?}"));
        let s = &cfg.thermal.sources;
        assert_eq!(
            (s.read_timeout, s.tool_timeout, s.max_age),
            (2.0, 15.0, None)
        );
        // nvidia-smi without the persistence daemon answers after ~6 s.
        assert!(s.tool_timeout > 6.0);
        assert_eq!(s.max_age_seconds(5.0), 15.0, "three monitor intervals");
        let set = Config::from_yaml("thermal:\n  sources: {max_age: 40, tool_timeout: 20}\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.thermal.sources.max_age_seconds(5.0), 40.0);
        assert_eq!(set.thermal.sources.tool_timeout, 20.0);
        assert_eq!(set.thermal.sources.read_timeout, 2.0);
    }

    #[test]
    fn source_budgets_must_be_positive_seconds_named_by_key() {
        for (yaml, key) in [
            ("read_timeout: 0", "thermal.sources.read_timeout"),
            ("tool_timeout: -1", "thermal.sources.tool_timeout"),
            ("max_age: 0", "thermal.sources.max_age"),
            ("tool_timeout: .inf", "thermal.sources.tool_timeout"),
        ] {
            let err =
                Config::from_yaml(&format!("thermal:\n  sources: {{{yaml}}}\n")).expect_err(yaml);
            assert!(err.iter().any(|i| i.path == key), "{yaml}: {err:?}");
            let issue = err.iter().find(|i| i.path == key).map(|i| i.to_string());
            assert!(
                issue.is_some_and(|m| m.contains("positive number of seconds")),
                "{yaml}: {err:?}"
            );
        }
        let err = Config::from_yaml("thermal:\n  sources: {read_timeot: 1}\n")
            .expect_err("a misspelt key");
        assert!(
            err.iter().any(|i| i.path == "thermal.sources.read_timeot"),
            "{err:?}"
        );
    }
}
