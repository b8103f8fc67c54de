//! A bus outage in the middle of an alert storm: 200 simulated nodes (the
//! test publishes their heartbeats and 2,000 well-formed alerts with unique
//! ids) and a real `skos coordinator`; nats-server is SIGKILLed half-way
//! through the storm and started again on the same port and store after
//! longer than the heartbeat timeout.
//!
//! Afterwards every one of the 2,000 alerts is audited exactly once (none
//! lost, none handled twice), and every node that went silent during the
//! outage has its offline `heartbeat_missing` alert audited: the
//! coordinator raised it while the bus was down and kept it in its outbox.
//!
//! The same storm, sent at once, against a coordinator aborted at one of
//! its kill points part-way through (`SKOS_FAILPOINT`, as abrupt as a
//! SIGKILL), with batches in flight one behind the other (a batch's node
//! states written while the batch before is carried out), then started
//! again: every alert audited exactly once, every command stored and
//! audited exactly once, and the trail verifies.
//!
//! A leader stopped while the server is down loses the offline alerts it
//! decided then (no node state could be written); the next leader, a
//! standby or the same coordinator started again, raises them itself from
//! the saved node records once the server is back: each silent node's
//! offline alert audited once, the nodes that beat again never offline.
//!
//! An agent keeps the alerts the bus refused while it was away and sends
//! them, in order, once it is back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use skos_bus::{subjects, Bus, NatsBus, NatsOptions};
use skos_core::protocol::{Alert, AlertKind, Heartbeat, Severity};
use skos_core::NodeName;
use skos_testsupport::nats::{nats_server_binary, NatsServer};

const NODES: usize = 200;
const ALERTS_PER_NODE: usize = 10;
const ALERTS: usize = NODES * ALERTS_PER_NODE;
/// How long the server stays down: well past the heartbeat timeout (2 s)
/// and the bus's 5 s answer timeout, so the coordinator's writes fail (not
/// only wait) while it is down.
const OUTAGE: Duration = Duration::from_secs(12);

fn node_name(i: usize) -> NodeName {
    NodeName::parse(&format!("sim-{i:03}")).unwrap()
}

fn heartbeat(node: &NodeName) -> Heartbeat {
    Heartbeat {
        cpu_temp: Some(60.0),
        interval_seconds: Some(0.5),
        ..Heartbeat::bare(
            format!("sim-agent-{node}"),
            "thermal_sentinel",
            node.clone(),
            chrono::Utc::now(),
        )
    }
}

/// Alert `n` of `node`: a CPU warning with a unique id.
fn alert(node: &NodeName, n: usize) -> Alert {
    let details = serde_json::json!({"sensor": "cpu", "temperature": 77.0, "threshold": 75.0});
    Alert {
        alert_id: format!("storm-{node}-{n}"),
        agent_id: format!("sim-agent-{node}"),
        kind: AlertKind::Thermal,
        severity: Severity::Warning,
        node: node.clone(),
        message: format!("CPU temperature 77°C exceeds warning threshold (storm alert {n})"),
        details: details.as_object().cloned().unwrap_or_default(),
        timestamp: chrono::Utc::now(),
    }
}

