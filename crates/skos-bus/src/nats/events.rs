//! What the server tells a connection outside any reply: its refusals of
//! this credential's publishes and subscriptions (`-ERR 'Permissions
//! Violation for …'`), disconnections, slow consumers, lame duck mode,
//! and the client's own errors (each failed reconnection attempt).
//!
//! [`on_event`] logs each through a [`Limiter`] (a text at most once a
//! minute, at most [`LINES_PER_MINUTE`] lines a minute in all, the rest
//! counted and said with the next line), so a credential refused on every
//! heartbeat, or a client retrying a server that is down, logs a few lines
//! a minute. It keeps the refusals ([`Refusals`]), so that a request that
//! got no answer can say the server refused it ([`Refusals::naming`])
//! rather than that nobody answered.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::{Event, ServerError};

/// Publish refusals kept, the oldest forgotten first; and texts the
/// [`Limiter`] remembers having logged.
const KEPT: usize = 32;
/// A text is logged again after this long; the window of
/// [`LINES_PER_MINUTE`].
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Lines logged in one [`LOG_EVERY`] window, whatever their texts: a
/// bound for texts that differ in ways [`shape`] does not see. High
/// enough that refusals of a few distinct subjects are all logged.
const LINES_PER_MINUTE: u32 = 30;
/// How the server's refusals of a permission begin (nats-server 2.9 and
/// later: `Permissions Violation for Publish to "<subject>"`, `… for
/// Subscription to "<subject>"` (and ` using queue "<queue>"`), `… for
/// Publish with Reply of "<subject>"`).
const PREFIX: &str = "Permissions Violation for ";

/// What a refusal refused, read from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    /// Publishing to the subject.
    Publish(String),
    /// Subscribing to the subject.
    Subscription(String),
    /// Publishing with the subject as the reply subject.
    Reply(String),
}

/// Read a refusal's text (the `-ERR` text without its single quotes; the
/// subject in Go's `%q` form, escapes and all); `None` for any other
/// server error, or a refusal of a kind not known here.
fn parse(text: &str) -> Option<Refused> {
    let rest = text.strip_prefix(PREFIX)?;
    let (kind, quoted) = rest.split_once(' ').map(|(k, r)| (k, r.trim_start()))?;
    let (kind, quoted) = match (kind, quoted.strip_prefix("with Reply of ")) {
        ("Publish", Some(q)) => ("Reply", q),
        (k, _) => (k, quoted.strip_prefix("to ")?),
    };
    let (subject, rest) = unquote(quoted)?;
    let rest = rest.trim();
    // A queue subscription names its queue after the subject.
    if !(rest.is_empty() || kind == "Subscription" && rest.starts_with("using queue ")) {
        return None;
    }
    match kind {
        "Publish" => Some(Refused::Publish(subject)),
        "Subscription" => Some(Refused::Subscription(subject)),
        "Reply" => Some(Refused::Reply(subject)),
        _ => None,
    }
}

/// The Go-quoted string (`strconv.Quote`, as `%q` writes it) at the start
/// of `s`: its text, escapes resolved (a byte escape that makes no UTF-8
/// is replaced by U+FFFD), and what follows its closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut chars = body.char_indices();
    let hex = |chars: &mut std::str::CharIndices<'_>, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v * 16 + chars.next()?.1.to_digit(16)?;
        }
        Some(v)
    };
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                let text = String::from_utf8_lossy(&out).into_owned();
                return Some((text, &body[at + 1..]));
            }
            '\\' => {
                let (_, e) = chars.next()?;
                let simple = match e {
                    'a' => Some(0x07),
                    'b' => Some(0x08),
                    'f' => Some(0x0c),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(0x0b),
                    '\\' => Some(b'\\'),
                    '"' => Some(b'"'),
                    '\'' => Some(b'\''),
                    _ => None,
                };
                if let Some(b) = simple {
                    out.push(b);
                    continue;
                }
                let code = match e {
                    'x' => {
                        out.push(u8::try_from(hex(&mut chars, 2)?).ok()?);
                        continue;
                    }
                    'u' => hex(&mut chars, 4)?,
                    'U' => hex(&mut chars, 8)?,
                    _ => return None,
                };
                let c = char::from_u32(code)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    None
}

