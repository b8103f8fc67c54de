//! The engine's rules, one test per rule, time passed in.

use super::*;
use chrono::TimeZone;

fn t(s: f64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
}

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

fn hb(cpu: Option<f64>, throttle: u8, at: f64) -> Heartbeat {
    Heartbeat {
        cpu_temp: cpu,
        interval_seconds: Some(10.0),
        throttle_level: Some(throttle),
        ..Heartbeat::bare("thermal-sentinel-nova", "thermal_sentinel", nova(), t(at))
    }
}

fn alert(severity: Severity, temp: f64, at: f64) -> Alert {
    let mut a = Alert {
        alert_id: String::new(),
        agent_id: "thermal-sentinel-nova".into(),
        kind: AlertKind::Thermal,
        severity,
        node: nova(),
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

fn commands(effects: &[Effect]) -> Vec<Command> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Command(_, c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn audits<'a>(effects: &'a [Effect], kind: &str) -> Vec<&'a AuditEntry> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Audit(a) if a.event_type == kind => Some(a),
            _ => None,
        })
        .collect()
}

fn alerts(effects: &[Effect]) -> Vec<Alert> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Alert(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn result(cmd: &Command, status: ResultStatus) -> CommandResult {
    CommandResult {
        action_id: cmd.action_id.clone(),
        action_type: cmd.action_type.clone(),
        node: nova(),
        agent_id: "thermal-sentinel-nova".into(),
        status,
        message: String::new(),
        changes: vec![],
        details: Default::default(),
        timestamp: t(0.0),
    }
}

/// The defaults with a thermal table shaped like the seed's, whose second
/// actions no antibody executes (`spin_fans`, ...): they show how an
/// `unsupported` answer is handled. (The seed's own `redistribute`,
/// `shutdown_non_essential` and `failover` are the coordinator's
/// placement plans: `placement/tests.rs`.)
fn seed_config() -> Config {
    let mut cfg = Config::default();
    cfg.thermal.actions.critical = vec!["throttle_50".into(), "spin_fans".into()];
    cfg.thermal.actions.emergency = vec!["power_cap".into(), "hand_over".into()];
    cfg
}

fn engine() -> Engine {
    Engine::new(seed_config(), Counters::default(), "test")
}

/// An engine whose config's `mesh.topology` is `topology` (node → the
/// nodes it has tunnels to).
fn engine_with_topology(topology: &[(&str, &[&str])]) -> Engine {
    let mut cfg = seed_config();
    for (node, peers) in topology {
        cfg.mesh.topology.insert(
            node.to_string(),
            peers.iter().map(|p| p.to_string()).collect(),
        );
    }
    Engine::new(cfg, Counters::default(), "test")
}

#[test]
fn critical_alert_follows_the_seed_table_and_is_audited() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let cmds = commands(&fx);
    let names: Vec<&str> = cmds.iter().map(|c| c.action_type.as_str()).collect();
    assert_eq!(names, ["throttle_50", "spin_fans"]);
    assert!(cmds
        .iter()
        .all(|c| c.deadline == Some(t(60.0)) && c.cause.is_some()));
    assert_eq!(audits(&fx, "alert").len(), 1);
    assert_eq!(audits(&fx, "decision").len(), 1);
    assert_eq!(audits(&fx, "command").len(), 2);
    let s = e.status(t(1.0));
    assert_eq!(s.nodes[0].status, NodeHealth::Critical);
    assert_eq!(s.open_alerts.len(), 1);
    assert_eq!(s.recent_actions.len(), 2);
}

#[test]
fn a_node_with_an_emergency_open_shows_as_emergency_not_critical() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(97.0), 0, 0.0), t(0.0));
    e.on_alert(alert(Severity::Emergency, 97.0, 0.0), t(0.0));
    let s = e.status(t(1.0));
    assert_eq!(s.nodes[0].status, NodeHealth::Emergency);
    assert_eq!(s.nodes[0].status.as_str(), "emergency");
    assert_eq!(
        (s.summary.nodes.emergency, s.summary.nodes.critical),
        (1, 0)
    );
    assert!(
        s.render().contains("0 critical, 1 emergency"),
        "{}",
        s.render()
    );
}

/// CPU and GPU hot in one sensing pass: same node, time and severity,
/// ids that end alike. Two problems, so two commands, with two ids (the
/// id is the JetStream message id: a shared one would drop the second).
#[test]
fn alerts_of_one_pass_get_distinct_commands() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let mut cpu = alert(Severity::Critical, 87.0, 0.0);
    cpu.alert_id = "thermal-sentinel-nova-1000-cpu-critical".into();
    let mut gpu = alert(Severity::Critical, 88.0, 0.0);
    gpu.alert_id = "thermal-sentinel-nova-1000-gpu-critical".into();
    gpu.details.insert("sensor".into(), json!("gpu"));
    let mut ids = Vec::new();
    for a in [cpu, gpu] {
        for c in commands(&e.on_alert(a, t(0.0))) {
            if c.action_type == "throttle_50" {
                ids.push(c.action_id);
            }
        }
    }
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn duplicate_alert_is_handled_once() {
    let mut e = engine();
    let a = alert(Severity::Warning, 76.0, 0.0);
    assert_eq!(commands(&e.on_alert(a.clone(), t(0.0))).len(), 1);
    assert!(e.on_alert(a, t(1.0)).is_empty());
    assert_eq!(e.counters.get("alerts.duplicate"), 1);
}

#[test]
fn unsupported_is_audited_but_not_a_breaker_failure() {
    let mut e = engine();
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let spin_fans = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "spin_fans")
        .unwrap();
    let fx = e.on_result(result(&spin_fans, ResultStatus::Unsupported), t(1.0));
    assert_eq!(audits(&fx, "result").len(), 1);
    let key = BreakerKey::new("nova", "thermal:cpu", "spin_fans");
    assert_eq!(e.breakers.failures(&key), 0);
    assert_eq!(e.counters.get("breaker.failures"), 0);
}

#[test]
fn verification_success_when_temperature_falls() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let throttle = commands(&fx).remove(0);
    e.on_result(result(&throttle, ResultStatus::Succeeded), t(1.0));
    let fx = e.on_heartbeat(hb(Some(86.0), 50, 10.0), t(10.0));
    assert!(audits(&fx, "verification").is_empty(), "still hot");
    // Below 85 from 20 on: credited once it has stayed down for the
    // hold (verify_hold_seconds, 10 s).
    let fx = e.on_heartbeat(hb(Some(80.0), 50, 20.0), t(20.0));
    assert!(audits(&fx, "verification").is_empty(), "not held yet");
    let fx = e.on_heartbeat(hb(Some(80.0), 50, 30.0), t(30.0));
    let v = audits(&fx, "verification");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].data["outcome"], "succeeded");
    assert_eq!(v[0].data["held_seconds"], 10.0);
    assert_eq!(
        e.status(t(31.0)).recent_actions[0].state,
        ActionState::Verified
    );
}

#[test]
fn verification_needs_a_heartbeat_sent_after_the_result() {
    let mut e = engine();
    // The last heartbeat before the alert: still cool.
    e.on_heartbeat(hb(Some(60.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0));
    let throttle = commands(&fx).remove(0);
    let mut r = result(&throttle, ResultStatus::Succeeded);
    r.timestamp = t(2.0);
    let fx = e.on_result(r, t(2.0));
    assert!(
        audits(&fx, "verification").is_empty(),
        "60 °C was read before the alert"
    );
    // Sent before the result, delivered after it: no proof either.
    let fx = e.on_heartbeat(hb(Some(60.0), 0, 1.5), t(2.5));
    assert!(audits(&fx, "verification").is_empty());
    let fx = e.on_heartbeat(hb(Some(88.0), 50, 3.0), t(3.0));
    assert!(audits(&fx, "verification").is_empty(), "still hot");
    let fx = e.tick(t(122.5));
    assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
    assert_eq!(
        e.breakers
            .failures(&BreakerKey::new("nova", "thermal:cpu", "throttle_50")),
        1
    );
}

#[test]
fn failed_verification_counts_and_escalates() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let sent = commands(&fx);
    e.on_result(result(&sent[0], ResultStatus::Succeeded), t(1.0));
    e.on_result(result(&sent[1], ResultStatus::Unsupported), t(1.0));
    e.on_heartbeat(hb(Some(88.0), 50, 100.0), t(100.0));
    assert!(e.tick(t(100.0)).is_empty());
    let fx = e.tick(t(121.5));
    let v = audits(&fx, "verification");
    assert_eq!(v[0].data["outcome"], "failed");
    // Said in plain words: the reading, not a program's Option.
    let said = e
        .status(t(121.5))
        .recent_actions
        .into_iter()
        .find(|r| r.action_id == sent[0].action_id)
        .unwrap()
        .message;
    assert_eq!(said, "cpu_temp still 88 after 120s");
    let key = BreakerKey::new("nova", "thermal:cpu", "throttle_50");
    assert_eq!(e.breakers.failures(&key), 1);
    let esc = alerts(&fx);
    assert_eq!(esc.len(), 1);
    assert_eq!(esc[0].severity, Severity::Emergency);
    let fx = e.on_alert(esc[0].clone(), t(122.0));
    let names: Vec<String> = commands(&fx).into_iter().map(|c| c.action_type).collect();
    assert_eq!(names, ["power_cap", "hand_over"]);
}

#[test]
fn breaker_opens_after_five_failures_and_half_opens() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(76.0), 0, 0.0), t(0.0));
    for i in 0..5 {
        let fx = e.on_alert(
            alert(Severity::Warning, 76.0 + f64::from(i), f64::from(i)),
            t(f64::from(i)),
        );
        let cmd = commands(&fx).remove(0);
        let fx = e.on_result(result(&cmd, ResultStatus::Failed), t(f64::from(i) + 0.5));
        if i == 4 {
            assert_eq!(audits(&fx, "breaker").len(), 1);
            assert_eq!(alerts(&fx)[0].kind, AlertKind::Circuit);
        }
    }
    let fx = e.on_alert(alert(Severity::Warning, 80.0, 10.0), t(10.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(audits(&fx, "skipped")[0].data["reason"], "circuit_open");
    assert_eq!(e.status(t(10.0)).open_circuits.len(), 1);
    // After the reset timeout: one trial.
    let fx = e.on_alert(alert(Severity::Warning, 81.0, 70.0), t(70.0));
    let trial = commands(&fx).remove(0);
    e.on_heartbeat(hb(Some(70.0), 10, 71.0), t(71.0));
    e.on_result(result(&trial, ResultStatus::Succeeded), t(71.0));
    assert_eq!(e.status(t(72.0)).open_circuits.len(), 1, "not held yet");
    e.on_heartbeat(hb(Some(70.0), 10, 81.0), t(81.0));
    assert!(
        e.status(t(82.0)).open_circuits.is_empty(),
        "trial success closes it"
    );
}

#[test]
fn offline_within_timeout_and_back() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    assert!(e.tick(t(29.9)).is_empty());
    let fx = e.tick(t(30.3));
    let a = alerts(&fx);
    assert_eq!(a[0].kind, AlertKind::HeartbeatMissing);
    assert_eq!(a[0].severity, Severity::Critical);
    assert_eq!(e.status(t(31.0)).nodes[0].status, NodeHealth::Offline);
    assert!(e.tick(t(40.0)).is_empty(), "reported once");
    let fx = e.on_heartbeat(hb(Some(50.0), 0, 50.0), t(50.0));
    assert_eq!(alerts(&fx)[0].severity, Severity::Normal);
}

#[test]
fn cool_node_gets_reset_throttle_after_clear_for() {
    let mut e = engine();
    assert!(commands(&e.on_heartbeat(hb(Some(70.0), 50, 0.0), t(0.0))).is_empty());
    assert!(
        commands(&e.on_heartbeat(hb(Some(60.0), 50, 1.0), t(1.0))).is_empty(),
        "72 is the clear level"
    );
    assert!(commands(&e.on_heartbeat(hb(Some(60.0), 50, 20.0), t(20.0))).is_empty());
    let fx = e.on_heartbeat(hb(Some(60.0), 50, 31.0), t(31.0));
    let cmds = commands(&fx);
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].action_type, "reset_throttle");
    assert!(
        commands(&e.on_heartbeat(hb(Some(60.0), 50, 40.0), t(40.0))).is_empty(),
        "not while pending"
    );
}

/// The seed config: warning 75, hysteresis 3 (clear below 72),
/// clear_for 30 s.
fn reset_commands(fx: &[Effect]) -> usize {
    let cmds = commands(fx);
    assert!(
        cmds.iter().all(|c| c.action_type == "reset_throttle"),
        "{cmds:?}"
    );
    cmds.len()
}

/// Exactly at the clear level (72.0) the agent still reports warning,
/// so the coordinator must not lift the throttle either.
#[test]
fn the_clear_level_itself_is_not_cool() {
    let mut e = engine();
    for i in 0..=10 {
        let at = f64::from(i) * 10.0;
        let fx = e.on_heartbeat(hb(Some(72.0), 50, at), t(at));
        assert_eq!(reset_commands(&fx), 0, "72.0 °C at {at} s is not cool");
    }
    e.on_heartbeat(hb(Some(71.9), 50, 101.0), t(101.0));
    let fx = e.on_heartbeat(hb(Some(71.9), 50, 131.0), t(131.0));
    assert_eq!(reset_commands(&fx), 1);
}

#[test]
fn throttled_node_inside_the_hysteresis_band_keeps_its_throttle() {
    let mut e = engine();
    // 73.5 °C: below warning (75), above the clear level (72), for 400 s,
    // thirteen times clear_for.
    for i in 0..=40 {
        let at = f64::from(i) * 10.0;
        let fx = e.on_heartbeat(hb(Some(73.5), 50, at), t(at));
        assert_eq!(reset_commands(&fx), 0, "73.5 °C at {at} s is not cool");
        assert!(audits(&fx, "decision").is_empty(), "{fx:?}");
    }
    // Below the clear level: reset after clear_for, exactly once.
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 401.0), t(401.0))),
        0
    );
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 420.0), t(420.0))),
        0
    );
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 430.9), t(430.9))),
        0
    );
    let fx = e.on_heartbeat(hb(Some(71.0), 50, 431.0), t(431.0));
    let cmds = commands(&fx);
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(cmds[0].action_type, "reset_throttle");
    assert_eq!(cmds[0].cause.as_deref(), Some("recovery"));
    let decisions = audits(&fx, "decision");
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].data["actions"], json!(["reset_throttle"]));
    // Still throttled until the result: nothing more while it is pending.
    for at in [432.0, 470.0, 500.0] {
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, at), t(at))),
            0
        );
    }
    e.on_result(result(&cmds[0], ResultStatus::Succeeded), t(501.0));
    // Unthrottled: nothing to reset, however long it stays cool.
    for i in 0..20 {
        let at = 502.0 + f64::from(i) * 10.0;
        assert_eq!(
            reset_commands(&e.on_heartbeat(hb(Some(60.0), 0, at), t(at))),
            0
        );
    }
}

#[test]
fn a_reading_inside_the_hysteresis_band_starts_clear_for_over() {
    let mut e = engine();
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 0.0), t(0.0))),
        0
    );
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(73.5), 50, 20.0), t(20.0))),
        0
    );
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 25.0), t(25.0))),
        0
    );
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 54.9), t(54.9))),
        0,
        "cool for 29.9 s since the warm reading"
    );
    assert_eq!(
        reset_commands(&e.on_heartbeat(hb(Some(71.0), 50, 55.0), t(55.0))),
        1
    );
}

#[test]
fn a_gpu_inside_the_hysteresis_band_keeps_the_throttle() {
    let mut e = engine();
    for i in 0..=20 {
        let at = f64::from(i) * 10.0;
        let mut h = hb(Some(60.0), 50, at);
        h.gpu_temp = Some(73.5);
        assert_eq!(reset_commands(&e.on_heartbeat(h, t(at))), 0, "at {at} s");
    }
    let mut h = hb(Some(60.0), 50, 201.0);
    h.gpu_temp = Some(71.0);
    assert_eq!(reset_commands(&e.on_heartbeat(h.clone(), t(201.0))), 0);
    assert_eq!(reset_commands(&e.on_heartbeat(h, t(231.0))), 1);
}

#[test]
fn snapshot_keeps_breakers_verifications_and_nodes() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let throttle = commands(&fx).remove(0);
    e.on_result(result(&throttle, ResultStatus::Succeeded), t(1.0));
    for i in 0..5 {
        e.breakers.record_failure(
            &BreakerKey::new("nova", "thermal:cpu", "spin_fans"),
            t(f64::from(i)),
        );
    }
    let text = serde_json::to_string(&e.snapshot()).unwrap();

    let mut restarted = engine();
    restarted.restore(serde_json::from_str(&text).unwrap(), t(50.0));
    let s = restarted.status(t(50.0));
    assert_eq!(s.open_circuits.len(), 1);
    assert_eq!(s.open_alerts.len(), 1);
    assert_eq!(s.nodes[0].name, "nova");
    // The restored node is reported offline if it never reports again.
    let fx = restarted.tick(t(81.0));
    assert!(alerts(&fx)
        .iter()
        .any(|a| a.kind == AlertKind::HeartbeatMissing));
    // The verification carries on: no heartbeat below 85 by its deadline -> failure.
    let fx = restarted.tick(t(121.5));
    assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
}

#[test]
fn storage_action_that_freed_nothing_is_a_failure() {
    let mut e = engine();
    let mut a = alert(Severity::Warning, 85.0, 0.0);
    a.kind = AlertKind::Storage;
    a.details = json!({"sensor": "/data", "percent": 85.0})
        .as_object()
        .unwrap()
        .clone();
    a.alert_id = "storage-1".into();
    let fx = e.on_alert(a, t(0.0));
    let cmd = commands(&fx).remove(0);
    assert_eq!(cmd.action_type, "cleanup_temp");
    assert_eq!(cmd.problem.as_deref(), Some("storage:/data"));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.details.insert("bytes_freed".into(), json!(0));
    let fx = e.on_result(r, t(1.0));
    assert_eq!(
        audits(&fx, "verification")[0].data["reason"],
        "freed_nothing"
    );
    assert_eq!(
        e.breakers
            .failures(&BreakerKey::new("nova", "storage:/data", "cleanup_temp")),
        1
    );
}

#[test]
fn dry_run_decides_and_audits_but_sends_nothing() {
    let cfg = Config {
        dry_run: true,
        ..seed_config()
    };
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(audits(&fx, "skipped").len(), 2);
    assert_eq!(audits(&fx, "decision").len(), 1);
}

#[test]
fn rate_limit_per_node() {
    let mut cfg = seed_config();
    cfg.coordinator.max_actions_per_node_per_minute = 2;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let fx = e.on_alert(alert(Severity::Emergency, 99.0, 0.0), t(0.0));
    assert_eq!(commands(&fx).len(), 2);
    let fx = e.on_alert(alert(Severity::Critical, 90.0, 1.0), t(1.0));
    assert!(commands(&fx).is_empty());
    assert!(audits(&fx, "skipped")
        .iter()
        .all(|a| a.data["reason"] == "rate_limited"));
}

fn node(n: &str) -> NodeName {
    NodeName::parse(n).unwrap()
}

/// A mesh healer heartbeat: `levels` of interfaces/peers, and the peer
/// nodes it watches.
fn mesh_hb(n: &str, at: f64, levels: Value) -> Heartbeat {
    Heartbeat {
        interval_seconds: Some(10.0),
        metadata: json!({"mesh": levels}).as_object().unwrap().clone(),
        ..Heartbeat::bare(format!("mesh-healer-{n}"), "mesh_healer", node(n), t(at))
    }
}

fn mesh_alert(n: &str, severity: Severity, details: Value, at: f64) -> Alert {
    let mut a = Alert {
        alert_id: String::new(),
        agent_id: format!("mesh-healer-{n}"),
        kind: AlertKind::Mesh,
        severity,
        node: node(n),
        message: format!("mesh {details}"),
        details: details.as_object().unwrap().clone(),
        timestamp: t(at),
    };
    a.ensure_id();
    a
}

fn tunnel_down(n: &str, at: f64) -> Alert {
    mesh_alert(
        n,
        Severity::Critical,
        json!({"event": "tunnel_down", "sensor": "wg0"}),
        at,
    )
}

fn unreachable(n: &str, peer: &str, at: f64) -> Alert {
    mesh_alert(
        n,
        Severity::Critical,
        json!({"event": "peer_unreachable", "sensor": peer, "peer_node": peer}),
        at,
    )
}

fn result_on(cmd: &Command, status: ResultStatus, details: Value) -> CommandResult {
    CommandResult {
        node: cmd.node.clone().unwrap(),
        details: details.as_object().cloned().unwrap_or_default(),
        ..result(cmd, status)
    }
}

fn names(fx: &[Effect]) -> Vec<String> {
    commands(fx).into_iter().map(|c| c.action_type).collect()
}

