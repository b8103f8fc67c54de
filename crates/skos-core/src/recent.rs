//! [`RecentIds`]: the ids seen lately, for de-duplication with bounded
//! memory (alert ids, result message ids, bus message ids).

use std::collections::{HashSet, VecDeque};

/// The last `capacity` distinct ids inserted; the oldest is forgotten first.
#[derive(Debug, Clone)]
pub struct RecentIds {
    capacity: usize,
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Remember at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Remember `id`; false if it is already remembered.
    pub fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Forget `id` (rare: linear in the number remembered).
    pub fn remove(&mut self, id: &str) {
        if self.ids.remove(id) {
            self.order.retain(|x| x != id);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No id is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_forgotten_past_the_capacity() {
        let mut r = RecentIds::new(3);
        for id in ["a", "b", "c"] {
            assert!(r.insert(id));
        }
        assert!(!r.insert("a"), "a is remembered");
        assert!(r.insert("d"));
        assert_eq!(r.len(), 3);
        assert!(!r.contains("a"), "the oldest went first");
        assert!(r.contains("b") && r.contains("d"));
        assert!(r.insert("a"));
    }

    #[test]
    fn a_removed_id_can_come_again_and_its_old_place_is_gone() {
        let mut r = RecentIds::new(2);
        r.insert("a");
        r.insert("b");
        r.remove("a");
        assert!(!r.contains("a"));
        assert!(r.insert("a"));
        // "b" is now the oldest: a third id pushes it out, not "a".
        assert!(r.insert("c"));
        assert!(r.contains("a") && r.contains("c") && !r.contains("b"));
        // A capacity of 0 still remembers the last id.
        let mut one = RecentIds::new(0);
        assert!(one.is_empty());
        assert!(one.insert("x"));
        assert!(!one.insert("x"));
    }
}
