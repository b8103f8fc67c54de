//! Fake sysfs trees shaped like real machines.
//!
//! The layout follows the kernel: every device lives under `devices/...`
//! and `class/hwmon/hwmonN` / `class/thermal/thermal_zoneN` are *relative*
//! symlinks into it. Temperatures are millidegree integers with a trailing
//! newline. `hwmonN` and `thermal_zoneN` are numbered in the order the
//! devices are added, starting at 0.
//!
//! ```no_run
//! use skos_testsupport::sysfs::FakeSysfs;
//! let fake = FakeSysfs::new();
//! let cpu = fake.coretemp(52.0, &[48.0, 50.0]);
//! fake.nvme(38.85);
//! fake.acpitz_zone(27.8);
//! cpu.heat(91.0); // "Package id 0" is now 91 °C, "Core 0" 89 °C, "Core 1" 88 °C
//! cpu.set_temp(2, 0.0); // only "Core 0" changes (a sensor that drops out)
//! ```
//!
//! A recorded tree (a field case) is copied with [`FakeSysfs::from_fixture`]
//! and can then be changed like any other.
//!
//! Real machines heat as wholes: a hot package has hot cores, a few degrees
//! below it. A heat scenario should use [`HwmonHandle::heat`], not raise the
//! package alone with [`HwmonHandle::set_temp`].

use std::cell::Cell;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A fake `/sys` in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct FakeSysfs {
    dir: tempfile::TempDir,
    next_hwmon: Cell<u32>,
    next_zone: Cell<u32>,
    coretemps: Cell<u32>,
    k10temps: Cell<u32>,
    amdgpus: Cell<u32>,
    nvmes: Cell<u32>,
}

/// One hwmon device of a [`FakeSysfs`]; changes its temperatures in place.
#[derive(Debug, Clone)]
pub struct HwmonHandle {
    dir: PathBuf,
    class_path: PathBuf,
    read_base: PathBuf,
}

impl HwmonHandle {
    /// Writes `tempN_input` (millidegrees, trailing newline) for `index` = N.
    pub fn set_temp(&self, index: u32, c: f64) {
        write(&self.dir.join(format!("temp{index}_input")), &millis(c));
    }

    /// Heats (or cools) the whole device, as real CPUs do: `temp1_input`
    /// (the package of a [`FakeSysfs::coretemp`]) becomes `package_c`, and
    /// every other `tempN_input` (the cores, in order) a little below it:
    /// `package_c - 2`, `- 3`, `- 4`, `- 5`, then `- 2` again.
    ///
    /// Each file is replaced whole (a reader sees the old or the new value,
    /// never a half-written file), the package first when heating and last
    /// when cooling: a reader in between sees the hottest reading go
    /// straight from the old package temperature to the new one.
    pub fn heat(&self, package_c: f64) {
        skos_sandbox::sysfs::heat(&self.dir, package_c)
            .unwrap_or_else(|e| panic!("heat {}: {e}", self.dir.display()));
    }

    /// The directory that holds the `name` and `tempN_*` files (inside
    /// `devices/`, the target of the class link).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<root>/class/hwmon/hwmonN`, the path sensors are discovered through.
    pub fn class_path(&self) -> &Path {
        &self.class_path
    }

    /// `<root>/class/hwmon/hwmonN/tempN_input` as a sensor reader reports it
    /// (for the legacy layout, `<root>/class/hwmon/hwmonN/device/tempN_input`).
    pub fn input_path(&self, index: u32) -> PathBuf {
        self.read_base.join(format!("temp{index}_input"))
    }
}

/// One temperature input of a generic hwmon device (the sandbox's, which
/// `skos demo` builds its machine with).
pub use skos_sandbox::sysfs::Temp;

