//! The storage watcher's actions on real tmpfs mounts: what goes, what stays,
//! and that nothing is lost when the agent is killed mid-archive.
//!
//! Every test mounts its own tmpfs (root needed; where mounting is
//! impossible the test says `SKIP` and why, or fails under
//! `SKOS_TEST_REQUIRE_ALL=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use skos_agent::storage::actions::{self, Report, RunCtx};
use skos_core::config::StorageConfig;
use skos_testsupport::tmpfs::{self, Mount, Tmpfs};

const DAY: u64 = 86400;

macro_rules! mount_or_skip {
    ($size:expr) => {
        skos_testsupport::require!("a tmpfs mount", Tmpfs::mount($size, None))
    };
}

fn base_cfg() -> StorageConfig {
    StorageConfig {
        allowed_roots: vec![std::env::temp_dir()],
        ..StorageConfig::default()
    }
}

fn ctx(dry_run: bool, cap: u64) -> RunCtx<'static> {
    RunCtx {
        now: SystemTime::now(),
        dry_run,
        max_delete_bytes: cap,
        proc_root: Path::new("/proc"),
        progress: &actions::no_progress,
        usage: &actions::no_usage,
        stop_below: 90.0,
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha_file(path: &Path) -> String {
    sha(&fs::read(path).unwrap())
}

fn usage_percent(path: &Path) -> Option<f64> {
    let s = rustix::fs::statvfs(path).ok()?;
    if s.f_blocks == 0 {
        return None;
    }
    Some((s.f_blocks - s.f_bfree) as f64 * 100.0 / s.f_blocks as f64)
}

fn dir_report<'a>(r: &'a Report, dir: &Path) -> &'a actions::DirReport {
    r.dirs
        .iter()
        .find(|d| d.dir == dir)
        .unwrap_or_else(|| panic!("no report for {}: {r:#?}", dir.display()))
}

fn skip_reason(r: &Report, path: &Path) -> Option<String> {
    r.skipped
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.reason.clone())
}

fn canon(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap()
}

/// A mkdir'd dir aged `secs_ago`.
fn old_dir(path: &Path, secs_ago: u64) {
    fs::create_dir_all(path).unwrap();
    tmpfs::age(path, secs_ago);
}

#[test]
fn cleanup_temp_deletes_only_old_files_and_reports_per_dir() {
    let t = mount_or_skip!("8M");
    let a = t.path().join("a");
    let b = t.path().join("b");
    let c = t.path().join("c");
    let old1 = t.fill("a/old1", 100 * 1024);
    let old2 = t.fill("a/sub/old2", 50 * 1024);
    let new_a = t.fill("a/new", 30 * 1024);
    let new_sub = t.fill("a/keep/new", 10 * 1024);
    let old3 = t.fill("b/old3", 20 * 1024);
    let new_b = t.fill("b/new", 20 * 1024);
    let old4 = t.fill("c/old4", 4096);
    for p in [&old1, &old2, &old3, &old4] {
        t.age(p, 10 * DAY);
    }
    old_dir(&a.join("sub"), 10 * DAY);
    old_dir(&a.join("keep"), 10 * DAY);
    let before = usage_percent(t.path()).unwrap();

    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![a.clone(), b.clone(), c.clone()];
    cfg.temp.max_age = 7.0 * DAY as f64;
    let r = actions::cleanup_temp(&cfg, &ctx(false, u64::MAX)).unwrap();

    assert_eq!(r.action, "cleanup_temp");
    assert!(!r.dry_run);
    for p in [&old1, &old2, &old3, &old4] {
        assert!(!p.exists(), "{} should be gone", p.display());
    }
    for p in [&new_a, &new_sub, &new_b] {
        assert!(p.exists(), "{} should stay", p.display());
    }
    // The emptied old subdir goes; the configured dirs never do.
    assert!(!a.join("sub").exists());
    assert!(a.join("keep").is_dir());
    assert!(c.is_dir() && fs::read_dir(&c).unwrap().next().is_none());

    assert_eq!(r.files_deleted, 4);
    assert_eq!(r.bytes_freed, (100 + 50 + 20) * 1024 + 4096);
    let da = dir_report(&r, &a);
    assert_eq!((da.files_deleted, da.bytes_freed), (2, 150 * 1024));
    let db = dir_report(&r, &b);
    assert_eq!((db.files_deleted, db.bytes_freed), (1, 20 * 1024));
    let dc = dir_report(&r, &c);
    assert_eq!((dc.files_deleted, dc.bytes_freed), (1, 4096));
    assert!(r.stopped.is_none(), "{r:#?}");
    assert!(usage_percent(t.path()).unwrap() < before);
}

