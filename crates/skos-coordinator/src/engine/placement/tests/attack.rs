//! Attacks on the placement plans: each test states what must hold and
//! fails while it does not (see the commit message for each finding).

use super::*;

/// Audit records among `effects`.
fn audits(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Audit(_)))
        .count()
}

/// lyra and athena report at `at` (athena hot when `athena_hot`).
fn others_report(e: &mut Engine, at: f64) {
    e.on_heartbeat(hb("lyra", 60.0, &[("backup", "running")], at), t(at));
    e.on_heartbeat(hb("athena", 50.0, &[], at), t(at));
}

/// nova falls silent at 0; ticks every 0.25 s (the coordinator's tick)
/// from `from` to `to`, lyra and athena reporting every 10 s; returns the
/// effects of every tick.
fn dead_nova_ticks(e: &mut Engine, from: f64, to: f64) -> Vec<Effect> {
    let mut all = Vec::new();
    let mut s = from;
    while s < to {
        if (s * 4.0).round() as i64 % 40 == 0 {
            others_report(e, s);
        }
        all.extend(e.tick(t(s)));
        s += 0.25;
    }
    all
}

#[test]
fn a_dead_node_with_no_spare_able_to_take_over_is_not_audited_on_every_tick() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    // Both spares hot: no failover target.
    for node in ["lyra", "athena"] {
        e.on_alert(thermal(node, Severity::Warning, 80.0, 0.0), t(0.0));
    }
    // Offline at 30 s, failover due at 40 s; 60 s of ticks after that.
    let fx = dead_nova_ticks(&mut e, 40.0, 100.0);
    let placement = fx
        .iter()
        .filter(|e| matches!(e, Effect::Audit(a) if a.event_type == "placement"))
        .count();
    assert!(
        placement <= 2,
        "{placement} placement records in 60 s for one dead node with nowhere to go"
    );
}

#[test]
fn a_failover_frozen_by_the_fleet_gate_is_not_audited_on_every_tick() {
    let mut f = fleet();
    f.min_healthy = MinHealthy::Count(3);
    let mut e = engine_with(f, config());
    fleet_reports(&mut e, 60.0, 0.0);
    let fx = dead_nova_ticks(&mut e, 40.0, 100.0);
    let n = skipped(&fx, "fleet_degraded");
    assert!(
        n <= 2,
        "{n} fleet_degraded skips audited in 60 s ({} audit records in all)",
        audits(&fx)
    );
}

#[test]
fn a_denied_failover_of_a_dead_node_stays_denied() {
    let mut e = needing_approval();
    fleet_reports(&mut e, 60.0, 0.0);
    let fx = dead_nova_ticks(&mut e, 40.0, 41.0);
    let id = approvals(&fx, "waiting")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    e.deny(&id, "ops", t(41.0)).unwrap();
    let fx = dead_nova_ticks(&mut e, 41.25, 45.0);
    let again = approvals(&fx, "waiting");
    assert!(
        again.is_empty(),
        "denied at 41 s, asked again at once under the same id: {again:?}"
    );
}

#[test]
fn approving_the_failover_of_a_node_that_came_back_moves_nothing() {
    let mut e = needing_approval();
    fleet_reports(&mut e, 60.0, 0.0);
    let fx = dead_nova_ticks(&mut e, 40.0, 41.0);
    let id = approvals(&fx, "waiting")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // nova is back, cool and running everything.
    fleet_reports(&mut e, 55.0, 50.0);
    e.tick(t(50.0));
    let fx = e.approve(&id, "ops", t(60.0)).unwrap();
    assert!(
        steps(&fx).is_empty(),
        "the approved failover moves workloads off a healthy nova: {:?}",
        steps(&fx)
    );
}

#[test]
fn an_approval_past_its_expiry_cannot_be_approved() {
    let mut e = needing_approval();
    fleet_reports(&mut e, 96.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Emergency, 96.0, 0.0), t(0.0));
    let id = approvals(&fx, "waiting")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // approval_timeout is 600 s; no tick ran since.
    assert!(
        e.approve(&id, "ops", t(700.0)).is_err(),
        "approved 100 s after it expired"
    );
}

#[test]
fn a_node_outside_the_configured_fleet_is_never_a_redistribute_target() {
    let seed = include_str!("../../../../../skos-core/tests/fixtures/seed-config.yaml");
    let text = format!(
        "{seed}\nworkloads:\n  synthesis-core: {{driver: process, command: [/bin/true]}}\n  docker-swarm: {{driver: process, command: [/bin/true], essential: false}}\n"
    );
    let mut cfg = Config::from_yaml(&text).unwrap();
    cfg.thermal.actions.critical = vec!["redistribute".into()];
    let mut e = Engine::new(cfg, Counters::default(), "test");
    fleet_reports(&mut e, 87.0, 0.0);
    // A node no config names (a forged heartbeat, or a stray agent) that
    // reports itself cold.
    e.on_heartbeat(hb("ghost", 20.0, &[], 0.0), t(0.0));
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    let first = steps(&fx);
    // Its (unsigned, self-declared) success makes nova stop the real copy.
    let fx = answer(&mut e, &fx, ResultStatus::Succeeded, 1.0);
    let then = steps(&fx);
    answer(&mut e, &fx, ResultStatus::Succeeded, 2.0);
    assert!(
        first.iter().all(|(node, _, _)| node != "ghost")
            && placed(&e, "synthesis-core").as_deref() != Some("ghost"),
        "start sent {first:?}, then {then:?}; synthesis-core now placed on {:?}",
        placed(&e, "synthesis-core")
    );
}

