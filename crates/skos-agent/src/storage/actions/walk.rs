//! Walking a configured directory safely, and reaching its files again
//! without following symlinks.
//!
//! A [`Root`] is a configured directory: canonicalized once, checked against
//! the allowed roots, and held open. [`Root::walk`] lists its regular files
//! (walkdir without following links, on one filesystem; symlinks and foreign
//! mounts are reported as skipped). Every later read or deletion goes
//! through [`Root::open_parent`]: from the held descriptor, one component at
//! a time, with `O_NOFOLLOW | O_DIRECTORY`, checking each directory is still
//! on the root's filesystem; the file itself is then opened or unlinked
//! relative to that parent, and must still be the inode that was chosen.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::Run;

/// System directories never cleaned, nor anything inside them (the same
/// list `skos config check` refuses).
const FORBIDDEN: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/dev", "/proc", "/sys", "/run",
];

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why a configured directory is not used: the reason of its skip, which
/// names the directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirError {
    #[error("does not exist")]
    Missing { dir: PathBuf },
    #[error("cannot resolve: {source}")]
    Resolve {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("outside allowed dir: {} is a system directory", .canon.display())]
    SystemDir { dir: PathBuf, canon: PathBuf },
    #[error("outside allowed dir: {} is not inside storage.allowed_roots", .canon.display())]
    NotAllowed { dir: PathBuf, canon: PathBuf },
    #[error("cannot open: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot stat: {source}")]
    Stat {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DirError {
    /// The directory as configured.
    pub fn dir(&self) -> &Path {
        match self {
            DirError::Missing { dir }
            | DirError::Resolve { dir, .. }
            | DirError::SystemDir { dir, .. }
            | DirError::NotAllowed { dir, .. }
            | DirError::Open { dir, .. }
            | DirError::Stat { dir, .. } => dir,
        }
    }
}

/// A regular file chosen by a walk.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Full path (under the canonical root), for reports.
    pub path: PathBuf,
    /// Path relative to the root (normal components only).
    pub rel: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
    pub dev: u64,
    pub ino: u64,
}

impl Candidate {
    pub fn name(&self) -> &OsStr {
        self.rel.file_name().unwrap_or_default()
    }

    /// Whether `m` is still this file, unchanged.
    pub fn same(&self, m: &Metadata) -> bool {
        m.file_type().is_file()
            && m.dev() == self.dev
            && m.ino() == self.ino
            && m.len() == self.size
            && m.modified().ok() == Some(self.mtime)
    }
}

/// A configured directory, canonicalized and held open.
#[derive(Debug)]
pub(crate) struct Root {
    /// As configured (for reports).
    pub configured: PathBuf,
    pub canon: PathBuf,
    pub dev: u64,
    pub ino: u64,
    fd: OwnedFd,
    /// Directories (relative) that were older than the action's age when
    /// walked: they may be removed once a deletion leaves them empty.
    old_dirs: BTreeSet<PathBuf>,
    /// Directories (relative) a deletion happened in.
    touched: BTreeSet<PathBuf>,
}

