//! Failover, end to end on real components: the seed's three nodes (nova,
//! lyra, athena), each a network namespace joined to the host by a veth
//! pair, with its own `skos agent` on a fake sysfs; `skos coordinator` and
//! a nats-server listening on every address on the host; the seed's
//! `nodes` and `failover` sections; nova's essential workload
//! (synthesis-core) and a non-essential one, both busybox's HTTP server run
//! as plain processes.
//!
//! * emergency → healthy on the spare: nova's package temperature written
//!   to 96 °C (emergency) → synthesis-core answers HTTP 200 on a hot
//!   spare's own loopback, polled from inside that spare's namespace;
//! * node death → healthy on the spare: SIGKILL of nova's agent → the
//!   same. Its floor is `coordinator.heartbeat_timeout` (death noticed)
//!   plus `failover.failover_delay_seconds` (then the move).
//!
//! Between trials: nova cooled (or its agent restarted, its stale copy
//! fenced), failback brings the workload home after
//! `failback_hold_seconds`, and the clock starts only once every node is
//! healthy and every workload is placed at home, serving there only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use skos_bus::Bus;
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::netns::{unique, Netns};
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

use crate::error::{guarded, Context};
use crate::hotcpu;
use crate::natsutil;
use crate::procs::{self, Proc};
use crate::report::{Figure, SectionReport};
use crate::stats::Summary;
use crate::{say, Error, Opts, Result};

const S: &str = "failover";
/// Where synthesis-core serves on every node (each has its own loopback).
pub(crate) const SYNTH_PORT: u16 = 18081;
/// Where docker-swarm (non-essential) serves.
const SWARM_PORT: u16 = 18082;
/// The workload measured: nova's essential one.
pub(crate) const WORKLOAD: &str = "synthesis-core";
pub(crate) const HOME: &str = "nova";
const SPARES: [&str; 2] = ["lyra", "athena"];
/// The seed's nodes and their calm package temperatures.
const NODES: [(&str, f64); 3] = [("nova", 60.0), ("lyra", 55.0), ("athena", 50.0)];
/// Above the default emergency threshold (95 °C).
const EMERGENCY_C: f64 = 96.0;
/// Agent intervals, seconds.
pub(crate) const HEARTBEAT_INTERVAL: f64 = 0.5;
pub(crate) const MONITOR_INTERVAL: f64 = 0.3;
/// `failback_hold_seconds` and `restart_hold_seconds`: short, so a trial's
/// reset takes seconds.
const FAILBACK_HOLD: f64 = 2.0;
const RESTART_HOLD: f64 = 1.0;
/// `coordinator.max_actions_per_node_per_minute`: each trial and its
/// reset send nova four to six commands, so back-to-back trials pass the
/// default 30 a minute, and a held step is not what is measured.
const MAX_ACTIONS: u32 = 600;
/// How often the spare is asked.
const POLL: Duration = Duration::from_millis(20);
/// The longest a move or a reset may take before the section fails.
const WAIT: Duration = Duration::from_secs(90);

/// Why the section cannot run here, or `Ok` when it can: root, `ip netns`,
/// a static busybox (the workload), nats-server. The efficacy section's
/// workload rows run on the same fleet and need the same.
pub fn prerequisites() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::Missing(
            "not running as root: the failover section builds network namespaces and veth links (run skos-bench as root)".into(),
        ));
    }
    let probe = format!("skos-bench-probe-{}", unique(""));
    let add = Command::new("ip")
        .args(["netns", "add", &probe])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Missing(format!(
                "cannot run `ip` ({e}): the failover section needs iproute2's `ip netns`"
            ))
        })?;
    if !add.status.success() {
        return Err(Error::Missing(format!(
            "`ip netns add` fails: {}",
            String::from_utf8_lossy(&add.stderr).trim()
        )));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", &probe])
        .stdin(Stdio::null())
        .output();
    skos_testsupport::podman::static_busybox()
        .map_err(|m| Error::Missing(format!("the workload is busybox's HTTP server: {m}")))?;
    nats_server_binary().map_err(Error::Missing)?;
    Ok(())
}

