//! Following the audit trail as it is written: the records appended after
//! a point, as they come, from either store ([`crate::audit`] writes them).
//!
//! A reader of the trail, never a writer: it holds no lock and changes
//! nothing. Each stored unit (a line of the file, a message of the stream)
//! is read through [`audit::records_of`]: one record, or a batch of them.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde_json::Value;
use skos_core::audit::AuditRecord;

use crate::{audit, subjects, trust, Error, NatsBus, Result};

/// How often the file is looked at for new records.
const FILE_POLL: Duration = Duration::from_millis(200);

/// The most bytes read from the file in one step.
const MAX_STEP_BYTES: u64 = 4 << 20;

/// The most records taken from sealed segments in one step, when the live
/// file was replaced more than once since the last read.
const MAX_STEP_SEALED: usize = 10_000;

/// Where the records come from.
#[derive(Clone)]
pub enum AuditSource {
    /// The embedded mode's JSON-lines file.
    File(PathBuf),
    /// The `SKOS_AUDIT` stream; with keys, a message not signed by one of
    /// them (a stranger's publish) is left out, as `skos audit verify`
    /// leaves it out of the chain.
    JetStream(NatsBus, Option<Arc<trust::Verifier>>),
}

/// The records appended to the trail after it was opened, in order.
pub struct AuditFollower {
    inner: Inner,
}

enum Inner {
    File {
        path: PathBuf,
        /// Where the next unread line starts.
        offset: u64,
        /// The file read, held open: when another one is at the path (the
        /// live file replaced after its records were sealed into a
        /// segment), the rest of this one is read, then the new one from
        /// its start.
        held: Option<std::fs::File>,
        /// The highest seq given (or in the file when it was opened): a
        /// file read from its start that begins after the next one was
        /// replaced more than once; what it lacks is in the segments.
        last: Option<u64>,
    },
    JetStream {
        messages: Box<pull::Ordered>,
        trusted: Option<Arc<trust::Verifier>>,
        js: Box<async_nats::jetstream::Context>,
        /// When the server made the stream read (its identity).
        made: i128,
        /// The highest seq given (or read back at the open).
        last: Option<u64>,
    },
}

/// How long a follower of the stream waits for a message before it asks
/// whether the stream is still the one it reads.
const IDENTITY_EVERY: Duration = Duration::from_secs(5);

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

impl AuditFollower {
    /// Open `source` and read its last `backfill` records (oldest first);
    /// [`AuditFollower::next`] then gives what is appended from about that
    /// point on. A record may come in both: callers drop those whose `seq`
    /// they have seen.
    pub async fn open(source: &AuditSource, backfill: u64) -> Result<(Self, Vec<Value>)> {
        match source {
            AuditSource::File(path) => {
                let (offset, held) = match std::fs::File::open(path) {
                    Ok(f) => (f.metadata().map_err(|e| io(path, e))?.len(), Some(f)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
                    Err(e) => return Err(io(path, e)),
                };
                let last = if offset > 0 {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || audit::read_file_tail(&path, 1))
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .and_then(|r| r.last().and_then(|v| v["seq"].as_u64()))
                } else {
                    None
                };
                let recent = if backfill > 0 && offset > 0 {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || audit::read_file_tail(&path, backfill))
                        .await
                        .map_err(|e| stream_err(format!("reader stopped: {e}")))??
                } else {
                    Vec::new()
                };
                Ok((
                    Self {
                        inner: Inner::File {
                            path: path.clone(),
                            offset,
                            held,
                            last,
                        },
                    },
                    recent,
                ))
            }
            AuditSource::JetStream(bus, trusted) => {
                let js = bus.jetstream();
                let mut stream = js
                    .get_stream(subjects::STREAM_AUDIT)
                    .await
                    .map_err(stream_err)?;
                let info = stream.info().await.map_err(stream_err)?;
                let (state, made) = (info.state.clone(), info.created.unix_timestamp_nanos());
                // The backfill is the last messages up to `last`, read
                // through the same consumer (and the same checks) as what
                // follows: what comes after `last` is new, exactly.
                let last = state.last_sequence;
                let start = last
                    .saturating_sub(backfill.saturating_sub(1))
                    .max(state.first_sequence)
                    .max(1);
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        deliver_policy: DeliverPolicy::ByStartSequence {
                            start_sequence: if backfill > 0 { start } else { last + 1 },
                        },
                        ..Default::default()
                    })
                    .await
                    .map_err(stream_err)?;
                let mut messages = Box::new(consumer.messages().await.map_err(stream_err)?);
                let mut recent = Vec::new();
                if backfill > 0 && state.messages > 0 {
                    loop {
                        let m = match messages.next().await {
                            Some(Ok(m)) => m,
                            Some(Err(e)) => return Err(stream_err(e)),
                            None => return Err(Error::Closed),
                        };
                        let at = m.info().map(|i| i.stream_sequence).unwrap_or(last);
                        recent.extend(checked(&m, trusted.as_deref()));
                        if at >= last {
                            break;
                        }
                    }
                }
                let last = recent.iter().filter_map(|v| v["seq"].as_u64()).max();
                Ok((
                    Self {
                        inner: Inner::JetStream {
                            messages,
                            trusted: trusted.clone(),
                            js: Box::new(js.clone()),
                            made,
                            last,
                        },
                    },
                    recent,
                ))
            }
        }
    }

    /// The next records appended, at least one (waits for them). An error
    /// means this follower is done: open a new one.
    pub async fn next(&mut self) -> Result<Vec<Value>> {
        match &mut self.inner {
            Inner::File {
                path,
                offset,
                held,
                last,
            } => loop {
                let (path_c, from, was, seen) = (path.clone(), *offset, held.take(), *last);
                let (records, next, now) =
                    tokio::task::spawn_blocking(move || read_from(&path_c, from, was, seen))
                        .await
                        .map_err(|e| stream_err(format!("reader stopped: {e}")))??;
                *offset = next;
                *held = now;
                if let Some(top) = records.iter().filter_map(|v| v["seq"].as_u64()).max() {
                    *last = Some(last.map_or(top, |l| l.max(top)));
                }
                if !records.is_empty() {
                    return Ok(records);
                }
                tokio::time::sleep(FILE_POLL).await;
            },
            Inner::JetStream {
                messages,
                trusted,
                js,
                made,
                last,
            } => loop {
                // The ordered consumer makes itself again, silently, on a
                // stream deleted and made again, from the sequence after
                // the last it gave: what the new stream holds below it
                // never comes. So a quiet spell, or a record that does not
                // follow the last one given, has the stream's identity
                // checked.
                let m = match tokio::time::timeout(IDENTITY_EVERY, messages.next()).await {
                    Err(_) => {
                        same_stream(js, *made).await?;
                        continue;
                    }
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => return Err(stream_err(e)),
                    Ok(None) => return Err(Error::Closed),
                };
                let records = checked(&m, trusted.as_deref());
                let Some(first) = records.first().and_then(|v| v["seq"].as_u64()) else {
                    continue;
                };
                if last.is_some_and(|l| Some(first) != l.checked_add(1)) {
                    same_stream(js, *made).await?;
                }
                let top = records.iter().filter_map(|v| v["seq"].as_u64()).max();
                *last = (*last).max(top);
                return Ok(records);
            },
        }
    }
}

