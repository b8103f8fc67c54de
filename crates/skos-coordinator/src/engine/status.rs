//! `skos status` from the engine's state: the summary of the whole fleet
//! and one bounded page (see [`crate::status`] for the shape and caps).
//!
//! One pass over the nodes and one over the open alerts, whatever the
//! page (about 60 ms for 100,000 nodes in an unoptimized build); the
//! reply lists at most [`MAX_PER_PAGE`] of them.

use std::collections::HashMap;

use serde_json::Value;
use skos_core::level::secs;
use skos_core::protocol::{Alert, Severity};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::state::NodeState;
use super::Engine;
#[cfg(doc)]
use crate::status::MAX_PER_PAGE;
use crate::status::{
    bounded_item, clip, ActionRecord, AgentStatus, NodeHealth, NodeOrder, NodeStatus,
    SilenceStatus, Status, StatusQuery, Summary, MAX_AGENTS, MAX_OPEN_ALERTS, MAX_OPEN_CIRCUITS,
    MAX_RECENT_ACTIONS, MAX_SILENCES,
};

/// A node's health: offline without heartbeats, else from its worst open
/// alert (`None`: no open alert).
fn health(state: &NodeState, worst: Option<Severity>) -> NodeHealth {
    if state.offline {
        return NodeHealth::Offline;
    }
    match worst.unwrap_or(Severity::Normal) {
        Severity::Normal => NodeHealth::Healthy,
        Severity::Warning => NodeHealth::Degraded,
        Severity::Critical => NodeHealth::Critical,
        Severity::Emergency => NodeHealth::Emergency,
    }
}

impl Engine {
    /// The status under the default query: the summary and the first
    /// page of nodes, problems first.
    pub fn status(&self, now: Timestamp) -> Status {
        self.status_page(now, &StatusQuery::default())
    }

