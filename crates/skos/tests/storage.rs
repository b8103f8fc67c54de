//! The storage watcher end to end through `skos up`, on real tmpfs mounts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::require;
use skos_testsupport::sinks::HttpSink;
use skos_testsupport::tmpfs::Tmpfs;

/// A real tmpfs, or `None` (skip) where none can be mounted; under
/// `SKOS_TEST_REQUIRE_ALL=1` that fails the test instead.
fn mount(size: &str, inodes: Option<u64>) -> Option<Tmpfs> {
    require::require(
        &require::test_name(module_path!()),
        "a tmpfs mount",
        Tmpfs::mount(size, inodes),
    )
}

fn config(dir: &Path, mnt: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [storage_watcher]\n\
coordinator:\n  heartbeat_timeout: 10\n  verify_within: 5\n\
storage:\n  mounts: [{m}]\n  temp: {{dirs: [{m}/tmp], max_age: 3600}}\n  logs: {{dirs: [{m}/log]}}\n{extra}",
            m = mnt.display()
        ),
    )
    .unwrap();
    path
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

fn up(cfg: &Path, data: &Path, work: &Path) -> Proc {
    let mut c = skos();
    c.arg("up")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .env("NODE_NAME", "athena");
    Proc::spawn(c, work, "skos-up")
}

#[test]
fn full_tmpfs_is_cleaned_below_warning_and_audited() {
    let Some(fs) = mount("8M", None) else { return };
    let work = tempfile::tempdir().unwrap();
    // 4.5 MiB of old temp files, 2.3 MiB of fresh data: about 85 % used.
    let mut old = Vec::new();
    for i in 0..3 {
        let f = fs.fill(&format!("tmp/old-{i}.bin"), 1536 * 1024);
        fs.age(&f, 7200);
        old.push(f);
    }
    let fresh = fs.fill("tmp/fresh.bin", 100 * 1024);
    fs.fill("data/keep.bin", 2200 * 1024);
    let before = percent(fs.path());
    assert!((80.0..90.0).contains(&before), "setup: {before:.1}% used");
    // A symlink in the temp dir to an old file outside it must survive.
    let outside = fs.fill("data/outside-old.bin", 10 * 1024);
    fs.age(&outside, 7200);
    std::os::unix::fs::symlink(&outside, fs.path().join("tmp/link-to-outside")).unwrap();

    let cfg = config(work.path(), fs.path(), "");
    let data = work.path().join("data");
    let mut p = up(&cfg, &data, work.path());
    let records = wait_for(Duration::from_secs(30), "cleanup_temp verified", || {
        let r = audit(&data);
        audit_events(&r, "verification")
            .iter()
            .any(|v| v["entry"]["data"]["outcome"] == "succeeded")
            .then_some(r)
    });
    let after = percent(fs.path());
    assert!(after < 80.0, "still {after:.1}% used");
    for f in &old {
        assert!(!f.exists(), "{} not deleted", f.display());
    }
    assert!(fresh.exists(), "a fresh temp file was deleted");
    assert!(
        outside.exists(),
        "a file outside the temp dir was deleted through a symlink"
    );
    let result = audit_events(&records, "result")
        .into_iter()
        .find(|r| r["entry"]["data"]["result"]["action_type"] == "cleanup_temp")
        .expect("cleanup_temp result audited");
    let details = &result["entry"]["data"]["result"]["details"];
    assert!(
        details["bytes_freed"].as_u64().unwrap() >= 3 * 1536 * 1024,
        "{details}"
    );
    assert_eq!(details["files_deleted"], 3, "{details}");
    assert!(
        details["dirs"][0]["bytes_freed"].as_u64().unwrap() > 0,
        "per-directory report: {details}"
    );
    let alert = audit_events(&records, "alert")
        .into_iter()
        .find(|a| a["entry"]["data"]["alert"]["type"] == "storage")
        .expect("storage alert");
    assert_eq!(alert["entry"]["data"]["alert"]["severity"], "warning");
    let details = alert["entry"]["data"]["alert"]["details"]
        .as_object()
        .unwrap();
    // The fill rate is reported (null until two readings exist), with the evidence.
    for key in [
        "fill_rate_bytes_per_second",
        "seconds_to_critical",
        "bytes_percent",
        "inodes_percent",
    ] {
        assert!(details.contains_key(key), "{key} missing: {details:?}");
    }
    assert_eq!(details["mount"], fs.path().display().to_string());
    let reported = details["percent"].as_f64().unwrap();
    assert!((80.0..90.0).contains(&reported), "reported {reported:.1}%");
    assert!(p.sigterm().success());
}

