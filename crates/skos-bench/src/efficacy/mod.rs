//! Healing efficacy, measured: each row of the healing tables (problem
//! kind × level → actions) gets its fault injected on real components
//! several times, and each trial is judged from the audit trail alone
//! ([`trail`]): detected (fault → alert), healed (fault → verified
//! recovery), escalated or stopped safely, the actions used, and false
//! remediations (a fix whose metric did not move, or that ran when the
//! problem was already healed).
//!
//! One node, `bench-efficacy`: `skos coordinator` and `skos agent` (thermal
//! sentinel, storage watcher, loop breaker) as separate processes over a
//! real nats-server, the agent on a fake sysfs (coretemp + cpufreq), an
//! 8 MiB tmpfs and process groups of real shell scripts:
//!
//! * thermal: the package temperature written above the row's threshold;
//!   the fake CPU cools (50 °C written) once the throttle shows in
//!   `scaling_max_freq`, as a real one does when slowed;
//! * storage: the tmpfs filled to the row's band with what its actions
//!   clean (old temp files, old rotated logs, old files to archive);
//! * loop, chains: a real client (`skos-chain`) recursing, iterating,
//!   ping-ponging or bursting; the fault time is the step over the limit;
//! * loop, process groups: a fork-happy script and a crash loop; the fault
//!   time is when the bench sees the limit crossed in `/proc`.
//!
//! The mesh rows run on a node of their own in a network namespace
//! ([`mesh`]); the rows with workloads (a hot node with workloads, a dead
//! node) on the failover section's three-node fleet ([`fleet`]).
//!
//! Coordinator settings that would hide repeated trials are relaxed and
//! reported: flap detection is set to 1000 changes a minute, the action
//! and alert quotas raised, the agent's alert cooldowns 1 s and
//! `verify_hold_seconds` 1 s (default 10).

pub mod fleet;
pub mod mesh;
pub mod trail;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use skos_bus::Bus;
use skos_chain::{Chain, ChainClient, Step};
use skos_testsupport::procgroup::ProcGroup;
use skos_testsupport::tmpfs::Tmpfs;

use crate::error::{guarded, Context};
use crate::hotcpu::{FakeMachine, StatusSource, COOL_C, MAX_KHZ};
use crate::natsutil::{self, Server};
use crate::procs::{self, Proc};
use crate::report::{Figure, SectionReport};
use crate::stats::Summary;
use crate::{say, Error, Opts, Result};
use trail::{Expect, Outcome, TrialFigures};

const S: &str = "efficacy";
const NODE: &str = "bench-efficacy";
/// The agent's monitor interval, seconds.
pub const MONITOR_INTERVAL: f64 = 0.5;
/// The longest one trial may take before it is judged as it stands.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);
/// Limits of the process groups and the burst chain kind.
const MAX_DESCENDANTS: usize = 8;
const MAX_RESPAWNS: usize = 3;
const BURST_STEPS: u32 = 30;

/// How a row's fault is made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The package temperature, °C.
    Heat(f64),
    /// The tmpfs filled to this band.
    Fill(Fill),
    Chain(ChainFault),
    /// A fork-happy process group.
    ForkBomb,
    /// A process respawned in a loop.
    CrashLoop,
    /// A WireGuard tunnel or its path broken ([`mesh`]).
    Mesh(mesh::MeshFault),
    /// A hot or dead node with workloads ([`fleet`]).
    Fleet(fleet::FleetFault),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// About 85 %: old temp files.
    Warning,
    /// About 92 %: old rotated logs and old files to archive.
    Critical,
    /// About 97 %: old temp files (older than `emergency_max_age`).
    Emergency,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ChainFault {
    Recurse,
    Iterate,
    PingPong,
    Burst,
}

/// One row of the healing tables.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// `kind level → actions`, as the table says it.
    pub name: &'static str,
    kind: &'static str,
    severity: &'static str,
    condition: Option<&'static str>,
    actions: &'static [&'static str],
    fault: Fault,
}

