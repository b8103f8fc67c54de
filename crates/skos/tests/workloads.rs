//! Workloads moved for real: the seed's three nodes (nova, lyra, athena),
//! each a network namespace with its own agent joined to a real
//! nats-server by a veth link, the seed's `nodes` and `failover` plus
//! workload definitions, and workloads run as plain processes (busybox's
//! HTTP server, health-checked over HTTP on the node's own loopback) and
//! as real containers through each node's own Podman engine (its Docker
//! Engine API, the service inside the node's namespace).
//!
//! - nova critical → `throttle_50` and `redistribute`: synthesis-core moves
//!   to the coolest node, healthy there before nova's copy stops;
//! - nova's agent killed → failover to the first hot spare after
//!   `failover_delay_seconds`; nova's agent back → its stale copy is
//!   fenced, nothing runs twice; nova calm → failback after the hold;
//! - two of three nodes down → destructive plans frozen, `fleet_degraded`;
//! - an approval-required failover waits and runs on `skos approve`;
//! - a container workload fails over in `services_priority` order and its
//!   stale copy is fenced when its node is back;
//! - the coordinator SIGKILLed while a move's start runs: restarted, it
//!   takes the start's result and completes the move.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::nats::NatsServer;
use skos_testsupport::netns::{free_subnet, Netns};
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

/// Where every node's synthesis-core serves (each node has its own
/// loopback).
const SYNTH_PORT: u16 = 18081;
/// docker-swarm's port (a non-essential, movable workload).
const SWARM_PORT: u16 = 18082;
/// slow-core's port (a workload whose start takes seconds).
const SLOW_PORT: u16 = 18084;
/// qwen's port, when it runs as a container.
const QWEN_PORT: u16 = 18083;
/// The image qwen runs as a container (built on every node's engine).
const QWEN_IMAGE: &str = "localhost/skos-test-qwen";

/// Root, network namespaces and a static busybox, or why not.
fn prerequisites(test: &str) -> Option<()> {
    let ns = skos_testsupport::netns::unavailable().map_or(Ok(()), Err);
    skos_testsupport::require::require(test, "root and network namespaces", ns)?;
    skos_testsupport::require::require(
        test,
        "a static busybox (its HTTP server is the workload)",
        skos_testsupport::podman::static_busybox(),
    )
}

struct Node {
    name: &'static str,
    /// The node's own container engine (Podman's Docker Engine API, in
    /// its namespace), when the fleet runs containers.
    engine: Option<skos_testsupport::podman::Podman>,
    ns: Netns,
    sys: FakeSysfs,
    cpu: HwmonHandle,
    agent: Option<Proc>,
    /// The node's address as the host sees it (its side of the veth).
    host_ip: String,
}

/// Dropped in field order: processes first (their logs are printed from
/// the work dir on a failure), then the server, then the work dir.
struct Fleet {
    coord: Option<Proc>,
    nodes: Vec<Node>,
    nats: NatsServer,
    cfg: PathBuf,
    work: tempfile::TempDir,
}

