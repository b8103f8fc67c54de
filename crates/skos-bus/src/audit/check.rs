//! Checking a whole trail, as `skos audit verify` does: in one pass, in
//! constant memory, one stored message at a time.
//!
//! Every record must continue the hash chain. On JetStream, with trusted
//! keys, every message must also be signed by one of them
//! ([`trust::Verifier::check_audit`]); one that is not (a stranger's
//! publish, a copy, an unreadable payload) is reported by its stream
//! sequence as foreign and left out of the chain, and the check goes on. A
//! break in the chain is reported and the check goes on from the record
//! that broke it, so one change is reported once and the rest still
//! checked. A [`Checkpoint`] kept outside the trail (a record's sequence
//! number and hash, with the signature of the message that held it) shows a
//! trail deleted and rebuilt, or cut short, even by someone who could
//! re-hash every record.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skos_core::audit::{AuditRecord, ChainError, Verifier};
use skos_core::escape::ShowPath;

use super::{last_record_of, record_texts_of, segments, signature_headers, stream_err};
use crate::{subjects, trust, Error, NatsBus, Result};
use skos_core::AuditEvent;

/// Stream messages a check requests ahead of the one it judges.
const READ_AHEAD: usize = 16;

/// How many foreign messages and chain breaks a report lists (all are
/// counted).
const LISTED: usize = 20;

/// A record's place in the trail, kept outside it by an operator: `skos
/// audit checkpoint` writes one, `skos audit verify --checkpoint` checks the
/// trail still holds that record with that hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The record's sequence number in the chain.
    pub seq: u64,
    /// The record's hash (hex SHA-256).
    pub hash: String,
    /// Where it was stored: the stream sequence and subject (JetStream), or
    /// the audit file's path.
    pub stored: String,
    /// The subject and stream sequence of the message that held it
    /// (JetStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<u64>,
    /// The signer and signature of that message, when it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When the checkpoint was taken.
    pub taken_at: chrono::DateTime<chrono::Utc>,
}

/// The data of an `audit_checkpoint` record ([`super::AuditLog::checkpoint`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointData {
    /// The chain's head before the checkpoint: its seq and hash.
    pub head_seq: u64,
    pub head_hash: String,
    /// When the stream stored the head's message (`None`: no longer
    /// there, or none).
    #[serde(default)]
    pub head_stored: Option<chrono::DateTime<chrono::Utc>>,
    /// The stream's `max_age` the writer applied, in seconds.
    pub max_age_seconds: u64,
}

/// The data of an `audit_trail_replaced` record: the writer's head before
/// the replacement and the trail it wrote against the one it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrailReplaced {
    /// The stream (`SKOS_AUDIT`) or the live file's path.
    pub stream: String,
    /// The last record the writer wrote before it: seq and hash. The
    /// trail held the records up to it; the record continues from it.
    pub head_seq: u64,
    pub head_hash: String,
    /// The trail written, and the one found in its place.
    pub was: TrailSeen,
    pub now: TrailSeen,
    /// Whether the writer found the trail gone and made it again.
    #[serde(default)]
    pub remade: bool,
}

/// A trail as a writer saw it: a stream's identity and length, or a live
/// file's length.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrailSeen {
    /// When the server made the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<chrono::DateTime<chrono::Utc>>,
    /// The stream's last message sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stream_seq: Option<u64>,
    /// The file's length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl TrailSeen {
    /// A stream made at `made` (nanoseconds since the epoch) whose last
    /// message is `last_stream_seq`.
    pub(crate) fn stream(made: i128, last_stream_seq: u64) -> Self {
        let secs = made.div_euclid(1_000_000_000);
        let nanos = made.rem_euclid(1_000_000_000);
        Self {
            made: i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, nanos as u32)),
            last_stream_seq: Some(last_stream_seq),
            bytes: None,
        }
    }

    /// A file of `bytes` (`None`: none there).
    pub(crate) fn file(bytes: Option<u64>) -> Self {
        Self {
            bytes,
            ..Self::default()
        }
    }

    fn describe(&self) -> String {
        match (self.made, self.last_stream_seq, self.bytes) {
            (made, Some(last), _) => format!(
                "made {} with {last} messages",
                made.map_or("at an unknown time".to_string(), |t| t
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            ),
            (_, None, Some(bytes)) => format!("of {bytes} bytes"),
            (_, None, None) => "none".to_string(),
        }
    }
}

/// Clock skew between the verifier and the server, and the server's
/// expiry sweep, allowed for when judging an age-out.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(300);

/// How often leaders write an `audit_checkpoint` record, by default
/// (`audit.checkpoint_minutes`).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(3600);

