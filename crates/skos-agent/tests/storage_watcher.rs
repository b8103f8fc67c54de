//! The storage watcher's sensing on real tmpfs mounts: bytes, inodes, fill
//! rate and the predicted warning.

use chrono::{Duration, Utc};
use skos_agent::storage::StorageWatcher;
use skos_core::config::Config;
use skos_core::protocol::{AlertKind, Severity};
use skos_testsupport::tmpfs::Tmpfs;

fn watcher(mount: &std::path::Path) -> StorageWatcher {
    watcher_of(&[mount])
}

fn watcher_of(mounts: &[&std::path::Path]) -> StorageWatcher {
    let mut cfg = Config::default();
    cfg.storage.mounts = mounts.iter().map(|m| m.to_path_buf()).collect();
    cfg.storage.predict_horizon = 3600.0;
    StorageWatcher::new(&cfg)
}

fn mount(size: &str, inodes: Option<u64>) -> Option<Tmpfs> {
    // Skips, or fails under SKOS_TEST_REQUIRE_ALL=1, where none can be mounted.
    skos_testsupport::require::require(
        &skos_testsupport::require::test_name(module_path!()),
        "a tmpfs mount",
        Tmpfs::mount(size, inodes),
    )
}

#[test]
fn inode_exhausted_tmpfs_is_as_full_as_a_byte_full_one() {
    let Some(fs) = mount("64M", Some(64)) else {
        return;
    };
    let mut w = watcher(fs.path());
    assert!(
        w.sense(Utc::now()).is_empty(),
        "an empty mount raises nothing"
    );
    // Tiny files: almost no bytes, but every inode.
    let mut made = 0;
    for i in 0..200 {
        if std::fs::write(fs.path().join(format!("f{i}")), b"x").is_err() {
            break;
        }
        made += 1;
    }
    assert!(made < 200, "the inode limit was never hit");
    let alerts = w.sense(Utc::now());
    let u = &w.usage()[0];
    assert!(u.bytes_percent < 5.0, "bytes {:.1}%", u.bytes_percent);
    assert!(u.inodes_percent.unwrap() > 95.0);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::Storage);
    assert_eq!(alerts[0].severity, Severity::Emergency);
    assert!(
        alerts[0].message.contains("inodes"),
        "{}",
        alerts[0].message
    );
    assert!(w.storage_percent().unwrap() > 95.0);
}

#[test]
fn a_fast_filling_mount_gets_a_predicted_warning_with_its_fill_rate() {
    let Some(fs) = mount("16M", None) else { return };
    let mut w = watcher(fs.path());
    let t0 = Utc::now();
    assert!(w.sense(t0).is_empty());
    // 1 MiB every 10 s: critical (90 % of 16 MiB) is minutes away.
    let mut predicted = None;
    for i in 1..=4 {
        fs.fill(&format!("grow-{i}.bin"), 1024 * 1024);
        let alerts = w.sense(t0 + Duration::seconds(10 * i));
        if let Some(a) = alerts.into_iter().next() {
            predicted = Some(a);
            break;
        }
    }
    let a = predicted.expect("a predicted warning");
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.details["event"], "predicted");
    let rate = a.details["fill_rate_bytes_per_second"].as_f64().unwrap();
    assert!((rate - 104_857.6).abs() < 5_000.0, "rate {rate}");
    let eta = a.details["seconds_to_critical"].as_f64().unwrap();
    assert!(eta > 0.0 && eta < 3600.0, "eta {eta}");
    // Said once, not at every reading.
    fs.fill("grow-more.bin", 512 * 1024);
    assert!(w.sense(t0 + Duration::seconds(60)).is_empty());
}

#[test]
fn an_unreadable_mount_is_skipped_not_invented() {
    let mut w = watcher(std::path::Path::new("/does/not/exist"));
    assert!(w.sense(Utc::now()).is_empty());
    assert_eq!(w.storage_percent(), None);
}

