//! The audit trail: every alert, decision, command, result and verification,
//! hash-chained (see `skos_core::audit`).
//!
//! Two stores: the JetStream stream `SKOS_AUDIT` (created with deny-delete
//! and deny-purge; each record published with the expected last stream
//! sequence, so two writers cannot fork the chain), or an append-only JSON
//! lines file (embedded mode), fsynced after each record and locked against
//! a second writer.

use skos_core::escape::ShowPath;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde_json::Value;
use skos_core::audit::{AuditRecord, Chain, ChainError, Verifier};
use skos_core::AuditEntry;
use tokio::sync::Mutex;

use std::sync::Arc;

use crate::{subjects, trust, Error, NatsBus, Result};

pub mod check;
pub mod segments;
pub use check::{Checkpoint, TrailReplaced, TrailReport, TrailSeen};
pub use segments::Policy;

pub enum AuditStore {
    File {
        path: PathBuf,
        file: File,
        segs: Box<Segments>,
    },
    JetStream(Box<StreamWriter>),
}

/// When the server made a stream (`stream::Info::created`, nanoseconds
/// since the epoch): its identity. The same name made at another time is
/// another stream, the one before it deleted.
type Made = i128;

/// How often a JetStream writer asks whether the stream is still the one it
/// writes, besides after every refused append.
const IDENTITY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A writer of the `SKOS_AUDIT` stream: where its next message goes, and
/// which stream it writes.
pub struct StreamWriter {
    js: jetstream::Context,
    /// The stream's last message sequence, as this writer last knew it.
    last_stream_seq: u64,
    /// When the server made the stream this writer writes: another value
    /// means the stream was deleted and made again ([`StreamWriter::resync`]).
    made: Made,
    /// When `made` was last compared with the server's.
    checked: std::time::Instant,
    signing: Option<Box<Signing>>,
    /// The `max_age` to make the stream with again, if it is gone.
    retention: std::time::Duration,
}

/// How a coordinator signs the JetStream trail: every message it writes is
/// signed ([`trust::Signer::sign_audit`]); the chain continues only from a
/// message signed by a trusted key, so a record a stranger published on
/// `SKOS_AUDIT.*` is never built upon.
pub struct Signing {
    pub signer: Arc<trust::Signer>,
    /// The signer's own key and the other coordinators' (for a takeover).
    pub trusted: trust::Verifier,
}

impl Signing {
    /// Sign with `signer`; trust it and `others` (public keys, as
    /// `trust.coordinator_keys` lists them).
    pub fn new(signer: Arc<trust::Signer>, others: &[String]) -> Result<Self> {
        let mut keys = others.to_vec();
        keys.push(signer.public_key());
        Ok(Self {
            trusted: trust::Verifier::new(&keys, true)?,
            signer,
        })
    }
}

/// The file store's segments: where they go, the policy, and the live
/// file's oldest record time (rotation by age).
pub struct Segments {
    dir: skos_fs::Dir,
    policy: Policy,
    oldest: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where a rotation stops early: a test's crash between two steps.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateStop {
    /// After the segment file is in place, before its seal is recorded.
    AfterSegment,
    /// After the seal is recorded, before the live file is cut.
    AfterSeal,
    /// Not at all.
    Never,
}

/// The writer side of the audit trail.
pub struct AuditLog {
    inner: Mutex<(AuditStore, Chain)>,
    /// The writing coordinator's term: stamped on every entry without one,
    /// and the fence: once a record of a higher term is in the stream,
    /// appends from this writer fail with [`Error::Deposed`].
    term: std::sync::Mutex<Option<u64>>,
    /// Put before every entry's summary (`[demo]`), so no record of a
    /// sandbox can be taken for a real one.
    label: Option<String>,
}

/// A failed [`AuditLog::append_many`]: why, and the entries of the batch
/// not known to be stored, in order (some may be stored all the same when
/// an answer was lost: the caller checks the trail's tail before it tries
/// them again).
#[derive(Debug)]
pub struct AppendFailed {
    pub error: Error,
    pub entries: Vec<AuditEntry>,
}

/// What `verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    pub records: u64,
    pub error: Option<ChainError>,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn stream_err(reason: impl ToString) -> Error {
    Error::Stream {
        stream: subjects::STREAM_AUDIT.to_string(),
        reason: reason.to_string(),
    }
}

