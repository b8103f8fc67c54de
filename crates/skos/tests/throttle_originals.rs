//! A throttle SKOS applied can always be lifted, end to end: an agent
//! throttled, SIGKILLed and restarted with its data dir gone reports the
//! cap it finds, and the coordinator lifts it with its copy of the
//! originals (`skos coordinator` and `skos agent` over a real
//! nats-server). A machine with nothing to throttle says so at start and
//! answers `unsupported` at once (`skos up`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

/// Short intervals; fixes verified within two minutes and nodes offline
/// after ten seconds, so a slow machine does not escalate or go offline
/// while the agent restarts; a cool node's throttle is lifted after 1 s.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 10\n  verify_within: 120\n  command_deadline: 30\n\
thermal:\n  clear_for: 1\n  cooldown: 3600\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `text` without its terminal colours (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn commands<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["entry"]["event_type"] == "command"
                && r["entry"]["data"]["command"]["action_type"] == action
        })
        .map(|r| &r["entry"]["data"]["command"])
        .collect()
}

fn results<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["entry"]["event_type"] == "result"
                && r["entry"]["data"]["result"]["action_type"] == action
        })
        .map(|r| &r["entry"]["data"]["result"])
        .collect()
}

#[test]
fn a_throttle_is_lifted_after_the_agent_lost_its_data_dir() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[55.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let cfg = config(work.path(), &trust_section(work.path()));
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut nova = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(30), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });
    assert!(
        plain(&nova.log_text()).contains("cpufreq caps on 2 policy(ies)"),
        "the agent says what it can throttle:\n{}",
        nova.log_text()
    );

    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        (0..2)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    // A heartbeat with throttle 50 has reached the coordinator: it carried
    // the originals.
    wait_for(Duration::from_secs(30), "throttle 50 in status", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["throttle_level"] == 50))
    });

    // Killed while throttled; its data dir is lost; it comes back cool.
    nova.sigkill();
    std::fs::remove_dir_all(work.path().join("agent-nova")).unwrap();
    cpu.heat(45.0);
    let nova = agent_logged(&nats, &cfg, work.path(), sys.root(), "nova", "agent-nova-2");
    wait_for(
        Duration::from_secs(60),
        "scaling_max_freq back at full speed",
        || (0..2).all(|p| read_khz(sys.root(), p) == MAX).then_some(()),
    );
    let records = wait_for(Duration::from_secs(30), "reset_throttle result", || {
        let r = audit(&nats);
        results(&r, "reset_throttle")
            .iter()
            .any(|r| r["status"] == "succeeded")
            .then_some(r)
    });
    let resets = commands(&records, "reset_throttle");
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(
        resets[0]["parameters"]["originals"],
        json!([{"target": "cpufreq:policy0-1", "value": MAX.to_string()}]),
        "the reset gives the originals back"
    );
    let result = results(&records, "reset_throttle")[0];
    assert_eq!(result["status"], "succeeded", "{result}");
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("2 from the coordinator's copy of the originals"),
        "{result}"
    );
    assert!(
        nova.log_text()
            .contains("a cap is in force that SKOS has no record of"),
        "the restarted agent reported the cap:\n{}",
        nova.log_text()
    );
    // Healthy, unthrottled, nothing unexplained: the status tells the truth.
    wait_for(
        Duration::from_secs(30),
        "nova healthy and unthrottled",
        || {
            status(&nats).filter(|s| {
                node(s, "nova").is_some_and(|n| {
                    n["status"] == "healthy"
                        && n["throttle_level"] == 0
                        && n.get("unexplained_caps").is_none()
                })
            })
        },
    );
}

/// No cpufreq, no cgroup, no GPU: `skos up` says so at start, and a hot
/// CPU's throttle is answered `unsupported` with the reason at once, not
/// a `succeeded` that fails its verification two minutes later.
#[test]
fn nothing_to_throttle_is_said_at_start_and_answered_unsupported() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[45.0]);
    let cfg = config(work.path(), "");
    let up = Proc::spawn(
        {
            let mut c = skos();
            c.arg("up")
                .arg("--config")
                .arg(&cfg)
                .arg("--data-dir")
                .arg(&data)
                .env("NODE_NAME", "vega")
                .env("SKOS_SYSFS_ROOT", sys.root());
            c
        },
        work.path(),
        "up",
    );
    let line = wait_for(Duration::from_secs(30), "the start-up inventory", || {
        plain(&up.log_text())
            .lines()
            .find(|l| l.contains("what this machine has"))
            .map(str::to_string)
    });
    assert!(
        line.contains("actuators=none (not available: no cpufreq policy under")
            && line.contains("no cgroup configured")
            && line.contains("sensors=")
            && !line.contains("sensors=none"),
        "{line}"
    );

    cpu.heat(87.0);
    let records = wait_for(Duration::from_secs(30), "throttle_50 answered", || {
        let out = run({
            let mut c = skos();
            c.args(["audit", "tail", "--json", "-n", "100000", "--data-dir"])
                .arg(&data);
            c
        });
        let r = json_lines(&out);
        (!results(&r, "throttle_50").is_empty()).then_some(r)
    });
    let result = results(&records, "throttle_50")[0];
    assert_eq!(result["status"], "unsupported", "{result}");
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("throttle_50: nothing to act on"),
        "{result}"
    );
}
