//! `/metrics`: the Prometheus text exposition format (0.0.4), through
//! `prometheus-client`.
//!
//! Three kinds of figures:
//!
//! * from the coordinator's status, asked at each scrape (every node, page
//!   after page, up to [`MAX_NODES`]): temperatures, disk use and throttle
//!   level per node, nodes by status, agents, open alerts by kind and
//!   severity, open circuits with their state;
//! * from this process's counters (`skos_core::counters`): `skos_events_total{counter}`
//!   with every counter by name (bus, decode, rejections, results…);
//! * from the audit trail as it is written ([`Derived`], fed by
//!   [`crate::feed`]): actions by kind and outcome, verifications by kind and
//!   outcome, audit records by type, and the histograms of the time to
//!   detect and the time to a verified recovery. These count from the
//!   start of this process, as Prometheus counters do.

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use skos_coordinator::status::{NodeOrder, Status, StatusQuery, MAX_PER_PAGE};
use skos_core::timefmt;

use crate::api::AppState;

/// The most nodes one scrape lists (their per-node series).
pub const MAX_NODES: usize = 10_000;

/// How long one status page may take to come.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;
type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Buckets of the time to detect, seconds.
const DETECT_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Buckets of the time to a verified recovery, seconds.
const RECOVERY_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// What the audit trail says, counted as it is written.
#[derive(Clone)]
pub struct Derived {
    actions: Family<Labels, Counter>,
    verifications: Family<Labels, Counter>,
    records: Family<Labels, Counter>,
    detect: Histogram,
    recovery: Histogram,
}

impl Default for Derived {
    fn default() -> Self {
        Self {
            actions: Family::default(),
            verifications: Family::default(),
            records: Family::default(),
            detect: Histogram::new(DETECT_BUCKETS),
            recovery: Histogram::new(RECOVERY_BUCKETS),
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("unknown").to_string()
}

/// Seconds from `from` to `to` (timestamps as the wire writes them), not
/// below zero (the agent's clock may be ahead of the coordinator's).
fn seconds_between(from: &Value, to: &Value) -> Option<f64> {
    let from = timefmt::parse(from.as_str()?)?;
    let to = timefmt::parse(to.as_str()?)?;
    Some(((to - from).num_milliseconds() as f64 / 1000.0).max(0.0))
}

impl Derived {
    /// Count one audit record just written.
    pub fn observe(&self, record: &Value) {
        let entry = &record["entry"];
        let data = &entry["data"];
        let event = entry["event_type"].as_str().unwrap_or("unknown");
        self.records
            .get_or_create(&vec![("event_type", event.to_string())])
            .inc();
        match event {
            "alert" => {
                let alert = &data["alert"];
                let raised = alert["severity"].as_str().is_some_and(|s| s != "normal");
                let reminder = alert["details"]["reminder"].as_bool().unwrap_or(false);
                if raised && !reminder {
                    // From the reading that raised it (its age when the
                    // agent judged it) to the coordinator handling it.
                    if let Some(s) = seconds_between(&alert["timestamp"], &entry["timestamp"]) {
                        let age = alert["details"]["age_seconds"]
                            .as_f64()
                            .unwrap_or(0.0)
                            .max(0.0);
                        self.detect.observe(s + age);
                    }
                }
            }
            "result" => {
                let r = &data["result"];
                self.actions
                    .get_or_create(&vec![
                        ("action", text(&r["action_type"])),
                        ("outcome", text(&r["status"])),
                    ])
                    .inc();
            }
            "verification" => {
                let outcome = text(&data["outcome"]);
                self.verifications
                    .get_or_create(&vec![
                        ("action", text(&data["action"])),
                        ("outcome", outcome.clone()),
                    ])
                    .inc();
                if outcome == "succeeded" {
                    if let Some(s) = seconds_between(&data["alert_at"], &entry["timestamp"]) {
                        self.recovery.observe(s);
                    }
                }
            }
            _ => {}
        }
    }

    /// These metrics alone, in the text format.
    #[cfg(test)]
    pub(crate) fn encoded(&self) -> String {
        let mut reg = Registry::default();
        self.register(&mut reg);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &reg).expect("text encoding into a String");
        out
    }

    fn register(&self, reg: &mut Registry) {
        reg.register(
            "skos_actions",
            "Actions carried out, by action and the agent's result (succeeded, failed, rejected, expired, unsupported, not_needed)",
            self.actions.clone(),
        );
        reg.register(
            "skos_verifications",
            "Fixes checked against the metric that raised the alert, by action and outcome (succeeded, failed, uncredited, not_needed: the problem was gone before the action ran)",
            self.verifications.clone(),
        );
        reg.register(
            "skos_audit_records",
            "Audit records written, by event type",
            self.records.clone(),
        );
        reg.register(
            "skos_time_to_detect_seconds",
            "From the reading that raised an alert to the coordinator handling it",
            self.detect.clone(),
        );
        reg.register(
            "skos_time_to_verified_recovery_seconds",
            "From an alert to the verification that its fix worked",
            self.recovery.clone(),
        );
    }
}

/// Every node's status, page after page (at most [`MAX_NODES`]): the first
/// page's reply with the nodes of the others added. `None` when no
/// coordinator answers.
async fn fleet(state: &AppState) -> Option<Status> {
    let mut query = StatusQuery {
        per_page: MAX_PER_PAGE,
        order: NodeOrder::Name,
        ..Default::default()
    };
    let mut first: Option<Status> = None;
    loop {
        let status = state.status(&query, STATUS_TIMEOUT).await.ok()?.status?;
        let pages = status.pages;
        match first.as_mut() {
            None => first = Some(status),
            Some(f) => f.nodes.extend(status.nodes),
        }
        query.page += 1;
        if query.page >= pages || query.page * MAX_PER_PAGE >= MAX_NODES {
            return first;
        }
    }
}

fn gauge(family: &Family<Labels, FGauge>, labels: Labels, v: f64) {
    family.get_or_create(&labels).set(v);
}

/// The text of `/metrics`.
pub async fn render(state: &AppState) -> String {
    let mut reg = Registry::default();
    state.feed.derived.register(&mut reg);

    let events: Family<Labels, Counter> = Family::default();
    for (name, n) in state.sources.counters.snapshot() {
        events.get_or_create(&vec![("counter", name)]).inc_by(n);
    }
    reg.register(
        "skos_events",
        "This process's event counters by name (as skos status --json shows them): bus, decode, rejections, results, loop breaker",
        events,
    );

    let up: Gauge = Gauge::default();
    let status = fleet(state).await;
    up.set(i64::from(status.is_some()));
    reg.register(
        "skos_coordinator_answering",
        "1 when a coordinator answered the status request of this scrape (the figures below come from it)",
        up,
    );
    if let Some(s) = status {
        status_metrics(&mut reg, &s, state.sources.holder.as_deref());
    }
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &reg) {
        tracing::warn!(error = %e, "metrics not encoded");
    }
    out
}

