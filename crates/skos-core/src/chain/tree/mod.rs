//! Uncooperative chains: process groups, judged from `/proc` snapshots.
//!
//! The agent reads every process (pid, parent, start time, state, command
//! line, cgroup) into [`ProcInfo`]s; [`observe`] finds a group's members
//! (by command-line glob, systemd unit or cgroup), the trees they root,
//! their depth and descendant count; [`GroupTracker`] turns successive
//! observations into trips (depth, descendants, crash loop: too many new
//! roots within a window) and, once a `circuit_break` or `reset_chain`
//! command arrives, into the signals to send. The agent sends them.
//!
//! A process is named by [`ProcId`] (pid and start time), so a reused pid
//! is never mistaken for the process that had it before.
//!
//! This file is the snapshot side ([`observe`]); `tracker.rs` is
//! [`GroupTracker`].

mod tracker;

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::config::ProcessGroup;

pub use tracker::{GroupChange, GroupState, GroupStep, GroupTracker, GroupTrip, GroupView, Sig};

/// Longest command line kept in evidence, in characters.
const EVIDENCE_CMDLINE: usize = 160;
/// Most processes listed in a trip's evidence.
const EVIDENCE_PROCS: usize = 16;

/// A process, identified across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProcId {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// One process as read from `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub id: ProcId,
    pub ppid: u32,
    /// `R`, `S`, `D`, `T`, `Z`…
    pub state: char,
    /// Arguments joined by single spaces (empty for kernel threads).
    pub cmdline: String,
    /// The cgroup v2 path (`/system.slice/x.service`), or the v1 paths.
    pub cgroups: Vec<String>,
}

/// Which processes belong to a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Command(String),
    Unit(String),
    Cgroup(String),
}

impl Selector {
    pub fn of(g: &ProcessGroup) -> Option<Selector> {
        if let Some(c) = &g.command {
            return Some(Selector::Command(c.clone()));
        }
        if let Some(u) = &g.unit {
            return Some(Selector::Unit(u.clone()));
        }
        g.cgroup.as_ref().map(|c| {
            let s = c.to_string_lossy();
            Selector::Cgroup(format!("/{}", s.trim_matches('/')))
        })
    }

    pub fn matches(&self, p: &ProcInfo) -> bool {
        match self {
            Selector::Command(pattern) => !p.cmdline.is_empty() && glob_match(pattern, &p.cmdline),
            Selector::Unit(unit) => p
                .cgroups
                .iter()
                .any(|cg| cg.split('/').any(|part| part == unit)),
            Selector::Cgroup(root) => p
                .cgroups
                .iter()
                .any(|cg| cg == root || cg.starts_with(&format!("{root}/"))),
        }
    }
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
    pub cmdline: String,
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

/// Find a group's trees in a snapshot. `protected` pids (the agent and
/// its ancestors, pid 1) are never members, nor is anything below them.
pub fn observe(procs: &[ProcInfo], selector: &Selector, protected: &HashSet<u32>) -> Observation {
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
        .filter(|p| usable(p) && selector.matches(p))
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
        cmdline: p.cmdline.chars().take(EVIDENCE_CMDLINE).collect(),
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
            cgroups: vec!["/user.slice/session-1.scope".into()],
        }
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
        let sel = Selector::Command("*fork.sh*".into());
        let obs = observe(&procs, &sel, &HashSet::new());
        assert_eq!(obs.roots.len(), 1);
        assert_eq!(obs.roots[0].pid, 20);
        assert_eq!(obs.depth, 4, "21, 22, 23 and the sleep below the root");
        assert_eq!(obs.descendants, 4);
        assert_eq!(obs.members.len(), 5);
        assert_eq!(obs.evidence.first().unwrap().pid, 20);
        assert_eq!(obs.evidence.last().unwrap().cmdline, "sleep 30");

