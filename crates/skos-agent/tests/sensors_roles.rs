//! Which input is the CPU, and which values are temperatures, beyond the
//! field cases: more chips (zenpower, Zen 2 k10temp, dual-socket AMD, ARM
//! SoC zones, 1-Wire probes, amdgpu), more layouts, more tool outputs.
//! GPU tools are off: the real machine's NVML, `nvidia-smi` and `sensors`
//! are never consulted.

mod common;
use common::no_tools;
use proptest::prelude::*;
use skos_agent::sensors::{
    hottest, hottest_reading, parse_lm_sensors_json, Invalid, ProblemKind, Reading, Role, Scan,
    SensorKind, Sensors,
};
use skos_testsupport::sysfs::{FakeSysfs, Temp};
use std::path::Path;

fn scan(fake: &FakeSysfs) -> Scan {
    Sensors::new(fake.root(), no_tools()).scan()
}

fn by_label<'a>(r: &'a [Reading], label: &str) -> &'a Reading {
    r.iter()
        .find(|x| x.label == label)
        .unwrap_or_else(|| panic!("no reading labelled {label} in {r:#?}"))
}

/// (label, role, counts) of every reading.
fn roles(r: &[Reading]) -> Vec<(&str, Role, bool)> {
    r.iter()
        .map(|x| (x.label.as_str(), x.role, x.counts))
        .collect()
}

fn amd(fake: &FakeSysfs, dev: &str, chip: &str, temps: &[(&str, f64)]) {
    let temps: Vec<Temp<'_>> = temps.iter().map(|(l, c)| Temp::new(Some(l), *c)).collect();
    fake.hwmon(dev, chip, &temps);
}

#[test]
fn zenpower_tdie_and_ccds_over_tctl() {
    let fake = FakeSysfs::new();
    amd(
        &fake,
        "pci0000:00/0000:00:18.3",
        "zenpower",
        &[
            ("Tdie", 48.0),
            ("Tctl", 75.0),
            ("Tccd1", 52.5),
            ("Tccd2", 50.0),
        ],
    );
    let s = scan(&fake);
    assert_eq!(
        roles(&s.readings),
        [
            ("Tdie", Role::Die, true),
            ("Tctl", Role::Control, false),
            ("Tccd1", Role::Ccd, true),
            ("Tccd2", Role::Ccd, true),
        ]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(52.5));
    let hot = hottest_reading(&s.readings, SensorKind::Cpu).map(|r| r.label.as_str());
    assert_eq!(hot, Some("Tccd1"));
}

/// Zen 2 and later show no Tdie: their Tctl has no offset and is the
/// control temperature the CPU throttles on, so it counts beside the CCDs.
#[test]
fn zen2_k10temp_tctl_beside_ccds_counts() {
    let fake = FakeSysfs::new();
    amd(
        &fake,
        "pci0000:00/0000:00:18.3",
        "k10temp",
        &[("Tctl", 96.0), ("Tccd1", 71.0)],
    );
    let s = scan(&fake);
    assert_eq!(
        roles(&s.readings),
        [("Tctl", Role::Control, true), ("Tccd1", Role::Ccd, true)]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(96.0));
}

/// A Tdie that reads nothing valid (0, or stuck at 127 or -128) does not
/// hide the CPU: Tctl counts, and a hot CPU is still seen.
#[test]
fn an_invalid_tdie_leaves_tctl_as_the_cpu_value() {
    for stuck in [0.0, 127.0, -128.0] {
        let fake = FakeSysfs::new();
        amd(
            &fake,
            "pci0000:00/0000:00:18.3",
            "k10temp",
            &[("Tdie", stuck), ("Tctl", 99.0)],
        );
        let s = scan(&fake);
        assert_eq!(
            hottest(&s.readings, SensorKind::Cpu),
            Some(99.0),
            "Tdie {stuck}"
        );
    }
}

#[test]
fn each_socket_is_judged_on_its_own_inputs() {
    // Socket 0 shows Tdie (offset part); socket 1 only Tctl (no offset):
    // socket 1's Tctl is its CPU value.
    let fake = FakeSysfs::new();
    amd(
        &fake,
        "pci0000:00/0000:00:18.3",
        "k10temp",
        &[("Tdie", 40.0), ("Tctl", 67.0)],
    );
    amd(
        &fake,
        "pci0000:00/0000:00:19.3",
        "k10temp",
        &[("Tctl", 55.0)],
    );
    let s = scan(&fake);
    assert_eq!(
        roles(&s.readings),
        [
            ("Tdie", Role::Die, true),
            ("Tctl", Role::Control, false),
            ("Tctl", Role::Control, true),
        ]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(55.0));
}

