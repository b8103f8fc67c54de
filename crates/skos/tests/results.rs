//! Results against a real nats-server: a result counts only from the node
//! its command was sent to, a command whose result never comes is closed as
//! `no_result` (and a lost throttle reset is sent again), and agents whose
//! clocks are an hour off still run their commands.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use skos_bus::{Bus, Feed, NatsBus, NatsOptions, Subscription};
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::require;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn bus(nats: &NatsServer) -> Bus {
    let b = tokio::time::timeout(
        Duration::from_secs(10),
        NatsBus::connect(&NatsOptions::new(nats.url(), "test")),
    )
    .await
    .expect("connect timed out")
    .unwrap();
    Bus::Nats(b)
}

/// A whole config (no `fast_config`: its coordinator section is fixed).
fn config(dir: &Path, coordinator: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n{coordinator}\
thermal:\n  clear_for: 1\n  cooldown: 60\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn now() -> String {
    skos_core::timefmt::format(&chrono::Utc::now())
}

fn publish(rt: &tokio::runtime::Runtime, bus: &Bus, subject: &str, body: &Value) {
    let payload = Bytes::from(serde_json::to_vec(body).unwrap());
    rt.block_on(bus.publish_raw(subject, payload)).unwrap();
}

/// A warning CPU alert from `node` (its table row: `throttle_10`).
fn warm_alert(node: &str, id: &str) -> Value {
    json!({
        "alert_id": id,
        "agent_id": format!("thermal-sentinel-{node}"),
        "type": "thermal",
        "severity": "warning",
        "node": node,
        "message": "CPU temperature 77°C exceeds warning threshold",
        "details": {"sensor": "cpu", "temperature": 77, "threshold": 75},
        "timestamp": now(),
    })
}

/// A result for `action_id` as `node` sends it.
fn result_json(node: &str, action_id: &str, action: &str, status: &str) -> Value {
    json!({
        "action_id": action_id,
        "action_type": action,
        "node": node,
        "agent_id": format!("thermal-sentinel-{node}"),
        "status": status,
        "message": format!("{status} (sent by the test as {node})"),
        "timestamp": now(),
    })
}

/// The next command on a node's feed (the test plays that node's agent),
/// acknowledged so it is not delivered again.
fn next_command(rt: &tokio::runtime::Runtime, feed: &mut Subscription) -> Value {
    rt.block_on(async {
        let m = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("no command within 30 s")
            .expect("command feed ended");
        let cmd: Value = serde_json::from_slice(&m.payload).unwrap();
        m.ack().await.unwrap();
        cmd
    })
}

fn recent<'a>(s: &'a Value, action_id: &str) -> Option<&'a Value> {
    s["recent_actions"]
        .as_array()?
        .iter()
        .find(|a| a["action_id"] == action_id)
}

fn counter(s: &Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or(0)
}

