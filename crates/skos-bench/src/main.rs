//! `skos-bench`: how fast, how small, how far SKOS scales, each figure
//! measured beside its ceiling in the same run. See `bench/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Map, Value};
use skos_bench::{machine, report, Figure, Opts, SectionReport};

/// The `skos` binary's allocator: the in-process coordinator (ingest,
/// latency, fairness) allocates as the real one does. The plain clients
/// measured beside it share it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    All,
    Ingest,
    Latency,
    Fairness,
    Detection,
    Footprint,
    Embedded,
    Failover,
    Efficacy,
}

const ORDER: [Section; 8] = [
    Section::Ingest,
    Section::Latency,
    Section::Fairness,
    Section::Detection,
    Section::Footprint,
    Section::Embedded,
    Section::Failover,
    Section::Efficacy,
];

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::All => "all",
            Section::Ingest => "ingest",
            Section::Latency => "latency",
            Section::Fairness => "fairness",
            Section::Detection => "detection",
            Section::Footprint => "footprint",
            Section::Embedded => "embedded",
            Section::Failover => "failover",
            Section::Efficacy => "efficacy",
        }
    }
}

/// Benchmark SKOS against the bus's own ceiling, side by side.
#[derive(Debug, Parser)]
#[command(name = "skos-bench", version)]
struct Cli {
    /// Sections to run.
    #[arg(value_enum, default_values_t = [Section::All])]
    sections: Vec<Section>,
    /// Simulated nodes for ingest (one alert each, up to 10,000 alerts).
    #[arg(long)]
    nodes: Option<usize>,
    /// Heartbeats in the ingest burst (at least one per node).
    #[arg(long)]
    heartbeats: Option<usize>,
    /// Alerts in the ingest burst (default: one per node, at most 10,000).
    #[arg(long)]
    ingest_alerts: Option<usize>,
    /// Heartbeats in the overload burst (0 to skip it).
    #[arg(long)]
    overload: Option<usize>,
    /// Alerts for the latency run (one per node).
    #[arg(long)]
    alerts: Option<usize>,
    /// Open-alert counts for the alert scaling runs, comma-separated (a
    /// fresh server and coordinator each; 0 to skip).
    #[arg(long, value_delimiter = ',')]
    alert_scale: Option<Vec<usize>>,
    /// Alerts one node floods in the fairness section (0 to skip it).
    #[arg(long)]
    flood: Option<usize>,
    /// Other nodes' alerts timed without the flood (fairness reference).
    #[arg(long)]
    fairness_probes: Option<usize>,
    /// Leader lease of every coordinator started, seconds.
    #[arg(long)]
    lease: Option<f64>,
    /// Fleet sizes for the coordinator's footprint, comma-separated.
    #[arg(long, value_delimiter = ',')]
    footprint_nodes: Option<Vec<usize>>,
    /// CPU measuring window, seconds.
    #[arg(long)]
    window: Option<f64>,
    /// Hot-CPU repetitions (distributed and embedded).
    #[arg(long)]
    repeats: Option<usize>,
    /// HEARTBEAT_TIMEOUT for offline detection, seconds.
    #[arg(long)]
    heartbeat_timeout: Option<f64>,
    /// Trials of each failover (emergency temperature, agent SIGKILL).
    #[arg(long)]
    failover_trials: Option<usize>,
    /// failover_delay_seconds for the failover section.
    #[arg(long)]
    failover_delay: Option<f64>,
    /// Trials of each healing-table row (efficacy section; default 5, 1
    /// with --quick).
    #[arg(long)]
    trials: Option<usize>,
    /// Efficacy rows to run, comma-separated: each keeps the rows whose
    /// name contains it (`thermal`, `storage critical`, `crash_loop`,
    /// `mesh`, `workloads`, `dead node`).
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Smoke run: small counts, short windows (about half a minute).
    #[arg(long)]
    quick: bool,
    /// Use this server instead of starting one per section.
    #[arg(long)]
    nats_url: Option<String>,
    /// The skos binary (default: next to this one, target/<profile>/skos).
    #[arg(long)]
    skos_bin: Option<PathBuf>,
    /// The lean agent binary the footprint measures (default:
    /// SKOS_AGENT_BIN, then skos-agent next to the skos binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Where to write the JSON report (default: next to this binary,
    /// skos-bench-latest.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also print the table as Markdown.
    #[arg(long)]
    markdown: bool,
}

fn opts(cli: &Cli) -> Opts {
    let mut o = if cli.quick {
        Opts::quick()
    } else {
        Opts::full()
    };
    if let Some(n) = cli.nodes {
        o.nodes = n.max(1);
    }
    o.heartbeats = cli.heartbeats.unwrap_or(o.heartbeats).max(o.nodes);
    o.ingest_alerts = cli.ingest_alerts;
    if let Some(n) = cli.overload {
        o.overload_heartbeats = n;
    }
    if let Some(n) = cli.alerts {
        o.latency_alerts = n.max(1);
    }
    if let Some(s) = &cli.alert_scale {
        o.alert_scale = s.iter().copied().filter(|&n| n > 0).collect();
    }
    if let Some(n) = cli.flood {
        o.flood_alerts = n;
    }
    if let Some(n) = cli.fairness_probes {
        o.fairness_probes = n.max(1);
    }
    if let Some(l) = cli.lease {
        o.lease_seconds = l.max(1.0);
    }
    if let Some(f) = &cli.footprint_nodes {
        o.footprint_nodes = f.clone();
    }
    if let Some(w) = cli.window {
        o.window = Duration::from_secs_f64(w.max(0.5));
    }
    if let Some(r) = cli.repeats {
        o.detection_repeats = r.max(1);
        o.embedded_repeats = r.max(1);
    }
    if let Some(t) = cli.heartbeat_timeout {
        o.heartbeat_timeout = t.max(0.5);
    }
    if let Some(n) = cli.failover_trials {
        o.failover_trials = n.max(1);
    }
    if let Some(d) = cli.failover_delay {
        o.failover_delay = d.max(0.0);
    }
    if let Some(n) = cli.trials {
        o.efficacy_trials = n.max(1);
    }
    if let Some(r) = &cli.rows {
        o.efficacy_rows = r.iter().map(|s| s.trim().to_string()).collect();
    }
    o.nats_url = cli.nats_url.clone();
    o.skos_bin = cli.skos_bin.clone();
    o.agent_bin = cli.agent_bin.clone();
    o
}