/// Whether the records before `first` (the first record the stream still
/// holds, its message stored at `stored`) aged out by the stream's
/// `max_age`, judged at `now`, with leaders writing a checkpoint at least
/// every `every`: the stream removes exactly the messages older than
/// `max_age`, so the record before `first` was older than the horizon
/// (`now - max_age`). Either `first` is a checkpoint naming that record and
/// when it was stored (before the horizon), or `first` was stored within
/// one checkpoint interval of the horizon (a leader writes at least that
/// often, so the record before it was not much older). A purge of records
/// younger than that shows. `Err` says why not.
pub fn aged_out_of_stream(
    first: &AuditRecord,
    stored: chrono::DateTime<chrono::Utc>,
    max_age: Duration,
    every: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> std::result::Result<(), NotAgedOut> {
    let missing = first.seq.saturating_sub(1);
    if max_age.is_zero() {
        return Err(NotAgedOut::NoMaxAge { missing });
    }
    let delta = |d: Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
    let horizon = now
        .checked_sub_signed(delta(max_age))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let within = |t: chrono::DateTime<chrono::Utc>, d: Duration| {
        horizon
            .checked_add_signed(delta(d))
            .is_none_or(|limit| t < limit)
    };
    if first.entry.event_type == AuditEvent::AuditCheckpoint.as_str() {
        if let Ok(d) = serde_json::from_value::<CheckpointData>(first.entry.data.clone()) {
            let names_before = d.head_seq + 1 == first.seq && d.head_hash == first.prev_hash;
            if names_before && d.head_stored.is_some_and(|t| within(t, EXPIRY_SLACK)) {
                return Ok(());
            }
        }
    }
    if within(stored, every + EXPIRY_SLACK) {
        return Ok(());
    }
    Err(NotAgedOut::TooYoung {
        missing,
        first: first.seq,
        stored: stored.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        days: max_age.as_secs() / 86_400,
        every_minutes: every.as_secs() / 60,
    })
}

/// Why records missing at a stream's start did not age out by policy
/// ([`aged_out_of_stream`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAgedOut {
    #[error("records seq 1..{missing} are missing, and the stream keeps every record (no max_age): deleted or purged, not aged out by policy")]
    NoMaxAge { missing: u64 },
    #[error("records seq 1..{missing} are missing, but the first record left (seq {first}) was stored at {stored}, less than {days} days old and more than a checkpoint interval ({every_minutes} min) inside the retention: purged or deleted, not aged out by policy")]
    TooYoung {
        missing: u64,
        first: u64,
        stored: String,
        days: u64,
        every_minutes: u64,
    },
}

/// A stored message left out of the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Foreign {
    /// Its stream sequence (JetStream) or line number (file).
    pub at: u64,
    pub subject: String,
    pub reason: String,
}

/// What a check of a whole trail found.
#[derive(Debug, Default, Serialize)]
pub struct TrailReport {
    /// Stored messages (JetStream) or lines (file) read.
    pub messages: u64,
    /// Records that continued the chain.
    pub records: u64,
    /// Breaks in the chain: the first [`LISTED`], and how many in all.
    pub breaks: Vec<String>,
    pub break_count: u64,
    /// Records that continued the chain before its first break.
    pub before_first_break: u64,
    /// Messages left out: the first [`LISTED`], and how many in all.
    pub foreign: Vec<Foreign>,
    pub foreign_count: u64,
    /// Whether signatures were checked (trusted keys were given).
    pub signatures_checked: bool,
    /// The last record that continued the chain: its seq and hash.
    pub head: Option<(u64, String)>,
    /// What the checkpoint given showed, when it does not match.
    pub checkpoint_problem: Option<String>,
    /// Sealed segments read (embedded mode).
    pub segments: u64,
    /// Records that aged out by the retention policy: the range of seqs
    /// (from the first record ever to the last aged out), told apart from
    /// a deletion by the `audit_expired` record (file) or the checkpoint
    /// record (stream) that names it.
    pub aged_out: Option<(u64, u64)>,
    /// Copies of records already checked (a rotation a crash cut short
    /// leaves the records in both the segment and the live file), checked
    /// against each other and counted once.
    pub copies: u64,
    /// Remarks that are not failures (a checkpoint whose record aged out).
    pub notes: Vec<String>,
}

impl TrailReport {
    /// Nothing wrong: no break, nothing foreign, the checkpoint matched.
    pub fn ok(&self) -> bool {
        self.break_count == 0 && self.foreign_count == 0 && self.checkpoint_problem.is_none()
    }
}

/// The check in progress.
struct Checker<'a> {
    verifier: Verifier,
    report: TrailReport,
    checkpoint: Option<&'a Checkpoint>,
    checkpoint_seen: bool,
    /// Where the records now read are (a segment's or the file's name),
    /// put before every break found there.
    place: String,
    /// The trail starts after seq 1: the last missing seq and the hash its
    /// next record names, until a record of the chain says they aged out.
    start_gap: Option<(u64, String)>,
    /// Why the records missing at the start were not aged out, when it is
    /// known as soon as they are found (a stream's).
    gap_problem: Option<String>,
    /// The records missing at the start are those an
    /// `audit_trail_replaced` record names lost (reported with it).
    gap_named: bool,
    /// The `audit_trail_replaced` records of the chain: their seq and the
    /// head each names (the records up to it since the last seal, lost).
    replaced: Vec<(u64, u64)>,
}

impl<'a> Checker<'a> {
    fn new(checkpoint: Option<&'a Checkpoint>, signatures_checked: bool) -> Self {
        Self {
            verifier: Verifier::default(),
            report: TrailReport {
                signatures_checked,
                ..Default::default()
            },
            checkpoint,
            checkpoint_seen: false,
            place: String::new(),
            start_gap: None,
            gap_problem: None,
            gap_named: false,
            replaced: Vec::new(),
        }
    }

    /// A failure found beside the chain (a segment missing or changed, a
    /// removal not by policy): counted as a break.
    fn problem(&mut self, text: String) {
        if self.report.break_count == 0 {
            self.report.before_first_break = self.report.records;
        }
        self.report.break_count += 1;
        if self.report.breaks.len() < LISTED {
            self.report.breaks.push(text);
        }
    }

