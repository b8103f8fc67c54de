//! Sensing: every interface's link and `wg` dump, every peer's handshake
//! and data activity, the failover routes and the probes, judged into
//! levels and fed to the trackers; and switching routes back once a
//! primary path has healed.
//!
//! The agent loop reads links (`ip`, `wg`, routes: [`read_links`]) and
//! probes ([`read_probes`]) on two readers of their own: a probe window
//! waiting out a dead peer's timeout never delays the next look at the
//! links, so a tunnel that goes down is seen at the next monitor interval.
//! Each arrival is judged at once with the latest of the other.

use std::collections::BTreeSet;

use skos_core::config::{MeshConfig, MeshPeer};
use skos_core::protocol::Alert;
use skos_core::timefmt::Timestamp;

use super::jobs::lock;
use super::probe::{self, ProbeReport};
use super::{actions, age, iproute, unix, wg, IfaceReading, MeshHealer, PeerReading};

/// One interface's link and dump, the dump's handshakes placed in time
/// at `now` (boringtun prints seconds ago, the kernel Unix seconds).
fn read_interface(
    cfg: &MeshConfig,
    name: &str,
    configured_keys: &[&str],
    now: Timestamp,
) -> IfaceReading {
    let down = |state, reason: String, link| IfaceReading {
        level: 2,
        state,
        reason: Some(reason),
        link,
        dump: None,
        judged: true,
    };
    let timeout = std::time::Duration::from_secs_f64(cfg.command_timeout);
    let link = match iproute::link(&cfg.tools.ip, name, timeout) {
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
    let dump = match actions::read_dump(cfg, name) {
        Ok(mut d) => {
            d.place_handshakes(now.timestamp());
            d
        }
        Err(e) if e.is_permission_denied() => {
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

/// What one pass over the mesh's sources read: taken off the agent loop
/// ([`read`]), judged on it ([`MeshHealer::apply`]).
pub(super) struct MeshRead {
    /// When the pass began.
    at: Timestamp,
    /// The interfaces a job was working on when it began: not read.
    busy: BTreeSet<String>,
    /// Every other configured interface's link and dump.
    ifaces: Vec<(String, IfaceReading)>,
    /// Each failover peer's route as read: over the `backup` path, the
    /// `primary` one, or `other`; peers whose route could not be read are
    /// left out.
    routes: Vec<(String, &'static str)>,
    /// Every peer's probes, and the primary path's check of the peers
    /// failed over; `None` when only the links were read.
    probes: Option<Vec<Probed>>,
}

/// Read every source of the mesh, touching no state: the configured
/// interfaces not in `busy` (link and `wg` dump), the failover routes,
/// then every peer's probes and, for the peers failed over, their primary
/// path, `at` the time the pass began (a handshake printed as seconds
/// ago is placed from it). Bounded by `mesh.command_timeout` per program
/// and the probes' own timeouts.
pub(super) fn read(cfg: &MeshConfig, busy: BTreeSet<String>, at: Timestamp) -> MeshRead {
    let mut r = read_links(cfg, busy, at);
    let failed_over: BTreeSet<String> = r
        .routes
        .iter()
        .filter(|(_, which)| *which == "backup")
        .map(|(name, _)| name.clone())
        .collect();
    r.probes = Some(read_probes(cfg, &failed_over));
    r
}

/// [`read`] without the probes: links, dumps and routes only.
pub(super) fn read_links(cfg: &MeshConfig, busy: BTreeSet<String>, at: Timestamp) -> MeshRead {
    let mut ifaces = Vec::new();
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
        ifaces.push((itf.name.clone(), read_interface(cfg, &itf.name, &keys, at)));
    }
    let routes = read_routes(cfg);
    MeshRead {
        at,
        busy,
        ifaces,
        routes,
        probes: None,
    }
}

/// Which path each failover peer's route takes, read from the routing
/// table (so an agent restart does not forget).
fn read_routes(cfg: &MeshConfig) -> Vec<(String, &'static str)> {
    let timeout = std::time::Duration::from_secs_f64(cfg.command_timeout);
    let mut out = Vec::new();
    for p in &cfg.peers {
        let Some(f) = &p.failover else { continue };
        let Some(net) = f.networks.first() else {
            continue;
        };
        let route = match iproute::routes(&cfg.tools.ip, net, timeout) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %p.name, error = %e, "cannot read the failover route");
                continue;
            }
        };
        let which = if route.iter().any(|r| r.goes_via(&f.backup)) {
            "backup"
        } else if route.iter().any(|r| r.goes_via(&f.primary)) {
            "primary"
        } else {
            "other"
        };
        out.push((p.name.clone(), which));
    }
    out
}

/// Probe every peer address, and the primary path of the peers in
/// `failed_over`, in parallel: one window each, bounded by
/// `(count − 1) × interval + timeout`.
pub(super) fn read_probes(cfg: &MeshConfig, failed_over: &BTreeSet<String>) -> Vec<Probed> {
    std::thread::scope(|s| {
        let handles: Vec<_> = cfg
            .peers
            .iter()
            .map(|p| {
                let failed = failed_over.contains(&p.name);
                s.spawn(move || probe_peer(cfg, p, failed))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

impl MeshHealer {
    /// Whether there is anything to watch (said once when there is not).
    pub(super) fn watches_anything(&mut self) -> bool {
        if self.cfg.interfaces.is_empty() {
            if !self.said_empty {
                tracing::warn!(node = %self.node, "mesh healer has no interfaces configured (mesh.interfaces): nothing to watch");
                self.said_empty = true;
            }
            return false;
        }
        true
    }

    /// The interfaces a background job is working on now.
    pub(super) fn busy_now(&self) -> BTreeSet<String> {
        lock(&self.jobs).busy.clone()
    }

    /// Read every source here and now and return the alerts to raise (the
    /// agent loop reads off the loop instead: [`read`], then
    /// [`MeshHealer::apply`]).
    pub fn sense(&mut self, now: Timestamp) -> Vec<Alert> {
        if !self.watches_anything() {
            return Vec::new();
        }
        let r = read(&self.cfg, self.busy_now(), now);
        self.apply(r, now)
    }

    /// Judge what a pass of [`read`] found: the interfaces and peers'
    /// levels, the alerts to raise, and routes switched back once a
    /// primary path has healed. An interface a job started on since the
    /// pass began is left as it was.
    pub(super) fn apply(&mut self, read: MeshRead, now: Timestamp) -> Vec<Alert> {
        let (mut busy, settling): (BTreeSet<String>, BTreeSet<String>) = {
            let mut j = lock(&self.jobs);
            j.settle_until.retain(|_, until| *until > now);
            (j.busy.clone(), j.settle_until.keys().cloned().collect())
        };
        busy.extend(read.busy.iter().cloned());
        for (name, reading) in read.ifaces {
            if busy.contains(&name) {
                continue;
            }
            if let Some(d) = &reading.dump {
                self.say_rejected_handshakes(&name, d);
            }
            if !reading.judged && !self.said_no_permission {
                tracing::warn!(interface = %name, error = ?reading.reason, "cannot read WireGuard state: the agent needs CAP_NET_ADMIN (or root); the interface and its peers are not judged");
            }
            self.said_no_permission |= !reading.judged;
            if let Some(st) = self.ifaces.get_mut(&name) {
                st.last = Some(reading);
            }
        }
        self.sense_activity(read.at, &busy, &settling);
        for (name, which) in read.routes {
            if let Some(r) = self.peers.get_mut(&name).and_then(|s| s.base.as_mut()) {
                r.route = Some(which);
            }
        }
        if let Some(probes) = read.probes {
            self.keep_probes(probes);
        }
        self.conclude(now, &busy)
    }

    /// Judge a window of probes ([`read_probes`]) with the last links
    /// read: the peers' levels and the alerts to raise.
    pub(super) fn apply_probes(&mut self, probes: Vec<Probed>, now: Timestamp) -> Vec<Alert> {
        let busy = lock(&self.jobs).busy.clone();
        self.keep_probes(probes);
        self.conclude(now, &busy)
    }

    /// The peers whose route takes the backup path, as last read.
    pub(super) fn failed_over(&self) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter(|(_, st)| st.base.as_ref().and_then(|r| r.route) == Some("backup"))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn keep_probes(&mut self, probes: Vec<Probed>) {
        for x in probes {
            let Some(st) = self.peers.get_mut(&x.name) else {
                continue;
            };
            st.probe = x.main.map(|m| m.map_err(|e| e.to_string()));
            st.primary_check = x.primary;
        }
    }

    /// Each peer's reading (its links as last read, its probes as last
    /// made), judged; the alerts to raise, and routes switched back.
    fn conclude(&mut self, now: Timestamp, busy: &BTreeSet<String>) -> Vec<Alert> {
        for st in self.peers.values_mut() {
            st.last = st.base.clone().map(|mut r| {
                match &st.probe {
                    Some(Ok(rep)) => r.probe = Some(rep.clone()),
                    Some(Err(e)) => r.probe_error = Some(e.clone()),
                    None => {}
                }
                r.primary_check = st.primary_check.clone();
                r
            });
        }
        self.judge(now, busy);
        let mut alerts = self.track(now, busy);
        alerts.extend(self.fail_back(now));
        alerts
    }

    /// Warn about a peer's impossible `latest handshake` when it was not
    /// already rejected for the same reason at the last reading.
    fn say_rejected_handshakes(&self, name: &str, dump: &wg::Dump) {
        let before = self
            .ifaces
            .get(name)
            .and_then(|s| s.last.as_ref())
            .and_then(|r| r.dump.as_ref());
        for p in &dump.peers {
            let Some(e) = &p.handshake_error else {
                continue;
            };
            let said = before
                .and_then(|d| d.peer(&p.public_key))
                .and_then(|q| q.handshake_error.as_ref())
                .is_some_and(|q| std::mem::discriminant(q) == std::mem::discriminant(e));
            if !said {
                tracing::warn!(interface = %name, peer = %p.public_key, field = p.latest_handshake_field, error = %e, "latest handshake rejected: judged on received data alone");
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
            st.base = Some(r);
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
}

/// What one peer's probes found.
pub(super) struct Probed {
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
