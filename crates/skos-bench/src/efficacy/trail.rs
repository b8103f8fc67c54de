//! One trial's figures, derived from the audit trail alone (pure: records
//! in, figures out): the alert that detected the fault, the commands sent
//! for its problem, their results and verifications, escalations and
//! breakers.
//!
//! * detect: the alert's own timestamp minus the fault time;
//! * healed: a command of the row's actions whose verification succeeded
//!   (its metric fell below the level and held), or, for a row none of
//!   whose actions is verifiable (the loop breaker's), a succeeded result;
//!   recovery is that record's time minus the fault time;
//! * escalated: the coordinator raised the problem a severity (`-esc-`
//!   alert) or wrote that a human must decide (`escalation`);
//! * stopped safely: a circuit breaker opened for the problem;
//! * false remediation: a command of the row whose verification failed or
//!   was not credited (its metric did not move, or moved without it), or
//!   one that ran after the problem was already verified healed.
//!
//! A row may name coordinator plans (`redistribute`,
//! `shutdown_non_essential`, `failover`): none is a command, each is a
//! series of `workload_start` / `workload_stop` steps, each step audited as
//! a `placement` record naming its plan, workload, `action_id` and the
//! alert it answers, its command and result under that `action_id` on the
//! node it ran on. A plan counts as one action per workload it touched
//! (moved or shed); it heals, in a row with no verifiable command, when a
//! moving plan's (`failover`, `redistribute`) start step succeeds: the
//! workload answered its health check on its new node. It is a false
//! remediation when its first step for that workload was sent after the
//! problem was healed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// What a row expects to see in the trail.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The alert's `type` (`thermal`, `storage`, `loop`, `mesh`).
    pub kind: &'a str,
    /// The row's level (`warning`, `critical`, `emergency`).
    pub severity: &'a str,
    /// `details.condition` (loop) or `details.event` (mesh), when the row
    /// names one.
    pub condition: Option<&'a str>,
    /// `details.sensor`, when the row names one (one trial's chain or
    /// process group).
    pub sensor: Option<&'a str>,
    /// The row's actions: the agent's commands and the coordinator's
    /// plans.
    pub actions: &'a [&'a str],
    /// Whether the coordinator raises the alert itself (a dead node).
    pub raised_by_coordinator: bool,
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Healed,
    Escalated,
    StoppedSafely,
    /// Nothing of the above (yet).
    Open,
}

/// An action counted as a false remediation, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FalseRemediation {
    pub action: String,
    pub action_id: String,
    pub why: String,
}

/// One trial, as the trail tells it.
#[derive(Debug, Clone, Serialize)]
pub struct TrialFigures {
    pub detected: bool,
    /// Fault → the alert's own timestamp, seconds.
    pub detect_s: Option<f64>,
    /// The alert's severity (may be above the row's).
    pub detected_at: Option<String>,
    /// `kind:sensor` of the detected alert.
    pub problem: Option<String>,
    pub outcome: Outcome,
    /// Fault → verified recovery, seconds (healed only).
    pub recovery_s: Option<f64>,
    /// Every command sent for the problem after the fault, in order.
    pub actions: Vec<String>,
    pub false_remediations: Vec<FalseRemediation>,
    /// Commands the agent answered `not_needed` (the problem was gone
    /// when they were to run: avoided, never executed).
    pub avoided: usize,
    /// Every command of the row has a final record (result, verification
    /// or no_result), and the outcome is known.
    pub settled: bool,
}

fn entry(r: &Value) -> &Value {
    &r["entry"]
}

fn event(r: &Value) -> &str {
    entry(r)["event_type"].as_str().unwrap_or("")
}

fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(skos_core::timefmt::parse)
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// Plans that heal by moving a workload to another node.
const MOVING_PLANS: [&str; 2] = ["failover", "redistribute"];

