//! `wg show <interface> dump`, parsed by a pure function.
//!
//! The dump's first line is the interface: private key, public key, listen
//! port, fwmark. Every further line is a peer: public key, preshared key,
//! endpoint, allowed IPs, latest handshake, bytes received, bytes sent,
//! persistent keepalive. Fields are separated by tabs; `(none)` and `off`
//! mean absent. A userspace implementation may show `(none)` for the
//! interface's keys (boringtun does).
//!
//! The `latest handshake` field's unit depends on the implementation: the
//! kernel module and wireguard-go print Unix seconds, boringtun prints
//! seconds since the handshake (so `wg show` says "55 years ago" for a
//! peer that handshook 37 s ago). [`read_handshake`] tells them apart
//! against the current time, which the caller passes in: 0 is never; a
//! value below [`EARLIEST_HANDSHAKE`] (2015, before WireGuard) cannot be a
//! Unix time of a handshake and is seconds ago; a Unix time more than
//! [`MAX_FUTURE_SKEW`] seconds ahead of now, or seconds ago reaching back
//! before 2015, is impossible and rejected with a reason. An age of
//! decades is never reported.
//!
//! The private key is dropped while parsing and never kept, returned,
//! logged or quoted in an error: errors name the line and the field only.

use serde::Serialize;

/// Unix seconds of 2015-01-01T00:00:00Z. No WireGuard handshake happened
/// before (its first release was in 2016): a `latest handshake` below this
/// is seconds ago, not a Unix time.
pub const EARLIEST_HANDSHAKE: i64 = 1_420_070_400;

/// Seconds a Unix handshake time may lie ahead of the current time (a
/// clock stepped back between the handshake and the reading); it counts as
/// just now. Further ahead is rejected.
pub const MAX_FUTURE_SKEW: i64 = 60;

/// What `wg show <if> dump` says, without the private key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dump {
    /// The interface's public key; `None` when shown as `(none)`.
    pub public_key: Option<String>,
    /// UDP port.
    pub listen_port: Option<u16>,
    /// `None` when off.
    pub fwmark: Option<u32>,
    pub peers: Vec<PeerDump>,
}

/// One peer line of the dump.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerDump {
    /// The peer's public key (base64).
    pub public_key: String,
    /// Whether a preshared key is set (the key itself is not kept).
    pub preshared_key: bool,
    /// `host:port` as printed (`[v6%zone]:port` for IPv6).
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the latest handshake, whatever unit the field was
    /// printed in; `None` when there was none, when the field was rejected
    /// (`handshake_error` says why), or when it is seconds ago and no
    /// current time was given to place it ([`parse_dump`]).
    pub latest_handshake: Option<i64>,
    /// The `latest handshake` field as printed (unit: `handshake_unit`).
    pub latest_handshake_field: u64,
    /// The unit the field was read in; `None` for never and rejected.
    pub handshake_unit: Option<HandshakeUnit>,
    /// Why the field was rejected, when it was.
    pub handshake_error: Option<HandshakeError>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
}

/// The unit a `latest handshake` field was printed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandshakeUnit {
    /// Unix seconds (the kernel module, wireguard-go).
    UnixSeconds,
    /// Seconds since the handshake (boringtun).
    SecondsAgo,
}

/// What a `latest handshake` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// 0: no handshake yet.
    Never,
    /// A handshake at `unix` (Unix seconds, never after now), read in
    /// `unit`.
    At { unix: i64, unit: HandshakeUnit },
}

/// Why a `latest handshake` field cannot be true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum HandshakeError {
    /// A Unix time further ahead of now than [`MAX_FUTURE_SKEW`].
    #[error("latest handshake {field} is {ahead_seconds} s after now")]
    InFuture { field: u64, ahead_seconds: u64 },
    /// Seconds ago reaching back before [`EARLIEST_HANDSHAKE`].
    #[error("latest handshake {field} s ago would be before WireGuard existed")]
    TooOld { field: u64 },
    /// The current time itself is before [`EARLIEST_HANDSHAKE`]: Unix
    /// seconds and seconds ago cannot be told apart.
    #[error("the clock ({now}) is not set: cannot tell the unit of latest handshake {field}")]
    ClockUnset { field: u64, now: i64 },
}