/// Every row the section knows, in order; see [`not_covered`] for those
/// it does not inject.
pub const ROWS: [Row; 17] = [
    Row {
        name: "thermal warning → throttle_10",
        kind: "thermal",
        severity: "warning",
        condition: None,
        actions: &["throttle_10"],
        fault: Fault::Heat(78.0),
    },
    Row {
        name: "thermal critical → throttle_50",
        kind: "thermal",
        severity: "critical",
        condition: None,
        actions: &["throttle_50"],
        fault: Fault::Heat(88.0),
    },
    Row {
        name: "thermal emergency → throttle_100",
        kind: "thermal",
        severity: "emergency",
        condition: None,
        actions: &["throttle_100"],
        fault: Fault::Heat(97.0),
    },
    Row {
        name: "storage warning → cleanup_temp",
        kind: "storage",
        severity: "warning",
        condition: None,
        actions: &["cleanup_temp"],
        fault: Fault::Fill(Fill::Warning),
    },
    Row {
        name: "storage critical → cleanup_logs, archive_old",
        kind: "storage",
        severity: "critical",
        condition: None,
        actions: &["cleanup_logs", "archive_old"],
        fault: Fault::Fill(Fill::Critical),
    },
    Row {
        name: "storage emergency → emergency_cleanup, alert_human",
        kind: "storage",
        severity: "emergency",
        condition: None,
        actions: &["emergency_cleanup", "alert_human"],
        fault: Fault::Fill(Fill::Emergency),
    },
    Row {
        name: "loop depth_exceeded → circuit_break",
        kind: "loop",
        severity: "warning",
        condition: Some("depth_exceeded"),
        actions: &["circuit_break"],
        fault: Fault::Chain(ChainFault::Recurse),
    },
    Row {
        name: "loop iterations_exceeded → reset_chain",
        kind: "loop",
        severity: "warning",
        condition: Some("iterations_exceeded"),
        actions: &["reset_chain"],
        fault: Fault::Chain(ChainFault::Iterate),
    },
    Row {
        name: "loop cycle → circuit_break",
        kind: "loop",
        severity: "warning",
        condition: Some("cycle"),
        actions: &["circuit_break"],
        fault: Fault::Chain(ChainFault::PingPong),
    },
    Row {
        name: "loop rate_exceeded → circuit_break",
        kind: "loop",
        severity: "warning",
        condition: Some("rate_exceeded"),
        actions: &["circuit_break"],
        fault: Fault::Chain(ChainFault::Burst),
    },
    Row {
        name: "loop descendants_exceeded → circuit_break",
        kind: "loop",
        severity: "warning",
        condition: Some("descendants_exceeded"),
        actions: &["circuit_break"],
        fault: Fault::ForkBomb,
    },
    Row {
        name: "loop crash_loop → circuit_break",
        kind: "loop",
        severity: "warning",
        condition: Some("crash_loop"),
        actions: &["circuit_break"],
        fault: Fault::CrashLoop,
    },
    Row {
        name: "mesh tunnel_down → restart_wireguard, regenerate_config",
        kind: "mesh",
        severity: "warning",
        condition: Some("tunnel_down"),
        actions: &["restart_wireguard", "regenerate_config"],
        fault: Fault::Mesh(mesh::MeshFault::KillTunnel),
    },
    Row {
        name: "mesh peer_unreachable → ping_peer, failover_route",
        kind: "mesh",
        severity: "warning",
        condition: Some("peer_unreachable"),
        actions: &["ping_peer", "failover_route"],
        fault: Fault::Mesh(mesh::MeshFault::CutPrimary),
    },
    Row {
        name: "thermal critical + workloads → throttle_50, redistribute",
        kind: "thermal",
        severity: "critical",
        condition: None,
        actions: &["throttle_50", "redistribute"],
        fault: Fault::Fleet(fleet::FleetFault::Critical),
    },
    Row {
        name: "thermal emergency + workloads → shutdown_non_essential, failover",
        kind: "thermal",
        severity: "emergency",
        condition: None,
        actions: &["shutdown_non_essential", "failover"],
        fault: Fault::Fleet(fleet::FleetFault::Emergency),
    },
    Row {
        name: "dead node → failover",
        kind: "heartbeat_missing",
        severity: "critical",
        condition: None,
        actions: &["failover"],
        fault: Fault::Fleet(fleet::FleetFault::Dead),
    },
];

/// Rows of the healing tables this section does not inject, and why.
pub fn not_covered() -> Vec<(&'static str, &'static str)> {
    vec![
        ("mesh peer_degraded, node_unreachable, escalated", "no action by default: nothing to heal (node_unreachable and escalated are the coordinator's own alerts)"),
    ]
}

/// The rows whose name contains one of `filters` (all when empty).
pub fn chosen(filters: &[String]) -> Vec<Row> {
    ROWS.iter()
        .filter(|r| filters.is_empty() || filters.iter().any(|f| r.name.contains(f.as_str())))
        .copied()
        .collect()
}

/// A row's trials, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct RowSummary {
    pub row: String,
    pub trials: usize,
    pub detected: usize,
    pub detect_s: Option<Summary>,
    pub healed: usize,
    pub escalated: usize,
    pub stopped_safely: usize,
    pub recovery_s: Option<Summary>,
    /// Action → how many times it was sent, over every trial.
    pub actions: BTreeMap<String, usize>,
    /// Commands of the row's actions, over every trial.
    pub remediations: usize,
    pub false_remediations: usize,
    pub avoided: usize,
    pub skipped: Option<String>,
    /// The bound on the time to detect, seconds, and what it is (the
    /// agent's monitor interval; for a dead node the heartbeat timeout).
    pub detect_within_s: f64,
    pub detect_within: String,
    pub trial_figures: Vec<TrialFigures>,
}

