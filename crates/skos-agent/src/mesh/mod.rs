//! The mesh healer antibody: WireGuard tunnels and peer reachability.
//!
//! Senses, for every configured interface, whether it exists, is up and is
//! readable by `wg` (`wg show <if> dump`, parsed by [`wg::parse_dump`]),
//! and, for every configured peer, how long ago it last did a handshake or
//! sent data, and whether its address answers ([`probe`]: ICMP echo, else
//! TCP connect). Alerts of kind `mesh` carry `details.event`
//! (`tunnel_down`, `peer_unreachable`, `peer_degraded`, and on recovery the
//! event that cleared), `details.sensor` (the interface or peer name, so
//! the problem is `mesh:<name>`) and the evidence. Heartbeats carry each
//! one's level under `metadata.mesh` (0 healthy, 1 degraded or stale, 2
//! down), which the coordinator verifies fixes by.
//!
//! Carries out `restart_wireguard`, `regenerate_config`, `ping_peer` and
//! `failover_route` ([`actions`]) on configured interfaces and peers only,
//! and switches a failed-over route back once its primary path has
//! answered for the hold time.
//!
//! Programs run: `ip`, `wg`, `wg-quick`, `systemctl` (names configurable
//! under `mesh.tools`) and a configured restart command; argv only.

pub mod actions;
mod error;
pub mod exec;
pub mod iproute;
pub mod probe;
pub mod template;
pub mod wg;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use skos_core::config::{Config, LevelHold, MeshConfig, MeshPeer, Thresholds};
use skos_core::level::{secs, LevelRules, LevelTracker, Report};
use skos_core::protocol::{Alert, AlertKind, Command, Heartbeat, ResultStatus, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

pub use error::MeshError;

use crate::antibody::{Antibody, Execution};
use crate::Outcome;
use iproute::Link;
use probe::ProbeReport;

pub const AGENT_TYPE: &str = skos_core::catalogue::Executor::MeshHealer.as_str();

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    skos_core::catalogue::Executor::MeshHealer.handles(action)
}

/// What background jobs and `sense` share: interfaces being restarted are
/// not judged, and their peers get a settling time afterwards.
#[derive(Debug, Default)]
struct Jobs {
    busy: BTreeSet<String>,
    settle_until: BTreeMap<String, Timestamp>,
}

fn lock(j: &Mutex<Jobs>) -> MutexGuard<'_, Jobs> {
    j.lock().unwrap_or_else(|e| e.into_inner())
}

/// An interface being restarted: released (with a settling time) when the
/// job ends, also if it panics or is never run.
struct Busy {
    jobs: Arc<Mutex<Jobs>>,
    name: String,
    settle: f64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut j = lock(&self.jobs);
        j.busy.remove(&self.name);
        j.settle_until
            .insert(self.name.clone(), chrono::Utc::now() + secs(self.settle));
    }
}

/// One interface as last sensed.
#[derive(Debug, Clone)]
struct IfaceReading {
    /// 0 up with a fresh peer, 1 up but every peer stale, 2 down.
    level: u8,
    state: &'static str,
    reason: Option<String>,
    link: Option<Link>,
    dump: Option<wg::Dump>,
    /// False when it could not be read for lack of permission: nothing is
    /// known, so nothing is reported (no reading is invented).
    judged: bool,
}

#[derive(Debug, Default)]
struct IfaceState {
    tracker: LevelTracker,
    last: Option<IfaceReading>,
}

/// One peer as last sensed.
#[derive(Debug, Clone, Default)]
struct PeerReading {
    level: u8,
    state: &'static str,
    /// Whether this reading counts (not while its interface is down,
    /// being restarted or settling).
    judged: bool,
    handshake_age: Option<f64>,
    activity_age: Option<f64>,
    rx_bytes: Option<u64>,
    tx_bytes: Option<u64>,
    endpoint: Option<String>,
    probe: Option<ProbeReport>,
    probe_error: Option<String>,
    route: Option<&'static str>,
    primary_check: Option<ProbeReport>,
}

#[derive(Debug, Default)]
struct PeerState {
    tracker: LevelTracker,
    last_rx: Option<u64>,
    /// When the peer was last seen alive (handshake or data received);
    /// starts at the agent's start, a grace period for the first handshake.
    last_activity: Option<Timestamp>,
    primary_ok_since: Option<Timestamp>,
    last: Option<PeerReading>,
}

