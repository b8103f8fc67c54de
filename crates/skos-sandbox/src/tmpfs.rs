//! A small tmpfs to fill, mounted with mount(2) on a dir of the sandbox.

use std::path::{Path, PathBuf};

use rustix::mount::{
    mount, mount_change, unmount, MountFlags, MountPropagationFlags, UnmountFlags,
};

use crate::{Error, Result};

/// Give this process mounts of its own (a new mount namespace whose
/// mounts propagate nowhere): a tmpfs mounted afterwards is seen by this
/// process only and goes with it, however it ends. Call it while the
/// process has one thread (before an async runtime starts); it needs root.
pub fn private_mounts() -> Result<()> {
    let root = Path::new("/");
    // SAFETY: the only danger `unshare_unsafe` warns of is FILES (file
    // descriptor tables split between threads); NEWNS only gives this
    // process a view of the mounts of its own.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.map_err(
        |e| Error::Mount {
            path: root.to_path_buf(),
            source: e.into(),
        },
    )?;
    mount_change(
        root,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| Error::Mount {
        path: root.to_path_buf(),
        source: e.into(),
    })
}

/// A tmpfs mounted on `path`, detached (`MNT_DETACH`) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `bytes` (mode 0700, no devices, no setuid, no
    /// exec) on the existing dir `path`.
    pub fn mount(path: &Path, bytes: u64) -> Result<Self> {
        let data = std::ffi::CString::new(format!("size={bytes},mode=0700")).map_err(|e| {
            Error::Mount {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            }
        })?;
        mount(
            "skos-sandbox",
            path,
            "tmpfs",
            MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(data.as_c_str()),
        )
        .map_err(|e| Error::Mount {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = unmount(&self.path, UnmountFlags::DETACH);
    }
}