#[test]
fn mesh_actions_are_tried_one_at_a_time() {
    let mut e = engine();
    e.on_heartbeat(
        mesh_hb("nova", 0.0, json!({"interfaces": {"wg0": {"level": 2}}})),
        t(0.0),
    );
    let fx = e.on_alert(tunnel_down("nova", 0.0), t(0.0));
    assert_eq!(names(&fx), ["restart_wireguard"], "not both at once");
    let restart = commands(&fx).remove(0);
    assert_eq!(restart.problem.as_deref(), Some("mesh:wg0"));
    // A reminder while it is being healed starts nothing new.
    let fx = e.on_alert(tunnel_down("nova", 5.0), t(5.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(audits(&fx, "skipped")[0].data["reason"], "in_progress");
    // The restart fails (a corrupt config): next step.
    let fx = e.on_result(result_on(&restart, ResultStatus::Failed, json!({})), t(6.0));
    assert_eq!(names(&fx), ["regenerate_config"]);
    let regen = commands(&fx).remove(0);
    let fx = e.on_result(
        result_on(&regen, ResultStatus::Succeeded, json!({})),
        t(8.0),
    );
    assert!(
        audits(&fx, "verification").is_empty(),
        "waits for the handshake"
    );
    let fx = e.on_heartbeat(
        mesh_hb("nova", 9.0, json!({"interfaces": {"wg0": {"level": 1}}})),
        t(9.0),
    );
    assert!(
        audits(&fx, "verification").is_empty(),
        "up but stale is not healed"
    );
    let fx = e.on_heartbeat(
        mesh_hb("nova", 10.0, json!({"interfaces": {"wg0": {"level": 0}}})),
        t(10.0),
    );
    assert!(audits(&fx, "verification").is_empty(), "not held yet");
    let fx = e.on_heartbeat(
        mesh_hb("nova", 20.0, json!({"interfaces": {"wg0": {"level": 0}}})),
        t(20.0),
    );
    let v = audits(&fx, "verification");
    assert_eq!(v[0].data["outcome"], "succeeded");
    assert_eq!(v[0].data["metric"], "mesh_level");
    assert!(e.ladders.is_empty());
    assert_eq!(
        e.breakers
            .failures(&BreakerKey::new("nova", "mesh:wg0", "restart_wireguard")),
        1
    );
}

#[test]
fn mesh_fix_that_does_not_verify_moves_on_then_escalates() {
    let mut e = engine();
    e.on_heartbeat(
        mesh_hb("nova", 0.0, json!({"interfaces": {"wg0": {"level": 2}}})),
        t(0.0),
    );
    let restart = commands(&e.on_alert(tunnel_down("nova", 0.0), t(0.0))).remove(0);
    e.on_result(
        result_on(&restart, ResultStatus::Succeeded, json!({})),
        t(1.0),
    );
    e.on_heartbeat(
        mesh_hb("nova", 121.0, json!({"interfaces": {"wg0": {"level": 1}}})),
        t(121.0),
    );
    let fx = e.tick(t(122.0));
    assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
    assert_eq!(names(&fx), ["regenerate_config"]);
    assert!(alerts(&fx).is_empty(), "no escalation while steps are left");
    let regen = commands(&fx).remove(0);
    e.on_result(result_on(&regen, ResultStatus::Failed, json!({})), t(123.0));
    let fx = e.tick(t(124.0));
    assert!(fx.is_empty());
    // The last step failed: the ladder is exhausted and escalates.
    let esc: Vec<Alert> = {
        let mut e2 = engine();
        e2.on_heartbeat(mesh_hb("nova", 0.0, json!({})), t(0.0));
        let r = commands(&e2.on_alert(tunnel_down("nova", 0.0), t(0.0))).remove(0);
        let fx = e2.on_result(result_on(&r, ResultStatus::Failed, json!({})), t(1.0));
        let g = commands(&fx).remove(0);
        let fx = e2.on_result(result_on(&g, ResultStatus::Failed, json!({})), t(2.0));
        let esc = alerts(&fx);
        let fx = e2.on_alert(esc[0].clone(), t(3.0));
        assert!(commands(&fx).is_empty(), "no table entry for escalated");
        assert_eq!(e2.status(t(3.0)).open_alerts[0]["severity"], "emergency");
        esc
    };
    assert_eq!(esc.len(), 1);
    assert_eq!(esc[0].severity, Severity::Emergency);
    assert_eq!(esc[0].details["event"], "escalated");
    assert_eq!(esc[0].details["escalated_from"], "tunnel_down");
    assert_eq!(esc[0].problem(), "mesh:wg0");
}

#[test]
fn ping_that_finds_the_peer_ends_it_otherwise_failover() {
    let mut e = engine();
    let watch = json!({"peers": {"lyra": {"level": 2, "node": "lyra"}}});
    e.on_heartbeat(mesh_hb("nova", 0.0, watch.clone()), t(0.0));
    let fx = e.on_alert(unreachable("nova", "lyra", 0.0), t(0.0));
    assert_eq!(names(&fx), ["ping_peer"]);
    let ping = commands(&fx).remove(0);
    let fx = e.on_result(
        result_on(&ping, ResultStatus::Succeeded, json!({"resolved": false})),
        t(1.0),
    );
    assert_eq!(names(&fx), ["failover_route"]);
    let fo = commands(&fx).remove(0);
    e.on_result(result_on(&fo, ResultStatus::Succeeded, json!({})), t(2.0));
    let healed = json!({"peers": {"lyra": {"level": 0, "node": "lyra"}}});
    e.on_heartbeat(mesh_hb("nova", 3.0, healed.clone()), t(3.0));
    let fx = e.on_heartbeat(mesh_hb("nova", 13.0, healed), t(13.0));
    assert_eq!(audits(&fx, "verification")[0].data["outcome"], "succeeded");

    let mut e = engine();
    e.on_heartbeat(mesh_hb("nova", 0.0, watch), t(0.0));
    let ping = commands(&e.on_alert(unreachable("nova", "lyra", 0.0), t(0.0))).remove(0);
    let fx = e.on_result(
        result_on(&ping, ResultStatus::Succeeded, json!({"resolved": true})),
        t(1.0),
    );
    assert!(commands(&fx).is_empty());
    assert_eq!(audits(&fx, "decision")[0].data["reason"], "resolved");
}

#[test]
fn a_peer_down_from_every_node_is_a_node_problem() {
    let mut e = engine_with_topology(&[("a", &["c"]), ("b", &["c"])]);
    let watches_c = json!({"peers": {"c": {"level": 2, "node": "c"}}});
    e.on_heartbeat(mesh_hb("a", 0.0, watches_c.clone()), t(0.0));
    e.on_heartbeat(mesh_hb("b", 0.0, watches_c), t(0.0));
    e.on_heartbeat(mesh_hb("c", 0.0, json!({})), t(0.0));
    // Only a sees c down so far: a tunnel problem, healed on a.
    let fx = e.on_alert(unreachable("a", "c", 0.0), t(0.0));
    let ping_a = commands(&fx).remove(0);
    assert_eq!(ping_a.action_type, "ping_peer");
    // b sees it down too: c itself is the problem.
    let fx = e.on_alert(unreachable("b", "c", 1.0), t(1.0));
    assert!(commands(&fx).is_empty(), "no tunnel touched");
    let skipped = audits(&fx, "skipped");
    assert!(skipped.iter().all(|s| s.data["reason"] == "peer_node_down"));
    assert!(
        audits(&fx, "decision")
            .iter()
            .any(|d| d.data["reason"] == "peer_node_down"),
        "a's healing stopped"
    );
    let node_alert = alerts(&fx).remove(0);
    assert_eq!(node_alert.node.as_str(), "c");
    assert_eq!(node_alert.details["event"], "node_unreachable");
    assert_eq!(node_alert.problem(), "mesh:node");
    let fx = e.on_alert(node_alert, t(1.5));
    assert!(commands(&fx).is_empty());
    // a's ping comes back: no failover follows.
    let fx = e.on_result(
        result_on(&ping_a, ResultStatus::Succeeded, json!({"resolved": false})),
        t(2.0),
    );
    assert!(commands(&fx).is_empty(), "{:?}", names(&fx));
    // a reaches c again: c's node problem clears.
    let mut back = unreachable("a", "c", 3.0);
    back.severity = Severity::Normal;
    back.alert_id = "back".into();
    let fx = e.on_alert(back, t(3.0));
    let clear = alerts(&fx).remove(0);
    assert_eq!(
        (clear.node.as_str(), clear.severity),
        ("c", Severity::Normal)
    );
}

#[test]
fn a_peer_whose_node_is_offline_is_not_a_tunnel_problem() {
    let mut e = engine();
    e.on_heartbeat(mesh_hb("c", 0.0, json!({})), t(0.0));
    e.on_heartbeat(
        mesh_hb(
            "a",
            25.0,
            json!({"peers": {"c": {"node": "c", "level": 2}}}),
        ),
        t(25.0),
    );
    e.tick(t(31.0));
    let fx = e.on_alert(unreachable("a", "c", 31.0), t(31.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(audits(&fx, "skipped")[0].data["reason"], "peer_node_down");
    assert!(alerts(&fx).is_empty(), "the offline alert already says it");
}

#[test]
fn mesh_ladder_survives_a_restart() {
    let mut e = engine();
    e.on_heartbeat(mesh_hb("nova", 0.0, json!({})), t(0.0));
    let restart = commands(&e.on_alert(tunnel_down("nova", 0.0), t(0.0))).remove(0);
    let text = serde_json::to_string(&e.snapshot()).unwrap();
    let mut again = engine();
    again.restore(serde_json::from_str(&text).unwrap(), t(1.0));
    let fx = again.on_result(result_on(&restart, ResultStatus::Failed, json!({})), t(2.0));
    assert_eq!(names(&fx), ["regenerate_config"]);
    // Snapshots from before ladders existed still load.
    let old: EngineSnapshot = serde_json::from_str(
        r#"{"breakers":[],"pending":[],"verifications":[],"open_alerts":[],"recent":[],"nodes":[]}"#,
    )
    .unwrap();
    engine().restore(old, t(0.0));
}

// --- Guards that mutation testing found without a test of their own. ---

fn storage_alert(severity: Severity, percent: f64, at: f64) -> Alert {
    let mut a = Alert {
        alert_id: String::new(),
        agent_id: "storage-watcher-nova".into(),
        kind: AlertKind::Storage,
        severity,
        node: nova(),
        message: format!("/srv {percent}% full"),
        details: json!({"sensor": "/srv", "mount": "/srv", "percent": percent})
            .as_object()
            .unwrap()
            .clone(),
        timestamp: t(at),
    };
    a.ensure_id();
    a
}

fn storage_hb(percent: f64, at: f64) -> Heartbeat {
    Heartbeat {
        storage_percent: Some(percent),
        ..hb(Some(50.0), 0, at)
    }
}

fn skipped_reasons(fx: &[Effect]) -> Vec<String> {
    audits(fx, "skipped")
        .iter()
        .map(|a| a.data["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_same_action_still_pending_or_verifying_is_not_sent_again() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let first = commands(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0)));
    assert_eq!(first.len(), 2);
    // Still pending: a new critical alert sends nothing again.
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0));
    assert!(commands(&fx).is_empty(), "{fx:?}");
    assert_eq!(skipped_reasons(&fx), ["in_progress", "in_progress"]);
    // throttle_50 succeeded and is being verified: still in progress;
    // spin_fans answered unsupported: free to be sent again.
    let throttle = first
        .iter()
        .find(|c| c.action_type == "throttle_50")
        .unwrap();
    let mut r = result(throttle, ResultStatus::Succeeded);
    r.timestamp = t(2.0);
    e.on_result(r, t(2.0));
    let spin_fans = first.iter().find(|c| c.action_type == "spin_fans").unwrap();
    e.on_result(result(spin_fans, ResultStatus::Unsupported), t(2.0));
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 3.0), t(3.0));
    assert_eq!(skipped_reasons(&fx), ["in_progress"]);
    let sent: Vec<String> = commands(&fx).into_iter().map(|c| c.action_type).collect();
    assert_eq!(sent, ["spin_fans"]);
    // The same action for another problem (the GPU) is not held back.
    let mut gpu = alert(Severity::Critical, 90.0, 4.0);
    gpu.details.insert("sensor".into(), json!("gpu"));
    gpu.alert_id = "gpu-hot".into();
    let sent: Vec<String> = commands(&e.on_alert(gpu, t(4.0)))
        .into_iter()
        .map(|c| c.action_type)
        .collect();
    assert_eq!(sent, ["throttle_50", "spin_fans"]);
}

#[test]
fn a_rate_limited_trial_is_given_back_to_the_breaker() {
    let mut cfg = Config::default();
    cfg.circuit_breaker.max_failures = 1;
    cfg.circuit_breaker.reset_timeout_seconds = 10.0;
    cfg.coordinator.max_actions_per_node_per_minute = 1;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let cmd = commands(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0))).remove(0);
    e.on_result(result(&cmd, ResultStatus::Failed), t(1.0));
    let key = BreakerKey::new("nova", "thermal:cpu", "throttle_50");
    assert!(e.breakers.open().iter().any(|c| c.key == key));
    // Half-open at 20 s, but this minute's one action went out at 0 s:
    // the trial is rate limited.
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 20.0), t(20.0));
    assert_eq!(skipped_reasons(&fx), ["rate_limited"]);
    // The trial was given back: once the window passed, it is sent.
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 61.0), t(61.0));
    let cmds = commands(&fx);
    assert_eq!(cmds.len(), 1, "{fx:?}");
    assert_eq!(cmds[0].action_type, "throttle_50");
    // It is the only trial: another alert meanwhile is refused.
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 62.0), t(62.0));
    assert!(commands(&fx).is_empty());
}

#[test]
fn the_rate_window_is_a_minute() {
    let mut cfg = Config::default();
    cfg.coordinator.max_actions_per_node_per_minute = 1;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let cmd = commands(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0))).remove(0);
    e.on_result(result(&cmd, ResultStatus::Failed), t(1.0));
    assert_eq!(
        skipped_reasons(&e.on_alert(alert(Severity::Critical, 87.0, 59.0), t(59.0))),
        ["rate_limited"]
    );
    assert_eq!(
        commands(&e.on_alert(alert(Severity::Critical, 87.0, 60.5), t(60.5))).len(),
        1
    );
}

#[test]
fn a_forgotten_alert_is_handled_again() {
    let mut e = engine();
    let a = alert(Severity::Warning, 77.0, 0.0);
    assert!(!e.on_alert(a.clone(), t(0.0)).is_empty());
    assert!(e.on_alert(a.clone(), t(1.0)).is_empty(), "a duplicate");
    e.forget_handled(&a.alert_id);
    assert!(!audits(&e.on_alert(a, t(2.0)), "alert").is_empty());
}

#[test]
fn the_handled_window_forgets_the_oldest_id_only() {
    let mut e = engine();
    for i in 0..=HANDLED_WINDOW {
        assert!(e.mark_handled(&format!("a{i}")));
    }
    // a0 fell out of the window, a1 did not.
    assert!(e.mark_handled("a0"));
    assert!(!e.mark_handled("a2"));
}

#[test]
fn a_node_joins_once() {
    let mut e = engine();
    assert_eq!(
        audits(&e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0)), "node").len(),
        1
    );
    assert!(audits(&e.on_heartbeat(hb(Some(50.0), 0, 1.0), t(1.0)), "node").is_empty());
}

#[test]
fn recent_actions_keep_the_newest() {
    let mut cfg = seed_config();
    cfg.coordinator.recent_actions = 3;
    cfg.coordinator.max_actions_per_node_per_minute = 100;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let mut sent = Vec::new();
    for i in 0..3 {
        let mut a = alert(Severity::Critical, 87.0, f64::from(i));
        a.details.insert("sensor".into(), json!(format!("cpu{i}")));
        a.alert_id = format!("hot-{i}");
        sent.extend(commands(&e.on_alert(a, t(f64::from(i)))));
    }
    assert_eq!(sent.len(), 6);
    let recent: Vec<String> = e
        .status(t(5.0))
        .recent_actions
        .into_iter()
        .map(|r| r.action_id)
        .collect();
    let newest: Vec<String> = sent[3..].iter().map(|c| c.action_id.clone()).collect();
    assert_eq!(recent, newest);
}

#[test]
fn results_for_unknown_commands_are_counted() {
    let mut e = engine();
    let stray = Command {
        action_id: "stray".into(),
        action_type: "throttle_50".into(),
        parameters: Default::default(),
        timestamp: t(0.0),
        node: Some(nova()),
        deadline: None,
        cause: None,
        problem: None,
        term: None,
        level: None,
    };
    e.on_result(result(&stray, ResultStatus::Failed), t(0.0));
    assert_eq!(e.counters.get("results.unmatched"), 1);
    e.on_result(result(&stray, ResultStatus::Succeeded), t(0.0));
    assert_eq!(
        e.counters.get("results.unmatched"),
        1,
        "a late success is no news"
    );
}

#[test]
fn one_reset_at_a_time_with_a_deadline_ahead() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(60.0), 50, 0.0), t(0.0));
    let fx = e.on_heartbeat(hb(Some(60.0), 50, 31.0), t(31.0));
    let reset = commands(&fx).remove(0);
    assert_eq!(reset.action_type, "reset_throttle");
    assert_eq!(reset.deadline, Some(t(31.0 + 60.0)));
    // Still throttled while the reset is pending: no second reset.
    for at in [62.0, 93.0, 124.0] {
        assert!(commands(&e.on_heartbeat(hb(Some(60.0), 50, at), t(at))).is_empty());
    }
}

#[test]
fn offline_alert_says_how_long_the_node_was_silent() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    let fx = e.tick(t(45.0));
    let a = &alerts(&fx)[0];
    assert_eq!(a.details["silent_seconds"], 45.0);
    let s = e.status(t(45.0));
    assert!(!s.agents[0].online);
    e.on_heartbeat(hb(Some(50.0), 0, 46.0), t(46.0));
    assert!(e.status(t(46.0)).agents[0].online);
}

#[test]
fn storage_fixes_are_verified_against_the_storage_thresholds() {
    let mut e = engine();
    e.on_heartbeat(storage_hb(92.0, 0.0), t(0.0));
    let fx = e.on_alert(storage_alert(Severity::Critical, 92.0, 0.0), t(0.0));
    let logs = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "cleanup_logs")
        .unwrap();
    let mut r = result(&logs, ResultStatus::Succeeded);
    r.details.insert("bytes_freed".into(), json!(1_000_000));
    r.timestamp = t(1.0);
    e.on_result(r, t(1.0));
    // Storage's critical threshold is 90 % (thermal's is 85): 91 % does
    // not verify, 87 % does.
    let fx = e.on_heartbeat(storage_hb(91.0, 2.0), t(2.0));
    assert!(
        audits(&fx, "verification").is_empty(),
        "91 % is not below 90 %"
    );
    e.on_heartbeat(storage_hb(87.0, 3.0), t(3.0));
    let fx = e.on_heartbeat(storage_hb(87.0, 13.0), t(13.0));
    let v = audits(&fx, "verification");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].data["outcome"], "succeeded");
    assert_eq!(v[0].data["below"], 90.0);
}

#[test]
fn a_half_open_trial_is_audited() {
    let mut cfg = Config::default();
    cfg.circuit_breaker.max_failures = 1;
    cfg.circuit_breaker.reset_timeout_seconds = 10.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let cmd = commands(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0))).remove(0);
    let fx = e.on_result(result(&cmd, ResultStatus::Failed), t(1.0));
    assert_eq!(audits(&fx, "breaker")[0].data["state"], "open");
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 12.0), t(12.0));
    let states: Vec<&Value> = audits(&fx, "breaker")
        .iter()
        .map(|a| &a.data["state"])
        .collect();
    assert_eq!(states, [&json!("half_open")]);
    assert_eq!(commands(&fx).len(), 1);
    // The trial's failure opens it again, its success would close it.
    let trial = commands(&fx).remove(0);
    let fx = e.on_result(result(&trial, ResultStatus::Failed), t(13.0));
    assert_eq!(audits(&fx, "breaker")[0].data["state"], "open");
}

#[test]
fn another_pending_command_does_not_hold_back_the_reset() {
    let mut e = engine();
    e.on_heartbeat(storage_hb(92.0, 0.0), t(0.0));
    // A storage cleanup is still pending on the node...
    let fx = e.on_alert(storage_alert(Severity::Critical, 92.0, 0.0), t(0.0));
    assert!(!commands(&fx).is_empty());
    // ... while the throttled CPU has been cool for clear_for.
    e.on_heartbeat(
        Heartbeat {
            storage_percent: Some(92.0),
            ..hb(Some(60.0), 50, 1.0)
        },
        t(1.0),
    );
    let fx = e.on_heartbeat(
        Heartbeat {
            storage_percent: Some(92.0),
            ..hb(Some(60.0), 50, 32.0)
        },
        t(32.0),
    );
    let sent: Vec<String> = commands(&fx).into_iter().map(|c| c.action_type).collect();
    assert_eq!(sent, ["reset_throttle"]);
}

#[test]
fn an_unsupported_trial_gives_the_trial_back() {
    let mut cfg = seed_config();
    cfg.circuit_breaker.max_failures = 1;
    cfg.circuit_breaker.reset_timeout_seconds = 10.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let spin_fans = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "spin_fans")
        .unwrap();
    // An agent that once failed it opens its circuit...
    e.on_result(result(&spin_fans, ResultStatus::Failed), t(1.0));
    // ... half-open at 12 s: the trial goes out and is answered unsupported.
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 12.0), t(12.0));
    let trial = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "spin_fans")
        .unwrap();
    e.on_result(result(&trial, ResultStatus::Unsupported), t(13.0));
    // Nobody implements it: no verdict on the fix, so the trial is free again.
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 14.0), t(14.0));
    assert!(
        commands(&fx).iter().any(|c| c.action_type == "spin_fans"),
        "{fx:?}"
    );
}

// --- Results bound to their node, results that never come, ids every
// coordinator derives alike, and the nodes' clocks. ---

/// A thermal heartbeat from node `n`, stamped `sent` by its agent.
fn hb_from(n: &str, cpu: f64, throttle: u8, sent: Timestamp) -> Heartbeat {
    Heartbeat {
        agent_id: format!("thermal-sentinel-{n}"),
        node: node(n),
        timestamp: sent,
        ..hb(Some(cpu), throttle, 0.0)
    }
}

