//! A directory held open, and the files SKOS writes in it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::trust::euid;

/// Mode of every file SKOS creates.
const FILE_MODE: u32 = 0o600;
/// Mode of a directory SKOS creates for its own files.
const DIR_MODE: u32 = 0o700;

/// Distinguishes temp files of one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory opened without following symlinks, and the path it was
/// opened by (for messages).
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    fd: OwnedFd,
}

/// `name` as a single plain component, or [`Error::BadName`].
fn plain(dir: &Path, name: &OsStr) -> Result<()> {
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => Err(Error::BadName {
            path: dir.join(name),
        }),
    }
}

/// The directory and file name of `path`.
fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| Error::BadName {
        path: path.to_path_buf(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

impl Dir {
    /// Opens `path` without following a symlink at any component
    /// ([`crate::open_dir`]).
    pub fn open(path: &Path) -> Result<Dir> {
        let fd = crate::open_dir(path)?;
        Ok(Dir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// Opens the directory SKOS keeps its own files in, creating it (mode
    /// `0700`; missing parents as usual) when missing. Refused, naming the
    /// path, owner and mode, when it is owned by another user than SKOS's
    /// or writable by group or others, or is (or has on its way) a symlink.
    pub fn private(path: &Path) -> Result<Dir> {
        if let Err(e) = std::fs::symlink_metadata(path) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(Error::io(path, e));
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            match rustix::fs::mkdir(path, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) => tracing::info!(path = %path.display(), "created private directory"),
                Err(e) if e == Errno::EXIST => {}
                Err(e) => return Err(Error::io(path, e.into())),
            }
        }
        let dir = Dir::open(path)?;
        let m = rustix::fs::fstat(&dir.fd).map_err(|e| Error::io(path, e.into()))?;
        let mode = m.st_mode & 0o7777;
        if m.st_uid != euid() || mode & 0o022 != 0 {
            return Err(Error::NotPrivate {
                path: path.to_path_buf(),
                owner: m.st_uid,
                mode,
                expected: euid(),
            });
        }
        Ok(dir)
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Creates `name` exclusively (never through a symlink, never an
    /// existing file), mode `0600`, for writing.
    pub fn create_new(&self, name: &OsStr) -> Result<File> {
        plain(&self.path, name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| Error::io(&self.path.join(name), e.into()))?;
        Ok(File::from(fd))
    }

    /// Replaces `name` with `bytes`: a temp file beside it created
    /// exclusively (mode `0600`), written and fsynced, renamed over `name`
    /// inside this directory, and the directory fsynced. Whatever `name`
    /// was (a symlink included) is replaced, never written through.
    pub fn write_atomic(&self, name: &OsStr, bytes: &[u8]) -> Result<()> {
        self.replace(name, bytes, true)
    }

    /// [`Dir::write_atomic`] without the fsyncs, for a snapshot rewritten
    /// often that a crash may lose (the old or the new content is there
    /// either way).
    pub fn write_snapshot(&self, name: &OsStr, bytes: &[u8]) -> Result<()> {
        self.replace(name, bytes, false)
    }

    fn replace(&self, name: &OsStr, bytes: &[u8], durable: bool) -> Result<()> {
        plain(&self.path, name)?;
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp_path = self.path.join(&tmp);
        let mut file = match self.create_new(&tmp) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                // Left by a crash of a process with the same pid: not ours
                // to trust, gone.
                let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
                self.create_new(&tmp)?
            }
            Err(e) => return Err(e),
        };
        let written =
            file.write_all(bytes)
                .and_then(|()| if durable { file.sync_all() } else { Ok(()) });
        drop(file);
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
            return Err(Error::io(&tmp_path, e));
        }
        if let Err(e) = rustix::fs::renameat(&self.fd, &tmp, &self.fd, name) {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
            return Err(Error::io(&self.path.join(name), e.into()));
        }
        if durable {
            self.sync();
        }
        Ok(())
    }

    /// Opens `name` for reading and appending, creating it (mode `0600`)
    /// when missing, never through a symlink. An existing file must be a
    /// regular file with one link, owned by SKOS's user; group and other
    /// permissions it has are taken away.
    pub fn open_append(&self, name: &OsStr) -> Result<File> {
        plain(&self.path, name)?;
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR
                | OFlags::APPEND
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| Error::open(&path, e.into()))?;
        let file = File::from(fd);
        let m = file.metadata().map_err(|e| Error::io(&path, e))?;
        trust_file(&path, &m)?;
        if m.mode() & 0o077 != 0 {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(FILE_MODE))
                .map_err(|e| Error::io(&path, e.into()))?;
        }
        Ok(file)
    }

    /// The content of `name`, never read through a symlink; `None` when it
    /// does not exist.
    pub fn read(&self, name: &OsStr) -> Result<Option<Vec<u8>>> {
        plain(&self.path, name)?;
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if e == Errno::NOENT => return Ok(None),
            Err(e) => return Err(Error::open(&path, e.into())),
        };
        let mut file = File::from(fd);
        let m = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !m.file_type().is_file() {
            return Err(Error::Untrusted {
                path,
                reason: "not a regular file".into(),
            });
        }
        let mut out = Vec::new();
        io::Read::read_to_end(&mut file, &mut out).map_err(|e| Error::io(&path, e))?;
        Ok(Some(out))
    }

    /// Removes `name` (the entry itself: a symlink is removed, not
    /// followed); whether it existed. The directory is fsynced.
    pub fn remove(&self, name: &OsStr) -> Result<bool> {
        plain(&self.path, name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => {
                self.sync();
                Ok(true)
            }
            Err(e) if e == Errno::NOENT => Ok(false),
            Err(e) => Err(Error::io(&self.path.join(name), e.into())),
        }
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        plain(&self.path, from)?;
        plain(&self.path, to)?;
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(|e| Error::io(&self.path.join(from), e.into()))?;
        self.sync();
        Ok(())
    }

    /// fsyncs the directory (best effort: said in the log when it fails).
    pub fn sync(&self) {
        if let Err(e) = rustix::fs::fsync(&self.fd) {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot fsync directory");
        }
    }
}

