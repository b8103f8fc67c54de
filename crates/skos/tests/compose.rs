//! The compose stack (`dist/container/compose.yaml`) heals a hot node
//! under Podman: the images are built by `dist/container/build-images.sh`
//! (SKOS `FROM scratch` on the static binary; NATS from Debian's
//! nats-server, since no registry is reachable here), a fleet is made by
//! `skos fleet init` (keys and least-privilege permissions), and the
//! compose file's three services are started with `podman run` as Compose
//! would start them (see [`Stack`] for why not podman-compose): NATS with
//! JetStream and its monitoring port, the coordinator and the agent. The
//! one change to the compose file is the agent's sysfs: a fake one the
//! test heats (`SKOS_SYSFS_ROOT`), in place of the host's `/sys` mounts.
//! The hot CPU is alerted, throttled through the fake cpufreq, verified
//! once it cools, and the throttle lifted: all read off the audit trail
//! with the operator's credential.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::nats_server_binary;
use skos_testsupport::podman::Podman;
use skos_testsupport::require;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

/// The project's compose file, its variables set from `env`, the agent's
/// host sysfs mounts replaced by the fake tree at `sys` (mounted at the
/// same path, `SKOS_SYSFS_ROOT`).
fn test_compose(sys: &Path, env: &[(&str, String)]) -> Yaml {
    let text = std::fs::read_to_string(repo().join("dist/container/compose.yaml")).unwrap();
    let mut doc: Yaml = serde_yaml_ng::from_str(&interpolate(&text, env)).unwrap();
    let agent = &mut doc["services"]["agent"];
    let volumes = agent["volumes"].as_sequence_mut().unwrap();
    let host_sys = volumes
        .iter()
        .filter(|v| v.as_str().is_some_and(|s| s.starts_with("/sys/")))
        .count();
    assert_eq!(
        host_sys, 3,
        "thermal, hwmon and cpu from the host: {volumes:?}"
    );
    volumes.retain(|v| !v.as_str().is_some_and(|s| s.starts_with("/sys/")));
    volumes.push(Yaml::from(format!("{0}:{0}", sys.display())));
    agent["environment"]["SKOS_SYSFS_ROOT"] = Yaml::from(sys.display().to_string());
    doc
}

