//! `mesh:`: the mesh healer (WireGuard tunnels and peer reachability).
//!
//! Every interface, peer, network, gateway and file the mesh healer touches
//! is named here; a command only selects among them by name. Secrets never
//! appear in this file: the private and preshared keys are read from the
//! files named by `private_key_file` / `preshared_key_file` when a config is
//! regenerated.

use crate::escape::ShowPath;
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
    /// The coordinator's own knowledge of the mesh: for each node, the
    /// nodes it has tunnels to (`{nova: [lyra, athena]}`). Only these
    /// witnesses count when a peer node is judged unreachable by every node
    /// that has it as a peer (two or more of them); what a node's heartbeat
    /// says it watches never does. Empty: a peer node is a node problem
    /// only when it is itself silent (offline).
    pub topology: BTreeMap<String, Vec<String>>,
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
            topology: BTreeMap::new(),
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
    /// Start the next window as soon as one ends instead of once per
    /// monitor interval: continuous probing (`count` probes every window),
    /// so a peer cut off is found unreachable within about
    /// `2 × ((count − 1) × interval + timeout)` seconds of the cut (one
    /// window more when a command discards the window in progress),
    /// whatever the monitor interval.
    pub back_to_back: bool,
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
            back_to_back: false,
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

    /// The witnesses of each peer node, from [`MeshConfig::topology`]: peer
    /// → the nodes that have a tunnel to it. Names that are not valid node
    /// names are left out (`config check` reports them).
    pub fn witnesses(&self) -> BTreeMap<NodeName, BTreeSet<NodeName>> {
        let mut out: BTreeMap<NodeName, BTreeSet<NodeName>> = BTreeMap::new();
        for (node, peers) in &self.topology {
            let Ok(node) = NodeName::parse(node) else {
                continue;
            };
            for peer in peers {
                if let Ok(peer) = NodeName::parse(peer) {
                    if peer != node {
                        out.entry(peer).or_default().insert(node.clone());
                    }
                }
            }
        }
        out
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

        for (node, peers) in &self.topology {
            let at = format!("mesh.topology.{node}");
            if let Err(e) = NodeName::parse(node) {
                out.push(issue(&at, format!("{node:?} is not a node name: {e}")));
            }
            for (i, peer) in peers.iter().enumerate() {
                match NodeName::parse(peer) {
                    Err(e) => out.push(issue(
                        format!("{at}[{i}]"),
                        format!("{peer:?} is not a node name: {e}"),
                    )),
                    Ok(_) if peer == node => {
                        out.push(issue(format!("{at}[{i}]"), "a node is not its own peer"))
                    }
                    Ok(_) => {}
                }
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
                        format!("{} must be absolute, without '..'", c.escaped()),
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
                            format!("{} must be absolute", p.escaped()),
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
                        format!("{} must be absolute", p.escaped()),
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

    /// The (path, message) of every issue `check_fields` raises.
    fn issues(m: &MeshConfig) -> Vec<(String, String)> {
        m.check_fields()
            .into_iter()
            .map(|i| (i.path, i.message))
            .collect()
    }

    /// The key paths of every issue `check_fields` raises.
    fn paths(m: &MeshConfig) -> Vec<String> {
        issues(m).into_iter().map(|(p, _)| p).collect()
    }

    fn with(f: impl FnOnce(&mut MeshConfig)) -> MeshConfig {
        let mut m = MeshConfig::default();
        f(&mut m);
        m
    }

    /// One interface `wg0` and one peer `lyra` reached through it.
    fn with_peer(f: impl FnOnce(&mut MeshPeer)) -> MeshConfig {
        let mut m = MeshConfig {
            interfaces: vec![MeshInterface::named("wg0")],
            ..MeshConfig::default()
        };
        let mut p = MeshPeer {
            name: "lyra".into(),
            interface: "wg0".into(),
            ..MeshPeer::default()
        };
        f(&mut p);
        m.peers.push(p);
        m
    }

    /// A peer whose failover is valid but for what `f` changes.
    fn with_failover(f: impl FnOnce(&mut FailoverConfig)) -> MeshConfig {
        let mut fo = FailoverConfig {
            networks: vec!["192.0.2.7/32".into()],
            primary: RouteVia {
                gateway: Some("198.51.100.1".parse().unwrap()),
                dev: Some("eth0".into()),
            },
            backup: RouteVia {
                gateway: Some("203.0.113.1".parse().unwrap()),
                dev: Some("eth1".into()),
            },
            ..FailoverConfig::default()
        };
        f(&mut fo);
        with_peer(|p| p.failover = Some(fo))
    }

    #[test]
    fn defaults_and_helpers_are_clean() {
        assert!(paths(&MeshConfig::default()).is_empty());
        assert!(paths(&with_peer(|_| {})).is_empty());
        assert!(paths(&with_failover(|_| {})).is_empty());
    }

    #[test]
    fn positive_fields_reject_zero_negative_and_infinite() {
        for (key, set) in [
            (
                "mesh.stale_after",
                (|m: &mut MeshConfig, v| m.stale_after = v) as fn(&mut MeshConfig, f64),
            ),
            ("mesh.command_timeout", |m, v| m.command_timeout = v),
            ("mesh.probe.timeout", |m, v| m.probe.timeout = v),
            ("mesh.probe.degraded_rtt_ms", |m, v| {
                m.probe.degraded_rtt_ms = v
            }),
        ] {
            for bad in [0.0, -1.0, f64::INFINITY, f64::NAN] {
                assert_eq!(paths(&with(|m| set(m, bad))), [key], "{key} = {bad}");
            }
            assert!(paths(&with(|m| set(m, 0.001))).is_empty(), "{key} = 0.001");
        }
        let got = issues(&with(|m| m.stale_after = 0.0));
        assert_eq!(got[0].1, "must be a positive number, got 0");
    }

    #[test]
    fn non_negative_fields_accept_zero_and_reject_negative_or_infinite() {
        for (key, set) in [
            (
                "mesh.reconnect_delay_seconds",
                (|m: &mut MeshConfig, v| m.reconnect_delay_seconds = v) as fn(&mut MeshConfig, f64),
            ),
            ("mesh.for", |m, v| m.for_ = v),
            ("mesh.cooldown", |m, v| m.cooldown = v),
            ("mesh.settle_seconds", |m, v| m.settle_seconds = v),
            ("mesh.probe.interval", |m, v| m.probe.interval = v),
        ] {
            for bad in [-0.5, f64::INFINITY, f64::NAN] {
                assert_eq!(paths(&with(|m| set(m, bad))), [key], "{key} = {bad}");
            }
            for ok in [0.0, 2.5] {
                assert!(paths(&with(|m| set(m, ok))).is_empty(), "{key} = {ok}");
            }
        }
        let got = issues(&with(|m| m.cooldown = -0.5));
        assert_eq!(got[0].1, "must be zero or more, got -0.5");
    }

    #[test]
    fn counts_and_percentages_have_exact_bounds() {
        assert_eq!(
            paths(&with(|m| m.reconnect_attempts = 0)),
            ["mesh.reconnect_attempts"]
        );
        assert!(paths(&with(|m| m.reconnect_attempts = 1)).is_empty());
        for bad in [0, 101] {
            assert_eq!(paths(&with(|m| m.probe.count = bad)), ["mesh.probe.count"]);
        }
        for ok in [1, 100] {
            assert!(paths(&with(|m| m.probe.count = ok)).is_empty());
        }
        for bad in [-1.0, 100.5, 150.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                paths(&with(|m| m.probe.degraded_loss_percent = bad)),
                ["mesh.probe.degraded_loss_percent"],
                "{bad}"
            );
        }
        for ok in [0.0, 100.0] {
            assert!(paths(&with(|m| m.probe.degraded_loss_percent = ok)).is_empty());
        }
    }

    #[test]
    fn tcp_probe_needs_a_port_here_or_on_every_peer() {
        let tcp = |probe_port: Option<u16>, peer_port: Option<u16>| {
            let mut m = with_peer(|p| p.tcp_port = peer_port);
            m.probe.method = ProbeMethod::Tcp;
            m.probe.tcp_port = probe_port;
            paths(&m)
        };
        assert_eq!(tcp(None, None), ["mesh.probe.tcp_port"]);
        // A port on the probe, or on every peer, is enough.
        assert!(tcp(Some(22), None).is_empty());
        assert!(tcp(None, Some(22)).is_empty());
        // Without peers there is nothing to probe.
        let mut m = MeshConfig::default();
        m.probe.method = ProbeMethod::Tcp;
        assert!(paths(&m).is_empty());
        // Other methods need no port.
        for method in [ProbeMethod::Auto, ProbeMethod::Icmp] {
            let mut m = with_peer(|_| {});
            m.probe.method = method;
            assert!(paths(&m).is_empty(), "{method:?}");
        }
    }

    #[test]
    fn tools_must_be_programs() {
        for (key, set) in [
            (
                "mesh.tools.wg",
                (|t: &mut MeshTools, v: &str| t.wg = v.into()) as fn(&mut MeshTools, &str),
            ),
            ("mesh.tools.wg_quick", |t, v| t.wg_quick = v.into()),
            ("mesh.tools.ip", |t, v| t.ip = v.into()),
            ("mesh.tools.systemctl", |t, v| t.systemctl = v.into()),
        ] {
            for bad in ["", "-x", "w g", "wg\t"] {
                let got = issues(&with(|m| set(&mut m.tools, bad)));
                assert_eq!(got.len(), 1, "{key} = {bad:?}: {got:?}");
                assert_eq!(got[0].0, key);
                assert_eq!(got[0].1, format!("{bad:?} is not a program"));
            }
            assert!(paths(&with(|m| set(&mut m.tools, "/usr/local/bin/t-1"))).is_empty());
        }
    }

    #[test]
    fn interface_names_are_checked_and_unique() {
        let m = with(|m| {
            m.interfaces = vec![
                MeshInterface::named("wg0"),
                MeshInterface::named("wg1"),
                MeshInterface::named("wg0"),
            ]
        });
        let got = issues(&m);
        assert_eq!(
            got,
            [(
                "mesh.interfaces[2].name".to_string(),
                "wg0 is named twice".to_string()
            )]
        );
    }

    #[test]
    fn config_path_is_absolute_without_dots_and_named_for_wg_quick() {
        let itf = |path: &str, restart: RestartMethod| {
            paths(&with(|m| {
                m.interfaces = vec![MeshInterface {
                    config_path: Some(PathBuf::from(path)),
                    restart,
                    ..MeshInterface::named("wg0")
                }]
            }))
        };
        let at = "mesh.interfaces[0].config_path";
        assert!(itf("/etc/wireguard/wg0.conf", RestartMethod::WgQuick).is_empty());
        assert_eq!(itf("wg0.conf", RestartMethod::WgQuick), [at]);
        assert_eq!(itf("etc/wireguard/wg0.conf", RestartMethod::Systemd), [at]);
        assert_eq!(
            itf("/etc/wireguard/../wg0.conf", RestartMethod::WgQuick),
            [at]
        );
        assert_eq!(itf("/etc/../etc/wg0.conf", RestartMethod::Systemd), [at]);
        // wg-quick names the interface after the file; the others do not care.
        assert_eq!(
            itf("/etc/wireguard/other.conf", RestartMethod::WgQuick),
            [at]
        );
        assert!(itf("/etc/wireguard/other.conf", RestartMethod::Systemd).is_empty());
        assert!(itf("/etc/wireguard/other.conf", RestartMethod::Command)
            .iter()
            .all(|p| p != at));
    }

    #[test]
    fn template_and_private_key_file_must_be_absolute() {
        for (key, set) in [
            (
                "mesh.interfaces[0].template",
                (|i: &mut MeshInterface, p: PathBuf| i.template = Some(p))
                    as fn(&mut MeshInterface, PathBuf),
            ),
            ("mesh.interfaces[0].private_key_file", |i, p| {
                i.private_key_file = Some(p)
            }),
        ] {
            let one = |p: &str| {
                let mut itf = MeshInterface::named("wg0");
                set(&mut itf, PathBuf::from(p));
                paths(&with(|m| m.interfaces = vec![itf]))
            };
            assert_eq!(one("wg0.key"), [key]);
            assert!(one("/etc/wireguard/wg0.key").is_empty());
        }
    }

    #[test]
    fn restart_command_and_systemd_unit_are_checked() {
        let itf = |restart: RestartMethod, unit: Option<&str>, cmd: &[&str]| {
            issues(&with(|m| {
                m.interfaces = vec![MeshInterface {
                    restart,
                    unit: unit.map(str::to_string),
                    restart_command: strings(cmd),
                    ..MeshInterface::named("wg0")
                }]
            }))
        };
        let at = |k: &str| format!("mesh.interfaces[0].{k}");
        assert_eq!(
            itf(RestartMethod::Command, None, &[])[0].0,
            at("restart_command")
        );
        assert!(itf(RestartMethod::Command, None, &["/usr/bin/up"]).is_empty());
        // Only `restart: command` needs a command.
        assert!(itf(RestartMethod::WgQuick, None, &[]).is_empty());
        assert!(itf(RestartMethod::Systemd, None, &[]).is_empty());
        for bad in [
            "",
            "-x.service",
            "wg 0.service",
            "wg0\u{1}.service",
            "wg0\n",
        ] {
            assert_eq!(
                itf(RestartMethod::Systemd, Some(bad), &[]),
                [(at("unit"), format!("{bad:?} is not a unit name"))],
                "{bad:?}"
            );
        }
        assert!(itf(RestartMethod::Systemd, Some("wg-mesh@wg0.service"), &[]).is_empty());
        // The unit is only used (and checked) by `restart: systemd`.
        assert!(itf(RestartMethod::WgQuick, Some(""), &[]).is_empty());
    }

    #[test]
    fn peer_names_are_unique_across_interfaces_and_peers() {
        let m = with_peer(|p| p.name = "wg0".into());
        assert_eq!(
            issues(&m),
            [(
                "mesh.peers[0].name".to_string(),
                "wg0 is already an interface or peer name".to_string()
            )]
        );
        let mut m = with_peer(|_| {});
        m.peers.push(m.peers[0].clone());
        assert_eq!(paths(&m), ["mesh.peers[1].name"]);
        m.peers[1].name = "vega".into();
        assert!(paths(&m).is_empty());
    }

    #[test]
    fn topology_names_nodes_that_are_not_their_own_peers() {
        let mut m = MeshConfig::default();
        m.topology
            .insert("nova".into(), vec!["lyra".into(), "nova".into()]);
        m.topology.insert("bad name".into(), vec!["lyra".into()]);
        m.topology.insert("lyra".into(), vec!["no/slash".into()]);
        assert_eq!(
            paths(&m),
            [
                "mesh.topology.bad name",
                "mesh.topology.lyra[0]",
                "mesh.topology.nova[1]"
            ]
        );
        let w = m.witnesses();
        let lyra = NodeName::parse("lyra").unwrap();
        assert_eq!(
            w[&lyra].iter().map(NodeName::as_str).collect::<Vec<_>>(),
            ["nova"]
        );
    }

    #[test]
    fn peer_keys_and_files_are_checked() {
        assert!(paths(&with_peer(|p| p.public_key = Some(KEY.into()))).is_empty());
        assert_eq!(
            paths(&with_peer(|p| p.public_key = Some(KEY[1..].into()))),
            ["mesh.peers[0].public_key"]
        );
        assert!(paths(&with_peer(|p| {
            p.preshared_key_file = Some("/etc/wireguard/lyra.psk".into())
        }))
        .is_empty());
        assert_eq!(
            paths(&with_peer(
                |p| p.preshared_key_file = Some("lyra.psk".into())
            )),
            ["mesh.peers[0].preshared_key_file"]
        );
    }

    #[test]
    fn route_via_is_empty_only_without_gateway_and_dev() {
        let gw = Some("198.51.100.1".parse().unwrap());
        assert!(RouteVia::default().is_empty());
        assert!(!RouteVia {
            gateway: gw,
            dev: None
        }
        .is_empty());
        assert!(!RouteVia {
            gateway: None,
            dev: Some("eth0".into())
        }
        .is_empty());
        // A gateway alone, or a dev alone, is a path.
        let m = with_failover(|f| {
            f.primary.dev = None;
            f.backup.gateway = None;
        });
        assert!(paths(&m).is_empty(), "{:?}", issues(&m));
    }

    #[test]
    fn failover_gateways_match_the_networks_family() {
        let at = "mesh.peers[0].failover";
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let m = with_failover(|f| f.primary.gateway = Some(v6));
        assert_eq!(
            issues(&m),
            [(
                format!("{at}.primary.gateway"),
                "is not of the networks' address family".to_string()
            )]
        );
        // IPv6 networks with IPv6 gateways are fine.
        let m = with_failover(|f| {
            f.networks = vec!["2001:db8:1::/48".into()];
            f.primary.gateway = Some(v6);
            f.backup.gateway = Some("2001:db8::2".parse().unwrap());
        });
        assert!(paths(&m).is_empty(), "{:?}", issues(&m));
        // Mixed networks are one error, not one per gateway.
        let m = with_failover(|f| f.networks.push("2001:db8:1::/48".into()));
        assert_eq!(
            issues(&m),
            [(
                format!("{at}.networks"),
                "mixes IPv4 and IPv6; use one peer entry per family".to_string()
            )]
        );
        // Without a valid network there is no family to compare with.
        let m = with_failover(|f| f.networks = vec!["nope".into()]);
        assert_eq!(paths(&m), [format!("{at}.networks[0]")]);
    }

    #[test]
    fn failover_paths_differ_and_can_be_checked() {
        let at = "mesh.peers[0].failover";
        let m = with_failover(|f| f.backup = f.primary.clone());
        assert_eq!(
            issues(&m),
            [(
                format!("{at}.backup"),
                "is the same path as primary".to_string()
            )]
        );
        // Two empty paths are each missing, not the same path.
        let m = with_failover(|f| {
            f.primary = RouteVia::default();
            f.backup = RouteVia::default();
            f.check_address = Some("10.99.0.2".parse().unwrap());
        });
        assert_eq!(
            issues(&m),
            [
                (
                    format!("{at}.primary"),
                    "needs a gateway or a dev".to_string()
                ),
                (
                    format!("{at}.backup"),
                    "needs a gateway or a dev".to_string()
                ),
            ]
        );
        // A primary without gateway needs an address to check it with.
        let m = with_failover(|f| f.primary.gateway = None);
        assert_eq!(paths(&m), [format!("{at}.check_address")]);
        let m = with_failover(|f| {
            f.primary.gateway = None;
            f.check_address = Some("10.99.0.2".parse().unwrap());
        });
        assert!(paths(&m).is_empty());
        let m = with_failover(|f| f.check_address = Some("10.99.0.2".parse().unwrap()));
        assert!(paths(&m).is_empty());
        // hold_seconds may be zero, not negative.
        assert!(paths(&with_failover(|f| f.hold_seconds = 0.0)).is_empty());
        assert_eq!(
            paths(&with_failover(|f| f.hold_seconds = -1.0)),
            [format!("{at}.hold_seconds")]
        );
    }

    #[test]
    fn an_interface_is_a_name_or_a_mapping() {
        let cfg =
            Config::from_yaml("mesh:\n  interfaces: [wg0, {name: wg1, mtu: 1380}]\n").unwrap();
        assert_eq!(cfg.mesh.interfaces[0], MeshInterface::named("wg0"));
        assert_eq!(cfg.mesh.interfaces[1].name, "wg1");
        assert_eq!(cfg.mesh.interfaces[1].mtu, Some(1380));
        let errs = Config::from_yaml("mesh:\n  interfaces: [5]\n").unwrap_err();
        assert!(
            errs.iter().any(|e| e.path.starts_with("mesh.interfaces")
                && e.message
                    .contains("expected an interface name or a mapping with `name`")),
            "{errs:?}"
        );
    }
}
