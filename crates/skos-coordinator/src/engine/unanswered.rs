//! Commands closed as `no_result` whose late answer is still news, kept
//! per node. The fleet's recent actions (`coordinator.recent_actions`, 50)
//! are too few to say so: a storm that sends more commands than that
//! between a command's send and its late answer (at least its deadline
//! plus the grace period) pushes it out, and its real answer, what the
//! action did on the machine, would be held past the minute's ten as
//! answering nothing. Kept here instead, [`PER_NODE`] a node (the oldest
//! goes first), each until its answer comes; saved in the node's record.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use skos_core::timefmt::{self, Timestamp};
use skos_core::NodeName;

/// Commands closed as `no_result` kept per node.
pub(super) const PER_NODE: usize = 8;

/// A command closed as `no_result`, not answered since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unanswered {
    pub(super) node: NodeName,
    pub(super) action_id: String,
    /// When it was closed (coordinator clock).
    #[serde(with = "timefmt")]
    pub(super) closed_at: Timestamp,
}

/// Every node's commands closed as `no_result` and not answered since,
/// oldest first.
#[derive(Debug, Default)]
pub(super) struct Unanswereds {
    by_node: BTreeMap<NodeName, VecDeque<(String, Timestamp)>>,
    /// The node each is kept for, by action id (so a result from another
    /// node is known as foreign).
    by_id: HashMap<String, NodeName>,
}

impl Unanswereds {
    /// `action_id`, sent to `node`, closed as `no_result` at `at`; past
    /// [`PER_NODE`] the node's oldest is let go.
    pub(super) fn close(&mut self, node: &NodeName, action_id: &str, at: Timestamp) {
        if let Some(other) = self.by_id.get(action_id).cloned() {
            self.answered(&other, action_id);
        }
        let kept = self.by_node.entry(node.clone()).or_default();
        kept.push_back((action_id.to_string(), at));
        self.by_id.insert(action_id.to_string(), node.clone());
        while kept.len() > PER_NODE {
            if let Some((id, _)) = kept.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }

    /// Whether `action_id`, sent to `node`, was closed as `no_result` and
    /// not answered since.
    pub(super) fn contains(&self, node: &NodeName, action_id: &str) -> bool {
        self.by_id.get(action_id) == Some(node)
    }

    /// The node `action_id` was sent to, when it is kept.
    pub(super) fn node_of(&self, action_id: &str) -> Option<&NodeName> {
        self.by_id.get(action_id)
    }

    /// `node` answered `action_id`: no longer kept. Whether it was.
    pub(super) fn answered(&mut self, node: &NodeName, action_id: &str) -> bool {
        if !self.contains(node, action_id) {
            return false;
        }
        self.by_id.remove(action_id);
        if let Some(kept) = self.by_node.get_mut(node) {
            kept.retain(|(id, _)| id != action_id);
            if kept.is_empty() {
                self.by_node.remove(node);
            }
        }
        true
    }

    /// `node`'s, oldest first, as saved in its record.
    pub(super) fn of(&self, node: &NodeName) -> Vec<Unanswered> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|(id, at)| Unanswered {
                node: node.clone(),
                action_id: id.clone(),
                closed_at: *at,
            })
            .collect()
    }

    /// Every node's, as saved in a whole snapshot.
    pub(super) fn all(&self) -> Vec<Unanswered> {
        self.by_node.keys().flat_map(|n| self.of(n)).collect()
    }

    /// Continue from saved ones (added to what is kept, each node's still
    /// bounded).
    pub(super) fn restore(&mut self, saved: Vec<Unanswered>) {
        for u in saved {
            self.close(&u.node, &u.action_id, u.closed_at);
        }
    }

    /// The nodes that have any.
    pub(super) fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.by_node.keys()
    }

    /// Let go of `node`'s (the node is forgotten).
    pub(super) fn forget(&mut self, node: &NodeName) {
        for (id, _) in self.by_node.remove(node).into_iter().flatten() {
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn kept_per_node_until_answered_and_bounded() {
        let a = NodeName::parse("a").unwrap();
        let b = NodeName::parse("b").unwrap();
        let mut u = Unanswereds::default();
        u.close(&a, "x", t(0));
        assert!(u.contains(&a, "x"));
        assert!(!u.contains(&b, "x"), "another node's answer is not news");
        assert_eq!(u.node_of("x"), Some(&a));
        assert!(!u.answered(&b, "x"), "nor does it answer");
        for i in 0..PER_NODE {
            u.close(&a, &format!("y{i}"), t(i as i64 + 1));
        }
        assert!(!u.contains(&a, "x"), "the oldest let go past the bound");
        assert_eq!(u.node_of("x"), None);
        assert_eq!(u.of(&a).len(), PER_NODE);
        assert!(u.answered(&a, "y0"));
        assert!(!u.answered(&a, "y0"), "answered once");
        assert!(!u.contains(&a, "y0"));
        let saved = u.all();
        let mut back = Unanswereds::default();
        back.restore(saved);
        assert_eq!(back.of(&a), u.of(&a));
        back.forget(&a);
        assert!(back.of(&a).is_empty());
        assert_eq!(back.node_of("y1"), None);
        assert_eq!(back.nodes().count(), 0);
    }
}