    /// The trail's first record is `r`: a seq above 1 means older records
    /// are gone, by policy if a later record says so; the chain is checked
    /// from `r` on meanwhile.
    fn first(&mut self, r: &AuditRecord) {
        if r.seq > 1 {
            self.start_gap = Some((r.seq - 1, r.prev_hash.clone()));
            self.verifier.resume_at(r.seq - 1, &r.prev_hash);
        }
    }

    /// A record that continued the chain and says older records aged out
    /// by policy (`audit_expired`, whose range ends where the trail now
    /// starts, with the hash the first record left names).
    fn expired(&mut self, through_seq: u64, through_hash: &str) {
        let Some((gap_end, gap_hash)) = &self.start_gap else {
            return;
        };
        if through_seq == *gap_end {
            if through_hash == gap_hash {
                self.report.aged_out = Some((1, through_seq));
            } else {
                let text = format!(
                    "the records aged out through seq {through_seq} ended with hash {through_hash}, but the trail's first record follows {gap_hash}: the trail was changed where it begins"
                );
                self.problem(text);
                self.report.aged_out = Some((1, through_seq));
            }
        }
    }

    fn foreign(&mut self, at: u64, subject: &str, reason: String) {
        self.report.foreign_count += 1;
        if self.report.foreign.len() < LISTED {
            self.report.foreign.push(Foreign {
                at,
                subject: subject.to_string(),
                reason,
            });
        }
    }

    /// One record, in order: the record as read, and whether it continued
    /// the chain. `stored`: the record's text as stored
    /// ([`Verifier::push_stored`]).
    fn record(&mut self, value: Value, stored: &[u8]) -> Option<(AuditRecord, bool)> {
        let record = serde_json::from_value::<AuditRecord>(value.clone()).ok();
        // Records missing before an `audit_trail_replaced` record that
        // names their head were lost with the trail it replaced: reported
        // with it, once, and the chain checked on from it.
        if let Some(d) = record
            .as_ref()
            .filter(|r| r.entry.event_type == AuditEvent::AuditTrailReplaced.as_str())
            .and_then(|r| serde_json::from_value::<TrailReplaced>(r.entry.data.clone()).ok())
            .filter(|d| {
                record.as_ref().is_some_and(|r| {
                    d.head_seq.checked_add(1) == Some(r.seq) && d.head_hash == r.prev_hash
                })
            })
        {
            if self.verifier.next_seq() <= d.head_seq {
                self.verifier.resume_at(d.head_seq, &d.head_hash);
            }
        }
        let verified = match self.verifier.push_stored(value, Some(stored)) {
            Ok(()) => {
                self.report.records += 1;
                true
            }
            Err(e) => {
                let e = match e {
                    ChainError::Sequence {
                        expected, found, ..
                    } if found > expected => format!(
                        "{e}: records seq {expected}..{} are missing, deleted (not aged out by policy)",
                        found - 1
                    ),
                    e => e.to_string(),
                };
                if self.place.is_empty() {
                    self.problem(e);
                } else {
                    self.problem(format!("{}: {e}", self.place));
                }
                // Go on from the record that broke it.
                if let Some(r) = &record {
                    self.verifier.resume_after(r);
                }
                false
            }
        };
        let r = record?;
        if verified && r.entry.event_type == AuditEvent::AuditTrailReplaced.as_str() {
            self.trail_replaced(&r);
        }
        if let Some(cp) = self.checkpoint {
            if r.seq == cp.seq {
                self.checkpoint_seen = true;
                if r.hash != cp.hash {
                    self.report.checkpoint_problem = Some(format!(
                        "record seq {} has hash {}, the checkpoint says {}: the trail was changed or rebuilt",
                        r.seq, r.hash, cp.hash
                    ));
                }
            }
        }
        self.report.head = Some((r.seq, r.hash.clone()));
        Some((r, verified))
    }

    /// An `audit_trail_replaced` record `r`, of the chain: the records the
    /// trail held up to the head it names are lost, a failure (and, where
    /// they are the ones missing at the start, the reason for that gap).
    fn trail_replaced(&mut self, r: &AuditRecord) {
        let Ok(d) = serde_json::from_value::<TrailReplaced>(r.entry.data.clone()) else {
            self.problem(format!(
                "seq {}: the trail was replaced under its writer (audit_trail_replaced, its data unreadable): records were lost",
                r.seq
            ));
            return;
        };
        if self.replaced.len() < LISTED {
            self.replaced.push((r.seq, d.head_seq));
        }
        if self
            .start_gap
            .as_ref()
            .is_some_and(|(end, hash)| *end == d.head_seq && *hash == d.head_hash)
        {
            self.gap_named = true;
        }
        self.problem(format!(
            "seq {}: the trail was replaced under its writer at {} ({} was {}, found {}): the records up to seq {} it held are lost from it, not aged out by policy",
            r.seq,
            r.entry.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            d.stream,
            d.was.describe(),
            d.now.describe(),
            d.head_seq,
        ));
    }

