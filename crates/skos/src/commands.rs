//! What each subcommand does. The library crates do the work; this module
//! loads the config, wires a bus and an audit store, and prints.

use skos_core::escape::ShowPath;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skos_agent::runtime::Agent;
use skos_agent::sensors::{ProblemKind, Sensors};
use skos_bus::audit::{self, AuditLog};
use skos_bus::audit_follow::AuditSource;
use skos_bus::lease::{self, Lease};
use skos_bus::trust::Signer;
use skos_bus::{Bus, InProcBus, NatsBus, NatsOptions, StateStore};
use skos_coordinator::status::{NodeOrder, StatusQuery};
use skos_coordinator::{ServiceOptions, Status};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::AuditEntry;
use skos_core::NodeName;
use skos_http::HttpOptions;
use tokio::sync::watch;

use crate::cli::{AuditCmd, Cli, Cmd, ConfigArg, ConfigCmd, FleetCmd, KeysCmd, StatusArgs};
use skos::node::{
    agent, connect, login_files, nats_options, refuse_key_conflicts, stopped, warn_if_exposed,
};
pub(crate) use skos::node::{init_logging, init_logging_labelled, shutdown_signal};

/// A line on standard error for a person; a reader gone (a closed pipe)
/// is no reason to stop.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up {
            config,
            data_dir,
            http,
        } => {
            let cfg = load(&config, data_dir)?;
            up(cfg, http.as_deref()).await
        }
        Cmd::Coordinator { config, http } => {
            coordinator(load(&config, None)?, http.as_deref()).await
        }
        Cmd::Agent { config, data_dir } => agent(load(&config, data_dir)?).await,
        Cmd::Sensors { config, json } => sensors(&load_quiet(&config)?, json),
        Cmd::Status {
            config,
            json,
            data_dir,
            watch,
            query,
        } => match watch {
            None => status(&config, data_dir, json, &query).await,
            Some(every) => status_watch(&config, data_dir, json, &query, every).await,
        },
        Cmd::Audit { command } => match command {
            AuditCmd::Tail {
                config,
                n,
                json,
                data_dir,
                follow,
            } => audit_tail(&config, data_dir, n, json, follow).await,
            AuditCmd::Verify {
                config,
                data_dir,
                checkpoint,
            } => audit_verify(&config, data_dir, checkpoint).await,
            AuditCmd::Checkpoint {
                config,
                data_dir,
                out,
            } => audit_checkpoint(&config, data_dir, out).await,
        },
        Cmd::Config {
            command: ConfigCmd::Check { config },
        } => config_check(&ConfigArg { config }),
        Cmd::Keys {
            command: KeysCmd::Generate { out, force },
        } => keys_generate(&out, force),
        Cmd::Demo { http, pace } => crate::demo::demo(http.as_deref(), pace).await,
        Cmd::Silence { command } => crate::control::silence(command).await,
        Cmd::Node { command } => crate::control::node(command).await,
        Cmd::Approvals { control } => crate::control::approvals(control).await,
        Cmd::Approve { id, control } => crate::control::decide(id, true, control).await,
        Cmd::Deny { id, control } => crate::control::decide(id, false, control).await,
        Cmd::Fleet {
            command: FleetCmd::NatsConfig { nodes, out, force },
        } => crate::fleet::nats_config(&nodes, &out, force),
        Cmd::Fleet {
            command:
                FleetCmd::Init {
                    nodes,
                    out,
                    nats_url,
                    force,
                },
        } => crate::fleet::init(&nodes, &out, &nats_url, force),
        // Both generated from the command line's own definition.
        Cmd::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "skos", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Install {
            root,
            config,
            agent_binary,
            enable,
            uninstall,
            purge,
        } => {
            let binary = std::env::current_exe().context("cannot find this binary")?;
            let agent_binary = agent_binary.or_else(|| {
                let beside = binary.with_file_name("skos-agent");
                beside.is_file().then_some(beside)
            });
            let plan = crate::install::Plan {
                root,
                binary,
                agent_binary,
                config,
                enable,
            };
            crate::install::command(&plan, uninstall, purge)
        }
        Cmd::Man => {
            let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Defaults < file < environment < flags.
fn read_config(arg: &ConfigArg, data_dir: Option<PathBuf>) -> Result<Config> {
    skos::node::read_config(arg.config.as_deref(), data_dir)
}

/// [`read_config`], then logging at the config's level and its warnings.
fn load(arg: &ConfigArg, data_dir: Option<PathBuf>) -> Result<Config> {
    skos::node::load(arg.config.as_deref(), data_dir)
}

pub(crate) fn load_quiet(arg: &ConfigArg) -> Result<Config> {
    let cfg = read_config(arg, None)?;
    init_logging("ERROR")?;
    Ok(cfg)
}

/// The HTTP options of `cfg` and `--http`, checked before anything starts
/// (`None`: HTTP is off).
pub(crate) fn http_options(cfg: &Config, flag: Option<&str>) -> Result<Option<HttpOptions>> {
    Ok(HttpOptions::resolve(cfg, flag)?)
}

/// Start the HTTP server when it is on; says where it listens.
async fn serve_http(
    opts: Option<HttpOptions>,
    sources: skos_http::Sources,
    stop: watch::Receiver<bool>,
    say: &str,
) -> Result<Option<skos_http::Server>> {
    let Some(opts) = opts else {
        return Ok(None);
    };
    let server = skos_http::start(opts, sources, stopped(stop)).await?;
    if let Some(s) = &server {
        let scheme = if s.tls { "https" } else { "http" };
        note!(
            "{say} live page and HTTP API on {scheme}://{}/ (metrics: /metrics)",
            s.addr
        );
    }
    Ok(server)
}

/// Wait a while for the HTTP server to finish its last answers.
async fn http_stopped(server: Option<skos_http::Server>) {
    if let Some(s) = server {
        if tokio::time::timeout(Duration::from_secs(5), s.stopped())
            .await
            .is_err()
        {
            tracing::warn!("HTTP server still answering after 5 s; stopping without it");
        }
    }
}

async fn up(cfg: Config, http: Option<&str>) -> Result<ExitCode> {
    let http = http_options(&cfg, http)?;
    // One config serves the coordinator and the agent here: a deadline
    // the agent refuses would refuse every command.
    if cfg.coordinator.command_deadline > cfg.trust.max_deadline_seconds {
        bail!(
            "coordinator.command_deadline ({} s) is above trust.max_deadline_seconds ({} s): the agent would refuse every command; lower the one or raise the other",
            cfg.coordinator.command_deadline,
            cfg.trust.max_deadline_seconds
        );
    }
    embedded(cfg, http, &Embedded::UP, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// What differs between `skos up` and `skos demo`.
pub(crate) struct Embedded {
    /// `embedded` or `demo`: the mode status and the start record show.
    pub mode: &'static str,
    /// What its lines on the terminal start with.
    pub say: &'static str,
    /// Put before every audit record's summary (`[demo]`).
    pub audit_label: Option<&'static str>,
}

impl Embedded {
    const UP: Embedded = Embedded {
        mode: "embedded",
        say: "skos:",
        audit_label: None,
    };
}

/// The embedded trail's segments and retention, from `audit.*` (and
/// `general.audit_retention_days`).
pub(crate) fn audit_policy(cfg: &Config) -> audit::Policy {
    audit::Policy {
        segment_bytes: cfg.audit.segment_bytes,
        segment_age: Duration::from_secs(cfg.audit.segment_hours.saturating_mul(3600)),
        retain: cfg
            .audit_retention_days()
            .map(|d| Duration::from_secs(d.saturating_mul(86_400))),
    }
}

/// Embedded mode: the coordinator, the local agent and the HTTP server
/// (when `http` is on) in this process over an in-process bus, the audit
/// trail and state in the data dir, until `stop` completes.
pub(crate) async fn embedded(
    cfg: Config,
    http: Option<HttpOptions>,
    how: &Embedded,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let data_dir = cfg.data_dir.clone();
    let say = how.say;
    // Created 0700; refused (naming its owner and mode) when another user
    // owns it or others may write it: they could plant links that make
    // root overwrite its own files.
    skos_fs::Dir::private(&data_dir).context("data dir refused")?;
    let mut audit = AuditLog::open_file_with(&data_dir.join("audit.jsonl"), audit_policy(&cfg))?;
    if let Some(label) = how.audit_label {
        audit = audit.labelled(label);
    }
    let audit = Arc::new(audit);
    // A look bounded to a second: a slow source must not hold up the start
    // (the agent reads it on its own thread and reports it).
    let sensors = Sensors::configured(&cfg)
        .scan_within(Duration::from_secs(1))
        .readings;
    if sensors.is_empty() {
        note!(
            "{say} no temperature sensor found under {} (heartbeats will say so: cpu_temp and gpu_temp are null)",
            cfg.sysfs_root.escaped()
        );
    }
    note!(
        "{say} {} mode, node {}, {} temperature sensor(s), data dir {}; Ctrl-C to stop",
        how.mode,
        cfg.node.name,
        sensors.len(),
        data_dir.escaped()
    );
    let node = cfg.node.name.clone();
    let bus = Bus::InProc(InProcBus::new());
    let counters = Counters::default();
    let (tx, rx) = watch::channel(false);
    // Served before the first record is written, so the metrics derived
    // from the trail count every record of this run.
    let server = serve_http(
        http,
        skos_http::Sources {
            bus: bus.clone(),
            audit: AuditSource::File(data_dir.join("audit.jsonl")),
            counters: counters.clone(),
            holder: None,
        },
        rx.clone(),
        say,
    )
    .await?;
    audit
        .append(AuditEntry::new(
            skos_core::AuditEvent::Start,
            chrono::Utc::now(),
            Some(&cfg.node.name),
            "skos",
            format!("{} mode started on {}", how.mode, cfg.node.name),
            json!({"mode": how.mode, "sensors": sensors.len(), "version": env!("CARGO_PKG_VERSION")}),
        ))
        .await?;
    // Commands are signed in embedded mode too, with a key that lives as
    // long as the process, so the agent runs the same checks.
    let signer = Arc::new(Signer::ephemeral());
    let mut agent_cfg = cfg.clone();
    agent_cfg.trust.coordinator_keys = vec![signer.public_key()];
    let opts = ServiceOptions {
        mode: how.mode.into(),
        status_file: Some(data_dir.join("status.json")),
        signer: Some(signer),
        ..Default::default()
    };
    let coordinator = tokio::spawn(skos_coordinator::run(
        cfg.clone(),
        bus.clone(),
        audit.clone(),
        StateStore::dir(&data_dir),
        counters.clone(),
        opts,
        stopped(rx.clone()),
    ));
    let agent = Agent::new(agent_cfg, bus, counters, Some(data_dir.join("agent")))?;
    let agent = match how.audit_label {
        Some(label) => agent.announce_labelled(label),
        None => agent.announce_at_start(),
    };
    let agent = tokio::spawn(agent.run(stopped(rx)));
    stop.await;
    let _ = tx.send(true);
    let (c, a, ()) = tokio::join!(coordinator, agent, http_stopped(server));
    c??;
    a??;
    // Said as the start is: the node, the mode.
    audit
        .append(AuditEntry::new(
            skos_core::AuditEvent::Stop,
            chrono::Utc::now(),
            Some(&node),
            "skos",
            format!("{} mode stopped on {node}", how.mode),
            json!({"mode": how.mode}),
        ))
        .await?;
    Ok(())
}

/// Connection options of an operator's command (`skos status`, `skos
/// audit`): replies on the operator's own inbox, no stream created (a
/// read-only credential may do neither more nor less).
pub(crate) fn operator_options(cfg: &Config, name: &str) -> Result<NatsOptions> {
    let mut opts = nats_options(cfg, name)?;
    opts.inbox_prefix = Some(skos_bus::subjects::OPERATOR_INBOX.to_string());
    opts.create_streams = false;
    Ok(opts)
}

async fn coordinator(cfg: Config, http: Option<&str>) -> Result<ExitCode> {
    let http = http_options(&cfg, http)?;
    // Before logging in: a signing key that is also the login key is
    // refused.
    let signer = match &cfg.trust.signing_key_file {
        Some(path) => {
            warn_if_exposed(path);
            let s = Signer::from_seed_file(path)?;
            refuse_key_conflicts(&cfg, Some(&s))?;
            tracing::info!(public_key = %s.public_key(), "commands are signed");
            Some(Arc::new(s))
        }
        None => None,
    };
    let nats = connect(&cfg, "skos-coordinator").await?;
    // Every audit message is signed with the same key as the commands
    // (under its own context); the chain continues only from messages
    // signed by this or another trusted coordinator.
    let signing = match &signer {
        Some(s) => Some(audit::Signing::new(s.clone(), &cfg.trust.coordinator_keys)?),
        None => None,
    };
    let audit = Arc::new(AuditLog::open_jetstream_signed(&nats, signing).await?);
    // The state is sealed with the same key (its own context), and only
    // records a trusted coordinator sealed are restored.
    let state_trust = match &signer {
        Some(s) => {
            let mut keys = cfg.trust.coordinator_keys.clone();
            keys.push(s.public_key());
            Some(Arc::new(skos_bus::trust::Verifier::new(&keys, true)?))
        }
        None => None,
    };
    // Nodes' keys: a node's messages are taken only signed with its key.
    let node_trust = if cfg.trust.node_keys.is_empty() && !cfg.trust.require_node_signatures {
        tracing::warn!("nodes' messages are not checked (no trust.node_keys): on a server without SKOS's permissions anyone can speak for a node");
        None
    } else {
        let v = skos_bus::trust::NodeVerifier::new(
            &cfg.trust.node_keys,
            cfg.trust.require_node_signatures,
        )?;
        tracing::info!(
            keyed_nodes = v.key_count(),
            required = v.required(),
            "nodes' heartbeats, alerts and results are checked against their keys"
        );
        Some(Arc::new(v))
    };
    let state = StateStore::jetstream(&nats).await?;
    // A trail or state that can be deleted or purged is refused: locked
    // here where this credential may, else an error saying how.
    nats.lock_streams().await?;
    let holder = lease::holder_id();
    let lease = Lease::open(
        &nats,
        holder.clone(),
        Duration::from_secs_f64(cfg.coordinator.leader_lease_seconds),
    )
    .await?;
    let (tx, rx) = watch::channel(false);
    let counters = Counters::default();
    let server = serve_http(
        http,
        skos_http::Sources {
            bus: Bus::Nats(nats.clone()),
            audit: AuditSource::JetStream(nats.clone(), audit_keys(&cfg)?.map(Arc::new)),
            counters: counters.clone(),
            holder: Some(holder),
        },
        rx.clone(),
        "skos:",
    )
    .await?;
    let task = tokio::spawn(skos_coordinator::run(
        cfg,
        Bus::Nats(nats),
        audit,
        state,
        counters,
        ServiceOptions {
            signer,
            election: Some(lease),
            state_trust,
            node_trust,
            ..Default::default()
        },
        stopped(rx),
    ));
    shutdown_signal().await;
    let _ = tx.send(true);
    let (task, ()) = tokio::join!(task, http_stopped(server));
    task??;
    Ok(ExitCode::SUCCESS)
}

fn sensors(cfg: &Config, as_json: bool) -> Result<ExitCode> {
    // Each source is waited for at most its own budget
    // (`thermal.sources`); one still reading then is named slow.
    let scan = Sensors::configured(cfg).scan();
    let readings = &scan.readings;
    let slow: Vec<String> = scan
        .problems
        .iter()
        .filter_map(|p| match &p.what {
            ProblemKind::Slow { chip, .. } => Some(match chip {
                Some(chip) => format!("{} ({chip})", p.at),
                None => p.at.clone(),
            }),
            _ => None,
        })
        .collect();
    if as_json {
        // stdout stays the array of readings; what gave no reading goes to stderr.
        println!("{}", serde_json::to_string_pretty(readings)?);
        for p in &scan.problems {
            eprintln!("skos sensors: {p}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if readings.is_empty() {
        println!(
            "no temperature sensor found under {}",
            cfg.sysfs_root.escaped()
        );
    } else {
        println!(
            "{:<6} {:<8} {:<6} {:>7}  {:<20} {:<12} PATH",
            "KIND", "ROLE", "COUNTS", "°C", "LABEL", "SOURCE"
        );
    }
    let word = |v: Value| v.as_str().unwrap_or("?").to_string();
    for r in readings {
        println!(
            "{:<6} {:<8} {:<6} {:>7.1}  {:<20} {:<12} {}",
            word(serde_json::to_value(r.kind)?),
            word(serde_json::to_value(r.role)?),
            if r.counts { "yes" } else { "no" },
            r.celsius,
            r.label,
            r.source,
            r.path.escaped()
        );
    }
    if !scan.problems.is_empty() {
        println!("\nproblems (no reading, or a reading with a caveat):");
        for p in &scan.problems {
            println!("  {p}");
        }
    }
    if !slow.is_empty() {
        println!(
            "\nslow sources (no answer within their budget, thermal.sources; not shown above): {}",
            slow.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// NATS when NATS_URL is set and no data dir was named; else the data dir.
fn use_nats(data_dir: &Option<PathBuf>) -> bool {
    data_dir.is_none() && std::env::var_os("NATS_URL").is_some()
}

/// What to add to "nothing in the data dir" when the config names a bus
/// (a URL other than the default, or a bus credential) and `NATS_URL` is
/// not set: the operator most likely meant the fleet's.
fn bus_hint(cfg: &Config) -> String {
    let n = &cfg.nats;
    let names_bus = n.url != skos_core::config::NatsSection::default().url
        || n.nkey_seed_file.is_some()
        || n.creds_file.is_some();
    if names_bus && std::env::var_os("NATS_URL").is_none() {
        format!(
            "; this config names a bus: set NATS_URL={} to ask the fleet's",
            n.url
        )
    } else {
        String::new()
    }
}

/// The status query `skos status` sends: the CLI's pages count from 1,
/// the query's from 0.
fn status_query(args: &StatusArgs) -> Result<StatusQuery> {
    let node = args
        .node
        .as_deref()
        .map(NodeName::parse)
        .transpose()
        .context("--node")?;
    let defaults = StatusQuery::default();
    let per_page = match args.per_page {
        Some(n) => usize::try_from(n).context("--per-page")?,
        None => defaults.per_page,
    };
    Ok(StatusQuery {
        page: usize::try_from(args.page.saturating_sub(1)).context("--page")?,
        per_page,
        node,
        problem_nodes_only: args.problems,
        order: if args.by_name {
            NodeOrder::Name
        } else {
            NodeOrder::ProblemsFirst
        },
    }
    .normalized())
}

/// `skos status --watch SECS`: the status again every `every` seconds
/// until SIGINT or SIGTERM; a status that cannot be had is said, and the
/// watch goes on.
async fn status_watch(
    arg: &ConfigArg,
    data_dir: Option<PathBuf>,
    as_json: bool,
    args: &StatusArgs,
    every: f64,
) -> Result<ExitCode> {
    if !(every.is_finite() && (0.2..=86_400.0).contains(&every)) {
        bail!("--watch {every}: give seconds between 0.2 and 86400");
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        if tty {
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[2J\x1b[H");
        }
        if let Err(e) = status(arg, data_dir.clone(), as_json, args).await {
            eprintln!("skos: {e:#}");
        }
        {
            use std::io::Write;
            std::io::stdout().flush()?;
        }
        tokio::select! {
            _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs_f64(every)) => {}
        }
    }
}

async fn status(
    arg: &ConfigArg,
    data_dir: Option<PathBuf>,
    as_json: bool,
    args: &StatusArgs,
) -> Result<ExitCode> {
    let nats = use_nats(&data_dir);
    let cfg = load_quiet(arg)?;
    let query = status_query(args)?;
    let body: Vec<u8> = if nats {
        let bus = NatsBus::connect(&operator_options(&cfg, "skos-status")?).await?;
        match Bus::Nats(bus)
            .request_status_query(&query, Duration::from_secs(5))
            .await
        {
            Ok(body) => body.to_vec(),
            Err(e @ skos_bus::Error::Denied { .. }) => {
                bail!(
                    "this credential may not ask for status (only the operator's and the \
                     coordinator's may; see `skos fleet nats-config`): {e}"
                );
            }
            Err(e) => {
                eprintln!(
                    "skos: no coordinator leads right now (none running, or a standby waiting \
                     for the leader's lease to run out: up to coordinator.leader_lease_seconds); \
                     only the leader answers status: {e}"
                );
                return Ok(ExitCode::from(NOT_RUNNING));
            }
        }
    } else {
        let dir = data_dir.unwrap_or_else(|| cfg.data_dir.clone());
        let path = dir.join("status.json");
        match std::fs::read(&path) {
            Ok(body) => body,
            Err(e) => {
                eprintln!(
                    "skos: no status at {} (is `skos up` running with this data dir?{}): {e}",
                    path.escaped(),
                    bus_hint(&cfg)
                );
                return Ok(ExitCode::from(NOT_RUNNING));
            }
        }
    };
    let mut status = Status::from_reply(&body)?;
    if !nats {
        // The file holds the first page: page and filter it here.
        status = status.select(&query);
    }
    // `skos up` writes its snapshot every second: an old one is what a
    // stopped (or stuck) `skos up` left.
    let age = chrono::Utc::now() - status.generated_at;
    let stopped = !nats && status.stopped_at.is_some();
    let stale = !nats && !stopped && age > chrono::Duration::seconds(STALE_SNAPSHOT_SECONDS);
    if as_json {
        if nats {
            // The reply as it came.
            let raw: Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&raw)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
    } else {
        print!("{}", status.render());
    }
    if stale {
        eprintln!(
            "skos: this snapshot is {}s old: `skos up` is not running with this data dir (or is stuck)",
            age.num_seconds()
        );
        return Ok(ExitCode::from(NOT_RUNNING));
    }
    if stopped {
        eprintln!("skos: `skos up` stopped with this data dir; this is the status it left");
        return Ok(ExitCode::from(NOT_RUNNING));
    }
    Ok(ExitCode::SUCCESS)
}

/// `skos status`'s exit status when nothing runs to answer (no snapshot,
/// a stale or stopped one, no leader answering): as `systemctl status`
/// does for a unit that is not running.
const NOT_RUNNING: u8 = 3;

/// Past this age (seconds) an embedded status snapshot is stale.
const STALE_SNAPSHOT_SECONDS: i64 = 10;

/// The bus, with the operator's credential, for reading the JetStream
/// trail, and how to name the trail. Nothing creates the stream here (an
/// operator's key may not): a trail that is not there is said so, never
/// read as an empty one.
async fn audit_bus(cfg: &Config) -> Result<(NatsBus, String)> {
    let bus = NatsBus::connect(&operator_options(cfg, "skos-audit")?).await?;
    let at = skos_core::redact::url_credentials(&cfg.nats.url);
    if !bus.has_stream(skos_bus::subjects::STREAM_AUDIT).await? {
        bail!(
            "no audit trail: stream SKOS_AUDIT does not exist at {at} (no coordinator has run with this server yet)"
        );
    }
    if !audit::stream_is_locked(&bus).await? {
        eprintln!("warning: stream SKOS_AUDIT allows deletes or purges");
    }
    Ok((bus, format!("stream SKOS_AUDIT at {at}")))
}

async fn read_audit(
    arg: &ConfigArg,
    data_dir: Option<PathBuf>,
    n: Option<u64>,
) -> Result<(String, Vec<Value>)> {
    let nats = use_nats(&data_dir);
    let cfg = load_quiet(arg)?;
    if nats {
        let (bus, source) = audit_bus(&cfg).await?;
        Ok((source, audit::read_jetstream(&bus, n).await?))
    } else {
        let path = data_dir
            .unwrap_or_else(|| cfg.data_dir.clone())
            .join("audit.jsonl");
        if !trail_exists(&path)? {
            bail!("no audit trail at {}{}", path.escaped(), bus_hint(&cfg));
        }
        let records = match n {
            // Only the end of the file is read.
            Some(n) => audit::read_file_tail(&path, n)?,
            None => audit::read_trail(&path)?,
        };
        Ok((path.escaped().to_string(), records))
    }
}

async fn audit_tail(
    arg: &ConfigArg,
    data_dir: Option<PathBuf>,
    n: u64,
    as_json: bool,
    follow: bool,
) -> Result<ExitCode> {
    let print = |r: &Value| -> Result<()> {
        if as_json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            let e = &r["entry"];
            println!(
                "{:>6} {} {:<14} {:<10} {}",
                r["seq"]
                    .as_u64()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "?".into()),
                e["timestamp"].as_str().unwrap_or("?"),
                e["event_type"].as_str().unwrap_or("?"),
                e["node"].as_str().unwrap_or("-"),
                e["summary"].as_str().unwrap_or("")
            );
        }
        Ok(())
    };
    if !follow {
        let (_, records) = read_audit(arg, data_dir, Some(n)).await?;
        for r in &records {
            print(r)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Follow: the last `n`, then each record as it is written. A record
    // the file's backfill and follower both give (by hash) is printed once;
    // every other record is printed as it is stored, even one that repeats
    // a sequence number (a stranger's record: `audit verify` names it).
    let nats = use_nats(&data_dir);
    let cfg = load_quiet(arg)?;
    let mut backfilled: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut show = |records: Vec<Value>, backfill: bool| -> Result<()> {
        for r in records {
            let hash = r["hash"].as_str().unwrap_or_default().to_string();
            if backfill {
                backfilled.insert(hash);
            } else if !hash.is_empty() && backfilled.remove(&hash) {
                continue;
            }
            print(&r)?;
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        Ok(())
    };
    if nats {
        // By stream sequence, with what an operator's credential may do
        // (message reads, stream info): no consumer is made.
        let (bus, _) = audit_bus(&cfg).await?;
        let read = audit::read_jetstream_after(&bus, None, n).await?;
        let mut at = read.at;
        show(read.records, false)?;
        loop {
            tokio::select! {
                _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let read = audit::read_jetstream_after(&bus, Some(at), u64::MAX).await?;
            if read.replaced {
                eprintln!(
                    "the audit stream {} was replaced (deleted and made again): the new one follows from its start",
                    skos_bus::subjects::STREAM_AUDIT
                );
            }
            at = read.at;
            show(read.records, false)?;
        }
    }
    let path = data_dir.unwrap_or(cfg.data_dir).join("audit.jsonl");
    let source = skos_bus::audit_follow::AuditSource::File(path);
    let (mut follower, recent) = skos_bus::audit_follow::AuditFollower::open(&source, n).await?;
    show(recent, true)?;
    loop {
        tokio::select! {
            _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
            records = follower.next() => show(records?, false)?,
        }
    }
}

/// The keys whose signatures the JetStream trail must carry:
/// `trust.coordinator_keys` and the public key of `trust.signing_key_file`
/// (when this machine can read it). `None` when there are none.
fn audit_keys(cfg: &Config) -> Result<Option<skos_bus::trust::Verifier>> {
    let mut keys = cfg.trust.coordinator_keys.clone();
    if let Some(path) = cfg.trust.signing_key_file.as_ref().filter(|p| p.exists()) {
        keys.push(Signer::from_seed_file(path)?.public_key());
    }
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(skos_bus::trust::Verifier::new(&keys, true)?))
}

async fn audit_verify(
    arg: &ConfigArg,
    data_dir: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
) -> Result<ExitCode> {
    let nats = use_nats(&data_dir);
    let cfg = load_quiet(arg)?;
    let checkpoint: Option<audit::Checkpoint> = match &checkpoint {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read checkpoint {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("checkpoint {} is not one", p.display()))?,
            )
        }
        None => None,
    };
    let (source, report) = if nats {
        let (bus, source) = audit_bus(&cfg).await?;
        let keys = audit_keys(&cfg)?;
        if keys.is_none() {
            eprintln!("note: signatures not checked: no trust.coordinator_keys (nor a readable trust.signing_key_file) in the config");
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last = std::time::Instant::now();
        let report = audit::check::verify_jetstream_within(
            &bus,
            keys.as_ref(),
            checkpoint.as_ref(),
            Duration::from_secs(cfg.audit.checkpoint_minutes.saturating_mul(60)),
            |done, total| {
                if tty && last.elapsed() >= std::time::Duration::from_secs(1) {
                    last = std::time::Instant::now();
                    eprint!("\rverifying: {done}/{total} messages");
                }
            },
        )
        .await?;
        if tty {
            eprint!("\r\x1b[K");
        }
        (source, report)
    } else {
        let path = data_dir
            .unwrap_or_else(|| cfg.data_dir.clone())
            .join("audit.jsonl");
        if !trail_exists(&path)? && audit::segments::list(&path)?.is_empty() {
            bail!("no audit trail at {}{}", path.escaped(), bus_hint(&cfg));
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last = std::time::Instant::now();
        let report = audit::check::verify_file_trail(&path, checkpoint.as_ref(), |at, lines| {
            if tty && last.elapsed() >= std::time::Duration::from_secs(1) {
                last = std::time::Instant::now();
                eprint!("\r\x1b[Kverifying: {at}: {lines} lines");
            }
        })?;
        if tty {
            eprint!("\r\x1b[K");
        }
        (path.display().to_string(), report)
    };
    let signed = if report.signatures_checked {
        ", every message signed by a trusted key"
    } else {
        ""
    };
    let summary = |report: &audit::TrailReport| {
        let mut parts = vec![format!("{} records verified", report.records)];
        if report.segments > 0 {
            parts.push(format!("{} sealed segments", report.segments));
        }
        if let Some((a, b)) = report.aged_out {
            parts.push(format!(
                "{} records aged out by policy (seq {a}..{b})",
                b - a + 1
            ));
        }
        if report.copies > 0 {
            parts.push(format!(
                "{} copies left by an interrupted rotation checked",
                report.copies
            ));
        }
        parts.push(format!("{} foreign", report.foreign_count));
        parts.join(", ")
    };
    for note in &report.notes {
        println!("  note: {note}");
    }
    if report.ok() {
        let against = match &checkpoint {
            Some(cp) if !report.notes.iter().any(|n| n.contains("checkpoint")) => {
                format!(", record {} matches the checkpoint", cp.seq)
            }
            _ => String::new(),
        };
        println!(
            "OK: {} records in {source}, hash chain intact{signed}{against}",
            report.records
        );
        println!("  {}: OK", summary(&report));
        return Ok(ExitCode::SUCCESS);
    }
    println!("FAILED: {source}");
    for (i, b) in report.breaks.iter().enumerate() {
        if i == 0 {
            println!(
                "  chain: {b} ({} records verified before it)",
                report.before_first_break
            );
        } else {
            println!("  chain: {b}");
        }
    }
    if report.break_count > report.breaks.len() as u64 {
        println!("  ... {} breaks in all", report.break_count);
    }
    for f in &report.foreign {
        let what = if f.subject.starts_with("SKOS_AUDIT") {
            format!("message {} on {}", f.at, f.subject)
        } else {
            format!("line {}", f.at)
        };
        println!("  foreign: {what}: {} (left out of the chain)", f.reason);
    }
    if report.foreign_count > report.foreign.len() as u64 {
        println!("  ... {} foreign messages in all", report.foreign_count);
    }
    if let Some(p) = &report.checkpoint_problem {
        println!("  checkpoint: {p}");
    }
    println!(
        "  {} records continued the chain, {} breaks, {} foreign",
        report.records, report.break_count, report.foreign_count
    );
    println!("  {}: FAILED", summary(&report));
    Ok(ExitCode::from(1))
}

/// Write a checkpoint of the trail's last (signed) record: to `out`
/// (created 0600, never over an existing file) or standard output.
async fn audit_checkpoint(
    arg: &ConfigArg,
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    let nats = use_nats(&data_dir);
    let cfg = load_quiet(arg)?;
    let cp = if nats {
        let (bus, _) = audit_bus(&cfg).await?;
        audit::check::checkpoint_jetstream(&bus, audit_keys(&cfg)?.as_ref()).await?
    } else {
        let path = data_dir.unwrap_or(cfg.data_dir).join("audit.jsonl");
        audit::check::checkpoint_file(&path)?
    };
    let text = serde_json::to_string_pretty(&cp)? + "\n";
    match out {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "checkpoint of record {} written to {}: keep it where the trail's writers cannot change it",
                cp.seq,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn config_check(arg: &ConfigArg) -> Result<ExitCode> {
    let Some(path) = &arg.config else {
        bail!("name a config file with --config FILE (or SKOS_CONFIG)");
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.escaped()))?;
    match Config::from_yaml(&text) {
        Ok(cfg) => {
            let mut cfg = cfg;
            let mut env_issues = cfg.apply_env(|k| std::env::var(k).ok());
            if let Ok(abs) = std::path::absolute(&cfg.data_dir) {
                cfg.data_dir = abs;
                env_issues.extend(cfg.check());
            }
            env_issues.extend(swappable_dirs(&cfg));
            // The keys the config names, read: a signing key that is a
            // login key, or a login key trusted as a coordinator key.
            // (Files not on this machine are not judged: a config may be
            // checked away from where it runs.)
            let signer = match cfg.trust.signing_key_file.as_ref().filter(|p| p.exists()) {
                Some(p) => match Signer::from_seed_file(p) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        env_issues.push(skos_core::config::ConfigIssue {
                            path: "trust.signing_key_file".into(),
                            message: e.to_string(),
                        });
                        None
                    }
                },
                None => None,
            };
            // The API's token, when its file is on this machine.
            if let Some(p) = cfg.http.token_file.as_ref().filter(|p| p.exists()) {
                if let Err(skos_http::Error::Token { path, reason }) =
                    skos_http::auth::Token::read(p)
                {
                    env_issues.push(skos_core::config::ConfigIssue {
                        path: "http.token_file".into(),
                        message: format!("{}: {reason}", path.escaped()),
                    });
                }
            }
            let present: Vec<&std::path::Path> = login_files(&cfg)
                .into_iter()
                .filter(|p| p.exists())
                .collect();
            match skos_bus::trust::key_conflicts(
                signer.as_ref(),
                &present,
                &cfg.trust.coordinator_keys,
            ) {
                Ok(found) => {
                    env_issues.extend(found.into_iter().map(|c| skos_core::config::ConfigIssue {
                        path: c.key.into(),
                        message: c.message,
                    }))
                }
                Err(e) => env_issues.push(skos_core::config::ConfigIssue {
                    path: "nats".into(),
                    message: format!("cannot read a login key file: {e}"),
                }),
            }
            // The node's own key: readable, and never its login key.
            if let Some(p) = cfg.trust.node_key_file.as_ref().filter(|p| p.exists()) {
                let found = Signer::from_seed_file(p)
                    .and_then(|s| skos_bus::trust::node_key_conflicts(&s, &present));
                match found {
                    Ok(found) => env_issues.extend(found.into_iter().map(|c| {
                        skos_core::config::ConfigIssue {
                            path: c.key.into(),
                            message: c.message,
                        }
                    })),
                    Err(e) => env_issues.push(skos_core::config::ConfigIssue {
                        path: "trust.node_key_file".into(),
                        message: e.to_string(),
                    }),
                }
            }
            let mut seen = Vec::new();
            env_issues.retain(|i| {
                let new = !seen.contains(i);
                seen.push(i.clone());
                new
            });
            for i in &env_issues {
                println!("{}: {i}", path.escaped());
            }
            // Accepted, but not applied as written: said, and the file passes.
            let warnings = cfg.warnings();
            for w in &warnings {
                println!("{}: warning: {w}", path.escaped());
            }
            if !env_issues.is_empty() {
                // What came from the environment, not from the file: an
                // error about a key may be about a value set there.
                for (name, key) in Config::ENV_KEYS {
                    if let Ok(v) = std::env::var(name) {
                        let v = skos_core::redact::url_credentials(&v);
                        println!(
                            "note: {key} is {v} from the environment ({name}), not from {}",
                            path.escaped()
                        );
                    }
                }
                return Ok(ExitCode::from(1));
            }
            let warned = match warnings.len() {
                0 => String::new(),
                n => format!("; {n} warning(s) above"),
            };
            println!(
                "OK: {} (node {}, thermal {}/{}/{} °C, antibodies {}{warned})",
                path.escaped(),
                cfg.node.name,
                cfg.thermal.thresholds.warning,
                cfg.thermal.thresholds.critical,
                cfg.thermal.thresholds.emergency,
                cfg.agent.antibodies.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(issues) => {
            for i in &issues {
                println!("{}: {i}", path.escaped());
            }
            println!("{} error(s)", issues.len());
            Ok(ExitCode::from(1))
        }
    }
}

/// Every directory SKOS writes or cleans whose parent (or a symlink on its
/// way) would let someone other than root swap it for another directory:
/// the storage dirs, the archive destination, the data dir and the
/// WireGuard config dirs. The agent refuses the same dirs when it runs.
fn swappable_dirs(cfg: &Config) -> Vec<skos_core::config::ConfigIssue> {
    let st = &cfg.storage;
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for (key, list) in [
        ("storage.temp.dirs", &st.temp.dirs),
        ("storage.logs.dirs", &st.logs.dirs),
        ("storage.archive.dirs", &st.archive.dirs),
    ] {
        for (i, d) in list.iter().enumerate() {
            dirs.push((format!("{key}[{i}]"), d.clone()));
        }
    }
    if let Some(d) = &st.archive.destination {
        dirs.push(("storage.archive.destination".into(), d.clone()));
    }
    dirs.push(("data_dir".into(), cfg.data_dir.clone()));
    for (i, itf) in cfg.mesh.interfaces.iter().enumerate() {
        if let Some(d) = itf.config_file().parent() {
            dirs.push((format!("mesh.interfaces[{i}].config_path"), d.to_path_buf()));
        }
    }
    dirs.into_iter()
        .filter(|(_, d)| d.is_absolute())
        .filter_map(|(key, d)| {
            let u = skos_fs::unsafe_ancestor(&d)?;
            Some(skos_core::config::ConfigIssue {
                path: key,
                message: format!(
                    "{} is refused: {u}, so someone other than root could swap it for another directory",
                    d.display()
                ),
            })
        })
        .collect()
}

fn keys_generate(out: &std::path::Path, force: bool) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (seed, public) = Signer::generate()?;
    let mut opts = std::fs::OpenOptions::new();
    // Never written through a planted symlink, --force or not.
    opts.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(out)
        .with_context(|| format!("cannot create {} (use --force to overwrite)", out.escaped()))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", out.escaped()))?;
    writeln!(f, "{seed}").with_context(|| format!("cannot write {}", out.escaped()))?;
    f.sync_all()
        .with_context(|| format!("cannot write {}", out.escaped()))?;
    eprintln!(
        "skos: wrote the seed to {} (mode 600; keep it secret)",
        out.escaped()
    );
    eprintln!("skos: for the coordinator's key: set trust.signing_key_file on the coordinator, and this public key in trust.coordinator_keys on every agent; for a node's key: set trust.node_key_file on that node's agent, and this public key under its name in the coordinator's trust.node_keys:");
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

/// Whether the live audit file at `path` exists; a path that cannot be
/// looked at (a data dir the user may not read) is an error saying so, not
/// a missing trail.
fn trail_exists(path: &std::path::Path) -> Result<bool> {
    path.try_exists()
        .with_context(|| format!("cannot look for the audit trail at {}", path.escaped()))
}