#[test]
fn coretemp_packages_and_cores_all_count() {
    let fake = FakeSysfs::new();
    fake.coretemp(70.0, &[66.0, 72.0]);
    let s = scan(&fake);
    assert_eq!(
        roles(&s.readings),
        [
            ("Package id 0", Role::Package, true),
            ("Core 0", Role::Core, true),
            ("Core 1", Role::Core, true),
        ]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(72.0));
}

#[test]
fn arm_soc_cluster_zones_are_cpu_and_platform_zones_are_not() {
    let fake = FakeSysfs::new();
    for (zone, c) in [
        ("cpu0-thermal", 51.0),
        ("cpu-big0-thermal", 63.5),
        ("cpu-little-thermal", 49.0),
        ("cpuss-0-thermal", 58.0),
        ("soc_thermal", 55.0),
        ("gpu0-thermal", 70.0),
        ("acpitz", 80.0),
        ("pch_cannonlake", 81.0),
        ("iwlwifi_1", 82.0),
        ("INT3400 Thermal", 83.0),
    ] {
        fake.thermal_zone(zone, c, None);
    }
    let s = scan(&fake);
    assert_eq!(s.readings.len(), 10, "{:#?}", s.readings);
    let kinds: Vec<(&str, SensorKind, Role)> = s
        .readings
        .iter()
        .map(|r| (r.label.as_str(), r.kind, r.role))
        .collect();
    assert_eq!(
        kinds,
        [
            ("cpu0-thermal", SensorKind::Cpu, Role::Die),
            ("cpu-big0-thermal", SensorKind::Cpu, Role::Die),
            ("cpu-little-thermal", SensorKind::Cpu, Role::Die),
            ("cpuss-0-thermal", SensorKind::Cpu, Role::Die),
            ("soc_thermal", SensorKind::Cpu, Role::Die),
            ("gpu0-thermal", SensorKind::Gpu, Role::Die),
            ("acpitz", SensorKind::Other, Role::Other),
            ("pch_cannonlake", SensorKind::Other, Role::Other),
            ("iwlwifi_1", SensorKind::Other, Role::Other),
            ("INT3400 Thermal", SensorKind::Other, Role::Other),
        ]
    );
    assert_eq!(
        hottest(&s.readings, SensorKind::Cpu),
        Some(63.5),
        "the hot platform zones (80..83 °C) are not the CPU"
    );
    assert_eq!(hottest(&s.readings, SensorKind::Gpu), Some(70.0));
}

#[test]
fn freezer_probes_read_below_zero_and_stuck_values_are_reported() {
    let fake = FakeSysfs::new();
    let freezer = fake.w1_probe("0316a2795bff", -18.3);
    let ice = fake.w1_probe("0416a27f0aff", 0.0);
    let warm = fake.w1_probe("0516a2a1b2ff", 85.0);
    let stuck = [
        fake.w1_probe("0616a2c3d4ff", 127.0),
        fake.w1_probe("0716a2e5f6ff", -128.0),
        fake.w1_probe("0816a2f7f8ff", 255.0),
    ];
    let too_hot = fake.w1_probe("0916a2a9aaff", 130.0);
    let s = scan(&fake);

    let temps: Vec<(String, f64)> = s
        .readings
        .iter()
        .map(|r| (r.path.display().to_string(), r.celsius))
        .collect();
    let at = |h: &skos_testsupport::sysfs::HwmonHandle| h.input_path(1).display().to_string();
    assert_eq!(
        temps,
        [(at(&freezer), -18.3), (at(&ice), 0.0), (at(&warm), 85.0)]
    );
    assert!(s
        .readings
        .iter()
        .all(|r| (r.kind, r.role, r.chip.as_str())
            == (SensorKind::Other, Role::Other, "w1_slave_temp")));
    assert_eq!(
        hottest(&s.readings, SensorKind::Cpu),
        None,
        "probes are not the CPU"
    );

    let problems: Vec<(String, ProblemKind)> = s
        .problems
        .iter()
        .map(|p| (p.at.clone(), p.what.clone()))
        .collect();
    let invalid = |celsius, reason| ProblemKind::Invalid { celsius, reason };
    assert_eq!(
        problems,
        [
            (at(&stuck[0]), invalid(127.0, Invalid::Stuck)),
            (at(&stuck[1]), invalid(-128.0, Invalid::Stuck)),
            (at(&stuck[2]), invalid(255.0, Invalid::Stuck)),
            (
                at(&too_hot),
                invalid(
                    130.0,
                    Invalid::OutOfRange {
                        min: -55.0,
                        max: 125.0
                    }
                )
            ),
        ]
    );
}