pub(crate) struct Node {
    pub(crate) name: &'static str,
    /// The agent first: it is killed before its namespace goes.
    pub(crate) agent: Option<Proc>,
    ns: Netns,
    /// coretemp and cpufreq ([`hotcpu::POLICIES`] policies at
    /// [`hotcpu::MAX_KHZ`]).
    pub(crate) sys: FakeSysfs,
    pub(crate) cpu: HwmonHandle,
    pub(crate) calm_c: f64,
    /// The host's side of the node's veth link.
    host_ip: String,
    /// How many agents this node has had (each gets its own log).
    starts: usize,
}

/// Dropped in field order: the coordinator, then the nodes (agents, then
/// every process left in each namespace, workloads included), then the
/// server, then the work dir.
pub(crate) struct Fleet {
    pub(crate) coord: Proc,
    pub(crate) nodes: Vec<Node>,
    pub(crate) nats: NatsServer,
    pub(crate) bin: PathBuf,
    cfg: PathBuf,
    pub(crate) work: tempfile::TempDir,
}

/// What the fleet's config varies by: the failover section's, or the
/// efficacy section's (the seed's whole thermal table, settings that let
/// trials repeat).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tables {
    /// `coordinator.heartbeat_timeout`, seconds.
    pub heartbeat_timeout: f64,
    /// `failover.failover_delay_seconds`.
    pub failover_delay: f64,
    /// `thermal.actions`: warning, critical and emergency, each a YAML
    /// flow list (`[throttle_50, redistribute]`).
    pub thermal: [&'static str; 3],
    /// More `coordinator:` settings, one `  key: value` line each.
    pub coordinator: &'static str,
}

impl Tables {
    /// The failover section's: no throttling (nothing but the move is
    /// measured), this run's heartbeat timeout and failover delay.
    fn failover(o: &Opts) -> Tables {
        Tables {
            heartbeat_timeout: o.heartbeat_timeout,
            failover_delay: o.failover_delay,
            thermal: ["[]", "[redistribute]", "[shutdown_non_essential, failover]"],
            coordinator: "",
        }
    }
}

/// The config every process reads: the workloads test's, with the
/// heartbeat timeout, failover delay and thermal table of `t` and short
/// holds.
fn write_config(dir: &Path, trust: &str, t: &Tables) -> Result<PathBuf> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| Error::io(&www, e))?;
    let index = www.join("index.html");
    std::fs::write(&index, "ok\n").map_err(|e| Error::io(&index, e))?;
    let www = www.display();
    let path = dir.join("config.yaml");
    let text = format!(
        "{trust}http: {{listen: \"off\"}}
agent:
  heartbeat_interval: {HEARTBEAT_INTERVAL}
  monitor_interval: {MONITOR_INTERVAL}
  antibodies: [thermal_sentinel, workloads]
coordinator:
  heartbeat_timeout: {hb}
  verify_within: 30
  command_deadline: 30
  result_grace_seconds: 5
  max_actions_per_node_per_minute: {MAX_ACTIONS}
{coord_extra}thermal:
  clear_for: 1
  cooldown: 3600
  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}
  actions:
    warning: {warning}
    critical: {critical}
    emergency: {emergency}
nodes:
  nova: {{role: primary, services: [qwen, synthesis-core, docker-swarm]}}
  lyra: {{role: secondary, services: [backup, monitoring]}}
  athena: {{role: storage, services: [minio, postgres]}}
failover:
  hot_spare_nodes: [lyra, athena]
  failover_delay_seconds: {delay}
  services_priority: [qwen, synthesis-core, docker-swarm]
  failback_hold_seconds: {FAILBACK_HOLD}
  restart_hold_seconds: {RESTART_HOLD}
