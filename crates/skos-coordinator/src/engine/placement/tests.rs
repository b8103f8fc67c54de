//! Placement plans, one test per rule, time passed in: the seed's fleet
//! (nova primary with qwen, synthesis-core and docker-swarm; lyra and
//! athena the hot spares).

use super::*;
use chrono::TimeZone;
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Command, Heartbeat};

fn t(s: f64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
}

fn n(name: &str) -> NodeName {
    NodeName::parse(name).unwrap()
}

fn def(name: &str, home: &str, priority: u32, essential: bool, movable: bool) -> WorkloadDef {
    WorkloadDef {
        name: name.into(),
        home: n(home),
        priority,
        essential,
        movable,
        nodes: Vec::new(),
        roles: Vec::new(),
    }
}

/// The seed's fleet: qwen is pinned to nova's GPU (not movable).
fn fleet() -> Fleet {
    Fleet {
        workloads: vec![
            def("qwen", "nova", 1, true, false),
            def("synthesis-core", "nova", 2, true, true),
            def("docker-swarm", "nova", 3, false, true),
            def("backup", "lyra", 4, false, true),
        ],
        spares: vec![n("lyra"), n("athena")],
        roles: BTreeMap::new(),
        failover_delay: 10.0,
        failback: Failback::Auto,
        failback_hold: 120.0,
        restart_hold: 60.0,
        min_healthy: MinHealthy::Count(1),
        max_concurrent_failovers: 2,
        approval: Vec::new(),
        approval_timeout: 600.0,
        orchestrated: BTreeSet::new(),
    }
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.thermal.actions.critical = vec!["throttle_50".into(), "redistribute".into()];
    cfg.thermal.actions.emergency = vec!["shutdown_non_essential".into(), "failover".into()];
    cfg
}

fn engine_with(fleet: Fleet, cfg: Config) -> Engine {
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.set_fleet(fleet);
    e
}

fn engine() -> Engine {
    engine_with(fleet(), config())
}

/// A heartbeat from `node` at `cpu` °C listing `workloads` (name, state).
fn hb(node: &str, cpu: f64, workloads: &[(&str, &str)], at: f64) -> Heartbeat {
    let workloads = workloads
        .iter()
        .map(|(w, s)| skos_core::WorkloadReport {
            name: skos_core::WorkloadName::parse(w).unwrap(),
            state: serde_json::from_value(json!(s)).unwrap(),
            healthy: Some(*s == "running"),
            since: None,
            detail: String::new(),
        })
        .collect();
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
        workloads,
    }
}

const NOVA_ALL: &[(&str, &str)] = &[
    ("qwen", "running"),
    ("synthesis-core", "running"),
    ("docker-swarm", "running"),
];

/// nova hot at `cpu`, lyra at 60 °C, athena at 50 °C, all at `at`.
fn fleet_reports(e: &mut Engine, cpu: f64, at: f64) {
    e.on_heartbeat(hb("nova", cpu, NOVA_ALL, at), t(at));
    e.on_heartbeat(hb("lyra", 60.0, &[("backup", "running")], at), t(at));
    e.on_heartbeat(hb("athena", 50.0, &[], at), t(at));
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

/// The workload steps among `effects`: (node, action, workload).
fn steps(effects: &[Effect]) -> Vec<(String, String, String)> {
    commands(effects)
        .into_iter()
        .filter(|(_, c)| is_step(&c.action_type))
        .map(|(n, c)| {
            let w = c.parameters[WORKLOAD_PARAM].as_str().unwrap().to_string();
            (n.to_string(), c.action_type, w)
        })
        .collect()
}

fn step(node: &str, action: &str, workload: &str) -> (String, String, String) {
    (node.into(), action.into(), workload.into())
}

fn answer(e: &mut Engine, effects: &[Effect], status: ResultStatus, at: f64) -> Vec<Effect> {
    let mut out = Vec::new();
    for (node, c) in commands(effects)
        .into_iter()
        .filter(|(_, c)| is_step(&c.action_type))
    {
        let r = CommandResult {
            action_id: c.action_id.clone(),
            action_type: c.action_type.clone(),
            node,
            agent_id: "agent".into(),
            status,
            message: String::new(),
            changes: vec![],
            details: Default::default(),
            timestamp: t(at),
        };
        out.extend(e.on_result(r, t(at)));
    }
    out
}

fn placed(e: &Engine, workload: &str) -> Option<String> {
    e.placements()
        .all()
        .find(|p| p.workload == workload)
        .and_then(|p| p.at.as_ref().map(ToString::to_string))
}

fn skipped(effects: &[Effect], reason: &str) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Audit(a) if a.event_type == "skipped" && a.data["reason"] == reason))
        .count()
}