#[test]
fn approving_a_redistribute_whose_alert_has_cleared_moves_nothing() {
    let mut f = fleet();
    f.approval = vec![Reason::Redistribute];
    let mut e = engine_with(f, config());
    fleet_reports(&mut e, 87.0, 0.0);
    let fx = e.on_alert(thermal("nova", Severity::Critical, 87.0, 0.0), t(0.0));
    let id = approvals(&fx, "waiting")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // nova cools down; its alert clears.
    e.on_alert(thermal("nova", Severity::Normal, 60.0, 10.0), t(10.0));
    fleet_reports(&mut e, 60.0, 10.0);
    let fx = e.approve(&id, "ops", t(20.0)).unwrap();
    assert!(
        steps(&fx).is_empty(),
        "moved off a cool nova on a stale approval: {:?}",
        steps(&fx)
    );
}

#[test]
fn a_failover_whose_start_always_fails_is_not_audited_on_every_tick() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    let mut starts = 0;
    let mut records = 0;
    let mut last_minute = 0;
    let mut s: f64 = 40.0;
    while s < 1800.0 {
        if (s * 4.0).round() as i64 % 40 == 0 {
            others_report(&mut e, s);
        }
        let mut fx = e.tick(t(s));
        let mut n = audits(&fx);
        // Every start fails at once.
        while !steps(&fx).is_empty() {
            starts += steps(&fx).len();
            fx = answer(&mut e, &fx, ResultStatus::Failed, s);
            n += audits(&fx);
        }
        records += n;
        if s >= 1740.0 {
            last_minute += n;
        }
        s += 0.25;
    }
    // Bounded by the breaker: one half-open trial (a start on each
    // candidate, its result, its rollback, the breaker's records) per
    // reset timeout, never a record per tick.
    assert!(
        last_minute <= 20,
        "{starts} starts sent in 30 minutes; {records} audit records, {last_minute} in the last minute"
    );
}

#[test]
fn failback_stops_when_the_home_is_hot_again() {
    let mut f = fleet();
    f.workloads[2].essential = true; // docker-swarm fails over too
    let mut e = engine_with(f, config());
    fleet_reports(&mut e, 60.0, 0.0);
    // nova dies; both essential movable workloads fail over to lyra.
    let mut fx = dead_nova_ticks(&mut e, 40.0, 41.0);
    for i in 0..6 {
        let at = 42.0 + f64::from(i);
        fx = answer(&mut e, &fx, ResultStatus::Succeeded, at);
    }
    assert_eq!(placed(&e, "docker-swarm").as_deref(), Some("lyra"));
    // nova back and calm for the hold: failback of the first begins.
    let mut at = 50.0;
    let mut fx = Vec::new();
    while at < 200.0 && steps(&fx).is_empty() {
        // nova's old copies are gone (its agent found none running).
        e.on_heartbeat(hb("nova", 55.0, &[], at), t(at));
        others_report(&mut e, at);
        fx = e.tick(t(at));
        at += 1.0;
    }
    assert_eq!(steps(&fx).len(), 1, "{:?}", steps(&fx));
    // nova goes critical before the first failback step's result.
    fleet_reports(&mut e, 88.0, at);
    e.on_alert(thermal("nova", Severity::Critical, 88.0, at), t(at));
    let mut all = Vec::new();
    for i in 0..4 {
        fx = answer(
            &mut e,
            &fx,
            ResultStatus::Succeeded,
            at + 1.0 + f64::from(i),
        );
        all.extend(steps(&fx));
    }
    let onto_hot_nova: Vec<_> = all
        .iter()
        .filter(|(n, a, _)| n == "nova" && a == START)
        .collect();
    assert!(
        onto_hot_nova.is_empty(),
        "failback goes on starting workloads on a critical nova: {onto_hot_nova:?}"
    );
}

fn maintenance_of_nova() -> skos_core::silence::SilenceSpec {
    skos_core::silence::SilenceSpec {
        node: n("nova"),
        kind: None,
        problem: None,
        action: None,
        start: None,
        end: None,
        duration_seconds: Some(3600),
        every: None,
        comment: "planned reboot".into(),
        by: "ana".into(),
    }
}

#[test]
fn a_node_silenced_for_a_planned_reboot_is_not_failed_over() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    e.add_silence(&maintenance_of_nova(), t(0.0)).unwrap();
    // nova reboots: silent for 60 s.
    let fx = dead_nova_ticks(&mut e, 40.0, 60.0);
    assert!(
        steps(&fx).is_empty(),
        "a silence covering every action on nova, and still: {:?}",
        steps(&fx)
    );
}

