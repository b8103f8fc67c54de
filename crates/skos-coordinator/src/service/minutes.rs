//! Per-feed minutes of what one source can send without bound: per feed,
//! in a minute, the first [`AUDITED_PER_MINUTE`] are audited (and logged)
//! one by one; the rest are tallied (`T`: refusals by reason, drops by
//! sequence) and summed up in one record when the minute ends, or when the
//! coordinator stops leading. A window that starts after now (the clock
//! went back) ends at once. Shared by [`super::refusals`] and
//! [`super::dropped`]; kept in the saved state with what they hold.
//!
//! Sans-IO: time comes in, what to sum up goes out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use skos_core::level::secs;
use skos_core::timefmt::Timestamp;

/// Audited one by one per feed in a minute; past it, the minute's
/// summary says the rest.
pub(super) const AUDITED_PER_MINUTE: u32 = 10;

/// The window, seconds.
const WINDOW: f64 = 60.0;

/// What a window holds past the ones audited one by one.
pub(super) trait Tally: Default {
    /// Nothing held.
    fn is_empty(&self) -> bool;
}

/// One feed's current minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Window<T> {
    start: Timestamp,
    /// Audited one by one.
    audited: u32,
    held: T,
}

/// A minute of one feed that ended with something held.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ended<T> {
    pub(super) feed: String,
    /// When the minute started.
    pub(super) since: Timestamp,
    /// Audited one by one in that minute.
    pub(super) audited: u32,
    pub(super) held: T,
}

/// The windows of the feeds heard from in the last minute.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub(super) struct Minutes<T> {
    windows: BTreeMap<String, Window<T>>,
}

impl<T> Default for Minutes<T> {
    fn default() -> Self {
        Self {
            windows: BTreeMap::new(),
        }
    }
}

impl<T: Tally> Minutes<T> {
    /// Count one of `feed`'s at `now`: true when it is to be audited on
    /// its own; otherwise `hold` adds it to the minute's tally, false.
    pub(super) fn note_with(
        &mut self,
        feed: &str,
        now: Timestamp,
        hold: impl FnOnce(&mut T),
    ) -> bool {
        let w = self
            .windows
            .entry(feed.to_string())
            .or_insert_with(|| Window {
                start: now,
                audited: 0,
                held: T::default(),
            });
        if w.audited < AUDITED_PER_MINUTE {
            w.audited += 1;
            return true;
        }
        hold(&mut w.held);
        false
    }

    /// End the windows a minute old, or from the future (every window,
    /// with `all`: the coordinator stops leading): those that held
    /// something, to be summed up in the audit trail.
    pub(super) fn ended(&mut self, now: Timestamp, all: bool) -> Vec<Ended<T>> {
        let mut out = Vec::new();
        self.windows.retain(|feed, w| {
            if !all && w.start <= now && now - w.start < secs(WINDOW) {
                return true;
            }
            if !w.held.is_empty() {
                out.push(Ended {
                    feed: feed.clone(),
                    since: w.start,
                    audited: w.audited,
                    held: std::mem::take(&mut w.held),
                });
            }
            false
        });
        out
    }

    /// Forget the windows a summary in the trail already covers: summed
    /// up before a restart that found them still kept. `summed`: (event
    /// type, feed, start in ms since the epoch, as the summary's `since`
    /// says it); only summaries of `event` count.
    pub(super) fn covered(
        &mut self,
        event: skos_core::AuditEvent,
        summed: &BTreeSet<(String, String, i64)>,
    ) {
        self.windows.retain(|feed, w| {
            !summed.contains(&(
                event.as_str().to_string(),
                feed.clone(),
                w.start.timestamp_millis(),
            ))
        });
    }

    /// Nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.windows.values().all(|w| w.held.is_empty())
    }
}