/// `${NAME:-default}` and `${NAME}` replaced as Compose does, from `env`
/// (then the default, then empty).
fn interpolate(text: &str, env: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            break;
        };
        let inner = &rest[at + 2..at + end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        let value = env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| default.to_string());
        out.push_str(&value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The service keys [`Stack::up`] carries over to `podman run`; any other
/// key in the compose file fails the test (it would be silently dropped).
const KNOWN_KEYS: &[&str] = &[
    "image",
    "command",
    "environment",
    "network_mode",
    "cap_add",
    "cap_drop",
    "security_opt",
    "read_only",
    "volumes",
    "depends_on",
    "restart",
];

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The compose file's services started with `podman run`, one container
/// each, in the order of their `depends_on`, as Compose starts them:
/// Debian's podman-compose (1.0.3) adds every container to a project
/// network as well as to `network_mode: host`, which Podman refuses, and
/// `podman compose` needs that or docker-compose. Containers and named
/// volumes are removed on drop.
struct Stack {
    podman: PathBuf,
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Stack {
    fn up(podman: PathBuf, project: &str, doc: &Yaml) -> Stack {
        let mut stack = Stack {
            podman,
            containers: Vec::new(),
            volumes: Vec::new(),
        };
        let services = doc["services"].as_mapping().unwrap();
        let mut order: Vec<String> = Vec::new();
        for _ in 0..services.len() {
            for (name, svc) in services {
                let name = name.as_str().unwrap().to_string();
                let ready = strings(&svc["depends_on"])
                    .iter()
                    .all(|d| order.contains(d));
                if ready && !order.contains(&name) {
                    order.push(name);
                }
            }
        }
        assert_eq!(order.len(), services.len(), "depends_on has no cycle");
        for name in &order {
            let svc = &doc["services"][name.as_str()];
            for key in svc.as_mapping().unwrap().keys() {
                let key = key.as_str().unwrap();
                assert!(
                    KNOWN_KEYS.contains(&key),
                    "{name}: {key} is not carried over"
                );
            }
            let container = format!("{project}_{name}");
            let mut args: Vec<String> = vec![
                "run".into(),
                "-d".into(),
                "--name".into(),
                container.clone(),
            ];
            if let Some(net) = svc["network_mode"].as_str() {
                args.extend(["--network".into(), net.into()]);
            }
            for c in strings(&svc["cap_drop"]) {
                args.extend(["--cap-drop".into(), c]);
            }
            for c in strings(&svc["cap_add"]) {
                args.extend(["--cap-add".into(), c]);
            }
            for o in strings(&svc["security_opt"]) {
                args.extend(["--security-opt".into(), o]);
            }
            if svc["read_only"].as_bool() == Some(true) {
                args.push("--read-only".into());
            }
            if let Some(env) = svc["environment"].as_mapping() {
                for (k, v) in env {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| serde_yaml_ng::to_string(v).unwrap().trim().to_string());
                    args.extend(["-e".into(), format!("{}={v}", k.as_str().unwrap())]);
                }
            }
            for v in strings(&svc["volumes"]) {
                let v = if v.starts_with('/') {
                    v
                } else {
                    // A named volume: the project's own.
                    let named = format!("{project}_{v}");
                    let volume = named.split(':').next().unwrap().to_string();
                    if !stack.volumes.contains(&volume) {
                        stack.volumes.push(volume);
                    }
                    named
                };
                args.extend(["-v".into(), v]);
            }
            args.push(svc["image"].as_str().unwrap().to_string());
            args.extend(strings(&svc["command"]));
            let out = Command::new(&stack.podman)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "podman {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            stack.containers.push(container);
        }
        stack
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for c in &self.containers {
            let out = Command::new(&self.podman)
                .args(["logs", c])
                .output()
                .unwrap();
            text.push_str(&format!(
                "----- {c} -----\n{}{}\n",
                tail(&String::from_utf8_lossy(&out.stdout), 60),
                tail(&String::from_utf8_lossy(&out.stderr), 60)
            ));
        }
        text
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for c in self.containers.iter().rev() {
            let _ = Command::new(&self.podman)
                .args(["rm", "-f", "-t", "2", c])
                .output();
        }
        for v in &self.volumes {
            let _ = Command::new(&self.podman)
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

/// `skos` as the fleet's operator: its login key, NATS_URL.
fn operator(fleet: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = skos();
    c.args(args)
        .arg("-c")
        .arg(fleet.join("operator.yaml"))
        .env("NATS_URL", url);
    c
}

fn fleet_status(fleet: &Path, url: &str) -> Option<Value> {
    let out = run(operator(fleet, url, &["status", "--json"]));
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn fleet_audit(fleet: &Path, url: &str) -> Vec<Value> {
    let out = run(operator(
        fleet,
        url,
        &["audit", "tail", "--json", "-n", "100000"],
    ));
    json_lines(&out)
}

fn event<'a>(r: &'a Value, kind: &str) -> Option<&'a Value> {
    (r["entry"]["event_type"] == kind).then(|| &r["entry"]["data"])
}

#[test]
fn the_compose_stack_heals_a_hot_node() {
    require!("root", require::root());
    require!("nats-server", nats_server_binary());
    let binary = require!("a static skos binary", static_skos());
    let engine = require!("podman", Podman::start());
    let wrapper = engine.wrapper().unwrap();
    let work = tempfile::tempdir().unwrap();

    // The images, as a user without a registry builds them.
    let mut build = Command::new(repo().join("dist/container/build-images.sh"));
    build
        .arg(&binary)
        .arg("--nats")
        .env("PODMAN", &wrapper)
        .env("SKOS_IMAGE", "localhost/skos:test");
    run_ok(build);

    // The fleet: one node, the server on a port of its own.
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let fleet = work.path().join("fleet");
    let init = run({
        let mut c = skos();
        c.args(["fleet", "init", "--nodes", "nova", "--out"])
            .arg(&fleet)
            .args(["--nats-url", &url]);
        c
    });
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // Fast sensing and a short hold, as the other end-to-end tests use.
    let tuning = "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [thermal_sentinel]\n\
coordinator:\n  heartbeat_timeout: 30\n  verify_within: 60\n  verify_hold_seconds: 2\n  command_deadline: 30\n\
thermal:\n  clear_for: 2\n  cooldown: 3600\n  gpu: {nvml: false, nvidia_smi: false, lm_sensors: false}\n";
    for file in ["coordinator.yaml", "agent-nova.yaml"] {
        let path = fleet.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{tuning}")).unwrap();
    }

    // A hot-able machine: a package and four cores, two cpufreq policies.
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(55.0, &[53.0, 52.0, 51.0, 50.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);

    let monitor = free_port();
    let env = [
        ("SKOS_FLEET", fleet.display().to_string()),
        ("SKOS_NODE", "nova".to_string()),
        ("SKOS_IMAGE", "localhost/skos:test".to_string()),
        (
            "SKOS_NATS_IMAGE",
            "localhost/nats-server:latest".to_string(),
        ),
        ("SKOS_NATS_MONITOR_PORT", monitor.to_string()),
        ("SKOS_HTTP_PORT", free_port().to_string()),
    ];
    let doc = test_compose(sys.root(), &env);
    let _stack = Stack::up(wrapper, &format!("skos-test-{}", std::process::id()), &doc);

    // NATS's monitoring port says JetStream is on.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{monitor}").parse().unwrap();
    let jsz = wait_for(Duration::from_secs(60), "NATS monitoring /jsz", || {
        let (code, body) = http_get(addr, "/jsz", Duration::from_secs(2));
        (code == 200).then_some(body)
    });
    let jsz: Value = serde_json::from_str(&jsz).unwrap();
    assert!(
        jsz["config"]["store_dir"].is_string(),
        "JetStream on: {jsz}"
    );

    wait_for(Duration::from_secs(90), "nova healthy", || {
        fleet_status(&fleet, &url)
            .filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });

    // Hot: alerted, throttled through cpufreq, in force.
    cpu.heat(90.0);
    wait_for(Duration::from_secs(60), "the throttle in force", || {
        (0..2).all(|p| read_khz(sys.root(), p) < MAX).then_some(())
    });
    // Cool: verified, then lifted. The agent restores the files before it
    // answers, and the answer is audited after that: the wait is for the
    // audited answer, not the files alone.
    cpu.heat(50.0);
    let records = wait_for(
        Duration::from_secs(120),
        "the fix verified and the throttle lifted, its result audited",
        || {
            let r = fleet_audit(&fleet, &url);
            let verified = r
                .iter()
                .filter_map(|r| event(r, "verification"))
                .any(|d| d["outcome"] == "succeeded");
            let audited = r
                .iter()
                .any(|r| result_is(r, "reset_throttle", "succeeded"));
            let lifted = (0..2).all(|p| read_khz(sys.root(), p) == MAX);
            (verified && audited && lifted).then_some(r)
        },
    );
    let alert = records
        .iter()
        .filter_map(|r| event(r, "alert"))
        .find(|d| d["alert"]["type"] == "thermal")
        .expect("a thermal alert");
    assert_eq!(alert["alert"]["node"], "nova", "{alert}");
    let throttled = records
        .iter()
        .any(|r| result_is(r, "throttle_50", "succeeded"));
    assert!(
        throttled,
        "the throttle carried out by the agent in its container"
    );
    let lifted = records
        .iter()
        .any(|r| result_is(r, "reset_throttle", "succeeded"));
    assert!(lifted, "the throttle lifted once verified");
    let verify = run(operator(&fleet, &url, &["audit", "verify"]));
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