/// The problem key of an alert object: `kind:sensor` (or `kind`).
pub fn problem_of(alert: &Value) -> String {
    let kind = alert["type"].as_str().unwrap_or("");
    match alert["details"]["sensor"].as_str() {
        Some(s) => format!("{kind}:{s}"),
        None => kind.to_string(),
    }
}

fn matches(alert: &Value, x: &Expect<'_>) -> bool {
    if alert["type"] != x.kind {
        return false;
    }
    let id = alert["alert_id"].as_str().unwrap_or("");
    if id.contains("-esc-") {
        return false;
    }
    let by_coordinator = alert["agent_id"] == "coordinator";
    if by_coordinator != x.raised_by_coordinator {
        return false;
    }
    if let Some(c) = x.condition {
        let d = &alert["details"];
        if d["condition"] != c && d["event"] != c {
            return false;
        }
    }
    if let Some(s) = x.sensor {
        if alert["details"]["sensor"] != s {
            return false;
        }
    }
    let sev = alert["severity"].as_str().unwrap_or("normal");
    rank(sev) >= rank(x.severity)
}

fn rank(severity: &str) -> u8 {
    match severity {
        "warning" => 1,
        "critical" => 2,
        "emergency" => 3,
        _ => 0,
    }
}

struct Cmd<'r> {
    id: &'r str,
    action: &'r str,
    at: DateTime<Utc>,
}

/// One step of a plan, from its `placement` record.
struct PlanStep<'r> {
    plan: &'r str,
    workload: &'r str,
    id: &'r str,
    at: DateTime<Utc>,
    /// A `workload_start` (else a `workload_stop`).
    start: bool,
}

