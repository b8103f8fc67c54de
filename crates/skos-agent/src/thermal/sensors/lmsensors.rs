//! `sensors -j` (lm-sensors), the last fallback.

use super::{classify, find_on_path, plausible, run_tool, Reading};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Readings from `sensors -j`, when it is on `PATH`.
pub(super) fn read_lm_sensors() -> Vec<Reading> {
    let Some(program) = find_on_path("sensors") else {
        tracing::debug!("sensors (lm-sensors) not on PATH; no readings through it");
        return Vec::new();
    };
    match run_tool(&program, &["-j"]) {
        // `sensors` exits non-zero when one subfeature fails but still
        // prints the others; parse whatever came out.
        Ok((ok, text)) => {
            if !ok {
                tracing::debug!(path = %program.display(), "sensors -j exited with an error");
            }
            parse_lm_sensors_json(&text)
        }
        Err(e) => {
            tracing::debug!(path = %program.display(), error = %e, "sensors -j did not run");
            Vec::new()
        }
    }
}

/// Parses the JSON of `sensors -j`: chips → features → `tempN_input`
/// (°C). Kind from the chip's driver prefix (`coretemp-isa-0000` →
/// `coretemp` → cpu). Path `sensors:<chip>/<feature>`, label the feature
/// name (`<prefix> tempN` when the feature has no label). Invalid JSON or
/// implausible values give nothing.
pub fn parse_lm_sensors_json(text: &str) -> Vec<Reading> {
    let chips: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(chips)) => chips,
        Ok(_) => {
            tracing::debug!("sensors -j: top level is not an object");
            return Vec::new();
        }
        Err(e) => {
            tracing::debug!(error = %e, "sensors -j: not JSON");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (chip_name, chip) in &chips {
        let Value::Object(features) = chip else {
            continue;
        };
        let prefix = driver_prefix(chip_name);
        let kind = classify(prefix);
        for (feature, values) in features {
            let Value::Object(values) = values else {
                continue; // "Adapter": "ISA adapter"
            };
            for (key, value) in values {
                let Some(n) = key
                    .strip_prefix("temp")
                    .and_then(|k| k.strip_suffix("_input"))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let path = format!("sensors:{chip_name}/{feature}");
                let Some(celsius) = value.as_f64().and_then(plausible) else {
                    tracing::debug!(path = %path, value = %value, "skipping implausible sensor value (no reading)");
                    continue;
                };
                let limit = |suffix: &str| {
                    values
                        .get(&format!("temp{n}_{suffix}"))
                        .and_then(Value::as_f64)
                        .and_then(plausible)
                };
                let label = if is_unlabelled(feature) {
                    format!("{prefix} {feature}")
                } else {
                    feature.clone()
                };
                out.push(Reading {
                    path: PathBuf::from(path),
                    label,
                    kind,
                    celsius,
                    source: "lm-sensors",
                    chip: prefix.to_string(),
                    crit: limit("crit"),
                    max: limit("max"),
                });
            }
        }
    }
    out
}

/// `coretemp-isa-0000` → `coretemp`; `iwlwifi_1-virtual-0` → `iwlwifi_1`.
/// lm-sensors names chips `<prefix>-<bus>-<address>`.
fn driver_prefix(chip: &str) -> &str {
    let mut parts = chip.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(prefix)) if !prefix.is_empty() => prefix,
        _ => chip.split('-').next().unwrap_or(chip),
    }
}

