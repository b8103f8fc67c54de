//! `mesh:`: the mesh healer (WireGuard tunnels and peer reachability).
//!
//! Every interface, peer, network, gateway and file the mesh healer touches
//! is named here; a command only selects among them by name. Secrets never
//! appear in this file: the private and preshared keys are read from the
//! files named by `private_key_file` / `preshared_key_file` when a config is
//! regenerated.

use crate::events::MeshEvent;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::levels::check_actions;
use super::validate::{endpoint, interface_name, is_wg_key, parse_cidr, sensor_name};
use super::{issue, strings, CheckContext, Config, ConfigIssue, Section};
use crate::node::NodeName;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshConfig {
    /// Actions per event (`tunnel_down`, `peer_unreachable`,
    /// `peer_degraded`, `node_unreachable`, `escalated`), tried one at a
    /// time, in order, until one works.
    pub actions: BTreeMap<String, Vec<String>>,
    /// `restart_wireguard` tries this many times before it fails.
    pub reconnect_attempts: u32,
    /// Seconds between two restart attempts.
    pub reconnect_delay_seconds: f64,
    /// WireGuard interfaces watched: a name (`wg0`) or a mapping.
    pub interfaces: Vec<MeshInterface>,
    /// Peers watched (handshake age, reachability) and healed.
    pub peers: Vec<MeshPeer>,
    /// Seconds without a handshake or received data after which a peer is
    /// down (the seed's WireGuard default of 180 s).
    pub stale_after: f64,
    /// Seconds a new state must hold before it is reported.
    #[serde(rename = "for")]
    pub for_: f64,
    /// Seconds before an unchanged problem is reported again.
    pub cooldown: f64,
    /// Seconds after a restart during which the interface's peers are not
    /// judged (handshakes are being made again).
    pub settle_seconds: f64,
    /// Seconds each external command (`wg-quick`, `systemctl`, `ip`, a
    /// configured command) may run before it is killed.
    pub command_timeout: f64,
    pub probe: ProbeConfig,
    /// Programs run (argv, never a shell), found on `PATH` unless absolute.
    pub tools: MeshTools,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            actions: BTreeMap::from([
                (
                    MeshEvent::TunnelDown.as_str().to_string(),
                    strings(&["restart_wireguard", "regenerate_config"]),
                ),
                (
                    MeshEvent::PeerUnreachable.as_str().to_string(),
                    strings(&["ping_peer", "failover_route"]),
                ),
            ]),
            reconnect_attempts: 3,
            reconnect_delay_seconds: 5.0,
            interfaces: Vec::new(),
            peers: Vec::new(),
            stale_after: 180.0,
            for_: 0.0,
            cooldown: 300.0,
            settle_seconds: 10.0,
            command_timeout: 30.0,
            probe: ProbeConfig::default(),
            tools: MeshTools::default(),
        }
    }
}

/// How `restart_wireguard` restarts an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartMethod {
    /// `wg-quick down <config>` then `wg-quick up <config>`.
    #[default]
    #[serde(alias = "wg-quick")]
    WgQuick,
    /// `systemctl restart <unit>`.
    Systemd,
    /// The configured `restart_command` (argv).
    Command,
}

/// One WireGuard interface. Written in the config as a bare name (`wg0`) or
/// a mapping with `name` and the keys below.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshInterface {
    pub name: String,
    /// The wg-quick file; default `/etc/wireguard/<name>.conf`.
    pub config_path: Option<PathBuf>,
    pub restart: RestartMethod,
    /// For `restart: systemd`; default `wg-quick@<name>.service`.
    pub unit: Option<String>,
    /// For `restart: command`: argv, run without a shell.
    pub restart_command: Vec<String>,
    /// `regenerate_config`: a template file (placeholders `{{interface}}`,
    /// `{{private_key}}`, `{{listen_port}}`, `{{address}}`, `{{peers}}`);
    /// default: the built-in wg-quick template.
    pub template: Option<PathBuf>,
    /// The node's private key (`wg genkey` output), read only to render a
    /// config; never logged.
    pub private_key_file: Option<PathBuf>,
    /// Tunnel addresses of this node (CIDR), for the template.
    pub address: Vec<String>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
}

impl MeshInterface {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/etc/wireguard/{}.conf", self.name)))
    }

    pub fn unit_name(&self) -> String {
        self.unit
            .clone()
            .unwrap_or_else(|| format!("wg-quick@{}.service", self.name))
    }
}

