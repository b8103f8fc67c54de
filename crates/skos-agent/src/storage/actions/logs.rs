//! `cleanup_logs`: in `logs.dirs`,
//!
//! 1. rotated logs (`x.log.1`, `x.1`, `x.log-20240101`, `x.log.2024-01-01`;
//!    never an active `*.log`, never one already `.gz`/`.zst`/`.xz`/`.bz2`)
//!    older than `compress_after` are gzip-compressed: `name.gz.partial` is
//!    written, fsynced, read back and compared (sha256) with the original,
//!    given the original's mtime, mode and owner, renamed to `name.gz`, and
//!    only then is the original removed;
//! 2. compressed logs older than `retention` are deleted, oldest first
//!    across all dirs (a rotated log already past `retention` is deleted
//!    directly: compressing it first would change nothing but the work);
//! 3. when `logs.journal_vacuum_size` is set and `journalctl` exists,
//!    `journalctl --vacuum-size=<size>` runs (no shell, 60 s timeout).
//!
//! A leftover `name.gz.partial` from an interrupted run (its original still
//! present) is removed. Compression deletes nothing that is not kept in the
//! compressed copy, so the per-run cap applies to the deletions only.

use skos_core::escape::ShowPath;
use std::ffi::OsStr;
use std::io::{self, BufReader, BufWriter, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use skos_core::config::StorageConfig;

use super::walk::{self, Candidate, Root};
use super::{age, age_limit, hash_all, open_roots, Deleted, Hashing, Report, Run, RunCtx};
use crate::Result;

/// Longest `journalctl --vacuum-size` may run.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(60);

const COMPRESSED: &[&str] = &[".gz", ".zst", ".xz", ".bz2"];
const PARTIAL: &str = ".gz.partial";

/// What a file in a log dir is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogKind {
    /// Active logs and anything else: never touched.
    Other,
    /// Rotated, not compressed.
    Rotated,
    Compressed,
    /// `name.gz.partial`, left by an interrupted compression.
    Partial,
}

pub(crate) fn classify(name: &OsStr) -> LogKind {
    let Some(name) = name.to_str() else {
        return LogKind::Other;
    };
    if name.len() > PARTIAL.len() && name.ends_with(PARTIAL) {
        return LogKind::Partial;
    }
    if COMPRESSED
        .iter()
        .any(|ext| name.len() > ext.len() && name.ends_with(ext))
    {
        return LogKind::Compressed;
    }
    if is_rotated(name) {
        return LogKind::Rotated;
    }
    LogKind::Other
}

/// `x.1`, `x.log.1`, `x.log.2024-01-01`, `x.log-20240101`.
fn is_rotated(name: &str) -> bool {
    if let Some((stem, ext)) = name.rsplit_once('.') {
        if !stem.is_empty()
            && ext.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && ext
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return true;
        }
    }
    if let Some((stem, suffix)) = name.rsplit_once('-') {
        if !stem.is_empty() && suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) {
            return true;
        }
    }
    false
}

pub fn cleanup_logs(cfg: &StorageConfig, ctx: &RunCtx) -> Result<Report> {
    let compress_after = age_limit("storage.logs.compress_after", cfg.logs.compress_after)?;
    let retention = age_limit("storage.logs.retention", cfg.logs.retention)?;
    let mut run = Run::new("cleanup_logs", ctx);
    let mut roots = open_roots(&mut run, &cfg.logs.dirs, &cfg.allowed_roots);
    let mut deletions: Vec<(usize, Candidate)> = Vec::new();
    for (ri, (root, idx)) in roots.iter_mut().enumerate() {
        let found = scan(&mut run, root);
        remove_partials(&mut run, root, &found.partials);
        let mut rotated = found.rotated;
        rotated.sort_by_key(|c| c.mtime);
        for c in rotated {
            let a = age(ctx.now, c.mtime);
            if a > retention {
                deletions.push((ri, c));
            } else if a > compress_after {
                compress(&mut run, root, &c, *idx);
            }
        }
        for c in found.compressed {
            if age(ctx.now, c.mtime) > retention {
                deletions.push((ri, c));
            }
        }
    }
    deletions.sort_by_key(|(_, c)| c.mtime);
    for (ri, c) in &deletions {
        let Some((root, idx)) = roots.get_mut(*ri) else {
            continue;
        };
        if run.delete(root, c, *idx) == Deleted::Cap {
            break;
        }
    }
    if let Some(size) = &cfg.logs.journal_vacuum_size {
        vacuum_journal(&mut run, size);
    }
    Ok(run.finish())
}