#[test]
fn cleanup_temp_never_follows_a_symlink_out_of_its_dir() {
    let t = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let victim = t.fill("outside/victim", 8192);
    let victim_dir_file = t.fill("outside/dir/file", 8192);
    t.age(&victim, 30 * DAY);
    t.age(&victim_dir_file, 30 * DAY);
    fs::create_dir_all(&tmp).unwrap();
    let link = tmp.join("link");
    let dirlink = tmp.join("dirlink");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::symlink(t.path().join("outside/dir"), &dirlink).unwrap();
    t.age(&link, 30 * DAY);
    t.age(&dirlink, 30 * DAY);

    // A configured dir that is itself a symlink to a dir outside the allowed
    // roots is refused.
    let allowed = t.path().join("allowed");
    fs::create_dir_all(&allowed).unwrap();
    let sneaky = allowed.join("sneaky");
    std::os::unix::fs::symlink(t.path().join("outside"), &sneaky).unwrap();

    let mut cfg = base_cfg();
    cfg.allowed_roots = vec![t.path().to_path_buf()];
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let r = actions::cleanup_temp(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert!(victim.exists() && victim_dir_file.exists());
    assert!(
        fs::symlink_metadata(&link).is_ok(),
        "the link itself is never deleted"
    );
    let tmp_c = canon(&tmp);
    assert_eq!(
        skip_reason(&r, &tmp_c.join("link")).as_deref(),
        Some("symlink (not followed)"),
        "{r:#?}"
    );
    assert_eq!(
        skip_reason(&r, &tmp_c.join("dirlink")).as_deref(),
        Some("symlink (not followed)")
    );
    assert_eq!(r.files_deleted, 0);

    cfg.allowed_roots = vec![allowed.clone()];
    cfg.temp.dirs = vec![sneaky.clone()];
    let r = actions::cleanup_temp(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert!(victim.exists() && victim_dir_file.exists());
    let why = skip_reason(&r, &sneaky).unwrap();
    assert_eq!(
        why,
        format!("not followed: {} is a symlink", sneaky.display()),
        "{r:#?}"
    );

    // A missing dir is a skip, not an error.
    cfg.allowed_roots = vec![t.path().to_path_buf()];
    cfg.temp.dirs = vec![t.path().join("missing")];
    let r = actions::cleanup_temp(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert_eq!(
        skip_reason(&r, &t.path().join("missing")).as_deref(),
        Some("does not exist")
    );
}

#[test]
fn cleanup_temp_does_not_cross_into_another_filesystem() {
    let t = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let mine = t.fill("tmp/mine", 4096);
    t.age(&mine, 30 * DAY);
    let nested = tmp.join("nested");
    let inner = skos_testsupport::require!(
        "a tmpfs mounted inside a tmpfs",
        Mount::tmpfs_at(&nested, "1M", None)
    );
    let theirs = nested.join("theirs");
    tmpfs::write_file(&theirs, 4096);
    tmpfs::age(&theirs, 30 * DAY);
    tmpfs::age(inner.path(), 30 * DAY);

    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let r = actions::cleanup_temp(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert!(!mine.exists());
    assert!(theirs.exists(), "a file on another filesystem was deleted");
    assert_eq!(
        skip_reason(&r, &canon(&nested)).as_deref(),
        Some("other filesystem"),
        "{r:#?}"
    );
    assert_eq!(r.files_deleted, 1);
    drop(inner);
}

#[test]
fn files_open_for_writing_are_skipped() {
    let t = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let held_here = t.fill("tmp/held-here", 4096);
    let held_child = t.fill("tmp/held-child", 4096);
    let read_only = t.fill("tmp/read-only", 4096);
    let free = t.fill("tmp/free", 4096);
    // Held open for appending by this very process.
    let _writer = OpenOptions::new().append(true).open(&held_here).unwrap();
    // Held open for reading only: not a writer.
    let _reader = File::open(&read_only).unwrap();
    // Held open for writing by a child process.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec 3>>\"$1\"; echo ready; exec sleep 30")
        .arg("sh")
        .arg(&held_child)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    for p in [&held_here, &held_child, &read_only, &free] {
        t.age(p, 30 * DAY);
    }

    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let r = actions::cleanup_temp(&cfg, &ctx(false, u64::MAX));
    let _ = child.kill();
    let _ = child.wait();
    let r = r.unwrap();
    let tmp_c = canon(&tmp);
    assert!(held_here.exists() && held_child.exists());
    assert!(!read_only.exists() && !free.exists());
    let me = std::process::id();
    assert_eq!(
        skip_reason(&r, &tmp_c.join("held-here")),
        Some(format!("open for writing by pid {me}")),
        "{r:#?}"
    );
    let why = skip_reason(&r, &tmp_c.join("held-child")).unwrap();
    assert!(why.starts_with("open for writing by pid "), "{why}");
    assert_eq!(r.files_deleted, 2);
}

#[test]
fn open_files_come_from_the_given_proc_root() {
    let t = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let w = t.fill("tmp/w", 1000);
    let rd = t.fill("tmp/r", 1000);
    let rw = t.fill("tmp/rw", 1000);
    for p in [&w, &rd, &rw] {
        t.age(p, 30 * DAY);
    }
    // A fake /proc: pid 4242 has w open O_WRONLY|O_APPEND, r O_RDONLY,
    // rw O_RDWR.
    let proc_dir = tempfile::tempdir().unwrap();
    let pid = proc_dir.path().join("4242");
    fs::create_dir_all(pid.join("fd")).unwrap();
    fs::create_dir_all(pid.join("fdinfo")).unwrap();
    fs::create_dir_all(proc_dir.path().join("self")).unwrap();
    for (fd, target, flags) in [(3, &w, "02001"), (4, &rd, "0100000"), (5, &rw, "0100002")] {
        std::os::unix::fs::symlink(target, pid.join("fd").join(fd.to_string())).unwrap();
        fs::write(
            pid.join("fdinfo").join(fd.to_string()),
            format!("pos:\t0\nflags:\t{flags}\nmnt_id:\t30\n"),
        )
        .unwrap();
    }
    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let mut c = ctx(false, u64::MAX);
    c.proc_root = proc_dir.path();
    let r = actions::cleanup_temp(&cfg, &c).unwrap();
    assert!(w.exists() && rw.exists() && !rd.exists(), "{r:#?}");
    let tmp_c = canon(&tmp);
    assert_eq!(
        skip_reason(&r, &tmp_c.join("w")).as_deref(),
        Some("open for writing by pid 4242")
    );
    assert_eq!(
        skip_reason(&r, &tmp_c.join("rw")).as_deref(),
        Some("open for writing by pid 4242")
    );

    // An unreadable proc root is said once, and every file is left alone:
    // what cannot be known to be closed is not deleted (fail closed).
    let missing = proc_dir.path().join("nope");
    c.proc_root = &missing;
    let r = actions::cleanup_temp(&cfg, &c).unwrap();
    assert!(w.exists() && rw.exists(), "{r:#?}");
    assert_eq!(r.files_deleted, 0, "{r:#?}");
    assert_eq!(
        r.notes
            .iter()
            .filter(|n| n.contains("cannot be known"))
            .count(),
        1,
        "{r:#?}"
    );
    let why = skip_reason(&r, &tmp_c.join("w")).unwrap();
    assert!(
        why.starts_with("left alone: cannot tell whether it is open for writing"),
        "{why}"
    );
}

#[test]
fn dry_run_changes_nothing_and_lists_what_would_go() {
    let t = mount_or_skip!("8M");
    let dest = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let logs = t.path().join("logs");
    let data = t.path().join("data");
    let mut old = Vec::new();
    for i in 0..5 {
        let p = t.fill(&format!("tmp/f{i}"), 1000 * (i + 1));
        t.age(&p, 30 * DAY);
        old.push(p);
    }
    let fresh = t.fill("tmp/fresh", 100);
    let rotated = t.fill("logs/app.log.1", 5000);
    let gz = t.fill("logs/app.log.2.gz", 3000);
    t.age(&rotated, 2 * DAY);
    t.age(&gz, 60 * DAY);
    let archived = t.fill("data/x/old.bin", 7000);
    t.age(&archived, 200 * DAY);
    let leftover = dest.fill("skos-archive-20200101T000000Z-data.tar.zst.partial", 10);
    let snapshot = |dir: &Path| -> BTreeMap<PathBuf, (u64, SystemTime)> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                let m = e.metadata().unwrap();
                (e.path().to_path_buf(), (m.len(), m.modified().unwrap()))
            })
            .collect()
    };
    let before = snapshot(t.path());
    let before_dest = snapshot(dest.path());

    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    cfg.logs.dirs = vec![logs.clone()];
    cfg.archive.dirs = vec![data.clone()];
    cfg.archive.destination = Some(dest.path().to_path_buf());

    let r = actions::cleanup_temp(&cfg, &ctx(true, u64::MAX)).unwrap();
    assert!(r.dry_run);
    let tmp_c = canon(&tmp);
    let listed: BTreeSet<PathBuf> = r.would_delete.iter().cloned().collect();
    let expected: BTreeSet<PathBuf> = (0..5).map(|i| tmp_c.join(format!("f{i}"))).collect();
    assert_eq!(listed, expected);
    assert_eq!(r.bytes_freed, 15000);
    assert_eq!(r.files_deleted, 5);
    assert!(fresh.exists());

    let r = actions::cleanup_logs(&cfg, &ctx(true, u64::MAX)).unwrap();
    assert_eq!(r.would_delete, vec![canon(&logs).join("app.log.2.gz")]);
    assert_eq!(dir_report(&r, &logs).files_compressed, 1);

    let r = actions::archive_old(&cfg, &ctx(true, u64::MAX)).unwrap();
    assert_eq!(r.would_delete, vec![canon(&data).join("x/old.bin")]);
    assert!(r.archives.is_empty());
    assert!(
        r.notes.iter().any(|n| n.starts_with("would remove")),
        "{r:#?}"
    );

    let mut c = ctx(true, u64::MAX);
    let full = || Some(99.0);
    c.usage = &full;
    let r = actions::emergency_cleanup(&cfg, &c).unwrap();
    assert!(r.would_delete.len() >= 7, "{r:#?}");

    assert_eq!(snapshot(t.path()), before, "a dry run changed the source");
    assert_eq!(
        snapshot(dest.path()),
        before_dest,
        "a dry run changed the destination"
    );
    assert!(leftover.exists());
}

#[test]
fn the_cap_stops_the_run_before_it_is_passed() {
    let t = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let mut files = Vec::new();
    for i in 0..5u64 {
        let p = t.fill(&format!("tmp/f{i}"), 100 * 1024);
        // f0 is the oldest.
        t.age(&p, (50 - i) * DAY);
        files.push(p);
    }
    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let r = actions::cleanup_temp(&cfg, &ctx(false, 250 * 1024)).unwrap();
    assert_eq!(r.files_deleted, 2);
    assert_eq!(r.bytes_freed, 200 * 1024);
    assert!(!files[0].exists() && !files[1].exists());
    assert!(files[2..].iter().all(|p| p.exists()));
    let why = r.stopped.clone().unwrap();
    assert!(why.starts_with("cap reached"), "{why}");
    assert_eq!(
        skip_reason(&r, &canon(&tmp).join("f2")).as_deref(),
        Some("cap reached")
    );
}

fn log_text(lines: usize, tag: &str) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..lines {
        s.push_str(&format!(
            "2024-01-01T00:00:{:02}Z host app[{}]: {tag} request {i} served in {} ms\n",
            i % 60,
            1000 + i % 7,
            i % 97
        ));
    }
    s.into_bytes()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn cleanup_logs_compresses_rotated_and_deletes_old_compressed() {
    let t = mount_or_skip!("16M");
    let logs = t.path().join("logs");
    fs::create_dir_all(logs.join("sub")).unwrap();
    let write = |rel: &str, content: &[u8], secs_ago: u64| -> PathBuf {
        let p = logs.join(rel);
        fs::write(&p, content).unwrap();
        tmpfs::age(&p, secs_ago);
        p
    };
    let active = write("app.log", &log_text(500, "active"), 60 * DAY);
    let r1_text = log_text(3000, "rotated1");
    let r1 = write("app.log.1", &r1_text, 2 * DAY);
    let r1_mtime = fs::metadata(&r1).unwrap().modified().unwrap();
    let dated_text = log_text(1000, "dated");
    let dated = write("sub/x.log.2024-01-01", &dated_text, 3 * DAY);
    let young = write("app.log.0", &log_text(100, "young"), 3600);
    let old_gz = write("app.log.2.gz", &log_text(10, "old-gz"), 40 * DAY);
    let kept_gz = write("app.log.3.gz", &log_text(10, "kept-gz"), 10 * DAY);
    let old_dash = write("app.log-20240101", &log_text(200, "dash"), 40 * DAY);
    let old_zst = write("other.log.1.zst", b"zstd bytes", 45 * DAY);
    // An interrupted compression left a partial next to its original.
    let crashed_text = log_text(800, "crashed");
    let crashed = write("db.log.1", &crashed_text, 2 * DAY);
    let crashed_partial = write("db.log.1.gz.partial", b"garbage", 2 * DAY);
    // Stopped between rename and removal: the .gz already holds the content.
    let done_text = log_text(300, "done");
    let done = write("web.log.1", &done_text, 2 * DAY);
    let done_gz = logs.join("web.log.1.gz");
    {
        let mut enc = flate2::write::GzEncoder::new(
            File::create(&done_gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&done_text).unwrap();
        enc.finish().unwrap();
    }
    tmpfs::age(&done_gz, 2 * DAY);
    let old_gz_size = fs::metadata(&old_gz).unwrap().len();
    let old_dash_size = fs::metadata(&old_dash).unwrap().len();
    let old_zst_size = fs::metadata(&old_zst).unwrap().len();

    let mut cfg = base_cfg();
    cfg.logs.dirs = vec![logs.clone()];
    cfg.logs.compress_after = DAY as f64;
    cfg.logs.retention = 30.0 * DAY as f64;
    let r = actions::cleanup_logs(&cfg, &ctx(false, u64::MAX)).unwrap();

    assert!(active.exists() && young.exists() && kept_gz.exists());
    assert_eq!(fs::read(&active).unwrap(), log_text(500, "active"));
    for p in [
        &r1,
        &dated,
        &crashed,
        &done,
        &old_gz,
        &old_dash,
        &old_zst,
        &crashed_partial,
    ] {
        assert!(!p.exists(), "{} should be gone", p.display());
    }
    let r1_gz = logs.join("app.log.1.gz");
    assert_eq!(gunzip(&r1_gz), r1_text);
    assert_eq!(fs::metadata(&r1_gz).unwrap().modified().unwrap(), r1_mtime);
    assert_eq!(gunzip(&logs.join("sub/x.log.2024-01-01.gz")), dated_text);
    assert_eq!(gunzip(&logs.join("db.log.1.gz")), crashed_text);
    assert_eq!(gunzip(&done_gz), done_text);
    assert!(
        r.notes.iter().any(|n| n.contains("db.log.1.gz.partial")),
        "{r:#?}"
    );

    let d = dir_report(&r, &logs);
    assert_eq!(d.files_compressed, 4, "{r:#?}");
    assert_eq!(r.files_deleted, 3);
    let gz_sizes: u64 = ["app.log.1.gz", "sub/x.log.2024-01-01.gz", "db.log.1.gz"]
        .iter()
        .map(|n| fs::metadata(logs.join(n)).unwrap().len())
        .sum();
    let originals =
        (r1_text.len() + dated_text.len() + crashed_text.len() + done_text.len()) as u64;
    let expected = originals - gz_sizes + old_gz_size + old_dash_size + old_zst_size;
    assert_eq!(r.bytes_freed, expected, "{r:#?}");
    assert_eq!(d.bytes_freed, expected);
}

fn unpack(archive: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let f = File::open(archive).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().into_owned();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        out.insert(p, buf);
    }
    out
}

fn archive_cfg(data: &Path, dest: &Path) -> StorageConfig {
    let mut cfg = base_cfg();
    cfg.archive.dirs = vec![data.to_path_buf()];
    cfg.archive.destination = Some(dest.to_path_buf());
    cfg.archive.older_than = 90.0 * DAY as f64;
    cfg
}

fn finalized(dest: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    v.sort();
    v
}

#[test]
fn archive_old_moves_old_files_into_a_verified_archive() {
    let src = mount_or_skip!("16M");
    let dest = mount_or_skip!("16M");
    let data = src.path().join("data");
    let mut expected = BTreeMap::new();
    for i in 0..20 {
        let rel = format!("d{}/f{i}.bin", i % 3);
        let p = src.fill(&format!("data/{rel}"), 1000 + i * 3000);
        src.age(&p, 100 * DAY);
        expected.insert(PathBuf::from(rel), fs::read(&p).unwrap());
    }
    let fresh = src.fill("data/d0/fresh.bin", 5000);

    let cfg = archive_cfg(&data, dest.path());
    let r = actions::archive_old(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert_eq!(r.archives.len(), 1, "{r:#?}");
    let archive = &r.archives[0];
    assert!(archive.starts_with(canon(dest.path())));
    let name = archive.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("skos-archive-") && name.ends_with("Z-data.tar.zst"),
        "{name}"
    );
    let ts = &name["skos-archive-".len().."skos-archive-".len() + 16];
    assert!(
        ts.chars().enumerate().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == 'Z',
            _ => c.is_ascii_digit(),
        }),
        "{ts}"
    );

    for rel in expected.keys() {
        assert!(
            !data.join(rel).exists(),
            "{} should be archived",
            rel.display()
        );
    }
    assert!(fresh.exists());
    assert_eq!(unpack(archive), expected, "archive contents differ");
    let total: u64 = expected.values().map(|v| v.len() as u64).sum();
    assert_eq!(r.bytes_freed, total);
    assert_eq!(r.files_deleted, 20);
    assert_eq!(dir_report(&r, &data).files_archived, 20);

    let manifest_path = PathBuf::from(format!("{}.manifest.json", archive.display()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), 20);
    for f in files {
        let rel = PathBuf::from(f["path"].as_str().unwrap());
        let content = &expected[&rel];
        assert_eq!(f["size"].as_u64().unwrap(), content.len() as u64);
        assert_eq!(f["sha256"].as_str().unwrap(), sha(content));
    }
    assert!(fs::read_dir(dest.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));

    // Nothing old is left: a second run makes no archive.
    let r = actions::archive_old(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert!(r.archives.is_empty() && r.files_deleted == 0);
}

