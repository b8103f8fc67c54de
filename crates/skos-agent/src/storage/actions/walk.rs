//! Walking a configured directory safely, and reaching its files again
//! without following symlinks.
//!
//! A [`Root`] is a configured directory, checked against the allowed roots
//! as written (absolute, no `..`, inside an allowed root, not a system
//! directory), refused when a parent could be swapped by someone other than
//! root ([`skos_fs::unsafe_ancestor`]), and opened without following a
//! symlink at any component ([`skos_fs::open_dir`]). It is held open: every
//! later step works from that descriptor.
//!
//! [`Root::walk`] lists its regular files through directory handles: each
//! subdirectory is opened `O_NOFOLLOW` relative to its parent's descriptor
//! and must be the inode that was listed, on the root's mount (compared by
//! mount id, so a bind mount of the same filesystem is another mount);
//! symlinks, other mounts and hard-linked files (more than one link) are
//! reported as skipped and left alone. Every later read or deletion goes
//! through [`Root::open_parent`] ([`skos_fs::open_beneath`]: no symlinks,
//! not out of the root, not into another mount); the file itself is then
//! opened or unlinked relative to that parent, and must still be the inode
//! that was chosen, with one link.

use skos_core::escape::ShowPath;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::Run;

/// System directories never cleaned, nor anything inside them (the same
/// list `skos config check` refuses).
const FORBIDDEN: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/dev", "/proc", "/sys", "/run",
];

const DIR_FLAGS: OFlags = skos_fs::DIR_FLAGS;

/// The skip reason of a mount inside a configured directory on the same
/// filesystem (a bind mount).
const OTHER_MOUNT: &str = "other mount";

/// Deepest a walk goes (each level holds one descriptor open).
const MAX_DEPTH: usize = 128;

/// The skip reason of a file with more than one hard link.
pub(crate) fn hard_linked(nlink: u64) -> String {
    format!("hard-linked ({nlink} links): left alone")
}

/// Why a configured directory is not used: the reason of its skip, which
/// names the directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirError {
    #[error("does not exist")]
    Missing { dir: PathBuf },
    #[error("must be an absolute path without '..'")]
    NotAbsolute { dir: PathBuf },
    #[error("outside allowed dir: {} is a system directory", .canon.escaped())]
    SystemDir { dir: PathBuf, canon: PathBuf },
    #[error("outside allowed dir: {} is not inside storage.allowed_roots", .canon.escaped())]
    NotAllowed { dir: PathBuf, canon: PathBuf },
    #[error("not followed: {} is a symlink", .link.escaped())]
    Symlink { dir: PathBuf, link: PathBuf },
    #[error("refused: its parent {parent}, so it could be swapped for another directory")]
    UnsafeParent {
        dir: PathBuf,
        parent: skos_fs::UnsafeParent,
    },
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
            | DirError::NotAbsolute { dir }
            | DirError::SystemDir { dir, .. }
            | DirError::NotAllowed { dir, .. }
            | DirError::Symlink { dir, .. }
            | DirError::UnsafeParent { dir, .. }
            | DirError::Open { dir, .. }
            | DirError::Stat { dir, .. } => dir,
        }
    }
}

/// A regular file chosen by a walk.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Full path (under the root as configured), for reports.
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

    /// Whether `m` is still this file, unchanged, with one link.
    pub fn same(&self, m: &Metadata) -> bool {
        m.file_type().is_file()
            && m.dev() == self.dev
            && m.ino() == self.ino
            && m.nlink() == 1
            && m.len() == self.size
            && m.modified().ok() == Some(self.mtime)
    }
}

/// A configured directory, checked and held open.
#[derive(Debug)]
pub(crate) struct Root {
    /// As configured (for reports).
    pub configured: PathBuf,
    /// As configured, lexically normalized (no symlink can be on its way:
    /// it was opened without following any).
    pub canon: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Its mount id: the walk never leaves this mount.
    pub mnt: u64,
    fd: OwnedFd,
    /// Directories (relative) that were older than the action's age when
    /// walked: they may be removed once a deletion leaves them empty.
    old_dirs: BTreeSet<PathBuf>,
    /// Directories (relative) a deletion happened in.
    touched: BTreeSet<PathBuf>,
}

/// `dir` without `.` components; `None` when relative or with `..`.
fn normalize(dir: &Path) -> Option<PathBuf> {
    if !dir.is_absolute() || dir.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    Some(dir.components().collect())
}

