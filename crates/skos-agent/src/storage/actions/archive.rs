//! `archive_old`: files older than `archive.older_than` in `archive.dirs`
//! move into one tar + zstd archive per dir and run, at
//! `<destination>/skos-archive-<UTC yyyymmddThhmmssZ>-<dirname>.tar.zst`,
//! on another filesystem than the dir.
//!
//! The procedure keeps every file either in its original place or inside a
//! verified, finalized archive, whenever the process is stopped:
//!
//! 1. a `skos-archive-*.partial` left in the destination by an interrupted
//!    run is removed (and reported); the destination is `flock`ed, so two
//!    runs never share it;
//! 2. the archive is written to `<final>.partial` (entries relative to the
//!    source dir, each file read through a descriptor that cannot follow a
//!    symlink, hashed as it is read), the zstd stream finished, the file and
//!    the destination dir fsynced;
//! 3. the archive is read back, decompressed, and every entry's size and
//!    sha256 compared with what was written; every original is hashed again
//!    from disk and must be unchanged (inode, size, mtime, content): one that
//!    changed is skipped ("changed while archiving") and kept;
//! 4. only then `.partial` is renamed to the final name, the dir fsynced,
//!    the manifest (`<final>.manifest.json`: relative paths, sizes, mtimes,
//!    sha256) written the same way, and the verified originals deleted one
//!    by one (each parent dir fsynced after).

use skos_core::escape::ShowPath;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use skos_core::config::StorageConfig;

use super::walk::{self, Candidate, Root};
use super::{age, age_limit, hash_all, open_roots, Hashing, Report, Run, RunCtx};
use crate::{Error, Result};

const PREFIX: &str = "skos-archive-";
const PARTIAL: &str = ".partial";
/// Attempts at writing one archive when files change while it is written.
const MAX_ATTEMPTS: usize = 5;
const ZSTD_LEVEL: i32 = 3;

pub fn archive_old(cfg: &StorageConfig, ctx: &RunCtx) -> Result<Report> {
    let older_than = age_limit("storage.archive.older_than", cfg.archive.older_than)?;
    let mut run = Run::new("archive_old", ctx);
    if cfg.archive.dirs.is_empty() {
        return Ok(run.finish());
    }
    let (dest, mut roots) = prepare(cfg, &mut run)?;
    for (root, idx) in roots.iter_mut() {
        if run.stopped() {
            break;
        }
        let mut old = old_files(&mut run, root, older_than);
        old.sort_by_key(|c| c.mtime);
        let chosen = choose(&mut run, old);
        if let Err(e) = archive_batch(&mut run, &dest, root, *idx, chosen, &mut |_| false) {
            // What earlier dirs did stays reported; with nothing done yet,
            // the run failed.
            if run.report.archives.is_empty() {
                return Err(e);
            }
            run.stop(format!(
                "archiving {} failed: {e}",
                root.configured.escaped()
            ));
        }
    }
    Ok(run.finish())
}

/// The archive destination, held open and locked.
pub(crate) struct Dest {
    pub path: PathBuf,
    fd: OwnedFd,
    dev: u64,
}

/// Opens the destination and the archive dirs, checks they are on
/// different filesystems, locks the destination and removes leftovers of an
/// interrupted run.
pub(crate) fn prepare(
    cfg: &StorageConfig,
    run: &mut Run<'_, '_>,
) -> Result<(Dest, Vec<(Root, usize)>)> {
    let dest = Dest::open(cfg)?;
    let roots = open_roots(run, &cfg.archive.dirs, &cfg.allowed_roots);
    for (root, _) in &roots {
        if root.dev == dest.dev {
            return Err(Error::Device {
                what: "archive_old".into(),
                reason: format!(
                    "destination {} is on the same filesystem as {}: archives must go to another mount",
                    dest.path.escaped(),
                    root.configured.escaped()
                ),
            });
        }
    }
    dest.lock()?;
    dest.remove_leftovers(run);
    Ok((dest, roots))
}

impl Dest {
    fn open(cfg: &StorageConfig) -> Result<Dest> {
        let Some(d) = &cfg.archive.destination else {
            return Err(Error::Device {
                what: "storage.archive.destination".into(),
                reason: "not set: archive_old needs a destination on another mount".into(),
            });
        };
        let refused = |e: walk::DirError| Error::Device {
            what: format!("archive destination {}", e.dir().escaped()),
            reason: e.to_string(),
        };
        let path = walk::resolve(d, &cfg.allowed_roots).map_err(refused)?;
        let fd = walk::open_checked(d, &path).map_err(refused)?;
        let dev = walk::fd_metadata(&fd)
            .map_err(|e| Error::io(&path, e))?
            .dev();
        Ok(Dest { path, fd, dev })
    }

