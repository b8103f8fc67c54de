//! The sensors of the thermal sentinel on fake sysfs trees shaped like real
//! machines. GPU tools are off: the real machine's NVML, `nvidia-smi` and
//! `sensors` are never consulted.

mod common;
use common::no_tools;
use skos_agent::sensors::{hottest, ProblemKind, Reading, Role, SensorKind, Sensors};
use skos_testsupport::sysfs::{FakeSysfs, Temp};
use std::path::{Path, PathBuf};

fn read(fake: &FakeSysfs) -> Vec<Reading> {
    Sensors::new(fake.root(), no_tools()).read_all()
}

fn at<'a>(r: &'a [Reading], path: &Path) -> &'a Reading {
    r.iter()
        .find(|x| x.path == path)
        .unwrap_or_else(|| panic!("no reading at {} in {r:#?}", path.display()))
}

fn labels(r: &[Reading]) -> Vec<&str> {
    r.iter().map(|x| x.label.as_str()).collect()
}

#[test]
fn intel_laptop_coretemp_nvme_acpitz() {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(52.0, &[48.0, 50.5]);
    let disk = fake.nvme(38.85);
    let zone = fake.acpitz_zone(27.8);

    let r = read(&fake);
    assert_eq!(r.len(), 5, "{r:#?}");

    let pkg = at(&r, &cpu.input_path(1));
    assert_eq!(pkg.path, fake.root().join("class/hwmon/hwmon0/temp1_input"));
    assert_eq!(pkg.label, "Package id 0");
    assert_eq!(pkg.kind, SensorKind::Cpu);
    assert_eq!(pkg.celsius, 52.0);
    assert_eq!(pkg.source, "hwmon");
    assert_eq!(pkg.chip, "coretemp");
    assert_eq!(pkg.crit, Some(100.0));
    assert_eq!(pkg.max, Some(80.0));
    assert_eq!(at(&r, &cpu.input_path(2)).label, "Core 0");
    assert_eq!(at(&r, &cpu.input_path(3)).celsius, 50.5);

    let composite = at(&r, &disk.input_path(1));
    assert_eq!(composite.label, "Composite");
    assert_eq!(composite.kind, SensorKind::Other);
    assert_eq!(composite.chip, "nvme");
    assert_eq!(composite.celsius, 38.85);
    assert_eq!(composite.crit, Some(84.85));
    assert_eq!(composite.max, Some(81.85));

    let acpi = at(&r, &zone.join("temp"));
    assert_eq!(
        acpi.path,
        fake.root().join("class/thermal/thermal_zone0/temp")
    );
    assert_eq!(acpi.source, "thermal_zone");
    assert_eq!(acpi.label, "acpitz");
    assert_eq!(acpi.chip, "acpitz");
    assert_eq!(acpi.kind, SensorKind::Other);
    assert_eq!(acpi.celsius, 27.8);
    assert_eq!(acpi.crit, Some(119.0));

    assert_eq!(hottest(&r, SensorKind::Cpu), Some(52.0));
    assert_eq!(hottest(&r, SensorKind::Other), Some(38.85));
    assert_eq!(hottest(&r, SensorKind::Gpu), None, "no GPU, no GPU value");

    // Sorted by path, so two reads of the same tree are identical.
    let mut sorted = r.clone();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(r, sorted);
    assert_eq!(r, read(&fake));
}