pub struct MeshHealer {
    cfg: Arc<MeshConfig>,
    node: NodeName,
    agent_id: String,
    rules: LevelRules,
    ifaces: BTreeMap<String, IfaceState>,
    peers: BTreeMap<String, PeerState>,
    jobs: Arc<Mutex<Jobs>>,
    said_empty: bool,
    said_no_permission: bool,
}

fn age(now: Timestamp, then: Timestamp) -> f64 {
    (now - then).num_milliseconds() as f64 / 1000.0
}

fn unix(secs: i64) -> Option<Timestamp> {
    chrono::DateTime::from_timestamp(secs, 0)
}

impl MeshHealer {
    pub fn new(cfg: &Config) -> Self {
        let m = &cfg.mesh;
        let now = chrono::Utc::now();
        Self {
            node: cfg.node.name.clone(),
            agent_id: format!("mesh-healer-{}", cfg.node.name),
            rules: LevelRules {
                thresholds: Thresholds {
                    warning: 0.5,
                    critical: 1.5,
                    emergency: 2.5,
                },
                hysteresis: 0.0,
                hold_up: LevelHold {
                    warning: m.for_,
                    critical: m.for_,
                    emergency: m.for_,
                },
                hold_down: 0.0,
                cooldown: m.cooldown,
            },
            ifaces: m
                .interfaces
                .iter()
                .map(|i| (i.name.clone(), IfaceState::default()))
                .collect(),
            peers: m
                .peers
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        PeerState {
                            last_activity: Some(now),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            cfg: Arc::new(m.clone()),
            jobs: Arc::new(Mutex::new(Jobs::default())),
            said_empty: false,
            said_no_permission: false,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.command_timeout)
    }

    fn read_interface(&self, name: &str, configured_keys: &[&str]) -> IfaceReading {
        let down = |state, reason: String, link| IfaceReading {
            level: 2,
            state,
            reason: Some(reason),
            link,
            dump: None,
            judged: true,
        };
        let link = match iproute::link(&self.cfg.tools.ip, name, self.timeout()) {
            Ok(Some(l)) => l,
            Ok(None) => return down("missing", format!("no link named {name}"), None),
            Err(e) => return down("unreadable", e.to_string(), None),
        };
        if !link.up {
            return down(
                "down",
                format!("{name} is administratively down"),
                Some(link),
            );
        }
        let dump = match actions::read_dump(&self.cfg, name) {
            Ok(d) => d,
            Err(e) if e.is_permission_denied() => {
                if !self.said_no_permission {
                    tracing::warn!(interface = %name, error = %e, "cannot read WireGuard state: the agent needs CAP_NET_ADMIN (or root); the interface and its peers are not judged");
                }
                return IfaceReading {
                    state: "no_permission",
                    judged: false,
                    ..down("no_permission", e.to_string(), Some(link))
                };
            }
            Err(e) => return down("unreadable", e.to_string(), Some(link)),
        };
        let missing: Vec<&str> = configured_keys
            .iter()
            .copied()
            .filter(|k| dump.peer(k).is_none())
            .collect();
        if !missing.is_empty() {
            return IfaceReading {
                level: 2,
                state: "misconfigured",
                reason: Some(format!(
                    "configured peer keys not on {name}: {}",
                    missing.join(", ")
                )),
                link: Some(link),
                dump: Some(dump),
                judged: true,
            };
        }
        IfaceReading {
            level: 0,
            state: "up",
            reason: None,
            link: Some(link),
            dump: Some(dump),
            judged: true,
        }
    }

    /// Read every source and return the alerts to raise.
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        if self.cfg.interfaces.is_empty() {
            if !self.said_empty {
                tracing::warn!(node = %self.node, "mesh healer has no interfaces configured (mesh.interfaces): nothing to watch");
                self.said_empty = true;
            }
            return Vec::new();
        }
        let (busy, settling): (BTreeSet<String>, BTreeSet<String>) = {
            let mut j = lock(&self.jobs);
            j.settle_until.retain(|_, until| *until > now);
            (j.busy.clone(), j.settle_until.keys().cloned().collect())
        };
        self.sense_interfaces(&busy);
        self.sense_activity(now, &busy, &settling);
        let failed_over = self.sense_routes();
        self.sense_probes(&failed_over);
        self.judge(now, &busy);
        let mut alerts = self.track(now, &busy);
        alerts.extend(self.fail_back(now));
        alerts
    }

