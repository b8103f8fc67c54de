//! Files outside the configured dirs never change: each attack on the
//! storage actions and on `regenerate_config`, played for real on a tmpfs,
//! with a second, unprivileged user (`nobody`) doing what an attacker
//! would, symlink swaps and bind mounts included.
//!
//! Root is needed (tmpfs and bind mounts, chown, a child running as
//! `nobody`); without it each test says `SKIP` and why, or fails under
//! `SKOS_TEST_REQUIRE_ALL=1`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use skos_agent::storage::actions::{self, Report, RunCtx};
use skos_core::config::{MeshConfig, MeshInterface, RestartMethod, StorageConfig};
use skos_testsupport::tmpfs::{Mount, Tmpfs};

const DAY: u64 = 86400;
/// `nobody`.
const NOBODY: u32 = 65534;

macro_rules! setup_or_skip {
    () => {{
        skos_testsupport::require!("root", skos_testsupport::require::root());
        skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("16M", None))
    }};
}

fn ctx() -> RunCtx<'static> {
    RunCtx {
        now: SystemTime::now(),
        dry_run: false,
        max_delete_bytes: u64::MAX,
        proc_root: Path::new("/proc"),
        progress: &actions::no_progress,
        usage: &actions::no_usage,
        stop_below: 0.0,
    }
}

/// Runs `script` with `sh -c` as `nobody`; panics when it fails.
fn as_nobody(script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_nobody(p: &Path) {
    std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every file under `dir` with its content (symlinks as their target).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let content = if e.file_type().is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if e.file_type().is_file() {
            fs::read(e.path()).unwrap()
        } else {
            continue;
        };
        out.push((e.path().to_path_buf(), content));
    }
    out
}

fn skip_reason(r: &Report, path: &Path) -> Option<String> {
    r.skipped
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.reason.clone())
}

/// Root's files elsewhere on the same filesystem, old enough for any rule.
fn victims(t: &Tmpfs) -> PathBuf {
    let v = t.path().join("victim");
    for name in ["secret", "sub/precious"] {
        let f = t.fill(&format!("victim/{name}"), 4096);
        chmod(&f, 0o600);
        t.age(&f, 30 * DAY);
    }
    v
}

/// The attack as found: a user owning the parent of a configured temp dir
/// swaps it for a symlink to files of their choosing. The dir is refused
/// (its parent is named) and nothing behind the link changes; the same dir
/// under a parent only root can change is cleaned.
#[test]
fn a_temp_dir_swapped_for_a_symlink_by_the_owner_of_its_parent_deletes_nothing_outside() {
    let t = setup_or_skip!();
    let victim = victims(&t);
    let before = snapshot(&victim);
    let home = t.path().join("home");
    let tmp = home.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    chown_nobody(&home);
    chown_nobody(&tmp);
    // The victim's files lie inside the allowed root too, as in the attack
    // found: resolving the swapped dir led inside `allowed_roots`.
    let mut cfg = StorageConfig {
        allowed_roots: vec![t.path().to_path_buf()],
        ..StorageConfig::default()
    };
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    as_nobody(&format!(
        "mv {tmp} {tmp}.old && ln -s {victim} {tmp}",
        tmp = tmp.display(),
        victim = victim.display()
    ));
    let r = actions::cleanup_temp(&cfg, &ctx()).unwrap();
    assert_eq!(snapshot(&victim), before, "{r:#?}");
    assert_eq!(r.files_deleted, 0, "{r:#?}");
    let why = skip_reason(&r, &tmp).unwrap();
    assert!(
        why.contains(&home.display().to_string()) && why.contains("owned by uid 65534"),
        "{why}"
    );

    // Even with a parent only root can change, a configured dir that is a
    // symlink (or has one on its way) is not followed.
    let safe = t.path().join("safe");
    fs::create_dir_all(&safe).unwrap();
    std::os::unix::fs::symlink(&victim, safe.join("tmp")).unwrap();
    std::os::unix::fs::symlink(&victim, safe.join("via")).unwrap();
    cfg.temp.dirs = vec![safe.join("tmp"), safe.join("via/sub")];
    let r = actions::cleanup_temp(&cfg, &ctx()).unwrap();
    assert_eq!(snapshot(&victim), before, "{r:#?}");
    for d in [safe.join("tmp"), safe.join("via/sub")] {
        let why = skip_reason(&r, &d).unwrap();
        assert!(why.starts_with("not followed: "), "{why}");
    }
}

