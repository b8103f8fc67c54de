//! `http:`: the operator's HTTP API, metrics and live page (`skos up` and
//! `skos coordinator`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{issue, CheckContext, Config, ConfigIssue, Section};

/// The address `skos up` and `skos coordinator` serve on by default.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";

/// Where the HTTP API listens, and what guards it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// `host:port` to listen on (`127.0.0.1:9477`), or `off`.
    pub listen: String,
    /// A file holding the bearer token that writes must carry (the first
    /// line, surrounding whitespace removed).
    pub token_file: Option<PathBuf>,
    /// TLS: both files, or neither (plain HTTP).
    pub tls: HttpTls,
}

/// The server certificate and key (PEM) that make the API speak HTTPS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpTls {
    /// The certificate chain, PEM.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (readable by the owner only).
    pub key_file: Option<PathBuf>,
}

impl HttpTls {
    /// Whether both files are named.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.into(),
            token_file: None,
            tls: HttpTls::default(),
        }
    }
}

/// Where to listen, read from `http.listen` or `--http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// No HTTP server.
    Off,
    /// Listen on this address.
    At(SocketAddr),
}

impl HttpListen {
    /// Read `off` or a `host:port` with a numeric IP (`127.0.0.1:9477`,
    /// `[::1]:9477`, `0.0.0.0:9477`). The error says what is wrong, for a
    /// person.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(HttpListen::Off);
        }
        text.parse::<SocketAddr>().map(HttpListen::At).map_err(|_| {
            format!(
                "{text:?} is not an address to listen on: write an IP address and a port \
                 (127.0.0.1:9477, [::1]:9477, 0.0.0.0:9477), or off"
            )
        })
    }
}

impl HttpConfig {
    /// Every problem with `listen` alone, with the key path `path`.
    pub fn listen_issue(text: &str, path: &str) -> Option<ConfigIssue> {
        HttpListen::parse(text).err().map(|m| issue(path, m))
    }
}

impl Section for HttpConfig {
    const KEY: &'static str = "http";

    fn get(cfg: &Config) -> &Self {
        &cfg.http
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.http
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        out.extend(Self::listen_issue(&self.listen, "http.listen"));
        if let Ok(HttpListen::At(addr)) = HttpListen::parse(&self.listen) {
            let guarded = self.tls.enabled() && self.token_file.is_some();
            if !(addr.ip().is_loopback() || guarded) {
                out.push(issue(
                    "http.listen",
                    format!(
                        "{addr} can be reached from other machines: set http.tls (cert_file and \
                         key_file) and http.token_file too, or listen on 127.0.0.1"
                    ),
                ));
            }
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => out.push(issue(
                "http.tls.key_file",
                "missing: http.tls.cert_file is set, and HTTPS needs its key too",
            )),
            (None, Some(_)) => out.push(issue(
                "http.tls.cert_file",
                "missing: http.tls.key_file is set, and HTTPS needs the certificate too",
            )),
            _ => {}
        }
        if self
            .token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            out.push(issue(
                "http.token_file",
                "is empty: name a file holding the token, or leave the key out",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_reads_off_and_addresses_and_says_what_is_wrong() {
        assert_eq!(HttpListen::parse("off"), Ok(HttpListen::Off));
        assert_eq!(HttpListen::parse(" OFF "), Ok(HttpListen::Off));
        assert!(matches!(
            HttpListen::parse("127.0.0.1:9477"),
            Ok(HttpListen::At(a)) if a.port() == 9477
        ));
        assert!(matches!(
            HttpListen::parse("[::1]:0"),
            Ok(HttpListen::At(_))
        ));
        let e = HttpListen::parse("localhost:9477").unwrap_err();
        assert!(e.contains("\"localhost:9477\" is not an address"), "{e}");
        assert!(HttpListen::parse("127.0.0.1").is_err());
    }

    #[test]
    fn the_config_check_names_the_key() {
        let cfg = Config::from_yaml("http:\n  listen: nowhere\n").unwrap_err();
        assert_eq!(cfg[0].path, "http.listen");
        assert!(cfg[0].message.contains("or off"), "{}", cfg[0].message);
        let cfg = Config::from_yaml("http:\n  tls:\n    cert_file: /x.pem\n").unwrap_err();
        assert_eq!(cfg[0].path, "http.tls.key_file");
        let cfg = Config::from_yaml("http:\n  listen: 0.0.0.0:9477\n").unwrap_err();
        assert_eq!(cfg[0].path, "http.listen");
        assert!(
            cfg[0].message.contains("set http.tls"),
            "{}",
            cfg[0].message
        );
        Config::from_yaml(
            "http:\n  listen: 0.0.0.0:9477\n  token_file: /t\n  tls: {cert_file: /c, key_file: /k}\n",
        )
        .unwrap();
        let ok = Config::from_yaml("http:\n  listen: off\n").unwrap();
        assert_eq!(ok.http.listen, "off");
        assert_eq!(Config::default().http.listen, DEFAULT_HTTP_LISTEN);
    }
}
