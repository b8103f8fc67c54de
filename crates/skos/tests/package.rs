//! The Debian package (`dist/build-deb.sh`), installed into a throwaway
//! Debian root (debootstrap minbase, `skos_testsupport::rootfs`) standing
//! in for a fresh machine: it installs (binary, units, user, config, data
//! dirs with their owners and modes), its units pass `systemd-analyze
//! verify`, the coordinator and an agent run as the units say (user,
//! environment, command line) against a real nats-server, an upgrade keeps
//! the operator's config and the data, and a purge leaves the root as it
//! was. `lintian` finds nothing but what is explained here.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::require;
use skos_testsupport::rootfs::DebianRoot;

/// What the package manager and the user tools keep about any package or
/// user, not the package's own files.
const NOT_THE_PACKAGES: &[&str] = &[
    "var/lib/dpkg",
    "var/log",
    "var/cache",
    "tmp",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/.pwd.lock",
    "var/lib/systemd/deb-systemd-helper-enabled",
];

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dpkg(root: &DebianRoot, args: &[&str]) -> Output {
    let mut argv = vec!["dpkg", "--force-confdef", "--force-confold"];
    argv.extend_from_slice(args);
    root.run(&argv)
}

/// A unit's `key=` values, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The service in `unit` started in the root the way systemd would start
/// it: as its `User=`, with its `Environment=`, its `ExecStart=` command
/// line, and `extra_env` (what the test's machine differs in).
fn start_as_unit(root: &DebianRoot, unit: &str, extra_env: &[String], log: &Path) -> Proc {
    let user = unit_values(unit, "User")
        .first()
        .map(|u| format!("{u}:{u}"));
    let mut argv: Vec<String> = vec!["/usr/bin/env".into()];
    argv.extend(
        unit_values(unit, "Environment")
            .iter()
            .map(|e| e.to_string()),
    );
    argv.extend(extra_env.iter().cloned());
    let exec = unit_values(unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    argv.extend(exec[0].split_whitespace().map(str::to_string));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let cmd = root.command(user.as_deref(), &argv);
    let name = log.file_name().unwrap().to_string_lossy().to_string();
    Proc::spawn(cmd, log.parent().unwrap(), &name)
}

fn status_json(nats: &NatsServer) -> Option<serde_json::Value> {
    status(nats)
}

#[test]
fn the_package_installs_runs_upgrades_and_purges_cleanly() {
    require!("root", require::root());
    require!("nats-server", nats_server_binary());
    require!(
        "systemd-analyze",
        require::program("systemd-analyze", &["--version"], "systemd")
    );
    let binary = require!("a static skos binary", static_skos());
    let root = require!(
        "a Debian root (debootstrap)",
        DebianRoot::fresh(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    let work = tempfile::tempdir().unwrap();
    let v1 = build_deb(&binary, work.path(), "0.1.0-1");
    let v2 = build_deb(&binary, work.path(), "0.1.0-2");
    let before = root.paths(NOT_THE_PACKAGES);
    for deb in [&v1, &v2] {
        std::fs::copy(deb, root.join("/tmp").join(deb.file_name().unwrap())).unwrap();
    }
    let in_root = |deb: &Path| format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());

    // Install.
    ok("dpkg -i", &dpkg(&root, &["-i", &in_root(&v1)]));
    let passwd = std::fs::read_to_string(root.join("/etc/passwd")).unwrap();
    let skos_line = passwd
        .lines()
        .find(|l| l.starts_with("skos:"))
        .expect("the skos user");
    assert!(
        skos_line.ends_with(":/var/lib/skos:/usr/sbin/nologin"),
        "{skos_line}"
    );
    let uid: u32 = skos_line.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "a system user: {skos_line}");
    let meta = |p: &str| std::fs::metadata(root.join(p)).unwrap();
    assert_eq!(meta("/usr/bin/skos").mode() & 0o7777, 0o755);
    assert_eq!(meta("/var/lib/skos").uid(), uid);
    assert_eq!(meta("/var/lib/skos").mode() & 0o7777, 0o700);
    assert_eq!(meta("/var/lib/skos-agent").uid(), 0);
    assert_eq!(meta("/var/lib/skos-agent").mode() & 0o7777, 0o700);
    assert_eq!(meta("/etc/skos/config.yaml").mode() & 0o7777, 0o640);
    assert_eq!(meta("/etc/skos/config.yaml").uid(), 0);
    assert_eq!(
        std::fs::read_to_string(root.join("/etc/skos/config.yaml")).unwrap(),
        std::fs::read_to_string(repo().join("config.example.yaml")).unwrap()
    );
    let conffiles = root.run(&["dpkg-query", "-W", "-f", "${Conffiles}", "skos"]);
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/skos/config.yaml"),
        "the config is a conffile"
    );

    // The installed units verify, pointed at the installed binary.
    let units = ["skos-coordinator.service", "skos-agent.service"];
    for name in units {
        let unit = std::fs::read_to_string(root.join("/lib/systemd/system").join(name)).unwrap();
        assert_eq!(
            unit_values(&unit, "ExecStart")[0].split(' ').next(),
            Some("/usr/bin/skos")
        );
        let copy = work.path().join(name);
        let here = root.join("/usr/bin/skos");
        std::fs::write(
            &copy,
            unit.replace("/usr/bin/skos", &here.to_string_lossy()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{name}: {stderr}"
        );
    }

    // The operator's edit: the HTTP API on a port of the system's choosing
    // (this machine runs other tests); kept across the upgrade.
    let config_path = root.join("/etc/skos/config.yaml");
    let edited = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("listen: 127.0.0.1:9477", "listen: 127.0.0.1:0");
    assert!(
        edited.contains("listen: 127.0.0.1:0"),
        "the example names http.listen"
    );
    std::fs::write(&config_path, &edited).unwrap();

    // The coordinator and the agent, as their units run them.
    let nats = NatsServer::start();
    let env = [
        format!("NATS_URL={}", nats.url()),
        "LOG_LEVEL=DEBUG".to_string(),
    ];
    let coordinator_unit =
        std::fs::read_to_string(root.join("/lib/systemd/system/skos-coordinator.service")).unwrap();
    let agent_unit =
        std::fs::read_to_string(root.join("/lib/systemd/system/skos-agent.service")).unwrap();
    let mut coordinator = start_as_unit(
        &root,
        &coordinator_unit,
        &env,
        &work.path().join("coordinator"),
    );
    let mut agent = start_as_unit(&root, &agent_unit, &env, &work.path().join("agent"));
    let s = wait_for(
        Duration::from_secs(60),
        "nova heard by the coordinator",
        || status_json(&nats).filter(|s| node(s, "nova").is_some()),
    );
    assert_eq!(node(&s, "nova").unwrap()["status"], "healthy", "{s}");
    assert!(coordinator.alive(), "{}", coordinator.log_text());
    assert!(agent.alive(), "{}", agent.log_text());
    // Each wrote its data dir as its own user.
    let agent_dir = root.join("/var/lib/skos-agent/agent");
    assert_eq!(std::fs::metadata(&agent_dir).unwrap().uid(), 0);
    coordinator.sigterm();
    agent.sigterm();
    assert_eq!(
        std::fs::metadata(&agent_dir).unwrap().mode() & 0o7777,
        0o700
    );
    // What a node keeps (its executed actions, throttle originals).
    let kept_state = vec![agent_dir.clone(), agent_dir.join("executed-nova.log")];
    std::fs::write(&kept_state[1], "a1\n").unwrap();

    // Upgrade: the new version's files, the operator's config and the
    // data as they were.
    ok("dpkg -i (upgrade)", &dpkg(&root, &["-i", &in_root(&v2)]));
    let version = root.run(&["dpkg-query", "-W", "-f", "${Version}", "skos"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "0.1.0-2");
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), edited);
    assert_eq!(meta("/etc/skos/config.yaml").mode() & 0o7777, 0o640);
    for p in &kept_state {
        assert!(p.exists(), "{} kept across the upgrade", p.display());
    }
    let passwd2 = std::fs::read_to_string(root.join("/etc/passwd")).unwrap();
    assert!(passwd2.lines().any(|l| l == skos_line), "the same user");

    // Remove keeps the config, the data and the user; purge takes them.
    ok("dpkg -r", &dpkg(&root, &["-r", "skos"]));
    assert!(!root.join("/usr/bin/skos").exists());
    assert!(config_path.exists() && agent_dir.exists());
    ok("dpkg -P", &dpkg(&root, &["-P", "skos"]));
    for f in ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(
            !text.lines().any(|l| l.starts_with("skos:")),
            "{f}: skos is gone"
        );
    }
    let after = root.paths(NOT_THE_PACKAGES);
    let left: Vec<_> = after.difference(&before).collect();
    let gone: Vec<_> = before.difference(&after).collect();
    assert!(
        left.is_empty() && gone.is_empty(),
        "left: {left:?}; gone: {gone:?}"
    );
}

#[test]
fn lintian_finds_nothing_but_the_explained_overrides() {
    require!(
        "lintian",
        require::program("lintian", &["--version"], "lintian")
    );
    let binary = require!("a static skos binary", static_skos());
    // Every override says why, in the comment above it.
    let overrides = std::fs::read_to_string(repo().join("dist/deb/lintian-overrides")).unwrap();
    let mut explained = false;
    for line in overrides.lines() {
        if line.starts_with('#') {
            explained = true;
        } else if line.trim().is_empty() {
            explained = false;
        } else {
            assert!(explained, "an override without a reason: {line}");
            explained = false;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(&binary, work.path(), "0.1.0-1");
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--display-info"])
        .arg(&deb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = text
        .lines()
        .filter(|l| ["E:", "W:", "I:", "X:"].iter().any(|p| l.starts_with(p)))
        .collect();
    assert!(
        out.status.success() && found.is_empty(),
        "lintian ({}):\n{}\n{}",
        out.status,
        found.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}
