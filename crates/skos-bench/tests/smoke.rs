//! Smoke test of the harness itself: a tiny ingest, latency and fairness run against
//! a real nats-server, checked for structure and consistent counts, never
//! for timings. Skipped (with a message) where nats-server is missing, or
//! failed under `SKOS_TEST_REQUIRE_ALL=1`.

use std::process::Command;

use serde_json::Value;

#[test]
fn quick_ingest_latency_and_fairness_report_every_section_consistently() {
    skos_testsupport::require!("nats-server", skos_testsupport::nats::nats_server_binary());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_skos-bench"))
        .args([
            "ingest",
            "latency",
            "fairness",
            "--quick",
            "--nodes",
            "50",
            "--heartbeats",
            "500",
            "--alerts",
            "50",
            "--alert-scale",
            "20,40",
            "--flood",
            "300",
            "--fairness-probes",
            "10",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("SECTION"), "table printed: {stdout}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in ["machine", "options", "sections", "figures", "summary"] {
        assert!(doc.get(key).is_some(), "JSON has {key}");
    }
    assert!(doc["machine"]["nproc"].as_u64().unwrap() >= 1);

    let ingest = &doc["sections"]["ingest"]["data"];
    let hb = &ingest["heartbeats"];
    let published = hb["published"].as_u64().unwrap();
    assert_eq!(published, 500);
    for who in ["coordinator", "ceiling"] {
        let d = &hb[who];
        assert_eq!(
            d["received"].as_u64().unwrap() + d["lost"].as_u64().unwrap(),
            published,
            "heartbeats {who}: received + lost = published"
        );
    }
    let alerts = &ingest["alerts"];
    assert_eq!(alerts["published"].as_u64().unwrap(), 50);
    assert_eq!(
        alerts["coordinator"]["received"].as_u64().unwrap()
            + alerts["coordinator"]["lost"].as_u64().unwrap(),
        50
    );
    assert_eq!(
        ingest["counters"]["alerts.handled"].as_u64().unwrap(),
        alerts["coordinator_handled"].as_u64().unwrap()
    );
    // The sums above hold whatever arrived; these say that work was done:
    // JetStream loses no alert, and every heartbeat and alert reached the
    // coordinator on an idle server of this size.
    assert_eq!(
        alerts["coordinator"]["lost"].as_u64().unwrap(),
        0,
        "{alerts}"
    );
    assert_eq!(
        alerts["coordinator_handled"].as_u64().unwrap(),
        50,
        "{alerts}"
    );
    // Every alert went through a batch that reached its acks, and each
    // phase of those batches was timed.
    let counters = &ingest["counters"];
    let batches = counters["batches.alert"].as_u64().unwrap();
    assert!((1..=50).contains(&batches), "{counters}");
    for phase in ["decide", "state", "publish", "audit", "ack"] {
        assert!(
            counters[format!("batches.alert.{phase}_us")].is_u64(),
            "{phase}: {counters}"
        );
    }
    assert!(hb["coordinator"]["received"].as_u64().unwrap() > 0, "{hb}");
    assert!(hb["ceiling"]["received"].as_u64().unwrap() > 0, "{hb}");

    let scale = ingest["alert_scale"].as_array().unwrap();
    assert_eq!(scale.len(), 2, "{ingest}");
    for (run, n) in scale.iter().zip([20, 40]) {
        assert_eq!(run["open_alerts"].as_u64().unwrap(), n);
        let b = &run["burst"];
        assert_eq!(b["published"].as_u64().unwrap(), n);
        assert_eq!(
            b["coordinator"]["received"].as_u64().unwrap()
                + b["coordinator"]["lost"].as_u64().unwrap(),
            n
        );
    }

    let fairness = &doc["sections"]["fairness"]["data"];
    assert_eq!(fairness["flood_alerts"].as_u64().unwrap(), 300);
    assert_eq!(
        fairness["without_flood_ms"]["n"].as_u64().unwrap()
            + fairness["without_flood_lost"].as_u64().unwrap(),
        10,
        "every reference probe measured or counted lost: {fairness}"
    );
    assert_eq!(
        fairness["flood_publish"]["published"].as_u64().unwrap(),
        300
    );
    assert!(
        fairness["flood_counted"].as_u64().unwrap() <= 300,
        "{fairness}"
    );

    let latency = &doc["sections"]["latency"]["data"];
    assert_eq!(latency["alerts"].as_u64().unwrap(), 50);
    let measured = latency["alert_to_command_ms"]["n"].as_u64().unwrap();
    assert_eq!(
        measured + latency["missing"].as_u64().unwrap(),
        50,
        "every alert measured or counted missing"
    );
    assert!(
        measured > 0,
        "no alert was answered by a command: {latency}"
    );
    assert_eq!(latency["request_reply_ms"]["n"].as_u64().unwrap(), 200);

    let figures = doc["figures"].as_array().unwrap();
    assert!(figures.iter().any(|f| f["section"] == "ingest"));
    assert!(figures.iter().any(|f| f["section"] == "latency"));
    assert!(figures.iter().any(|f| f["section"] == "fairness"));
    for f in figures {
        assert!(f["name"].is_string() && f["unit"].is_string());
        if f["target"].is_object() && f["met"] == false {
            assert!(
                f["miss"].is_string(),
                "a missed target says by how much: {f}"
            );
        }
    }
    assert_eq!(
        doc["summary"]["figures"].as_u64().unwrap() as usize,
        figures.len()
    );
    assert_eq!(doc["summary"]["sections_failed"], 0);
}

#[test]
fn a_missing_skos_binary_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_skos-bench"))
        .args(["embedded", "--quick", "--skos-bin", "/nonexistent/skos"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let skipped = doc["sections"]["embedded"]["skipped"].as_str().unwrap();
    assert!(skipped.contains("/nonexistent/skos"), "{skipped}");
}

/// The failover section end to end, one trial of each (`--quick`): real
/// namespaces, agents, coordinator and workloads; both trials end with the
/// workload answering on a hot spare and are reported, never judged by
/// their timing.
#[test]
fn quick_failover_reports_one_trial_of_each_on_a_hot_spare() {
    skos_testsupport::require!(
        "root, ip netns, a static busybox and nats-server",
        skos_bench::failover::prerequisites()
    );
    skos_testsupport::require!(
        "the skos binary (cargo build -p skos)",
        skos_bench::procs::skos_binary(None)
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_skos-bench"))
        .args(["failover", "--quick"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let data = &doc["sections"]["failover"]["data"];
    for kind in ["emergency", "death"] {
        let trials = data[kind]["trials"].as_array().unwrap();
        assert_eq!(trials.len(), 1, "{kind}: {data}");
        let t = &trials[0];
        assert!(
            ["lyra", "athena"].contains(&t["spare"].as_str().unwrap()),
            "{kind} came up on a hot spare: {t}"
        );
        assert!(t["seconds"].as_f64().unwrap() > 0.0, "{t}");
        assert_eq!(data[kind]["seconds"]["n"], 1, "{data}");
    }
    assert_eq!(
        data["hot_spare_nodes"],
        serde_json::json!(["lyra", "athena"])
    );
    let figures: Vec<&Value> = doc["figures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["section"] == "failover")
        .collect();
    assert_eq!(figures.len(), 4, "{figures:?}");
    assert!(figures.iter().all(|f| f["value"].as_f64().is_some()));
    assert_eq!(doc["summary"]["sections_failed"], 0);
}
