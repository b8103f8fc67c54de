//! The audit trail: every alert, decision, command, result and verification,
//! hash-chained (see `skos_core::audit`).
//!
//! Two stores: the JetStream stream `SKOS_AUDIT` (created with deny-delete
//! and deny-purge; each record published with the expected last stream
//! sequence, so two writers cannot fork the chain), or an append-only JSON
//! lines file (embedded mode), fsynced after each record and locked against
//! a second writer.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde_json::Value;
use skos_core::audit::{AuditRecord, Chain, ChainError, Verifier};
use skos_core::AuditEntry;
use tokio::sync::Mutex;

use crate::{subjects, Error, NatsBus, Result};

pub enum AuditStore {
    File {
        path: PathBuf,
        file: File,
    },
    JetStream {
        js: Box<jetstream::Context>,
        last_stream_seq: u64,
    },
}

/// The writer side of the audit trail.
pub struct AuditLog {
    inner: Mutex<(AuditStore, Chain)>,
    /// The writing coordinator's term: stamped on every entry without one,
    /// and the fence: once a record of a higher term is in the stream,
    /// appends from this writer fail with [`Error::Deposed`].
    term: std::sync::Mutex<Option<u64>>,
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
    pub fn open_file(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        file.try_lock().map_err(|e| Error::Corrupt {
            path: path.display().to_string(),
            reason: format!("locked by another SKOS process: {e}"),
        })?;
        let (last, good_len, total_len) = scan_file(path)?;
        let mut torn = None;
        if good_len < total_len {
            file.set_len(good_len).map_err(|e| io(path, e))?;
            file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
            torn = Some(total_len - good_len);
        }
        let chain = Chain::resume(last.as_ref());
        let log = Self {
            inner: Mutex::new((
                AuditStore::File {
                    path: path.to_path_buf(),
                    file,
                },
                chain,
            )),
            term: std::sync::Mutex::new(None),
        };
        if let Some(bytes) = torn {
            tracing::warn!(path = %path.display(), bytes, "cut a torn record off the end of the audit file");
            log.append_blocking(AuditEntry::new(
                skos_core::AuditEvent::AuditRecovered,
                chrono::Utc::now(),
                None,
                "audit",
                format!("cut {bytes} bytes of a torn record off the audit file"),
                serde_json::json!({ "bytes": bytes }),
            ))?;
        }
        Ok(log)
    }

    /// Open the JetStream audit stream and continue its chain.
    pub async fn open_jetstream(bus: &NatsBus) -> Result<Self> {
        let js = Box::new(bus.jetstream().clone());
        let (last, seq) = last_record(&js).await?;
        Ok(Self {
            inner: Mutex::new((
                AuditStore::JetStream {
                    js,
                    last_stream_seq: seq,
                },
                Chain::resume(last.as_ref()),
            )),
            term: std::sync::Mutex::new(None),
        })
    }

    /// The last `n` records, oldest first (used to rebuild state after a
    /// restart).
    pub async fn read_recent(&self, n: u64) -> Result<Vec<Value>> {
        let guard = self.inner.lock().await;
        match &guard.0 {
            AuditStore::File { path, .. } => {
                let mut all = read_file(path)?;
                let skip = all.len().saturating_sub(n as usize);
                Ok(all.split_off(skip))
            }
            AuditStore::JetStream { js, .. } => read_js(js, Some(n)).await,
        }
    }

