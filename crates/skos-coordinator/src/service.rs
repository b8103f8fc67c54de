//! The coordinator service: feeds the [`Engine`] from the bus and carries
//! out its effects.
//!
//! Order matters for crash safety: for each message, the state of the nodes
//! it changed is written first, together with the effects it decided (each
//! with its [`Seq`], its place among all effects decided) and a [`Stamp`]
//! (see [`Saved`]); then commands and raised alerts are published
//! (durably, with their ids as JetStream message ids, so a re-send after a
//! crash is stored once), then the audit entries are written, then the
//! message is acknowledged. Once every effect decided so far is carried out,
//! one marker (`carried`) records the last stamp they were kept under,
//! instead of every node's state being written again without its effects.
//! A coordinator stopped anywhere in between carries out, after a restart,
//! the kept effects stamped after the marker (audit records already in the
//! trail are not written twice). Effects that cannot be carried out (the bus is down) wait
//! in the outbox, in order, and are never decided again. After a restart,
//! alerts and results already recorded in the audit trail are not handled
//! again.

use skos_core::counters::{BatchPhase, Counter};
use skos_core::escape::ShowPath;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skos_bus::lease::{Lease, Renewal, Term};
use skos_bus::trust::{NodeMessage, SealOrder, Signer};
use skos_bus::{AuditLog, Bus, Feed, Incoming, StateStore};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{
    decode, Alert, AuditEntry, Command, CommandResult, DecodeError, Heartbeat,
};
use skos_core::recent::RecentIds;
use skos_core::NodeName;

use crate::consumers::Consumers;
use crate::engine::{Effect, Engine, EngineSnapshot};
use crate::failpoint;
use crate::gaps::{self, SequenceGaps};
use crate::status::Leadership;
use crate::{Error, Result};

mod dropped;
mod minutes;
mod pipeline;
mod refusals;
mod written;

use dropped::Drops;
use pipeline::Durable;
use refusals::Refusals;
use written::Written;

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
    /// The coordinators' keys. With a [`ServiceOptions::signer`]: every
    /// state record is sealed with it, and only records sealed by one of
    /// these keys are restored (a record anyone else wrote into
    /// `SKOS_STATE` is never trusted: its kept effects would be signed and
    /// sent); an alert that only a coordinator raises
    /// ([`Alert::is_coordinators_own`]) is refused unless one of them
    /// signed it. `None`: records are written and read plain, alerts taken
    /// as they come (embedded mode: its bus is in the process, its data dir
    /// private).
    pub state_trust: Option<Arc<skos_bus::trust::Verifier>>,
    /// Nodes' keys (`trust.node_keys`): a heartbeat, alert or result that
    /// speaks for a node with a key is taken only signed with it (and,
    /// with `trust.require_node_signatures`, one from a node without a key
    /// is refused); refusals are counted (`rejected.<feed>.untrusted`) and
    /// audited. `None`: nodes' messages are taken as they come.
    pub node_trust: Option<Arc<skos_bus::trust::NodeVerifier>>,
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
            state_trust: None,
            node_trust: None,
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

/// The key of the marker: the last [`Stamp`] whose effects (and every
/// earlier one's) were all carried out.
const CARRIED_KEY: &str = "carried";

/// The reason a result from another node than its command's is refused
/// for, in a refusals summary (the engine's `rejected` records say the
/// same).
const FOREIGN: &str = "foreign_node";

/// The key of what is held for the minute's summaries: refusals
/// ([`refusals`]) and drops ([`dropped`]), written before the messages
/// that added to it are acknowledged.
const HELD_KEY: &str = "held";

/// What is saved under [`HELD_KEY`]: the windows still counting, and the
/// summaries of those that ended, kept until they are appended.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HeldRecord {
    #[serde(default)]
    refusals: Refusals,
    #[serde(default)]
    drops: Drops,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    summaries: Vec<AuditEntry>,
}

/// What [`HeldRecord`] writes, borrowed from the context.
#[derive(Serialize)]
struct HeldRef<'a> {
    refusals: &'a Refusals,
    drops: &'a Drops,
    #[serde(skip_serializing_if = "<[AuditEntry]>::is_empty")]
    summaries: &'a [AuditEntry],
}

/// Which minute an audit entry sums up, if it is a `rejected` or
/// `dropped` summary: (event type, feed, start of the minute in ms since
/// the epoch). A refusals' summary never covers a drops' window of the
/// same feed and start, nor the other way round.
fn summary_key(entry: &Value) -> Option<(String, String, i64)> {
    let event = entry["event_type"].as_str()?;
    if event != skos_core::AuditEvent::Rejected.as_str()
        && event != skos_core::AuditEvent::Dropped.as_str()
    {
        return None;
    }
    let since = entry["data"]["since"]
        .as_str()
        .and_then(skos_core::timefmt::parse)?;
    Some((
        event.to_string(),
        entry["data"]["feed"].as_str()?.to_string(),
        since.timestamp_millis(),
    ))
}

/// The summaries in `records` (the trail's tail), by [`summary_key`].
fn summed_up_in(records: &[Value]) -> BTreeSet<(String, String, i64)> {
    records
        .iter()
        .filter_map(|r| summary_key(&r["entry"]))
        .collect()
}

/// When a node's record kept effects: the writer's term (0 without an
/// election) and a count of state writes in that term. Ordered: a later
/// write, or a later term, is greater.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Stamp(u64, u64);

/// Where an effect stands among all those decided, kept with it in its
/// node's record ([`Saved::seq`]) and through every failure and restart,
/// so that a restart carries out the effects kept by different writes in
/// the order they were decided, however often each node was written
/// since. Ordered: every `Placed` before every `Counted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
enum Seq {
    /// Kept by a version before seqs: the stamp of the write that kept it
    /// and its place in that write's outbox (0 where that version kept no
    /// places). Written again as it is when its node is, so it keeps its
    /// place among the others of those versions. `[[term, write], place]`.
    Placed(Stamp, u32),
    /// Queued by this version: the term it was queued in and a count of
    /// effects queued in that term, from 1 (without an election, the term
    /// of the highest count read at start, 0 at first). `[term, count]`.
    Counted(u64, u64),
}

/// An effect decided and not yet carried out, with its [`Seq`].
#[derive(Debug, Clone, PartialEq)]
struct Queued {
    seq: Seq,
    effect: Effect,
}

/// The `(term, count)` of the first effect a coordinator leading in `term`
/// (`None`: no election) queues, when `last` is the highest
/// [`Seq::Counted`] of every record restored at start (those whose
/// effects the `carried` marker covers, or whose audit records the trail
/// already holds, included; records not restored, unreadable or older
/// than the trail, are not counted): a new term counts from 1; the same
/// term (a restart without an election), or none, goes on after it.
fn first_seq(last: Option<(u64, u64)>, term: Option<u64>) -> (u64, u64) {
    let (t, n) = last.unwrap_or_default();
    match term {
        Some(term) if term > t => (term, 1),
        _ => (t, n.saturating_add(1)),
    }
}

/// The highest [`Seq::Counted`] among `seqs` and `last`.
fn last_counted<'a>(
    last: Option<(u64, u64)>,
    seqs: impl IntoIterator<Item = &'a Seq>,
) -> Option<(u64, u64)> {
    seqs.into_iter()
        .filter_map(|s| match *s {
            Seq::Counted(t, n) => Some((t, n)),
            Seq::Placed(..) => None,
        })
        .chain(last)
        .max()
}

/// The audit records of `sent` (queued records, in order) that an append
/// gave back as not known to be stored (`back`, a suffix of what was sent:
/// [`AppendFailed`](skos_bus::audit::AppendFailed)), each with the seq it
/// was queued under. Should more come back than were sent, the extra ones
/// take the first seq (they wait in front, where they came back), or,
/// with nothing sent, the first seq of all (`Placed` at stamp 0, place 0).
fn given_back(sent: &[Seq], back: Vec<AuditEntry>) -> Vec<Queued> {
    let skip = sent.len().saturating_sub(back.len());
    let first = sent
        .first()
        .copied()
        .unwrap_or(Seq::Placed(Stamp::default(), 0));
    let extra = back.len().saturating_sub(sent.len());
    let seqs = std::iter::repeat_n(first, extra).chain(sent[skip..].iter().copied());
    seqs.zip(back)
        .map(|(seq, entry)| Queued {
            seq,
            effect: Effect::Audit(entry),
        })
        .collect()
}

fn node_key(node: &NodeName) -> String {
    format!("{NODE_KEY_PREFIX}{node}")
}

/// Largest decompressed snapshot accepted.
const SNAPSHOT_MAX_BYTES: usize = 256 * 1024 * 1024;

/// States below this many bytes of JSON are kept as plain JSON in
/// `SKOS_STATE`. A node's record with effects waiting (the alert, the
/// command and their audit entries) is 2 – 4 KiB of JSON and about a
/// third of that compressed; every byte of it is copied, stored and
/// written by nats-server, whose work per alert is mostly in proportion
/// to the bytes it takes in (`bench/RESULTS.md`).
const COMPRESS_FROM: usize = 512;

/// The same in the data dir's `node_<name>.state.json` files (embedded
/// mode), kept readable as JSON but for large states.
const COMPRESS_FILES_FROM: usize = 4096;

/// The zstd level: one of the fast ones. A 4 KiB record takes 6 µs and
/// shrinks to 30 % (level 1: 10 µs, 23 %; level 3: 12 µs): the
/// coordinator's time is taken from the same cores as the bus's where
/// they share a machine, and the bus saves less than that per byte saved.
const ZSTD_LEVEL: i32 = -1;

/// Where node states are serialised and compressed, kept from one write to
/// the next (a zstd context costs more to set up than a record to compress).
struct Scratch {
    /// States of at least this many bytes of JSON are compressed.
    compress_from: usize,
    json: Vec<u8>,
    packed: Vec<u8>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::compressing_from(COMPRESS_FROM)
    }
}

impl Scratch {
    fn compressing_from(compress_from: usize) -> Self {
        Self {
            compress_from,
            json: Vec::new(),
            packed: Vec::new(),
            zstd: None,
        }
    }

    /// For the states kept in `store`.
    fn for_store(store: &StateStore) -> Self {
        match store {
            StateStore::File(_) => Self::compressing_from(COMPRESS_FILES_FROM),
            StateStore::JetStream(..) => Self::compressing_from(COMPRESS_FROM),
        }
    }

    /// Let the buffers go if one huge state grew them past what is worth
    /// keeping (the threshold and the zstd context stay).
    fn trim(&mut self) {
        if self.json.capacity().max(self.packed.capacity()) > 1 << 20 {
            self.json = Vec::new();
            self.packed = Vec::new();
        }
    }
}

/// JSON, zstd-compressed when it is large; [`decode_snapshot`] reads both.
#[cfg(test)]
fn encode_snapshot<T: Serialize>(snap: &T) -> std::io::Result<Bytes> {
    let mut s = Scratch::default();
    encode_snapshot_in(snap, &mut s).map(Bytes::copy_from_slice)
}

/// [`encode_snapshot`], serialised and compressed in `s` (cleared first, so
/// one scratch serves every node of a batch without growing new buffers
/// or a new zstd context each time): the encoded bytes, borrowed from `s`.
fn encode_snapshot_in<'a, T: Serialize>(snap: &T, s: &'a mut Scratch) -> std::io::Result<&'a [u8]> {
    s.json.clear();
    serde_json::to_writer(&mut s.json, snap).map_err(std::io::Error::other)?;
    if s.json.len() < s.compress_from {
        return Ok(&s.json);
    }
    let zstd = match &mut s.zstd {
        Some(z) => z,
        None => s.zstd.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
    };
    s.packed.clear();
    s.packed
        .reserve(zstd::zstd_safe::compress_bound(s.json.len()));
    zstd.compress_to_buffer(&s.json, &mut s.packed)?;
    Ok(&s.packed)
}

/// What is saved under a node's key: its part of the engine's state and
/// the effects concerning it that were decided with that state and are not
/// yet all carried out. Written in one message, so a coordinator stopped
/// after writing the state and before carrying out the effects finds both
/// after a restart: no breaker transition, verification, escalation or
/// circuit alert decided before the stop is lost. A record without effects
/// is a plain [`EngineSnapshot`], as written before.
#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    state: EngineSnapshot,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    effects: Vec<Kept>,
    /// When the effects were kept: carried out already if the `carried`
    /// marker is at or past it. Records written before stamps existed have
    /// none (their effects are carried out again, de-duplicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<Stamp>,
    /// Each effect's [`Seq`], in the order of `effects`: the records of
    /// every write, read back in key order, are carried out again in the
    /// order decided. Records of earlier versions have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seq: Vec<Seq>,
    /// Read only: each effect's place in the outbox of the write that kept
    /// it, as the version before [`Saved::seq`] wrote it; read as
    /// [`Seq::Placed`].
    #[serde(default, skip_serializing)]
    at: Vec<u32>,
}

impl Saved {
    /// Its node's state, and its kept effects, each with its [`Seq`].
    /// Records of earlier versions, without seqs, give their effects
    /// [`Seq::Placed`] by the write's stamp and their places (place 0
    /// without places: they keep the order they are read in). A record
    /// without as many seqs as effects is read as one without seqs.
    fn split(self) -> (EngineSnapshot, Vec<(Seq, Effect)>) {
        let n = self.effects.len();
        let seqs: Vec<Seq> = if self.seq.len() == n {
            self.seq
        } else {
            let stamp = self.batch.unwrap_or_default();
            if self.at.len() == n {
                self.at
                    .into_iter()
                    .map(|at| Seq::Placed(stamp, at))
                    .collect()
            } else {
                vec![Seq::Placed(stamp, 0); n]
            }
        };
        let kept = seqs
            .into_iter()
            .zip(self.effects)
            .map(|(seq, e)| (seq, Effect::from(e)))
            .collect();
        (self.state, kept)
    }
}

/// An [`Effect`] as kept in a [`Saved`] record.
#[derive(Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
enum Kept {
    Command { node: NodeName, command: Command },
    Alert { alert: Alert },
    Audit { entry: AuditEntry },
}

impl From<&Effect> for Kept {
    fn from(e: &Effect) -> Self {
        match e {
            Effect::Command(node, command) => Kept::Command {
                node: node.clone(),
                command: command.clone(),
            },
            Effect::Alert(alert) => Kept::Alert {
                alert: alert.clone(),
            },
            Effect::Audit(entry) => Kept::Audit {
                entry: entry.clone(),
            },
        }
    }
}

/// [`Saved`] as written: the effects borrowed from the outbox, not
/// copied. Serialises exactly as a [`Saved`] holding the same effects.
#[derive(Serialize)]
struct SavedRef<'a> {
    #[serde(flatten)]
    state: &'a EngineSnapshot,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    effects: Vec<KeptRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<Stamp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    seq: Vec<Seq>,
}

/// [`Kept`], borrowed: the same tags and fields.
#[derive(Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
enum KeptRef<'a> {
    Command {
        node: &'a NodeName,
        command: &'a Command,
    },
    Alert {
        alert: &'a Alert,
    },
    Audit {
        entry: &'a AuditEntry,
    },
}

impl<'a> From<&'a Effect> for KeptRef<'a> {
    fn from(e: &'a Effect) -> Self {
        match e {
            Effect::Command(node, command) => KeptRef::Command { node, command },
            Effect::Alert(alert) => KeptRef::Alert { alert },
            Effect::Audit(entry) => KeptRef::Audit { entry },
        }
    }
}

impl From<Kept> for Effect {
    fn from(k: Kept) -> Self {
        match k {
            Kept::Command { node, command } => Effect::Command(node, command),
            Kept::Alert { alert } => Effect::Alert(alert),
            Kept::Audit { entry } => Effect::Audit(entry),
        }
    }
}

/// Kept effects, each with its [`Seq`], in the order they were decided
/// (by seq), as queued effects. Effects with the same seq keep the order
/// given.
fn in_kept_order(mut kept: Vec<(Seq, Effect)>) -> Vec<Queued> {
    kept.sort_by_key(|(seq, _)| *seq);
    kept.into_iter()
        .map(|(seq, effect)| Queued { seq, effect })
        .collect()
}

