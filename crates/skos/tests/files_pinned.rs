//! The data dir and the files `skos up` writes, attacked as another user
//! would: a data dir pre-created by someone else with links planted to a
//! root-only file, a data dir anyone may write, a configured dir under a
//! parent a user owns; and every file written owner-only under umask 022.
//!
//! Root is needed (chown, a second user); without it each test says `SKIP`
//! and why, or fails under `SKOS_TEST_REQUIRE_ALL=1`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::sysfs::FakeSysfs;

const NOBODY: u32 = 65534;
const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `skos up` on `data`: it must refuse at once (killed after 10 s if it
/// does not); its stderr.
fn up_refused(work: &Path, data: &Path) -> String {
    let cfg = fast_config(work, "");
    let err = work.join("up-refused.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skos"))
        .arg("up")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(data)
        .env("NODE_NAME", "nova")
        .env("SKOS_SYSFS_ROOT", work.join("no-sysfs"))
        .env_remove("SKOS_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "skos up ran on {}: {stderr}",
        data.display()
    );
    stderr
}

#[test]
fn a_data_dir_of_another_user_with_planted_links_is_refused_and_nothing_changes() {
    skos_testsupport::require!("root", skos_testsupport::require::root());
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("root-only");
    std::fs::write(&victim, "root only\n").unwrap();
    chmod(&victim, 0o600);
    // Another user made the data dir first, and planted links where SKOS
    // writes.
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o755);
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    for name in ["status.json.tmp", "status.json", "audit.jsonl", "agent"] {
        std::os::unix::fs::symlink(&victim, data.join(name)).unwrap();
    }
    let stderr = up_refused(work.path(), &data);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
    assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
    assert!(
        stderr.contains(&data.display().to_string())
            && stderr.contains("owned by uid 65534")
            && stderr.contains("mode 0755"),
        "{stderr}"
    );

    // Root's own, but anyone may write it: refused the same way.
    let open = work.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let stderr = up_refused(work.path(), &open);
    assert!(stderr.contains("mode 0777"), "{stderr}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);

    // A data dir that is a symlink: not followed.
    let real = work.path().join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    std::os::unix::fs::symlink(&real, work.path().join("link")).unwrap();
    let stderr = up_refused(work.path(), &work.path().join("link"));
    assert!(stderr.contains("is a symlink (not followed)"), "{stderr}");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

#[test]
fn every_file_skos_up_writes_is_owner_only_under_umask_022() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = fast_config(work.path(), "");
    let data = work.path().join("data");
    let mut c = skos();
    // The usual umask, which would leave new files 0644.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(c.get_program())
        .arg("up")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.env("SKOS_SYSFS_ROOT", sys.root())
        .env("NODE_NAME", "nova");
    c = sh;
    let mut up = Proc::spawn(c, work.path(), "skos-up");
    // A throttle: the agent writes its executed ids, term and originals.
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "throttle state written", || {
        let agent = data.join("agent");
        let names: Vec<String> = std::fs::read_dir(&agent)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        (names.iter().any(|n| n.starts_with("throttle-"))
            && names.iter().any(|n| n.starts_with("executed-"))
            && data.join("status.json").exists())
        .then_some(())
    });
    assert!(up.sigterm().success());
    let mut seen = 0;
    for e in walkdir_all(&data) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        let mode = m.mode() & 0o7777;
        if m.is_dir() {
            assert_eq!(mode, 0o700, "{}", e.display());
        } else {
            assert!(m.is_file(), "{} is a regular file", e.display());
            assert_eq!(mode, 0o600, "{}", e.display());
            seen += 1;
        }
    }
    assert!(seen >= 4, "audit, status, state and the agent's files");
}

/// Every path under `dir`, `dir` included.
fn walkdir_all(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

#[test]
fn config_check_refuses_a_dir_whose_parent_a_user_could_swap() {
    skos_testsupport::require!("root", skos_testsupport::require::root());
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let shared = work.path().join("shared");
    let logs = shared.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    chmod(&shared, 0o777);
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {w}/data\nstorage:\n  allowed_roots: [{w}]\n  temp: {{dirs: [{tmp}]}}\n  logs: {{dirs: [{logs}]}}\n",
            w = work.path().display(),
            tmp = tmp.display(),
            logs = logs.display()
        ),
    )
    .unwrap();
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&cfg);
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .to_string()
    };
    let t = line("storage.temp.dirs[0]");
    assert!(
        t.contains(&format!(
            "{} is refused: {} is owned by uid 65534",
            tmp.display(),
            home.display()
        )),
        "{t}"
    );
    let l = line("storage.logs.dirs[0]");
    assert!(
        l.contains(&format!(
            "{} is refused: {} is writable by group or others (mode 0777)",
            logs.display(),
            shared.display()
        )),
        "{l}"
    );

    // The same dirs under parents only root can change: accepted.
    std::os::unix::fs::chown(&home, Some(0), Some(0)).unwrap();
    chmod(&shared, 0o755);
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&cfg);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