impl RowSummary {
    fn of(row: &Row, trials: Vec<TrialFigures>) -> RowSummary {
        let detect: Vec<f64> = trials.iter().filter_map(|t| t.detect_s).collect();
        let recovery: Vec<f64> = trials.iter().filter_map(|t| t.recovery_s).collect();
        let mut actions = BTreeMap::new();
        let mut remediations = 0;
        for t in &trials {
            for a in &t.actions {
                *actions.entry(a.clone()).or_insert(0) += 1;
                if row.actions.contains(&a.as_str()) {
                    remediations += 1;
                }
            }
        }
        let count = |o: Outcome| trials.iter().filter(|t| t.outcome == o).count();
        RowSummary {
            row: row.name.into(),
            trials: trials.len(),
            detected: trials.iter().filter(|t| t.detected).count(),
            detect_s: Summary::of(&detect),
            healed: count(Outcome::Healed),
            escalated: count(Outcome::Escalated),
            stopped_safely: count(Outcome::StoppedSafely),
            recovery_s: Summary::of(&recovery),
            actions,
            remediations,
            false_remediations: trials.iter().map(|t| t.false_remediations.len()).sum(),
            avoided: trials.iter().map(|t| t.avoided).sum(),
            skipped: None,
            detect_within_s: MONITOR_INTERVAL,
            detect_within: "monitor_interval".into(),
            trial_figures: trials,
        }
    }

    /// The same, its time to detect bounded by `(seconds, what)`.
    fn within(mut self, (s, what): (f64, String)) -> RowSummary {
        self.detect_within_s = s;
        self.detect_within = what;
        self
    }

    fn skipped(row: &Row, why: String) -> RowSummary {
        let mut s = RowSummary::of(row, Vec::new());
        s.skipped = Some(why);
        s
    }

    /// Healed, escalated or stopped safely, of the trials.
    pub fn handled(&self) -> usize {
        self.healed + self.escalated + self.stopped_safely
    }
}

/// The table: one line per row, `markdown` or aligned text.
pub fn table(rows: &[RowSummary], markdown: bool) -> String {
    let head = [
        "row",
        "trials",
        "detected",
        "detect p50/p99 s",
        "healed",
        "escalated/stopped",
        "recovery p50/p99 s",
        "actions used",
        "false remediations",
        "rate",
    ];
    let pq = |s: &Option<Summary>| match s {
        Some(s) => format!("{:.2} / {:.2}", s.p50, s.p99),
        None => "–".into(),
    };
    let mut lines: Vec<Vec<String>> = Vec::new();
    for r in rows {
        if let Some(why) = &r.skipped {
            let mut l = vec![r.row.clone(), "0".into(), format!("skipped: {why}")];
            l.resize(head.len(), String::new());
            lines.push(l);
            continue;
        }
        let actions = r
            .actions
            .iter()
            .map(|(a, n)| format!("{a}×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rate = if r.remediations == 0 {
            "–".to_string()
        } else {
            format!(
                "{:.0} %",
                r.false_remediations as f64 * 100.0 / r.remediations as f64
            )
        };
        lines.push(vec![
            r.row.clone(),
            r.trials.to_string(),
            format!("{}/{}", r.detected, r.trials),
            pq(&r.detect_s),
            format!("{}/{}", r.healed, r.trials),
            format!("{}/{}", r.escalated, r.stopped_safely),
            pq(&r.recovery_s),
            actions,
            format!("{}/{}", r.false_remediations, r.remediations),
            rate,
        ]);
    }
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", head.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
        for l in &lines {
            out.push_str(&format!("| {} |\n", l.join(" | ")));
        }
        return out;
    }
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for l in &lines {
        for (i, c) in l.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&fmt(head.iter().map(|h| h.to_string()).collect()));
    out.push('\n');
    for l in lines {
        out.push_str(&fmt(l));
        out.push('\n');
    }
    out
}

/// The node under test: nats-server, coordinator, agent, its fake sysfs,
/// its tmpfs (where it can be mounted) and the process groups' scripts.
/// Dropped in field order: processes first.
struct Stack {
    agent: Proc,
    coord: Proc,
    client: ChainClient,
    status: StatusSource,
    bin: PathBuf,
    url: String,
    machine: FakeMachine,
    fs: Option<Tmpfs>,
    /// Why there is no tmpfs.
    no_fs: Option<String>,
    scripts: PathBuf,
    server: Server,
    work: tempfile::TempDir,
}

const FORK: &str = r#"#!/bin/sh
dir=$1; level=$2
sleep 0.3
if [ "$level" -lt 6 ]; then
  sh "$dir/fork.sh" "$dir" $((level + 1)) &
  sh "$dir/fork.sh" "$dir" $((level + 1)) &
fi
sleep 60
"#;

const SUPERVISOR: &str = r#"#!/bin/sh
while true; do
  sh "$1/crasher.sh" "$1"
  sleep 0.2
done
"#;

