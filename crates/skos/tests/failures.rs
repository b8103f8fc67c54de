//! Failure paths end to end, against a real nats-server started by each
//! test, with `skos coordinator` and `skos agent` as separate processes: a
//! fix that does not work must fail its verification, escalate, open its
//! circuit after `circuit_breaker.max_failures`, raise an alert for that,
//! send nothing more while the circuit is open, and exactly one trial when
//! it half-opens.
//!
//! Every assertion is read off the audit trail, whose records are one
//! linear chain: the coordinator handles one message (or tick) at a time
//! and writes its audit entries in order, so "nothing was sent between
//! these two records" is exact. Negatives are never checked after a bare
//! sleep: each window is closed by a later record (a `skipped
//! circuit_open` for a reminder of the same alert) that proves the engine
//! was asked again and refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::FakeSysfs;
use skos_testsupport::tmpfs::Tmpfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

/// `circuit_breaker.max_failures` in these tests.
const MAX_FAILURES: usize = 2;
/// `circuit_breaker.reset_timeout_seconds`: long enough for several
/// reminders (one a second) to be refused while the circuit is open.
const RESET_TIMEOUT: f64 = 6.0;
/// `coordinator.verify_within`.
const VERIFY_WITHIN: f64 = 2.0;

/// A config for the failure tests: reminders every second (`cooldown: 1`)
/// so the unchanged alert keeps asking for the same action, a short
/// verification deadline, a small breaker, no rate limit in the way, and a
/// heartbeat timeout no busy machine reaches (an offline node would turn
/// the refusals into `node_offline` skips).
/// The seed's thermal table: its emergency row names only the
/// coordinator's workload plans (skipped as `no_workloads`: none are
/// configured), so an escalation decides but sends nothing that could
/// cool the node.
const SEED_THERMAL_TABLE: &str = "  actions:\n    warning: [throttle_10]\n    critical: [throttle_50, redistribute]\n    emergency: [shutdown_non_essential, failover]\n";

fn config(dir: &Path, antibodies: &str, extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [{antibodies}]\n\
coordinator:\n  heartbeat_timeout: 30\n  verify_within: {VERIFY_WITHIN}\n  command_deadline: 30\n  max_actions_per_node_per_minute: 1000\n  recent_actions: 1000\n\
circuit_breaker:\n  max_failures: {MAX_FAILURES}\n  window_seconds: 300\n  reset_timeout_seconds: {RESET_TIMEOUT}\n\
thermal:\n  clear_for: 1\n  cooldown: 1\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{SEED_THERMAL_TABLE}\
{trust}{extra}",
        trust = trust_section(dir),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Poll the audit trail until `ready` accepts it; a little slower than
/// `wait_for` alone, so the polling does not starve the processes under
/// test on a two-core machine.
fn wait_audit(
    nats: &NatsServer,
    secs: u64,
    what: &str,
    mut ready: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(Duration::from_secs(secs), what, || {
        let r = audit(nats);
        if ready(&r) {
            Some(r)
        } else {
            std::thread::sleep(Duration::from_millis(300));
            None
        }
    })
}

fn event(r: &Value) -> &Value {
    &r["entry"]["event_type"]
}

fn data(r: &Value) -> &Value {
    &r["entry"]["data"]
}

fn is_command(r: &Value, action: &str) -> bool {
    event(r) == "command" && data(r)["command"]["action_type"] == action
}

fn breaker_state<'a>(r: &'a Value, action: &str) -> Option<&'a str> {
    (event(r) == "breaker" && data(r)["key"]["action"] == action)
        .then(|| data(r)["state"].as_str())
        .flatten()
}

fn skip_reason<'a>(r: &'a Value, action: &str) -> Option<&'a str> {
    (event(r) == "skipped" && data(r)["action"] == action)
        .then(|| data(r)["reason"].as_str())
        .flatten()
}

fn timestamp(r: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(r["entry"]["timestamp"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("timestamp of {r}: {e}"))
}

/// The circuit alerts the coordinator raised (and handled) for `action`.
fn circuit_alerts<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            event(r) == "alert"
                && data(r)["alert"]["type"] == "circuit"
                && data(r)["alert"]["details"]["action"] == action
        })
        .collect()
}

fn count(records: &[Value], range: std::ops::Range<usize>, f: impl Fn(&Value) -> bool) -> usize {
    records[range].iter().filter(|r| f(r)).count()
}

