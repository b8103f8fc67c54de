//! Field cases: inputs recorded from real machines and tools (rebuilt in
//! `tests/fixtures/field/`), each with its right answer. GPU tools are off
//! unless a test hands the parser the tool's output itself: the real
//! machine's NVML, `nvidia-smi` and `sensors` are never consulted.

mod common;
use chrono::TimeZone;
use common::{fixture, no_tools};
use skos_agent::sensors::{
    hottest, nvidia_smi_scan, parse_lm_sensors_json, Invalid, Problem, ProblemKind, Reading, Role,
    Scan, SensorKind, Sensors,
};
use skos_agent::thermal::ThermalSentinel;
use skos_core::config::Config;
use skos_core::level::secs;
use skos_core::protocol::Severity;
use skos_testsupport::sysfs::FakeSysfs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture_text(rel: &str) -> String {
    let path = fixture(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn scan(root: &Path) -> Scan {
    Sensors::new(root, no_tools()).scan()
}

fn by_label<'a>(r: &'a [Reading], label: &str) -> &'a Reading {
    r.iter()
        .find(|x| x.label == label)
        .unwrap_or_else(|| panic!("no reading labelled {label} in {r:#?}"))
}

/// warning 75, critical 85, emergency 95, tools off, on `root`.
fn sentinel(root: &Path) -> ThermalSentinel {
    let text = "thermal:
  thresholds: {warning: 75, critical: 85, emergency: 95}
  hysteresis: 3
  gpu: {nvml: false, nvidia_smi: false, lm_sensors: false}
";
    let mut cfg = Config::from_yaml(text).unwrap_or_else(|e| panic!("{e:?}"));
    cfg.sysfs_root = root.to_path_buf();
    ThermalSentinel::new(&cfg, None)
}

fn now() -> skos_core::timefmt::Timestamp {
    chrono::Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("a valid timestamp")
}

// --- 01: k10temp Tdie / Tctl ------------------------------------------------

#[test]
fn field_01_k10temp_tdie_not_tctl_is_the_cpu() {
    let root = fixture("01-k10temp-tdie-tctl/sys");
    let s = scan(&root);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    assert_eq!(s.readings.len(), 2, "{:#?}", s.readings);

    let tdie = by_label(&s.readings, "Tdie");
    assert_eq!(tdie.path, root.join("class/hwmon/hwmon0/temp1_input"));
    assert_eq!(
        (tdie.kind, tdie.role, tdie.counts, tdie.celsius, tdie.max),
        (SensorKind::Cpu, Role::Die, true, 32.5, Some(70.0))
    );
    let tctl = by_label(&s.readings, "Tctl");
    assert_eq!(
        (tctl.kind, tctl.role, tctl.counts, tctl.celsius),
        (SensorKind::Cpu, Role::Control, false, 59.5)
    );
    assert!(tdie.counts_as_cpu() && !tctl.counts_as_cpu());
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(32.5));

    // What `skos sensors --json` prints for them.
    let v = serde_json::to_value(tctl).expect("serialise");
    assert_eq!(
        (v["role"].as_str(), v["counts"].as_bool()),
        (Some("control"), Some(false))
    );
}

#[test]
fn field_01_hot_threadripper_tdie_70_tctl_97_raises_no_alert() {
    let fake = FakeSysfs::from_fixture(&fixture("01-k10temp-tdie-tctl/sys"));
    let hwmon = "devices/pci0000:00/0000:00:18.3/hwmon/hwmon0";
    fake.write_file(&format!("{hwmon}/temp1_input"), "70000\n");
    fake.write_file(&format!("{hwmon}/temp2_input"), "97000\n");
    let mut s = sentinel(fake.root());
    let alerts = s.sense(now());
    assert!(
        alerts.is_empty(),
        "70 °C is below the warning (75): {alerts:?}"
    );
    assert_eq!(s.cpu_temp(), Some(70.0));

    // The die itself above warning: the alert names Tdie and its value.
    fake.write_file(&format!("{hwmon}/temp1_input"), "76000\n");
    fake.write_file(&format!("{hwmon}/temp2_input"), "103000\n");
    let alerts = s.sense(now() + secs(5.0));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].severity, Severity::Warning);
    assert_eq!(alerts[0].details["temperature"], 76.0);
    assert_eq!(alerts[0].details["label"], "Tdie");
    assert_eq!(
        alerts[0].details["source"],
        fake.root()
            .join("class/hwmon/hwmon0/temp1_input")
            .display()
            .to_string()
    );
}

