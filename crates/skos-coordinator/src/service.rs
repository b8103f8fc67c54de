//! The coordinator service: feeds the [`Engine`] from the bus and carries
//! out its effects.
//!
//! Order matters for crash safety: for each message, commands and raised
//! alerts are published first (durably, with their ids as JetStream message
//! ids, so a re-send after a crash is stored once), then the audit entries
//! are written, then the message is acknowledged. After a restart, alerts
//! already recorded in the audit trail are not handled again.

use skos_core::counters::Counter;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use skos_bus::lease::{Lease, Renewal, Term};
use skos_bus::trust::Signer;
use skos_bus::{AuditLog, Bus, Feed, Incoming, StateStore};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{decode, Alert, AuditEntry, CommandResult, DecodeError, Heartbeat};
use skos_core::NodeName;

use crate::engine::{Effect, Engine};
use crate::failpoint;
use crate::status::Leadership;
use crate::{Error, Result};

pub struct ServiceOptions {
    /// `embedded` or `distributed`, shown in the status.
    pub mode: String,
    /// Where to keep a status snapshot for `skos status` (embedded mode).
    pub status_file: Option<PathBuf>,
    /// How often offline detection and verification deadlines are checked.
    pub tick: Duration,
    /// How many audit records to read back at start to rebuild the set of
    /// alerts already handled.
    pub replay_records: u64,
    /// Signs every command (agents refuse unsigned ones by default).
    pub signer: Option<Arc<Signer>>,
    /// Leader election (distributed mode): stand by until this lease is
    /// won. `None`: lead from the start (embedded mode).
    pub election: Option<Lease>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            mode: "distributed".into(),
            status_file: None,
            tick: Duration::from_millis(250),
            replay_records: 20_000,
            signer: None,
            election: None,
        }
    }
}

/// Most durable messages handled as one batch.
const BATCH: usize = 256;

/// The key a whole-engine snapshot was kept under by earlier versions: read
/// once at start, split into per-node keys, then removed.
const STATE_KEY: &str = "coordinator";

/// Each node's part of the state is kept under `node_<name>`.
const NODE_KEY_PREFIX: &str = "node_";

fn node_key(node: &NodeName) -> String {
    format!("{NODE_KEY_PREFIX}{node}")
}

/// Largest decompressed snapshot accepted.
const SNAPSHOT_MAX_BYTES: usize = 256 * 1024 * 1024;

fn encode_snapshot(snap: &crate::engine::EngineSnapshot) -> std::io::Result<Bytes> {
    let json = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    zstd::bulk::compress(&json, 3).map(Bytes::from)
}

