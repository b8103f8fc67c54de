//! Distributed mode against a real nats-server started by each test:
//! `skos coordinator` and `skos agent` as separate processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use skos_bus::{Bus, NatsBus, NatsOptions};
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn bus(nats: &NatsServer) -> NatsBus {
    tokio::time::timeout(
        Duration::from_secs(10),
        NatsBus::connect(&NatsOptions::new(nats.url(), "test")),
    )
    .await
    .expect("connect timed out")
    .unwrap()
}

#[test]
fn hot_cpu_over_jetstream_is_throttled_and_audited() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[55.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let mut coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(
        Duration::from_secs(30),
        "nova healthy via NATS status",
        || status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy")),
    );

    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        (0..2)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    let records = wait_for(Duration::from_secs(30), "result in SKOS_AUDIT", || {
        let r = audit(&nats);
        audit_events(&r, "result")
            .iter()
            .any(|e| result_is(e, "throttle_50", "succeeded"))
            .then_some(r)
    });
    let alert = audit_events(&records, "alert")
        .into_iter()
        .find(|a| a["entry"]["data"]["alert"]["severity"] == "critical")
        .expect("critical alert audited");
    assert_eq!(alert["entry"]["data"]["alert"]["details"]["sensor"], "cpu");
    let cmd = audit_events(&records, "command")
        .into_iter()
        .find(|c| c["entry"]["data"]["command"]["action_type"] == "throttle_50")
        .expect("command audited");
    assert!(cmd["entry"]["data"]["command"]["deadline"].is_string());
    assert_eq!(
        commands_of(&records, "throttle_50"),
        1,
        "one critical alert, one throttle_50"
    );
    let s = wait_for(Duration::from_secs(10), "critical in status", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "critical"))
    });
    assert!(!s["recent_actions"].as_array().unwrap().is_empty());

    // Still 87 °C: the throttle did not bring the CPU below critical within
    // verify_within, so its verification fails and escalates to emergency
    // (judged on heartbeats sent after the result, not on the cool one the
    // coordinator knew when the result came).
    let throttle = cmd["entry"]["data"]["command"].clone();
    let escalated = format!("{}-esc-emergency", throttle["cause"].as_str().unwrap());
    let records = wait_for(
        Duration::from_secs(60),
        "throttle_50 not verified, escalated",
        || {
            let r = audit(&nats);
            let failed = audit_events(&r, "verification").iter().any(|v| {
                v["entry"]["data"]["action_id"] == throttle["action_id"]
                    && v["entry"]["data"]["outcome"] == "failed"
            });
            let esc = audit_events(&r, "decision")
                .iter()
                .any(|d| d["entry"]["data"]["alert_id"] == escalated.as_str());
            (failed && esc).then_some(r)
        },
    );
    let esc = audit_events(&records, "alert")
        .into_iter()
        .find(|a| a["entry"]["data"]["alert_id"] == escalated.as_str())
        .unwrap();
    assert_eq!(esc["entry"]["data"]["alert"]["severity"], "emergency");
    assert_eq!(esc["entry"]["data"]["alert"]["agent_id"], "coordinator");

    // What the coordinator knew survives a crash: each node's state is
    // written to SKOS_STATE before the message that changed it is
    // acknowledged, so a kill right after the escalation was audited
    // loses nothing.
    coord.sigkill();
    let _coord2 = coordinator(&nats, &cfg, work.path(), "coordinator-2");
    let s = wait_for(
        Duration::from_secs(30),
        "restarted coordinator answers",
        || status(&nats),
    );
    assert!(
        s["recent_actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action_type"] == "throttle_50"),
        "recent actions restored: {s}"
    );
    assert_eq!(
        s["open_alerts"][0]["severity"], "emergency",
        "open alerts restored (the escalated one): {s}"
    );

    // The audit stream refuses purges and deletes, and its chain verifies.
    rt().block_on(async {
        let b = bus(&nats).await;
        assert!(skos_bus::audit::stream_is_locked(&b).await.unwrap());
        let stream = b.jetstream().get_stream("SKOS_AUDIT").await.unwrap();
        assert!(stream.purge().await.is_err(), "purge must be refused");
        assert!(
            stream.delete_message(1).await.is_err(),
            "delete must be refused"
        );
    });
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"]).env("NATS_URL", nats.url());
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Cool below warning - hysteresis (72 °C): after clear_for the
    // coordinator lifts the throttle, once.
    cpu.heat(60.0);
    wait_for(
        Duration::from_secs(60),
        "scaling_max_freq back at max",
        || (0..2).all(|p| read_khz(sys.root(), p) == MAX).then_some(()),
    );
    wait_for(
        Duration::from_secs(30),
        "reset_throttle result audited",
        || {
            let r = audit(&nats);
            audit_events(&r, "result")
                .iter()
                .any(|e| result_is(e, "reset_throttle", "succeeded"))
                .then_some(())
        },
    );
    let s = wait_for(Duration::from_secs(30), "nova healthy, unthrottled", || {
        status(&nats).filter(|s| {
            node(s, "nova").is_some_and(|n| n["status"] == "healthy" && n["throttle_level"] == 0)
        })
    });
    // Nothing more: the coordinator handles several more heartbeats (more
    // than clear_for of them, each a chance to reset again), then the count
    // is still one.
    let seen = s["counters"]["heartbeats.received"].as_u64().unwrap();
    wait_for(Duration::from_secs(30), "six more heartbeats", || {
        status(&nats).filter(|s| {
            s["counters"]["heartbeats.received"]
                .as_u64()
                .is_some_and(|n| n >= seen + 6)
        })
    });
    let records = audit(&nats);
    assert_eq!(
        commands_of(&records, "reset_throttle"),
        1,
        "one reset_throttle"
    );
    assert_eq!(
        commands_of(&records, "throttle_50"),
        1,
        "still one throttle_50"
    );
    let reset = audit_events(&records, "command")
        .into_iter()
        .find(|c| c["entry"]["data"]["command"]["action_type"] == "reset_throttle")
        .unwrap();
    assert_eq!(reset["entry"]["data"]["command"]["cause"], "recovery");
    assert!((0..2).all(|p| read_khz(sys.root(), p) == MAX));
}

