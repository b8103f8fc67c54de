//! `alert_human` channels against real local servers: an HTTP sink for the
//! webhook, an SMTP sink for the mail, real processes for the command.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use skos_agent::notify::{send, Delivery, Notification};
use skos_core::config::{EmailConfig, NotifyConfig, WebhookConfig};
use skos_testsupport::sinks::{HttpSink, SmtpSink};

const WAIT: Duration = Duration::from_secs(10);

fn notification() -> Notification {
    Notification {
        node: "node-7".into(),
        severity: "critical".into(),
        title: "/var is 97% full".into(),
        message: "Removed 1.2 GiB of old temp files; /var/lib/db still grows 2 GiB/h. \
                  Decide whether to move or prune it."
            .into(),
        details: serde_json::json!({
            "mount": "/var",
            "used_percent": 97.1,
            "freed": [{"dir": "/var/tmp", "bytes": 1288490188u64, "files": 412}],
        }),
    }
}

fn webhook(url: String, headers: &[(&str, &str)]) -> WebhookConfig {
    WebhookConfig {
        url,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout: 5.0,
    }
}

fn email(sink: &SmtpSink) -> EmailConfig {
    EmailConfig {
        smtp_host: sink.host(),
        smtp_port: sink.port(),
        security: "none".into(),
        username: None,
        password: None,
        from: "SKOS <skos@fleet.example>".into(),
        to: vec!["ops@example.org".into(), "oncall@example.org".into()],
        timeout: 5.0,
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

fn only(deliveries: &[Delivery], channel: &str) -> Delivery {
    let found: Vec<_> = deliveries.iter().filter(|d| d.channel == channel).collect();
    assert_eq!(found.len(), 1, "{deliveries:?}");
    found[0].clone()
}

#[test]
fn webhook_is_received_with_json_fields_and_custom_headers() {
    let sink = HttpSink::start();
    let cfg = NotifyConfig {
        webhook: Some(webhook(
            sink.url(),
            &[("Authorization", "Bearer x"), ("X-Priority", "5")],
        )),
        ..Default::default()
    };
    let n = notification();
    let out = send(&cfg, &n);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].channel, "webhook");
    assert!(out[0].ok, "{out:?}");
    assert!(out[0].detail.contains("200"), "{out:?}");
    assert!(!out[0].detail.contains("Bearer"), "{out:?}");

    let reqs = sink.wait_for(1, WAIT);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("authorization"), Some("Bearer x"));
    assert_eq!(r.header("x-priority"), Some("5"));
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let text = format!("{}\n{}", n.title, n.message);
    assert_eq!(body["title"], n.title.as_str());
    assert_eq!(body["message"], n.message.as_str());
    assert_eq!(body["text"], text.as_str());
    assert_eq!(body["content"], text.as_str());
    assert_eq!(body["node"], "node-7");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["details"], n.details);
}

#[test]
fn webhook_non_2xx_is_a_failed_delivery_with_the_status() {
    let sink = HttpSink::with_status(500);
    let cfg = NotifyConfig {
        webhook: Some(webhook(sink.url(), &[])),
        ..Default::default()
    };
    let out = send(&cfg, &notification());
    assert_eq!(out.len(), 1);
    assert!(!out[0].ok, "{out:?}");
    assert!(out[0].detail.contains("500"), "{out:?}");
    // It did reach the server.
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);
}

#[test]
fn webhook_to_an_unreachable_url_fails_quickly() {
    let url = format!("http://127.0.0.1:{}/hook", closed_port());
    let cfg = NotifyConfig {
        webhook: Some(webhook(url, &[])),
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = send(&cfg, &notification());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].channel, "webhook");
    assert!(!out[0].ok, "{out:?}");
    assert!(!out[0].detail.is_empty());
}

#[test]
fn email_is_received_with_subject_addresses_and_message() {
    let sink = SmtpSink::start();
    let cfg = NotifyConfig {
        email: Some(email(&sink)),
        ..Default::default()
    };
    let n = notification();
    let out = send(&cfg, &n);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].channel, "email");
    assert!(out[0].ok, "{out:?}");

    let mails = sink.wait_for(1, WAIT);
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.from, "skos@fleet.example");
    assert_eq!(
        m.to,
        vec![
            "ops@example.org".to_string(),
            "oncall@example.org".to_string()
        ]
    );
    assert_eq!(m.auth, None);
    let data = m.data.replace("\r\n", "\n");
    assert!(
        data.contains("Subject: [SKOS critical] /var is 97% full"),
        "{data}"
    );
    assert!(data.contains("From: SKOS <skos@fleet.example>"), "{data}");
    assert!(data.contains("ops@example.org"), "{data}");
    assert!(data.contains("oncall@example.org"), "{data}");
    assert!(data.contains("text/plain"), "{data}");
    // The body: the message (maybe soft-wrapped by the transfer encoding),
    // then the pretty details.
    let unwrapped = data.replace("=\n", "");
    assert!(
        unwrapped.contains("Removed 1.2 GiB of old temp files"),
        "{data}"
    );
    assert!(
        unwrapped.contains("Decide whether to move or prune it."),
        "{data}"
    );
    assert!(unwrapped.contains("\"mount\": \"/var\""), "{data}");
}