#[test]
fn redistribute_moves_the_first_movable_workload_to_the_coolest_node_healthy_there_first() {
    let mut e = engine();
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    let names: Vec<_> = commands(&fx)
        .iter()
        .map(|(_, c)| c.action_type.clone())
        .collect();
    assert_eq!(
        names,
        ["throttle_50", START],
        "the throttle, then the move's first step"
    );
    // qwen is pinned; synthesis-core goes to athena, the coolest.
    assert_eq!(steps(&fx), [step("athena", START, "synthesis-core")]);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
    // Healthy at athena: only now is nova's copy stopped.
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 5.0);
    assert_eq!(steps(&fx), [step("nova", STOP, "synthesis-core")]);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 8.0);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("athena"));
    // Still critical: the next movable workload goes, one at a time.
    assert_eq!(steps(&fx), [step("athena", START, "docker-swarm")]);
    let moved = fx
        .iter()
        .any(|x| matches!(x, Effect::Audit(a) if a.event_type == "placement" && a.data["outcome"] == "done"));
    assert!(moved, "the move is audited: {fx:?}");
}

#[test]
fn redistribute_stops_once_the_problem_is_gone() {
    let mut e = engine();
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 5.0);
    e.on_alert(thermal("nova", Severity::Normal, 70.0, 6.0), t(6.0));
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 8.0);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("athena"));
    assert!(
        steps(&fx).is_empty(),
        "nothing more moves once cool: {fx:?}"
    );
}

#[test]
fn a_failed_start_rolls_back_and_tries_the_next_node() {
    let mut e = engine();
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    let fx = answer(&mut e, &fx, ResultStatus::Failed, 5.0);
    // athena failed: lyra is next; nova's copy was never stopped.
    assert_eq!(steps(&fx), [step("lyra", START, "synthesis-core")]);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
    let fx = answer(&mut e, &fx, ResultStatus::Failed, 6.0);
    assert!(steps(&fx).is_empty(), "no node left to try");
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
}

#[test]
fn emergency_sheds_the_non_essential_and_fails_the_essential_over_to_the_first_spare() {
    let mut e = engine();
    fleet_reports(&mut e, 96.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 0.0), t(0.0));
    let mut got = steps(&fx);
    got.sort();
    let mut want = vec![
        step("nova", STOP, "docker-swarm"),
        step("lyra", START, "synthesis-core"),
    ];
    want.sort();
    assert_eq!(got, want);
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 5.0);
    assert_eq!(steps(&fx), [step("nova", STOP, "synthesis-core")]);
    assert_eq!(placed(&e, "docker-swarm"), None, "shed");
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 8.0);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("lyra"));
    assert!(
        steps(&fx).is_empty(),
        "qwen is pinned: nothing else fails over"
    );

    // nova cools and stays calm: what was shed starts again after the
    // restart hold, then synthesis-core fails back after the failback hold.
    e.on_alert(thermal("nova", Severity::Normal, 60.0, 10.0), t(10.0));
    let calm = [
        ("qwen", "running"),
        ("synthesis-core", "stopped"),
        ("docker-swarm", "stopped"),
    ];
    let report = |e: &mut Engine, at: f64| {
        e.on_heartbeat(hb("nova", 60.0, &calm, at), t(at));
        e.on_heartbeat(
            hb("lyra", 60.0, &[("synthesis-core", "running")], at),
            t(at),
        );
        e.on_heartbeat(hb("athena", 50.0, &[], at), t(at));
    };
    report(&mut e, 11.0);
    assert!(steps(&e.tick(t(12.0))).is_empty(), "not calm long enough");
    for s in [30.0, 50.0, 70.0] {
        report(&mut e, s);
        assert!(
            steps(&e.tick(t(s))).is_empty(),
            "not calm long enough at {s}"
        );
    }
    report(&mut e, 75.0);
    let fx = e.tick(t(75.0));
    assert_eq!(steps(&fx), [step("nova", START, "docker-swarm")]);
    answer(&mut e, &fx, ResultStatus::Succeeded, 76.0);
    assert_eq!(placed(&e, "docker-swarm").as_deref(), Some("nova"));
    for s in [90.0, 110.0, 130.0] {
        report(&mut e, s);
        assert!(
            steps(&e.tick(t(s))).is_empty(),
            "not calm long enough at {s}"
        );
    }
    report(&mut e, 135.0);
    let fx = e.tick(t(135.0));
    assert_eq!(steps(&fx), [step("nova", START, "synthesis-core")]);
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 136.0);
    assert_eq!(steps(&fx), [step("lyra", STOP, "synthesis-core")]);
    answer(&mut e, &fx, ResultStatus::Succeeded, 137.0);
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
}

