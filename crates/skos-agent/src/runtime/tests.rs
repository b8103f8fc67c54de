//! The command gate (pure), and agents driven over the in-process bus: a
//! command delivered again, coordinator terms across a restart.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Map;
use skos_bus::{subjects, Feed, InProcBus, Subscription};
use tokio::sync::watch;

use super::*;

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

fn cmd(id: &str, term: Option<u64>) -> Command {
    let now = chrono::Utc::now();
    Command {
        action_id: id.into(),
        action_type: "alert_human".into(),
        parameters: Map::new(),
        timestamp: now,
        node: Some(nova()),
        deadline: Some(now + chrono::Duration::seconds(30)),
        cause: Some("test".into()),
        problem: None,
        term,
        level: None,
    }
}

/// The gate with the default `trust.max_deadline_seconds`.
fn gate(
    cmd: &Command,
    node: &NodeName,
    now: Timestamp,
    executed: Option<&State>,
    highest: Option<u64>,
) -> (Gate, Option<u64>) {
    let ahead = skos_core::config::TrustConfig::default().max_deadline_seconds;
    super::gate(
        cmd,
        node,
        now,
        executed,
        highest,
        chrono::Duration::seconds(ahead as i64),
    )
}

#[test]
fn gate_refuses_a_command_for_no_node_or_with_a_far_deadline() {
    let now = chrono::Utc::now();
    let mut c = cmd("a", None);
    c.node = None;
    let (g, _) = gate(&c, &nova(), now, None, None);
    assert!(
        refused(&g)
            .is_some_and(|(s, m)| s == ResultStatus::Rejected && m.contains("names no node")),
        "{g:?}"
    );
    let mut c = cmd("b", None);
    c.deadline = Some(now + chrono::Duration::days(3650));
    let (g, _) = gate(&c, &nova(), now, None, None);
    assert!(
        refused(&g).is_some_and(|(s, m)| s == ResultStatus::Rejected && m.contains("max_deadline_seconds")),
        "{g:?}"
    );
    let mut c = cmd("d", None);
    c.deadline = None;
    let (g, _) = gate(&c, &nova(), now, None, None);
    assert!(
        refused(&g).is_some_and(|(s, m)| s == ResultStatus::Rejected && m.contains("no deadline")),
        "{g:?}"
    );
    // At the bound it runs.
    let mut c = cmd("c", None);
    c.deadline = Some(now + chrono::Duration::seconds(900));
    assert_eq!(gate(&c, &nova(), now, None, None).0, Gate::Run);
}

fn done(status: ResultStatus, message: &str) -> State {
    State::Done {
        status,
        message: message.into(),
    }
}

fn refused(g: &Gate) -> Option<(ResultStatus, &str)> {
    match g {
        Gate::Refuse(o) => Some((o.status, o.message.as_str())),
        _ => None,
    }
}

#[test]
fn executed_log_keeps_only_what_could_still_be_replayed() {
    let m = executed::load("a\t100\nb\t50\nlegacy\n\n", 60).entries;
    assert!(m.contains_key("a"));
    assert!(!m.contains_key("b"));
    assert!(m.contains_key("legacy"));
    assert_eq!(m.len(), 2);
}

