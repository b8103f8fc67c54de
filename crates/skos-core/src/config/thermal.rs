//! `thermal:`: the thermal sentinel's thresholds, table, debounce, early
//! warning, and how it throttles and reads GPUs.

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
    /// The early warning: a `predicted` warning when the temperature's
    /// trend will reach critical within the horizon.
    pub predict: PredictConfig,
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
            predict: PredictConfig::default(),
        }
    }
}

/// `thermal.predict`: when a rising temperature raises a `predicted`
/// warning before it reaches critical. The trend is the least-squares line
/// through the hottest reading of each kind (CPU, GPU) over the window;
/// it is trusted only with enough readings, a fit that explains them
/// (noise around a flat mean does not) and a real rise, so a single spike
/// or a noisy flat series raises nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictConfig {
    /// Raise `predicted` warnings at all.
    pub enabled: bool,
    /// Seconds of readings the trend is fitted to.
    pub window_seconds: f64,
    /// A `predicted` warning when critical is at most this many seconds away.
    pub horizon_seconds: f64,
    /// Readings in the window needed before the trend is trusted (at least 3).
    pub min_samples: usize,
    /// The fit's coefficient of determination (r², 0–1) needed.
    pub min_r2: f64,
    /// The rise needed, °C per second (0.01: 0.6 °C a minute).
    pub min_slope: f64,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_seconds: 120.0,
            horizon_seconds: 300.0,
            min_samples: 6,
            min_r2: 0.8,
            min_slope: 0.01,
        }
    }
}

impl PredictConfig {
    /// When the trend is trusted to predict.
    pub fn trust(&self) -> crate::trend::Trust {
        crate::trend::Trust {
            min_samples: self.min_samples,
            min_r2: self.min_r2,
            min_slope: self.min_slope,
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
        let p = &self.predict;
        positive_seconds(out, "thermal.predict.window_seconds", p.window_seconds);
        if !non_negative(p.horizon_seconds) {
            out.push(issue(
                "thermal.predict.horizon_seconds",
                "must be zero or more seconds",
            ));
        }
        if p.min_samples < 3 {
            out.push(issue(
                "thermal.predict.min_samples",
                "must be at least 3 (a line through two readings always fits)",
            ));
        }
        if !(0.0..=1.0).contains(&p.min_r2) {
            out.push(issue("thermal.predict.min_r2", "must be between 0 and 1"));
        }
        if !non_negative(p.min_slope) {
            out.push(issue(
                "thermal.predict.min_slope",
                "must be zero or more °C per second",
            ));
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
    fn the_early_warning_has_defaults_and_its_keys_are_checked_by_name() {
        let cfg = Config::from_yaml("").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.thermal.predict, PredictConfig::default());
        assert!(cfg.thermal.predict.enabled);
        let set = Config::from_yaml(
            "thermal:\n  predict: {window_seconds: 60, horizon_seconds: 600, min_samples: 4}\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let p = &set.thermal.predict;
        assert_eq!(
            (p.window_seconds, p.horizon_seconds, p.min_samples),
            (60.0, 600.0, 4)
        );
        assert_eq!(p.min_r2, 0.8);
        for (yaml, key) in [
            ("window_seconds: 0", "thermal.predict.window_seconds"),
            ("horizon_seconds: -1", "thermal.predict.horizon_seconds"),
            ("min_samples: 2", "thermal.predict.min_samples"),
            ("min_r2: 1.5", "thermal.predict.min_r2"),
            ("min_r2: -0.1", "thermal.predict.min_r2"),
            ("min_slope: -1", "thermal.predict.min_slope"),
            ("horizon: 5", "thermal.predict.horizon"),
        ] {
            let err =
                Config::from_yaml(&format!("thermal:\n  predict: {{{yaml}}}\n")).expect_err(yaml);
            assert!(err.iter().any(|i| i.path == key), "{yaml}: {err:?}");
        }
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