/// A critical CPU alert from node `n`, stamped `sent` by its agent.
fn hot_on(n: &str, sent: Timestamp) -> Alert {
    let mut a = alert(Severity::Critical, 87.0, 0.0);
    a.agent_id = format!("thermal-sentinel-{n}");
    a.node = node(n);
    a.timestamp = sent;
    a.alert_id = String::new();
    a.ensure_id();
    a
}

/// `cmd`'s result as node `from` sends it.
fn result_from(from: &str, cmd: &Command, status: ResultStatus) -> CommandResult {
    CommandResult {
        node: node(from),
        agent_id: format!("thermal-sentinel-{from}"),
        ..result(cmd, status)
    }
}

fn recent_state(e: &Engine, action_id: &str) -> ActionState {
    e.status(t(0.0))
        .recent_actions
        .iter()
        .find(|r| r.action_id == action_id)
        .map(|r| r.state)
        .unwrap()
}

fn throttle_50(fx: &[Effect]) -> Command {
    commands(fx)
        .into_iter()
        .find(|c| c.action_type == "throttle_50")
        .unwrap()
}

#[test]
fn a_result_from_another_node_touches_nothing() {
    let mut e = engine();
    e.on_heartbeat(hb_from("a", 50.0, 0, t(0.0)), t(0.0));
    e.on_heartbeat(hb_from("b", 87.0, 0, t(0.0)), t(0.0));
    let cmd = throttle_50(&e.on_alert(hot_on("b", t(0.0)), t(0.0)));
    assert_eq!(cmd.node.as_ref().map(NodeName::as_str), Some("b"));
    let key = BreakerKey::new("b", "thermal:cpu", "throttle_50");
    // Node a forges failures for b's command, more than open a breaker,
    // then a success and a replay refusal.
    let mut forged = vec![ResultStatus::Failed; 6];
    forged.extend([ResultStatus::Expired, ResultStatus::Succeeded]);
    for (i, status) in forged.into_iter().enumerate() {
        let fx = e.on_result(result_from("a", &cmd, status), t(1.0 + i as f64));
        assert!(audits(&fx, "result").is_empty(), "{fx:?}");
        assert!(alerts(&fx).is_empty() && commands(&fx).is_empty());
        let rejected = audits(&fx, "rejected");
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].data["reason"], "foreign_node");
        assert_eq!(rejected[0].data["sent_to"], "b");
        assert_eq!(rejected[0].data["from"], "a");
    }
    assert_eq!(e.counters.get("results.foreign"), 8);
    assert_eq!(e.counters.get("results.failed"), 0);
    assert_eq!(e.breakers.failures(&key), 0);
    assert!(e.status(t(9.0)).open_circuits.is_empty());
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::Sent);
    assert!(e.pending.contains_key(&cmd.action_id), "still pending");
    assert!(e.verifications.is_empty(), "a's success verifies nothing");
    // b's own result closes it.
    let fx = e.on_result(result_from("b", &cmd, ResultStatus::Failed), t(10.0));
    assert_eq!(audits(&fx, "result").len(), 1);
    assert!(!e.pending.contains_key(&cmd.action_id));
    assert_eq!(e.breakers.failures(&key), 1);
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::Failed);
    // Once answered, a forgery still changes nothing.
    let fx = e.on_result(result_from("a", &cmd, ResultStatus::Succeeded), t(11.0));
    assert_eq!(audits(&fx, "rejected").len(), 1);
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::Failed);
    assert_eq!(e.counters.get("results.foreign"), 9);
}

#[test]
fn a_forged_success_does_not_stand_in_for_the_real_one() {
    let mut e = engine();
    e.on_heartbeat(hb_from("a", 50.0, 0, t(0.0)), t(0.0));
    e.on_heartbeat(hb_from("b", 87.0, 0, t(0.0)), t(0.0));
    let cmd = throttle_50(&e.on_alert(hot_on("b", t(0.0)), t(0.0)));
    e.on_result(result_from("a", &cmd, ResultStatus::Succeeded), t(1.0));
    // b's real success is the one that starts the verification.
    let mut real = result_from("b", &cmd, ResultStatus::Succeeded);
    real.timestamp = t(2.0);
    e.on_result(real, t(2.0));
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::Succeeded);
    e.on_heartbeat(hb_from("b", 70.0, 50, t(3.0)), t(3.0));
    let fx = e.on_heartbeat(hb_from("b", 70.0, 50, t(13.0)), t(13.0));
    assert_eq!(audits(&fx, "verification")[0].data["outcome"], "succeeded");
}

#[test]
fn a_replay_refusal_closes_nothing_and_is_no_failure() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0)));
    let mut replay = result(&cmd, ResultStatus::Rejected);
    replay.message = "action_id already executed (replay)".into();
    let fx = e.on_result(replay, t(1.0));
    assert_eq!(audits(&fx, "result")[0].data["replay"], true);
    assert_eq!(e.counters.get("results.replay"), 1);
    assert_eq!(e.counters.get("breaker.failures"), 0);
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::Sent);
    // Still in progress: the same alert again sends nothing.
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 2.0), t(2.0));
    assert!(!names(&fx).contains(&"throttle_50".to_string()));
    // The first execution's result closes it.
    e.on_result(result(&cmd, ResultStatus::Failed), t(3.0));
    assert!(!e.pending.contains_key(&cmd.action_id));
    assert_eq!(e.counters.get("breaker.failures"), 1);
    // Any other refusal is a failure.
    let other = throttle_50(&e.on_alert(alert(Severity::Critical, 89.0, 4.0), t(4.0)));
    let mut refused = result(&other, ResultStatus::Rejected);
    refused.message = "invalid parameters".into();
    e.on_result(refused, t(5.0));
    assert_eq!(e.counters.get("breaker.failures"), 2);
}

#[test]
fn a_command_without_a_result_is_closed_after_its_deadline_and_grace() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let sent = commands(&fx);
    assert_eq!(sent.len(), 2);
    e.on_heartbeat(hb(Some(87.0), 0, 85.0), t(85.0));
    // Deadline 60 s, grace 30 s: still waiting at 90 s.
    assert!(audits(&e.tick(t(90.0)), "no_result").is_empty());
    let fx = e.tick(t(90.5));
    let lost = audits(&fx, "no_result");
    assert_eq!(lost.len(), 2);
    assert_eq!(lost[0].data["grace_seconds"], 30.0);
    assert_eq!(e.counters.get("results.no_result"), 2);
    for c in &sent {
        assert_eq!(recent_state(&e, &c.action_id), ActionState::NoResult);
        let key = BreakerKey::new("nova", "thermal:cpu", &c.action_type);
        assert_eq!(e.breakers.failures(&key), 1, "an unknown outcome fails");
    }
    assert!(audits(&e.tick(t(91.0)), "no_result").is_empty(), "once");
    // No longer in progress: a later alert acts.
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 92.0), t(92.0));
    assert_eq!(names(&fx), ["throttle_50", "spin_fans"]);
}

/// A command closed as `no_result` stays news for its node until its late
/// answer comes, however many commands the fleet sent since (the fleet's
/// recent actions, 50, would have let it go), and across a restart from
/// the node's record; another node's result under its id is no news.
#[test]
fn a_late_answer_stays_news_after_the_fleets_recent_actions_moved_on() {
    let mut cfg = seed_config();
    cfg.coordinator.recent_actions = 1;
    let mut e = Engine::new(cfg.clone(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let sent = commands(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0)));
    assert_eq!(sent.len(), 2);
    e.on_heartbeat(hb(Some(87.0), 0, 85.0), t(85.0));
    assert_eq!(audits(&e.tick(t(90.5)), "no_result").len(), 2);
    // Only one recent action is kept: the first command is gone from it.
    assert!(e.recent.iter().all(|r| r.action_id != sent[0].action_id));
    let mut late = result(&sent[0], ResultStatus::Succeeded);
    assert!(e.result_is_news(&late), "a late answer is news");
    let mut foreign = late.clone();
    foreign.node = NodeName::parse("lyra").unwrap();
    assert!(!e.result_is_news(&foreign), "not from another node");
    assert_eq!(e.foreign_target(&foreign).as_deref(), Some("nova"));
    // The late answer most often comes as the agent's recorded outcome
    // given again: news, and not counted a replay.
    let mut given_again = result(&sent[1], ResultStatus::Failed);
    given_again.details.insert("replayed".into(), json!(true));
    assert!(e.result_is_news(&given_again));
    let fx = e.on_result(given_again.clone(), t(95.0));
    assert_eq!(audits(&fx, "result").len(), 1);
    assert_eq!(e.counters.get("results.replay"), 0);
    assert!(!e.result_is_news(&given_again), "answered once");
    // What the node's record keeps, a new leader keeps.
    let mut again = Engine::new(cfg, Counters::default(), "test");
    again.restore(e.node_snapshot(&nova()), t(100.0));
    assert!(again.result_is_news(&late));
    late.timestamp = t(101.0);
    let fx = again.on_result(late.clone(), t(101.0));
    assert_eq!(audits(&fx, "result").len(), 1);
    assert!(!again.result_is_news(&late), "answered once");
    assert!(again
        .node_snapshot(&nova())
        .unanswered
        .iter()
        .all(|u| u.action_id != sent[0].action_id));
}

/// An agent's refusal of a copy it could not trust or read, under a real
/// command's id, closes nothing: no breaker failure, and the real answer
/// that follows is news and closes the command.
#[test]
fn a_refused_copy_under_a_real_commands_id_closes_nothing() {
    use skos_core::protocol::{REASON_MALFORMED, REASON_UNTRUSTED};
    for reason in [REASON_UNTRUSTED, REASON_MALFORMED] {
        let mut e = engine();
        e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
        let cmd = commands(&e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0))).remove(0);
        let mut copy = result(&cmd, ResultStatus::Rejected);
        copy.message = "refused: command is not signed".into();
        copy.details.insert("reason".into(), json!(reason));
        assert!(!e.result_is_news(&copy), "{reason}");
        assert_eq!(Engine::no_news_reason(&copy), reason);
        let fx = e.on_result(copy, t(2.0));
        assert_eq!(audits(&fx, "result").len(), 1, "audited");
        assert_eq!(e.counters.get("breaker.failures"), 0, "{reason}");
        assert_eq!(e.counters.get(&format!("results.refused.{reason}")), 1);
        assert_eq!(e.counters.get("results.unmatched"), 0);
        let real = result(&cmd, ResultStatus::Succeeded);
        assert!(e.result_is_news(&real), "{reason}: the real answer");
        e.on_result(real, t(3.0));
        assert!(!e.pending.contains_key(&cmd.action_id), "closed by it");
    }
}

/// An answer given again with the recorded outcome (`replayed: true`)
/// closes a command still open (its first answer was lost); with nothing
/// open it is counted a replay, not unmatched.
#[test]
fn an_answer_given_again_closes_an_open_command_and_is_otherwise_a_replay() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let cmd = commands(&e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0))).remove(0);
    let mut again = result(&cmd, ResultStatus::Rejected);
    again.message = "invalid parameters".into();
    again.details.insert("replayed".into(), json!(true));
    assert!(e.result_is_news(&again));
    e.on_result(again.clone(), t(2.0));
    assert!(!e.pending.contains_key(&cmd.action_id));
    assert_eq!(e.counters.get("breaker.failures"), 1);
    assert_eq!(e.counters.get("results.replay"), 0);
    // Once more: nothing is open.
    assert!(!e.result_is_news(&again));
    assert_eq!(Engine::no_news_reason(&again), "replay");
    e.count_result(&again, false);
    assert_eq!(e.counters.get("results.replay"), 1);
    assert_eq!(e.counters.get("results.unmatched"), 0);
}

#[test]
fn a_mesh_step_without_a_result_moves_to_the_next_step() {
    let mut e = engine();
    e.on_heartbeat(mesh_hb("nova", 0.0, json!({})), t(0.0));
    let fx = e.on_alert(tunnel_down("nova", 0.0), t(0.0));
    assert_eq!(names(&fx), ["restart_wireguard"]);
    e.on_heartbeat(mesh_hb("nova", 90.0, json!({})), t(90.0));
    let fx = e.tick(t(90.5));
    assert_eq!(audits(&fx, "no_result").len(), 1);
    assert_eq!(names(&fx), ["regenerate_config"]);
}

#[test]
fn a_pending_command_from_an_old_snapshot_gets_a_deadline_on_restore() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let mut snap = serde_json::to_value(e.snapshot()).unwrap();
    for p in snap["pending"].as_array_mut().unwrap() {
        let p = p[1].as_object_mut().unwrap();
        p.remove("deadline");
        p.remove("sent_at");
    }
    let mut again = engine();
    again.restore(serde_json::from_value(snap).unwrap(), t(50.0));
    assert!(audits(&again.tick(t(140.0)), "no_result").is_empty());
    assert_eq!(audits(&again.tick(t(140.5)), "no_result").len(), 2);
}

/// Heartbeats from a throttled, cool nova every 10 s from `from` to `to`
/// (agent time = receipt time); the commands they led to.
fn cool_throttled(e: &mut Engine, from: f64, to: f64) -> Vec<Command> {
    let mut out = Vec::new();
    let mut at = from;
    while at <= to {
        out.extend(commands(&e.on_heartbeat(hb(Some(60.0), 50, at), t(at))));
        at += 10.0;
    }
    out
}

#[test]
fn a_lost_reset_is_sent_again_until_a_result_confirms_it() {
    let mut e = engine();
    let first = cool_throttled(&mut e, 0.0, 30.0);
    assert_eq!(first.len(), 1);
    let origin = t(0.0).timestamp_millis();
    assert_eq!(
        first[0].action_id,
        format!("nova:thermal:reset_throttle:{origin}:1")
    );
    assert!(cool_throttled(&mut e, 40.0, 120.0).is_empty(), "pending");
    // Sent at 30 s, deadline 90 s, grace 30 s: no result by 120 s.
    let fx = e.tick(t(120.5));
    assert_eq!(audits(&fx, "no_result").len(), 1);
    let second = commands(&fx);
    assert_eq!(second.len(), 1, "{fx:?}");
    assert_eq!(
        second[0].action_id,
        format!("nova:thermal:reset_throttle:{origin}:2")
    );
    assert_eq!(second[0].cause.as_deref(), Some("recovery"));
    assert!(audits(&fx, "decision")
        .iter()
        .any(|d| d.data["attempt"] == 2 && d.data["after"] == "no_result"));
    // Failed, then expired: each time another try.
    let fx = e.on_result(result(&second[0], ResultStatus::Failed), t(121.0));
    let third = commands(&fx);
    assert!(third[0].action_id.ends_with(":3"), "{third:?}");
    let fx = e.on_result(result(&third[0], ResultStatus::Expired), t(122.0));
    let fourth = commands(&fx);
    assert!(fourth[0].action_id.ends_with(":4"), "{fourth:?}");
    // A success ends it.
    assert!(
        commands(&e.on_result(result(&fourth[0], ResultStatus::Succeeded), t(123.0))).is_empty()
    );
    assert!(e.reset_retries.is_empty());
    for i in 0..10 {
        let at = 124.0 + f64::from(i) * 10.0;
        assert!(commands(&e.on_heartbeat(hb(Some(60.0), 0, at), t(at))).is_empty());
        assert!(commands(&e.tick(t(at))).is_empty());
    }
}

#[test]
fn a_held_reset_goes_out_once_the_rate_limit_allows() {
    let mut cfg = seed_config();
    cfg.coordinator.max_actions_per_node_per_minute = 1;
    cfg.coordinator.command_deadline = 10.0;
    cfg.coordinator.result_grace_seconds = 5.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let first = cool_throttled(&mut e, 0.0, 30.0);
    assert_eq!(first.len(), 1);
    // No result by 45 s; this minute's one command went out at 30 s.
    let fx = e.tick(t(45.5));
    assert_eq!(audits(&fx, "no_result").len(), 1);
    assert!(commands(&fx).is_empty());
    assert_eq!(skipped_reasons(&fx), ["rate_limited"]);
    for at in [50.0, 60.0, 80.0, 90.0] {
        e.on_heartbeat(hb(Some(60.0), 50, at), t(at));
        let fx = e.tick(t(at));
        assert!(fx.is_empty(), "held quietly at {at}: {fx:?}");
    }
    let fx = e.tick(t(90.5));
    let again = commands(&fx);
    assert_eq!(again.len(), 1);
    assert!(again[0].action_id.ends_with(":2"));
}

#[test]
fn a_reset_is_not_sent_again_once_the_node_is_hot() {
    let mut e = engine();
    let first = cool_throttled(&mut e, 0.0, 30.0);
    assert_eq!(first.len(), 1);
    e.on_heartbeat(hb(Some(80.0), 50, 100.0), t(100.0));
    let fx = e.tick(t(120.5));
    assert_eq!(audits(&fx, "no_result").len(), 1);
    assert!(
        commands(&fx).is_empty(),
        "lifting the throttle of a hot node"
    );
    assert!(audits(&fx, "decision")
        .iter()
        .any(|d| d.data["outcome"] == "the node is no longer cool"));
    assert!(e.reset_retries.is_empty());
    // Cool again: a new cool period, a new first try.
    let next = cool_throttled(&mut e, 130.0, 160.0);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].action_id,
        format!(
            "nova:thermal:reset_throttle:{}:1",
            t(130.0).timestamp_millis()
        )
    );
}

#[test]
fn a_waiting_reset_survives_a_restart() {
    let mut e = engine();
    cool_throttled(&mut e, 0.0, 120.0);
    e.tick(t(120.5));
    // The retry went out; say the rate limit had held it instead.
    let sent = e.pending.keys().next().cloned().unwrap();
    let attempt = e.pending.remove(&sent).unwrap().reset.unwrap();
    e.reset_retries.insert(
        nova(),
        ResetRetry {
            next: attempt,
            held: None,
        },
    );
    let text = serde_json::to_string(&e.snapshot()).unwrap();
    let mut again = engine();
    again.restore(serde_json::from_str(&text).unwrap(), t(121.0));
    let fx = again.tick(t(121.0));
    assert_eq!(commands(&fx)[0].action_id, sent);
}

/// Two coordinators see the same heartbeats, each at its own time.
#[test]
fn two_engines_give_the_same_ids_whenever_they_receive() {
    let mut a = engine();
    let mut b = engine();
    let mut resets = (Vec::new(), Vec::new());
    for i in 0..=4 {
        let sent = f64::from(i) * 10.0;
        let h = hb(Some(60.0), 50, sent);
        resets
            .0
            .extend(commands(&a.on_heartbeat(h.clone(), t(sent + 0.2))));
        resets.1.extend(commands(
            &b.on_heartbeat(h, t(sent + 1.7 - f64::from(i) * 0.3)),
        ));
    }
    assert_eq!(resets.0.len(), 1);
    assert_eq!(resets.1.len(), 1);
    assert_eq!(resets.0[0].action_id, resets.1[0].action_id);
    for i in 5..=14 {
        let sent = f64::from(i) * 10.0;
        let h = hb(Some(60.0), 50, sent);
        a.on_heartbeat(h.clone(), t(sent + 0.2));
        b.on_heartbeat(h, t(sent + 0.9));
    }
    // Both lose it: the second tries match too.
    let retry_a = commands(&a.tick(t(150.0)));
    let retry_b = commands(&b.tick(t(152.5)));
    assert_eq!(retry_a.len(), 1);
    assert_eq!(retry_a[0].action_id, retry_b[0].action_id);
    // The node falls silent: the same offline alert, then the same "back".
    let off_a = alerts(&a.tick(t(200.0)));
    let off_b = alerts(&b.tick(t(203.0)));
    assert_eq!(off_a[0].kind, AlertKind::HeartbeatMissing);
    assert_eq!(off_a[0].alert_id, off_b[0].alert_id);
    assert!(off_a[0]
        .alert_id
        .contains(&t(140.0).timestamp_millis().to_string()));
    let h = hb(Some(60.0), 0, 300.0);
    let back_a = alerts(&a.on_heartbeat(h.clone(), t(300.1)));
    let back_b = alerts(&b.on_heartbeat(h, t(301.0)));
    assert_eq!(back_a[0].severity, Severity::Normal);
    assert_eq!(back_a[0].alert_id, back_b[0].alert_id);
    assert_ne!(back_a[0].alert_id, off_a[0].alert_id);
    // A skewed clock: the same clock_skew alert.
    let skewed = hb(Some(60.0), 0, 400.0 + 3600.0);
    let skew_a = alerts(&a.on_heartbeat(skewed.clone(), t(400.2)));
    let skew_b = alerts(&b.on_heartbeat(skewed, t(400.9)));
    assert_eq!(skew_a[0].kind, AlertKind::ClockSkew);
    assert_eq!(skew_a[0].alert_id, skew_b[0].alert_id);
}

#[test]
fn commands_are_stamped_in_the_node_clock() {
    for offset in [3600.0, -3600.0, 0.0] {
        let mut e = engine();
        e.on_heartbeat(hb_from("b", 87.0, 0, t(offset)), t(0.0));
        let cmd = throttle_50(&e.on_alert(hot_on("b", t(offset + 1.0)), t(1.0)));
        assert_eq!(cmd.timestamp, t(1.0 + offset), "offset {offset}");
        assert_eq!(cmd.deadline, Some(t(61.0 + offset)), "offset {offset}");
        // The coordinator's own deadline is in its clock.
        assert!(audits(&e.tick(t(91.0)), "no_result").is_empty());
        assert_eq!(audits(&e.tick(t(91.5)), "no_result").len(), 2);
    }
    // A node not heard from yet: no offset.
    let mut e = engine();
    let cmd = throttle_50(&e.on_alert(hot_on("c", t(0.0)), t(0.0)));
    assert_eq!(cmd.deadline, Some(t(60.0)));
}

