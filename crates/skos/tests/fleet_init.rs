//! The README's `skos fleet init` steps, run as written (the dir and the
//! server's address swapped for the test's) against a real nats-server:
//! the node they start is heated and gets throttled.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_000_000;

/// The lines of the README's block after its `fleet-init-steps` marker.
fn readme_steps() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let (_, after) = readme
        .split_once("<!-- fleet-init-steps")
        .expect("the README marks its fleet init steps");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, b)| b.split_once("```"))
        .expect("a sh block after the marker")
        .0;
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// One README line as a command: its leading `NAME=value`s are its
/// environment; `skos` is this build's binary.
fn command(line: &str, dir: &Path, url: &str, cwd: &Path) -> Command {
    let line = line
        .replace("/etc/skos/fleet", &dir.display().to_string())
        .replace("nats://bus:4222", url);
    let mut words = line.split_whitespace().peekable();
    let mut env = Vec::new();
    while let Some(w) = words
        .peek()
        .filter(|w| w.contains('=') && !w.starts_with('-'))
    {
        let (k, v) = w.split_once('=').unwrap();
        env.push((k.to_string(), v.to_string()));
        words.next();
    }
    let program = words.next().expect("a program");
    let mut c = match program {
        "skos" => skos(),
        "nats-server" => Command::new(skos_testsupport::nats::nats_server_binary().unwrap()),
        other => panic!("the README runs {other}, which this test does not know"),
    };
    c.args(words).envs(env).current_dir(cwd);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_readme_fleet_init_steps_bring_up_a_fleet_that_throttles_a_hot_node() {
    if skos_testsupport::require::require(
        &skos_testsupport::require::test_name(module_path!()),
        "nats-server",
        skos_testsupport::nats::nats_server_binary(),
    )
    .is_none()
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fleet");
    let url = format!("nats://127.0.0.1:{}", free_port());
    let steps = readme_steps();
    assert_eq!(steps.len(), 5, "{steps:#?}");
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(55.0, &[53.0, 52.0]);
    fake_cpufreq(sys.root(), 2, 800_000, MAX);

    // 1. skos fleet init
    assert!(steps[0].starts_with("skos fleet init"), "{}", steps[0]);
    let out = run(command(&steps[0], &dir, &url, work.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next = std::fs::read_to_string(dir.join("NEXT-STEPS")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), next);
    // 2. the server, 3. the coordinator, 4. nova's agent (on the fake
    // machine: the only thing the README's steps do not say).
    assert!(steps[1].starts_with("nats-server"), "{}", steps[1]);
    let _server = Proc::spawn(
        command(&steps[1], &dir, &url, work.path()),
        work.path(),
        "nats-server",
    );
    assert!(steps[2].starts_with("skos coordinator"), "{}", steps[2]);
    let _coord = Proc::spawn(
        command(&steps[2], &dir, &url, work.path()),
        work.path(),
        "coordinator",
    );
    assert!(steps[3].starts_with("skos agent"), "{}", steps[3]);
    let mut agent = command(&steps[3], &dir, &url, work.path());
    agent.env("SKOS_SYSFS_ROOT", sys.root());
    let _agent = Proc::spawn(agent, work.path(), "agent-nova");
    // 5. status, with the operator's key: nova healthy.
    assert!(steps[4].contains("skos status"), "{}", steps[4]);
    let status = || {
        let out = run({
            let mut c = command(&steps[4], &dir, &url, work.path());
            c.arg("--json");
            c
        });
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    };
    wait_for(Duration::from_secs(60), "nova healthy in status", || {
        status().filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });
    // Hot: throttled by the coordinator's signed command.
    cpu.heat(88.0);
    wait_for(Duration::from_secs(60), "nova throttled to 50 %", || {
        (0..2)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    wait_for(Duration::from_secs(30), "the throttle in status", || {
        status().filter(|s| {
            s["recent_actions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["action_type"] == "throttle_50"))
        })
    });
}

#[test]
fn fleet_init_replaces_nothing_without_force_and_refuses_a_bad_url() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fleet");
    let init = |extra: &[&str]| {
        run({
            let mut c = skos();
            c.args(["fleet", "init", "--nodes", "nova,lyra", "--out"])
                .arg(&dir)
                .args(extra);
            c
        })
    };
    assert!(init(&[]).status.success());
    let before = std::fs::read_to_string(dir.join("keys/nova.nk")).unwrap();
    let again = init(&[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("keys/nova.nk")).unwrap(),
        before
    );
    assert!(init(&["--force"]).status.success());
    assert_ne!(
        std::fs::read_to_string(dir.join("keys/nova.nk")).unwrap(),
        before
    );
    let bad = run({
        let mut c = skos();
        c.args([
            "fleet",
            "init",
            "--nodes",
            "nova",
            "--nats-url",
            "nats://u:p@bus:4222",
            "--out",
        ])
        .arg(work.path().join("other"));
        c
    });
    assert!(!bad.status.success());
    assert!(!work.path().join("other/keys").exists(), "nothing written");
    // Every config it writes is one skos accepts.
    for f in [
        "coordinator.yaml",
        "operator.yaml",
        "agent-nova.yaml",
        "agent-lyra.yaml",
    ] {
        let out = run({
            let mut c = skos();
            c.args(["config", "check", "--config"]).arg(dir.join(f));
            c
        });
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Each node signs with its own key, and the coordinator takes only
    // those: no node under a name nobody gave out.
    let coordinator: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("coordinator.yaml")).unwrap())
            .unwrap();
    assert_eq!(coordinator["trust"]["require_node_signatures"], true);
    for n in ["nova", "lyra"] {
        let agent: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(dir.join(format!("agent-{n}.yaml"))).unwrap(),
        )
        .unwrap();
        let file = agent["trust"]["node_key_file"].as_str().unwrap();
        assert_eq!(
            std::path::Path::new(file),
            dir.join(format!("keys/node-keys/{n}.nk"))
        );
        let public = skos_bus::trust::Signer::from_seed_file(std::path::Path::new(file))
            .unwrap()
            .public_key();
        assert_eq!(coordinator["trust"]["node_keys"][n], public.as_str(), "{n}");
    }
}

/// Node names that YAML would read as a number, null or a boolean are
/// still names in every config written.
#[test]
fn fleet_init_writes_names_yaml_would_read_as_other_types_as_names() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fleet");
    let out = run({
        let mut c = skos();
        c.args(["fleet", "init", "--nodes", "123,null,true,1e3", "--out"])
            .arg(&dir);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = vec!["coordinator.yaml".to_string()];
    files.extend(["123", "null", "true", "1e3"].map(|n| format!("agent-{n}.yaml")));
    for f in &files {
        let out = run({
            let mut c = skos();
            c.args(["config", "check", "--config"]).arg(dir.join(f));
            c
        });
        assert!(
            out.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let coordinator: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("coordinator.yaml")).unwrap())
            .unwrap();
    for n in ["123", "null", "true", "1e3"] {
        assert!(coordinator["trust"]["node_keys"][n].is_string(), "{n}");
    }
}
