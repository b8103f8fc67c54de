//! The tool fallbacks end to end: fake `sensors` and `nvidia-smi` scripts
//! on `PATH` replay recorded outputs (field cases 03, 04, 07) with their
//! exit status and stderr, read through `Sensors::scan` on a sysfs root
//! without sensors. NVML stays off.
//!
//! One test only: it sets `PATH` for this test binary, which no other test
//! shares.

use skos_agent::sensors::{hottest, ProblemKind, Scan, SensorKind, Sensors};
use skos_core::config::GpuConfig;
use skos_testsupport::sysfs::FakeSysfs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn fixture_text(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A directory with `sensors` and `nvidia-smi` scripts that print
/// `<tool>.out` on stdout, `<tool>.err` on stderr and exit with
/// `<tool>.code`, all beside them.
struct FakeTools {
    dir: tempfile::TempDir,
}

impl FakeTools {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for tool in ["sensors", "nvidia-smi"] {
            let script = dir.path().join(tool);
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nd=\"$(dirname \"$0\")\"\ncat \"$d/{tool}.out\"\ncat \"$d/{tool}.err\" >&2\nexit \"$(cat \"$d/{tool}.code\")\"\n"
                ),
            )
            .expect("write script");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod script");
        }
        let tools = Self { dir };
        tools.answer("sensors", "", "", 1);
        tools.answer("nvidia-smi", "", "", 9);
        tools
    }

    fn answer(&self, tool: &str, stdout: &str, stderr: &str, code: i32) {
        let file = |ext: &str| self.dir.path().join(format!("{tool}.{ext}"));
        std::fs::write(file("out"), stdout).expect("out");
        std::fs::write(file("err"), stderr).expect("err");
        std::fs::write(file("code"), format!("{code}\n")).expect("code");
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn tools(nvidia_smi: bool, lm_sensors: bool) -> GpuConfig {
    GpuConfig {
        nvml: false,
        nvidia_smi,
        lm_sensors,
    }
}

fn labels(s: &Scan) -> Vec<(&str, f64)> {
    s.readings
        .iter()
        .map(|r| (r.label.as_str(), r.celsius))
        .collect()
}

#[test]
fn field_03_04_07_through_the_tools() {
    let fake_tools = FakeTools::new();
    // The fakes first; `cat` and `dirname` for the scripts after them.
    let path =
        std::env::join_paths([fake_tools.path(), "/usr/bin".into(), "/bin".into()]).expect("PATH");
    std::env::set_var("PATH", path);
    let sys = FakeSysfs::new();
    let lm = Sensors::new(sys.root(), tools(false, true));
    let smi = Sensors::new(sys.root(), tools(true, false));

    // 03: invalid JSON as a whole; the valid chips are kept.
    fake_tools.answer(
        "sensors",
        &fixture_text("03-sensors-json-trailing-comma/sensors-j.txt"),
        "",
        0,
    );
    let s = lm.scan();
    assert_eq!(labels(&s), [("Tctl", 66.0), ("Composite", 38.85)]);
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(66.0));
    assert_eq!(s.problems.len(), 1, "{:#?}", s.problems);
    assert!(matches!(s.problems[0].what, ProblemKind::Repaired { .. }));

    // 04: an error on stderr and a non-zero exit; stdout still counts.
    fake_tools.answer(
        "sensors",
        &fixture_text("04-sensors-json-unreadable-feature/sensors-j.stdout.txt"),
        &fixture_text("04-sensors-json-unreadable-feature/sensors-j.stderr.txt"),
        1,
    );
    let s = lm.scan();
    assert_eq!(s.readings.len(), 6, "{:#?}", s.readings);
    assert_eq!(hottest(&s.readings, SensorKind::Cpu), Some(88.0));
    let said: Vec<(&str, &ProblemKind)> = s
        .problems
        .iter()
        .map(|p| (p.at.as_str(), &p.what))
        .collect();
    assert_eq!(
        said,
        [
            (
                "sensors",
                &ProblemKind::ToolMessage {
                    message: "ERROR: Can't get value of subfeature temp1_input: Can't read".into()
                }
            ),
            (
                "sensors:iwlwifi-virtual-0/temp1",
                &ProblemKind::NoValue { text: "{}".into() }
            ),
        ]
    );

    // 07: version mismatch (exit 18), no devices (exit 6), [N/A] rows.
    let runs = [
        ("mismatch.txt", 18, 0usize),
        ("nodevices.txt", 6, 0),
        ("vgpu-na.txt", 0, 1),
    ];
    for (file, code, readings) in runs {
        let text = fixture_text(&format!("07-nvidia-smi-no-data-shapes/{file}"));
        fake_tools.answer("nvidia-smi", &text, "", code);
        let s = smi.scan();
        assert_eq!(s.readings.len(), readings, "{file}: {:#?}", s.readings);
        if code != 0 {
            assert!(
                matches!(s.problems[..], [ref p] if p.what == ProblemKind::ToolFailed {
                    code: Some(code),
                    message: text.lines().next().unwrap_or_default().to_string()
                }),
                "{file}: {:#?}",
                s.problems
            );
        }
    }
    assert_eq!(labels(&smi.scan()), [("NVIDIA A40", 28.0)]);

    // Exit 14 (infoROM corrupted) is a warning: the rows are real.
    fake_tools.answer(
        "nvidia-smi",
        "0, NVIDIA A100-PCIE-40GB, 33\n1, NVIDIA A100-PCIE-40GB, 35\n",
        "",
        14,
    );
    let s = smi.scan();
    assert_eq!(
        labels(&s),
        [
            ("NVIDIA A100-PCIE-40GB", 33.0),
            ("NVIDIA A100-PCIE-40GB", 35.0)
        ]
    );
    assert_eq!(hottest(&s.readings, SensorKind::Gpu), Some(35.0));

    // Sysfs has a sensor: `sensors` is not consulted at all.
    sys.coretemp(50.0, &[]);
    let s = lm.scan();
    assert_eq!(labels(&s), [("Package id 0", 50.0)]);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
}
