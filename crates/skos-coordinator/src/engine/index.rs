//! Where the engine finds one node's entries without looking at any other
//! node's: pending commands, fixes under verification, open alerts and mesh
//! ladders are kept by node, with the few indexes across nodes the engine
//! needs (the node each action id was sent to, deadlines in order, the
//! alerts and ladders about a peer node, the nodes watching a peer).
//!
//! Every operation a message triggers is a lookup in these maps
//! (O(log n)) or a walk over one node's own entries; only the
//! [`Engine::snapshot`](super::Engine::snapshot) of everything walks them
//! all.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use skos_core::events::{peer_node_of, ProblemKey};
use skos_core::protocol::Alert;
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::kinds::mesh::Ladder;
use super::state::{Pending, Verification};

/// Entries kept by node, then by key: one node's entries are one map.
///
/// Values are boxed: a node has one or a few entries, and a map's first
/// block has room for eleven, so eleven unboxed values would be reserved
/// for each node that has one.
#[derive(Debug, Clone)]
pub(super) struct PerNode<K, V> {
    /// Never holds an empty map: a node without entries is removed.
    map: BTreeMap<NodeName, BTreeMap<K, Box<V>>>,
}

impl<K, V> Default for PerNode<K, V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<K: Ord, V> PerNode<K, V> {
    /// No entry for any node.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `node`'s entry under `key`.
    pub(super) fn get<Q>(&self, node: &NodeName, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.map.get(node)?.get(key).map(|v| &**v)
    }

    /// `node`'s entry under `key`, to change it.
    pub(super) fn get_mut<Q>(&mut self, node: &NodeName, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.map.get_mut(node)?.get_mut(key).map(|v| &mut **v)
    }

    /// Whether `node` has an entry under `key`.
    pub(super) fn contains<Q>(&self, node: &NodeName, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(node, key).is_some()
    }

    /// Keep `value` under `key` for `node`; returns the entry it replaces.
    pub(super) fn insert(&mut self, node: &NodeName, key: K, value: V) -> Option<V> {
        self.map
            .entry(node.clone())
            .or_default()
            .insert(key, Box::new(value))
            .map(|v| *v)
    }

    /// Take `node`'s entry under `key` out (a node left without entries is
    /// forgotten).
    pub(super) fn remove<Q>(&mut self, node: &NodeName, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let entries = self.map.get_mut(node)?;
        let old = entries.remove(key)?;
        if entries.is_empty() {
            self.map.remove(node);
        }
        Some(*old)
    }

    /// Take out `node`'s entries for which `take` is true, in key order.
    pub(super) fn take_of(
        &mut self,
        node: &NodeName,
        mut take: impl FnMut(&V) -> bool,
    ) -> Vec<(K, V)> {
        let Some(entries) = self.map.get_mut(node) else {
            return Vec::new();
        };
        let (taken, kept): (BTreeMap<K, Box<V>>, BTreeMap<K, Box<V>>) = std::mem::take(entries)
            .into_iter()
            .partition(|(_, v)| take(v));
        if kept.is_empty() {
            self.map.remove(node);
        } else {
            *entries = kept;
        }
        taken.into_iter().map(|(k, v)| (k, *v)).collect()
    }

    /// `node`'s entries, in key order.
    pub(super) fn of<'a>(&'a self, node: &NodeName) -> impl Iterator<Item = (&'a K, &'a V)> + 'a {
        self.map
            .get(node)
            .into_iter()
            .flat_map(|entries| entries.iter().map(|(k, v)| (k, &**v)))
    }

    /// `node`'s entries, in key order, to change them.
    pub(super) fn of_mut<'a>(
        &'a mut self,
        node: &NodeName,
    ) -> impl Iterator<Item = (&'a K, &'a mut V)> + 'a {
        self.map
            .get_mut(node)
            .into_iter()
            .flat_map(|entries| entries.iter_mut().map(|(k, v)| (k, &mut **v)))
    }

    /// Every entry, in (node, key) order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&NodeName, &K, &V)> {
        self.map
            .iter()
            .flat_map(|(n, entries)| entries.iter().map(move |(k, v)| (n, k, &**v)))
    }

    /// Every value, in (node, key) order.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, _, v)| v)
    }

    /// Every node with at least one entry.
    pub(super) fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.map.keys()
    }
}

