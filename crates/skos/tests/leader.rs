//! Several coordinators on one bus: one leader (a lease in JetStream), the
//! others stand by; every command is executed once and audited once; a
//! killed leader is replaced within the lease time, under a higher term.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;
const LEASE: f64 = 2.0;

struct Node {
    name: String,
    sys: FakeSysfs,
    cpu: HwmonHandle,
}

fn node(name: &str) -> Node {
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    Node {
        name: name.into(),
        sys,
        cpu,
    }
}

fn caps_at(n: &Node, khz: u64) -> bool {
    (0..2).all(|p| read_khz(n.sys.root(), p) == khz)
}

/// The leader as `skos status` names it: (holder, term).
fn leader(nats: &NatsServer) -> Option<(String, u64)> {
    let s = status(nats)?;
    let l = &s["leader"];
    Some((l["holder"].as_str()?.to_string(), l["term"].as_u64()?))
}

/// The pid in a holder id (`<host>:<pid>:<random>`).
fn pid_of(holder: &str) -> u32 {
    holder.split(':').nth(1).unwrap().parse().unwrap()
}

/// Heat every node, wait for its 50 % cap, cool it, wait for the cap to be
/// lifted.
fn heat_and_cool(nodes: &[Node]) {
    for n in nodes {
        n.cpu.heat(87.0);
    }
    for n in nodes {
        wait_for(
            Duration::from_secs(40),
            &format!("{} capped at 50 %", n.name),
            || caps_at(n, MAX / 2).then_some(()),
        );
    }
    for n in nodes {
        n.cpu.heat(50.0);
    }
    for n in nodes {
        wait_for(
            Duration::from_secs(40),
            &format!("{} cap lifted", n.name),
            || caps_at(n, MAX).then_some(()),
        );
    }
}

/// The trail once every command in it has a result audited: a cap is
/// lifted on the node before the reset's result reaches the trail.
fn answered(nats: &NatsServer) -> Vec<Value> {
    wait_for(Duration::from_secs(30), "every command answered", || {
        let records = audit(nats);
        let ids = |event: &str, field: &str| -> BTreeSet<String> {
            audit_events(&records, event)
                .iter()
                .filter_map(|r| r["entry"]["data"][field]["action_id"].as_str())
                .map(str::to_string)
                .collect()
        };
        ids("command", "command")
            .is_subset(&ids("result", "result"))
            .then_some(records)
    })
}

/// Every command in the trail: audited once, answered by one result that
/// is not a refusal, executed once.
fn every_command_once(records: &[Value]) {
    for c in audit_events(records, "command") {
        assert!(
            c["entry"]["data"]["command"]["term"].as_u64().is_some(),
            "command without a term: {c}"
        );
    }
    let commands = audited_commands(records);
    assert!(!commands.is_empty(), "no command in the trail");
    for (id, n) in &commands {
        assert_eq!(*n, 1, "command {id} audited {n} times");
    }
    let mut results: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in audit_events(records, "result") {
        let res = &r["entry"]["data"]["result"];
        results
            .entry(res["action_id"].as_str().unwrap().to_string())
            .or_default()
            .push(res["status"].as_str().unwrap().to_string());
    }
    for (id, statuses) in &results {
        assert!(commands.contains_key(id), "result for unknown command {id}");
        assert_eq!(
            statuses,
            &vec!["succeeded".to_string()],
            "command {id} answered {statuses:?}"
        );
    }
    for id in commands.keys() {
        assert!(results.contains_key(id), "command {id} never answered");
    }
}

