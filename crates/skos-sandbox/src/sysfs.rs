//! Fake sysfs trees: the files and links a sensor reader and a cpufreq
//! writer find on a real kernel, under any root.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::{io, Result};

/// One temperature input of a hwmon device: its label, °C, and the
/// optional `crit` and `max` limits.
#[derive(Debug, Clone, Copy)]
pub struct Temp<'a> {
    pub label: Option<&'a str>,
    pub c: f64,
    pub crit: Option<f64>,
    pub max: Option<f64>,
}

impl<'a> Temp<'a> {
    pub fn new(label: Option<&'a str>, c: f64) -> Self {
        Self {
            label,
            c,
            crit: None,
            max: None,
        }
    }

    pub fn crit(mut self, c: f64) -> Self {
        self.crit = Some(c);
        self
    }

    pub fn max(mut self, c: f64) -> Self {
        self.max = Some(c);
        self
    }
}

/// `c` as the kernel writes it: integer millidegrees and a newline.
pub fn millis(c: f64) -> String {
    format!("{}\n", (c * 1000.0).round() as i64)
}

/// Replace `path` whole (a temp file beside it, then a rename): a reader
/// sees the old or the new value, never an empty or half-written file, as
/// with a real sysfs attribute.
pub fn replace(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".skos-write-{name}"));
    fs::write(&tmp, text).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Create `dir` and its parents.
pub fn mkdirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io(dir))
}

/// The empty tree every kernel has: `class/hwmon`, `class/thermal` and
/// `devices/virtual/thermal` under `root`.
pub fn skeleton(root: &Path) -> Result<()> {
    for d in ["class/hwmon", "class/thermal", "devices/virtual/thermal"] {
        mkdirs(&root.join(d))?;
    }
    Ok(())
}

