//! `wg show <interface> dump`, parsed by a pure function.
//!
//! The dump's first line is the interface: private key, public key, listen
//! port, fwmark. Every further line is a peer: public key, preshared key,
//! endpoint, allowed IPs, latest handshake (Unix seconds, 0 for never),
//! bytes received, bytes sent, persistent keepalive. Fields are separated
//! by tabs; `(none)` and `off` mean absent.
//!
//! The private key is dropped while parsing and never kept, returned,
//! logged or quoted in an error: errors name the line and the field only.

use serde::Serialize;

/// What `wg show <if> dump` says, without the private key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dump {
    pub public_key: Option<String>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub peers: Vec<PeerDump>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerDump {
    pub public_key: String,
    /// Whether a preshared key is set (the key itself is not kept).
    pub preshared_key: bool,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the latest handshake; `None` when there was none.
    pub latest_handshake: Option<i64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wg dump line {line}: {reason}")]
pub struct DumpError {
    pub line: usize,
    pub reason: String,
}

fn err(line: usize, reason: impl Into<String>) -> DumpError {
    DumpError {
        line,
        reason: reason.into(),
    }
}

fn none(field: &str) -> Option<&str> {
    match field {
        "(none)" | "off" | "" => None,
        f => Some(f),
    }
}

/// Parse the output of `wg show <interface> dump`.
pub fn parse_dump(text: &str) -> Result<Dump, DumpError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or_else(|| err(1, "empty output"))?;
    let f: Vec<&str> = first.split('\t').collect();
    if f.len() != 4 {
        // Never quote this line: it holds the private key.
        return Err(err(
            1,
            format!("interface line has {} fields, expected 4", f.len()),
        ));
    }
    let public_key = none(f[1]).map(str::to_owned);
    if let Some(k) = &public_key {
        if !skos_core::config::is_wg_key(k) {
            return Err(err(1, "public key is not a WireGuard key"));
        }
    }
    let listen_port = match none(f[2]) {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| err(1, format!("listen port {p:?} is not a port")))?,
        ),
    };
    let fwmark = match none(f[3]) {
        None => None,
        Some(m) => Some(parse_fwmark(m).ok_or_else(|| err(1, format!("fwmark {m:?}")))?),
    };
    let mut peers = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 8 {
            return Err(err(
                n,
                format!("peer line has {} fields, expected 8", f.len()),
            ));
        }
        if !skos_core::config::is_wg_key(f[0]) {
            return Err(err(n, "peer public key is not a WireGuard key"));
        }
        let num = |s: &str, what: &str| {
            s.parse::<u64>()
                .map_err(|_| err(n, format!("{what} {s:?} is not a number")))
        };
        let handshake = num(f[4], "latest handshake")?;
        peers.push(PeerDump {
            public_key: f[0].to_string(),
            preshared_key: none(f[1]).is_some(),
            endpoint: none(f[2]).map(str::to_owned),
            allowed_ips: none(f[3])
                .map(|a| a.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            latest_handshake: (handshake > 0).then(|| i64::try_from(handshake).unwrap_or(i64::MAX)),
            rx_bytes: num(f[5], "rx bytes")?,
            tx_bytes: num(f[6], "tx bytes")?,
            persistent_keepalive: match none(f[7]) {
                None => None,
                Some(k) => Some(
                    k.parse::<u16>()
                        .map_err(|_| err(n, format!("keepalive {k:?} is not a number")))?,
                ),
            },
        });
    }
    Ok(Dump {
        public_key,
        listen_port,
        fwmark,
        peers,
    })
}