#[test]
fn the_reset_deadline_is_in_the_node_clock_too() {
    let mut e = engine();
    let mut sent = Vec::new();
    for i in 0..=3 {
        let at = f64::from(i) * 10.0;
        sent.extend(commands(
            &e.on_heartbeat(hb(Some(60.0), 50, at - 3600.0), t(at)),
        ));
    }
    assert_eq!(sent[0].action_type, "reset_throttle");
    assert_eq!(sent[0].deadline, Some(t(30.0 - 3600.0 + 60.0)));
    assert_eq!(
        sent[0].action_id,
        format!(
            "nova:thermal:reset_throttle:{}:1",
            t(-3600.0).timestamp_millis()
        )
    );
}

#[test]
fn the_offset_is_the_least_delayed_of_the_last_samples() {
    let mut e = engine();
    let offset = |e: &Engine| e.status(t(0.0)).nodes[0].clock_offset_seconds;
    // Agent 2 s ahead; transit 0.5 s, then one heartbeat held up 20 s.
    e.on_heartbeat(hb(Some(50.0), 0, 2.0), t(0.5));
    assert_eq!(offset(&e), Some(1.5));
    e.on_heartbeat(hb(Some(50.0), 0, 12.0), t(30.0));
    assert_eq!(offset(&e), Some(1.5), "a late heartbeat does not move it");
    e.on_heartbeat(hb(Some(50.0), 0, 22.0), t(20.1));
    assert_eq!(offset(&e), Some(1.9));
    // The clock is set back by an hour: it shows once the samples from
    // before have left the window.
    for i in 0..4 {
        let at = 30.0 + f64::from(i);
        e.on_heartbeat(hb(Some(50.0), 0, at - 3600.0), t(at));
        assert_eq!(offset(&e), Some(1.9), "sample {i}");
    }
    e.on_heartbeat(hb(Some(50.0), 0, 34.0 - 3600.0), t(34.0));
    assert_eq!(offset(&e), Some(-3600.0));
}

#[test]
fn clock_skew_is_raised_once_and_cleared_once() {
    let mut e = engine();
    let skew = |fx: &[Effect]| -> Vec<Alert> {
        alerts(fx)
            .into_iter()
            .filter(|a| a.kind == AlertKind::ClockSkew)
            .collect()
    };
    // Within 30 s: nothing.
    assert!(skew(&e.on_heartbeat(hb(Some(50.0), 0, 29.0), t(0.0))).is_empty());
    assert!(!e.status(t(0.0)).nodes[0].clock_skewed);
    let raised = skew(&e.on_heartbeat(hb(Some(50.0), 0, 10.0 + 3600.0), t(10.0)));
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].severity, Severity::Warning);
    assert_eq!(raised[0].details["offset_seconds"], 3600.0);
    assert_eq!(raised[0].problem(), "clock_skew:clock");
    // Handled like any alert: audited, open, no action.
    let fx = e.on_alert(raised[0].clone(), t(10.5));
    assert!(commands(&fx).is_empty());
    let s = e.status(t(11.0));
    assert!(s.nodes[0].clock_skewed);
    assert_eq!(s.nodes[0].clock_offset_seconds, Some(3600.0));
    assert_eq!(s.nodes[0].status, NodeHealth::Degraded);
    assert!(
        s.render().contains("clock +3600.0s SKEWED"),
        "{}",
        s.render()
    );
    for i in 0..10 {
        let at = 20.0 + f64::from(i) * 10.0;
        assert!(skew(&e.on_heartbeat(hb(Some(50.0), 0, at + 3600.0), t(at))).is_empty());
    }
    // Fixed: cleared once the window holds only the new offset.
    let mut cleared = Vec::new();
    for i in 0..10 {
        let at = 200.0 + f64::from(i) * 10.0;
        cleared.extend(skew(&e.on_heartbeat(hb(Some(50.0), 0, at), t(at))));
    }
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].severity, Severity::Normal);
    e.on_alert(cleared[0].clone(), t(300.0));
    let s = e.status(t(300.0));
    assert!(!s.nodes[0].clock_skewed);
    assert_eq!(s.nodes[0].status, NodeHealth::Healthy);
    // A node behind counts the same.
    let behind = skew(&e.on_heartbeat(hb(Some(50.0), 0, 310.0 - 45.0), t(310.0)));
    assert!(
        behind.is_empty(),
        "the larger samples are still in the window"
    );
    for i in 1..5 {
        let at = 310.0 + f64::from(i);
        let fx = e.on_heartbeat(hb(Some(50.0), 0, at - 45.0), t(at));
        if i == 4 {
            let a = skew(&fx);
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].details["offset_seconds"], -45.0);
            assert!(a[0].message.contains("behind"), "{}", a[0].message);
        }
    }
}

#[test]
fn an_open_clock_skew_survives_a_restart_without_a_second_alert() {
    let mut e = engine();
    let fx = e.on_heartbeat(hb(Some(50.0), 0, 3600.0), t(0.0));
    let raised = alerts(&fx);
    e.on_alert(raised[0].clone(), t(0.5));
    let text = serde_json::to_string(&e.snapshot()).unwrap();
    let mut again = engine();
    again.restore(serde_json::from_str(&text).unwrap(), t(1.0));
    assert!(alerts(&again.on_heartbeat(hb(Some(50.0), 0, 3602.0), t(2.0))).is_empty());
    let fx = (0..5)
        .flat_map(|i| {
            let at = 3.0 + f64::from(i);
            again.on_heartbeat(hb(Some(50.0), 0, at), t(at))
        })
        .collect::<Vec<_>>();
    assert_eq!(alerts(&fx)[0].severity, Severity::Normal);
}

#[test]
fn verification_compares_agent_times_on_a_skewed_node() {
    let mut e = engine();
    let ahead = 3600.0;
    e.on_heartbeat(hb(Some(87.0), 0, ahead), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 87.0, ahead), t(0.0)));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(ahead + 2.0);
    e.on_result(r, t(2.0));
    // Cool, but read before the result (in the agent's clock): it fell
    // before the change took effect, though the reading arrives after the
    // result in the coordinator's clock. Later cool readings do not make
    // that fall the fix's.
    let fx = e.on_heartbeat(hb(Some(60.0), 50, ahead + 1.0), t(3.0));
    assert!(audits(&fx, "verification").is_empty());
    let fx = e.on_heartbeat(hb(Some(60.0), 50, ahead + 12.0), t(14.0));
    assert!(audits(&fx, "verification").is_empty());
    // Hot again, then a fall after the change, held: agent times decide.
    e.on_heartbeat(hb(Some(87.0), 50, ahead + 13.0), t(15.0));
    e.on_heartbeat(hb(Some(60.0), 50, ahead + 14.0), t(16.0));
    let fx = e.on_heartbeat(hb(Some(60.0), 50, ahead + 24.0), t(26.0));
    let v = audits(&fx, "verification");
    assert_eq!(v[0].data["outcome"], "succeeded");
    assert_eq!(
        v[0].data["fell_at"],
        timefmt::format(&t(ahead + 14.0)).as_str()
    );
}

#[test]
fn a_late_answer_shows_what_happened_but_a_copy_undoes_no_verdict() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let sent = commands(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0)));
    let mut r = result(&sent[0], ResultStatus::Succeeded);
    r.timestamp = t(1.0);
    e.on_result(r.clone(), t(1.0));
    e.on_heartbeat(hb(Some(70.0), 50, 2.0), t(2.0));
    e.on_heartbeat(hb(Some(70.0), 50, 12.0), t(12.0));
    assert_eq!(recent_state(&e, &sent[0].action_id), ActionState::Verified);
    // The same answer again (redelivered, or replayed by the agent).
    r.details.insert("replayed".into(), json!(true));
    e.on_result(r, t(3.0));
    assert_eq!(recent_state(&e, &sent[0].action_id), ActionState::Verified);
    // spin_fans got no result; its late answer is recorded.
    e.on_heartbeat(hb(Some(70.0), 0, 85.0), t(85.0));
    e.tick(t(90.5));
    assert_eq!(recent_state(&e, &sent[1].action_id), ActionState::NoResult);
    e.on_result(result(&sent[1], ResultStatus::Unsupported), t(91.0));
    assert_eq!(
        recent_state(&e, &sent[1].action_id),
        ActionState::Unsupported
    );
}

// --- Per-node indexes: a message touches its own node's entries only. ---

/// `alert` about another sensor (a new problem), with its own id.
fn on_sensor(mut a: Alert, sensor: &str) -> Alert {
    a.details.insert("sensor".into(), json!(sensor));
    a.alert_id = String::new();
    a.ensure_id();
    a
}

#[test]
fn a_result_from_another_node_is_foreign_while_that_node_has_its_own_commands() {
    let mut e = engine();
    e.on_heartbeat(hb_from("a", 87.0, 0, t(0.0)), t(0.0));
    e.on_heartbeat(hb_from("b", 87.0, 0, t(0.0)), t(0.0));
    let on_a = throttle_50(&e.on_alert(hot_on("a", t(0.0)), t(0.0)));
    let on_b = throttle_50(&e.on_alert(hot_on("b", t(0.0)), t(0.0)));
    // a answers b's command: foreign, and nothing of a's or b's changes.
    let fx = e.on_result(result_from("a", &on_b, ResultStatus::Succeeded), t(1.0));
    let rejected = audits(&fx, "rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].data["reason"], "foreign_node");
    assert_eq!(rejected[0].data["sent_to"], "b");
    assert!(audits(&fx, "result").is_empty());
    assert!(e.pending.contains_key(&on_a.action_id));
    assert_eq!(
        e.pending.get(&on_b.action_id).map(|p| p.node.as_str()),
        Some("b")
    );
    assert!(e.verifications.is_empty());
    // a's answer to its own command closes that one only.
    let fx = e.on_result(result_from("a", &on_a, ResultStatus::Failed), t(2.0));
    assert_eq!(audits(&fx, "result").len(), 1);
    assert!(!e.pending.contains_key(&on_a.action_id));
    assert!(e.pending.contains_key(&on_b.action_id));
    // Each node's pending commands are its own (throttle_50 and
    // spin_fans on b, spin_fans left on a).
    let of = |n: &str| -> Vec<String> {
        e.pending
            .of(&node(n))
            .map(|(_, p)| format!("{}:{}", p.node, p.action))
            .collect()
    };
    assert_eq!(of("a"), ["a:spin_fans"]);
    assert_eq!(of("b"), ["b:spin_fans", "b:throttle_50"]);
}

#[test]
fn in_progress_is_per_node_problem_and_action() {
    let mut e = engine();
    e.on_heartbeat(hb_from("a", 87.0, 0, t(0.0)), t(0.0));
    e.on_heartbeat(hb_from("b", 87.0, 0, t(0.0)), t(0.0));
    let fx = e.on_alert(hot_on("a", t(0.0)), t(0.0));
    assert_eq!(names(&fx), ["throttle_50", "spin_fans"]);
    // The same problem and actions on another node are not in progress.
    let on_b = commands(&e.on_alert(hot_on("b", t(0.0)), t(0.0)));
    assert_eq!(on_b.len(), 2);
    // Another problem on the same node is not either.
    let fx = e.on_alert(on_sensor(hot_on("a", t(1.0)), "gpu"), t(1.0));
    assert_eq!(names(&fx), ["throttle_50", "spin_fans"]);
    // The same problem on the same node is, while pending...
    let fx = e.on_alert(hot_on("a", t(2.0)), t(2.0));
    assert!(commands(&fx).is_empty());
    assert_eq!(skipped_reasons(&fx), ["in_progress", "in_progress"]);
    // ... and while under verification, for that action only: b's
    // throttle succeeded (verifying), its redistribute failed (done).
    let mut ok = result_from("b", &on_b[0], ResultStatus::Succeeded);
    ok.timestamp = t(3.0);
    e.on_result(ok, t(3.0));
    e.on_result(result_from("b", &on_b[1], ResultStatus::Failed), t(3.0));
    assert_eq!(e.verifications.of(&node("b")).count(), 1);
    assert_eq!(e.verifications.of(&node("a")).count(), 0);
    let fx = e.on_alert(hot_on("b", t(4.0)), t(4.0));
    assert_eq!(names(&fx), ["spin_fans"]);
    assert_eq!(skipped_reasons(&fx), ["in_progress"]);
}

#[test]
fn one_node_snapshot_among_a_hundred_thousand_holds_exactly_its_entries() {
    let mut e = engine();
    // Names that prefix one another: n1, n10, n100, ...
    let name = |i: usize| format!("n{i}");
    for i in 0..100_000 {
        e.on_heartbeat(hb_from(&name(i), 50.0, 0, t(0.0)), t(0.0));
    }
    for (k, i) in [1, 10, 100, 1000, 99_999].into_iter().enumerate() {
        let n = name(i);
        let at = 1.0 + k as f64;
        e.on_heartbeat(hb_from(&n, 87.0, 0, t(at)), t(at));
        let throttle = throttle_50(&e.on_alert(hot_on(&n, t(at)), t(at)));
        let mut ok = result_from(&n, &throttle, ResultStatus::Succeeded);
        ok.timestamp = t(at + 0.5);
        e.on_result(ok, t(at + 0.5));
        e.on_alert(tunnel_down(&n, at), t(at));
    }
    let snap = e.node_snapshot(&node("n10"));
    let nodes: Vec<&str> = snap.nodes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["n10"]);
    assert_eq!(snap.nodes[0].1.cpu_temp, Some(87.0));
    let pending: Vec<(&str, &str)> = snap
        .pending
        .iter()
        .map(|(_, p)| (p.node.as_str(), p.action.as_str()))
        .collect();
    assert_eq!(
        pending,
        [("n10", "restart_wireguard"), ("n10", "spin_fans")],
        "by action id"
    );
    let verifying: Vec<(&str, &str)> = snap
        .verifications
        .iter()
        .map(|v| (v.node.as_str(), v.action.as_str()))
        .collect();
    assert_eq!(verifying, [("n10", "throttle_50")]);
    let open: Vec<String> = snap
        .open_alerts
        .iter()
        .map(|a| format!("{}:{}", a.node, a.problem()))
        .collect();
    assert_eq!(open, ["n10:mesh:wg0", "n10:thermal:cpu"]);
    assert_eq!(snap.ladders.len(), 1);
    assert_eq!(snap.ladders[0].alert.node.as_str(), "n10");
    assert_eq!(snap.recent.len(), 3);
    assert!(snap.recent.iter().all(|r| r.node == "n10"));
    assert!(snap.reset_retries.is_empty());
    // A healthy node's part is its node alone; an unknown node has none.
    let quiet = e.node_snapshot(&node("n5"));
    assert_eq!(quiet.nodes.len(), 1);
    assert!(
        quiet.pending.is_empty()
            && quiet.verifications.is_empty()
            && quiet.open_alerts.is_empty()
            && quiet.ladders.is_empty()
            && quiet.recent.is_empty()
    );
    assert!(e.node_snapshot(&node("nobody")).is_empty());
}

#[test]
fn restoring_every_node_part_gives_the_whole() {
    let mut e = engine();
    for (k, n) in ["a", "b", "c"].into_iter().enumerate() {
        let at = k as f64;
        e.on_heartbeat(hb_from(n, 87.0, 0, t(at)), t(at));
        let throttle = throttle_50(&e.on_alert(hot_on(n, t(at)), t(at)));
        let mut ok = result_from(n, &throttle, ResultStatus::Succeeded);
        ok.timestamp = t(at + 0.5);
        e.on_result(ok, t(at + 0.5));
    }
    e.on_alert(tunnel_down("b", 4.0), t(4.0));
    let json = |s: &EngineSnapshot| serde_json::to_value(s).unwrap();
    let whole = e.snapshot();
    assert_eq!(whole.pending.len(), 4);
    assert_eq!(whole.verifications.len(), 3);
    let mut from_parts = engine();
    for n in e.known_nodes() {
        from_parts.restore(e.node_snapshot(&n), t(10.0));
    }
    let mut from_whole = engine();
    from_whole.restore(whole.clone(), t(10.0));
    assert_eq!(json(&from_parts.snapshot()), json(&from_whole.snapshot()));
    assert_eq!(json(&from_whole.snapshot()), json(&whole));
    // The restored indexes answer per node: b's result is b's, a's forgery
    // of it is foreign.
    let on_b = whole
        .pending
        .iter()
        .find(|(_, p)| p.node.as_str() == "b" && p.action == "spin_fans")
        .map(|(_, p)| p.command.clone().unwrap())
        .unwrap();
    let fx = from_parts.on_result(result_from("a", &on_b, ResultStatus::Failed), t(11.0));
    assert_eq!(audits(&fx, "rejected").len(), 1);
    let fx = from_parts.on_result(result_from("b", &on_b, ResultStatus::Failed), t(11.0));
    assert_eq!(audits(&fx, "result").len(), 1);
    assert_eq!(from_parts.pending.of(&node("b")).count(), 1);
}

#[test]
fn deadlines_expire_in_order_across_nodes() {
    let mut e = engine();
    e.on_heartbeat(hb_from("b", 87.0, 0, t(0.0)), t(0.0));
    e.on_heartbeat(hb_from("a", 87.0, 0, t(0.0)), t(0.0));
    // b's commands go out first, a's ten seconds later.
    let on_b = commands(&e.on_alert(hot_on("b", t(0.0)), t(0.0)));
    let on_a = commands(&e.on_alert(hot_on("a", t(10.0)), t(10.0)));
    // Their throttles succeed; the redistributes never answer.
    for (n, cmds, at) in [("b", &on_b, 1.0), ("a", &on_a, 11.0)] {
        let mut ok = result_from(n, &cmds[0], ResultStatus::Succeeded);
        ok.timestamp = t(at);
        e.on_result(ok, t(at));
    }
    let closed = |fx: &[Effect], event: &str| -> Vec<String> {
        audits(fx, event)
            .iter()
            .filter_map(|a| a.node.as_ref().map(ToString::to_string))
            .collect()
    };
    // b's redistribute is past its deadline (60 s) and grace (30 s), a's is
    // not yet.
    let fx = e.tick(t(90.5));
    assert_eq!(closed(&fx, "no_result"), ["b"]);
    assert!(e.pending.contains_key(&on_a[1].action_id));
    // a's is at 100; verifications: b's is due at 121, a's at 131.
    let fx = e.tick(t(121.0));
    assert_eq!(closed(&fx, "no_result"), ["a"]);
    assert_eq!(closed(&fx, "verification"), ["b"]);
    let fx = e.tick(t(200.0));
    assert!(closed(&fx, "no_result").is_empty());
    assert_eq!(closed(&fx, "verification"), ["a"]);
    assert!(e.pending.is_empty() && e.verifications.is_empty());
    assert!(e.tick(t(300.0)).is_empty());
}

#[test]
fn the_kept_mesh_readings_read_as_the_heartbeat() {
    let cases = [
        json!({}),
        json!({"mesh": "not an object"}),
        json!({"mesh": {"interfaces": [1, 2], "peers": {"x": 3}}}),
        json!({"mesh": {
            "interfaces": {"wg0": {"level": 2}, "wg1": {"level": "high"}, "lyra": {"level": 1}},
            "peers": {
                "lyra": {"level": 0, "node": "lyra"},
                "vega": {"node": "vega"},
                "bad": {"level": 2, "node": "a.b"},
                "twin": {"level": 1, "node": "lyra"},
                "x": {"level": 1.5}
            }
        }}),
    ];
    for metadata in cases {
        let mut h = mesh_hb("nova", 0.0, json!({}));
        h.metadata = metadata.as_object().cloned().unwrap_or_default();
        let kept = LastHeartbeat::of(&h);
        for problem in [
            "mesh:wg0",
            "mesh:wg1",
            "mesh:lyra",
            "mesh:vega",
            "mesh:bad",
            "mesh:x",
            "mesh:nope",
            "thermal:cpu",
            "wg0",
        ] {
            assert_eq!(
                kept.mesh_level(problem),
                policy::mesh_level(&h, problem),
                "{problem} in {metadata}"
            );
        }
        for metric in ["cpu_temp", "gpu_temp", "storage_percent", "mesh_level"] {
            assert_eq!(kept.metric(metric), h.metric(metric));
        }
    }
}