#[test]
fn archive_old_recovers_from_an_interrupted_run() {
    let src = mount_or_skip!("16M");
    let dest = mount_or_skip!("16M");
    let data = src.path().join("data");
    let mut expected = BTreeMap::new();
    for i in 0..10 {
        let rel = format!("f{i}");
        let p = src.fill(&format!("data/{rel}"), 20_000 + i);
        src.age(&p, 100 * DAY);
        expected.insert(PathBuf::from(rel), fs::read(&p).unwrap());
    }
    // What a run killed while writing leaves: a partial archive of garbage
    // and a partial manifest, with every original still in place.
    let partial = dest.fill("skos-archive-20240101T000000Z-data.tar.zst.partial", 4096);
    let manifest_partial = dest.fill(
        "skos-archive-20240101T000000Z-data.tar.zst.manifest.json.partial",
        10,
    );
    // Not ours: stays.
    let other = dest.fill("unrelated.partial", 10);

    let cfg = archive_cfg(&data, dest.path());
    let r = actions::archive_old(&cfg, &ctx(false, u64::MAX)).unwrap();
    assert!(!partial.exists() && !manifest_partial.exists());
    assert!(other.exists());
    assert_eq!(
        r.notes
            .iter()
            .filter(|n| n.contains("interrupted archive run"))
            .count(),
        2,
        "{r:#?}"
    );
    assert_eq!(r.archives.len(), 1);
    assert_eq!(unpack(&r.archives[0]), expected);
    for rel in expected.keys() {
        assert!(!data.join(rel).exists());
    }
}