/// Commands sent and not yet answered (or closed as `no_result`), by node
/// and action id, with the node each action id was sent to (so a result
/// from another node is recognised as foreign) and their deadlines in
/// order.
#[derive(Debug, Clone, Default)]
pub(super) struct Pendings {
    by_node: PerNode<String, Pending>,
    /// The node each pending action id was sent to.
    targets: BTreeMap<String, NodeName>,
    /// (deadline in the coordinator's clock, action id) of every pending
    /// command that has a deadline.
    deadlines: BTreeSet<(Timestamp, String)>,
}

impl Pendings {
    /// How many commands are pending, all nodes together.
    pub(super) fn len(&self) -> usize {
        self.targets.len()
    }

    /// No command is pending.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Whether `action_id` is pending.
    pub(super) fn contains_key(&self, action_id: &str) -> bool {
        self.targets.contains_key(action_id)
    }

    /// The pending command `action_id`.
    pub(super) fn get(&self, action_id: &str) -> Option<&Pending> {
        let node = self.targets.get(action_id)?;
        self.by_node.get(node, action_id)
    }

    /// Keep `pending` under `action_id`; returns the command it replaces.
    pub(super) fn insert(&mut self, action_id: String, pending: Pending) -> Option<Pending> {
        let old = self.remove(&action_id);
        if let Some(deadline) = pending.deadline {
            self.deadlines.insert((deadline, action_id.clone()));
        }
        let node = pending.node.clone();
        self.by_node.insert(&node, action_id.clone(), pending);
        self.targets.insert(action_id, node);
        old
    }

    /// Take the pending command `action_id` out.
    pub(super) fn remove(&mut self, action_id: &str) -> Option<Pending> {
        let node = self.targets.remove(action_id)?;
        let pending = self.by_node.remove(&node, action_id)?;
        if let Some(deadline) = pending.deadline {
            self.deadlines.remove(&(deadline, action_id.to_string()));
        }
        Some(pending)
    }

    /// Every pending action id, in order.
    #[cfg(test)]
    pub(super) fn keys(&self) -> impl Iterator<Item = &String> {
        self.targets.keys()
    }

    /// Every pending command, in action id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Pending)> {
        self.targets
            .iter()
            .filter_map(|(id, node)| Some((id, self.by_node.get(node, id.as_str())?)))
    }

    /// `node`'s pending commands, in action id order.
    pub(super) fn of<'a>(
        &'a self,
        node: &NodeName,
    ) -> impl Iterator<Item = (&'a String, &'a Pending)> + 'a {
        self.by_node.of(node)
    }

    /// The action ids of the commands whose deadline is `expired`, in action
    /// id order. `expired` must hold for every deadline before one it holds
    /// for (it is a "before some instant" test).
    pub(super) fn due(&self, expired: impl Fn(Timestamp) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| expired(*deadline))
            .map(|(_, id)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// Fixes waiting for a heartbeat that shows they worked, by node, in the
/// order they were started, with their deadlines in order.
#[derive(Debug, Clone, Default)]
pub(super) struct Verifications {
    /// By node, then by when they were started (a sequence number).
    by_node: PerNode<u64, Verification>,
    /// (deadline, sequence number) of every verification, and its node.
    deadlines: BTreeMap<(Timestamp, u64), NodeName>,
    /// The next sequence number.
    next: u64,
}

impl Verifications {
    /// No fix is under verification.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Start verifying a fix.
    pub(super) fn push(&mut self, v: Verification) {
        let seq = self.next;
        self.next += 1;
        let node = v.node.clone();
        self.deadlines.insert((v.deadline, seq), node.clone());
        self.by_node.insert(&node, seq, v);
    }

    /// `node`'s verifications, in the order they were started.
    pub(super) fn of<'a>(&'a self, node: &NodeName) -> impl Iterator<Item = &'a Verification> + 'a {
        self.by_node.of(node).map(|(_, v)| v)
    }

    /// `node`'s verifications, in the order they were started, to change
    /// what they have seen (never their deadline: that is indexed).
    pub(super) fn of_mut<'a>(
        &'a mut self,
        node: &NodeName,
    ) -> impl Iterator<Item = &'a mut Verification> + 'a {
        self.by_node.of_mut(node).map(|(_, v)| v)
    }

    /// Take out `node`'s verifications for which `take` is true, in the
    /// order they were started.
    pub(super) fn take_of(
        &mut self,
        node: &NodeName,
        take: impl FnMut(&Verification) -> bool,
    ) -> Vec<Verification> {
        let taken = self.by_node.take_of(node, take);
        for (seq, v) in &taken {
            self.deadlines.remove(&(v.deadline, *seq));
        }
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// Take out every verification whose deadline is at or before `now`,
    /// in the order they were started.
    pub(super) fn take_due(&mut self, now: Timestamp) -> Vec<Verification> {
        let mut due: Vec<(u64, Timestamp, NodeName)> = self
            .deadlines
            .range(..=(now, u64::MAX))
            .map(|(&(deadline, seq), node)| (seq, deadline, node.clone()))
            .collect();
        due.sort_by_key(|(seq, _, _)| *seq);
        let mut out = Vec::with_capacity(due.len());
        for (seq, deadline, node) in due {
            self.deadlines.remove(&(deadline, seq));
            if let Some(v) = self.by_node.remove(&node, &seq) {
                out.push(v);
            }
        }
        out
    }

    /// Every verification, in the order they were started.
    pub(super) fn all(&self) -> Vec<&Verification> {
        let mut all: Vec<(u64, &Verification)> =
            self.by_node.iter().map(|(_, seq, v)| (*seq, v)).collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, v)| v).collect()
    }

    /// Every node with a verification.
    pub(super) fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.by_node.nodes()
    }
}