const CRASHER: &str = r#"#!/bin/sh
echo start >> "$1/starts"
sleep 0.3
exit 1
"#;

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Every process group the trials may start: one per trial, so each is a
/// problem of its own.
fn groups(scripts: &Path, trials: usize) -> Result<String> {
    let uid = my_uid();
    let mut out = String::new();
    for k in 0..trials {
        let f = scripts.join(format!("forky-{k}"));
        write(&f.join("fork.sh"), FORK)?;
        out.push_str(&format!(
            "    - {{name: forky-{k}, uid: {uid}, command: '*{}/fork.sh*', max_depth: 50, max_descendants: {MAX_DESCENDANTS}, grace_seconds: 1, cool_off_seconds: 600}}\n",
            f.display()
        ));
        let c = scripts.join(format!("crashy-{k}"));
        write(&c.join("supervisor.sh"), SUPERVISOR)?;
        write(&c.join("crasher.sh"), CRASHER)?;
        out.push_str(&format!(
            "    - {{name: crashy-{k}, uid: {uid}, command: '*{}/crasher.sh*', max_respawns: {MAX_RESPAWNS}, respawn_window_seconds: 60, on_break: stop, cool_off_seconds: 600}}\n",
            c.display()
        ));
    }
    Ok(out)
}

fn config(work: &Path, fs: Option<&Path>, groups: &str, trust: &str) -> Result<PathBuf> {
    let storage = match fs {
        Some(m) => format!(
            "storage:\n  mounts: [{m}]\n  cooldown: 1\n  hysteresis: 2\n  temp: {{dirs: [{m}/tmp], max_age: 3600, emergency_max_age: 600}}\n  logs: {{dirs: [{m}/log], compress_after: 3600, retention: 864000}}\n  archive: {{dirs: [{m}/old], older_than: 3600, destination: {a}}}\n  notify: {{command: [sh, -c, 'cat >> {n}']}}\n",
            m = m.display(),
            a = work.join("archive").display(),
            n = work.join("notified.txt").display(),
        ),
        None => String::new(),
    };
    let antibodies = if fs.is_some() {
        "[thermal_sentinel, storage_watcher, loop_breaker]"
    } else {
        "[thermal_sentinel, loop_breaker]"
    };
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: {MONITOR_INTERVAL}\n  antibodies: {antibodies}\n\
coordinator:\n  heartbeat_timeout: 10\n  verify_within: 20\n  verify_hold_seconds: 1\n  flap_start_changes: 1000\n  command_deadline: 30\n  max_actions_per_node_per_minute: 1000\n  max_alerts_per_node_per_minute: 10000\n  leader_lease_seconds: 3\n\
thermal:\n  clear_for: 1\n  cooldown: 1\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n\
{storage}\
loop:\n  cool_off_seconds: 600\n  kinds: {{burst: {{rate: {{max_steps: {BURST_STEPS}, window_seconds: 10}}}}}}\n  process_groups:\n{groups}{trust}"
    );
    let archive = work.join("archive");
    std::fs::create_dir_all(&archive).map_err(|e| Error::io(&archive, e))?;
    let path = work.join("config.yaml");
    write(&path, &text)?;
    Ok(path)
}

impl Stack {
    async fn start(o: &Opts, trials: usize) -> Result<Stack> {
        let bin = procs::skos_binary(o.skos_bin.as_deref())?;
        let server = Server::start(o.nats_url.as_deref())?;
        let url = server.url().to_string();
        let work = tempfile::Builder::new()
            .prefix("skos-bench-efficacy-")
            .tempdir()
            .ctx("temp dir")?;
        let machine = FakeMachine::new()?;
        let (fs, no_fs) = if rustix::process::geteuid().is_root() {
            match Tmpfs::mount("8M", None) {
                Ok(fs) => (Some(fs), None),
                Err(e) => (None, Some(format!("no tmpfs: {e}"))),
            }
        } else {
            (
                None,
                Some("not running as root: the storage rows fill a tmpfs they mount".into()),
            )
        };
        let scripts = work.path().join("scripts");
        let groups = groups(&scripts, trials)?;
        let trust = procs::trust_section(&bin, work.path());
        let cfg = config(work.path(), fs.as_ref().map(|f| f.path()), &groups, &trust)?;
        let mut c = procs::skos_command(&bin);
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .env("NATS_URL", &url);
        let mut coord = Proc::spawn(c, work.path(), "coordinator")?;
        let bus = Bus::Nats(natsutil::bus(&url, "skos-bench-efficacy").await?);
        if let Err(e) = natsutil::wait_status(&bus, natsutil::leader_wait(o)).await {
            coord.check_alive()?;
            return Err(e);
        }
        let mut a = procs::skos_command(&bin);
        a.arg("agent")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(work.path().join("agent-data"))
            .env("NATS_URL", &url)
            .env("NODE_NAME", NODE)
            .env("SKOS_SYSFS_ROOT", machine.root());
        let mut agent = Proc::spawn(a, work.path(), "agent")?;
        let status = StatusSource::Bus(bus);
        if let Err(e) = status
            .wait_node(NODE, "healthy", Duration::from_secs(30))
            .await
        {
            coord.check_alive()?;
            agent.check_alive()?;
            return Err(e);
        }
        let client = chain_client(&url).await?;
        Ok(Stack {
            agent,
            coord,
            client,
            status,
            bin,
            url,
            machine,
            fs,
            no_fs,
            scripts,
            server,
            work,
        })
    }

    /// Every record of the trail, as `skos audit tail --json` prints it.
    fn audit(&self) -> Result<Vec<Value>> {
        let mut c = audit_tail(&self.bin);
        c.env("NATS_URL", &self.url);
        audit_records(c)
    }