async fn section(s: Section, o: &Opts) -> skos_bench::Result<SectionReport> {
    match s {
        Section::Ingest => skos_bench::ingest::run(o).await,
        Section::Latency => skos_bench::latency::run(o).await,
        Section::Fairness => skos_bench::fairness::run(o).await,
        Section::Detection => skos_bench::detection::run(o).await,
        Section::Footprint => skos_bench::footprint::run(o).await,
        Section::Embedded => skos_bench::embedded::run(o).await,
        Section::Failover => skos_bench::failover::run(o).await,
        Section::Efficacy => skos_bench::efficacy::run(o).await,
        Section::All => Ok(SectionReport::default()),
    }
}

/// Each section with a time limit; a failed one is reported and the
/// others still run.
async fn run_all(chosen: &[Section], o: &Opts) -> (Map<String, Value>, Vec<Figure>, usize) {
    let mut sections = Map::new();
    let mut figures = Vec::new();
    let mut failed = 0;
    for &s in chosen {
        let name = s.name();
        eprintln!("== {name} ==");
        let t = Instant::now();
        // Efficacy runs every healing-table row several times.
        let limit = Duration::from_secs(if s == Section::Efficacy { 3600 } else { 900 });
        let r = tokio::time::timeout(limit, section(s, o)).await;
        let seconds = t.elapsed().as_secs_f64();
        let entry = match r {
            Ok(Ok(rep)) => {
                figures.extend(rep.figures.iter().cloned());
                json!({"seconds": seconds, "data": rep.data, "figures": rep.figures})
            }
            Ok(Err(skos_bench::Error::Missing(why))) => {
                eprintln!("[{name}] skipped: {why}");
                failed += 1;
                json!({"seconds": seconds, "skipped": why})
            }
            Ok(Err(e)) => {
                eprintln!("[{name}] FAILED: {e}");
                failed += 1;
                json!({"seconds": seconds, "error": e.to_string()})
            }
            Err(_) => {
                eprintln!("[{name}] FAILED: still running after {limit:?}");
                failed += 1;
                json!({"seconds": seconds, "error": format!("timed out after {limit:?}")})
            }
        };
        sections.insert(name.to_string(), entry);
    }
    (sections, figures, failed)
}

fn default_json_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("skos-bench-latest.json")))
        .unwrap_or_else(|| PathBuf::from("skos-bench-latest.json"))
}

async fn main_async(cli: Cli) -> Result<ExitCode> {
    let o = opts(&cli);
    let chosen: Vec<Section> = if cli.sections.contains(&Section::All) {
        ORDER.to_vec()
    } else {
        ORDER
            .iter()
            .copied()
            .filter(|s| cli.sections.contains(s))
            .collect()
    };
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let machine = machine::describe();
    eprintln!(
        "skos-bench: {} on {} CPU(s), load {:?}; nats-server stores under {} (a file created there in {})",
        chosen
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        machine["nproc"],
        machine::load().unwrap_or_default(),
        std::env::temp_dir().display(),
        machine["temp_file_create_us"]
            .as_f64()
            .map_or("?".to_string(), |us| format!("{us:.0} µs")),
    );
    let interrupted = tokio::select! {
        r = run_all(&chosen, &o) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some((sections, figures, failed)) = interrupted else {
        eprintln!("skos-bench: interrupted; every process it started has been stopped");
        return Ok(ExitCode::from(130));
    };
    let met = figures.iter().filter(|f| f.met == Some(true)).count();
    let missed = figures.iter().filter(|f| f.met == Some(false)).count();
    let doc = json!({
        "tool": "skos-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": started.to_rfc3339(),
        "seconds": t0.elapsed().as_secs_f64(),
        "args": std::env::args().collect::<Vec<_>>(),
        "machine": machine,
        "load_at_end": machine::load(),
        "options": o,
        "sections": sections,
        "figures": figures,
        "summary": {"figures": figures.len(), "targets_met": met, "targets_missed": missed, "sections_failed": failed},
    });
    println!();
    print!("{}", report::table(&figures));
    if cli.markdown {
        println!();
        print!("{}", report::markdown(&figures));
    }
    println!(
        "\n{} figures, {met} targets met, {missed} missed, {failed} section(s) failed or skipped; {:.0} s",
        figures.len(),
        t0.elapsed().as_secs_f64()
    );
    let path = cli.json.clone().unwrap_or_else(default_json_path);
    let body = serde_json::to_vec_pretty(&doc)?;
    std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        // Printed only with RUST_LOG; warnings and errors always counted
        // (`skos_bench::logged`), for the sections to report.
        let printed = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(printed)
            .with(
                skos_bench::logged::Counting
                    .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
            )
            .try_init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skos-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skos-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
