//! The coordinator service: feeds the [`Engine`] from the bus and carries
//! out its effects.
//!
//! Order matters for crash safety: for each message, commands and raised
//! alerts are published first (durably, with their ids as JetStream message
//! ids, so a re-send after a crash is stored once), then the audit entries
//! are written, then the message is acknowledged. After a restart, alerts
//! already recorded in the audit trail are not handled again.

use skos_core::counters::Counter;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use skos_bus::trust::Signer;
use skos_bus::{AuditLog, Bus, Feed, Incoming, StateStore};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{decode, Alert, AuditEntry, CommandResult, DecodeError, Heartbeat};

use crate::engine::{Effect, Engine};
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
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            mode: "distributed".into(),
            status_file: None,
            tick: Duration::from_millis(250),
            replay_records: 20_000,
            signer: None,
        }
    }
}

/// The key the coordinator's snapshot is kept under.
const STATE_KEY: &str = "coordinator";

/// Snapshots are zstd-compressed JSON; a NATS message must stay under the
/// server's max_payload (1 MiB by default).
const SNAPSHOT_WARN_BYTES: usize = 768 * 1024;
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
    /// Something changed since the last snapshot.
    dirty: bool,
    signer: Option<Arc<Signer>>,
    engine: Engine,
    bus: Bus,
    audit: Arc<AuditLog>,
    state: StateStore,
    counters: Counters,
    max_bytes: usize,
}

/// Run until `shutdown` completes.
pub async fn run(
    cfg: Config,
    bus: Bus,
    audit: Arc<AuditLog>,
    state: StateStore,
    counters: Counters,
    opts: ServiceOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let max_bytes = cfg.nats.max_message_bytes;
    let mut engine = Engine::new(cfg, counters.clone(), &opts.mode);
    match state.load(STATE_KEY).await? {
        Some(bytes) => match decode_snapshot(&bytes) {
            Ok(snap) => {
                engine.restore(snap, chrono::Utc::now());
                tracing::info!("coordinator state restored");
            }
            Err(e) => {
                counters.inc(Counter::StateUnreadable);
                tracing::error!(error = %e, "saved coordinator state unreadable; starting afresh");
            }
        },
        None => tracing::info!("no saved coordinator state; starting afresh"),
    }
    let mut replayed = 0;
    for r in audit.read_recent(opts.replay_records).await? {
        if r["entry"]["event_type"] == "alert" {
            if let Some(id) = r["entry"]["data"]["alert_id"].as_str() {
                engine.mark_handled(id);
                replayed += 1;
            }
        }
    }
    tracing::info!(replayed, mode = %opts.mode, "coordinator started");
    if opts.signer.is_none() {
        tracing::warn!("commands are not signed: agents that require signatures will refuse them (set trust.signing_key_file)");
    }
    let mut ctx = Ctx {
        dirty: false,
        signer: opts.signer.clone(),
        engine,
        bus: bus.clone(),
        audit,
        state,
        counters,
        max_bytes,
    };
    let mut heartbeats = bus.subscribe(Feed::Heartbeats).await?;
    let mut alerts = bus.subscribe(Feed::Alerts).await?;
    let mut results = bus.subscribe(Feed::Results).await?;
    let mut status = bus.subscribe(Feed::StatusRequests).await?;
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_snapshot = std::time::Instant::now() - Duration::from_secs(10);
    let mut last_save = std::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(m) = heartbeats.next() => ctx.heartbeat(m).await,
            Some(m) = alerts.next() => ctx.alert(m).await,
            Some(m) = results.next() => ctx.result(m).await,
            Some(m) = status.next() => {
                let s = ctx.engine.status(chrono::Utc::now());
                let body = serde_json::to_vec(&s).unwrap_or_default();
                if let Err(e) = m.reply(Bytes::from(body)).await {
                    tracing::debug!(error = %e, "status reply failed");
                }
            }
            _ = tick.tick() => {
                let effects = ctx.engine.tick(chrono::Utc::now());
                ctx.dirty |= !effects.is_empty();
                if let Err(e) = ctx.apply(effects).await {
                    tracing::error!(error = %e, "carrying out periodic effects failed");
                }
                // Saved at most once a second, and only when something
                // changed: a snapshot per message would cap alert handling
                // at the speed of rewriting the whole state.
                if last_save.elapsed() >= Duration::from_secs(1) && (ctx.dirty || last_save.elapsed() >= Duration::from_secs(10)) {
                    last_save = std::time::Instant::now();
                    ctx.save().await;
                }
                if let Some(path) = &opts.status_file {
                    if last_snapshot.elapsed() >= Duration::from_secs(1) {
                        last_snapshot = std::time::Instant::now();
                        write_status(path, &ctx.engine);
                    }
                }
            }
        }
    }
    ctx.save().await;
    if let Some(path) = &opts.status_file {
        write_status(path, &ctx.engine);
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

fn write_status(path: &std::path::Path, engine: &Engine) {
    let s = engine.status(chrono::Utc::now());
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&s).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write status snapshot");
    }
}

