//! A nats-server that lost its store (a disk replaced, a JetStream dir
//! wiped) under a running fleet: every SKOS stream, the lease bucket and
//! the agents' command consumers are gone, while the agents remember the
//! highest coordinator term they saw. The coordinator makes them all again
//! and leads in a term above any seen: from its own memory when it ran
//! through the loss, from the agents' refusals when it started after it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::sysfs::FakeSysfs;

/// [`fast_config`], with the agent reporting an unchanged critical level
/// again after 3 s (so a refused alert is raised again soon).
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 5\n  verify_within: 5\n  command_deadline: 30\n\
thermal:\n  clear_for: 1\n  cooldown: 3\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{}",
        trust_section(dir)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The `command` records of `action` in the trail, with their terms.
fn command_terms(records: &[Value], action: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|r| {
            r["entry"]["event_type"] == "command"
                && r["entry"]["data"]["command"]["action_type"] == action
        })
        .filter_map(|r| r["entry"]["data"]["command"]["term"].as_u64())
        .collect()
}

/// Wait for a `result` of `action` succeeded whose command's term is above
/// `above`; the trail then.
fn healed_above(nats: &NatsServer, action: &str, above: u64, what: &str) -> (u64, Vec<Value>) {
    wait_for(Duration::from_secs(90), what, || {
        let records = audit(nats);
        let terms = command_terms(&records, action);
        let ok = records.iter().any(|r| result_is(r, action, "succeeded"));
        let term = terms.into_iter().filter(|t| *t > above).max()?;
        ok.then_some((term, records))
    })
}

/// Whether `SKOS_STATE` holds a record under `key`, read as an operator
/// would (making nothing).
fn state_of(nats: &NatsServer, key: &str) -> Option<()> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut opts = skos_bus::NatsOptions::new(nats.url(), "reader");
        opts.create_streams = false;
        let bus = skos_bus::NatsBus::connect(&opts).await.ok()?;
        let stream = bus
            .jetstream()
            .get_stream(skos_bus::subjects::STREAM_STATE)
            .await
            .ok()?;
        stream
            .get_last_raw_message_by_subject(&skos_bus::subjects::state(key))
            .await
            .ok()
            .filter(|m| !m.payload.is_empty())
            .map(drop)
    })
}

fn wipe(nats: &mut NatsServer) {
    nats.kill();
    std::fs::remove_dir_all(nats.store_dir()).unwrap();
    nats.restart();
}

#[test]
fn a_server_that_lost_its_store_is_healed_through_in_a_term_above_any_seen() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path());
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, 800_000, 3_600_000);
    let mut first = coordinator(&nats, &cfg, work.path(), "coordinator-a");
    let agent_log = agent(&nats, &cfg, work.path(), sys.root(), "n1");
    // A quiet node: nothing it does writes its state after the loss.
    let quiet = FakeSysfs::new();
    quiet.coretemp(45.0, &[44.0]);
    fake_cpufreq(quiet.root(), 2, 800_000, 3_600_000);
    let _n2 = agent(&nats, &cfg, work.path(), quiet.root(), "n2");
    wait_for(Duration::from_secs(30), "n1 and n2 joined", || {
        (audit_events(&audit(&nats), "node").len() >= 2).then_some(())
    });
    // A second coordinator's term is above the first's: the agent
    // remembers it.
    std::thread::sleep(Duration::from_secs(4));
    assert!(first.sigterm().success());
    let mut second = coordinator(&nats, &cfg, work.path(), "coordinator-b");
    cpu.heat(87.0);
    let (before, _) = healed_above(&nats, "throttle_50", 1, "a throttle in a term above 1");
    cpu.heat(50.0);
    wait_for(Duration::from_secs(60), "the reset", || {
        audit(&nats)
            .iter()
            .any(|r| result_is(r, "reset_throttle", "succeeded"))
            .then_some(())
    });

    // Lost under the running coordinator: it makes everything again and
    // leads in the term after its own.
    wipe(&mut nats);
    cpu.heat(87.0);
    let (through, records) = healed_above(
        &nats,
        "throttle_50",
        before,
        "a throttle after the store was lost under the coordinator",
    );
    assert_eq!(through, before + 1, "the term after its own");
    assert_eq!(
        records[0]["entry"]["event_type"], "audit_trail_replaced",
        "the trail's loss is recorded first: {}",
        records[0]
    );
    // Made again by whoever found them gone first (here, where agents may
    // make streams, often the agent).
    let logs = format!("{}{}", second.log_text(), agent_log.log_text());
    assert!(
        logs.contains("SKOS streams were gone") && logs.contains("leader lease bucket was gone"),
        "{logs}"
    );
    // Every node's state is written again, the quiet one's too (the
    // stream is looked at every ten seconds).
    wait_for(
        Duration::from_secs(60),
        "every node's state written again",
        || {
            second
                .log_text()
                .contains("every node's state is written again")
                .then_some(())
        },
    );
    wait_for(Duration::from_secs(60), "n2's state written again", || {
        state_of(&nats, "node_n2")
    });
    cpu.heat(50.0);
    wait_for(Duration::from_secs(60), "the reset", || {
        audit(&nats)
            .iter()
            .any(|r| result_is(r, "reset_throttle", "succeeded"))
            .then_some(())
    });

    // Lost while no coordinator runs, and a new one starts with nothing to
    // go by: its first term is below the agent's, whose refusal says which
    // term to pass; it leads again above it, and the node is healed.
    second.sigkill();
    wipe(&mut nats);
    let third = coordinator(&nats, &cfg, work.path(), "coordinator-c");
    cpu.heat(87.0);
    let (after, records) = healed_above(
        &nats,
        "throttle_50",
        through,
        "a throttle from a coordinator started after the loss",
    );
    assert!(after > through, "{after} after {through}");
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["entry"]["event_type"] == "result"
                && r["entry"]["data"]["result"]["details"]["reason"] == "stale_term"
        })
        .collect();
    assert!(!refused.is_empty(), "the stale term was refused first");
    assert_eq!(
        refused[0]["entry"]["data"]["result"]["details"]["highest_term"],
        through
    );
    assert!(
        audit_events(&records, "breaker").is_empty(),
        "a stale term is no failure"
    );
    assert!(
        third
            .log_text()
            .contains("stepping down to lead again in a higher term"),
        "{}",
        third.log_text()
    );
}