    fn append_blocking(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let mut guard = self.inner.try_lock().map_err(|_| Error::Closed)?;
        let (store, chain) = &mut *guard;
        match store {
            AuditStore::File { path, file } => append_file(path, file, chain, entry),
            AuditStore::JetStream { .. } => Err(Error::Closed),
        }
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

    pub async fn append(&self, mut entry: AuditEntry) -> Result<AuditRecord> {
        let term = self.current_term();
        if entry.term.is_none() {
            entry.term = term;
        }
        let mut guard = self.inner.lock().await;
        let (store, chain) = &mut *guard;
        match store {
            AuditStore::File { path, file } => {
                let (path, file) = (&*path, &mut *file);
                tokio::task::block_in_place(|| append_file(path, file, chain, entry))
            }
            AuditStore::JetStream {
                js,
                last_stream_seq,
            } => {
                let mut attempts = 0;
                loop {
                    let mut trial = chain.clone();
                    let record = trial.seal(entry.clone());
                    let payload = serde_json::to_vec(&record).map_err(stream_err)?;
                    let subject = subjects::audit(&record.entry.event_type);
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(Bytes::from(payload))
                        .expected_last_sequence(*last_stream_seq);
                    let ack = match js.send_publish(subject.clone(), publish).await {
                        Ok(f) => f.await,
                        Err(e) => return Err(Error::subject(&subject, e)),
                    };
                    match ack {
                        Ok(ack) => {
                            *chain = trial;
                            *last_stream_seq = ack.sequence;
                            return Ok(record);
                        }
                        Err(e) if attempts < 3 => {
                            // Someone else wrote (another coordinator, or a
                            // stray publisher): re-read the tail and reseal.
                            attempts += 1;
                            tracing::warn!(error = %e, "audit append raced, re-reading the stream tail");
                            let (last, seq) = last_record(js).await?;
                            // Fencing: a newer leader has written.
                            let newer = last.as_ref().and_then(|r| r.entry.term);
                            if let (Some(mine), Some(newer)) = (term, newer) {
                                if newer > mine {
                                    return Err(Error::Deposed { term: mine, newer });
                                }
                            }
                            *chain = Chain::resume(last.as_ref());
                            *last_stream_seq = seq;
                        }
                        Err(e) => return Err(Error::subject(&subject, e)),
                    }
                }
            }
        }
    }
}

fn append_file(
    path: &Path,
    file: &mut File,
    chain: &mut Chain,
    entry: AuditEntry,
) -> Result<AuditRecord> {
    let mut trial = chain.clone();
    let record = trial.seal(entry);
    let mut line = serde_json::to_vec(&record).map_err(|e| Error::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    file.write_all(&line).map_err(|e| io(path, e))?;
    file.sync_data().map_err(|e| io(path, e))?;
    *chain = trial;
    Ok(record)
}

/// Last parseable record, length of the well-formed prefix, total length.
fn scan_file(path: &Path) -> Result<(Option<AuditRecord>, u64, u64)> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let total = file.metadata().map_err(|e| io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let (mut last, mut good, mut line) = (None, 0u64, Vec::new());
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            // Torn: no newline at the end of the file.
            break;
        }
        if let Ok(r) = serde_json::from_slice::<AuditRecord>(&line) {
            last = Some(r);
        }
        good += n as u64;
    }
    Ok((last, good, total))
}

async fn last_record(js: &jetstream::Context) -> Result<(Option<AuditRecord>, u64)> {
    let mut s = js
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let last_seq = s.info().await.map_err(stream_err)?.state.last_sequence;
    if last_seq == 0 {
        return Ok((None, 0));
    }
    // Walk back over anything that is not one of our records.
    let mut seq = last_seq;
    while seq > 0 {
        if let Ok(m) = s.get_raw_message(seq).await {
            if let Ok(r) = serde_json::from_slice::<AuditRecord>(&m.payload) {
                return Ok((Some(r), last_seq));
            }
        }
        seq -= 1;
    }
    Ok((None, last_seq))
}

/// Read every record of the audit file as JSON values, in order.
pub fn read_file(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| Error::Corrupt {
            path: format!("{}:{}", path.display(), i + 1),
            reason: e.to_string(),
        })?;
        out.push(v);
    }
    Ok(out)
}

/// Read the last `n` records of the JetStream audit stream (all when `None`).
pub async fn read_jetstream(bus: &NatsBus, n: Option<u64>) -> Result<Vec<Value>> {
    read_js(bus.jetstream(), n).await
}

async fn read_js(js: &jetstream::Context, n: Option<u64>) -> Result<Vec<Value>> {
    let mut s = js
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .map_err(stream_err)?;
    let info = s.info().await.map_err(stream_err)?.state.clone();
    let first = match n {
        Some(n) => info
            .last_sequence
            .saturating_sub(n.saturating_sub(1))
            .max(info.first_sequence),
        None => info.first_sequence,
    };
    let mut out = Vec::new();
    if info.messages == 0 {
        return Ok(out);
    }
    for seq in first..=info.last_sequence {
        let m = s.get_raw_message(seq).await.map_err(|e| Error::Stream {
            stream: subjects::STREAM_AUDIT.to_string(),
            reason: format!("message {seq}: {e}"),
        })?;
        let v = serde_json::from_slice(&m.payload).unwrap_or_else(
            |e| serde_json::json!({ "unreadable": e.to_string(), "stream_seq": seq }),
        );
        out.push(v);
    }
    Ok(out)
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
    async fn torn_tail_is_cut_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let log = AuditLog::open_file(&path).unwrap();
            log.append(entry(0)).await.unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"prev_ha").unwrap();
        drop(f);
        let log = AuditLog::open_file(&path).unwrap();
        log.append(entry(1)).await.unwrap();
        let records = read_file(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1]["entry"]["event_type"], "audit_recovered");
        assert!(verify(records).error.is_none());
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let _a = AuditLog::open_file(&path).unwrap();
        assert!(AuditLog::open_file(&path).is_err());
    }
}
