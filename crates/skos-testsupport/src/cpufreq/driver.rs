//! A fake cpufreq *driver*: policy directories served from a FUSE
//! filesystem, so that a write is judged the way a real driver judges it.
//!
//! Plain files keep whatever is written to them; a real driver does not. On
//! `acpi-cpufreq` (and every other driver with a frequency table) the CPU
//! only runs at its P-states, listed in `scaling_available_frequencies`, and
//! the limit in force is a P-state. [`CpufreqDriver`] behaves like that:
//!
//! * a write to `scaling_max_freq` or `scaling_min_freq` is parsed like the
//!   kernel parses it (decimal kHz, an optional trailing newline; anything
//!   else is `EINVAL`), clamped to `[cpuinfo_min_freq, cpuinfo_max_freq]`
//!   and rounded down to the driver's frequency list
//!   ([`pstate_at_or_below`]: the highest listed frequency <= the value,
//!   never below the lowest), and it reads back as that accepted value;
//! * `scaling_min_freq` reads back as at most `scaling_max_freq` (the
//!   kernel lowers the minimum in force under a lower maximum, and the
//!   minimum asked for comes back when the maximum is raised again);
//! * `scaling_available_frequencies` lists the table as the kernel prints it
//!   (space-separated kHz in the order given, a trailing space and a
//!   newline: `"800000 1200000 \n"`); [`CpufreqDriver::mount_unlisted`]
//!   leaves it out, like drivers that round without exposing their table;
//! * read-only files (`cpuinfo_*`, `scaling_available_*`, `scaling_cur_freq`,
//!   `scaling_driver`, `affected_cpus`, `related_cpus`) refuse to be opened
//!   for writing with `EACCES`, as sysfs does even for root;
//! * every file has the size sysfs reports (4096) and is read without the
//!   page cache (direct I/O), so a read always sees the driver's value.
//!
//! The filesystem is mounted at `<root>/devices/system/cpu/cpufreq` and
//! unmounted when the [`CpufreqDriver`] is dropped, also while a test
//! panics. `<root>/devices/system/cpu/online` is a plain file beside it.
//!
//! Mounting needs `/dev/fuse` and either root (the `mount(2)` call is made
//! directly) or the setuid `fusermount3` helper (Debian package `fuse3`),
//! which the `fuser` crate falls back to when `mount(2)` is refused.
//! When it cannot mount, [`CpufreqDriver::mount`] says why.
//!
//! ```no_run
//! use skos_testsupport::cpufreq::{read_khz, CpufreqDriver};
//! let dir = tempfile::tempdir().unwrap();
//! let driver = CpufreqDriver::mount(dir.path(), 4, &[800_000, 1_600_000, 2_400_000])
//!     .unwrap_or_else(|reason| panic!("no FUSE here: {reason}"));
//! std::fs::write(
//!     dir.path().join("devices/system/cpu/cpufreq/policy0/scaling_max_freq"),
//!     "2000000",
//! )
//! .unwrap();
//! assert_eq!(read_khz(dir.path(), 0), 1_600_000);
//! drop(driver); // unmounted
//! ```

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo,
    LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

/// The name `scaling_driver` reports.
pub const DRIVER_NAME: &str = "acpi-cpufreq";

/// The governors `scaling_available_governors` lists (the first is the one
/// in force at mount).
pub const GOVERNORS: [&str; 6] = [
    "schedutil",
    "performance",
    "powersave",
    "ondemand",
    "conservative",
    "userspace",
];

/// The frequency a driver with the (ascending) table `freqs` puts in force
/// for `khz`: the highest listed frequency <= `khz`, or the lowest listed
/// one when none is that low. `freqs` must not be empty.
pub fn pstate_at_or_below(freqs: &[u64], khz: u64) -> u64 {
    let lowest = freqs.iter().copied().min().unwrap_or(khz);
    freqs
        .iter()
        .copied()
        .filter(|&f| f <= khz)
        .max()
        .unwrap_or(lowest)
}

/// One write the driver received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverWrite {
    /// The policy written to (`policy<N>`).
    pub policy: usize,
    /// The file name, e.g. `"scaling_max_freq"`.
    pub file: &'static str,
    /// The bytes written, as text.
    pub text: String,
    /// For a frequency file: the value the driver put in force for this
    /// write; `None` for a rejected write or another file.
    pub accepted_khz: Option<u64>,
}

