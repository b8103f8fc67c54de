//! The thermal sentinel antibody: reads temperatures, raises alerts on level
//! changes (with hysteresis, optional `for` debounce and a cooldown), and
//! carries out `throttle_*` / `reset_throttle` commands.
//!
//! * [`sensors`]: temperature discovery and reading (sysfs under an
//!   injectable root, NVML, `nvidia-smi`, `sensors -j`); pure parsers.
//! * [`throttle`]: the actuator (cpufreq caps, cgroup CPU quotas, GPU power
//!   limits).

pub mod sensors;
pub mod throttle;

use std::path::Path;

use serde_json::{json, Value};
use skos_core::catalogue::{self, Executor};
use skos_core::config::Config;
use skos_core::level::{LevelRules, LevelTracker, Report};
use skos_core::protocol::{Alert, AlertKind, Command, Heartbeat, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use crate::antibody::{Antibody, Execution};
use crate::Outcome;
use sensors::{hottest, Reading, SensorKind, Sensors};
use throttle::{effective_throttle, FreqCap, Throttler};

pub const AGENT_TYPE: &str = Executor::ThermalSentinel.as_str();

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    Executor::ThermalSentinel.handles(action)
}

pub struct ThermalSentinel {
    node: NodeName,
    agent_id: String,
    sensors: Sensors,
    throttler: Throttler,
    rules: LevelRules,
    cpu: LevelTracker,
    gpu: LevelTracker,
    readings: Vec<Reading>,
    said_none: bool,
}

