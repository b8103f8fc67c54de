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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::Serialize;

use super::Condition;
use crate::config::{BreakMode, GroupLimits, ProcessGroup};
use crate::level::secs;
use crate::timefmt::{self, Timestamp};

/// Longest command line kept in evidence, in characters.
const EVIDENCE_CMDLINE: usize = 160;
/// Most processes listed in a trip's evidence.
const EVIDENCE_PROCS: usize = 16;
/// Most respawn times remembered per group.
const MAX_STARTS: usize = 1024;

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
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Sig {
    Stop,
    Cont,
    Term,
    Kill,
}

impl Sig {
    pub fn as_str(self) -> &'static str {
        match self {
            Sig::Stop => "SIGSTOP",
            Sig::Cont => "SIGCONT",
            Sig::Term => "SIGTERM",
            Sig::Kill => "SIGKILL",
        }
    }
}

/// A group broke a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupTrip {
    pub group: String,
    pub condition: Condition,
    pub value: u64,
    pub limit: u64,
    pub message: String,
    pub evidence: Vec<ProcSummary>,
    /// When the roots in the respawn window appeared.
    pub respawns: Vec<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupChange {
    Tripped(GroupTrip),
    /// A trip still waiting for a decision is no longer over its limit.
    Cleared,
    HalfOpened,
    /// A half-open group stayed within its limits.
    Closed,
}

/// What one call asks the agent to do and tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupStep {
    pub changes: Vec<GroupChange>,
    /// In order: send each, then move on.
    pub signals: Vec<(ProcId, Sig)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    Watching,
    /// Over a limit, alert sent, waiting for a command.
    Tripped,
    /// `circuit_break`: members are stopped or terminated until `until`.
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Stopped,
    Terminated,
    Killed,
}

#[derive(Debug, Clone)]
pub struct GroupTracker {
    name: String,
    limits: GroupLimits,
    state: GroupState,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    known_roots: HashSet<ProcId>,
    first_scan: bool,
    starts: VecDeque<Timestamp>,
    /// Processes being stopped or terminated, with the stage reached and when.
    handled: BTreeMap<ProcId, (Stage, Timestamp)>,
}

