//! Refused messages (malformed, too large, invalid, not signed): every one
//! is counted (`rejected.<feed>.<reason>`), but a flood of them, from one
//! broken or hostile source or many, fills neither the audit trail nor the
//! log. Per feed, in a minute, the first [`AUDITED_PER_MINUTE`] refusals
//! are audited and logged one by one, with their error; the rest are held
//! (counted by reason, a few of their subjects kept) and summed up in one
//! audited record when the minute ends, or when the coordinator stops
//! leading. Before, each refused heartbeat, alert or result wrote its own
//! audit record and warning: a source sending malformed heartbeats as
//! fast as the bus takes them wrote as many records, which can never be
//! deleted.
//!
//! What is held is kept in the saved state (the `held` record, written
//! before the messages that added to it are acknowledged), so a
//! coordinator killed or deposed within the minute leaves it to the next
//! leader to sum up. A window whose start is later than now (the clock
//! went back) ends at once.
//!
//! Sans-IO: time comes in, what to audit goes out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use skos_core::level::secs;
use skos_core::timefmt::Timestamp;

/// Refusals of one feed audited one by one in a minute; past it, the
/// minute's summary says the rest.
pub(super) const AUDITED_PER_MINUTE: u32 = 10;

/// Subjects of held refusals named in a summary.
const SUBJECTS_KEPT: usize = 8;

/// The window, seconds.
const WINDOW: f64 = 60.0;

/// One feed's current minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Window {
    start: Timestamp,
    /// Audited one by one.
    audited: u32,
    /// Held for the summary, by reason.
    held: BTreeMap<String, u64>,
    /// Bytes of the held ones.
    bytes: u64,
    /// The first [`SUBJECTS_KEPT`] distinct subjects of the held ones.
    subjects: BTreeSet<String>,
    /// Distinct subjects past those kept were seen.
    more_subjects: bool,
}

/// A minute of one feed that ended with refusals held.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Held {
    pub(super) feed: String,
    pub(super) since: Timestamp,
    /// Audited one by one in that minute.
    pub(super) audited: u32,
    /// Held, by reason.
    pub(super) reasons: BTreeMap<String, u64>,
    pub(super) bytes: u64,
    pub(super) subjects: Vec<String>,
    pub(super) more_subjects: bool,
}

impl Held {
    /// How many were held.
    pub(super) fn count(&self) -> u64 {
        self.reasons.values().sum()
    }
}

/// The windows of the feeds with refusals in the last minute.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Refusals {
    windows: BTreeMap<String, Window>,
}

impl Refusals {
    /// Count a refusal of a message of `bytes` bytes on `subject` of
    /// `feed`, for `reason`: true when it is to be audited (and logged)
    /// on its own, false when it is held for the minute's summary.
    pub(super) fn note(
        &mut self,
        feed: &str,
        subject: &str,
        reason: &str,
        bytes: usize,
        now: Timestamp,
    ) -> bool {
        let w = self
            .windows
            .entry(feed.to_string())
            .or_insert_with(|| Window {
                start: now,
                audited: 0,
                held: BTreeMap::new(),
                bytes: 0,
                subjects: BTreeSet::new(),
                more_subjects: false,
            });
        if w.audited < AUDITED_PER_MINUTE {
            w.audited += 1;
            return true;
        }
        *w.held.entry(reason.to_string()).or_default() += 1;
        w.bytes = w.bytes.saturating_add(bytes as u64);
        if w.subjects.len() < SUBJECTS_KEPT {
            w.subjects.insert(subject.to_string());
        } else if !w.subjects.contains(subject) {
            w.more_subjects = true;
        }
        false
    }

    /// End the windows a minute old (every window, with `all`: the
    /// coordinator stops leading): those that held refusals, to be summed
    /// up in the audit trail.
    pub(super) fn ended(&mut self, now: Timestamp, all: bool) -> Vec<Held> {
        let mut out = Vec::new();
        self.windows.retain(|feed, w| {
            if !all && w.start <= now && now - w.start < secs(WINDOW) {
                return true;
            }
            if !w.held.is_empty() {
                out.push(Held {
                    feed: feed.clone(),
                    since: w.start,
                    audited: w.audited,
                    reasons: std::mem::take(&mut w.held),
                    bytes: w.bytes,
                    subjects: std::mem::take(&mut w.subjects).into_iter().collect(),
                    more_subjects: w.more_subjects,
                });
            }
            false
        });
        out
    }