impl ThermalSentinel {
    pub fn new(cfg: &Config, state_dir: Option<&Path>) -> Self {
        let t = &cfg.thermal;
        Self {
            node: cfg.node.name.clone(),
            agent_id: format!("thermal-sentinel-{}", cfg.node.name),
            sensors: Sensors::new(&cfg.sysfs_root, t.gpu.clone()),
            throttler: Throttler::new(
                &cfg.sysfs_root,
                t.throttle.clone(),
                state_dir.map(|d| d.join(format!("throttle-{}.json", cfg.node.name))),
            ),
            rules: LevelRules {
                thresholds: t.thresholds,
                hysteresis: t.hysteresis,
                hold_up: t.for_,
                hold_down: 0.0,
                cooldown: t.cooldown,
            },
            cpu: LevelTracker::default(),
            gpu: LevelTracker::default(),
            readings: Vec::new(),
            said_none: false,
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub fn cpu_temp(&self) -> Option<f64> {
        hottest(&self.readings, SensorKind::Cpu)
    }

    pub fn gpu_temp(&self) -> Option<f64> {
        hottest(&self.readings, SensorKind::Gpu)
    }

    pub fn sensor_count(&self) -> usize {
        self.readings.len()
    }

    pub fn throttle_level(&self) -> u8 {
        self.throttler.level()
    }

    /// Read every sensor and return the alerts to raise.
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        self.readings = self.sensors.read_all();
        if self.readings.is_empty() {
            if !self.said_none {
                tracing::warn!(node = %self.node, "no temperature sensor found: heartbeats will carry null temperatures");
                self.said_none = true;
            }
        } else {
            self.said_none = false;
        }
        let mut alerts = Vec::new();
        for (kind, name) in [(SensorKind::Cpu, "cpu"), (SensorKind::Gpu, "gpu")] {
            let Some(value) = hottest(&self.readings, kind) else {
                continue;
            };
            let tracker = match kind {
                SensorKind::Cpu => &mut self.cpu,
                _ => &mut self.gpu,
            };
            let Some(report) = tracker.observe(&self.rules, value, now) else {
                continue;
            };
            alerts.push(self.alert(name, kind, value, report, now));
        }
        alerts
    }

    fn alert(
        &self,
        name: &str,
        kind: SensorKind,
        value: f64,
        report: Report,
        now: Timestamp,
    ) -> Alert {
        let (severity, previous) = match report {
            Report::Changed { from, to } => (to, from),
            Report::Reminder(s) => (s, s),
        };
        let label = name.to_uppercase();
        let hottest = self
            .readings
            .iter()
            .filter(|r| r.kind == kind)
            .max_by(|a, b| a.celsius.total_cmp(&b.celsius));
        let (message, threshold) = if severity == Severity::Normal {
            let w = self.rules.thresholds.warning;
            (
                format!("{label} temperature {value:.1}°C back below warning ({w})"),
                w,
            )
        } else {
            let th = self.rules.threshold(severity);
            (
                format!(
                    "{label} temperature {value:.1}°C exceeds {} threshold",
                    severity.as_str()
                ),
                th,
            )
        };
        Alert {
            alert_id: format!("{}-{}", self.agent_id, uuid_like(now, name, severity)),
            agent_id: self.agent_id.clone(),
            kind: AlertKind::Thermal,
            severity,
            node: self.node.clone(),
            message,
            details: json!({
                "sensor": name,
                "temperature": value,
                "threshold": threshold,
                "previous_severity": previous,
                "reminder": matches!(report, Report::Reminder(_)),
                "source": hottest.map(|r| r.path.display().to_string()),
                "label": hottest.map(|r| r.label.clone()),
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            timestamp: now,
        }
    }

    /// Carry out a throttle command.
    pub fn execute(&mut self, cmd: &Command) -> Outcome {
        let outcome = if cmd.action_type == "reset_throttle" {
            self.throttler.reset()
        } else if let Some(level) = catalogue::throttle_level(&cmd.action_type) {
            self.throttler.apply(level)
        } else {
            return Outcome::new(
                ResultStatus::Unsupported,
                format!("{} is not a thermal action", cmd.action_type),
            );
        };
        match outcome {
            Ok(o) => {
                let mut result = Outcome {
                    changes: o.changes,
                    ..Outcome::new(ResultStatus::Succeeded, o.message)
                };
                if let Some(summary) = cpufreq_summary(&o.cpufreq) {
                    result.details.insert("cpufreq".into(), summary);
                }
                result
            }
            Err(e) => Outcome::new(ResultStatus::Failed, e.to_string()),
        }
    }
}

/// The cpufreq caps in force, as the driver accepted them, for a result's
/// details and the heartbeat's `metadata.cpufreq`: how many policies are
/// capped, the lowest and highest cap in kHz, and the share of full speed
/// every policy loses at least (`effective_throttle`, percent). `None`
/// when no cap is in force.
fn cpufreq_summary(caps: &[FreqCap]) -> Option<Value> {
    let min = caps.iter().map(|c| c.accepted_khz).min()?;
    let max = caps.iter().map(|c| c.accepted_khz).max()?;
    Some(json!({
        "policies": caps.len(),
        "min_cap_khz": min,
        "max_cap_khz": max,
        "effective_throttle": effective_throttle(caps),
    }))
}

/// A unique, readable alert id suffix: time, sensor, level.
fn uuid_like(now: Timestamp, sensor: &str, severity: Severity) -> String {
    format!(
        "{}-{sensor}-{}",
        now.timestamp_nanos_opt().unwrap_or_default(),
        severity.as_str()
    )
}

impl Antibody for ThermalSentinel {
    fn name(&self) -> &'static str {
        AGENT_TYPE
    }

    fn handles(&self, action: &str) -> bool {
        handles(action)
    }

    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        ThermalSentinel::sense(self, now)
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.cpu_temp = self.cpu_temp();
        hb.gpu_temp = self.gpu_temp();
        hb.throttle_level = Some(self.throttle_level());
        if let Some(summary) = cpufreq_summary(self.throttler.cpufreq_in_force()) {
            hb.metadata.insert("cpufreq".into(), summary);
        }
        hb.metadata
            .insert("sensors".into(), json!(self.sensor_count()));
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        Execution::Done(ThermalSentinel::execute(self, cmd))
    }
}