#[test]
fn archive_old_refuses_a_destination_on_the_same_filesystem() {
    let src = mount_or_skip!("8M");
    let data = src.path().join("data");
    let old = src.fill("data/old", 1000);
    src.age(&old, 100 * DAY);
    let same = src.path().join("archive");
    fs::create_dir_all(&same).unwrap();
    let cfg = archive_cfg(&data, &same);
    let err = actions::archive_old(&cfg, &ctx(false, u64::MAX))
        .unwrap_err()
        .to_string();
    assert!(err.contains("same filesystem"), "{err}");
    assert!(err.contains(&canon(&same).display().to_string()), "{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(old.exists());
    assert_eq!(fs::read_dir(&same).unwrap().count(), 0);

    // A destination that does not exist is an error too.
    let cfg = archive_cfg(&data, &src.path().join("nowhere"));
    assert!(actions::archive_old(&cfg, &ctx(false, u64::MAX)).is_err());
    assert!(old.exists());
}

#[test]
fn archive_old_into_a_full_destination_deletes_nothing() {
    let src = mount_or_skip!("16M");
    let dest = mount_or_skip!("1M");
    let data = src.path().join("data");
    let mut expected = BTreeMap::new();
    for i in 0..3 {
        let p = src.fill(&format!("data/f{i}"), 1024 * 1024);
        src.age(&p, 100 * DAY);
        expected.insert(p.clone(), sha_file(&p));
    }
    let cfg = archive_cfg(&data, dest.path());
    let err = actions::archive_old(&cfg, &ctx(false, u64::MAX)).unwrap_err();
    assert!(err.to_string().contains(".partial"), "{err}");
    for (p, want) in &expected {
        assert_eq!(&sha_file(p), want);
    }
    assert_eq!(
        fs::read_dir(dest.path()).unwrap().count(),
        0,
        "the partial archive is removed"
    );
}

#[test]
fn long_runs_report_progress() {
    let t = mount_or_skip!("16M");
    let tmp = t.path().join("tmp");
    for i in 0..1500 {
        let p = t.fill(&format!("tmp/d{}/f{i}", i % 5), 1);
        t.age(&p, 30 * DAY);
    }
    let lines = Mutex::new(Vec::<String>::new());
    let progress = |l: &str| lines.lock().unwrap().push(l.to_string());
    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.max_age = DAY as f64;
    let mut c = ctx(false, u64::MAX);
    c.progress = &progress;
    let r = actions::cleanup_temp(&cfg, &c).unwrap();
    assert_eq!(r.files_deleted, 1500);
    let lines = lines.into_inner().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cleanup_temp: 1000 files examined")),
        "{lines:?}"
    );
}