/// The files of one log dir, by kind.
#[derive(Default)]
pub(crate) struct LogFiles {
    pub rotated: Vec<Candidate>,
    pub compressed: Vec<Candidate>,
    pub partials: Vec<Candidate>,
}

pub(crate) fn scan(run: &mut Run<'_, '_>, root: &mut Root) -> LogFiles {
    let mut out = LogFiles::default();
    root.walk(run, None, |_, c| match classify(c.name()) {
        LogKind::Rotated => out.rotated.push(c),
        LogKind::Compressed => out.compressed.push(c),
        LogKind::Partial => out.partials.push(c),
        LogKind::Other => {}
    });
    out
}

/// Removes `name.gz.partial` files whose original `name` is still there
/// (left by an interrupted compression).
pub(crate) fn remove_partials(run: &mut Run<'_, '_>, root: &mut Root, partials: &[Candidate]) {
    for p in partials {
        let Some(orig) = p
            .name()
            .to_str()
            .and_then(|n| n.strip_suffix(PARTIAL))
            .map(OsStr::new)
        else {
            continue;
        };
        let Ok(parent) = root.open_parent(&p.rel) else {
            continue;
        };
        let has_original = walk::lstat_at(&parent, orig).is_ok_and(|m| m.file_type().is_file());
        if !has_original {
            run.skip(
                &p.path,
                "partial compression without its original: left for a person",
            );
            continue;
        }
        if run.ctx.dry_run {
            run.note(format!(
                "would remove {} (left by an interrupted compression)",
                p.path.escaped()
            ));
            continue;
        }
        match root.remove_in(&parent, p) {
            Ok(()) => run.note(format!(
                "removed {} (left by an interrupted compression)",
                p.path.escaped()
            )),
            Err(e) => run.skip(&p.path, format!("leftover partial not removed: {e}")),
        }
    }
}

/// Compresses one rotated log (see the module docs); counts it, or records
/// why it was skipped.
pub(crate) fn compress(run: &mut Run<'_, '_>, root: &mut Root, c: &Candidate, idx: usize) {
    if let Some(why) = run.open_for_writing(c) {
        run.skip(&c.path, why);
        return;
    }
    if run.ctx.dry_run {
        if let Some(d) = run.report.dirs.get_mut(idx) {
            d.files_compressed += 1;
        }
        return;
    }
    match compress_one(root, c) {
        Ok(freed) => {
            tracing::debug!(path = %c.path.escaped(), bytes_freed = freed, "log compressed");
            run.report.bytes_freed = run.report.bytes_freed.saturating_add(freed);
            if let Some(d) = run.report.dirs.get_mut(idx) {
                d.files_compressed += 1;
                d.bytes_freed = d.bytes_freed.saturating_add(freed);
            }
        }
        Err(why) => run.skip(why.path(), why.to_string()),
    }
}

/// Why a log was left as it is: the reason of its skip, which names the
/// log (and its `.gz` where that is in the way).
#[derive(Debug, thiserror::Error)]
enum NotCompressed {
    #[error("not compressed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not compressed: {} already exists with other content", .gz.escaped())]
    OtherContent { path: PathBuf, gz: PathBuf },
    #[error("not compressed: {} exists and is not a regular file", .gz.escaped())]
    NotRegular { path: PathBuf, gz: PathBuf },
    #[error("not compressed: changed while compressing")]
    Changed { path: PathBuf },
    #[error("not compressed: the compressed copy does not match")]
    Mismatch { path: PathBuf },
    #[error("not compressed: reading back the copy: {source}")]
    ReadBack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("compressed, but fsync of its dir failed: {source}")]
    Fsync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("compressed to {}, original kept: {source}", .gz.escaped())]
    OriginalKept {
        path: PathBuf,
        gz: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NotCompressed {
    /// The log that was not compressed.
    fn path(&self) -> &Path {
        match self {
            NotCompressed::Io { path, .. }
            | NotCompressed::OtherContent { path, .. }
            | NotCompressed::NotRegular { path, .. }
            | NotCompressed::Changed { path }
            | NotCompressed::Mismatch { path }
            | NotCompressed::ReadBack { path, .. }
            | NotCompressed::Fsync { path, .. }
            | NotCompressed::OriginalKept { path, .. } => path,
        }
    }

    fn io(c: &Candidate) -> impl Fn(io::Error) -> NotCompressed + '_ {
        |source| NotCompressed::Io {
            path: c.path.clone(),
            source,
        }
    }
}