/// What a refusal is counted as by the log's limiter: its kind and its
/// subject with the tokens that vary from message to message written `*`:
/// under `$JS.` (acknowledgements and JetStream requests), a token of
/// digits or of 16 letters and digits or more (an acknowledgement's
/// sequences, time and random part, a consumer's random name; SKOS's own
/// consumer names hold a `-`); under the connection's `inbox`, every token
/// after it. So refused acknowledgements of every message count as one
/// text, while refusals of distinct subjects (a node's, whatever its name)
/// count apart and are each logged. Other texts count as themselves.
fn shape(text: &str, refused: Option<&Refused>, inbox: &str) -> String {
    let (kind, subject) = match refused {
        Some(Refused::Publish(s)) => ("publish", s),
        Some(Refused::Subscription(s)) => ("subscription", s),
        Some(Refused::Reply(s)) => ("reply", s),
        None => return text.to_string(),
    };
    if let Some(rest) = subject.strip_prefix(inbox) {
        if rest.is_empty() || rest.starts_with('.') {
            let tokens = rest.split('.').skip(1).map(|_| "*");
            return format!(
                "{kind} {}",
                std::iter::once(inbox)
                    .chain(tokens)
                    .collect::<Vec<_>>()
                    .join(".")
            );
        }
    }
    if !subject.starts_with("$JS.") {
        return format!("{kind} {subject}");
    }
    let varies = |t: &str| {
        !t.is_empty()
            && (t.bytes().all(|b| b.is_ascii_digit())
                || (t.len() >= 16 && t.bytes().all(|b| b.is_ascii_alphanumeric())))
    };
    let tokens: Vec<&str> = subject
        .split('.')
        .map(|t| if varies(t) { "*" } else { t })
        .collect();
    format!("{kind} {}", tokens.join("."))
}

/// Whether a line is logged now ([`Limiter::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Logged; `not_logged` lines were kept quiet since the last one.
    Log { not_logged: u64 },
    /// Kept quiet (counted).
    Quiet,
}

/// Keeps one kind of log line to a few a minute: a text at most once a
/// [`LOG_EVERY`], and at most [`LINES_PER_MINUTE`] lines in a window of
/// it; what is kept quiet is counted and said with the next line.
#[derive(Debug)]
struct Limiter {
    /// Texts logged, with when, newest last, at most [`KEPT`].
    logged: VecDeque<(String, Instant)>,
    /// When the current window began, and the lines logged in it.
    window: Option<(Instant, u32)>,
    /// Lines kept quiet since the last one logged.
    quiet: u64,
}

impl Limiter {
    const fn new() -> Self {
        Self {
            logged: VecDeque::new(),
            window: None,
            quiet: 0,
        }
    }

    /// Whether `text`, seen at `now`, is logged.
    fn admit(&mut self, text: &str, now: Instant) -> Admit {
        let recent = self
            .logged
            .iter()
            .any(|(t, at)| t == text && now.saturating_duration_since(*at) < LOG_EVERY);
        let lines = match self.window {
            Some((began, lines)) if now.saturating_duration_since(began) < LOG_EVERY => lines,
            _ => {
                self.window = Some((now, 0));
                0
            }
        };
        if recent || lines >= LINES_PER_MINUTE {
            self.quiet = self.quiet.saturating_add(1);
            return Admit::Quiet;
        }
        if let Some((began, _)) = self.window {
            self.window = Some((began, lines + 1));
        }
        self.logged.retain(|(t, _)| t != text);
        if self.logged.len() >= KEPT {
            self.logged.pop_front();
        }
        self.logged.push_back((text.to_string(), now));
        Admit::Log {
            not_logged: std::mem::take(&mut self.quiet),
        }
    }
}

/// A publish refused: its subject (the reply subject when `reply`), its
/// text, when it was last seen.
#[derive(Debug)]
struct PublishRefused {
    subject: String,
    reply: bool,
    text: String,
    seen: Instant,
}

/// What the server refused a connection.
#[derive(Debug, Default)]
struct Kept {
    /// Publishes (to a subject, or with a reply subject), newest last, at
    /// most [`KEPT`].
    publishes: VecDeque<PublishRefused>,
    /// The refusal of the subscription the connection's replies come back
    /// on, with the connection it was heard on as far as the events say
    /// ([`Refusals::connected_at`]): it holds while the client has made no
    /// connection since (the client subscribes again on each reconnection,
    /// which a changed permission may allow).
    inbox: Option<(String, u64)>,
}

