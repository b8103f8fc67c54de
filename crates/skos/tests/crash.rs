//! Crash safety of the coordinator: a real `skos coordinator` aborted at
//! each of its kill points (`SKOS_FAILPOINT`, as abrupt as a SIGKILL)
//! while it handles an alert, a result or a tick, then started again
//! without it, on a real nats-server with a real agent on a fake sysfs.
//!
//! Afterwards nothing is lost and nothing is done twice: every alert in the
//! alert stream is audited exactly once, every command in the command
//! stream is audited exactly once and answered by exactly one result, every
//! result in the result stream is audited exactly once, the breakers and
//! the pending commands are what the scenario makes them, and the trail's
//! chain verifies. Each scenario is its own test (they run in parallel);
//! most of one's time is JetStream's ack wait before the message the
//! aborted coordinator held is delivered again.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_bus::{subjects, NatsBus, NatsOptions};
use skos_core::protocol::{Alert, CommandResult};
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;
const NODE: &str = "n1";

/// How the scenario's node and coordinator are set up.
#[derive(Clone, Copy)]
enum Setup {
    /// Throttles work; a fix is verified within 600 s (never, here: the
    /// node stays hot and nothing times out during the test).
    Throttles,
    /// Throttles fail (a configured cgroup that does not exist) and one
    /// failure opens a circuit.
    ThrottlesFail,
    /// Throttles work but never cool the node, and a fix must show within
    /// 2 s: each throttle's verification fails on a tick and escalates.
    VerifyFails,
}

fn config(work: &Path, setup: Setup) -> PathBuf {
    let (verify_within, thermal, extra) = match setup {
        Setup::Throttles => (600.0, "", ""),
        Setup::ThrottlesFail => (
            600.0,
            "  throttle:\n    cgroups: [missing.slice]\n",
            "circuit_breaker:\n  max_failures: 1\n",
        ),
        Setup::VerifyFails => (2.0, "", ""),
    };
    let path = work.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 10\n  verify_within: {verify_within}\n  command_deadline: 30\n  leader_lease_seconds: 1\n\
thermal:\n  clear_for: 1\n  cooldown: 60\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{thermal}{extra}{}",
        trust_section(work)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `skos coordinator`, aborting at `failpoint` when one is given.
fn coordinator_armed(
    nats: &NatsServer,
    cfg: &Path,
    work: &Path,
    name: &str,
    failpoint: Option<&str>,
) -> Proc {
    let mut c = skos();
    c.arg("coordinator")
        .arg("--config")
        .arg(cfg)
        .env("NATS_URL", nats.url());
    match failpoint {
        Some(p) => c.env("SKOS_FAILPOINT", p),
        None => c.env_remove("SKOS_FAILPOINT"),
    };
    Proc::spawn(c, work, name)
}

/// One scenario's world after the crash and the restart (dropped in
/// this order: the processes before the dir that holds their logs).
struct Crashed {
    _coordinator: Proc,
    _agent: Proc,
    nats: NatsServer,
    sys: FakeSysfs,
    _cpu: HwmonHandle,
    _work: tempfile::TempDir,
}

/// Start a nats-server, a coordinator armed with `failpoint` and n1's
/// agent; heat n1 to 87 °C (one critical alert: `throttle_50`) and wait
/// for the coordinator to abort at the point; start a coordinator again
/// without it.
fn crash_at(failpoint: &str, setup: Setup) -> Crashed {
    let panics = failpoint.starts_with("panic@");
    let point = failpoint
        .trim_start_matches("panic@")
        .split(':')
        .next()
        .unwrap();
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), setup);
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut armed = coordinator_armed(
        &nats,
        &cfg,
        work.path(),
        "coordinator-armed",
        Some(failpoint),
    );
    let agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    cpu.heat(87.0);
    let exit = wait_for(
        Duration::from_secs(30),
        &format!("the coordinator to abort at {failpoint}"),
        || armed.child.try_wait().unwrap(),
    );
    let log = armed.log_text();
    if panics {
        // A panic in the coordinator's task ends the process, with a
        // failure its supervisor restarts it on.
        assert_eq!(exit.code(), Some(101), "ended otherwise ({exit}):\n{log}");
        assert!(
            log.contains(&format!("SKOS_FAILPOINT: panicking at {point} "))
                && log.contains("a task panicked"),
            "panicked elsewhere:\n{log}"
        );
    } else {
        assert_eq!(
            exit.signal(),
            Some(libc::SIGABRT),
            "the coordinator ended otherwise ({exit}):\n{log}"
        );
        assert!(
            log.contains(&format!("SKOS_FAILPOINT: aborting at {point} ")),
            "aborted elsewhere:\n{log}"
        );
    }
    let coordinator = coordinator_armed(&nats, &cfg, work.path(), "coordinator", None);
    Crashed {
        nats,
        sys,
        _cpu: cpu,
        _work: work,
        _agent: agent,
        _coordinator: coordinator,
    }
}