    fn alive(&mut self) -> Result<()> {
        self.coord.check_alive()?;
        self.agent.check_alive()
    }

    /// Before a thermal or storage trial: the node healthy, unthrottled.
    async fn calm(&mut self) -> Result<()> {
        self.alive()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.machine.all_at(MAX_KHZ) {
            if Instant::now() > deadline {
                return Err(Error::timeout(
                    "the throttle lifted",
                    Duration::from_secs(60),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.status
            .wait_node(NODE, "healthy", Duration::from_secs(60))
            .await
    }
}

async fn chain_client(url: &str) -> Result<ChainClient> {
    let client = ChainClient::connect(url, NODE)
        .await
        .map_err(|e| Error::failed("connect the chain client", e))?
        .with_timeout(Duration::from_secs(5));
    let probe = Chain::new("efficacy-probe").map_err(|e| Error::failed("chain", e))?;
    let step = probe.root("probe").map_err(|e| Error::failed("chain", e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.ask(&step).await {
            Ok(_) => return Ok(client),
            Err(e) if Instant::now() > deadline => {
                return Err(Error::failed("the loop breaker answering", e))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Used and total bytes of `path`'s filesystem, as `df` counts them.
fn usage(path: &Path) -> Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path).map_err(|e| Error::io(path, e.into()))?;
    let used = (s.f_blocks - s.f_bfree) * s.f_frsize;
    let avail = s.f_bavail * s.f_frsize;
    Ok((used, used + avail))
}

fn age(path: &Path, secs: u64) -> Result<()> {
    guarded("age a file", || skos_testsupport::tmpfs::age(path, secs))
}

/// Fill the tmpfs to `fill`'s band: the ballast first (below every
/// threshold), then what the row's actions clean, written in one go.
fn fill(fs: &Path, f: Fill) -> Result<()> {
    const MIB: usize = 1 << 20;
    // (path, bytes, compressible text, age in seconds)
    let victims: Vec<(String, usize, bool, u64)> = match f {
        Fill::Warning => (0..3)
            .map(|i| (format!("tmp/old-{i}.bin"), 3 * MIB / 2, false, 7200))
            .collect(),
        Fill::Critical => {
            let mut v: Vec<_> = (1..=3)
                .map(|i| (format!("log/app.log.{i}"), 8 * MIB / 5, true, 7200))
                .collect();
            v.push(("old/report.dat".into(), 4 * MIB / 5, false, 7200));
            v
        }
        Fill::Emergency => (0..3)
            .map(|i| (format!("tmp/old-{i}.bin"), 3 * MIB / 2, false, 7200))
            .collect(),
    };
    let target = match f {
        Fill::Warning => 0.85,
        Fill::Critical => 0.925,
        Fill::Emergency => 0.975,
    };
    let (used, total) = usage(fs)?;
    let victim_bytes: usize = victims.iter().map(|v| v.1).sum();
    let ballast = (target * total as f64) as i64 - used as i64 - victim_bytes as i64 - 64 * 1024;
    let mut bodies = Vec::new();
    for (rel, n, text, _) in &victims {
        let body = if *text {
            b"2026-01-01T00:00:00Z INFO request served in 3 ms\n"
                .iter()
                .copied()
                .cycle()
                .take(*n)
                .collect()
        } else {
            skos_testsupport::tmpfs::pseudo_random(rel.len() as u64 + 7, *n)
        };
        bodies.push(body);
    }
    if ballast > 0 {
        let p = fs.join("data/ballast.bin");
        write(&p, "")?;
        std::fs::write(&p, vec![1u8; ballast as usize]).map_err(|e| Error::io(&p, e))?;
    }
    for ((rel, _, _, secs), body) in victims.iter().zip(bodies) {
        let p = fs.join(rel);
        write(&p, "")?;
        std::fs::write(&p, body).map_err(|e| Error::io(&p, e))?;
        age(&p, *secs)?;
    }
    Ok(())
}

/// Empty the tmpfs (every top-level entry).
fn empty(fs: &Path) -> Result<()> {
    for e in std::fs::read_dir(fs)
        .map_err(|e| Error::io(fs, e))?
        .flatten()
    {
        let p = e.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Ask steps of a runaway chain until one is denied; the time just before
/// the denied step was asked is the fault time.
async fn runaway(client: &ChainClient, kind: ChainFault, id: &str) -> Result<DateTime<Utc>> {
    let err = |e: skos_chain::Error| Error::failed(format!("chain {id}"), e);
    let mut chain = Chain::new(id).map_err(err)?;
    if kind == ChainFault::Burst {
        chain = chain.with_kind("burst").map_err(err)?;
    }
    let first = match kind {
        ChainFault::PingPong => "ask:service-a",
        ChainFault::Burst => "call:0",
        _ => "process_item",
    };
    let mut step: Step = chain.root(first).map_err(err)?;
    for i in 1..10_000u32 {
        let at = Utc::now();
        let d = client.ask(&step).await.map_err(err)?;
        if !d.allowed() {
            return Ok(at);
        }
        step = match kind {
            ChainFault::Recurse => chain.child(&step, "recurse").map_err(err)?,
            ChainFault::Iterate => chain.next(&step, "process_item").map_err(err)?,
            ChainFault::PingPong => {
                let next = if step.signature == "ask:service-a" {
                    "ask:service-b"
                } else {
                    "ask:service-a"
                };
                chain.next(&step, next).map_err(err)?
            }
            ChainFault::Burst => chain.root(&format!("call:{i}")).map_err(err)?,
        };
    }
    Err(Error::failed(
        format!("chain {id}"),
        "never denied in 10,000 steps",
    ))
}

/// Poll until `crossed` holds (checked every 5 ms); its time is the
/// fault time.
async fn when(what: &str, mut crossed: impl FnMut() -> bool) -> Result<DateTime<Utc>> {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    loop {
        if crossed() {
            return Ok(Utc::now());
        }
        if Instant::now() > deadline {
            return Err(Error::timeout(what, limit));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One trial of `row` (the `k`th): inject, follow the trail until the
/// trial settles (or [`TRIAL_LIMIT`]), undo.
async fn trial(st: &mut Stack, row: &Row, k: usize) -> Result<TrialFigures> {
    let heats = matches!(row.fault, Fault::Heat(_) | Fault::Fill(_));
    if heats {
        st.calm().await?;
    } else {
        st.alive()?;
    }
    // A different point of the monitor interval each time.
    tokio::time::sleep(Duration::from_millis(100 + (k as u64 * 137) % 500)).await;
    let since = Utc::now();
    let mut cooled = false;
    let (fault_at, sensor, running) = match row.fault {
        Fault::Heat(c) => {
            st.machine.set_package(c)?;
            (Utc::now(), None, None)
        }
        Fault::Fill(f) => {
            let fs = st
                .fs
                .as_ref()
                .ok_or_else(|| Error::failed("storage", "no tmpfs"))?;
            fill(fs.path(), f)?;
            (Utc::now(), None, None)
        }
        Fault::Chain(kind) => {
            let id = format!(
                "efficacy-{}-{k}-{}",
                row.condition.unwrap_or("x"),
                crate::sim::run_id()
            );
            let at = runaway(&st.client, kind, &id).await?;
            (at, Some(format!("chain:{id}")), None)
        }
        Fault::ForkBomb => {
            let dir = st.scripts.join(format!("forky-{k}"));
            let script = dir.join("fork.sh");
            let d = dir.display().to_string();
            let g = guarded("start the fork-happy script", || {
                ProcGroup::spawn_sh(&script, &[d.as_str(), "0"])
            })?;
            let at = when("the fork tree past its limit", || {
                g.members().len().saturating_sub(1) > MAX_DESCENDANTS
            })
            .await?;
            (at, Some(format!("proc:forky-{k}")), Some(g))
        }
        Fault::CrashLoop => {
            let dir = st.scripts.join(format!("crashy-{k}"));
            let script = dir.join("supervisor.sh");
            let d = dir.display().to_string();
            let g = guarded("start the crash loop", || {
                ProcGroup::spawn_sh(&script, &[d.as_str()])
            })?;
            let starts = dir.join("starts");
            let at = when("the crash loop past its limit", || {
                std::fs::read_to_string(&starts)
                    .map(|t| t.lines().count() > MAX_RESPAWNS)
                    .unwrap_or(false)
            })
            .await?;
            (at, Some(format!("proc:crashy-{k}")), Some(g))
        }
        Fault::Mesh(_) => return Err(Error::failed(row.name, "a mesh row runs on the mesh stack")),
        Fault::Fleet(_) => return Err(Error::failed(row.name, "a workload row runs on the fleet")),
    };
    let x = Expect {
        kind: row.kind,
        severity: row.severity,
        condition: row.condition,
        sensor: sensor.as_deref(),
        actions: row.actions,
        raised_by_coordinator: false,
    };
    let figures = follow(
        || st.audit(),
        NODE,
        since,
        fault_at,
        &x,
        || {
            if let Fault::Heat(_) = row.fault {
                // The plant: a throttled CPU cools.
                if !cooled && !st.machine.all_at(MAX_KHZ) {
                    st.machine.set_package(COOL_C)?;
                    cooled = true;
                }
            }
            Ok(())
        },
    )
    .await;
    st.alive()?;
    let figures = figures?;
    // Undo what the fault left.
    match row.fault {
        Fault::Heat(_) => st.machine.set_package(COOL_C)?,
        Fault::Fill(_) => {
            if let Some(fs) = &st.fs {
                empty(fs.path())?;
            }
        }
        _ => {}
    }
    drop(running);
    Ok(figures)
}

/// Read the trail every 250 ms (calling `plant` every 10 ms) until the
/// trial settles or [`TRIAL_LIMIT`] passes; the figures as they stand.
async fn follow(
    audit: impl Fn() -> Result<Vec<Value>>,
    node: &str,
    since: DateTime<Utc>,
    fault_at: DateTime<Utc>,
    x: &Expect<'_>,
    mut plant: impl FnMut() -> Result<()>,
) -> Result<TrialFigures> {
    let t0 = Instant::now();
    let mut last_read: Option<Instant> = None;
    let mut figures = trail::judge(&[], node, since, fault_at, x);
    loop {
        plant()?;
        if last_read.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
            last_read = Some(Instant::now());
            figures = trail::judge(&audit()?, node, since, fault_at, x);
            if figures.settled {
                return Ok(figures);
            }
        }
        if t0.elapsed() > TRIAL_LIMIT {
            return Ok(figures);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn describe(f: &TrialFigures) -> String {
    let s = |v: Option<f64>| v.map(|v| format!("{v:.2} s")).unwrap_or_else(|| "–".into());
    format!(
        "{} (alert {} after the fault, {}), {:?}, recovery {}, actions [{}], false {}{}{}",
        if f.detected {
            "detected"
        } else {
            "NOT detected"
        },
        s(f.detect_s),
        f.detected_at.as_deref().unwrap_or("–"),
        f.outcome,
        s(f.recovery_s),
        f.actions.join(", "),
        f.false_remediations.len(),
        f.false_remediations
            .iter()
            .map(|r| format!(" ({}: {})", r.action, r.why))
            .collect::<String>(),
        if f.settled {
            ""
        } else {
            " (not settled in time)"
        },
    )
}

/// The section: every chosen row, `o.efficacy_trials` trials each: the
/// single-node rows, then the mesh rows, then the rows with workloads,
/// each group on its own stack (started only when one of its rows is
/// chosen).
pub async fn run(o: &Opts) -> Result<SectionReport> {
    let rows = chosen(&o.efficacy_rows);
    if rows.is_empty() {
        return Err(Error::failed(
            "efficacy",
            format!("no row matches --rows {:?}", o.efficacy_rows),
        ));
    }
    let trials = o.efficacy_trials.max(1);
    let (mesh_rows, rows): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| matches!(r.fault, Fault::Mesh(_)));
    let (fleet_rows, rows): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| matches!(r.fault, Fault::Fleet(_)));
    let mut summaries = Vec::new();
    let mut failure = None;
    let mut server_own = None;
    if !rows.is_empty() {
        let mut st = Stack::start(o, trials).await?;
        server_own = Some(st.server.is_own());
        if let Err(e) = node_trials(&mut st, &rows, trials, &mut summaries).await {
            st.work.disable_cleanup(true);
            say(S, format!("logs kept in {}", st.work.path().display()));
            failure = Some(e);
        }
        st.coord.sigterm(Duration::from_secs(10)).await;
    }
    if failure.is_none() && !mesh_rows.is_empty() {
        if let Err(e) = mesh_trials(o, &mesh_rows, trials, &mut summaries).await {
            failure = Some(e);
        }
    }
    if failure.is_none() && !fleet_rows.is_empty() {
        if let Err(e) = fleet_trials(o, &fleet_rows, trials, &mut summaries).await {
            failure = Some(e);
        }
    }
    let text = table(&summaries, false);
    println!("\nHealing efficacy ({trials} trials a row):\n{text}");
    println!("{}", table(&summaries, true));
    for (row, why) in not_covered() {
        println!("not injected here: {row}: {why}");
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let figures = figures(&summaries);
    let data = json!({
        "node": NODE,
        "monitor_interval": MONITOR_INTERVAL,
        "trials_per_row": trials,
        "settings": {
            "verify_hold_seconds": 1, "verify_within": 20, "flap_start_changes": 1000,
            "alert_cooldown_seconds": 1, "max_actions_per_node_per_minute": 1000,
            "max_descendants": MAX_DESCENDANTS, "max_respawns": MAX_RESPAWNS, "burst_max_steps": BURST_STEPS,
        },
        "workload_rows": fleet::settings(o),
        "rows": summaries,
        "not_covered": not_covered().iter().map(|(r, w)| json!({"row": r, "why": w})).collect::<Vec<_>>(),
        "server_own": server_own,
    });
    Ok(SectionReport { data, figures })
}

/// The single-node rows on `st`; the first trial that fails ends them.
async fn node_trials(
    st: &mut Stack,
    rows: &[Row],
    trials: usize,
    out: &mut Vec<RowSummary>,
) -> Result<()> {
    say(
        S,
        format!(
            "{NODE} healthy; {} rows × {trials} trials (monitor interval {MONITOR_INTERVAL} s)",
            rows.len()
        ),
    );
    for row in rows {
        if matches!(row.fault, Fault::Fill(_)) && st.fs.is_none() {
            skip_rows(
                std::slice::from_ref(row),
                st.no_fs.as_deref().unwrap_or_default(),
                out,
            );
            continue;
        }
        let (figs, failed) = row_trials(row, trials, async |k| trial(st, row, k).await).await;
        out.push(RowSummary::of(row, figs));
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// `trials` trials of `row` by `trial` (given the trial's index), each
/// said as it ends; the first that fails ends them and is given back with
/// the figures of those before it.
async fn row_trials(
    row: &Row,
    trials: usize,
    mut trial: impl AsyncFnMut(usize) -> Result<TrialFigures>,
) -> (Vec<TrialFigures>, Option<Error>) {
    let mut figs = Vec::new();
    for k in 0..trials {
        match trial(k).await {
            Ok(f) => {
                say(S, format!("{} #{}: {}", row.name, k + 1, describe(&f)));
                figs.push(f);
            }
            Err(e) => {
                say(S, format!("{} #{}: FAILED: {e}", row.name, k + 1));
                return (figs, Some(e));
            }
        }
    }
    (figs, None)
}

/// Say and record that each of `rows` is skipped, and `why`.
fn skip_rows(rows: &[Row], why: &str, out: &mut Vec<RowSummary>) {
    for row in rows {
        say(S, format!("{}: skipped: {why}", row.name));
        out.push(RowSummary::skipped(row, why.to_string()));
    }
}

/// The rows with workloads, on the fleet; skipped (with the reason) where
/// namespaces, busybox or nats-server are missing or not root.
async fn fleet_trials(
    o: &Opts,
    rows: &[Row],
    trials: usize,
    out: &mut Vec<RowSummary>,
) -> Result<()> {
    if let Err(e) = fleet::prerequisites() {
        skip_rows(rows, &e.to_string(), out);
        return Ok(());
    }
    let mut fl = fleet::FleetStack::start(o).await?;
    say(
        S,
        format!(
            "fleet at rest ({} with synthesis-core and docker-swarm, spares lyra and athena); {} rows × {trials} trials",
            fleet::NODE,
            rows.len()
        ),
    );
    for row in rows {
        let Fault::Fleet(fault) = row.fault else {
            continue;
        };
        let bound = fleet::detect_bound(fault, o);
        let (figs, failed) = row_trials(row, trials, async |k| fl.trial(row, fault, k).await).await;
        out.push(RowSummary::of(row, figs).within(bound));
        if let Some(e) = failed {
            say(S, format!("logs kept in {}", fl.keep_logs()));
            return Err(e);
        }
    }
    fl.stop().await;
    Ok(())
}

/// The mesh rows, on a stack of their own; skipped (with the reason)
/// where namespaces or WireGuard are missing.
async fn mesh_trials(
    o: &Opts,
    rows: &[Row],
    trials: usize,
    out: &mut Vec<RowSummary>,
) -> Result<()> {
    if let Err(e) = mesh::prerequisites() {
        skip_rows(rows, &e.to_string(), out);
        return Ok(());
    }
    let mut m = mesh::MeshStack::start(o).await?;
    say(S, format!("{} healthy in its namespace", mesh::NODE));
    for row in rows {
        let Fault::Mesh(fault) = row.fault else {
            continue;
        };
        let (figs, failed) = row_trials(row, trials, async |k| m.trial(row, fault, k).await).await;
        out.push(RowSummary::of(row, figs));
        if let Some(e) = failed {
            m.work.disable_cleanup(true);
            say(S, format!("logs kept in {}", m.work.path().display()));
            return Err(e);
        }
    }
    m.stop().await;
    Ok(())
}

fn figures(rows: &[RowSummary]) -> Vec<Figure> {
    let mut out = Vec::new();
    let (mut trials, mut handled, mut rem, mut fals) = (0, 0, 0, 0);
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        trials += r.trials;
        handled += r.handled();
        rem += r.remediations;
        fals += r.false_remediations;
        let max = r.detect_s.as_ref().map(|s| s.max).unwrap_or(f64::NAN);
        out.push(
            Figure::new(S, format!("{}: detect max", r.row), max, "s")
                .beside(r.detect_within.clone(), r.detect_within_s)
                .at_most(r.detect_within_s)
                .note("fault → the alert's own timestamp (the agent's reading; the coordinator's for a dead node)"),
        );
        let rec = r.recovery_s.as_ref().map(|s| s.p99).unwrap_or(f64::NAN);
        out.push(Figure::new(S, format!("{}: recovery p99", r.row), rec, "s"));
    }
    let pct = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 * 100.0 / b as f64
        }
    };
    out.push(
        Figure::new(
            S,
            "trials healed, escalated or stopped safely",
            pct(handled, trials),
            "%",
        )
        .at_least(100.0),
    );
    out.push(Figure::new(
        S,
        "false remediation rate",
        pct(fals, rem),
        "%",
    ));
    out
}

/// `skos audit tail --json` for every record of a trail (where it is read
/// from is for the caller to add: `NATS_URL`, `--data-dir`).
fn audit_tail(bin: &Path) -> std::process::Command {
    let mut c = procs::skos_command(bin);
    c.args(["audit", "tail", "--json", "-n", "10000000"])
        .stdin(std::process::Stdio::null());
    c
}

/// Run `c` (an [`audit_tail`]) and read its records.
fn audit_records(mut c: std::process::Command) -> Result<Vec<Value>> {
    let out = c.output().ctx("skos audit tail")?;
    if !out.status.success() {
        return Err(Error::failed(
            "skos audit tail",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