#[test]
fn a_refused_commands_action_type_is_said_when_it_is_a_plain_name() {
    assert_eq!(
        loose_action_type(br#"{"action_id":"x","action_type":"throttle_100"}"#),
        "throttle_100"
    );
    for bad in [
        &br#"{"action_id":"x"}"#[..],
        br#"{"action_type":"rm -rf /"}"#,
        br#"{"action_type":"ab"}"#,
        b"garbage",
    ] {
        assert_eq!(loose_action_type(bad), "unreadable");
    }
}

#[test]
fn loose_ids() {
    assert_eq!(
        loose_action_id(br#"{"action_id":"x","junk":1}"#).as_deref(),
        Some("x")
    );
    assert_eq!(loose_action_id(b"garbage"), None);
    assert_eq!(loose_action_id(br#"{"action_id":"a\u0000b"}"#), None);
}

#[test]
fn gate_runs_a_fresh_command_and_records_a_new_term() {
    let now = chrono::Utc::now();
    assert_eq!(
        gate(&cmd("a", None), &nova(), now, None, None),
        (Gate::Run, None)
    );
    assert_eq!(
        gate(&cmd("a", Some(3)), &nova(), now, None, None),
        (Gate::Run, Some(3))
    );
    assert_eq!(
        gate(&cmd("a", Some(3)), &nova(), now, None, Some(3)),
        (Gate::Run, None)
    );
    assert_eq!(
        gate(&cmd("a", Some(7)), &nova(), now, None, Some(3)),
        (Gate::Run, Some(7))
    );
}

#[test]
fn gate_refuses_stale_and_missing_terms() {
    let now = chrono::Utc::now();
    let (g, t) = gate(&cmd("a", Some(3)), &nova(), now, None, Some(5));
    assert_eq!(
        refused(&g),
        Some((
            ResultStatus::Rejected,
            "stale term 3: a coordinator of term 5 has spoken"
        ))
    );
    assert_eq!(t, None);
    // The coordinator is told which term it must pass.
    let Gate::Refuse(o) = &g else { unreachable!() };
    assert_eq!(o.details["reason"], skos_core::protocol::REASON_STALE_TERM);
    assert_eq!(o.details[skos_core::protocol::DETAIL_HIGHEST_TERM], 5);
    let (g, _) = gate(&cmd("a", None), &nova(), now, None, Some(5));
    let (status, message) = refused(&g).unwrap();
    assert_eq!(status, ResultStatus::Rejected);
    assert!(
        message.contains("no term") && message.contains("term 5"),
        "{message}"
    );
}

#[test]
fn gate_answers_a_replay_with_what_is_known_of_it() {
    let now = chrono::Utc::now();
    let c = cmd("a", Some(5));
    let (g, t) = gate(
        &c,
        &nova(),
        now,
        Some(&done(ResultStatus::Failed, "no channel")),
        Some(5),
    );
    let Gate::Replay(o) = g else { panic!("{g:?}") };
    assert_eq!(
        (o.status, o.message.as_str()),
        (ResultStatus::Failed, "no channel")
    );
    assert_eq!(o.details["replayed"], true);
    assert_eq!(t, None);
    assert_eq!(
        gate(&c, &nova(), now, Some(&State::Running), Some(5)).0,
        Gate::Running
    );
    // Outcome unknown (a log of an older version, or the agent stopped
    // while it ran): refused as before.
    let (g, _) = gate(&c, &nova(), now, Some(&State::Unknown), Some(5));
    assert_eq!(
        refused(&g),
        Some((
            ResultStatus::Rejected,
            "action_id already executed (replay)"
        ))
    );
    let Gate::Refuse(o) = g else { unreachable!() };
    assert_eq!(o.details["reason"], "replay");
    // What was carried out under an older term is still told as it was.
    let (g, _) = gate(
        &c,
        &nova(),
        now,
        Some(&done(ResultStatus::Succeeded, "sent")),
        Some(9),
    );
    assert!(matches!(g, Gate::Replay(ref o) if o.status == ResultStatus::Succeeded));
}

#[test]
fn gate_checks_node_deadline_and_parameters() {
    let now = chrono::Utc::now();
    let mut other = cmd("a", None);
    other.node = Some(NodeName::parse("lyra").unwrap());
    let (g, _) = gate(&other, &nova(), now, Some(&State::Running), None);
    assert_eq!(refused(&g).map(|r| r.0), Some(ResultStatus::Rejected));

    // Expired, but the newer term it carries is still recorded.
    let mut late = cmd("a", Some(4));
    late.deadline = Some(now - chrono::Duration::seconds(1));
    let (g, t) = gate(&late, &nova(), now, None, Some(2));
    assert_eq!(refused(&g).map(|r| r.0), Some(ResultStatus::Expired));
    assert_eq!(t, Some(4));

    let mut bad = cmd("a", None);
    bad.action_type = "throttle_50".into();
    bad.parameters
        .insert("nonsense".into(), serde_json::json!("x"));
    let (g, _) = gate(&bad, &nova(), now, None, None);
    let (status, message) = refused(&g).unwrap();
    assert_eq!(status, ResultStatus::Rejected);
    assert!(message.starts_with("invalid parameters"), "{message}");

    let mut unknown = cmd("a", None);
    unknown.action_type = "make_coffee".into();
    assert_eq!(gate(&unknown, &nova(), now, None, None).0, Gate::Run);
}

#[test]
fn write_atomic_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

// --- Agents over the in-process bus.

const WAIT: Duration = Duration::from_secs(20);

/// An agent with the storage watcher whose only channel for `alert_human`
/// is a command that appends a line to `side` (so each execution leaves a
/// trace), then sleeps `sleep` seconds.
fn config(side: &Path, sleep: f64) -> Config {
    let script = format!(
        "cat >/dev/null; echo run >> '{}'; sleep {sleep}",
        side.display()
    );
    Config::from_yaml(&format!(
        "agent: {{antibodies: [storage_watcher], heartbeat_interval: 0.5, monitor_interval: 0.2}}\n\
trust: {{require_signatures: false}}\n\
storage:\n  notify:\n    command: [sh, -c, {script:?}]\n"
    ))
    .unwrap()
}

struct Running {
    counters: Counters,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Start an agent and wait for its first heartbeat (its command feed is
    /// subscribed by then).
    async fn start(bus: &Bus, cfg: Config, state: &Path) -> Running {
        let mut heartbeats = bus.subscribe(Feed::Heartbeats).await.unwrap();
        let counters = Counters::default();
        let agent = Agent::new(cfg, bus.clone(), counters.clone(), Some(state.into())).unwrap();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            agent
                .run(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
                .unwrap();
        });
        tokio::time::timeout(WAIT, heartbeats.next())
            .await
            .expect("no heartbeat")
            .expect("heartbeat feed closed");
        Running {
            counters,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Deliver a command as JetStream would deliver it again: same payload,
/// no de-duplication.
async fn deliver(bus: &Bus, c: &Command) {
    bus.publish_raw(
        &subjects::command(&nova()),
        Bytes::from(serde_json::to_vec(c).unwrap()),
    )
    .await
    .unwrap();
}

async fn next_result(results: &mut Subscription, within: Duration) -> Option<CommandResult> {
    let m = tokio::time::timeout(within, results.next()).await.ok()??;
    Some(serde_json::from_slice(&m.payload).unwrap())
}

fn runs(side: &Path) -> usize {
    std::fs::read_to_string(side)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Wait until the notify command has run once (its job started).
async fn started(side: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while runs(side) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_again_is_answered_with_its_real_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let state = dir.path().join("state");
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 0.0), &state).await;
    let c = cmd("human-1", None);
    deliver(&bus, &c).await;
    let first = next_result(&mut results, WAIT).await.expect("result");
    assert_eq!(first.status, ResultStatus::Succeeded, "{first:?}");
    assert_eq!(runs(&side), 1);

    // Delivered again: not executed again, and never "rejected".
    deliver(&bus, &c).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while agent.counters.get("commands.replayed") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay not answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (The in-process bus, like the stream, drops the re-sent result as a
    // duplicate: same node, action id and status.)
    assert!(next_result(&mut results, Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(runs(&side), 1);
    assert_eq!(agent.counters.get("commands.rejected"), 0);
    agent.stop().await;

    // A restarted agent on a bus that never saw the first result (it was
    // lost) answers the delivered-again command with the recorded outcome.
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 0.0), &state).await;
    deliver(&bus, &c).await;
    let again = next_result(&mut results, WAIT).await.expect("result");
    assert_eq!(again.action_id, "human-1");
    assert_eq!(again.status, ResultStatus::Succeeded);
    assert_eq!(again.message, first.message);
    assert_eq!(again.details["replayed"], true);
    assert_eq!(runs(&side), 1, "executed once");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_again_while_it_runs_is_executed_and_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 2.0), &dir.path().join("state")).await;
    let c = cmd("human-2", None);
    deliver(&bus, &c).await;
    started(&side).await;
    deliver(&bus, &c).await;
    let r = next_result(&mut results, WAIT).await.expect("result");
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert!(
        next_result(&mut results, Duration::from_millis(500))
            .await
            .is_none(),
        "a second answer"
    );
    assert_eq!(runs(&side), 1);
    assert_eq!(agent.counters.get("commands.redelivered_running"), 1);
    agent.stop().await;
}

/// Signed commands replayed past their deadline are each counted and
/// answered `expired`, but logged ten a minute and followed by no
/// heartbeat: a flood of them fills neither the log nor the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_commands_are_answered_but_neither_logged_nor_heartbeated_one_by_one() {
    const FLOOD: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 0.0), &dir.path().join("state")).await;
    let began = tokio::time::Instant::now();
    let beats_before = agent.counters.get("heartbeats.sent");
    for i in 0..FLOOD {
        let mut c = cmd(&format!("late-{i}"), None);
        c.deadline = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
        deliver(&bus, &c).await;
    }
    for i in 0..FLOOD {
        let r = next_result(&mut results, WAIT).await.expect("result");
        assert_eq!(r.action_id, format!("late-{i}"));
        assert_eq!(r.status, ResultStatus::Expired, "{r:?}");
    }
    let beats = agent.counters.get("heartbeats.sent") - beats_before;
    // Only the agent's own 0.5 s heartbeats (and one to spare).
    let due = (began.elapsed().as_secs_f64() / 0.5).ceil() as u64 + 1;
    assert!(beats <= due, "{beats} heartbeats for {due} due");
    assert_eq!(agent.counters.get("commands.expired"), FLOOD);
    assert_eq!(
        agent.counters.get("commands.not_logged"),
        FLOOD - u64::from(quiet::LOGGED_PER_MINUTE)
    );
    assert_eq!(runs(&side), 0);
    agent.stop().await;
}

/// Wait until counter `name` reaches `n`.
async fn counted(agent: &Running, name: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while agent.counters.get(name) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {} of {n}",
            agent.counters.get(name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies of a command no antibody here implements: the first answered
/// `unsupported`, the rest as replays of that answer, logged within the
/// budget and with no heartbeat after any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_an_unsupported_command_are_replays_not_logged_or_heartbeated_each() {
    const FLOOD: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let bus = Bus::InProc(InProcBus::new());
    let agent = Running::start(&bus, config(&side, 0.0), &dir.path().join("state")).await;
    let began = tokio::time::Instant::now();
    let beats_before = agent.counters.get("heartbeats.sent");
    let mut c = cmd("unsupported-1", None);
    c.action_type = "throttle_10".into();
    for _ in 0..FLOOD {
        deliver(&bus, &c).await;
    }
    counted(&agent, "commands.replayed", FLOOD - 1).await;
    assert_eq!(agent.counters.get("commands.unsupported"), 1);
    let beats = agent.counters.get("heartbeats.sent") - beats_before;
    let due = (began.elapsed().as_secs_f64() / 0.5).ceil() as u64 + 1;
    assert!(beats <= due, "{beats} heartbeats for {due} due");
    assert_eq!(
        agent.counters.get("commands.not_logged"),
        FLOOD - 1 - u64::from(quiet::LOGGED_PER_MINUTE)
    );
    agent.stop().await;
}

/// Copies of a command that still runs, or that waits behind a running
/// job of its problem: executed once, held once, logged within the
/// budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_running_or_held_command_are_held_once_and_logged_within_budget() {
    const FLOOD: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 3.0), &dir.path().join("state")).await;
    let mut a = cmd("held-a", None);
    a.problem = Some("storage:/".into());
    a.level = Some(90.0);
    deliver(&bus, &a).await;
    started(&side).await;
    let mut b = a.clone();
    b.action_id = "held-b".into();
    for _ in 0..FLOOD {
        deliver(&bus, &a).await;
        deliver(&bus, &b).await;
    }
    counted(&agent, "commands.redelivered_running", FLOOD).await;
    counted(&agent, "commands.redelivered_held", FLOOD - 1).await;
    assert_eq!(agent.counters.get("commands.held"), 1, "b held once");
    // Ten log lines for the two kinds of copies together (both replays).
    assert_eq!(
        agent.counters.get("commands.not_logged"),
        2 * FLOOD - 1 - u64::from(quiet::LOGGED_PER_MINUTE)
    );
    // a's job ends; b, judged then, runs (the problem is not rechecked by
    // this antibody's notify channel) once.
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 2 {
        let r = next_result(&mut results, WAIT).await.expect("a result");
        *answered.entry(r.action_id).or_insert(0) += 1;
    }
    assert_eq!(answered.values().sum::<u32>(), 2, "{answered:?}");
    agent.stop().await;
}

