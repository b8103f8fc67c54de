//! Property-based fuzzing of the agent's parsers: sysfs files with any
//! content, tool output, cgroup and cpufreq files. Never a panic, never an
//! invented value.

mod common;
use common::no_tools;
use proptest::prelude::*;
use skos_agent::sensors::{parse_lm_sensors_json, parse_nvidia_smi, Sensors};
use skos_agent::throttle::{capped_freq, parse_cfs_quota, parse_cpu_list, parse_cpu_max};
use skos_testsupport::sysfs::FakeSysfs;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sysfs_files_with_any_content(temp in prop::collection::vec(any::<u8>(), 0..40),
                                    label in prop::collection::vec(any::<u8>(), 0..40),
                                    name in "[ -~]{0,20}") {
        let sys = FakeSysfs::new();
        let h = sys.coretemp(50.0, &[]);
        std::fs::write(h.dir().join("temp1_input"), &temp).unwrap();
        std::fs::write(h.dir().join("temp1_label"), &label).unwrap();
        std::fs::write(h.dir().join("name"), name.as_bytes()).unwrap();
        let zone = sys.acpitz_zone(40.0);
        std::fs::write(zone.join("temp"), &temp).unwrap();
        for r in Sensors::new(sys.root(), no_tools()).read_all() {
            // Whatever was read is a real temperature its kind of sensor can give, from a file under the root.
            prop_assert!(r.celsius.is_finite() && r.celsius >= -55.0 && r.celsius <= 150.0, "{r:?}");
            prop_assert!(r.path.starts_with(sys.root()));
        }
    }

    #[test]
    fn nvidia_smi_output(text in "(?s).{0,400}") {
        for r in parse_nvidia_smi(&text).readings {
            prop_assert!(r.celsius.is_finite());
        }
    }

    #[test]
    fn lm_sensors_output(text in "(?s).{0,400}") {
        for r in parse_lm_sensors_json(&text).readings {
            prop_assert!(r.celsius.is_finite());
        }
    }

    #[test]
    fn lm_sensors_json_shapes(chip in "[a-z0-9_-]{1,16}", feature in "[a-zA-Z0-9 _-]{1,16}", key in "[a-z0-9_]{1,16}", v in any::<f64>()) {
        let text = serde_json::json!({ chip: { "Adapter": "x", feature: { key: v } } }).to_string();
        for r in parse_lm_sensors_json(&text).readings {
            prop_assert!(r.celsius.is_finite());
        }
    }

    #[test]
    fn cgroup_and_cpufreq_files(text in "(?s).{0,60}") {
        let _ = parse_cpu_list(&text);
        let _ = parse_cpu_max(&text);
        let _ = parse_cfs_quota(&text);
    }

    #[test]
    fn frequency_caps_stay_in_range(min in 0u64..10_000_000, span in 0u64..10_000_000, level in 0u8..=100) {
        let max = min + span;
        let cap = capped_freq(min, max, level);
        prop_assert!(cap >= min && cap <= max, "{min} {max} {level} -> {cap}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `wg show <if> dump` output of any shape: parsed or refused, and a
    /// private key never survives parsing.
    #[test]
    fn wg_dumps(lines in prop::collection::vec(prop::collection::vec("[A-Za-z0-9+/=:.\\[\\]()-]{0,48}", 0..10), 0..6)) {
        let text = lines.iter().map(|l| l.join("\t")).collect::<Vec<_>>().join("\n");
        if let Ok(dump) = skos_agent::mesh::wg::parse_dump(&text) {
            let shown = format!("{dump:?}");
            if let Some(first) = lines.first().and_then(|l| l.first()).filter(|k| k.len() >= 40) {
                prop_assert!(!shown.contains(first.as_str()), "private key kept: {shown}");
            }
        }
    }
}
