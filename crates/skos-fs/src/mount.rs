//! Mount ids and `lstat` of a name in a directory, from `statx`.
//!
//! Two mounts of the same filesystem (a bind mount) share a device number;
//! only the mount id tells them apart. `statx` gives it with
//! `STATX_MNT_ID` (Linux 5.8); before that, `/proc/self/fdinfo/<fd>` has
//! it for an open descriptor.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, StatxFlags};

/// The mount id of an open file or directory.
pub fn mount_id(fd: impl AsFd) -> io::Result<u64> {
    match rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) {
        Ok(s) if s.stx_mask & StatxFlags::MNT_ID.bits() != 0 => Ok(s.stx_mnt_id),
        _ => fdinfo_mount_id(fd.as_fd().as_raw_fd()),
    }
}

fn fdinfo_mount_id(fd: i32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no mount id in /proc/self/fdinfo"))
}

/// What `lstat` says of one directory entry, with its mount id where the
/// kernel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Regular file, directory, symlink...
    pub file_type: FileType,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Hard links.
    pub nlink: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub mtime: SystemTime,
    /// Device of its filesystem.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Mount id (`None` where neither `statx` nor `/proc/self/fdinfo` can
    /// say).
    pub mnt_id: Option<u64>,
}

/// `lstat` of `name` in the directory `dir` (never follows a symlink).
pub fn stat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Entry> {
    let want = StatxFlags::BASIC_STATS | StatxFlags::MNT_ID;
    match rustix::fs::statx(&dir, name, AtFlags::SYMLINK_NOFOLLOW, want) {
        Ok(s) => {
            let mtime = time(s.stx_mtime.tv_sec, s.stx_mtime.tv_nsec);
            Ok(Entry {
                file_type: FileType::from_raw_mode(u32::from(s.stx_mode)),
                mode: u32::from(s.stx_mode) & 0o7777,
                uid: s.stx_uid,
                nlink: u64::from(s.stx_nlink),
                size: s.stx_size,
                mtime,
                dev: rustix::fs::makedev(s.stx_dev_major, s.stx_dev_minor),
                ino: s.stx_ino,
                mnt_id: if s.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
                    Some(s.stx_mnt_id)
                } else {
                    path_mount_id(&dir, name)
                },
            })
        }
        Err(e) if e == rustix::io::Errno::NOSYS => {
            let s = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(Entry {
                file_type: FileType::from_raw_mode(s.st_mode),
                mode: s.st_mode & 0o7777,
                uid: s.st_uid,
                nlink: s.st_nlink,
                size: u64::try_from(s.st_size).unwrap_or(0),
                mtime: time(s.st_mtime, u32::try_from(s.st_mtime_nsec).unwrap_or(0)),
                dev: s.st_dev,
                ino: s.st_ino,
                mnt_id: path_mount_id(&dir, name),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The mount id of `name` in `dir` through an `O_PATH | O_NOFOLLOW`
/// descriptor (kernels whose `statx` has no `STATX_MNT_ID`).
fn path_mount_id(dir: &impl AsFd, name: &OsStr) -> Option<u64> {
    let fd = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    mount_id(&fd).ok()
}

fn time(secs: i64, nsec: u32) -> SystemTime {
    let n = Duration::new(0, nsec);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()) + n
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statx_and_fdinfo_agree_and_entries_match_std() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"abc").unwrap();
        let d = crate::open_dir(t.path()).unwrap();
        let id = mount_id(&d).unwrap();
        assert_eq!(fdinfo_mount_id(d.as_raw_fd()).unwrap(), id);
        let e = stat_at(&d, OsStr::new("f")).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((e.dev, e.ino, e.size, e.nlink), (m.dev(), m.ino(), 3, 1));
        assert_eq!(e.mtime, m.modified().unwrap());
        assert_eq!(e.mnt_id, Some(id));
        assert_eq!(path_mount_id(&d, OsStr::new("f")), Some(id));
        assert_eq!(e.file_type, FileType::RegularFile);
    }
}
