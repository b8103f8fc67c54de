//! Sealed segments of the embedded audit trail: old records of the live
//! file (`audit.jsonl`) moved into compressed files beside it, so the trail
//! stays compact while its chain goes on unbroken.
//!
//! A segment is `<stem>-<first seq>-<last seq>.jsonl.zst` (the seqs
//! zero-padded to 20 digits, so names sort in chain order): zstd over a
//! header line ([`SegmentHeader`]: first and last seq, the first record's
//! `prev_hash`, the last record's hash, the record count, the newest
//! record's time) and then the records' lines exactly as the live file held
//! them. Its seal is an `audit_sealed` record written into the chain right
//! after it ([`Seal`]: the same fields and the SHA-256 of the segment file),
//! so the chain vouches for the file; an `audit_expired` record
//! ([`Expired`]) is written before a segment past the retention is
//! removed, naming the range and the last hash that aged out.
//!
//! Rotation (in [`super::AuditLog`]) is: write the segment to a temp file,
//! fsync, rename, fsync the directory; append the seal record (fsynced);
//! write the live file's remainder (the seal record) to a temp file, fsync,
//! rename it over the live file. A crash between any two steps leaves every
//! record in the segment, the live file or both (the copies are identical;
//! `skos audit verify` checks them against each other), and the next open
//! completes the rotation ([`super::AuditLog::open_file_with`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skos_core::escape::ShowPath;

use crate::{Error, Result};

/// The format number a segment's header carries.
pub const FORMAT: u32 = 1;

/// zstd level segments are written at (a trail compresses about 10:1).
const LEVEL: i32 = 3;

/// The buffer segments and live files are read through (batched reads).
pub const READ_BUFFER: usize = 256 * 1024;

/// The longest line read whole from a segment or a live file, in bytes
/// (16 MiB, far above the largest record or batch): a longer one is passed
/// over without being kept, so a few kilobytes of zstd that inflate to one
/// endless line cannot take the reader's memory.
pub const MAX_LINE: usize = 16 << 20;

/// The next line of `r` into `line` (its newline kept, if any), reading at
/// most [`MAX_LINE`] bytes of it into memory: `None` at the end; `Some(true)`
/// when the line was longer (`line` is then empty and the rest of the line
/// was read past).
pub fn read_line_capped<R: BufRead + ?Sized>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut any = false;
    let mut too_long = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (n, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + n > MAX_LINE + 1 {
                too_long = true;
                line.clear();
                line.shrink_to(READ_BUFFER);
            } else {
                line.extend_from_slice(&buf[..n]);
            }
        }
        r.consume(n);
        if done {
            return Ok(Some(too_long));
        }
    }
}

/// When the live file is sealed into a segment, and how long segments are
/// kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Seal once the live file holds this many bytes.
    pub segment_bytes: u64,
    /// ... or once its oldest record is this old.
    pub segment_age: Duration,
    /// Remove a segment (recording `audit_expired`) once its newest record
    /// is this old; `None`: keep every segment.
    pub retain: Option<Duration>,
}

impl Default for Policy {
    /// 64 MiB or a day per segment, every segment kept.
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(24 * 3600),
            retain: None,
        }
    }
}

/// The first line of a segment (before compression, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// [`FORMAT`].
    pub skos_audit_segment: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The first record's `prev_hash`: the hash of the record before the
    /// segment.
    pub first_prev_hash: String,
    /// The last record's hash: the next segment's (or the live file's)
    /// first `prev_hash`.
    pub last_hash: String,
    /// Records it holds.
    pub records: u64,
    /// The newest record's time: the segment ages out by it.
    pub newest: chrono::DateTime<chrono::Utc>,
}

/// The data of an `audit_sealed` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seal {
    /// The segment's file name (in the live file's directory).
    pub segment: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_prev_hash: String,
    pub last_hash: String,
    pub records: u64,
    /// SHA-256 (hex) of the segment file as written.
    pub sha256: String,
    /// The segment file's size in bytes.
    pub bytes: u64,
}

/// The data of an `audit_expired` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expired {
    /// The segment removed.
    pub segment: String,
    pub first_seq: u64,
    /// The last record that aged out, and its hash: the next record's
    /// `prev_hash`.
    pub through_seq: u64,
    pub through_hash: String,
    pub records: u64,
    /// The newest record's time in the segment.
    pub newest: chrono::DateTime<chrono::Utc>,
    /// The retention that applied, in seconds.
    pub retain_seconds: u64,
}

