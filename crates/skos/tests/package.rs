//! The Debian package (`dist/build-deb.sh`), installed into a throwaway
//! Debian root (debootstrap minbase, `skos_testsupport::rootfs`) standing
//! in for a fresh machine: it installs (binary, units, user, config, data
//! dirs with their owners and modes), its units pass `systemd-analyze
//! verify`, the coordinator and an agent run as the units say (user,
//! environment, command line) against a real nats-server, an upgrade keeps
//! the operator's config and the data, and a purge leaves the root as it
//! was. Booted with systemd in a container, the same root runs both units
//! from the package under systemd itself. `lintian` finds nothing but the
//! overrides, each with its reason.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::podman::Podman;
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
        let exec = unit_values(&unit, "ExecStart")[0]
            .split(' ')
            .next()
            .unwrap();
        assert!(
            exec.starts_with("/usr/bin/skos") && root.join(exec).is_file(),
            "{name}: ExecStart={exec}, a binary of the package"
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

/// `podman exec CONTAINER argv`, its output; panics naming `what` unless
/// it succeeds.
fn exec(engine: &Podman, container: &str, argv: &[&str]) -> String {
    let out = engine
        .podman()
        .args(["exec", container])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&format!("podman exec {argv:?}"), &out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The throwaway root booted with systemd as PID 1 in a container; the
/// package installed with dpkg and both units started by systemd itself,
/// with all their sandboxing: they stay active, the coordinator runs as
/// `skos`, the agent's heartbeats reach the coordinator over a real
/// nats-server; purged, the units and the user are gone. Then `skos
/// install --enable` on the same running systemd, and `--uninstall --purge`.
///
/// The container is privileged: systemd sets up each unit's namespaces
/// (PrivateTmp, ProtectSystem, ...) itself. The agent is pointed at an
/// empty sysfs (a drop-in), so it can never throttle the test machine.
#[test]
fn the_package_runs_under_systemd() {
    require!("root", require::root());
    require!("nats-server", nats_server_binary());
    let binary = require!("a static skos binary", static_skos());
    let engine = require!("podman", Podman::start());
    let root = require!(
        "a Debian root (debootstrap)",
        DebianRoot::fresh(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(&binary, work.path(), "0.1.0-1");
    let image = "localhost/skos-test-debian-systemd";
    let mut tar = root.tar().stdout(Stdio::piped()).spawn().unwrap();
    let import = engine
        .podman()
        .args(["import", "-", image])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    ok("podman import", &import);
    let name = format!("skos-systemd-{}", std::process::id());
    let run = engine
        .podman()
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "--privileged",
            "--network",
            "host",
        ])
        .args(["--systemd", "always", image, "/sbin/init"])
        .output()
        .unwrap();
    ok("podman run /sbin/init", &run);
    let container = Container {
        engine: &engine,
        name: name.clone(),
    };
    wait_for(Duration::from_secs(120), "systemd up", || {
        let out = engine
            .podman()
            .args(["exec", &name, "systemctl", "is-system-running"])
            .output()
            .ok()?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        matches!(state.as_str(), "running" | "degraded").then_some(())
    });

    let copy = engine
        .podman()
        .arg("cp")
        .arg(&deb)
        .arg(format!("{name}:/root/skos.deb"))
        .output()
        .unwrap();
    ok("podman cp", &copy);
    exec(&engine, &name, &["dpkg", "-i", "/root/skos.deb"]);
    let nats = NatsServer::start();
    exec(
        &engine,
        &name,
        &[
            "sed",
            "-i",
            &format!(
                "s|url: nats://localhost:4222|url: {}|; s|listen: 127.0.0.1:9477|listen: 127.0.0.1:0|",
                nats.url()
            ),
            "/etc/skos/config.yaml",
        ],
    );
    exec(
        &engine,
        &name,
        &[
            "mkdir",
            "-p",
            "/etc/systemd/system/skos-agent.service.d",
            "/var/lib/skos-test-sys",
        ],
    );
    exec(
        &engine,
        &name,
        &[
            "sh",
            "-c",
            "printf '[Service]\\nEnvironment=SKOS_SYSFS_ROOT=/var/lib/skos-test-sys\\n' \
             > /etc/systemd/system/skos-agent.service.d/test.conf && systemctl daemon-reload",
        ],
    );
    exec(
        &engine,
        &name,
        &[
            "systemctl",
            "start",
            "skos-coordinator.service",
            "skos-agent.service",
        ],
    );
    let s = wait_for(Duration::from_secs(90), "nova heard, under systemd", || {
        status(&nats).filter(|s| node(s, "nova").is_some())
    });
    assert_eq!(node(&s, "nova").unwrap()["status"], "healthy", "{s}");
    let journal = || {
        exec(
            &engine,
            &name,
            &[
                "journalctl",
                "--no-pager",
                "-u",
                "skos-coordinator",
                "-u",
                "skos-agent",
            ],
        )
    };
    for unit in ["skos-coordinator.service", "skos-agent.service"] {
        let active = exec(&engine, &name, &["systemctl", "is-active", unit]);
        assert_eq!(active, "active", "{unit}: {}", journal());
    }
    let pid = exec(
        &engine,
        &name,
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "skos-coordinator",
        ],
    );
    let proc_status = exec(&engine, &name, &["cat", &format!("/proc/{pid}/status")]);
    let uid = exec(&engine, &name, &["id", "-u", "skos"]);
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(uid.as_str()),
        "the coordinator runs as skos: {uid_line}"
    );
    let caps = proc_status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap();
    assert!(caps.ends_with("0000000000000000"), "no capability: {caps}");

    exec(&engine, &name, &["dpkg", "-P", "skos"]);
    let gone = engine
        .podman()
        .args([
            "exec",
            &name,
            "systemctl",
            "cat",
            "skos-coordinator.service",
        ])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the unit is gone after purge");
    let user = engine
        .podman()
        .args(["exec", &name, "id", "skos"])
        .output()
        .unwrap();
    assert!(!user.status.success(), "the user is gone after purge");

    // The same machine, now with `skos install` (the remote-node path) on
    // a running systemd: it reloads systemd, enables and starts the units,
    // and --uninstall --purge stops, disables and removes them.
    let config = work.path().join("config.yaml");
    let edited = std::fs::read_to_string(repo().join("config.example.yaml"))
        .unwrap()
        .replace(
            "url: nats://localhost:4222",
            &format!("url: {}", nats.url()),
        )
        .replace("listen: 127.0.0.1:9477", "listen: 127.0.0.1:0");
    std::fs::write(&config, edited).unwrap();
    for (from, to) in [
        (binary.as_path(), "/root/skos"),
        (config.as_path(), "/root/config.yaml"),
    ] {
        let copy = engine
            .podman()
            .arg("cp")
            .arg(from)
            .arg(format!("{name}:{to}"))
            .output()
            .unwrap();
        ok("podman cp", &copy);
    }
    let installed = exec(
        &engine,
        &name,
        &[
            "/root/skos",
            "install",
            "--config",
            "/root/config.yaml",
            "--enable",
            "coordinator,agent",
        ],
    );
    assert!(
        installed.contains("enabled and started skos-agent.service"),
        "{installed}"
    );
    for unit in ["skos-coordinator.service", "skos-agent.service"] {
        assert_eq!(
            exec(&engine, &name, &["systemctl", "is-enabled", unit]),
            "enabled"
        );
        let active = exec(&engine, &name, &["systemctl", "is-active", unit]);
        assert_eq!(active, "active", "{unit}: {}", journal());
    }
    let removed = exec(
        &engine,
        &name,
        &["/root/skos", "install", "--uninstall", "--purge"],
    );
    assert!(removed.contains("removed   user skos"), "{removed}");
    let left = engine
        .podman()
        .args([
            "exec",
            &name,
            "systemctl",
            "is-active",
            "skos-agent.service",
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&left.stdout).trim(), "active");
    drop(container);
}

