//! The one error type of this crate; every variant names its path.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on `path` failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `path` is a symlink, or one of its components is: not followed.
    #[error("{}: {} is a symlink (not followed)", .path.display(), .link.display())]
    Symlink {
        /// The path that was asked for.
        path: PathBuf,
        /// The component found to be a symlink (`path` itself when unknown).
        link: PathBuf,
    },
    /// A directory SKOS keeps its own files in belongs to someone else or
    /// may be written by others.
    #[error(
        "{} is owned by uid {owner} with mode {mode:04o}: SKOS keeps its files only in a directory owned by uid {expected} that group and others cannot write (fix its owner and mode, or choose another directory)",
        .path.display()
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The uid SKOS runs as.
        expected: u32,
    },
    /// A file SKOS would append to or read back is not one it can trust.
    #[error("{}: {reason}: left alone", .path.display())]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// Why (not a regular file, hard-linked, owned by someone else).
        reason: String,
    },
    /// A name that is not a single path component.
    #[error("{}: not a plain file name", .path.display())]
    BadName {
        /// The name.
        path: PathBuf,
    },
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::Symlink { path, .. }
            | Error::NotPrivate { path, .. }
            | Error::Untrusted { path, .. }
            | Error::BadName { path } => path,
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An error from opening `path` without following symlinks: `ELOOP`
    /// (and `ENOTDIR` where a component is a symlink) becomes
    /// [`Error::Symlink`] naming the first symlink found.
    pub(crate) fn open(path: &Path, source: io::Error) -> Error {
        let code = source.raw_os_error();
        if code == Some(rustix::io::Errno::LOOP.raw_os_error())
            || code == Some(rustix::io::Errno::NOTDIR.raw_os_error())
        {
            if let Some(link) = first_symlink(path) {
                return Error::Symlink {
                    path: path.to_path_buf(),
                    link,
                };
            }
        }
        Error::io(path, source)
    }
}

/// The first component of `path` that is a symlink (for messages only).
pub(crate) fn first_symlink(path: &Path) -> Option<PathBuf> {
    let mut cur = PathBuf::new();
    for c in path.components() {
        cur.push(c);
        if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(cur);
        }
    }
    None
}
