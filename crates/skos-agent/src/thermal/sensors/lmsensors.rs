//! `sensors -j` (lm-sensors), the last fallback.
//!
//! The output is parsed chip block by chip block, so one block that is not
//! JSON costs that chip only: lm-sensors 3.6.0 leaves a trailing comma in
//! a chip whose features are all ignored (`"Adapter": "...",` then `}`),
//! which is repaired; any other broken block, or output cut short, is
//! reported and every complete chip is kept.

use super::chips::{self, classify, settle_counts};
use super::{find_on_path, run_tool, ProblemKind, Reading, Role, Scan, ToolBudget};
use serde_json::{Map, Value};
use skos_core::escape::ShowPath;
use std::path::PathBuf;

/// Readings from `sensors -j`, when it is on `PATH`. Its stderr lines
/// (`ERROR: Can't get value of subfeature temp1_input: Can't read`) are
/// reported as problems. Killed when it outlives `budget`.
pub(super) fn read_lm_sensors(budget: &ToolBudget) -> Scan {
    let Some(program) = find_on_path("sensors") else {
        tracing::debug!("sensors (lm-sensors) not on PATH; no readings through it");
        return Scan::default();
    };
    match run_tool(&program, &["-j"], budget) {
        // `sensors` exits non-zero when one subfeature fails but still
        // prints the others; parse whatever came out.
        Ok(out) => {
            if out.code != Some(0) {
                tracing::debug!(path = %program.escaped(), code = ?out.code, "sensors -j exited with an error");
            }
            let mut scan = Scan::default();
            for line in out.stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
                scan.problem(
                    "sensors",
                    ProblemKind::ToolMessage {
                        message: line.to_string(),
                    },
                );
            }
            scan.extend(parse_lm_sensors_json(&out.stdout));
            scan
        }
        Err(e) => {
            let mut scan = Scan::default();
            scan.problem(
                "sensors",
                ProblemKind::ToolFailed {
                    code: None,
                    message: e.to_string(),
                },
            );
            scan
        }
    }
}

/// Parses the JSON of `sensors -j`: chips → features → `tempN_input`
/// (°C), with `tempN_crit` and `tempN_max` as limits. Kind and role from
/// the chip's driver prefix and the feature name (`coretemp-isa-0000` →
/// `coretemp` → cpu; `Package id 0` → package). Path
/// `sensors:<chip>/<feature>`, label the feature name (`<prefix> tempN`
/// when the feature has no label).
///
/// Each chip block is parsed on its own: a block with lm-sensors 3.6's
/// trailing comma is repaired (a `repaired` problem), any other block that
/// is not JSON is left out (an `unparsed` problem naming the chip), and so
/// is a block cut short at the end of the output. An empty feature (the
/// tool could not read it), a value that is not a number and a value the
/// chip cannot give are problems too.
pub fn parse_lm_sensors_json(text: &str) -> Scan {
    let mut scan = Scan::default();
    let split = split_chips(text);
    for block in split.chips {
        let at = format!("sensors:{}", block.name);
        let value = match serde_json::from_str::<Value>(block.body) {
            Ok(v) => v,
            Err(first) => match serde_json::from_str::<Value>(&strip_trailing_commas(block.body)) {
                Ok(v) => {
                    scan.problem(
                        &at,
                        ProblemKind::Repaired {
                            defect: format!("trailing comma ({first})"),
                        },
                    );
                    v
                }
                Err(_) => {
                    scan.problem(
                        &at,
                        ProblemKind::Unparsed {
                            text: excerpt(block.body),
                            reason: first.to_string(),
                        },
                    );
                    continue;
                }
            },
        };
        let Value::Object(features) = value else {
            scan.problem(
                &at,
                ProblemKind::Unparsed {
                    text: excerpt(block.body),
                    reason: "a chip is not a JSON object".into(),
                },
            );
            continue;
        };
        chip(&block.name, &features, &mut scan);
    }
    if let Some((text, reason)) = split.rest {
        scan.problem("sensors", ProblemKind::Unparsed { text, reason });
    }
    scan
}

