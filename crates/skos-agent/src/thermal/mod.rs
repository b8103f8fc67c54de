//! The thermal sentinel antibody: reads temperatures, raises alerts on level
//! changes (with hysteresis, optional `for` debounce and a cooldown), a
//! `predicted` warning when the temperature's trend (least squares over
//! `thermal.predict.window_seconds`) will reach critical within the
//! horizon, and carries out `throttle_*` / `reset_throttle` commands.
//!
//! * [`sensors`]: temperature discovery and reading (sysfs under an
//!   injectable root, NVML, `nvidia-smi`, `sensors -j`); pure parsers.
//! * [`throttle`]: the actuator (cpufreq caps, cgroup CPU quotas, GPU power
//!   limits).

pub mod sensors;
pub mod throttle;

use skos_core::escape::ShowPath;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use skos_core::catalogue::{self, Executor};
use skos_core::config::{Config, PredictConfig};
use skos_core::level::{LevelRules, LevelTracker, Report};
use skos_core::protocol::{Alert, AlertKind, Command, Heartbeat, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::trend::{Fit, Window};
use skos_core::NodeName;

use crate::antibody::{Antibody, Execution, Precondition};
use crate::Outcome;
use sensors::{hottest, hottest_reading, Reading, SensorKind, Sensors, SourceTrouble};
use throttle::{effective_throttle, FreqCap, Throttler};

pub const AGENT_TYPE: &str = Executor::ThermalSentinel.as_str();

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    Executor::ThermalSentinel.handles(action)
}

/// The hottest reading of one kind over the prediction window, and
/// whether this rise was predicted already.
#[derive(Debug, Default)]
struct Trend {
    window: Window,
    predicted: bool,
    /// Since when the trend has reached critical within the horizon
    /// without a break (a prediction holds for `for.warning`, as a level
    /// warning does).
    predicting_since: Option<Timestamp>,
}

impl Trend {
    /// Take a reading read at `at`, unless it is not newer than the last
    /// one taken (the same reading judged again).
    fn push(&mut self, window_seconds: f64, at: Timestamp, value: f64) {
        if self.window.last().is_some_and(|(t, _)| at <= t) {
            return;
        }
        self.window.push(window_seconds, at, value);
    }
}

/// How long the agent's first look waits for the sources at most, so its
/// first heartbeat carries what the fast ones read.
const FIRST_LOOK: Duration = Duration::from_secs(1);

/// How many sources in trouble a heartbeat names (`metadata.sensor_errors`);
/// the others are counted in `metadata.sensor_errors_omitted`.
const MAX_REPORTED_TROUBLES: usize = 16;

pub struct ThermalSentinel {
    node: NodeName,
    agent_id: String,
    sensors: Sensors,
    throttler: Throttler,
    rules: LevelRules,
    cpu: LevelTracker,
    gpu: LevelTracker,
    /// The early warning's settings.
    predict: PredictConfig,
    /// The hottest CPU and GPU readings over the prediction window.
    cpu_trend: Trend,
    gpu_trend: Trend,
    /// The current readings: each source's last good ones, at most
    /// `max_age` old.
    readings: Vec<Reading>,
    /// How long ago each of `readings` was read, seconds.
    ages: Vec<f64>,
    /// Sources that are slow or keep failing, as of the last look.
    troubles: Vec<SourceTrouble>,
    /// How long a source's readings stay current.
    max_age: Duration,
    /// Raised from a reader thread when a source answered.
    arrivals: Arc<tokio::sync::Notify>,
    /// Whether the agent loop looked once.
    looked: bool,
    said_none: bool,
}

impl ThermalSentinel {
    /// The sentinel `cfg` describes. Its sources are read on their own
    /// threads, started on the first look; `state_dir` keeps the throttle's
    /// originals.
    pub fn new(cfg: &Config, state_dir: Option<&Path>) -> Self {
        let t = &cfg.thermal;
        let arrivals = Arc::new(tokio::sync::Notify::new());
        let signal = arrivals.clone();
        let max_age = t.sources.max_age_seconds(
            cfg.monitor_interval_of(skos_core::catalogue::Executor::ThermalSentinel.as_str()),
        );
        Self {
            node: cfg.node.name.clone(),
            agent_id: format!("thermal-sentinel-{}", cfg.node.name),
            sensors: Sensors::configured(cfg).on_arrival(move || signal.notify_one()),
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
            predict: t.predict.clone(),
            cpu_trend: Trend::default(),
            gpu_trend: Trend::default(),
            readings: Vec::new(),
            ages: Vec::new(),
            troubles: Vec::new(),
            max_age: Duration::try_from_secs_f64(max_age).unwrap_or_default(),
            arrivals,
            looked: false,
            said_none: false,
        }
    }

