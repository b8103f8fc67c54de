//! The loop breaker's uncooperative side: process groups read from `/proc`.
//!
//! A fake proc tree (temp dir, through `proc_root`) for what must never
//! signal anything; real shell scripts (a fork-happy one, a crash loop) on
//! the real `/proc` for the rest. Every script runs in its own process
//! group, killed (SIGKILL) by a guard when the test ends, pass or fail.

use std::path::Path;
use std::time::{Duration, Instant};

use skos_agent::antibody::{Antibody, Execution};
use skos_agent::loops::LoopBreaker;
use skos_core::config::Config;
use skos_core::protocol::{Alert, Command, ResultStatus, Severity};
use skos_testsupport::procgroup::ProcGroup;

/// Whether `/proc` is this machine's; skips (or fails under
/// `SKOS_TEST_REQUIRE_ALL=1`) where it is not.
fn live_proc() -> bool {
    skos_testsupport::require::require(
        &skos_testsupport::require::test_name(module_path!()),
        "the machine's own /proc",
        skos_testsupport::require::live_procfs(),
    )
    .is_some()
}

fn breaker(groups: &str) -> LoopBreaker {
    let cfg = Config::from_yaml(&format!(
        "agent: {{antibodies: [loop_breaker]}}\nloop:\n  process_groups:\n{groups}"
    ))
    .unwrap();
    LoopBreaker::new(&cfg)
}

fn run(lb: &mut LoopBreaker, cmd: Command) -> skos_agent::Outcome {
    match lb.execute(&cmd) {
        Execution::Done(o) => o,
        Execution::Background(job) => job(),
    }
}

fn command(action: &str, cause: Option<&str>, problem: Option<&str>) -> Command {
    Command {
        action_id: format!("test:{action}"),
        action_type: action.into(),
        parameters: Default::default(),
        timestamp: chrono::Utc::now(),
        node: None,
        deadline: None,
        cause: cause.map(str::to_owned),
        problem: problem.map(str::to_owned),
        term: None,
    }
}