// --- 03: `sensors -j` with a trailing comma ---------------------------------

#[test]
fn field_03_trailing_comma_keeps_every_valid_chip() {
    let text = fixture_text("03-sensors-json-trailing-comma/sensors-j.txt");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "the recorded output is invalid JSON as a whole"
    );
    let s = parse_lm_sensors_json(&text);
    assert_eq!(s.readings.len(), 2, "{:#?}", s.readings);
    let tctl = by_label(&s.readings, "Tctl");
    assert_eq!(
        (tctl.kind, tctl.celsius, tctl.counts, tctl.chip.as_str()),
        (SensorKind::Cpu, 66.0, true, "k10temp")
    );
    let nvme = by_label(&s.readings, "Composite");
    assert_eq!(
        (nvme.kind, nvme.celsius, nvme.crit, nvme.max),
        (SensorKind::Other, 38.85, Some(84.85), Some(81.85))
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(66.0));
    // The broken block is named.
    assert_eq!(s.problems.len(), 1, "{:#?}", s.problems);
    assert_eq!(s.problems[0].at, "sensors:acpitz-acpi-0");
    assert!(
        matches!(&s.problems[0].what, ProblemKind::Repaired { defect } if defect.starts_with("trailing comma")),
        "{:?}",
        s.problems[0]
    );
}

// --- 04: `sensors -j` with an unreadable feature -----------------------------

#[test]
fn field_04_unreadable_feature_keeps_every_readable_sensor() {
    let text = fixture_text("04-sensors-json-unreadable-feature/sensors-j.stdout.txt");
    let s = parse_lm_sensors_json(&text);
    let mut got: Vec<(&str, &str, f64)> = s
        .readings
        .iter()
        .map(|r| (r.chip.as_str(), r.label.as_str(), r.celsius))
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    assert_eq!(
        got,
        [
            ("acpitz", "acpitz temp1", 25.0),
            ("coretemp", "Core 0", 88.0),
            ("coretemp", "Package id 0", 88.0),
            ("dell_smm", "Ambient", 60.0),
            ("dell_smm", "CPU", 67.0),
            ("pch_skylake", "pch_skylake temp1", 56.5),
        ]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(88.0));
    let pkg = by_label(&s.readings, "Package id 0");
    assert_eq!(
        (pkg.role, pkg.counts, pkg.crit, pkg.max),
        (Role::Package, true, Some(100.0), Some(100.0))
    );
    assert_eq!(by_label(&s.readings, "acpitz temp1").crit, Some(107.0));
    assert_eq!(
        s.problems,
        [Problem {
            at: "sensors:iwlwifi-virtual-0/temp1".into(),
            what: ProblemKind::NoValue { text: "{}".into() },
        }]
    );
}

// --- 07: `nvidia-smi` without data -------------------------------------------

