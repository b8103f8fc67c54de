//! The storage watcher's actions: delete, compress or archive files in the
//! configured directories, and tell a person.

use super::{ActionSpec, Executor::StorageWatcher};

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new("cleanup_temp", StorageWatcher)
        .verified()
        .frees_space()
        .destructive(),
    ActionSpec::new("cleanup_logs", StorageWatcher)
        .verified()
        .frees_space()
        .destructive(),
    // Originals are deleted only once their archive verified.
    ActionSpec::new("archive_old", StorageWatcher)
        .verified()
        .frees_space()
        .destructive(),
    ActionSpec::new("emergency_cleanup", StorageWatcher)
        .verified()
        .frees_space()
        .destructive(),
    ActionSpec::new("alert_human", StorageWatcher),
];
