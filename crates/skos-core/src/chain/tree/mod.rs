//! Uncooperative chains: process groups, judged from `/proc` snapshots.
//!
//! The agent reads every process (pid, parent, start time, state, command
//! line, and where a group needs them its uids, executable and cgroup)
//! into [`ProcInfo`]s; [`observe`] finds a group's members, the trees they
//! root, their depth and descendant count; [`GroupTracker`] turns
//! successive observations into trips (depth, descendants, crash loop: too
//! many new roots within a window) and, once a `circuit_break` or
//! `reset_chain` command arrives, into the signals to send. The agent
//! sends them.
//!
//! Membership rests on what a process cannot choose for itself
//! ([`Selector`]): its real and effective uid, its executable (path and
//! the file's device and inode), or its cgroup when that cgroup is
//! trusted (owned by root or by the agent's user, not writable by others:
//! only its owner can move processes into it). A command-line pattern,
//! which any process can set to anything, only narrows a group that one
//! of those already selects; a selector without one matches nothing.
//!
//! A process is named by [`ProcId`] (pid and start time), so a reused pid
//! is never mistaken for the process that had it before.
//!
//! Evidence ([`ProcSummary`]) names a process by its program only
//! ([`program_name`]): command lines carry secrets (tokens, passwords,
//! customer data) and go into the audit trail, status and state only when
//! `loop.record_command_lines` asks for them.
//!
//! This file is the snapshot side ([`observe`]); `tracker.rs` is
//! [`GroupTracker`].

mod tracker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use serde::Serialize;

use crate::config::ProcessGroup;

pub use tracker::{GroupChange, GroupState, GroupStep, GroupTracker, GroupTrip, GroupView, Sig};

/// Longest command line kept in evidence, in characters.
const EVIDENCE_CMDLINE: usize = 160;
/// Most processes listed in a trip's evidence.
const EVIDENCE_PROCS: usize = 16;
/// Programs whose first non-option argument is the program that runs (a
/// script): evidence shows `sh fork.sh`, not just `sh`.
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "busybox", "python", "python2", "python3", "perl", "ruby",
    "node", "php", "lua", "tclsh",
];

/// A process, identified across pid reuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProcId {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// A process's executable as `/proc/<pid>/exe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exe {
    /// Where the link points (` (deleted)` when the file was replaced).
    pub path: PathBuf,
    /// The file's device and inode.
    pub dev: u64,
    pub ino: u64,
}

/// One process as read from `/proc`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcInfo {
    pub id: ProcId,
    pub ppid: u32,
    /// `R`, `S`, `D`, `T`, `Z`…
    pub state: char,
    /// Arguments joined by single spaces, each shown as
    /// [`crate::escape::Escaped`] does (empty for kernel threads).
    pub cmdline: String,
    /// Its cgroup in each hierarchy (`/proc/<pid>/cgroup`), the unified
    /// (v2) one first.
    pub cgroups: Vec<CgroupPath>,
    /// Real and effective uid (`/proc/<pid>/status`); `None` when not read.
    pub uids: Option<(u32, u32)>,
    /// The executable; `None` when not read (not asked for, or the agent
    /// may not see it).
    pub exe: Option<Exe>,
}

/// A process's cgroup in one hierarchy: one line of `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupPath {
    /// `""` for the unified (v2) hierarchy, else the v1 hierarchy's
    /// controllers (`cpu,cpuacct`, `name=systemd`).
    pub hierarchy: String,
    /// `/system.slice/worker.service`.
    pub path: String,
}

impl CgroupPath {
    /// A path in the unified (v2) hierarchy.
    pub fn v2(path: impl Into<String>) -> Self {
        CgroupPath {
            hierarchy: String::new(),
            path: path.into(),
        }
    }

    /// The same hierarchy, another path.
    pub fn with_path(&self, path: impl Into<String>) -> Self {
        CgroupPath {
            hierarchy: self.hierarchy.clone(),
            path: path.into(),
        }
    }
}