    /// The status `query` asks for: the summary of the whole fleet, one
    /// page of the nodes it selects, and the capped lists (agents of the
    /// page's nodes, worst open alerts, newest actions, open circuits;
    /// only the named node's when the query names one).
    pub fn status_page(&self, now: Timestamp, query: &StatusQuery) -> Status {
        let query = query.clone().normalized();
        let timeout = secs(self.cfg.coordinator.heartbeat_timeout);
        let mut summary = Summary::default();

        let mut worst: HashMap<&NodeName, Severity> = HashMap::new();
        for ((node, _), alert) in &self.open_alerts {
            summary.open_alerts.add(alert.severity);
            let w = worst.entry(node).or_insert(alert.severity);
            *w = (*w).max(alert.severity);
        }

        // Name order (the map's), with every node's health.
        let mut selected: Vec<(NodeHealth, &NodeName, &NodeState)> = Vec::new();
        for (name, state) in &self.nodes {
            let h = health(state, worst.get(name).copied());
            summary.nodes.add(h);
            // An offline node's agents are offline, however recently a
            // takeover counted them seen.
            for (_, (_, seen)) in state.agents.iter() {
                if !state.offline && now - *seen <= timeout {
                    summary.agents.online += 1;
                } else {
                    summary.agents.offline += 1;
                }
            }
            if query.selects(name.as_str(), h) {
                selected.push((h, name, state));
            }
        }
        if query.order == NodeOrder::ProblemsFirst {
            // Stable: by name within each health.
            selected.sort_by_key(|(h, _, _)| h.rank());
        }
        let total_nodes = selected.len();
        let page = &selected[query.range(total_nodes)];

        let nodes = page
            .iter()
            .map(|(h, name, s)| NodeStatus {
                name: name.to_string(),
                status: *h,
                last_seen: s.last_seen,
                cpu_temp: s.heartbeat.cpu_temp,
                gpu_temp: s.heartbeat.gpu_temp,
                storage_percent: s.heartbeat.storage_percent,
                throttle_level: s.heartbeat.throttle_level,
                unexplained_caps: s.heartbeat.unexplained_caps,
                clock_offset_seconds: s
                    .clock_offset()
                    .map(|d| d.num_milliseconds() as f64 / 1000.0),
                clock_skewed: s.skewed,
            })
            .collect();
        let agents = page
            .iter()
            .flat_map(|(_, name, s)| {
                s.agents.iter().map(move |(id, (kind, seen))| AgentStatus {
                    agent_id: clip(id),
                    agent_type: clip(kind),
                    node: name.to_string(),
                    last_seen: *seen,
                    online: !s.offline && now - *seen <= timeout,
                })
            })
            .take(MAX_AGENTS)
            .collect();

        let open_circuits = self.breakers.open();
        // The loop breakers' own circuits, as each node's last heartbeat
        // says (a chain denied on the node, before or without a command).
        let loop_circuits: Vec<(&NodeName, &str, &str)> = self
            .nodes
            .iter()
            .filter_map(|(n, s)| Some((n, s.heartbeat.loop_circuits.as_deref()?)))
            .flat_map(|(n, cs)| cs.iter().map(move |(id, st)| (n, &**id, &**st)))
            .collect();
        summary.open_circuits = open_circuits.len() + loop_circuits.len();
        summary.recent_actions = self.recent.len();
        let silences = self.silences();
        summary.silences = silences.len();

        Status {
            mode: self.mode.clone(),
            generated_at: now,
            summary,
            total_nodes,
            page: query.page,
            per_page: query.per_page,
            pages: query.pages(total_nodes),
            nodes,
            agents,
            open_alerts: self.worst_alerts(&query),
            recent_actions: self.newest_actions(&query),
            open_circuits: open_circuits
                .iter()
                .filter(|c| query.concerns(&c.key.node))
                .map(|c| bounded_item(serde_json::to_value(c).unwrap_or(Value::Null)))
                .chain(
                    loop_circuits
                        .iter()
                        .filter(|(n, _, _)| query.concerns(n.as_str()))
                        .map(|(n, id, st)| {
                            bounded_item(serde_json::json!({
                                "node": n.as_str(),
                                "problem": format!("loop:chain:{id}"),
                                "action": "loop breaker",
                                "state": st,
                                "source": "loop_breaker",
                            }))
                        }),
                )
                .take(MAX_OPEN_CIRCUITS)
                .collect(),
            counters: self.counters.snapshot(),
            leader: self.leader.clone(),
            workloads: self.workload_statuses(&query),
            drains: self.drain_statuses(&query),
            approvals: self.approval_statuses(&query),
            ledger: self.ledger_rows(&query),
            stopped_at: None,
            silences: silences
                .into_iter()
                .filter(|s| query.concerns(s.node.as_str()))
                .take(MAX_SILENCES)
                .map(|mut s| {
                    s.comment = clip(&s.comment);
                    s.by = clip(&s.by);
                    s.held.clear();
                    SilenceStatus {
                        holding: s.holds_at(now),
                        when: s.when(now),
                        silence: s,
                    }
                })
                .collect(),
            query,
        }
    }

    /// The [`MAX_OPEN_ALERTS`] worst open alerts `query` concerns, worst
    /// first, by (node, problem) within a severity.
    fn worst_alerts(&self, query: &StatusQuery) -> Vec<Value> {
        let mut alerts: Vec<&Alert> = match &query.node {
            Some(node) => self.open_alerts.of(node).map(|(_, a)| a).collect(),
            None => self.open_alerts.values().collect(),
        };
        alerts.sort_by_key(|a| std::cmp::Reverse(a.severity));
        alerts
            .into_iter()
            .take(MAX_OPEN_ALERTS)
            .map(|a| bounded_item(serde_json::to_value(a).unwrap_or(Value::Null)))
            .collect()
    }

