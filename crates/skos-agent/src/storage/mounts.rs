//! Which mounts the storage watcher judges for fullness, and where the
//! configured dirs live.
//!
//! Only what can fill and can be cleaned is judged. A mount is left alone
//! when statvfs reports no blocks (`f_blocks == 0`: nothing to be full of),
//! when it is mounted read-only (`ST_RDONLY` in `f_flag`, or `ro` in its
//! mountinfo options: an ostree composefs root reports 100 % used with 0
//! blocks available, but it cannot fill and nothing on it can be deleted),
//! when it is an image filesystem (erofs, squashfs, iso9660, cramfs, romfs
//! and their FUSE readers), and, unless listed in `storage.mounts`, when it
//! is a pseudo filesystem (proc, sysfs, devtmpfs, cgroup2, …). tmpfs is
//! judged: it fills like a disk and its files can be cleaned.
//!
//! The filesystem type comes from `<proc_root>/self/mountinfo`
//! (`proc_pid_mountinfo(5)`), parsed here by a pure function; the judgement
//! itself, [`judge`], is pure over the statvfs numbers, the read-only flag,
//! the type and whether the mount was configured explicitly.

use skos_core::escape::ShowPath;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::usage::RawStat;
use crate::{Error, Result};

/// One line of `/proc/<pid>/mountinfo`: what the storage watcher needs of
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountEntry {
    /// Field 5, the mount point (octal escapes such as `\040` decoded).
    #[serde(serialize_with = "skos_core::escape::path")]
    pub mount_point: PathBuf,
    /// The filesystem type after the ` - ` separator (`ext4`, `overlay`,
    /// `fuse.squashfuse`).
    pub fs_type: String,
    /// The mount source after the type (`/dev/vda1`, `composefs`, `tmpfs`).
    pub source: String,
    /// `ro` among the superblock options (the last field): the filesystem
    /// itself cannot be written. A read-only mount of a writable
    /// filesystem (a read-only bind mount, systemd's `ProtectSystem=`)
    /// says `ro` only in the per-mount options (field 6): that filesystem
    /// still fills through its other mounts, so it is still judged.
    pub read_only: bool,
}

/// A mountinfo line that could not be read (it is skipped; the others
/// stand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {reason}")]
pub struct MountinfoError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Decode the octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash) the kernel writes in mountinfo paths.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let digits = b.get(i + 1..i + 4).unwrap_or_default();
            if digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

fn has_ro(options: &str) -> bool {
    options.split(',').any(|o| o == "ro")
}

/// Pure: the entries of a mountinfo text, in the kernel's order (later
/// mounts last), and the lines that could not be read.
pub fn parse_mountinfo(text: &str) -> (Vec<MountEntry>, Vec<MountinfoError>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            bad.push(MountinfoError {
                line: i + 1,
                reason: "no ' - ' separator",
            });
            continue;
        };
        if sep < 6 || fields.len() < sep + 3 {
            bad.push(MountinfoError {
                line: i + 1,
                reason: "too few fields",
            });
            continue;
        }
        let mount_point = fields[4];
        if !mount_point.starts_with('/') {
            bad.push(MountinfoError {
                line: i + 1,
                reason: "mount point is not an absolute path",
            });
            continue;
        }
        let super_opts = fields.get(sep + 3).copied().unwrap_or("");
        entries.push(MountEntry {
            mount_point: unescape(mount_point),
            fs_type: fields[sep + 1].to_string(),
            source: fields[sep + 2].to_string(),
            read_only: has_ro(super_opts),
        });
    }
    (entries, bad)
}

/// Pure: the mount holding `path` (absolute, already resolved): the entry
/// with the longest mount point that is `path` or one of its ancestors,
/// the later one when two are mounted on the same point (it hides the
/// earlier).
pub fn mount_holding<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.components().count())
}

/// Filesystem types that are read-only images by nature.
const IMAGE_TYPES: &[&str] = &[
    "erofs",
    "squashfs",
    "iso9660",
    "cramfs",
    "romfs",
    "composefs",
    // FUSE readers of the same images (`fuse.<subtype>`).
    "squashfuse",
    "squashfuse_ll",
    "erofsfuse",
    "fuseiso",
    "archivemount",
];

