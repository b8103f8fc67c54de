//! Reachability of a peer address over a short window: ICMP echo through a
//! ping socket (`SOCK_DGRAM`, allowed by `net.ipv4.ping_group_range`) or a
//! raw socket (`CAP_NET_RAW`), else a TCP connect to a configured port (a
//! refused connection proves the host answered). The report says which
//! method was used. A node that can probe no way says so: no reading is
//! invented.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use skos_core::config::ProbeMethod;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOpts {
    pub method: ProbeMethod,
    pub count: u32,
    pub interval: Duration,
    pub timeout: Duration,
    pub tcp_port: Option<u16>,
    /// Send through this device only (`SO_BINDTODEVICE`), whatever the
    /// routes say: how the primary path is checked while failed over.
    pub bind_device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    pub target: IpAddr,
    /// `icmp_dgram`, `icmp_raw` or `tcp`.
    pub method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub sent: u32,
    pub received: u32,
    pub loss_percent: f64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    /// Why ICMP was not used, or what went wrong sending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why no probe of `target` could be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open an ICMP socket: {source}")]
    Icmp {
        target: IpAddr,
        #[source]
        source: IcmpUnavailable,
    },
    #[error("cannot open an ICMP socket ({source}) and no TCP port is configured")]
    NoTcpPort {
        target: IpAddr,
        #[source]
        source: IcmpUnavailable,
    },
}

/// Why ICMP is not used for a probe.
#[derive(Debug, thiserror::Error)]
pub enum IcmpUnavailable {
    #[error("probe method is tcp")]
    TcpChosen,
    #[error("ping socket: {dgram}; raw socket: {raw}")]
    NoSocket { dgram: io::Error, raw: io::Error },
    #[error("cannot bind to device {device}: {source}")]
    Bind {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("connect {target}: {source}")]
    Connect {
        target: IpAddr,
        #[source]
        source: io::Error,
    },
}

impl ProbeReport {
    pub fn answered(&self) -> bool {
        self.received > 0
    }
}

/// Sums up round-trip times (`None` for a lost probe).
pub fn summarize(target: IpAddr, method: &'static str, rtts: &[Option<Duration>]) -> ProbeReport {
    let got: Vec<f64> = rtts
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let sent = u32::try_from(rtts.len()).unwrap_or(u32::MAX);
    let received = u32::try_from(got.len()).unwrap_or(u32::MAX);
    let loss_percent = if sent == 0 {
        100.0
    } else {
        f64::from(sent - received) * 100.0 / f64::from(sent)
    };
    let avg = (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64);
    ProbeReport {
        target,
        method,
        port: None,
        device: None,
        sent,
        received,
        loss_percent,
        rtt_min_ms: got.iter().copied().reduce(f64::min),
        rtt_avg_ms: avg,
        rtt_max_ms: got.iter().copied().reduce(f64::max),
        note: None,
    }
}