/// Two mounts that cross a threshold in the same sensing pass share its
/// time: their alerts must still be two, with distinct ids, or the
/// coordinator would take the second for a copy of the first.
#[test]
fn two_mounts_full_in_one_pass_raise_two_distinct_alerts() {
    let Some(a) = mount("4M", None) else { return };
    let Some(b) = mount("4M", None) else { return };
    let mut w = watcher_of(&[a.path(), b.path()]);
    let now = Utc::now();
    assert!(w.sense(now).is_empty());
    a.fill("big.bin", 3900 * 1024);
    b.fill("big.bin", 3900 * 1024);
    let alerts = w.sense(now + Duration::seconds(1));
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[0].severity, alerts[1].severity);
    assert_ne!(alerts[0].alert_id, alerts[1].alert_id);
    assert_ne!(alerts[0].id_digest(), alerts[1].id_digest());
    let mounts: Vec<_> = alerts.iter().map(|x| x.details["mount"].clone()).collect();
    assert_ne!(mounts[0], mounts[1]);
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The kernel's own read-only flag: a full tmpfs remounted read-only can
/// neither fill further nor be cleaned, so it raises nothing; writable
/// again, it is judged again.
#[test]
fn a_full_mount_remounted_read_only_is_not_judged() {
    let Some(fs) = mount("4M", None) else { return };
    fs.fill("big.bin", 3900 * 1024);
    let p = fs.path().display().to_string();
    run(&["mount", "-o", "remount,ro", &p]).unwrap();
    let mut w = watcher(fs.path());
    let t0 = Utc::now();
    assert!(w.sense(t0).is_empty(), "a read-only mount raised an alert");
    assert!(w.sense(t0 + Duration::seconds(10)).is_empty());
    assert_eq!(w.storage_percent(), None);
    assert_eq!(w.not_judged().len(), 1);
    assert_eq!(w.not_judged()[0].why.to_string(), "read-only tmpfs mount");
    run(&["mount", "-o", "remount,rw", &p]).unwrap();
    let alerts = w.sense(t0 + Duration::seconds(20));
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].severity, Severity::Emergency);
    assert!(w.not_judged().is_empty());
}

/// No `storage.mounts`: the mount holding the temp dir is watched (found
/// in the real mountinfo).
#[test]
fn the_mount_of_a_configured_dir_is_watched_by_default() {
    let Some(fs) = mount("4M", None) else { return };
    std::fs::create_dir_all(fs.path().join("tmp")).unwrap();
    let mut cfg = Config::default();
    cfg.storage.temp.dirs = vec![fs.path().join("tmp")];
    let mut w = StorageWatcher::new(&cfg);
    let now = Utc::now();
    assert!(w.sense(now).is_empty());
    let canon = std::fs::canonicalize(fs.path()).unwrap();
    assert_eq!(w.usage().len(), 1);
    assert_eq!(w.usage()[0].mount, canon);
    fs.fill("tmp/big.bin", 3900 * 1024);
    let alerts = w.sense(now + Duration::seconds(1));
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].details["mount"], canon.display().to_string());
}