#[test]
fn emergency_cleanup_deletes_largest_first_until_under_critical() {
    let t = mount_or_skip!("16M");
    let tmp = t.path().join("tmp");
    let logs = t.path().join("logs");
    const M: usize = 1024 * 1024;
    let a = t.fill("tmp/a", 4 * M);
    let gz = t.fill("logs/x.log.1.gz", 3 * M);
    let b = t.fill("tmp/b", 2 * M);
    let rotated = t.fill("logs/y.log.2", 3 * M / 2);
    let c = t.fill("tmp/c", M);
    let active = t.fill("logs/app.log", M / 2);
    let fresh = t.fill("tmp/fresh", M);
    for p in [&a, &gz, &b, &rotated, &c, &active] {
        t.age(p, 2 * DAY);
    }
    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.emergency_max_age = 3600.0;
    cfg.logs.dirs = vec![logs.clone()];
    cfg.logs.emergency_retention = DAY as f64;
    let mount = t.path().to_path_buf();
    let calls = Mutex::new(0u32);
    let usage = || {
        *calls.lock().unwrap() += 1;
        usage_percent(&mount)
    };
    let start = usage_percent(&mount).unwrap();
    assert!(start > 70.0, "{start}");
    let mut c_ = ctx(false, u64::MAX);
    c_.usage = &usage;
    c_.stop_below = 40.0;
    let r = actions::emergency_cleanup(&cfg, &c_).unwrap();

    assert!(!a.exists() && !gz.exists(), "the two largest go");
    for p in [&b, &rotated, &c, &active, &fresh] {
        assert!(p.exists(), "{} should stay", p.display());
    }
    assert_eq!(r.files_deleted, 2);
    assert_eq!(r.bytes_freed, 7 * M as u64);
    let now = usage_percent(&mount).unwrap();
    assert!(now < 40.0);
    assert_eq!(
        r.stopped.as_deref(),
        Some(format!("usage {now:.1}% is under critical 40%").as_str())
    );
    assert_eq!(
        *calls.lock().unwrap(),
        3,
        "checked first and after each deletion"
    );
    assert_eq!(dir_report(&r, &tmp).bytes_freed, 4 * M as u64);
    assert_eq!(dir_report(&r, &logs).bytes_freed, 3 * M as u64);

    // Already under: nothing is done.
    c_.stop_below = 10.0;
    let lowest = || Some(5.0);
    c_.usage = &lowest;
    let r = actions::emergency_cleanup(&cfg, &c_).unwrap();
    assert_eq!(r.files_deleted, 0);
    assert_eq!(
        r.stopped.as_deref(),
        Some("usage 5.0% is under critical 10%")
    );
    assert!(b.exists());
}