/// `saved` as the version before seqs wrote it: each effect's place in its
/// write's outbox (`at`) instead of its seq.
#[cfg(test)]
fn as_earlier_version(saved: &Saved, at: &[u32]) -> Bytes {
    let mut record: Value = serde_json::to_value(saved).expect("JSON");
    if let Some(fields) = record.as_object_mut() {
        fields.remove("seq");
        fields.insert("at".into(), json!(at));
    }
    Bytes::from(serde_json::to_vec(&record).expect("encoded"))
}

/// Every node record in `state`, read back as a restart reads them: the
/// effects they keep, in the order they are carried out.
#[cfg(test)]
async fn kept_in(state: &StateStore) -> Vec<Queued> {
    let mut kept = Vec::new();
    for (_, bytes) in state.load_prefix(NODE_KEY_PREFIX).await.expect("read") {
        let saved: Saved = decode_snapshot(&bytes).expect("a record");
        kept.extend(saved.split().1);
    }
    in_kept_order(kept)
}

/// Results remembered as handled, so a redelivered one is not handled (and
/// audited) twice.
const RESULTS_WINDOW: usize = 100_000;

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

/// The record's bytes without its seal: with `trusted` keys, it must be
/// sealed by one of them ([`skos_bus::trust::Verifier::open_state`]);
/// without, a seal is taken off unchecked (a config that stopped sealing
/// still reads what it sealed) and a plain record read as it is. An empty
/// record (a removed key) is read as it is. With an ordered seal, where
/// the record stands among its key's writes too ([`SealOrder`]).
fn unseal<'a>(
    trusted: Option<&skos_bus::trust::Verifier>,
    key: &str,
    bytes: &'a [u8],
) -> Result<(&'a [u8], Option<SealOrder>), skos_bus::trust::TrustError> {
    if bytes.is_empty() {
        return Ok((bytes, None));
    }
    match trusted {
        Some(t) => t.open_state_ordered(key, bytes),
        None => Ok((skos_bus::trust::sealed_payload(bytes), None)),
    }
}

/// The audit events that concern a node's saved state: each is decided
/// with that node's state and written only after the record that keeps it
/// ("state first"), so the node's record, when sealed, was written no
/// earlier than the event's timestamp.
const STATE_EVENTS: [skos_core::AuditEvent; 10] = [
    skos_core::AuditEvent::Alert,
    skos_core::AuditEvent::Decision,
    skos_core::AuditEvent::Command,
    skos_core::AuditEvent::Result,
    skos_core::AuditEvent::Verification,
    skos_core::AuditEvent::Breaker,
    skos_core::AuditEvent::Escalation,
    skos_core::AuditEvent::Node,
    skos_core::AuditEvent::NoResult,
    skos_core::AuditEvent::Flapping,
];

/// Nodes whose saved state is older than the audit trail says it must be.
#[derive(Debug, Default, PartialEq, Eq)]
struct Rollbacks {
    /// A sealed record written before the node's last audited event.
    older: Vec<NodeName>,
    /// No record at all, an empty one, or one not sealed by a trusted key.
    missing: Vec<NodeName>,
    /// A record sealed without an order (an earlier version's seal).
    unordered: Vec<NodeName>,
}

impl Rollbacks {
    fn count(&self) -> usize {
        self.older.len() + self.missing.len() + self.unordered.len()
    }
}

/// Each node's last audited event of [`STATE_EVENTS`] in `records` (the
/// trail's tail, as read back), by the node's state key: the node, and
/// where the event stands as a [`SealOrder`] (the writer's term, 0 without
/// one, and the entry's timestamp in ms since the epoch). The record kept
/// with that event was sealed by the same coordinator (same term, same
/// clock) no earlier, or by a later one (a higher term): a sealed record
/// ordered below it is older than it.
fn last_state_events(records: &[Value]) -> HashMap<String, (NodeName, SealOrder)> {
    let mut out: HashMap<String, (NodeName, SealOrder)> = HashMap::new();
    for r in records {
        let entry = &r["entry"];
        let state_event = entry["event_type"]
            .as_str()
            .is_some_and(|e| STATE_EVENTS.iter().any(|s| s.as_str() == e));
        let node = entry["node"].as_str().and_then(|n| NodeName::parse(n).ok());
        let at = entry["timestamp"]
            .as_str()
            .and_then(skos_core::timefmt::parse);
        if let (true, Some(node), Some(at)) = (state_event, node, at) {
            let order = SealOrder {
                term: entry["term"].as_u64().unwrap_or(0),
                at_ms: at.timestamp_millis(),
            };
            let last = out.entry(node_key(&node)).or_insert((node, order));
            last.1 = last.1.max(order);
        }
    }
    out
}

/// Compare each node's last audited event (`last_event`, by state key:
/// the node and the event's order) with where its sealed record stands
/// (`orders`: key → order of a record that opened; `None` for one sealed
/// without an order). A node whose record is missing, unordered or older
/// than its last event is listed.
fn rollbacks(
    last_event: &HashMap<String, (NodeName, SealOrder)>,
    orders: &HashMap<String, Option<SealOrder>>,
) -> Rollbacks {
    let mut out = Rollbacks::default();
    for (key, (node, at)) in last_event {
        match orders.get(key) {
            Some(Some(o)) if o >= at => {}
            Some(Some(_)) => out.older.push(node.clone()),
            Some(None) => out.unordered.push(node.clone()),
            None => out.missing.push(node.clone()),
        }
    }
    out.older.sort();
    out.missing.sort();
    out.unordered.sort();
    out
}

/// How many nodes of each kind a rollback's audit record names.
const ROLLBACK_NAMES: usize = 100;

/// zstd-compressed (as written now) or plain JSON (as written before).
fn decode_snapshot<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let json = |source| SnapshotError::Json {
        key: STATE_KEY,
        source,
    };
    if bytes.starts_with(&ZSTD_MAGIC) {
        // One context per thread, kept: a start-up reads every node's
        // record, and making a context costs as much as the decompression.
        thread_local! {
            static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        let plain = CONTEXT
            .with_borrow_mut(|kept| {
                let context = match kept {
                    Some(c) => c,
                    None => kept.insert(zstd::bulk::Decompressor::new()?),
                };
                context.decompress(bytes, SNAPSHOT_MAX_BYTES)
            })
            .map_err(|source| SnapshotError::Decompress {
                key: STATE_KEY,
                source,
            })?;
        serde_json::from_slice(&plain).map_err(json)
    } else {
        serde_json::from_slice(bytes).map_err(json)
    }
}

struct Ctx {
    /// Agents' command consumers, asked for once per node.
    consumers: Consumers,
    /// How long the last [`Ctx::flush`] spent publishing and appending to
    /// the trail, for the batch phase counters.
    flushed: FlushTimes,
    /// A digest of each node's state as last written, so an unchanged
    /// node is not written again.
    written: HashMap<NodeName, u64>,
    /// Nodes whose state could not be written: retried every tick.
    unsaved: BTreeSet<NodeName>,
    /// [`StateStore::remade`] when every node's state was last written:
    /// when it moves, the state stream was made again (found gone) and
    /// every node's state is written again at the next tick.
    state_remade: u64,
    /// Where node states are serialised, kept from one to the next.
    scratch: Scratch,
    signer: Option<Arc<Signer>>,
    engine: Engine,
    bus: Bus,
    audit: Arc<AuditLog>,
    state: StateStore,
    counters: Counters,
    max_bytes: usize,
    /// Effects decided and not yet carried out, in order: each is kept in
    /// the saved state of its node until it is. What cannot be carried out
    /// (the bus is down) waits here and is retried on every tick, never
    /// dropped and never decided again.
    outbox: VecDeque<Queued>,
    /// The `(term, count)` of the next effect queued ([`Seq::Counted`]).
    next_seq: (u64, u64),
    /// The stamp of the last state write that kept effects.
    stamp: Stamp,
    /// Every effect kept up to this stamp is carried out (the outbox was
    /// empty after it): written as the `carried` marker on the next tick.
    carried: Stamp,
    /// The marker as last written.
    carried_written: Stamp,
    /// Carrying out the outbox failed and has not succeeded since.
    stalled: bool,
    /// An audit append failed: some of the entries may be in the trail
    /// all the same (written, its answer lost), so the next try skips
    /// those the trail's tail holds.
    audits_uncertain: bool,
    /// Results handled: the message ids they were stored under
    /// ([`skos_bus::result_message_id`]).
    results_seen: RecentIds,
    /// Refused messages of this leadership, audited one by one up to a
    /// limit a minute per feed, then summed up.
    refusals: Refusals,
    /// Messages the bus dropped unread, audited one gap at a time up to a
    /// limit a minute per feed, then summed up.
    drops: Drops,
    /// Something was held since [`HELD_KEY`] was last planned: written
    /// with the next state write, before its batch is acknowledged.
    held_dirty: bool,
    /// Summaries queued and not yet known appended, kept in [`HELD_KEY`]
    /// meanwhile.
    held_summaries: Vec<AuditEntry>,
    /// Summaries were queued: once the outbox is carried out,
    /// [`HELD_KEY`] is written again without them.
    held_after_flush: bool,
    /// This coordinator was deposed while carrying out effects.
    deposed: bool,
    /// Agents refused this leader's commands as of a stale term: the
    /// highest term one said it has seen ([`fenced_out`]). The leader
    /// steps down and takes the lease again in a term above it.
    fenced_by: Option<u64>,
    /// With an election: until when the last renewal lets this coordinator
    /// act. Checked again right before every state write and publish, so a
    /// leader paused in the middle of a batch writes nothing once resumed
    /// past it.
    valid_until: Option<std::time::Instant>,
    /// Since when the audit trail cannot be written, and whether the alert
    /// that says so is out.
    audit_down: Option<AuditDown>,
    /// This coordinator's node: where its own `audit` alert is raised.
    node: NodeName,
    /// Seals every state record written ([`ServiceOptions::state_trust`]).
    seal: Option<Arc<Signer>>,
    /// The term each sealed record carries (0 without an election).
    seal_term: u64,
    /// The time the last sealed write carried (ms since the epoch).
    sealed_at: i64,
    /// The coordinators' keys ([`ServiceOptions::state_trust`]): an alert
    /// that is a coordinator's own must be signed by one of them.
    trusted: Option<Arc<skos_bus::trust::Verifier>>,
    /// Nodes' keys ([`ServiceOptions::node_trust`]).
    node_trust: Option<Arc<skos_bus::trust::NodeVerifier>>,
    /// Alerts the bus dropped before they were read.
    alert_gaps: SequenceGaps,
    /// Results the bus dropped before they were read.
    result_gaps: SequenceGaps,
}

/// The audit trail cannot be written.
struct AuditDown {
    since: chrono::DateTime<chrono::Utc>,
    /// The `audit` alert was published.
    raised: bool,
}

/// How the ids of the coordinator's own alerts begin (`Engine::own_alert`,
/// `heartbeat_alert_id`, the audit alert).
const COORDINATOR_ID_PREFIX: &str = "coord-";

/// What the id of an escalation the coordinator raises holds (`<the
/// alert's id>-esc-<severity>`): predictable from the alert, so only a
/// trusted coordinator may use it.
const ESCALATION_ID_MARK: &str = "-esc-";

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
            Some(l) => {
                // Terms never go back, even on a lease bucket made again:
                // the trail's last term is one seen.
                if let Some(t) = last_trail_term(&audit).await {
                    l.observe(t);
                }
                match standby(l, &counters, &mut shutdown).await {
                    Some(t) => Some(t),
                    None => break,
                }
            }
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
                    // Still holding the key by the server's count (only
                    // this process's clock said stale): give it up, so a
                    // standby takes over at once rather than after it ages
                    // out. Held by another, the release changes nothing.
                    l.release().await;
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
        l.release().await;
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// The most a term an agent says it has seen may be above this leader's
/// and be believed: a claim far beyond (a node lying, unsigned) would let
/// it push the fleet's terms to where none can follow. The same bound as
/// the lease's on terms it reads.
const FENCE_JUMP_MAX: u64 = skos_bus::lease::TERM_JUMP_MAX;

/// The term `result` says its agent has seen, when it refused a command of
/// this leader's `term` as stale (`details.reason` `stale_term`) and that
/// term is above it (by at most [`FENCE_JUMP_MAX`]: a larger claim is
/// logged and not believed).
fn fenced_out(result: &CommandResult, term: Option<u64>) -> Option<u64> {
    let mine = term?;
    if !crate::engine::is_stale_term(result) {
        return None;
    }
    let seen = result
        .details
        .get(skos_core::protocol::DETAIL_HIGHEST_TERM)?
        .as_u64()?;
    if seen <= mine {
        return None;
    }
    if seen - mine > FENCE_JUMP_MAX {
        tracing::warn!(
            node = %result.node,
            term = mine,
            claimed = seen,
            "an agent claims a term far above this leader's: not believed"
        );
        return None;
    }
    Some(seen)
}