#[test]
fn a_dead_node_fails_over_after_the_delay_and_its_stale_copy_is_fenced_when_back() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    // lyra and athena keep reporting; nova falls silent.
    for s in [10.0, 20.0, 30.0, 39.0] {
        e.on_heartbeat(hb("lyra", 60.0, &[("backup", "running")], s), t(s));
        e.on_heartbeat(hb("athena", 50.0, &[], s), t(s));
        assert!(steps(&e.tick(t(s))).is_empty(), "not yet at {s}");
    }
    // Offline after 30 s, failed over 10 s later.
    e.on_heartbeat(hb("lyra", 60.0, &[("backup", "running")], 41.0), t(41.0));
    e.on_heartbeat(hb("athena", 50.0, &[], 41.0), t(41.0));
    let fx = e.tick(t(41.0));
    assert_eq!(steps(&fx), [step("lyra", START, "synthesis-core")]);
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 42.0);
    assert!(
        steps(&fx).is_empty(),
        "nova is unreachable: nothing sent to it"
    );
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("lyra"));
    // nova comes back still running its old copy: it is stopped there.
    let fx = e.on_heartbeat(hb("nova", 60.0, NOVA_ALL, 50.0), t(50.0));
    assert_eq!(steps(&fx), [step("nova", STOP, "synthesis-core")]);
    let fence = commands(&fx)
        .into_iter()
        .find(|(_, c)| c.action_type == STOP)
        .unwrap()
        .1;
    assert_eq!(fence.parameters["fence"], "true");
    // While the fence is pending, it is not sent again.
    let fx = e.on_heartbeat(hb("nova", 60.0, NOVA_ALL, 55.0), t(55.0));
    assert!(steps(&fx).is_empty());
}

