//! Opening paths without following symlinks: `openat2` where the kernel
//! has it, a component-by-component `O_NOFOLLOW` walk where not.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Flags of a directory opened for listing and as an `*at` base.
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Flags of a directory on the way to the one wanted.
const STEP_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Whether `openat2` is missing (old kernel) or filtered (a seccomp policy
/// that predates it): then the walk does the same job.
fn unsupported(e: Errno) -> bool {
    e == Errno::NOSYS || e == Errno::PERM || e == Errno::TOOBIG || e == Errno::OPNOTSUPP
}

/// Opens the directory `path` (absolute, or relative to the working
/// directory) without following a symlink at any component; `..` is
/// refused. Mount points on the way are crossed: the path is the
/// operator's, and mounts are root's doing.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    open_path(path, DIR_FLAGS).map_err(|e| Error::open(path, e))
}

pub(crate) fn open_path(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "'..' is not allowed",
        ));
    }
    if path.as_os_str().is_empty() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(CWD, path, flags | OFlags::NOFOLLOW, Mode::empty(), resolve) {
        Ok(fd) => Ok(fd),
        Err(e) if unsupported(e) => walk(CWD, path, flags, None),
        Err(e) => Err(e.into()),
    }
}

/// Opens `rel` (a relative path of plain components) inside the directory
/// `dir`, without following a symlink, without leaving `dir`, and without
/// crossing into another mount than `dir`'s (`mnt`, from [`crate::mount_id`]).
/// An empty `rel` reopens `dir` itself. `flags` get `O_NOFOLLOW |
/// O_CLOEXEC` added.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mnt: u64,
) -> io::Result<OwnedFd> {
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "outside its directory",
        ));
    }
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let target: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
        | ResolveFlags::BENEATH;
    match rustix::fs::openat2(dir, target, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(fd),
        Err(e) if e == Errno::XDEV => Err(io::Error::other("crosses into another mount")),
        Err(e) if unsupported(e) => walk(dir, target, flags, Some(mnt)),
        Err(e) => Err(e.into()),
    }
}

/// The fallback: one component at a time, each opened `O_NOFOLLOW` relative
/// to the last; with `mnt`, each must be on that mount.
pub(crate) fn walk(
    start: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mnt: Option<u64>,
) -> io::Result<OwnedFd> {
    let comps: Vec<Component<'_>> = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let mut cur: Option<OwnedFd> = None;
    let n = comps.len();
    if n == 0 {
        return Ok(rustix::fs::openat(
            start,
            ".",
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    for (i, c) in comps.into_iter().enumerate() {
        let last = i + 1 == n;
        let next = match c {
            Component::RootDir => rustix::fs::openat(CWD, "/", STEP_FLAGS, Mode::empty())?,
            Component::Normal(name) => {
                let f = if last {
                    flags | OFlags::NOFOLLOW | OFlags::CLOEXEC
                } else {
                    STEP_FLAGS
                };
                let base = match &cur {
                    Some(fd) => fd.as_fd(),
                    None => start,
                };
                rustix::fs::openat(base, name, f, Mode::empty())?
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "'..' is not allowed",
                ))
            }
        };
        if let Some(m) = mnt {
            if crate::mount::mount_id(&next)? != m {
                return Err(io::Error::other("crosses into another mount"));
            }
        }
        if last && c == Component::RootDir {
            return Ok(rustix::fs::openat(
                next.as_fd(),
                ".",
                flags | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        cur = Some(next);
    }
    cur.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_anywhere_in_the_path_is_refused_by_both_ways() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        symlink(&real, t.path().join("link")).unwrap();
        for p in [t.path().join("link"), t.path().join("link/sub")] {
            let e = open_dir(&p).unwrap_err();
            assert!(matches!(e, Error::Symlink { .. }), "{e}");
            assert!(walk(CWD, &p, DIR_FLAGS, None).is_err());
        }
        assert!(open_dir(&real.join("sub")).is_ok());
        assert!(walk(CWD, &real.join("sub"), DIR_FLAGS, None).is_ok());
        assert!(open_dir(&t.path().join("real/../real")).is_err());
    }

    #[test]
    fn beneath_stays_beneath_and_on_its_mount() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        symlink(t.path().join("a"), t.path().join("a/up")).unwrap();
        let root = open_dir(t.path()).unwrap();
        let mnt = crate::mount_id(&root).unwrap();
        assert!(open_beneath(root.as_fd(), Path::new("a/b"), DIR_FLAGS, mnt).is_ok());
        assert!(walk(root.as_fd(), Path::new("a/b"), DIR_FLAGS, Some(mnt)).is_ok());
        assert!(open_beneath(root.as_fd(), Path::new("a/up/b"), DIR_FLAGS, mnt).is_err());
        assert!(walk(root.as_fd(), Path::new("a/up/b"), DIR_FLAGS, Some(mnt)).is_err());
        assert!(open_beneath(root.as_fd(), Path::new("../x"), DIR_FLAGS, mnt).is_err());
        // A wrong mount id: the walk refuses the first step.
        assert!(walk(root.as_fd(), Path::new("a/b"), DIR_FLAGS, Some(mnt + 1)).is_err());
    }
}