/// What a user who may write in a temp dir tries: a file name that is not
/// UTF-8 (it wiped the whole result's details) and one with a newline and
/// a log line after it (it forged a line in the log).
#[test]
fn hostile_file_names_neither_forge_log_lines_nor_lose_the_result() {
    use std::os::unix::ffi::OsStrExt;
    let Some(fs) = mount("8M", None) else { return };
    let work = tempfile::tempdir().unwrap();
    let forged = "2026-01-01T00:00:00.000000Z  INFO skos: forged by a file name";
    let names: [&std::ffi::OsStr; 3] = [
        std::ffi::OsStr::from_bytes(b"old-\xff\xfe.bin"),
        std::ffi::OsStr::new("x\n2026-01-01T00:00:00.000000Z  INFO skos: forged by a file name"),
        std::ffi::OsStr::new("old-plain.bin"),
    ];
    std::fs::create_dir_all(fs.path().join("tmp")).unwrap();
    for n in names {
        let p = fs.path().join("tmp").join(n);
        std::fs::write(&p, vec![7u8; 1536 * 1024]).unwrap();
        fs.age(&p, 7200);
    }
    // Held open for writing: skipped, and the skip is logged with its name.
    let held = fs.path().join("tmp").join(format!("held\n{forged}"));
    std::fs::write(&held, b"busy").unwrap();
    fs.age(&held, 7200);
    let _writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&held)
        .unwrap();
    fs.fill("data/keep.bin", 2200 * 1024);

    let cfg = config(work.path(), fs.path(), "");
    let data = work.path().join("data");
    let mut p = up(&cfg, &data, work.path());
    let records = wait_for(Duration::from_secs(30), "cleanup_temp result", || {
        let r = audit(&data);
        audit_events(&r, "result")
            .iter()
            .any(|r| r["entry"]["data"]["result"]["action_type"] == "cleanup_temp")
            .then_some(r)
    });
    let result = audit_events(&records, "result")
        .into_iter()
        .find(|r| r["entry"]["data"]["result"]["action_type"] == "cleanup_temp")
        .unwrap();
    let details = &result["entry"]["data"]["result"]["details"];
    assert_eq!(details["files_deleted"], 3, "{details}");
    let skipped = details["skipped"].as_array().expect("details kept");
    let shown: Vec<&str> = skipped.iter().filter_map(|s| s["path"].as_str()).collect();
    assert!(
        shown
            .iter()
            .any(|p| p.ends_with(&format!("/tmp/held\\n{forged}"))),
        "{shown:?}"
    );
    assert!(held.exists());
    assert!(p.sigterm().success());
    let log = p.log_text();
    assert!(
        log.contains("held\\n2026-01-01"),
        "the skip is logged:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a file name forged a log line:\n{log}"
    );
}