/// qwen as a container on every node's engine: busybox's HTTP server.
fn qwen_container() -> String {
    format!(
        "  qwen:
    driver: container
    image: {QWEN_IMAGE}
    container_command: [/bin/busybox, httpd, -f, -p, \"127.0.0.1:{QWEN_PORT}\", -h, /www]
    network: host
    stop_timeout_seconds: 2
    start_timeout_seconds: 20
    health: {{http: \"http://127.0.0.1:{QWEN_PORT}/\", timeout_seconds: 1}}
"
    )
}

fn config(dir: &Path, extra_failover: &str, extra_workloads: &str) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    let www = www.display();
    let path = dir.join("config.yaml");
    let trust = trust_section(dir);
    let text = format!(
        "{trust}http: {{listen: \"off\"}}
agent:
  heartbeat_interval: 0.5
  monitor_interval: 0.3
  antibodies: [thermal_sentinel, workloads]
coordinator:
  heartbeat_timeout: 3
  verify_within: 30
  command_deadline: 30
  result_grace_seconds: 5
thermal:
  clear_for: 1
  cooldown: 3600
  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}
  actions:
    warning: []
    critical: [redistribute]
    emergency: [shutdown_non_essential, failover]
nodes:
  nova: {{role: primary, services: [qwen, synthesis-core, docker-swarm]}}
  lyra: {{role: secondary, services: [backup, monitoring]}}
  athena: {{role: storage, services: [minio, postgres]}}
failover:
  hot_spare_nodes: [lyra, athena]
  failover_delay_seconds: 2
  services_priority: [qwen, synthesis-core, docker-swarm]
  failback_hold_seconds: 4
  restart_hold_seconds: 2
{extra_failover}workloads:
  synthesis-core:
    driver: process
    command: [/bin/busybox, httpd, -f, -p, \"127.0.0.1:{SYNTH_PORT}\", -h, \"{www}\"]
    health: {{http: \"http://127.0.0.1:{SYNTH_PORT}/\", timeout_seconds: 1}}
    start_timeout_seconds: 10
    stop_timeout_seconds: 3
  docker-swarm:
    driver: process
    essential: false
    command: [/bin/busybox, httpd, -f, -p, \"127.0.0.1:{SWARM_PORT}\", -h, \"{www}\"]
    health: {{http: \"http://127.0.0.1:{SWARM_PORT}/\", timeout_seconds: 1}}
    start_timeout_seconds: 10
    stop_timeout_seconds: 3
{extra_workloads}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Fleet {
    fn new(extra_failover: &str) -> Fleet {
        Self::build(extra_failover, false)
    }

    /// A fleet whose qwen runs as a container on each node's own engine.
    fn with_containers() -> Fleet {
        Self::build("", true)
    }

    fn build(extra_failover: &str, containers: bool) -> Fleet {
        Self::build_with(extra_failover, containers, "")
    }

    fn build_with(extra_failover: &str, containers: bool, extra_workloads: &str) -> Fleet {
        let nats = NatsServer::start_on_every_address();
        let work = tempfile::tempdir().unwrap();
        let mut extra = if containers {
            qwen_container()
        } else {
            String::new()
        };
        extra.push_str(extra_workloads);
        let cfg = config(work.path(), extra_failover, &extra);
        let mut nodes = Vec::new();
        let net = free_subnet();
        for (i, (name, temp)) in [("nova", 60.0), ("lyra", 55.0), ("athena", 50.0)]
            .into_iter()
            .enumerate()
        {
            let ns = Netns::new(name);
            let host_ip = ns.link_to_host(&format!("10.{net}.{}", i + 1));
            let sys = FakeSysfs::new();
            let cpu = sys.coretemp(temp, &[]);
            let engine = containers.then(|| {
                let engine = skos_testsupport::podman::Podman::start_in_netns(ns.name())
                    .unwrap_or_else(|e| panic!("podman in {name}'s namespace: {e}"));
                engine
                    .busybox_image("qwen", &[("www/index.html", "qwen\n")])
                    .unwrap_or_else(|e| panic!("{e}"));
                engine
            });
            nodes.push(Node {
                name,
                engine,
                ns,
                sys,
                cpu,
                agent: None,
                host_ip,
            });
        }
        let mut fleet = Fleet {
            nats,
            work,
            cfg,
            coord: None,
            nodes,
        };
        fleet.coord = Some(coordinator(
            &fleet.nats,
            &fleet.cfg,
            fleet.work.path(),
            "coordinator",
        ));
        for i in 0..fleet.nodes.len() {
            fleet.start_agent(i, "agent");
        }
        fleet
    }

    fn start_agent(&mut self, i: usize, log: &str) {
        let n = &self.nodes[i];
        let mut c = n.ns.command(env!("CARGO_BIN_EXE_skos"));
        c.arg("agent")
            .arg("--config")
            .arg(&self.cfg)
            .arg("--data-dir")
            .arg(self.work.path().join(format!("agent-{}", n.name)))
            .env_remove("NATS_URL")
            .env_remove("RUST_LOG")
            .env("LOG_LEVEL", "INFO")
            .env(
                "NATS_URL",
                format!("nats://{}:{}", n.host_ip, self.nats.port()),
            )
            .env("NODE_NAME", n.name)
            .env("SKOS_SYSFS_ROOT", n.sys.root());
        if let Some(engine) = &n.engine {
            c.env("DOCKER_HOST", engine.docker_host());
        }
        let log = format!("{log}-{}", n.name);
        self.nodes[i].agent = Some(Proc::spawn(c, self.work.path(), &log));
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    /// Whether `port` answers HTTP 200 on `node`'s own loopback (asked
    /// from a thread inside its namespace).
    fn serves(&self, node: &str, port: u16) -> bool {
        self.node(node).ns.run_in(|| {
            use std::io::{Read, Write};
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                return false;
            }
            let mut head = [0u8; 12];
            s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
        })
    }

    /// Whether something accepts TCP connections on `port` on `node`'s
    /// own loopback.
    fn serves_tcp(&self, node: &str, port: u16) -> bool {
        self.node(node).ns.run_in(|| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        })
    }

    fn status(&self) -> Value {
        wait_for(Duration::from_secs(20), "a status reply", || {
            status(&self.nats)
        })
    }

    fn placed(&self, workload: &str) -> Option<String> {
        self.status()["workloads"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == workload)
            .and_then(|w| w["at"].as_str().map(str::to_string))
    }

    /// Until `workload` is placed on `node` with no step under way.
    fn wait_placed(&self, workload: &str, node: &str, within: u64) {
        wait_for(
            Duration::from_secs(within),
            &format!("{workload} placed on {node}"),
            || {
                let s = self.status();
                let w = s["workloads"]
                    .as_array()?
                    .iter()
                    .find(|w| w["name"] == workload)?
                    .clone();
                (w["at"] == node && w["state"] == "placed").then_some(())
            },
        );
    }

    fn audit(&self) -> Vec<Value> {
        audit(&self.nats)
    }
}

/// The audit entries of `event` whose data matches `pred`, in order.
fn entries(records: &[Value], event: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    records
        .iter()
        .map(|r| &r["entry"])
        .filter(|e| e["event_type"] == event && pred(&e["data"]))
        .cloned()
        .collect()
}

/// Where in `records` the first entry of `event` matching `pred` is.
fn position(records: &[Value], event: &str, pred: impl Fn(&Value) -> bool) -> Option<usize> {
    records
        .iter()
        .position(|r| r["entry"]["event_type"] == event && pred(&r["entry"]["data"]))
}

fn is_result(d: &Value, action: &str, node: &str, workload: &str, status: &str) -> bool {
    let r = &d["result"];
    r["action_type"] == action
        && r["node"] == node
        && r["status"] == status
        && r["details"]["workload"] == workload
}

fn is_command(d: &Value, action: &str, node: &str, workload: &str) -> bool {
    let c = &d["command"];
    c["action_type"] == action && c["node"] == node && c["parameters"]["workload"] == workload
}

/// Start-up: the coordinator starts each workload at its home (it is
/// placed there and reported stopped), and it serves there only.
fn started_at_home(f: &Fleet) {
    wait_for(
        Duration::from_secs(60),
        "synthesis-core serving on nova",
        || f.serves("nova", SYNTH_PORT).then_some(()),
    );
    f.wait_placed("synthesis-core", "nova", 30);
    assert!(!f.serves("lyra", SYNTH_PORT) && !f.serves("athena", SYNTH_PORT));
}

#[test]
fn a_critical_node_redistributes_its_workload_to_the_coolest_node_healthy_there_first() {
    if prerequisites("workloads::redistribute").is_none() {
        return;
    }
    let f = Fleet::new("");
    started_at_home(&f);
    wait_for(
        Duration::from_secs(30),
        "docker-swarm serving on nova",
        || f.serves("nova", SWARM_PORT).then_some(()),
    );

    f.node("nova").cpu.heat(87.0);
    // synthesis-core (priority 2) moves first, to athena (the coolest).
    f.wait_placed("synthesis-core", "athena", 90);
    assert!(f.serves("athena", SYNTH_PORT), "serving at its new place");
    assert!(!f.serves("nova", SYNTH_PORT), "nova's copy is stopped");
    assert!(!f.serves("lyra", SYNTH_PORT));

    // Healthy at athena before nova's copy was stopped: the start's
    // result came back succeeded (healthy) before the stop was sent.
    let records = f.audit();
    let started = position(&records, "result", |d| {
        is_result(d, "workload_start", "athena", "synthesis-core", "succeeded")
    })
    .expect("the start on athena succeeded");
    let stopped = position(&records, "command", |d| {
        is_command(d, "workload_stop", "nova", "synthesis-core")
    })
    .expect("the stop on nova was sent");
    assert!(started < stopped, "start {started} before stop {stopped}");
    let healthy = &records[started]["entry"]["data"]["result"]["details"]["healthy"];
    assert_eq!(healthy, true);
    assert_eq!(
        entries(&records, "placement", |d| d["workload"] == "synthesis-core"
            && d["outcome"] == "done"
            && d["to"] == "athena")
        .len(),
        1
    );
    // Never in two places by SKOS's doing: no start on lyra.
    assert!(entries(&records, "command", |d| is_command(
        d,
        "workload_start",
        "lyra",
        "synthesis-core"
    ))
    .is_empty());
}

#[test]
fn a_dead_nodes_workload_fails_over_its_stale_copy_is_fenced_and_it_fails_back() {
    if prerequisites("workloads::failover").is_none() {
        return;
    }
    let mut f = Fleet::new("");
    started_at_home(&f);

    // nova's agent dies; its workload keeps running there, unseen.
    let nova = f.index("nova");
    if let Some(mut a) = f.nodes[nova].agent.take() {
        a.sigkill();
    }
    // Offline after heartbeat_timeout (3 s), failed over 2 s later to
    // lyra, the first hot spare.
    f.wait_placed("synthesis-core", "lyra", 60);
    assert!(f.serves("lyra", SYNTH_PORT));
    assert!(f.serves("nova", SYNTH_PORT), "nova's stale copy still runs");
    let s = f.status();
    let w = s["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "synthesis-core")
        .unwrap();
    assert_eq!(w["fenced"], serde_json::json!(["nova"]), "{w}");

    // nova's agent is back: the stale copy is stopped before anything
    // else happens there, and then, nova being calm, it fails back.
    f.start_agent(nova, "agent-again");
    wait_for(Duration::from_secs(60), "nova's stale copy fenced", || {
        let records = f.audit();
        let fenced = entries(&records, "result", |d| {
            is_result(d, "workload_stop", "nova", "synthesis-core", "succeeded")
        });
        (!fenced.is_empty()).then_some(())
    });
    f.wait_placed("synthesis-core", "nova", 90);
    assert!(f.serves("nova", SYNTH_PORT));
    assert!(
        !f.serves("lyra", SYNTH_PORT),
        "lyra's copy stopped after failback"
    );
    let records = f.audit();
    let fence = position(&records, "result", |d| {
        is_result(d, "workload_stop", "nova", "synthesis-core", "succeeded")
    })
    .unwrap();
    // The first start on nova after the failover to lyra (the start at
    // home may have been sent more than once, on a loaded machine).
    let failover = position(&records, "command", |d| {
        is_command(d, "workload_start", "lyra", "synthesis-core")
    })
    .expect("failed over to lyra");
    let back = records
        .iter()
        .enumerate()
        .skip(failover + 1)
        .find(|(_, r)| {
            r["entry"]["event_type"] == "command"
                && is_command(
                    &r["entry"]["data"],
                    "workload_start",
                    "nova",
                    "synthesis-core",
                )
        })
        .map(|(i, _)| i)
        .expect("failback started synthesis-core on nova");
    assert!(
        failover < fence && fence < back,
        "failed over ({failover}), fenced ({fence}), started again ({back})"
    );
}

#[test]
fn with_two_of_three_nodes_down_destructive_plans_freeze_and_fleet_degraded_says_why() {
    if prerequisites("workloads::fleet_degraded").is_none() {
        return;
    }
    let mut f = Fleet::new("  min_healthy: 2\n");
    started_at_home(&f);
    for name in ["lyra", "athena"] {
        let i = f.index(name);
        if let Some(mut a) = f.nodes[i].agent.take() {
            a.sigkill();
        }
    }
    wait_for(Duration::from_secs(30), "lyra and athena offline", || {
        let s = f.status();
        let offline = ["lyra", "athena"]
            .iter()
            .all(|n| node(&s, n).is_some_and(|x| x["status"] == "offline"));
        offline.then_some(())
    });
    f.node("nova").cpu.heat(96.0);
    let records = wait_for(Duration::from_secs(60), "the fleet_degraded alert", || {
        let r = f.audit();
        let raised = entries(&r, "alert", |d| d["alert"]["type"] == "fleet_degraded");
        (!raised.is_empty()).then_some(r)
    });
    let frozen = entries(&records, "skipped", |d| d["reason"] == "fleet_degraded");
    assert!(!frozen.is_empty(), "destructive plans skipped");
    let alert = &entries(&records, "alert", |d| {
        d["alert"]["type"] == "fleet_degraded"
    })[0];
    let message = alert["data"]["alert"]["message"].as_str().unwrap();
    assert!(message.contains("0 of 3 nodes healthy"), "{message}");
    assert!(f.serves("nova", SYNTH_PORT), "nothing moved or stopped");
    assert_eq!(f.placed("synthesis-core").as_deref(), Some("nova"));
}

#[test]
fn an_approval_required_failover_waits_and_runs_on_skos_approve() {
    if prerequisites("workloads::approval").is_none() {
        return;
    }
    let f = Fleet::new("  require_approval: [failover]\n");
    started_at_home(&f);
    f.node("nova").cpu.heat(96.0);
    let id = wait_for(Duration::from_secs(60), "a failover waiting", || {
        let s = f.status();
        let a = s["approvals"].as_array()?.first()?.clone();
        (a["plan"] == "failover").then(|| a["id"].as_str().unwrap().to_string())
    });
    // It waits: nothing started on a spare.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!f.serves("lyra", SYNTH_PORT));
    let out = run({
        let mut c = skos();
        c.args(["approve", &id, "--by", "ops"])
            .env("NATS_URL", f.nats.url());
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.wait_placed("synthesis-core", "lyra", 90);
    assert!(f.serves("lyra", SYNTH_PORT));
    let records = f.audit();
    let approved = entries(&records, "approval", |d| d["state"] == "approved");
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["data"]["by"], "ops");
}

#[test]
fn a_container_workload_fails_over_to_the_spare_and_its_stale_copy_is_fenced() {
    if prerequisites("workloads::containers").is_none() {
        return;
    }
    if skos_testsupport::require::require(
        "workloads::containers",
        "podman (its Docker Engine API) with runc",
        skos_testsupport::podman::available(),
    )
    .is_none()
    {
        return;
    }
    let mut f = Fleet::with_containers();
    wait_for(
        Duration::from_secs(90),
        "qwen's container serving on nova",
        || f.serves("nova", QWEN_PORT).then_some(()),
    );
    f.wait_placed("qwen", "nova", 60);
    let nova = f.index("nova");
    if let Some(mut a) = f.nodes[nova].agent.take() {
        a.sigkill();
    }
    // qwen (priority 1) fails over first, then synthesis-core, to lyra.
    f.wait_placed("qwen", "lyra", 120);
    assert!(
        f.serves("lyra", QWEN_PORT),
        "the container serves on the spare"
    );
    assert!(
        f.serves("nova", QWEN_PORT),
        "nova's stale container still runs"
    );
    f.wait_placed("synthesis-core", "lyra", 120);
    let records = f.audit();
    let order: Vec<String> = entries(&records, "command", |d| {
        d["command"]["action_type"] == "workload_start" && d["command"]["node"] == "lyra"
    })
    .iter()
    .map(|e| {
        e["data"]["command"]["parameters"]["workload"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect();
    assert_eq!(order, ["qwen", "synthesis-core"], "services_priority order");

    // nova's agent back: its stale container is stopped (fenced).
    f.start_agent(nova, "agent-again");
    wait_for(
        Duration::from_secs(90),
        "nova's stale container fenced",
        || (!f.serves("nova", QWEN_PORT)).then_some(()),
    );
    let engine = f.node("nova").engine.as_ref().unwrap();
    let status = engine.container_status("skos-qwen");
    assert_ne!(status.as_deref(), Some("running"), "{status:?}");
}

/// A workload whose start takes seconds (its server comes up after a
/// sleep), for a move the coordinator can be killed in the middle of.
fn slow_start() -> String {
    format!(
        "  slow-core:
    driver: process
    priority: 1
    nodes: [nova, lyra, athena]
    command: [/bin/sh, -c, \"sleep 4; exec /bin/busybox httpd -f -p 127.0.0.1:{SLOW_PORT} -h /\"]
    health: {{tcp: \"127.0.0.1:{SLOW_PORT}\", timeout_seconds: 1}}
    start_timeout_seconds: 20
    stop_timeout_seconds: 3
"
    )
}

#[test]
fn a_move_under_way_when_the_coordinator_is_killed_completes_after_its_restart() {
    if prerequisites("workloads::coordinator_killed").is_none() {
        return;
    }
    let mut f = Fleet::build_with("", false, &slow_start());
    wait_for(Duration::from_secs(60), "slow-core serving on nova", || {
        f.serves_tcp("nova", SLOW_PORT).then_some(())
    });
    f.wait_placed("slow-core", "nova", 30);
    f.node("nova").cpu.heat(87.0);
    // The move's first step is sent: slow-core starting on athena.
    wait_for(Duration::from_secs(60), "the start on athena sent", || {
        let r = f.audit();
        (!entries(&r, "command", |d| {
            is_command(d, "workload_start", "athena", "slow-core")
        })
        .is_empty())
        .then_some(())
    });
    // The coordinator dies while the start runs (it takes 4 s).
    if let Some(mut c) = f.coord.take() {
        c.sigkill();
    }
    assert!(!f.serves_tcp("athena", SLOW_PORT), "still starting");
    f.coord = Some(coordinator(
        &f.nats,
        &f.cfg,
        f.work.path(),
        "coordinator-again",
    ));
    // The restarted coordinator takes the start's result and finishes the
    // move: healthy on athena, then stopped on nova.
    f.wait_placed("slow-core", "athena", 120);
    assert!(f.serves_tcp("athena", SLOW_PORT));
    wait_for(Duration::from_secs(30), "nova's copy stopped", || {
        (!f.serves_tcp("nova", SLOW_PORT)).then_some(())
    });
    let records = f.audit();
    let started = entries(&records, "command", |d| {
        is_command(d, "workload_start", "athena", "slow-core")
    });
    assert_eq!(
        started.len(),
        1,
        "the start was not sent twice: {started:?}"
    );
}
