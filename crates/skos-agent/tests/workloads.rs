//! The workloads antibody with real workloads: busybox's HTTP server run
//! as a plain process and as a container through Podman's Docker Engine
//! API, started, health-checked over HTTP, stopped, and found again by a
//! restarted antibody; a start that never becomes healthy is undone; a
//! process that ignores its stop signal is killed. A systemd unit the same
//! way where systemd runs as PID 1 (ignored elsewhere).

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use skos_agent::antibody::{Antibody, Execution};
use skos_agent::workloads::{health, Workloads};
use skos_agent::Outcome;
use skos_core::config::Config;
use skos_core::protocol::{Command, Heartbeat, ResultStatus};
use skos_core::{NodeName, WorkloadReport, WorkloadState};
use skos_testsupport::podman::{free_port, Podman, BUSYBOX};
use skos_testsupport::require;

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

fn config(workloads: &str) -> Config {
    let mut cfg = Config::from_yaml(&format!(
        "agent: {{antibodies: [workloads]}}\nworkloads:\n{workloads}"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    cfg.node.name = nova();
    cfg
}

fn command(action: &str, id: &str, params: serde_json::Value) -> Command {
    Command {
        action_id: id.into(),
        action_type: action.into(),
        parameters: params.as_object().cloned().unwrap_or_default(),
        timestamp: chrono::Utc::now(),
        node: Some(nova()),
        deadline: Some(chrono::Utc::now() + chrono::Duration::seconds(60)),
        cause: None,
        problem: None,
        term: None,
        level: None,
    }
}

/// Execute a command the way the runtime does: a background job is run
/// here, to its end.
fn run(w: &mut Workloads, action: &str, id: &str, params: serde_json::Value) -> Outcome {
    match w.execute(&command(action, id, params)) {
        Execution::Done(o) => o,
        Execution::Background(job) => job(),
    }
}

fn start(w: &mut Workloads, name: &str) -> Outcome {
    run(w, "workload_start", "s", json!({"workload": name}))
}

fn stop(w: &mut Workloads, name: &str) -> Outcome {
    run(w, "workload_stop", "t", json!({"workload": name}))
}

/// The antibody's heartbeat entry for `name`, after a fresh read.
fn reported(w: &mut Workloads, name: &str) -> Option<WorkloadReport> {
    // As long as the engine takes to answer: the agent's own first look
    // waits a second, and reports the workload unknown until it answers.
    assert!(
        w.look_now(chrono::Utc::now(), Duration::from_secs(60)),
        "no read of the workloads within 60 s"
    );
    let mut hb = Heartbeat::bare("a", "workloads", nova(), chrono::Utc::now());
    w.report(&mut hb);
    hb.workloads.into_iter().find(|r| r.name.as_str() == name)
}

/// A directory served by busybox httpd: `index.html` answers 200.
fn web_root(dir: &Path) -> String {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    www.display().to_string()
}

fn serves(port: u16) -> bool {
    health::http(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).ok()
}

/// Processes whose command line is exactly `argv` and that lead their
/// process group (busybox httpd forks a child per connection, and a
/// shell one per background job: those are not counted).
fn processes_running(argv: &[String]) -> Vec<u32> {
    group_members(argv)
        .into_iter()
        .filter(|(pid, pgrp)| pid == pgrp)
        .map(|(pid, _)| pid)
        .collect()
}

/// Processes whose command line is exactly `argv`, with their process
/// group.
fn group_members(argv: &[String]) -> Vec<(u32, u32)> {
    let want = argv.join("\0");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline);
        let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = state.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let zombie = fields.first() == Some(&"Z");
        let pgrp = fields.get(2).and_then(|g| g.parse::<u32>().ok());
        if let (true, false, Some(pgrp)) = (text.trim_end_matches('\0') == want, zombie, pgrp) {
            out.push((pid, pgrp));
        }
    }
    out
}