/// A file or a directory swapped for a symlink after the walk chose it (a
/// race with another process) is not followed when it is deleted: every
/// component is reopened with `O_NOFOLLOW`. The swaps happen in the usage
/// check, which runs between two deletions, so the race is taken every time.
#[test]
fn emergency_cleanup_never_follows_a_symlink_swapped_in_after_the_walk() {
    let t = mount_or_skip!("8M");
    let tmp = t.path().join("tmp");
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let first = t.fill("tmp/first", 64 * 1024);
    let inner = t.fill("tmp/sub/inner", 32 * 1024);
    let last = t.fill("tmp/last", 16 * 1024);
    for p in [&first, &inner, &last] {
        t.age(p, 2 * DAY);
    }
    let sub = tmp.join("sub");
    let moved_sub = outside.join("sub");
    let moved_last = outside.join("last");

    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![tmp.clone()];
    cfg.temp.emergency_max_age = 3600.0;
    // Called once before the walk, then after every deletion: after the
    // first one, the chosen subdirectory and file move outside the temp dir
    // (same filesystem, same inodes) and symlinks to them take their place.
    let calls = Mutex::new(0u32);
    let usage = || {
        let mut n = calls.lock().unwrap();
        *n += 1;
        if *n == 2 {
            fs::rename(&sub, &moved_sub).unwrap();
            std::os::unix::fs::symlink(&moved_sub, &sub).unwrap();
            fs::rename(&last, &moved_last).unwrap();
            std::os::unix::fs::symlink(&moved_last, &last).unwrap();
        }
        Some(99.0)
    };
    let mut c = ctx(false, u64::MAX);
    c.usage = &usage;
    c.stop_below = 10.0;
    let r = actions::emergency_cleanup(&cfg, &c).unwrap();

    assert!(*calls.lock().unwrap() >= 2, "the swap happened: {r:#?}");
    assert!(!first.exists(), "the largest file goes: {r:#?}");
    assert!(
        moved_sub.join("inner").exists(),
        "a file outside the temp dir was deleted through a swapped-in directory symlink: {r:#?}"
    );
    assert!(
        moved_last.exists(),
        "a file outside the temp dir was deleted through a swapped-in symlink: {r:#?}"
    );
    for link in [&sub, &last] {
        assert!(
            fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()),
            "the link {} itself is never deleted: {r:#?}",
            link.display()
        );
    }
    assert_eq!(r.files_deleted, 1, "{r:#?}");
    assert_eq!(r.bytes_freed, 64 * 1024, "{r:#?}");
}