    fn sense_interfaces(&mut self, busy: &BTreeSet<String>) {
        let cfg = self.cfg.clone();
        for itf in &cfg.interfaces {
            if busy.contains(&itf.name) {
                continue;
            }
            let keys: Vec<&str> = cfg
                .peers
                .iter()
                .filter(|p| p.interface == itf.name)
                .filter_map(|p| p.public_key.as_deref())
                .collect();
            let reading = self.read_interface(&itf.name, &keys);
            self.said_no_permission |= !reading.judged;
            if let Some(st) = self.ifaces.get_mut(&itf.name) {
                st.last = Some(reading);
            }
        }
    }

    /// Each peer's handshake and data activity, from its interface's dump.
    fn sense_activity(
        &mut self,
        now: Timestamp,
        busy: &BTreeSet<String>,
        settling: &BTreeSet<String>,
    ) {
        let cfg = self.cfg.clone();
        for p in &cfg.peers {
            let itf = self.ifaces.get(&p.interface).and_then(|s| s.last.clone());
            let Some(st) = self.peers.get_mut(&p.name) else {
                continue;
            };
            let mut r = PeerReading::default();
            let busy_itf = busy.contains(&p.interface);
            let down_itf = itf.as_ref().is_none_or(|i| i.level == 2);
            if down_itf && !busy_itf {
                // No tunnel, no activity: once it is back, only a new
                // handshake or new data counts.
                st.last_activity = None;
            }
            let entry = itf.as_ref().and_then(|i| i.dump.as_ref()).and_then(|d| {
                match p.public_key.as_deref() {
                    Some(k) => d.peer(k).cloned(),
                    None if d.peers.len() == 1 => d.peers.first().cloned(),
                    None => None,
                }
            });
            if let Some(e) = &entry {
                if let Some(h) = e.latest_handshake.and_then(unix) {
                    r.handshake_age = Some(age(now, h).max(0.0));
                    if st.last_activity.is_none_or(|a| h > a) {
                        st.last_activity = Some(h);
                    }
                }
                // Counters restart with a new wireguard-go: only growth counts.
                if st.last_rx.is_some_and(|prev| e.rx_bytes > prev) {
                    st.last_activity = Some(now);
                }
                st.last_rx = Some(e.rx_bytes);
                r.rx_bytes = Some(e.rx_bytes);
                r.tx_bytes = Some(e.tx_bytes);
                r.endpoint = e.endpoint.clone();
            }
            r.activity_age = st.last_activity.map(|a| age(now, a).max(0.0));
            let unknown_itf = itf.as_ref().is_some_and(|i| !i.judged);
            r.judged = !down_itf && !busy_itf && !unknown_itf && !settling.contains(&p.interface);
            r.state = if busy_itf {
                "restarting"
            } else if unknown_itf {
                "unknown"
            } else if down_itf {
                "interface_down"
            } else if !r.judged {
                "settling"
            } else {
                ""
            };
            st.last = Some(r);
        }
    }

