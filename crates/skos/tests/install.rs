//! `skos install` on a remote node, the way README's "Install on a remote
//! node" does it: the binary copied to the node and run there as root. A
//! throwaway Debian root (debootstrap minbase) stands in for the node; the
//! copy runs inside it with `chroot`. It installs the binary, the units,
//! the config, the `skos` user and the data dirs; a second run changes
//! nothing; the coordinator runs as the unit says from what was installed;
//! `--uninstall` keeps the config, the data and the user, `--uninstall
//! --purge` leaves the root as it was.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::require;
use skos_testsupport::rootfs::DebianRoot;

/// What the user tools keep about any user (backups, locks), not what
/// `skos install` put there.
const NOT_OURS: &[&str] = &[
    "tmp",
    "var/log",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/.pwd.lock",
];

fn stdout(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn skos_install_on_a_fresh_node_is_idempotent_and_uninstalls_cleanly() {
    require!("root", require::root());
    require!("nats-server", nats_server_binary());
    let node = require!(
        "a Debian root (debootstrap)",
        DebianRoot::fresh(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    let before = node.paths(NOT_OURS);
    // scp skos node:/tmp/skos
    std::fs::copy(env!("CARGO_BIN_EXE_skos"), node.join("/tmp/skos")).unwrap();

    // ssh node sudo /tmp/skos install
    let first = stdout("skos install", &node.run(&["/tmp/skos", "install"]));
    for what in [
        "installed /usr/local/bin/skos",
        "installed /etc/systemd/system/skos-coordinator.service",
        "installed /etc/systemd/system/skos-agent.service",
        "installed user skos",
        "installed /etc/skos/config.yaml",
        "installed /var/lib/skos",
        "installed /var/lib/skos-agent",
    ] {
        assert!(first.contains(what), "{what}:\n{first}");
    }
    let passwd = std::fs::read_to_string(node.join("/etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("skos:"))
        .expect("user skos");
    let uid: u32 = line.split(':').nth(2).unwrap().parse().unwrap();
    let gid: u32 = line.split(':').nth(3).unwrap().parse().unwrap();
    assert!(uid < 1000, "a system user: {line}");
    let meta = |p: &str| std::fs::metadata(node.join(p)).unwrap();
    assert_eq!(
        std::fs::read(node.join("/usr/local/bin/skos")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_skos")).unwrap()
    );
    assert_eq!(meta("/usr/local/bin/skos").mode() & 0o7777, 0o755);
    assert_eq!(
        (
            meta("/var/lib/skos").uid(),
            meta("/var/lib/skos").mode() & 0o7777
        ),
        (uid, 0o700)
    );
    assert_eq!(
        (
            meta("/var/lib/skos-agent").uid(),
            meta("/var/lib/skos-agent").mode() & 0o7777
        ),
        (0, 0o700)
    );
    assert_eq!(
        (
            meta("/etc/skos/config.yaml").uid(),
            meta("/etc/skos/config.yaml").gid(),
            meta("/etc/skos/config.yaml").mode() & 0o7777
        ),
        (0, gid, 0o640)
    );
    for unit in ["skos-coordinator.service", "skos-agent.service"] {
        assert_eq!(
            std::fs::read_to_string(node.join("/etc/systemd/system").join(unit)).unwrap(),
            // The lean agent binary is not copied to the node: its unit
            // runs `skos agent` instead.
            std::fs::read_to_string(repo().join("dist/systemd").join(unit))
                .unwrap()
                .replace(
                    "ExecStart=/usr/local/bin/skos-agent",
                    "ExecStart=/usr/local/bin/skos agent"
                )
        );
    }

    // Again, with the config edited meanwhile: nothing changes, the
    // operator's config is kept.
    let config = node.join("/etc/skos/config.yaml");
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen: 127.0.0.1:9477", "listen: 127.0.0.1:0");
    std::fs::write(&config, &edited).unwrap();
    let second = stdout("skos install (again)", &node.run(&["/tmp/skos", "install"]));
    assert!(!second.contains("installed"), "{second}");
    assert!(second.contains("unchanged user skos"), "{second}");
    assert!(
        second.contains("kept      /etc/skos/config.yaml"),
        "{second}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    // The installed coordinator runs as the unit says: user skos, its
    // environment, its data dir.
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cmd = node.command(
        Some("skos:skos"),
        &[
            "/usr/bin/env",
            "SKOS_CONFIG=/etc/skos/config.yaml",
            "SKOS_DATA_DIR=/var/lib/skos",
            &format!("NATS_URL={}", nats.url()),
            "/usr/local/bin/skos",
            "coordinator",
        ],
    );
    let mut coordinator = Proc::spawn(cmd, work.path(), "coordinator");
    wait_for(Duration::from_secs(60), "the coordinator answering", || {
        status(&nats)
    });
    assert!(coordinator.alive(), "{}", coordinator.log_text());
    coordinator.sigterm();

    // Uninstall keeps what the operator and the services wrote.
    let off = stdout(
        "skos install --uninstall",
        &node.run(&["/usr/local/bin/skos", "install", "--uninstall"]),
    );
    assert!(off.contains("removed   /usr/local/bin/skos"), "{off}");
    assert!(off.contains("kept      /etc/skos/config.yaml"), "{off}");
    assert!(!node.join("/usr/local/bin/skos").exists());
    assert!(!node.join("/etc/systemd/system/skos-agent.service").exists());
    assert!(config.exists() && node.join("/var/lib/skos").exists());

    // Purge: the root as it was before.
    let purge = stdout(
        "skos install --uninstall --purge",
        &node.run(&["/tmp/skos", "install", "--uninstall", "--purge"]),
    );
    assert!(purge.contains("removed   user skos"), "{purge}");
    let passwd = std::fs::read_to_string(node.join("/etc/passwd")).unwrap();
    assert!(!passwd.lines().any(|l| l.starts_with("skos:")));
    let group = std::fs::read_to_string(node.join("/etc/group")).unwrap();
    assert!(!group.lines().any(|l| l.starts_with("skos:")));
    let after = node.paths(NOT_OURS);
    let left: Vec<_> = after.difference(&before).collect();
    let gone: Vec<_> = before.difference(&after).collect();
    assert!(
        left.is_empty() && gone.is_empty(),
        "left: {left:?}; gone: {gone:?}"
    );
}

#[test]
fn skos_install_refuses_without_root_and_names_why() {
    // Whoever runs the tests: a non-root run is refused with the reason.
    if require::root().is_ok() {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_skos"))
            .args(["install", "--root", "/nonexistent"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs root"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let out = skos()
            .args(["install", "--root", "/nonexistent"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
    }
}

fn run_skos(args: &[&std::ffi::OsStr], dir: Option<&Path>) -> Output {
    let mut cmd = skos();
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.output().unwrap()
}

#[test]
fn skos_install_into_a_root_follows_no_planted_link_and_takes_no_foreign_dir() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    require!("root", require::root());
    let node = require!(
        "a Debian root (debootstrap)",
        DebianRoot::fresh(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    // What whoever could write into the root points at, outside it.
    let outside = tempfile::tempdir().unwrap();
    let victim_dir = outside.path().join("dir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::set_permissions(&victim_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim_file = outside.path().join("file");
    std::fs::write(&victim_file, "secret\n").unwrap();
    std::fs::set_permissions(&victim_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim_dir, node.join("/var/lib/skos")).unwrap();
    std::fs::create_dir_all(node.join("/etc/systemd/system")).unwrap();
    let unit = node.join("/etc/systemd/system/skos-agent.service");
    symlink(&victim_file, &unit).unwrap();

    let root = node.path().as_os_str();
    let out = run_skos(&["install".as_ref(), "--root".as_ref(), root], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a link as the data dir is refused");
    assert!(
        stderr.contains("/var/lib/skos:") && stderr.contains("not a dir"),
        "{stderr}"
    );
    let meta = std::fs::metadata(&victim_dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (0, 0o755),
        "the dir the link points at keeps its owner and mode"
    );
    assert_eq!(std::fs::read_to_string(&victim_file).unwrap(), "secret\n");
    assert_eq!(
        std::fs::metadata(&victim_file).unwrap().mode() & 0o7777,
        0o600
    );
    assert!(
        std::fs::symlink_metadata(&unit).unwrap().is_file(),
        "the unit replaces the link, not what it points at"
    );

    // A data dir another user made, open to all, with their file in it.
    std::fs::remove_file(node.join("/var/lib/skos")).unwrap();
    let foreign = node.join("/var/lib/skos-agent");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("planted"), "x").unwrap();
    std::os::unix::fs::chown(&foreign, Some(12345), Some(12345)).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run_skos(&["install".as_ref(), "--root".as_ref(), root], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a foreign data dir is refused");
    assert!(
        stderr.contains("/var/lib/skos-agent:") && stderr.contains("owned by uid 12345"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(&foreign).unwrap().uid(),
        12345,
        "not handed to root"
    );

    // Once it is gone, the install completes.
    std::fs::remove_dir_all(&foreign).unwrap();
    let out = run_skos(&["install".as_ref(), "--root".as_ref(), root], None);
    stdout("skos install (after the cleanup)", &out);
}

#[test]
fn skos_install_takes_a_relative_root_and_uninstalls_what_is_not_there() {
    require!("root", require::root());
    let node = require!(
        "a Debian root (debootstrap)",
        DebianRoot::fresh(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    let before = node.paths(NOT_OURS);
    let parent = node.path().parent().unwrap();
    let name = node.path().file_name().unwrap();

    // Nothing installed: uninstalling (and purging) changes nothing.
    let off = stdout(
        "skos install --uninstall --purge (nothing installed)",
        &run_skos(
            &[
                "install".as_ref(),
                "--uninstall".as_ref(),
                "--purge".as_ref(),
                "--root".as_ref(),
                node.path().as_os_str(),
            ],
            None,
        ),
    );
    assert!(!off.contains("removed"), "{off}");
    assert_eq!(node.paths(NOT_OURS), before);

    // --root relative to the working dir.
    let first = stdout(
        "skos install --root RELATIVE",
        &run_skos(&["install".as_ref(), "--root".as_ref(), name], Some(parent)),
    );
    assert!(first.contains("installed user skos"), "{first}");
    let passwd = std::fs::read_to_string(node.join("/etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("skos:")), "{passwd}");

    // The same root spelt with `..`: the same root, nothing to change;
    // --enable there says that it enabled nothing.
    let mut dotted = node.join("/etc").into_os_string();
    dotted.push("/..");
    let again = stdout(
        "skos install --root ROOT/etc/.. --enable agent",
        &run_skos(
            &[
                "install".as_ref(),
                "--root".as_ref(),
                &dotted,
                "--enable".as_ref(),
                "agent".as_ref(),
            ],
            None,
        ),
    );
    assert!(!again.contains("installed"), "{again}");
    assert!(
        again.contains("skos-agent.service not enabled: --root is not /"),
        "{again}"
    );
}

#[test]
fn skos_install_uses_and_keeps_a_skos_user_or_group_the_machine_had() {
    require!("root", require::root());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let skos_line = |node: &DebianRoot| node.entry("/etc/passwd", "skos");
    let install = |node: &DebianRoot, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["install".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        args.extend(["--root".as_ref(), node.path().as_os_str()]);
        stdout(&format!("skos install {extra:?}"), &run_skos(&args, None))
    };

    // A `skos` group alone: the user joins it.
    let node = require!("a Debian root (debootstrap)", DebianRoot::fresh(cache));
    stdout(
        "groupadd skos",
        &node.run(&["groupadd", "--system", "skos"]),
    );
    install(&node, &[]);
    let line = skos_line(&node).expect("the skos user");
    let gid = node.gid("skos").expect("the skos group");
    assert_eq!(line.split(':').nth(3), Some(gid.as_str()), "{line}");
    let purge = install(&node, &["--uninstall", "--purge"]);
    assert!(purge.contains("removed   user skos"), "{purge}");
    assert_eq!(skos_line(&node), None);

    // The operator's own `skos` user: used, and kept by the purge.
    let node = require!("a Debian root (debootstrap)", DebianRoot::fresh(cache));
    stdout(
        "useradd skos",
        &node.run(&["useradd", "--uid", "4242", "--comment", "ours", "skos"]),
    );
    let theirs = skos_line(&node).unwrap();
    install(&node, &[]);
    assert_eq!(
        std::fs::metadata(node.join("/var/lib/skos")).unwrap().uid(),
        4242
    );
    let purge = install(&node, &["--uninstall", "--purge"]);
    assert!(purge.contains("kept      user skos"), "{purge}");
    assert_eq!(skos_line(&node).as_deref(), Some(theirs.as_str()));
    assert!(!node.join("/var/lib/skos").exists());
}