/// A mounted fake cpufreq driver. See the [module docs](self).
#[derive(Debug)]
pub struct CpufreqDriver {
    mountpoint: PathBuf,
    freqs: Vec<u64>,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl CpufreqDriver {
    /// Mounts `policies` policies (`policy0`..) of a driver whose P-states
    /// are `freqs_khz` (any order; `scaling_available_frequencies` prints
    /// them in this order, so pass them highest first to look like
    /// `acpi-cpufreq`) at `<root>/devices/system/cpu/cpufreq`, and writes
    /// `<root>/devices/system/cpu/online`. `cpuinfo_min_freq` and
    /// `cpuinfo_max_freq` are the lowest and highest frequency; every policy
    /// starts with `scaling_max_freq` at the highest and `scaling_min_freq`
    /// at the lowest.
    ///
    /// Returns the reason when FUSE cannot be mounted here. Panics on a
    /// test's mistake: no policy, no frequency, or a frequency of 0.
    pub fn mount(root: &Path, policies: usize, freqs_khz: &[u64]) -> Result<Self, String> {
        Self::mount_with(root, policies, freqs_khz, true)
    }

    /// Like [`CpufreqDriver::mount`], but without
    /// `scaling_available_frequencies`: the driver still rounds every write
    /// to its P-states, and only reading a value back tells what it took.
    pub fn mount_unlisted(root: &Path, policies: usize, freqs_khz: &[u64]) -> Result<Self, String> {
        Self::mount_with(root, policies, freqs_khz, false)
    }

    fn mount_with(
        root: &Path,
        policies: usize,
        freqs_khz: &[u64],
        listed: bool,
    ) -> Result<Self, String> {
        assert!(policies > 0, "a cpufreq driver needs at least one policy");
        assert!(
            !freqs_khz.is_empty() && freqs_khz.iter().all(|&f| f > 0),
            "a cpufreq driver needs frequencies above 0 kHz, got {freqs_khz:?}"
        );
        let mut sorted = freqs_khz.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);

        let dev_fuse = Path::new("/dev/fuse");
        if !dev_fuse.exists() {
            return Err(
                "/dev/fuse does not exist (load the fuse module, or give the container \
                 --device /dev/fuse)"
                    .to_string(),
            );
        }
        let cpu = root.join("devices/system/cpu");
        let mountpoint = cpu.join("cpufreq");
        fs::create_dir_all(&mountpoint)
            .map_err(|e| format!("cannot create {}: {e}", mountpoint.display()))?;
        let online = match policies {
            1 => "0\n".to_string(),
            n => format!("0-{}\n", n - 1),
        };
        fs::write(cpu.join("online"), online)
            .map_err(|e| format!("cannot write {}: {e}", cpu.join("online").display()))?;

        let state = Arc::new(Mutex::new(State {
            policies: vec![
                Policy {
                    max_khz: max,
                    min_khz: min,
                    governor: GOVERNORS[0],
                };
                policies
            ],
            writes: Vec::new(),
        }));
        let fs = DriverFs {
            table: sorted.clone(),
            listed_order: freqs_khz.to_vec(),
            listed,
            state: Arc::clone(&state),
            // SAFETY: geteuid and getegid cannot fail and touch no memory.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            since: SystemTime::now(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("skos-cpufreq".to_string()),
            MountOption::DefaultPermissions,
            MountOption::NoExec,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        let session = fuser::spawn_mount(fs, &mountpoint, &config).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    " (mount(2) was refused and fusermount3 is missing: run as root, or \
                     install Debian's fuse3)"
                }
                std::io::ErrorKind::PermissionDenied => {
                    " (not root, and no usable fusermount3; a container also needs \
                     CAP_SYS_ADMIN)"
                }
                _ => "",
            };
            format!(
                "cannot mount the fake cpufreq driver (FUSE) at {}: {e}{hint}",
                mountpoint.display()
            )
        })?;
        Ok(Self {
            mountpoint,
            freqs: sorted,
            state,
            session: Some(session),
        })
    }

    /// `<root>/devices/system/cpu/cpufreq`, where the driver is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The driver's P-states in kHz, lowest first.
    pub fn frequencies(&self) -> &[u64] {
        &self.freqs
    }

    /// The `scaling_max_freq` in force for `policy`, in kHz.
    pub fn max_khz(&self, policy: usize) -> u64 {
        self.lock().policies[policy].max_khz
    }

    /// The `scaling_min_freq` in force for `policy` (at most its maximum).
    pub fn min_khz(&self, policy: usize) -> u64 {
        let state = self.lock();
        let p = &state.policies[policy];
        p.min_khz.min(p.max_khz)
    }

    /// Every write received so far, oldest first.
    pub fn writes(&self) -> Vec<DriverWrite> {
        self.lock().writes.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for CpufreqDriver {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            // Still busy (a file left open): detach it, so the mount goes
            // away with its last user and the temp dir can be removed.
            eprintln!(
                "fake cpufreq driver: cannot unmount {}: {e}; detaching it",
                self.mountpoint.display()
            );
            if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: `path` is a valid NUL-terminated string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

// --- the filesystem -----------------------------------------------------------

#[derive(Debug, Clone)]
struct Policy {
    /// The accepted `scaling_max_freq`.
    max_khz: u64,
    /// The accepted `scaling_min_freq` request (in force: at most `max_khz`).
    min_khz: u64,
    governor: &'static str,
}

#[derive(Debug)]
struct State {
    policies: Vec<Policy>,
    writes: Vec<DriverWrite>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The files of a policy directory, in the order `readdir` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    AffectedCpus,
    CpuinfoMaxFreq,
    CpuinfoMinFreq,
    CpuinfoTransitionLatency,
    RelatedCpus,
    ScalingAvailableFrequencies,
    ScalingAvailableGovernors,
    ScalingCurFreq,
    ScalingDriver,
    ScalingGovernor,
    ScalingMaxFreq,
    ScalingMinFreq,
}

const ATTRS: [Attr; 12] = [
    Attr::AffectedCpus,
    Attr::CpuinfoMaxFreq,
    Attr::CpuinfoMinFreq,
    Attr::CpuinfoTransitionLatency,
    Attr::RelatedCpus,
    Attr::ScalingAvailableFrequencies,
    Attr::ScalingAvailableGovernors,
    Attr::ScalingCurFreq,
    Attr::ScalingDriver,
    Attr::ScalingGovernor,
    Attr::ScalingMaxFreq,
    Attr::ScalingMinFreq,
];

impl Attr {
    fn name(self) -> &'static str {
        match self {
            Attr::AffectedCpus => "affected_cpus",
            Attr::CpuinfoMaxFreq => "cpuinfo_max_freq",
            Attr::CpuinfoMinFreq => "cpuinfo_min_freq",
            Attr::CpuinfoTransitionLatency => "cpuinfo_transition_latency",
            Attr::RelatedCpus => "related_cpus",
            Attr::ScalingAvailableFrequencies => "scaling_available_frequencies",
            Attr::ScalingAvailableGovernors => "scaling_available_governors",
            Attr::ScalingCurFreq => "scaling_cur_freq",
            Attr::ScalingDriver => "scaling_driver",
            Attr::ScalingGovernor => "scaling_governor",
            Attr::ScalingMaxFreq => "scaling_max_freq",
            Attr::ScalingMinFreq => "scaling_min_freq",
        }
    }

    fn writable(self) -> bool {
        matches!(
            self,
            Attr::ScalingGovernor | Attr::ScalingMaxFreq | Attr::ScalingMinFreq
        )
    }
}

/// Inode 1 is the mountpoint; policy `p` is `2 + p * STRIDE`, its files
/// follow it (`+ 1 + index in ATTRS`).
const STRIDE: u64 = 32;
const TTL: Duration = Duration::from_secs(1);
/// What sysfs reports as the size of every attribute file.
const SYSFS_SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    Policy(usize),
    File(usize, Attr),
}

