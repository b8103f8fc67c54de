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
