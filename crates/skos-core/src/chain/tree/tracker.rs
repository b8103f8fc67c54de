//! [`GroupTracker`]: a process group's successive observations turned into
//! trips, and a command into the signals to send (SIGSTOP → SIGTERM →
//! SIGKILL after the grace period).
//!
//! Respawns are counted from two sources, each root once: snapshots (a
//! root not in the previous snapshot is new: [`GroupTracker::observe`])
//! and, where the agent hears the kernel's process events, the start of a
//! root as it happens ([`GroupTracker::started`]), so a process that lives
//! less than one monitor interval is counted even when no snapshot saw it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::Serialize;

use super::{Observation, ProcId, ProcSummary};
use crate::chain::Condition;
use crate::config::{BreakMode, GroupLimits};
use crate::level::secs;
use crate::timefmt::{self, Timestamp};

/// Most respawn times remembered per group.
const MAX_STARTS: usize = 1024;

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
    /// Snapshots observed so far.
    scans: u64,
    /// Roots counted by [`GroupTracker::started`], with the number of
    /// snapshots observed when they were: a snapshot read before the
    /// start was heard may still arrive without them, and must not count
    /// them again once the next does see them.
    heard: HashMap<ProcId, u64>,
    /// The last snapshot's observation (what a start heard between
    /// snapshots is judged with).
    last: Observation,
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
            scans: 0,
            heard: HashMap::new(),
            last: Observation::default(),
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
            for id in roots.difference(&self.known_roots) {
                if !self.heard.contains_key(id) {
                    self.starts.push_back(now);
                }
            }
        }
        self.first_scan = false;
        self.known_roots = roots;
        self.scans += 1;
        // The snapshot observed before this one may have been read before
        // a start was heard; this one was asked for after that one was
        // observed (the agent asks for a scan only once the last is
        // judged), so a root heard before it is in it while alive, and in
        // `known_roots` from now on.
        let scans = self.scans;
        self.heard.retain(|_, at| scans < *at + 2);
        self.prune(now);
        self.last = obs.clone();

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
        self.judge(obs, now, &mut out);
        out
    }

    /// Forget respawns older than the window (and any beyond the most
    /// remembered).
    fn prune(&mut self, now: Timestamp) {
        let window = secs(self.limits.respawn_window_seconds);
        while self.starts.front().is_some_and(|t| now - *t > window)
            || self.starts.len() > MAX_STARTS
        {
            self.starts.pop_front();
        }
    }

    /// A root of the group started at `now`, heard as it happened (the
    /// kernel's process events) rather than found in a snapshot: count it
    /// as a respawn unless a snapshot or an earlier event already did,
    /// judge the limits at once with the last snapshot's tree, and under
    /// an open circuit take it in (stop or terminate) without waiting for
    /// the next snapshot. Before the first snapshot nothing is known to
    /// compare with, and a start heard then is still a start.
    pub fn started(&mut self, id: ProcId, now: Timestamp) -> GroupStep {
        let mut out = GroupStep::default();
        if self.known_roots.contains(&id) || self.heard.contains_key(&id) {
            return out;
        }
        self.heard.insert(id, self.scans);
        if self.heard.len() > MAX_STARTS {
            // Bounded: the oldest go (each at most one recount).
            let oldest = self.heard.values().copied().min().unwrap_or(0);
            self.heard.retain(|_, at| *at > oldest);
        }
        self.starts.push_back(now);
        self.prune(now);
        match self.state {
            GroupState::Open if self.until.is_some_and(|u| now < u) => {
                self.take_in(id, now, &mut out);
            }
            GroupState::Open | GroupState::HalfOpen => {}
            GroupState::Watching | GroupState::Tripped => {
                let last = std::mem::take(&mut self.last);
                self.judge(&last, now, &mut out);
                self.last = last;
            }
        }
        out
    }

    /// Judge the limits on `obs` and the respawns counted so far.
    fn judge(&mut self, obs: &Observation, now: Timestamp, out: &mut GroupStep) {
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
    use super::super::tests::{chain_tree, cmd, p};
    use super::super::{observe, ProcInfo};
    use super::*;
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
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

    #[test]
    fn deep_tree_trips_then_stop_then_term_then_kill() {
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("forky", limits());
        let small = chain_tree(2);
        let step = g.observe(
            &observe(&small, &sel, &HashSet::new(), &|_| true),
            &live(&small),
            t(0.0),
        );
        assert!(step.changes.is_empty());
        let deep = chain_tree(5);
        let obs = observe(&deep, &sel, &HashSet::new(), &|_| true);
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
        let sel = cmd("*crasher*");
        let mut g = GroupTracker::new("crash", limits());
        let mk = |pid: u32| vec![p(10, 1, "sh supervisor.sh"), p(pid, 10, "sh crasher.sh")];
        let mut respawn = None;
        for (i, pid) in (100..110).enumerate() {
            let procs = mk(pid);
            let step = g.observe(
                &observe(&procs, &sel, &HashSet::new(), &|_| true),
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
        let obs = observe(&procs, &sel, &HashSet::new(), &|_| true);
        let step = g.circuit_break(&obs, t(10.0));
        assert_eq!(step.signals, vec![(procs[1].id, Sig::Stop)]);
        // The supervisor started another one meanwhile: stopped as well.
        let procs = mk(201);
        let obs = observe(&procs, &sel, &HashSet::new(), &|_| true);
        let step = g.enforce(&obs, t(10.1));
        assert_eq!(step.signals, vec![(procs[1].id, Sig::Stop)]);
        assert_eq!(g.state(), GroupState::Open);
    }

    #[test]
    fn stop_mode_freezes_and_thaws() {
        let mut l = limits();
        l.on_break = BreakMode::Stop;
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("f", l);
        let procs = chain_tree(5);
        let obs = observe(&procs, &sel, &HashSet::new(), &|_| true);
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
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("f", limits());
        let procs = chain_tree(5);
        let obs = observe(&procs, &sel, &HashSet::new(), &|_| true);
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
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("f", limits());
        let deep = chain_tree(5);
        g.observe(
            &observe(&deep, &sel, &HashSet::new(), &|_| true),
            &live(&deep),
            t(0.0),
        );
        assert_eq!(g.state(), GroupState::Tripped);
        let step = g.observe(&Observation::default(), &HashSet::new(), t(1.0));
        assert_eq!(step.changes, vec![GroupChange::Cleared]);
    }

    #[test]
    fn signals_are_named_as_kill_names_them() {
        for (sig, name) in [
            (Sig::Stop, "SIGSTOP"),
            (Sig::Cont, "SIGCONT"),
            (Sig::Term, "SIGTERM"),
            (Sig::Kill, "SIGKILL"),
        ] {
            assert_eq!(sig.as_str(), name);
            assert_eq!(serde_json::to_value(sig).unwrap(), &name[3..]);
        }
    }

    #[test]
    fn a_tracker_tells_its_name_and_how_long_it_is_open() {
        let mut g = GroupTracker::new("forky", limits());
        assert_eq!(g.name(), "forky");
        assert_eq!(g.until(), None, "not open");
        let procs = chain_tree(2);
        let obs = observe(&procs, &cmd("*fork.sh*"), &HashSet::new(), &|_| true);
        g.circuit_break(&obs, t(3.0));
        assert_eq!(g.until(), Some(t(103.0)), "the cool-off from the break");
        assert_eq!(g.view().until, Some(t(103.0)));
        g.reset(&obs, t(4.0));
        assert_eq!(g.until(), None);
    }

    #[test]
    fn a_tree_exactly_max_depth_deep_is_within_its_limit() {
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("d", limits());
        let at_limit = chain_tree(3);
        let obs = observe(&at_limit, &sel, &HashSet::new(), &|_| true);
        assert_eq!(obs.depth, 3);
        assert!(g.observe(&obs, &live(&at_limit), t(0.0)).changes.is_empty());
        assert_eq!(g.state(), GroupState::Watching);
        let over = chain_tree(4);
        let step = g.observe(
            &observe(&over, &sel, &HashSet::new(), &|_| true),
            &live(&over),
            t(1.0),
        );
        let Some(GroupChange::Tripped(trip)) = step.changes.first() else {
            panic!("{step:?}")
        };
        assert_eq!(trip.condition, Condition::DepthExceeded);
        assert_eq!((trip.value, trip.limit), (4, 3));
    }

    #[test]
    fn exactly_max_descendants_is_within_the_limit() {
        let sel = cmd("*fork.sh*");
        let wide = |children: u32| {
            let mut v = vec![p(1, 0, "/sbin/init"), p(20, 1, "sh fork.sh")];
            v.extend((0..children).map(|i| p(100 + i, 20, "sleep 30")));
            v
        };
        let mut g = GroupTracker::new("w", limits());
        let at_limit = wide(10);
        let obs = observe(&at_limit, &sel, &HashSet::new(), &|_| true);
        assert_eq!((obs.depth, obs.descendants), (1, 10));
        assert!(g.observe(&obs, &live(&at_limit), t(0.0)).changes.is_empty());
        let over = wide(11);
        let step = g.observe(
            &observe(&over, &sel, &HashSet::new(), &|_| true),
            &live(&over),
            t(1.0),
        );
        let Some(GroupChange::Tripped(trip)) = step.changes.first() else {
            panic!("{step:?}")
        };
        assert_eq!(trip.condition, Condition::DescendantsExceeded);
        assert_eq!((trip.value, trip.limit), (11, 10));
    }

    #[test]
    fn the_grace_ends_exactly_grace_seconds_after_the_stop() {
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("g", limits());
        let procs = chain_tree(2);
        let obs = observe(&procs, &sel, &HashSet::new(), &|_| true);
        g.circuit_break(&obs, t(3.0));
        assert!(g.observe(&obs, &live(&procs), t(7.9)).signals.is_empty());
        let step = g.observe(&obs, &live(&procs), t(8.0));
        let n = obs.members.len();
        assert_eq!(step.signals.len(), 2 * n, "{step:?}");
        assert!(step.signals[..n].iter().all(|(_, s)| *s == Sig::Term));
    }

    #[test]
    fn a_respawn_counts_for_exactly_the_window() {
        let sel = cmd("*crasher*");
        let mk = |pid: u32| vec![p(10, 1, "sh supervisor.sh"), p(pid, 10, "sh crasher.sh")];
        let mut g = GroupTracker::new("crash", limits());
        let seen = |g: &mut GroupTracker, pid: u32, at: f64| {
            let procs = mk(pid);
            let step = g.observe(
                &observe(&procs, &sel, &HashSet::new(), &|_| true),
                &live(&procs),
                t(at),
            );
            assert!(step.changes.is_empty(), "{step:?}");
            g.respawns()
        };
        assert_eq!(
            seen(&mut g, 100, 0.0),
            0,
            "the first scan finds, not respawns"
        );
        assert_eq!(seen(&mut g, 101, 1.0), 1);
        assert_eq!(seen(&mut g, 102, 2.0), 2);
        assert_eq!(seen(&mut g, 102, 61.0), 2, "the first is exactly 60 s old");
        assert_eq!(seen(&mut g, 102, 61.5), 1);
        assert_eq!(g.view().respawns, 1);
        assert_eq!(seen(&mut g, 102, 62.5), 0);
    }

    fn pid(pid: u32) -> ProcId {
        ProcId {
            pid,
            start: u64::from(pid) * 10,
        }
    }

    /// A supervisor (10) and, when given, the crasher it runs.
    fn crash_snapshot(g: &mut GroupTracker, crasher: Option<u32>, at: f64) -> GroupStep {
        let mut procs = vec![p(10, 1, "sh supervisor.sh")];
        procs.extend(crasher.map(|c| p(c, 10, "sh crasher.sh")));
        let obs = observe(&procs, &cmd("*crasher*"), &HashSet::new(), &|_| true);
        g.observe(&obs, &live(&procs), t(at))
    }

    #[test]
    fn starts_heard_between_snapshots_are_respawns_no_snapshot_saw() {
        let mut g = GroupTracker::new("crash", limits());
        assert!(crash_snapshot(&mut g, None, 0.0).changes.is_empty());
        // Three crashers, each gone before the next snapshot: only the
        // events know of them. The third is one over max_respawns 2, and
        // trips at once, not at the next snapshot.
        assert!(g.started(pid(101), t(0.1)).changes.is_empty());
        assert!(g.started(pid(102), t(0.2)).changes.is_empty());
        assert_eq!(g.respawns(), 2);
        let step = g.started(pid(103), t(0.3));
        let Some(GroupChange::Tripped(trip)) = step.changes.first() else {
            panic!("no trip: {step:?}");
        };
        assert_eq!(trip.condition, Condition::CrashLoop);
        assert_eq!((trip.value, trip.limit), (3, 2));
        assert_eq!(trip.respawns, vec![t(0.1), t(0.2), t(0.3)]);
        assert_eq!(g.state(), GroupState::Tripped);
        // The snapshot after finds none of them: still tripped, not cleared.
        assert!(crash_snapshot(&mut g, None, 0.5).changes.is_empty());
        assert_eq!(g.respawns(), 3);
    }

    #[test]
    fn a_root_heard_and_then_seen_counts_once() {
        let mut g = GroupTracker::new("crash", limits());
        crash_snapshot(&mut g, None, 0.0);
        g.started(pid(101), t(0.1));
        // Heard twice (a second event for the same process): once.
        g.started(pid(101), t(0.1));
        assert_eq!(g.respawns(), 1);
        // A snapshot read before the start was heard arrives after it,
        // without the root; the next one sees it alive.
        crash_snapshot(&mut g, None, 0.5);
        crash_snapshot(&mut g, Some(101), 1.0);
        assert_eq!(g.respawns(), 1, "heard, then seen: one respawn");
        crash_snapshot(&mut g, Some(101), 1.5);
        crash_snapshot(&mut g, Some(101), 2.0);
        assert_eq!(g.respawns(), 1, "a long-lived root is never counted again");
        // Seen first, heard late (the event read after the snapshot).
        crash_snapshot(&mut g, Some(102), 2.5);
        assert_eq!(g.respawns(), 2);
        g.started(pid(102), t(2.5));
        assert_eq!(g.respawns(), 2, "seen, then heard: one respawn");
    }

    #[test]
    fn a_start_heard_under_an_open_circuit_is_taken_in_at_once() {
        let mut g = GroupTracker::new("crash", limits());
        crash_snapshot(&mut g, Some(100), 0.0);
        let procs = [p(10, 1, "sh supervisor.sh"), p(100, 10, "sh crasher.sh")];
        let obs = observe(&procs, &cmd("*crasher*"), &HashSet::new(), &|_| true);
        let step = g.circuit_break(&obs, t(1.0));
        assert_eq!(step.signals, vec![(pid(100), Sig::Stop)]);
        let step = g.started(pid(104), t(2.0));
        assert_eq!(step.signals, vec![(pid(104), Sig::Stop)]);
        assert!(step.changes.is_empty(), "an open circuit raises nothing");
        // Once the cool-off is over, a start waits for the next snapshot.
        assert!(g.started(pid(105), t(200.0)).signals.is_empty());
    }

    #[test]
    fn at_most_max_starts_respawns_are_remembered() {
        let mut g = GroupTracker::new("storm", limits());
        g.observe(&Observation::default(), &HashSet::new(), t(0.0));
        let roots: Vec<ProcId> = (0..MAX_STARTS as u32 + 76)
            .map(|i| ProcId {
                pid: 1000 + i,
                start: 1,
            })
            .collect();
        let obs = Observation {
            roots: roots.clone(),
            ..Default::default()
        };
        let step = g.observe(&obs, &roots.iter().copied().collect(), t(1.0));
        assert_eq!(g.respawns(), MAX_STARTS);
        let Some(GroupChange::Tripped(trip)) = step.changes.first() else {
            panic!("{step:?}")
        };
        assert_eq!(trip.condition, Condition::CrashLoop);
        assert_eq!(trip.value, MAX_STARTS as u64);
    }

    #[test]
    fn half_open_thaws_only_the_processes_still_alive() {
        let mut l = limits();
        l.on_break = BreakMode::Stop;
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("f", l);
        let procs = chain_tree(2);
        let obs = observe(&procs, &sel, &HashSet::new(), &|_| true);
        assert_eq!(g.circuit_break(&obs, t(0.0)).signals.len(), 3);
        // The sleep (99) ended while frozen.
        let left: Vec<ProcInfo> = procs.iter().filter(|q| q.id.pid != 99).cloned().collect();
        let step = g.observe(
            &observe(&left, &sel, &HashSet::new(), &|_| true),
            &live(&left),
            t(100.0),
        );
        assert_eq!(
            step.signals,
            vec![(procs[2].id, Sig::Cont), (procs[3].id, Sig::Cont)]
        );
        assert_eq!(
            step.changes,
            vec![GroupChange::HalfOpened, GroupChange::Closed]
        );
        assert_eq!(g.handling(), 0);
    }

    #[test]
    fn an_unanswered_trip_is_raised_again_after_a_whole_cool_off() {
        let sel = cmd("*fork.sh*");
        let mut g = GroupTracker::new("f", limits());
        let deep = chain_tree(5);
        let obs = observe(&deep, &sel, &HashSet::new(), &|_| true);
        let step = g.observe(&obs, &live(&deep), t(0.0));
        assert!(matches!(step.changes[..], [GroupChange::Tripped(_)]));
        let step = g.observe(&obs, &live(&deep), t(100.0));
        assert!(step.changes.is_empty(), "exactly the cool-off: {step:?}");
        let step = g.observe(&obs, &live(&deep), t(100.5));
        assert!(matches!(step.changes[..], [GroupChange::Tripped(_)]));
        let step = g.observe(&obs, &live(&deep), t(150.0));
        assert!(step.changes.is_empty(), "counted from the last alert");
    }
}