/// Only the config's topology says who has a node as a peer: a node that
/// claims (in its heartbeat and its alerts) to watch another is no evidence
/// against it, cannot stop a witness's tunnel repair, raise
/// `node_unreachable` or clear it.
#[test]
fn only_configured_witnesses_judge_a_peer_node() {
    let mut e = engine_with_topology(&[("a", &["c"]), ("b", &["c"])]);
    let watches_c = json!({"peers": {"c": {"level": 2, "node": "c"}}});
    for n in ["a", "b", "x"] {
        e.on_heartbeat(mesh_hb(n, 0.0, watches_c.clone()), t(0.0));
    }
    e.on_heartbeat(mesh_hb("c", 0.0, json!({})), t(0.0));
    // x claims c is down, then a (a real witness) sees it down: two
    // reports, but one witness: a's tunnel is healed.
    let fx = e.on_alert(unreachable("x", "c", 1.0), t(1.0));
    assert!(alerts(&fx).is_empty(), "{fx:?}");
    let fx = e.on_alert(unreachable("a", "c", 2.0), t(2.0));
    assert_eq!(names(&fx), ["ping_peer"], "a tunnel problem on a");
    assert!(alerts(&fx).is_empty(), "no node_unreachable on c: {fx:?}");
    assert!(!e.ladders.is_empty(), "a's repair goes on");
    // b, the other witness, sees it down too: c's node problem.
    let fx = e.on_alert(unreachable("b", "c", 3.0), t(3.0));
    let node_alert = alerts(&fx).remove(0);
    assert_eq!(node_alert.node.as_str(), "c");
    assert_eq!(node_alert.details["observers"], json!(["a", "b"]));
    e.on_alert(node_alert, t(3.5));
    // x says c is fine again: not its word to give.
    let mut back = unreachable("x", "c", 4.0);
    back.severity = Severity::Normal;
    back.alert_id = "x-back".into();
    let fx = e.on_alert(back, t(4.0));
    assert!(alerts(&fx).is_empty(), "x cleared c's node problem: {fx:?}");
    // a says so: cleared.
    let mut back = unreachable("a", "c", 5.0);
    back.severity = Severity::Normal;
    back.alert_id = "a-back".into();
    let fx = e.on_alert(back, t(5.0));
    let clear = alerts(&fx).remove(0);
    assert_eq!(
        (clear.node.as_str(), clear.severity),
        ("c", Severity::Normal)
    );
}

/// Without a topology a peer node is a node problem only when it is
/// itself silent: reports from every node that claims it as a peer are no
/// evidence.
#[test]
fn without_a_topology_only_a_peers_silence_judges_it() {
    let mut e = engine();
    let watches_c = json!({"peers": {"c": {"level": 2, "node": "c"}}});
    for n in ["a", "b"] {
        e.on_heartbeat(mesh_hb(n, 0.0, watches_c.clone()), t(0.0));
    }
    e.on_heartbeat(mesh_hb("c", 0.0, json!({})), t(0.0));
    e.on_alert(unreachable("a", "c", 1.0), t(1.0));
    let fx = e.on_alert(unreachable("b", "c", 2.0), t(2.0));
    assert_eq!(names(&fx), ["ping_peer"], "a tunnel problem on b");
    assert!(alerts(&fx).is_empty(), "{fx:?}");
}

#[test]
fn a_nodes_alerts_past_its_quota_are_coalesced_and_summed_up_once() {
    let mut cfg = seed_config();
    cfg.coordinator.max_alerts_per_node_per_minute = 3;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    // Three warnings are handled (audited); the next two are coalesced.
    let mut handled = 0;
    for i in 0..5 {
        let out = e.on_alert(
            alert(Severity::Warning, 76.0 + i as f64, i as f64),
            t(i as f64),
        );
        handled += audits(&out, "alert").len();
        if i >= 3 {
            assert!(out.is_empty(), "alert {i} coalesced: {out:?}");
        }
    }
    assert_eq!(handled, 3);
    assert_eq!(e.counters.get("alerts.coalesced"), 2);
    // One that makes the problem worse is still handled.
    let worse = e.on_alert(alert(Severity::Critical, 88.0, 5.0), t(5.0));
    assert_eq!(audits(&worse, "alert").len(), 1);
    assert!(!commands(&worse).is_empty(), "critical decided: {worse:?}");
    // Another node is not held back by nova's flood.
    let mut lyra = alert(Severity::Warning, 77.0, 6.0);
    lyra.node = NodeName::parse("lyra").unwrap();
    lyra.alert_id = "lyra-1".into();
    assert_eq!(audits(&e.on_alert(lyra, t(6.0)), "alert").len(), 1);
    // The minute ends: one summary, once.
    assert!(audits(&e.tick(t(59.0)), "coalesced").is_empty());
    let out = e.tick(t(61.0));
    let summary = audits(&out, "coalesced");
    assert_eq!(summary.len(), 1, "{out:?}");
    assert_eq!(summary[0].node, Some(nova()));
    assert_eq!(summary[0].data["coalesced"], 2);
    assert_eq!(summary[0].data["seen"], 6);
    assert!(audits(&e.tick(t(125.0)), "coalesced").is_empty());
}

#[test]
fn actions_skipped_while_the_node_was_offline_are_decided_again_when_it_is_back() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    // Silent past the heartbeat timeout: offline.
    e.tick(t(40.0));
    let out = e.on_alert(alert(Severity::Critical, 88.0, 40.0), t(40.5));
    assert!(commands(&out).is_empty(), "nothing sent to an offline node");
    let skipped = audits(&out, "skipped");
    assert!(!skipped.is_empty());
    assert!(skipped.iter().all(|a| a.data["reason"] == "node_offline"));
    // Back: the open critical alert is decided again and each of its
    // actions sent, once.
    let back = e.on_heartbeat(hb(Some(88.0), 0, 41.0), t(41.0));
    let sent: Vec<String> = commands(&back).into_iter().map(|c| c.action_type).collect();
    assert_eq!(sent.len(), skipped.len(), "{back:?}");
    assert!(sent.contains(&"throttle_50".to_string()), "{sent:?}");
    // A later heartbeat does not decide it yet again.
    assert!(commands(&e.on_heartbeat(hb(Some(88.0), 50, 42.0), t(42.0))).is_empty());
}

/// A node offline when a new leader takes over stays offline (its alert is
/// still open): not raised offline again; back, with its next heartbeat,
/// and what was skipped while it was away decided again, by the new leader.
#[test]
fn a_node_offline_at_a_takeover_is_said_back_and_its_skipped_actions_decided_again() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let fx = e.tick(t(40.0));
    let offline = alerts(&fx);
    assert_eq!(offline.len(), 1);
    e.on_alert(offline[0].clone(), t(40.2));
    let out = e.on_alert(alert(Severity::Critical, 88.0, 40.0), t(40.5));
    let skipped = audits(&out, "skipped");
    assert!(!skipped.is_empty());
    // The next leader restores what the node's record keeps.
    let mut again = engine();
    again.restore(e.node_snapshot(&nova()), t(50.0));
    let s = again.status(t(50.0));
    assert_eq!(s.nodes[0].status, NodeHealth::Offline);
    assert_eq!(
        (s.summary.agents.online, s.summary.agents.offline),
        (0, 1),
        "its agent is not counted online beside it"
    );
    assert!(s.agents.iter().all(|a| !a.online), "{:?}", s.agents);
    assert!(
        alerts(&again.tick(t(100.0))).is_empty(),
        "offline already, not raised again"
    );
    // Back within the heartbeat timeout of the takeover.
    let back = again.on_heartbeat(hb(Some(88.0), 0, 51.0), t(51.0));
    let said = alerts(&back);
    assert_eq!(said.len(), 1, "{back:?}");
    assert_eq!(
        (said[0].kind.clone(), said[0].severity),
        (AlertKind::HeartbeatMissing, Severity::Normal)
    );
    let sent: Vec<String> = commands(&back).into_iter().map(|c| c.action_type).collect();
    assert_eq!(sent.len(), skipped.len(), "{back:?}");
    assert!(sent.contains(&"throttle_50".to_string()), "{sent:?}");
    again.on_alert(said[0].clone(), t(51.2));
    assert_ne!(again.status(t(52.0)).nodes[0].status, NodeHealth::Offline);
    assert!(again.node_snapshot(&nova()).offline_skipped.is_empty());
}

/// A node said back just before a takeover: its back alert is still on
/// the bus, so its record keeps the offline alert open, and the next
/// leader restores it offline. The back alert then reaches the new leader
/// and ends the offline state: the node is not shown offline, its alerts
/// are not skipped as offline, and its next heartbeat does not say it
/// back a second time.
#[test]
fn a_back_alert_taken_after_a_takeover_ends_the_offline_state_it_restored() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let offline = alerts(&e.tick(t(40.0)));
    e.on_alert(offline[0].clone(), t(40.2));
    let back = alerts(&e.on_heartbeat(hb(Some(70.0), 0, 45.0), t(45.0)));
    assert_eq!(back.len(), 1);
    let mut again = engine();
    again.restore(e.node_snapshot(&nova()), t(46.0));
    again.on_alert(back[0].clone(), t(46.1));
    let mut wrong = Vec::new();
    let s = again.status(t(46.2));
    assert!(s.open_alerts.is_empty(), "{:?}", s.open_alerts);
    if s.nodes[0].status == NodeHealth::Offline {
        wrong.push("shown offline with no offline alert open".to_string());
    }
    let out = again.on_alert(alert(Severity::Critical, 88.0, 46.0), t(46.5));
    if commands(&out).is_empty() {
        wrong.push(format!(
            "a critical alert of a node back is skipped: {:?}",
            audits(&out, "skipped")
                .iter()
                .map(|a| a.data["reason"].clone())
                .collect::<Vec<_>>()
        ));
    }
    let next = alerts(&again.on_heartbeat(hb(Some(88.0), 0, 55.0), t(55.0)));
    if !next.is_empty() {
        wrong.push(format!("said back a second time: {}", next[0].message));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A back alert older than the offline alert open (said for an earlier
/// time away, and taken again: its delivery not acknowledged, its record
/// past what the new leader reads back from the trail) reaches a leader
/// that restored the node offline. The node has been silent since: it
/// must stay offline, its offline alert open, and nothing be sent to it.
#[test]
fn a_stale_back_alert_does_not_end_the_offline_state_a_takeover_restored() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    // Away once, and back.
    let first = alerts(&e.tick(t(40.0)));
    e.on_alert(first[0].clone(), t(40.2));
    let back = alerts(&e.on_heartbeat(hb(Some(70.0), 0, 45.0), t(45.0)));
    assert_eq!(back.len(), 1);
    e.on_alert(back[0].clone(), t(45.1));
    // Away again, for good: its critical alert is skipped.
    let second = alerts(&e.tick(t(80.0)));
    assert_eq!(second.len(), 1);
    e.on_alert(second[0].clone(), t(80.2));
    let out = e.on_alert(alert(Severity::Critical, 88.0, 80.0), t(80.5));
    assert!(commands(&out).is_empty());
    // The next leader restores the record; the trail shows the second
    // offline alert handled.
    let mut again = engine();
    again.restore(e.node_snapshot(&nova()), t(90.0));
    again.mark_handled(&second[0].alert_id);
    assert_eq!(again.status(t(90.0)).nodes[0].status, NodeHealth::Offline);
    // The first back alert, taken again.
    let out = again.on_alert(back[0].clone(), t(91.0));
    let mut wrong = Vec::new();
    let sent: Vec<String> = commands(&out).into_iter().map(|c| c.action_type).collect();
    if !sent.is_empty() {
        wrong.push(format!("sent to a node silent since t=45: {sent:?}"));
    }
    let s = again.status(t(92.0));
    if s.nodes[0].status != NodeHealth::Offline {
        wrong.push(format!("shown {:?}, silent since t=45", s.nodes[0].status));
    }
    if !s
        .open_alerts
        .iter()
        .any(|a| a["type"] == "heartbeat_missing")
    {
        wrong.push("its offline alert (raised at t=80) closed by a back alert of t=45".into());
    }
    // Still silent past the heartbeat timeout of the takeover.
    let raised = alerts(&again.tick(t(125.0)));
    for a in &raised {
        again.on_alert(a.clone(), t(125.2));
    }
    let s = again.status(t(126.0));
    if s.nodes[0].status == NodeHealth::Offline
        && !s
            .open_alerts
            .iter()
            .any(|a| a["type"] == "heartbeat_missing")
    {
        wrong.push(format!(
            "offline again with no offline alert open (raised {} with an id already handled: {:?})",
            raised.len(),
            raised
                .iter()
                .map(|a| a.alert_id.clone())
                .collect::<Vec<_>>()
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A leader restored a node offline; its back alert is on the bus behind
/// the node's own alerts of the minute (a backlog the new leader takes in
/// a burst). Over the node's quota, the back alert is coalesced: a
/// normal alert is never "worse than what is open". The node, back
/// since, stays offline and its critical alert is skipped as offline.
#[test]
fn a_back_alert_over_the_nodes_quota_still_ends_the_restored_offline_state() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let offline = alerts(&e.tick(t(40.0)));
    e.on_alert(offline[0].clone(), t(40.2));
    let back = alerts(&e.on_heartbeat(hb(Some(70.0), 0, 45.0), t(45.0)));
    let mut again = engine();
    again.restore(e.node_snapshot(&nova()), t(46.0));
    let limit = again.config().coordinator.max_alerts_per_node_per_minute;
    for i in 0..limit {
        let mut a = alert(Severity::Warning, 80.0, 44.0);
        a.message = format!("CPU temperature 80°C ({i})");
        a.alert_id = String::new();
        a.ensure_id();
        again.on_alert(a, t(46.1));
    }
    again.on_alert(back[0].clone(), t(46.2));
    let mut wrong = Vec::new();
    let s = again.status(t(46.3));
    if s.nodes[0].status == NodeHealth::Offline {
        wrong.push("shown offline, said back".to_string());
    }
    if s.open_alerts
        .iter()
        .any(|a| a["type"] == "heartbeat_missing")
    {
        wrong.push("its offline alert still open".to_string());
    }
    let out = again.on_alert(alert(Severity::Critical, 88.0, 46.0), t(46.5));
    if commands(&out).is_empty() {
        wrong.push(format!(
            "its critical alert not acted on: {:?}",
            audits(&out, "skipped")
                .iter()
                .map(|a| a.data["reason"].clone())
                .collect::<Vec<_>>()
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn commands_carry_the_leaders_term_and_status_names_the_leader() {
    let mut cfg = seed_config();
    cfg.coordinator.verify_within = 77.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    assert_eq!(e.config().coordinator.verify_within, 77.0);
    assert_eq!(e.term(), None);
    e.set_term(Some(7));
    assert_eq!(e.term(), Some(7));
    let leader = Leadership {
        holder: "host:1:abcd".into(),
        term: 7,
        since: t(0.0),
    };
    e.set_leader(Some(leader.clone()));
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let out = e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0));
    let sent = commands(&out);
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|c| c.term == Some(7)), "{sent:?}");
    assert_eq!(e.status(t(1.0)).leader, Some(leader));
}

#[test]
fn only_a_refusal_that_says_replay_or_already_executed_is_a_replay() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let out = e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0));
    let cmd = commands(&out).remove(0);
    let refusal = |message: &str, reason: Option<&str>| {
        let mut r = result(&cmd, ResultStatus::Rejected);
        r.message = message.into();
        if let Some(reason) = reason {
            r.details.insert("reason".into(), reason.into());
        }
        r
    };
    // The agent's replay refusal, with its reason, and as agents without
    // one said it.
    for r in [
        refusal("anything", Some("replay")),
        refusal(skos_core::protocol::REPLAY_MESSAGE, None),
    ] {
        let out = e.on_result(r.clone(), t(2.0));
        assert!(
            audits(&out, "breaker").is_empty() && e.counters.get("breaker.failures") == 0,
            "{r:?} counted as a failure"
        );
    }
    assert_eq!(e.counters.get("results.replay"), 2);
    // Words in a real refusal do not make it a replay, with a reason of
    // its own or without: it is the command's answer.
    let busy = refusal(
        "workload replay-worker already executed a step",
        Some("busy"),
    );
    assert!(!is_replay(&busy));
    e.on_result(refusal("REPLAY refused: bad signature", None), t(3.0));
    assert_eq!(e.counters.get("results.replay"), 2);
    assert_eq!(e.counters.get("breaker.failures"), 1);
}

/// A refusal as of a stale term (the agents saw a higher term than this
/// leader's) closes the command with no breaker failure: the action never
/// ran, and the problem is decided again, at once, in the next term.
#[test]
fn a_stale_term_refusal_closes_its_command_with_no_failure() {
    let mut e = engine();
    e.set_term(Some(1));
    e.on_heartbeat(hb(Some(70.0), 0, 0.0), t(0.0));
    let out = e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.0));
    let cmd = commands(&out).remove(0);
    let mut r = result(&cmd, ResultStatus::Rejected);
    r.message = "stale term 1: a coordinator of term 9 has spoken".into();
    r.details.insert(
        "reason".into(),
        skos_core::protocol::REASON_STALE_TERM.into(),
    );
    r.details
        .insert(skos_core::protocol::DETAIL_HIGHEST_TERM.into(), 9.into());
    assert!(e.result_is_news(&r));
    let out = e.on_result(r, t(2.0));
    assert!(audits(&out, "breaker").is_empty());
    assert_eq!(e.counters.get("breaker.failures"), 0);
    assert!(!e.pending.contains_key(&cmd.action_id), "closed");
    e.set_term(Some(10));
    let again = commands(&e.on_alert(alert(Severity::Critical, 88.0, 3.0), t(3.0)));
    let again: Vec<_> = again
        .iter()
        .filter(|c| c.action_type == cmd.action_type)
        .collect();
    assert_eq!(again.len(), 1, "decided again");
    assert_eq!(again[0].term, Some(10));
}

// --- Only the fix is credited, and a flapping problem is reported once,
// not acted on at every swing. ---

/// A CPU as the thermal sentinel reads it at `at`: the package and four
/// cores, hot (package 88-89 °C, cores 84-87 °C) or cool (package 66-67 °C,
/// cores 62-65 °C), with a little jitter; the heartbeat's `cpu_temp` and
/// the alerts carry the hottest of them, as the agent's do.
fn cpu_readings(at: f64, hot: bool) -> f64 {
    let jitter = (at * 7.0).rem_euclid(3.0) * 0.3;
    let (package, core) = if hot { (88.0, 84.0) } else { (66.0, 62.0) };
    let readings = [
        package + jitter,
        core + jitter,
        core + 1.0 + jitter,
        core + 2.5,
        core + 3.0 - jitter,
    ];
    readings.into_iter().fold(f64::MIN, f64::max)
}

/// One node over time, the way the coordinator hears it: every second its
/// thermal sentinel reads the CPU and feeds the hottest reading to the
/// same level tracker the agent uses (so alerts come exactly when an
/// agent's would), sends the alert, then the heartbeat; every command is
/// carried out at once and answered `succeeded` (a throttle stays in
/// force until `reset_throttle`); own alerts (escalations) come back; the
/// coordinator ticks every second.
struct Node {
    e: Engine,
    tracker: skos_core::level::LevelTracker,
    rules: skos_core::level::LevelRules,
    throttle: u8,
    /// Every effect, with the second it came at.
    fx: Vec<(f64, Effect)>,
}

impl Node {
    fn new(cfg: Config) -> Self {
        let th = &cfg.thermal;
        let rules = skos_core::level::LevelRules {
            thresholds: th.thresholds,
            hysteresis: th.hysteresis,
            hold_up: th.for_,
            hold_down: 0.0,
            cooldown: th.cooldown,
        };
        Self {
            e: Engine::new(cfg, Counters::default(), "test"),
            tracker: Default::default(),
            rules,
            throttle: 0,
            fx: Vec::new(),
        }
    }

    /// Take effects that came at `at`, carrying out their commands and
    /// feeding their alerts back.
    fn take(&mut self, at: f64, fx: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = fx.into();
        while let Some(effect) = queue.pop_front() {
            match &effect {
                Effect::Command(_, cmd) => {
                    if let Some(level) = catalogue::throttle_level(&cmd.action_type) {
                        self.throttle = level;
                    } else if cmd.action_type == "reset_throttle" {
                        self.throttle = 0;
                    }
                    let mut r = result(cmd, ResultStatus::Succeeded);
                    r.timestamp = t(at + 0.15);
                    queue.extend(self.e.on_result(r, t(at + 0.2)));
                }
                Effect::Alert(a) => queue.extend(self.e.on_alert(a.clone(), t(at + 0.2))),
                Effect::Audit(_) => {}
            }
            self.fx.push((at, effect));
        }
    }

    /// One second of the node at `at`, hot or cool.
    fn second(&mut self, at: f64, hot: bool) {
        self.second_at(at, cpu_readings(at, hot));
    }

    /// One second of the node at `at`, its hottest CPU reading `cpu`.
    fn second_at(&mut self, at: f64, cpu: f64) {
        if let Some(report) = self.tracker.observe(&self.rules, cpu, t(at)) {
            let (severity, previous) = match report {
                skos_core::level::Report::Changed { from, to } => (to, from),
                skos_core::level::Report::Reminder(s) => (s, s),
            };
            let mut a = alert(severity, cpu, at);
            a.alert_id = format!(
                "thermal-sentinel-nova-{}-cpu-{}",
                t(at).timestamp_nanos_opt().unwrap(),
                severity.as_str()
            );
            a.details
                .insert("previous_severity".into(), json!(previous));
            let fx = self.e.on_alert(a, t(at + 0.05));
            self.take(at, fx);
        }
        let fx = self
            .e
            .on_heartbeat(hb(Some(cpu), self.throttle, at), t(at + 0.1));
        self.take(at, fx);
        let fx = self.e.tick(t(at + 0.5));
        self.take(at, fx);
    }

    /// The audit records of `kind` that came from `from` on (seconds).
    fn audits(&self, kind: &str, from: f64) -> Vec<&AuditEntry> {
        self.fx
            .iter()
            .filter(|(at, _)| *at >= from)
            .filter_map(|(_, e)| match e {
                Effect::Audit(a) if a.event_type == kind => Some(a),
                _ => None,
            })
            .collect()
    }

    /// The commands of `action` sent.
    fn sent(&self, action: &str) -> Vec<f64> {
        self.fx
            .iter()
            .filter_map(|(at, e)| match e {
                Effect::Command(_, c) if c.action_type == action => Some(*at),
                _ => None,
            })
            .collect()
    }