impl std::fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::escape::Escaped;
        if self.hierarchy.is_empty() {
            write!(f, "{}", Escaped::text(&self.path))
        } else {
            write!(
                f,
                "{}:{}",
                Escaped::text(&self.hierarchy),
                Escaped::text(&self.path)
            )
        }
    }
}

/// The executable a group's members run: the configured path resolved to
/// the file it names, checked by the agent before each scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExeMatch {
    /// As configured.
    pub configured: PathBuf,
    /// The file it resolves to, with its device and inode; `None` (no
    /// member) until the agent has resolved it, or when it cannot be
    /// trusted.
    pub file: Option<Exe>,
}

/// Which cgroup a group's members are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMatch {
    /// A systemd unit: a whole component of the cgroup path.
    Unit(String),
    /// A cgroup path (`/work.slice/jobs`) and everything below it.
    Path(String),
}

/// Which processes belong to a group: every condition given must hold. At
/// least one of `uid`, `exe` and `cgroup` is needed; `command` only
/// narrows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// Glob over the command line (as [`ProcInfo::cmdline`] shows it).
    pub command: Option<String>,
    /// Real and effective uid, both.
    pub uid: Option<u32>,
    pub exe: Option<ExeMatch>,
    pub cgroup: Option<CgroupMatch>,
    /// Evidence carries whole command lines (`loop.record_command_lines`).
    pub command_lines: bool,
}

impl Selector {
    /// The selector of a configured group; `None` when nothing in it is
    /// beyond a process's own choosing (a command pattern alone, or
    /// nothing at all): such a group has no members.
    pub fn of(g: &ProcessGroup) -> Option<Selector> {
        let cgroup = match (&g.unit, &g.cgroup) {
            (Some(u), _) => Some(CgroupMatch::Unit(u.clone())),
            (None, Some(c)) => {
                let s = c.to_string_lossy();
                Some(CgroupMatch::Path(format!("/{}", s.trim_matches('/'))))
            }
            (None, None) => None,
        };
        let sel = Selector {
            command: g.command.clone(),
            uid: g.uid,
            exe: g.exe.as_ref().map(|p| ExeMatch {
                configured: p.clone(),
                file: None,
            }),
            cgroup,
            command_lines: false,
        };
        sel.anchored().then_some(sel)
    }

    /// Whether something a process cannot forge selects it.
    pub fn anchored(&self) -> bool {
        self.uid.is_some() || self.exe.is_some() || self.cgroup.is_some()
    }

    /// Which `/proc` fields matching needs: (cgroups, uids, exe).
    pub fn needs(&self) -> (bool, bool, bool) {
        (
            self.cgroup.is_some(),
            self.uid.is_some(),
            self.exe.is_some(),
        )
    }

    /// Whether `p` is a member. `trusted` says whether a cgroup
    /// (`/system.slice/worker.service` in a hierarchy) may be believed:
    /// only its owner can move a process into it.
    pub fn matches(&self, p: &ProcInfo, trusted: &dyn Fn(&CgroupPath) -> bool) -> bool {
        if !self.anchored() {
            return false;
        }
        if let Some(uid) = self.uid {
            if p.uids != Some((uid, uid)) {
                return false;
            }
        }
        if let Some(want) = &self.exe {
            let (Some(file), Some(exe)) = (&want.file, &p.exe) else {
                return false;
            };
            if file != exe {
                return false;
            }
        }
        if let Some(cg) = &self.cgroup {
            if !cgroup_matches(cg, &p.cgroups, trusted) {
                return false;
            }
        }
        match &self.command {
            Some(pattern) => !p.cmdline.is_empty() && glob_match(pattern, &p.cmdline),
            None => true,
        }
    }
}

/// Whether one of `cgroups` is (below) the group's cgroup, and that cgroup
/// is trusted.
fn cgroup_matches(
    want: &CgroupMatch,
    cgroups: &[CgroupPath],
    trusted: &dyn Fn(&CgroupPath) -> bool,
) -> bool {
    cgroups.iter().any(|cg| match want {
        CgroupMatch::Unit(unit) => {
            let parts: Vec<&str> = cg.path.split('/').collect();
            parts
                .iter()
                .position(|part| part == unit)
                .is_some_and(|i| trusted(&cg.with_path(parts[..=i].join("/"))))
        }
        CgroupMatch::Path(root) => {
            (cg.path == *root || cg.path.starts_with(&format!("{root}/")))
                && trusted(&cg.with_path(root.clone()))
        }
    })
}