/// The readings of one chip block.
fn chip(chip_name: &str, features: &Map<String, Value>, scan: &mut Scan) {
    let prefix = driver_prefix(chip_name);
    let kind = classify(prefix);
    let mut declared: Vec<Role> = Vec::new();
    let mut readings: Vec<Reading> = Vec::new();
    for (feature, values) in features {
        let Value::Object(values) = values else {
            continue; // "Adapter": "ISA adapter"
        };
        let path = format!("sensors:{chip_name}/{feature}");
        if !values.keys().any(|k| k.ends_with("_input")) {
            scan.problem(
                &path,
                ProblemKind::NoValue {
                    text: Value::Object(values.clone()).to_string(),
                },
            );
            continue;
        }
        let label = (!is_unlabelled(feature)).then_some(feature.as_str());
        for (key, value) in values {
            let Some(n) = key
                .strip_prefix("temp")
                .and_then(|k| k.strip_suffix("_input"))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let role = chips::role(prefix, label);
            declared.push(role);
            let Some(celsius) = value.as_f64() else {
                scan.problem(
                    &path,
                    ProblemKind::NotANumber {
                        text: value.to_string(),
                    },
                );
                continue;
            };
            let celsius = match chips::validate(prefix, celsius) {
                Ok(c) => c,
                Err(reason) => {
                    scan.problem(&path, ProblemKind::Invalid { celsius, reason });
                    continue;
                }
            };
            let limit = |suffix: &str| {
                values
                    .get(&format!("temp{n}_{suffix}"))
                    .and_then(Value::as_f64)
                    .and_then(chips::limit)
            };
            readings.push(Reading {
                path: PathBuf::from(&path),
                label: label.map_or_else(|| format!("{prefix} {feature}"), str::to_string),
                kind,
                role,
                counts: true,
                celsius,
                source: "lm-sensors",
                chip: prefix.to_string(),
                crit: limit("crit"),
                max: limit("max"),
            });
        }
    }
    settle_counts(&mut readings, &declared);
    scan.readings.extend(readings);
}

/// One `"<chip>": <value>` member of the top-level object, unparsed.
struct ChipBlock<'a> {
    name: String,
    body: &'a str,
}

/// The chip blocks of a `sensors -j` document, in order, and what could
/// not be split (text and why) when the document is not a well-formed
/// object of members.
struct Split<'a> {
    chips: Vec<ChipBlock<'a>>,
    rest: Option<(String, String)>,
}

/// Splits the top-level object into its members without parsing them,
/// tracking strings, escapes and nesting, so one broken member does not
/// hide the others. A trailing comma after the last member is tolerated.
fn split_chips(text: &str) -> Split<'_> {
    let bytes = text.as_bytes();
    let mut chips = Vec::new();
    let fail = |chips, at: usize, reason: &str| Split {
        chips,
        rest: Some((
            excerpt(text.get(at..).unwrap_or_default()),
            reason.to_string(),
        )),
    };
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        if i >= bytes.len() {
            return fail(chips, i, "no output");
        }
        return fail(chips, i, "not a JSON object");
    }
    i += 1;
    loop {
        i = skip_ws(bytes, i);
        while bytes.get(i) == Some(&b',') {
            i = skip_ws(bytes, i + 1);
        }
        match bytes.get(i) {
            Some(b'}') => break,
            Some(b'"') => {}
            Some(_) => return fail(chips, i, "expected a chip name"),
            None => return fail(chips, i, "output ends before the closing brace"),
        }
        let Some(name_end) = string_end(bytes, i) else {
            return fail(chips, i, "output ends inside a chip name");
        };
        let raw_name = &text[i..name_end];
        let name = serde_json::from_str::<String>(raw_name)
            .unwrap_or_else(|_| raw_name.trim_matches('"').to_string());
        i = skip_ws(bytes, name_end);
        if bytes.get(i) != Some(&b':') {
            return fail(chips, i, "expected ':' after a chip name");
        }
        let start = skip_ws(bytes, i + 1);
        let Some(end) = value_end(bytes, start) else {
            return fail(chips, start, &format!("output ends inside chip {name}"));
        };
        chips.push(ChipBlock {
            name,
            body: &text[start..end],
        });
        i = end;
    }
    Split { chips, rest: None }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The index just past the string starting at `bytes[start] == b'"'`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the value starting at `start`: an object or array