// --- Reading the streams and the trail.

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn connect(nats: &NatsServer) -> NatsBus {
    NatsBus::connect(&NatsOptions::new(nats.url(), "crash-test"))
        .await
        .unwrap()
}

/// Every message in a stream, decoded as JSON, in order.
fn stream_messages(nats: &NatsServer, stream: &str) -> Vec<Value> {
    rt().block_on(async {
        let bus = connect(nats).await;
        let mut s = bus.jetstream().get_stream(stream).await.unwrap();
        let state = s.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
        out
    })
}

/// Whether the coordinator has acknowledged everything in the alert and
/// result streams (what an aborted coordinator held was delivered again
/// and handled).
fn drained(nats: &NatsServer) -> bool {
    rt().block_on(async {
        let bus = connect(nats).await;
        for stream in [subjects::STREAM_ALERTS, subjects::STREAM_RESULTS] {
            let s = bus.jetstream().get_stream(stream).await.unwrap();
            match s.consumer_info(subjects::CONSUMER_COORDINATOR).await {
                Ok(info) if info.num_ack_pending == 0 && info.num_pending == 0 => {}
                _ => return false,
            }
        }
        true
    })
}

fn alert_id(a: &Value) -> String {
    let mut alert: Alert = serde_json::from_value(a.clone()).unwrap();
    alert.ensure_id();
    alert.alert_id
}

/// How many times each key occurs.
fn tally(keys: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for k in keys {
        *out.entry(k).or_default() += 1;
    }
    out
}

fn audited_alert_ids(records: &[Value]) -> BTreeMap<String, usize> {
    tally(
        audit_events(records, "alert")
            .iter()
            .map(|r| r["entry"]["data"]["alert_id"].as_str().unwrap().to_string()),
    )
}

/// Whether every alert in the alert stream is in the trail.
fn every_alert_audited(nats: &NatsServer, records: &[Value]) -> bool {
    let audited = audited_alert_ids(records);
    stream_messages(nats, subjects::STREAM_ALERTS)
        .iter()
        .all(|a| audited.contains_key(&alert_id(a)))
}

fn command_of(r: &Value) -> &Value {
    &r["entry"]["data"]["command"]
}

fn result_of(r: &Value) -> &Value {
    &r["entry"]["data"]["result"]
}

