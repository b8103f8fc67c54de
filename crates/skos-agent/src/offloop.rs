//! Reading an antibody's sources off the agent loop.
//!
//! The storage watcher's `statvfs` of a hung network mount, the mesh
//! healer's `ip`, `wg` and probes of a dead path, the loop breaker's scan
//! of `/proc` (a process in uninterruptible sleep can hold a read of its
//! `cmdline`) may take seconds or never return. A [`Reader`] runs such a
//! read on one thread of its own: the agent loop asks for a read, goes on
//! with heartbeats and commands, and judges the reading when it arrives
//! ([`crate::antibody::Antibody::arrivals`]). A read is asked of an idle
//! reader only, so one that hangs holds that one thread and nothing else,
//! and no thread piles up behind it. The thermal sentinel does the same
//! per sensor source (`thermal::sensors::sources`).
//!
//! A read that runs past its budget makes the source `slow`, and one that
//! panics makes it `failing` (where the program lets a panic unwind: the
//! `skos` binary ends the process on any panic instead, so that its
//! supervisor restarts it), reported in the heartbeat's
//! `metadata.sensor_errors` under the source's name (the shape of the
//! thermal sources' entries) until a read ends well within it.
//!
//! A change the antibody makes itself (a restart, a cleanup, a signal)
//! outdates a read asked before it: [`Reader::invalidate`] discards what
//! such a read gives, so nothing is judged on the world as it was before
//! the change.
//!
//! The thread is never joined: dropping the reader returns at once, and a
//! hung thread ends with the process. (A read the kernel waits for
//! uninterruptibly, as a `statfs` sent to a FUSE daemon that never answers,
//! keeps the process from exiting until that filesystem is aborted through
//! `/sys/fs/fuse/connections/<N>/abort` or unmounted: no thread can help
//! it.)

use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use skos_core::protocol::Heartbeat;
use skos_core::timefmt::Timestamp;
use tokio::sync::Notify;

/// How long an antibody's first look waits for its read, so the first
/// heartbeat carries what was read ([`Reader::look`]).
pub const FIRST_LOOK: Duration = Duration::from_secs(1);

/// Stack of a reader thread, bytes: running a tool, a probe or a scan of
/// `/proc` and parsing what it gives need little.
const READER_STACK: usize = 512 * 1024;

/// One read, run on the reader's thread.
type Job<R> = Box<dyn FnOnce() -> R + Send>;

/// What the reader's thread and the agent loop share.
struct Slot<R> {
    /// When the read in progress began (monotonic, and in wall time for
    /// the report); `None` when idle.
    running: Option<(Instant, Timestamp)>,
    /// The generation the read in progress was asked in.
    asked_in: u64,
    /// The current generation: raised by [`Reader::invalidate`].
    generation: u64,
    /// The last read's result and the generation it was asked in, until
    /// taken.
    done: Option<(u64, R)>,
    /// Why the last read gave nothing (it panicked), until one gives.
    failed: Option<String>,
    /// When the last read that ended within its budget ended.
    last_good: Option<Instant>,
    /// The run of slow reads in progress: when its first began, and how
    /// many (the one running included once it is past the budget).
    slow: Option<(Timestamp, u32)>,
}

/// One source's reads, on a thread of its own, within a time budget.
pub struct Reader<R> {
    /// Its name in `metadata.sensor_errors` (`storage:/srv`, `mesh`,
    /// `processes`).
    source: String,
    /// What it reads, for the report (`statvfs of /srv`).
    at: String,
    /// A read longer than this is slow.
    budget: Duration,
    jobs: Option<SyncSender<Job<R>>>,
    shared: Arc<(Mutex<Slot<R>>, Condvar)>,
    arrivals: Arc<Notify>,
    /// A read was asked before ([`Reader::look`] waits on the first only).
    looked: bool,
}

