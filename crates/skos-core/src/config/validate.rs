//! Pure validators of single configured values (interface and peer names,
//! CIDRs, endpoints, WireGuard keys, relative paths, chain kinds), shared by
//! the config sections, the chain logic (which checks the kinds on the
//! wire) and the agent (which checks what it renders with them).

use crate::escape::ShowPath;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

/// A value that is not what its key needs. The message names the value;
/// the caller adds the key path (a [`super::ConfigIssue`]) or the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("{0:?} is not an interface name (1-15 of A-Z a-z 0-9 _ = + . -)")]
    InterfaceName(String),
    #[error("{0:?} is not a name (1-64 of A-Z a-z 0-9 _ - .)")]
    Name(String),
    #[error("{0:?} is not an address/prefix")]
    Address(String),
    #[error("{value:?}: prefix must be 0 to {max}")]
    PrefixLength { value: String, max: u8 },
    #[error("{0:?} is not host:port")]
    Endpoint(String),
    #[error("must not be empty")]
    EmptyPath,
    #[error("{} must not contain '..'", .0.escaped())]
    ParentDir(PathBuf),
    #[error("{} must be relative to the cgroup root", .0.escaped())]
    NotRelative(PathBuf),
}

/// A Linux interface name as wg-quick accepts it: 1 to 15 of
/// `[A-Za-z0-9_=+.-]`, not starting with `-`.
pub fn interface_name(s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | '+' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::InterfaceName(s.to_string()))
    }
}

/// A peer name: it becomes part of the problem key `mesh:<name>`.
pub fn sensor_name(s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::Name(s.to_string()))
    }
}

/// `address/prefix` (a bare address is a host route).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), InvalidValue> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| InvalidValue::Address(s.to_string()))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
            InvalidValue::PrefixLength {
                value: s.to_string(),
                max,
            }
        })?,
    };
    Ok((ip, len))
}

/// `host:port` or `[v6]:port`, as WireGuard endpoints are written.
pub fn endpoint(s: &str) -> Result<(), InvalidValue> {
    let bad = || InvalidValue::Endpoint(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '%' | '_'));
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A WireGuard key: 32 bytes in standard base64 (43 characters and `=`).
pub fn is_wg_key(s: &str) -> bool {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    if b.len() != 44 || b[43] != b'=' {
        return false;
    }
    if !b[..43].iter().all(|c| B64.contains(c)) {
        return false;
    }
    // The last character carries 2 padding bits, which must be zero.
    B64.iter()
        .position(|c| *c == b[42])
        .is_some_and(|v| v & 0b11 == 0)
}

/// Longest chain kind (and process group name), in bytes.
pub const MAX_KIND_LEN: usize = 64;

/// Chain kinds and process group names: 1 to [`MAX_KIND_LEN`] letters,
/// digits, `_` or `-`.
pub fn valid_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KIND_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A configured path that must stay inside its root: relative, no `..`.
pub fn relative_inside(p: &Path) -> Result<(), InvalidValue> {
    if p.as_os_str().is_empty() {
        return Err(InvalidValue::EmptyPath);
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(InvalidValue::ParentDir(p.to_path_buf())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(InvalidValue::NotRelative(p.to_path_buf()))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=";

    #[test]
    fn validators() {
        assert!(is_wg_key(KEY));
        assert!(!is_wg_key(&KEY.replace('=', "A")));
        assert!(
            !is_wg_key("Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGd="),
            "padding bits"
        );
        assert!(!is_wg_key(""));
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("fd00::1").unwrap().1, 128);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("-v").is_err());
        assert!(endpoint("[fd00::1]:51820").is_ok());
        assert!(endpoint("vpn.example.org:51820").is_ok());
        assert!(endpoint("host").is_err());
        assert!(endpoint("-o:1").is_err());
        assert!(interface_name("wgt123a").is_ok());
        assert!(interface_name("a-very-long-interface").is_err());
        assert!(interface_name("--help").is_err());
        assert!(interface_name("wg0/x").is_err());
    }

    #[test]
    fn messages_name_the_value() {
        assert_eq!(
            interface_name("--help").unwrap_err().to_string(),
            "\"--help\" is not an interface name (1-15 of A-Z a-z 0-9 _ = + . -)"
        );
        assert_eq!(
            sensor_name("").unwrap_err().to_string(),
            "\"\" is not a name (1-64 of A-Z a-z 0-9 _ - .)"
        );
        assert_eq!(
            parse_cidr("x/8").unwrap_err().to_string(),
            "\"x/8\" is not an address/prefix"
        );
        assert_eq!(
            parse_cidr("10.0.0.0/33").unwrap_err().to_string(),
            "\"10.0.0.0/33\": prefix must be 0 to 32"
        );
        assert_eq!(
            endpoint("host").unwrap_err().to_string(),
            "\"host\" is not host:port"
        );
        assert_eq!(
            relative_inside(Path::new("")).unwrap_err().to_string(),
            "must not be empty"
        );
        assert_eq!(
            relative_inside(Path::new("a/../b"))
                .unwrap_err()
                .to_string(),
            "a/../b must not contain '..'"
        );
        assert_eq!(
            relative_inside(Path::new("/a")).unwrap_err().to_string(),
            "/a must be relative to the cgroup root"
        );
        assert!(relative_inside(Path::new("system.slice/x.service")).is_ok());
    }
}