impl AuditLog {
    /// Open (or create) the audit file. A torn last line (a crash in the
    /// middle of a write) is cut off and the cut is itself recorded.
    ///
    /// Its directory is a private one ([`skos_fs::Dir::private`]: created
    /// `0700`, refused when another user owns it or others may write it);
    /// the file is opened through that directory's handle, never through a
    /// symlink, created `0600`, and refused when hard-linked or another
    /// user's.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open_file_with(path, Policy::default())
    }

    /// [`AuditLog::open_file`], sealing old records into segments and
    /// expiring segments by `policy` ([`segments`]). A rotation a crash
    /// interrupted is completed here; a live file with no record (removed)
    /// continues the chain from the newest segment.
    pub fn open_file_with(path: &Path, policy: Policy) -> Result<Self> {
        let mut file = skos_fs::append_private(path)?;
        file.try_lock().map_err(|e| Error::Corrupt {
            path: path.escaped().to_string(),
            reason: format!("locked by another SKOS process: {e}"),
        })?;
        let (last, good_len, total_len) = scan_file(path)?;
        let mut torn = None;
        if good_len < total_len {
            file.set_len(good_len).map_err(|e| io(path, e))?;
            file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
            torn = Some(total_len - good_len);
        }
        let mut chain = Chain::resume(last.as_ref());
        if last.is_none() {
            if let Some(newest) = segments::list(path)?.pop() {
                let h = segments::header(&newest.path)?;
                chain = Chain::after(h.last_seq, &h.last_hash);
            }
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let segs = Box::new(Segments {
            dir: skos_fs::Dir::private(dir)?,
            policy,
            oldest: first_record(path)?.map(|r| r.entry.timestamp),
        });
        let log = Self {
            inner: Mutex::new((
                AuditStore::File {
                    path: path.to_path_buf(),
                    file,
                    segs,
                },
                chain,
            )),
            term: std::sync::Mutex::new(None),
            label: None,
        };
        if let Some(bytes) = torn {
            tracing::warn!(path = %path.escaped(), bytes, "cut a torn record off the end of the audit file");
            log.append_blocking(AuditEntry::new(
                skos_core::AuditEvent::AuditRecovered,
                chrono::Utc::now(),
                None,
                "audit",
                format!("cut {bytes} bytes of a torn record off the audit file"),
                serde_json::json!({ "bytes": bytes }),
            ))?;
        }
        {
            let mut guard = log.inner.try_lock().map_err(|_| Error::Closed)?;
            let (store, chain) = &mut *guard;
            if let AuditStore::File { path, file, segs } = store {
                remove_leftovers(path, segs)?;
                recover(path, file, chain, segs)?;
                if segs.due(file, chrono::Utc::now()) {
                    rotate(path, file, chain, segs, RotateStop::Never)?;
                }
                expire(path, file, chain, segs, chrono::Utc::now())?;
            }
        }
        Ok(log)
    }

    /// Seal the live file into a segment now, whatever its size (and
    /// expire what the policy says); whether a segment was written. A file
    /// trail only: the stream's records age out by its `max_age`.
    pub async fn rotate_now(&self) -> Result<bool> {
        self.rotate_stopping(RotateStop::Never).await
    }

    /// Write an `audit_checkpoint` record on the stream (a leader, at the
    /// start of its term and periodically, when the stream ages records
    /// out by `max_age`): it names the chain's head before it (seq, hash)
    /// and when the stream stored that head's message, so `skos audit
    /// verify` can tell records aged out by the stream's `max_age` from
    /// records purged ([`check::verify_jetstream_within`]). On a file
    /// trail it writes nothing (its expiry is recorded by `audit_expired`).
    pub async fn checkpoint(&self, max_age: std::time::Duration) -> Result<Option<AuditRecord>> {
        let (head_seq, head_hash, head_time) = {
            let guard = self.inner.lock().await;
            let (store, chain) = &*guard;
            let AuditStore::JetStream(w) = store else {
                return Ok(None);
            };
            let mut time = None;
            if w.last_stream_seq > 0 {
                if let Ok(s) = w.js.get_stream(subjects::STREAM_AUDIT).await {
                    if let Ok(m) = s.get_raw_message(w.last_stream_seq).await {
                        time = chrono::DateTime::from_timestamp(
                            m.time.unix_timestamp(),
                            m.time.nanosecond(),
                        );
                    }
                }
            }
            (chain.next_seq() - 1, chain.last_hash().to_string(), time)
        };
        let data = check::CheckpointData {
            head_seq,
            head_hash,
            head_stored: head_time,
            max_age_seconds: max_age.as_secs(),
        };
        let entry = AuditEntry::new(
            skos_core::AuditEvent::AuditCheckpoint,
            chrono::Utc::now(),
            None,
            "coordinator",
            format!(
                "checkpoint: the trail's head is seq {head_seq}; records older than {} days age out of the stream",
                max_age.as_secs() / 86_400
            ),
            serde_json::to_value(&data).unwrap_or_default(),
        );
        self.append(entry).await.map(Some)
    }

    /// Ask now whether the stream written is still the one opened, as
    /// appends do every [`IDENTITY_EVERY`] (a replacement found is
    /// recorded). Nothing on a file trail.
    #[doc(hidden)]
    pub async fn check_stream_now(&self) -> Result<()> {
        let term = self.current_term();
        let mut guard = self.inner.lock().await;
        let (store, chain) = &mut *guard;
        match store {
            AuditStore::JetStream(w) => w.check_made(self, term, chain, true).await,
            AuditStore::File { .. } => Ok(()),
        }
    }

    /// [`AuditLog::rotate_now`], stopping after `stop` (a test's crash).
    #[doc(hidden)]
    pub async fn rotate_stopping(&self, stop: RotateStop) -> Result<bool> {
        let term = self.current_term();
        let mut guard = self.inner.lock().await;
        let (store, chain) = &mut *guard;
        match store {
            AuditStore::File { path, file, segs } => {
                let (path, file) = (&*path, &mut *file);
                tokio::task::block_in_place(|| {
                    // The file sealed is the one written: one put in its
                    // place is found (and recorded) first.
                    keep_live(self, term, path, file, chain, segs)?;
                    let wrote = rotate(path, file, chain, segs, stop)?;
                    if stop == RotateStop::Never {
                        expire(path, file, chain, segs, chrono::Utc::now())?;
                    }
                    Ok(wrote)
                })
            }
            AuditStore::JetStream { .. } => Ok(false),
        }
    }

    /// Open the JetStream audit stream and continue its chain, unsigned.
    pub async fn open_jetstream(bus: &NatsBus) -> Result<Self> {
        Self::open_jetstream_signed(bus, None).await
    }

    /// Open the JetStream audit stream and continue its chain from its last
    /// message signed by a trusted key (with `signing`; without, from its
    /// last record), signing every message written.
    pub async fn open_jetstream_signed(bus: &NatsBus, signing: Option<Signing>) -> Result<Self> {
        let js = bus.jetstream().clone();
        let signing = signing.map(Box::new);
        let tail = last_record(&js, signing.as_deref())
            .await?
            .ok_or_else(|| stream_err("does not exist (a coordinator makes it when it starts)"))?;
        Ok(Self {
            inner: Mutex::new((
                AuditStore::JetStream(Box::new(StreamWriter {
                    js,
                    last_stream_seq: tail.last_seq,
                    made: tail.made,
                    checked: std::time::Instant::now(),
                    signing,
                    retention: bus.audit_max_age(),
                })),
                Chain::resume(tail.record.as_ref()),
            )),
            term: std::sync::Mutex::new(None),
            label: None,
        })
    }

    /// The last `n` records, oldest first (used to rebuild state after a
    /// restart). From a file, only its tail is read ([`read_file_tail`]).
    pub async fn read_recent(&self, n: u64) -> Result<Vec<Value>> {
        let guard = self.inner.lock().await;
        match &guard.0 {
            AuditStore::File { path, .. } => read_file_tail(path, n),
            // Only what trusted keys signed: a stranger's records never
            // mark an alert handled or a command sent.
            AuditStore::JetStream(w) => {
                read_js(&w.js, Some(n), w.signing.as_deref().map(|s| &s.trusted)).await
            }
        }
    }

    fn append_blocking(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let mut guard = self.inner.try_lock().map_err(|_| Error::Closed)?;
        let (store, chain) = &mut *guard;
        match store {
            AuditStore::File { path, file, .. } => append_file(path, file, chain, entry),
            AuditStore::JetStream { .. } => Err(Error::Closed),
        }
    }

    /// Where the trail is written: the file's path, or the stream.
    pub async fn location(&self) -> String {
        match &self.inner.lock().await.0 {
            AuditStore::File { path, .. } => path.escaped().to_string(),
            AuditStore::JetStream { .. } => format!("stream {}", subjects::STREAM_AUDIT),
        }
    }

    /// Every entry written from now on with `label` before its summary
    /// (`skos demo` labels its sandbox's trail `[demo]`).
    pub fn labelled(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// `entry` as written: under the writer's term, with its label.
    fn stamp(&self, mut entry: AuditEntry, term: Option<u64>) -> AuditEntry {
        if entry.term.is_none() {
            entry.term = term;
        }
        if let Some(l) = &self.label {
            if !entry.summary.starts_with(l.as_str()) {
                entry.summary = format!("{l} {}", entry.summary);
            }
        }
        entry
    }

    /// Write later entries under `term` (`None`: no leader election).
    pub fn set_term(&self, term: Option<u64>) {
        if let Ok(mut t) = self.term.lock() {
            *t = term;
        }
    }

    fn current_term(&self) -> Option<u64> {
        self.term.lock().ok().and_then(|t| *t)
    }

    /// Append several entries, in order, as one batch: on the file store
    /// written together and fsynced once; on JetStream published back to
    /// back, each with the expected last sequence of the one before it, and
    /// their acks awaited together. If another writer got in, the stored
    /// prefix is kept and the rest goes through [`AuditLog::append`] one by
    /// one (which re-reads the tail, reseals, and fences a deposed leader).
    /// If an ack does not come (the server went away), the stored prefix is
    /// kept and the error returned: the rest may be stored all the same, so
    /// the caller checks the trail's tail before it tries again. A failure
    /// gives back the entries not known to be stored ([`AppendFailed`]),
    /// so the caller need not keep a copy of the batch.
    pub async fn append_many(&self, entries: Vec<AuditEntry>) -> Result<(), AppendFailed> {
        let term = self.current_term();
        let entries: Vec<AuditEntry> = entries.into_iter().map(|e| self.stamp(e, term)).collect();
        let rest = if entries.len() <= 1 {
            entries
        } else {
            let mut guard = self.inner.lock().await;
            let (store, chain) = &mut *guard;
            match store {
                AuditStore::File { path, file, segs } => {
                    let (path, file) = (&*path, &mut *file);
                    let back = entries.clone();
                    return tokio::task::block_in_place(|| {
                        keep_live(self, term, path, file, chain, segs)?;
                        append_file_many(path, file, chain, entries)?;
                        after_append(path, file, chain, segs);
                        Ok(())
                    })
                    .map_err(|error| AppendFailed {
                        error,
                        entries: back,
                    });
                }
                AuditStore::JetStream(w) => {
                    if let Err(error) = w.check_made(self, term, chain, false).await {
                        return Err(AppendFailed { error, entries });
                    }
                    w.publish_batch(chain, entries).await?
                }
            }
        };
        // Refused because another writer got in: sealed again on the new
        // tail (a newer leader's record fences this writer off), as a batch
        // while few tries have failed, then one by one.
        let mut rest = rest;
        let mut tries = 0;
        while rest.len() > 1 && tries < 3 {
            tries += 1;
            let mut guard = self.inner.lock().await;
            let (store, chain) = &mut *guard;
            let AuditStore::JetStream(w) = store else {
                break;
            };
            tracing::warn!(
                entries = rest.len(),
                "audit batch raced, re-reading the stream tail"
            );
            if let Err(error) = w.resync(self, term, chain).await {
                return Err(AppendFailed {
                    error,
                    entries: rest,
                });
            }
            rest = w.publish_batch(chain, rest).await?;
        }
        let mut rest = rest.into_iter();
        while let Some(e) = rest.next() {
            let back = e.clone();
            if let Err(error) = self.append(e).await {
                let mut entries = vec![back];
                entries.extend(rest);
                return Err(AppendFailed { error, entries });
            }
        }
        Ok(())
    }

    /// Append one entry. On JetStream, a refusal because another writer
    /// got in re-reads the tail and reseals (a newer leader's record fails
    /// it with [`Error::Deposed`]); a publish without an answer is an error,
    /// though the entry may be in the stream all the same.
    pub async fn append(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let term = self.current_term();
        let entry = self.stamp(entry, term);
        let mut guard = self.inner.lock().await;
        let (store, chain) = &mut *guard;
        match store {
            AuditStore::File { path, file, segs } => {
                let (path, file) = (&*path, &mut *file);
                tokio::task::block_in_place(|| {
                    keep_live(self, term, path, file, chain, segs)?;
                    let record = append_file(path, file, chain, entry)?;
                    after_append(path, file, chain, segs);
                    Ok(record)
                })
            }
            AuditStore::JetStream(w) => {
                w.check_made(self, term, chain, false).await?;
                let mut attempts = 0;
                loop {
                    match w.publish_one(chain, entry.clone()).await {
                        Ok(record) => return Ok(record),
                        // Someone else wrote (another coordinator, or a
                        // stray publisher), or the stream is gone: not
                        // stored; re-read the tail and reseal. Any other
                        // failure is returned: without an answer the entry
                        // may be stored all the same, and resealing it here
                        // could write it twice.
                        Err(Unstored::Refused(e)) if attempts < 3 => {
                            attempts += 1;
                            tracing::warn!(error = %e, "audit append refused, re-reading the stream tail");
                            w.resync(self, term, chain).await?;
                        }
                        Err(Unstored::Refused(e) | Unstored::Failed(e)) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Most bytes of records one audit message holds (well under the server's
/// default 1 MiB payload). A record larger than this goes alone.
const MESSAGE_BYTES: usize = 256 * 1024;

/// The records of one audit message, sealed on the chain: a lone record is
/// published as itself on its event's subject
/// (`SKOS_AUDIT.<event_type>`); two or more as a JSON array of records on
/// [`subjects::AUDIT_BATCH`]. Readers take both ([`records_of`]).
struct Sealed {
    subject: String,
    payload: Bytes,
    /// The last record's hash: the message id.
    last_hash: String,
    /// The last record's sequence number.
    last_seq: u64,
    /// The entries sealed, given back if the message is not stored.
    entries: Vec<AuditEntry>,
}

impl Sealed {
    /// Seal entries from `entries` onto `chain` until the message holds
    /// [`MESSAGE_BYTES`] (at least one entry). An entry that cannot be
    /// serialised fails with the entries sealed so far, itself included.
    #[allow(clippy::result_large_err)]
    fn next(
        chain: &mut Chain,
        entries: &mut std::iter::Peekable<impl Iterator<Item = AuditEntry>>,
    ) -> std::result::Result<Self, (Error, Vec<AuditEntry>)> {
        let mut payload = Vec::new();
        let mut taken = Vec::new();
        let mut first_subject = None;
        let mut last_hash = String::new();
        let mut last_seq = 0;
        while let Some(entry) = entries.next_if(|_| payload.len() < MESSAGE_BYTES) {
            payload.push(if taken.is_empty() { b'[' } else { b',' });
            let record = match chain.seal_to(entry, &mut payload) {
                Ok(record) => record,
                Err((e, entry)) => {
                    taken.push(*entry);
                    return Err((stream_err(e), taken));
                }
            };
            if first_subject.is_none() {
                first_subject = Some(subjects::audit(&record.entry.event_type));
            }
            last_hash = record.hash;
            last_seq = record.seq;
            taken.push(record.entry);
        }
        let subject = if taken.len() == 1 {
            // One record: as itself, without the brackets.
            payload.remove(0);
            first_subject.unwrap_or_else(|| subjects::AUDIT_BATCH.to_string())
        } else {
            payload.push(b']');
            subjects::AUDIT_BATCH.to_string()
        };
        Ok(Self {
            subject,
            payload: Bytes::from(payload),
            last_hash,
            last_seq,
            entries: taken,
        })
    }
}

/// The records one audit message holds, in order: a lone record (a JSON
/// object) or a batch (a JSON array of records). A payload that is neither
/// is an error; a batch's elements are given as they are (the chain's
/// [`Verifier`] judges each).
pub fn records_of(payload: &[u8]) -> std::result::Result<Vec<Value>, serde_json::Error> {
    match serde_json::from_slice::<Value>(payload)? {
        Value::Array(records) => Ok(records),
        record => Ok(vec![record]),
    }
}

/// The records an audit message holds, each as its text stands in
/// `payload` ([`records_of`], not parsed further): what the verifier
/// hashes ([`skos_core::audit::entry_text`]).
pub fn record_texts_of(
    payload: &[u8],
) -> std::result::Result<Vec<&serde_json::value::RawValue>, serde_json::Error> {
    if payload.trim_ascii_start().first() == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        Ok(vec![serde_json::from_slice(payload)?])
    }
}

/// The last record an audit message holds, if its last element is one of
/// ours (a batch ending in anything else is not ours).
fn last_record_of(payload: &[u8]) -> Option<AuditRecord> {
    let texts = record_texts_of(payload).ok()?;
    serde_json::from_str(texts.last()?.get()).ok()
}

/// `publish` with the signature headers of an audit message on `subject`
/// whose last record is `last_seq` with `last_hash` (unchanged without
/// `signing`).
fn signed(
    publish: jetstream::message::PublishMessage,
    signing: Option<&Signing>,
    subject: &str,
    stream_seq: u64,
    last_seq: u64,
    last_hash: &str,
) -> Result<jetstream::message::PublishMessage> {
    let Some(signing) = signing else {
        return Ok(publish);
    };
    let headers = signing
        .signer
        .sign_audit(subject, stream_seq, last_seq, last_hash)?;
    Ok(headers.into_iter().fold(publish, |p, (name, value)| {
        p.header(name.as_str(), value.as_str())
    }))
}

/// Whether a publish was refused, not stored: another writer got in (the
/// expected last sequence or message id did not hold), or the stream is
/// gone.
fn refused(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::WrongLastSequence
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::StreamNotFound
    )
}

/// Why one audit message was not stored.
enum Unstored {
    /// Refused ([`refused`]): not stored.
    Refused(Error),
    /// No answer, or another failure: it may be stored all the same.
    Failed(Error),
}

impl StreamWriter {
    /// Seal `entry` on `chain` and publish it right after the stream's
    /// message `last_stream_seq`; both advance when it is stored.
    async fn publish_one(
        &mut self,
        chain: &mut Chain,
        entry: AuditEntry,
    ) -> Result<AuditRecord, Unstored> {
        let mut trial = chain.clone();
        let mut payload = Vec::new();
        let record = trial
            .seal_to(entry, &mut payload)
            .map_err(|(e, _)| Unstored::Failed(stream_err(e)))?;
        let subject = subjects::audit(&record.entry.event_type);
        // Stored right after the stream's last message, or not at all.
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .expected_last_sequence(self.last_stream_seq);
        let publish = signed(
            publish,
            self.signing.as_deref(),
            &subject,
            self.last_stream_seq + 1,
            record.seq,
            &record.hash,
        )
        .map_err(Unstored::Failed)?;
        let ack = match self.js.send_publish(subject.clone(), publish).await {
            Ok(f) => f.await,
            Err(e) => return Err(Unstored::Failed(Error::subject(&subject, e))),
        };
        match ack {
            Ok(ack) => {
                *chain = trial;
                self.last_stream_seq = ack.sequence;
                Ok(record)
            }
            Err(e) if refused(e.kind()) => Err(Unstored::Refused(Error::subject(&subject, e))),
            Err(e) => Err(Unstored::Failed(Error::subject(&subject, e))),
        }
    }

    /// Every [`IDENTITY_EVERY`], ask whether the stream is still the one
    /// written: one deleted and made again with as many messages as this
    /// writer last knew would take its appends without a refusal.
    async fn check_made(
        &mut self,
        log: &AuditLog,
        term: Option<u64>,
        chain: &mut Chain,
        now: bool,
    ) -> Result<()> {
        if !now && self.checked.elapsed() < IDENTITY_EVERY {
            return Ok(());
        }
        match stream_made(&self.js).await {
            Ok(Some((made, last))) if made == self.made && last >= self.last_stream_seq => {
                self.checked = std::time::Instant::now();
                Ok(())
            }
            Ok(_) => self.resync(log, term, chain).await,
            // The append tells.
            Err(e) => {
                tracing::debug!(error = %e, "audit stream not looked at");
                Ok(())
            }
        }
    }

    /// Continue the chain from the stream's tail, unless a newer leader
    /// wrote it ([`Error::Deposed`]: fencing). The chain never goes back:
    /// with no record of its own to build on in the stream (all aged out,
    /// or none trusted), this writer continues its own.
    ///
    /// A stream that is not the one written (gone, made at another time,
    /// or holding fewer messages than this writer wrote) was replaced: its
    /// records up to this writer's head are lost from the trail. The
    /// stream is made again if it is gone, and an `audit_trail_replaced`
    /// record naming the head and both streams is written first, on the
    /// chain continued from this writer's head, so `skos audit verify`
    /// names the loss. Where the new stream already holds a later record
    /// of the chain, another writer carried on past this one (and recorded
    /// the replacement): this writer continues from it.
    async fn resync(&mut self, log: &AuditLog, term: Option<u64>, chain: &mut Chain) -> Result<()> {
        let signing = self.signing.as_deref();
        let (mut tail, mut remade) = match last_record(&self.js, signing).await? {
            Some(tail) => (tail, false),
            None => {
                tracing::error!(
                    stream = subjects::STREAM_AUDIT,
                    head_seq = chain.next_seq() - 1,
                    "the audit stream is gone: made again; the records it held are recorded lost"
                );
                crate::nats::ensure_audit_stream(&self.js, self.retention).await?;
                let tail = last_record(&self.js, signing)
                    .await?
                    .ok_or_else(|| stream_err("gone again as soon as it was made"))?;
                (tail, true)
            }
        };
        let newer = tail.record.as_ref().and_then(|r| r.entry.term);
        if let (Some(mine), Some(newer)) = (term, newer) {
            if newer > mine {
                return Err(Error::Deposed { term: mine, newer });
            }
        }
        self.checked = std::time::Instant::now();
        let replaced = remade || tail.made != self.made || tail.last_seq < self.last_stream_seq;
        if replaced && !remade && crate::nats::lock_audit_stream(&self.js, self.retention).await {
            // Made by someone else: locked as SKOS makes it, or the next
            // deletion goes unseen too; one that keeps no records was made
            // again (it held none).
            tail = last_record(&self.js, signing)
                .await?
                .ok_or_else(|| stream_err("gone again as soon as it was made"))?;
            remade = true;
        }
        // Messages the stream took since this writer's last: a record
        // carrying the chain on lies at most that many records past its
        // head (one further is forged, or of another chain).
        let grown = if replaced {
            tail.last_seq
        } else {
            tail.last_seq.saturating_sub(self.last_stream_seq)
        };
        let mut carries_on = tail.record.as_ref().filter(|r| continues(chain, r, grown));
        // Unsigned, on the same stream: the records after this writer's
        // last message must chain from its head to the one built on (each
        // the next seq, on the hash before); one that does not is another
        // chain's, or forged. (Signed, the record is a trusted key's.)
        if let (false, None, Some(r)) = (replaced, signing, carries_on) {
            if reaches(&self.js, self.last_stream_seq, tail.last_seq, chain, r).await == Some(false)
            {
                carries_on = None;
            }
        }
        if !replaced || carries_on.is_some() {
            if replaced {
                tracing::warn!(
                    stream = subjects::STREAM_AUDIT,
                    "the audit stream was replaced and another writer carried the chain on: continuing from its record"
                );
                self.made = tail.made;
            }
            match (carries_on, &tail.record) {
                (Some(r), _) => *chain = Chain::resume(Some(r)),
                // The chain never goes back, nor leaps: a last record that
                // does not carry this writer's chain on is not built on.
                (None, Some(r)) if r.seq.saturating_add(1) != chain.next_seq() => {
                    tracing::warn!(
                        stream = subjects::STREAM_AUDIT,
                        record_seq = r.seq,
                        head_seq = chain.next_seq() - 1,
                        "the audit stream's last record does not carry this writer's chain on (of another chain, or forged): the chain goes on from this writer's head"
                    );
                }
                (None, _) => {}
            }
            self.last_stream_seq = tail.last_seq;
            return Ok(());
        }
        let head_seq = chain.next_seq() - 1;
        let entry = replaced_entry(
            log,
            term,
            TrailReplaced {
                stream: subjects::STREAM_AUDIT.to_string(),
                head_seq,
                head_hash: chain.last_hash().to_string(),
                was: TrailSeen::stream(self.made, self.last_stream_seq),
                now: TrailSeen::stream(tail.made, tail.last_seq),
                remade,
            },
            format!(
                "the audit stream {} was replaced under its writer (deleted{}): the records up to seq {head_seq} it held are not in the stream now; the chain goes on from seq {head_seq}",
                subjects::STREAM_AUDIT,
                if remade { ", and made again by this writer" } else { " and made again" },
            ),
        );
        // Written on the chain continued from the head; the writer's
        // place moves only once the record is stored, so a failure finds
        // the replacement again.
        let mut next = chain.clone();
        let was = (self.made, self.last_stream_seq);
        (self.made, self.last_stream_seq) = (tail.made, tail.last_seq);
        match self.publish_one(&mut next, entry).await {
            Ok(record) => {
                tracing::error!(
                    stream = subjects::STREAM_AUDIT,
                    head_seq,
                    recorded_seq = record.seq,
                    was_last_stream_seq = was.1,
                    now_last_stream_seq = tail.last_seq,
                    "the audit stream was replaced under its writer: the loss is recorded (audit_trail_replaced)"
                );
                *chain = next;
                Ok(())
            }
            Err(Unstored::Refused(e) | Unstored::Failed(e)) => {
                (self.made, self.last_stream_seq) = was;
                Err(e)
            }
        }
    }

    /// Publish `entries` sealed on `chain` after the stream's message
    /// `self.last_stream_seq`, in as few messages as [`Sealed`] allows. Both advance
    /// over what is stored. Gives back the entries refused because another
    /// writer got in or the stream is gone (not stored: seal them again on
    /// the new tail, [`StreamWriter::resync`]), or fails
    /// with those not known to be stored.
    async fn publish_batch(
        &mut self,
        chain: &mut Chain,
        entries: Vec<AuditEntry>,
    ) -> Result<Vec<AuditEntry>, AppendFailed> {
        let (js, signing) = (&self.js, self.signing.as_deref());
        let last_stream_seq = &mut self.last_stream_seq;
        let mut trial = chain.clone();
        let mut sent = Vec::new();
        // The batch goes out in messages of at most
        // `MESSAGE_BYTES` of records ([`Sealed`]). The first
        // message expects the stream's last sequence, each later
        // one the message id (its last record's hash) of the one
        // before it: once one is refused, none after it is
        // stored. (Expected sequences alone would store the
        // later ones when the tail moved by fewer messages than
        // the batch holds, sealed on a chain that is not the
        // stream's.)
        let mut previous: Option<String> = None;
        let mut unsent = entries.into_iter().peekable();
        let mut failed = None;
        // Where the next message is stored, if it is: right after the one
        // before it.
        let mut stream_seq = *last_stream_seq;
        while unsent.peek().is_some() {
            stream_seq += 1;
            // Sealed as they are, not copies: entries not
            // stored are given back from their records.
            let sealed = match Sealed::next(&mut trial, &mut unsent) {
                Ok(s) => s,
                Err((error, back)) => {
                    failed = Some((error, back));
                    break;
                }
            };
            let publish = jetstream::message::PublishMessage::build()
                .payload(sealed.payload)
                .message_id(&sealed.last_hash);
            let publish = match signed(
                publish,
                signing,
                &sealed.subject,
                stream_seq,
                sealed.last_seq,
                &sealed.last_hash,
            ) {
                Ok(p) => p,
                Err(e) => {
                    failed = Some((e, sealed.entries));
                    break;
                }
            };
            let publish = match previous.replace(sealed.last_hash) {
                None => publish.expected_last_sequence(*last_stream_seq),
                Some(id) => publish.expected_last_message_id(id),
            };
            match js.send_publish(sealed.subject.clone(), publish).await {
                Ok(ack) => sent.push((ack, trial.clone(), sealed.subject, sealed.entries)),
                Err(e) => {
                    failed = Some((Error::subject(&sealed.subject, e), sealed.entries));
                    break;
                }
            }
        }
        if let Some((error, back)) = failed {
            // Those sent may be stored: the caller checks.
            let mut entries: Vec<AuditEntry> =
                sent.into_iter().flat_map(|(_, _, _, e)| e).collect();
            entries.extend(back);
            entries.extend(unsent);
            return Err(AppendFailed { error, entries });
        }
        // Acks in order: the stored prefix advances the chain.
        let mut stored = 0;
        let mut rest = Vec::new();
        let mut sent = sent.into_iter();
        for (ack, after, subject, batch) in sent.by_ref() {
            match ack.await {
                Ok(ack) if stored == 0 || ack.sequence == *last_stream_seq + 1 => {
                    *chain = after;
                    *last_stream_seq = ack.sequence;
                    stored += 1;
                }
                Ok(_) => {
                    rest.extend(batch);
                    break;
                }
                // Refused: another writer got in; the rest goes
                // through `append`, which re-reads the tail.
                Err(e) if refused(e.kind()) => {
                    rest.extend(batch);
                    break;
                }
                // No answer: the entries (and those after them)
                // may be stored all the same. Not written again
                // here, where they could be written twice: the
                // caller checks the trail's tail before it tries
                // again.
                Err(e) => {
                    let mut entries = batch;
                    entries.extend(sent.flat_map(|(_, _, _, e)| e));
                    return Err(AppendFailed {
                        error: Error::subject(&subject, e),
                        entries,
                    });
                }
            }
        }
        rest.extend(sent.flat_map(|(_, _, _, batch)| batch));
        Ok(rest)
    }
}

fn append_file(
    path: &Path,
    file: &mut File,
    chain: &mut Chain,
    entry: AuditEntry,
) -> Result<AuditRecord> {
    let mut records = append_file_many(path, file, chain, vec![entry])?;
    records.pop().ok_or(Error::Closed)
}

/// The `audit_trail_replaced` entry: `data`, saying `summary`, stamped by
/// `log` with `term`.
fn replaced_entry(
    log: &AuditLog,
    term: Option<u64>,
    data: TrailReplaced,
    summary: String,
) -> AuditEntry {
    log.stamp(
        AuditEntry::new(
            skos_core::AuditEvent::AuditTrailReplaced,
            chrono::Utc::now(),
            None,
            "audit",
            summary,
            serde_json::to_value(&data).unwrap_or_default(),
        ),
        term,
    )
}

/// The most records one message can hold: [`MESSAGE_BYTES`] of records,
/// each longer than its two 64-digit hashes, plus the one that crossed it.
const RECORDS_PER_MESSAGE_MAX: u64 = MESSAGE_BYTES as u64 / 128 + 1;

/// Whether the first `len` bytes of `a` and `b` are the same.
fn same_bytes(a: &File, b: &File, len: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 64 * 1024;
    let (mut x, mut y) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at).unwrap_or(BLOCK).min(BLOCK);
        a.read_exact_at(&mut x[..n], at)?;
        b.read_exact_at(&mut y[..n], at)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether the directory at `dir`'s path is not the one `dir` holds
/// (moved away, removed, or another put in its place).
fn dir_replaced(dir: &skos_fs::Dir) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(held) = skos_fs::stat_at(dir.fd(), std::ffi::OsStr::new(".")) else {
        return false;
    };
    match std::fs::symlink_metadata(dir.path()) {
        Ok(m) => m.dev() != held.dev || m.ino() != held.ino,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The most messages [`reaches`] reads.
const LINK_LOOK: u64 = 256;

/// Whether the records in the stream messages after `after` up to `upto`
/// chain from `chain`'s head to `r` (each the next seq, its `prev_hash`
/// the hash before). `None` when it cannot be told: more than
/// [`LINK_LOOK`] messages, or one that cannot be read (aged out, or an
/// error), where `r` is taken on its seq alone.
async fn reaches(
    js: &jetstream::Context,
    after: u64,
    upto: u64,
    chain: &Chain,
    r: &AuditRecord,
) -> Option<bool> {
    if upto.saturating_sub(after) > LINK_LOOK {
        return None;
    }
    let s = js.get_stream(subjects::STREAM_AUDIT).await.ok()?;
    let mut records = std::collections::HashMap::new();
    for seq in after.saturating_add(1)..=upto {
        let m = s.get_raw_message(seq).await.ok()?;
        for v in records_of(&m.payload).unwrap_or_default() {
            if let Ok(rec) = serde_json::from_value::<AuditRecord>(v) {
                records.insert((rec.seq, rec.prev_hash), rec.hash);
            }
        }
    }
    let (mut seq, mut hash) = (chain.next_seq(), chain.last_hash().to_string());
    while let Some(next) = records.remove(&(seq, hash.clone())) {
        if seq == r.seq {
            return Some(next == r.hash);
        }
        (seq, hash) = (seq.saturating_add(1), next);
    }
    Some(false)
}

/// Whether `r` carries `chain` on: at or past its next seq, and no further
/// past its head than the `grown` messages the stream took since can hold.
fn continues(chain: &Chain, r: &AuditRecord, grown: u64) -> bool {
    r.seq >= chain.next_seq()
        && r.seq - (chain.next_seq() - 1) <= grown.saturating_mul(RECORDS_PER_MESSAGE_MAX)
}

/// Make sure `file` is still the live file at `path` before records are
/// appended to it. One removed, moved away or swapped for another (by hand:
/// SKOS's own rotation moves `file` along) took the records it held since
/// the last seal with it, and what is written to it now would be lost too:
/// the path is opened again (made if gone, and locked), and an
/// `audit_trail_replaced` record naming the writer's head and both files
/// is written first in it, on the chain carried on from the head, so
/// `skos audit verify` names the loss.
fn keep_live(
    log: &AuditLog,
    term: Option<u64>,
    path: &Path,
    file: &mut File,
    chain: &mut Chain,
    segs: &mut Segments,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata().map_err(|e| io(path, e))?;
    let name = path.file_name().unwrap_or_default();
    if dir_replaced(&segs.dir) {
        // The directory moved away or removed (and perhaps made again):
        // the trail goes on at its path, where the loss is recorded.
        let at = segs.dir.path().to_path_buf();
        tracing::error!(dir = %at.display(), "the audit file's directory was replaced under its writer: the trail goes on in the one at its path");
        segs.dir = skos_fs::Dir::private(&at)?;
    }
    let found = match skos_fs::stat_at(segs.dir.fd(), name) {
        Ok(e) if e.dev == held.dev() && e.ino == held.ino() => return Ok(()),
        Ok(e) => Some(e.size),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(path, e)),
    };
    let mut live = segs.dir.open_append(name)?;
    live.try_lock().map_err(|e| Error::Corrupt {
        path: path.escaped().to_string(),
        reason: format!("replaced by a file locked by another SKOS process: {e}"),
    })?;
    let head_seq = chain.next_seq() - 1;
    let (last, good, total) = scan_open(path, &mut live)?;
    if found == Some(held.len())
        && last
            .as_ref()
            .is_some_and(|r| r.seq == head_seq && r.hash == chain.last_hash())
        && same_bytes(file, &live, held.len()).map_err(|e| io(path, e))?
    {
        // A copy put in place (an editor's save, `cp` and `mv`): the same
        // bytes as the file held, so nothing is lost from the trail (one
        // cut short, or changed, is a loss, recorded).
        tracing::warn!(
            path = %path.escaped(),
            head_seq,
            "the live audit file was replaced by a copy ending with the chain's head: writing on in the copy"
        );
        *file = live;
        return Ok(());
    }
    if good < total {
        // Its last line is not ended (a torn write, a copy under way): the
        // record goes on a line of its own, that line kept as it is.
        use std::io::Write;
        live.write_all(b"\n").map_err(|e| io(path, e))?;
    }
    let remade = found.is_none();
    let entry = replaced_entry(
        log,
        term,
        TrailReplaced {
            stream: path.escaped().to_string(),
            head_seq,
            head_hash: chain.last_hash().to_string(),
            was: TrailSeen::file(Some(held.len())),
            now: TrailSeen::file(found),
            remade,
        },
        format!(
            "the live audit file was {} under its writer: the records up to seq {head_seq} it held since the last seal are not in the trail now; the chain goes on from seq {head_seq}",
            if remade { "removed" } else { "replaced" },
        ),
    );
    let record = match append_file(path, &mut live, chain, entry) {
        Ok(r) => r,
        Err(e) => {
            // Not recorded (a full disk): a file this writer made is
            // taken away again, so the next try finds the path as this
            // one did and records the same.
            if remade {
                let _ = segs.dir.remove(name);
            }
            return Err(e);
        }
    };
    tracing::error!(
        path = %path.escaped(),
        head_seq,
        recorded_seq = record.seq,
        held_bytes = held.len(),
        found_bytes = ?found,
        "the live audit file was replaced under its writer: the loss is recorded (audit_trail_replaced)"
    );
    *file = live;
    segs.oldest = Some(record.entry.timestamp);
    Ok(())
}

/// [`append_file`] for several entries: one write, one fsync.
fn append_file_many(
    path: &Path,
    file: &mut File,
    chain: &mut Chain,
    entries: Vec<AuditEntry>,
) -> Result<Vec<AuditRecord>> {
    let mut trial = chain.clone();
    let mut buf = Vec::new();
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        let record = trial
            .seal_to(entry, &mut buf)
            .map_err(|(e, _)| Error::Corrupt {
                path: path.escaped().to_string(),
                reason: e.to_string(),
            })?;
        buf.push(b'\n');
        records.push(record);
    }
    // A write that fails part way (a full disk) is cut back to where the
    // trail ended: no torn record stays behind for the next one to be
    // written after on the same line.
    let before = file.metadata().map_err(|e| io(path, e))?.len();
    let written = file
        .write_all(&buf)
        .and_then(|()| file.sync_data())
        .map_err(|e| io(path, e));
    if let Err(e) = written {
        if let Err(cut) = file.set_len(before).and_then(|()| file.sync_data()) {
            tracing::error!(path = %path.escaped(), error = %cut, "failed audit append not cut back; the next start cuts the torn record");
        }
        return Err(e);
    }
    *chain = trial;
    Ok(records)
}

impl Segments {
    /// Whether the live file is due to be sealed: it holds
    /// `segment_bytes`, or its oldest record is `segment_age` old.
    fn due(&self, file: &File, now: chrono::DateTime<chrono::Utc>) -> bool {
        let big = file
            .metadata()
            .is_ok_and(|m| m.len() >= self.policy.segment_bytes);
        let old = self.oldest.is_some_and(|t| {
            (now - t)
                .to_std()
                .is_ok_and(|age| age >= self.policy.segment_age)
        });
        big || old
    }
}

/// After records were appended to the live file: seal it into a segment
/// when due (and expire by the policy). A failure is logged and tried
/// again after the next append: the records are stored either way, and a
/// rotation cut short is completed by the next one.
fn after_append(path: &Path, file: &mut File, chain: &mut Chain, segs: &mut Segments) {
    let now = chrono::Utc::now();
    if segs.oldest.is_none() {
        segs.oldest = Some(now);
    }
    if !segs.due(file, now) {
        return;
    }
    let done = rotate(path, file, chain, segs, RotateStop::Never)
        .and_then(|_| expire(path, file, chain, segs, now));
    if let Err(e) = done {
        tracing::warn!(path = %path.escaped(), error = %e, "audit file not sealed into a segment; tried again after the next record");
    }
}

/// Remove the temp files of a rotation step a crash cut short (a segment
/// or a live file half written, never renamed into place: no record is
/// only there).
fn remove_leftovers(path: &Path, segs: &Segments) -> Result<()> {
    let stem = segments::stem(path);
    let cut = format!(
        ".{}.cut",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let entries = std::fs::read_dir(segs.dir.path()).map_err(|e| io(segs.dir.path(), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let segment_tmp =
            name.starts_with(&format!(".{stem}-")) && name.ends_with(".jsonl.zst.tmp");
        if segment_tmp || name == cut {
            tracing::warn!(file = %name, "removing a half-written audit rotation file");
            segs.dir.remove(name.as_ref())?;
        }
    }
    Ok(())
}

/// The first record of the live file, if any.
fn first_record(path: &Path) -> Result<Option<AuditRecord>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| io(path, e))?;
        if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Complete a rotation a crash (or a failed write) cut short: the newest
/// segment still overlaps the live file. Its seal is recorded if it is not
/// yet, and the live file is cut after the segment's last record. A
/// segment that does not match the live file's records is left alone (and
/// `skos audit verify` names it).
fn recover(path: &Path, file: &mut File, chain: &mut Chain, segs: &mut Segments) -> Result<()> {
    let Some(newest) = segments::list(path)?.pop() else {
        return Ok(());
    };
    let Some(first) = first_record(path)? else {
        return Ok(());
    };
    if first.seq > newest.last_seq {
        return Ok(());
    }
    let scanned = match segments::scan(&newest.path, |_, _| {}) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(segment = %newest.path.escaped(), error = %e, "audit segment overlaps the live file and cannot be read: left as it is");
            return Ok(());
        }
    };
    let header = match scanned.header {
        Ok(h) if h.first_seq == first.seq && h.first_prev_hash == first.prev_hash => h,
        _ => {
            tracing::warn!(segment = %newest.path.escaped(), "audit segment overlaps the live file but does not match it: left as it is");
            return Ok(());
        }
    };
    // Where the records after the segment begin, and whether its seal is
    // recorded.
    let mut cut_at = None;
    let mut sealed = false;
    let mut offset = 0u64;
    let live = File::open(path).map_err(|e| io(path, e))?;
    for line in BufReader::with_capacity(segments::READ_BUFFER, live).split(b'\n') {
        let line = line.map_err(|e| io(path, e))?;
        offset += line.len() as u64 + 1;
        let Ok(r) = serde_json::from_slice::<AuditRecord>(&line) else {
            continue;
        };
        if r.seq == header.last_seq && r.hash == header.last_hash {
            cut_at = Some(offset);
        }
        if r.entry.event_type == skos_core::AuditEvent::AuditSealed.as_str()
            && r.entry.data["segment"].as_str() == Some(newest.name.as_str())
        {
            sealed = true;
        }
    }
    let Some(cut_at) = cut_at else {
        tracing::warn!(segment = %newest.path.escaped(), "audit segment's last record is not in the live file: left as it is");
        return Ok(());
    };
    tracing::warn!(segment = %newest.path.escaped(), sealed, "completing an audit rotation that was cut short");
    if !sealed {
        let seal = segments::Seal {
            segment: newest.name.clone(),
            first_seq: header.first_seq,
            last_seq: header.last_seq,
            first_prev_hash: header.first_prev_hash.clone(),
            last_hash: header.last_hash.clone(),
            records: header.records,
            sha256: scanned.sha256,
            bytes: scanned.bytes,
        };
        append_file_many(path, file, chain, vec![seal_entry(&seal)])?;
    }
    cut(path, file, segs, cut_at)
}

fn seal_entry(seal: &segments::Seal) -> AuditEntry {
    AuditEntry::new(
        skos_core::AuditEvent::AuditSealed,
        chrono::Utc::now(),
        None,
        "audit",
        format!(
            "sealed records seq {}..{} ({} records) into {}",
            seal.first_seq, seal.last_seq, seal.records, seal.segment
        ),
        serde_json::to_value(seal).unwrap_or_default(),
    )
}

/// Seal the live file's records into a segment, record the seal, and cut
/// the live file to what follows (the seal record), each step durable
/// before the next ([`segments`]). Whether a segment was written (not when
/// the live file holds fewer than two records).
fn rotate(
    path: &Path,
    file: &mut File,
    chain: &mut Chain,
    segs: &mut Segments,
    stop: RotateStop,
) -> Result<bool> {
    recover(path, file, chain, segs)?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    let live = File::open(path).map_err(|e| io(path, e))?;
    let (mut first, mut last, mut records, mut newest) = (None::<AuditRecord>, None, 0u64, None);
    for line in BufReader::with_capacity(segments::READ_BUFFER, live.take(len)).split(b'\n') {
        let line = line.map_err(|e| io(path, e))?;
        let Ok(r) = serde_json::from_slice::<AuditRecord>(&line) else {
            continue;
        };
        records += 1;
        newest = newest.max(Some(r.entry.timestamp));
        if first.is_none() {
            first = Some(r.clone());
        }
        last = Some((r.seq, r.hash));
    }
    let (Some(first), Some((last_seq, last_hash)), Some(newest)) = (first, last, newest) else {
        return Ok(false);
    };
    if records < 2 {
        return Ok(false);
    }
    let header = segments::SegmentHeader {
        skos_audit_segment: segments::FORMAT,
        first_seq: first.seq,
        last_seq,
        first_prev_hash: first.prev_hash,
        last_hash,
        records,
        newest,
    };
    let seal = segments::write(&segs.dir, path, len, &header)?;
    tracing::info!(segment = %seal.segment, records, bytes = seal.bytes, "audit records sealed into a segment");
    crate::failpoint::hit("audit.segment_written");
    if stop == RotateStop::AfterSegment {
        return Ok(true);
    }
    append_file_many(path, file, chain, vec![seal_entry(&seal)])?;
    crate::failpoint::hit("audit.sealed");
    if stop == RotateStop::AfterSeal {
        return Ok(true);
    }
    cut(path, file, segs, len)?;
    Ok(true)
}

/// Replace the live file with its bytes from `at` on: a temp file beside
/// it, written, fsynced and locked, renamed over it (the directory
/// fsynced); the writer goes on with the new file.
fn cut(path: &Path, file: &mut File, segs: &mut Segments, at: u64) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Corrupt {
            path: path.escaped().to_string(),
            reason: "not a file name".into(),
        })?
        .to_os_string();
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(&name);
    tmp.push(".cut");
    let tmp_path = segs.dir.path().join(&tmp);
    segs.dir.remove(&tmp)?;
    let mut out = segs.dir.create_new(&tmp)?;
    let mut src = File::open(path).map_err(|e| io(path, e))?;
    src.seek(SeekFrom::Start(at)).map_err(|e| io(path, e))?;
    std::io::copy(&mut src, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(|e| io(&tmp_path, e))?;
    drop(out);
    let new = segs.dir.open_append(&tmp)?;
    new.try_lock().map_err(|e| Error::Corrupt {
        path: tmp_path.escaped().to_string(),
        reason: format!("cannot lock: {e}"),
    })?;
    segs.dir.rename(&tmp, &name)?;
    *file = new;
    segs.oldest = first_record(path)?.map(|r| r.entry.timestamp);
    Ok(())
}

/// Remove the oldest segments whose newest record is older than the
/// retention, each after an `audit_expired` record naming its range and
/// last hash is written (fsynced): a crash between leaves the segment and
/// the record, and the next expiry removes it. How many were removed.
fn expire(
    path: &Path,
    file: &mut File,
    chain: &mut Chain,
    segs: &mut Segments,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u64> {
    let Some(retain) = segs.policy.retain else {
        return Ok(0);
    };
    let live_first = first_record(path)?.map(|r| r.seq);
    let mut removed = 0;
    for seg in segments::list(path)? {
        if live_first.is_none_or(|f| seg.last_seq >= f) {
            // Not cut from the live file yet: never the only copy.
            break;
        }
        let h = match segments::header(&seg.path) {
            Ok(h) => h,
            Err(e) => {
                // Its range and last hash cannot be recorded: kept (verify
                // names it), and the trail goes on; expiry stops here, as
                // records age out from the start only.
                tracing::warn!(segment = %seg.name, error = %e, "audit segment unreadable: not aged out");
                break;
            }
        };
        let old_enough = (now - h.newest).to_std().is_ok_and(|age| age >= retain);
        if !old_enough {
            break;
        }
        let expired = segments::Expired {
            segment: seg.name.clone(),
            first_seq: h.first_seq,
            through_seq: h.last_seq,
            through_hash: h.last_hash.clone(),
            records: h.records,
            newest: h.newest,
            retain_seconds: retain.as_secs(),
        };
        let entry = AuditEntry::new(
            skos_core::AuditEvent::AuditExpired,
            now,
            None,
            "audit",
            format!(
                "{} records aged out by policy (seq {}..{}, {}, kept {} days)",
                h.records,
                h.first_seq,
                h.last_seq,
                seg.name,
                retain.as_secs() / 86_400
            ),
            serde_json::to_value(&expired).unwrap_or_default(),
        );
        append_file_many(path, file, chain, vec![entry])?;
        segs.dir.remove(seg.name.as_ref())?;
        tracing::info!(segment = %seg.name, records = h.records, "audit segment aged out by policy");
        removed += 1;
    }
    Ok(removed)
}

/// Last parseable record, length of the well-formed prefix (up to the last
/// newline: anything after it is a torn write), total length. Reads from
/// the end only: start-up costs the same at any length of trail.
fn scan_file(path: &Path) -> Result<(Option<AuditRecord>, u64, u64)> {
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    scan_open(path, &mut file)
}

/// [`scan_file`] of a file open (for reading) at `path`.
fn scan_open(path: &Path, mut file: &mut File) -> Result<(Option<AuditRecord>, u64, u64)> {
    let total = file.metadata().map_err(|e| io(path, e))?.len();
    let good = last_newline(&mut file, total, TAIL_BLOCK)
        .map_err(|e| io(path, e))?
        .map_or(0, |at| at + 1);
    // The last line that is a record (a stray line is skipped, as before).
    let mut n = 1;
    loop {
        let start = tail_start(&mut file, good, n, TAIL_BLOCK).map_err(|e| io(path, e))?;
        if start >= good {
            return Ok((None, good, total));
        }
        file.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
        let mut line = Vec::new();
        BufReader::new((&mut file).take(good - start))
            .read_until(b'\n', &mut line)
            .map_err(|e| io(path, e))?;
        if let Ok(r) = serde_json::from_slice::<AuditRecord>(&line) {
            return Ok((Some(r), good, total));
        }
        if start == 0 {
            return Ok((None, good, total));
        }
        n += 1;
    }
}

/// The offset of the last `\n` in the first `len` bytes of `src`.
fn last_newline<R: Read + Seek>(
    src: &mut R,
    len: u64,
    block: usize,
) -> std::io::Result<Option<u64>> {
    let block = block.max(1);
    let mut buf = vec![0u8; block];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(block as u64);
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(block)];
        src.seek(SeekFrom::Start(start))?;
        src.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// The signature headers of a stored message.
fn signature_headers(h: &async_nats::HeaderMap) -> trust::CommandHeaders<'_> {
    trust::CommandHeaders {
        signer: h.get(trust::HEADER_SIGNER).map(|v| v.as_str()),
        signature: h.get(trust::HEADER_SIGNATURE).map(|v| v.as_str()),
        context: h.get(trust::HEADER_CONTEXT).map(|v| v.as_str()),
    }
}

/// Whether a stored audit message whose last record is `record` is signed
/// by a key `trusted` holds.
fn signed_by(
    trusted: &trust::Verifier,
    m: &jetstream::message::StreamMessage,
    record: &AuditRecord,
) -> std::result::Result<(), trust::TrustError> {
    trusted
        .check_audit(
            m.subject.as_str(),
            m.sequence,
            record.seq,
            &record.hash,
            &signature_headers(&m.headers),
        )
        .map(drop)
}

/// The end of the audit stream as a writer finds it.
struct Tail {
    /// The record the chain continues from (see [`last_record`]).
    record: Option<AuditRecord>,
    /// The stream's last message sequence.
    last_seq: u64,
    /// When the server made the stream.
    made: Made,
}

/// Whether `e` says the stream does not exist.
fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// When the server made the audit stream, and its last sequence; `None`
/// when it does not exist.
async fn stream_made(js: &jetstream::Context) -> Result<Option<(Made, u64)>> {
    match js.get_stream(subjects::STREAM_AUDIT).await {
        Ok(s) => {
            let info = s.cached_info();
            Ok(Some((
                info.created.unix_timestamp_nanos(),
                info.state.last_sequence,
            )))
        }
        Err(e) if stream_missing(&e) => Ok(None),
        Err(e) => Err(stream_err(e)),
    }
}

/// How many of the audit stream's last messages [`last_term`] reads.
const LAST_TERM_LOOK: u64 = 64;

/// The term of the last record among the audit stream's last
/// [`LAST_TERM_LOOK`] messages, read unsigned (the lease bounds what it
/// believes: [`crate::lease::TERM_JUMP_MAX`]); `None` when there is none
/// or it cannot be read.
pub(crate) async fn last_term(js: &jetstream::Context) -> Option<u64> {
    let s = js.get_stream(subjects::STREAM_AUDIT).await.ok()?;
    let last = s.cached_info().state.last_sequence;
    let first = s.cached_info().state.first_sequence.max(1);
    let mut seq = last;
    while seq >= first && last - seq < LAST_TERM_LOOK {
        if let Ok(m) = s.get_raw_message(seq).await {
            if let Some(r) = last_record_of(&m.payload) {
                return r.entry.term;
            }
        }
        seq -= 1;
    }
    None
}

/// The record the chain continues from, the stream's last sequence and
/// when the server made the stream; `None` when the stream does not exist.
/// Walks back over anything that is not one of our records; with
/// `signing`, over every message not signed by a trusted key at the place
/// it is stored too (a stranger's record, or a genuine message published
/// again, is never built upon), however many there are: a trail with no
/// signed message at all starts a signed chain afresh.
async fn last_record(js: &jetstream::Context, signing: Option<&Signing>) -> Result<Option<Tail>> {
    let s = match js.get_stream(subjects::STREAM_AUDIT).await {
        Ok(s) => s,
        Err(e) if stream_missing(&e) => return Ok(None),
        Err(e) => return Err(stream_err(e)),
    };
    let info = s.cached_info();
    let (last_seq, made) = (
        info.state.last_sequence,
        info.created.unix_timestamp_nanos(),
    );
    let tail = |record| {
        Ok(Some(Tail {
            record,
            last_seq,
            made,
        }))
    };
    if last_seq == 0 {
        return tail(None);
    }
    let mut seq = last_seq;
    let mut unsigned: Option<(u64, AuditRecord)> = None;
    while seq > 0 {
        if let Ok(m) = s.get_raw_message(seq).await {
            if let Some(r) = last_record_of(&m.payload) {
                let Some(signing) = signing else {
                    return tail(Some(r));
                };
                match signed_by(&signing.trusted, &m, &r) {
                    Ok(()) => {
                        if unsigned.is_some() {
                            tracing::warn!(stream_seq = seq, skipped = last_seq - seq, "audit messages not signed by a trusted key skipped: the chain continues from the last signed one");
                        }
                        return tail(Some(r));
                    }
                    Err(e) => {
                        tracing::debug!(stream_seq = seq, error = %e, "audit message not signed by a trusted key");
                        unsigned.get_or_insert((seq, r));
                    }
                }
            }
        }
        seq -= 1;
    }
    // No signed message anywhere: what is there is not ours to build on
    // (a stranger's records on a new trail, or a trail written before
    // signing began): the signed chain starts afresh, and `audit verify`
    // names every unsigned message as foreign.
    if let Some((at, _)) = unsigned {
        tracing::warn!(stream_seq = at, "no audit message signed by a trusted key in the trail: the signed chain starts afresh; the unsigned messages are foreign to it");
    }
    tail(None)
}

/// Read every record of the audit file as JSON values, in order.
pub fn read_file(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    read_open_file(file, path)
}

/// [`read_file`] of the file opened from `path`.
fn read_open_file(file: File, path: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| Error::Corrupt {
            path: format!("{}:{}", path.escaped(), i + 1),
            reason: e.to_string(),
        })?;
        out.push(v);
    }
    Ok(out)
}

/// Bytes read per step when the audit file is read backwards.
const TAIL_BLOCK: usize = 64 * 1024;

/// The last `n` records of the audit file at `path`, oldest first, as JSON
/// values. Reads backwards from the end in blocks of 64 KiB until it has
/// passed `n` complete records, then parses only those: the bytes read are
/// those of the `n` records plus at most one block, whatever the length
/// of the file. Blank lines are skipped, as [`read_file`] skips them.
///
/// When the live file holds fewer than `n`, the rest comes from the newest
/// sealed segments ([`segments::tail`]), decompressed in turn.
pub fn read_file_tail(path: &Path, n: u64) -> Result<Vec<Value>> {
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    let mut out = read_tail(&mut file, path, n, TAIL_BLOCK)?;
    let want = usize::try_from(n).unwrap_or(usize::MAX);
    if out.len() < want {
        let below = out
            .iter()
            .find_map(|v| v["seq"].as_u64())
            .unwrap_or(u64::MAX);
        let mut older = segments::tail(path, want - out.len(), below)?;
        older.append(&mut out);
        out = older;
    }
    Ok(out)
}

/// Every record of the trail, sealed segments first, then the live file,
/// as JSON values, in order (a record held by both, after an interrupted
/// rotation, once).
///
/// The live file is opened before the segments are listed: records sealed
/// by a rotation meanwhile are still read, from the file they were cut
/// from.
pub fn read_trail(path: &Path) -> Result<Vec<Value>> {
    let live = File::open(path).map_err(|e| io(path, e))?;
    let mut out = Vec::new();
    let last = segments::each_after(path, 0, |v| {
        out.push(v);
        true
    })?;
    for v in read_open_file(live, path)? {
        if v["seq"].as_u64().is_none_or(|s| s > last) {
            out.push(v);
        }
    }
    Ok(out)
}

/// [`read_file_tail`] over any seekable source, `path` naming it in
/// errors, read backwards `block` bytes at a time.
fn read_tail<R: Read + Seek>(src: &mut R, path: &Path, n: u64, block: usize) -> Result<Vec<Value>> {
    let len = src.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
    let start = tail_start(src, len, n, block).map_err(|e| io(path, e))?;
    src.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
    let mut reader = BufReader::new(src.take(len - start));
    let capacity = usize::try_from(n).unwrap_or(usize::MAX).min(4096);
    let (mut out, mut line, mut offset) = (Vec::with_capacity(capacity), Vec::new(), start);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io(path, e))?;
        if read == 0 {
            break;
        }
        if !line.trim_ascii().is_empty() {
            let v = serde_json::from_slice(&line).map_err(|e| Error::Corrupt {
                path: format!("{} at byte {offset}", path.escaped()),
                reason: e.to_string(),
            })?;
            out.push(v);
        }
        offset += read as u64;
    }
    Ok(out)
}

