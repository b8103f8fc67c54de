//! NVIDIA GPUs: NVML (loaded at run time) and the `nvidia-smi` fallback.

use super::chips::{self, limit};
use super::{find_on_path, run_tool, ProblemKind, Reading, Role, Scan, SensorKind, ToolBudget};
use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::Nvml;
use std::path::PathBuf;

/// The chip name of NVIDIA readings.
const CHIP: &str = "nvidia";

/// The `nvidia-smi` query: one `index, name, temperature` line per GPU.
const QUERY: [&str; 2] = [
    "--query-gpu=index,name,temperature.gpu",
    "--format=csv,noheader,nounits",
];

/// `nvidia-smi` exit status 14: "infoROM is corrupted". A warning: the
/// rows it prints are the GPUs' real values.
const EXIT_INFOROM_CORRUPTED: i32 = 14;

/// GPU temperatures through an initialised NVML; shutdown and slowdown
/// thresholds as `crit` and `max`.
pub(super) fn read_nvml(nvml: &Nvml) -> Scan {
    let mut scan = Scan::default();
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            scan.problem(
                "nvml",
                ProblemKind::Unreadable {
                    error: e.to_string(),
                },
            );
            return scan;
        }
    };
    for index in 0..count {
        let path = format!("nvml:{index}");
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                scan.problem(
                    &path,
                    ProblemKind::Unreadable {
                        error: e.to_string(),
                    },
                );
                continue;
            }
        };
        let celsius = match device.temperature(TemperatureSensor::Gpu) {
            Ok(t) => f64::from(t),
            Err(e) => {
                scan.problem(
                    &path,
                    ProblemKind::Unreadable {
                        error: e.to_string(),
                    },
                );
                continue;
            }
        };
        let celsius = match chips::validate(CHIP, celsius) {
            Ok(c) => c,
            Err(reason) => {
                scan.problem(&path, ProblemKind::Invalid { celsius, reason });
                continue;
            }
        };
        let label = device.name().unwrap_or_else(|_| format!("GPU {index}"));
        let threshold = |t| {
            device
                .temperature_threshold(t)
                .ok()
                .and_then(|c| limit(f64::from(c)))
        };
        scan.readings.push(Reading {
            path: PathBuf::from(path),
            label,
            kind: SensorKind::Gpu,
            role: Role::Die,
            counts: true,
            celsius,
            source: "nvml",
            chip: CHIP.into(),
            crit: threshold(TemperatureThreshold::Shutdown),
            max: threshold(TemperatureThreshold::Slowdown),
        });
    }
    scan
}

/// GPU temperatures through `nvidia-smi`, when it is on `PATH`; killed
/// when it outlives `budget`.
pub(super) fn read_nvidia_smi(budget: &ToolBudget) -> Scan {
    let Some(program) = find_on_path("nvidia-smi") else {
        tracing::debug!("nvidia-smi not on PATH; no NVIDIA readings through it");
        return Scan::default();
    };
    match run_tool(&program, &QUERY, budget) {
        Ok(out) => nvidia_smi_scan(out.code, &out.stdout),
        Err(e) => {
            let mut scan = Scan::default();
            scan.problem(
                "nvidia-smi",
                ProblemKind::ToolFailed {
                    code: None,
                    message: e.to_string(),
                },
            );
            scan
        }
    }
}

/// What one run of `nvidia-smi --query-gpu=index,name,temperature.gpu
/// --format=csv,noheader,nounits` that exited with `code` tells: its rows
/// (see [`parse_nvidia_smi`]) when it succeeded or only warned that an
/// infoROM is corrupted (exit 14); nothing but a `tool_failed` problem
/// with its first line otherwise (exit 6: no devices, 9: no driver, 18:
/// driver/library version mismatch, a signal).
pub fn nvidia_smi_scan(code: Option<i32>, stdout: &str) -> Scan {
    match code {
        Some(0) => parse_nvidia_smi(stdout),
        Some(EXIT_INFOROM_CORRUPTED) => {
            let mut scan = Scan::default();
            scan.problem(
                "nvidia-smi",
                ProblemKind::ToolMessage {
                    message: "exit 14: infoROM is corrupted; rows kept".into(),
                },
            );
            scan.extend(parse_nvidia_smi(stdout));
            scan
        }
        _ => {
            let mut scan = Scan::default();
            let message = stdout
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no output")
                .to_string();
            scan.problem("nvidia-smi", ProblemKind::ToolFailed { code, message });
            scan
        }
    }
}

