//! The storage watcher's actions: `cleanup_temp`, `cleanup_logs`,
//! `archive_old` and `emergency_cleanup`, each strictly inside the
//! directories the configuration names for it.
//!
//! Safety rules every action keeps (see `walk.rs`):
//!
//! * each configured directory must lie, as written, inside one of
//!   `storage.allowed_roots` (and outside the system directories); it is
//!   refused when one of its parents could be swapped by someone other than
//!   root ([`skos_fs::unsafe_ancestor`]), and opened without following a
//!   symlink at any component; a missing or refused directory is a
//!   [`Skip`], not an error;
//! * the walk goes through directory handles, never follows a symlink and
//!   never crosses into another mount (by mount id: a bind mount of the
//!   same filesystem is another mount); symlinks, other mounts and
//!   hard-linked files (more than one link) are reported as skipped and left
//!   alone; only regular files are ever deleted;
//! * every file is reached again, at the moment it is read or deleted, from
//!   the configured directory's open descriptor without following a symlink
//!   or leaving its mount (`openat2` `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_XDEV`, or an `O_NOFOLLOW` walk), and must still be the same
//!   inode, with one link, of the same size and mtime, as when it was
//!   chosen: a directory swapped for a symlink in the meantime cannot lead
//!   an action outside its directory;
//! * files held open for writing by any process (read from
//!   `<proc_root>/<pid>/fd` and `fdinfo`, once per run) are skipped; when
//!   that cannot be known (procfs unreadable, some processes' descriptors
//!   unreadable), every file is left alone;
//! * `dry_run` changes nothing and lists what would go;
//! * `max_delete_bytes` caps the bytes one run deletes (or archives).
//!
//! Compressing a log and archiving a file replace the original only after the
//! copy was written, fsynced, read back and compared byte for byte (sha256)
//! with the original; a process killed at any point leaves every file either
//! in its original place or in a verified, finalized archive.

mod archive;
mod emergency;
mod logs;
mod openfiles;
mod temp;
pub(crate) mod walk;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};
use skos_core::escape::{self, ShowPath};

use crate::{Error, Result};
use openfiles::OpenFiles;
use walk::{Candidate, Root};

pub use archive::archive_old;
pub use emergency::emergency_cleanup;
pub use logs::cleanup_logs;
pub use temp::cleanup_temp;

/// Most entries kept in [`Report::would_delete`] and [`Report::skipped`];
/// the rest are only counted.
pub const MAX_LISTED: usize = 1000;

/// The skip reason of a symlink.
pub(crate) const SYMLINK: &str = "symlink (not followed)";

/// The start of the skip reason of a file left alone because files open
/// for writing cannot be known.
pub(crate) const UNKNOWN_OPEN: &str = "left alone: cannot tell whether it is open for writing";

/// Progress is reported every this many files examined...
const PROGRESS_EVERY_FILES: u64 = 1000;
/// ...or after this long without a report.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What one action run may do, and whom it tells.
pub struct RunCtx<'a> {
    pub now: SystemTime,
    /// List what would go, change nothing.
    pub dry_run: bool,
    /// Per-run cap on bytes deleted: the run stops, and says so, before the
    /// deletion that would pass it.
    pub max_delete_bytes: u64,
    /// For open-file detection (`/proc`; tests may pass a fake tree).
    pub proc_root: &'a Path,
    /// Called for progress on long runs (every ~1000 files or ~5 s) and for
    /// each notable event.
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// Usage check for `emergency_cleanup`: the current usage percent of the
    /// mount(s) concerned.
    pub usage: &'a (dyn Fn() -> Option<f64> + Sync),
    /// `emergency_cleanup` stops as soon as usage is under this (the
    /// critical threshold).
    pub stop_below: f64,
}

/// A progress sink that says nothing (`progress: &no_progress`).
pub fn no_progress(_line: &str) {}

/// A usage check that never knows (`usage: &no_usage`).
pub fn no_usage() -> Option<f64> {
    None
}

/// What an action did in one configured directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DirReport {
    #[serde(serialize_with = "escape::path")]
    pub dir: PathBuf,
    pub bytes_freed: u64,
    pub files_deleted: u64,
    pub files_compressed: u64,
    pub files_archived: u64,
}

/// A path an action left alone, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skip {
    #[serde(serialize_with = "escape::path")]
    pub path: PathBuf,
    pub reason: String,
}