workloads:
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
",
        hb = t.heartbeat_timeout,
        delay = t.failover_delay,
        coord_extra = t.coordinator,
        warning = t.thermal[0],
        critical = t.thermal[1],
        emergency = t.thermal[2],
    );
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// A node's namespace, its veth link to the host and its fake sysfs
/// (coretemp and cpufreq, so a throttle has something to write).
/// `subnet` picks `10.<subnet>.<i+1>.0/30`.
fn build_node(name: &'static str, calm_c: f64, i: usize, subnet: u32) -> Node {
    let ns = Netns::new(name);
    let host_ip = ns.link_to_host(&format!("10.{subnet}.{}", i + 1));
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(calm_c, &[]);
    fake_cpufreq(
        sys.root(),
        hotcpu::POLICIES,
        hotcpu::MIN_KHZ,
        hotcpu::MAX_KHZ,
    );
    Node {
        name,
        agent: None,
        ns,
        sys,
        cpu,
        calm_c,
        host_ip,
        starts: 0,
    }
}

impl Fleet {
    /// The three nodes, each with its agent, and the coordinator, all
    /// started (not yet at rest: see [`wait_at_rest`]). Errors: a server,
    /// namespace or process that cannot be started.
    pub(crate) fn build(bin: PathBuf, tables: &Tables) -> Result<Fleet> {
        let nats = guarded("start nats-server on every address", || {
            NatsServer::start_on_every_address()
        })?;
        let work = tempfile::Builder::new()
            .prefix("skos-bench-failover-")
            .tempdir()
            .ctx("temp dir")?;
        let trust = procs::trust_section(&bin, work.path());
        let cfg = write_config(work.path(), &trust, tables)?;
        // A second octet no interface here uses, so two runs (or a run
        // beside the workloads test) do not share addresses.
        let subnet = skos_testsupport::netns::free_subnet();
        let mut nodes = Vec::new();
        for (i, (name, c)) in NODES.into_iter().enumerate() {
            nodes.push(guarded(&format!("build node {name}"), || {
                build_node(name, c, i, subnet)
            })?);
        }
        let mut c = procs::skos_command(&bin);
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .env("LOG_LEVEL", "INFO")
            .env("NATS_URL", nats.url());
        let coord = Proc::spawn(c, work.path(), "coordinator")?;
        let mut fleet = Fleet {
            coord,
            nodes,
            nats,
            bin,
            cfg,
            work,
        };
        for i in 0..fleet.nodes.len() {
            fleet.start_agent(i)?;
        }
        Ok(fleet)
    }

    /// Start node `i`'s agent (again), its log named by how many it has
    /// had.
    pub(crate) fn start_agent(&mut self, i: usize) -> Result<()> {
        let port = self.nats.port();
        let n = &mut self.nodes[i];
        let mut c = n.ns.command(&self.bin);
        procs::scrub_env(&mut c);
        c.arg("agent")
            .arg("--config")
            .arg(&self.cfg)
            .arg("--data-dir")
            .arg(self.work.path().join(format!("agent-{}", n.name)))
            .env("LOG_LEVEL", "INFO")
            .env("NATS_URL", format!("nats://{}:{port}", n.host_ip))
            .env("NODE_NAME", n.name)
            .env("SKOS_SYSFS_ROOT", n.sys.root());
        n.starts += 1;
        let log = format!("agent-{}-{}", n.name, n.starts);
        n.agent = Some(Proc::spawn(c, self.work.path(), &log)?);
        Ok(())
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::failed("fleet", format!("no node {name}")))
    }

    pub(crate) fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_default()
    }

    /// Fail with the end of its log if the coordinator or a running agent
    /// has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        self.coord.check_alive()?;
        for n in &mut self.nodes {
            if let Some(a) = &mut n.agent {
                a.check_alive()?;
            }
        }
        Ok(())
    }

    /// Whether `port` answers HTTP 200 on `node`'s own loopback, asked
    /// from a thread inside its namespace.
    fn serves(&self, node: &str, port: u16) -> Result<bool> {
        let ns = &self.node(node)?.ns;
        tokio::task::block_in_place(|| {
            guarded("probe in a namespace", || ns.run_in(|| get_200(port)))
        })
    }

    /// The first spare that serves synthesis-core, if any.
    fn serving_spare(&self) -> Result<Option<&'static str>> {
        for s in SPARES {
            if self.serves(s, SYNTH_PORT)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }
}