#[test]
fn amd_desktop_k10temp_amdgpu() {
    let fake = FakeSysfs::new();
    let cpu = fake.k10temp(67.25);
    let gpu = fake.amdgpu(49.0);

    let r = read(&fake);
    assert_eq!(r.len(), 4, "{r:#?}");

    let tctl = at(&r, &cpu.input_path(1));
    assert_eq!(
        (tctl.label.as_str(), tctl.kind, tctl.celsius),
        ("Tctl", SensorKind::Cpu, 67.25)
    );
    assert_eq!(tctl.chip, "k10temp");
    assert_eq!(tctl.crit, None);
    assert_eq!(
        (tctl.role, tctl.counts),
        (Role::Control, true),
        "Tctl alone is the CPU value"
    );
    assert_eq!(at(&r, &gpu.input_path(2)).role, Role::Junction);

    let edge = at(&r, &gpu.input_path(1));
    assert_eq!(edge.label, "edge");
    assert_eq!(edge.kind, SensorKind::Gpu);
    assert_eq!(edge.chip, "amdgpu");
    assert_eq!(edge.crit, Some(100.0));
    assert_eq!(at(&r, &gpu.input_path(2)).label, "junction");
    assert_eq!(at(&r, &gpu.input_path(3)).label, "mem");
    assert!(r
        .iter()
        .filter(|x| x.chip == "amdgpu")
        .all(|x| x.kind == SensorKind::Gpu));

    assert_eq!(hottest(&r, SensorKind::Cpu), Some(67.25));
    assert_eq!(
        hottest(&r, SensorKind::Gpu),
        Some(59.0),
        "junction = edge + 10"
    );
    assert_eq!(hottest(&r, SensorKind::Other), None);

    // The JSON `skos sensors --json` prints.
    let v = serde_json::to_value(tctl).expect("serialise");
    assert_eq!(v["kind"], "cpu");
    assert_eq!(v["source"], "hwmon");
    assert!(v.get("crit").is_none());
}

#[test]
fn broken_link_and_unreadable_file_are_skipped_and_the_rest_still_reads() {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(61.0, &[59.0, 60.0]);
    fake.broken_hwmon_link();
    let unreadable = fake.unreadable_sensor();
    let pkg_zone = fake.x86_pkg_zone(62.0);
    let dead_zone = fake.acpitz_zone(30.0);
    fake.break_zone_temp(&dead_zone);
    // One unreadable input inside an otherwise good chip.
    let core0 = cpu.dir().join("temp2_input");
    std::fs::remove_file(&core0).unwrap();
    std::fs::create_dir(&core0).unwrap();

    let r = read(&fake);
    assert_eq!(
        labels(&r),
        vec!["Package id 0", "Core 1", "x86_pkg_temp"],
        "{r:#?}"
    );
    assert!(!r.iter().any(|x| x.path == unreadable));
    assert!(!r.iter().any(|x| x.path.starts_with(&dead_zone)));
    let pkg = at(&r, &pkg_zone.join("temp"));
    assert_eq!(pkg.kind, SensorKind::Cpu);
    assert_eq!(pkg.crit, None, "a passive trip at 0 is no limit");
    assert_eq!(hottest(&r, SensorKind::Cpu), Some(62.0));

    // Each one is reported, by path, and nothing else is.
    let problems = Sensors::new(fake.root(), no_tools()).scan().problems;
    let mut at: Vec<String> = problems.iter().map(|p| p.at.clone()).collect();
    at.sort();
    let mut want = vec![
        fake.root().join("class/hwmon/hwmon1").display().to_string(),
        unreadable.display().to_string(),
        cpu.input_path(2).display().to_string(),
        dead_zone.join("temp").display().to_string(),
    ];
    want.sort();
    assert_eq!(at, want, "{problems:#?}");
    assert!(problems
        .iter()
        .all(|p| matches!(p.what, ProblemKind::Unreadable { .. })));
}

#[test]
fn no_sensors_means_no_readings() {
    let fake = FakeSysfs::new();
    let r = read(&fake);
    assert!(r.is_empty(), "{r:#?}");
    assert_eq!(hottest(&r, SensorKind::Cpu), None);
    assert_eq!(hottest(&r, SensorKind::Gpu), None);
    assert_eq!(hottest(&r, SensorKind::Other), None);

    // A root without class/ at all, and a root that does not exist.
    let empty = tempfile::tempdir().unwrap();
    assert!(Sensors::new(empty.path(), no_tools()).read_all().is_empty());
    let missing = empty.path().join("no/such/sys");
    assert!(Sensors::new(missing, no_tools()).read_all().is_empty());
}