#[test]
fn a_workload_stopped_by_hand_on_a_silenced_node_is_not_started_again() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    e.add_silence(&maintenance_of_nova(), t(0.0)).unwrap();
    let fx = e.on_heartbeat(
        hb(
            "nova",
            60.0,
            &[("qwen", "running"), ("synthesis-core", "stopped")],
            5.0,
        ),
        t(5.0),
    );
    assert!(steps(&fx).is_empty(), "{:?}", steps(&fx));
}

#[test]
fn a_fence_held_by_an_open_breaker_is_not_audited_as_sent_on_every_heartbeat() {
    let mut e = engine();
    fleet_reports(&mut e, 60.0, 0.0);
    // lyra runs a stray synthesis-core (placed on nova) and refuses every
    // stop: "a start or stop of synthesis-core is in progress".
    let stray = [("backup", "running"), ("synthesis-core", "running")];
    let mut sent = 0;
    let mut fenced_records = 0;
    for i in 1..=60 {
        let at = f64::from(i);
        let fx = e.on_heartbeat(hb("lyra", 60.0, &stray, at), t(at));
        sent += steps(&fx).len();
        fenced_records += fx
            .iter()
            .filter(|x| matches!(x, Effect::Audit(a) if a.event_type == "placement" && a.data["outcome"] == "fence"))
            .count();
        answer(&mut e, &fx, ResultStatus::Rejected, at + 0.1);
    }
    assert!(
        fenced_records <= sent + 1,
        "{sent} fences sent, {fenced_records} records saying one was (fenced: stopped here)"
    );
}

/// nova dies, synthesis-core fails over to lyra; nova comes back (its
/// copy fenced) and stays calm; then lyra dies too.
fn failed_over_to_lyra_then_lyra_dies(e: &mut Engine) -> f64 {
    fleet_reports(e, 60.0, 0.0);
    let fx = dead_nova_ticks(e, 40.0, 41.0);
    assert_eq!(steps(&fx), [step("lyra", START, "synthesis-core")]);
    answer(e, &fx, ResultStatus::Succeeded, 42.0);
    assert_eq!(placed(e, "synthesis-core").as_deref(), Some("lyra"));
    // athena is hot: not a target. nova back and calm; lyra falls silent.
    e.on_alert(thermal("athena", Severity::Warning, 80.0, 50.0), t(50.0));
    let mut at = 50.0;
    while at < 100.0 {
        e.on_heartbeat(hb("nova", 55.0, &[], at), t(at));
        e.on_heartbeat(hb("athena", 80.0, &[], at), t(at));
        e.tick(t(at));
        at += 1.0;
    }
    at
}

#[test]
fn an_essential_workload_on_a_dead_spare_goes_back_to_its_calm_home() {
    let mut e = engine();
    let mut at = failed_over_to_lyra_then_lyra_dies(&mut e);
    // lyra is offline (since ~90 s) past the failover delay.
    while at < 130.0 {
        e.on_heartbeat(hb("nova", 55.0, &[], at), t(at));
        e.on_heartbeat(hb("athena", 80.0, &[], at), t(at));
        e.tick(t(at));
        at += 0.25;
    }
    // Failed over (lyra went silent at 41 s: offline at 71 s, failed over
    // 10 s later) to its home, the only node that can take it.
    let w = e
        .status(t(at))
        .workloads
        .into_iter()
        .find(|w| w.name == "synthesis-core")
        .unwrap();
    assert!(
        w.at.as_deref() == Some("nova") || w.step.as_deref() == Some("failover starting on nova"),
        "its home nova is online and calm, and synthesis-core runs nowhere: {w:?}"
    );
}

#[test]
fn a_forgotten_node_keeps_no_workload() {
    let mut e = engine();
    let at = failed_over_to_lyra_then_lyra_dies(&mut e);
    e.forget_node(&n("lyra"), "ana", true, t(at)).unwrap();
    assert_ne!(
        placed(&e, "synthesis-core").as_deref(),
        Some("lyra"),
        "placed on a node SKOS no longer knows: nothing fails it over"
    );
}

#[test]
fn dry_run_sends_no_fence_no_supervising_start_and_no_failover() {
    let mut cfg = config();
    cfg.dry_run = true;
    let mut e = engine_with(fleet(), cfg);
    fleet_reports(&mut e, 60.0, 0.0);
    let mut sent = Vec::new();
    // A stray copy on lyra; qwen stopped on nova; then nova dies.
    sent.extend(steps(&e.on_heartbeat(
        hb("lyra", 60.0, &[("synthesis-core", "running")], 1.0),
        t(1.0),
    )));
    sent.extend(steps(&e.on_heartbeat(
        hb("nova", 60.0, &[("qwen", "stopped")], 1.0),
        t(1.0),
    )));
    others_report(&mut e, 30.0);
    sent.extend(steps(&dead_nova_ticks(&mut e, 40.0, 45.0)));
    assert!(sent.is_empty(), "dry-run, and still sent: {sent:?}");
}
