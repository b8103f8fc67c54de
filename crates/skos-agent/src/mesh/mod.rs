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
//!
//! `mod.rs` holds [`MeshHealer`] and what it remembers; `sense.rs` reads and
//! judges interfaces, peers and routes, `alerts.rs` words the alerts,
//! `command.rs` carries out commands and `jobs.rs` is what background jobs
//! share with sensing.

pub mod actions;
mod alerts;
mod command;
mod error;
pub mod exec;
pub mod iproute;
mod jobs;
pub mod linkwatch;
pub mod probe;
mod sense;
pub mod template;
pub mod wg;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use skos_core::config::{Config, LevelHold, MeshConfig, Thresholds};
use skos_core::level::{LevelRules, LevelTracker};
use skos_core::protocol::{Alert, Command, Heartbeat};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

pub use error::MeshError;

use crate::antibody::{Antibody, Execution, Precondition};
use crate::offloop::{Reader, FIRST_LOOK};
use iproute::Link;
use jobs::Jobs;
use probe::ProbeReport;

pub const AGENT_TYPE: &str = skos_core::catalogue::Executor::MeshHealer.as_str();

/// The actions this antibody carries out (its entries in the catalogue).
pub fn handles(action: &str) -> bool {
    skos_core::catalogue::Executor::MeshHealer.handles(action)
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
    /// The reading from the last links read, before probes and judging.
    base: Option<PeerReading>,
    /// The last window of probes: `None` when the peer has no address (or
    /// none was made yet), else its report or why none could be made.
    probe: Option<Result<ProbeReport, String>>,
    /// The primary path's last check, while failed over.
    primary_check: Option<ProbeReport>,
    /// `base` with the probes, judged.
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
    /// The agent loop's reads of links, dumps and routes, off the loop.
    reader: Reader<sense::MeshRead>,
    /// The agent loop's probe windows, off the loop and apart from the
    /// links (a dead peer's window never delays a look at the links).
    prober: Reader<Vec<sense::Probed>>,
    /// Link changes heard from the kernel (started on the first look).
    link_watch: Option<linkwatch::LinkWatch>,
    link_watch_tried: bool,
    /// A link changed while a look was in progress: look again once it
    /// arrives.
    look_again: bool,
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
        let reader = Reader::new(
            "mesh",
            "ip, wg and routes of the mesh",
            Duration::from_secs_f64(m.command_timeout.max(m.probe.timeout)),
        );
        // A window: `count` probes `interval` apart, the last waited for
        // `timeout`.
        let window =
            f64::from(m.probe.count.saturating_sub(1)) * m.probe.interval + m.probe.timeout;
        let prober = Reader::new(
            "mesh probes",
            "probes of the mesh's peers",
            Duration::from_secs_f64(window.max(0.0) + 1.0),
        )
        .notify_on(reader.arrivals());
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
            // A pass runs `ip` and `wg` per interface (and, after a job,
            // the probes): past the time one program may take, it is slow.
            reader,
            prober,
            link_watch: None,
            link_watch_tried: false,
            look_again: false,
            said_empty: false,
            said_no_permission: false,
        }
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
}