#[test]
fn a_link_escaping_the_root_is_not_followed() {
    let outside = FakeSysfs::new();
    let foreign = outside.coretemp(99.0, &[98.0]);

    let fake = FakeSysfs::new();
    fake.nvme(35.0);
    let escaping = fake.link_hwmon(foreign.dir());
    // The same escape as a relative link climbing out of the root
    // (class/hwmon/../../.. is the root's parent, the shared temp dir).
    let rel = PathBuf::from("../../..").join(
        foreign
            .dir()
            .strip_prefix(fake.root().parent().unwrap())
            .expect("both fake roots live in the same temp dir"),
    );
    std::os::unix::fs::symlink(&rel, fake.root().join("class/hwmon/hwmon7")).unwrap();
    assert!(std::fs::read_to_string(fake.root().join("class/hwmon/hwmon7/name")).is_ok());
    assert!(std::fs::read_to_string(escaping.join("name")).is_ok());

    let r = read(&fake);
    assert_eq!(labels(&r), vec!["Composite"], "{r:#?}");
    assert_eq!(hottest(&r, SensorKind::Cpu), None);
    let problems = Sensors::new(fake.root(), no_tools()).scan().problems;
    let escapes: Vec<&str> = problems
        .iter()
        .filter(|p| matches!(p.what, ProblemKind::OutsideRoot { .. }))
        .map(|p| p.at.as_str())
        .collect();
    assert_eq!(
        escapes,
        [
            escaping.display().to_string(),
            fake.root().join("class/hwmon/hwmon7").display().to_string()
        ],
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 2, "{problems:#?}");
    // The outside tree itself reads fine.
    assert_eq!(hottest(&read(&outside), SensorKind::Cpu), Some(99.0));
}

#[test]
fn set_temp_changes_the_next_read() {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(45.0, &[44.0]);
    let zone = fake.x86_pkg_zone(46.0);
    let sensors = Sensors::new(fake.root(), no_tools());

    let before = sensors.read_all();
    assert_eq!(at(&before, &cpu.input_path(1)).celsius, 45.0);
    assert_eq!(hottest(&before, SensorKind::Cpu), Some(46.0));

    cpu.heat(93.5); // the package, and its core 2 °C below it
    fake.set_zone_temp(&zone, 94.0);
    let after = sensors.read_all();
    assert_eq!(at(&after, &cpu.input_path(1)).celsius, 93.5);
    assert_eq!(at(&after, &cpu.input_path(2)).celsius, 91.5);
    assert_eq!(at(&after, &zone.join("temp")).celsius, 94.0);
    assert_eq!(hottest(&after, SensorKind::Cpu), Some(94.0));

    // A sensor that drops to 0 (or an absurd value) is no reading, not 0 °C.
    cpu.set_temp(1, 0.0);
    cpu.set_temp(2, 6553.5);
    let dropped = sensors.read_all();
    assert_eq!(labels(&dropped), vec!["x86_pkg_temp"], "{dropped:#?}");
}

#[test]
fn old_kernel_hwmon_with_files_under_device() {
    let fake = FakeSysfs::new();
    let h = fake.legacy_hwmon("k8temp", &[55.0, 57.0]);
    let r = read(&fake);
    assert_eq!(r.len(), 2, "{r:#?}");
    let t1 = at(&r, &h.input_path(1));
    assert_eq!(
        t1.path,
        fake.root().join("class/hwmon/hwmon0/device/temp1_input")
    );
    assert_eq!(t1.chip, "k8temp");
    assert_eq!(t1.label, "k8temp temp1", "no label: chip + input name");
    assert_eq!(t1.kind, SensorKind::Cpu);
    assert_eq!(hottest(&r, SensorKind::Cpu), Some(57.0));
}

#[test]
fn generic_hwmon_and_zone_classification() {
    let fake = FakeSysfs::new();
    fake.hwmon(
        "virtual/thermal/thermal_zone9",
        "iwlwifi_1",
        &[Temp::new(None, 41.0)],
    );
    fake.hwmon(
        "pci0000:00/0000:00:02.0/0000:01:00.0",
        "nouveau",
        &[Temp::new(None, 71.0).crit(105.0).max(95.0)],
    );
    fake.thermal_zone("gpu-thermal", 66.0, None);
    fake.thermal_zone("cpu-thermal", 58.0, Some(110.0));
    let r = read(&fake);
    let kinds: Vec<(&str, SensorKind)> = r.iter().map(|x| (x.chip.as_str(), x.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("iwlwifi_1", SensorKind::Other),
            ("nouveau", SensorKind::Gpu),
            ("gpu-thermal", SensorKind::Gpu),
            ("cpu-thermal", SensorKind::Cpu),
        ]
    );
    assert_eq!(r[1].crit, Some(105.0));
    assert_eq!(r[1].max, Some(95.0));
    assert_eq!(r[3].crit, Some(110.0));
    assert_eq!(hottest(&r, SensorKind::Gpu), Some(71.0));
}