/// Deliver a command and wait for its answer.
async fn answer(bus: &Bus, results: &mut Subscription, c: Command) -> CommandResult {
    deliver(bus, &c).await;
    let r = next_result(results, WAIT).await.expect("result");
    assert_eq!(r.action_id, c.action_id);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_term_is_refused_and_the_term_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let state = dir.path().join("state");
    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 0.0), &state).await;
    // Before any term: a command without one is carried out.
    assert_eq!(
        answer(&bus, &mut results, cmd("t-0", None)).await.status,
        ResultStatus::Succeeded
    );
    assert_eq!(
        answer(&bus, &mut results, cmd("t-5", Some(5))).await.status,
        ResultStatus::Succeeded
    );
    assert_eq!(
        std::fs::read_to_string(state.join("term-nova")).unwrap(),
        "5\n"
    );
    let r = answer(&bus, &mut results, cmd("t-3", Some(3))).await;
    assert_eq!(r.status, ResultStatus::Rejected);
    assert_eq!(
        r.message,
        "stale term 3: a coordinator of term 5 has spoken"
    );
    let r = answer(&bus, &mut results, cmd("t-none", None)).await;
    assert_eq!(r.status, ResultStatus::Rejected, "{r:?}");
    assert_eq!(runs(&side), 2);
    agent.stop().await;

    let bus = Bus::InProc(InProcBus::new());
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let agent = Running::start(&bus, config(&side, 0.0), &state).await;
    let r = answer(&bus, &mut results, cmd("t-4", Some(4))).await;
    assert_eq!(r.status, ResultStatus::Rejected);
    assert_eq!(
        r.message,
        "stale term 4: a coordinator of term 5 has spoken"
    );
    assert_eq!(
        answer(&bus, &mut results, cmd("t-6", Some(6))).await.status,
        ResultStatus::Succeeded
    );
    assert_eq!(
        std::fs::read_to_string(state.join("term-nova")).unwrap(),
        "6\n"
    );
    assert_eq!(runs(&side), 3);
    agent.stop().await;
}

