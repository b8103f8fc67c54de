//! The loop breaker's uncooperative side: process groups read from `/proc`.
//!
//! A fake proc tree (temp dir, through `proc_root`) for what must never
//! signal anything; real shell scripts (a fork-happy one, a crash loop) on
//! the real `/proc` for the rest. Every script runs in its own process
//! group, killed (SIGKILL) by a guard when the test ends, pass or fail.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
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

/// The uid this test runs as (the owner of the scripts it starts).
fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
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
        level: None,
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
        "    - {{name: forky, uid: {}, command: '*{}/fork.sh*', max_depth: 100, max_descendants: 10, grace_seconds: 0.5, cool_off_seconds: 60}}\n",
        my_uid(),
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
    // The program is shown; its arguments (the temp dir, levels) are not.
    assert_eq!(evidence[0]["command"], "sh fork.sh");
    assert!(
        evidence.iter().all(|e| e.get("cmdline").is_none()),
        "{evidence:?}"
    );

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
        "    - {{name: crashy, uid: {}, command: '*{}/crasher.sh*', max_respawns: 3, respawn_window_seconds: 30, on_break: stop, grace_seconds: 0.5, cool_off_seconds: 60}}\n",
        my_uid(),
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

/// Runs the crasher five times, one after the other, then ends.
const FIVE_TIMES: &str = r#"#!/bin/sh
for i in 1 2 3 4 5; do
  sh "$1/crasher.sh" "$1"
done
"#;