/// The term of the audit trail's last record (trusted records only), if
/// the trail can be read and has one.
async fn last_trail_term(audit: &AuditLog) -> Option<u64> {
    match audit.read_recent(1).await {
        Ok(records) => records.last().and_then(|r| r["entry"]["term"].as_u64()),
        Err(e) => {
            tracing::debug!(error = %e, "audit trail's last term not read");
            None
        }
    }
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
        // A stop is not held up by a bus that does not answer.
        let tried = tokio::select! {
            _ = &mut *shutdown => return None,
            tried = lease.try_acquire(chrono::Utc::now()) => tried,
        };
        match tried {
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
    // Where the stream ages records out (its max_age, the retention), the
    // leader anchors the trail at the start of its term and then at least
    // every `audit.checkpoint_minutes`: `skos audit verify` tells records
    // aged out from records purged by them (a file trail records its own
    // expiry: no checkpoint is written there).
    let retention = cfg
        .audit_retention_days()
        .map(|d| Duration::from_secs(d.saturating_mul(86_400)));
    let checkpoint_every = Duration::from_secs(cfg.audit.checkpoint_minutes.saturating_mul(60));
    let mut last_checkpoint = std::time::Instant::now();
    if let Some(max_age) = retention {
        match audit.checkpoint(max_age).await {
            Ok(_) => {}
            Err(skos_bus::Error::Deposed { .. }) => return Ok(Led::Deposed),
            Err(e) => tracing::warn!(error = %e, "audit checkpoint not written; tried again later"),
        }
    }
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
    // A record not sealed by a trusted key is not restored (see
    // `ServiceOptions::state_trust`).
    let trusted = opts.state_trust.as_deref();
    // Where each node's record that opened stands (its seal's order).
    let mut orders: HashMap<String, Option<SealOrder>> = HashMap::new();
    let open = |key: &str,
                bytes: Bytes,
                orders: &mut HashMap<String, Option<SealOrder>>|
     -> Option<Bytes> {
        match unseal(trusted, key, &bytes) {
            Ok((b, order)) => {
                orders.insert(key.to_string(), order);
                Some(bytes.slice_ref(b))
            }
            Err(e) => {
                counters.inc(Counter::StateUnreadable);
                tracing::error!(key, error = %e, "saved state not sealed by a trusted coordinator key: not restored");
                None
            }
        }
    };
    let legacy = match state
        .load(STATE_KEY)
        .await?
        .and_then(|b| open(STATE_KEY, b, &mut orders))
    {
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
    // Effects kept at or before the marker were carried out.
    let carried: Stamp = match state
        .load(CARRIED_KEY)
        .await?
        .and_then(|b| open(CARRIED_KEY, b, &mut orders))
    {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            counters.inc(Counter::StateUnreadable);
            tracing::error!(key = CARRIED_KEY, error = %e, "marker of carried-out effects unreadable; every kept effect is carried out again");
            Stamp::default()
        }),
        None => Stamp::default(),
    };
    let mut stamp = carried;
    // The trail's tail, read before the nodes' records: each node's last
    // audited event that its saved state must postdate.
    let recent = audit.read_recent(opts.replay_records).await?;
    let last_event = last_state_events(&recent);
    // What the last leader held for its minute's summaries, less what the
    // trail shows it summed up already.
    let held: HeldRecord = match state
        .load(HELD_KEY)
        .await?
        .and_then(|b| open(HELD_KEY, b, &mut orders))
    {
        Some(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            counters.inc(Counter::StateUnreadable);
            tracing::error!(key = HELD_KEY, error = %e, "refusals and drops held for the minute's summary unreadable: not summed up");
            HeldRecord::default()
        }),
        _ => HeldRecord::default(),
    };
    let HeldRecord {
        mut refusals,
        mut drops,
        summaries,
    } = held;
    let summed = summed_up_in(&recent);
    refusals.covered(skos_core::AuditEvent::Rejected, &summed);
    drops.covered(skos_core::AuditEvent::Dropped, &summed);
    // Summaries queued before the stop and not in the trail: queued again.
    let held_summaries: Vec<AuditEntry> = summaries
        .into_iter()
        .filter(|e| {
            serde_json::to_value(e)
                .ok()
                .and_then(|v| summary_key(&v))
                .is_some_and(|key| !summed.contains(&key))
        })
        .collect();
    let parts = state.load_prefix(NODE_KEY_PREFIX).await?;
    let nodes = parts.len();
    // Each record's kept effects, with their seqs; and the last count of
    // every record restored (those whose effects the marker covers too),
    // which new effects follow.
    let mut kept_placed: Vec<(Seq, Effect)> = Vec::new();
    let mut last_seq = None;
    for (key, bytes) in parts {
        let Some(bytes) = open(&key, bytes, &mut orders) else {
            continue;
        };
        if bytes.is_empty() {
            // A removal, sealed with its order.
            continue;
        }
        // Sealed before the node's last audited event: an older record
        // written back on the bus. Not restored (reported below).
        if let (Some(Some(order)), Some(at)) = (orders.get(&key), last_event.get(&key)) {
            if trusted.is_some() && *order < at.1 {
                tracing::error!(key = %key, sealed = ?order, last_event = ?at.1, "saved node state is older than its last audited event (written back on the bus): not restored; that node starts afresh");
                continue;
            }
        }
        match decode_snapshot::<Saved>(&bytes) {
            Ok(saved) => {
                let batch = saved.batch;
                let (state, kept) = saved.split();
                last_seq = last_counted(last_seq, kept.iter().map(|(seq, _)| seq));
                engine.restore(state, now);
                if let Some(b) = batch {
                    stamp = stamp.max(b);
                }
                if batch.is_none_or(|b| b > carried) {
                    kept_placed.extend(kept);
                }
            }
            Err(e) => {
                counters.inc(Counter::StateUnreadable);
                tracing::error!(key = %key, error = %e, "saved node state unreadable; that node starts afresh");
            }
        }
    }
    // Effects the marker does not cover: carried out again below, but
    // for the audit records already in the trail.
    let mut kept = in_kept_order(kept_placed);
    tracing::info!(
        nodes,
        legacy,
        ?carried,
        kept_effects = kept.len(),
        "coordinator state restored"
    );
    let mut replayed = 0;
    let mut commanded = HashSet::new();
    let mut results_seen = RecentIds::new(RESULTS_WINDOW);
    // What an audit entry says was handled: its alert, command or result.
    let mut remember = |entry: &Value, engine: &mut Engine| {
        let event = &entry["event_type"];
        if event == skos_core::AuditEvent::Alert.as_str() {
            if let Some(id) = entry["data"]["alert_id"].as_str() {
                engine.mark_handled(id);
                replayed += 1;
            }
        } else if event == skos_core::AuditEvent::Command.as_str() {
            if let Some(id) = entry["data"]["command"]["action_id"].as_str() {
                commanded.insert(id.to_string());
            }
        } else if event == skos_core::AuditEvent::Result.as_str() {
            if let Ok(r) = serde_json::from_value::<CommandResult>(entry["data"]["result"].clone())
            {
                results_seen.insert(&skos_bus::result_message_id(&r));
            }
        }
    };
    let mut audited = Written::default();
    for r in &recent {
        let entry = &r["entry"];
        remember(entry, &mut engine);
        if !kept.is_empty() {
            audited.insert(entry);
        }
    }
    drop(recent);
    // Sealed records say when they were written: one older than its
    // node's last audited event was written back (or is gone) on the bus.
    if trusted.is_some() {
        let found = rollbacks(&last_event, &orders);
        if found.count() > 0 {
            counters.add(Counter::StateRolledBack, found.count() as u64);
            let names = |v: &[NodeName]| -> Vec<String> {
                v.iter()
                    .take(ROLLBACK_NAMES)
                    .map(|n| n.to_string())
                    .collect()
            };
            tracing::error!(
                older = ?names(&found.older),
                missing = ?names(&found.missing),
                unordered = ?names(&found.unordered),
                "saved state of {} node(s) is older than the audit trail says: written back, emptied or replaced on the bus (or written by an earlier version); records written back are not restored, records sealed without an order are",
                found.count()
            );
            let entry = AuditEntry::new(
                skos_core::AuditEvent::StateRollback,
                chrono::Utc::now(),
                None,
                "coordinator",
                format!(
                    "saved state older than the audit trail: {} node(s) written back, {} missing, {} sealed without an order",
                    found.older.len(),
                    found.missing.len(),
                    found.unordered.len()
                ),
                json!({
                    "older": names(&found.older),
                    "missing": names(&found.missing),
                    "unordered": names(&found.unordered),
                    "nodes": found.count(),
                }),
            );
            match audit.append(entry).await {
                Ok(_) => {}
                Err(skos_bus::Error::Deposed { .. }) => return Ok(Led::Deposed),
                Err(e) => tracing::error!(error = %e, "state rollback not audited"),
            }
        }
    }
    // Effects kept with the state and not all carried out before the last
    // stop: carried out now, but for the audit records already in the
    // trail (commands and alerts are published again; their ids make that
    // safe).
    kept.retain(|q| match &q.effect {
        Effect::Audit(entry) => !audited.contains(entry),
        _ => true,
    });
    for q in &kept {
        if let Effect::Audit(entry) = &q.effect {
            if let Ok(v) = serde_json::to_value(entry) {
                remember(&v, &mut engine);
            }
        }
    }
    let unsent = engine.unsent(&commanded);
    tracing::info!(replayed, mode = %opts.mode, term = ?term.as_ref().map(|t| t.term), "coordinator started");
    if opts.signer.is_none() {
        tracing::warn!("commands are not signed: agents that require signatures will refuse them (set trust.signing_key_file)");
    }
    // Reading the state and the trail's tail may take a while: renew
    // before leading, so the lease is counted from now, not from the win.
    if let Some(l) = lease.as_mut() {
        match l.renew().await {
            Ok(Renewal::Renewed) => {}
            Ok(Renewal::Lost) => return Ok(Led::Deposed),
            Err(e) => {
                tracing::warn!(error = %e, "leader lease not renewed after start-up; retrying")
            }
        }
    }
    // Sealed writes go on from the last one of the same term (a restart
    // without an election) or, where the trail is later, from the trail.
    let seal_term = term.as_ref().map_or(0, |t| t.term);
    let sealed_at = orders
        .values()
        .flatten()
        .chain(last_event.values().map(|(_, o)| o))
        .filter(|o| o.term == seal_term)
        .map(|o| o.at_ms)
        .max()
        .unwrap_or(0);
    let mut consumers = Consumers::spawn(bus.clone());
    for node in engine.known_nodes() {
        consumers.want(&node);
    }
    let mut ctx = Ctx {
        consumers,
        written: HashMap::new(),
        unsaved: BTreeSet::new(),
        state_remade: state.remade(),
        scratch: Scratch::for_store(state),
        signer: opts.signer.clone(),
        engine,
        bus: bus.clone(),
        audit: audit.clone(),
        state: state.clone(),
        counters: counters.clone(),
        max_bytes,
        outbox: VecDeque::new(),
        // After the last count of every record restored (the effects
        // kept come back with theirs).
        next_seq: first_seq(last_seq, term.as_ref().map(|t| t.term)),
        // A new term counts afresh; the same term (or none) goes on
        // after what was written.
        stamp: match term.as_ref().map(|t| t.term) {
            Some(t) if t > stamp.0 => Stamp(t, 0),
            _ => stamp,
        },
        carried,
        carried_written: carried,
        stalled: false,
        audits_uncertain: false,
        results_seen,
        held_dirty: !refusals.is_empty() || !drops.is_empty() || !held_summaries.is_empty(),
        held_after_flush: !held_summaries.is_empty(),
        held_summaries: held_summaries.clone(),
        refusals,
        drops,
        deposed: false,
        fenced_by: None,
        valid_until: lease.as_ref().and_then(|l| l.valid_until()),
        audit_down: None,
        flushed: FlushTimes::default(),
        node: cfg.node.name.clone(),
        seal: opts.state_trust.as_ref().and(opts.signer.clone()),
        seal_term,
        sealed_at,
        trusted: opts.state_trust.clone(),
        node_trust: opts.node_trust.clone(),
        alert_gaps: gaps_from(bus, &Feed::Alerts).await,
        result_gaps: gaps_from(bus, &Feed::Results).await,
    };
    if !kept.is_empty() {
        tracing::warn!(
            effects = kept.len(),
            "carrying out effects decided but not carried out before the last stop"
        );
        ctx.requeue(kept);
    }
    if !held_summaries.is_empty() {
        tracing::warn!(
            summaries = held_summaries.len(),
            "appending summaries of refused and dropped messages queued before the last stop"
        );
        ctx.queue(held_summaries.into_iter().map(Effect::Audit).collect());
    }
    if !unsent.is_empty() {
        tracing::warn!(
            commands = unsent.len() / 2,
            "publishing commands kept but not sent before the last stop"
        );
        ctx.queue(unsent);
    }
    if legacy {
        // Written per node from now on, each record with the effects kept
        // for its node (queued above): none is dropped from the saved
        // state before it is carried out.
        let all = ctx.engine.known_nodes();
        ctx.persist(all).await;
        if ctx.unsaved.is_empty() {
            if let Err(e) = ctx.state.remove(STATE_KEY).await {
                tracing::warn!(key = STATE_KEY, error = %e, "old whole-engine state not removed");
            }
        }
    }
    ctx.flush(None).await;
    // One node's flood queues at most this many of its messages ahead of
    // another node's alert; what the bus drops is counted below.
    let per_node = cfg.coordinator.max_queued_per_node;
    if let Err(e) = bus.limit_per_node(per_node).await {
        tracing::warn!(error = %e, per_node, "messages kept per node not set on the alert and result streams: one node's flood may delay the others");
    }
    // Heartbeats are read and decoded on their own task, and reach the
    // engine in batches of what is ready (one queue slot a batch); the
    // queue between applies back pressure (nothing is dropped on this side
    // of the subscription).
    let (hb_tx, hb_rx) = tokio::sync::mpsc::channel(HEARTBEAT_QUEUE / BATCH);
    let decoder = tokio::spawn(decode_heartbeats(
        bus.subscribe(Feed::Heartbeats).await?,
        hb_tx,
        max_bytes,
        opts.node_trust.clone(),
    ));
    let _decoder = AbortOnDrop(decoder);
    let mut heartbeats = futures::stream::poll_fn({
        let mut rx = hb_rx;
        move |cx| rx.poll_recv(cx)
    });
    // Durable messages are handled in batches of what is ready: the
    // batch's state is written, its effects published and audited, then
    // every message in it acknowledged.
    let mut alerts = bus.subscribe(Feed::Alerts).await?.ready_chunks(BATCH);
    let mut results = bus.subscribe(Feed::Results).await?.ready_chunks(BATCH);
    let mut status = bus.subscribe(Feed::StatusRequests).await?;
    let mut control = bus.subscribe(Feed::ControlRequests).await?;
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
    let mut bus_away_said = false;
    let led = loop {
        // The select below picks among ready branches at random: a stop
        // is taken first, not after a tick, nor as a deposition when the
        // lease ran out while the bus was away.
        if futures::FutureExt::now_or_never(shutdown.as_mut()).is_some() {
            break Led::Shutdown;
        }
        if ctx.deposed || !valid(&lease) {
            break Led::Deposed;
        }
        if let Some(term) = ctx.fenced_by.take() {
            // The agents saw a higher term than this leadership's (the
            // lease bucket was made again, and this process knew no term
            // as high): lead again in a term above it.
            tracing::error!(
                term = ctx.engine.term(),
                agents_saw = term,
                "agents refuse this leader's commands as of a stale term: stepping down to lead again in a higher term"
            );
            if let Some(l) = lease.as_mut() {
                l.observe(term);
            }
            break Led::Deposed;
        }
        tokio::select! {
            _ = &mut *shutdown => break Led::Shutdown,
            _ = renew.tick() => {
                if let Some(l) = lease.as_mut() {
                    // A stop is not held up by a renewal the bus does not
                    // answer (up to two requests' time-outs).
                    let renewed = tokio::select! {
                        _ = &mut *shutdown => break Led::Shutdown,
                        renewed = l.renew() => renewed,
                    };
                    match renewed {
                        Ok(Renewal::Renewed) => ctx.valid_until = l.valid_until(),
                        Ok(Renewal::Lost) => break Led::Deposed,
                        Err(e) => tracing::warn!(error = %e, "leader lease not renewed; retrying"),
                    }
                }
            }
            Some(batch) = heartbeats.next() => ctx.heartbeats(batch).await,
            Some(batch) = alerts.next() => ctx.batches(Durable::Alert, batch, &mut alerts).await,
            Some(batch) = results.next() => ctx.batches(Durable::Result, batch, &mut results).await,
            Some(m) = status.next() => {
                let body = status_reply(&ctx.engine, &m.payload);
                if let Err(e) = m.reply(Bytes::from(body)).await {
                    tracing::debug!(error = %e, "status reply failed");
                }
            }
            Some(m) = control.next() => ctx.control(m).await,
            _ = tick.tick() => {
                // While the client is not connected, what asks the bus
                // waits for the next tick: each ask would only wait for its
                // time-out (and hold up a stop meanwhile).
                let connected = bus.connected();
                if let Some(max_age) = retention.filter(|_| connected && last_checkpoint.elapsed() >= checkpoint_every) {
                    last_checkpoint = std::time::Instant::now();
                    match audit.checkpoint(max_age).await {
                        Ok(_) => {}
                        Err(skos_bus::Error::Deposed { .. }) => break Led::Deposed,
                        Err(e) => tracing::warn!(error = %e, "audit checkpoint not written; tried again later"),
                    }
                }
                let now = chrono::Utc::now();
                let mut effects = ctx.engine.tick(now);
                if connected {
                    effects.extend(ctx.settled(now).await);
                }
                effects.extend(ctx.summed_up(now, false));
                let mut touched = effect_nodes(&effects);
                if connected {
                    ctx.state.check_made().await;
                    if let Err(e) = ctx.bus.check_streams().await {
                        tracing::warn!(error = %e, "SKOS streams not looked at; looked at again later");
                    }
                }
                ctx.rewrite_if_state_remade();
                touched.extend(std::mem::take(&mut ctx.unsaved));
                let decided = !effects.is_empty();
                ctx.queue(effects);
                if connected {
                    bus_away_said = false;
                    ctx.persist(touched).await;
                    if decided {
                        failpoint::hit("tick.persisted");
                    }
                    ctx.flush(None).await;
                    ctx.write_carried().await;
                } else {
                    // The nodes wait to be saved, and their effects to be
                    // carried out, at the first tick the bus is back.
                    ctx.unsaved.extend(touched);
                    if !ctx.unsaved.is_empty() && !std::mem::replace(&mut bus_away_said, true) {
                        tracing::error!(
                            nodes = ctx.unsaved.len(),
                            effects = ctx.outbox.len(),
                            "node state not saved: the bus is away; saved and carried out once it is back"
                        );
                    }
                }
                if let Some(path) = &opts.status_file {
                    if last_snapshot.elapsed() >= Duration::from_secs(1) {
                        last_snapshot = std::time::Instant::now();
                        write_status(path, &ctx.engine, None);
                    }
                }
            }
        }
    };
    if matches!(led, Led::Shutdown) {
        ctx.stop_leading(bus.connected()).await;
        if let Some(path) = &opts.status_file {
            write_status(path, &ctx.engine, Some(chrono::Utc::now()));
        }
    }
    if matches!(led, Led::Deposed) {
        ctx.say_left("deposed");
    }
    Ok(led)
}