    fn finish(mut self) -> TrailReport {
        if self.gap_named {
            self.report.aged_out = None;
        } else if let (Some((end, _)), None) = (&self.start_gap, &self.report.aged_out) {
            let text = self.gap_problem.take().unwrap_or_else(|| format!(
                "records seq 1..{end} are missing and no record of the trail says they aged out by policy: deleted"
            ));
            self.problem(text);
        }
        if let Some(cp) = self.checkpoint {
            let aged = self.report.aged_out.is_some_and(|(_, end)| cp.seq <= end);
            if aged && !self.checkpoint_seen {
                self.report.notes.push(format!(
                    "the checkpoint's record seq {} aged out by policy: not checked",
                    cp.seq
                ));
            } else if !self.checkpoint_seen && self.report.checkpoint_problem.is_none() {
                let end = self
                    .report
                    .head
                    .as_ref()
                    .map_or("it holds no record".to_string(), |(seq, _)| {
                        format!("it ends at seq {seq}")
                    });
                self.report.checkpoint_problem = Some(format!(
                    "the trail no longer holds record seq {} of the checkpoint ({end}): records were removed",
                    cp.seq
                ));
            }
        }
        self.report
    }
}

/// Check the JetStream trail, message by message (one request each; a
/// message holds one record or a batch). With `trusted`, every message must
/// be signed by one of its keys, and the checkpoint's own signature too.
/// `progress` is told (messages read, messages in the stream) as it goes.
pub async fn verify_jetstream(
    bus: &NatsBus,
    trusted: Option<&trust::Verifier>,
    checkpoint: Option<&Checkpoint>,
    progress: impl FnMut(u64, u64),
) -> Result<TrailReport> {
    verify_jetstream_within(bus, trusted, checkpoint, CHECKPOINT_EVERY, progress).await
}

/// [`verify_jetstream`], with leaders writing a checkpoint at least every
/// `checkpoint_every` (`audit.checkpoint_minutes`): records missing at the
/// start of the stream are aged out by its `max_age` when
/// [`aged_out_of_stream`] says so, and a purge or deletion otherwise.
pub async fn verify_jetstream_within(
    bus: &NatsBus,
    trusted: Option<&trust::Verifier>,
    checkpoint: Option<&Checkpoint>,
    checkpoint_every: Duration,
    mut progress: impl FnMut(u64, u64),
) -> Result<TrailReport> {
    let mut s = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let info = s.info().await.map_err(stream_err)?;
    let max_age = info.config.max_age;
    let state = info.state.clone();
    let mut begun = false;
    let mut checker = Checker::new(checkpoint, trusted.is_some());
    if let (Some(cp), Some(trusted)) = (checkpoint, trusted) {
        let headers = trust::CommandHeaders {
            signer: cp.signer.as_deref(),
            signature: cp.signature.as_deref(),
            context: Some(trust::AUDIT_CONTEXT),
        };
        let subject = cp.subject.as_deref().unwrap_or_default();
        let at = cp.stream_seq.unwrap_or_default();
        if let Err(e) = trusted.check_audit(subject, at, cp.seq, &cp.hash, &headers) {
            checker.report.checkpoint_problem =
                Some(format!("the checkpoint's own signature does not hold: {e}"));
        }
    }
    if state.messages == 0 {
        return Ok(checker.finish());
    }
    let total = state.last_sequence - state.first_sequence + 1;
    // Read ahead: up to `READ_AHEAD` requests in flight, answered in
    // order (memory stays that of as many messages, at most 256 KiB each).
    let stream = &s;
    // The longest `max_age` the leaders' checkpoint records say they
    // applied, and the trail's first record left with when it was stored:
    // a stream whose `max_age` was lowered after it was made ages the
    // trail out at will, so the gap is judged by what the leaders applied.
    let mut applied: Option<(u64, u64)> = None;
    let mut gap: Option<(AuditRecord, chrono::DateTime<chrono::Utc>)> = None;
    let mut fetched = futures::stream::iter(state.first_sequence.max(1)..=state.last_sequence)
        .map(|seq| async move { (seq, stream.get_raw_message(seq).await) })
        .buffered(READ_AHEAD);
    while let Some((seq, got)) = fetched.next().await {
        let m = match got {
            Ok(m) => m,
            // Deleted in the middle (a stream that allowed it): the chain
            // shows what is missing.
            Err(e) => {
                tracing::debug!(stream_seq = seq, error = %e, "audit message not readable");
                continue;
            }
        };
        checker.report.messages += 1;
        progress(checker.report.messages, total);
        let subject = m.subject.as_str();
        // Each record parsed, beside its text as stored; a message any
        // part of which is not JSON is foreign as a whole.
        let records = match record_texts_of(&m.payload).and_then(|texts| {
            texts
                .into_iter()
                .map(|t| Ok((serde_json::from_str::<Value>(t.get())?, t.get())))
                .collect::<std::result::Result<Vec<_>, serde_json::Error>>()
        }) {
            Ok(r) => r,
            Err(e) => {
                checker.foreign(seq, subject, format!("not a record: {e}"));
                continue;
            }
        };
        if let Some(trusted) = trusted {
            let verdict = match last_record_of(&m.payload) {
                Some(last) => trusted
                    .check_audit(
                        subject,
                        seq,
                        last.seq,
                        &last.hash,
                        &signature_headers(&m.headers),
                    )
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Err("holds no record".to_string()),
            };
            if let Err(reason) = verdict {
                checker.foreign(seq, subject, reason);
                continue;
            }
        }
        if !begun {
            begun = true;
            let first = records
                .first()
                .and_then(|(v, _)| AuditRecord::deserialize(v).ok());
            if let Some(first) = first.filter(|r| r.seq > 1) {
                checker.first(&first);
                let stored =
                    chrono::DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
                        .unwrap_or_default();
                match aged_out_of_stream(
                    &first,
                    stored,
                    max_age,
                    checkpoint_every,
                    chrono::Utc::now(),
                ) {
                    Ok(()) => checker.report.aged_out = Some((1, first.seq - 1)),
                    Err(why) => checker.gap_problem = Some(why.to_string()),
                }
                gap = Some((first, stored));
            }
        }
        for (r, text) in records {
            let Some((r, verified)) = checker.record(r, text.as_bytes()) else {
                continue;
            };
            if verified && r.entry.event_type == AuditEvent::AuditCheckpoint.as_str() {
                if let Ok(d) = serde_json::from_value::<CheckpointData>(r.entry.data.clone()) {
                    if applied.is_none_or(|(secs, _)| d.max_age_seconds > secs) {
                        applied = Some((d.max_age_seconds, r.seq));
                    }
                }
            }
        }
    }
    if let Some((secs, at)) = applied.filter(|(secs, _)| *secs > max_age.as_secs()) {
        let lowered = if max_age.is_zero() {
            None
        } else {
            Some(max_age)
        };
        if let Some(now) = lowered {
            checker.problem(format!(
                "the stream's max_age is {} s, shorter than the {} s the leaders applied (checkpoint seq {at}): lowered (or the stream made with a shorter one), what it removed is not aged out by policy",
                now.as_secs(),
                secs
            ));
        }
        if let Some((first, stored)) = &gap {
            let judged = aged_out_of_stream(
                first,
                *stored,
                Duration::from_secs(secs),
                checkpoint_every,
                chrono::Utc::now(),
            );
            if let Err(why) = judged {
                checker.report.aged_out = None;
                checker.gap_problem = Some(why.to_string());
            }
        }
    }
    Ok(checker.finish())
}