/// A bind mount of another part of the same filesystem (same device
/// number) inside a temp dir, and a file bind-mounted over one in it: not
/// walked, not deleted, for every action that walks.
#[test]
fn a_bind_mount_inside_a_configured_dir_is_not_walked() {
    let t = setup_or_skip!();
    let victim = victims(&t);
    let before = snapshot(&victim);
    let tmp = t.path().join("tmp");
    let mine = t.fill("tmp/mine", 4096);
    t.age(&mine, 30 * DAY);
    fs::create_dir_all(tmp.join("bound")).unwrap();
    let over = t.fill("tmp/over", 10);
    t.age(&over, 30 * DAY);
    let _dir = skos_testsupport::require!("a bind mount", Mount::bind(&victim, &tmp.join("bound")));
    let _file =
        skos_testsupport::require!("a bind mount", Mount::bind(&victim.join("secret"), &over));
    assert_eq!(
        fs::metadata(tmp.join("bound")).unwrap().dev(),
        fs::metadata(&victim).unwrap().dev(),
        "the same filesystem: only the mount id tells them apart"
    );
    let dest = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("16M", None));
    let mut cfg = StorageConfig {
        allowed_roots: vec![t.path().to_path_buf(), dest.path().to_path_buf()],
        ..StorageConfig::default()
    };
    cfg.archive.dirs = vec![tmp.clone()];
    cfg.archive.older_than = DAY as f64;
    cfg.archive.destination = Some(dest.path().join("archives"));
    fs::create_dir_all(dest.path().join("archives")).unwrap();
    let r = actions::archive_old(&cfg, &ctx()).unwrap();
    assert_eq!(snapshot(&victim), before, "{r:#?}");
    assert_eq!(
        skip_reason(&r, &tmp.join("bound")).as_deref(),
        Some("other mount"),
        "{r:#?}"
    );
    assert_eq!(
        skip_reason(&r, &over).as_deref(),
        Some("other mount"),
        "{r:#?}"
    );
    assert_eq!(r.files_deleted, 1, "{r:#?}");

    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let mine = t.fill("tmp/mine2", 4096);
    t.age(&mine, 30 * DAY);
    let r = actions::cleanup_temp(&cfg, &ctx()).unwrap();
    assert_eq!(snapshot(&victim), before, "{r:#?}");
    assert!(!mine.exists(), "{r:#?}");
    assert_eq!(
        skip_reason(&r, &tmp.join("bound")).as_deref(),
        Some("other mount"),
        "{r:#?}"
    );
    assert_eq!(r.files_deleted, 1, "{r:#?}");
}

/// A user hard-links their file into a shared temp dir: the link is
/// neither deleted nor archived (an archive would copy, then delete, a
/// file that lives elsewhere too); it is reported.
#[test]
fn hard_linked_files_are_neither_deleted_nor_archived() {
    let t = setup_or_skip!();
    let shared = t.path().join("shared");
    fs::create_dir_all(&shared).unwrap();
    chmod(&shared, 0o1777);
    let theirs = t.path().join("theirs");
    fs::create_dir_all(&theirs).unwrap();
    chown_nobody(&theirs);
    as_nobody(&format!(
        "echo mine > {d}/file && touch -d '30 days ago' {d}/file && ln {d}/file {s}/linked",
        d = theirs.display(),
        s = shared.display()
    ));
    let linked = shared.join("linked");
    let dest = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("16M", None));
    let mut cfg = StorageConfig {
        allowed_roots: vec![t.path().to_path_buf(), dest.path().to_path_buf()],
        ..StorageConfig::default()
    };
    cfg.temp.dirs = vec![shared.clone()];
    cfg.temp.max_age = DAY as f64;
    cfg.archive.dirs = vec![shared.clone()];
    cfg.archive.older_than = DAY as f64;
    cfg.archive.destination = Some(dest.path().join("a"));
    fs::create_dir_all(dest.path().join("a")).unwrap();
    for r in [
        actions::cleanup_temp(&cfg, &ctx()).unwrap(),
        actions::archive_old(&cfg, &ctx()).unwrap(),
        actions::emergency_cleanup(&cfg, &ctx()).unwrap(),
    ] {
        assert_eq!(r.files_deleted, 0, "{r:#?}");
        assert!(r.archives.is_empty(), "{r:#?}");
        assert_eq!(
            skip_reason(&r, &linked).as_deref(),
            Some("hard-linked (2 links): left alone"),
            "{r:#?}"
        );
    }
    assert_eq!(fs::read(&linked).unwrap(), b"mine\n");
    assert_eq!(fs::metadata(theirs.join("file")).unwrap().nlink(), 2);
}

