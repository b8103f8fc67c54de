//! One node's flood against a real nats-server: the bus keeps at most
//! `coordinator.max_queued_per_node` of a node's alerts, so the flood never
//! queues more than that ahead of another node's alert; what it dropped
//! before the coordinator read it is counted and audited, and every alert
//! published is accounted for exactly once (handled, coalesced, a
//! duplicate, or dropped).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use skos_bus::{subjects, NatsBus, NatsOptions};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::require;

const PER_NODE: u64 = 10;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "coordinator:\n  heartbeat_timeout: 30\n  max_alerts_per_node_per_minute: 5\n  max_queued_per_node: {PER_NODE}\n\
thermal:\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn alert(node: &str, id: &str, temperature: u32) -> Value {
    json!({
        "alert_id": id,
        "agent_id": format!("thermal-sentinel-{node}"),
        "type": "thermal",
        "severity": "warning",
        "node": node,
        "message": format!("CPU temperature {temperature}°C exceeds warning threshold"),
        "details": {"sensor": "cpu", "temperature": temperature, "threshold": 75},
        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
    })
}

/// Publish alerts durably, each acknowledged by the server, in order.
fn publish(nats: &NatsServer, alerts: &[Value]) {
    rt().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "flood"))
            .await
            .unwrap();
        let js = bus.jetstream();
        let mut acks = Vec::new();
        for a in alerts {
            let subject =
                subjects::alert(&skos_core::NodeName::parse(a["node"].as_str().unwrap()).unwrap());
            acks.push(
                js.publish(subject, serde_json::to_vec(a).unwrap().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    });
}

fn per_subject_limit(nats: &NatsServer, stream: &str) -> i64 {
    rt().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "check"))
            .await
            .unwrap();
        let mut s = bus.jetstream().get_stream(stream).await.unwrap();
        s.info().await.unwrap().config.max_messages_per_subject
    })
}

fn counter(s: &Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or(0)
}

/// Every alert read is counted once, one way or another.
fn accounted(s: &Value) -> u64 {
    [
        "alerts.handled",
        "alerts.coalesced",
        "alerts.duplicate",
        "alerts.dropped_unread",
    ]
    .iter()
    .map(|c| counter(s, c))
    .sum()
}

fn handled_alert(records: &[Value], id: &str) -> bool {
    audit_events(records, "alert")
        .iter()
        .any(|r| r["entry"]["data"]["alert_id"] == id)
}

#[test]
fn a_nodes_flood_is_bounded_by_the_bus_and_what_it_dropped_is_counted_and_audited() {
    require!("nats-server", skos_testsupport::nats::nats_server_binary());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let nats = NatsServer::start();

    // The coordinator sets the per-node limit on both of its streams.
    let mut coord = coordinator(&nats, &cfg, dir.path(), "coordinator-1");
    wait_for(Duration::from_secs(30), "a leader", || {
        status(&nats).filter(|s| !s["leader"].is_null())
    });
    for stream in [subjects::STREAM_ALERTS, subjects::STREAM_RESULTS] {
        assert_eq!(
            per_subject_limit(&nats, stream),
            PER_NODE as i64,
            "{stream}"
        );
    }
    publish(&nats, &[alert("calm", "calm-0", 77)]);
    let records = wait_for(Duration::from_secs(30), "calm-0 handled", || {
        let a = audit(&nats);
        handled_alert(&a, "calm-0").then_some(a)
    });
    assert!(audit_events(&records, "dropped").is_empty());
    coord.sigterm();

    // While no coordinator reads, one node floods 500 alerts, then a calm
    // node sends one: the bus keeps the flood's last 10 only.
    let flood: Vec<Value> = (0..500)
        .map(|i| alert("flood", &format!("flood-{i}"), 80 + (i % 5)))
        .collect();
    publish(&nats, &flood);
    publish(&nats, &[alert("calm", "calm-1", 77)]);

    let mut coord = coordinator(&nats, &cfg, dir.path(), "coordinator-2");
    wait_for(Duration::from_secs(60), "calm-1 handled", || {
        handled_alert(&audit(&nats), "calm-1").then_some(())
    });
    // Flood alerts the stopped coordinator's last pull had taken are in
    // flight: settled (counted if never delivered again) twice the ack wait
    // after the start.
    let s = wait_for(Duration::from_secs(60), "all 501 accounted for", || {
        status(&nats).filter(|s| accounted(s) >= 501)
    });
    assert_eq!(
        counter(&s, "alerts.dropped_unread"),
        490,
        "{}",
        s["counters"]
    );
    assert_eq!(accounted(&s), 501, "{}", s["counters"]);
    let records = audit(&nats);
    let dropped = audit_events(&records, "dropped");
    assert!(!dropped.is_empty());
    let mut sequences = Vec::new();
    for d in &dropped {
        let data = &d["entry"]["data"];
        assert_eq!(data["feed"], "alert");
        for r in data["sequences"].as_array().unwrap() {
            sequences.extend(r[0].as_u64().unwrap()..=r[1].as_u64().unwrap());
        }
    }
    sequences.sort_unstable();
    // The sequences dropped are the flood's first 490, each once: after
    // calm-0 (1).
    assert_eq!(sequences, (2..=491).collect::<Vec<u64>>(), "{dropped:?}");
    // The flood's last ten were read: the first of them handled, the rest
    // past the node's quota of 5 a minute coalesced or handled.
    assert!(handled_alert(&records, "flood-490"));
    assert!(!handled_alert(&records, "flood-0"));

    // Live: a burst while the coordinator reads. Whatever the bus dropped,
    // every alert is accounted for once.
    let before = accounted(&s);
    let burst: Vec<Value> = (0..3000)
        .map(|i| alert("flood", &format!("burst-{i}"), 80 + (i % 5)))
        .collect();
    publish(&nats, &burst);
    publish(&nats, &[alert("calm", "calm-2", 77)]);
    wait_for(Duration::from_secs(60), "calm-2 handled", || {
        handled_alert(&audit(&nats), "calm-2").then_some(())
    });
    let s = wait_for(Duration::from_secs(60), "the burst accounted for", || {
        status(&nats).filter(|s| accounted(s) >= before + 3001)
    });
    assert_eq!(accounted(&s), before + 3001, "{}", s["counters"]);
    let dropped_live = counter(&s, "alerts.dropped_unread") - 490;
    // Past ten gaps a minute they are summed up when the minute ends, or
    // when the coordinator stops: every drop is audited by then.
    assert!(coord.sigterm().success());
    let audited: u64 = audit_events(&audit(&nats), "dropped")
        .iter()
        .map(|r| r["entry"]["data"]["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(audited, 490 + dropped_live, "every drop is audited");
}
