//! Counting what a consumer has taken, and when it last moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skos_core::counters::Counters;

/// A count and the instant it last changed, shared between tasks.
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    count: AtomicU64,
    /// Nanoseconds after `base` of the last change.
    last_ns: AtomicU64,
    /// Nanoseconds after `base` from which stretches between changes are
    /// kept ([`Progress::watch_pauses`]); `u64::MAX` until then.
    pauses_from_ns: AtomicU64,
    /// The longest stretch between two changes since `pauses_from_ns`.
    longest_pause_ns: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            base: Instant::now(),
            count: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            pauses_from_ns: AtomicU64::new(u64::MAX),
            longest_pause_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn stamp(&self) {
        self.stamp_at(self.now_ns());
    }

    /// A change at `ns` after `base`: the stretch since the last change
    /// is kept when that change came after [`Progress::watch_pauses`].
    fn stamp_at(&self, ns: u64) {
        let prev = self.last_ns.swap(ns, Ordering::AcqRel);
        if prev >= self.pauses_from_ns.load(Ordering::Acquire) {
            self.longest_pause_ns
                .fetch_max(ns.saturating_sub(prev), Ordering::AcqRel);
        }
    }

    /// From now on, keep the longest stretch between two changes (the
    /// wait before the first change, a start-up latency, is not one),
    /// read by [`Progress::longest_pause`]. Exact: measured as each
    /// change is counted, not polled.
    pub fn watch_pauses(&self) {
        self.watch_pauses_at(self.now_ns());
    }

    fn watch_pauses_at(&self, ns: u64) {
        self.longest_pause_ns.store(0, Ordering::Release);
        self.pauses_from_ns.store(ns, Ordering::Release);
    }

    /// The longest stretch between two changes since
    /// [`Progress::watch_pauses`]; with `still`, the count did not reach
    /// what was waited for, and the stretch from its last change (or from
    /// the watch's start) to now counts too: a stall that never ended.
    pub fn longest_pause(&self, still: bool) -> Duration {
        Duration::from_nanos(self.longest_pause_at(still, self.now_ns()))
    }

    fn longest_pause_at(&self, still: bool, now_ns: u64) -> u64 {
        let between = self.longest_pause_ns.load(Ordering::Acquire);
        if !still {
            return between;
        }
        let from = self.pauses_from_ns.load(Ordering::Acquire);
        let last = self.last_ns.load(Ordering::Acquire);
        let since = if from == u64::MAX {
            last
        } else {
            last.max(from)
        };
        between.max(now_ns.saturating_sub(since))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    /// Count `n` more; stamps only when `n` is not 0.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.count.fetch_add(n, Ordering::AcqRel);
            self.stamp();
        }
    }

    /// Set the count (from a polled counter); stamps only on change.
    pub fn set(&self, v: u64) {
        if self.count.swap(v, Ordering::AcqRel) != v {
            self.stamp();
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub fn last_change(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Acquire))
    }
}

/// Polls a named counter every millisecond into a [`Progress`]; stops on
/// drop.
pub struct CounterWatch {
    pub progress: Arc<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl CounterWatch {
    pub fn start(counters: Counters, name: &'static str) -> Self {
        let progress = Arc::new(Progress::new());
        progress.set(counters.get(name));
        let p = progress.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                p.set(counters.get(name));
            }
        });
        CounterWatch { progress, task }
    }
}

impl Drop for CounterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a wait for a count ended.
#[derive(Debug, Clone, Copy)]
pub struct Reached {
    pub count: u64,
    pub reached: bool,
    /// When the count last changed.
    pub last_change: Instant,
}

