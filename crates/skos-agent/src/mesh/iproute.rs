//! Links and routes through iproute2's `ip -j` (JSON), parsed by pure
//! functions; routes are switched with `ip route replace`, argv only.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skos_core::config::RouteVia;

use super::exec::{self, argv};
use crate::{Error, Result};

/// One link as `ip -j link show dev <name>` describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    pub name: String,
    /// Administratively up (`UP` flag).
    pub up: bool,
    /// Carrier (`LOWER_UP` flag).
    pub lower_up: bool,
    pub operstate: String,
}

#[derive(Deserialize)]
struct RawLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    operstate: String,
}

/// `ip -j` output that is not the JSON expected; `what` is the object
/// (`link`, `route`).
#[derive(Debug, thiserror::Error)]
#[error("ip -j {what}: {source}")]
pub struct JsonError {
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

/// Parse `ip -j link show dev <name>`.
pub fn parse_link(json: &str) -> Result<Option<Link>, JsonError> {
    let links: Vec<RawLink> = serde_json::from_str(json.trim()).map_err(|source| JsonError {
        what: "link",
        source,
    })?;
    Ok(links.into_iter().next().map(|l| Link {
        up: l.flags.iter().any(|f| f == "UP"),
        lower_up: l.flags.iter().any(|f| f == "LOWER_UP"),
        name: l.ifname,
        operstate: l.operstate,
    }))
}

/// One route as `ip -j route show <prefix>` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
}

impl Route {
    /// Whether this route goes the way `via` says (every part `via` names
    /// must match).
    pub fn goes_via(&self, via: &RouteVia) -> bool {
        let gw_ok = via.gateway.is_none_or(|g| {
            self.gateway
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok())
                == Some(g)
        });
        let dev_ok = via
            .dev
            .as_deref()
            .is_none_or(|d| self.dev.as_deref() == Some(d));
        gw_ok && dev_ok && !via.is_empty()
    }
}

/// Parse `ip -j route show <prefix>`.
pub fn parse_routes(json: &str) -> Result<Vec<Route>, JsonError> {
    let t = json.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(t).map_err(|source| JsonError {
        what: "route",
        source,
    })
}

/// The link named `name` in this network namespace; `None` when there is
/// no such link.
pub fn link(ip: &str, name: &str, timeout: Duration) -> Result<Option<Link>> {
    let out = exec::run(&argv(&[ip, "-j", "link", "show", "dev", name]), timeout)?;
    if !out.success() {
        if out.stderr.contains("does not exist") {
            return Ok(None);
        }
        return Err(Error::Command {
            command: format!("ip link show dev {name}"),
            reason: out.describe(),
        });
    }
    parse_link(&out.stdout).map_err(|e| Error::Command {
        command: format!("ip link show dev {name}"),
        reason: e.to_string(),
    })
}

fn family(prefix: &str) -> &'static str {
    if prefix.contains(':') {
        "-6"
    } else {
        "-4"
    }
}

/// The routes for exactly `prefix` in the main table.
pub fn routes(ip: &str, prefix: &str, timeout: Duration) -> Result<Vec<Route>> {
    let out = exec::run(
        &argv(&[ip, "-j", family(prefix), "route", "show", "exact", prefix]),
        timeout,
    )?;
    if !out.success() {
        return Err(Error::Command {
            command: format!("ip route show {prefix}"),
            reason: out.describe(),
        });
    }
    parse_routes(&out.stdout).map_err(|e| Error::Command {
        command: format!("ip route show {prefix}"),
        reason: e.to_string(),
    })
}

/// The argv that points `prefix` the way `via` says.
pub fn replace_argv(ip: &str, prefix: &str, via: &RouteVia) -> Vec<String> {
    let mut a = argv(&[ip, family(prefix), "route", "replace", prefix]);
    if let Some(g) = via.gateway {
        a.push("via".into());
        a.push(g.to_string());
    }
    if let Some(d) = &via.dev {
        a.push("dev".into());
        a.push(d.clone());
    }
    a
}

/// Point `prefix` the way `via` says (`ip route replace`).
pub fn replace(ip: &str, prefix: &str, via: &RouteVia, timeout: Duration) -> Result<()> {
    let a = replace_argv(ip, prefix, via);
    let out = exec::run(&a, timeout)?;
    if out.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: a[1..].join(" "),
            reason: out.describe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_from_real_ip_output() {
        // `ip -j link show dev wgx1a` (iproute2 6.1) for a wireguard-go tun.
        let up = r#"[{"ifindex":2,"ifname":"wgx1a","flags":["POINTOPOINT","MULTICAST","NOARP","UP","LOWER_UP"],"mtu":1420,"qdisc":"pfifo_fast","operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":500,"link_type":"none"}]"#;
        let l = parse_link(up).unwrap().unwrap();
        assert!(l.up && l.lower_up);
        assert_eq!(l.name, "wgx1a");
        let down = r#"[{"ifindex":3,"ifname":"wgx9z","flags":["POINTOPOINT","MULTICAST","NOARP"],"mtu":1420,"qdisc":"noop","operstate":"DOWN","linkmode":"DEFAULT","group":"default","txqlen":500,"link_type":"none"}]"#;
        let l = parse_link(down).unwrap().unwrap();
        assert!(!l.up);
        assert_eq!(l.operstate, "DOWN");
        assert_eq!(parse_link("[]").unwrap(), None);
        assert!(parse_link("Device \"x\" does not exist.").is_err());
    }

    #[test]
    fn routes_from_real_ip_output() {
        let r =
            parse_routes(r#"[{"dst":"10.201.0.2","gateway":"10.200.2.2","dev":"ba","flags":[]}]"#)
                .unwrap();
        let backup = RouteVia {
            gateway: Some("10.200.2.2".parse().unwrap()),
            dev: Some("ba".into()),
        };
        let primary = RouteVia {
            gateway: Some("10.200.1.2".parse().unwrap()),
            dev: Some("pa".into()),
        };
        assert!(r[0].goes_via(&backup));
        assert!(!r[0].goes_via(&primary));
        assert!(r[0].goes_via(&RouteVia {
            gateway: None,
            dev: Some("ba".into())
        }));
        assert!(!r[0].goes_via(&RouteVia::default()));
        assert!(parse_routes("").unwrap().is_empty());
        assert!(parse_routes("[]").unwrap().is_empty());
    }

    #[test]
    fn replace_is_plain_argv() {
        let via = RouteVia {
            gateway: Some("fd00::1".parse().unwrap()),
            dev: Some("eth1".into()),
        };
        assert_eq!(
            replace_argv("ip", "fd99::/64", &via),
            [
                "ip",
                "-6",
                "route",
                "replace",
                "fd99::/64",
                "via",
                "fd00::1",
                "dev",
                "eth1"
            ]
        );
    }
}