    /// The [`MAX_RECENT_ACTIONS`] newest actions `query` concerns, oldest
    /// first, their texts [`clip`]ped.
    fn newest_actions(&self, query: &StatusQuery) -> Vec<ActionRecord> {
        let mut out: Vec<ActionRecord> = self
            .recent
            .iter()
            .rev()
            .filter(|a| query.concerns(&a.node))
            .take(MAX_RECENT_ACTIONS)
            .map(|a| ActionRecord {
                action_id: clip(&a.action_id),
                action_type: clip(&a.action_type),
                node: a.node.clone(),
                problem: clip(&a.problem),
                cause: clip(&a.cause),
                sent_at: a.sent_at,
                state: a.state,
                message: clip(&a.message),
            })
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{NodeCounts, MAX_PER_PAGE};
    use chrono::TimeZone;
    use skos_core::config::Config;
    use skos_core::counters::Counters;
    use skos_core::protocol::{AlertKind, Heartbeat};
    use std::collections::BTreeSet;

    fn t(s: f64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000, 0)
            .single()
            .expect("valid time")
            + secs(s)
    }

    fn name(i: usize) -> NodeName {
        NodeName::parse(&format!("node-{i:06}")).expect("valid name")
    }

    fn hb(i: usize, at: f64) -> Heartbeat {
        Heartbeat {
            agent_id: format!("thermal-sentinel-{}", name(i)),
            agent_type: "thermal_sentinel".into(),
            node: name(i),
            timestamp: t(at),
            cpu_temp: Some(50.0),
            gpu_temp: None,
            storage_percent: Some(40.0),
            interval_seconds: Some(10.0),
            throttle_level: Some(0),
            metadata: Default::default(),
            workloads: Vec::new(),
        }
    }

    fn alert(i: usize, severity: Severity, at: f64) -> Alert {
        let mut a = Alert {
            alert_id: String::new(),
            agent_id: format!("thermal-sentinel-{}", name(i)),
            kind: AlertKind::Thermal,
            severity,
            node: name(i),
            message: format!("CPU temperature {}", "9".repeat(5_000)),
            details: serde_json::json!({"sensor": "cpu", "blob": "x".repeat(50_000)})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            timestamp: t(at),
        };
        a.ensure_id();
        a
    }

    const NODES: usize = 100_000;

    /// `nodes` nodes heartbeat at 0; all but every hundredth again at 20,
    /// so at 35 (timeout 30) 1 % are offline. 1 % have a warning, 1 % a
    /// critical alert.
    fn fleet(nodes: usize) -> Engine {
        let mut e = Engine::new(Config::default(), Counters::default(), "test");
        for i in 0..nodes {
            e.on_heartbeat(hb(i, 0.0), t(0.0));
        }
        for i in (0..nodes).filter(|i| i % 100 != 0) {
            e.on_heartbeat(hb(i, 20.0), t(20.0));
        }
        e.tick(t(35.0));
        for i in (0..nodes).filter(|i| i % 100 == 1) {
            e.on_alert(alert(i, Severity::Warning, 30.0), t(30.0));
        }
        for i in (0..nodes).filter(|i| i % 100 == 2) {
            e.on_alert(alert(i, Severity::Critical, 31.0), t(31.0));
        }
        e
    }

    fn size(s: &Status) -> usize {
        s.to_reply().len()
    }