/// What is about an alert: the alert itself, or a mesh ladder healing one.
pub(super) trait AboutAlert {
    /// The alert it is about.
    fn alert(&self) -> &Alert;
}

impl AboutAlert for Alert {
    fn alert(&self) -> &Alert {
        self
    }
}

impl AboutAlert for Ladder {
    fn alert(&self) -> &Alert {
        &self.alert
    }
}

/// The peer node an alert names (`details.peer_node`), if it is a node
/// name.
fn peer_of(alert: &Alert) -> Option<NodeName> {
    NodeName::parse(peer_node_of(alert)?).ok()
}

/// Entries by (node, problem): open alerts, mesh ladders. Those whose alert
/// names a peer node are also found by that peer.
#[derive(Debug, Clone)]
pub(super) struct ByProblem<V> {
    entries: PerNode<ProblemKey, V>,
    /// The (node, problem) of every entry whose alert names this peer node.
    by_peer: BTreeMap<NodeName, BTreeSet<(NodeName, ProblemKey)>>,
}

impl<V> Default for ByProblem<V> {
    fn default() -> Self {
        Self {
            entries: PerNode::default(),
            by_peer: BTreeMap::new(),
        }
    }
}

/// Open alerts, by (node, problem).
pub(super) type OpenAlerts = ByProblem<Alert>;

/// Mesh problems being healed step by step, by (node, problem).
pub(super) type Ladders = ByProblem<Ladder>;

impl<V: AboutAlert> ByProblem<V> {
    /// No entry for any node.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `problem` on `node`.
    pub(super) fn get(&self, node: &NodeName, problem: &ProblemKey) -> Option<&V> {
        self.entries.get(node, problem)
    }

    /// The entry for `problem` on `node`, to change it (not the alert it is
    /// about: that is indexed).
    pub(super) fn get_mut(&mut self, node: &NodeName, problem: &ProblemKey) -> Option<&mut V> {
        self.entries.get_mut(node, problem)
    }

    /// Whether there is an entry for `problem` on `node`.
    pub(super) fn contains(&self, node: &NodeName, problem: &ProblemKey) -> bool {
        self.entries.contains(node, problem)
    }

    /// Keep `value` for `problem` on `node`; returns the entry it replaces.
    pub(super) fn insert(&mut self, node: &NodeName, problem: ProblemKey, value: V) -> Option<V> {
        let old = self.remove(node, &problem);
        if let Some(peer) = peer_of(value.alert()) {
            self.by_peer
                .entry(peer)
                .or_default()
                .insert((node.clone(), problem.clone()));
        }
        self.entries.insert(node, problem, value);
        old
    }

