//! Named event counters (`rejected.alert.malformed`, `alerts.handled`…),
//! shared between tasks and reported by `skos status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Counters(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counters {
    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    pub fn add(&self, name: &str, n: u64) {
        // A poisoned lock only means another thread panicked mid-increment;
        // the map itself is still usable.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(name.to_string()).or_insert(0) += n;
    }

    pub fn get(&self, name: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let c = Counters::default();
        let c2 = c.clone();
        c.inc("a");
        c2.add("a", 2);
        assert_eq!(c.get("a"), 3);
        assert_eq!(c.get("b"), 0);
        assert_eq!(c.snapshot().len(), 1);
    }
}