    /// Which peers are failed over, read from the routing table (so an
    /// agent restart does not forget).
    fn sense_routes(&mut self) -> BTreeSet<String> {
        let cfg = self.cfg.clone();
        let mut failed_over = BTreeSet::new();
        for p in &cfg.peers {
            let Some(f) = &p.failover else { continue };
            let Some(net) = f.networks.first() else {
                continue;
            };
            let route = match iproute::routes(&cfg.tools.ip, net, self.timeout()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer = %p.name, error = %e, "cannot read the failover route");
                    continue;
                }
            };
            let which = if route.iter().any(|r| r.goes_via(&f.backup)) {
                failed_over.insert(p.name.clone());
                "backup"
            } else if route.iter().any(|r| r.goes_via(&f.primary)) {
                "primary"
            } else {
                "other"
            };
            if let Some(r) = self.peers.get_mut(&p.name).and_then(|s| s.last.as_mut()) {
                r.route = Some(which);
            }
        }
        failed_over
    }

    /// Probe every peer address, and the primary path of failed-over
    /// peers, in parallel.
    fn sense_probes(&mut self, failed_over: &BTreeSet<String>) {
        let cfg = self.cfg.clone();
        let results: Vec<Probed> = std::thread::scope(|s| {
            let handles: Vec<_> = cfg
                .peers
                .iter()
                .map(|p| {
                    let cfg = &cfg;
                    let failed = failed_over.contains(&p.name);
                    s.spawn(move || probe_peer(cfg, p, failed))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for x in results {
            let Some(r) = self.peers.get_mut(&x.name).and_then(|s| s.last.as_mut()) else {
                continue;
            };
            match x.main {
                Some(Ok(rep)) => r.probe = Some(rep),
                Some(Err(e)) => r.probe_error = Some(e.to_string()),
                None => {}
            }
            r.primary_check = x.primary;
        }
    }

    /// Levels: a peer is unreachable when its probes all went unanswered or
    /// it has been silent past `stale_after`, degraded on loss or slowness;
    /// an interface that is up is healthy when one of its peers is fresh.
    fn judge(&mut self, now: Timestamp, busy: &BTreeSet<String>) {
        let cfg = self.cfg.clone();
        let stale_after = cfg.stale_after;
        for p in &cfg.peers {
            let Some(r) = self.peers.get_mut(&p.name).and_then(|s| s.last.as_mut()) else {
                continue;
            };
            let stale = r.activity_age.is_none_or(|a| a > stale_after);
            let lost = r.probe.as_ref().is_some_and(|x| !x.answered());
            let degraded = r.probe.as_ref().is_some_and(|x| {
                x.loss_percent >= cfg.probe.degraded_loss_percent
                    || x.rtt_avg_ms
                        .is_some_and(|ms| ms >= cfg.probe.degraded_rtt_ms)
            });
            r.level = if lost || stale {
                2
            } else if degraded {
                1
            } else {
                0
            };
            if r.state.is_empty() {
                if r.probe.is_none() && r.rx_bytes.is_none() {
                    // Neither a probe nor a dump entry: nothing to judge by.
                    r.judged = false;
                    r.state = "unknown";
                } else {
                    r.state = ["healthy", "degraded", "unreachable"][usize::from(r.level)];
                }
            }
        }
        for itf in &cfg.interfaces {
            let mine: Vec<Option<f64>> = cfg
                .peers
                .iter()
                .filter(|p| p.interface == itf.name)
                .filter_map(|p| self.peers.get(&p.name)?.last.as_ref())
                .map(|r| r.activity_age)
                .collect();
            let Some(reading) = self.ifaces.get_mut(&itf.name).and_then(|s| s.last.as_mut()) else {
                continue;
            };
            if reading.level == 2 || busy.contains(&itf.name) {
                continue;
            }
            let fresh = if mine.is_empty() {
                reading.dump.as_ref().is_none_or(|d| {
                    d.peers.is_empty()
                        || d.peers.iter().any(|x| {
                            x.latest_handshake
                                .and_then(unix)
                                .is_some_and(|h| age(now, h) <= stale_after)
                        })
                })
            } else {
                mine.iter().any(|a| a.is_some_and(|a| a <= stale_after))
            };
            reading.level = if fresh { 0 } else { 1 };
            reading.state = if fresh { "up" } else { "stale" };
            reading.reason =
                (!fresh).then(|| format!("no peer handshake or data within {stale_after} s"));
        }
    }

    /// Feed the levels to the trackers: alerts on changes (after `for`) and
    /// reminders (after `cooldown`). Interfaces alert only on down.
    fn track(&mut self, now: Timestamp, busy: &BTreeSet<String>) -> Vec<Alert> {
        let cfg = self.cfg.clone();
        let mut alerts = Vec::new();
        for itf in &cfg.interfaces {
            if busy.contains(&itf.name) {
                continue;
            }
            let Some(st) = self.ifaces.get_mut(&itf.name) else {
                continue;
            };
            let Some(reading) = st.last.clone().filter(|r| r.judged) else {
                continue;
            };
            let value = if reading.level == 2 { 2.0 } else { 0.0 };
            if let Some(report) = st.tracker.observe(&self.rules, value, now) {
                alerts.push(self.iface_alert(&itf.name, &reading, report, now));
            }
        }
        for p in &cfg.peers {
            let Some(st) = self.peers.get_mut(&p.name) else {
                continue;
            };
            let Some(reading) = st.last.clone().filter(|r| r.judged) else {
                continue;
            };
            if let Some(report) = st
                .tracker
                .observe(&self.rules, f64::from(reading.level), now)
            {
                alerts.push(self.peer_alert(p, &reading, report, now));
            }
        }
        alerts
    }

    /// Switch failed-over routes back once the primary path has answered
    /// for the hold time.
    fn fail_back(&mut self, now: Timestamp) -> Vec<Alert> {
        let cfg = self.cfg.clone();
        let mut alerts = Vec::new();
        for p in &cfg.peers {
            let Some(f) = &p.failover else { continue };
            let Some(st) = self.peers.get_mut(&p.name) else {
                continue;
            };
            let Some(reading) = st.last.clone() else {
                continue;
            };
            let primary_ok = reading.route == Some("backup")
                && reading.primary_check.as_ref().is_some_and(|c| c.answered());
            if !primary_ok {
                st.primary_ok_since = None;
                continue;
            }
            let since = *st.primary_ok_since.get_or_insert(now);
            if age(now, since) < f.hold_seconds {
                continue;
            }
            st.primary_ok_since = None;
            match actions::switch_routes(&cfg, f, &f.primary) {
                Ok(changes) => {
                    tracing::info!(peer = %p.name, networks = ?f.networks, "primary path healthy for the hold time: routes switched back");
                    alerts.push(self.failback_alert(p, f, &reading, changes, now));
                }
                Err((_, e)) => {
                    tracing::warn!(peer = %p.name, error = %e, "could not switch routes back to the primary path");
                }
            }
        }
        alerts
    }

    fn alert(
        &self,
        sensor: &str,
        severity: Severity,
        message: String,
        details: Value,
        now: Timestamp,
    ) -> Alert {
        Alert {
            alert_id: format!(
                "{}-{}-{sensor}-{}",
                self.agent_id,
                now.timestamp_nanos_opt().unwrap_or_default(),
                severity.as_str()
            ),
            agent_id: self.agent_id.clone(),
            kind: AlertKind::Mesh,
            severity,
            node: self.node.clone(),
            message,
            details: match details {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            timestamp: now,
        }
    }

    fn iface_alert(&self, name: &str, r: &IfaceReading, report: Report, now: Timestamp) -> Alert {
        let (severity, previous) = match report {
            Report::Changed { from, to } => (to, from),
            Report::Reminder(s) => (s, s),
        };
        let message = if severity == Severity::Normal {
            format!("WireGuard interface {name} is {} again", r.state)
        } else {
            format!(
                "WireGuard interface {name} is down: {}",
                r.reason.as_deref().unwrap_or(r.state)
            )
        };
        let peers: Vec<Value> = r
            .dump
            .as_ref()
            .map(|d| {
                d.peers
                    .iter()
                    .map(|p| {
                        json!({
                            "public_key": p.public_key, "endpoint": p.endpoint,
                            "latest_handshake_age_seconds": p.latest_handshake.and_then(unix).map(|h| age(now, h)),
                            "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.alert(
            name,
            severity,
            message,
            json!({
                "event": "tunnel_down",
                "sensor": name,
                "interface": name,
                "state": r.state,
                "reason": r.reason,
                "level": r.level,
                "link": r.link,
                "peers": peers,
                "stale_after": self.cfg.stale_after,
                "previous_severity": previous,
                "recovered": severity == Severity::Normal,
                "reminder": matches!(report, Report::Reminder(_)),
            }),
            now,
        )
    }

    fn peer_alert(&self, p: &MeshPeer, r: &PeerReading, report: Report, now: Timestamp) -> Alert {
        let (severity, previous) = match report {
            Report::Changed { from, to } => (to, from),
            Report::Reminder(s) => (s, s),
        };
        let event = match (severity, previous) {
            (Severity::Warning, _) | (Severity::Normal, Severity::Warning) => "peer_degraded",
            _ => "peer_unreachable",
        };
        let target = p.address.map(|a| format!(" ({a})")).unwrap_or_default();
        let evidence = describe_evidence(r, self.cfg.stale_after);
        let message = match severity {
            Severity::Normal => format!("peer {}{target} reachable again: {evidence}", p.name),
            Severity::Warning => format!("peer {}{target} degraded: {evidence}", p.name),
            _ => format!("peer {}{target} unreachable: {evidence}", p.name),
        };
        self.alert(
            &p.name,
            severity,
            message,
            json!({
                "event": event,
                "sensor": p.name,
                "peer": p.name,
                "peer_node": p.node_name(),
                "interface": p.interface,
                "address": p.address,
                "state": r.state,
                "level": r.level,
                "latest_handshake_age_seconds": r.handshake_age,
                "activity_age_seconds": r.activity_age,
                "stale_after": self.cfg.stale_after,
                "rx_bytes": r.rx_bytes,
                "tx_bytes": r.tx_bytes,
                "endpoint": r.endpoint,
                "probe": r.probe,
                "probe_error": r.probe_error,
                "route": r.route,
                "previous_severity": previous,
                "recovered": severity == Severity::Normal,
                "reminder": matches!(report, Report::Reminder(_)),
            }),
            now,
        )
    }

    fn failback_alert(
        &self,
        p: &MeshPeer,
        f: &skos_core::config::FailoverConfig,
        r: &PeerReading,
        changes: Vec<skos_core::protocol::Change>,
        now: Timestamp,
    ) -> Alert {
        self.alert(
            &p.name,
            Severity::Normal,
            format!(
                "routes for peer {} back on the primary path after it answered for {} s",
                p.name, f.hold_seconds
            ),
            json!({
                "event": "route_restored",
                "sensor": p.name,
                "peer": p.name,
                "peer_node": p.node_name(),
                "networks": f.networks,
                "primary_check": r.primary_check,
                "hold_seconds": f.hold_seconds,
                "changes": changes,
            }),
            now,
        )
    }

    /// `metadata.mesh`: every interface and peer with its level.
    pub fn metadata(&self) -> Value {
        let mut interfaces = Map::new();
        for (name, st) in &self.ifaces {
            let Some(r) = &st.last else { continue };
            interfaces.insert(
                name.clone(),
                json!({
                    "state": r.state, "level": r.judged.then_some(r.level), "reason": r.reason,
                    "up": r.link.as_ref().map(|l| l.up),
                    "peers": r.dump.as_ref().map(|d| d.peers.len()),
                }),
            );
        }
        let mut peers = Map::new();
        for p in &self.cfg.peers {
            let Some(r) = self.peers.get(&p.name).and_then(|s| s.last.as_ref()) else {
                continue;
            };
            peers.insert(
                p.name.clone(),
                json!({
                    "node": p.node_name(), "interface": p.interface,
                    "state": r.state, "level": (r.state != "unknown").then_some(r.level),
                    "latest_handshake_age_seconds": r.handshake_age,
                    "activity_age_seconds": r.activity_age,
                    "rx_bytes": r.rx_bytes, "tx_bytes": r.tx_bytes,
                    "loss_percent": r.probe.as_ref().map(|x| x.loss_percent),
                    "rtt_avg_ms": r.probe.as_ref().and_then(|x| x.rtt_avg_ms),
                    "probe": r.probe.as_ref().map(|x| x.method),
                    "route": r.route,
                }),
            );
        }
        json!({"interfaces": interfaces, "peers": peers})
    }

    /// The configured interface or peer a command is about: its
    /// `interface`/`peer` parameter, else its problem (`mesh:<name>`). Only
    /// configured names are accepted.
    fn target(&self, cmd: &Command) -> Result<Target, Outcome> {
        let from_params = ["interface", "peer"]
            .iter()
            .find_map(|k| cmd.parameters.get(*k).and_then(Value::as_str));
        let name =
            from_params.or_else(|| cmd.problem.as_deref().and_then(|p| p.strip_prefix("mesh:")));
        let Some(name) = name else {
            return Err(Outcome::new(
                ResultStatus::Rejected,
                format!("{} names no interface or peer", cmd.action_type),
            ));
        };
        if self.cfg.interface(name).is_some() {
            Ok(Target::Interface(name.to_string()))
        } else if self.cfg.peer(name).is_some() {
            Ok(Target::Peer(name.to_string()))
        } else {
            Err(Outcome::new(
                ResultStatus::Rejected,
                format!(
                    "{:?} is not a configured mesh interface or peer",
                    name.escape_debug().to_string()
                ),
            ))
        }
    }

    pub fn execute(&mut self, cmd: &Command) -> Execution {
        let target = match self.target(cmd) {
            Ok(t) => t,
            Err(o) => return Execution::Done(o),
        };
        let cfg = self.cfg.clone();
        match cmd.action_type.as_str() {
            "restart_wireguard" | "regenerate_config" => {
                let name = match &target {
                    Target::Interface(i) => i.clone(),
                    Target::Peer(p) => cfg.peer(p).map(|p| p.interface.clone()).unwrap_or_default(),
                };
                let Some(itf) = cfg.interface(&name).cloned() else {
                    return Execution::Done(Outcome::new(
                        ResultStatus::Rejected,
                        format!("no configured interface {name}"),
                    ));
                };
                {
                    let mut j = lock(&self.jobs);
                    if !j.busy.insert(name.clone()) {
                        return Execution::Done(Outcome::new(
                            ResultStatus::Rejected,
                            format!("{name} is already being restarted"),
                        ));
                    }
                }
                let busy = Busy {
                    jobs: self.jobs.clone(),
                    name,
                    settle: cfg.settle_seconds,
                };
                let regenerate = cmd.action_type == "regenerate_config";
                Execution::Background(Box::new(move || {
                    let _busy = busy;
                    if regenerate {
                        actions::regenerate(&cfg, &itf)
                    } else {
                        actions::restart(&cfg, &itf)
                    }
                }))
            }
            "ping_peer" => {
                let peers: Vec<MeshPeer> = match &target {
                    Target::Peer(p) => cfg.peer(p).cloned().into_iter().collect(),
                    Target::Interface(i) => cfg
                        .peers
                        .iter()
                        .filter(|p| &p.interface == i)
                        .cloned()
                        .collect(),
                };
                Execution::Background(Box::new(move || actions::ping(&cfg, &peers)))
            }
            "failover_route" => match &target {
                Target::Peer(p) => match cfg.peer(p) {
                    Some(peer) => Execution::Done(actions::failover(&cfg, peer)),
                    None => Execution::Done(Outcome::new(ResultStatus::Rejected, "no such peer")),
                },
                Target::Interface(i) => Execution::Done(Outcome::new(
                    ResultStatus::Unsupported,
                    format!("failover_route needs a peer, not the interface {i}"),
                )),
            },
            other => Execution::Done(Outcome::new(
                ResultStatus::Unsupported,
                format!("{other} is not a mesh action"),
            )),
        }
    }
}

/// What one peer's probes found.
struct Probed {
    name: String,
    /// `None` when the peer has no address to probe.
    main: Option<Result<ProbeReport, probe::ProbeError>>,
    /// The primary path's check, while failed over.
    primary: Option<ProbeReport>,
}

fn probe_peer(cfg: &MeshConfig, p: &MeshPeer, failed_over: bool) -> Probed {
    let main = p
        .address
        .map(|a| probe::probe(a, &actions::probe_opts(cfg, Some(p))));
    let primary = p.failover.as_ref().filter(|_| failed_over).and_then(|f| {
        let to = f.check_address.or(f.primary.gateway)?;
        let mut o = actions::probe_opts(cfg, Some(p));
        o.bind_device = f.primary.dev.clone();
        match probe::probe(to, &o) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(peer = %p.name, error = %e, "cannot check the primary path");
                None
            }
        }
    });
    Probed {
        name: p.name.clone(),
        main,
        primary,
    }
}

enum Target {
    Interface(String),
    Peer(String),
}

fn describe_evidence(r: &PeerReading, stale_after: f64) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &r.probe {
        parts.push(format!(
            "{}/{} {} probes answered{}",
            p.received,
            p.sent,
            p.method,
            p.rtt_avg_ms
                .map(|ms| format!(" ({ms:.1} ms average)"))
                .unwrap_or_default()
        ));
    } else if let Some(e) = &r.probe_error {
        parts.push(format!("not probed: {e}"));
    }
    match r.activity_age {
        Some(a) if a > stale_after => parts.push(format!(
            "no handshake or data for {a:.0} s (stale after {stale_after} s)"
        )),
        Some(a) => parts.push(format!("last handshake or data {a:.0} s ago")),
        None => parts.push("no handshake or data since the tunnel came up".into()),
    }
    parts.join(", ")
}

impl Antibody for MeshHealer {
    fn name(&self) -> &'static str {
        AGENT_TYPE
    }

    fn handles(&self, action: &str) -> bool {
        handles(action)
    }

    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        MeshHealer::sense(self, now)
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.metadata.insert("mesh".into(), self.metadata());
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        MeshHealer::execute(self, cmd)
    }
}