/// Probe `target` once over a window of `opts.count` echoes (or connects).
/// `Err` when no probe could be made at all (no socket permitted, no TCP
/// port configured): the caller reports "not probed", not "unreachable".
pub fn probe(target: IpAddr, opts: &ProbeOpts) -> Result<ProbeReport, ProbeError> {
    let icmp = match opts.method {
        ProbeMethod::Tcp => Err(IcmpUnavailable::TcpChosen),
        _ => open_icmp(target, opts.bind_device.as_deref()),
    };
    let mut report = match icmp {
        Ok((sock, kind)) => icmp_window(&sock, kind, target, opts),
        Err(why) => {
            if opts.method == ProbeMethod::Icmp {
                return Err(ProbeError::Icmp {
                    target,
                    source: why,
                });
            }
            let Some(port) = opts.tcp_port else {
                return Err(ProbeError::NoTcpPort {
                    target,
                    source: why,
                });
            };
            let mut r = tcp_window(target, port, opts);
            if opts.method == ProbeMethod::Auto {
                r.note = Some(format!("ICMP not available ({why}); TCP connect used"));
            }
            r
        }
    };
    report.device = opts.bind_device.clone();
    Ok(report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IcmpKind {
    Dgram,
    Raw,
}

fn open_icmp(target: IpAddr, device: Option<&str>) -> Result<(Socket, IcmpKind), IcmpUnavailable> {
    let (domain, proto) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (sock, kind) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => (s, IcmpKind::Dgram),
        Err(dgram) => match Socket::new(domain, Type::RAW, Some(proto)) {
            Ok(s) => (s, IcmpKind::Raw),
            Err(raw) => return Err(IcmpUnavailable::NoSocket { dgram, raw }),
        },
    };
    if let Some(d) = device {
        sock.bind_device(Some(d.as_bytes()))
            .map_err(|source| IcmpUnavailable::Bind {
                device: d.to_string(),
                source,
            })?;
    }
    sock.connect(&SockAddr::from(SocketAddr::new(target, 0)))
        .map_err(|source| IcmpUnavailable::Connect { target, source })?;
    Ok((sock, kind))
}

/// Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum = sum.wrapping_add(u32::from(word));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP (v4 or v6) echo request with our identifier, sequence and a
/// 16-byte payload that carries the nonce.
pub fn echo_request(v6: bool, id: u16, seq: u16, nonce: u64) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&nonce.to_be_bytes());
    p.extend_from_slice(b"skos-mes");
    if !v6 {
        // ICMPv6 checksums are computed by the kernel (they cover the
        // pseudo-header).
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The sequence number of an echo reply matching `nonce` (and `id`, when
/// the kernel does not rewrite it), from what a socket read: raw IPv4
/// sockets deliver the IP header first.
pub fn parse_echo_reply(buf: &[u8], v6: bool, raw: bool, id: u16, nonce: u64) -> Option<u16> {
    let icmp = if raw && !v6 {
        let ihl = usize::from(buf.first()? & 0x0f) * 4;
        buf.get(ihl..)?
    } else {
        buf
    };
    let reply_type = if v6 { 129 } else { 0 };
    if icmp.len() < 16 || icmp[0] != reply_type || icmp[1] != 0 {
        return None;
    }
    let got_id = u16::from_be_bytes([icmp[4], icmp[5]]);
    // Ping sockets replace the identifier with their own.
    if raw && got_id != id {
        return None;
    }
    let got_nonce = u64::from_be_bytes(icmp[8..16].try_into().ok()?);
    (got_nonce == nonce).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn icmp_window(sock: &Socket, kind: IcmpKind, target: IpAddr, opts: &ProbeOpts) -> ProbeReport {
    let v6 = target.is_ipv6();
    let raw = kind == IcmpKind::Raw;
    let nonce = nonce();
    let id = (nonce & 0xffff) as u16;
    let count = opts.count.max(1) as usize;
    let mut sent_at: Vec<Option<Instant>> = vec![None; count];
    let mut rtts: Vec<Option<Duration>> = vec![None; count];
    let mut note = None;
    let start = Instant::now();
    let mut next = 0usize;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if next < count && now >= start + opts.interval * next as u32 {
            let req = echo_request(v6, id, next as u16, nonce);
            match sock.send(&req) {
                Ok(_) => sent_at[next] = Some(Instant::now()),
                Err(e) => {
                    // Unreachable networks answer at once; the probe is lost.
                    note.get_or_insert_with(|| format!("send: {e}"));
                    sent_at[next] = Some(Instant::now());
                }
            }
            next += 1;
            continue;
        }
        let last_deadline = sent_at
            .iter()
            .flatten()
            .max()
            .map(|t| *t + opts.timeout)
            .unwrap_or(now);
        let all_answered = next == count && rtts.iter().all(Option::is_some);
        if all_answered || (next == count && now >= last_deadline) {
            break;
        }
        let wake = if next < count {
            (start + opts.interval * next as u32).min(last_deadline.max(now))
        } else {
            last_deadline
        };
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        if sock.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match (&*sock).read(&mut buf) {
            Ok(n) => {
                if let Some(seq) = parse_echo_reply(&buf[..n], v6, raw, id, nonce) {
                    let i = usize::from(seq);
                    if let (Some(Some(t)), Some(slot)) = (sent_at.get(i), rtts.get_mut(i)) {
                        if slot.is_none() && t.elapsed() <= opts.timeout {
                            *slot = Some(t.elapsed());
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                // ICMP errors (host unreachable) surface here on a connected
                // socket; wait out the window rather than spin.
                note.get_or_insert_with(|| format!("receive: {e}"));
                std::thread::sleep(wait.min(Duration::from_millis(50)));
            }
        }
    }
    let mut r = summarize(target, if raw { "icmp_raw" } else { "icmp_dgram" }, &rtts);
    r.note = note;
    r
}

fn tcp_window(target: IpAddr, port: u16, opts: &ProbeOpts) -> ProbeReport {
    let addr = SockAddr::from(SocketAddr::new(target, port));
    let count = opts.count.max(1);
    let mut rtts = Vec::new();
    let mut note = None;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(opts.interval);
        }
        let domain = if target.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = match Socket::new(domain, Type::STREAM, Some(Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => {
                note.get_or_insert_with(|| format!("socket: {e}"));
                rtts.push(None);
                continue;
            }
        };
        if let Some(d) = &opts.bind_device {
            if let Err(e) = sock.bind_device(Some(d.as_bytes())) {
                note.get_or_insert_with(|| format!("cannot bind to device {d}: {e}"));
            }
        }
        let t0 = Instant::now();
        match sock.connect_timeout(&addr, opts.timeout) {
            Ok(()) => rtts.push(Some(t0.elapsed())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                rtts.push(Some(t0.elapsed()))
            }
            Err(e) => {
                note.get_or_insert_with(|| format!("connect: {e}"));
                rtts.push(None);
            }
        }
    }
    let mut r = summarize(target, "tcp", &rtts);
    r.port = Some(port);
    r.note = note;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, complement 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        let req = echo_request(false, 7, 1, 42);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
    }

    #[test]
    fn replies_are_matched_by_nonce_and_sequence() {
        let mut reply = echo_request(false, 7, 3, 99);
        reply[0] = 0;
        assert_eq!(
            parse_echo_reply(&reply, false, false, 1, 99),
            Some(3),
            "dgram: any id"
        );
        assert_eq!(
            parse_echo_reply(&reply, false, true, 1, 99),
            None,
            "raw: id must match"
        );
        assert_eq!(
            parse_echo_reply(&reply, false, false, 7, 98),
            None,
            "other nonce"
        );
        let mut with_ip = vec![0x45u8];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&reply);
        assert_eq!(parse_echo_reply(&with_ip, false, true, 7, 99), Some(3));
        let request = echo_request(false, 7, 3, 99);
        assert_eq!(
            parse_echo_reply(&request, false, false, 7, 99),
            None,
            "not a reply"
        );
        let mut v6 = echo_request(true, 7, 2, 5);
        v6[0] = 129;
        assert_eq!(parse_echo_reply(&v6, true, true, 7, 5), Some(2));
        assert_eq!(parse_echo_reply(&[1, 2], false, true, 7, 5), None);
    }

    #[test]
    fn summary() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let r = summarize(
            ip,
            "tcp",
            &[
                Some(Duration::from_millis(10)),
                None,
                Some(Duration::from_millis(30)),
            ],
        );
        assert_eq!((r.sent, r.received), (3, 2));
        assert!((r.loss_percent - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.rtt_avg_ms, Some(20.0));
        assert_eq!(r.rtt_min_ms, Some(10.0));
        let none = summarize(ip, "tcp", &[None, None]);
        assert_eq!(none.loss_percent, 100.0);
        assert!(!none.answered());
    }

    #[test]
    fn tcp_probe_counts_a_refusal_as_an_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let opts = ProbeOpts {
            method: ProbeMethod::Tcp,
            count: 2,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(500),
            tcp_port: Some(port),
            bind_device: None,
        };
        let r = probe("127.0.0.1".parse().unwrap(), &opts).unwrap();
        assert_eq!(r.method, "tcp");
        assert_eq!(r.received, 2, "{r:?}");
        let no_port = ProbeOpts {
            tcp_port: None,
            ..opts
        };
        assert!(probe("127.0.0.1".parse().unwrap(), &no_port).is_err());
    }
}