    /// The same sentinel reading `sensors` (their file reader, budgets and
    /// tools) in place of the ones its config describes; their answers
    /// still raise [`Antibody::arrivals`].
    pub fn with_sensors(mut self, sensors: Sensors) -> Self {
        let signal = self.arrivals.clone();
        self.sensors = sensors.on_arrival(move || signal.notify_one());
        self
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

    /// The current readings: each source's last good ones, at most
    /// `thermal.sources.max_age` old, sorted by path.
    pub fn readings(&self) -> &[Reading] {
        &self.readings
    }

    pub fn sensor_count(&self) -> usize {
        self.readings.len()
    }

    /// The throttle level in force, as heartbeats report it: the level
    /// applied, or more when a cap SKOS has no record of takes more away.
    pub fn throttle_level(&self) -> u8 {
        self.throttler.report().effective_level
    }

    /// The sources that are slow or keep failing, as of the last look.
    pub fn troubles(&self) -> &[SourceTrouble] {
        &self.troubles
    }

    /// Reads every source now, waiting for each at most its own budget,
    /// and returns the alerts to raise. For one-shot use and tests: the
    /// agent loop never waits for a source (it calls [`Self::look`]).
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        self.sensors.request();
        self.sensors.settle(self.sensors.full_budget());
        self.judge(now)
    }

    /// What the agent loop does every `monitor_interval`: asks every idle
    /// source for a new read and judges what has arrived, without waiting
    /// (the first look waits up to a second, so the first heartbeat
    /// carries what the fast sources read). What arrives later is judged
    /// when it arrives ([`Antibody::arrivals`]).
    pub fn look(&mut self, now: Timestamp) -> Vec<Alert> {
        self.sensors.request();
        if !self.looked {
            self.looked = true;
            self.sensors
                .settle(FIRST_LOOK.min(self.sensors.read_timeout()));
        }
        self.judge(now)
    }

