//! Field case 12 and its kind: mounts that cannot fill or cannot be
//! cleaned are not judged for fullness. The statvfs numbers a real machine
//! reported are replayed through the watcher's statvfs seam, its mountinfo
//! through `proc_root`; inputs live in `tests/fixtures/field/`.

mod common;
use common::fixture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, Utc};
use skos_agent::antibody::Antibody;
use skos_agent::storage::usage::{RawStat, StatSource};
use skos_agent::storage::{watched_mounts, StorageWatcher, Watched};
use skos_core::config::Config;
use skos_core::protocol::{Heartbeat, Severity};

/// Case 12's statvfs of `/`, from the fixture.
fn composefs_root() -> RawStat {
    let text = std::fs::read_to_string(fixture("12-composefs-root-statfs/statfs.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = &v["statfs"];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    RawStat {
        block_size: n("f_bsize"),
        fragment_size: n("f_frsize"),
        blocks: n("f_blocks"),
        blocks_free: n("f_bfree"),
        blocks_available: n("f_bavail"),
        files: n("f_files"),
        files_free: n("f_ffree"),
        read_only: n("f_flag") & 1 == 1,
    }
}

/// An xfs `/var` at 40 %.
fn healthy_var() -> RawStat {
    RawStat {
        block_size: 4096,
        fragment_size: 4096,
        blocks: 10_000_000,
        blocks_free: 6_000_000,
        blocks_available: 6_000_000,
        files: 5_000_000,
        files_free: 4_900_000,
        read_only: false,
    }
}

fn source(map: BTreeMap<PathBuf, RawStat>) -> StatSource {
    Arc::new(move |p: &Path| {
        map.get(p).copied().ok_or_else(|| skos_agent::Error::Io {
            path: p.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    })
}

/// A `proc_root` whose `self/mountinfo` is `text`.
fn proc_with(text: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("self")).unwrap();
    std::fs::write(d.path().join("self/mountinfo"), text).unwrap();
    d
}

fn heartbeat(w: &StorageWatcher) -> Heartbeat {
    let mut hb: Heartbeat = serde_json::from_value(serde_json::json!({
        "agent_id": "a", "agent_type": "storage_watcher", "node": "athena",
        "timestamp": "2024-01-01T00:00:00Z"
    }))
    .unwrap();
    w.report(&mut hb);
    hb
}

/// Case 12: `/` is a composefs image, 100 % used by its numbers, read-only.
/// Listed in `storage.mounts`, it still raises nothing, does not count in
/// `storage_percent` (what the coordinator verifies cleanups on), and a
/// person told about storage is not told it is full; `/var` is judged.
#[test]
fn case12_composefs_root_is_not_judged() {
    let mountinfo = std::fs::read_to_string(fixture("12-composefs-root-statfs/mountinfo")).unwrap();
    let proc = proc_with(&mountinfo);
    let out = tempfile::tempdir().unwrap();
    let told = out.path().join("told.json");
    let mut cfg = Config {
        proc_root: proc.path().to_path_buf(),
        ..Config::default()
    };
    cfg.storage.mounts = vec!["/".into(), "/var".into()];
    cfg.storage.notify.command = Some(vec![
        "sh".into(),
        "-c".into(),
        format!("cat > {}", told.display()),
    ]);
    let stats = BTreeMap::from([
        (PathBuf::from("/"), composefs_root()),
        (PathBuf::from("/var"), healthy_var()),
    ]);
    let mut w = StorageWatcher::with_stat_source(&cfg, source(stats));
    let t0 = Utc::now();
    for i in 0..40 {
        let alerts = w.sense(t0 + Duration::seconds(30 * i));
        assert!(alerts.is_empty(), "reading {i}: {alerts:#?}");
    }
    let mounts: Vec<&Path> = w.usage().iter().map(|u| u.mount.as_path()).collect();
    assert_eq!(mounts, [Path::new("/var")]);
    assert_eq!(w.storage_percent(), Some(40.0));
    let nj = w.not_judged();
    assert_eq!(nj.len(), 1);
    assert_eq!(nj[0].mount, Path::new("/"));
    assert_eq!(nj[0].why.to_string(), "read-only overlay mount");
    let hb = heartbeat(&w);
    assert_eq!(hb.storage_percent, Some(40.0));
    let reported = &hb.metadata["storage_not_judged"][0];
    assert_eq!(reported["mount"], "/");
    assert_eq!(reported["reason"], "read_only");
    assert_eq!(reported["fs_type"], "overlay");

    // A person asked about storage hears about /var only.
    let cmd: skos_core::protocol::Command = serde_json::from_value(serde_json::json!({
        "action_id": "a1", "action_type": "alert_human", "node": "athena",
        "parameters": {}, "deadline": "2099-01-01T00:00:00Z",
        "timestamp": "2024-01-01T00:00:00Z"
    }))
    .unwrap();
    let outcome = w.job(&cmd).run();
    assert_eq!(outcome.status.as_str(), "succeeded", "{}", outcome.message);
    let sent = std::fs::read_to_string(&told).unwrap();
    assert!(sent.contains("/var: 40.0% used"), "{sent}");
    assert!(!sent.contains("100.0%"), "{sent}");
}

/// The same numbers on a writable filesystem are a full disk: the
/// judgement hinges on read-only, not on ignoring full mounts.
#[test]
fn case12_numbers_on_a_writable_mount_are_an_emergency() {
    let proc = proc_with("1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n");
    let mut cfg = Config {
        proc_root: proc.path().to_path_buf(),
        ..Config::default()
    };
    cfg.storage.mounts = vec!["/".into()];
    let rw = RawStat {
        read_only: false,
        ..composefs_root()
    };
    let mut w =
        StorageWatcher::with_stat_source(&cfg, source(BTreeMap::from([(PathBuf::from("/"), rw)])));
    let alerts = w.sense(Utc::now());
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].severity, Severity::Emergency);
    assert_eq!(alerts[0].details["percent"], 100.0);
    assert!(w.not_judged().is_empty());
}