#[test]
fn two_of_three_nodes_down_freezes_destructive_plans_and_says_why() {
    let mut cfg = fleet();
    cfg.min_healthy = MinHealthy::Count(2);
    let mut e = engine_with(cfg, config());
    fleet_reports(&mut e, 60.0, 0.0);
    // lyra and athena fall silent; nova goes into emergency.
    for s in [10.0, 20.0, 31.0] {
        e.on_heartbeat(hb("nova", 60.0, NOVA_ALL, s), t(s));
        e.tick(t(s));
    }
    e.on_heartbeat(hb("nova", 96.0, NOVA_ALL, 32.0), t(32.0));
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 32.0), t(32.0));
    assert!(steps(&fx).is_empty(), "frozen: {fx:?}");
    assert_eq!(skipped(&fx, "fleet_degraded"), 2, "both plans skipped");
    let raised: Vec<_> = fx
        .iter()
        .filter_map(|x| match x {
            Effect::Alert(a) if a.kind == AlertKind::FleetDegraded => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(raised.len(), 1, "one fleet_degraded alert");
    assert!(
        raised[0].message.contains("0 of 3 nodes healthy"),
        "{}",
        raised[0].message
    );
}

#[test]
fn dry_run_decides_every_plan_and_sends_nothing() {
    let mut cfg = config();
    cfg.dry_run = true;
    let mut e = engine_with(fleet(), cfg);
    fleet_reports(&mut e, 96.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 0.0), t(0.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(skipped(&fx, "dry_run"), 2);
}

#[test]
fn without_workloads_a_plan_is_skipped_not_sent_to_an_agent() {
    let mut e = engine_with(Fleet::default(), config());
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    let names: Vec<_> = commands(&fx)
        .iter()
        .map(|(_, c)| c.action_type.clone())
        .collect();
    assert_eq!(names, ["throttle_50"]);
    assert_eq!(skipped(&fx, "no_workloads"), 1);
}

#[test]
fn a_move_interrupted_by_a_restart_completes_from_the_saved_state() {
    let mut e = engine();
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    // The coordinator keeps each node's part under its own key.
    let parts: Vec<String> = ["nova", "lyra", "athena"]
        .iter()
        .map(|node| serde_json::to_string(&e.node_snapshot(&n(node))).unwrap())
        .collect();
    let mut back = engine();
    for p in &parts {
        back.restore(serde_json::from_str(p).unwrap(), t(1.0));
    }
    // The start's result arrives at the restarted coordinator.
    let fx = answer(&mut back, &fx, ResultStatus::Succeeded, 5.0);
    assert_eq!(steps(&fx), [step("nova", STOP, "synthesis-core")]);
    answer(&mut back, &fx, ResultStatus::Succeeded, 6.0);
    assert_eq!(placed(&back, "synthesis-core").as_deref(), Some("athena"));
}

#[test]
fn a_start_with_no_result_is_fenced_at_its_target_and_the_workload_stays() {
    let mut cfg = config();
    cfg.coordinator.result_grace_seconds = 5.0;
    let mut e = engine_with(fleet(), cfg);
    fleet_reports(&mut e, 87.0, 0.0);
    e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    // No answer past the deadline (60 s) and grace.
    for s in [10.0, 20.0, 30.0, 40.0, 50.0, 60.0] {
        for node in ["nova", "lyra", "athena"] {
            e.on_heartbeat(
                hb(node, if node == "nova" { 87.0 } else { 50.0 }, &[], s),
                t(s),
            );
        }
    }
    e.tick(t(66.0));
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
    // athena reports a copy running after all: it is stopped.
    let fx = e.on_heartbeat(
        hb("athena", 50.0, &[("synthesis-core", "running")], 67.0),
        t(67.0),
    );
    assert!(
        steps(&fx).contains(&step("athena", STOP, "synthesis-core")),
        "{fx:?}"
    );
}

#[test]
fn a_workload_placed_here_and_stopped_is_started_again() {
    let mut e = engine();
    let fx = e.on_heartbeat(
        hb(
            "nova",
            60.0,
            &[("qwen", "failed"), ("synthesis-core", "running")],
            0.0,
        ),
        t(0.0),
    );
    assert_eq!(steps(&fx), [step("nova", START, "qwen")]);
    // Not sent twice while under way.
    let again = e.on_heartbeat(hb("nova", 60.0, &[("qwen", "stopped")], 1.0), t(1.0));
    assert!(steps(&again).is_empty());
    answer(&mut e, &fx, ResultStatus::Succeeded, 2.0);
    assert_eq!(placed(&e, "qwen").as_deref(), Some("nova"));
}

#[test]
fn a_spare_that_is_hot_or_offline_is_passed_over() {
    let mut e = engine();
    fleet_reports(&mut e, 96.0, 0.0);
    e.on_heartbeat(hb("lyra", 80.0, &[], 1.0), t(1.0));
    e.on_alert(thermal("lyra", Severity::Warning, 80.0, 1.0), t(1.0));
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 2.0), t(2.0));
    assert!(
        steps(&fx).contains(&step("athena", START, "synthesis-core")),
        "{fx:?}"
    );
}

fn approvals(effects: &[Effect], state: &str) -> Vec<Value> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Audit(a) if a.event_type == "approval" && a.data["state"] == state => {
                Some(a.data.clone())
            }
            _ => None,
        })
        .collect()
}

fn needing_approval() -> Engine {
    let mut f = fleet();
    f.approval = vec![Reason::Failover];
    engine_with(f, config())
}