struct DriverFs {
    /// Ascending, no duplicates.
    table: Vec<u64>,
    /// As given, for `scaling_available_frequencies`.
    listed_order: Vec<u64>,
    listed: bool,
    state: Arc<Mutex<State>>,
    uid: u32,
    gid: u32,
    since: SystemTime,
}

impl DriverFs {
    fn policies(&self) -> usize {
        lock(&self.state).policies.len()
    }

    fn attrs(&self) -> impl Iterator<Item = Attr> + '_ {
        ATTRS
            .into_iter()
            .filter(|a| self.listed || *a != Attr::ScalingAvailableFrequencies)
    }

    fn ino(node: Node) -> INodeNo {
        match node {
            Node::Root => INodeNo(1),
            Node::Policy(p) => INodeNo(2 + p as u64 * STRIDE),
            Node::File(p, attr) => {
                let index = ATTRS.iter().position(|a| *a == attr).unwrap_or(0) as u64;
                INodeNo(2 + p as u64 * STRIDE + 1 + index)
            }
        }
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        let ino = u64::from(ino);
        if ino == 1 {
            return Some(Node::Root);
        }
        let rel = ino.checked_sub(2)?;
        let p = usize::try_from(rel / STRIDE).ok()?;
        if p >= self.policies() {
            return None;
        }
        match rel % STRIDE {
            0 => Some(Node::Policy(p)),
            n => {
                let attr = *ATTRS.get(usize::try_from(n - 1).ok()?)?;
                self.attrs()
                    .any(|a| a == attr)
                    .then_some(Node::File(p, attr))
            }
        }
    }

    fn attr(&self, node: Node) -> FileAttr {
        let (kind, perm, size, nlink) = match node {
            Node::Root | Node::Policy(_) => (FileType::Directory, 0o755, 0, 2),
            Node::File(_, attr) => {
                let perm = if attr.writable() { 0o644 } else { 0o444 };
                (FileType::RegularFile, perm, SYSFS_SIZE, 1)
            }
        };
        FileAttr {
            ino: Self::ino(node),
            size,
            blocks: 0,
            atime: self.since,
            mtime: self.since,
            ctime: self.since,
            crtime: self.since,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn content(&self, policy: usize, attr: Attr) -> String {
        let state = lock(&self.state);
        let p = &state.policies[policy];
        let (min, max) = (self.table[0], self.table[self.table.len() - 1]);
        match attr {
            Attr::AffectedCpus | Attr::RelatedCpus => format!("{policy}\n"),
            Attr::CpuinfoMaxFreq => format!("{max}\n"),
            Attr::CpuinfoMinFreq => format!("{min}\n"),
            Attr::CpuinfoTransitionLatency => "10000\n".to_string(),
            Attr::ScalingAvailableFrequencies => {
                let mut text: String = self.listed_order.iter().map(|f| format!("{f} ")).collect();
                text.push('\n');
                text
            }
            Attr::ScalingAvailableGovernors => {
                let mut text: String = GOVERNORS.iter().map(|g| format!("{g} ")).collect();
                text.push('\n');
                text
            }
            // Flat out under load: the highest frequency the limits allow.
            Attr::ScalingCurFreq | Attr::ScalingMaxFreq => format!("{}\n", p.max_khz),
            Attr::ScalingDriver => format!("{DRIVER_NAME}\n"),
            Attr::ScalingGovernor => format!("{}\n", p.governor),
            Attr::ScalingMinFreq => format!("{}\n", p.min_khz.min(p.max_khz)),
        }
    }

    /// A store, as the kernel's `store_scaling_max_freq` & co. take it.
    fn store(&self, policy: usize, attr: Attr, data: &[u8]) -> Result<(), Errno> {
        let text = String::from_utf8_lossy(data).into_owned();
        let value = text.strip_suffix('\n').unwrap_or(&text);
        let mut state = lock(&self.state);
        let result = match attr {
            Attr::ScalingMaxFreq | Attr::ScalingMinFreq => match value.parse::<u64>() {
                Ok(khz) => {
                    let (min, max) = (self.table[0], self.table[self.table.len() - 1]);
                    let accepted = pstate_at_or_below(&self.table, khz.clamp(min, max));
                    let p = &mut state.policies[policy];
                    if attr == Attr::ScalingMaxFreq {
                        p.max_khz = accepted;
                    } else {
                        p.min_khz = accepted;
                    }
                    Ok(Some(accepted))
                }
                Err(_) => Err(Errno::EINVAL),
            },
            Attr::ScalingGovernor => match GOVERNORS.iter().find(|g| **g == value) {
                Some(g) => {
                    state.policies[policy].governor = g;
                    Ok(None)
                }
                None => Err(Errno::EINVAL),
            },
            _ => Err(Errno::EACCES),
        };
        state.writes.push(DriverWrite {
            policy,
            file: attr.name(),
            text,
            accepted_khz: result.ok().flatten(),
        });
        result.map(|_| ())
    }
}

impl Filesystem for DriverFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let found = match self.node(parent) {
            Some(Node::Root) => name
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&p| p < self.policies() && name == format!("policy{p}"))
                .map(Node::Policy),
            Some(Node::Policy(p)) => self
                .attrs()
                .find(|a| a.name() == name)
                .map(|a| Node::File(p, a)),
            Some(Node::File(..)) => return reply.error(Errno::ENOTDIR),
            None => None,
        };
        match found {
            Some(node) => reply.entry(&TTL, &self.attr(node), fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(node) => reply.attr(&TTL, &self.attr(node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Truncation (`O_TRUNC`) and the like are ignored, as sysfs does.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.node(ino) {
            Some(node) => reply.attr(&TTL, &self.attr(node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Some(Node::File(_, attr)) => {
                let writes = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
                if writes && !attr.writable() {
                    return reply.error(Errno::EACCES);
                }
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(Node::File(p, attr)) = self.node(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let text = self.content(p, attr);
        let bytes = text.as_bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        reply.data(&bytes[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(Node::File(p, attr)) = self.node(ino) else {
            return reply.error(Errno::EISDIR);
        };
        match self.store(p, attr, data) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries: Vec<(INodeNo, FileType, String)> = Vec::new();
        match self.node(ino) {
            Some(Node::Root) => {
                entries.push((INodeNo(1), FileType::Directory, ".".into()));
                entries.push((INodeNo(1), FileType::Directory, "..".into()));
                for p in 0..self.policies() {
                    entries.push((
                        Self::ino(Node::Policy(p)),
                        FileType::Directory,
                        format!("policy{p}"),
                    ));
                }
            }
            Some(Node::Policy(p)) => {
                let dir = Self::ino(Node::Policy(p));
                entries.push((dir, FileType::Directory, ".".into()));
                entries.push((INodeNo(1), FileType::Directory, "..".into()));
                for attr in self.attrs() {
                    entries.push((
                        Self::ino(Node::File(p, attr)),
                        FileType::RegularFile,
                        attr.name().into(),
                    ));
                }
            }
            Some(Node::File(..)) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::ENOENT),
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pstates_round_down_never_below_the_lowest() {
        let table = [800_000, 1_200_000, 1_600_000, 2_000_000];
        assert_eq!(pstate_at_or_below(&table, 1_800_000), 1_600_000);
        assert_eq!(pstate_at_or_below(&table, 1_600_000), 1_600_000);
        assert_eq!(pstate_at_or_below(&table, 5_000_000), 2_000_000);
        assert_eq!(pstate_at_or_below(&table, 100), 800_000);
        assert_eq!(
            pstate_at_or_below(&[2_000_000, 800_000], 1_000_000),
            800_000
        );
    }

    const FREQS: [u64; 8] = [
        800_000, 1_200_000, 1_600_000, 2_000_000, 2_400_000, 2_800_000, 3_200_000, 3_600_000,
    ];

    fn mount(root: &Path, policies: usize, freqs: &[u64]) -> Option<CpufreqDriver> {
        crate::require::require(
            &crate::require::test_name(module_path!()),
            "a FUSE mount",
            CpufreqDriver::mount(root, policies, freqs),
        )
    }

    fn policy_file(root: &Path, p: usize, name: &str) -> PathBuf {
        root.join(format!("devices/system/cpu/cpufreq/policy{p}/{name}"))
    }

    fn read(root: &Path, p: usize, name: &str) -> String {
        fs::read_to_string(policy_file(root, p, name)).unwrap()
    }

    fn write(root: &Path, p: usize, name: &str, text: &str) -> std::io::Result<()> {
        fs::write(policy_file(root, p, name), text)
    }

    fn is_mounted(path: &Path) -> bool {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = path.to_str().unwrap();
        mounts.lines().any(|l| l.split(' ').nth(4) == Some(path))
    }

    #[test]
    fn looks_like_acpi_cpufreq() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let descending: Vec<u64> = FREQS.iter().rev().copied().collect();
        let Some(driver) = mount(root, 2, &descending) else {
            return;
        };
        let mut policies: Vec<String> = fs::read_dir(driver.mountpoint())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        policies.sort();
        assert_eq!(policies, ["policy0", "policy1"]);
        let files: Vec<String> = fs::read_dir(policy_file(root, 1, ""))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), ATTRS.len(), "{files:?}");
        assert_eq!(read(root, 0, "cpuinfo_min_freq"), "800000\n");
        assert_eq!(read(root, 0, "cpuinfo_max_freq"), "3600000\n");
        assert_eq!(read(root, 0, "scaling_max_freq"), "3600000\n");
        assert_eq!(read(root, 0, "scaling_min_freq"), "800000\n");
        assert_eq!(read(root, 1, "related_cpus"), "1\n");
        assert_eq!(read(root, 0, "scaling_driver"), "acpi-cpufreq\n");
        assert_eq!(
            read(root, 0, "scaling_available_frequencies"),
            "3600000 3200000 2800000 2400000 2000000 1600000 1200000 800000 \n"
        );
        let meta = fs::metadata(policy_file(root, 0, "scaling_max_freq")).unwrap();
        assert_eq!(meta.len(), 4096);
        assert_eq!(
            fs::read_to_string(root.join("devices/system/cpu/online")).unwrap(),
            "0-1\n"
        );
        assert!(!policy_file(root, 2, "").exists());
        assert!(!policy_file(root, 0, "scaling_setspeed").exists());
    }

    #[test]
    fn writes_are_clamped_and_rounded_to_pstates() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let Some(driver) = mount(root, 2, &FREQS) else {
            return;
        };
        write(root, 0, "scaling_max_freq", "1800000").unwrap();
        assert_eq!(read(root, 0, "scaling_max_freq"), "1600000\n");
        assert_eq!(read(root, 0, "scaling_cur_freq"), "1600000\n");
        assert_eq!(read(root, 1, "scaling_max_freq"), "3600000\n");
        write(root, 1, "scaling_max_freq", "2400000\n").unwrap();
        assert_eq!(driver.max_khz(1), 2_400_000);
        write(root, 0, "scaling_max_freq", "100").unwrap();
        assert_eq!(read(root, 0, "scaling_max_freq"), "800000\n");
        write(root, 0, "scaling_max_freq", "9000000").unwrap();
        assert_eq!(read(root, 0, "scaling_max_freq"), "3600000\n");

        // The minimum in force never exceeds the maximum; the request
        // returns when the maximum is raised again.
        write(root, 0, "scaling_min_freq", "2100000").unwrap();
        assert_eq!(read(root, 0, "scaling_min_freq"), "2000000\n");
        write(root, 0, "scaling_max_freq", "1300000").unwrap();
        assert_eq!(read(root, 0, "scaling_min_freq"), "1200000\n");
        assert_eq!(driver.min_khz(0), 1_200_000);
        write(root, 0, "scaling_max_freq", "3600000").unwrap();
        assert_eq!(read(root, 0, "scaling_min_freq"), "2000000\n");

        // What the kernel refuses.
        let e = write(root, 0, "scaling_max_freq", "fast").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let e = write(root, 0, "scaling_max_freq", "-1").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let e = write(root, 0, "cpuinfo_max_freq", "100").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let e = write(root, 0, "scaling_governor", "turbo").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        write(root, 0, "scaling_governor", "powersave").unwrap();
        assert_eq!(read(root, 0, "scaling_governor"), "powersave\n");
        assert_eq!(read(root, 0, "cpuinfo_max_freq"), "3600000\n");

        let writes = driver.writes();
        assert_eq!(
            writes[0],
            DriverWrite {
                policy: 0,
                file: "scaling_max_freq",
                text: "1800000".to_string(),
                accepted_khz: Some(1_600_000),
            }
        );
        assert!(writes
            .iter()
            .any(|w| w.text == "fast" && w.accepted_khz.is_none()));
    }

    #[test]
    fn unlisted_driver_hides_its_table_but_still_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let _driver = crate::require!(
            "a FUSE mount",
            CpufreqDriver::mount_unlisted(root, 1, &FREQS)
        );
        assert!(!policy_file(root, 0, "scaling_available_frequencies").exists());
        write(root, 0, "scaling_max_freq", "3000000").unwrap();
        assert_eq!(read(root, 0, "scaling_max_freq"), "2800000\n");
    }

    #[test]
    fn unmounted_on_drop_and_on_panic() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let Some(driver) = mount(&root, 1, &FREQS) else {
            return;
        };
        let mountpoint = driver.mountpoint().canonicalize().unwrap();
        assert!(is_mounted(&mountpoint));
        drop(driver);
        assert!(!is_mounted(&mountpoint));

        let inner = root.clone();
        let panicked = std::panic::catch_unwind(move || {
            let _driver = CpufreqDriver::mount(&inner, 1, &FREQS).unwrap();
            panic!("a test fails while the driver is mounted");
        });
        assert!(panicked.is_err());
        assert!(!is_mounted(&mountpoint));
        // The temp dir can go: nothing is left mounted in it.
        dir.close().unwrap();
    }
}