impl Antibody for MeshHealer {
    fn name(&self) -> &'static str {
        AGENT_TYPE
    }

    fn handles(&self, action: &str) -> bool {
        handles(action)
    }

    /// Judges what arrived and asks for the next read, off the loop (the
    /// first look waits up to [`FIRST_LOOK`] for it).
    fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        if !self.watches_anything() {
            return Vec::new();
        }
        if !self.link_watch_tried {
            self.link_watch_tried = true;
            match linkwatch::LinkWatch::start(self.reader.arrivals()) {
                Ok(w) => self.link_watch = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "mesh healer: link changes not heard; links are read every monitor interval only")
                }
            }
        }
        let mut alerts = Antibody::judge(self, now);
        let (cfg, busy) = (self.cfg.clone(), self.busy_now());
        let waited = self
            .reader
            .look(move || sense::read_links(&cfg, busy, chrono::Utc::now()));
        self.probe();
        if waited {
            alerts.extend(Antibody::judge(self, now));
        }
        alerts
    }

    fn arrivals(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.reader.arrivals())
    }

    /// Judges the links and the probes that arrived; with
    /// `probe.back_to_back`, the next window starts as this one is judged.
    fn judge(&mut self, now: Timestamp) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if let Some(read) = self.reader.take() {
            alerts.extend(self.apply(read, now));
        }
        if let Some(probes) = self.prober.take() {
            alerts.extend(self.apply_probes(probes, now));
        }
        // Also after a window a command discarded (it arrives, and gives
        // nothing): the next starts all the same.
        if self.cfg.probe.back_to_back {
            self.probe();
        }
        // A link changed (a tunnel's device gone, an interface set down):
        // look at the links now, not at the next monitor interval.
        self.look_again |= self.link_watch.as_ref().is_some_and(|w| w.take());
        if self.look_again {
            let (cfg, busy) = (self.cfg.clone(), self.busy_now());
            self.look_again = !self
                .reader
                .ask(move || sense::read_links(&cfg, busy, chrono::Utc::now()));
        }
        alerts
    }

    fn report(&self, hb: &mut Heartbeat) {
        hb.metadata.insert("mesh".into(), self.metadata());
        self.reader.report(hb);
        self.prober.report(hb);
    }

    /// After a job: the state it left, read now (at most a second).
    fn refresh(&mut self, now: Timestamp) -> Vec<Alert> {
        if !self.watches_anything() {
            return Vec::new();
        }
        let (cfg, busy) = (self.cfg.clone(), self.busy_now());
        match self.reader.read_fresh(FIRST_LOOK, move || {
            sense::read(&cfg, busy, chrono::Utc::now())
        }) {
            Some(read) => self.apply(read, now),
            None => Vec::new(),
        }
    }

    fn execute(&mut self, cmd: &Command) -> Execution {
        // A read in progress shows the mesh from before this command.
        self.reader.invalidate();
        self.prober.invalidate();
        MeshHealer::execute(self, cmd)
    }

    fn precondition(&self, problem: &str, level: f64) -> Precondition {
        MeshHealer::precondition(self, problem, level)
    }
}

/// The longest one window of probes takes:
/// `(count − 1) × interval + timeout` (a bad configuration's negative or
/// non-finite values count as 0).
pub fn window_span(p: &skos_core::config::ProbeConfig) -> Duration {
    let secs = |v: f64| Duration::try_from_secs_f64(v).unwrap_or_default();
    secs(p.interval).saturating_mul(p.count.saturating_sub(1)) + secs(p.timeout)
}

impl MeshHealer {
    /// Start a window of probes off the loop, unless one is in progress
    /// or no peer has an address. Back to back, a window lasts its whole
    /// span ([`window_span`]) even when every probe was answered sooner:
    /// otherwise a window of one probe (or probes 0 s apart) answered in
    /// a fraction of a millisecond is followed by the next at once, a
    /// flood of probes at every peer and a loop never idle.
    fn probe(&mut self) {
        if !self.cfg.peers.iter().any(|p| p.address.is_some()) {
            return;
        }
        let (cfg, failed_over) = (self.cfg.clone(), self.failed_over());
        let least = if cfg.probe.back_to_back {
            window_span(&cfg.probe)
        } else {
            Duration::ZERO
        };
        self.prober.ask(move || {
            let start = std::time::Instant::now();
            let probed = sense::read_probes(&cfg, &failed_over);
            if let Some(rest) = least.checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
            probed
        });
    }

    /// Whether `problem` (`mesh:<interface or peer>`) is still at `level`
    /// (a mesh health level: 1 degraded, 2 down) by its last judged
    /// reading, as `metadata.mesh` shows it: gone once its level is below
    /// `level` (the tunnel is up again, the peer answers).
    /// [`Precondition::Unknown`] for another problem, or one not judged.
    pub fn precondition(&self, problem: &str, level: f64) -> Precondition {
        let Some(name) = problem.strip_prefix(skos_core::events::MESH_PREFIX) else {
            return Precondition::Unknown;
        };
        let reading = self
            .ifaces
            .get(name)
            .and_then(|st| st.last.as_ref())
            .filter(|r| r.judged)
            .map(|r| r.level)
            .or_else(|| {
                self.peers
                    .get(name)
                    .and_then(|st| st.last.as_ref())
                    .filter(|r| r.state != "unknown")
                    .map(|r| r.level)
            });
        match reading.map(f64::from) {
            None => Precondition::Unknown,
            Some(r) if r < level => Precondition::Gone {
                reading: r,
                source: problem.to_string(),
            },
            Some(_) => Precondition::Holds,
        }
    }
}