/// A segment file found beside the live file.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentFile {
    pub name: String,
    pub path: PathBuf,
    /// First and last seq, from its name.
    pub first_seq: u64,
    pub last_seq: u64,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl ToString) -> Error {
    Error::Corrupt {
        path: path.escaped().to_string(),
        reason: reason.to_string(),
    }
}

/// The stem segments of `live` are named by (`audit` for `audit.jsonl`).
pub fn stem(live: &Path) -> String {
    live.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into())
}

/// The name of the segment of `live` holding seqs `first..=last`.
pub fn name(live: &Path, first: u64, last: u64) -> String {
    format!("{}-{first:020}-{last:020}.jsonl.zst", stem(live))
}

/// The seqs a segment name of `stem` holds, if it is one.
fn parse_name(stem: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(stem)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(".jsonl.zst")?;
    let (a, b) = rest.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

/// The segments of the live file `live`, in chain order (by first seq).
/// A directory that does not exist holds none.
pub fn list(live: &Path) -> Result<Vec<SegmentFile>> {
    let dir = live.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let stem = stem(live);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((first_seq, last_seq)) = parse_name(&stem, &name) {
            out.push(SegmentFile {
                path: dir.join(&name),
                name,
                first_seq,
                last_seq,
            });
        }
    }
    out.sort_by_key(|s| (s.first_seq, s.last_seq));
    Ok(out)
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWrite<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Why a segment's first line is not its header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    #[error("empty")]
    Empty,
    #[error("a first line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("{0}")]
    Unreadable(String),
}

/// What reading a whole segment found.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    /// Its header, or why it is not one.
    pub header: std::result::Result<SegmentHeader, BadHeader>,
    /// SHA-256 (hex) of the file.
    pub sha256: String,
    /// The file's size in bytes.
    pub bytes: u64,
    /// Lines longer than [`MAX_LINE`] passed over (not given to `each`),
    /// and the number of the first.
    pub overlong: u64,
    pub first_overlong: Option<u64>,
}

/// Read the segment at `path` in one pass, in constant memory: each line
/// after the header goes to `each` (its line number in the segment, from 2,
/// and its bytes without the newline); a line longer than [`MAX_LINE`] is
/// passed over and counted ([`Scanned::overlong`]), so memory stays
/// constant whatever the segment inflates to. Fails when the file cannot
/// be read or decompressed (what was given to `each` before stays given).
pub fn scan(path: &Path, mut each: impl FnMut(u64, &[u8])) -> Result<Scanned> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let hashing = Hashing {
        inner: file,
        hash: Sha256::new(),
        bytes: 0,
    };
    let decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, hashing))
            .map_err(|e| io(path, e))?;
    let mut lines = BufReader::with_capacity(READ_BUFFER, decoder);
    let mut line = Vec::new();
    let mut header = Err(BadHeader::Empty);
    let mut n = 0u64;
    let (mut overlong, mut first_overlong) = (0u64, None);
    while let Some(too_long) = read_line_capped(&mut lines, &mut line).map_err(|e| io(path, e))? {
        n += 1;
        if too_long {
            if n == 1 {
                header = Err(BadHeader::TooLong);
            } else {
                overlong += 1;
                first_overlong.get_or_insert(n);
            }
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if n == 1 {
            header = serde_json::from_slice::<SegmentHeader>(text)
                .map_err(|e| BadHeader::Unreadable(e.to_string()));
            continue;
        }
        each(n, text);
    }
    // The hash covers the whole file, anything after the last frame too.
    let mut rest = lines.into_inner().finish();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| io(path, e))?;
    let hashing = rest.into_inner();
    Ok(Scanned {
        header,
        sha256: hex::encode(hashing.hash.finalize()),
        bytes: hashing.bytes,
        overlong,
        first_overlong,
    })
}

/// The header of the segment at `path` (only its first line is
/// decompressed).
pub fn header(path: &Path) -> Result<SegmentHeader> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| io(path, e))?;
    let mut line = Vec::new();
    BufReader::new(decoder.take(64 * 1024))
        .read_until(b'\n', &mut line)
        .map_err(|e| io(path, e))?;
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(&line))
        .map_err(|e| corrupt(path, format!("segment header: {e}")))
}