    #[test]
    fn a_hundred_thousand_nodes_answer_in_bounded_pages_with_true_counts() {
        let e = fleet(NODES);
        let now = t(36.0);
        let first = e.status(now);
        assert_eq!(
            first.summary.nodes,
            NodeCounts {
                total: NODES,
                healthy: 97_000,
                degraded: 1_000,
                critical: 1_000,
                emergency: 0,
                offline: 1_000,
            }
        );
        assert_eq!(first.summary.agents.online, 99_000);
        assert_eq!(first.summary.agents.offline, 1_000);
        assert_eq!(first.summary.open_alerts.total, 2_000);
        assert_eq!(first.summary.open_alerts.warning, 1_000);
        assert_eq!(first.summary.open_alerts.critical, 1_000);
        assert_eq!(first.total_nodes, NODES);
        assert_eq!(first.per_page, crate::status::DEFAULT_PER_PAGE);
        // Problems first: the first page is critical nodes, by name.
        assert!(first.nodes.iter().all(|n| n.status == NodeHealth::Critical));
        assert_eq!(first.nodes[0].name, "node-000002");
        assert_eq!(first.open_alerts.len(), MAX_OPEN_ALERTS);
        assert!(first
            .open_alerts
            .iter()
            .all(|a| a["severity"] == "critical"));
        assert!(size(&first) < 256 * 1024, "{} bytes", size(&first));

        let q = |page: usize| StatusQuery {
            page,
            per_page: 10_000,
            ..StatusQuery::default()
        };
        let last = NODES.div_ceil(MAX_PER_PAGE) - 1;
        for page in [0, 4, 5, 9, 10, 14, 15, 250, last, last + 1] {
            let s = e.status_page(now, &q(page));
            assert_eq!(s.per_page, MAX_PER_PAGE, "capped");
            assert_eq!(s.pages, last + 1);
            assert_eq!(s.summary, first.summary);
            let expected = if page > last { 0 } else { MAX_PER_PAGE };
            assert_eq!(s.nodes.len(), expected, "page {page}");
            assert!(s.agents.len() <= MAX_AGENTS);
            let bytes = size(&s);
            assert!(bytes < 256 * 1024, "page {page}: {bytes} bytes");
        }
        // Page boundaries between health groups: 1,000 critical fill pages
        // 0-4, 1,000 offline 5-9, 1,000 degraded 10-14.
        let health = |page| e.status_page(now, &q(page)).nodes[0].status;
        assert_eq!(health(4), NodeHealth::Critical);
        assert_eq!(health(5), NodeHealth::Offline);
        assert_eq!(health(10), NodeHealth::Degraded);
        assert_eq!(health(15), NodeHealth::Healthy);

        let problems = e.status_page(
            now,
            &StatusQuery {
                problem_nodes_only: true,
                per_page: MAX_PER_PAGE,
                page: 14,
                ..StatusQuery::default()
            },
        );
        assert_eq!(problems.total_nodes, 3_000);
        assert_eq!(problems.pages, 15);
        assert!(problems
            .nodes
            .iter()
            .all(|n| n.status == NodeHealth::Degraded));

        let by_name = e.status_page(
            now,
            &StatusQuery {
                order: NodeOrder::Name,
                per_page: 3,
                page: 1,
                ..StatusQuery::default()
            },
        );
        let names: Vec<&str> = by_name.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-000003", "node-000004", "node-000005"]);
    }

    #[test]
    fn one_node_in_full() {
        let e = fleet(NODES);
        let now = t(36.0);
        let one = e.status_page(
            now,
            &StatusQuery {
                node: Some(name(99_902)),
                ..StatusQuery::default()
            },
        );
        assert_eq!(one.total_nodes, 1);
        assert_eq!(one.nodes[0].name, "node-099902");
        assert_eq!(one.nodes[0].status, NodeHealth::Critical);
        assert_eq!(one.agents.len(), 1);
        assert_eq!(one.open_alerts.len(), 1);
        let a = &one.open_alerts[0];
        assert_eq!(a["node"], "node-099902");
        // A 5,000-byte message and a 50 KB detail are cut; details that stay
        // too large are dropped.
        assert!(a["message"]
            .as_str()
            .is_some_and(|m| m.len() <= 256 && m.ends_with('…')));
        assert!(a["details"]["blob"]
            .as_str()
            .is_some_and(|b| b.len() <= 256 && b.ends_with('…')));
        assert_eq!(a["details"]["sensor"], "cpu");
        let mut big = serde_json::to_value(alert(1, Severity::Warning, 0.0)).unwrap_or_default();
        big["details"] = serde_json::json!((0..100)
            .map(|i| (format!("k{i}"), Value::from("v".repeat(100))))
            .collect::<serde_json::Map<_, _>>());
        let cut = bounded_item(big);
        assert_eq!(cut["details"], serde_json::json!({"truncated": true}));
        assert!(
            serde_json::to_vec(&cut).unwrap_or_default().len() <= crate::status::MAX_ITEM_BYTES
        );
        assert!(one.recent_actions.iter().all(|r| r.node == "node-099902"));
        assert!(!one.recent_actions.is_empty());
        assert_eq!(one.summary.nodes.total, NODES);
        assert!(one.render().contains("NODE node-099902"));
    }