/// `GET /` on 127.0.0.1:`port` answered with status 200.
fn get_200(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// Why the fleet is not yet at rest (`None`: it is): every node healthy,
/// every workload placed at its home with nothing fenced and no step
/// under way.
fn not_at_rest(status: &Value) -> Option<String> {
    for (name, _) in NODES {
        match natsutil::node_status(status, name) {
            Some(s) if s == "healthy" => {}
            Some(s) => return Some(format!("{name} is {s}")),
            None => return Some(format!("{name} has not reported")),
        }
    }
    let Some(ws) = status["workloads"].as_array() else {
        return Some("no workloads in the status".into());
    };
    if ws.is_empty() {
        return Some("no workloads in the status".into());
    }
    for w in ws {
        let name = w["name"].as_str().unwrap_or("?");
        if w["state"] != "placed" || w["at"] != w["home"] {
            return Some(format!(
                "{name} is {} at {} (home {})",
                w["state"].as_str().unwrap_or("?"),
                w["at"].as_str().unwrap_or("nowhere"),
                w["home"].as_str().unwrap_or("?")
            ));
        }
        if w["fenced"].as_array().is_some_and(|f| !f.is_empty()) {
            return Some(format!("{name} is fenced on {}", w["fenced"]));
        }
    }
    None
}

/// Until the fleet is at rest and synthesis-core serves at home only;
/// how long that took. Errors: a process exited, or not at rest within
/// 90 s (the timeout names the last thing seen).
pub(crate) async fn wait_at_rest(f: &mut Fleet, bus: &Bus, what: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let mut last = "no status answer".to_string();
    loop {
        f.check_alive()?;
        if let Ok(body) = bus.request_status(Duration::from_secs(2)).await {
            match serde_json::from_slice::<Value>(&body) {
                Ok(s) => match not_at_rest(&s) {
                    Some(why) => last = why,
                    None => {
                        if !f.serves(HOME, SYNTH_PORT)? {
                            last = format!("{WORKLOAD} does not answer on {HOME} yet");
                        } else if let Some(s) = f.serving_spare()? {
                            last = format!("{WORKLOAD} still answers on {s}");
                        } else {
                            return Ok(t0.elapsed());
                        }
                    }
                },
                Err(_) => last = "a status answer that is not JSON".into(),
            }
        }
        if t0.elapsed() > WAIT {
            return Err(Error::timeout(format!("{what} (last: {last})"), WAIT));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// From `t0` until synthesis-core answers on a spare: the seconds and
/// the spare.
async fn until_on_spare(f: &mut Fleet, t0: Instant, what: &str) -> Result<(f64, &'static str)> {
    let mut checked = Instant::now();
    loop {
        if let Some(s) = f.serving_spare()? {
            return Ok((t0.elapsed().as_secs_f64(), s));
        }
        if checked.elapsed() > Duration::from_secs(1) {
            f.coord.check_alive()?;
            checked = Instant::now();
        }
        if t0.elapsed() > WAIT {
            return Err(Error::timeout(
                format!("{WORKLOAD} answering on a spare after {what}"),
                WAIT,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug, Clone, Serialize)]
struct Trial {
    /// The trigger → HTTP 200 on the spare, seconds.
    seconds: f64,
    /// The spare it came up on.
    spare: &'static str,
    /// Time the fleet took to come back to rest before the trial, seconds.
    reset_seconds: f64,
}

/// The section: prerequisites, the fleet, `o.failover_trials` trials of
/// each failover; the figures in seconds. Needs a multi-threaded runtime
/// (the spares are probed from blocking threads). Errors: `Missing` when a
/// prerequisite is absent; a timeout naming what was awaited (and the last
/// thing seen) when a move or a reset takes over 90 s, the logs kept.
pub async fn run(o: &Opts) -> Result<SectionReport> {
    let bin = procs::skos_binary(o.skos_bin.as_deref())?;
    prerequisites()?;
    if o.nats_url.is_some() {
        say(
            S,
            "--nats-url is not used here: the agents in their namespaces need a server listening on every address, so the section starts its own",
        );
    }
    let mut f = Fleet::build(bin, &Tables::failover(o))?;
    match measure(&mut f, o).await {
        Ok(r) => Ok(r),
        Err(e) => {
            // Keep every process's log for a look at what went wrong.
            f.work.disable_cleanup(true);
            say(S, format!("logs kept in {}", f.work.path().display()));
            Err(e)
        }
    }
}

async fn measure(f: &mut Fleet, o: &Opts) -> Result<SectionReport> {
    let bus = Bus::Nats(natsutil::bus(&f.nats.url(), "skos-bench-failover").await?);
    if let Err(e) = natsutil::wait_status(&bus, natsutil::leader_wait(o)).await {
        f.check_alive()?;
        return Err(e);
    }
    let first = wait_at_rest(f, &bus, "every node healthy, every workload at home").await?;
    say(
        S,
        format!(
            "fleet at rest after {:.1} s: {WORKLOAD} answers on {HOME} only; {} trials of each",
            first.as_secs_f64(),
            o.failover_trials
        ),
    );
    let nova = f.index(HOME);

    // 1. Emergency temperature → healthy on the spare.
    let mut emergency = Vec::new();
    for r in 0..o.failover_trials {
        let reset = if r == 0 {
            first
        } else {
            wait_at_rest(f, &bus, "failback after the emergency").await?
        };
        let cpu = f.nodes[nova].cpu.clone();
        let t0 = Instant::now();
        guarded("write the emergency temperature", || cpu.heat(EMERGENCY_C))?;
        let (s, spare) = until_on_spare(f, t0, "the emergency").await?;
        say(
            S,
            format!(
                "emergency {}: {WORKLOAD} healthy on {spare} {s:.2} s after {EMERGENCY_C} °C",
                r + 1
            ),
        );
        emergency.push(Trial {
            seconds: s,
            spare,
            reset_seconds: reset.as_secs_f64(),
        });
        let calm = f.nodes[nova].calm_c;
        guarded("cool the node", || cpu.heat(calm))?;
    }

    // 2. Node death → healthy on the spare.
    let mut death = Vec::new();
    for r in 0..o.failover_trials {
        let reset = wait_at_rest(f, &bus, "failback before a SIGKILL").await?;
        // At a different point of the heartbeat interval each time.
        let offset = (r as f64 * 0.37 * HEARTBEAT_INTERVAL) % HEARTBEAT_INTERVAL;
        tokio::time::sleep(Duration::from_secs_f64(offset)).await;
        let Some(mut agent) = f.nodes[nova].agent.take() else {
            return Err(Error::failed("node death", format!("{HOME} has no agent")));
        };
        let t0 = agent.sigkill();
        let (s, spare) = until_on_spare(f, t0, "SIGKILL of the agent").await?;
        say(
            S,
            format!(
                "death {}: {WORKLOAD} healthy on {spare} {s:.2} s after SIGKILL (floor {:.1} s)",
                r + 1,
                o.heartbeat_timeout + o.failover_delay
            ),
        );
        death.push(Trial {
            seconds: s,
            spare,
            reset_seconds: reset.as_secs_f64(),
        });
        f.start_agent(nova)?;
    }
    wait_at_rest(f, &bus, "failback after the last SIGKILL").await?;
    f.coord.sigterm(Duration::from_secs(10)).await;

    let em = Summary::of(&emergency.iter().map(|t| t.seconds).collect::<Vec<_>>());
    let de = Summary::of(&death.iter().map(|t| t.seconds).collect::<Vec<_>>());
    let q = |s: &Option<Summary>, f: fn(&Summary) -> f64| s.as_ref().map(f).unwrap_or(f64::NAN);
    let floor = o.heartbeat_timeout + o.failover_delay;
    let floor_name = format!(
        "heartbeat_timeout {} s + failover_delay_seconds {} s",
        o.heartbeat_timeout, o.failover_delay
    );
    let figures = vec![
        Figure::new(S, "emergency → healthy on the spare p50", q(&em, |s| s.p50), "s")
            .beside("monitor_interval", MONITOR_INTERVAL),
        Figure::new(S, "emergency → healthy on the spare max", q(&em, |s| s.max), "s")
            .beside("monitor_interval", MONITOR_INTERVAL)
            .note("sensor read, alert, shutdown_non_essential, start on the spare, health check"),
        Figure::new(S, "agent SIGKILL → healthy on the spare p50", q(&de, |s| s.p50), "s")
            .beside(floor_name.clone(), floor),
        Figure::new(S, "agent SIGKILL → healthy on the spare max", q(&de, |s| s.max), "s")
            .beside(floor_name, floor)
            .note("death is noticed heartbeat_timeout after the last heartbeat (up to one heartbeat_interval, 0.5 s, before the SIGKILL), then failover_delay_seconds runs"),
    ];
    let data = json!({
        "nodes": NODES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "workload": WORKLOAD,
        "hot_spare_nodes": SPARES,
        "emergency_c": EMERGENCY_C,
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "monitor_interval": MONITOR_INTERVAL,
        "heartbeat_timeout": o.heartbeat_timeout,
        "failover_delay_seconds": o.failover_delay,
        "failback_hold_seconds": FAILBACK_HOLD,
        "restart_hold_seconds": RESTART_HOLD,
        "max_actions_per_node_per_minute": MAX_ACTIONS,
        "poll_ms": POLL.as_millis() as u64,
        "emergency": {"trials": emergency, "seconds": em},
        "death": {"trials": death, "seconds": de},
    });
    Ok(SectionReport { data, figures })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nodes: &[(&str, &str)], workloads: Value) -> Value {
        json!({
            "nodes": nodes.iter().map(|(n, s)| json!({"name": n, "status": s})).collect::<Vec<_>>(),
            "workloads": workloads,
        })
    }

    const ALL_HEALTHY: [(&str, &str); 3] = [
        ("nova", "healthy"),
        ("lyra", "healthy"),
        ("athena", "healthy"),
    ];

    #[test]
    fn at_rest_needs_every_node_healthy_and_every_workload_home() {
        let home = json!([{"name": "synthesis-core", "home": "nova", "at": "nova", "state": "placed", "fenced": []}]);
        assert_eq!(not_at_rest(&status(&ALL_HEALTHY, home.clone())), None);

        let missing = status(&[("nova", "healthy"), ("lyra", "healthy")], home.clone());
        assert_eq!(
            not_at_rest(&missing).as_deref(),
            Some("athena has not reported")
        );
        let offline = status(
            &[
                ("nova", "offline"),
                ("lyra", "healthy"),
                ("athena", "healthy"),
            ],
            home,
        );
        assert_eq!(not_at_rest(&offline).as_deref(), Some("nova is offline"));

        let away = json!([{"name": "synthesis-core", "home": "nova", "at": "lyra", "state": "placed", "fenced": []}]);
        assert_eq!(
            not_at_rest(&status(&ALL_HEALTHY, away)).as_deref(),
            Some("synthesis-core is placed at lyra (home nova)")
        );
        let moving = json!([{"name": "synthesis-core", "home": "nova", "at": "nova", "state": "moving", "fenced": []}]);
        assert!(not_at_rest(&status(&ALL_HEALTHY, moving)).is_some());
        let fenced = json!([{"name": "synthesis-core", "home": "nova", "at": "nova", "state": "placed", "fenced": ["nova"]}]);
        assert!(not_at_rest(&status(&ALL_HEALTHY, fenced)).is_some_and(|w| w.contains("fenced")));
        assert!(not_at_rest(&status(&ALL_HEALTHY, json!([]))).is_some());
    }

    #[test]
    fn the_config_has_the_seeds_sections_and_this_runs_timings() {
        let dir = tempfile::tempdir().unwrap();
        let o = Opts {
            heartbeat_timeout: 3.0,
            failover_delay: 2.0,
            ..Opts::quick()
        };
        let path = write_config(dir.path(), "", &Tables::failover(&o)).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("heartbeat_timeout: 3\n"), "{text}");
        assert!(text.contains("failover_delay_seconds: 2\n"), "{text}");
        assert!(text.contains("hot_spare_nodes: [lyra, athena]"));
        assert!(text.contains("emergency: [shutdown_non_essential, failover]"));
        assert!(dir.path().join("www/index.html").is_file());
    }
}