/// A feature named after its input (`temp1`): the chip had no label.
fn is_unlabelled(feature: &str) -> bool {
    feature
        .strip_prefix("temp")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thermal::sensors::SensorKind;
    use std::path::Path;

    /// `sensors -j` on a ThinkPad-like laptop (lm-sensors 3.6).
    const LAPTOP: &str = r#"{
   "iwlwifi_1-virtual-0":{
      "Adapter": "Virtual device",
      "temp1":{
         "temp1_input": 41.000
      }
   },
   "coretemp-isa-0000":{
      "Adapter": "ISA adapter",
      "Package id 0":{
         "temp1_input": 58.000,
         "temp1_max": 100.000,
         "temp1_crit": 100.000,
         "temp1_crit_alarm": 0.000
      },
      "Core 0":{
         "temp2_input": 55.000,
         "temp2_max": 100.000,
         "temp2_crit": 100.000,
         "temp2_crit_alarm": 0.000
      },
      "Core 1":{
         "temp3_input": 57.000,
         "temp3_max": 100.000,
         "temp3_crit": 100.000,
         "temp3_crit_alarm": 0.000
      }
   },
   "thinkpad-isa-0000":{
      "Adapter": "ISA adapter",
      "fan1":{
         "fan1_input": 2361.000
      },
      "CPU":{
         "temp1_input": 58.000
      },
      "GPU":{
         "temp2_input": 0.000
      }
   },
   "BAT0-acpi-0":{
      "Adapter": "ACPI interface",
      "in0":{
         "in0_input": 12.426
      }
   },
   "nvme-pci-0400":{
      "Adapter": "PCI adapter",
      "Composite":{
         "temp1_input": 36.850,
         "temp1_max": 81.850,
         "temp1_min": -273.150,
         "temp1_crit": 84.850,
         "temp1_alarm": 0.000
      }
   },
   "acpitz-acpi-0":{
      "Adapter": "ACPI interface",
      "temp1":{
         "temp1_input": 50.000,
         "temp1_crit": 128.000
      }
   }
}
"#;

    /// `sensors -j` on an AMD desktop with a Radeon card.
    const AMD_DESKTOP: &str = r#"{
   "k10temp-pci-00c3":{
      "Adapter": "PCI adapter",
      "Tctl":{
         "temp1_input": 67.250
      },
      "Tccd1":{
         "temp3_input": 61.500
      }
   },
   "amdgpu-pci-0300":{
      "Adapter": "PCI adapter",
      "vddgfx":{
         "in0_input": 0.806
      },
      "edge":{
         "temp1_input": 49.000,
         "temp1_crit": 100.000,
         "temp1_crit_hyst": -273.150,
         "temp1_emergency": 105.000
      },
      "junction":{
         "temp2_input": 52.000,
         "temp2_crit": 110.000
      },
      "mem":{
         "temp3_input": 56.000,
         "temp3_crit": 105.000
      },
      "PPT":{
         "power1_average": 9.000
      }
   }
}
"#;

    fn find<'a>(r: &'a [Reading], path: &str) -> &'a Reading {
        r.iter()
            .find(|x| x.path == Path::new(path))
            .unwrap_or_else(|| panic!("no reading {path} in {r:#?}"))
    }

    #[test]
    fn laptop() {
        let r = parse_lm_sensors_json(LAPTOP);
        // 3 coretemp + iwlwifi + thinkpad CPU + nvme + acpitz; thinkpad
        // GPU at 0.000 is no reading, fan and voltage are not temperatures.
        assert_eq!(r.len(), 7, "{r:#?}");
        let pkg = find(&r, "sensors:coretemp-isa-0000/Package id 0");
        assert_eq!(pkg.kind, SensorKind::Cpu);
        assert_eq!(pkg.celsius, 58.0);
        assert_eq!(pkg.label, "Package id 0");
        assert_eq!(pkg.chip, "coretemp");
        assert_eq!(pkg.source, "lm-sensors");
        assert_eq!(pkg.crit, Some(100.0));
        assert_eq!(pkg.max, Some(100.0));
        let nvme = find(&r, "sensors:nvme-pci-0400/Composite");
        assert_eq!(nvme.kind, SensorKind::Other);
        assert_eq!(nvme.celsius, 36.85);
        assert_eq!(nvme.crit, Some(84.85));
        let wifi = find(&r, "sensors:iwlwifi_1-virtual-0/temp1");
        assert_eq!(wifi.chip, "iwlwifi_1");
        assert_eq!(wifi.label, "iwlwifi_1 temp1");
        assert_eq!(wifi.kind, SensorKind::Other);
        let acpi = find(&r, "sensors:acpitz-acpi-0/temp1");
        assert_eq!(acpi.kind, SensorKind::Other);
        assert_eq!(acpi.crit, Some(128.0));
        assert!(!r
            .iter()
            .any(|x| x.path == Path::new("sensors:thinkpad-isa-0000/GPU")));
        assert_eq!(
            crate::thermal::sensors::hottest(&r, SensorKind::Cpu),
            Some(58.0)
        );
        assert_eq!(crate::thermal::sensors::hottest(&r, SensorKind::Gpu), None);
    }

    #[test]
    fn amd_desktop_gpu_is_gpu() {
        let r = parse_lm_sensors_json(AMD_DESKTOP);
        assert_eq!(r.len(), 5, "{r:#?}");
        let tctl = find(&r, "sensors:k10temp-pci-00c3/Tctl");
        assert_eq!(
            (tctl.kind, tctl.celsius, tctl.chip.as_str()),
            (SensorKind::Cpu, 67.25, "k10temp")
        );
        let edge = find(&r, "sensors:amdgpu-pci-0300/edge");
        assert_eq!(edge.kind, SensorKind::Gpu);
        assert_eq!(edge.crit, Some(100.0));
        assert_eq!(edge.max, None);
        assert_eq!(
            crate::thermal::sensors::hottest(&r, SensorKind::Gpu),
            Some(56.0)
        );
    }

    #[test]
    fn garbage_gives_nothing() {
        assert!(parse_lm_sensors_json("").is_empty());
        assert!(parse_lm_sensors_json("No sensors found!\n").is_empty());
        assert!(parse_lm_sensors_json("[1, 2]").is_empty());
        assert!(parse_lm_sensors_json("{}").is_empty());
        assert!(parse_lm_sensors_json(r#"{"x-isa-0":{"temp1":{"temp1_input":"hot"}}}"#).is_empty());
    }

    #[test]
    fn driver_prefixes() {
        assert_eq!(driver_prefix("coretemp-isa-0000"), "coretemp");
        assert_eq!(driver_prefix("iwlwifi_1-virtual-0"), "iwlwifi_1");
        assert_eq!(driver_prefix("amdgpu-pci-0300"), "amdgpu");
        assert_eq!(driver_prefix("nouveau"), "nouveau");
        assert_eq!(driver_prefix("cpu_thermal-virtual-0"), "cpu_thermal");
    }
}
