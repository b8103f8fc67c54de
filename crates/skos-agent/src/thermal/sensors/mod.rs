//! Temperature discovery and reading for the thermal sentinel.
//!
//! Sources, in order:
//!
//! * sysfs under an injectable root (default `/sys`): every
//!   `class/hwmon/hwmon*` (labels, crit, max; the older `hwmonX/device/`
//!   layout too) and every `class/thermal/thermal_zone*`. Class entries are
//!   symlinks into `devices/`; they are followed only when the target stays
//!   inside the root.
//! * NVIDIA GPUs through NVML (`libnvidia-ml` loaded at run time, once,
//!   lazily) when `gpu.nvml` is on; `nvidia-smi` when `gpu.nvidia_smi` is on
//!   and NVML gave nothing.
//! * `sensors -j` (lm-sensors) when `gpu.lm_sensors` is on and sysfs gave no
//!   reading at all.
//!
//! Each source (one hwmon device, the thermal zones, NVML, `nvidia-smi`,
//! `sensors -j`) is read on its own thread within its own time budget
//! (`sources.rs`): a slow or hung source holds its own thread only. The
//! agent never waits for a source: it asks for a read
//! ([`Sensors::request`]) and uses each source's last good readings while
//! they are recent enough ([`Sensors::current`]); `skos sensors` waits for
//! each source at most its budget and names the ones still reading
//! ([`Sensors::scan`]).
//!
//! Every [`Reading`] says what it measures ([`Role`]: die, package, core,
//! control value, ...) and whether it counts toward its kind's temperature
//! (`counts`: a k10temp `Tctl` beside a `Tdie` does not); the per-driver
//! table is in `chips.rs`. No reading is ever invented: a file that cannot
//! be read, a value the kind of sensor cannot give (outside its physical
//! range, a value broken chips stick at, "no value"), a broken link or a
//! part of a tool's output that cannot be parsed is left out and reported
//! as a [`Problem`] (and a `debug` line), and a machine without sensors
//! gives an empty list. The parsers of tool output are pure functions over
//! text returning a [`Scan`]; the I/O around them is thin.

mod chips;
mod lmsensors;
mod nvidia;
mod sources;
mod sysfs;

pub use chips::{bounds, validate, Bounds, GENERIC, PROBE_40_125, PROBE_55_125, STUCK};
pub use lmsensors::parse_lm_sensors_json;
pub use nvidia::{nvidia_smi_scan, parse_nvidia_smi};
use skos_core::escape::ShowPath;
pub use sources::{Current, SourceId, SourceTrouble, TroubleKind};

use crate::error::{Error, Result};
use skos_core::config::{Config, GpuConfig, SourcesConfig};
use sources::{Pool, Spec};
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

/// What a sensor measures, as the thermal sentinel groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    Cpu,
    Gpu,
    Other,
}

/// What one input of a chip measures (serialised lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The real temperature of a CPU or GPU die (k10temp/zenpower `Tdie`,
    /// a SoC's CPU zone, an NVIDIA GPU).
    Die,
    /// A whole CPU package (coretemp `Package id N`, zone `x86_pkg_temp`).
    Package,
    /// One core complex die of an AMD CPU (k10temp/zenpower `TccdN`).
    Ccd,
    /// One CPU core (coretemp `Core N`, k8temp).
    Core,
    /// The fan-control value of an AMD CPU (k10temp/zenpower `Tctl`): on
    /// some Ryzen 1000/2000 and Threadripper parts the die plus 20 or 27 °C.
    Control,
    /// amdgpu `edge`: the die's edge.
    Edge,
    /// amdgpu `junction`: the die's hot spot.
    Junction,
    /// amdgpu `mem`: the GPU's memory.
    Memory,
    /// Anything else: drives, chipsets, ACPI zones, Wi-Fi, probes.
    Other,
}

