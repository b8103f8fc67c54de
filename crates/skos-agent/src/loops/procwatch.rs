//! Process trees from `/proc`, under the configured `proc_root`.
//!
//! [`ProcWatch::scan`] reads every `<proc_root>/<pid>/stat`, `cmdline` and,
//! when a group selects by them ([`Needs`]), `cgroup`, the `Uid:` line of
//! `status` and the `exe` link into [`ProcInfo`]s; the parsers are pure
//! functions over text. A process that exits during the scan is skipped;
//! a field that cannot be read stays unknown, and an unknown field selects
//! nothing.
//!
//! [`Trust`] says whether a cgroup or an executable may be believed: owned
//! by root or by the agent's own user, and neither it nor a directory above
//! it writable by anyone else. Only the owner of a cgroup can move a
//! process into it; only whoever can write an executable (or its
//! directory) can put other code behind its name.
//!
//! [`ProcWatch::signal`] sends a signal only when `proc_root` is this
//! machine's live procfs (its `self` link names the agent's own pid), never
//! to pid 1, kernel threads, the agent or its ancestors, and only to the
//! process that was observed: the pid is opened as a pidfd, its start time
//! compared with the one observed, and the signal sent through the pidfd,
//! so a pid reused in between is never hit.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use skos_core::chain::tree::{CgroupPath, Exe, ExeMatch, ProcId, ProcInfo, Sig};
use skos_core::escape::{Escaped, ShowPath};

use crate::{Error, Result};

/// Longest command line kept, in bytes.
const MAX_CMDLINE: usize = 4096;

/// The fields of `/proc/<pid>/stat` the loop breaker needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    /// Start time in clock ticks after boot (field 22).
    pub start: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so the fields after it
/// are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    Some(Stat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/cmdline`: NUL-separated arguments, each shown as
/// [`Escaped`] does (control characters and bytes that are not UTF-8
/// escaped), joined by single spaces.
pub fn parse_cmdline(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_CMDLINE)];
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| Escaped::bytes(a).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The real and effective uid from `/proc/<pid>/status` (`Uid:` line:
/// real, effective, saved, filesystem).
pub fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut f = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((f.next()??, f.next()??))
}

/// Which optional fields a scan reads (only what some group selects by).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub cgroups: bool,
    pub uids: bool,
    pub exe: bool,
}

impl Needs {
    /// Both scans' needs.
    pub fn or(self, o: Needs) -> Needs {
        Needs {
            cgroups: self.cgroups || o.cgroups,
            uids: self.uids || o.uids,
            exe: self.exe || o.exe,
        }
    }
}

/// Why a cgroup or an executable is not believed: the path at fault and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {why}", .path.escaped())]
pub struct Doubt {
    /// The file, directory, symlink or cgroup (as `/proc` names it).
    pub path: PathBuf,
    pub why: DoubtKind,
}

/// What is wrong with a [`Doubt`]'s path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoubtKind {
    #[error("owned by uid {0}, neither root nor the agent's user")]
    Owner(u32),
    #[error("a symlink owned by uid {0}")]
    SymlinkOwner(u32),
    #[error("a symlink (not followed)")]
    Symlink,
    #[error("writable by group or others (mode {0:o})")]
    Writable(u32),
    #[error("not a file")]
    NotAFile,
    #[error("not a plain cgroup path")]
    NotPlain,
    #[error("no such cgroup")]
    NoCgroup,
    #[error("{0}")]
    Io(String),
}

fn doubt(path: &Path, why: DoubtKind) -> Doubt {
    Doubt {
        path: path.to_path_buf(),
        why,
    }
}

fn io_doubt(path: &Path, e: std::io::Error) -> Doubt {
    doubt(path, DoubtKind::Io(e.to_string()))
}

/// Who may be believed about a cgroup or an executable: root and the
/// agent's own user. A file or directory is trusted when its owner is one
/// of them and it is not writable by group or others; a path when it and
/// every directory above it are.
#[derive(Debug, Clone)]
pub struct Trust {
    agent_uid: u32,
}

impl Default for Trust {
    fn default() -> Self {
        Self::new()
    }
}

impl Trust {
    /// Root and the user this process runs as.
    pub fn new() -> Self {
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        let agent_uid = unsafe { libc::geteuid() };
        Trust { agent_uid }
    }

