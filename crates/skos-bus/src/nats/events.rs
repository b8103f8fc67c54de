//! What the server tells a connection outside any reply: its refusals of
//! this credential's publishes and subscriptions (`-ERR 'Permissions
//! Violation for …'`), disconnections, slow consumers, lame duck mode.
//!
//! [`on_event`] logs each (a refusal at most once a minute per text, so a
//! credential refused on every heartbeat logs one line a minute) and keeps
//! the refusals ([`Refusals`]), so that a request that got no answer can
//! say the server refused it ([`Refusals::naming`]) rather than that
//! nobody answered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::{Event, ServerError};

/// Distinct refusals kept, the oldest forgotten first.
const KEPT: usize = 32;
/// A refusal of the same text is logged again after this long.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// How the server's refusals of a permission begin (nats-server 2.9 and
/// later: `Permissions Violation for Publish to "<subject>"`, `… for
/// Subscription to "<subject>"`, `… for Publish with Reply of "<subject>"`).
const PREFIX: &str = "Permissions Violation for ";

/// What a refusal refused, read from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused<'a> {
    /// Publishing to the subject.
    Publish(&'a str),
    /// Subscribing to the subject.
    Subscription(&'a str),
    /// Publishing with the subject as the reply subject.
    Reply(&'a str),
}

/// Read a refusal's text (the `-ERR` text without its quotes); `None` for
/// any other server error, or a refusal of a kind not known here.
fn parse(text: &str) -> Option<Refused<'_>> {
    let rest = text.strip_prefix(PREFIX)?;
    let (kind, quoted) = rest.split_once(' ').map(|(k, r)| (k, r.trim()))?;
    let (kind, quoted) = match (kind, quoted.strip_prefix("with Reply of ")) {
        ("Publish", Some(q)) => ("Reply", q),
        (k, _) => (k, quoted.strip_prefix("to ")?),
    };
    let subject = quoted.strip_prefix('"')?.strip_suffix('"')?;
    match kind {
        "Publish" => Some(Refused::Publish(subject)),
        "Subscription" => Some(Refused::Subscription(subject)),
        "Reply" => Some(Refused::Reply(subject)),
        _ => None,
    }
}

/// One refusal's text, when it was last logged and last seen.
#[derive(Debug)]
struct Kept {
    text: String,
    logged: Instant,
    seen: Instant,
}

/// The server's refusals of this connection's publishes and subscriptions,
/// by text, newest last, at most [`KEPT`].
#[derive(Debug)]
pub(crate) struct Refusals {
    /// The prefix of the subjects this connection's replies come back on.
    inbox: String,
    kept: Mutex<VecDeque<Kept>>,
    /// Woken at each refusal ([`Refusals::heard`]).
    heard: tokio::sync::Notify,
    /// The connection was lost, and not yet made again.
    disconnected: AtomicBool,
}

impl Refusals {
    /// None yet, for a connection whose replies come back under `inbox`.
    pub(crate) fn new(inbox: &str) -> Self {
        Self {
            inbox: inbox.to_string(),
            kept: Mutex::default(),
            heard: tokio::sync::Notify::new(),
            disconnected: AtomicBool::new(false),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Kept>> {
        // A panic while holding it left whole entries: keep using them.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves at the next refusal noted after it was made (made before
    /// looking at [`Refusals::naming`], none is missed).
    pub(crate) fn heard(&self) -> tokio::sync::futures::Notified<'_> {
        self.heard.notified()
    }

    /// Note the refusal `text`, seen at `now`; true when it is to be
    /// logged (not logged in the last [`LOG_EVERY`]).
    fn note(&self, text: &str, now: Instant) -> bool {
        let log = self.keep(text, now);
        self.heard.notify_waiters();
        log
    }

    fn keep(&self, text: &str, now: Instant) -> bool {
        let mut kept = self.kept();
        let known = kept.iter().position(|k| k.text == text);
        if let Some(mut k) = known.and_then(|at| kept.remove(at)) {
            k.seen = now;
            let log = now.duration_since(k.logged) >= LOG_EVERY;
            if log {
                k.logged = now;
            }
            kept.push_back(k);
            return log;
        }
        if kept.len() >= KEPT {
            kept.pop_front();
        }
        kept.push_back(Kept {
            text: text.to_string(),
            logged: now,
            seen: now,
        });
        true
    }

    /// The newest refusal that keeps a request to `subject` from being
    /// answered: publishing to `subject` refused at or after `since`, or
    /// (whenever seen: the replies' subscription is made once) subscribing
    /// to, or asking for replies on, a subject under the connection's inbox.
    pub(crate) fn naming(&self, since: Instant, subject: &str) -> Option<String> {
        let under_inbox = |s: &str| {
            s.strip_prefix(self.inbox.as_str())
                .is_some_and(|r| r.is_empty() || r.starts_with('.'))
        };
        self.kept()
            .iter()
            .rev()
            .find(|k| match parse(&k.text) {
                Some(Refused::Publish(s)) => s == subject && k.seen >= since,
                Some(Refused::Subscription(s) | Refused::Reply(s)) => under_inbox(s),
                None => false,
            })
            .map(|k| k.text.clone())
    }
}

/// Log `event` and keep what it refused in `refusals`.
pub(crate) fn on_event(refusals: &Refusals, connection: &str, event: Event) {
    match event {
        Event::ServerError(ServerError::Other(text)) if text.starts_with(PREFIX) => {
            if refusals.note(&text, Instant::now()) {
                tracing::warn!(
                    connection,
                    refusal = %text,
                    "the bus refused this credential (a refusal is logged once a minute)"
                );
            }
        }
        Event::ServerError(e) => {
            tracing::warn!(connection, error = %e, "the bus reported an error");
        }
        Event::Disconnected => {
            refusals.disconnected.store(true, Ordering::SeqCst);
            tracing::warn!(connection, "bus connection lost; reconnecting");
        }
        Event::Connected => {
            if refusals.disconnected.swap(false, Ordering::SeqCst) {
                tracing::info!(connection, "bus connection made again");
            }
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                connection,
                subscription = sid,
                "the bus dropped messages this connection did not take in time"
            );
        }
        Event::LameDuckMode => {
            tracing::warn!(
                connection,
                "the bus server is shutting down (lame duck mode); the client will reconnect elsewhere"
            );
        }
        Event::ClientError(e) => {
            tracing::warn!(connection, error = %e, "bus client error");
        }
        other => tracing::debug!(connection, event = %other, "bus connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_nats_servers_texts() {
        assert_eq!(
            parse(r#"Permissions Violation for Publish to "skos.status""#),
            Some(Refused::Publish("skos.status"))
        );
        assert_eq!(
            parse(r#"Permissions Violation for Subscription to "_INBOX_OPERATOR.abc.*""#),
            Some(Refused::Subscription("_INBOX_OPERATOR.abc.*"))
        );
        assert_eq!(
            parse(r#"Permissions Violation for Publish with Reply of "_INBOX.x.y""#),
            Some(Refused::Reply("_INBOX.x.y"))
        );
        for other in [
            "Authorization Violation",
            "Maximum Payload Violation",
            r#"Permissions Violation for Publish to skos.status"#,
            r#"Permissions Violation for Teleport to "x""#,
            "Permissions Violation for ",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_refusal_is_logged_once_a_minute_and_the_newest_kept() {
        let r = Refusals::new("_INBOX");
        let t0 = Instant::now();
        let text = r#"Permissions Violation for Publish to "skos.status""#;
        assert!(r.note(text, t0));
        assert!(!r.note(text, t0 + Duration::from_secs(59)));
        assert!(r.note(text, t0 + LOG_EVERY));
        assert!(!r.note(text, t0 + LOG_EVERY + Duration::from_secs(1)));
        for n in 0..KEPT + 5 {
            r.note(
                &format!("Permissions Violation for Publish to \"s.{n}\""),
                t0,
            );
        }
        assert_eq!(r.kept().len(), KEPT);
        assert!(r.naming(t0, "s.0").is_none(), "the oldest forgotten");
        assert!(r.naming(t0, &format!("s.{}", KEPT + 4)).is_some());
    }

    #[test]
    fn a_request_is_refused_by_its_subject_or_its_inbox() {
        let r = Refusals::new("_INBOX_OPERATOR");
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        r.note(r#"Permissions Violation for Publish to "skos.status""#, t0);
        assert!(r.naming(t0, "skos.status").is_some());
        assert!(
            r.naming(later, "skos.status").is_none(),
            "a publish refused before the request says nothing of it"
        );
        assert!(r.naming(t0, "skos.control").is_none());
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX_OPERATOR2.abc.*""#,
            t0,
        );
        assert!(r.naming(later, "skos.control").is_none(), "another inbox");
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX_OPERATOR.abc.*""#,
            t0,
        );
        assert!(r.naming(later, "skos.control").is_some());
    }
}