    /// Take out the entry for `problem` on `node`.
    pub(super) fn remove(&mut self, node: &NodeName, problem: &ProblemKey) -> Option<V> {
        let old = self.entries.remove(node, problem)?;
        if let Some(peer) = peer_of(old.alert()) {
            if let Some(about) = self.by_peer.get_mut(&peer) {
                about.remove(&(node.clone(), problem.clone()));
                if about.is_empty() {
                    self.by_peer.remove(&peer);
                }
            }
        }
        Some(old)
    }

    /// `node`'s entries, in problem order.
    pub(super) fn of<'a>(
        &'a self,
        node: &NodeName,
    ) -> impl Iterator<Item = (&'a ProblemKey, &'a V)> + 'a {
        self.entries.of(node)
    }

    /// Every entry as ((node, problem), value), in (node, problem) order.
    pub(super) fn iter(&self) -> impl Iterator<Item = ((&NodeName, &ProblemKey), &V)> {
        self.entries.iter().map(|(n, p, v)| ((n, p), v))
    }

    /// Every value, in (node, problem) order.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values()
    }

    /// Every node with at least one entry.
    pub(super) fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.entries.nodes()
    }

    /// The entries whose alert names `peer` as its peer node, in (node,
    /// problem) order.
    pub(super) fn about_peer<'a>(
        &'a self,
        peer: &NodeName,
    ) -> impl Iterator<Item = (&'a NodeName, &'a ProblemKey, &'a V)> + 'a {
        self.by_peer
            .get(peer)
            .into_iter()
            .flatten()
            .filter_map(|(n, p)| Some((n, p, self.entries.get(n, p)?)))
    }
}

