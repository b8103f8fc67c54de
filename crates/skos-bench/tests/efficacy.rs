//! The efficacy section, short: one trial each of a thermal, a storage and
//! two loop rows through the real `skos coordinator` and `skos agent` over
//! a real nats-server, and of the emergency row with workloads on the
//! three-node fleet (network namespaces, busybox workloads), checked for
//! what the trail says (detected, healed or escalated, the problem and the
//! actions named in the audit records), never for timings. Skipped (with a
//! message) where nats-server or the `skos` binary is missing; the storage
//! row without root, the workload row without root, network namespaces or
//! a static busybox (the harness says why); failed instead under
//! `SKOS_TEST_REQUIRE_ALL=1`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use skos_testsupport::require;

fn skos_binary() -> Result<PathBuf, String> {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_skos-bench")).with_file_name("skos");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: build it first (`cargo build -p skos`)",
            p.display()
        ))
    }
}

#[test]
fn one_trial_of_a_few_rows_is_detected_and_healed_as_the_trail_says() {
    skos_testsupport::require!("nats-server", skos_testsupport::nats::nats_server_binary());
    let skos = skos_testsupport::require!("the skos binary", skos_binary());
    // Without root the storage row is skipped by the harness (it says
    // why); under SKOS_TEST_REQUIRE_ALL=1 that fails here.
    let root = require::require(
        &require::test_name(module_path!()),
        "root (the storage row mounts a tmpfs)",
        require::root(),
    )
    .is_some();
    let fleet = require::require(
        &require::test_name(module_path!()),
        "root, network namespaces and a static busybox (the workload row's fleet)",
        skos_testsupport::netns::unavailable()
            .map_or(Ok(()), Err)
            .and_then(|()| skos_testsupport::podman::static_busybox().map_err(|m| m.to_string())),
    )
    .is_some();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_skos-bench"))
        .args([
            "efficacy",
            "--trials",
            "1",
            "--rows",
            "thermal critical →,storage warning,loop depth_exceeded,crash_loop,thermal emergency + workloads",
        ])
        .arg("--skos-bin")
        .arg(&skos)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("Healing efficacy"), "{stdout}");
    assert!(stdout.contains("| row | trials | detected |"), "{stdout}");
    assert!(
        stderr.contains("#1: detected"),
        "progress per trial: {stderr}"
    );

    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = doc["sections"]["efficacy"]["data"]["rows"]
        .as_array()
        .expect("rows")
        .clone();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["row"].as_str()).collect();
    assert_eq!(
        names,
        [
            "thermal critical → throttle_50",
            "storage warning → cleanup_temp",
            "loop depth_exceeded → circuit_break",
            "loop crash_loop → circuit_break",
            "thermal emergency + workloads → shutdown_non_essential, failover",
        ]
    );
    for (row, (problem, action)) in rows.iter().zip([
        ("thermal:", "throttle_50"),
        ("storage:", "cleanup_temp"),
        ("loop:chain:efficacy-depth_exceeded-0-", "circuit_break"),
        ("loop:proc:crashy-0", "circuit_break"),
        ("thermal:", "failover"),
    ]) {
        if action == "cleanup_temp" && !root {
            let why = row["skipped"].as_str().expect("skipped without root");
            assert!(why.contains("root"), "{why}");
            continue;
        }
        if action == "failover" && !fleet {
            assert!(row["skipped"].is_string(), "skipped without a fleet: {row}");
            continue;
        }
        let name = row["row"].as_str().unwrap();
        assert_eq!(row["trials"], 1, "{name}");
        assert_eq!(row["detected"], 1, "{name}: {row}");
        let handled = ["healed", "escalated", "stopped_safely"]
            .iter()
            .map(|k| row[k].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(handled, 1, "{name}: healed or escalated: {row}");
        // The figures come from the audit records of the trial: the
        // problem key and the commands sent for it.
        let t = &row["trial_figures"][0];
        assert!(t["settled"].as_bool().unwrap(), "{name}: {t}");
        assert!(
            t["problem"].as_str().unwrap().starts_with(problem),
            "{name}: {t}"
        );
        assert!(
            t["actions"].as_array().unwrap().iter().any(|a| a == action),
            "{name}: {t}"
        );
        assert!(t["detect_s"].as_f64().unwrap() >= 0.0, "{name}: {t}");
        if t["outcome"] == "healed" {
            let rec = t["recovery_s"].as_f64().unwrap();
            assert!(rec >= 0.0, "{name}: {t}");
            assert_eq!(row["recovery_s"]["n"], 1, "{name}");
        }
        assert!(row["actions"][action].as_u64().unwrap() >= 1, "{name}");
        assert_eq!(
            row["false_remediations"].as_u64().unwrap(),
            t["false_remediations"].as_array().unwrap().len() as u64
        );
    }
    if fleet {
        // The emergency with workloads: nova's non-essential workload shed
        // and its essential one confirmed healthy on a spare, from the
        // trail's placement records.
        let t = &rows[4]["trial_figures"][0];
        assert_eq!(t["outcome"], "healed", "{t}");
        let actions: Vec<&str> = t["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(actions.contains(&"shutdown_non_essential"), "{t}");
    }
    let figures = doc["figures"].as_array().unwrap();
    assert!(figures
        .iter()
        .any(|f| f["name"] == "trials healed, escalated or stopped safely"));
}