#[test]
fn an_approval_required_failover_waits_and_runs_on_approve() {
    let mut e = needing_approval();
    fleet_reports(&mut e, 96.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 0.0), t(0.0));
    // Shedding needs no approval; the failover waits.
    assert_eq!(steps(&fx), [step("nova", STOP, "docker-swarm")]);
    let waiting = approvals(&fx, "waiting");
    assert_eq!(waiting.len(), 1);
    let id = waiting[0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("failover-nova-"), "{id}");
    // Asked once: the same problem again is skipped as awaiting it.
    let again = e.on_alert(thermal("nova", Severity::Emergency, 97.0, 1.0), t(1.0));
    assert!(approvals(&again, "waiting").is_empty());
    assert_eq!(skipped(&again, "awaiting_approval"), 1);
    // It survives a restart.
    let saved = serde_json::to_string(&e.node_snapshot(&n("nova"))).unwrap();
    let mut back = needing_approval();
    fleet_reports(&mut back, 96.0, 2.0);
    back.restore(serde_json::from_str(&saved).unwrap(), t(2.0));
    assert!(matches!(
        back.approve("nope", "ops", t(3.0)),
        Err(ApprovalError::Unknown(_))
    ));
    let fx = back.approve(&id, "ops@example", t(3.0)).unwrap();
    assert_eq!(approvals(&fx, "approved")[0]["by"], "ops@example");
    assert_eq!(steps(&fx), [step("lyra", START, "synthesis-core")]);
    assert!(back.approve(&id, "ops", t(4.0)).is_err(), "decided once");
}

#[test]
fn an_unanswered_approval_expires_and_a_denied_one_is_dropped() {
    let mut e = needing_approval();
    fleet_reports(&mut e, 96.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 0.0), t(0.0));
    let id = approvals(&fx, "waiting")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for s in [100.0, 200.0, 300.0, 400.0, 500.0] {
        fleet_reports(&mut e, 96.0, s);
        assert!(approvals(&e.tick(t(s)), "expired").is_empty());
    }
    fleet_reports(&mut e, 96.0, 600.0);
    let fx = e.tick(t(600.0));
    assert_eq!(approvals(&fx, "expired").len(), 1);
    assert!(steps(&fx).is_empty(), "nothing runs on expiry");
    assert!(e.approve(&id, "ops", t(601.0)).is_err());

    // Asked again, then denied.
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 97.0, 602.0), t(602.0));
    let id = approvals(&fx, "waiting")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fx = e.deny(&id, "ops", t(603.0)).unwrap();
    assert_eq!(approvals(&fx, "denied").len(), 1);
    assert!(steps(&fx).is_empty());
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
}

#[test]
fn status_shows_each_workload_where_it_is_and_the_approvals_waiting() {
    let mut e = needing_approval();
    fleet_reports(&mut e, 87.0, 0.0);
    e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    e.on_alert(thermal("nova", Severity::Emergency, 96.0, 1.0), t(1.0));
    let s = e.status(t(2.0));
    let sc = s
        .workloads
        .iter()
        .find(|w| w.name == "synthesis-core")
        .unwrap();
    assert_eq!(sc.state, "moving");
    assert_eq!(sc.step.as_deref(), Some("redistribute starting on athena"));
    assert_eq!(sc.at.as_deref(), Some("nova"));
    assert_eq!(s.approvals.len(), 1);
    assert_eq!(s.approvals[0].plan, "failover");
    let text = s.render();
    assert!(text.contains("WORKLOADS (4)"), "{text}");
    assert!(text.contains("APPROVALS WAITING (1)"), "{text}");
    assert!(text.contains(&s.approvals[0].id), "{text}");
}

#[test]
fn the_fleet_comes_from_the_seeds_nodes_failover_and_the_workloads_defined() {
    let seed = include_str!("../../../../skos-core/tests/fixtures/seed-config.yaml");
    let text = format!(
        "{seed}\nworkloads:\n  synthesis-core: {{driver: process, command: [/bin/true]}}\n  docker-swarm: {{driver: process, command: [/bin/true], essential: false}}\n  minio: {{driver: container, image: local/minio, movable: false}}\n  scratch: {{driver: process, command: [/bin/true]}}\n"
    );
    let cfg = Config::from_yaml(&text).unwrap();
    let f = Fleet::from_config(&cfg);
    let got: Vec<(&str, &str, u32, bool, bool)> = f
        .workloads
        .iter()
        .map(|w| {
            (
                w.name.as_str(),
                w.home.as_str(),
                w.priority,
                w.essential,
                w.movable,
            )
        })
        .collect();
    // scratch has no home (no node lists it, no nodes of its own): not placed.
    assert_eq!(
        got,
        [
            ("synthesis-core", "nova", 2, true, true),
            ("docker-swarm", "nova", 3, false, true),
            ("minio", "athena", 4, false, false),
        ]
    );
    assert_eq!(f.spares, [n("lyra"), n("athena")]);
    assert_eq!(f.failover_delay, 10.0);
    assert_eq!(
        f.roles.get(&n("athena")).map(String::as_str),
        Some("storage")
    );
    let e = Engine::new(cfg, Counters::default(), "test");
    assert_eq!(placed(&e, "minio").as_deref(), Some("athena"));
}