/// What an action did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub action: String,
    pub dry_run: bool,
    /// Bytes freed on the filesystems of the configured dirs: deleted sizes,
    /// plus original − compressed size for compressed logs (plus what
    /// `journalctl --vacuum-size` said it freed).
    pub bytes_freed: u64,
    pub files_deleted: u64,
    pub dirs: Vec<DirReport>,
    /// Dry run: what would go (at most [`MAX_LISTED`] entries).
    #[serde(serialize_with = "escape::paths")]
    pub would_delete: Vec<PathBuf>,
    /// How many more would go than `would_delete` lists.
    pub would_delete_omitted: u64,
    /// At most [`MAX_LISTED`] entries.
    pub skipped: Vec<Skip>,
    /// How many more were skipped than `skipped` lists.
    pub skipped_omitted: u64,
    /// Finalized, verified archives written by this run.
    #[serde(serialize_with = "escape::paths")]
    pub archives: Vec<PathBuf>,
    /// Why the run stopped early (cap reached, usage under critical...).
    pub stopped: Option<String>,
    /// Other things worth telling a person (open files unknowable, a leftover
    /// partial removed, journal vacuum result...).
    pub notes: Vec<String>,
}

/// Outcome of one attempted deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// Gone (or, in a dry run, listed).
    Yes,
    /// Left in place (a [`Skip`] says why).
    Skipped,
    /// The cap is reached: the run stops.
    Cap,
}

/// State shared by the steps of one action run.
pub(crate) struct Run<'a, 'c> {
    pub ctx: &'a RunCtx<'c>,
    pub report: Report,
    pub open: OpenFiles,
    /// Bytes deleted (or, in a dry run, that would be) towards the cap.
    pub counted: u64,
    examined: u64,
    last_progress: Instant,
    last_progress_files: u64,
}

impl<'a, 'c> Run<'a, 'c> {
    pub fn new(action: &str, ctx: &'a RunCtx<'c>) -> Self {
        let open = OpenFiles::scan(ctx.proc_root);
        let mut run = Run {
            ctx,
            report: Report {
                action: action.to_string(),
                dry_run: ctx.dry_run,
                ..Report::default()
            },
            open,
            counted: 0,
            examined: 0,
            last_progress: Instant::now(),
            last_progress_files: 0,
        };
        if let Some(why) = run.open.unknown.clone() {
            run.note(format!("{why}; every file is left alone"));
        }
        run
    }

