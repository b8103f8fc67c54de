//! The loop breaker end to end: `skos coordinator` and `skos agent` (with
//! `loop_breaker`) against a real nats-server, an application using the
//! `skos-chain` crate, and real runaway shell scripts.
//!
//! The agent denies a step over a limit at once; the coordinator audits
//! the `loop` alert (with the chain's last steps) and answers from the
//! loop table: `circuit_break` for depth, cycles and process groups,
//! `reset_chain` for iterations.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::Value;
use skos_chain::{Chain, ChainClient, Control, Decision, Error as ChainError};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::procgroup::ProcGroup;

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    nats: NatsServer,
    work: tempfile::TempDir,
    _coordinator: Proc,
    _agent: Proc,
}

impl Stack {
    /// Coordinator and agent of node `nova`; `loop_section` is the body of
    /// the config's `loop:` section (indented two spaces).
    fn start(loop_section: &str) -> Stack {
        let nats = NatsServer::start();
        let work = tempfile::tempdir().unwrap();
        let trust = trust_section(work.path());
        let cfg = work.path().join("config.yaml");
        std::fs::write(
            &cfg,
            format!(
                "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [loop_breaker]\n\
coordinator:\n  heartbeat_timeout: 5\n  command_deadline: 30\n\
loop:\n  cool_off_seconds: 120\n{loop_section}\n{trust}"
            ),
        )
        .unwrap();
        let mut c = skos();
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .env("NATS_URL", nats.url());
        let coordinator = Proc::spawn(c, work.path(), "coordinator");
        let mut a = skos();
        a.arg("agent")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(work.path().join("agent"))
            .env("NATS_URL", nats.url())
            .env("NODE_NAME", "nova");
        let agent = Proc::spawn(a, work.path(), "agent-nova");
        Stack {
            nats,
            work,
            _coordinator: coordinator,
            _agent: agent,
        }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    fn audit(&self) -> Vec<Value> {
        let out = run({
            let mut c = skos();
            c.args(["audit", "tail", "--json", "-n", "1000000"])
                .env("NATS_URL", self.nats.url());
            c
        });
        json_lines(&out)
    }

    /// Waits until the coordinator has received a heartbeat from nova at
    /// or after `after` (its clock and the test's are the same machine's).
    fn heard_after(&self, after: chrono::DateTime<chrono::Utc>) {
        wait_for(WAIT, "a heartbeat from nova after the steps", || {
            let out = run({
                let mut c = skos();
                c.args(["status", "--json"])
                    .env("NATS_URL", self.nats.url());
                c
            });
            let s: Value = serde_json::from_slice(&out.stdout).ok()?;
            s["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["name"] == "nova")
                .filter_map(|n| n["last_seen"].as_str())
                .filter_map(skos_core::timefmt::parse)
                .any(|t| t >= after)
                .then_some(())
        });
    }

    /// Wait for the audit trail to hold a result of `action` for `sensor`'s
    /// problem; returns the whole trail.
    fn wait_result(&self, action: &str, problem: &str) -> Vec<Value> {
        wait_for(WAIT, &format!("{action} result for {problem}"), || {
            let records = self.audit();
            let commands: Vec<String> = audit_events(&records, "command")
                .iter()
                .filter(|c| {
                    c["entry"]["data"]["command"]["problem"] == problem
                        && c["entry"]["data"]["command"]["action_type"] == action
                })
                .filter_map(|c| {
                    c["entry"]["data"]["command"]["action_id"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect();
            audit_events(&records, "result")
                .iter()
                .any(|r| {
                    let res = &r["entry"]["data"]["result"];
                    res["status"] == "succeeded"
                        && res["action_id"]
                            .as_str()
                            .is_some_and(|id| commands.iter().any(|c| c == id))
                })
                .then_some(records)
        })
    }

    /// A client, once the loop breaker answers.
    async fn client(&self) -> ChainClient {
        let client = ChainClient::connect(&self.nats.url(), "nova")
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        let probe = Chain::new("probe").unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match client.ask(&probe.root("probe").unwrap()).await {
                Ok(_) => return client,
                Err(ChainError::NoResponders { .. }) | Err(ChainError::Timeout { .. }) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the loop breaker never answered"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// The uid this test runs as: the owner of the scripts it starts.
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// The next announcement about `chain` matching `want`.
async fn announced(
    control: &mut futures::stream::BoxStream<'static, Control>,
    chain: &Chain,
    want: impl Fn(&Control) -> bool,
) -> Control {
    tokio::time::timeout(WAIT, async {
        loop {
            let c = control.next().await.expect("control stream ended");
            if chain.apply(&c) && want(&c) {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such announcement for {}", chain.id()))
}

fn loop_alert<'a>(records: &'a [Value], sensor: &str) -> &'a Value {
    records
        .iter()
        .find(|r| {
            r["entry"]["event_type"] == "alert"
                && r["entry"]["data"]["alert"]["type"] == "loop"
                && r["entry"]["data"]["alert"]["details"]["sensor"] == sensor
                && r["entry"]["data"]["alert"]["severity"] != "normal"
        })
        .map(|r| &r["entry"]["data"]["alert"])
        .unwrap_or_else(|| panic!("no loop alert for {sensor} in the audit trail"))
}

#[test]
fn a_chain_that_recurses_forever_is_denied_at_depth_11_and_its_circuit_opens() {
    let stack = Stack::start("");
    rt().block_on(async {
        let client = stack.client().await;
        let mut control = client.control().await.unwrap();
        let chain = Chain::new("recurse-forever").unwrap();
        let mut step = chain.root("recurse").unwrap();
        let (depth, d): (u32, Decision) = loop {
            let d = client.ask(&step).await.unwrap();
            if !d.allowed() {
                break (step.depth, d);
            }
            assert!(step.depth < 50, "never denied");
            step = chain.child(&step, "recurse").unwrap();
        };
        assert_eq!(depth, 11);
        assert_eq!(d.reason.as_deref(), Some("depth_exceeded"));
        assert_eq!(d.circuit, "open");
        assert_eq!(d.steps, 10, "the denied step did not count");

        // The coordinator's decision (depth_exceeded → circuit_break)
        // re-opens the circuit under its command's id.
        let ctl = announced(&mut control, &chain, |c| {
            c.event == "circuit_open" && c.source == "coordinator"
        })
        .await;
        assert!(ctl.action_id.is_some());
        assert!(ctl.until.is_some());
        let d = client.ask(&chain.root("recurse").unwrap()).await.unwrap();
        assert!(!d.allowed());
        assert_eq!(d.reason.as_deref(), Some("circuit_open"));
    });

    let records = stack.wait_result("circuit_break", "loop:chain:recurse-forever");
    // The open circuit is in `skos status`, beside the coordinator's.
    wait_for(WAIT, "the chain's circuit among the open circuits", || {
        let out = run({
            let mut c = skos();
            c.args(["status"]).env("NATS_URL", stack.nats.url());
            c
        });
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("nova loop:chain:recurse-forever loop breaker (open)")
            .then_some(())
    });
    let alert = loop_alert(&records, "chain:recurse-forever");
    assert_eq!(alert["details"]["condition"], "depth_exceeded");
    let evidence = alert["details"]["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 10, "the last steps, as configured");
    assert_eq!(evidence.last().unwrap()["depth"], 11);
    assert_eq!(evidence.last().unwrap()["verdict"], "deny");
    let decision = audit_events(&records, "decision")
        .into_iter()
        .find(|d| d["entry"]["data"]["problem"] == "loop:chain:recurse-forever")
        .expect("decision audited");
    assert_eq!(decision["entry"]["data"]["actions"][0], "circuit_break");
}

#[test]
fn a_ping_pong_between_two_steps_is_a_cycle_long_before_the_iteration_limit() {
    let stack = Stack::start("");
    rt().block_on(async {
        let client = stack.client().await;
        let mut control = client.control().await.unwrap();
        let chain = Chain::new("ping-pong").unwrap();
        let mut step = chain.root("ask:service-a").unwrap();
        let d = loop {
            let d = client.ask(&step).await.unwrap();
            if !d.allowed() {
                break d;
            }
            let next = if step.signature == "ask:service-a" {
                "ask:service-b"
            } else {
                "ask:service-a"
            };
            step = chain.next(&step, next).unwrap();
        };
        assert_eq!(d.reason.as_deref(), Some("cycle"), "{d:?}");
        assert!(
            step.iteration < 100,
            "caught at iteration {}",
            step.iteration
        );
        assert_eq!(step.iteration, 6, "A→B three times");
        assert!(
            d.message.contains("ask:service-a → ask:service-b"),
            "{}",
            d.message
        );
        announced(&mut control, &chain, |c| {
            c.event == "circuit_open" && c.source == "coordinator"
        })
        .await;
    });
    let records = stack.wait_result("circuit_break", "loop:chain:ping-pong");
    assert_eq!(
        loop_alert(&records, "chain:ping-pong")["details"]["condition"],
        "cycle"
    );
}

#[test]
fn a_chain_that_legitimately_runs_90_iterations_is_not_touched() {
    let stack = Stack::start("");
    rt().block_on(async {
        let client = stack.client().await;
        let chain = Chain::new("ninety").unwrap();
        let mut step = chain.root("fetch_page").unwrap();
        for i in 1..=90 {
            let d = client.ask(&step).await.unwrap();
            assert!(d.allowed(), "iteration {i}: {d:?}");
            assert_eq!(d.steps, i);
            assert_eq!(d.circuit, "closed");
            if i < 90 {
                step = chain.next(&step, "fetch_page").unwrap();
            }
        }
    });
    // Proof of time: nova is heard two seconds after the last step, so the
    // chain service's one-second tick (cool-offs, idle chains) has run
    // since, and anything it had to say about `ninety` is queued.
    stack.heard_after(chrono::Utc::now() + chrono::Duration::seconds(2));
    rt().block_on(async {
        let client = stack.client().await;
        // Then a marker: another chain that breaks the depth limit. The
        // agent queues its alerts in order through one outbox and the
        // coordinator audits them in order, so once the marker's decision
        // is carried out, an alert about `ninety` would be in the trail too.
        let marker = Chain::new("marker").unwrap();
        let mut step = marker.root("recurse").unwrap();
        let d = loop {
            let d = client.ask(&step).await.unwrap();
            if !d.allowed() {
                break d;
            }
            step = marker.child(&step, "recurse").unwrap();
        };
        assert_eq!(d.reason.as_deref(), Some("depth_exceeded"));
    });
    let records = stack.wait_result("circuit_break", "loop:chain:marker");
    assert_eq!(
        loop_alert(&records, "chain:marker")["details"]["condition"],
        "depth_exceeded"
    );
    let about_ninety: Vec<&Value> = records
        .iter()
        .filter(|r| r["entry"].to_string().contains("ninety"))
        .collect();
    assert!(
        about_ninety.is_empty(),
        "the healthy chain was alerted on or acted upon: {about_ninety:#?}"
    );
}

#[test]
fn after_reset_chain_the_same_chain_id_starts_again_from_zero() {
    let stack = Stack::start("");
    rt().block_on(async {
        let client = stack.client().await;
        let mut control = client.control().await.unwrap();
        let chain = Chain::new("batch-7").unwrap();
        let mut step = chain.root("process_item").unwrap();
        let d = loop {
            let d = client.ask(&step).await.unwrap();
            if !d.allowed() {
                break d;
            }
            step = chain.next(&step, "process_item").unwrap();
        };
        assert_eq!(step.iteration, 101);
        assert_eq!(d.reason.as_deref(), Some("iterations_exceeded"));

        // iterations_exceeded → reset_chain: announced, and the client's
        // own count goes back to zero with it.
        let ctl = announced(&mut control, &chain, |c| c.event == "reset").await;
        assert_eq!(ctl.source, "coordinator");
        assert_eq!(ctl.generation, 1);
        assert_eq!(chain.iteration(), 0);
        let first = chain.root("process_item").unwrap();
        assert_eq!(first.iteration, 1);
        let d = client.ask(&first).await.unwrap();
        assert!(d.allowed(), "{d:?}");
        assert_eq!((d.steps, d.generation), (1, 1));
        assert_eq!(d.circuit, "closed");
    });
    let records = stack.wait_result("reset_chain", "loop:chain:batch-7");
    assert_eq!(
        loop_alert(&records, "chain:batch-7")["details"]["condition"],
        "iterations_exceeded"
    );
}

/// Two copies one level deeper every `delay` seconds, up to level 6.
const FORK: &str = r#"#!/bin/sh
dir=$1; level=$2; delay=$3
echo "$level" >> "$dir/levels"
sleep "$delay"
if [ "$level" -lt 6 ]; then
  sh "$dir/fork.sh" "$dir" $((level + 1)) "$delay" &
  sh "$dir/fork.sh" "$dir" $((level + 1)) "$delay" &
fi
sleep 60
"#;

#[test]
fn a_fork_happy_script_is_stopped_at_the_configured_depth() {
    let scripts = tempfile::tempdir().unwrap();
    let d = scripts.path();
    std::fs::write(d.join("fork.sh"), FORK).unwrap();
    let stack = Stack::start(&format!(
        "  process_groups:\n    - {{name: forky, uid: {}, command: '*{}/fork.sh*', max_depth: 3, max_descendants: 1000, grace_seconds: 1, cool_off_seconds: 120}}",
        my_uid(),
        d.display()
    ));
    // Let the agent take its first look before the script starts.
    wait_for(WAIT, "the agent up", || {
        std::fs::read_to_string(stack.dir().join("agent-nova.log"))
            .ok()
            .filter(|l| l.contains("agent started"))
    });
    let group = ProcGroup::spawn_sh(&d.join("fork.sh"), &[d.to_str().unwrap(), "0", "1.5"]);

    let records = stack.wait_result("circuit_break", "loop:proc:forky");
    let alert = loop_alert(&records, "proc:forky");
    assert_eq!(alert["details"]["condition"], "depth_exceeded");
    assert_eq!(alert["details"]["value"], 4);
    assert_eq!(alert["details"]["limit"], 3);
    let evidence = alert["details"]["evidence"].as_array().unwrap();
    assert!(!evidence.is_empty());
    // The audit trail names the program, never its arguments.
    assert!(
        evidence
            .iter()
            .all(|e| e["command"] == "sh fork.sh" || e["command"] == "sleep"),
        "{evidence:?}"
    );
    assert!(
        evidence.iter().all(|e| e.get("cmdline").is_none()),
        "{evidence:?}"
    );
    let trail = serde_json::to_string(&records).unwrap();
    assert!(
        !trail.contains(&format!("{}/fork.sh", d.display())),
        "a command line reached the audit trail"
    );
    // Stopped, then terminated after the grace: the whole tree goes.
    wait_for(WAIT, "the fork tree gone", || {
        group.alive().is_empty().then_some(())
    });
    let levels = std::fs::read_to_string(d.join("levels")).unwrap();
    let deepest = levels
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .max()
        .unwrap();
    assert!(
        deepest <= 4,
        "the tree reached level {deepest}; it was caught at depth 4"
    );
}

const SUPERVISOR: &str = r#"#!/bin/sh
while true; do
  sh "$1/crasher.sh" "$1"
  sleep 0.2
done
"#;

const CRASHER: &str = r#"#!/bin/sh
echo start >> "$1/starts"
sleep 0.5
exit 1
"#;

#[test]
fn a_process_respawned_by_a_loop_is_caught_as_a_crash_loop() {
    let scripts = tempfile::tempdir().unwrap();
    let d = scripts.path();
    std::fs::write(d.join("supervisor.sh"), SUPERVISOR).unwrap();
    std::fs::write(d.join("crasher.sh"), CRASHER).unwrap();
    let stack = Stack::start(&format!(
        "  process_groups:\n    - {{name: crashy, uid: {}, command: '*{}/crasher.sh*', max_respawns: 3, respawn_window_seconds: 60, on_break: stop, cool_off_seconds: 120}}",
        my_uid(),
        d.display()
    ));
    let group = ProcGroup::spawn_sh(&d.join("supervisor.sh"), &[d.to_str().unwrap()]);

    let records = stack.wait_result("circuit_break", "loop:proc:crashy");
    let alert = loop_alert(&records, "proc:crashy");
    assert_eq!(alert["details"]["condition"], "crash_loop");
    assert!(alert["details"]["respawns"].as_array().unwrap().len() >= 4);
    // The crasher is frozen for the cool-off, so the loop stands still.
    wait_for(WAIT, "the crasher stopped", || {
        group
            .alive()
            .iter()
            .any(|m| m.state == 'T' && m.cmdline.contains("crasher.sh"))
            .then_some(())
    });
    let frozen = std::fs::read_to_string(d.join("starts"))
        .unwrap()
        .lines()
        .count();
    std::thread::sleep(Duration::from_secs(2));
    let later = std::fs::read_to_string(d.join("starts"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(later, frozen, "the loop went on under an open circuit");
}
