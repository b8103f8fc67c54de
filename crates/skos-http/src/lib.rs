//! The operator's HTTP surface, served by `skos up` and `skos coordinator`
//! (`http.listen`, default `127.0.0.1:9477`; `--http ADDR`; `off`).
//!
//! * [`api`]: the router: `/healthz`, the JSON API under `/api/v1`
//!   (status, alerts, actions, audit pages, server-sent events), `/metrics`
//!   and the live page at `/`. `docs/openapi.yaml` documents it; a test
//!   checks the two agree.
//! * [`feed`]: the audit trail followed as it is written: a bounded ring of
//!   recent records, a broadcast of new ones to the event streams, and the
//!   metrics derived from them.
//! * [`metrics`]: `/metrics` in the Prometheus exposition format.
//! * [`auth`]: the bearer token writes carry, and the rule that refuses
//!   an address others can reach unless it has TLS and a token.
//! * [`page`]: the live page, its assets compiled into the binary.
//!
//! Everything it shows comes from the coordinator's status reply (asked
//! over the bus, so a standby forwards to the leader), the process's
//! counters, and the audit trail: the HTTP side holds no state of the
//! fleet of its own. Its writes (silences, forgetting a node) need the
//! bearer token and are the coordinator's control requests
//! (`skos_coordinator::control`), sent over the bus like the CLI's.

pub mod api;
pub mod auth;
pub mod feed;
pub mod metrics;
pub mod page;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use skos_bus::audit_follow::AuditSource;
use skos_bus::Bus;
use skos_core::config::{Config, HttpListen};
use skos_core::counters::Counters;
use skos_core::escape::ShowPath;

/// Why the HTTP server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--http` or `http.listen` is not an address.
    #[error("{key}: {message}")]
    Listen { key: &'static str, message: String },
    /// An address others can reach, without TLS and a token.
    #[error("{0}")]
    Exposed(String),
    /// The token file cannot be read, or its token is no guard.
    #[error("http.token_file {}: {reason}", path.escaped())]
    Token { path: PathBuf, reason: String },
    /// The certificate or key cannot be used.
    #[error("http.tls: {0}")]
    Tls(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the server needs to know of its settings, resolved from the config
/// and the command line.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Whether the address was asked for (`--http`, `http.listen`): a busy
    /// default address is only warned about, an asked-for one is an error.
    pub explicit: bool,
    /// The bearer token writes must carry.
    pub token: Option<auth::Token>,
    /// Certificate and key files, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl HttpOptions {
    /// The options `cfg` and the `--http` flag (`flag`) give, or `None`
    /// when HTTP is off. Reads the token file, and refuses an address
    /// others can reach without TLS and a token ([`auth::exposure`]).
    pub fn resolve(cfg: &Config, flag: Option<&str>) -> Result<Option<Self>, Error> {
        let (text, key) = match flag {
            Some(f) => (f, "--http"),
            None => (cfg.http.listen.as_str(), "http.listen"),
        };
        let listen =
            match HttpListen::parse(text).map_err(|message| Error::Listen { key, message })? {
                HttpListen::Off => return Ok(None),
                HttpListen::At(a) => a,
            };
        let explicit = flag.is_some() || cfg.http.listen != skos_core::config::DEFAULT_HTTP_LISTEN;
        let token = cfg
            .http
            .token_file
            .as_deref()
            .map(auth::Token::read)
            .transpose()?;
        let tls = match (&cfg.http.tls.cert_file, &cfg.http.tls.key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        };
        auth::exposure(listen, tls.is_some(), token.is_some())?;
        Ok(Some(Self {
            listen,
            explicit,
            token,
            tls,
        }))
    }
}

/// Where the server finds what it shows.
#[derive(Clone)]
pub struct Sources {
    /// The bus the coordinator answers status requests on.
    pub bus: Bus,
    /// The audit trail.
    pub audit: AuditSource,
    /// This process's counters.
    pub counters: Counters,
    /// This coordinator's lease holder id when coordinators elect a leader
    /// (so a reply from another one says this one stands by).
    pub holder: Option<String>,
}

/// How long a start waits for the audit trail's first open.
const FIRST_OPEN: std::time::Duration = std::time::Duration::from_secs(2);

/// A started server.
pub struct Server {
    /// The address it listens on (the port the system chose for `:0`).
    pub addr: SocketAddr,
    /// Whether it speaks HTTPS.
    pub tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Wait until it stopped (after its shutdown future completed).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "HTTP server task ended abnormally");
        }
    }
}

/// Bind `opts.listen` and serve until `shutdown` completes; `None` when the
/// default address is taken (said in the log: another `skos` serves there),
/// an error when an asked-for one is.
pub async fn start(
    opts: HttpOptions,
    sources: Sources,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<Server>, Error> {
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) if !opts.explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(addr = %opts.listen, "HTTP address in use (another skos?): serving no HTTP API; set http.listen or --http to choose another");
            return Ok(None);
        }
        Err(source) => {
            return Err(Error::Bind {
                addr: opts.listen,
                source,
            })
        }
    };
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: opts.listen,
        source,
    })?;
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let feed = feed::Feed::start(sources.audit.clone());
    // Opened before the caller writes (embedded mode's start record), so
    // what it writes from here on is counted; a trail not readable yet
    // (the bus away) does not hold up the start.
    if !feed.ready(FIRST_OPEN).await {
        tracing::warn!(
            within_seconds = FIRST_OPEN.as_secs(),
            "audit trail not opened yet: records written before it is are not in the metrics"
        );
    }
    let state = Arc::new(api::AppState::new(sources, feed, opts.token.clone()));
    let app = api::router(state.clone());
    let https = tls.is_some();
    // Open event streams never end on their own: they are ended first.
    let shutdown = async move {
        shutdown.await;
        state.close();
    };
    let task = tokio::spawn(async move {
        let served = match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(acceptor) => {
                axum::serve(tls::TlsListener::new(listener, acceptor), app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(addr = %addr, tls = https, "HTTP API listening");
    Ok(Some(Server {
        addr,
        tls: https,
        task,
    }))
}