fn canon_or_self(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The canonical form of `dir`, checked against the allowed roots.
pub(crate) fn resolve(dir: &Path, allowed: &[PathBuf]) -> Result<PathBuf, DirError> {
    let canon = match std::fs::canonicalize(dir) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DirError::Missing {
                dir: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(DirError::Resolve {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    if canon == Path::new("/") || FORBIDDEN.iter().any(|f| canon.starts_with(f)) {
        return Err(DirError::SystemDir {
            dir: dir.to_path_buf(),
            canon,
        });
    }
    let inside = allowed.iter().any(|r| {
        let r = canon_or_self(r);
        canon.starts_with(&r) && canon != r
    });
    if !inside {
        return Err(DirError::NotAllowed {
            dir: dir.to_path_buf(),
            canon,
        });
    }
    Ok(canon)
}

/// Opens a directory by absolute path without following a final symlink.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, DIR_FLAGS, Mode::empty())?)
}

/// fstat of a descriptor as std [`Metadata`].
pub(crate) fn fd_metadata(fd: &OwnedFd) -> io::Result<Metadata> {
    let dup = fd.try_clone()?;
    File::from(dup).metadata()
}

/// lstat of `name` in the directory `dir` (never follows a symlink).
pub(crate) fn lstat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Metadata> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    File::from(fd).metadata()
}

/// Opens the regular file `name` in `dir` for reading, never through a
/// symlink, never blocking on a FIFO.
pub(crate) fn open_read_at(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Creates `name` in `dir` (which must not exist), for writing.
pub(crate) fn create_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// Removes the regular file `name` in `dir` if it is one (a leftover).
pub(crate) fn remove_regular_at(dir: &OwnedFd, name: &OsStr) -> io::Result<bool> {
    match lstat_at(dir, name) {
        Ok(m) if m.file_type().is_file() => {
            rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty())?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn unlink_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty())?)
}

pub(crate) fn fsync_fd(fd: &OwnedFd) -> io::Result<()> {
    Ok(rustix::fs::fsync(fd)?)
}

/// Renames `from` to `to` in `dir`, refusing to replace an existing `to`
/// where the filesystem can say so.
pub(crate) fn rename_noreplace_at(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> io::Result<()> {
    match rustix::fs::renameat_with(dir, from, dir, to, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            match lstat_at(dir, to) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", Path::new(to).display()),
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Ok(rustix::fs::renameat(dir, from, dir, to)?)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `name` with `suffix` appended.
pub(crate) fn with_suffix(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_os_string();
    s.push(suffix);
    s
}

impl Root {
    /// Canonicalizes and opens a configured directory; `Err` is the reason
    /// for a [`super::Skip`].
    pub fn open(dir: &Path, allowed: &[PathBuf]) -> Result<Root, DirError> {
        let canon = resolve(dir, allowed)?;
        let fd = open_dir(&canon).map_err(|source| DirError::Open {
            dir: dir.to_path_buf(),
            source,
        })?;
        let m = fd_metadata(&fd).map_err(|source| DirError::Stat {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Root {
            configured: dir.to_path_buf(),
            canon,
            dev: m.dev(),
            ino: m.ino(),
            fd,
            old_dirs: BTreeSet::new(),
            touched: BTreeSet::new(),
        })
    }

    /// Every regular file under the root, given to `f`; symlinks and other
    /// filesystems are skipped (and reported). A subdirectory whose mtime
    /// is older than `dir_age` may later be pruned once emptied.
    pub fn walk(
        &mut self,
        run: &mut Run<'_, '_>,
        dir_age: Option<std::time::Duration>,
        mut f: impl FnMut(&mut Run<'_, '_>, Candidate),
    ) {
        let walker = walkdir::WalkDir::new(&self.canon)
            .follow_links(false)
            .follow_root_links(false)
            .same_file_system(true)
            .sort_by_file_name();
        for entry in walker {
            run.tick();
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| self.canon.clone());
                    run.skip(path, format!("unreadable: {e}"));
                    continue;
                }
            };
            if entry.depth() == 0 {
                continue;
            }
            let path = entry.path();
            let ft = entry.file_type();
            if ft.is_symlink() {
                run.skip(path, super::SYMLINK);
                continue;
            }
            let rel = match path.strip_prefix(&self.canon) {
                Ok(r) if r.components().all(|c| matches!(c, Component::Normal(_))) => {
                    r.to_path_buf()
                }
                _ => {
                    run.skip(path, "outside allowed dir");
                    continue;
                }
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    run.skip(path, format!("unreadable: {e}"));
                    continue;
                }
            };
            if meta.dev() != self.dev {
                run.skip(path, "other filesystem");
                continue;
            }
            if ft.is_dir() {
                if let (Some(limit), Ok(mtime)) = (dir_age, meta.modified()) {
                    if super::age(run.ctx.now, mtime) > limit {
                        self.old_dirs.insert(rel);
                    }
                }
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let mtime = match meta.modified() {
                Ok(t) => t,
                Err(e) => {
                    run.skip(path, format!("no mtime: {e}"));
                    continue;
                }
            };
            f(
                run,
                Candidate {
                    path: path.to_path_buf(),
                    rel,
                    size: meta.len(),
                    mtime,
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
            );
        }
    }

    /// The directory holding `rel`, reached from the root one component at
    /// a time without following symlinks, on the root's filesystem.
    pub fn open_parent(&self, rel: &Path) -> io::Result<OwnedFd> {
        let mut cur = self.fd.try_clone()?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        for comp in parent.components() {
            let Component::Normal(name) = comp else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "outside allowed dir",
                ));
            };
            let next = rustix::fs::openat(cur.as_fd(), name, DIR_FLAGS, Mode::empty())?;
            if fd_metadata(&next)?.dev() != self.dev {
                return Err(io::Error::other("other filesystem"));
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Opens a candidate for reading; it must still be the same, unchanged
    /// file. Returns the file, its parent directory and its metadata.
    pub fn open_candidate(&self, c: &Candidate) -> io::Result<(File, OwnedFd, Metadata)> {
        let parent = self.open_parent(&c.rel)?;
        let file = open_read_at(&parent, c.name())?;
        let m = file.metadata()?;
        if !c.same(&m) {
            return Err(io::Error::other("changed since it was chosen"));
        }
        Ok((file, parent, m))
    }

    /// Unlinks a candidate after checking it is still the same, unchanged
    /// regular file; fsyncs its directory.
    pub fn remove_file(&mut self, c: &Candidate) -> io::Result<()> {
        let parent = self.open_parent(&c.rel)?;
        self.remove_in(&parent, c)
    }

    /// [`Self::remove_file`] with the parent already open.
    pub fn remove_in(&mut self, parent: &OwnedFd, c: &Candidate) -> io::Result<()> {
        let m = lstat_at(parent, c.name())?;
        if !c.same(&m) {
            return Err(io::Error::other("changed since it was chosen"));
        }
        unlink_at(parent, c.name())?;
        fsync_fd(parent)?;
        if let Some(p) = c.rel.parent() {
            if !p.as_os_str().is_empty() {
                self.touched.insert(p.to_path_buf());
            }
        }
        Ok(())
    }

    /// Removes the directories that deletions left empty and that were old
    /// when walked (never the root itself). Returns how many went.
    pub fn prune_empty_dirs(&mut self) -> u64 {
        let mut removed = 0;
        // Deepest first, so a parent is tried after all its children.
        let mut todo: BTreeSet<(usize, PathBuf)> = std::mem::take(&mut self.touched)
            .into_iter()
            .map(|p| (p.components().count(), p))
            .collect();
        while let Some((_, dir)) = todo.pop_last() {
            if dir.as_os_str().is_empty() || !self.old_dirs.contains(&dir) {
                continue;
            }
            let Some(name) = dir.file_name() else {
                continue;
            };
            let Ok(parent) = self.open_parent(&dir) else {
                continue;
            };
            if rustix::fs::unlinkat(parent.as_fd(), name, AtFlags::REMOVEDIR).is_ok() {
                removed += 1;
                let _ = fsync_fd(&parent);
                if let Some(up) = dir.parent() {
                    if !up.as_os_str().is_empty() {
                        todo.insert((up.components().count(), up.to_path_buf()));
                    }
                }
            }
        }
        removed
    }
}