/// A container removed on drop.
struct Container<'a> {
    engine: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .podman()
            .args(["rm", "-f", "-t", "2", &self.name])
            .output();
    }
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

/// The package on machines that already have part of what it makes: a
/// `skos` user of the operator's own (another uid) is used and survives
/// the purge; a `skos` group alone does not stop the install; an upgrade
/// after the operator deleted the config (dpkg does not bring a deleted
/// conffile back) still configures.
#[test]
fn the_package_takes_over_nothing_the_machine_already_had() {
    require!("root", require::root());
    let binary = require!("a static skos binary", static_skos());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let work = tempfile::tempdir().unwrap();
    let v1 = build_deb(&binary, work.path(), "0.1.0-1");
    let v2 = build_deb(&binary, work.path(), "0.1.0-2");
    let copy_in = |root: &DebianRoot| {
        for deb in [&v1, &v2] {
            std::fs::copy(deb, root.join("/tmp").join(deb.file_name().unwrap())).unwrap();
        }
    };
    let in_root = |deb: &Path| format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());
    let skos_line = |root: &DebianRoot| root.entry("/etc/passwd", "skos");

    // The operator's own `skos` user, there before the package.
    let root = require!("a Debian root (debootstrap)", DebianRoot::fresh(cache));
    copy_in(&root);
    ok(
        "useradd skos",
        &root.run(&["useradd", "--uid", "4242", "--comment", "ours", "skos"]),
    );
    let theirs = skos_line(&root).unwrap();
    ok("dpkg -i", &dpkg(&root, &["-i", &in_root(&v1)]));
    assert_eq!(skos_line(&root).as_deref(), Some(theirs.as_str()));
    assert_eq!(
        std::fs::metadata(root.join("/var/lib/skos")).unwrap().uid(),
        4242
    );
    std::fs::remove_file(root.join("/etc/skos/config.yaml")).unwrap();
    ok(
        "dpkg -i (upgrade, config deleted)",
        &dpkg(&root, &["-i", &in_root(&v2)]),
    );
    ok("dpkg --purge", &dpkg(&root, &["--purge", "skos"]));
    assert_eq!(
        skos_line(&root).as_deref(),
        Some(theirs.as_str()),
        "the purge keeps a user the package did not make"
    );
    assert!(!root.join("/var/lib/skos").exists());

    // A `skos` group alone.
    let root = require!("a Debian root (debootstrap)", DebianRoot::fresh(cache));
    copy_in(&root);
    ok(
        "groupadd skos",
        &root.run(&["groupadd", "--system", "skos"]),
    );
    ok(
        "dpkg -i (group there)",
        &dpkg(&root, &["-i", &in_root(&v1)]),
    );
    let line = skos_line(&root).expect("the skos user");
    let gid = root.gid("skos").expect("the skos group");
    assert_eq!(line.split(':').nth(3), Some(gid.as_str()), "{line}");
    ok("dpkg --purge", &dpkg(&root, &["--purge", "skos"]));
    assert_eq!(skos_line(&root), None, "the purge takes the user it made");
}