/// What evidence shows of a command line: the program's name (the last
/// component of its first word), and for an interpreter the name of the
/// script it runs (`sh fork.sh`), never the arguments.
pub fn program_name(cmdline: &str) -> String {
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_string();
    let mut words = cmdline.split(' ').filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return String::new();
    };
    let prog = base(first);
    let interpreter = INTERPRETERS.contains(&prog.as_str())
        || prog
            .strip_prefix("python")
            .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if interpreter {
        // The script: the first word that is not an option. `sh -c '...'`
        // runs a command line, not a script: nothing more is shown.
        for w in words {
            if w == "-c" || w == "-e" || w == "-m" {
                break;
            }
            if !w.starts_with('-') {
                return format!("{prog} {}", base(w));
            }
        }
    }
    prog
}

/// Glob match over the whole text: `*` any run of characters, `?` one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        // A `*` in the pattern is always a wildcard, even where the text
        // has a literal `*`: tried first, so a backtrack point is kept.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One process in a trip's evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcSummary {
    pub pid: u32,
    pub ppid: u32,
    /// 0 for a root.
    pub depth: u32,
    pub state: String,
    /// The program ([`program_name`]): what is safe to show.
    pub command: String,
    /// The whole command line, only when `loop.record_command_lines` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Drop whole command lines (`cmdline`) from the evidence of a loop alert
/// or result (`details.evidence[]`): what the coordinator does to what an
/// agent sends unless its own `loop.record_command_lines` is on, so an
/// agent configured otherwise (or older) cannot put them in the audit
/// trail, status or state. Returns how many were dropped.
pub fn strip_command_lines(details: &mut serde_json::Map<String, serde_json::Value>) -> usize {
    let Some(serde_json::Value::Array(evidence)) = details.get_mut("evidence") else {
        return 0;
    };
    evidence
        .iter_mut()
        .filter_map(serde_json::Value::as_object_mut)
        .filter_map(|e| e.remove("cmdline"))
        .count()
}

/// A group as seen in one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub roots: Vec<ProcId>,
    /// Roots and everything below them, parents before children.
    pub members: Vec<ProcId>,
    /// Deepest process below a root (a root's children are at depth 1).
    pub depth: u32,
    /// Processes below the roots, all trees together.
    pub descendants: u32,
    /// The roots and the path down to the deepest process.
    pub evidence: Vec<ProcSummary>,
}

fn gone(p: &ProcInfo) -> bool {
    matches!(p.state, 'Z' | 'X' | 'x')
}

/// Whether `p`, just started (heard from the kernel's process events, not
/// found in a snapshot), roots a tree of the group: it is a member as
/// [`observe`] finds members and its parent (`None`: gone or unreadable)
/// is not. The same rule as a snapshot's roots, for one process.
pub fn is_root(
    p: &ProcInfo,
    parent: Option<&ProcInfo>,
    selector: &Selector,
    protected: &HashSet<u32>,
    trusted: &dyn Fn(&CgroupPath) -> bool,
) -> bool {
    let member = |q: &ProcInfo| {
        !gone(q) && !protected.contains(&q.id.pid) && q.id.pid > 1 && selector.matches(q, trusted)
    };
    member(p) && !parent.filter(|q| q.id.pid == p.ppid).is_some_and(member)
}