/// Where the last `n` non-blank lines of `src` (`len` bytes long) begin,
/// found by reading backwards from the end, `block` bytes at a time, until
/// the newline before the `n`th last line. A last line without a newline
/// counts as a line; a line of only ASCII whitespace does not.
fn tail_start<R: Read + Seek>(src: &mut R, len: u64, n: u64, block: usize) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    let block = block.max(1);
    let mut buf = vec![0u8; block.min(usize::try_from(len).unwrap_or(usize::MAX))];
    let (mut found, mut content, mut end) = (0u64, false, len);
    while end > 0 {
        let start = end.saturating_sub(block as u64);
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(block)];
        src.seek(SeekFrom::Start(start))?;
        src.read_exact(chunk)?;
        for (i, &b) in chunk.iter().enumerate().rev() {
            if b == b'\n' {
                // The line after this newline is complete.
                if content {
                    found += 1;
                    if found == n {
                        return Ok(start + i as u64 + 1);
                    }
                }
                content = false;
            } else if !b.is_ascii_whitespace() {
                content = true;
            }
        }
        end = start;
    }
    Ok(0)
}

/// Where [`read_jetstream_after`] has read the stream to: its last
/// sequence read, and which stream (when the server made it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    seq: u64,
    made: Made,
}

/// What [`read_jetstream_after`] read.
#[derive(Debug)]
pub struct TailRead {
    /// The records, oldest first.
    pub records: Vec<Value>,
    /// Where to read from next time.
    pub at: StreamCursor,
    /// The stream is not the one `after` was in (deleted and made again):
    /// `records` are the new one's, from its start.
    pub replaced: bool,
}

