//! A flapping CPU end to end, against a real nats-server started by the
//! test, with `skos coordinator` and `skos agent` as separate processes:
//! the package (and every core just below it) goes hot for 1.5 s and cool
//! for 1.5 s, four times. The agent alerts at every swing; the coordinator
//! throttles once, credits nothing (the flap's own cooling never lasts the
//! hold), reports the flap once, acts on none of the later swings, and once
//! the CPU has settled cool reports it stable once and lifts the throttle.
//!
//! Every assertion is read off the audit trail, one linear chain written in
//! the order the coordinator decided.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

/// Fast heartbeats and sensing, a hold (3 s) longer than a swing (1.5 s),
/// a short flap window, no reminders, and a throttle lifted 3 s after the
/// CPU settled cool.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [thermal_sentinel]\n\
coordinator:\n  heartbeat_timeout: 30\n  verify_within: 60\n  verify_hold_seconds: 3\n  command_deadline: 30\n  \
flap_window_seconds: 20\n  flap_start_changes: 6\n  flap_stop_changes: 2\n\
thermal:\n  clear_for: 3\n  cooldown: 3600\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{}",
        trust_section(dir),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn event(r: &Value) -> &Value {
    &r["entry"]["event_type"]
}

fn data(r: &Value) -> &Value {
    &r["entry"]["data"]
}

/// The `flapping` records' states, in order.
fn flap_states(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| event(r) == "flapping")
        .map(|r| data(r)["state"].as_str().unwrap_or("").to_string())
        .collect()
}

fn commands_of(records: &[Value], action: &str) -> usize {
    records
        .iter()
        .filter(|r| event(r) == "command" && data(r)["command"]["action_type"] == action)
        .count()
}

#[test]
fn a_flapping_cpu_is_throttled_once_reported_once_and_never_credited() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0, 57.0, 56.0, 55.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let cfg = config(work.path());
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(60), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });

    // Hot (88 °C, critical) 1.5 s, cool (66 °C, below warning - hysteresis)
    // 1.5 s, four times; then cool. The first hot spell lasts until the
    // throttle is in force: a command that arrived after the CPU cooled
    // would be answered `not_needed` (checked before acting), and this
    // test is about what follows a fix that was made.
    for swing in 0..4 {
        cpu.heat(88.0);
        std::thread::sleep(Duration::from_millis(1500));
        if swing == 0 {
            wait_for(Duration::from_secs(30), "the throttle in force", || {
                (0..2).all(|p| read_khz(sys.root(), p) < MAX).then_some(())
            });
        }
        cpu.heat(66.0);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let records = wait_for(
        Duration::from_secs(90),
        "flapping reported stable again and the throttle lifted, its result audited",
        || {
            let r = audit(&nats);
            let lifted = (0..2).all(|p| read_khz(sys.root(), p) == MAX);
            // The agent restores the files as soon as the command reaches
            // it, which can be before the coordinator has appended the
            // command's record (published, then audited): the trail is
            // read once the reset's result is in it, which comes after.
            let audited = r
                .iter()
                .any(|r| result_is(r, "reset_throttle", "succeeded"));
            (flap_states(&r).len() >= 2 && lifted && audited).then_some(r)
        },
    );
    let swings = records
        .iter()
        .filter(|r| {
            event(r) == "alert"
                && data(r)["alert"]["agent_id"] == "thermal-sentinel-nova"
                && data(r)["alert"]["type"] == "thermal"
        })
        .count();
    assert!(swings >= 6, "the agent alerted at every swing: {swings}");
    assert_eq!(flap_states(&records), ["started", "stopped"]);
    let started = records
        .iter()
        .find(|r| event(r) == "flapping")
        .map(data)
        .unwrap();
    assert_eq!(started["problem"], "thermal:cpu");
    assert_eq!(started["changes"], 6);
    assert_eq!(
        commands_of(&records, "throttle_50"),
        1,
        "one action at most"
    );
    assert_eq!(
        commands_of(&records, "reset_throttle"),
        1,
        "lifted once settled"
    );
    let outcomes: Vec<(&Value, &Value)> = records
        .iter()
        .filter(|r| event(r) == "verification")
        .map(|r| (&data(r)["outcome"], &data(r)["reason"]))
        .collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].0, "uncredited");
    assert_eq!(outcomes[0].1, "flapping");
    let s = status(&nats).unwrap();
    let counters = &s["counters"];
    assert_eq!(counters["flapping.started"], 1, "{counters}");
    assert_eq!(counters["flapping.stopped"], 1, "{counters}");
    assert!(
        counters["verifications.succeeded"].is_null() || counters["verifications.succeeded"] == 0,
        "{counters}"
    );
}
