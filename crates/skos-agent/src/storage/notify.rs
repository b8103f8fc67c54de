//! `alert_human`: tell a person, through every configured channel.
//!
//! Three channels, each optional and independent of the others:
//!
//! * **webhook**: a JSON `POST` whose body suits ntfy, Slack and Discord
//!   style endpoints at once (`title`/`message`, `text`, `content`);
//! * **email**: SMTP through `lettre` (`none`, `starttls` or `tls`);
//! * **command**: an argv (no shell) run with the JSON notification on
//!   stdin.
//!
//! [`send`] never panics and never stops at the first failure: it returns
//! one [`Delivery`] per configured channel. Secrets (webhook header values,
//! the SMTP password, the path and query of the webhook URL, which often
//! hold a token) are never logged nor put in a [`Delivery`].

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use skos_core::config::{EmailConfig, NotifyConfig, WebhookConfig};

/// How long the `command` channel may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Used when a configured timeout is not a finite, positive number.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a command's stderr (its end) goes into [`Delivery::detail`].
const STDERR_TAIL: usize = 2048;

/// How much of a failed webhook's answer goes into [`Delivery::detail`].
const BODY_SNIPPET: usize = 512;

/// What a person is told.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub node: String,
    pub severity: String,
    pub title: String,
    pub message: String,
    pub details: serde_json::Value,
}

/// The outcome of one channel.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// `"webhook"`, `"email"` or `"command"`.
    pub channel: &'static str,
    pub ok: bool,
    /// What happened, in words (never a secret).
    pub detail: String,
}