/// The records of the JetStream audit stream's messages stored after
/// `after` (with `None`: its last `n` records), oldest first, and where it
/// read to, to pass as `after` next time (`skos audit tail -f`). A stream
/// deleted and made again since `after` is read from its start, and said
/// so. Reads messages by sequence: no consumer is made, so an operator's
/// read-only credential suffices.
pub async fn read_jetstream_after(
    bus: &NatsBus,
    after: Option<StreamCursor>,
    n: u64,
) -> Result<TailRead> {
    let js = bus.jetstream();
    let mut s = js
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let info = s.info().await.map_err(stream_err)?;
    let made = info.created.unix_timestamp_nanos();
    let info = info.state.clone();
    let last = info.last_sequence;
    let at = StreamCursor { seq: last, made };
    let Some(after) = after else {
        // The last `n` records up to `last`, exactly (what is written
        // after it comes with the next call).
        let records = last_records(&mut s, info.first_sequence, last, n, None).await?;
        return Ok(TailRead {
            records,
            at,
            replaced: false,
        });
    };
    let replaced = after.made != made || last < after.seq;
    let from = if replaced { 0 } else { after.seq };
    let mut records = Vec::new();
    for seq in (from + 1).max(info.first_sequence)..=last {
        records.extend(message_records(&mut s, seq, None).await?);
    }
    Ok(TailRead {
        records,
        at,
        replaced,
    })
}