    /// Judges the current readings (each source's last good ones, at most
    /// `thermal.sources.max_age` old) without reading anything: the alerts
    /// to raise.
    pub fn judge(&mut self, now: Timestamp) -> Vec<Alert> {
        let current = self.sensors.current(self.max_age);
        self.readings = current.readings;
        self.ages = current.ages;
        self.troubles = current.troubles;
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
            // The trend takes each reading once, at the time it was read.
            let read_at = now - skos_core::level::secs(self.age_of_hottest(kind).unwrap_or(0.0));
            let window = self.predict.window_seconds;
            let (tracker, trend) = match kind {
                SensorKind::Cpu => (&mut self.cpu, &mut self.cpu_trend),
                _ => (&mut self.gpu, &mut self.gpu_trend),
            };
            trend.push(window, read_at, value);
            let report = tracker.observe(&self.rules, value, now);
            let level = tracker.current();
            if let Some(report) = report {
                if level == Severity::Normal {
                    trend.predicted = false;
                }
                alerts.push(self.alert(name, kind, value, report, now));
                continue;
            }
            if let Some(a) = self.prediction(name, kind, value, level, now) {
                alerts.push(a);
            }
        }
        alerts
    }

    /// How long ago the hottest reading of `kind` was read, seconds.
    fn age_of_hottest(&self, kind: SensorKind) -> Option<f64> {
        let h = hottest_reading(&self.readings, kind)?;
        let i = self.readings.iter().position(|r| r.path == h.path)?;
        self.ages.get(i).copied()
    }

    /// The trend of `kind`'s hottest reading.
    fn trend(&self, kind: SensorKind) -> &Trend {
        match kind {
            SensorKind::Cpu => &self.cpu_trend,
            _ => &self.gpu_trend,
        }
    }

    /// Seconds until `value` reaches critical on `kind`'s trend, when the
    /// trend is trusted (`thermal.predict`): the fit and the time.
    fn to_critical(&self, kind: SensorKind, value: f64) -> Option<(Fit, f64)> {
        let fit = self.trend(kind).window.fit()?;
        if !self.predict.trust().trusts(&fit) {
            return None;
        }
        let eta =
            skos_core::trend::seconds_until(value, self.rules.thresholds.critical, fit.slope)?;
        Some((fit, eta))
    }

    /// A `predicted` warning for `kind`, below critical at `level`, when
    /// its trusted trend reaches critical within the horizon and none was
    /// raised for this rise yet. A rise that ended (the trend no longer
    /// rising) may be predicted again when it resumes.
    ///
    /// A prediction raised while the level was `normal` is withdrawn (a
    /// `normal` alert, `details.event` `prediction_withdrawn`) once the
    /// level is still `normal` and the fitted trend (trusted or not: a
    /// noisy fit's R² dipping is no end of the rise) no longer reaches
    /// critical within twice the horizon: the early
    /// warning, and what it was answered with, do not stay open for a rise
    /// that stopped short.
    fn prediction(
        &mut self,
        name: &str,
        kind: SensorKind,
        value: f64,
        level: Severity,
        now: Timestamp,
    ) -> Option<Alert> {
        let rising = self.trend(kind).window.slope().is_some_and(|s| s > 0.0);
        let predicted = self.trend(kind).predicted;
        if predicted && level == Severity::Normal {
            let horizon = self.predict.horizon_seconds;
            // Judged on the fitted slope whether or not the fit is trusted:
            // a noisy rise whose R² wanders below `min_r2` from one reading
            // to the next has not stopped short, and withdrawing it then
            // would raise and withdraw the warning on the noise.
            let critical = self.rules.thresholds.critical;
            let still = self.trend(kind).window.fit().is_some_and(|fit| {
                fit.slope > 0.0
                    && skos_core::trend::seconds_until(value, critical, fit.slope)
                        .is_some_and(|eta| eta <= 2.0 * horizon)
            });
            if !still {
                return Some(self.withdrawal(name, kind, value, now));
            }
        }
        let trend = match kind {
            SensorKind::Cpu => &mut self.cpu_trend,
            _ => &mut self.gpu_trend,
        };
        if !rising {
            trend.predicted = false;
        }
        if !self.predict.enabled || level >= Severity::Critical || trend.predicted {
            return None;
        }
        let horizon = self.predict.horizon_seconds;
        let hold = self.rules.hold_up.warning;
        let within = self
            .to_critical(kind, value)
            .filter(|(_, eta)| *eta <= horizon);
        let trend = match kind {
            SensorKind::Cpu => &mut self.cpu_trend,
            _ => &mut self.gpu_trend,
        };
        let Some((fit, eta)) = within else {
            trend.predicting_since = None;
            return None;
        };
        // `for.warning` holds a prediction back as it holds the level
        // warning: a step that the fit reads as a steep rise, gone before
        // the hold, raises nothing.
        let since = *trend.predicting_since.get_or_insert(now);
        if now - since < skos_core::level::secs(hold) {
            return None;
        }
        match kind {
            SensorKind::Cpu => self.cpu_trend.predicted = true,
            _ => self.gpu_trend.predicted = true,
        }
        let critical = self.rules.thresholds.critical;
        let mut a = self.alert(name, kind, value, Report::Reminder(level), now);
        a.severity = Severity::Warning;
        a.alert_id = format!("{}-predicted", a.alert_id);
        a.message = format!(
            "{} temperature {value:.1}°C will reach critical ({critical}) in about {eta:.0} s at {:.2}°C/s",
            name.to_uppercase(),
            fit.slope
        );
        a.details.insert("threshold".into(), json!(critical));
        a.details.insert("reminder".into(), json!(false));
        a.details.insert(
            skos_core::events::EVENT_KEY.into(),
            json!(skos_core::events::PREDICTED),
        );
        a.details.insert("seconds_to_critical".into(), json!(eta));
        Some(a)
    }

    /// The `normal` alert that withdraws `kind`'s early warning (see
    /// [`ThermalSentinel::prediction`]); the next rise may be predicted
    /// again.
    fn withdrawal(&mut self, name: &str, kind: SensorKind, value: f64, now: Timestamp) -> Alert {
        match kind {
            SensorKind::Cpu => self.cpu_trend.predicted = false,
            _ => self.gpu_trend.predicted = false,
        }
        let critical = self.rules.thresholds.critical;
        let report = Report::Changed {
            from: Severity::Warning,
            to: Severity::Normal,
        };
        let mut a = self.alert(name, kind, value, report, now);
        a.alert_id = format!("{}-withdrawn", a.alert_id);
        a.message = format!(
            "{} temperature {value:.1}°C no longer heading for critical ({critical}): early warning withdrawn",
            name.to_uppercase()
        );
        a.details.insert(
            skos_core::events::EVENT_KEY.into(),
            json!(skos_core::events::PREDICTION_WITHDRAWN),
        );
        a
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
        let hottest = hottest_reading(&self.readings, kind);
        let age = hottest.and_then(|h| {
            let i = self.readings.iter().position(|r| r.path == h.path)?;
            self.ages.get(i).copied()
        });
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
        let fit = self.trend(kind).window.fit();
        let to_critical = self.to_critical(kind, value).map(|(_, eta)| eta);
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
                "source": hottest.map(|r| r.path.escaped().to_string()),
                "label": hottest.map(|r| r.label.clone()),
                "age_seconds": age,
                "trend_celsius_per_second": fit.map(|f| f.slope),
                "trend_r2": fit.and_then(|f| f.r2),
                "trend_samples": fit.map_or(0, |f| f.samples),
                "seconds_to_critical": to_critical,
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            timestamp: now,
        }
    }

    /// Carry out a throttle command. Its `parameters.originals`, the
    /// coordinator's copy of the originals, give an original to a target
    /// that has none recorded here (see [`Throttler::apply_with`]).
    ///
    /// `unsupported` when there is nothing to act on; `failed` when the
    /// originals cannot be saved (nothing is written), and for a reset
    /// that leaves a cap it has no original for.
    pub fn execute(&mut self, cmd: &Command) -> Outcome {
        let given = cmd
            .parameters
            .get(catalogue::ORIGINALS)
            .and_then(|v| catalogue::ThrottleOriginal::parse_list(v).ok())
            .unwrap_or_default();
        let reset = cmd.action_type == "reset_throttle";
        let outcome = if reset {
            self.throttler.reset_with(&given)
        } else if let Some(level) = catalogue::throttle_level(&cmd.action_type) {
            self.throttler.apply_with(level, &given)
        } else {
            return Outcome::new(
                ResultStatus::Unsupported,
                format!("{} is not a thermal action", cmd.action_type),
            );
        };
        let mut result = match outcome {
            Ok(o) => {
                let status = if reset && !o.unexplained.is_empty() {
                    ResultStatus::Failed
                } else {
                    ResultStatus::Succeeded
                };
                let mut result = Outcome {
                    changes: o.changes,
                    ..Outcome::new(status, o.message)
                };
                if let Some(summary) = cpufreq_summary(&o.cpufreq) {
                    result.details.insert("cpufreq".into(), summary);
                }
                result
            }
            Err(e @ crate::Error::NothingToAct { .. }) => {
                Outcome::new(ResultStatus::Unsupported, e.to_string())
            }
            Err(e) => Outcome::new(ResultStatus::Failed, e.to_string()),
        };
        if let Some(state) = throttle_state(&self.throttler.report()) {
            result.details.insert("throttle".into(), state);
        }
        result
    }

    /// Whether `problem` (`thermal:cpu`, `thermal:gpu`) is still at
    /// `level` °C by the current hottest reading of its kind: gone once the
    /// reading is below `level - thermal.hysteresis` (as its level alert
    /// would clear). [`Precondition::Unknown`] for another problem or
    /// without a current reading.
    pub fn precondition(&self, problem: &str, level: f64) -> Precondition {
        let kind = match problem.strip_prefix("thermal:") {
            Some("cpu") => SensorKind::Cpu,
            Some("gpu") => SensorKind::Gpu,
            _ => return Precondition::Unknown,
        };
        let Some(h) = hottest_reading(&self.readings, kind) else {
            return Precondition::Unknown;
        };
        if skos_core::level::cleared(level, self.rules.hysteresis, h.celsius) {
            Precondition::Gone {
                reading: h.celsius,
                source: h.path.escaped().to_string(),
            }
        } else {
            Precondition::Holds
        }
    }

    /// What this machine has: the sensors read in the last sensing pass
    /// and the actuators a throttle would use.
    pub fn inventory(&self) -> crate::antibody::Inventory {
        let sensors = if self.readings.is_empty() {
            "none".to_string()
        } else {
            let each: Vec<String> = self
                .readings
                .iter()
                .map(|r| {
                    let kind = match r.kind {
                        SensorKind::Cpu => "cpu",
                        SensorKind::Gpu => "gpu",
                        SensorKind::Other => "other",
                    };
                    format!("{kind} {} ({} {})", r.label, r.source, r.chip)
                })
                .collect();
            format!("{}: {}", each.len(), each.join(", "))
        };
        crate::antibody::Inventory {
            sensors,
            actuators: self.throttler.actuators().to_string(),
        }
    }
}