/// Read-only by mountinfo's superblock options alone (a statvfs without
/// the flag), image filesystems, pseudo filesystems unless listed, and no
/// blocks. A read-only mount of a writable filesystem (`ro` per mount,
/// `rw` superblock) still fills through its other mounts: judged.
#[test]
fn what_cannot_fill_or_be_cleaned_is_not_judged() {
    let full = RawStat {
        block_size: 4096,
        fragment_size: 4096,
        blocks: 1000,
        blocks_free: 0,
        blocks_available: 0,
        files: 100,
        files_free: 50,
        read_only: false,
    };
    let no_blocks = RawStat { blocks: 0, ..full };
    let mountinfo = "\
1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw
2 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=4096k
3 1 7:0 / /snap/core/1 ro,nodev - squashfs /dev/loop0 ro
4 1 7:1 / /media/cd rw,nosuid - iso9660 /dev/sr0 ro
5 1 8:2 / /data rw,relatime - ext4 /dev/sdb1 ro
8 1 8:3 / /home ro,relatime - ext4 /dev/sdc1 rw
6 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
7 1 0:30 / /scratch rw,nosuid - tmpfs tmpfs rw,size=64k
";
    let proc = proc_with(mountinfo);
    let mut cfg = Config {
        proc_root: proc.path().to_path_buf(),
        ..Config::default()
    };
    let mounts = [
        "/dev",
        "/snap/core/1",
        "/media/cd",
        "/data",
        "/sys/fs/cgroup",
        "/scratch",
        "/home",
    ];
    cfg.storage.mounts = mounts.iter().map(PathBuf::from).collect();
    let stats: BTreeMap<PathBuf, RawStat> = mounts
        .iter()
        .map(|m| {
            let s = if *m == "/sys/fs/cgroup" {
                no_blocks
            } else {
                full
            };
            (PathBuf::from(m), s)
        })
        .collect();
    let mut w = StorageWatcher::with_stat_source(&cfg, source(stats));
    let alerts = w.sense(Utc::now());
    // Listed devtmpfs, the tmpfs and the read-only bind of a writable disk
    // are judged (and full); nothing else.
    let alerted: Vec<String> = alerts
        .iter()
        .map(|a| a.details["mount"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(alerted, ["/dev", "/scratch", "/home"], "{alerts:#?}");
    let why: BTreeMap<String, String> = w
        .not_judged()
        .iter()
        .map(|n| {
            let j = serde_json::to_value(n).unwrap();
            (
                n.mount.display().to_string(),
                j["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        why,
        BTreeMap::from(
            [
                ("/snap/core/1", "image"),
                ("/media/cd", "image"),
                ("/data", "read_only"),
                ("/sys/fs/cgroup", "no_blocks"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        )
    );
}

/// With `storage.mounts` empty, the watched mounts are those holding the
/// configured dirs, each once; a pseudo filesystem found that way is not
/// judged.
#[test]
fn watched_mounts_default_to_the_mounts_of_the_configured_dirs() {
    let root = tempfile::tempdir().unwrap();
    let r = std::fs::canonicalize(root.path()).unwrap();
    for d in ["a/tmp", "a/log", "b/log", "c"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let mountinfo = format!(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
         2 1 0:40 / {a} rw - tmpfs tmpfs rw\n\
         3 1 8:2 / {b} rw - xfs /dev/sdb1 rw\n\
         4 1 0:5 / {c} rw - devtmpfs devtmpfs rw\n",
        a = r.join("a").display(),
        b = r.join("b").display(),
        c = r.join("c").display(),
    );
    let proc = proc_with(&mountinfo);
    let mut cfg = Config {
        proc_root: proc.path().to_path_buf(),
        ..Config::default()
    };
    cfg.storage.temp.dirs = vec![r.join("a/tmp"), r.join("c/tmp-not-yet")];
    cfg.storage.logs.dirs = vec![r.join("a/log"), r.join("b/log")];
    cfg.storage.archive.dirs = vec![r.join("b/old-not-yet")];
    let table = skos_agent::storage::mounts::read_mountinfo(proc.path()).unwrap();
    let watched = watched_mounts(&cfg.storage, Some(&table));
    let derived = |p: &str| Watched {
        mount: r.join(p),
        explicit: false,
    };
    assert_eq!(watched, [derived("a"), derived("c"), derived("b")]);

    let half = RawStat {
        block_size: 4096,
        fragment_size: 4096,
        blocks: 1000,
        blocks_free: 100,
        blocks_available: 100,
        files: 0,
        files_free: 0,
        read_only: false,
    };
    let stats: BTreeMap<PathBuf, RawStat> =
        ["a", "b", "c"].iter().map(|p| (r.join(p), half)).collect();
    let mut w = StorageWatcher::with_stat_source(&cfg, source(stats));
    let alerts = w.sense(Utc::now());
    let mut alerted: Vec<PathBuf> = alerts
        .iter()
        .map(|a| PathBuf::from(a.details["mount"].as_str().unwrap()))
        .collect();
    alerted.sort();
    assert_eq!(alerted, [r.join("a"), r.join("b")], "{alerts:#?}");
    assert_eq!(w.not_judged().len(), 1);
    assert_eq!(w.not_judged()[0].mount, r.join("c"));

    // Listed explicitly, the same pseudo filesystem is judged.
    let listed = Config {
        storage: skos_core::config::StorageConfig {
            mounts: vec![r.join("c")],
            ..cfg.storage.clone()
        },
        ..cfg.clone()
    };
    assert_eq!(
        watched_mounts(&listed.storage, Some(&table)),
        [Watched {
            mount: r.join("c"),
            explicit: true
        }]
    );

    // Without mountinfo the dirs' devices say where their mounts are:
    // here all on the one filesystem holding the temp dir.
    let on_one = watched_mounts(&cfg.storage, None);
    assert_eq!(on_one.len(), 1, "{on_one:?}");
    assert!(r.starts_with(&on_one[0].mount), "{on_one:?}");

    // Nothing configured: nothing watched (as before).
    assert!(watched_mounts(&Config::default().storage, Some(&table)).is_empty());
}

/// A mount that was alerting and becomes read-only (an ext4 remounted ro
/// after errors: its superblock says `ro`) is no longer judged, but its
/// alert is not cleared: the disk is still full, now read-only too, and a
/// clear would tell the coordinator it is healthy. It raises nothing more.
#[test]
fn a_mount_that_turns_read_only_keeps_its_alert_open() {
    let proc = tempfile::tempdir().unwrap();
    let mountinfo = |super_opts: &str| {
        std::fs::create_dir_all(proc.path().join("self")).unwrap();
        std::fs::write(
            proc.path().join("self/mountinfo"),
            format!("1 0 8:1 / / rw - ext4 /dev/sda1 {super_opts}\n"),
        )
        .unwrap();
    };
    mountinfo("rw");
    let mut cfg = Config {
        proc_root: proc.path().to_path_buf(),
        ..Config::default()
    };
    cfg.storage.mounts = vec!["/".into()];
    let state = Arc::new(std::sync::Mutex::new(RawStat {
        block_size: 4096,
        fragment_size: 4096,
        blocks: 1000,
        blocks_free: 10,
        blocks_available: 10,
        files: 0,
        files_free: 0,
        read_only: false,
    }));
    let shared = state.clone();
    let src: StatSource = Arc::new(move |_p: &Path| Ok(*shared.lock().unwrap()));
    let mut w = StorageWatcher::with_stat_source(&cfg, src);
    let t0 = Utc::now();
    let first = w.sense(t0);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].severity, Severity::Emergency);
    state.lock().unwrap().read_only = true;
    mountinfo("ro,errors=remount-ro");
    for i in 1..10 {
        let fx = w.sense(t0 + Duration::seconds(10 * i));
        assert!(fx.is_empty(), "{fx:#?}");
    }
    assert_eq!(w.not_judged().len(), 1);
    assert_eq!(w.storage_percent(), None, "a read-only mount is not judged");
    // Repaired and remounted writable, and cleaned meanwhile: judged again,
    // its alert is cleared.
    state.lock().unwrap().read_only = false;
    state.lock().unwrap().blocks_available = 900;
    state.lock().unwrap().blocks_free = 900;
    mountinfo("rw");
    let cleared = w.sense(t0 + Duration::seconds(200));
    assert_eq!(cleared.len(), 1, "{cleared:#?}");
    assert_eq!(cleared[0].severity, Severity::Normal);
    assert_eq!(cleared[0].details["previous_severity"], "emergency");
    assert_eq!(w.storage_percent(), Some(10.0));
}
