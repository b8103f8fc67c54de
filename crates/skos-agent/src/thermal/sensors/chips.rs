//! Per-driver knowledge: what a chip is (CPU, GPU, other), what each of its
//! inputs measures ([`Role`]), which input stands for the CPU, and which
//! values a kind of sensor can physically give.
//!
//! The same table serves sysfs (hwmon `name` + `tempN_label`, thermal zone
//! `type`) and `sensors -j` (chip prefix + feature name); the README's
//! "Temperature sensors" section documents it.

use super::{Invalid, Reading, Role, SensorKind};

/// Sensor kind from a chip name: hwmon `name`, thermal zone type, or the
/// driver prefix of an lm-sensors chip.
pub(crate) fn classify(chip: &str) -> SensorKind {
    let chip = chip.trim().to_ascii_lowercase();
    match chip.as_str() {
        "coretemp" | "k10temp" | "zenpower" | "k8temp" | "via_cputemp" | "x86_pkg_temp"
        | "cpu_thermal" | "cpu-thermal" | "soc_thermal" | "soc-thermal" | "tcpu" | "mtktscpu" => {
            SensorKind::Cpu
        }
        "amdgpu" | "radeon" | "nouveau" | "nvidia" | "gpu-thermal" | "gpu_thermal" => {
            SensorKind::Gpu
        }
        // ARM SoCs name their zones after the cluster or the core:
        // cpu0-thermal, cpu-big0-thermal, cpu-little-thermal,
        // cpuss-0-thermal, cpu-1-3-usr, CPU-therm (Tegra); and the GPU's
        // gpu0-thermal, gpuss-1-thermal, GPU-therm.
        c if c.starts_with("cpu") => SensorKind::Cpu,
        c if c.starts_with("gpu") => SensorKind::Gpu,
        _ => SensorKind::Other,
    }
}

/// What one input measures, from its chip (as for [`classify`]) and its
/// label (`tempN_label`, the lm-sensors feature name; `None` when the
/// input has no label).
///
/// * k10temp, zenpower: `Tdie` is the die ([`Role::Die`]), `Tccd1`..
///   `Tccd8` one core complex die ([`Role::Ccd`]), `Tctl` the fan-control
///   value ([`Role::Control`], +20 °C or +27 °C over the die on some
///   Ryzen 1000/2000 and Threadripper parts); an unlabelled input (the one
///   input of older families) is Tctl.
/// * coretemp: `Package id N` (`Physical id N` on older kernels) is the
///   package, `Core N` one core; k8temp inputs are cores.
/// * thermal zone `x86_pkg_temp` is the package; every other CPU chip or
///   zone (cpu_thermal, soc_thermal, cpu0-thermal, cpu-big0-thermal,
///   cpuss-0-thermal, via_cputemp, ...) is a die.
/// * amdgpu: `edge`, `junction` (the hot spot), `mem`; every other GPU
///   input (nouveau, radeon, NVIDIA through NVML or `nvidia-smi`) is the
///   GPU die.
/// * everything else (nvme, drivetemp, acpitz, pch_*, iwlwifi, Super I/O
///   chips, 1-Wire probes, ...) is [`Role::Other`].
pub(crate) fn role(chip: &str, label: Option<&str>) -> Role {
    let chip = chip.trim().to_ascii_lowercase();
    let label = label.map(str::trim);
    match (classify(&chip), chip.as_str()) {
        (SensorKind::Cpu, "k10temp" | "zenpower") => match label {
            Some("Tdie") => Role::Die,
            Some("Tctl") | None => Role::Control,
            Some(l) if l.starts_with("Tccd") => Role::Ccd,
            Some(_) => Role::Die,
        },
        (SensorKind::Cpu, "coretemp") => match label {
            Some(l) if l.starts_with("Package id") || l.starts_with("Physical id") => Role::Package,
            Some(l) if l.starts_with("Core") => Role::Core,
            None => Role::Core,
            Some(_) => Role::Die,
        },
        (SensorKind::Cpu, "k8temp") => Role::Core,
        (SensorKind::Cpu, "x86_pkg_temp") => Role::Package,
        (SensorKind::Cpu, _) => Role::Die,
        (SensorKind::Gpu, "amdgpu") => match label {
            Some("edge") => Role::Edge,
            Some("junction") => Role::Junction,
            Some("mem") => Role::Memory,
            _ => Role::Die,
        },
        (SensorKind::Gpu, _) => Role::Die,
        (SensorKind::Other, _) => Role::Other,
    }
}