impl Delivery {
    fn ok(channel: &'static str, detail: impl Into<String>) -> Self {
        Delivery {
            channel,
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(channel: &'static str, detail: impl Into<String>) -> Self {
        Delivery {
            channel,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Send through every configured channel; never panics; one failed channel
/// does not stop the others. Returns one [`Delivery`] per configured channel
/// (empty when none is configured), in the order webhook, email, command.
pub fn send(cfg: &NotifyConfig, n: &Notification) -> Vec<Delivery> {
    let mut out = Vec::new();
    if let Some(webhook) = &cfg.webhook {
        out.push(guard("webhook", || send_webhook(webhook, n)));
    }
    if let Some(email) = &cfg.email {
        out.push(guard("email", || send_email(email, n)));
    }
    if let Some(argv) = &cfg.command {
        out.push(guard("command", || send_command(argv, n, COMMAND_TIMEOUT)));
    }
    for d in &out {
        if d.ok {
            tracing::info!(channel = d.channel, detail = %d.detail, node = %n.node,
                severity = %n.severity, "notification delivered");
        } else {
            tracing::warn!(channel = d.channel, detail = %d.detail, node = %n.node,
                severity = %n.severity, "notification not delivered");
        }
    }
    out
}

/// Runs one channel; a panic inside it becomes a failed delivery.
fn guard(channel: &'static str, f: impl FnOnce() -> Delivery) -> Delivery {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(d) => d,
        Err(_) => Delivery::failed(channel, "internal error (panic) while sending"),
    }
}

fn timeout_from(seconds: f64) -> Duration {
    if seconds.is_finite() && seconds > 0.0 {
        Duration::try_from_secs_f64(seconds).unwrap_or(DEFAULT_TIMEOUT)
    } else {
        DEFAULT_TIMEOUT
    }
}

/// The JSON body of the webhook: fields for ntfy (`title`, `message`),
/// Slack (`text`), Discord (`content`) and anything that reads the rest.
pub fn webhook_body(n: &Notification) -> serde_json::Value {
    let text = format!("{}\n{}", n.title, n.message);
    serde_json::json!({
        "title": n.title,
        "message": n.message,
        "text": text,
        "content": text,
        "node": n.node,
        "severity": n.severity,
        "details": n.details,
    })
}

fn send_webhook(cfg: &WebhookConfig, n: &Notification) -> Delivery {
    const CH: &str = "webhook";
    if cfg.url.trim().is_empty() {
        return Delivery::failed(CH, "no url configured");
    }
    let target = skos_core::redact::url_origin(&cfg.url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout_from(cfg.timeout)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.post(&cfg.url);
    for (name, value) in &cfg.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    match req.send_json(webhook_body(n)) {
        Ok(mut resp) => {
            let status = resp.status();
            if status.is_success() {
                Delivery::ok(CH, format!("{target}: HTTP {}", status.as_u16()))
            } else {
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default();
                let snippet = truncate_chars(body.trim(), BODY_SNIPPET);
                let mut detail = format!("{target}: HTTP {}", status.as_u16());
                if !snippet.is_empty() {
                    detail.push_str(": ");
                    detail.push_str(&snippet);
                }
                Delivery::failed(CH, detail)
            }
        }
        // ureq's errors name neither header values nor the URL's path.
        Err(e) => Delivery::failed(CH, format!("{target}: {e}")),
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Subject of the email: `[SKOS <severity>] <title>`.
pub fn email_subject(n: &Notification) -> String {
    format!("[SKOS {}] {}", n.severity, n.title)
}

/// Plain-text body of the email: the message, then the details, pretty.
pub fn email_body(n: &Notification) -> String {
    let mut body = n.message.clone();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    if !n.details.is_null() {
        body.push('\n');
        body.push_str(
            &serde_json::to_string_pretty(&n.details).unwrap_or_else(|_| n.details.to_string()),
        );
        body.push('\n');
    }
    body
}

fn send_email(cfg: &EmailConfig, n: &Notification) -> Delivery {
    use lettre::message::header::ContentType;
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};

    const CH: &str = "email";
    let from: Mailbox = match cfg.from.parse() {
        Ok(m) => m,
        Err(e) => return Delivery::failed(CH, format!("bad from address {:?}: {e}", cfg.from)),
    };
    if cfg.to.is_empty() {
        return Delivery::failed(CH, "no recipients configured (to is empty)");
    }
    let mut builder = Message::builder()
        .from(from)
        .subject(email_subject(n))
        .header(ContentType::TEXT_PLAIN);
    for to in &cfg.to {
        match to.parse::<Mailbox>() {
            Ok(m) => builder = builder.to(m),
            Err(e) => return Delivery::failed(CH, format!("bad to address {to:?}: {e}")),
        }
    }
    let message = match builder.body(email_body(n)) {
        Ok(m) => m,
        Err(e) => return Delivery::failed(CH, format!("cannot build the message: {e}")),
    };

    let host = cfg.smtp_host.as_str();
    let target = format!("{host}:{} ({})", cfg.smtp_port, cfg.security);
    let transport = match cfg.security.as_str() {
        "none" => SmtpTransport::builder_dangerous(host),
        "starttls" => match SmtpTransport::starttls_relay(host) {
            Ok(b) => b,
            Err(e) => return Delivery::failed(CH, format!("{target}: {e}")),
        },
        "tls" => match SmtpTransport::relay(host) {
            Ok(b) => b,
            Err(e) => return Delivery::failed(CH, format!("{target}: {e}")),
        },
        other => {
            return Delivery::failed(
                CH,
                format!("unknown security {other:?} (expected none, starttls or tls)"),
            )
        }
    };
    let mut transport = transport
        .port(cfg.smtp_port)
        .timeout(Some(timeout_from(cfg.timeout)));
    match (&cfg.username, &cfg.password) {
        (Some(user), Some(pass)) => {
            transport = transport.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        (Some(user), None) => {
            transport = transport.credentials(Credentials::new(user.clone(), String::new()));
        }
        _ => {}
    }
    match transport.build().send(&message) {
        Ok(resp) => Delivery::ok(
            CH,
            format!(
                "{target}: accepted for {} recipient(s) ({})",
                cfg.to.len(),
                resp.code()
            ),
        ),
        // lettre's errors carry the server's answer, never the credentials.
        Err(e) => Delivery::failed(CH, format!("{target}: {e}")),
    }
}

fn send_command(argv: &[String], n: &Notification, timeout: Duration) -> Delivery {
    const CH: &str = "command";
    let input = match serde_json::to_vec(n) {
        Ok(v) => v,
        Err(e) => return Delivery::failed(CH, format!("cannot encode the notification: {e}")),
    };
    let (ok, detail) = run_command(argv, &input, timeout);
    Delivery {
        channel: CH,
        ok,
        detail,
    }
}

/// Runs `argv` (no shell) with `input` on stdin; kills it (and its process
/// group) after `timeout`. Returns whether it exited 0, and words about it
/// ending with the tail of its stderr.
pub(crate) fn run_command(argv: &[String], input: &[u8], timeout: Duration) -> (bool, String) {
    use std::os::unix::process::CommandExt;

    let Some((program, args)) = argv.split_first() else {
        return (false, "empty command".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("{program}: cannot start: {e}")),
    };
    let pid = child.id();

    // Feed stdin from a thread: a command that does not read it must not
    // block us (a broken pipe is ignored).
    let stdin = child.stdin.take();
    let input = input.to_vec();
    std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input);
        }
    });

    // Collect stderr from a thread; keep only its tail.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        tail.extend_from_slice(&buf[..k]);
                        if tail.len() > 2 * STDERR_TAIL {
                            tail.drain(..tail.len() - STDERR_TAIL);
                        }
                    }
                }
            }
            let _ = tx.send(tail);
        });
    } else {
        drop(tx);
    }

    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_group(pid);
                let _ = child.kill();
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(e);
            }
        }
    };
    // A grandchild that escaped the group could hold stderr open: wait a
    // little for the tail, no more.
    let tail = rx
        .recv_timeout(Duration::from_secs(2))
        .map(|t| stderr_tail(&t))
        .unwrap_or_default();

    let (ok, mut detail) = match status {
        Err(e) => (false, format!("{program}: wait failed: {e}")),
        Ok(_) if timed_out => (
            false,
            format!("{program}: killed after {:.0?} (timeout)", timeout),
        ),
        Ok(s) if s.success() => (true, format!("{program}: exit status 0")),
        Ok(s) => match s.code() {
            Some(code) => (false, format!("{program}: exit status {code}")),
            None => (false, format!("{program}: {s}")),
        },
    };
    if !tail.is_empty() {
        detail.push_str("; stderr: ");
        detail.push_str(&tail);
    }
    (ok, detail)
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) on our own child's process group (created by
            // `process_group(0)`, so its id is the child's pid).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