    /// A note for the report, also said through `progress` and the log.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!(action = %self.report.action, "{text}");
        (self.ctx.progress)(&format!("{}: {text}", self.report.action));
        self.report.notes.push(text);
    }

    pub fn skip(&mut self, path: impl Into<PathBuf>, reason: impl Into<String>) {
        let path = path.into();
        let reason = reason.into();
        tracing::debug!(action = %self.report.action, path = %path.escaped(), reason = %reason, "skipped");
        if self.report.skipped.len() < MAX_LISTED {
            // Symlinks are routine in temp dirs, and unknown open files
            // are said once in a note: listed, not announced.
            if reason != SYMLINK && !reason.starts_with(UNKNOWN_OPEN) {
                (self.ctx.progress)(&format!(
                    "{}: skipped {}: {reason}",
                    self.report.action,
                    path.escaped()
                ));
            }
            self.report.skipped.push(Skip { path, reason });
        } else {
            self.report.skipped_omitted += 1;
        }
    }

    fn would(&mut self, path: PathBuf) {
        if self.report.would_delete.len() < MAX_LISTED {
            self.report.would_delete.push(path);
        } else {
            self.report.would_delete_omitted += 1;
        }
    }

    /// Index of the [`DirReport`] of `dir` (added when new).
    pub fn dir_index(&mut self, dir: &Path) -> usize {
        if let Some(i) = self.report.dirs.iter().position(|d| d.dir == dir) {
            return i;
        }
        self.report.dirs.push(DirReport {
            dir: dir.to_path_buf(),
            ..DirReport::default()
        });
        self.report.dirs.len() - 1
    }

    /// Sets `stopped` (the first reason wins) and says so.
    pub fn stop(&mut self, why: String) {
        tracing::info!(action = %self.report.action, reason = %why, "stopped early");
        (self.ctx.progress)(&format!("{}: stopped: {why}", self.report.action));
        if self.report.stopped.is_none() {
            self.report.stopped = Some(why);
        }
    }

    pub fn stopped(&self) -> bool {
        self.report.stopped.is_some()
    }

    /// Whether `size` more bytes stay within the cap; when not, records the
    /// skip and stops the run.
    pub fn reserve(&mut self, path: &Path, size: u64) -> bool {
        if self.counted.saturating_add(size) > self.ctx.max_delete_bytes {
            self.skip(path, "cap reached");
            self.stop(format!(
                "cap reached: {} bytes deleted, the next file ({} bytes) would pass max_delete_bytes {}",
                self.counted, size, self.ctx.max_delete_bytes
            ));
            return false;
        }
        self.counted = self.counted.saturating_add(size);
        true
    }

    /// The writer holding `c` open, as a skip reason, if any; when open
    /// files cannot be known, every file is (fail closed).
    pub fn open_for_writing(&self, c: &Candidate) -> Option<String> {
        if let Some(why) = &self.open.unknown {
            return Some(format!("{UNKNOWN_OPEN}: {why}"));
        }
        self.open
            .writer(c.dev, c.ino)
            .map(|pid| format!("open for writing by pid {pid}"))
    }

    /// Counts one file examined; reports progress every ~1000 files or ~5 s.
    pub fn tick(&mut self) {
        self.examined += 1;
        if self.examined - self.last_progress_files >= PROGRESS_EVERY_FILES
            || self.last_progress.elapsed() >= PROGRESS_EVERY
        {
            self.last_progress = Instant::now();
            self.last_progress_files = self.examined;
            let line = format!(
                "{}: {} files examined, {} bytes freed, {} files deleted so far",
                self.report.action,
                self.examined,
                self.report.bytes_freed,
                self.report.files_deleted
            );
            (self.ctx.progress)(&line);
        }
    }

    /// Accounts a deletion (or, in a dry run, a would-be deletion).
    pub fn account_deleted(&mut self, dir: usize, path: &Path, size: u64) {
        if self.ctx.dry_run {
            self.would(path.to_path_buf());
        }
        self.report.bytes_freed = self.report.bytes_freed.saturating_add(size);
        self.report.files_deleted += 1;
        if let Some(d) = self.report.dirs.get_mut(dir) {
            d.bytes_freed = d.bytes_freed.saturating_add(size);
            d.files_deleted += 1;
        }
    }

    /// Deletes one candidate: skips it when open for writing, stops at the
    /// cap, and otherwise unlinks it (after checking it is still the file
    /// that was chosen), or, in a dry run, lists it.
    pub fn delete(&mut self, root: &mut Root, c: &Candidate, dir: usize) -> Deleted {
        if let Some(why) = self.open_for_writing(c) {
            self.skip(&c.path, why);
            return Deleted::Skipped;
        }
        if !self.reserve(&c.path, c.size) {
            return Deleted::Cap;
        }
        if !self.ctx.dry_run {
            if let Err(e) = root.remove_file(c) {
                self.counted = self.counted.saturating_sub(c.size);
                self.skip(&c.path, format!("not deleted: {e}"));
                return Deleted::Skipped;
            }
            tracing::debug!(action = %self.report.action, path = %c.path.escaped(), bytes = c.size, "deleted");
        }
        self.account_deleted(dir, &c.path, c.size);
        Deleted::Yes
    }

    pub fn finish(self) -> Report {
        let r = self.report;
        tracing::info!(
            action = %r.action,
            dry_run = r.dry_run,
            bytes_freed = r.bytes_freed,
            files_deleted = r.files_deleted,
            skipped = r.skipped.len() as u64 + r.skipped_omitted,
            stopped = ?r.stopped,
            "storage action finished"
        );
        r
    }
}

/// A configured age in seconds as a [`Duration`] (a bad value is an error,
/// never a panic).
pub(crate) fn age_limit(what: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| Error::Device {
        what: what.to_string(),
        reason: format!("{secs} is not a valid age in seconds"),
    })
}

/// How long ago `mtime` was (zero for a time in the future).
pub(crate) fn age(now: SystemTime, mtime: SystemTime) -> Duration {
    now.duration_since(mtime).unwrap_or(Duration::ZERO)
}

/// Opens every configured dir of one kind, recording a skip for those that
/// are missing or refused.
pub(crate) fn open_roots(
    run: &mut Run<'_, '_>,
    dirs: &[PathBuf],
    allowed: &[PathBuf],
) -> Vec<(Root, usize)> {
    let mut out: Vec<(Root, usize)> = Vec::new();
    for d in dirs {
        match Root::open(d, allowed) {
            Ok(root) => {
                if out
                    .iter()
                    .any(|(r, _)| r.dev == root.dev && r.ino == root.ino)
                {
                    continue;
                }
                let idx = run.dir_index(d);
                out.push((root, idx));
            }
            Err(e) => run.skip(e.dir(), e.to_string()),
        }
    }
    out
}

/// A reader that hashes what passes through it and yields exactly `expect`
/// bytes: a source that ends early is an error (and `short` says so).
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    pub len: u64,
    expect: u64,
    pub short: bool,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, expect: u64) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
            expect,
            short: false,
        }
    }

    /// The sha256 of what was read, in hex.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.expect - self.len;
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Length and sha256 (hex) of everything `r` yields.
pub(crate) fn hash_all(mut r: impl Read) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hex::encode(hasher.finalize())))
}
