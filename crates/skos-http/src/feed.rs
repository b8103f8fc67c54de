//! The audit trail followed as it is written: every record appended after
//! start (and a backfill of the last [`RING`] before it) is kept in a
//! bounded ring for the audit pages, sent to the open event streams, and
//! counted into the metrics derived from the trail ([`crate::metrics::Derived`]).
//!
//! Written after start means: past the last record the first open read
//! back (by `seq`, whatever the writers' clocks say), whether the follower
//! gives it or a reopen reads it back (written while the trail was
//! reopened). Each is sent and counted once. [`Feed::ready`] waits for the
//! first open, so that what the caller writes next (embedded mode's `start`
//! record) is new; records written before a first open that came late are
//! history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The records held, and the highest seq sent or read back at the first
/// open.
#[derive(Default)]
struct Held {
    ring: VecDeque<Record>,
    /// The highest seq sent to the streams and counted, or read back at the
    /// first open: a record at or below it is not sent (again).
    counted: u64,
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
    /// Whether the trail was opened once: from then on, what is read past
    /// the last counted is new.
    opened: tokio::sync::watch::Sender<bool>,
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
            opened: tokio::sync::watch::channel(false).0,
        };
        let f = feed.clone();
        tokio::spawn(async move { f.follow().await });
        feed
    }

    /// Wait, at most `within`, for the trail's first open: records written
    /// after it are counted (see the module's note). Whether it was opened.
    pub async fn ready(&self, within: Duration) -> bool {
        let mut opened = self.opened.subscribe();
        tokio::time::timeout(within, opened.wait_for(|o| *o))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn follow(self) {
        let mut said = false;
        let mut replaced = false;
        // Replaced, and the new trail was empty when reopened: its first
        // records, when they come, say whether its chain begins afresh.
        let mut judge = false;
        loop {
            match AuditFollower::open(&self.source, RING as u64).await {
                Ok((mut follower, recent)) => {
                    said = false;
                    if std::mem::take(&mut replaced) || judge {
                        judge = !self.replaced(&recent);
                    }
                    self.say_gap(&recent);
                    for v in &recent {
                        self.take(v);
                    }
                    self.opened_once();
                    loop {
                        match follower.next().await {
                            Ok(records) => {
                                if judge {
                                    judge = !self.replaced(&records);
                                }
                                for v in &records {
                                    self.take(v);
                                }
                            }
                            Err(e @ skos_bus::Error::Replaced { .. }) => {
                                tracing::error!(error = %e, "audit trail replaced under the feed; reading the new one from its start");
                                replaced = true;
                                break;
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

    /// The first open's read-back is held: what comes past it is new.
    fn opened_once(&self) {
        if self.was_opened() {
            return;
        }
        {
            let mut held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            held.counted = held.counted.max(held.ring.back().map_or(0, |r| r.seq));
        }
        self.opened.send_replace(true);
    }

    fn was_opened(&self) -> bool {
        *self.opened.borrow()
    }

    /// The trail was replaced (deleted and made again) and `recent` is the
    /// new one's read-back: every record in it was written after the
    /// replacement. Where it begins at or below the last counted (a chain
    /// begun afresh), the old trail's records held are dropped and the new
    /// one's counted from its first; a chain carried on from the old
    /// head is past the last counted already. Whether `recent` held a
    /// record to judge by (else the next records read are judged).
    fn replaced(&self, recent: &[Value]) -> bool {
        let Some(first) = recent.iter().find_map(|v| v["seq"].as_u64()) else {
            return false;
        };
        let mut held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if first <= held.counted {
            tracing::warn!(
                first_seq = first,
                counted_seq = held.counted,
                "the new audit trail begins a chain afresh: its records are counted from its first, the old one's are no longer held"
            );
            held.ring.clear();
            held.counted = first.saturating_sub(1);
        }
        true
    }

    /// Warn when a reopen's read-back `recent` begins past the record after
    /// the last one counted: those between were written while the trail
    /// was not followed and are neither sent nor counted.
    fn say_gap(&self, recent: &[Value]) {
        let counted = self.ring.lock().unwrap_or_else(|e| e.into_inner()).counted;
        let first = recent.first().and_then(|v| v["seq"].as_u64());
        if let Some(first) = first.filter(|&f| self.was_opened() && f > counted.saturating_add(1)) {
            tracing::warn!(
                from_seq = counted.saturating_add(1),
                to_seq = first - 1,
                "audit records written while the trail was reopened are not in the event streams or the metrics (read them with skos audit)"
            );
        }
    }

    /// Keep a record not held yet. Once the trail was opened, one past the
    /// last counted is sent to the streams and counted, once, whether the
    /// follower gave it or a reopen read it back; what the first open
    /// reads back is history, only held.
    fn take(&self, v: &Value) {
        let Some(r) = Record::of(v) else {
            return;
        };
        let opened = self.was_opened();
        let send = {
            let mut held = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if held.ring.back().is_none_or(|last| last.seq < r.seq) {
                if held.ring.len() == RING {
                    held.ring.pop_front();
                }
                held.ring.push_back(r.clone());
            }
            let send = opened && r.seq > held.counted;
            if send {
                held.counted = r.seq;
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
            opened: tokio::sync::watch::channel(false).0,
        }
    }

    fn sent(rx: &mut broadcast::Receiver<Record>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok().map(|r| r.seq)).collect()
    }

    /// The first open's read-back is history (held, not sent); a record
    /// both read back and followed is held once and sent once; a
    /// follower's repeat is not sent again.
    #[test]
    fn each_record_is_held_once_and_sent_once() {
        let f = feed();
        let mut rx = f.subscribe();
        f.take(&rec(1, "start"));
        f.take(&rec(2, "result"));
        f.opened_once();
        f.take(&rec(2, "result"));
        f.take(&rec(3, "result"));
        f.take(&rec(3, "result"));
        f.take(&rec(2, "result"));
        assert_eq!(sent(&mut rx), [3]);
        let held: Vec<u64> = f.tail(10).iter().map(|r| r.seq).collect();
        assert_eq!(held, [1, 2, 3]);
        let (after, covered) = f.after(1, 1);
        assert_eq!((after[0].seq, covered), (2, true));
        assert!(f.after(0, 10).1, "every record from seq 1 is held");
    }

    /// What is new is judged by seq alone: history stamped in the future
    /// (a writer's clock ahead) is not counted at the first open, and
    /// records a reopen reads back past the last counted (written
    /// meanwhile, by a clock behind) are, each once.
    #[test]
    fn records_are_new_by_seq_whatever_their_stamps() {
        let at = |seq: u64, event: &str, ts: &str| {
            let mut v = rec(seq, event);
            v["entry"]["timestamp"] = json!(ts);
            v
        };
        let f = feed();
        let mut rx = f.subscribe();
        f.take(&at(1, "alert", "2099-01-01T00:00:00Z"));
        f.take(&at(2, "alert", "2020-01-01T00:00:00Z"));
        f.opened_once();
        f.take(&at(3, "start", "2026-06-01T00:00:00Z"));
        // Reopened: 3 is read back again, 4 and 5 were written meanwhile.
        f.say_gap(&[at(3, "start", "2026-06-01T00:00:00Z")]);
        f.take(&at(3, "start", "2026-06-01T00:00:00Z"));
        f.take(&at(4, "alert", "2020-01-01T00:00:00Z"));
        f.take(&at(5, "alert", "2099-01-01T00:00:00Z"));
        f.opened_once();
        assert_eq!(sent(&mut rx), [3, 4, 5]);
        let text = f.derived.encoded();
        assert!(
            text.contains(r#"skos_audit_records_total{event_type="start"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"skos_audit_records_total{event_type="alert"} 2"#),
            "{text}"
        );
    }

    /// A trail replaced by one whose chain begins afresh is counted from
    /// its first record (the old one's held records dropped); one whose
    /// chain goes on from the old head is counted past it, each once.
    #[test]
    fn a_replaced_trail_is_counted_from_its_first_record() {
        let f = feed();
        let mut rx = f.subscribe();
        f.take(&rec(1, "start"));
        f.opened_once();
        for seq in 2..=5 {
            f.take(&rec(seq, "alert"));
        }
        assert_eq!(sent(&mut rx), [2, 3, 4, 5]);
        // Begun afresh: seq 1 and 2 again, now the new trail's.
        let fresh = [rec(1, "start"), rec(2, "alert")];
        f.replaced(&fresh);
        f.say_gap(&fresh);
        for v in &fresh {
            f.take(v);
        }
        f.take(&rec(3, "alert"));
        assert_eq!(sent(&mut rx), [1, 2, 3]);
        assert_eq!(
            f.tail(10).iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // Carried on from the head (seq 3): nothing dropped.
        let on = [rec(4, "audit_trail_replaced"), rec(5, "alert")];
        f.replaced(&on);
        for v in &on {
            f.take(v);
        }
        assert_eq!(sent(&mut rx), [4, 5]);
        assert_eq!(f.oldest(), Some(1));
        let text = f.derived.encoded();
        assert!(
            text.contains(r#"skos_audit_records_total{event_type="alert"} 7"#),
            "{text}"
        );
        assert!(
            !f.replaced(&[]),
            "nothing to judge by: the next records are"
        );
        assert!(f.replaced(&[rec(0, "alert")]));
    }

    /// A record at the largest seq (forged on a server without trusted
    /// keys) does not overflow the gap's check.
    #[test]
    fn a_reopen_after_the_largest_seq_does_not_overflow() {
        let f = feed();
        f.opened_once();
        f.take(&rec(u64::MAX, "alert"));
        f.say_gap(&[rec(5, "alert")]);
        f.say_gap(&[rec(u64::MAX, "alert")]);
        assert_eq!(f.tail(1)[0].seq, u64::MAX);
    }

    /// [`Feed::ready`] resolves once the trail was opened, and says so.
    #[tokio::test]
    async fn ready_waits_for_the_first_open() {
        let f = feed();
        assert!(!f.ready(Duration::from_millis(10)).await);
        f.opened_once();
        assert!(f.ready(Duration::from_millis(10)).await);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_says_what_it_no_longer_covers() {
        let f = feed();
        for seq in 1..=(RING as u64 + 5) {
            f.take(&rec(seq, "node"));
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