    /// Forget the windows a summary in the trail already covers (its
    /// feed and the start of its minute): summed up before a restart that
    /// found them still kept.
    /// `summed`: (event type, feed, start in ms since the epoch, as the
    /// summary's `since` says it).
    pub(super) fn covered(&mut self, summed: &BTreeSet<(String, String, i64)>) {
        self.windows.retain(|feed, w| {
            !summed.contains(&(
                skos_core::AuditEvent::Rejected.as_str().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: f64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap() + secs(s)
    }

    /// Per feed and minute, the first ten are audited, the rest held and
    /// summed up once, by reason, with the subjects seen; another feed
    /// has its own ten; a new minute starts afresh.
    #[test]
    fn past_ten_a_minute_refusals_are_held_for_one_summary() {
        let mut r = Refusals::default();
        for i in 0..AUDITED_PER_MINUTE {
            assert!(r.note(
                "heartbeat",
                "skos.heartbeat.a",
                "malformed",
                10,
                t(f64::from(i))
            ));
        }
        for i in 0..1_000 {
            let subject = format!("skos.heartbeat.n{}", i % 20);
            let reason = if i % 4 == 0 { "too_large" } else { "malformed" };
            assert!(!r.note("heartbeat", &subject, reason, 100, t(20.0)));
        }
        assert!(r.note("alert", "skos.alert.a", "invalid", 10, t(30.0)));
        assert!(r.ended(t(59.0), false).is_empty(), "ended early");
        let held = r.ended(t(60.0), false);
        assert_eq!(held.len(), 1, "{held:?}");
        let h = &held[0];
        assert_eq!(
            (h.feed.as_str(), h.since, h.audited),
            ("heartbeat", t(0.0), 10)
        );
        assert_eq!(h.count(), 1_000);
        assert_eq!(
            h.reasons,
            BTreeMap::from([
                ("malformed".to_string(), 750),
                ("too_large".to_string(), 250)
            ])
        );
        assert_eq!(h.bytes, 100_000);
        assert_eq!(h.subjects.len(), SUBJECTS_KEPT);
        assert!(h.more_subjects);
        // The alert feed's window held nothing: it ends without a summary.
        assert!(r.ended(t(90.0), false).is_empty());
        assert!(r.note("heartbeat", "skos.heartbeat.a", "malformed", 10, t(61.0)));
    }

    /// Stopping ends every window at once; only those that held some
    /// give a summary.
    #[test]
    fn stopping_sums_up_what_is_held() {
        let mut r = Refusals::default();
        for i in 0..=AUDITED_PER_MINUTE {
            r.note("result", "skos.result.b", "untrusted", 1, t(f64::from(i)));
        }
        r.note("alert", "skos.alert.a", "invalid", 1, t(1.0));
        let held = r.ended(t(12.0), true);
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].feed.as_str(), held[0].count()), ("result", 1));
        assert_eq!(held[0].subjects, ["skos.result.b"]);
        assert!(!held[0].more_subjects);
        assert!(r.ended(t(13.0), true).is_empty(), "summed up twice");
    }

    /// A window that starts after now (the clock went back) ends at
    /// once; one kept across a restart and already summed up in the trail
    /// is forgotten; the windows survive being written and read back.
    #[test]
    fn a_window_from_the_future_ends_and_one_summed_up_is_forgotten() {
        let mut r = Refusals::default();
        for i in 0..=AUDITED_PER_MINUTE {
            r.note(
                "alert",
                "skos.alert.a",
                "malformed",
                3,
                t(3_600.0 + f64::from(i)),
            );
        }
        let back: Refusals = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert!(!back.is_empty());
        let held = r.ended(t(0.0), false);
        assert_eq!(held.len(), 1, "a window from the future kept");
        let mut back = back;
        // A drops' summary of the same feed and start covers nothing here.
        back.covered(&BTreeSet::from([(
            "dropped".to_string(),
            "alert".to_string(),
            t(3_600.0).timestamp_millis(),
        )]));
        assert!(!back.is_empty(), "covered by another kind's summary");
        back.covered(&BTreeSet::from([(
            "rejected".to_string(),
            "alert".to_string(),
            t(3_600.0).timestamp_millis(),
        )]));
        assert!(back.is_empty() && back.ended(t(10_000.0), true).is_empty());
    }
}
