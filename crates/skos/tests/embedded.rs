//! The hot-CPU scenario through `skos up`, with no NATS at all: fake sysfs,
//! fake cpufreq, real process, real audit file.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

fn status(data: &std::path::Path) -> Option<Value> {
    let out = run({
        let mut c = skos();
        c.args(["status", "--json", "--data-dir"]).arg(data);
        c
    });
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn audit(data: &std::path::Path) -> Vec<Value> {
    let out = run({
        let mut c = skos();
        c.args(["audit", "tail", "--json", "-n", "100000", "--data-dir"])
            .arg(data);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
}

#[test]
fn hot_cpu_is_throttled_verified_and_restored_in_embedded_mode() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0, 59.0]);
    sys.nvme(40.0);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = fast_config(work.path(), "");
    let data = work.path().join("data");
    let mut up = Proc::spawn(
        {
            let mut c = skos();
            c.arg("up")
                .arg("--config")
                .arg(&cfg)
                .arg("--data-dir")
                .arg(&data)
                .env("SKOS_SYSFS_ROOT", sys.root())
                .env("NODE_NAME", "nova");
            c
        },
        work.path(),
        "skos-up",
    );
    let s = wait_for(
        Duration::from_secs(30),
        "node nova healthy in status",
        || {
            status(&data)
                .filter(|s| s["nodes"][0]["name"] == "nova" && s["nodes"][0]["status"] == "healthy")
        },
    );
    assert_eq!(s["nodes"][0]["cpu_temp"], 60.0);
    assert_eq!(s["mode"], "embedded");

    // Heat: 87 °C is critical -> throttle_50 (+ redistribute, unsupported).
    cpu.set_temp(1, 87.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        (0..4)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    let records = wait_for(Duration::from_secs(30), "throttle result in audit", || {
        let r = audit(&data);
        audit_events(&r, "result")
            .iter()
            .any(|e| {
                e["entry"]["data"]["result"]["action_type"] == "throttle_50"
                    && e["entry"]["data"]["result"]["status"] == "succeeded"
            })
            .then_some(())
            .and_then(|()| {
                audit_events(&r, "result")
                    .iter()
                    .any(|e| e["entry"]["data"]["result"]["action_type"] == "redistribute")
                    .then_some(r)
            })
    });
    let alerts = audit_events(&records, "alert");
    assert!(alerts
        .iter()
        .any(|a| a["entry"]["data"]["alert"]["severity"] == "critical"));
    let results = audit_events(&records, "result");
    assert!(
        results.iter().any(
            |r| r["entry"]["data"]["result"]["action_type"] == "redistribute"
                && r["entry"]["data"]["result"]["status"] == "unsupported"
        ),
        "redistribute answered unsupported"
    );
    let s = wait_for(Duration::from_secs(10), "node critical in status", || {
        status(&data).filter(|s| s["nodes"][0]["status"] == "critical")
    });
    assert_eq!(s["open_alerts"][0]["severity"], "critical");
    assert!(s["recent_actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action_type"] == "throttle_50"));

    // Cool down: verification succeeds, then after clear_for the throttle is lifted.
    cpu.set_temp(1, 60.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq restored", || {
        (0..4).all(|p| read_khz(sys.root(), p) == MAX).then_some(())
    });
    let records = audit(&data);
    assert!(audit_events(&records, "verification")
        .iter()
        .any(|v| v["entry"]["data"]["outcome"] == "succeeded"));
    assert!(audit_events(&records, "command")
        .iter()
        .any(|c| c["entry"]["data"]["command"]["action_type"] == "reset_throttle"));

    assert!(up.sigterm().success(), "skos up exits cleanly on SIGTERM");

    // The trail verifies; a tampered copy does not.
    let verify = |dir: &std::path::Path| {
        run({
            let mut c = skos();
            c.args(["audit", "verify", "--data-dir"]).arg(dir);
            c
        })
    };
    let ok = verify(&data);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let audit_file = data.join("audit.jsonl");
    let text = std::fs::read_to_string(&audit_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 5);

    // Changed entry.
    let changed = text.replacen("throttle_50", "throttle_10", 1);
    std::fs::write(&audit_file, &changed).unwrap();
    let out = verify(&data);
    assert_eq!(out.status.code(), Some(1), "changed entry not caught");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));

    // Removed entry.
    let mut removed = lines.clone();
    removed.remove(3);
    std::fs::write(&audit_file, removed.join("\n") + "\n").unwrap();
    assert_eq!(
        verify(&data).status.code(),
        Some(1),
        "removed entry not caught"
    );

    // Reordered entries.
    let mut reordered = lines.clone();
    reordered.swap(2, 3);
    std::fs::write(&audit_file, reordered.join("\n") + "\n").unwrap();
    assert_eq!(
        verify(&data).status.code(),
        Some(1),
        "reordered entries not caught"
    );

    std::fs::write(&audit_file, text).unwrap();
    assert!(verify(&data).status.success());
}

#[test]
fn machine_without_sensors_keeps_running_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cfg = fast_config(work.path(), "");
    let data = work.path().join("data");
    let mut up = Proc::spawn(
        {
            let mut c = skos();
            c.arg("up")
                .arg("--config")
                .arg(&cfg)
                .arg("--data-dir")
                .arg(&data)
                .env("SKOS_SYSFS_ROOT", sys.root());
            c
        },
        work.path(),
        "skos-up",
    );
    let s = wait_for(Duration::from_secs(30), "node in status", || {
        status(&data).filter(|s| !s["nodes"][0].is_null())
    });
    assert!(
        s["nodes"][0]["cpu_temp"].is_null(),
        "no invented reading: {s}"
    );
    assert!(s["nodes"][0]["gpu_temp"].is_null());
    assert!(up.alive());
    assert!(
        up.log_text().contains("no temperature sensor found"),
        "{}",
        up.log_text()
    );
    let out = run({
        let mut c = skos();
        c.args(["sensors", "--json"])
            .env("SKOS_SYSFS_ROOT", sys.root())
            .env("SKOS_CONFIG", &cfg);
        c
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(up.sigterm().success());
}

#[test]
fn sensors_json_lists_every_reading() {
    let sys = FakeSysfs::new();
    sys.coretemp(55.0, &[50.0]);
    sys.amdgpu(66.0);
    sys.acpitz_zone(40.0);
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), "");
    let out = run({
        let mut c = skos();
        c.args(["sensors", "--json", "--config"])
            .arg(&cfg)
            .env("SKOS_SYSFS_ROOT", sys.root());
        c
    });
    assert!(out.status.success());
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.len() >= 4, "{v:?}");
    for r in &v {
        for k in ["path", "label", "kind", "celsius"] {
            assert!(!r[k].is_null(), "{k} missing in {r}");
        }
        assert!(std::path::Path::new(r["path"].as_str().unwrap()).starts_with(sys.root()));
    }
    assert!(v.iter().any(|r| r["kind"] == "gpu" && r["celsius"] == 66.0));
    assert!(v.iter().any(|r| r["kind"] == "cpu" && r["celsius"] == 55.0));
}

#[test]
fn config_check_reports_key_paths() {
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, "thermal:\n  actions:\n    warning: [throttle_10, melt]\ncoordinator:\n  verify_within: -1\nnode: {name: 'a.b'}\n").unwrap();
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&bad);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    for p in [
        "thermal.actions.warning[1]",
        "coordinator.verify_within",
        "node.name",
    ] {
        assert!(text.contains(p), "{p} missing from:\n{text}");
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.example.yaml");
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config", example]);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
