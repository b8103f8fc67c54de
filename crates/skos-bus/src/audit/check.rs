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
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use skos_core::audit::{AuditRecord, ChainError, Verifier};
use skos_core::escape::ShowPath;

use super::{last_record_of, records_of, signature_headers, stream_err};
use crate::{subjects, trust, Error, NatsBus, Result};

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

    fn broke(&mut self, e: &ChainError) {
        if self.report.break_count == 0 {
            self.report.before_first_break = self.report.records;
        }
        self.report.break_count += 1;
        if self.report.breaks.len() < LISTED {
            self.report.breaks.push(e.to_string());
        }
    }

    /// One record, in order.
    fn record(&mut self, value: Value) {
        let record = serde_json::from_value::<AuditRecord>(value.clone()).ok();
        match self.verifier.push_value(value) {
            Ok(()) => {
                self.report.records += 1;
            }
            Err(e) => {
                self.broke(&e);
                // Go on from the record that broke it.
                if let Some(r) = &record {
                    self.verifier.resume_after(r);
                }
            }
        }
        let Some(r) = record else { return };
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
        self.report.head = Some((r.seq, r.hash));
    }

    fn finish(mut self) -> TrailReport {
        if let Some(cp) = self.checkpoint {
            if !self.checkpoint_seen && self.report.checkpoint_problem.is_none() {
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
    mut progress: impl FnMut(u64, u64),
) -> Result<TrailReport> {
    let mut s = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let state = s.info().await.map_err(stream_err)?.state.clone();
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
    for seq in state.first_sequence.max(1)..=state.last_sequence {
        let m = match s.get_raw_message(seq).await {
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
        let records = match records_of(&m.payload) {
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
        for r in records {
            checker.record(r);
        }
    }
    Ok(checker.finish())
}

/// Check the audit file (embedded mode), line by line. A line that is not
/// a record is reported (as foreign, by its line number) and the check
/// goes on.
pub fn verify_file(path: &Path, checkpoint: Option<&Checkpoint>) -> Result<TrailReport> {
    let file = File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut checker = Checker::new(checkpoint, false);
    let name = path.escaped().to_string();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        checker.report.messages += 1;
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => checker.record(v),
            Err(e) => checker.foreign(i as u64 + 1, &name, format!("not a record: {e}")),
        }
    }
    Ok(checker.finish())
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