/// Where a durable feed's consumer stood at start, so what the bus
/// dropped while no coordinator read is counted too (what was in flight is
/// settled after twice the ack wait); unknown when it cannot be asked.
async fn gaps_from(bus: &Bus, feed: &Feed) -> SequenceGaps {
    let position = bus
        .consumer_position(feed)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "consumer's position unknown; messages dropped before now are not counted"))
        .ok()
        .flatten()
        .map(|(acked, delivered)| gaps::Position { acked, delivered });
    let settle_at = std::time::Instant::now() + 2 * skos_bus::nats::ACK_WAIT;
    SequenceGaps::after(position, settle_at)
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
/// `stopped_at`: the last one, written on a clean stop.
fn write_status(
    path: &std::path::Path,
    engine: &Engine,
    stopped_at: Option<skos_core::timefmt::Timestamp>,
) {
    use crate::status::{StatusQuery, MAX_PER_PAGE};
    let query = StatusQuery {
        per_page: MAX_PER_PAGE,
        ..StatusQuery::default()
    };
    let mut status = engine.status_page(chrono::Utc::now(), &query);
    status.stopped_at = stopped_at;
    let body = status.to_reply();
    // Through the private data dir's handle: a temp file created
    // exclusively (mode 0600) and renamed over the snapshot (not fsynced:
    // it is rewritten every second).
    if let Err(e) = skos_fs::write_snapshot(path, &body) {
        tracing::warn!(path = %path.escaped(), error = %e, "cannot write status snapshot");
    }
}

impl Ctx {
    /// Write the state of each of `nodes` that changed since it was last
    /// written, under its own key. A node the engine no longer knows has
    /// its key removed. What cannot be written is retried on the next tick.
    async fn persist(&mut self, nodes: BTreeSet<NodeName>) {
        if let Err(e) = self.persist_strict(nodes).await {
            tracing::error!(nodes = self.unsaved.len(), error = %e, "node state not saved; retrying");
        }
    }

    /// Whether this coordinator may still write and publish: false once
    /// its last renewal no longer covers now (it then counts as deposed).
    fn still_leader(&mut self) -> bool {
        if self
            .valid_until
            .is_some_and(|t| std::time::Instant::now() >= t)
        {
            self.deposed = true;
        }
        !self.deposed
    }

    /// A clean stop of this leadership. With the bus connected: what is
    /// held is summed up, the nodes still waiting to be saved (a tick
    /// skipped while the bus was away, a write that failed) are saved,
    /// and what waits is tried once more. Without it, each step would wait
    /// for its time-out and fail, so none is tried. Either way, what is
    /// left is said: effects of nodes whose state was saved wait there for
    /// the next leader; effects decided while no state could be written
    /// go with this process.
    async fn stop_leading(&mut self, bus_connected: bool) {
        if !bus_connected {
            let (unsaved, held_unsaved) = self.not_saved();
            if unsaved == 0 && !held_unsaved {
                tracing::warn!(
                    effects = self.outbox.len(),
                    "stopping with the bus away: what waits stays in the saved state for the next leader"
                );
            } else {
                tracing::error!(
                    effects = self.outbox.len(),
                    unsaved,
                    unsaved_nodes = self.unsaved.len(),
                    held_unsaved,
                    "stopping with the bus away: effects decided while no state could be written are lost with this process, and so are the refusals held since the last write when held_unsaved (the rest stay in the saved state for the next leader)"
                );
            }
            return;
        }
        // What was held for the minute's summaries is summed up now (kept
        // in the saved state until appended).
        let held = self.summed_up(chrono::Utc::now(), true);
        self.queue(held);
        let unsaved = std::mem::take(&mut self.unsaved);
        self.persist(unsaved).await;
        // What could not be carried out waits in the saved state: try once
        // more before stopping.
        self.flush(None).await;
        // The summaries appended leave the saved state.
        self.persist(BTreeSet::new()).await;
        self.write_carried().await;
        self.say_left("stopped");
    }

    /// Say what this leadership, ending (`ending`: stopped, deposed),
    /// leaves not carried out, if anything: effects of nodes whose state
    /// was saved wait there for the next leader; the unsaved ones are lost.
    fn say_left(&self, ending: &'static str) {
        if self.outbox.is_empty() {
            return;
        }
        let (unsaved, held_unsaved) = self.not_saved();
        tracing::error!(
            ending,
            effects = self.outbox.len(),
            unsaved,
            held_unsaved,
            "leadership ends with effects not carried out: those of nodes whose state was saved wait there for the next leader; the unsaved ones are lost with it"
        );
    }

    /// What this leadership would lose were it to end now: how many
    /// effects waiting in the outbox concern a node whose state is not
    /// saved, and whether refusals and drops were held since the held
    /// record was last written.
    fn not_saved(&self) -> (usize, bool) {
        let unsaved = self
            .outbox
            .iter()
            .filter(|q| effect_node_ref(&q.effect).is_some_and(|n| self.unsaved.contains(n)))
            .count();
        (unsaved, self.held_dirty)
    }

    /// [`Ctx::persist`], failing if any node's state was not written: the
    /// changed nodes' states are saved together, each with the effects
    /// waiting in the outbox that concern it.
    async fn persist_strict(&mut self, nodes: BTreeSet<NodeName>) -> Result<()> {
        let plan = self.plan_writes(&nodes)?;
        let mut done = Ok(());
        for key in &plan.remove {
            if let Err(e) = self.state.remove(key).await {
                done = Err(e);
                break;
            }
        }
        if done.is_ok() {
            done = self.state.save_many(plan.save).await;
        }
        if let Err(e) = done {
            self.counters.inc(Counter::StateSaveFailed);
            self.unsaved.extend(nodes);
            self.held_dirty = true;
            return Err(e.into());
        }
        self.wrote(&nodes, plan.written);
        Ok(())
    }