/// Pure: read a `latest handshake` field against `now` (Unix seconds).
pub fn read_handshake(field: u64, now: i64) -> Result<Handshake, HandshakeError> {
    if field == 0 {
        return Ok(Handshake::Never);
    }
    if now < EARLIEST_HANDSHAKE {
        return Err(HandshakeError::ClockUnset { field, now });
    }
    // now >= EARLIEST_HANDSHAKE > 0, so these conversions are exact.
    let now_u = now.unsigned_abs();
    if field >= EARLIEST_HANDSHAKE.unsigned_abs() {
        let ahead = field.saturating_sub(now_u);
        if ahead > MAX_FUTURE_SKEW.unsigned_abs() {
            return Err(HandshakeError::InFuture {
                field,
                ahead_seconds: ahead,
            });
        }
        let unix = i64::try_from(field.min(now_u)).unwrap_or(now);
        return Ok(Handshake::At {
            unix,
            unit: HandshakeUnit::UnixSeconds,
        });
    }
    // field < EARLIEST_HANDSHAKE < now: no overflow.
    let unix = now - i64::try_from(field).unwrap_or(now);
    if unix < EARLIEST_HANDSHAKE {
        return Err(HandshakeError::TooOld { field });
    }
    Ok(Handshake::At {
        unix,
        unit: HandshakeUnit::SecondsAgo,
    })
}

impl PeerDump {
    /// Place the `latest handshake` field in time at `now` (Unix seconds):
    /// sets `latest_handshake`, `handshake_unit` and `handshake_error`.
    pub fn place_handshake(&mut self, now: i64) {
        let (at, unit, error) = match read_handshake(self.latest_handshake_field, now) {
            Ok(Handshake::Never) => (None, None, None),
            Ok(Handshake::At { unix, unit }) => (Some(unix), Some(unit), None),
            Err(e) => (None, None, Some(e)),
        };
        self.latest_handshake = at;
        self.handshake_unit = unit;
        self.handshake_error = error;
    }

    /// Without a clock: Unix-looking values are kept as they are, seconds
    /// ago cannot be placed (`latest_handshake` stays `None`).
    fn guess_handshake(&mut self) {
        let f = self.latest_handshake_field;
        if f == 0 {
            return;
        }
        if f >= EARLIEST_HANDSHAKE.unsigned_abs() {
            self.latest_handshake = i64::try_from(f).ok();
            self.handshake_unit = Some(HandshakeUnit::UnixSeconds);
        } else {
            self.handshake_unit = Some(HandshakeUnit::SecondsAgo);
        }
    }
}

/// A dump that cannot be parsed: the line (1-based) and why; never the
/// line's text (it may hold the private key).
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

/// Parse the output of `wg show <interface> dump`, placing every peer's
/// latest handshake in time at `now` (Unix seconds) whatever unit the
/// implementation printed it in (see [`read_handshake`]).
pub fn parse_dump_at(text: &str, now: i64) -> Result<Dump, DumpError> {
    let mut d = parse_dump(text)?;
    d.place_handshakes(now);
    Ok(d)
}