/// Why the saved snapshot under `key` cannot be restored.
#[derive(Debug, thiserror::Error)]
enum SnapshotError {
    #[error("state {key}: cannot decompress: {source}")]
    Decompress {
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("state {key}: {source}")]
    Json {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// zstd-compressed (as written now) or plain JSON (as written before).
fn decode_snapshot(bytes: &[u8]) -> Result<crate::engine::EngineSnapshot, SnapshotError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let json = |source| SnapshotError::Json {
        key: STATE_KEY,
        source,
    };
    if bytes.starts_with(&ZSTD_MAGIC) {
        let plain = zstd::bulk::decompress(bytes, SNAPSHOT_MAX_BYTES).map_err(|source| {
            SnapshotError::Decompress {
                key: STATE_KEY,
                source,
            }
        })?;
        serde_json::from_slice(&plain).map_err(json)
    } else {
        serde_json::from_slice(bytes).map_err(json)
    }
}

struct Ctx {
    /// A digest of each node's state as last written, so an unchanged
    /// node is not written again.
    written: HashMap<NodeName, u64>,
    /// Nodes whose state could not be written: retried every tick.
    unsaved: BTreeSet<NodeName>,
    signer: Option<Arc<Signer>>,
    engine: Engine,
    bus: Bus,
    audit: Arc<AuditLog>,
    state: StateStore,
    counters: Counters,
    max_bytes: usize,
    /// Effects raised by timers and heartbeats that could not be carried
    /// out (the bus was down), in order: retried on every tick, never
    /// dropped.
    outbox: VecDeque<Effect>,
    /// This coordinator was deposed while carrying out effects.
    deposed: bool,
}

/// How one leadership ended.
enum Led {
    Shutdown,
    Deposed,
}

/// Run until `shutdown` completes. With [`ServiceOptions::election`] the
/// coordinator is a standby until it wins the lease, leads while it holds
/// it, and goes back to standby when it loses it; without, it leads from
/// the start (embedded mode, or a single coordinator).
pub async fn run(
    cfg: Config,
    bus: Bus,
    audit: Arc<AuditLog>,
    state: StateStore,
    counters: Counters,
    mut opts: ServiceOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    let mut lease = opts.election.take();
    loop {
        let term = match lease.as_mut() {
            None => None,
            Some(l) => match standby(l, &counters, &mut shutdown).await {
                Some(t) => Some(t),
                None => break,
            },
        };
        let led = lead(
            &cfg,
            &bus,
            &audit,
            &state,
            &counters,
            &opts,
            lease.as_mut(),
            term,
            &mut shutdown,
        )
        .await?;
        match led {
            Led::Shutdown => break,
            Led::Deposed => {
                counters.inc(Counter::Leader("lost"));
                audit.set_term(None);
                if let Some(l) = lease.as_mut() {
                    l.step_down();
                }
                tracing::warn!("no longer the leader: back to standby");
                if lease.is_none() {
                    // Without an election there is nobody to wait for.
                    break;
                }
            }
        }
    }
    if let Some(l) = lease.as_mut() {
        if let Err(e) = l.release().await {
            tracing::warn!(error = %e, "leader lease not released; it will age out");
        }
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Wait as a standby until this coordinator wins the lease (`None`: shut
/// down first). A standby sends nothing and answers nothing.
async fn standby(
    lease: &mut Lease,
    counters: &Counters,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Term> {
    let poll = (lease.lease() / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut said = None::<String>;
    loop {
        match lease.try_acquire(chrono::Utc::now()).await {
            Ok(Some(term)) => {
                counters.inc(Counter::Leader("elected"));
                tracing::info!(term = term.term, holder = %lease.holder(), "elected leader");
                return Some(term);
            }
            Ok(None) => {
                let who = lease
                    .current()
                    .await
                    .ok()
                    .flatten()
                    .map(|(r, _)| r.holder)
                    .unwrap_or_default();
                if said.as_deref() != Some(who.as_str()) {
                    tracing::info!(leader = %who, lease_s = lease.lease().as_secs_f64(), "standby: another coordinator leads");
                    said = Some(who);
                }
            }
            Err(e) => tracing::warn!(error = %e, "leader lease unreachable; retrying"),
        }
        tokio::select! {
            _ = &mut *shutdown => return None,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Lead until shutdown or until the lease is lost.
#[allow(clippy::too_many_arguments)]
async fn lead(
    cfg: &Config,
    bus: &Bus,
    audit: &Arc<AuditLog>,
    state: &StateStore,
    counters: &Counters,
    opts: &ServiceOptions,
    mut lease: Option<&mut Lease>,
    term: Option<Term>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Led> {
    let max_bytes = cfg.nats.max_message_bytes;
    let mut engine = Engine::new(cfg.clone(), counters.clone(), &opts.mode);
    engine.set_term(term.as_ref().map(|t| t.term));
    audit.set_term(term.as_ref().map(|t| t.term));
    if let Some(t) = &term {
        let holder = lease
            .as_ref()
            .map(|l| l.holder().to_string())
            .unwrap_or_default();
        engine.set_leader(Some(Leadership {
            holder: holder.clone(),
            term: t.term,
            since: t.since,
        }));
        let entry = AuditEntry::new(
            skos_core::AuditEvent::Leader,
            chrono::Utc::now(),
            None,
            "coordinator",
            format!("{holder} leads, term {}", t.term),
            json!({"event": "elected", "holder": holder, "term": t.term}),
        );
        match audit.append(entry).await {
            Ok(_) => {}
            Err(skos_bus::Error::Deposed { .. }) => return Ok(Led::Deposed),
            Err(e) => return Err(Error::Bus(e)),
        }
    }
    let now = chrono::Utc::now();
    let legacy = match state.load(STATE_KEY).await? {
        Some(bytes) => match decode_snapshot(&bytes) {
            Ok(snap) => {
                engine.restore(snap, now);
                true
            }
            Err(e) => {
                counters.inc(Counter::StateUnreadable);
                tracing::error!(key = STATE_KEY, error = %e, "saved coordinator state unreadable; starting without it");
                false
            }
        },
        None => false,
    };
    let parts = state.load_prefix(NODE_KEY_PREFIX).await?;
    let nodes = parts.len();
    for (key, bytes) in parts {
        match decode_snapshot(&bytes) {
            Ok(snap) => engine.restore(snap, now),
            Err(e) => {
                counters.inc(Counter::StateUnreadable);
                tracing::error!(key = %key, error = %e, "saved node state unreadable; that node starts afresh");
            }
        }
    }
    tracing::info!(nodes, legacy, "coordinator state restored");
    let mut replayed = 0;
    let mut commanded = HashSet::new();
    for r in audit.read_recent(opts.replay_records).await? {
        let event = &r["entry"]["event_type"];
        if event == skos_core::AuditEvent::Alert.as_str() {
            if let Some(id) = r["entry"]["data"]["alert_id"].as_str() {
                engine.mark_handled(id);
                replayed += 1;
            }
        } else if event == skos_core::AuditEvent::Command.as_str() {
            if let Some(id) = r["entry"]["data"]["command"]["action_id"].as_str() {
                commanded.insert(id.to_string());
            }
        }
    }
    let unsent = engine.unsent(&commanded);
    tracing::info!(replayed, mode = %opts.mode, term = ?term.as_ref().map(|t| t.term), "coordinator started");
    if opts.signer.is_none() {
        tracing::warn!("commands are not signed: agents that require signatures will refuse them (set trust.signing_key_file)");
    }
    let mut ctx = Ctx {
        written: HashMap::new(),
        unsaved: BTreeSet::new(),
        signer: opts.signer.clone(),
        engine,
        bus: bus.clone(),
        audit: audit.clone(),
        state: state.clone(),
        counters: counters.clone(),
        max_bytes,
        outbox: VecDeque::new(),
        deposed: false,
    };
    if legacy {
        // Written per node from now on.
        let all = ctx.engine.known_nodes();
        ctx.persist(all).await;
        if ctx.unsaved.is_empty() {
            if let Err(e) = ctx.state.remove(STATE_KEY).await {
                tracing::warn!(key = STATE_KEY, error = %e, "old whole-engine state not removed");
            }
        }
    }
    if !unsent.is_empty() {
        tracing::warn!(
            commands = unsent.len() / 2,
            "publishing commands kept but not sent before the last stop"
        );
        ctx.apply_or_queue(unsent).await;
    }
    let mut heartbeats = bus.subscribe(Feed::Heartbeats).await?;
    // Durable messages are handled in batches of what is ready: the
    // batch's state is written, its effects published and audited, then
    // every message in it acknowledged.
    let mut alerts = bus.subscribe(Feed::Alerts).await?.ready_chunks(BATCH);
    let mut results = bus.subscribe(Feed::Results).await?.ready_chunks(BATCH);
    let mut status = bus.subscribe(Feed::StatusRequests).await?;
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renew_every = lease
        .as_ref()
        .map(|l| l.lease() / 3)
        .unwrap_or(Duration::from_secs(3600));
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    let mut last_snapshot = std::time::Instant::now() - Duration::from_secs(10);
    let valid = |lease: &Option<&mut Lease>| lease.as_ref().is_none_or(|l| l.valid());
    let led = loop {
        if ctx.deposed || !valid(&lease) {
            break Led::Deposed;
        }
        tokio::select! {
            _ = &mut *shutdown => break Led::Shutdown,
            _ = renew.tick() => {
                if let Some(l) = lease.as_mut() {
                    match l.renew().await {
                        Ok(Renewal::Renewed) => {}
                        Ok(Renewal::Lost) => break Led::Deposed,
                        Err(e) => tracing::warn!(error = %e, "leader lease not renewed; retrying"),
                    }
                }
            }
            Some(m) = heartbeats.next() => ctx.heartbeat(m).await,
            Some(batch) = alerts.next() => ctx.alerts(batch).await,
            Some(batch) = results.next() => ctx.results(batch).await,
            Some(m) = status.next() => {
                let body = status_reply(&ctx.engine, &m.payload);
                if let Err(e) = m.reply(Bytes::from(body)).await {
                    tracing::debug!(error = %e, "status reply failed");
                }
            }
            _ = tick.tick() => {
                ctx.flush_outbox().await;
                let effects = ctx.engine.tick(chrono::Utc::now());
                let mut touched = effect_nodes(&effects);
                touched.extend(std::mem::take(&mut ctx.unsaved));
                ctx.persist(touched).await;
                if !effects.is_empty() {
                    failpoint::hit("tick.persisted");
                }
                ctx.apply_or_queue(effects).await;
                if let Some(path) = &opts.status_file {
                    if last_snapshot.elapsed() >= Duration::from_secs(1) {
                        last_snapshot = std::time::Instant::now();
                        write_status(path, &ctx.engine);
                    }
                }
            }
        }
    };
    if matches!(led, Led::Shutdown) {
        // What could not be published waits in the saved state's stead:
        // try once more before stopping.
        ctx.flush_outbox().await;
        if !ctx.outbox.is_empty() {
            tracing::error!(
                effects = ctx.outbox.len(),
                "stopping with effects not carried out (bus down)"
            );
        }
        if let Some(path) = &opts.status_file {
            write_status(path, &ctx.engine);
        }
    }
    Ok(led)
}

/// The answer to a status request: the status its query asks for (an
/// empty payload is the default query), or a refusal saying what is wrong
/// with the query.
fn status_reply(engine: &Engine, payload: &[u8]) -> Vec<u8> {
    use crate::status::{StatusQuery, StatusRefusal};
    match StatusQuery::parse(payload) {
        Ok(query) => engine.status_page(chrono::Utc::now(), &query).to_reply(),
        Err(e) => {
            tracing::debug!(error = %e, "status query refused");
            let refusal = StatusRefusal {
                error: e.to_string(),
            };
            serde_json::to_vec(&refusal).unwrap_or_default()
        }
    }
}

/// Embedded mode's status file: the status of the first
/// [`crate::status::MAX_PER_PAGE`] nodes (its own node), in the shape and
/// within the bounds of a status reply; `skos status` pages and filters it.
fn write_status(path: &std::path::Path, engine: &Engine) {
    use crate::status::{StatusQuery, MAX_PER_PAGE};
    let query = StatusQuery {
        per_page: MAX_PER_PAGE,
        ..StatusQuery::default()
    };
    let body = engine.status_page(chrono::Utc::now(), &query).to_reply();
    let tmp = path.with_extension("json.tmp");
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write status snapshot");
    }
}

impl Ctx {
    /// Write the state of each of `nodes` that changed since it was last
    /// written, under its own key. A node the engine no longer knows has
    /// its key removed. What cannot be written is retried on the next tick.
    async fn persist(&mut self, nodes: BTreeSet<NodeName>) {
        for node in nodes {
            if let Err(e) = self.persist_node(&node).await {
                self.counters.inc(Counter::StateSaveFailed);
                tracing::error!(node = %node, error = %e, "node state not saved; retrying");
                self.unsaved.insert(node);
            }
        }
    }

    /// [`Ctx::persist`], failing if any node's state was not written: the
    /// changed nodes' states are saved together.
    async fn persist_strict(&mut self, nodes: BTreeSet<NodeName>) -> Result<()> {
        let mut items = Vec::new();
        let mut digests = Vec::new();
        for node in nodes {
            match self.node_state(&node)? {
                NodeWrite::Unchanged => {}
                NodeWrite::Remove => {
                    self.written.remove(&node);
                    if let Err(e) = self.state.remove(&node_key(&node)).await {
                        self.counters.inc(Counter::StateSaveFailed);
                        self.unsaved.insert(node);
                        return Err(e.into());
                    }
                }
                NodeWrite::Save(bytes, digest) => {
                    items.push((node_key(&node), bytes));
                    digests.push((node, digest));
                }
            }
        }
        if let Err(e) = self.state.save_many(items).await {
            self.counters.inc(Counter::StateSaveFailed);
            self.unsaved.extend(digests.into_iter().map(|(n, _)| n));
            return Err(e.into());
        }
        self.written.extend(digests);
        Ok(())
    }

    /// What to write for `node`, or that nothing changed.
    fn node_state(&self, node: &NodeName) -> Result<NodeWrite> {
        let snap = self.engine.node_snapshot(node);
        if snap.is_empty() {
            return Ok(if self.written.contains_key(node) {
                NodeWrite::Remove
            } else {
                NodeWrite::Unchanged
            });
        }
        let bytes = encode_snapshot(&snap).map_err(|e| {
            Error::Bus(skos_bus::Error::Io {
                path: node_key(node).into(),
                source: e,
            })
        })?;
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        };
        Ok(if self.written.get(node) == Some(&digest) {
            NodeWrite::Unchanged
        } else {
            NodeWrite::Save(bytes, digest)
        })
    }

    async fn persist_node(&mut self, node: &NodeName) -> Result<()> {
        self.persist_strict(BTreeSet::from([node.clone()])).await
    }

    /// Count and log a refused message; the audit entry to write for it.
    fn reject(&self, feed: &str, m: &Incoming, err: &DecodeError) -> Effect {
        let reason = match err {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep => "too_deep",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Invalid(_) => "invalid",
        };
        self.counters.inc(Counter::Rejected { feed, reason });
        tracing::warn!(subject = %m.subject, feed, error = %err, "rejected message");
        Effect::Audit(AuditEntry::new(
            skos_core::AuditEvent::Rejected,
            chrono::Utc::now(),
            None,
            "coordinator",
            format!("rejected {feed} on {}: {err}", m.subject),
            json!({"subject": m.subject, "feed": feed, "reason": reason, "error": err.to_string(), "bytes": m.payload.len()}),
        ))
    }

    fn subject_mismatch(m: &Incoming, node: &skos_core::NodeName) -> Option<DecodeError> {
        match m.subject_node() {
            Some(n) if &n == node => None,
            _ => Some(DecodeError::Invalid(format!(
                "payload node {node} does not match subject {}",
                m.subject
            ))),
        }
    }

    async fn heartbeat(&mut self, m: Incoming) {
        let hb =
            decode::<Heartbeat>(&m.payload, self.max_bytes).and_then(|h| h.validate().map(|()| h));
        let hb = match hb.and_then(|hb| match Self::subject_mismatch(&m, &hb.node) {
            None => Ok(hb),
            Some(e) => Err(e),
        }) {
            Ok(hb) => hb,
            Err(e) => {
                let entry = self.reject("heartbeat", &m, &e);
                return self.apply_or_queue(vec![entry]).await;
            }
        };
        let node = hb.node.clone();
        let effects = self.engine.on_heartbeat(hb, chrono::Utc::now());
        if !effects.is_empty() {
            let mut touched = effect_nodes(&effects);
            touched.insert(node);
            self.persist(touched).await;
        }
        self.apply_or_queue(effects).await;
    }

    /// Decode an alert, or say why it is refused.
    fn decode_alert(&self, m: &Incoming) -> Result<Alert, DecodeError> {
        let alert =
            decode::<Alert>(&m.payload, self.max_bytes).and_then(|a| a.validate().map(|()| a))?;
        match Self::subject_mismatch(m, &alert.node) {
            None => Ok(alert),
            Some(e) => Err(e),
        }
    }

    /// Handle a batch of alerts: decide each, then write the state of
    /// every node they touched, publish and audit their effects, and
    /// acknowledge them all. If any step fails nothing is acknowledged and
    /// the whole batch is delivered again.
    async fn alerts(&mut self, batch: Vec<Incoming>) {
        let now = chrono::Utc::now();
        let mut work = Work::default();
        let mut ids = Vec::new();
        for m in batch {
            match self.decode_alert(&m) {
                Ok(mut alert) => {
                    alert.ensure_id();
                    ids.push(alert.alert_id.clone());
                    work.touched.insert(alert.node.clone());
                    let effects = self.engine.on_alert(alert, now);
                    work.touched.extend(effect_nodes(&effects));
                    work.effects.extend(effects);
                }
                Err(e) => work.effects.push(self.reject("alert", &m, &e)),
            }
            work.acks.push(m);
        }
        if let Err(e) = self.finish(work, "alert").await {
            // Not acknowledged: JetStream delivers them again.
            for id in &ids {
                self.engine.forget_handled(id);
            }
            tracing::error!(alerts = ids.len(), error = %e, "alerts not fully handled; they will be delivered again");
        }
    }

    /// Handle a batch of results, as [`Ctx::alerts`].
    async fn results(&mut self, batch: Vec<Incoming>) {
        let now = chrono::Utc::now();
        let mut work = Work::default();
        for m in batch {
            let result = decode::<CommandResult>(&m.payload, self.max_bytes).and_then(|r| {
                match Self::subject_mismatch(&m, &r.node) {
                    None => Ok(r),
                    Some(e) => Err(e),
                }
            });
            match result {
                Ok(result) => {
                    work.touched.insert(result.node.clone());
                    let effects = self.engine.on_result(result, now);
                    work.touched.extend(effect_nodes(&effects));
                    work.effects.extend(effects);
                }
                Err(e) => work.effects.push(self.reject("result", &m, &e)),
            }
            work.acks.push(m);
        }
        if let Err(e) = self.finish(work, "result").await {
            tracing::error!(error = %e, "results not fully handled; they will be delivered again");
        }
    }

    /// State first (a restart then finds the pending commands and
    /// publishes those not yet audited), then effects, then the acks.
    /// `kind` names the failpoints between the steps.
    async fn finish(&mut self, work: Work, kind: &'static str) -> Result<()> {
        let points = match kind {
            "alert" => [
                "alert.decided",
                "alert.persisted",
                "alert.published",
                "alert.audited",
            ],
            _ => [
                "result.decided",
                "result.persisted",
                "result.published",
                "result.audited",
            ],
        };
        failpoint::hit(points[0]);
        self.persist_strict(work.touched).await?;
        failpoint::hit(points[1]);
        self.apply(work.effects, points[2]).await?;
        failpoint::hit(points[3]);
        futures::future::join_all(work.acks.into_iter().map(ack)).await;
        Ok(())
    }

    /// Carry out effects: publish commands and alerts (durably), then
    /// write the audit records. Stops at the first failure. `published`
    /// is the kill point between the two ([`failpoint::hit`]).
    async fn apply(&mut self, effects: Vec<Effect>, published: &'static str) -> Result<()> {
        let (publish, audits): (Vec<_>, Vec<_>) = effects
            .into_iter()
            .partition(|e| !matches!(e, Effect::Audit(_)));
        // Published back to back, in order; their acks awaited together.
        let sends = publish.iter().map(|e| self.publish(e));
        for done in futures::future::join_all(sends).await {
            done.map_err(Error::Bus)?;
        }
        failpoint::hit(published);
        let entries = audits
            .into_iter()
            .filter_map(|e| match e {
                Effect::Audit(entry) => Some(entry),
                _ => None,
            })
            .collect();
        match self.audit.append_many(entries).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if matches!(e, skos_bus::Error::Deposed { .. }) {
                    self.deposed = true;
                }
                Err(Error::Bus(e))
            }
        }
    }

    /// Publish one command or alert (an audit entry is not published).
    async fn publish(&self, e: &Effect) -> skos_bus::Result<()> {
        match e {
            Effect::Command(node, cmd) => {
                tracing::info!(node = %node, action = %cmd.action_type, action_id = %cmd.action_id, term = ?cmd.term, "sending command");
                self.bus
                    .send_command(node, cmd, self.signer.as_deref())
                    .await
            }
            Effect::Alert(a) => {
                tracing::info!(node = %a.node, kind = a.kind.as_str(), severity = a.severity.as_str(), "raising alert");
                self.bus.publish_alert(a).await
            }
            Effect::Audit(_) => Ok(()),
        }
    }

    /// [`Ctx::apply`], handing back on failure the effects not carried
    /// out, in order. A deposed coordinator marks itself so.
    async fn try_apply(&mut self, effects: Vec<Effect>) -> Result<(), (Error, Vec<Effect>)> {
        let (publish, audits): (Vec<_>, Vec<_>) = effects
            .into_iter()
            .partition(|e| !matches!(e, Effect::Audit(_)));
        let mut rest = publish.into_iter().chain(audits).collect::<VecDeque<_>>();
        while let Some(e) = rest.pop_front() {
            let done = match &e {
                Effect::Command(node, cmd) => {
                    tracing::info!(node = %node, action = %cmd.action_type, action_id = %cmd.action_id, term = ?cmd.term, "sending command");
                    self.bus
                        .send_command(node, cmd, self.signer.as_deref())
                        .await
                }
                Effect::Alert(a) => {
                    tracing::info!(node = %a.node, kind = a.kind.as_str(), severity = a.severity.as_str(), "raising alert");
                    self.bus.publish_alert(a).await
                }
                Effect::Audit(entry) => self.audit.append(entry.clone()).await.map(|_| ()),
            };
            if let Err(err) = done {
                if matches!(err, skos_bus::Error::Deposed { .. }) {
                    self.deposed = true;
                }
                rest.push_front(e);
                return Err((Error::Bus(err), rest.into()));
            }
        }
        Ok(())
    }

    /// Carry out effects no message waits on (timers, heartbeats): what
    /// cannot be published now waits in the outbox, behind anything
    /// already waiting, so order is kept.
    async fn apply_or_queue(&mut self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        if !self.outbox.is_empty() {
            self.counters
                .add(Counter::EffectsQueued, effects.len() as u64);
            self.outbox.extend(effects);
            return;
        }
        if let Err((e, rest)) = self.try_apply(effects).await {
            if self.deposed {
                // The new leader decides again from the same inputs.
                return;
            }
            tracing::error!(error = %e, queued = rest.len(), "effects not carried out; queued until the bus is back");
            self.counters.add(Counter::EffectsQueued, rest.len() as u64);
            self.outbox.extend(rest);
        }
    }

    /// Retry the outbox, oldest first.
    async fn flush_outbox(&mut self) {
        if self.outbox.is_empty() || self.deposed {
            return;
        }
        let waiting: Vec<Effect> = std::mem::take(&mut self.outbox).into();
        let n = waiting.len();
        match self.try_apply(waiting).await {
            Ok(()) => tracing::info!(effects = n, "queued effects carried out"),
            Err((e, rest)) => {
                tracing::debug!(error = %e, left = rest.len(), "queued effects still waiting");
                if !self.deposed {
                    self.outbox = rest.into();
                }
            }
        }
    }
}

/// A batch of durable messages on its way through [`Ctx::finish`].
#[derive(Default)]
struct Work {
    effects: Vec<Effect>,
    touched: BTreeSet<NodeName>,
    acks: Vec<Incoming>,
}

/// What one node's state needs.
enum NodeWrite {
    Unchanged,
    Remove,
    Save(Bytes, u64),
}

/// The nodes effects concern: whose state they may have changed.
fn effect_nodes(effects: &[Effect]) -> BTreeSet<NodeName> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Command(node, _) => Some(node.clone()),
            Effect::Alert(a) => Some(a.node.clone()),
            Effect::Audit(entry) => entry.node.clone(),
        })
        .collect()
}

async fn ack(m: Incoming) {
    let subject = m.subject.clone();
    if let Err(e) = m.ack().await {
        tracing::warn!(subject = %subject, error = %e, "ack failed; the message may be delivered again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_compressed_and_plain_ones_still_read() {
        let engine = Engine::new(Config::default(), Counters::default(), "test");
        let snap = engine.snapshot();
        let packed = encode_snapshot(&snap).unwrap();
        assert!(packed.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert!(decode_snapshot(&packed).is_ok());
        let plain = serde_json::to_vec(&snap).unwrap();
        assert!(decode_snapshot(&plain).is_ok());
        assert!(decode_snapshot(b"\x28\xb5\x2f\xfdgarbage").is_err());
    }
}