    /// Paging 5,000 nodes, problems first or by name, lists every node
    /// exactly once.
    #[test]
    fn paging_lists_every_node_once() {
        const FEW: usize = 5_000;
        let e = fleet(FEW);
        let now = t(36.0);
        for order in [NodeOrder::ProblemsFirst, NodeOrder::Name] {
            let mut seen = BTreeSet::new();
            let mut page = 0;
            loop {
                let s = e.status_page(
                    now,
                    &StatusQuery {
                        page,
                        per_page: MAX_PER_PAGE,
                        order,
                        ..StatusQuery::default()
                    },
                );
                if s.nodes.is_empty() {
                    assert_eq!(page, s.pages);
                    break;
                }
                for n in s.nodes {
                    assert!(seen.insert(n.name), "listed twice");
                }
                page += 1;
            }
            assert_eq!(seen.len(), FEW, "{order:?}");
        }
    }

    #[test]
    fn queries_parse_and_normalize() {
        assert_eq!(StatusQuery::parse(b"").ok(), Some(StatusQuery::default()));
        assert_eq!(
            StatusQuery::parse(b" \n").ok(),
            Some(StatusQuery::default())
        );
        assert_eq!(StatusQuery::parse(b"{}").ok(), Some(StatusQuery::default()));
        let q = StatusQuery::parse(
            br#"{"page":3,"per_page":100000,"node":"nova","problem_nodes_only":true,"order":"name"}"#,
        )
        .expect("valid query");
        assert_eq!(q.page, 3);
        assert_eq!(q.per_page, MAX_PER_PAGE);
        assert_eq!(q.node.as_ref().map(NodeName::as_str), Some("nova"));
        assert!(q.problem_nodes_only);
        assert_eq!(q.order, NodeOrder::Name);
        assert_eq!(
            StatusQuery::parse(br#"{"per_page":0}"#)
                .map(|q| q.per_page)
                .ok(),
            Some(crate::status::DEFAULT_PER_PAGE)
        );
        assert!(StatusQuery::parse(br#"{"node":"a.b"}"#).is_err());
        assert!(StatusQuery::parse(b"[1,2").is_err());
        assert!(StatusQuery::parse(&vec![b' '; 10_000][..]).is_ok());
        let big = format!(r#"{{"node":"nova","pad":"{}"}}"#, "x".repeat(5_000));
        assert!(StatusQuery::parse(big.as_bytes()).is_err());
    }

    #[test]
    fn a_refusal_reads_as_one() {
        let body = serde_json::to_vec(&crate::status::StatusRefusal {
            error: "status query: bad".into(),
        })
        .unwrap_or_default();
        assert!(matches!(
            Status::from_reply(&body),
            Err(crate::status::StatusReplyError::Refused(m)) if m == "status query: bad"
        ));
        let e = Engine::new(Config::default(), Counters::default(), "test");
        let s = Status::from_reply(&e.status(t(0.0)).to_reply()).expect("a status");
        assert_eq!(s.mode, "test");
        assert_eq!(s.pages, 0);
        assert!(s.render().contains("no node has reported yet"));
    }
}