/// Read the last `n` records of the JetStream audit stream (all when `None`).
pub async fn read_jetstream(bus: &NatsBus, n: Option<u64>) -> Result<Vec<Value>> {
    read_js(bus.jetstream(), n, None).await
}

async fn read_js(
    js: &jetstream::Context,
    n: Option<u64>,
    trusted: Option<&trust::Verifier>,
) -> Result<Vec<Value>> {
    let mut s = js
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let info = s.info().await.map_err(stream_err)?.state.clone();
    if info.messages == 0 {
        return Ok(Vec::new());
    }
    let first = info.first_sequence.max(1);
    let Some(n) = n else {
        let mut out = Vec::new();
        for seq in first..=info.last_sequence {
            out.extend(message_records(&mut s, seq, trusted).await?);
        }
        return Ok(out);
    };
    last_records(&mut s, first, info.last_sequence, n, trusted).await
}

/// The last `n` records of the stream's messages `first..=last`, oldest
/// first: read backwards, a message (one record or a batch) at a time,
/// until `n` records are in hand.
async fn last_records(
    s: &mut stream::Stream,
    first: u64,
    last: u64,
    n: u64,
    trusted: Option<&trust::Verifier>,
) -> Result<Vec<Value>> {
    let want = usize::try_from(n).unwrap_or(usize::MAX);
    let mut messages = Vec::new();
    let mut count = 0usize;
    let mut seq = last;
    while count < want && seq >= first.max(1) {
        let records = message_records(s, seq, trusted).await?;
        count += records.len();
        messages.push(records);
        seq -= 1;
    }
    let mut out: Vec<Value> = messages.into_iter().rev().flatten().collect();
    if out.len() > want {
        out.drain(..out.len() - want);
    }
    Ok(out)
}