/// Kernel pseudo filesystems: their "usage" is not disk space anyone can
/// clean. tmpfs is not among them: it fills, and its files can go.
const PSEUDO_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
    "ramfs",
    "nfsd",
    "sockfs",
    "pipefs",
    "anon_inodefs",
];

/// What kind of filesystem a mountinfo type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// A read-only image (erofs, squashfs, iso9660, cramfs, …).
    Image,
    /// A kernel pseudo filesystem (proc, sysfs, devtmpfs, cgroup2, …).
    Pseudo,
    /// Anything else: a disk, tmpfs, a network or FUSE filesystem.
    Storage,
}

/// Pure: the kind of a mountinfo filesystem type (`fuse.` and `fuseblk.`
/// prefixes are looked through to the subtype).
pub fn fs_kind(fs_type: &str) -> FsKind {
    let base = fs_type
        .strip_prefix("fuse.")
        .or_else(|| fs_type.strip_prefix("fuseblk."))
        .unwrap_or(fs_type);
    if IMAGE_TYPES.contains(&base) {
        FsKind::Image
    } else if PSEUDO_TYPES.contains(&fs_type) {
        FsKind::Pseudo
    } else {
        FsKind::Storage
    }
}

/// Why a mount is not judged for fullness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotJudged {
    /// statvfs reports no blocks (`f_blocks == 0`): there is no capacity
    /// to be full of.
    NoBlocks,
    /// Mounted read-only (`ST_RDONLY`, or `ro` in mountinfo): it cannot
    /// fill, and nothing on it can be cleaned.
    ReadOnly { fs_type: Option<String> },
    /// A read-only image filesystem.
    Image { fs_type: String },
    /// A pseudo filesystem, and the mount is not listed in
    /// `storage.mounts`.
    Pseudo { fs_type: String },
}

impl fmt::Display for NotJudged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotJudged::NoBlocks => write!(f, "statvfs reports no blocks"),
            NotJudged::ReadOnly { fs_type: Some(t) } => write!(f, "read-only {t} mount"),
            NotJudged::ReadOnly { fs_type: None } => write!(f, "read-only mount"),
            NotJudged::Image { fs_type } => write!(f, "{fs_type} is a read-only image filesystem"),
            NotJudged::Pseudo { fs_type } => write!(
                f,
                "{fs_type} is a pseudo filesystem (list it in storage.mounts to judge it)"
            ),
        }
    }
}

/// Pure: whether a mount is judged for fullness, from its statvfs numbers
/// and read-only flag (`stat`), its mountinfo entry when known (type and
/// `ro` options), and whether it was listed in `storage.mounts`
/// (`explicit`). `Ok(())` to judge it; otherwise why not.
///
/// No blocks, read-only and image filesystems are never judged, even when
/// listed: their usage cannot change and cannot be cleaned. Pseudo
/// filesystems are judged only when listed.
pub fn judge(stat: &RawStat, entry: Option<&MountEntry>, explicit: bool) -> Result<(), NotJudged> {
    if stat.blocks == 0 {
        return Err(NotJudged::NoBlocks);
    }
    let fs_type = entry.map(|e| e.fs_type.clone());
    let kind = entry.map_or(FsKind::Storage, |e| fs_kind(&e.fs_type));
    if kind == FsKind::Image {
        return Err(NotJudged::Image {
            fs_type: fs_type.unwrap_or_default(),
        });
    }
    // statvfs's ST_RDONLY is also set by a read-only bind mount of a
    // writable filesystem: trusted only when mountinfo says nothing.
    if entry.map_or(stat.read_only, |e| e.read_only) {
        return Err(NotJudged::ReadOnly { fs_type });
    }
    if kind == FsKind::Pseudo && !explicit {
        return Err(NotJudged::Pseudo {
            fs_type: fs_type.unwrap_or_default(),
        });
    }
    Ok(())
}

