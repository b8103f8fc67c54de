//! Real tmpfs mounts for tests that must see a filesystem fill up, and
//! helpers to fill them with files of a given size and age.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`); [`Tmpfs::mount`] returns the
//! reason when it cannot mount, so a test can say why it skips. Dropping a
//! [`Tmpfs`] (or a [`Mount`]) unmounts it (`umount -l`) and removes the
//! mount point.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use filetime::FileTime;
use tempfile::TempDir;

/// A tmpfs mounted on a fresh temp dir, unmounted on drop.
pub struct Tmpfs {
    dir: TempDir,
    mounted: bool,
}

fn options(size: &str, inodes: Option<u64>) -> Result<String, String> {
    if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric() || c == '%') {
        return Err(format!("bad tmpfs size {size:?}"));
    }
    let mut opts = format!("size={size}");
    if let Some(n) = inodes {
        opts.push_str(&format!(",nr_inodes={n}"));
    }
    Ok(opts)
}

fn mount_tmpfs(path: &Path, size: &str, inodes: Option<u64>) -> Result<(), String> {
    let opts = options(size, inodes)?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs -o {opts} tmpfs {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn umount(path: &Path) {
    let _ = Command::new("umount").arg("-l").arg(path).output();
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`"8M"`) with at most `inodes` inodes on a
    /// new temp dir; `Err` says why not (not root, no `mount`...).
    pub fn mount(size: &str, inodes: Option<u64>) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("skos-tmpfs-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp dir: {e}"))?;
        mount_tmpfs(dir.path(), size, inodes)?;
        Ok(Tmpfs { dir, mounted: true })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of `bytes` bytes at `rel` (parents created); its
    /// content is pseudo-random (does not compress), different per path.
    pub fn fill(&self, rel: &str, bytes: usize) -> PathBuf {
        let path = self.path().join(rel);
        write_file(&path, bytes);
        path
    }

    /// Sets the mtime (and atime) of `path` to `secs_ago` seconds ago.
    pub fn age(&self, path: &Path, secs_ago: u64) {
        age(path, secs_ago);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            umount(self.dir.path());
            self.mounted = false;
        }
    }
}

/// A tmpfs mounted on an existing directory (e.g. inside another tmpfs),
/// unmounted on drop (the directory stays).
pub struct Mount {
    path: PathBuf,
}

impl Mount {
    pub fn tmpfs_at(path: &Path, size: &str, inodes: Option<u64>) -> Result<Mount, String> {
        fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        mount_tmpfs(path, size, inodes)?;
        Ok(Mount {
            path: path.to_path_buf(),
        })
    }

    /// `src` (a directory or a file) bind-mounted on `path` (which must
    /// exist, of the same kind): the same filesystem, another mount.
    pub fn bind(src: &Path, path: &Path) -> Result<Mount, String> {
        let out = Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount --bind {} {} failed ({}): {}",
                src.display(),
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        umount(&self.path);
    }
}

/// Pseudo-random bytes (xorshift), the same for the same `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn seed_of(path: &Path) -> u64 {
    // FNV-1a of the path.
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// Writes a file of `bytes` pseudo-random bytes at `path` (parents created).
pub fn write_file(path: &Path, bytes: usize) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, pseudo_random(seed_of(path), bytes)).unwrap();
}

/// Sets the mtime (and atime) of `path` to `secs_ago` seconds ago (never
/// following a symlink).
pub fn age(path: &Path, secs_ago: u64) {
    let t = FileTime::from_system_time(SystemTime::now() - Duration::from_secs(secs_ago));
    filetime::set_symlink_file_times(path, t, t).unwrap();
}