/// How many `action` commands the audit trail records.
fn commands_of(records: &[Value], action: &str) -> usize {
    audit_events(records, "command")
        .iter()
        .filter(|c| c["entry"]["data"]["command"]["action_type"] == action)
        .count()
}

#[test]
fn killed_agent_goes_offline_within_timeout_and_comes_back() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut a = agent(&nats, &cfg, work.path(), sys.root(), "lyra");
    wait_for(Duration::from_secs(30), "lyra healthy", || {
        status(&nats).filter(|s| node(s, "lyra").is_some_and(|n| n["status"] == "healthy"))
    });
    a.sigkill();
    wait_for(Duration::from_secs(20), "lyra offline", || {
        status(&nats).filter(|s| node(s, "lyra").is_some_and(|n| n["status"] == "offline"))
    });
    let records = wait_for(Duration::from_secs(10), "heartbeat_missing audited", || {
        let r = audit(&nats);
        (!audit_events(&r, "alert")
            .iter()
            .filter(|e| e["entry"]["data"]["alert"]["type"] == "heartbeat_missing")
            .collect::<Vec<_>>()
            .is_empty())
        .then_some(r)
    });
    let missing = audit_events(&records, "alert")
        .into_iter()
        .find(|e| e["entry"]["data"]["alert"]["type"] == "heartbeat_missing")
        .unwrap();
    // The coordinator's own measure: silence from the last heartbeat to detection.
    let silent = missing["entry"]["data"]["alert"]["details"]["silent_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        silent <= 2.0 + 1.0,
        "offline detected after {silent}s, timeout is 2s"
    );

    let _a = agent(&nats, &cfg, work.path(), sys.root(), "lyra");
    wait_for(Duration::from_secs(30), "lyra back", || {
        status(&nats).filter(|s| node(s, "lyra").is_some_and(|n| n["status"] == "healthy"))
    });
    let records = audit(&nats);
    assert!(audit_events(&records, "alert")
        .iter()
        .any(
            |e| e["entry"]["data"]["alert"]["type"] == "heartbeat_missing"
                && e["entry"]["data"]["alert"]["severity"] == "normal"
        ));
}

fn alert_json(i: usize) -> Value {
    json!({
        "alert_id": format!("test-alert-{i}"),
        "agent_id": format!("thermal-sentinel-n{}", i % 5),
        "type": "thermal",
        "severity": "warning",
        "node": format!("n{}", i % 5),
        "message": format!("CPU temperature {}°C exceeds warning threshold", 76 + i % 5),
        "details": {"sensor": "cpu", "temperature": 76 + i % 5, "threshold": 75},
        "timestamp": "2024-01-01T00:00:00Z"
    })
}