/// The runtime the simulated nodes publish from.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Heartbeats of every node in `nodes` every 0.5 s, except while
/// `silent`, until `stop`.
async fn beat(
    url: String,
    nodes: Arc<Vec<NodeName>>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let bus = connect(&url).await;
    while !stop.load(Ordering::SeqCst) {
        if !silent.load(Ordering::SeqCst) {
            for n in nodes.iter() {
                let _ = bus.publish_heartbeat(&heartbeat(n)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn connect(url: &str) -> Bus {
    loop {
        match NatsBus::connect(&NatsOptions::new(url, "outage-test")).await {
            Ok(b) => return Bus::Nats(b),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How many times each id (`id` of each message's JSON) is stored in
/// `stream`.
fn stream_ids(nats: &NatsServer, stream: &str, id: &str) -> BTreeMap<String, usize> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "outage-check"))
            .await
            .unwrap();
        let mut s = bus.jetstream().get_stream(stream).await.unwrap();
        let state = s.info().await.unwrap().state.clone();
        let mut out = BTreeMap::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                let a: Value = serde_json::from_slice(&m.payload).unwrap();
                *out.entry(a[id].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
        out
    })
}

fn stream_alert_ids(nats: &NatsServer) -> BTreeMap<String, usize> {
    stream_ids(nats, subjects::STREAM_ALERTS, "alert_id")
}

/// The audited alerts: id → (how many records, the alert).
fn audited_alerts(records: &[Value]) -> BTreeMap<String, (usize, Value)> {
    let mut out: BTreeMap<String, (usize, Value)> = BTreeMap::new();
    for r in audit_events(records, "alert") {
        let id = r["entry"]["data"]["alert_id"].as_str().unwrap().to_string();
        let e = out
            .entry(id)
            .or_insert_with(|| (0, r["entry"]["data"]["alert"].clone()));
        e.0 += 1;
    }
    out
}

/// The nodes with an audited offline alert.
fn offline_nodes(audited: &BTreeMap<String, (usize, Value)>) -> BTreeSet<String> {
    audited
        .values()
        .filter(|(_, a)| a["type"] == "heartbeat_missing" && a["severity"] == "critical")
        .map(|(_, a)| a["node"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_outage_mid_storm_loses_no_alert_and_handles_none_twice() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    // The lease outlasts the outage (a leader trusts its last renewal for
    // 0.8 of it, and renews every third): the coordinator stays the leader
    // and keeps what it raised while the bus was down.
    std::fs::write(
        &cfg,
        "coordinator:\n  heartbeat_timeout: 2\n  verify_within: 600\n  command_deadline: 120\n  \
result_grace_seconds: 120\n  leader_lease_seconds: 40\n  max_actions_per_node_per_minute: 100\n",
    )
    .unwrap();
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    wait_for(Duration::from_secs(30), "the coordinator answers", || {
        status(&nats)
    });

    let rt = runtime();
    let nodes: Arc<Vec<NodeName>> = Arc::new((0..NODES).map(node_name).collect());
    let url = nats.url();
    let silent = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let beats = rt.spawn(beat(
        url.clone(),
        nodes.clone(),
        silent.clone(),
        stop.clone(),
    ));
    wait_for(Duration::from_secs(30), "200 healthy nodes", || {
        status(&nats).filter(|s| s["summary"]["nodes"]["healthy"] == NODES)
    });

    // The storm: round-robin over the nodes, about 1,000 alerts a second;
    // a publish that fails (the server is down) is retried with the same
    // id until it is stored.
    let published = Arc::new(AtomicUsize::new(0));
    let storm = {
        let (nodes, published, url) = (nodes.clone(), published.clone(), url.clone());
        rt.spawn(async move {
            let bus = connect(&url).await;
            for n in 0..ALERTS_PER_NODE {
                for node in nodes.iter() {
                    let a = alert(node, n);
                    while bus.publish_alert(&a).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    published.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    wait_for(Duration::from_secs(60), "half the storm published", || {
        (published.load(Ordering::SeqCst) >= ALERTS / 2).then_some(())
    });
    silent.store(true, Ordering::SeqCst);
    nats.kill();
    let down = Instant::now();
    std::thread::sleep(OUTAGE);
    nats.restart();
    eprintln!(
        "server down for {:?}, {} alerts published before the restart",
        down.elapsed(),
        published.load(Ordering::SeqCst)
    );
    silent.store(false, Ordering::SeqCst);
    rt.block_on(storm).unwrap();

    let ids: Vec<String> = (0..ALERTS_PER_NODE)
        .flat_map(|n| nodes.iter().map(move |node| format!("storm-{node}-{n}")))
        .collect();
    let records = wait_for(
        Duration::from_secs(120),
        "every storm alert and every offline alert audited",
        || {
            let r = audit(&nats);
            let audited = audited_alerts(&r);
            (ids.iter().all(|id| audited.contains_key(id))
                && offline_nodes(&audited).len() >= NODES)
                .then_some(r)
        },
    );
    stop.store(true, Ordering::SeqCst);
    rt.block_on(beats).unwrap();

    let audited = audited_alerts(&records);
    let twice: Vec<(&String, usize)> = audited
        .iter()
        .filter(|(_, (n, _))| *n > 1)
        .map(|(id, (n, _))| (id, *n))
        .collect();
    assert!(twice.is_empty(), "alerts handled more than once: {twice:?}");
    let storm_ids = audited.keys().filter(|id| id.starts_with("storm-")).count();
    assert_eq!(storm_ids, ALERTS, "storm alerts audited");
    let stored = stream_alert_ids(&nats);
    for id in &ids {
        assert_eq!(stored.get(id), Some(&1), "{id} stored once in the stream");
    }
    let all: BTreeSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    assert_eq!(offline_nodes(&audited), all, "every node's offline alert");

    // Every command audited once.
    let commands = audited_commands(&records);
    let doubled: Vec<_> = commands.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "commands audited twice: {doubled:?}");
    assert_trail_verifies(&nats);
}

/// Nodes of the storm a coordinator is killed in.
const KILLED_NODES: usize = 60;
/// Most rounds of one alert per node sent to reach the kill point.
const MAX_ROUNDS: usize = 100;
/// Nodes whose alerts are sent together, when batches are made to wait.
const GROUP: usize = 20;

/// A storm (of [`KILLED_NODES`] nodes) sent at once to a coordinator that
/// aborts at the `hit`th time it reaches kill point `point`, with batches
/// in flight; a coordinator started again finishes it. Every alert
/// audited once, every command stored once (one execution) and audited
/// once, none of them lost, and every action the coordinator holds for a
/// node was sent.
///
/// `stall` (`SKOS_FAILPOINT_STALL`) makes each batch wait at a point, so
/// that a point reached only when the next batch overtakes it (the `_ahead`
/// ones) is reached on any machine: each round is then sent in groups of
/// [`GROUP`] nodes, apart, so that batches touch no node in common.
fn killed_mid_storm(point: &str, hit: u32, stall: Option<&str>) {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "coordinator:\n  heartbeat_timeout: 3600\n  verify_within: 600\n  command_deadline: 120\n  \
result_grace_seconds: 120\n  leader_lease_seconds: 2\n  max_actions_per_node_per_minute: 100\n",
    )
    .unwrap();
    let failpoint = format!("{point}:{hit}");
    let mut armed = {
        let mut c = skos();
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .env("NATS_URL", nats.url())
            .env("SKOS_FAILPOINT", &failpoint);
        if let Some(stall) = stall {
            c.env("SKOS_FAILPOINT_STALL", stall);
        }
        Proc::spawn(c, work.path(), "coordinator-armed")
    };
    wait_for(Duration::from_secs(30), "the coordinator answers", || {
        status(&nats)
    });
    let rt = runtime();
    let nodes: Arc<Vec<NodeName>> = Arc::new((0..KILLED_NODES).map(node_name).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let beats = rt.spawn(beat(nats.url(), nodes.clone(), never, stop.clone()));
    wait_for(Duration::from_secs(30), "every node healthy", || {
        status(&nats).filter(|s| s["summary"]["nodes"]["healthy"] == KILLED_NODES)
    });
    // Rounds of one alert per node, warning and critical in turn (each
    // alert changes its node's state), until the coordinator reaches the
    // point: how batches fall depends on the machine's load.
    let mut rounds = 0;
    let exit = rt.block_on(async {
        let bus = connect(&nats.url()).await;
        while rounds < MAX_ROUNDS {
            for (i, node) in nodes.iter().enumerate() {
                if stall.is_some() && i > 0 && i % GROUP == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut a = alert(node, rounds);
                if rounds % 2 == 1 {
                    a.severity = Severity::Critical;
                }
                bus.publish_alert(&a).await.unwrap();
            }
            rounds += 1;
            if let Some(exit) = armed.child.try_wait().unwrap() {
                return Some(exit);
            }
        }
        None
    });
    let exit = exit.unwrap_or_else(|| {
        wait_for(
            Duration::from_secs(60),
            &format!("the coordinator to abort at {failpoint}"),
            || armed.child.try_wait().unwrap(),
        )
    });
    let log = armed.log_text();
    assert!(
        log.contains(&format!("SKOS_FAILPOINT: aborting at {point} ")),
        "aborted elsewhere ({exit}):\n{log}"
    );
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");

    let ids: Vec<String> = (0..rounds)
        .flat_map(|n| nodes.iter().map(move |node| format!("storm-{node}-{n}")))
        .collect();
    let records = wait_for(
        Duration::from_secs(120),
        "every storm alert audited",
        || {
            let r = audit(&nats);
            let audited = audited_alerts(&r);
            ids.iter().all(|id| audited.contains_key(id)).then_some(r)
        },
    );
    stop.store(true, Ordering::SeqCst);
    rt.block_on(beats).unwrap();
    let audited = audited_alerts(&records);
    let twice: Vec<(&String, usize)> = audited
        .iter()
        .filter(|(_, (n, _))| *n > 1)
        .map(|(id, (n, _))| (id, *n))
        .collect();
    assert!(twice.is_empty(), "alerts handled more than once: {twice:?}");
    let commands = audited_commands(&records);
    assert!(!commands.is_empty(), "the storm raised no command");
    let doubled: Vec<_> = commands.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "commands audited twice: {doubled:?}");
    let stored = stream_ids(&nats, subjects::STREAM_COMMANDS, "action_id");
    let unaudited: Vec<_> = stored
        .keys()
        .filter(|id| !commands.contains_key(*id))
        .collect();
    assert!(
        unaudited.is_empty(),
        "commands sent, never audited: {unaudited:?}"
    );
    let resent: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(resent.is_empty(), "commands stored twice: {resent:?}");
    let lost: Vec<_> = commands
        .keys()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "commands audited, never sent: {lost:?}");
    // What the coordinator holds as sent for each node was sent.
    for node in nodes.iter() {
        let out = run({
            let mut c = skos();
            c.args(["status", "--json", "--node", node.as_str()])
                .env("NATS_URL", nats.url());
            c
        });
        assert!(out.status.success(), "status of {node}");
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        for a in s["recent_actions"].as_array().unwrap() {
            let id = a["action_id"].as_str().unwrap();
            assert!(
                stored.contains_key(id),
                "{node}'s action {a} was never sent"
            );
        }
    }
    assert_trail_verifies(&nats);
}

#[test]
fn killed_mid_storm_after_a_batchs_state_was_written() {
    killed_mid_storm("alert.persisted", 12, None);
}

/// Aborted once a batch's state is written ahead, before the batch before
/// it is settled: the restart finds the records of both batches.
#[test]
fn killed_mid_storm_after_a_batchs_state_was_written_ahead() {
    killed_mid_storm("alert.persisted_ahead", 2, Some("alert.publishing=300"));
}

/// Aborted once a batch's commands are published ahead, before the batch
/// before it is audited: the restart finds both batches' records, and
/// audits what neither audited.
#[test]
fn killed_mid_storm_after_a_batchs_commands_were_published_ahead() {
    killed_mid_storm("alert.published_ahead", 1, Some("alert.appending=300"));
}

#[test]
fn killed_mid_storm_after_a_batchs_commands_were_published() {
    killed_mid_storm("alert.published", 12, None);
}

#[test]
fn killed_mid_storm_after_a_batch_was_audited() {
    killed_mid_storm("alert.audited", 12, None);
}

/// A leader stopped (SIGTERM) while the bus is away stops without waiting
/// on the bus, and says what it could not keep: the offline effects it
/// decided for nodes that went silent with the bus, whose state it could
/// not write, go with it. Before, each step of a clean stop (the
/// summaries, the state, the effects, the lease) and each tick taken
/// before the stop waited for its request's time-out, 20 s and more, and
/// the stop claimed that what waited was saved.
#[test]
fn a_leader_stopped_while_the_bus_is_away_stops_without_waiting_for_it() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), "");
    let mut coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let rt = runtime();
    let nodes: Arc<Vec<NodeName>> = Arc::new((0..2).map(node_name).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let beats = rt.spawn(beat(
        nats.url(),
        nodes.clone(),
        Arc::new(AtomicBool::new(false)),
        stop.clone(),
    ));
    wait_for(Duration::from_secs(30), "2 healthy nodes", || {
        status(&nats).filter(|s| s["summary"]["nodes"]["healthy"] == 2)
    });
    nats.kill();
    wait_for(
        Duration::from_secs(30),
        "the coordinator decides the silent nodes are offline, and cannot save it",
        || {
            let log = coordinator.log_text();
            (log.contains("bus connection lost; reconnecting")
                && log.contains("node state not saved: the bus is away"))
            .then_some(())
        },
    );
    let exit = coordinator.sigterm();
    let log = coordinator.log_text();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(
        log.contains(
            "stopping with the bus away: effects decided while no state could be written are lost"
        ),
        "{log}"
    );
    assert!(log.contains("coordinator stopped"), "{log}");
    stop.store(true, Ordering::SeqCst);
    nats.restart();
    rt.block_on(beats).unwrap();
}

/// Who leads once the bus is back, after a leader stopped while it was
/// away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextLeader {
    /// A standby, running all along, that wins the lease once the stopped
    /// leader's ages out.
    Standby,
    /// The stopped coordinator, started again once the bus is back; then
    /// stopped cleanly and started once more, so a second takeover finds
    /// the nodes offline already.
    Restarted,
}

/// Nodes that go silent with the bus and stay silent.
const STAYED_SILENT: [usize; 2] = [0, 1];
/// Nodes that go silent with the bus and beat again once it is back.
const CAME_BACK: [usize; 2] = [2, 3];

/// The audited `heartbeat_missing` alerts of `node`: (severity, term of
/// the record) of each.
fn heartbeat_missing_of(records: &[Value], node: &str) -> Vec<(String, Option<u64>)> {
    audit_events(records, "alert")
        .iter()
        .filter(|r| {
            let a = &r["entry"]["data"]["alert"];
            a["type"] == "heartbeat_missing" && a["node"] == node
        })
        .map(|r| {
            (
                r["entry"]["data"]["alert"]["severity"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["entry"]["term"].as_u64(),
            )
        })
        .collect()
}

/// The leader as `skos status` names it: (holder, term).
fn leader_of(nats: &NatsServer) -> Option<(String, u64)> {
    let s = status(nats)?;
    let l = &s["leader"];
    Some((l["holder"].as_str()?.to_string(), l["term"].as_u64()?))
}

/// A leader stopped (SIGTERM) while the bus is away loses the offline
/// alerts it decided for the nodes that went silent with the bus (no node
/// state could be written). The next leader, once the bus is back, starts
/// from the saved node records: every known node counts as seen when it
/// takes over, so a node that stays silent goes offline one heartbeat
/// timeout later, and its offline alert is raised and audited then, once,
/// under the new term; the nodes that beat again are never marked
/// offline. A second takeover (a clean restart) finds the same nodes
/// offline already (their alerts open in their records): none is raised
/// or audited again.
fn offline_alerts_lost_with_a_leader_stopped_while_the_bus_is_away_are_raised_once_by(
    next: NextLeader,
) {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    // The lease outlasts the wait for the offline decisions and the stop
    // (a leader trusts its last renewal for 0.8 of it, renewed every
    // third): the first coordinator is still the leader when stopped.
    std::fs::write(
        &cfg,
        "coordinator:\n  heartbeat_timeout: 2\n  leader_lease_seconds: 20\n",
    )
    .unwrap();
    let mut first = coordinator(&nats, &cfg, work.path(), "coordinator");
    let (holder, term) = wait_for(Duration::from_secs(30), "a leader", || leader_of(&nats));
    let _standby = (next == NextLeader::Standby).then(|| {
        let standby = coordinator(&nats, &cfg, work.path(), "standby");
        wait_for(Duration::from_secs(30), "the standby waits", || {
            standby
                .log_text()
                .contains("standby: another coordinator leads")
                .then_some(())
        });
        standby
    });

    let rt = runtime();
    let names = |ix: &[usize]| -> Arc<Vec<NodeName>> {
        Arc::new(ix.iter().map(|&i| node_name(i)).collect())
    };
    let stayed: Arc<Vec<NodeName>> = names(&STAYED_SILENT);
    let came_back: Arc<Vec<NodeName>> = names(&CAME_BACK);
    let silent_for_good = Arc::new(AtomicBool::new(false));
    let away = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let beats = [
        rt.spawn(beat(
            nats.url(),
            stayed.clone(),
            silent_for_good.clone(),
            stop.clone(),
        )),
        rt.spawn(beat(
            nats.url(),
            came_back.clone(),
            away.clone(),
            stop.clone(),
        )),
    ];
    let all = STAYED_SILENT.len() + CAME_BACK.len();
    wait_for(Duration::from_secs(30), "every node healthy", || {
        status(&nats).filter(|s| s["summary"]["nodes"]["healthy"] == all)
    });

    // Every node goes silent with the bus; the leader decides they are
    // offline and cannot save it, and is stopped before the bus is back.
    silent_for_good.store(true, Ordering::SeqCst);
    away.store(true, Ordering::SeqCst);
    nats.kill();
    wait_for(
        Duration::from_secs(30),
        "the leader decides the silent nodes are offline, and cannot save it",
        || {
            let log = first.log_text();
            (log.contains("bus connection lost; reconnecting")
                && log.contains("node state not saved: the bus is away"))
            .then_some(())
        },
    );
    // The nodes fell silent within one heartbeat round (0.5 s): by now
    // every one is past its deadline.
    std::thread::sleep(Duration::from_secs(1));
    let exit = first.sigterm();
    let log = first.log_text();
    assert!(exit.success(), "{exit:?}\n{log}");
    let lost = log
        .lines()
        .find(|l| l.contains("stopping with the bus away: effects decided while no state could be written are lost"))
        .unwrap_or_else(|| panic!("the stop says nothing is lost:\n{log}"));
    assert!(
        lost.contains(&format!("unsaved={all}")),
        "every node's offline alert is lost with the leader: {lost}"
    );
    let stopped_at = Instant::now();
    nats.restart();
    away.store(false, Ordering::SeqCst);
    // Nothing of it reached the trail.
    let before = audit(&nats);
    for i in STAYED_SILENT.iter().chain(&CAME_BACK) {
        let node = node_name(*i);
        assert!(
            heartbeat_missing_of(&before, node.as_str()).is_empty(),
            "{node}'s offline alert audited by the stopped leader"
        );
    }

    let mut again = (next == NextLeader::Restarted)
        .then(|| coordinator(&nats, &cfg, work.path(), "coordinator-again"));
    let (holder2, term2) = wait_for(Duration::from_secs(60), "the next leader", || {
        leader_of(&nats).filter(|(h, _)| h != &holder)
    });
    assert!(term2 > term, "new term {term2} must exceed {term}");
    eprintln!(
        "{next:?} leads {:?} after the stop (lease 20 s)",
        stopped_at.elapsed()
    );
    let offline = |records: &[Value], node: &NodeName| -> Vec<Option<u64>> {
        heartbeat_missing_of(records, node.as_str())
            .into_iter()
            .filter(|(severity, _)| severity == "critical")
            .map(|(_, term)| term)
            .collect()
    };
    wait_for(
        Duration::from_secs(30),
        "the silent nodes' offline alerts audited",
        || {
            let r = audit(&nats);
            stayed
                .iter()
                .all(|n| !offline(&r, n).is_empty())
                .then_some(())
        },
    );
    // A few heartbeat timeouts more: a second alert, or a node that beats
    // taken for offline, would show by then.
    std::thread::sleep(Duration::from_secs(6));
    let check = |records: &[Value], term: u64| {
        for node in stayed.iter() {
            assert_eq!(
                offline(records, node),
                vec![Some(term)],
                "{node}'s offline alert: audited once, by the next leader"
            );
            let others: Vec<_> = heartbeat_missing_of(records, node.as_str())
                .into_iter()
                .filter(|(s, _)| s != "critical")
                .collect();
            assert!(others.is_empty(), "{node} was never back: {others:?}");
        }
        for node in came_back.iter() {
            let alerts = heartbeat_missing_of(records, node.as_str());
            assert!(
                alerts.is_empty(),
                "{node} beat again before the next leader: never offline, {alerts:?}"
            );
        }
        let s = status(&nats).unwrap();
        for node in stayed.iter() {
            assert_eq!(
                common::node(&s, node.as_str()).map(|n| n["status"].clone()),
                Some(Value::from("offline")),
                "{node} in status"
            );
        }
        for node in came_back.iter() {
            assert_eq!(
                common::node(&s, node.as_str()).map(|n| n["status"].clone()),
                Some(Value::from("healthy")),
                "{node} in status"
            );
        }
    };
    check(&audit(&nats), term2);

    if let Some(second) = again.as_mut() {
        // A clean stop, the bus there: the lease is released and the
        // coordinator started again takes over at once. The silent nodes'
        // offline alerts are open in their records: they stay offline,
        // not raised again.
        let exit = second.sigterm();
        assert!(exit.success(), "{exit:?}\n{}", second.log_text());
        let third = coordinator(&nats, &cfg, work.path(), "coordinator-third");
        let (_, term3) = wait_for(Duration::from_secs(60), "the third leader", || {
            leader_of(&nats).filter(|(h, _)| h != &holder2)
        });
        assert!(term3 > term2, "new term {term3} must exceed {term2}");
        wait_for(
            Duration::from_secs(30),
            "the silent nodes still offline under the third leader",
            || {
                status(&nats).filter(|s| {
                    stayed.iter().all(|n| {
                        common::node(s, n.as_str()).is_some_and(|x| x["status"] == "offline")
                    })
                })
            },
        );
        std::thread::sleep(Duration::from_secs(6));
        check(&audit(&nats), term2);
        let log = third.log_text();
        for node in stayed.iter() {
            assert!(
                !log.lines().any(|l| l.contains("raising alert")
                    && l.contains(&format!("node={node}"))
                    && l.contains("heartbeat_missing")),
                "{node}'s offline alert raised again by the third leader:\n{log}"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for b in beats {
        rt.block_on(b).unwrap();
    }
    assert_trail_verifies(&nats);
}

#[test]
fn offline_alerts_a_leader_stopped_with_the_bus_away_lost_are_raised_once_by_the_standby() {
    offline_alerts_lost_with_a_leader_stopped_while_the_bus_is_away_are_raised_once_by(
        NextLeader::Standby,
    );
}

#[test]
fn offline_alerts_a_leader_stopped_with_the_bus_away_lost_are_raised_once_when_it_starts_again() {
    offline_alerts_lost_with_a_leader_stopped_while_the_bus_is_away_are_raised_once_by(
        NextLeader::Restarted,
    );
}

/// An agent whose node heats up while the bus is away keeps the alert the
/// bus refused and sends it, in order, once the bus is back: the node is
/// throttled on that very alert (raised before the server came back), not
/// on a report repeated after the antibody's cooldown (60 s here).
#[test]
fn an_alert_raised_while_the_bus_is_away_is_sent_once_it_is_back() {
    use skos_testsupport::cpufreq::fake_cpufreq;
    use skos_testsupport::sysfs::FakeSysfs;
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, 800_000, 3_600_000);
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let agent = agent(&nats, &cfg, work.path(), sys.root(), "n1");
    wait_for(Duration::from_secs(30), "n1 joined", || {
        audit_events(&audit(&nats), "node").first().cloned()
    });

    nats.kill();
    cpu.heat(87.0);
    wait_for(Duration::from_secs(60), "the alert kept", || {
        agent
            .log_text()
            .contains("alert not sent; kept and sent again in order")
            .then_some(())
    });
    let back = chrono::Utc::now();
    nats.restart();
    let records = wait_for(Duration::from_secs(60), "the throttle", || {
        let r = audit(&nats);
        r.iter()
            .any(|r| result_is(r, "throttle_50", "succeeded"))
            .then_some(r)
    });
    let alerts = audit_events(&records, "alert");
    let critical = alerts
        .iter()
        .find(|a| a["entry"]["data"]["alert"]["severity"] == "critical")
        .expect("the critical alert audited");
    let raised = chrono::DateTime::parse_from_rfc3339(
        critical["entry"]["data"]["alert"]["timestamp"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        raised < back,
        "the alert handled is the one raised while the bus was away: {critical}"
    );
}