    fn lock(&self) -> Result<()> {
        rustix::fs::flock(
            self.fd.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|e| Error::Device {
            what: "archive_old".into(),
            reason: format!(
                "cannot lock {} ({e}): another archive run is using it",
                self.path.escaped()
            ),
        })
    }

    fn remove_leftovers(&self, run: &mut Run<'_, '_>) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        let mut names: Vec<OsString> = entries
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| {
                n.to_str()
                    .is_some_and(|s| s.starts_with(PREFIX) && s.ends_with(PARTIAL))
            })
            .collect();
        names.sort();
        for name in names {
            let path = self.path.join(&name);
            if run.ctx.dry_run {
                run.note(format!(
                    "would remove {} (left by an interrupted archive run)",
                    path.escaped()
                ));
                continue;
            }
            match walk::remove_regular_at(&self.fd, &name) {
                Ok(true) => run.note(format!(
                    "removed {} (left by an interrupted archive run)",
                    path.escaped()
                )),
                Ok(false) => {}
                Err(e) => run.skip(&path, format!("leftover partial archive not removed: {e}")),
            }
        }
        let _ = walk::fsync_fd(&self.fd);
    }

    fn exists(&self, name: &OsStr) -> bool {
        !matches!(walk::lstat_at(&self.fd, name), Err(e) if e.kind() == io::ErrorKind::NotFound)
    }

    /// A free final name for an archive of `root` made at `now`.
    fn pick_name(&self, root: &Root, now: SystemTime) -> Result<OsString> {
        let ts = chrono::DateTime::<chrono::Utc>::from(now).format("%Y%m%dT%H%M%SZ");
        let dir = dir_label(&root.canon);
        for n in 1..1000 {
            let base = if n == 1 {
                format!("{PREFIX}{ts}-{dir}")
            } else {
                format!("{PREFIX}{ts}-{dir}-{n}")
            };
            let name = OsString::from(format!("{base}.tar.zst"));
            let taken = [
                name.clone(),
                walk::with_suffix(&name, PARTIAL),
                walk::with_suffix(&name, ".manifest.json"),
            ]
            .iter()
            .any(|n| self.exists(n));
            if !taken {
                return Ok(name);
            }
        }
        Err(Error::Device {
            what: "archive_old".into(),
            reason: format!("no free archive name in {}", self.path.escaped()),
        })
    }

    fn remove(&self, name: &OsStr) {
        let _ = walk::unlink_at(&self.fd, name);
        let _ = walk::fsync_fd(&self.fd);
    }
}

/// The dir's name, safe for a file name.
fn dir_label(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("dir{s}")
    } else {
        s
    }
}

/// Regular files in one archive dir older than `limit`.
pub(crate) fn old_files(
    run: &mut Run<'_, '_>,
    root: &mut Root,
    limit: std::time::Duration,
) -> Vec<Candidate> {
    let now = run.ctx.now;
    let mut out = Vec::new();
    root.walk(run, None, |_, c| {
        if age(now, c.mtime) > limit {
            out.push(c);
        }
    });
    out
}

/// The files (in order) that may be archived: not open for writing, within
/// the cap (the run stops at the first that would pass it).
pub(crate) fn choose(run: &mut Run<'_, '_>, files: Vec<Candidate>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for c in files {
        if let Some(why) = run.open_for_writing(&c) {
            run.skip(&c.path, why);
            continue;
        }
        if !run.reserve(&c.path, c.size) {
            break;
        }
        out.push(c);
    }
    out
}

/// One archived file, as the manifest lists it.
#[derive(Debug, Clone, Serialize)]
struct Entry {
    path: String,
    #[serde(skip)]
    rel: PathBuf,
    size: u64,
    mtime: u64,
    sha256: String,
    /// The original changed after it was archived and was kept.
    original_kept: bool,
}

#[derive(Serialize)]
struct Manifest<'a> {
    archive: String,
    source: String,
    created: String,
    files: &'a [Entry],
}

enum Written {
    Done(Vec<Entry>),
    /// The file at this index changed while it was written.
    Changed(usize, Changed),
}

/// Why an original is kept out of (or beside) its archive: it changed while
/// it was archived. The skip's reason; names the file.
#[derive(Debug, thiserror::Error)]
enum Changed {
    #[error("{source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("it shrank")]
    Shrank { path: PathBuf },
    #[error("modified while being read")]
    ModifiedWhileRead { path: PathBuf },
    #[error("content differs from the archived copy")]
    Differs { path: PathBuf },
    #[error("modified while being verified")]
    ModifiedWhileVerified { path: PathBuf },
}

impl Changed {
    fn path(&self) -> &Path {
        match self {
            Changed::Unreadable { path, .. }
            | Changed::Shrank { path }
            | Changed::ModifiedWhileRead { path }
            | Changed::Differs { path }
            | Changed::ModifiedWhileVerified { path } => path,
        }
    }
}