#[test]
fn coordinator_killed_and_restarted_handles_every_alert_once() {
    let mut nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(
        work.path(),
        "coordinator:\n  heartbeat_timeout: 600\n  max_actions_per_node_per_minute: 1000\n",
    );
    // fast_config already has a coordinator section: write a full one instead.
    std::fs::write(
        &cfg,
        "coordinator:\n  heartbeat_timeout: 600\n  max_actions_per_node_per_minute: 1000\nthermal:\n  gpu: {nvml: false, nvidia_smi: false, lm_sensors: false}\n",
    )
    .unwrap();
    let total = 60;
    let mut coord = coordinator(&nats, &cfg, work.path(), "coordinator-1");
    let rt = rt();
    let b = rt.block_on(bus(&nats));
    let bus = Bus::Nats(b);
    let publish = |i: usize| {
        let payload = Bytes::from(serde_json::to_vec(&alert_json(i)).unwrap());
        rt.block_on(bus.publish_raw(&format!("skos.alert.n{}", i % 5), payload))
            .unwrap();
    };
    for i in 0..20 {
        publish(i);
        std::thread::sleep(Duration::from_millis(20));
    }
    coord.sigkill();
    // What coordinator-1 wrote before it died: nothing writes the trail
    // again until coordinator-2 starts.
    let cut = audit(&nats).len();
    for i in 20..40 {
        publish(i);
    }
    let _coord2 = coordinator(&nats, &cfg, work.path(), "coordinator-2");
    for i in 40..total {
        publish(i);
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for(Duration::from_secs(60), "every alert audited", || {
        let r = audit(&nats);
        let ids: std::collections::BTreeSet<String> = audit_events(&r, "alert")
            .iter()
            .filter_map(|e| e["entry"]["data"]["alert_id"].as_str().map(str::to_owned))
            .filter(|id| id.starts_with("test-alert-"))
            .collect();
        (ids.len() == total && outcomes_complete(&r, cut)).then_some(())
    });
    // Alerts coordinator-1 took but never acknowledged come back only after
    // the consumer's ack wait: wait until the coordinator's consumer has
    // nothing left to deliver and nothing unacknowledged, so that any
    // second handling is in the trail before it is checked.
    rt.block_on(async {
        let Bus::Nats(b) = &bus else { unreachable!() };
        let stream = b
            .jetstream()
            .get_stream(skos_bus::subjects::STREAM_ALERTS)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let info = stream
                .consumer_info(skos_bus::subjects::CONSUMER_COORDINATOR)
                .await
                .unwrap();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "coordinator consumer not drained: {} unacknowledged, {} undelivered",
                info.num_ack_pending,
                info.num_pending
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let records = audit(&nats);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in audit_events(&records, "alert") {
        *seen
            .entry(e["entry"]["data"]["alert_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "alerts handled twice: {twice:?}");
    let mut cmds: BTreeMap<String, usize> = BTreeMap::new();
    for e in audit_events(&records, "command") {
        *cmds
            .entry(
                e["entry"]["data"]["command"]["action_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
    }
    assert!(
        cmds.values().all(|n| *n == 1),
        "commands sent twice: {cmds:?}"
    );
    check_throttle_10_per_node(&records, cut, &nats);
    // The stored commands are unique too (JetStream de-duplicates by action_id).
    let stored = rt.block_on(async {
        let Bus::Nats(b) = &bus else { unreachable!() };
        let mut s = b.jetstream().get_stream("SKOS_COMMANDS").await.unwrap();
        s.info().await.unwrap().state.messages
    });
    assert_eq!(
        stored as usize,
        cmds.len(),
        "stored commands vs distinct commands"
    );
    // The chain is intact across the crash.
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"]).env("NATS_URL", nats.url());
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // And the server itself can be taken away and given back.
    nats.restart();
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"]).env("NATS_URL", nats.url());
        c
    });
    assert!(
        out.status.success(),
        "after a server restart: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn is_test_alert(r: &Value) -> bool {
    r["entry"]["event_type"] == "alert"
        && r["entry"]["data"]["alert_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("test-alert-"))
}

/// Whether the entries of every handled test alert (alert, decision, then
/// a command or a skip) are all written, except those of the last alert
/// coordinator-1 wrote before `cut`, which its SIGKILL may have cut short.
fn outcomes_complete(records: &[Value], cut: usize) -> bool {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| is_test_alert(r))
        .all(|(i, _)| i + 2 < records.len() || (i < cut && i + 2 >= cut))
}

/// Each warning alert asks for `throttle_10` on its node. No agent answers,
/// so a sent `throttle_10` stays pending and every later alert for that
/// node is skipped as `in_progress` (the rate limit is 1000 a minute, no
/// node is known so none is offline, no breaker fails): one command per
/// node and coordinator life, except that coordinator-2 sends none for a
/// node whose pending command it restored from the snapshot.
fn check_throttle_10_per_node(records: &[Value], cut: usize, nats: &NatsServer) {
    let data = |r: &Value| r["entry"]["data"].clone();
    // The entries of one alert are consecutive: the coordinator handles
    // one message at a time and writes its entries in order.
    for (i, r) in records.iter().enumerate().filter(|(_, r)| is_test_alert(r)) {
        let id = data(r)["alert_id"].clone();
        let group: Vec<&Value> = records[i + 1..].iter().take(2).collect();
        let limit = if i < cut { cut - i - 1 } else { 2 };
        let group = &group[..group.len().min(limit)];
        if group.len() < 2 {
            assert!(i < cut && i + 2 >= cut, "entries of {id} missing");
        }
        if let Some(d) = group.first() {
            assert_eq!(d["entry"]["event_type"], "decision", "after {id}: {d}");
            assert_eq!(data(d)["alert_id"], id);
            assert_eq!(data(d)["actions"], json!(["throttle_10"]), "{d}");
        }
        if let Some(o) = group.get(1) {
            match o["entry"]["event_type"].as_str() {
                Some("command") => {
                    assert_eq!(data(o)["command"]["action_type"], "throttle_10", "{o}");
                    assert_eq!(data(o)["command"]["cause"], id, "{o}");
                    assert_eq!(data(o)["command"]["node"], r["entry"]["node"], "{o}");
                }
                Some("skipped") => {
                    assert_eq!(data(o)["action"], "throttle_10", "{o}");
                    assert_eq!(data(o)["reason"], "in_progress", "{o}");
                }
                _ => panic!("after the decision for {id}: {o}"),
            }
        }
    }
    let throttle_10 = |r: &&Value| {
        r["entry"]["event_type"] == "command"
            && r["entry"]["data"]["command"]["action_type"] == "throttle_10"
    };
    let first: Vec<&Value> = records[..cut].iter().filter(throttle_10).collect();
    let second: Vec<&Value> = records[cut..].iter().filter(throttle_10).collect();
    let ids_second: std::collections::BTreeSet<String> = second
        .iter()
        .map(|c| {
            c["entry"]["data"]["command"]["action_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Restored: coordinator-2 knows a throttle_10 it did not send.
    let s = status(nats).expect("coordinator-2 answers");
    let restored: std::collections::BTreeSet<String> = s["recent_actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["action_type"] == "throttle_10"
                && !ids_second.contains(a["action_id"].as_str().unwrap_or(""))
        })
        .map(|a| a["node"].as_str().unwrap().to_string())
        .collect();
    let on = |cmds: &[&Value], n: &str| {
        cmds.iter()
            .filter(|c| c["entry"]["data"]["command"]["node"] == n)
            .count()
    };
    let mut expected = 0;
    for i in 0..5 {
        let n = format!("n{i}");
        let (one, two) = (on(&first, &n), on(&second, &n));
        assert!(one <= 1, "coordinator-1 sent {one} throttle_10 to {n}");
        let want = usize::from(!restored.contains(&n));
        assert_eq!(
            two, want,
            "coordinator-2 sent {two} throttle_10 to {n} (restored: {restored:?})"
        );
        assert!(one + two >= 1, "no throttle_10 reached {n}");
        expected += one + two;
    }
    assert!(expected >= 5);
    assert_eq!(first.len() + second.len(), expected);
    assert_eq!(
        first.len() + second.len(),
        audit_events(records, "command").len(),
        "nothing but throttle_10 was sent"
    );
}

#[test]
fn malformed_messages_on_every_subject_are_counted_not_fatal() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let mut coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut ag = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(30), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });
    let rt = rt();
    let bus = Bus::Nats(rt.block_on(bus(&nats)));
    let huge = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(200 * 1024)));
    let deep = Bytes::from("[".repeat(5000));
    let hostile: Vec<(&str, Bytes)> = vec![
        ("skos.heartbeat.nova", Bytes::from_static(b"{")),
        ("skos.heartbeat.nova", Bytes::from_static(b"{\"node\": 5}")),
        ("skos.heartbeat.nova", Bytes::from_static(br#"{"agent_id":"x","agent_type":"y","node":"lyra","timestamp":"2024-01-01T00:00:00Z"}"#)),
        ("skos.heartbeat.nova", deep.clone()),
        ("skos.alert.nova", Bytes::from_static(b"not json at all")),
        ("skos.alert.nova", huge.clone()),
        ("skos.alert.nova", deep.clone()),
        ("skos.alert.nova", Bytes::from_static(br#"{"agent_id":"x","type":"thermal","severity":"hot","node":"nova","timestamp":"2024-01-01T00:00:00Z"}"#)),
        ("skos.alert.nova", Bytes::from_static(br#"{"agent_id":"x","type":"thermal","severity":"critical","node":"no.va","timestamp":"2024-01-01T00:00:00Z"}"#)),
        ("skos.alert.nova", Bytes::from_static(br#"{"agent_id":"x","type":"thermal","severity":"critical","node":"lyra","timestamp":"2024-01-01T00:00:00Z"}"#)),
        ("skos.alert.nova", Bytes::from(vec![0xff, 0xfe, 0x00, 0x01])),
        ("skos.result.nova", Bytes::from_static(b"[1,2,3]")),
        ("skos.result.nova", huge.clone()),
        ("skos.command.nova", Bytes::from_static(b"{\"action_id\": \"evil\", \"action_type\": \"rm -rf /\", \"timestamp\": \"2024-01-01T00:00:00Z\"}")),
        ("skos.command.nova", Bytes::from_static(b"\x00\x01garbage")),
        ("skos.command.nova", deep),
    ];
    rt.block_on(async {
        for (subject, payload) in hostile {
            bus.publish_raw(subject, payload).await.unwrap();
        }
    });
    let s = wait_for(Duration::from_secs(20), "rejections counted", || {
        status(&nats).filter(|s| {
            let c = &s["counters"];
            let sum = |prefix: &str| -> u64 {
                c.as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            };
            sum("rejected.heartbeat.") >= 4
                && sum("rejected.alert.") >= 7
                && sum("rejected.result.") >= 2
        })
    });
    let _ = s;
    assert!(coord.alive(), "coordinator crashed");
    assert!(ag.alive(), "agent crashed");
    let records = audit(&nats);
    assert!(
        audit_events(&records, "rejected").len() >= 13,
        "rejections are audited"
    );
    // The agent answered the readable bad command as rejected.
    assert!(audit_events(&records, "result")
        .iter()
        .any(|r| r["entry"]["data"]["result"]["action_id"] == "evil"
            && r["entry"]["data"]["result"]["status"] == "rejected"));
    assert!(
        ag.log_text().contains("refused command"),
        "unsigned hostile commands are refused"
    );
    // Still healthy and heartbeating afterwards.
    wait_for(Duration::from_secs(10), "nova still reporting", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });

    // A flood of 500 more malformed heartbeats: every one counted, but
    // past ten a minute they are not audited one by one; stopping sums
    // up the rest in one record.
    rt.block_on(async {
        for _ in 0..500 {
            bus.publish_raw("skos.heartbeat.nova", Bytes::from_static(b"{"))
                .await
                .unwrap();
        }
    });
    let heartbeats_refused = |s: &Value| -> u64 {
        s["counters"]
            .as_object()
            .map(|c| {
                c.iter()
                    .filter(|(k, _)| k.starts_with("rejected.heartbeat."))
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(20), "the flood counted", || {
        status(&nats).filter(|s| heartbeats_refused(s) >= 504)
    });
    let heartbeat_records = |records: &[Value]| -> Vec<Value> {
        audit_events(records, "rejected")
            .into_iter()
            .filter(|r| {
                r["entry"]["data"]["feed"] == "heartbeat"
                    || r["entry"]["data"]["subject"] == "skos.heartbeat.nova"
            })
            .collect()
    };
    let one_by_one = heartbeat_records(&audit(&nats)).len();
    assert!(
        one_by_one <= 20,
        "{one_by_one} audited one by one: not bounded"
    );
    assert!(coord.sigterm().success());
    // Once stopped, every refused heartbeat is in the trail: one by one,
    // or in a summary (4 hostile ones and the 500).
    let records = heartbeat_records(&audit(&nats));
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["entry"]["data"]["held"].is_u64())
        .collect();
    assert!(!summaries.is_empty(), "nothing summed up: {records:?}");
    let held: u64 = summaries
        .iter()
        .map(|r| r["entry"]["data"]["held"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        held + (records.len() - summaries.len()) as u64,
        504,
        "{records:?}"
    );
    assert_eq!(
        summaries[0]["entry"]["data"]["subjects"],
        json!(["skos.heartbeat.nova"])
    );
}