fn parse_fwmark(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Dump {
    pub fn peer(&self, public_key: &str) -> Option<&PeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

/// Replace everything that looks like a WireGuard key (44 characters of
/// base64 ending in `=`) with `<key>`: command output and config lines
/// quoted in messages must never carry a private or preshared key.
pub fn redact_keys(text: &str) -> String {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts_token = i == 0 || !is_b64(chars[i - 1]);
        if starts_token && i + 44 <= chars.len() {
            let run = chars[i..i + 43].iter().all(|c| is_b64(*c));
            let ends = chars[i + 43] == '=' && chars.get(i + 44).is_none_or(|c| !is_b64(*c));
            if run && ends {
                out.push_str("<key>");
                i += 44;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real output of `wg show <if> dump` from wireguard-go v0.0.20220316
    // and wireguard-tools, captured between two network namespaces (the
    // keys are throwaway test keys).
    const TWO_PEERS_PSK_V6_FWMARK: &str = "YK86J1JS22zRRFV7h0yOf3qlpGPEeFomPrpmctMM8FY=\t/LkTFzeU60BpiIdbL3UiuWTxqd4YFjb1PyaEmEb91So=\t51820\t0x1234
usymw3GxXmTxNx7cuYzpe0zzi/BiVmqk+VpoXCWtKDA=\tKKo4ECqMy91+XNtkfz2aK8A3mtDRPaSYahIe4BnnGSw=\t[fd00::7]:51821\t10.99.1.0/24,fd99::/64\t0\t0\t0\toff
LdNG28z4MtHuUzdspWUYC7I9m2BoeUZHGl4cG+bCCTE=\t(none)\t(none)\t(none)\t0\t0\t0\toff
Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=\t(none)\t10.201.0.2:51820\t10.99.0.2/32\t1795777880\t9268\t9744\t1
";
    const ONE_PEER: &str = "YK86J1JS22zRRFV7h0yOf3qlpGPEeFomPrpmctMM8FY=\t/LkTFzeU60BpiIdbL3UiuWTxqd4YFjb1PyaEmEb91So=\t51820\toff
Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=\t(none)\t10.200.0.2:51820\t10.99.0.2/32\t1795777381\t212\t336\t1
";
    const NO_KEY_NO_PEERS: &str = "(none)\t(none)\t48437\toff\n";
    const PRIVATE: &str = "YK86J1JS22zRRFV7h0yOf3qlpGPEeFomPrpmctMM8FY=";

    #[test]
    fn one_peer() {
        let d = parse_dump(ONE_PEER).unwrap();
        assert_eq!(
            d.public_key.as_deref(),
            Some("/LkTFzeU60BpiIdbL3UiuWTxqd4YFjb1PyaEmEb91So=")
        );
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(d.fwmark, None);
        let p = &d.peers[0];
        assert_eq!(p.endpoint.as_deref(), Some("10.200.0.2:51820"));
        assert_eq!(p.allowed_ips, ["10.99.0.2/32"]);
        assert_eq!(p.latest_handshake, Some(1_795_777_381));
        assert_eq!((p.rx_bytes, p.tx_bytes), (212, 336));
        assert_eq!(p.persistent_keepalive, Some(1));
        assert!(!p.preshared_key);
    }

    #[test]
    fn psk_ipv6_endpoint_many_allowed_ips_never_handshaked() {
        let d = parse_dump(TWO_PEERS_PSK_V6_FWMARK).unwrap();
        assert_eq!(d.fwmark, Some(0x1234));
        assert_eq!(d.peers.len(), 3);
        let p = &d.peers[0];
        assert!(p.preshared_key);
        assert_eq!(p.endpoint.as_deref(), Some("[fd00::7]:51821"));
        assert_eq!(p.allowed_ips, ["10.99.1.0/24", "fd99::/64"]);
        assert_eq!(p.latest_handshake, None);
        assert_eq!(p.persistent_keepalive, None);
        let bare = &d.peers[1];
        assert_eq!(bare.endpoint, None);
        assert!(bare.allowed_ips.is_empty());
        assert!(d
            .peer("Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=")
            .is_some());
    }

    #[test]
    fn interface_without_key_or_peers() {
        let d = parse_dump(NO_KEY_NO_PEERS).unwrap();
        assert_eq!(d.public_key, None);
        assert_eq!(d.listen_port, Some(48437));
        assert!(d.peers.is_empty());
    }

    #[test]
    fn the_private_key_goes_nowhere() {
        for text in [ONE_PEER, TWO_PEERS_PSK_V6_FWMARK] {
            let d = parse_dump(text).unwrap();
            let all = format!("{d:?}{}", serde_json::to_string(&d).unwrap());
            assert!(!all.contains(PRIVATE));
            assert!(!all.contains("KKo4ECqMy91"), "preshared key kept");
        }
        // A broken interface line is not quoted in the error.
        let e = parse_dump(&format!("{PRIVATE}\tgarbage\n")).unwrap_err();
        assert!(!e.to_string().contains(PRIVATE), "{e}");
        let e = parse_dump(&format!("{PRIVATE}\t(none)\tport\toff\n")).unwrap_err();
        assert!(!e.to_string().contains(PRIVATE), "{e}");
    }

    #[test]
    fn bad_dumps_are_errors() {
        assert!(parse_dump("").is_err());
        assert!(parse_dump("Unable to access interface: Protocol not supported").is_err());
        let short_peer = ONE_PEER.replace("\t1\n", "\n");
        assert_eq!(parse_dump(&short_peer).unwrap_err().line, 2);
        let bad_rx = ONE_PEER.replace("\t212\t", "\tlots\t");
        assert!(parse_dump(&bad_rx).is_err());
    }

    #[test]
    fn redaction() {
        let line = format!("Line unrecognized: `PrivateKey={PRIVATE}'");
        let r = redact_keys(&line);
        assert!(!r.contains(PRIVATE), "{r}");
        assert_eq!(r, "Line unrecognized: `PrivateKey=<key>'");
        assert_eq!(redact_keys(PRIVATE), "<key>");
        assert_eq!(redact_keys("no keys here = 1"), "no keys here = 1");
        // Longer base64 runs are not keys.
        let long = format!("x{PRIVATE}");
        assert_eq!(redact_keys(&long), long);
        assert_eq!(redact_keys("ünïcode ok"), "ünïcode ok");
    }
}