#[test]
fn field_07_nvidia_smi_mismatch_no_devices_and_na_rows() {
    let mismatch = nvidia_smi_scan(
        Some(18),
        &fixture_text("07-nvidia-smi-no-data-shapes/mismatch.txt"),
    );
    assert!(mismatch.readings.is_empty());
    assert_eq!(
        mismatch.problems,
        [Problem {
            at: "nvidia-smi".into(),
            what: ProblemKind::ToolFailed {
                code: Some(18),
                message: "Failed to initialize NVML: Driver/library version mismatch".into(),
            },
        }]
    );

    let none = nvidia_smi_scan(
        Some(6),
        &fixture_text("07-nvidia-smi-no-data-shapes/nodevices.txt"),
    );
    assert!(none.readings.is_empty());
    assert_eq!(
        none.problems[0].what,
        ProblemKind::ToolFailed {
            code: Some(6),
            message: "No devices were found".into()
        }
    );

    let vgpu = nvidia_smi_scan(
        Some(0),
        &fixture_text("07-nvidia-smi-no-data-shapes/vgpu-na.txt"),
    );
    assert_eq!(vgpu.readings.len(), 1, "{:#?}", vgpu.readings);
    let a40 = &vgpu.readings[0];
    assert_eq!(
        (a40.path.to_str(), a40.label.as_str(), a40.celsius, a40.kind),
        (Some("nvidia-smi:1"), "NVIDIA A40", 28.0, SensorKind::Gpu)
    );
    assert_eq!(hottest(&vgpu.readings, SensorKind::Gpu), Some(28.0));
    let at: Vec<&str> = vgpu.problems.iter().map(|p| p.at.as_str()).collect();
    assert_eq!(at, ["nvidia-smi:0", "nvidia-smi:2"]);
    assert!(vgpu
        .problems
        .iter()
        .all(|p| matches!(p.what, ProblemKind::NoValue { .. })));
}

// --- 08: per-file read errors --------------------------------------------------

/// The errno names of a rules.json, as numbers.
fn errno(name: &str) -> i32 {
    match name {
        "ENODATA" => libc::ENODATA,
        "EINVAL" => libc::EINVAL,
        "EIO" => libc::EIO,
        "EACCES" => libc::EACCES,
        other => panic!("unknown errno {other}"),
    }
}

/// Sensors on `root` whose file reads fail as `rules.json` says (paths
/// relative to the root, as the kernel's real device paths).
fn failing_as(root: &Path, rules: &str) -> Sensors {
    let rules: serde_json::Value = serde_json::from_str(rules).expect("rules.json");
    let canon = std::fs::canonicalize(root).expect("canonical root");
    let errors: HashMap<PathBuf, i32> = rules["errors"]
        .as_object()
        .expect("errors")
        .iter()
        .map(|(path, e)| (canon.join(path), errno(e.as_str().expect("errno name"))))
        .collect();
    Sensors::new(root, no_tools()).with_file_reader(move |p: &Path| match errors.get(p) {
        Some(&e) => Err(std::io::Error::from_raw_os_error(e)),
        None => std::fs::read_to_string(p),
    })
}

#[test]
fn field_08_each_failing_file_is_skipped_alone() {
    let root = fixture("08-read-errors-eio-enodata/sys");
    let s = failing_as(
        &root,
        &fixture_text("08-read-errors-eio-enodata/rules.json"),
    )
    .scan();
    assert_eq!(s.readings.len(), 3, "{:#?}", s.readings);

    let pkg = by_label(&s.readings, "x86_pkg_temp");
    assert_eq!(
        (pkg.kind, pkg.role, pkg.counts, pkg.celsius),
        (SensorKind::Cpu, Role::Package, true, 52.0)
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(52.0));
    let composite = by_label(&s.readings, "Composite");
    assert_eq!(
        (composite.celsius, composite.crit, composite.max),
        (54.85, Some(84.85), Some(69.85))
    );
    let sensor1 = by_label(&s.readings, "Sensor 1");
    assert_eq!(
        (sensor1.celsius, sensor1.crit, sensor1.max),
        (71.85, None, None),
        "its max answered EIO: no limit, the reading stays"
    );

    let problem = |at: &str| -> String {
        let p = s
            .problems
            .iter()
            .find(|p| p.at == at)
            .unwrap_or_else(|| panic!("no problem at {at} in {:#?}", s.problems));
        match &p.what {
            ProblemKind::Unreadable { error } => error.clone(),
            other => panic!("{at}: {other:?}"),
        }
    };
    let zone = |n: u32| {
        root.join(format!("class/thermal/thermal_zone{n}/temp"))
            .display()
            .to_string()
    };
    assert!(problem(&zone(0)).contains("No data available"));
    assert!(problem(&zone(1)).contains("Invalid argument"));
    let max = root
        .join("class/hwmon/hwmon1/temp2_max")
        .display()
        .to_string();
    assert!(problem(&max).contains("Input/output error"));
    assert_eq!(s.problems.len(), 3, "{:#?}", s.problems);
}