/// Parse the output of `wg show <interface> dump` without a clock: a
/// handshake printed as seconds ago is not placed in time and no value is
/// rejected until [`Dump::place_handshakes`] is called (or use
/// [`parse_dump_at`]).
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
        let mut peer = PeerDump {
            public_key: f[0].to_string(),
            preshared_key: none(f[1]).is_some(),
            endpoint: none(f[2]).map(str::to_owned),
            allowed_ips: none(f[3])
                .map(|a| a.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            latest_handshake: None,
            latest_handshake_field: num(f[4], "latest handshake")?,
            handshake_unit: None,
            handshake_error: None,
            rx_bytes: num(f[5], "rx bytes")?,
            tx_bytes: num(f[6], "tx bytes")?,
            persistent_keepalive: match none(f[7]) {
                None => None,
                Some(k) => Some(
                    k.parse::<u16>()
                        .map_err(|_| err(n, format!("keepalive {k:?} is not a number")))?,
                ),
            },
        };
        peer.guess_handshake();
        peers.push(peer);
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
    /// The peer with this public key.
    pub fn peer(&self, public_key: &str) -> Option<&PeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }

    /// Place every peer's latest handshake in time at `now` (Unix
    /// seconds); see [`read_handshake`].
    pub fn place_handshakes(&mut self, now: i64) {
        for p in &mut self.peers {
            p.place_handshake(now);
        }
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

    const NOW: i64 = 1_764_500_000; // 2025-11-30

    #[test]
    fn handshake_units_are_told_apart() {
        use HandshakeUnit::*;
        let at = |unix, unit| Ok(Handshake::At { unix, unit });
        // The kernel and wireguard-go: Unix seconds.
        assert_eq!(
            read_handshake(1_764_499_963, NOW),
            at(NOW - 37, UnixSeconds)
        );
        assert_eq!(
            read_handshake(NOW.unsigned_abs(), NOW),
            at(NOW, UnixSeconds)
        );
        // boringtun: seconds ago.
        assert_eq!(read_handshake(37, NOW), at(NOW - 37, SecondsAgo));
        assert_eq!(read_handshake(1, NOW), at(NOW - 1, SecondsAgo));
        assert_eq!(
            read_handshake(7 * 86400, NOW),
            at(NOW - 7 * 86400, SecondsAgo)
        );
        // 0 is never, whatever the implementation.
        assert_eq!(read_handshake(0, NOW), Ok(Handshake::Never));
        assert_eq!(read_handshake(0, 5), Ok(Handshake::Never));
        // The boundary: 2015-01-01 itself is a Unix time.
        let edge = EARLIEST_HANDSHAKE.unsigned_abs();
        assert_eq!(
            read_handshake(edge, NOW),
            at(EARLIEST_HANDSHAKE, UnixSeconds)
        );
        assert_eq!(
            read_handshake(edge - 1, NOW),
            Err(HandshakeError::TooOld { field: edge - 1 })
        );
    }

    #[test]
    fn impossible_handshakes_are_rejected_with_a_reason() {
        // A little ahead (the clock stepped back): just now.
        assert_eq!(
            read_handshake((NOW + MAX_FUTURE_SKEW).unsigned_abs(), NOW),
            Ok(Handshake::At {
                unix: NOW,
                unit: HandshakeUnit::UnixSeconds
            })
        );
        // Further ahead: impossible.
        let e = read_handshake((NOW + 3600).unsigned_abs(), NOW).unwrap_err();
        assert_eq!(
            e,
            HandshakeError::InFuture {
                field: (NOW + 3600).unsigned_abs(),
                ahead_seconds: 3600
            }
        );
        assert!(e.to_string().contains("3600 s after now"), "{e}");
        assert!(matches!(
            read_handshake(u64::MAX, NOW),
            Err(HandshakeError::InFuture { .. })
        ));
        // Seconds ago reaching before 2015 (or a 1990s Unix time): no
        // age of decades.
        for field in [500_000_000u64, 946_684_800, 1_000_000_000, 1_420_070_399] {
            assert_eq!(
                read_handshake(field, NOW),
                Err(HandshakeError::TooOld { field }),
                "{field}"
            );
        }
        // A clock that is not set cannot tell the units apart.
        assert_eq!(
            read_handshake(37, 86_400),
            Err(HandshakeError::ClockUnset {
                field: 37,
                now: 86_400
            })
        );
        assert!(matches!(
            read_handshake(37, -1),
            Err(HandshakeError::ClockUnset { .. })
        ));
    }

    #[test]
    fn no_accepted_handshake_is_decades_old_or_in_the_future() {
        let decade = 10 * 365 * 86400;
        for field in
            (0..64)
                .map(|b| 1u64 << b)
                .chain([37, 7200, 1_700_000_000, 1_764_499_963, u64::MAX])
        {
            if let Ok(Handshake::At { unix, .. }) = read_handshake(field, NOW) {
                assert!(unix <= NOW, "{field}: {unix}");
                assert!(NOW - unix < 2 * decade, "{field}: {unix}");
            }
        }
    }

    /// A boringtun dump (no interface keys shown, handshake as seconds
    /// ago) placed in time; the same peer line from the kernel agrees.
    #[test]
    fn boringtun_and_kernel_dumps_agree_once_placed() {
        let boringtun = "(none)\t(none)\t58593\toff\n\
Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=\t(none)\t[2001:db8::1]:51820\t10.9.0.2/32\t37\t14554000\t252800000\toff\n";
        let kernel = boringtun.replace("\t37\t", &format!("\t{}\t", NOW - 37));
        let b = parse_dump_at(boringtun, NOW).unwrap();
        let k = parse_dump_at(&kernel, NOW).unwrap();
        assert_eq!(b.peers[0].latest_handshake, Some(NOW - 37));
        assert_eq!(b.peers[0].handshake_unit, Some(HandshakeUnit::SecondsAgo));
        assert_eq!(k.peers[0].latest_handshake, Some(NOW - 37));
        assert_eq!(k.peers[0].handshake_unit, Some(HandshakeUnit::UnixSeconds));
        assert_eq!(b.peers[0].latest_handshake_field, 37);
        // Without a clock the seconds-ago value is not placed, never read
        // as 1970.
        let raw = parse_dump(boringtun).unwrap();
        assert_eq!(raw.peers[0].latest_handshake, None);
        assert_eq!(raw.peers[0].handshake_unit, Some(HandshakeUnit::SecondsAgo));
        // A rejected field leaves the peer parsed, its handshake unknown.
        let future = boringtun.replace("\t37\t", &format!("\t{}\t", NOW + 86_400));
        let f = parse_dump_at(&future, NOW).unwrap();
        assert_eq!(f.peers[0].latest_handshake, None);
        assert!(matches!(
            f.peers[0].handshake_error,
            Some(HandshakeError::InFuture { .. })
        ));
        assert_eq!(f.peers[0].rx_bytes, 14_554_000);
        let j = serde_json::to_value(&f.peers[0]).unwrap();
        assert_eq!(j["handshake_error"]["reason"], "in_future");
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
