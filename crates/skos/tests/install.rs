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