/// A state dir another user owns, or anyone may write, is refused before
/// the agent starts: such a user could plant links that make root
/// overwrite its own files. The error names the dir, its owner and mode.
#[test]
fn a_state_dir_others_could_plant_links_in_is_refused() {
    skos_testsupport::require!("root", skos_testsupport::require::root());
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let bus = Bus::InProc(InProcBus::new());
    let refused = |state: &Path| match Agent::new(
        config(&side, 0.0),
        bus.clone(),
        Counters::default(),
        Some(state.into()),
    ) {
        Ok(_) => panic!("{} accepted", state.display()),
        Err(e) => e.to_string(),
    };
    let e = refused(&state);
    assert!(
        e.contains(&state.display().to_string())
            && e.contains("owned by uid 65534")
            && e.contains("mode 0755"),
        "{e}"
    );
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(refused(&state).contains("mode 0777"));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(Agent::new(
        config(&side, 0.0),
        bus,
        Counters::default(),
        Some(state.clone())
    )
    .is_ok());
}

/// The next heartbeat's CPU temperature (`None`: not read yet).
async fn next_cpu_temp(heartbeats: &mut Subscription) -> Option<f64> {
    let m = tokio::time::timeout(WAIT, heartbeats.next())
        .await
        .expect("no heartbeat")
        .expect("heartbeat feed closed");
    let hb: Heartbeat = serde_json::from_slice(&m.payload).unwrap();
    hb.cpu_temp
}