/// `<proc_root>/self/mountinfo`, parsed; lines that cannot be read are
/// logged and skipped.
pub fn read_mountinfo(proc_root: &Path) -> Result<Vec<MountEntry>> {
    let path = proc_root.join("self").join("mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let (entries, bad) = parse_mountinfo(&text);
    for b in bad {
        tracing::debug!(path = %path.escaped(), line = b.line, reason = b.reason, "mountinfo line skipped");
    }
    Ok(entries)
}

/// `path` made absolute and free of symlinks as far as it exists: the
/// nearest existing ancestor is resolved and the rest appended (a dir that
/// is not created yet lives on its parent's mount).
pub fn resolve_existing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            let mut out = c;
            out.extend(rest.iter().rev());
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(p), Some(name)) => {
                rest.push(name.to_os_string());
                cur = p;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The mount point holding `path`, found without mountinfo: the highest
/// ancestor still on `path`'s device.
pub fn mount_point_by_device(path: &Path) -> Result<PathBuf> {
    let dev = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .dev();
    let mut top = path;
    while let Some(parent) = top.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => top = parent,
            _ => break,
        }
    }
    Ok(top.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(blocks: u64, free: u64, avail: u64, read_only: bool) -> RawStat {
        RawStat {
            block_size: 4096,
            fragment_size: 4096,
            blocks,
            blocks_free: free,
            blocks_available: avail,
            files: 1000,
            files_free: 900,
            read_only,
        }
    }

    fn entry(point: &str, fs_type: &str, ro: bool) -> MountEntry {
        MountEntry {
            mount_point: point.into(),
            fs_type: fs_type.into(),
            source: "src".into(),
            read_only: ro,
        }
    }

    /// `/proc/self/mountinfo` of an ostree host with a composefs root (the
    /// overlay over an EROFS image is `/`, read-only; the writable state
    /// is on `/sysroot` and `/var`), trimmed.
    const OSTREE_COMPOSEFS: &str = "\
22 1 0:19 / / ro,relatime shared:1 - overlay composefs ro,lowerdir+=/run/ostree/.private/cfsroot-lower,datadir+=/sysroot/ostree/repo/objects,redirect_dir=on,metacopy=on
23 22 252:3 / /sysroot rw,relatime shared:2 - xfs /dev/vda3 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
24 22 252:3 /ostree/deploy/fedora-coreos/var /var rw,relatime shared:3 - xfs /dev/vda3 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
25 22 0:5 / /dev rw,nosuid shared:4 - devtmpfs devtmpfs rw,size=4096k,nr_inodes=1048576,mode=755
26 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
27 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw,seclabel
28 27 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:7 - cgroup2 cgroup2 rw,seclabel,nsdelegate
29 22 0:27 / /tmp rw,nosuid,nodev shared:8 - tmpfs tmpfs rw,seclabel,size=2006708k,nr_inodes=1048576
30 22 7:0 / /run/media/cd rw,nosuid,nodev shared:9 - iso9660 /dev/loop0 ro,nojoliet,check=s,map=n,blocksize=2048
31 22 7:1 / /var/lib/snapd/snap/core/1 ro,nodev,relatime shared:10 - squashfs /dev/loop1 ro,errors=continue
32 22 0:40 / /mnt/my\\040disk rw,relatime shared:11 - ext4 /dev/sdb1 rw
33 29 0:41 / /tmp rw,relatime shared:12 - ext4 /dev/sdc1 rw
34 22 0:42 / /srv/image rw,relatime shared:13 - fuse.squashfuse squashfuse rw,user_id=0,group_id=0
";

    #[test]
    fn parses_a_composefs_host() {
        let (e, bad) = parse_mountinfo(OSTREE_COMPOSEFS);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(e.len(), 13);
        assert_eq!(e[0], entry_with("/", "overlay", "composefs", true));
        assert_eq!(e[2], entry_with("/var", "xfs", "/dev/vda3", false));
        // Read-only through the superblock options only.
        assert!(e[8].read_only, "iso9660 mounted rw over a ro superblock");
        assert_eq!(e[10].mount_point, Path::new("/mnt/my disk"));
    }

    fn entry_with(point: &str, fs_type: &str, source: &str, ro: bool) -> MountEntry {
        MountEntry {
            source: source.into(),
            ..entry(point, fs_type, ro)
        }
    }

    #[test]
    fn bad_lines_are_skipped_alone() {
        let text =
            "garbage\n\n36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw\n1 2 3 x - y\n";
        let (e, bad) = parse_mountinfo(text);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].mount_point, Path::new("/mnt2"));
        assert_eq!(e[0].fs_type, "ext3");
        assert!(!e[0].read_only);
        assert_eq!(bad.len(), 2);
        assert_eq!(
            (bad[0].line, bad[1].line),
            (1, 4),
            "line numbers count blank lines"
        );
        assert_eq!(parse_mountinfo("").0, Vec::new());
    }

    #[test]
    fn escapes_are_decoded_and_odd_ones_kept() {
        assert_eq!(unescape("/a\\040b"), Path::new("/a b"));
        assert_eq!(unescape("/tab\\011x\\134y"), Path::new("/tab\tx\\y"));
        // Not an escape: too short, or not octal.
        assert_eq!(unescape("/x\\04"), Path::new("/x\\04"));
        assert_eq!(unescape("/x\\089"), Path::new("/x\\089"));
        assert_eq!(unescape("/x\\"), Path::new("/x\\"));
    }

    #[test]
    fn the_mount_holding_a_path_is_the_longest_and_latest() {
        let (e, _) = parse_mountinfo(OSTREE_COMPOSEFS);
        let of = |p: &str| mount_holding(&e, Path::new(p)).map(|m| m.mount_point.clone());
        assert_eq!(of("/var/log/app"), Some("/var".into()));
        assert_eq!(of("/var"), Some("/var".into()));
        assert_eq!(of("/variable"), Some("/".into()), "components, not bytes");
        assert_eq!(of("/etc"), Some("/".into()));
        assert_eq!(of("/sys/fs/cgroup/x"), Some("/sys/fs/cgroup".into()));
        // /tmp is mounted twice: the later ext4 hides the tmpfs.
        let tmp = mount_holding(&e, Path::new("/tmp/x")).map(|m| m.fs_type.as_str());
        assert_eq!(tmp, Some("ext4"));
        assert_eq!(mount_holding(&[], Path::new("/x")), None);
    }

    #[test]
    fn kinds_of_filesystems() {
        for t in [
            "erofs",
            "squashfs",
            "iso9660",
            "cramfs",
            "romfs",
            "fuse.squashfuse",
            "fuseblk.fuseiso",
        ] {
            assert_eq!(fs_kind(t), FsKind::Image, "{t}");
        }
        for t in [
            "proc", "sysfs", "devtmpfs", "cgroup2", "cgroup", "debugfs", "tracefs", "bpf",
            "efivarfs", "ramfs", "mqueue",
        ] {
            assert_eq!(fs_kind(t), FsKind::Pseudo, "{t}");
        }
        for t in [
            "tmpfs",
            "ext4",
            "xfs",
            "btrfs",
            "zfs",
            "overlay",
            "nfs4",
            "fuse.sshfs",
            "vfat",
        ] {
            assert_eq!(fs_kind(t), FsKind::Storage, "{t}");
        }
    }

    /// Case 12 (composefs root): `stat -f /` gave 5297 blocks of 4096, 0
    /// free, 0 available, inodes 2^64-1 with 2^64-125126 free, read-only.
    #[test]
    fn a_composefs_root_is_not_judged() {
        let s = RawStat {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 5297,
            blocks_free: 0,
            blocks_available: 0,
            files: u64::MAX,
            files_free: 18_446_744_073_709_426_490,
            read_only: true,
        };
        let root = entry_with("/", "overlay", "composefs", true);
        assert_eq!(
            judge(&s, Some(&root), true),
            Err(NotJudged::ReadOnly {
                fs_type: Some("overlay".into())
            })
        );
        // The statvfs flag alone is enough (no mountinfo, or a FUSE replay).
        assert_eq!(
            judge(&s, None, true),
            Err(NotJudged::ReadOnly { fs_type: None })
        );
        // And mountinfo's `ro` alone too.
        let rw_flag = RawStat {
            read_only: false,
            ..s
        };
        assert!(judge(&rw_flag, Some(&root), true).is_err());
    }

    /// A read-only bind mount of a writable disk (systemd's
    /// `ProtectSystem=full`/`ProtectHome=read-only` give the agent such
    /// mounts): `ro` per mount, `rw` superblock, and statvfs says
    /// ST_RDONLY. The disk still fills through its other mounts: judged.
    #[test]
    fn a_read_only_bind_mount_of_a_writable_disk_is_judged() {
        let line = "40 22 252:1 /home /home ro,nosuid,nodev,relatime shared:9 - ext4 /dev/vda1 rw,errors=remount-ro\n";
        let (e, bad) = parse_mountinfo(line);
        assert!(bad.is_empty());
        assert!(!e[0].read_only);
        assert_eq!(judge(&stat(1000, 10, 10, true), Some(&e[0]), true), Ok(()));
        // Its superblock read-only (errors=remount-ro has struck): not.
        let line =
            "40 22 252:1 /home /home ro,relatime shared:9 - ext4 /dev/vda1 ro,errors=remount-ro\n";
        let (e, _) = parse_mountinfo(line);
        assert!(matches!(
            judge(&stat(1000, 10, 10, true), Some(&e[0]), true),
            Err(NotJudged::ReadOnly { .. })
        ));
        // Without mountinfo, statvfs's flag is all there is.
        assert!(matches!(
            judge(&stat(1000, 10, 10, true), None, true),
            Err(NotJudged::ReadOnly { .. })
        ));
    }

    #[test]
    fn judgement_across_filesystems() {
        let full = stat(1000, 0, 0, false);
        let half = stat(1000, 500, 450, false);
        let judged = |s: &RawStat, t: &str, ro: bool, explicit: bool| {
            judge(s, Some(&entry("/m", t, ro)), explicit)
        };
        // Writable storage is judged, full or not, listed or derived.
        for t in [
            "ext4",
            "xfs",
            "btrfs",
            "tmpfs",
            "overlay",
            "nfs4",
            "fuse.sshfs",
        ] {
            assert_eq!(judged(&full, t, false, false), Ok(()), "{t}");
            assert_eq!(judged(&half, t, false, true), Ok(()), "{t}");
        }
        // Images never, even listed, even without an ro flag.
        for t in ["erofs", "squashfs", "iso9660", "cramfs", "fuse.squashfuse"] {
            assert!(
                matches!(judged(&full, t, false, true), Err(NotJudged::Image { .. })),
                "{t}"
            );
        }
        // Read-only ext4 (a remounted-ro disk after errors) never.
        assert!(matches!(
            judged(&full, "ext4", true, true),
            Err(NotJudged::ReadOnly { .. })
        ));
        assert!(matches!(
            judge(&stat(1000, 0, 0, true), None, true),
            Err(NotJudged::ReadOnly { .. })
        ));
        // Pseudo filesystems only when listed.
        for t in ["devtmpfs", "cgroup2", "efivarfs"] {
            assert!(
                matches!(
                    judged(&full, t, false, false),
                    Err(NotJudged::Pseudo { .. })
                ),
                "{t}"
            );
            assert_eq!(judged(&full, t, false, true), Ok(()), "{t} listed");
        }
        // No blocks: proc, sysfs, cgroup2 and ramfs report 0, nothing to
        // divide by, whatever the rest says.
        for explicit in [false, true] {
            assert_eq!(
                judge(&stat(0, 0, 0, false), None, explicit),
                Err(NotJudged::NoBlocks)
            );
            assert_eq!(
                judged(&stat(0, 0, 0, false), "proc", false, explicit),
                Err(NotJudged::NoBlocks)
            );
        }
        // Unknown type (no mountinfo): judged on statvfs alone.
        assert_eq!(judge(&half, None, false), Ok(()));
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            NotJudged::ReadOnly {
                fs_type: Some("overlay".into())
            }
            .to_string(),
            "read-only overlay mount"
        );
        assert!(NotJudged::Pseudo {
            fs_type: "devtmpfs".into()
        }
        .to_string()
        .contains("storage.mounts"));
        let j = serde_json::to_value(NotJudged::Image {
            fs_type: "erofs".into(),
        })
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"reason": "image", "fs_type": "erofs"})
        );
    }

    #[test]
    fn paths_resolve_through_their_existing_part() {
        let d = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(d.path()).unwrap();
        let link = real.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(
            resolve_existing(&link.join("not/yet")),
            real.join("not/yet")
        );
        assert_eq!(resolve_existing(&real), real);
        let m = mount_point_by_device(&real).unwrap();
        assert!(
            real.starts_with(&m),
            "{} holds {}",
            m.display(),
            real.display()
        );
        assert!(mount_point_by_device(Path::new("/does/not/exist")).is_err());
    }
}