#[test]
fn email_with_credentials_authenticates_and_never_shows_the_password() {
    let sink = SmtpSink::start();
    let mut e = email(&sink);
    e.username = Some("skos".into());
    e.password = Some("hunter2-secret".into());
    let cfg = NotifyConfig {
        email: Some(e),
        ..Default::default()
    };
    let out = send(&cfg, &notification());
    assert!(out[0].ok, "{out:?}");
    assert!(!format!("{out:?}").contains("hunter2"));
    let mails = sink.wait_for(1, WAIT);
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0]
            .auth
            .as_deref()
            .is_some_and(|a| a.starts_with("PLAIN ")),
        "{:?}",
        mails[0].auth
    );
}

#[test]
fn email_with_a_bad_address_or_unknown_security_fails_and_says_why() {
    let sink = SmtpSink::start();
    let mut e = email(&sink);
    e.to = vec!["ops@example.org".into(), "not an address".into()];
    let out = send(
        &NotifyConfig {
            email: Some(e),
            ..Default::default()
        },
        &notification(),
    );
    assert!(!out[0].ok);
    assert!(out[0].detail.contains("not an address"), "{out:?}");

    let mut e = email(&sink);
    e.from = "@@".into();
    let out = send(
        &NotifyConfig {
            email: Some(e),
            ..Default::default()
        },
        &notification(),
    );
    assert!(!out[0].ok);
    assert!(out[0].detail.contains("@@"), "{out:?}");

    let mut e = email(&sink);
    e.security = "ssl3".into();
    let out = send(
        &NotifyConfig {
            email: Some(e),
            ..Default::default()
        },
        &notification(),
    );
    assert!(!out[0].ok);
    assert!(out[0].detail.contains("ssl3"), "{out:?}");

    assert!(sink.wait_for(1, Duration::from_millis(200)).is_empty());
}

#[test]
fn command_gets_the_json_notification_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alert.json");
    let cfg = NotifyConfig {
        command: Some(argv(&["sh", "-c", &format!("cat > '{}'", file.display())])),
        ..Default::default()
    };
    let n = notification();
    let out = send(&cfg, &n);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].channel, "command");
    assert!(out[0].ok, "{out:?}");
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(got["node"], "node-7");
    assert_eq!(got["severity"], "critical");
    assert_eq!(got["title"], n.title.as_str());
    assert_eq!(got["message"], n.message.as_str());
    assert_eq!(got["details"], n.details);
}

#[test]
fn command_with_nonzero_exit_fails_with_its_stderr() {
    let cfg = NotifyConfig {
        command: Some(argv(&[
            "sh",
            "-c",
            "cat >/dev/null; echo 'no route to pager' >&2; exit 3",
        ])),
        ..Default::default()
    };
    let out = send(&cfg, &notification());
    assert_eq!(out.len(), 1);
    assert!(!out[0].ok, "{out:?}");
    assert!(out[0].detail.contains('3'), "{out:?}");
    assert!(out[0].detail.contains("no route to pager"), "{out:?}");
}

#[test]
fn nothing_configured_means_no_deliveries() {
    assert!(send(&NotifyConfig::default(), &notification()).is_empty());
}

#[test]
fn one_failing_channel_does_not_stop_the_others() {
    // The webhook (first) fails; email and command still go out.
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alert.json");
    let cfg = NotifyConfig {
        webhook: Some(webhook(
            format!("http://127.0.0.1:{}/hook", closed_port()),
            &[("Authorization", "Bearer x")],
        )),
        email: Some(email(&smtp)),
        command: Some(argv(&["sh", "-c", &format!("cat > '{}'", file.display())])),
    };
    let out = send(&cfg, &notification());
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(!only(&out, "webhook").ok, "{out:?}");
    assert!(only(&out, "email").ok, "{out:?}");
    assert!(only(&out, "command").ok, "{out:?}");
    assert_eq!(smtp.wait_for(1, WAIT).len(), 1);
    assert!(file.exists());

    // And the other way round: email and command fail, the webhook goes out.
    let http = HttpSink::start();
    let mut e = email(&smtp);
    e.smtp_port = closed_port();
    let cfg = NotifyConfig {
        webhook: Some(webhook(http.url(), &[])),
        email: Some(e),
        command: Some(argv(&["false"])),
    };
    let out = send(&cfg, &notification());
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(only(&out, "webhook").ok, "{out:?}");
    assert!(!only(&out, "email").ok, "{out:?}");
    assert!(!only(&out, "command").ok, "{out:?}");
    assert_eq!(http.wait_for(1, WAIT).len(), 1);
}
