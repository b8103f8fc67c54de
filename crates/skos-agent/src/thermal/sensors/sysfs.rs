//! hwmon and thermal zones under the sysfs root.
//!
//! Every `tempN_input` (millidegrees) and every zone's `temp` becomes a
//! reading when it can be read and its chip can give its value; every
//! other file is reported as a [`Problem`](super::Problem) on its own, so
//! one failing file (EIO, ENODATA, EINVAL) never hides its neighbours.

use super::chips::{self, classify, settle_counts};
use super::{ProblemKind, Reading, Role, Scan};
use skos_core::escape::ShowPath;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Reads one file whole (the [`FileReader`](super::FileReader) seam).
type ReadFile<'a> = &'a (dyn Fn(&Path) -> io::Result<String> + Send + Sync);

/// The entries of `class/hwmon` under `root` (`hwmon0`, `hwmon1`, ...),
/// sorted: each is one source, read on its own by [`read_hwmon`]. Empty
/// (with a debug line) when the directory cannot be listed.
pub(super) fn hwmon_entries(root: &Path) -> Vec<String> {
    list_dir(&root.join("class/hwmon"), "hwmon")
}

/// Every valid reading of one hwmon device, `class/hwmon/<entry>` under
/// `root`, and the problems with every file that gave none. `named` is
/// told the chip's name as soon as it is known (before its inputs are
/// read, which is where a slow device waits).
pub(super) fn read_hwmon(
    root: &Path,
    entry: &str,
    read_file: ReadFile<'_>,
    named: &dyn Fn(&str),
) -> Scan {
    let Some(mut walk) = Walk::new(root, read_file) else {
        return Scan::default();
    };
    walk.hwmon_device(entry, named);
    walk.scan
}

/// Every valid thermal-zone reading under `root`, and the problems with
/// every file that gave none.
pub(super) fn read_thermal_zones(root: &Path, read_file: ReadFile<'_>) -> Scan {
    let Some(mut walk) = Walk::new(root, read_file) else {
        return Scan::default();
    };
    walk.thermal_zones();
    walk.scan
}

/// One walk of the tree.
struct Walk<'a> {
    root: &'a Path,
    canon_root: PathBuf,
    read_file: ReadFile<'a>,
    scan: Scan,
}

/// What an optional file gave.
enum Optional {
    Absent,
    Text(String),
    /// Unreadable for another reason than absence; already reported.
    Failed,
}

impl<'a> Walk<'a> {
    /// A walk under `root`; `None` (with a debug line) when the root
    /// cannot be resolved.
    fn new(root: &'a Path, read_file: ReadFile<'a>) -> Option<Self> {
        match fs::canonicalize(root) {
            Ok(canon_root) => Some(Walk {
                root,
                canon_root,
                read_file,
                scan: Scan::default(),
            }),
            Err(e) => {
                tracing::debug!(path = %root.escaped(), error = %e, "sysfs root not readable; no sysfs sensors");
                None
            }
        }
    }
}