#[test]
fn steps_pass_the_breaker_a_workload_that_never_starts_is_not_tried_forever() {
    let mut e = engine();
    let mut sent = 0;
    for i in 0..20 {
        let at = f64::from(i) * 2.0;
        let fx = e.on_heartbeat(hb("nova", 60.0, &[("qwen", "failed")], at), t(at));
        let s = steps(&fx);
        sent += s.len();
        answer(&mut e, &fx, ResultStatus::Failed, at + 1.0);
    }
    // circuit_breaker.max_failures (5) failed starts, then the circuit is
    // open: no more tries within its reset timeout.
    assert_eq!(sent, 5);
    let open = e.status(t(40.0)).open_circuits;
    assert!(
        open.iter()
            .any(|c| c["problem"] == "workload:qwen" && c["action"] == START),
        "{open:?}"
    );
}

#[test]
fn a_fence_that_failed_is_sent_again_under_a_new_id() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    let stale = [("backup", "running")];
    let fx = e.on_heartbeat(hb("nova", 60.0, &stale, 1.0), t(1.0));
    assert_eq!(steps(&fx), [step("nova", STOP, "backup")]);
    let first = commands(&fx)[0].1.action_id.clone();
    answer(&mut e, &fx, ResultStatus::Failed, 2.0);
    let fx = e.on_heartbeat(hb("nova", 60.0, &stale, 3.0), t(3.0));
    assert_eq!(steps(&fx), [step("nova", STOP, "backup")]);
    assert_ne!(commands(&fx)[0].1.action_id, first);
}

#[test]
fn a_workload_placed_back_on_a_fenced_node_is_no_longer_fenced_there() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    // nova dies: synthesis-core fails over to lyra, nova's copy fenced.
    for s in [10.0, 20.0, 30.0, 41.0] {
        e.on_heartbeat(hb("lyra", 60.0, &[("backup", "running")], s), t(s));
        e.on_heartbeat(hb("athena", 50.0, &[], s), t(s));
        let fx = e.tick(t(s));
        answer(&mut e, &fx, ResultStatus::Succeeded, s + 0.5);
    }
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("lyra"));
    let fenced = |e: &Engine| {
        e.placements()
            .all()
            .find(|p| p.workload == "synthesis-core")
            .unwrap()
            .fence
            .clone()
    };
    assert_eq!(fenced(&e), [n("nova")]);
    // nova is back and calm; stopping its stale copy fails, and failback
    // adopts the copy there ("already runs").
    let report = |e: &mut Engine, at: f64| {
        let fx = e.on_heartbeat(
            hb("nova", 60.0, &[("synthesis-core", "running")], at),
            t(at),
        );
        answer(e, &fx, ResultStatus::Failed, at + 0.5);
        e.on_heartbeat(
            hb("lyra", 60.0, &[("synthesis-core", "running")], at),
            t(at),
        );
        e.on_heartbeat(hb("athena", 50.0, &[], at), t(at));
    };
    for s in [50.0, 100.0, 150.0, 200.0] {
        report(&mut e, s);
        let fx = e.tick(t(s));
        let starts: Vec<_> = commands(&fx)
            .into_iter()
            .filter(|(_, c)| c.action_type == START)
            .collect();
        for (node, c) in starts {
            let r = CommandResult {
                action_id: c.action_id.clone(),
                action_type: c.action_type.clone(),
                node,
                agent_id: "agent".into(),
                status: ResultStatus::Succeeded,
                message: "already runs".into(),
                changes: vec![],
                details: Default::default(),
                timestamp: t(s + 1.0),
            };
            let fx = e.on_result(r, t(s + 1.0));
            answer(&mut e, &fx, ResultStatus::Succeeded, s + 2.0);
        }
    }
    assert_eq!(placed(&e, "synthesis-core").as_deref(), Some("nova"));
    assert!(fenced(&e).is_empty(), "{:?}", fenced(&e));
}

