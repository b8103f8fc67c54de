//! The ledger and what is learnt from it, time passed in.

use super::*;
use chrono::TimeZone;
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::level::secs;
use skos_core::protocol::{Command, CommandResult, Heartbeat, ResultStatus};

fn t(s: f64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
}

fn n(name: &str) -> NodeName {
    NodeName::parse(name).unwrap()
}

fn hb(node: &str, cpu: f64, at: f64) -> Heartbeat {
    Heartbeat {
        agent_id: format!("agent-{node}"),
        agent_type: "thermal_sentinel".into(),
        node: n(node),
        timestamp: t(at),
        cpu_temp: Some(cpu),
        gpu_temp: None,
        storage_percent: None,
        interval_seconds: Some(10.0),
        throttle_level: Some(0),
        metadata: Default::default(),
        workloads: Vec::new(),
    }
}

fn thermal(node: &str, severity: Severity, temp: f64, at: f64) -> Alert {
    let mut a = Alert {
        alert_id: String::new(),
        agent_id: format!("agent-{node}"),
        kind: AlertKind::Thermal,
        severity,
        node: n(node),
        message: format!("CPU temperature {temp}°C"),
        details: json!({"sensor": "cpu", "temperature": temp})
            .as_object()
            .unwrap()
            .clone(),
        timestamp: t(at),
    };
    a.ensure_id();
    a
}

fn commands(effects: &[Effect]) -> Vec<(NodeName, Command)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Command(n, c) => Some((n.clone(), c.clone())),
            _ => None,
        })
        .collect()
}

fn names(effects: &[Effect]) -> Vec<String> {
    commands(effects)
        .into_iter()
        .map(|(_, c)| c.action_type)
        .collect()
}

fn succeeded(e: &mut Engine, effects: &[Effect], at: f64) {
    for (node, c) in commands(effects) {
        let r = CommandResult {
            action_id: c.action_id.clone(),
            action_type: c.action_type.clone(),
            node,
            agent_id: "agent".into(),
            status: ResultStatus::Succeeded,
            message: String::new(),
            changes: vec![],
            details: Default::default(),
            timestamp: t(at),
        };
        e.on_result(r, t(at));
    }
}

fn learned(effects: &[Effect]) -> Vec<&skos_core::protocol::AuditEntry> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Audit(a) if a.event_type == "learned" => Some(a),
            _ => None,
        })
        .collect()
}

fn config(learning: bool) -> Config {
    let mut cfg = Config::default();
    if learning {
        cfg.learning.kinds = vec!["thermal".into()];
    }
    cfg
}

fn engine(learning: bool) -> Engine {
    Engine::new(config(learning), Counters::default(), "test")
}

/// A warning on `node` whose `throttle_10` is sent, succeeds, and does
/// not cool the node within `verify_within` (120 s): one verified failure.
/// Returns the time after it.
fn a_throttle_10_that_does_not_cool(e: &mut Engine, node: &str, from: f64) -> f64 {
    e.on_heartbeat(hb(node, 77.0, from), t(from));
    let fx = e.on_alert(thermal(node, Severity::Warning, 77.0, from), t(from));
    assert_eq!(names(&fx), ["throttle_10"], "{fx:?}");
    succeeded(e, &fx, from + 1.0);
    let mut at = from + 10.0;
    while at <= from + 140.0 {
        e.on_heartbeat(hb(node, 78.0, at), t(at));
        e.tick(t(at));
        at += 10.0;
    }
    // The warning clears so the next one is a new problem.
    e.on_alert(thermal(node, Severity::Normal, 70.0, at), t(at));
    at + 10.0
}

#[test]
fn three_verified_failures_of_throttle_10_send_throttle_50_first_there_only() {
    let mut e = engine(true);
    let mut at = 0.0;
    for _ in 0..3 {
        at = a_throttle_10_that_does_not_cool(&mut e, "nova", at);
    }
    let r = e
        .ledger
        .get(&n("nova"), "thermal:cpu", "throttle_10")
        .unwrap();
    assert_eq!(
        (r.attempts, r.verified, r.failed, r.failing_streak),
        (3, 0, 3, 3)
    );

    e.on_heartbeat(hb("nova", 77.0, at), t(at));
    let fx = e.on_alert(thermal("nova", Severity::Warning, 77.0, at), t(at));
    assert_eq!(names(&fx), ["throttle_50"]);
    let l = learned(&fx);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].data["table"], json!(["throttle_10"]));
    assert_eq!(l[0].data["chosen"], json!(["throttle_50"]));
    let ev = l[0].data["evidence"].as_array().unwrap();
    assert!(
        ev.iter()
            .any(|x| x["action"] == "throttle_10" && x["failed"] == 3),
        "{ev:?}"
    );
    assert!(
        l[0].summary
            .contains("throttle_10 failed its last 3 verifications here"),
        "{}",
        l[0].summary
    );

    // Another node keeps the table's order.
    e.on_heartbeat(hb("lyra", 77.0, at), t(at));
    let fx = e.on_alert(thermal("lyra", Severity::Warning, 77.0, at), t(at));
    assert_eq!(names(&fx), ["throttle_10"]);
    assert!(learned(&fx).is_empty());
}