impl<'a, V: AboutAlert> IntoIterator for &'a ByProblem<V> {
    type Item = ((&'a NodeName, &'a ProblemKey), &'a V);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    /// Every entry as ((node, problem), value), in (node, problem) order.
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Which nodes have each node as a mesh peer, from the coordinator's
/// config (`mesh.topology`): the only witnesses of a peer node.
#[derive(Debug, Clone, Default)]
pub(super) struct Watchers(BTreeMap<NodeName, BTreeSet<NodeName>>);

impl Watchers {
    /// From peer → the nodes that have a tunnel to it.
    pub(super) fn new(witnesses: BTreeMap<NodeName, BTreeSet<NodeName>>) -> Self {
        Self(witnesses)
    }

    /// The nodes that watch `peer`, in name order.
    pub(super) fn of<'a>(&'a self, peer: &NodeName) -> impl Iterator<Item = &'a NodeName> + 'a {
        self.0.get(peer).into_iter().flatten()
    }

    /// Whether `node` is configured to have `peer` as a mesh peer.
    pub(super) fn watches(&self, node: &NodeName, peer: &NodeName) -> bool {
        self.0.get(peer).is_some_and(|w| w.contains(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use skos_core::protocol::Severity;

    fn t(s: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .expect("a valid time")
    }

    fn node(n: &str) -> NodeName {
        NodeName::parse(n).expect("a valid node name")
    }

    fn alert(n: &str, sensor: &str, peer: Option<&str>) -> Alert {
        let mut details = serde_json::json!({"event": "peer_unreachable", "sensor": sensor});
        if let Some(p) = peer {
            details["peer_node"] = serde_json::json!(p);
        }
        serde_json::from_value(serde_json::json!({
            "agent_id": "mesh", "type": "mesh", "severity": "critical", "node": n,
            "message": "", "details": details, "timestamp": "2024-01-01T00:00:00Z"
        }))
        .expect("an alert")
    }

    fn pending(n: &str, deadline: i64) -> Pending {
        let alert = alert(n, "wg0", None);
        Pending {
            node: node(n),
            problem: alert.problem(),
            action: "restart_wireguard".into(),
            severity: Severity::Critical,
            alert,
            trial: false,
            sent_at: Some(t(0)),
            deadline: Some(t(deadline)),
            reset: None,
            command: None,
        }
    }

    #[test]
    fn pending_commands_are_found_by_id_and_by_node_only() {
        let mut p = Pendings::default();
        p.insert("x".into(), pending("a", 10));
        p.insert("y".into(), pending("b", 20));
        p.insert("z".into(), pending("a", 30));
        assert_eq!(p.len(), 3);
        assert_eq!(p.get("y").map(|p| p.node.as_str()), Some("b"));
        let of_a: Vec<&String> = p.of(&node("a")).map(|(id, _)| id).collect();
        assert_eq!(of_a, ["x", "z"]);
        assert_eq!(p.due(|d| d < t(25)), ["x", "y"]);
        // The same id kept again for another node moves it.
        p.insert("x".into(), pending("b", 40));
        assert_eq!(p.of(&node("a")).count(), 1);
        assert_eq!(p.of(&node("b")).count(), 2);
        assert_eq!(p.due(|d| d < t(25)), ["y"]);
        assert!(p.remove("x").is_some() && p.remove("x").is_none());
        assert!(p.remove("y").is_some() && p.remove("z").is_some());
        assert!(p.is_empty() && p.by_node.is_empty() && p.deadlines.is_empty());
        assert!(p.due(|_| true).is_empty());
    }

    #[test]
    fn entries_about_a_peer_follow_inserts_and_removals() {
        let mut open = OpenAlerts::default();
        let on_a = alert("a", "c", Some("c"));
        let on_b = alert("b", "c", Some("c"));
        open.insert(&node("a"), on_a.problem(), on_a.clone());
        open.insert(&node("b"), on_b.problem(), on_b.clone());
        open.insert(
            &node("b"),
            ProblemKey::mesh_node(),
            alert("b", "node", None),
        );
        let about = |o: &OpenAlerts| -> Vec<String> {
            o.about_peer(&node("c"))
                .map(|(n, p, _)| format!("{n}/{p}"))
                .collect()
        };
        assert_eq!(about(&open), ["a/mesh:c", "b/mesh:c"]);
        // Replaced by an alert about another peer: no longer about c.
        open.insert(&node("a"), on_a.problem(), alert("a", "c", Some("d")));
        assert_eq!(about(&open), ["b/mesh:c"]);
        assert!(open.remove(&node("b"), &on_b.problem()).is_some());
        assert!(about(&open).is_empty() && !open.by_peer.contains_key(&node("c")));
        assert_eq!(open.of(&node("b")).count(), 1);
        let all: Vec<String> = open.iter().map(|((n, p), _)| format!("{n}/{p}")).collect();
        assert_eq!(all, ["a/mesh:c", "b/mesh:node"]);
    }

    #[test]
    fn a_node_left_without_entries_is_forgotten() {
        let mut m: PerNode<u64, &str> = PerNode::default();
        m.insert(&node("a"), 1, "one");
        m.insert(&node("a"), 2, "two");
        m.insert(&node("b"), 3, "three");
        let taken = m.take_of(&node("a"), |v| *v == "one");
        assert_eq!(taken, [(1, "one")]);
        assert_eq!(m.take_of(&node("a"), |_| true), [(2, "two")]);
        assert_eq!(m.nodes().collect::<Vec<_>>(), [&node("b")]);
        assert!(m.remove(&node("b"), &3).is_some());
        assert!(m.is_empty());
    }

    #[test]
    fn watchers_come_from_the_topology() {
        let mut cfg = skos_core::config::MeshConfig::default();
        for (n, peers) in [
            ("a", &["c", "d"][..]),
            ("b", &["c"]),
            ("c", &["c"]),
            ("bad name!", &["c"]),
        ] {
            cfg.topology
                .insert(n.into(), peers.iter().map(|p| p.to_string()).collect());
        }
        let w = Watchers::new(cfg.witnesses());
        let (a, b, c, d) = (node("a"), node("b"), node("c"), node("d"));
        assert_eq!(w.of(&c).collect::<Vec<_>>(), [&a, &b], "not itself");
        assert_eq!(w.of(&d).collect::<Vec<_>>(), [&a]);
        assert!(w.watches(&b, &c) && !w.watches(&b, &d) && !w.watches(&c, &c));
    }
}