fn lock<R>(m: &Mutex<Slot<R>>) -> MutexGuard<'_, Slot<R>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: Send + 'static> Reader<R> {
    /// A reader of `source` (reading `at`) whose reads are slow past
    /// `budget`. Its thread starts on the first read.
    pub fn new(source: impl Into<String>, at: impl Into<String>, budget: Duration) -> Self {
        Self {
            source: source.into(),
            at: at.into(),
            budget,
            jobs: None,
            shared: Arc::new((
                Mutex::new(Slot {
                    running: None,
                    asked_in: 0,
                    generation: 0,
                    done: None,
                    failed: None,
                    last_good: None,
                    slow: None,
                }),
                Condvar::new(),
            )),
            arrivals: Arc::new(Notify::new()),
            looked: false,
        }
    }

    /// The same reader, signalling `arrivals` when a read has ended (one
    /// signal shared by an antibody's readers).
    pub fn notify_on(mut self, arrivals: Arc<Notify>) -> Self {
        self.arrivals = arrivals;
        self
    }

    /// The signal raised when a read has ended.
    pub fn arrivals(&self) -> Arc<Notify> {
        self.arrivals.clone()
    }

    /// Whether a read is in progress.
    pub fn busy(&self) -> bool {
        lock(&self.shared.0).running.is_some()
    }

    /// Start `read` if no read is in progress; false when one is (the
    /// source is read again once it ends) or the thread cannot be started.
    pub fn ask(&mut self, read: impl FnOnce() -> R + Send + 'static) -> bool {
        {
            let mut slot = lock(&self.shared.0);
            if slot.running.is_some() {
                return false;
            }
            slot.running = Some((Instant::now(), chrono::Utc::now()));
            slot.asked_in = slot.generation;
        }
        let mut job: Option<Job<R>> = Some(Box::new(read));
        // A thread that is gone (it cannot be, reads are caught, but a
        // send can still fail) is started again, once.
        for _ in 0..2 {
            if self.jobs.is_none() {
                self.jobs = self.spawn();
            }
            let Some(tx) = &self.jobs else { break };
            match job.take().map(|j| tx.send(j)) {
                Some(Ok(())) => return true,
                Some(Err(mpsc::SendError(j))) => {
                    job = Some(j);
                    self.jobs = None;
                }
                None => break,
            }
        }
        lock(&self.shared.0).running = None;
        false
    }

    /// What an antibody's look does: [`Reader::ask`], and on the first
    /// one wait up to [`FIRST_LOOK`] for the read. True when it waited, so
    /// the caller judges what came.
    pub fn look(&mut self, read: impl FnOnce() -> R + Send + 'static) -> bool {
        if !self.ask(read) || self.looked {
            return false;
        }
        self.looked = true;
        self.settle(FIRST_LOOK);
        true
    }

    /// Discard what any read asked before now gives: the antibody changed
    /// what it reads (a restart, a cleanup, a signal sent).
    pub fn invalidate(&mut self) {
        let mut slot = lock(&self.shared.0);
        slot.generation = slot.generation.wrapping_add(1);
        slot.done = None;
    }

    /// A read asked now and waited for at most `limit` (a read in
    /// progress, which [`Reader::invalidate`] discards, is waited for
    /// first, within the same limit); `None` when none came in time.
    pub fn read_fresh(
        &mut self,
        limit: Duration,
        read: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let until = Instant::now() + limit;
        self.invalidate();
        if self.busy() {
            self.settle(limit);
            if self.busy() {
                return None;
            }
            let _ = self.take();
        }
        if !self.ask(read) {
            return None;
        }
        self.settle(until.saturating_duration_since(Instant::now()));
        self.take()
    }

    fn spawn(&self) -> Option<SyncSender<Job<R>>> {
        let (tx, rx) = mpsc::sync_channel::<Job<R>>(1);
        let shared = self.shared.clone();
        let arrivals = self.arrivals.clone();
        let budget = self.budget;
        let spawned = std::thread::Builder::new()
            .name(format!("skos-read-{}", self.source))
            .stack_size(READER_STACK)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A read that panics gives nothing and is said; the
                    // thread goes on with the next.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    let (m, cv) = &*shared;
                    let mut slot = lock(m);
                    let asked_in = slot.asked_in;
                    if let Some((began, at)) = slot.running.take() {
                        if began.elapsed() > budget {
                            let (since, count) = slot.slow.unwrap_or((at, 0));
                            slot.slow = Some((since, count.saturating_add(1)));
                        } else if out.is_ok() {
                            slot.last_good = Some(Instant::now());
                            slot.slow = None;
                        }
                    }
                    match out {
                        Ok(out) => {
                            slot.failed = None;
                            slot.done = Some((asked_in, out));
                        }
                        Err(panic) => {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".into());
                            slot.failed = Some(format!("the read panicked: {why}"));
                        }
                    }
                    drop(slot);
                    cv.notify_all();
                    arrivals.notify_one();
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(source = %self.source, error = %e, "cannot start a reader thread");
                None
            }
        }
    }

    /// Wait at most `limit` for the read in progress to end.
    pub fn settle(&self, limit: Duration) {
        let (m, cv) = &*self.shared;
        let slot = lock(m);
        let _ = cv.wait_timeout_while(slot, limit, |s| s.running.is_some() && s.done.is_none());
    }

    /// The last read's result, once (`None` if none ended since, or the
    /// one that ended was asked before [`Reader::invalidate`]).
    pub fn take(&mut self) -> Option<R> {
        let mut slot = lock(&self.shared.0);
        let generation = slot.generation;
        slot.done
            .take()
            .filter(|(asked_in, _)| *asked_in == generation)
            .map(|(_, r)| r)
    }

    /// Whether the read in progress has run past its budget.
    pub fn running_late(&self) -> bool {
        lock(&self.shared.0)
            .running
            .is_some_and(|(began, _)| began.elapsed() > self.budget)
    }

    /// The source's entry for `metadata.sensor_errors` when it is slow
    /// (its last read ran, or its read in progress runs, past the budget)
    /// or failing (its last read panicked).
    pub fn trouble(&self) -> Option<Value> {
        let slot = lock(&self.shared.0);
        if let (Some(why), false) = (&slot.failed, slot.running.is_some()) {
            return Some(json!({
                "at": self.at,
                "problem": "failing",
                "message": why,
                "count": 1,
                "last_good_seconds": slot.last_good.map(|t| t.elapsed().as_secs_f64()),
            }));
        }
        let running_late = slot
            .running
            .filter(|(began, _)| began.elapsed() > self.budget);
        let (since, count) = match (slot.slow, running_late) {
            (Some((since, n)), Some(_)) => (since, n.saturating_add(1)),
            (Some(s), None) => s,
            (None, Some((_, at))) => (at, 1),
            (None, None) => return None,
        };
        let reading_for = slot.running.map(|(began, _)| began.elapsed().as_secs_f64());
        let message = match reading_for {
            Some(s) if s > self.budget.as_secs_f64() => format!(
                "read in progress for {s:.1} s, past its budget of {} s",
                self.budget.as_secs_f64()
            ),
            _ => format!(
                "last read ran past its budget of {} s",
                self.budget.as_secs_f64()
            ),
        };
        Some(json!({
            "at": self.at,
            "problem": "slow",
            "message": message,
            "since": skos_core::timefmt::format(&since),
            "count": count,
            "reading_for_seconds": reading_for,
            "last_good_seconds": slot.last_good.map(|t| t.elapsed().as_secs_f64()),
        }))
    }

    /// Add [`Reader::trouble`] to a heartbeat's `metadata.sensor_errors`.
    pub fn report(&self, hb: &mut Heartbeat) {
        if let Some(t) = self.trouble() {
            add_sensor_error(hb, &self.source, t);
        }
    }
}

