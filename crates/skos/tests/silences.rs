//! Silences end to end, through `skos up` and its HTTP API: a hot node
//! under a silence is recorded and decided but not throttled; once the
//! silence is expired it is throttled.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn status(data: &Path) -> Option<Value> {
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

fn audit(data: &Path) -> Vec<Value> {
    let out = run({
        let mut c = skos();
        c.args(["audit", "tail", "--json", "-n", "100000", "--data-dir"])
            .arg(data);
        c
    });
    json_lines(&out)
}

fn all_at(sys: &FakeSysfs, khz: u64) -> bool {
    (0..2).all(|p| {
        let path = sys.root().join(format!(
            "devices/system/cpu/cpufreq/policy{p}/scaling_max_freq"
        ));
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            == Some(khz)
    })
}

/// `skos silence ...` against `skos up`'s HTTP API at `addr`.
fn silence(cfg: &Path, addr: std::net::SocketAddr, args: &[&str]) -> (bool, Value, String) {
    let out = run({
        let mut c = skos();
        c.arg("silence")
            .args(args)
            .args(["--json", "--http", &addr.to_string(), "--config"])
            .arg(cfg);
        c
    });
    let reply = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        reply,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn throttles(records: &[Value]) -> usize {
    audit_events(records, "command")
        .iter()
        .filter(|c| c["entry"]["data"]["command"]["action_type"] == "throttle_50")
        .count()
}

#[test]
fn a_silenced_hot_node_is_not_throttled_until_the_silence_is_expired() {
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let cfg = fast_config(
        work.path(),
        &format!(
            "  actions: {{warning: [throttle_10], critical: [throttle_50]}}\nhttp:\n  token_file: {}\n",
            token.display()
        ),
    );
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0, 57.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let data = work.path().join("data");
    let up = Proc::spawn(
        {
            let mut c = skos();
            c.args(["up", "--http", "127.0.0.1:0", "--config"])
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
    let addr = http_addr(&up);
    wait_for(Duration::from_secs(30), "nova healthy", || {
        status(&data).filter(|s| s["nodes"][0]["status"] == "healthy")
    });

    // Refused: no comment; a write without the token.
    let (ok, _, err) = silence(
        &cfg,
        addr,
        &[
            "add",
            "--node",
            "nova",
            "--for",
            "1h",
            "--comment",
            " ",
            "--by",
            "ana",
        ],
    );
    assert!(!ok && err.contains("comment"), "{err}");
    let (code, _) = http_get(addr, "/api/v1/silences", Duration::from_secs(5));
    assert_eq!(code, 200);

    let (ok, added, err) = silence(
        &cfg,
        addr,
        &[
            "add",
            "--node",
            "nova",
            "--kind",
            "thermal",
            "--for",
            "1h",
            "--comment",
            "fan swap",
            "--by",
            "ana",
        ],
    );
    assert!(ok, "{err}");
    let id = added["silences"][0]["id"].as_str().unwrap().to_string();
    let (ok, listed, err) = silence(&cfg, addr, &["list"]);
    assert!(ok, "{err}");
    assert_eq!(listed["silences"][0]["id"], id.as_str());

    // Hot under the silence: the alert is recorded and decided, the
    // action skipped as silenced, nothing sent.
    cpu.heat(87.0);
    let records = wait_for(Duration::from_secs(30), "a silenced skip", || {
        let r = audit(&data);
        audit_events(&r, "skipped")
            .iter()
            .any(|s| s["entry"]["data"]["reason"] == "silenced")
            .then_some(r)
    });
    assert!(audit_events(&records, "alert")
        .iter()
        .any(|a| a["entry"]["data"]["alert"]["severity"] == "critical"));
    assert_eq!(throttles(&records), 0, "no throttle under the silence");
    let added_record = audit_events(&records, "silence");
    assert_eq!(added_record[0]["entry"]["actor"], "ana");
    assert_eq!(added_record[0]["entry"]["data"]["event"], "added");
    // Status (embedded: its snapshot) shows the silence, and the node is
    // still unthrottled.
    let s = wait_for(Duration::from_secs(10), "the silence in status", || {
        status(&data).filter(|s| s["silences"][0]["id"] == id.as_str())
    });
    assert_eq!(s["summary"]["silences"], 1);
    assert!(all_at(&sys, MAX), "cpufreq untouched under the silence");
    let text = run({
        let mut c = skos();
        c.args(["status", "--data-dir"]).arg(&data);
        c
    });
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("SILENCES (1)") && text.contains("fan swap"),
        "{text}"
    );

    // Expired: the problem it held is decided again and throttled.
    let (ok, expired, err) = silence(&cfg, addr, &["expire", &id, "--by", "bo"]);
    assert!(ok, "{err}");
    assert_eq!(expired["silences"][0]["id"], id.as_str());
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        all_at(&sys, MAX / 2).then_some(())
    });
    let records = audit(&data);
    assert_eq!(throttles(&records), 1);
    let expiry: Vec<Value> = audit_events(&records, "silence")
        .into_iter()
        .filter(|r| r["entry"]["data"]["event"] == "expired")
        .collect();
    assert_eq!(expiry.len(), 1);
    assert_eq!(expiry[0]["entry"]["actor"], "bo");
    let (ok, listed, _) = silence(&cfg, addr, &["list"]);
    assert!(ok);
    assert!(
        listed["silences"].as_array().is_none_or(|a| a.is_empty()),
        "{listed}"
    );
    let (ok, _, err) = silence(&cfg, addr, &["expire", &id, "--by", "bo"]);
    assert!(!ok && err.contains("no silence"), "{err}");

    // A recurring maintenance window: kept, listed with its pattern.
    let (ok, window, err) = silence(
        &cfg,
        addr,
        &[
            "add",
            "--node",
            "nova",
            "--every",
            "0 2 * * SUN#1",
            "--for",
            "4h",
            "--comment",
            "monthly patching",
            "--by",
            "ana",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(window["silences"][0]["every"]["cron"], "0 2 * * SUN#1");
    assert_eq!(window["silences"][0]["every"]["window_seconds"], 4 * 3600);
    let (ok, _, err) = silence(
        &cfg,
        addr,
        &[
            "add",
            "--node",
            "nova",
            "--every",
            "0 2 * *",
            "--for",
            "4h",
            "--comment",
            "x",
            "--by",
            "ana",
        ],
    );
    assert!(!ok && err.contains("5 fields"), "{err}");
}