/// Kills, on drop, the process groups led by `argv` (a test that fails
/// half-way leaves nothing running).
struct KillOnDrop(Vec<String>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in processes_running(&self.0) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill has no memory effects; the group is led by
                // a process this test started.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn busybox_httpd(port: u16, root: &str) -> Vec<String> {
    [BUSYBOX, "httpd", "-f", "-p", &port.to_string(), "-h", root]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn a_process_workload_starts_healthy_stops_and_is_found_after_a_restart() {
    require!(
        "the static busybox",
        require::path(Path::new(BUSYBOX), "./test.sh installs busybox-static")
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let root = web_root(dir.path());
    let argv = busybox_httpd(port, &root);
    let _cleanup = KillOnDrop(argv.clone());
    let cfg = config(&format!(
        "  web:\n    driver: process\n    command: {}\n    health: {{http: 'http://127.0.0.1:{port}/', timeout_seconds: 2}}\n    start_timeout_seconds: 20\n    nodes: [nova]\n",
        serde_json::to_string(&argv).unwrap()
    ));
    let mut w = Workloads::new(&cfg, Some(&state));

    // Homed here, not started: reported stopped, no health.
    let r = reported(&mut w, "web").expect("a homed workload is reported");
    assert_eq!(r.state, WorkloadState::Stopped, "{r:?}");
    assert_eq!(r.healthy, None);

    let o = start(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!(o.details["workload"], "web");
    assert_eq!(o.details["state"], "running");
    assert_eq!(o.details["healthy"], true);
    assert!(serves(port), "the workload serves HTTP");
    let pids = processes_running(&argv);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let r = reported(&mut w, "web").unwrap();
    assert_eq!((r.state, r.healthy), (WorkloadState::Running, Some(true)));
    assert_eq!(r.detail, format!("pid {}", pids[0]));
    // It runs in a session of its own, its output in the state dir.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pids[0].to_string(), "session id is its own pid");
    assert!(state.join("workloads/web.log").is_file());

    // A restarted agent finds it, and a start does not make a second copy.
    drop(w);
    let mut w = Workloads::new(&cfg, Some(&state));
    let r = reported(&mut w, "web").unwrap();
    assert_eq!((r.state, r.healthy), (WorkloadState::Running, Some(true)));
    assert_eq!(r.detail, format!("pid {}", pids[0]));
    let o = start(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(o.message.contains("already runs"), "{}", o.message);
    assert_eq!(processes_running(&argv), pids);

    let o = stop(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!(o.details["state"], "stopped");
    assert!(o.message.contains("SIGTERM"), "{}", o.message);
    assert!(processes_running(&argv).is_empty());
    assert!(!serves(port));
    let r = reported(&mut w, "web").unwrap();
    assert_eq!((r.state, r.healthy), (WorkloadState::Stopped, None));
    assert!(r.since.is_some(), "the change was seen: {r:?}");
    // Stopping what is stopped succeeds.
    let o = stop(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
}

#[test]
fn a_workload_told_to_start_is_remembered_across_a_restart_until_stopped() {
    require!(
        "the static busybox",
        require::path(Path::new(BUSYBOX), "./test.sh installs busybox-static")
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let root = web_root(dir.path());
    let argv = busybox_httpd(port, &root);
    let _cleanup = KillOnDrop(argv.clone());
    // Its home is lyra: nova reports it only once told to start it.
    let cfg = config(&format!(
        "  moved:\n    driver: process\n    command: {}\n    health: {{tcp: '127.0.0.1:{port}'}}\n    nodes: [lyra, nova]\n",
        serde_json::to_string(&argv).unwrap()
    ));
    let mut w = Workloads::new(&cfg, Some(&state));
    assert!(reported(&mut w, "moved").is_none());
    let o = start(&mut w, "moved");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    drop(w);
    let mut w = Workloads::new(&cfg, Some(&state));
    let r = reported(&mut w, "moved").expect("remembered after a restart");
    assert_eq!((r.state, r.healthy), (WorkloadState::Running, Some(true)));
    let o = run(
        &mut w,
        "workload_stop",
        "f",
        json!({"workload": "moved", "fence": "true"}),
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!(o.details["fence"], true);
    assert!(processes_running(&argv).is_empty());
    assert!(reported(&mut w, "moved").is_none());
    drop(w);
    let mut w = Workloads::new(&cfg, Some(&state));
    assert!(
        reported(&mut w, "moved").is_none(),
        "forgotten once stopped"
    );
}

#[test]
fn a_start_that_never_becomes_healthy_is_undone_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let argv = ["/bin/sleep", "301"];
    let cfg = config(&format!(
        "  deaf:\n    driver: process\n    command: [/bin/sleep, '301']\n    health: {{http: 'http://127.0.0.1:{port}/', timeout_seconds: 1}}\n    start_timeout_seconds: 1.5\n"
    ));
    let _cleanup = KillOnDrop(argv.iter().map(|s| s.to_string()).collect());
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let o = start(&mut w, "deaf");
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(
        o.message
            .contains("not healthy within start_timeout_seconds (1.5 s)"),
        "{}",
        o.message
    );
    assert!(o.message.contains("stopped again"), "{}", o.message);
    assert_eq!(o.details["state"], "stopped");
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    assert!(processes_running(&argv).is_empty(), "nothing left running");
    // A workload that is not configured, or may not run here, is refused.
    let o = start(&mut w, "ghost");
    assert_eq!(o.status, ResultStatus::Rejected);
    let cfg =
        config("  elsewhere:\n    driver: process\n    command: [/bin/true]\n    nodes: [lyra]\n");
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let o = start(&mut w, "elsewhere");
    assert_eq!(o.status, ResultStatus::Rejected, "{o:?}");
    assert!(o.message.contains("may not run on nova"), "{}", o.message);
}

#[test]
fn a_process_that_ignores_its_stop_signal_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("skos-stubborn-{}", std::process::id());
    let script = format!("trap '' TERM; /bin/sleep 302 & wait; # {marker}");
    let leader = vec!["/bin/sh".to_string(), "-c".to_string(), script.clone()];
    let _cleanup = KillOnDrop(leader.clone());
    let cfg = config(&format!(
        "  stubborn:\n    driver: process\n    command: [/bin/sh, -c, {script:?}]\n    stop_timeout_seconds: 0.5\n"
    ));
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let o = start(&mut w, "stubborn");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!(
        o.details["healthy"], true,
        "running is healthy without a check"
    );
    let r = reported(&mut w, "stubborn").unwrap();
    let pid: u32 = r.detail.strip_prefix("pid ").unwrap().parse().unwrap();
    assert!(processes_running(&leader).contains(&pid), "{r:?}");
    let o = stop(&mut w, "stubborn");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(o.message.contains("SIGKILL"), "{}", o.message);
    assert!(processes_running(&leader).is_empty());
    // Its child went with the group.
    let sleepers: Vec<(u32, u32)> = group_members(&["/bin/sleep".into(), "302".into()])
        .into_iter()
        .filter(|(_, pgrp)| *pgrp == pid)
        .collect();
    assert!(sleepers.is_empty(), "{sleepers:?}");
}

#[test]
fn a_container_workload_runs_through_the_docker_engine_api_of_podman() {
    let engine = require!("podman (its Docker Engine API)", Podman::start());
    let image = engine
        .busybox_image("web", &[("www/index.html", "ok\n")])
        .unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&format!(
        "  web:\n    driver: container\n    image: {image}\n    container_command: [/bin/busybox, httpd, -f, -p, '{port}', -h, /www]\n    network: host\n    stop_timeout_seconds: 2\n    health: {{http: 'http://127.0.0.1:{port}/'}}\n    nodes: [nova]\n"
    ));
    cfg.agent.workloads.docker_host = engine.docker_host();
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let r = reported(&mut w, "web").unwrap();
    assert_eq!(r.state, WorkloadState::Stopped, "{r:?}");
    assert!(r.detail.contains("no container skos-web"), "{r:?}");

    let o = start(&mut w, "web");
    assert_eq!(
        o.status,
        ResultStatus::Succeeded,
        "{o:?}\n{}",
        engine.service_log()
    );
    assert!(o.message.contains("created and started"), "{}", o.message);
    assert_eq!(o.details["healthy"], true);
    assert!(serves(port));
    assert_eq!(
        engine.container_status("skos-web").as_deref(),
        Some("running")
    );
    let r = reported(&mut w, "web").unwrap();
    assert_eq!((r.state, r.healthy), (WorkloadState::Running, Some(true)));
    assert!(
        r.detail.starts_with("container ") && r.detail.ends_with(" running"),
        "{r:?}"
    );

    // A restarted agent finds it running; a start is answered at once.
    drop(w);
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let o = start(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(o.message.contains("already runs"), "{}", o.message);

    let o = stop(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(!serves(port));
    assert_eq!(
        engine.container_status("skos-web").as_deref(),
        Some("exited")
    );
    let r = reported(&mut w, "web").unwrap();
    assert_eq!(
        (r.state, r.healthy),
        (WorkloadState::Stopped, None),
        "{r:?}"
    );
    assert_eq!(stop(&mut w, "web").status, ResultStatus::Succeeded);

    // Started again: the container is reused, not created twice.
    let o = start(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(!o.message.contains("created"), "{}", o.message);
    assert!(serves(port));
    assert_eq!(stop(&mut w, "web").status, ResultStatus::Succeeded);
}

#[test]
fn a_container_whose_image_is_missing_fails_to_start_and_says_why() {
    let engine = require!("podman (its Docker Engine API)", Podman::start());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        "  ghost:\n    driver: container\n    image: localhost/skos-test-not-built\n    network: host\n",
    );
    cfg.agent.workloads.docker_host = engine.docker_host();
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let o = start(&mut w, "ghost");
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(
        o.message
            .contains("create skos-ghost from localhost/skos-test-not-built"),
        "{}",
        o.message
    );
}

/// A unit written to `/run/systemd/system`, stopped and removed on drop.
struct TestUnit(String);

impl Drop for TestUnit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("systemctl")
            .args(["stop", &self.0])
            .status();
        let _ = std::fs::remove_file(Path::new("/run/systemd/system").join(&self.0));
        let _ = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status();
    }
}

/// Needs systemd as PID 1, which no test machine or container of this
/// project runs and `./test.sh` cannot install: ignored by default, so
/// `SKOS_TEST_REQUIRE_ALL=1` does not fail on it; run it with
/// `--ignored` on a machine booted with systemd.
#[test]
#[ignore = "needs systemd as PID 1 (run with --ignored on a machine booted with systemd)"]
fn a_systemd_workload_starts_and_stops_through_systemctl() {
    require!(
        "systemd running as PID 1",
        require::path(
            Path::new("/run/systemd/system"),
            "systemd is not PID 1 on this machine"
        )
    );
    require!("root (to install a unit)", require::root());
    require!(
        "the static busybox",
        require::path(Path::new(BUSYBOX), "./test.sh installs busybox-static")
    );
    let dir = tempfile::tempdir().unwrap();
    let root = web_root(dir.path());
    let port = free_port();
    let unit = format!("skos-test-web-{}.service", std::process::id());
    std::fs::write(
        Path::new("/run/systemd/system").join(&unit),
        format!("[Service]\nExecStart={BUSYBOX} httpd -f -p {port} -h {root}\n"),
    )
    .unwrap();
    let _unit = TestUnit(unit.clone());
    let reload = std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .unwrap();
    assert!(reload.success());
    let cfg = config(&format!(
        "  web:\n    driver: systemd\n    unit: {unit}\n    health: {{http: 'http://127.0.0.1:{port}/'}}\n    nodes: [nova]\n"
    ));
    let mut w = Workloads::new(&cfg, Some(dir.path()));
    let r = reported(&mut w, "web").unwrap();
    assert_eq!(r.state, WorkloadState::Stopped, "{r:?}");
    let o = start(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!(o.details["healthy"], true);
    assert!(serves(port));
    let r = reported(&mut w, "web").unwrap();
    assert_eq!((r.state, r.healthy), (WorkloadState::Running, Some(true)));
    assert_eq!(r.detail, format!("{unit} active"));
    let o = stop(&mut w, "web");
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(!serves(port));
    assert_eq!(
        reported(&mut w, "web").unwrap().state,
        WorkloadState::Stopped
    );
}