/// Check the audit file (embedded mode) with its sealed segments
/// ([`verify_file_trail`]), without progress.
pub fn verify_file(path: &Path, checkpoint: Option<&Checkpoint>) -> Result<TrailReport> {
    verify_file_trail(path, checkpoint, |_, _| {})
}

/// A segment read, to be judged against its seal when the chain reaches it.
struct SegmentSeen {
    sha256: String,
    bytes: u64,
    first_seq: u64,
    last_seq: u64,
    sealed: bool,
    /// Its records are also in what follows it (a rotation cut short).
    copied: bool,
}

/// What one stored file (a segment, the live file) showed so far.
#[derive(Default)]
struct Source {
    /// A record of it was read.
    begun: bool,
    /// Checking copies of records already checked: the copies' own chain.
    copies: Option<Verifier>,
    first: Option<(u64, String)>,
    last: Option<(u64, String)>,
    records: u64,
}

/// The check of a file trail in progress: the chain across the segments
/// and the live file, and the segments' seals.
struct FileWalk<'a> {
    checker: Checker<'a>,
    segments: std::collections::BTreeMap<String, SegmentSeen>,
    started: bool,
    /// Segments sealed in the chain but missing before its first record
    /// left (the first [`LISTED`]).
    gap_segments: Vec<String>,
    /// The directory the segments are in.
    dir: std::path::PathBuf,
}

