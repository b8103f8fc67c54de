//! The audit trail followed as it is written: every record appended after
//! start (and a backfill of the last [`RING`] before it) is kept in a
//! bounded ring for the audit pages, sent to the open event streams, and
//! counted into the metrics derived from the trail ([`crate::metrics::Derived`]).
//!
//! Written after start means: given by the follower, or backfilled with a
//! `seq` past the last record given live (written while the trail was
//! reopened), or stamped at or after the feed started (written before the
//! trail was first opened, such as the `start` record). Each is sent and
//! counted once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DurationRound;
use serde_json::Value;
use skos_bus::audit_follow::{AuditFollower, AuditSource};
use tokio::sync::broadcast;

use crate::metrics::Derived;

/// Records kept in memory for the pages and event streams.
pub const RING: usize = 2000;

/// Records an event stream may fall behind before it is told it lagged.
const BROADCAST: usize = 1024;

/// One record as the feed carries it: its sequence number, event type and
/// JSON text (serialized once, sent to every stream).
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's `seq` in the hash chain.
    pub seq: u64,
    /// `entry.event_type` (`alert`, `decision`, `command`…).
    pub event_type: String,
    /// The whole record, as JSON.
    pub json: Arc<str>,
}

impl Record {
    fn of(v: &Value) -> Option<Self> {
        let seq = v["seq"].as_u64()?;
        Some(Self {
            seq,
            event_type: v["entry"]["event_type"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            json: serde_json::to_string(v).ok()?.into(),
        })
    }
}

/// The records held, and the highest seq sent live.
#[derive(Default)]
struct Held {
    ring: VecDeque<Record>,
    /// The highest seq sent to the streams and counted: what a follower
    /// gives again after a reopen is not sent twice.
    live: u64,
}

/// The followed trail.
#[derive(Clone)]
pub struct Feed {
    ring: Arc<Mutex<Held>>,
    tx: broadcast::Sender<Record>,
    /// The metrics derived from the trail.
    pub derived: Derived,
    /// Where the records come from.
    pub source: AuditSource,
    /// When the feed started: a backfilled record stamped at or after it
    /// was written since.
    since: skos_core::timefmt::Timestamp,
}

impl Feed {
    /// Start following `source` on a task of its own (it reopens the trail
    /// after an error, a second later).
    pub fn start(source: AuditSource) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST);
        let feed = Self {
            ring: Arc::new(Mutex::new(Held::default())),
            tx,
            derived: Derived::default(),
            source,
            // To the millisecond, as records are stamped.
            since: chrono::Utc::now()
                .duration_trunc(chrono::TimeDelta::milliseconds(1))
                .unwrap_or_else(|_| chrono::Utc::now()),
        };
        let f = feed.clone();
        tokio::spawn(async move { f.follow().await });
        feed
    }

    async fn follow(self) {
        let mut said = false;
        loop {
            match AuditFollower::open(&self.source, RING as u64).await {
                Ok((mut follower, recent)) => {
                    said = false;
                    self.say_gap(&recent);
                    for v in &recent {
                        self.take(v, false);
                    }
                    loop {
                        match follower.next().await {
                            Ok(records) => {
                                for v in &records {
                                    self.take(v, true);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "audit trail no longer followed; reopening");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if !said {
                        tracing::warn!(error = %e, "audit trail not readable yet; retrying");
                        said = true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Warn when a reopen's backfill `recent` begins past the record after
    /// the last one sent: those between were written while the trail was
    /// not followed and are neither sent nor counted.
    fn say_gap(&self, recent: &[Value]) {
        let live = self.ring.lock().unwrap_or_else(|e| e.into_inner()).live;
        let first = recent.first().and_then(|v| v["seq"].as_u64());
        if let Some(first) = first.filter(|&f| live > 0 && f > live + 1) {
            tracing::warn!(
                from_seq = live + 1,
                to_seq = first - 1,
                "audit records written while the trail was reopened are not in the event streams or the metrics (read them with skos audit)"
            );
        }
    }

    /// Keep a record not held yet. `live`: the follower gave it (it was
    /// written after the trail was opened). A record written after the
    /// feed started (see the module's note) is sent to the streams and
    /// counted once, even when the backfill read it too; older history is
    /// only held.
    fn take(&self, v: &Value, live: bool) {
        let Some(r) = Record::of(v) else {
            return;
        };
        let stamped_since = || {
            v["entry"]["timestamp"]
                .as_str()
                .and_then(skos_core::timefmt::parse)
                .is_some_and(|t| t >= self.since)
        };
        let send = {
            let mut held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let live = live || held.live > 0 || stamped_since();
            if held.ring.back().is_none_or(|last| last.seq < r.seq) {
                if held.ring.len() == RING {
                    held.ring.pop_front();
                }
                held.ring.push_back(r.clone());
            }
            let send = live && r.seq > held.live;
            if send {
                held.live = r.seq;
            }
            send
        };
        if send {
            self.derived.observe(v);
            // No stream open is no error.
            let _ = self.tx.send(r);
        }
    }

    /// A receiver of the records written from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.tx.subscribe()
    }

    /// The records after `after` that the ring holds, at most `limit`,
    /// oldest first; `covered`: whether the ring holds every record after
    /// `after` (else older ones must be read from the trail).
    pub fn after(&self, after: u64, limit: usize) -> (Vec<Record>, bool) {
        let held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let ring = &held.ring;
        let covered = ring
            .front()
            .is_none_or(|f| f.seq <= after.saturating_add(1));
        let out = ring
            .iter()
            .filter(|r| r.seq > after)
            .take(limit)
            .cloned()
            .collect();
        (out, covered)
    }

    /// The last `n` records held, oldest first.
    pub fn tail(&self, n: usize) -> Vec<Record> {
        let held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let ring = &held.ring;
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The oldest record held, when any.
    pub fn oldest(&self) -> Option<u64> {
        let held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        held.ring.front().map(|r| r.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(seq: u64, event: &str) -> Value {
        json!({"seq": seq, "entry": {"event_type": event, "timestamp": "2026-01-01T00:00:00Z",
            "data": {"result": {"action_type": "throttle_50", "status": "succeeded"}}}})
    }

    fn feed() -> Feed {
        let (tx, _) = broadcast::channel(16);
        Feed {
            ring: Arc::new(Mutex::new(Held::default())),
            tx,
            derived: Derived::default(),
            source: AuditSource::File("/nonexistent".into()),
            since: skos_core::timefmt::parse("2026-06-01T00:00:00Z").expect("a time"),
        }
    }

    /// A record both backfilled and followed (written while the trail was
    /// opened) is held once and sent once; a follower's repeat after a
    /// reopen is not sent again; backfilled history is only held.
    #[test]
    fn each_record_is_held_once_and_sent_once() {
        let f = feed();
        let mut rx = f.subscribe();
        f.take(&rec(1, "start"), false);
        f.take(&rec(2, "result"), false);
        f.take(&rec(2, "result"), true);
        f.take(&rec(3, "result"), true);
        f.take(&rec(3, "result"), true);
        f.take(&rec(2, "result"), false);
        let sent: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok().map(|r| r.seq)).collect();
        assert_eq!(sent, [2, 3]);
        let held: Vec<u64> = f.tail(10).iter().map(|r| r.seq).collect();
        assert_eq!(held, [1, 2, 3]);
        let (after, covered) = f.after(1, 1);
        assert_eq!((after[0].seq, covered), (2, true));
        assert!(f.after(0, 10).1, "every record from seq 1 is held");
    }

    /// Records backfilled at the first open are counted when stamped since
    /// the feed started; at a reopen, those past the last one sent (written
    /// meanwhile) are sent and counted whatever their stamp.
    #[test]
    fn records_written_since_start_are_counted_though_only_backfilled() {
        let at = |seq: u64, event: &str, ts: &str| {
            let mut v = rec(seq, event);
            v["entry"]["timestamp"] = json!(ts);
            v
        };
        let f = feed();
        let mut rx = f.subscribe();
        f.take(&at(1, "alert", "2026-01-01T00:00:00Z"), false);
        f.take(&at(2, "start", "2026-06-01T00:00:00Z"), false);
        f.take(&at(3, "alert", "2026-06-01T00:00:01Z"), true);
        // Reopened: 4 and 5 were written meanwhile, by a host whose clock
        // is behind; 3 comes again.
        f.take(&at(3, "alert", "2026-06-01T00:00:01Z"), false);
        f.take(&at(4, "alert", "2026-05-01T00:00:00Z"), false);
        f.take(&at(5, "alert", "2026-05-01T00:00:00Z"), false);
        let sent: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok().map(|r| r.seq)).collect();
        assert_eq!(sent, [2, 3, 4, 5]);
        let text = f.derived.encoded();
        assert!(
            text.contains(r#"skos_audit_records_total{event_type="start"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"skos_audit_records_total{event_type="alert"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_and_says_what_it_no_longer_covers() {
        let f = feed();
        for seq in 1..=(RING as u64 + 5) {
            f.take(&rec(seq, "node"), false);
        }
        assert_eq!(f.oldest(), Some(6));
        assert!(!f.after(3, 10).1, "records 4 and 5 are no longer held");
        assert!(f.after(5, 10).1);
        assert_eq!(
            f.tail(2).iter().map(|r| r.seq).collect::<Vec<_>>(),
            [2004, 2005]
        );
    }
}