/// Where the breaker of `action` opened, half-opened for its trial, and
/// opened again; `end` closes the last window: just after the last
/// `skipped circuit_open` that followed the second opening (and before
/// the next half-open, if one came already).
#[derive(Debug)]
struct Cycle {
    opened: usize,
    half_opened: usize,
    reopened: usize,
    end: usize,
}

/// The cycle, once enough refusals followed the second opening: three, or
/// at least one if the next half-open already closed the window.
fn cycle(records: &[Value], action: &str) -> Option<Cycle> {
    let states: Vec<(usize, &str)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| breaker_state(r, action).map(|s| (i, s)))
        .collect();
    let opened = states.iter().find(|(_, s)| *s == "open")?.0;
    let half_opened = states
        .iter()
        .find(|(i, s)| *i > opened && *s == "half_open")?
        .0;
    let reopened = states
        .iter()
        .find(|(i, s)| *i > half_opened && *s == "open")?
        .0;
    let next_half = states
        .iter()
        .find(|(i, s)| *i > reopened && *s == "half_open")
        .map(|(i, _)| *i);
    let refusals: Vec<usize> = (reopened + 1..next_half.unwrap_or(records.len()))
        .filter(|&i| skip_reason(&records[i], action) == Some("circuit_open"))
        .collect();
    let enough = refusals.len() >= 3 || (next_half.is_some() && !refusals.is_empty());
    enough.then(|| Cycle {
        opened,
        half_opened,
        reopened,
        end: refusals.last().copied().unwrap_or(reopened) + 1,
    })
}