#[test]
fn emergency_with_nothing_to_delete_tells_a_human_by_webhook() {
    let Some(fs) = mount("4M", None) else { return };
    let work = tempfile::tempdir().unwrap();
    fs.fill("data/precious.bin", 3950 * 1024);
    std::fs::create_dir_all(fs.path().join("tmp")).unwrap();
    let pct = percent(fs.path());
    assert!(pct > 95.0, "setup: {pct:.1}%");
    let sink = HttpSink::start();
    let cfg = config(
        work.path(),
        fs.path(),
        &format!("  notify:\n    webhook: {{url: \"{}/hooks/skos\", headers: {{Authorization: \"Bearer t0ken\"}}}}\n", sink.url()),
    );
    let data = work.path().join("data");
    let mut p = up(&cfg, &data, work.path());
    let reqs = sink.wait_for(1, Duration::from_secs(30));
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    let text = body["message"].as_str().unwrap();
    assert!(
        text.contains(&fs.path().display().to_string()),
        "says what is full: {text}"
    );
    assert!(text.contains("What was done"), "{text}");
    // The cleanup decided beside it ran first: the message says what it
    // did, not "nothing yet".
    assert!(
        text.contains("emergency_cleanup: succeeded") && !text.contains("nothing yet"),
        "{text}"
    );
    assert!(text.contains("left to decide"), "{text}");
    assert!(
        fs.path().join("data/precious.bin").exists(),
        "nothing outside the configured dirs is touched"
    );
    let records = wait_for(Duration::from_secs(20), "results audited", || {
        let r = audit(&data);
        let results = audit_events(&r, "result");
        let done = |a: &str| {
            results
                .iter()
                .any(|x| x["entry"]["data"]["result"]["action_type"] == a)
        };
        (done("emergency_cleanup") && done("alert_human")).then_some(r)
    });
    // Freeing nothing is a failure for the breaker.
    assert!(audit_events(&records, "verification")
        .iter()
        .any(|v| v["entry"]["data"]["reason"] == "freed_nothing"));
    // The secret header is never logged.
    assert!(!p.log_text().contains("t0ken"));
    assert!(p.sigterm().success());
}

/// Storage critical sends `cleanup_logs` and `archive_old` together. The
/// agent runs the second only once the first has ended, and judges it
/// then: the logs' compression alone took the mount far below critical,
/// so `archive_old` is answered `not_needed` and the old file it would
/// have moved stays where it is (run side by side, it ran although the
/// fault was gone: a false remediation).
#[test]
fn a_second_action_for_the_same_problem_waits_and_is_not_run_once_the_first_fixed_it() {
    let Some(fs) = mount("16M", None) else { return };
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // 6 MiB of old rotated logs (text: compresses to almost nothing), an
    // old file to archive, and fresh data: about 92 % used.
    let line = b"2026-01-01T00:00:00Z INFO request served in 3 ms\n";
    std::fs::create_dir_all(fs.path().join("log")).unwrap();
    for i in 1..=3 {
        let p = fs.path().join(format!("log/app.log.{i}"));
        let body: Vec<u8> = line.iter().copied().cycle().take(2 << 20).collect();
        std::fs::write(&p, body).unwrap();
        // Past the default compress_after (a day), within the retention.
        fs.age(&p, 2 * 86400);
    }
    let report = fs.fill("old/report.dat", 512 * 1024);
    fs.age(&report, 7200);
    let total = 16.0 * 1024.0 * 1024.0;
    let used_now = percent(fs.path()) / 100.0 * total;
    let ballast = (0.925 * total - used_now) as usize;
    fs.fill("data/keep.bin", ballast);
    let before = percent(fs.path());
    assert!((90.5..95.0).contains(&before), "setup: {before:.1}% used");

    let cfg = config(
        work.path(),
        fs.path(),
        &format!(
            "  archive: {{dirs: [{m}/old], older_than: 3600, destination: {a}}}\n",
            m = fs.path().display(),
            a = archive.display()
        ),
    );
    let data = work.path().join("data");
    let mut p = up(&cfg, &data, work.path());
    let results = wait_for(Duration::from_secs(60), "both results audited", || {
        let r = audit(&data);
        let results: Vec<Value> = audit_events(&r, "result")
            .into_iter()
            .map(|e| e["entry"]["data"]["result"].clone())
            .filter(|r| r["action_type"] == "cleanup_logs" || r["action_type"] == "archive_old")
            .collect();
        (results.len() >= 2).then_some(results)
    });
    let status = |action: &str| {
        results
            .iter()
            .find(|r| r["action_type"] == action)
            .map(|r| r["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        status("cleanup_logs").as_deref(),
        Some("succeeded"),
        "{results:#?}"
    );
    assert_eq!(
        status("archive_old").as_deref(),
        Some("not_needed"),
        "{results:#?}"
    );
    assert!(
        report.exists(),
        "archive_old ran although the fault was gone"
    );
    assert!(percent(fs.path()) < 90.0);
    assert!(p.sigterm().success());
}