/// Wait until `p` reaches `target`, or stops moving for `stall` (after
/// `since`), or `overall` passes.
pub async fn wait_count(
    p: &Progress,
    target: u64,
    since: Instant,
    stall: Duration,
    overall: Duration,
) -> Reached {
    let deadline = Instant::now() + overall;
    loop {
        let count = p.count();
        let last = p.last_change().max(since);
        if count >= target || Instant::now() >= deadline || last.elapsed() >= stall {
            return Reached {
                count,
                reached: count >= target,
                last_change: p.last_change(),
            };
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A spawned task aborted on drop.
pub struct Task(tokio::task::JoinHandle<()>);

impl Task {
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Task(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Count every message of a core subscription.
pub fn count_messages(mut sub: async_nats::Subscriber) -> (Arc<Progress>, Task) {
    use futures::StreamExt;
    let p = Arc::new(Progress::new());
    let q = p.clone();
    let task = Task::spawn(async move {
        while sub.next().await.is_some() {
            q.inc();
        }
    });
    (p, task)
}

/// Count the audit records of event `event` seen by `sub` (a subscription
/// to every audit subject): a message holds one record or a batch of them
/// (as `skos_bus::audit::records_of` reads them).
pub fn count_audited(
    mut sub: async_nats::Subscriber,
    event: &'static str,
) -> (Arc<Progress>, Task) {
    use futures::StreamExt;
    let p = Arc::new(Progress::new());
    let q = p.clone();
    let task = Task::spawn(async move {
        while let Some(m) = sub.next().await {
            q.add(events_in(&m.payload, event));
        }
    });
    (p, task)
}

/// How many of the audit records in `payload` (one record, or a batch of
/// them) are of event `event`; 0 for what is not records. Only each
/// record's `entry.event_type` is read, borrowed, and nothing else is
/// built: the count runs beside the coordinator it measures, on the same
/// cores.
fn events_in(payload: &[u8], event: &str) -> u64 {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Record<'a> {
        #[serde(borrow)]
        entry: Entry<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        #[serde(borrow)]
        event_type: Cow<'a, str>,
    }
    let is = |r: &Record| r.entry.event_type == event;
    if payload.trim_ascii_start().first() == Some(&b'[') {
        serde_json::from_slice::<Vec<Record>>(payload)
            .map_or(0, |rs| rs.iter().filter(|r| is(r)).count() as u64)
    } else {
        serde_json::from_slice::<Record>(payload).map_or(0, |r| u64::from(is(&r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Records are counted by event, one or a batch to a message, escaped
    /// or not, as the trail holds them; what is not a record counts none.
    #[test]
    fn audit_records_are_counted_by_event() {
        let rec = |event: &str| {
            json!({"seq": 1, "prev_hash": "p", "hash": "h", "entry": {
                "actor": "coordinator", "data": {"event_type": "command", "n": [1.5]},
                "event_type": event, "summary": "x \"y\"", "timestamp": "t"}})
        };
        let command = rec("command").to_string();
        let escaped = command.replace(
            r#""event_type":"command","summary""#,
            r#""event_type":"comm\u0061nd","summary""#,
        );
        assert_ne!(escaped, command);
        let batch = format!("[{command},{},{command},\n {escaped}]", rec("alert"));
        assert_eq!(events_in(batch.as_bytes(), "command"), 3);
        assert_eq!(
            events_in(rec("command").to_string().as_bytes(), "command"),
            1
        );
        assert_eq!(events_in(rec("alert").to_string().as_bytes(), "command"), 0);
        assert_eq!(events_in(b"not json", "command"), 0);
        assert_eq!(events_in(b"[{\"seq\": 1}]", "command"), 0);
    }

    #[tokio::test]
    async fn waits_for_target_or_stall() {
        let p = Arc::new(Progress::new());
        let q = p.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                q.inc();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let r = wait_count(
            &p,
            5,
            Instant::now(),
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.reached);
        assert_eq!(r.count, 5);
        let r = wait_count(
            &p,
            10,
            Instant::now(),
            Duration::from_millis(50),
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.reached);
        assert_eq!(r.count, 5);
        p.set(5);
        p.set(7);
        assert_eq!(p.count(), 7);
    }

    /// Stretches between changes count from the watch on, the wait
    /// before the first change left out; a stall that never ended counts
    /// from the last change; a new watch starts afresh.
    #[test]
    fn the_longest_pause_leaves_out_the_wait_before_the_first_change() {
        const MS: u64 = 1_000_000;
        let p = Progress::new();
        p.stamp_at(100 * MS);
        p.watch_pauses_at(1_000 * MS);
        p.stamp_at(5_000 * MS);
        assert_eq!(
            p.longest_pause_at(false, 5_000 * MS),
            0,
            "the start-up wait counted"
        );
        for (ms, longest) in [(5_010, 10), (5_900, 890), (5_920, 890)] {
            p.stamp_at(ms * MS);
            assert_eq!(
                p.longest_pause_at(false, ms * MS),
                longest * MS,
                "at {ms} ms"
            );
        }
        // Not reached: stuck since the last change at 5,920 ms.
        assert_eq!(p.longest_pause_at(true, 7_000 * MS), 1_080 * MS);
        assert_eq!(p.longest_pause_at(true, 6_000 * MS), 890 * MS);
        p.watch_pauses_at(8_000 * MS);
        assert_eq!(p.longest_pause_at(false, 8_000 * MS), 0);
        // Nothing since the watch began: stuck since it began.
        assert_eq!(p.longest_pause_at(true, 8_500 * MS), 500 * MS);
    }
}
