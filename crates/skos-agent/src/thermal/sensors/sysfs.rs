//! hwmon and thermal zones under the sysfs root.

use super::{classify, plausible, Reading};
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Every plausible hwmon and thermal-zone reading under `root`.
pub(super) fn read(root: &Path) -> Vec<Reading> {
    let canon_root = match fs::canonicalize(root) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(path = %root.display(), error = %e, "sysfs root not readable; no sysfs sensors");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    read_hwmon(root, &canon_root, &mut out);
    read_thermal_zones(root, &canon_root, &mut out);
    out
}

fn read_hwmon(root: &Path, canon_root: &Path, out: &mut Vec<Reading>) {
    let class = root.join("class/hwmon");
    for entry in list_dir(&class, "hwmon") {
        let class_path = class.join(&entry);
        let Some(real) = resolve_inside(&class_path, canon_root) else {
            continue;
        };
        // Current kernels keep the files in hwmonX itself; older ones under
        // hwmonX/device (a link to the parent device).
        let (base, base_real) = if temp_indices(&real).is_empty() {
            let dev = class_path.join("device");
            if fs::symlink_metadata(&dev).is_err() {
                tracing::debug!(path = %class_path.display(), "hwmon without temperature inputs");
                continue;
            }
            match resolve_inside(&dev, canon_root) {
                Some(dev_real) => (dev, dev_real),
                None => continue,
            }
        } else {
            (class_path.clone(), real.clone())
        };
        let chip = read_trimmed(&base_real.join("name"))
            .or_else(|_| read_trimmed(&real.join("name")))
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "hwmon without a name");
                entry.clone()
            });
        let kind = classify(&chip);
        let indices = temp_indices(&base_real);
        if indices.is_empty() {
            tracing::debug!(path = %base.display(), chip = %chip, "hwmon without temperature inputs");
        }
        for n in indices {
            let file = format!("temp{n}_input");
            let path = base.join(&file);
            let celsius = match read_millis(&base_real.join(&file)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "skipping unreadable sensor");
                    continue;
                }
            };
            let Some(celsius) = plausible(celsius) else {
                tracing::debug!(path = %path.display(), celsius, "skipping implausible sensor value (no reading)");
                continue;
            };
            let label = read_trimmed(&base_real.join(format!("temp{n}_label")))
                .ok()
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| format!("{chip} temp{n}"));
            out.push(Reading {
                path,
                label,
                kind,
                celsius,
                source: "hwmon",
                chip: chip.clone(),
                crit: optional_millis(&base_real.join(format!("temp{n}_crit"))),
                max: optional_millis(&base_real.join(format!("temp{n}_max"))),
            });
        }
    }
}

fn read_thermal_zones(root: &Path, canon_root: &Path, out: &mut Vec<Reading>) {
    let class = root.join("class/thermal");
    for entry in list_dir(&class, "thermal_zone") {
        let class_path = class.join(&entry);
        let Some(real) = resolve_inside(&class_path, canon_root) else {
            continue;
        };
        let zone_type = read_trimmed(&real.join("type"))
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| entry.clone());
        let path = class_path.join("temp");
        // Some zones answer EIO or ENODATA; that is "no reading".
        let celsius = match read_millis(&real.join("temp")) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping unreadable sensor");
                continue;
            }
        };
        let Some(celsius) = plausible(celsius) else {
            tracing::debug!(path = %path.display(), celsius, "skipping implausible sensor value (no reading)");
            continue;
        };
        let (crit, max) = trip_points(&real);
        out.push(Reading {
            path,
            label: zone_type.clone(),
            kind: classify(&zone_type),
            celsius,
            source: "thermal_zone",
            chip: zone_type,
            crit,
            max,
        });
    }
}

/// (critical, hot) trip temperatures of a zone, when it has them.
fn trip_points(zone: &Path) -> (Option<f64>, Option<f64>) {
    let (mut crit, mut hot) = (None, None);
    for entry in list_dir(zone, "trip_point_") {
        let Some(n) = entry
            .strip_prefix("trip_point_")
            .and_then(|s| s.strip_suffix("_type"))
        else {
            continue;
        };
        let Ok(kind) = read_trimmed(&zone.join(&entry)) else {
            continue;
        };
        let slot = match kind.as_str() {
            "critical" => &mut crit,
            "hot" => &mut hot,
            _ => continue,
        };
        if slot.is_none() {
            *slot = optional_millis(&zone.join(format!("trip_point_{n}_temp")));
        }
    }
    (crit, hot)
}

/// Canonical target of `path` when it exists and stays inside the root;
/// `None` (with a debug line) for broken links and links that escape.
fn resolve_inside(path: &Path, canon_root: &Path) -> Option<PathBuf> {
    match fs::canonicalize(path) {
        Ok(real) if real.starts_with(canon_root) => Some(real),
        Ok(real) => {
            tracing::debug!(
                path = %path.display(),
                target = %real.display(),
                root = %canon_root.display(),
                "skipping sensor link that escapes the sysfs root"
            );
            None
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "skipping broken sensor link");
            None
        }
    }
}

/// Names of the entries of `dir` starting with `prefix`, sorted; empty
/// (with a debug line) when the directory cannot be listed.
fn list_dir(dir: &Path, prefix: &str) -> Vec<String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(path = %dir.display(), error = %e, "skipping unreadable sensor directory");
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The N of every `tempN_input` in `dir`, ascending.
fn temp_indices(dir: &Path) -> Vec<u32> {
    let mut n: Vec<u32> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|name| parse_temp_input_name(&name))
                .collect()
        })
        .unwrap_or_default();
    n.sort_unstable();
    n.dedup();
    n
}

fn parse_temp_input_name(name: &str) -> Option<u32> {
    name.strip_prefix("temp")?
        .strip_suffix("_input")?
        .parse()
        .ok()
}

fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(path, e))
}

/// A millidegree file, in °C.
fn read_millis(path: &Path) -> Result<f64> {
    let text = read_trimmed(path)?;
    parse_millis(&text).ok_or_else(|| Error::Parse {
        path: path.to_path_buf(),
        text,
        reason: "not an integer number of millidegrees".into(),
    })
}

/// Kernel millidegrees (an integer; a decimal is tolerated) to °C.
fn parse_millis(text: &str) -> Option<f64> {
    let t = text.trim();
    t.parse::<i64>()
        .map(|m| m as f64)
        .or_else(|_| t.parse::<f64>())
        .ok()
        .filter(|m| m.is_finite())
        .map(|m| m / 1000.0)
}

/// An optional limit file (crit, max, trip point): `None` when absent,
/// unreadable or implausible (drivers report 0 or 65535.x when unset).
fn optional_millis(path: &Path) -> Option<f64> {
    match read_millis(path) {
        Ok(c) => plausible(c),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring unreadable sensor limit");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millidegrees_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_millis("45000\n"), Some(45.0));
        assert_eq!(parse_millis("38850"), Some(38.85));
        assert_eq!(parse_millis("-273150"), Some(-273.15));
        assert_eq!(parse_millis("27800.0"), Some(27.8));
        assert_eq!(parse_millis(""), None);
        assert_eq!(parse_millis("N/A"), None);
    }

    #[test]
    fn only_temp_inputs_are_indices() {
        assert_eq!(parse_temp_input_name("temp1_input"), Some(1));
        assert_eq!(parse_temp_input_name("temp12_input"), Some(12));
        assert_eq!(parse_temp_input_name("temp1_label"), None);
        assert_eq!(parse_temp_input_name("in0_input"), None);
        assert_eq!(parse_temp_input_name("temp_input"), None);
    }
}