/// Add one source's entry to a heartbeat's `metadata.sensor_errors` (an
/// object by source name, shared by every antibody).
pub fn add_sensor_error(hb: &mut Heartbeat, source: &str, entry: Value) {
    let errors = hb
        .metadata
        .entry("sensor_errors")
        .or_insert_with(|| Value::Object(Map::new()));
    if !errors.is_object() {
        *errors = Value::Object(Map::new());
    }
    if let Some(o) = errors.as_object_mut() {
        o.insert(source.to_string(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_run_off_the_caller_and_its_result_taken_once() {
        let mut r = Reader::new("test", "a test", Duration::from_secs(5));
        assert!(r.ask(|| 7));
        r.settle(Duration::from_secs(5));
        assert_eq!(r.take(), Some(7));
        assert_eq!(r.take(), None);
        assert!(!r.busy());
        assert!(r.trouble().is_none());
    }

    #[test]
    fn a_hung_read_is_not_asked_again_and_is_reported_slow() {
        let mut r = Reader::new("test", "a test", Duration::from_millis(50));
        let (release, wait) = mpsc::channel::<()>();
        assert!(r.ask(move || {
            let _ = wait.recv();
            1
        }));
        assert!(!r.ask(|| 2), "a second read while the first hangs");
        r.settle(Duration::from_millis(200));
        assert_eq!(r.take(), None);
        let t = r.trouble().expect("slow while it hangs");
        assert_eq!(t["problem"], "slow");
        assert_eq!(t["count"], 1);
        assert!(t["reading_for_seconds"].as_f64() > Some(0.05), "{t}");
        assert!(t["last_good_seconds"].is_null(), "{t}");
        // It ends late: still slow (the last read ran past the budget),
        // then a read within the budget clears it.
        release.send(()).unwrap();
        r.settle(Duration::from_secs(5));
        assert_eq!(r.take(), Some(1));
        let t = r.trouble().expect("the last read was late");
        assert_eq!(t["count"], 1);
        assert!(t["reading_for_seconds"].is_null(), "{t}");
        assert!(r.ask(|| 3));
        r.settle(Duration::from_secs(5));
        assert_eq!(r.take(), Some(3));
        assert!(r.trouble().is_none());
    }

    #[test]
    fn only_the_first_look_waits_for_its_read() {
        let mut r = Reader::new("test", "a test", Duration::from_secs(5));
        assert!(r.look(|| 1), "the first look waited");
        assert_eq!(r.take(), Some(1), "and the read is there");
        assert!(!r.look(|| 2), "a later look does not wait");
        r.settle(Duration::from_secs(5));
        assert_eq!(r.take(), Some(2));
    }

    #[test]
    fn a_read_asked_before_a_change_is_discarded() {
        let mut r = Reader::new("test", "a test", Duration::from_secs(5));
        let (release, wait) = mpsc::channel::<()>();
        assert!(r.ask(move || {
            let _ = wait.recv();
            "before"
        }));
        r.invalidate();
        release.send(()).unwrap();
        r.settle(Duration::from_secs(5));
        assert_eq!(r.take(), None, "asked before the change");
        assert_eq!(
            r.read_fresh(Duration::from_secs(5), || "after"),
            Some("after")
        );
        // A fresh read waits for a stale one in progress, then reads.
        let (release, wait) = mpsc::channel::<()>();
        assert!(r.ask(move || {
            let _ = wait.recv();
            "stale"
        }));
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let _ = release.send(());
        });
        assert_eq!(
            r.read_fresh(Duration::from_secs(5), || "fresh"),
            Some("fresh")
        );
    }

    #[test]
    fn a_read_that_panics_is_said_and_the_source_read_again() {
        let mut r: Reader<u32> = Reader::new("test", "a test", Duration::from_secs(5));
        assert!(r.ask(|| panic!("bad parse")));
        r.settle(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!r.busy());
        assert_eq!(r.take(), None);
        let t = r.trouble().expect("failing");
        assert_eq!(t["problem"], "failing");
        assert!(t["message"].as_str().unwrap().contains("bad parse"), "{t}");
        assert!(r.ask(|| 4), "asked again after a panic");
        r.settle(Duration::from_secs(5));
        assert_eq!(r.take(), Some(4));
        assert!(r.trouble().is_none());
    }

    #[test]
    fn sensor_errors_of_several_sources_are_kept_side_by_side() {
        let mut hb = Heartbeat::bare(
            "a",
            "agent",
            skos_core::NodeName::parse("a").unwrap(),
            chrono::Utc::now(),
        );
        add_sensor_error(&mut hb, "hwmon3", json!({"problem": "slow"}));
        add_sensor_error(&mut hb, "storage", json!({"problem": "slow"}));
        let errors = hb.metadata["sensor_errors"].as_object().unwrap();
        assert_eq!(errors.len(), 2);
        assert!(errors.contains_key("hwmon3") && errors.contains_key("storage"));
    }
}