#[test]
fn generic_sensors_give_no_value_for_zero_absolute_zero_and_the_absurd() {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(127.0, &[45.0]);
    let disk = fake.nvme(-273.15);
    let zone = fake.acpitz_zone(-5.0);
    let gpu = fake.amdgpu(0.0);
    gpu.set_temp(2, 151.0);
    let s = scan(&fake);
    let labels: Vec<&str> = s.readings.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["Core 0", "mem", "acpitz"], "{:#?}", s.readings);
    assert_eq!(
        by_label(&s.readings, "acpitz").celsius,
        -5.0,
        "an outdoor box below freezing is a reading"
    );
    let reason = |path: &Path| {
        s.problems
            .iter()
            .find(|p| p.at == path.display().to_string())
            .map(|p| p.what.clone())
    };
    assert_eq!(
        reason(&cpu.input_path(1)),
        Some(ProblemKind::Invalid {
            celsius: 127.0,
            reason: Invalid::Stuck
        })
    );
    assert_eq!(
        reason(&disk.input_path(1)),
        Some(ProblemKind::Invalid {
            celsius: -273.15,
            reason: Invalid::NoValue
        })
    );
    assert_eq!(
        reason(&gpu.input_path(1)),
        Some(ProblemKind::Invalid {
            celsius: 0.0,
            reason: Invalid::NoValue
        })
    );
    assert_eq!(
        reason(&gpu.input_path(2)),
        Some(ProblemKind::Invalid {
            celsius: 151.0,
            reason: Invalid::OutOfRange {
                min: -40.0,
                max: 150.0
            }
        })
    );
    assert!(zone.starts_with(fake.root()));
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(45.0));
}

#[test]
fn amdgpu_roles_and_published_limits_in_every_layout() {
    let fake = FakeSysfs::new();
    fake.amdgpu(49.0);
    // The old layout (files under device/) with limits of its own.
    let old = fake.legacy_hwmon("radeon", &[61.0]);
    std::fs::write(old.dir().join("temp1_crit"), "120000\n").expect("crit");
    std::fs::write(old.dir().join("temp1_max"), "95000\n").expect("max");
    // A thermal zone's hot and critical trip points.
    let zone = fake.thermal_zone("gpu-thermal", 50.0, Some(105.0));
    let dir = std::fs::canonicalize(&zone).expect("zone dir");
    std::fs::write(dir.join("trip_point_1_type"), "hot\n").expect("trip type");
    std::fs::write(dir.join("trip_point_1_temp"), "95000\n").expect("trip temp");

    let s = scan(&fake);
    let got: Vec<(&str, Role, Option<f64>, Option<f64>)> = s
        .readings
        .iter()
        .map(|r| (r.label.as_str(), r.role, r.crit, r.max))
        .collect();
    assert_eq!(
        got,
        [
            ("edge", Role::Edge, Some(100.0), None),
            ("junction", Role::Junction, Some(110.0), None),
            ("mem", Role::Memory, Some(105.0), None),
            ("radeon temp1", Role::Die, Some(120.0), Some(95.0)),
            ("gpu-thermal", Role::Die, Some(105.0), Some(95.0)),
        ]
    );
    assert!(s
        .readings
        .iter()
        .all(|r| r.kind == SensorKind::Gpu && r.counts));
    assert_eq!(hottest(&s.readings, SensorKind::Gpu), Some(61.0));
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
}

#[test]
fn lm_sensors_threadripper_tdie_over_tctl() {
    let text = r#"{
   "k10temp-pci-00c3":{
      "Adapter": "PCI adapter",
      "Tdie":{ "temp1_input": 32.500, "temp1_max": 70.000 },
      "Tctl":{ "temp2_input": 59.500 }
   },
   "k10temp-pci-00cb":{
      "Adapter": "PCI adapter",
      "Tdie":{ "temp1_input": 34.000, "temp1_max": 70.000 },
      "Tctl":{ "temp2_input": 61.000 }
   },
   "amdgpu-pci-4300":{
      "Adapter": "PCI adapter",
      "edge":{ "temp1_input": 45.0, "temp1_crit": 100.0 },
      "junction":{ "temp2_input": 49.0, "temp2_crit": 110.0 }
   }
}"#;
    let s = parse_lm_sensors_json(text);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    let cpu: Vec<(&str, f64, bool)> = s
        .readings
        .iter()
        .filter(|r| r.kind == SensorKind::Cpu)
        .map(|r| (r.label.as_str(), r.celsius, r.counts))
        .collect();
    assert_eq!(
        cpu,
        [
            ("Tctl", 59.5, false),
            ("Tdie", 32.5, true),
            ("Tctl", 61.0, false),
            ("Tdie", 34.0, true),
        ]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(34.0));
    let junction = by_label(&s.readings, "junction");
    assert_eq!(
        (junction.role, junction.crit),
        (Role::Junction, Some(110.0))
    );
    assert_eq!(by_label(&s.readings, "Tdie").max, Some(70.0));
}