/// The seed's fleet with nova in an orchestrator (`nodes.nova.orchestrator`).
fn orchestrated_fleet() -> Fleet {
    Fleet {
        orchestrated: [n("nova")].into_iter().collect(),
        ..fleet()
    }
}

/// The drain steps among `effects`: (agent's node, action, drained node).
fn drains(effects: &[Effect]) -> Vec<(String, String, String)> {
    commands(effects)
        .into_iter()
        .filter(|(_, c)| c.action_type == NODE_DRAIN || c.action_type == NODE_UNDRAIN)
        .map(|(at, c)| {
            let node = c.parameters["node"].as_str().unwrap().to_string();
            (at.to_string(), c.action_type, node)
        })
        .collect()
}

fn drain_state(e: &Engine, node: &str) -> Option<&'static str> {
    e.placements().drains.get(&n(node)).map(|d| d.state())
}

use skos_core::catalogue::{NODE_DRAIN, NODE_UNDRAIN};

/// A thermal alert about another sensor (another problem).
fn thermal_on(sensor: &str, node: &str, severity: Severity, temp: f64, at: f64) -> Alert {
    let mut a = thermal(node, severity, temp, at);
    a.details.insert("sensor".into(), json!(sensor));
    a.alert_id.clear();
    a.ensure_id();
    a
}

#[test]
fn an_orchestrated_node_is_drained_once_instead_of_moving_its_workloads() {
    let mut e = engine_with(orchestrated_fleet(), config());
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    assert_eq!(
        drains(&fx),
        [step("nova", NODE_DRAIN, "nova")],
        "one drain, on the node's own agent"
    );
    let moves = commands(&fx)
        .into_iter()
        .filter(|(_, c)| c.action_type == START || c.action_type == STOP)
        .count();
    assert_eq!(moves, 0, "no workload is moved by SKOS");
    let cmd = commands(&fx)
        .into_iter()
        .find(|(_, c)| c.action_type == NODE_DRAIN)
        .unwrap()
        .1;
    assert_eq!(cmd.problem.as_deref(), Some("orchestrator:nova"));
    assert!(fx.iter().any(|f| matches!(f, Effect::Audit(a)
        if a.event_type == "placement" && a.data["step"] == NODE_DRAIN && a.data["plan"] == "redistribute")));
    assert_eq!(drain_state(&e, "nova"), Some("draining"));

    // Asked again while it runs: in progress, nothing sent.
    let fx2 = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 1.0), t(1.0));
    assert!(drains(&fx2).is_empty());
    assert!(skipped(&fx2, "in_progress") >= 1);

    answer(&mut e, &fx, ResultStatus::Succeeded, 2.0);
    assert_eq!(drain_state(&e, "nova"), Some("drained"));
    // Kept in nova's part of the snapshot.
    let saved = serde_json::to_string(&e.node_snapshot(&n("nova"))).unwrap();
    let mut back = engine_with(orchestrated_fleet(), config());
    back.restore(serde_json::from_str(&saved).unwrap(), t(3.0));
    assert_eq!(drain_state(&back, "nova"), Some("drained"));

    // Drained: not drained again until undrained.
    let fx = e.on_alert(
        thermal_on("gpu", "nova", Severity::Critical, 88.0, 4.0),
        t(4.0),
    );
    assert!(drains(&fx).is_empty());
    assert!(fx.iter().any(|f| matches!(f, Effect::Audit(a)
        if a.event_type == "placement" && a.data["outcome"] == "nothing_to_do")));
}

#[test]
fn a_calm_drained_node_is_undrained_after_the_failback_hold() {
    let mut e = engine_with(orchestrated_fleet(), config());
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    answer(&mut e, &fx, ResultStatus::Succeeded, 1.0);
    assert_eq!(drain_state(&e, "nova"), Some("drained"));
    e.on_alert(thermal("nova", Severity::Normal, 60.0, 10.0), t(10.0));
    for s in [10.0, 40.0, 70.0, 100.0, 125.0] {
        fleet_reports(&mut e, 60.0, s);
        assert!(
            drains(&e.tick(t(s))).is_empty(),
            "not calm long enough at {s}"
        );
    }
    fleet_reports(&mut e, 60.0, 131.0);
    let fx = e.tick(t(131.0));
    assert_eq!(drains(&fx), [step("nova", NODE_UNDRAIN, "nova")]);
    assert_eq!(drain_state(&e, "nova"), Some("undraining"));
    // A failed undrain leaves it drained (tried again later).
    answer(&mut e, &fx, ResultStatus::Failed, 132.0);
    assert_eq!(drain_state(&e, "nova"), Some("drained"));
    fleet_reports(&mut e, 60.0, 140.0);
    let fx = e.tick(t(140.0));
    assert_eq!(drains(&fx), [step("nova", NODE_UNDRAIN, "nova")]);
    answer(&mut e, &fx, ResultStatus::Succeeded, 141.0);
    assert_eq!(drain_state(&e, "nova"), Some("undrained"));
    fleet_reports(&mut e, 60.0, 150.0);
    assert!(drains(&e.tick(t(150.0))).is_empty(), "undrained once");
}