/// Fails with [`Error::Replaced`] when the audit stream is not the one made
/// at `made` (deleted, or deleted and made again).
async fn same_stream(js: &async_nats::jetstream::Context, made: i128) -> Result<()> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    let replaced = || Error::Replaced {
        stream: subjects::STREAM_AUDIT.to_string(),
    };
    match js.get_stream(subjects::STREAM_AUDIT).await {
        Ok(s) if s.cached_info().created.unix_timestamp_nanos() == made => Ok(()),
        Ok(_) => Err(replaced()),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Err(replaced())
            }
            // Not known: the consumer tells, or the next check.
            _ => Ok(()),
        },
    }
}

/// The records of one stream message; none when `trusted` keys are given
/// and the message is not signed by one of them over its last record
/// (logged with its stream sequence), or when it holds no record.
fn checked(m: &async_nats::jetstream::Message, trusted: Option<&trust::Verifier>) -> Vec<Value> {
    let at = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    let records = match audit::records_of(&m.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(stream_seq = at, subject = %m.subject, error = %e, "audit message is not a record; left out");
            return Vec::new();
        }
    };
    let Some(trusted) = trusted else {
        return records;
    };
    // The last element must be the record signed for (as the writer and
    // `skos audit verify` judge it).
    let last = records
        .last()
        .and_then(|v| serde_json::from_value::<AuditRecord>(v.clone()).ok());
    let Some(last) = last else {
        return Vec::new();
    };
    let headers = m.headers.as_ref();
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let signature = trust::CommandHeaders {
        signer: get(trust::HEADER_SIGNER),
        signature: get(trust::HEADER_SIGNATURE),
        context: get(trust::HEADER_CONTEXT),
    };
    match trusted.check_audit(m.subject.as_str(), at, last.seq, &last.hash, &signature) {
        Ok(_) => records,
        Err(e) => {
            tracing::warn!(stream_seq = at, subject = %m.subject, error = %e, "audit message not signed by a trusted key; left out");
            Vec::new()
        }
    }
}

