//! NVIDIA GPUs: NVML (loaded at run time) and the `nvidia-smi` fallback.

use super::{find_on_path, plausible, run_tool, Reading, SensorKind};
use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::Nvml;
use std::path::PathBuf;

/// GPU temperatures through an initialised NVML.
pub(super) fn read_nvml(nvml: &Nvml) -> Vec<Reading> {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "NVML: cannot count devices");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for index in 0..count {
        let path = format!("nvml:{index}");
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(path = %path, error = %e, "skipping unreadable sensor");
                continue;
            }
        };
        let celsius = match device.temperature(TemperatureSensor::Gpu) {
            Ok(t) => f64::from(t),
            Err(e) => {
                tracing::debug!(path = %path, error = %e, "skipping unreadable sensor");
                continue;
            }
        };
        let Some(celsius) = plausible(celsius) else {
            tracing::debug!(path = %path, celsius, "skipping implausible sensor value (no reading)");
            continue;
        };
        let label = device.name().unwrap_or_else(|_| format!("GPU {index}"));
        let threshold = |t| {
            device
                .temperature_threshold(t)
                .ok()
                .and_then(|c| plausible(f64::from(c)))
        };
        out.push(Reading {
            path: PathBuf::from(path),
            label,
            kind: SensorKind::Gpu,
            celsius,
            source: "nvml",
            chip: "nvidia".into(),
            crit: threshold(TemperatureThreshold::Shutdown),
            max: threshold(TemperatureThreshold::Slowdown),
        });
    }
    out
}

/// GPU temperatures through `nvidia-smi`, when it is on `PATH`.
pub(super) fn read_nvidia_smi() -> Vec<Reading> {
    let Some(program) = find_on_path("nvidia-smi") else {
        tracing::debug!("nvidia-smi not on PATH; no NVIDIA readings through it");
        return Vec::new();
    };
    let text = match run_tool(
        &program,
        &[
            "--query-gpu=index,name,temperature.gpu",
            "--format=csv,noheader,nounits",
        ],
    ) {
        Ok((true, text)) => text,
        Ok((false, _)) => {
            tracing::debug!(path = %program.display(), "nvidia-smi failed (no driver or no GPU)");
            return Vec::new();
        }
        Err(e) => {
            tracing::debug!(path = %program.display(), error = %e, "nvidia-smi did not run");
            return Vec::new();
        }
    };
    parse_nvidia_smi(&text)
        .into_iter()
        .filter_map(|(index, name, celsius)| {
            let path = format!("nvidia-smi:{index}");
            let Some(celsius) = plausible(celsius) else {
                tracing::debug!(path = %path, celsius, "skipping implausible sensor value (no reading)");
                return None;
            };
            Some(Reading {
                path: PathBuf::from(path),
                label: name,
                kind: SensorKind::Gpu,
                celsius,
                source: "nvidia-smi",
                chip: "nvidia".into(),
                crit: None,
                max: None,
            })
        })
        .collect()
}

/// Parses `nvidia-smi --query-gpu=index,name,temperature.gpu
/// --format=csv,noheader,nounits`: one `(index, name, °C)` per GPU line.
/// Lines with `[N/A]` (or `[Not Supported]`), blank lines and anything
/// else that is not `index, name, temperature` are skipped.
pub fn parse_nvidia_smi(text: &str) -> Vec<(u32, String, f64)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.contains("[N/A]") || line.contains("[Not Supported]") {
                return None;
            }
            let (index, rest) = line.split_once(',')?;
            let (name, temp) = rest.rsplit_once(',')?;
            let index = index.trim().parse::<u32>().ok()?;
            let celsius = temp.trim().parse::<f64>().ok().filter(|c| c.is_finite())?;
            let name = name.trim();
            (!name.is_empty()).then(|| (index, name.to_string(), celsius))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_two_gpu_box() {
        let text = "0, NVIDIA GeForce RTX 3090, 64\n1, NVIDIA A100-SXM4-80GB, 41\n";
        assert_eq!(
            parse_nvidia_smi(text),
            vec![
                (0, "NVIDIA GeForce RTX 3090".to_string(), 64.0),
                (1, "NVIDIA A100-SXM4-80GB".to_string(), 41.0),
            ]
        );
    }

    #[test]
    fn skips_na_and_noise_lines() {
        let text = "0, Tesla K80, 38\r\n\
                    1, NVIDIA H100 80GB HBM3, [N/A]\n\
                    \n\
                    2, GRID T4-8Q, [Not Supported]\n\
                    3, Quadro RTX 6000, 52\n";
        assert_eq!(
            parse_nvidia_smi(text),
            vec![
                (0, "Tesla K80".to_string(), 38.0),
                (3, "Quadro RTX 6000".to_string(), 52.0),
            ]
        );
    }

    #[test]
    fn driver_failure_messages_give_nothing() {
        let text = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. \
                    Make sure that the latest NVIDIA driver is installed and running.\n";
        assert!(parse_nvidia_smi(text).is_empty());
        assert!(parse_nvidia_smi("No devices were found\n").is_empty());
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[test]
    fn names_with_commas_keep_them() {
        assert_eq!(
            parse_nvidia_smi("0, Some GPU, Rev. 2, 55\n"),
            vec![(0, "Some GPU, Rev. 2".to_string(), 55.0)]
        );
    }
}