/// Each antibody looks at its own interval
/// (`agents.<name>.monitor_interval_seconds`): a thermal sentinel that
/// looks once an hour keeps reporting its first reading while heartbeats go
/// on, and one that looks at the agent's interval reports the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_antibody_looks_at_its_own_interval() {
    for (own, sees_new) in [(3600.0, false), (0.1, true)] {
        let dir = tempfile::tempdir().unwrap();
        let fake = skos_testsupport::sysfs::FakeSysfs::new();
        let cpu = fake.coretemp(60.0, &[]);
        let mut cfg = Config::from_yaml(&format!(
            "agent: {{antibodies: [thermal_sentinel], heartbeat_interval: 0.2, monitor_interval: 0.1}}\n\
agents: {{thermal_sentinel: {{monitor_interval_seconds: {own}}}}}\n\
trust: {{require_signatures: false}}\n\
thermal: {{gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}}}\n"
        ))
        .unwrap();
        cfg.sysfs_root = fake.root().to_path_buf();
        let bus = Bus::InProc(InProcBus::new());
        let mut heartbeats = bus.subscribe(Feed::Heartbeats).await.unwrap();
        let agent = Running::start(&bus, cfg, &dir.path().join("state")).await;
        // The first look's reading (it arrives from the sensor thread).
        while next_cpu_temp(&mut heartbeats).await != Some(60.0) {}
        cpu.heat(70.0);
        if sees_new {
            while next_cpu_temp(&mut heartbeats).await != Some(70.0) {}
        } else {
            for _ in 0..10 {
                assert_eq!(
                    next_cpu_temp(&mut heartbeats).await,
                    Some(60.0),
                    "looked again before its hour"
                );
            }
        }
        agent.stop().await;
    }
}