/// Exact checks of one breaker cycle of `action` (on `problem`), given
/// which audited alerts are the agent's (reminders of the same problem,
/// each of which asks for `action`). Returns the commands sent for
/// `action`, in order: `MAX_FAILURES` of them, then the trial.
fn check_cycle<'a>(
    records: &'a [Value],
    action: &str,
    problem: &str,
    c: &Cycle,
    trigger: impl Fn(&Value) -> bool,
) -> Vec<&'a Value> {
    let Cycle {
        opened,
        half_opened,
        reopened,
        end,
    } = *c;
    let dump = || {
        records[..end]
            .iter()
            .map(|r| format!("{} {}", r["seq"], r["entry"]["summary"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let states: Vec<&str> = records[..end]
        .iter()
        .filter_map(|r| breaker_state(r, action))
        .collect();
    assert_eq!(
        states,
        ["open", "half_open", "open"],
        "breaker transitions of {action}:\n{}",
        dump()
    );
    for r in records[..end].iter().filter(|r| event(r) == "breaker") {
        assert_eq!(data(r)["key"]["problem"], problem, "{r}");
    }
    let cmd = |r: &Value| is_command(r, action);

    // Closed: exactly max_failures commands, each a failure; every agent
    // alert meanwhile got a command or waited for the one in progress.
    let before = count(records, 0..opened, cmd);
    assert_eq!(
        before,
        MAX_FAILURES,
        "{action} sent before the circuit opened:\n{}",
        dump()
    );
    let skips: Vec<&str> = records[..opened]
        .iter()
        .filter_map(|r| skip_reason(r, action))
        .collect();
    assert!(
        skips.iter().all(|s| *s == "in_progress"),
        "skips before the opening: {skips:?}"
    );
    assert_eq!(
        count(records, 0..opened, &trigger),
        before + skips.len(),
        "each agent alert before the opening got {action} or in_progress:\n{}",
        dump()
    );

    // Open: nothing sent; every agent alert refused with circuit_open,
    // except the last, which found the reset timeout over and half-opened.
    assert_eq!(
        count(records, opened + 1..half_opened, cmd),
        0,
        "{action} sent while the circuit was open:\n{}",
        dump()
    );
    let refused: Vec<&Value> = records[opened + 1..half_opened]
        .iter()
        .filter(|r| skip_reason(r, action).is_some())
        .collect();
    assert!(!refused.is_empty(), "no refusal while open:\n{}", dump());
    for r in &refused {
        assert_eq!(skip_reason(r, action), Some("circuit_open"), "{r}");
        assert_eq!(data(r)["problem"], problem, "{r}");
        let open_for = (timestamp(r) - timestamp(&records[opened])).num_milliseconds();
        assert!(
            (open_for as f64) <= RESET_TIMEOUT * 1000.0,
            "refused {open_for} ms after opening, reset timeout is {RESET_TIMEOUT} s"
        );
    }
    assert_eq!(
        refused.len(),
        count(records, opened + 1..half_opened, &trigger) - 1,
        "every agent alert while open but the last was refused:\n{}",
        dump()
    );
    let open_for =
        (timestamp(&records[half_opened]) - timestamp(&records[opened])).num_milliseconds();
    assert!(
        open_for as f64 >= RESET_TIMEOUT * 1000.0,
        "half-open after {open_for} ms, reset timeout is {RESET_TIMEOUT} s"
    );

    // Half-open: exactly one trial, sent right after the half-opening;
    // alerts meanwhile wait for it.
    assert!(
        cmd(&records[half_opened + 1]),
        "the trial follows the half-opening: {}",
        records[half_opened + 1]
    );
    assert_eq!(
        count(records, half_opened + 1..reopened, cmd),
        1,
        "exactly one trial:\n{}",
        dump()
    );
    let waiting: Vec<&str> = records[half_opened + 1..reopened]
        .iter()
        .filter_map(|r| skip_reason(r, action))
        .collect();
    assert!(
        waiting.iter().all(|s| *s == "in_progress"),
        "skips during the trial: {waiting:?}"
    );
    assert_eq!(
        waiting.len(),
        count(records, half_opened + 1..reopened, &trigger),
        "every agent alert during the trial waited for it:\n{}",
        dump()
    );

    // Open again: nothing more, every agent alert refused.
    assert_eq!(
        count(records, reopened + 1..end, cmd),
        0,
        "{action} sent after the trial failed:\n{}",
        dump()
    );
    let refused: Vec<&str> = records[reopened + 1..end]
        .iter()
        .filter_map(|r| skip_reason(r, action))
        .collect();
    assert!(!refused.is_empty());
    assert!(
        refused.iter().all(|s| *s == "circuit_open"),
        "skips after the trial: {refused:?}"
    );
    assert_eq!(
        refused.len(),
        count(records, reopened + 1..end, &trigger),
        "every agent alert after the trial was refused:\n{}",
        dump()
    );

    let sent: Vec<&Value> = records[..end].iter().filter(|r| cmd(r)).collect();
    assert_eq!(sent.len(), MAX_FAILURES + 1, "{}", dump());
    for s in &sent {
        assert_eq!(data(s)["command"]["problem"], problem, "{s}");
    }
    // What opened the circuit: the failure of the last command before it,
    // then the failure of the trial.
    for (at, cmd) in [
        (opened, sent[MAX_FAILURES - 1]),
        (reopened, sent[MAX_FAILURES]),
    ] {
        let v = &records[at - 1];
        assert_eq!(event(v), "verification", "before the opening: {v}");
        assert_eq!(data(v)["action_id"], data(cmd)["command"]["action_id"]);
        assert_eq!(data(v)["outcome"], "failed", "{v}");
    }
    sent
}

/// The verification of a command, and its result.
fn outcome_of<'a>(records: &'a [Value], action_id: &Value) -> (&'a Value, &'a Value) {
    let result = records
        .iter()
        .find(|r| event(r) == "result" && data(r)["result"]["action_id"] == *action_id)
        .unwrap_or_else(|| panic!("no result for {action_id}"));
    let verifications: Vec<&Value> = records
        .iter()
        .filter(|r| event(r) == "verification" && data(r)["action_id"] == *action_id)
        .collect();
    assert_eq!(verifications.len(), 1, "verifications of {action_id}");
    (result, verifications[0])
}

fn check_circuit_alerts(records: &[Value], action: &str, problem: &str) {
    let alerts = circuit_alerts(records, action);
    let opens = records
        .iter()
        .filter(|r| breaker_state(r, action) == Some("open"))
        .count();
    assert_eq!(alerts.len(), opens, "one circuit alert per opening");
    for a in alerts {
        let alert = &data(a)["alert"];
        assert_eq!(alert["agent_id"], "coordinator", "{a}");
        assert_eq!(alert["severity"], "warning", "{a}");
        assert_eq!(alert["node"], "nova", "{a}");
        assert_eq!(alert["details"]["problem"], problem, "{a}");
    }
}

fn check_status(nats: &NatsServer, action: &str, problem: &str, node_status: &str) {
    let s = wait_for(Duration::from_secs(20), "status", || status(nats));
    assert_eq!(
        node(&s, "nova").map(|n| n["status"].clone()),
        Some(Value::from(node_status)),
        "{s}"
    );
    let circuits: Vec<&Value> = s["open_circuits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == action)
        .collect();
    // Open, or half-open for a later trial: never closed, since every
    // trial fails.
    assert_eq!(circuits.len(), 1, "{s}");
    assert_eq!(circuits[0]["node"], "nova");
    assert_eq!(circuits[0]["problem"], problem);
    assert!(
        circuits[0]["state"] == "open" || circuits[0]["state"] == "half_open",
        "{s}"
    );
    assert!(
        s["counters"]["breaker.open"].as_u64().unwrap_or(0) >= 2,
        "{s}"
    );
}

#[test]
fn thermal_fix_that_does_not_cool_escalates_and_opens_the_circuit() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[55.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let cfg = config(work.path(), "thermal_sentinel", "");
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(60), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });

    // Critical (85) and it stays there: throttling changes nothing here.
    cpu.heat(88.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        (0..2)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    let is_trigger = |r: &Value| {
        event(r) == "alert"
            && data(r)["alert"]["agent_id"] == "thermal-sentinel-nova"
            && data(r)["alert"]["type"] == "thermal"
            && data(r)["alert"]["severity"] == "critical"
    };
    let mut found = None;
    let records = wait_audit(
        &nats,
        180,
        "throttle_50: opened, one trial, opened again, refusals, every alert audited",
        |r| {
            found = cycle(r, "throttle_50");
            let Some(c) = &found else { return false };
            // The alerts the coordinator raised come back through the
            // alert feed: wait until they are handled too.
            let failed: Vec<&Value> = r
                .iter()
                .filter(|v| event(v) == "verification" && data(v)["outcome"] == "failed")
                .collect();
            let sent: Vec<&Value> = r[..c.end]
                .iter()
                .filter(|v| is_command(v, "throttle_50"))
                .collect();
            let escalated = sent.iter().all(|s| {
                let esc = format!(
                    "{}-esc-emergency",
                    data(s)["command"]["cause"].as_str().unwrap_or("")
                );
                r.iter()
                    .any(|v| event(v) == "decision" && data(v)["alert_id"] == esc.as_str())
            });
            escalated
                && failed.len() > MAX_FAILURES
                && circuit_alerts(r, "throttle_50").len()
                    == r.iter()
                        .filter(|v| breaker_state(v, "throttle_50") == Some("open"))
                        .count()
        },
    );
    let c = found.unwrap();
    let sent = check_cycle(&records, "throttle_50", "thermal:cpu", &c, is_trigger);

    // Each throttle_50 ran, did not bring the CPU below critical within
    // verify_within, and escalated to emergency.
    for s in &sent {
        let command = &data(s)["command"];
        let (result, v) = outcome_of(&records, &command["action_id"]);
        assert_eq!(data(result)["result"]["status"], "succeeded", "{result}");
        assert_eq!(data(v)["outcome"], "failed", "{v}");
        assert_eq!(data(v)["metric"], "cpu_temp", "{v}");
        assert_eq!(data(v)["below"], 85.0, "{v}");
        assert!(data(v)["value"].as_f64().unwrap() >= 88.0, "{v}");
        let esc_id = format!("{}-esc-emergency", command["cause"].as_str().unwrap());
        let esc: Vec<&Value> = records
            .iter()
            .filter(|r| event(r) == "alert" && data(r)["alert_id"] == esc_id.as_str())
            .collect();
        assert_eq!(esc.len(), 1, "escalation of {command}");
        let alert = &data(esc[0])["alert"];
        assert_eq!(alert["agent_id"], "coordinator");
        assert_eq!(alert["severity"], "emergency");
        assert_eq!(alert["type"], "thermal");
        assert_eq!(alert["details"]["sensor"], "cpu");
        let decision = records
            .iter()
            .find(|r| event(r) == "decision" && data(r)["alert_id"] == esc_id.as_str())
            .unwrap();
        assert_eq!(
            data(decision)["actions"],
            serde_json::json!(["shutdown_non_essential", "failover"]),
            "{decision}"
        );
        // The escalated alert follows its failed verification.
        let at = |x: &Value| records.iter().position(|r| r == x).unwrap();
        assert!(at(esc[0]) > at(v));
    }
    // Escalations never ask for throttle_50 again: every throttle_50 was
    // for one of the agent's own critical alerts.
    for s in &sent {
        let cause = data(s)["command"]["cause"].as_str().unwrap();
        assert!(
            cause.starts_with("thermal-sentinel-nova-"),
            "throttle_50 sent for {cause}"
        );
    }
    check_circuit_alerts(&records, "throttle_50", "thermal:cpu");
    check_status(&nats, "throttle_50", "thermal:cpu", "critical");
    // The throttle is still in place: the fix was not undone, only not
    // repeated.
    assert!((0..2).all(|p| read_khz(sys.root(), p) == MAX / 2));
}

#[test]
fn storage_action_that_frees_nothing_opens_the_circuit() {
    let fs = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("8M", None));
    let m = fs.path();
    // About 85 % used (warning is 80, critical 90), and nothing the
    // cleanup may delete: fresh temp files, an old temp file held open
    // for writing, an old file outside the temp dir and an old symlink to
    // it inside.
    let fresh: Vec<PathBuf> = (0..3)
        .map(|i| fs.fill(&format!("tmp/fresh-{i}.bin"), 100 * 1024))
        .collect();
    let busy = fs.fill("tmp/busy-old.bin", 200 * 1024);
    fs.age(&busy, 7200);
    let _writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&busy)
        .unwrap();
    let outside = fs.fill("data/outside-old.bin", 300 * 1024);
    fs.age(&outside, 7200);
    fs.fill("data/keep.bin", 6300 * 1024);
    let link = m.join("tmp/link-to-outside");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let touched = std::process::Command::new("touch")
        .args(["-h", "-d", "2 hours ago"])
        .arg(&link)
        .status()
        .unwrap();
    assert!(touched.success());
    let before = percent(m);
    assert!((81.0..89.0).contains(&before), "setup: {before:.1}% used");

    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cfg = config(
        work.path(),
        "storage_watcher",
        &format!(
            "storage:\n  mounts: [{m}]\n  cooldown: 1\n  temp: {{dirs: [{m}/tmp], max_age: 3600}}\n",
            m = m.display()
        ),
    );
    let nats = NatsServer::start();
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    let problem = format!("storage:{}", m.display());
    let is_trigger = |r: &Value| {
        event(r) == "alert"
            && data(r)["alert"]["agent_id"] == "storage-watcher-nova"
            && data(r)["alert"]["type"] == "storage"
            && data(r)["alert"]["severity"] == "warning"
    };
    let mut found = None;
    let records = wait_audit(
        &nats,
        180,
        "cleanup_temp: opened, one trial, opened again, refusals, circuit alerts handled",
        |r| {
            found = cycle(r, "cleanup_temp");
            found.is_some()
                && circuit_alerts(r, "cleanup_temp").len()
                    == r.iter()
                        .filter(|v| breaker_state(v, "cleanup_temp") == Some("open"))
                        .count()
        },
    );
    let c = found.unwrap();
    let sent = check_cycle(&records, "cleanup_temp", &problem, &c, is_trigger);

    // Each run succeeded, deleted nothing, and that is a failure at once:
    // no verification deadline to wait for, and no escalation.
    for s in &sent {
        let command = &data(s)["command"];
        let (result, v) = outcome_of(&records, &command["action_id"]);
        let r = &data(result)["result"];
        assert_eq!(r["status"], "succeeded", "{result}");
        assert_eq!(r["details"]["bytes_freed"], 0, "{result}");
        assert_eq!(r["details"]["files_deleted"], 0, "{result}");
        assert_eq!(data(v)["outcome"], "failed", "{v}");
        assert_eq!(data(v)["reason"], "freed_nothing", "{v}");
        let at = |x: &Value| records.iter().position(|r| r == x).unwrap();
        assert_eq!(at(v), at(result) + 1, "judged on its result");
    }
    assert!(
        !records.iter().any(|r| event(r) == "alert"
            && data(r)["alert"]["agent_id"] == "coordinator"
            && data(r)["alert"]["type"] == "storage"),
        "freed_nothing does not escalate"
    );
    check_circuit_alerts(&records, "cleanup_temp", &problem);
    check_status(&nats, "cleanup_temp", &problem, "degraded");

    // Nothing it must not touch was touched.
    for f in fresh.iter().chain([&busy, &outside]) {
        assert!(f.exists(), "{} deleted", f.display());
    }
    assert!(
        link.symlink_metadata().is_ok(),
        "the symlink in the temp dir was deleted"
    );
    let after = percent(m);
    assert!(
        (after - before).abs() < 0.5,
        "usage changed from {before:.1}% to {after:.1}%"
    );
}
