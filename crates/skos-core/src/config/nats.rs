//! `nats:`: the server, its authentication and TLS, and the message size
//! limit. Passwords and tokens never appear in `Debug` output.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{issue, CheckContext, Config, ConfigIssue, Section};

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
    }
}