/// Write the first `len` bytes of the live file at `live` (whole lines)
/// into the segment `header` describes, in `dir` (the live file's private
/// directory): a temp file created exclusively, fsynced, renamed into
/// place, the directory fsynced. Gives the seal to record.
pub(crate) fn write(
    dir: &skos_fs::Dir,
    live: &Path,
    len: u64,
    header: &SegmentHeader,
) -> Result<Seal> {
    let name = name(live, header.first_seq, header.last_seq);
    let tmp = format!(".{name}.tmp");
    let tmp_path = dir.path().join(&tmp);
    // Left by a crash: never trusted, written afresh.
    dir.remove(tmp.as_ref())?;
    let file = dir.create_new(tmp.as_ref())?;
    let written = (|| -> std::io::Result<(String, u64)> {
        let out = HashingWrite {
            inner: file,
            hash: Sha256::new(),
            bytes: 0,
        };
        let mut enc = zstd::stream::write::Encoder::new(out, LEVEL)?;
        let mut head = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        head.push(b'\n');
        enc.write_all(&head)?;
        let mut src = File::open(live)?.take(len);
        std::io::copy(&mut src, &mut enc)?;
        let out = enc.finish()?;
        out.inner.sync_all()?;
        Ok((hex::encode(out.hash.finalize()), out.bytes))
    })();
    let (sha256, bytes) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = dir.remove(tmp.as_ref());
            return Err(io(&tmp_path, e));
        }
    };
    dir.rename(tmp.as_ref(), name.as_ref())?;
    Ok(Seal {
        segment: name,
        first_seq: header.first_seq,
        last_seq: header.last_seq,
        first_prev_hash: header.first_prev_hash.clone(),
        last_hash: header.last_hash.clone(),
        records: header.records,
        sha256,
        bytes,
    })
}

/// The last `want` records held by the segments of `live` whose seq is
/// below `below` (the live file's first), oldest first: the newest segments
/// are decompressed in turn, keeping at most `want` records in memory.
pub fn tail(live: &Path, want: usize, below: u64) -> Result<Vec<serde_json::Value>> {
    let mut out: std::collections::VecDeque<serde_json::Value> = Default::default();
    if want == 0 {
        return Ok(Vec::new());
    }
    let mut below = below;
    for seg in list(live)?.iter().rev() {
        if out.len() >= want {
            break;
        }
        if seg.first_seq >= below {
            continue;
        }
        let mut got: std::collections::VecDeque<serde_json::Value> = Default::default();
        let room = want - out.len();
        scan(&seg.path, |_, line| {
            if line.trim_ascii().is_empty() {
                return;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                return;
            };
            if v["seq"].as_u64().is_some_and(|s| s < below) {
                if got.len() == room {
                    got.pop_front();
                }
                got.push_back(v);
            }
        })?;
        if let Some(first) = got.front().and_then(|v| v["seq"].as_u64()) {
            below = first;
        }
        for v in got.into_iter().rev() {
            out.push_front(v);
        }
    }
    Ok(out.into())
}

/// Every record of the segments of `live` (in chain order) whose seq is
/// above `after`, given to `each` until it returns `false`; records are
/// given once, in increasing seq (copies left by an interrupted rotation are
/// skipped). Returns the highest seq given (or `after`).
pub fn each_after(
    live: &Path,
    after: u64,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<u64> {
    let mut last = after;
    let mut go = true;
    for seg in list(live)? {
        if !go {
            break;
        }
        if seg.last_seq <= last {
            continue;
        }
        scan(&seg.path, |_, line| {
            if !go {
                return;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                return;
            };
            if let Some(seq) = v["seq"].as_u64().filter(|s| *s > last) {
                last = seq;
                go = each(v);
            }
        })?;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_parse_back() {
        let live = Path::new("/x/audit.jsonl");
        let n = name(live, 7, 1200);
        assert_eq!(
            n,
            "audit-00000000000000000007-00000000000000001200.jsonl.zst"
        );
        assert_eq!(parse_name("audit", &n), Some((7, 1200)));
        assert!(name(live, 99, 100) < name(live, 101, 5000));
        for bad in [
            "audit-7-1200.jsonl.zst",
            "audit-00000000000000000009-00000000000000000008.jsonl.zst",
            "other-00000000000000000007-00000000000000001200.jsonl.zst",
            ".audit-00000000000000000007-00000000000000001200.jsonl.zst.tmp",
        ] {
            assert_eq!(parse_name("audit", bad), None, "{bad}");
        }
    }
}