/// The records of the audit message at `seq`; an unreadable one stands as
/// one record saying so (the verifier then names it). With `trusted`, a
/// message not signed by one of its keys (at its place) holds none.
async fn message_records(
    s: &mut stream::Stream,
    seq: u64,
    trusted: Option<&trust::Verifier>,
) -> Result<Vec<Value>> {
    let m = s.get_raw_message(seq).await.map_err(|e| Error::Stream {
        stream: subjects::STREAM_AUDIT.to_string(),
        reason: format!("message {seq}: {e}"),
    })?;
    if let Some(trusted) = trusted {
        let signed = last_record_of(&m.payload).is_some_and(|r| signed_by(trusted, &m, &r).is_ok());
        if !signed {
            return Ok(Vec::new());
        }
    }
    Ok(records_of(&m.payload).unwrap_or_else(|e| {
        vec![serde_json::json!({ "unreadable": e.to_string(), "stream_seq": seq })]
    }))
}

/// Check a whole chain, in order.
pub fn verify(records: Vec<Value>) -> VerifyReport {
    let mut v = Verifier::default();
    for r in records {
        if let Err(e) = v.push_value(r) {
            return VerifyReport {
                records: v.verified(),
                error: Some(e),
            };
        }
    }
    VerifyReport {
        records: v.verified(),
        error: None,
    }
}