    /// What writing the state of `nodes` takes, each record with the
    /// effects waiting in the outbox that concern it (sealed where state
    /// is sealed): the records to save, the keys to remove, and each
    /// written node's digest (`None`: removed). Advances the stamp when a
    /// record keeps effects. Fails when this coordinator no longer leads
    /// or a record cannot be encoded or sealed.
    fn plan_writes(&mut self, nodes: &BTreeSet<NodeName>) -> Result<Writes> {
        if !self.still_leader() {
            return Err(Error::NotLeader);
        }
        let mut items = Vec::new();
        let mut written = Vec::new();
        let mut removed = Vec::new();
        // The outbox's effects by node, gathered once: each node's record
        // keeps its own, in order, each with its seq (a walk of the whole
        // outbox per node cost O(nodes × effects) per batch).
        let mut waiting: HashMap<&NodeName, Vec<&Queued>> = HashMap::new();
        for q in &self.outbox {
            if let Some(node) = effect_node_ref(&q.effect).filter(|n| nodes.contains(*n)) {
                waiting.entry(node).or_default().push(q);
            }
        }
        let mut buf = std::mem::take(&mut self.scratch);
        // Records that keep effects are stamped with this write's stamp.
        // Saturating: a marker read back at the last count (forged, or
        // after 2^64 writes) never overflows it.
        let stamp = Stamp(self.stamp.0, self.stamp.1.saturating_add(1));
        let mut stamped = false;
        let mut failed = None;
        for node in nodes {
            let effects = waiting.remove(node).unwrap_or_default();
            stamped |= !effects.is_empty();
            match self.node_state(node, effects, stamp, &mut buf) {
                Ok(NodeWrite::Unchanged) => {}
                Ok(NodeWrite::Remove) => removed.push(node.clone()),
                Ok(NodeWrite::Save(bytes, digest)) => {
                    items.push((node_key(node), bytes));
                    written.push((node.clone(), Some(digest)));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Kept for the next batch.
        buf.trim();
        self.scratch = buf;
        if let Some(e) = failed {
            return Err(e);
        }
        if std::mem::take(&mut self.held_dirty) {
            let held = HeldRef {
                refusals: &self.refusals,
                drops: &self.drops,
                summaries: &self.held_summaries,
            };
            match serde_json::to_vec(&held) {
                Ok(bytes) => items.push((HELD_KEY.to_string(), Bytes::from(bytes))),
                Err(e) => {
                    self.held_dirty = true;
                    return Err(Error::Io {
                        path: HELD_KEY.into(),
                        source: std::io::Error::other(e),
                    });
                }
            }
        }
        if stamped {
            self.stamp = stamp;
        }
        let mut remove = Vec::new();
        if self.seal.is_some() {
            // A removal is sealed too (an empty record with its order), so
            // that a record emptied on the bus is told apart from it.
            items.extend(removed.iter().map(|n| (node_key(n), Bytes::new())));
        } else {
            remove.extend(removed.iter().map(node_key));
        }
        written.extend(removed.into_iter().map(|n| (n, None)));
        let save = match self.seal_all(items) {
            Ok(save) => save,
            Err(e) => {
                self.counters.inc(Counter::StateSaveFailed);
                self.unsaved.extend(nodes.iter().cloned());
                self.held_dirty = true;
                return Err(e.into());
            }
        };
        Ok(Writes {
            save,
            remove,
            written,
        })
    }

    /// The state stream was made again since every node's state was last
    /// written (a save found it gone: [`StateStore::remade`]): what it held
    /// of the nodes not saved since is lost, so every node known is
    /// written again (and the held summaries).
    fn rewrite_if_state_remade(&mut self) {
        let remade = self.state.remade();
        if remade == self.state_remade {
            return;
        }
        self.state_remade = remade;
        let nodes = self.engine.known_nodes();
        tracing::warn!(
            nodes = nodes.len(),
            "the state stream was made again: every node's state is written again"
        );
        self.written.clear();
        self.unsaved.extend(nodes);
        self.held_dirty = true;
    }

    /// `nodes` were written as planned ([`Ctx::plan_writes`]): their
    /// digests are kept and none of them waits to be saved any more.
    fn wrote(&mut self, nodes: &BTreeSet<NodeName>, written: Vec<(NodeName, Option<u64>)>) {
        for (node, digest) in written {
            match digest {
                Some(d) => self.written.insert(node, d),
                None => self.written.remove(&node),
            };
        }
        for node in nodes {
            self.unsaved.remove(node);
        }
    }

    /// What to write for `node`, whose effects waiting in the outbox are
    /// `effects` (in order, each with its seq, kept under `stamp`), or
    /// that nothing changed:
    /// a record with effects is always written; one without, only when the
    /// node's state differs from what was last written (a record whose
    /// effects were carried out is not written again just to drop them:
    /// the `carried` marker covers them).
    /// `buf` is where it is serialised (see [`encode_snapshot_in`]).
    fn node_state(
        &self,
        node: &NodeName,
        effects: Vec<&Queued>,
        stamp: Stamp,
        buf: &mut Scratch,
    ) -> Result<NodeWrite> {
        let snap = self.engine.node_snapshot(node);
        let (seq, effects): (Vec<Seq>, Vec<KeptRef>) = effects
            .into_iter()
            .map(|q| (q.seq, KeptRef::from(&q.effect)))
            .unzip();
        if snap.is_empty() && effects.is_empty() {
            return Ok(if self.written.contains_key(node) {
                NodeWrite::Remove
            } else {
                NodeWrite::Unchanged
            });
        }
        let encode_err = |e| {
            Error::Bus(skos_bus::Error::Io {
                path: node_key(node).into(),
                source: e,
            })
        };
        let digest = |bytes: &[u8]| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        };
        if effects.is_empty() {
            let plain = SavedRef {
                state: &snap,
                effects,
                batch: None,
                seq,
            };
            let bytes = encode_snapshot_in(&plain, buf).map_err(encode_err)?;
            let state_digest = digest(bytes);
            return Ok(if self.written.get(node) == Some(&state_digest) {
                NodeWrite::Unchanged
            } else {
                NodeWrite::Save(Bytes::copy_from_slice(bytes), state_digest)
            });
        }
        let saved = SavedRef {
            state: &snap,
            effects,
            batch: Some(stamp),
            seq,
        };
        let bytes = encode_snapshot_in(&saved, buf).map_err(encode_err)?;
        // The state alone is not encoded again for its digest: the next
        // write without effects writes it (once), the marker covering
        // these effects meanwhile.
        Ok(NodeWrite::Save(
            Bytes::copy_from_slice(bytes),
            UNKNOWN_DIGEST,
        ))
    }

    /// Count a refused message; the audit entry to write for it, unless
    /// it is held for its feed's summary ([`refusals`]).
    fn reject(&mut self, feed: &'static str, m: &Incoming, err: &DecodeError) -> Option<Effect> {
        self.refuse(feed, &m.subject, m.payload.len(), err)
    }

    /// [`Ctx::reject`] of a message of `bytes` bytes on `subject`: counted
    /// always; logged and audited one by one up to
    /// [`refusals::AUDITED_PER_MINUTE`] a minute per feed, the rest summed
    /// up when the minute ends ([`Ctx::refusals_held`]).
    fn refuse(
        &mut self,
        feed: &'static str,
        subject: &str,
        bytes: usize,
        err: &DecodeError,
    ) -> Option<Effect> {
        let reason = match err {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep => "too_deep",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Invalid(_) => "invalid",
            DecodeError::Untrusted(_) => "untrusted",
        };
        self.counters.inc(Counter::Rejected { feed, reason });
        let now = chrono::Utc::now();
        if !self.refusals.note(feed, subject, reason, bytes, now) {
            self.held_dirty = true;
            tracing::debug!(subject, feed, error = %err, "rejected message (held for the minute's summary)");
            return None;
        }
        tracing::warn!(subject, feed, error = %err, "rejected message");
        Some(Effect::Audit(AuditEntry::new(
            skos_core::AuditEvent::Rejected,
            chrono::Utc::now(),
            None,
            "coordinator",
            format!("rejected {feed} on {subject}: {err}"),
            json!({"subject": subject, "feed": feed, "reason": reason, "error": err.to_string(), "bytes": bytes}),
        )))
    }

    /// The summaries of what was held in the minutes that ended by `now`
    /// (everything held, with `all`): refusals, then drops; logged and to
    /// be audited.
    fn summed_up(&mut self, now: chrono::DateTime<chrono::Utc>, all: bool) -> Vec<Effect> {
        // One set of summaries at a time: while the last ones wait to be
        // appended (the trail or the bus down), the windows go on counting,
        // so the saved record stays small however long that lasts.
        if self.held_after_flush && !all {
            return Vec::new();
        }
        let mut out = self.refusals_held(now, all);
        out.extend(self.drops_held(now, all));
        // The summaries replace their windows in the saved record until
        // they are appended: a restart meanwhile queues them again, unless
        // the trail shows them ([`summed_up_in`]).
        if !out.is_empty() {
            self.held_summaries
                .extend(out.iter().filter_map(|e| match e {
                    Effect::Audit(entry) => Some(entry.clone()),
                    _ => None,
                }));
            self.held_dirty = true;
            self.held_after_flush = true;
        }
        out
    }

    /// The summaries of the drops held ([`dropped`]).
    fn drops_held(&mut self, now: chrono::DateTime<chrono::Utc>, all: bool) -> Vec<Effect> {
        self.drops
            .ended(now, all)
            .into_iter()
            .map(|h| {
                tracing::warn!(
                    feed = h.feed,
                    dropped = h.held.dropped,
                    audited = h.audited,
                    "messages dropped by the bus before they were read, past the minute's first gaps: summed up in one audit record"
                );
                let unnamed = if h.held.unnamed > 0 {
                    format!(" ({} in ranges not named)", h.held.unnamed)
                } else {
                    String::new()
                };
                Effect::Audit(AuditEntry::new(
                    skos_core::AuditEvent::Dropped,
                    now,
                    None,
                    "coordinator",
                    format!(
                        "{} more {}s dropped by the bus before they were read in the minute since {}{unnamed}",
                        h.held.dropped,
                        h.feed,
                        skos_core::timefmt::format(&h.since)
                    ),
                    json!({
                        "feed": h.feed,
                        "dropped": h.held.dropped,
                        "sequences": h.held.sequences,
                        "unnamed": h.held.unnamed,
                        "since": skos_core::timefmt::format(&h.since),
                        "gaps_audited_one_by_one": h.audited,
                    }),
                ))
            })
            .collect()
    }

    /// The summaries of the refusals held ([`refusals`]).
    fn refusals_held(&mut self, now: chrono::DateTime<chrono::Utc>, all: bool) -> Vec<Effect> {
        self.refusals
            .ended(now, all)
            .into_iter()
            .map(|h| {
                let n = h.held.count();
                let reasons: Vec<String> = h
                    .held
                    .reasons
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                let mut subjects: Vec<&str> = h.held.subjects.iter().map(String::as_str).collect();
                if h.held.more_subjects {
                    subjects.push("and more");
                }
                let subjects = subjects.join(", ");
                tracing::warn!(
                    feed = h.feed,
                    held = n,
                    audited = h.audited,
                    reasons = %reasons.join(", "),
                    "rejected messages past the first of the minute: summed up in one audit record"
                );
                Effect::Audit(AuditEntry::new(
                    skos_core::AuditEvent::Rejected,
                    now,
                    None,
                    "coordinator",
                    format!(
                        "{n} more {} messages rejected in the minute since {} ({}), on {subjects}",
                        h.feed,
                        skos_core::timefmt::format(&h.since),
                        reasons.join(", ")
                    ),
                    json!({
                        "feed": h.feed,
                        "since": skos_core::timefmt::format(&h.since),
                        "held": n,
                        "audited_one_by_one": h.audited,
                        "reasons": h.held.reasons,
                        "bytes": h.held.bytes,
                        "subjects": h.held.subjects,
                        "more_subjects": h.held.more_subjects,
                    }),
                ))
            })
            .collect()
    }

    fn subject_mismatch(m: &Incoming, node: &skos_core::NodeName) -> Option<DecodeError> {
        if skos_bus::subjects::is_of_node(&m.subject, node) {
            return None;
        }
        Some(DecodeError::Invalid(format!(
            "payload node {node} does not match subject {}",
            m.subject
        )))
    }

    /// An operator's request (`crate::control`): decided by the engine,
    /// the state of the node it changed written, its audit records (and
    /// any command an expired silence lets out) carried out, then
    /// answered. A request that cannot be read is answered with why.
    async fn control(&mut self, m: Incoming) {
        use crate::control::{ControlReply, ControlRequest, Refusal};
        let reply = match ControlRequest::parse(&m.payload) {
            Err(e) => {
                self.counters.inc(Counter::Rejected {
                    feed: "control",
                    reason: "malformed",
                });
                ControlReply::refused(Refusal::Invalid, e)
            }
            Ok(req) => {
                let now = chrono::Utc::now();
                let (mut reply, effects) = self.engine.control(&req, now);
                if !effects.is_empty() {
                    let touched = effect_nodes(&effects);
                    self.queue(effects);
                    self.persist(touched.clone()).await;
                    if touched.iter().any(|n| self.unsaved.contains(n)) {
                        tracing::error!(request = ?req, "control request decided, but its node's state is not saved yet; retrying on each tick");
                        reply
                            .message
                            .push_str(" (not saved yet: the coordinator retries)");
                    }
                    self.flush(None).await;
                }
                tracing::info!(request = ?req, refused = ?reply.error, "control request");
                reply
            }
        };
        if let Err(e) = m.reply(Bytes::from(reply.to_bytes())).await {
            tracing::debug!(error = %e, "control reply failed");
        }
    }

    /// Handle a batch of decoded heartbeats (and refusals): the engine
    /// takes each, then the state of every node whose state changed is
    /// written, then the effects are carried out (no ack: heartbeats are
    /// not durable).
    async fn heartbeats(&mut self, batch: Vec<Decoded<Heartbeat>>) {
        let now = chrono::Utc::now();
        let mut effects = Vec::new();
        let mut touched = BTreeSet::new();
        for d in batch {
            match d {
                Decoded::Ok(hb) => {
                    let node = hb.node.clone();
                    self.consumers.want(&node);
                    let decided = self.engine.on_heartbeat(hb, now);
                    if !decided.is_empty() {
                        touch(&mut touched, &decided);
                        touched.insert(node);
                        effects.extend(decided);
                    }
                }
                Decoded::Refused(r) => {
                    effects.extend(self.refuse("heartbeat", &r.subject, r.bytes, &r.error))
                }
            }
        }
        if effects.is_empty() {
            return;
        }
        self.queue(effects);
        self.persist(touched).await;
        // Waiting effects are retried by the tick: a heartbeat does not
        // wait for a bus that is down.
        if !self.stalled {
            self.flush(None).await;
        }
    }

    /// What the bus dropped of a durable feed before this batch was read:
    /// counted, and summed up in one audit record naming the stream
    /// sequences skipped.
    fn dropped(
        &mut self,
        feed: &'static str,
        batch: &[Incoming],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Effect> {
        let seen = match feed {
            "alert" => &mut self.alert_gaps,
            _ => &mut self.result_gaps,
        };
        let skipped = seen.observe(batch.iter().filter_map(Incoming::stream_sequence));
        self.audit_dropped(feed, &skipped, now)
    }

    /// Once the feeds' settle time has passed: of the messages in flight at
    /// start that never came again, those the stream no longer holds were
    /// dropped (the others were acknowledged already).
    async fn settled(&mut self, now: chrono::DateTime<chrono::Utc>) -> Vec<Effect> {
        let at = std::time::Instant::now();
        let mut out = Vec::new();
        for (feed, name) in [(Feed::Alerts, "alert"), (Feed::Results, "result")] {
            let candidates = match name {
                "alert" => self.alert_gaps.settle(at),
                _ => self.result_gaps.settle(at),
            };
            let mut gone = Vec::new();
            for seq in candidates {
                match self.bus.stream_holds(&feed, seq).await {
                    Ok(true) => {}
                    Ok(false) => gone.push(seq),
                    Err(e) => {
                        tracing::warn!(error = %e, feed = name, "messages in flight at start not looked up; those dropped are not counted");
                        gone.clear();
                        break;
                    }
                }
            }
            out.extend(self.audit_dropped(name, &gaps::ranges(&gone), now));
        }
        out
    }

    /// Count the sequences of `feed` dropped unread; audit them, unless
    /// held for the minute's summary ([`dropped`]).
    fn audit_dropped(
        &mut self,
        feed: &'static str,
        skipped: &[std::ops::RangeInclusive<u64>],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Effect> {
        let n = gaps::count(skipped);
        if n == 0 {
            return None;
        }
        self.counters.add(Counter::DroppedUnread(feed), n);
        if !self.drops.note(feed, skipped, now) {
            self.held_dirty = true;
            tracing::debug!(
                feed,
                dropped = n,
                "messages dropped by the bus before they were read (held for the minute's summary)"
            );
            return None;
        }
        tracing::warn!(
            feed,
            dropped = n,
            "messages dropped by the bus before they were read (a node past its per-node limit, or past the stream's age)"
        );
        let ranges: Vec<[u64; 2]> = skipped.iter().map(|r| [*r.start(), *r.end()]).collect();
        Some(Effect::Audit(AuditEntry::new(
            skos_core::AuditEvent::Dropped,
            now,
            None,
            "coordinator",
            format!("{n} {feed}s dropped by the bus before they were read"),
            json!({"feed": feed, "dropped": n, "sequences": ranges}),
        )))
    }

    /// Decode an alert, or say why it is refused.
    fn decode_alert(&self, m: &Incoming) -> Result<Alert, DecodeError> {
        let alert =
            decode::<Alert>(&m.payload, self.max_bytes).and_then(|a| a.validate().map(|()| a))?;
        if let Some(e) = Self::subject_mismatch(m, &alert.node) {
            return Err(e);
        }
        // One of the coordinator's own problems (a node's silence, a peer
        // node unreachable...), or one under a coordinator's id (which a
        // stranger could take first to have the real one dropped as handled):
        // only a trusted coordinator raises or clears it.
        let own = alert.is_coordinators_own()
            || alert.alert_id.starts_with(COORDINATOR_ID_PREFIX)
            || alert.alert_id.contains(ESCALATION_ID_MARK);
        if let (Some(trusted), true) = (self.trusted.as_deref(), own) {
            let headers = skos_bus::trust::CommandHeaders {
                signer: m.header(skos_bus::trust::HEADER_SIGNER),
                signature: m.header(skos_bus::trust::HEADER_SIGNATURE),
                context: m.header(skos_bus::trust::HEADER_CONTEXT),
            };
            if let Err(e) = trusted.check_alert(&m.subject, &m.payload, &headers) {
                return Err(DecodeError::Invalid(format!(
                    "a {} alert is the coordinator's own and this one is not signed by a trusted coordinator key: {e}",
                    alert.problem()
                )));
            }
        }
        // Any other alert speaks for its node: with a key, it must be
        // signed with it.
        if let (Some(nodes), false) = (self.node_trust.as_deref(), own) {
            check_node(nodes, NodeMessage::Alert, m, &alert.node)?;
        }
        Ok(alert)
    }

    /// Handle a batch of alerts: decide each, then write the state of
    /// every node they touched with the effects decided, publish and audit
    /// those, and acknowledge the alerts. If a step fails nothing is
    /// acknowledged: the effects wait in the outbox (they are not decided
    /// again), and the alerts, delivered again, are acknowledged once they
    /// are carried out.
    async fn alerts(&mut self, batch: Vec<Incoming>) {
        let started = std::time::Instant::now();
        let work = self.decide_alerts(batch);
        let alerts = work.acks.len();
        if !self.finish(work, Durable::Alert, started).await {
            // Not acknowledged: JetStream delivers them again.
            tracing::error!(
                alerts,
                waiting = self.outbox.len(),
                "alerts' effects not all carried out yet; kept, and the alerts will be delivered again"
            );
        }
    }

    /// Decide each alert of `batch` (the engine's step alone: nothing is
    /// written or published yet).
    fn decide_alerts(&mut self, batch: Vec<Incoming>) -> Work {
        let now = chrono::Utc::now();
        let mut work = Work::default();
        work.effects.extend(self.dropped("alert", &batch, now));
        for m in batch {
            match self.decode_alert(&m) {
                Ok(mut alert) => {
                    alert.ensure_id();
                    work.touched.insert(alert.node.clone());
                    let effects = self.engine.on_alert(alert, now);
                    touch(&mut work.touched, &effects);
                    work.effects.extend(effects);
                }
                Err(e) => work.effects.extend(self.reject("alert", &m, &e)),
            }
            work.acks.push(m);
        }
        work
    }

    /// Handle a batch of results, as [`Ctx::alerts`].
    async fn results(&mut self, batch: Vec<Incoming>) {
        let started = std::time::Instant::now();
        let work = self.decide_results(batch);
        if !self.finish(work, Durable::Result, started).await {
            tracing::error!(
                waiting = self.outbox.len(),
                "results' effects not all carried out yet; kept, and the results will be delivered again"
            );
        }
    }

    /// Decide each result of `batch` (the engine's step alone), as
    /// [`Ctx::decide_alerts`].
    fn decide_results(&mut self, batch: Vec<Incoming>) -> Work {
        let now = chrono::Utc::now();
        let mut work = Work::default();
        work.effects.extend(self.dropped("result", &batch, now));
        for m in batch {
            let result = decode::<CommandResult>(&m.payload, self.max_bytes)
                .and_then(|r| match Self::subject_mismatch(&m, &r.node) {
                    None => Ok(r),
                    Some(e) => Err(e),
                })
                .and_then(|r| match self.node_trust.as_deref() {
                    Some(nodes) => check_node(nodes, NodeMessage::Result, &m, &r.node).map(|_| r),
                    None => Ok(r),
                });
            match result {
                Ok(result) => {
                    // A result stored under a message id (every agent's)
                    // and delivered again (after a stop before its ack) is
                    // not handled, nor audited, twice. Remembered by its
                    // id ([`skos_bus::result_message_id`]), without the
                    // signature a signed one's message id adds, as the
                    // trail's results are at start.
                    let fresh = match message_id(&m) {
                        Some(_) => self
                            .results_seen
                            .insert(&skos_bus::result_message_id(&result)),
                        None => true,
                    };
                    let foreign = if fresh {
                        self.engine.foreign_target(&result)
                    } else {
                        None
                    };
                    // Believed only as the answer of a command of this
                    // leader's to that node still open: no node can push
                    // the fleet's terms up at will.
                    if fresh && foreign.is_none() && self.engine.result_is_news(&result) {
                        if let Some(t) = fenced_out(&result, self.engine.term()) {
                            self.fenced_by = self.fenced_by.max(Some(t));
                        }
                    }
                    if let Some(target) = foreign {
                        // Another node's: refused, touching nothing, and
                        // audited one by one only up to the minute's
                        // refusals ([`refusals`]).
                        self.counters.inc(Counter::ResultsForeign);
                        if self
                            .refusals
                            .note("result", &m.subject, FOREIGN, m.payload.len(), now)
                        {
                            work.effects
                                .push(self.engine.refuse_foreign(result, &target, now));
                        } else {
                            self.held_dirty = true;
                        }
                    } else if fresh
                        && !self.engine.result_is_news(&result)
                        && !self.refusals.note(
                            "result",
                            &m.subject,
                            Engine::no_news_reason(&result),
                            m.payload.len(),
                            now,
                        )
                    {
                        // Answers nothing open, past the minute's ten
                        // audited one by one: counted and held for the
                        // minute's summary, as a refusal is, so a node
                        // sending such results grows the trail by one
                        // record a minute, not one per result.
                        self.engine.count_result(&result, false);
                        self.held_dirty = true;
                    } else if fresh {
                        work.touched.insert(result.node.clone());
                        let effects = self.engine.on_result(result, now);
                        touch(&mut work.touched, &effects);
                        work.effects.extend(effects);
                    } else {
                        tracing::debug!(action_id = %result.action_id, status = result.status.as_str(), "result already handled");
                    }
                }
                Err(e) => work.effects.extend(self.reject("result", &m, &e)),
            }
            work.acks.push(m);
        }
        work
    }

    /// State first, with the effects decided (a restart then carries out
    /// those not yet carried out), then the effects, then the acks. `kind`
    /// names the failpoints between the steps. True when the batch is
    /// acknowledged; then how long each phase took since `started` (when
    /// the batch was taken) is counted ([`Counter::BatchMicros`]).
    async fn finish(&mut self, work: Work, feed: Durable, started: std::time::Instant) -> bool {
        let points = feed.points();
        let kind = feed.name();
        failpoint::hit(points[0]);
        let decided = std::time::Instant::now();
        self.queue(work.effects);
        let mut touched = work.touched;
        touched.extend(std::mem::take(&mut self.unsaved));
        let saved = self.persist_strict(touched).await.is_ok();
        if saved {
            failpoint::hit(points[1]);
        }
        let persisted = std::time::Instant::now();
        // Not acknowledged while what it held is not saved (a refusal has
        // no effect of a node's for the flush to wait on).
        if !self.flush(Some(points[2])).await || (!saved && self.held_dirty) {
            return false;
        }
        failpoint::hit(points[3]);
        let audited = std::time::Instant::now();
        futures::future::join_all(work.acks.into_iter().map(ack)).await;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let flushed = std::mem::take(&mut self.flushed);
        for (phase, took) in [
            (BatchPhase::Decide, decided - started),
            (BatchPhase::State, persisted - decided),
            (BatchPhase::Publish, flushed.publish),
            (BatchPhase::Audit, flushed.audit),
            (BatchPhase::Ack, audited.elapsed()),
        ] {
            self.counters
                .add(Counter::BatchMicros(kind, phase), micros(took));
        }
        self.counters.inc(Counter::Batches(kind));
        true
    }

    /// Add decided effects to the outbox, behind anything waiting, so
    /// order is kept, each with the next seq.
    fn queue(&mut self, effects: Vec<Effect>) {
        if self.stalled {
            self.counters
                .add(Counter::EffectsQueued, effects.len() as u64);
        }
        for effect in effects {
            let (term, n) = self.next_seq;
            self.next_seq = (term, n.saturating_add(1));
            let seq = Seq::Counted(term, n);
            self.outbox.push_back(Queued { seq, effect });
        }
    }

    /// Add effects kept before a restart to the outbox, with their seqs.
    fn requeue(&mut self, kept: Vec<Queued>) {
        self.outbox.extend(kept);
    }

    /// Carry out the outbox, oldest first: publish its commands and alerts
    /// (durably, back to back, their acks awaited together), then write its
    /// audit records; `published` is the kill point between the two
    /// ([`failpoint::hit`]). Nothing is carried out while the state of a
    /// node an effect concerns is unsaved (state first). Once nothing
    /// waits, every effect kept so far is carried out (`carried`, written by
    /// [`Ctx::write_carried`]). True when nothing waits; on a failure everything not done waits for
    /// the next try, in order.
    async fn flush(&mut self, published: Option<&'static str>) -> bool {
        self.flushed = FlushTimes::default();
        if !self.still_leader() {
            return false;
        }
        let blocked =
            |q: &Queued| effect_node_ref(&q.effect).is_some_and(|n| self.unsaved.contains(n));
        if self.outbox.iter().any(blocked) {
            return false;
        }
        if self.audits_uncertain && !self.outbox.is_empty() && !self.write_waiting_audits().await {
            return false;
        }
        if !self.outbox.is_empty() {
            let waiting: Vec<Queued> = std::mem::take(&mut self.outbox).into();
            let n = waiting.len();
            let (publish, mut audits): (Vec<_>, Vec<_>) = waiting
                .into_iter()
                .partition(|q| !matches!(q.effect, Effect::Audit(_)));
            // Published back to back, in order; their acks awaited together.
            let publishing = std::time::Instant::now();
            let sends = publish.iter().map(|q| self.publish(&q.effect));
            let failed = futures::future::join_all(sends)
                .await
                .into_iter()
                .find_map(|r| r.err());
            self.flushed.publish = publishing.elapsed();
            if let Some(e) = failed {
                // Published again on the next try: their ids make it safe.
                return self.stall(e, publish.into_iter().chain(audits).collect());
            }
            if let Some(point) = published {
                failpoint::hit(point);
            }
            if self.audits_uncertain {
                // The last failed append may have been written all the
                // same: skip what the trail's tail already holds.
                match self.audit.read_recent(audits.len() as u64 + 16).await {
                    Ok(tail) => {
                        let mut written = Written::default();
                        tail.iter().for_each(|r| written.insert(&r["entry"]));
                        audits.retain(
                            |q| !matches!(&q.effect, Effect::Audit(e) if written.contains(e)),
                        );
                    }
                    Err(e) => return self.stall(e, audits),
                }
            }
            let (seqs, entries) = audit_entries(audits);
            let appending = std::time::Instant::now();
            let appended = self.audit.append_many(entries).await;
            self.flushed.audit = appending.elapsed();
            if let Err(failed) = appended {
                // What is not known to be stored waits for the next try,
                // and nothing new is carried out until it is written.
                self.audits_uncertain = true;
                self.counters.inc(Counter::AuditWriteFailed);
                self.audit_failed(&failed.error).await;
                tracing::error!(error = %failed.error, waiting = failed.entries.len(), "audit trail cannot be written: no new action is carried out until it can (restoring ones excepted)");
                let rest = given_back(&seqs, failed.entries);
                return self.stall(failed.error, rest);
            }
            self.audits_uncertain = false;
            self.audit_written().await;
            if self.stalled {
                tracing::info!(effects = n, "queued effects carried out");
            }
            self.stalled = false;
        }
        // Nothing waits: every effect kept so far is carried out.
        if self.outbox.is_empty() {
            self.carried = self.stamp;
            // The summaries queued are appended: they go from the record.
            if std::mem::take(&mut self.held_after_flush) {
                self.held_summaries.clear();
                self.held_dirty = true;
            }
        }
        true
    }

    /// The `audit` alert on this coordinator's node, for the failure that
    /// began at `since` (`severity` normal: it is over).
    fn audit_alert(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        severity: skos_core::protocol::Severity,
        message: String,
        details: Value,
    ) -> Alert {
        let end = if severity == skos_core::protocol::Severity::Normal {
            "-written"
        } else {
            ""
        };
        Alert {
            alert_id: format!(
                "coord-audit-{}-{}{end}",
                self.node,
                since.timestamp_millis()
            ),
            agent_id: "coordinator".into(),
            kind: skos_core::protocol::AlertKind::Audit,
            severity,
            node: self.node.clone(),
            message,
            details: match details {
                Value::Object(m) => m,
                _ => Default::default(),
            },
            timestamp: chrono::Utc::now(),
        }
    }

    /// An append failed: raise the `audit` alert, once per failure (it is
    /// published straight away, not through the outbox that waits for the
    /// trail), saying why and where.
    async fn audit_failed(&mut self, error: &skos_bus::Error) {
        let since = self
            .audit_down
            .get_or_insert(AuditDown {
                since: chrono::Utc::now(),
                raised: false,
            })
            .since;
        if self.audit_down.as_ref().is_some_and(|d| d.raised) {
            return;
        }
        let location = self.audit.location().await;
        let alert = self.audit_alert(
            since,
            skos_core::protocol::Severity::Critical,
            format!("audit trail cannot be written at {location}: {error}; no new action is carried out until it can (restoring ones excepted)"),
            json!({"sensor": "audit", "where": location, "error": error.to_string()}),
        );
        match self
            .bus
            .publish_alert_signed(&alert, self.signer.as_deref())
            .await
        {
            Ok(()) => {
                if let Some(d) = self.audit_down.as_mut() {
                    d.raised = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "alert that the audit trail cannot be written not published; retrying")
            }
        }
    }

    /// An append succeeded: clear the `audit` alert if one was raised.
    async fn audit_written(&mut self) {
        let Some(down) = self.audit_down.take() else {
            return;
        };
        if !down.raised {
            return;
        }
        let location = self.audit.location().await;
        let alert = self.audit_alert(
            down.since,
            skos_core::protocol::Severity::Normal,
            format!("audit trail at {location} written again"),
            json!({"sensor": "audit", "where": location}),
        );
        if let Err(e) = self
            .bus
            .publish_alert_signed(&alert, self.signer.as_deref())
            .await
        {
            tracing::warn!(error = %e, "alert that the audit trail is written again not published");
        }
    }

    /// State records as stored: sealed with the signing key when state is
    /// sealed ([`ServiceOptions::state_trust`]), as they are otherwise.
    /// Each sealed record carries its order: this coordinator's term and
    /// the time of the write ([`SealOrder`]), which the restorer checks
    /// against the audit trail. Never earlier than the last write's (a
    /// clock stepped back within a term does not make a newer record look
    /// older than an event audited before the step).
    fn seal_all(&mut self, items: Vec<(String, Bytes)>) -> skos_bus::Result<Vec<(String, Bytes)>> {
        let Some(signer) = self.seal.as_deref() else {
            return Ok(items);
        };
        self.sealed_at = self.sealed_at.max(chrono::Utc::now().timestamp_millis());
        let order = SealOrder {
            term: self.seal_term,
            at_ms: self.sealed_at,
        };
        items
            .into_iter()
            .map(|(key, bytes)| {
                let sealed = signer.seal_state_ordered(&key, order, &bytes)?;
                Ok((key, Bytes::from(sealed)))
            })
            .collect()
    }

    /// Write the `carried` marker when it moved (failures are retried on
    /// the next tick). Called once a tick (and at a stop), so a burst of
    /// batches shares one write: a restart before it carries their effects
    /// out again, which is safe as after a kill between the audit and the
    /// ack (ids, and the trail's tail, de-duplicate).
    async fn write_carried(&mut self) {
        if self.carried <= self.carried_written || !self.still_leader() {
            return;
        }
        let carried = self.carried;
        let bytes = match serde_json::to_vec(&carried) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(key = CARRIED_KEY, error = %e, "marker of carried-out effects not encoded");
                return;
            }
        };
        let bytes = match self.seal_all(vec![(CARRIED_KEY.to_string(), bytes)]) {
            Ok(mut items) => items.pop().map(|(_, b)| b).unwrap_or_default(),
            Err(e) => {
                tracing::error!(key = CARRIED_KEY, error = %e, "marker of carried-out effects not sealed");
                return;
            }
        };
        match self.state.save(CARRIED_KEY, bytes).await {
            Ok(()) => {
                self.carried_written = carried;
                failpoint::hit("tick.carried");
            }
            Err(e) => {
                self.counters.inc(Counter::StateSaveFailed);
                tracing::warn!(key = CARRIED_KEY, error = %e, "marker of carried-out effects not written; retrying");
            }
        }
    }

    /// After a failed audit append: write the audit records waiting at the
    /// head of the outbox before anything else is carried out, so no new
    /// command runs unaudited while the trail cannot be written (a full
    /// disk, a lost stream). Only restoring commands (lifting a throttle
    /// SKOS applied) go out meanwhile, their records waiting with the
    /// rest. True once the trail took them (then the outbox is carried out
    /// as usual).
    async fn write_waiting_audits(&mut self) -> bool {
        let restoring = |q: &Queued| matches!(&q.effect, Effect::Command(_, cmd) if skos_core::catalogue::restores(&cmd.action_type));
        let lead = self
            .outbox
            .iter()
            .take_while(|q| matches!(q.effect, Effect::Audit(_)))
            .count();
        if lead == 0 {
            // Nothing to prove the trail writable with: what waits is
            // carried out, and its records checked against the trail's
            // tail before they are appended ([`Ctx::flush`]).
            return true;
        }
        let mut records: Vec<Queued> = self.outbox.drain(..lead).collect();
        // The last failed append may have been written all the same.
        let result = match self.audit.read_recent(records.len() as u64 + 16).await {
            Ok(tail) => {
                let mut written = Written::default();
                tail.iter().for_each(|r| written.insert(&r["entry"]));
                records.retain(|q| !matches!(&q.effect, Effect::Audit(e) if written.contains(e)));
                let (seqs, entries) = audit_entries(records);
                self.audit
                    .append_many(entries)
                    .await
                    .map_err(|failed| (failed.error, given_back(&seqs, failed.entries)))
            }
            Err(e) => Err((e, records)),
        };
        match result {
            Ok(()) => {
                self.audits_uncertain = false;
                self.audit_written().await;
                tracing::info!("audit trail writable again: carrying out what waited");
                true
            }
            Err((e, rest)) => {
                // Restoring commands still go out; every other effect waits
                // behind the records the trail could not take.
                let mut restore = Vec::new();
                let mut later = VecDeque::new();
                for eff in std::mem::take(&mut self.outbox) {
                    if restoring(&eff) {
                        restore.push(eff);
                    } else {
                        later.push_back(eff);
                    }
                }
                self.outbox = later;
                for q in &restore {
                    if let Err(e) = self.publish(&q.effect).await {
                        tracing::warn!(error = %e, "restoring command not sent; retrying");
                    }
                }
                tracing::debug!(error = %e, waiting = rest.len() + self.outbox.len(), "audit trail still cannot be written");
                self.counters.inc(Counter::AuditWriteFailed);
                self.audit_failed(&e).await;
                // A restoring command sent now is published again (same id)
                // with the rest later: stored and executed once.
                self.stall(e, rest.into_iter().chain(restore).collect())
            }
        }
    }

    /// A failed try at carrying out the outbox: `rest` waits for the next
    /// one (a deposed coordinator drops it: the new leader decides again
    /// from the same inputs). Always false.
    fn stall(&mut self, e: skos_bus::Error, rest: Vec<Queued>) -> bool {
        self.stall_at(e, rest, false)
    }

    /// [`Ctx::stall`], `rest` waiting in front of what waits (decided
    /// later), or `behind` it (what waits there is a batch before `rest`'s
    /// that failed first).
    fn stall_at(&mut self, e: skos_bus::Error, rest: Vec<Queued>, behind: bool) -> bool {
        if matches!(e, skos_bus::Error::Deposed { .. }) {
            self.deposed = true;
        }
        if self.deposed {
            return false;
        }
        if self.stalled {
            tracing::debug!(error = %e, waiting = rest.len(), "queued effects still waiting");
        } else {
            tracing::error!(error = %e, queued = rest.len(), "effects not carried out; queued and tried again");
            self.counters.add(Counter::EffectsQueued, rest.len() as u64);
        }
        self.stalled = true;
        self.give_back(rest, behind);
        false
    }

    /// Put `effects`, not carried out, back in the outbox: in front of what
    /// waits there (decided later), or `behind` it (what waits there is a
    /// batch before theirs that failed first).
    fn give_back(&mut self, effects: Vec<Queued>, behind: bool) {
        if behind {
            self.outbox.extend(effects);
        } else {
            let later = std::mem::take(&mut self.outbox);
            self.outbox = effects.into_iter().chain(later).collect();
        }
    }

    /// Publish one command or alert (an audit entry is not published).
    async fn publish(&self, e: &Effect) -> skos_bus::Result<()> {
        publish_effect(&self.bus, self.signer.as_deref(), e).await
    }
}

/// The audit entries of `records` (queued audit records; anything else is
/// left out), with their seqs, in order.
fn audit_entries(records: Vec<Queued>) -> (Vec<Seq>, Vec<AuditEntry>) {
    records
        .into_iter()
        .filter_map(|q| match q.effect {
            Effect::Audit(entry) => Some((q.seq, entry)),
            _ => None,
        })
        .unzip()
}

/// Publish one command or alert on `bus`, signed by `signer` where
/// commands are signed (an audit entry is not published).
async fn publish_effect(bus: &Bus, signer: Option<&Signer>, e: &Effect) -> skos_bus::Result<()> {
    match e {
        Effect::Command(node, cmd) => {
            // Per message, so debug: the `command` audit record says it.
            tracing::debug!(node = %node, action = %cmd.action_type, action_id = %cmd.action_id, term = ?cmd.term, "sending command");
            bus.send_command(node, cmd, signer).await
        }
        Effect::Alert(a) => {
            // Per message, so debug: it is audited when it comes back.
            tracing::debug!(node = %a.node, kind = a.kind.as_str(), severity = a.severity.as_str(), "raising alert");
            bus.publish_alert_signed(a, signer).await
        }
        Effect::Audit(_) => Ok(()),
    }
}

/// How long one [`Ctx::flush`] spent publishing its effects and appending
/// its audit records (zero for what it did not do).
#[derive(Debug, Clone, Copy, Default)]
struct FlushTimes {
    publish: Duration,
    audit: Duration,
}

/// Heartbeats queued between their decoding task and the engine (in
/// batches of at most [`BATCH`]): past this the task waits (and the
/// subscription's own buffer holds them).
const HEARTBEAT_QUEUE: usize = 8192;

/// A message decoded off the service loop, or why it was refused.
enum Decoded<T> {
    Ok(T),
    Refused(Refusal),
}

/// A message refused by its decoding task, kept for its audit record.
struct Refusal {
    subject: String,
    bytes: usize,
    error: DecodeError,
}

/// Decode and check heartbeats as they come, and queue them for the
/// service loop in order, in batches of what is ready (one queue send per
/// batch, not per heartbeat); ends when the loop is gone.
async fn decode_heartbeats(
    feed: skos_bus::Subscription,
    tx: tokio::sync::mpsc::Sender<Vec<Decoded<Heartbeat>>>,
    max_bytes: usize,
    trust: Option<Arc<skos_bus::trust::NodeVerifier>>,
) {
    let mut feed = feed.ready_chunks(BATCH);
    let mut last = HashMap::new();
    while let Some(messages) = feed.next().await {
        let batch = messages
            .into_iter()
            .map(|m| decode_heartbeat(m, max_bytes, trust.as_deref(), &mut last))
            .collect();
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Check a node's message against the node's key: `Ok(Some(signer))`
/// signed by it, `Ok(None)` taken unsigned (the node has no key and
/// node signatures are not required), or why it is refused.
fn check_node(
    trust: &skos_bus::trust::NodeVerifier,
    kind: NodeMessage,
    m: &Incoming,
    node: &NodeName,
) -> Result<Option<String>, DecodeError> {
    let headers = skos_bus::trust::CommandHeaders {
        signer: m.header(skos_bus::trust::HEADER_SIGNER),
        signature: m.header(skos_bus::trust::HEADER_SIGNATURE),
        context: m.header(skos_bus::trust::HEADER_CONTEXT),
    };
    trust
        .check(kind, &m.subject, node.as_str(), &m.payload, &headers)
        .map_err(|e| {
            DecodeError::Untrusted(format!(
                "{} of node {node} not signed with its key (trust.node_keys): {e}",
                kind.as_str()
            ))
        })
}

/// One heartbeat decoded and checked, or why it is refused. With node
/// keys, a heartbeat of a node with a key must be signed with it, and be
/// newer than the last signed one taken from that node (`last`): a signed
/// heartbeat seen on the bus and published again (to make a silent node
/// look alive) is refused.
fn decode_heartbeat(
    m: Incoming,
    max_bytes: usize,
    trust: Option<&skos_bus::trust::NodeVerifier>,
    last: &mut HashMap<NodeName, chrono::DateTime<chrono::Utc>>,
) -> Decoded<Heartbeat> {
    let hb = decode::<Heartbeat>(&m.payload, max_bytes)
        .and_then(|h| h.validate().map(|()| h))
        .and_then(|hb| match Ctx::subject_mismatch(&m, &hb.node) {
            None => Ok(hb),
            Some(e) => Err(e),
        })
        .and_then(|hb| {
            let Some(trust) = trust else {
                return Ok(hb);
            };
            if check_node(trust, NodeMessage::Heartbeat, &m, &hb.node)?.is_some() {
                if last.get(&hb.node).is_some_and(|newest| hb.timestamp <= *newest) {
                    return Err(DecodeError::Untrusted(format!(
                        "signed heartbeat of {} from {} is not newer than one already taken (a replay)",
                        hb.node,
                        skos_core::timefmt::format(&hb.timestamp)
                    )));
                }
                last.insert(hb.node.clone(), hb.timestamp);
            }
            Ok(hb)
        });
    match hb {
        Ok(hb) => Decoded::Ok(hb),
        Err(error) => Decoded::Refused(Refusal {
            subject: m.subject,
            bytes: m.payload.len(),
            error,
        }),
    }
}

/// Aborts its task when dropped (the heartbeat decoder of one leadership).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A batch of durable messages on its way through [`Ctx::finish`].
#[derive(Default)]
struct Work {
    effects: Vec<Effect>,
    touched: BTreeSet<NodeName>,
    acks: Vec<Incoming>,
}

/// The digest kept for a record written with effects: its state alone was
/// not encoded, so the next write without effects is not skipped.
const UNKNOWN_DIGEST: u64 = 0;

/// The state writes one batch takes ([`Ctx::plan_writes`]).
struct Writes {
    /// Records to save, by key, sealed where state is sealed.
    save: Vec<(String, Bytes)>,
    /// Keys to remove (where state is not sealed; a sealed removal is an
    /// empty record in `save`).
    remove: Vec<String>,
    /// Each written node's digest; `None` where its key is removed.
    written: Vec<(NodeName, Option<u64>)>,
}

/// What one node's state needs.
enum NodeWrite {
    Unchanged,
    Remove,
    /// Its record, and the digest of its state alone.
    Save(Bytes, u64),
}

/// The JetStream message id a durable message was stored under (an
/// agent's result: [`skos_bus::result_message_id`]), if it has one.
fn message_id(m: &Incoming) -> Option<&str> {
    m.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("Nats-Msg-Id"))
        .map(|(_, id)| id.as_str())
}

async fn ack(m: Incoming) {
    // The error names the subject.
    if let Err(e) = m.ack().await {
        tracing::warn!(error = %e, "ack failed; the message may be delivered again");
    }
}

/// The nodes effects concern: whose state they may have changed.
fn effect_nodes(effects: &[Effect]) -> BTreeSet<NodeName> {
    effects.iter().filter_map(effect_node).collect()
}

/// Add the nodes `effects` concern to `touched`, copying only the names
/// not in it yet.
fn touch(touched: &mut BTreeSet<NodeName>, effects: &[Effect]) {
    for node in effects.iter().filter_map(effect_node_ref) {
        if !touched.contains(node) {
            touched.insert(node.clone());
        }
    }
}

/// The node an effect concerns, in whose saved state it is kept until it
/// is carried out (none for an audit entry about no node).
fn effect_node(e: &Effect) -> Option<NodeName> {
    effect_node_ref(e).cloned()
}

/// [`effect_node`], borrowed.
fn effect_node_ref(e: &Effect) -> Option<&NodeName> {
    match e {
        Effect::Command(node, _) => Some(node),
        Effect::Alert(a) => Some(&a.node),
        Effect::Audit(entry) => entry.node.as_ref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale-term refusal names the term to pass when it is above this
    /// leader's, by at most [`FENCE_JUMP_MAX`]; anything else names none.
    #[test]
    fn a_stale_term_refusal_names_the_term_to_pass_within_bounds() {
        use skos_core::protocol::{ResultStatus, DETAIL_HIGHEST_TERM, REASON_STALE_TERM};
        let refusal = |status: ResultStatus, reason: &str, highest: Option<u64>| {
            let mut r: CommandResult = serde_json::from_value(json!({
                "action_id": "a", "action_type": "throttle_50", "node": "n1",
                "agent_id": "x", "status": status, "timestamp": "2026-01-01T00:00:00Z",
            }))
            .unwrap();
            r.details.insert("reason".into(), reason.into());
            if let Some(h) = highest {
                r.details.insert(DETAIL_HIGHEST_TERM.into(), h.into());
            }
            r
        };
        let stale = |h| refusal(ResultStatus::Rejected, REASON_STALE_TERM, Some(h));
        assert_eq!(fenced_out(&stale(9), Some(3)), Some(9));
        assert_eq!(fenced_out(&stale(3), Some(3)), None, "not above");
        assert_eq!(fenced_out(&stale(9), None), None, "no election");
        assert_eq!(
            fenced_out(&stale(3 + FENCE_JUMP_MAX), Some(3)),
            Some(3 + FENCE_JUMP_MAX)
        );
        assert_eq!(
            fenced_out(&stale(4 + FENCE_JUMP_MAX), Some(3)),
            None,
            "not believed"
        );
        assert_eq!(fenced_out(&stale(u64::MAX), Some(3)), None);
        assert_eq!(
            fenced_out(&refusal(ResultStatus::Rejected, "replay", Some(9)), Some(3)),
            None
        );
        assert_eq!(
            fenced_out(
                &refusal(ResultStatus::Failed, REASON_STALE_TERM, Some(9)),
                Some(3)
            ),
            None
        );
        assert_eq!(
            fenced_out(
                &refusal(ResultStatus::Rejected, REASON_STALE_TERM, None),
                Some(3)
            ),
            None
        );
    }

    /// Each node's last state event is ordered by term, then time; refusals
    /// and entries without a node do not count. A node whose record is
    /// ordered below it, missing, or sealed without an order is listed.
    #[test]
    fn a_record_older_than_its_nodes_last_audited_event_is_found() {
        let rec = |event: &str, node: Option<&str>, at: &str, term: Option<u64>| json!({"entry": {"event_type": event, "node": node, "timestamp": at, "term": term}});
        let records = vec![
            rec("alert", Some("a"), "2026-01-01T00:00:05Z", Some(2)),
            // A later term with an earlier clock is still later.
            rec("breaker", Some("a"), "2026-01-01T00:00:01Z", Some(3)),
            rec("rejected", Some("a"), "2026-01-01T00:00:09Z", Some(3)),
            rec("result", Some("b"), "2026-01-01T00:00:02Z", None),
            rec("leader", None, "2026-01-01T00:00:09Z", Some(3)),
            rec("node", Some("c"), "2026-01-01T00:00:03Z", None),
            rec("command", Some("d"), "2026-01-01T00:00:03Z", None),
            rec("command", Some("e"), "2026-01-01T00:00:03Z", None),
        ];
        let last = last_state_events(&records);
        let ms = |t: &str| skos_core::timefmt::parse(t).unwrap().timestamp_millis();
        assert_eq!(
            last["node_a"].1,
            SealOrder {
                term: 3,
                at_ms: ms("2026-01-01T00:00:01Z")
            }
        );
        assert_eq!(last.len(), 5, "{last:?}");
        let order = |term, t: &str| Some(SealOrder { term, at_ms: ms(t) });
        let orders = HashMap::from([
            // Written by term 2 after its event, but term 3 wrote since.
            ("node_a".to_string(), order(2, "2026-01-01T00:00:06Z")),
            // Written when its last event was (the same millisecond).
            ("node_b".to_string(), order(0, "2026-01-01T00:00:02Z")),
            // Written a second before its last event.
            ("node_c".to_string(), order(0, "2026-01-01T00:00:02Z")),
            ("node_d".to_string(), None),
        ]);
        let found = rollbacks(&last, &orders);
        let names = |v: &[&str]| -> Vec<NodeName> {
            v.iter().map(|n| NodeName::parse(n).unwrap()).collect()
        };
        assert_eq!(
            found,
            Rollbacks {
                older: names(&["a", "c"]),
                missing: names(&["e"]),
                unordered: names(&["d"]),
            }
        );
        assert_eq!(found.count(), 4);
    }

    #[test]
    fn large_snapshots_are_compressed_small_ones_plain_and_both_read() {
        let engine = Engine::new(Config::default(), Counters::default(), "test");
        let snap = engine.snapshot();
        let small = encode_snapshot(&snap).unwrap();
        assert!(small.starts_with(b"{"), "a small state stays plain JSON");
        assert!(decode_snapshot::<EngineSnapshot>(&small).is_ok());
        // Large enough (a few thousand bytes of JSON): compressed.
        let big: Vec<String> = (0..COMPRESS_FROM).map(|i| format!("n{i}")).collect();
        let packed = encode_snapshot(&big).unwrap();
        assert!(packed.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert_eq!(decode_snapshot::<Vec<String>>(&packed).unwrap(), big);
        // A node's record with effects waiting (about 2 KiB) is compressed
        // in the bus, kept plain in the data dir's files.
        let record: Vec<String> = (0..200).map(|i| format!("node-{i}")).collect();
        let size = serde_json::to_vec(&record).unwrap().len();
        assert!(
            (COMPRESS_FROM..COMPRESS_FILES_FROM).contains(&size),
            "{size}"
        );
        let mut bus = Scratch::default();
        let packed = encode_snapshot_in(&record, &mut bus).unwrap().to_vec();
        assert!(packed.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert!(packed.len() < size / 2, "{} of {size}", packed.len());
        assert_eq!(decode_snapshot::<Vec<String>>(&packed).unwrap(), record);
        let mut files = Scratch::compressing_from(COMPRESS_FILES_FROM);
        let plain = encode_snapshot_in(&record, &mut files).unwrap();
        assert_eq!(plain, serde_json::to_vec(&record).unwrap());
        let packed = zstd::bulk::compress(&serde_json::to_vec(&snap).unwrap(), 3).unwrap();
        assert!(decode_snapshot::<EngineSnapshot>(&packed).is_ok());
        let plain = serde_json::to_vec(&snap).unwrap();
        assert!(decode_snapshot::<EngineSnapshot>(&plain).is_ok());
        assert!(decode_snapshot::<EngineSnapshot>(b"\x28\xb5\x2f\xfdgarbage").is_err());
        // The thread's kept context reads the next record after a bad one.
        assert!(decode_snapshot::<EngineSnapshot>(&packed).is_ok());
    }

    /// The digest that skips unchanged writes is over the compressed
    /// bytes: the kept context must compress one state to the same bytes
    /// whatever it compressed before.
    #[test]
    fn a_kept_context_compresses_a_state_to_the_same_bytes_every_time() {
        let a: Vec<String> = (0..200).map(|i| format!("node-{i}")).collect();
        let b: Vec<String> = (0..40_000)
            .map(|i| format!("{:x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let mut fresh = Scratch::default();
        let first = encode_snapshot_in(&a, &mut fresh).unwrap().to_vec();
        let mut kept = Scratch::default();
        for other in [&a, &b, &a, &b] {
            encode_snapshot_in(other, &mut kept).unwrap();
            let again = encode_snapshot_in(&a, &mut kept).unwrap().to_vec();
            assert_eq!(again, first);
        }
    }

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn joined(node: &NodeName) -> AuditEntry {
        AuditEntry::new(
            skos_core::AuditEvent::Node,
            at(),
            Some(node),
            "coordinator",
            format!("node {node} joined"),
            json!({"event": "joined"}),
        )
    }

    #[test]
    fn a_nodes_record_keeps_its_effects_and_plain_snapshots_still_read() {
        let engine = Engine::new(Config::default(), Counters::default(), "test");
        let node = NodeName::parse("nova").unwrap();
        let alert: Alert = serde_json::from_value(json!({
            "alert_id": "a-1", "agent_id": "coordinator", "type": "heartbeat_missing",
            "severity": "critical", "node": "nova", "timestamp": "2023-11-14T22:13:20.000Z",
        }))
        .unwrap();
        let effects = vec![Effect::Alert(alert), Effect::Audit(joined(&node))];
        let saved = Saved {
            state: engine.node_snapshot(&node),
            effects: effects.iter().map(Kept::from).collect(),
            batch: Some(Stamp(3, 9)),
            seq: vec![Seq::Counted(3, 40), Seq::Placed(Stamp(2, 5), 1)],
            at: Vec::new(),
        };
        let bytes = encode_snapshot(&saved).unwrap();
        // Counted as [term, count], placed as [[term, write], place].
        assert!(bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "compressed");
        let fields: Value = decode_snapshot(&bytes).unwrap();
        assert_eq!(fields["seq"], json!([[3, 40], [[2, 5], 1]]));
        let back: Saved = decode_snapshot(&bytes).unwrap();
        assert_eq!(back.batch, Some(Stamp(3, 9)));
        let (_, kept) = back.split();
        let seqs: Vec<Seq> = kept.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [Seq::Counted(3, 40), Seq::Placed(Stamp(2, 5), 1)]);
        let kept: Vec<Effect> = kept.into_iter().map(|(_, e)| e).collect();
        assert_eq!(kept, effects);
        // As written (borrowed from the outbox): the same bytes.
        let snap = engine.node_snapshot(&node);
        let written = SavedRef {
            state: &snap,
            effects: effects.iter().map(KeptRef::from).collect(),
            batch: Some(Stamp(3, 9)),
            seq: vec![Seq::Counted(3, 40), Seq::Placed(Stamp(2, 5), 1)],
        };
        assert_eq!(encode_snapshot(&written).unwrap(), bytes);
        // As the version before seqs wrote it: places in its write's
        // outbox.
        let earlier = as_earlier_version(&saved, &[4, 7]);
        let (_, kept) = decode_snapshot::<Saved>(&earlier).unwrap().split();
        let seqs: Vec<Seq> = kept.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            [Seq::Placed(Stamp(3, 9), 4), Seq::Placed(Stamp(3, 9), 7)]
        );
        let command = Command {
            action_id: "nova:x:throttle_50:1:d".into(),
            action_type: "throttle_50".into(),
            parameters: Default::default(),
            timestamp: at(),
            node: Some(node.clone()),
            deadline: Some(at()),
            cause: Some("a-1".into()),
            problem: Some("thermal:cpu".into()),
            term: Some(3),
            level: None,
        };
        let effects = [Effect::Command(node.clone(), command)];
        let owned = Saved {
            state: engine.node_snapshot(&node),
            effects: effects.iter().map(Kept::from).collect(),
            batch: None,
            seq: Vec::new(),
            at: Vec::new(),
        };
        let borrowed = SavedRef {
            state: &snap,
            effects: effects.iter().map(KeptRef::from).collect(),
            batch: None,
            seq: Vec::new(),
        };
        let bytes = encode_snapshot(&owned).unwrap();
        assert_eq!(encode_snapshot(&borrowed).unwrap(), bytes);
        // Kept by an earlier version (no stamp, no places): place 0 in
        // write 0.
        let (_, kept) = decode_snapshot::<Saved>(&bytes).unwrap().split();
        assert!(matches!(
            kept.as_slice(),
            [(Seq::Placed(Stamp(0, 0), 0), Effect::Command(..))]
        ));
        // Written before effects were kept, or with none: a plain snapshot.
        let plain = encode_snapshot(&engine.node_snapshot(&node)).unwrap();
        let back: Saved = decode_snapshot(&plain).unwrap();
        assert!(back.effects.is_empty());
        assert_eq!(back.batch, None);
        // Stamps order by term, then by write.
        assert!(Stamp(3, 9) < Stamp(3, 10) && Stamp(3, 10) < Stamp(4, 0));
        let none = Saved {
            state: engine.node_snapshot(&node),
            effects: Vec::new(),
            batch: None,
            seq: Vec::new(),
            at: Vec::new(),
        };
        assert_eq!(encode_snapshot(&none).unwrap(), plain);
    }

    /// Records read back in key order hold effects kept by several
    /// writes: they are carried out in the order decided, by seq (across
    /// terms), whatever write kept them; those of earlier versions'
    /// records first, the earlier write's first, each write's by place in
    /// its outbox, records without places in the order read. Each comes
    /// back with its seq.
    #[test]
    fn kept_effects_are_carried_out_in_the_order_kept() {
        let entry = |node: &str| Effect::Audit(joined(&NodeName::parse(node).unwrap()));
        let kept = in_kept_order(vec![
            (Seq::Counted(1, 5), entry("f")),
            (Seq::Placed(Stamp(2, 8), 1), entry("a")),
            (Seq::Placed(Stamp(2, 7), 0), entry("b")),
            (Seq::Counted(2, 1), entry("h")),
            (Seq::Placed(Stamp(2, 7), 1), entry("b2")),
            (Seq::Counted(1, 3), entry("g")),
            (Seq::Placed(Stamp(2, 8), 0), entry("c")),
            (Seq::Placed(Stamp(1, 9), 0), entry("d")),
            (Seq::Placed(Stamp(1, 9), 0), entry("e")),
        ]);
        let order: Vec<String> = kept
            .iter()
            .filter_map(|q| match &q.effect {
                Effect::Audit(a) => a.node.as_ref().map(|n| n.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(order, ["d", "e", "b", "b2", "c", "a", "g", "f", "h"]);
        let seqs: Vec<Seq> = kept.iter().map(|q| q.seq).collect();
        assert_eq!(
            seqs[5..],
            [
                Seq::Placed(Stamp(2, 8), 1),
                Seq::Counted(1, 3),
                Seq::Counted(1, 5),
                Seq::Counted(2, 1)
            ]
        );
    }

    /// After a restart, effects queued come after every effect read: in
    /// a new term from 1, in the same term (or without an election) after
    /// the last count of any record, those whose effects were carried out
    /// included; effects of earlier versions' records do not count.
    #[test]
    fn effects_queued_after_a_restart_come_after_those_kept() {
        let seqs = [
            Seq::Counted(3, 7),
            Seq::Counted(3, 9),
            Seq::Counted(2, 40),
            Seq::Placed(Stamp(9, 9), 9),
        ];
        let last = last_counted(None, &seqs);
        assert_eq!(last, Some((3, 9)));
        assert_eq!(last_counted(last, &[Seq::Counted(3, 8)]), Some((3, 9)));
        assert_eq!(last_counted(None, &[Seq::Placed(Stamp(1, 1), 0)]), None);
        assert_eq!(first_seq(None, None), (0, 1));
        assert_eq!(first_seq(None, Some(4)), (4, 1));
        assert_eq!(first_seq(last, Some(4)), (4, 1));
        assert_eq!(first_seq(last, Some(3)), (3, 10));
        assert_eq!(first_seq(last, None), (3, 10));
        assert_eq!(first_seq(Some((0, 5)), None), (0, 6));
    }

    /// A state store in a new directory under `dir`.
    fn state_in(dir: &std::path::Path) -> StateStore {
        let states = dir.join("state");
        std::fs::create_dir(&states).unwrap();
        StateStore::dir(&states)
    }

    /// A `node` audit entry about `node` that says `what`, marked
    /// `"event": "noted"` to be found in the trail.
    fn noted(node: &NodeName, what: &str) -> AuditEntry {
        AuditEntry::new(
            skos_core::AuditEvent::Node,
            at(),
            Some(node),
            "coordinator",
            what,
            json!({"event": "noted"}),
        )
    }

    /// Records kept before a stop hold effects of several nodes, read back
    /// in key order, not in the order decided, and one node's record is an
    /// earlier version's: a coordinator started over them appends their
    /// records to the trail in the order decided, the earlier version's
    /// first. Through the service's own start-up, as `skos up` runs it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_appends_the_records_kept_in_the_order_decided() {
        let dir = tempfile::tempdir().unwrap();
        let state = state_in(dir.path());
        let engine = Engine::new(Config::default(), Counters::default(), "test");
        let record = |node: &NodeName, what: &str| Effect::Audit(noted(node, what));
        let [a, b, c] = ["a", "b", "c"].map(|n| NodeName::parse(n).unwrap());
        let kept = [
            (&a, [("second", 2), ("fourth", 4)], Stamp(2, 3)),
            (&b, [("first", 1), ("third", 3)], Stamp(2, 1)),
        ];
        for (node, effects, stamp) in kept {
            let saved = Saved {
                state: engine.node_snapshot(node),
                effects: effects
                    .iter()
                    .map(|(what, _)| Kept::from(&record(node, what)))
                    .collect(),
                batch: Some(stamp),
                seq: effects.iter().map(|(_, n)| Seq::Counted(2, *n)).collect(),
                at: Vec::new(),
            };
            let bytes = encode_snapshot(&saved).unwrap();
            state.save(&node_key(node), bytes).await.unwrap();
        }
        let earlier = Saved {
            state: engine.node_snapshot(&c),
            effects: vec![Kept::from(&record(&c, "zeroth"))],
            batch: Some(Stamp(1, 7)),
            seq: Vec::new(),
            at: Vec::new(),
        };
        let bytes = as_earlier_version(&earlier, &[0]);
        state.save(&node_key(&c), bytes).await.unwrap();

        let trail = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open_file(&trail).unwrap());
        let summaries = || -> Vec<String> {
            let text = std::fs::read_to_string(&trail).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|r| r["entry"]["data"]["event"] == "noted")
                .filter_map(|r| r["entry"]["summary"].as_str().map(String::from))
                .collect()
        };
        let appended = async {
            for _ in 0..500 {
                if summaries().len() >= 5 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        run_in_proc(
            Bus::InProc(skos_bus::InProcBus::new()),
            audit,
            state,
            appended,
        )
        .await;
        assert_eq!(
            summaries(),
            ["zeroth", "first", "second", "third", "fourth"]
        );
    }

    /// Records read at start: a's effect is covered by the carried marker
    /// and holds count 9; d's is past the marker but already in the trail
    /// and holds 7; b's waits and holds 2. An effect decided after the
    /// restart (an alert about c) counts after 9, through the service's
    /// own start-up. Counting on from the effects restored alone gave it
    /// 3.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn effects_decided_after_a_restart_count_after_every_record_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = state_in(dir.path());
        let engine = Engine::new(Config::default(), Counters::default(), "test");
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| NodeName::parse(n).unwrap());
        for (node, what, n, stamp) in [
            (&a, "covered", 9, Stamp(0, 3)),
            (&d, "audited", 7, Stamp(0, 5)),
            (&b, "waiting", 2, Stamp(0, 4)),
        ] {
            let saved = Saved {
                state: engine.node_snapshot(node),
                effects: vec![Kept::from(&Effect::Audit(noted(node, what)))],
                batch: Some(stamp),
                seq: vec![Seq::Counted(0, n)],
                at: Vec::new(),
            };
            let bytes = encode_snapshot(&saved).unwrap();
            state.save(&node_key(node), bytes).await.unwrap();
        }
        let marker = Bytes::from(serde_json::to_vec(&Stamp(0, 3)).unwrap());
        state.save(CARRIED_KEY, marker).await.unwrap();
        let trail = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open_file(&trail).unwrap());
        audit.append(noted(&d, "audited")).await.unwrap();
        let bus = skos_bus::InProcBus::new();
        let alert: Alert = serde_json::from_value(json!({
            "alert_id": "c-1", "agent_id": "agent", "type": "cpu_high",
            "severity": "warning", "node": "c", "timestamp": chrono::Utc::now(),
        }))
        .unwrap();
        let (reader, sender) = (state.clone(), Bus::InProc(bus.clone()));
        let seen = Arc::new(std::sync::Mutex::new(None));
        let got = seen.clone();
        // Until c's record keeps the alert's effects.
        let kept = async move {
            for i in 0..500 {
                if i % 10 == 0 {
                    let _ = sender.publish_alert(&alert).await;
                }
                if let Ok(Some(bytes)) = reader.load(&node_key(&c)).await {
                    if let Ok(saved) = decode_snapshot::<Saved>(&bytes) {
                        if !saved.seq.is_empty() {
                            *got.lock().unwrap() = Some(saved.seq);
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        run_in_proc(Bus::InProc(bus), audit, state, kept).await;
        let seqs = seen
            .lock()
            .unwrap()
            .clone()
            .expect("c's record kept effects");
        assert!(seqs.iter().all(|s| *s > Seq::Counted(0, 9)), "{seqs:?}");
    }

    /// Run the service with the defaults over `bus`, `audit` and `state`
    /// until `until` is done.
    async fn run_in_proc(
        bus: Bus,
        audit: Arc<AuditLog>,
        state: StateStore,
        until: impl Future<Output = ()> + Send,
    ) {
        run(
            Config::default(),
            bus,
            audit,
            state,
            Counters::default(),
            ServiceOptions::default(),
            until,
        )
        .await
        .expect("the service ran");
    }

    /// Run the service (an in-process bus, `state`, the trail at `trail`)
    /// until the trail contains `text`, for at most 10 s: whether it did
    /// before the service stopped.
    async fn run_until_audited(
        state: StateStore,
        audit: Arc<AuditLog>,
        trail: &std::path::Path,
        text: &'static str,
    ) -> bool {
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let said = seen.clone();
        let trail = trail.to_path_buf();
        let until = async move {
            for _ in 0..500 {
                let written = std::fs::read_to_string(&trail).unwrap_or_default();
                if written.contains(text) {
                    said.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        run_in_proc(Bus::InProc(skos_bus::InProcBus::new()), audit, state, until).await;
        seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What a leader held for its minute's summaries is in the saved
    /// state when it stops without summing it up (killed, deposed): the
    /// next leader sums it up once its minute has ended, and a summary the
    /// trail holds already is not written again. Before, held refusals
    /// and drops lived in memory only, and were lost with the leader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_stopped_leader_held_is_summed_up_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let state = state_in(dir.path());
        let then = chrono::Utc::now() - chrono::Duration::seconds(120);
        let mut held = HeldRecord::default();
        for _ in 0..15 {
            held.refusals
                .note("alert", "skos.alert.n1", "malformed", 5, then);
        }
        let later = then + chrono::Duration::seconds(1);
        for i in 0..12u64 {
            held.drops.note("alert", &[i * 10..=i * 10], later);
        }
        let bytes = Bytes::from(serde_json::to_vec(&held).unwrap());
        state.save(HELD_KEY, bytes).await.unwrap();
        // The drops' summary reached the trail before the stop.
        let trail = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open_file(&trail).unwrap());
        audit
            .append(AuditEntry::new(
                skos_core::AuditEvent::Dropped,
                later,
                None,
                "coordinator",
                "2 more alerts dropped",
                json!({"feed": "alert", "dropped": 2, "since": skos_core::timefmt::format(&later)}),
            ))
            .await
            .unwrap();
        let events = |kind: &str| -> Vec<Value> {
            std::fs::read_to_string(&trail)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|r| r["entry"].clone())
                .filter(|e| e["event_type"] == kind)
                .collect()
        };
        // Summed up while leading, before the stop (which would sum up
        // what is held anyway).
        let summed =
            run_until_audited(state.clone(), audit, &trail, "more alert messages rejected").await;
        assert!(summed, "not summed up while leading");
        let rejected = events("rejected");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0]["data"]["held"], 5);
        assert_eq!(rejected[0]["data"]["audited_one_by_one"], 10);
        assert_eq!(events("dropped").len(), 1, "summed up twice");
        // And the saved record no longer holds them.
        let left: HeldRecord =
            serde_json::from_slice(&state.load(HELD_KEY).await.unwrap().unwrap()).unwrap();
        assert!(left.refusals.is_empty() && left.drops.is_empty() && left.summaries.is_empty());
    }

    /// Summaries queued by a leader that stopped before they were
    /// appended are kept in the saved state: the next leader appends
    /// those the trail does not hold, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn summaries_queued_before_a_stop_are_appended_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = state_in(dir.path());
        let then = at();
        let summary = |feed: &str, what: &str| {
            AuditEntry::new(
                skos_core::AuditEvent::Rejected,
                then,
                None,
                "coordinator",
                what,
                json!({"feed": feed, "held": 3, "since": skos_core::timefmt::format(&then)}),
            )
        };
        let held = HeldRecord {
            summaries: vec![
                summary("alert", "appended before"),
                summary("result", "not appended"),
            ],
            ..HeldRecord::default()
        };
        let bytes = Bytes::from(serde_json::to_vec(&held).unwrap());
        state.save(HELD_KEY, bytes).await.unwrap();
        let trail = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open_file(&trail).unwrap());
        audit
            .append(summary("alert", "appended before"))
            .await
            .unwrap();
        assert!(run_until_audited(state, audit, &trail, "not appended").await);
        let text = std::fs::read_to_string(&trail).unwrap();
        assert_eq!(text.matches("appended before").count(), 1, "{text}");
        assert_eq!(text.matches("not appended").count(), 1, "{text}");
    }

    /// An append gives back the records it does not know stored, the last
    /// ones sent: each takes back the seq it was queued under.
    #[test]
    fn records_given_back_by_an_append_keep_their_seqs() {
        let entry = |node: &str| joined(&NodeName::parse(node).unwrap());
        let sent = [Seq::Counted(1, 4), Seq::Counted(1, 6), Seq::Counted(1, 9)];
        let back = given_back(&sent, vec![entry("b"), entry("c")]);
        let seqs: Vec<Seq> = back.iter().map(|q| q.seq).collect();
        assert_eq!(seqs, [Seq::Counted(1, 6), Seq::Counted(1, 9)]);
        assert!(
            matches!(&back[0].effect, Effect::Audit(e) if e.node.as_ref().is_some_and(|n| n.as_str() == "b"))
        );
        assert!(given_back(&sent, Vec::new()).is_empty());
        // More than were sent (not done by the trail): the extra ones go
        // first, under the first seq.
        let seqs: Vec<Seq> = given_back(&sent[..1], vec![entry("a"), entry("b")])
            .iter()
            .map(|q| q.seq)
            .collect();
        assert_eq!(seqs, [Seq::Counted(1, 4), Seq::Counted(1, 4)]);
    }

    #[test]
    fn an_entry_is_found_in_the_trail_whatever_its_term() {
        let node = NodeName::parse("nova").unwrap();
        let entry = joined(&node);
        let mut written = entry.clone();
        written.term = Some(7);
        let record = json!({"seq": 3, "prev_hash": "x", "hash": "y", "entry": written});
        let mut trail = Written::default();
        trail.insert(&record["entry"]);
        assert!(trail.contains(&entry));
        let mut other = entry.clone();
        other.summary = "node nova joined again".into();
        assert!(!trail.contains(&other));
    }
}