/// A fill, a cleanup, then a flat mount: no prediction may follow the
/// cleanup (the fill it was made of ended), or `cleanup_temp` runs again,
/// frees nothing and counts as a breaker failure. A new fill afterwards is
/// predicted again, on its own rate.
#[test]
fn a_cleanup_restarts_the_fill_rate() {
    let Some(fs) = mount("16M", None) else { return };
    let mut w = watcher(fs.path());
    let t0 = Utc::now();
    let at = |s: i64| t0 + Duration::seconds(s);
    assert!(w.sense(at(0)).is_empty());
    // 3.5 MiB every 10 s: predicted at once, then over warning (80 %).
    let mut seen = Vec::new();
    for i in 1..=4 {
        fs.fill(&format!("grow-{i}.bin"), 3584 * 1024);
        for a in w.sense(at(10 * i)) {
            seen.push((
                a.severity,
                a.details.get("event").cloned().unwrap_or_default(),
            ));
        }
    }
    assert_eq!(
        seen.first().map(|s| s.1.clone()),
        Some("predicted".into()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(s, e)| *s >= Severity::Warning && e.is_null()),
        "a level alert: {seen:?}"
    );
    // The cleanup: 10.5 of 14 MiB go. The level clears.
    for i in 1..=3 {
        std::fs::remove_file(fs.path().join(format!("grow-{i}.bin"))).unwrap();
    }
    let back = w.sense(at(50));
    assert!(
        back.iter().all(|a| a.severity == Severity::Normal),
        "{back:#?}"
    );
    // Flat afterwards: the window that still held the fill would slope
    // up and predict critical here.
    for s in [60, 70, 80, 90] {
        let alerts = w.sense(at(s));
        assert!(alerts.is_empty(), "at {s} s: {alerts:#?}");
    }
    // A new fill is predicted again, from the readings since the cleanup
    // (the earlier fill, 350 KiB/s, is not in its rate).
    let mut predicted = None;
    for i in 1..=4 {
        fs.fill(&format!("again-{i}.bin"), 1024 * 1024);
        if let Some(a) = w.sense(at(90 + 10 * i)).into_iter().next() {
            predicted = Some(a);
            break;
        }
    }
    let a = predicted.expect("the new fill predicted");
    assert_eq!(a.details["event"], "predicted");
    let rate = a.details["fill_rate_bytes_per_second"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 110_000.0, "rate {rate}");
}

/// A dry-run `cleanup_temp` through the antibody, as a command would run it.
fn cleanup_temp_result(dir: &std::path::Path) -> skos_agent::Outcome {
    use skos_agent::antibody::{Antibody, Execution};
    let mut cfg = Config::default();
    cfg.storage.allowed_roots = vec![dir.parent().unwrap().to_path_buf()];
    cfg.storage.temp.dirs = vec![dir.to_path_buf()];
    cfg.storage.temp.max_age = 0.0;
    cfg.storage.dry_run = true;
    let mut w = StorageWatcher::new(&cfg);
    let cmd = skos_core::protocol::Command {
        action_id: "test:cleanup_temp".into(),
        action_type: "cleanup_temp".into(),
        parameters: Default::default(),
        timestamp: Utc::now(),
        node: None,
        deadline: None,
        cause: None,
        problem: None,
        term: None,
        level: None,
    };
    match w.execute(&cmd) {
        Execution::Done(o) => o,
        Execution::Background(job) => job(),
    }
}

#[test]
fn a_file_name_that_is_not_utf8_keeps_the_results_details() {
    use std::os::unix::ffi::OsStrExt;
    let Some(fs) = mount("4M", None) else { return };
    let dir = fs.path().join("tmp");
    std::fs::create_dir(&dir).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.bin");
    let forged = "x\n2026-01-01T00:00:00Z  INFO skos: all clear";
    for name in [
        odd,
        std::ffi::OsStr::new(forged),
        std::ffi::OsStr::new("plain.bin"),
    ] {
        std::fs::write(dir.join(name), b"0123456789").unwrap();
        skos_testsupport::tmpfs::age(&dir.join(name), 86400);
    }
    let o = cleanup_temp_result(&std::fs::canonicalize(&dir).unwrap());
    assert_eq!(
        o.status,
        skos_core::protocol::ResultStatus::Succeeded,
        "{}",
        o.message
    );
    // Every detail is there, each name shown losslessly on one line.
    let listed: Vec<&str> = o.details["would_delete"]
        .as_array()
        .unwrap_or_else(|| panic!("details lost: {:?}", o.details))
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed.iter().any(|p| p.ends_with("/bad-\\xff\\xfe.bin")),
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|p| p.ends_with("/x\\n2026-01-01T00:00:00Z  INFO skos: all clear")),
        "{listed:?}"
    );
    assert!(listed.iter().all(|p| !p.contains('\n')), "{listed:?}");
    assert_eq!(o.details["files_deleted"], 3);
    assert!(o.details["dirs"][0]["dir"]
        .as_str()
        .unwrap()
        .ends_with("/tmp"));
}