impl Walk<'_> {
    /// The inputs of `class/hwmon/<entry>`.
    fn hwmon_device(&mut self, entry: &str, named: &dyn Fn(&str)) {
        let class_path = self.root.join("class/hwmon").join(entry);
        let Some(real) = self.resolve_inside(&class_path) else {
            return;
        };
        // Current kernels keep the files in hwmonX itself; older ones
        // under hwmonX/device (a link to the parent device).
        let (base, base_real) = if temp_indices(&real).is_empty() {
            let dev = class_path.join("device");
            if fs::symlink_metadata(&dev).is_err() {
                tracing::debug!(path = %class_path.escaped(), "hwmon without temperature inputs");
                return;
            }
            match self.resolve_inside(&dev) {
                Some(dev_real) => (dev, dev_real),
                None => return,
            }
        } else {
            (class_path.clone(), real.clone())
        };
        let chip = match self.optional(&base_real.join("name"), &base.join("name")) {
            Optional::Text(name) if !name.is_empty() => name,
            _ => match self.optional(&real.join("name"), &class_path.join("name")) {
                Optional::Text(name) if !name.is_empty() => name,
                _ => {
                    tracing::debug!(path = %class_path.escaped(), "hwmon without a name");
                    entry.to_string()
                }
            },
        };
        named(&chip);
        self.chip(&chip, &base, &base_real);
    }

    /// The inputs of one hwmon chip whose files are in `base_real`
    /// (reported under `base`).
    fn chip(&mut self, chip: &str, base: &Path, base_real: &Path) {
        let kind = classify(chip);
        let indices = temp_indices(base_real);
        if indices.is_empty() {
            tracing::debug!(path = %base.escaped(), chip = %chip, "hwmon without temperature inputs");
        }
        let mut declared: Vec<Role> = Vec::new();
        let mut readings: Vec<Reading> = Vec::new();
        for n in indices {
            let file = |suffix: &str| format!("temp{n}_{suffix}");
            let label =
                match self.optional(&base_real.join(file("label")), &base.join(file("label"))) {
                    Optional::Text(l) if !l.is_empty() => Some(l),
                    _ => None,
                };
            let role = chips::role(chip, label.as_deref());
            declared.push(role);
            let path = base.join(file("input"));
            let Some(celsius) = self.temperature(chip, &base_real.join(file("input")), &path)
            else {
                continue;
            };
            readings.push(Reading {
                label: label.unwrap_or_else(|| format!("{chip} temp{n}")),
                kind,
                role,
                counts: true,
                celsius,
                source: "hwmon",
                chip: chip.to_string(),
                crit: self.limit(&base_real.join(file("crit")), &base.join(file("crit"))),
                max: self.limit(&base_real.join(file("max")), &base.join(file("max"))),
                path,
            });
        }
        settle_counts(&mut readings, &declared);
        self.scan.readings.extend(readings);
    }

    fn thermal_zones(&mut self) {
        let class = self.root.join("class/thermal");
        for entry in list_dir(&class, "thermal_zone") {
            let class_path = class.join(&entry);
            let Some(real) = self.resolve_inside(&class_path) else {
                continue;
            };
            let zone_type = match self.optional(&real.join("type"), &class_path.join("type")) {
                Optional::Text(t) if !t.is_empty() => t,
                _ => entry.clone(),
            };
            let path = class_path.join("temp");
            // Some zones answer EIO, ENODATA or EINVAL; that is "no reading".
            let Some(celsius) = self.temperature(&zone_type, &real.join("temp"), &path) else {
                continue;
            };
            let (crit, max) = self.trip_points(&real, &class_path);
            let mut reading = [Reading {
                path,
                label: zone_type.clone(),
                kind: classify(&zone_type),
                role: chips::role(&zone_type, Some(&zone_type)),
                counts: true,
                celsius,
                source: "thermal_zone",
                chip: zone_type,
                crit,
                max,
            }];
            let declared = [reading[0].role];
            settle_counts(&mut reading, &declared);
            self.scan.readings.extend(reading);
        }
    }

    /// (critical, hot) trip temperatures of a zone, when it has them.
    fn trip_points(&mut self, zone: &Path, shown: &Path) -> (Option<f64>, Option<f64>) {
        let (mut crit, mut hot) = (None, None);
        for entry in list_dir(zone, "trip_point_") {
            let Some(n) = entry
                .strip_prefix("trip_point_")
                .and_then(|s| s.strip_suffix("_type"))
            else {
                continue;
            };
            let Optional::Text(kind) = self.optional(&zone.join(&entry), &shown.join(&entry))
            else {
                continue;
            };
            let slot = match kind.as_str() {
                "critical" => &mut crit,
                "hot" => &mut hot,
                _ => continue,
            };
            if slot.is_none() {
                let file = format!("trip_point_{n}_temp");
                *slot = self.limit(&zone.join(&file), &shown.join(&file));
            }
        }
        (crit, hot)
    }

    /// The temperature in `real` (reported as `shown`) when `chip` can give
    /// it; `None` with a problem otherwise.
    fn temperature(&mut self, chip: &str, real: &Path, shown: &Path) -> Option<f64> {
        let at = shown.escaped().to_string();
        let text = match (self.read_file)(real) {
            Ok(t) => t,
            Err(e) => {
                self.scan.problem(
                    at,
                    ProblemKind::Unreadable {
                        error: e.to_string(),
                    },
                );
                return None;
            }
        };
        let Some(celsius) = parse_millis(&text) else {
            self.scan.problem(
                at,
                ProblemKind::NotANumber {
                    text: text.trim().to_string(),
                },
            );
            return None;
        };
        match chips::validate(chip, celsius) {
            Ok(c) => Some(c),
            Err(reason) => {
                self.scan
                    .problem(at, ProblemKind::Invalid { celsius, reason });
                None
            }
        }
    }

    /// An optional limit file (crit, max, trip point): `None` when absent,
    /// unreadable (reported) or unset (drivers write 0, -273150 or 65535
    /// when a limit is unset).
    fn limit(&mut self, real: &Path, shown: &Path) -> Option<f64> {
        let Optional::Text(text) = self.optional(real, shown) else {
            return None;
        };
        match parse_millis(&text) {
            Some(c) => chips::limit(c),
            None => {
                self.scan.problem(
                    shown.escaped().to_string(),
                    ProblemKind::NotANumber { text },
                );
                None
            }
        }
    }

    /// The trimmed text of an optional file: absence is silent, any other
    /// failure is a problem.
    fn optional(&mut self, real: &Path, shown: &Path) -> Optional {
        match (self.read_file)(real) {
            Ok(t) => Optional::Text(t.trim().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Optional::Absent,
            Err(e) => {
                self.scan.problem(
                    shown.escaped().to_string(),
                    ProblemKind::Unreadable {
                        error: e.to_string(),
                    },
                );
                Optional::Failed
            }
        }
    }

    /// Canonical target of `path` when it exists and stays inside the root;
    /// `None` (with a problem) for broken links and links that escape.
    fn resolve_inside(&mut self, path: &Path) -> Option<PathBuf> {
        match fs::canonicalize(path) {
            Ok(real) if real.starts_with(&self.canon_root) => Some(real),
            Ok(real) => {
                tracing::debug!(
                    path = %path.escaped(),
                    target = %real.escaped(),
                    root = %self.canon_root.escaped(),
                    "skipping sensor link that escapes the sysfs root"
                );
                self.scan.problem(
                    path.escaped().to_string(),
                    ProblemKind::OutsideRoot { target: real },
                );
                None
            }
            Err(e) => {
                self.scan.problem(
                    path.escaped().to_string(),
                    ProblemKind::Unreadable {
                        error: e.to_string(),
                    },
                );
                None
            }
        }
    }
}

/// Names of the entries of `dir` starting with `prefix`, sorted; empty
/// (with a debug line) when the directory cannot be listed.
fn list_dir(dir: &Path, prefix: &str) -> Vec<String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(path = %dir.escaped(), error = %e, "skipping unreadable sensor directory");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millidegrees_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_millis("45000\n"), Some(45.0));
        assert_eq!(parse_millis("38850"), Some(38.85));
        assert_eq!(parse_millis("-273150"), Some(-273.15));
        assert_eq!(parse_millis("-18312"), Some(-18.312));
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
