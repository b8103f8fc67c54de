//! Footprint: VmRSS, PSS, VmHWM and CPU time (utime + stime) of the real
//! processes over a measured window.
//!
//! * an idle `skos-agent` (the lean binary nodes run) with every antibody
//!   that exists enabled (seed intervals: monitor 5 s, heartbeat 10 s),
//!   beside `skos agent` from the full binary, an idle `skos coordinator`
//!   that knows only those agents, and, in the same window, Monit (a
//!   minimal config: load, memory, a filesystem, the agent's process) and
//!   the Prometheus node exporter, each started by the bench where it is
//!   installed; the agent's resident memory is judged against Monit's;
//! * the coordinator tracking 1,000 / 10,000 / 100,000 simulated nodes that
//!   heartbeat every 5 s, spread evenly (a fresh server and coordinator for
//!   each size); the nats-server's own CPU for the same traffic is measured
//!   beside it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use skos_bus::{subjects, Bus};
use skos_core::catalogue::Executor;

use crate::error::Context;
use crate::hotcpu::FakeMachine;
use crate::natsutil::{self, Server};
use crate::procfs::{self, Usage};
use crate::procs::{self, Proc};
use crate::progress::{count_audited, wait_count, Task};
use crate::report::{Figure, SectionReport};
use crate::{say, sim, Error, Opts, Result};

const S: &str = "footprint";
const MB: &str = "MB";
const CORE: &str = "core";

fn split(u: &Usage) -> String {
    format!(
        "{:.1} MB anonymous (heap, stacks) + {:.1} MB file-backed (code)",
        u.rss_anon_mb, u.rss_file_mb
    )
}

/// Which binary a memory figure is of: its path and size, and, where it is
/// not from a shipped profile's directory (`dist`, `dist-agent`:
/// `dist/build-static.sh all`), that the targets are the shipped build's
/// (a release build maps about twice the code, and on kernels that map
/// code around each fault, most of it is resident).
fn built(bin: &Path) -> String {
    let size = std::fs::metadata(bin)
        .map(|m| format!(", {:.1} MB", m.len() as f64 / 1e6))
        .unwrap_or_default();
    let shipped = bin
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "dist" || d == "dist-agent");
    let caveat = if shipped {
        ""
    } else {
        "; not the shipped build, which the targets are for (dist/build-static.sh all)"
    };
    format!("binary {}{size}{caveat}", bin.display())
}

/// Sample several processes at the start and end of one window.
async fn measure(pids: &[u32], window: Duration) -> Result<Vec<Usage>> {
    let a: Vec<_> = pids
        .iter()
        .map(|&p| procfs::sample(p))
        .collect::<Result<_>>()?;
    tokio::time::sleep(window).await;
    let b: Vec<_> = pids
        .iter()
        .map(|&p| procfs::sample(p))
        .collect::<Result<_>>()?;
    Ok(a.iter()
        .zip(b.iter())
        .map(|(a, b)| procfs::usage(a, b))
        .collect())
}

fn coordinator(bin: &Path, cfg: &Path, url: &str, work: &Path, name: &str) -> Result<Proc> {
    let mut c = procs::skos_command(bin);
    c.arg("coordinator")
        .arg("--config")
        .arg(cfg)
        .env("NATS_URL", url);
    Proc::spawn(c, work, name)
}

/// An agent process to start: the lean `skos-agent`, or `skos agent`.
struct AgentBin<'a> {
    bin: &'a Path,
    /// `skos agent` (the full binary) rather than `skos-agent`.
    subcommand: bool,
    node: &'static str,
    label: &'static str,
}

fn start_agent(a: &AgentBin, cfg: &Path, url: &str, work: &Path, sysfs: &Path) -> Result<Proc> {
    let mut c = procs::skos_command(a.bin);
    if a.subcommand {
        c.arg("agent");
    }
    c.arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(work.join(format!("{}-data", a.node)))
        .env("NATS_URL", url)
        .env("NODE_NAME", a.node)
        .env("SKOS_SYSFS_ROOT", sysfs);
    Proc::spawn(c, work, a.node)
}