#[test]
fn without_learning_the_table_decides_and_the_ledger_still_counts() {
    let mut e = engine(false);
    let mut at = 0.0;
    for _ in 0..3 {
        at = a_throttle_10_that_does_not_cool(&mut e, "nova", at);
    }
    e.on_heartbeat(hb("nova", 77.0, at), t(at));
    let fx = e.on_alert(thermal("nova", Severity::Warning, 77.0, at), t(at));
    assert_eq!(names(&fx), ["throttle_10"]);
    let rows = e.status(t(at)).ledger;
    let row = rows.iter().find(|r| r.action == "throttle_10").unwrap();
    assert_eq!((row.attempts, row.failed), (4, 3));
    assert_eq!(row.success_rate, Some(0.0));
}

#[test]
fn a_verified_fix_resets_the_streak_and_records_time_to_recovery() {
    let mut e = engine(true);
    let at = a_throttle_10_that_does_not_cool(&mut e, "nova", 0.0);
    e.on_heartbeat(hb("nova", 77.0, at), t(at));
    let fx = e.on_alert(thermal("nova", Severity::Warning, 77.0, at), t(at));
    succeeded(&mut e, &fx, at + 1.0);
    // It cools after the result and stays cool through the hold.
    for s in 1..8 {
        let x = at + 1.0 + f64::from(s) * 10.0;
        e.on_heartbeat(hb("nova", 60.0, x), t(x));
        e.tick(t(x));
    }
    let r = e
        .ledger
        .get(&n("nova"), "thermal:cpu", "throttle_10")
        .unwrap()
        .clone();
    assert_eq!((r.verified, r.failed, r.failing_streak), (1, 1, 0), "{r:?}");
    let mean = r.mean_recovery_seconds().unwrap();
    assert!(mean > 0.0 && mean <= 81.0, "{mean}");
    assert_eq!(r.last_outcome, Some(Outcome::Verified));
}

#[test]
fn what_was_learnt_survives_a_restart() {
    let mut e = engine(true);
    let mut at = 0.0;
    for _ in 0..3 {
        at = a_throttle_10_that_does_not_cool(&mut e, "nova", at);
    }
    let saved = serde_json::to_string(&e.node_snapshot(&n("nova"))).unwrap();
    let mut back = engine(true);
    back.restore(serde_json::from_str(&saved).unwrap(), t(at));
    back.on_heartbeat(hb("nova", 77.0, at), t(at));
    let fx = back.on_alert(thermal("nova", Severity::Warning, 77.0, at), t(at));
    assert_eq!(names(&fx), ["throttle_50"]);
}

#[test]
fn a_failing_action_is_never_replaced_by_a_destructive_one() {
    let mut cfg = config(true);
    cfg.thermal.actions.critical = vec!["redistribute".into()];
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let mut at = 0.0;
    for _ in 0..3 {
        at = a_throttle_10_that_does_not_cool(&mut e, "nova", at);
    }
    e.on_heartbeat(hb("nova", 77.0, at), t(at));
    let fx = e.on_alert(thermal("nova", Severity::Warning, 77.0, at), t(at));
    // The next row up has only redistribute: nothing replaces it, and
    // the emergency row is two levels up.
    assert_eq!(names(&fx), ["throttle_10"], "{fx:?}");
}

#[test]
fn within_a_row_the_better_record_goes_first() {
    let mut cfg = config(true);
    cfg.thermal.actions.critical = vec!["throttle_50".into(), "throttle_100".into()];
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let node = n("nova");
    let p = ProblemKey::new(&AlertKind::Thermal, Some("cpu"));
    e.ledger_outcome((&node, &p, "throttle_50"), Outcome::Failed, None, t(0.0));
    e.ledger_outcome(
        (&node, &p, "throttle_100"),
        Outcome::Verified,
        Some(t(0.0)),
        t(5.0),
    );
    e.on_heartbeat(hb("nova", 87.0, 10.0), t(10.0));
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 10.0), t(10.0));
    assert_eq!(names(&fx), ["throttle_100", "throttle_50"]);
    assert_eq!(learned(&fx).len(), 1);
}
#[test]
fn learning_never_answers_a_storage_warning_with_the_emergency_cleanup() {
    let mut cfg = Config::default();
    cfg.learning.kinds = vec!["storage".into()];
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let mut alert = Alert {
        alert_id: String::new(),
        agent_id: "agent-nova".into(),
        kind: AlertKind::Storage,
        severity: Severity::Warning,
        node: n("nova"),
        message: "/srv at 81%".into(),
        details: json!({"mount": "/srv", "percent": 81.0})
            .as_object()
            .unwrap()
            .clone(),
        timestamp: t(0.0),
    };
    alert.ensure_id();
    let problem = alert.problem();
    // cleanup_temp, cleanup_logs and archive_old each failed three times
    // here (a node's own results can say so).
    for a in ["cleanup_temp", "cleanup_logs", "archive_old"] {
        for _ in 0..3 {
            e.ledger_outcome((&n("nova"), &problem, a), Outcome::Failed, None, t(1.0));
        }
    }
    let mut out = Vec::new();
    let chosen = e.learned(
        &alert,
        Severity::Warning,
        vec!["cleanup_temp".into()],
        t(2.0),
        &mut out,
    );
    assert!(
        !chosen.contains(&"emergency_cleanup".to_string()),
        "a warning answered with {chosen:?}"
    );
}