/// The server's refusals of this connection's publishes and subscriptions,
/// and the limits on the lines that log them and the connection's other
/// events.
#[derive(Debug)]
pub(crate) struct Refusals {
    /// The prefix of the subjects this connection's replies come back on.
    inbox: String,
    kept: Mutex<Kept>,
    /// Woken at each refusal ([`Refusals::heard`]).
    heard: tokio::sync::Notify,
    /// The connection was lost, and not yet made again.
    disconnected: std::sync::atomic::AtomicBool,
    /// The client's count of connections made (set once connected): a
    /// reconnection is seen by it even when the client drops the
    /// `Connected` event (its event queue is full).
    stats: std::sync::OnceLock<std::sync::Arc<async_nats::Statistics>>,
    /// The client's count of connections when the last `Connected` event
    /// was taken: a refusal taken after it was heard on that connection
    /// or a later one, and holds while the count has not moved (a late
    /// refusal of an old connection must not hold on a new one, and a
    /// `Connected` dropped once does not leave every later refusal one
    /// connection behind).
    connected_at: std::sync::atomic::AtomicU64,
    /// Lines logging refusals.
    refusal_lines: Mutex<Limiter>,
    /// Lines logging the client's and the server's other errors.
    error_lines: Mutex<Limiter>,
}

/// `m`, even after a panic while it was held (every value in these is
/// whole at all times).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Refusals {
    /// None yet, for a connection whose replies come back under `inbox`.
    pub(crate) fn new(inbox: &str) -> Self {
        Self {
            inbox: inbox.to_string(),
            kept: Mutex::default(),
            heard: tokio::sync::Notify::new(),
            disconnected: std::sync::atomic::AtomicBool::new(false),
            stats: std::sync::OnceLock::new(),
            connected_at: std::sync::atomic::AtomicU64::new(0),
            refusal_lines: Mutex::new(Limiter::new()),
            error_lines: Mutex::new(Limiter::new()),
        }
    }

    /// Count the connections made by the client whose events these are.
    pub(crate) fn watch(&self, stats: std::sync::Arc<async_nats::Statistics>) {
        let _ = self.stats.set(stats);
    }

    /// Connections made by the client so far; 1 until [`Refusals::watch`]
    /// (what is heard before the client is handed over is heard on its
    /// first connection).
    fn connects(&self) -> u64 {
        self.stats.get().map_or(1, |s| {
            s.connects.load(std::sync::atomic::Ordering::SeqCst).max(1)
        })
    }

    /// Resolves at the next refusal noted after it was made (made before
    /// looking at [`Refusals::naming`], none is missed).
    fn heard(&self) -> tokio::sync::futures::Notified<'_> {
        self.heard.notified()
    }

    /// Note the refusal `text`, seen at `now`; whether to log it (a
    /// refusal of the same kind and subject shape ([`shape`]) is logged
    /// once a minute).
    fn note(&self, text: &str, now: Instant) -> Admit {
        let refused = parse(text);
        let shape = shape(text, refused.as_ref(), &self.inbox);
        self.keep(text, refused, now);
        self.heard.notify_waiters();
        lock(&self.refusal_lines).admit(&shape, now)
    }

    fn under_inbox(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.inbox.as_str())
            .is_some_and(|r| r.is_empty() || r.starts_with('.'))
    }

    fn keep(&self, text: &str, refused: Option<Refused>, now: Instant) {
        let mut kept = lock(&self.kept);
        let (subject, reply) = match refused {
            Some(Refused::Subscription(s)) => {
                if self.under_inbox(&s) {
                    // When this connection's `Connected` was dropped, this
                    // is an older count and the refusal does not hold (a
                    // timeout, rather than a refusal that is not so).
                    let at = self
                        .connected_at
                        .load(std::sync::atomic::Ordering::SeqCst)
                        .max(1);
                    kept.inbox = Some((text.to_string(), at));
                }
                return;
            }
            Some(Refused::Publish(s)) => (s, false),
            Some(Refused::Reply(s)) => (s, true),
            None => return,
        };
        kept.publishes.retain(|p| p.text != text);
        if kept.publishes.len() >= KEPT {
            kept.publishes.pop_front();
        }
        kept.publishes.push_back(PublishRefused {
            subject,
            reply,
            text: text.to_string(),
            seen: now,
        });
    }

    /// The connection was made again: the subscription its replies come
    /// back on is made again too, and judged afresh.
    fn connected(&self) {
        self.connected_at
            .store(self.connects(), std::sync::atomic::Ordering::SeqCst);
        lock(&self.kept).inbox = None;
    }

    /// The connection was lost: what its inbox's refusal said is over
    /// with it (the next connection subscribes again).
    fn lost(&self) {
        lock(&self.kept).inbox = None;
    }

    /// The newest refusal that keeps a request to `subject` from being
    /// answered: publishing to `subject`, or with a reply subject under the
    /// connection's inbox, refused at or after `since`; or subscribing to
    /// a subject under the inbox, refused since the connection was last
    /// made.
    pub(crate) fn naming(&self, since: Instant, subject: &str) -> Option<String> {
        let connects = self.connects();
        let kept = lock(&self.kept);
        kept.publishes
            .iter()
            .rev()
            .filter(|p| p.seen >= since)
            .find(|p| {
                if p.reply {
                    self.under_inbox(&p.subject)
                } else {
                    p.subject == subject
                }
            })
            .map(|p| p.text.clone())
            .or_else(|| {
                kept.inbox
                    .as_ref()
                    .filter(|(_, at)| *at == connects)
                    .map(|(text, _)| text.clone())
            })
    }

    /// The newest refusal, at or after `since`, of a publish to a subject
    /// starting with `prefix` (`$JS.API.`: a JetStream request of this
    /// connection): the subject refused and the refusal's text.
    pub(crate) fn publish_under(&self, since: Instant, prefix: &str) -> Option<(String, String)> {
        lock(&self.kept)
            .publishes
            .iter()
            .rev()
            .find(|p| p.seen >= since && !p.reply && p.subject.starts_with(prefix))
            .map(|p| (p.subject.clone(), p.text.clone()))
    }

    /// `call`, unless a refusal ends it first: `refused` is asked before
    /// it starts and again at each refusal heard while it runs, and what it
    /// finds is the error.
    pub(crate) async fn unless<T>(
        &self,
        refused: impl Fn() -> Option<crate::Error>,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, crate::Error> {
        tokio::pin!(call);
        let done = loop {
            // Made before looking: a refusal noted meanwhile wakes it.
            let heard = self.heard();
            if let Some(e) = refused() {
                return Err(e);
            }
            tokio::select! {
                done = &mut call => break done,
                () = heard => {}
            }
        };
        Ok(done)
    }
}