impl Default for FakeSysfs {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSysfs {
    /// An empty tree with `class/hwmon` and `class/thermal` present (as on
    /// every real kernel) but no device in them.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skos-sysfs-")
            .tempdir()
            .expect("create temp dir for fake sysfs");
        for d in ["class/hwmon", "class/thermal", "devices/virtual/thermal"] {
            fs::create_dir_all(dir.path().join(d)).expect("create fake sysfs dirs");
        }
        Self {
            dir,
            next_hwmon: Cell::new(0),
            next_zone: Cell::new(0),
            coretemps: Cell::new(0),
            k10temps: Cell::new(0),
            amdgpus: Cell::new(0),
            nvmes: Cell::new(0),
        }
    }

    /// The root to hand to code under test in place of `/sys`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn take(counter: &Cell<u32>) -> u32 {
        let n = counter.get();
        counter.set(n + 1);
        n
    }

    /// A generic hwmon device: `devices/<device>/hwmon/hwmonN` holding
    /// `name` and the given temperatures (`temp1_*`, `temp2_*`, ...),
    /// linked from `class/hwmon/hwmonN`.
    pub fn hwmon(&self, device: &str, name: &str, temps: &[Temp<'_>]) -> HwmonHandle {
        let n = Self::take(&self.next_hwmon);
        let rel = format!("devices/{device}/hwmon/hwmon{n}");
        self.hwmon_at(&rel, n, name, temps)
    }

    fn hwmon_at(&self, rel: &str, n: u32, name: &str, temps: &[Temp<'_>]) -> HwmonHandle {
        let dir = self.root().join(rel);
        fs::create_dir_all(&dir).expect("create hwmon dir");
        write(&dir.join("name"), &format!("{name}\n"));
        write_temps(&dir, temps);
        let class_path = self.link_class("hwmon", &format!("hwmon{n}"), rel);
        HwmonHandle {
            dir,
            read_base: class_path.clone(),
            class_path,
        }
    }

    /// Intel CPU: hwmon `coretemp` with temp1 "Package id K" and one input
    /// per core ("Core 0", "Core 1", ... as temp2, temp3, ...), crit 100 °C,
    /// max 80 °C, at `devices/platform/coretemp.K/hwmon/hwmonN` (K counts
    /// the packages added so far).
    pub fn coretemp(&self, package_c: f64, cores: &[f64]) -> HwmonHandle {
        let k = Self::take(&self.coretemps);
        let package = format!("Package id {k}");
        let core_labels: Vec<String> = (0..cores.len()).map(|i| format!("Core {i}")).collect();
        let mut temps = vec![Temp::new(Some(&package), package_c).crit(100.0).max(80.0)];
        for (label, c) in core_labels.iter().zip(cores) {
            temps.push(Temp::new(Some(label), *c).crit(100.0).max(80.0));
        }
        let h = self.hwmon(&format!("platform/coretemp.{k}"), "coretemp", &temps);
        for i in 1..=temps.len() {
            write(&h.dir.join(format!("temp{i}_crit_alarm")), "0\n");
        }
        h
    }

    /// AMD CPU: hwmon `k10temp`, temp1_label "Tctl", under
    /// `devices/pci0000:00/0000:00:18.3/hwmon/hwmonN` (the next package at
    /// `0000:00:19.3`).
    pub fn k10temp(&self, tctl_c: f64) -> HwmonHandle {
        let k = Self::take(&self.k10temps);
        let dev = format!("pci0000:00/0000:00:{:02x}.3", 0x18 + k);
        self.hwmon(&dev, "k10temp", &[Temp::new(Some("Tctl"), tctl_c)])
    }

    /// AMD GPU: hwmon `amdgpu` with temp1 "edge" (the given value), temp2
    /// "junction" (edge + 10) and temp3 "mem" (edge + 4), with the crit
    /// values the driver reports (100, 110, 105 °C).
    pub fn amdgpu(&self, edge_c: f64) -> HwmonHandle {
        let k = Self::take(&self.amdgpus);
        let dev = format!("pci0000:00/0000:00:03.1/0000:{:02x}:00.0", 3 + k);
        let h = self.hwmon(
            &dev,
            "amdgpu",
            &[
                Temp::new(Some("edge"), edge_c).crit(100.0),
                Temp::new(Some("junction"), edge_c + 10.0).crit(110.0),
                Temp::new(Some("mem"), edge_c + 4.0).crit(105.0),
            ],
        );
        write(&h.dir.join("temp1_crit_hyst"), "-273150\n");
        h
    }

    /// NVMe drive: hwmon `nvme`, temp1 "Composite", max 81.85 °C, crit
    /// 84.85 °C, min -273.15 °C, at
    /// `devices/pci0000:00/0000:00:01.2/0000:0K:00.0/nvme/nvmeK/hwmonN`.
    pub fn nvme(&self, c: f64) -> HwmonHandle {
        let k = Self::take(&self.nvmes);
        let n = Self::take(&self.next_hwmon);
        let rel = format!(
            "devices/pci0000:00/0000:00:01.2/0000:{:02x}:00.0/nvme/nvme{k}/hwmon{n}",
            1 + k
        );
        let h = self.hwmon_at(
            &rel,
            n,
            "nvme",
            &[Temp::new(Some("Composite"), c).crit(84.85).max(81.85)],
        );
        write(&h.dir.join("temp1_min"), "-273150\n");
        h
    }

    /// A copy of a recorded sysfs tree (`fixture`, e.g. a test's
    /// `fixtures/field/<case>/sys`): directories, files and symlinks as
    /// they are (relative links stay relative, so they resolve inside the
    /// copy). `hwmonN` and `thermal_zoneN` added afterwards are numbered
    /// after the copy's own, so they do not collide with them.
    pub fn from_fixture(fixture: &Path) -> Self {
        let fake = Self::new();
        copy_tree(fixture, fake.root());
        let count = |class: &str, prefix: &str| {
            fs::read_dir(fake.root().join("class").join(class))
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter_map(|n| n.strip_prefix(prefix)?.parse::<u32>().ok())
                        .map(|n| n + 1)
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        };
        fake.next_hwmon.set(count("hwmon", "hwmon"));
        fake.next_zone.set(count("thermal", "thermal_zone"));
        fake
    }

    /// Writes `text` as it is (no conversion) to `rel`, a path relative to
    /// the root: an odd value, a label, a limit.
    pub fn write_file(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        write(&path, text);
    }

    /// A 1-Wire DS18B20 probe as the `w1_therm` driver shows it: hwmon
    /// `w1_slave_temp` with one unlabelled `temp1_input`, at
    /// `devices/w1_bus_master1/28-<id>/hwmon/hwmonN` (`id` distinguishes
    /// probes, e.g. "0316a2795bff").
    pub fn w1_probe(&self, id: &str, c: f64) -> HwmonHandle {
        self.hwmon(
            &format!("w1_bus_master1/28-{id}"),
            "w1_slave_temp",
            &[Temp::new(None, c)],
        )
    }

    /// An old-kernel hwmon: `class/hwmon/hwmonN` holds only a `device` link
    /// to `devices/platform/<name>.0`, which holds `name` and the
    /// temperatures (no labels). The handle's `dir()` is the device dir.
    pub fn legacy_hwmon(&self, name: &str, temps: &[f64]) -> HwmonHandle {
        let n = Self::take(&self.next_hwmon);
        let dev_rel = format!("devices/platform/{name}.{n}");
        let dev = self.root().join(&dev_rel);
        let hw_rel = format!("{dev_rel}/hwmon/hwmon{n}");
        let hw = self.root().join(&hw_rel);
        fs::create_dir_all(&hw).expect("create legacy hwmon dir");
        write(&dev.join("name"), &format!("{name}\n"));
        let temps: Vec<Temp<'_>> = temps.iter().map(|c| Temp::new(None, *c)).collect();
        write_temps(&dev, &temps);
        symlink("../..", hw.join("device")).expect("link legacy hwmon device");
        let class_path = self.link_class("hwmon", &format!("hwmon{n}"), &hw_rel);
        HwmonHandle {
            dir: dev,
            read_base: class_path.join("device"),
            class_path,
        }
    }

    /// A thermal zone: `devices/virtual/thermal/thermal_zoneN` with `type`,
    /// `temp`, `mode`, `policy` and, when given, a "critical" trip point;
    /// linked from `class/thermal/thermal_zoneN`. Returns the class path.
    pub fn thermal_zone(&self, kind: &str, c: f64, crit: Option<f64>) -> PathBuf {
        let n = Self::take(&self.next_zone);
        let rel = format!("devices/virtual/thermal/thermal_zone{n}");
        let dir = self.root().join(&rel);
        fs::create_dir_all(&dir).expect("create thermal zone dir");
        write(&dir.join("type"), &format!("{kind}\n"));
        write(&dir.join("temp"), &millis(c));
        write(&dir.join("mode"), "enabled\n");
        write(&dir.join("policy"), "step_wise\n");
        match crit {
            Some(crit) => {
                write(&dir.join("trip_point_0_type"), "critical\n");
                write(&dir.join("trip_point_0_temp"), &millis(crit));
            }
            None => {
                write(&dir.join("trip_point_0_type"), "passive\n");
                write(&dir.join("trip_point_0_temp"), "0\n");
            }
        }
        self.link_class("thermal", &format!("thermal_zone{n}"), &rel)
    }

    /// ACPI thermal zone, type "acpitz", critical trip at 119 °C.
    pub fn acpitz_zone(&self, c: f64) -> PathBuf {
        self.thermal_zone("acpitz", c, Some(119.0))
    }

    /// Intel package thermal zone, type "x86_pkg_temp" (no critical trip).
    pub fn x86_pkg_zone(&self, c: f64) -> PathBuf {
        self.thermal_zone("x86_pkg_temp", c, None)
    }

    /// Writes a zone's `temp` (the path returned by [`Self::thermal_zone`]).
    pub fn set_zone_temp(&self, zone: &Path, c: f64) {
        write(&zone.join("temp"), &millis(c));
    }

    /// Makes a zone's `temp` unreadable (a directory: reading it fails with
    /// EISDIR even as root), like the zones that return EIO/ENODATA.
    pub fn break_zone_temp(&self, zone: &Path) {
        let temp = zone.join("temp");
        fs::remove_file(&temp).expect("remove zone temp");
        fs::create_dir(&temp).expect("make zone temp a directory");
    }

    /// `class/hwmon/hwmonN -> ../../devices/does/not/exist`.
    pub fn broken_hwmon_link(&self) -> PathBuf {
        let n = Self::take(&self.next_hwmon);
        let link = self.root().join(format!("class/hwmon/hwmon{n}"));
        symlink("../../devices/does/not/exist", &link).expect("create broken hwmon link");
        link
    }

    /// `class/hwmon/hwmonN -> <target>` (absolute), e.g. a directory
    /// outside the root, to check that readers do not leave the root.
    pub fn link_hwmon(&self, target: &Path) -> PathBuf {
        let n = Self::take(&self.next_hwmon);
        let link = self.root().join(format!("class/hwmon/hwmon{n}"));
        symlink(target, &link).expect("create hwmon link");
        link
    }

    /// An hwmon `drivetemp` (label "SATA") whose only `temp1_input` is a
    /// directory, so reading it fails even as root. Returns the path a
    /// reader would report for it (`<root>/class/hwmon/hwmonN/temp1_input`).
    pub fn unreadable_sensor(&self) -> PathBuf {
        let h = self.hwmon("virtual/hwmon/drivetemp", "drivetemp", &[]);
        write(&h.dir.join("temp1_label"), "SATA\n");
        fs::create_dir(h.dir.join("temp1_input")).expect("create unreadable temp1_input");
        h.class_path.join("temp1_input")
    }

    /// `class/<class>/<entry> -> ../../<target_rel>`, the kernel's shape.
    fn link_class(&self, class: &str, entry: &str, target_rel: &str) -> PathBuf {
        skos_sandbox::sysfs::link_class(self.root(), class, entry, target_rel)
            .unwrap_or_else(|e| panic!("create class link: {e}"))
    }
}

/// Copies `from` into `to` (created as needed), keeping symlinks as links.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", from.display()));
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
        if kind.is_symlink() {
            let target =
                fs::read_link(&src).unwrap_or_else(|e| panic!("read link {}: {e}", src.display()));
            symlink(&target, &dst).unwrap_or_else(|e| panic!("link {}: {e}", dst.display()));
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }
}