impl GroupTracker {
    pub fn new(name: &str, limits: GroupLimits) -> Self {
        Self {
            name: name.to_string(),
            limits,
            state: GroupState::Watching,
            since: None,
            until: None,
            known_roots: HashSet::new(),
            first_scan: true,
            starts: VecDeque::new(),
            handled: BTreeMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn until(&self) -> Option<Timestamp> {
        self.until
    }

    /// Processes being stopped or terminated.
    pub fn handling(&self) -> usize {
        self.handled.len()
    }

    /// Respawns within the window, as of the last observation.
    pub fn respawns(&self) -> usize {
        self.starts.len()
    }

    fn over(&self, obs: &Observation) -> Option<(Condition, u64, u64, String)> {
        let l = &self.limits;
        if obs.depth > l.max_depth {
            Some((
                Condition::DepthExceeded,
                u64::from(obs.depth),
                u64::from(l.max_depth),
                format!(
                    "process group {}: tree depth {} exceeds {}",
                    self.name, obs.depth, l.max_depth
                ),
            ))
        } else if obs.descendants > l.max_descendants {
            Some((
                Condition::DescendantsExceeded,
                u64::from(obs.descendants),
                u64::from(l.max_descendants),
                format!(
                    "process group {}: {} descendants exceed {}",
                    self.name, obs.descendants, l.max_descendants
                ),
            ))
        } else if self.starts.len() > l.max_respawns as usize {
            Some((
                Condition::CrashLoop,
                self.starts.len() as u64,
                u64::from(l.max_respawns),
                format!(
                    "process group {}: respawned {} times within {} s (limit {})",
                    self.name,
                    self.starts.len(),
                    l.respawn_window_seconds,
                    l.max_respawns
                ),
            ))
        } else {
            None
        }
    }

    fn trip(&self, obs: &Observation) -> Option<GroupTrip> {
        self.over(obs)
            .map(|(condition, value, limit, message)| GroupTrip {
                group: self.name.clone(),
                condition,
                value,
                limit,
                message,
                evidence: obs.evidence.clone(),
                respawns: self.starts.iter().copied().collect(),
            })
    }

    /// The first signal for a member under an open circuit.
    fn take_in(&mut self, id: ProcId, now: Timestamp, out: &mut GroupStep) {
        if self.handled.contains_key(&id) {
            return;
        }
        match self.limits.on_break {
            BreakMode::Stop | BreakMode::StopThenTerm => {
                out.signals.push((id, Sig::Stop));
                self.handled.insert(id, (Stage::Stopped, now));
            }
            BreakMode::Term => {
                out.signals.push((id, Sig::Term));
                out.signals.push((id, Sig::Cont));
                self.handled.insert(id, (Stage::Terminated, now));
            }
        }
    }

    /// Move every handled process one stage on once its grace is over:
    /// stopped → terminated (SIGTERM, then SIGCONT so it can act on it) →
    /// killed. Processes no longer alive are dropped.
    fn escalate(&mut self, live: &HashSet<ProcId>, now: Timestamp, out: &mut GroupStep) {
        let grace = secs(self.limits.grace_seconds);
        let freeze_only = self.limits.on_break == BreakMode::Stop;
        let mut conts = Vec::new();
        self.handled.retain(|id, (stage, since)| {
            if !live.contains(id) {
                return false;
            }
            if now - *since < grace {
                return true;
            }
            match stage {
                Stage::Stopped if freeze_only => true,
                Stage::Stopped => {
                    out.signals.push((*id, Sig::Term));
                    conts.push(*id);
                    *stage = Stage::Terminated;
                    *since = now;
                    true
                }
                Stage::Terminated => {
                    out.signals.push((*id, Sig::Kill));
                    *stage = Stage::Killed;
                    *since = now;
                    true
                }
                // SIGKILL was sent a grace period ago; whatever is left
                // (uninterruptible sleep) is not ours to wait for.
                Stage::Killed => false,
            }
        });
        out.signals
            .extend(conts.into_iter().map(|id| (id, Sig::Cont)));
    }

    /// One snapshot: count respawns, enforce an open circuit, move signals
    /// on, and judge the limits. `live` is every process in the snapshot.
    pub fn observe(
        &mut self,
        obs: &Observation,
        live: &HashSet<ProcId>,
        now: Timestamp,
    ) -> GroupStep {
        let mut out = GroupStep::default();
        let roots: HashSet<ProcId> = obs.roots.iter().copied().collect();
        if !self.first_scan {
            for _ in roots.difference(&self.known_roots) {
                self.starts.push_back(now);
            }
        }
        self.first_scan = false;
        self.known_roots = roots;
        let window = secs(self.limits.respawn_window_seconds);
        while self.starts.front().is_some_and(|t| now - *t > window)
            || self.starts.len() > MAX_STARTS
        {
            self.starts.pop_front();
        }

        if self.state == GroupState::Open {
            if self.until.is_some_and(|u| now >= u) {
                if self.limits.on_break == BreakMode::Stop {
                    let frozen: Vec<ProcId> = self
                        .handled
                        .iter()
                        .filter(|(id, (s, _))| *s == Stage::Stopped && live.contains(id))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in frozen {
                        out.signals.push((id, Sig::Cont));
                        self.handled.remove(&id);
                    }
                }
                self.state = GroupState::HalfOpen;
                self.until = None;
                self.starts.clear();
                out.changes.push(GroupChange::HalfOpened);
            } else {
                for id in &obs.members {
                    self.take_in(*id, now, &mut out);
                }
            }
        }
        self.escalate(live, now, &mut out);

        match self.state {
            GroupState::Open => {}
            GroupState::Watching => {
                if let Some(t) = self.trip(obs) {
                    self.state = GroupState::Tripped;
                    self.since = Some(now);
                    out.changes.push(GroupChange::Tripped(t));
                }
            }
            GroupState::Tripped => {
                let waited = self
                    .since
                    .is_some_and(|s| now - s > secs(self.limits.cool_off_seconds));
                if self.over(obs).is_none() {
                    self.state = GroupState::Watching;
                    out.changes.push(GroupChange::Cleared);
                } else if waited {
                    // No decision came within a cool-off: alert again.
                    if let Some(t) = self.trip(obs) {
                        self.since = Some(now);
                        out.changes.push(GroupChange::Tripped(t));
                    }
                }
            }
            GroupState::HalfOpen => match self.trip(obs) {
                Some(t) => {
                    self.state = GroupState::Tripped;
                    self.since = Some(now);
                    out.changes.push(GroupChange::Tripped(t));
                }
                None => {
                    self.state = GroupState::Watching;
                    out.changes.push(GroupChange::Closed);
                }
            },
        }
        out
    }

    /// `circuit_break`: open the circuit for the cool-off and take every
    /// member in (stop or terminate, as configured).
    pub fn circuit_break(&mut self, obs: &Observation, now: Timestamp) -> GroupStep {
        let mut out = GroupStep::default();
        self.state = GroupState::Open;
        self.since = Some(now);
        self.until = Some(now + secs(self.limits.cool_off_seconds));
        for id in &obs.members {
            self.take_in(*id, now, &mut out);
        }
        out
    }

    /// Members of a snapshot taken right after signals were sent, that
    /// appeared in between (a fork bomb keeps forking): take them in too.
    pub fn enforce(&mut self, obs: &Observation, now: Timestamp) -> GroupStep {
        let mut out = GroupStep::default();
        if self.state == GroupState::Open {
            for id in &obs.members {
                self.take_in(*id, now, &mut out);
            }
        }
        out
    }

    /// `reset_chain`: terminate every tree (SIGKILL after the grace) so
    /// the supervisor starts it fresh; clear the respawn count.
    pub fn reset(&mut self, obs: &Observation, now: Timestamp) -> GroupStep {
        let mut out = GroupStep::default();
        let mut conts = Vec::new();
        for id in &obs.members {
            let stopped = matches!(self.handled.get(id), Some((Stage::Stopped, _)));
            if stopped || !self.handled.contains_key(id) {
                out.signals.push((*id, Sig::Term));
                conts.push(*id);
                self.handled.insert(*id, (Stage::Terminated, now));
            }
        }
        out.signals
            .extend(conts.into_iter().map(|id| (id, Sig::Cont)));
        self.starts.clear();
        self.state = GroupState::Watching;
        self.since = None;
        self.until = None;
        out
    }
}

/// A group's state for heartbeats and results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupView {
    pub name: String,
    pub state: GroupState,
    #[serde(with = "timefmt::option")]
    pub until: Option<Timestamp>,
    pub respawns: usize,
    pub handling: usize,
}

impl GroupTracker {
    pub fn view(&self) -> GroupView {
        GroupView {
            name: self.name.clone(),
            state: self.state,
            until: self.until,
            respawns: self.starts.len(),
            handling: self.handled.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
    }

    fn p(pid: u32, ppid: u32, cmd: &str) -> ProcInfo {
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

    fn limits() -> GroupLimits {
        GroupLimits {
            max_depth: 3,
            max_descendants: 10,
            max_respawns: 2,
            respawn_window_seconds: 60.0,
            on_break: BreakMode::StopThenTerm,
            grace_seconds: 5.0,
            cool_off_seconds: 100.0,
        }
    }

    fn live(procs: &[ProcInfo]) -> HashSet<ProcId> {
        procs.iter().map(|p| p.id).collect()
    }

    /// init → bash(10) → sh fork.sh(20) → 21 → 22 → 23 → sleep(24)
    fn chain_tree(levels: u32) -> Vec<ProcInfo> {
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
    fn deep_tree_trips_then_stop_then_term_then_kill() {
        let sel = Selector::Command("*fork.sh*".into());
        let mut g = GroupTracker::new("forky", limits());
        let small = chain_tree(2);
        let step = g.observe(
            &observe(&small, &sel, &HashSet::new()),
            &live(&small),
            t(0.0),
        );
        assert!(step.changes.is_empty());
        let deep = chain_tree(5);
        let obs = observe(&deep, &sel, &HashSet::new());
        let step = g.observe(&obs, &live(&deep), t(1.0));
        let GroupChange::Tripped(trip) = &step.changes[0] else {
            panic!("{step:?}")
        };
        assert_eq!(trip.condition, Condition::DepthExceeded);
        assert_eq!((trip.value, trip.limit), (5, 3));
        // Waiting for the decision: no second alert.
        assert!(g.observe(&obs, &live(&deep), t(2.0)).changes.is_empty());

        let step = g.circuit_break(&obs, t(3.0));
        assert_eq!(step.signals.len(), obs.members.len());
        assert!(step.signals.iter().all(|(_, s)| *s == Sig::Stop));
        assert_eq!(step.signals[0].0.pid, 20, "parents first");
        // Within the grace nothing more; after it, TERM then CONT.
        assert!(g.observe(&obs, &live(&deep), t(4.0)).signals.is_empty());
        let step = g.observe(&obs, &live(&deep), t(8.5));
        let n = obs.members.len();
        assert_eq!(step.signals.len(), 2 * n);
        assert!(step.signals[..n].iter().all(|(_, s)| *s == Sig::Term));
        assert!(step.signals[n..].iter().all(|(_, s)| *s == Sig::Cont));
        // One survivor gets SIGKILL after another grace.
        let survivor = vec![deep[2].clone()];
        let step = g.observe(&Observation::default(), &live(&survivor), t(14.0));
        assert_eq!(step.signals, vec![(deep[2].id, Sig::Kill)]);
        assert_eq!(g.handling(), 1);
        let step = g.observe(&Observation::default(), &HashSet::new(), t(20.0));
        assert!(step.signals.is_empty());
        assert_eq!(g.handling(), 0);
        // Cool-off over: half-open, then closed when all is quiet.
        let step = g.observe(&Observation::default(), &HashSet::new(), t(104.0));
        assert_eq!(
            step.changes,
            vec![GroupChange::HalfOpened, GroupChange::Closed]
        );
        assert_eq!(g.state(), GroupState::Watching);
    }

    #[test]
    fn an_open_circuit_takes_in_respawned_processes() {
        let sel = Selector::Command("*crasher*".into());
        let mut g = GroupTracker::new("crash", limits());
        let mk = |pid: u32| vec![p(10, 1, "sh supervisor.sh"), p(pid, 10, "sh crasher.sh")];
        let mut respawn = None;
        for (i, pid) in (100..110).enumerate() {
            let procs = mk(pid);
            let step = g.observe(
                &observe(&procs, &sel, &HashSet::new()),
                &live(&procs),
                t(i as f64),
            );
            if let Some(GroupChange::Tripped(trip)) = step.changes.first() {
                assert_eq!(trip.condition, Condition::CrashLoop);
                assert_eq!(trip.respawns.len(), 3);
                respawn = Some(i);
                break;
            }
        }
        assert_eq!(respawn, Some(3), "the third respawn is one too many");
        let procs = mk(200);
        let obs = observe(&procs, &sel, &HashSet::new());
        let step = g.circuit_break(&obs, t(10.0));
        assert_eq!(step.signals, vec![(procs[1].id, Sig::Stop)]);
        // The supervisor started another one meanwhile: stopped as well.
        let procs = mk(201);
        let obs = observe(&procs, &sel, &HashSet::new());
        let step = g.enforce(&obs, t(10.1));
        assert_eq!(step.signals, vec![(procs[1].id, Sig::Stop)]);
        assert_eq!(g.state(), GroupState::Open);
    }

    #[test]
    fn stop_mode_freezes_and_thaws() {
        let mut l = limits();
        l.on_break = BreakMode::Stop;
        let sel = Selector::Command("*fork.sh*".into());
        let mut g = GroupTracker::new("f", l);
        let procs = chain_tree(5);
        let obs = observe(&procs, &sel, &HashSet::new());
        g.circuit_break(&obs, t(0.0));
        // Never terminated while frozen.
        let step = g.observe(&obs, &live(&procs), t(50.0));
        assert!(step.signals.is_empty(), "{step:?}");
        let step = g.observe(&obs, &live(&procs), t(101.0));
        assert!(step.signals.iter().all(|(_, s)| *s == Sig::Cont));
        assert_eq!(step.signals.len(), obs.members.len());
        // Still too deep once thawed: trips again.
        assert!(matches!(step.changes[1], GroupChange::Tripped(_)));
    }

    #[test]
    fn reset_terminates_and_clears_respawns() {
        let sel = Selector::Command("*fork.sh*".into());
        let mut g = GroupTracker::new("f", limits());
        let procs = chain_tree(5);
        let obs = observe(&procs, &sel, &HashSet::new());
        g.observe(&obs, &live(&procs), t(0.0));
        let step = g.reset(&obs, t(1.0));
        let n = obs.members.len();
        assert_eq!(step.signals.len(), 2 * n);
        assert_eq!(step.signals[0].1, Sig::Term);
        assert_eq!(g.state(), GroupState::Watching);
        let step = g.observe(&Observation::default(), &live(&procs), t(7.0));
        assert!(step.signals.iter().all(|(_, s)| *s == Sig::Kill));
    }

    #[test]
    fn a_trip_that_clears_by_itself_says_so() {
        let sel = Selector::Command("*fork.sh*".into());
        let mut g = GroupTracker::new("f", limits());
        let deep = chain_tree(5);
        g.observe(&observe(&deep, &sel, &HashSet::new()), &live(&deep), t(0.0));
        assert_eq!(g.state(), GroupState::Tripped);
        let step = g.observe(&Observation::default(), &HashSet::new(), t(1.0));
        assert_eq!(step.changes, vec![GroupChange::Cleared]);
    }
}