/// Sense every 100 ms until `f` says so.
fn sense_until<T>(
    lb: &mut LoopBreaker,
    what: &str,
    mut f: impl FnMut(&[Alert], &mut LoopBreaker) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = lb.sense(chrono::Utc::now());
        if let Some(v) = f(&alerts, lb) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two copies one level deeper every `delay` seconds, up to level 6; each
/// level notes itself in `levels`.
const FORK: &str = r#"#!/bin/sh
dir=$1; level=$2; delay=$3
echo "$level" >> "$dir/levels"
sleep "$delay"
if [ "$level" -lt 6 ]; then
  sh "$dir/fork.sh" "$dir" $((level + 1)) "$delay" &
  sh "$dir/fork.sh" "$dir" $((level + 1)) "$delay" &
fi
sleep 60
"#;

/// Starts the crasher again whenever it exits, forever.
const SUPERVISOR: &str = r#"#!/bin/sh
while true; do
  sh "$1/crasher.sh" "$1"
  sleep 0.1
done
"#;

const CRASHER: &str = r#"#!/bin/sh
echo start >> "$1/starts"
sleep 0.3
exit 1
"#;

fn max_level(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("levels"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("starts"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn a_fork_happy_script_is_stopped_at_its_descendant_limit_then_terminated() {
    if !live_proc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("fork.sh"), FORK).unwrap();
    let mut lb = breaker(&format!(
        "    - {{name: forky, command: '*{}/fork.sh*', max_depth: 100, max_descendants: 10, grace_seconds: 0.5, cool_off_seconds: 60}}\n",
        d.display()
    ));
    let group = ProcGroup::spawn_sh(&d.join("fork.sh"), &[d.to_str().unwrap(), "0", "0.5"]);

    let alert = sense_until(&mut lb, "a descendants alert", |alerts, _| {
        alerts
            .iter()
            .find(|a| a.severity == Severity::Critical)
            .cloned()
    });
    assert_eq!(alert.details["condition"], "descendants_exceeded");
    assert_eq!(alert.details["sensor"], "proc:forky");
    assert_eq!(alert.problem(), "loop:proc:forky");
    assert_eq!(alert.details["limit"], 10);
    let evidence = alert.details["evidence"].as_array().unwrap();
    assert!(evidence[0]["cmdline"].as_str().unwrap().contains("fork.sh"));

    let o = run(
        &mut lb,
        command("circuit_break", Some(&alert.alert_id), None),
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    assert!(o.changes.iter().all(|c| c.after == "SIGSTOP"), "{o:?}");
    assert!(o.changes.len() > 10);

    // Every process is stopped (the open circuit keeps stopping newcomers).
    sense_until(&mut lb, "every member stopped", |_, _| {
        let alive = group.alive();
        (!alive.is_empty() && alive.iter().all(|m| m.state == 'T')).then_some(())
    });
    let stopped_at = max_level(d);
    assert!(
        stopped_at <= 3,
        "the tree grew to level {stopped_at} before it was stopped"
    );
    // After the grace: SIGTERM (with SIGCONT), and the tree is gone.
    sense_until(&mut lb, "every member terminated", |_, _| {
        group.alive().is_empty().then_some(())
    });
    assert_eq!(max_level(d), stopped_at, "nothing ran after the stop");
}

#[test]
fn a_respawn_loop_is_a_crash_loop_frozen_by_circuit_break_and_freed_by_reset() {
    if !live_proc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("supervisor.sh"), SUPERVISOR).unwrap();
    std::fs::write(d.join("crasher.sh"), CRASHER).unwrap();
    let mut lb = breaker(&format!(
        "    - {{name: crashy, command: '*{}/crasher.sh*', max_respawns: 3, respawn_window_seconds: 30, on_break: stop, grace_seconds: 0.5, cool_off_seconds: 60}}\n",
        d.display()
    ));
    let group = ProcGroup::spawn_sh(&d.join("supervisor.sh"), &[d.to_str().unwrap()]);

    let alert = sense_until(&mut lb, "a crash-loop alert", |alerts, _| {
        alerts
            .iter()
            .find(|a| a.severity == Severity::Critical)
            .cloned()
    });
    assert_eq!(alert.details["condition"], "crash_loop");
    assert_eq!(alert.details["limit"], 3);
    assert!(alert.details["respawns"].as_array().unwrap().len() >= 4);

    let o = run(
        &mut lb,
        command("circuit_break", Some(&alert.alert_id), None),
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    // The crasher is frozen, so its supervisor waits: the loop stands still.
    sense_until(&mut lb, "the crasher stopped", |_, _| {
        group
            .alive()
            .iter()
            .any(|m| m.state == 'T' && m.cmdline.contains("crasher.sh"))
            .then_some(())
    });
    let frozen = starts(d);
    for _ in 0..10 {
        lb.sense(chrono::Utc::now());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(starts(d), frozen, "the loop went on while frozen");
    assert!(group
        .alive()
        .iter()
        .any(|m| m.state == 'T' && m.cmdline.contains("crasher.sh")));

    // reset_chain (found by problem): the crasher is terminated, the
    // supervisor starts it fresh.
    let o = run(
        &mut lb,
        command("reset_chain", None, Some("loop:proc:crashy")),
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    assert!(o.changes.iter().any(|c| c.after == "SIGTERM"), "{o:?}");
    sense_until(&mut lb, "a fresh start", |_, _| {
        (starts(d) > frozen).then_some(())
    });
}

fn fake_proc(root: &Path, pid: u32, ppid: u32, cmd: &str) {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stat"),
        format!(
            "{pid} (sh) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 1000 10\n",
            pid * 7
        ),
    )
    .unwrap();
    std::fs::write(dir.join("cmdline"), cmd.replace(' ', "\0") + "\0").unwrap();
    std::fs::write(dir.join("cgroup"), "0::/system.slice/batch.service\n").unwrap();
}

#[test]
fn a_fake_proc_tree_is_judged_but_never_signalled() {
    let root = tempfile::tempdir().unwrap();
    fake_proc(root.path(), 1, 0, "/sbin/init");
    fake_proc(root.path(), 100, 1, "/usr/bin/batchd");
    let mut parent = 100;
    for pid in 101..108 {
        fake_proc(root.path(), pid, parent, "/usr/bin/batchd --worker");
        parent = pid;
    }
    std::fs::write(root.path().join("self"), "not a link").unwrap();
    let mut cfg = Config::from_yaml(
        "agent: {antibodies: [loop_breaker]}\nloop:\n  process_groups:\n    - {name: batch, unit: batch.service, max_depth: 5}\n",
    )
    .unwrap();
    cfg.proc_root = root.path().to_path_buf();
    let mut lb = LoopBreaker::new(&cfg);
    let alerts = lb.sense(chrono::Utc::now());
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.details["condition"], "depth_exceeded");
    assert_eq!(a.details["value"], 7);
    assert!(
        lb.sense(chrono::Utc::now()).is_empty(),
        "one alert per trip"
    );
    let o = run(&mut lb, command("circuit_break", Some(&a.alert_id), None));
    assert_eq!(o.status, ResultStatus::Failed);
    assert!(
        o.message.contains("not this machine's procfs"),
        "{}",
        o.message
    );
    // The tree goes away: the open alert is cleared.
    for pid in 101..108 {
        std::fs::remove_dir_all(root.path().join(pid.to_string())).unwrap();
    }
    let alerts = lb.sense(chrono::Utc::now());
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].severity, Severity::Normal);
}

#[test]
fn heartbeats_carry_the_loop_breakers_state() {
    let mut lb = breaker("    - {name: g, command: '*never-matches-anything*'}\n");
    lb.sense(chrono::Utc::now());
    let mut hb = skos_core::protocol::Heartbeat {
        agent_id: "a".into(),
        agent_type: "loop_breaker".into(),
        node: skos_core::NodeName::parse("nova").unwrap(),
        timestamp: chrono::Utc::now(),
        cpu_temp: None,
        gpu_temp: None,
        storage_percent: None,
        interval_seconds: None,
        throttle_level: None,
        metadata: Default::default(),
    };
    lb.report(&mut hb);
    let m = &hb.metadata["loop_breaker"];
    assert_eq!(m["chains"], 0);
    assert_eq!(m["groups"][0]["name"], "g");
    assert_eq!(m["groups"][0]["state"], "watching");
}