#[test]
fn lm_sensors_zen2_and_a_freezer() {
    let text = r#"{
   "k10temp-pci-00c3":{
      "Adapter": "PCI adapter",
      "Tctl":{ "temp1_input": 72.000 },
      "Tccd1":{ "temp3_input": 66.250 },
      "Tccd2":{ "temp4_input": 63.000 }
   },
   "w1_slave_temp-virtual-0":{
      "Adapter": "Virtual device",
      "temp1":{ "temp1_input": -18.300 }
   }
}"#;
    let s = parse_lm_sensors_json(text);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    // No Tdie: Tctl is the control temperature and counts beside the CCDs.
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(72.0));
    assert!(by_label(&s.readings, "Tctl").counts);
    assert_eq!(by_label(&s.readings, "w1_slave_temp temp1").celsius, -18.3);
}

#[test]
fn the_json_of_skos_sensors_keeps_its_fields_and_adds_role_and_counts() {
    let fake = FakeSysfs::new();
    amd(
        &fake,
        "pci0000:00/0000:00:18.3",
        "k10temp",
        &[("Tdie", 40.0), ("Tctl", 67.0)],
    );
    let s = scan(&fake);
    let v = serde_json::to_value(&s.readings).expect("serialise");
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), 2);
    for (row, (role, counts)) in rows.iter().zip([("die", true), ("control", false)]) {
        for k in ["path", "label", "kind", "celsius", "source", "chip"] {
            assert!(!row[k].is_null(), "{k} missing in {row}");
        }
        assert_eq!(row["kind"], "cpu");
        assert_eq!(row["role"], role);
        assert_eq!(row["counts"], counts);
    }
}

/// A `sensors -j` document of `chips`, each `(name, [(feature, °C)])`,
/// formatted the way lm-sensors prints it.
fn lm_doc(chips: &[(String, Vec<(String, f64)>)], trailing_comma_in: Option<usize>) -> String {
    let mut out = String::from("{\n");
    for (i, (chip, features)) in chips.iter().enumerate() {
        out.push_str(&format!(
            "   \"{chip}\":{{\n      \"Adapter\": \"ISA adapter\""
        ));
        if features.is_empty() && trailing_comma_in == Some(i) {
            out.push(',');
        }
        for (n, (feature, c)) in features.iter().enumerate() {
            out.push_str(&format!(
                ",\n      \"{feature}\":{{\n         \"temp{}_input\": {c:.3}\n      }}",
                n + 1
            ));
        }
        out.push_str("\n   }");
        if i + 1 < chips.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push('}');
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Chip by chip gives what a whole-document parse would, and a chip
    /// broken by lm-sensors 3.6's trailing comma costs nothing else.
    #[test]
    fn chip_by_chip_parsing_loses_nothing(
        chips in prop::collection::btree_map(
            "[a-z][a-z0-9_]{0,7}-isa-[0-9]{4}",
            prop::collection::btree_map("[A-Z][A-Za-z0-9 ]{0,10}", 1.0f64..120.0, 0..4),
            1..6,
        ),
        broken in any::<prop::sample::Index>(),
    ) {
        let chips: Vec<(String, Vec<(String, f64)>)> = chips
            .into_iter()
            .map(|(c, f)| (c, f.into_iter().map(|(k, v)| (k, (v * 1000.0).round() / 1000.0)).collect()))
            .collect();
        let valid = lm_doc(&chips, None);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&valid).is_ok(), "{valid}");
        let whole = parse_lm_sensors_json(&valid);
        prop_assert!(whole.problems.is_empty(), "{:?}", whole.problems);
        let expected: usize = chips.iter().map(|(_, f)| f.len()).sum();
        prop_assert_eq!(whole.readings.len(), expected);

        // Empty one chip's features and give it the trailing comma.
        let i = broken.index(chips.len());
        let mut defective = chips.clone();
        defective[i].1.clear();
        let text = lm_doc(&defective, Some(i));
        let repaired = parse_lm_sensors_json(&text);
        let kept: usize = defective.iter().map(|(_, f)| f.len()).sum();
        prop_assert_eq!(repaired.readings.len(), kept, "{}", text);
        for r in &repaired.readings {
            prop_assert!(whole.readings.contains(r), "{r:?} not in the whole parse");
        }
        let all_repaired = repaired
            .problems
            .iter()
            .all(|p| matches!(p.what, ProblemKind::Repaired { .. }));
        prop_assert!(all_repaired, "{:?}", repaired.problems);
        prop_assert_eq!(repaired.problems.len(), 1);
    }
}