/// `dir` as written, checked against the allowed roots as written: both
/// are compared without resolving anything (the directory is then opened
/// without following a symlink, so what is written is what is used).
pub(crate) fn resolve(dir: &Path, allowed: &[PathBuf]) -> Result<PathBuf, DirError> {
    let Some(canon) = normalize(dir) else {
        return Err(DirError::NotAbsolute {
            dir: dir.to_path_buf(),
        });
    };
    if canon == Path::new("/") || FORBIDDEN.iter().any(|f| canon.starts_with(f)) {
        return Err(DirError::SystemDir {
            dir: dir.to_path_buf(),
            canon,
        });
    }
    let inside = allowed
        .iter()
        .filter_map(|r| normalize(r))
        .any(|r| canon.starts_with(&r) && canon != r);
    if !inside {
        return Err(DirError::NotAllowed {
            dir: dir.to_path_buf(),
            canon,
        });
    }
    Ok(canon)
}

/// Opens a checked directory: refused when a parent could be swapped,
/// never through a symlink.
pub(crate) fn open_checked(dir: &Path, canon: &Path) -> Result<OwnedFd, DirError> {
    match std::fs::symlink_metadata(canon) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DirError::Missing {
                dir: dir.to_path_buf(),
            })
        }
        _ => {}
    }
    if let Some(parent) = skos_fs::unsafe_ancestor(canon) {
        if parent.reason == "a symlink" {
            return Err(DirError::Symlink {
                dir: dir.to_path_buf(),
                link: parent.parent,
            });
        }
        return Err(DirError::UnsafeParent {
            dir: dir.to_path_buf(),
            parent,
        });
    }
    skos_fs::open_dir(canon).map_err(|e| match e {
        skos_fs::Error::Symlink { link, .. } => DirError::Symlink {
            dir: dir.to_path_buf(),
            link,
        },
        skos_fs::Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            DirError::Missing {
                dir: dir.to_path_buf(),
            }
        }
        skos_fs::Error::Io { source, .. } => DirError::Open {
            dir: dir.to_path_buf(),
            source,
        },
        other => DirError::Open {
            dir: dir.to_path_buf(),
            source: io::Error::other(other.to_string()),
        },
    })
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
                    format!("{} already exists", Path::new(to).escaped()),
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
    /// Checks and opens a configured directory; `Err` is the reason for a
    /// [`super::Skip`].
    pub fn open(dir: &Path, allowed: &[PathBuf]) -> Result<Root, DirError> {
        let canon = resolve(dir, allowed)?;
        let fd = open_checked(dir, &canon)?;
        let stat_err = |source| DirError::Stat {
            dir: dir.to_path_buf(),
            source,
        };
        let m = fd_metadata(&fd).map_err(stat_err)?;
        let mnt = skos_fs::mount_id(&fd).map_err(stat_err)?;
        Ok(Root {
            configured: dir.to_path_buf(),
            canon,
            dev: m.dev(),
            ino: m.ino(),
            mnt,
            fd,
            old_dirs: BTreeSet::new(),
            touched: BTreeSet::new(),
        })
    }

    /// Every regular file under the root, given to `f`; symlinks, other
    /// mounts and hard-linked files are skipped (and reported). A
    /// subdirectory whose mtime is older than `dir_age` may later be pruned
    /// once emptied.
    pub fn walk(
        &mut self,
        run: &mut Run<'_, '_>,
        dir_age: Option<std::time::Duration>,
        mut f: impl FnMut(&mut Run<'_, '_>, Candidate),
    ) {
        let fd = match self.fd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                run.skip(&self.canon, format!("unreadable: {e}"));
                return;
            }
        };
        self.walk_dir(run, dir_age, &mut f, &fd, PathBuf::new(), 0);
    }

    /// Lists one directory (held open as `fd`, at `rel`), depth first and
    /// by name, as walkdir did.
    fn walk_dir<F: FnMut(&mut Run<'_, '_>, Candidate)>(
        &mut self,
        run: &mut Run<'_, '_>,
        dir_age: Option<std::time::Duration>,
        f: &mut F,
        fd: &OwnedFd,
        rel: PathBuf,
        depth: usize,
    ) {
        let names = match list(fd) {
            Ok(n) => n,
            Err(e) => {
                run.skip(self.canon.join(&rel), format!("unreadable: {e}"));
                return;
            }
        };
        for name in names {
            run.tick();
            let crel = rel.join(&name);
            let path = self.canon.join(&crel);
            let e = match skos_fs::stat_at(fd, &name) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    run.skip(&path, format!("unreadable: {e}"));
                    continue;
                }
            };
            if e.file_type == FileType::Symlink {
                run.skip(&path, super::SYMLINK);
                continue;
            }
            let is_dir = e.file_type == FileType::Directory;
            if !is_dir && e.file_type != FileType::RegularFile {
                continue;
            }
            if e.dev != self.dev {
                run.skip(&path, "other filesystem");
                continue;
            }
            if e.mnt_id.is_some_and(|m| m != self.mnt) {
                run.skip(&path, OTHER_MOUNT);
                continue;
            }
            if is_dir {
                if depth + 1 >= MAX_DEPTH {
                    run.skip(&path, format!("deeper than {MAX_DEPTH} levels: not walked"));
                    continue;
                }
                let sub = match rustix::fs::openat(fd, name.as_os_str(), DIR_FLAGS, Mode::empty()) {
                    Ok(sub) => sub,
                    Err(err) => {
                        run.skip(&path, format!("unreadable: {}", io::Error::from(err)));
                        continue;
                    }
                };
                // The directory opened must be the one listed, on this
                // mount (a swap in between is not followed).
                let same = fd_metadata(&sub).is_ok_and(|m| m.dev() == e.dev && m.ino() == e.ino)
                    && skos_fs::mount_id(&sub).is_ok_and(|m| m == self.mnt);
                if !same {
                    run.skip(&path, "changed while walked: not followed");
                    continue;
                }
                if let Some(limit) = dir_age {
                    if super::age(run.ctx.now, e.mtime) > limit {
                        self.old_dirs.insert(crel.clone());
                    }
                }
                self.walk_dir(run, dir_age, f, &sub, crel, depth + 1);
                continue;
            }
            if e.nlink > 1 {
                run.skip(&path, hard_linked(e.nlink));
                continue;
            }
            f(
                run,
                Candidate {
                    path,
                    rel: crel,
                    size: e.size,
                    mtime: e.mtime,
                    dev: e.dev,
                    ino: e.ino,
                },
            );
        }
    }

    /// The directory holding `rel`, reached from the root without following
    /// a symlink, without leaving the root and without crossing into another
    /// mount ([`skos_fs::open_beneath`]).
    pub fn open_parent(&self, rel: &Path) -> io::Result<OwnedFd> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        skos_fs::open_beneath(self.fd.as_fd(), parent, DIR_FLAGS, self.mnt)
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
        if m.file_type().is_file() && m.nlink() > 1 {
            return Err(io::Error::other(hard_linked(m.nlink())));
        }
        if !c.same(&m) {
            return Err(io::Error::other("changed since it was chosen"));
        }
        if skos_fs::stat_at(parent, c.name())?
            .mnt_id
            .is_some_and(|m| m != self.mnt)
        {
            return Err(io::Error::other(OTHER_MOUNT));
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

/// The names in the directory `fd`, sorted (`.` and `..` left out).
fn list(fd: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(OsStr::from_bytes(name).to_os_string());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{no_progress, no_usage, Run, RunCtx};
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// The configured dir itself, and a subdirectory not walked yet, are
    /// swapped for symlinks to another dir in the middle of a walk: the
    /// walk goes on in the directories it holds open, never lists the other
    /// dir, and the deletion that follows happens where the file was chosen.
    #[test]
    fn a_swap_during_the_walk_cannot_redirect_it() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        let tmp = base.join("tmp");
        let moved = base.join("moved");
        let victim = base.join("victim");
        fs::create_dir_all(tmp.join("z")).unwrap();
        fs::write(tmp.join("a"), "a").unwrap();
        fs::write(tmp.join("z/inner"), "z").unwrap();
        fs::create_dir_all(victim.join("z")).unwrap();
        fs::write(victim.join("a"), "victim").unwrap();
        fs::write(victim.join("z/inner"), "victim").unwrap();
        let ctx = RunCtx {
            now: SystemTime::now(),
            dry_run: false,
            max_delete_bytes: u64::MAX,
            proc_root: Path::new("/proc"),
            progress: &no_progress,
            usage: &no_usage,
            stop_below: 0.0,
        };
        let mut run = Run::new("test", &ctx);
        let mut root = Root::open(&tmp, &[base.to_path_buf()]).unwrap();
        let mut chosen: Vec<Candidate> = Vec::new();
        root.walk(&mut run, None, |_, c| {
            if chosen.is_empty() {
                fs::rename(&tmp, &moved).unwrap();
                symlink(&victim, &tmp).unwrap();
                fs::rename(moved.join("z"), moved.join("z-real")).unwrap();
                symlink(victim.join("z"), moved.join("z")).unwrap();
            }
            chosen.push(c);
        });
        let names: Vec<&Path> = chosen.iter().map(|c| c.rel.as_path()).collect();
        assert_eq!(names, [Path::new("a")], "{:#?}", run.report);
        assert_eq!(
            run.report
                .skipped
                .iter()
                .find(|s| s.path == tmp.join("z"))
                .map(|s| s.reason.as_str()),
            Some(super::super::SYMLINK)
        );
        for c in &chosen {
            root.remove_file(c).unwrap();
        }
        assert!(!moved.join("a").exists(), "deleted where it was chosen");
        assert_eq!(fs::read_to_string(victim.join("a")).unwrap(), "victim");
        assert_eq!(
            fs::read_to_string(victim.join("z/inner")).unwrap(),
            "victim"
        );
    }
}
