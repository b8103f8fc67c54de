//! What the harness's process logged at warning level or above: the
//! in-process coordinator's warnings and errors (a failed publish or
//! state write, a consumer re-attached) and its clients', counted
//! whatever `RUST_LOG` says, so that a section can say what went wrong
//! while it measured. Without it they were dropped unless `RUST_LOG` was
//! set.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many of the last lines are kept.
const KEEP: usize = 8;

/// Warnings and errors logged since the process started.
#[derive(Debug, Default)]
pub struct Logged {
    /// Counts and lines together, so that a mark and the lines after it
    /// always agree.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    counts: Mark,
    /// The last [`KEEP`] of them, each with the total count it made.
    last: VecDeque<(u64, String)>,
}

/// Counts at one moment, to tell what was logged after it
/// ([`Logged::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub warnings: u64,
    pub errors: u64,
}

/// What was logged between a [`Mark`] and now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Since {
    pub warnings: u64,
    pub errors: u64,
    /// The last lines of them (at most [`KEEP`]), oldest first: level,
    /// target, message and fields.
    pub last: Vec<String>,
}

impl Since {
    /// What `parts` (in order) logged, together: their counts summed,
    /// their last lines kept (at most [`KEEP`], the latest).
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a Since>) -> Since {
        let mut all = Since::default();
        for p in parts {
            all.warnings += p.warnings;
            all.errors += p.errors;
            all.last.extend(p.last.iter().cloned());
        }
        let extra = all.last.len().saturating_sub(KEEP);
        all.last.drain(..extra);
        all
    }

    /// Warnings and errors together.
    pub fn total(&self) -> u64 {
        self.warnings + self.errors
    }

    /// "2 warnings, 1 error; last: ..." or `None` when nothing was logged.
    pub fn summary(&self) -> Option<String> {
        if self.total() == 0 {
            return None;
        }
        let last = self.last.last().map(String::as_str).unwrap_or_default();
        Some(format!(
            "{} warning(s), {} error(s) logged; last: {last}",
            self.warnings, self.errors
        ))
    }
}

impl Since {
    /// The figure of `section` saying how many warnings and errors were
    /// logged `while` (e.g. "during the bursts"), its note the last one.
    /// No target: what they say matters more than how many.
    pub fn figure(&self, section: &str, while_: &str) -> crate::report::Figure {
        crate::report::Figure::new(
            section,
            format!("warnings and errors logged {while_}"),
            self.total() as f64,
            "lines",
        )
        .note(self.summary().unwrap_or_else(|| {
            "the in-process coordinator's and the clients', whatever RUST_LOG says".to_string()
        }))
    }
}

impl Logged {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counts now.
    pub fn mark(&self) -> Mark {
        self.lock().counts
    }

    /// What was logged after `mark`.
    pub fn since(&self, mark: Mark) -> Since {
        let inner = self.lock();
        let from = mark.warnings + mark.errors;
        let last = inner
            .last
            .iter()
            .filter(|(n, _)| *n > from)
            .map(|(_, line)| line.clone())
            .collect();
        Since {
            warnings: inner.counts.warnings.saturating_sub(mark.warnings),
            errors: inner.counts.errors.saturating_sub(mark.errors),
            last,
        }
    }

    fn note(&self, level: Level, line: String) {
        let mut inner = self.lock();
        if level == Level::ERROR {
            inner.counts.errors += 1;
        } else {
            inner.counts.warnings += 1;
        }
        let n = inner.counts.warnings + inner.counts.errors;
        if inner.last.len() == KEEP {
            inner.last.pop_front();
        }
        inner.last.push_back((n, line));
    }
}

/// The process's record, shared by the layer and the sections.
pub fn logged() -> &'static Logged {
    static LOGGED: OnceLock<Logged> = OnceLock::new();
    LOGGED.get_or_init(Logged::default)
}

/// A layer that notes every event at warning level or above in
/// [`logged`]; the caller filters it to that level.
#[derive(Debug, Default)]
pub struct Counting;

impl<S: Subscriber> Layer<S> for Counting {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        logged().note(
            *meta.level(),
            format!(
                "{} {}: {}{}",
                meta.level(),
                meta.target(),
                line.message,
                line.fields
            ),
        );
    }
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Warnings and errors are counted apart, with their lines; what is
    /// below warning level is not; `since` tells only what came after its
    /// mark.
    #[test]
    fn warnings_and_errors_are_counted_with_their_last_lines() {
        let subscriber = tracing_subscriber::registry().with(Counting);
        tracing::subscriber::with_default(subscriber, || {
            let before = logged().mark();
            tracing::info!("not counted");
            tracing::warn!(consumer = "c1", "durable consumer interrupted");
            let mid = logged().mark();
            tracing::error!(waiting = 3, "batch's effects not all carried out yet");
            let all = logged().since(before);
            assert_eq!((all.warnings, all.errors), (1, 1));
            assert_eq!(all.last.len(), 2);
            assert!(
                all.last[0].starts_with("WARN ")
                    && all.last[0].ends_with("durable consumer interrupted consumer=c1"),
                "{:?}",
                all.last
            );
            let after = logged().since(mid);
            assert_eq!((after.warnings, after.errors), (0, 1));
            assert_eq!(
                after.summary().as_deref(),
                Some(
                    "0 warning(s), 1 error(s) logged; last: ERROR skos_bench::logged::tests: \
                     batch's effects not all carried out yet waiting=3"
                )
            );
            assert_eq!(logged().since(logged().mark()).summary(), None);
            let both = Since::merged([&after, &all]);
            assert_eq!((both.warnings, both.errors), (1, 2));
            assert_eq!(both.last.len(), 3);
            let many: Vec<Since> = (0..10).map(|_| all.clone()).collect();
            let kept = Since::merged(&many);
            assert_eq!((kept.total(), kept.last.len()), (20, KEEP));
        });
    }
}