#[test]
fn field_08_the_same_files_read_plainly() {
    // Without the failures: the Wi-Fi zone's 0 is "no value", the INT3400
    // zone a reading (not a CPU), Sensor 1's max of 0 no limit.
    let root = fixture("08-read-errors-eio-enodata/sys");
    let s = scan(&root);
    assert_eq!(s.readings.len(), 4, "{:#?}", s.readings);
    let int3400 = by_label(&s.readings, "INT3400 Thermal");
    assert_eq!((int3400.kind, int3400.celsius), (SensorKind::Other, 20.0));
    assert_eq!(by_label(&s.readings, "Sensor 1").max, None);
    assert_eq!(
        s.problems,
        [Problem {
            at: root
                .join("class/thermal/thermal_zone0/temp")
                .display()
                .to_string(),
            what: ProblemKind::Invalid {
                celsius: 0.0,
                reason: Invalid::NoValue
            },
        }]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(52.0));
}

// --- 11: hwmon layouts ---------------------------------------------------------

#[test]
fn field_11_hwmon_layouts_ten_readings_cpu_61() {
    let root = fixture("11-nodeexporter-hwmon-layouts/sys");
    let s = scan(&root);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    assert_eq!(s.readings.len(), 10, "{:#?}", s.readings);
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(61.0));

    let cpus: Vec<(&str, Role, f64)> = s
        .readings
        .iter()
        .filter(|r| r.counts_as_cpu())
        .map(|r| (r.label.as_str(), r.role, r.celsius))
        .collect();
    assert_eq!(
        cpus,
        [
            ("Physical id 0", Role::Package, 61.0),
            ("Core 0", Role::Core, 58.0),
            ("Physical id 1", Role::Package, 57.0),
            ("Core 0", Role::Core, 55.0),
        ]
    );
    // applesmc: name and temps only under device/ (old layout).
    let smc = by_label(&s.readings, "TC0P");
    assert_eq!(smc.path, root.join("class/hwmon/hwmon2/device/temp1_input"));
    assert_eq!((smc.chip.as_str(), smc.celsius), ("applesmc", 41.0));
    // No name file: the entry's name; two inputs sharing a label both count.
    let foo: Vec<(&str, f64, Option<f64>)> = s
        .readings
        .iter()
        .filter(|r| r.label == "foosensor")
        .map(|r| (r.chip.as_str(), r.celsius, r.crit))
        .collect();
    assert_eq!(foo, [("hwmon4", 55.0, Some(100.0)), ("hwmon4", 54.0, None)]);
    // One Wi-Fi chip, three hwmons.
    let wifi: Vec<(&str, f64)> = s
        .readings
        .iter()
        .filter(|r| r.chip.starts_with("mt7996"))
        .map(|r| (r.label.as_str(), r.celsius))
        .collect();
    assert_eq!(
        wifi,
        [
            ("mt7996_phy0_2 temp1", 51.0),
            ("mt7996_phy0_0 temp1", 49.0),
            ("mt7996_phy0_1 temp1", 50.0),
        ]
    );
    assert!(s
        .readings
        .iter()
        .filter(|r| r.kind != SensorKind::Cpu)
        .all(|r| r.role == Role::Other));
}