/// A file SKOS appends to must be its own, regular and not hard-linked.
fn trust_file(path: &Path, m: &std::fs::Metadata) -> Result<()> {
    let reason = if !m.file_type().is_file() {
        "not a regular file".to_string()
    } else if m.nlink() > 1 {
        format!("{} hard links", m.nlink())
    } else if m.uid() != euid() {
        format!("owned by uid {}, not {}", m.uid(), euid())
    } else {
        return Ok(());
    };
    Err(Error::Untrusted {
        path: path.to_path_buf(),
        reason,
    })
}

/// [`Dir::write_atomic`] of `path` in its directory, opened with
/// [`Dir::private`] (created `0700` when missing).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    Dir::private(dir)?.write_atomic(name, bytes)
}

/// [`Dir::write_snapshot`] of `path` in its directory, opened with
/// [`Dir::private`].
pub fn write_snapshot(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    Dir::private(dir)?.write_snapshot(name, bytes)
}

/// [`Dir::open_append`] of `path` in its directory, opened with
/// [`Dir::private`].
pub fn append_private(path: &Path) -> Result<File> {
    let (dir, name) = split(path)?;
    Dir::private(dir)?.open_append(name)
}

/// [`Dir::remove`] of `path` in its directory, opened with
/// [`Dir::private`]; a missing directory means nothing to remove.
pub fn remove_private(path: &Path) -> Result<bool> {
    let (dir, name) = split(path)?;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        _ => {}
    }
    Dir::private(dir)?.remove(name)
}

/// [`Dir::read`] of `path`, its directory opened without following
/// symlinks; `None` when it (or its directory) does not exist.
pub fn read_nofollow(path: &Path) -> Result<Option<Vec<u8>>> {
    let (dir, name) = split(path)?;
    match Dir::open(dir) {
        Ok(d) => d.read(name),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn private_dirs_and_files_are_owner_only_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        let old = rustix::process::umask(Mode::from_raw_mode(0o022));
        let d = t.path().join("data/sub");
        let dir = Dir::private(&d).unwrap();
        dir.write_atomic(OsStr::new("a.json"), b"{}").unwrap();
        let mut f = dir.open_append(OsStr::new("log")).unwrap();
        f.write_all(b"x\n").unwrap();
        rustix::process::umask(old);
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("a.json")), 0o600);
        assert_eq!(mode(&d.join("log")), 0o600);
        assert_eq!(dir.read(OsStr::new("a.json")).unwrap().unwrap(), b"{}");
        assert_eq!(dir.read(OsStr::new("none")).unwrap(), None);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_dir_writable_by_others_is_refused_with_its_owner_and_mode() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("shared");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Dir::private(&d).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::NotPrivate { mode: 0o777, .. }), "{text}");
        assert!(
            text.contains(&d.display().to_string()) && text.contains("0777"),
            "{text}"
        );
    }

    #[test]
    fn planted_symlinks_are_replaced_or_refused_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"root only").unwrap();
        let d = t.path().join("d");
        let dir = Dir::private(&d).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("state.json")).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("audit.jsonl")).unwrap();
        dir.write_atomic(OsStr::new("state.json"), b"new").unwrap();
        assert!(dir.open_append(OsStr::new("audit.jsonl")).is_err());
        assert!(dir.read(OsStr::new("audit.jsonl")).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"root only");
        assert_eq!(std::fs::read(d.join("state.json")).unwrap(), b"new");
        // A hard link to someone else's file is not appended to.
        std::fs::hard_link(&victim, d.join("linked")).unwrap();
        assert!(dir.open_append(OsStr::new("linked")).is_err());
        assert!(dir.write_atomic(OsStr::new("../x"), b"").is_err());
    }
}