/// The throttle's state for the heartbeat's `metadata.throttle` and a
/// result's `details.throttle`: the level applied, the originals (the
/// coordinator keeps them and gives them back), and the caps in force SKOS
/// has no record of (grouped and bounded, with their full count). `None`
/// when there is neither an original nor such a cap.
fn throttle_state(report: &throttle::ThrottleReport) -> Option<Value> {
    if report.originals.is_empty() && report.unexplained.is_empty() {
        return None;
    }
    Some(json!({
        "level": report.level,
        "originals": report.originals,
        "unexplained": report.unexplained,
        "unexplained_count": report.unexplained_count,
    }))
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

/// The heartbeat's `metadata.sensor_errors`: each source that is slow or
/// keeps failing (at most [`MAX_REPORTED_TROUBLES`], slow ones and then
/// the longest-running first), by source name: what went wrong, since
/// when, how many times in a row, how long its read in progress has been
/// running and how old its last good reading is (seconds). With the count
/// of those left out; `None` when every source is fine.
fn sensor_errors(troubles: &[SourceTrouble]) -> Option<(Value, usize)> {
    if troubles.is_empty() {
        return None;
    }
    let mut order: Vec<&SourceTrouble> = troubles.iter().collect();
    order.sort_by(|a, b| a.problem.cmp(&b.problem).then(a.since.cmp(&b.since)));
    let mut errors = serde_json::Map::new();
    for t in order.iter().take(MAX_REPORTED_TROUBLES) {
        let mut v = serde_json::to_value(t).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("source");
        }
        errors.insert(t.source.clone(), v);
    }
    Some((
        Value::Object(errors),
        troubles.len().saturating_sub(MAX_REPORTED_TROUBLES),
    ))
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
        ThermalSentinel::look(self, now)
    }

    fn arrivals(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.arrivals.clone())
    }

    fn judge(&mut self, now: Timestamp) -> Vec<Alert> {
        ThermalSentinel::judge(self, now)
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.cpu_temp = self.cpu_temp();
        hb.gpu_temp = self.gpu_temp();
        let throttle = self.throttler.report();
        hb.throttle_level = Some(throttle.effective_level);
        if let Some(summary) = cpufreq_summary(self.throttler.cpufreq_in_force()) {
            hb.metadata.insert("cpufreq".into(), summary);
        }
        if let Some(state) = throttle_state(&throttle) {
            hb.metadata.insert("throttle".into(), state);
        }
        hb.metadata
            .insert("sensors".into(), json!(self.sensor_count()));
        if let Some((errors, omitted)) = sensor_errors(&self.troubles) {
            if let Value::Object(errors) = errors {
                for (source, entry) in errors {
                    crate::offloop::add_sensor_error(hb, &source, entry);
                }
            }
            if omitted > 0 {
                hb.metadata
                    .insert("sensor_errors_omitted".into(), json!(omitted));
            }
        }
    }

    fn inventory(&self) -> Option<crate::antibody::Inventory> {
        Some(ThermalSentinel::inventory(self))
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        Execution::Done(ThermalSentinel::execute(self, cmd))
    }

    fn precondition(&self, problem: &str, level: f64) -> Precondition {
        ThermalSentinel::precondition(self, problem, level)
    }
}