fn status_metrics(reg: &mut Registry, s: &Status, holder: Option<&str>) {
    let temp: Family<Labels, FGauge> = Family::default();
    let disk: Family<Labels, FGauge> = Family::default();
    let throttle: Family<Labels, FGauge> = Family::default();
    let online: Family<Labels, FGauge> = Family::default();
    for n in &s.nodes {
        let node = || n.name.clone();
        if let Some(t) = n.cpu_temp {
            gauge(&temp, vec![("node", node()), ("sensor", "cpu".into())], t);
        }
        if let Some(t) = n.gpu_temp {
            gauge(&temp, vec![("node", node()), ("sensor", "gpu".into())], t);
        }
        if let Some(p) = n.storage_percent {
            gauge(&disk, vec![("node", node())], p);
        }
        if let Some(l) = n.throttle_level {
            gauge(&throttle, vec![("node", node())], f64::from(l));
        }
        gauge(
            &online,
            vec![("node", node()), ("status", n.status.as_str().into())],
            1.0,
        );
    }
    reg.register(
        "skos_node_temperature_celsius",
        "Each node's hottest counted CPU and GPU temperature in its last heartbeat",
        temp,
    );
    reg.register(
        "skos_node_disk_used_percent",
        "Each node's fullest watched mount in its last heartbeat, percent",
        disk,
    );
    reg.register(
        "skos_node_throttle_level",
        "Each node's throttle level in force (0: none)",
        throttle,
    );
    reg.register(
        "skos_node_status",
        "1 for each node, labelled with its status (healthy, degraded, critical, emergency, offline)",
        online,
    );

    let nodes: Family<Labels, FGauge> = Family::default();
    let c = &s.summary.nodes;
    for (k, v) in [
        ("healthy", c.healthy),
        ("degraded", c.degraded),
        ("critical", c.critical),
        ("emergency", c.emergency),
        ("offline", c.offline),
    ] {
        gauge(&nodes, vec![("status", k.into())], v as f64);
    }
    reg.register("skos_nodes", "Nodes by status", nodes);

    let agents: Family<Labels, FGauge> = Family::default();
    gauge(
        &agents,
        vec![("state", "online".into())],
        s.summary.agents.online as f64,
    );
    gauge(
        &agents,
        vec![("state", "offline".into())],
        s.summary.agents.offline as f64,
    );
    reg.register("skos_agents", "Agents by state", agents);

    let alerts: Family<Labels, FGauge> = Family::default();
    for a in &s.open_alerts {
        alerts
            .get_or_create(&vec![
                ("kind", text(&a["type"])),
                ("severity", text(&a["severity"])),
            ])
            .inc_by(1.0);
    }
    reg.register(
        "skos_open_alerts",
        "Open alerts by kind and severity (of those a status reply lists; see skos_open_alerts_unlisted)",
        alerts,
    );
    let unlisted: Gauge = Gauge::default();
    unlisted.set(
        s.summary
            .open_alerts
            .total
            .saturating_sub(s.open_alerts.len()) as i64,
    );
    reg.register(
        "skos_open_alerts_unlisted",
        "Open alerts beyond those a status reply lists (not in skos_open_alerts)",
        unlisted,
    );

    let circuits: Family<Labels, FGauge> = Family::default();
    for k in ["open", "half_open"] {
        gauge(&circuits, vec![("state", k.into())], 0.0);
    }
    let breakers: Family<Labels, FGauge> = Family::default();
    for c in &s.open_circuits {
        let st = text(&c["state"]);
        circuits
            .get_or_create(&vec![("state", st.clone())])
            .inc_by(1.0);
        gauge(
            &breakers,
            vec![
                ("node", text(&c["node"])),
                ("problem", text(&c["problem"])),
                ("action", text(&c["action"])),
                ("state", st),
            ],
            1.0,
        );
    }
    reg.register(
        "skos_circuits",
        "Circuit breakers not closed, by state",
        circuits,
    );
    reg.register(
        "skos_breaker_state",
        "1 for each circuit breaker not closed, by (node, problem, action) and state",
        breakers,
    );

    // The effectiveness ledger, per (problem, action), fleet-wide.
    let attempts: Family<Labels, FGauge> = Family::default();
    let rate: Family<Labels, FGauge> = Family::default();
    let recovery: Family<Labels, FGauge> = Family::default();
    for r in &s.ledger {
        let key = |extra: Option<(&'static str, &str)>| {
            let mut l: Labels = vec![("problem", r.problem.clone()), ("action", r.action.clone())];
            if let Some((k, v)) = extra {
                l.push((k, v.to_string()));
            }
            l
        };
        for (outcome, n) in [
            ("sent", r.attempts),
            ("verified", r.verified),
            ("failed", r.failed),
            ("uncredited", r.uncredited),
            ("not_needed", r.not_needed),
        ] {
            gauge(&attempts, key(Some(("outcome", outcome))), n as f64);
        }
        if let Some(x) = r.success_rate {
            gauge(&rate, key(None), x);
        }
        if let Some(x) = r.mean_recovery_seconds {
            gauge(&recovery, key(None), x);
        }
    }
    reg.register(
        "skos_ledger_attempts",
        "Actions sent per (problem, action), fleet-wide, and how they ended (the effectiveness ledger)",
        attempts,
    );
    reg.register(
        "skos_ledger_success_ratio",
        "Verified over verified plus failed, per (problem, action)",
        rate,
    );
    reg.register(
        "skos_ledger_recovery_seconds_mean",
        "Mean seconds from a fault's alert to its verified recovery, per (problem, action)",
        recovery,
    );

    // Where each workload runs (1 per workload, by node and state).
    let workloads: Family<Labels, FGauge> = Family::default();
    for w in &s.workloads {
        gauge(
            &workloads,
            vec![
                ("workload", w.name.clone()),
                ("node", w.at.clone().unwrap_or_default()),
                ("home", w.home.clone()),
                ("state", w.state.clone()),
            ],
            1.0,
        );
    }
    reg.register(
        "skos_workload_placement",
        "1 for each configured workload: the node it runs on (empty: stopped by SKOS), its home and state",
        workloads,
    );
    let approvals: Gauge = Gauge::default();
    approvals.set(i64::try_from(s.approvals.len()).unwrap_or(i64::MAX));
    reg.register(
        "skos_approvals_waiting",
        "Plans waiting for skos approve",
        approvals,
    );

    if let Some(mine) = holder {
        let leads: Gauge = Gauge::default();
        leads.set(i64::from(
            s.leader.as_ref().is_some_and(|l| l.holder == mine),
        ));
        reg.register(
            "skos_coordinator_leader",
            "1 when this coordinator leads, 0 when it stands by",
            leads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encoded(d: &Derived) -> String {
        d.encoded()
    }

    #[test]
    fn a_status_becomes_node_fleet_alert_and_breaker_series() {
        let s: Status = serde_json::from_value(json!({
            "mode": "distributed",
            "generated_at": "2026-01-01T00:00:00Z",
            "summary": {"nodes": {"total": 2, "critical": 1, "offline": 1},
                "agents": {"online": 1, "offline": 1},
                "open_alerts": {"total": 3, "critical": 3}, "open_circuits": 1},
            "nodes": [
                {"name": "nova", "status": "critical", "last_seen": "2026-01-01T00:00:00Z",
                 "cpu_temp": 87.5, "gpu_temp": null, "storage_percent": 41.0, "throttle_level": 2},
                {"name": "lyra", "status": "offline", "last_seen": "2026-01-01T00:00:00Z",
                 "cpu_temp": null, "gpu_temp": 70.0, "storage_percent": null, "throttle_level": null}
            ],
            "agents": [],
            "open_alerts": [{"type": "thermal", "severity": "critical", "node": "nova"},
                            {"type": "thermal", "severity": "critical", "node": "lyra"}],
            "recent_actions": [],
            "open_circuits": [{"node": "nova", "problem": "thermal", "action": "throttle_50",
                               "state": "open", "since": "2026-01-01T00:00:00Z"}],
            "counters": {},
            "leader": {"holder": "h:1:x", "term": 3, "since": "2026-01-01T00:00:00Z"},
            "workloads": [{"name": "synthesis-core", "home": "nova", "at": "athena", "state": "placed"}],
            "ledger": [{"problem": "thermal:cpu", "action": "throttle_10", "attempts": 4,
                        "verified": 1, "failed": 3, "uncredited": 0, "not_needed": 0,
                        "success_rate": 0.25, "mean_recovery_seconds": 42.0,
                        "max_recovery_seconds": 42.0, "last_outcome": "failed"}]
        }))
        .unwrap();
        let mut reg = Registry::default();
        status_metrics(&mut reg, &s, Some("h:2:y"));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &reg).unwrap();
        for line in [
            r#"skos_node_temperature_celsius{node="nova",sensor="cpu"} 87.5"#,
            r#"skos_node_temperature_celsius{node="lyra",sensor="gpu"} 70.0"#,
            r#"skos_node_disk_used_percent{node="nova"} 41.0"#,
            r#"skos_node_throttle_level{node="nova"} 2.0"#,
            r#"skos_node_status{node="lyra",status="offline"} 1.0"#,
            r#"skos_nodes{status="critical"} 1.0"#,
            r#"skos_nodes{status="healthy"} 0.0"#,
            r#"skos_agents{state="offline"} 1.0"#,
            r#"skos_open_alerts{kind="thermal",severity="critical"} 2.0"#,
            "skos_open_alerts_unlisted 1",
            r#"skos_circuits{state="open"} 1.0"#,
            r#"skos_circuits{state="half_open"} 0.0"#,
            r#"skos_breaker_state{node="nova",problem="thermal",action="throttle_50",state="open"} 1.0"#,
            "skos_coordinator_leader 0",
            r#"skos_ledger_attempts{problem="thermal:cpu",action="throttle_10",outcome="failed"} 3.0"#,
            r#"skos_ledger_success_ratio{problem="thermal:cpu",action="throttle_10"} 0.25"#,
            r#"skos_ledger_recovery_seconds_mean{problem="thermal:cpu",action="throttle_10"} 42.0"#,
            r#"skos_workload_placement{workload="synthesis-core",node="athena",home="nova",state="placed"} 1.0"#,
            "skos_approvals_waiting 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(
            !text.contains(r#"node="lyra",sensor="cpu""#),
            "no reading is invented"
        );
    }

    #[test]
    fn the_trail_is_counted_into_actions_verifications_and_times() {
        let d = Derived::default();
        d.observe(&json!({"seq": 1, "entry": {"event_type": "alert", "timestamp": "2026-01-01T00:00:02Z",
            "data": {"alert": {"severity": "critical", "type": "thermal", "timestamp": "2026-01-01T00:00:01Z",
                "details": {"age_seconds": 0.5}}}}}));
        d.observe(
            &json!({"seq": 2, "entry": {"event_type": "result", "timestamp": "2026-01-01T00:00:03Z",
            "data": {"result": {"action_type": "throttle_50", "status": "succeeded"}}}}),
        );
        d.observe(&json!({"seq": 3, "entry": {"event_type": "verification", "timestamp": "2026-01-01T00:00:11Z",
            "data": {"action": "throttle_50", "outcome": "succeeded", "alert_at": "2026-01-01T00:00:01Z"}}}));
        let text = encoded(&d);
        assert!(
            text.contains(r#"skos_actions_total{action="throttle_50",outcome="succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"skos_verifications_total{action="throttle_50",outcome="succeeded"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("skos_time_to_detect_seconds_sum 1.5"),
            "{text}"
        );
        assert!(
            text.contains("skos_time_to_verified_recovery_seconds_sum 10"),
            "{text}"
        );
        assert!(
            text.contains(r#"skos_audit_records_total{event_type="alert"} 1"#),
            "{text}"
        );
    }
}