impl FileWalk<'_> {
    /// One stored line of `src`, line number `line_no` of `at`.
    fn line(&mut self, src: &mut Source, at: &str, line_no: u64, bytes: &[u8]) {
        if bytes.trim_ascii().is_empty() {
            return;
        }
        self.checker.report.messages += 1;
        let v = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v,
            Err(e) => {
                self.checker
                    .foreign(line_no, at, format!("not a record: {e}"));
                return;
            }
        };
        if let Ok(r) = serde_json::from_value::<AuditRecord>(v.clone()) {
            src.records += 1;
            if src.first.is_none() {
                src.first = Some((r.seq, r.prev_hash.clone()));
            }
            src.last = Some((r.seq, r.hash.clone()));
            if !src.begun {
                src.begun = true;
                if !self.started {
                    self.checker.first(&r);
                } else if r.seq < self.checker.verifier.next_seq() {
                    // Records already checked, again: a rotation cut
                    // short. Their own chain must hold and meet the one
                    // checked at its last record.
                    let mut copies = Verifier::default();
                    copies.resume_at(r.seq - 1, &r.prev_hash);
                    src.copies = Some(copies);
                    for seen in self.segments.values_mut() {
                        if seen.first_seq >= r.seq {
                            seen.copied = true;
                        }
                    }
                }
            }
            self.started = true;
            let next = self.checker.verifier.next_seq();
            if let Some(copies) = src.copies.as_mut().filter(|_| r.seq < next) {
                self.checker.report.copies += 1;
                let mut differs = copies
                    .push_stored(v, Some(bytes))
                    .err()
                    .map(|e| e.to_string());
                if differs.is_none()
                    && r.seq + 1 == next
                    && r.hash != self.checker.verifier.last_hash()
                {
                    differs = Some(format!(
                        "record seq {} differs from the one checked before",
                        r.seq
                    ));
                }
                if let Some(e) = differs {
                    self.checker
                        .problem(format!("{at}: a copy of records already checked: {e}"));
                    src.copies = None;
                }
                return;
            }
            src.copies = None;
        }
        let Some((r, verified)) = self.checker.record(v, bytes) else {
            return;
        };
        let data = &r.entry.data;
        // A seal is judged even on a record that broke the chain (its
        // segment named, the trail already failed); an expiry only on one
        // the chain vouches for.
        if verified && r.entry.event_type == AuditEvent::AuditExpired.as_str() {
            if let Ok(e) = serde_json::from_value::<segments::Expired>(data.clone()) {
                self.checker.expired(e.through_seq, &e.through_hash);
            }
        } else if r.entry.event_type == AuditEvent::AuditSealed.as_str() {
            if let Ok(seal) = serde_json::from_value::<segments::Seal>(data.clone()) {
                self.sealed(&seal, r.seq);
            }
        }
    }

    /// The chain recorded `seal` at seq `at`: the segment it names must be
    /// the file read, unless it aged out.
    fn sealed(&mut self, seal: &segments::Seal, at: u64) {
        match self.segments.get_mut(&seal.segment) {
            Some(seen) => {
                seen.sealed = true;
                let same_range = (seen.first_seq, seen.last_seq) == (seal.first_seq, seal.last_seq);
                if seen.sha256 != seal.sha256 || seen.bytes != seal.bytes || !same_range {
                    let text = format!(
                        "segment {} was changed after it was sealed (the seal at seq {at} names SHA-256 {}, {} bytes; the file is {}, {} bytes)",
                        seal.segment, seal.sha256, seal.bytes, seen.sha256, seen.bytes
                    );
                    self.checker.problem(text);
                }
            }
            None if self.dir.join(&seal.segment).is_file() => {
                // Written after the segments were listed: its records are
                // in the live file read (opened before), checked there.
                self.checker.report.notes.push(format!(
                    "segment {} was sealed while the check ran: its records were checked in the live file",
                    seal.segment
                ));
            }
            None => {
                let aged = self
                    .checker
                    .start_gap
                    .as_ref()
                    .is_some_and(|(end, _)| seal.last_seq <= *end);
                let text = format!(
                    "segment {} (seq {}..{}), sealed at seq {at}, is missing: removed, not aged out by policy",
                    seal.segment, seal.first_seq, seal.last_seq
                );
                if !aged {
                    self.checker.problem(text);
                } else if self.gap_segments.len() < LISTED {
                    // Missing before the first record left: aged out, or
                    // named as removed if no record says so.
                    self.gap_segments.push(text);
                }
            }
        }
    }

    /// A segment read in whole: its header must describe its records.
    fn segment_read(
        &mut self,
        seg: &segments::SegmentFile,
        src: &Source,
        scanned: segments::Scanned,
    ) {
        if let Some(line) = scanned.first_overlong {
            self.checker.report.messages += scanned.overlong;
            self.checker.foreign(
                line,
                &seg.name,
                format!(
                    "not a record: {} line(s) longer than {} bytes, passed over",
                    scanned.overlong,
                    segments::MAX_LINE
                ),
            );
        }
        match &scanned.header {
            Err(e) => self
                .checker
                .problem(format!("segment {}: no header: {e}", seg.name)),
            Ok(h) => {
                let says = (
                    Some((h.first_seq, h.first_prev_hash.clone())),
                    Some((h.last_seq, h.last_hash.clone())),
                    h.records,
                );
                let holds = (src.first.clone(), src.last.clone(), src.records);
                if says != holds || (h.first_seq, h.last_seq) != (seg.first_seq, seg.last_seq) {
                    let range = |f: &Option<(u64, String)>, l: &Option<(u64, String)>| match (f, l)
                    {
                        (Some((a, _)), Some((b, _))) => format!("seq {a}..{b}"),
                        _ => "no record".to_string(),
                    };
                    let text = format!(
                        "segment {}: its header says seq {}..{} ({} records), it holds {} ({} records): changed",
                        seg.name,
                        h.first_seq,
                        h.last_seq,
                        h.records,
                        range(&src.first, &src.last),
                        src.records
                    );
                    self.checker.problem(text);
                }
            }
        }
        self.segments.insert(
            seg.name.clone(),
            SegmentSeen {
                sha256: scanned.sha256,
                bytes: scanned.bytes,
                first_seq: seg.first_seq,
                last_seq: seg.last_seq,
                sealed: false,
                copied: false,
            },
        );
    }

    fn finish(mut self) -> TrailReport {
        let unsealed: Vec<(String, u64)> = self
            .segments
            .iter()
            .filter(|(_, s)| !s.sealed && !s.copied)
            .map(|(n, s)| (n.clone(), s.last_seq))
            .collect();
        for (name, last_seq) in unsealed {
            // Its seal (the record after its last) was in a live file
            // replaced later: lost with it, reported there.
            let lost = self
                .checker
                .replaced
                .iter()
                .find(|(at, head)| last_seq < *head && last_seq < *at);
            match lost {
                Some((at, _)) => self.checker.report.notes.push(format!(
                    "segment {name}: its audit_sealed record (seq {}) was lost with the live file replaced at seq {at}: its seal not checked",
                    last_seq + 1
                )),
                None => self.checker.problem(format!(
                    "segment {name} has no audit_sealed record in the chain: not sealed by SKOS"
                )),
            }
        }
        if self.checker.start_gap.is_some() && self.checker.report.aged_out.is_none() {
            for text in std::mem::take(&mut self.gap_segments) {
                self.checker.problem(text);
            }
        }
        self.checker.finish()
    }
}