/// The trail's results for commands of `action_type`, by status.
fn results(records: &[Value], action_type: &str) -> Vec<String> {
    audit_events(records, "result")
        .iter()
        .map(result_of)
        .filter(|r| r["action_type"] == action_type)
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

/// What must hold after any crash: the chain verifies; every alert in the
/// stream is audited exactly once and every audited alert is in the
/// stream; every command in the stream is audited exactly once (and every
/// audited command was published) and answered by exactly one result in
/// the result stream, executed once; every result in the stream is
/// audited exactly once. Returns the trail.
fn check_trail(nats: &NatsServer) -> Vec<Value> {
    assert_trail_verifies(nats);
    let records = audit(nats);
    // A crash and a restart never look like state written back on the bus.
    assert_eq!(
        audit_events(&records, "state_rollback"),
        Vec::<Value>::new(),
        "a restart after a crash reported a rollback"
    );

    let alerts = tally(
        stream_messages(nats, subjects::STREAM_ALERTS)
            .iter()
            .map(alert_id),
    );
    let audited = audited_alert_ids(&records);
    for (id, n) in &alerts {
        assert_eq!(n, &1, "alert {id} stored {n} times in the stream");
        let times = audited.get(id).copied().unwrap_or(0);
        assert_eq!(times, 1, "alert {id} audited {times} times");
    }
    for id in audited.keys() {
        assert!(
            alerts.contains_key(id),
            "audited alert {id} is not in the stream"
        );
    }

    let commands = tally(
        stream_messages(nats, subjects::STREAM_COMMANDS)
            .iter()
            .map(|c| c["action_id"].as_str().unwrap().to_string()),
    );
    let audited = tally(
        audit_events(&records, "command")
            .iter()
            .map(|c| command_of(c)["action_id"].as_str().unwrap().to_string()),
    );
    for (id, n) in &commands {
        assert_eq!(n, &1, "command {id} stored {n} times in the stream");
        let times = audited.get(id).copied().unwrap_or(0);
        assert_eq!(times, 1, "command {id} audited {times} times");
    }
    for id in audited.keys() {
        assert!(
            commands.contains_key(id),
            "audited command {id} never published"
        );
    }

    let stream_results: Vec<CommandResult> = stream_messages(nats, subjects::STREAM_RESULTS)
        .into_iter()
        .map(|r| serde_json::from_value(r).unwrap())
        .collect();
    let per_command = tally(stream_results.iter().map(|r| r.action_id.clone()));
    for id in commands.keys() {
        let n = per_command.get(id).copied().unwrap_or(0);
        assert_eq!(
            n, 1,
            "command {id} answered {n} times (executed once, answered once)"
        );
    }
    for id in per_command.keys() {
        assert!(commands.contains_key(id), "result for unknown command {id}");
    }
    let audited = tally(audit_events(&records, "result").iter().map(|r| {
        let r: CommandResult = serde_json::from_value(result_of(r).clone()).unwrap();
        skos_bus::result_message_id(&r)
    }));
    for r in &stream_results {
        let id = skos_bus::result_message_id(r);
        let times = audited.get(&id).copied().unwrap_or(0);
        assert_eq!(times, 1, "result {id} audited {times} times");
    }
    assert_eq!(
        audited.values().sum::<usize>(),
        stream_results.len(),
        "results audited that are not in the stream: {audited:?}"
    );
    records
}

fn caps_at(sys: &FakeSysfs, khz: u64) -> bool {
    (0..2).all(|p| read_khz(sys.root(), p) == khz)
}

/// The commands in the trail, as their action types, in order.
fn command_types(records: &[Value]) -> Vec<String> {
    audit_events(records, "command")
        .iter()
        .map(|c| command_of(c)["action_type"].as_str().unwrap().to_string())
        .collect()
}

/// The recent actions `skos status` shows: (action type, state).
fn recent_actions(s: &Value) -> Vec<(String, String)> {
    s["recent_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action_type"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The alerts the agent sent (not the coordinator).
fn agent_alerts(records: &[Value]) -> Vec<Value> {
    audit_events(records, "alert")
        .iter()
        .map(|r| r["entry"]["data"]["alert"].clone())
        .filter(|a| a["agent_id"] != "coordinator")
        .collect()
}

// --- Alert kill points: the throttle works.

/// Killed while handling n1's critical alert: afterwards one
/// `throttle_50`, audited once, executed once, its result matched;
/// nothing pending, no circuit open.
fn alert_crash(failpoint: &str) {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let c = crash_at(failpoint, Setup::Throttles);
    let nats = &c.nats;
    wait_for(Duration::from_secs(40), "throttle_50 answered", || {
        let r = audit(nats);
        (results(&r, "throttle_50") == ["succeeded"]
            && every_alert_audited(nats, &r)
            && drained(nats))
        .then_some(())
    });
    assert!(caps_at(&c.sys, MAX / 2), "n1 capped at 50 %");
    let records = check_trail(nats);
    let from_agent = agent_alerts(&records);
    assert_eq!(from_agent.len(), 1, "one alert from n1: {from_agent:?}");
    assert_eq!(from_agent[0]["severity"], "critical");
    assert_eq!(command_types(&records), ["throttle_50"]);
    let s = status(nats).unwrap();
    assert_eq!(
        recent_actions(&s),
        [("throttle_50".to_string(), "succeeded".to_string())],
        "{s}"
    );
    assert_eq!(s["open_circuits"], serde_json::json!([]), "{s}");
}

#[test]
fn a_panic_in_the_coordinators_task_ends_the_process_and_a_restart_carries_on() {
    alert_crash("panic@alert.persisted");
}

#[test]
fn killed_after_an_alert_was_decided() {
    alert_crash("alert.decided");
}

#[test]
fn killed_after_an_alerts_state_was_written() {
    alert_crash("alert.persisted");
}

#[test]
fn killed_after_an_alerts_command_was_published() {
    alert_crash("alert.published");
}

#[test]
fn killed_after_an_alert_was_audited() {
    alert_crash("alert.audited");
}

/// SIGKILLed once the `carried` marker covers the alert's effects: the
/// restarted coordinator carries nothing out again (the node's saved state
/// still lists them; the marker covers them), and the trail is as before.
#[test]
fn killed_after_the_carried_marker_covers_the_effects() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), Setup::Throttles);
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut first = coordinator_armed(&nats, &cfg, work.path(), "coordinator-first", None);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    cpu.heat(87.0);
    wait_for(Duration::from_secs(40), "throttle_50 answered", || {
        let r = audit(&nats);
        (results(&r, "throttle_50") == ["succeeded"] && drained(&nats)).then_some(())
    });
    // The node's record keeps the effects under a stamp; wait for the
    // marker to reach it.
    let last = |subject: String| {
        rt().block_on(async {
            let bus = connect(&nats).await;
            let s = bus
                .jetstream()
                .get_stream(subjects::STREAM_STATE)
                .await
                .unwrap();
            // Past the seal line: the coordinator seals its state.
            s.get_last_raw_message_by_subject(&subject)
                .await
                .ok()
                .and_then(|m| state_json(&m.payload))
        })
    };
    wait_for(
        Duration::from_secs(20),
        "the marker to cover n1's record",
        || {
            let carried = last(subjects::state("carried"))?;
            let kept = last(subjects::state(&format!("node_{NODE}")))?;
            let at = |v: &Value| (v[0].as_u64(), v[1].as_u64());
            // A record written since without effects needs no marker.
            (!kept["effects"].is_array() || at(&carried) >= at(&kept["batch"])).then_some(())
        },
    );
    first.sigkill();
    let second = coordinator_armed(&nats, &cfg, work.path(), "coordinator-second", None);
    wait_for(
        Duration::from_secs(30),
        "the second coordinator to lead",
        || {
            second
                .log_text()
                .contains("coordinator started")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let log = second.log_text();
    assert!(log.contains("kept_effects=0"), "{log}");
    assert!(
        !log.contains("carrying out effects decided but not carried out"),
        "effects covered by the marker were carried out again:\n{log}"
    );
    let records = check_trail(&nats);
    assert_eq!(command_types(&records), ["throttle_50"]);
    assert!(caps_at(&sys, MAX / 2), "n1 capped at 50 %");
}

// --- Result kill points: the throttle fails and one failure opens the
// circuit.

/// Killed while handling the failed result of n1's `throttle_50`:
/// afterwards the result is audited once, the circuit for it is open (one
/// `breaker` record, one `circuit` alert), nothing pending.
fn result_crash(failpoint: &str) {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let c = crash_at(failpoint, Setup::ThrottlesFail);
    let nats = &c.nats;
    let circuit_alerted = |r: &[Value]| {
        audit_events(r, "alert")
            .iter()
            .any(|a| a["entry"]["data"]["alert"]["type"] == "circuit")
    };
    wait_for(
        Duration::from_secs(40),
        "the failure, its open circuit and circuit alert",
        || {
            let r = audit(nats);
            (results(&r, "throttle_50") == ["failed"]
                && circuit_alerted(&r)
                && every_alert_audited(nats, &r)
                && drained(nats))
            .then_some(())
        },
    );
    assert!(caps_at(&c.sys, MAX), "nothing throttled");
    let records = check_trail(nats);
    assert_eq!(command_types(&records), ["throttle_50"]);
    let breakers: Vec<Value> = audit_events(&records, "breaker")
        .iter()
        .map(|b| b["entry"]["data"].clone())
        .collect();
    assert_eq!(breakers.len(), 1, "one breaker record: {breakers:?}");
    assert_eq!(breakers[0]["state"], "open");
    assert_eq!(breakers[0]["key"]["node"], NODE);
    assert_eq!(breakers[0]["key"]["action"], "throttle_50");
    let kinds: Vec<String> = audit_events(&records, "alert")
        .iter()
        .map(|a| {
            let a = &a["entry"]["data"]["alert"];
            format!(
                "{}/{}",
                a["type"].as_str().unwrap(),
                a["severity"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(kinds, ["thermal/critical", "circuit/warning"]);
    let s = status(nats).unwrap();
    let open = s["open_circuits"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{s}");
    assert_eq!(open[0]["node"], NODE, "{s}");
    assert_eq!(open[0]["action"], "throttle_50", "{s}");
    assert_eq!(open[0]["state"], "open", "{s}");
    assert_eq!(
        recent_actions(&s),
        [("throttle_50".to_string(), "failed".to_string())],
        "{s}"
    );
}

#[test]
fn killed_after_a_result_was_decided() {
    result_crash("result.decided");
}

#[test]
fn killed_after_a_results_state_was_written() {
    result_crash("result.persisted");
}

#[test]
fn killed_after_a_results_alert_was_published() {
    result_crash("result.published");
}

#[test]
fn killed_after_a_result_was_audited() {
    result_crash("result.audited");
}

// --- The tick kill point: a verification fails on a tick.

/// Killed after a tick wrote the failed verification of `throttle_50`
/// (n1 still at 87 °C, not below the critical 85 °C) and before it audited
/// it and raised the escalation: afterwards the failure is audited once
/// and the escalation happens once (an emergency alert: `throttle_100`,
/// which fails too: it must bring the CPU below the critical 85 °C the
/// failed fix was judged against, not only below the emergency 95 °C no
/// reading showed; then a human must decide, once).
#[test]
fn killed_after_a_ticks_state_was_written() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let c = crash_at("tick.persisted", Setup::VerifyFails);
    let nats = &c.nats;
    let outcomes = |r: &[Value]| -> Vec<(String, String)> {
        audit_events(r, "verification")
            .iter()
            .map(|v| {
                let d = &v["entry"]["data"];
                (
                    d["action_id"].as_str().unwrap().to_string(),
                    d["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    wait_for(
        Duration::from_secs(40),
        "throttle_50 not verified, escalated, throttle_100 not verified",
        || {
            let r = audit(nats);
            (outcomes(&r).len() >= 2 && every_alert_audited(nats, &r) && drained(nats))
                .then_some(())
        },
    );
    let records = check_trail(nats);
    assert_eq!(command_types(&records), ["throttle_50", "throttle_100"]);
    let commanded: Vec<String> = audit_events(&records, "command")
        .iter()
        .map(|c| command_of(c)["action_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        outcomes(&records),
        [
            (commanded[0].clone(), "failed".to_string()),
            (commanded[1].clone(), "failed".to_string())
        ],
        "each throttle verified once"
    );
    let severities: Vec<String> = audit_events(&records, "alert")
        .iter()
        .map(|a| {
            a["entry"]["data"]["alert"]["severity"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(severities, ["critical", "emergency"]);
    assert_eq!(
        audit_events(&records, "escalation").len(),
        1,
        "nothing left past emergency: a human must decide, once"
    );
    assert!(caps_at(&c.sys, MIN), "n1 capped at its lowest frequency");
    let s = status(nats).unwrap();
    assert_eq!(s["open_circuits"], serde_json::json!([]), "{s}");
    assert_eq!(
        recent_actions(&s),
        [
            ("throttle_50".to_string(), "not_verified".to_string()),
            ("throttle_100".to_string(), "not_verified".to_string())
        ],
        "{s}"
    );
}

// --- Forged state: on a server without permissions any client can write
// `SKOS_STATE`; a coordinator with a signing key restores only records it
// (or another trusted coordinator) sealed.

/// A state record as any client reads it: past the seal line, if there is
/// one, then JSON, zstd-compressed when large.
fn state_json(stored: &[u8]) -> Option<Value> {
    let payload = skos_bus::trust::sealed_payload(stored);
    if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let plain = zstd::bulk::decompress(payload, 1 << 24).ok()?;
        return serde_json::from_slice(&plain).ok();
    }
    serde_json::from_slice(payload).ok()
}

/// Write `SKOS_STATE.carried` as any client of an open server can.
fn forge_marker(nats: &NatsServer, value: &str) {
    rt().block_on(async {
        let bus = connect(nats).await;
        let state = skos_bus::StateStore::jetstream(&bus).await.unwrap();
        state
            .save("carried", bytes::Bytes::from(value.to_string()))
            .await
            .unwrap();
    })
}

/// As a stranger on a server without permissions: read n1's record and
/// write it back with a `throttle_100` kept in it past any marker.
fn forge_node_record(nats: &NatsServer) {
    rt().block_on(async {
        let bus = connect(nats).await;
        let state = skos_bus::StateStore::jetstream(&bus).await.unwrap();
        let key = format!("node_{NODE}");
        // Past the seal line, if there is one: the forger rewrites the
        // record and cannot seal it.
        let mut rec: Value = match state.load(&key).await.unwrap() {
            Some(b) => state_json(&b).expect("n1's record reads as JSON"),
            None => serde_json::json!({}),
        };
        let now = chrono::Utc::now();
        rec["effects"] = serde_json::json!([{
            "effect": "command",
            "node": NODE,
            "command": {
                "action_id": "forged-by-a-stranger",
                "action_type": "throttle_100",
                "timestamp": skos_core::timefmt::format(&now),
                "node": NODE,
                "deadline": skos_core::timefmt::format(&(now + chrono::Duration::seconds(60))),
                "cause": "forged",
                "problem": "thermal:cpu",
                "term": 1000
            }
        }]);
        rec["batch"] = serde_json::json!([999_999, 0]);
        state
            .save(&key, bytes::Bytes::from(serde_json::to_vec(&rec).unwrap()))
            .await
            .unwrap();
    });
}

/// A forged marker `[1, 18446744073709551615]` (term 1, the last count) is
/// not restored, and could not overflow the next stamp anyway: the
/// coordinator keeps running and throttles.
#[test]
fn a_forged_marker_at_the_last_count_is_harmless() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    forge_marker(&nats, "[1,18446744073709551615]");
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), Setup::Throttles);
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut coord = coordinator_armed(&nats, &cfg, work.path(), "coordinator", None);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    cpu.heat(87.0);
    let mut ended = None;
    let mut capped = false;
    for _ in 0..100 {
        if let Some(e) = coord.child.try_wait().unwrap() {
            ended = Some(e);
            break;
        }
        if caps_at(&sys, MAX / 2) {
            capped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = coord.log_text();
    assert!(
        ended.is_none() && capped,
        "the coordinator ended ({ended:?}) or never throttled (capped {capped}) after a forged marker:\n{}",
        log.lines()
            .filter(|l| l.contains("panic") || l.contains("overflow") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Killed after an alert's state (with its effects) was written; before the
/// restart a client forges the marker past every stamp: it is not
/// restored, so the kept effects are still carried out.
#[test]
fn a_forged_marker_after_a_crash_does_not_drop_the_kept_effects() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), Setup::Throttles);
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut armed = coordinator_armed(
        &nats,
        &cfg,
        work.path(),
        "coordinator-armed",
        Some("alert.persisted"),
    );
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "abort at alert.persisted", || {
        armed.child.try_wait().unwrap()
    });
    forge_marker(&nats, "[1000000,0]");
    let coordinator = coordinator_armed(&nats, &cfg, work.path(), "coordinator", None);
    let ok = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        let r = audit(&nats);
        results(&r, "throttle_50") == ["succeeded"]
            && every_alert_audited(&nats, &r)
            && drained(&nats)
    });
    let log = coordinator.log_text();
    assert!(
        ok,
        "after a forged marker the kept effects were dropped: audit {:?}\n{}",
        command_types(&audit(&nats)),
        log.lines()
            .filter(|l| l.contains("restored") || l.contains("carrying"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = check_trail(&nats);
}

/// On a server without permissions, any client may write a node's record in
/// `SKOS_STATE` with an effect kept after the marker: at its next start the
/// coordinator does not restore it (not sealed by a trusted key), so the
/// command is never signed nor executed.
#[test]
fn a_forged_node_record_is_not_restored_after_a_restart() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), Setup::Throttles);
    let sys = FakeSysfs::new();
    let _cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut first = coordinator_armed(&nats, &cfg, work.path(), "coordinator-first", None);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    std::thread::sleep(Duration::from_secs(1));
    forge_node_record(&nats);
    // Any restart (a crash, an upgrade, a supervisor's restart).
    first.sigkill();
    let second = coordinator_armed(&nats, &cfg, work.path(), "coordinator-second", None);
    wait_for(
        Duration::from_secs(30),
        "the second coordinator to lead",
        || {
            second
                .log_text()
                .contains("coordinator started")
                .then_some(())
        },
    );
    let executed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        caps_at(&sys, MIN)
    });
    assert!(
        second
            .log_text()
            .contains("saved state not sealed by a trusted coordinator key"),
        "{}",
        second.log_text()
    );
    assert!(
        !executed,
        "a command written into SKOS_STATE by a stranger was signed and executed on n1 (capped at {} kHz):\n{}",
        read_khz(sys.root(), 0),
        second
            .log_text()
            .lines()
            .filter(|l| l.contains("carrying") || l.contains("restored"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// As above, with the lease overwritten instead of a restart: the same
/// process leads again, reads the state again, and does not restore the
/// forged record.
#[test]
fn a_forged_node_record_and_lease_get_no_command_signed() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), Setup::Throttles);
    let sys = FakeSysfs::new();
    let _cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut first = coordinator_armed(&nats, &cfg, work.path(), "coordinator-first", None);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    std::thread::sleep(Duration::from_secs(1));
    forge_node_record(&nats);
    // No restart: the stranger overwrites the leader's lease; the same
    // process loses it, leads again and reads the state again.
    rt().block_on(async {
        let bus = connect(&nats).await;
        let kv = bus
            .jetstream()
            .get_key_value(subjects::LEADER_BUCKET)
            .await
            .unwrap();
        kv.put(subjects::LEADER_KEY, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
    });
    let second = &mut first;
    let executed = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        caps_at(&sys, MIN)
    });
    assert!(
        second
            .log_text()
            .contains("saved state not sealed by a trusted coordinator key"),
        "{}",
        second.log_text()
    );
    assert!(
        !executed,
        "a command written into SKOS_STATE by a stranger was signed and executed on n1 (capped at {} kHz):\n{}",
        read_khz(sys.root(), 0),
        second
            .log_text()
            .lines()
            .filter(|l| l.contains("carrying") || l.contains("restored"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// --- Rolled-back state: on a server without permissions any client can
// write an older sealed record of a node back into `SKOS_STATE`, or empty
// it. Each sealed record says when it was written; the trail says when
// the node's state last changed.

/// n1's sealed record, as any client of an open server reads it.
fn read_node_record(nats: &NatsServer) -> Option<bytes::Bytes> {
    rt().block_on(async {
        let bus = connect(nats).await;
        let state = skos_bus::StateStore::jetstream(&bus).await.unwrap();
        state.load(&format!("node_{NODE}")).await.unwrap()
    })
}

/// Write n1's record as any client of an open server can.
fn write_node_record(nats: &NatsServer, bytes: bytes::Bytes) {
    rt().block_on(async {
        let bus = connect(nats).await;
        let state = skos_bus::StateStore::jetstream(&bus).await.unwrap();
        state.save(&format!("node_{NODE}"), bytes).await.unwrap();
    })
}

/// The `state_rollback` records of the trail: the nodes each names as
/// written back (`older`) and as missing.
fn rollback_reports(nats: &NatsServer) -> Vec<(Vec<String>, Vec<String>)> {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    audit_events(&audit(nats), "state_rollback")
        .iter()
        .map(|r| {
            let d = &r["entry"]["data"];
            (names(&d["older"]), names(&d["missing"]))
        })
        .collect()
}

/// n1's sealed record is read while n1 is healthy; n1 heats up, its
/// throttle fails and opens its circuit; the coordinator stops and the old
/// record is written back. The next coordinator does not restore it and
/// reports it (`state_rollback`, n1 written back). Then the record is
/// emptied: the next coordinator reports n1's state missing.
#[test]
fn an_older_sealed_state_record_written_back_is_not_restored_and_is_reported() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), Setup::ThrottlesFail);
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let mut coord = coordinator_armed(&nats, &cfg, work.path(), "coordinator", None);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), NODE);
    wait_for(Duration::from_secs(30), "n1 healthy", || {
        status(&nats).filter(|s| node(s, NODE).is_some_and(|n| n["status"] == "healthy"))
    });
    let old = wait_for(Duration::from_secs(10), "n1's record written", || {
        read_node_record(&nats)
    });
    assert!(old.starts_with(b"SKOSSIG"), "sealed");
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "n1's circuit open", || {
        status(&nats).filter(|s| s["open_circuits"].as_array().is_some_and(|c| !c.is_empty()))
    });
    assert_ne!(read_node_record(&nats).unwrap(), old);
    coord.sigterm();
    assert!(rollback_reports(&nats).is_empty());
    write_node_record(&nats, old.clone());
    let mut coord = coordinator_armed(&nats, &cfg, work.path(), "coordinator-2", None);
    let reports = wait_for(Duration::from_secs(30), "the rollback reported", || {
        Some(rollback_reports(&nats)).filter(|r| !r.is_empty())
    });
    assert_eq!(
        reports,
        [(vec![NODE.to_string()], Vec::<String>::new())],
        "n1 reported as written back"
    );
    let log = coord.log_text();
    assert!(
        log.contains("older than its last audited event") && log.contains("not restored"),
        "{log}"
    );
    // The next records are sealed again; then n1's record is emptied.
    wait_for(Duration::from_secs(10), "n1's record written again", || {
        read_node_record(&nats).filter(|r| *r != old)
    });
    coord.sigterm();
    write_node_record(&nats, bytes::Bytes::new());
    let _coord = coordinator_armed(&nats, &cfg, work.path(), "coordinator-3", None);
    let reports = wait_for(Duration::from_secs(30), "the wipe reported", || {
        Some(rollback_reports(&nats)).filter(|r| r.len() == 2)
    });
    assert_eq!(
        reports[1],
        (Vec::<String>::new(), vec![NODE.to_string()]),
        "n1 reported as missing"
    );
}
