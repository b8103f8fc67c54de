//! The agent's process, as `skos agent` and the lean `skos-agent` binary
//! run it: the config read from file, environment and flags, logging, the
//! NATS connection, and the agent until SIGTERM or Ctrl-C. Both binaries
//! share this; `skos-agent` links nothing else (no coordinator, HTTP API
//! or operator's commands), so a node maps fewer code pages.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use skos_agent::runtime::Agent;
use skos_bus::trust::Signer;
use skos_bus::{Bus, NatsBus, NatsOptions};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::escape::ShowPath;
use tokio::sync::watch;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The exit status after a panic in a long-running command.
pub const PANICKED: i32 = 101;

/// Make a panic end the process with [`PANICKED`] after its report. A
/// panic is a bug: in a task it would leave the process running with the
/// coordinator or the agent gone; ending it lets a supervisor restart it.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("skos: a task panicked (a bug): stopping so that a supervisor restarts skos");
        std::process::exit(PANICKED);
    }));
}

/// An error as the command line prints it: the message, then each cause
/// not already said (many errors name their cause in their own message,
/// and `{:#}` would say it twice: `…: Not a directory (os error 20): Not
/// a directory (os error 20)`).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// The async runtime: `workers` threads (at least 1; `block_in_place`,
/// which the agent's sensing uses, needs the multi-thread scheduler).
///
/// # Errors
/// When the runtime cannot start (no threads, no epoll).
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

/// Defaults < file < environment < flags.
pub fn read_config(config: Option<&Path>, data_dir: Option<PathBuf>) -> Result<Config> {
    let mut cfg = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.escaped()))?;
            Config::from_yaml(&text).map_err(|issues| {
                let lines: Vec<String> = issues.iter().map(|i| format!("  {i}")).collect();
                anyhow!("invalid config {}:\n{}", path.escaped(), lines.join("\n"))
            })?
        }
        None => Config::default(),
    };
    let issues = cfg.apply_env(|k| std::env::var(k).ok());
    if !issues.is_empty() {
        let lines: Vec<String> = issues.iter().map(|i| format!("  {i}")).collect();
        bail!("invalid settings:\n{}", lines.join("\n"));
    }
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    // An absolute data dir lets the checks see when a cleaned dir overlaps it.
    if let Ok(abs) = std::path::absolute(&cfg.data_dir) {
        cfg.data_dir = abs;
    }
    let issues = cfg.check();
    if !issues.is_empty() {
        let lines: Vec<String> = issues.iter().map(|i| format!("  {i}")).collect();
        bail!("invalid settings:\n{}", lines.join("\n"));
    }
    Ok(cfg)
}

pub fn load(config: Option<&Path>, data_dir: Option<PathBuf>) -> Result<Config> {
    let cfg = read_config(config, data_dir)?;
    init_logging(&cfg.log_level)?;
    // What the file sets but SKOS does not apply as written.
    for w in cfg.warnings() {
        tracing::warn!(key = %w.path, "config: {}", w.message);
    }
    Ok(cfg)
}

///
/// # Errors
/// A RUST_LOG that does not parse ([`log_filter`]).
pub fn init_logging(level: &str) -> Result<(), LogFilterError> {
    init_logging_labelled(level, None)
}

/// A RUST_LOG that is not `target=level,...`: it is refused rather than
/// let the config's level stand in for it unsaid.
#[derive(Debug, thiserror::Error)]
#[error(
    "RUST_LOG={value:?}: {source}; give a level and target=level pairs \
     (info,skos_agent=debug)"
)]
pub struct LogFilterError {
    /// The variable's value, as set.
    pub value: String,
    /// What the parser said.
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// The log filter: `rust_log` (RUST_LOG) when set and not empty, in the
/// `target=level,...` form (`info,skos_agent=debug`), else `level` (the
/// config's `log_level`: ERROR, WARN or WARNING, INFO, DEBUG, TRACE, any
/// case) with async_nats at warn, and the bus's refusals
/// (`skos_bus::nats::events`) at warn at least. A pure function.
///
/// # Errors
/// A `rust_log` that does not parse, with its value.
pub fn log_filter(level: &str, rust_log: Option<&str>) -> Result<Targets, LogFilterError> {
    if let Some(value) = rust_log.filter(|v| !v.trim().is_empty()) {
        return value.parse().map_err(|source| LogFilterError {
            value: value.to_string(),
            source,
        });
    }
    let level = match level.to_ascii_uppercase().as_str() {
        "WARNING" => "warn".to_string(),
        other => other.to_ascii_lowercase(),
    };
    // What the bus refuses this credential is said even at `error` (an
    // operator's command then tells why its request goes unanswered).
    let events = if level == "error" {
        ",skos_bus::nats::events=warn"
    } else {
        ""
    };
    let default = format!("{level},async_nats=warn{events}");
    Ok(default
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO)))
}