/// up to its matching bracket, a string, or a scalar up to the next `,` or
/// `}` of this level. `None` when the text ends first.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while let Some(&b) = bytes.get(i) {
                match b {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = start;
            while let Some(&b) = bytes.get(i) {
                if b == b',' || b == b'}' {
                    return Some(i);
                }
                i += 1;
            }
            None
        }
    }
}

/// `text` without the commas that directly precede a `}` or `]` (outside
/// strings): the defect of lm-sensors 3.6.0 (lm-sensors#513).
fn strip_trailing_commas(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i = string_end(bytes, i).unwrap_or(bytes.len());
                continue;
            }
            b',' => {
                let next = skip_ws(bytes, i + 1);
                if matches!(bytes.get(next), Some(b'}' | b']')) {
                    out.push_str(&text[copied..i]);
                    copied = i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

/// The first 80 characters of `text`, trimmed, for a problem.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
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
    use crate::thermal::sensors::{Invalid, Problem, SensorKind};
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
        let scan = parse_lm_sensors_json(LAPTOP);
        let r = scan.readings;
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
        assert_eq!(
            scan.problems,
            vec![Problem::new(
                "sensors:thinkpad-isa-0000/GPU",
                ProblemKind::Invalid {
                    celsius: 0.0,
                    reason: Invalid::NoValue
                }
            )]
        );
        assert_eq!(pkg.role, Role::Package);
        assert_eq!(
            find(&r, "sensors:coretemp-isa-0000/Core 1").role,
            Role::Core
        );
        assert!(r.iter().all(|x| x.counts));
    }

    #[test]
    fn amd_desktop_gpu_is_gpu() {
        let r = parse_lm_sensors_json(AMD_DESKTOP).readings;
        assert_eq!(r.len(), 5, "{r:#?}");
        let tctl = find(&r, "sensors:k10temp-pci-00c3/Tctl");
        assert_eq!(
            (tctl.kind, tctl.celsius, tctl.chip.as_str()),
            (SensorKind::Cpu, 67.25, "k10temp")
        );
        // No Tdie: Tctl has no offset and counts beside the CCDs.
        assert_eq!((tctl.role, tctl.counts), (Role::Control, true));
        let ccd = find(&r, "sensors:k10temp-pci-00c3/Tccd1");
        assert_eq!((ccd.role, ccd.counts), (Role::Ccd, true));
        assert_eq!(
            crate::thermal::sensors::hottest(&r, SensorKind::Cpu),
            Some(67.25),
            "Tctl, the control temperature"
        );
        let junction = find(&r, "sensors:amdgpu-pci-0300/junction");
        assert_eq!(
            (junction.role, junction.crit),
            (Role::Junction, Some(110.0))
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
        for (text, problem) in [
            ("", Some("no output")),
            ("No sensors found!\n", Some("not a JSON object")),
            ("[1, 2]", Some("not a JSON object")),
            ("{}", None),
        ] {
            let scan = parse_lm_sensors_json(text);
            assert!(scan.readings.is_empty(), "{text:?}");
            let reasons: Vec<&str> = scan
                .problems
                .iter()
                .filter_map(|p| match &p.what {
                    ProblemKind::Unparsed { reason, .. } => Some(reason.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(reasons, problem.into_iter().collect::<Vec<_>>(), "{text:?}");
        }
        let hot = parse_lm_sensors_json(r#"{"x-isa-0":{"temp1":{"temp1_input":"hot"}}}"#);
        assert!(hot.readings.is_empty());
        assert_eq!(
            hot.problems,
            vec![Problem::new(
                "sensors:x-isa-0/temp1",
                ProblemKind::NotANumber {
                    text: "\"hot\"".into()
                }
            )]
        );
    }

    #[test]
    fn driver_prefixes() {
        assert_eq!(driver_prefix("coretemp-isa-0000"), "coretemp");
        assert_eq!(driver_prefix("iwlwifi_1-virtual-0"), "iwlwifi_1");
        assert_eq!(driver_prefix("amdgpu-pci-0300"), "amdgpu");
        assert_eq!(driver_prefix("nouveau"), "nouveau");
        assert_eq!(driver_prefix("cpu_thermal-virtual-0"), "cpu_thermal");
    }

    #[test]
    fn a_broken_chip_block_costs_that_chip_only() {
        // lm-sensors 3.6.0's trailing comma, a block that is not JSON at all,
        // and a good chip after them.
        let text = r#"{
   "acpitz-acpi-0":{
      "Adapter": "ACPI interface",
   },
   "broken-isa-0000":{
      "Adapter": "ISA adapter",
      "temp1":{ "temp1_input": 41.0 "temp1_max": 80.0 }
   },
   "coretemp-isa-0000":{
      "Adapter": "ISA adapter",
      "Package id 0":{ "temp1_input": 58.000, "temp1_crit": 100.0 }
   },
}"#;
        let scan = parse_lm_sensors_json(text);
        assert_eq!(scan.readings.len(), 1, "{:#?}", scan.readings);
        let pkg = &scan.readings[0];
        assert_eq!(
            (pkg.label.as_str(), pkg.celsius, pkg.crit),
            ("Package id 0", 58.0, Some(100.0))
        );
        assert_eq!(scan.problems.len(), 2, "{:#?}", scan.problems);
        assert_eq!(scan.problems[0].at, "sensors:acpitz-acpi-0");
        assert!(matches!(
            scan.problems[0].what,
            ProblemKind::Repaired { .. }
        ));
        assert_eq!(scan.problems[1].at, "sensors:broken-isa-0000");
        assert!(matches!(
            scan.problems[1].what,
            ProblemKind::Unparsed { .. }
        ));
    }

    #[test]
    fn output_cut_short_keeps_the_complete_chips() {
        let full = LAPTOP;
        let cut = &full[..full.find("\"Composite\"").unwrap_or(full.len())];
        let scan = parse_lm_sensors_json(cut);
        // iwlwifi, 3 coretemp, thinkpad CPU; nvme and acpitz are lost.
        assert_eq!(scan.readings.len(), 5, "{:#?}", scan.readings);
        assert_eq!(
            scan.problems.last().map(|p| (&p.at, &p.what)),
            Some((
                &"sensors".to_string(),
                &ProblemKind::Unparsed {
                    text: r#"{
      "Adapter": "PCI adapter","#
                        .into(),
                    reason: "output ends inside chip nvme-pci-0400".into()
                }
            ))
        );
    }

    #[test]
    fn strings_with_braces_and_commas_do_not_confuse_the_split() {
        let text = r#"{"odd-isa-0":{"Adapter":"a, }\" {","T,}":{"temp1_input":40.5}},"b-isa-0":{"temp1":{"temp1_input":30.0}}}"#;
        let scan = parse_lm_sensors_json(text);
        assert!(scan.problems.is_empty(), "{:#?}", scan.problems);
        let labels: Vec<&str> = scan.readings.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["T,}", "b temp1"]);
        assert_eq!(
            strip_trailing_commas(r#"{"a": ",}", "b": [1, 2,], }"#),
            r#"{"a": ",}", "b": [1, 2] }"#
        );
    }

    #[test]
    fn freezer_probe_and_stuck_values() {
        let text = r#"{
   "w1_slave_temp-virtual-0":{
      "Adapter": "Virtual device",
      "temp1":{ "temp1_input": -18.312 }
   },
   "w1_slave_temp-virtual-1":{
      "Adapter": "Virtual device",
      "temp1":{ "temp1_input": 127.000 }
   },
   "lm75-i2c-1-48":{
      "Adapter": "SMBus I801 adapter",
      "temp1":{ "temp1_input": -128.000, "temp1_max": 80.0 }
   }
}"#;
        let scan = parse_lm_sensors_json(text);
        assert_eq!(scan.readings.len(), 1, "{:#?}", scan.readings);
        let probe = &scan.readings[0];
        assert_eq!(
            (probe.celsius, probe.kind, probe.role, probe.label.as_str()),
            (
                -18.312,
                SensorKind::Other,
                Role::Other,
                "w1_slave_temp temp1"
            )
        );
        assert_eq!(
            scan.problems
                .iter()
                .map(|p| (p.at.as_str(), p.what.clone()))
                .collect::<Vec<_>>(),
            [
                (
                    "sensors:w1_slave_temp-virtual-1/temp1",
                    ProblemKind::Invalid {
                        celsius: 127.0,
                        reason: Invalid::Stuck
                    }
                ),
                (
                    "sensors:lm75-i2c-1-48/temp1",
                    ProblemKind::Invalid {
                        celsius: -128.0,
                        reason: Invalid::Stuck
                    }
                ),
            ]
        );
    }
}
