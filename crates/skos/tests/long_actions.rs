//! Long actions in distributed mode, against a real nats-server: an action
//! that runs well past JetStream's ack wait (10 s) is marked in progress
//! while it runs, so its command is not delivered again, and it is
//! executed, answered and audited once.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_bus::{subjects, NatsBus, NatsOptions};
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::sysfs::FakeSysfs;

/// How long the notify command runs: well past the ack wait, under the
/// 30 s a notify command may take before it is killed.
const RUN_SECONDS: u32 = 26;

/// A hot CPU (critical) is answered by `alert_human` only, and the one
/// channel for a person is a command that leaves a line in `side` when it
/// starts and one when it ends, `RUN_SECONDS` later.
fn config(work: &Path, side: &Path) -> std::path::PathBuf {
    let path = work.join("config.yaml");
    let script = format!(
        "cat >/dev/null; echo start >> '{s}'; sleep {RUN_SECONDS}; echo end >> '{s}'",
        s = side.display()
    );
    std::fs::write(
        &path,
        format!(
            "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [thermal_sentinel, storage_watcher]\n\
coordinator:\n  heartbeat_timeout: 5\n  verify_within: 5\n  command_deadline: 30\n\
thermal:\n  cooldown: 600\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n  \
actions: {{warning: [], critical: [alert_human], emergency: []}}\n\
storage:\n  notify:\n    command: [sh, -c, {script:?}]\n{}",
            trust_section(work)
        ),
    )
    .unwrap();
    path
}

/// Every payload in `SKOS_RESULTS`, as JSON.
fn stored_results(nats: &NatsServer) -> Vec<Value> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bus = tokio::time::timeout(
            Duration::from_secs(10),
            NatsBus::connect(&NatsOptions::new(nats.url(), "test")),
        )
        .await
        .expect("connect timed out")
        .unwrap();
        let stream = bus
            .jetstream()
            .get_stream(subjects::STREAM_RESULTS)
            .await
            .unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
        out
    })
}

fn lines(side: &Path, word: &str) -> usize {
    std::fs::read_to_string(side)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == word)
        .count()
}

#[test]
fn an_action_longer_than_the_ack_wait_runs_and_is_answered_once() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let side = work.path().join("side-effect");
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[55.0]);
    let cfg = config(work.path(), &side);
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let agent = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(30), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });

    cpu.heat(87.0);
    let records = wait_for(Duration::from_secs(30), "alert_human sent", || {
        let r = audit(&nats);
        audit_events(&r, "command")
            .iter()
            .any(|c| c["entry"]["data"]["command"]["action_type"] == "alert_human")
            .then_some(r)
    });
    let sent: Vec<Value> = audit_events(&records, "command")
        .into_iter()
        .filter(|c| c["entry"]["data"]["command"]["action_type"] == "alert_human")
        .collect();
    assert_eq!(sent.len(), 1, "one critical alert, one alert_human");
    let id = sent[0]["entry"]["data"]["command"]["action_id"]
        .as_str()
        .unwrap()
        .to_string();
    let results_of = |records: &[Value]| -> Vec<Value> {
        audit_events(records, "result")
            .into_iter()
            .filter(|r| r["entry"]["data"]["result"]["action_id"] == id.as_str())
            .collect()
    };
    wait_for(Duration::from_secs(10), "the action started", || {
        (lines(&side, "start") == 1).then_some(())
    });
    // It runs past the ack wait more than twice over: a command that was not
    // marked in progress would have been delivered again twice by now.
    wait_for(
        Duration::from_secs(u64::from(RUN_SECONDS) + 30),
        "the action ran to its end",
        || (lines(&side, "end") == 1).then_some(()),
    );
    wait_for(Duration::from_secs(30), "alert_human succeeded", || {
        results_of(&audit(&nats))
            .iter()
            .any(|r| r["entry"]["data"]["result"]["status"] == "succeeded")
            .then_some(())
    });
    // Anything delivered again would be answered at once.
    std::thread::sleep(Duration::from_secs(5));
    let records = audit(&nats);
    let results = results_of(&records);
    let refused: Vec<&Value> = results
        .iter()
        .filter(|r| {
            let status = &r["entry"]["data"]["result"]["status"];
            status == "rejected" || status == "failed"
        })
        .collect();
    assert!(refused.is_empty(), "refused or failed: {refused:#?}");
    assert_eq!(results.len(), 1, "one result audited: {results:#?}");
    assert_eq!(
        results[0]["entry"]["data"]["result"]["status"], "succeeded",
        "{:#}",
        results[0]
    );
    assert!(
        results[0]["entry"]["data"]["result"]["details"]
            .get("replayed")
            .is_none(),
        "the first answer is the job's own"
    );
    // Executed once: one start, one end of the command.
    assert_eq!(lines(&side, "start"), 1, "executed more than once");
    assert_eq!(lines(&side, "end"), 1);
    // Published once.
    let stored: Vec<Value> = stored_results(&nats)
        .into_iter()
        .filter(|r| r["action_id"] == id.as_str())
        .collect();
    assert_eq!(stored.len(), 1, "results stored: {stored:#?}");
    // Marked in progress while it ran, never delivered again.
    let log = agent.log_text();
    assert!(
        log.matches("command still in progress").count() >= 2,
        "no in-progress acks in the agent's log"
    );
    assert!(
        !log.contains("delivered again"),
        "the command was delivered again"
    );
    assert_eq!(log.matches("action finished").count(), 1);
}