#[test]
fn emergency_cleanup_archives_largest_first_when_deleting_is_not_enough() {
    let t = mount_or_skip!("16M");
    let dest = mount_or_skip!("16M");
    const M: usize = 1024 * 1024;
    let junk = t.fill("tmp/junk", M);
    let big = t.fill("data/big", 4 * M);
    let mid = t.fill("data/mid", 2 * M);
    let small = t.fill("data/small", M);
    for p in [&junk, &big, &mid, &small] {
        t.age(p, 2 * DAY);
    }
    let big_content = fs::read(&big).unwrap();
    let mut cfg = archive_cfg(&t.path().join("data"), dest.path());
    cfg.temp.dirs = vec![t.path().join("tmp")];
    cfg.temp.emergency_max_age = 3600.0;
    cfg.archive.emergency_older_than = DAY as f64;
    let mount = t.path().to_path_buf();
    let usage = || usage_percent(&mount);
    let mut c = ctx(false, u64::MAX);
    c.usage = &usage;
    c.stop_below = 25.0;
    let r = actions::emergency_cleanup(&cfg, &c).unwrap();
    assert!(!junk.exists() && !big.exists(), "{r:#?}");
    assert!(mid.exists() && small.exists());
    assert_eq!(r.archives.len(), 1);
    assert_eq!(unpack(&r.archives[0])[Path::new("big")], big_content);
    assert!(
        r.stopped
            .as_deref()
            .unwrap()
            .contains("is under critical 25%"),
        "{r:#?}"
    );
    assert_eq!(r.files_deleted, 2);
}

// ---------------------------------------------------------------------------
// Killed in the middle of an archive run.

const CHILD_ENV: &str = "SKOS_ARCHIVE_CHILD";
const CHILD_DEST_ENV: &str = "SKOS_ARCHIVE_DEST";

/// The child side of `archive_survives_sigkill_at_any_point`: the same test
/// binary, run again for that one test with the environment saying where to
/// archive; it prints each progress line and `CHILD DONE` at the end.
fn archive_child(src: &Path, dest: &Path) {
    let mut cfg = archive_cfg(src, dest);
    cfg.archive.older_than = DAY as f64;
    let progress = |line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "PROGRESS {line}");
        let _ = out.flush();
    };
    let mut c = ctx(false, u64::MAX);
    c.progress = &progress;
    let r = actions::archive_old(&cfg, &c).unwrap();
    println!("CHILD DONE deleted={}", r.files_deleted);
}

/// Every file ever created is either in place, unchanged, or in a
/// finalized archive that reads back intact; returns (in place, archived).
fn check_nothing_lost(
    data: &Path,
    dest: &Path,
    expected: &BTreeMap<PathBuf, String>,
) -> (usize, usize) {
    let mut archived: BTreeSet<PathBuf> = BTreeSet::new();
    for a in finalized(dest) {
        let f = File::open(&a).unwrap();
        let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
        let entries = ar
            .entries()
            .unwrap_or_else(|e| panic!("finalized archive {} is corrupt: {e}", a.display()));
        for e in entries {
            let mut e =
                e.unwrap_or_else(|e| panic!("finalized archive {} is corrupt: {e}", a.display()));
            let p = e.path().unwrap().into_owned();
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap_or_else(|err| {
                panic!("finalized archive {} is corrupt: {err}", a.display())
            });
            let want = expected.get(&p).unwrap_or_else(|| {
                panic!("{} holds an unknown entry {}", a.display(), p.display())
            });
            assert_eq!(
                &sha(&buf),
                want,
                "{} holds a bad copy of {}",
                a.display(),
                p.display()
            );
            archived.insert(p);
        }
    }
    let mut in_place = 0;
    for (rel, want) in expected {
        let p = data.join(rel);
        if p.exists() {
            assert_eq!(&sha_file(&p), want, "{} was changed", p.display());
            in_place += 1;
        } else {
            assert!(
                archived.contains(rel),
                "{} is lost: neither in place nor archived",
                rel.display()
            );
        }
    }
    (in_place, archived.len())
}

/// Where in an archive run a child is killed. The child is frozen
/// (SIGSTOP) while the state on disk is read, so "the kill landed here" is
/// checked on the very state the SIGKILL then interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillAt {
    /// While the archive is being written: a `.partial` exists, no
    /// original of this round is deleted.
    Writing,
    /// After the archive was written, while it is verified.
    Verifying,
    /// After the archive was finalized, before any original is deleted.
    BeforeDeleting,
    /// In the middle of the deletions: some originals of this round are
    /// gone, some are not.
    MidDeleting,
}

/// What the disk says about one round of an archive run.
#[derive(Debug)]
struct RoundState {
    partial: bool,
    /// Finalized archives made by this round.
    new_archives: usize,
    /// Originals of this round still in place.
    remaining: usize,
}

fn round_state(data: &Path, dest: &Path, before: usize, files: &[PathBuf]) -> RoundState {
    let partial = fs::read_dir(dest).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")
    });
    RoundState {
        partial,
        new_archives: finalized(dest).len() - before,
        remaining: files.iter().filter(|f| data.join(f).exists()).count(),
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our own child,
    // not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Waits until the child is stopped (`T` in /proc/<pid>/stat) or gone.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                if matches!(state, Some("T") | Some("t") | Some("Z")) {
                    return;
                }
            }
            Err(_) => return,
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    panic!("child {pid} did not stop");
}