fn mtime_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Archives `files` (all from `root`) into one new archive, verifies it,
/// and deletes the verified originals; `after_delete` is asked after each
/// deletion whether to stop deleting (the rest stay, also archived).
pub(crate) fn archive_batch(
    run: &mut Run<'_, '_>,
    dest: &Dest,
    root: &mut Root,
    idx: usize,
    mut files: Vec<Candidate>,
    after_delete: &mut dyn FnMut(&mut Run<'_, '_>) -> bool,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    if run.ctx.dry_run {
        for c in &files {
            run.account_deleted(idx, &c.path, c.size);
        }
        if let Some(d) = run.report.dirs.get_mut(idx) {
            d.files_archived += files.len() as u64;
        }
        return Ok(());
    }
    let name = dest.pick_name(root, run.ctx.now)?;
    let partial = walk::with_suffix(&name, PARTIAL);
    let final_path = dest.path.join(&name);
    let partial_path = dest.path.join(&partial);
    let mut attempts = 0;
    let mut entries = loop {
        attempts += 1;
        let written = write_archive(run, dest, &partial, &partial_path, root, &files);
        match written {
            Ok(Written::Done(entries)) => break entries,
            Ok(Written::Changed(i, why)) => {
                dest.remove(&partial);
                let c = files.remove(i);
                run.counted = run.counted.saturating_sub(c.size);
                run.skip(why.path(), format!("changed while archiving ({why})"));
                if files.is_empty() {
                    return Ok(());
                }
                if attempts >= MAX_ATTEMPTS {
                    run.note(format!(
                        "{}: files kept changing while archiving; gave up after {attempts} attempts",
                        root.configured.escaped()
                    ));
                    return Ok(());
                }
            }
            Err(e) => {
                dest.remove(&partial);
                return Err(e);
            }
        }
    };
    (run.ctx.progress)(&format!(
        "archive_old: {}: wrote {} files to {}; verifying",
        root.configured.escaped(),
        files.len(),
        partial_path.escaped()
    ));
    if let Err(e) = verify_archive(dest, &partial, &entries) {
        dest.remove(&partial);
        return Err(Error::Device {
            what: "archive_old".into(),
            reason: format!(
                "archive {} failed verification ({e}): removed, nothing deleted",
                partial_path.escaped()
            ),
        });
    }
    let mut verified = Vec::new();
    for (i, (c, e)) in files.iter().zip(entries.iter_mut()).enumerate() {
        run.tick();
        match verify_original(root, c, &e.sha256) {
            Ok(()) => verified.push(i),
            Err(why) => {
                e.original_kept = true;
                run.counted = run.counted.saturating_sub(c.size);
                run.skip(why.path(), format!("changed while archiving ({why})"));
            }
        }
    }
    if verified.is_empty() {
        dest.remove(&partial);
        return Ok(());
    }
    walk::rename_noreplace_at(&dest.fd, &partial, &name).map_err(|e| {
        dest.remove(&partial);
        Error::io(&final_path, e)
    })?;
    walk::fsync_fd(&dest.fd).map_err(|e| Error::io(&dest.path, e))?;
    write_manifest(dest, &name, root, run.ctx.now, &entries)?;
    run.report.archives.push(final_path.clone());
    if let Some(d) = run.report.dirs.get_mut(idx) {
        d.files_archived += verified.len() as u64;
    }
    let line = format!(
        "archive_old: {}: archived and verified {} files into {}; deleting originals",
        root.configured.escaped(),
        verified.len(),
        final_path.escaped()
    );
    tracing::info!(dir = %root.configured.escaped(), archive = %final_path.escaped(), files = verified.len(), "archive verified");
    (run.ctx.progress)(&line);
    for i in verified {
        let Some(c) = files.get(i) else { continue };
        match root.remove_file(c) {
            Ok(()) => {
                run.account_deleted(idx, &c.path, c.size);
                if after_delete(run) {
                    break;
                }
            }
            Err(e) => {
                run.counted = run.counted.saturating_sub(c.size);
                run.skip(
                    &c.path,
                    format!("archived in {}, original kept: {e}", final_path.escaped()),
                );
            }
        }
    }
    Ok(())
}