#[test]
fn a_table_failback_undrains_and_an_undrained_node_is_left_alone() {
    let mut cfg = config();
    cfg.thermal.actions.warning = vec!["failback".into()];
    let mut e = engine_with(orchestrated_fleet(), cfg);
    fleet_reports(&mut e, 80.0, 0.0);
    let fx = e.on_alert(
        thermal_on("gpu", "nova", Severity::Warning, 80.0, 0.0),
        t(0.0),
    );
    assert!(drains(&fx).is_empty(), "not drained: nothing to undrain");
    assert!(fx.iter().any(|f| matches!(f, Effect::Audit(a)
        if a.event_type == "placement" && a.data["outcome"] == "nothing_to_do")));
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 1.0), t(1.0));
    answer(&mut e, &fx, ResultStatus::Succeeded, 2.0);
    let fx = e.on_alert(
        thermal_on("gpu1", "nova", Severity::Warning, 80.0, 3.0),
        t(3.0),
    );
    assert_eq!(drains(&fx), [step("nova", NODE_UNDRAIN, "nova")]);
}

#[test]
fn an_offline_orchestrated_node_is_drained_through_the_first_online_spare() {
    let mut e = engine_with(orchestrated_fleet(), config());
    fleet_reports(&mut e, 60.0, 0.0);
    // lyra (the first spare) falls silent too; athena keeps reporting.
    for s in [10.0, 20.0, 30.0, 39.0] {
        e.on_heartbeat(hb("athena", 50.0, &[], s), t(s));
        assert!(drains(&e.tick(t(s))).is_empty(), "not yet at {s}");
    }
    e.on_heartbeat(hb("athena", 50.0, &[], 41.0), t(41.0));
    let fx = e.tick(t(41.0));
    assert_eq!(
        drains(&fx),
        [step("athena", NODE_DRAIN, "nova")],
        "run by athena's agent for nova"
    );
    let moves = commands(&fx)
        .into_iter()
        .filter(|(_, c)| c.action_type == START)
        .count();
    assert_eq!(moves, 0);
    answer(&mut e, &fx, ResultStatus::Succeeded, 42.0);
    assert_eq!(drain_state(&e, "nova"), Some("drained"));
    e.on_heartbeat(hb("athena", 50.0, &[], 50.0), t(50.0));
    assert!(drains(&e.tick(t(50.0))).is_empty(), "drained once");
}

#[test]
fn dry_run_drains_nothing() {
    let mut cfg = config();
    cfg.dry_run = true;
    let mut e = engine_with(orchestrated_fleet(), cfg);
    fleet_reports(&mut e, 96.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 0.0), t(0.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(skipped(&fx, "dry_run"), 2);
    assert_eq!(drain_state(&e, "nova"), None);
    // The offline path too.
    for s in [20.0, 41.0] {
        e.on_heartbeat(hb("athena", 50.0, &[], s), t(s));
        e.on_heartbeat(hb("lyra", 50.0, &[], s), t(s));
        assert!(commands(&e.tick(t(s))).is_empty());
    }
    assert_eq!(drain_state(&e, "nova"), None);
}

#[test]
fn where_nodes_sign_only_a_node_with_a_key_receives_a_workload() {
    let mut cfg = config();
    cfg.trust
        .node_keys
        .insert("lyra".into(), "ULYRAPUBLICKEY".into());
    let mut e = engine_with(fleet(), cfg);
    fleet_reports(&mut e, 87.0, 0.0);
    // athena is cooler but has no key: lyra takes synthesis-core.
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    assert_eq!(steps(&fx), [step("lyra", START, "synthesis-core")]);
}

mod attack;