/// Sets `counts` on the readings of one chip (one hwmon device, one
/// lm-sensors chip): a [`Role::Control`] input (k10temp/zenpower `Tctl`)
/// does not count when the same chip gave a valid [`Role::Die`] reading
/// (`Tdie`): the kernel shows `Tdie` exactly on the parts whose `Tctl`
/// carries a fan-control offset. CCD inputs do not supersede it (on the
/// parts without `Tdie`, `Tctl` is the real control temperature the CPU
/// throttles on), and a `Tdie` that is declared but unreadable or invalid
/// does not either: a hot CPU is never left with no CPU value. Every other
/// reading counts. `declared` (the roles of every input the chip declares)
/// is kept for the record only.
pub(crate) fn settle_counts(readings: &mut [Reading], declared: &[Role]) {
    let _ = declared;
    let superseded = readings.iter().any(|r| r.role == Role::Die);
    for r in readings {
        r.counts = !(r.role == Role::Control && superseded);
    }
}

/// The temperatures one kind of sensor can give, in °C, inclusive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Lowest valid value, °C.
    pub min: f64,
    /// Highest valid value, °C.
    pub max: f64,
    /// Whether exactly 0 °C is a temperature (an ambient or freezer probe)
    /// rather than what a driver writes when it has no value.
    pub zero_is_value: bool,
}

/// Generic hwmon inputs, thermal zones, CPUs, GPUs, drives: -40..=150 °C,
/// and 0 °C is "no value".
pub const GENERIC: Bounds = Bounds {
    min: -40.0,
    max: 150.0,
    zero_is_value: false,
};

/// Maxim DS18B20 on 1-Wire (hwmon `w1_slave_temp`) and LM75-class probes:
/// the datasheet's -55..=125 °C; 0 °C is a temperature.
pub const PROBE_55_125: Bounds = Bounds {
    min: -55.0,
    max: 125.0,
    zero_is_value: true,
};

/// Sensirion SHT3x/SHT4x: -40..=125 °C; 0 °C is a temperature.
pub const PROBE_40_125: Bounds = Bounds {
    min: -40.0,
    max: 125.0,
    zero_is_value: true,
};

/// Values a broken chip or a failed bus read is known to stick at, °C:
/// 127 and -128 (0x7f and 0x80 of a signed byte), 255 (0xff).
pub const STUCK: [f64; 3] = [127.0, -128.0, 255.0];

/// Absolute zero, °C: what NVMe and lm-sensors write for "no value".
const ABSOLUTE_ZERO: f64 = -273.15;

/// The bounds of a chip (hwmon `name`, zone type, lm-sensors prefix).
pub fn bounds(chip: &str) -> Bounds {
    match chip.trim().to_ascii_lowercase().as_str() {
        "w1_slave_temp" | "lm75" | "ds1621" | "ds1631" | "ds1775" | "tmp75" => PROBE_55_125,
        "sht3x" | "sht4x" => PROBE_40_125,
        _ => GENERIC,
    }
}

