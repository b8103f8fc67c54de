//! The shipped systemd units are valid: `systemd-analyze verify` accepts
//! them, with no warning, pointed at the real binary.

use std::path::Path;
use std::process::Command;

use skos_testsupport::require;

#[test]
fn shipped_units_verify() {
    skos_testsupport::require!(
        "systemd-analyze",
        require::program("systemd-analyze", &["--version"], "systemd")
    );
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Nodes run the lean agent binary; the coordinator the full one.
        let exec = if path.file_name().is_some_and(|n| n == "skos-agent.service") {
            "ExecStart=/usr/local/bin/skos-agent\n"
        } else {
            "ExecStart=/usr/local/bin/skos "
        };
        assert!(text.contains(exec), "{}: no {exec:?}", path.display());
        assert!(text.contains("NoNewPrivileges=yes"), "{}", path.display());
        assert!(
            text.contains("CapabilityBoundingSet="),
            "{}",
            path.display()
        );
        let local = dir.path().join(path.file_name().unwrap());
        std::fs::write(
            &local,
            text.replace(
                "/usr/local/bin/skos-agent",
                env!("CARGO_BIN_EXE_skos-agent"),
            )
            .replace(
                "/usr/local/bin/skos ",
                &format!("{} ", env!("CARGO_BIN_EXE_skos")),
            ),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "both units checked");
    // The coordinator runs unprivileged with no capabilities at all.
    let coord = std::fs::read_to_string(units.join("skos-coordinator.service")).unwrap();
    assert!(coord.contains("User=skos"));
    assert!(coord.lines().any(|l| l.trim() == "CapabilityBoundingSet="));
}