/// Writes `files` into `partial` (tar through zstd), fsyncs it and the
/// destination; the entries list what was written.
fn write_archive(
    run: &mut Run<'_, '_>,
    dest: &Dest,
    partial: &OsStr,
    partial_path: &Path,
    root: &Root,
    files: &[Candidate],
) -> Result<Written> {
    let io_err = |e: io::Error| Error::io(partial_path, e);
    let file = walk::create_at(&dest.fd, partial, 0o600).map_err(io_err)?;
    let enc =
        zstd::Encoder::new(BufWriter::with_capacity(1 << 20, file), ZSTD_LEVEL).map_err(io_err)?;
    let mut tar = tar::Builder::new(enc);
    let mut entries = Vec::with_capacity(files.len());
    for (i, c) in files.iter().enumerate() {
        run.tick();
        let (src, _parent, meta) = match root.open_candidate(c) {
            Ok(v) => v,
            Err(source) => {
                return Ok(Written::Changed(
                    i,
                    Changed::Unreadable {
                        path: c.path.clone(),
                        source,
                    },
                ))
            }
        };
        let mtime = mtime_secs(c.mtime);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(c.size);
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(mtime);
        let mut reader = Hashing::new(&src, c.size);
        if let Err(e) = tar.append_data(&mut header, &c.rel, &mut reader) {
            if reader.short {
                return Ok(Written::Changed(
                    i,
                    Changed::Shrank {
                        path: c.path.clone(),
                    },
                ));
            }
            return Err(io_err(e));
        }
        match src.metadata() {
            Ok(m) if c.same(&m) => {}
            _ => {
                return Ok(Written::Changed(
                    i,
                    Changed::ModifiedWhileRead {
                        path: c.path.clone(),
                    },
                ))
            }
        }
        entries.push(Entry {
            path: c.rel.escaped().to_string(),
            rel: c.rel.clone(),
            size: c.size,
            mtime,
            sha256: reader.hex(),
            original_kept: false,
        });
    }
    let enc = tar.into_inner().map_err(io_err)?;
    let buf = enc.finish().map_err(io_err)?;
    let file = buf.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    walk::fsync_fd(&dest.fd).map_err(|e| Error::io(&dest.path, e))?;
    Ok(Written::Done(entries))
}

/// Reads the archive back: every entry, in order, with the path, size and
/// sha256 that were written, and nothing else.
fn verify_archive(dest: &Dest, name: &OsStr, entries: &[Entry]) -> io::Result<()> {
    let f = walk::open_read_at(&dest.fd, name)?;
    let mut ar = tar::Archive::new(zstd::Decoder::new(f)?);
    let mut n = 0;
    for entry in ar.entries()? {
        let mut entry = entry?;
        let Some(exp) = entries.get(n) else {
            return Err(io::Error::other("more entries than written"));
        };
        let path = entry.path()?.into_owned();
        if path != exp.rel {
            return Err(io::Error::other(format!(
                "entry {n} is {}, expected {}",
                path.escaped(),
                exp.rel.escaped()
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(io::Error::other(format!(
                "{} is not a regular file entry",
                path.escaped()
            )));
        }
        let (len, sha) = hash_all(&mut entry)?;
        if len != exp.size || sha != exp.sha256 {
            return Err(io::Error::other(format!(
                "{} does not match its original",
                path.escaped()
            )));
        }
        n += 1;
    }
    if n != entries.len() {
        return Err(io::Error::other(format!(
            "{n} entries read back, {} written",
            entries.len()
        )));
    }
    Ok(())
}

/// The original on disk is still the file that was archived, unchanged.
fn verify_original(root: &Root, c: &Candidate, sha: &str) -> std::result::Result<(), Changed> {
    let unreadable = |source| Changed::Unreadable {
        path: c.path.clone(),
        source,
    };
    let (src, _parent, _) = root.open_candidate(c).map_err(unreadable)?;
    let (len, h) = hash_all(&src).map_err(unreadable)?;
    if len != c.size || h != sha {
        return Err(Changed::Differs {
            path: c.path.clone(),
        });
    }
    match src.metadata() {
        Ok(m) if c.same(&m) => Ok(()),
        _ => Err(Changed::ModifiedWhileVerified {
            path: c.path.clone(),
        }),
    }
}

fn write_manifest(
    dest: &Dest,
    name: &OsStr,
    root: &Root,
    now: SystemTime,
    entries: &[Entry],
) -> Result<()> {
    let manifest_name = walk::with_suffix(name, ".manifest.json");
    let partial = walk::with_suffix(&manifest_name, PARTIAL);
    let path = dest.path.join(&manifest_name);
    let manifest = Manifest {
        archive: Path::new(name).to_string_lossy().into_owned(),
        source: root.canon.escaped().to_string(),
        created: chrono::DateTime::<chrono::Utc>::from(now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        files: entries,
    };
    let result = (|| -> io::Result<()> {
        let _ = walk::remove_regular_at(&dest.fd, &partial);
        let mut f = walk::create_at(&dest.fd, &partial, 0o600)?;
        let text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        walk::rename_noreplace_at(&dest.fd, &partial, &manifest_name)?;
        walk::fsync_fd(&dest.fd)
    })();
    result.map_err(|e| {
        dest.remove(&partial);
        Error::io(&path, e)
    })
}