/// Check the embedded trail: its sealed segments in chain order, then the
/// live file, as one chain, streamed line by line through 256 KiB reads
/// (memory stays constant whatever the trail's length; a record per
/// segment is kept for the seals). A line that is not a record is reported
/// (as foreign, by its line number in its file) and the check goes on;
/// each segment must match its header and the seal the chain recorded for
/// it; records missing at the start must have aged out by policy (an
/// `audit_expired` record names the last of them and its hash), anywhere
/// else they were deleted. `progress` is told the file being read and the
/// lines read of it.
///
/// A segment listed but gone before it was read (aged out by the writer
/// while the check ran: its `audit_expired` record is in the live file) makes
/// the check start over, at most [`VERIFY_TRIES`] times in all.
pub fn verify_file_trail(
    path: &Path,
    checkpoint: Option<&Checkpoint>,
    mut progress: impl FnMut(&str, u64),
) -> Result<TrailReport> {
    let mut tries = 1;
    loop {
        match verify_file_once(path, checkpoint, &mut progress)? {
            Walked::Done(report) => return Ok(report),
            Walked::Vanished(report) if tries >= VERIFY_TRIES => return Ok(report),
            Walked::Vanished(_) => {
                tracing::info!(path = %path.escaped(), tries, "an audit segment aged out while it was checked: checking again");
                tries += 1;
            }
        }
    }
}

/// How many times [`verify_file_trail`] starts over at most.
pub const VERIFY_TRIES: u32 = 3;

/// One pass of [`verify_file_trail`]: its report, and whether a segment
/// listed was gone before it was read.
enum Walked {
    Done(TrailReport),
    Vanished(TrailReport),
}

fn verify_file_once(
    path: &Path,
    checkpoint: Option<&Checkpoint>,
    progress: &mut impl FnMut(&str, u64),
) -> Result<Walked> {
    let mut vanished = false;
    let mut walk = FileWalk {
        checker: Checker::new(checkpoint, false),
        segments: Default::default(),
        started: false,
        gap_segments: Vec::new(),
        dir: path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    // The live file is opened first: a rotation while the segments are
    // read leaves its records in this file (the one replaced), which is
    // read whole; opened after, they would be in neither what was listed
    // nor what was read, and look deleted.
    let file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    for seg in segments::list(path)? {
        walk.checker.report.segments += 1;
        walk.checker.place = format!("segment {}", seg.name);
        let mut src = Source::default();
        let scanned = segments::scan(&seg.path, |n, line| {
            walk.line(&mut src, &seg.name, n, line);
            if n.is_multiple_of(4096) {
                progress(&seg.name, n);
            }
        });
        match scanned {
            Ok(scanned) => walk.segment_read(&seg, &src, scanned),
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && src.records == 0 =>
            {
                vanished = true;
                walk.checker.problem(format!(
                    "segment {}: removed while it was checked",
                    seg.name
                ));
            }
            Err(e) => walk
                .checker
                .problem(format!("segment {}: unreadable: {e}", seg.name)),
        }
    }
    let name = path.escaped().to_string();
    walk.checker.place = name.clone();
    if let Some(file) = file {
        let mut src = Source::default();
        let mut reader = BufReader::with_capacity(segments::READ_BUFFER, file);
        let mut line = Vec::new();
        let mut n = 0u64;
        while let Some(too_long) =
            segments::read_line_capped(&mut reader, &mut line).map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            })?
        {
            n += 1;
            if too_long {
                walk.checker.report.messages += 1;
                walk.checker.foreign(
                    n,
                    &name,
                    format!(
                        "not a record: longer than {} bytes, passed over",
                        segments::MAX_LINE
                    ),
                );
            } else {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                walk.line(&mut src, &name, n, text);
            }
            if n.is_multiple_of(4096) {
                progress(&name, n);
            }
        }
    }
    let report = walk.finish();
    Ok(if vanished {
        Walked::Vanished(report)
    } else {
        Walked::Done(report)
    })
}

/// A checkpoint of the JetStream trail's last message (with `trusted`, its
/// last message signed by a trusted key): its last record's seq and hash,
/// and the message's signature.
pub async fn checkpoint_jetstream(
    bus: &NatsBus,
    trusted: Option<&trust::Verifier>,
) -> Result<Checkpoint> {
    let mut s = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let state = s.info().await.map_err(stream_err)?.state.clone();
    let mut seq = state.last_sequence;
    while seq >= state.first_sequence.max(1) {
        if let Ok(m) = s.get_raw_message(seq).await {
            if let Some(r) = last_record_of(&m.payload) {
                let headers = signature_headers(&m.headers);
                let trusted_ok = trusted.is_none_or(|t| {
                    t.check_audit(m.subject.as_str(), seq, r.seq, &r.hash, &headers)
                        .is_ok()
                });
                if trusted_ok {
                    return Ok(Checkpoint {
                        seq: r.seq,
                        hash: r.hash,
                        stored: format!("{} message {seq}", subjects::STREAM_AUDIT),
                        stream_seq: Some(seq),
                        subject: Some(m.subject.to_string()),
                        signer: headers.signer.map(str::to_owned),
                        signature: headers.signature.map(str::to_owned),
                        taken_at: chrono::Utc::now(),
                    });
                }
            }
        }
        seq -= 1;
    }
    Err(stream_err(if trusted.is_some() {
        "no message signed by a trusted key to take a checkpoint of"
    } else {
        "no record to take a checkpoint of"
    }))
}

