//! An agent with the workloads antibody, through the real runtime on the
//! in-process bus: a signed `workload_start` command starts busybox's
//! HTTP server as a process workload and is answered `succeeded` with the
//! workload healthy; the heartbeats list it running and healthy; a
//! restarted agent finds the same process and does not start a second; a
//! `workload_stop` stops it and the heartbeats say so; a coordinator plan
//! (`failover`) sent to the agent is answered `unsupported`.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use skos_agent::runtime::Agent;
use skos_bus::trust::Signer;
use skos_bus::{Bus, Feed, InProcBus, Subscription};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Command, CommandResult, Heartbeat, ResultStatus};
use skos_core::{NodeName, WorkloadReport, WorkloadState};
use skos_testsupport::podman::{free_port, BUSYBOX};
use skos_testsupport::require;
use tokio::sync::watch;

/// Longest wait for a result or a heartbeat (a start takes well under).
const WAIT: Duration = Duration::from_secs(30);

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

struct Running {
    signer: Signer,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(bus: &Bus, mut cfg: Config, state: &Path) -> Running {
        let signer = Signer::ephemeral();
        cfg.trust.coordinator_keys = vec![signer.public_key()];
        let agent = Agent::new(
            cfg,
            bus.clone(),
            Counters::default(),
            Some(state.to_path_buf()),
        )
        .unwrap();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            agent
                .run(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
                .unwrap();
        });
        Running { signer, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn command(action: &str, id: &str, params: serde_json::Value) -> Command {
    Command {
        action_id: id.into(),
        action_type: action.into(),
        parameters: params.as_object().cloned().unwrap_or_default(),
        timestamp: chrono::Utc::now(),
        node: Some(nova()),
        deadline: Some(chrono::Utc::now() + chrono::Duration::seconds(60)),
        cause: None,
        problem: None,
        term: None,
        level: None,
    }
}

async fn send(
    bus: &Bus,
    agent: &Running,
    results: &mut Subscription,
    cmd: Command,
) -> CommandResult {
    bus.send_command(&nova(), &cmd, Some(&agent.signer))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let m = results.next().await.expect("result feed ended");
            let r: CommandResult = serde_json::from_slice(&m.payload).unwrap();
            if r.action_id == cmd.action_id {
                return r;
            }
        }
    })
    .await
    .expect("no result")
}

/// The next heartbeat whose entry for `name` satisfies `want`.
async fn heartbeat_where(
    heartbeats: &mut Subscription,
    name: &str,
    want: impl Fn(&WorkloadReport) -> bool,
) -> (Heartbeat, WorkloadReport) {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = heartbeats.next().await.expect("heartbeat feed ended");
            let hb: Heartbeat = serde_json::from_slice(&m.payload).unwrap();
            if let Some(r) = hb.workloads.iter().find(|r| r.name.as_str() == name) {
                if want(r) {
                    let r = r.clone();
                    return (hb, r);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no heartbeat with {name} as wanted"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_starts_a_workload_on_command_and_its_heartbeats_list_it() {
    require!(
        "the static busybox",
        require::path(Path::new(BUSYBOX), "./test.sh installs busybox-static")
    );
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    let port = free_port();
    let mut cfg = Config::from_yaml(&format!(
        "agent: {{heartbeat_interval: 0.5, monitor_interval: 0.5, antibodies: [workloads]}}\n\
workloads:\n  synthesis-core:\n    driver: process\n    command: [{BUSYBOX}, httpd, -f, -p, '{port}', -h, '{}']\n    \
health: {{http: 'http://127.0.0.1:{port}/', timeout_seconds: 2}}\n    start_timeout_seconds: 20\n    nodes: [nova, lyra]\n",
        www.display()
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    cfg.node.name = nova();
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let mut heartbeats = bus.subscribe(Feed::Heartbeats).await.unwrap();
    let agent = Running::start(&bus, cfg.clone(), &dir.path().join("state"));

    // Its home is nova: listed, stopped, before anything is started.
    let (hb, r) = heartbeat_where(&mut heartbeats, "synthesis-core", |r| {
        r.state == WorkloadState::Stopped
    })
    .await;
    assert_eq!(hb.agent_type, "workloads");
    assert_eq!(r.healthy, None);

    let res = send(
        &bus,
        &agent,
        &mut results,
        command(
            "workload_start",
            "w1",
            json!({"workload": "synthesis-core"}),
        ),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Succeeded, "{res:?}");
    assert_eq!(res.details["workload"], "synthesis-core");
    assert_eq!(res.details["state"], "running");
    assert_eq!(res.details["healthy"], true);
    let answered = serves(port);
    assert!(answered, "the workload serves HTTP");
    let (_, r) = heartbeat_where(&mut heartbeats, "synthesis-core", |r| {
        r.state == WorkloadState::Running
    })
    .await;
    assert_eq!(r.healthy, Some(true), "{r:?}");
    assert!(r.since.is_some(), "{r:?}");
    assert!(r.detail.starts_with("pid "), "{r:?}");

    // A coordinator plan is not an agent's to carry out.
    let res = send(
        &bus,
        &agent,
        &mut results,
        command("failover", "p1", json!({})),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Unsupported, "{res:?}");

    // The agent restarts: it finds the process it started, and a start
    // does not make a second copy.
    agent.stop().await;
    let restarted = chrono::Utc::now();
    let agent = Running::start(&bus, cfg.clone(), &dir.path().join("state"));
    let again = loop {
        let (hb, again) = heartbeat_where(&mut heartbeats, "synthesis-core", |r| {
            r.state == WorkloadState::Running
        })
        .await;
        // One of the restarted agent's, not one left from before.
        if hb.timestamp >= restarted {
            break again;
        }
    };
    assert_eq!(again.detail, r.detail, "the same process");
    assert_eq!(again.healthy, Some(true));
    let res = send(
        &bus,
        &agent,
        &mut results,
        command(
            "workload_start",
            "w3",
            json!({"workload": "synthesis-core"}),
        ),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Succeeded, "{res:?}");
    assert!(res.message.contains("already runs"), "{}", res.message);

    let res = send(
        &bus,
        &agent,
        &mut results,
        command(
            "workload_stop",
            "w2",
            json!({"workload": "synthesis-core", "fence": "true"}),
        ),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Succeeded, "{res:?}");
    assert_eq!(res.details["state"], "stopped");
    assert_eq!(res.details["fence"], true);
    assert!(!serves(port));
    let (_, r) = heartbeat_where(&mut heartbeats, "synthesis-core", |r| {
        r.state == WorkloadState::Stopped
    })
    .await;
    assert_eq!(r.healthy, None);
    agent.stop().await;
}

/// Whether `GET http://127.0.0.1:<port>/` is answered 2xx or 3xx.
fn serves(port: u16) -> bool {
    skos_agent::workloads::health::http(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(2),
    )
    .ok()
}
