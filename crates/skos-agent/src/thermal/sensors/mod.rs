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
//! No reading is ever invented: a file that cannot be read, a value that is
//! not plausible (≤ 0 °C, above 200 °C), a broken link or a missing
//! directory is skipped with a `debug` line naming it, and a machine without
//! sensors gives an empty list. The parsers of tool output are pure
//! functions over text; the I/O around them is thin.

mod lmsensors;
mod nvidia;
mod sysfs;

pub use lmsensors::parse_lm_sensors_json;
pub use nvidia::parse_nvidia_smi;

use crate::error::{Error, Result};
use nvml_wrapper::Nvml;
use skos_core::config::GpuConfig;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a sensor measures, as the thermal sentinel groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    Cpu,
    Gpu,
    Other,
}

/// One temperature read now from one sensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reading {
    /// The file read (full path, root included, through the `class/` link),
    /// or `nvml:<index>`, `nvidia-smi:<index>`, `sensors:<chip>/<feature>`.
    pub path: PathBuf,
    /// hwmon `tempN_label`, thermal zone type, GPU name, lm-sensors feature;
    /// `<chip> tempN` when the sensor has no label.
    pub label: String,
    pub kind: SensorKind,
    pub celsius: f64,
    /// "hwmon" | "thermal_zone" | "nvml" | "nvidia-smi" | "lm-sensors".
    pub source: &'static str,
    /// hwmon `name` (coretemp, k10temp, amdgpu, nvme, ...), zone type,
    /// "nvidia", or the lm-sensors chip prefix.
    pub chip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The temperature sensors of one machine.
#[derive(Debug)]
pub struct Sensors {
    root: PathBuf,
    gpu: GpuConfig,
    /// NVML, initialised on the first read that wants it; `None` when the
    /// library is absent or has no driver (the normal no-GPU case).
    nvml: OnceLock<Option<Nvml>>,
}

/// How long an external tool (`nvidia-smi`, `sensors`) may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(5);

impl Sensors {
    /// Sensors under `sysfs_root` (`/sys` on a real machine).
    pub fn new(sysfs_root: impl Into<PathBuf>, gpu: GpuConfig) -> Self {
        Self {
            root: sysfs_root.into(),
            gpu,
            nvml: OnceLock::new(),
        }
    }

    /// Every reading found now, sorted by path. Never fails: unreadable
    /// files, broken links and missing dirs are skipped with a
    /// `tracing::debug!` line naming the path.
    pub fn read_all(&self) -> Vec<Reading> {
        let mut readings = sysfs::read(&self.root);
        let sysfs_found = !readings.is_empty();

        let mut gpus = Vec::new();
        if self.gpu.nvml {
            if let Some(nvml) = self.nvml() {
                gpus = nvidia::read_nvml(nvml);
            }
        }
        if gpus.is_empty() && self.gpu.nvidia_smi {
            gpus = nvidia::read_nvidia_smi();
        }
        readings.extend(gpus);

        if !sysfs_found && self.gpu.lm_sensors {
            readings.extend(lmsensors::read_lm_sensors());
        }

        readings.sort_by(|a, b| a.path.cmp(&b.path));
        readings
    }

    fn nvml(&self) -> Option<&Nvml> {
        self.nvml
            .get_or_init(|| match Nvml::init() {
                Ok(nvml) => {
                    tracing::debug!("NVML initialised");
                    Some(nvml)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "NVML not available; no NVIDIA readings through it");
                    None
                }
            })
            .as_ref()
    }
}

/// Hottest reading of a kind, `None` when there is no sensor of that kind
/// (never an invented value).
pub fn hottest(readings: &[Reading], kind: SensorKind) -> Option<f64> {
    readings
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.celsius)
        .fold(None, |acc: Option<f64>, c| {
            Some(acc.map_or(c, |a| a.max(c)))
        })
}

/// Sensor kind from a chip name: hwmon `name`, thermal zone type, or the
/// driver prefix of an lm-sensors chip.
pub(crate) fn classify(chip: &str) -> SensorKind {
    let chip = chip.trim().to_ascii_lowercase();
    match chip.as_str() {
        "coretemp" | "k10temp" | "zenpower" | "k8temp" | "via_cputemp" | "x86_pkg_temp"
        | "cpu_thermal" | "cpu-thermal" | "soc_thermal" | "soc-thermal" | "tcpu" => SensorKind::Cpu,
        "amdgpu" | "radeon" | "nouveau" | "gpu-thermal" | "gpu_thermal" => SensorKind::Gpu,
        // ARM SoCs name their zones cpu0-thermal, cpu-big0-thermal,
        // cpuss-0-thermal, gpu0-thermal, gpuss-1-thermal, ...
        c if c.starts_with("cpu") => SensorKind::Cpu,
        c if c.starts_with("gpu") => SensorKind::Gpu,
        _ => SensorKind::Other,
    }
}

/// `celsius` when it is a plausible temperature, `None` ("no reading")
/// otherwise: not finite, 0 or below (sensors report 0 or negative values,
/// -273.15 among them, when they have nothing), or above 200 °C.
pub(crate) fn plausible(celsius: f64) -> Option<f64> {
    (celsius.is_finite() && celsius > 0.0 && celsius <= 200.0).then_some(celsius)
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

/// Runs a tool with a deadline; returns its exit success and its stdout.
/// A tool that outlives [`TOOL_TIMEOUT`] is killed.
pub(crate) fn run_tool(program: &Path, args: &[&str]) -> Result<(bool, String)> {
    let what = || format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(program, e))?;
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        })
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Device {
                    what: what(),
                    reason: format!("still running after {TOOL_TIMEOUT:?}; killed"),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::io(program, e)),
        }
    };
    let text = match reader {
        Some(handle) => handle.join().map_err(|_| Error::Device {
            what: what(),
            reason: "output reader panicked".into(),
        })?,
        None => String::new(),
    };
    Ok((status.success(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(kind: SensorKind, c: f64) -> Reading {
        Reading {
            path: PathBuf::from(format!("x:{c}")),
            label: String::new(),
            kind,
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
    fn classification_of_chips_and_zones() {
        for cpu in [
            "coretemp",
            "k10temp",
            "zenpower",
            "cpu_thermal",
            "k8temp",
            "via_cputemp",
            "x86_pkg_temp",
            "cpu-thermal",
            "soc_thermal",
            "tcpu",
            "cpu0-thermal",
        ] {
            assert_eq!(classify(cpu), SensorKind::Cpu, "{cpu}");
        }
        for gpu in ["amdgpu", "radeon", "nouveau", "gpu-thermal", "gpu0-thermal"] {
            assert_eq!(classify(gpu), SensorKind::Gpu, "{gpu}");
        }
        for other in [
            "nvme",
            "acpitz",
            "iwlwifi_1",
            "drivetemp",
            "pch_cannonlake",
            "",
        ] {
            assert_eq!(classify(other), SensorKind::Other, "{other}");
        }
    }

    #[test]
    fn implausible_values_are_no_reading() {
        assert_eq!(plausible(45.0), Some(45.0));
        assert_eq!(plausible(200.0), Some(200.0));
        for bad in [0.0, -1.0, -60.0, 200.5, 6553.5, f64::NAN, f64::INFINITY] {
            assert_eq!(plausible(bad), None, "{bad}");
        }
    }

    #[test]
    fn kind_serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&SensorKind::Gpu).ok().as_deref(),
            Some("\"gpu\"")
        );
        let r = reading(SensorKind::Cpu, 40.0);
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["kind"], "cpu");
        assert!(v.get("crit").is_none() && v.get("max").is_none());
    }
}
