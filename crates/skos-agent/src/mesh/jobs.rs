//! What background jobs share with sensing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use skos_core::level::secs;
use skos_core::timefmt::Timestamp;

/// What background jobs and `sense` share: interfaces being restarted are
/// not judged, and their peers get a settling time afterwards.
#[derive(Debug, Default)]
pub(super) struct Jobs {
    pub(super) busy: BTreeSet<String>,
    pub(super) settle_until: BTreeMap<String, Timestamp>,
}

pub(super) fn lock(j: &Mutex<Jobs>) -> MutexGuard<'_, Jobs> {
    j.lock().unwrap_or_else(|e| e.into_inner())
}

/// An interface being restarted: released (with a settling time) when the
/// job ends, also if it panics or is never run.
pub(super) struct Busy {
    pub(super) jobs: Arc<Mutex<Jobs>>,
    pub(super) name: String,
    pub(super) settle: f64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut j = lock(&self.jobs);
        j.busy.remove(&self.name);
        j.settle_until
            .insert(self.name.clone(), chrono::Utc::now() + secs(self.settle));
    }
}