/// Log lines on stderr, each after `label` (`[demo]`) when given.
struct Labelled(&'static str);

impl std::io::Write for Labelled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes one whole event at a time.
        let mut err = std::io::stderr().lock();
        err.write_all(self.0.as_bytes())?;
        err.write_all(b" ")?;
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// [`init_logging`], each line after `label` when given.
///
/// # Errors
/// A RUST_LOG that does not parse ([`log_filter`]).
pub fn init_logging_labelled(
    level: &str,
    label: Option<&'static str>,
) -> Result<(), LogFilterError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(level, rust_log.as_deref())?;
    let ansi = colours(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // The builder's own filter lets everything through (its default stops
    // at INFO): `filter` alone says what is logged.
    let fmt = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_max_level(tracing::Level::TRACE);
    let _ = match label {
        Some(label) => fmt
            .with_writer(move || Labelled(label))
            .finish()
            .with(filter)
            .try_init(),
        None => fmt
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
            .try_init(),
    };
    Ok(())
}

/// Whether log lines carry ANSI colours: only on a terminal, and never
/// with `NO_COLOR` set to anything non-empty (no-color.org), so files and
/// journald get plain text.
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Connection options from the config; secrets files are checked for
/// loose permissions.
pub fn nats_options(cfg: &Config, name: &str) -> Result<NatsOptions> {
    for path in [
        &cfg.nats.nkey_seed_file,
        &cfg.nats.creds_file,
        &cfg.nats.tls.key_file,
    ]
    .into_iter()
    .flatten()
    {
        warn_if_exposed(path);
    }
    let mut opts = NatsOptions::from_config(&cfg.nats, name)?;
    opts.audit_max_age = cfg.audit_retention_days().map_or(Duration::ZERO, |d| {
        Duration::from_secs(d.saturating_mul(86_400))
    });
    Ok(opts)
}

pub async fn connect(cfg: &Config, name: &str) -> Result<NatsBus> {
    let mut opts = nats_options(cfg, name)?;
    if name.starts_with("skos-agent-") {
        // Its own reply subjects, so server permissions can confine it;
        // no stream rights (its command consumer is the coordinator's
        // to create).
        opts.inbox_prefix = Some(format!("_INBOX_{}", cfg.node.name));
        opts.create_streams = false;
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match NatsBus::connect(&opts).await {
            Ok(b) => {
                tracing::info!(url = %skos_core::redact::url_credentials(&cfg.nats.url), "connected to NATS");
                return Ok(b);
            }
            Err(e) => {
                tracing::warn!(url = %skos_core::redact::url_credentials(&cfg.nats.url), error = %e, "NATS not reachable yet, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tokio::signal::ctrl_c() => bail!("interrupted while connecting to {}", skos_core::redact::url_credentials(&cfg.nats.url)),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The NATS login key files a config names.
pub fn login_files(cfg: &Config) -> Vec<&std::path::Path> {
    [&cfg.nats.nkey_seed_file, &cfg.nats.creds_file]
        .into_iter()
        .flatten()
        .map(|p| p.as_path())
        .collect()
}

/// Refuse to run with keys that would let a NATS server obtain a command
/// signature ([`skos_bus::trust::key_conflicts`]), naming the key to change.
pub fn refuse_key_conflicts(cfg: &Config, signer: Option<&Signer>) -> Result<()> {
    let found =
        skos_bus::trust::key_conflicts(signer, &login_files(cfg), &cfg.trust.coordinator_keys)?;
    if let Some(c) = found.first() {
        bail!("{}: {}", c.key, c.message);
    }
    Ok(())
}

pub async fn agent(cfg: Config) -> Result<ExitCode> {
    // Before logging in: an agent that trusts its own login key as a
    // coordinator key would run what a NATS server had it sign.
    refuse_key_conflicts(&cfg, None)?;
    // The node's own key signs its heartbeats, alerts and results; never
    // its login key.
    let node_signer = match &cfg.trust.node_key_file {
        Some(path) => {
            warn_if_exposed(path);
            let s = Signer::from_seed_file(path)?;
            let found = skos_bus::trust::node_key_conflicts(&s, &login_files(&cfg))?;
            if let Some(c) = found.first() {
                bail!("{}: {}", c.key, c.message);
            }
            tracing::info!(public_key = %s.public_key(), "heartbeats, alerts and results are signed with the node key");
            Some(Arc::new(s))
        }
        None => None,
    };
    let mut nats = connect(&cfg, &format!("skos-agent-{}", cfg.node.name)).await?;
    if let Some(s) = node_signer {
        nats = nats.with_node_signer(s);
    }
    if let Err(e) = nats.prepare_agent(&cfg.node.name).await {
        tracing::warn!(node = %cfg.node.name, error = %e, "streams not set up yet");
    }
    // Created 0700 when missing, as `skos up` makes its own (its parents
    // as usual); refused when another user's or writable by others.
    skos_fs::Dir::private(&cfg.data_dir).context("data dir refused")?;
    let state = cfg.data_dir.join("agent");
    let agent = Agent::new(cfg, Bus::Nats(nats), Counters::default(), Some(state))?;
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(agent.run(stopped(rx)));
    shutdown_signal().await;
    let _ = tx.send(true);
    task.await??;
    Ok(ExitCode::SUCCESS)
}

/// Secrets must not be readable by others: say so loudly when they are.
pub fn warn_if_exposed(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.escaped(), mode = format!("{:o}", mode & 0o777), "secret file is readable by group or others; chmod 600 it");
            eprintln!(
                "skos: warning: {} is readable by group or others (mode {:o}); chmod 600 it",
                path.escaped(),
                mode & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{colours, error_text, log_filter};
    use std::ffi::OsStr;
    use tracing::Level;

    /// A cause the message already names is not said again; one it does
    /// not name is.
    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(20);
        let fs = skos_fs::Error::Io {
            path: "/tmp/afile".into(),
            source: io,
        };
        let e = anyhow::Error::new(fs).context("data dir refused");
        assert_eq!(
            error_text(&e),
            "data dir refused: /tmp/afile: Not a directory (os error 20)"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&e), "outer: inner");
    }

    #[test]
    fn rust_log_overrides_the_level_and_one_that_does_not_parse_is_refused() {
        let f = log_filter("WARNING", None).unwrap();
        assert!(f.would_enable("skos", &Level::WARN));
        assert!(!f.would_enable("skos", &Level::INFO));
        assert!(!f.would_enable("async_nats", &Level::INFO));
        // The bus's refusals are said at `error` too; nothing else is.
        let f = log_filter("ERROR", None).unwrap();
        assert!(f.would_enable("skos_bus::nats::events", &Level::WARN));
        assert!(!f.would_enable("skos_bus::nats", &Level::WARN));
        assert!(!f.would_enable("skos", &Level::WARN));
        let f = log_filter("debug", None).unwrap();
        assert!(f.would_enable("skos_bus::nats::events", &Level::DEBUG));
        let f = log_filter("ERROR", Some("info,skos_agent=debug")).unwrap();
        assert!(f.would_enable("skos_agent", &Level::DEBUG));
        assert!(f.would_enable("skos", &Level::INFO));
        // Empty is unset.
        let f = log_filter("debug", Some(" ")).unwrap();
        assert!(f.would_enable("skos", &Level::DEBUG));
        for bad in ["skos=verbose", "info,skos_agent=loud", "=debug=trace"] {
            let e = log_filter("INFO", Some(bad)).unwrap_err();
            assert_eq!(e.value, bad);
            assert!(e.to_string().starts_with("RUST_LOG="), "{e}");
        }
    }

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}