/// Compresses `c` to `c.gz`; returns the bytes freed, or why not.
fn compress_one(root: &mut Root, c: &Candidate) -> std::result::Result<u64, NotCompressed> {
    let (src, parent, meta) = root.open_candidate(c).map_err(NotCompressed::io(c))?;
    let name = c.name();
    let gz = walk::with_suffix(name, ".gz");
    let partial = walk::with_suffix(name, PARTIAL);
    match walk::lstat_at(&parent, &gz) {
        Ok(m) if m.file_type().is_file() => {
            // An earlier run may have been stopped between the rename and the
            // removal of the original: the same content means it is done.
            let same = same_content(&parent, &gz, &src).map_err(NotCompressed::io(c))?;
            if !same {
                return Err(NotCompressed::OtherContent {
                    path: c.path.clone(),
                    gz: PathBuf::from(&gz),
                });
            }
            root.remove_in(&parent, c).map_err(NotCompressed::io(c))?;
            return Ok(c.size);
        }
        Ok(_) => {
            return Err(NotCompressed::NotRegular {
                path: c.path.clone(),
                gz: PathBuf::from(&gz),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(NotCompressed::io(c)(e)),
    }
    let cleanup = |parent: &OwnedFd| {
        let _ = walk::unlink_at(parent, &partial);
    };
    let _ = walk::remove_regular_at(&parent, &partial);
    let written = write_gz(&parent, &partial, &src, c, &meta);
    let (gz_size, sha) = match written {
        Ok(v) => v,
        Err(e) => {
            cleanup(&parent);
            return Err(e);
        }
    };
    let verified = walk::open_read_at(&parent, &partial)
        .and_then(|f| hash_all(GzDecoder::new(BufReader::new(f))));
    match verified {
        Ok((len, h)) if len == c.size && h == sha => {}
        Ok(_) => {
            cleanup(&parent);
            return Err(NotCompressed::Mismatch {
                path: c.path.clone(),
            });
        }
        Err(source) => {
            cleanup(&parent);
            return Err(NotCompressed::ReadBack {
                path: c.path.clone(),
                source,
            });
        }
    }
    if let Err(e) = walk::rename_noreplace_at(&parent, &partial, &gz) {
        cleanup(&parent);
        return Err(NotCompressed::io(c)(e));
    }
    walk::fsync_fd(&parent).map_err(|source| NotCompressed::Fsync {
        path: c.path.clone(),
        source,
    })?;
    root.remove_in(&parent, c)
        .map_err(|source| NotCompressed::OriginalKept {
            path: c.path.clone(),
            gz: PathBuf::from(&gz),
            source,
        })?;
    Ok(c.size.saturating_sub(gz_size))
}

/// Writes the gzip copy of `src` to `partial`; returns its size and the
/// sha256 of the original content.
fn write_gz(
    parent: &OwnedFd,
    partial: &OsStr,
    src: &std::fs::File,
    c: &Candidate,
    meta: &std::fs::Metadata,
) -> std::result::Result<(u64, String), NotCompressed> {
    let changed = || NotCompressed::Changed {
        path: c.path.clone(),
    };
    let out = walk::create_at(parent, partial, 0o600).map_err(NotCompressed::io(c))?;
    // Same owner and mode as the original (logs can be private).
    let _ = rustix::fs::fchown(
        out.as_fd(),
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
    );
    let _ = rustix::fs::fchmod(
        out.as_fd(),
        rustix::fs::Mode::from_raw_mode(meta.mode() & 0o777),
    );
    let mut reader = Hashing::new(src, c.size);
    let mut enc = GzEncoder::new(BufWriter::new(out), Compression::default());
    if let Err(e) = io::copy(&mut reader, &mut enc) {
        return Err(if reader.short {
            changed()
        } else {
            NotCompressed::io(c)(e)
        });
    }
    let out = enc
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(NotCompressed::io(c))?;
    out.set_modified(c.mtime)
        .and_then(|()| out.sync_all())
        .map_err(NotCompressed::io(c))?;
    match src.metadata() {
        Ok(m) if c.same(&m) => {}
        _ => return Err(changed()),
    }
    let size = out.metadata().map_err(NotCompressed::io(c))?.len();
    Ok((size, reader.hex()))
}

/// Whether the gzip file `gz` in `dir` holds exactly the content of `src`.
fn same_content(dir: &OwnedFd, gz: &OsStr, mut src: &std::fs::File) -> io::Result<bool> {
    let f = walk::open_read_at(dir, gz)?;
    let a = match hash_all(GzDecoder::new(BufReader::new(f))) {
        Ok(a) => a,
        Err(_) => return Ok(false),
    };
    let b = hash_all(&mut src)?;
    Ok(a == b)
}

/// `^[0-9]+[KMGT]?$`.
pub(crate) fn valid_vacuum_size(s: &str) -> bool {
    let digits = s.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(s);
    !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Bytes in a size journalctl prints (`0B`, `512.0K`, `24.0M`, `1.2G`).
pub(crate) fn parse_journal_size(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches(['.', ',']);
    let (num, mult) = match s.chars().last()? {
        'B' => (&s[..s.len() - 1], 1u64),
        'K' => (&s[..s.len() - 1], 1 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        c if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u64)
}

/// The total a `journalctl --vacuum-*` output says was freed.
pub(crate) fn journal_freed(output: &str) -> u64 {
    output
        .lines()
        .filter_map(|l| l.split_once("freed ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(parse_journal_size)
        .sum()
}

fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn vacuum_journal(run: &mut Run<'_, '_>, size: &str) {
    if !valid_vacuum_size(size) {
        run.note(format!(
            "journal not vacuumed: journal_vacuum_size {size:?} is not a size like 500M"
        ));
        return;
    }
    let Some(prog) = find_program("journalctl") else {
        run.note("journal not vacuumed: journalctl not found");
        return;
    };
    let arg = format!("--vacuum-size={size}");
    if run.ctx.dry_run {
        run.note(format!("would run {} {arg}", prog.escaped()));
        return;
    }
    match run_with_timeout(Command::new(&prog).arg(&arg), JOURNAL_TIMEOUT) {
        Ok((status, output)) => {
            let freed = journal_freed(&output);
            run.report.bytes_freed = run.report.bytes_freed.saturating_add(freed);
            let msg = format!("{} {arg}: {status}, freed {freed} bytes", prog.escaped());
            if status.success() {
                run.note(msg);
            } else {
                let tail: String = output
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                run.note(format!("{msg}: {tail}"));
            }
        }
        Err(e) => run.note(format!("{} {arg} failed: {e}", prog.escaped())),
    }
}

/// Runs `cmd` (stdin closed, output captured), killing it after `limit`.
fn run_with_timeout(
    cmd: &mut Command,
    limit: Duration,
) -> io::Result<(std::process::ExitStatus, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.by_ref().take(1 << 20).read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut output = String::new();
    for r in readers {
        if let Ok(s) = r.join() {
            output.push_str(&s);
        }
    }
    Ok((status, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names() {
        for n in [
            "x.log.1",
            "x.1",
            "x.log-20240101",
            "x.log.2024-01-01",
            "syslog.10",
            "btmp.1",
        ] {
            assert_eq!(classify(OsStr::new(n)), LogKind::Rotated, "{n}");
        }
        for n in [
            "x.log",
            "app-2.log",
            "Xorg.0.log",
            "wtmp",
            "x-1",
            ".1",
            "php8.2-fpm.log",
            "lastlog",
        ] {
            assert_eq!(classify(OsStr::new(n)), LogKind::Other, "{n}");
        }
        for n in ["x.log.1.gz", "x.log-20240101.zst", "y.xz", "z.bz2"] {
            assert_eq!(classify(OsStr::new(n)), LogKind::Compressed, "{n}");
        }
        assert_eq!(classify(OsStr::new("x.log.1.gz.partial")), LogKind::Partial);
        assert_eq!(classify(OsStr::new(".gz")), LogKind::Other);
    }

    #[test]
    fn vacuum_sizes() {
        for s in ["500M", "1G", "100", "2T", "64K"] {
            assert!(valid_vacuum_size(s), "{s}");
        }
        for s in ["", "M", "5 M", "500MB", "-1G", "1.5G", "500M;rm", "--help"] {
            assert!(!valid_vacuum_size(s), "{s}");
        }
    }

    #[test]
    fn journal_output() {
        let out = "Deleted archived journal /var/log/journal/x/system@a.journal (8.0M).\n\
                   Vacuuming done, freed 24.0M of archived journals from /var/log/journal/x.\n\
                   Vacuuming done, freed 0B of archived journals from /run/log/journal.\n";
        assert_eq!(journal_freed(out), 24 << 20);
        assert_eq!(parse_journal_size("1.5K"), Some(1536));
        assert_eq!(parse_journal_size("x"), None);
    }
}