/// Parses the rows of `nvidia-smi --query-gpu=index,name,temperature.gpu
/// --format=csv,noheader,nounits`: one reading per `index, name, °C` line,
/// path `nvidia-smi:<index>`, label the GPU name (commas in it kept). A row
/// whose temperature is `[N/A]`, `[Not Supported]` or another bracketed
/// word (a vGPU or MIG slice, an old driver) is a `no_value` problem; a
/// value the GPU cannot give is an `invalid` problem; a `WARNING:` line a
/// `tool_message`; any other line that is not a row an `unparsed` problem
/// at `nvidia-smi:line <N>`. Blank lines are skipped.
pub fn parse_nvidia_smi(text: &str) -> Scan {
    let mut scan = Scan::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("WARNING") {
            scan.problem(
                "nvidia-smi",
                ProblemKind::ToolMessage {
                    message: line.to_string(),
                },
            );
            continue;
        }
        let row = line.split_once(',').and_then(|(index, rest)| {
            let (name, temp) = rest.rsplit_once(',')?;
            let index = index.trim().parse::<u32>().ok()?;
            let name = name.trim();
            (!name.is_empty()).then_some((index, name, temp.trim()))
        });
        let Some((index, name, temp)) = row else {
            scan.problem(
                format!("nvidia-smi:line {}", n + 1),
                ProblemKind::Unparsed {
                    text: line.to_string(),
                    reason: "not `index, name, temperature`".into(),
                },
            );
            continue;
        };
        let at = format!("nvidia-smi:{index}");
        if temp.starts_with('[') || temp.eq_ignore_ascii_case("N/A") {
            scan.problem(
                &at,
                ProblemKind::NoValue {
                    text: temp.to_string(),
                },
            );
            continue;
        }
        let Some(celsius) = temp.parse::<f64>().ok() else {
            scan.problem(
                &at,
                ProblemKind::NotANumber {
                    text: temp.to_string(),
                },
            );
            continue;
        };
        let celsius = match chips::validate(CHIP, celsius) {
            Ok(c) => c,
            Err(reason) => {
                scan.problem(&at, ProblemKind::Invalid { celsius, reason });
                continue;
            }
        };
        scan.readings.push(Reading {
            path: PathBuf::from(at),
            label: name.to_string(),
            kind: SensorKind::Gpu,
            role: Role::Die,
            counts: true,
            celsius,
            source: "nvidia-smi",
            chip: CHIP.into(),
            crit: None,
            max: None,
        });
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thermal::sensors::{Invalid, Problem};

    /// (index, name, °C) of every reading, for short assertions.
    fn rows(scan: &Scan) -> Vec<(String, String, f64)> {
        scan.readings
            .iter()
            .map(|r| (r.path.display().to_string(), r.label.clone(), r.celsius))
            .collect()
    }

    fn row(path: &str, name: &str, c: f64) -> (String, String, f64) {
        (path.to_string(), name.to_string(), c)
    }

    #[test]
    fn parses_a_two_gpu_box() {
        let scan =
            parse_nvidia_smi("0, NVIDIA GeForce RTX 3090, 64\n1, NVIDIA A100-SXM4-80GB, 41\n");
        assert_eq!(
            rows(&scan),
            vec![
                row("nvidia-smi:0", "NVIDIA GeForce RTX 3090", 64.0),
                row("nvidia-smi:1", "NVIDIA A100-SXM4-80GB", 41.0),
            ]
        );
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let r = &scan.readings[0];
        assert_eq!(
            (r.kind, r.role, r.counts, r.source, r.chip.as_str()),
            (SensorKind::Gpu, Role::Die, true, "nvidia-smi", "nvidia")
        );
    }

    #[test]
    fn na_rows_give_nothing_and_say_so() {
        let text = "0, Tesla K80, 38\r\n\
                    1, NVIDIA H100 80GB HBM3, [N/A]\n\
                    \n\
                    2, GRID T4-8Q, [Not Supported]\n\
                    3, Quadro RTX 6000, 52\n\
                    4, Tesla T4, [Unknown Error]\n";
        let scan = parse_nvidia_smi(text);
        assert_eq!(
            rows(&scan),
            vec![
                row("nvidia-smi:0", "Tesla K80", 38.0),
                row("nvidia-smi:3", "Quadro RTX 6000", 52.0),
            ]
        );
        assert_eq!(
            scan.problems,
            vec![
                Problem::new(
                    "nvidia-smi:1",
                    ProblemKind::NoValue {
                        text: "[N/A]".into()
                    }
                ),
                Problem::new(
                    "nvidia-smi:2",
                    ProblemKind::NoValue {
                        text: "[Not Supported]".into()
                    }
                ),
                Problem::new(
                    "nvidia-smi:4",
                    ProblemKind::NoValue {
                        text: "[Unknown Error]".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn lines_that_are_not_rows_are_reported_with_their_line() {
        let text =
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n\
                    0, A40, hot\n\
                    1, A40, 255\n";
        let scan = parse_nvidia_smi(text);
        assert!(scan.readings.is_empty(), "{:?}", scan.readings);
        assert_eq!(scan.problems.len(), 3, "{:?}", scan.problems);
        assert_eq!(scan.problems[0].at, "nvidia-smi:line 1");
        assert!(matches!(
            scan.problems[0].what,
            ProblemKind::Unparsed { .. }
        ));
        assert_eq!(
            scan.problems[1],
            Problem::new(
                "nvidia-smi:0",
                ProblemKind::NotANumber { text: "hot".into() }
            )
        );
        assert_eq!(
            scan.problems[2],
            Problem::new(
                "nvidia-smi:1",
                ProblemKind::Invalid {
                    celsius: 255.0,
                    reason: Invalid::Stuck
                }
            )
        );
        assert!(parse_nvidia_smi("").readings.is_empty());
        assert!(parse_nvidia_smi("").problems.is_empty());
    }

    #[test]
    fn names_with_commas_keep_them() {
        assert_eq!(
            rows(&parse_nvidia_smi("0, Some GPU, Rev. 2, 55\n")),
            vec![row("nvidia-smi:0", "Some GPU, Rev. 2", 55.0)]
        );
    }

    #[test]
    fn exit_status_decides_whether_rows_count() {
        let rows_text = "0, NVIDIA A100-PCIE-40GB, 33\n";
        assert_eq!(nvidia_smi_scan(Some(0), rows_text).readings.len(), 1);

        // Exit 14: infoROM warning; the rows are real.
        let warned = nvidia_smi_scan(
            Some(14),
            "WARNING: infoROM is corrupted at gpu 0000:02:00.0\n0, NVIDIA A100-PCIE-40GB, 33\n",
        );
        assert_eq!(
            rows(&warned),
            vec![row("nvidia-smi:0", "NVIDIA A100-PCIE-40GB", 33.0)]
        );
        assert!(warned
            .problems
            .iter()
            .all(|p| matches!(p.what, ProblemKind::ToolMessage { .. })));
        assert_eq!(warned.problems.len(), 2, "{:?}", warned.problems);

        // Any other failure voids the output, even rows that look fine.
        for code in [
            Some(2),
            Some(6),
            Some(9),
            Some(15),
            Some(18),
            Some(255),
            None,
        ] {
            let scan = nvidia_smi_scan(code, rows_text);
            assert!(scan.readings.is_empty(), "{code:?}");
            assert_eq!(
                scan.problems,
                vec![Problem::new(
                    "nvidia-smi",
                    ProblemKind::ToolFailed {
                        code,
                        message: "0, NVIDIA A100-PCIE-40GB, 33".into()
                    }
                )]
            );
        }
        let silent = nvidia_smi_scan(Some(9), "");
        assert_eq!(
            silent.problems[0].what,
            ProblemKind::ToolFailed {
                code: Some(9),
                message: "no output".into()
            }
        );
    }
}