/// `temp1_*`, `temp2_*`, ... of `temps` in the hwmon dir `dir`.
pub fn write_temps(dir: &Path, temps: &[Temp<'_>]) -> Result<()> {
    for (i, t) in temps.iter().enumerate() {
        let i = i + 1;
        replace(&dir.join(format!("temp{i}_input")), &millis(t.c))?;
        if let Some(label) = t.label {
            replace(&dir.join(format!("temp{i}_label")), &format!("{label}\n"))?;
        }
        if let Some(crit) = t.crit {
            replace(&dir.join(format!("temp{i}_crit")), &millis(crit))?;
        }
        if let Some(max) = t.max {
            replace(&dir.join(format!("temp{i}_max")), &millis(max))?;
        }
    }
    Ok(())
}

/// `<root>/class/<class>/<entry>`, a relative link to `<root>/<target_rel>`
/// as the kernel makes it; returns the link's path.
pub fn link_class(root: &Path, class: &str, entry: &str, target_rel: &str) -> Result<PathBuf> {
    let link = root.join("class").join(class).join(entry);
    if let Some(parent) = link.parent() {
        mkdirs(parent)?;
    }
    symlink(format!("../../{target_rel}"), &link).map_err(io(&link))?;
    Ok(link)
}

/// A hwmon device at `<root>/<rel>` (`devices/<device>/hwmon/hwmonN`)
/// holding `name` and `temps`, linked from `class/hwmon/hwmon<n>`; returns
/// the device's dir and the class link.
pub fn hwmon(
    root: &Path,
    rel: &str,
    n: u32,
    name: &str,
    temps: &[Temp<'_>],
) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join(rel);
    mkdirs(&dir)?;
    replace(&dir.join("name"), &format!("{name}\n"))?;
    write_temps(&dir, temps)?;
    let link = link_class(root, "hwmon", &format!("hwmon{n}"), rel)?;
    Ok((dir, link))
}

/// An Intel CPU package `k`: hwmon `coretemp` number `n`, temp1 "Package id
/// k" and one input per core ("Core 0", ...), crit 100 °C, max 80 °C, at
/// `devices/platform/coretemp.<k>/hwmon/hwmon<n>`; returns its dir.
pub fn coretemp(root: &Path, n: u32, k: u32, package_c: f64, cores: &[f64]) -> Result<PathBuf> {
    let package = format!("Package id {k}");
    let labels: Vec<String> = (0..cores.len()).map(|i| format!("Core {i}")).collect();
    let mut temps = vec![Temp::new(Some(&package), package_c).crit(100.0).max(80.0)];
    for (label, c) in labels.iter().zip(cores) {
        temps.push(Temp::new(Some(label), *c).crit(100.0).max(80.0));
    }
    let rel = format!("devices/platform/coretemp.{k}/hwmon/hwmon{n}");
    let (dir, _) = hwmon(root, &rel, n, "coretemp", &temps)?;
    for i in 1..=temps.len() {
        replace(&dir.join(format!("temp{i}_crit_alarm")), "0\n")?;
    }
    Ok(dir)
}

/// Heat (or cool) the hwmon device in `dir` as a whole, as real CPUs do:
/// `temp1_input` (a package) becomes `package_c`, every other
/// `tempN_input` (the cores, in order) a little below it (`- 2`, `- 3`,
/// `- 4`, `- 5`, then `- 2` again). Each file is replaced whole, the
/// package first when heating and last when cooling: a reader in between
/// sees the hottest reading go straight from the old package temperature
/// to the new one.
pub fn heat(dir: &Path, package_c: f64) -> Result<()> {
    let mut inputs: Vec<u32> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(n) = name
            .strip_prefix("temp")
            .and_then(|n| n.strip_suffix("_input"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.file_type().map_err(io(dir))?.is_file() {
            inputs.push(n);
        }
    }
    inputs.sort_unstable();
    let old = fs::read_to_string(dir.join("temp1_input"))
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok());
    let new = (package_c * 1000.0).round() as i64;
    if old.is_some_and(|old| new < old) {
        inputs.reverse(); // cooling: the cores first
    }
    for n in inputs {
        let below = if n <= 1 { 0 } else { 2 + (n - 2) % 4 };
        replace(
            &dir.join(format!("temp{n}_input")),
            &millis(package_c - f64::from(below)),
        )?;
    }
    Ok(())
}

/// `<root>/devices/system/cpu/cpufreq/policy<policy>`.
pub fn policy_dir(root: &Path, policy: usize) -> PathBuf {
    root.join(format!("devices/system/cpu/cpufreq/policy{policy}"))
}

/// `policies` cpufreq policies (`policy0`..) ranging from `min_khz` to
/// `max_khz`, with `scaling_max_freq` at `max_khz` and `scaling_min_freq`
/// at `min_khz`, and `devices/system/cpu/online` listing one CPU per
/// policy (`0-3` for four). Plain files: they keep any value written.
pub fn cpufreq(root: &Path, policies: usize, min_khz: u64, max_khz: u64) -> Result<()> {
    for n in 0..policies {
        let dir = policy_dir(root, n);
        mkdirs(&dir)?;
        for (file, khz) in [
            ("cpuinfo_min_freq", min_khz),
            ("cpuinfo_max_freq", max_khz),
            ("scaling_max_freq", max_khz),
            ("scaling_min_freq", min_khz),
        ] {
            std::fs::write(dir.join(file), format!("{khz}\n")).map_err(io(&dir))?;
        }
    }
    let online = match policies {
        0 | 1 => "0\n".to_string(),
        n => format!("0-{}\n", n - 1),
    };
    let path = root.join("devices/system/cpu/online");
    if let Some(parent) = path.parent() {
        mkdirs(parent)?;
    }
    std::fs::write(&path, online).map_err(io(&path))
}

/// The `scaling_max_freq` of every policy under `root`, in order (kHz);
/// a file that cannot be read or parsed is `None`.
pub fn scaling_max(root: &Path, policies: usize) -> Vec<Option<u64>> {
    (0..policies)
        .map(|p| {
            fs::read_to_string(policy_dir(root, p).join("scaling_max_freq"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coretemp_heats_as_a_whole_and_cpufreq_has_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        skeleton(root).unwrap();
        let cpu = coretemp(root, 0, 0, 50.0, &[48.0, 49.0]).unwrap();
        let link = root.join("class/hwmon/hwmon0");
        assert_eq!(fs::read_to_string(link.join("name")).unwrap(), "coretemp\n");
        heat(&cpu, 90.0).unwrap();
        let t: Vec<String> = (1..=3)
            .map(|n| fs::read_to_string(cpu.join(format!("temp{n}_input"))).unwrap())
            .collect();
        assert_eq!(t, ["90000\n", "88000\n", "87000\n"]);
        cpufreq(root, 2, 800_000, 3_600_000).unwrap();
        assert_eq!(scaling_max(root, 2), [Some(3_600_000), Some(3_600_000)]);
        assert_eq!(
            fs::read_to_string(root.join("devices/system/cpu/online")).unwrap(),
            "0-1\n"
        );
    }
}
