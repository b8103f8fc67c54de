//! The NATS JetStream transport (distributed mode).
//!
//! Streams (created if missing, idempotently, by whoever connects with
//! [`NatsOptions::create_streams`]: the coordinator):
//!
//! | stream | subjects | notes |
//! |---|---|---|
//! | `SKOS_ALERTS` | `skos.alert.>` | durable consumer `skos-coordinator`, explicit ack, at most `coordinator.max_queued_per_node` per node |
//! | `SKOS_COMMANDS` | `skos.command.>` | durable consumer `skos-agent-<node>` per node, filter `skos.command.<node>`, explicit ack |
//! | `SKOS_RESULTS` | `skos.result.>` | durable consumer `skos-coordinator`, explicit ack, at most `coordinator.max_queued_per_node` per node |
//! | `SKOS_AUDIT` | `SKOS_AUDIT.*` | deny delete, deny purge, kept forever |
//!
//! Acks are explicit, one per message, never cumulative: a new leader must
//! not acknowledge, with its first batch, messages a dead leader had taken
//! and not handled (they are delivered again after the ack wait).
//!
//! An agent needs no stream rights: it asks for its own command consumer
//! by name ([`NatsBus::subscribe`] of [`Feed::Commands`]), which the
//! coordinator creates ([`NatsBus::ensure_command_consumer`]) with its
//! fixed filter. On a server without permissions an agent that finds no
//! consumer creates it (and the commands stream) itself.
//!
//! Works with nats-server 2.9 and later: only stream and consumer fields
//! that 2.9 knows are used.

use skos_core::escape::ShowPath;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use skos_core::NodeName;

use crate::{headers_of, subjects, Acker, Error, Feed, Incoming, Replier, Result, Subscription};

mod events;

#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub url: String,
    /// Connection name shown by the server (`skos-coordinator`, `skos-agent-nova`).
    pub name: String,
    pub connect_timeout: Duration,
    pub auth: NatsAuth,
    pub tls: skos_core::config::NatsTls,
    /// Reply subjects start with this (so server permissions can give each
    /// node its own inbox), e.g. `_INBOX_nova`.
    pub inbox_prefix: Option<String>,
    /// Create the streams at connect if they are missing (the coordinator,
    /// and tests). Agents and operators' commands leave this off: with
    /// least-privilege credentials they may not even look at streams.
    pub create_streams: bool,
    /// Wait between two reconnect attempts after the connection is lost
    /// (`nats.reconnect_wait_seconds`). `None`: the client's backoff (at
    /// once, then doubling from 2 ms up to 4 s). Either way the client
    /// keeps trying for as long as it runs.
    pub reconnect_wait: Option<Duration>,
    /// The audit stream's `max_age` when this connection creates it: the
    /// retention (`audit.retention_days`); zero keeps every record. No
    /// SKOS credential may change it later (nor purge the stream).
    pub audit_max_age: Duration,
}

#[derive(Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    /// An nkeys seed (secret).
    NkeySeed(String),
    CredsFile(std::path::PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword(u, _) => write!(f, "UserPassword({u:?}, <redacted>)"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::NkeySeed(_) => f.write_str("NkeySeed(<redacted>)"),
            NatsAuth::CredsFile(p) => write!(f, "CredsFile({})", p.escaped()),
        }
    }
}

impl NatsOptions {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            connect_timeout: Duration::from_secs(5),
            auth: NatsAuth::None,
            tls: Default::default(),
            inbox_prefix: None,
            create_streams: true,
            reconnect_wait: None,
            audit_max_age: Duration::ZERO,
        }
    }

    /// From the `nats:` section; reads the nkey seed file if one is named.
    pub fn from_config(
        cfg: &skos_core::config::NatsSection,
        name: impl Into<String>,
    ) -> Result<Self> {
        let auth = if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            NatsAuth::UserPassword(u.clone(), p.clone())
        } else if let Some(t) = &cfg.token {
            NatsAuth::Token(t.clone())
        } else if let Some(path) = &cfg.nkey_seed_file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            let seed = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("SU") || l.starts_with('S'))
                .ok_or_else(|| Error::Corrupt {
                    path: path.escaped().to_string(),
                    reason: "no nkeys seed in the file".into(),
                })?;
            NatsAuth::NkeySeed(seed.to_string())
        } else if let Some(path) = &cfg.creds_file {
            NatsAuth::CredsFile(path.clone())
        } else {
            NatsAuth::None
        };
        Ok(Self {
            auth,
            tls: cfg.tls.clone(),
            reconnect_wait: cfg
                .reconnect_wait_seconds
                .and_then(|s| Duration::try_from_secs_f64(s).ok()),
            ..Self::new(cfg.url.clone(), name)
        })
    }
}

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: std::sync::Arc<jetstream::Context>,
    /// The node key an agent signs its heartbeats, alerts and results
    /// with ([`NatsBus::with_node_signer`]).
    node_signer: Option<std::sync::Arc<crate::trust::Signer>>,
    /// [`NatsOptions::audit_max_age`].
    audit_max_age: Duration,
    /// What the server refused this connection ([`events`]).
    refusals: std::sync::Arc<events::Refusals>,
    /// What making the streams again needs ([`NatsBus::remake_missing_streams`]).
    remake: std::sync::Arc<Remake>,
}