#[test]
fn archive_survives_sigkill_at_any_point() {
    if let (Ok(src), Ok(dest)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_DEST_ENV)) {
        archive_child(Path::new(&src), Path::new(&dest));
        return;
    }
    let src = mount_or_skip!("256M");
    let dest = mount_or_skip!("512M");
    let data = src.path().join("data");
    let exe = std::env::current_exe().unwrap();
    let mut expected: BTreeMap<PathBuf, String> = BTreeMap::new();
    let plan = [
        KillAt::Writing,
        KillAt::Verifying,
        KillAt::BeforeDeleting,
        KillAt::MidDeleting,
        KillAt::Writing,
        KillAt::MidDeleting,
    ];
    let mut outcomes = Vec::new();
    let mut round = 0;
    for kill in plan {
        // A kill must land where it is meant to; the phase can be short
        // (deletions on a tmpfs take milliseconds), so a round whose child
        // got past it is tried again with new files, a few times at most.
        let mut tries = 0;
        loop {
            tries += 1;
            // Each round brings new old files, so each kill lands in real work.
            let files: Vec<PathBuf> = (0..300)
                .map(|i| PathBuf::from(format!("g{round}/d{}/f{i:03}.bin", i % 10)))
                .collect();
            round += 1;
            for rel in &files {
                let p = src.fill(&format!("data/{}", rel.display()), 64 * 1024);
                src.age(&p, 10 * DAY);
                expected.insert(rel.clone(), sha_file(&p));
            }
            let before = finalized(dest.path()).len();
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "archive_survives_sigkill_at_any_point",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &data)
                .env(CHILD_DEST_ENV, dest.path())
                .env_remove("SKOS_TEST_REQUIRE_ALL")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut seen: Vec<String> = Vec::new();
            let seen_line = |seen: &[String], what: &str| seen.iter().any(|l| l.contains(what));
            // Step the child: run a little, freeze, look at the disk.
            let deadline = Instant::now() + Duration::from_secs(120);
            let landed = loop {
                std::thread::sleep(Duration::from_micros(200));
                signal(pid, libc::SIGSTOP);
                wait_stopped(pid);
                seen.extend(rx.try_iter());
                let st = round_state(&data, dest.path(), before, &files);
                let here = match kill {
                    KillAt::Writing => {
                        st.partial && st.remaining == files.len() && !seen_line(&seen, "verifying")
                    }
                    KillAt::Verifying => {
                        st.partial
                            && st.new_archives == 0
                            && seen_line(&seen, "verifying")
                            && st.remaining == files.len()
                    }
                    KillAt::BeforeDeleting => st.new_archives == 1 && st.remaining == files.len(),
                    KillAt::MidDeleting => {
                        st.new_archives == 1 && st.remaining > 0 && st.remaining < files.len()
                    }
                };
                if here {
                    break Some(st);
                }
                if child.try_wait().unwrap().is_some()
                    || seen_line(&seen, "CHILD DONE")
                    || Instant::now() > deadline
                {
                    break None;
                }
                // Past the phase already: this round cannot land there.
                let past = match kill {
                    KillAt::Writing | KillAt::Verifying => st.new_archives > 0,
                    KillAt::BeforeDeleting => st.remaining < files.len(),
                    KillAt::MidDeleting => st.new_archives == 1 && st.remaining == 0,
                };
                if past {
                    break None;
                }
                signal(pid, libc::SIGCONT);
            };
            let _ = child.kill();
            let status = child.wait().unwrap();
            let _ = reader.join();
            seen.extend(rx.try_iter());
            let finished = seen_line(&seen, "CHILD DONE");
            let (in_place, archived) = check_nothing_lost(&data, dest.path(), &expected);
            match landed {
                Some(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    assert_eq!(status.signal(), Some(libc::SIGKILL), "{kill:?}: {status}");
                    assert!(!finished, "{kill:?}: the child finished before the kill");
                    outcomes.push(format!(
                        "{kill:?} (try {tries}): killed at {st:?}; in place {in_place}, archived {archived}"
                    ));
                    break;
                }
                None => {
                    assert!(
                        tries < 5,
                        "{kill:?}: in {tries} tries the kill never landed in that phase; last seen: {seen:?}"
                    );
                }
            }
        }
    }
    eprintln!("{}", outcomes.join("\n"));

    // One more, uninterrupted run completes the job.
    let mut cfg = archive_cfg(&data, dest.path());
    cfg.archive.older_than = DAY as f64;
    let r = actions::archive_old(&cfg, &ctx(false, u64::MAX)).unwrap();
    let (in_place, archived) = check_nothing_lost(&data, dest.path(), &expected);
    assert_eq!(in_place, 0, "{r:#?}");
    assert_eq!(archived, expected.len());
    assert!(fs::read_dir(dest.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
}

#[test]
fn a_file_name_with_a_newline_cannot_forge_a_progress_line() {
    let t = mount_or_skip!("4M");
    let dir = t.path().join("tmp");
    let forged = "held\n2026-01-01T00:00:00Z  INFO skos: forged line";
    let path = t.fill(&format!("tmp/{forged}"), 1024);
    t.age(&path, 10 * DAY);
    // Held open for writing: skipped, and the skip is announced.
    let _writer = OpenOptions::new().append(true).open(&path).unwrap();
    let lines = Mutex::new(Vec::<String>::new());
    let progress = |l: &str| lines.lock().unwrap().push(l.to_string());
    let mut cfg = base_cfg();
    cfg.temp.dirs = vec![dir.clone()];
    cfg.temp.max_age = DAY as f64;
    let run = RunCtx {
        progress: &progress,
        ..ctx(false, u64::MAX)
    };
    let r = actions::cleanup_temp(&cfg, &run).unwrap();
    assert!(path.exists());
    let lines = lines.into_inner().unwrap();
    let skipped: Vec<&String> = lines.iter().filter(|l| l.contains("skipped")).collect();
    assert_eq!(skipped.len(), 1, "{lines:?}");
    assert!(
        skipped[0].contains("held\\n2026-01-01T00:00:00Z  INFO skos: forged line"),
        "{skipped:?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:?}");
    // The report keeps the exact path; serialized, it is the escaped text.
    assert_eq!(r.skipped[0].path, canon(&path));
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["skipped"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("held\\n2026-01-01T00:00:00Z  INFO skos: forged line"));
}
