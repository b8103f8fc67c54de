//! `skos status` over a real nats-server with a fleet of a few hundred
//! nodes: the reply is a summary and one page, paging lists every node
//! exactly once, problems come first, one node is shown in full, and an
//! empty request (an older client) still gets the default page.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use skos_bus::{subjects, Bus, NatsBus, NatsOptions};
use skos_core::{Heartbeat, NodeName};
use skos_testsupport::nats::NatsServer;

const NODES: usize = 300;
const PER_PAGE: usize = 40;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn name(i: usize) -> String {
    format!("node-{i:03}")
}

fn heartbeat(i: usize) -> Heartbeat {
    Heartbeat {
        agent_id: format!("thermal-sentinel-{}", name(i)),
        agent_type: "thermal_sentinel".into(),
        node: NodeName::parse(&name(i)).unwrap(),
        timestamp: chrono::Utc::now(),
        cpu_temp: Some(50.0),
        gpu_temp: None,
        storage_percent: None,
        interval_seconds: Some(10.0),
        throttle_level: Some(0),
        metadata: Default::default(),
        workloads: Vec::new(),
    }
}

/// A warning CPU alert from node `i`.
fn warm_alert(i: usize) -> Value {
    json!({
        "alert_id": format!("warm-{i}"),
        "agent_id": format!("thermal-sentinel-{}", name(i)),
        "type": "thermal",
        "severity": "warning",
        "node": name(i),
        "message": "CPU temperature 77°C exceeds warning threshold",
        "details": {"sensor": "cpu", "temperature": 77, "threshold": 75},
        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
    })
}

/// `skos status` with `args`: its stdout, or `None` when it failed.
fn skos_status(nats: &NatsServer, args: &[&str]) -> Option<String> {
    let out = run({
        let mut c = skos();
        c.arg("status").args(args).env("NATS_URL", nats.url());
        c
    });
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_json(nats: &NatsServer, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = skos_status(nats, &all).expect("skos status succeeds");
    serde_json::from_str(&out).unwrap()
}

fn names(s: &Value) -> Vec<String> {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_fleet_pages_through_every_node_once() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "coordinator:\n  heartbeat_timeout: 600\n  verify_within: 600\n  command_deadline: 600\n",
    )
    .unwrap();
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    wait_for(Duration::from_secs(30), "coordinator answers", || {
        status(&nats)
    });
    let rt = rt();
    let bus = rt.block_on(async {
        Bus::Nats(
            NatsBus::connect(&NatsOptions::new(nats.url(), "test"))
                .await
                .unwrap(),
        )
    });
    for i in 0..NODES {
        rt.block_on(bus.publish_heartbeat(&heartbeat(i))).unwrap();
    }
    // Three nodes with a warning: degraded, so listed first.
    for i in [7, 150, 299] {
        let body = Bytes::from(serde_json::to_vec(&warm_alert(i)).unwrap());
        rt.block_on(bus.publish_raw(&format!("skos.alert.{}", name(i)), body))
            .unwrap();
    }
    let first = wait_for(
        Duration::from_secs(30),
        "every node and alert known",
        || {
            status(&nats).filter(|s| {
                s["summary"]["nodes"]["total"] == NODES && s["summary"]["nodes"]["degraded"] == 3
            })
        },
    );
    assert_eq!(first["total_nodes"], NODES);
    assert_eq!(first["page"], 0);
    assert_eq!(first["summary"]["open_alerts"]["warning"], 3);
    assert_eq!(first["summary"]["agents"]["online"], NODES);
    assert_eq!(
        names(&first)[..3],
        [name(7), name(150), name(299)],
        "problems first"
    );

    // Every page, problems first: every node exactly once.
    let per_page = PER_PAGE.to_string();
    let pages = NODES.div_ceil(PER_PAGE);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for page in 1..=pages + 1 {
        let s = status_json(
            &nats,
            &["--page", &page.to_string(), "--per-page", &per_page],
        );
        assert_eq!(s["pages"], pages, "{s}");
        assert_eq!(s["per_page"], PER_PAGE);
        assert_eq!(s["page"], page - 1);
        let listed = names(&s);
        let expected = if page > pages {
            0
        } else {
            PER_PAGE.min(NODES - (page - 1) * PER_PAGE)
        };
        assert_eq!(listed.len(), expected, "page {page}");
        assert!(s["agents"].as_array().unwrap().len() <= listed.len());
        for n in listed {
            *seen.entry(n).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), NODES);
    assert!(seen.values().all(|&c| c == 1), "listed once each");

    // By name: the same nodes, in name order across pages.
    let mut by_name = Vec::new();
    for page in 1..=pages {
        let s = status_json(
            &nats,
            &[
                "--by-name",
                "--page",
                &page.to_string(),
                "--per-page",
                &per_page,
            ],
        );
        by_name.extend(names(&s));
    }
    assert_eq!(by_name, (0..NODES).map(name).collect::<Vec<_>>());

    // Problem nodes only.
    let problems = status_json(&nats, &["--problems"]);
    assert_eq!(problems["total_nodes"], 3);
    assert_eq!(names(&problems), [name(7), name(150), name(299)]);

    // One node in full.
    let one = status_json(&nats, &["--node", &name(150)]);
    assert_eq!(one["total_nodes"], 1);
    assert_eq!(names(&one), [name(150)]);
    assert_eq!(one["nodes"][0]["status"], "degraded");
    let alerts = one["open_alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["node"], name(150));
    assert!(one["recent_actions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["node"] == name(150)));
    let text = skos_status(&nats, &["--node", &name(150)]).unwrap();
    assert!(text.contains(&format!("NODE {}", name(150))), "{text}");
    assert!(text.contains("degraded"), "{text}");

    // The human summary and first page.
    let text = skos_status(&nats, &["--per-page", &per_page]).unwrap();
    assert!(
        text.contains(&format!(
            "nodes     {NODES} total: 297 healthy, 3 degraded, 0 critical, 0 emergency, 0 offline"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("NODES (page 1 of {pages}: {PER_PAGE} of {NODES}")),
        "{text}"
    );
    assert!(text.contains("--page 2"), "{text}");

    // An older client's empty request: the default page, well bounded.
    let raw = rt
        .block_on(bus.request_status(Duration::from_secs(5)))
        .unwrap();
    assert!(raw.len() < 256 * 1024, "{} bytes", raw.len());
    let s: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(s["per_page"], skos_coordinator::status::DEFAULT_PER_PAGE);
    assert_eq!(s["total_nodes"], NODES);
    // A query that is not one is refused, in words.
    let raw = rt
        .block_on(bus.request_raw(
            subjects::STATUS,
            Bytes::from_static(b"{\"node\": \"a.b\"}"),
            Duration::from_secs(5),
        ))
        .unwrap();
    let refusal: Value = serde_json::from_slice(&raw).unwrap();
    assert!(
        refusal["error"]
            .as_str()
            .is_some_and(|e| e.contains("node")),
        "{refusal}"
    );
    // A bad name never leaves the command line.
    assert!(skos_status(&nats, &["--node", "a.b"]).is_none());
}