/// Find a group's trees in a snapshot. `protected` pids (the agent and
/// its ancestors, pid 1) are never members, nor is anything below them;
/// `trusted` says which cgroups may be believed ([`Selector::matches`]).
pub fn observe(
    procs: &[ProcInfo],
    selector: &Selector,
    protected: &HashSet<u32>,
    trusted: &dyn Fn(&CgroupPath) -> bool,
) -> Observation {
    let by_pid: HashMap<u32, &ProcInfo> = procs.iter().map(|p| (p.id.pid, p)).collect();
    let mut children: HashMap<u32, Vec<&ProcInfo>> = HashMap::new();
    for p in procs {
        if p.ppid != p.id.pid {
            children.entry(p.ppid).or_default().push(p);
        }
    }
    for v in children.values_mut() {
        v.sort_by_key(|p| p.id.pid);
    }
    let usable = |p: &ProcInfo| !gone(p) && !protected.contains(&p.id.pid) && p.id.pid > 1;
    let matched: HashSet<u32> = procs
        .iter()
        .filter(|p| usable(p) && selector.matches(p, trusted))
        .map(|p| p.id.pid)
        .collect();
    let mut roots: Vec<&ProcInfo> = procs
        .iter()
        .filter(|p| matched.contains(&p.id.pid) && !matched.contains(&p.ppid))
        .collect();
    roots.sort_by_key(|p| p.id.pid);

    let mut obs = Observation::default();
    let mut seen: HashSet<u32> = HashSet::new();
    let mut depth_of: HashMap<u32, u32> = HashMap::new();
    let mut deepest: Option<(u32, u32)> = None;
    for root in &roots {
        if !seen.insert(root.id.pid) {
            continue;
        }
        obs.roots.push(root.id);
        let mut queue = VecDeque::from([(*root, 0u32)]);
        while let Some((p, d)) = queue.pop_front() {
            obs.members.push(p.id);
            depth_of.insert(p.id.pid, d);
            if d > 0 {
                obs.descendants += 1;
            }
            if deepest.is_none_or(|(_, best)| d > best) {
                deepest = Some((p.id.pid, d));
            }
            for c in children.get(&p.id.pid).into_iter().flatten() {
                if usable(c) && seen.insert(c.id.pid) {
                    queue.push_back((c, d + 1));
                }
            }
        }
    }
    obs.depth = deepest.map(|(_, d)| d).unwrap_or(0);

    let summary = |p: &ProcInfo| ProcSummary {
        pid: p.id.pid,
        ppid: p.ppid,
        depth: depth_of.get(&p.id.pid).copied().unwrap_or(0),
        state: p.state.to_string(),
        command: program_name(&p.cmdline)
            .chars()
            .take(EVIDENCE_CMDLINE)
            .collect(),
        cmdline: selector
            .command_lines
            .then(|| p.cmdline.chars().take(EVIDENCE_CMDLINE).collect()),
    };
    let mut path = Vec::new();
    let mut cur = deepest.map(|(pid, _)| pid);
    while let Some(pid) = cur {
        let Some(p) = by_pid.get(&pid) else { break };
        path.push(summary(p));
        if depth_of.get(&pid).copied().unwrap_or(0) == 0 || path.len() >= EVIDENCE_PROCS {
            break;
        }
        cur = Some(p.ppid);
    }
    path.reverse();
    for r in roots.iter().take(EVIDENCE_PROCS / 2) {
        if !path.iter().any(|s| s.pid == r.id.pid) {
            path.insert(0, summary(r));
        }
    }
    path.truncate(EVIDENCE_PROCS);
    obs.evidence = path;
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn p(pid: u32, ppid: u32, cmd: &str) -> ProcInfo {
        ProcInfo {
            id: ProcId {
                pid,
                start: u64::from(pid) * 10,
            },
            ppid,
            state: 'S',
            cmdline: cmd.into(),
            cgroups: vec![CgroupPath::v2("/user.slice/session-1.scope")],
            uids: Some((0, 0)),
            exe: None,
        }
    }

    /// A command pattern over root's processes.
    pub(super) fn cmd(pattern: &str) -> Selector {
        Selector {
            command: Some(pattern.into()),
            uid: Some(0),
            ..Selector::default()
        }
    }

    fn unit(u: &str) -> Selector {
        Selector {
            cgroup: Some(CgroupMatch::Unit(u.into())),
            ..Selector::default()
        }
    }

    fn cgroup(path: &str) -> Selector {
        Selector {
            cgroup: Some(CgroupMatch::Path(path.into())),
            ..Selector::default()
        }
    }

    fn observe(procs: &[ProcInfo], sel: &Selector, protected: &HashSet<u32>) -> Observation {
        super::observe(procs, sel, protected, &|_| true)
    }

    /// init → bash(10) → sh fork.sh(20) → 21 → 22 → 23 → sleep(24)
    pub(super) fn chain_tree(levels: u32) -> Vec<ProcInfo> {
        let mut v = vec![p(1, 0, "/sbin/init"), p(10, 1, "bash")];
        let mut parent = 10;
        for i in 0..levels {
            let pid = 20 + i;
            v.push(p(pid, parent, "sh /tmp/x/fork.sh 3"));
            parent = pid;
        }
        v.push(p(99, parent, "sleep 30"));
        v
    }

    #[test]
    fn a_started_process_is_a_root_as_a_snapshot_would_find_it() {
        let sel = cmd("*crasher.sh*");
        let none = HashSet::new();
        let all = |_: &CgroupPath| true;
        let sup = p(10, 1, "sh supervisor.sh");
        let crasher = p(20, 10, "sh /tmp/crasher.sh");
        assert!(is_root(&crasher, Some(&sup), &sel, &none, &all));
        assert!(is_root(&crasher, None, &sel, &none, &all), "parent gone");
        // Below a member: part of that member's tree.
        let outer = p(10, 1, "sh /tmp/crasher.sh");
        assert!(!is_root(&crasher, Some(&outer), &sel, &none, &all));
        // A parent read for another pid (reused) says nothing.
        let other = p(11, 1, "sh /tmp/crasher.sh");
        assert!(is_root(&crasher, Some(&other), &sel, &none, &all));
        // Not a member: wrong command, protected, gone, another user.
        assert!(!is_root(&sup, None, &sel, &none, &all));
        assert!(!is_root(
            &crasher,
            Some(&sup),
            &sel,
            &HashSet::from([20]),
            &all
        ));
        let zombie = ProcInfo {
            state: 'Z',
            ..crasher.clone()
        };
        assert!(!is_root(&zombie, Some(&sup), &sel, &none, &all));
        let theirs = ProcInfo {
            uids: Some((1000, 1000)),
            ..crasher.clone()
        };
        assert!(!is_root(&theirs, Some(&sup), &sel, &none, &all));
        // The same verdict as a snapshot holding both.
        let snap = [sup.clone(), crasher.clone()];
        assert_eq!(observe(&snap, &sel, &none).roots, vec![crasher.id]);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*fork.sh*", "sh /tmp/fork.sh 3"));
        assert!(glob_match("sh ?", "sh 1"));
        assert!(!glob_match("sh ?", "sh 12"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn trees_by_command_unit_and_cgroup() {
        let procs = chain_tree(4);
        let sel = cmd("*fork.sh*");
        let obs = observe(&procs, &sel, &HashSet::new());
        assert_eq!(obs.roots.len(), 1);
        assert_eq!(obs.roots[0].pid, 20);
        assert_eq!(obs.depth, 4, "21, 22, 23 and the sleep below the root");
        assert_eq!(obs.descendants, 4);
        assert_eq!(obs.members.len(), 5);
        assert_eq!(obs.evidence.first().unwrap().pid, 20);
        assert_eq!(obs.evidence.last().unwrap().command, "sleep");

        let mut procs = procs;
        procs[1].cgroups = vec![CgroupPath::v2("/system.slice/worker.service")];
        for q in procs.iter_mut().skip(2) {
            q.cgroups = vec![CgroupPath::v2("/system.slice/worker.service/jobs")];
        }
        let unit = observe(&procs, &unit("worker.service"), &HashSet::new());
        assert_eq!(unit.roots[0].pid, 10);
        assert_eq!(unit.depth, 5);
        let cg = observe(
            &procs,
            &cgroup("/system.slice/worker.service/jobs"),
            &HashSet::new(),
        );
        assert_eq!(cg.roots[0].pid, 20);
        let none = observe(&procs, &cgroup("/system.slice/worker"), &HashSet::new());
        assert!(
            none.roots.is_empty(),
            "a prefix of a name is not a parent cgroup"
        );
    }

    #[test]
    fn protected_and_dead_processes_are_never_members() {
        let mut procs = chain_tree(2);
        procs.push(p(50, 21, "skos agent"));
        procs.push(p(51, 50, "sh /tmp/x/fork.sh 9"));
        procs[3].state = 'Z';
        let protected = HashSet::from([50]);
        let obs = observe(&procs, &cmd("*fork.sh*"), &protected);
        assert!(!obs.members.iter().any(|m| m.pid == 50 || m.pid == 99));
        // 51 matches and its parent (50) is not a member: its own root.
        assert!(obs.roots.iter().any(|r| r.pid == 51));
        let everything = observe(&procs, &cmd("*"), &HashSet::new());
        assert!(!everything.members.iter().any(|m| m.pid == 1));
    }

    #[test]
    fn parent_loops_in_a_torn_snapshot_terminate() {
        let procs = vec![p(5, 6, "loop-a"), p(6, 5, "loop-b")];
        let obs = observe(&procs, &cmd("loop-*"), &HashSet::new());
        assert!(obs.roots.is_empty());
        let procs = vec![p(5, 6, "loop-a"), p(6, 5, "other")];
        let obs = observe(&procs, &cmd("loop-*"), &HashSet::new());
        assert_eq!(obs.members.len(), 2);
    }

    #[test]
    fn a_pattern_star_meeting_a_literal_star_still_matches_any_run() {
        assert!(glob_match("*b", "*ab"));
        assert!(glob_match("x*y", "x*zzy"));
        assert!(glob_match("*", "*"));
        assert!(!glob_match("*b", "*a"));
    }

    #[test]
    fn a_literal_star_in_a_command_line_is_one_character() {
        // After backtracking to a `*`, a `*` in the text is still text
        // that `?` (or a literal) must match.
        assert!(glob_match("sh -c *?", "sh -c rm *"));
        assert!(glob_match("*clean*?", "make clean *"));
        assert!(!glob_match("*clean*?", "make clean"));
    }

    #[test]
    fn a_group_is_selected_by_what_its_members_cannot_choose() {
        let g = |yaml: &str| -> ProcessGroup { serde_yaml_ng::from_str(yaml).unwrap() };
        let sel = Selector::of(&g("{name: g, command: '*fork.sh*', uid: 0}")).unwrap();
        assert_eq!(sel, cmd("*fork.sh*"));
        assert_eq!(
            Selector::of(&g("{name: g, unit: worker.service}")),
            Some(unit("worker.service"))
        );
        assert_eq!(
            Selector::of(&g("{name: g, cgroup: work.slice/jobs/}")),
            Some(cgroup("/work.slice/jobs")),
            "relative to the cgroup root, without a trailing slash"
        );
        let exe = Selector::of(&g("{name: g, exe: /usr/bin/worker}")).unwrap();
        assert_eq!(
            exe.exe.unwrap().configured,
            PathBuf::from("/usr/bin/worker")
        );
        // A command pattern alone, or nothing: no selector, no member.
        assert_eq!(Selector::of(&g("{name: g, command: '*fork.sh*'}")), None);
        assert_eq!(Selector::of(&g("{name: g}")), None);
        let forged = Selector {
            command: Some("*".into()),
            ..Selector::default()
        };
        assert!(!forged.matches(&p(30, 1, "anything"), &|_| true));
    }

    #[test]
    fn a_process_naming_itself_after_a_group_is_not_a_member() {
        // Root's worker, and a process of uid 65534 with the same command
        // line, the same executable, in a cgroup of its own.
        let worker_exe = Exe {
            path: "/usr/local/bin/worker".into(),
            dev: 8,
            ino: 4242,
        };
        let mut root_worker = p(20, 1, "/usr/local/bin/worker --jobs 4");
        root_worker.exe = Some(worker_exe.clone());
        root_worker.cgroups = vec![CgroupPath::v2("/system.slice/worker.service")];
        let mut impostor = p(30, 1, "/usr/local/bin/worker --jobs 4");
        impostor.uids = Some((65534, 65534));
        impostor.exe = Some(Exe {
            path: "/tmp/worker".into(),
            dev: 8,
            ino: 999,
        });
        impostor.cgroups = vec![CgroupPath::v2(
            "/user.slice/user-65534.slice/user@65534.service/app.slice/worker.service",
        )];
        // A setuid program run by the impostor: effective uid 0, real not.
        let mut setuid = impostor.clone();
        setuid.id.pid = 31;
        setuid.uids = Some((65534, 0));
        let procs = vec![p(1, 0, "/sbin/init"), root_worker, impostor, setuid];
        let members = |sel: &Selector, trusted: &dyn Fn(&CgroupPath) -> bool| -> Vec<u32> {
            super::observe(&procs, sel, &HashSet::new(), trusted)
                .members
                .iter()
                .map(|m| m.pid)
                .collect()
        };
        let only_system = |cg: &CgroupPath| cg.path.starts_with("/system.slice");
        let by_uid = cmd("*worker --jobs*");
        assert_eq!(members(&by_uid, &only_system), [20]);
        let by_exe = Selector {
            command: Some("*worker*".into()),
            exe: Some(ExeMatch {
                configured: "/usr/local/bin/worker".into(),
                file: Some(worker_exe),
            }),
            ..Selector::default()
        };
        assert_eq!(members(&by_exe, &only_system), [20]);
        let unresolved = Selector {
            exe: Some(ExeMatch {
                configured: "/usr/local/bin/worker".into(),
                file: None,
            }),
            ..Selector::default()
        };
        assert!(members(&unresolved, &only_system).is_empty());
        // A unit of the same name in the impostor's own (delegated,
        // untrusted) cgroup tree is not the system's unit.
        assert_eq!(members(&unit("worker.service"), &only_system), [20]);
        assert_eq!(
            members(&cgroup("/system.slice/worker.service"), &|_| false),
            Vec::<u32>::new(),
            "an untrusted cgroup selects nothing"
        );
    }

    #[test]
    fn a_unit_is_a_whole_component_of_the_cgroup_path() {
        let sel = unit("worker.service");
        let in_cgroup = |cg: &str| {
            let mut q = p(30, 1, "worker");
            q.cgroups = vec![CgroupPath::v2(cg)];
            sel.matches(&q, &|_| true)
        };
        assert!(in_cgroup("/system.slice/worker.service"));
        assert!(in_cgroup("/system.slice/worker.service/jobs"));
        assert!(!in_cgroup("/system.slice/other.service"));
        assert!(!in_cgroup("/system.slice/worker.service2"));
        assert!(!in_cgroup("/user.slice/session-1.scope"));
        // The trust asked about is the unit's own cgroup.
        let mut q = p(30, 1, "worker");
        q.cgroups = vec![CgroupPath::v2("/system.slice/worker.service/jobs")];
        assert!(sel.matches(&q, &|cg| cg.path == "/system.slice/worker.service"));
        // Trust is asked in the hierarchy the path was found in: a v1
        // controller's cgroup of the same name is another cgroup.
        let mut q = p(31, 1, "worker");
        q.cgroups = vec![CgroupPath {
            hierarchy: "memory".into(),
            path: "/worker.service".into(),
        }];
        let asked = std::cell::RefCell::new(Vec::new());
        let only_systemd = |cg: &CgroupPath| {
            asked.borrow_mut().push(cg.to_string());
            cg.hierarchy == "name=systemd"
        };
        assert!(!sel.matches(&q, &only_systemd));
        assert_eq!(asked.borrow().as_slice(), ["memory:/worker.service"]);
        q.cgroups[0].hierarchy = "name=systemd".into();
        assert!(sel.matches(&q, &only_systemd));
    }

    #[test]
    fn evidence_names_the_program_and_keeps_arguments_out() {
        let mut procs = chain_tree(1);
        procs[2].cmdline = "sh /tmp/x/fork.sh --token s3cret".into();
        procs[3].cmdline = "/usr/bin/curl -H Authorization:s3cret https://x".into();
        let obs = observe(&procs, &cmd("*fork.sh*"), &HashSet::new());
        let shown = serde_json::to_string(&obs.evidence).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("cmdline"), "{shown}");
        assert_eq!(obs.evidence[0].command, "sh fork.sh");
        assert_eq!(obs.evidence[1].command, "curl");
        let recorded = Selector {
            command_lines: true,
            ..cmd("*fork.sh*")
        };
        let obs = observe(&procs, &recorded, &HashSet::new());
        assert_eq!(
            obs.evidence[0].cmdline.as_deref(),
            Some("sh /tmp/x/fork.sh --token s3cret")
        );
    }

    #[test]
    fn command_lines_are_stripped_from_received_evidence() {
        let mut d = serde_json::json!({
            "condition": "depth_exceeded",
            "evidence": [
                {"pid": 1, "command": "sh fork.sh", "cmdline": "sh fork.sh --token s3cret"},
                {"pid": 2, "command": "sleep"},
                "odd"
            ]
        })
        .as_object()
        .cloned()
        .unwrap();
        assert_eq!(strip_command_lines(&mut d), 1);
        assert!(!serde_json::to_string(&d).unwrap().contains("s3cret"));
        assert_eq!(d["evidence"][0]["command"], "sh fork.sh");
        let mut none = serde_json::Map::new();
        assert_eq!(strip_command_lines(&mut none), 0);
    }

    #[test]
    fn program_names() {
        assert_eq!(
            program_name("/usr/bin/python3.11 -u /srv/app/run.py --key k"),
            "python3.11 run.py"
        );
        assert_eq!(program_name("bash -c rm -rf /x"), "bash");
        assert_eq!(
            program_name("postgres: alice db 10.0.0.1 idle"),
            "postgres:"
        );
        assert_eq!(program_name("/opt/worker"), "worker");
        assert_eq!(program_name(""), "");
        assert_eq!(program_name("sh"), "sh");
    }

    fn pids_and_depths(obs: &Observation) -> Vec<(u32, u32)> {
        obs.evidence.iter().map(|s| (s.pid, s.depth)).collect()
    }

    #[test]
    fn the_evidence_is_the_whole_path_from_the_root_to_the_deepest() {
        let procs = chain_tree(4);
        let obs = observe(&procs, &cmd("*fork.sh*"), &HashSet::new());
        assert_eq!(
            pids_and_depths(&obs),
            vec![(20, 0), (21, 1), (22, 2), (23, 3), (99, 4)],
            "each process once, root first"
        );
    }

    #[test]
    fn of_equally_deep_branches_the_evidence_follows_the_first_found() {
        // 20 → 21 → 23 and 20 → 22 → 24: the lower pids come first.
        let procs = vec![
            p(1, 0, "/sbin/init"),
            p(20, 1, "sh fork.sh"),
            p(21, 20, "sh fork.sh a"),
            p(22, 20, "sh fork.sh b"),
            p(23, 21, "sleep 1"),
            p(24, 22, "sleep 2"),
        ];
        let obs = observe(&procs, &cmd("*fork.sh*"), &HashSet::new());
        assert_eq!(obs.depth, 2);
        assert_eq!(pids_and_depths(&obs), vec![(20, 0), (21, 1), (23, 2)]);
    }

    #[test]
    fn the_evidence_names_at_most_half_its_length_in_roots() {
        // A respawn storm: twelve lone roots.
        let mut procs = vec![p(1, 0, "/sbin/init")];
        procs.extend((100..112).map(|pid| p(pid, 1, "sh crasher.sh")));
        let obs = observe(&procs, &cmd("*crasher*"), &HashSet::new());
        assert_eq!(obs.roots.len(), 12);
        let mut pids: Vec<u32> = obs.evidence.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        assert_eq!(
            pids,
            (100..100 + EVIDENCE_PROCS as u32 / 2).collect::<Vec<_>>()
        );
    }
}