/// What a bus keeps to make SKOS's streams again as they were made.
#[derive(Default)]
struct Remake {
    /// The last [`NatsBus::limit_per_node`] (0: none set).
    per_node: std::sync::atomic::AtomicU32,
    /// How many times `SKOS_COMMANDS` was found made again (by this bus,
    /// or another in place of the one seen): the agents' command consumers
    /// went with the stream before.
    commands: std::sync::atomic::AtomicU64,
    /// When streams were last looked for: at most once a second.
    last: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the server made each SKOS stream last seen (ns since the
    /// epoch): another time is another stream, made by someone else.
    made: std::sync::Mutex<std::collections::HashMap<&'static str, i128>>,
    /// The per-node limit is to be set again (an alert or result stream
    /// made again), until it was.
    limit_due: std::sync::atomic::AtomicBool,
}

/// How often [`NatsBus::check_streams`] looks at the streams.
pub const STREAMS_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Messages a core subscription may hold before the client drops them.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;

const DAY: Duration = Duration::from_secs(24 * 3600);
/// How long a delivered, unacknowledged durable message waits before it is
/// delivered again. Whoever works on a message for longer sends
/// [`crate::Incoming::in_progress`] more often than this (every third of it).
pub const ACK_WAIT: Duration = Duration::from_secs(10);

impl NatsBus {
    /// Connect and make sure the streams exist.
    pub async fn connect(opts: &NatsOptions) -> Result<Self> {
        let fail = |reason: String| Error::Connect {
            url: skos_core::redact::url_credentials(&opts.url),
            reason,
        };
        let inbox = opts.inbox_prefix.as_deref().unwrap_or("_INBOX");
        let refusals = std::sync::Arc::new(events::Refusals::new(inbox));
        let heard = refusals.clone();
        let connection = opts.name.clone();
        let mut co = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                events::on_event(&heard, &connection, event);
                std::future::ready(())
            })
            .name(&opts.name)
            .connection_timeout(opts.connect_timeout)
            // A heartbeat burst from a large fleet must queue, not be
            // dropped as a slow consumer (the default holds 65,536).
            .subscription_capacity(SUBSCRIPTION_CAPACITY);
        co = match &opts.auth {
            NatsAuth::None => co,
            NatsAuth::UserPassword(u, p) => co.user_and_password(u.clone(), p.clone()),
            NatsAuth::Token(t) => co.token(t.clone()),
            NatsAuth::NkeySeed(seed) => co.nkey(seed.clone()),
            NatsAuth::CredsFile(path) => co
                .credentials_file(path)
                .await
                .map_err(|e| fail(format!("creds file {}: {e}", path.escaped())))?,
        };
        if let Some(ca) = &opts.tls.ca_file {
            co = co.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&opts.tls.cert_file, &opts.tls.key_file) {
            co = co.add_client_certificate(cert.clone(), key.clone());
        }
        if opts.tls.required {
            co = co.require_tls(true);
        }
        if let Some(prefix) = &opts.inbox_prefix {
            co = co.custom_inbox_prefix(prefix);
        }
        if let Some(wait) = opts.reconnect_wait {
            co = co.reconnect_delay_callback(move |_attempts| wait);
        }
        let client = co
            .connect(opts.url.as_str())
            .await
            .map_err(|e| fail(e.to_string()))?;
        refusals.watch(client.statistics());
        let js = std::sync::Arc::new(jetstream::new(client.clone()));
        let bus = Self {
            client,
            js,
            node_signer: None,
            audit_max_age: opts.audit_max_age,
            refusals,
            remake: Default::default(),
        };
        if opts.create_streams {
            bus.ensure_streams().await?;
        }
        Ok(bus)
    }

    /// This bus, signing the heartbeats, alerts and results it publishes
    /// with `signer`, the node's own key (`trust.node_key_file`): the
    /// coordinator checks them against the node's key in
    /// `trust.node_keys`.
    pub fn with_node_signer(mut self, signer: std::sync::Arc<crate::trust::Signer>) -> Self {
        self.node_signer = Some(signer);
        self
    }

    /// The node key this bus signs with, if any.
    pub fn node_signer(&self) -> Option<&crate::trust::Signer> {
        self.node_signer.as_deref()
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// [`NatsOptions::audit_max_age`]: the `max_age` `SKOS_AUDIT` is made
    /// with.
    pub fn audit_max_age(&self) -> Duration {
        self.audit_max_age
    }

    /// The streams a bus makes: name, subjects, max age, locked.
    fn stream_specs(&self) -> [(&'static str, &'static str, Duration, bool); 4] {
        [
            (subjects::STREAM_ALERTS, subjects::ALERTS, 7 * DAY, false),
            (subjects::STREAM_COMMANDS, subjects::COMMANDS, DAY, false),
            (subjects::STREAM_RESULTS, subjects::RESULTS, 7 * DAY, false),
            (
                subjects::STREAM_AUDIT,
                subjects::AUDIT,
                self.audit_max_age,
                true,
            ),
        ]
    }

    async fn ensure_streams(&self) -> Result<()> {
        for (name, subject, max_age, locked) in self.stream_specs() {
            let made = ensure_stream(&self.js, name, subject, max_age, locked)
                .await?
                .cached_info()
                .created
                .unix_timestamp_nanos();
            self.seen_made(name, made);
        }
        Ok(())
    }

    /// Stream `name` seen made at `made`: whether another was seen before.
    fn seen_made(&self, name: &'static str, made: i128) -> bool {
        let mut seen = self.remake.made.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(name, made).is_some_and(|was| was != made)
    }

    /// Make the SKOS streams found gone (deleted, or lost with a server's
    /// store) again, as they are made at start: locked where they are, the
    /// audit stream with its retention, the alert and result streams with
    /// their per-node limit; `SKOS_STATE` too. Streams found made again by
    /// someone else since this bus last looked (another process that
    /// found them gone first: an agent, a coordinator starting) are told
    /// the same way: their per-node limit is set again, and a
    /// `SKOS_COMMANDS` made again is counted ([`NatsBus::commands_remade`]).
    /// The names made or found made again (logged); nothing when streams
    /// were looked for less than a second ago. An agent's least-privilege
    /// credential may not make them: an error.
    pub async fn remake_missing_streams(&self) -> Result<Vec<&'static str>> {
        self.remake_within(Duration::from_secs(1)).await
    }

    /// [`NatsBus::remake_missing_streams`] at most every
    /// [`STREAMS_CHECK_EVERY`]: the leader calls it on its tick, so streams
    /// made again by another process are found even where no request of
    /// its own fails.
    pub async fn check_streams(&self) -> Result<Vec<&'static str>> {
        self.remake_within(STREAMS_CHECK_EVERY).await
    }

    async fn remake_within(&self, every: Duration) -> Result<Vec<&'static str>> {
        {
            let mut last = self.remake.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < every) {
                return Ok(Vec::new());
            }
            *last = Some(std::time::Instant::now());
        }
        // What is found is told at once (counted, the limit marked due),
        // so an error on a later stream loses none of it.
        let found = |name: &'static str| {
            use std::sync::atomic::Ordering::Relaxed;
            if name == subjects::STREAM_COMMANDS {
                self.remake.commands.fetch_add(1, Relaxed);
            }
            if name == subjects::STREAM_ALERTS || name == subjects::STREAM_RESULTS {
                self.remake.limit_due.store(true, Relaxed);
            }
        };
        let mut made = Vec::new();
        let mut replaced = Vec::new();
        // A stream that cannot be looked at or made keeps none after it
        // from being: the first error is given once every one was tried.
        let mut failed = None;
        for (name, subject, max_age, locked) in self.stream_specs() {
            let at = match self.stream_made(name).await {
                Ok(at) => at,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            match at {
                Some(at) => {
                    if self.seen_made(name, at) {
                        found(name);
                        replaced.push(name);
                    }
                }
                None => match ensure_stream(&self.js, name, subject, max_age, locked).await {
                    Ok(stream) => {
                        self.seen_made(name, stream.cached_info().created.unix_timestamp_nanos());
                        found(name);
                        made.push(name);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                },
            }
        }
        match self.has_stream(subjects::STREAM_STATE).await {
            Ok(true) => {}
            Ok(false) => match crate::state::make_stream(&self.js).await {
                Ok(_) => made.push(subjects::STREAM_STATE),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            },
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
        if !made.is_empty() {
            tracing::warn!(
                streams = ?made,
                "SKOS streams were gone (deleted, or lost with the server's store): made again"
            );
        }
        if !replaced.is_empty() {
            tracing::warn!(
                streams = ?replaced,
                "SKOS streams were made again by another process (they were gone): set up again"
            );
        }
        let per_node = self
            .remake
            .per_node
            .load(std::sync::atomic::Ordering::Relaxed);
        if per_node > 0
            && self
                .remake
                .limit_due
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.limit_per_node(per_node).await?;
            self.remake
                .limit_due
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        made.extend(replaced);
        Ok(made)
    }

    /// How many times this bus found `SKOS_COMMANDS` made again (made it,
    /// or found another in place of the one it saw): when it changes,
    /// every agent's command consumer must be made again.
    pub fn commands_remade(&self) -> u64 {
        self.remake
            .commands
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Make sure `node`'s command consumer exists with its fixed filter
    /// (`skos.command.<node>`): created if missing, replaced if it filters
    /// anything else (a consumer created or re-pointed by someone else).
    /// The coordinator calls this for every node it knows, so that agents
    /// need no right to create consumers.
    pub async fn ensure_command_consumer(&self, node: &NodeName) -> Result<()> {
        let name = subjects::agent_consumer(node);
        let filter = subjects::command(node);
        let fail = |reason: String| Error::Consumer {
            stream: subjects::STREAM_COMMANDS.to_string(),
            consumer: name.clone(),
            reason,
        };
        let stream = match self.js.get_stream_no_info(subjects::STREAM_COMMANDS).await {
            Ok(s) => s,
            Err(e) => {
                // Gone (deleted, or lost with the server's store): made
                // again where this credential may.
                if self
                    .remake_missing_streams()
                    .await
                    .is_ok_and(|m| !m.is_empty())
                {
                    self.js
                        .get_stream_no_info(subjects::STREAM_COMMANDS)
                        .await
                        .map_err(|e| fail(e.to_string()))?
                } else {
                    return Err(fail(e.to_string()));
                }
            }
        };
        match stream.consumer_info(&name).await {
            Ok(info) if info.config.filter_subject == filter => return Ok(()),
            Ok(info) => {
                tracing::warn!(
                    consumer = %name,
                    filter = %info.config.filter_subject,
                    expected = %filter,
                    "command consumer filters another subject: replaced"
                );
                stream
                    .delete_consumer(&name)
                    .await
                    .map_err(|e| fail(format!("delete: {e}")))?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        stream
            .create_consumer(command_consumer_config(node))
            .await
            .map_err(|e| fail(format!("create: {e}")))?;
        tracing::info!(consumer = %name, filter = %filter, "command consumer created");
        Ok(())
    }

    /// What an agent does once connected: where nothing is set up yet (no
    /// commands stream: no coordinator has run), create the streams as
    /// the coordinator would, so that what it sends before a coordinator
    /// runs is kept. Only where its own consumer's lookup (the one right an
    /// agent has) says the stream is missing: with least-privilege
    /// credentials the creation is then refused, and the error says so.
    pub async fn prepare_agent(&self, node: &NodeName) -> Result<()> {
        let name = subjects::agent_consumer(node);
        let found = self
            .js
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(
                &name,
                subjects::STREAM_COMMANDS,
            )
            .await;
        let missing = matches!(
            &found,
            Err(e) if matches!(
                e.kind(),
                stream::ConsumerErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            )
        );
        if !missing {
            return Ok(());
        }
        self.ensure_streams().await.map_err(|e| Error::Stream {
            stream: subjects::STREAM_COMMANDS.to_string(),
            reason: format!(
                "does not exist yet, and this agent could not create the streams ({e}): \
                 with least-privilege credentials only the coordinator may; what this agent \
                 sends before a coordinator has run is refused by the server"
            ),
        })
    }

    /// Whether stream `name` exists (asked with its info: a credential
    /// that may not look at it gets an error, not `false`).
    pub async fn has_stream(&self, name: &str) -> Result<bool> {
        Ok(self.stream_made(name).await?.is_some())
    }

    /// When the server made stream `name` (ns since the epoch); `None`
    /// when it does not exist.
    async fn stream_made(&self, name: &str) -> Result<Option<i128>> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match self.js.get_stream(name).await {
            Ok(s) => Ok(Some(s.cached_info().created.unix_timestamp_nanos())),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(Error::Stream {
                    stream: name.to_string(),
                    reason: e.to_string(),
                }),
            },
        }
    }

    /// The configuration of stream `name`, as the server holds it.
    async fn stream_config(&self, name: &str) -> Result<stream::Config> {
        let fail = |e: String| Error::Stream {
            stream: name.to_string(),
            reason: e,
        };
        let mut stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(stream
            .info()
            .await
            .map_err(|e| fail(e.to_string()))?
            .config
            .clone())
    }

    /// Lock the audit and state streams where they are not: deny deletes
    /// and purges, no roll-ups (streams made by earlier versions). With
    /// least-privilege credentials the coordinator may not change either
    /// stream: one that is not locked is then an error naming what to do.
    pub async fn lock_streams(&self) -> Result<()> {
        for name in [subjects::STREAM_AUDIT, subjects::STREAM_STATE] {
            let retention = (name == subjects::STREAM_AUDIT).then_some(self.audit_max_age);
            lock_stream(&self.js, name, retention, false).await?;
        }
        Ok(())
    }

    /// Set `max_msgs_per_subject` of the alert and result streams (one
    /// subject per node) to `max`, where it differs.
    pub(crate) async fn limit_per_node(&self, max: u32) -> Result<()> {
        self.remake
            .per_node
            .store(max, std::sync::atomic::Ordering::Relaxed);
        for name in [subjects::STREAM_ALERTS, subjects::STREAM_RESULTS] {
            let fail = |reason: String| Error::Stream {
                stream: name.to_string(),
                reason,
            };
            let mut config = self.stream_config(name).await?;
            if config.max_messages_per_subject == i64::from(max) {
                continue;
            }
            tracing::info!(
                stream = name,
                was = config.max_messages_per_subject,
                now = max,
                "messages kept per node"
            );
            config.max_messages_per_subject = i64::from(max);
            self.js
                .update_stream(config)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }

    /// Where a coordinator feed's durable consumer stands: (everything
    /// acknowledged up to, highest delivered) stream sequences; `None` for
    /// a feed that is not one of the coordinator's, or before its consumer
    /// first exists.
    pub(crate) async fn consumer_position(&self, feed: &Feed) -> Result<Option<(u64, u64)>> {
        let stream_name = match feed {
            Feed::Alerts => subjects::STREAM_ALERTS,
            Feed::Results => subjects::STREAM_RESULTS,
            _ => return Ok(None),
        };
        let fail = |reason: String| Error::Consumer {
            stream: stream_name.to_string(),
            consumer: subjects::CONSUMER_COORDINATOR.to_string(),
            reason,
        };
        let stream = self
            .js
            .get_stream(stream_name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match stream.consumer_info(subjects::CONSUMER_COORDINATOR).await {
            Ok(info) => Ok(Some((
                info.ack_floor.stream_sequence,
                info.delivered.stream_sequence,
            ))),
            Err(e) if e.to_string().contains("not found") => Ok(None),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Whether the stream of a coordinator feed still holds the message at
    /// `sequence` (`false`: removed, by a limit or its age).
    pub(crate) async fn holds(&self, feed: &Feed, sequence: u64) -> Result<bool> {
        let stream_name = match feed {
            Feed::Alerts => subjects::STREAM_ALERTS,
            Feed::Results => subjects::STREAM_RESULTS,
            _ => return Ok(false),
        };
        let fail = |reason: String| Error::Stream {
            stream: stream_name.to_string(),
            reason,
        };
        let stream = self
            .js
            .get_stream(stream_name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match stream.get_raw_message(sequence).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(fail(format!("message {sequence}: {e}"))),
        }
    }

    pub(crate) async fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        let r = if headers.is_empty() {
            self.client.publish(subject.to_string(), payload).await
        } else {
            self.client
                .publish_with_headers(subject.to_string(), header_map(headers), payload)
                .await
        };
        r.map_err(|e| Error::subject(subject, e))
    }

    pub(crate) async fn publish_durable(
        &self,
        subject: &str,
        payload: Bytes,
        id: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<()> {
        let mut msg = jetstream::message::PublishMessage::build().payload(payload);
        for (name, value) in headers {
            msg = msg.header(name.as_str(), value.as_str());
        }
        if let Some(id) = id {
            msg = msg.message_id(id);
        }
        let send = |msg| async { self.js.send_publish(subject.to_string(), msg).await?.await };
        match send(msg.clone()).await {
            Ok(_) => Ok(()),
            // The stream is gone: made again where this credential may
            // (a coordinator's), and sent once more.
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                match self.remake_missing_streams().await {
                    Ok(made) if !made.is_empty() => send(msg)
                        .await
                        .map(drop)
                        .map_err(|e| Error::subject(subject, e)),
                    Ok(_) => Err(Error::subject(subject, e)),
                    Err(why) => {
                        tracing::debug!(error = %why, "streams not made again");
                        Err(Error::subject(subject, e))
                    }
                }
            }
            Err(e) => Err(Error::subject(subject, e)),
        }
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        let since = std::time::Instant::now();
        let ask = tokio::time::timeout(timeout, self.client.request(subject.to_string(), payload));
        // The server's refusal of the question or of the answer's way back
        // ends the wait: nothing will come.
        let denied = || {
            self.refusals
                .naming(since, subject)
                .map(|reason| Error::Denied {
                    subject: subject.to_string(),
                    reason,
                })
        };
        let asked = self.refusals.unless(denied, ask).await?;
        let unanswered = match asked {
            Ok(Ok(m)) => return Ok(m.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Error::NoResponders {
                    subject: subject.to_string(),
                }
            }
            Ok(Err(e)) => Error::subject(subject, e),
            Err(_) => Error::Timeout {
                subject: subject.to_string(),
                timeout,
            },
        };
        // A refusal heard as the wait ended.
        Err(denied().unwrap_or(unanswered))
    }

    pub(crate) async fn subscribe(&self, feed: &Feed) -> Result<Subscription> {
        match feed {
            Feed::Heartbeats => self.core(subjects::HEARTBEATS.to_string(), false).await,
            Feed::StatusRequests => self.core(subjects::STATUS.to_string(), true).await,
            Feed::ControlRequests => self.core(subjects::CONTROL.to_string(), true).await,
            Feed::ChainEvents(node) => self.core(subjects::chain(node), true).await,
            Feed::ChainControl(node) => self.core(subjects::chain_control(node), false).await,
            Feed::Alerts => Ok(self.durable(
                subjects::STREAM_ALERTS,
                subjects::CONSUMER_COORDINATOR.to_string(),
                subjects::ALERTS.to_string(),
            )),
            Feed::Results => Ok(self.durable(
                subjects::STREAM_RESULTS,
                subjects::CONSUMER_COORDINATOR.to_string(),
                subjects::RESULTS.to_string(),
            )),
            Feed::Commands(node) => Ok(self.commands(node.clone())),
        }
    }

    /// `node`'s commands, through its own durable consumer, looked up by
    /// name (the only consumer right an agent has: info, fetch and ack on
    /// its own). Where it does not exist yet it is created, as on a server
    /// without permissions; where that is refused (least privilege), this
    /// waits, saying why, until the coordinator has created it.
    fn commands(&self, node: NodeName) -> Subscription {
        let (tx, rx) = mpsc::channel::<Incoming>(256);
        let js = (*self.js).clone();
        let refusals = self.refusals.clone();
        tokio::spawn(async move {
            let name = subjects::agent_consumer(&node);
            let mut backoff = Duration::from_millis(100);
            let mut said = None::<String>;
            // Cleared once a creation was refused: from then on the
            // consumer is only looked up (no request the server refuses
            // again and again, no wait for its time-out).
            let mut may_create = true;
            while !tx.is_closed() {
                let attached = match Self::command_consumer(&js, &refusals, &node, &mut may_create)
                    .await
                {
                    Ok(consumer) => {
                        if said.take().is_some() {
                            tracing::info!(stream = subjects::STREAM_COMMANDS, consumer = %name, "command consumer found: commands flow");
                        }
                        backoff = Duration::from_millis(100);
                        Self::pump(consumer, subjects::STREAM_COMMANDS, &name, &tx).await
                    }
                    Err(e) => Err(e),
                };
                match attached {
                    Ok(()) => return,
                    Err(e) => {
                        // The same reason is said once, then quietly retried.
                        let text = e.to_string();
                        if said.as_deref() != Some(text.as_str()) {
                            tracing::warn!(stream = subjects::STREAM_COMMANDS, consumer = %name, error = %text, "no commands until this is resolved; retrying");
                            said = Some(text);
                        } else {
                            tracing::debug!(stream = subjects::STREAM_COMMANDS, consumer = %name, error = %text, "still retrying");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
        let mut rx = rx;
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    /// `node`'s command consumer: looked up; created where missing and
    /// `may_create` (cleared when the creation fails); refused where it
    /// filters anything but `node`'s commands.
    async fn command_consumer(
        js: &jetstream::Context,
        refusals: &events::Refusals,
        node: &NodeName,
        may_create: &mut bool,
    ) -> Result<consumer::PullConsumer> {
        let name = subjects::agent_consumer(node);
        let filter = subjects::command(node);
        let fail = |reason: String| Error::Consumer {
            stream: subjects::STREAM_COMMANDS.to_string(),
            consumer: name.clone(),
            reason,
        };
        let found = js
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(
                &name,
                subjects::STREAM_COMMANDS,
            )
            .await;
        let consumer = match found {
            Ok(c) => c,
            Err(e) if is_not_found_kind(e.kind()) && !*may_create => {
                return Err(fail(format!(
                    "does not exist yet ({e}), and this agent may not create it: the \
                     coordinator does when it hears this node's heartbeats"
                )));
            }
            Err(e) if is_not_found_kind(e.kind()) => {
                // A creation the server refuses ends at its refusal, not
                // at the JetStream request's time-out.
                let created = jetstream_unless_refused(refusals, async {
                    let stream = ensure_stream(
                        js,
                        subjects::STREAM_COMMANDS,
                        subjects::COMMANDS,
                        DAY,
                        false,
                    )
                    .await?;
                    stream
                        .create_consumer(command_consumer_config(node))
                        .await
                        .map_err(|e| fail(e.to_string()))
                })
                .await;
                created.map_err(|c| {
                    *may_create = false;
                    fail(format!(
                        "does not exist ({e}) and could not be created ({c}): with \
                         least-privilege credentials an agent may not create it; the \
                         coordinator does when it hears this node's heartbeats"
                    ))
                })?
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let filtered = &consumer.cached_info().config.filter_subject;
        if *filtered != filter {
            return Err(fail(format!(
                "filters {filtered:?}, not {filter:?}: refused (the coordinator replaces it)"
            )));
        }
        Ok(consumer)
    }

    async fn core(&self, subject: String, replies: bool) -> Result<Subscription> {
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::subject(&subject, e))?;
        let client = self.client.clone();
        Ok(sub
            .map(move |m| {
                let ack = match (replies, m.reply) {
                    (true, Some(reply)) => Acker::Reply(Replier::Nats {
                        client: client.clone(),
                        reply,
                    }),
                    _ => Acker::None,
                };
                Incoming {
                    subject: m.subject.to_string(),
                    headers: headers_of(m.headers.as_ref()),
                    payload: m.payload,
                    ack,
                }
            })
            .boxed())
    }

    /// A durable pull consumer, re-attached after any error (server
    /// restart, network loss) until the subscription is dropped.
    fn durable(
        &self,
        stream_name: &'static str,
        consumer_name: String,
        filter: String,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel::<Incoming>(256);
        let js = (*self.js).clone();
        let bus = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !tx.is_closed() {
                let attached =
                    match Self::durable_consumer(&js, stream_name, &consumer_name, &filter).await {
                        Ok(consumer) => {
                            Self::pump(consumer, stream_name, &consumer_name, &tx).await
                        }
                        Err(e) => Err(e),
                    };
                match attached {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(stream = stream_name, consumer = %consumer_name, error = %e, "durable consumer interrupted, re-attaching");
                        // Its stream gone (deleted, or lost with the
                        // server's store): made again, with the others.
                        if let Err(why) = bus.remake_missing_streams().await {
                            tracing::debug!(error = %why, "streams not made again");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
        let mut rx = rx;
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    /// A durable consumer of the coordinator's, created if missing.
    async fn durable_consumer(
        js: &jetstream::Context,
        stream_name: &str,
        consumer_name: &str,
        filter: &str,
    ) -> Result<consumer::PullConsumer> {
        let fail = |reason: &dyn std::fmt::Display| Error::Consumer {
            stream: stream_name.to_string(),
            consumer: consumer_name.to_string(),
            reason: reason.to_string(),
        };
        let stream = js.get_stream(stream_name).await.map_err(|e| fail(&e))?;
        stream
            .get_or_create_consumer(consumer_name, durable_config(consumer_name, filter))
            .await
            .map_err(|e| fail(&e))
    }

    async fn pump(
        consumer: consumer::PullConsumer,
        stream_name: &str,
        consumer_name: &str,
        tx: &mpsc::Sender<Incoming>,
    ) -> Result<()> {
        let fail = |reason: &dyn std::fmt::Display| Error::Consumer {
            stream: stream_name.to_string(),
            consumer: consumer_name.to_string(),
            reason: reason.to_string(),
        };
        let mut messages = consumer
            .stream()
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| fail(&e))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| fail(&e))?;
            let incoming = Incoming {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                headers: headers_of(m.headers.as_ref()),
                ack: Acker::JetStream(Box::new(m)),
            };
            if tx.send(incoming).await.is_err() {
                return Ok(());
            }
        }
        Err(fail(&"message stream ended"))
    }
}

/// `call`, one or more JetStream API requests of this connection, ended
/// early with [`Error::Denied`] when the server refuses a publish under
/// `$JS.API.` while it runs (its refusal is what ends such a request; the
/// client would wait for its time-out).
async fn jetstream_unless_refused<T>(
    refusals: &events::Refusals,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    const API: &str = "$JS.API.";
    let since = std::time::Instant::now();
    let refused = || {
        refusals
            .publish_under(since, API)
            .map(|(subject, reason)| Error::Denied { subject, reason })
    };
    refusals.unless(refused, call).await?
}

/// A durable pull consumer's config: explicit acks, everything from the
/// start, only `filter`.
fn durable_config(name: &str, filter: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: filter.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// `node`'s command consumer: only `skos.command.<node>`.
fn command_consumer_config(node: &NodeName) -> consumer::pull::Config {
    durable_config(&subjects::agent_consumer(node), &subjects::command(node))
}

/// Get or create one of the SKOS streams.
async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    max_age: Duration,
    locked: bool,
) -> Result<stream::Stream> {
    let cfg = stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        max_age,
        storage: stream::StorageType::File,
        // Never longer than what the stream keeps (the server refuses it).
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        deny_delete: locked,
        deny_purge: locked,
        ..Default::default()
    };
    js.get_or_create_stream(cfg)
        .await
        .map_err(|e| Error::Stream {
            stream: name.to_string(),
            reason: e.to_string(),
        })
}

/// Make `SKOS_AUDIT` again, locked, with `max_age` (the audit writer, when
/// the stream it writes was deleted under it: [`crate::audit`]).
pub(crate) async fn ensure_audit_stream(js: &jetstream::Context, max_age: Duration) -> Result<()> {
    ensure_stream(js, subjects::STREAM_AUDIT, subjects::AUDIT, max_age, true)
        .await
        .map(drop)
}

/// Lock stream `name` where it is not (deny deletes and purges, no
/// roll-ups), saying so; with `retention`, warn where its `max_age` is not
/// that (set when the stream was made; no SKOS credential may change it),
/// or with `raise`, set it where it is shorter (a stream someone else put
/// in place of the one written must not age the trail out sooner). An
/// error names what to do where this credential may not update it.
async fn lock_stream(
    js: &jetstream::Context,
    name: &str,
    retention: Option<Duration>,
    raise: bool,
) -> Result<()> {
    let fail = |reason: String| Error::Stream {
        stream: name.to_string(),
        reason,
    };
    let mut config = js
        .get_stream(name)
        .await
        .map_err(|e| fail(e.to_string()))?
        .cached_info()
        .config
        .clone();
    let shorter = |age: Duration, retention: Duration| {
        !age.is_zero() && (retention.is_zero() || age < retention)
    };
    let mut raised = false;
    if let Some(retention) = retention.filter(|r| config.max_age != *r) {
        if raise && shorter(config.max_age, retention) {
            tracing::warn!(
                stream = name,
                max_age_seconds = config.max_age.as_secs(),
                retention_seconds = retention.as_secs(),
                "the audit stream put in place ages records out sooner than the configured retention: raised to it"
            );
            config.max_age = retention;
            raised = true;
        } else {
            tracing::warn!(
                stream = name,
                max_age_seconds = config.max_age.as_secs(),
                retention_seconds = retention.as_secs(),
                "the audit stream's max_age is not the configured retention: the stream's applies (change it with the server's admin credential)"
            );
        }
    }
    let limited = config.max_messages > 0
        || config.max_bytes > 0
        || config.max_messages_per_subject > 0
        || config.max_message_size > 0
        || config.retention != stream::RetentionPolicy::Limits;
    if raise && limited {
        // SKOS makes the trail with no limit but its age, kept by limits
        // alone: one put in its place with a count or size limit, or kept
        // only while consumers want it, would drop records (or refuse
        // them) long before the retention.
        tracing::warn!(
            stream = name,
            max_messages = config.max_messages,
            max_bytes = config.max_bytes,
            max_messages_per_subject = config.max_messages_per_subject,
            max_message_size = config.max_message_size,
            retention = ?config.retention,
            "the audit stream put in place limits or drops its messages: limits taken off"
        );
        config.max_messages = -1;
        config.max_bytes = -1;
        config.max_messages_per_subject = -1;
        config.max_message_size = -1;
        config.retention = stream::RetentionPolicy::Limits;
        raised = true;
    }
    if is_locked(&config) {
        if !raised {
            return Ok(());
        }
    } else {
        tracing::warn!(
            stream = name,
            deny_delete = config.deny_delete,
            deny_purge = config.deny_purge,
            allow_rollup = config.allow_rollup,
            "stream allows deletes or purges: locking it"
        );
    }
    config.deny_delete = true;
    config.deny_purge = true;
    config.allow_rollup = false;
    js.update_stream(config).await.map_err(|e| {
        fail(format!(
            "allows deletes or purges, and cannot be locked with this credential ({e}): \
             set deny_delete and deny_purge, and allow_rollup off, with a credential \
             that may update the stream (or start this coordinator once under the \
             earlier server config, which let it, before loading the new one)"
        ))
    })?;
    Ok(())
}

/// Lock `SKOS_AUDIT` where it is not, its max_age raised to `retention`
/// where shorter, its limits taken off (one made by someone else in place
/// of the one written: [`crate::audit`]); a failure is logged, not given:
/// the writer goes on and the replacement is recorded all the same. One
/// that keeps records only while consumers want them (a retention the
/// server will not change) and holds none is deleted and made again as
/// SKOS makes it: whether it was.
pub(crate) async fn lock_audit_stream(js: &jetstream::Context, retention: Duration) -> bool {
    let Err(e) = lock_stream(js, subjects::STREAM_AUDIT, Some(retention), true).await else {
        return false;
    };
    let kept = match js.get_stream(subjects::STREAM_AUDIT).await {
        Ok(s) => {
            let info = s.cached_info();
            info.config.retention == stream::RetentionPolicy::Limits || info.state.messages > 0
        }
        Err(_) => true,
    };
    if kept {
        tracing::error!(error = %e, "the audit stream put in place of the one written is not locked");
        return false;
    }
    let remade = async {
        js.delete_stream(subjects::STREAM_AUDIT)
            .await
            .map_err(|e| Error::Stream {
                stream: subjects::STREAM_AUDIT.to_string(),
                reason: e.to_string(),
            })?;
        ensure_audit_stream(js, retention).await
    };
    match remade.await {
        Ok(()) => {
            tracing::error!(
                stream = subjects::STREAM_AUDIT,
                "the audit stream put in place kept no records (its retention drops them) and held none: made again as SKOS makes it"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "the audit stream put in place keeps no records and was not made again");
            false
        }
    }
}

/// Whether a stream's config refuses deletes and purges (roll-ups purge
/// too).
pub(crate) fn is_locked(config: &stream::Config) -> bool {
    config.deny_delete && config.deny_purge && !config.allow_rollup
}

/// Whether a consumer lookup failed because the consumer (or its stream)
/// does not exist.
fn is_not_found_kind(kind: stream::ConsumerErrorKind) -> bool {
    use async_nats::jetstream::ErrorCode;
    matches!(
        kind,
        stream::ConsumerErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                || e.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

fn header_map(headers: &[(String, String)]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bus;
    use skos_core::NodeName;
    use skos_testsupport::nats::{nats_server_binary, NatsServer};

    #[test]
    fn the_reconnect_wait_comes_from_the_config() {
        let mut cfg = skos_core::config::NatsSection::default();
        assert_eq!(
            NatsOptions::from_config(&cfg, "t").unwrap().reconnect_wait,
            None
        );
        cfg.reconnect_wait_seconds = Some(2.0);
        assert_eq!(
            NatsOptions::from_config(&cfg, "t").unwrap().reconnect_wait,
            Some(Duration::from_secs(2))
        );
    }

    /// With a fixed reconnect wait the client still comes back once the
    /// server does, and the streams are there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fixed_reconnect_wait_reconnects() {
        skos_testsupport::require!("nats-server", nats_server_binary());
        let mut server = NatsServer::start();
        let mut opts = NatsOptions::new(server.url(), "reconnect");
        opts.reconnect_wait = Some(Duration::from_millis(200));
        let bus = NatsBus::connect(&opts).await.unwrap();
        server.kill();
        let mut waited = 0;
        while bus.client().connection_state() == async_nats::connection::State::Connected
            && waited < 200
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        server.restart();
        let mut tries = 0;
        while bus.client().connection_state() != async_nats::connection::State::Connected {
            tries += 1;
            assert!(tries < 600, "no reconnect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bus.client().flush().await.unwrap();
        bus.jetstream()
            .get_stream_no_info(subjects::STREAM_AUDIT)
            .await
            .unwrap();
    }

    /// A message marked in progress every third of the ack wait is not
    /// delivered again while it is worked on, for longer than the ack wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_progress_holds_off_redelivery() {
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = Bus::Nats(
            NatsBus::connect(&NatsOptions::new(server.url(), "test"))
                .await
                .unwrap(),
        );
        let nova = NodeName::parse("nova").unwrap();
        let mut feed = bus.subscribe(Feed::Commands(nova.clone())).await.unwrap();
        bus.publish_durable(
            &subjects::command(&nova),
            Bytes::from_static(b"{}"),
            Some("long-1"),
            &[],
        )
        .await
        .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap()
            .unwrap();
        let until = tokio::time::Instant::now() + ACK_WAIT + ACK_WAIT / 2;
        while tokio::time::Instant::now() < until {
            m.in_progress().await.unwrap();
            let again = tokio::time::timeout(ACK_WAIT / 3, feed.next()).await;
            assert!(again.is_err(), "delivered again while in progress");
        }
        m.ack().await.unwrap();
        let again = tokio::time::timeout(ACK_WAIT + Duration::from_secs(2), feed.next()).await;
        assert!(again.is_err(), "delivered again after its ack");
    }

    /// A consumer of nova's filtering every node's commands (as an agent
    /// that could create its own once made it) is refused by the agent and
    /// replaced by the coordinator with the fixed filter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_re_pointed_command_consumer_is_refused_and_replaced() {
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        let nova = NodeName::parse("nova").unwrap();
        let stream = bus.js.get_stream(subjects::STREAM_COMMANDS).await.unwrap();
        stream
            .create_consumer(durable_config(
                &subjects::agent_consumer(&nova),
                subjects::COMMANDS,
            ))
            .await
            .unwrap();
        let refused = NatsBus::command_consumer(&bus.js, &bus.refusals, &nova, &mut true)
            .await
            .err();
        assert!(
            refused
                .as_ref()
                .is_some_and(|e| e.to_string().contains("filters")),
            "{refused:?}"
        );
        bus.ensure_command_consumer(&nova).await.unwrap();
        let fixed = NatsBus::command_consumer(&bus.js, &bus.refusals, &nova, &mut false)
            .await
            .unwrap();
        assert_eq!(
            fixed.cached_info().config.filter_subject,
            subjects::command(&nova)
        );
        // Again: nothing to do.
        bus.ensure_command_consumer(&nova).await.unwrap();
        let mut names = stream.consumer_names();
        let mut all = Vec::new();
        while let Some(n) = names.next().await {
            all.push(n.unwrap());
        }
        assert_eq!(all, [subjects::agent_consumer(&nova)]);
    }

    /// An old, unlocked state stream is locked at start; and nats-server
    /// refuses an update that would take the locks off again, a purge and
    /// a message delete (other limits, such as the age, an update could
    /// still change: no SKOS credential may update these streams).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locked_streams_stay_locked() {
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        bus.js
            .create_stream(stream::Config {
                name: subjects::STREAM_STATE.to_string(),
                subjects: vec![subjects::STATE.to_string()],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                ..Default::default()
            })
            .await
            .unwrap();
        bus.lock_streams().await.unwrap();
        for name in [subjects::STREAM_AUDIT, subjects::STREAM_STATE] {
            let mut s = bus.js.get_stream(name).await.unwrap();
            let mut cfg = s.info().await.unwrap().config.clone();
            assert!(is_locked(&cfg), "{name}: {cfg:?}");
            cfg.deny_delete = false;
            cfg.deny_purge = false;
            let unlocked = bus.js.update_stream(cfg.clone()).await;
            assert!(unlocked.is_err(), "{name}: unlocked by an update");
            cfg.deny_delete = true;
            let unlocked = bus.js.update_stream(cfg).await;
            assert!(unlocked.is_err(), "{name}: purges allowed by an update");
            assert!(is_locked(&s.info().await.unwrap().config), "{name}");
            bus.js
                .publish(format!("{name}.x"), Bytes::from_static(b"{}"))
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(s.purge().await.is_err(), "{name}: purged");
            assert!(
                s.delete_message(1).await.is_err(),
                "{name}: message deleted"
            );
            // Deleting the whole stream is not refused by the stream
            // (deny_delete is about messages, on nats-server 2.9.10): only
            // permissions stop it (`skos fleet nats-config` denies it to
            // every credential).
        }
    }
}
