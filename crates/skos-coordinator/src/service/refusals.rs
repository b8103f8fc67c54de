//! Refused messages (malformed, too large, invalid, not signed, another
//! node's result): every one is counted (`rejected.<feed>.<reason>`,
//! `results.foreign`), but a flood of them, from one broken or hostile
//! source or many, fills neither the audit trail nor the log. Per feed, in
//! a minute, the first [`AUDITED_PER_MINUTE`] refusals are audited and
//! logged one by one, with their error; the rest are held (counted by
//! reason, a few of their subjects kept) and summed up in one audited
//! record when the minute ends, or when the coordinator stops leading
//! ([`super::minutes`]). Before, each refused heartbeat, alert or result
//! wrote its own audit record and warning: a source sending malformed
//! heartbeats as fast as the bus takes them wrote as many records, which
//! can never be deleted.
//!
//! What is held is kept in the saved state (the `held` record, written
//! before the messages that added to it are acknowledged), so a
//! coordinator killed or deposed within the minute leaves it to the next
//! leader to sum up.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use skos_core::timefmt::Timestamp;

#[cfg(test)]
use super::minutes::AUDITED_PER_MINUTE;
use super::minutes::{Minutes, Tally};

/// Subjects of held refusals named in a summary.
const SUBJECTS_KEPT: usize = 8;

/// The refusals of one feed's minute past those audited one by one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Refused {
    /// By reason.
    pub(super) reasons: BTreeMap<String, u64>,
    /// Their bytes.
    pub(super) bytes: u64,
    /// The first [`SUBJECTS_KEPT`] distinct subjects.
    pub(super) subjects: BTreeSet<String>,
    /// Distinct subjects past those kept were seen.
    pub(super) more_subjects: bool,
}

impl Refused {
    /// How many were held.
    pub(super) fn count(&self) -> u64 {
        self.reasons.values().sum()
    }

    fn add(&mut self, subject: &str, reason: &str, bytes: usize) {
        *self.reasons.entry(reason.to_string()).or_default() += 1;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        if self.subjects.len() < SUBJECTS_KEPT {
            self.subjects.insert(subject.to_string());
        } else if !self.subjects.contains(subject) {
            self.more_subjects = true;
        }
    }
}

impl Tally for Refused {
    fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// The windows of the feeds with refusals in the last minute.
pub(super) type Refusals = Minutes<Refused>;

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
        self.note_with(feed, now, |held| held.add(subject, reason, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skos_core::level::secs;

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
        assert_eq!(h.held.count(), 1_000);
        assert_eq!(
            h.held.reasons,
            BTreeMap::from([
                ("malformed".to_string(), 750),
                ("too_large".to_string(), 250)
            ])
        );
        assert_eq!(h.held.bytes, 100_000);
        assert_eq!(h.held.subjects.len(), SUBJECTS_KEPT);
        assert!(h.held.more_subjects);
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
        assert_eq!((held[0].feed.as_str(), held[0].held.count()), ("result", 1));
        assert_eq!(
            held[0].held.subjects,
            BTreeSet::from(["skos.result.b".to_string()])
        );
        assert!(!held[0].held.more_subjects);
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
        let event = skos_core::AuditEvent::Rejected;
        let summary = |kind: &str| {
            BTreeSet::from([(
                kind.to_string(),
                "alert".to_string(),
                t(3_600.0).timestamp_millis(),
            )])
        };
        back.covered(event, &summary("dropped"));
        assert!(!back.is_empty(), "covered by another kind's summary");
        back.covered(event, &summary("rejected"));
        assert!(back.is_empty() && back.ended(t(10_000.0), true).is_empty());
    }
}