/// One temperature read now from one sensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reading {
    /// The file read (full path, root included, through the `class/` link),
    /// or `nvml:<index>`, `nvidia-smi:<index>`, `sensors:<chip>/<feature>`.
    #[serde(serialize_with = "skos_core::escape::path")]
    pub path: PathBuf,
    /// hwmon `tempN_label`, thermal zone type, GPU name, lm-sensors feature;
    /// `<chip> tempN` when the sensor has no label.
    pub label: String,
    /// CPU, GPU or other, from the chip.
    pub kind: SensorKind,
    /// What this input of its chip measures.
    pub role: Role,
    /// Whether this value counts toward its kind's temperature (the
    /// heartbeat's `cpu_temp` for kind cpu, `gpu_temp` for gpu). False only
    /// for an input another input of the same chip supersedes: a
    /// k10temp/zenpower `Tctl` when the chip also has `Tdie` or `TccdN`.
    pub counts: bool,
    /// The temperature, °C.
    pub celsius: f64,
    /// "hwmon" | "thermal_zone" | "nvml" | "nvidia-smi" | "lm-sensors".
    pub source: &'static str,
    /// hwmon `name` (coretemp, k10temp, amdgpu, nvme, ...), zone type,
    /// "nvidia", or the lm-sensors chip prefix.
    pub chip: String,
    /// The critical limit the sensor publishes (`tempN_crit`, a `critical`
    /// trip point, NVML's shutdown threshold), °C.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crit: Option<f64>,
    /// The high limit the sensor publishes (`tempN_max`, a `hot` trip
    /// point, NVML's slowdown threshold), °C.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Reading {
    /// Whether this reading is (one of) the CPU temperature(s): a CPU
    /// sensor that counts.
    pub fn counts_as_cpu(&self) -> bool {
        self.kind == SensorKind::Cpu && self.counts
    }
}

/// Why a number is not a temperature of the sensor that gave it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Invalid {
    /// NaN or infinite.
    NotFinite,
    /// A value broken chips stick at ([`STUCK`]: 127, -128, 255 °C).
    Stuck,
    /// What drivers write when they have no value: 0 °C (except on probes
    /// that can read 0, see [`Bounds::zero_is_value`]) or -273.15 °C.
    NoValue,
    /// Outside the physical range of this kind of sensor, °C inclusive.
    OutOfRange { min: f64, max: f64 },
}

/// What went wrong with one file, one row or one chip block.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ProblemKind {
    /// A file, directory or link that could not be read (EIO, ENODATA,
    /// EINVAL, EACCES, a broken link); `error` is the OS error.
    Unreadable { error: String },
    /// A `class/` link that leaves the sysfs root; not followed.
    OutsideRoot {
        #[serde(serialize_with = "skos_core::escape::path")]
        target: PathBuf,
    },
    /// Text where a number was expected.
    NotANumber { text: String },
    /// A number that is not a temperature this sensor can give.
    Invalid {
        celsius: f64,
        #[serde(flatten)]
        reason: Invalid,
    },
    /// A row or feature that says it has no value (`[N/A]`,
    /// `[Not Supported]`, an empty lm-sensors feature).
    NoValue { text: String },
    /// A part of a tool's output that could not be parsed; the rest was
    /// kept. `text` is (the start of) that part.
    Unparsed { text: String, reason: String },
    /// A known defect of a tool's output that was repaired before parsing
    /// (lm-sensors 3.6's trailing comma in a chip without features).
    Repaired { defect: String },
    /// A tool that did not run or exited with an error that voids its
    /// output: no readings from it. `code` is the exit status.
    ToolFailed { code: Option<i32>, message: String },
    /// A warning or error line a tool wrote beside its output.
    ToolMessage { message: String },
    /// A source (one hwmon device, the thermal zones, NVML, a tool) that
    /// had not answered when it was looked at: still reading after
    /// `seconds`, its budget `budget_seconds`. `chip`: the hwmon chip's
    /// name, once known.
    Slow {
        seconds: f64,
        budget_seconds: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        chip: Option<String>,
    },
}

/// A file, row or chip block that gave no reading (or gave one with a
/// caveat), and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    /// Where: the file (root included), `sensors:<chip>[/<feature>]`,
    /// `sensors`, `nvidia-smi:<index>`, `nvidia-smi:line <N>`,
    /// `nvml:<index>`.
    pub at: String,
    /// What went wrong.
    #[serde(flatten)]
    pub what: ProblemKind,
}