/// Stream config check: the audit stream must refuse deletes and purges.
pub async fn stream_is_locked(bus: &NatsBus) -> Result<bool> {
    let mut s = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let cfg: &stream::Config = &s.info().await.map_err(stream_err)?.config;
    Ok(cfg.deny_delete && cfg.deny_purge)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's records are read alike by every reader, whatever
    /// spacing comes before them: its records as parsed, as stored texts,
    /// and its last record (what its signature is over).
    #[test]
    fn a_message_is_read_alike_with_leading_spacing() {
        let mut chain = Chain::default();
        let records: Vec<AuditRecord> = (0..3).map(|i| chain.seal(entry(i))).collect();
        let batch = format!(" \n\t{}", serde_json::to_string(&records).unwrap());
        assert_eq!(records_of(batch.as_bytes()).unwrap().len(), 3);
        assert_eq!(record_texts_of(batch.as_bytes()).unwrap().len(), 3);
        let last = |payload: &str| last_record_of(payload.as_bytes()).map(|r| (r.seq, r.hash));
        assert_eq!(last(&batch), Some((3, records[2].hash.clone())));
        let one = format!("  {}", serde_json::to_string(&records[0]).unwrap());
        assert_eq!(records_of(one.as_bytes()).unwrap().len(), 1);
        assert_eq!(record_texts_of(one.as_bytes()).unwrap().len(), 1);
        assert_eq!(last(&one), Some((1, records[0].hash.clone())));
    }

    /// A batch appended on a stale tail (another writer got in since)
    /// writes nothing after the refused first record: every entry is in
    /// the stream once, and the chain holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_on_a_stale_tail_writes_each_entry_once() {
        use skos_testsupport::nats::{nats_server_binary, NatsServer};
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let connect = || async {
            NatsBus::connect(&crate::NatsOptions::new(server.url(), "test"))
                .await
                .unwrap()
        };
        let (a, b) = (connect().await, connect().await);
        let mine = AuditLog::open_jetstream(&a).await.unwrap();
        let other = AuditLog::open_jetstream(&b).await.unwrap();
        mine.append(entry(0)).await.unwrap();
        other.append(entry(100)).await.unwrap();
        mine.append_many((1..=4).map(entry).collect())
            .await
            .unwrap();
        let records = read_jetstream(&a, None).await.unwrap();
        let summaries: Vec<&str> = records
            .iter()
            .map(|r| r["entry"]["summary"].as_str().unwrap())
            .collect();
        assert_eq!(summaries, ["e0", "e100", "e1", "e2", "e3", "e4"]);
        let report = verify(records);
        assert!(report.error.is_none(), "{:?}", report.error);
    }

    /// Records written together are stored as few messages (split only
    /// past `MESSAGE_BYTES`), and every reader counts records, not
    /// messages: the tail, the chain's resumption, verification.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_one_message_and_readers_count_records() {
        use skos_testsupport::nats::{nats_server_binary, NatsServer};
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&crate::NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        let log = AuditLog::open_jetstream(&bus).await.unwrap();
        log.append(entry(0)).await.unwrap();
        log.append_many((1..=5).map(entry).collect()).await.unwrap();
        let info = |bus: &NatsBus| {
            let js = bus.jetstream().clone();
            async move {
                let mut s = js.get_stream(subjects::STREAM_AUDIT).await.unwrap();
                s.info().await.unwrap().state.clone()
            }
        };
        assert_eq!(info(&bus).await.messages, 2, "one record, then one batch");
        let seqs = |records: &[Value]| -> Vec<u64> {
            records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
        };
        assert_eq!(seqs(&log.read_recent(3).await.unwrap()), [4, 5, 6]);
        assert_eq!(seqs(&log.read_recent(6).await.unwrap()), [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            seqs(&log.read_recent(60).await.unwrap()),
            [1, 2, 3, 4, 5, 6]
        );
        // A second writer resumes after the batch's last record.
        let other = AuditLog::open_jetstream(&bus).await.unwrap();
        assert_eq!(other.append(entry(6)).await.unwrap().seq, 7);
        // A batch larger than one message: split, chained, all verified.
        let big: Vec<AuditEntry> = (0..600)
            .map(|i| {
                AuditEntry::new(
                    skos_core::AuditEvent::Decision,
                    chrono::Utc::now(),
                    None,
                    "t",
                    format!("big{i}"),
                    serde_json::json!({"pad": "x".repeat(1024)}),
                )
            })
            .collect();
        log.append_many(big).await.unwrap();
        let messages = info(&bus).await.messages;
        assert!((5..=6).contains(&messages), "{messages} messages");
        let records = read_jetstream(&bus, None).await.unwrap();
        assert_eq!(records.len(), 607);
        assert_eq!(seqs(&records), (1..=607).collect::<Vec<u64>>());
        let report = verify(records);
        assert!(report.error.is_none(), "{:?}", report.error);
        assert_eq!(report.records, 607);
        // Published on the batch subject, readable by a live subscriber.
        let last = bus
            .jetstream()
            .get_stream(subjects::STREAM_AUDIT)
            .await
            .unwrap()
            .get_raw_message(messages)
            .await
            .unwrap();
        assert_eq!(last.subject.as_str(), subjects::AUDIT_BATCH);
        assert!(records_of(&last.payload).unwrap().len() > 1);
    }

    fn entry(i: u32) -> AuditEntry {
        AuditEntry::new(
            skos_core::AuditEvent::Node,
            chrono::Utc::now(),
            None,
            "t",
            format!("e{i}"),
            serde_json::json!({"i": i}),
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn file_chain_survives_reopen_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let log = AuditLog::open_file(&path).unwrap();
            for i in 0..3 {
                log.append(entry(i)).await.unwrap();
            }
        }
        {
            let log = AuditLog::open_file(&path).unwrap();
            let r = log.append(entry(3)).await.unwrap();
            assert_eq!(r.seq, 4);
        }
        let report = verify(read_file(&path).unwrap());
        assert_eq!(report.records, 4);
        assert!(report.error.is_none());

        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"e1\"", "\"e9\"");
        std::fs::write(&path, text).unwrap();
        let report = verify(read_file(&path).unwrap());
        assert!(matches!(report.error, Some(ChainError::Content { seq: 2 })));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_append_on_a_full_disk_leaves_no_torn_record() {
        // A real filesystem that fills up: a 64 KiB tmpfs.
        let fs = skos_testsupport::require!(
            "a tmpfs mount",
            skos_testsupport::tmpfs::Tmpfs::mount("64k", None)
        );
        // The data dir is private: the tmpfs root (1777) would be refused.
        let path = fs.path().join("data/audit.jsonl");
        let log = AuditLog::open_file(&path).unwrap();
        log.append(entry(0)).await.unwrap();
        let filler = fs.path().join("filler");
        let mut f = File::create(&filler).unwrap();
        let _ = f.write_all(&vec![0u8; 1 << 20]);
        let _ = f.sync_all();
        drop(f);
        // Appends fail once it is full; each leaves the trail as it was.
        let mut failed = 0;
        for i in 1..200 {
            let before = std::fs::metadata(&path).unwrap().len();
            let big = AuditEntry::new(
                skos_core::AuditEvent::Decision,
                chrono::Utc::now(),
                None,
                "test",
                format!("e{i}"),
                serde_json::json!({"pad": "x".repeat(2048)}),
            );
            if log.append_many(vec![big.clone(), big]).await.is_err() {
                failed += 1;
                assert_eq!(std::fs::metadata(&path).unwrap().len(), before, "cut back");
            }
        }
        assert!(failed > 0, "the disk never filled");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'), "a torn record is left");
        // Space again: the next append continues the same chain.
        std::fs::remove_file(&filler).unwrap();
        log.append(entry(99)).await.unwrap();
        let report = verify(read_file(&path).unwrap());
        assert!(report.error.is_none(), "{:?}", report.error);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn torn_tail_is_cut_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let log = AuditLog::open_file(&path).unwrap();
            log.append(entry(0)).await.unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":2,\"prev_ha").unwrap();
        drop(f);
        let log = AuditLog::open_file(&path).unwrap();
        log.append(entry(1)).await.unwrap();
        let records = read_file(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1]["entry"]["event_type"], "audit_recovered");
        assert!(verify(records).error.is_none());
    }

    /// A source that counts the bytes read from it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    /// The last `n` of `all`.
    fn last(all: &[Value], n: usize) -> &[Value] {
        &all[all.len().saturating_sub(n)..]
    }

    #[test]
    fn the_tail_of_a_large_file_is_read_alone_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut text = String::new();
        for i in 0..200_000u32 {
            text.push_str(&format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "p".repeat(60)));
        }
        std::fs::write(&path, &text).unwrap();
        let size = text.len() as u64;
        assert!(size > 10 * 1024 * 1024);

        let mut src = Counting {
            inner: File::open(&path).unwrap(),
            read: 0,
        };
        let got = read_tail(&mut src, &path, 10, TAIL_BLOCK).unwrap();
        let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (199_990..200_000).collect::<Vec<u64>>());
        // One block backwards, then the ten records again.
        assert!(
            src.read <= (TAIL_BLOCK + 10 * 100) as u64,
            "{} bytes read",
            src.read
        );

        let mut src = Counting {
            inner: File::open(&path).unwrap(),
            read: 0,
        };
        let got = read_tail(&mut src, &path, 20_000, TAIL_BLOCK).unwrap();
        assert_eq!(got.len(), 20_000);
        assert_eq!(got[0]["seq"], 180_000);
        assert_eq!(got[19_999]["seq"], 199_999);
        assert!(src.read < size / 4, "{} bytes read of {size}", src.read);
    }

    #[test]
    fn the_tail_matches_the_whole_file_at_every_block_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // Lines of varied length, blank lines, a last line without newline.
        let mut text = String::from("\n");
        for i in 0..300u32 {
            text.push_str(&format!(
                "{{\"seq\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat((i % 37) as usize)
            ));
            if i % 50 == 0 {
                text.push_str("  \n\n");
            }
        }
        text.push_str("{\"seq\":300}");
        std::fs::write(&path, &text).unwrap();
        let all = read_file(&path).unwrap();
        assert_eq!(all.len(), 301);
        for block in [1, 7, 64, 1000, TAIL_BLOCK] {
            for n in [0usize, 1, 2, 49, 50, 51, 300, 301, 302, 10_000] {
                let mut f = File::open(&path).unwrap();
                let got = read_tail(&mut f, &path, n as u64, block).unwrap();
                assert_eq!(got, last(&all, n), "block {block}, n {n}");
            }
        }
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        assert!(read_file_tail(&empty, 5).unwrap().is_empty());
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"seq\":1}\nnot json\n{\"seq\":3}\n").unwrap();
        assert_eq!(read_file_tail(&bad, 1).unwrap()[0]["seq"], 3);
        let err = read_file_tail(&bad, 2).unwrap_err().to_string();
        assert!(err.contains("at byte 10"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn read_recent_returns_the_last_records_of_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::resume(None);
        let mut text = String::new();
        for i in 0..5_000 {
            let record = chain.seal(entry(i));
            text.push_str(&serde_json::to_string(&record).unwrap());
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        let log = AuditLog::open_file(&path).unwrap();
        let got = log.read_recent(100).await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (4_901..=5_000).collect::<Vec<u64>>());
        assert_eq!(log.read_recent(10_000).await.unwrap().len(), 5_000);
        let r = log.append(entry(5_000)).await.unwrap();
        assert_eq!(r.seq, 5_001);
        let got = log.read_recent(1).await.unwrap();
        assert_eq!(got[0]["seq"], 5_001);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_labelled_trail_labels_every_summary_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_file(&path).unwrap().labelled("[demo]");
        log.append(entry(0)).await.unwrap();
        let mut again = entry(1);
        again.summary = format!("[demo] {}", again.summary);
        log.append_many(vec![entry(2), again]).await.unwrap();
        let records = read_file(&path).unwrap();
        assert_eq!(records.len(), 3);
        for r in &records {
            let summary = r["entry"]["summary"].as_str().unwrap();
            assert!(summary.starts_with("[demo] "), "{summary}");
            assert!(!summary.starts_with("[demo] [demo]"), "{summary}");
        }
        assert!(
            check::verify_file(&path, None).unwrap().ok(),
            "the labelled chain holds"
        );
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let _a = AuditLog::open_file(&path).unwrap();
        assert!(AuditLog::open_file(&path).is_err());
    }
}