/// Log `event` and keep what it refused in `refusals`.
pub(crate) fn on_event(refusals: &Refusals, connection: &str, event: Event) {
    use std::sync::atomic::Ordering;
    let now = Instant::now();
    match event {
        Event::ServerError(ServerError::Other(text)) if text.starts_with(PREFIX) => {
            if let Admit::Log { not_logged } = refusals.note(&text, now) {
                tracing::warn!(
                    connection,
                    refusal = %text,
                    not_logged,
                    "the bus refused this credential (a refusal is logged once a minute; not_logged: refusals and repeats not logged since the last line)"
                );
            }
        }
        Event::ServerError(e) => {
            let text = e.to_string();
            if let Admit::Log { not_logged } = lock(&refusals.error_lines).admit(&text, now) {
                tracing::warn!(connection, error = %text, not_logged, "the bus reported an error");
            }
        }
        Event::Disconnected => {
            refusals.lost();
            refusals.disconnected.store(true, Ordering::SeqCst);
            tracing::warn!(connection, "bus connection lost; reconnecting");
        }
        Event::Connected => {
            refusals.connected();
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
            // One a reconnection attempt while the server is down.
            let text = e.to_string();
            if let Admit::Log { not_logged } = lock(&refusals.error_lines).admit(&text, now) {
                tracing::warn!(
                    connection,
                    error = %text,
                    not_logged,
                    "bus client error (the same error is logged once a minute)"
                );
            }
        }
        other => tracing::debug!(connection, event = %other, "bus connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(s: &str) -> Option<Refused> {
        Some(Refused::Publish(s.to_string()))
    }

    #[test]
    fn refusals_are_read_from_nats_servers_texts() {
        assert_eq!(
            parse(r#"Permissions Violation for Publish to "skos.status""#),
            publish("skos.status")
        );
        assert_eq!(
            parse(r#"Permissions Violation for Subscription to "_INBOX_OPERATOR.abc.*""#),
            Some(Refused::Subscription("_INBOX_OPERATOR.abc.*".into()))
        );
        assert_eq!(
            parse(r#"Permissions Violation for Subscription to "jobs.>" using queue "workers""#),
            Some(Refused::Subscription("jobs.>".into()))
        );
        assert_eq!(
            parse(r#"Permissions Violation for Publish with Reply of "_INBOX.x.y""#),
            Some(Refused::Reply("_INBOX.x.y".into()))
        );
        for other in [
            "Authorization Violation",
            "Maximum Payload Violation",
            r#"Permissions Violation for Publish to skos.status"#,
            r#"Permissions Violation for Teleport to "x""#,
            r#"Permissions Violation for Publish to "x" and more"#,
            r#"Permissions Violation for Publish to "unterminated"#,
            r#"Permissions Violation for Publish to "bad \q escape""#,
            "Permissions Violation for ",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn subjects_are_read_as_go_quotes_them() {
        // nats-server writes the subject with %q: these are the escapes
        // strconv.Quote makes.
        for (quoted, subject) in [
            (r#""deny.a\"b""#, "deny.a\"b"),
            (r#""deny.a\\b""#, "deny.a\\b"),
            (r#""deny.\x7f""#, "deny.\x7f"),
            (r#""deny.zw\u200b""#, "deny.zw\u{200b}"),
            (r#""deny.\U0001f600""#, "deny.\u{1f600}"),
            (r#""deny.növa""#, "deny.növa"),
            (r#""tab\there""#, "tab\there"),
            (r#""\xff""#, "\u{fffd}"),
        ] {
            let text = format!("{PREFIX}Publish to {quoted}");
            assert_eq!(parse(&text), publish(subject), "{text}");
        }
        for broken in [r#""\x""#, r#""\u12""#, r#""\U0011ffff""#, r#""\"#, "\"abc"] {
            assert_eq!(unquote(broken), None, "{broken}");
        }
    }

    #[test]
    fn a_text_is_logged_once_a_minute_and_a_few_lines_a_minute_in_all() {
        let r = Refusals::new("_INBOX");
        let t0 = Instant::now();
        let text = r#"Permissions Violation for Publish to "skos.status""#;
        assert_eq!(r.note(text, t0), Admit::Log { not_logged: 0 });
        assert_eq!(r.note(text, t0 + Duration::from_secs(59)), Admit::Quiet);
        assert_eq!(r.note(text, t0 + LOG_EVERY), Admit::Log { not_logged: 1 });
        // Acknowledgements refused, each with its own sequences: one
        // line, the rest counted and said with the next line; a refusal of
        // another subject amid them is still logged.
        let t1 = t0 + LOG_EVERY + Duration::from_secs(1);
        let ack = |n: u64| format!("{PREFIX}Publish to \"$JS.ACK.S.C.1.{n}.{}.1733\"", n + 7);
        let logged = (0..330)
            .filter(|&n| r.note(&ack(n), t1) != Admit::Quiet)
            .count();
        assert_eq!(logged, 1);
        assert_eq!(
            r.note(
                &format!("{PREFIX}Publish to \"skos.coordinator.control\""),
                t1
            ),
            Admit::Log { not_logged: 329 }
        );
        // Texts that differ where no shape sees it: at most the window's
        // lines.
        let t2 = t1 + LOG_EVERY;
        let logged = (0..330)
            .filter(|n| r.note(&format!("{PREFIX}Publish to \"x.y{n}\""), t2) != Admit::Quiet)
            .count();
        assert_eq!(logged, LINES_PER_MINUTE as usize);
    }

    #[test]
    fn tokens_that_vary_per_message_are_one_shape() {
        let p = |s: &str| format!("{PREFIX}Publish to \"{s}\"");
        let shape = |t: &str| shape(t, parse(t).as_ref(), "_INBOX");
        assert_eq!(
            shape(&p(
                "$JS.ACK.SKOS_ALERTS.skos-coordinator.1.2345.2345.1733000000000000000.0"
            )),
            "publish $JS.ACK.SKOS_ALERTS.skos-coordinator.*.*.*.*.*"
        );
        assert_eq!(
            shape(&format!(
                "{PREFIX}Subscription to \"_INBOX.1QUwnj3ZoKBXASnBUqeEG5.*\""
            )),
            "subscription _INBOX.*.*"
        );
        assert_eq!(
            shape(&p("_INBOX.1QUwnj3ZoKBXASnBUqeEG5.17")),
            "publish _INBOX.*.*"
        );
        assert_eq!(
            shape(&p(
                "$JS.API.CONSUMER.CREATE.SKOS_AUDIT.nB3UmiYQxk5iXGJMMgX7sc"
            )),
            "publish $JS.API.CONSUMER.CREATE.SKOS_AUDIT.*"
        );
        assert_ne!(
            shape(&p("$JS.API.CONSUMER.INFO.SKOS_COMMANDS.skos-agent-12345")),
            shape(&p("$JS.API.CONSUMER.INFO.SKOS_COMMANDS.skos-agent-12346"))
        );
        assert_ne!(
            shape(&p("skos.coordinator.status")),
            shape(&p("skos.coordinator.control"))
        );
        // Node names are never read as varying tokens, however they look.
        for (a, b) in [
            ("skos.command.12345", "skos.command.12346"),
            (
                "$KV.SKOS_STATE.abcdefghijklmnop1",
                "$KV.SKOS_STATE.abcdefghijklmnop2",
            ),
            ("_INBOX_nova.x", "_INBOX_nova2.x"),
        ] {
            assert_ne!(shape(&p(a)), shape(&p(b)), "{a} / {b}");
        }
        assert_eq!(shape("nats: IO error"), "nats: IO error");
    }

    #[test]
    fn a_client_error_repeated_by_each_reconnection_is_logged_once_a_minute() {
        let mut l = Limiter::new();
        let t0 = Instant::now();
        let logged = (0..900u64)
            .filter(|n| l.admit("nats: IO error", t0 + Duration::from_secs(4 * n)) != Admit::Quiet)
            .count();
        assert_eq!(logged, 60, "an hour of attempts every 4 s");
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
            r#"Permissions Violation for Publish with Reply of "_INBOX_OPERATOR.abc.1""#,
            t0,
        );
        assert!(r.naming(t0, "skos.control").is_some(), "its reply refused");
        assert!(
            r.naming(later, "skos.control").is_none(),
            "an earlier request's reply"
        );
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX_OPERATOR.abc.*""#,
            t0,
        );
        assert!(r.naming(later, "skos.control").is_some());
    }

    #[test]
    fn the_inbox_refused_holds_until_the_connection_is_made_again() {
        let r = Refusals::new("_INBOX");
        let t0 = Instant::now();
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*""#,
            t0,
        );
        // Refusals of other subjects, however many, do not push it out.
        for n in 0..3 * KEPT {
            r.note(&format!("{PREFIX}Publish to \"$JS.ACK.{n}\""), t0);
        }
        let later = t0 + Duration::from_secs(60);
        assert!(r.naming(later, "skos.coordinator.status").is_some());
        // The permission changed and the client reconnected: its new
        // subscription of the inbox is judged afresh.
        r.connected();
        assert!(r.naming(later, "skos.coordinator.status").is_none());
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*""#,
            later,
        );
        assert!(r.naming(later, "skos.coordinator.status").is_some());
    }

    /// async-nats counts a connection (`Statistics::connects`) on the
    /// connection's task, then queues `Connected`; events reach the
    /// callback through a queue of 128 on another task. When that queue is
    /// full (the case the count is for), the refusal heard on the old
    /// connection is still queued when the count moves on, and is kept
    /// with the new connection's count: every request on the new
    /// connection, whose inbox subscription the server took, is answered
    /// Denied until the client reconnects again.
    #[test]
    fn a_refusal_heard_on_the_old_connection_and_taken_late_does_not_hold_on_the_new() {
        let r = Refusals::new("_INBOX");
        let stats = std::sync::Arc::new(async_nats::Statistics::default());
        stats.connects.store(1, std::sync::atomic::Ordering::SeqCst);
        r.watch(stats.clone());
        let t0 = Instant::now();
        // Connection 1 refused the inbox; the refusal waits in the full
        // queue. The client reconnects (count 2, `Connected` dropped for
        // the full queue); connection 2's subscription is taken (its
        // permissions changed): nothing is refused on it.
        stats.connects.store(2, std::sync::atomic::Ordering::SeqCst);
        // The callback catches up with connection 1's refusal.
        on_event(
            &r,
            "test",
            Event::ServerError(ServerError::Other(
                r#"Permissions Violation for Subscription to "_INBOX.abc.*""#.into(),
            )),
        );
        assert!(
            r.naming(t0, "skos.coordinator.status").is_none(),
            "a refusal of connection 1 holds on connection 2"
        );
    }

    #[test]
    fn a_reconnection_whose_event_was_dropped_still_clears_the_inbox_refused() {
        let r = Refusals::new("_INBOX");
        let t0 = Instant::now();
        on_event(&r, "test", Event::Connected);
        // Heard on the first connection, before the client was handed over.
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*""#,
            t0,
        );
        let stats = std::sync::Arc::new(async_nats::Statistics::default());
        stats.connects.store(1, std::sync::atomic::Ordering::SeqCst);
        r.watch(stats.clone());
        assert!(r.naming(t0, "skos.coordinator.status").is_some());
        // The client reconnected; its `Connected` event never came.
        stats.connects.store(2, std::sync::atomic::Ordering::SeqCst);
        assert!(r.naming(t0, "skos.coordinator.status").is_none());
        // Refused again on the new connection, whose `Connected` was
        // dropped: it cannot be told from a late refusal of the old one,
        // and does not hold (the request times out).
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*""#,
            t0,
        );
        assert!(r.naming(t0, "skos.coordinator.status").is_none());
        // With its `Connected` taken, it holds.
        on_event(&r, "test", Event::Connected);
        r.note(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*""#,
            t0,
        );
        assert!(r.naming(t0, "skos.coordinator.status").is_some());
    }

    /// One `Connected` dropped (the queue was full once, in a reconnect
    /// storm) leaves the count of events taken one behind the client's
    /// for the rest of the process: on every later connection, whose
    /// `Connected` is taken in order, a refusal of its inbox is stamped
    /// with an older connection and never holds again.
    #[test]
    fn one_dropped_connected_does_not_disarm_every_later_inbox_refusal() {
        let r = Refusals::new("_INBOX");
        let stats = std::sync::Arc::new(async_nats::Statistics::default());
        let refusal = r#"Permissions Violation for Subscription to "_INBOX.abc.*""#;
        let t0 = Instant::now();
        // Connection 1, its `Connected` taken.
        stats.connects.store(1, std::sync::atomic::Ordering::SeqCst);
        r.watch(stats.clone());
        on_event(&r, "test", Event::Connected);
        // Connection 2: `Connected` dropped (the queue was full).
        stats.connects.store(2, std::sync::atomic::Ordering::SeqCst);
        let mut wrong = Vec::new();
        // Connections 3 to 6, each made with the queue drained: its
        // `Connected` is taken, then its inbox is refused.
        for n in 3..=6u64 {
            stats.connects.store(n, std::sync::atomic::Ordering::SeqCst);
            on_event(&r, "test", Event::Connected);
            on_event(
                &r,
                "test",
                Event::ServerError(ServerError::Other(refusal.into())),
            );
            if r.naming(t0, "skos.coordinator.status").is_none() {
                wrong.push(n);
            }
        }
        assert!(
            wrong.is_empty(),
            "the inbox refused on connection(s) {wrong:?}, each after its own Connected, does not hold"
        );
    }

    #[test]
    fn a_jetstream_request_refused_is_found_by_its_prefix() {
        let r = Refusals::new("_INBOX");
        let t0 = Instant::now();
        r.note(
            r#"Permissions Violation for Publish to "$JS.API.STREAM.INFO.SKOS_COMMANDS""#,
            t0,
        );
        assert_eq!(
            r.publish_under(t0, "$JS.API.").map(|(subject, _)| subject),
            Some("$JS.API.STREAM.INFO.SKOS_COMMANDS".to_string())
        );
        assert!(r
            .publish_under(t0 + Duration::from_secs(1), "$JS.API.")
            .is_none());
        assert!(r.publish_under(t0, "skos.").is_none());
    }
}