/// `celsius` when `chip` can give it, else why not: not finite, a stuck
/// value ([`STUCK`]), "no value" (0 °C where zero is not a value, or
/// -273.15 °C), or outside the chip's [`bounds`].
pub fn validate(chip: &str, celsius: f64) -> Result<f64, Invalid> {
    let b = bounds(chip);
    if !celsius.is_finite() {
        return Err(Invalid::NotFinite);
    }
    if STUCK.contains(&celsius) {
        return Err(Invalid::Stuck);
    }
    if (celsius == 0.0 && !b.zero_is_value) || (celsius - ABSOLUTE_ZERO).abs() < 0.005 {
        return Err(Invalid::NoValue);
    }
    if celsius < b.min || celsius > b.max {
        return Err(Invalid::OutOfRange {
            min: b.min,
            max: b.max,
        });
    }
    Ok(celsius)
}

/// A limit a sensor publishes (crit, max, emergency, a trip point), when it
/// is one: finite and within 0..=200 °C exclusive of 0 (drivers write 0,
/// -273.15 or 65535.x when a limit is unset).
pub(crate) fn limit(celsius: f64) -> Option<f64> {
    (celsius.is_finite() && celsius > 0.0 && celsius <= 200.0).then_some(celsius)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_chips_and_zones() {
        for cpu in [
            "coretemp",
            "k10temp",
            "zenpower",
            "cpu_thermal",
            "k8temp",
            "via_cputemp",
            "x86_pkg_temp",
            "cpu-thermal",
            "soc_thermal",
            "soc-thermal",
            "tcpu",
            "cpu0-thermal",
            "cpu-big0-thermal",
            "cpu-little-thermal",
            "cpuss-0-thermal",
            "cpuss-0",
            "CPU-therm",
        ] {
            assert_eq!(classify(cpu), SensorKind::Cpu, "{cpu}");
        }
        for gpu in [
            "amdgpu",
            "radeon",
            "nouveau",
            "nvidia",
            "gpu-thermal",
            "gpu0-thermal",
            "gpuss-1-thermal",
            "GPU-therm",
        ] {
            assert_eq!(classify(gpu), SensorKind::Gpu, "{gpu}");
        }
        for other in [
            "nvme",
            "acpitz",
            "iwlwifi_1",
            "drivetemp",
            "pch_cannonlake",
            "pch_skylake",
            "INT3400 Thermal",
            "w1_slave_temp",
            "nct6775",
            "",
        ] {
            assert_eq!(classify(other), SensorKind::Other, "{other}");
        }
    }

    #[test]
    fn roles_per_driver() {
        let cases = [
            ("k10temp", Some("Tdie"), Role::Die),
            ("k10temp", Some("Tctl"), Role::Control),
            ("k10temp", Some("Tccd1"), Role::Ccd),
            ("k10temp", Some("Tccd8"), Role::Ccd),
            ("k10temp", None, Role::Control),
            ("zenpower", Some("Tdie"), Role::Die),
            ("zenpower", Some("Tctl"), Role::Control),
            ("zenpower", Some("Tccd2"), Role::Ccd),
            ("coretemp", Some("Package id 0"), Role::Package),
            ("coretemp", Some("Package id 1"), Role::Package),
            ("coretemp", Some("Physical id 0"), Role::Package),
            ("coretemp", Some("Core 11"), Role::Core),
            ("k8temp", None, Role::Core),
            ("x86_pkg_temp", Some("x86_pkg_temp"), Role::Package),
            ("cpu-big0-thermal", Some("cpu-big0-thermal"), Role::Die),
            ("soc_thermal", None, Role::Die),
            ("amdgpu", Some("edge"), Role::Edge),
            ("amdgpu", Some("junction"), Role::Junction),
            ("amdgpu", Some("mem"), Role::Memory),
            ("nouveau", None, Role::Die),
            ("nvidia", Some("NVIDIA A40"), Role::Die),
            ("nvme", Some("Composite"), Role::Other),
            ("acpitz", Some("acpitz"), Role::Other),
            ("w1_slave_temp", None, Role::Other),
        ];
        for (chip, label, want) in cases {
            assert_eq!(role(chip, label), want, "{chip} {label:?}");
        }
    }

    fn r(role: Role) -> Reading {
        Reading {
            path: "x".into(),
            label: String::new(),
            kind: SensorKind::Cpu,
            role,
            counts: true,
            celsius: 50.0,
            source: "hwmon",
            chip: "k10temp".into(),
            crit: None,
            max: None,
        }
    }

    #[test]
    fn tctl_counts_only_without_a_die_input() {
        let mut alone = [r(Role::Control)];
        settle_counts(&mut alone, &[Role::Control]);
        assert!(alone[0].counts, "Tctl alone is the CPU value");

        let mut with_die = [r(Role::Die), r(Role::Control)];
        settle_counts(&mut with_die, &[Role::Die, Role::Control]);
        assert_eq!(
            with_die.iter().map(|x| x.counts).collect::<Vec<_>>(),
            [true, false]
        );

        // Zen 2 and later: no Tdie, Tctl has no offset and is what the CPU
        // throttles on; the CCDs count beside it.
        let mut with_ccd = [r(Role::Control), r(Role::Ccd), r(Role::Ccd)];
        settle_counts(&mut with_ccd, &[Role::Control, Role::Ccd, Role::Ccd]);
        assert_eq!(
            with_ccd.iter().map(|x| x.counts).collect::<Vec<_>>(),
            [true, true, true]
        );

        // Tdie declared but unreadable (or stuck, so dropped): Tctl counts,
        // rather than the CPU having no value at all.
        let mut die_unreadable = [r(Role::Control)];
        settle_counts(&mut die_unreadable, &[Role::Die, Role::Control]);
        assert!(die_unreadable[0].counts);
    }

    #[test]
    fn validity_by_kind_of_sensor() {
        // Generic: -40..=150, 0 is no value.
        assert_eq!(validate("coretemp", 45.0), Ok(45.0));
        assert_eq!(validate("acpitz", -18.3), Ok(-18.3));
        assert_eq!(validate("nvme", 0.0), Err(Invalid::NoValue));
        assert_eq!(validate("nvme", -273.15), Err(Invalid::NoValue));
        assert_eq!(
            validate("coretemp", 150.5),
            Err(Invalid::OutOfRange {
                min: -40.0,
                max: 150.0
            })
        );
        assert_eq!(
            validate("amdgpu", -60.0),
            Err(Invalid::OutOfRange {
                min: -40.0,
                max: 150.0
            })
        );
        for stuck in [127.0, -128.0, 255.0] {
            assert_eq!(validate("coretemp", stuck), Err(Invalid::Stuck), "{stuck}");
            assert_eq!(
                validate("w1_slave_temp", stuck),
                Err(Invalid::Stuck),
                "{stuck}"
            );
        }
        assert_eq!(validate("x", f64::NAN), Err(Invalid::NotFinite));
        assert_eq!(validate("x", f64::INFINITY), Err(Invalid::NotFinite));
        // DS18B20: -55..=125, 0 is a temperature (ice water).
        assert_eq!(validate("w1_slave_temp", -18.3), Ok(-18.3));
        assert_eq!(validate("w1_slave_temp", -55.0), Ok(-55.0));
        assert_eq!(validate("w1_slave_temp", 0.0), Ok(0.0));
        assert_eq!(validate("w1_slave_temp", 125.0), Ok(125.0));
        assert_eq!(
            validate("w1_slave_temp", 125.5),
            Err(Invalid::OutOfRange {
                min: -55.0,
                max: 125.0
            })
        );
        assert_eq!(validate("sht4x", -40.0), Ok(-40.0));
        assert!(validate("sht4x", -41.0).is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(limit(100.0), Some(100.0));
        for unset in [0.0, -273.15, 65535.0, f64::NAN] {
            assert_eq!(limit(unset), None, "{unset}");
        }
    }
}