/// Nodes are heated and cooled seconds apart, cycle after cycle: a flap,
/// by design (see `flapping.rs`); flap detection is off here, where each
/// cycle must be healed by whichever coordinator leads.
#[test]
fn three_coordinators_elect_one_leader_and_a_killed_leader_is_replaced() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 4\n  verify_within: 10\n  command_deadline: 30\n  leader_lease_seconds: {LEASE}\n  flap_start_changes: 0\n\
thermal:\n  clear_for: 1\n  cooldown: 60\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{}",
            trust_section(work.path())
        ),
    )
    .unwrap();
    let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| node(n)).collect();
    let mut coords: Vec<Proc> = (0..3)
        .map(|i| coordinator(&nats, &cfg, work.path(), &format!("coordinator-{i}")))
        .collect();
    let _agents: Vec<Proc> = nodes
        .iter()
        .map(|n| agent(&nats, &cfg, work.path(), n.sys.root(), &n.name))
        .collect();
    wait_for(Duration::from_secs(40), "three healthy nodes", || {
        status(&nats).filter(|s| {
            nodes
                .iter()
                .all(|n| common::node(s, &n.name).is_some_and(|x| x["status"] == "healthy"))
        })
    });
    let (holder, term) = wait_for(Duration::from_secs(10), "a leader in status", || {
        leader(&nats)
    });
    // Status answers from the leader only, every time.
    for _ in 0..5 {
        assert_eq!(leader(&nats), Some((holder.clone(), term)));
    }
    let elected: usize = coords
        .iter()
        .filter(|c| c.log_text().contains("elected leader"))
        .count();
    assert_eq!(elected, 1, "exactly one coordinator leads");

    heat_and_cool(&nodes);
    let records = answered(&nats);
    every_command_once(&records);
    for n in &nodes {
        let resets = audit_events(&records, "command")
            .iter()
            .filter(|c| {
                c["entry"]["node"] == n.name.as_str()
                    && c["entry"]["data"]["command"]["action_type"] == "reset_throttle"
            })
            .count();
        assert_eq!(resets, 1, "{}: one cooling, one reset_throttle", n.name);
    }

    // Kill the leader: a standby takes over within the lease time (plus
    // its polling and a heartbeat), under a higher term.
    let pid = pid_of(&holder);
    let victim = coords
        .iter()
        .position(|c| c.child.id() == pid)
        .expect("the leader is one of ours");
    coords[victim].sigkill();
    let killed = Instant::now();
    let (holder2, term2) = wait_for(Duration::from_secs(20), "a new leader", || {
        leader(&nats).filter(|(h, _)| h != &holder)
    });
    let took = killed.elapsed();
    assert!(term2 > term, "new term {term2} must exceed {term}");
    assert_ne!(pid_of(&holder2), pid);
    eprintln!("takeover after {took:?} (lease {LEASE} s)");

    heat_and_cool(&nodes);
    let records = answered(&nats);
    every_command_once(&records);
    let leaders = audit_events(&records, "leader");
    let terms: Vec<u64> = leaders
        .iter()
        .filter_map(|l| l["entry"]["data"]["term"].as_u64())
        .collect();
    assert_eq!(terms, vec![term, term2], "one leader record per term");
    // Commands after the takeover carry the new term.
    let late = audit_events(&records, "command");
    let last = late.last().unwrap();
    assert_eq!(last["entry"]["data"]["command"]["term"], term2);
    assert_trail_verifies(&nats);
}

#[test]
fn a_deposed_leaders_audit_append_is_refused() {
    // Two audit writers on one stream: the one of the older term is
    // refused once the newer term has written.
    let nats = NatsServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            skos_bus::NatsBus::connect(&skos_bus::NatsOptions::new(nats.url(), "test"))
                .await
                .unwrap()
        };
        let (a, b) = (connect().await, connect().await);
        let old = skos_bus::AuditLog::open_jetstream(&a).await.unwrap();
        let new = skos_bus::AuditLog::open_jetstream(&b).await.unwrap();
        let entry = |what: &str| {
            skos_core::AuditEntry::new(
                skos_core::AuditEvent::Leader,
                chrono::Utc::now(),
                None,
                "coordinator",
                what,
                Value::Null,
            )
        };
        old.set_term(Some(5));
        new.set_term(Some(9));
        let r = old.append(entry("old leads")).await.unwrap();
        assert_eq!(r.entry.term, Some(5));
        new.append(entry("new leads")).await.unwrap();
        match old.append(entry("old again")).await {
            Err(skos_bus::Error::Deposed { term, newer }) => {
                assert_eq!((term, newer), (5, 9));
            }
            other => panic!("a deposed writer appended: {other:?}"),
        }
        // The newer writer goes on.
        new.append(entry("new again")).await.unwrap();
    });
}