        let mut procs = procs;
        procs[1].cgroups = vec!["/system.slice/worker.service".into()];
        for q in procs.iter_mut().skip(2) {
            q.cgroups = vec!["/system.slice/worker.service/jobs".into()];
        }
        let unit = observe(
            &procs,
            &Selector::Unit("worker.service".into()),
            &HashSet::new(),
        );
        assert_eq!(unit.roots[0].pid, 10);
        assert_eq!(unit.depth, 5);
        let cg = observe(
            &procs,
            &Selector::Cgroup("/system.slice/worker.service/jobs".into()),
            &HashSet::new(),
        );
        assert_eq!(cg.roots[0].pid, 20);
        let none = observe(
            &procs,
            &Selector::Cgroup("/system.slice/worker".into()),
            &HashSet::new(),
        );
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
        let obs = observe(&procs, &Selector::Command("*fork.sh*".into()), &protected);
        assert!(!obs.members.iter().any(|m| m.pid == 50 || m.pid == 99));
        // 51 matches and its parent (50) is not a member: its own root.
        assert!(obs.roots.iter().any(|r| r.pid == 51));
        let everything = observe(&procs, &Selector::Command("*".into()), &HashSet::new());
        assert!(!everything.members.iter().any(|m| m.pid == 1));
    }

    #[test]
    fn parent_loops_in_a_torn_snapshot_terminate() {
        let procs = vec![p(5, 6, "loop-a"), p(6, 5, "loop-b")];
        let obs = observe(&procs, &Selector::Command("loop-*".into()), &HashSet::new());
        assert!(obs.roots.is_empty());
        let procs = vec![p(5, 6, "loop-a"), p(6, 5, "other")];
        let obs = observe(&procs, &Selector::Command("loop-*".into()), &HashSet::new());
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
    fn a_group_is_selected_by_command_unit_or_cgroup() {
        let all = ProcessGroup {
            command: Some("*fork.sh*".into()),
            unit: Some("worker.service".into()),
            cgroup: Some("work.slice/jobs/".into()),
            ..Default::default()
        };
        assert_eq!(
            Selector::of(&all),
            Some(Selector::Command("*fork.sh*".into()))
        );
        let unit = ProcessGroup {
            command: None,
            ..all.clone()
        };
        assert_eq!(
            Selector::of(&unit),
            Some(Selector::Unit("worker.service".into()))
        );
        let cgroup = ProcessGroup {
            unit: None,
            ..unit.clone()
        };
        assert_eq!(
            Selector::of(&cgroup),
            Some(Selector::Cgroup("/work.slice/jobs".into())),
            "relative to the cgroup root, without a trailing slash"
        );
        let none = ProcessGroup {
            cgroup: None,
            ..cgroup
        };
        assert_eq!(Selector::of(&none), None);
    }

    #[test]
    fn a_unit_is_a_whole_component_of_the_cgroup_path() {
        let sel = Selector::Unit("worker.service".into());
        let in_cgroup = |cg: &str| {
            let mut q = p(30, 1, "worker");
            q.cgroups = vec![cg.into()];
            sel.matches(&q)
        };
        assert!(in_cgroup("/system.slice/worker.service"));
        assert!(in_cgroup("/system.slice/worker.service/jobs"));
        assert!(!in_cgroup("/system.slice/other.service"));
        assert!(!in_cgroup("/system.slice/worker.service2"));
        assert!(!in_cgroup("/user.slice/session-1.scope"));
    }

    fn pids_and_depths(obs: &Observation) -> Vec<(u32, u32)> {
        obs.evidence.iter().map(|s| (s.pid, s.depth)).collect()
    }

    #[test]
    fn the_evidence_is_the_whole_path_from_the_root_to_the_deepest() {
        let procs = chain_tree(4);
        let obs = observe(
            &procs,
            &Selector::Command("*fork.sh*".into()),
            &HashSet::new(),
        );
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
        let obs = observe(
            &procs,
            &Selector::Command("*fork.sh*".into()),
            &HashSet::new(),
        );
        assert_eq!(obs.depth, 2);
        assert_eq!(pids_and_depths(&obs), vec![(20, 0), (21, 1), (23, 2)]);
    }

    #[test]
    fn the_evidence_names_at_most_half_its_length_in_roots() {
        // A respawn storm: twelve lone roots.
        let mut procs = vec![p(1, 0, "/sbin/init")];
        procs.extend((100..112).map(|pid| p(pid, 1, "sh crasher.sh")));
        let obs = observe(
            &procs,
            &Selector::Command("*crasher*".into()),
            &HashSet::new(),
        );
        assert_eq!(obs.roots.len(), 12);
        let mut pids: Vec<u32> = obs.evidence.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        assert_eq!(
            pids,
            (100..100 + EVIDENCE_PROCS as u32 / 2).collect::<Vec<_>>()
        );
    }
}