fn write_temps(dir: &Path, temps: &[Temp<'_>]) {
    skos_sandbox::sysfs::write_temps(dir, temps)
        .unwrap_or_else(|e| panic!("write temperatures: {e}"));
}

/// `c` as the kernel writes it: integer millidegrees and a newline.
pub use skos_sandbox::sysfs::millis;

/// Replaces `path` whole (a temp file beside it, then a rename): a reader
/// sees the old or the new value, never an empty or half-written file, as
/// with a real sysfs attribute.
fn write(path: &Path, text: &str) {
    skos_sandbox::sysfs::replace(path, text).unwrap_or_else(|e| panic!("write: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(h: &HwmonHandle, n: u32) -> String {
        fs::read_to_string(h.dir().join(format!("temp{n}_input"))).unwrap()
    }

    #[test]
    fn heat_warms_the_package_and_every_core_just_below_it() {
        let fake = FakeSysfs::new();
        let cpu = fake.coretemp(50.0, &[48.0, 49.0, 47.0, 46.0, 45.0]);
        cpu.heat(90.0);
        let temps: Vec<String> = (1..=6).map(|n| temp(&cpu, n)).collect();
        assert_eq!(
            temps,
            ["90000\n", "88000\n", "87000\n", "86000\n", "85000\n", "88000\n"]
        );
        // Each file was replaced whole: no temp file is left behind.
        let leftovers: Vec<_> = fs::read_dir(cpu.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Labels and limits are left alone.
        assert_eq!(
            fs::read_to_string(cpu.dir().join("temp2_label")).unwrap(),
            "Core 0\n"
        );
        assert_eq!(
            fs::read_to_string(cpu.dir().join("temp1_crit")).unwrap(),
            "100000\n"
        );

        // Cooling down is the same call.
        cpu.heat(55.5);
        assert_eq!(temp(&cpu, 1), "55500\n");
        assert_eq!(temp(&cpu, 3), "52500\n");

        // A package without cores: only the package.
        let bare = fake.coretemp(40.0, &[]);
        bare.heat(80.0);
        assert_eq!(temp(&bare, 1), "80000\n");
        assert!(!bare.dir().join("temp2_input").exists());
    }

    #[test]
    fn a_fixture_copy_keeps_its_links_and_numbers_after_them() {
        let src = FakeSysfs::new();
        src.coretemp(50.0, &[48.0]);
        src.acpitz_zone(30.0);
        let copy = FakeSysfs::from_fixture(src.root());
        let link = copy.root().join("class/hwmon/hwmon0");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from("../../devices/platform/coretemp.0/hwmon/hwmon0")
        );
        assert_eq!(
            fs::read_to_string(link.join("temp2_input")).unwrap(),
            "48000\n"
        );
        // The copy is its own: changing it leaves the source alone.
        copy.write_file(
            "devices/platform/coretemp.0/hwmon/hwmon0/temp1_input",
            "70000\n",
        );
        assert_eq!(
            fs::read_to_string(link.join("temp1_input")).unwrap(),
            "70000\n"
        );
        assert_eq!(
            fs::read_to_string(src.root().join("class/hwmon/hwmon0/temp1_input")).unwrap(),
            "50000\n"
        );
        // New devices do not collide with copied ones.
        let probe = copy.w1_probe("0316a2795bff", -18.3);
        assert_eq!(probe.class_path(), copy.root().join("class/hwmon/hwmon1"));
        assert_eq!(
            fs::read_to_string(probe.dir().join("name")).unwrap(),
            "w1_slave_temp\n"
        );
        assert_eq!(
            copy.thermal_zone("x", 1.0, None),
            copy.root().join("class/thermal/thermal_zone1")
        );
    }
}
