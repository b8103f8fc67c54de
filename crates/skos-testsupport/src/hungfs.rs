//! A mount whose `statfs` never answers, as a network filesystem's does
//! once its server is gone (an NFS hard mount, a FUSE daemon that hangs):
//! `statvfs(2)` of it blocks in the kernel until the mount goes away.
//!
//! The root directory answers `stat` (so the path can be resolved and
//! watched); every `statfs` is held unanswered until [`HungMount`] is
//! dropped, which answers them with `EIO` and unmounts. Mounting needs
//! FUSE, as the fake cpufreq driver ([`crate::cpufreq::CpufreqDriver`]).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, MountOption,
    ReplyAttr, ReplyEntry, ReplyStatfs, Request,
};

const TTL: Duration = Duration::from_secs(1);

/// A mounted filesystem whose `statfs` hangs; unmounted on drop.
pub struct HungMount {
    mountpoint: PathBuf,
    held: Arc<Mutex<Vec<ReplyStatfs>>>,
    session: Option<BackgroundSession>,
}

fn lock(m: &Mutex<Vec<ReplyStatfs>>) -> MutexGuard<'_, Vec<ReplyStatfs>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HungMount {
    /// Mount at `mountpoint` (an existing empty directory); says why not
    /// when FUSE is not usable here.
    pub fn mount(mountpoint: &Path) -> Result<Self, String> {
        let held = Arc::new(Mutex::new(Vec::new()));
        let fs = HungFs {
            held: held.clone(),
            // SAFETY: geteuid and getegid cannot fail and touch no memory.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            since: SystemTime::now(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("skos-hung".to_string()),
            MountOption::NoExec,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
            format!(
                "cannot mount the hung filesystem (FUSE) at {}: {e}",
                mountpoint.display()
            )
        })?;
        Ok(Self {
            mountpoint: mountpoint.to_path_buf(),
            held,
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// How many `statfs` calls are waiting for an answer now.
    pub fn waiting(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        for reply in lock(&self.held).drain(..) {
            reply.error(Errno::EIO);
        }
        let Some(session) = self.session.take() else {
            return;
        };
        if session.umount_and_join().is_err() {
            if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: `path` is a valid NUL-terminated string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

struct HungFs {
    held: Arc<Mutex<Vec<ReplyStatfs>>>,
    uid: u32,
    gid: u32,
    since: SystemTime,
}

impl HungFs {
    fn root(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(1),
            size: 0,
            blocks: 0,
            atime: self.since,
            mtime: self.since,
            ctime: self.since,
            crtime: self.since,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for HungFs {
    fn lookup(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::ENOENT);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if u64::from(ino) == 1 {
            reply.attr(&TTL, &self.root());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    /// Held: answered only when the mount is dropped.
    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        lock(&self.held).push(reply);
    }
}