impl Problem {
    pub(crate) fn new(at: impl Into<String>, what: ProblemKind) -> Self {
        Self {
            at: at.into(),
            what,
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotFinite => write!(f, "not a finite number"),
            Invalid::Stuck => write!(f, "a value broken chips stick at"),
            Invalid::NoValue => write!(f, "what drivers write when they have no value"),
            Invalid::OutOfRange { min, max } => {
                write!(f, "outside this kind of sensor's range {min}..={max} °C")
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.at)?;
        match &self.what {
            ProblemKind::Unreadable { error } => write!(f, "unreadable: {error}"),
            ProblemKind::OutsideRoot { target } => {
                write!(f, "link leaves the sysfs root ({})", target.escaped())
            }
            ProblemKind::NotANumber { text } => write!(f, "not a number: {text:?}"),
            ProblemKind::Invalid { celsius, reason } => write!(f, "{celsius} °C is {reason}"),
            ProblemKind::NoValue { text } => write!(f, "no value: {text}"),
            ProblemKind::Unparsed { text, reason } => {
                write!(f, "could not parse {text:?}: {reason}")
            }
            ProblemKind::Repaired { defect } => write!(f, "repaired: {defect}"),
            ProblemKind::ToolFailed { code, message } => match code {
                Some(code) => write!(f, "exit {code}: {message}"),
                None => write!(f, "failed: {message}"),
            },
            ProblemKind::ToolMessage { message } => write!(f, "said: {message}"),
            ProblemKind::Slow {
                seconds,
                budget_seconds,
                chip,
            } => {
                write!(
                    f,
                    "slow source: no answer after {seconds:.1} s (its budget: {budget_seconds} s)"
                )?;
                match chip {
                    Some(chip) => write!(f, ", chip {chip}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What one look at the sensors (or one parser) found: the readings, and
/// the problems with everything that gave none.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Scan {
    /// Valid temperatures.
    pub readings: Vec<Reading>,
    /// Files, rows and chip blocks that gave no reading, and why.
    pub problems: Vec<Problem>,
}

impl Scan {
    /// Appends `other`'s readings and problems.
    pub fn extend(&mut self, other: Scan) {
        self.readings.extend(other.readings);
        self.problems.extend(other.problems);
    }

    /// Records `problem` with a `debug` line.
    pub(crate) fn problem(&mut self, at: impl Into<String>, what: ProblemKind) {
        let p = Problem::new(at, what);
        tracing::debug!(at = %p.at, problem = %p, "sensor gave no reading");
        self.problems.push(p);
    }
}

/// Reads one sysfs attribute file whole. The default is
/// `std::fs::read_to_string`; a test substitutes one that fails chosen
/// files with a chosen errno (ENODATA, EINVAL, EIO), as misbehaving
/// drivers do.
pub type FileReader = Arc<dyn Fn(&Path) -> std::io::Result<String> + Send + Sync>;

/// The temperature sensors of one machine. Each source is read on its own
/// worker thread, started on its first read; dropping the sensors stops
/// them without waiting for a read in progress.
pub struct Sensors {
    root: PathBuf,
    gpu: GpuConfig,
    read_file: FileReader,
    /// Budget of one sysfs source or NVML.
    read_timeout: Duration,
    /// How long a tool may run.
    tool_timeout: Duration,
    /// Told each time a source answers.
    arrived: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The worker threads, started on the first read.
    pool: OnceLock<Pool>,
}

impl fmt::Debug for Sensors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sensors")
            .field("root", &self.root)
            .field("gpu", &self.gpu)
            .field("read_timeout", &self.read_timeout)
            .field("tool_timeout", &self.tool_timeout)
            .finish_non_exhaustive()
    }
}

/// How long a tool may run, and the flag that kills it early (its sensors
/// were dropped: the agent is stopping).
#[derive(Debug, Clone)]
pub(crate) struct ToolBudget {
    pub timeout: Duration,
    pub stop: Arc<AtomicBool>,
}

impl ToolBudget {
    /// `timeout`, never stopped early.
    #[cfg(test)]
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Sensors {
    /// Sensors under `sysfs_root` (`/sys` on a real machine), with the
    /// default budgets of `thermal.sources`.
    pub fn new(sysfs_root: impl Into<PathBuf>, gpu: GpuConfig) -> Self {
        let budgets = SourcesConfig::default();
        Self {
            root: sysfs_root.into(),
            gpu,
            read_file: Arc::new(|p: &Path| std::fs::read_to_string(p)),
            read_timeout: secs(budgets.read_timeout),
            tool_timeout: secs(budgets.tool_timeout),
            arrived: None,
            pool: OnceLock::new(),
        }
    }

    /// The sensors `cfg` describes: its `sysfs_root`, `thermal.gpu` and
    /// the budgets of `thermal.sources`.
    pub fn configured(cfg: &Config) -> Self {
        let s = &cfg.thermal.sources;
        Self::new(&cfg.sysfs_root, cfg.thermal.gpu.clone())
            .with_budgets(secs(s.read_timeout), secs(s.tool_timeout))
    }

    /// The same sensors, with sysfs files read through `read_file` (called
    /// with the canonical path of the file, inside the root, on the
    /// source's own thread).
    pub fn with_file_reader(
        mut self,
        read_file: impl Fn(&Path) -> std::io::Result<String> + Send + Sync + 'static,
    ) -> Self {
        self.read_file = Arc::new(read_file);
        self
    }

    /// The same sensors with these budgets: `read` for one sysfs source
    /// (one hwmon device, the thermal zones) or NVML, `tool` for
    /// `nvidia-smi` and `sensors -j` (killed past it).
    pub fn with_budgets(mut self, read: Duration, tool: Duration) -> Self {
        self.read_timeout = read;
        self.tool_timeout = tool;
        self
    }

    /// The same sensors, calling `arrived` (on a reader thread) each time
    /// a source answers.
    pub fn on_arrival(mut self, arrived: impl Fn() + Send + Sync + 'static) -> Self {
        self.arrived = Some(Arc::new(arrived));
        self
    }

    /// The budget of one sysfs source or NVML.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The longest one look at every source can take: the list of hwmon
    /// devices, then a device, then a fallback tool.
    pub fn full_budget(&self) -> Duration {
        self.read_timeout * 2 + self.tool_timeout + Duration::from_secs(1)
    }

    fn pool(&self) -> &Pool {
        self.pool.get_or_init(|| {
            Pool::new(Spec {
                root: self.root.clone(),
                gpu: self.gpu.clone(),
                read_file: self.read_file.clone(),
                read_timeout: self.read_timeout,
                tool: ToolBudget {
                    timeout: self.tool_timeout,
                    stop: Arc::new(AtomicBool::new(false)),
                },
                arrived: self.arrived.clone(),
            })
        })
    }

    /// Every reading found now, sorted by path. Never fails: see
    /// [`Sensors::scan`] for what gave no reading.
    pub fn read_all(&self) -> Vec<Reading> {
        self.scan().readings
    }

    /// Reads every source now, waiting for each at most its own budget:
    /// every reading found, sorted by path, the problems with every file,
    /// row and chip that gave none, and a `slow` problem for each source
    /// that had not answered in its budget. Never fails.
    pub fn scan(&self) -> Scan {
        self.scan_within(self.full_budget())
    }

    /// [`Sensors::scan`], returning after `budget` at the latest: sources
    /// that have not answered by then are `slow` problems.
    pub fn scan_within(&self, budget: Duration) -> Scan {
        let pool = self.pool();
        let pass = pool.request();
        pool.settle(budget);
        pool.scan_of(pass)
    }

    /// Asks every idle source for a new read and returns at once. A source
    /// still busy with an earlier read is left to it.
    pub fn request(&self) {
        self.pool().request();
    }

    /// Waits until every source asked answered or ran past its budget, at
    /// most `budget`.
    pub fn settle(&self, budget: Duration) {
        self.pool().settle(budget);
    }

    /// The last good readings of every source that gave them at most
    /// `max_age` ago, with their ages, and the sources that are slow or
    /// keep failing. Never waits for a source.
    pub fn current(&self, max_age: Duration) -> Current {
        self.pool().current(max_age)
    }
}

/// Seconds as a `Duration`; a value the config check refuses (negative,
/// not finite) is zero.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

/// Hottest reading of a kind among those that count (see
/// [`Reading::counts`]), °C; `None` when there is none (never an invented
/// value).
pub fn hottest(readings: &[Reading], kind: SensorKind) -> Option<f64> {
    hottest_reading(readings, kind).map(|r| r.celsius)
}

/// The reading [`hottest`] takes its value from.
pub fn hottest_reading(readings: &[Reading], kind: SensorKind) -> Option<&Reading> {
    readings
        .iter()
        .filter(|r| r.kind == kind && r.counts)
        .max_by(|a, b| a.celsius.total_cmp(&b.celsius))
}

/// Looks `program` up on `PATH`: an executable regular file.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What a tool printed, and how it exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ToolOutput {
    /// The exit status; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a tool with a deadline; returns its exit status, stdout and stderr.
/// A tool that outlives `budget.timeout`, or is still running when
/// `budget.stop` is set, is killed with its process group.
pub(crate) fn run_tool(program: &Path, args: &[&str], budget: &ToolBudget) -> Result<ToolOutput> {
    let what = || format!("{} {}", program.escaped(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(program, e))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + budget.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if budget.stop.load(Ordering::SeqCst) => {
                kill_group(&mut child);
                return Err(Error::Device {
                    what: what(),
                    reason: "the sensors stopped; killed".into(),
                });
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                return Err(Error::Device {
                    what: what(),
                    reason: format!(
                        "still running after {} s (thermal.sources.tool_timeout); killed",
                        budget.timeout.as_secs_f64()
                    ),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(&mut child);
                return Err(Error::io(program, e));
            }
        }
    };
    // Whatever the tool left behind may hold a pipe: wait a little for the
    // output, no more.
    let collect = |rx: Option<mpsc::Receiver<String>>| {
        rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .unwrap_or_default()
    };
    Ok(ToolOutput {
        code: status.code(),
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Reads a pipe to its end on a thread of its own; the text arrives on
/// the channel.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// Kills `child` and its process group (it leads one: `process_group(0)`)
/// and reaps it.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        if pid > 0 {
            // SAFETY: kill(2) on the process group of our own child, made
            // its leader by `process_group(0)`.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(kind: SensorKind, c: f64) -> Reading {
        Reading {
            path: PathBuf::from(format!("x:{c}")),
            label: String::new(),
            kind,
            role: Role::Die,
            counts: true,
            celsius: c,
            source: "hwmon",
            chip: String::new(),
            crit: None,
            max: None,
        }
    }

    #[test]
    fn hottest_picks_the_max_of_a_kind_and_none_without_one() {
        let r = [
            reading(SensorKind::Cpu, 50.0),
            reading(SensorKind::Cpu, 71.5),
            reading(SensorKind::Other, 90.0),
        ];
        assert_eq!(hottest(&r, SensorKind::Cpu), Some(71.5));
        assert_eq!(hottest(&r, SensorKind::Other), Some(90.0));
        assert_eq!(hottest(&r, SensorKind::Gpu), None);
        assert_eq!(hottest(&[], SensorKind::Cpu), None);
    }

    #[test]
    fn hottest_skips_readings_that_do_not_count() {
        let tctl = Reading {
            role: Role::Control,
            counts: false,
            ..reading(SensorKind::Cpu, 97.0)
        };
        let r = [reading(SensorKind::Cpu, 70.0), tctl.clone()];
        assert_eq!(hottest(&r, SensorKind::Cpu), Some(70.0));
        assert_eq!(
            hottest_reading(&r, SensorKind::Cpu).map(|x| x.celsius),
            Some(70.0)
        );
        assert!(!tctl.counts_as_cpu());
        assert!(r[0].counts_as_cpu());
        assert_eq!(hottest(std::slice::from_ref(&tctl), SensorKind::Cpu), None);
    }

    #[test]
    fn kind_and_role_serialise_lowercase() {
        assert_eq!(
            serde_json::to_string(&SensorKind::Gpu).ok().as_deref(),
            Some("\"gpu\"")
        );
        let r = reading(SensorKind::Cpu, 40.0);
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["kind"], "cpu");
        assert_eq!(v["role"], "die");
        assert_eq!(v["counts"], true);
        assert!(v.get("crit").is_none() && v.get("max").is_none());
    }

    #[test]
    fn problems_serialise_flat_and_read_well() {
        let p = Problem::new(
            "/sys/class/hwmon/hwmon0/temp1_input",
            ProblemKind::Invalid {
                celsius: 127.0,
                reason: Invalid::Stuck,
            },
        );
        let v = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(v["at"], "/sys/class/hwmon/hwmon0/temp1_input");
        assert_eq!(v["problem"], "invalid");
        assert_eq!(v["reason"], "stuck");
        assert_eq!(v["celsius"], 127.0);
        assert_eq!(
            p.to_string(),
            "/sys/class/hwmon/hwmon0/temp1_input: 127 °C is a value broken chips stick at"
        );
        let range = Problem::new(
            "sensors:w1_slave_temp-virtual-0/temp1",
            ProblemKind::Invalid {
                celsius: 130.0,
                reason: Invalid::OutOfRange {
                    min: -55.0,
                    max: 125.0,
                },
            },
        );
        let v = serde_json::to_value(&range).unwrap_or_default();
        assert_eq!(
            (v["min"].as_f64(), v["max"].as_f64()),
            (Some(-55.0), Some(125.0))
        );
        let failed = Problem::new(
            "nvidia-smi",
            ProblemKind::ToolFailed {
                code: Some(18),
                message: "Failed to initialize NVML: Driver/library version mismatch".into(),
            },
        );
        assert_eq!(
            failed.to_string(),
            "nvidia-smi: exit 18: Failed to initialize NVML: Driver/library version mismatch"
        );
    }

    #[test]
    fn run_tool_reports_status_stdout_and_stderr() {
        let out = run_tool(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2; exit 14"],
            &ToolBudget::new(Duration::from_secs(5)),
        );
        let out = out.unwrap_or_else(|e| panic!("sh did not run: {e}"));
        assert_eq!(out.code, Some(14));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn run_tool_kills_a_tool_and_its_children_at_its_timeout() {
        // The shell's `sleep` child holds the pipes: only killing the
        // whole process group lets the run end at its timeout.
        let started = Instant::now();
        let out = run_tool(
            Path::new("/bin/sh"),
            &["-c", "sleep 30; echo late"],
            &ToolBudget::new(Duration::from_millis(300)),
        );
        let took = started.elapsed();
        let err = out.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("still running after 0.3 s (thermal.sources.tool_timeout); killed"),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn run_tool_stops_when_its_sensors_stop() {
        let budget = ToolBudget::new(Duration::from_secs(60));
        let stop = budget.stop.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let out = run_tool(Path::new("/bin/sh"), &["-c", "sleep 30"], &budget);
        let took = started.elapsed();
        let _ = setter.join();
        let err = out.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("the sensors stopped; killed"), "{err}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn slow_problems_name_their_budget_and_chip() {
        let p = Problem::new(
            "/sys/class/hwmon/hwmon7",
            ProblemKind::Slow {
                seconds: 2.04,
                budget_seconds: 2.0,
                chip: Some("w1_slave_temp".into()),
            },
        );
        assert_eq!(
            p.to_string(),
            "/sys/class/hwmon/hwmon7: slow source: no answer after 2.0 s (its budget: 2 s), chip w1_slave_temp"
        );
        let v = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(v["problem"], "slow");
        assert_eq!(v["chip"], "w1_slave_temp");
        assert_eq!(v["budget_seconds"], 2.0);
    }
}
