//! `nats:`: the server, its authentication and TLS, and the message size
//! limit. Passwords and tokens never appear in `Debug` output.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{issue, non_negative, CheckContext, Config, ConfigIssue, Section};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsSection {
    pub url: String,
    /// Messages larger than this are rejected on every subject.
    pub max_message_bytes: usize,
    /// Authentication: at most one of user/password, token, nkey, creds.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkeys seed file (`skos fleet nats-config` writes one per node).
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS `.creds` file (JWT + seed).
    pub creds_file: Option<PathBuf>,
    pub tls: NatsTls,
    /// The audit stream's name. Always `SKOS_AUDIT`
    /// ([`crate::protocol::AUDIT_STREAM`]); the seed's key is accepted
    /// with that value only.
    pub audit_stream: String,
    /// Seconds between two attempts to reconnect after the connection is
    /// lost. `None`: the client's backoff (at once, then doubling from
    /// 2 ms up to 4 s).
    pub reconnect_wait_seconds: Option<f64>,
    /// The seed's limit on reconnect attempts. Not applied: SKOS keeps
    /// reconnecting for as long as it runs (a process that gave up would
    /// stop healing until restarted).
    pub max_reconnects: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsTls {
    /// Require TLS even when the URL does not say `tls://`.
    pub required: bool,
    /// CA certificate (PEM) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: "nats://localhost:4222".into(),
            max_message_bytes: crate::protocol::DEFAULT_MAX_MESSAGE_BYTES,
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: NatsTls::default(),
            audit_stream: crate::protocol::AUDIT_STREAM.into(),
            reconnect_wait_seconds: None,
            max_reconnects: None,
        }
    }
}

/// Passwords and tokens are never printed.
impl fmt::Debug for NatsSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSection")
            .field("url", &crate::redact::url_credentials(&self.url))
            .field("max_message_bytes", &self.max_message_bytes)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls", &self.tls)
            .field("audit_stream", &self.audit_stream)
            .field("reconnect_wait_seconds", &self.reconnect_wait_seconds)
            .field("max_reconnects", &self.max_reconnects)
            .finish()
    }
}

impl Section for NatsSection {
    const KEY: &'static str = "nats";

    fn get(cfg: &Config) -> &Self {
        &cfg.nats
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.nats
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        let methods = [
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
            self.nkey_seed_file.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            out.push(issue(
                "nats",
                "choose one of user/password, token, nkey_seed_file, creds_file",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            out.push(issue("nats.password", "user and password go together"));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            out.push(issue(
                "nats.tls.key_file",
                "cert_file and key_file go together",
            ));
        }
        if self.max_message_bytes < 1024 {
            out.push(issue("nats.max_message_bytes", "must be at least 1024"));
        }
        if self.audit_stream != crate::protocol::AUDIT_STREAM {
            out.push(issue(
                "nats.audit_stream",
                format!(
                    "{:?}: the audit stream is always {}; name it or leave the key out",
                    self.audit_stream,
                    crate::protocol::AUDIT_STREAM
                ),
            ));
        }
        if let Some(s) = self.reconnect_wait_seconds {
            if !(non_negative(s) && s.is_finite()) {
                out.push(issue(
                    "nats.reconnect_wait_seconds",
                    format!("must be zero or more seconds, got {s}"),
                ));
            }
        }
    }

    fn warn(&self, _cfg: &Config, out: &mut Vec<ConfigIssue>) {
        if let Some(n) = self.max_reconnects {
            out.push(issue(
                "nats.max_reconnects",
                format!("not applied: SKOS keeps reconnecting for as long as it runs (after {n} attempts an agent that gave up would stop healing until restarted)"),
            ));
        }
    }
}
