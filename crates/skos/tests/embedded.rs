//! The hot-CPU scenario through `skos up`, with no NATS at all: fake sysfs,
//! fake cpufreq, real process, real audit file.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

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

/// Like `fast_config`, but no reminder comes during a test (cooldown an
/// hour), a slow machine does not fail verifications or go offline, a fix
/// is credited once its cooling has held for 1 s (before the throttle is
/// lifted), the seed's thermal table (with no workloads configured, its
/// `redistribute` is skipped as `no_workloads`), and `thermal` is more
/// keys under `thermal:` (indented two spaces).
fn thermal_config(dir: &std::path::Path, thermal: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 10\n  verify_within: 120\n  verify_hold_seconds: 1\n  command_deadline: 30\n\
thermal:\n  clear_for: 1\n  cooldown: 3600\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n  \
actions: {{warning: [throttle_10], critical: [throttle_50, redistribute], emergency: [shutdown_non_essential, failover]}}\n{thermal}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Cools the CPU to `c`, waits for the throttle to be lifted and its
/// `reset_throttle` to succeed, then for the proof of time: the coordinator
/// hears the cool, unthrottled node for three seconds (three times
/// `clear_for`) after the reset, so a second reset or any late command
/// would be in the trail. Returns the trail read after that.
fn cool_until_reset(
    cpu: &HwmonHandle,
    sys: &FakeSysfs,
    data: &std::path::Path,
    c: f64,
) -> Vec<Value> {
    cpu.heat(c);
    wait_for(Duration::from_secs(30), "scaling_max_freq restored", || {
        all_at(sys, MAX).then_some(())
    });
    let records = wait_for(Duration::from_secs(30), "reset_throttle result", || {
        let r = audit(data);
        (results_of(&r, "reset_throttle", "succeeded") > 0).then_some(r)
    });
    let reset_at = at(&commands_of(&records, "reset_throttle")[0]["entry"]["timestamp"]);
    heard_after(
        data,
        reset_at,
        3,
        "cool unthrottled heartbeats after the reset",
        |n| n["throttle_level"] == 0 && n["cpu_temp"] == c,
    );
    audit(data)
}

/// `skos up` as node `nova` on the fake sysfs; returns it and its data dir.
fn up_nova(
    work: &std::path::Path,
    sys: &FakeSysfs,
    cfg: &std::path::Path,
) -> (Proc, std::path::PathBuf) {
    let data = work.join("data");
    let mut c = skos();
    c.arg("up")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("SKOS_SYSFS_ROOT", sys.root())
        .env("NODE_NAME", "nova");
    (Proc::spawn(c, work, "skos-up"), data)
}

/// Every cpufreq policy's `scaling_max_freq` is `khz`. A file caught
/// between truncation and write (the agent writing it) is not at `khz` yet.
fn all_at(sys: &FakeSysfs, khz: u64) -> bool {
    (0..4).all(|p| {
        let path = sys.root().join(format!(
            "devices/system/cpu/cpufreq/policy{p}/scaling_max_freq"
        ));
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            == Some(khz)
    })
}

fn at(v: &Value) -> skos_core::timefmt::Timestamp {
    v.as_str()
        .and_then(skos_core::timefmt::parse)
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

/// The `command` records that send `action`.
fn commands_of(records: &[Value], action: &str) -> Vec<Value> {
    audit_events(records, "command")
        .into_iter()
        .filter(|c| c["entry"]["data"]["command"]["action_type"] == action)
        .collect()
}

/// The action of every command sent, in order.
fn sent(records: &[Value]) -> Vec<String> {
    audit_events(records, "command")
        .iter()
        .map(|c| {
            c["entry"]["data"]["command"]["action_type"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The results of `action` with `status`.
fn results_of(records: &[Value], action: &str, status: &str) -> usize {
    audit_events(records, "result")
        .iter()
        .filter(|r| {
            r["entry"]["data"]["result"]["action_type"] == action
                && r["entry"]["data"]["result"]["status"] == status
        })
        .count()
}

/// The severities of the thermal sentinel's alerts, in order.
fn sentinel_says(records: &[Value]) -> Vec<String> {
    audit_events(records, "alert")
        .iter()
        .map(|a| &a["entry"]["data"]["alert"])
        .filter(|a| a["agent_id"] == "thermal-sentinel-nova" && a["type"] == "thermal")
        .map(|a| a["severity"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Proof of time on the coordinator's own clock: waits until its status
/// shows a heartbeat from nova received `secs` or more after `since` that
/// passes `check`, and returns that status.
fn heard_after(
    data: &std::path::Path,
    since: skos_core::timefmt::Timestamp,
    secs: i64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(Duration::from_secs(90), what, || {
        status(data).filter(|s| {
            let n = &s["nodes"][0];
            n["name"] == "nova"
                && at(&n["last_seen"]) >= since + chrono::Duration::seconds(secs)
                && check(n)
        })
    })
}

#[test]
fn hot_cpu_is_throttled_verified_and_restored_in_embedded_mode() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    // The package only: a read that catches its file mid-write is then no
    // CPU reading at all, not a cool core's (the alerts are counted below).
    let cpu = sys.coretemp(60.0, &[58.0, 57.0]);
    sys.nvme(40.0);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    // No reminder of the critical level during the test, so every command
    // below is counted exactly.
    let cfg = thermal_config(work.path(), "");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
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

    // Heat: 87 °C is critical -> throttle_50 (+ redistribute, skipped: no
    // workloads are configured).
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        all_at(&sys, MAX / 2).then_some(())
    });
    let records = wait_for(Duration::from_secs(30), "throttle result in audit", || {
        let r = audit(&data);
        audit_events(&r, "result")
            .iter()
            .any(|e| result_is(e, "throttle_50", "succeeded"))
            .then_some(())
            .and_then(|()| {
                audit_events(&r, "skipped")
                    .iter()
                    .any(|e| e["entry"]["data"]["action"] == "redistribute")
                    .then_some(r)
            })
    });
    let alerts = audit_events(&records, "alert");
    assert!(alerts
        .iter()
        .any(|a| a["entry"]["data"]["alert"]["severity"] == "critical"));
    let skipped = audit_events(&records, "skipped");
    assert!(
        skipped
            .iter()
            .any(|r| r["entry"]["data"]["action"] == "redistribute"
                && r["entry"]["data"]["reason"] == "no_workloads"),
        "redistribute skipped: no workloads"
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
    let records = cool_until_reset(&cpu, &sys, &data, 60.0);
    let throttle = commands_of(&records, "throttle_50");
    assert_eq!(throttle.len(), 1, "exactly one throttle_50: {throttle:#?}");
    assert!(commands_of(&records, "redistribute").is_empty());
    assert_eq!(
        commands_of(&records, "reset_throttle").len(),
        1,
        "exactly one reset_throttle"
    );
    assert_eq!(
        sent(&records),
        ["throttle_50", "reset_throttle"],
        "no other command"
    );
    assert_eq!(results_of(&records, "throttle_50", "succeeded"), 1);
    assert_eq!(results_of(&records, "reset_throttle", "succeeded"), 1);
    let throttle_id = &throttle[0]["entry"]["data"]["command"]["action_id"];
    let verifications: Vec<Value> = audit_events(&records, "verification")
        .into_iter()
        .filter(|v| &v["entry"]["data"]["action_id"] == throttle_id)
        .collect();
    assert_eq!(verifications.len(), 1, "{verifications:#?}");
    assert_eq!(verifications[0]["entry"]["data"]["outcome"], "succeeded");
    assert_eq!(sentinel_says(&records), ["critical", "normal"]);
    assert!((0..4).all(|p| read_khz(sys.root(), p) == MAX));

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
    let out = verify(&data);
    assert_eq!(out.status.code(), Some(1), "removed entry not caught");
    // The 4th line now holds record 5: records counted from 1, and the
    // three before it are the ones verified.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("record 4: expected seq 4, found 5")
            && said.contains("(3 records verified before it)"),
        "{said}"
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
    // A log written to a file is plain text: no ANSI colour codes.
    assert!(!up.log_text().contains('\x1b'), "{:?}", up.log_text());
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
    // An unknown action is told with the names it could have meant.
    assert!(
        text.contains("unknown action \"melt\"; known: throttle_10, throttle_50"),
        "{text}"
    );
    // An error caused by a value from the environment says where it came
    // from, not only the file's key it clashes with.
    let thresholds = work.path().join("thresholds.yaml");
    std::fs::write(
        &thresholds,
        "thermal:\n  thresholds: {warning: 80, critical: 85, emergency: 95}\n",
    )
    .unwrap();
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"])
            .arg(&thresholds)
            .env("WARNING_TEMP", "90");
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("thermal.thresholds.critical: must be above warning (85 <= 90)")
            && text.contains(
                "note: thermal.thresholds.warning is 90 from the environment (WARNING_TEMP)"
            ),
        "{text}"
    );
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

/// Hot, throttled, then 73.5 °C: below warning (75) but above the clear
/// level (72). The sentinel steps down to warning, not normal, and the
/// coordinator keeps the throttle however long it stays there; only below
/// 72 is the throttle reset, once.
#[test]
fn throttle_stays_while_the_cpu_sits_between_the_clear_level_and_warning() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    // The package only: a read that catches its file mid-write is then no
    // CPU reading at all, not a cool core's.
    let cpu = sys.coretemp(60.0, &[58.0, 57.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = thermal_config(work.path(), "");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "node nova healthy", || {
        status(&data)
            .filter(|s| s["nodes"][0]["name"] == "nova" && s["nodes"][0]["status"] == "healthy")
    });

    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "throttle_50 result", || {
        (results_of(&audit(&data), "throttle_50", "succeeded") == 1).then_some(())
    });
    assert!(all_at(&sys, MAX / 2));

    // Inside the band for five times clear_for, proven on the
    // coordinator's clock by the heartbeats it received.
    cpu.heat(73.5);
    let first = wait_for(Duration::from_secs(30), "73.5 °C in status", || {
        status(&data).filter(|s| s["nodes"][0]["cpu_temp"] == 73.5)
    });
    let since = at(&first["nodes"][0]["last_seen"]);
    let s = heard_after(&data, since, 5, "5 s of 73.5 °C heartbeats", |n| {
        n["cpu_temp"] == 73.5
    });
    assert_eq!(s["nodes"][0]["throttle_level"], 50, "{s}");
    let records = audit(&data);
    assert!(
        commands_of(&records, "reset_throttle").is_empty(),
        "reset_throttle above the clear level: {:#?}",
        commands_of(&records, "reset_throttle")
    );
    assert!(all_at(&sys, MAX / 2), "the cap stays");
    assert_eq!(
        sentinel_says(&records),
        ["critical", "warning"],
        "73.5 °C is still warning for the sentinel"
    );

    // Below the clear level: one reset after clear_for.
    let records = cool_until_reset(&cpu, &sys, &data, 70.0);
    assert_eq!(
        sent(&records),
        ["throttle_50", "throttle_10", "reset_throttle"],
        "the warning step-down asks for throttle_10 (weaker, changes nothing); one reset"
    );
    assert_eq!(results_of(&records, "reset_throttle", "succeeded"), 1);
    assert_eq!(sentinel_says(&records), ["critical", "warning", "normal"]);
    assert!(all_at(&sys, MAX));
    assert!(up.sigterm().success());
}

/// `thermal.for.warning`: the warning is raised only once the reading has
/// stayed above 75 °C that long.
#[test]
fn for_warning_holds_the_alert_back_end_to_end() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0, 57.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = thermal_config(work.path(), "  for: {warning: 4}\n");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "node nova healthy", || {
        status(&data)
            .filter(|s| s["nodes"][0]["name"] == "nova" && s["nodes"][0]["status"] == "healthy")
    });

    let before = chrono::Utc::now();
    cpu.heat(77.0);
    let records = wait_for(Duration::from_secs(60), "warning alert", || {
        let r = audit(&data);
        (!sentinel_says(&r).is_empty()).then_some(r)
    });
    assert_eq!(sentinel_says(&records), ["warning"]);
    let alert = audit_events(&records, "alert")
        .into_iter()
        .find(|a| a["entry"]["data"]["alert"]["agent_id"] == "thermal-sentinel-nova")
        .unwrap();
    let raised = at(&alert["entry"]["data"]["alert"]["timestamp"]);
    // A lower bound only: the reading was first seen after `before`, and
    // held 4 s from then (1 s of slack for the sentinel's clock read just
    // before its sensors).
    assert!(
        raised - before >= chrono::Duration::seconds(3),
        "warning raised {} ms after the reading went up; for.warning is 4 s",
        (raised - before).num_milliseconds()
    );
    wait_for(Duration::from_secs(30), "throttle_10 result", || {
        (results_of(&audit(&data), "throttle_10", "succeeded") == 1).then_some(())
    });
    assert!(all_at(&sys, MAX * 9 / 10));
    assert!(up.sigterm().success());
}

/// A reader that goes away (`skos audit tail | head -1`) ends a printing
/// command quietly: no panic, no backtrace, the shell's usual SIGPIPE.
#[test]
fn a_closed_pipe_ends_a_printing_command_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;

    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    let cfg = thermal_config(work.path(), "");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(
        Duration::from_secs(30),
        "records in the audit trail",
        || (data.join("audit.jsonl").exists() && audit(&data).len() >= 2).then_some(()),
    );
    up.sigterm();

    // A pipe whose reading end is already closed: the first write fails.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fresh descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = skos()
        .args(["audit", "tail", "--json", "-n", "1000", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_second_skos_up_on_the_same_data_dir_is_refused_and_the_first_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(60.0, &[55.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = fast_config(work.path(), "");
    let (mut first, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "the first skos up reports", || {
        status(&data).filter(|s| s["nodes"][0]["name"] == "nova")
    });
    let out = run({
        let mut c = skos();
        c.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .env("SKOS_SYSFS_ROOT", sys.root())
            .env("NODE_NAME", "nova");
        c
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second skos up started: {err}");
    assert!(err.contains("locked by another SKOS process"), "{err}");
    assert!(
        err.contains("audit.jsonl"),
        "the message names the file: {err}"
    );
    assert!(first.alive(), "the first one stopped");
    // The trail the first one writes is intact.
    let verify = run({
        let mut c = skos();
        c.args(["audit", "verify", "--data-dir"]).arg(&data);
        c
    });
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Fills `dir`'s filesystem with one file until it is full.
fn fill_up(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn while_the_trail_cannot_be_written_no_new_action_runs() {
    // The trail on a small filesystem of its own (bind-mounted onto the
    // data dir's audit file: a symlink there is refused), the node's state
    // beside it with room to spare.
    let trail_fs = skos_testsupport::require!(
        "a tmpfs mount",
        skos_testsupport::tmpfs::Tmpfs::mount("256k", None)
    );
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = fast_config(work.path(), "");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // An empty trail there from the start, so it can be read at once.
    std::fs::write(trail_fs.path().join("audit.jsonl"), "").unwrap();
    std::fs::write(data.join("audit.jsonl"), "").unwrap();
    let trail = skos_testsupport::require!(
        "a bind mount",
        skos_testsupport::tmpfs::Mount::bind(
            &trail_fs.path().join("audit.jsonl"),
            &data.join("audit.jsonl"),
        )
    );
    let (mut up, _) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "nova joined", || {
        audit_events(&audit(&data), "node").first().map(|_| ())
    });
    let filler = fill_up(trail_fs.path());

    // The first decision after the disk filled goes out before its
    // records fail to be written; from then on nothing new is carried out.
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "throttle_50 in force", || {
        all_at(&sys, MAX / 2).then_some(())
    });
    wait_for(Duration::from_secs(30), "the trail failure said", || {
        up.log_text()
            .contains("audit trail cannot be written")
            .then_some(())
    });
    // An alert says why and where.
    let audit_alert = |s: &Value| -> Option<Value> {
        s["open_alerts"]
            .as_array()?
            .iter()
            .find(|a| a["type"] == "audit")
            .cloned()
    };
    let raised = wait_for(Duration::from_secs(30), "the audit alert in status", || {
        status(&data).and_then(|s| audit_alert(&s))
    });
    assert_eq!(raised["severity"], "critical", "{raised}");
    let message = raised["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("audit.jsonl") && message.contains("No space left"),
        "{raised}"
    );
    cpu.heat(97.0);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        all_at(&sys, MAX / 2),
        "a new action ran while the trail could not be written:\n{}",
        up.log_text()
    );
    assert!(up.alive());

    // Space again: what waited is audited, then carried out.
    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(30), "throttle_100 in force", || {
        all_at(&sys, MIN).then_some(())
    });
    let records = wait_for(Duration::from_secs(30), "throttle_100 audited", || {
        let r = audit(&data);
        (results_of(&r, "throttle_100", "succeeded") > 0).then_some(r)
    });
    for action in ["throttle_50", "throttle_100"] {
        assert_eq!(
            commands_of(&records, action).len(),
            1,
            "{action} audited once"
        );
    }
    wait_for(Duration::from_secs(30), "the audit alert cleared", || {
        status(&data)
            .filter(|s| audit_alert(s).is_none() && s["generated_at"].is_string())
            .map(|_| ())
    });
    let records = audit(&data);
    assert!(
        records.iter().any(|r| r["entry"]["event_type"] == "alert"
            && r["entry"]["data"]["alert"]["type"] == "audit"),
        "the audit alert is in the trail once it can be written"
    );
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify", "--data-dir"]).arg(&data);
        c
    });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(up.sigterm().success());
    drop(trail);
}

#[test]
fn status_of_a_stopped_skos_up_says_so_and_fails() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    let cfg = fast_config(work.path(), "");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "nova in status", || {
        status(&data).filter(|s| !s["nodes"][0].is_null())
    });
    assert!(up.sigterm().success());
    // The trail says where it stopped, as it says where it started.
    let records = audit(&data);
    let last = records.last().expect("records");
    assert_eq!(last["entry"]["event_type"], "stop", "{last}");
    assert_eq!(last["entry"]["node"], "nova", "{last}");
    let status_of = |json: bool| {
        run({
            let mut c = skos();
            c.args(["status", "--data-dir"]).arg(&data);
            if json {
                c.arg("--json");
            }
            c
        })
    };
    // Right after a clean stop: the snapshot it wrote last says so.
    for json in [false, true] {
        let out = status_of(json);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "json {json}: {stderr}");
        assert!(stderr.contains("`skos up` stopped"), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if json {
            let snap: Value = serde_json::from_str(&stdout).unwrap();
            assert!(snap["stopped_at"].is_string(), "{stdout}");
        } else {
            assert!(stdout.contains("stopped at "), "{stdout}");
        }
    }
    // What a killed one left, seen later: no stop recorded, and the
    // snapshot's time rewound by a minute instead of waiting for it to age.
    let path = data.join("status.json");
    let mut snap: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    snap.as_object_mut().unwrap().remove("stopped_at");
    let at = skos_core::timefmt::parse(snap["generated_at"].as_str().unwrap()).unwrap();
    snap["generated_at"] = Value::from(skos_core::timefmt::format(
        &(at - chrono::Duration::seconds(60)),
    ));
    std::fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
    for json in [false, true] {
        let out = status_of(json);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "json {json}: {stderr}");
        assert!(
            stderr.contains("is not running with this data dir"),
            "{stderr}"
        );
        assert!(!out.stdout.is_empty(), "the snapshot is still shown");
    }
    // No snapshot at all: not running either.
    std::fs::remove_file(&path).unwrap();
    let out = status_of(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no status at"), "{stderr}");
    assert!(!stderr.contains("NATS_URL"), "{stderr}");
    // With a config that names a bus, and no NATS_URL: the hint says how
    // to ask the fleet's coordinator instead.
    let fleet = work.path().join("operator.yaml");
    std::fs::write(&fleet, "nats:\n  url: nats://bus.example:4222\n").unwrap();
    let out = run({
        let mut c = skos();
        c.args(["status", "--data-dir"])
            .arg(&data)
            .arg("-c")
            .arg(&fleet)
            .env_remove("NATS_URL");
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("set NATS_URL=nats://bus.example:4222"),
        "{stderr}"
    );
}

#[test]
fn skos_up_refuses_a_command_deadline_its_agent_would_refuse() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    std::fs::write(&cfg, "coordinator: {command_deadline: 1000}\n").unwrap();
    let out = run({
        let mut c = skos();
        c.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(work.path().join("data"));
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("coordinator.command_deadline")
            && stderr.contains("trust.max_deadline_seconds"),
        "{stderr}"
    );
}

/// `skos audit tail -f` on the data dir prints the last records, then each
/// one as `skos up` writes it, once each, until stopped.
#[test]
fn audit_tail_follow_prints_records_as_they_are_written() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = fast_config(work.path(), "");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "the trail", || {
        data.join("audit.jsonl").exists().then_some(())
    });
    wait_for(Duration::from_secs(30), "nova joined", || {
        audit_events(&audit(&data), "node").first().map(|_| ())
    });
    let mut tail = Proc::spawn(
        {
            let mut c = skos();
            c.args(["audit", "tail", "-f", "-n", "2", "--json", "--data-dir"])
                .arg(&data);
            c
        },
        work.path(),
        "tail-f",
    );
    cpu.heat(87.0);
    let printed = wait_for(
        Duration::from_secs(30),
        "tail -f to print the throttle",
        || {
            let lines: Vec<Value> = tail
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines
                .iter()
                .any(|r| result_is(r, "throttle_50", "succeeded"))
                .then_some(lines)
        },
    );
    let seqs: Vec<u64> = printed.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(seqs.len() > 2, "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the last two, then every record once, in order: {seqs:?}"
    );
    assert!(tail.sigterm().success());
    assert!(up.sigterm().success());
}

/// `skos status --watch` shows the status again and again until stopped,
/// and refuses a period it cannot keep.
#[test]
fn status_watch_shows_it_again_until_stopped() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    let cfg = fast_config(work.path(), "");
    let (mut up, data) = up_nova(work.path(), &sys, &cfg);
    wait_for(Duration::from_secs(30), "nova in status", || {
        status(&data).filter(|s| !s["nodes"][0].is_null())
    });
    let mut watch = Proc::spawn(
        {
            let mut c = skos();
            c.args(["status", "--watch", "0.2", "--json", "--data-dir"])
                .arg(&data);
            c
        },
        work.path(),
        "status-watch",
    );
    // Each status is one pretty-printed JSON object, one after another.
    wait_for(Duration::from_secs(30), "three statuses", || {
        let text = watch.log_text();
        let n = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .filter_map(|v| v.ok())
            .filter(|v| v["nodes"][0]["name"] == "nova")
            .count();
        (n >= 3).then_some(())
    });
    assert!(watch.sigterm().success());
    let out = run({
        let mut c = skos();
        c.args(["status", "--watch", "0", "--data-dir"]).arg(&data);
        c
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--watch 0"));
    assert!(up.sigterm().success());
}

/// Completions and the man page come from the command line's own
/// definition: every subcommand is in them, and bash can read its script.
#[test]
fn completions_and_man_page_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run({
            let mut c = skos();
            c.args(["completions", shell]);
            c
        });
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["status", "audit", "checkpoint", "fleet", "nats-config"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let script = dir.path().join("skos.bash");
            std::fs::write(&script, &out.stdout).unwrap();
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .unwrap();
            assert!(check.status.success(), "bash cannot read it");
        }
    }
    let out = run({
        let mut c = skos();
        c.arg("man");
        c
    });
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH skos 1"), "{page}");
    for word in [
        "up",
        "coordinator",
        "agent",
        "status",
        "audit",
        "completions",
    ] {
        assert!(page.contains(word), "man page lacks {word}");
    }
    let bad = run({
        let mut c = skos();
        c.args(["completions", "cmd.exe"]);
        c
    });
    assert!(!bad.status.success());
}

/// `skos up` says plainly at start what this machine lets it sense and act
/// on; a machine with no sensor is told it will not be throttled.
#[test]
fn skos_up_says_what_it_can_sense_and_act_on() {
    for with_sensor in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let sys = FakeSysfs::new();
        let _cpu = with_sensor.then(|| sys.coretemp(50.0, &[48.0]));
        if with_sensor {
            fake_cpufreq(sys.root(), 2, MIN, MAX);
        }
        let cfg = fast_config(work.path(), "");
        let (mut up, _) = up_nova(work.path(), &sys, &cfg);
        let text = wait_for(Duration::from_secs(30), "the start summary", || {
            let t = up.log_text();
            t.contains("thermal_sentinel: acts with").then_some(t)
        });
        assert!(
            text.contains("SKOS on node nova: what this machine lets it sense and act on"),
            "{text}"
        );
        if with_sensor {
            assert!(
                text.contains("thermal_sentinel: senses 2: cpu") && text.contains("cpufreq"),
                "{text}"
            );
        } else {
            assert!(text.contains("it sees no heat here"), "{text}");
        }
        assert!(up.sigterm().success());
    }
}