    /// The outcomes of the verification records, in order.
    fn outcomes(&self) -> Vec<String> {
        self.audits("verification", 0.0)
            .iter()
            .map(|a| a.data["outcome"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// Found by breaking it on purpose: a flap of hot 3 s and cool 3 s for a
/// minute got ten verifications credited for cooling the flap caused.
/// Now: one throttle, no credit, one `flapping` report while it flaps and
/// one when it is stable again, no action decided at its swings, no
/// escalation, no breaker failure.
#[test]
fn a_flap_is_reported_once_acted_on_once_and_never_credited() {
    let mut n = Node::new(Config::default());
    for s in 0..10 {
        n.second(f64::from(s), false);
    }
    // Hot 3 s, cool 3 s, from 10 to 70.
    for s in 10..70 {
        n.second(f64::from(s), (s - 10) % 6 < 3);
    }
    let alerts_seen = n.audits("alert", 10.0).len();
    assert_eq!(
        alerts_seen, 20,
        "an alert at every swing, as an agent sends"
    );
    let flapping = n.audits("flapping", 0.0);
    assert_eq!(flapping.len(), 1, "{flapping:#?}");
    assert_eq!(flapping[0].data["state"], "started");
    assert_eq!(flapping[0].data["problem"], "thermal:cpu");
    assert_eq!(flapping[0].data["changes"], 6);
    assert_eq!(n.e.counters.get("flapping.started"), 1);
    assert_eq!(n.sent("throttle_50"), [10.0], "one action at most");
    assert!(n.e.counters.get("alerts.held_flapping") >= 5);
    // Settled cool from 70 on.
    for s in 70..200 {
        n.second(f64::from(s), false);
    }
    let stopped = n.audits("flapping", 70.0);
    assert_eq!(stopped.len(), 1, "{stopped:#?}");
    assert_eq!(stopped[0].data["state"], "stopped");
    assert_eq!(n.e.counters.get("flapping.stopped"), 1);
    assert_eq!(
        n.audits("flapping", 0.0).len(),
        2,
        "started and stopped, once each"
    );
    // The throttle's verification: closed uncredited when the flap was
    // found; nothing credited, ever.
    assert_eq!(n.outcomes(), ["uncredited"]);
    let v = n.audits("verification", 0.0);
    assert_eq!(v[0].data["reason"], "flapping");
    assert_eq!(n.e.counters.get("verifications.succeeded"), 0);
    assert_eq!(n.e.counters.get("verifications.uncredited"), 1);
    assert_eq!(n.e.counters.get("breaker.failures"), 0);
    assert!(
        n.fx.iter().all(|(_, e)| !matches!(e, Effect::Alert(_))),
        "no escalation"
    );
    // Settled cool: the throttle is lifted, and nothing else is sent.
    assert_eq!(n.sent("throttle_50").len(), 1);
    assert_eq!(n.sent("reset_throttle").len(), 1);
    assert_eq!(n.throttle, 0);
}

/// Found by breaking it on purpose: a problem that flapped, then swung
/// between critical and emergency without ever cooling, got one
/// `throttle_50` and nothing more for ten minutes. Swinging between two
/// alert levels is no flap, and a worse level is decided even while the
/// problem flaps.
#[test]
fn a_flap_that_turns_into_swings_between_hot_levels_is_escalated() {
    let mut n = Node::new(Config::default());
    n.second(0.0, false);
    // 88 / 66 °C, 3 s each, for a minute: flapping.
    for s in 1..61 {
        n.second(f64::from(s), (s - 1) % 6 < 3);
    }
    assert_eq!(n.e.counters.get("flapping.started"), 1);
    assert_eq!(n.sent("throttle_50").len(), 1);
    // Then 90 / 97 °C, 3 s each: never below critical.
    for s in 61..240 {
        let cpu = if (s - 61) % 6 < 3 { 90.0 } else { 97.0 };
        n.second_at(f64::from(s), cpu);
    }
    assert!(
        !n.sent("throttle_100").is_empty(),
        "an emergency is decided while the problem flaps"
    );
    assert_eq!(n.throttle, 100);
    assert_eq!(n.sent("reset_throttle").len(), 0, "never lifted while hot");
}

/// While a problem flaps, its throttle is not lifted at each cool swing
/// (the fix in place stays in place); once it is stable and cool, it is.
#[test]
fn a_flapping_problem_keeps_its_throttle_until_it_is_stable() {
    let mut cfg = Config::default();
    cfg.thermal.clear_for = 2.0;
    // Each throttle's verification is over before the next swing.
    cfg.coordinator.verify_within = 1.0;
    cfg.coordinator.verify_hold_seconds = 0.0;
    let mut n = Node::new(cfg);
    n.second(0.0, false);
    // Hot 3 s, cool 5 s (longer than clear_for), for two minutes.
    for s in 1..121 {
        n.second(f64::from(s), (s - 1) % 8 < 3);
    }
    assert_eq!(n.e.counters.get("flapping.started"), 1);
    let resets = n.sent("reset_throttle");
    let started = n.audits("flapping", 0.0)[0].timestamp;
    let throttles = n.sent("throttle_50");
    assert!(
        resets.iter().all(|&r| t(r) < started),
        "no reset while it flaps: {resets:?}, flapping since {started}"
    );
    assert!(n.throttle > 0, "the throttle stays while it flaps");
    assert!(
        !throttles.is_empty() && !resets.is_empty(),
        "{throttles:?} {resets:?}"
    );
    for s in 121..300 {
        n.second(f64::from(s), false);
    }
    assert_eq!(n.e.counters.get("flapping.stopped"), 1);
    assert_eq!(n.throttle, 0, "lifted once stable");
}

/// A flap that settles hot is acted on once it is stable again.
#[test]
fn a_flap_that_settles_hot_is_decided_again_once_stable() {
    let mut n = Node::new(Config::default());
    n.second(0.0, false);
    for s in 1..40 {
        n.second(f64::from(s), (s - 1) % 6 < 3);
    }
    assert_eq!(n.audits("flapping", 0.0).len(), 1);
    for s in 40..150 {
        n.second(f64::from(s), true);
    }
    let stopped = n.audits("flapping", 40.0);
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].data["open"], "critical");
    let throttles = n.sent("throttle_50");
    assert_eq!(throttles.len(), 2, "{throttles:?}");
    // The second one comes with the stop report, not before.
    let stopped_at = n
        .fx
        .iter()
        .find(|(_, e)| matches!(e, Effect::Audit(a) if a.event_type == "flapping" && a.data["state"] == "stopped"))
        .map(|(at, _)| *at)
        .unwrap();
    assert_eq!(throttles[1], stopped_at);
    // Still hot: it fails its verification and escalates, as any fix that
    // does not work.
    for s in 150..300 {
        n.second(f64::from(s), true);
    }
    assert_eq!(n.outcomes(), ["uncredited", "failed"]);
}

/// A throttle that works: the temperature falls after it took effect and
/// stays down past the hold. Credited once.
#[test]
fn a_real_fix_is_credited_once_after_the_hold() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(60.0), 0, 0.0), t(0.0));
    e.on_heartbeat(hb(Some(88.0), 0, 1.0), t(1.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.05)));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(1.25);
    assert!(audits(&e.on_result(r, t(1.3)), "verification").is_empty());
    let mut credited = Vec::new();
    // 87, then falling below 85 at 3 and staying down.
    for (s, temp) in (2..60).map(|s| (f64::from(s), (89.0 - f64::from(s)).max(70.0))) {
        let fx = e.on_heartbeat(hb(Some(temp), 50, s), t(s + 0.1));
        for v in audits(&fx, "verification") {
            credited.push((s, v.data.clone()));
        }
        e.tick(t(s + 0.5));
    }
    assert_eq!(credited.len(), 1, "{credited:#?}");
    let (at, data) = &credited[0];
    assert_eq!(*at, 15.0, "fell at 5 (85 is not below 85), held 10 s");
    assert_eq!(data["outcome"], "succeeded");
    assert_eq!(data["fell_at"], timefmt::format(&t(5.0)).as_str());
    assert_eq!(data["held_seconds"], 10.0);
    assert_eq!(e.counters.get("verifications.succeeded"), 1);
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::Verified);
    // Nothing is left to judge at the deadline.
    assert!(audits(&e.tick(t(200.0)), "verification").is_empty());
}

/// The node cooled after the command was sent but before the agent carried
/// it out (the load ended; the command was slow to arrive): the fall is not
/// the fix's. When the throttle is lifted (cool for `clear_for`) the
/// problem is gone, so neither credit nor breaker failure nor escalation:
/// `uncredited`, once.
#[test]
fn a_fall_before_the_result_is_not_credited() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(88.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
    for s in [1.0, 2.0] {
        e.on_heartbeat(hb(Some(70.0), 0, s), t(s));
    }
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(2.5);
    assert!(audits(&e.on_result(r, t(3.0)), "verification").is_empty());
    let mut fx = Vec::new();
    for s in 3..120 {
        let s = f64::from(s);
        fx.extend(e.on_heartbeat(hb(Some(70.0), 50, s), t(s + 0.1)));
        fx.extend(e.tick(t(s + 0.5)));
    }
    fx.extend(e.tick(t(123.5)));
    let v = audits(&fx, "verification");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].data["outcome"], "uncredited");
    assert_eq!(v[0].data["reason"], "fell_before_change");
    assert!(alerts(&fx).is_empty(), "nothing to escalate: it is cool");
    assert_eq!(e.counters.get("verifications.succeeded"), 0);
    assert_eq!(e.counters.get("verifications.uncredited"), 1);
    let key = BreakerKey::new("nova", "thermal:cpu", "throttle_50");
    assert_eq!(e.breakers.failures(&key), 0);
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::NotVerified);
}

/// A fall and a rise within the hold is no fix: not credited then, and,
/// still hot at the deadline, a failed fix.
#[test]
fn a_fall_then_a_rise_within_the_hold_is_not_credited() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(88.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(0.5);
    e.on_result(r, t(0.6));
    let temps = [(1.0, 87.0), (2.0, 80.0), (3.0, 79.0), (5.0, 88.0)];
    let later = (6..=120).map(|s| (f64::from(s), 88.0));
    for (s, temp) in temps.into_iter().chain(later) {
        let fx = e.on_heartbeat(hb(Some(temp), 50, s), t(s));
        assert!(audits(&fx, "verification").is_empty(), "credited at {s}");
    }
    let fx = e.tick(t(120.6));
    assert_eq!(audits(&fx, "verification")[0].data["outcome"], "failed");
    assert_eq!(alerts(&fx)[0].severity, Severity::Emergency);
    assert_eq!(e.counters.get("verifications.succeeded"), 0);
}

/// A fall late in `verify_within` finishes its hold after the deadline,
/// once; one that never finishes it is uncredited, not a failure.
#[test]
fn a_fall_late_in_the_window_gets_the_rest_of_its_hold() {
    for keeps_reporting in [true, false] {
        let mut e = Engine::new(Config::default(), Counters::default(), "test");
        e.on_heartbeat(hb(Some(88.0), 0, 0.0), t(0.0));
        let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
        let mut r = result(&cmd, ResultStatus::Succeeded);
        r.timestamp = t(0.5);
        e.on_result(r, t(0.6));
        e.on_heartbeat(hb(Some(88.0), 50, 100.0), t(100.0));
        e.on_heartbeat(hb(Some(80.0), 50, 115.0), t(115.0));
        // The deadline (120.6): below since 115, the rest of the hold to go.
        let fx = e.tick(t(120.6));
        assert!(audits(&fx, "verification").is_empty(), "{fx:?}");
        if keeps_reporting {
            let fx = e.on_heartbeat(hb(Some(80.0), 50, 125.0), t(125.0));
            assert_eq!(audits(&fx, "verification")[0].data["outcome"], "succeeded");
        } else {
            // The rest of the hold from the newest reading (10 s), and a
            // heartbeat interval (10 s) for the reading that would end it.
            assert!(audits(&e.tick(t(140.5)), "verification").is_empty());
            let fx = e.tick(t(140.6));
            let v = audits(&fx, "verification");
            assert_eq!(v[0].data["outcome"], "uncredited");
            assert_eq!(v[0].data["reason"], "hold_unfinished");
            assert_eq!(e.counters.get("breaker.failures"), 0);
        }
    }
}

/// `flap_start_changes: 0` turns detection off: the same flap is never
/// reported, and the hold alone keeps its cooling from being credited.
#[test]
fn flap_detection_can_be_turned_off() {
    let mut cfg = Config::default();
    cfg.coordinator.flap_start_changes = 0;
    let mut n = Node::new(cfg);
    n.second(0.0, false);
    for s in 1..61 {
        n.second(f64::from(s), (s - 1) % 6 < 3);
    }
    assert!(n.audits("flapping", 0.0).is_empty());
    assert_eq!(n.e.counters.get("verifications.succeeded"), 0);
    assert!(n.outcomes().is_empty(), "still under verification");
    assert_eq!(n.sent("throttle_50").len(), 1, "in progress at every swing");
}

/// The coordinator's escalations are its judgements, not the problem's
/// state: an escalation to emergency followed by the agent's unchanged
/// critical reminder, over and over, is no flap.
#[test]
fn escalations_and_the_agents_reminders_are_no_flap() {
    let mut cfg = Config::default();
    cfg.coordinator.verify_within = 2.0;
    cfg.thermal.cooldown = 1.0;
    let mut n = Node::new(cfg);
    n.second(0.0, false);
    for s in 1..60 {
        n.second(f64::from(s), true);
    }
    let escalations =
        n.fx.iter()
            .filter(|(_, e)| matches!(e, Effect::Alert(a) if a.alert_id.contains("-esc-")))
            .count();
    assert!(escalations >= 3, "{escalations}");
    assert!(n.audits("flapping", 0.0).is_empty());
    assert_eq!(n.e.counters.get("alerts.held_flapping"), 0);
}

/// A node's part of the state is empty only when every part of it is:
/// one part alone, whichever, keeps it.
#[test]
fn a_snapshot_with_any_one_part_is_not_empty() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(60.0), 0, 0.0), t(0.0));
    let full = e.node_snapshot(&nova());
    assert!(!full.nodes.is_empty());
    let only_nodes = EngineSnapshot {
        nodes: full.nodes.clone(),
        ..EngineSnapshot::default()
    };
    assert!(!only_nodes.is_empty());
    let alert = alert(Severity::Critical, 88.0, 1.0);
    let only_alerts = EngineSnapshot {
        open_alerts: vec![alert],
        ..EngineSnapshot::default()
    };
    assert!(!only_alerts.is_empty());
    assert!(EngineSnapshot::default().is_empty());
}

/// Every node the engine holds anything of is known, whatever it holds:
/// a fix under verification, an open alert.
#[test]
fn known_nodes_include_those_with_only_a_verification_or_an_open_alert() {
    let mut e = engine();
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05));
    let cmd = throttle_50(&fx);
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(0.5);
    e.on_result(r, t(0.6));
    assert!(!e.verifications.is_empty());
    let snap = e.node_snapshot(&nova());
    let mut fresh = engine();
    fresh.restore(
        EngineSnapshot {
            verifications: snap.verifications.clone(),
            ..EngineSnapshot::default()
        },
        t(1.0),
    );
    assert!(
        fresh.known_nodes().contains(&nova()),
        "a verification alone"
    );
    let mut fresh = engine();
    fresh.restore(
        EngineSnapshot {
            open_alerts: snap.open_alerts.clone(),
            ..EngineSnapshot::default()
        },
        t(1.0),
    );
    assert!(!snap.open_alerts.is_empty());
    assert!(fresh.known_nodes().contains(&nova()), "an open alert alone");
}

/// A command kept in the state but never audited as sent (a stop between
/// the two) is sent again at start; one already audited is not.
#[test]
fn unsent_commands_are_those_not_audited() {
    let mut e = engine();
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05));
    let cmd = throttle_50(&fx);
    let again = e.unsent(&std::collections::HashSet::new());
    let resent: Vec<&Command> = again
        .iter()
        .filter_map(|x| match x {
            Effect::Command(_, c) => Some(c),
            _ => None,
        })
        .collect();
    let sent = commands(&fx);
    assert_eq!(resent.len(), sent.len());
    assert!(resent.iter().any(|c| c.action_id == cmd.action_id));
    assert_eq!(audits(&again, "command").len(), sent.len());
    let mut audited: std::collections::HashSet<String> = [cmd.action_id.clone()].into();
    assert_eq!(e.unsent(&audited).len(), 2 * (sent.len() - 1));
    audited.extend(sent.iter().map(|c| c.action_id.clone()));
    assert!(e.unsent(&audited).is_empty());
}

/// A result from another node for a command already answered (in the
/// recent actions, no longer pending) is foreign; the right node's late
/// copy is not.
#[test]
fn a_late_result_from_another_node_is_foreign() {
    let mut e = engine();
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05));
    let cmd = throttle_50(&fx);
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(0.5);
    e.on_result(r.clone(), t(0.6));
    assert_eq!(e.counters.get("results.foreign"), 0);
    // lyra has an action of its own, the newest of the recent ones.
    let mut hot_lyra = alert(Severity::Warning, 78.0, 0.7);
    hot_lyra.node = node("lyra");
    hot_lyra.alert_id = "lyra-warm".into();
    assert!(!commands(&e.on_alert(hot_lyra, t(0.8))).is_empty());
    let mut forged = r.clone();
    forged.node = node("lyra");
    e.on_result(forged, t(1.0));
    assert_eq!(e.counters.get("results.foreign"), 1);
    e.on_result(r, t(1.1));
    assert_eq!(e.counters.get("results.foreign"), 1, "its own node's copy");
}

/// A storage problem that flaps (a burst refills what each cleanup freed)
/// is reported as flapping, but each rise still gets its cleanup: a
/// cleanup leaves nothing in place to hold on to, unlike a throttle.
#[test]
fn a_flapping_disk_still_gets_a_cleanup_at_each_rise() {
    let mut e = engine();
    let mut cleanups_after_flap = 0;
    for i in 0..10 {
        let at = f64::from(i) * 6.0;
        e.on_heartbeat(storage_hb(91.0, at), t(at));
        let fx = e.on_alert(storage_alert(Severity::Critical, 91.0, at), t(at + 0.1));
        let flapping = e.counters.get("flapping.started") > 0;
        for cmd in commands(&fx) {
            if flapping {
                cleanups_after_flap += 1;
            }
            let mut r = result(&cmd, ResultStatus::Succeeded);
            r.timestamp = t(at + 0.5);
            e.on_result(r, t(at + 0.6));
        }
        e.on_heartbeat(storage_hb(60.0, at + 3.0), t(at + 3.0));
        e.on_alert(storage_alert(Severity::Normal, 60.0, at + 3.0), t(at + 3.1));
        e.tick(t(at + 3.5));
    }
    assert_eq!(e.counters.get("flapping.started"), 1);
    assert!(
        cleanups_after_flap > 0,
        "rises after the flap began got no cleanup"
    );
}

// --- Found by mutation testing: each test below fails on a change to the
// code that the tests before it let through. ---

/// The summary of the one verification record among `fx`, an
/// `uncredited` one, and the status message of the action `action_id`.
fn uncredited_says(e: &Engine, fx: &[Effect], action_id: &str) -> (String, String) {
    let v = audits(fx, "verification");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].data["outcome"], "uncredited");
    let record = e
        .status(t(1000.0))
        .recent_actions
        .into_iter()
        .find(|r| r.action_id == action_id)
        .unwrap();
    (v[0].summary.clone(), record.message)
}

/// The circuit breaker's records name the breaker (node, problem,
/// action): an operator reading "circuit … is open" must see which fix on
/// which node was stopped.
#[test]
fn a_circuits_records_name_its_node_problem_and_action() {
    let mut cfg = Config::default();
    cfg.circuit_breaker.max_failures = 1;
    cfg.circuit_breaker.reset_timeout_seconds = 10.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0)));
    let fx = e.on_result(result(&cmd, ResultStatus::Failed), t(1.0));
    assert_eq!(
        audits(&fx, "breaker")[0].summary,
        "circuit (nova, thermal:cpu, throttle_50) open"
    );
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 5.0), t(5.0));
    assert_eq!(
        audits(&fx, "skipped")[0].summary,
        "throttle_50 for thermal:cpu on nova skipped: circuit (nova, thermal:cpu, throttle_50) is open"
    );
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 12.0), t(12.0));
    assert_eq!(
        audits(&fx, "breaker")[0].summary,
        "circuit (nova, thermal:cpu, throttle_50) half-open: one trial allowed"
    );
}

/// The load ended while the throttle was on its way: the node read 70 °C
/// at 1 and 2, the agent carried the throttle out at 1.5 and its answer
/// came after the reading at 2. The last reading before the answer is
/// after the change, but the fall began before it: the readings kept
/// while the command waited for its result say so, and the fix is not
/// credited, with the reason spelled out for the operator.
#[test]
fn a_fall_that_began_before_the_change_is_not_credited_when_the_answer_is_late() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(88.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
    e.on_heartbeat(hb(Some(70.0), 0, 1.0), t(1.0));
    e.on_heartbeat(hb(Some(70.0), 0, 2.0), t(2.0));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(1.5);
    let mut fx = e.on_result(r, t(2.5));
    for s in 3..60 {
        let s = f64::from(s);
        fx.extend(e.on_heartbeat(hb(Some(70.0), 50, s), t(s + 0.1)));
        fx.extend(e.tick(t(s + 0.5)));
    }
    assert_eq!(e.counters.get("verifications.succeeded"), 0);
    assert_eq!(e.counters.get("verifications.uncredited"), 1);
    assert_eq!(
        audits(&fx, "verification")[0].data["reason"],
        "fell_before_change"
    );
    let (summary, message) = uncredited_says(&e, &fx, &cmd.action_id);
    assert_eq!(
        summary,
        "throttle_50 on nova not credited: it fell before the change took effect \
         (cpu_temp 70.0, level 85.0)"
    );
    assert_eq!(
        message,
        "not credited: it fell before the change took effect"
    );
    assert_eq!(recent_state(&e, &cmd.action_id), ActionState::NotVerified);
    let key = BreakerKey::new("nova", "thermal:cpu", "throttle_50");
    assert_eq!(e.breakers.failures(&key), 0);
}