/// The records appended to the file at `path` since `offset` of `held`
/// (the file read so far), where the next unread line starts, and the file
/// to hold on to. When another file is at the path (the live file replaced
/// after a rotation), the rest of `held` comes first, then the new file
/// from its start. A file read from its start whose first record is not
/// the one after `last` (the highest seq given; the file was replaced more
/// than once since) is preceded by the records sealed in between, from the
/// segments ([`MAX_STEP_SEALED`] a step, the file read once they are all
/// given). Each record once: none at or below `last`.
fn read_from(
    path: &Path,
    offset: u64,
    held: Option<std::fs::File>,
    last: Option<u64>,
) -> Result<(Vec<Value>, u64, Option<std::fs::File>)> {
    use std::os::unix::fs::MetadataExt;
    let current = match std::fs::File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(path, e)),
    };
    let ino = |f: &std::fs::File| f.metadata().map(|m| m.ino()).ok();
    let seq = |v: &Value| v["seq"].as_u64();
    let (mut out, mut file, at) = match (held, current) {
        (Some(mut old), Some(new)) if ino(&old) != ino(&new) => {
            let mut out = Vec::new();
            let mut at = offset;
            loop {
                let (records, next) = read_lines(&mut old, path, at)?;
                if next == at {
                    break;
                }
                out.extend(records);
                at = next;
            }
            (out, new, 0)
        }
        (_, Some(f)) => (Vec::new(), f, offset),
        (held, None) => return Ok((Vec::new(), offset, held)),
    };
    let mut last = out.iter().filter_map(seq).max().max(last);
    let (records, next) = read_lines(&mut file, path, at)?;
    let first = records.iter().find_map(seq);
    if let (0, Some(seen), Some(first)) = (at, last, first) {
        if first > seen + 1 {
            let mut full = false;
            audit::segments::each_after(path, seen, |v| {
                if seq(&v).is_some_and(|s| s >= first) {
                    return false;
                }
                out.push(v);
                full = out.len() >= MAX_STEP_SEALED;
                !full
            })?;
            if full {
                // The file is read once the segments are through.
                return Ok((out, 0, Some(file)));
            }
            last = out.iter().filter_map(seq).max().max(last);
        }
    }
    out.extend(
        records
            .into_iter()
            .filter(|v| seq(v).is_none_or(|s| last.is_none_or(|l| s > l))),
    );
    Ok((out, next, Some(file)))
}

/// The complete lines of `f` from `offset` on (at most [`MAX_STEP_BYTES`]),
/// as records, and where the next unread line starts. A file shorter than
/// `offset` (cut after a torn write) is read from its end.
fn read_lines(f: &mut std::fs::File, path: &Path, offset: u64) -> Result<(Vec<Value>, u64)> {
    let len = f.metadata().map_err(|e| io(path, e))?.len();
    if len < offset {
        return Ok((Vec::new(), len));
    }
    if len == offset {
        return Ok((Vec::new(), offset));
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| io(path, e))?;
    let mut buf = Vec::new();
    f.take((len - offset).min(MAX_STEP_BYTES))
        .read_to_end(&mut buf)
        .map_err(|e| io(path, e))?;
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((Vec::new(), offset));
    };
    let mut out = Vec::new();
    for line in buf[..end].split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match audit::records_of(line) {
            Ok(records) => out.extend(records),
            Err(e) => out.push(serde_json::json!({ "unreadable": e.to_string() })),
        }
    }
    Ok((out, offset + end as u64 + 1))
}

/// Up to `limit` records of the audit file whose `seq` is above `after`,
/// oldest first, and whether more follow. Read line by line: memory stays
/// that of `limit` records whatever the length of the file.
///
/// Records sealed into segments come first ([`audit::segments::each_after`]),
/// each once.
pub fn read_file_after(path: &Path, after: u64, limit: usize) -> Result<(Vec<Value>, bool)> {
    use std::io::BufRead;
    // Opened before the segments are listed: records sealed by a rotation
    // meanwhile are still in this file (the one replaced).
    let live = match std::fs::File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(path, e)),
    };
    let mut out = Vec::new();
    let mut more = false;
    let after = audit::segments::each_after(path, after, |v| {
        if out.len() == limit {
            more = true;
            return false;
        }
        out.push(v);
        true
    })?;
    if more {
        return Ok((out, true));
    }
    let Some(f) = live else {
        return Ok((out, false));
    };
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(records) = audit::records_of(line.as_bytes()) else {
            continue;
        };
        for r in records {
            if r["seq"].as_u64().is_some_and(|s| s > after) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(r);
            }
        }
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skos_core::AuditEntry;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry::new(
            skos_core::AuditEvent::Node,
            chrono::Utc::now(),
            None,
            "test",
            format!("e{i}"),
            Value::Null,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_follower_gives_what_is_appended_after_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = audit::AuditLog::open_file(&path).unwrap();
        for i in 0..3 {
            log.append(entry(i)).await.unwrap();
        }
        let (mut f, recent) = AuditFollower::open(&AuditSource::File(path.clone()), 2)
            .await
            .unwrap();
        let seqs: Vec<u64> = recent.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs.len(), 2);
        log.append(entry(3)).await.unwrap();
        log.append(entry(4)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(
                tokio::time::timeout(Duration::from_secs(5), f.next())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let summaries: Vec<&str> = got
            .iter()
            .map(|r| r["entry"]["summary"].as_str().unwrap())
            .collect();
        assert_eq!(summaries, ["e3", "e4"]);
        // Pages after a seq, bounded.
        let first = got[0]["seq"].as_u64().unwrap();
        let (page, more) = read_file_after(&path, first - 3, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert!(more);
        let (page, more) = read_file_after(&path, first, 10).unwrap();
        assert_eq!(page.len(), 1);
        assert!(!more);
    }
}