/// A checkpoint of the audit file's last record.
pub fn checkpoint_file(path: &Path) -> Result<Checkpoint> {
    let last = super::read_file_tail(path, 1)?;
    let r = last
        .into_iter()
        .next()
        .and_then(|v| serde_json::from_value::<AuditRecord>(v).ok())
        .ok_or_else(|| Error::Corrupt {
            path: path.escaped().to_string(),
            reason: "no record to take a checkpoint of".into(),
        })?;
    Ok(Checkpoint {
        seq: r.seq,
        hash: r.hash,
        stored: path.escaped().to_string(),
        subject: None,
        stream_seq: None,
        signer: None,
        signature: None,
        taken_at: chrono::Utc::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skos_core::audit::Chain;
    use skos_core::AuditEntry;

    fn trail(n: u32) -> Vec<String> {
        let mut chain = Chain::default();
        (0..n)
            .map(|i| {
                let e = AuditEntry::new(
                    skos_core::AuditEvent::Node,
                    chrono::Utc::now(),
                    None,
                    "t",
                    format!("e{i}"),
                    serde_json::json!({ "i": i }),
                );
                serde_json::to_string(&chain.seal(e)).unwrap()
            })
            .collect()
    }

    fn record_at(seq: u64, event: skos_core::AuditEvent, data: Value) -> AuditRecord {
        let mut chain = skos_core::audit::Chain::after(seq - 1, &"ab".repeat(32));
        chain.seal(AuditEntry::new(
            event,
            chrono::Utc::now(),
            None,
            "t",
            "x",
            data,
        ))
    }

    /// Aged out of a stream: the first record left is a checkpoint naming
    /// the record before it, stored before the horizon, or it was stored
    /// within a checkpoint interval of the horizon; anything younger, or a
    /// stream that keeps every record, is a purge.
    #[test]
    fn an_age_out_is_judged_by_the_horizon() {
        let now = chrono::Utc::now();
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3600);
        let ago = |d: Duration| now - chrono::TimeDelta::from_std(d).unwrap();
        let plain = record_at(7, skos_core::AuditEvent::Node, Value::Null);
        // Stored at the horizon, or half an hour inside it: aged out.
        assert!(aged_out_of_stream(&plain, ago(30 * day), 30 * day, hour, now).is_ok());
        assert!(aged_out_of_stream(&plain, ago(30 * day - hour / 2), 30 * day, hour, now).is_ok());
        // A day inside it: what came before was younger than the policy.
        let e = aged_out_of_stream(&plain, ago(29 * day), 30 * day, hour, now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("records seq 1..6 are missing") && e.contains("purged"),
            "{e}"
        );
        // No max_age: nothing ages out.
        let e = aged_out_of_stream(&plain, ago(30 * day), Duration::ZERO, hour, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("keeps every record"), "{e}");
        // A checkpoint after a leaderless week: its head was stored before
        // the horizon, so what it follows aged out, though it is young.
        let data = |head_seq: u64, stored: Duration| {
            serde_json::to_value(CheckpointData {
                head_seq,
                head_hash: "ab".repeat(32),
                head_stored: Some(ago(stored)),
                max_age_seconds: (30 * day).as_secs(),
            })
            .unwrap()
        };
        let cp = record_at(7, skos_core::AuditEvent::AuditCheckpoint, data(6, 37 * day));
        assert!(aged_out_of_stream(&cp, ago(23 * day), 30 * day, hour, now).is_ok());
        // One naming another head, or a head inside the retention, is no
        // evidence.
        let cp = record_at(7, skos_core::AuditEvent::AuditCheckpoint, data(5, 37 * day));
        assert!(aged_out_of_stream(&cp, ago(23 * day), 30 * day, hour, now).is_err());
        let cp = record_at(7, skos_core::AuditEvent::AuditCheckpoint, data(6, 25 * day));
        assert!(aged_out_of_stream(&cp, ago(23 * day), 30 * day, hour, now).is_err());
    }

    /// A change is reported once and the records after it still checked;
    /// a line that is not a record is named by its number; a checkpoint
    /// catches a changed hash and a trail cut short.
    #[test]
    fn a_file_check_goes_on_after_a_break_and_judges_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut lines = trail(6);
        lines[2] = lines[2].replace("\"e2\"", "\"changed\"");
        lines.insert(4, "garbage".into());
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let r = verify_file(&path, None).unwrap();
        assert_eq!((r.break_count, r.foreign_count), (1, 1), "{r:?}");
        assert_eq!(r.before_first_break, 2);
        assert_eq!(r.records, 5, "the records after the change still count");
        assert_eq!(r.foreign[0].at, 5);
        assert!(r.breaks[0].contains("seq 3"), "{:?}", r.breaks);
        assert!(!r.ok());

        let clean = dir.path().join("clean.jsonl");
        std::fs::write(&clean, trail(6).join("\n") + "\n").unwrap();
        let cp = checkpoint_file(&clean).unwrap();
        assert_eq!(cp.seq, 6);
        assert!(verify_file(&clean, Some(&cp)).unwrap().ok());
        // Cut short.
        let short = dir.path().join("short.jsonl");
        std::fs::write(&short, trail(4).join("\n") + "\n").unwrap();
        let r = verify_file(&short, Some(&cp)).unwrap();
        assert!(
            r.checkpoint_problem
                .as_deref()
                .is_some_and(|p| p.contains("no longer holds record seq 6")),
            "{r:?}"
        );
        // Rebuilt: the same seq with another hash.
        let mut other = cp.clone();
        other.hash = "00".repeat(32);
        let r = verify_file(&clean, Some(&other)).unwrap();
        assert!(
            r.checkpoint_problem
                .as_deref()
                .is_some_and(|p| p.contains("changed or rebuilt")),
            "{r:?}"
        );
    }
}