/// A crash loop that ends before any snapshot can see it: only the
/// kernel's process events count its starts. A breaker that counts from
/// snapshots alone, sensing before and after, sees none of them.
#[test]
fn a_crash_loop_between_two_snapshots_is_counted_from_the_kernels_process_events() {
    if !live_proc() {
        return;
    }
    skos_testsupport::require!(
        "root (the proc connector needs CAP_NET_ADMIN before Linux 6.6)",
        skos_testsupport::require::root()
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("supervisor.sh"), FIVE_TIMES).unwrap();
    std::fs::write(d.join("crasher.sh"), CRASHER).unwrap();
    let group = format!(
        "    - {{name: crashy, uid: {}, command: '*{}/crasher.sh*', max_respawns: 3, respawn_window_seconds: 60, on_break: stop, cool_off_seconds: 60}}\n",
        my_uid(),
        d.display()
    );
    let mut heard = breaker(&group);
    let mut snapshots = breaker(&group);
    skos_testsupport::require!(
        "the kernel's process events (initial pid and user namespace, CONFIG_PROC_EVENTS)",
        heard.listen()
    );
    assert!(heard.listening());
    assert!(heard.sense(chrono::Utc::now()).is_empty());
    assert!(snapshots.sense(chrono::Utc::now()).is_empty());

    let loop_ = ProcGroup::spawn_sh(&d.join("supervisor.sh"), &[d.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !loop_.alive().is_empty() {
        assert!(Instant::now() < deadline, "the crash loop did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(starts(d), 5);

    // No snapshot was taken while it ran, and the one now finds nothing.
    assert!(
        snapshots.sense(chrono::Utc::now()).is_empty(),
        "snapshots alone cannot see a crash loop that ended between them"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let alerts = heard.hear();
        if let Some(a) = alerts.iter().find(|a| a.severity == Severity::Critical) {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no crash-loop alert heard");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(alert.details["condition"], "crash_loop");
    assert_eq!(alert.details["limit"], 3);
    assert_eq!(
        alert.details["value"], 4,
        "tripped at the fourth start, as it was heard"
    );
    assert_eq!(alert.details["respawns"].as_array().unwrap().len(), 4);
    let respawns = |lb: &LoopBreaker| {
        let mut hb = heartbeat();
        lb.report(&mut hb);
        assert_eq!(
            hb.metadata["loop_breaker"]["process_events"]["listening"],
            true
        );
        hb.metadata["loop_breaker"]["groups"][0]["respawns"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while respawns(&heard) != 5 {
        assert!(Instant::now() < deadline, "the fifth start not heard");
        heard.hear();
        std::thread::sleep(Duration::from_millis(50));
    }
    // A snapshot after it counts none of them again.
    assert!(heard.sense(chrono::Utc::now()).is_empty());
    assert_eq!(respawns(&heard), 5);
}

fn heartbeat() -> skos_core::protocol::Heartbeat {
    skos_core::protocol::Heartbeat::bare(
        "a",
        "loop_breaker",
        skos_core::NodeName::parse("nova").unwrap(),
        chrono::Utc::now(),
    )
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
    // The unit's cgroup, owned by this test's user and writable by no one
    // else: trusted.
    let sys = tempfile::tempdir().unwrap();
    let unit = sys.path().join("fs/cgroup/system.slice/batch.service");
    std::fs::create_dir_all(&unit).unwrap();
    std::fs::write(unit.join("cgroup.procs"), "").unwrap();
    std::fs::write(sys.path().join("fs/cgroup/cgroup.controllers"), "").unwrap();
    for d in [sys.path(), &unit] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut cfg = Config::from_yaml(
        "agent: {antibodies: [loop_breaker]}\nloop:\n  process_groups:\n    - {name: batch, unit: batch.service, max_depth: 5}\n",
    )
    .unwrap();
    cfg.proc_root = root.path().to_path_buf();
    cfg.sysfs_root = sys.path().to_path_buf();
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
    let mut lb = breaker("    - {name: g, uid: 0, command: '*never-matches-anything*'}\n");
    lb.sense(chrono::Utc::now());
    let mut hb = heartbeat();
    lb.report(&mut hb);
    let m = &hb.metadata["loop_breaker"];
    assert_eq!(m["chains"], 0);
    assert_eq!(m["groups"][0]["name"], "g");
    assert_eq!(m["groups"][0]["state"], "watching");
}

/// Processes started as another user, in a process group of their own,
/// killed whole when the guard goes.
struct AsUser(Child);

impl AsUser {
    /// `program` with `argv0` as its name, as `uid`:`uid`.
    fn spawn(uid: u32, program: &str, argv0: &str, args: &[&str]) -> AsUser {
        let child = std::process::Command::new(program)
            .arg0(argv0)
            .args(args)
            .uid(uid)
            .gid(uid)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn as another user");
        AsUser(child)
    }

    /// Pids of the group's processes with their state, from `/proc`.
    fn members(&self) -> Vec<(u32, char, u32)> {
        let pgid = self.0.id();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            if f.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
                continue;
            }
            let uid = std::fs::metadata(e.path()).map(|m| m.uid()).unwrap_or(0);
            out.push((pid, f[0].chars().next().unwrap_or('?'), uid));
        }
        out
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group this guard created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}

/// uid of `nobody`.
const NOBODY: u32 = 65534;

#[test]
fn a_process_of_another_user_naming_itself_after_a_group_is_never_counted_or_signalled() {
    skos_testsupport::require!("root", skos_testsupport::require::root());
    if !live_proc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let worker = d.join("worker.sh");
    // Root's worker: `n` children, then waits.
    std::fs::write(
        &worker,
        "#!/bin/sh\nfor i in $(seq \"$1\"); do sleep 60 & done\nwait\n",
    )
    .unwrap();
    let pattern = format!("*{}/worker.sh*", d.display());
    let mut lb = breaker(&format!(
        "    - {{name: worker, uid: 0, command: '{pattern}', max_descendants: 5, on_break: term, grace_seconds: 0.5, cool_off_seconds: 60}}\n"
    ));
    // The impostor (nobody): named like the worker, with 20 children.
    let fake_name = format!("sh {}", worker.display());
    let impostor = AsUser::spawn(
        NOBODY,
        "/bin/sh",
        &fake_name,
        &[
            "-c",
            "for i in $(seq 20); do sleep 60 & done; wait",
            &worker.to_string_lossy(),
        ],
    );
    let root_worker = ProcGroup::spawn_sh(&worker, &["2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while impostor.members().len() < 21 || root_worker.alive().len() < 3 {
        assert!(Instant::now() < deadline, "the processes did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The impostor's command line matches the pattern, its uid does not.
    let shown = std::fs::read(format!("/proc/{}/cmdline", impostor.0.id())).unwrap();
    assert!(String::from_utf8_lossy(&shown).contains("worker.sh"));

    // Many looks: the impostor's 20 children never trip the group.
    for _ in 0..5 {
        let alerts = lb.sense(chrono::Utc::now());
        assert!(alerts.is_empty(), "the impostor was counted: {alerts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Root's worker does run away: 10 more children, over the limit.
    let runaway = ProcGroup::spawn_sh(&worker, &["10"]);
    let alert = sense_until(&mut lb, "the root worker's trip", |alerts, _| {
        alerts
            .iter()
            .find(|a| a.severity == Severity::Critical)
            .cloned()
    });
    assert_eq!(alert.details["condition"], "descendants_exceeded");
    let value = alert.details["value"].as_u64().unwrap();
    assert!(
        (6..=12).contains(&value),
        "{value}: only root's count (2 + 10 at most)"
    );
    let o = run(
        &mut lb,
        command("circuit_break", Some(&alert.alert_id), None),
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    let impostor_pids: Vec<String> = impostor
        .members()
        .iter()
        .map(|m| format!("pid:{}", m.0))
        .collect();
    assert!(
        o.changes.iter().all(|c| !impostor_pids.contains(&c.target)),
        "a signal went to the impostor: {o:?}"
    );
    sense_until(&mut lb, "root's worker terminated", |_, _| {
        (root_worker.alive().is_empty() && runaway.alive().is_empty()).then_some(())
    });
    // Every process of nobody's is still there and running.
    let left = impostor.members();
    assert_eq!(left.len(), 21, "{left:?}");
    assert!(
        left.iter()
            .all(|m| m.1 != 'T' && m.1 != 'Z' && m.2 == NOBODY),
        "{left:?}"
    );
}

#[test]
fn a_cgroup_or_executable_others_can_write_is_not_believed() {
    skos_testsupport::require!("root", skos_testsupport::require::root());
    use skos_agent::loops::procwatch::{DoubtKind, Trust};
    use skos_core::chain::tree::CgroupPath;
    use std::os::unix::fs::PermissionsExt;
    let sys = tempfile::tempdir().unwrap();
    let cg = sys.path().join("fs/cgroup");
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
    for (path, owner) in [
        ("system.slice/worker.service", 0),
        ("user.slice/app.slice/worker.service", NOBODY),
    ] {
        let d = cg.join(path);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
        std::os::unix::fs::chown(&d, Some(owner), Some(owner)).unwrap();
        std::os::unix::fs::chown(d.join("cgroup.procs"), Some(owner), Some(owner)).unwrap();
    }
    for p in [sys.path(), &sys.path().join("fs"), &cg] {
        mode(p, 0o755);
    }
    // cgroup v2 at the root (what `cgroup.controllers` marks).
    std::fs::write(cg.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let v2 = CgroupPath::v2;
    let trust = Trust::new();
    assert_eq!(
        trust.cgroup(&cg, &v2("/system.slice/worker.service")),
        Ok(())
    );
    let why = trust
        .cgroup(&cg, &v2("/user.slice/app.slice/worker.service"))
        .unwrap_err();
    assert_eq!(why.why, DoubtKind::Owner(NOBODY), "{why}");
    assert!(why
        .path
        .ends_with("user.slice/app.slice/worker.service/cgroup.procs"));
    // Root's, but anyone may move processes in.
    mode(&cg.join("system.slice/worker.service/cgroup.procs"), 0o666);
    assert!(trust
        .cgroup(&cg, &v2("/system.slice/worker.service"))
        .is_err());
    assert!(trust
        .cgroup(&cg, &v2("/system.slice/../user.slice"))
        .is_err());
    assert!(trust.cgroup(&cg, &v2("/nowhere.slice")).is_err());
    // v1 hierarchies: each path is judged where it was found. The
    // systemd hierarchy's unit is root's; the memory hierarchy's cgroup of
    // the same name is nobody's.
    let v1 = |h: &str, p: &str| CgroupPath {
        hierarchy: h.into(),
        path: p.into(),
    };
    for (h, owner) in [("systemd", 0), ("memory", NOBODY)] {
        let d = cg.join(h).join("worker.service");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
        mode(&cg.join(h), 0o755);
        std::os::unix::fs::chown(&d, Some(owner), Some(owner)).unwrap();
        std::os::unix::fs::chown(d.join("cgroup.procs"), Some(owner), Some(owner)).unwrap();
    }
    assert_eq!(
        trust.cgroup(&cg, &v1("name=systemd", "/worker.service")),
        Ok(())
    );
    let why = trust
        .cgroup(&cg, &v1("memory", "/worker.service"))
        .unwrap_err();
    assert_eq!(why.why, DoubtKind::Owner(NOBODY), "{why}");
    assert!(trust
        .cgroup(&cg, &v1("../memory", "/worker.service"))
        .is_err());
    assert!(trust.cgroup(&cg, &v1("cpu", "/worker.service")).is_err());

    // An executable: trusted in a root-only dir, not in a world-writable one.
    let bin = sys.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy("/bin/sleep", bin.join("worker")).unwrap();
    mode(&bin, 0o755);
    mode(&bin.join("worker"), 0o755);
    let m = trust.exe(&bin.join("worker")).unwrap();
    let file = m.file.unwrap();
    assert_eq!(
        file.ino,
        std::fs::metadata(bin.join("worker")).unwrap().ino()
    );
    // Through a root-owned symlink in a root-only dir (like /bin/sh): the
    // file it leads to.
    let links = sys.path().join("links");
    std::fs::create_dir(&links).unwrap();
    mode(&links, 0o755);
    std::os::unix::fs::symlink(bin.join("worker"), links.join("worker")).unwrap();
    let via = trust.exe(&links.join("worker")).unwrap().file.unwrap();
    assert_eq!((via.dev, via.ino), (file.dev, file.ino));
    // A symlink nobody owns, or in a dir nobody may write: it could be
    // re-pointed at any program.
    std::os::unix::fs::lchown(links.join("worker"), Some(NOBODY), Some(NOBODY)).unwrap();
    let why = trust.exe(&links.join("worker")).unwrap_err();
    assert_eq!(why.why, DoubtKind::SymlinkOwner(NOBODY), "{why}");
    std::os::unix::fs::lchown(links.join("worker"), Some(0), Some(0)).unwrap();
    mode(&links, 0o777);
    let why = trust.exe(&links.join("worker")).unwrap_err();
    assert!(matches!(why.why, DoubtKind::Writable(_)), "{why}");
    // The file's own dir writable by others: anyone could swap it.
    mode(&bin, 0o777);
    let why = trust.exe(&bin.join("worker")).unwrap_err();
    assert!(matches!(why.why, DoubtKind::Writable(_)), "{why}");
    // A system shell, as configs name it.
    assert!(trust.exe(Path::new("/bin/sh")).is_ok());
}

#[test]
fn a_group_by_executable_counts_that_file_only_whatever_a_process_calls_itself() {
    skos_testsupport::require!("root", skos_testsupport::require::root());
    if !live_proc() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, PermissionsExt::from_mode(0o755)).unwrap();
    // Root's worker: a copy of sleep only root may run.
    let worker = bin.join("worker");
    std::fs::copy("/bin/sleep", &worker).unwrap();
    std::fs::set_permissions(&worker, PermissionsExt::from_mode(0o700)).unwrap();
    let mut lb = breaker(&format!(
        "    - {{name: worker, exe: {}, max_descendants: 100, max_respawns: 1, respawn_window_seconds: 60}}\n",
        worker.display()
    ));
    lb.sense(chrono::Utc::now());
    // nobody's sleeps, each named like the worker: never new roots.
    let name = worker.to_string_lossy().into_owned();
    let impostors: Vec<AsUser> = (0..3)
        .map(|_| AsUser::spawn(NOBODY, "/bin/sleep", &name, &["60"]))
        .collect();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let alerts = lb.sense(chrono::Utc::now());
        assert!(alerts.is_empty(), "an impostor was counted: {alerts:?}");
    }
    assert!(impostors.iter().all(|i| i.members().len() == 1));
    // Root starts the real one twice: two new roots, over max_respawns 1.
    let spawn = || {
        std::process::Command::new(&worker)
            .arg("60")
            .process_group(0)
            .spawn()
            .map(AsUser)
            .unwrap()
    };
    let _a = spawn();
    let _b = spawn();
    let alert = sense_until(&mut lb, "the worker's crash loop", |alerts, _| {
        alerts
            .iter()
            .find(|a| a.severity == Severity::Critical)
            .cloned()
    });
    assert_eq!(alert.details["condition"], "crash_loop");
    assert_eq!(
        alert.details["value"], 2,
        "root's two, none of nobody's three"
    );
    assert!(alert.details["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["command"] == "worker"));
}

/// A cgroup v2 hierarchy this test may create cgroups in (at the root on
/// a v2 machine, at `unified` on a hybrid one).
fn cgroup2_dir() -> Result<std::path::PathBuf, String> {
    skos_testsupport::require::root().map_err(|e| e.to_string())?;
    for d in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let d = Path::new(d);
        if !d.join("cgroup.controllers").exists() {
            continue;
        }
        let probe = d.join(format!("skos-probe-{}", std::process::id()));
        if std::fs::create_dir(&probe).is_ok() {
            let _ = std::fs::remove_dir(&probe);
            return Ok(d.to_path_buf());
        }
    }
    Err("no writable cgroup v2 hierarchy under /sys/fs/cgroup".into())
}

/// cgroups removed (deepest first) when the test ends, once their
/// processes are gone.
struct Cgroups(Vec<std::path::PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `sh -c script` started in the cgroup `cg` (it moves itself in before
/// it runs, so everything it starts is there too), as `uid` when given, in
/// a process group of its own.
fn spawn_in_cgroup(cg: &Path, uid: Option<u32>, argv0: &str, script: &str) -> AsUser {
    use std::os::unix::ffi::OsStrExt;
    let procs = std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg0(argv0)
        .args(["-c", script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (open, write, close, setgroups,
    // setgid, setuid) between fork and exec, on memory made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = uid {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(u) != 0
                    || libc::setuid(u) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    AsUser(cmd.spawn().expect("spawn in a cgroup"))
}

#[test]
fn a_unit_of_the_same_name_in_a_users_own_cgroup_is_not_the_systems() {
    let base = skos_testsupport::require!("a writable cgroup v2 hierarchy", cgroup2_dir());
    if !live_proc() {
        return;
    }
    let me = std::process::id();
    let unit = format!("skos-test-{me}.service");
    // The system's unit (root's), and one of the same name in a cgroup
    // delegated to nobody (as a user's own systemd instance has them).
    let system = base.join(&unit);
    let user = base.join(format!("skos-user-{me}"));
    let delegated = user.join(&unit);
    let _cgroups = Cgroups(vec![system.clone(), user.clone(), delegated.clone()]);
    for d in [&system, &user, &delegated] {
        std::fs::create_dir(d).unwrap();
    }
    for p in [delegated.clone(), delegated.join("cgroup.procs")] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut cfg = Config::from_yaml(&format!(
        "agent: {{antibodies: [loop_breaker]}}\nloop:\n  process_groups:\n    - {{name: unit, unit: {unit}, max_descendants: 5, on_break: term, grace_seconds: 0.5, cool_off_seconds: 60}}\n"
    ))
    .unwrap();
    cfg.sysfs_root = "/sys".into();
    let mut lb = LoopBreaker::new(&cfg);

    let kids = |n: u32| format!("for i in $(seq {n}); do sleep 60 & done; wait");
    let impostor = spawn_in_cgroup(&delegated, Some(NOBODY), "worker", &kids(20));
    let worker = spawn_in_cgroup(&system, None, "worker", &kids(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while impostor.members().len() < 21 || worker.members().len() < 3 {
        assert!(Instant::now() < deadline, "the processes did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cg_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg_of(impostor.0.id()).contains(&format!("skos-user-{me}/{unit}")));

    for _ in 0..5 {
        let alerts = lb.sense(chrono::Utc::now());
        assert!(alerts.is_empty(), "nobody's unit was counted: {alerts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let runaway = spawn_in_cgroup(&system, None, "worker", &kids(10));
    let alert = sense_until(&mut lb, "the system unit's trip", |alerts, _| {
        alerts
            .iter()
            .find(|a| a.severity == Severity::Critical)
            .cloned()
    });
    assert_eq!(alert.details["condition"], "descendants_exceeded");
    let value = alert.details["value"].as_u64().unwrap();
    assert!((6..=12).contains(&value), "{value}: only the system unit's");
    let o = run(
        &mut lb,
        command("circuit_break", Some(&alert.alert_id), None),
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    sense_until(&mut lb, "the system unit's processes terminated", |_, _| {
        (worker.members().iter().all(|m| m.1 == 'Z')
            && runaway.members().iter().all(|m| m.1 == 'Z'))
        .then_some(())
    });
    let left = impostor.members();
    assert_eq!(left.len(), 21, "{left:?}");
    assert!(
        left.iter()
            .all(|m| m.1 != 'T' && m.1 != 'Z' && m.2 == NOBODY),
        "{left:?}"
    );
}

/// Where the kernel's process events cannot be heard (here: `proc_root`
/// is not this machine's procfs, so its pids are not the kernel's), the
/// breaker says why, the heartbeat too, and snapshots count alone.
#[test]
fn where_process_events_cannot_be_heard_the_breaker_says_why_and_counts_from_snapshots() {
    let root = tempfile::tempdir().unwrap();
    let crasher = |pid: u32| {
        fake_proc(root.path(), pid, 1, "sh /opt/x/crasher.sh");
        let status = root.path().join(pid.to_string()).join("status");
        std::fs::write(status, "Uid:\t0\t0\t0\t0\n").unwrap();
    };
    crasher(300);
    let mut cfg = Config::from_yaml(
        "agent: {antibodies: [loop_breaker]}\nloop:\n  process_groups:\n    - {name: g, uid: 0, command: '*crasher.sh*', max_respawns: 1}\n",
    )
    .unwrap();
    cfg.proc_root = root.path().to_path_buf();
    let mut lb = LoopBreaker::new(&cfg);
    let err = lb.listen().unwrap_err();
    assert!(
        err.to_string().contains("not this machine's procfs"),
        "{err}"
    );
    assert!(!lb.listening());
    // The agent loop's look says so once and judges the snapshot.
    assert!(Antibody::sense(&mut lb, chrono::Utc::now()).is_empty());
    let mut hb = heartbeat();
    lb.report(&mut hb);
    let events = &hb.metadata["loop_breaker"]["process_events"];
    assert_eq!(events["listening"], false, "{events}");
    assert!(
        events["why"]
            .as_str()
            .unwrap()
            .contains("not this machine's procfs"),
        "{events}"
    );
    // Two respawns seen by snapshots: over max_respawns 1.
    for pid in [301, 302] {
        std::fs::remove_dir_all(root.path().join((pid - 1).to_string())).unwrap();
        crasher(pid);
        let alerts = lb.sense(chrono::Utc::now());
        if pid == 302 {
            assert_eq!(alerts.len(), 1, "{alerts:?}");
            assert_eq!(alerts[0].details["condition"], "crash_loop");
        }
    }
}