/// A heartbeat the agent sent before its alert (still cool then) that
/// arrives after the command went out is older than the alert, which says
/// the CPU was hot: it is no fall before the change. The fall after the
/// change is credited.
#[test]
fn a_reading_older_than_the_alert_is_no_fall_before_the_change() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 1.0), t(1.05)));
    e.on_heartbeat(hb(Some(70.0), 0, 0.5), t(1.2));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(1.5);
    e.on_result(r, t(1.6));
    let mut verified = Vec::new();
    for s in 2..60 {
        let s = f64::from(s);
        let fx = e.on_heartbeat(hb(Some(70.0), 50, s), t(s + 0.1));
        verified.extend(
            audits(&fx, "verification")
                .into_iter()
                .map(|a| (s, a.data.clone())),
        );
        e.tick(t(s + 0.5));
    }
    assert_eq!(verified.len(), 1, "{verified:#?}");
    let (at, data) = &verified[0];
    assert_eq!(*at, 12.0);
    assert_eq!(data["outcome"], "succeeded");
    assert_eq!(data["fell_at"], timefmt::format(&t(2.0)).as_str());
    assert_eq!(e.counters.get("verifications.uncredited"), 0);
}

/// Critical at 88 °C; `throttle_50` does not bring it below 85 and is
/// escalated; `throttle_100` leaves it at 88 °C, below emergency's 95 but
/// still critical. The escalation's fix is judged against the level the
/// failed fix was (85 °C): it failed, and past emergency a human must
/// decide.
#[test]
fn an_escalations_fix_must_bring_the_metric_below_the_level_below() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(88.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(0.5);
    e.on_result(r, t(0.6));
    let mut fx = Vec::new();
    let mut s = 1.0;
    while fx.is_empty() || alerts(&fx).is_empty() {
        e.on_heartbeat(hb(Some(88.0), 50, s), t(s));
        fx = e.tick(t(s + 0.5));
        s += 1.0;
        assert!(s < 200.0, "no escalation");
    }
    let esc = alerts(&fx).remove(0);
    assert_eq!(esc.severity, Severity::Emergency);
    let fx = e.on_alert(esc, t(s));
    let full: Vec<Command> = commands(&fx)
        .into_iter()
        .filter(|c| c.action_type == "throttle_100")
        .collect();
    assert_eq!(full.len(), 1, "{fx:#?}");
    let mut r = result(&full[0], ResultStatus::Succeeded);
    r.timestamp = t(s + 0.5);
    e.on_result(r, t(s + 0.6));
    let mut verdicts = Vec::new();
    for i in 1..200 {
        let at = s + f64::from(i);
        e.on_heartbeat(hb(Some(88.0), 100, at), t(at));
        let fx = e.tick(t(at + 0.5));
        verdicts.extend(
            audits(&fx, "verification")
                .into_iter()
                .map(|a| a.data.clone()),
        );
    }
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    assert_eq!(verdicts[0]["outcome"], "failed");
    assert_eq!(verdicts[0]["below"], 85.0);
    let key = BreakerKey::new("nova", "thermal:cpu", "throttle_100");
    assert_eq!(e.breakers.failures(&key), 1);
}

/// Only the coordinator's own escalation lowers the bar to the level
/// below: an agent's emergency alert that carries `escalated_from_below`
/// (a forged or confused detail) is judged against emergency's own level,
/// and a throttle that brings 96 °C down to 90 °C is credited.
#[test]
fn an_agents_alert_cannot_claim_to_be_an_escalation() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    e.on_heartbeat(hb(Some(96.0), 0, 0.0), t(0.0));
    let mut a = alert(Severity::Emergency, 96.0, 0.0);
    a.details
        .insert(credit::ESCALATED_FROM_BELOW.into(), json!(85.0));
    let fx = e.on_alert(a, t(0.05));
    let cmd = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "throttle_100")
        .unwrap();
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(0.5);
    e.on_result(r, t(0.6));
    let mut verdicts = Vec::new();
    for s in 1..200 {
        let s = f64::from(s);
        let mut fx = e.on_heartbeat(hb(Some(90.0), 100, s), t(s));
        fx.extend(e.tick(t(s + 0.5)));
        verdicts.extend(
            audits(&fx, "verification")
                .into_iter()
                .map(|a| a.data.clone()),
        );
    }
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    assert_eq!(verdicts[0]["outcome"], "succeeded");
    assert_eq!(verdicts[0]["below"], 95.0);
}

/// A throttle that works is lifted once the node has been cool for
/// `clear_for` (2 s, shorter than the 10 s hold): the fix is credited
/// then. Heat that comes back once the throttle is off is a new problem,
/// not the fix's failure: no failed verification, no breaker failure, no
/// escalation.
#[test]
fn a_recovery_credits_the_fix_and_later_heat_is_not_its_failure() {
    let mut cfg = Config::default();
    cfg.thermal.clear_for = 2.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(88.0), 0, 0.0), t(0.0));
    let cmd = throttle_50(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.timestamp = t(0.5);
    e.on_result(r, t(0.6));
    let mut lifted_with = None;
    let mut fx = Vec::new();
    for s in 1..200 {
        let s = f64::from(s);
        let (cpu, throttle) = if lifted_with.is_some() {
            (88.0, 0)
        } else {
            (70.0, 50)
        };
        let now = e.on_heartbeat(hb(Some(cpu), throttle, s), t(s + 0.1));
        if lifted_with.is_none()
            && commands(&now)
                .iter()
                .any(|c| c.action_type == "reset_throttle")
        {
            lifted_with = Some(
                audits(&now, "verification")
                    .iter()
                    .map(|a| a.data.clone())
                    .collect::<Vec<_>>(),
            );
        }
        for reset in commands(&now) {
            let mut r = result(&reset, ResultStatus::Succeeded);
            r.timestamp = t(s + 0.2);
            fx.extend(e.on_result(r, t(s + 0.3)));
        }
        fx.extend(now);
        fx.extend(e.tick(t(s + 0.5)));
    }
    let at_reset = lifted_with.expect("the throttle was lifted");
    assert_eq!(at_reset.len(), 1, "{at_reset:#?}");
    assert_eq!(at_reset[0]["outcome"], "succeeded");
    assert_eq!(audits(&fx, "verification").len(), 1);
    assert_eq!(e.counters.get("verifications.failed"), 0);
    assert_eq!(e.counters.get("breaker.failures"), 0);
    assert!(alerts(&fx).is_empty(), "no escalation: {:#?}", alerts(&fx));
}

/// A node with two fixes under verification at once, a throttle and a
/// disk cleanup: lifting the throttle settles the throttle's fix only.
/// The cleanup that freed too little is still judged at its own deadline
/// (failed: the disk is still full), not closed by the thermal recovery.
/// Each of the three fixes is kept and judged on its own.
#[test]
fn a_thermal_recovery_settles_only_the_thermal_fix() {
    let mut cfg = Config::default();
    cfg.thermal.clear_for = 2.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let both = |cpu: f64, throttle: u8, at: f64| Heartbeat {
        storage_percent: Some(92.0),
        ..hb(Some(cpu), throttle, at)
    };
    e.on_heartbeat(both(88.0, 0, 0.0), t(0.0));
    let mut sent = commands(&e.on_alert(alert(Severity::Critical, 88.0, 0.0), t(0.05)));
    sent.extend(commands(
        &e.on_alert(storage_alert(Severity::Critical, 92.0, 0.0), t(0.05)),
    ));
    let names: Vec<&str> = sent.iter().map(|c| c.action_type.as_str()).collect();
    assert_eq!(names, ["throttle_50", "cleanup_logs", "archive_old"]);
    for c in &sent {
        let mut r = result(c, ResultStatus::Succeeded);
        r.details.insert("bytes_freed".into(), json!(1_000_000));
        r.timestamp = t(0.5);
        e.on_result(r, t(0.6));
    }
    let mut at_reset = None;
    let mut fx = Vec::new();
    for s in 1..200 {
        let s = f64::from(s);
        let now = e.on_heartbeat(both(70.0, 50, s), t(s + 0.1));
        if at_reset.is_none()
            && commands(&now)
                .iter()
                .any(|c| c.action_type == "reset_throttle")
        {
            at_reset = Some(
                audits(&now, "verification")
                    .iter()
                    .map(|a| (a.data["action_id"].clone(), a.data["outcome"].clone()))
                    .collect::<Vec<_>>(),
            );
        }
        fx.extend(now);
        fx.extend(e.tick(t(s + 0.5)));
    }
    assert_eq!(
        at_reset.expect("the throttle was lifted"),
        [(json!(sent[0].action_id), json!("succeeded"))]
    );
    let mut verdicts: Vec<(String, String)> = audits(&fx, "verification")
        .iter()
        .map(|a| {
            let id = a.data["action_id"].as_str().unwrap();
            let action = sent.iter().find(|c| c.action_id == id).unwrap();
            (
                action.action_type.clone(),
                a.data["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    verdicts.sort();
    let want = [
        ("archive_old", "failed"),
        ("cleanup_logs", "failed"),
        ("throttle_50", "succeeded"),
    ];
    assert_eq!(verdicts, want.map(|(a, o)| (a.to_string(), o.to_string())));
}

/// A flapping disk gets a cleanup at each rise after a normal reading,
/// but the agent's reminder at the same level within a rise is held: it
/// is no new rise, and the cleanup of that rise was already sent.
#[test]
fn a_flapping_disks_reminder_within_a_rise_gets_no_second_cleanup() {
    let mut e = engine();
    let mut rises = 0;
    for i in 0..10 {
        let at = f64::from(i) * 6.0;
        e.on_heartbeat(storage_hb(91.0, at), t(at));
        let flapping = e.counters.get("flapping.started") > 0;
        let fx = e.on_alert(storage_alert(Severity::Critical, 91.0, at), t(at + 0.1));
        let sent = commands(&fx);
        for cmd in &sent {
            let mut r = result(cmd, ResultStatus::Succeeded);
            r.details.insert("bytes_freed".into(), json!(1_000_000));
            r.timestamp = t(at + 0.5);
            e.on_result(r, t(at + 0.6));
        }
        if flapping {
            assert!(!sent.is_empty(), "the rise at {at} got no cleanup");
            rises += 1;
            let held = e.counters.get("alerts.held_flapping");
            let fx = e.on_alert(
                storage_alert(Severity::Critical, 91.5, at + 1.0),
                t(at + 1.1),
            );
            assert_eq!(audits(&fx, "alert").len(), 1, "recorded");
            assert!(
                commands(&fx).is_empty(),
                "a second cleanup at {at}: {fx:#?}"
            );
            assert_eq!(e.counters.get("alerts.held_flapping"), held + 1);
        }
        e.on_heartbeat(storage_hb(60.0, at + 3.0), t(at + 3.0));
        e.on_alert(storage_alert(Severity::Normal, 60.0, at + 3.0), t(at + 3.1));
        e.tick(t(at + 3.5));
    }
    assert!(rises >= 3, "{rises}");
}

/// A problem that changes state slowly, then faster: changes leave the
/// minute one at a time, and those still within it count with the next
/// ones. Five changes from 0 to 45 s, the first leaving the window at
/// 60 s, then two more at 62 and 64 s: six within the minute, flapping.
#[test]
fn changes_still_within_the_window_count_after_older_ones_leave_it() {
    let mut e = engine();
    let changes = [
        (0.0, Severity::Critical),
        (30.0, Severity::Normal),
        (35.0, Severity::Critical),
        (40.0, Severity::Normal),
        (45.0, Severity::Critical),
        (62.0, Severity::Normal),
        (64.0, Severity::Critical),
    ];
    let mut started = Vec::new();
    let mut next = changes.iter().peekable();
    for s in 0..80 {
        let s = f64::from(s);
        let mut fx = Vec::new();
        if let Some((_, severity)) = next.next_if(|(at, _)| *at == s) {
            fx.extend(e.on_alert(alert(*severity, 88.0, s), t(s + 0.1)));
        }
        fx.extend(e.tick(t(s + 0.5)));
        for a in audits(&fx, "flapping") {
            started.push((s, a.data["state"].clone(), a.data["changes"].clone()));
        }
    }
    assert_eq!(started, [(64.0, json!("started"), json!(6))]);
}

/// Flapping between warning and normal, then critical: the critical
/// rise is decided (it is worse), and from then on the critical rises of
/// the flap are held like the warning ones were, instead of sending
/// `throttle_50` again at each.
#[test]
fn a_flap_that_worsens_is_acted_on_once_at_the_worse_level() {
    let mut e = Engine::new(Config::default(), Counters::default(), "test");
    let mut sent: Vec<(f64, String)> = Vec::new();
    let swings = [
        (0.0, Severity::Warning),
        (3.0, Severity::Normal),
        (6.0, Severity::Warning),
        (9.0, Severity::Normal),
        (12.0, Severity::Warning),
        (15.0, Severity::Normal),
        (18.0, Severity::Critical),
        (21.0, Severity::Normal),
        (24.0, Severity::Critical),
        (27.0, Severity::Normal),
        (30.0, Severity::Critical),
    ];
    for (at, severity) in swings {
        let fx = e.on_alert(alert(severity, 80.0, at), t(at + 0.1));
        for cmd in commands(&fx) {
            sent.push((at, cmd.action_type.clone()));
            let mut r = result(&cmd, ResultStatus::Succeeded);
            r.timestamp = t(at + 0.5);
            e.on_result(r, t(at + 0.6));
        }
        e.tick(t(at + 1.0));
    }
    assert_eq!(e.counters.get("flapping.started"), 1);
    assert_eq!(
        sent,
        [
            (0.0, "throttle_10".to_string()),
            (18.0, "throttle_50".to_string())
        ]
    );
    assert!(e.counters.get("alerts.held_flapping") >= 2);
}

/// A problem whose throttle was lifted after each rise starts flapping
/// with a new rise: that rise is decided afresh (the throttle is off),
/// and the throttle it sends then stays in place while the problem flaps.
#[test]
fn a_flap_that_starts_after_its_throttle_was_lifted_gets_a_throttle() {
    let mut cfg = Config::default();
    cfg.thermal.clear_for = 2.0;
    cfg.coordinator.verify_within = 1.0;
    cfg.coordinator.verify_hold_seconds = 0.0;
    // Five changes: the flap starts at a rise.
    cfg.coordinator.flap_start_changes = 5;
    let mut n = Node::new(cfg);
    n.second(0.0, false);
    // Hot 3 s, cool 5 s (longer than clear_for).
    for s in 1..60 {
        n.second(f64::from(s), (s - 1) % 8 < 3);
    }
    let flapping = n.audits("flapping", 0.0);
    assert_eq!(flapping.len(), 1, "{flapping:#?}");
    let started = flapping[0].timestamp;
    let resets = n.sent("reset_throttle");
    assert!(resets.len() >= 2, "lifted after each rise: {resets:?}");
    assert!(resets.iter().all(|&r| t(r) < started), "{resets:?}");
    let throttles: Vec<f64> =
        n.fx.iter()
            .filter_map(|(at, e)| match e {
                Effect::Command(_, c) if c.action_type.starts_with("throttle_") => Some(*at),
                _ => None,
            })
            .collect();
    assert!(
        throttles
            .iter()
            .any(|&at| t(at) <= started && t(at + 1.0) > started),
        "no throttle at the rise that started the flap ({started}): {throttles:?}"
    );
    assert!(n.throttle > 0, "the node flaps unthrottled");
}

/// The agents `skos status` lists: (id, type) of each, in order.
fn shown_agents(e: &Engine, now: Timestamp) -> Vec<(String, String)> {
    e.status(now)
        .agents
        .into_iter()
        .map(|a| (a.agent_id, a.agent_type))
        .collect()
}

#[test]
fn a_gpu_fix_is_verified_by_the_gpu_temperature() {
    let mut e = engine();
    let with_gpu = |gpu: f64, throttle: u8, at: f64| {
        let mut h = hb(Some(50.0), throttle, at);
        h.gpu_temp = Some(gpu);
        h
    };
    e.on_heartbeat(with_gpu(88.0, 0, 0.0), t(0.0));
    let mut gpu = alert(Severity::Critical, 88.0, 0.0);
    gpu.message = "GPU temperature 88°C".into();
    gpu.details.insert("sensor".into(), json!("gpu"));
    let fx = e.on_alert(gpu, t(0.0));
    let throttle = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "throttle_50")
        .unwrap();
    e.on_result(result(&throttle, ResultStatus::Succeeded), t(1.0));
    // The CPU was cool all along: the GPU's reading is what counts.
    let fx = e.on_heartbeat(with_gpu(87.0, 50, 10.0), t(10.0));
    assert!(audits(&fx, "verification").is_empty(), "GPU still hot");
    e.on_heartbeat(with_gpu(80.0, 50, 20.0), t(20.0));
    let fx = e.on_heartbeat(with_gpu(80.0, 50, 30.0), t(30.0));
    let v = audits(&fx, "verification");
    assert_eq!(v.len(), 1, "the GPU cooled below 85 °C for the hold");
    assert_eq!(v[0].data["outcome"], "succeeded");
    assert_eq!(v[0].data["metric"], "gpu_temp");
    assert_eq!(v[0].data["value"], 80.0);
}

#[test]
fn a_node_is_shown_with_the_type_of_each_of_its_agents() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    assert_eq!(
        shown_agents(&e, t(0.0)),
        [("thermal-sentinel-nova".into(), "thermal_sentinel".into())]
    );
    // A second agent on the node: listed beside the first, with its own
    // type.
    let mut other = hb(Some(50.0), 0, 5.0);
    other.agent_id = "storage-guard-nova".into();
    other.agent_type = "storage_guard".into();
    e.on_heartbeat(other, t(5.0));
    assert_eq!(
        shown_agents(&e, t(5.0)),
        [
            ("storage-guard-nova".into(), "storage_guard".into()),
            ("thermal-sentinel-nova".into(), "thermal_sentinel".into())
        ]
    );
}

#[test]
fn an_agent_redeployed_as_another_type_is_shown_as_the_new_one() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    let mut h = hb(Some(50.0), 0, 10.0);
    h.agent_type = "thermal_sentinel_v2".into();
    e.on_heartbeat(h, t(10.0));
    assert_eq!(
        shown_agents(&e, t(10.0)),
        [("thermal-sentinel-nova".into(), "thermal_sentinel_v2".into())]
    );
    let s = e.status(t(10.0));
    assert!(s.render().contains("thermal_sentinel_v2"), "{}", s.render());
}

#[test]
fn a_restart_keeps_the_agent_of_the_last_heartbeat() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    let mut other = hb(Some(50.0), 0, 5.0);
    other.agent_id = "storage-guard-nova".into();
    other.agent_type = "storage_guard".into();
    e.on_heartbeat(other, t(5.0));
    let text = serde_json::to_string(&e.snapshot()).unwrap();
    let mut again = engine();
    again.restore(serde_json::from_str(&text).unwrap(), t(6.0));
    // The node comes back with the agent that sent its last heartbeat
    // (the others are heard again with their next one).
    assert_eq!(
        shown_agents(&again, t(6.0)),
        [("storage-guard-nova".into(), "storage_guard".into())]
    );
    // A single-agent node too.
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    let text = serde_json::to_string(&e.snapshot()).unwrap();
    let mut again = engine();
    again.restore(serde_json::from_str(&text).unwrap(), t(1.0));
    assert_eq!(
        shown_agents(&again, t(1.0)),
        [("thermal-sentinel-nova".into(), "thermal_sentinel".into())]
    );
}

#[test]
fn a_clock_exactly_at_the_bound_is_not_skewed() {
    // max_clock_skew_seconds is 30: "off by more than this" raises.
    assert_eq!(engine().cfg.coordinator.max_clock_skew_seconds, 30.0);
    for off in [30.0, -30.0] {
        let mut e = engine();
        let fx = e.on_heartbeat(hb(Some(50.0), 0, 100.0 + off), t(100.0));
        assert!(alerts(&fx).is_empty(), "{off:+} s: {:?}", alerts(&fx));
        let s = e.status(t(100.0));
        assert_eq!(s.nodes[0].clock_offset_seconds, Some(off));
        assert!(!s.nodes[0].clock_skewed, "{off:+} s");
    }
    // Just past it, ahead: a warning that says so.
    let mut e = engine();
    let fx = e.on_heartbeat(hb(Some(50.0), 0, 100.0 + 30.5), t(100.0));
    let a = alerts(&fx);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, AlertKind::ClockSkew);
    assert_eq!(a[0].severity, Severity::Warning);
    assert!(
        a[0].message.contains("30.5s ahead of the coordinator"),
        "{}",
        a[0].message
    );
}