/// The check before acting on a real tmpfs: the mount's problem holds
/// while it is full, and is gone once a file was deleted and the usage
/// read again (below the level by the hysteresis); another mount's or
/// kind's problem is unknown.
#[test]
fn the_precondition_follows_the_mounts_usage() {
    use skos_agent::antibody::Precondition;
    let Some(fs) = mount("16M", None) else { return };
    let mut w = watcher(fs.path());
    let t0 = Utc::now();
    assert!(w.sense(t0).is_empty());
    fs.fill("big.bin", 15 * 1024 * 1024);
    let alerts = w.sense(t0 + Duration::seconds(1));
    let alert = alerts
        .iter()
        .find(|a| a.severity >= Severity::Critical)
        .unwrap_or_else(|| panic!("{alerts:?}"));
    let problem = alert.problem().to_string();
    assert!(problem.starts_with("storage:"), "{problem}");
    assert_eq!(w.precondition(&problem, 90.0), Precondition::Holds);
    std::fs::remove_file(fs.path().join("big.bin")).unwrap();
    w.sense(t0 + Duration::seconds(2));
    match w.precondition(&problem, 90.0) {
        Precondition::Gone { reading, source } => {
            assert!(reading < 10.0, "{reading}");
            assert_eq!(format!("storage:{source}"), problem);
        }
        other => panic!("an emptied mount still full? {other:?}"),
    }
    assert_eq!(
        w.precondition("storage:/not/watched", 90.0),
        Precondition::Unknown
    );
    assert_eq!(w.precondition("thermal:cpu", 90.0), Precondition::Unknown);
}

/// A fill predicted while the mount is below warning, then stopped short:
/// once the fill no longer reaches critical within twice the horizon, the
/// early warning is withdrawn with one `normal` alert, so it (and the
/// cleanup that answered it) does not stay open; files going away end the
/// fill at once. A new fill is predicted again.
#[test]
fn a_fill_that_stops_short_withdraws_its_prediction() {
    let Some(fs) = mount("16M", None) else { return };
    let mut w = watcher(fs.path());
    let t0 = Utc::now();
    let at = |s: i64| t0 + Duration::seconds(s);
    assert!(w.sense(at(0)).is_empty());
    let event = |a: &skos_core::protocol::Alert| {
        a.details
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("level")
            .to_string()
    };
    // 1 MiB every 10 s, four times: predicted, still below warning.
    let mut seen = Vec::new();
    for i in 1..=4 {
        fs.fill(&format!("grow-{i}.bin"), 1024 * 1024);
        seen.extend(w.sense(at(10 * i)).iter().map(|a| (a.severity, event(a))));
    }
    assert_eq!(seen, [(Severity::Warning, "predicted".to_string())]);
    // Flat for as long as a horizon: the fill slows to nothing in the
    // window, and the prediction is withdrawn once, with one alert.
    let mut withdrawn = Vec::new();
    for i in 1..=60 {
        for a in w.sense(at(40 + 60 * i)) {
            withdrawn.push((i, a));
        }
    }
    assert_eq!(withdrawn.len(), 1, "{withdrawn:#?}");
    let a = &withdrawn[0].1;
    assert_eq!(a.severity, Severity::Normal);
    assert_eq!(event(a), "prediction_withdrawn");
    assert_eq!(a.details["previous_severity"], "warning");
    assert!(a.message.contains("withdrawn"), "{}", a.message);
    // A new fill: predicted again; then a file deleted ends it at once.
    let base = 40 + 60 * 60;
    let mut again = Vec::new();
    for i in 1..=4 {
        fs.fill(&format!("again-{i}.bin"), 1024 * 1024);
        again.extend(
            w.sense(at(base + 10 * i))
                .iter()
                .map(|a| (a.severity, event(a))),
        );
    }
    assert_eq!(again, [(Severity::Warning, "predicted".to_string())]);
    std::fs::remove_file(fs.path().join("again-4.bin")).unwrap();
    let gone: Vec<_> = w
        .sense(at(base + 50))
        .iter()
        .map(|a| (a.severity, event(a)))
        .collect();
    assert_eq!(
        gone,
        [(Severity::Normal, "prediction_withdrawn".to_string())]
    );
}