/// Monit's control file: a few checks of the kind an agent makes (the
/// system's load and memory, a filesystem, one process: the agent), every
/// 5 s like the agent's monitor interval; alerts only logged.
fn monit_config(work: &Path, agent_pid_file: &Path) -> String {
    let w = work.display();
    format!(
        "set daemon 5\n\
         set logfile {w}/monit.log\n\
         set pidfile {w}/monit.pid\n\
         set idfile {w}/monit.id\n\
         set statefile {w}/monit.state\n\
         check system bench\n  if loadavg (1min) > 64 then alert\n  if memory usage > 95% then alert\n\
         check filesystem root with path /\n  if space usage > 95% then alert\n\
         check process skos-agent with pidfile {}\n  if cpu > 90% for 5 cycles then alert\n",
        agent_pid_file.display()
    )
}

/// Monit (Debian's `monit`) in the foreground with [`monit_config`];
/// `Ok(None)` when it is not installed.
fn start_monit(work: &Path, agent_pid: u32) -> Result<Option<Proc>> {
    let Some(monit) = procs::tool("monit") else {
        return Ok(None);
    };
    let pid_file = work.join("agent.pid");
    std::fs::write(&pid_file, format!("{agent_pid}\n")).map_err(|e| Error::io(&pid_file, e))?;
    let rc = work.join("monitrc");
    std::fs::write(&rc, monit_config(work, &pid_file)).map_err(|e| Error::io(&rc, e))?;
    // Monit refuses a control file others may read.
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::io(&rc, e))?;
    let mut c = std::process::Command::new(monit);
    c.arg("-I").arg("-c").arg(&rc);
    Proc::spawn(c, work, "monit").map(Some)
}

/// The Prometheus node exporter (Debian's `prometheus-node-exporter`, or
/// upstream's `node_exporter`) on a free loopback port, default
/// collectors; `Ok(None)` when it is not installed.
fn start_node_exporter(work: &Path) -> Result<Option<(Proc, u16)>> {
    let Some(bin) =
        procs::tool("prometheus-node-exporter").or_else(|| procs::tool("node_exporter"))
    else {
        return Ok(None);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::failed("a free port for node_exporter", e))?
        .port();
    let mut c = std::process::Command::new(bin);
    c.arg(format!("--web.listen-address=127.0.0.1:{port}"));
    Proc::spawn(c, work, "node-exporter").map(|p| Some((p, port)))
}