#[test]
fn nodes_share_one_copy_of_an_agent_type_and_the_shared_set_stays_bounded() {
    use super::state::SHARED_AGENT_TYPES;
    use std::sync::Arc;
    let on = |name: &str, kind: &str| {
        let mut h = hb(Some(50.0), 0, 0.0);
        h.node = NodeName::parse(name).unwrap();
        h.agent_id = format!("agent-{name}");
        h.agent_type = kind.into();
        h
    };
    let kind = |e: &Engine, name: &str| {
        let node = NodeName::parse(name).unwrap();
        e.nodes
            .get(&node)
            .unwrap()
            .agents
            .last()
            .unwrap()
            .kind
            .clone()
    };
    let mut e = engine();
    e.on_heartbeat(on("a", "thermal_sentinel"), t(0.0));
    e.on_heartbeat(on("b", "thermal_sentinel"), t(0.0));
    // A fleet of one agent type holds it once.
    assert!(Arc::ptr_eq(&kind(&e, "a"), &kind(&e, "b")));
    // Agents that name ever new types cannot grow the shared set past
    // its bound; a node past it still shows its own type.
    for i in 0..SHARED_AGENT_TYPES + 2 {
        e.on_heartbeat(on(&format!("n{i}"), &format!("type-{i}")), t(1.0));
    }
    assert_eq!(e.agent_types.len(), SHARED_AGENT_TYPES);
    let past = SHARED_AGENT_TYPES + 1;
    assert_eq!(&*kind(&e, &format!("n{past}")), format!("type-{past}"));
}

#[test]
fn command_lines_from_an_agent_stay_out_of_the_audit_trail() {
    let evidence = json!([
        {"pid": 20, "command": "sh fork.sh", "cmdline": "sh /srv/fork.sh --token s3cret"}
    ]);
    let loop_alert = |id: &str| {
        let mut a = alert(Severity::Critical, 0.0, 0.0);
        a.alert_id = id.into();
        a.kind = AlertKind::Loop;
        a.agent_id = "loop-breaker-nova".into();
        a.details =
            json!({"sensor": "proc:forky", "condition": "depth_exceeded", "evidence": evidence})
                .as_object()
                .unwrap()
                .clone();
        a
    };
    let mut e = engine();
    let fx = e.on_alert(loop_alert("a-1"), t(0.0));
    let text = serde_json::to_string(&audits(&fx, "alert")).unwrap();
    assert!(text.contains("sh fork.sh"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let cmd = commands(&fx).into_iter().next().expect("circuit_break");
    let mut r = result(&cmd, ResultStatus::Succeeded);
    r.details = json!({"group": "forky", "evidence": evidence})
        .as_object()
        .unwrap()
        .clone();
    let fx = e.on_result(r.clone(), t(1.0));
    let text = serde_json::to_string(&audits(&fx, "result")).unwrap();
    assert!(!text.is_empty() && !text.contains("s3cret"), "{text}");

    // Asked for: kept.
    let mut cfg = seed_config();
    cfg.loop_.record_command_lines = true;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    let fx = e.on_alert(loop_alert("a-2"), t(0.0));
    let text = serde_json::to_string(&audits(&fx, "alert")).unwrap();
    assert!(text.contains("s3cret"), "{text}");
}

/// A loop breaker's open circuits (from its node's heartbeat) are among the
/// status's open circuits, beside the coordinator's breakers; a closed one
/// or none is not; the next heartbeat without them clears them.
#[test]
fn loop_breaker_circuits_show_among_the_open_circuits() {
    let mut e = engine();
    let mut h = hb(Some(50.0), 0, 0.0);
    h.metadata.insert(
        "loop_breaker".into(),
        json!({"chains": 3, "circuits": [
            {"chain_id": "recurse-forever", "circuit": "open"},
            {"chain_id": "trial", "circuit": "half_open"},
            {"chain_id": "fine", "circuit": "closed"},
        ], "groups": []}),
    );
    e.on_heartbeat(h, t(0.0));
    let s = e.status(t(1.0));
    assert_eq!(s.summary.open_circuits, 2);
    let listed: Vec<(String, String)> = s
        .open_circuits
        .iter()
        .map(|c| {
            (
                c["problem"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("loop:chain:recurse-forever".to_string(), "open".to_string()),
            ("loop:chain:trial".to_string(), "half_open".to_string()),
        ]
    );
    assert!(s.open_circuits.iter().all(|c| c["node"] == "nova"));
    e.on_heartbeat(hb(Some(50.0), 0, 2.0), t(2.0));
    let s = e.status(t(3.0));
    assert_eq!(s.summary.open_circuits, 0);
    assert!(s.open_circuits.is_empty());
}

// --- The check before acting: the level a command carries, and a
// `not_needed` answer. ---

/// A command carries the level its problem is at: the threshold of the
/// alert's level (config, not the alert's payload); none for a prediction,
/// a restoring action or a workload step.
#[test]
fn commands_carry_the_level_of_their_problem() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(76.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Warning, 76.0, 0.0), t(0.0));
    let cmd = commands(&fx).remove(0);
    assert_eq!(
        (cmd.action_type.as_str(), cmd.level),
        ("throttle_10", Some(75.0))
    );
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    let levels: Vec<(String, Option<f64>)> = commands(&fx)
        .into_iter()
        .map(|c| (c.action_type, c.level))
        .collect();
    assert_eq!(
        levels,
        [
            ("throttle_50".to_string(), Some(85.0)),
            ("spin_fans".to_string(), Some(85.0))
        ]
    );
    // A storage problem: its percent.
    let mut s = alert(Severity::Critical, 91.0, 2.0);
    s.kind = AlertKind::Storage;
    s.details = json!({"sensor": "/data", "percent": 91.0})
        .as_object()
        .unwrap()
        .clone();
    s.alert_id = "storage-1".into();
    let fx = e.on_alert(s, t(2.0));
    assert!(
        commands(&fx).iter().all(|c| c.level == Some(90.0)),
        "{fx:?}"
    );
    // A prediction is acted on as raised: its reading is below every
    // threshold by design.
    let mut p = alert(Severity::Warning, 65.0, 3.0);
    p.details
        .insert("event".into(), json!(skos_core::events::PREDICTED));
    p.details.insert("sensor".into(), json!("gpu"));
    p.alert_id = "predicted-1".into();
    let fx = e.on_alert(p, t(3.0));
    let cmd = commands(&fx).remove(0);
    assert_eq!((cmd.action_type.as_str(), cmd.level), ("throttle_10", None));
    // Restoring actions and workload steps carry none.
    let cfg = seed_config();
    let a = alert(Severity::Warning, 76.0, 0.0);
    for action in ["reset_throttle", "workload_start", "workload_stop"] {
        assert_eq!(
            credit::command_level(&cfg, &a, Severity::Warning, action),
            None,
            "{action}"
        );
    }
}

/// A command its agent answers `not_needed` (the CPU cooled before it
/// ran): audited as an avoided remediation, counted, closed (the same
/// action can be sent again), neither a breaker failure nor a success (no
/// verification), and recorded in the ledger.
#[test]
fn a_not_needed_answer_closes_the_command_without_a_verdict() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let cmd = commands(&fx).remove(0);
    assert_eq!(cmd.action_type, "throttle_50");
    let mut r = result(&cmd, ResultStatus::NotNeeded);
    r.message = "thermal:cpu is gone".into();
    r.details.insert("level".into(), json!(85.0));
    r.details.insert("reading".into(), json!(60.0));
    let fx = e.on_result(r, t(1.0));
    let v = audits(&fx, "verification");
    assert_eq!(v.len(), 1, "{fx:?}");
    assert_eq!(v[0].data["outcome"], "not_needed");
    assert_eq!(v[0].data["reason"], "avoided");
    assert_eq!(v[0].data["reading"], 60.0);
    assert_eq!(v[0].data["level"], 85.0);
    assert_eq!(
        audits(&fx, "result")[0].data["result"]["status"],
        "not_needed"
    );
    assert_eq!(e.counters.get("results.not_needed"), 1);
    assert_eq!(e.counters.get("remediations.avoided"), 1);
    assert_eq!(e.counters.get("breaker.failures"), 0);
    let key = BreakerKey::new("nova", "thermal:cpu", "throttle_50");
    assert_eq!(e.breakers.failures(&key), 0);
    assert!(e.pending.get(&cmd.action_id).is_none(), "closed");
    assert_eq!(e.verifications.of(&nova()).count(), 0, "nothing to verify");
    let rec = e
        .ledger
        .get(&nova(), "thermal:cpu", "throttle_50")
        .cloned()
        .unwrap();
    assert_eq!(
        (rec.attempts, rec.not_needed, rec.verified, rec.failed),
        (1, 1, 0, 0)
    );
    assert_eq!(rec.failing_streak, 0);
    assert_eq!(rec.last_outcome, Some(ledger::Outcome::NotNeeded));
    let s = e.status(t(2.0));
    let row = s.ledger.iter().find(|r| r.action == "throttle_50").unwrap();
    assert_eq!(row.not_needed, 1);
    let sent = s
        .recent_actions
        .iter()
        .find(|a| a.action_id == cmd.action_id)
        .unwrap();
    assert_eq!(sent.state, ActionState::NotNeeded);
    assert!(s.render().contains("1 not needed"), "{}", s.render());
    // Closed: the next alert sends it again instead of waiting on it.
    let fx = e.on_alert(alert(Severity::Critical, 88.0, 3.0), t(3.0));
    assert!(
        commands(&fx).iter().any(|c| c.action_type == "throttle_50"),
        "{fx:?}"
    );
}

/// A half-open trial answered `not_needed` says nothing of the fix: the
/// trial is given back, as for `unsupported`.
#[test]
fn a_not_needed_trial_gives_the_trial_back() {
    let mut cfg = seed_config();
    cfg.circuit_breaker.max_failures = 1;
    cfg.circuit_breaker.reset_timeout_seconds = 10.0;
    let mut e = Engine::new(cfg, Counters::default(), "test");
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 0.0), t(0.0));
    let first = commands(&fx).remove(0);
    e.on_result(result(&first, ResultStatus::Failed), t(1.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 12.0), t(12.0));
    let trial = commands(&fx)
        .into_iter()
        .find(|c| c.action_type == "throttle_50")
        .unwrap();
    e.on_result(result(&trial, ResultStatus::NotNeeded), t(13.0));
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 14.0), t(14.0));
    assert!(
        commands(&fx).iter().any(|c| c.action_type == "throttle_50"),
        "{fx:?}"
    );
}

fn silence_spec(duration: u64) -> skos_core::silence::SilenceSpec {
    skos_core::silence::SilenceSpec {
        node: nova(),
        kind: Some("thermal".into()),
        problem: None,
        action: None,
        start: None,
        end: None,
        duration_seconds: Some(duration),
        every: None,
        comment: "fan replacement".into(),
        by: "ana".into(),
    }
}

#[test]
fn a_silenced_problem_is_recorded_and_decided_but_never_acted_on() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let (s, fx) = e.add_silence(&silence_spec(600), t(0.0)).unwrap();
    let added = audits(&fx, "silence");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].actor, "ana");
    assert_eq!(added[0].data["event"], "added");
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    assert!(
        commands(&fx).is_empty(),
        "a silenced problem gets no command"
    );
    assert_eq!(audits(&fx, "alert").len(), 1, "the alert is still recorded");
    assert_eq!(audits(&fx, "decision").len(), 1);
    assert_eq!(skipped_reasons(&fx), ["silenced", "silenced"]);
    for skipped in audits(&fx, "skipped") {
        assert_eq!(skipped.data["silence_id"], s.id.as_str());
    }
    let status = e.status(t(2.0));
    assert_eq!(status.silences.len(), 1);
    assert_eq!(status.silences[0].silence.id, s.id);
    assert!(status.silences[0].holding);
    assert_eq!(status.summary.silences, 1);
}

#[test]
fn a_silence_covers_only_its_node_kind_and_action() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let mut spec = silence_spec(600);
    spec.kind = None;
    spec.action = Some("throttle_50".into());
    e.add_silence(&spec, t(0.0)).unwrap();
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    let names: Vec<String> = commands(&fx).into_iter().map(|c| c.action_type).collect();
    assert_eq!(names, ["spin_fans"], "only the silenced action is held");
    assert_eq!(skipped_reasons(&fx), ["silenced"]);
}

#[test]
fn an_expired_silence_acts_again_on_what_it_held() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let (s, _) = e.add_silence(&silence_spec(600), t(0.0)).unwrap();
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    assert!(commands(&fx).is_empty());
    assert!(matches!(
        e.expire_silence("s-000000000000", "ana", t(5.0)),
        Err(skos_core::silence::SilenceError::Unknown(_))
    ));
    let (gone, fx) = e.expire_silence(&s.id, "bo", t(5.0)).unwrap();
    assert_eq!(gone.id, s.id);
    let expired = audits(&fx, "silence");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].actor, "bo");
    assert_eq!(expired[0].data["event"], "expired");
    let names: Vec<String> = commands(&fx).into_iter().map(|c| c.action_type).collect();
    assert_eq!(names, ["throttle_50", "spin_fans"], "decided again at once");
    assert!(e.silences().is_empty());
    assert!(e.status(t(6.0)).silences.is_empty());
}

#[test]
fn a_silence_that_ends_on_a_tick_acts_again_and_a_later_one_waits_for_its_start() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    // A window starting later does not hold yet.
    let mut later = silence_spec(60);
    later.start = Some(t(1000.0));
    later.comment = "planned work".into();
    e.add_silence(&later, t(0.0)).unwrap();
    let (s, _) = e.add_silence(&silence_spec(60), t(0.0)).unwrap();
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    assert!(commands(&fx).is_empty());
    e.on_heartbeat(hb(Some(87.0), 0, 30.0), t(30.0));
    let fx = e.tick(t(30.0));
    assert!(audits(&fx, "silence").is_empty(), "not ended yet");
    e.on_heartbeat(hb(Some(87.0), 0, 59.0), t(59.0));
    let fx = e.tick(t(60.0));
    let ended = audits(&fx, "silence");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].data["event"], "ended");
    assert_eq!(ended[0].data["silence"]["id"], s.id.as_str());
    assert_eq!(commands(&fx).len(), 2, "acted on once the window closed");
    assert_eq!(e.silences().len(), 1, "the later window is still kept");
}

#[test]
fn silences_survive_a_restart_in_their_node_snapshot() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let (s, _) = e.add_silence(&silence_spec(600), t(0.0)).unwrap();
    e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    let snap = e.node_snapshot(&nova());
    assert!(!snap.is_empty());
    let json = serde_json::to_string(&snap).unwrap();
    let mut again = engine();
    again.restore(serde_json::from_str(&json).unwrap(), t(2.0));
    assert_eq!(again.silences().len(), 1);
    assert!(again.known_nodes().contains(&nova()));
    // What it held is decided again when it is expired after the restart.
    let (_, fx) = again.expire_silence(&s.id, "ana", t(3.0)).unwrap();
    assert_eq!(commands(&fx).len(), 2);
}

#[test]
fn a_silence_for_a_node_never_seen_is_kept_in_that_nodes_state() {
    let mut e = engine();
    let mut spec = silence_spec(600);
    spec.node = node("lyra");
    e.add_silence(&spec, t(0.0)).unwrap();
    assert!(e.known_nodes().contains(&node("lyra")));
    assert_eq!(e.node_snapshot(&node("lyra")).silences.len(), 1);
    let fx = e.add_silence(&spec, t(0.0));
    assert!(matches!(
        fx,
        Err(skos_core::silence::SilenceError::Exists(_))
    ));
}

#[test]
fn a_node_seen_recently_is_not_forgotten_unless_forced() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    assert!(matches!(
        e.forget_node(&nova(), "ana", false, t(2.0)),
        Err(ForgetError::Recent { .. })
    ));
    assert!(matches!(
        e.forget_node(&node("lyra"), "ana", false, t(2.0)),
        Err(ForgetError::Unknown(_))
    ));
    assert_eq!(e.known_nodes().len(), 1, "nothing dropped by a refusal");
    let fx = e.forget_node(&nova(), "ana", true, t(2.0)).unwrap();
    let forgotten = audits(&fx, "node");
    assert_eq!(forgotten.len(), 1);
    assert_eq!(forgotten[0].actor, "ana");
    assert_eq!(forgotten[0].data["event"], "forgotten");
    assert_eq!(forgotten[0].data["dropped"]["open_alerts"], 1);
    assert_eq!(forgotten[0].data["dropped"]["pending_commands"], 2);
    assert!(e.known_nodes().is_empty());
    assert!(
        e.node_snapshot(&nova()).is_empty(),
        "its saved state is removed"
    );
    assert!(e.status(t(3.0)).open_alerts.is_empty());
    // Its deadlines are gone: a later tick closes nothing as no_result.
    let fx = e.tick(t(500.0));
    assert!(audits(&fx, "no_result").is_empty());
}

#[test]
fn an_offline_node_is_forgotten_without_force_and_rejoins_with_a_heartbeat() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(50.0), 0, 0.0), t(0.0));
    e.tick(t(100.0));
    assert!(e.nodes.get(&nova()).is_some_and(|n| n.offline));
    let fx = e.forget_node(&nova(), "ana", false, t(101.0)).unwrap();
    assert_eq!(audits(&fx, "node").len(), 1);
    assert!(e.known_nodes().is_empty());
    let fx = e.on_heartbeat(hb(Some(50.0), 0, 200.0), t(200.0));
    assert_eq!(audits(&fx, "node")[0].data["event"], "joined");
}

#[test]
fn control_requests_are_answered_with_what_was_done_or_why_not() {
    use crate::control::{ControlRequest, Refusal};
    let mut e = engine();
    let (reply, fx) = e.control(
        &ControlRequest::SilenceAdd {
            silence: silence_spec(600),
        },
        t(0.0),
    );
    assert!(reply.error.is_none(), "{reply:?}");
    assert_eq!(reply.silences.len(), 1);
    assert_eq!(audits(&fx, "silence").len(), 1);
    let (list, fx) = e.control(&ControlRequest::SilenceList, t(1.0));
    assert!(fx.is_empty());
    assert_eq!(list.silences, reply.silences);
    let (bad, fx) = e.control(
        &ControlRequest::SilenceExpire {
            id: "s-nope".into(),
            by: "ana".into(),
        },
        t(1.0),
    );
    assert!(fx.is_empty());
    assert_eq!(bad.refusal, Some(Refusal::NotFound));
    let mut wrong = silence_spec(600);
    wrong.comment = String::new();
    let (bad, _) = e.control(&ControlRequest::SilenceAdd { silence: wrong }, t(1.0));
    assert_eq!(bad.refusal, Some(Refusal::Invalid));
    assert!(bad.error.unwrap().contains("comment"));
}

#[test]
fn a_recurring_window_holds_only_inside_and_acts_when_it_closes() {
    // t(0) is 2023-11-14T22:13:20Z; a daily window at 22:15 for a minute.
    let mut e = engine();
    e.on_heartbeat(hb(Some(87.0), 0, 0.0), t(0.0));
    let mut spec = silence_spec(60);
    spec.every = Some("15 22 * * *".into());
    let (s, _) = e.add_silence(&spec, t(0.0)).unwrap();
    assert!(!s.holds_at(t(0.0)));
    // Before the window: acted on.
    let fx = e.on_alert(alert(Severity::Critical, 87.0, 1.0), t(1.0));
    assert_eq!(commands(&fx).len(), 2, "no window yet");
    // Inside the window (22:15:00 is t(100)): an alert's actions are held.
    e.on_heartbeat(hb(Some(99.0), 0, 101.0), t(101.0));
    let fx = e.on_alert(alert(Severity::Emergency, 99.0, 101.0), t(101.0));
    assert!(commands(&fx).is_empty());
    assert!(skipped_reasons(&fx).iter().all(|r| r == "silenced"));
    assert!(!skipped_reasons(&fx).is_empty());
    e.on_heartbeat(hb(Some(99.0), 0, 150.0), t(150.0));
    assert!(audits(&e.tick(t(150.0)), "silence").is_empty());
    // The window closes at 22:16:00 (t(160)): decided again, the silence kept.
    e.on_heartbeat(hb(Some(99.0), 0, 159.0), t(159.0));
    let fx = e.tick(t(161.0));
    let closed = audits(&fx, "silence");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].data["event"], "window_closed");
    assert_eq!(commands(&fx).len(), 2, "the emergency actions go out");
    assert_eq!(e.silences().len(), 1);
    assert!(e.silences()[0].held.is_empty());
}

/// An early warning answered as raised, then withdrawn by its agent (the
/// rise stopped short of warning): the `normal` alert closes it, so the
/// node is not left showing a warning that no reading supports.
#[test]
fn a_withdrawn_prediction_closes_the_early_warning() {
    let mut e = engine();
    e.on_heartbeat(hb(Some(65.0), 0, 0.0), t(0.0));
    let mut p = alert(Severity::Warning, 65.0, 1.0);
    p.details
        .insert("event".into(), json!(skos_core::events::PREDICTED));
    p.alert_id = "nova-predicted".into();
    let fx = e.on_alert(p, t(1.0));
    assert_eq!(commands(&fx)[0].action_type, "throttle_10");
    assert_eq!(e.status(t(1.5)).open_alerts.len(), 1);
    let mut w = alert(Severity::Normal, 70.0, 60.0);
    w.details.insert(
        "event".into(),
        json!(skos_core::events::PREDICTION_WITHDRAWN),
    );
    w.details
        .insert("previous_severity".into(), json!("warning"));
    w.alert_id = "nova-withdrawn".into();
    let fx = e.on_alert(w, t(60.0));
    assert_eq!(audits(&fx, "alert").len(), 1, "{fx:?}");
    assert!(commands(&fx)
        .iter()
        .all(|c| c.action_type == "reset_throttle"));
    let s = e.status(t(61.0));
    assert!(s.open_alerts.is_empty(), "{:?}", s.open_alerts);
    assert_eq!(s.nodes[0].status, NodeHealth::Healthy);
}