/// The figures of one trial on `node`, from every record of the trail
/// (`skos audit tail --json`): records from `since` (the trial's start)
/// on are the trial's; times are measured from `fault_at` (when the fault
/// was there: a limit crossed, a temperature written), at or after
/// `since`.
pub fn judge(
    records: &[Value],
    node: &str,
    since: DateTime<Utc>,
    fault_at: DateTime<Utc>,
    x: &Expect<'_>,
) -> TrialFigures {
    let after = |r: &&Value| time_of(&entry(r)["timestamp"]).is_some_and(|t| t >= since);
    // Every node's records (a plan's steps run on other nodes), and the
    // node's own.
    let all: Vec<&Value> = records.iter().filter(after).collect();
    let mine: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|r| entry(r)["node"] == node)
        .collect();
    let alert = mine.iter().find_map(|r| {
        let a = &entry(r)["data"]["alert"];
        (event(r) == "alert" && matches(a, x)).then_some(a)
    });
    let mut out = TrialFigures {
        detected: alert.is_some(),
        detect_s: None,
        detected_at: None,
        problem: None,
        outcome: Outcome::Open,
        recovery_s: None,
        actions: Vec::new(),
        false_remediations: Vec::new(),
        avoided: 0,
        settled: false,
    };
    let Some(alert) = alert else {
        return out;
    };
    let problem = problem_of(alert);
    out.detect_s = time_of(&alert["timestamp"]).map(|t| secs(fault_at, t).max(0.0));
    out.detected_at = alert["severity"].as_str().map(str::to_owned);
    let cmds: Vec<Cmd<'_>> = mine
        .iter()
        .filter(|r| event(r) == "command")
        .filter_map(|r| {
            let c = &entry(r)["data"]["command"];
            (c["problem"] == problem.as_str()).then_some(Cmd {
                id: c["action_id"].as_str()?,
                action: c["action_type"].as_str()?,
                at: time_of(&entry(r)["timestamp"])?,
            })
        })
        .collect();
    // Every alert of the problem (a repeat has an id of its own), and the
    // steps of the row's plans that answer one of them.
    let alert_ids: Vec<&str> = mine
        .iter()
        .filter(|r| event(r) == "alert")
        .map(|r| &entry(r)["data"]["alert"])
        .filter(|a| problem_of(a) == problem)
        .filter_map(|a| a["alert_id"].as_str())
        .collect();
    let steps: Vec<PlanStep<'_>> = all
        .iter()
        .filter(|r| event(r) == "placement")
        .filter_map(|r| {
            let d = &entry(r)["data"];
            let plan = d["plan"].as_str()?;
            let answers = d["alert_id"]
                .as_str()
                .is_some_and(|a| alert_ids.contains(&a));
            (x.actions.contains(&plan) && answers).then_some(())?;
            Some(PlanStep {
                plan,
                workload: d["workload"].as_str()?,
                id: d["action_id"].as_str()?,
                at: time_of(&entry(r)["timestamp"])?,
                start: d["step"]["step"] == "start",
            })
        })
        .collect();
    // One action per command, and one per plan and workload, in order.
    let mut moves: Vec<(&str, &str, DateTime<Utc>)> = Vec::new();
    for s in &steps {
        if !moves.iter().any(|m| m.0 == s.plan && m.1 == s.workload) {
            moves.push((s.plan, s.workload, s.at));
        }
    }
    let mut used: Vec<(DateTime<Utc>, &str)> = cmds.iter().map(|c| (c.at, c.action)).collect();
    used.extend(moves.iter().map(|m| (m.2, m.0)));
    used.sort_by_key(|u| u.0);
    out.actions = used.iter().map(|u| u.1.to_string()).collect();
    let of = |kind: &str, id: &str| -> Vec<&Value> {
        all.iter()
            .copied()
            .filter(|r| event(r) == kind)
            .filter(|r| {
                let d = &entry(r)["data"];
                d["action_id"] == id || d["result"]["action_id"] == id
            })
            .collect()
    };
    let row: Vec<&Cmd<'_>> = cmds
        .iter()
        .filter(|c| x.actions.contains(&c.action))
        .collect();
    let any_verifiable = row
        .iter()
        .any(|c| skos_core::catalogue::is_verifiable(c.action));
    // Healed: the earliest verified fix.
    let mut healed_at: Option<DateTime<Utc>> = None;
    let mut all_final = true;
    for c in &row {
        let verifs = of("verification", c.id);
        let results = of("result", c.id);
        let status = results
            .first()
            .and_then(|r| entry(r)["data"]["result"]["status"].as_str());
        let verified = verifs
            .iter()
            .find(|v| entry(v)["data"]["outcome"] == "succeeded")
            .and_then(|v| time_of(&entry(v)["timestamp"]));
        let plain_ok = (!any_verifiable && status == Some("succeeded"))
            .then(|| {
                results
                    .first()
                    .and_then(|r| time_of(&entry(r)["timestamp"]))
            })
            .flatten();
        for t in [verified, plain_ok].into_iter().flatten() {
            healed_at = Some(healed_at.map_or(t, |h| h.min(t)));
        }
        let no_result = !of("no_result", c.id).is_empty();
        let verifiable = skos_core::catalogue::is_verifiable(c.action);
        let is_final = no_result
            || !verifs.is_empty()
            || matches!(status, Some(s) if s != "succeeded")
            || (status == Some("succeeded") && !verifiable);
        all_final &= is_final;
        if status == Some("not_needed") {
            out.avoided += 1;
        }
        for v in &verifs {
            let o = entry(v)["data"]["outcome"].as_str().unwrap_or("");
            if o == "failed" || o == "uncredited" {
                let why = entry(v)["data"]["reason"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("verification {o}"));
                out.false_remediations.push(FalseRemediation {
                    action: c.action.into(),
                    action_id: c.id.into(),
                    why,
                });
            }
        }
    }
    for s in &steps {
        let results = of("result", s.id);
        let status = results
            .first()
            .and_then(|r| entry(r)["data"]["result"]["status"].as_str());
        if status == Some("not_needed") {
            out.avoided += 1;
        }
        all_final &= status.is_some() || !of("no_result", s.id).is_empty();
        let confirmed = (!any_verifiable
            && s.start
            && MOVING_PLANS.contains(&s.plan)
            && status == Some("succeeded"))
        .then(|| {
            results
                .first()
                .and_then(|r| time_of(&entry(r)["timestamp"]))
        })
        .flatten();
        if let Some(t) = confirmed {
            healed_at = Some(healed_at.map_or(t, |h| h.min(t)));
        }
    }
    if let Some(h) = healed_at {
        for (plan, workload, at) in &moves {
            let ran = steps
                .iter()
                .filter(|s| s.plan == *plan && s.workload == *workload)
                .any(|s| {
                    of("result", s.id)
                        .iter()
                        .any(|r| entry(r)["data"]["result"]["status"] == "succeeded")
                });
            if *at > h && ran {
                out.false_remediations.push(FalseRemediation {
                    action: plan.to_string(),
                    action_id: steps
                        .iter()
                        .find(|s| s.plan == *plan && s.workload == *workload)
                        .map(|s| s.id.to_string())
                        .unwrap_or_default(),
                    why: format!("{workload} moved or shed after the problem was healed"),
                });
            }
        }
        for c in &row {
            let ran = of("result", c.id)
                .iter()
                .any(|r| entry(r)["data"]["result"]["status"] == "succeeded");
            let counted = out.false_remediations.iter().any(|f| f.action_id == c.id);
            if c.at > h && ran && !counted {
                out.false_remediations.push(FalseRemediation {
                    action: c.action.into(),
                    action_id: c.id.into(),
                    why: "ran after the problem was verified healed".into(),
                });
            }
        }
        out.outcome = Outcome::Healed;
        out.recovery_s = Some(secs(fault_at, h));
    } else {
        let escalated = mine.iter().any(|r| {
            let d = &entry(r)["data"];
            (event(r) == "alert"
                && d["alert"]["alert_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("-esc-"))
                && problem_of(&d["alert"]) == problem)
                || (event(r) == "escalation" && d["problem"] == problem.as_str())
        });
        let stopped = mine.iter().any(|r| {
            let d = &entry(r)["data"];
            event(r) == "breaker" && d["state"] == "open" && d["key"]["problem"] == problem.as_str()
        });
        out.outcome = if escalated {
            Outcome::Escalated
        } else if stopped {
            Outcome::StoppedSafely
        } else {
            Outcome::Open
        };
    }
    out.problem = Some(problem);
    out.settled =
        out.outcome != Outcome::Open && all_final && !(row.is_empty() && steps.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn rec(event: &str, at: &str, data: Value) -> Value {
        rec_on("n1", event, at, data)
    }

    fn rec_on(node: &str, event: &str, at: &str, data: Value) -> Value {
        json!({"entry": {"event_type": event, "timestamp": at, "node": node, "actor": "x", "summary": "", "data": data}})
    }

    /// A plan's step (recorded on the workload's home, n1), its command
    /// and its result on `on`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        out: &mut Vec<Value>,
        (at, done): (&str, &str),
        plan: &str,
        workload: &str,
        id: &str,
        alert_id: &str,
        (kind, on): (&str, &str),
        status: &str,
    ) {
        out.push(rec(
            "placement",
            at,
            json!({"plan": plan, "workload": workload, "step": {"step": kind, "to": on, "from": "n1"}, "action_id": id, "alert_id": alert_id}),
        ));
        let action = if kind == "start" {
            "workload_start"
        } else {
            "workload_stop"
        };
        out.push(rec_on(
            on,
            "command",
            at,
            json!({"command": {"action_id": id, "action_type": action, "problem": format!("workload:{workload}")}}),
        ));
        out.push(rec_on(
            on,
            "result",
            done,
            json!({"result": {"action_id": id, "status": status}}),
        ));
    }

    fn thermal_alert(at: &str, id: &str, severity: &str) -> Value {
        rec(
            "alert",
            at,
            json!({"alert": {"alert_id": id, "agent_id": "agent-n1", "type": "thermal", "severity": severity, "timestamp": at, "details": {"sensor": "cpu"}}}),
        )
    }

    #[test]
    fn a_failover_heals_when_its_start_on_the_spare_succeeds_and_each_workload_is_one_action() {
        let x = Expect {
            kind: "thermal",
            severity: "emergency",
            condition: None,
            sensor: None,
            actions: &["shutdown_non_essential", "failover"],
            raised_by_coordinator: false,
        };
        let mut r = vec![thermal_alert("2026-01-01T00:00:00.200Z", "a1", "emergency")];
        let t = "2026-01-01T00:00:00.300Z";
        step(
            &mut r,
            (t, "2026-01-01T00:00:00.500Z"),
            "shutdown_non_essential",
            "swarm",
            "s1",
            "a1",
            ("stop", "n1"),
            "succeeded",
        );
        step(
            &mut r,
            (t, "2026-01-01T00:00:01.500Z"),
            "failover",
            "synth",
            "f1",
            "a1",
            ("start", "n2"),
            "succeeded",
        );
        // Not settled while the second step (the stop at home) is open.
        r.push(rec(
            "placement",
            "2026-01-01T00:00:01.500Z",
            json!({"plan": "failover", "workload": "synth", "step": {"step": "stop", "from": "n1", "to": "n2"}, "action_id": "f2", "alert_id": "a1"}),
        ));
        let f = judge(&r, "n1", t0(), t0(), &x);
        assert_eq!(f.outcome, Outcome::Healed);
        assert!(!f.settled);
        assert!((f.recovery_s.unwrap() - 1.5).abs() < 1e-9);
        r.push(rec(
            "result",
            "2026-01-01T00:00:02Z",
            json!({"result": {"action_id": "f2", "status": "succeeded"}}),
        ));
        // A step answering another problem's alert is not this trial's.
        step(
            &mut r,
            (t, "2026-01-01T00:00:00.400Z"),
            "failover",
            "other",
            "o1",
            "zz",
            ("start", "n2"),
            "succeeded",
        );
        let f = judge(&r, "n1", t0(), t0(), &x);
        assert!(f.settled, "{f:?}");
        assert_eq!(f.actions, ["shutdown_non_essential", "failover"]);
        assert!(f.false_remediations.is_empty());
    }

    #[test]
    fn with_a_verifiable_throttle_a_move_heals_nothing_and_one_begun_after_the_heal_is_false() {
        let x = Expect {
            kind: "thermal",
            severity: "critical",
            condition: None,
            sensor: None,
            actions: &["throttle_50", "redistribute"],
            raised_by_coordinator: false,
        };
        let mut r = vec![
            thermal_alert("2026-01-01T00:00:00.200Z", "a1", "critical"),
            rec(
                "command",
                "2026-01-01T00:00:00.300Z",
                json!({"command": {"action_id": "c1", "action_type": "throttle_50", "problem": "thermal:cpu"}}),
            ),
            result("2026-01-01T00:00:00.400Z", "c1", "succeeded"),
        ];
        step(
            &mut r,
            ("2026-01-01T00:00:00.300Z", "2026-01-01T00:00:01Z"),
            "redistribute",
            "synth",
            "r1",
            "a1",
            ("start", "n3"),
            "succeeded",
        );
        let f = judge(&r, "n1", t0(), t0(), &x);
        assert_eq!(f.outcome, Outcome::Open, "the node has not cooled yet");
        r.push(verification("2026-01-01T00:00:02Z", "c1", "succeeded"));
        // A repeat of the alert (an id of its own) moves a second workload
        // after the heal.
        r.push(thermal_alert("2026-01-01T00:00:02.100Z", "a2", "critical"));
        step(
            &mut r,
            ("2026-01-01T00:00:02.500Z", "2026-01-01T00:00:03Z"),
            "redistribute",
            "swarm",
            "r2",
            "a2",
            ("start", "n3"),
            "succeeded",
        );
        let f = judge(&r, "n1", t0(), t0(), &x);
        assert_eq!(f.outcome, Outcome::Healed);
        assert!((f.recovery_s.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(f.actions, ["throttle_50", "redistribute", "redistribute"]);
        assert_eq!(f.false_remediations.len(), 1, "{:?}", f.false_remediations);
        assert_eq!(f.false_remediations[0].action_id, "r2");
    }

    #[test]
    fn a_dead_node_is_detected_by_the_coordinators_alert_and_healed_on_the_spare() {
        let x = Expect {
            kind: "heartbeat_missing",
            severity: "critical",
            condition: None,
            sensor: None,
            actions: &["failover"],
            raised_by_coordinator: true,
        };
        let mut r = vec![rec(
            "alert",
            "2026-01-01T00:00:03.100Z",
            json!({"alert": {"alert_id": "hb1", "agent_id": "coordinator", "type": "heartbeat_missing", "severity": "critical", "timestamp": "2026-01-01T00:00:03.100Z", "details": {"sensor": "heartbeat"}}}),
        )];
        assert!(!judge(&r, "n1", t0(), t0(), &x).settled);
        step(
            &mut r,
            ("2026-01-01T00:00:05.200Z", "2026-01-01T00:00:05.600Z"),
            "failover",
            "synth",
            "f1",
            "hb1",
            ("start", "n2"),
            "succeeded",
        );
        let f = judge(&r, "n1", t0(), t0(), &x);
        assert!(f.detected && f.settled, "{f:?}");
        assert!((f.detect_s.unwrap() - 3.1).abs() < 1e-9);
        assert_eq!(f.problem.as_deref(), Some("heartbeat_missing:heartbeat"));
        assert!((f.recovery_s.unwrap() - 5.6).abs() < 1e-9);
        assert_eq!(f.actions, ["failover"]);
    }

    fn t0() -> DateTime<Utc> {
        skos_core::timefmt::parse(T0).unwrap()
    }

    fn alert(at: &str, severity: &str) -> Value {
        rec(
            "alert",
            at,
            json!({"alert": {"alert_id": "a1", "agent_id": "agent-n1", "type": "storage", "severity": severity, "timestamp": at, "details": {"sensor": "/mnt"}}}),
        )
    }

    fn command(at: &str, id: &str, action: &str) -> Value {
        rec(
            "command",
            at,
            json!({"command": {"action_id": id, "action_type": action, "problem": "storage:/mnt"}}),
        )
    }

    fn result(at: &str, id: &str, status: &str) -> Value {
        rec(
            "result",
            at,
            json!({"result": {"action_id": id, "status": status}}),
        )
    }

    fn verification(at: &str, id: &str, outcome: &str) -> Value {
        rec(
            "verification",
            at,
            json!({"action_id": id, "outcome": outcome}),
        )
    }

    const STORAGE: Expect<'static> = Expect {
        kind: "storage",
        severity: "warning",
        condition: None,
        sensor: None,
        actions: &["cleanup_temp"],
        raised_by_coordinator: false,
    };

    #[test]
    fn detect_and_recovery_come_from_the_alert_and_the_verification() {
        let records = vec![
            alert("2025-12-31T23:59:59Z", "warning"),
            alert("2026-01-01T00:00:00.400Z", "warning"),
            command("2026-01-01T00:00:00.500Z", "c1", "cleanup_temp"),
            result("2026-01-01T00:00:00.600Z", "c1", "succeeded"),
            verification("2026-01-01T00:00:02.500Z", "c1", "succeeded"),
        ];
        let f = judge(&records, "n1", t0(), t0(), &STORAGE);
        assert!(f.detected && f.settled);
        assert_eq!(f.outcome, Outcome::Healed);
        assert!((f.detect_s.unwrap() - 0.4).abs() < 1e-9);
        assert!((f.recovery_s.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(f.actions, ["cleanup_temp"]);
        assert!(f.false_remediations.is_empty());
    }

    #[test]
    fn a_verification_pending_is_not_settled_and_a_failed_one_is_false() {
        let mut records = vec![
            alert("2026-01-01T00:00:00.400Z", "critical"),
            command("2026-01-01T00:00:00.500Z", "c1", "cleanup_temp"),
            result("2026-01-01T00:00:00.600Z", "c1", "succeeded"),
        ];
        let f = judge(&records, "n1", t0(), t0(), &STORAGE);
        assert!(f.detected && !f.settled);
        assert_eq!(f.detected_at.as_deref(), Some("critical"));
        records.push(verification("2026-01-01T00:00:05Z", "c1", "failed"));
        records.push(rec(
            "alert",
            "2026-01-01T00:00:05Z",
            json!({"alert": {"alert_id": "a1-esc-critical", "agent_id": "coordinator", "type": "storage", "severity": "critical", "timestamp": "2026-01-01T00:00:05Z", "details": {"sensor": "/mnt"}}}),
        ));
        let f = judge(&records, "n1", t0(), t0(), &STORAGE);
        assert!(f.settled);
        assert_eq!(f.outcome, Outcome::Escalated);
        assert_eq!(f.false_remediations.len(), 1);
        assert_eq!(f.recovery_s, None);
    }

    #[test]
    fn an_action_after_the_heal_is_false_and_not_needed_is_avoided() {
        let records = vec![
            alert("2026-01-01T00:00:00.400Z", "warning"),
            command("2026-01-01T00:00:00.500Z", "c1", "cleanup_temp"),
            result("2026-01-01T00:00:00.600Z", "c1", "succeeded"),
            verification("2026-01-01T00:00:02Z", "c1", "succeeded"),
            command("2026-01-01T00:00:03Z", "c2", "cleanup_temp"),
            result("2026-01-01T00:00:03.100Z", "c2", "succeeded"),
            verification("2026-01-01T00:00:05Z", "c2", "uncredited"),
            command("2026-01-01T00:00:06Z", "c3", "cleanup_temp"),
            result("2026-01-01T00:00:06.100Z", "c3", "not_needed"),
            verification("2026-01-01T00:00:06.100Z", "c3", "not_needed"),
        ];
        let f = judge(&records, "n1", t0(), t0(), &STORAGE);
        assert_eq!(f.outcome, Outcome::Healed);
        assert_eq!(f.false_remediations.len(), 1, "{:?}", f.false_remediations);
        assert_eq!(f.avoided, 1);
    }

    #[test]
    fn a_row_without_a_metric_heals_on_its_result_and_nothing_is_undetected() {
        let x = Expect {
            kind: "loop",
            severity: "warning",
            condition: Some("depth_exceeded"),
            sensor: Some("chain:t1"),
            actions: &["circuit_break"],
            raised_by_coordinator: false,
        };
        assert!(!judge(&[], "n1", t0(), t0(), &x).detected);
        let records = vec![
            rec(
                "alert",
                "2026-01-01T00:00:00.010Z",
                json!({"alert": {"alert_id": "a", "agent_id": "agent-n1", "type": "loop", "severity": "critical", "timestamp": "2026-01-01T00:00:00.010Z", "details": {"sensor": "chain:t1", "condition": "depth_exceeded"}}}),
            ),
            rec(
                "command",
                "2026-01-01T00:00:00.020Z",
                json!({"command": {"action_id": "c", "action_type": "circuit_break", "problem": "loop:chain:t1"}}),
            ),
            result("2026-01-01T00:00:00.030Z", "c", "succeeded"),
        ];
        let f = judge(&records, "n1", t0(), t0(), &x);
        assert_eq!(f.outcome, Outcome::Healed);
        assert!(f.settled);
        assert!((f.recovery_s.unwrap() - 0.03).abs() < 1e-9);
    }
}