/// Node a forges results for node b's pending command on its own subject:
/// they are refused and counted, b's command stays pending and its breaker
/// closed; b's own result then closes it.
#[test]
fn forged_results_from_another_node_touch_nothing() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(
        work.path(),
        "  heartbeat_timeout: 600\n  verify_within: 600\n  command_deadline: 300\n",
        "",
    );
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    wait_for(Duration::from_secs(30), "coordinator answers", || {
        status(&nats)
    });
    let rt = rt();
    let bus = rt.block_on(bus(&nats));
    let node_b = skos_core::NodeName::parse("b").unwrap();
    let mut b_commands = rt.block_on(bus.subscribe(Feed::Commands(node_b))).unwrap();
    publish(&rt, &bus, "skos.alert.b", &warm_alert("b", "b-warm-1"));
    let cmd = next_command(&rt, &mut b_commands);
    let id = cmd["action_id"].as_str().unwrap().to_string();
    assert_eq!(cmd["action_type"], "throttle_10");
    assert_eq!(cmd["node"], "b");

    // More failures than open a breaker (5), then a success and a replay
    // refusal, all from a, on a's subject, naming b's action.
    let mut forged: Vec<Value> = (0..6)
        .map(|_| result_json("a", &id, "throttle_10", "failed"))
        .collect();
    forged.push(result_json("a", &id, "throttle_10", "succeeded"));
    forged.push(result_json("a", &id, "throttle_10", "expired"));
    for r in &forged {
        publish(&rt, &bus, "skos.result.a", r);
    }
    let s = wait_for(Duration::from_secs(30), "forgeries counted", || {
        status(&nats).filter(|s| counter(s, "results.foreign") >= forged.len() as u64)
    });
    assert_eq!(
        recent(&s, &id).unwrap()["state"],
        "sent",
        "still pending: {s}"
    );
    assert!(
        s["open_circuits"].as_array().unwrap().is_empty(),
        "b's breaker stays closed: {s}"
    );
    assert_eq!(counter(&s, "breaker.failures"), 0, "{s}");
    assert_eq!(counter(&s, "results.failed"), 0, "{s}");
    let records = audit(&nats);
    let rejected: Vec<Value> = audit_events(&records, "rejected")
        .into_iter()
        .filter(|r| r["entry"]["data"]["action_id"] == id.as_str())
        .collect();
    assert_eq!(rejected.len(), forged.len());
    for r in &rejected {
        assert_eq!(r["entry"]["data"]["reason"], "foreign_node", "{r}");
        assert_eq!(r["entry"]["data"]["sent_to"], "b", "{r}");
        assert_eq!(r["entry"]["node"], "a", "{r}");
    }
    assert!(
        !audit_events(&records, "result")
            .iter()
            .any(|r| r["entry"]["data"]["result"]["action_id"] == id.as_str()),
        "no forgery is taken for a result"
    );
    // Still in progress: the same problem again sends nothing new.
    publish(&rt, &bus, "skos.alert.b", &warm_alert("b", "b-warm-2"));
    wait_for(Duration::from_secs(30), "second alert skipped", || {
        let r = audit(&nats);
        audit_events(&r, "skipped")
            .iter()
            .any(|e| e["entry"]["data"]["reason"] == "in_progress")
            .then_some(())
    });

    // b's own result closes it.
    publish(
        &rt,
        &bus,
        "skos.result.b",
        &result_json("b", &id, "throttle_10", "succeeded"),
    );
    let s = wait_for(Duration::from_secs(30), "b's result taken", || {
        status(&nats).filter(|s| recent(s, &id).is_some_and(|a| a["state"] == "succeeded"))
    });
    assert!(s["open_circuits"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(counter(&s, "results.succeeded"), 1, "{s}");
}

/// Commands whose result never comes: one the test's own "agent" never
/// answers is closed `no_result` after its deadline plus the grace period;
/// a `reset_throttle` a stopped agent never answers is sent again, and once
/// the agent runs again it answers and the throttle is lifted.
#[test]
fn lost_results_are_closed_and_a_lost_reset_is_sent_again() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[55.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let cfg = config(
        work.path(),
        "  heartbeat_timeout: 5\n  verify_within: 600\n  command_deadline: 3\n  result_grace_seconds: 1\n",
        &trust_section(work.path()),
    );
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut agent_proc = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(30), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });
    let rt = rt();
    let bus = rt.block_on(bus(&nats));

    // Node c is played by the test, which never answers.
    let node_c = skos_core::NodeName::parse("c").unwrap();
    let mut c_commands = rt.block_on(bus.subscribe(Feed::Commands(node_c))).unwrap();
    publish(&rt, &bus, "skos.alert.c", &warm_alert("c", "c-warm-1"));
    let lost = next_command(&rt, &mut c_commands);
    let lost_id = lost["action_id"].as_str().unwrap().to_string();
    let records = wait_for(Duration::from_secs(30), "no_result audited", || {
        let r = audit(&nats);
        audit_events(&r, "no_result")
            .iter()
            .any(|e| e["entry"]["data"]["action_id"] == lost_id.as_str())
            .then_some(r)
    });
    let closed = audit_events(&records, "no_result")
        .into_iter()
        .find(|e| e["entry"]["data"]["action_id"] == lost_id.as_str())
        .unwrap();
    let sent = chrono::DateTime::parse_from_rfc3339(lost["timestamp"].as_str().unwrap()).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(closed["entry"]["timestamp"].as_str().unwrap())
        .unwrap();
    assert!(
        (at - sent).num_milliseconds() > 4_000,
        "closed {} ms after it was sent; deadline 3 s + grace 1 s",
        (at - sent).num_milliseconds()
    );
    let s = status(&nats).unwrap();
    assert_eq!(recent(&s, &lost_id).unwrap()["state"], "no_result", "{s}");
    assert!(counter(&s, "results.no_result") >= 1, "{s}");
    assert!(counter(&s, "breaker.failures") >= 1, "{s}");
    // No longer in progress: the next alert acts.
    publish(&rt, &bus, "skos.alert.c", &warm_alert("c", "c-warm-2"));
    let again = next_command(&rt, &mut c_commands);
    assert_eq!(again["action_type"], "throttle_10");
    assert_ne!(again["action_id"], lost["action_id"]);

    // nova gets hot and is throttled by its real agent.
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        (0..2)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    wait_for(Duration::from_secs(30), "nova reports the throttle", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["throttle_level"] == 50))
    });
    // The agent stops (it will not see the reset in time); the test
    // speaks for nova meanwhile: cool, still throttled.
    signal(&agent_proc, "STOP");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beats = {
        let stop = stop.clone();
        let bus = bus.clone();
        std::thread::spawn(move || {
            let rt = self::rt();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let hb = json!({
                    "agent_id": "test-as-nova",
                    "agent_type": "thermal_sentinel",
                    "node": "nova",
                    "timestamp": now(),
                    "cpu_temp": 60.0,
                    "gpu_temp": null,
                    "interval_seconds": 0.5,
                    "throttle_level": 50,
                });
                publish(&rt, &bus, "skos.heartbeat.nova", &hb);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let resets = |r: &[Value]| -> Vec<String> {
        audit_events(r, "command")
            .iter()
            .filter(|c| c["entry"]["data"]["command"]["action_type"] == "reset_throttle")
            .map(|c| {
                c["entry"]["data"]["command"]["action_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let records = wait_for(
        Duration::from_secs(60),
        "the first reset lost and sent again",
        || {
            let r = audit(&nats);
            (resets(&r).len() >= 2).then_some(r)
        },
    );
    // The agent runs again, on its real (cool) readings.
    cpu.heat(60.0);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    beats.join().unwrap();
    signal(&agent_proc, "CONT");
    let ids = resets(&records);
    let first = &ids[0];
    assert!(first.starts_with("nova:thermal:reset_throttle:"), "{first}");
    assert!(first.ends_with(":1"), "{first}");
    let origin = first.trim_end_matches(":1");
    assert_eq!(ids[1], format!("{origin}:2"), "the same cool period, try 2");
    assert!(audit_events(&records, "no_result")
        .iter()
        .any(|e| e["entry"]["data"]["action_id"] == first.as_str()));

    wait_for(
        Duration::from_secs(60),
        "scaling_max_freq back at max",
        || (0..2).all(|p| read_khz(sys.root(), p) == MAX).then_some(()),
    );
    let records = wait_for(
        Duration::from_secs(30),
        "a reset_throttle result succeeded",
        || {
            let r = audit(&nats);
            audit_events(&r, "result")
                .iter()
                .any(|e| result_is(e, "reset_throttle", "succeeded"))
                .then_some(r)
        },
    );
    let confirmed = audit_events(&records, "result")
        .into_iter()
        .find(|e| result_is(e, "reset_throttle", "succeeded"))
        .unwrap();
    let confirmed_id = confirmed["entry"]["data"]["result"]["action_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        confirmed_id.starts_with(origin) && !confirmed_id.ends_with(":1"),
        "a later try of the same reset ({confirmed_id}) lifted it"
    );
    wait_for(Duration::from_secs(30), "nova unthrottled", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["throttle_level"] == 0))
    });
    assert!(agent_proc.alive(), "agent crashed");
}

fn signal(p: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(p.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", p.child.id());
}

/// An agent under libfaketime, its clock `shift` off (`+1h`, `-1h`).
fn skewed_agent(
    nats: &NatsServer,
    cfg: &Path,
    work: &Path,
    sys: &Path,
    node: &str,
    lib: &Path,
    shift: &str,
) -> Proc {
    let mut c = skos();
    c.arg("agent")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(work.join(format!("agent-{node}")))
        .env("NATS_URL", nats.url())
        .env("NODE_NAME", node)
        .env("SKOS_SYSFS_ROOT", sys)
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", shift)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    Proc::spawn(c, work, &format!("agent-{node}"))
}

/// Two real agents, one an hour fast and one an hour slow: each raises
/// `clock_skew`, `skos status` shows its offset, and the commands sent to
/// them run (not `expired`): their deadlines are in the agents' clocks.
#[test]
fn agents_an_hour_off_run_their_commands_and_raise_clock_skew() {
    let lib = require!("libfaketime", skos_testsupport::require::faketime());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(
        work.path(),
        "  heartbeat_timeout: 5\n  verify_within: 600\n  command_deadline: 30\n",
        &trust_section(work.path()),
    );
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut nodes = Vec::new();
    for (name, shift) in [("fast", "+1h"), ("slow", "-1h")] {
        let sys = FakeSysfs::new();
        let cpu = sys.coretemp(50.0, &[]);
        fake_cpufreq(sys.root(), 2, MIN, MAX);
        let p = skewed_agent(&nats, &cfg, work.path(), sys.root(), name, &lib, shift);
        nodes.push((name, shift, sys, cpu, p));
    }
    let s = wait_for(Duration::from_secs(60), "both clocks skewed", || {
        status(&nats).filter(|s| {
            ["fast", "slow"]
                .iter()
                .all(|n| node(s, n).is_some_and(|n| n["clock_skewed"] == true))
        })
    });
    for (name, sign) in [("fast", 1.0), ("slow", -1.0)] {
        let offset = node(&s, name).unwrap()["clock_offset_seconds"]
            .as_f64()
            .unwrap();
        assert!(
            (offset - sign * 3600.0).abs() < 60.0,
            "{name}: offset {offset}: {s}"
        );
    }
    let records = wait_for(Duration::from_secs(30), "clock_skew alerts", || {
        let r = audit(&nats);
        let skew: Vec<Value> = audit_events(&r, "alert")
            .into_iter()
            .filter(|a| a["entry"]["data"]["alert"]["type"] == "clock_skew")
            .collect();
        (skew.len() >= 2).then_some(skew)
    });
    for (name, sign) in [("fast", 1.0), ("slow", -1.0)] {
        let raised: Vec<&Value> = records
            .iter()
            .filter(|a| a["entry"]["node"] == name)
            .collect();
        assert_eq!(raised.len(), 1, "{name} raised once: {raised:?}");
        let alert = &raised[0]["entry"]["data"]["alert"];
        assert_eq!(alert["severity"], "warning");
        let offset = alert["details"]["offset_seconds"].as_f64().unwrap();
        assert!((offset - sign * 3600.0).abs() < 60.0, "{alert}");
    }

    for (_, _, _, cpu, _) in &nodes {
        cpu.heat(87.0);
    }
    for (name, _, sys, _, _) in &nodes {
        wait_for(
            Duration::from_secs(60),
            &format!("{name}: scaling_max_freq at 50 %"),
            || {
                (0..2)
                    .all(|p| read_khz(sys.root(), p) == MAX / 2)
                    .then_some(())
            },
        );
    }
    let records = wait_for(Duration::from_secs(30), "both results audited", || {
        let r = audit(&nats);
        ["fast", "slow"]
            .iter()
            .all(|n| {
                audit_events(&r, "result").iter().any(|e| {
                    e["entry"]["data"]["result"]["node"] == *n
                        && e["entry"]["data"]["result"]["action_type"] == "throttle_50"
                })
            })
            .then_some(r)
    });
    for (name, sign) in [("fast", 1.0), ("slow", -1.0)] {
        let results: Vec<Value> = audit_events(&records, "result")
            .into_iter()
            .filter(|e| e["entry"]["data"]["result"]["node"] == name)
            .collect();
        assert!(
            results
                .iter()
                .all(|e| e["entry"]["data"]["result"]["status"] == "succeeded"),
            "{name}: {results:?}"
        );
        // The command's deadline is in the agent's clock.
        let cmd = audit_events(&records, "command")
            .into_iter()
            .find(|c| {
                c["entry"]["data"]["command"]["node"] == name
                    && c["entry"]["data"]["command"]["action_type"] == "throttle_50"
            })
            .unwrap();
        let sent =
            chrono::DateTime::parse_from_rfc3339(cmd["entry"]["timestamp"].as_str().unwrap())
                .unwrap();
        let deadline = chrono::DateTime::parse_from_rfc3339(
            cmd["entry"]["data"]["command"]["deadline"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let ahead = (deadline - sent).num_seconds() as f64;
        assert!(
            (ahead - (sign * 3600.0 + 30.0)).abs() < 60.0,
            "{name}: deadline {ahead} s from the coordinator's now"
        );
    }
    for (name, _, _, _, p) in &mut nodes {
        assert!(p.alive(), "{name}'s agent crashed");
    }
}