impl Ctx {
    async fn save(&mut self) {
        let snap = self.engine.snapshot();
        let bytes = match encode_snapshot(&snap) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "cannot encode coordinator state"),
        };
        if bytes.len() > SNAPSHOT_WARN_BYTES {
            tracing::warn!(bytes = bytes.len(), "coordinator state snapshot is large");
        }
        match self.state.save(STATE_KEY, bytes).await {
            Ok(()) => self.dirty = false,
            Err(e) => {
                self.counters.inc(Counter::StateSaveFailed);
                tracing::error!(error = %e, "coordinator state not saved");
            }
        }
    }

    async fn reject(&mut self, feed: &str, m: &Incoming, err: &DecodeError) {
        let reason = match err {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep => "too_deep",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Invalid(_) => "invalid",
        };
        self.counters.inc(Counter::Rejected { feed, reason });
        tracing::warn!(subject = %m.subject, feed, error = %err, "rejected message");
        let entry = AuditEntry::new(
            skos_core::AuditEvent::Rejected,
            chrono::Utc::now(),
            None,
            "coordinator",
            format!("rejected {feed} on {}: {err}", m.subject),
            json!({"subject": m.subject, "feed": feed, "reason": reason, "error": err.to_string(), "bytes": m.payload.len()}),
        );
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "audit write failed");
        }
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
        let hb = match hb {
            Ok(hb) => match Self::subject_mismatch(&m, &hb.node) {
                None => hb,
                Some(e) => return self.reject("heartbeat", &m, &e).await,
            },
            Err(e) => return self.reject("heartbeat", &m, &e).await,
        };
        let effects = self.engine.on_heartbeat(hb, chrono::Utc::now());
        self.dirty |= !effects.is_empty();
        if let Err(e) = self.apply(effects).await {
            tracing::error!(error = %e, "carrying out heartbeat effects failed");
        }
    }

    async fn alert(&mut self, m: Incoming) {
        let alert =
            decode::<Alert>(&m.payload, self.max_bytes).and_then(|a| a.validate().map(|()| a));
        let mut alert = match alert {
            Ok(a) => match Self::subject_mismatch(&m, &a.node) {
                None => a,
                Some(e) => {
                    self.reject("alert", &m, &e).await;
                    return ack(m).await;
                }
            },
            Err(e) => {
                self.reject("alert", &m, &e).await;
                return ack(m).await;
            }
        };
        alert.ensure_id();
        let id = alert.alert_id.clone();
        let effects = self.engine.on_alert(alert, chrono::Utc::now());
        match self.apply(effects).await {
            Ok(()) => {
                self.dirty = true;
                ack(m).await
            }
            Err(e) => {
                // Not acknowledged: JetStream delivers it again.
                self.engine.forget_handled(&id);
                tracing::error!(alert_id = %id, error = %e, "alert not fully handled; it will be delivered again");
            }
        }
    }

    async fn result(&mut self, m: Incoming) {
        let result = match decode::<CommandResult>(&m.payload, self.max_bytes) {
            Ok(r) => match Self::subject_mismatch(&m, &r.node) {
                None => r,
                Some(e) => {
                    self.reject("result", &m, &e).await;
                    return ack(m).await;
                }
            },
            Err(e) => {
                self.reject("result", &m, &e).await;
                return ack(m).await;
            }
        };
        let effects = self.engine.on_result(result, chrono::Utc::now());
        match self.apply(effects).await {
            Ok(()) => {
                self.dirty = true;
                ack(m).await
            }
            Err(e) => {
                tracing::error!(error = %e, "result not fully handled; it will be delivered again")
            }
        }
    }

    async fn apply(&mut self, effects: Vec<Effect>) -> Result<()> {
        let (publish, audits): (Vec<_>, Vec<_>) = effects
            .into_iter()
            .partition(|e| !matches!(e, Effect::Audit(_)));
        for e in publish {
            match e {
                Effect::Command(node, cmd) => {
                    tracing::info!(node = %node, action = %cmd.action_type, action_id = %cmd.action_id, "sending command");
                    self.bus
                        .send_command(&node, &cmd, self.signer.as_deref())
                        .await?;
                }
                Effect::Alert(a) => {
                    tracing::info!(node = %a.node, kind = a.kind.as_str(), severity = a.severity.as_str(), "raising alert");
                    self.bus.publish_alert(&a).await?;
                }
                Effect::Audit(_) => {}
            }
        }
        for e in audits {
            if let Effect::Audit(entry) = e {
                self.audit.append(entry).await.map_err(Error::Bus)?;
            }
        }
        Ok(())
    }
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