    fn owner_ok(&self, meta: &std::fs::Metadata) -> bool {
        meta.uid() == 0 || meta.uid() == self.agent_uid
    }

    /// What is wrong with `meta` (of `path`), if anything.
    fn check(&self, path: &Path, meta: &std::fs::Metadata) -> Result<(), Doubt> {
        if meta.file_type().is_symlink() {
            return Err(doubt(path, DoubtKind::Symlink));
        }
        if !self.owner_ok(meta) {
            return Err(doubt(path, DoubtKind::Owner(meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(doubt(path, DoubtKind::Writable(meta.mode() & 0o7777)));
        }
        Ok(())
    }

    /// Whether `path` and every directory above it are trusted. A
    /// directory above it may be writable by others when it is sticky
    /// (`/tmp`): there only an entry's owner may rename or remove it. A
    /// symlink on the way (`/bin` → `usr/bin`) needs a trusted owner only:
    /// it cannot be changed in place, and replacing it needs its
    /// directory, which is checked next.
    pub fn path(&self, path: &Path) -> Result<(), Doubt> {
        let mut cur = Some(path);
        while let Some(p) = cur {
            let m = std::fs::symlink_metadata(p).map_err(|e| io_doubt(p, e))?;
            if m.file_type().is_symlink() {
                if !self.owner_ok(&m) {
                    return Err(doubt(p, DoubtKind::SymlinkOwner(m.uid())));
                }
            } else if let Err(d) = self.check(p, &m) {
                let sticky_above = p != path && m.is_dir() && m.mode() & 0o1000 != 0;
                if !(sticky_above && self.owner_ok(&m)) {
                    return Err(d);
                }
            }
            cur = p.parent().filter(|q| !q.as_os_str().is_empty());
        }
        Ok(())
    }

    /// Where a hierarchy is mounted under `cgroup_root` (`/sys/fs/cgroup`):
    /// the unified one at the root itself (cgroup v2) or at `unified`
    /// (hybrid), whichever has `cgroup.controllers`; a v1 one at its
    /// controllers' name (`cpu,cpuacct`, `systemd` for `name=systemd`),
    /// through the symlink a distribution may put there (`cpu` →
    /// `cpu,cpuacct`).
    fn hierarchy_dir(cgroup_root: &Path, hierarchy: &str) -> Option<PathBuf> {
        if hierarchy.is_empty() {
            return [cgroup_root.to_path_buf(), cgroup_root.join("unified")]
                .into_iter()
                .find(|d| d.join("cgroup.controllers").exists());
        }
        let name = hierarchy.strip_prefix("name=").unwrap_or(hierarchy);
        let plain = !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
            && !name.contains('/');
        if !plain {
            return None;
        }
        let dir = cgroup_root.join(name);
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        dir.is_dir().then_some(dir)
    }

    /// Whether a cgroup (`/system.slice/worker.service` in a hierarchy, as
    /// `/proc/<pid>/cgroup` says it) under `cgroup_root` (`/sys/fs/cgroup`)
    /// may be believed: in the hierarchy it was found in, its
    /// `cgroup.procs` (who may move processes in), itself and the cgroups
    /// above it up to the hierarchy's root trusted.
    pub fn cgroup(&self, cgroup_root: &Path, cg: &CgroupPath) -> Result<(), Doubt> {
        let named = || PathBuf::from(cg.to_string());
        let rel = Path::new(cg.path.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(doubt(&named(), DoubtKind::NotPlain));
        }
        let dir = Self::hierarchy_dir(cgroup_root, &cg.hierarchy)
            .filter(|base| base.join(rel).join("cgroup.procs").exists())
            .ok_or_else(|| doubt(&named(), DoubtKind::NoCgroup))?;
        let procs = dir.join(rel).join("cgroup.procs");
        let meta = std::fs::symlink_metadata(&procs).map_err(|e| io_doubt(&procs, e))?;
        self.check(&procs, &meta)?;
        let mut cur = Some(dir.join(rel));
        while let Some(p) = cur {
            let meta = std::fs::symlink_metadata(&p).map_err(|e| io_doubt(&p, e))?;
            self.check(&p, &meta)?;
            if p == dir {
                break;
            }
            cur = p.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    /// The file `configured` names (symlinks resolved), when the path as
    /// configured, the file it resolves to and every directory above
    /// either are trusted.
    pub fn exe(&self, configured: &Path) -> Result<ExeMatch, Doubt> {
        // The configured path as written (a symlink others could re-point
        // would choose the file), then the file it leads to.
        self.path(configured)?;
        let real = std::fs::canonicalize(configured).map_err(|e| io_doubt(configured, e))?;
        let meta = std::fs::metadata(&real).map_err(|e| io_doubt(&real, e))?;
        if !meta.is_file() {
            return Err(doubt(&real, DoubtKind::NotAFile));
        }
        self.path(&real)?;
        Ok(ExeMatch {
            configured: configured.to_path_buf(),
            file: Some(Exe {
                path: real,
                dev: meta.dev(),
                ino: meta.ino(),
            }),
        })
    }
}

/// `/proc/<pid>/cgroup`: the path of every hierarchy (`0::/x.slice/y`),
/// the unified (v2) one first.
pub fn parse_cgroup(text: &str) -> Vec<CgroupPath> {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let cg = CgroupPath {
            hierarchy: ctrl.to_string(),
            path: path.to_string(),
        };
        if id == "0" && ctrl.is_empty() {
            v2.push(cg);
        } else {
            v1.push(cg);
        }
    }
    v2.extend(v1);
    v2
}

#[derive(Debug, Clone)]
pub struct ProcWatch {
    root: PathBuf,
    live: bool,
    self_pid: u32,
}

impl ProcWatch {
    pub fn new(root: &Path) -> Self {
        let self_pid = std::process::id();
        let live = std::fs::read_link(root.join("self"))
            .ok()
            .and_then(|t| t.to_str().and_then(|s| s.parse::<u32>().ok()))
            == Some(self_pid);
        Self {
            root: root.to_path_buf(),
            live,
            self_pid,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `proc_root` is this machine's procfs, so signals may be sent.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Every process, skipping those that vanish while being read.
    pub fn scan(&self, needs: Needs) -> Result<Vec<ProcInfo>> {
        let dir = std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(p) = self.read_one(pid, needs) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// One process (the fields `needs` names); `None` when it is gone or
    /// its `stat` cannot be read.
    pub fn read_one(&self, pid: u32, needs: Needs) -> Option<ProcInfo> {
        let dir = self.root.join(pid.to_string());
        let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|b| parse_cmdline(&b))
            .unwrap_or_default();
        let uids = needs
            .uids
            .then(|| std::fs::read_to_string(dir.join("status")).ok())
            .flatten()
            .and_then(|t| parse_uids(&t));
        let exe = if needs.exe {
            let link = dir.join("exe");
            match (std::fs::read_link(&link), std::fs::metadata(&link)) {
                (Ok(path), Ok(m)) => Some(Exe {
                    path,
                    dev: m.dev(),
                    ino: m.ino(),
                }),
                _ => None,
            }
        } else {
            None
        };
        let cgroups = if needs.cgroups {
            std::fs::read_to_string(dir.join("cgroup"))
                .map(|t| parse_cgroup(&t))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Some(ProcInfo {
            id: ProcId {
                pid: stat.pid,
                start: stat.start,
            },
            ppid: stat.ppid,
            state: stat.state,
            cmdline,
            cgroups,
            uids,
            exe,
        })
    }

    /// Processes never touched: pid 1, kernel threads (kthreadd and its
    /// children), the agent and its ancestors.
    pub fn protected(&self, procs: &[ProcInfo]) -> HashSet<u32> {
        let mut out: HashSet<u32> = HashSet::from([0, 1, 2, self.self_pid]);
        out.extend(procs.iter().filter(|p| p.ppid == 2).map(|p| p.id.pid));
        let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.id.pid, p.ppid)).collect();
        let mut cur = parent.get(&self.self_pid).copied();
        while let Some(pid) = cur {
            if !out.insert(pid) {
                break;
            }
            cur = parent.get(&pid).copied();
        }
        out
    }

    /// Send `sig` to exactly the process `id` names.
    pub fn signal(&self, id: ProcId, sig: Sig, protected: &HashSet<u32>) -> Result<()> {
        let what = || format!("pid {} ({})", id.pid, sig.as_str());
        let refuse = |reason: &str| Error::Device {
            what: what(),
            reason: reason.to_string(),
        };
        if !self.live {
            return Err(refuse(&format!(
                "{} is not this machine's procfs; no signal is sent",
                self.root.escaped()
            )));
        }
        if id.pid <= 1 || protected.contains(&id.pid) {
            return Err(refuse("protected process"));
        }
        let pid = libc::pid_t::try_from(id.pid).map_err(|_| refuse("pid out of range"))?;
        let signo = match sig {
            Sig::Stop => libc::SIGSTOP,
            Sig::Cont => libc::SIGCONT,
            Sig::Term => libc::SIGTERM,
            Sig::Kill => libc::SIGKILL,
        };
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd
        // or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = (fd >= 0).then_some(fd as libc::c_int);
        let same = std::fs::read_to_string(self.root.join(id.pid.to_string()).join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
            .is_some_and(|s| s.start == id.start && s.state != 'Z');
        let rc = if !same {
            Err(refuse("the process is gone"))
        } else {
            let rc = match fd {
                // SAFETY: `fd` is the pidfd opened above; a null siginfo
                // and flags 0 are what pidfd_send_signal(2) documents for
                // a plain kill.
                Some(fd) => unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd,
                        signo,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                },
                // Kernels before 5.3: the start time was checked just now.
                // SAFETY: kill(2) with a positive pid and a valid signal.
                None => libc::c_long::from(unsafe { libc::kill(pid, signo) }),
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(Error::Device {
                    what: what(),
                    reason: std::io::Error::last_os_error().to_string(),
                })
            }
        };
        if let Some(fd) = fd {
            // SAFETY: closing the pidfd this function opened.
            unsafe {
                libc::close(fd);
            }
        }
        rc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_names() {
        let text = "4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!((s.pid, s.state, s.ppid, s.start), (4242, 'S', 17, 987654));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn cmdline_and_cgroup() {
        assert_eq!(
            parse_cmdline(b"sh\0/tmp/fork.sh\x003\0"),
            "sh /tmp/fork.sh 3"
        );
        assert_eq!(parse_cmdline(b""), "");
        // Control characters and bytes that are not UTF-8 are escaped, so
        // nothing is lost and a command line stays on one line.
        assert_eq!(
            parse_cmdline(b"worker\0--name\0a\nb\xff\0"),
            "worker --name a\\nb\\xff"
        );
        let cg = parse_cgroup("12:pids:/user.slice\n0::/system.slice/worker.service\n");
        assert_eq!(
            cg,
            [
                CgroupPath::v2("/system.slice/worker.service"),
                CgroupPath {
                    hierarchy: "pids".into(),
                    path: "/user.slice".into()
                }
            ]
        );
    }

    #[test]
    fn uids_are_real_and_effective() {
        let status = "Name:\tsu\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_uids(status), Some((1000, 0)));
        assert_eq!(parse_uids("Uid:\t0\t0\t0\t0\n"), Some((0, 0)));
        assert_eq!(parse_uids("Uid:\tx\t0\n"), None);
        assert_eq!(parse_uids("Name:\tx\n"), None);
    }

    #[test]
    fn a_fake_root_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let w = ProcWatch::new(dir.path());
        assert!(!w.is_live());
        let err = w
            .signal(
                ProcId {
                    pid: std::process::id(),
                    start: 0,
                },
                Sig::Term,
                &HashSet::new(),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("not this machine's procfs"),
            "{err}"
        );
    }

    #[test]
    fn the_real_proc_sees_this_process_and_protects_it() {
        skos_testsupport::require!(
            "the machine's own /proc",
            skos_testsupport::require::live_procfs()
        );
        let w = ProcWatch::new(Path::new("/proc"));
        assert!(w.is_live(), "ProcWatch must see the live /proc");
        let procs = w
            .scan(Needs {
                cgroups: true,
                uids: true,
                exe: true,
            })
            .unwrap();
        let me = procs
            .iter()
            .find(|p| p.id.pid == std::process::id())
            .expect("own process in the scan");
        // SAFETY: getuid(2) and geteuid(2) take nothing and cannot fail.
        let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
        assert_eq!(me.uids, Some((uid, euid)));
        let exe = me.exe.as_ref().expect("own executable");
        assert_eq!(exe.path, std::env::current_exe().unwrap());
        let protected = w.protected(&procs);
        assert!(protected.contains(&me.id.pid));
        assert!(protected.contains(&me.ppid));
        let err = w.signal(me.id, Sig::Cont, &protected).unwrap_err();
        assert!(err.to_string().contains("protected"), "{err}");
    }
}