/// One scrape of `/metrics`, as Prometheus makes every 15 s: the exporter
/// is then measured in its working state, not as never asked. Returns the
/// bytes read.
async fn scrape(port: u16) -> Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut last = None;
    // It listens a moment after it starts.
    for _ in 0..50 {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(mut s) => {
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    .await
                    .ctx("scrape node_exporter")?;
                let mut body = Vec::new();
                s.read_to_end(&mut body).await.ctx("scrape node_exporter")?;
                return Ok(body.len());
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::failed(
        format!("node_exporter on 127.0.0.1:{port}"),
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

fn pss(u: &Usage) -> f64 {
    u.pss_mb.unwrap_or(f64::NAN)
}

async fn idle(o: &Opts, bin: &Path) -> Result<(Value, Vec<Figure>)> {
    let server = Server::start(o.nats_url.as_deref())?;
    let url = server.url().to_string();
    let work = tempfile::Builder::new()
        .prefix("skos-bench-footprint-")
        .tempdir()
        .ctx("temp dir")?;
    let machine = FakeMachine::new()?;
    let trust = procs::trust_section(bin, work.path());
    let antibodies = built_antibodies().join(", ");
    let watched = work.path().join("watched");
    std::fs::create_dir_all(&watched).map_err(|e| Error::io(&watched, e))?;
    let cfg = work.path().join("config.yaml");
    let text = format!(
        "agent:\n  antibodies: [{antibodies}]\nstorage:\n  mounts: [{}]\ncoordinator:\n  leader_lease_seconds: {}\n{trust}",
        watched.display(),
        o.lease_seconds
    );
    std::fs::write(&cfg, text).map_err(|e| Error::io(&cfg, e))?;
    let lean = procs::agent_binary(o.agent_bin.as_deref(), bin)?;
    let mut missing = Vec::new();
    if lean.is_none() {
        missing.push(format!(
            "skos-agent (not beside {}: build it with `cargo build --release -p skos`, or pass --agent-bin)",
            bin.display()
        ));
    }
    let mut coord = coordinator(bin, &cfg, &url, work.path(), "coordinator-idle")?;
    let bus = Bus::Nats(natsutil::bus(&url, "skos-bench-status").await?);
    // The agent's first heartbeat goes out at once: let the coordinator be
    // listening by then, or the node only shows up a heartbeat interval later.
    if let Err(e) = natsutil::wait_status(&bus, natsutil::leader_wait(o)).await {
        coord.check_alive()?;
        return Err(e);
    }
    // The lean agent (what nodes run) and, beside it, `skos agent` from
    // the full binary: both with every antibody, on the same fake machine.
    let mut wanted = vec![AgentBin {
        bin,
        subcommand: true,
        node: "bench-idle-full",
        label: "skos agent (full skos binary)",
    }];
    if let Some(l) = lean.as_deref() {
        wanted.insert(
            0,
            AgentBin {
                bin: l,
                subcommand: false,
                node: "bench-idle",
                label: "skos-agent",
            },
        );
    }
    let mut agents = Vec::new();
    for a in &wanted {
        agents.push(start_agent(a, &cfg, &url, work.path(), machine.root())?);
    }
    let mut monit = start_monit(work.path(), agents[0].pid())?;
    if monit.is_none() {
        missing.push("monit (apt-get install monit, or ./test.sh)".into());
    }
    let exporter = start_node_exporter(work.path())?;
    if exporter.is_none() {
        missing.push(
            "prometheus-node-exporter (apt-get install prometheus-node-exporter, or ./test.sh)"
                .into(),
        );
    }
    for m in &missing {
        say(S, format!("not measured: {m} is missing"));
    }
    let status = crate::hotcpu::StatusSource::Bus(bus);
    // Healthy, normally. The storage watcher watches a temp dir on this
    // machine's disk: where other processes fill that disk fast it
    // forecasts a full disk and the node stays degraded, which changes
    // nothing to what is measured here, so an online node will do.
    let mut healthy = Vec::new();
    for (a, p) in wanted.iter().zip(agents.iter_mut()) {
        let ok = status
            .wait_node(a.node, "healthy", Duration::from_secs(20))
            .await
            .is_ok();
        let online = if ok {
            Ok(())
        } else {
            status.wait_online(a.node, Duration::from_secs(20)).await
        };
        if let Err(e) = online {
            coord.check_alive()?;
            p.check_alive()?;
            return Err(Error::failed(
                e.to_string(),
                format!(
                    "{} log:\n{}\ncoordinator log:\n{}",
                    a.label,
                    p.log_tail(15),
                    coord.log_tail(15)
                ),
            ));
        }
        healthy.push(ok);
    }
    let scraped = match &exporter {
        Some((_, port)) => Some(scrape(*port).await?),
        None => None,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    say(
        S,
        format!(
            "idle {} ({antibodies}), coordinator, monit and node_exporter, {:.0} s window",
            wanted
                .iter()
                .map(|a| a.label)
                .collect::<Vec<_>>()
                .join(" and "),
            o.window.as_secs_f64()
        ),
    );
    let mut pids: Vec<u32> = agents.iter().map(Proc::pid).collect();
    pids.push(coord.pid());
    let monit_at = monit.as_ref().map(|m| {
        pids.push(m.pid());
        pids.len() - 1
    });
    let exporter_at = exporter.as_ref().map(|(p, _)| {
        pids.push(p.pid());
        pids.len() - 1
    });
    let nats_at = server.pid().map(|p| {
        pids.push(p);
        pids.len() - 1
    });
    let u = measure(&pids, o.window).await?;
    for a in agents.iter_mut() {
        a.check_alive()?;
    }
    coord.check_alive()?;
    if let Some(m) = monit.as_mut() {
        m.check_alive()?;
    }
    let (ua, uc) = (u[0], u[agents.len()]);
    let um = monit_at.map(|i| u[i]);
    let ue = exporter_at.map(|i| u[i]);
    let un = nats_at.map(|i| u[i]);
    let log = std::fs::read_to_string(&agents[0].log).unwrap_or_default();
    let skipped: Vec<&str> = built_antibodies()
        .into_iter()
        .filter(|a| {
            log.lines()
                .any(|l| l.contains("not available in this build") && l.contains(a))
        })
        .collect();
    coord.sigterm(Duration::from_secs(10)).await;
    for a in agents.iter_mut() {
        a.sigterm(Duration::from_secs(10)).await;
    }
    let lead = wanted[0].label;
    // The target: the agent at or below Monit's resident memory,
    // measured in the same run; where Monit is missing, its figure on the
    // machine the issue measured (about 6 MB).
    let mut rss = Figure::new(
        S,
        format!("{lead} idle VmRSS (all antibodies)"),
        ua.rss_mb,
        MB,
    )
    .note(format!("{}; {}", split(&ua), built(wanted[0].bin)));
    rss = match um {
        Some(m) => rss.beside("monit", m.rss_mb).ratio_at_most(1.0),
        None => rss.at_most(6.0),
    };
    // Reported beside Monit's, not judged: the target is on the
    // resident set, and Monit's PSS counts its shared libraries in part.
    let mut pss_fig = Figure::new(S, format!("{lead} idle PSS (all antibodies)"), pss(&ua), MB)
        .note("shared pages counted in part: like with like with Monit's libraries");
    if let Some(m) = um {
        pss_fig = pss_fig.beside("monit", pss(&m));
    }
    let mut figures = vec![rss, pss_fig];
    if let Some(e) = ue {
        figures.push(
            Figure::new(
                S,
                format!("{lead} idle VmRSS beside node_exporter"),
                ua.rss_mb,
                MB,
            )
            .beside("node_exporter", e.rss_mb),
        );
        figures.push(
            Figure::new(
                S,
                format!("{lead} idle PSS beside node_exporter"),
                pss(&ua),
                MB,
            )
            .beside("node_exporter", pss(&e)),
        );
    }
    if let Some(m) = um {
        figures.push(Figure::new(S, "monit idle VmRSS", m.rss_mb, MB).note(split(&m)));
        figures.push(Figure::new(S, "monit idle PSS", pss(&m), MB));
    }
    if let Some(e) = ue {
        figures.push(
            Figure::new(S, "node_exporter idle VmRSS", e.rss_mb, MB)
                .note(format!("{}; scraped once before the window", split(&e))),
        );
        figures.push(Figure::new(S, "node_exporter idle PSS", pss(&e), MB));
    }
    if agents.len() > 1 {
        let f = u[1];
        let mut full = Figure::new(S, "skos agent (full skos binary) idle VmRSS", f.rss_mb, MB)
            .note(split(&f));
        if let Some(m) = um {
            full = full.beside("monit", m.rss_mb);
        }
        figures.push(full);
        figures.push(Figure::new(
            S,
            "skos agent (full skos binary) idle PSS",
            pss(&f),
            MB,
        ));
    }
    figures.extend([
        Figure::new(S, format!("{lead} idle VmHWM"), ua.hwm_mb, MB),
        Figure::new(S, format!("{lead} idle CPU"), ua.cpu_share, CORE),
        Figure::new(S, "coordinator idle VmRSS", uc.rss_mb, MB).note(split(&uc)),
        Figure::new(S, "coordinator idle CPU", uc.cpu_share, CORE),
    ]);
    if let Some(m) = um {
        figures.push(Figure::new(S, "monit idle CPU", m.cpu_share, CORE));
    }
    if let Some(e) = ue {
        figures.push(Figure::new(S, "node_exporter idle CPU", e.cpu_share, CORE));
    }
    let data = json!({
        "agent_binary": wanted[0].bin,
        "agent_command": if wanted[0].subcommand { "skos agent" } else { "skos-agent" },
        "agent_healthy_when_measured": healthy[0],
        "antibodies_enabled": built_antibodies(),
        "antibodies_not_built": skipped,
        "agent_intervals": {"monitor": 5.0, "heartbeat": 10.0},
        "agent": ua,
        "full_binary_agent": (agents.len() > 1).then(|| u[1]),
        "coordinator": uc,
        "monit": um,
        "monit_config": monit.as_ref().map(|_| monit_config(work.path(), &work.path().join("agent.pid"))),
        "node_exporter": ue,
        "node_exporter_scrape_bytes": scraped,
        "not_measured": missing,
        "nats_server": un,
    });
    Ok((data, figures))
}

/// Heartbeats for `fleet` spread evenly over `interval`, each stamped as
/// it is sent, until dropped.
fn simulate(
    client: async_nats::Client,
    fleet: Arc<Vec<sim::SimNode>>,
    interval: f64,
    sent: Arc<AtomicU64>,
) -> Task {
    Task::spawn(async move {
        let tick = Duration::from_millis(10);
        let per_tick = fleet.len() as f64 * tick.as_secs_f64() / interval;
        let mut owed = 0.0;
        let mut next = 0usize;
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            timer.tick().await;
            owed += per_tick;
            while owed >= 1.0 {
                owed -= 1.0;
                let n = &fleet[next];
                next = (next + 1) % fleet.len();
                let payload = match n.heartbeat(interval) {
                    Ok(p) => p,
                    Err(e) => {
                        say(S, format!("the simulated fleet stopped: {e}"));
                        return;
                    }
                };
                if client.publish(n.subject.clone(), payload).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn tracking(o: &Opts, bin: &Path, nodes: usize) -> Result<(Value, Vec<Figure>)> {
    let server = Server::start(o.nats_url.as_deref())?;
    let url = server.url().to_string();
    let work = tempfile::Builder::new()
        .prefix("skos-bench-fleet-")
        .tempdir()
        .ctx("temp dir")?;
    let cfg = work.path().join("config.yaml");
    let text = format!(
        "coordinator:\n  leader_lease_seconds: {}\n",
        o.lease_seconds
    );
    std::fs::write(&cfg, text).map_err(|e| Error::io(&cfg, e))?;
    let mut coord = coordinator(
        bin,
        &cfg,
        &url,
        work.path(),
        &format!("coordinator-{nodes}"),
    )?;
    let bus = Bus::Nats(natsutil::bus(&url, "skos-bench-status").await?);
    if let Err(e) = natsutil::wait_status(&bus, natsutil::leader_wait(o)).await {
        coord.check_alive()?;
        return Err(e);
    }
    let observer = natsutil::client(&url, "skos-bench-observer").await?;
    let joins_sub = observer
        .subscribe(subjects::AUDIT)
        .await
        .ctx("subscribe joins")?;
    let (joins, _joins_task) = count_audited(joins_sub, "node");
    let mut alerts = observer
        .subscribe(subjects::ALERTS)
        .await
        .ctx("subscribe alerts")?;
    let offline = Arc::new(AtomicU64::new(0));
    let off = offline.clone();
    let _offline_task = Task::spawn(async move {
        while let Some(m) = alerts.next().await {
            if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                if v["type"] == "heartbeat_missing" && v["severity"] == "critical" {
                    off.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    observer.flush().await.ctx("flush")?;
    let prefix = format!("fp{}-", sim::run_id());
    let fleet = Arc::new(sim::nodes(&prefix, nodes)?);
    let publisher = natsutil::client(&url, "skos-bench-fleet").await?;
    let sent = Arc::new(AtomicU64::new(0));
    let consumers = crate::ingest::command_consumers(&observer).await?;
    say(
        S,
        format!(
            "{nodes} nodes heartbeating every {} s: joining",
            o.footprint_interval
        ),
    );
    let t0 = Instant::now();
    let sim_task = simulate(publisher, fleet, o.footprint_interval, sent.clone());
    let join_limit = Duration::from_secs(60 + nodes as u64 / 1000);
    let r = wait_count(&joins, nodes as u64, t0, join_limit, join_limit).await;
    if !r.reached {
        coord.check_alive()?;
        return Err(Error::failed(
            "footprint",
            format!(
                "only {} of {nodes} nodes joined within {join_limit:?}",
                r.count
            ),
        ));
    }
    let join_s = r.last_change.duration_since(t0).as_secs_f64();
    // The coordinator makes each node's command consumer as it hears
    // from it: part of joining, not of the steady state measured.
    crate::ingest::wait_consumers(S, &observer, consumers, nodes as u64).await?;
    // One full heartbeat round after the joins before measuring.
    tokio::time::sleep(Duration::from_secs_f64(o.footprint_interval).min(o.window)).await;
    say(
        S,
        format!(
            "{nodes} nodes joined in {join_s:.1} s; {:.0} s window",
            o.window.as_secs_f64()
        ),
    );
    let mut pids = vec![coord.pid(), std::process::id()];
    let nats_pid = server.pid();
    pids.extend(nats_pid);
    let (s0, o0) = (
        sent.load(Ordering::Relaxed),
        offline.load(Ordering::Relaxed),
    );
    let u = measure(&pids, o.window).await?;
    let (s1, o1) = (
        sent.load(Ordering::Relaxed),
        offline.load(Ordering::Relaxed),
    );
    coord.check_alive()?;
    drop(sim_task);
    coord.sigterm(Duration::from_secs(15)).await;
    let (uc, ub) = (u[0], u[1]);
    let un = u.get(2).copied();
    let rate = (s1 - s0) as f64 / uc.window_seconds;
    let mut rss = Figure::new(
        S,
        format!("coordinator VmRSS, {nodes} nodes"),
        uc.rss_mb,
        MB,
    );
    if nodes == 1_000 {
        rss = rss.at_most(15.0).note(built(bin));
    }
    let mut cpu = Figure::new(
        S,
        format!(
            "coordinator CPU, {nodes} nodes @ {} s",
            o.footprint_interval
        ),
        uc.cpu_share,
        CORE,
    );
    if let Some(n) = un {
        cpu = cpu.beside("nats-server", n.cpu_share);
    }
    if nodes == 100_000 {
        cpu = cpu.at_most(0.5);
    }
    let figures = vec![
        rss,
        Figure::new(
            S,
            format!("coordinator VmHWM, {nodes} nodes"),
            uc.hwm_mb,
            MB,
        )
        .note("peak includes the join burst"),
        cpu,
    ];
    let data = json!({
        "nodes": nodes,
        "interval": o.footprint_interval,
        "join_seconds": join_s,
        "heartbeats_per_second": rate,
        "expected_per_second": nodes as f64 / o.footprint_interval,
        "offline_alerts_in_window": o1 - o0,
        "offline_alerts_total": o1,
        "coordinator": uc,
        "nats_server": un,
        "harness_simulator": ub,
    });
    Ok((data, figures))
}

pub async fn run(o: &Opts) -> Result<SectionReport> {
    let bin = procs::skos_binary(o.skos_bin.as_deref())?;
    let (idle_data, mut figures) = idle(o, &bin).await?;
    let mut fleets = Vec::new();
    let mut rss = Vec::new();
    for &n in &o.footprint_nodes {
        let (d, f) = tracking(o, &bin, n).await?;
        if let Some(mb) = d["coordinator"]["rss_mb"].as_f64() {
            rss.push((n, mb));
        }
        fleets.push(d);
        figures.extend(f);
    }
    figures.extend(per_node(&rss));
    Ok(SectionReport {
        data: json!({
            "window_seconds": o.window.as_secs_f64(),
            "clock_ticks_per_second": procfs::clock_ticks_per_second(),
            "idle": idle_data,
            "fleets": fleets,
        }),
        figures,
    })
}

/// The coordinator's memory per node: its whole VmRSS over the fleet size
/// (the figure, judged at 100,000 nodes), and what each node
/// beyond the smallest fleet added.
fn per_node(rss: &[(usize, f64)]) -> Vec<Figure> {
    let mut out = Vec::new();
    for &(n, mb) in rss {
        let mut f = Figure::new(
            S,
            format!("coordinator memory per node, {n} nodes (VmRSS / nodes)"),
            mb * 1e6 / n.max(1) as f64,
            "B",
        );
        if n == 100_000 {
            f = f
                .at_most(1024.0)
                .note("1 KB taken as 1,024 B; includes code and runtime, not only node state");
        }
        out.push(f);
    }
    if let (Some(&(n0, a)), Some(&(n1, b))) = (rss.first(), rss.last()) {
        if n1 > n0 {
            out.push(Figure::new(
                S,
                format!("coordinator memory per added node ({n0} → {n1} nodes)"),
                (b - a) * 1e6 / (n1 - n0) as f64,
                "B",
            ));
        }
    }
    out
}

/// Every antibody this build carries, by name.
fn built_antibodies() -> Vec<&'static str> {
    Executor::ALL
        .into_iter()
        .filter(|e| e.built())
        .map(Executor::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_node_whole_and_added() {
        let f = per_node(&[(1_000, 13.0), (100_000, 95.0)]);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].value, 13_000.0);
        assert!(f[0].target.is_none());
        assert_eq!(f[1].value, 950.0);
        assert_eq!(f[1].met, Some(true));
        assert!((f[2].value - 82e6 / 99_000.0).abs() < 1e-6);
        assert_eq!(per_node(&[(100_000, 293.0)])[0].met, Some(false));
        assert!(per_node(&[]).is_empty());
    }
}