/// When files open for writing cannot be known, no action deletes or
/// archives anything (fail closed).
#[test]
fn no_action_deletes_or_archives_when_open_files_cannot_be_known() {
    let t = setup_or_skip!();
    let old: Vec<PathBuf> = ["tmp/a", "log/x.log.1", "log/y.log.2.gz", "data/d"]
        .iter()
        .map(|rel| {
            let p = t.fill(rel, 4096);
            t.age(&p, 60 * DAY);
            p
        })
        .collect();
    let before = snapshot(t.path());
    let dest = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("16M", None));
    let mut cfg = StorageConfig {
        allowed_roots: vec![t.path().to_path_buf(), dest.path().to_path_buf()],
        ..StorageConfig::default()
    };
    cfg.temp.dirs = vec![t.path().join("tmp")];
    cfg.logs.dirs = vec![t.path().join("log")];
    cfg.archive.dirs = vec![t.path().join("data")];
    cfg.archive.destination = Some(dest.path().join("a"));
    fs::create_dir_all(dest.path().join("a")).unwrap();
    let missing = t.path().join("no-proc");
    let mut c = ctx();
    c.proc_root = &missing;
    for r in [
        actions::cleanup_temp(&cfg, &c).unwrap(),
        actions::cleanup_logs(&cfg, &c).unwrap(),
        actions::archive_old(&cfg, &c).unwrap(),
        actions::emergency_cleanup(&cfg, &c).unwrap(),
    ] {
        assert_eq!(r.files_deleted, 0, "{}: {r:#?}", r.action);
        assert!(r.archives.is_empty(), "{r:#?}");
        assert!(
            r.notes.iter().any(|n| n.contains("cannot be known")),
            "{r:#?}"
        );
    }
    assert_eq!(snapshot(t.path()), before);
    assert!(old.iter().all(|p| p.exists()));
}

/// `regenerate_config` with symlinks planted where it writes (`.prev`, the
/// config itself, temp names old and new): each is replaced, never written
/// through, and the file behind them keeps its content; a config dir
/// another user owns is refused.
#[test]
fn regenerate_config_never_writes_through_a_planted_symlink() {
    let t = setup_or_skip!();
    let victim = t.path().join("root-only");
    fs::write(&victim, "root only\n").unwrap();
    chmod(&victim, 0o600);
    let dir = t.path().join("wireguard");
    fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o700);
    let key = t.path().join("wg0.key");
    fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    let conf = dir.join("wg0.conf");
    fs::write(&conf, "[Interface]\nold\n").unwrap();
    let pid = std::process::id();
    let mut planted = vec![dir.join("wg0.conf.prev"), dir.join(".wg0.conf.skos-tmp")];
    planted.extend((0..4).map(|n| dir.join(format!(".wg0.conf.tmp-{pid}-{n}"))));
    planted.extend((0..4).map(|n| dir.join(format!(".wg0.conf.prev.tmp-{pid}-{n}"))));
    for p in &planted {
        std::os::unix::fs::symlink(&victim, p).unwrap();
    }
    let mut itf = MeshInterface::named("wg0");
    itf.config_path = Some(conf.clone());
    itf.private_key_file = Some(key.clone());
    itf.address = vec!["10.9.0.1/24".into()];
    itf.restart = RestartMethod::Command;
    itf.restart_command = vec!["true".into()];
    let cfg = MeshConfig {
        interfaces: vec![itf.clone()],
        // The restart is not what is tested here: quick.
        reconnect_attempts: 1,
        reconnect_delay_seconds: 0.0,
        settle_seconds: 0.0,
        ..MeshConfig::default()
    };
    let o = skos_agent::mesh::actions::regenerate(&cfg, &itf);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root only\n", "{o:?}");
    assert_eq!(
        fs::read_to_string(dir.join("wg0.conf.prev")).unwrap(),
        "[Interface]\nold\n"
    );
    for p in [dir.join("wg0.conf.prev"), conf.clone()] {
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_file(), "{} is a file now", p.display());
        assert_eq!(m.mode() & 0o777, 0o600, "{}", p.display());
    }
    assert!(fs::read_to_string(&conf).unwrap().contains("PrivateKey"));

    // The config itself a symlink to root's file: replaced, and the
    // file's content is not copied into `.prev`.
    fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(&victim, &conf).unwrap();
    let o = skos_agent::mesh::actions::regenerate(&cfg, &itf);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root only\n", "{o:?}");
    assert!(fs::symlink_metadata(&conf).unwrap().file_type().is_file());
    assert!(!fs::read_to_string(dir.join("wg0.conf.prev"))
        .unwrap()
        .contains("root only"));

    // A config dir another user owns: refused, nothing written.
    chown_nobody(&dir);
    let before = snapshot(&dir);
    let o = skos_agent::mesh::actions::regenerate(&cfg, &itf);
    assert!(o.message.contains("owned by uid 65534"), "{o:?}");
    assert_eq!(snapshot(&dir), before);
}