fn stderr_tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_body_has_every_style_of_field() {
        let n = Notification {
            node: "n1".into(),
            severity: "critical".into(),
            title: "T".into(),
            message: "M".into(),
            details: serde_json::json!({"a": 1}),
        };
        let b = webhook_body(&n);
        assert_eq!(b["title"], "T");
        assert_eq!(b["message"], "M");
        assert_eq!(b["text"], "T\nM");
        assert_eq!(b["content"], "T\nM");
        assert_eq!(b["node"], "n1");
        assert_eq!(b["severity"], "critical");
        assert_eq!(b["details"]["a"], 1);
    }

    #[test]
    fn command_is_killed_on_timeout() {
        let argv: Vec<String> = ["sh", "-c", "echo started >&2; sleep 30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t0 = Instant::now();
        let (ok, detail) = run_command(&argv, b"{}", Duration::from_millis(300));
        assert!(!ok);
        assert!(detail.contains("timeout"), "{detail}");
        assert!(detail.contains("started"), "{detail}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn command_that_does_not_read_stdin_is_fine() {
        let argv: Vec<String> = ["true"].iter().map(|s| s.to_string()).collect();
        let big = vec![b'x'; 1 << 20];
        let (ok, detail) = run_command(&argv, &big, Duration::from_secs(10));
        assert!(ok, "{detail}");
    }

    #[test]
    fn missing_program_and_empty_argv_fail() {
        let (ok, detail) = run_command(
            &["/nonexistent/skos-notify".to_string()],
            b"",
            Duration::from_secs(1),
        );
        assert!(!ok);
        assert!(detail.contains("cannot start"), "{detail}");
        let (ok, _) = run_command(&[], b"", Duration::from_secs(1));
        assert!(!ok);
    }
}