impl Default for MeshInterface {
    fn default() -> Self {
        Self {
            name: String::new(),
            config_path: None,
            restart: RestartMethod::WgQuick,
            unit: None,
            restart_command: Vec::new(),
            template: None,
            private_key_file: None,
            address: Vec::new(),
            listen_port: None,
            mtu: None,
        }
    }
}

/// The mapping form of an interface (serde derives its unknown-key and
/// type errors with their paths).
#[derive(Deserialize)]
#[serde(default)]
struct InterfaceMap {
    name: String,
    config_path: Option<PathBuf>,
    restart: RestartMethod,
    unit: Option<String>,
    restart_command: Vec<String>,
    template: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    address: Vec<String>,
    listen_port: Option<u16>,
    mtu: Option<u32>,
}

impl Default for InterfaceMap {
    fn default() -> Self {
        let d = MeshInterface::default();
        Self {
            name: d.name,
            config_path: d.config_path,
            restart: d.restart,
            unit: d.unit,
            restart_command: d.restart_command,
            template: d.template,
            private_key_file: d.private_key_file,
            address: d.address,
            listen_port: d.listen_port,
            mtu: d.mtu,
        }
    }
}

impl<'de> Deserialize<'de> for MeshInterface {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MeshInterface;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an interface name or a mapping with `name`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MeshInterface, E> {
                Ok(MeshInterface::named(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MeshInterface, A::Error> {
                let m = InterfaceMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MeshInterface {
                    name: m.name,
                    config_path: m.config_path,
                    restart: m.restart,
                    unit: m.unit,
                    restart_command: m.restart_command,
                    template: m.template,
                    private_key_file: m.private_key_file,
                    address: m.address,
                    listen_port: m.listen_port,
                    mtu: m.mtu,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshPeer {
    /// The peer's name: alerts say `mesh:<name>`.
    pub name: String,
    /// The configured interface it is reached through.
    pub interface: String,
    /// The SKOS node this peer is (default: `name`, when it is a valid node
    /// name); lets the coordinator see a peer down from every node.
    pub node: Option<NodeName>,
    /// Its WireGuard public key (base64); matches it in `wg show` and is
    /// written by `regenerate_config`.
    pub public_key: Option<String>,
    pub preshared_key_file: Option<PathBuf>,
    /// `host:port`.
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
    /// An address of the peer probed for reachability (usually its tunnel
    /// address).
    pub address: Option<IpAddr>,
    /// TCP port for the fallback probe (overrides `probe.tcp_port`).
    pub tcp_port: Option<u16>,
    pub failover: Option<FailoverConfig>,
}

impl MeshPeer {
    /// The SKOS node behind this peer, if known.
    pub fn node_name(&self) -> Option<NodeName> {
        self.node
            .clone()
            .or_else(|| NodeName::parse(&self.name).ok())
    }
}

/// `failover_route`: the routes to the peer's networks move from the
/// primary path to the backup one, and back once the primary has answered
/// for `hold_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverConfig {
    /// Destinations (CIDR) whose route is switched, e.g. the peer's
    /// endpoint `/32`.
    pub networks: Vec<String>,
    pub primary: RouteVia,
    pub backup: RouteVia,
    /// Probed through the primary device to decide it is healthy again;
    /// default: the primary gateway.
    pub check_address: Option<IpAddr>,
    pub hold_seconds: f64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            networks: Vec::new(),
            primary: RouteVia::default(),
            backup: RouteVia::default(),
            check_address: None,
            hold_seconds: 60.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteVia {
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
}

impl RouteVia {
    pub fn is_empty(&self) -> bool {
        self.gateway.is_none() && self.dev.is_none()
    }
}

/// How reachability is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMethod {
    /// ICMP echo when the socket can be opened, else TCP connect.
    #[default]
    Auto,
    Icmp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeConfig {
    pub method: ProbeMethod,
    /// Echoes (or connects) per window.
    pub count: u32,
    /// Seconds between two probes of a window.
    pub interval: f64,
    /// Seconds to wait for each answer.
    pub timeout: f64,
    /// Port for the TCP probe (a refused connection still proves the peer
    /// answers).
    pub tcp_port: Option<u16>,
    /// A peer losing at least this share of probes is degraded.
    pub degraded_loss_percent: f64,
    /// A peer answering slower than this on average is degraded.
    pub degraded_rtt_ms: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            method: ProbeMethod::Auto,
            count: 3,
            interval: 0.2,
            timeout: 1.0,
            tcp_port: None,
            degraded_loss_percent: 20.0,
            degraded_rtt_ms: 500.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshTools {
    pub wg: String,
    pub wg_quick: String,
    pub ip: String,
    pub systemctl: String,
}

impl Default for MeshTools {
    fn default() -> Self {
        Self {
            wg: "wg".into(),
            wg_quick: "wg-quick".into(),
            ip: "ip".into(),
            systemctl: "systemctl".into(),
        }
    }
}

impl Section for MeshConfig {
    const KEY: &'static str = "mesh";

    fn get(cfg: &Config) -> &Self {
        &cfg.mesh
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.mesh
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        for (event, actions) in &self.actions {
            check_actions(out, &format!("mesh.actions.{event}"), actions);
        }
        out.extend(self.check_fields());
    }
}

impl MeshConfig {
    pub fn interface(&self, name: &str) -> Option<&MeshInterface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    pub fn peer(&self, name: &str) -> Option<&MeshPeer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Checks beyond the action names.
    fn check_fields(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let positive = |out: &mut Vec<ConfigIssue>, path: &str, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                out.push(issue(path, format!("must be a positive number, got {v}")));
            }
        };
        let non_negative = |out: &mut Vec<ConfigIssue>, path: &str, v: f64| {
            if !(v.is_finite() && v >= 0.0) {
                out.push(issue(path, format!("must be zero or more, got {v}")));
            }
        };
        if self.reconnect_attempts == 0 {
            out.push(issue("mesh.reconnect_attempts", "must be at least 1"));
        }
        non_negative(
            &mut out,
            "mesh.reconnect_delay_seconds",
            self.reconnect_delay_seconds,
        );
        positive(&mut out, "mesh.stale_after", self.stale_after);
        non_negative(&mut out, "mesh.for", self.for_);
        non_negative(&mut out, "mesh.cooldown", self.cooldown);
        non_negative(&mut out, "mesh.settle_seconds", self.settle_seconds);
        positive(&mut out, "mesh.command_timeout", self.command_timeout);
        let p = &self.probe;
        if !(1..=100).contains(&p.count) {
            out.push(issue("mesh.probe.count", "must be between 1 and 100"));
        }
        non_negative(&mut out, "mesh.probe.interval", p.interval);
        positive(&mut out, "mesh.probe.timeout", p.timeout);
        if !(p.degraded_loss_percent.is_finite()
            && (0.0..=100.0).contains(&p.degraded_loss_percent))
        {
            out.push(issue(
                "mesh.probe.degraded_loss_percent",
                "must be between 0 and 100",
            ));
        }
        positive(&mut out, "mesh.probe.degraded_rtt_ms", p.degraded_rtt_ms);
        if p.method == ProbeMethod::Tcp
            && p.tcp_port.is_none()
            && self.peers.iter().any(|x| x.tcp_port.is_none())
        {
            out.push(issue(
                "mesh.probe.tcp_port",
                "method tcp needs a port here or on every peer",
            ));
        }
        for (k, v) in [
            ("wg", &self.tools.wg),
            ("wg_quick", &self.tools.wg_quick),
            ("ip", &self.tools.ip),
            ("systemctl", &self.tools.systemctl),
        ] {
            if v.is_empty() || v.starts_with('-') || v.chars().any(char::is_whitespace) {
                out.push(issue(
                    format!("mesh.tools.{k}"),
                    format!("{v:?} is not a program"),
                ));
            }
        }

        let mut names = BTreeSet::new();
        for (i, itf) in self.interfaces.iter().enumerate() {
            let at = format!("mesh.interfaces[{i}]");
            if let Err(m) = interface_name(&itf.name) {
                out.push(issue(format!("{at}.name"), m.to_string()));
            } else if !names.insert(itf.name.clone()) {
                out.push(issue(
                    format!("{at}.name"),
                    format!("{} is named twice", itf.name),
                ));
            }
            if let Some(c) = &itf.config_path {
                if !c.is_absolute() || c.components().any(|c| c.as_os_str() == "..") {
                    out.push(issue(
                        format!("{at}.config_path"),
                        format!("{} must be absolute, without '..'", c.display()),
                    ));
                } else if itf.restart == RestartMethod::WgQuick
                    && c.file_name().and_then(|f| f.to_str()) != Some(&format!("{}.conf", itf.name))
                {
                    out.push(issue(
                        format!("{at}.config_path"),
                        format!(
                            "wg-quick names the interface after the file: it must be {}.conf",
                            itf.name
                        ),
                    ));
                }
            }
            for (key, p) in [
                ("template", &itf.template),
                ("private_key_file", &itf.private_key_file),
            ] {
                if let Some(p) = p {
                    if !p.is_absolute() {
                        out.push(issue(
                            format!("{at}.{key}"),
                            format!("{} must be absolute", p.display()),
                        ));
                    }
                }
            }
            match itf.restart {
                RestartMethod::Command if itf.restart_command.is_empty() => out.push(issue(
                    format!("{at}.restart_command"),
                    "restart: command needs a command (argv)",
                )),
                RestartMethod::Systemd => {
                    let unit = itf.unit_name();
                    if unit.is_empty()
                        || unit.starts_with('-')
                        || unit.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        out.push(issue(
                            format!("{at}.unit"),
                            format!("{unit:?} is not a unit name"),
                        ));
                    }
                }
                _ => {}
            }
            for (j, a) in itf.address.iter().enumerate() {
                if let Err(m) = parse_cidr(a) {
                    out.push(issue(format!("{at}.address[{j}]"), m.to_string()));
                }
            }
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let at = format!("mesh.peers[{i}]");
            if let Err(m) = sensor_name(&peer.name) {
                out.push(issue(format!("{at}.name"), m.to_string()));
            } else if !names.insert(peer.name.clone()) {
                out.push(issue(
                    format!("{at}.name"),
                    format!("{} is already an interface or peer name", peer.name),
                ));
            }
            if self.interface(&peer.interface).is_none() {
                out.push(issue(
                    format!("{at}.interface"),
                    format!("{:?} is not one of mesh.interfaces", peer.interface),
                ));
            }
            if let Some(k) = &peer.public_key {
                if !is_wg_key(k) {
                    out.push(issue(
                        format!("{at}.public_key"),
                        "not a WireGuard key (44 characters of base64)",
                    ));
                }
            }
            if let Some(p) = &peer.preshared_key_file {
                if !p.is_absolute() {
                    out.push(issue(
                        format!("{at}.preshared_key_file"),
                        format!("{} must be absolute", p.display()),
                    ));
                }
            }
            if let Some(e) = &peer.endpoint {
                if let Err(m) = endpoint(e) {
                    out.push(issue(format!("{at}.endpoint"), m.to_string()));
                }
            }
            for (j, a) in peer.allowed_ips.iter().enumerate() {
                if let Err(m) = parse_cidr(a) {
                    out.push(issue(format!("{at}.allowed_ips[{j}]"), m.to_string()));
                }
            }
            if let Some(f) = &peer.failover {
                let at = format!("{at}.failover");
                if f.networks.is_empty() {
                    out.push(issue(
                        format!("{at}.networks"),
                        "must name at least one network",
                    ));
                }
                let mut families = BTreeSet::new();
                for (j, n) in f.networks.iter().enumerate() {
                    match parse_cidr(n) {
                        Ok((ip, _)) => {
                            families.insert(ip.is_ipv4());
                        }
                        Err(m) => out.push(issue(format!("{at}.networks[{j}]"), m.to_string())),
                    }
                }
                for (key, via) in [("primary", &f.primary), ("backup", &f.backup)] {
                    if via.is_empty() {
                        out.push(issue(format!("{at}.{key}"), "needs a gateway or a dev"));
                    }
                    if let Some(d) = &via.dev {
                        if let Err(m) = interface_name(d) {
                            out.push(issue(format!("{at}.{key}.dev"), m.to_string()));
                        }
                    }
                    if let Some(g) = via.gateway {
                        if families.len() == 1 && !families.contains(&g.is_ipv4()) {
                            out.push(issue(
                                format!("{at}.{key}.gateway"),
                                "is not of the networks' address family",
                            ));
                        }
                    }
                }
                if families.len() > 1 {
                    out.push(issue(
                        format!("{at}.networks"),
                        "mixes IPv4 and IPv6; use one peer entry per family",
                    ));
                }
                if f.primary == f.backup && !f.primary.is_empty() {
                    out.push(issue(format!("{at}.backup"), "is the same path as primary"));
                }
                if f.check_address.is_none() && f.primary.gateway.is_none() {
                    out.push(issue(
                        format!("{at}.check_address"),
                        "needed when the primary has no gateway",
                    ));
                }
                non_negative(&mut out, &format!("{at}.hold_seconds"), f.hold_seconds);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const KEY: &str = "Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=";

    #[test]
    fn seed_shape_still_parses() {
        let cfg =
            Config::from_yaml("mesh:\n  interfaces: [wg0]\n  reconnect_attempts: 2\n").unwrap();
        assert_eq!(cfg.mesh.interfaces[0].name, "wg0");
        assert_eq!(
            cfg.mesh.interfaces[0].config_file(),
            PathBuf::from("/etc/wireguard/wg0.conf")
        );
        assert_eq!(cfg.mesh.interfaces[0].restart, RestartMethod::WgQuick);
        assert_eq!(cfg.mesh.reconnect_attempts, 2);
        assert_eq!(cfg.mesh.stale_after, 180.0);
        assert_eq!(FailoverConfig::default().hold_seconds, 60.0);
    }

    #[test]
    fn full_shape_parses() {
        let text = format!(
            "
mesh:
  stale_after: 3
  probe: {{count: 2, timeout: 0.5, tcp_port: 22}}
  interfaces:
    - name: wg0
      config_path: /etc/wireguard/wg0.conf
      private_key_file: /etc/wireguard/wg0.key
      address: [10.99.0.1/24]
      listen_port: 51820
    - {{name: wg1, restart: systemd}}
    - {{name: wg2, restart: command, restart_command: [/usr/local/bin/wg2-up, --now]}}
  peers:
    - name: lyra
      interface: wg0
      public_key: '{KEY}'
      endpoint: 192.0.2.7:51820
      allowed_ips: [10.99.0.2/32]
      persistent_keepalive: 25
      address: 10.99.0.2
      failover:
        networks: [192.0.2.7/32]
        primary: {{gateway: 198.51.100.1, dev: eth0}}
        backup: {{gateway: 203.0.113.1, dev: eth1}}
        hold_seconds: 30
"
        );
        let cfg = Config::from_yaml(&text).unwrap();
        let m = &cfg.mesh;
        assert_eq!(m.interfaces[1].unit_name(), "wg-quick@wg1.service");
        assert_eq!(m.interfaces[2].restart_command[0], "/usr/local/bin/wg2-up");
        let p = m.peer("lyra").unwrap();
        assert_eq!(p.node_name().unwrap().as_str(), "lyra");
        assert_eq!(p.failover.as_ref().unwrap().hold_seconds, 30.0);
        assert_eq!(m.probe.tcp_port, Some(22));
    }

    #[test]
    fn every_mistake_has_its_key_path() {
        let text = "
mesh:
  reconnect_attempts: 0
  interfaces:
    - name: '-rf'
    - {name: wg0, config_path: /etc/wireguard/other.conf, colour: blue}
    - {name: wg1, restart: command}
    - wg0
  peers:
    - {name: a, interface: wg9, public_key: nope, allowed_ips: [10.0.0.1/40], endpoint: 'x'}
    - name: b
      interface: wg0
      failover: {networks: [], primary: {}, backup: {dev: 'e th1'}}
";
        let errs = Config::from_yaml(text).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "mesh.reconnect_attempts",
            "mesh.interfaces[0].name",
            "mesh.interfaces[1].config_path",
            "mesh.interfaces[2].restart_command",
            "mesh.interfaces[3].name",
            "mesh.peers[0].interface",
            "mesh.peers[0].public_key",
            "mesh.peers[0].allowed_ips[0]",
            "mesh.peers[0].endpoint",
            "mesh.peers[1].failover.networks",
            "mesh.peers[1].failover.primary",
            "mesh.peers[1].failover.backup.dev",
            "mesh.peers[1].failover.check_address",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
        assert!(
            errs.iter()
                .any(|e| e.path.contains("colour") && e.message == "unknown key"),
            "{errs:#?}"
        );
    }

    #[test]
    fn unknown_peer_key_is_reported() {
        let errs = Config::from_yaml("mesh:\n  peers: [{name: a, interface: wg0, pubkey: x}]\n")
            .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path == "mesh.peers.0.pubkey" && e.message == "unknown key"),
            "{errs:?}"
        );
    }
}
